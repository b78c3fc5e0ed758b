//! Peer-to-peer transport: framed TCP between nodes.
//!
//! Each node listens on one peer address. To send to a peer it keeps one outgoing
//! connection, opened lazily and reopened with exponential backoff after any error. A
//! connection starts with a hello frame naming the sender, then carries one frame per
//! message (`synod_core::frame`: length, CRC32C, postcard payload).
//!
//! Messages are written to the socket by the sender itself (the node's task after each
//! batch of inputs, the storage thread after each sync) when the connection is idle: one
//! non-blocking write per peer that the kernel takes whole unless the socket's buffer is
//! full. Only what the socket does not take waits for a writer task, which also opens and
//! reopens the connection. Handing every message to that task instead cost a task switch
//! on the path of each write's quorum round trip. Queues are bounded: when a peer is slow
//! or unreachable, messages beyond the bound are dropped, which the protocols already
//! tolerate (they run over a network that loses messages in simulation).

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use synod_core::frame::{FrameError, decode_frame, encode_frame};
use synod_core::node::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Encoded bytes waiting for one peer; messages beyond this are dropped.
pub const PEER_QUEUE_BYTES: usize = 64 << 20;
/// First reconnect delay; doubles up to [`RECONNECT_BACKOFF_MAX`].
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest reconnect delay.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Sends messages of type `M` to peers by id.
pub struct PeerSender<M> {
    links: BTreeMap<NodeId, Arc<Link>>,
    tasks: BTreeMap<NodeId, JoinHandle<()>>,
    /// Reused for encoding one message at a time.
    scratch: Vec<u8>,
    /// Peers with messages queued since the last [`PeerSender::flush`].
    unflushed: BTreeSet<NodeId>,
    _message: PhantomData<fn(M)>,
}

/// One peer's outgoing connection, shared by the sender and the link's writer task.
#[derive(Default)]
struct Link {
    state: Mutex<LinkState>,
    /// Wakes the writer task: bytes the socket did not take, or a broken connection.
    wake: Notify,
}

#[derive(Default)]
struct LinkState {
    /// The open connection, once its hello is written.
    stream: Option<Arc<TcpStream>>,
    /// Framed messages not written yet, oldest first.
    pending: Vec<u8>,
    /// The writer task owns writing (it is flushing `pending`, or the connection is down):
    /// senders only append, so bytes go out in order.
    writer_busy: bool,
}

impl Link {
    fn state(&self) -> MutexGuard<'_, LinkState> {
        crate::lock(&self.state)
    }
}

impl<M: Serialize + Send + 'static> PeerSender<M> {
    /// Starts one writer task per peer in `peers` (excluding `me`).
    pub fn start(me: NodeId, peers: &BTreeMap<NodeId, SocketAddr>) -> Self {
        let mut sender = PeerSender {
            links: BTreeMap::new(),
            tasks: BTreeMap::new(),
            scratch: Vec::new(),
            unflushed: BTreeSet::new(),
            _message: PhantomData,
        };
        for (&peer, &address) in peers {
            sender.add(me, peer, address);
        }
        sender
    }

    /// Starts a writer for `peer` at `address` unless it has one (or is `me`).
    pub fn add(&mut self, me: NodeId, peer: NodeId, address: SocketAddr) {
        if peer == me || self.links.contains_key(&peer) {
            return;
        }
        let link = Arc::new(Link::default());
        link.state().writer_busy = true; // Until the connection is open.
        self.links.insert(peer, link.clone());
        self.tasks
            .insert(peer, tokio::spawn(write_to_peer(me, peer, address, link)));
    }

    /// Stops sending to `peer` (e.g. a member removed from the cluster): drops what is
    /// queued for it and closes the connection, or stops trying to open one.
    pub fn remove(&mut self, peer: NodeId) {
        self.links.remove(&peer);
        if let Some(task) = self.tasks.remove(&peer) {
            task.abort();
        }
    }

    /// Queues `message` for `to` (dropped if the queue is full or `to` is unknown); it
    /// leaves with the next [`PeerSender::flush`], or with the writer task's next write.
    pub fn send(&mut self, to: NodeId, message: M) {
        let Some(link) = self.links.get(&to) else {
            return;
        };
        let mut state = link.state();
        if state.pending.len() >= PEER_QUEUE_BYTES {
            tracing::debug!(peer = to.0, "peer queue full: message dropped");
            return;
        }
        if append_message(&message, &mut state.pending, &mut self.scratch) && !state.writer_busy {
            self.unflushed.insert(to);
        }
    }

    /// Writes what [`PeerSender::send`] queued since the last flush, one write per peer:
    /// a batch of messages to a peer leaves in one system call. What a socket does not
    /// take at once is left to the peer's writer task.
    pub fn flush(&mut self) {
        while let Some(peer) = self.unflushed.pop_first() {
            if let Some(link) = self.links.get(&peer) {
                link.flush();
            }
        }
    }
}

