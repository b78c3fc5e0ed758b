//! A three-member cluster in one process (real sockets on OS-chosen loopback ports, real
//! write-ahead logs in a temporary directory), driven through the etcd v3 gRPC API with
//! the generated client. Every call goes to a member chosen without knowing the leader:
//! followers must forward.

mod common;

use common::{eventually, loopback_members, put};
use std::time::Duration;
use synod_server::api::etcdserverpb as pb;
use synod_server::api::etcdserverpb::kv_client::KvClient;
use synod_server::api::etcdserverpb::lease_client::LeaseClient;
use synod_server::api::etcdserverpb::maintenance_client::MaintenanceClient;
use synod_server::api::etcdserverpb::watch_client::WatchClient;
use synod_server::member::{Listeners, MemberConfig, MemberSpec, run_member};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

struct Cluster {
    endpoints: Vec<String>,
    stops: Vec<oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl Cluster {
    async fn start(size: usize) -> Cluster {
        let data = tempfile::tempdir().unwrap();
        let (specs, listeners) = loopback_members(size).await;
        let mut stops = Vec::new();
        for (index, listeners) in listeners.into_iter().enumerate() {
            let mut config = MemberConfig::new(
                format!("m{index}"),
                data.path().join(format!("m{index}")),
                listeners.peer.local_addr().unwrap(),
                listeners.client.local_addr().unwrap(),
                specs.clone(),
            );
            config.heartbeat = Duration::from_millis(10);
            config.election_timeout = Duration::from_millis(100);
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            tokio::spawn(async move {
                run_member(config, listeners, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        }
        Cluster {
            endpoints: specs.into_iter().map(|spec| spec.client_url).collect(),
            stops,
            _data: data,
        }
    }

    async fn channel(&self, index: usize) -> Channel {
        Channel::from_shared(self.endpoints[index].clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_writes_reads_txns_leases_and_watches() {
    let cluster = Cluster::start(3).await;
    let mut kv = [
        KvClient::new(cluster.channel(0).await),
        KvClient::new(cluster.channel(1).await),
        KvClient::new(cluster.channel(2).await),
    ];
    let first = eventually(|| {
        let mut client = kv[0].clone();
        async move { client.put(put("a", "1")).await }
    })
    .await
    .into_inner();
    let first_revision = first.header.unwrap().revision;
    assert!(first_revision >= 2, "a put bumps the revision from 1");

    // Every member accepts writes and linearizable reads, whoever leads.
    for (index, client) in kv.iter_mut().enumerate() {
        client
            .put(put(&format!("k/{index}"), &format!("v{index}")))
            .await
            .unwrap();
    }
    for client in &mut kv {
        let range = client
            .range(pb::RangeRequest {
                key: b"k/".to_vec(),
                range_end: b"k0".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let keys: Vec<Vec<u8>> = range.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(
            keys,
            vec![b"k/0".to_vec(), b"k/1".to_vec(), b"k/2".to_vec()]
        );
        assert_eq!(range.count, 3);
    }

    // A read at the first revision sees the past.
    let past = kv[1]
        .range(pb::RangeRequest {
            key: b"k/".to_vec(),
            range_end: b"k0".to_vec(),
            revision: first_revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(past.kvs.is_empty());

    // Compare-and-swap through a transaction.
    let txn = |expected: &str, new: &str| pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Value as i32,
            key: b"a".to_vec(),
            target_union: Some(pb::compare::TargetUnion::Value(expected.into())),
            range_end: Vec::new(),
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put("a", new))),
        }],
        failure: vec![],
    };
    assert!(
        kv[2]
            .txn(txn("1", "2"))
            .await
            .unwrap()
            .into_inner()
            .succeeded
    );
    assert!(
        !kv[0]
            .txn(txn("1", "3"))
            .await
            .unwrap()
            .into_inner()
            .succeeded
    );

    // Compaction, then a read below it fails with etcd's text.
    let now = kv[0]
        .range(pb::RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.kvs[0].value, b"2");
    let revision = now.header.unwrap().revision;
    kv[1]
        .compact(pb::CompactionRequest {
            revision,
            physical: false,
        })
        .await
        .unwrap();
    let error = kv[2]
        .range(pb::RangeRequest {
            key: b"a".to_vec(),
            revision: first_revision,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );

    // Leases: grant on one member, attach a key, revoke on another: the key is gone.
    let mut leases = LeaseClient::new(cluster.channel(1).await);
    let lease = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert!(lease.id != 0);
    kv[0]
        .put(pb::PutRequest {
            lease: lease.id,
            ..put("leased", "x")
        })
        .await
        .unwrap();
    let ttl = LeaseClient::new(cluster.channel(2).await)
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease.id,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.keys, vec![b"leased".to_vec()]);
    assert!(ttl.ttl > 0 && ttl.ttl <= 60);
    leases
        .lease_revoke(pb::LeaseRevokeRequest { id: lease.id })
        .await
        .unwrap();
    let gone = kv[2]
        .range(pb::RangeRequest {
            key: b"leased".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.kvs.is_empty());
    let unknown = leases
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease.id,
            keys: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown.ttl, -1, "etcd reports an unknown lease as TTL -1");

    // A watch on a follower from the current revision sees the next write, with prev_kv.
    let mut watch = WatchClient::new(cluster.channel(2).await);
    let (requests, outgoing) = tokio::sync::mpsc::channel(4);
    requests
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: b"w".to_vec(),
                    prev_kv: true,
                    ..Default::default()
                },
            )),
        })
        .await
        .unwrap();
    let mut events = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    let created = events.next().await.unwrap().unwrap();
    assert!(created.created);
    kv[0].put(put("w", "first")).await.unwrap();
    kv[1].put(put("w", "second")).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let response = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("watch events arrive")
            .unwrap()
            .unwrap();
        seen.extend(response.events);
    }
    assert_eq!(seen[0].kv.as_ref().unwrap().value, b"first");
    assert_eq!(seen[1].kv.as_ref().unwrap().value, b"second");
    assert_eq!(seen[1].prev_kv.as_ref().unwrap().value, b"first");
    assert!(seen[0].kv.as_ref().unwrap().mod_revision < seen[1].kv.as_ref().unwrap().mod_revision);

