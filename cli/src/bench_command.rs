//! `synod bench`: closed-loop load over the etcd v3 API, against any endpoints, a local etcd
//! cluster, or both side by side.
//!
//! The parts: [`workload`] (what is sent), [`driver`] (the closed loop over gRPC),
//! [`report`] (figures, text, JSON), [`plot`] (SVG) and [`cluster`] (what is loaded: given
//! endpoints, a local etcd, later a local Synod).

mod cluster;
mod connection;
mod driver;
mod plot;
mod report;
mod workload;

use anyhow::{Context, Result, bail};
use cluster::{EtcdLauncher, Launcher, SynodLauncher};
use driver::{Keys, Stop, Workload};
use report::{CpuPerOp, Ratios, Summary, group_digits};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use workload::{OpMix, key_size_min, parse_duration};

/// Arguments of `synod bench`.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Exit codes: 0 every measured request succeeded, 1 some failed (counted by kind in the report),
2 bad arguments, or a cluster could not be reached or started.

Examples:
  synod bench --endpoints http://127.0.0.1:2379 --op put --clients 64 --duration 10s
  synod bench --endpoints URL --op mix:put=50,get=40,txn=10 --plot latency.svg --json out.json
  synod bench --endpoints URL --compare-etcd --op get --clients 64   # same load on a local etcd
  synod bench --compare-etcd --op put --rounds 3     # local Synod vs local etcd, median of 3
  synod up   # in another terminal; then pass the endpoints it prints to --endpoints
  synod bench --local-etcd --op put --clients 256                    # etcd alone, 3 members
  synod bench --local-etcd --load 1000000 --clients 256              # write 1M keys, print RSS")]
pub struct BenchArgs {
    /// Client URLs of the server to load, comma-separated (`http://` is added when missing).
    /// Without it, the Synod side is a local three-member cluster started for the run.
    #[arg(long, value_delimiter = ',', conflicts_with = "local_etcd")]
    endpoints: Vec<String>,
    /// What to send: put, get (linearizable Range), get-serializable, txn (compare-and-put on
    /// one key), or a weighted mix such as mix:put=50,get=40,txn=10.
    #[arg(long, default_value = "put", conflicts_with = "load")]
    op: OpMix,
    /// Closed-loop clients; each keeps exactly one request outstanding.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    clients: u32,
    /// gRPC connections, opened round-robin over the endpoints. The clients share them out:
    /// with more connections than clients, a client sends on its connections in turn (as
    /// etcd's clients balance over endpoints), so one client with `--connections 3` reaches
    /// each member of a 3-member cluster in turn.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=VALUE_SIZE_MAX))]
    value_size: u32,
    /// Bytes per key (keys are `bench/` and a zero-padded number).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=KEY_SIZE_MAX))]
    key_size: u32,
    /// How many distinct keys requests choose from, uniformly.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    key_space: u64,
    /// How long to measure after the warmup (e.g. 10s, 500ms, 2m) [default: 10s].
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["ops", "load"])]
    duration: Option<Duration>,
    /// Measure this many requests (after the warmup) instead of a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "load")]
    ops: Option<u64>,
    /// Requests in this first period are sent but not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Instead of a workload, write keys 0..N once each as fast as the clients can (no warmup),
    /// then report throughput and, for clusters started here, each member's RSS.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    load: Option<u64>,
    /// Before measuring, write every key of the key space once (unmeasured), so reads find
    /// values.
    #[arg(long, conflicts_with = "load")]
    prefill: bool,
    /// Write an SVG of p50/p99 latency and throughput per time window.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write every figure (percentiles, windows, errors, ratios) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also start a local etcd cluster (from `$SYNOD_ETCD_BIN`, PATH, or
    /// scripts/get-etcd.sh's .tools/etcd), run the identical workload on it, and print the
    /// Synod/etcd ratios.
    #[arg(long)]
    compare_etcd: bool,
    /// With --compare-etcd, repeat the comparison this many times (fresh clusters each
    /// round, Synod and etcd alternating) and print the median ratios with their range: on
    /// a shared machine one round's ratio can be off by 10 to 20%.
    #[arg(long, default_value_t = 1, requires = "compare_etcd", value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// Load only a local etcd cluster started for the run (no Synod side).
    #[arg(long, conflicts_with = "compare_etcd")]
    local_etcd: bool,
    /// Members of the local etcd cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    etcd_members: u32,
    /// Seeds the choice of keys, values and operations (the same for every target).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A request unanswered after this long counts as a `timeout` error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    request_timeout: Duration,
}

/// etcd refuses requests above 1.5 MiB by default.
const VALUE_SIZE_MAX: i64 = 1_500_000;
/// etcd's default key size limit is far larger; keys this long already make no sense here.
const KEY_SIZE_MAX: i64 = 4096;
/// The measured period when neither `--duration`, `--ops` nor `--load` is given.
const DURATION_DEFAULT: Duration = Duration::from_secs(10);
/// Runs longer than this would overflow nothing, but they are not what this tool is for.
const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Clients of the unmeasured prefill.
const PREFILL_CLIENTS: usize = 64;

