//! Multi-Paxos: a replicated log of state-machine commands under a distinguished proposer.
//!
//! Every node is acceptor, learner and potential proposer. A node whose election timer
//! fires without hearing from a leader runs phase 1 once with a higher ballot
//! (`Prepare`/`Promise`), adopts for every open slot the value accepted with the highest
//! ballot (filling holes with no-ops), and then runs phase 2 per slot (`Accept`/`Accepted`)
//! until a higher ballot appears. Chosen slots are executed in order on any
//! [`StateMachine`]; with [`crate::kv_state::SessionKv`], retried commands that reach the
//! log twice still execute once.
//!
//! Acceptor state (the promised ballot and the accepted values) is made durable with
//! persist + sync before any `Promise` or `Accepted` leaves, under the output-commit rule.
//! Learner state is volatile: a restarted node catches up from another node, by chosen
//! entries or, below the garbage-collection point, by a snapshot of the state machine.
//! Log entries are collected once every replica reported executing them.
//!
//! Safety: at most one value is chosen per slot, and replicas execute the same commands in
//! slot order ([`check_agreement`] checks both across live nodes). Liveness needs a stable
//! leader: randomized election timeouts make duelling proposers rare.
//!
//! [`PaxosVariant::ForgetAcceptedValues`] is a deliberately broken proposer that ignores
//! the values reported in promises: it loses chosen commands after a leader change.

use crate::replicated::StateMachine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;
use synod_core::hash::StableHasher;
use synod_core::node::{ClientId, Context, Node, NodeId};

/// Slots a node sends in one catch-up message.
const CATCH_UP_BATCH_SLOTS: u64 = 64;

/// Executed-slot digests a node keeps for the agreement invariant.
const DIGEST_WINDOW_SLOTS: u64 = 256;

/// Which proposer to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PaxosVariant {
    /// Multi-Paxos as specified.
    Correct,
    /// Broken: a new leader ignores values accepted under earlier ballots.
    ForgetAcceptedValues,
}

impl PaxosVariant {
    /// Every variant, correct first.
    pub const ALL: [PaxosVariant; 2] = [PaxosVariant::Correct, PaxosVariant::ForgetAcceptedValues];

    /// The variant's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            PaxosVariant::Correct => "correct",
            PaxosVariant::ForgetAcceptedValues => "forget-accepted-values",
        }
    }
}

/// Timing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PaxosConfig {
    /// How often a leader sends heartbeats (and resends unanswered accepts).
    pub heartbeat_interval: Duration,
    /// Shortest silence after which a follower runs for leader.
    pub election_timeout_min: Duration,
    /// Longest such silence (randomized to avoid duelling proposers).
    pub election_timeout_max: Duration,
}

impl Default for PaxosConfig {
    fn default() -> Self {
        PaxosConfig {
            heartbeat_interval: Duration::from_millis(10),
            election_timeout_min: Duration::from_millis(50),
            election_timeout_max: Duration::from_millis(100),
        }
    }
}

/// A proposal number: ordered by round, then by proposer, so ballots are unique.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The round.
    pub round: u64,
    /// The proposer.
    pub leader: NodeId,
}

/// What a slot holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Proposal<S: StateMachine> {
    /// A hole filled by a new leader.
    Noop,
    /// A client's command.
    Command(S::Command),
}

/// One accepted or chosen slot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SlotValue<S: StateMachine> {
    /// The slot.
    pub slot: u64,
    /// The ballot it was accepted under.
    pub ballot: Ballot,
    /// The value.
    pub proposal: Proposal<S>,
}

/// Messages between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PaxosMessage<S: StateMachine> {
    /// Phase 1a: promise not to accept lower ballots; report accepted slots from `from_slot`.
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The first slot the candidate has not executed.
        from_slot: u64,
    },
    /// Phase 1b.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// Slots below this were collected by the acceptor (the candidate must catch up).
        collected_below: u64,
        /// Values accepted at or above the requested slot.
        accepted: Vec<SlotValue<S>>,
    },
    /// Phase 2a.
    Accept {
        /// The slot and value, with the leader's ballot.
        value: SlotValue<S>,
    },
    /// Phase 2b.
    Accepted {
        /// The ballot accepted under.
        ballot: Ballot,
        /// The slot.
        slot: u64,
    },
    /// A refusal: the acceptor promised a higher ballot.
    Reject {
        /// The ballot the acceptor promised.
        promised: Ballot,
    },
    /// Chosen values, in slot order.
    Chosen {
        /// The slots and values.
        entries: Vec<(u64, Proposal<S>)>,
    },
    /// The leader is alive; followers catch up to `chosen_below` and collect below
    /// `collect_below`.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// Every slot below this is chosen and known to the leader.
        chosen_below: u64,
        /// Every replica executed every slot below this.
        collect_below: u64,
    },
    /// A follower's progress, for garbage collection.
    HeartbeatReply {
        /// The ballot answered.
        ballot: Ballot,
        /// The follower executed every slot below this.
        executed_below: u64,
    },
    /// A lagging node asks for chosen values from `from_slot`.
    CatchUp {
        /// The first slot the node lacks.
        from_slot: u64,
    },
    /// The state machine after executing every slot below `executed_below`.
    Snapshot {
        /// Slots covered.
        executed_below: u64,
        /// The state.
        store: S,
        /// The execution digest at that point.
        digest: u64,
    },
}

