//! Checking a history against a model: pairing, partitioning, the searches, and the verdict.
//!
//! [`check`] pairs a history's events into operations, lets the [`Model`] read each one, splits
//! them into partitions (one per key) unless told not to, and searches each partition for a
//! linearization (see the crate docs for the algorithm). Partitions are independent, so they are
//! searched in parallel on [`CheckOptions::threads`] threads, and the history is linearizable
//! exactly when every partition is.
//!
//! The answer is exact or honest: [`Verdict::Linearizable`] only when a linearization was found,
//! [`Verdict::NotLinearizable`] only when none exists, and [`Verdict::Unknown`] when finding out
//! would cost more than the [`Budget`]. Running out of budget is never a pass.
//!
//! Partitions are searched in rounds: first every partition with a budget of 10,000 states, then
//! the ones still undecided with ten times more, and so on up to the full budget, so that a
//! violation that is cheap to prove is found even when another partition is costly. The first
//! partition (in key order) found not linearizable is reported, whatever the thread count.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use serde_json::Value;

use crate::history::{Event, HistoryError, Operation, Outcome, pair_operations};
use crate::linearizability::{Limit, SearchLimits, SearchOutcome, Searcher, TimedOperation};
use crate::model::{Model, SequentialSpecification};

/// The default most states one partition's search may enter.
pub const DEFAULT_MAX_STATES_PER_PARTITION: u64 = 20_000_000;

/// The default most bytes the searches' explored-configuration tables may hold together: keeps
/// the whole process well under a gigabyte.
pub const DEFAULT_MAX_TABLE_BYTES: u64 = 512 << 20;

/// The budget of the first round, in which every partition is searched: enough for most keys of
/// most histories, small enough that a hard key does not delay the others.
const FIRST_ROUND_MAX_STATES: u64 = 10_000;

/// How much the budget grows from one round to the next; re-searching undecided partitions from
/// scratch then costs at most 1 / (factor - 1) extra.
const ROUND_BUDGET_GROWTH_FACTOR: u64 = 10;

/// How many operations of the longest prefix a violation's description shows (the last ones).
const DISPLAYED_PREFIX_OPERATIONS_MAX: usize = 8;

/// How many stuck operations a violation's description shows.
const DISPLAYED_STUCK_OPERATIONS_MAX: usize = 16;

/// How much work the checker may do before answering [`Verdict::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The most (linearized operations, state) configurations to explore for one partition.
    pub max_states_per_partition: u64,
    /// The most bytes the tables of explored configurations may hold, shared by the searches
    /// running at once.
    pub max_table_bytes: u64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            max_states_per_partition: DEFAULT_MAX_STATES_PER_PARTITION,
            max_table_bytes: DEFAULT_MAX_TABLE_BYTES,
        }
    }
}

/// How to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// When to give up.
    pub budget: Budget,
    /// Whether to split the history by key and check each key on its own (the default); off, the
    /// whole history is one search over one state holding every key.
    pub partition: bool,
    /// How many partitions may be searched at once (at least 1).
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> CheckOptions {
        CheckOptions {
            budget: Budget::default(),
            partition: true,
            threads: 1,
        }
    }
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of the operations agrees with real time and the model.
    Linearizable,
    /// No order does; the violation explains where the search got stuck.
    NotLinearizable(Violation),
    /// The search for `key` ran out of budget; nothing is known about that key.
    Unknown {
        /// The partition whose search ran out of budget (its key; empty for a whole history).
        key: String,
        /// Why there is no verdict.
        reason: String,
    },
}

/// A verdict and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The answer.
    pub verdict: Verdict,
    /// How many operations the history has.
    pub operations: usize,
    /// How many partitions it was split into.
    pub partitions: usize,
    /// How many configurations the searches entered, over all rounds.
    pub states_explored: u64,
}

