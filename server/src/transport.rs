//! Peer-to-peer transport: framed TCP between nodes.
//!
//! Each node listens on one peer address. To send to a peer it keeps one outgoing
//! connection, opened lazily and reopened with exponential backoff after any error. A
//! connection starts with a hello frame naming the sender, then carries one frame per
//! message (`synod_core::frame`: length, CRC32C, postcard payload). Queues are bounded:
//! when a peer is slow or unreachable, messages beyond the bound are dropped, which the
//! protocols already tolerate (they run over a network that loses messages in simulation).

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;
use synod_core::frame::{FrameError, decode_frame, encode_frame};
use synod_core::node::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Messages waiting for one peer; beyond this they are dropped.
pub const PEER_QUEUE_MESSAGES: usize = 4096;
/// First reconnect delay; doubles up to [`RECONNECT_BACKOFF_MAX`].
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest reconnect delay.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Sends messages of type `M` to peers by id.
pub struct PeerSender<M> {
    queues: BTreeMap<NodeId, mpsc::Sender<M>>,
    tasks: BTreeMap<NodeId, JoinHandle<()>>,
}

impl<M: Serialize + Send + 'static> PeerSender<M> {
    /// Starts one writer task per peer in `peers` (excluding `me`).
    pub fn start(me: NodeId, peers: &BTreeMap<NodeId, SocketAddr>) -> Self {
        let mut queues = BTreeMap::new();
        let mut tasks = BTreeMap::new();
        for (&peer, &address) in peers {
            if peer == me {
                continue;
            }
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_MESSAGES);
            queues.insert(peer, sender);
            tasks.insert(
                peer,
                tokio::spawn(write_to_peer(me, peer, address, receiver)),
            );
        }
        PeerSender { queues, tasks }
    }

    /// Starts a writer for `peer` at `address` unless it has one (or is `me`).
    pub fn add(&mut self, me: NodeId, peer: NodeId, address: SocketAddr) {
        if peer == me || self.queues.contains_key(&peer) {
            return;
        }
        let (sender, receiver) = mpsc::channel(PEER_QUEUE_MESSAGES);
        self.queues.insert(peer, sender);
        self.tasks.insert(
            peer,
            tokio::spawn(write_to_peer(me, peer, address, receiver)),
        );
    }

    /// Stops sending to `peer` (e.g. a member removed from the cluster): drops what is
    /// queued for it and closes the connection, or stops trying to open one.
    pub fn remove(&mut self, peer: NodeId) {
        self.queues.remove(&peer);
        if let Some(task) = self.tasks.remove(&peer) {
            task.abort();
        }
    }

    /// Queues `message` for `to`; drops it if the queue is full or `to` is unknown.
    pub fn send(&self, to: NodeId, message: M) {
        if let Some(queue) = self.queues.get(&to)
            && queue.try_send(message).is_err()
        {
            tracing::debug!(peer = to.0, "peer queue full or closed: message dropped");
        }
    }
}

impl<M> Drop for PeerSender<M> {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

async fn write_to_peer<M: Serialize>(
    me: NodeId,
    peer: NodeId,
    address: SocketAddr,
    mut queue: mpsc::Receiver<M>,
) {
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
                while queue.try_recv().is_ok() {}
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if stream.write_all(&hello).await.is_err() {
            continue;
        }
        backoff = RECONNECT_BACKOFF_MIN;
        let mut buffer = Vec::new();
        let mut scratch = Vec::new();
        loop {
            let Some(message) = queue.recv().await else {
                return; // The node stopped.
            };
            buffer.clear();
            if !append_message(&message, &mut buffer, &mut scratch) {
                continue;
            }
            // Batch whatever else is already queued into the same write.
            while buffer.len() < 1 << 20 {
                match queue.try_recv() {
                    Ok(message) => {
                        append_message(&message, &mut buffer, &mut scratch);
                    }
                    Err(_) => break,
                }
            }
            if let Err(error) = stream.write_all(&buffer).await {
                tracing::debug!(peer = peer.0, %error, "peer connection lost; reconnecting");
                break;
            }
        }
    }
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