/// Durable acceptor records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PaxosRecord<S: StateMachine> {
    /// A promise to ignore lower ballots.
    Promised(Ballot),
    /// An accepted value.
    Accepted(SlotValue<S>),
}

/// Timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PaxosTimer {
    /// A follower checks whether it heard from a leader.
    Election,
    /// A leader (or candidate) sends heartbeats and resends what is unanswered.
    Heartbeat,
}

/// A slot the leader proposed and is collecting votes for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pending<S: StateMachine> {
    proposal: Proposal<S>,
    votes: BTreeSet<NodeId>,
}

/// What the node is doing as a proposer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Role<S: StateMachine> {
    Follower,
    Candidate {
        ballot: Ballot,
        promises: BTreeMap<NodeId, Vec<SlotValue<S>>>,
    },
    Leader {
        ballot: Ballot,
        next_slot: u64,
        pending: BTreeMap<u64, Pending<S>>,
        executed_reports: BTreeMap<NodeId, u64>,
    },
}

/// A Multi-Paxos replica running state machine `S`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PaxosNode<S: StateMachine> {
    variant: PaxosVariant,
    config: PaxosConfig,
    // Acceptor (durable).
    promised: Ballot,
    accepted: BTreeMap<u64, SlotValue<S>>,
    // Proposer.
    role: Role<S>,
    leader_hint: Option<NodeId>,
    heard_from_leader: bool,
    // Learner (volatile).
    chosen: BTreeMap<u64, Proposal<S>>,
    executed_below: u64,
    collected_below: u64,
    store: S,
    digest: u64,
    digests: BTreeMap<u64, u64>,
    /// The first time this node saw two values chosen for one slot.
    conflict: Option<String>,
}

impl<S: StateMachine> PaxosNode<S> {
    /// A node that has not started yet.
    pub fn new(variant: PaxosVariant, config: PaxosConfig) -> Self {
        PaxosNode {
            variant,
            config,
            promised: Ballot::default(),
            accepted: BTreeMap::new(),
            role: Role::Follower,
            leader_hint: None,
            heard_from_leader: false,
            chosen: BTreeMap::new(),
            executed_below: 0,
            collected_below: 0,
            store: S::default(),
            digest: 0,
            digests: BTreeMap::new(),
            conflict: None,
        }
    }

    /// The highest ballot this node promised (or accepted under).
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// The node this replica believes leads (itself while it leads).
    pub fn leader_hint(&self) -> Option<NodeId> {
        if self.is_leader() {
            Some(self.promised.leader)
        } else {
            self.leader_hint
        }
    }

    /// True if this node currently leads.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    /// The chosen values this node still holds, by slot.
    pub fn chosen(&self) -> &BTreeMap<u64, Proposal<S>> {
        &self.chosen
    }

    /// Every slot below this one has been executed here.
    pub fn executed_below(&self) -> u64 {
        self.executed_below
    }

    /// The digest of the executed prefix ending just before each recent slot boundary.
    pub fn execution_digests(&self) -> &BTreeMap<u64, u64> {
        &self.digests
    }

