//! Wire compatibility with a client we did not write: Debian's `etcdctl` (3.4) against a
//! three-process `synod server` cluster on OS-chosen loopback ports.
//!
//! etcdctl comes from `$SYNOD_ETCDCTL_BIN`, PATH, or `.tools/etcd` (installed by
//! scripts/get-etcd.sh when missing; the test fails, not skips, if it cannot be had).

mod common;

use common::ProcessCluster;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// etcdctl, installed with scripts/get-etcd.sh if it is nowhere to be found.
fn etcdctl_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SYNOD_ETCDCTL_BIN") {
        return PathBuf::from(path);
    }
    let local = repository().join(".tools/etcd/usr/bin/etcdctl");
    if local.exists() {
        return local;
    }
    if let Ok(output) = Command::new("which").arg("etcdctl").output()
        && output.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    }
    let script = repository().join("scripts/get-etcd.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run scripts/get-etcd.sh");
    assert!(
        output.status.success() && local.exists(),
        "etcdctl is needed for this test and scripts/get-etcd.sh could not install it: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    local
}

struct Cluster {
    _processes: ProcessCluster,
    endpoints: Vec<String>,
}

impl Cluster {
    fn start() -> Cluster {
        let processes = ProcessCluster::start(3);
        let cluster = Cluster {
            endpoints: processes.endpoints.clone(),
            _processes: processes,
        };
        // Ready when a write goes through.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let output = cluster.etcdctl(&["put", "ready", "yes"]);
            if output.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "the cluster never took a write");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn command(&self, endpoints: &str) -> Command {
        let mut command = Command::new(etcdctl_binary());
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(["--command-timeout=10s", "--dial-timeout=5s"]);
        command
    }

    fn etcdctl(&self, arguments: &[&str]) -> Output {
        self.command(&self.endpoints.join(","))
            .args(arguments)
            .output()
            .unwrap()
    }

