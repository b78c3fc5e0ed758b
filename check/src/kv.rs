//! An interim linearizability checker for the key-value workload.
//!
//! **Interim**: the full checker of issue 3 (a faster search, more models, Jepsen's formats, HTML
//! rendering) replaces this module. Until then it is exact for the key-value workload: it answers
//! [`Verdict::Linearizable`] only when it found a linearization, [`Verdict::NotLinearizable`] only
//! when none exists, and [`Verdict::Unknown`] when finding out would cost more than its
//! [`Budget`]; running out of budget is never a pass.
//!
//! # The model
//!
//! A map from string keys to string values, initially empty, with four operations (the `f` of a
//! [history](crate::history) event), each on one `key`:
//!
//! | `f`      | invoke `value`          | `ok` `value`                                  | effect |
//! |----------|-------------------------|-----------------------------------------------|--------|
//! | `get`    | not interpreted         | the value read: a string, or `null` if absent | none |
//! | `put`    | the string to write     | not interpreted                               | sets the key |
//! | `append` | the string to append    | not interpreted                               | appends to the value; an absent key counts as `""` |
//! | `delete` | not interpreted         | not interpreted                               | removes the key |
//!
//! Outcomes follow the history format: an `ok` operation took effect exactly once between its
//! invoke and its completion; a `fail` operation never took effect and is dropped; an `info`
//! operation (or one that never completed) took effect at some point after its invoke or never,
//! so its completion is treated as being at the end of time and it may be left out. Reads that did
//! not complete `ok` constrain nothing and are dropped.
//!
//! # The algorithm
//!
//! Operations on different keys commute and share no state, so a history is linearizable exactly
//! when each key's sub-history is (linearizability is compositional; Horn and Kroening call the
//! per-key split P-compositionality). Each key is checked on its own by the Wing–Gong/Lowe search
//! with memoization of (linearized operations, value) pairs, which also linearizes a read that fits
//! as soon as real time allows it (a reduction that loses no linearization).
//!
//! Keys are searched in rounds: first every key with a budget of 10,000 states, then the keys
//! still undecided with ten times more, and so on up to [`Budget::max_states_per_key`], so that a
//! violation that is cheap to prove is found even when another key is costly. Within a round keys
//! go in sorted order, and the first key found not linearizable is reported; if some key stays
//! undecided at the full budget and no key is found not linearizable, the verdict is
//! [`Verdict::Unknown`] for the first such key.
//!
//! # Example
//!
//! ```
//! use synod_check::history::{Event, EventKind};
//! use synod_check::kv::{check_kv_history, Budget, Verdict};
//!
//! let event = |process, kind, f: &str, value: serde_json::Value, time| Event {
//!     process,
//!     kind,
//!     f: f.to_owned(),
//!     key: Some("k".to_owned()),
//!     value,
//!     time,
//! };
//! // Process 1 puts "a" and then reads "b", which nobody wrote.
//! let events = [
//!     event(1, EventKind::Invoke, "put", "a".into(), 10),
//!     event(1, EventKind::Ok, "put", "a".into(), 20),
//!     event(1, EventKind::Invoke, "get", serde_json::Value::Null, 30),
//!     event(1, EventKind::Ok, "get", "b".into(), 40),
//! ];
//! match check_kv_history(&events, Budget::default())? {
//!     Verdict::NotLinearizable(violation) => {
//!         assert_eq!(violation.key, "k");
//!         assert_eq!(violation.longest_prefix, [0]);
//!         assert_eq!(violation.stuck, [1]);
//!         assert!(violation.to_string().contains(r#"would read "a""#));
//!     }
//!     other => panic!("expected a violation, got {other:?}"),
//! }
//! # Ok::<(), synod_check::history::HistoryError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;

use serde_json::Value;

use crate::history::{Event, HistoryError, Operation, Outcome, pair_operations};
use crate::linearizability::{SearchOutcome, SequentialSpecification, TimedOperation, search};

/// The default search budget per key. A state costs about 200 bytes and 2 µs on histories like
/// Porcupine's 50-client key-value ones, so a key that uses it all takes about a gigabyte and ten
/// seconds.
pub const DEFAULT_MAX_STATES_PER_KEY: u64 = 5_000_000;

/// The budget of the first round, in which every key is searched: enough for most keys of most
/// histories, small enough that a hard key does not delay the others.
const FIRST_ROUND_MAX_STATES_PER_KEY: u64 = 10_000;

/// How much the budget grows from one round to the next; re-searching undecided keys from
/// scratch then costs at most 1 / (factor - 1) extra.
const ROUND_BUDGET_GROWTH_FACTOR: u64 = 10;

/// How many operations of the longest prefix a violation's description shows (the last ones).
const DISPLAYED_PREFIX_OPERATIONS_MAX: usize = 8;

/// How many stuck operations a violation's description shows.
const DISPLAYED_STUCK_OPERATIONS_MAX: usize = 16;