    /// The replicated state machine.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn quorum(ctx: &Context<Self>) -> usize {
        ctx.members().len() / 2 + 1
    }

    fn arm_election(&self, ctx: &mut Context<Self>) {
        ctx.set_timer(
            PaxosTimer::Election,
            self.config.election_timeout_min,
            self.config.election_timeout_max,
        );
    }

    fn arm_heartbeat(&self, ctx: &mut Context<Self>) {
        let interval = self.config.heartbeat_interval;
        ctx.set_timer(PaxosTimer::Heartbeat, interval, interval);
    }

    fn send_to_all(ctx: &mut Context<Self>, message: PaxosMessage<S>) {
        for index in 0..ctx.members().len() {
            let to = ctx.members()[index];
            ctx.send(to, message.clone());
        }
    }

    /// Becomes a follower of whoever holds `ballot` (if anyone).
    fn step_down(&mut self, ballot: Ballot, ctx: &mut Context<Self>) {
        let was_proposer = !matches!(self.role, Role::Follower);
        self.role = Role::Follower;
        if ballot != Ballot::default() {
            self.leader_hint = Some(ballot.leader);
        }
        if was_proposer {
            ctx.cancel_timer(PaxosTimer::Heartbeat);
            self.arm_election(ctx);
        }
    }

    /// Answers a message under a ballot lower than the one promised with a `Reject`;
    /// returns true if it did (the caller then ignores the message).
    fn refuse_stale(&self, from: NodeId, ballot: Ballot, ctx: &mut Context<Self>) -> bool {
        if ballot >= self.promised {
            return false;
        }
        ctx.send(
            from,
            PaxosMessage::Reject {
                promised: self.promised,
            },
        );
        true
    }

    fn promise(&mut self, ballot: Ballot, ctx: &mut Context<Self>) {
        if ballot > self.promised {
            self.promised = ballot;
            ctx.persist(PaxosRecord::Promised(ballot));
            ctx.sync();
        }
    }

    fn start_candidacy(&mut self, ctx: &mut Context<Self>) {
        let ballot = Ballot {
            round: self.promised.round + 1,
            leader: ctx.id(),
        };
        self.role = Role::Candidate {
            ballot,
            promises: BTreeMap::new(),
        };
        self.leader_hint = None;
        Self::send_to_all(
            ctx,
            PaxosMessage::Prepare {
                ballot,
                from_slot: self.executed_below,
            },
        );
        self.arm_heartbeat(ctx);
        self.arm_election(ctx);
    }

    fn on_prepare(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_slot: u64,
        ctx: &mut Context<Self>,
    ) {
        if self.refuse_stale(from, ballot, ctx) {
            return;
        }
        if ballot > self.promised && ballot.leader != ctx.id() {
            self.step_down(ballot, ctx);
        }
        self.promise(ballot, ctx);
        let accepted = self
            .accepted
            .range(from_slot..)
            .map(|(_, value)| value.clone())
            .collect();
        ctx.send(
            from,
            PaxosMessage::Promise {
                ballot,
                collected_below: self.collected_below,
                accepted,
            },
        );
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        collected_below: u64,
        accepted: Vec<SlotValue<S>>,
        ctx: &mut Context<Self>,
    ) {
        let quorum = Self::quorum(ctx);
        let Role::Candidate {
            ballot: current,
            promises,
        } = &mut self.role
        else {
            return;
        };
        if *current != ballot {
            return;
        }
        if collected_below > self.executed_below {
            // The acceptor forgot slots this node never executed: leading now could fill
            // them with no-ops. Catch up first and run again later.
            ctx.send(
                from,
                PaxosMessage::CatchUp {
                    from_slot: self.executed_below,
                },
            );
            self.step_down(Ballot::default(), ctx);
            return;
        }
        promises.insert(from, accepted);
        if promises.len() < quorum {
            return;
        }
        let promises = std::mem::take(promises);
        self.become_leader(ballot, promises, ctx);
    }

    fn become_leader(
        &mut self,
        ballot: Ballot,
        promises: BTreeMap<NodeId, Vec<SlotValue<S>>>,
        ctx: &mut Context<Self>,
    ) {
        // For every open slot, the value accepted under the highest ballot must be kept.
        let mut adopted: BTreeMap<u64, SlotValue<S>> = BTreeMap::new();
        for value in promises.into_values().flatten() {
            if value.slot < self.executed_below {
                continue;
            }
            let keep = adopted
                .get(&value.slot)
                .is_none_or(|existing| existing.ballot < value.ballot);
            if keep {
                adopted.insert(value.slot, value);
            }
        }
        let next_slot = adopted
            .keys()
            .next_back()
            .map_or(self.executed_below, |&slot| slot + 1)
            .max(self.executed_below);
        let mut pending = BTreeMap::new();
        for slot in self.executed_below..next_slot {
            let proposal = match (&self.variant, adopted.remove(&slot)) {
                (PaxosVariant::Correct, Some(value)) => value.proposal,
                _ => Proposal::Noop,
            };
            pending.insert(
                slot,
                Pending {
                    proposal,
                    votes: BTreeSet::new(),
                },
            );
        }
        self.leader_hint = Some(ctx.id());
        self.role = Role::Leader {
            ballot,
            next_slot,
            pending,
            executed_reports: BTreeMap::new(),
        };
        ctx.cancel_timer(PaxosTimer::Election);
        self.send_accepts(ctx);
        self.send_heartbeats(ctx);
    }

    /// Sends `Accept` for every pending slot to every node that has not voted for it.
    fn send_accepts(&self, ctx: &mut Context<Self>) {
        let Role::Leader {
            ballot, pending, ..
        } = &self.role
        else {
            return;
        };
        for (&slot, entry) in pending {
            for index in 0..ctx.members().len() {
                let to = ctx.members()[index];
                if entry.votes.contains(&to) {
                    continue;
                }
                let value = SlotValue {
                    slot,
                    ballot: *ballot,
                    proposal: entry.proposal.clone(),
                };
                ctx.send(to, PaxosMessage::Accept { value });
            }
        }
    }

    fn send_heartbeats(&self, ctx: &mut Context<Self>) {
        let Role::Leader {
            ballot,
            executed_reports,
            ..
        } = &self.role
        else {
            return;
        };
        let collect_below = self.collect_point(executed_reports, ctx);
        let message = PaxosMessage::Heartbeat {
            ballot: *ballot,
            chosen_below: self.chosen_frontier(),
            collect_below,
        };
        ctx.broadcast(message);
    }

    /// The first slot not known chosen here.
    fn chosen_frontier(&self) -> u64 {
        let mut slot = self.executed_below;
        while self.chosen.contains_key(&slot) {
            slot += 1;
        }
        slot
    }

    /// Every replica (this one included) executed every slot below the returned one.
    fn collect_point(&self, reports: &BTreeMap<NodeId, u64>, ctx: &Context<Self>) -> u64 {
        let mut lowest = self.executed_below;
        for &member in ctx.members() {
            if member == ctx.id() {
                continue;
            }
            lowest = lowest.min(reports.get(&member).copied().unwrap_or(0));
        }
        lowest.max(self.collected_below)
    }

    fn on_accept(&mut self, from: NodeId, value: SlotValue<S>, ctx: &mut Context<Self>) {
        if self.refuse_stale(from, value.ballot, ctx) {
            return;
        }
        if value.ballot > self.promised && value.ballot.leader != ctx.id() {
            self.step_down(value.ballot, ctx);
        }
        if value.ballot.leader != ctx.id() {
            self.heard_from_leader = true;
            self.leader_hint = Some(value.ballot.leader);
        }
        let (ballot, slot) = (value.ballot, value.slot);
        if slot >= self.collected_below {
            self.promised = self.promised.max(ballot);
            ctx.persist(PaxosRecord::Accepted(value.clone()));
            ctx.sync();
            self.accepted.insert(slot, value);
        }
        ctx.send(from, PaxosMessage::Accepted { ballot, slot });
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slot: u64, ctx: &mut Context<Self>) {
        let quorum = Self::quorum(ctx);
        let Role::Leader {
            ballot: current,
            pending,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *current != ballot {
            return;
        }
        let Some(entry) = pending.get_mut(&slot) else {
            return;
        };
        entry.votes.insert(from);
        if entry.votes.len() < quorum {
            return;
        }
        let proposal = entry.proposal.clone();
        pending.remove(&slot);
        ctx.broadcast(PaxosMessage::Chosen {
            entries: vec![(slot, proposal.clone())],
        });
        self.learn(slot, proposal, ctx);
    }

    /// Records a chosen value and executes every slot that is now contiguous.
    fn learn(&mut self, slot: u64, proposal: Proposal<S>, ctx: &mut Context<Self>) {
        if slot < self.executed_below {
            return;
        }
        if let Some(known) = self.chosen.get(&slot) {
            if known != &proposal && self.conflict.is_none() {
                // Reported by `check_agreement` so the simulator can replay the seed.
                self.conflict = Some(format!(
                    "slot {slot} learned as {known:?} and later as {proposal:?}"
                ));
            }
            return;
        }
        self.chosen.insert(slot, proposal);
        while let Some(proposal) = self.chosen.get(&self.executed_below).cloned() {
            self.execute(proposal, ctx);
        }
    }

    fn execute(&mut self, proposal: Proposal<S>, ctx: &mut Context<Self>) {
        let slot = self.executed_below;
        let mut hasher = StableHasher::new();
        self.digest.hash(&mut hasher);
        slot.hash(&mut hasher);
        proposal.hash(&mut hasher);
        self.digest = hasher.finish();
        self.executed_below += 1;
        self.digests.insert(self.executed_below, self.digest);
        while self.digests.len() as u64 > DIGEST_WINDOW_SLOTS {
            self.digests.pop_first();
        }
        if let Proposal::Command(command) = proposal
            && let Some((client, response)) = self.store.apply(&command)
            && self.is_leader()
        {
            ctx.reply(client, response);
        }
        assert!(slot < self.executed_below);
    }

    fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        chosen_below: u64,
        collect_below: u64,
        ctx: &mut Context<Self>,
    ) {
        if self.refuse_stale(from, ballot, ctx) {
            return;
        }
        if ballot > self.promised || !matches!(self.role, Role::Follower) {
            self.step_down(ballot, ctx);
        }
        self.heard_from_leader = true;
        self.leader_hint = Some(ballot.leader);
        if self.chosen_frontier() < chosen_below {
            ctx.send(
                from,
                PaxosMessage::CatchUp {
                    from_slot: self.chosen_frontier(),
                },
            );
        }
        self.collect(collect_below);
        ctx.send(
            from,
            PaxosMessage::HeartbeatReply {
                ballot,
                executed_below: self.executed_below,
            },
        );
    }

    /// Discards log entries every replica has executed.
    fn collect(&mut self, collect_below: u64) {
        let point = collect_below.min(self.executed_below);
        if point <= self.collected_below {
            return;
        }
        self.collected_below = point;
        self.accepted = self.accepted.split_off(&point);
        self.chosen = self.chosen.split_off(&point);
    }

    fn on_catch_up(&mut self, from: NodeId, from_slot: u64, ctx: &mut Context<Self>) {
        let oldest_known = self
            .chosen
            .keys()
            .next()
            .copied()
            .unwrap_or(self.executed_below);
        if from_slot < oldest_known.min(self.executed_below) {
            ctx.send(
                from,
                PaxosMessage::Snapshot {
                    executed_below: self.executed_below,
                    store: self.store.clone(),
                    digest: self.digest,
                },
            );
            return;
        }
        let entries: Vec<(u64, Proposal<S>)> = self
            .chosen
            .range(from_slot..from_slot + CATCH_UP_BATCH_SLOTS)
            .map(|(&slot, proposal)| (slot, proposal.clone()))
            .collect();
        if !entries.is_empty() {
            ctx.send(from, PaxosMessage::Chosen { entries });
        }
    }

    fn on_snapshot(&mut self, executed_below: u64, store: S, digest: u64) {
        if executed_below <= self.executed_below {
            return;
        }
        self.store = store;
        self.executed_below = executed_below;
        self.digest = digest;
        self.digests.clear();
        self.digests.insert(executed_below, digest);
        self.chosen = self.chosen.split_off(&executed_below);
    }

    fn on_client_request(
        &mut self,
        client: ClientId,
        request: S::Request,
        ctx: &mut Context<Self>,
    ) {
        let Role::Leader {
            ballot,
            next_slot,
            pending,
            ..
        } = &mut self.role
        else {
            ctx.reply(client, S::redirect(&request, self.leader_hint));
            return;
        };
        let slot = *next_slot;
        *next_slot += 1;
        let proposal = Proposal::Command(S::command(client, request, ctx.now()));
        pending.insert(
            slot,
            Pending {
                proposal: proposal.clone(),
                votes: BTreeSet::new(),
            },
        );
        let value = SlotValue {
            slot,
            ballot: *ballot,
            proposal,
        };
        Self::send_to_all(ctx, PaxosMessage::Accept { value });
    }
}

