//! The simulator hunting primary-backup with a view service: the correct cluster under every
//! fault, the broken variants caught by the history check or the view invariants, and
//! determinism.
//!
//! Crash faults and liveness: servers keep their state in memory only (the lab's design), so
//! a run in which the primary and the backup of a view both lose their state, or the primary
//! crashes before acknowledging its view, stops for good rather than serve an empty store
//! (see `synod_protocols::pb`). Sweeps with crashes therefore demand safety on every seed
//! and accept a liveness finding only when the last state is that documented stop
//! ([`permanent_stop`]); sweeps without crashes, and scripted runs whose crashes leave a copy
//! of the state, demand liveness too. Crashes of the view service (node 0) are included
//! everywhere: it persists its views, so they cost availability only while it is down.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;
use synod_check::kv::Budget;
use synod_core::node::{ClientId, NodeId};
use synod_protocols::pb::invariants::{ViewHistory, permanent_stop};
use synod_protocols::pb::{PbClient, PbClientConfig, PbNode, PbVariant, VIEW_SERVICE};
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::simulation::{Endpoint, NemesisAction, RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

/// One view service and three servers: a primary, a backup and a spare to replace either.
const NODES: u32 = 4;

/// Which checks watch a run besides the history check.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// The view invariants after every event (and the session bound).
    Invariants,
    /// Only the linearizability checker.
    HistoryOnly,
}

/// What the invariant hook saw, read after the run.
#[derive(Default)]
struct Observed {
    /// Why the cluster stopped for good in its last state, if it did.
    stop: Option<String>,
    /// The newest view any server knew.
    view_number_max: u64,
    /// How often the view service was seen down after being up.
    view_service_crashes: u64,
    view_service_up: bool,
}

struct Outcome {
    report: RunReport,
    findings: Vec<Finding>,
    observed: Observed,
}

fn simulation(
    variant: PbVariant,
    config: SimConfig,
    watch: Watch,
) -> (Simulation<PbClient, KvWorkload>, Rc<RefCell<Observed>>) {
    let clients = config.workload.clients as usize;
    let workload = KvWorkload::new(config.workload.clone());
    let mut simulation = Simulation::new(
        config,
        Box::new(move |id| PbNode::new(id, variant)),
        |_, _| PbClient::new(PbClientConfig::default()),
        workload,
    );
    let observed = Rc::new(RefCell::new(Observed::default()));
    let seen = Rc::clone(&observed);
    simulation.add_invariant(Box::new(move |nodes| {
        let mut seen = seen.borrow_mut();
        seen.stop = permanent_stop(nodes.running());
        let up = nodes.get(VIEW_SERVICE).is_some();
        if seen.view_service_up && !up {
            seen.view_service_crashes += 1;
        }
        seen.view_service_up = up;
        for (_, node) in nodes.running() {
            if let Some(server) = node.as_server() {
                seen.view_number_max = seen.view_number_max.max(server.view().number);
            }
        }
        Ok(())
    }));
    if watch == Watch::Invariants {
        let history = RefCell::new(ViewHistory::new());
        simulation.add_invariant(Box::new(move |nodes| {
            history.borrow_mut().observe(nodes.running())
        }));
        // Each client keeps one request outstanding and acknowledges each answer with its
        // next mutation, so every replica holds at most one session result per client.
        simulation.add_invariant(Box::new(move |nodes| {
            for (id, node) in nodes.running() {
                let results = node
                    .as_server()
                    .and_then(|server| server.store())
                    .map_or(0, |store| store.sessions().result_count());
                if results > clients {
                    return Err(format!(
                        "{id} holds {results} session results for {clients} clients"
                    ));
                }
            }
            Ok(())
        }));
    }
    (simulation, observed)
}

fn config(seed: u64, faults: FaultSet) -> SimConfig {
    SimConfig {
        seed,
        nodes: NODES,
        faults,
        ..SimConfig::default()
    }
}

fn run(variant: PbVariant, config: SimConfig, watch: Watch) -> Outcome {
    let (simulation, observed) = simulation(variant, config, watch);
    let report = simulation.run();
    let findings = judge_kv_run(&report, Budget::default());
    let observed = Rc::try_unwrap(observed)
        .ok()
        .expect("the simulation is gone")
        .into_inner();
    Outcome {
        report,
        findings,
        observed,
    }
}

/// Runs `seeds` on two threads (the machine has two cores), summarizing each run with
/// `summarize`.
fn sweep<T: Send>(
    variant: PbVariant,
    seeds: std::ops::RangeInclusive<u64>,
    faults: &str,
    watch: Watch,
    summarize: impl Fn(u64, Outcome) -> T + Sync,
) -> Vec<T> {
    let faults: FaultSet = faults.parse().expect("valid fault list");
    let seeds: Vec<u64> = seeds.collect();
    let run_seed = |seed| summarize(seed, run(variant, config(seed, faults.clone()), watch));
    synod_sim::sweep::sweep(&seeds, 2, run_seed, |_, _| {})
        .into_iter()
        .map(|(_, summary)| summary)
        .collect()
}

