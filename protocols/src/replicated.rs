//! The interface between a replicated log (Multi-Paxos, Raft) and the state machine it
//! replicates, so the same key-value machine runs unchanged on either.
//!
//! A log protocol turns a client's request into a [`StateMachine::Command`], agrees on an
//! order of commands, and applies them in that order on every replica; the replica that
//! answers clients sends what [`StateMachine::apply`] returns. A replica that cannot take a
//! request (it does not lead) answers with [`StateMachine::redirect`].
//!
//! Three optional capabilities let a log protocol do better than "everything through the
//! log"; a state machine that does not override them gets the safe defaults:
//! - [`StateMachine::read_consistency`] and [`StateMachine::query`]: read-only requests a
//!   protocol may answer from its applied state (linearizable ones after a ReadIndex round
//!   or under a leader lease, serializable ones on any replica);
//! - [`StateMachine::due`]: commands the leader proposes on its own, such as revoking
//!   expired leases, decided from replicated state and the leader's clock;
//! - `Serialize + DeserializeOwned`: the whole state is a snapshot, so a log can be
//!   compacted and a lagging replica restored from a copy.

use serde::Serialize;
use serde::de::DeserializeOwned;
use synod_core::node::{ClientId, NodeId, Value};
use synod_core::time::Time;

/// How a read-only request may be answered without appending to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadConsistency {
    /// Must observe every write acknowledged before it was sent: the leader confirms it
    /// still leads (ReadIndex, or a lease) and answers once it has applied that far.
    Linearizable,
    /// May be answered by any replica from whatever it has applied (possibly stale, never
    /// a state that was not committed).
    Serializable,
}

/// Bytes a snapshot carries after the state's encoded head, read when the snapshot is
/// written or sent rather than copied into memory when it is taken (a state machine whose
/// bulk lives in an append-only file hands out that file). Bytes below the length given
/// with the tail never change.
pub trait SnapshotTail: Send + Sync + std::fmt::Debug {
    /// Bytes available now.
    fn len(&self) -> u64;
    /// True if there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `out` with the bytes at `offset`.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()>;
}

/// A snapshot tail and how many of its bytes belong to the snapshot.
pub type Tail = (std::sync::Arc<dyn SnapshotTail>, u64);

/// A deterministic state machine driven by a replicated log.
pub trait StateMachine: Value + Default + Serialize + DeserializeOwned {
    /// What clients send (serializable: a follower may pass a request on to its leader).
    type Request: Value + Serialize + DeserializeOwned;
    /// What clients receive.
    type Response: Value;
    /// A log entry.
    type Command: Value + Serialize + DeserializeOwned;

    /// The log entry for `request` from `client`, proposed when the proposer's clock reads
    /// `now` (a machine may stamp the command with it, e.g. to renew a lease).
    fn command(client: ClientId, request: Self::Request, now: Time) -> Self::Command;
    /// Applies the next command in log order; returns the client to answer and the answer,
    /// if there is one. Every replica must compute the same state and answer.
    fn apply(&mut self, command: &Self::Command) -> Option<(ClientId, Self::Response)>;
    /// The answer for a request this replica will not order (it does not lead); `leader`
    /// is the node it believes leads.
    fn redirect(request: &Self::Request, leader: Option<NodeId>) -> Self::Response;

    /// `Some` when `request` is read-only and may be answered by [`StateMachine::query`]
    /// instead of going through the log. The default sends everything through the log.
    fn read_consistency(_request: &Self::Request) -> Option<ReadConsistency> {
        None
    }
    /// Answers a read-only request (one for which [`StateMachine::read_consistency`] is
    /// `Some`) from the applied state, without changing it.
    fn query(&self, client: ClientId, request: &Self::Request) -> Self::Response {
        let _ = client;
        unreachable!("query called for {request:?}, which read_consistency sends to the log")
    }
    /// Commands the leader should propose on its own now: its clock reads `now` and it has
    /// led since `leading_since` (by its own clock). Must be a function of the replicated
    /// state and these two times only; the default proposes nothing.
    fn due(&self, now: Time, leading_since: Time) -> Vec<Self::Command> {
        let _ = (now, leading_since);
        Vec::new()
    }

    /// The state split for a snapshot: `head`, and optionally a tail of `len` bytes such
    /// that `head`, then `len` as a postcard varint, then the tail's bytes is exactly the
    /// postcard encoding of the state. The default puts everything in the head.
    fn snapshot_parts(&self) -> Result<(Vec<u8>, Option<Tail>), String> {
        encode_exactly(self)
            .map(|head| (head, None))
            .map_err(|error| format!("the state does not encode: {error}"))
    }

    /// Replaces this state by `restored` (decoded from a snapshot), keeping whatever this
    /// state holds that a decoded one cannot (e.g. the file its values go to).
    fn adopt(&mut self, restored: Self) {
        *self = restored;
    }

    /// Why this state can no longer be trusted (its storage failed), if it cannot: the
    /// driver must stop the node without letting any output of the failed step leave.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// The postcard encoding of `value` in a buffer of exactly its size: one pass to measure,
/// one to write. For a state of hundreds of megabytes this avoids the up to twice as large
/// buffer that growing by doubling needs.
pub fn encode_exactly<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let size = postcard::experimental::serialized_size(value)?;
    postcard::to_extend(value, Vec::with_capacity(size))
}
