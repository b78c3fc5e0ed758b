//! The sans-IO node contract.
//!
//! A protocol is a plain state machine. Each input kind has one entry point on [`Node`]
//! (start, recover, message, timer, client request); a handler never performs I/O but
//! pushes effects into a [`Context`]: send, broadcast, set or cancel a timer, persist a
//! record, request a sync barrier, reply to a client. The driver — the simulator, the
//! model checker or the real runtime — carries the effects out.
//!
//! Time and randomness come only from the context ([`Context::now`], [`Context::rng`]),
//! so the same inputs always produce the same effects.
//!
//! # The output-commit rule
//!
//! Records pushed with [`Context::persist`] are appended to the node's durable log but are
//! not durable until a [`Context::sync`] barrier covering them completes. Every send and
//! reply is tagged with the number of records the node had appended when it was emitted,
//! and a driver releases it only once at least that many records are durable
//! ([`OutputGate`] implements this for every driver). A vote, an append acknowledgement or a
//! client reply therefore never reveals state that a crash could take back. Outputs that
//! depend on nothing unsynced leave at once.
//!
//! A crash discards the node's volatile state, every record that was not synced (the
//! simulator may leave the last one torn), and every output still held by the gate. The
//! restarted node is rebuilt by [`Node::on_recover`] from the durable records alone.
//!
//! # Clients
//!
//! Clients are sans-IO state machines too ([`Client`]): a driver hands one an operation, the
//! client sends requests to nodes, retries on its own timers and finally completes the
//! operation as `ok`, `fail` (definitely did not happen) or `info` (unknown).
//!
//! ```
//! use synod_core::node::{Context, Effect, Node, NodeId, ClientId};
//! use synod_core::rng::Rng;
//! use synod_core::time::Time;
//!
//! /// Counts requests and replies with the running total.
//! #[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
//! struct Counter { total: u64 }
//!
//! impl Node for Counter {
//!     type Message = ();
//!     type Request = u64;
//!     type Response = u64;
//!     type Record = u64;
//!     type Timer = ();
//!     fn on_start(&mut self, _ctx: &mut Context<Self>) {}
//!     fn on_recover(&mut self, records: Vec<u64>, _ctx: &mut Context<Self>) {
//!         self.total = records.iter().sum();
//!     }
//!     fn on_message(&mut self, _from: NodeId, _message: (), _ctx: &mut Context<Self>) {}
//!     fn on_timer(&mut self, _timer: (), _ctx: &mut Context<Self>) {}
//!     fn on_request(&mut self, client: ClientId, amount: u64, ctx: &mut Context<Self>) {
//!         self.total += amount;
//!         ctx.persist(amount);
//!         ctx.sync();
//!         ctx.reply(client, self.total);
//!     }
//! }
//!
//! let members = [NodeId(0)];
//! let mut rng = Rng::new(1);
//! let mut ctx = Context::new(NodeId(0), &members, Time::ZERO, &mut rng);
//! let mut node = Counter::default();
//! node.on_request(ClientId(9), 5, &mut ctx);
//! let effects = ctx.into_effects();
//! assert_eq!(effects.len(), 3);
//! assert!(matches!(effects[2], Effect::Reply { records_required: 1, .. }));
//! ```

use crate::rng::Rng;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::time::Duration;

/// The identity of a server node within a cluster.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "n{}", self.0)
    }
}

/// The identity of a client (a session owner, and a `process` in histories).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "c{}", self.0)
    }
}

/// Bounds every type a node exchanges with its driver: cloneable, comparable and hashable
/// so that the model checker can store and deduplicate global states.
pub trait Value: Clone + Debug + PartialEq + Eq + Hash {}
impl<T: Clone + Debug + PartialEq + Eq + Hash> Value for T {}

/// A protocol replica as a deterministic state machine.
///
/// Node state is `Clone + Eq + Hash` because the model checker hashes global states; keep
/// collections ordered (`BTreeMap`, `Vec`) so no hash-map iteration order leaks into
/// behaviour.
pub trait Node: Value {
    /// Messages between nodes.
    type Message: Value;
    /// Requests from clients.
    type Request: Value;
    /// Replies to clients.
    type Response: Value;
    /// Records written to durable storage and handed back on recovery.
    type Record: Value + Serialize + for<'de> Deserialize<'de>;
    /// Timer kinds; setting a timer equal to a pending one replaces it.
    type Timer: Value + Ord;