/// Evidence that one partition's operations cannot be linearized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The model checked against, as in "the key-value model".
    pub model: &'static str,
    /// The partition's key; empty when the history was checked as a whole.
    pub key: String,
    /// Whether the history was split into several keys (so `key` names the part that failed).
    pub partitioned: bool,
    /// Every operation of that partition, in invoke order.
    pub operations: Vec<Operation>,
    /// Indices into `operations`: the longest linearizable prefix the search found, in order.
    pub longest_prefix: Vec<usize>,
    /// The state that prefix leaves, for people (`the key "x1"`).
    pub state_after_prefix: String,
    /// Indices into `operations`: the operations real time allows next after that prefix, none
    /// of which the model accepts there.
    pub stuck: Vec<usize>,
    /// For each of `stuck`, why the model refuses it (`would read "x1"`).
    pub refusals: Vec<String>,
    /// Index into `operations`: the operation that cannot be placed. It is the stuck operation
    /// that completed first: it has to come before any operation not yet placed, and cannot.
    pub failing: usize,
}

/// Checks whether `events` are linearizable under `model`.
pub fn check<M: Model>(
    model: &M,
    events: &[Event],
    options: &CheckOptions,
) -> Result<CheckReport, HistoryError> {
    let operations = pair_operations(events)?;
    let mut commands = Vec::with_capacity(operations.len());
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, operation) in operations.iter().enumerate() {
        let interpretation = model.interpret(operation)?;
        let key = if options.partition {
            interpretation.partition
        } else {
            String::new()
        };
        groups.entry(key).or_default().push(index);
        commands.push(interpretation.command);
    }
    let partition_count = groups.len();
    let mut undecided: Vec<PartitionSearch<M::Specification>> = groups
        .into_iter()
        .map(|(key, members)| PartitionSearch::new(model, key, members, &operations, &commands))
        .collect();
    // A lone partition gets the full budget at once: there is nothing to interleave with.
    let mut round_max_states = if partition_count > 1 {
        FIRST_ROUND_MAX_STATES.min(options.budget.max_states_per_partition)
    } else {
        options.budget.max_states_per_partition
    };
    let report = |verdict, states_explored| CheckReport {
        verdict,
        operations: operations.len(),
        partitions: partition_count,
        states_explored,
    };
    let mut states_explored_decided = 0;
    loop {
        let limits = SearchLimits {
            max_states: round_max_states,
            // Undecided searches keep their tables between rounds, so they share the memory.
            max_table_bytes: options.budget.max_table_bytes / undecided.len().max(1) as u64,
        };
        let results = run_searches(undecided, limits, options.threads);
        let mut still_undecided = Vec::new();
        let mut first_violation = None;
        let mut memory_exhausted = false;
        for (mut search, outcome) in results {
            match outcome {
                SearchOutcome::Linearizable => {
                    states_explored_decided += search.searcher.states_explored();
                }
                SearchOutcome::NotLinearizable {
                    longest_prefix,
                    stuck,
                } => {
                    states_explored_decided += search.searcher.states_explored();
                    if first_violation.is_none() {
                        first_violation = Some(search.violation(
                            model,
                            &operations,
                            options.partition && partition_count > 1,
                            &longest_prefix,
                            &stuck,
                        ));
                    }
                }
                SearchOutcome::BudgetExhausted { limit } => {
                    memory_exhausted |= limit == Limit::Memory;
                    still_undecided.push(search);
                }
            }
        }
        let states_explored = states_explored_decided
            + still_undecided
                .iter()
                .map(|search| search.searcher.states_explored())
                .sum::<u64>();
        if let Some(violation) = first_violation {
            return Ok(report(Verdict::NotLinearizable(violation), states_explored));
        }
        let Some(first) = still_undecided.first() else {
            return Ok(report(Verdict::Linearizable, states_explored));
        };
        // More states cannot help a search that ran out of memory.
        if round_max_states >= options.budget.max_states_per_partition || memory_exhausted {
            let what = if options.partition {
                format!("key {:?}", first.key)
            } else {
                "the whole history".to_owned()
            };
            let limit = if memory_exhausted {
                format!(
                    "the memory budget of {} MiB",
                    options.budget.max_table_bytes >> 20
                )
            } else {
                format!(
                    "the budget of {} states per partition",
                    options.budget.max_states_per_partition
                )
            };
            let reason = format!(
                "the search of {what}'s {} operations used {limit} without a verdict \
                 ({} of {partition_count} partitions undecided)",
                first.members.len(),
                still_undecided.len(),
            );
            let key = first.key.clone();
            return Ok(report(Verdict::Unknown { key, reason }, states_explored));
        }
        round_max_states = round_max_states
            .saturating_mul(ROUND_BUDGET_GROWTH_FACTOR)
            .min(options.budget.max_states_per_partition);
        undecided = still_undecided;
    }
}

