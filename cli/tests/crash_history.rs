//! Kill -9 under load: clients write and read through the etcd API while the leader
//! process is SIGKILLed and restarted from its data directory. Every operation is
//! recorded as a history (etcd vocabulary, with revisions) and `synod check --model etcd`
//! must find it linearizable: no acknowledged write lost, no read of something that was
//! never written, revisions consistent across keys.

mod common;

use common::ProcessCluster;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_server::api::etcdserverpb as pb;
use synod_server::api::etcdserverpb::kv_client::KvClient;
use synod_server::api::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::{Channel, Endpoint};

type History = Arc<Mutex<Vec<serde_json::Value>>>;

fn record(history: &History, started: Instant, event: serde_json::Value) {
    let mut event = event;
    // Stamped under the lock, so the events are in time order.
    let mut history = history.lock().unwrap();
    event["time"] = json!(started.elapsed().as_nanos() as u64);
    history.push(event);
}

async fn channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

/// One closed-loop client: puts unique values and reads them back, over the members in
/// turn (so some calls land on followers and are forwarded).
async fn client(
    process: u64,
    endpoints: Vec<String>,
    history: History,
    started: Instant,
    stop: Arc<AtomicBool>,
) {
    let mut clients = Vec::new();
    for endpoint in &endpoints {
        clients.push(KvClient::new(channel(endpoint).await));
    }
    let mut counter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        // Twelve keys keep each key's history small enough for the checker to decide.
        let key = format!("k{}", counter % 12);
        let members = clients.len();
        let kv = &mut clients[(counter as usize + process as usize) % members];
        if counter.is_multiple_of(2) {
            let value = format!("{process}:{counter}");
            record(
                &history,
                started,
                json!({"process": process, "type": "invoke", "f": "put", "key": key, "value": value}),
            );
            let answer = kv
                .put(pb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    ..Default::default()
                })
                .await;
            match answer {
                Ok(response) => {
                    let revision = response.into_inner().header.unwrap().revision;
                    record(
                        &history,
                        started,
                        json!({"process": process, "type": "ok", "f": "put", "key": key, "value": value, "revision": revision}),
                    );
                }
                // A failed call may still have been executed: unknown.
                Err(_) => record(
                    &history,
                    started,
                    json!({"process": process, "type": "info", "f": "put", "key": key, "value": value}),
                ),
            }
        } else {
            record(
                &history,
                started,
                json!({"process": process, "type": "invoke", "f": "get", "key": key, "value": null}),
            );
            let answer = kv
                .range(pb::RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await;
            match answer {
                Ok(response) => {
                    let response = response.into_inner();
                    let revision = response.header.unwrap().revision;
                    let (value, mod_revision) = match response.kvs.first() {
                        Some(kv) => (
                            json!(String::from_utf8(kv.value.clone()).unwrap()),
                            kv.mod_revision,
                        ),
                        None => (json!(null), 0),
                    };
                    record(
                        &history,
                        started,
                        json!({"process": process, "type": "ok", "f": "get", "key": key, "value": value, "revision": revision, "mod_revision": mod_revision}),
                    );
                }
                Err(_) => record(
                    &history,
                    started,
                    json!({"process": process, "type": "fail", "f": "get", "key": key, "value": null}),
                ),
            }
        }
    }
}

/// How many puts have been acknowledged so far.
fn acknowledged_puts(history: &History) -> usize {
    history
        .lock()
        .unwrap()
        .iter()
        .filter(|event| event["type"] == "ok" && event["f"] == "put")
        .count()
}

/// Polls `condition` until it holds; panics with `what` after 20 s.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One event a watcher saw: revision, key, value (empty for a delete).
type Seen = (i64, String, String);

/// Watches every key from revision 1, on one member at a time: when its stream breaks (the
/// member was killed), resumes on the next member from the revision after the last event
/// seen, as etcd's clients do. Runs until `stop`, and records every event.
async fn watcher(endpoints: Vec<String>, seen: Arc<Mutex<Vec<Seen>>>, stop: Arc<AtomicBool>) {
    let mut member = 0;
    let mut next_revision = 1;
    while !stop.load(Ordering::Relaxed) {
        member = (member + 1) % endpoints.len();
        let Ok(mut client) = etcd_client::Client::connect([&endpoints[member]], None).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_revision);
        let Ok((_watcher, mut stream)) = client.watch("k", Some(options)).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        while !stop.load(Ordering::Relaxed) {
            let response =
                match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                    Ok(Ok(Some(response))) => response,
                    // Ended or broken (the member was killed): go on with the next member.
                    Ok(Ok(None)) | Ok(Err(_)) => break,
                    // Quiet: look at `stop` and wait again.
                    Err(_) => continue,
                };
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                next_revision = next_revision.max(kv.mod_revision() + 1);
                seen.lock().unwrap().push((
                    kv.mod_revision(),
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                ));
            }
        }
    }
}

/// What every reachable member says of itself, for a failure message.
async fn statuses(endpoints: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let mut maintenance = MaintenanceClient::new(channel(endpoint).await);
        found.push(match maintenance.status(pb::StatusRequest {}).await {
            Ok(status) => format!("member {index}: {:?}", status.into_inner()),
            Err(error) => format!("member {index}: {}", error.message()),
        });
    }
    found
}

