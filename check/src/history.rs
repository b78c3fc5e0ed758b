//! Synod's one history format: what clients did, as JSON Lines.
//!
//! Every workload, simulated or real, records a *history*: for each operation a client performs, an
//! `invoke` event when the client sends it and one completion event when the client learns its
//! fate. The simulator, real-process runs and `synod check` all read and write this one format. It
//! is modelled on Jepsen's history so that other tools can read it.
//!
//! # The format
//!
//! A history is a UTF-8 text file in [JSON Lines](https://jsonlines.org/): one JSON object per
//! line, each object one event, **in the order the events happened**. Lines are separated by `\n`
//! (a `\r` before it is tolerated). Blank lines are ignored. A line longer than
//! [`EVENT_LINE_BYTES_MAX`] bytes is rejected.
//!
//! ```json
//! {"process":3,"type":"invoke","f":"append","key":"k7","value":"x3y","time":1200345}
//! {"process":3,"type":"ok","f":"append","key":"k7","value":"x3y","time":1203999}
//! {"process":2,"type":"invoke","f":"get","key":"k7","value":null,"time":1212000}
//! {"process":2,"type":"ok","f":"get","key":"k7","value":"x3y","time":1290000}
//! ```
//!
//! ## Fields
//!
//! | field     | JSON type                                  | required | meaning |
//! |-----------|--------------------------------------------|----------|---------|
//! | `process` | non-negative integer (fits in 64 bits)     | yes      | the client that performed the operation |
//! | `type`    | `"invoke"`, `"ok"`, `"fail"` or `"info"`   | yes      | which event this is (below) |
//! | `f`       | string                                     | yes      | the operation's name, e.g. `"get"`, `"put"`, `"append"`, `"delete"` |
//! | `key`     | string                                     | no       | the key the operation acts on; absent for operations without one |
//! | `value`   | any JSON value                             | no       | on `invoke` the argument, on `ok` the result; absent means `null` |
//! | `time`    | non-negative integer (fits in 64 bits)     | yes      | nanoseconds on one monotonic clock shared by the whole history (virtual time in the simulator) |
//!
//! Readers ignore fields they do not know: later models add fields (transaction operations,
//! revisions, lease ids) without breaking older readers. Writers emit the fields in the order of
//! the table, omit `key` when there is none, and always write `value` (as `null` when there is
//! none).
//!
//! ## Event types
//!
//! - `invoke`: the client sent the operation. `value` is its argument (`null` if it has none).
//! - `ok`: the operation took effect exactly once, at some instant between its invoke and this
//!   event. `value` is its result; a read returns what it read (`null` for a missing key).
//! - `fail`: the operation definitely did not take effect. `value` is not interpreted.
//! - `info`: the client does not know whether the operation took effect (a timeout, a crash); it
//!   may take effect at any instant after its invoke, even after this event, or never. `value` is
//!   not interpreted.
//!
//! ## Rules a history obeys
//!
//! 1. A process has at most one operation outstanding: after an `invoke`, that process's next
//!    event is the operation's completion (`ok`, `fail` or `info`), with the same `f` and `key`.
//! 2. An `invoke` with no completion by the end of the history is treated as `info`.
//! 3. After `info` the process may invoke again (its earlier operation may still land later).
//!    Jepsen instead retires such a process and continues under a fresh id; both are fine here.
//! 4. Events are in the order they happened, so `time` never decreases from one line to the next.
//!    Checkers derive real-time order ("this operation completed before that one was invoked")
//!    from the order of the lines.
//!
//! [`read_jsonl`] checks each line's syntax and types; [`pair_operations`] checks the rules and
//! turns events into [`Operation`]s, the unit checkers work on.
//!
//! # Example
//!
//! ```
//! use synod_check::history::{pair_operations, read_jsonl, to_jsonl_line, Outcome};
//!
//! let text = r#"
//! {"process":3,"type":"invoke","f":"append","key":"k7","value":"x3y","time":1200345}
//! {"process":3,"type":"ok","f":"append","key":"k7","value":"x3y","time":1203999}
//! {"process":2,"type":"invoke","f":"get","key":"k7","value":null,"time":1212000,"note":"ignored"}
//! {"process":2,"type":"ok","f":"get","key":"k7","value":"x3y","time":1290000}
//! {"process":1,"type":"invoke","f":"delete","key":"k7","time":1300000}
//! "#;
//! let events = read_jsonl(text.as_bytes(), "example.jsonl")?;
//! assert_eq!(events.len(), 5);
//! // Unknown fields are dropped; a missing `value` reads as null and is written back explicitly.
//! assert_eq!(
//!     to_jsonl_line(&events[2]),
//!     r#"{"process":2,"type":"invoke","f":"get","key":"k7","value":null,"time":1212000}"#
//! );
//!
//! let operations = pair_operations(&events)?;
//! assert_eq!(operations.len(), 3);
//! assert_eq!(operations[1].output, Some(serde_json::json!("x3y")));
//! // The delete never completed, so it may or may not have happened.
//! assert_eq!(operations[2].outcome, Outcome::Info);
//! assert_eq!(operations[2].complete_index, None);
//!
//! // A malformed line is reported with its file and line number.
//! let error = read_jsonl("\n{\"process\":1}\n".as_bytes(), "broken.jsonl").unwrap_err();
//! assert!(error.to_string().starts_with("broken.jsonl:2: malformed event: missing field"));
//! # Ok::<(), synod_check::history::HistoryError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest accepted line, in bytes: one event is small, so a longer line means the input is not a
/// history (a binary file, a missing newline) and is reported instead of being buffered.
pub const EVENT_LINE_BYTES_MAX: usize = 1 << 20;

