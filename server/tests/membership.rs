//! Membership changes through etcd's Cluster API on a Raft cluster in one process (real
//! sockets on loopback, real write-ahead logs): a fourth member is added as a learner,
//! refused promotion while it has not caught up, started (the others dial it at the peer
//! URL the configuration carries), promoted once in sync, and then an original member is
//! removed; writes keep working and reach the newcomer.

mod common;

use common::{eventually, put};
use std::time::Duration;
use synod_server::api::etcdserverpb as pb;
use synod_server::api::etcdserverpb::cluster_client::ClusterClient;
use synod_server::api::etcdserverpb::kv_client::KvClient;
use synod_server::api::etcdserverpb::maintenance_client::MaintenanceClient;
use synod_server::member::{Listeners, MemberConfig, MemberSpec, run_member};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

struct Member {
    config: MemberConfig,
    listeners: Listeners,
}

async fn listeners() -> (Listeners, String, String) {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_url = format!("http://{}", peer.local_addr().unwrap());
    let client_url = format!("http://{}", client.local_addr().unwrap());
    let listeners = Listeners {
        peer,
        client,
        metrics: None,
    };
    (listeners, peer_url, client_url)
}

fn config(
    name: &str,
    data: &std::path::Path,
    listeners: &Listeners,
    specs: &[MemberSpec],
) -> MemberConfig {
    let mut config = MemberConfig::new(
        name,
        data.join(name),
        listeners.peer.local_addr().unwrap(),
        listeners.client.local_addr().unwrap(),
        specs.to_vec(),
    );
    config.heartbeat = Duration::from_millis(10);
    config.election_timeout = Duration::from_millis(100);
    config
}

