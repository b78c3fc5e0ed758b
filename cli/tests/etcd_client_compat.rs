//! Wire compatibility with the Rust `etcd-client` crate (0.17, a client we did not write),
//! against a three-process `synod server` cluster on OS-chosen loopback ports.
//!
//! The crate's build script needs `protoc`; `.cargo/config.toml` points it at
//! `scripts/protoc`, which installs Debian's protobuf-compiler when it is missing.

mod common;

use common::{PATIENCE, ProcessCluster, eventually};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, LeaseTimeToLiveOptions,
    LockOptions, PutOptions, ResignOptions, SortOrder, SortTarget, Txn, TxnOp, WatchOptions,
};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

struct Cluster {
    _processes: ProcessCluster,
    endpoints: Vec<String>,
}

impl Cluster {
    /// Starts three members and waits until every one of them answers and knows a leader:
    /// the balanced client sends each request to any member, and does not retry elsewhere
    /// when one is still starting.
    async fn start() -> Cluster {
        let processes = ProcessCluster::start(3);
        let cluster = Cluster {
            endpoints: processes.endpoints.clone(),
            _processes: processes,
        };
        let deadline = Instant::now() + PATIENCE;
        for endpoint in &cluster.endpoints {
            loop {
                let attempt = async {
                    let mut client = Client::connect([endpoint], None).await?;
                    client.status().await
                };
                match attempt.await {
                    Ok(status) if status.leader() != 0 => break,
                    outcome => {
                        assert!(
                            Instant::now() < deadline,
                            "member {endpoint} never became ready: {:?}",
                            outcome.map(|status| status.leader())
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        cluster
    }

    /// A client balanced over every member.
    async fn client(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(&self.endpoints, None).await
    }

    /// A client talking to one member only.
    async fn client_of(&self, index: usize) -> Client {
        Client::connect([&self.endpoints[index]], None)
            .await
            .expect("connect to one member")
    }

    /// The index of the member that says it leads (its Status leader equals its own id).
    async fn leader_index(&self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for index in 0..self.endpoints.len() {
                let mut client = self.client_of(index).await;
                if let Ok(status) = client.status().await {
                    let own = status.header().expect("a header").member_id();
                    if status.leader() == own {
                        return index;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no member claims leadership");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn message(error: etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_string(),
        other => other.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_watch_and_compaction_work_through_etcd_client() {
    let cluster = Cluster::start().await;
    let mut client = cluster.client().await.unwrap();

    // Put and get, with revisions in every header.
    let first = client.put("fruit/apple", "red", None).await.unwrap();
    let first_revision = first.header().unwrap().revision();
    assert!(first_revision > 1);
    let replaced = client
        .put(
            "fruit/apple",
            "green",
            Some(PutOptions::new().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(replaced.prev_key().unwrap().value(), b"red");
    assert_eq!(replaced.header().unwrap().revision(), first_revision + 1);
    client.put("fruit/banana", "yellow", None).await.unwrap();
    client.put("fruit/cherry", "dark red", None).await.unwrap();
    client.put("vegetable/leek", "green", None).await.unwrap();

    let apple = client.get("fruit/apple", None).await.unwrap();
    let kv = &apple.kvs()[0];
    assert_eq!(kv.value(), b"green");
    assert_eq!(kv.version(), 2);
    assert_eq!(kv.create_revision(), first_revision);
    assert_eq!(kv.mod_revision(), first_revision + 1);

    // Prefix, limit, keys only, count only, sort, and a read in the past.
    let fruits = client
        .get("fruit/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = fruits.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(
        keys,
        [&b"fruit/apple"[..], b"fruit/banana", b"fruit/cherry"]
    );
    let limited = client
        .get(
            "fruit/",
            Some(GetOptions::new().with_prefix().with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(limited.kvs().len(), 2);
    assert!(limited.more());
    assert_eq!(limited.count(), 3);
    let keys_only = client
        .get(
            "fruit/",
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    let counted = client
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(counted.count(), 4, "3 fruits and 1 vegetable");
    assert!(counted.kvs().is_empty());
    let descending = client
        .get(
            "fruit/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(descending.kvs()[0].key(), b"fruit/cherry");
    let past = client
        .get(
            "fruit/apple",
            Some(GetOptions::new().with_revision(first_revision)),
        )
        .await
        .unwrap();
    assert_eq!(past.kvs()[0].value(), b"red");
    // A serializable read answers from whichever member it reaches, as far as that member
    // has applied: a lagging follower may not have the key yet.
    eventually("a serializable read finds the key", || {
        let mut client = client.clone();
        async move {
            let serializable = client
                .get("fruit/apple", Some(GetOptions::new().with_serializable()))
                .await
                .ok()?;
            (serializable.kvs().len() == 1).then_some(())
        }
    })
    .await;

    // A watch from a past revision replays history with previous values, then sees new
    // events live.
    let (mut watcher, mut stream) = client
        .watch(
            "fruit/apple",
            Some(
                WatchOptions::new()
                    .with_start_revision(first_revision)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    client.delete("fruit/apple", None).await.unwrap();
    while seen.len() < 3 {
        let response = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("watch events in time")
            .unwrap()
            .expect("the watch stream stays open");
        for event in response.events() {
            let kv = event.kv().unwrap();
            let previous = event.prev_kv().map(|kv| kv.value().to_vec());
            seen.push((event.event_type(), kv.value().to_vec(), previous));
        }
    }
    assert_eq!(
        seen,
        [
            (EventType::Put, b"red".to_vec(), None),
            (EventType::Put, b"green".to_vec(), Some(b"red".to_vec())),
            (EventType::Delete, Vec::new(), Some(b"green".to_vec())),
        ]
    );
    watcher.cancel().await.unwrap();

    // Transactions: compare-and-swap on value, then on mod revision, then a failure branch.
    let swapped = client
        .txn(
            Txn::new()
                .when([Compare::value("fruit/banana", CompareOp::Equal, "yellow")])
                .and_then([TxnOp::put("fruit/banana", "brown", None)])
                .or_else([TxnOp::get("fruit/banana", None)]),
        )
        .await
        .unwrap();
    assert!(swapped.succeeded());
    let banana = client.get("fruit/banana", None).await.unwrap();
    let banana_revision = banana.kvs()[0].mod_revision();
    let refused = client
        .txn(
            Txn::new()
                .when([Compare::mod_revision(
                    "fruit/banana",
                    CompareOp::Less,
                    banana_revision,
                )])
                .and_then([TxnOp::delete("fruit/banana", None)])
                .or_else([TxnOp::get("fruit/banana", None)]),
        )
        .await
        .unwrap();
    assert!(!refused.succeeded());
    match &refused.op_responses()[0] {
        etcd_client::TxnOpResponse::Get(get) => assert_eq!(get.kvs()[0].value(), b"brown"),
        other => panic!("expected a range response, got {other:?}"),
    }
    let too_many: Vec<TxnOp> = (0..129)
        .map(|index| TxnOp::put(format!("many/{index}"), "x", None))
        .collect();
    let error = client.txn(Txn::new().and_then(too_many)).await.unwrap_err();
    assert_eq!(
        message(error),
        "etcdserver: too many operations in txn request"
    );

    // Delete a range with previous values.
    let deleted = client
        .delete(
            "fruit/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 2);
    assert_eq!(deleted.prev_kvs().len(), 2);

    // Compaction: reads below it fail with etcd's text.
    let now = client.get("vegetable/leek", None).await.unwrap();
    let revision = now.header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    let error = client
        .get(
            "fruit/apple",
            Some(GetOptions::new().with_revision(first_revision)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        message(error),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_locks_and_elections_work_through_etcd_client() {
    let cluster = Cluster::start().await;
    let mut client = cluster.client().await.unwrap();

    // Grant, attach, inspect, keep alive, revoke.
    let lease = client.lease_grant(60, None).await.unwrap();
    assert_eq!(lease.ttl(), 60);
    let id = lease.id();
    client
        .put("session/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let alive = client
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(alive.granted_ttl(), 60);
    assert!(alive.ttl() > 0 && alive.ttl() <= 60);
    assert_eq!(alive.keys(), [b"session/a".to_vec()]);
    let (mut keeper, mut responses) = client.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = tokio::time::timeout(PATIENCE, responses.message())
        .await
        .expect("a keep-alive answer in time")
        .unwrap()
        .expect("the keep-alive stream stays open");
    assert_eq!(renewed.id(), id);
    assert!(renewed.ttl() > 0);
    let listed = client.leases().await.unwrap();
    assert!(listed.leases().iter().any(|status| status.id() == id));
    client.lease_revoke(id).await.unwrap();
    assert!(
        client
            .get("session/a", None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
    let gone = client.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    let error = client.lease_revoke(id).await.unwrap_err();
    assert_eq!(message(error), "etcdserver: requested lease not found");

    // A lease nobody keeps alive expires and takes its key with it.
    let short = client.lease_grant(1, None).await.unwrap();
    client
        .put(
            "session/short",
            "1",
            Some(PutOptions::new().with_lease(short.id())),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !client
        .get("session/short", None)
        .await
        .unwrap()
        .kvs()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the 1 s lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Lock: a second owner waits until the first unlocks.
    let owner = client.lease_grant(30, None).await.unwrap().id();
    let waiter_lease = client.lease_grant(30, None).await.unwrap().id();
    let held = client
        .lock("job", Some(LockOptions::new().with_lease(owner)))
        .await
        .unwrap();
    let held_key = held.key().to_vec();
    assert!(held_key.starts_with(b"job/"));
    let mut second = cluster.client().await.unwrap();
    let waiting = tokio::spawn(async move {
        second
            .lock("job", Some(LockOptions::new().with_lease(waiter_lease)))
            .await
            .map(|response| response.key().to_vec())
    });
    // The waiter's claim appears in the store before it is granted.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let claims = client
            .get("job/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        if claims.kvs().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the second claim never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!waiting.is_finished(), "the lock was granted twice");
    client.unlock(held_key.clone()).await.unwrap();
    let second_key = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiter gets the lock after unlock")
        .unwrap()
        .unwrap();
    assert_ne!(second_key, held_key);

    // Election: campaign, read the leader, proclaim, resign.
    let candidate = client.lease_grant(30, None).await.unwrap().id();
    let campaign = client.campaign("chair", "alice", candidate).await.unwrap();
    let leader_key = campaign.leader().unwrap().clone();
    let leader = client.leader("chair").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"alice");
    client
        .proclaim(
            "alice again",
            Some(etcd_client::ProclaimOptions::new().with_leader(leader_key.clone())),
        )
        .await
        .unwrap();
    let leader = client.leader("chair").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"alice again");
    client
        .resign(Some(ResignOptions::new().with_leader(leader_key)))
        .await
        .unwrap();
    let error = client.leader("chair").await.unwrap_err();
    assert!(
        message(error).contains("no leader"),
        "after the only candidate resigns there is no leader"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_maintenance_and_follower_forwarding_work_through_etcd_client() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader_index().await;
    let follower = (leader + 1) % cluster.endpoints.len();

    // A follower serves writes and linearizable reads (it forwards or reads the index).
    let mut on_follower = cluster.client_of(follower).await;
    let put = on_follower.put("via/follower", "ok", None).await.unwrap();
    let got = on_follower.get("via/follower", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"ok");
    assert!(got.header().unwrap().revision() >= put.header().unwrap().revision());

    // Members: three, each with its client URL; every member agrees on the leader.
    let members = on_follower.member_list().await.unwrap();
    assert_eq!(members.members().len(), 3);
    for member in members.members() {
        assert!(member.id() != 0);
        assert_eq!(member.client_urls().len(), 1);
    }
    let mut on_leader = cluster.client_of(leader).await;
    let leader_status = on_leader.status().await.unwrap();
    let leader_id = leader_status.header().unwrap().member_id();
    assert_eq!(leader_status.leader(), leader_id);
    let follower_status = on_follower.status().await.unwrap();
    assert_eq!(follower_status.leader(), leader_id);
    assert_ne!(follower_status.header().unwrap().member_id(), leader_id);
    assert!(leader_status.raft_term() > 0);
    assert_eq!(
        leader_status.header().unwrap().cluster_id(),
        follower_status.header().unwrap().cluster_id()
    );

    // Maintenance: alarms, hash, defragment, and a snapshot stream ending in its SHA-256.
    assert!(
        on_leader
            .alarm(
                etcd_client::AlarmAction::Get,
                etcd_client::AlarmType::None,
                None
            )
            .await
            .unwrap()
            .alarms()
            .is_empty()
    );
    let hash = on_leader.hash_kv(0).await.unwrap();
    assert!(hash.header().unwrap().revision() > 0);
    on_leader.defragment().await.unwrap();
    let mut snapshot = on_leader.snapshot().await.unwrap();
    let mut bytes = Vec::new();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, snapshot.message())
        .await
        .expect("snapshot chunks in time")
        .unwrap()
    {
        bytes.extend_from_slice(chunk.blob());
    }
    assert_eq!(bytes.len() % 512, 32, "etcd's snapshot framing");
    let (data, trailer) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(data).as_slice(), trailer);
}