/// One system to load and what to call it in the report.
struct Target {
    label: String,
    launcher: Box<dyn Launcher>,
}

/// Runs the benchmark.
pub fn run(arguments: BenchArgs) -> Result<ExitCode> {
    let workload = workload_of(&arguments)?;
    let targets = targets_of(&arguments)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    println!("{}", describe(&workload, &arguments));

    let mut summaries = Vec::new();
    let mut rounds: Vec<Vec<Summary>> = Vec::new();
    'rounds: for round in 0..arguments.rounds {
        if arguments.rounds > 1 {
            println!("round {} of {}", round + 1, arguments.rounds);
        }
        rounds.push(Vec::new());
        for target in &targets {
            let cluster = target
                .launcher
                .start()
                .with_context(|| format!("cannot start or reach the {} cluster", target.label))?;
            let channels =
                runtime.block_on(driver::connect(&cluster.endpoints, workload.connections))?;
            if arguments.prefill {
                let prefill = Workload {
                    keys: Keys::EachOnce {
                        count: arguments.key_space,
                    },
                    stop: Stop::KeysExhausted,
                    warmup: Duration::ZERO,
                    clients: PREFILL_CLIENTS.max(workload.connections),
                    ..workload.clone()
                };
                let record = runtime.block_on(driver::run(&channels, &prefill, "prefill"))?;
                let failed: u64 = record.errors.values().map(|tally| tally.count).sum();
                if failed > 0 {
                    bail!(
                        "{failed} of the prefill's puts to the {} cluster failed",
                        target.label
                    );
                }
            }
            let members_before = cluster.member_cpu_micros();
            let client_before = cluster::cpu_micros("self");
            let record = runtime.block_on(driver::run(&channels, &workload, &target.label))?;
            let members_used = cluster
                .member_cpu_micros()
                .zip(members_before)
                .map(|(after, before)| after.saturating_sub(before));
            let client_used = cluster::cpu_micros("self")
                .zip(client_before)
                .map(|(after, before)| after.saturating_sub(before));
            let requests = record.completed_all;
            drop(channels);
            let mut summary = Summary::new(&target.label, &cluster.endpoints, record);
            summary.cpu = CpuPerOp::new(members_used, client_used, requests);
            summary.member_rss_bytes = cluster.member_rss_bytes();
            summary.member_data_bytes = cluster.member_data_bytes();
            print!("{}", summary.to_text());
            let interrupted = summary.interrupted;
            rounds[round as usize].push(summary.clone());
            summaries.push(summary);
            drop(cluster);
            if interrupted {
                break 'rounds;
            }
        }

        if let [synod, etcd] = &rounds[round as usize][..]
            && arguments.rounds > 1
            && let Some(ratios) = Ratios::new(synod, etcd)
        {
            print!("{}", ratios.to_text());
        }
    }

    let round_ratios: Vec<Ratios> = if arguments.compare_etcd {
        rounds
            .iter()
            .filter_map(|round| match round.as_slice() {
                [synod, etcd] => Ratios::new(synod, etcd),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    let ratios = Ratios::median(&round_ratios);
    if let Some(ratios) = &ratios {
        if round_ratios.len() > 1 {
            print!("{}", Ratios::rounds_text(&round_ratios));
            print!("median, {}", ratios.to_text());
        } else {
            print!("{}", ratios.to_text());
        }
    }
    if let Some(path) = &arguments.plot {
        let title = describe(&workload, &arguments);
        // The first round's runs: further rounds would only overlay the same curves.
        let first_round = rounds.first().map_or(&summaries[..], |round| &round[..]);
        std::fs::write(path, plot::svg(first_round, &title))
            .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    }
    if let Some(path) = &arguments.json {
        let document = serde_json::json!({
            "workload": workload_json(&workload, &arguments),
            "runs": summaries.iter().map(Summary::to_json).collect::<Vec<_>>(),
            "ratios": ratios.map(|ratios| ratios.to_json()),
            "round_ratios": round_ratios.iter().map(|ratios| ratios.to_json()).collect::<Vec<_>>(),
        });
        let text =
            serde_json::to_string_pretty(&document).context("cannot encode the JSON report")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write the JSON report to {}", path.display()))?;
    }
    let failed: u64 = summaries.iter().map(Summary::error_count).sum();
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks the arguments that clap cannot check alone and builds the workload.
fn workload_of(arguments: &BenchArgs) -> Result<Workload> {
    let clients = arguments.clients as usize;
    let connections = arguments.connections as usize;
    let key_size = arguments.key_size as usize;
    let distinct_keys = arguments.load.unwrap_or(arguments.key_space);
    if key_size < key_size_min(distinct_keys) {
        bail!(
            "--key-size {key_size} is too short for {distinct_keys} distinct keys; use at least {}",
            key_size_min(distinct_keys)
        );
    }
    let duration = arguments.duration.unwrap_or(DURATION_DEFAULT);
    if duration.is_zero() || duration > DURATION_MAX {
        bail!(
            "--duration must be above zero and at most {} hours",
            DURATION_MAX.as_secs() / 3600
        );
    }
    if arguments.warmup > DURATION_MAX {
        bail!(
            "--warmup must be at most {} hours",
            DURATION_MAX.as_secs() / 3600
        );
    }
    if arguments.request_timeout.is_zero() {
        bail!("--request-timeout must be above zero");
    }
    let (keys, stop, warmup) = match (arguments.load, arguments.ops) {
        (Some(count), _) => (
            Keys::EachOnce { count },
            Stop::KeysExhausted,
            Duration::ZERO,
        ),
        (None, Some(ops)) => (
            Keys::Random {
                space: arguments.key_space,
            },
            Stop::Ops(ops),
            arguments.warmup,
        ),
        (None, None) => (
            Keys::Random {
                space: arguments.key_space,
            },
            Stop::After(duration),
            arguments.warmup,
        ),
    };
    Ok(Workload {
        mix: arguments.op.clone(),
        clients,
        connections,
        value_size: arguments.value_size as usize,
        key_size,
        keys,
        stop,
        warmup,
        seed: arguments.seed,
        request_timeout: arguments.request_timeout,
    })
}

/// The systems to load, in order: Synod (or the given endpoints) first, then etcd.
fn targets_of(arguments: &BenchArgs) -> Result<Vec<Target>> {
    let endpoints = normalize_endpoints(&arguments.endpoints)?;
    let etcd = || -> Result<Target> {
        let binary = cluster::find_etcd()?;
        let members = arguments.etcd_members as usize;
        Ok(Target {
            label: "etcd".to_string(),
            launcher: Box::new(EtcdLauncher { binary, members }),
        })
    };
    let synod_launcher = if endpoints.is_empty() {
        SynodLauncher::Local
    } else {
        SynodLauncher::Endpoints(endpoints)
    };
    if arguments.local_etcd {
        return Ok(vec![etcd()?]);
    }
    if arguments.compare_etcd {
        let etcd = etcd()?;
        return Ok(vec![
            Target {
                label: "synod".to_string(),
                launcher: Box::new(synod_launcher),
            },
            etcd,
        ]);
    }
    let label = match synod_launcher {
        SynodLauncher::Endpoints(_) => "server",
        SynodLauncher::Local => "synod",
    };
    Ok(vec![Target {
        label: label.to_string(),
        launcher: Box::new(synod_launcher),
    }])
}

/// Adds `http://` where missing and checks that each URL parses.
fn normalize_endpoints(endpoints: &[String]) -> Result<Vec<String>> {
    endpoints
        .iter()
        .map(|endpoint| endpoint.trim())
        .filter(|endpoint| !endpoint.is_empty())
        .map(|endpoint| {
            let url = if endpoint.contains("://") {
                endpoint.to_string()
            } else {
                format!("http://{endpoint}")
            };
            tonic::transport::Endpoint::from_shared(url.clone()).map_err(|_| {
                anyhow::anyhow!(
                    "--endpoints: '{endpoint}' is not a URL; use e.g. http://127.0.0.1:2379"
                )
            })?;
            Ok(url)
        })
        .collect()
}

fn describe(workload: &Workload, arguments: &BenchArgs) -> String {
    let what = match (workload.keys, workload.stop) {
        (Keys::EachOnce { count }, _) => format!("load {} keys", group_digits(count)),
        (Keys::Random { space }, Stop::Ops(ops)) => format!(
            "{}, {} ops over a key space of {} after {:?} warmup",
            workload.mix,
            group_digits(ops),
            group_digits(space),
            workload.warmup
        ),
        (Keys::Random { space }, _) => format!(
            "{}, {:?} over a key space of {} after {:?} warmup",
            workload.mix,
            arguments.duration.unwrap_or(DURATION_DEFAULT),
            group_digits(space),
            workload.warmup
        ),
    };
    format!(
        "synod bench: {what}; {} clients over {} connections; {} B keys, {} B values{}",
        workload.clients,
        workload.connections,
        workload.key_size,
        workload.value_size,
        if arguments.prefill { "; prefilled" } else { "" }
    )
}

fn workload_json(workload: &Workload, arguments: &BenchArgs) -> serde_json::Value {
    serde_json::json!({
        "op": workload.mix.to_string(),
        "clients": workload.clients,
        "connections": workload.connections,
        "value_size": workload.value_size,
        "key_size": workload.key_size,
        "key_space": arguments.key_space,
        "load": arguments.load,
        "ops": arguments.ops,
        "duration_s": match workload.stop {
            Stop::After(duration) => Some(duration.as_secs_f64()),
            _ => None,
        },
        "warmup_s": workload.warmup.as_secs_f64(),
        "prefill": arguments.prefill,
        "seed": workload.seed,
        "etcd_members": (arguments.compare_etcd || arguments.local_etcd).then_some(arguments.etcd_members),
    })
}
