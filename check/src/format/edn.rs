//! Histories as EDN maps, one event per line, as Jepsen writes them and Porcupine's key-value
//! test data has them:
//!
//! ```text
//! {:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}
//! {:process 0, :type :ok, :f :append, :key "0", :value "x 0 0 y"}
//! ```
//!
//! The fields are those of the JSON Lines format: `:process` (an integer; an event whose process
//! is a keyword, such as Jepsen's `:nemesis`, is not a client's and is skipped), `:type`
//! (`:invoke`, `:ok`, `:fail`, `:info`), `:f` (a keyword), `:key` (a string or an integer),
//! `:value` and `:time` (nanoseconds; when some line lacks it, line numbers are the times). Other
//! fields are ignored. Values may be `nil`, booleans, integers, strings, keywords (read as strings
//! without the colon) and vectors of these. Commas are whitespace.
//!
//! **Empty strings in key-value histories.** Porcupine's key-value service reads an absent key as
//! `""`; Synod's key-value model tells them apart. The two agree once `""` and "absent" are the
//! same value, so the reader translates exactly: an `ok` `get` of `""` reads `nil`; a `put` of
//! `""` is a `delete`; an `append` of `""` changes nothing whatever the value, constrains nothing,
//! and is left out.

use std::collections::HashMap;

use serde_json::Value;

use super::malformed;
use crate::history::{Event, EventKind, HistoryError};

/// How a key-value operation is rewritten to Synod's model (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    /// A `put` of `""`, read as `delete`.
    PutEmptyAsDelete,
    /// An `append` of `""`, left out.
    DropEmptyAppend,
}

/// Parses EDN-map lines into events and the line each came from.
pub(crate) fn parse(
    text: &str,
    source_name: &str,
) -> Result<(Vec<Event>, Vec<usize>), HistoryError> {
    let mut events = Vec::new();
    let mut lines = Vec::new();
    let mut all_timed = true;
    // The rewrite applied to each process's pending operation, so its completion matches.
    let mut pending_rewrites: HashMap<u64, Rewrite> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let error = |message: String| malformed(source_name, line_number, message);
        let fields = parse_map(line).map_err(error)?;
        let Some(mut event) = event_from_fields(fields).map_err(error)? else {
            continue;
        };
        all_timed &= event.time != u64::MAX;
        let rewrite = match event.kind {
            EventKind::Invoke => {
                let rewrite = empty_write_rewrite(&event);
                match rewrite {
                    Some(rewrite) => pending_rewrites.insert(event.process, rewrite),
                    None => pending_rewrites.remove(&event.process),
                };
                rewrite
            }
            _ => pending_rewrites.remove(&event.process),
        };
        match rewrite {
            Some(Rewrite::DropEmptyAppend) => continue,
            Some(Rewrite::PutEmptyAsDelete) => {
                event.f = "delete".to_owned();
                event.value = Value::Null;
            }
            None => {}
        }
        if event.kind == EventKind::Ok && event.f == "get" && event.value == "" {
            event.value = Value::Null;
        }
        events.push(event);
        lines.push(line_number);
    }
    if !all_timed {
        for (event, &line) in events.iter_mut().zip(&lines) {
            event.time = line as u64;
        }
    }
    Ok((events, lines))
}

/// The rewrite an invoke of `put ""` or `append ""` needs.
fn empty_write_rewrite(event: &Event) -> Option<Rewrite> {
    if event.value != "" {
        return None;
    }
    match event.f.as_str() {
        "put" => Some(Rewrite::PutEmptyAsDelete),
        "append" => Some(Rewrite::DropEmptyAppend),
        _ => None,
    }
}

