//! Checks the key-value histories vendored in `check/testdata/histories/kv/` against the verdicts their
//! authors established (`VERDICTS.txt`).
//!
//! The histories come from the Porcupine checker's test data (MIT licence, Copyright (c) Anish
//! Athalye), written as EDN-like maps, one event per line and without times:
//! `{:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}`. Their model reads an
//! absent key as `""`; ours reads it as `null`. No history there puts or appends `""`, so an `ok`
//! read of `""` is translated to `null` exactly.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use synod_check::{Budget, Event, EventKind, Verdict, check_kv_history};

/// Where the vendored corpus lives (see its README for attribution).
fn testdata_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// One EDN-like field value.
#[derive(Debug, PartialEq)]
enum Atom {
    Keyword(String),
    Text(String),
    Integer(u64),
    Nil,
}

/// Splits `{:a 1, :b :c, :d "e f"}` into (field, value) pairs.
fn parse_map(line: &str) -> Result<Vec<(String, Atom)>, String> {
    let inner = line
        .trim()
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or("not a {...} map")?;
    let mut fields = Vec::new();
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let after_colon = rest
            .strip_prefix(':')
            .ok_or("field name must start with ':'")?;
        let name_end = after_colon.find(' ').ok_or("field without value")?;
        let name = after_colon[..name_end].to_owned();
        rest = after_colon[name_end..].trim_start();
        let (atom, remainder) = if let Some(text) = rest.strip_prefix('"') {
            let end = text.find('"').ok_or("unterminated string")?;
            (Atom::Text(text[..end].to_owned()), &text[end + 1..])
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let token = rest[..end].trim();
            let atom = if token == "nil" {
                Atom::Nil
            } else if let Some(keyword) = token.strip_prefix(':') {
                Atom::Keyword(keyword.to_owned())
            } else {
                Atom::Integer(token.parse().map_err(|_| format!("bad token {token:?}"))?)
            };
            (atom, &rest[end..])
        };
        fields.push((name, atom));
        rest = remainder.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(fields)
}

/// Translates one EDN-like line into an event at time `time`.
fn parse_event(line: &str, time: u64) -> Result<Event, String> {
    let mut event = Event {
        process: u64::MAX,
        kind: EventKind::Invoke,
        f: String::new(),
        key: None,
        value: Value::Null,
        time,
    };
    for (name, atom) in parse_map(line)? {
        match (name.as_str(), atom) {
            ("process", Atom::Integer(process)) => event.process = process,
            ("type", Atom::Keyword(kind)) => {
                event.kind = match kind.as_str() {
                    "invoke" => EventKind::Invoke,
                    "ok" => EventKind::Ok,
                    "fail" => EventKind::Fail,
                    "info" => EventKind::Info,
                    other => return Err(format!("unknown type {other}")),
                }
            }
            ("f", Atom::Keyword(f)) => event.f = f,
            ("key", Atom::Text(key)) => event.key = Some(key),
            ("value", Atom::Text(text)) => event.value = Value::from(text),
            ("value", Atom::Nil) => event.value = Value::Null,
            (name, atom) => return Err(format!("unexpected field {name} = {atom:?}")),
        }
    }
    if event.kind == EventKind::Ok && event.f == "get" && event.value == "" {
        event.value = Value::Null;
    }
    if event.kind == EventKind::Invoke && event.f != "get" && event.value == "" {
        return Err("an empty write would make the \"\" translation inexact".to_owned());
    }
    Ok(event)
}

#[test]
fn porcupine_kv_histories_get_their_published_verdicts() {
    let directory = testdata_directory().join("histories");
    let verdicts_path = directory.join("VERDICTS.txt");
    let verdicts = fs::read_to_string(&verdicts_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", verdicts_path.display()));
    let mut checked = 0;
    for line in verdicts.lines() {
        let mut words = line.split_whitespace();
        let (Some(path), Some(expected)) = (words.next(), words.next()) else {
            continue;
        };
        if !path.starts_with("kv/") {
            continue;
        }
        let text = fs::read_to_string(directory.join(path)).expect("corpus file is readable");
        let events: Vec<Event> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .enumerate()
            .map(|(index, line)| {
                let time = u64::try_from(index).expect("small");
                parse_event(line, time).unwrap_or_else(|error| panic!("{path}: {error}: {line}"))
            })
            .collect();
        let verdict = check_kv_history(&events, Budget::default())
            .unwrap_or_else(|error| panic!("{path}: {error}"));
        match (expected, &verdict) {
            ("linearizable", Verdict::Linearizable) => {}
            ("not-linearizable", Verdict::NotLinearizable(violation)) => {
                assert!(!violation.stuck.is_empty(), "{path}: {violation}");
            }
            _ => panic!("{path}: expected {expected}, got {verdict:?}"),
        }
        checked += 1;
    }
    assert_eq!(checked, 6, "VERDICTS.txt lists six kv histories");
}
