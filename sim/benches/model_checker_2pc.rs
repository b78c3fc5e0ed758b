//! Our model checker against Stateright 0.31 on two-phase commit, depth first, side by side.
//!
//! ```sh
//! cargo bench -p synod-sim --bench model_checker_2pc -- --rms 7,8,9 --threads 2
//! ```
//!
//! Each row runs in a child process of this program so its peak memory (`VmHWM` in
//! `/proc/self/status`, read by the child when its search is done) is its own. Three
//! checkers run per resource-manager count:
//!
//! - `stateright`: Stateright's DFS on the model of its `examples/2pc.rs`, written here
//!   against its public API: a state of a `Vec` of RM states, a `Vec<bool>` and a
//!   `BTreeSet` of messages.
//! - `ours, same state`: our DFS on exactly that state type and transition code (one
//!   struct implements both crates' `Model` traits), so the difference is the checker's.
//! - `ours, packed state`: our DFS on [`TwoPhaseCommit`], the same transition system with
//!   a bit-packed state, as a protocol author using our checker would write it.
//!
//! Matching unique-state counts show all three explore the same graph.

use std::collections::BTreeSet;
use std::process::{Command, ExitCode};
use std::time::Instant;
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::model::{Model as OurModel, Property as OurProperty};
use synod_sim::model_checker::two_phase_commit::TwoPhaseCommit;

/// A resource manager's state, as in the paper's `TwoPhase` specification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Rm {
    Working,
    Prepared,
    Committed,
    Aborted,
}

/// The transaction manager's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tm {
    Init,
    Committed,
    Aborted,
}

/// A message in the ever-growing message set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Message {
    Prepared(usize),
    Commit,
    Abort,
}

/// The state representation of Stateright's example.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    rms: Vec<Rm>,
    tm: Tm,
    tm_prepared: Vec<bool>,
    messages: BTreeSet<Message>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Action {
    TmReceivePrepared(usize),
    TmCommit,
    TmAbort,
    RmPrepare(usize),
    RmChooseToAbort(usize),
    RmReceiveCommit(usize),
    RmReceiveAbort(usize),
}

/// Two-phase commit with the example's state representation, for both checkers.
struct SameState {
    resource_managers: usize,
}

impl SameState {
    fn init(&self) -> State {
        State {
            rms: vec![Rm::Working; self.resource_managers],
            tm: Tm::Init,
            tm_prepared: vec![false; self.resource_managers],
            messages: BTreeSet::new(),
        }
    }

    fn enabled(&self, state: &State, actions: &mut Vec<Action>) {
        if state.tm == Tm::Init && state.tm_prepared.iter().all(|&prepared| prepared) {
            actions.push(Action::TmCommit);
        }
        if state.tm == Tm::Init {
            actions.push(Action::TmAbort);
        }
        for rm in 0..self.resource_managers {
            if state.tm == Tm::Init && state.messages.contains(&Message::Prepared(rm)) {
                actions.push(Action::TmReceivePrepared(rm));
            }
            if state.rms[rm] == Rm::Working {
                actions.push(Action::RmPrepare(rm));
                actions.push(Action::RmChooseToAbort(rm));
            }
            if state.messages.contains(&Message::Commit) {
                actions.push(Action::RmReceiveCommit(rm));
            }
            if state.messages.contains(&Message::Abort) {
                actions.push(Action::RmReceiveAbort(rm));
            }
        }
    }

    fn step(&self, state: &State, action: Action) -> State {
        let mut next = state.clone();
        match action {
            Action::TmReceivePrepared(rm) => next.tm_prepared[rm] = true,
            Action::TmCommit => {
                next.tm = Tm::Committed;
                next.messages.insert(Message::Commit);
            }
            Action::TmAbort => {
                next.tm = Tm::Aborted;
                next.messages.insert(Message::Abort);
            }
            Action::RmPrepare(rm) => {
                next.rms[rm] = Rm::Prepared;
                next.messages.insert(Message::Prepared(rm));
            }
            Action::RmChooseToAbort(rm) | Action::RmReceiveAbort(rm) => next.rms[rm] = Rm::Aborted,
            Action::RmReceiveCommit(rm) => next.rms[rm] = Rm::Committed,
        }
        next
    }
}

fn all_aborted(state: &State) -> bool {
    state.rms.iter().all(|&rm| rm == Rm::Aborted)
}

fn all_committed(state: &State) -> bool {
    state.rms.iter().all(|&rm| rm == Rm::Committed)
}

fn consistent(state: &State) -> bool {
    !(state.rms.contains(&Rm::Aborted) && state.rms.contains(&Rm::Committed))
}

impl stateright::Model for SameState {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.init()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        self.enabled(state, actions);
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        Some(self.step(state, action))
    }

    fn properties(&self) -> Vec<stateright::Property<Self>> {
        vec![
            stateright::Property::sometimes("abort agreement", |_, state| all_aborted(state)),
            stateright::Property::sometimes("commit agreement", |_, state| all_committed(state)),
            stateright::Property::always("consistent", |_, state| consistent(state)),
        ]
    }
}

impl OurModel for SameState {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.init()]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        self.enabled(state, actions);
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        Some(self.step(state, action))
    }

    fn properties(&self) -> Vec<OurProperty<Self>> {
        vec![
            OurProperty::sometimes("abort agreement", |_, state| all_aborted(state)),
            OurProperty::sometimes("commit agreement", |_, state| all_committed(state)),
            OurProperty::always("consistent", |_, state| consistent(state)),
        ]
    }
}

