//! `synod check` as a user runs it: verdicts, exit codes, explanations, HTML, bad input.

use std::path::{Path, PathBuf};
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

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A corpus file, as a path string.
fn corpus(relative: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../check/testdata/histories")
        .join(relative)
        .display()
        .to_string()
}

fn scratch_directory(name: &str) -> PathBuf {
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&directory);
    std::fs::create_dir_all(&directory).expect("scratch directory");
    directory
}

#[test]
fn a_linearizable_history_exits_0_with_time_and_memory() {
    let output = synod(&["check", &corpus("jepsen/etcd_002.log")]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(
        text.contains("etcd_002.log: linearizable (compare-and-set register model, jepsen format"),
        "{text}"
    );
    assert!(text.contains("elapsed: "), "{text}");
    assert!(
        text.contains("peak memory: ") && text.contains(" MiB"),
        "{text}"
    );
}

#[test]
fn a_violation_exits_1_with_an_explanation() {
    let output = synod(&["check", &corpus("jepsen/etcd_000.log")]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT linearizable"), "{text}");
    assert!(
        text.contains("the longest linearizable prefix has 33 operations"),
        "{text}"
    );
    assert!(text.contains("none of these can come next:"), "{text}");
    assert!(
        text.contains(
            "the operation that cannot be placed: process 11 read -> 2 (ok, events 84-85)"
        ),
        "{text}"
    );
}

#[test]
fn the_html_page_is_written_and_shows_the_failing_operation() {
    let directory = scratch_directory("check-html");
    let page_path = directory.join("violation.html");
    let page_argument = page_path.display().to_string();
    let output = synod(&["check", &corpus("kv/c10-bad.txt"), "--html", &page_argument]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("html: wrote {page_argument}")),
        "{text}"
    );
    let page = std::fs::read_to_string(&page_path).expect("the page was written");
    assert!(page.contains("<svg"), "no drawing");
    assert_eq!(page.matches("class=\"op failing").count(), 1);
    // The failing operation's description, as the explanation names it, is on the page.
    let failing_line = text
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("the operation that cannot be placed: ")
        })
        .expect("the explanation names the failing operation");
    let escaped = failing_line.replace('"', "&quot;").replace('>', "&gt;");
    assert!(
        page.contains(&format!("<title>{escaped}</title>")),
        "{failing_line}"
    );

    // A linearizable history has nothing to draw.
    let quiet_path = directory.join("none.html");
    let quiet_argument = quiet_path.display().to_string();
    let output = synod(&["check", &corpus("kv/c01-ok.txt"), "--html", &quiet_argument]);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout(&output).contains("no violation to draw"));
    assert!(!quiet_path.exists());
}

#[test]
fn key_value_histories_check_with_and_without_partitioning() {
    for partitioning in [&[][..], &["--no-partition"][..]] {
        for (file, code) in [("kv/c10-ok.txt", 0), ("kv/c10-bad.txt", 1)] {
            let path = corpus(file);
            let mut arguments = vec!["check", path.as_str()];
            arguments.extend_from_slice(partitioning);
            let output = synod(&arguments);
            assert_eq!(
                output.status.code(),
                Some(code),
                "{arguments:?}: {}",
                stdout(&output)
            );
            let partitions = if partitioning.is_empty() {
                "10 partitions"
            } else {
                "1 partition"
            };
            assert!(stdout(&output).contains(partitions), "{}", stdout(&output));
        }
    }
}

#[test]
fn an_exhausted_budget_is_unknown_and_exits_2() {
    let output = synod(&[
        "check",
        &corpus("kv/c10-ok.txt"),
        "--no-partition",
        "--budget",
        "50",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("unknown (budget exceeded)"), "{text}");
    assert!(text.contains("budget of 50 states"), "{text}");
}

#[test]
fn several_files_print_one_line_each_and_the_worst_exit_code() {
    let files = [
        corpus("jepsen/etcd_002.log"),
        corpus("jepsen/etcd_000.log"),
        corpus("jepsen/etcd_095.log"),
    ];
    let output = synod(&["check", &files[0], &files[1]]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "checked 2 files: 1 linearizable, 1 not linearizable, 0 bad input or unknown"
        ),
        "{text}"
    );
    assert!(!text.contains("none of these can come next"), "{text}");

    let output = synod(&["check", &files[0], &files[1], &files[2]]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stdout(&output).contains("1 bad input or unknown"));
}