/// One event of a history: one line of the JSON Lines file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The client that performed the operation; at most one operation is outstanding per process.
    pub process: u64,
    /// Whether this event invokes an operation or completes it, and how.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The operation's name.
    pub f: String,
    /// The key the operation acts on, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The argument on `invoke`, the result on `ok`; not interpreted on `fail` and `info`.
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds on the history's one monotonic clock.
    pub time: u64,
}

/// The type of an event: an invocation or one of the three completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The client sent the operation.
    Invoke,
    /// The operation took effect exactly once between its invoke and this event.
    Ok,
    /// The operation definitely did not take effect.
    Fail,
    /// The operation may take effect at any time after its invoke, or never.
    Info,
}

impl fmt::Display for EventKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            EventKind::Invoke => "invoke",
            EventKind::Ok => "ok",
            EventKind::Fail => "fail",
            EventKind::Info => "info",
        })
    }
}

/// How an operation ended, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It took effect exactly once between its invoke and its completion.
    Ok,
    /// It definitely did not take effect.
    Fail,
    /// It may take effect at any time after its invoke, or never (an `info` or no completion).
    Info,
}

impl fmt::Display for Outcome {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        })
    }
}

/// One operation: an invoke event paired with its completion, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that performed it.
    pub process: u64,
    /// The operation's name.
    pub f: String,
    /// The key it acts on, if any.
    pub key: Option<String>,
    /// The invoke event's value: the operation's argument.
    pub input: Value,
    /// The `ok` event's value (the result); `None` unless the outcome is [`Outcome::Ok`].
    pub output: Option<Value>,
    /// How it ended.
    pub outcome: Outcome,
    /// The invoke event's time.
    pub invoke_time: u64,
    /// The completion's time for `ok` and `fail`; `None` for `info` or no completion, whose effect
    /// may land at any later time.
    pub complete_time: Option<u64>,
    /// Position of the invoke event in the history (0-based).
    pub invoke_index: usize,
    /// Position of the completion event in the history (0-based), `None` if it never completed.
    pub complete_index: Option<usize>,
}

