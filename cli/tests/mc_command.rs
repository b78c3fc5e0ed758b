//! `synod mc` as a user runs it: verdicts as exit codes, on 2PC and on the unmodified
//! Multi-Paxos and primary-backup nodes; counterexamples written as trace files and
//! replayed by `synod sim --replay`.

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

#[test]
fn two_phase_commit_is_verified_and_its_broken_variant_caught() {
    let verified = synod(&["mc", "--model", "2pc", "--rms", "4"]);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    assert!(stdout(&verified).contains("verdict: verified"));
    let broken = synod(&[
        "mc",
        "--model",
        "2pc",
        "--rms",
        "3",
        "--variant",
        "commit-early",
        "--bfs",
    ]);
    assert_eq!(broken.status.code(), Some(1), "{}", stdout(&broken));
}

#[test]
fn the_forgetful_paxos_proposer_is_caught_and_its_trace_replays_in_the_simulator() {
    let path = trace_path("paxos");
    let file = path.to_str().expect("a UTF-8 temporary path");
    let walk = ["--rounds", "3", "--random", "20000", "--max-depth", "200"];
    let mut broken = vec![
        "mc",
        "--model",
        "paxos-kv",
        "--variant",
        "forget-accepted-values",
        "--trace-out",
        file,
    ];
    broken.extend(walk);
    let output = synod(&broken);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(stdout(&output).contains("verdict: violation"));
    assert!(stdout(&output).contains("trace file:"));
    // The simulator finds the same violation on the same steps...
    let replayed = synod(&["sim", "--replay", file]);
    assert_eq!(replayed.status.code(), Some(1), "{}", stdout(&replayed));
    assert!(stdout(&replayed).contains("violations: 1"));
    // ...and the correct nodes, driven through them, break nothing.
    let clean = synod(&["sim", "--replay", file, "--replay-variant", "correct"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
    assert!(stdout(&clean).contains("violations: 0"));
    let _ = std::fs::remove_file(&path);
    let mut correct = vec!["mc", "--model", "paxos-kv", "--random", "2000"];
    correct.extend(&walk[..2]);
    correct.extend(["--max-depth", "200"]);
    let output = synod(&correct);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn unknown_models_and_variants_exit_2() {
    for arguments in [
        &["mc", "--model", "raft"][..],
        &["mc", "--model", "paxos-kv", "--variant", "sloppy"],
        &["mc", "--model", "pb-kv", "--variant", "sloppy"],
        &["mc", "--model", "2pc", "--rms", "0"],
    ] {
        let output = synod(arguments);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
}

/// A fresh path in the temporary directory for this test's trace file.
fn trace_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("synod-mc-{}-{name}.json", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn primary_backup_variants_are_caught_and_the_correct_one_is_not() {
    let bfs = ["--bfs", "--max-depth", "8"];
    let walks = ["--random", "5000", "--max-depth", "30"];
    for (variant, search) in [
        ("view-service-skips-ack", &bfs[..]),
        ("reply-before-backup-ack", &walks[..]),
    ] {
        let mut broken = vec!["mc", "--model", "pb-kv", "--variant", variant];
        broken.extend(search);
        let output = synod(&broken);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{variant}: {}",
            stdout(&output)
        );
        let mut correct = vec!["mc", "--model", "pb-kv"];
        correct.extend(search);
        let output = synod(&correct);
        assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
        assert!(!stdout(&output).contains("BROKEN"));
    }
}

#[test]
fn a_primary_backup_counterexample_replays_as_the_same_broken_invariant() {
    let path = trace_path("pb");
    let file = path.to_str().expect("a UTF-8 temporary path");
    let output = synod(&[
        "mc",
        "--model",
        "pb-kv",
        "--variant",
        "view-service-skips-ack",
        "--bfs",
        "--max-depth",
        "8",
        "--trace-out",
        file,
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let replayed = synod(&["sim", "--replay", file]);
    assert_eq!(replayed.status.code(), Some(1), "{}", stdout(&replayed));
    assert!(
        stdout(&replayed).contains("before the primary of view 1 installed it"),
        "{}",
        stdout(&replayed)
    );
    let clean = synod(&["sim", "--replay", file, "--replay-variant", "correct"]);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn bad_trace_files_exit_2_with_a_reason() {
    let path = trace_path("garbage");
    std::fs::write(&path, "{\"history\": []}").expect("writes");
    let file = path.to_str().expect("a UTF-8 temporary path");
    let output = synod(&["sim", "--replay", file]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.contains("not a trace file"), "{stderr}");
    let missing = synod(&["sim", "--replay", "/nonexistent/trace.json"]);
    assert_eq!(missing.status.code(), Some(2));
    let _ = std::fs::remove_file(&path);
}
