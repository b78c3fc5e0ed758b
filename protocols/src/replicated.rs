//! The interface between a replicated log (Multi-Paxos today, Raft next) and the state
//! machine it replicates, so the same key-value machine runs unchanged on either.
//!
//! A log protocol turns a client's request into a [`StateMachine::Command`], agrees on an
//! order of commands, and applies them in that order on every replica; the replica that
//! answers clients sends what [`StateMachine::apply`] returns. A replica that cannot take a
//! request (it does not lead) answers with [`StateMachine::redirect`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use synod_core::node::{ClientId, NodeId, Value};

/// A deterministic state machine driven by a replicated log.
pub trait StateMachine: Value + Default {
    /// What clients send.
    type Request: Value;
    /// What clients receive.
    type Response: Value;
    /// A log entry.
    type Command: Value + Serialize + DeserializeOwned;

    /// The log entry for `request` from `client`.
    fn command(client: ClientId, request: Self::Request) -> Self::Command;
    /// Applies the next command in log order; returns the client to answer and the answer,
    /// if there is one. Every replica must compute the same state and answer.
    fn apply(&mut self, command: &Self::Command) -> Option<(ClientId, Self::Response)>;
    /// The answer for a request this replica will not order (it does not lead); `leader`
    /// is the node it believes leads.
    fn redirect(request: &Self::Request, leader: Option<NodeId>) -> Self::Response;
}
