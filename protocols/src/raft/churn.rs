//! A Raft node that changes its own cluster: while it leads, it proposes membership changes
//! and leadership transfers on a timer, either at random or from a script. It exists to
//! drive [`RaftNode`]'s membership API from inside a simulator or the model checker, which
//! only deliver messages, timers and client requests; clients see a plain Raft node.

use super::membership::{Membership, MembershipChange, MembershipError};
use super::node::{RaftMessage, RaftNode, RaftRecord, RaftTimer};
use crate::replicated::StateMachine;
use std::time::Duration;
use synod_core::node::{ClientId, Context, Effect, Node, NodeId};

/// One step a churning leader takes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChurnStep {
    /// Propose these changes as one configuration change.
    Change(Vec<MembershipChange>),
    /// Hand leadership to this voter.
    Transfer(NodeId),
}

/// What a churning node does and how often.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChurnPlan {
    /// How often a leader takes a step.
    pub interval: Duration,
    /// Random steps never shrink the voters below this.
    pub min_voters: usize,
    /// Random steps never grow the voters beyond this.
    pub max_voters: usize,
    /// Fixed steps, taken in order (each retried until accepted); random steps if `None`.
    pub script: Option<Vec<ChurnStep>>,
}

impl Default for ChurnPlan {
    fn default() -> Self {
        ChurnPlan {
            interval: Duration::from_millis(400),
            min_voters: 3,
            max_voters: 4,
            script: None,
        }
    }
}

/// Counts of what a churning node proposed and how it was answered (this life only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChurnStats {
    /// Configuration changes accepted (an entry appended).
    pub changes: u64,
    /// Of those, changes that promoted a learner.
    pub promotions: u64,
    /// Promotions refused because the learner lagged behind.
    pub promotions_refused: u64,
    /// Changes refused because another one was in progress.
    pub refused_in_progress: u64,
    /// Other refusals.
    pub refused_other: u64,
    /// Transfers started.
    pub transfers: u64,
}

/// The timers of a [`ChurnNode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChurnTimer {
    /// A timer of the Raft node.
    Raft(RaftTimer),
    /// Time for the next step.
    Step,
}

/// A [`RaftNode`] that, while leading, changes the cluster per its [`ChurnPlan`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChurnNode<S: StateMachine> {
    raft: RaftNode<S>,
    plan: ChurnPlan,
    /// The next scripted step.
    next_step: usize,
    stats: ChurnStats,
}

impl<S: StateMachine> ChurnNode<S> {
    /// Wraps `raft`.
    pub fn new(raft: RaftNode<S>, plan: ChurnPlan) -> Self {
        ChurnNode {
            raft,
            plan,
            next_step: 0,
            stats: ChurnStats::default(),
        }
    }

    /// The Raft node.
    pub fn raft(&self) -> &RaftNode<S> {
        &self.raft
    }

    /// What this node proposed in its current life.
    pub fn stats(&self) -> ChurnStats {
        self.stats
    }

    /// How many scripted steps were accepted.
    pub fn steps_taken(&self) -> usize {
        self.next_step
    }

    /// Runs `input` on the Raft node with a context of its own and carries its effects
    /// over to `ctx` in order (so every output keeps its place behind the records).
    fn with_raft<R>(
        &mut self,
        ctx: &mut Context<Self>,
        input: impl FnOnce(&mut RaftNode<S>, &mut Context<RaftNode<S>>) -> R,
    ) -> R {
        let members = ctx.members().to_vec();
        let (id, now, records) = (ctx.id(), ctx.now(), ctx.records_appended());
        let (result, effects) = {
            let mut inner = Context::with_records(id, &members, now, ctx.rng(), records);
            let result = input(&mut self.raft, &mut inner);
            (result, inner.into_effects())
        };
        for effect in effects {
            match effect {
                Effect::Send { to, message, .. } => ctx.send(to, message),
                Effect::Reply {
                    client, response, ..
                } => ctx.reply(client, response),
                Effect::SetTimer {
                    timer,
                    after_min,
                    after_max,
                } => ctx.set_timer(ChurnTimer::Raft(timer), after_min, after_max),
                Effect::CancelTimer { timer } => ctx.cancel_timer(ChurnTimer::Raft(timer)),
                Effect::Persist { record } => ctx.persist(record),
                Effect::Checkpoint { record, derived } if derived => ctx.compact(record),
                Effect::Checkpoint { record, .. } => ctx.checkpoint(record),
                Effect::Sync => ctx.sync(),
            }
        }
        result
    }

    fn arm_step(&self, ctx: &mut Context<Self>) {
        let interval = self.plan.interval;
        ctx.set_timer(ChurnTimer::Step, interval, interval * 2);
    }