/// The index of the member that reports itself as leader.
async fn leader(endpoints: &[String]) -> Option<usize> {
    for (index, endpoint) in endpoints.iter().enumerate() {
        let mut maintenance = MaintenanceClient::new(channel(endpoint).await);
        if let Ok(status) = maintenance.status(pb::StatusRequest {}).await {
            let status = status.into_inner();
            if status.leader != 0 && status.leader == status.header.unwrap().member_id {
                return Some(index);
            }
        }
    }
    None
}

#[test]
fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    // Snapshots every 20 entries: restarts recover from checkpoints, and a restarted
    // member that fell behind a compacted log is caught up by InstallSnapshot.
    let mut cluster = ProcessCluster::start_with(3, &["--snapshot-threshold", "20"]);
    let endpoints = cluster.endpoints.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let history: History = Arc::default();
    let started = Instant::now();
    runtime.block_on(async {
        common::eventually("a leader is elected", || leader(&endpoints)).await;
    });
    // A member must ignore SIGPIPE: with the default action, writing to the connection of
    // a peer that was just killed ends the writer too (it once took down a second member
    // here, and with it the quorum). Rust sets the action as a process starts, so wait for
    // each member to get past that.
    for index in 0..3 {
        let pid = cluster.pid(index).expect("the member runs");
        wait_until("a member ignores SIGPIPE", || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let ignored = status
                .lines()
                .find_map(|line| line.strip_prefix("SigIgn:"))
                .map(|mask| u64::from_str_radix(mask.trim(), 16).unwrap())
                .expect("SigIgn in /proc/PID/status");
            ignored & (1 << (13 - 1)) != 0
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|process| {
            runtime.spawn(client(
                process,
                endpoints.clone(),
                history.clone(),
                started,
                stop.clone(),
            ))
        })
        .collect();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let watching = Arc::new(AtomicBool::new(false));
    let watch_task = runtime.spawn(watcher(endpoints.clone(), seen.clone(), watching.clone()));
    // Kill the leader twice under load, restarting it each time once a new leader serves.
    for _ in 0..2 {
        let before = acknowledged_puts(&history);
        wait_until("20 more puts are acknowledged", || {
            acknowledged_puts(&history) >= before + 20
        });
        let victim = runtime
            .block_on(leader(&endpoints))
            .expect("a leader before the kill");
        cluster.kill(victim);
        let deadline = Instant::now() + Duration::from_secs(20);
        while runtime
            .block_on(leader(&endpoints))
            .is_none_or(|leader| leader == victim)
        {
            if Instant::now() >= deadline {
                let statuses = runtime.block_on(statuses(&endpoints));
                let members: Vec<String> = (0..endpoints.len())
                    .map(|index| cluster.describe(index))
                    .collect();
                panic!(
                    "no other member leads 20 s after member {victim} was killed: {statuses:#?}\n{}",
                    members.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cluster.restart(victim);
    }
    let before = acknowledged_puts(&history);
    wait_until(
        "20 more puts are acknowledged after the last restart",
        || acknowledged_puts(&history) >= before + 20,
    );
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for worker in workers {
            worker.await.unwrap();
        }
    });
    let history = history.lock().unwrap().clone();
    // The watch, resumed across members and kills, sees every acknowledged write once, in
    // revision order, and nothing twice.
    let last_revision = history
        .iter()
        .filter(|event| event["type"] == "ok" && event["f"] == "put")
        .filter_map(|event| event["revision"].as_i64())
        .max()
        .unwrap_or(0);
    wait_until("the watch reaches the last acknowledged write", || {
        seen.lock()
            .unwrap()
            .last()
            .is_some_and(|(revision, _, _)| *revision >= last_revision)
    });
    watching.store(true, Ordering::Relaxed);
    runtime.block_on(watch_task).unwrap();
    let seen = seen.lock().unwrap().clone();
    for pair in seen.windows(2) {
        assert!(
            (pair[0].0, &pair[0].1) < (pair[1].0, &pair[1].1),
            "watch events out of order or repeated: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    for event in history
        .iter()
        .filter(|event| event["type"] == "ok" && event["f"] == "put")
    {
        let expected = (
            event["revision"].as_i64().unwrap(),
            event["key"].as_str().unwrap().to_string(),
            event["value"].as_str().unwrap().to_string(),
        );
        assert!(
            seen.binary_search_by(
                |candidate| (candidate.0, &candidate.1).cmp(&(expected.0, &expected.1))
            )
            .is_ok_and(|index| seen[index] == expected),
            "the watch missed the acknowledged write {expected:?}"
        );
    }
    let oks = history
        .iter()
        .filter(|event| event["type"] == "ok" && event["f"] == "put")
        .count();
    assert!(
        oks > 20,
        "too few acknowledged writes to mean anything: {oks}"
    );
    // Every member took snapshots (the threshold is 20 entries).
    fn snapshot_files(directory: &std::path::Path) -> usize {
        std::fs::read_dir(directory)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| {
                let path = entry.path();
                if path.is_dir() {
                    snapshot_files(&path)
                } else {
                    usize::from(
                        path.extension()
                            .is_some_and(|extension| extension == "snap"),
                    )
                }
            })
            .sum()
    }
    let snapshots = snapshot_files(cluster.data());
    eprintln!("{oks} acknowledged puts, {snapshots} snapshot files");
    if oks > 40 {
        assert!(snapshots > 0, "{oks} writes and not one snapshot file");
    }
    let file = cluster.data().join("history.jsonl");
    let text: String = history.iter().map(|event| format!("{event}\n")).collect();
    std::fs::write(&file, text).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(["check", "--model", "etcd"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the history is not linearizable:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
