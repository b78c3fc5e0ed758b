//! `synod bench` as a user runs it: argument errors exit 2 with a message that says what to
//! do; against a real single-member etcd started here, a short run completes without errors
//! and writes a plot and a JSON report; failed requests are counted and exit 1; the local etcd
//! cluster of `--compare-etcd` and `--local-etcd` starts, reports memory, and is compared.
//!
//! etcd comes from `$SYNOD_ETCD_BIN`, PATH or `.tools/etcd` (scripts/get-etcd.sh installs it
//! there from Debian's packages, and this test runs the script when the binary is missing).
//! Without etcd the test fails: a benchmark test that passes without a server proves nothing.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn synod(arguments: &[&str], etcd_binary: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_synod"));
    command.args(arguments);
    match etcd_binary {
        Some(binary) => command.env("SYNOD_ETCD_BIN", binary),
        None => command.env("SYNOD_ETCD_BIN", "/nonexistent/etcd"),
    };
    command.output().expect("the synod binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    )
}

#[test]
fn argument_errors_exit_2_and_say_what_to_do() {
    let unused_port = free_port();
    let unreachable = format!("http://127.0.0.1:{unused_port}");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--endpoints", "127.0.0.1:1", "--op", "delete"],
            "unknown operation 'delete'",
        ),
        (
            &["--endpoints", "127.0.0.1:1", "--op", "mix:put=50,get"],
            "not name=weight",
        ),
        (
            &[
                "--endpoints",
                "127.0.0.1:1",
                "--duration",
                "5s",
                "--ops",
                "10",
            ],
            "cannot be used with",
        ),
        (
            &["--endpoints", "127.0.0.1:1", "--duration", "soon"],
            "not a duration",
        ),
        (
            &["--endpoints", "127.0.0.1:1", "--clients", "0"],
            "--clients",
        ),
        (
            &[
                "--endpoints",
                "127.0.0.1:1",
                "--key-size",
                "8",
                "--key-space",
                "100000",
            ],
            "use at least 11",
        ),
        (
            &["--endpoints", "http://[::1", "--ops", "5"],
            "is not a URL",
        ),
        (
            &["--local-etcd", "--endpoints", "127.0.0.1:1"],
            "cannot be used with",
        ),
        (
            &["--compare-etcd", "--endpoints", "127.0.0.1:1"],
            "SYNOD_ETCD_BIN=/nonexistent/etcd",
        ),
        (
            &["--endpoints", &unreachable, "--ops", "5"],
            "is the server running there?",
        ),
    ];
    for (arguments, expected) in cases {
        let mut full = vec!["bench"];
        full.extend_from_slice(arguments);
        let output = synod(&full, None);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{arguments:?}\n{}",
            describe(&output)
        );
        assert!(
            text(&output.stderr).contains(expected),
            "{arguments:?}: expected '{expected}' in\n{}",
            describe(&output)
        );
    }
}

