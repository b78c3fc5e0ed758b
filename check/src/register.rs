//! The compare-and-set register model: `read`, `write` and `cas`, as in Jepsen's register tests.
//!
//! # The model
//!
//! A register holding one value, initially `null` (Jepsen's `nil`). Values are any JSON values,
//! compared by their JSON text (so `3` and `"3"` differ). An operation may carry a `key`: each key
//! is its own register, checked on its own unless partitioning is off; Jepsen's single-register
//! histories have no key.
//!
//! | `f`     | invoke `value`     | `ok` `value`        | effect |
//! |---------|--------------------|---------------------|--------|
//! | `read`  | not interpreted    | the value read      | none |
//! | `write` | the value to write | not interpreted     | sets the register |
//! | `cas`   | `[old, new]`       | not interpreted     | if the register holds `old`, sets it to `new`; `ok` only then |
//!
//! Jepsen's semantics for outcomes: `fail` means the operation did not happen (a `cas` whose
//! comparison failed is reported `fail`, and is dropped); `info` means it may have happened at
//! any time after its invoke, or never. A `cas` that did happen succeeded, so it needs the
//! register to hold `old` at its linearization point; an uncertain `cas` that finds another
//! value is the same as one that never happened, so requiring `old` loses nothing.
//!
//! # Example
//!
//! ```
//! use synod_check::format::{parse_history, Format};
//! use synod_check::register::RegisterModel;
//! use synod_check::{check, CheckOptions, Verdict};
//!
//! // Jepsen's etcd log lines: process 1 writes 3, then process 2's cas from 4 succeeds.
//! let log = "INFO  jepsen.util - 1\t:invoke\t:write\t3\n\
//!            INFO  jepsen.util - 1\t:ok\t:write\t3\n\
//!            INFO  jepsen.util - 2\t:invoke\t:cas\t[4 0]\n\
//!            INFO  jepsen.util - 2\t:ok\t:cas\t[4 0]\n";
//! let history = parse_history(log, "etcd.log", Some(Format::Jepsen))?;
//! let report = check(&RegisterModel, &history.events, &CheckOptions::default())?;
//! let Verdict::NotLinearizable(violation) = report.verdict else {
//!     panic!("a cas from 4 cannot succeed on a register holding 3");
//! };
//! assert_eq!(violation.state_after_prefix, "the register 3");
//! assert_eq!(violation.refusals, ["needs 4 but the register holds 3"]);
//! # Ok::<(), synod_check::HistoryError>(())
//! ```

use serde_json::Value;

use crate::fast_hash::FastHashMap;
use crate::history::{HistoryError, Operation, Outcome};
use crate::keyed_state::{ABSENT, CellStates, Values};
use crate::model::{Interpretation, Model, SequentialSpecification};

/// The model's name in messages.
const MODEL_NAME: &str = "compare-and-set register";

/// The operation names the model has, for error messages.
const SUPPORTED_OPERATIONS: &str = "read, write, cas";

/// The compare-and-set register model (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct RegisterModel;

/// One register operation as the model reads it; values are JSON (`null` is nil).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterCommand {
    /// A read that returned `value`.
    Read {
        /// The register's key, if any.
        key: Option<String>,
        /// What it returned.
        value: Value,
    },
    /// Sets the register to `value`.
    Write {
        /// The register's key, if any.
        key: Option<String>,
        /// The value written.
        value: Value,
    },
    /// Sets the register to `new` if it holds `old`.
    Cas {
        /// The register's key, if any.
        key: Option<String>,
        /// The value it must hold.
        old: Value,
        /// The value it then holds.
        new: Value,
    },
}

impl RegisterCommand {
    /// The key it acts on.
    fn key(&self) -> Option<&str> {
        match self {
            RegisterCommand::Read { key, .. }
            | RegisterCommand::Write { key, .. }
            | RegisterCommand::Cas { key, .. } => key.as_deref(),
        }
    }
}

/// A register command compiled for the search: registers are cells, values are interned ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterInput {
    /// Reads `value` from `cell`.
    Read {
        /// The register's cell.
        cell: u32,
        /// The value id read.
        value: u32,
    },
    /// Sets `cell` to `value`.
    Write {
        /// The register's cell.
        cell: u32,
        /// The value id written.
        value: u32,
    },
    /// Sets `cell` from `old` to `new`.
    Cas {
        /// The register's cell.
        cell: u32,
        /// The value id it must hold.
        old: u32,
        /// The value id it then holds.
        new: u32,
    },
}

