//! The simulator hunting the at-most-once KV: determinism, the correct server under every
//! fault, and the broken variants caught by the history check.

use std::collections::BTreeSet;
use std::time::Duration;
use synod_check::history::EventKind;
use synod_check::kv::Budget;
use synod_core::node::NodeId;
use synod_protocols::rpc::{AmoClientConfig, AmoKvClient, AmoKvServer, AmoVariant};
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::simulation::{NemesisAction, RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

fn simulation(variant: AmoVariant, config: SimConfig) -> Simulation<AmoKvClient, KvWorkload> {
    let clients = config.workload.clients as usize;
    let workload = KvWorkload::new(config.workload.clone());
    let mut simulation = Simulation::new(
        config,
        Box::new(move |_| AmoKvServer::new(variant)),
        |_, members| AmoKvClient::new(members[0], AmoClientConfig::default()),
        workload,
    );
    simulation.add_invariant(Box::new(move |nodes| {
        nodes
            .running()
            .try_for_each(|(_, server)| server.check_session_bound(clients))
    }));
    simulation
}

fn run(variant: AmoVariant, config: SimConfig) -> (RunReport, Vec<Finding>) {
    let report = simulation(variant, config).run();
    let findings = judge_kv_run(&report, Budget::default());
    (report, findings)
}

fn config(seed: u64, faults: FaultSet) -> SimConfig {
    SimConfig {
        seed,
        faults,
        ..SimConfig::default()
    }
}

/// Runs `seeds` on two threads (the machine has two cores) and returns the failures.
fn sweep(
    variant: AmoVariant,
    seeds: std::ops::RangeInclusive<u64>,
    faults: FaultSet,
) -> Vec<(u64, Vec<Finding>)> {
    let seeds: Vec<u64> = seeds.collect();
    let run_seed = |seed| run(variant, config(seed, faults.clone())).1;
    synod_sim::sweep::sweep(&seeds, 2, run_seed, |_, _| {})
        .into_iter()
        .filter(|(_, findings)| !findings.is_empty())
        .collect()
}

#[test]
fn one_seed_replays_byte_for_byte() {
    let mut first_trace = Vec::new();
    let mut second_trace = Vec::new();
    let first = {
        let mut simulation = simulation(AmoVariant::Correct, config(42, FaultSet::all()));
        simulation.set_trace(Box::new(SharedBuffer(std::rc::Rc::new(
            std::cell::RefCell::new(Vec::new()),
        ))));
        simulation.run()
    };
    let second = simulation(AmoVariant::Correct, config(42, FaultSet::all())).run();
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.history, second.history);
    assert_eq!(first.events, second.events);
    // And the written traces are identical too.
    for buffer in [&mut first_trace, &mut second_trace] {
        let shared = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut simulation = simulation(AmoVariant::Correct, config(42, FaultSet::all()));
        simulation.set_trace(Box::new(SharedBuffer(shared.clone())));
        simulation.run();
        *buffer = shared.borrow().clone();
    }
    assert!(!first_trace.is_empty());
    assert_eq!(first_trace, second_trace);
    let text = String::from_utf8(first_trace).expect("utf-8 trace");
    assert!(
        text.lines()
            .last()
            .is_some_and(|line| line.contains(&format!("{:016x}", first.trace_hash)))
    );
    let other = simulation(AmoVariant::Correct, config(43, FaultSet::all())).run();
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "different seeds should differ"
    );
}