/// The fault kinds that never destroy state: everything but crashes.
const FAULTS_WITHOUT_CRASHES: &str = "drop,duplicate,reorder,partition,pause,clock";

fn is_safety(finding: &Finding) -> bool {
    !matches!(finding, Finding::Liveness(_))
}

/// A configuration for scripted runs: longer client runs so the script plays out before
/// the faults are healed.
fn scripted_config(seed: u64, faults: &str) -> SimConfig {
    let mut config = config(seed, faults.parse().expect("valid fault list"));
    config.workload.operations_per_client = 150;
    // More keys keep each key's history small enough for the checker's budget.
    config.workload.keys = 8;
    config
}

fn run_scripted(
    variant: PbVariant,
    config: SimConfig,
    script: Vec<(Duration, NemesisAction)>,
) -> Outcome {
    let (mut simulation, observed) = simulation(variant, config, Watch::Invariants);
    simulation.script_nemesis(script);
    let report = simulation.run();
    let findings = judge_kv_run(&report, Budget::default());
    let observed = Rc::try_unwrap(observed)
        .ok()
        .expect("the simulation is gone")
        .into_inner();
    Outcome {
        report,
        findings,
        observed,
    }
}

fn millis(milliseconds: u64) -> Duration {
    Duration::from_millis(milliseconds)
}

/// Cuts n1, the first primary, off from the view service and from clients c0 and c1 for
/// 300 ms: the view service promotes the backup, c0 and c1 time out and follow the new
/// view, while n1, still believing it is the primary, can reach its old backup and the
/// other clients.
fn depose_the_first_primary() -> Vec<(Duration, NemesisAction)> {
    let first_primary = Endpoint::Node(NodeId(1));
    let mut blocked = BTreeSet::new();
    for other in [
        Endpoint::Node(VIEW_SERVICE),
        Endpoint::Client(ClientId(0)),
        Endpoint::Client(ClientId(1)),
    ] {
        blocked.insert((first_primary, other));
        blocked.insert((other, first_primary));
    }
    vec![
        (millis(100), NemesisAction::Partition { blocked }),
        (millis(400), NemesisAction::HealPartition),
    ]
}

#[test]
fn one_seed_replays_byte_for_byte() {
    let first = run(
        PbVariant::Correct,
        config(42, FaultSet::all()),
        Watch::Invariants,
    );
    let second = run(
        PbVariant::Correct,
        config(42, FaultSet::all()),
        Watch::Invariants,
    );
    assert_eq!(first.report.trace_hash, second.report.trace_hash);
    assert_eq!(first.report.history, second.report.history);
    assert_eq!(first.report.events, second.report.events);
    let other = run(
        PbVariant::Correct,
        config(43, FaultSet::all()),
        Watch::Invariants,
    );
    assert_ne!(
        first.report.trace_hash, other.report.trace_hash,
        "different seeds should differ"
    );
}

#[test]
fn the_correct_cluster_passes_a_thousand_seeds_of_every_fault_but_crashes() {
    let failures: Vec<(u64, Vec<Finding>)> = sweep(
        PbVariant::Correct,
        1..=1000,
        FAULTS_WITHOUT_CRASHES,
        Watch::Invariants,
        |seed, outcome| (seed, outcome.findings),
    )
    .into_iter()
    .filter(|(_, findings)| !findings.is_empty())
    .collect();
    assert!(failures.is_empty(), "failing seeds: {failures:#?}");
}