/// The sequential registers, one cell per key; states are [`CellStates`] ids.
#[derive(Debug)]
pub struct RegisterSpecification {
    /// The key of each cell (`None`: the history's keyless register).
    keys: Vec<Option<String>>,
    /// Interned values (by JSON text).
    values: Values,
    /// The states.
    states: CellStates,
}

impl Model for RegisterModel {
    type Command = RegisterCommand;
    type Specification = RegisterSpecification;

    fn name(&self) -> &'static str {
        MODEL_NAME
    }

    fn interpret(
        &self,
        operation: &Operation,
    ) -> Result<Interpretation<RegisterCommand>, HistoryError> {
        let key = operation.key.clone();
        let command = match operation.f.as_str() {
            "read" => operation
                .output
                .as_ref()
                .map(|value| RegisterCommand::Read {
                    key: key.clone(),
                    value: value.clone(),
                }),
            "write" => Some(RegisterCommand::Write {
                key: key.clone(),
                value: operation.input.clone(),
            }),
            "cas" => {
                let Value::Array(pair) = &operation.input else {
                    return Err(bad_cas(operation));
                };
                let [old, new] = pair.as_slice() else {
                    return Err(bad_cas(operation));
                };
                Some(RegisterCommand::Cas {
                    key: key.clone(),
                    old: old.clone(),
                    new: new.clone(),
                })
            }
            _ => {
                return Err(HistoryError::UnsupportedOperation {
                    index: operation.invoke_index,
                    model: MODEL_NAME,
                    f: operation.f.clone(),
                    supported: SUPPORTED_OPERATIONS,
                });
            }
        };
        // Jepsen's semantics: a failed operation (a cas whose comparison failed, a read that
        // timed out) did not happen, so it constrains nothing.
        let command = command.filter(|_| operation.outcome != Outcome::Fail);
        Ok(Interpretation {
            partition: key.unwrap_or_default(),
            command,
        })
    }

    fn specification(
        &self,
        commands: &[&RegisterCommand],
    ) -> (RegisterSpecification, Vec<RegisterInput>) {
        let mut cells: FastHashMap<Option<&str>, u32> = FastHashMap::default();
        let mut keys = Vec::new();
        let mut values = Values::default();
        let mut intern = |value: &Value| match value {
            Value::Null => ABSENT,
            other => values.intern(&other.to_string()),
        };
        let mut inputs = Vec::with_capacity(commands.len());
        for command in commands {
            let key = command.key();
            let cell = *cells.entry(key).or_insert_with(|| {
                keys.push(key.map(str::to_owned));
                (keys.len() - 1) as u32
            });
            inputs.push(match command {
                RegisterCommand::Read { value, .. } => RegisterInput::Read {
                    cell,
                    value: intern(value),
                },
                RegisterCommand::Write { value, .. } => RegisterInput::Write {
                    cell,
                    value: intern(value),
                },
                RegisterCommand::Cas { old, new, .. } => RegisterInput::Cas {
                    cell,
                    old: intern(old),
                    new: intern(new),
                },
            });
        }
        let specification = RegisterSpecification {
            states: CellStates::new(keys.len()),
            keys,
            values,
        };
        (specification, inputs)
    }
}

/// The error for a `cas` whose argument is not `[old, new]`.
fn bad_cas(operation: &Operation) -> HistoryError {
    HistoryError::InvalidValue {
        index: operation.invoke_index,
        f: operation.f.clone(),
        message: format!(
            "argument must be a pair [old, new], found {}",
            operation.input
        ),
    }
}

impl RegisterSpecification {
    /// A value id as text: its JSON, with `null` for nil.
    fn value_text(&self, value: u32) -> &str {
        self.values.resolve(value).unwrap_or("null")
    }

    /// "the register" or `the register "k"`.
    fn register_name(&self, cell: u32) -> String {
        match (&self.keys[cell as usize], self.keys.len()) {
            (Some(key), 2..) => format!("the register {key:?}"),
            _ => "the register".to_owned(),
        }
    }
}