impl<S: StateMachine> Node for PaxosNode<S> {
    type Message = PaxosMessage<S>;
    type Request = S::Request;
    type Response = S::Response;
    type Record = PaxosRecord<S>;
    type Timer = PaxosTimer;

    fn on_start(&mut self, ctx: &mut Context<Self>) {
        self.arm_election(ctx);
    }

    fn on_recover(&mut self, records: Vec<PaxosRecord<S>>, ctx: &mut Context<Self>) {
        for record in records {
            match record {
                PaxosRecord::Promised(ballot) => self.promised = self.promised.max(ballot),
                PaxosRecord::Accepted(value) => {
                    self.promised = self.promised.max(value.ballot);
                    let newer = self
                        .accepted
                        .get(&value.slot)
                        .is_none_or(|existing| existing.ballot <= value.ballot);
                    if newer {
                        self.accepted.insert(value.slot, value);
                    }
                }
            }
        }
        self.arm_election(ctx);
    }

    fn on_message(&mut self, from: NodeId, message: PaxosMessage<S>, ctx: &mut Context<Self>) {
        match message {
            PaxosMessage::Prepare { ballot, from_slot } => {
                self.on_prepare(from, ballot, from_slot, ctx);
            }
            PaxosMessage::Promise {
                ballot,
                collected_below,
                accepted,
            } => self.on_promise(from, ballot, collected_below, accepted, ctx),
            PaxosMessage::Accept { value } => self.on_accept(from, value, ctx),
            PaxosMessage::Accepted { ballot, slot } => self.on_accepted(from, ballot, slot, ctx),
            PaxosMessage::Reject { promised } => {
                let own = match &self.role {
                    Role::Candidate { ballot, .. } | Role::Leader { ballot, .. } => Some(*ballot),
                    Role::Follower => None,
                };
                if own.is_some_and(|ballot| promised > ballot) {
                    self.promised = self.promised.max(promised);
                    ctx.persist(PaxosRecord::Promised(self.promised));
                    ctx.sync();
                    self.step_down(promised, ctx);
                }
            }
            PaxosMessage::Chosen { entries } => {
                for (slot, proposal) in entries {
                    self.learn(slot, proposal, ctx);
                }
            }
            PaxosMessage::Heartbeat {
                ballot,
                chosen_below,
                collect_below,
            } => self.on_heartbeat(from, ballot, chosen_below, collect_below, ctx),
            PaxosMessage::HeartbeatReply {
                ballot,
                executed_below,
            } => {
                if let Role::Leader {
                    ballot: current,
                    executed_reports,
                    ..
                } = &mut self.role
                    && *current == ballot
                {
                    let report = executed_reports.entry(from).or_insert(0);
                    *report = (*report).max(executed_below);
                }
            }
            PaxosMessage::CatchUp { from_slot } => self.on_catch_up(from, from_slot, ctx),
            PaxosMessage::Snapshot {
                executed_below,
                store,
                digest,
            } => self.on_snapshot(executed_below, store, digest),
        }
    }

