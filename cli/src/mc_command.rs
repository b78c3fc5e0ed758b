//! `synod mc`: model-checks a protocol model and prints states/s, unique states, goals, the
//! verdict and, on a violation, the minimized counterexample as a numbered trace.

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Duration;
use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::kv_state::{ReplicatedKvClient, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};
use synod_sim::model_checker::checker::{
    Checker, Progress, Report, Strategy, THREADS_MAX, Verdict,
};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, NetworkSemantics, kv_history_linearizable,
};
use synod_sim::model_checker::model::Model;
use synod_sim::model_checker::two_phase_commit::{
    RESOURCE_MANAGERS_MAX, TwoPhaseCommit, TwoPhaseVariant,
};

/// How often the progress line redraws.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Arguments of `synod mc`.
#[derive(Args, Debug)]
pub struct McArgs {
    /// Model to check: `2pc` (two-phase commit), or `paxos-kv` (the unmodified Multi-Paxos
    /// nodes: 3 replicas, a client that puts and one that reads, ballots up to round
    /// --rounds; try `--random 20000 --max-depth 200`).
    #[arg(long, default_value = "2pc")]
    model: String,
    /// Model variant: `correct`, or a broken one the checker must catch (2pc:
    /// `commit-early`; paxos-kv: `forget-accepted-values`).
    #[arg(long, default_value = "correct")]
    variant: String,
    /// Resource managers (2pc).
    #[arg(long, default_value_t = 3)]
    rms: usize,
    /// Highest ballot round explored (paxos-kv): every node may campaign this many times.
    #[arg(long, default_value_t = 1)]
    rounds: u64,
    /// Breadth first: the first counterexample is a shortest one.
    #[arg(long, conflicts_with_all = ["dfs", "random"])]
    bfs: bool,
    /// Depth first (the default): the fastest way to exhaust a state space.
    #[arg(long, conflicts_with = "random")]
    dfs: bool,
    /// Run this many seeded random walks instead of an exhaustive search.
    #[arg(long, value_name = "PROBES")]
    random: Option<u64>,
    /// Seed of the random walks.
    #[arg(long, default_value_t = 1, requires = "random")]
    seed: u64,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Expand no state deeper than this (random walks: their length).
    #[arg(long)]
    max_depth: Option<usize>,
    /// Stop after about this many unique states.
    #[arg(long)]
    max_states: Option<u64>,
    /// Stop after this long: `30s`, `500ms`, `2m` or plain seconds.
    #[arg(long)]
    time_limit: Option<String>,
}

/// Parses `30s`, `500ms`, `2m` or a plain number of seconds.
fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, unit_seconds) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .with_context(|| format!("--time-limit {text:?} is not a duration like 30s or 500ms"))?;
    if !value.is_finite() || value <= 0.0 {
        bail!("--time-limit must be positive, not {text:?}");
    }
    Ok(Duration::from_secs_f64(value * unit_seconds))
}

/// Runs `synod mc`; exit code 0 if no invariant broke, 1 on a violation.
pub fn run(arguments: McArgs) -> anyhow::Result<ExitCode> {
    match arguments.model.as_str() {
        "2pc" => {
            let variant = match arguments.variant.as_str() {
                "correct" => TwoPhaseVariant::Correct,
                "commit-early" => TwoPhaseVariant::CommitEarly,
                other => {
                    bail!("unknown --variant {other:?}; the variants are: correct, commit-early")
                }
            };
            if !(1..=RESOURCE_MANAGERS_MAX).contains(&arguments.rms) {
                bail!(
                    "--rms must be 1 to {RESOURCE_MANAGERS_MAX}, not {}",
                    arguments.rms
                );
            }
            println!(
                "model: two-phase commit, {} resource managers, {} variant",
                arguments.rms, arguments.variant
            );
            explore(
                &TwoPhaseCommit::with_variant(arguments.rms, variant),
                &arguments,
            )
        }
        "paxos-kv" => {
            let variant = match arguments.variant.as_str() {
                "correct" => PaxosVariant::Correct,
                "forget-accepted-values" => PaxosVariant::ForgetAcceptedValues,
                other => bail!(
                    "unknown --variant {other:?}; the variants are: correct, forget-accepted-values"
                ),
            };
            println!(
                "model: Multi-Paxos, 3 replicas, 2 clients, ballot rounds up to {}, {} variant",
                arguments.rounds, arguments.variant
            );
            explore(&paxos_model(variant, arguments.rounds), &arguments)
        }
        other => bail!("unknown --model {other:?}; the models are: 2pc, paxos-kv"),
    }
}

