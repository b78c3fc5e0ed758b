//! The client-facing gRPC server: HTTP/2 connections (the `h2` crate) on which the etcd KV
//! service's unary calls are answered inside the connection's own task, and every other call
//! goes through tonic's router.
//!
//! Written by hand because tonic's server (hyper) runs each call in a task of its own and,
//! for a unary response, queues the trailers only after the connection task has granted the
//! message's send window: a second `writev` per call, and no batching of calls answered
//! together. Loopback sends were a quarter of a member's CPU under reads. Here a call's
//! headers, message and trailers are queued at once, and the connection writes whatever was
//! queued since its last write in one go. Anything unusual about a KV call (compression,
//! another content type, a method this file does not know) takes tonic's path, so error
//! behaviour stays tonic's.

use crate::api::etcdserverpb as pb;
use crate::metrics::{MethodLabel, RpcMetrics, RpcMetricsLayer, metrics};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use pb::kv_server::Kv;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::service::Routes;
use tower::ServiceExt;

/// How long connections may take to finish their calls after shutdown begins (a watch
/// stream never finishes by itself).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Concurrent calls per connection (etcd clients multiplex everything on one or a few).
const MAX_STREAMS: u32 = 1024;

/// Receive windows, per stream and per connection (hyper's defaults: a 1.5 MiB request
/// arrives without a window update round trip).
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// The KV calls answered on the connection's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KvMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

impl KvMethod {
    fn of<B>(request: &Request<B>) -> Option<KvMethod> {
        if request.method() != http::Method::POST {
            return None;
        }
        let headers = request.headers();
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value == "application/grpc" || value == "application/grpc+proto");
        let identity = headers
            .get("grpc-encoding")
            .is_none_or(|value| value == "identity");
        if !grpc || !identity {
            return None;
        }
        match request.uri().path().strip_prefix("/etcdserverpb.KV/")? {
            "Range" => Some(KvMethod::Range),
            "Put" => Some(KvMethod::Put),
            "DeleteRange" => Some(KvMethod::DeleteRange),
            "Txn" => Some(KvMethod::Txn),
            "Compact" => Some(KvMethod::Compact),
            _ => None,
        }
    }
}

/// The request body tonic's router reads (flow-control capacity is given back as soon as
/// data arrives, as hyper does).
pub struct IncomingBody {
    recv: RecvStream,
    data_done: bool,
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(context)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(context)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

/// tonic's router, timed per method like the calls answered here.
type Router = RpcMetrics<Routes>;

/// Serves gRPC on `listener` until `shutdown` completes: the KV's unary calls by `kv`,
/// everything else by `routes`. Requests decode up to `decode_limit` bytes.
pub async fn serve<K: Kv>(
    listener: TcpListener,
    kv: Arc<K>,
    routes: Routes,
    decode_limit: usize,
    shutdown: impl Future<Output = ()>,
) {
    let routes: Router = tower::Layer::layer(&RpcMetricsLayer, routes);
    let (stop, _) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small exchanges must not wait for Nagle's algorithm and delayed ACKs.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(connection(
                        stream,
                        kv.clone(),
                        routes.clone(),
                        decode_limit,
                        stop.subscribe(),
                    ));
                }
                Err(error) => {
                    // Out of file descriptors, usually: give closing connections a moment
                    // instead of spinning.
                    tracing::warn!(%error, "cannot accept a client connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
    // Dropping the set aborts what is left.
}

async fn connection<K: Kv>(
    stream: TcpStream,
    kv: Arc<K>,
    routes: Router,
    decode_limit: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS);
    let mut connection = match builder
        .handshake::<_, Bytes>(UnvectoredWrites(stream))
        .await
    {
        Ok(connection) => connection,
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 handshake failed");
            return;
        }
    };
    let mut calls = FuturesUnordered::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            Some(()) = calls.next(), if !calls.is_empty() => {}
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.graceful_shutdown();
            }
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => match KvMethod::of(&request) {
                    Some(method) => calls.push(unary(
                        kv.clone(),
                        method,
                        request,
                        respond,
                        decode_limit,
                    )),
                    None => {
                        tokio::spawn(bridge(routes.clone(), request, respond));
                    }
                },
                Some(Err(error)) => {
                    tracing::debug!(%error, "client connection failed");
                    break;
                }
                None => break,
            },
        }
    }
}

/// A connection as h2 sees it: without vectored writes. h2 then copies DATA payloads under
/// 1 KiB into its write buffer instead of chaining them (with vectored writes it chains any
/// payload of 256 bytes or more, and writes one chained frame per system call), so the
/// frames queued since the last flush leave in one write instead of a `writev` each (a
/// serializable read of a 256-byte value answers about 300 bytes; figures in BENCHMARKS.md,
/// session 8).
struct UnvectoredWrites<S>(S);

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for UnvectoredWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(context, buffer)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for UnvectoredWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(context, bytes)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(context)
    }
}

