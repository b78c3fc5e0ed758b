//! One HTTP/2 connection the benchmark's clients share, as a gRPC transport.
//!
//! tonic's `Channel` puts a buffer task between its callers and the connection: every request
//! is handed to that task over a channel and its answer handed back, so each call pays two
//! extra task wake-ups on top of hyper's own hand-off to the connection task. On the 2-core
//! machines the benchmark runs on, where the client shares the CPU with the cluster it
//! measures, that overhead is taken from the servers. This transport is hyper's HTTP/2
//! client connection used directly: requests go straight into hyper's dispatch, and the
//! connection's flow control, framing and multiplexing are hyper's and h2's, as in `Channel`.
//! Both sides of a `--compare-etcd` run use it, so it changes no ratio's fairness.

use anyhow::{Context, Result};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::pin::Pin;
use std::task::{Poll, ready};
use std::time::Duration;
use synod_server::api::etcdserverpb::kv_client::KvClient;
use tokio::net::TcpStream;
use tonic::body::Body;

/// A cheap handle to one HTTP/2 connection; clones share the connection.
#[derive(Clone, Debug)]
pub struct Connection {
    sender: SendRequest<Body>,
    /// Scheme and authority every request names (HTTP/2 needs them in each request).
    origin: http::Uri,
}

impl Connection {
    /// Connects to `url` (`http://host:port`) within `timeout` and starts the connection's
    /// task.
    pub async fn open(url: &str, timeout: Duration) -> Result<Connection> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("'{url}' is not a valid endpoint URL"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("'{url}' names no host and port"))?
            .to_string();
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&authority))
            .await
            .with_context(|| format!("connecting to {url} took longer than {timeout:?}"))?
            .with_context(|| format!("cannot connect to {url}: is the server running there?"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/2 handshake with {url} failed"))?;
        tokio::spawn(async move {
            // Ends when every handle is dropped or the server closes the connection; calls
            // in flight then fail with the connection's error.
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            origin: uri,
        })
    }

    /// A KV client on this connection.
    pub fn kv(&self) -> KvClient<Connection> {
        KvClient::with_origin(self.clone(), self.origin.clone())
    }
}

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.sender.poll_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}