    /// First boot with empty storage.
    fn on_start(&mut self, ctx: &mut Context<Self>);
    /// Restart after a crash: `records` are the durable records, oldest first.
    fn on_recover(&mut self, records: Vec<Self::Record>, ctx: &mut Context<Self>);
    /// A message from another node.
    fn on_message(&mut self, from: NodeId, message: Self::Message, ctx: &mut Context<Self>);
    /// A timer set earlier with [`Context::set_timer`] fired.
    fn on_timer(&mut self, timer: Self::Timer, ctx: &mut Context<Self>);
    /// A request from a client.
    fn on_request(&mut self, client: ClientId, request: Self::Request, ctx: &mut Context<Self>);

    /// Why this node must stop, if it must: something it relies on beyond its records
    /// failed (e.g. a file its state machine keeps values in). A driver checks after every
    /// input and, once this is `Some`, stops the node without carrying out that input's
    /// effects (as a crash would). The default never halts.
    fn halted(&self) -> Option<String> {
        None
    }
}

/// An effect a node asks its driver to carry out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Effect<N: Node> {
    /// Send `message` to node `to`, once the first `records_required` records are durable.
    Send {
        /// The destination.
        to: NodeId,
        /// The payload.
        message: N::Message,
        /// How many of the node's records must be durable before the message may leave.
        records_required: u64,
    },
    /// Reply to a client, once the first `records_required` records are durable.
    Reply {
        /// The client.
        client: ClientId,
        /// The payload.
        response: N::Response,
        /// How many of the node's records must be durable before the reply may leave.
        records_required: u64,
    },
    /// Fire `timer` after a duration the driver picks uniformly in `after_min..=after_max`.
    SetTimer {
        /// The timer, replacing an equal pending one.
        timer: N::Timer,
        /// The earliest delay.
        after_min: Duration,
        /// The latest delay.
        after_max: Duration,
    },
    /// Cancel a pending timer equal to `timer` (no-op if none).
    CancelTimer {
        /// The timer to cancel.
        timer: N::Timer,
    },
    /// Append a record to durable storage (durable only after a later sync completes).
    Persist {
        /// The record.
        record: N::Record,
    },
    /// Append a record that supersedes every earlier one (a snapshot of everything the
    /// node must remember): once it is durable, storage may discard the records before it,
    /// and recovery hands back only it and the records after it.
    Checkpoint {
        /// The record.
        record: N::Record,
        /// The records before it already determine everything it holds (the node compacted
        /// its own log, see [`Context::compact`]). Storage may then write it in the
        /// background: it counts as durable with the next sync like any record, and until
        /// it is written, recovery may hand back the records it stands for instead of it.
        derived: bool,
    },
    /// Make every record appended so far durable.
    Sync,
}

/// What a handler sees of the world, and where it pushes its effects.
pub struct Context<'a, N: Node> {
    id: NodeId,
    members: &'a [NodeId],
    now: Time,
    rng: &'a mut Rng,
    records_appended: u64,
    effects: Vec<Effect<N>>,
}

impl<'a, N: Node> Context<'a, N> {
    /// A context for one handler call on node `id` at local time `now`.
    pub fn new(id: NodeId, members: &'a [NodeId], now: Time, rng: &'a mut Rng) -> Self {
        Context::with_records(id, members, now, rng, 0)
    }

