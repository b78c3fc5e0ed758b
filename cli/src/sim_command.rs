//! `synod sim`: sweeps seeds with a progress bar, summarizes, and leaves a replay command
//! and a trace for every failing seed.

// The replay of model-checker traces is `synod sim --replay`'s alone, so it is declared here
// (its file sits beside this one).
#[path = "replay.rs"]
mod replay;

use crate::registry::mvcc_sim::THINK_TIME_MAX;
use crate::registry::{Judged, Protocol, WorkloadKind};
use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use synod_check::etcd::to_etcd_jsonl_line;
use synod_check::history::write_jsonl;
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::simulation::RunReport;
use synod_sim::sweep::sweep;

/// Failing seeds whose trace and history are written to disk; more are only listed.
const FAILURE_FILES_MAX: usize = 5;

/// Failing seeds announced while the sweep runs; the summary lists the rest.
const FAILURE_LINES_MAX: usize = 10;

/// Arguments of `synod sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Protocol to simulate: `amo-kv` (one at-most-once server), `paxos-kv` (Multi-Paxos,
    /// 3 replicas), `raft-kv` (Raft, 3 replicas) or `pb-kv` (primary-backup: a view service
    /// and 3 servers).
    #[arg(long, default_value = "amo-kv")]
    protocol: String,
    /// Protocol variant: `correct`, or a deliberately broken one the checks must catch:
    /// amo-kv `no-dedup`, `reply-before-durable`; paxos-kv `forget-accepted-values`; raft-kv
    /// `figure8`, `half-ttl-leases` (a leader expiring leases at half their TTL; with the
    /// mvcc workload), `early-follower-read` (a follower answering a read before applying
    /// the leader's read index), `hint-blind-reads` (a leader whose lease reads miss writes
    /// a follower committed on its durable hint) and the read modes `lease-reads`,
    /// `log-reads`; pb-kv
    /// `reply-before-backup-ack`, `backup-accepts-any-primary`, `view-service-skips-ack`,
    /// `volatile-view-service`. An unknown name lists the protocol's variants.
    #[arg(long, default_value = "correct")]
    variant: String,
    /// What clients do: `mvcc` (the etcd-semantics MVCC machine: put, linearizable get,
    /// delete, cas, lease grant, put with a lease, keep-alive, revoke and expiry, judged by
    /// the etcd model with a store audit; the default for paxos-kv and raft-kv) or
    /// `session-kv` (get, put, append, delete on the session store; the only one for amo-kv
    /// and pb-kv).
    #[arg(long)]
    workload: Option<String>,
    /// Seeds to run, inclusive: `1..1000`, `1..=1000` or a single number.
    #[arg(long, default_value = "1..1000", conflicts_with = "seed")]
    seeds: String,
    /// Run exactly one seed (combine with --trace and --history to replay it).
    #[arg(long)]
    seed: Option<u64>,
    /// Faults to inject: `all`, `none`, or a list of drop, duplicate, reorder, partition,
    /// crash, torn-write, pause, clock.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: u32,
    /// Operations per client.
    #[arg(long, default_value_t = 40)]
    ops: u32,
    /// Distinct keys the workload touches.
    #[arg(long, default_value_t = 3)]
    keys: u32,
    /// Probability that a message is lost (with the drop fault).
    #[arg(long, default_value_t = 0.05)]
    drop_rate: f64,
    /// Probability that a message is delivered twice (with the duplicate fault).
    #[arg(long, default_value_t = 0.05)]
    duplicate_rate: f64,
    /// Probability that a message is held back and reordered (with the reorder fault).
    #[arg(long, default_value_t = 0.05)]
    reorder_rate: f64,
    /// Write the full event trace of the single --seed run to this file.
    #[arg(long, requires = "seed")]
    trace: Option<PathBuf>,
    /// Write the history of the single --seed run (JSON Lines) to this file.
    #[arg(long, requires = "seed")]
    history: Option<PathBuf>,
    /// Where failing seeds' traces and histories go.
    #[arg(long, default_value = "sim-failures")]
    failures_dir: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Replay a model checker's counterexample (`synod mc --trace-out FILE`) instead of
    /// sweeping seeds: its protocol, variant and configuration come from the file. Exit 1
    /// if the simulator finds the violation again.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["seeds", "seed"])]
    replay: Option<PathBuf>,
    /// With --replay: run the file's steps on this variant's nodes instead (e.g. `correct`,
    /// to see the same schedule pass); steps it does not enable, such as deliveries of
    /// messages its nodes never sent, are left out.
    #[arg(long, value_name = "VARIANT", requires = "replay")]
    replay_variant: Option<String>,
}