impl Link {
    /// Writes the pending bytes if the senders own writing (the writer task is idle):
    /// a non-blocking write; the rest, or a broken connection, goes to the writer task.
    fn flush(&self) {
        let mut state = self.state();
        if state.writer_busy || state.pending.is_empty() {
            return;
        }
        let Some(stream) = state.stream.clone() else {
            return;
        };
        let mut written = 0;
        let outcome = loop {
            match stream.try_write(&state.pending[written..]) {
                Ok(0) => break Err(()),
                Ok(count) => {
                    written += count;
                    if written == state.pending.len() {
                        break Ok(());
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        if outcome.is_err() {
            // The writer task reconnects; a partial frame must not start the next
            // connection.
            state.pending.clear();
            state.stream = None;
            state.writer_busy = true;
            drop(state);
            self.wake.notify_one();
            return;
        }
        state.pending.drain(..written);
        if !state.pending.is_empty() {
            // The socket's buffer is full: the writer task waits until it drains.
            state.writer_busy = true;
            drop(state);
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
impl<M> PeerSender<M> {
    /// The connection to `peer` is open and the senders own writing (tests use it to take
    /// the direct path on purpose).
    fn writes_directly(&self, peer: NodeId) -> bool {
        self.links.get(&peer).is_some_and(|link| {
            let state = link.state();
            !state.writer_busy && state.stream.is_some()
        })
    }
}

impl<M> Drop for PeerSender<M> {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// Opens (and reopens) the connection to `peer` and writes whatever the senders could
/// not write themselves.
async fn write_to_peer(me: NodeId, peer: NodeId, address: SocketAddr, link: Arc<Link>) {
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut hello = Vec::new();
    let me_bytes = postcard::to_stdvec(&me.0).expect("a u32 serializes");
    encode_frame(&me_bytes, &mut hello).expect("a hello fits in a frame");
    loop {
        let mut stream = match TcpStream::connect(address).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(peer = peer.0, %address, %error, "cannot reach peer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                // Messages queued while the peer is unreachable are stale by the time it
                // comes back; protocols retransmit what still matters.
                link.state().pending.clear();
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if stream.write_all(&hello).await.is_err() {
            continue;
        }
        backoff = RECONNECT_BACKOFF_MIN;
        let stream = Arc::new(stream);
        link.state().stream = Some(stream.clone());
        // Writes what is pending until there is nothing left, then hands writing back to
        // the senders; waits for the next wake-up. Ends (to reconnect) on an error.
        loop {
            let mut batch = {
                let mut state = link.state();
                if state.stream.is_none() {
                    break; // A sender saw the connection break.
                }
                if state.pending.is_empty() {
                    state.writer_busy = false;
                    None
                } else {
                    Some(std::mem::take(&mut state.pending))
                }
            };
            match batch.as_mut() {
                None => link.wake.notified().await,
                Some(bytes) => {
                    if let Err(error) = write_all_shared(&stream, bytes).await {
                        tracing::debug!(peer = peer.0, %error, "peer connection lost; reconnecting");
                        let mut state = link.state();
                        state.stream = None;
                        state.pending.clear();
                        break;
                    }
                    // Give the (now empty) buffer back for reuse if nothing replaced it.
                    let mut state = link.state();
                    if state.pending.is_empty() {
                        bytes.clear();
                        state.pending = std::mem::take(bytes);
                    }
                }
            }
        }
        link.state().writer_busy = true;
    }
}

/// Writes all of `bytes` to a stream shared with the senders (who only write while this
/// task is idle).
async fn write_all_shared(stream: &TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        stream.writable().await?;
        match stream.try_write(&bytes[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(count) => written += count,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Frames `message` onto `buffer`, encoding it in `scratch` (kept between calls so its
/// allocation is reused); false (and logged) if it cannot be encoded.
fn append_message<M: Serialize>(message: &M, buffer: &mut Vec<u8>, scratch: &mut Vec<u8>) -> bool {
    let mut payload = std::mem::take(scratch);
    payload.clear();
    let payload = match postcard::to_extend(message, payload) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "cannot encode a peer message: dropped");
            return false;
        }
    };
    let framed = encode_frame(&payload, buffer);
    *scratch = payload;
    match framed {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "peer message too large for a frame: dropped");
            false
        }
    }
}

/// Accepts peer connections on `listener` and delivers `(from, message)` to `deliver`
/// until the returned task is aborted.
pub fn start_listener<M, F>(listener: TcpListener, deliver: F) -> JoinHandle<()>
where
    M: DeserializeOwned + Send + 'static,
    F: Fn(NodeId, M) + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let deliver = deliver.clone();
            connections.spawn(read_from_peer::<M, F>(stream, deliver, PhantomData));
            // Reap finished connections so the set does not grow without bound.
            while connections.try_join_next().is_some() {}
        }
    })
}

async fn read_from_peer<M: DeserializeOwned, F: Fn(NodeId, M)>(
    mut stream: TcpStream,
    deliver: F,
    _message: PhantomData<M>,
) {
    let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut from: Option<NodeId> = None;
    loop {
        // Decode every complete frame in the buffer.
        let mut consumed = 0;
        loop {
            match decode_frame(&buffer[consumed..]) {
                Ok((payload, used)) => {
                    match from {
                        None => match postcard::from_bytes::<u32>(payload) {
                            Ok(id) => from = Some(NodeId(id)),
                            Err(_) => return, // Not a peer speaking our protocol.
                        },
                        Some(sender) => match postcard::from_bytes::<M>(payload) {
                            Ok(message) => deliver(sender, message),
                            Err(error) => {
                                tracing::warn!(%error, "undecodable peer message: closing");
                                return;
                            }
                        },
                    }
                    consumed += used;
                }
                Err(FrameError::Incomplete { .. }) => break,
                Err(error) => {
                    tracing::warn!(%error, "corrupt frame from peer: closing connection");
                    return;
                }
            }
        }
        buffer.drain(..consumed);
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Numbered = (u64, Vec<u8>);

    /// A receiving node on an OS-chosen port; what it receives arrives on the channel.
    async fn receiver() -> (
        SocketAddr,
        JoinHandle<()>,
        tokio::sync::mpsc::UnboundedReceiver<(NodeId, Numbered)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let (deliveries, received) = tokio::sync::mpsc::unbounded_channel();
        let task = start_listener::<Numbered, _>(listener, move |from, message| {
            let _ = deliveries.send((from, message));
        });
        (address, task, received)
    }

    fn sender_to(address: SocketAddr) -> PeerSender<Numbered> {
        PeerSender::start(NodeId(1), &BTreeMap::from([(NodeId(2), address)]))
    }

    #[tokio::test]
    async fn messages_queued_before_the_connection_opens_arrive_in_order() {
        let (address, _listener, mut received) = receiver().await;
        let mut sender = sender_to(address);
        // The writer task has not connected yet: these wait for it.
        for number in 0..100 {
            sender.send(NodeId(2), (number, vec![7; 10]));
        }
        sender.flush();
        for number in 0..100 {
            let (from, (got, payload)) = received.recv().await.expect("a message");
            assert_eq!((from, got, payload.len()), (NodeId(1), number, 10));
        }
    }

    /// Waits (yielding, at most 10 s) until `sender` writes to peer 2 itself.
    async fn until_direct(sender: &PeerSender<Numbered>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !sender.writes_directly(NodeId(2)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection never opened"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_larger_than_the_socket_buffer_arrives_whole_and_in_order() {
        let (address, _listener, mut received) = receiver().await;
        let mut sender = sender_to(address);
        sender.send(NodeId(2), (0, Vec::new()));
        sender.flush();
        assert_eq!(received.recv().await.expect("first").1.0, 0);
        // Flushes write straight to the socket until it is full; the writer task takes
        // over the rest, and later sends queue behind it.
        until_direct(&sender).await;
        let count = 2_000u64;
        for number in 1..=count {
            sender.send(NodeId(2), (number, vec![number as u8; 16 * 1024]));
            if number % 100 == 0 {
                sender.flush();
            }
        }
        sender.flush();
        for number in 1..=count {
            let (_, (got, payload)) = received.recv().await.expect("a message");
            assert_eq!(got, number);
            assert_eq!(payload, vec![number as u8; 16 * 1024]);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_a_stalled_peer_cannot_take_wait_and_arrive_in_order_once_it_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut sender = sender_to(address);
        let (mut peer, _) = listener.accept().await.expect("connection");
        until_direct(&sender).await;
        // Nobody reads yet. One message larger than any socket buffer: the direct write
        // takes part of it, and the writer task must take over the rest at once.
        let size = 16 * 1024;
        let big = 8 << 20;
        sender.send(NodeId(2), (0, vec![0; big]));
        sender.flush();
        assert!(
            !sender.writes_directly(NodeId(2)),
            "the rest of a partial write was not handed to the writer task"
        );
        // Later messages queue behind it, in order.
        let count = 500u64;
        for number in 1..count {
            sender.send(NodeId(2), (number, vec![number as u8; size]));
            sender.flush();
        }
        // Now read everything: the hello, then every message once, in order.
        let mut bytes = Vec::new();
        let mut next = 0u64;
        let mut hello = None;
        let read_all = async {
            while next < count {
                let mut consumed = 0;
                while let Ok((payload, used)) = decode_frame(&bytes[consumed..]) {
                    if hello.is_none() {
                        hello = Some(postcard::from_bytes::<u32>(payload).expect("hello"));
                    } else {
                        let (got, payload): Numbered =
                            postcard::from_bytes(payload).expect("a message");
                        assert_eq!(got, next);
                        let expected = if next == 0 { big } else { size };
                        assert_eq!(payload, vec![next as u8; expected]);
                        next += 1;
                    }
                    consumed += used;
                }
                bytes.drain(..consumed);
                if next < count {
                    let read = peer.read_buf(&mut bytes).await.expect("read");
                    assert!(read > 0, "the connection closed after {next} messages");
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read_all)
            .await
            .expect("every message within 30 s");
        assert_eq!(hello, Some(1));
        assert!(bytes.is_empty(), "bytes after the last message");
    }

    #[tokio::test]
    async fn a_message_to_an_unknown_peer_is_dropped() {
        let (address, _listener, mut received) = receiver().await;
        let mut sender = sender_to(address);
        sender.send(NodeId(9), (1, Vec::new()));
        sender.send(NodeId(2), (2, Vec::new()));
        sender.flush();
        assert_eq!(received.recv().await.expect("a message").1.0, 2);
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_is_reopened_and_later_messages_arrive_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut sender = sender_to(address);
        sender.send(NodeId(2), (0, Vec::new()));
        sender.flush();
        // The peer takes the first connection and closes it at once (a restart).
        let (first, _) = listener.accept().await.expect("first connection");
        drop(first);
        let (deliveries, mut received) = tokio::sync::mpsc::unbounded_channel();
        let _listener = start_listener::<Numbered, _>(listener, move |_, message| {
            let _ = deliveries.send(message);
        });
        // Messages sent into the dead connection are lost; one soon fails to write, and
        // the writer reconnects. Keep sending until one arrives.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut number = 0;
        let first_delivered = loop {
            number += 1;
            sender.send(NodeId(2), (number, Vec::new()));
            sender.flush();
            match tokio::time::timeout(Duration::from_millis(20), received.recv()).await {
                Ok(Some((got, _))) => break got,
                Ok(None) => panic!("the listener stopped"),
                Err(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "no message arrived after the peer closed the connection"
                ),
            }
        };
        assert!(first_delivered >= 1 && first_delivered <= number);
        // From there on nothing is lost, duplicated or reordered.
        for later in number + 1..number + 50 {
            sender.send(NodeId(2), (later, Vec::new()));
        }
        sender.flush();
        let mut expected = first_delivered + 1;
        while expected < number + 50 {
            let (got, _) = received.recv().await.expect("a message");
            assert_eq!(got, expected);
            expected += 1;
        }
    }
}
