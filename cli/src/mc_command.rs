//! `synod mc`: model-checks a protocol model and prints states/s, unique states, goals, the
//! verdict and, on a violation, the minimized counterexample as a numbered trace.

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Duration;
use synod_sim::model_checker::checker::{Checker, Progress, Strategy, THREADS_MAX, Verdict};
use synod_sim::model_checker::two_phase_commit::{
    RESOURCE_MANAGERS_MAX, TwoPhaseCommit, TwoPhaseVariant,
};

/// How often the progress line redraws.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Arguments of `synod mc`.
#[derive(Args, Debug)]
pub struct McArgs {
    /// Model to check: `2pc` (two-phase commit).
    #[arg(long, default_value = "2pc")]
    model: String,
    /// Model variant: `correct`, or `commit-early` (a broken TM the checker must catch).
    #[arg(long, default_value = "correct")]
    variant: String,
    /// Resource managers (2pc).
    #[arg(long, default_value_t = 3)]
    rms: usize,
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
    if arguments.model != "2pc" {
        bail!("unknown --model {:?}; the models are: 2pc", arguments.model);
    }
    let variant = match arguments.variant.as_str() {
        "correct" => TwoPhaseVariant::Correct,
        "commit-early" => TwoPhaseVariant::CommitEarly,
        other => bail!("unknown --variant {other:?}; the variants are: correct, commit-early"),
    };
    if !(1..=RESOURCE_MANAGERS_MAX).contains(&arguments.rms) {
        bail!(
            "--rms must be 1 to {RESOURCE_MANAGERS_MAX}, not {}",
            arguments.rms
        );
    }
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
    let model = TwoPhaseCommit::with_variant(arguments.rms, variant);
    println!(
        "model: two-phase commit, {} resource managers, {} variant",
        arguments.rms, arguments.variant
    );

    let progress = ProgressBar::new_spinner();
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("the progress template is valid"),
    );
    progress.enable_steady_tick(PROGRESS_TICK);
    let mut checker =
        Checker::new(&model)
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
