//! What travels on the simulated network, shared by the simulator and the model checker.

use synod_core::node::{Client, ClientId, Node, NodeId};

/// The node type a client talks to.
pub type NodeOf<C> = <C as Client>::Node;

/// Anything that can send or receive a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A server node.
    Node(NodeId),
    /// A client.
    Client(ClientId),
}

/// A packet between endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Packet<C: Client> {
    /// Between nodes.
    Message {
        /// The sender.
        from: NodeId,
        /// The receiver.
        to: NodeId,
        /// The payload.
        message: <NodeOf<C> as Node>::Message,
    },
    /// From a client to a node.
    Request {
        /// The client.
        from: ClientId,
        /// The node.
        to: NodeId,
        /// The payload.
        request: <NodeOf<C> as Node>::Request,
    },
    /// From a node to a client.
    Response {
        /// The node.
        from: NodeId,
        /// The client.
        to: ClientId,
        /// The payload.
        response: <NodeOf<C> as Node>::Response,
    },
}

impl<C: Client> Packet<C> {
    /// (sender, receiver).
    pub fn route(&self) -> (Endpoint, Endpoint) {
        match self {
            Packet::Message { from, to, .. } => (Endpoint::Node(*from), Endpoint::Node(*to)),
            Packet::Request { from, to, .. } => (Endpoint::Client(*from), Endpoint::Node(*to)),
            Packet::Response { from, to, .. } => (Endpoint::Node(*from), Endpoint::Client(*to)),
        }
    }
}
