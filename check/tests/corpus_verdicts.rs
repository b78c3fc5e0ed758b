//! Every history of the vendored corpus (`check/testdata/histories/`, see its README for where it
//! comes from) gets the verdict its authors established in `VERDICTS.txt`: 102 Jepsen etcd
//! register logs, six key-value histories in EDN, and one log with no usable history, which must
//! be refused as bad input rather than passed.

use std::fs;
use std::path::{Path, PathBuf};

use synod_check::format::{Format, read_history_file};
use synod_check::{CheckOptions, KvModel, RegisterModel, Verdict, check};

/// Where the vendored corpus lives.
fn corpus_directory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/histories")
}

/// (path relative to the corpus, expected verdict) for every line of `VERDICTS.txt`.
fn expected_verdicts() -> Vec<(String, String)> {
    let path = corpus_directory().join("VERDICTS.txt");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// The verdict for one corpus file, as the CLI would name it: "linearizable",
/// "not-linearizable", or "no-verdict" (bad input or unknown).
fn verdict_of(relative_path: &str, options: &CheckOptions) -> String {
    let path = corpus_directory().join(relative_path);
    let history = match read_history_file(&path, None) {
        Ok(history) => history,
        Err(_) => return "no-verdict".to_owned(),
    };
    let report = match history.format {
        Format::Jepsen => check(&RegisterModel, &history.events, options),
        Format::Edn | Format::Jsonl => check(&KvModel, &history.events, options),
    };
    match report.map(|report| report.verdict) {
        Ok(Verdict::Linearizable) => "linearizable".to_owned(),
        Ok(Verdict::NotLinearizable(violation)) => {
            assert!(!violation.stuck.is_empty(), "{relative_path}: {violation}");
            assert!(
                violation.stuck.contains(&violation.failing),
                "{relative_path}"
            );
            "not-linearizable".to_owned()
        }
        Ok(Verdict::Unknown { .. }) | Err(_) => "no-verdict".to_owned(),
    }
}

#[test]
fn every_corpus_history_gets_its_published_verdict() {
    let expected = expected_verdicts();
    let options = CheckOptions {
        threads: 2,
        ..CheckOptions::default()
    };
    let mut mismatches = Vec::new();
    let mut counts = [0usize; 3];
    for (path, verdict) in &expected {
        let got = verdict_of(path, &options);
        if &got != verdict {
            mismatches.push(format!("{path}: expected {verdict}, got {got}"));
        }
        counts[usize::from(path.starts_with("kv/")) + 2 * usize::from(verdict == "no-verdict")] +=
            1;
    }
    assert_eq!(mismatches, Vec::<String>::new());
    assert_eq!(
        counts,
        [102, 6, 1],
        "102 Jepsen, 6 key-value, 1 without a verdict"
    );
}

#[test]
fn the_key_value_histories_get_the_same_verdicts_unpartitioned() {
    // Checked whole, the search's state holds all ten keys at once: the same answer, found the
    // hard way. The 50-client histories are left to the benchmark.
    let options = CheckOptions {
        partition: false,
        ..CheckOptions::default()
    };
    for (path, verdict) in expected_verdicts() {
        if path.starts_with("kv/c01") || path.starts_with("kv/c10") {
            assert_eq!(verdict_of(&path, &options), verdict, "{path}");
        }
    }
}

#[test]
fn the_empty_log_is_refused_as_bad_input() {
    let path = corpus_directory().join("jepsen/etcd_095.log");
    let error = read_history_file(&path, None).expect_err("no history in it");
    assert!(
        error
            .to_string()
            .ends_with("etcd_095.log: holds no history events"),
        "{error}"
    );
}