    /// A context for a node that has already appended `records_appended` records in its
    /// current life (needed to tag outputs for the output-commit rule).
    pub fn with_records(
        id: NodeId,
        members: &'a [NodeId],
        now: Time,
        rng: &'a mut Rng,
        records_appended: u64,
    ) -> Self {
        Context {
            id,
            members,
            now,
            rng,
            records_appended,
            effects: Vec::new(),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Every node of the cluster, this one included, in ascending order.
    pub fn members(&self) -> &[NodeId] {
        self.members
    }

    /// The node's local clock (possibly skewed or drifting relative to other nodes).
    pub fn now(&self) -> Time {
        self.now
    }

    /// The node's seeded random number generator.
    pub fn rng(&mut self) -> &mut Rng {
        self.rng
    }

    /// Sends `message` to `to`.
    pub fn send(&mut self, to: NodeId, message: N::Message) {
        let records_required = self.records_appended;
        self.effects.push(Effect::Send {
            to,
            message,
            records_required,
        });
    }

    /// Sends `message` to every other member, in ascending id order.
    pub fn broadcast(&mut self, message: N::Message) {
        for index in 0..self.members.len() {
            let to = self.members[index];
            if to != self.id {
                self.send(to, message.clone());
            }
        }
    }

    /// Replies to `client`.
    pub fn reply(&mut self, client: ClientId, response: N::Response) {
        let records_required = self.records_appended;
        self.effects.push(Effect::Reply {
            client,
            response,
            records_required,
        });
    }

    /// Sets `timer` to fire after a delay in `after_min..=after_max` (the driver picks it).
    pub fn set_timer(&mut self, timer: N::Timer, after_min: Duration, after_max: Duration) {
        assert!(after_min <= after_max, "timer range is empty");
        self.effects.push(Effect::SetTimer {
            timer,
            after_min,
            after_max,
        });
    }

    /// Cancels a pending timer equal to `timer`.
    pub fn cancel_timer(&mut self, timer: N::Timer) {
        self.effects.push(Effect::CancelTimer { timer });
    }

    /// Appends `record` to durable storage; outputs emitted after this wait for its sync.
    pub fn persist(&mut self, record: N::Record) {
        self.records_appended += 1;
        self.effects.push(Effect::Persist { record });
    }

    /// Appends `record` as a checkpoint that supersedes every earlier record: once it is
    /// durable, recovery hands back only it and what follows. Outputs emitted after this
    /// wait for its sync, as with [`Context::persist`].
    pub fn checkpoint(&mut self, record: N::Record) {
        self.records_appended += 1;
        self.effects.push(Effect::Checkpoint {
            record,
            derived: false,
        });
    }

    /// Appends `record` as a checkpoint that the records before it already determine: a
    /// compaction of the node's own log, never state that arrived from elsewhere (such as
    /// a snapshot installed from a leader, which needs [`Context::checkpoint`]).
    ///
    /// Storage may write it in the background, so a large compaction never holds up the
    /// records after it. Recovery hands back either it and what follows, or, when a crash
    /// came before it was written, the records it stands for and then what follows: the
    /// node must recover the same state from both. Outputs emitted after this wait for its
    /// sync, as with [`Context::persist`].
    pub fn compact(&mut self, record: N::Record) {
        self.records_appended += 1;
        self.effects.push(Effect::Checkpoint {
            record,
            derived: true,
        });
    }

    /// Asks the driver to make every record appended so far durable.
    pub fn sync(&mut self) {
        self.effects.push(Effect::Sync);
    }

    /// How many records this node has appended in its current life.
    pub fn records_appended(&self) -> u64 {
        self.records_appended
    }

    /// The effects pushed so far, in order.
    pub fn effects(&self) -> &[Effect<N>] {
        &self.effects
    }

    /// Ends the handler call and hands its effects to the driver.
    pub fn into_effects(self) -> Vec<Effect<N>> {
        self.effects
    }
}

/// Holds outputs until the records they depend on are durable (the output-commit rule).
///
/// Drivers push every send and reply through [`OutputGate::submit`] and report completed
/// syncs with [`OutputGate::durable`]; outputs are released in submission order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutputGate<O> {
    durable_records: u64,
    held: VecDeque<(u64, O)>,
}

impl<O> Default for OutputGate<O> {
    fn default() -> Self {
        OutputGate {
            durable_records: 0,
            held: VecDeque::new(),
        }
    }
}

impl<O> OutputGate<O> {
    /// A gate for a node whose first `durable_records` records are already durable.
    pub fn new(durable_records: u64) -> Self {
        OutputGate {
            durable_records,
            held: VecDeque::new(),
        }
    }

    /// Offers an output that needs `records_required` durable records; returns it if it may
    /// leave now, otherwise holds it.
    pub fn submit(&mut self, records_required: u64, output: O) -> Option<O> {
        // An output may never overtake one submitted before it.
        if self.held.is_empty() && records_required <= self.durable_records {
            return Some(output);
        }
        self.held.push_back((records_required, output));
        None
    }

    /// Records that the first `durable_records` records are durable and releases every
    /// output that now may leave, in order.
    pub fn durable(&mut self, durable_records: u64) -> Vec<O> {
        self.durable_records = self.durable_records.max(durable_records);
        let mut released = Vec::new();
        while let Some((required, _)) = self.held.front() {
            if *required > self.durable_records {
                break;
            }
            if let Some((_, output)) = self.held.pop_front() {
                released.push(output);
            }
        }
        released
    }

    /// How many records are known durable.
    pub fn durable_records(&self) -> u64 {
        self.durable_records
    }

    /// How many outputs are waiting for a sync.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// A crash: every held output is lost with the node's volatile state.
    pub fn crash(&mut self) {
        self.held.clear();
    }
}

/// How an operation ended, as recorded in a history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Completion<O> {
    /// The operation took effect exactly once and produced this output.
    Ok(O),
    /// The operation definitely did not take effect.
    Fail(String),
    /// The operation may or may not have taken effect.
    Info(String),
}