    /// Runs etcdctl and returns stdout; panics with stderr on failure.
    fn ok(&self, arguments: &[&str]) -> String {
        let output = self.etcdctl(arguments);
        assert!(
            output.status.success(),
            "etcdctl {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn ok_with_input(&self, arguments: &[&str], input: &str) -> String {
        let mut child = self
            .command(&self.endpoints.join(","))
            .args(arguments)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "etcdctl {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// The revision in `etcdctl -w json` output's header.
fn header_revision(json: &str) -> i64 {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value["header"]["revision"].as_i64().unwrap()
}

#[test]
fn etcdctl_works_unchanged_against_a_synod_cluster() {
    let cluster = Cluster::start();

    // put / get / prefix / keys-only / limit / rev / del
    assert_eq!(cluster.ok(&["put", "fruit/apple", "red"]), "OK\n");
    let first = header_revision(&cluster.ok(&["get", "fruit/apple", "-w", "json"]));
    cluster.ok(&["put", "fruit/apple", "green"]);
    cluster.ok(&["put", "fruit/banana", "yellow"]);
    assert_eq!(cluster.ok(&["get", "fruit/apple"]), "fruit/apple\ngreen\n");
    assert_eq!(
        cluster.ok(&["get", "--prefix", "fruit/", "--keys-only"]),
        "fruit/apple\n\nfruit/banana\n\n"
    );
    assert_eq!(
        cluster.ok(&["get", "--prefix", "fruit/", "--limit", "1"]),
        "fruit/apple\ngreen\n"
    );
    assert_eq!(
        cluster.ok(&["get", "fruit/apple", &format!("--rev={first}")]),
        "fruit/apple\nred\n"
    );
    assert_eq!(cluster.ok(&["del", "fruit/banana"]), "1\n");
    assert_eq!(cluster.ok(&["get", "fruit/banana"]), "");

    // txn: compare value, then success / failure branches.
    let txn =
        "value(\"fruit/apple\") = \"green\"\n\nput fruit/apple ripe\n\nput fruit/apple unripe\n\n";
    assert!(cluster.ok_with_input(&["txn"], txn).starts_with("SUCCESS"));
    assert!(cluster.ok_with_input(&["txn"], txn).starts_with("FAILURE"));
    assert_eq!(
        cluster.ok(&["get", "fruit/apple", "--print-value-only"]),
        "unripe\n"
    );

    // watch from a past revision with prev_kv replays history, in order.
    let mut watch = cluster
        .command(&cluster.endpoints[2])
        .args([
            "watch",
            "fruit/apple",
            &format!("--rev={first}"),
            "--prev-kv",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // Each event prints: PUT, key, value (and the previous key and value with --prev-kv).
    while seen.len() < 10 {
        let line = lines.next().expect("watch output").unwrap();
        seen.push(line);
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(seen[0], "PUT");
    assert_eq!(&seen[1..3], ["fruit/apple", "red"]);
    assert_eq!(seen[3], "PUT");
    assert_eq!(&seen[4..8], ["fruit/apple", "red", "fruit/apple", "green"]);

    // Leases: grant, attach, keep alive, time to live with keys, revoke.
    let grant = cluster.ok(&["lease", "grant", "60"]);
    let lease = grant.split_whitespace().nth(1).unwrap().to_string();
    cluster.ok(&["put", "session", "alive", &format!("--lease={lease}")]);
    assert!(
        cluster
            .ok(&["lease", "keep-alive", "--once", &lease])
            .contains("keepalived with TTL(60)")
    );
    let ttl = cluster.ok(&["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("attached keys([session])"), "{ttl}");
    cluster.ok(&["lease", "revoke", &lease]);
    assert_eq!(cluster.ok(&["get", "session"]), "");
    assert!(
        cluster
            .ok(&["lease", "timetolive", &lease])
            .contains("already expired")
    );

    // A lease left alone expires, and its key goes with it (the leader decides expiry).
    let short = cluster.ok(&["lease", "grant", "1"]);
    let short = short.split_whitespace().nth(1).unwrap().to_string();
    cluster.ok(&["put", "ephemeral", "x", &format!("--lease={short}")]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cluster.ok(&["get", "ephemeral"]).is_empty() {
        assert!(Instant::now() < deadline, "a 1 s lease never expired");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Cluster and maintenance.
    let members = cluster.ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    let status = cluster.ok(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let statuses = status.as_array().unwrap();
    assert_eq!(statuses.len(), 3);
    let leaders: Vec<u64> = statuses
        .iter()
        .map(|entry| entry["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders
            .iter()
            .all(|&leader| leader == leaders[0] && leader != 0)
    );
    let on_leader = statuses
        .iter()
        .filter(|entry| {
            entry["Status"]["leader"].as_u64() == entry["Status"]["header"]["member_id"].as_u64()
        })
        .count();
    assert_eq!(on_leader, 1, "exactly one member reports itself as leader");
    // etcdctl 3.4 prints health reports on stderr.
    let health = cluster.etcdctl(&["endpoint", "health"]);
    assert!(health.status.success());
    let health = String::from_utf8_lossy(&health.stderr).to_string()
        + &String::from_utf8_lossy(&health.stdout);
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    let snapshot = tempfile::tempdir().unwrap();
    let path = snapshot.path().join("snap.db");
    let output = cluster
        .command(&cluster.endpoints[0])
        .args(["snapshot", "save"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len() % 512, 32);

    // lock and elect: client-side recipes over txn, sort, max_create_revision and watch.
    let locked = cluster.ok(&["lock", "my-lock", "echo", "inside"]);
    assert_eq!(locked.trim(), "inside");
    let mut leader = cluster
        .command(&cluster.endpoints.join(","))
        .args(["elect", "my-election", "first"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(leader.stdout.take().unwrap()).lines();
    let announced = lines.next().expect("elect prints the leader key").unwrap();
    assert!(announced.starts_with("my-election/"), "{announced}");
    let observed = cluster.ok(&["get", "--prefix", "my-election/", "--print-value-only"]);
    assert_eq!(observed.trim(), "first");
    let _ = leader.kill();
    let _ = leader.wait();
}
