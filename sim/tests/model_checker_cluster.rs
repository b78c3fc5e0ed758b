//! The model checker on clusters of real nodes: small purpose-built protocols whose correct
//! variants exhaust their bounded state space and whose broken variants are caught with
//! short, minimized counterexamples; the two network semantics; crashes and the
//! output-commit rule; and the at-most-once KV server checked for linearizability.

use std::time::Duration;
use synod_core::kv::{KvCommand, KvOutput};
use synod_core::node::{Client, ClientContext, ClientId, Completion, Context, Node, NodeId};
use synod_protocols::rpc::{AmoClientConfig, AmoKvClient, AmoKvServer, AmoVariant};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterAction, ClusterModel, ClusterState, HistoryEvent, NetworkSemantics, SyncTiming,
    kv_history_linearizable,
};
use synod_sim::model_checker::model::Model;
use synod_sim::model_checker::path::Path;

const FLUSH_DELAY: Duration = Duration::from_millis(5);
const RETRY_DELAY: Duration = Duration::from_millis(20);

/// Whether the register acknowledges a write only once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RegisterVariant {
    /// Persists, then replies; the reply waits for the flush timer's sync.
    Correct,
    /// Broken: replies, then persists; a crash before the flush loses an acknowledged write.
    AckBeforePersist,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum RegisterOperation {
    Write(u8),
    Read,
}

/// A single-node register that batches syncs on a flush timer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Register {
    variant: RegisterVariant,
    value: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Flush;

impl Node for Register {
    type Message = ();
    /// (sequence number, operation).
    type Request = (u8, RegisterOperation);
    /// (sequence number, value written or read).
    type Response = (u8, u8);
    type Record = u8;
    type Timer = Flush;

    fn on_start(&mut self, _ctx: &mut Context<Self>) {}

    fn on_recover(&mut self, records: Vec<u8>, _ctx: &mut Context<Self>) {
        self.value = records.last().copied().unwrap_or(0);
    }

    fn on_message(&mut self, _from: NodeId, _message: (), _ctx: &mut Context<Self>) {}

    fn on_timer(&mut self, _timer: Flush, ctx: &mut Context<Self>) {
        ctx.sync();
    }

    fn on_request(
        &mut self,
        client: ClientId,
        (sequence, operation): (u8, RegisterOperation),
        ctx: &mut Context<Self>,
    ) {
        match operation {
            RegisterOperation::Read => ctx.reply(client, (sequence, self.value)),
            RegisterOperation::Write(value) => {
                let changed = self.value != value;
                self.value = value;
                if self.variant == RegisterVariant::AckBeforePersist {
                    ctx.reply(client, (sequence, value));
                }
                if changed {
                    ctx.persist(value);
                    ctx.set_timer(Flush, FLUSH_DELAY, FLUSH_DELAY);
                }
                if self.variant == RegisterVariant::Correct {
                    ctx.reply(client, (sequence, value));
                }
            }
        }
    }
}

/// A client of [`Register`] that retries until answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct RegisterClient {
    sequence: u8,
    outstanding: Option<RegisterOperation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Retry;

impl Client for RegisterClient {
    type Node = Register;
    type Operation = RegisterOperation;
    type Output = u8;
    type Timer = Retry;

    fn on_invoke(&mut self, operation: RegisterOperation, ctx: &mut ClientContext<Self>) {
        self.sequence += 1;
        self.outstanding = Some(operation);
        ctx.send(NodeId(0), (self.sequence, operation));
        ctx.set_timer(Retry, RETRY_DELAY, RETRY_DELAY);
    }

    fn on_response(
        &mut self,
        _from: NodeId,
        (sequence, value): (u8, u8),
        ctx: &mut ClientContext<Self>,
    ) {
        if sequence == self.sequence && self.outstanding.take().is_some() {
            ctx.cancel_timer(Retry);
            ctx.complete(Completion::Ok(value));
        }
    }

