//! A cluster of unmodified nodes and clients as a [`Model`] (Stateright's "actor model",
//! DSLabs' search over whole-system states).
//!
//! # The global state
//!
//! [`ClusterState`] holds every node's state (`None` while crashed), its durable records,
//! its records appended but not yet synced, the outputs its [`OutputGate`] holds back, its
//! pending timers; the network; every client's state, pending timers and how many of its
//! scripted operations are left; the history of invoked and completed operations; and the
//! number of crashes so far.
//!
//! # Actions
//!
//! - **Deliver** a packet: a node message, a client request or a response (see
//!   [`NetworkSemantics`] for which are deliverable).
//! - **Fire a timer** of a running node or a client. Any pending timer may fire at any
//!   moment, whatever its delay: time is not modeled. This over-approximates real timing
//!   (a heartbeat may fire "before" a message that a real clock would deliver first), so
//!   every safety violation found is one some schedule could produce only if the protocol's
//!   safety must not depend on timing, which is the assumption our protocols are built
//!   on. Handlers see the clock stuck at zero.
//! - **Invoke** a client's next scripted operation (one outstanding at a time).
//! - **Crash** a running node (at most `max_crashes` crashes in a path) and **restart** a
//!   crashed one from its durable records.
//! - **Complete a sync**, only with [`SyncTiming::Deferred`].
//! - **Write a compaction** ([`synod_core::node::Context::compact`]): a durable compaction
//!   stays unwritten, and the records it stands for stay in its place, until this action
//!   writes it; a crash before that drops it, and the node recovers from those records.
//!
//! # Durability and the output-commit rule
//!
//! By default ([`SyncTiming::Immediate`]) a `Sync` effect completes within the step that
//! issues it: every record appended so far becomes durable and the gate releases the
//! outputs that waited for them. Records appended without a sync stay volatile, and the
//! outputs behind them stay held, until a later step syncs; a crash in between loses both.
//! So a node that replies before it persists what the reply reveals, and syncs later, is
//! caught by a path with a crash in it, and one that follows the rule cannot be. With
//! [`SyncTiming::Deferred`] a sync completes in an action of its own, which also catches a
//! node that replies, persists and syncs within one handler call.
//!
//! # Determinism
//!
//! Every handler call gets a fresh generator `Rng::derive(seed, stream)` for the node or
//! client it runs on, so the same state and action always produce the same next state.

use super::fingerprint::fingerprint;
use super::model::{Model, Property};
pub use crate::packet::Packet;
use crate::packet::{Endpoint, NodeOf};
use crate::workload::{KvWorkload, Workload};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use synod_check::history::{Event, EventKind};
use synod_check::kv::{Budget, Verdict, check_kv_history};
use synod_core::kv::{KvCommand, KvOutput};
use synod_core::node::{
    Client, ClientContext, ClientEffect, ClientId, Completion, Context, Effect, Node, NodeId,
    OutputGate,
};
use synod_core::rng::Rng;
use synod_core::time::Time;

/// Stream numbers for [`Rng::derive`]: node streams start here, offset by the node id.
const STREAM_NODE_BASE: u64 = 1 << 32;
/// Client streams start here, offset by the client id.
const STREAM_CLIENT_BASE: u64 = 2 << 32;

/// A client whose types the checker can share between threads.
pub trait CheckableClient:
    Client<
        Node: Node<
            Message: Send + Sync,
            Request: Send + Sync,
            Response: Send + Sync,
            Record: Send + Sync,
            Timer: Send + Sync,
        > + Send
                  + Sync,
        Operation: Send + Sync,
        Output: Send + Sync,
        Timer: Send + Sync,
    > + Send
    + Sync
{
}

impl<C> CheckableClient for C where
    C: Client<
            Node: Node<
                Message: Send + Sync,
                Request: Send + Sync,
                Response: Send + Sync,
                Record: Send + Sync,
                Timer: Send + Sync,
            > + Send
                      + Sync,
            Operation: Send + Sync,
            Output: Send + Sync,
            Timer: Send + Sync,
        > + Send
        + Sync
{
}

