//! The checker: strategies, limits, and the report.

use super::bfs;
use super::dfs;
use super::model::{Expectation, Model, Property};
use super::path::Path;
use super::probes;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A worker adds its counts to the shared ones, and looks at the limits and the stop flag,
/// once per this many generated states: often enough to stop within a millisecond or so,
/// rarely enough that the shared counters cost nothing. Limits on states may therefore be
/// overshot by up to this many per thread.
pub(crate) const FLUSH_INTERVAL_STATES: u64 = 4096;
/// How often the progress callback runs.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// More threads than this is surely a mistake (the machines here have 2 cores).
pub const THREADS_MAX: usize = 256;

/// How the state space is explored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Level by level: the first violation found has a shortest path. Parent pointers cost
    /// 16 bytes per unique state.
    BreadthFirst,
    /// Depth first with a visited set of fingerprints (8 bytes per unique state); threads
    /// share work by handing each other the shallowest unexplored states.
    DepthFirst,
    /// Independent random walks from an initial state, each up to the depth limit: finds
    /// deep bugs in spaces too large to exhaust. Walk `n` draws from `Rng::derive(seed, n)`,
    /// so a run is reproducible whatever the thread count.
    RandomProbes {
        /// Decides every walk.
        seed: u64,
        /// How many walks.
        probes: u64,
    },
}

impl fmt::Display for Strategy {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::BreadthFirst => write!(formatter, "breadth-first search"),
            Strategy::DepthFirst => write!(formatter, "depth-first search"),
            Strategy::RandomProbes { seed, probes } => {
                write!(formatter, "{probes} random walks (seed {seed})")
            }
        }
    }
}

/// A limit that ended a search before it was exhaustive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The unique-state limit.
    States,
    /// The time limit.
    Time,
}

/// A snapshot of a running search, handed to the progress callback.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// States generated so far.
    pub states_generated: u64,
    /// Unique states so far.
    pub unique_states: u64,
    /// The deepest state seen so far.
    pub max_depth: usize,
    /// Time since the search started.
    pub elapsed: Duration,
}

/// Called with progress a few times a second from a worker thread.
pub type ProgressCallback<'a> = Box<dyn Fn(&Progress) + Send + Sync + 'a>;

/// Configures and runs a search of a model.
///
/// ```
/// use synod_sim::model_checker::checker::Checker;
/// use synod_sim::model_checker::two_phase_commit::TwoPhaseCommit;
///
/// let report = Checker::new(&TwoPhaseCommit::new(3)).dfs();
/// assert_eq!(report.unique_states, 288);
/// assert!(report.violation.is_none());
/// assert!(report.goals.iter().all(|goal| goal.example.is_some()));
/// ```
pub struct Checker<'a, M: Model> {
    model: &'a M,
    threads: usize,
    max_depth: Option<usize>,
    max_states: Option<u64>,
    time_limit: Option<Duration>,
    minimize: bool,
    progress: Option<ProgressCallback<'a>>,
}

impl<'a, M: Model> Checker<'a, M> {
    /// A single-threaded search without limits that minimizes counterexamples.
    pub fn new(model: &'a M) -> Self {
        Checker {
            model,
            threads: 1,
            max_depth: None,
            max_states: None,
            time_limit: None,
            minimize: true,
            progress: None,
        }
    }

    /// Explores with `threads` threads (1 to [`THREADS_MAX`]).
    pub fn threads(mut self, threads: usize) -> Self {
        assert!(
            (1..=THREADS_MAX).contains(&threads),
            "threads must be in 1..={THREADS_MAX}"
        );
        self.threads = threads;
        self
    }