/// An effect a client asks its driver to carry out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientEffect<C: Client> {
    /// Send a request to node `to`.
    Send {
        /// The destination node.
        to: NodeId,
        /// The request.
        request: <C::Node as Node>::Request,
    },
    /// Fire `timer` after a delay in `after_min..=after_max`.
    SetTimer {
        /// The timer, replacing an equal pending one.
        timer: C::Timer,
        /// The earliest delay.
        after_min: Duration,
        /// The latest delay.
        after_max: Duration,
    },
    /// Cancel a pending timer equal to `timer`.
    CancelTimer {
        /// The timer.
        timer: C::Timer,
    },
    /// The current operation is finished.
    Complete(Completion<C::Output>),
}

/// A client library as a deterministic state machine: it turns one operation at a time
/// into requests, retries, and a completion.
pub trait Client: Value {
    /// The nodes this client talks to.
    type Node: Node;
    /// What a workload asks the client to do.
    type Operation: Value;
    /// What a successful operation returns.
    type Output: Value;
    /// Timer kinds.
    type Timer: Value + Ord;

    /// Starts `operation`; the client has no other operation outstanding.
    fn on_invoke(&mut self, operation: Self::Operation, ctx: &mut ClientContext<Self>);
    /// A reply from node `from`.
    fn on_response(
        &mut self,
        from: NodeId,
        response: <Self::Node as Node>::Response,
        ctx: &mut ClientContext<Self>,
    );
    /// A timer fired.
    fn on_timer(&mut self, timer: Self::Timer, ctx: &mut ClientContext<Self>);
}

/// What a client handler sees, and where it pushes its effects.
pub struct ClientContext<'a, C: Client> {
    id: ClientId,
    members: &'a [NodeId],
    now: Time,
    rng: &'a mut Rng,
    effects: Vec<ClientEffect<C>>,
}

impl<'a, C: Client> ClientContext<'a, C> {
    /// A context for one handler call on client `id`.
    pub fn new(id: ClientId, members: &'a [NodeId], now: Time, rng: &'a mut Rng) -> Self {
        ClientContext {
            id,
            members,
            now,
            rng,
            effects: Vec::new(),
        }
    }

    /// This client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The cluster's nodes, ascending.
    pub fn members(&self) -> &[NodeId] {
        self.members
    }

    /// The client's clock.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The client's seeded random number generator.
    pub fn rng(&mut self) -> &mut Rng {
        self.rng
    }

    /// Sends `request` to node `to`.
    pub fn send(&mut self, to: NodeId, request: <C::Node as Node>::Request) {
        self.effects.push(ClientEffect::Send { to, request });
    }

    /// Sets `timer`.
    pub fn set_timer(&mut self, timer: C::Timer, after_min: Duration, after_max: Duration) {
        assert!(after_min <= after_max, "timer range is empty");
        self.effects.push(ClientEffect::SetTimer {
            timer,
            after_min,
            after_max,
        });
    }

    /// Cancels `timer`.
    pub fn cancel_timer(&mut self, timer: C::Timer) {
        self.effects.push(ClientEffect::CancelTimer { timer });
    }

    /// Completes the current operation.
    pub fn complete(&mut self, completion: Completion<C::Output>) {
        self.effects.push(ClientEffect::Complete(completion));
    }