/// Why a history could not be read, paired or checked.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The history file could not be opened.
    #[error("cannot open history {}: {source}", path.display())]
    Io {
        /// The file that could not be opened.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// Reading a line failed (an I/O error, invalid UTF-8, or a line over the length limit).
    #[error("{source_name}:{line}: cannot read line: {source}")]
    Read {
        /// The file (or other input) being read.
        source_name: String,
        /// The line that could not be read (1-based).
        line: usize,
        /// What went wrong.
        source: io::Error,
    },
    /// The input holds no events at all: there is nothing to judge.
    #[error("{source_name}: holds no history events")]
    NoEvents {
        /// The file (or other input) read.
        source_name: String,
    },
    /// A line is not a valid event.
    #[error("{source_name}:{line}: malformed event: {message}")]
    Malformed {
        /// The file (or other input) being read.
        source_name: String,
        /// The offending line (1-based).
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// A completion event whose process has no operation pending.
    #[error(
        "event index {index}: process {process} reports {kind} for {f:?} but has no pending invoke"
    )]
    CompletionWithoutInvoke {
        /// Position of the completion event in the history (0-based).
        index: usize,
        /// The process that reported it.
        process: u64,
        /// The completion's type.
        kind: EventKind,
        /// The completion's operation name.
        f: String,
    },
    /// An invoke event while the same process still has an operation pending.
    #[error(
        "event index {index}: process {process} invokes {f:?} while its operation invoked at event \
         index {pending_index} has not completed"
    )]
    InvokeWhilePending {
        /// Position of the second invoke event in the history (0-based).
        index: usize,
        /// The process that invoked twice.
        process: u64,
        /// The second invoke's operation name.
        f: String,
        /// Position of the still-pending invoke event (0-based).
        pending_index: usize,
    },
    /// A completion whose operation name or key differs from its invoke's.
    #[error(
        "event index {index}: process {process} completes {completion_f:?} on key {completion_key:?} \
         but invoked {invoke_f:?} on key {invoke_key:?} at event index {invoke_index}"
    )]
    MismatchedCompletion {
        /// Position of the completion event in the history (0-based).
        index: usize,
        /// The process concerned.
        process: u64,
        /// Position of the invoke event (0-based).
        invoke_index: usize,
        /// The invoke's operation name.
        invoke_f: String,
        /// The invoke's key.
        invoke_key: Option<String>,
        /// The completion's operation name.
        completion_f: String,
        /// The completion's key.
        completion_key: Option<String>,
    },
    /// An event whose time is earlier than the event before it.
    #[error(
        "event index {index}: time {time} is earlier than the previous event's time {previous_time}; \
         events must be in the order they happened"
    )]
    TimeWentBackwards {
        /// Position of the event in the history (0-based).
        index: usize,
        /// Its time.
        time: u64,
        /// The previous event's time.
        previous_time: u64,
    },
    /// An operation the model being checked does not have.
    #[error("event index {index}: the {model} model has no operation {f:?} (it has: {supported})")]
    UnsupportedOperation {
        /// Position of the operation's invoke event (0-based).
        index: usize,
        /// The model being checked.
        model: &'static str,
        /// The unknown operation name.
        f: String,
        /// The operation names the model has.
        supported: &'static str,
    },
    /// An operation that needs a key but has none.
    #[error("event index {index}: {f:?} needs a key but has none")]
    MissingKey {
        /// Position of the operation's invoke event (0-based).
        index: usize,
        /// The operation name.
        f: String,
    },
    /// An operation whose argument or result has the wrong shape for the model.
    #[error("event index {index}: {f:?} {message}")]
    InvalidValue {
        /// Position of the offending event (0-based).
        index: usize,
        /// The operation name.
        f: String,
        /// What is wrong with the value.
        message: String,
    },
}

impl HistoryError {
    /// The position (0-based) of the event the error is about, if it is about one.
    pub fn event_index(&self) -> Option<usize> {
        match self {
            HistoryError::CompletionWithoutInvoke { index, .. }
            | HistoryError::InvokeWhilePending { index, .. }
            | HistoryError::MismatchedCompletion { index, .. }
            | HistoryError::TimeWentBackwards { index, .. }
            | HistoryError::UnsupportedOperation { index, .. }
            | HistoryError::MissingKey { index, .. }
            | HistoryError::InvalidValue { index, .. } => Some(*index),
            HistoryError::Io { .. }
            | HistoryError::Read { .. }
            | HistoryError::NoEvents { .. }
            | HistoryError::Malformed { .. } => None,
        }
    }
}

/// Writes `events` as JSON Lines, one event per line, each line ending in `\n`.
pub fn write_jsonl<W: Write>(out: W, events: &[Event]) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Renders one event as a JSON line, without the trailing newline.
pub fn to_jsonl_line(event: &Event) -> String {
    // Serializing cannot fail: the fields are integers, strings and a `serde_json::Value`, whose
    // object keys are always strings.
    serde_json::to_string(event).expect("an Event always serializes to JSON")
}

/// Reads a JSON Lines history; `source_name` names the input in error messages.
pub fn read_jsonl<R: BufRead>(input: R, source_name: &str) -> Result<Vec<Event>, HistoryError> {
    read_json_lines(input, source_name)
}

