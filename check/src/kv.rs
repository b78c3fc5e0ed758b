//! The key-value model: `get`, `put`, `append` and `delete` on string keys.
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
//! operation (or one that never completed) took effect at some point after its invoke or never.
//! Reads that did not complete `ok` constrain nothing and are dropped.
//!
//! Keys are independent, so by default each key is checked on its own
//! ([`CheckOptions::partition`]); checked whole, the search's state holds every key at once.
//! Values are interned, so a state is one small integer either way (see the crate docs).
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
//!         assert_eq!(violation.failing, 1);
//!         assert!(violation.to_string().contains(r#"would read "a""#));
//!     }
//!     other => panic!("expected a violation, got {other:?}"),
//! }
//! # Ok::<(), synod_check::history::HistoryError>(())
//! ```

use serde_json::Value;

pub use crate::checker::{Budget, Verdict, Violation};
use crate::checker::{CheckOptions, check};
use crate::fast_hash::FastHashMap;
use crate::history::{Event, HistoryError, Operation, Outcome};
use crate::keyed_state::{ABSENT, CellStates};
use crate::model::{Interpretation, Model, SequentialSpecification};
use crate::strings::Strings;

/// The model's name in messages.
const MODEL_NAME: &str = "key-value";

/// The operation names the model has, for error messages.
const SUPPORTED_OPERATIONS: &str = "get, put, append, delete";

/// Checks whether a key-value history is linearizable, key by key on the calling thread, within
/// `budget`.
pub fn check_kv_history(events: &[Event], budget: Budget) -> Result<Verdict, HistoryError> {
    let options = CheckOptions {
        budget,
        ..CheckOptions::default()
    };
    Ok(check(&KvModel, events, &options)?.verdict)
}

/// The key-value model (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct KvModel;

/// One key-value operation as the model reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// A read that returned this value (`None`: the key was absent).
    Get {
        /// The key read.
        key: String,
        /// What it returned.
        read: Option<String>,
    },
    /// Sets the key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Appends to the key's value.
    Append {
        /// The key.
        key: String,
        /// What to append.
        suffix: String,
    },
    /// Removes the key.
    Delete {
        /// The key.
        key: String,
    },
}

impl KvCommand {
    /// The key it acts on.
    fn key(&self) -> &str {
        match self {
            KvCommand::Get { key, .. }
            | KvCommand::Put { key, .. }
            | KvCommand::Append { key, .. }
            | KvCommand::Delete { key } => key,
        }
    }
}

/// A key-value command compiled for the search: keys are cells, values are interned ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvInput {
    /// Reads `value` from `cell`.
    Get {
        /// The key's cell.
        cell: u32,
        /// The value id read.
        value: u32,
    },
    /// Sets `cell` to `value`.
    Put {
        /// The key's cell.
        cell: u32,
        /// The value id written.
        value: u32,
    },
    /// Appends `suffix` to `cell`.
    Append {
        /// The key's cell.
        cell: u32,
        /// The value id of the suffix.
        suffix: u32,
    },
    /// Empties `cell`.
    Delete {
        /// The key's cell.
        cell: u32,
    },
}

/// The sequential key-value map over one or more keys; states are [`CellStates`] ids.
#[derive(Debug)]
pub struct KvSpecification {
    /// The key of each cell.
    keys: Vec<String>,
    /// Interned values, appended to without building strings.
    values: Strings,
    /// The states.
    states: CellStates,
}

impl Model for KvModel {
    type Command = KvCommand;
    type Specification = KvSpecification;