    fn on_timer(&mut self, timer: PaxosTimer, ctx: &mut Context<Self>) {
        match timer {
            PaxosTimer::Election => {
                if matches!(self.role, Role::Leader { .. }) {
                    return;
                }
                if std::mem::take(&mut self.heard_from_leader) {
                    self.arm_election(ctx);
                } else {
                    self.start_candidacy(ctx);
                }
            }
            PaxosTimer::Heartbeat => {
                if let Role::Leader {
                    executed_reports, ..
                } = &self.role
                {
                    let point = self.collect_point(executed_reports, ctx);
                    self.collect(point);
                    self.send_accepts(ctx);
                    self.send_heartbeats(ctx);
                    self.arm_heartbeat(ctx);
                } else if let Role::Candidate { ballot, promises } = &self.role {
                    let prepare = PaxosMessage::Prepare {
                        ballot: *ballot,
                        from_slot: self.executed_below,
                    };
                    let waiting: Vec<NodeId> = ctx
                        .members()
                        .iter()
                        .copied()
                        .filter(|member| !promises.contains_key(member))
                        .collect();
                    for member in waiting {
                        ctx.send(member, prepare.clone());
                    }
                    self.arm_heartbeat(ctx);
                }
            }
        }
    }

    fn on_request(&mut self, client: ClientId, request: S::Request, ctx: &mut Context<Self>) {
        self.on_client_request(client, request, ctx);
    }
}

