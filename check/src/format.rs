//! Reading histories in the formats other tools write, as [`Event`]s.
//!
//! Three formats are read, told apart by their first non-blank line unless one is named:
//!
//! | [`Format`] | looks like | from |
//! |---|---|---|
//! | [`Format::Jsonl`] | `{"process":3,"type":"invoke","f":"append",...}` | Synod ([`history`](crate::history)) |
//! | [`Format::Jepsen`] | `INFO  jepsen.util - 3 :invoke :cas [3 0]` | Jepsen's log ([`jepsen`]) |
//! | [`Format::Edn`] | `{:process 0, :type :invoke, :f :get, :key "0", :value nil}` | EDN maps, one per line ([`edn`]) |
//!
//! Formats without times get the line number as each event's time: the order of the lines is
//! the order the events happened, which is all the checker needs. Every error names the input
//! and the line; an input with no events at all is an error too (there is nothing to judge).
//!
//! # Example
//!
//! ```
//! use synod_check::format::{parse_history, Format};
//!
//! let edn = "{:process 0, :type :invoke, :f :get, :key \"a\", :value nil}\n\
//!            {:process 0, :type :ok, :f :get, :key \"a\", :value \"x\"}\n";
//! let history = parse_history(edn, "a.txt", None)?;
//! assert_eq!(history.format, Format::Edn);
//! assert_eq!(history.events[1].value, serde_json::json!("x"));
//! assert_eq!(history.lines, [1, 2]);
//!
//! let error = parse_history("{:process 0, :type :begin}\n", "b.txt", None).unwrap_err();
//! assert!(error.to_string().starts_with("b.txt:1: malformed event"));
//! # Ok::<(), synod_check::HistoryError>(())
//! ```

pub mod edn;
pub mod jepsen;

use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;

use crate::history::{Event, HistoryError, read_jsonl};

/// A history file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Synod's JSON Lines history.
    Jsonl,
    /// Jepsen's log lines (`jepsen.util - PROCESS :TYPE :F VALUE`).
    Jepsen,
    /// One EDN map per line.
    Edn,
}

impl Format {
    /// Every format, in the order `--format` lists them.
    pub const ALL: [Format; 3] = [Format::Jsonl, Format::Jepsen, Format::Edn];

    /// The format's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Jepsen => "jepsen",
            Format::Edn => "edn",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|format| format.name() == text)
            .ok_or_else(|| format!("unknown format {text:?} (expected jsonl, jepsen or edn)"))
    }
}

/// A history as read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The format it was read in.
    pub format: Format,
    /// Its events, in order.
    pub events: Vec<Event>,
    /// The line (1-based) each event came from.
    pub lines: Vec<usize>,
}

impl History {
    /// `error` with the input's name and line in front, when it concerns one event; checkers
    /// report errors by event index, which means nothing to someone reading the file.
    pub fn locate(&self, source_name: &str, error: &HistoryError) -> String {
        match error.event_index().and_then(|index| self.lines.get(index)) {
            Some(line) => format!("{source_name}:{line}: {error}"),
            None => error.to_string(),
        }
    }
}

/// Guesses the format from the first non-blank line; `None` if the text is blank or unlike all.
pub fn detect_format(text: &str) -> Option<Format> {
    let line = text
        .lines()
        .find(|line| !line.trim().is_empty())?
        .trim_start();
    if let Some(after_brace) = line.strip_prefix('{') {
        let after_brace = after_brace.trim_start();
        if after_brace.starts_with('"') || after_brace.starts_with('}') {
            return Some(Format::Jsonl);
        }
        if after_brace.starts_with(':') {
            return Some(Format::Edn);
        }
        return None;
    }
    jepsen::looks_like_jepsen(line).then_some(Format::Jepsen)
}