/// A validated plan: which protocol, which seeds, which configuration.
struct Plan {
    protocol: Protocol,
    workload: WorkloadKind,
    seeds: Vec<u64>,
    base: SimConfig,
}

fn parse_seeds(text: &str) -> anyhow::Result<Vec<u64>> {
    let parse = |part: &str| -> anyhow::Result<u64> {
        part.trim()
            .parse::<u64>()
            .with_context(|| format!("'{part}' is not a seed number in --seeds '{text}'"))
    };
    let (low, high) = if let Some((low, high)) = text.split_once("..=") {
        (parse(low)?, parse(high)?)
    } else if let Some((low, high)) = text.split_once("..") {
        (parse(low)?, parse(high)?)
    } else {
        let seed = parse(text)?;
        (seed, seed)
    };
    if low > high {
        bail!("--seeds '{text}' is empty: the first seed must not exceed the last");
    }
    Ok((low..=high).collect())
}

fn probability(name: &str, value: f64) -> anyhow::Result<f64> {
    if !(0.0..=1.0).contains(&value) {
        bail!("--{name} must be between 0 and 1, got {value}");
    }
    Ok(value)
}

fn plan(arguments: &SimArgs) -> anyhow::Result<Plan> {
    let protocol =
        Protocol::parse(&arguments.protocol, &arguments.variant).map_err(anyhow::Error::msg)?;
    let workload =
        WorkloadKind::parse(protocol, arguments.workload.as_deref()).map_err(anyhow::Error::msg)?;
    let seeds = match arguments.seed {
        Some(seed) => vec![seed],
        None => parse_seeds(&arguments.seeds)?,
    };
    let faults: FaultSet = arguments.faults.parse().map_err(anyhow::Error::msg)?;
    if arguments.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let mut base = SimConfig {
        nodes: protocol.nodes(),
        faults,
        ..SimConfig::default()
    };
    base.workload.clients = arguments.clients;
    base.workload.operations_per_client = arguments.ops;
    base.workload.keys = arguments.keys.max(1);
    base.network.drop_probability = probability("drop-rate", arguments.drop_rate)?;
    base.network.duplicate_probability = probability("duplicate-rate", arguments.duplicate_rate)?;
    base.network.reorder_probability = probability("reorder-rate", arguments.reorder_rate)?;
    if workload == WorkloadKind::Mvcc {
        // Runs long enough for leases whose keep-alives stop to expire while clients watch.
        base.workload.think_time_max = THINK_TIME_MAX;
    }
    Ok(Plan {
        protocol,
        workload,
        seeds,
        base,
    })
}

/// The one-line command that replays `seed` with a trace.
fn replay_command(arguments: &SimArgs, plan: &Plan, seed: u64, trace: &Path) -> String {
    format!(
        "synod sim --protocol {} --variant {} --workload {} --faults {} --clients {} --ops {} \
         --keys {} --drop-rate {} --duplicate-rate {} --reorder-rate {} --seed {seed} --trace {}",
        plan.protocol.name(),
        plan.protocol.variant_name(),
        plan.workload.name(),
        plan.base.faults,
        arguments.clients,
        arguments.ops,
        arguments.keys,
        arguments.drop_rate,
        arguments.duplicate_rate,
        arguments.reorder_rate,
        trace.display()
    )
}

/// Runs `synod sim`.
pub fn run(arguments: SimArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &arguments.replay {
        return replay::run(path, arguments.replay_variant.as_deref());
    }
    let plan = plan(&arguments)?;
    if let Some(seed) = arguments.seed {
        return run_single(&arguments, &plan, seed);
    }
    run_sweep(&arguments, &plan)
}

fn open_writer(path: &Path) -> anyhow::Result<Box<dyn Write>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Box::new(BufWriter::new(file)))
}