/// What a ghost must be to ride along in a model's states.
pub trait Ghost: Clone + Eq + Hash + fmt::Debug + Default + Send + Sync + 'static {}

impl<G> Ghost for G where G: Clone + Eq + Hash + fmt::Debug + Default + Send + Sync + 'static {}

/// What the network does with a sent packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkSemantics {
    /// The DSLabs model: a sent packet stays in the network for ever and may be delivered
    /// any number of times, in any order, including never. This covers loss, duplication and
    /// reordering while keeping the state graph finite (the network is a set that only
    /// grows). Packets to a crashed node are not deliverable (they wait for its restart).
    Redeliverable,
    /// Each (sender, receiver) channel is a FIFO queue delivered exactly once, head first;
    /// delivering to a crashed node drops the packet.
    OrderedExactlyOnce,
}

/// When a node's `Sync` effect completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncTiming {
    /// Within the step that requests it: the smallest state space. A crash can only strike
    /// between steps, so a handler that replies, persists and syncs in one call looks
    /// correct.
    Immediate,
    /// As a separate [`ClusterAction::CompleteSync`] action, so a crash can strike between
    /// the request and the completion, as on a real disk; catches a reply that leaves
    /// before a sync issued in the same handler completes.
    Deferred,
}

/// The packets in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network<C: Client> {
    /// A set, kept sorted by fingerprint so equal sets are equal vectors (packet types need
    /// not be ordered).
    Redeliverable(Vec<(u64, Packet<C>)>),
    /// A FIFO queue per route; empty queues are removed.
    OrderedExactlyOnce(BTreeMap<(Endpoint, Endpoint), VecDeque<Packet<C>>>),
}

impl<C: Client> Hash for Network<C> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            // The fingerprints stand for the packets: hashing them is enough and cheaper.
            Network::Redeliverable(packets) => {
                state.write_usize(packets.len());
                for (key, _) in packets {
                    state.write_u64(*key);
                }
            }
            Network::OrderedExactlyOnce(channels) => channels.hash(state),
        }
    }
}

impl<C: Client> Network<C> {
    fn new(semantics: NetworkSemantics) -> Self {
        match semantics {
            NetworkSemantics::Redeliverable => Network::Redeliverable(Vec::new()),
            NetworkSemantics::OrderedExactlyOnce => Network::OrderedExactlyOnce(BTreeMap::new()),
        }
    }

    fn send(&mut self, packet: Packet<C>) {
        match self {
            Network::Redeliverable(packets) => {
                let key = fingerprint(&packet);
                let start = packets.partition_point(|(other, _)| *other < key);
                let duplicate = packets[start..]
                    .iter()
                    .take_while(|(other, _)| *other == key)
                    .any(|(_, other)| *other == packet);
                if !duplicate {
                    packets.insert(start, (key, packet));
                }
            }
            Network::OrderedExactlyOnce(channels) => {
                channels
                    .entry(packet.route())
                    .or_default()
                    .push_back(packet);
            }
        }
    }

    /// Every packet in flight (in FIFO mode, queued ones too).
    pub fn packets(&self) -> Box<dyn Iterator<Item = &Packet<C>> + '_> {
        match self {
            Network::Redeliverable(packets) => Box::new(packets.iter().map(|(_, packet)| packet)),
            Network::OrderedExactlyOnce(channels) => Box::new(channels.values().flatten()),
        }
    }
}

/// One node's part of the global state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeSlot<C: Client> {
    /// The node's state; `None` while crashed.
    pub state: Option<NodeOf<C>>,
    /// Records that survive a crash, oldest first, from every life.
    pub durable: Vec<<NodeOf<C> as Node>::Record>,
    /// Records appended in this life and not yet synced, each with its kind.
    pub unsynced: Vec<(<NodeOf<C> as Node>::Record, RecordKind)>,
    /// A durable compaction not yet written in place of the records it stands for: how
    /// many of `durable` it covers, and the compaction.
    pub unwritten_compaction: Option<(usize, <NodeOf<C> as Node>::Record)>,
    /// Records synced in this life (the gate counts within a life).
    life_durable: u64,
    /// With deferred syncs: the records (counted within this life) that a requested sync
    /// will make durable when it completes.
    sync_requested: u64,
    gate: OutputGate<Packet<C>>,
    /// Fingerprints of the outputs the gate holds, kept only for a redeliverable network:
    /// there a second copy of a held packet adds nothing (the network is a set), and
    /// holding it would let a node that keeps receiving a retried request while a sync is
    /// pending grow its gate, and the state space, without bound.
    held: Vec<u64>,
    /// Pending timers.
    pub timers: BTreeSet<<NodeOf<C> as Node>::Timer>,
}

