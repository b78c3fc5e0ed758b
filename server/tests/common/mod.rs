//! Helpers shared by the in-process server tests.
#![allow(dead_code)]

use std::time::Duration;
use synod_server::api::etcdserverpb as pb;

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
