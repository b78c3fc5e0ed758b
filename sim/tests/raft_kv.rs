//! Raft hunted by the simulator: election safety, log matching, leader completeness and
//! state-machine safety after every event, linearizable histories under every fault kind
//! (crash/restart with torn writes, pauses, clock jumps and drift included), and the
//! figure-8 leader caught.
//!
//! `SYNOD_RAFT_SEEDS=<n>` widens the sweeps (the CI slice is small to keep this file fast).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use synod_check::kv::Budget;
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::raft::invariants::{ElectionHistory, check_all};
use synod_protocols::raft::{RaftConfig, RaftNode, RaftVariant};
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::simulation::{RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

/// Raft replicating the key-value state machine.
type KvRaft = RaftNode<SessionKv>;

fn run(variant: RaftVariant, raft: RaftConfig, config: SimConfig) -> (RunReport, Vec<Finding>) {
    let workload = KvWorkload::new(config.workload.clone());
    let mut simulation = Simulation::new(
        config,
        Box::new(move |_| KvRaft::new(variant, raft)),
        |client, members| {
            let first_guess = members[client.0 as usize % members.len()];
            ReplicatedKvClient::<KvRaft>::new(first_guess, ReplicatedClientConfig::default())
        },
        workload,
    );
    let history = RefCell::new(ElectionHistory::new());
    simulation.add_invariant(Box::new(move |nodes| {
        history.borrow_mut().observe(nodes.running())?;
        check_all(nodes.running())
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

fn seeds(default: u64) -> u64 {
    std::env::var("SYNOD_RAFT_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn sweep(
    variant: RaftVariant,
    raft: RaftConfig,
    seeds: std::ops::RangeInclusive<u64>,
    faults: &FaultSet,
) -> Vec<(u64, Vec<Finding>)> {
    let seeds: Vec<u64> = seeds.collect();
    let run_seed = |seed| run(variant, raft, config(seed, faults.clone())).1;
    synod_sim::sweep::sweep(&seeds, 2, run_seed, |_, _| {})
        .into_iter()
        .filter(|(_, findings)| !findings.is_empty())
        .collect()
}

#[test]
fn a_quiet_cluster_elects_a_leader_and_serves_everything() {
    let (report, findings) = run(
        RaftVariant::Correct,
        RaftConfig::default(),
        config(1, FaultSet::none()),
    );
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(report.outcomes.ok, 200, "{:?}", report.outcomes);
}

#[test]
fn the_correct_protocol_survives_every_fault_kind() {
    let failures = sweep(
        RaftVariant::Correct,
        RaftConfig::default(),
        1..=seeds(200),
        &FaultSet::all(),
    );
    assert!(failures.is_empty(), "failing seeds: {failures:#?}");
}

#[test]
fn one_seed_replays_identically() {
    let (first, _) = run(
        RaftVariant::Correct,
        RaftConfig::default(),
        config(77, FaultSet::all()),
    );
    let (second, _) = run(
        RaftVariant::Correct,
        RaftConfig::default(),
        config(77, FaultSet::all()),
    );
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.history, second.history);
}

#[test]
fn lagging_and_restarted_followers_are_restored_by_snapshots() {
    let faults: FaultSet = "crash,torn-write,partition,drop"
        .parse()
        .expect("valid fault list");
    let mut installs_total = 0;
    for seed in 1..=20 {
        let config = config(seed, faults.clone());
        let workload = KvWorkload::new(config.workload.clone());
        let mut simulation = Simulation::new(
            config,
            Box::new(|_| KvRaft::new(RaftVariant::Correct, RaftConfig::default())),
            |client, members| {
                let first_guess = members[client.0 as usize % members.len()];
                ReplicatedKvClient::<KvRaft>::new(first_guess, ReplicatedClientConfig::default())
            },
            workload,
        );
        // A snapshot point beyond the end of the log a node had just before: only an
        // installed snapshot moves a running node there.
        let installs = Rc::new(Cell::new(0));
        let counted = Rc::clone(&installs);
        let last_index = RefCell::new(BTreeMap::new());
        simulation.add_invariant(Box::new(move |nodes| {
            let mut last_index = last_index.borrow_mut();
            let mut seen = BTreeMap::new();
            for (id, node) in nodes.running() {
                if last_index
                    .get(&id)
                    .is_some_and(|&last| node.log().snapshot_index() > last)
                {
                    counted.set(counted.get() + 1);
                }
                seen.insert(id, node.log().last_index());
            }
            *last_index = seen;
            check_all(nodes.running())
        }));
        let report = simulation.run();
        let findings = judge_kv_run(&report, Budget::default());
        assert!(findings.is_empty(), "seed {seed}: {findings:?}");
        installs_total += installs.get();
    }
    assert!(installs_total > 0, "no follower was restored by a snapshot");
}

/// Compactions are written in the background, so a crash may find one unwritten and the
/// node recovers from the records it stood for: crash-heavy seeds where that happens stay
/// linearizable and safe.
#[test]
fn crashes_that_find_a_compaction_unwritten_lose_nothing() {
    let faults = FaultSet::all();
    let mut unwritten = 0;
    for seed in 1..=seeds(30) {
        let (report, findings) = run(
            RaftVariant::Correct,
            RaftConfig {
                snapshot_threshold_entries: 8,
                ..RaftConfig::default()
            },
            config(seed, faults.clone()),
        );
        assert!(findings.is_empty(), "seed {seed}: {findings:?}");
        unwritten += report
            .faults
            .get("unwritten-compaction")
            .copied()
            .unwrap_or(0);
    }
    assert!(unwritten > 0, "no crash found a compaction unwritten");
}