/// What an appended record is to storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An ordinary record.
    Plain,
    /// A checkpoint: once durable it supersedes every earlier record.
    Checkpoint,
    /// A compaction: a checkpoint written some time after it is durable.
    Compaction,
}

/// One client's part of the global state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientSlot<C: Client> {
    /// The client's state.
    pub state: C,
    /// Pending timers.
    pub timers: BTreeSet<C::Timer>,
    /// Scripted operations not yet invoked.
    pub operations_left: usize,
    /// Whether an operation is outstanding.
    pub outstanding: bool,
}

/// An event of the history a path produced.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HistoryEvent<C: Client> {
    /// A client invoked an operation.
    Invoke {
        /// The client.
        client: ClientId,
        /// The operation.
        operation: C::Operation,
    },
    /// A client's outstanding operation completed.
    Complete {
        /// The client.
        client: ClientId,
        /// How it ended.
        completion: Completion<C::Output>,
    },
}

/// The global state of a cluster, with a ghost `G` (nothing by default): what a
/// [`ClusterModel::ghost`] observer has remembered along the path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterState<C: Client, G = ()> {
    /// Every node, by id.
    pub nodes: Vec<NodeSlot<C>>,
    /// Every client, by id.
    pub clients: Vec<ClientSlot<C>>,
    /// The packets in flight.
    pub network: Network<C>,
    /// Invocations and completions, in the order they happened.
    pub history: Vec<HistoryEvent<C>>,
    /// Crashes so far on this path.
    pub crashes: u32,
    /// Crashes on this path that found a compaction unwritten.
    pub unwritten_compactions_lost: u32,
    /// Ghost state: not part of any node, updated by the model's observer after every step
    /// (for properties about the path rather than one state, e.g. "a view number always
    /// names the same view").
    pub ghost: G,
}

impl<C: Client, G> ClusterState<C, G> {
    /// A running node's state.
    pub fn node(&self, node: NodeId) -> Option<&NodeOf<C>> {
        self.nodes.get(node.0 as usize)?.state.as_ref()
    }

    /// Whether every client has invoked and completed every scripted operation.
    pub fn all_clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|client| client.operations_left == 0 && !client.outstanding)
    }
}

/// One transition of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClusterAction<C: Client> {
    /// Deliver a packet (in FIFO mode, the head of its channel).
    Deliver(Packet<C>),
    /// Fire a running node's pending timer.
    NodeTimer {
        /// The node.
        node: NodeId,
        /// The timer.
        timer: <NodeOf<C> as Node>::Timer,
    },
    /// Fire a client's pending timer.
    ClientTimer {
        /// The client.
        client: ClientId,
        /// The timer.
        timer: C::Timer,
    },
    /// A client invokes its next scripted operation.
    Invoke {
        /// The client.
        client: ClientId,
    },
    /// With deferred syncs: a node's requested sync completes.
    CompleteSync {
        /// The node.
        node: NodeId,
    },
    /// A running node crashes: volatile state, unsynced records and held outputs are lost.
    Crash {
        /// The node.
        node: NodeId,
    },
    /// A crashed node restarts from its durable records.
    Restart {
        /// The node.
        node: NodeId,
    },
    /// A node's durable compaction is written in place of the records it stands for.
    WriteCompaction {
        /// The node.
        node: NodeId,
    },
}

/// A condition on a cluster state.
pub type StatePredicate<C, G = ()> = Arc<dyn Fn(&ClusterState<C, G>) -> bool + Send + Sync>;