impl SequentialSpecification for RegisterSpecification {
    type State = u32;
    type Input = RegisterInput;

    fn initial_state(&mut self) -> u32 {
        self.states.initial()
    }

    fn step(&mut self, &state: &u32, input: &RegisterInput) -> Option<u32> {
        match *input {
            RegisterInput::Read { cell, value } => {
                (self.states.get(state, cell) == value).then_some(state)
            }
            RegisterInput::Write { cell, value } => Some(self.states.set(state, cell, value)),
            RegisterInput::Cas { cell, old, new } => {
                (self.states.get(state, cell) == old).then(|| self.states.set(state, cell, new))
            }
        }
    }

    fn is_read_only(&self, input: &RegisterInput) -> bool {
        matches!(input, RegisterInput::Read { .. })
    }

    fn describe_state(&self, &state: &u32) -> String {
        if self.states.cell_count() == 1 {
            return format!(
                "{} {}",
                self.register_name(0),
                self.value_text(self.states.get(state, 0))
            );
        }
        let cells: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(cell, key)| {
                let value = self.value_text(self.states.get(state, cell as u32));
                match key {
                    Some(key) => format!("{key:?}: {value}"),
                    None => format!("(no key): {value}"),
                }
            })
            .collect();
        format!("the registers {{{}}}", cells.join(", "))
    }

    fn explain_refusal(&self, &state: &u32, input: &RegisterInput) -> String {
        match *input {
            RegisterInput::Read { cell, .. } => {
                let held = self.value_text(self.states.get(state, cell));
                match self.states.cell_count() {
                    1 => format!("would read {held}"),
                    _ => format!("would read {held} from {}", self.register_name(cell)),
                }
            }
            RegisterInput::Cas { cell, old, .. } => format!(
                "needs {} but {} holds {}",
                self.value_text(old),
                self.register_name(cell),
                self.value_text(self.states.get(state, cell))
            ),
            // Writes always fit; the search never reports one as refused.
            RegisterInput::Write { .. } => "cannot come next".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::checker::{CheckOptions, Verdict, check};
    use crate::history::{Event, EventKind};

    /// Builds a register history one event at a time; times are the event positions.
    #[derive(Default)]
    struct History {
        events: Vec<Event>,
    }

    impl History {
        fn event(&mut self, process: u64, kind: EventKind, f: &str, value: Value) -> &mut Self {
            let time = self.events.len() as u64;
            self.events.push(Event {
                process,
                kind,
                f: f.to_owned(),
                key: None,
                value,
                time,
            });
            self
        }

        fn invoke(&mut self, process: u64, f: &str, value: Value) -> &mut Self {
            self.event(process, EventKind::Invoke, f, value)
        }

        fn ok(&mut self, process: u64, f: &str, value: Value) -> &mut Self {
            self.event(process, EventKind::Ok, f, value)
        }

        fn whole(&mut self, f: &str, input: Value, output: Value) -> &mut Self {
            self.invoke(0, f, input).ok(0, f, output)
        }

        fn verdict(&self) -> Verdict {
            check(&RegisterModel, &self.events, &CheckOptions::default())
                .expect("well-formed")
                .verdict
        }
    }

    #[test]
    fn sequential_reads_writes_and_cas_are_linearizable() {
        let mut history = History::default();
        history
            .whole("read", Value::Null, Value::Null)
            .whole("write", json!(1), json!(1))
            .whole("cas", json!([1, 2]), json!([1, 2]))
            .whole("read", Value::Null, json!(2))
            .whole("cas", json!([null, 5]), Value::Null);
        // The last cas from nil cannot succeed on 2, so it must be reported fail to pass.
        assert!(matches!(history.verdict(), Verdict::NotLinearizable(_)));
        history.events.pop();
        history.event(0, EventKind::Fail, "cas", json!([null, 5]));
        assert_eq!(history.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn a_failed_cas_did_not_happen() {
        // Jepsen reports a cas whose comparison failed as fail: it never took effect, so it
        // constrains nothing even when the register did hold `old`.
        let mut history = History::default();
        history
            .whole("write", json!(1), json!(1))
            .invoke(1, "cas", json!([1, 2]))
            .event(1, EventKind::Fail, "cas", json!([1, 2]))
            .whole("read", Value::Null, json!(1));
        assert_eq!(history.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn an_uncertain_cas_may_land_late_or_never() {
        let mut history = History::default();
        history
            .whole("write", json!(1), json!(1))
            .invoke(1, "cas", json!([1, 2]))
            .event(1, EventKind::Info, "cas", Value::Null)
            .whole("read", Value::Null, json!(1))
            .whole("read", Value::Null, json!(2));
        assert_eq!(history.verdict(), Verdict::Linearizable);
        // But it lands at most once: 2 -> 1 -> 2 needs another write of 1.
        history
            .whole("write", json!(1), json!(1))
            .whole("read", Value::Null, json!(2));
        let Verdict::NotLinearizable(violation) = history.verdict() else {
            panic!("the second read of 2 needs the uncertain cas twice");
        };
        assert_eq!(violation.state_after_prefix, "the register 1");
        assert_eq!(violation.refusals, ["would read 1"]);
        assert_eq!(violation.failing, violation.operations.len() - 1);
    }

    #[test]
    fn concurrent_cas_chain_is_reordered() {
        // Three overlapping operations whose only order is write 1, cas 1->2, cas 2->3.
        let mut history = History::default();
        history
            .invoke(1, "cas", json!([2, 3]))
            .invoke(2, "cas", json!([1, 2]))
            .invoke(3, "write", json!(1))
            .ok(1, "cas", json!([2, 3]))
            .ok(2, "cas", json!([1, 2]))
            .ok(3, "write", json!(1))
            .whole("read", Value::Null, json!(3));
        assert_eq!(history.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn keyed_registers_are_independent_and_named_in_descriptions() {
        let keyed = |key: &str, process, kind, f: &str, value: Value, time| Event {
            process,
            kind,
            f: f.to_owned(),
            key: Some(key.to_owned()),
            value,
            time,
        };
        let events = [
            keyed("a", 1, EventKind::Invoke, "write", json!(1), 0),
            keyed("a", 1, EventKind::Ok, "write", json!(1), 1),
            keyed("b", 1, EventKind::Invoke, "read", Value::Null, 2),
            keyed("b", 1, EventKind::Ok, "read", json!(1), 3),
        ];
        for partition in [true, false] {
            let options = CheckOptions {
                partition,
                ..CheckOptions::default()
            };
            let report = check(&RegisterModel, &events, &options).expect("well-formed");
            let Verdict::NotLinearizable(violation) = report.verdict else {
                panic!("b was never written");
            };
            assert_eq!(report.partitions, if partition { 2 } else { 1 });
            if partition {
                assert_eq!(violation.key, "b");
                assert_eq!(violation.refusals, ["would read null"]);
            } else {
                assert_eq!(
                    violation.state_after_prefix,
                    r#"the registers {"a": 1, "b": null}"#
                );
                assert_eq!(
                    violation.refusals,
                    [r#"would read null from the register "b""#]
                );
            }
        }
    }

    #[test]
    fn malformed_operations_are_errors() {
        let mut history = History::default();
        history.whole("cas", json!(3), Value::Null);
        let error = check(&RegisterModel, &history.events, &CheckOptions::default())
            .expect_err("cas needs a pair");
        assert!(error.to_string().contains("[old, new]"), "{error}");
        let mut history = History::default();
        history.whole("append", json!("x"), Value::Null);
        let error = check(&RegisterModel, &history.events, &CheckOptions::default())
            .expect_err("no append on a register");
        assert!(error.to_string().contains("read, write, cas"), "{error}");
    }

    /// One generated operation: the client slot that runs it, what it does, its timing, and
    /// whether its client hears back.
    #[derive(Debug, Clone)]
    struct Planned {
        slot: usize,
        f: &'static str,
        argument: (u8, u8),
        gap: u64,
        to_effect: u64,
        to_completion: u64,
        reported: bool,
    }

    fn planned() -> impl Strategy<Value = Vec<Planned>> {
        let operation = (
            0..3usize,
            prop::sample::select(vec!["read", "read", "write", "cas", "cas"]),
            (0..3u8, 0..3u8),
            0..3u64,
            0..5u64,
            0..5u64,
            prop::bool::weighted(0.85),
        )
            .prop_map(
                |(slot, f, argument, gap, to_effect, to_completion, reported)| Planned {
                    slot,
                    f,
                    argument,
                    gap,
                    to_effect,
                    to_completion,
                    reported,
                },
            );
        prop::collection::vec(operation, 1..30)
    }

    /// Runs the plan against one register, each operation taking effect at an instant inside
    /// its interval; returns the events and the positions of the `ok` reads.
    fn simulate(plan: &[Planned]) -> (Vec<Event>, Vec<usize>) {
        let mut free_at = [0u64; 3];
        let mut process_of_slot: Vec<u64> = (0..3).collect();
        let mut timings = Vec::new();
        for operation in plan {
            let invoke = free_at[operation.slot] + operation.gap;
            let effect = invoke + operation.to_effect;
            let completion = effect + operation.to_completion;
            let process = process_of_slot[operation.slot];
            if operation.reported {
                free_at[operation.slot] = completion + 1;
            } else {
                // A client that never hears back goes on as a new process, as in Jepsen.
                free_at[operation.slot] = invoke + 1;
                process_of_slot[operation.slot] += 3;
            }
            timings.push((invoke, effect, completion, process));
        }
        let mut order: Vec<usize> = (0..plan.len()).collect();
        order.sort_by_key(|&index| (timings[index].1, index));
        let mut register: Option<u8> = None;
        // Per operation: the kind of completion and its value.
        let mut outcomes = vec![(EventKind::Ok, Value::Null); plan.len()];
        for index in order {
            let operation = &plan[index];
            let (old, new) = operation.argument;
            outcomes[index] = match operation.f {
                "read" => (EventKind::Ok, register.map_or(Value::Null, Value::from)),
                "write" => {
                    register = Some(old);
                    (EventKind::Ok, json!(old))
                }
                _ if register == Some(old) => {
                    register = Some(new);
                    (EventKind::Ok, json!([old, new]))
                }
                _ => (EventKind::Fail, json!([old, new])),
            };
        }
        let mut stamped = Vec::new();
        for (index, operation) in plan.iter().enumerate() {
            let (invoke, _, completion, process) = timings[index];
            let (old, new) = operation.argument;
            let argument = match operation.f {
                "read" => Value::Null,
                "write" => json!(old),
                _ => json!([old, new]),
            };
            let event = |kind, value, time| Event {
                process,
                kind,
                f: operation.f.to_owned(),
                key: None,
                value,
                time,
            };
            stamped.push((invoke, 0, index, event(EventKind::Invoke, argument, invoke)));
            if operation.reported {
                let (kind, value) = outcomes[index].clone();
                stamped.push((completion, 1, index, event(kind, value, completion)));
            }
        }
        stamped.sort_by_key(|(time, class, index, _)| (*time, *class, *index));
        let events: Vec<Event> = stamped.into_iter().map(|(_, _, _, event)| event).collect();
        let ok_reads = events
            .iter()
            .enumerate()
            .filter(|(_, event)| event.kind == EventKind::Ok && event.f == "read")
            .map(|(position, _)| position)
            .collect();
        (events, ok_reads)
    }

    proptest! {
        #[test]
        fn executions_of_a_real_register_are_linearizable(plan in planned()) {
            let (events, _) = simulate(&plan);
            let report = check(&RegisterModel, &events, &CheckOptions::default());
            prop_assert_eq!(report.expect("well-formed").verdict, Verdict::Linearizable);
        }

        #[test]
        fn a_read_of_a_value_never_written_is_caught(
            mut plan in planned(),
            choice in any::<prop::sample::Index>(),
        ) {
            plan.push(Planned {
                slot: 0,
                f: "read",
                argument: (0, 0),
                gap: 0,
                to_effect: 0,
                to_completion: 0,
                reported: true,
            });
            let (mut events, ok_reads) = simulate(&plan);
            let position = ok_reads[choice.index(ok_reads.len())];
            // Generated values are 0 to 2, so nobody wrote 9.
            events[position].value = json!(9);
            let report = check(&RegisterModel, &events, &CheckOptions::default());
            match report.expect("well-formed").verdict {
                Verdict::NotLinearizable(violation) => {
                    prop_assert!(violation
                        .operations
                        .iter()
                        .any(|operation| operation.complete_index == Some(position)));
                }
                other => prop_assert!(false, "a read of 9 passed as {:?}", other),
            }
        }
    }
}