/// Writes the run's history; an MVCC run's with its etcd fields, so `synod check --model
/// etcd` reads it.
fn write_history(path: &Path, judged: &Judged) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = BufWriter::new(file);
    let written = match &judged.etcd_history {
        Some(events) => events
            .iter()
            .try_for_each(|event| writeln!(writer, "{}", to_etcd_jsonl_line(event))),
        None => write_jsonl(&mut writer, &judged.report.history),
    };
    written
        .and_then(|()| writer.flush())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn run_single(arguments: &SimArgs, plan: &Plan, seed: u64) -> anyhow::Result<ExitCode> {
    let trace = match &arguments.trace {
        Some(path) => Some(open_writer(path)?),
        None => None,
    };
    let config = SimConfig {
        seed,
        ..plan.base.clone()
    };
    let judged = plan.protocol.run(plan.workload, config, trace);
    let (report, findings) = (&judged.report, &judged.findings);
    if let Some(error) = &report.trace_error {
        bail!("writing the trace failed: {error}");
    }
    if let Some(path) = &arguments.history {
        write_history(path, &judged)?;
        println!("history: {}", path.display());
    }
    if let Some(path) = &arguments.trace {
        println!("trace: {}", path.display());
    }
    println!(
        "protocol {} (variant {}, workload {}), faults {}, seed {seed}",
        plan.protocol.name(),
        plan.protocol.variant_name(),
        plan.workload.name(),
        plan.base.faults
    );
    println!(
        "ops: ok {}, fail {}, info {}",
        report.outcomes.ok, report.outcomes.fail, report.outcomes.info
    );
    println!("faults injected: {}", describe_faults(report));
    if let Some(audit) = &judged.audit {
        print_audit(audit.acknowledged, audit.lost, audit.leases_expired);
    }
    for finding in findings {
        println!("{finding}");
    }
    println!("violations: {}", usize::from(!findings.is_empty()));
    print_speed(report.events, report.simulated, report.elapsed);
    println!("trace hash: {:016x}", report.trace_hash);
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_audit(acknowledged: u64, lost: u64, leases_expired: u64) {
    println!("acknowledged writes lost: {lost} of {acknowledged}");
    println!("leases expired: {leases_expired}");
}

fn describe_faults(report: &RunReport) -> String {
    if report.faults.is_empty() {
        return "none".to_string();
    }
    let parts: Vec<String> = report
        .faults
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    parts.join(", ")
}

fn print_speed(events: u64, simulated: Duration, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64().max(1e-9);
    println!(
        "speed: {events} events in {seconds:.2}s ({:.0} events/s), simulated {:.1}s ({:.0}x real time)",
        events as f64 / seconds,
        simulated.as_secs_f64(),
        simulated.as_secs_f64() / seconds
    );
}

/// What the sweep keeps of one seed.
struct SeedResult {
    seed: u64,
    judged: Judged,
}

fn run_sweep(arguments: &SimArgs, plan: &Plan) -> anyhow::Result<ExitCode> {
    let jobs = arguments
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
        .clamp(1, plan.seeds.len().max(1));
    println!(
        "simulating {} (variant {}, workload {}) over {} seeds with faults {} on {jobs} threads",
        plan.protocol.name(),
        plan.protocol.variant_name(),
        plan.workload.name(),
        plan.seeds.len(),
        plan.base.faults
    );
    let progress = ProgressBar::new(plan.seeds.len() as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds, {msg} [{elapsed_precise}, eta {eta}]",
        )
        .expect("a valid progress template"),
    );
    let violations = AtomicU64::new(0);
    let started = Instant::now();
    let run_seed = |seed| {
        let config = SimConfig {
            seed,
            ..plan.base.clone()
        };
        let mut judged = plan.protocol.run(plan.workload, config, None);
        // The summary needs only counts; a failing seed is run again to write its files.
        judged.report.history = Vec::new();
        judged.etcd_history = None;
        judged
    };
    let announce = |seed, judged: &Judged| {
        let findings = &judged.findings;
        let failed = if findings.is_empty() {
            violations.load(Ordering::Relaxed)
        } else {
            violations.fetch_add(1, Ordering::Relaxed) + 1
        };
        if !findings.is_empty() && failed <= FAILURE_LINES_MAX as u64 {
            progress.suspend(|| {
                let summary = findings[0].to_string();
                let first_line = summary.lines().next().unwrap_or_default();
                println!("seed {seed}: {first_line}");
            });
        }
        progress.set_message(format!("{failed} violations"));
        progress.inc(1);
    };
    let results: Vec<SeedResult> = sweep(&plan.seeds, jobs, run_seed, announce)
        .into_iter()
        .map(|(seed, judged)| SeedResult { seed, judged })
        .collect();
    progress.finish_and_clear();
    summarize(arguments, plan, &results, started.elapsed())
}