/// The model's name in error messages.
const MODEL_NAME: &str = "key-value";

/// The operation names the model has, for error messages.
const SUPPORTED_OPERATIONS: &str = "get, put, append, delete";

/// How much work the checker may do before answering [`Verdict::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The most (linearized operations, value) configurations to explore for one key.
    pub max_states_per_key: u64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            max_states_per_key: DEFAULT_MAX_STATES_PER_KEY,
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
        /// The key whose search ran out of budget.
        key: String,
        /// Why there is no verdict.
        reason: String,
    },
}

/// Evidence that one key's operations cannot be linearized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The key whose operations cannot be linearized.
    pub key: String,
    /// Every operation on that key, in invoke order.
    pub operations: Vec<Operation>,
    /// Indices into `operations`: the longest linearizable prefix the search found, in order.
    pub longest_prefix: Vec<usize>,
    /// Indices into `operations`: the operations real time allows next after that prefix; in this
    /// model they are reads that return something other than the value the prefix leaves.
    pub stuck: Vec<usize>,
}

/// Checks whether a key-value history is linearizable, within `budget`.
pub fn check_kv_history(events: &[Event], budget: Budget) -> Result<Verdict, HistoryError> {
    let operations = pair_operations(events)?;
    let mut operations_by_key: BTreeMap<String, Vec<(Operation, Option<Command>)>> =
        BTreeMap::new();
    for operation in operations {
        let (key, command) = interpret(&operation)?;
        let key = key.to_owned();
        operations_by_key
            .entry(key)
            .or_default()
            .push((operation, command));
    }
    let mut undecided: Vec<KeyHistory> = operations_by_key
        .into_iter()
        .map(|(key, operations)| KeyHistory::new(key, operations))
        .collect();
    // Every key is searched with a small budget first and the budget grows only for the keys still
    // undecided, so a violation that is cheap to prove is found even when another key is costly.
    let mut round_max_states = FIRST_ROUND_MAX_STATES_PER_KEY.min(budget.max_states_per_key);
    loop {
        let mut still_undecided = Vec::new();
        for key_history in undecided {
            match search(&KeyValueRegister, &key_history.timed, round_max_states) {
                SearchOutcome::Linearizable => {}
                SearchOutcome::NotLinearizable {
                    longest_prefix,
                    stuck,
                } => {
                    return Ok(Verdict::NotLinearizable(
                        key_history.violation(longest_prefix, stuck),
                    ));
                }
                SearchOutcome::BudgetExhausted { .. } => still_undecided.push(key_history),
            }
        }
        let Some(first) = still_undecided.first() else {
            return Ok(Verdict::Linearizable);
        };
        if round_max_states >= budget.max_states_per_key {
            let reason = format!(
                "the search of key {:?}'s {} operations explored the budget of {} states per key \
                 without a verdict ({} keys undecided)",
                first.key,
                first.operations.len(),
                budget.max_states_per_key,
                still_undecided.len()
            );
            return Ok(Verdict::Unknown {
                key: first.key.clone(),
                reason,
            });
        }
        round_max_states = round_max_states
            .saturating_mul(ROUND_BUDGET_GROWTH_FACTOR)
            .min(budget.max_states_per_key);
        undecided = still_undecided;
    }
}

/// One key's operations, and the part of them the search sees.
struct KeyHistory {
    /// The key.
    key: String,
    /// Every operation on the key, in invoke order.
    operations: Vec<Operation>,
    /// The operations that constrain the search, with their real-time positions.
    timed: Vec<TimedOperation<Command>>,
    /// For each entry of `timed`, its index in `operations`.
    positions: Vec<usize>,
}

impl KeyHistory {
    /// Splits out the operations that constrain the search.
    fn new(key: String, operations: Vec<(Operation, Option<Command>)>) -> KeyHistory {
        let mut timed = Vec::new();
        let mut positions = Vec::new();
        for (position, (operation, command)) in operations.iter().enumerate() {
            if let Some(command) = command {
                positions.push(position);
                timed.push(TimedOperation {
                    operation: command.clone(),
                    invoke_position: operation.invoke_index,
                    complete_position: match operation.outcome {
                        Outcome::Ok => operation.complete_index,
                        Outcome::Fail | Outcome::Info => None,
                    },
                });
            }
        }
        KeyHistory {
            key,
            operations: operations
                .into_iter()
                .map(|(operation, _)| operation)
                .collect(),
            timed,
            positions,
        }
    }

    /// The violation for a failed search, with the search's indices mapped to `operations`.
    fn violation(self, longest_prefix: Vec<usize>, stuck: Vec<usize>) -> Violation {
        let positions = &self.positions;
        let to_positions = |indices: Vec<usize>| -> Vec<usize> {
            indices.into_iter().map(|index| positions[index]).collect()
        };
        Violation {
            longest_prefix: to_positions(longest_prefix),
            stuck: to_positions(stuck),
            key: self.key,
            operations: self.operations,
        }
    }
}