/// An event from a map's fields; `None` for an event that is not a client's. A missing `:time`
/// is `u64::MAX`, for the caller to replace.
fn event_from_fields(fields: Vec<(String, Value)>) -> Result<Option<Event>, String> {
    let mut process = None;
    let mut kind = None;
    let mut f = None;
    let mut key = None;
    let mut value = Value::Null;
    let mut time = u64::MAX;
    for (name, field) in fields {
        match name.as_str() {
            "process" => match field {
                Value::Number(number) => {
                    process = Some(number.as_u64().ok_or_else(|| {
                        format!("process must be a non-negative integer, found {number}")
                    })?);
                }
                // A keyword process (`:nemesis`) is the test harness, not a client.
                Value::String(_) => return Ok(None),
                other => return Err(format!("process must be an integer, found {other}")),
            },
            "type" => {
                kind = Some(match field.as_str() {
                    Some("invoke") => EventKind::Invoke,
                    Some("ok") => EventKind::Ok,
                    Some("fail") => EventKind::Fail,
                    Some("info") => EventKind::Info,
                    _ => {
                        return Err(format!(
                            "type must be :invoke, :ok, :fail or :info, found {field}"
                        ));
                    }
                });
            }
            "f" => match field {
                Value::String(name) => f = Some(name),
                other => return Err(format!("f must be a keyword, found {other}")),
            },
            "key" => match field {
                Value::String(text) => key = Some(text),
                Value::Number(number) => key = Some(number.to_string()),
                other => return Err(format!("key must be a string or integer, found {other}")),
            },
            "value" => value = field,
            "time" => {
                time = field
                    .as_u64()
                    .ok_or_else(|| format!("time must be a non-negative integer, found {field}"))?;
            }
            _ => {}
        }
    }
    let missing = |name: &str| format!("missing field :{name}");
    Ok(Some(Event {
        process: process.ok_or_else(|| missing("process"))?,
        kind: kind.ok_or_else(|| missing("type"))?,
        f: f.ok_or_else(|| missing("f"))?,
        key,
        value,
        time,
    }))
}

/// Parses one line holding one EDN map into its (field, value) pairs.
fn parse_map(line: &str) -> Result<Vec<(String, Value)>, String> {
    let mut parser = Parser {
        text: line.as_bytes(),
        at: 0,
    };
    parser.skip_whitespace();
    parser.expect(b'{')?;
    let mut fields = Vec::new();
    loop {
        parser.skip_whitespace();
        if parser.peek() == Some(b'}') {
            parser.at += 1;
            break;
        }
        if parser.peek() != Some(b':') {
            return Err(parser.complaint("a :keyword field name or '}'"));
        }
        parser.at += 1;
        let name = parser.symbol();
        if name.is_empty() {
            return Err(parser.complaint("a field name after ':'"));
        }
        parser.skip_whitespace();
        let value = parser.value()?;
        fields.push((name, value));
    }
    parser.skip_whitespace();
    if parser.at != parser.text.len() {
        return Err(parser.complaint("the end of the line after the map"));
    }
    Ok(fields)
}

/// Parses one EDN value (the subset in the module docs) from the start of `text`, returning it
/// and the unparsed rest.
pub(crate) fn parse_value(text: &str) -> Result<(Value, &str), String> {
    let mut parser = Parser {
        text: text.as_bytes(),
        at: 0,
    };
    parser.skip_whitespace();
    let value = parser.value()?;
    Ok((value, &text[parser.at..]))
}

/// The deepest vector nesting accepted: histories nest one or two levels, and a bound keeps a
/// hostile line from exhausting the stack.
const NESTING_MAX: usize = 16;

/// A cursor over one line.
struct Parser<'a> {
    /// The line.
    text: &'a [u8],
    /// The next byte to read.
    at: usize,
}