#[test]
fn the_correct_cluster_is_safe_through_a_thousand_seeds_of_every_fault() {
    struct Summary {
        seed: u64,
        unsafe_findings: Vec<Finding>,
        unexplained_liveness: Vec<Finding>,
        stopped: bool,
        view_service_crashes: u64,
        failed_over: bool,
    }
    let summaries = sweep(
        PbVariant::Correct,
        1..=1000,
        "all",
        Watch::Invariants,
        |seed, outcome| {
            let stopped = outcome.observed.stop.is_some();
            let (unsafe_findings, liveness): (Vec<Finding>, Vec<Finding>) =
                outcome.findings.into_iter().partition(is_safety);
            Summary {
                seed,
                unsafe_findings,
                unexplained_liveness: if stopped { Vec::new() } else { liveness },
                stopped,
                view_service_crashes: outcome.observed.view_service_crashes,
                failed_over: outcome.observed.view_number_max >= 3,
            }
        },
    );
    let broken: Vec<(u64, &Vec<Finding>, &Vec<Finding>)> = summaries
        .iter()
        .filter(|summary| {
            !summary.unsafe_findings.is_empty() || !summary.unexplained_liveness.is_empty()
        })
        .map(|summary| {
            (
                summary.seed,
                &summary.unsafe_findings,
                &summary.unexplained_liveness,
            )
        })
        .collect();
    assert!(broken.is_empty(), "failing seeds: {broken:#?}");
    // The documented stop is the exception, not the rule: most runs under crashes recover.
    let stopped = summaries.iter().filter(|summary| summary.stopped).count();
    assert!(stopped < 150, "{stopped} of 1,000 runs stopped for good");
    // And the faults did what this test claims: the view service crashed and restarted,
    // and primaries failed over.
    let view_service_crashed = summaries
        .iter()
        .filter(|summary| summary.view_service_crashes > 0)
        .count();
    assert!(view_service_crashed > 300, "{view_service_crashed}");
    let failed_over = summaries
        .iter()
        .filter(|summary| summary.failed_over)
        .count();
    assert!(failed_over > 800, "{failed_over}");
}

#[test]
fn every_fault_kind_actually_strikes() {
    // Torn writes are enabled too but rarely strike: only the view service writes records,
    // and only for a sync's latency after a view change; the scripted test below tears.
    let mut seen = BTreeMap::new();
    let mut outcomes = (0, 0);
    for seed in 1..=20 {
        let outcome = run(
            PbVariant::Correct,
            config(seed, FaultSet::all()),
            Watch::Invariants,
        );
        let unsafe_findings: Vec<&Finding> =
            outcome.findings.iter().filter(|f| is_safety(f)).collect();
        assert!(
            unsafe_findings.is_empty(),
            "seed {seed}: {unsafe_findings:?}"
        );
        for (kind, count) in &outcome.report.faults {
            *seen.entry(*kind).or_insert(0) += count;
        }
        outcomes.0 += outcome.report.outcomes.ok;
        outcomes.1 += outcome.report.outcomes.info;
    }
    for kind in [
        "drop",
        "duplicate",
        "reorder",
        "crash",
        "partition",
        "pause",
        "clock",
    ] {
        assert!(seen.contains_key(kind), "{kind} never happened: {seen:?}");
    }
    assert!(
        outcomes.0 > 1000,
        "too few successful operations: {outcomes:?}"
    );
    assert!(outcomes.1 > 0, "faults never made an outcome unknown");
}

#[test]
fn the_view_service_may_crash_and_restart_at_will() {
    // Node 0 crashes five times (tearing any unsynced record), once while the primary is
    // down so the failover waits for its restart; the one server crash leaves the backup's
    // copy, so the run must stay live as well as safe.
    let view_service = VIEW_SERVICE;
    let primary = NodeId(1);
    let crash = |node| NemesisAction::Crash { node, tear: true };
    let restart = |node| NemesisAction::Restart { node };
    let script = vec![
        (millis(5), crash(view_service)),
        (millis(12), restart(view_service)),
        (millis(50), crash(view_service)),
        (millis(60), restart(view_service)),
        (millis(150), crash(primary)),
        (millis(170), crash(view_service)),
        (millis(200), restart(view_service)),
        (millis(260), crash(view_service)),
        (millis(262), restart(view_service)),
        (millis(320), crash(view_service)),
        (millis(330), restart(view_service)),
        (millis(400), restart(primary)),
    ];
    for seed in 1..=20 {
        let outcome = run_scripted(
            PbVariant::Correct,
            scripted_config(seed, "drop,duplicate,reorder,torn-write"),
            script.clone(),
        );
        assert!(
            outcome.findings.is_empty(),
            "seed {seed}: {:?}",
            outcome.findings
        );
        assert_eq!(outcome.observed.view_service_crashes, 5, "seed {seed}");
        assert!(
            outcome.observed.view_number_max >= 3,
            "seed {seed}: no failover"
        );
        assert!(
            outcome.report.outcomes.ok > 600,
            "seed {seed}: {:?}",
            outcome.report.outcomes
        );
    }
}

#[test]
fn a_failover_keeps_every_acknowledged_append_exactly_once() {
    // Append-heavy, with lost and duplicated messages (so clients retry), and the primary
    // crashing mid-run: every acknowledged append must survive in the promoted backup, and
    // no retried append may apply twice (the workload's unique tokens would repeat).
    let script = vec![
        (
            millis(120),
            NemesisAction::Crash {
                node: NodeId(1),
                tear: false,
            },
        ),
        (millis(400), NemesisAction::Restart { node: NodeId(1) }),
    ];
    for seed in 1..=30 {
        let mut config = scripted_config(seed, "drop,duplicate");
        config.workload.append_weight = 6;
        config.workload.get_weight = 3;
        config.workload.put_weight = 0;
        config.workload.delete_weight = 0;
        let outcome = run_scripted(PbVariant::Correct, config, script.clone());
        assert!(
            outcome.findings.is_empty(),
            "seed {seed}: {:?}",
            outcome.findings
        );
        assert!(
            outcome.observed.view_number_max >= 3,
            "seed {seed}: no failover"
        );
    }
}