/// Parses a history in `format`, or in the format [`detect_format`] finds; `source_name` names
/// the input in errors.
pub fn parse_history(
    text: &str,
    source_name: &str,
    format: Option<Format>,
) -> Result<History, HistoryError> {
    let first_line = text
        .lines()
        .position(|line| !line.trim().is_empty())
        .map(|index| index + 1);
    let Some(first_line) = first_line else {
        return Err(HistoryError::NoEvents {
            source_name: source_name.to_owned(),
        });
    };
    let format = match format.or_else(|| detect_format(text)) {
        Some(format) => format,
        None => {
            return Err(HistoryError::Malformed {
                source_name: source_name.to_owned(),
                line: first_line,
                message: "not a history in any known format (JSON Lines, a Jepsen log, or EDN \
                          maps); name the format to see why"
                    .to_owned(),
            });
        }
    };
    let (events, lines) = match format {
        Format::Jsonl => {
            let events = read_jsonl(text.as_bytes(), source_name)?;
            let lines = text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty())
                .map(|(index, _)| index + 1)
                .collect();
            (events, lines)
        }
        Format::Jepsen => jepsen::parse(text, source_name)?,
        Format::Edn => edn::parse(text, source_name)?,
    };
    if events.is_empty() {
        return Err(HistoryError::NoEvents {
            source_name: source_name.to_owned(),
        });
    }
    Ok(History {
        format,
        events,
        lines,
    })
}

/// Reads and parses a history file (see [`parse_history`]).
pub fn read_history_file(path: &Path, format: Option<Format>) -> Result<History, HistoryError> {
    let bytes = fs::read(path).map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    let source_name = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&byte| byte == b'\n').count() + 1;
        HistoryError::Read {
            source_name: source_name.clone(),
            line,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error.utf8_error()),
        }
    })?;
    parse_history(&text, &source_name, format)
}

/// A malformed-line error.
pub(crate) fn malformed(
    source_name: &str,
    line: usize,
    message: impl Into<String>,
) -> HistoryError {
    HistoryError::Malformed {
        source_name: source_name.to_owned(),
        line,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_format_from_its_first_line() {
        let jsonl = "\n  {\"process\":1,\"type\":\"invoke\",\"f\":\"get\",\"time\":1}\n";
        assert_eq!(detect_format(jsonl), Some(Format::Jsonl));
        assert_eq!(
            detect_format("{:process 0, :type :invoke}"),
            Some(Format::Edn)
        );
        assert_eq!(
            detect_format("INFO  jepsen.util - 3\t:invoke\t:read\tnil"),
            Some(Format::Jepsen)
        );
        assert_eq!(detect_format("hello"), None);
        assert_eq!(detect_format("   \n"), None);
    }

    #[test]
    fn names_round_trip() {
        for format in Format::ALL {
            assert_eq!(format.name().parse::<Format>(), Ok(format));
        }
        assert!("yaml".parse::<Format>().unwrap_err().contains("jsonl"));
    }

    #[test]
    fn empty_and_unknown_inputs_are_errors_naming_the_source() {
        let error = parse_history("\n \n", "empty.log", None).unwrap_err();
        assert_eq!(error.to_string(), "empty.log: holds no history events");
        let error = parse_history("\nhello world\n", "odd.txt", None).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("odd.txt:2: malformed event: not a history")
        );
        // Only other loggers' lines: a Jepsen log with no operations.
        let error = parse_history(
            "INFO  jepsen.core - Running test\n",
            "quiet.log",
            Some(Format::Jepsen),
        )
        .unwrap_err();
        assert!(matches!(error, HistoryError::NoEvents { .. }), "{error}");
    }

    #[test]
    fn jsonl_lines_skip_blank_lines_and_locate_errors() {
        let text = "\n{\"process\":1,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"a\",\"time\":1}\n\n\
                    {\"process\":1,\"type\":\"ok\",\"f\":\"put\",\"key\":\"a\",\"time\":2}\n";
        let history = parse_history(text, "h.jsonl", None).expect("valid lines");
        assert_eq!(history.format, Format::Jsonl);
        assert_eq!(history.lines, [2, 4]);
        let error = crate::history::pair_operations(&history.events).unwrap_err();
        assert!(
            history
                .locate("h.jsonl", &error)
                .starts_with("h.jsonl:4: event index 1"),
            "{}",
            history.locate("h.jsonl", &error)
        );
    }

    #[test]
    fn missing_and_non_utf8_files_are_errors() {
        let error = read_history_file(Path::new("/nonexistent/h.log"), None).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/h.log"), "{error}");
        let path = std::env::temp_dir().join(format!("synod-check-{}.bin", std::process::id()));
        fs::write(&path, b"{\"a\":1}\n\xff\n").expect("temp file");
        let error = read_history_file(&path, None).unwrap_err();
        let _ = fs::remove_file(&path);
        assert!(
            matches!(error, HistoryError::Read { line: 2, .. }),
            "{error}"
        );
    }
}
