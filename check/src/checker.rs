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
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::history::{Event, HistoryError, Operation, Outcome, pair_operations};
use crate::linearizability::{Limit, SearchLimits, SearchOutcome, TimedOperation, search};
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
    /// Whether the history was split by key (so `key` names the part that failed).
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
    let partitions: Vec<Partition<'_, M>> = groups
        .into_iter()
        .map(|(key, members)| Partition {
            key,
            members,
            operations: &operations,
            commands: &commands,
        })
        .collect();
    let partition_count = partitions.len();
    let mut states_explored = 0;
    let mut undecided: Vec<&Partition<'_, M>> = partitions.iter().collect();
    // A lone partition gets the full budget at once: there is nothing to interleave with.
    let mut round_max_states = if partitions.len() > 1 {
        FIRST_ROUND_MAX_STATES.min(options.budget.max_states_per_partition)
    } else {
        options.budget.max_states_per_partition
    };
    loop {
        let results = search_partitions(model, &undecided, round_max_states, options);
        let mut still_undecided = Vec::new();
        let mut first_violation = None;
        let mut memory_exhausted = false;
        for (partition, result) in undecided.iter().zip(results) {
            states_explored += result.states_explored;
            match result.outcome {
                PartitionOutcome::Linearizable => {}
                PartitionOutcome::NotLinearizable(violation) => {
                    first_violation.get_or_insert(violation);
                }
                PartitionOutcome::BudgetExhausted { limit } => {
                    memory_exhausted |= limit == Limit::Memory;
                    still_undecided.push(*partition);
                }
            }
        }
        let report = |verdict| CheckReport {
            verdict,
            operations: operations.len(),
            partitions: partition_count,
            states_explored,
        };
        if let Some(violation) = first_violation {
            return Ok(report(Verdict::NotLinearizable(violation)));
        }
        let Some(first) = still_undecided.first() else {
            return Ok(report(Verdict::Linearizable));
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
            return Ok(report(Verdict::Unknown {
                key: first.key.clone(),
                reason,
            }));
        }
        round_max_states = round_max_states
            .saturating_mul(ROUND_BUDGET_GROWTH_FACTOR)
            .min(options.budget.max_states_per_partition);
        undecided = still_undecided;
    }
}

/// One partition of a history: its key and its operations.
struct Partition<'a, M: Model> {
    /// The key.
    key: String,
    /// Indices into `operations` of its operations, in invoke order.
    members: Vec<usize>,
    /// Every operation of the history.
    operations: &'a [Operation],
    /// Every operation's command (aligned with `operations`).
    commands: &'a [Option<M::Command>],
}

/// What the search of one partition found.
enum PartitionOutcome {
    /// It is linearizable.
    Linearizable,
    /// It is not.
    NotLinearizable(Violation),
    /// The search gave up.
    BudgetExhausted {
        /// Which limit it hit.
        limit: Limit,
    },
}

/// A partition's outcome and cost.
struct PartitionResult {
    /// The outcome.
    outcome: PartitionOutcome,
    /// How many configurations the search entered.
    states_explored: u64,
}

/// Searches the partitions, in parallel when there are several threads and partitions; results
/// come back in the partitions' order.
fn search_partitions<M: Model>(
    model: &M,
    partitions: &[&Partition<'_, M>],
    max_states: u64,
    options: &CheckOptions,
) -> Vec<PartitionResult> {
    let workers = options.threads.clamp(1, partitions.len().max(1));
    let limits = SearchLimits {
        max_states,
        max_table_bytes: options.budget.max_table_bytes / workers as u64,
    };
    if workers == 1 {
        return partitions
            .iter()
            .map(|partition| search_partition(model, partition, limits, options.partition))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<PartitionResult>>> =
        Mutex::new(partitions.iter().map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(partition) = partitions.get(index) else {
                        break;
                    };
                    let result = search_partition(model, partition, limits, options.partition);
                    results.lock().expect("no worker panics holding the lock")[index] =
                        Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .expect("no worker panicked holding the lock")
        .into_iter()
        .map(|result| result.expect("every partition was searched"))
        .collect()
}

/// Searches one partition.
fn search_partition<M: Model>(
    model: &M,
    partition: &Partition<'_, M>,
    limits: SearchLimits,
    partitioned: bool,
) -> PartitionResult {
    // Positions within the partition of the operations that constrain the search.
    let mut constraining = Vec::new();
    let mut commands = Vec::new();
    for (position, &index) in partition.members.iter().enumerate() {
        if let Some(command) = &partition.commands[index] {
            constraining.push(position);
            commands.push(command);
        }
    }
    let (mut specification, inputs) = model.specification(&commands);
    let timed: Vec<TimedOperation<_>> = inputs
        .into_iter()
        .zip(&constraining)
        .map(|(input, &position)| {
            let operation = &partition.operations[partition.members[position]];
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
    let report = search(&mut specification, &timed, limits);
    let outcome = match report.outcome {
        SearchOutcome::Linearizable => PartitionOutcome::Linearizable,
        SearchOutcome::BudgetExhausted { limit } => PartitionOutcome::BudgetExhausted { limit },
        SearchOutcome::NotLinearizable {
            longest_prefix,
            stuck,
        } => {
            let mut state = specification.initial_state();
            for &operation in &longest_prefix {
                state = specification
                    .step(&state, &timed[operation].input)
                    .expect("the longest prefix replays");
            }
            let refusals = stuck
                .iter()
                .map(|&operation| specification.explain_refusal(&state, &timed[operation].input))
                .collect();
            let failing_timed = stuck
                .iter()
                .copied()
                .min_by_key(|&operation| timed[operation].complete_position.unwrap_or(usize::MAX))
                .expect("a failed search leaves at least one operation to place");
            let to_positions = |indices: &[usize]| -> Vec<usize> {
                indices.iter().map(|&i| constraining[i]).collect()
            };
            PartitionOutcome::NotLinearizable(Violation {
                model: model.name(),
                key: partition.key.clone(),
                partitioned,
                operations: partition
                    .members
                    .iter()
                    .map(|&index| partition.operations[index].clone())
                    .collect(),
                longest_prefix: to_positions(&longest_prefix),
                state_after_prefix: specification.describe_state(&state),
                stuck: to_positions(&stuck),
                refusals,
                failing: constraining[failing_timed],
            })
        }
    };
    PartitionResult {
        outcome,
        states_explored: report.states_explored,
    }
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