    /// States at this depth are checked but not expanded (random probes: the walk length).
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = Some(depth);
        self
    }

    /// Stops after about this many unique states (overshooting by at most
    /// 4,096 per thread).
    pub fn max_states(mut self, states: u64) -> Self {
        self.max_states = Some(states);
        self
    }

    /// Stops after about this long.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// Whether to shorten counterexamples by deleting actions (on by default).
    pub fn minimize(mut self, minimize: bool) -> Self {
        self.minimize = minimize;
        self
    }

    /// Calls `callback` with progress a few times a second.
    pub fn on_progress(mut self, callback: impl Fn(&Progress) + Send + Sync + 'a) -> Self {
        self.progress = Some(Box::new(callback));
        self
    }

    /// Explores breadth first.
    pub fn bfs(self) -> Report<M> {
        self.run(Strategy::BreadthFirst)
    }

    /// Explores depth first.
    pub fn dfs(self) -> Report<M> {
        self.run(Strategy::DepthFirst)
    }

    /// Runs `probes` seeded random walks.
    pub fn random_probes(self, seed: u64, probes: u64) -> Report<M> {
        self.run(Strategy::RandomProbes { seed, probes })
    }

    /// Explores with `strategy`.
    pub fn run(self, strategy: Strategy) -> Report<M> {
        let search = Search::new(
            self.model,
            self.threads,
            self.max_depth,
            self.max_states,
            self.time_limit,
            self.progress,
        );
        let found = match strategy {
            Strategy::BreadthFirst => bfs::explore(&search),
            Strategy::DepthFirst => dfs::explore(&search),
            Strategy::RandomProbes { seed, probes } => probes::explore(&search, seed, probes),
        };
        search.into_report(strategy, found, self.minimize)
    }
}

/// Where a path was recorded, in a form cheap to store while searching.
pub(crate) enum Trail {
    /// An index into the initial states, then one into each state's actions.
    Indices(Vec<u32>),
    /// The fingerprints along the path, initial state first.
    Fingerprints(Vec<u64>),
}

impl Trail {
    fn into_path<M: Model>(self, model: &M) -> Path<M> {
        match self {
            Trail::Indices(indices) => Path::from_indices(model, &indices),
            Trail::Fingerprints(fingerprints) => Path::from_fingerprints(model, &fingerprints),
        }
    }
}

/// What a strategy found.
pub(crate) struct Found {
    /// The broken invariant's index and a path to it.
    pub(crate) violation: Option<(usize, Trail)>,
    /// Per goal property index, a path to a state satisfying it.
    pub(crate) goals: Vec<(usize, Trail)>,
}

/// The state every strategy shares between its threads.
pub(crate) struct Search<'a, M: Model> {
    pub(crate) model: &'a M,
    pub(crate) threads: usize,
    pub(crate) max_depth: Option<usize>,
    max_states: Option<u64>,
    time_limit: Option<Duration>,
    properties: Vec<Property<M>>,
    goal_reached: Vec<AtomicBool>,
    goals_open: AtomicUsize,
    stop: AtomicBool,
    stopped_by: Mutex<Option<Limit>>,
    pub(crate) depth_bounded: AtomicBool,
    states_generated: AtomicU64,
    unique_states: AtomicU64,
    deepest: AtomicUsize,
    started: Instant,
    progress: Option<ProgressCallback<'a>>,
    last_progress: Mutex<Instant>,
}

/// The result of evaluating the properties on a new state.
pub(crate) enum Evaluation {
    /// Every invariant holds.
    Holds,
    /// The invariant with this index is broken.
    Broken(usize),
}

impl<'a, M: Model> Search<'a, M> {
    fn new(
        model: &'a M,
        threads: usize,
        max_depth: Option<usize>,
        max_states: Option<u64>,
        time_limit: Option<Duration>,
        progress: Option<ProgressCallback<'a>>,
    ) -> Self {
        let properties = model.properties();
        let goals = properties
            .iter()
            .filter(|property| property.expectation == Expectation::Sometimes)
            .count();
        let started = Instant::now();
        Search {
            model,
            threads,
            max_depth,
            max_states,
            time_limit,
            goal_reached: properties.iter().map(|_| AtomicBool::new(false)).collect(),
            goals_open: AtomicUsize::new(goals),
            properties,
            stop: AtomicBool::new(false),
            stopped_by: Mutex::new(None),
            depth_bounded: AtomicBool::new(false),
            states_generated: AtomicU64::new(0),
            unique_states: AtomicU64::new(0),
            deepest: AtomicUsize::new(0),
            started,
            progress,
            last_progress: Mutex::new(started),
        }
    }

