//! One HTTP/2 connection the benchmark's clients share, and unary gRPC calls over it.
//!
//! Written on `h2` rather than tonic's client because the benchmark's client shares the
//! machine's cores with the cluster it measures, and every microsecond it spends per call is
//! taken from the servers. tonic's `Channel` hands each call to a buffer task and back (two
//! task wake-ups), and hyper's HTTP/2 client, even used directly, spawns a task per call to
//! await the response (and another to send the body when the stream has no send capacity
//! yet). Here the calling task sends the request, its one DATA frame and awaits the response
//! itself; `h2` still does the framing, flow control and multiplexing. This module adds only
//! gRPC's message framing (a flag byte and a 4-byte length) and reads `grpc-status` from the
//! trailers. Both sides of a `--compare-etcd` run use it, so it changes no ratio's fairness.

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::{Code, Status};

/// gRPC's message prefix: a compression flag byte and a big-endian 4-byte length.
const PREFIX: usize = 5;

/// A cheap handle to one HTTP/2 connection; clones share the connection.
#[derive(Clone, Debug)]
pub struct Connection {
    sender: SendRequest<Bytes>,
    /// Scheme and authority every request names (HTTP/2 needs them in each request).
    origin: String,
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
        let (sender, connection) = h2::client::handshake(stream)
            .await
            .with_context(|| format!("HTTP/2 handshake with {url} failed"))?;
        tokio::spawn(async move {
            // Ends when every handle is dropped or the server closes the connection; calls
            // in flight then fail with the connection's error.
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            origin: format!("http://{authority}"),
        })
    }

    /// Calls the unary method at `path` (`/package.Service/Method`) with `request`.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        request: &Req,
    ) -> Result<Resp, Status> {
        let length = request.encoded_len();
        let mut body = BytesMut::with_capacity(PREFIX + length);
        body.put_u8(0);
        body.put_u32(u32::try_from(length).map_err(|_| Status::internal("request too large"))?);
        request
            .encode(&mut body)
            .map_err(|error| Status::internal(error.to_string()))?;
        let head = http::Request::post(format!("{}{path}", self.origin))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|error| Status::internal(error.to_string()))?;
        let mut sender = self.sender.clone().ready().await.map_err(transport)?;
        let (response, mut send) = sender.send_request(head, false).map_err(transport)?;
        // Buffered by h2 until the stream has send capacity: no waiting here.
        send.send_data(body.freeze(), true).map_err(transport)?;
        let response = response.await.map_err(transport)?;
        let (head, mut received) = response.into_parts();
        // A trailers-only response (an error before any message) carries its status in
        // the headers.
        if let Some(status) = status_of(&head.headers) {
            return Err(status);
        }
        if head.status != http::StatusCode::OK {
            return Err(Status::unknown(format!("HTTP status {}", head.status)));
        }
        let mut message = BytesMut::new();
        while let Some(chunk) = received.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = received.flow_control().release_capacity(chunk.len());
            message.extend_from_slice(&chunk);
        }
        let trailers = received.trailers().await.map_err(transport)?;
        match trailers.as_ref().and_then(status_of) {
            Some(status) => return Err(status),
            None if trailers.is_none() => {
                return Err(Status::internal("the response ended without grpc-status"));
            }
            None => {}
        }
        if message.len() < PREFIX {
            return Err(Status::internal("the response has no message"));
        }
        if message[0] != 0 {
            return Err(Status::internal("the response is compressed"));
        }
        let declared = u32::from_be_bytes([message[1], message[2], message[3], message[4]]);
        let payload = &message[PREFIX..];
        if payload.len() != declared as usize {
            return Err(Status::internal(format!(
                "the response's message is {} bytes, its prefix says {declared}",
                payload.len()
            )));
        }
        Resp::decode(payload).map_err(|error| Status::internal(error.to_string()))
    }
}

/// The gRPC status in `headers`, if it names one other than OK; OK maps to `None`.
fn status_of(headers: &http::HeaderMap) -> Option<Status> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    if code == 0 {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|value| value.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Status::new(Code::from_i32(code), message))
}

/// Undoes gRPC's percent-encoding of `grpc-message`.
fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = match bytes.get(index..index + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection-level failure as a gRPC status (as tonic reports them).
fn transport(error: h2::Error) -> Status {
    Status::unavailable(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode("etcdserver:%20no%20leader"),
            "etcdserver: no leader"
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn a_status_in_headers_is_read_and_ok_is_none() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", "0".parse().unwrap());
        assert!(status_of(&headers).is_none());
        headers.insert("grpc-status", "14".parse().unwrap());
        headers.insert("grpc-message", "etcdserver:%20no%20leader".parse().unwrap());
        let status = status_of(&headers).unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "etcdserver: no leader");
    }
}