/// Multi-Paxos replicating the key-value state machine, as the checker explores it.
type KvPaxos = PaxosNode<SessionKv>;
/// Its client.
type KvPaxosClient = ReplicatedKvClient<KvPaxos>;

/// Three unmodified Multi-Paxos replicas and two clients (one puts, one reads) over FIFO
/// channels; agreement and linearizability in every state; ballots above `rounds` pruned.
fn paxos_model(variant: PaxosVariant, rounds: u64) -> ClusterModel<KvPaxosClient> {
    let key = "k".to_string();
    let put = KvCommand::Put {
        key: key.clone(),
        value: "a".to_string(),
    };
    let client = |first_guess| KvPaxosClient::new(NodeId(first_guess), Default::default());
    ClusterModel::new(
        3,
        move |_| KvPaxos::new(variant, PaxosConfig::default()),
        NetworkSemantics::OrderedExactlyOnce,
    )
    .client(client(0), vec![put])
    .client(client(1), vec![KvCommand::Get { key }])
    .invariant("replicas agree", |state: &ClusterState<KvPaxosClient>| {
        check_agreement(state.nodes.iter().filter_map(|slot| slot.state.as_ref())).is_ok()
    })
    .invariant(
        "the history is linearizable",
        |state: &ClusterState<KvPaxosClient>| kv_history_linearizable(&state.history),
    )
    .goal(
        "every client is done",
        |state: &ClusterState<KvPaxosClient>| state.all_clients_done(),
    )
    .prune(move |state: &ClusterState<KvPaxosClient>| {
        state
            .nodes
            .iter()
            .filter_map(|slot| slot.state.as_ref())
            .any(|node| node.promised().round > rounds)
    })
}

/// Runs the checker on `model` as the arguments say and prints the report.
fn explore<M: Model>(model: &M, arguments: &McArgs) -> anyhow::Result<ExitCode>
where
    Report<M>: std::fmt::Display,
{
    if !(1..=THREADS_MAX).contains(&arguments.threads) {
        bail!(
            "--threads must be 1 to {THREADS_MAX}, not {}",
            arguments.threads
        );
    }
    let strategy = match (arguments.bfs, arguments.random) {
        (true, _) => Strategy::BreadthFirst,
        (false, Some(probes)) => Strategy::RandomProbes {
            seed: arguments.seed,
            probes,
        },
        (false, None) => Strategy::DepthFirst,
    };
    let time_limit = arguments
        .time_limit
        .as_deref()
        .map(parse_duration)
        .transpose()?;

    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("the progress template is valid"),
    );
    progress.enable_steady_tick(PROGRESS_TICK);
    let mut checker =
        Checker::new(model)
            .threads(arguments.threads)
            .on_progress(|snapshot: &Progress| {
                let seconds = snapshot.elapsed.as_secs_f64().max(1e-9);
                progress.set_message(format!(
                    "{} unique states ({:.0}/s), {} generated, depth {}",
                    snapshot.unique_states,
                    snapshot.unique_states as f64 / seconds,
                    snapshot.states_generated,
                    snapshot.max_depth
                ));
            });
    if let Some(depth) = arguments.max_depth {
        checker = checker.max_depth(depth);
    }
    if let Some(states) = arguments.max_states {
        checker = checker.max_states(states);
    }
    if let Some(limit) = time_limit {
        checker = checker.time_limit(limit);
    }
    let report = checker.run(strategy);
    progress.finish_and_clear();
    print!("{report}");
    Ok(match report.verdict() {
        Verdict::Violation => ExitCode::from(1),
        Verdict::Verified | Verdict::Inconclusive => ExitCode::SUCCESS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0").is_err());
    }
}