/// Updates a ghost after a step from the state the step produced.
pub type GhostObserver<C, G> = Arc<dyn Fn(&mut G, &ClusterState<C, G>) + Send + Sync>;

/// Builds a node's state before `on_start` or `on_recover`.
pub type NodeFactory<C> = Arc<dyn Fn(NodeId) -> NodeOf<C> + Send + Sync>;

/// A cluster of nodes and scripted clients, as a model, with an optional ghost `G`.
pub struct ClusterModel<C: CheckableClient, G: Ghost = ()> {
    members: Vec<NodeId>,
    make_node: NodeFactory<C>,
    clients: Vec<C>,
    scripts: Vec<Vec<C::Operation>>,
    network: NetworkSemantics,
    sync_timing: SyncTiming,
    max_crashes: u32,
    seed: u64,
    properties: Vec<Property<ClusterModel<C, G>>>,
    prunes: Vec<StatePredicate<C, G>>,
    observer: Option<GhostObserver<C, G>>,
}

impl<C: CheckableClient> ClusterModel<C> {
    /// A cluster of `nodes` nodes built by `make_node`, without clients, crashes or
    /// properties, over `network`.
    pub fn new(
        nodes: u32,
        make_node: impl Fn(NodeId) -> NodeOf<C> + Send + Sync + 'static,
        network: NetworkSemantics,
    ) -> Self {
        assert!(nodes > 0, "a cluster needs a node");
        ClusterModel {
            members: (0..nodes).map(NodeId).collect(),
            make_node: Arc::new(make_node),
            clients: Vec::new(),
            scripts: Vec::new(),
            network,
            sync_timing: SyncTiming::Immediate,
            max_crashes: 0,
            seed: 0,
            properties: Vec::new(),
            prunes: Vec::new(),
            observer: None,
        }
    }

    /// Carries a ghost of type `G` in every state: it starts as `G::default()`, and after
    /// the initial state and after every step `observe` updates it from the new state.
    /// Invariants can then judge the whole path (a ghost that records the first violation
    /// it saw turns a property about history into an invariant). Call before adding
    /// properties or prunes, which see the ghost.
    pub fn ghost<G: Ghost>(
        self,
        observe: impl Fn(&mut G, &ClusterState<C, G>) + Send + Sync + 'static,
    ) -> ClusterModel<C, G> {
        assert!(
            self.properties.is_empty() && self.prunes.is_empty(),
            "add the ghost before properties and prunes"
        );
        ClusterModel {
            members: self.members,
            make_node: self.make_node,
            clients: self.clients,
            scripts: self.scripts,
            network: self.network,
            sync_timing: self.sync_timing,
            max_crashes: self.max_crashes,
            seed: self.seed,
            properties: Vec::new(),
            prunes: Vec::new(),
            observer: Some(Arc::new(observe)),
        }
    }
}

impl<C: CheckableClient, G: Ghost> ClusterModel<C, G> {
    /// Adds a client (its id is the number of clients before it) that will invoke
    /// `script`'s operations in order.
    pub fn client(mut self, client: C, script: Vec<C::Operation>) -> Self {
        self.clients.push(client);
        self.scripts.push(script);
        self
    }

    /// Allows up to `crashes` crashes (each followed by any number of steps, a restart
    /// included) on any path.
    pub fn max_crashes(mut self, crashes: u32) -> Self {
        self.max_crashes = crashes;
        self
    }

    /// Chooses when a requested sync completes (immediately by default).
    pub fn sync_timing(mut self, timing: SyncTiming) -> Self {
        self.sync_timing = timing;
        self
    }