/// One partition of a history and its search, kept between rounds so a larger budget resumes it.
struct PartitionSearch<S: SequentialSpecification> {
    /// The partition's key.
    key: String,
    /// Indices into the history's operations of the partition's, in invoke order.
    members: Vec<usize>,
    /// Positions within `members` of the operations the search sees (those that constrain it).
    constraining: Vec<usize>,
    /// The search.
    searcher: Searcher<S>,
}

impl<S: SequentialSpecification> PartitionSearch<S> {
    /// Compiles one partition's commands and sets up its search.
    fn new<M: Model<Specification = S>>(
        model: &M,
        key: String,
        members: Vec<usize>,
        operations: &[Operation],
        commands: &[Option<M::Command>],
    ) -> PartitionSearch<S> {
        let mut constraining = Vec::new();
        let mut partition_commands = Vec::new();
        for (position, &index) in members.iter().enumerate() {
            if let Some(command) = &commands[index] {
                constraining.push(position);
                partition_commands.push(command);
            }
        }
        let (specification, inputs) = model.specification(&partition_commands);
        let timed = inputs
            .into_iter()
            .zip(&constraining)
            .map(|(input, &position)| {
                let operation = &operations[members[position]];
                TimedOperation {
                    input,
                    invoke_position: operation.invoke_index,
                    complete_position: match operation.outcome {
                        Outcome::Ok => operation.complete_index,
                        Outcome::Fail | Outcome::Info => None,
                    },
                }
            })
            .collect();
        PartitionSearch {
            key,
            members,
            constraining,
            searcher: Searcher::new(specification, timed),
        }
    }

    /// The violation a failed search found, with its indices mapped to the partition's
    /// operations and the model's explanations.
    fn violation<M: Model>(
        &mut self,
        model: &M,
        operations: &[Operation],
        partitioned: bool,
        longest_prefix: &[usize],
        stuck: &[usize],
    ) -> Violation {
        let (specification, timed) = self.searcher.parts();
        let mut state = specification.initial_state();
        for &operation in longest_prefix {
            state = specification
                .step(&state, &timed[operation].input)
                .expect("the longest prefix replays");
        }
        let refusals = stuck
            .iter()
            .map(|&operation| specification.explain_refusal(&state, &timed[operation].input))
            .collect();
        let failing = stuck
            .iter()
            .copied()
            .min_by_key(|&operation| timed[operation].complete_position.unwrap_or(usize::MAX))
            .expect("a failed search leaves at least one operation to place");
        let to_positions = |indices: &[usize]| -> Vec<usize> {
            indices
                .iter()
                .map(|&index| self.constraining[index])
                .collect()
        };
        Violation {
            model: model.name(),
            key: self.key.clone(),
            partitioned,
            operations: self
                .members
                .iter()
                .map(|&index| operations[index].clone())
                .collect(),
            longest_prefix: to_positions(longest_prefix),
            state_after_prefix: specification.describe_state(&state),
            stuck: to_positions(stuck),
            refusals,
            failing: self.constraining[failing],
        }
    }
}

/// Runs every search within `limits`, on up to `threads` threads; results come back in the
/// searches' order, so the verdict does not depend on the thread count.
fn run_searches<S>(
    searches: Vec<PartitionSearch<S>>,
    limits: SearchLimits,
    threads: usize,
) -> Vec<(PartitionSearch<S>, SearchOutcome)>
where
    S: SequentialSpecification + Send,
    S::State: Send,
    S::Input: Send,
{
    let workers = threads.clamp(1, searches.len().max(1));
    if workers == 1 {
        return searches
            .into_iter()
            .map(|mut search| {
                let outcome = search.searcher.run(limits);
                (search, outcome)
            })
            .collect();
    }
    let count = searches.len();
    // Workers take searches from the back; reversed, the first partitions go first.
    let queue = Mutex::new(searches.into_iter().enumerate().rev().collect::<Vec<_>>());
    let done = Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let next = queue
                        .lock()
                        .expect("no worker panics holding the lock")
                        .pop();
                    let Some((index, mut search)) = next else {
                        break;
                    };
                    let outcome = search.searcher.run(limits);
                    done.lock()
                        .expect("no worker panics holding the lock")
                        .push((index, search, outcome));
                }
            });
        }
    });
    let mut done = done
        .into_inner()
        .expect("no worker panicked holding the lock");
    done.sort_by_key(|(index, _, _)| *index);
    done.into_iter()
        .map(|(_, search, outcome)| (search, outcome))
        .collect()
}