    /// Ends the handler call and hands its effects to the driver.
    pub fn into_effects(self) -> Vec<ClientEffect<C>> {
        self.effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_wait_for_the_records_they_depend_on() {
        let mut gate = OutputGate::new(0);
        assert_eq!(gate.submit(0, "free"), Some("free"));
        assert_eq!(gate.submit(2, "needs two"), None);
        // Even an output that needs nothing may not overtake a held one.
        assert_eq!(gate.submit(0, "after"), None);
        assert_eq!(gate.held_len(), 2);
        assert_eq!(gate.durable(1), Vec::<&str>::new());
        assert_eq!(gate.durable(2), vec!["needs two", "after"]);
        assert_eq!(gate.held_len(), 0);
        assert_eq!(gate.submit(2, "now free"), Some("now free"));
    }

    #[test]
    fn a_crash_loses_held_outputs_and_durability_never_goes_back() {
        let mut gate = OutputGate::new(3);
        assert_eq!(gate.submit(4, 'x'), None);
        gate.crash();
        assert_eq!(gate.held_len(), 0);
        assert!(gate.durable(1).is_empty());
        assert_eq!(gate.durable_records(), 3);
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Echo;

    impl Node for Echo {
        type Message = u8;
        type Request = u8;
        type Response = u8;
        type Record = u8;
        type Timer = u8;
        fn on_start(&mut self, ctx: &mut Context<Self>) {
            ctx.broadcast(1);
        }
        fn on_recover(&mut self, _records: Vec<u8>, _ctx: &mut Context<Self>) {}
        fn on_message(&mut self, _from: NodeId, _message: u8, _ctx: &mut Context<Self>) {}
        fn on_timer(&mut self, _timer: u8, _ctx: &mut Context<Self>) {}
        fn on_request(&mut self, client: ClientId, request: u8, ctx: &mut Context<Self>) {
            ctx.reply(client, request);
            ctx.persist(request);
            ctx.send(NodeId(1), request);
        }
    }

    #[test]
    fn ids_display_with_their_kind() {
        assert_eq!(NodeId(3).to_string(), "n3");
        assert_eq!(ClientId(12).to_string(), "c12");
    }

    #[test]
    fn the_context_reports_what_the_driver_gave_it() {
        let members = [NodeId(0), NodeId(4)];
        let mut rng = Rng::new(9);
        let expected_draw = Rng::new(9).next_u64();
        let mut ctx: Context<Echo> = Context::new(NodeId(4), &members, Time(77), &mut rng);
        assert_eq!(ctx.id(), NodeId(4));
        assert_eq!(ctx.members(), &members);
        assert_eq!(ctx.now(), Time(77));
        assert_eq!(ctx.rng().next_u64(), expected_draw);
        ctx.set_timer(3, Duration::from_millis(1), Duration::from_millis(2));
        ctx.cancel_timer(3);
        ctx.sync();
        assert_eq!(
            ctx.effects(),
            &[
                Effect::SetTimer {
                    timer: 3,
                    after_min: Duration::from_millis(1),
                    after_max: Duration::from_millis(2),
                },
                Effect::CancelTimer { timer: 3 },
                Effect::Sync,
            ]
        );
    }

    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Once;

    impl Client for Once {
        type Node = Echo;
        type Operation = u8;
        type Output = u8;
        type Timer = u8;
        fn on_invoke(&mut self, operation: u8, ctx: &mut ClientContext<Self>) {
            ctx.send(NodeId(0), operation);
            ctx.set_timer(1, Duration::ZERO, Duration::from_millis(5));
        }
        fn on_response(&mut self, _from: NodeId, response: u8, ctx: &mut ClientContext<Self>) {
            ctx.cancel_timer(1);
            ctx.complete(Completion::Ok(response));
        }
        fn on_timer(&mut self, _timer: u8, _ctx: &mut ClientContext<Self>) {}
    }

    #[test]
    fn the_client_context_collects_effects_in_order() {
        let members = [NodeId(0)];
        let mut rng = Rng::new(1);
        let mut ctx = ClientContext::new(ClientId(2), &members, Time(5), &mut rng);
        assert_eq!(
            (ctx.id(), ctx.members(), ctx.now()),
            (ClientId(2), &members[..], Time(5))
        );
        Once.on_invoke(7, &mut ctx);
        Once.on_response(NodeId(0), 8, &mut ctx);
        assert_eq!(
            ctx.into_effects(),
            vec![
                ClientEffect::Send {
                    to: NodeId(0),
                    request: 7
                },
                ClientEffect::SetTimer {
                    timer: 1,
                    after_min: Duration::ZERO,
                    after_max: Duration::from_millis(5),
                },
                ClientEffect::CancelTimer { timer: 1 },
                ClientEffect::Complete(Completion::Ok(8)),
            ]
        );
    }

    #[test]
    fn broadcast_skips_self_in_ascending_order() {
        let members = [NodeId(0), NodeId(1), NodeId(2)];
        let mut rng = Rng::new(0);
        let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
        Echo.on_start(&mut ctx);
        let targets: Vec<NodeId> = ctx
            .into_effects()
            .into_iter()
            .filter_map(|effect| match effect {
                Effect::Send { to, .. } => Some(to),
                _ => None,
            })
            .collect();
        assert_eq!(targets, vec![NodeId(0), NodeId(2)]);
    }

    #[test]
    fn outputs_are_tagged_with_the_records_appended_before_them() {
        let members = [NodeId(0), NodeId(1)];
        let mut rng = Rng::new(0);
        let mut ctx = Context::with_records(NodeId(0), &members, Time::ZERO, &mut rng, 5);
        Echo.on_request(ClientId(3), 7, &mut ctx);
        assert_eq!(ctx.records_appended(), 6);
        let effects = ctx.into_effects();
        assert!(matches!(
            effects[0],
            Effect::Reply {
                records_required: 5,
                ..
            }
        ));
        assert!(matches!(
            effects[2],
            Effect::Send {
                records_required: 6,
                ..
            }
        ));
    }
}