/// Answers one KV call; its response is queued whole, for the connection's next write.
async fn unary<K: Kv>(
    kv: Arc<K>,
    method: KvMethod,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    decode_limit: usize,
) {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let result = match read_message(body, decode_limit).await {
        Ok(message) => {
            let metadata = MetadataMap::from_headers(parts.headers);
            let extensions = parts.extensions;
            let kv = &*kv;
            match method {
                KvMethod::Range => {
                    answer(message, metadata, extensions, |request| kv.range(request)).await
                }
                KvMethod::Put => {
                    answer(message, metadata, extensions, |request| kv.put(request)).await
                }
                KvMethod::DeleteRange => {
                    answer(message, metadata, extensions, |request| {
                        kv.delete_range(request)
                    })
                    .await
                }
                KvMethod::Txn => {
                    answer(message, metadata, extensions, |request| kv.txn(request)).await
                }
                KvMethod::Compact => {
                    answer(message, metadata, extensions, |request| kv.compact(request)).await
                }
            }
        }
        Err(status) => Err(status),
    };
    match result {
        Ok(framed) => {
            let head = Response::builder()
                .status(http::StatusCode::OK)
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .body(())
                .expect("a valid response head");
            if let Ok(mut stream) = respond.send_response(head, false) {
                // Buffered by h2 if the client's window is short; unary messages are bounded.
                let _ = stream.send_data(framed, false);
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                let _ = stream.send_trailers(trailers);
            }
        }
        // A trailers-only response, as tonic sends for an error.
        Err(status) => {
            let _ = respond.send_response(status.into_http::<()>(), true);
        }
    }
    metrics()
        .rpc_latency
        .get_or_create(&MethodLabel { method: path })
        .observe(started.elapsed().as_secs_f64());
}

/// Decodes one request message, runs `handler` on it and frames its response.
async fn answer<Q, P, F>(
    message: Bytes,
    metadata: MetadataMap,
    extensions: http::Extensions,
    handler: impl FnOnce(tonic::Request<Q>) -> F,
) -> Result<Bytes, Status>
where
    Q: prost::Message + Default,
    P: prost::Message,
    F: Future<Output = Result<tonic::Response<P>, Status>>,
{
    let request = Q::decode(message)
        .map_err(|error| Status::internal(format!("failed to decode Protobuf message: {error}")))?;
    let response = handler(tonic::Request::from_parts(metadata, extensions, request))
        .await?
        .into_inner();
    Ok(frame(&response))
}

/// A gRPC length-prefixed message: not compressed, its length, its bytes.
fn frame(message: &impl prost::Message) -> Bytes {
    let length = message.encoded_len();
    let mut framed = BytesMut::with_capacity(5 + length);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(length).unwrap_or(u32::MAX));
    message
        .encode(&mut framed)
        .expect("the buffer holds the encoded length");
    framed.freeze()
}

/// Reads a unary call's body (see [`unframe`]).
async fn read_message(mut body: RecvStream, limit: usize) -> Result<Bytes, Status> {
    // Nearly always the whole body is one DATA frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk =
            chunk.map_err(|error| Status::internal(format!("h2 protocol error: {error}")))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        match first.take() {
            None if joined.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(earlier) = earlier {
                    joined.extend_from_slice(&earlier);
                }
                joined.extend_from_slice(&chunk);
            }
        }
        let received = first.as_ref().map_or(joined.len(), Bytes::len);
        if received > limit.saturating_add(5) {
            return Err(too_large(received - 5, limit));
        }
    }
    unframe(first.unwrap_or_else(|| joined.freeze()), limit)
}

/// The message in a unary call's body: exactly one, uncompressed, of at most `limit` bytes.
fn unframe(mut body: Bytes, limit: usize) -> Result<Bytes, Status> {
    if body.len() < 5 {
        return Err(Status::internal("Missing request message."));
    }
    let compressed = body[0];
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if compressed != 0 {
        return Err(Status::internal(
            "protocol error: received message with compressed-flag but no grpc-encoding was specified",
        ));
    }
    if length > limit {
        return Err(too_large(length, limit));
    }
    if body.len() != 5 + length {
        return Err(Status::internal(
            "a unary call's body must hold exactly one message",
        ));
    }
    body.advance(5);
    Ok(body)
}

fn too_large(length: usize, limit: usize) -> Status {
    Status::out_of_range(format!(
        "Error, decoded message length too large: found {length} bytes, the limit is: {limit} bytes"
    ))
}

/// Runs a call through tonic's router and streams its response back. A client's reset
/// cancels the call, as under hyper.
async fn bridge(routes: Router, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let request = request.map(|recv| IncomingBody {
        recv,
        data_done: false,
    });
    let response = tokio::select! {
        response = routes.oneshot(request) => match response {
            Ok(response) => response,
            Err(never) => match never {},
        },
        _ = poll_fn(|context| respond.poll_reset(context)) => return,
    };
    let (parts, body) = response.into_parts();
    let end = body.is_end_stream();
    let Ok(stream) = respond.send_response(Response::from_parts(parts, ()), end) else {
        return;
    };
    if !end {
        pipe(body, stream).await;
    }
}

