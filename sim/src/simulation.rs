//! The simulation engine: one thread, virtual time, one seed.
//!
//! Every input a node or client sees is an event in one priority queue ordered by
//! (virtual time, insertion number), so ties break the same way on every run. Each random
//! choice draws from a stream derived from the seed ([`Rng::derive`]): the network, the
//! nemesis, timer delays, the workload and every node and client own separate streams, so
//! adding draws to one never shifts another. Every processed event is fed to a stable hash,
//! the *trace hash*; the same seed and binary give the same hash, byte for byte.
//!
//! A run has two phases, as in TigerBeetle's VOPR: a *safety* phase in which the enabled
//! faults strike, and once a share of the workload has been invoked a *liveness* phase in
//! which every fault is healed and the cluster must finish the remaining operations within
//! a bound.

use crate::config::{FaultKind, SimConfig};
use crate::model_checker::cluster::ClusterAction;
pub use crate::packet::Endpoint;
pub use crate::packet::NodeOf;
use crate::packet::Packet;
use crate::workload::Workload;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::time::{Duration, Instant};
use synod_check::history::{Event, EventKind};
use synod_core::frame::{decode_all, decode_record, encode_record};
use synod_core::hash::StableHasher;
use synod_core::node::{
    Client, ClientContext, ClientEffect, ClientId, Completion, Context, Effect, Node, NodeId,
    OutputGate,
};
use synod_core::rng::Rng;
use synod_core::time::{Time, duration_nanos};

/// Stream numbers for [`Rng::derive`]; node and client streams are offset by their ids.
const STREAM_NETWORK: u64 = 1;
const STREAM_NEMESIS: u64 = 2;
const STREAM_TIMERS: u64 = 3;
const STREAM_WORKLOAD: u64 = 4;
const STREAM_DISK: u64 = 5;
const STREAM_NODE_BASE: u64 = 1 << 32;
const STREAM_CLIENT_BASE: u64 = 2 << 32;

/// Virtual time between two replayed model-checker actions.
const REPLAY_STEP: Duration = Duration::from_micros(1);

/// Without healing, a run that has not finished after this many liveness bounds is stuck.
const UNHEALED_RUN_LIMIT_FACTOR: u32 = 10;

/// One fault (or its repair) the nemesis applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NemesisAction {
    /// Block every listed (from, to) link, replacing any earlier partition.
    Partition {
        /// The blocked directed links.
        blocked: BTreeSet<(Endpoint, Endpoint)>,
    },
    /// Unblock every link.
    HealPartition,
    /// Crash a node: volatile state and unsynced records are lost.
    Crash {
        /// The node.
        node: NodeId,
        /// Whether the first unsynced record is left half written.
        tear: bool,
    },
    /// Restart a crashed node from its durable records.
    Restart {
        /// The node.
        node: NodeId,
    },
    /// Freeze a node; its inputs queue up.
    Pause {
        /// The node.
        node: NodeId,
    },
    /// Unfreeze a node and deliver what queued up.
    Resume {
        /// The node.
        node: NodeId,
    },
    /// Move a node's clock forward.
    ClockJump {
        /// The node.
        node: NodeId,
        /// How far.
        forward: Duration,
    },
    /// Make a node's clock run fast (positive) or slow (negative).
    ClockDrift {
        /// The node.
        node: NodeId,
        /// Drift in parts per million.
        parts_per_million: i32,
    },
    /// End the safety phase: heal partitions, restart and resume every node, stop faults.
    HealAll,
}

/// Something that happens at an instant of virtual time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum SimEvent<C: Client> {
    Deliver(Packet<C>),
    NodeTimer {
        node: NodeId,
        timer: <NodeOf<C> as Node>::Timer,
        generation: u64,
    },
    ClientTimer {
        client: ClientId,
        timer: C::Timer,
        generation: u64,
    },
    SyncDone {
        node: NodeId,
        life: u64,
        records: u64,
    },
    Invoke {
        client: ClientId,
    },
    NemesisTick,
    Nemesis(NemesisAction),
}

impl<C: Client> SimEvent<C> {
    /// The node whose pause would hold this event back.
    fn target_node(&self) -> Option<NodeId> {
        match self {
            SimEvent::Deliver(Packet::Message { to, .. } | Packet::Request { to, .. }) => Some(*to),
            SimEvent::NodeTimer { node, .. } | SimEvent::SyncDone { node, .. } => Some(*node),
            _ => None,
        }
    }
}

/// A queued event; the heap pops the earliest time, then the earliest insertion.
struct Queued<C: Client> {
    at: Time,
    order: u64,
    event: SimEvent<C>,
}

impl<C: Client> PartialEq for Queued<C> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<C: Client> Eq for Queued<C> {}
impl<C: Client> PartialOrd for Queued<C> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<C: Client> Ord for Queued<C> {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// A node's local clock: piecewise linear in virtual time, never going backwards.
#[derive(Clone, Debug)]
struct NodeClock {
    anchor_virtual: Time,
    anchor_local: Time,
    drift_parts_per_million: i32,
}

impl NodeClock {
    fn local(&self, now: Time) -> Time {
        let elapsed = now
            .as_nanos()
            .saturating_sub(self.anchor_virtual.as_nanos()) as i128;
        let scaled = elapsed * (1_000_000 + i128::from(self.drift_parts_per_million)) / 1_000_000;
        Time(
            self.anchor_local
                .as_nanos()
                .saturating_add(scaled.max(0) as u64),
        )
    }