/// One `T` per non-blank line of JSON Lines, with the line limit and located errors every
/// history reader shares.
pub(crate) fn read_json_lines<T: serde::de::DeserializeOwned, R: BufRead>(
    input: R,
    source_name: &str,
) -> Result<Vec<T>, HistoryError> {
    let mut input = input;
    let mut events = Vec::new();
    let mut buffer = Vec::new();
    let mut line_number = 0;
    loop {
        line_number += 1;
        buffer.clear();
        let read_error = |source| HistoryError::Read {
            source_name: source_name.to_owned(),
            line: line_number,
            source,
        };
        // The extra byte tells a line of exactly the limit apart from a longer one.
        let limit = u64::try_from(EVENT_LINE_BYTES_MAX + 1).unwrap_or(u64::MAX);
        let bytes_read = input
            .by_ref()
            .take(limit)
            .read_until(b'\n', &mut buffer)
            .map_err(read_error)?;
        if bytes_read == 0 {
            return Ok(events);
        }
        if buffer.last() == Some(&b'\n') {
            buffer.pop();
        }
        if buffer.len() > EVENT_LINE_BYTES_MAX {
            return Err(read_error(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line is longer than {EVENT_LINE_BYTES_MAX} bytes"),
            )));
        }
        let line = std::str::from_utf8(&buffer)
            .map_err(|error| read_error(io::Error::new(io::ErrorKind::InvalidData, error)))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str::<T>(line).map_err(|error| HistoryError::Malformed {
            source_name: source_name.to_owned(),
            line: line_number,
            message: describe_json_error(&error),
        })?;
        events.push(event);
    }
}

/// Reads a JSON Lines history from a file.
pub fn read_jsonl_file(path: &Path) -> Result<Vec<Event>, HistoryError> {
    let file = File::open(path).map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_jsonl(BufReader::new(file), &path.display().to_string())
}

/// Pairs each invoke with its completion, checking the format's rules; operations come out in
/// invoke order.
pub fn pair_operations(events: &[Event]) -> Result<Vec<Operation>, HistoryError> {
    let mut operations: Vec<Operation> = Vec::new();
    // Process id -> position in `operations` of its pending operation.
    let mut pending: HashMap<u64, usize> = HashMap::new();
    let mut previous_time = 0;
    for (index, event) in events.iter().enumerate() {
        if event.time < previous_time {
            return Err(HistoryError::TimeWentBackwards {
                index,
                time: event.time,
                previous_time,
            });
        }
        previous_time = event.time;
        let outcome = match event.kind {
            EventKind::Invoke => {
                if let Some(&position) = pending.get(&event.process) {
                    return Err(HistoryError::InvokeWhilePending {
                        index,
                        process: event.process,
                        f: event.f.clone(),
                        pending_index: operations[position].invoke_index,
                    });
                }
                pending.insert(event.process, operations.len());
                operations.push(Operation {
                    process: event.process,
                    f: event.f.clone(),
                    key: event.key.clone(),
                    input: event.value.clone(),
                    output: None,
                    outcome: Outcome::Info,
                    invoke_time: event.time,
                    complete_time: None,
                    invoke_index: index,
                    complete_index: None,
                });
                continue;
            }
            EventKind::Ok => Outcome::Ok,
            EventKind::Fail => Outcome::Fail,
            EventKind::Info => Outcome::Info,
        };
        let Some(position) = pending.remove(&event.process) else {
            return Err(HistoryError::CompletionWithoutInvoke {
                index,
                process: event.process,
                kind: event.kind,
                f: event.f.clone(),
            });
        };
        let operation = &mut operations[position];
        if operation.f != event.f || operation.key != event.key {
            return Err(HistoryError::MismatchedCompletion {
                index,
                process: event.process,
                invoke_index: operation.invoke_index,
                invoke_f: operation.f.clone(),
                invoke_key: operation.key.clone(),
                completion_f: event.f.clone(),
                completion_key: event.key.clone(),
            });
        }
        operation.complete_index = Some(index);
        operation.outcome = outcome;
        if outcome == Outcome::Ok {
            operation.output = Some(event.value.clone());
        }
        if outcome != Outcome::Info {
            operation.complete_time = Some(event.time);
        }
    }
    Ok(operations)
}

