//! Raft's reads without log entries, judged by the linearizability checker under clock
//! faults far beyond what real clocks do (rates off by up to 90 % and forward jumps):
//! ReadIndex never depends on clocks; a lease whose drift bound covers the injected drift
//! stays linearizable; a lease that assumes perfect clocks serves stale reads that the
//! checker catches, and so does a leader whose reads ignore the writes followers committed
//! on its durable hints.
//!
//! `SYNOD_RAFT_SEEDS=<n>` widens the sweeps.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;
use synod_check::kv::Budget;
use synod_core::node::NodeId;
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::raft::invariants::{ElectionHistory, check_all};
use synod_protocols::raft::{RaftConfig, RaftNode, RaftVariant, ReadMode};
use synod_sim::config::SimConfig;
use synod_sim::packet::Endpoint;
use synod_sim::simulation::{NemesisAction, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

type KvRaft = RaftNode<SessionKv>;

/// The clock drift the nemesis injects here, either way: 90 %.
const INJECTED_DRIFT_PPM: u32 = 900_000;

fn seeds(default: u64) -> Vec<u64> {
    let count = std::env::var("SYNOD_RAFT_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default);
    (1..=count).collect()
}

/// The scripted clock fault: n0 leads with a normal clock while n1 and n2 run slow (so
/// they do not campaign), then n0's clock slows to a tenth and n1's and n2's run 1.9 times
/// fast, and n0 is cut off from them (not from the clients) for 1.5 s.
fn slow_leader_fast_followers() -> Vec<(Duration, NemesisAction)> {
    let drift = |node, parts_per_million| NemesisAction::ClockDrift {
        node: NodeId(node),
        parts_per_million,
    };
    let slow = -(INJECTED_DRIFT_PPM as i32);
    let fast = INJECTED_DRIFT_PPM as i32;
    let mut blocked = BTreeSet::new();
    for follower in [1, 2] {
        blocked.insert((Endpoint::Node(NodeId(0)), Endpoint::Node(NodeId(follower))));
        blocked.insert((Endpoint::Node(NodeId(follower)), Endpoint::Node(NodeId(0))));
    }
    let at = Duration::from_millis;
    vec![
        (at(0), drift(1, slow)),
        (at(0), drift(2, slow)),
        (at(400), drift(0, slow)),
        (at(400), drift(1, fast)),
        (at(400), drift(2, fast)),
        (at(450), NemesisAction::Partition { blocked }),
        (at(1950), NemesisAction::HealPartition),
        (at(1950), drift(0, 0)),
        (at(1950), drift(1, 0)),
        (at(1950), drift(2, 0)),
    ]
}

fn run(raft: RaftConfig, seed: u64) -> Vec<Finding> {
    run_with(raft, seed, None)
}

fn run_with(
    raft: RaftConfig,
    seed: u64,
    script: Option<Vec<(Duration, NemesisAction)>>,
) -> Vec<Finding> {
    run_variant(RaftVariant::Correct, raft, seed, script, "partition,clock")
}

fn run_variant(
    variant: RaftVariant,
    raft: RaftConfig,
    seed: u64,
    script: Option<Vec<(Duration, NemesisAction)>>,
    faults: &str,
) -> Vec<Finding> {
    let mut config = SimConfig {
        seed,
        nodes: 3,
        faults: faults.parse().expect("valid fault list"),
        ..SimConfig::default()
    };
    config.nemesis.clock_drift_max_ppm = INJECTED_DRIFT_PPM;
    // Read-heavy, so a stale read has many chances to show.
    config.workload.get_weight = 8;
    // Long enough to still be running when the scripted fault strikes.
    config.workload.operations_per_client = 300;
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
    if let Some(script) = script {
        simulation.script_nemesis(script);
    }
    let history = RefCell::new(ElectionHistory::new());
    simulation.add_invariant(Box::new(move |nodes| {
        history.borrow_mut().observe(nodes.running())?;
        check_all(nodes.running())
    }));
    let report = simulation.run();
    judge_kv_run(&report, Budget::default())
}

/// Seeds with a finding other than an undecided checker.
fn failures(raft: RaftConfig, seeds: &[u64]) -> Vec<(u64, Vec<Finding>)> {
    synod_sim::sweep::sweep(seeds, 2, |seed| run(raft, seed), |_, _| {})
        .into_iter()
        .filter(|(_, findings)| {
            findings
                .iter()
                .any(|finding| !matches!(finding, Finding::CheckerUnknown(_)))
        })
        .collect()
}

fn reads(read_mode: ReadMode, clock_drift_bound_ppm: u32) -> RaftConfig {
    RaftConfig {
        read_mode,
        clock_drift_bound_ppm,
        ..RaftConfig::default()
    }
}

#[test]
fn read_index_is_linearizable_whatever_the_clocks_do() {
    let failed = failures(reads(ReadMode::ReadIndex, 0), &seeds(60));
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn a_lease_whose_bound_covers_the_drift_is_linearizable() {
    let failed = failures(reads(ReadMode::Lease, INJECTED_DRIFT_PPM), &seeds(60));
    assert!(failed.is_empty(), "{failed:#?}");
}

fn stale_reads(raft: RaftConfig) -> Vec<u64> {
    let seeds: Vec<u64> = (1..=8).collect();
    not_linearizable(&seeds, |seed| {
        run_with(raft, seed, Some(slow_leader_fast_followers()))
    })
}

/// The seeds whose runs the checker found not linearizable.
fn not_linearizable(seeds: &[u64], run_seed: impl Fn(u64) -> Vec<Finding> + Sync) -> Vec<u64> {
    synod_sim::sweep::sweep(seeds, 2, run_seed, |_, _| {})
        .into_iter()
        .filter(|(_, findings)| {
            findings
                .iter()
                .any(|finding| matches!(finding, Finding::NotLinearizable(_)))
        })
        .map(|(seed, _)| seed)
        .collect()
}

#[test]
fn a_lease_that_assumes_perfect_clocks_serves_a_stale_read() {
    let caught = stale_reads(reads(ReadMode::Lease, 0));
    assert!(!caught.is_empty(), "no stale read caught");
    // The same fault leaves the lease with an honest bound, and ReadIndex, linearizable.
    assert_eq!(
        stale_reads(reads(ReadMode::Lease, INJECTED_DRIFT_PPM)),
        Vec::<u64>::new()
    );
    assert_eq!(
        stale_reads(reads(ReadMode::ReadIndex, 0)),
        Vec::<u64>::new()
    );
}

/// Clients start at every member, so followers serve most reads (with the leader's read
/// index) and pass writes on; a follower that answers before it applied up to the read
/// index serves stale reads, which the checker catches.
#[test]
fn a_follower_that_reads_before_applying_the_read_index_is_caught() {
    let seeds: Vec<u64> = (1..=24).collect();
    let raft = reads(ReadMode::ReadIndex, 0);
    // Held-back messages make a follower learn of commits late.
    let faults = "partition,reorder";
    let run_seed = |seed| run_variant(RaftVariant::EarlyFollowerRead, raft, seed, None, faults);
    let caught = not_linearizable(&seeds, run_seed);
    eprintln!(
        "stale follower reads caught in {} of {} seeds",
        caught.len(),
        seeds.len()
    );
    assert!(!caught.is_empty(), "no stale follower read caught");
}

/// n0 leads (n1 and n2 run slow, so they do not campaign), and every 200 ms the followers'
/// messages to it are lost for 100 ms: it cannot count a majority, while they still
/// receive its appends and its durable hints.
fn followers_unheard() -> Vec<(Duration, NemesisAction)> {
    let slow = -(INJECTED_DRIFT_PPM as i32);
    let mut steps = vec![
        (
            Duration::ZERO,
            NemesisAction::ClockDrift {
                node: NodeId(1),
                parts_per_million: slow,
            },
        ),
        (
            Duration::ZERO,
            NemesisAction::ClockDrift {
                node: NodeId(2),
                parts_per_million: slow,
            },
        ),
    ];
    let blocked: BTreeSet<_> = [1, 2]
        .into_iter()
        .map(|follower| (Endpoint::Node(NodeId(follower)), Endpoint::Node(NodeId(0))))
        .collect();
    for round in 0..20 {
        let at = Duration::from_millis(400 + 200 * round);
        steps.push((
            at,
            NemesisAction::Partition {
                blocked: blocked.clone(),
            },
        ));
        steps.push((
            at + Duration::from_millis(100),
            NemesisAction::HealPartition,
        ));
    }
    steps
}

/// Clients start at every member, so followers pass writes on and commit them on the
/// leader's durable hint, here before the leader can count a majority; a leader whose
/// lease reads ignore that serves stale reads, which the checker catches. The correct
/// leader passes the same seeds.
#[test]
fn a_leader_whose_reads_ignore_its_durable_hints_is_caught() {
    let seeds = seeds(16);
    // Slow followers keep their promises longer, which leaves the lease safe at the
    // default bound (the leader's own clock keeps time).
    let raft = reads(ReadMode::Lease, RaftConfig::default().clock_drift_bound_ppm);
    let run = |variant, seed| {
        run_variant(
            variant,
            raft,
            seed,
            Some(followers_unheard()),
            "partition,clock",
        )
    };
    let caught = not_linearizable(&seeds, |seed| run(RaftVariant::HintBlindReads, seed));
    eprintln!(
        "stale leader reads caught in {} of {} seeds",
        caught.len(),
        seeds.len()
    );
    assert!(!caught.is_empty(), "no stale leader read caught");
    let correct = not_linearizable(&seeds, |seed| run(RaftVariant::Correct, seed));
    assert_eq!(correct, Vec::<u64>::new());
}