    /// The virtual delay after which `local_delay` has passed on this clock.
    fn virtual_delay(&self, local_delay: Duration) -> Duration {
        let rate = 1_000_000 + i128::from(self.drift_parts_per_million);
        let nanos = i128::from(duration_nanos(local_delay)) * 1_000_000 / rate.max(1);
        Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
    }

    fn reanchor(&mut self, now: Time) {
        self.anchor_local = self.local(now);
        self.anchor_virtual = now;
    }
}

/// An output a node emitted, waiting on the output-commit gate.
type NodeOutput<C> = Packet<C>;

/// Everything the simulator keeps about one node.
/// A framed record appended in the current life.
#[derive(Clone, Debug)]
struct LifeFrame {
    frame: Vec<u8>,
    /// A checkpoint supersedes every earlier record once durable.
    checkpoint: bool,
    /// A compaction ([`synod_core::node::Context::compact`]): written in the background,
    /// so a crash may find it unwritten.
    derived: bool,
}

/// A compaction that is durable as a record but not yet written in place of the records it
/// stands for (a log writes it in the background).
#[derive(Clone, Debug)]
struct PendingCompaction {
    /// Where on the disk the records it stands for end.
    covers: usize,
    frame: Vec<u8>,
}

struct NodeSlot<C: Client> {
    state: Option<NodeOf<C>>,
    /// Incremented by every crash; sync completions from an earlier life are ignored.
    life: u64,
    paused: bool,
    deferred: Vec<SimEvent<C>>,
    /// The bytes that survived: framed records from earlier lives and synced ones of this.
    disk: Vec<u8>,
    /// Framed records appended in this life, synced or not.
    life_frames: Vec<LifeFrame>,
    /// How many of `life_frames` are durable.
    life_durable: u64,
    /// A durable compaction not yet written over the records it stands for; a crash
    /// drops it, and recovery gets those records instead.
    compaction: Option<PendingCompaction>,
    gate: OutputGate<NodeOutput<C>>,
    timers: BTreeMap<<NodeOf<C> as Node>::Timer, u64>,
    clock: NodeClock,
    rng: Rng,
}

/// Everything the simulator keeps about one client.
struct ClientSlot<C: Client, W: Workload> {
    state: C,
    rng: Rng,
    timers: BTreeMap<C::Timer, u64>,
    outstanding: Option<(W::Operation, Time)>,
    finished: bool,
}

/// Read-only access to node states for invariants.
pub struct Nodes<'a, C: Client> {
    slots: &'a [NodeSlot<C>],
}

impl<'a, C: Client> Nodes<'a, C> {
    /// The state of a running node, `None` while it is crashed.
    pub fn get(&self, node: NodeId) -> Option<&'a NodeOf<C>> {
        self.slots.get(node.0 as usize)?.state.as_ref()
    }

    /// Every running node with its id.
    pub fn running(&self) -> impl Iterator<Item = (NodeId, &'a NodeOf<C>)> + 'a {
        let slots = self.slots;
        slots.iter().enumerate().filter_map(|(index, slot)| {
            slot.state
                .as_ref()
                .map(|state| (NodeId(index as u32), state))
        })
    }
}

/// A property that must hold after every event; returns a description when it does not.
pub type Invariant<C> = Box<dyn Fn(&Nodes<'_, C>) -> Result<(), String>>;

/// Builds a node's initial (pre-start or pre-recovery) state.
pub type NodeFactory<C> = Box<dyn Fn(NodeId) -> NodeOf<C>>;

/// Operation counts by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Completed `ok`.
    pub ok: u64,
    /// Completed `fail` (did not happen).
    pub fail: u64,
    /// Completed `info` or never completed (unknown).
    pub info: u64,
}

/// What one simulated run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The run's seed.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time the run covered.
    pub simulated: Duration,
    /// Real time the run took (not part of the trace).
    pub elapsed: Duration,
    /// The stable hash of every processed event.
    pub trace_hash: u64,
    /// The recorded history.
    pub history: Vec<Event>,
    /// Operations by outcome.
    pub outcomes: OutcomeCounts,
    /// Faults injected, by kind name.
    pub faults: BTreeMap<&'static str, u64>,
    /// The first invariant that broke, with the virtual time.
    pub invariant_violation: Option<String>,
    /// Why the healed cluster failed to finish the workload, if it did.
    pub liveness_violation: Option<String>,
    /// The first error writing the trace file, if any.
    pub trace_error: Option<String>,
}

/// A simulated cluster of `C::Node`s driven by `C` clients running workload `W`.
pub struct Simulation<C: Client, W: Workload<Operation = C::Operation, Output = C::Output>> {
    config: SimConfig,
    now: Time,
    queue: BinaryHeap<Queued<C>>,
    next_order: u64,
    members: Vec<NodeId>,
    nodes: Vec<NodeSlot<C>>,
    clients: Vec<ClientSlot<C, W>>,
    make_node: NodeFactory<C>,
    workload: W,
    invariants: Vec<Invariant<C>>,
    scripted_nemesis: bool,
    blocked: BTreeSet<(Endpoint, Endpoint)>,
    faults_active: bool,
    /// Replaying a model checker's path: compactions are written only when the path
    /// says so, never at random.
    replaying: bool,
    healed_at: Option<Time>,
    next_timer_generation: u64,
    network_rng: Rng,
    nemesis_rng: Rng,
    timer_rng: Rng,
    workload_rng: Rng,
    disk_rng: Rng,
    hasher: StableHasher,
    trace: Option<Box<dyn Write>>,
    trace_error: Option<String>,
    events: u64,
    operations_total: u64,
    operations_invoked: u64,
    history: Vec<Event>,
    outcomes: OutcomeCounts,
    faults: BTreeMap<&'static str, u64>,
    invariant_violation: Option<String>,
    liveness_violation: Option<String>,
}

