//! Prometheus metrics and the HTTP endpoints `/metrics` and `/health`.
//!
//! One registry per process (a `synod server` process runs one member; tests that run
//! several members in one process share it).

use crate::etcd::Observed;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The label of per-RPC metrics: the gRPC method path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// e.g. `/etcdserverpb.KV/Put`.
    pub method: String,
}

/// Every metric Synod exports.
pub struct Metrics {
    registry: Registry,
    /// Time from a gRPC request's arrival to its response headers, by method.
    pub rpc_latency: Family<MethodLabel, Histogram>,
    /// Consensus term (Raft) or ballot round (Paxos).
    pub term: Gauge,
    /// Committed log position.
    pub commit_index: Gauge,
    /// Applied log position.
    pub applied_index: Gauge,
    /// 1 while a leader is known.
    pub has_leader: Gauge,
    /// How often the known leader changed.
    pub leader_changes: Counter,
    /// Duration of each group-commit fsync.
    pub fsync_latency: Histogram,
    /// Bytes appended to the write-ahead log.
    pub wal_bytes: Counter,
    /// Serializable reads answered from the applied state on the gRPC task.
    pub reads_local: Counter,
    /// Serializable reads sent to the node's task instead (it held the node, or the
    /// protocol does not answer them locally).
    pub reads_through_node: Counter,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s in powers of two.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("synod");
        let rpc_latency = Family::<MethodLabel, Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "Time from a gRPC request's arrival to its response, by method",
            rpc_latency.clone(),
        );
        let term = Gauge::default();
        registry.register(
            "consensus_term",
            "Current term or ballot round",
            term.clone(),
        );
        let commit_index = Gauge::default();
        registry.register(
            "commit_index",
            "Committed log position",
            commit_index.clone(),
        );
        let applied_index = Gauge::default();
        registry.register(
            "applied_index",
            "Applied log position",
            applied_index.clone(),
        );
        let has_leader = Gauge::default();
        registry.register(
            "has_leader",
            "1 while a leader is known",
            has_leader.clone(),
        );
        let leader_changes = Counter::default();
        registry.register(
            "leader_changes",
            "How often the known leader changed",
            leader_changes.clone(),
        );
        let fsync_latency = latency_histogram();
        registry.register(
            "wal_fsync_duration_seconds",
            "Duration of each group commit of the write-ahead log: its write and fsync, or its one direct synchronous write",
            fsync_latency.clone(),
        );
        let wal_bytes = Counter::default();
        registry.register(
            "wal_bytes",
            "Payload bytes of the records appended to the write-ahead log",
            wal_bytes.clone(),
        );
        let reads_local = Counter::default();
        registry.register(
            "serializable_reads_local",
            "Serializable reads answered from the applied state without the node's task",
            reads_local.clone(),
        );
        let reads_through_node = Counter::default();
        registry.register(
            "serializable_reads_through_node",
            "Serializable reads handed to the node's task (it was busy, or the protocol needs it)",
            reads_through_node.clone(),
        );
        Metrics {
            registry,
            rpc_latency,
            term,
            commit_index,
            applied_index,
            has_leader,
            leader_changes,
            fsync_latency,
            wal_bytes,
            reads_local,
            reads_through_node,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Publishes consensus progress.
    pub fn observe(&self, previous: &Observed, current: &Observed) {
        self.term.set(current.status.term as i64);
        self.commit_index.set(current.status.commit_index as i64);
        self.applied_index.set(current.status.applied_index as i64);
        self.has_leader
            .set(i64::from(current.status.leader.is_some()));
        if current.status.leader.is_some() && previous.status.leader != current.status.leader {
            self.leader_changes.inc();
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// A tower layer timing every gRPC call by method.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC router.
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            metrics()
                .rpc_latency
                .get_or_create(&MethodLabel { method })
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// Records one record of `bytes` appended to the write-ahead log (its payload; checkpoints,
/// which go to snapshot files, are not counted).
pub fn record_wal_append(bytes: usize) {
    metrics().wal_bytes.inc_by(bytes as u64);
}

/// Records one fsync.
pub fn record_fsync(took: Duration) {
    metrics().fsync_latency.observe(took.as_secs_f64());
}

async fn serve_metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().encode(),
    )
}

async fn serve_health(State(observed): State<watch::Receiver<Observed>>) -> impl IntoResponse {
    let has_leader = observed.borrow().status.leader.is_some();
    let (status, body) = if has_leader {
        (StatusCode::OK, r#"{"health":"true","reason":""}"#)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"health":"false","reason":"no leader"}"#,
        )
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// Serves `/metrics` and `/health` on `listener` until `shutdown` completes.
pub async fn serve_http(
    listener: TcpListener,
    observed: watch::Receiver<Observed>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/health", get(serve_health))
        .with_state(observed);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
