//! `synod mc` as a user runs it: verdicts as exit codes, on 2PC and on the unmodified
//! Multi-Paxos nodes.

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
fn the_forgetful_paxos_proposer_is_caught_from_the_command_line() {
    let walk = ["--rounds", "3", "--random", "20000", "--max-depth", "200"];
    let mut broken = vec![
        "mc",
        "--model",
        "paxos-kv",
        "--variant",
        "forget-accepted-values",
    ];
    broken.extend(walk);
    let output = synod(&broken);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert!(stdout(&output).contains("verdict: violation"));
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
        &["mc", "--model", "2pc", "--rms", "0"],
    ] {
        let output = synod(arguments);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
}
