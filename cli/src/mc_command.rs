//! `synod mc`: model-checks a protocol model and prints states/s, unique states, goals, the
//! verdict and, on a violation, the minimized counterexample as a numbered trace (and, with
//! `--trace-out`, as a trace file that `synod sim --replay` runs in the simulator).
//!
//! The cluster models are built here and nowhere else: [`paxos_model`] and [`pb_model`]
//! serve both `synod mc` and the replay of their trace files.

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::kv_state::{ReplicatedKvClient, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};
use synod_protocols::pb::invariants::{
    ObservedViews, check_backup_mirrors_primary, check_one_primary_per_view,
    check_views_come_from_the_view_service,
};
use synod_protocols::pb::{PbClient, PbClientConfig, PbNode, PbVariant};
use synod_sim::model_checker::checker::{
    Checker, Progress, Report, Strategy, THREADS_MAX, Verdict,
};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, NetworkSemantics, kv_history_linearizable,
};
use synod_sim::model_checker::model::Model;
use synod_sim::model_checker::trace_file::TraceFile;
use synod_sim::model_checker::two_phase_commit::{
    RESOURCE_MANAGERS_MAX, TwoPhaseCommit, TwoPhaseVariant,
};

/// How often the progress line redraws.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Arguments of `synod mc`.
#[derive(Args, Debug)]
pub struct McArgs {
    /// Model to check: `2pc` (two-phase commit), `paxos-kv` (the unmodified Multi-Paxos
    /// nodes: 3 replicas, a client that puts and one that reads, ballots up to round
    /// --rounds; try `--random 20000 --max-depth 200`), or `pb-kv` (primary-backup: the
    /// view service, 2 servers and a client that appends, the first 2 views; try `--bfs
    /// --max-depth 8` or `--random 5000 --max-depth 30`).
    #[arg(long, default_value = "2pc")]
    model: String,
    /// Model variant: `correct`, or a broken one the checker must catch (2pc:
    /// `commit-early`; paxos-kv: `forget-accepted-values`; pb-kv: `reply-before-backup-ack`,
    /// `view-service-skips-ack`, `volatile-view-service` (with --crashes 1),
    /// `backup-accepts-any-primary`).
    #[arg(long, default_value = "correct")]
    variant: String,
    /// Crashes allowed on a path (pb-kv), each followed by any number of steps.
    #[arg(long, default_value_t = 0)]
    crashes: u32,
    /// On a violation, write the minimized counterexample to this trace file (paxos-kv,
    /// pb-kv): `synod sim --replay FILE` runs it in the simulator.
    #[arg(long, value_name = "FILE")]
    trace_out: Option<PathBuf>,
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
            let model = TwoPhaseCommit::with_variant(arguments.rms, variant);
            let report = explore(&model, &arguments)?;
            if arguments.trace_out.is_some() {
                bail!(
                    "--trace-out is for the cluster models (paxos-kv, pb-kv), which the simulator can replay"
                );
            }
            Ok(exit_code(&report))
        }
        "paxos-kv" => {
            let variant = parse_paxos_variant(&arguments.variant)?;
            println!(
                "model: Multi-Paxos, 3 replicas, 2 clients, ballot rounds up to {}, {} variant",
                arguments.rounds, arguments.variant
            );
            let config = BTreeMap::from([("rounds".to_string(), Value::from(arguments.rounds))]);
            let model = paxos_model(variant, arguments.rounds);
            let report = explore(&model, &arguments)?;
            finish(&model, &report, &arguments, config)
        }
        "pb-kv" => {
            let variant = parse_pb_variant(&arguments.variant)?;
            println!(
                "model: primary-backup, view service and 2 servers, 1 client, views up to {PB_VIEW_MAX}, at most {} crashes, {} variant",
                arguments.crashes, arguments.variant
            );
            let config = BTreeMap::from([("crashes".to_string(), Value::from(arguments.crashes))]);
            let model = pb_model(variant, arguments.crashes);
            let report = explore(&model, &arguments)?;
            finish(&model, &report, &arguments, config)
        }
        other => bail!("unknown --model {other:?}; the models are: 2pc, paxos-kv, pb-kv"),
    }
}

/// Parses a paxos-kv variant name.
pub(crate) fn parse_paxos_variant(name: &str) -> anyhow::Result<PaxosVariant> {
    PaxosVariant::ALL
        .into_iter()
        .find(|variant| variant.name() == name)
        .with_context(|| {
            let names: Vec<&str> = PaxosVariant::ALL
                .iter()
                .map(|variant| variant.name())
                .collect();
            format!(
                "unknown --variant {name:?}; the variants are: {}",
                names.join(", ")
            )
        })
}