#[test]
fn the_log_without_a_history_is_bad_input() {
    let output = synod(&["check", &corpus("jepsen/etcd_095.log")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("etcd_095.log: holds no history events"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn malformed_input_names_the_file_and_line() {
    let directory = scratch_directory("check-malformed");
    let cases = [
        (
            "broken.jsonl",
            "{\"process\":1,\"type\":\"invoke\",\"f\":\"get\",\"key\":\"a\",\"time\":1}\n{\"process\":1,\"type\":\"ok\"\n",
            "broken.jsonl:2: malformed event",
        ),
        (
            "orphan.jsonl",
            "\n{\"process\":1,\"type\":\"ok\",\"f\":\"get\",\"key\":\"a\",\"value\":null,\"time\":1}\n",
            "orphan.jsonl:2: event index 0: process 1 reports ok",
        ),
        (
            "bad-cas.log",
            "INFO  jepsen.util - 1\t:invoke\t:cas\t7\nINFO  jepsen.util - 1\t:ok\t:cas\t7\n",
            "bad-cas.log:1: event index 0: \"cas\" argument must be a pair",
        ),
        (
            "typo.log",
            "INFO  jepsen.util - 1\t:invoke\t:read\tnil\nINFO  jepsen.util - 1\t:okay\t:read\t3\n",
            "typo.log:2: malformed event: type must be",
        ),
        (
            "random.txt",
            "hello\n",
            "random.txt:1: malformed event: not a history",
        ),
    ];
    for (name, content, expected) in cases {
        let path = directory.join(name);
        std::fs::write(&path, content).expect("scratch file");
        let output = synod(&["check", &path.display().to_string()]);
        assert_eq!(output.status.code(), Some(2), "{name}");
        let message = stderr(&output);
        assert!(message.contains(expected), "{name}: {message}");
        assert!(!message.contains("panicked"), "{name}: {message}");
    }
}

#[test]
fn the_format_and_model_can_be_forced() {
    // A Jepsen log read as JSON Lines fails on its first line.
    let output = synod(&["check", "--format", "jsonl", &corpus("jepsen/etcd_002.log")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("etcd_002.log:1: malformed event"),
        "{}",
        stderr(&output)
    );
    // A key-value history checked as a register has operations the register lacks.
    let output = synod(&["check", "--model", "register", &corpus("kv/c01-ok.txt")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("has no operation"),
        "{}",
        stderr(&output)
    );
    let output = synod(&[
        "check",
        "--format",
        "edn",
        "--model",
        "kv",
        &corpus("kv/c01-ok.txt"),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let file = corpus("jepsen/etcd_002.log");
    for arguments in [
        &["check"][..],
        &["check", &file, &file, "--html", "out.html"],
        &["check", &file, "--budget", "0"],
        &["check", &file, "--threads", "0"],
        &["check", &file, "--model", "queue"],
        &["check", &file, "--format", "yaml"],
        &["check", "/nonexistent/history.jsonl"],
    ] {
        let output = synod(arguments);
        assert_eq!(output.status.code(), Some(2), "{arguments:?}");
        let message = stderr(&output);
        assert!(!message.contains("panicked"), "{arguments:?}: {message}");
        assert!(!message.trim().is_empty(), "{arguments:?} gave no message");
    }
}

/// A small etcd-like history: two puts on different keys, then a get of the first.
const ETCD_HISTORY: &str = r#"{"process":1,"type":"invoke","f":"put","key":"a","value":"x","time":1}
{"process":1,"type":"ok","f":"put","key":"a","value":"x","time":2,"revision":1}
{"process":2,"type":"invoke","f":"put","key":"b","value":"y","time":3}
{"process":2,"type":"ok","f":"put","key":"b","value":"y","time":4,"revision":2}
{"process":1,"type":"invoke","f":"get","key":"a","value":null,"time":5}
{"process":1,"type":"ok","f":"get","key":"a","value":"x","time":6,"revision":2,"mod_revision":1}
"#;

#[test]
fn etcd_histories_are_checked_with_their_revisions() {
    let directory = scratch_directory("check-etcd");
    let good = directory.join("good.jsonl");
    std::fs::write(&good, ETCD_HISTORY).expect("scratch file");
    // The second put reports a revision below the first's, which completed before it began.
    let backwards = directory.join("backwards.jsonl");
    std::fs::write(
        &backwards,
        ETCD_HISTORY.replace(r#""revision":2}"#, r#""revision":0}"#),
    )
    .expect("scratch file");
    let (good, backwards) = (good.display().to_string(), backwards.display().to_string());

    for arguments in [
        vec!["check", &good],
        vec!["check", "--model", "etcd", &good],
    ] {
        let output = synod(&arguments);
        let text = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
        assert!(
            text.contains("linearizable (etcd key-value model, jsonl format, 3 operations"),
            "{text}"
        );
    }

    let page = directory.join("backwards.html");
    let page_argument = page.display().to_string();
    let output = synod(&[
        "check",
        "--model",
        "etcd",
        &backwards,
        "--html",
        &page_argument,
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}{}", stderr(&output));
    assert!(
        text.contains("created revision 0, which is below revision 1 of process 1's put"),
        "{text}"
    );
    let html = std::fs::read_to_string(&page).expect("the page was written");
    assert!(html.contains("class=\"op failing\""), "{html}");

    // Without the etcd fields the same operations are a plain key-value history, as before.
    let plain = directory.join("plain.jsonl");
    let stripped: String = ETCD_HISTORY
        .lines()
        .map(|line| {
            let end = line.find(r#","revision""#).unwrap_or(line.len() - 1);
            format!("{}}}\n", &line[..end])
        })
        .collect();
    std::fs::write(&plain, stripped).expect("scratch file");
    let output = synod(&["check", &plain.display().to_string()]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}{}", stderr(&output));
    assert!(text.contains("(key-value model, jsonl format"), "{text}");
}

#[test]
fn a_malformed_etcd_operation_names_its_line_and_exits_2() {
    let directory = scratch_directory("check-etcd-malformed");
    let path = directory.join("cas.jsonl");
    std::fs::write(
        &path,
        "{\"process\":1,\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"a\",\"value\":[null,\"x\"],\"time\":1}\n\n\
         {\"process\":1,\"type\":\"ok\",\"f\":\"cas\",\"key\":\"a\",\"value\":[null,\"x\"],\"time\":2,\"revision\":1}\n",
    )
    .expect("scratch file");
    let output = synod(&["check", "--model", "etcd", &path.display().to_string()]);
    assert_eq!(output.status.code(), Some(2), "{}", stdout(&output));
    let errors = stderr(&output);
    assert!(
        errors.contains("cas.jsonl:3: event index 1: \"cas\" ok needs \"succeeded\""),
        "{errors}"
    );
}