#[test]
fn a_short_run_against_etcd_completes_and_writes_a_plot_and_json() {
    let binary = etcd_binary();
    let etcd = SingleEtcd::start(&binary);
    let directory = TempDir::new("synod-bench-test-out");
    let plot = directory.path.join("latency.svg");
    let json = directory.path.join("out.json");
    let plot_argument = plot.to_string_lossy().into_owned();
    let json_argument = json.to_string_lossy().into_owned();

    let output = synod(
        &[
            "bench",
            "--endpoints",
            &etcd.url,
            "--op",
            "mix:put=40,get=30,get-serializable=10,txn=20",
            "--ops",
            "200",
            "--warmup",
            "0s",
            "--clients",
            "8",
            "--connections",
            "2",
            "--key-space",
            "50",
            "--plot",
            &plot_argument,
            "--json",
            &json_argument,
        ],
        Some(&binary),
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        text(&output.stdout).contains("errors      none"),
        "{}",
        describe(&output)
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report exists"))
            .expect("the JSON report parses");
    let run = &report["runs"][0];
    assert_eq!(run["ops"], 200, "{run:#}");
    assert_eq!(run["errors_total"], 0, "{run:#}");
    assert!(
        run["throughput_ops_per_s"].as_f64().unwrap() > 0.0,
        "{run:#}"
    );
    let latency = &run["latency_us"];
    let p50 = latency["p50"].as_u64().unwrap();
    let p99 = latency["p99"].as_u64().unwrap();
    let max = latency["max"].as_u64().unwrap();
    assert!(0 < p50 && p50 <= p99 && p99 <= max, "{latency:#}");
    for kind in ["put", "get", "get-serializable", "txn"] {
        assert!(
            run["per_op"][kind]["ops"].as_u64().unwrap() > 0,
            "no {kind} in {run:#}"
        );
    }
    let windows = run["windows"].as_array().unwrap();
    let window_ops: u64 = windows
        .iter()
        .map(|window| window["ops"].as_u64().unwrap())
        .sum();
    assert_eq!(window_ops, 200, "every request falls in one window");
    assert_eq!(
        report["workload"]["op"],
        "mix:put=40,get=30,get-serializable=10,txn=20"
    );

    let svg = std::fs::read_to_string(&plot).expect("the plot exists");
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(
        svg.matches("<polyline").count(),
        3,
        "p50, p99 and throughput lines:\n{svg}"
    );
    assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    assert_balanced_tags(&svg);
}

#[test]
fn requests_the_server_refuses_are_counted_by_kind_and_exit_1() {
    let binary = etcd_binary();
    let etcd = SingleEtcd::start(&binary);
    let directory = TempDir::new("synod-bench-test-out");
    let json = directory.path.join("out.json");
    let json_argument = json.to_string_lossy().into_owned();
    // The test's etcd accepts requests of at most 4 KiB; 8 KB values are refused.
    let output = synod(
        &[
            "bench",
            "--endpoints",
            &etcd.url,
            "--ops",
            "20",
            "--warmup",
            "0s",
            "--clients",
            "2",
            "--connections",
            "1",
            "--value-size",
            "8000",
            "--json",
            &json_argument,
        ],
        Some(&binary),
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["ops"], 0, "{run:#}");
    assert_eq!(run["errors_total"], 20, "{run:#}");
    let errors = run["errors"].as_object().unwrap();
    assert_eq!(errors.len(), 1, "one kind of error: {errors:#?}");
    assert!(
        text(&output.stdout).contains("errors      "),
        "{}",
        describe(&output)
    );
    assert!(
        !text(&output.stdout).contains("errors      none"),
        "{}",
        describe(&output)
    );
}

#[test]
fn compare_etcd_runs_both_sides_and_local_etcd_reports_memory() {
    let binary = etcd_binary();
    let etcd = SingleEtcd::start(&binary);
    let directory = TempDir::new("synod-bench-test-out");
    let json = directory.path.join("compare.json");
    let json_argument = json.to_string_lossy().into_owned();
    let output = synod(
        &[
            "bench",
            "--endpoints",
            &etcd.url,
            "--compare-etcd",
            "--rounds",
            "2",
            "--etcd-members",
            "1",
            "--ops",
            "100",
            "--warmup",
            "0s",
            "--clients",
            "4",
            "--connections",
            "2",
            "--json",
            &json_argument,
        ],
        Some(&binary),
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        text(&output.stdout).contains("synod/etcd: throughput"),
        "{}",
        describe(&output)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    // Two rounds of synod then etcd, each with its ratios, and their median.
    assert_eq!(runs.len(), 4);
    assert_eq!(report["round_ratios"].as_array().unwrap().len(), 2);
    assert!(
        text(&output.stdout).contains("median, synod/etcd: throughput"),
        "{}",
        describe(&output)
    );
    assert_eq!(runs[0]["target"], "synod");
    assert_eq!(runs[1]["target"], "etcd");
    assert_ne!(
        runs[0]["endpoints"], runs[1]["endpoints"],
        "etcd ran on its own cluster"
    );
    for run in runs {
        assert_eq!(run["ops"], 100, "{run:#}");
        let client = run["client_cpu_us_per_op"].as_f64();
        assert!(client.is_some_and(|micros| micros >= 0.0), "{run:#}");
    }
    // The members' CPU is known only for the cluster started here.
    assert!(runs[0]["member_cpu_us_per_op"].is_null(), "{report:#}");
    let members = runs[1]["member_cpu_us_per_op"].as_f64();
    assert!(members.is_some_and(|micros| micros >= 0.0), "{report:#}");
    assert!(
        text(&output.stdout).contains("cpu         members"),
        "{}",
        describe(&output)
    );
    assert!(
        report["ratios"]["throughput"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert!(
        report["ratios"]["p99"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );

    let load = synod(
        &[
            "bench",
            "--local-etcd",
            "--etcd-members",
            "1",
            "--load",
            "300",
            "--clients",
            "8",
            "--connections",
            "2",
            "--json",
            &json_argument,
        ],
        Some(&binary),
    );
    assert_eq!(load.status.code(), Some(0), "{}", describe(&load));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["ops"], 300, "{run:#}");
    let rss = run["member_rss_bytes"][0]
        .as_u64()
        .expect("the member's RSS is reported");
    assert!(rss > 1_000_000, "an etcd member uses more than 1 MB: {rss}");
    assert!(
        text(&load.stdout).contains("RSS per member"),
        "{}",
        describe(&load)
    );
}

/// Checks that every opened element of the SVG is closed in order (a small well-formedness
/// check, enough for hand-written markup without comments or CDATA).
fn assert_balanced_tags(svg: &str) {
    let mut open: Vec<String> = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find('<') {
        let end = rest[start..].find('>').expect("every tag closes") + start;
        let tag = &rest[start + 1..end];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(open.pop().as_deref(), Some(name), "mismatched </{name}>");
        } else if !tag.ends_with('/') {
            open.push(
                tag.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        rest = &rest[end + 1..];
    }
    assert!(open.is_empty(), "unclosed elements: {open:?}");
}

/// Finds etcd like `synod bench` does, installing it with scripts/get-etcd.sh if missing.
fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SYNOD_ETCD_BIN") {
        return PathBuf::from(path);
    }
    let installed = repository().join(".tools/etcd/usr/bin/etcd");
    if installed.is_file() {
        return installed;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|directory| directory.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|path| path.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let script = repository().join("scripts/get-etcd.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success() && installed.is_file(),
        "etcd is needed for this test and scripts/get-etcd.sh could not install it (it needs apt \
         with network access to Debian's archive); install etcd 3.4+ and set SYNOD_ETCD_BIN.\n{}",
        describe(&output)
    );
    installed
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().unwrap().port()
}

/// A one-member etcd on free loopback ports, stopped and removed on drop.
struct SingleEtcd {
    child: Child,
    url: String,
    _data: TempDir,
}

impl SingleEtcd {
    fn start(binary: &Path) -> SingleEtcd {
        // Both ports are held at once so they differ, then released for etcd.
        let client = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", client.local_addr().unwrap().port());
        let peer_url = format!("http://127.0.0.1:{}", peer.local_addr().unwrap().port());
        drop((client, peer));
        let data = TempDir::new("synod-bench-test-etcd");
        let mut child = Command::new(binary)
            .args(["--name", "solo", "--data-dir"])
            .arg(data.path.join("solo"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("solo={peer_url}")])
            .args(["--max-request-bytes", "4096"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("etcd starts");
        // etcd logs this line once it has a leader and serves clients; until then (or if it
        // exits) the line does not come. The reader thread keeps draining the pipe afterwards.
        let (ready_sender, ready) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to serve client requests") {
                    let _ = ready_sender.send(Ok(()));
                }
                log.push(line);
            }
            let _ = ready_sender.send(Err(log.join("\n")));
        });
        match ready.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => SingleEtcd {
                child,
                url,
                _data: data,
            },
            Ok(Err(log)) => panic!("etcd exited while starting:\n{log}"),
            Err(_) => panic!("etcd did not become ready within 30 s"),
        }
    }
}

impl Drop for SingleEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system's temp dir, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