fn start(member: Member) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        run_member(member.config, member.listeners, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    stop
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_is_added_promoted_once_in_sync_and_a_member_removed() {
    let data = tempfile::tempdir().unwrap();
    let (specs, mut stops) = start_founders(data.path()).await;
    let mut cluster = ClusterClient::new(channel(&specs[1].client_url).await);
    let kv = KvClient::new(channel(&specs[2].client_url).await);
    eventually(|| {
        let mut kv = kv.clone();
        async move { kv.put(put("before", "1")).await }
    })
    .await;
    let listed = cluster
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|member| !member.is_learner));

    // Add m3 as a learner (through a follower or the leader: either works).
    let (new_listeners, new_peer_url, new_client_url) = listeners().await;
    let added = eventually(|| {
        let mut cluster = cluster.clone();
        let request = pb::MemberAddRequest {
            peer_ur_ls: vec![new_peer_url.clone()],
            is_learner: true,
        };
        async move { cluster.member_add(request).await }
    })
    .await
    .into_inner();
    let learner = added.member.expect("the added member");
    assert!(learner.is_learner);
    assert_eq!(added.members.len(), 4);
    // The same peer URL twice is refused.
    let again = cluster
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![new_peer_url.clone()],
            is_learner: true,
        })
        .await
        .expect_err("a duplicate peer URL");
    assert!(
        again.message().contains("Peer URLs already exists"),
        "{again:?}"
    );
    // Not started yet, it has nothing of the log: promotion is refused.
    let refused = eventually(|| {
        let mut cluster = cluster.clone();
        let id = learner.id;
        async move {
            match cluster
                .member_promote(pb::MemberPromoteRequest { id })
                .await
            {
                Err(status) if status.code() == tonic::Code::FailedPrecondition => Ok(status),
                Err(status) => Err(status),
                Ok(_) => panic!("a learner that never answered was promoted"),
            }
        }
    })
    .await;
    assert!(
        refused
            .message()
            .contains("can only promote a learner member which is in sync with leader"),
        "{refused:?}"
    );

    // Start m3: it joins with the initial cluster plus itself, last.
    let mut joined = specs.clone();
    joined.push(MemberSpec {
        name: "m3".to_string(),
        peer_url: new_peer_url.clone(),
        client_url: new_client_url.clone(),
    });
    let mut config = config("m3", data.path(), &new_listeners, &joined);
    config.join_existing = true;
    stops.push(start(Member {
        config,
        listeners: new_listeners,
    }));
    let promoted = eventually(|| {
        let mut cluster = cluster.clone();
        let id = learner.id;
        async move {
            cluster
                .member_promote(pb::MemberPromoteRequest { id })
                .await
        }
    })
    .await
    .into_inner();
    assert_eq!(promoted.members.len(), 4);
    assert!(promoted.members.iter().all(|member| !member.is_learner));

    // Remove m0; the cluster of m1, m2 and m3 keeps taking writes.
    let m0 = listed
        .iter()
        .find(|member| member.name == "m0")
        .expect("m0 listed")
        .id;
    let removed = eventually(|| {
        let mut cluster = cluster.clone();
        async move {
            cluster
                .member_remove(pb::MemberRemoveRequest { id: m0 })
                .await
        }
    })
    .await
    .into_inner();
    assert_eq!(removed.members.len(), 3);
    assert!(removed.members.iter().all(|member| member.id != m0));
    eventually(|| {
        let mut kv = kv.clone();
        async move { kv.put(put("after", "2")).await }
    })
    .await;
    // The newcomer holds the write: a serializable read on it sees it.
    let newcomer = KvClient::new(channel(&new_client_url).await);
    let value = eventually(|| {
        let mut newcomer = newcomer.clone();
        async move {
            let response = newcomer
                .range(pb::RangeRequest {
                    key: "after".into(),
                    serializable: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            match response.kvs.first() {
                Some(kv) => Ok(kv.value.clone()),
                None => Err(tonic::Status::not_found("not yet replicated")),
            }
        }
    })
    .await;
    assert_eq!(value, b"2");
    // The newcomer reports the cluster it joined.
    let status = |url: String| async move {
        MaintenanceClient::new(channel(&url).await)
            .status(pb::StatusRequest::default())
            .await
            .unwrap()
            .into_inner()
            .header
            .unwrap()
            .cluster_id
    };
    assert_eq!(
        status(new_client_url.clone()).await,
        status(specs[1].client_url.clone()).await
    );
    for stop in stops {
        let _ = stop.send(());
    }
}

/// Starts three founders m0..m2 on OS-chosen ports; returns their specs and stop handles.
async fn start_founders(data: &std::path::Path) -> (Vec<MemberSpec>, Vec<oneshot::Sender<()>>) {
    let mut specs = Vec::new();
    let mut pending = Vec::new();
    for index in 0..3 {
        let (listeners, peer_url, client_url) = listeners().await;
        specs.push(MemberSpec {
            name: format!("m{index}"),
            peer_url,
            client_url,
        });
        pending.push(listeners);
    }
    let mut stops = Vec::new();
    for (index, listeners) in pending.into_iter().enumerate() {
        let config = config(&format!("m{index}"), data, &listeners, &specs);
        stops.push(start(Member { config, listeners }));
    }
    (specs, stops)
}

async fn status(url: &str) -> Result<pb::StatusResponse, tonic::Status> {
    MaintenanceClient::new(channel(url).await)
        .status(pb::StatusRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

/// A member that joined at run time and then leads is reached through every member: the
/// founders learn its id and client URL from the replicated configuration, name it as
/// leader, and forward writes to it. (They used to know only the members they started
/// with, so with the newcomer leading they answered "no leader" to every write sent to
/// them; the leader is moved there with MoveLeader so that this happens every run.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn founders_forward_to_a_joined_member_that_leads() {
    let data = tempfile::tempdir().unwrap();
    let (specs, mut stops) = start_founders(data.path()).await;
    let cluster = ClusterClient::new(channel(&specs[0].client_url).await);
    let (new_listeners, new_peer_url, new_client_url) = listeners().await;
    let added = eventually(|| {
        let mut cluster = cluster.clone();
        let request = pb::MemberAddRequest {
            peer_ur_ls: vec![new_peer_url.clone()],
            is_learner: true,
        };
        async move { cluster.member_add(request).await }
    })
    .await
    .into_inner();
    let learner = added.member.expect("the added member").id;
    let mut joined = specs.clone();
    joined.push(MemberSpec {
        name: "m3".to_string(),
        peer_url: new_peer_url,
        client_url: new_client_url.clone(),
    });
    let mut config = config("m3", data.path(), &new_listeners, &joined);
    config.join_existing = true;
    stops.push(start(Member {
        config,
        listeners: new_listeners,
    }));
    eventually(|| {
        let mut cluster = cluster.clone();
        async move {
            cluster
                .member_promote(pb::MemberPromoteRequest { id: learner })
                .await
        }
    })
    .await;
    // The newcomer goes by the id MemberAdd gave it.
    let own = status(&new_client_url)
        .await
        .unwrap()
        .header
        .unwrap()
        .member_id;
    assert_eq!(own, learner);

    // Hand leadership to the newcomer (asked through a founder, which forwards it to the
    // leader; a transfer may be refused while the promotion is still settling).
    let mut maintenance = MaintenanceClient::new(channel(&specs[1].client_url).await);
    eventually(|| {
        let mut maintenance = maintenance.clone();
        async move {
            maintenance
                .move_leader(pb::MoveLeaderRequest { target_id: learner })
                .await
        }
    })
    .await;
    let unknown = maintenance
        .move_leader(pb::MoveLeaderRequest { target_id: 12345 })
        .await
        .expect_err("no such member");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Every founder takes a write, names the newcomer as leader and lists its client URL.
    for (index, founder) in specs.iter().enumerate() {
        let mut kv = KvClient::new(channel(&founder.client_url).await);
        let written = kv
            .put(put(&format!("through-{index}"), "x"))
            .await
            .unwrap_or_else(|status| panic!("a write through {}: {status:?}", founder.name));
        assert!(written.into_inner().header.unwrap().revision > 0);
        let leader = eventually(|| async {
            let status = status(&founder.client_url).await?;
            match status.leader {
                leader if leader == learner => Ok(leader),
                other => Err(tonic::Status::unavailable(format!("leader {other}"))),
            }
        })
        .await;
        assert_eq!(leader, learner);
        // The newcomer describes itself (name, client URLs) through the log once it leads;
        // a write may be served before that (followers pass writes on over the peer channel).
        let newcomer = eventually(|| async {
            let listed = ClusterClient::new(channel(&founder.client_url).await)
                .member_list(pb::MemberListRequest::default())
                .await?
                .into_inner()
                .members;
            match listed.into_iter().find(|member| member.id == learner) {
                Some(member) if !member.name.is_empty() => Ok(member),
                other => Err(tonic::Status::unavailable(format!("listed as {other:?}"))),
            }
        })
        .await;
        assert_eq!(newcomer.name, "m3");
        assert_eq!(newcomer.client_ur_ls, vec![new_client_url.clone()]);
    }
    for stop in stops.drain(..) {
        let _ = stop.send(());
    }
}

/// Once a member's removal is committed, the others close their connections to it and stop
/// dialing it. The "member" here is a bare socket the test owns: the founders dial it as soon
/// as MemberAdd names it, and the test sees each connection end after MemberRemove.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let data = tempfile::tempdir().unwrap();
    let (specs, stops) = start_founders(data.path()).await;
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_url = format!("http://{}", socket.local_addr().unwrap());
    // Accept every connection; report each one when it opens and when it ends.
    let (events, mut seen) = tokio::sync::mpsc::unbounded_channel::<bool>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = socket.accept().await {
            let events = events.clone();
            let _ = events.send(true);
            tokio::spawn(async move {
                let mut buffer = vec![0; 64 * 1024];
                while matches!(stream.read(&mut buffer).await, Ok(read) if read > 0) {}
                let _ = events.send(false);
            });
        }
    });
    let cluster = ClusterClient::new(channel(&specs[0].client_url).await);
    let added = eventually(|| {
        let mut cluster = cluster.clone();
        let request = pb::MemberAddRequest {
            peer_ur_ls: vec![peer_url.clone()],
            is_learner: true,
        };
        async move { cluster.member_add(request).await }
    })
    .await
    .into_inner();
    let id = added.member.expect("the added member").id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut open = 0;
    while open < specs.len() {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(true)) => open += 1,
            Ok(Some(false)) => open -= 1,
            _ => panic!("only {open} of the founders dialed the added member"),
        }
    }
    eventually(|| {
        let mut cluster = cluster.clone();
        async move { cluster.member_remove(pb::MemberRemoveRequest { id }).await }
    })
    .await;
    while open > 0 {
        match tokio::time::timeout_at(deadline, seen.recv()).await {
            Ok(Some(true)) => open += 1,
            Ok(Some(false)) => open -= 1,
            _ => panic!("{open} connections to the removed member are still open"),
        }
    }
    for stop in stops {
        let _ = stop.send(());
    }
}