    /// Evaluates every property on a state seen for the first time. A goal seen for the
    /// first time claims its flag and is returned in `goals` with `trail()`.
    pub(crate) fn evaluate(
        &self,
        state: &M::State,
        goals: &mut Vec<(usize, Trail)>,
        trail: impl Fn() -> Trail,
    ) -> Evaluation {
        let goals_open = self.goals_open.load(Ordering::Relaxed) > 0;
        for (index, property) in self.properties.iter().enumerate() {
            match property.expectation {
                Expectation::Always => {
                    if !(property.condition)(self.model, state) {
                        return Evaluation::Broken(index);
                    }
                }
                Expectation::Sometimes => {
                    if goals_open
                        && !self.goal_reached[index].load(Ordering::Relaxed)
                        && (property.condition)(self.model, state)
                        && !self.goal_reached[index].swap(true, Ordering::Relaxed)
                    {
                        self.goals_open.fetch_sub(1, Ordering::Relaxed);
                        goals.push((index, trail()));
                    }
                }
            }
        }
        Evaluation::Holds
    }

    /// Whether some thread asked every thread to stop.
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Asks every thread to stop (a violation was found, or a limit hit).
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Adds a worker's counts and checks the limits; true if the search should stop.
    pub(crate) fn flush(&self, generated: u64, unique: u64, depth: usize) -> bool {
        let generated_total = self
            .states_generated
            .fetch_add(generated, Ordering::Relaxed)
            + generated;
        let unique_total = self.unique_states.fetch_add(unique, Ordering::Relaxed) + unique;
        self.deepest.fetch_max(depth, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        if let Some(states) = self.max_states
            && unique_total >= states
        {
            self.hit(Limit::States);
        }
        if let Some(limit) = self.time_limit
            && elapsed >= limit
        {
            self.hit(Limit::Time);
        }
        if let Some(progress) = &self.progress
            && let Ok(mut last) = self.last_progress.try_lock()
            && last.elapsed() >= PROGRESS_INTERVAL
        {
            *last = Instant::now();
            progress(&Progress {
                states_generated: generated_total,
                unique_states: unique_total,
                max_depth: self.deepest.load(Ordering::Relaxed),
                elapsed,
            });
        }
        self.stopped()
    }

    fn hit(&self, limit: Limit) {
        let mut stopped_by = self
            .stopped_by
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stopped_by.get_or_insert(limit);
        self.request_stop();
    }

    fn into_report(self, strategy: Strategy, found: Found, minimize: bool) -> Report<M> {
        let model = self.model;
        let elapsed = self.started.elapsed();
        let violation = found.violation.map(|(index, trail)| {
            let property = &self.properties[index];
            let path = trail.into_path(model);
            let original_length = path.len();
            let path = if minimize {
                path.minimize(model, property)
            } else {
                path
            };
            Counterexample {
                property: property.name.clone(),
                path,
                original_length,
            }
        });
        let mut examples: Vec<Option<Trail>> = self.properties.iter().map(|_| None).collect();
        for (index, trail) in found.goals {
            examples[index] = Some(trail);
        }
        let goals = self
            .properties
            .iter()
            .zip(examples)
            .filter(|(property, _)| property.expectation == Expectation::Sometimes)
            .map(|(property, trail)| Goal {
                name: property.name.clone(),
                example: trail.map(|trail| trail.into_path(model)),
            })
            .collect();
        let stopped_by = *self
            .stopped_by
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Report {
            strategy,
            threads: self.threads,
            states_generated: self.states_generated.into_inner(),
            unique_states: self.unique_states.into_inner(),
            max_depth: self.deepest.into_inner(),
            elapsed,
            stopped_by,
            depth_bounded: self.depth_bounded.into_inner(),
            violation,
            goals,
        }
    }
}

/// An invariant that does not hold, and a path that shows it.
pub struct Counterexample<M: Model> {
    /// The invariant's name.
    pub property: String,
    /// From an initial state to a state that breaks the invariant.
    pub path: Path<M>,
    /// The path's length before minimization.
    pub original_length: usize,
}

/// A goal and, if it was reached, a path to a state satisfying it.
pub struct Goal<M: Model> {
    /// The goal's name.
    pub name: String,
    /// A path to a state satisfying it, if one was found.
    pub example: Option<Path<M>>,
}

/// What a search found and how much it explored.
pub struct Report<M: Model> {
    /// The strategy used.
    pub strategy: Strategy,
    /// Threads used.
    pub threads: usize,
    /// Successor states computed, duplicates included (initial states count too).
    pub states_generated: u64,
    /// Distinct states seen (by fingerprint).
    pub unique_states: u64,
    /// The deepest state seen, in actions from an initial state.
    pub max_depth: usize,
    /// Wall-clock time of the search, counterexample minimization included.
    pub elapsed: Duration,
    /// The limit that stopped the search early, if one did.
    pub stopped_by: Option<Limit>,
    /// Whether some state at the depth limit was left unexpanded.
    pub depth_bounded: bool,
    /// The first broken invariant found.
    pub violation: Option<Counterexample<M>>,
    /// Every goal, reached or not.
    pub goals: Vec<Goal<M>>,
}

/// The overall outcome of a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An invariant is broken.
    Violation,
    /// Every reachable state was checked and every goal reached.
    Verified,
    /// No invariant broke, but a limit cut the search short or a goal was never reached.
    Inconclusive,
}