/// Sends a response body as its frames come, within the client's flow-control window.
async fn pipe(mut body: tonic::body::Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = tokio::select! {
            frame = poll_fn(|context| Pin::new(&mut body).poll_frame(context)) => frame,
            _ = poll_fn(|context| stream.poll_reset(context)) => return,
        };
        let frame = match frame {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "a response body failed");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                let end = body.is_end_stream();
                if data.is_empty() && end {
                    let _ = stream.send_data(data, true);
                    return;
                }
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    let mut granted = stream.capacity();
                    while granted == 0 {
                        match poll_fn(|context| stream.poll_capacity(context)).await {
                            Some(Ok(capacity)) => granted = capacity,
                            Some(Err(_)) | None => return,
                        }
                    }
                    let chunk = data.split_to(granted.min(data.len()));
                    if stream.send_data(chunk, end && data.is_empty()).is_err() {
                        return;
                    }
                }
                if end {
                    return;
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = stream.send_trailers(trailers);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, declared: u32, payload: &[u8]) -> Bytes {
        let mut body = vec![flag];
        body.extend_from_slice(&declared.to_be_bytes());
        body.extend_from_slice(payload);
        Bytes::from(body)
    }

    #[tokio::test]
    async fn the_connection_hides_vectored_writes_and_passes_bytes_through() {
        use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
        let (near, far) = tokio::io::duplex(1024);
        // h2 copies small DATA payloads into its buffer only without vectored writes.
        assert!(near.is_write_vectored());
        let mut near = UnvectoredWrites(near);
        assert!(!near.is_write_vectored());
        let mut far = UnvectoredWrites(far);
        near.write_all(b"answers").await.expect("write");
        near.flush().await.expect("flush");
        let mut got = [0u8; 7];
        far.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"answers");
        near.shutdown().await.expect("shutdown");
        assert_eq!(far.read(&mut got).await.expect("end"), 0);
    }

    #[test]
    fn a_framed_message_round_trips() {
        let request = pb::RangeRequest {
            key: b"greeting".to_vec(),
            limit: 3,
            ..Default::default()
        };
        let body = frame(&request);
        assert_eq!(body[0], 0);
        assert_eq!(body.len(), 5 + prost::Message::encoded_len(&request));
        let message = unframe(body, 1 << 20).unwrap();
        let decoded: pb::RangeRequest = prost::Message::decode(message).unwrap();
        assert_eq!(decoded, request);
    }

    #[test]
    fn bodies_that_are_not_one_plain_message_are_refused() {
        let missing = unframe(Bytes::from_static(&[0, 0, 0]), 100).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Internal);
        let compressed = unframe(framed(1, 2, b"ab"), 100).unwrap_err();
        assert_eq!(compressed.code(), tonic::Code::Internal);
        assert!(compressed.message().contains("compressed-flag"));
        let short = unframe(framed(0, 3, b"ab"), 100).unwrap_err();
        assert_eq!(short.code(), tonic::Code::Internal);
        let two = unframe(framed(0, 1, b"ab"), 100).unwrap_err();
        assert_eq!(two.code(), tonic::Code::Internal);
        assert_eq!(unframe(framed(0, 2, b"ab"), 100).unwrap(), &b"ab"[..]);
        assert_eq!(unframe(framed(0, 0, b""), 100).unwrap(), &b""[..]);
    }

    #[test]
    fn a_message_over_the_limit_gets_tonics_error() {
        let status = unframe(framed(0, 11, &[7; 11]), 10).unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(
            status.message(),
            "Error, decoded message length too large: found 11 bytes, the limit is: 10 bytes"
        );
        assert!(unframe(framed(0, 10, &[7; 10]), 10).is_ok());
    }

    #[test]
    fn only_plain_grpc_posts_to_the_kv_take_the_direct_path() {
        let request =
            |method: http::Method, path: &str, content_type: &str, encoding: Option<&str>| {
                let mut builder = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(http::header::CONTENT_TYPE, content_type);
                if let Some(encoding) = encoding {
                    builder = builder.header("grpc-encoding", encoding);
                }
                builder.body(()).unwrap()
            };
        let post = http::Method::POST;
        let grpc = "application/grpc";
        assert_eq!(
            KvMethod::of(&request(post.clone(), "/etcdserverpb.KV/Range", grpc, None)),
            Some(KvMethod::Range)
        );
        assert_eq!(
            KvMethod::of(&request(
                post.clone(),
                "/etcdserverpb.KV/Txn",
                "application/grpc+proto",
                Some("identity")
            )),
            Some(KvMethod::Txn)
        );
        for (method, path, content_type, encoding) in [
            (post.clone(), "/etcdserverpb.KV/Range", grpc, Some("gzip")),
            (
                post.clone(),
                "/etcdserverpb.KV/Range",
                "application/json",
                None,
            ),
            (http::Method::GET, "/etcdserverpb.KV/Range", grpc, None),
            (post.clone(), "/etcdserverpb.KV/Unknown", grpc, None),
            (post.clone(), "/etcdserverpb.Watch/Watch", grpc, None),
            (post.clone(), "/etcdserverpb.KVX/Range", grpc, None),
        ] {
            assert_eq!(
                KvMethod::of(&request(method, path, content_type, encoding)),
                None,
                "{path}"
            );
        }
    }
}