    fn name(&self) -> &'static str {
        MODEL_NAME
    }

    fn interpret(&self, operation: &Operation) -> Result<Interpretation<KvCommand>, HistoryError> {
        let index = operation.invoke_index;
        let string_argument = |operation: &Operation| match &operation.input {
            Value::String(value) => Ok(value.clone()),
            other => Err(HistoryError::InvalidValue {
                index,
                f: operation.f.clone(),
                message: format!("argument must be a string, found {other}"),
            }),
        };
        let Some(key) = operation.key.clone() else {
            if !matches!(operation.f.as_str(), "get" | "put" | "append" | "delete") {
                return Err(unsupported(operation));
            }
            return Err(HistoryError::MissingKey {
                index,
                f: operation.f.clone(),
            });
        };
        let command = match operation.f.as_str() {
            "get" => match &operation.output {
                // Only a read that returned constrains the history.
                None => None,
                Some(Value::Null) => Some(KvCommand::Get {
                    key: key.clone(),
                    read: None,
                }),
                Some(Value::String(read)) => Some(KvCommand::Get {
                    key: key.clone(),
                    read: Some(read.clone()),
                }),
                Some(other) => {
                    return Err(HistoryError::InvalidValue {
                        index: operation.complete_index.unwrap_or(index),
                        f: operation.f.clone(),
                        message: format!("result must be a string or null, found {other}"),
                    });
                }
            },
            "put" => Some(KvCommand::Put {
                key: key.clone(),
                value: string_argument(operation)?,
            }),
            "append" => Some(KvCommand::Append {
                key: key.clone(),
                suffix: string_argument(operation)?,
            }),
            "delete" => Some(KvCommand::Delete { key: key.clone() }),
            _ => return Err(unsupported(operation)),
        };
        // A failed operation never took effect, so it constrains nothing either.
        let command = command.filter(|_| operation.outcome != Outcome::Fail);
        Ok(Interpretation {
            partition: key,
            command,
        })
    }

    fn specification(&self, commands: &[&KvCommand]) -> (KvSpecification, Vec<KvInput>) {
        let mut cells: FastHashMap<&str, u32> = FastHashMap::default();
        let mut keys = Vec::new();
        let mut values = Strings::new();
        let mut inputs = Vec::with_capacity(commands.len());
        for command in commands {
            let key = command.key();
            let cell = *cells.entry(key).or_insert_with(|| {
                keys.push(key.to_owned());
                (keys.len() - 1) as u32
            });
            inputs.push(match command {
                KvCommand::Get { read, .. } => KvInput::Get {
                    cell,
                    value: read.as_deref().map_or(ABSENT, |read| values.intern(read)),
                },
                KvCommand::Put { value, .. } => KvInput::Put {
                    cell,
                    value: values.intern(value),
                },
                KvCommand::Append { suffix, .. } => KvInput::Append {
                    cell,
                    suffix: values.intern(suffix),
                },
                KvCommand::Delete { .. } => KvInput::Delete { cell },
            });
        }
        let specification = KvSpecification {
            states: CellStates::new(keys.len()),
            keys,
            values,
        };
        (specification, inputs)
    }
}

/// The error for an operation the model does not have.
fn unsupported(operation: &Operation) -> HistoryError {
    HistoryError::UnsupportedOperation {
        index: operation.invoke_index,
        model: MODEL_NAME,
        f: operation.f.clone(),
        supported: SUPPORTED_OPERATIONS,
    }
}

impl KvSpecification {
    /// A value id as JSON: the string, or `null` when absent.
    fn value_json(&self, value: u32) -> String {
        match self.values.resolve(value) {
            Some(text) => Value::from(text).to_string(),
            None => "null".to_owned(),
        }
    }

    /// A value id in a description of the state: the JSON string, or `absent`.
    fn value_description(&self, value: u32) -> String {
        match self.values.resolve(value) {
            Some(text) => Value::from(text).to_string(),
            None => "absent".to_owned(),
        }
    }
}

impl SequentialSpecification for KvSpecification {
    type State = u32;
    type Input = KvInput;

    fn initial_state(&mut self) -> u32 {
        self.states.initial()
    }