impl<M: Model> Report<M> {
    /// Unique states per second of wall-clock time.
    pub fn states_per_second(&self) -> f64 {
        self.unique_states as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Whether every state within the bounds was explored (random probes never are).
    pub fn is_exhaustive(&self) -> bool {
        self.stopped_by.is_none()
            && !self.depth_bounded
            && !matches!(self.strategy, Strategy::RandomProbes { .. })
    }

    /// The overall outcome.
    pub fn verdict(&self) -> Verdict {
        if self.violation.is_some() {
            Verdict::Violation
        } else if self.is_exhaustive() && self.goals.iter().all(|goal| goal.example.is_some()) {
            Verdict::Verified
        } else {
            Verdict::Inconclusive
        }
    }
}

impl<M: Model> fmt::Display for Report<M> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "{}, {} thread{}: {} states generated, {} unique, max depth {}, {:.3} s, {:.0} unique states/s",
            self.strategy,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.states_generated,
            self.unique_states,
            self.max_depth,
            self.elapsed.as_secs_f64(),
            self.states_per_second()
        )?;
        match self.stopped_by {
            Some(Limit::States) => writeln!(formatter, "stopped at the state limit")?,
            Some(Limit::Time) => writeln!(formatter, "stopped at the time limit")?,
            None if self.depth_bounded => writeln!(formatter, "explored up to the depth limit")?,
            None => {}
        }
        for goal in &self.goals {
            match &goal.example {
                Some(path) => writeln!(
                    formatter,
                    "goal {:?}: reached in {} steps",
                    goal.name,
                    path.len()
                )?,
                None => writeln!(formatter, "goal {:?}: NOT reached", goal.name)?,
            }
        }
        if let Some(counterexample) = &self.violation {
            writeln!(
                formatter,
                "invariant {:?} BROKEN after {} steps (minimized from {}):",
                counterexample.property,
                counterexample.path.len(),
                counterexample.original_length
            )?;
            write!(formatter, "{}", counterexample.path)?;
        }
        let verdict = match self.verdict() {
            Verdict::Violation => "violation",
            Verdict::Verified => {
                "verified: every invariant holds in every reachable state and every goal was reached"
            }
            Verdict::Inconclusive => {
                "inconclusive: no violation found, but the search was bounded or a goal was not reached"
            }
        };
        writeln!(formatter, "verdict: {verdict}")
    }
}