    // Status names a leader, the same on every member.
    let mut leaders = Vec::new();
    for index in 0..3 {
        let status = MaintenanceClient::new(cluster.channel(index).await)
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        leaders.push(status.leader);
        if status.leader == status.header.unwrap().member_id {
            assert!(status.raft_index > 0);
        }
    }
    assert!(leaders[0] != 0 && leaders.iter().all(|&leader| leader == leaders[0]));
    drop(cluster.stops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_get_etcds_error() {
    let cluster = Cluster::start(1).await;
    let mut kv = KvClient::new(cluster.channel(0).await);
    let big = "x".repeat(2 * 1024 * 1024);
    let error = kv.put(put("big", &big)).await.unwrap_err();
    assert_eq!(error.message(), "etcdserver: request is too large");
    let small = eventually(|| {
        let mut kv = kv.clone();
        async move { kv.put(put("small", "ok")).await }
    })
    .await;
    assert!(small.into_inner().header.is_some());
}

/// One HTTP/1.0 GET over a plain socket: status line and body.
async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_over_http() {
    let data = tempfile::tempdir().unwrap();
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = metrics.local_addr().unwrap();
    let spec = MemberSpec {
        name: "solo".into(),
        peer_url: format!("http://{}", peer.local_addr().unwrap()),
        client_url: format!("http://{}", client.local_addr().unwrap()),
    };
    let mut config = MemberConfig::new(
        "solo",
        data.path().join("solo"),
        peer.local_addr().unwrap(),
        client.local_addr().unwrap(),
        vec![spec.clone()],
    );
    config.heartbeat = Duration::from_millis(10);
    config.election_timeout = Duration::from_millis(50);
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run_member(
        config,
        Listeners {
            peer,
            client,
            metrics: Some(metrics),
        },
        async {
            let _ = stopped.await;
        },
    ));
    let channel = Channel::from_shared(spec.client_url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel);
    eventually(|| {
        let mut kv = kv.clone();
        async move { kv.put(put("m", "1")).await }
    })
    .await;
    kv.range(pb::RangeRequest {
        key: b"m".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (status, body) = http_get(metrics_address, "/health").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, r#"{"health":"true","reason":""}"#);
    let (status, body) = http_get(metrics_address, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    for expected in [
        "synod_grpc_request_duration_seconds_count{method=\"/etcdserverpb.KV/Put\"}",
        "synod_grpc_request_duration_seconds_count{method=\"/etcdserverpb.KV/Range\"}",
        "synod_consensus_term ",
        "synod_has_leader 1",
        "synod_wal_fsync_duration_seconds_count",
        "synod_wal_bytes_total",
        "synod_leader_changes_total",
    ] {
        assert!(body.contains(expected), "missing {expected} in:\n{body}");
    }
    // The put above went through this member's write-ahead log.
    let wal_bytes: u64 = body
        .lines()
        .find_map(|line| line.strip_prefix("synod_wal_bytes_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("synod_wal_bytes_total has a value");
    assert!(wal_bytes > 0, "no WAL bytes counted:\n{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_serialize_owners() {
    use synod_server::api::v3electionpb as election;
    use synod_server::api::v3lockpb as lock;
    let cluster = Cluster::start(3).await;
    let mut leases = LeaseClient::new(cluster.channel(0).await);
    let first = eventually(|| {
        let mut leases = leases.clone();
        async move {
            leases
                .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
                .await
        }
    })
    .await
    .into_inner()
    .id;
    let second = leases
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;

    // The first owner holds the lock; the second waits until it is released.
    let mut locks = lock::lock_client::LockClient::new(cluster.channel(1).await);
    let held = locks
        .lock(lock::LockRequest {
            name: b"jobs".to_vec(),
            lease: first,
        })
        .await
        .unwrap()
        .into_inner()
        .key;
    let mut waiter_client = lock::lock_client::LockClient::new(cluster.channel(2).await);
    let waiter = tokio::spawn(async move {
        waiter_client
            .lock(lock::LockRequest {
                name: b"jobs".to_vec(),
                lease: second,
            })
            .await
            .map(|response| response.into_inner().key)
    });
    // Once the second owner's claim is in the store it is queued behind the first.
    let mut kv = KvClient::new(cluster.channel(0).await);
    let claims = || pb::RangeRequest {
        key: b"jobs/".to_vec(),
        range_end: b"jobs0".to_vec(),
        count_only: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while kv.range(claims()).await.unwrap().into_inner().count < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second claim never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!waiter.is_finished(), "the second owner must wait");
    locks
        .unlock(lock::UnlockRequest { key: held.clone() })
        .await
        .unwrap();
    let acquired = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock after unlock")
        .unwrap()
        .unwrap();
    assert_ne!(acquired, held);

    // Elections: the first campaigner leads, proclaims, and resigns.
    let mut elections = election::election_client::ElectionClient::new(cluster.channel(0).await);
    let leader = elections
        .campaign(election::CampaignRequest {
            name: b"primary".to_vec(),
            lease: first,
            value: b"node-a".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    let current = elections
        .leader(election::LeaderRequest {
            name: b"primary".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.kv.unwrap().value, b"node-a");
    elections
        .proclaim(election::ProclaimRequest {
            leader: Some(leader.clone()),
            value: b"node-a v2".to_vec(),
        })
        .await
        .unwrap();
    let current = elections
        .leader(election::LeaderRequest {
            name: b"primary".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.kv.unwrap().value, b"node-a v2");
    elections
        .resign(election::ResignRequest {
            leader: Some(leader.clone()),
        })
        .await
        .unwrap();
    let error = elections
        .proclaim(election::ProclaimRequest {
            leader: Some(leader),
            value: b"stale".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.message(), "election: not leader");
}

/// A serializable range of `key` (at `revision`, 0 for the latest).
fn serializable(key: &str, revision: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        revision,
        serializable: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_reads_answer_every_member_from_its_applied_state() {
    let cluster = Cluster::start(3).await;
    let mut kv = Vec::new();
    for index in 0..3 {
        kv.push(KvClient::new(cluster.channel(index).await));
    }
    let first = eventually(|| {
        let mut client = kv[0].clone();
        async move { client.put(put("s", "1")).await }
    })
    .await
    .into_inner()
    .header
    .unwrap()
    .revision;
    kv[1].put(put("s", "2")).await.unwrap();
    let last = kv[2]
        .put(put("t", "x"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let linearizable = kv[0]
        .range(pb::RangeRequest {
            key: b"s".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let term = linearizable.header.unwrap().raft_term;

    let mut member_ids = Vec::new();
    for client in &mut kv {
        // A follower may not have applied the last put yet: wait until it has.
        let now = eventually(|| {
            let mut client = client.clone();
            async move {
                let response = client.range(serializable("s", 0)).await?.into_inner();
                match response.header {
                    Some(header) if header.revision >= last => Ok(response),
                    _ => Err(tonic::Status::unavailable("not applied yet")),
                }
            }
        })
        .await;
        let header = now.header.unwrap();
        assert_eq!(header.revision, last, "the header names the revision read");
        // Terms only grow (an election under a loaded machine may have raised it).
        assert!(
            header.raft_term >= term,
            "the header names the term read in"
        );
        member_ids.push(header.member_id);
        assert_eq!(now.count, 1);
        assert_eq!(now.kvs[0].value, b"2");
        assert_eq!(now.kvs[0].create_revision, first);
        assert_eq!(now.kvs[0].mod_revision, first + 1);
        assert_eq!(now.kvs[0].version, 2);
        // The same read through the log answers alike.
        let mut through_log = client
            .range(pb::RangeRequest {
                key: b"s".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        through_log.header = Some(header);
        assert_eq!(through_log, now);

        // History, a missing key, and a revision not written yet.
        let past = client.range(serializable("s", first)).await.unwrap();
        assert_eq!(past.into_inner().kvs[0].value, b"1");
        let missing = client.range(serializable("nothing", 0)).await.unwrap();
        assert!(missing.into_inner().kvs.is_empty());
        let future = client.range(serializable("s", last + 1)).await.unwrap_err();
        assert_eq!(future.code(), tonic::Code::OutOfRange);
        assert_eq!(
            future.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );
    }
    member_ids.sort_unstable();
    member_ids.dedup();
    assert_eq!(member_ids.len(), 3, "each member answers for itself");

    // Once a member applied a compaction, reads below it fail with etcd's error.
    kv[0]
        .compact(pb::CompactionRequest {
            revision: last,
            physical: false,
        })
        .await
        .unwrap();
    for client in &mut kv {
        let error = eventually(|| {
            let mut client = client.clone();
            async move {
                match client.range(serializable("s", first)).await {
                    Ok(_) => Err(tonic::Status::unavailable("compaction not applied yet")),
                    Err(error) => Ok(error),
                }
            }
        })
        .await;
        assert_eq!(error.code(), tonic::Code::OutOfRange);
        assert_eq!(
            error.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let at_compaction = client.range(serializable("s", last)).await.unwrap();
        assert_eq!(at_compaction.into_inner().kvs[0].value, b"2");
    }

    // Reads on a follower while another member writes never go back in time, and each
    // sees a value no newer than its header says. They are answered off the node's task:
    // (almost) none of them is handed to it.
    let metrics = synod_server::metrics::metrics();
    let local_before = metrics.reads_local.get();
    let writer = tokio::spawn({
        let mut client = kv[0].clone();
        async move {
            for index in 0..50 {
                client.put(put("w", &index.to_string())).await.unwrap();
            }
        }
    });
    let mut seen = 0;
    let mut reads = 0;
    while !writer.is_finished() || reads < 100 {
        let response = kv[2]
            .range(serializable("w", 0))
            .await
            .unwrap()
            .into_inner();
        let revision = response.header.unwrap().revision;
        assert!(
            revision >= seen,
            "a read went back from {seen} to {revision}"
        );
        seen = revision;
        if let Some(read) = response.kvs.first() {
            assert!(read.mod_revision <= revision);
        }
        reads += 1;
    }
    writer.await.unwrap();
    let local = metrics.reads_local.get() - local_before;
    assert!(
        local >= reads / 2,
        "only {local} of {reads} serializable reads were answered off the node's task"
    );
}

/// One gRPC call over a bare HTTP/2 connection: the response's headers, body and trailers.
async fn raw_call(
    endpoint: &str,
    path: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> (http::HeaderMap, Vec<u8>, Option<http::HeaderMap>) {
    let address = endpoint.trim_start_matches("http://");
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{endpoint}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), false)
        .unwrap();
    // A server may answer from the headers alone (tonic refuses an encoding it lacks before
    // reading the body) and close the stream first: the body then has nowhere to go.
    let _ = send.send_data(body.into(), true);
    let (head, mut recv) = response.await.unwrap().into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = recv.trailers().await.unwrap();
    (head.headers, data, trailers)
}

/// The gRPC status of a response: in its trailers, or in its headers if it has none.
fn grpc_status(headers: &http::HeaderMap, trailers: &Option<http::HeaderMap>) -> (i32, String) {
    let source = trailers.as_ref().unwrap_or(headers);
    let code = source["grpc-status"].to_str().unwrap().parse().unwrap();
    let message = source
        .get("grpc-message")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (code, message)
}

fn framed(compressed: u8, message: &impl prost::Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    let mut body = vec![compressed];
    body.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    body.extend_from_slice(&encoded);
    body
}

/// KV calls answered on the connection's task, and the unusual ones that take tonic's
/// path instead, over a client that shows the raw frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_calls_answer_in_grpc_framing_and_unusual_ones_get_tonics_answers() {
    let cluster = Cluster::start(1).await;
    let endpoint = &cluster.endpoints[0];
    let kv = KvClient::new(cluster.channel(0).await);
    eventually(|| {
        let mut kv = kv.clone();
        async move { kv.put(put("greeting", "hello")).await }
    })
    .await;
    let range = pb::RangeRequest {
        key: b"greeting".to_vec(),
        ..Default::default()
    };

    // A plain call: 200, one framed message, then trailers with status 0.
    let (headers, body, trailers) =
        raw_call(endpoint, "/etcdserverpb.KV/Range", None, framed(0, &range)).await;
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(grpc_status(&headers, &trailers).0, 0);
    assert_eq!(body[0], 0);
    let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(body.len(), 5 + length);
    let response: pb::RangeResponse = prost::Message::decode(&body[5..]).unwrap();
    assert_eq!(response.kvs[0].value, b"hello");
    assert!(response.header.unwrap().revision >= 2);

    // A handler's error is a trailers-only response with etcd's text.
    let empty = pb::PutRequest::default();
    let (headers, body, trailers) =
        raw_call(endpoint, "/etcdserverpb.KV/Put", None, framed(0, &empty)).await;
    assert!(body.is_empty());
    let (code, message) = grpc_status(&headers, &trailers);
    assert_eq!(code, tonic::Code::InvalidArgument as i32);
    assert_eq!(message, "etcdserver:%20key%20is%20not%20provided");

    // A compressed-flag message without an encoding is refused.
    let (headers, _, trailers) =
        raw_call(endpoint, "/etcdserverpb.KV/Range", None, framed(1, &range)).await;
    assert_eq!(
        grpc_status(&headers, &trailers).0,
        tonic::Code::Internal as i32
    );

    // An encoding this server does not speak, and a method the KV does not have, go to
    // tonic, which answers them as unimplemented.
    let (headers, _, trailers) = raw_call(
        endpoint,
        "/etcdserverpb.KV/Range",
        Some("gzip"),
        framed(1, &range),
    )
    .await;
    assert_eq!(
        grpc_status(&headers, &trailers).0,
        tonic::Code::Unimplemented as i32
    );
    let (headers, _, trailers) =
        raw_call(endpoint, "/etcdserverpb.KV/Nope", None, framed(0, &range)).await;
    assert_eq!(
        grpc_status(&headers, &trailers).0,
        tonic::Code::Unimplemented as i32
    );

    // Past the decoding limit (twice the 1.5 MiB request limit, at least 4 MiB), the
    // message is refused before it is decoded.
    let huge = pb::PutRequest {
        key: b"huge".to_vec(),
        value: vec![b'x'; 5 << 20],
        ..Default::default()
    };
    let (headers, _, trailers) =
        raw_call(endpoint, "/etcdserverpb.KV/Put", None, framed(0, &huge)).await;
    let (code, message) = grpc_status(&headers, &trailers);
    assert_eq!(code, tonic::Code::OutOfRange as i32);
    assert!(message.contains("too%20large"), "{message}");
    for stop in cluster.stops {
        let _ = stop.send(());
    }
}
