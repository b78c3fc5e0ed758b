//! Multi-Paxos hunted by the simulator: agreement after every event, linearizable
//! histories under every fault kind, and the broken proposer caught.

use synod_check::kv::Budget;
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};

/// Multi-Paxos replicating the key-value state machine.
type KvPaxos = PaxosNode<SessionKv>;
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::simulation::{RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

fn run(variant: PaxosVariant, config: SimConfig) -> (RunReport, Vec<Finding>) {
    let workload = KvWorkload::new(config.workload.clone());
    let mut simulation = Simulation::new(
        config,
        Box::new(move |_| KvPaxos::new(variant, PaxosConfig::default())),
        |client, members| {
            let first_guess = members[client.0 as usize % members.len()];
            ReplicatedKvClient::<KvPaxos>::new(first_guess, ReplicatedClientConfig::default())
        },
        workload,
    );
    simulation.add_invariant(Box::new(|nodes| {
        check_agreement(nodes.running().map(|(_, node)| node))
    }));
    let report = simulation.run();
    let findings = judge_kv_run(&report, Budget::default());
    (report, findings)
}

fn config(seed: u64, faults: FaultSet) -> SimConfig {
    SimConfig {
        seed,
        nodes: 3,
        faults,
        ..SimConfig::default()
    }
}

fn sweep(
    variant: PaxosVariant,
    seeds: std::ops::RangeInclusive<u64>,
    faults: &FaultSet,
) -> Vec<(u64, Vec<Finding>)> {
    let seeds: Vec<u64> = seeds.collect();
    let run_seed = |seed| run(variant, config(seed, faults.clone())).1;
    synod_sim::sweep::sweep(&seeds, 2, run_seed, |_, _| {})
        .into_iter()
        .filter(|(_, findings)| !findings.is_empty())
        .collect()
}

#[test]
fn a_quiet_cluster_elects_a_leader_and_serves_everything() {
    let (report, findings) = run(PaxosVariant::Correct, config(1, FaultSet::none()));
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(report.outcomes.ok, 200, "{:?}", report.outcomes);
}

#[test]
fn the_correct_protocol_survives_every_fault_kind() {
    let failures = sweep(PaxosVariant::Correct, 1..=1000, &FaultSet::all());
    assert!(failures.is_empty(), "failing seeds: {failures:#?}");
}

#[test]
fn one_seed_replays_identically() {
    let (first, _) = run(PaxosVariant::Correct, config(77, FaultSet::all()));
    let (second, _) = run(PaxosVariant::Correct, config(77, FaultSet::all()));
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.history, second.history);
}

#[test]
fn a_leader_that_forgets_accepted_values_is_caught() {
    let faults: FaultSet = "partition,crash,drop".parse().expect("valid fault list");
    let failures = sweep(PaxosVariant::ForgetAcceptedValues, 1..=100, &faults);
    assert!(!failures.is_empty(), "no seed caught the broken proposer");
}

#[test]
fn five_replicas_tolerate_two_crashes() {
    let mut config = config(
        3,
        "crash,torn-write,drop".parse().expect("valid fault list"),
    );
    config.nodes = 5;
    let (report, findings) = run(PaxosVariant::Correct, config);
    assert!(findings.is_empty(), "{findings:?}");
    assert!(report.faults.get("crash").copied().unwrap_or(0) > 0);
    assert!(report.outcomes.ok > 150, "{:?}", report.outcomes);
}
