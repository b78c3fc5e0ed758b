//! Jepsen's log format: the operation lines `jepsen.util` logs while a test runs.
//!
//! ```text
//! INFO  jepsen.util - 3 :invoke :cas [3 0]
//! INFO  jepsen.util - 3 :fail :cas [3 0]
//! INFO  jepsen.util - 4 :info :write :timed-out
//! ```
//!
//! After the `jepsen.util - ` marker come the process, the type (`:invoke`, `:ok`, `:fail`,
//! `:info`), the operation (`:read`, `:write`, `:cas`, ...) and its value, an EDN value (`nil`,
//! `3`, `[3 0]`, `:timed-out`), separated by tabs (shown above as spaces) or spaces; anything
//! before the marker (level, timestamp, thread) is ignored. Operations have no key.
//!
//! A Jepsen log holds more than operations, so some lines are skipped: lines of other loggers
//! (`INFO  jepsen.core - Running test`), `jepsen.util` messages that are not operations, and the
//! nemesis's operations (`jepsen.util - :nemesis :info :start nil`), which are not a client's. A
//! `jepsen.util` line that starts like an operation (a process number) but does not parse, or a
//! line that is no log line at all, is an error naming the line.
//!
//! There are no times in these lines: each event's time is its line number. Jepsen gives a
//! process whose operation ended `:info` a fresh number; the history format allows either.

use serde_json::Value;

use super::edn::parse_value;
use super::malformed;
use crate::history::{Event, EventKind, HistoryError};

/// What comes before each operation's fields.
const MARKER: &str = "jepsen.util - ";

/// The log levels a Jepsen log line starts with.
const LEVELS: [&str; 6] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

/// Whether `line` looks like a Jepsen log line (for format detection).
pub(crate) fn looks_like_jepsen(line: &str) -> bool {
    line.contains(MARKER) || starts_with_level(line)
}

/// Whether `line` starts with a log level word.
fn starts_with_level(line: &str) -> bool {
    let first = line.split_whitespace().next().unwrap_or("");
    LEVELS.contains(&first)
}

/// Parses a Jepsen log into events and the line each came from.
pub(crate) fn parse(
    text: &str,
    source_name: &str,
) -> Result<(Vec<Event>, Vec<usize>), HistoryError> {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Some(at) = line.find(MARKER) else {
            if starts_with_level(line) {
                // Another logger's line: part of the log, not of the history.
                continue;
            }
            return Err(malformed(
                source_name,
                line_number,
                format!("not a Jepsen log line (no log level, no {MARKER:?}): {line:?}"),
            ));
        };
        let message = &line[at + MARKER.len()..];
        match parse_operation(message, line_number as u64) {
            Ok(Some(event)) => {
                events.push(event);
                lines.push(line_number);
            }
            Ok(None) => {}
            Err(message) => return Err(malformed(source_name, line_number, message)),
        }
    }
    Ok((events, lines))
}

/// Parses the part after the marker; `None` for a line that is not a client's operation.
fn parse_operation(message: &str, time: u64) -> Result<Option<Event>, String> {
    let message = message.trim();
    let (process_text, rest) = split_field(message);
    let process = match process_text.parse::<u64>() {
        Ok(process) => process,
        // `:nemesis` and other keyword processes are the harness, not clients.
        Err(_) if process_text.starts_with(':') => return Ok(None),
        // Free text: `jepsen.util` also logs messages that are not operations.
        Err(_) if !process_text.starts_with(|c: char| c.is_ascii_digit()) => return Ok(None),
        Err(_) => return Err(format!("process must be a number, found {process_text:?}")),
    };
    let (kind_text, rest) = split_field(rest);
    let kind = match kind_text {
        ":invoke" => EventKind::Invoke,
        ":ok" => EventKind::Ok,
        ":fail" => EventKind::Fail,
        ":info" => EventKind::Info,
        _ => {
            return Err(format!(
                "type must be :invoke, :ok, :fail or :info, found {kind_text:?}"
            ));
        }
    };
    let (f_text, rest) = split_field(rest);
    let Some(f) = f_text.strip_prefix(':').filter(|name| !name.is_empty()) else {
        return Err(format!(
            "the operation must be a keyword such as :read, found {f_text:?}"
        ));
    };
    let value = if rest.trim().is_empty() {
        Value::Null
    } else {
        let (value, tail) = parse_value(rest).map_err(|error| format!("value: {error}"))?;
        if !tail.trim().is_empty() {
            return Err(format!(
                "unexpected text after the value: {:?}",
                tail.trim()
            ));
        }
        value
    };
    Ok(Some(Event {
        process,
        kind,
        f: f.to_owned(),
        key: None,
        value,
        time,
    }))
}

/// Splits off the first whitespace-separated field.
fn split_field(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], &text[end..]),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_tab_and_space_separated_lines() {
        let text = "\
INFO  jepsen.util - 0\t:invoke\t:read\tnil
INFO  jepsen.util - 1   :invoke :cas    [1 2]
INFO  jepsen.core - Running test
INFO [2017-03-01 12:00:00,000] jepsen.util - 0\t:ok\t:read\t3
INFO  jepsen.util - :nemesis\t:info\t:start\tnil
INFO  jepsen.util - Relative time begins now
INFO  jepsen.util - 1\t:info\t:cas\t:timed-out
INFO  jepsen.util - 2\t:invoke\t:write
";
        let (events, lines) = parse(text, "etcd.log").expect("valid");
        assert_eq!(lines, [1, 2, 4, 7, 8]);
        let summary: Vec<_> = events
            .iter()
            .map(|event| {
                (
                    event.process,
                    event.kind,
                    event.f.as_str(),
                    event.value.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, EventKind::Invoke, "read", Value::Null),
                (1, EventKind::Invoke, "cas", json!([1, 2])),
                (0, EventKind::Ok, "read", json!(3)),
                (1, EventKind::Info, "cas", json!("timed-out")),
                (2, EventKind::Invoke, "write", Value::Null),
            ]
        );
        assert_eq!(events[2].time, 4);
        assert!(events.iter().all(|event| event.key.is_none()));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for (line, expected) in [
            ("INFO  jepsen.util - 1\t:begin\t:read\tnil", "type must be"),
            ("INFO  jepsen.util - 1\t:ok\tread\tnil", "must be a keyword"),
            ("INFO  jepsen.util - 1\t:ok\t:read\t[1 2", "value: expected"),
            ("INFO  jepsen.util - 1\t:ok\t:read\t1 2", "unexpected text"),
            (
                "INFO  jepsen.util - 1x\t:ok\t:read\t1",
                "process must be a number",
            ),
            ("garbage", "not a Jepsen log line"),
        ] {
            let text = format!("INFO  jepsen.util - 1\t:invoke\t:read\tnil\n{line}\n");
            let error = parse(&text, "etcd.log").expect_err(line).to_string();
            assert!(
                error.starts_with("etcd.log:2: malformed event: "),
                "{error}"
            );
            assert!(error.contains(expected), "{line}: {error}");
        }
    }
}