    /// A random step that fits the plan's bounds, if any.
    fn random_step(&self, ctx: &mut Context<Self>) -> Option<ChurnStep> {
        let membership: &Membership = self.raft.membership();
        let id = ctx.id();
        let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
        let learners: Vec<NodeId> = membership.learners.iter().copied().collect();
        let named = membership.nodes();
        let spares: Vec<NodeId> = ctx
            .members()
            .iter()
            .copied()
            .filter(|node| !named.contains(node))
            .collect();
        let mut options = Vec::new();
        let can_grow = voters.len() < self.plan.max_voters;
        let can_shrink = voters.len() > self.plan.min_voters;
        for &spare in &spares {
            options.push(ChurnStep::Change(vec![MembershipChange::AddLearner(spare)]));
            if can_grow {
                options.push(ChurnStep::Change(vec![MembershipChange::AddVoter(spare)]));
            }
            // Replace a voter (both voter sets change at once).
            for &voter in &voters {
                options.push(ChurnStep::Change(vec![
                    MembershipChange::Remove(voter),
                    MembershipChange::AddVoter(spare),
                ]));
            }
        }
        // Replace two voters at once.
        if spares.len() >= 2 && voters.len() >= 2 {
            options.push(ChurnStep::Change(vec![
                MembershipChange::Remove(voters[0]),
                MembershipChange::Remove(voters[1]),
                MembershipChange::AddVoter(spares[0]),
                MembershipChange::AddVoter(spares[1]),
            ]));
        }
        for &learner in &learners {
            if can_grow {
                options.push(ChurnStep::Change(vec![MembershipChange::Promote(learner)]));
            }
            options.push(ChurnStep::Change(vec![MembershipChange::Remove(learner)]));
        }
        if can_shrink {
            for &voter in &voters {
                options.push(ChurnStep::Change(vec![MembershipChange::Remove(voter)]));
            }
        }
        for &voter in &voters {
            if voter != id {
                options.push(ChurnStep::Transfer(voter));
            }
        }
        if options.is_empty() {
            return None;
        }
        let pick = ctx.rng().below(options.len() as u64) as usize;
        Some(options.swap_remove(pick))
    }

    fn on_step(&mut self, ctx: &mut Context<Self>) {
        self.arm_step(ctx);
        if !self.raft.is_leader() {
            return;
        }
        let step = match &self.plan.script {
            Some(script) => script.get(self.next_step).cloned(),
            None => self.random_step(ctx),
        };
        let Some(step) = step else {
            return;
        };
        let accepted = match &step {
            ChurnStep::Change(changes) => {
                let result = self.with_raft(ctx, |raft, ctx| {
                    raft.propose_membership_change(changes, ctx)
                });
                let promotes = changes
                    .iter()
                    .any(|change| matches!(change, MembershipChange::Promote(_)));
                match result {
                    Ok(_) => {
                        self.stats.changes += 1;
                        self.stats.promotions += u64::from(promotes);
                        true
                    }
                    Err(MembershipError::LearnerBehind { .. }) => {
                        self.stats.promotions_refused += 1;
                        false
                    }
                    Err(MembershipError::ChangeInProgress { .. }) => {
                        self.stats.refused_in_progress += 1;
                        false
                    }
                    Err(_) => {
                        self.stats.refused_other += 1;
                        false
                    }
                }
            }
            ChurnStep::Transfer(target) => {
                let target = *target;
                let result = self.with_raft(ctx, |raft, ctx| raft.transfer_leadership(target, ctx));
                if result.is_ok() {
                    self.stats.transfers += 1;
                } else {
                    self.stats.refused_other += 1;
                }
                result.is_ok()
            }
        };
        if accepted && self.plan.script.is_some() {
            self.next_step += 1;
        }
    }
}

impl<S: StateMachine> Node for ChurnNode<S> {
    type Message = RaftMessage<S>;
    type Request = S::Request;
    type Response = S::Response;
    type Record = RaftRecord<S>;
    type Timer = ChurnTimer;

    fn on_start(&mut self, ctx: &mut Context<Self>) {
        self.with_raft(ctx, |raft, ctx| raft.on_start(ctx));
        self.arm_step(ctx);
    }

    fn on_recover(&mut self, records: Vec<RaftRecord<S>>, ctx: &mut Context<Self>) {
        self.with_raft(ctx, |raft, ctx| raft.on_recover(records, ctx));
        self.arm_step(ctx);
    }

    fn on_message(&mut self, from: NodeId, message: RaftMessage<S>, ctx: &mut Context<Self>) {
        self.with_raft(ctx, |raft, ctx| raft.on_message(from, message, ctx));
    }

    fn on_timer(&mut self, timer: ChurnTimer, ctx: &mut Context<Self>) {
        match timer {
            ChurnTimer::Raft(timer) => self.with_raft(ctx, |raft, ctx| raft.on_timer(timer, ctx)),
            ChurnTimer::Step => self.on_step(ctx),
        }
    }

    fn on_request(&mut self, client: ClientId, request: S::Request, ctx: &mut Context<Self>) {
        self.with_raft(ctx, |raft, ctx| raft.on_request(client, request, ctx));
    }
}