/// Parses a pb-kv variant name.
pub(crate) fn parse_pb_variant(name: &str) -> anyhow::Result<PbVariant> {
    PbVariant::ALL
        .into_iter()
        .find(|variant| variant.name() == name)
        .with_context(|| {
            let names: Vec<&str> = PbVariant::ALL
                .iter()
                .map(|variant| variant.name())
                .collect();
            format!(
                "unknown --variant {name:?}; the variants are: {}",
                names.join(", ")
            )
        })
}

/// Exit code 1 on a violation, else 0.
fn exit_code<M: Model>(report: &Report<M>) -> ExitCode {
    match report.verdict() {
        Verdict::Violation => ExitCode::from(1),
        Verdict::Verified | Verdict::Inconclusive => ExitCode::SUCCESS,
    }
}

/// Writes the counterexample's trace file if asked to, and picks the exit code.
fn finish<M: Model>(
    model: &M,
    report: &Report<M>,
    arguments: &McArgs,
    config: BTreeMap<String, Value>,
) -> anyhow::Result<ExitCode> {
    if let (Some(path), Some(counterexample)) = (&arguments.trace_out, &report.violation) {
        TraceFile::from_path(
            model,
            &counterexample.path,
            &arguments.model,
            &arguments.variant,
            config,
            &counterexample.property,
        )
        .write(path)?;
        println!(
            "trace file: {} (replay: synod sim --replay {})",
            path.display(),
            path.display()
        );
    }
    Ok(exit_code(report))
}

/// Multi-Paxos replicating the key-value state machine, as the checker explores it.
pub(crate) type KvPaxos = PaxosNode<SessionKv>;
/// Its client.
pub(crate) type KvPaxosClient = ReplicatedKvClient<KvPaxos>;

/// Replicas in the paxos-kv model.
pub(crate) const PAXOS_REPLICAS: u32 = 3;

/// The paxos-kv model's scripts: client 0 puts, client 1 reads.
pub(crate) fn paxos_scripts() -> Vec<Vec<KvCommand>> {
    let key = "k".to_string();
    let put = KvCommand::Put {
        key: key.clone(),
        value: "a".to_string(),
    };
    vec![vec![put], vec![KvCommand::Get { key }]]
}

/// Client `index` of the paxos-kv model (it first tries replica `index`).
pub(crate) fn paxos_client(index: u32) -> KvPaxosClient {
    KvPaxosClient::new(NodeId(index), Default::default())
}

/// Three unmodified Multi-Paxos replicas and two clients (one puts, one reads) over FIFO
/// channels; agreement and linearizability in every state; ballots above `rounds` pruned.
pub(crate) fn paxos_model(variant: PaxosVariant, rounds: u64) -> ClusterModel<KvPaxosClient> {
    paxos_model_over(variant, rounds, NetworkSemantics::OrderedExactlyOnce)
}