/// The checkers, in the order the table shows them.
const CHECKERS: [&str; 3] = ["stateright", "ours-same-state", "ours-packed-state"];

/// The peak resident set size of this process, in KiB.
fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// A `/proc/self/status` field in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs one checker and prints one machine-readable line.
fn child(checker: &str, resource_managers: usize, threads: usize) -> ExitCode {
    let started = Instant::now();
    let (unique, generated, verified) = match checker {
        "stateright" => {
            use stateright::{Checker as _, Model as _};
            let model = SameState { resource_managers };
            let checker = model.checker().threads(threads).spawn_dfs().join();
            let verified = checker.discoveries().len() == 2
                && !checker.discoveries().contains_key("consistent");
            (
                checker.unique_state_count() as u64,
                checker.state_count() as u64,
                verified,
            )
        }
        "ours-same-state" => {
            let model = SameState { resource_managers };
            let report = Checker::new(&model).threads(threads).dfs();
            let verified = report.verdict() == Verdict::Verified;
            (report.unique_states, report.states_generated, verified)
        }
        "ours-packed-state" => {
            let model = TwoPhaseCommit::new(resource_managers);
            let report = Checker::new(&model).threads(threads).dfs();
            let verified = report.verdict() == Verdict::Verified;
            (report.unique_states, report.states_generated, verified)
        }
        other => {
            eprintln!("unknown checker {other:?}");
            return ExitCode::from(2);
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "RESULT unique={unique} generated={generated} seconds={seconds:.3} peak_kib={} verified={verified}",
        peak_rss_kib()
    );
    ExitCode::SUCCESS
}

/// One child's figures.
struct Row {
    unique: u64,
    generated: u64,
    seconds: f64,
    peak_kib: u64,
    verified: bool,
}

fn run_child(checker: &str, resource_managers: usize, threads: usize) -> Result<Row, String> {
    let program = std::env::current_exe().map_err(|error| error.to_string())?;
    let output = Command::new(program)
        .args([
            "--child",
            checker,
            &resource_managers.to_string(),
            &threads.to_string(),
        ])
        .output()
        .map_err(|error| error.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .ok_or_else(|| {
            format!(
                "{checker}: no result; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let field = |name: &str| -> Result<&str, String> {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("{checker}: no {name} in {line:?}"))
    };
    let number = |name: &str| -> Result<f64, String> {
        field(name)?
            .parse::<f64>()
            .map_err(|error| format!("{name}: {error}"))
    };
    Ok(Row {
        unique: number("unique")? as u64,
        generated: number("generated")? as u64,
        seconds: number("seconds")?,
        peak_kib: number("peak_kib")? as u64,
        verified: field("verified")? == "true",
    })
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.first().map(String::as_str) == Some("--child") {
        let [_, checker, resource_managers, threads] = arguments.as_slice() else {
            eprintln!("usage: --child CHECKER RMS THREADS");
            return ExitCode::from(2);
        };
        let (Ok(resource_managers), Ok(threads)) = (resource_managers.parse(), threads.parse())
        else {
            eprintln!("RMS and THREADS are numbers");
            return ExitCode::from(2);
        };
        return child(checker, resource_managers, threads);
    }
    let mut rms_list = vec![7, 8];
    let mut threads = 2;
    let mut repeat = 1;
    let mut index = 0;
    while index < arguments.len() {
        let value = arguments.get(index + 1);
        match (arguments[index].as_str(), value) {
            ("--rms", Some(value)) => {
                rms_list = value
                    .split(',')
                    .filter_map(|item| item.trim().parse().ok())
                    .collect();
                index += 1;
            }
            ("--threads", Some(value)) => {
                threads = value.parse().unwrap_or(threads);
                index += 1;
            }
            ("--repeat", Some(value)) => {
                repeat = value.parse().unwrap_or(repeat);
                index += 1;
            }
            // `cargo bench` passes `--bench`; other harness flags mean nothing here.
            _ => {}
        }
        index += 1;
    }
    println!("two-phase commit, depth first, {threads} threads, best of {repeat}");
    println!(
        "| RMs | checker | states generated | unique states | time | peak RSS | time vs Stateright | verified |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &resource_managers in &rms_list {
        let mut stateright_seconds = None;
        for checker in CHECKERS {
            let mut best: Option<Row> = None;
            for _ in 0..repeat {
                match run_child(checker, resource_managers, threads) {
                    Ok(row) => {
                        if best.as_ref().is_none_or(|best| row.seconds < best.seconds) {
                            best = Some(row);
                        }
                    }
                    Err(error) => {
                        eprintln!("{error}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let Some(row) = best else { continue };
            if checker == "stateright" {
                stateright_seconds = Some(row.seconds);
            }
            let ratio = stateright_seconds
                .map(|baseline| format!("{:.2}x", row.seconds / baseline))
                .unwrap_or_default();
            println!(
                "| {resource_managers} | {checker} | {} | {} | {:.2} s | {:.1} MB | {ratio} | {} |",
                row.generated,
                row.unique,
                row.seconds,
                row.peak_kib as f64 / 1024.0,
                row.verified
            );
        }
    }
    ExitCode::SUCCESS
}