/// One operation as the model sees it, with the result it must produce if it is a read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    /// A read that returned this value (`None`: the key was absent).
    Get(Option<Rc<str>>),
    /// Sets the key to this value.
    Put(Rc<str>),
    /// Appends this to the key's value.
    Append(Rc<str>),
    /// Removes the key.
    Delete,
}

/// The sequential specification of one key: its value, `None` when absent.
struct KeyValueRegister;

impl SequentialSpecification for KeyValueRegister {
    type State = Option<Rc<str>>;
    type Operation = Command;

    fn initial_state(&self) -> Option<Rc<str>> {
        None
    }

    fn step(&self, state: &Option<Rc<str>>, command: &Command) -> Option<Option<Rc<str>>> {
        match command {
            Command::Get(read) => (read == state).then(|| state.clone()),
            Command::Put(value) => Some(Some(Rc::clone(value))),
            Command::Append(suffix) => {
                let current = state.as_deref().unwrap_or("");
                Some(Some(Rc::from(format!("{current}{suffix}"))))
            }
            Command::Delete => Some(None),
        }
    }

    fn is_read_only(&self, command: &Command) -> bool {
        matches!(command, Command::Get(_))
    }
}

/// An operation's key and, if it constrains the search, its command; errors on operations the
/// model does not have or values of the wrong shape.
fn interpret(operation: &Operation) -> Result<(&str, Option<Command>), HistoryError> {
    let index = operation.invoke_index;
    let string_argument = |operation: &Operation| match &operation.input {
        Value::String(value) => Ok(Rc::from(value.as_str())),
        other => Err(HistoryError::InvalidValue {
            index,
            f: operation.f.clone(),
            message: format!("argument must be a string, found {other}"),
        }),
    };
    let command = match operation.f.as_str() {
        "get" => match &operation.output {
            // Only a read that returned constrains the history.
            None => None,
            Some(Value::Null) => Some(Command::Get(None)),
            Some(Value::String(read)) => Some(Command::Get(Some(Rc::from(read.as_str())))),
            Some(other) => {
                return Err(HistoryError::InvalidValue {
                    index: operation.complete_index.unwrap_or(index),
                    f: operation.f.clone(),
                    message: format!("result must be a string or null, found {other}"),
                });
            }
        },
        "put" => Some(Command::Put(string_argument(operation)?)),
        "append" => Some(Command::Append(string_argument(operation)?)),
        "delete" => Some(Command::Delete),
        _ => {
            return Err(HistoryError::UnsupportedOperation {
                index,
                model: MODEL_NAME,
                f: operation.f.clone(),
                supported: SUPPORTED_OPERATIONS,
            });
        }
    };
    let Some(key) = operation.key.as_deref() else {
        return Err(HistoryError::MissingKey {
            index,
            f: operation.f.clone(),
        });
    };
    // A failed operation never took effect, so it constrains nothing either.
    let command = command.filter(|_| operation.outcome != Outcome::Fail);
    Ok((key, command))
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "key {:?}: no order of its {} agrees with both real time and the key-value model",
            self.key,
            count_operations(self.operations.len())
        )?;
        let mut state = KeyValueRegister.initial_state();
        for &index in &self.longest_prefix {
            let Some(operation) = self.operations.get(index) else {
                return writeln!(
                    formatter,
                    "(the prefix names operation {index}, which is absent)"
                );
            };
            if let Ok((_, Some(command))) = interpret(operation) {
                state = KeyValueRegister.step(&state, &command).unwrap_or(state);
            }
        }
        writeln!(
            formatter,
            "the longest linearizable prefix has {} and leaves the key {}:",
            count_operations(self.longest_prefix.len()),
            describe_state(&state)
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
                writeln!(formatter, "  {}", describe_operation(operation))?;
            }
        }
        writeln!(formatter, "none of these can come next:")?;
        for &index in self.stuck.iter().take(DISPLAYED_STUCK_OPERATIONS_MAX) {
            let Some(operation) = self.operations.get(index) else {
                continue;
            };
            // Only reads can be refused by the model, and from the longest prefix every candidate
            // is refused (one that fits would have made a longer prefix).
            let reason = match interpret(operation) {
                Ok((_, Some(Command::Get(_)))) => format!("would read {}", describe_state(&state)),
                _ => "cannot come next".to_owned(),
            };
            writeln!(formatter, "  {}: {reason}", describe_operation(operation))?;
        }
        let hidden = self
            .stuck
            .len()
            .saturating_sub(DISPLAYED_STUCK_OPERATIONS_MAX);
        if hidden > 0 {
            writeln!(formatter, "  ... and {hidden} more")?;
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

/// A key's value for people: the JSON string, or a note that it is absent.
fn describe_state(state: &Option<Rc<str>>) -> String {
    match state {
        Some(value) => Value::from(value.as_ref()).to_string(),
        None => "absent".to_owned(),
    }
}

/// One line about an operation: who did what, what it returned, and when.
fn describe_operation(operation: &Operation) -> String {
    let mut text = format!("process {} {}", operation.process, operation.f);
    match (operation.f.as_str(), &operation.output) {
        ("get", Some(read)) => text.push_str(&format!(" -> {read}")),
        ("get" | "delete", _) => {}
        _ => text.push_str(&format!(" {}", operation.input)),
    }
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::history::EventKind;

    /// Builds histories one event at a time; times are ten times the event's position.
    #[derive(Default)]
    struct HistoryBuilder {
        events: Vec<Event>,
        pending: HashMap<u64, (String, String)>,
    }

    impl HistoryBuilder {
        fn push(&mut self, process: u64, kind: EventKind, f: &str, key: &str, value: Value) {
            let time = u64::try_from(self.events.len()).expect("small") * 10;
            self.events.push(Event {
                process,
                kind,
                f: f.to_owned(),
                key: Some(key.to_owned()),
                value,
                time,
            });
        }

        fn invoke(&mut self, process: u64, f: &str, key: &str, value: Value) -> &mut Self {
            self.pending.insert(process, (f.to_owned(), key.to_owned()));
            self.push(process, EventKind::Invoke, f, key, value);
            self
        }

        fn complete(&mut self, process: u64, kind: EventKind, value: Value) -> &mut Self {
            let (f, key) = self.pending.remove(&process).expect("pending operation");
            self.push(process, kind, &f, &key, value);
            self
        }

        fn ok(&mut self, process: u64, value: Value) -> &mut Self {
            self.complete(process, EventKind::Ok, value)
        }

        fn fail(&mut self, process: u64) -> &mut Self {
            self.complete(process, EventKind::Fail, Value::Null)
        }

        fn info(&mut self, process: u64) -> &mut Self {
            self.complete(process, EventKind::Info, Value::Null)
        }

        /// A whole operation by process 0 that completes `ok` before anything else happens.
        fn sequential(&mut self, f: &str, key: &str, input: Value, output: Value) -> &mut Self {
            self.invoke(0, f, key, input).ok(0, output)
        }

        fn check(&self) -> Verdict {
            check_kv_history(&self.events, Budget::default()).expect("well-formed history")
        }

        fn expect_violation(&self) -> Violation {
            match self.check() {
                Verdict::NotLinearizable(violation) => violation,
                other => panic!("expected a violation, got {other:?}"),
            }
        }
    }

    #[test]
    fn sequential_history_with_every_operation_is_linearizable() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("get", "a", Value::Null, Value::Null)
            .sequential("append", "a", json!("x"), json!("x"))
            .sequential("get", "a", Value::Null, json!("x"))
            .sequential("append", "a", json!("y"), json!("y"))
            .sequential("get", "a", Value::Null, json!("xy"))
            .sequential("put", "a", json!("z"), json!("z"))
            .sequential("get", "a", Value::Null, json!("z"))
            .sequential("delete", "a", Value::Null, Value::Null)
            .sequential("get", "a", Value::Null, Value::Null)
            .sequential("put", "b", json!(""), json!(""))
            .sequential("get", "b", Value::Null, json!(""));
        assert_eq!(history.check(), Verdict::Linearizable);
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(
            check_kv_history(&[], Budget::default()).expect("empty"),
            Verdict::Linearizable
        );
    }

    #[test]
    fn stale_read_is_not_linearizable() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("put", "a", json!("1"), Value::Null)
            .sequential("put", "a", json!("2"), Value::Null)
            .sequential("get", "a", Value::Null, json!("1"));
        let violation = history.expect_violation();
        assert_eq!(violation.key, "a");
        assert_eq!(violation.operations.len(), 3);
        assert_eq!(violation.longest_prefix, [0, 1]);
        assert_eq!(violation.stuck, [2]);
    }

    #[test]
    fn lost_write_read_as_absent_is_not_linearizable() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("append", "a", json!("x"), Value::Null)
            .sequential("get", "a", Value::Null, Value::Null);
        let violation = history.expect_violation();
        assert_eq!(violation.longest_prefix, [0]);
        assert_eq!(violation.stuck, [1]);

        let mut deleted = HistoryBuilder::default();
        deleted
            .sequential("put", "a", json!("x"), Value::Null)
            .sequential("delete", "a", Value::Null, Value::Null)
            .sequential("get", "a", Value::Null, json!("x"));
        assert_eq!(deleted.expect_violation().stuck, [2]);
    }

    #[test]
    fn append_applied_twice_is_not_linearizable() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("append", "a", json!("x1"), json!("x1"))
            .sequential("get", "a", Value::Null, json!("x1x1"));
        let violation = history.expect_violation();
        assert_eq!(violation.longest_prefix, [0]);
        assert_eq!(violation.stuck, [1]);
    }

    #[test]
    fn read_of_value_never_written_is_not_linearizable() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("put", "a", json!("1"), Value::Null)
            .sequential("get", "a", Value::Null, json!("7"));
        assert_eq!(history.expect_violation().stuck, [1]);

        let mut from_nothing = HistoryBuilder::default();
        from_nothing.sequential("get", "a", Value::Null, json!(""));
        assert_eq!(from_nothing.expect_violation().stuck, [0]);
    }

    #[test]
    fn read_cannot_see_a_write_invoked_after_it_completed() {
        let mut history = HistoryBuilder::default();
        history
            .invoke(1, "get", "a", Value::Null)
            .ok(1, json!("1"))
            .invoke(2, "put", "a", json!("1"))
            .ok(2, Value::Null);
        let violation = history.expect_violation();
        assert_eq!(violation.longest_prefix, Vec::<usize>::new());
        assert_eq!(violation.stuck, [0]);

        // Control: the same read overlapping the write is fine.
        let mut overlapping = HistoryBuilder::default();
        overlapping
            .invoke(1, "get", "a", Value::Null)
            .invoke(2, "put", "a", json!("1"))
            .ok(1, json!("1"))
            .ok(2, Value::Null);
        assert_eq!(overlapping.check(), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_operations_are_reordered_to_linearize() {
        // Invoked get, append, put; completed append, put, get: only put, append, get explains
        // the read, against both the invoke and the completion order.
        let mut history = HistoryBuilder::default();
        history
            .invoke(1, "get", "a", Value::Null)
            .invoke(3, "append", "a", json!("b"))
            .invoke(2, "put", "a", json!("a"))
            .ok(3, Value::Null)
            .ok(2, Value::Null)
            .ok(1, json!("ab"));
        assert_eq!(history.check(), Verdict::Linearizable);

        // Control: once the append completes before the put is invoked, "ab" is impossible.
        let mut ordered = HistoryBuilder::default();
        ordered
            .invoke(1, "get", "a", Value::Null)
            .invoke(3, "append", "a", json!("b"))
            .ok(3, Value::Null)
            .invoke(2, "put", "a", json!("a"))
            .ok(2, Value::Null)
            .ok(1, json!("ab"));
        let violation = ordered.expect_violation();
        assert_eq!(violation.longest_prefix, [1, 2]);
        assert_eq!(violation.stuck, [0]);
    }

    #[test]
    fn info_writes_that_must_be_included_are() {
        let mut history = HistoryBuilder::default();
        history
            .invoke(1, "put", "a", json!("1"))
            .info(1)
            .invoke(2, "append", "a", json!("2"))
            .sequential("get", "a", Value::Null, json!("12"));
        // Process 2's append never completed, and process 1's put timed out; both took effect.
        assert_eq!(history.check(), Verdict::Linearizable);

        // An info write may even land after its info event, when a later read sees it.
        let mut late = HistoryBuilder::default();
        late.invoke(1, "put", "a", json!("1"))
            .info(1)
            .sequential("get", "a", Value::Null, Value::Null)
            .sequential("get", "a", Value::Null, json!("1"));
        assert_eq!(late.check(), Verdict::Linearizable);
    }

    #[test]
    fn info_writes_that_must_be_excluded_are() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("put", "a", json!("1"), Value::Null)
            .invoke(1, "append", "a", json!("2"))
            .info(1)
            .sequential("get", "a", Value::Null, json!("1"))
            .sequential("get", "a", Value::Null, json!("1"));
        assert_eq!(history.check(), Verdict::Linearizable);

        // But an info write takes effect at most once, and never before its invoke.
        let mut twice = HistoryBuilder::default();
        twice
            .invoke(1, "append", "a", json!("y"))
            .info(1)
            .sequential("get", "a", Value::Null, json!("y"))
            .sequential("get", "a", Value::Null, json!("yy"));
        assert_eq!(twice.expect_violation().stuck, [2]);

        let mut early = HistoryBuilder::default();
        early
            .sequential("get", "a", Value::Null, json!("1"))
            .invoke(1, "put", "a", json!("1"))
            .info(1);
        assert_eq!(early.expect_violation().stuck, [0]);
    }

    #[test]
    fn failed_writes_are_excluded() {
        let mut history = HistoryBuilder::default();
        history
            .invoke(1, "put", "a", json!("1"))
            .fail(1)
            .sequential("get", "a", Value::Null, Value::Null);
        assert_eq!(history.check(), Verdict::Linearizable);

        let mut seen = HistoryBuilder::default();
        seen.invoke(1, "put", "a", json!("1")).fail(1).sequential(
            "get",
            "a",
            Value::Null,
            json!("1"),
        );
        let violation = seen.expect_violation();
        // The failed put is reported among the key's operations but never placed.
        assert_eq!(violation.operations.len(), 2);
        assert_eq!(violation.stuck, [1]);
    }

    #[test]
    fn reads_without_ok_constrain_nothing() {
        let mut history = HistoryBuilder::default();
        history
            .invoke(1, "get", "a", Value::Null)
            .info(1)
            .invoke(2, "get", "a", Value::Null)
            .fail(2)
            .invoke(3, "get", "a", Value::Null);
        history.events[1].value = json!("never written");
        history.events[3].value = json!(42);
        assert_eq!(history.check(), Verdict::Linearizable);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("put", "a", json!("1"), Value::Null)
            .sequential("get", "b", Value::Null, Value::Null)
            .sequential("put", "b", json!("2"), Value::Null)
            .sequential("get", "a", Value::Null, json!("1"))
            .sequential("get", "b", Value::Null, json!("1"));
        let violation = history.expect_violation();
        assert_eq!(violation.key, "b");
        assert_eq!(violation.operations.len(), 3);
        assert_eq!(violation.longest_prefix, [0, 1]);
        assert_eq!(violation.stuck, [2]);
    }

    #[test]
    fn running_out_of_budget_is_unknown_never_a_pass() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("put", "a", json!("1"), Value::Null)
            .sequential("get", "a", Value::Null, json!("1"));
        let budget = Budget {
            max_states_per_key: 1,
        };
        match check_kv_history(&history.events, budget).expect("well-formed") {
            Verdict::Unknown { key, reason } => {
                assert_eq!(key, "a");
                assert!(reason.contains("budget of 1 states"), "{reason}");
            }
            other => panic!("expected unknown, got {other:?}"),
        }
        let budget = Budget {
            max_states_per_key: 2,
        };
        assert_eq!(
            check_kv_history(&history.events, budget).expect("well-formed"),
            Verdict::Linearizable
        );

        // A violation on a later key still wins over an earlier key without a verdict.
        history.sequential("get", "b", Value::Null, json!("never written"));
        let budget = Budget {
            max_states_per_key: 1,
        };
        match check_kv_history(&history.events, budget).expect("well-formed") {
            Verdict::NotLinearizable(violation) => assert_eq!(violation.key, "b"),
            other => panic!("expected a violation on b, got {other:?}"),
        }
    }

    #[test]
    fn many_concurrent_reads_of_one_value_stay_cheap() {
        // Forty overlapping reads of "1" and an overlapping put: without linearizing fitting reads
        // at once, proving the final read impossible would visit every subset of the forty.
        const READERS: u64 = 40;
        let mut history = HistoryBuilder::default();
        history.sequential("put", "a", json!("1"), Value::Null);
        for reader in 1..=READERS {
            history.invoke(reader, "get", "a", Value::Null);
        }
        history.invoke(READERS + 1, "put", "a", json!("2"));
        for reader in 1..=READERS {
            history.ok(reader, json!("1"));
        }
        history
            .ok(READERS + 1, Value::Null)
            .sequential("get", "a", Value::Null, json!("3"));
        let budget = Budget {
            max_states_per_key: 1_000,
        };
        match check_kv_history(&history.events, budget).expect("well-formed") {
            Verdict::NotLinearizable(violation) => {
                let last = violation.operations.len() - 1;
                assert_eq!(violation.longest_prefix.len(), last);
                assert_eq!(violation.stuck, [last]);
            }
            other => panic!("expected a violation within the budget, got {other:?}"),
        }
    }

    #[test]
    fn bad_operations_are_errors_not_panics() {
        let single = |f: &str, input: Value, output: Value| {
            let mut history = HistoryBuilder::default();
            history.sequential(f, "a", input, output);
            check_kv_history(&history.events, Budget::default())
        };
        let error = single("cas", json!([1, 2]), Value::Null).expect_err("unknown f");
        assert!(
            matches!(&error, HistoryError::UnsupportedOperation { f, index: 0, .. } if f == "cas"),
            "{error}"
        );
        assert!(
            error.to_string().contains("get, put, append, delete"),
            "{error}"
        );

        let error = single("put", json!(5), Value::Null).expect_err("number argument");
        assert!(
            matches!(error, HistoryError::InvalidValue { index: 0, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("found 5"), "{error}");

        let error = single("append", Value::Null, Value::Null).expect_err("no argument");
        assert!(
            matches!(error, HistoryError::InvalidValue { .. }),
            "{error}"
        );

        let error = single("get", Value::Null, json!(["x"])).expect_err("list result");
        assert!(
            matches!(error, HistoryError::InvalidValue { index: 1, .. }),
            "{error}"
        );

        let mut keyless = HistoryBuilder::default();
        keyless.sequential("delete", "a", Value::Null, Value::Null);
        for event in &mut keyless.events {
            event.key = None;
        }
        let error = check_kv_history(&keyless.events, Budget::default()).expect_err("missing key");
        assert!(
            matches!(error, HistoryError::MissingKey { index: 0, .. }),
            "{error}"
        );

        let mut unpaired = HistoryBuilder::default();
        unpaired.sequential("get", "a", Value::Null, Value::Null);
        unpaired.events.remove(0);
        let error =
            check_kv_history(&unpaired.events, Budget::default()).expect_err("orphan completion");
        assert!(
            matches!(error, HistoryError::CompletionWithoutInvoke { .. }),
            "{error}"
        );
    }

    #[test]
    fn violation_description_names_prefix_stuck_operations_and_reasons() {
        let mut history = HistoryBuilder::default();
        history
            .sequential("append", "k7", json!("x1"), json!("x1"))
            .invoke(2, "get", "k7", Value::Null)
            .invoke(3, "get", "k7", Value::Null)
            .ok(2, json!("x1x1"))
            .ok(3, Value::Null)
            .invoke(4, "put", "k7", json!("x2"))
            .info(4)
            .invoke(5, "delete", "k7", Value::Null)
            .fail(5);
        let violation = history.expect_violation();
        assert_eq!(violation.longest_prefix, [0]);
        assert_eq!(violation.stuck, [1, 2]);
        let text = violation.to_string();
        let expected = [
            r#"key "k7": no order of its 5 operations agrees with both real time and the key-value model"#,
            r#"the longest linearizable prefix has 1 operation and leaves the key "x1":"#,
            r#"  process 0 append "x1" (ok, events 0-1)"#,
            "none of these can come next:",
            r#"  process 2 get -> "x1x1" (ok, events 2-4): would read "x1""#,
            r#"  process 3 get -> null (ok, events 3-5): would read "x1""#,
        ];
        assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");
    }

    #[test]
    fn long_violation_descriptions_are_truncated() {
        let mut history = HistoryBuilder::default();
        for round in 0..20 {
            history.sequential("append", "a", json!(round.to_string()), Value::Null);
        }
        history.sequential("get", "a", Value::Null, json!("nope"));
        let text = history.expect_violation().to_string();
        assert!(text.contains("  ... 12 operations before these"), "{text}");
        // Header, prefix summary, ellipsis, the shown prefix, "none of these", the stuck read.
        let expected_lines = 3 + DISPLAYED_PREFIX_OPERATIONS_MAX + 2;
        assert_eq!(text.lines().count(), expected_lines, "{text}");
    }

    /// How many clients run concurrently in generated histories.
    const CLIENT_SLOTS: usize = 4;

    /// What a generated operation does and how its client learns of it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        /// Takes effect and completes `ok`.
        Ok,
        /// Does not take effect; completes `fail`.
        Fail,
        /// Takes effect; completes `info`.
        InfoApplied,
        /// Does not take effect; completes `info`.
        InfoNotApplied,
        /// Takes effect; its client never hears back.
        LostApplied,
        /// Does not take effect; its client never hears back.
        LostNotApplied,
    }

    impl Fate {
        fn applied(self) -> bool {
            matches!(self, Fate::Ok | Fate::InfoApplied | Fate::LostApplied)
        }
    }

    /// One generated operation: which client slot runs it, what it does, and its timing.
    #[derive(Debug, Clone)]
    struct PlannedOperation {
        slot: usize,
        f: &'static str,
        key: usize,
        argument: String,
        gap_before_invoke: u64,
        invoke_to_effect: u64,
        effect_to_completion: u64,
        fate: Fate,
    }

    fn planned_operation(key_count: usize) -> impl Strategy<Value = PlannedOperation> {
        let fate = prop_oneof![
            6 => Just(Fate::Ok),
            1 => Just(Fate::Fail),
            1 => Just(Fate::InfoApplied),
            1 => Just(Fate::InfoNotApplied),
            1 => Just(Fate::LostApplied),
            1 => Just(Fate::LostNotApplied),
        ];
        (
            0..CLIENT_SLOTS,
            prop::sample::select(vec!["get", "get", "put", "append", "append", "delete"]),
            0..key_count,
            "[a-z0-9]{0,2}",
            0..4u64,
            0..6u64,
            0..6u64,
            fate,
        )
            .prop_map(
                |(slot, f, key, argument, gap, to_effect, to_completion, fate)| PlannedOperation {
                    slot,
                    f,
                    key,
                    argument,
                    gap_before_invoke: gap,
                    invoke_to_effect: to_effect,
                    effect_to_completion: to_completion,
                    fate,
                },
            )
    }

    fn planned_history() -> impl Strategy<Value = Vec<PlannedOperation>> {
        (2..=3usize)
            .prop_flat_map(|key_count| prop::collection::vec(planned_operation(key_count), 1..40))
    }

    /// Runs the plan against a `BTreeMap`, each operation taking effect at an instant inside its
    /// interval, and records the history clients would see. Returns the events and, for each `ok`
    /// read, the position of its completion event and its key.
    fn simulate(plan: &[PlannedOperation]) -> (Vec<Event>, Vec<(usize, String)>) {
        let mut free_at = [0u64; CLIENT_SLOTS];
        let mut process_of_slot: Vec<u64> = (0..CLIENT_SLOTS as u64).collect();
        let mut next_process = CLIENT_SLOTS as u64;
        // (invoke, effect, completion time, process) per operation.
        let mut timings = Vec::with_capacity(plan.len());
        for operation in plan {
            let invoke = free_at[operation.slot] + operation.gap_before_invoke;
            let effect = invoke + operation.invoke_to_effect;
            let completion = effect + operation.effect_to_completion;
            let process = process_of_slot[operation.slot];
            if matches!(operation.fate, Fate::Ok | Fate::Fail) {
                free_at[operation.slot] = completion + 1;
            } else {
                // Like Jepsen, a client whose operation is in doubt continues as a new process.
                free_at[operation.slot] = invoke + 1;
                process_of_slot[operation.slot] = next_process;
                next_process += 1;
            }
            timings.push((invoke, effect, completion, process));
        }

        let mut effect_order: Vec<usize> = (0..plan.len()).collect();
        effect_order.sort_by_key(|&index| (timings[index].1, index));
        let mut model: BTreeMap<usize, String> = BTreeMap::new();
        let mut results = vec![Value::Null; plan.len()];
        for index in effect_order {
            let operation = &plan[index];
            if !operation.fate.applied() {
                continue;
            }
            match operation.f {
                "get" => {
                    results[index] = model
                        .get(&operation.key)
                        .map_or(Value::Null, |value| Value::from(value.as_str()));
                }
                "put" => {
                    model.insert(operation.key, operation.argument.clone());
                }
                "append" => model
                    .entry(operation.key)
                    .or_default()
                    .push_str(&operation.argument),
                "delete" => {
                    model.remove(&operation.key);
                }
                other => unreachable!("generated unknown operation {other}"),
            }
        }

        // Invokes sort before completions at the same instant, so an operation is ordered before
        // another only if it completed strictly earlier, hence took effect strictly earlier.
        let mut stamped: Vec<(u64, u8, usize, Event)> = Vec::new();
        for (index, operation) in plan.iter().enumerate() {
            let (invoke, _, completion, process) = timings[index];
            let key = format!("k{}", operation.key);
            let argument = match operation.f {
                "put" | "append" => Value::from(operation.argument.as_str()),
                _ => Value::Null,
            };
            let event = |kind, value, time| Event {
                process,
                kind,
                f: operation.f.to_owned(),
                key: Some(key.clone()),
                value,
                time,
            };
            stamped.push((invoke, 0, index, event(EventKind::Invoke, argument, invoke)));
            let completion_event = match operation.fate {
                Fate::Ok => Some(event(EventKind::Ok, results[index].clone(), completion)),
                Fate::Fail => Some(event(EventKind::Fail, Value::Null, completion)),
                Fate::InfoApplied | Fate::InfoNotApplied => {
                    Some(event(EventKind::Info, Value::Null, completion))
                }
                Fate::LostApplied | Fate::LostNotApplied => None,
            };
            if let Some(completion_event) = completion_event {
                stamped.push((completion, 1, index, completion_event));
            }
        }
        stamped.sort_by_key(|(time, class, index, _)| (*time, *class, *index));
        let events: Vec<Event> = stamped.into_iter().map(|(_, _, _, event)| event).collect();
        let ok_reads = events
            .iter()
            .enumerate()
            .filter(|(_, event)| event.kind == EventKind::Ok && event.f == "get")
            .map(|(position, event)| (position, event.key.clone().unwrap_or_default()))
            .collect();
        (events, ok_reads)
    }

    proptest! {
        #[test]
        fn histories_of_linearizable_executions_are_linearizable(plan in planned_history()) {
            let (events, _) = simulate(&plan);
            let verdict = check_kv_history(&events, Budget::default());
            prop_assert_eq!(verdict.expect("generated histories are well-formed"), Verdict::Linearizable);
        }

        #[test]
        fn a_read_of_a_value_never_written_is_caught(
            mut plan in planned_history(),
            choice in any::<prop::sample::Index>(),
        ) {
            // One ok read at the end, so that every plan has a read to corrupt.
            plan.push(PlannedOperation {
                slot: 0,
                f: "get",
                key: 0,
                argument: String::new(),
                gap_before_invoke: 0,
                invoke_to_effect: 0,
                effect_to_completion: 0,
                fate: Fate::Ok,
            });
            let (mut events, ok_reads) = simulate(&plan);
            let (position, key) = &ok_reads[choice.index(ok_reads.len())];
            // Generated values use only [a-z0-9], so no put or append ever produces "#".
            events[*position].value = json!("#");
            let verdict = check_kv_history(&events, Budget::default())
                .expect("generated histories are well-formed");
            match verdict {
                Verdict::NotLinearizable(violation) => {
                    prop_assert_eq!(&violation.key, key);
                    prop_assert!(violation
                        .operations
                        .iter()
                        .any(|operation| operation.complete_index == Some(*position)));
                }
                other => prop_assert!(false, "corrupted history passed as {:?}", other),
            }
        }
    }
}
