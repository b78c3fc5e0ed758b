//! `synod sim` as a user runs it: exit codes, the summary, replay commands and traces.

use std::path::PathBuf;
use std::process::{Command, Output};

fn synod(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(arguments)
        .output()
        .expect("the synod binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn scratch_directory(name: &str) -> PathBuf {
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("scratch directory");
    directory
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    for arguments in [
        &["sim", "--protocol", "raft-kvv"][..],
        &["sim", "--faults", "crash,meteor"],
        &["sim", "--seeds", "10..2"],
        &["sim", "--seeds", "x..y"],
        &["sim", "--variant", "sloppy"],
        &["sim", "--drop-rate", "1.5"],
        &["sim", "--clients", "0"],
        &["sim", "--clients", "many"],
        &["sim", "--trace", "t.trace"],
    ] {
        let output = synod(arguments);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(!message.contains("panicked"), "{arguments:?}: {message}");
        assert!(!message.trim().is_empty(), "{arguments:?} gave no message");
    }
}

#[test]
fn a_sweep_prints_the_summary_and_exits_0() {
    let output = synod(&["sim", "--seeds", "1..40"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("seeds run: 40"), "{text}");
    assert!(text.contains("violations: 0"), "{text}");
    assert!(
        text.contains("events/s") && text.contains("x real time"),
        "{text}"
    );
}

#[test]
fn a_broken_variant_exits_1_with_a_replay_command_that_reproduces_it() {
    let directory = scratch_directory("broken-variant");
    let failures = directory.join("failures");
    let output = synod(&[
        "sim",
        "--variant",
        "no-dedup",
        "--seeds",
        "1..10",
        "--failures-dir",
        failures.to_str().expect("utf-8 path"),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(!text.contains("violations: 0"), "{text}");
    let replay = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("replay: synod "))
        .expect("a replay command");
    let trace_line = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("trace: "))
        .expect("a trace path");
    let written = std::fs::read_to_string(trace_line).expect("the trace was written");
    // Replaying the printed command reproduces the violation and the same trace.
    let replay_trace = directory.join("replay.trace");
    let mut arguments: Vec<String> = replay.split_whitespace().map(str::to_string).collect();
    let trace_flag = arguments
        .iter()
        .position(|argument| argument == "--trace")
        .expect("replay names a trace");
    arguments[trace_flag + 1] = replay_trace.to_string_lossy().into_owned();
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let rerun = synod(&arguments);
    assert_eq!(rerun.status.code(), Some(1), "{}", stdout(&rerun));
    let replayed = std::fs::read_to_string(&replay_trace).expect("replay trace");
    assert_eq!(written, replayed, "the replay diverged from the sweep");
    assert!(stdout(&rerun).contains("not linearizable"));
}

#[test]
fn a_single_seed_prints_its_trace_hash_and_writes_trace_and_history() {
    let directory = scratch_directory("single-seed");
    let trace = directory.join("seed.trace");
    let history = directory.join("seed.jsonl");
    let run = |trace: &PathBuf| {
        synod(&[
            "sim",
            "--seed",
            "17",
            "--trace",
            trace.to_str().expect("utf-8 path"),
            "--history",
            history.to_str().expect("utf-8 path"),
        ])
    };
    let first = run(&trace);
    let text = stdout(&first);
    assert_eq!(first.status.code(), Some(0), "{text}");
    let hash_line = text
        .lines()
        .find(|line| line.starts_with("trace hash: "))
        .expect("a trace hash");
    let second = run(&directory.join("again.trace"));
    assert!(
        stdout(&second).contains(hash_line),
        "the hash changed between runs"
    );
    let trace_text = std::fs::read_to_string(&trace).expect("trace written");
    assert!(trace_text.lines().count() > 100);
    let events = synod_check::history::read_jsonl_file(&history).expect("valid history");
    assert_eq!(events.len(), 400);
}

#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args([
            "sim",
            "--variant",
            "no-dedup",
            "--seeds",
            "1..200",
            "--failures-dir",
        ])
        .arg(scratch_directory("closed-pipe"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the synod binary runs");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .expect("one line");
    // The reader is gone now, like `synod sim | head -1`.
    let output = child.wait_with_output().expect("the command ends");
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(!errors.contains("panicked"), "{errors}");
    assert!(first_line.starts_with("simulating"), "{first_line}");
}

#[test]
fn raft_kv_runs_clean_with_every_read_path() {
    for variant in ["correct", "lease-reads", "log-reads"] {
        let output = synod(&[
            "sim",
            "--protocol",
            "raft-kv",
            "--variant",
            variant,
            "--seeds",
            "1..20",
        ]);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{variant}: {text}");
        assert!(text.contains("workload mvcc"), "{variant}: {text}");
        assert!(text.contains("seeds run: 20"), "{variant}: {text}");
        assert!(text.contains("violations: 0"), "{variant}: {text}");
        assert!(
            text.contains("acknowledged writes lost: 0 of "),
            "{variant}: {text}"
        );
    }
    // The session store stays reachable.
    let output = synod(&[
        "sim",
        "--protocol",
        "raft-kv",
        "--workload",
        "session-kv",
        "--seeds",
        "1..10",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("workload session-kv"), "{text}");
    assert!(!text.contains("acknowledged writes lost"), "{text}");
    let output = synod(&["sim", "--protocol", "amo-kv", "--workload", "mvcc"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("paxos-kv or raft-kv"));
    let output = synod(&["sim", "--protocol", "raft-kv", "--variant", "figure9"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("figure8"));
}

#[test]
fn paxos_kv_runs_the_mvcc_workload_clean() {
    let output = synod(&["sim", "--protocol", "paxos-kv", "--seeds", "1..20"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("workload mvcc"), "{text}");
    assert!(text.contains("violations: 0"), "{text}");
    assert!(text.contains("acknowledged writes lost: 0 of "), "{text}");
}

#[test]
fn early_lease_expiry_is_caught_and_its_history_fails_synod_check() {
    let directory = scratch_directory("half-ttl-leases");
    let failures = directory.join("failures");
    let output = synod(&[
        "sim",
        "--protocol",
        "raft-kv",
        "--variant",
        "half-ttl-leases",
        "--faults",
        "drop,duplicate,reorder,partition,crash,pause",
        "--seeds",
        "15..25",
        "--failures-dir",
        failures.to_str().expect("utf-8 path"),
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("not linearizable"), "{text}");
    let history = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("history: "))
        .expect("a history path");
    // The written history carries its etcd fields: the etcd model rejects it on its own.
    let check = synod(&["check", "--model", "etcd", history]);
    assert_eq!(check.status.code(), Some(1), "{}", stdout(&check));
    // The correct machine passes the same seeds, and its history checks.
    let single = directory.join("seed.jsonl");
    let output = synod(&[
        "sim",
        "--protocol",
        "raft-kv",
        "--faults",
        "drop,duplicate,reorder,partition,crash,pause",
        "--seed",
        "20",
        "--history",
        single.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    let check = synod(&["check", "--model", "etcd", single.to_str().expect("utf-8")]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
}