    fn step(&mut self, &state: &u32, input: &KvInput) -> Option<u32> {
        match *input {
            KvInput::Get { cell, value } => {
                (self.states.get(state, cell) == value).then_some(state)
            }
            KvInput::Put { cell, value } => Some(self.states.set(state, cell, value)),
            KvInput::Append { cell, suffix } => {
                let appended = self.values.append(self.states.get(state, cell), suffix);
                Some(self.states.set(state, cell, appended))
            }
            KvInput::Delete { cell } => Some(self.states.set(state, cell, ABSENT)),
        }
    }

    fn is_read_only(&self, input: &KvInput) -> bool {
        matches!(input, KvInput::Get { .. })
    }

    fn describe_state(&self, &state: &u32) -> String {
        if self.states.cell_count() == 1 {
            return format!(
                "the key {}",
                self.value_description(self.states.get(state, 0))
            );
        }
        let cells: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(cell, key)| {
                let value = self.states.get(state, cell as u32);
                format!("{key:?}: {}", self.value_description(value))
            })
            .collect();
        format!("the keys {{{}}}", cells.join(", "))
    }

    fn explain_refusal(&self, &state: &u32, input: &KvInput) -> String {
        match *input {
            KvInput::Get { cell, .. } => {
                let read = self.value_json(self.states.get(state, cell));
                if self.states.cell_count() == 1 {
                    format!("would read {read}")
                } else {
                    format!("would read {read} from key {:?}", self.keys[cell as usize])
                }
            }
            // Writes always fit; the search never reports one as refused.
            KvInput::Put { .. } | KvInput::Append { .. } | KvInput::Delete { .. } => {
                "cannot come next".to_owned()
            }
        }
    }
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
            max_states_per_partition: 1,
            ..Budget::default()
        };
        match check_kv_history(&history.events, budget).expect("well-formed") {
            Verdict::Unknown { key, reason } => {
                assert_eq!(key, "a");
                assert!(reason.contains("budget of 1 states"), "{reason}");
            }
            other => panic!("expected unknown, got {other:?}"),
        }
        let budget = Budget {
            max_states_per_partition: 2,
            ..Budget::default()
        };
        assert_eq!(
            check_kv_history(&history.events, budget).expect("well-formed"),
            Verdict::Linearizable
        );

        // A violation on a later key still wins over an earlier key without a verdict.
        history.sequential("get", "b", Value::Null, json!("never written"));
        let budget = Budget {
            max_states_per_partition: 1,
            ..Budget::default()
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
            max_states_per_partition: 1_000,
            ..Budget::default()
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
            r#"the history: no order of its 5 operations agrees with both real time and the key-value model"#,
            r#"the longest linearizable prefix has 1 operation and leaves the key "x1":"#,
            r#"  process 0 append "k7" "x1" (ok, events 0-1)"#,
            "none of these can come next:",
            r#"  process 2 get "k7" -> "x1x1" (ok, events 2-4): would read "x1""#,
            r#"  process 3 get "k7" -> null (ok, events 3-5): would read "x1""#,
            r#"the operation that cannot be placed: process 2 get "k7" -> "x1x1" (ok, events 2-4)"#,
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
        // Header, prefix summary, ellipsis, the eight operations shown, "none of these", the stuck
        // read, the operation that cannot be placed.
        let expected_lines = 3 + 8 + 3;
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
        fn partitioning_and_threads_never_change_the_verdict(
            plan in planned_history(),
            corrupt in any::<bool>(),
            choice in any::<prop::sample::Index>(),
        ) {
            let (mut events, ok_reads) = simulate(&plan);
            if corrupt && !ok_reads.is_empty() {
                let (position, _) = &ok_reads[choice.index(ok_reads.len())];
                events[*position].value = json!("#");
            }
            let verdict = |partition, threads| {
                let options = CheckOptions { partition, threads, ..CheckOptions::default() };
                check(&KvModel, &events, &options).expect("well-formed").verdict
            };
            let by_key = verdict(true, 1);
            prop_assert_eq!(&verdict(true, 2), &by_key);
            let whole = verdict(false, 1);
            prop_assert_eq!(
                matches!(whole, Verdict::Linearizable),
                matches!(by_key, Verdict::Linearizable)
            );
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