    fn on_timer(&mut self, _timer: Retry, ctx: &mut ClientContext<Self>) {
        if let Some(operation) = self.outstanding {
            ctx.send(NodeId(0), (self.sequence, operation));
            ctx.set_timer(Retry, RETRY_DELAY, RETRY_DELAY);
        }
    }
}

/// With one client: every read returns the last write acknowledged before it was invoked.
fn reads_see_acknowledged_writes(history: &[HistoryEvent<RegisterClient>]) -> bool {
    let mut acknowledged = 0;
    let mut pending = None;
    for event in history {
        match event {
            HistoryEvent::Invoke { operation, .. } => pending = Some((*operation, acknowledged)),
            HistoryEvent::Complete { completion, .. } => {
                let Completion::Ok(value) = completion else {
                    continue;
                };
                match pending.take() {
                    Some((RegisterOperation::Write(written), _)) => acknowledged = written,
                    Some((RegisterOperation::Read, expected)) if *value != expected => {
                        return false;
                    }
                    _ => {}
                }
            }
        }
    }
    true
}

fn register_model(variant: RegisterVariant, max_crashes: u32) -> ClusterModel<RegisterClient> {
    ClusterModel::new(
        1,
        move |_| Register { variant, value: 0 },
        NetworkSemantics::Redeliverable,
    )
    .client(
        RegisterClient::default(),
        vec![RegisterOperation::Write(1), RegisterOperation::Read],
    )
    .max_crashes(max_crashes)
    .invariant(
        "acknowledged writes survive",
        |state: &ClusterState<RegisterClient>| reads_see_acknowledged_writes(&state.history),
    )
    .goal(
        "all operations done",
        |state: &ClusterState<RegisterClient>| state.all_clients_done(),
    )
}

fn crashes_in(path: &Path<ClusterModel<RegisterClient>>) -> usize {
    path.actions()
        .filter(|action| matches!(action, ClusterAction::Crash { .. }))
        .count()
}

#[test]
fn a_register_that_persists_before_acknowledging_survives_a_crash() {
    for threads in [1, 2] {
        let report = Checker::new(&register_model(RegisterVariant::Correct, 1))
            .threads(threads)
            .bfs();
        assert_eq!(report.verdict(), Verdict::Verified, "{report}");
        let dfs = Checker::new(&register_model(RegisterVariant::Correct, 1))
            .threads(threads)
            .dfs();
        assert_eq!(dfs.verdict(), Verdict::Verified, "{dfs}");
        assert_eq!(dfs.unique_states, report.unique_states);
    }
}

#[test]
fn acknowledging_before_persisting_is_caught_with_a_crash_in_the_trace() {
    let report = Checker::new(&register_model(RegisterVariant::AckBeforePersist, 1)).bfs();
    assert_eq!(report.verdict(), Verdict::Violation);
    let counterexample = report.violation.as_ref().expect("a violation");
    assert_eq!(counterexample.property, "acknowledged writes survive");
    assert_eq!(
        crashes_in(&counterexample.path),
        1,
        "{}",
        counterexample.path
    );
    // Invoke, deliver the write, deliver its ack, invoke the read, crash, restart, deliver
    // the read, deliver the stale answer.
    assert_eq!(counterexample.path.len(), 8, "{}", counterexample.path);
    let printed = report.to_string();
    assert!(printed.contains("Crash"), "{printed}");
    assert!(printed.contains("   8  Deliver(Response"), "{printed}");
}

#[test]
fn without_crashes_acknowledging_early_is_invisible() {
    let report = Checker::new(&register_model(RegisterVariant::AckBeforePersist, 0)).bfs();
    assert_eq!(report.verdict(), Verdict::Verified, "{report}");
}