impl<C, W> Simulation<C, W>
where
    C: Client,
    W: Workload<Operation = C::Operation, Output = C::Output>,
{
    /// A cluster of `config.nodes` nodes built by `make_node` and `config.workload.clients`
    /// clients built by `make_client`, ready to [`run`](Simulation::run).
    pub fn new(
        config: SimConfig,
        make_node: NodeFactory<C>,
        make_client: impl Fn(ClientId, &[NodeId]) -> C,
        workload: W,
    ) -> Self {
        assert!(config.nodes > 0, "a cluster needs a node");
        let seed = config.seed;
        let members: Vec<NodeId> = (0..config.nodes).map(NodeId).collect();
        let nodes = members
            .iter()
            .map(|&id| NodeSlot {
                state: None,
                life: 0,
                paused: false,
                deferred: Vec::new(),
                disk: Vec::new(),
                life_frames: Vec::new(),
                life_durable: 0,
                compaction: None,
                gate: OutputGate::new(0),
                timers: BTreeMap::new(),
                clock: NodeClock {
                    anchor_virtual: Time::ZERO,
                    anchor_local: Time::ZERO,
                    drift_parts_per_million: 0,
                },
                rng: Rng::derive(seed, STREAM_NODE_BASE + u64::from(id.0)),
            })
            .collect();
        let clients = (0..config.workload.clients)
            .map(|index| {
                let id = ClientId(u64::from(index));
                ClientSlot {
                    state: make_client(id, &members),
                    rng: Rng::derive(seed, STREAM_CLIENT_BASE + id.0),
                    timers: BTreeMap::new(),
                    outstanding: None,
                    finished: false,
                }
            })
            .collect();
        let operations_total =
            u64::from(config.workload.clients) * u64::from(config.workload.operations_per_client);
        Simulation {
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            next_order: 0,
            members,
            nodes,
            clients,
            make_node,
            workload,
            invariants: Vec::new(),
            scripted_nemesis: false,
            blocked: BTreeSet::new(),
            faults_active: true,
            replaying: false,
            healed_at: None,
            next_timer_generation: 0,
            network_rng: Rng::derive(seed, STREAM_NETWORK),
            nemesis_rng: Rng::derive(seed, STREAM_NEMESIS),
            timer_rng: Rng::derive(seed, STREAM_TIMERS),
            workload_rng: Rng::derive(seed, STREAM_WORKLOAD),
            disk_rng: Rng::derive(seed, STREAM_DISK),
            hasher: StableHasher::new(),
            trace: None,
            trace_error: None,
            events: 0,
            operations_total,
            operations_invoked: 0,
            history: Vec::new(),
            outcomes: OutcomeCounts::default(),
            faults: BTreeMap::new(),
            invariant_violation: None,
            liveness_violation: None,
            config,
        }
    }

    /// Adds a property checked after every event.
    pub fn add_invariant(&mut self, invariant: Invariant<C>) {
        self.invariants.push(invariant);
    }

    /// Writes a line per event to `trace`.
    pub fn set_trace(&mut self, trace: Box<dyn Write>) {
        self.trace = Some(trace);
    }

    /// Replaces the random nemesis with a script of (virtual time, action) steps.
    pub fn script_nemesis(&mut self, steps: Vec<(Duration, NemesisAction)>) {
        self.scripted_nemesis = true;
        for (at, action) in steps {
            self.schedule(Time::ZERO + at, SimEvent::Nemesis(action));
        }
    }

    /// Runs until every client finished its operations, a liveness bound passed, or an
    /// invariant broke.
    pub fn run(mut self) -> RunReport {
        let started = Instant::now();
        self.boot();
        while !self.finished() {
            let Some(queued) = self.queue.pop() else {
                self.liveness_violation = Some(format!(
                    "at {}: nothing left to happen but {} operations are unfinished; clients still busy: {}",
                    self.now,
                    self.operations_total - self.completed_operations(),
                    self.busy_clients()
                ));
                break;
            };
            self.now = queued.at;
            if let Some(limit) = self.deadline()
                && self.now > limit
            {
                self.liveness_violation = Some(self.describe_unfinished(limit));
                break;
            }
            self.process(queued.event);
            if self.invariant_violation.is_some() {
                break;
            }
            if self.events >= self.config.max_events {
                self.liveness_violation = Some(format!(
                    "gave up after {} events at {} (raise max_events if this is a long run)",
                    self.events, self.now
                ));
                break;
            }
        }
        self.finish(started.elapsed())
    }

    /// Replays a model checker's path (`synod_sim::model_checker`) in the simulator: each
    /// action is carried out in order instead of drawing events from the queue, with
    /// syncs completing at once (the checker's default) and nothing random in between.
    /// Invariants, the trace and the history work as in [`Simulation::run`], so a
    /// counterexample found by the checker shows up here as the same violation, with a
    /// trace and a history to inspect. Pair it with the workload the checker's clients ran
    /// (e.g. [`crate::workload::ScriptedKvWorkload`]).
    pub fn replay(mut self, actions: &[ClusterAction<C>]) -> RunReport {
        let started = Instant::now();
        self.faults_active = false;
        self.replaying = true;
        self.boot_nodes();
        self.settle_syncs();
        for action in actions {
            self.now = self.now + REPLAY_STEP;
            self.trace_line(|| format!("replay {action:?}"));
            match action.clone() {
                ClusterAction::Deliver(packet) => self.process(SimEvent::Deliver(packet)),
                ClusterAction::NodeTimer { node, timer } => {
                    if let Some(&generation) = self.nodes[node.0 as usize].timers.get(&timer) {
                        self.process(SimEvent::NodeTimer {
                            node,
                            timer,
                            generation,
                        });
                    }
                }
                ClusterAction::ClientTimer { client, timer } => {
                    if let Some(&generation) = self.clients[client.0 as usize].timers.get(&timer) {
                        self.process(SimEvent::ClientTimer {
                            client,
                            timer,
                            generation,
                        });
                    }
                }
                ClusterAction::Invoke { client } => self.process(SimEvent::Invoke { client }),
                ClusterAction::CompleteSync { .. } => {}
                ClusterAction::Crash { node } => self.crash(node, false),
                ClusterAction::Restart { node } => self.restart(node),
                ClusterAction::WriteCompaction { node } => {
                    land_compaction(&mut self.nodes[node.0 as usize]);
                }
            }
            self.settle_syncs();
            self.check_invariants();
            if self.invariant_violation.is_some() {
                break;
            }
        }
        self.finish(started.elapsed())
    }

    /// In replay: completes every requested sync now and drops every other queued event
    /// (the path says what is delivered and when timers fire).
    fn settle_syncs(&mut self) {
        while let Some(queued) = self.queue.pop() {
            if let SimEvent::SyncDone { .. } = queued.event {
                self.process(queued.event);
            }
        }
    }

    fn boot(&mut self) {
        self.boot_nodes();
        for index in 0..self.clients.len() {
            let delay = self.random_think_time();
            self.schedule(
                self.now + delay,
                SimEvent::Invoke {
                    client: ClientId(index as u64),
                },
            );
        }
        if !self.scripted_nemesis && self.nemesis_kinds().next().is_some() {
            let delay = self.random_nemesis_interval();
            self.schedule(self.now + delay, SimEvent::NemesisTick);
        }
    }

    fn boot_nodes(&mut self) {
        let seed = self.config.seed;
        self.trace_line(|| format!("seed {seed}"));
        for index in 0..self.nodes.len() {
            let node = NodeId(index as u32);
            self.nodes[index].state = Some((self.make_node)(node));
            self.with_node(node, |state, ctx| state.on_start(ctx));
        }
    }

    fn finished(&self) -> bool {
        self.clients
            .iter()
            .all(|client| client.finished && client.outstanding.is_none())
    }

    fn completed_operations(&self) -> u64 {
        self.outcomes.ok + self.outcomes.fail + self.outcomes.info
    }

    fn deadline(&self) -> Option<Time> {
        match self.healed_at {
            Some(healed) => Some(healed + self.config.liveness_bound),
            None => Some(Time::ZERO + self.config.liveness_bound * UNHEALED_RUN_LIMIT_FACTOR),
        }
    }

    fn busy_clients(&self) -> String {
        let waiting: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, client)| !client.finished || client.outstanding.is_some())
            .map(|(index, _)| format!("c{index}"))
            .collect();
        waiting.join(", ")
    }

    fn describe_unfinished(&self, limit: Time) -> String {
        let phase = if self.healed_at.is_some() {
            "after every fault was healed"
        } else {
            "without ever healing"
        };
        format!(
            "the workload did not finish by {limit} {phase}; clients still busy: {}",
            self.busy_clients()
        )
    }

    fn schedule(&mut self, at: Time, event: SimEvent<C>) {
        let order = self.next_order;
        self.next_order += 1;
        self.queue.push(Queued { at, order, event });
    }

    fn trace_line(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = self.trace.as_mut()
            && self.trace_error.is_none()
            && let Err(error) = writeln!(trace, "{:>14} {}", self.now.as_nanos(), line())
        {
            self.trace_error = Some(error.to_string());
        }
    }

    fn process(&mut self, event: SimEvent<C>) {
        if let Some(node) = event.target_node()
            && self.nodes[node.0 as usize].paused
        {
            self.nodes[node.0 as usize].deferred.push(event);
            return;
        }
        self.events += 1;
        self.now.hash(&mut self.hasher);
        event.hash(&mut self.hasher);
        self.trace_line(|| format!("{event:?}"));
        match event {
            SimEvent::Deliver(packet) => self.on_deliver(packet),
            SimEvent::NodeTimer {
                node,
                timer,
                generation,
            } => {
                let slot = &mut self.nodes[node.0 as usize];
                if slot.timers.get(&timer) == Some(&generation) {
                    slot.timers.remove(&timer);
                    self.with_node(node, |state, ctx| state.on_timer(timer, ctx));
                }
            }
            SimEvent::ClientTimer {
                client,
                timer,
                generation,
            } => {
                let slot = &mut self.clients[client.0 as usize];
                if slot.timers.get(&timer) == Some(&generation) {
                    slot.timers.remove(&timer);
                    self.with_client(client, |state, ctx| state.on_timer(timer, ctx));
                }
            }
            SimEvent::SyncDone {
                node,
                life,
                records,
            } => self.on_sync_done(node, life, records),
            SimEvent::Invoke { client } => self.on_invoke(client),
            SimEvent::NemesisTick => self.on_nemesis_tick(),
            SimEvent::Nemesis(action) => self.apply_nemesis(action),
        }
        self.check_invariants();
    }

    fn check_invariants(&mut self) {
        if self.invariant_violation.is_some() {
            return;
        }
        let nodes = Nodes { slots: &self.nodes };
        for invariant in &self.invariants {
            if let Err(message) = invariant(&nodes) {
                self.invariant_violation = Some(format!("at {}: {message}", self.now));
                return;
            }
        }
    }

    fn on_deliver(&mut self, packet: Packet<C>) {
        match packet {
            Packet::Message { from, to, message } => {
                self.with_node(to, |state, ctx| state.on_message(from, message, ctx));
            }
            Packet::Request { from, to, request } => {
                self.with_node(to, |state, ctx| state.on_request(from, request, ctx));
            }
            Packet::Response { from, to, response } => {
                self.with_client(to, |state, ctx| state.on_response(from, response, ctx));
            }
        }
    }

    /// Runs one handler on a running node and carries out its effects.
    fn with_node(
        &mut self,
        node: NodeId,
        handler: impl FnOnce(&mut NodeOf<C>, &mut Context<'_, NodeOf<C>>),
    ) {
        let now = self.now;
        let slot = &mut self.nodes[node.0 as usize];
        let Some(state) = slot.state.as_mut() else {
            return; // Crashed: the input is lost.
        };
        let local = slot.clock.local(now);
        let appended = slot.life_frames.len() as u64;
        let mut ctx = Context::with_records(node, &self.members, local, &mut slot.rng, appended);
        handler(state, &mut ctx);
        let effects = ctx.into_effects();
        for effect in effects {
            self.apply_node_effect(node, effect);
        }
    }

    fn apply_node_effect(&mut self, node: NodeId, effect: Effect<NodeOf<C>>) {
        let index = node.0 as usize;
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
                if let Some(packet) = self.nodes[index].gate.submit(records_required, packet) {
                    self.transmit(packet);
                }
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
                if let Some(packet) = self.nodes[index].gate.submit(records_required, packet) {
                    self.transmit(packet);
                }
            }
            Effect::SetTimer {
                timer,
                after_min,
                after_max,
            } => {
                let local_delay = self.random_duration(after_min, after_max);
                let generation = self.next_timer_generation;
                self.next_timer_generation += 1;
                let slot = &mut self.nodes[index];
                slot.timers.insert(timer.clone(), generation);
                let delay = slot.clock.virtual_delay(local_delay);
                self.schedule(
                    self.now + delay,
                    SimEvent::NodeTimer {
                        node,
                        timer,
                        generation,
                    },
                );
            }
            Effect::CancelTimer { timer } => {
                self.nodes[index].timers.remove(&timer);
            }
            Effect::Persist { record } => self.append_frame(index, &record, false, false),
            Effect::Checkpoint { record, derived } => {
                self.append_frame(index, &record, true, derived)
            }
            Effect::Sync => {
                let latency = self
                    .random_duration(self.config.sync_latency_min, self.config.sync_latency_max);
                let slot = &self.nodes[index];
                let event = SimEvent::SyncDone {
                    node,
                    life: slot.life,
                    records: slot.life_frames.len() as u64,
                };
                self.schedule(self.now + latency, event);
            }
        }
    }

    /// Frames `record` and appends it to the node's unsynced tail.
    fn append_frame(
        &mut self,
        index: usize,
        record: &<NodeOf<C> as Node>::Record,
        checkpoint: bool,
        derived: bool,
    ) {
        let mut frame = Vec::new();
        encode_record(record, &mut frame)
            .expect("a protocol record fits in one frame (MAX_FRAME_PAYLOAD_BYTES)");
        self.nodes[index].life_frames.push(LifeFrame {
            frame,
            checkpoint,
            derived,
        });
    }

    fn on_sync_done(&mut self, node: NodeId, life: u64, records: u64) {
        let slot = &mut self.nodes[node.0 as usize];
        if slot.life != life || slot.state.is_none() || records <= slot.life_durable {
            return;
        }
        // A compaction written in the background lands at some later sync, or never if
        // the node crashes first.
        if slot.compaction.is_some() && !self.replaying && self.disk_rng.chance(0.5) {
            land_compaction(slot);
        }
        let newly_durable = slot.life_durable as usize..records as usize;
        for position in newly_durable {
            let written = &slot.life_frames[position];
            if written.derived {
                let frame = written.frame.clone();
                // A log finishes one compaction before it starts the next.
                land_compaction(slot);
                slot.compaction = Some(PendingCompaction {
                    covers: slot.disk.len(),
                    frame,
                });
                continue;
            }
            if written.checkpoint {
                // Everything before a durable checkpoint is superseded: storage drops it.
                slot.disk.clear();
                slot.compaction = None;
            }
            slot.disk
                .extend_from_slice(&slot.life_frames[position].frame);
        }
        slot.life_durable = records;
        let released = slot.gate.durable(records);
        for packet in released {
            self.transmit(packet);
        }
    }

    /// Puts a packet on the wire: partitions and network faults decide its fate.
    fn transmit(&mut self, packet: Packet<C>) {
        let route = packet.route();
        if self.blocked.contains(&route) {
            self.trace_line(|| format!("partitioned {packet:?}"));
            return;
        }
        let network = &self.config.network;
        let faulty = self.faults_active;
        if faulty
            && self.config.faults.contains(FaultKind::Drop)
            && self.network_rng.chance(network.drop_probability)
        {
            self.trace_line(|| format!("dropped {packet:?}"));
            self.count_fault("drop");
            return;
        }
        let copies = if faulty
            && self.config.faults.contains(FaultKind::Duplicate)
            && self.network_rng.chance(network.duplicate_probability)
        {
            2
        } else {
            1
        };
        if copies == 2 {
            self.count_fault("duplicate");
            let delay = self.network_delay();
            self.schedule(self.now + delay, SimEvent::Deliver(packet.clone()));
        }
        let delay = self.network_delay();
        self.schedule(self.now + delay, SimEvent::Deliver(packet));
    }

    /// One message's delivery delay: ordinary latency, sometimes held back to reorder.
    fn network_delay(&mut self) -> Duration {
        let network = &self.config.network;
        let mut delay = random_between(
            &mut self.network_rng,
            network.latency_min,
            network.latency_max,
        );
        if self.faults_active
            && self.config.faults.contains(FaultKind::Reorder)
            && self.network_rng.chance(network.reorder_probability)
        {
            *self.faults.entry("reorder").or_insert(0) += 1;
            delay += random_between(
                &mut self.network_rng,
                Duration::ZERO,
                network.reorder_delay_max,
            );
        }
        delay
    }

    /// Runs one handler on a client and carries out its effects.
    fn with_client(
        &mut self,
        client: ClientId,
        handler: impl FnOnce(&mut C, &mut ClientContext<'_, C>),
    ) {
        let slot = &mut self.clients[client.0 as usize];
        let mut ctx = ClientContext::new(client, &self.members, self.now, &mut slot.rng);
        handler(&mut slot.state, &mut ctx);
        for effect in ctx.into_effects() {
            self.apply_client_effect(client, effect);
        }
    }

    fn apply_client_effect(&mut self, client: ClientId, effect: ClientEffect<C>) {
        let index = client.0 as usize;
        match effect {
            ClientEffect::Send { to, request } => self.transmit(Packet::Request {
                from: client,
                to,
                request,
            }),
            ClientEffect::SetTimer {
                timer,
                after_min,
                after_max,
            } => {
                let delay = self.random_duration(after_min, after_max);
                let generation = self.next_timer_generation;
                self.next_timer_generation += 1;
                self.clients[index].timers.insert(timer.clone(), generation);
                self.schedule(
                    self.now + delay,
                    SimEvent::ClientTimer {
                        client,
                        timer,
                        generation,
                    },
                );
            }
            ClientEffect::CancelTimer { timer } => {
                self.clients[index].timers.remove(&timer);
            }
            ClientEffect::Complete(completion) => self.on_complete(client, completion),
        }
    }

    fn on_invoke(&mut self, client: ClientId) {
        let index = client.0 as usize;
        assert!(self.clients[index].outstanding.is_none());
        let Some(operation) = self.workload.next_operation(client, &mut self.workload_rng) else {
            self.clients[index].finished = true;
            return;
        };
        let (f, key, value) = self.workload.describe_invoke(&operation);
        self.history.push(Event {
            process: client.0,
            kind: EventKind::Invoke,
            f,
            key,
            value,
            time: self.now.as_nanos(),
        });
        self.clients[index].outstanding = Some((operation.clone(), self.now));
        self.operations_invoked += 1;
        let heal_threshold =
            (self.operations_total as f64 * self.config.heal_after_fraction).ceil() as u64;
        if self.faults_active && self.operations_invoked >= heal_threshold {
            self.schedule(self.now, SimEvent::Nemesis(NemesisAction::HealAll));
        }
        self.with_client(client, |state, ctx| state.on_invoke(operation, ctx));
    }

    fn on_complete(&mut self, client: ClientId, completion: Completion<C::Output>) {
        let index = client.0 as usize;
        let (operation, invoked_at) = self.clients[index]
            .outstanding
            .take()
            .expect("a client completed an operation it was never given");
        let (f, key, invoke_value) = self.workload.describe_invoke(&operation);
        let (kind, value) = match &completion {
            Completion::Ok(output) => {
                self.outcomes.ok += 1;
                (EventKind::Ok, self.workload.describe_ok(&operation, output))
            }
            Completion::Fail(_) => {
                self.outcomes.fail += 1;
                (EventKind::Fail, invoke_value)
            }
            Completion::Info(_) => {
                self.outcomes.info += 1;
                (EventKind::Info, invoke_value)
            }
        };
        if let Some(healed) = self.healed_at
            && invoked_at >= healed + self.config.liveness_settle
            && kind != EventKind::Ok
            && self.liveness_violation.is_none()
        {
            self.liveness_violation = Some(format!(
                "at {}: {f} by c{} invoked at {invoked_at}, after the cluster healed at {healed}, ended {completion:?}",
                self.now, client.0
            ));
        }
        self.history.push(Event {
            process: client.0,
            kind,
            f,
            key,
            value,
            time: self.now.as_nanos(),
        });
        let delay = self.random_think_time();
        self.schedule(self.now + delay, SimEvent::Invoke { client });
    }

    fn nemesis_kinds(&self) -> impl Iterator<Item = FaultKind> + '_ {
        self.config.faults.kinds().filter(|kind| {
            matches!(
                kind,
                FaultKind::Partition | FaultKind::Crash | FaultKind::Pause | FaultKind::Clock
            )
        })
    }

    fn on_nemesis_tick(&mut self) {
        if !self.faults_active {
            return;
        }
        let kinds: Vec<FaultKind> = self.nemesis_kinds().collect();
        if let Some(&kind) = self.nemesis_rng.choose(&kinds) {
            let duration = random_between(
                &mut self.nemesis_rng,
                self.config.nemesis.fault_duration_min,
                self.config.nemesis.fault_duration_max,
            );
            self.random_fault(kind, duration);
        }
        let delay = self.random_nemesis_interval();
        self.schedule(self.now + delay, SimEvent::NemesisTick);
    }

    /// Picks and applies one fault of `kind`, scheduling its repair after `duration`.
    fn random_fault(&mut self, kind: FaultKind, duration: Duration) {
        let node = NodeId(self.nemesis_rng.below(self.members.len() as u64) as u32);
        let repair_at = self.now + duration;
        match kind {
            FaultKind::Partition => {
                let blocked = self.random_partition();
                self.apply_nemesis(NemesisAction::Partition { blocked });
                self.schedule(repair_at, SimEvent::Nemesis(NemesisAction::HealPartition));
            }
            FaultKind::Crash => {
                if self.nodes[node.0 as usize].state.is_none() {
                    return;
                }
                let tear = self.config.faults.contains(FaultKind::TornWrite)
                    && self
                        .nemesis_rng
                        .chance(self.config.nemesis.torn_write_probability);
                self.apply_nemesis(NemesisAction::Crash { node, tear });
                self.schedule(
                    repair_at,
                    SimEvent::Nemesis(NemesisAction::Restart { node }),
                );
            }
            FaultKind::Pause => {
                if self.nodes[node.0 as usize].paused {
                    return;
                }
                self.apply_nemesis(NemesisAction::Pause { node });
                self.schedule(repair_at, SimEvent::Nemesis(NemesisAction::Resume { node }));
            }
            FaultKind::Clock => {
                let nemesis = &self.config.nemesis;
                let action = if self.nemesis_rng.chance(0.5) {
                    let forward = random_between(
                        &mut self.nemesis_rng,
                        Duration::ZERO,
                        nemesis.clock_jump_max,
                    );
                    NemesisAction::ClockJump { node, forward }
                } else {
                    let limit = i64::from(nemesis.clock_drift_max_ppm);
                    let drift = self.nemesis_rng.between(0, (2 * limit) as u64) as i64 - limit;
                    NemesisAction::ClockDrift {
                        node,
                        parts_per_million: drift as i32,
                    }
                };
                self.apply_nemesis(action);
            }
            FaultKind::Drop | FaultKind::Duplicate | FaultKind::Reorder | FaultKind::TornWrite => {}
        }
    }

    /// Splits every endpoint into two non-empty sides and blocks one or both directions.
    fn random_partition(&mut self) -> BTreeSet<(Endpoint, Endpoint)> {
        let mut endpoints: Vec<Endpoint> = self
            .members
            .iter()
            .map(|&node| Endpoint::Node(node))
            .chain((0..self.clients.len()).map(|index| Endpoint::Client(ClientId(index as u64))))
            .collect();
        self.nemesis_rng.shuffle(&mut endpoints);
        let split = self.nemesis_rng.between(1, endpoints.len() as u64 - 1) as usize;
        let (side_a, side_b) = endpoints.split_at(split);
        let one_way = self
            .nemesis_rng
            .chance(self.config.nemesis.one_way_partition_probability);
        let mut blocked = BTreeSet::new();
        for &a in side_a {
            for &b in side_b {
                blocked.insert((a, b));
                if !one_way {
                    blocked.insert((b, a));
                }
            }
        }
        blocked
    }

    fn count_fault(&mut self, name: &'static str) {
        *self.faults.entry(name).or_insert(0) += 1;
    }

    fn apply_nemesis(&mut self, action: NemesisAction) {
        self.trace_line(|| format!("nemesis {action:?}"));
        match action {
            NemesisAction::Partition { blocked } => {
                if self.faults_active {
                    self.count_fault("partition");
                    self.blocked = blocked;
                }
            }
            NemesisAction::HealPartition => self.blocked.clear(),
            NemesisAction::Crash { node, tear } => {
                if self.faults_active {
                    self.crash(node, tear);
                }
            }
            NemesisAction::Restart { node } => self.restart(node),
            NemesisAction::Pause { node } => {
                if self.faults_active && !self.nodes[node.0 as usize].paused {
                    self.count_fault("pause");
                    self.nodes[node.0 as usize].paused = true;
                }
            }
            NemesisAction::Resume { node } => self.resume(node),
            NemesisAction::ClockJump { node, forward } => {
                self.count_fault("clock");
                let clock = &mut self.nodes[node.0 as usize].clock;
                clock.reanchor(self.now);
                clock.anchor_local = clock.anchor_local + forward;
            }
            NemesisAction::ClockDrift {
                node,
                parts_per_million,
            } => {
                self.count_fault("clock");
                let clock = &mut self.nodes[node.0 as usize].clock;
                clock.reanchor(self.now);
                // A clock cannot run backwards: keep the rate positive.
                clock.drift_parts_per_million = parts_per_million.max(-999_999);
            }
            NemesisAction::HealAll => {
                if !self.faults_active {
                    return;
                }
                self.faults_active = false;
                self.healed_at = Some(self.now);
                self.blocked.clear();
                for index in 0..self.nodes.len() {
                    self.restart(NodeId(index as u32));
                    self.resume(NodeId(index as u32));
                }
            }
        }
    }

    fn crash(&mut self, node: NodeId, tear: bool) {
        let slot = &mut self.nodes[node.0 as usize];
        if slot.state.is_none() {
            return;
        }
        slot.state = None;
        slot.life += 1;
        slot.paused = false;
        slot.deferred.clear();
        slot.timers.clear();
        slot.gate.crash();
        let mut torn = false;
        if tear
            && let Some(LifeFrame { frame, .. }) = slot.life_frames.get(slot.life_durable as usize)
        {
            // A strict prefix of the first unsynced record reached the platter.
            let kept = self.disk_rng.below(frame.len() as u64) as usize;
            slot.disk.extend_from_slice(&frame[..kept]);
            torn = true;
        }
        slot.life_frames.clear();
        slot.life_durable = 0;
        if slot.compaction.take().is_some() {
            // Recovery gets the records the compaction stood for.
            self.count_fault("unwritten-compaction");
        }
        self.count_fault("crash");
        if torn {
            self.count_fault("torn-write");
        }
    }

    fn restart(&mut self, node: NodeId) {
        let index = node.0 as usize;
        if self.nodes[index].state.is_some() {
            return;
        }
        let slot = &mut self.nodes[index];
        let (payloads, error) = decode_all(&slot.disk);
        let records: Vec<<NodeOf<C> as Node>::Record> = payloads
            .iter()
            .map(|payload| {
                decode_record(payload)
                    .expect("a checksummed record decodes as the node's record type")
            })
            .collect();
        if let Some((offset, _)) = error {
            // A torn tail: like a write-ahead log, recovery truncates it.
            slot.disk.truncate(offset);
        }
        slot.gate = OutputGate::new(0);
        slot.state = Some((self.make_node)(node));
        self.trace_line(|| format!("recover {node} from {} records", records.len()));
        self.with_node(node, |state, ctx| state.on_recover(records, ctx));
    }

    fn resume(&mut self, node: NodeId) {
        let slot = &mut self.nodes[node.0 as usize];
        if !slot.paused {
            return;
        }
        slot.paused = false;
        let deferred = std::mem::take(&mut slot.deferred);
        for event in deferred {
            self.schedule(self.now, event);
        }
    }

    fn random_duration(&mut self, min: Duration, max: Duration) -> Duration {
        random_between(&mut self.timer_rng, min, max)
    }

    fn random_think_time(&mut self) -> Duration {
        random_between(
            &mut self.workload_rng,
            Duration::ZERO,
            self.config.workload.think_time_max,
        )
    }

    fn random_nemesis_interval(&mut self) -> Duration {
        random_between(
            &mut self.nemesis_rng,
            self.config.nemesis.interval_min,
            self.config.nemesis.interval_max,
        )
    }

    fn finish(mut self, elapsed: Duration) -> RunReport {
        // Operations still outstanding have unknown outcomes: the history keeps their
        // invoke without a completion, which readers treat as `info`.
        for client in &self.clients {
            if client.outstanding.is_some() {
                self.outcomes.info += 1;
            }
        }
        let hash = self.hasher.finish();
        self.trace_line(|| format!("trace hash {hash:016x}"));
        if let Some(trace) = self.trace.as_mut()
            && let Err(error) = trace.flush()
            && self.trace_error.is_none()
        {
            self.trace_error = Some(error.to_string());
        }
        RunReport {
            seed: self.config.seed,
            events: self.events,
            simulated: self.now.saturating_since(Time::ZERO),
            elapsed,
            trace_hash: hash,
            history: self.history,
            outcomes: self.outcomes,
            faults: self.faults,
            invariant_violation: self.invariant_violation,
            liveness_violation: self.liveness_violation,
            trace_error: self.trace_error,
        }
    }
}

/// A uniform duration in `min..=max` at nanosecond resolution.
fn random_between(rng: &mut Rng, min: Duration, max: Duration) -> Duration {
    let low = duration_nanos(min);
    let high = duration_nanos(max).max(low);
    Duration::from_nanos(rng.between(low, high))
}

/// Writes a pending compaction in place of the records it stands for (the log's background
/// checkpoint finished).
fn land_compaction<C: Client>(slot: &mut NodeSlot<C>) {
    if let Some(PendingCompaction { covers, frame }) = slot.compaction.take() {
        let mut disk = frame;
        disk.extend_from_slice(&slot.disk[covers..]);
        slot.disk = disk;
    }
}