/// Checks, across live nodes, that replicas executed the same commands in slot order (and so
/// that no executed slot held two chosen values), and that no node learned two values for
/// one slot.
///
/// Each node keeps a digest of its executed prefix for its last `DIGEST_WINDOW_SLOTS` (256)
/// slots; two nodes are compared at the shorter node's prefix when the longer one still
/// remembers that point. This keeps the check cheap enough to run after every simulated
/// event; a prefix that diverged is caught as soon as both nodes execute past it.
pub fn check_agreement<'a, S: StateMachine + 'a>(
    nodes: impl Iterator<Item = &'a PaxosNode<S>>,
) -> Result<(), String> {
    let nodes: Vec<&PaxosNode<S>> = nodes.collect();
    for (index, node) in nodes.iter().enumerate() {
        if let Some(conflict) = &node.conflict {
            return Err(conflict.clone());
        }
        for other in &nodes[index + 1..] {
            let (shorter, longer) = if node.executed_below <= other.executed_below {
                (node, other)
            } else {
                (other, node)
            };
            if shorter.executed_below == 0 {
                continue;
            }
            if let Some(&digest) = longer.digests.get(&shorter.executed_below)
                && digest != shorter.digest
            {
                return Err(format!(
                    "replicas diverged: different commands executed in the first {} slots",
                    shorter.executed_below
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_state::{SessionCommand, SessionKv};
    use synod_core::kv::KvCommand;
    use synod_core::node::Effect;
    use synod_core::rng::Rng;
    use synod_core::time::Time;

    const MEMBERS: [NodeId; 3] = [NodeId(0), NodeId(1), NodeId(2)];

    type KvPaxos = PaxosNode<SessionKv>;

    fn handle(
        node: &mut KvPaxos,
        id: u32,
        input: impl FnOnce(&mut KvPaxos, &mut Context<KvPaxos>),
    ) -> Vec<Effect<KvPaxos>> {
        let mut rng = Rng::new(u64::from(id));
        let mut ctx = Context::new(NodeId(id), &MEMBERS, Time::ZERO, &mut rng);
        input(node, &mut ctx);
        ctx.into_effects()
    }

    fn command(value: &str) -> Proposal<SessionKv> {
        Proposal::Command(SessionCommand {
            client: ClientId(1),
            sequence: 0,
            acknowledged_below: 0,
            command: KvCommand::Put {
                key: "k".to_string(),
                value: value.to_string(),
            },
        })
    }

    fn sent(effects: &[Effect<KvPaxos>]) -> Vec<(NodeId, PaxosMessage<SessionKv>, u64)> {
        effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Send {
                    to,
                    message,
                    records_required,
                } => Some((*to, message.clone(), *records_required)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_promise_is_durable_before_it_leaves_and_reports_accepted_values() {
        let mut acceptor = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        let old = Ballot {
            round: 1,
            leader: NodeId(2),
        };
        let value = SlotValue {
            slot: 4,
            ballot: old,
            proposal: command("a"),
        };
        handle(&mut acceptor, 1, |node, ctx| {
            node.on_message(
                NodeId(2),
                PaxosMessage::Accept {
                    value: value.clone(),
                },
                ctx,
            )
        });
        let new = Ballot {
            round: 2,
            leader: NodeId(0),
        };
        let effects = handle(&mut acceptor, 1, |node, ctx| {
            node.on_message(
                NodeId(0),
                PaxosMessage::Prepare {
                    ballot: new,
                    from_slot: 0,
                },
                ctx,
            )
        });
        assert!(effects.contains(&Effect::Persist {
            record: PaxosRecord::Promised(new)
        }));
        assert!(effects.contains(&Effect::Sync));
        let messages = sent(&effects);
        let (to, promise, records_required) = &messages[0];
        assert_eq!(*to, NodeId(0));
        assert_eq!(*records_required, 1, "the promise waits for its record");
        assert_eq!(
            promise,
            &PaxosMessage::Promise {
                ballot: new,
                collected_below: 0,
                accepted: vec![value]
            }
        );
        // The old leader is now refused.
        let stale = SlotValue {
            slot: 5,
            ballot: old,
            proposal: command("b"),
        };
        let effects = handle(&mut acceptor, 1, |node, ctx| {
            node.on_message(NodeId(2), PaxosMessage::Accept { value: stale }, ctx)
        });
        assert_eq!(sent(&effects)[0].1, PaxosMessage::Reject { promised: new });
    }

    #[test]
    fn a_candidate_asks_every_member_at_once_and_follows_a_higher_ballot() {
        let mut candidate = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        let effects = handle(&mut candidate, 0, |node, ctx| node.start_candidacy(ctx));
        let prepared: Vec<NodeId> = sent(&effects)
            .into_iter()
            .filter_map(|(to, message, _)| {
                matches!(message, PaxosMessage::Prepare { .. }).then_some(to)
            })
            .collect();
        assert_eq!(
            prepared, MEMBERS,
            "phase 1 goes to every member, itself too"
        );
        assert_eq!(candidate.leader_hint(), None);
        // A leader with a higher ballot: the candidate gives up, stops its heartbeat and
        // waits for that leader under an election timer.
        let higher = Ballot {
            round: 5,
            leader: NodeId(2),
        };
        let effects = handle(&mut candidate, 0, |node, ctx| {
            node.on_message(
                NodeId(2),
                PaxosMessage::Heartbeat {
                    ballot: higher,
                    chosen_below: 0,
                    collect_below: 0,
                },
                ctx,
            )
        });
        assert!(!candidate.is_leader());
        assert_eq!(candidate.leader_hint(), Some(NodeId(2)));
        assert!(effects.contains(&Effect::CancelTimer {
            timer: PaxosTimer::Heartbeat
        }));
        assert!(effects.iter().any(|effect| matches!(
            effect,
            Effect::SetTimer {
                timer: PaxosTimer::Election,
                ..
            }
        )));
        // A higher ballot's phase 1 does the same, and is promised.
        let mut candidate = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        handle(&mut candidate, 0, |node, ctx| node.start_candidacy(ctx));
        let effects = handle(&mut candidate, 0, |node, ctx| {
            node.on_message(
                NodeId(2),
                PaxosMessage::Prepare {
                    ballot: higher,
                    from_slot: 0,
                },
                ctx,
            )
        });
        assert_eq!(candidate.leader_hint(), Some(NodeId(2)));
        assert_eq!(candidate.promised(), higher);
        assert!(effects.contains(&Effect::CancelTimer {
            timer: PaxosTimer::Heartbeat
        }));
    }

    #[test]
    fn a_new_leader_keeps_the_highest_ballot_value_and_fills_holes_with_noops() {
        let mut candidate = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        handle(&mut candidate, 0, |node, ctx| node.start_candidacy(ctx));
        let ballot = Ballot {
            round: 1,
            leader: NodeId(0),
        };
        let low = Ballot {
            round: 0,
            leader: NodeId(1),
        };
        let high = Ballot {
            round: 0,
            leader: NodeId(2),
        };
        let promise = |accepted| PaxosMessage::Promise {
            ballot,
            collected_below: 0,
            accepted,
        };
        handle(&mut candidate, 0, |node, ctx| {
            node.on_message(
                NodeId(1),
                promise(vec![SlotValue {
                    slot: 2,
                    ballot: low,
                    proposal: command("old"),
                }]),
                ctx,
            )
        });
        assert!(
            !candidate.is_leader(),
            "one promise is not a quorum of three"
        );
        let effects = handle(&mut candidate, 0, |node, ctx| {
            node.on_message(
                NodeId(2),
                promise(vec![SlotValue {
                    slot: 2,
                    ballot: high,
                    proposal: command("new"),
                }]),
                ctx,
            )
        });
        assert!(candidate.is_leader());
        let accepts: Vec<SlotValue<SessionKv>> = sent(&effects)
            .into_iter()
            .filter_map(|(to, message, _)| match message {
                PaxosMessage::Accept { value } if to == NodeId(1) => Some(value),
                _ => None,
            })
            .collect();
        let proposals: Vec<(u64, Proposal<SessionKv>)> = accepts
            .into_iter()
            .map(|value| (value.slot, value.proposal))
            .collect();
        assert_eq!(
            proposals,
            vec![
                (0, Proposal::Noop),
                (1, Proposal::Noop),
                (2, command("new"))
            ]
        );
    }

    #[test]
    fn agreement_notices_diverging_replicas() {
        let mut left = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        let mut right = left.clone();
        handle(&mut left, 0, |node, ctx| node.learn(0, command("a"), ctx));
        handle(&mut right, 1, |node, ctx| node.learn(0, command("a"), ctx));
        assert_eq!(check_agreement([&left, &right].into_iter()), Ok(()));
        handle(&mut left, 0, |node, ctx| node.learn(1, command("b"), ctx));
        handle(&mut right, 1, |node, ctx| node.learn(1, command("c"), ctx));
        assert!(check_agreement([&left, &right].into_iter()).is_err());
        // A node told two different values for one slot reports it itself.
        let mut confused = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        handle(&mut confused, 2, |node, ctx| {
            node.learn(3, command("x"), ctx)
        });
        handle(&mut confused, 2, |node, ctx| {
            node.learn(3, command("y"), ctx)
        });
        assert!(check_agreement([&confused].into_iter()).is_err());
    }

    /// Node 0 elected with ballot (1, 0) by empty promises from nodes 1 and 2.
    fn elected_leader() -> KvPaxos {
        let mut leader = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        handle(&mut leader, 0, |node, ctx| node.start_candidacy(ctx));
        let ballot = Ballot {
            round: 1,
            leader: NodeId(0),
        };
        for from in [1, 2] {
            handle(&mut leader, 0, |node, ctx| {
                node.on_message(
                    NodeId(from),
                    PaxosMessage::Promise {
                        ballot,
                        collected_below: 0,
                        accepted: Vec::new(),
                    },
                    ctx,
                )
            });
        }
        assert!(leader.is_leader());
        leader
    }

    fn heartbeats(effects: &[Effect<KvPaxos>]) -> Vec<(NodeId, u64, u64)> {
        sent(effects)
            .into_iter()
            .filter_map(|(to, message, _)| match message {
                PaxosMessage::Heartbeat {
                    chosen_below,
                    collect_below,
                    ..
                } => Some((to, chosen_below, collect_below)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_heartbeat_tells_followers_what_is_chosen_and_what_every_replica_executed() {
        let mut leader = elected_leader();
        let ballot = Ballot {
            round: 1,
            leader: NodeId(0),
        };
        for slot in 0..4 {
            handle(&mut leader, 0, |node, ctx| {
                node.learn(slot, command(&format!("v{slot}")), ctx)
            });
        }
        // Slot 5 is chosen but 4 is not: the frontier stays at 4.
        handle(&mut leader, 0, |node, ctx| {
            node.learn(5, command("v5"), ctx)
        });
        // Nobody reported yet: nothing may be collected.
        let effects = handle(&mut leader, 0, |node, ctx| {
            node.on_timer(PaxosTimer::Heartbeat, ctx)
        });
        assert_eq!(
            heartbeats(&effects),
            vec![(NodeId(1), 4, 0), (NodeId(2), 4, 0)],
            "every follower hears the frontier; nothing is collected without reports"
        );
        // Node 1 executed 3 slots, node 2 two: everyone executed below 2.
        for (from, executed_below) in [(1, 3), (2, 2)] {
            handle(&mut leader, 0, |node, ctx| {
                node.on_message(
                    NodeId(from),
                    PaxosMessage::HeartbeatReply {
                        ballot,
                        executed_below,
                    },
                    ctx,
                )
            });
        }
        let effects = handle(&mut leader, 0, |node, ctx| {
            node.on_timer(PaxosTimer::Heartbeat, ctx)
        });
        assert_eq!(
            heartbeats(&effects),
            vec![(NodeId(1), 4, 2), (NodeId(2), 4, 2)]
        );
        // A follower that hears of chosen slots it lacks asks for them, and collects only
        // what it executed itself.
        let mut follower = KvPaxos::new(PaxosVariant::Correct, PaxosConfig::default());
        handle(&mut follower, 1, |node, ctx| {
            node.learn(0, command("v0"), ctx)
        });
        let effects = handle(&mut follower, 1, |node, ctx| {
            node.on_message(
                NodeId(0),
                PaxosMessage::Heartbeat {
                    ballot,
                    chosen_below: 4,
                    collect_below: 2,
                },
                ctx,
            )
        });
        let messages: Vec<PaxosMessage<SessionKv>> = sent(&effects)
            .into_iter()
            .map(|(_, message, _)| message)
            .collect();
        assert!(messages.contains(&PaxosMessage::CatchUp { from_slot: 1 }));
        assert!(messages.contains(&PaxosMessage::HeartbeatReply {
            ballot,
            executed_below: 1
        }));
    }

    #[test]
    fn a_leader_that_sees_an_accept_of_a_higher_ballot_follows_it() {
        let mut leader = elected_leader();
        let higher = Ballot {
            round: 2,
            leader: NodeId(2),
        };
        let value = SlotValue {
            slot: 0,
            ballot: higher,
            proposal: command("theirs"),
        };
        let effects = handle(&mut leader, 0, |node, ctx| {
            node.on_message(
                NodeId(2),
                PaxosMessage::Accept {
                    value: value.clone(),
                },
                ctx,
            )
        });
        assert!(!leader.is_leader());
        assert_eq!(leader.leader_hint(), Some(NodeId(2)));
        assert_eq!(leader.promised(), higher);
        assert!(effects.contains(&Effect::CancelTimer {
            timer: PaxosTimer::Heartbeat
        }));
        assert!(sent(&effects).contains(&(
            NodeId(2),
            PaxosMessage::Accepted {
                ballot: higher,
                slot: 0
            },
            1
        )));
        // An accept of the ballot it already follows changes nothing but the slot.
        let same = SlotValue { slot: 1, ..value };
        let effects = handle(&mut leader, 0, |node, ctx| {
            node.on_message(NodeId(2), PaxosMessage::Accept { value: same }, ctx)
        });
        assert!(
            !effects
                .iter()
                .any(|effect| matches!(effect, Effect::CancelTimer { .. }))
        );
        assert_eq!(leader.leader_hint(), Some(NodeId(2)));
    }
}
