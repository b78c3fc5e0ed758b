//! Values live in a file beside the write-ahead log, not on the heap: a member that joins
//! after the leader compacted its log is restored by InstallSnapshot from the leader's
//! file-backed store (the snapshot carries the values), keeps them in its own value file,
//! and serves them.

mod common;

use common::{eventually, loopback_members, put};
use std::time::Duration;
use synod_server::api::etcdserverpb as pb;
use synod_server::api::etcdserverpb::kv_client::KvClient;
use synod_server::member::{Listeners, MemberConfig, run_member};
use synod_server::values::WRITE_BUFFER_BYTES;
use tokio::sync::oneshot;
use tonic::transport::Channel;

fn start(config: MemberConfig, listeners: Listeners) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        run_member(config, listeners, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    stop
}

fn value_of(index: usize) -> String {
    format!("{index:04}-{}", "v".repeat(1600))
}

/// Bytes in the member's value files.
fn value_file_bytes(data: &std::path::Path) -> u64 {
    std::fs::read_dir(data.join("values"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.metadata().ok())
                .map(|metadata| metadata.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_member_is_restored_from_a_snapshot_of_spilled_values() {
    let data = tempfile::tempdir().unwrap();
    let (specs, mut listeners) = loopback_members(3).await;
    let mut configs: Vec<MemberConfig> = (0..3)
        .map(|index| {
            let mut config = MemberConfig::new(
                format!("m{index}"),
                data.path().join(format!("m{index}")),
                listeners[index].peer.local_addr().unwrap(),
                listeners[index].client.local_addr().unwrap(),
                specs.clone(),
            );
            config.heartbeat = Duration::from_millis(10);
            config.election_timeout = Duration::from_millis(100);
            config.snapshot_threshold_entries = 16;
            config
        })
        .collect();
    let late_config = configs.pop().unwrap();
    let late_listeners = listeners.pop().unwrap();
    // Two of three members are a quorum: write while the third is not running.
    let mut stops: Vec<_> = configs
        .into_iter()
        .zip(listeners)
        .map(|(config, listeners)| start(config, listeners))
        .collect();
    let channel = Channel::from_shared(specs[0].client_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut kv = KvClient::new(channel);
    for index in 0..80 {
        let request = put(&format!("key/{index:04}"), &value_of(index));
        eventually(|| {
            let mut kv = kv.clone();
            let request = request.clone();
            async move { kv.put(request).await }
        })
        .await;
    }
    // Overwrite some, so the snapshot holds history as well.
    for index in 0..10 {
        kv.put(put(&format!("key/{index:04}"), "short"))
            .await
            .unwrap();
    }
    for member in ["m0", "m1"] {
        let bytes = value_file_bytes(&data.path().join(member));
        // All but the last write buffer's worth is in the file.
        assert!(
            bytes > 80 * 1600 - WRITE_BUFFER_BYTES as u64,
            "{member}'s value file holds {bytes} bytes"
        );
    }

    // The third member's log would start at 1; the others compacted theirs long ago.
    stops.push(start(late_config, late_listeners));
    let late = Channel::from_shared(specs[2].client_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut late_kv = KvClient::new(late);
    let everything = pb::RangeRequest {
        key: b"key/".to_vec(),
        range_end: b"key0".to_vec(),
        serializable: true,
        ..Default::default()
    };
    let range = eventually(|| {
        let mut kv = late_kv.clone();
        let request = everything.clone();
        async move {
            let range = kv.range(request).await?.into_inner();
            // Serializable reads see whatever prefix the member has applied (they are
            // answered between the node's batches): wait for the last write, key 9's
            // overwrite, which the others precede.
            if range.count == 80 && range.kvs[9].value == b"short" {
                Ok(range)
            } else {
                Err(tonic::Status::unavailable("not caught up yet"))
            }
        }
    })
    .await;
    for (index, kv) in range.kvs.iter().enumerate() {
        let expected = if index < 10 {
            "short".to_string()
        } else {
            value_of(index)
        };
        assert_eq!(kv.value, expected.as_bytes(), "key {index}");
    }
    // Its values are in its own file, and a past revision still reads from it.
    let bytes = value_file_bytes(&data.path().join("m2"));
    assert!(
        bytes > 70 * 1600 - WRITE_BUFFER_BYTES as u64,
        "the late member's value file holds {bytes} bytes"
    );
    let head = range.header.unwrap().revision;
    let past = late_kv
        .range(pb::RangeRequest {
            key: b"key/0000".to_vec(),
            revision: head - 10,
            serializable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(past.kvs[0].value, value_of(0).as_bytes());
    // And it keeps applying new writes to the same store.
    late_kv.put(put("key/0000", "after")).await.unwrap();
    let _ = &mut late_kv;
    for stop in stops {
        let _ = stop.send(());
    }
}
