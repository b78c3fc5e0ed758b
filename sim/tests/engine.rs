//! The simulator's machinery on small purpose-built nodes: liveness detection, pauses,
//! clocks and partitions.

use std::time::Duration;
use synod_check::kv::Budget;
use synod_core::kv::{KvCommand, KvMap, KvOutput};
use synod_core::node::{Client, ClientContext, ClientId, Completion, Context, Node, NodeId};
use synod_core::time::Time;
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::simulation::{Endpoint, NemesisAction, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

/// A server that answers immediately unless `silent`; it remembers the largest local
/// time it has seen so clock behaviour is observable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Plain {
    silent: bool,
    map: KvMap,
    latest_local_time: Time,
    clock_went_back: bool,
}

impl Node for Plain {
    type Message = ();
    type Request = KvCommand;
    type Response = KvOutput;
    type Record = ();
    type Timer = ();
    fn on_start(&mut self, _ctx: &mut Context<Self>) {}
    fn on_recover(&mut self, _records: Vec<()>, _ctx: &mut Context<Self>) {}
    fn on_message(&mut self, _from: NodeId, _message: (), _ctx: &mut Context<Self>) {}
    fn on_timer(&mut self, _timer: (), _ctx: &mut Context<Self>) {}
    fn on_request(&mut self, client: ClientId, request: KvCommand, ctx: &mut Context<Self>) {
        if ctx.now() < self.latest_local_time {
            self.clock_went_back = true;
        }
        self.latest_local_time = ctx.now();
        if !self.silent {
            let output = self.map.apply(&request);
            ctx.reply(client, output);
        }
    }
}

/// A client that sends once and waits forever (no retries): only the network decides.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Patient;

impl Client for Patient {
    type Node = Plain;
    type Operation = KvCommand;
    type Output = KvOutput;
    type Timer = ();
    fn on_invoke(&mut self, operation: KvCommand, ctx: &mut ClientContext<Self>) {
        ctx.send(NodeId(0), operation);
    }
    fn on_response(&mut self, _from: NodeId, response: KvOutput, ctx: &mut ClientContext<Self>) {
        ctx.complete(Completion::Ok(response));
    }
    fn on_timer(&mut self, _timer: (), _ctx: &mut ClientContext<Self>) {}
}

fn simulation(silent: bool, config: SimConfig) -> Simulation<Patient, KvWorkload> {
    let workload = KvWorkload::new(config.workload.clone());
    Simulation::new(
        config,
        Box::new(move |_| Plain {
            silent,
            map: KvMap::new(),
            latest_local_time: Time::ZERO,
            clock_went_back: false,
        }),
        |_, _| Patient,
        workload,
    )
}

fn quiet_config() -> SimConfig {
    let mut config = SimConfig {
        faults: FaultSet::none(),
        ..SimConfig::default()
    };
    config.workload.clients = 2;
    config.workload.operations_per_client = 10;
    config
}

#[test]
fn a_server_that_never_answers_is_a_liveness_violation() {
    let report = simulation(true, quiet_config()).run();
    let findings = judge_kv_run(&report, Budget::default());
    assert!(
        findings
            .iter()
            .any(|finding| matches!(finding, Finding::Liveness(_))),
        "{findings:?}"
    );
    // Unanswered operations are unknown, not failures, and the history stays checkable.
    assert_eq!(report.outcomes.ok, 0);
    assert_eq!(report.outcomes.info, 2);
}

#[test]
fn a_quiet_run_completes_everything() {
    let report = simulation(false, quiet_config()).run();
    assert_eq!(report.outcomes.ok, 20);
    assert!(judge_kv_run(&report, Budget::default()).is_empty());
}

#[test]
fn a_paused_node_delays_but_loses_nothing() {
    let mut simulation = simulation(false, quiet_config());
    simulation.script_nemesis(vec![
        (Duration::ZERO, NemesisAction::Pause { node: NodeId(0) }),
        (
            Duration::from_secs(2),
            NemesisAction::Resume { node: NodeId(0) },
        ),
    ]);
    let report = simulation.run();
    assert_eq!(report.outcomes.ok, 20, "{report:?}");
    assert!(report.simulated >= Duration::from_secs(2));
}

#[test]
fn a_one_way_partition_strands_a_client_that_never_retries() {
    let mut config = quiet_config();
    config.workload.operations_per_client = 3;
    let mut simulation = simulation(false, config);
    let client = Endpoint::Client(ClientId(0));
    let server = Endpoint::Node(NodeId(0));
    // One-way: requests get through, replies do not, so the client waits until healed.
    simulation.script_nemesis(vec![
        (
            Duration::ZERO,
            NemesisAction::Partition {
                blocked: [(server, client)].into_iter().collect(),
            },
        ),
        (Duration::from_millis(900), NemesisAction::HealPartition),
    ]);
    let report = simulation.run();
    // The patient client never resends, and its first request was answered into the void:
    // the other client finishes, this one is stuck, and the run says so.
    assert_eq!(report.outcomes.ok, 3, "{report:?}");
    let violation = report
        .liveness_violation
        .expect("a stuck client is a liveness failure");
    assert!(
        violation.contains("c0") && !violation.contains("c1"),
        "{violation}"
    );
}

#[test]
fn node_clocks_jump_and_drift_but_never_run_backwards() {
    let mut config = quiet_config();
    config.workload.operations_per_client = 200;
    config.faults = "clock".parse().expect("valid fault list");
    config.nemesis.interval_min = Duration::from_millis(1);
    config.nemesis.interval_max = Duration::from_millis(3);
    config.nemesis.clock_drift_max_ppm = 500_000;
    let mut simulation = simulation(false, config);
    simulation.add_invariant(Box::new(|nodes| {
        match nodes.running().find(|(_, node)| node.clock_went_back) {
            Some((id, _)) => Err(format!("the clock of {id} went backwards")),
            None => Ok(()),
        }
    }));
    let report = simulation.run();
    assert_eq!(report.invariant_violation, None);
    assert!(
        report.faults.get("clock").copied().unwrap_or(0) > 10,
        "{:?}",
        report.faults
    );
    assert_eq!(report.outcomes.ok, 400);
}