/// A `Write` into a shared buffer, so a test can read the trace back.
struct SharedBuffer(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_correct_server_passes_a_thousand_seeds_of_every_fault() {
    let failures = sweep(AmoVariant::Correct, 1..=1000, FaultSet::all());
    assert!(failures.is_empty(), "failing seeds: {failures:#?}");
}

#[test]
fn every_fault_kind_actually_strikes() {
    let mut seen = BTreeSet::new();
    let mut outcomes = (0, 0);
    for seed in 1..=20 {
        let (report, findings) = run(AmoVariant::Correct, config(seed, FaultSet::all()));
        assert!(findings.is_empty(), "seed {seed}: {findings:?}");
        seen.extend(report.faults.keys().copied());
        outcomes.0 += report.outcomes.ok;
        outcomes.1 += report.outcomes.info;
    }
    for kind in ["crash", "torn-write", "partition", "pause", "clock"] {
        assert!(seen.contains(kind), "{kind} never happened: {seen:?}");
    }
    assert!(
        outcomes.0 > 1000,
        "too few successful operations: {outcomes:?}"
    );
    assert!(outcomes.1 > 0, "faults never made an outcome unknown");
}

#[test]
fn the_server_without_dedup_is_caught_applying_an_append_twice() {
    let faults: FaultSet = "duplicate".parse().expect("valid fault list");
    let failures = sweep(AmoVariant::NoDedup, 1..=30, faults);
    assert!(
        failures.len() >= 10,
        "only {} of 30 seeds caught it",
        failures.len()
    );
    let (_, findings) = &failures[0];
    assert!(
        findings
            .iter()
            .any(|finding| matches!(finding, Finding::NotLinearizable(_))),
        "{findings:?}"
    );
    // Retries alone (lost replies, no duplication on the wire) catch it too.
    let drops: FaultSet = "drop".parse().expect("valid fault list");
    assert!(!sweep(AmoVariant::NoDedup, 1..=30, drops).is_empty());
}

#[test]
fn the_server_that_replies_before_syncing_loses_acknowledged_writes() {
    let crashes: FaultSet = "crash".parse().expect("valid fault list");
    let failures = sweep(AmoVariant::ReplyBeforeDurable, 1..=60, crashes.clone());
    assert!(!failures.is_empty(), "no seed caught the early reply");
    // The same crashes leave the correct server linearizable.
    assert!(sweep(AmoVariant::Correct, 1..=60, crashes).is_empty());
}

#[test]
fn a_scripted_torn_crash_recovers_every_synced_record() {
    let mut config = config(5, "torn-write".parse().expect("valid fault list"));
    config.workload.append_weight = 1;
    config.workload.get_weight = 1;
    config.workload.put_weight = 0;
    config.workload.delete_weight = 0;
    let mut simulation = simulation(AmoVariant::Correct, config);
    let node = NodeId(0);
    let mut script = Vec::new();
    for step in 1..=8u64 {
        let at = Duration::from_millis(7 * step);
        script.push((at, NemesisAction::Crash { node, tear: true }));
        script.push((
            at + Duration::from_millis(3),
            NemesisAction::Restart { node },
        ));
    }
    simulation.script_nemesis(script);
    let report = simulation.run();
    assert_eq!(report.faults.get("crash"), Some(&8));
    assert!(
        report.faults.get("torn-write").copied().unwrap_or(0) >= 1,
        "{:?}",
        report.faults
    );
    let findings = judge_kv_run(&report, Budget::default());
    assert!(findings.is_empty(), "{findings:?}");
}

#[test]
fn a_long_workload_keeps_the_session_table_bounded() {
    // The invariant hook checks the bound after every event; 20,000 operations give the
    // table every chance to grow.
    let mut config = config(9, FaultSet::all());
    config.workload.clients = 4;
    config.workload.operations_per_client = 5_000;
    config.workload.keys = 50;
    let (report, findings) = run(AmoVariant::Correct, config);
    assert!(findings.is_empty(), "{findings:?}");
    assert!(report.outcomes.ok > 15_000, "{:?}", report.outcomes);
}

#[test]
fn every_operation_gets_exactly_one_completion() {
    let (report, _) = run(AmoVariant::Correct, config(11, FaultSet::all()));
    let mut open = BTreeSet::new();
    let mut last_time = 0;
    for event in &report.history {
        assert!(event.time >= last_time, "history out of time order");
        last_time = event.time;
        if event.kind == EventKind::Invoke {
            assert!(open.insert(event.process), "two invokes outstanding");
        } else {
            assert!(open.remove(&event.process), "completion without invoke");
        }
    }
    assert!(open.is_empty(), "the run ended with operations outstanding");
    assert_eq!(report.history.len(), 2 * 5 * 40);
}