/// [`paxos_model`] over any network semantics.
fn paxos_model_over(
    variant: PaxosVariant,
    rounds: u64,
    network: NetworkSemantics,
) -> ClusterModel<KvPaxosClient> {
    let mut model = ClusterModel::new(
        PAXOS_REPLICAS,
        move |_| KvPaxos::new(variant, PaxosConfig::default()),
        network,
    );
    for (index, script) in paxos_scripts().into_iter().enumerate() {
        model = model.client(paxos_client(index as u32), script);
    }
    model
        .invariant("replicas agree", |state: &ClusterState<KvPaxosClient>| {
            check_agreement(state.nodes.iter().filter_map(|slot| slot.state.as_ref())).is_ok()
        })
        .invariant(
            "the history is linearizable",
            |state: &ClusterState<KvPaxosClient>| kv_history_linearizable(&state.history),
        )
        .goal(
            "a replica executed a command",
            |state: &ClusterState<KvPaxosClient>| {
                state
                    .nodes
                    .iter()
                    .filter_map(|slot| slot.state.as_ref())
                    .any(|node| node.executed_below() > 0)
            },
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

/// Views beyond this number are not explored in the pb-kv model.
pub(crate) const PB_VIEW_MAX: u64 = 2;
/// Nodes in the pb-kv model: the view service and two servers.
pub(crate) const PB_NODES: u32 = 3;

/// The pb-kv model's script: one client appends once.
pub(crate) fn pb_scripts() -> Vec<Vec<KvCommand>> {
    vec![vec![KvCommand::Append {
        key: "k".to_string(),
        value: "a".to_string(),
    }]]
}

/// The running nodes of a primary-backup state.
fn pb_nodes<G>(state: &ClusterState<PbClient, G>) -> impl Iterator<Item = (NodeId, &PbNode)> {
    state
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| slot.state.as_ref().map(|node| (NodeId(index as u32), node)))
}

/// A primary-backup state with the view history as its ghost.
type PbState = ClusterState<PbClient, ObservedViews>;

/// The view service, two unmodified servers and a client that appends, over FIFO
/// channels, up to `crashes` crashes; one primary per view, views only from the view
/// service, the view history (a ghost along each path), the backup mirroring its primary
/// and linearizability in every state; views above [`PB_VIEW_MAX`] pruned.
pub(crate) fn pb_model(variant: PbVariant, crashes: u32) -> ClusterModel<PbClient, ObservedViews> {
    let mut model = ClusterModel::new(
        PB_NODES,
        move |id| PbNode::new(id, variant),
        NetworkSemantics::OrderedExactlyOnce,
    )
    .max_crashes(crashes);
    for script in pb_scripts() {
        model = model.client(PbClient::new(PbClientConfig::default()), script);
    }
    model
        .ghost(|ghost: &mut ObservedViews, state: &PbState| ghost.observe(pb_nodes(state)))
        .invariant("one primary per view", |state: &PbState| {
            check_one_primary_per_view(pb_nodes(state)).is_ok()
        })
        .invariant("views come from the view service", |state: &PbState| {
            check_views_come_from_the_view_service(pb_nodes(state)).is_ok()
        })
        .invariant("the view history holds", |state: &PbState| {
            state.ghost.violation().is_none()
        })
        .invariant("the backup mirrors its primary", |state: &PbState| {
            check_backup_mirrors_primary(pb_nodes(state)).is_ok()
        })
        .invariant("the history is linearizable", |state: &PbState| {
            kv_history_linearizable(&state.history)
        })
        .goal("an operation completed", |state: &PbState| {
            state.history.len() > 1
        })
        .prune(|state: &PbState| {
            pb_nodes(state)
                .filter_map(|(_, node)| node.as_view_service())
                .any(|view_service| view_service.view().number > PB_VIEW_MAX)
        })
}

/// Runs the checker on `model` as the arguments say and prints the report.
fn explore<M: Model>(model: &M, arguments: &McArgs) -> anyhow::Result<Report<M>>
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
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node may campaign up to round 3 in the Paxos tests.
    const ROUND_MAX: u64 = 3;

    #[test]
    fn the_forgetful_paxos_proposer_is_caught_by_random_walks_and_minimized() {
        let model = paxos_model(PaxosVariant::ForgetAcceptedValues, ROUND_MAX);
        let report = Checker::new(&model)
            .max_depth(200)
            .threads(2)
            .random_probes(1, 20_000);
        assert_eq!(report.verdict(), Verdict::Violation, "{report}");
        let counterexample = report.violation.as_ref().expect("a violation");
        // Two elections, a chosen command, and the second leader's no-op in its slot.
        assert!(counterexample.path.len() <= 45, "{}", counterexample.path);
    }

    #[test]
    fn correct_paxos_holds_on_every_walk_and_executes_commands() {
        let model = paxos_model(PaxosVariant::Correct, ROUND_MAX);
        let report = Checker::new(&model)
            .max_depth(200)
            .threads(2)
            .random_probes(1, 5_000);
        assert_ne!(report.verdict(), Verdict::Violation, "{report}");
        // Walks rarely keep one leader long enough for both clients to finish (every timer
        // may fire at any step), but they must get a command chosen and executed.
        assert!(
            report.goals[0].example.is_some(),
            "nothing was ever executed: {report}"
        );
    }

    #[test]
    fn correct_paxos_holds_in_every_state_up_to_depth_seven_over_a_redelivering_network() {
        let model = paxos_model_over(
            PaxosVariant::Correct,
            ROUND_MAX,
            NetworkSemantics::Redeliverable,
        );
        let report = Checker::new(&model).max_depth(7).threads(2).bfs();
        assert_ne!(report.verdict(), Verdict::Violation, "{report}");
        assert!(report.unique_states > 1_000, "{report}");
    }

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