impl Parser<'_> {
    /// The next byte, if any.
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    /// Skips spaces, tabs and commas.
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` or complains.
    fn expect(&mut self, byte: u8) -> Result<(), String> {
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.complaint(&format!("'{}'", char::from(byte))))
        }
    }

    /// "expected X at column N".
    fn complaint(&self, expected: &str) -> String {
        match self.peek() {
            Some(_) => format!("expected {expected} at column {}", self.at + 1),
            None => format!("expected {expected} at the end of the line"),
        }
    }

    /// A run of symbol characters (keyword names, numbers, `nil`).
    fn symbol(&mut self) -> String {
        let start = self.at;
        while let Some(byte) = self.peek() {
            if byte.is_ascii_alphanumeric() || b"-_.?!*+/<>=".contains(&byte) {
                self.at += 1;
            } else {
                break;
            }
        }
        String::from_utf8_lossy(&self.text[start..self.at]).into_owned()
    }

    /// One value.
    fn value(&mut self) -> Result<Value, String> {
        self.value_nested(0)
    }

    /// One value at vector depth `depth`.
    fn value_nested(&mut self, depth: usize) -> Result<Value, String> {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b':') => {
                self.at += 1;
                let name = self.symbol();
                if name.is_empty() {
                    return Err(self.complaint("a keyword name after ':'"));
                }
                Ok(Value::String(name))
            }
            Some(b'[') => {
                if depth >= NESTING_MAX {
                    return Err(format!("vectors nested deeper than {NESTING_MAX}"));
                }
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_whitespace();
                    if self.peek() == Some(b']') {
                        self.at += 1;
                        return Ok(Value::Array(items));
                    }
                    if self.peek().is_none() {
                        return Err(self.complaint("']'"));
                    }
                    items.push(self.value_nested(depth + 1)?);
                }
            }
            Some(_) => {
                let start = self.at;
                let symbol = self.symbol();
                match symbol.as_str() {
                    "nil" => Ok(Value::Null),
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    _ => {
                        if let Ok(number) = symbol.parse::<u64>() {
                            Ok(Value::from(number))
                        } else if let Ok(number) = symbol.parse::<i64>() {
                            Ok(Value::from(number))
                        } else {
                            self.at = start;
                            Err(self.complaint(
                                "a value (nil, a number, a string, a :keyword or a [vector])",
                            ))
                        }
                    }
                }
            }
            None => Err(self.complaint("a value")),
        }
    }

    /// A double-quoted string with `\"`, `\\`, `\n`, `\t` and `\r` escapes.
    fn string(&mut self) -> Result<Value, String> {
        self.at += 1;
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string".to_owned()),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = self.text.get(self.at + 1).copied();
                    bytes.push(match escaped {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'n') => b'\n',
                        Some(b't') => b'\t',
                        Some(b'r') => b'\r',
                        _ => {
                            self.at += 1;
                            return Err(self.complaint("one of \\\" \\\\ \\n \\t \\r"));
                        }
                    });
                    self.at += 2;
                }
                Some(byte) => {
                    bytes.push(byte);
                    self.at += 1;
                }
            }
        }
        // The line is valid UTF-8 and escapes only add ASCII, so this cannot fail.
        Ok(Value::String(
            String::from_utf8(bytes).expect("a slice of UTF-8 split at ASCII quotes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_maps_with_every_value_kind() {
        let fields = parse_map(
            r#" {:process 3, :type :ok, :f :txn, :value [[:r 1 nil] [:w 2 -3]], :s "a \"b\"\n", :b true} "#,
        )
        .expect("valid");
        assert_eq!(
            fields,
            vec![
                ("process".to_owned(), json!(3)),
                ("type".to_owned(), json!("ok")),
                ("f".to_owned(), json!("txn")),
                ("value".to_owned(), json!([["r", 1, null], ["w", 2, -3]])),
                ("s".to_owned(), json!("a \"b\"\n")),
                ("b".to_owned(), json!(true)),
            ]
        );
        assert_eq!(parse_map("{}").expect("empty map"), vec![]);
    }

    #[test]
    fn malformed_maps_say_what_was_expected_where() {
        for (line, expected) in [
            (
                "{:process 1",
                "expected a :keyword field name or '}' at the end",
            ),
            ("(:process 1)", "expected '{' at column 1"),
            ("{:process @}", "expected a value (nil"),
            ("{:value \"abc}", "unterminated string"),
            ("{:value [1 2}", "expected a value"),
            (
                "{:a 1} extra",
                "expected the end of the line after the map at column 8",
            ),
            ("{process 1}", "expected a :keyword field name"),
            ("{:value \"\\q\"}", "one of"),
        ] {
            let error = parse_map(line).expect_err(line);
            assert!(error.contains(expected), "{line}: {error}");
        }
        let deep = format!("{{:value {}}}", "[".repeat(40));
        assert!(parse_map(&deep).unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn reads_events_skipping_the_nemesis_and_numbering_lines() {
        let text = "\
{:process 0, :type :invoke, :f :get, :key \"a\", :value nil}
{:process :nemesis, :type :info, :f :start, :value nil}

{:process 0, :type :ok, :f :get, :key 7, :value \"\", :extra 1}
";
        let (events, lines) = parse(text, "h.edn").expect("valid");
        assert_eq!(lines, [1, 4]);
        assert_eq!(events[0].time, 1);
        assert_eq!(events[1].time, 4);
        assert_eq!(events[1].key.as_deref(), Some("7"));
        // Porcupine's empty string is Synod's absent key.
        assert_eq!(events[1].value, Value::Null);
    }

    #[test]
    fn uses_times_when_every_line_has_one() {
        let text = "{:process 1, :type :invoke, :f :read, :value nil, :time 100}\n\
                    {:process 1, :type :ok, :f :read, :value 3, :time 250}\n";
        let (events, _) = parse(text, "h.edn").expect("valid");
        assert_eq!((events[0].time, events[1].time), (100, 250));
    }

    #[test]
    fn empty_writes_are_translated_exactly() {
        let text = "\
{:process 1, :type :invoke, :f :put, :key \"a\", :value \"\"}
{:process 2, :type :invoke, :f :append, :key \"a\", :value \"\"}
{:process 1, :type :ok, :f :put, :key \"a\", :value \"\"}
{:process 2, :type :ok, :f :append, :key \"a\", :value \"\"}
{:process 2, :type :invoke, :f :append, :key \"a\", :value \"x\"}
{:process 2, :type :ok, :f :append, :key \"a\", :value \"x\"}
";
        let (events, lines) = parse(text, "h.edn").expect("valid");
        let summary: Vec<_> = events
            .iter()
            .map(|event| (event.process, event.f.as_str(), event.value.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, "delete", Value::Null),
                (1, "delete", Value::Null),
                (2, "append", json!("x")),
                (2, "append", json!("x")),
            ]
        );
        assert_eq!(lines, [1, 3, 5, 6]);
    }

    #[test]
    fn bad_fields_are_errors_with_the_line() {
        for (line, expected) in [
            ("{:process -1, :type :ok, :f :get}", "non-negative"),
            ("{:process 1, :type :begin, :f :get}", "type must be"),
            (
                "{:process 1, :type :ok, :f 3}",
                "f must be a keyword, found 3",
            ),
            ("{:process 1, :type :ok}", "missing field :f"),
            ("{:process 1, :type :ok, :f :get, :key [1]}", "key must be"),
            (
                "{:process 1, :type :ok, :f :get, :time :now}",
                "time must be",
            ),
            (
                "{:process true, :type :ok, :f :get}",
                "process must be an integer",
            ),
        ] {
            let text = format!("\n{line}\n");
            let error = parse(&text, "bad.edn").expect_err(line).to_string();
            assert!(error.starts_with("bad.edn:2: malformed event: "), "{error}");
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn parse_value_returns_the_rest() {
        assert_eq!(parse_value(" [3 0] tail"), Ok((json!([3, 0]), " tail")));
        assert_eq!(parse_value(":timed-out"), Ok((json!("timed-out"), "")));
    }
}