    /// Seeds the generators handed to nodes and clients.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Adds an invariant: `condition` holds in every reachable state.
    pub fn invariant(
        mut self,
        name: impl Into<String>,
        condition: impl Fn(&ClusterState<C, G>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.properties.push(Property::always(
            name,
            move |_: &Self, state: &ClusterState<C, G>| condition(state),
        ));
        self
    }

    /// Adds a goal: `condition` holds in some reachable state.
    pub fn goal(
        mut self,
        name: impl Into<String>,
        condition: impl Fn(&ClusterState<C, G>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.properties.push(Property::sometimes(
            name,
            move |_: &Self, state: &ClusterState<C, G>| condition(state),
        ));
        self
    }

    /// Adds a prune predicate: states satisfying it are checked but not expanded.
    pub fn prune(
        mut self,
        predicate: impl Fn(&ClusterState<C, G>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.prunes.push(Arc::new(predicate));
        self
    }

    /// The cluster's node ids.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    fn node_rng(&self, node: NodeId) -> Rng {
        Rng::derive(self.seed, STREAM_NODE_BASE + u64::from(node.0))
    }

    fn client_rng(&self, client: ClientId) -> Rng {
        Rng::derive(self.seed, STREAM_CLIENT_BASE + client.0)
    }

    /// Runs a handler on a running node and applies its effects.
    fn with_node(
        &self,
        state: &mut ClusterState<C, G>,
        node: NodeId,
        handler: impl FnOnce(&mut NodeOf<C>, &mut Context<'_, NodeOf<C>>),
    ) {
        let slot = &mut state.nodes[node.0 as usize];
        let Some(node_state) = slot.state.as_mut() else {
            return; // Crashed: the input is lost.
        };
        let mut rng = self.node_rng(node);
        let appended = slot.life_durable + slot.unsynced.len() as u64;
        let mut ctx = Context::with_records(node, &self.members, Time::ZERO, &mut rng, appended);
        handler(node_state, &mut ctx);
        for effect in ctx.into_effects() {
            apply_node_effect(state, node, effect, self.sync_timing);
        }
    }

    /// Runs a handler on a client and applies its effects.
    fn with_client(
        &self,
        state: &mut ClusterState<C, G>,
        client: ClientId,
        handler: impl FnOnce(&mut C, &mut ClientContext<'_, C>),
    ) {
        let mut rng = self.client_rng(client);
        let slot = &mut state.clients[client.0 as usize];
        let mut ctx = ClientContext::new(client, &self.members, Time::ZERO, &mut rng);
        handler(&mut slot.state, &mut ctx);
        for effect in ctx.into_effects() {
            let slot = &mut state.clients[client.0 as usize];
            match effect {
                ClientEffect::Send { to, request } => state.network.send(Packet::Request {
                    from: client,
                    to,
                    request,
                }),
                ClientEffect::SetTimer { timer, .. } => {
                    slot.timers.insert(timer);
                }
                ClientEffect::CancelTimer { timer } => {
                    slot.timers.remove(&timer);
                }
                ClientEffect::Complete(completion) => {
                    assert!(
                        slot.outstanding,
                        "{client} completed an operation it was never given"
                    );
                    slot.outstanding = false;
                    state
                        .history
                        .push(HistoryEvent::Complete { client, completion });
                }
            }
        }
    }

    /// Lets the observer, if any, update the ghost from the rest of the state.
    fn observe(&self, state: &mut ClusterState<C, G>) {
        if let Some(observe) = &self.observer {
            let mut ghost = std::mem::take(&mut state.ghost);
            observe(&mut ghost, state);
            state.ghost = ghost;
        }
    }

    fn apply(&self, state: &mut ClusterState<C, G>, action: ClusterAction<C>) {
        match action {
            ClusterAction::Deliver(packet) => {
                if let Network::OrderedExactlyOnce(channels) = &mut state.network {
                    let route = packet.route();
                    let channel = channels
                        .get_mut(&route)
                        .expect("a delivered packet is queued");
                    let head = channel.pop_front();
                    assert_eq!(head.as_ref(), Some(&packet), "FIFO delivers the head");
                    if channel.is_empty() {
                        channels.remove(&route);
                    }
                }
                match packet {
                    Packet::Message { from, to, message } => {
                        self.with_node(state, to, |node, ctx| node.on_message(from, message, ctx));
                    }
                    Packet::Request { from, to, request } => {
                        self.with_node(state, to, |node, ctx| node.on_request(from, request, ctx));
                    }
                    Packet::Response { from, to, response } => {
                        self.with_client(state, to, |client, ctx| {
                            client.on_response(from, response, ctx);
                        });
                    }
                }
            }
            ClusterAction::NodeTimer { node, timer } => {
                state.nodes[node.0 as usize].timers.remove(&timer);
                self.with_node(state, node, |node, ctx| node.on_timer(timer, ctx));
            }
            ClusterAction::ClientTimer { client, timer } => {
                state.clients[client.0 as usize].timers.remove(&timer);
                self.with_client(state, client, |client, ctx| client.on_timer(timer, ctx));
            }
            ClusterAction::Invoke { client } => {
                let index = client.0 as usize;
                let script = &self.scripts[index];
                let slot = &mut state.clients[index];
                assert!(!slot.outstanding && slot.operations_left > 0);
                let operation = script[script.len() - slot.operations_left].clone();
                slot.operations_left -= 1;
                slot.outstanding = true;
                state.history.push(HistoryEvent::Invoke {
                    client,
                    operation: operation.clone(),
                });
                self.with_client(state, client, |client, ctx| {
                    client.on_invoke(operation, ctx)
                });
            }
            ClusterAction::CompleteSync { node } => {
                let slot = &mut state.nodes[node.0 as usize];
                let records = slot.sync_requested;
                make_durable(slot, &mut state.network, records);
            }
            ClusterAction::Crash { node } => {
                let slot = &mut state.nodes[node.0 as usize];
                assert!(slot.state.is_some(), "only a running node crashes");
                slot.state = None;
                slot.unsynced.clear();
                if slot.unwritten_compaction.take().is_some() {
                    state.unwritten_compactions_lost += 1;
                }
                slot.life_durable = 0;
                slot.sync_requested = 0;
                slot.gate.crash();
                slot.held.clear();
                slot.timers.clear();
                state.crashes += 1;
            }
            ClusterAction::Restart { node } => {
                let slot = &mut state.nodes[node.0 as usize];
                assert!(slot.state.is_none(), "only a crashed node restarts");
                slot.gate = OutputGate::new(0);
                slot.state = Some((self.make_node)(node));
                let records = slot.durable.clone();
                self.with_node(state, node, |node, ctx| node.on_recover(records, ctx));
            }
            ClusterAction::WriteCompaction { node } => {
                write_compaction(&mut state.nodes[node.0 as usize]);
            }
        }
    }
}

/// Carries out one node effect inside a step.
fn apply_node_effect<C: Client, G>(
    state: &mut ClusterState<C, G>,
    node: NodeId,
    effect: Effect<NodeOf<C>>,
    sync_timing: SyncTiming,
) {
    let slot = &mut state.nodes[node.0 as usize];
    match effect {
        Effect::Send {
            to,
            message,
            records_required,
        } => {
            let packet = Packet::Message {
                from: node,
                to,
                message,
            };
            submit(slot, &mut state.network, records_required, packet);
        }
        Effect::Reply {
            client,
            response,
            records_required,
        } => {
            let packet = Packet::Response {
                from: node,
                to: client,
                response,
            };
            submit(slot, &mut state.network, records_required, packet);
        }
        Effect::SetTimer { timer, .. } => {
            slot.timers.insert(timer);
        }
        Effect::CancelTimer { timer } => {
            slot.timers.remove(&timer);
        }
        Effect::Persist { record } => slot.unsynced.push((record, RecordKind::Plain)),
        Effect::Checkpoint { record, derived } => {
            let kind = if derived {
                RecordKind::Compaction
            } else {
                RecordKind::Checkpoint
            };
            slot.unsynced.push((record, kind));
        }
        Effect::Sync => {
            let appended = slot.life_durable + slot.unsynced.len() as u64;
            match sync_timing {
                // The sync completes within the step: see the module documentation.
                SyncTiming::Immediate => make_durable(slot, &mut state.network, appended),
                SyncTiming::Deferred => slot.sync_requested = appended,
            }
        }
    }
}

/// Makes the node's records up to `records` (counted within this life) durable and sends
/// the outputs that waited for them.
fn make_durable<C: Client>(slot: &mut NodeSlot<C>, network: &mut Network<C>, records: u64) {
    assert!(records >= slot.life_durable, "durability never goes back");
    let newly_durable = (records - slot.life_durable) as usize;
    let newly: Vec<_> = slot.unsynced.drain(..newly_durable).collect();
    for (record, kind) in newly {
        match kind {
            RecordKind::Plain => slot.durable.push(record),
            RecordKind::Checkpoint => {
                // A durable checkpoint supersedes every earlier record.
                slot.durable.clear();
                slot.unwritten_compaction = None;
                slot.durable.push(record);
            }
            RecordKind::Compaction => {
                // Storage finishes one compaction before it starts the next.
                write_compaction(slot);
                slot.unwritten_compaction = Some((slot.durable.len(), record));
            }
        }
    }
    slot.life_durable = records;
    let released = slot.gate.durable(records);
    for packet in released {
        if let Network::Redeliverable(_) = network {
            let key = fingerprint(&packet);
            let position = slot.held.iter().position(|held| *held == key);
            slot.held
                .swap_remove(position.expect("a released output was held"));
        }
        network.send(packet);
    }
    slot.held.sort_unstable();
}

/// Writes a node's durable compaction in place of the records it stands for.
fn write_compaction<C: Client>(slot: &mut NodeSlot<C>) {
    if let Some((covers, record)) = slot.unwritten_compaction.take() {
        slot.durable.drain(..covers);
        slot.durable.insert(0, record);
    }
}

/// Offers an output to a node's gate; sends it if nothing it depends on is unsynced.
fn submit<C: Client>(
    slot: &mut NodeSlot<C>,
    network: &mut Network<C>,
    records_required: u64,
    packet: Packet<C>,
) {
    if let Network::Redeliverable(_) = network {
        let key = fingerprint(&packet);
        if slot.held.contains(&key) {
            return;
        }
        match slot.gate.submit(records_required, packet) {
            Some(packet) => network.send(packet),
            None => {
                let position = slot.held.partition_point(|held| *held < key);
                slot.held.insert(position, key);
            }
        }
        return;
    }
    if let Some(packet) = slot.gate.submit(records_required, packet) {
        network.send(packet);
    }
}

impl<C: CheckableClient, G: Ghost> Model for ClusterModel<C, G> {
    type State = ClusterState<C, G>;
    type Action = ClusterAction<C>;

    fn init_states(&self) -> Vec<ClusterState<C, G>> {
        let mut state = ClusterState {
            nodes: self
                .members
                .iter()
                .map(|&node| NodeSlot {
                    state: Some((self.make_node)(node)),
                    durable: Vec::new(),
                    unsynced: Vec::new(),
                    unwritten_compaction: None,
                    life_durable: 0,
                    sync_requested: 0,
                    gate: OutputGate::new(0),
                    held: Vec::new(),
                    timers: BTreeSet::new(),
                })
                .collect(),
            clients: self
                .clients
                .iter()
                .zip(&self.scripts)
                .map(|(client, script)| ClientSlot {
                    state: client.clone(),
                    timers: BTreeSet::new(),
                    operations_left: script.len(),
                    outstanding: false,
                })
                .collect(),
            network: Network::new(self.network),
            history: Vec::new(),
            crashes: 0,
            unwritten_compactions_lost: 0,
            ghost: G::default(),
        };
        for &node in &self.members {
            self.with_node(&mut state, node, |node, ctx| node.on_start(ctx));
        }
        self.observe(&mut state);
        vec![state]
    }

    fn actions(&self, state: &ClusterState<C, G>, actions: &mut Vec<ClusterAction<C>>) {
        let running = |node: NodeId| state.nodes[node.0 as usize].state.is_some();
        match &state.network {
            Network::Redeliverable(packets) => {
                for (_, packet) in packets {
                    let deliverable = match packet {
                        Packet::Message { to, .. } | Packet::Request { to, .. } => running(*to),
                        Packet::Response { .. } => true,
                    };
                    if deliverable {
                        actions.push(ClusterAction::Deliver(packet.clone()));
                    }
                }
            }
            Network::OrderedExactlyOnce(channels) => {
                for channel in channels.values() {
                    if let Some(head) = channel.front() {
                        actions.push(ClusterAction::Deliver(head.clone()));
                    }
                }
            }
        }
        for (index, slot) in state.nodes.iter().enumerate() {
            let node = NodeId(index as u32);
            if slot.state.is_some() {
                if slot.sync_requested > slot.life_durable {
                    actions.push(ClusterAction::CompleteSync { node });
                }
                if slot.unwritten_compaction.is_some() {
                    actions.push(ClusterAction::WriteCompaction { node });
                }
                for timer in &slot.timers {
                    actions.push(ClusterAction::NodeTimer {
                        node,
                        timer: timer.clone(),
                    });
                }
            }
        }
        for (index, slot) in state.clients.iter().enumerate() {
            let client = ClientId(index as u64);
            for timer in &slot.timers {
                actions.push(ClusterAction::ClientTimer {
                    client,
                    timer: timer.clone(),
                });
            }
            if !slot.outstanding && slot.operations_left > 0 {
                actions.push(ClusterAction::Invoke { client });
            }
        }
        for (index, slot) in state.nodes.iter().enumerate() {
            let node = NodeId(index as u32);
            if slot.state.is_none() {
                actions.push(ClusterAction::Restart { node });
            } else if state.crashes < self.max_crashes {
                actions.push(ClusterAction::Crash { node });
            }
        }
    }

    fn next_state(
        &self,
        state: &ClusterState<C, G>,
        action: ClusterAction<C>,
    ) -> Option<ClusterState<C, G>> {
        let mut next = state.clone();
        self.apply(&mut next, action);
        self.observe(&mut next);
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        self.properties.clone()
    }

    fn prune(&self, state: &ClusterState<C, G>) -> bool {
        self.prunes.iter().any(|predicate| predicate(state))
    }
}

impl<C: Client> fmt::Display for HistoryEvent<C> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryEvent::Invoke { client, operation } => {
                write!(formatter, "{client} invoke {operation:?}")
            }
            HistoryEvent::Complete { client, completion } => {
                write!(formatter, "{client} complete {completion:?}")
            }
        }
    }
}

/// A key-value history in the project's format, with the event's position as its time.
pub fn kv_history_events<C>(history: &[HistoryEvent<C>]) -> Vec<Event>
where
    C: Client<Operation = KvCommand, Output = KvOutput>,
{
    // The simulator's workload renders operations; reuse it so both agree on the format.
    let workload = KvWorkload::new(Default::default());
    let mut outstanding: BTreeMap<ClientId, KvCommand> = BTreeMap::new();
    let mut events = Vec::with_capacity(history.len());
    for (position, event) in history.iter().enumerate() {
        let time = position as u64;
        match event {
            HistoryEvent::Invoke { client, operation } => {
                let (f, key, value) = workload.describe_invoke(operation);
                outstanding.insert(*client, operation.clone());
                events.push(Event {
                    process: client.0,
                    kind: EventKind::Invoke,
                    f,
                    key,
                    value,
                    time,
                });
            }
            HistoryEvent::Complete { client, completion } => {
                let operation = outstanding
                    .remove(client)
                    .expect("a completion follows its invocation");
                let (f, key, invoke_value) = workload.describe_invoke(&operation);
                let (kind, value) = match completion {
                    Completion::Ok(output) => {
                        (EventKind::Ok, workload.describe_ok(&operation, output))
                    }
                    Completion::Fail(_) => (EventKind::Fail, invoke_value),
                    Completion::Info(_) => (EventKind::Info, invoke_value),
                };
                events.push(Event {
                    process: client.0,
                    kind,
                    f,
                    key,
                    value,
                    time,
                });
            }
        }
    }
    events
}

/// Whether a key-value history is linearizable; a checker that runs out of budget or a
/// malformed history counts as not (the model checker must not pass on "unknown").
pub fn kv_history_linearizable<C>(history: &[HistoryEvent<C>]) -> bool
where
    C: Client<Operation = KvCommand, Output = KvOutput>,
{
    matches!(
        check_kv_history(&kv_history_events(history), Budget::default()),
        Ok(Verdict::Linearizable)
    )
}