/// A serde_json error as a message about one line: serde_json counts lines within the text it was
/// given, which is always line 1 here, so only the column is kept.
fn describe_json_error(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let position_suffix = format!(" at line {} column {}", error.line(), error.column());
    match full.strip_suffix(&position_suffix) {
        Some(message) => format!("{message} at column {}", error.column()),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn event(process: u64, kind: EventKind, f: &str, key: &str, value: Value, time: u64) -> Event {
        Event {
            process,
            kind,
            f: f.to_owned(),
            key: Some(key.to_owned()),
            value,
            time,
        }
    }

    #[test]
    fn writes_fields_in_documented_order_and_omits_missing_key() {
        let mut with_key = event(3, EventKind::Invoke, "append", "k7", json!("x3y"), 1200345);
        assert_eq!(
            to_jsonl_line(&with_key),
            r#"{"process":3,"type":"invoke","f":"append","key":"k7","value":"x3y","time":1200345}"#
        );
        with_key.key = None;
        with_key.value = Value::Null;
        assert_eq!(
            to_jsonl_line(&with_key),
            r#"{"process":3,"type":"invoke","f":"append","value":null,"time":1200345}"#
        );
    }

    #[test]
    fn write_then_read_round_trips_and_skips_blank_lines() {
        let events = vec![
            event(1, EventKind::Invoke, "put", "a", json!("1"), 5),
            event(1, EventKind::Fail, "put", "a", json!("1"), 6),
            event(2, EventKind::Invoke, "get", "a", Value::Null, 7),
            event(2, EventKind::Info, "get", "a", Value::Null, 9),
        ];
        let mut bytes = Vec::new();
        write_jsonl(&mut bytes, &events).expect("writing to a Vec cannot fail");
        let text = String::from_utf8(bytes).expect("JSON is UTF-8");
        assert_eq!(text.lines().count(), 4);
        let with_blanks = format!("\n{}\r\n  \n", text.replace('\n', "\n\n"));
        assert_eq!(
            read_jsonl(with_blanks.as_bytes(), "t").expect("valid"),
            events
        );
    }

    #[test]
    fn malformed_lines_name_source_line_and_problem() {
        let cases = [
            (
                r#"{"process":1,"type":"invoke","f":"get","time":1"#,
                "EOF while parsing",
            ),
            (
                r#"{"process":1,"type":"begin","f":"get","time":1}"#,
                "unknown variant `begin`",
            ),
            (
                r#"{"process":-1,"type":"ok","f":"get","time":1}"#,
                "invalid value",
            ),
            (
                r#"{"process":1,"type":"ok","f":"get"}"#,
                "missing field `time`",
            ),
            (
                r#"{"process":1,"type":"ok","f":"get","key":5,"time":1}"#,
                "invalid type",
            ),
            ("not json", "expected ident"),
        ];
        for (line, expected) in cases {
            let input = format!("\n{line}\n");
            let error = read_jsonl(input.as_bytes(), "h.jsonl").expect_err(line);
            let message = error.to_string();
            assert!(
                message.starts_with("h.jsonl:2: malformed event: "),
                "{message}"
            );
            assert!(message.contains(expected), "{message} lacks {expected}");
            assert!(message.contains("at column"), "{message}");
            assert!(!message.contains("line 1"), "{message}");
        }
    }

    #[test]
    fn invalid_utf8_and_overlong_lines_are_read_errors() {
        let error = read_jsonl(&b"\xff\xfe\n"[..], "h").expect_err("invalid UTF-8");
        assert!(
            matches!(error, HistoryError::Read { line: 1, .. }),
            "{error}"
        );
        let overlong = vec![b' '; EVENT_LINE_BYTES_MAX + 1];
        let error = read_jsonl(&overlong[..], "h").expect_err("overlong");
        assert!(error.to_string().contains("longer than"), "{error}");
        let at_limit = vec![b' '; EVENT_LINE_BYTES_MAX];
        assert_eq!(
            read_jsonl(&at_limit[..], "h")
                .expect("blank line at limit")
                .len(),
            0
        );
    }

    #[test]
    fn missing_file_error_names_path() {
        let path = Path::new("/nonexistent/synod/history.jsonl");
        let error = read_jsonl_file(path).expect_err("missing file");
        assert!(
            error
                .to_string()
                .contains("/nonexistent/synod/history.jsonl"),
            "{error}"
        );
    }

    #[test]
    fn pairs_invokes_with_completions() {
        let events = vec![
            event(1, EventKind::Invoke, "put", "a", json!("1"), 1),
            event(2, EventKind::Invoke, "get", "a", Value::Null, 2),
            event(1, EventKind::Ok, "put", "a", json!("1"), 3),
            event(3, EventKind::Invoke, "put", "b", json!("2"), 4),
            event(2, EventKind::Fail, "get", "a", Value::Null, 5),
            event(3, EventKind::Info, "put", "b", Value::Null, 6),
            event(3, EventKind::Invoke, "get", "b", Value::Null, 7),
        ];
        let operations = pair_operations(&events).expect("well-formed");
        let summary: Vec<_> = operations
            .iter()
            .map(|operation| {
                (
                    operation.process,
                    operation.outcome,
                    operation.invoke_index,
                    operation.complete_index,
                    operation.complete_time,
                    operation.output.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, Outcome::Ok, 0, Some(2), Some(3), Some(json!("1"))),
                (2, Outcome::Fail, 1, Some(4), Some(5), None),
                (3, Outcome::Info, 3, Some(5), None, None),
                (3, Outcome::Info, 6, None, None, None),
            ]
        );
        assert_eq!(operations[0].input, json!("1"));
        assert_eq!(operations[0].invoke_time, 1);
    }

    #[test]
    fn rejects_histories_that_break_the_rules() {
        let invoke =
            |process, time| event(process, EventKind::Invoke, "get", "a", Value::Null, time);
        let ok = |process, time| event(process, EventKind::Ok, "get", "a", Value::Null, time);

        let error = pair_operations(&[invoke(1, 1), ok(2, 2)]).expect_err("orphan completion");
        assert!(
            matches!(
                error,
                HistoryError::CompletionWithoutInvoke {
                    index: 1,
                    process: 2,
                    ..
                }
            ),
            "{error}"
        );
        let error = pair_operations(&[invoke(1, 1), ok(1, 2), ok(1, 3)]).expect_err("double ok");
        assert!(
            matches!(
                error,
                HistoryError::CompletionWithoutInvoke { index: 2, .. }
            ),
            "{error}"
        );

        let error =
            pair_operations(&[invoke(1, 1), invoke(2, 2), invoke(1, 3)]).expect_err("twice");
        assert!(
            matches!(
                error,
                HistoryError::InvokeWhilePending {
                    index: 2,
                    process: 1,
                    pending_index: 0,
                    ..
                }
            ),
            "{error}"
        );
        assert!(error.to_string().contains("event index 2"), "{error}");

        let mut wrong_key = ok(1, 2);
        wrong_key.key = Some("b".to_owned());
        let error = pair_operations(&[invoke(1, 1), wrong_key]).expect_err("other key");
        assert!(
            matches!(error, HistoryError::MismatchedCompletion { index: 1, .. }),
            "{error}"
        );
        let mut wrong_f = ok(1, 2);
        wrong_f.f = "put".to_owned();
        let error = pair_operations(&[invoke(1, 1), wrong_f]).expect_err("other f");
        assert!(
            matches!(error, HistoryError::MismatchedCompletion { .. }),
            "{error}"
        );

        let error = pair_operations(&[invoke(1, 5), ok(1, 4)]).expect_err("time went back");
        assert!(
            matches!(
                error,
                HistoryError::TimeWentBackwards {
                    index: 1,
                    time: 4,
                    previous_time: 5
                }
            ),
            "{error}"
        );
    }

    fn arbitrary_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".*".prop_map(Value::from),
            prop::collection::vec(any::<u32>(), 0..3).prop_map(Value::from),
        ]
    }

    fn arbitrary_event() -> impl Strategy<Value = Event> {
        (
            any::<u64>(),
            prop_oneof![
                Just(EventKind::Invoke),
                Just(EventKind::Ok),
                Just(EventKind::Fail),
                Just(EventKind::Info)
            ],
            ".*",
            proptest::option::of(".*"),
            arbitrary_value(),
            any::<u64>(),
        )
            .prop_map(|(process, kind, f, key, value, time)| Event {
                process,
                kind,
                f,
                key,
                value,
                time,
            })
    }

    proptest! {
        #[test]
        fn any_events_round_trip(events in prop::collection::vec(arbitrary_event(), 0..8)) {
            let mut bytes = Vec::new();
            write_jsonl(&mut bytes, &events).expect("writing to a Vec cannot fail");
            prop_assert_eq!(read_jsonl(&bytes[..], "round trip").expect("own output reads"), events);
        }
    }
}