fn summarize(
    arguments: &SimArgs,
    plan: &Plan,
    results: &[SeedResult],
    elapsed: Duration,
) -> anyhow::Result<ExitCode> {
    let mut ok = 0;
    let mut fail = 0;
    let mut info = 0;
    let mut events = 0;
    let mut simulated = Duration::ZERO;
    let mut faults = std::collections::BTreeMap::new();
    let mut combined = synod_core::hash::StableHasher::new();
    let mut audits = None;
    for result in results {
        if let Some(audit) = &result.judged.audit {
            let (acknowledged, lost, expired) = audits.get_or_insert((0, 0, 0));
            *acknowledged += audit.acknowledged;
            *lost += audit.lost;
            *expired += audit.leases_expired;
        }
        ok += result.judged.report.outcomes.ok;
        fail += result.judged.report.outcomes.fail;
        info += result.judged.report.outcomes.info;
        events += result.judged.report.events;
        simulated += result.judged.report.simulated;
        for (name, count) in &result.judged.report.faults {
            *faults.entry(*name).or_insert(0u64) += count;
        }
        std::hash::Hasher::write_u64(&mut combined, result.judged.report.trace_hash);
    }
    let failing: Vec<&SeedResult> = results
        .iter()
        .filter(|result| !result.judged.findings.is_empty())
        .collect();
    println!("seeds run: {}", results.len());
    println!("ops: ok {ok}, fail {fail}, info {info}");
    let fault_text: Vec<String> = faults
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    println!(
        "faults injected: {}",
        if fault_text.is_empty() {
            "none".to_string()
        } else {
            fault_text.join(", ")
        }
    );
    if let Some((acknowledged, lost, expired)) = audits {
        print_audit(acknowledged, lost, expired);
    }
    println!("violations: {}", failing.len());
    print_speed(events, simulated, elapsed);
    println!(
        "combined trace hash: {:016x}",
        std::hash::Hasher::finish(&combined)
    );
    if failing.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    fs::create_dir_all(&arguments.failures_dir)
        .with_context(|| format!("cannot create {}", arguments.failures_dir.display()))?;
    for result in failing.iter().take(FAILURE_FILES_MAX) {
        let stem = format!(
            "{}-{}-seed-{}",
            plan.protocol.name(),
            plan.protocol.variant_name(),
            result.seed
        );
        let trace_path = arguments.failures_dir.join(format!("{stem}.trace"));
        let history_path = arguments.failures_dir.join(format!("{stem}.history.jsonl"));
        // Determinism makes the rerun identical; this time it writes the trace.
        let config = SimConfig {
            seed: result.seed,
            ..plan.base.clone()
        };
        let judged = plan
            .protocol
            .run(plan.workload, config, Some(open_writer(&trace_path)?));
        write_history(&history_path, &judged)?;
        println!("\nseed {} failed:", result.seed);
        for finding in &result.judged.findings {
            println!("  {finding}");
        }
        println!(
            "  replay: {}",
            replay_command(arguments, plan, result.seed, &trace_path)
        );
        println!("  trace: {}", trace_path.display());
        println!("  history: {}", history_path.display());
    }
    if failing.len() > FAILURE_FILES_MAX {
        let rest: Vec<String> = failing[FAILURE_FILES_MAX..]
            .iter()
            .map(|result| result.seed.to_string())
            .collect();
        println!("\nother failing seeds: {}", rest.join(" "));
    }
    Ok(ExitCode::from(1))
}
