//! Helpers shared by the in-process server tests.
#![allow(dead_code)]

use std::time::Duration;
use synod_server::api::etcdserverpb as pb;
use synod_server::member::{Listeners, MemberSpec};
use tokio::net::TcpListener;

/// Retries `attempt` until it succeeds, at most ~10 s (the cluster may still be electing,
/// or a learner catching up).
pub async fn eventually<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut last = None;
    for _ in 0..200 {
        match attempt().await {
            Ok(value) => return value,
            Err(status) => last = Some(status),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never succeeded: {last:?}");
}

/// A plain put of `value` at `key`.
pub fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// Members `m0`, `m1`, ... of a cluster of `count` on loopback: their specs (names and URLs
/// on OS-chosen ports) and the bound listeners to start them with.
pub async fn loopback_members(count: usize) -> (Vec<MemberSpec>, Vec<Listeners>) {
    let mut specs = Vec::new();
    let mut listeners = Vec::new();
    for index in 0..count {
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
        specs.push(MemberSpec {
            name: format!("m{index}"),
            peer_url: format!("http://{}", peer.local_addr().unwrap()),
            client_url: format!("http://{}", client.local_addr().unwrap()),
        });
        listeners.push(Listeners {
            peer,
            client,
            metrics: None,
        });
    }
    (specs, listeners)
}