#[test]
fn the_minimizer_shortens_depth_first_counterexamples_and_never_lengthens_them() {
    let model = register_model(RegisterVariant::AckBeforePersist, 1);
    let shortest = Checker::new(&model)
        .bfs()
        .violation
        .expect("bfs finds it")
        .path
        .len();
    for threads in [1, 2] {
        let raw = Checker::new(&model).threads(threads).minimize(false).dfs();
        let raw_path = raw.violation.expect("dfs finds it").path;
        let invariant = &model.properties()[0];
        let minimized = raw_path.clone().minimize(&model, invariant);
        assert!(minimized.len() <= raw_path.len());
        assert!(minimized.len() >= shortest);
        assert_eq!(crashes_in(&minimized), 1);
        // The minimized path is itself a counterexample when replayed from scratch.
        let actions: Vec<_> = minimized.actions().cloned().collect();
        let replayed = Path::replay(&model, &minimized.init, &actions, invariant)
            .expect("the minimized trace reproduces");
        assert_eq!(replayed.len(), minimized.len());
    }
    let report = Checker::new(&model).random_probes(3, 2_000);
    let counterexample = report.violation.expect("a probe finds it");
    assert!(counterexample.path.len() <= counterexample.original_length);
    assert_eq!(crashes_in(&counterexample.path), 1);
}

/// Node 0 sends 1 then 2 to node 1, which notes whether a value ever arrived after a larger
/// one: correct only if channels are FIFO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Sequencer {
    last: u8,
    regressed: bool,
}

impl Node for Sequencer {
    type Message = u8;
    type Request = ();
    type Response = ();
    type Record = ();
    type Timer = ();

    fn on_start(&mut self, ctx: &mut Context<Self>) {
        if ctx.id() == NodeId(0) {
            ctx.send(NodeId(1), 1);
            ctx.send(NodeId(1), 2);
        }
    }

    fn on_recover(&mut self, _records: Vec<()>, _ctx: &mut Context<Self>) {}

    fn on_message(&mut self, _from: NodeId, value: u8, _ctx: &mut Context<Self>) {
        self.regressed |= value < self.last;
        self.last = value;
    }

    fn on_timer(&mut self, _timer: (), _ctx: &mut Context<Self>) {}

    fn on_request(&mut self, _client: ClientId, _request: (), _ctx: &mut Context<Self>) {}
}

/// A client type for clusters without clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NoClient;

impl Client for NoClient {
    type Node = Sequencer;
    type Operation = ();
    type Output = ();
    type Timer = ();

    fn on_invoke(&mut self, _operation: (), _ctx: &mut ClientContext<Self>) {}
    fn on_response(&mut self, _from: NodeId, _response: (), _ctx: &mut ClientContext<Self>) {}
    fn on_timer(&mut self, _timer: (), _ctx: &mut ClientContext<Self>) {}
}

fn sequencer_model(network: NetworkSemantics) -> ClusterModel<NoClient> {
    ClusterModel::new(2, |_| Sequencer::default(), network)
        .invariant("delivered in order", |state: &ClusterState<NoClient>| {
            state.node(NodeId(1)).is_some_and(|node| !node.regressed)
        })
        .goal(
            "the last value arrives",
            |state: &ClusterState<NoClient>| {
                state.node(NodeId(1)).is_some_and(|node| node.last == 2)
            },
        )
}

#[test]
fn a_protocol_that_relies_on_fifo_passes_on_fifo_channels_only() {
    let fifo = Checker::new(&sequencer_model(NetworkSemantics::OrderedExactlyOnce)).bfs();
    assert_eq!(fifo.verdict(), Verdict::Verified, "{fifo}");
    // Initial, after the first delivery, after the second.
    assert_eq!(fifo.unique_states, 3);

    let redeliverable = Checker::new(&sequencer_model(NetworkSemantics::Redeliverable)).bfs();
    assert_eq!(redeliverable.verdict(), Verdict::Violation);
    let path = &redeliverable.violation.as_ref().expect("reordering").path;
    let delivered: Vec<u8> = path
        .actions()
        .map(|action| match action {
            ClusterAction::Deliver(synod_sim::model_checker::cluster::Packet::Message {
                message,
                ..
            }) => *message,
            other => panic!("only deliveries are possible, not {other:?}"),
        })
        .collect();
    assert_eq!(delivered, [2, 1]);
}