#[test]
fn a_deposed_primary_is_refused_by_its_old_backup() {
    for seed in 1..=20 {
        let outcome = run_scripted(
            PbVariant::Correct,
            scripted_config(seed, "none"),
            depose_the_first_primary(),
        );
        assert!(
            outcome.findings.is_empty(),
            "seed {seed}: {:?}",
            outcome.findings
        );
        assert!(
            outcome.observed.view_number_max >= 3,
            "seed {seed}: n1 was never deposed"
        );
    }
}

/// Seeds of `variant` whose run has a safety finding, under a script.
fn caught_under_script(
    variant: PbVariant,
    seeds: std::ops::RangeInclusive<u64>,
    script: Vec<(Duration, NemesisAction)>,
) -> Vec<(u64, Vec<Finding>)> {
    seeds
        .filter_map(|seed| {
            let outcome = run_scripted(variant, scripted_config(seed, "none"), script.clone());
            let findings: Vec<Finding> = outcome.findings.into_iter().filter(is_safety).collect();
            (!findings.is_empty()).then_some((seed, findings))
        })
        .collect()
}

fn not_linearizable(findings: &[Finding]) -> bool {
    findings
        .iter()
        .any(|finding| matches!(finding, Finding::NotLinearizable(_)))
}

#[test]
fn a_primary_that_replies_before_its_backup_acknowledges_is_caught() {
    // A deposed primary answers reads from its stale store at once.
    let caught = caught_under_script(
        PbVariant::ReplyBeforeBackupAck,
        1..=20,
        depose_the_first_primary(),
    );
    assert!(
        caught.len() >= 10,
        "only {} of 20 seeds caught it",
        caught.len()
    );
    assert!(
        caught
            .iter()
            .all(|(_, findings)| not_linearizable(findings)),
        "{caught:?}"
    );
    // Random faults find it too, by the history check alone.
    let random = sweep(
        PbVariant::ReplyBeforeBackupAck,
        1..=60,
        FAULTS_WITHOUT_CRASHES,
        Watch::HistoryOnly,
        |_, outcome| not_linearizable(&outcome.findings),
    );
    let caught = random.iter().filter(|caught| **caught).count();
    assert!(caught >= 5, "only {caught} of 60 random seeds caught it");
}

#[test]
fn a_backup_that_accepts_any_primary_lets_a_deposed_primary_read_stale_data() {
    let caught = caught_under_script(
        PbVariant::BackupAcceptsAnyPrimary,
        1..=20,
        depose_the_first_primary(),
    );
    assert!(
        caught.len() >= 10,
        "only {} of 20 seeds caught it",
        caught.len()
    );
    assert!(
        caught
            .iter()
            .all(|(_, findings)| not_linearizable(findings)),
        "{caught:?}"
    );
}

#[test]
fn a_view_service_that_skips_the_acknowledgement_is_caught_by_the_view_history() {
    let findings: Vec<Vec<Finding>> = sweep(
        PbVariant::ViewServiceSkipsAck,
        1..=40,
        "all",
        Watch::Invariants,
        |_, outcome| outcome.findings,
    );
    let caught = findings
        .iter()
        .filter(|findings| {
            findings.iter().any(|finding| {
                matches!(finding, Finding::Invariant(text) if text.contains("before the primary of view"))
            })
        })
        .count();
    assert!(caught >= 5, "only {caught} of 40 seeds caught it");
}

#[test]
fn a_view_service_that_forgets_its_views_in_a_crash_is_caught_by_the_invariants() {
    // The servers' own defences (a known view never goes back; a restarted server never
    // starts an empty store) mostly keep the history linearizable even so; the invariant
    // that no server knows a view newer than the view service's is what catches it.
    let findings: Vec<Vec<Finding>> = sweep(
        PbVariant::VolatileViewService,
        1..=30,
        "crash",
        Watch::Invariants,
        |_, outcome| outcome.findings,
    );
    let caught = findings
        .iter()
        .filter(|findings| {
            findings.iter().any(|finding| {
                matches!(finding, Finding::Invariant(text) if text.contains("but the view service is at"))
            })
        })
        .count();
    assert!(caught >= 10, "only {caught} of 30 seeds caught it");
}