impl Violation {
    /// The partition for people: `key "k7"` or `the history`.
    pub fn subject(&self) -> String {
        if self.partitioned {
            format!("key {:?}", self.key)
        } else {
            "the history".to_owned()
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "{}: no order of its {} agrees with both real time and the {} model",
            self.subject(),
            count_operations(self.operations.len()),
            self.model
        )?;
        writeln!(
            formatter,
            "the longest linearizable prefix has {} and leaves {}:",
            count_operations(self.longest_prefix.len()),
            self.state_after_prefix
        )?;
        let hidden = self
            .longest_prefix
            .len()
            .saturating_sub(DISPLAYED_PREFIX_OPERATIONS_MAX);
        if hidden > 0 {
            writeln!(formatter, "  ... {} before these", count_operations(hidden))?;
        }
        for &index in &self.longest_prefix[hidden..] {
            if let Some(operation) = self.operations.get(index) {
                writeln!(
                    formatter,
                    "  {}",
                    describe_operation(operation, !self.partitioned)
                )?;
            }
        }
        writeln!(formatter, "none of these can come next:")?;
        for (&index, refusal) in self
            .stuck
            .iter()
            .zip(&self.refusals)
            .take(DISPLAYED_STUCK_OPERATIONS_MAX)
        {
            if let Some(operation) = self.operations.get(index) {
                writeln!(
                    formatter,
                    "  {}: {refusal}",
                    describe_operation(operation, !self.partitioned)
                )?;
            }
        }
        let hidden = self
            .stuck
            .len()
            .saturating_sub(DISPLAYED_STUCK_OPERATIONS_MAX);
        if hidden > 0 {
            writeln!(formatter, "  ... and {hidden} more")?;
        }
        if let Some(failing) = self.operations.get(self.failing) {
            write!(
                formatter,
                "the operation that cannot be placed: {}",
                describe_operation(failing, !self.partitioned)
            )?;
            writeln!(formatter)?;
        }
        Ok(())
    }
}

/// "1 operation", "2 operations".
fn count_operations(count: usize) -> String {
    match count {
        1 => "1 operation".to_owned(),
        _ => format!("{count} operations"),
    }
}

/// Whether `f` names a read, whose interesting value is its result rather than its argument.
fn is_read(f: &str) -> bool {
    matches!(f, "get" | "read")
}

/// An operation's name with its argument or result (`get -> "x"`, `put "x"`, `cas [1,2]`), and
/// with its key (`get "k" -> "x"`) if `with_key`.
pub fn describe_call(operation: &Operation, with_key: bool) -> String {
    let mut text = match &operation.key {
        Some(key) if with_key => format!("{} {key:?}", operation.f),
        _ => operation.f.clone(),
    };
    match (&operation.output, &operation.input) {
        (Some(read), _) if is_read(&operation.f) => text.push_str(&format!(" -> {read}")),
        (_, Value::Null) => {}
        (_, input) => text.push_str(&format!(" {input}")),
    }
    text
}

/// One line about an operation: who did what (with its key if `with_key`), what it returned, and
/// when.
pub fn describe_operation(operation: &Operation, with_key: bool) -> String {
    let mut text = format!(
        "process {} {}",
        operation.process,
        describe_call(operation, with_key)
    );
    let when = match (operation.outcome, operation.complete_index) {
        (Outcome::Info, None) => format!(
            "invoked at event {}, never completed",
            operation.invoke_index
        ),
        (Outcome::Info, Some(complete)) => format!(
            "invoked at event {}, info at event {complete}",
            operation.invoke_index
        ),
        (outcome, Some(complete)) => {
            format!("{outcome}, events {}-{complete}", operation.invoke_index)
        }
        (outcome, None) => format!("{outcome}, invoked at event {}", operation.invoke_index),
    };
    text.push_str(&format!(" ({when})"));
    text
}