#[test]
fn an_unreachable_goal_makes_an_exhaustive_search_inconclusive() {
    let model = sequencer_model(NetworkSemantics::OrderedExactlyOnce).goal(
        "a value never sent arrives",
        |state: &ClusterState<NoClient>| state.node(NodeId(1)).is_some_and(|node| node.last == 3),
    );
    let report = Checker::new(&model).dfs();
    assert!(report.is_exhaustive());
    assert_eq!(report.verdict(), Verdict::Inconclusive);
    assert!(report.goals[1].example.is_none());
    assert!(report.to_string().contains("NOT reached"));
}

#[test]
fn prune_predicates_stop_expansion() {
    let model = sequencer_model(NetworkSemantics::OrderedExactlyOnce).prune(
        |state: &ClusterState<NoClient>| state.node(NodeId(1)).is_some_and(|node| node.last == 1),
    );
    let report = Checker::new(&model).bfs();
    assert_eq!(report.unique_states, 2);
    assert!(report.goals[0].example.is_none());
}

fn amo_model(variant: AmoVariant) -> ClusterModel<AmoKvClient> {
    let key = "k".to_string();
    ClusterModel::new(
        1,
        move |_| AmoKvServer::new(variant),
        NetworkSemantics::Redeliverable,
    )
    .client(
        AmoKvClient::new(NodeId(0), AmoClientConfig::default()),
        vec![
            KvCommand::Append {
                key: key.clone(),
                value: "a".to_string(),
            },
            KvCommand::Get { key },
        ],
    )
    .max_crashes(1)
    .invariant("linearizable", |state: &ClusterState<AmoKvClient>| {
        kv_history_linearizable(&state.history)
    })
    .goal(
        "all operations done",
        |state: &ClusterState<AmoKvClient>| state.all_clients_done(),
    )
}

#[test]
fn the_at_most_once_kv_server_is_linearizable_under_redelivery_and_a_crash() {
    let report = Checker::new(&amo_model(AmoVariant::Correct))
        .threads(2)
        .dfs();
    assert_eq!(report.verdict(), Verdict::Verified, "{report}");
    let deferred = amo_model(AmoVariant::Correct).sync_timing(SyncTiming::Deferred);
    let report = Checker::new(&deferred).threads(2).dfs();
    assert_eq!(report.verdict(), Verdict::Verified, "{report}");
    let read_back = Checker::new(&amo_model(AmoVariant::Correct))
        .bfs()
        .goals
        .remove(0)
        .example
        .expect("the script completes");
    let last = read_back.last_state();
    assert!(matches!(
        last.history.last(),
        Some(HistoryEvent::Complete {
            completion: Completion::Ok(KvOutput::Value(Some(_))),
            ..
        })
    ));
}

#[test]
fn broken_at_most_once_servers_are_caught() {
    let report = Checker::new(&amo_model(AmoVariant::NoDedup)).bfs();
    let counterexample = report.violation.expect("a doubled append");
    let deliveries_of_the_append = counterexample
        .path
        .actions()
        .filter(|action| matches!(action, ClusterAction::Deliver(synod_sim::model_checker::cluster::Packet::Request { request, .. }) if matches!(request.command, KvCommand::Append { .. })))
        .count();
    assert_eq!(deliveries_of_the_append, 2, "{}", counterexample.path);

    // This server replies, persists and syncs in one handler call: with syncs that
    // complete within the step no crash fits in between, so only deferred syncs catch it.
    let immediate = Checker::new(&amo_model(AmoVariant::ReplyBeforeDurable)).bfs();
    assert_eq!(immediate.verdict(), Verdict::Verified, "{immediate}");
    let deferred = amo_model(AmoVariant::ReplyBeforeDurable).sync_timing(SyncTiming::Deferred);
    let report = Checker::new(&deferred).bfs();
    let counterexample = report.violation.expect("a lost acknowledged append");
    assert!(
        counterexample
            .path
            .actions()
            .any(|action| matches!(action, ClusterAction::Crash { .. })),
        "{}",
        counterexample.path
    );
}
