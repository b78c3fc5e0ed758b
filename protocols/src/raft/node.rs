//! The Raft node: roles, messages, records and their handlers.

use super::log::{Entry, Payload, RaftLog};
use super::membership::{ChangeVariant, Membership, MembershipChange, MembershipError};
use crate::replicated::{ReadConsistency, StateMachine, Tail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use synod_core::hash::StableHasher;
use synod_core::node::{ClientId, Context, Node, NodeId};
use synod_core::time::Time;

/// Applied-prefix digests a node keeps for the state-machine safety check.
const DIGEST_WINDOW_ENTRIES: u64 = 256;

/// Heartbeat rounds whose send time a leader remembers (a round older than this that is
/// acknowledged only now would give a lease that has long expired anyway).
const ROUND_WINDOW: u64 = 64;

/// Reads a leader queues while it confirms leadership; more are redirected (the client
/// retries) so a flood of reads cannot grow the leader's memory without bound.
const PENDING_READS_MAX: usize = 1024;

/// Parts per million, the unit of clock drift.
const PPM: u64 = 1_000_000;

/// Which leader to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RaftVariant {
    /// Raft as specified.
    Correct,
    /// Broken (the paper's figure 8): no no-op on election, and any entry held by a
    /// majority counts as committed whatever its term.
    Figure8,
    /// Broken: a follower answers a linearizable read as soon as the leader names its read
    /// index, without waiting until it has applied that far (a stale read).
    EarlyFollowerRead,
    /// Broken: the leader's read index (and its lease reads) ignore the writes a follower
    /// committed on the leader's durable hint before the leader counted a majority, so a
    /// read on the leader can miss a write already acknowledged (see
    /// [`RaftConfig::durable_hints`]).
    HintBlindReads,
}

impl RaftVariant {
    /// Every variant, correct first.
    pub const ALL: [RaftVariant; 4] = [
        RaftVariant::Correct,
        RaftVariant::Figure8,
        RaftVariant::EarlyFollowerRead,
        RaftVariant::HintBlindReads,
    ];

    /// The variant's command-line name.
    pub fn name(self) -> &'static str {
        match self {
            RaftVariant::Correct => "correct",
            RaftVariant::Figure8 => "figure8",
            RaftVariant::EarlyFollowerRead => "early-follower-read",
            RaftVariant::HintBlindReads => "hint-blind-reads",
        }
    }
}

/// How linearizable read-only requests are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadMode {
    /// Through the log like writes.
    Log,
    /// ReadIndex: a heartbeat round confirms leadership, then the leader answers once it
    /// applied the commit index it noted. Safe under any clock behaviour.
    ReadIndex,
    /// A leader lease (falling back to ReadIndex when the lease has lapsed). Safe only while
    /// clock rates stay within [`RaftConfig::clock_drift_bound_ppm`] of real time and clocks
    /// never jump backward.
    Lease,
}

/// Timing, batching and compaction settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RaftConfig {
    /// How often a leader sends heartbeats (and retries probes and snapshot chunks).
    pub heartbeat_interval: Duration,
    /// The shortest election timeout; also how long a follower refuses votes after hearing
    /// from a leader, and how often a leader checks that a majority still answers.
    pub election_timeout_min: Duration,
    /// The longest election timeout (randomized between the two).
    pub election_timeout_max: Duration,
    /// How linearizable reads are served.
    pub read_mode: ReadMode,
    /// The largest difference, in parts per million, between any node's clock rate and real
    /// time that leases assume. The simulator's default drift is at most 1,000 ppm.
    pub clock_drift_bound_ppm: u32,
    /// Applied entries beyond the snapshot point that trigger a new snapshot.
    pub snapshot_threshold_entries: u64,
    /// Bytes of encoded state per InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Applied entries kept in memory behind a snapshot, so that a follower slightly
    /// behind when the leader snapshots catches up from the log instead of receiving the
    /// whole state (etcd keeps 5,000). The checkpoint holds only the entries after it.
    pub snapshot_catch_up_entries: u64,
    /// Entries in one AppendEntries message.
    pub append_entries_max: usize,
    /// Encoded entry bytes in one AppendEntries message (at least one entry is sent).
    pub append_bytes_max: usize,
    /// Unacknowledged AppendEntries messages per follower in replicate mode.
    pub inflight_messages_max: usize,
    /// Unacknowledged entry bytes per follower in replicate mode.
    pub inflight_bytes_max: usize,
    /// Followers serve clients themselves: they pass writes to the leader over the peer
    /// channel (and answer once they applied them), and answer linearizable reads after
    /// asking the leader for a read index. Off, they redirect clients to the leader.
    pub follower_serve: bool,
    /// Keep a digest of the applied prefix (a hash chained over every applied entry), which
    /// the simulator's state-machine safety check compares between replicas. Off, the
    /// digest stays 0 and applying an entry does not hash it (a server needs no digest).
    pub applied_digests: bool,
    /// In a cluster of at most three voters, a follower waiting for writes it passed on
    /// commits them once its own copy and the leader's are durable (two of three: a
    /// majority), which the leader tells it with [`RaftMessage::Durable`] as soon as its
    /// own write returns. Off, the follower waits for the leader to count the
    /// acknowledgements and announce the commit: one round trip later.
    pub durable_hints: bool,
    /// How long a leader may keep a new commit index to itself when no append carries it
    /// sooner: under a steady stream of writes the next append tells the followers, so
    /// no message (and no reply to it) is spent on the announcement. Followers waiting
    /// for a commit (a read index they were given, a write they passed on that no
    /// [`RaftMessage::Durable`] covers) are told at once. Zero announces every commit at
    /// once. The delay bounds how far behind a follower's state is at rest, which a
    /// follower's serializable reads and watches see.
    pub commit_announce_delay: Duration,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            read_mode: ReadMode::ReadIndex,
            clock_drift_bound_ppm: 10_000,
            // Small so that simulations of a few hundred operations exercise compaction.
            snapshot_threshold_entries: 64,
            snapshot_chunk_bytes: 512,
            snapshot_catch_up_entries: 0,
            append_entries_max: 64,
            append_bytes_max: 64 * 1024,
            inflight_messages_max: 4,
            inflight_bytes_max: 256 * 1024,
            follower_serve: true,
            applied_digests: true,
            durable_hints: true,
            commit_announce_delay: Duration::from_millis(1),
        }
    }
}

impl RaftConfig {
    /// How long (by the leader's clock) a majority-acknowledged heartbeat round lets the
    /// leader answer reads locally, counted from when the round was sent: the follower
    /// promise shortened so that it holds even if the leader's clock runs slow and the
    /// followers' fast by the drift bound, `min_timeout × (1 − d) / (1 + d)`.
    pub fn lease_duration(&self) -> Duration {
        let drift = u64::from(self.clock_drift_bound_ppm).min(PPM - 1);
        let promise = self.election_timeout_min.as_nanos();
        let nanos = promise * u128::from(PPM - drift) / u128::from(PPM + drift);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// A piece of a snapshot on its way to a follower.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// The sender's term.
    pub term: u64,
    /// The last index the snapshot covers.
    pub last_index: u64,
    /// The term of that entry.
    pub last_term: u64,
    /// The applied-prefix digest at `last_index`.
    pub digest: u64,
    /// The configuration in effect at `last_index`.
    pub membership: Membership,
    /// Length of the whole encoded state.
    pub total_bytes: u64,
    /// CRC32C of the whole encoded state.
    pub checksum: u32,
    /// Where this chunk starts.
    pub offset: u64,
    /// The chunk's bytes.
    #[serde(with = "crate::bytes::field")]
    pub data: Vec<u8>,
    /// The leader's heartbeat round when sent.
    pub round: u64,
}

/// Messages between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftMessage<S: StateMachine> {
    /// A (pre-)candidate asks for a vote in `term` (for a pre-vote, the term it would take).
    RequestVote {
        /// The term asked for.
        term: u64,
        /// The candidate's last log index.
        last_index: u64,
        /// The candidate's last log term.
        last_term: u64,
        /// A pre-vote changes no state on either side.
        pre_vote: bool,
        /// Sent on the leader's request (a leadership transfer): voters answer even while
        /// they heard from that leader lately.
        transfer: bool,
    },
    /// The answer to a `RequestVote`.
    VoteReply {
        /// The term granted, or the voter's own term if refused.
        term: u64,
        /// Whether the vote was granted.
        granted: bool,
        /// Answers a pre-vote.
        pre_vote: bool,
    },
    /// Entries to append after (`prev_index`, `prev_term`); empty as a heartbeat.
    AppendEntries {
        /// The leader's term.
        term: u64,
        /// The index before the first entry.
        prev_index: u64,
        /// Its term.
        prev_term: u64,
        /// The entries.
        entries: Vec<Entry<S>>,
        /// The leader's commit index.
        commit: u64,
        /// The leader's heartbeat round when sent (for ReadIndex and leases).
        round: u64,
    },
    /// The answer to `AppendEntries` (also a leader's acknowledgement to itself).
    AppendReply {
        /// The follower's term.
        term: u64,
        /// Whether the entries were appended.
        success: bool,
        /// On success: the follower's log matches the leader's up to here.
        match_index: u64,
        /// On refusal: the `prev_index` refused.
        rejected_prev: u64,
        /// On refusal: the term of the conflicting entry, if the follower has one there.
        hint_term: Option<u64>,
        /// On refusal: where the leader should retry (the first index of `hint_term`, or
        /// just past the follower's log).
        hint_index: u64,
        /// The round echoed.
        round: u64,
    },
    /// A piece of a snapshot.
    InstallSnapshot(Box<SnapshotChunk>),
    /// The leader of `term` hands leadership to the receiver: campaign now.
    TimeoutNow {
        /// The leader's term.
        term: u64,
    },
    /// A follower passes a client's request to the leader, which proposes it.
    Forward {
        /// The client the follower answers once the entry is applied.
        client: ClientId,
        /// The request.
        request: S::Request,
    },
    /// A follower asks the leader for a read index for the reads it holds.
    ReadIndex {
        /// Names the follower's batch of reads (random, so a reply meant for an earlier
        /// life of the follower never matches).
        id: u64,
    },
    /// The leader confirmed, after the request arrived, that it still led with this commit
    /// index: a follower that applied up to `index` may answer the batch's reads.
    ReadIndexReply {
        /// The batch answered.
        id: u64,
        /// The read index.
        index: u64,
    },
    /// The sender holds the leader of `term`'s log up to `index` durably. A leader sends
    /// it to a follower waiting for writes it passed on, as soon as its own write returns;
    /// a follower sends it to itself once its own copy is durable (the output gate holds
    /// the message until then). With at most three voters the two copies are a majority:
    /// see [`RaftConfig::durable_hints`].
    Durable {
        /// The leader's term.
        term: u64,
        /// The last index held.
        index: u64,
    },
    /// The answer to a chunk.
    SnapshotReply {
        /// The follower's term.
        term: u64,
        /// The snapshot answered.
        last_index: u64,
        /// Bytes received so far (the next chunk should start here).
        received: u64,
        /// The snapshot is installed (or was not needed).
        done: bool,
        /// The round echoed.
        round: u64,
    },
}

/// A checkpoint: everything a node must remember, superseding every earlier record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SnapshotRecord<S: StateMachine> {
    /// The current term.
    pub term: u64,
    /// The vote in that term.
    pub voted_for: Option<NodeId>,
    /// The last index the state covers.
    pub last_index: u64,
    /// Its term.
    pub last_term: u64,
    /// The applied-prefix digest at `last_index`.
    pub digest: u64,
    /// The configuration in effect at `last_index` (later ones are in `entries`).
    pub membership: Membership,
    /// The state machine after applying every entry up to `last_index`, encoded.
    pub state: StateImage<S>,
    /// The retained log after `last_index`.
    pub entries: Vec<Entry<S>>,
}

/// A state machine encoded for a checkpoint: a head of postcard bytes and, for a state
/// machine that keeps its bulk in an append-only file, a tail of that file's first bytes
/// (see [`StateMachine::snapshot_parts`]). Taking one costs the head's encoding on the
/// node and no copy of the tail: the tail is read when the record is written (by the
/// runtime's storage thread, as the record is serialized), so the node's memory never
/// holds the whole image. Written, it is a sequence of byte strings whose concatenation is
/// the state's postcard encoding; reading it back decodes the state, so a data directory
/// from another version fails to load with a decode error instead of later.
pub struct StateImage<S> {
    head: Arc<[u8]>,
    tail: Option<Tail>,
    decoded: Option<Box<S>>,
    _state: PhantomData<fn() -> S>,
}

/// Bytes of the tail per byte string when an image is written.
const TAIL_CHUNK_BYTES: u64 = 1 << 20;

impl<S: StateMachine> StateImage<S> {
    /// The image of `state`, whole in memory.
    pub fn of(state: &S) -> Self {
        let bytes = postcard::to_allocvec(state)
            .expect("a state machine encodes with postcard (it derives Serialize)");
        Self::from_parts(bytes.into(), None)
    }

    fn from_parts(head: Arc<[u8]>, tail: Option<Tail>) -> Self {
        StateImage {
            head,
            tail,
            decoded: None,
            _state: PhantomData,
        }
    }

    /// The encoded head (everything, for a state machine without a tail).
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.head
    }

    /// The whole encoding in memory: the head, the tail's length and the tail.
    pub fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        let Some((tail, length)) = &self.tail else {
            return Ok(self.head.to_vec());
        };
        let prefix = postcard::to_allocvec(length).map_err(std::io::Error::other)?;
        let length_bytes = usize::try_from(*length).map_err(std::io::Error::other)?;
        let mut bytes = Vec::with_capacity(self.head.len() + prefix.len() + length_bytes);
        bytes.extend_from_slice(&self.head);
        bytes.extend_from_slice(&prefix);
        let start = bytes.len();
        bytes.resize(start + length_bytes, 0);
        tail.read_at(0, &mut bytes[start..])?;
        Ok(bytes)
    }

    /// The state, decoded again unless this image was itself decoded (then the state found
    /// then); `None` if the bytes are not a valid state or the tail cannot be read.
    pub fn decode(&self) -> Option<S> {
        match &self.decoded {
            Some(state) => Some((**state).clone()),
            None => postcard::from_bytes(&self.to_bytes().ok()?).ok(),
        }
    }

    /// Like [`StateImage::decode`], without cloning a state decoded already.
    fn into_state(self) -> Option<S> {
        match self.decoded {
            Some(state) => Some(*state),
            None => postcard::from_bytes(&self.to_bytes().ok()?).ok(),
        }
    }
}

impl<S> Clone for StateImage<S> {
    fn clone(&self) -> Self {
        // The decoded copy exists only between reading a record and recovering from it.
        StateImage {
            head: self.head.clone(),
            tail: self.tail.clone(),
            decoded: None,
            _state: PhantomData,
        }
    }
}

impl<S> std::fmt::Debug for StateImage<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = self.tail.as_ref().map_or(0, |(_, length)| *length);
        write!(
            formatter,
            "StateImage({} bytes + {tail} tail bytes)",
            self.head.len()
        )
    }
}

/// Two snapshot tails are the same when they are the same file, read to the same length.
fn same_tail(left: &Option<Tail>, right: &Option<Tail>) -> bool {
    match (left, right) {
        (None, None) => true,
        (Some((left, left_length)), Some((right, right_length))) => {
            Arc::ptr_eq(left, right) && left_length == right_length
        }
        _ => false,
    }
}

impl<S> PartialEq for StateImage<S> {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && same_tail(&self.tail, &other.tail)
    }
}

impl<S> Eq for StateImage<S> {}

impl<S> Hash for StateImage<S> {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        self.head.hash(hasher);
        self.tail.as_ref().map(|(_, length)| *length).hash(hasher);
    }
}

impl<S> Serialize for StateImage<S> {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::{Error, SerializeSeq};
        let Some((tail, length)) = &self.tail else {
            let mut seq = serializer.serialize_seq(Some(1))?;
            seq.serialize_element(&ByteStr(&self.head))?;
            return seq.end();
        };
        let chunks = length.div_ceil(TAIL_CHUNK_BYTES) as usize;
        let mut seq = serializer.serialize_seq(Some(2 + chunks))?;
        seq.serialize_element(&ByteStr(&self.head))?;
        let prefix = postcard::to_allocvec(length).map_err(Z::Error::custom)?;
        seq.serialize_element(&ByteStr(&prefix))?;
        let mut buffer = Vec::new();
        let mut offset = 0;
        while offset < *length {
            let size = (length - offset).min(TAIL_CHUNK_BYTES) as usize;
            buffer.resize(size, 0);
            tail.read_at(offset, &mut buffer).map_err(|error| {
                Z::Error::custom(format!("cannot read the snapshot's tail: {error}"))
            })?;
            seq.serialize_element(&ByteStr(&buffer))?;
            offset += size as u64;
        }
        seq.end()
    }
}

struct ByteStr<'a>(&'a [u8]);

impl Serialize for ByteStr<'_> {
    fn serialize<Z: serde::Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        serializer.serialize_bytes(self.0)
    }
}

impl<'de, S: StateMachine> Deserialize<'de> for StateImage<S> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Chunks;
        impl<'de> serde::de::Visitor<'de> for Chunks {
            type Value = Vec<u8>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a sequence of byte strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut bytes = Vec::new();
                while let Some(chunk) = seq.next_element::<crate::bytes::ByteBuf>()? {
                    if bytes.is_empty() {
                        bytes = chunk.0;
                    } else {
                        bytes.extend_from_slice(&chunk.0);
                    }
                }
                Ok(bytes)
            }
        }
        let bytes = deserializer.deserialize_seq(Chunks)?;
        let state: S = postcard::from_bytes(&bytes).map_err(|error| {
            serde::de::Error::custom(format!("the snapshot's state does not decode: {error}"))
        })?;
        // The state is what recovery needs; the bytes are not kept.
        Ok(StateImage {
            head: Arc::from(&[][..]),
            tail: None,
            decoded: Some(Box::new(state)),
            _state: PhantomData,
        })
    }
}

/// Durable records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum RaftRecord<S: StateMachine> {
    /// The current term and the vote cast in it.
    HardState {
        /// The term.
        term: u64,
        /// The vote.
        voted_for: Option<NodeId>,
    },
    /// The log from `first_index` on was replaced by `entries`.
    Entries {
        /// The index of the first entry.
        first_index: u64,
        /// The entries.
        entries: Vec<Entry<S>>,
    },
    /// A checkpoint.
    Snapshot(Box<SnapshotRecord<S>>),
}

/// Timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RaftTimer {
    /// A follower or candidate heard from no leader: campaign.
    Election,
    /// A leader sends heartbeats and retries.
    Heartbeat,
    /// A leader checks that a majority answered since the last check.
    CheckQuorum,
    /// A follower's promise not to vote (it heard from a leader recently) ends.
    PromiseExpired,
    /// A leader tells the followers the commit index no append has carried yet.
    Announce,
}

/// The leader's view of one follower's replication.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Mode {
    /// Position unknown: one append at a time, retried on heartbeats.
    Probe { sent: bool },
    /// Pipelined: the last index and byte size of every unacknowledged message.
    Replicate { inflight: VecDeque<(u64, usize)> },
    /// A snapshot transfer; `offset` bytes were acknowledged, `sent` says a chunk is
    /// unanswered.
    Snapshot {
        last_index: u64,
        offset: u64,
        sent: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Progress {
    match_index: u64,
    next_index: u64,
    mode: Mode,
    /// Answered since the last check-quorum.
    active: bool,
    /// The highest heartbeat round acknowledged in this term.
    acked_round: u64,
    /// The highest commit index an append to this follower carried.
    commit_sent: u64,
    /// The follower waits for a commit up to here (a read index it was given, a write it
    /// passed on): while it was told less, a new commit is announced to it at once.
    commit_wanted: u64,
}

impl Progress {
    /// A follower the leader knows nothing about yet: it probes from `next_index`.
    fn probing_from(next_index: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            mode: Mode::Probe { sent: false },
            active: true,
            acked_round: 0,
            commit_sent: 0,
            commit_wanted: 0,
        }
    }
}

/// Who waits for a linearizable read the leader confirms.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Reader<S: StateMachine> {
    /// A client of the leader's, answered from the leader's state.
    Client(ClientId, S::Request),
    /// A follower's batch of reads: the follower gets the read index and answers them.
    Follower(NodeId, u64),
}

/// A linearizable read waiting for its heartbeat round and for the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PendingRead<S: StateMachine> {
    reader: Reader<S>,
    read_index: u64,
    round: u64,
}

/// A read index request a follower sent and has not had answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Ask {
    id: u64,
    sent_at: Time,
}

/// The linearizable reads a follower serves with the leader's read index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FollowerReads<S: StateMachine> {
    /// The request in flight, covering `asked`.
    ask: Option<Ask>,
    /// Reads the request in flight covers.
    asked: Vec<(ClientId, S::Request)>,
    /// Reads that arrived after it was sent: they wait for the next request.
    waiting: Vec<(ClientId, S::Request)>,
    /// Reads with a read index, answered once this node has applied that far.
    ready: Vec<(ClientId, S::Request, u64)>,
}

impl<S: StateMachine> Default for FollowerReads<S> {
    fn default() -> Self {
        FollowerReads {
            ask: None,
            asked: Vec::new(),
            waiting: Vec::new(),
            ready: Vec::new(),
        }
    }
}

impl<S: StateMachine> FollowerReads<S> {
    fn len(&self) -> usize {
        self.asked.len() + self.waiting.len() + self.ready.len()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Leader<S: StateMachine> {
    progress: BTreeMap<NodeId, Progress>,
    /// The leader's own log is durable up to here (its acknowledgement to itself).
    self_match: u64,
    /// The first index of this term (the no-op): reads wait until it is applied.
    term_start_index: u64,
    leading_since: Time,
    round: u64,
    round_sent_at: BTreeMap<u64, Time>,
    lease_until: Option<Time>,
    reads: Vec<PendingRead<S>>,
    /// Leader-proposed commands are not proposed again until this index is applied.
    due_fence: u64,
    /// A leadership transfer under way.
    transfer: Option<Transfer>,
    /// Set once this leader asked another node to campaign: voters may then ignore their
    /// promise to it, so it serves no lease read for the rest of its term.
    lease_void: bool,
    /// Per follower, the last index proposed for a write it passed on: it learns with
    /// [`RaftMessage::Durable`] once the leader's own copy is durable.
    forwarded_up_to: BTreeMap<NodeId, u64>,
    /// The highest index named in a [`RaftMessage::Durable`] this term. A follower may
    /// commit up to it (and answer a client) before this leader counts a majority, so a
    /// linearizable read here must see at least that far.
    hinted: u64,
    /// [`RaftTimer::Announce`] is set.
    announce_armed: bool,
}

impl<S: StateMachine> Leader<S> {
    /// The least index a linearizable read must see: everything committed, or
    /// acknowledged to a client by a follower, before the read arrived (and at least the
    /// term's first entry).
    fn read_floor(&self, commit: u64, variant: RaftVariant) -> u64 {
        let floor = commit.max(self.term_start_index);
        if variant == RaftVariant::HintBlindReads {
            return floor; // Broken on purpose.
        }
        floor.max(self.hinted)
    }
}

/// How far a follower's own log and the leader's are durable in `term` (each an index up to
/// which the log matches the leader's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct DurableHints {
    term: u64,
    own: u64,
    leader: u64,
}

impl DurableHints {
    /// What is known in `term`: nothing if the record is of another term.
    fn in_term(self, term: u64) -> DurableHints {
        if self.term == term {
            self
        } else {
            DurableHints {
                term,
                ..DurableHints::default()
            }
        }
    }
}

/// A leadership transfer: the leader takes no proposals, brings the target up to date and
/// sends it `TimeoutNow`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Transfer {
    target: NodeId,
    started: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Role<S: StateMachine> {
    Follower,
    PreCandidate { granted: BTreeSet<NodeId> },
    Candidate { granted: BTreeSet<NodeId> },
    Leader(Box<Leader<S>>),
}

/// A snapshot encoded for sending, built by a leader when a follower needs one and dropped
/// once no transfer needs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SnapshotImage {
    last_index: u64,
    last_term: u64,
    digest: u64,
    membership: Membership,
    bytes: ImageBytes,
    checksum: u32,
}

/// An image's bytes: the head in memory, then the tail read from its file as each chunk
/// is sent (so a leader never holds a copy of a state's bulk).
#[derive(Clone, Debug)]
struct ImageBytes {
    /// The state's head and, with a tail, the tail's length as a varint.
    head: Arc<[u8]>,
    tail: Option<Tail>,
}

impl ImageBytes {
    fn of(image: StateImage<impl StateMachine>) -> std::io::Result<Self> {
        let StateImage { head, tail, .. } = image;
        let Some((_, length)) = &tail else {
            return Ok(ImageBytes { head, tail });
        };
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&postcard::to_allocvec(length).map_err(std::io::Error::other)?);
        Ok(ImageBytes {
            head: bytes.into(),
            tail,
        })
    }

    fn len(&self) -> u64 {
        self.head.len() as u64 + self.tail.as_ref().map_or(0, |(_, length)| *length)
    }

    /// Bytes `start..end` (within the image).
    fn read(&self, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let head = self.head.len() as u64;
        let mut out = Vec::with_capacity((end - start) as usize);
        if start < head {
            out.extend_from_slice(&self.head[start as usize..end.min(head) as usize]);
        }
        if end > head
            && let Some((tail, _)) = &self.tail
        {
            let from = start.max(head);
            let at = out.len();
            out.resize(at + (end - from) as usize, 0);
            tail.read_at(from - head, &mut out[at..])?;
        }
        Ok(out)
    }

    /// The CRC32C of the whole image, reading the tail a megabyte at a time.
    fn checksum(&self) -> std::io::Result<u32> {
        let mut checksum = crc32c::crc32c(&self.head);
        let head = self.head.len() as u64;
        let mut offset = head;
        while offset < self.len() {
            let end = (offset + TAIL_CHUNK_BYTES).min(self.len());
            checksum = crc32c::crc32c_append(checksum, &self.read(offset, end)?);
            offset = end;
        }
        Ok(checksum)
    }
}

impl PartialEq for ImageBytes {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head && same_tail(&self.tail, &other.tail)
    }
}

impl Eq for ImageBytes {}

impl Hash for ImageBytes {
    fn hash<H: Hasher>(&self, hasher: &mut H) {
        self.head.hash(hasher);
        self.len().hash(hasher);
    }
}

/// A snapshot a follower is receiving.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Incoming {
    last_index: u64,
    checksum: u32,
    bytes: Vec<u8>,
}

/// A Raft replica running state machine `S`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RaftNode<S: StateMachine> {
    variant: RaftVariant,
    change_variant: ChangeVariant,
    config: RaftConfig,
    /// The configuration before any configuration entry (the driver's members if not set).
    bootstrap: Option<Membership>,
    // Durable.
    term: u64,
    voted_for: Option<NodeId>,
    log: RaftLog<S>,
    /// The configuration at the log's snapshot point.
    snapshot_membership: Membership,
    /// The configuration entries of the retained log, by index.
    log_configs: BTreeMap<u64, Membership>,
    // Volatile.
    role: Role<S>,
    leader: Option<NodeId>,
    promised: bool,
    commit_index: u64,
    applied_index: u64,
    state: S,
    digest: u64,
    digests: BTreeMap<u64, u64>,
    snapshot: Option<SnapshotImage>,
    incoming: Option<Incoming>,
    /// The index of the latest checkpoint (the log may keep entries before it).
    checkpoint_index: u64,
    /// Requests this follower passed to the leader, by client: answered here once applied.
    forwarded: BTreeMap<ClientId, S::Request>,
    /// What this follower knows durable on itself and on the leader in the current term.
    durable: DurableHints,
    /// Linearizable reads this follower serves with the leader's read index.
    follower_reads: FollowerReads<S>,
    /// The first safety violation this node noticed itself (e.g. asked to overwrite a
    /// committed entry).
    violation: Option<String>,
}

impl<S: StateMachine> RaftNode<S> {
    /// A node that has not started yet. Its cluster starts as every member the driver
    /// names (see [`RaftNode::with_voters`]) and changes through configuration entries.
    pub fn new(variant: RaftVariant, config: RaftConfig) -> Self {
        RaftNode {
            variant,
            change_variant: ChangeVariant::Joint,
            config,
            bootstrap: None,
            term: 0,
            voted_for: None,
            log: RaftLog::default(),
            snapshot_membership: Membership::default(),
            log_configs: BTreeMap::new(),
            role: Role::Follower,
            leader: None,
            promised: false,
            commit_index: 0,
            applied_index: 0,
            state: S::default(),
            digest: 0,
            digests: BTreeMap::new(),
            snapshot: None,
            incoming: None,
            checkpoint_index: 0,
            forwarded: BTreeMap::new(),
            durable: DurableHints::default(),
            follower_reads: FollowerReads::default(),
            violation: None,
        }
    }

    /// The same node whose cluster starts as `voters` (instead of every member the driver
    /// names): nodes outside it wait, without campaigning, until a configuration entry
    /// names them. Every node of one cluster must be given the same set.
    pub fn with_voters(mut self, voters: impl IntoIterator<Item = NodeId>) -> Self {
        let bootstrap = Membership::of_voters(voters);
        self.snapshot_membership = bootstrap.clone();
        self.bootstrap = Some(bootstrap);
        self
    }

    /// The same node starting from `state` instead of `S::default()` (before it starts or
    /// recovers): how a driver hands in a state machine set up with resources of its own,
    /// such as a file for its values. Snapshots replace the state through
    /// [`StateMachine::adopt`], which keeps such resources.
    pub fn with_state(mut self, state: S) -> Self {
        self.state = state;
        self
    }

    /// The same node changing its configuration the way `variant` says (joint consensus
    /// unless a broken variant is asked for).
    pub fn with_change_variant(mut self, variant: ChangeVariant) -> Self {
        self.change_variant = variant;
        self
    }

    /// The configuration in effect: the latest one in the log, committed or not.
    pub fn membership(&self) -> &Membership {
        self.log_configs
            .last_key_value()
            .map_or(&self.snapshot_membership, |(_, membership)| membership)
    }

    /// The index of the entry that carries the configuration in effect (the snapshot point
    /// if the retained log carries none).
    pub fn membership_index(&self) -> u64 {
        self.log_configs
            .last_key_value()
            .map_or(self.log.snapshot_index(), |(&index, _)| index)
    }

    /// The configuration entries of the retained log, by index.
    pub fn log_memberships(&self) -> &BTreeMap<u64, Membership> {
        &self.log_configs
    }

    /// The node a leadership transfer is handing over to, if one is under way.
    pub fn transfer_target(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(leader) => leader.transfer.as_ref().map(|transfer| transfer.target),
            _ => None,
        }
    }

    /// For a leader that committed an entry of its own term: the highest index a quorum of
    /// its configuration (both voter sets while joint) holds by its own bookkeeping.
    pub fn quorum_match_index(&self) -> Option<u64> {
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        (self.commit_index >= leader.term_start_index)
            .then(|| self.quorum_of(leader, |p| p.match_index, leader.self_match))
    }

    /// The first index of this leader's term (its no-op).
    pub fn term_start_index(&self) -> Option<u64> {
        match &self.role {
            Role::Leader(leader) => Some(leader.term_start_index),
            _ => None,
        }
    }

    /// Proposes `changes` as one configuration change (leader only) and returns the index
    /// of its first entry. With more than one voter changing, the change passes through a
    /// joint configuration that the leader leaves by itself once it commits. Refused while
    /// another change or a leadership transfer is under way, before the leader committed
    /// an entry of its term, and for a learner promotion while the learner lags behind.
    pub fn propose_membership_change(
        &mut self,
        changes: &[MembershipChange],
        ctx: &mut Context<Self>,
    ) -> Result<u64, MembershipError> {
        self.propose_membership_change_with(changes, &BTreeMap::new(), ctx)
    }

    /// [`RaftNode::propose_membership_change`], also recording where members are reached
    /// (`addresses`, e.g. a newcomer's peer URL) in the configuration. Addresses of nodes
    /// the new configuration no longer names are dropped.
    pub fn propose_membership_change_with(
        &mut self,
        changes: &[MembershipChange],
        addresses: &BTreeMap<NodeId, String>,
        ctx: &mut Context<Self>,
    ) -> Result<u64, MembershipError> {
        let Role::Leader(leader) = &self.role else {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        };
        if let Some(transfer) = &leader.transfer {
            return Err(MembershipError::TransferInProgress(transfer.target));
        }
        if self.commit_index < leader.term_start_index {
            return Err(MembershipError::LeaderNotReady);
        }
        let pending = self.membership_index();
        if pending > self.commit_index || self.membership().is_joint() {
            return Err(MembershipError::ChangeInProgress { index: pending });
        }
        let joint = self.change_variant == ChangeVariant::Joint;
        let mut next = self.membership().changed(changes, joint)?;
        for (&id, address) in addresses {
            if next.voters.contains(&id) || next.learners.contains(&id) {
                next.addresses.insert(id, address.clone());
            }
        }
        let last_index = self.log.last_index();
        // In sync: within a tenth of the log, and never more than one append batch, of
        // the leader's last index.
        let lag_allowed = (self.config.append_entries_max as u64).min(last_index / 10);
        for change in changes {
            if let MembershipChange::Promote(learner) = *change {
                let progress = leader.progress.get(&learner);
                let match_index = progress.map_or(0, |progress| progress.match_index);
                let snapshotting =
                    progress.is_some_and(|progress| matches!(progress.mode, Mode::Snapshot { .. }));
                if snapshotting || match_index + lag_allowed < last_index {
                    return Err(MembershipError::LearnerBehind {
                        learner,
                        match_index,
                        last_index,
                    });
                }
            }
        }
        let index = self.append_local(Payload::Config(next), ctx);
        self.broadcast_appends(false, ctx);
        Ok(index)
    }

    /// Hands leadership to voter `target` (leader only): the leader stops taking
    /// proposals, brings `target` up to date and tells it to campaign at once. The transfer
    /// is abandoned if `target` has not taken over within the longest election timeout.
    pub fn transfer_leadership(
        &mut self,
        target: NodeId,
        ctx: &mut Context<Self>,
    ) -> Result<(), MembershipError> {
        let is_voter = self.membership().is_voter(target);
        let Role::Leader(leader) = &mut self.role else {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        };
        if target == ctx.id() {
            return Ok(());
        }
        if let Some(transfer) = &leader.transfer {
            return Err(MembershipError::TransferInProgress(transfer.target));
        }
        if !is_voter {
            return Err(MembershipError::TargetNotVoter(target));
        }
        leader.transfer = Some(Transfer {
            target,
            started: ctx.now(),
        });
        leader.lease_void = true;
        leader.lease_until = None;
        self.send_appends(target, false, ctx);
        self.maybe_send_timeout_now(ctx);
        Ok(())
    }

    /// Tells the transfer target to campaign once its log matches the leader's.
    fn maybe_send_timeout_now(&mut self, ctx: &mut Context<Self>) {
        let last_index = self.log.last_index();
        let term = self.term;
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let Some(transfer) = &leader.transfer else {
            return;
        };
        let caught_up = leader
            .progress
            .get(&transfer.target)
            .is_some_and(|progress| progress.match_index >= last_index);
        if caught_up {
            ctx.send(transfer.target, RaftMessage::TimeoutNow { term });
        }
    }

    /// The value a quorum of the configuration reached, given each follower's value
    /// (`value`) and the leader's own (`own`).
    fn quorum_of(&self, leader: &Leader<S>, value: impl Fn(&Progress) -> u64, own: u64) -> u64 {
        let id = self.leader;
        self.membership().quorum_value(|node| {
            if Some(node) == id {
                own
            } else {
                leader.progress.get(&node).map_or(0, &value)
            }
        })
    }

    /// Makes the leader's progress map cover exactly the nodes of the configuration.
    fn reconcile_progress(&mut self, id: NodeId) {
        let nodes = self.membership().nodes();
        // A newcomer's first probe carries the newest entry (the configuration naming it).
        let next_index = self.log.last_index().max(1);
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader
            .progress
            .retain(|node, _| nodes.contains(node) && *node != id);
        for node in nodes {
            if node != id {
                leader
                    .progress
                    .entry(node)
                    .or_insert_with(|| Progress::probing_from(next_index));
            }
        }
    }

    /// Notes the configuration entries among the log's entries from `first_index` on, after
    /// the log was replaced from there.
    fn note_configs_from(&mut self, first_index: u64) {
        self.log_configs.split_off(&first_index);
        let last = self.log.last_index();
        for (offset, entry) in self.log.slice(first_index, last).iter().enumerate() {
            if let Payload::Config(membership) = &entry.payload {
                let index = first_index.max(self.log.snapshot_index() + 1) + offset as u64;
                self.log_configs.insert(index, membership.clone());
            }
        }
    }

    /// Folds the configuration entries the snapshot point now covers into the snapshot's
    /// configuration.
    fn fold_configs(&mut self) {
        let retained = self.log_configs.split_off(&(self.log.snapshot_index() + 1));
        if let Some((_, membership)) = self.log_configs.pop_last() {
            self.snapshot_membership = membership;
        }
        self.log_configs = retained;
    }

    /// The configuration before any configuration entry, fixed on first use from the
    /// driver's members unless [`RaftNode::with_voters`] gave one.
    fn bootstrap(&mut self, ctx: &Context<Self>) {
        if self.bootstrap.is_none() {
            let bootstrap = Membership::of_voters(ctx.members().iter().copied());
            self.snapshot_membership = bootstrap.clone();
            self.bootstrap = Some(bootstrap);
        }
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The vote cast in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    /// True if this node leads its term.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The node this one believes leads.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The log.
    pub fn log(&self) -> &RaftLog<S> {
        &self.log
    }

    /// Every entry up to here is committed.
    pub fn commit_index(&self) -> u64 {
        self.commit_index
    }

    /// Every entry up to here is applied to the state machine.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The digest of the applied prefix at each recent applied index.
    pub fn applied_digests(&self) -> &BTreeMap<u64, u64> {
        &self.digests
    }

    /// The digest of the whole applied prefix.
    pub fn applied_digest(&self) -> u64 {
        self.digest
    }

    /// The replicated state machine.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The first safety violation this node noticed about itself.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    /// A leader's current heartbeat round (rounds confirm leadership for reads).
    pub fn heartbeat_round(&self) -> Option<u64> {
        match &self.role {
            Role::Leader(leader) => Some(leader.round),
            _ => None,
        }
    }

    /// When the lease lets this leader answer reads locally (by its own clock).
    pub fn lease_until(&self) -> Option<Time> {
        match &self.role {
            Role::Leader(leader) => leader.lease_until,
            _ => None,
        }
    }

    /// Every node of the configuration but this one: the nodes a leader replicates to.
    fn peers(&self, ctx: &Context<Self>) -> Vec<NodeId> {
        let id = ctx.id();
        self.membership()
            .nodes()
            .into_iter()
            .filter(|&member| member != id)
            .collect()
    }

    fn arm_election(&self, ctx: &mut Context<Self>) {
        ctx.set_timer(
            RaftTimer::Election,
            self.config.election_timeout_min,
            self.config.election_timeout_max,
        );
    }

    fn arm_heartbeat(&self, ctx: &mut Context<Self>) {
        let interval = self.config.heartbeat_interval;
        ctx.set_timer(RaftTimer::Heartbeat, interval, interval);
    }

    /// Heard from the leader (or just restarted, and so maybe heard from one before the
    /// crash): refuse votes for one minimum election timeout and restart the election timer.
    fn promise(&mut self, ctx: &mut Context<Self>) {
        self.promised = true;
        let promise = self.config.election_timeout_min;
        ctx.set_timer(RaftTimer::PromiseExpired, promise, promise);
        self.arm_election(ctx);
    }

    fn persist_hard_state(&self, ctx: &mut Context<Self>) {
        ctx.persist(RaftRecord::HardState {
            term: self.term,
            voted_for: self.voted_for,
        });
        ctx.sync();
    }

    /// Adopts a higher term as a follower (of `leader`, if known).
    fn become_follower(&mut self, term: u64, leader: Option<NodeId>, ctx: &mut Context<Self>) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.persist_hard_state(ctx);
        }
        let old = std::mem::replace(&mut self.role, Role::Follower);
        self.snapshot = None;
        if let Role::Leader(old) = old {
            ctx.cancel_timer(RaftTimer::Heartbeat);
            ctx.cancel_timer(RaftTimer::CheckQuorum);
            for read in old.reads {
                // A follower's batch is asked again of the next leader.
                if let Reader::Client(client, request) = read.reader {
                    ctx.reply(client, S::redirect(&request, leader));
                }
            }
            self.arm_election(ctx);
        }
        self.leader = leader;
    }

    /// Asks the voters of the configuration for (pre-)votes; `transfer` marks an election
    /// the leader asked for.
    fn campaign(&mut self, pre_vote: bool, transfer: bool, ctx: &mut Context<Self>) {
        let term = if pre_vote {
            self.role = Role::PreCandidate {
                granted: BTreeSet::new(),
            };
            self.term + 1
        } else {
            self.term += 1;
            self.voted_for = Some(ctx.id());
            self.persist_hard_state(ctx);
            self.role = Role::Candidate {
                granted: BTreeSet::new(),
            };
            self.term
        };
        self.leader = None;
        let request = RaftMessage::RequestVote {
            term,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            pre_vote,
            transfer,
        };
        // Itself included: its own vote counts once the vote's record is durable.
        for to in self.membership().all_voters() {
            ctx.send(to, request.clone());
        }
        self.arm_election(ctx);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_request_vote(
        &mut self,
        from: NodeId,
        term: u64,
        last_index: u64,
        last_term: u64,
        pre_vote: bool,
        transfer: bool,
        ctx: &mut Context<Self>,
    ) {
        let own = from == ctx.id();
        // The follower promise: a node that heard from a leader lately (or leads) ignores
        // candidates, so a leader's lease holds and a returning partitioned node cannot
        // disrupt a working leader. An election the leader asked for (a transfer; that
        // leader gave up its lease) is answered regardless.
        if !own && !transfer && (self.promised || self.is_leader()) && term >= self.term {
            return;
        }
        let up_to_date = self.log.candidate_up_to_date(last_index, last_term);
        if pre_vote {
            let granted = term > self.term && up_to_date;
            let answer = if granted { term } else { self.term };
            ctx.send(
                from,
                RaftMessage::VoteReply {
                    term: answer,
                    granted,
                    pre_vote: true,
                },
            );
            return;
        }
        if term > self.term {
            self.become_follower(term, None, ctx);
        }
        let granted = term == self.term
            && self.voted_for.is_none_or(|vote| vote == from)
            && up_to_date
            && (own || transfer || !self.is_leader());
        if granted && self.voted_for.is_none() {
            self.voted_for = Some(from);
            self.persist_hard_state(ctx);
            self.arm_election(ctx);
        }
        ctx.send(
            from,
            RaftMessage::VoteReply {
                term: self.term,
                granted,
                pre_vote: false,
            },
        );
    }

    /// The leader asks this node to take over: campaign now, without a pre-vote.
    fn on_timeout_now(&mut self, from: NodeId, term: u64, ctx: &mut Context<Self>) {
        if term < self.term || self.is_leader() || !self.membership().is_voter(ctx.id()) {
            return;
        }
        if term > self.term {
            self.become_follower(term, Some(from), ctx);
        }
        if self.leader != Some(from) {
            return;
        }
        self.campaign(false, true, ctx);
    }

    fn on_vote_reply(
        &mut self,
        from: NodeId,
        term: u64,
        granted: bool,
        pre_vote: bool,
        ctx: &mut Context<Self>,
    ) {
        if !granted {
            if term > self.term {
                self.become_follower(term, None, ctx);
            }
            return;
        }
        let membership = self.membership().clone();
        let won = match &mut self.role {
            Role::PreCandidate { granted } if pre_vote && term == self.term + 1 => {
                granted.insert(from);
                membership.has_quorum(granted)
            }
            Role::Candidate { granted } if !pre_vote && term == self.term => {
                granted.insert(from);
                membership.has_quorum(granted)
            }
            _ => false,
        };
        if !won {
            return;
        }
        if pre_vote {
            self.campaign(false, false, ctx);
        } else {
            self.become_leader(ctx);
        }
    }

    fn become_leader(&mut self, ctx: &mut Context<Self>) {
        let next_index = self.log.last_index() + 1;
        let progress = self
            .peers(ctx)
            .into_iter()
            .map(|peer| (peer, Progress::probing_from(next_index)))
            .collect();
        self.leader = Some(ctx.id());
        self.role = Role::Leader(Box::new(Leader {
            progress,
            self_match: 0,
            term_start_index: next_index,
            leading_since: ctx.now(),
            round: 0,
            round_sent_at: BTreeMap::new(),
            lease_until: None,
            reads: Vec::new(),
            due_fence: 0,
            transfer: None,
            lease_void: false,
            forwarded_up_to: BTreeMap::new(),
            hinted: 0,
            announce_armed: false,
        }));
        ctx.cancel_timer(RaftTimer::Election);
        match self.variant {
            RaftVariant::Correct | RaftVariant::EarlyFollowerRead | RaftVariant::HintBlindReads => {
                self.append_local(Payload::Noop, ctx);
            }
            RaftVariant::Figure8 => {
                // The broken leader commits what it inherited by counting replicas, so it
                // has nothing of its own to wait for.
                if let Role::Leader(leader) = &mut self.role {
                    leader.term_start_index = next_index - 1;
                }
                self.acknowledge_self(ctx);
            }
        }
        self.adopt_follower_requests(ctx);
        self.broadcast_appends(true, ctx);
        self.arm_heartbeat(ctx);
        let check = self.config.election_timeout_min;
        ctx.set_timer(RaftTimer::CheckQuorum, check, check);
    }

    /// A new leader takes over what it held as a follower: it proposes the requests it had
    /// passed on (a copy already in the log executes once, by the client's session) and
    /// confirms the reads still without a read index itself.
    fn adopt_follower_requests(&mut self, ctx: &mut Context<Self>) {
        let forwarded = std::mem::take(&mut self.forwarded);
        for (client, request) in forwarded {
            let command = S::command(client, request, ctx.now());
            self.append_local(Payload::Command(command), ctx);
        }
        let reads = &mut self.follower_reads;
        reads.ask = None;
        let mut unasked = std::mem::take(&mut reads.asked);
        unasked.append(&mut reads.waiting);
        let read_index = self.commit_index;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let read_index = leader.read_floor(read_index, self.variant);
        for (client, request) in unasked {
            leader.reads.push(PendingRead {
                reader: Reader::Client(client, request),
                read_index,
                round: leader.round + 1,
            });
        }
    }

    /// Sends this node an acknowledgement of its own log, released once durable.
    fn acknowledge_self(&self, ctx: &mut Context<Self>) {
        ctx.send(
            ctx.id(),
            RaftMessage::AppendReply {
                term: self.term,
                success: true,
                match_index: self.log.last_index(),
                rejected_prev: 0,
                hint_term: None,
                hint_index: 0,
                round: 0,
            },
        );
    }

    /// Appends an entry of the current term to the leader's log and persists it; returns
    /// its index. A configuration takes effect at once.
    fn append_local(&mut self, payload: Payload<S>, ctx: &mut Context<Self>) -> u64 {
        let index = self.push_local(payload, ctx);
        self.persist_local(index, ctx);
        index
    }

    /// Appends a command of the current term and replicates it at once: the appends to the
    /// followers are emitted before the entry's record, so the output gate does not hold
    /// them until that record is durable, and the leader's fsync and the followers' run in
    /// parallel (section 10.2.1 of Ongaro's thesis). Safe because the leader counts itself
    /// toward a commit only through its acknowledgement to itself, which the gate still
    /// holds until the record is durable; a crash before that loses an entry nobody was
    /// told is committed. Records appended earlier and not yet durable still hold the
    /// appends (under load, a batch's later commands go out after its sync).
    fn append_and_replicate(&mut self, command: S::Command, ctx: &mut Context<Self>) {
        let index = self.push_local(Payload::Command(command), ctx);
        self.broadcast_appends(false, ctx);
        self.persist_local(index, ctx);
    }

    /// Appends an entry of the current term to the leader's log in memory; returns its
    /// index. Its record must follow in the same handler ([`Self::persist_local`]).
    fn push_local(&mut self, payload: Payload<S>, ctx: &mut Context<Self>) -> u64 {
        let entry = Entry {
            term: self.term,
            payload,
        };
        let membership = match &entry.payload {
            Payload::Config(membership) => Some(membership.clone()),
            _ => None,
        };
        let index = self.log.push(entry);
        if let Some(membership) = membership {
            self.log_configs.insert(index, membership);
            self.reconcile_progress(ctx.id());
        }
        index
    }

    /// Persists the leader's entry at `index` (the last one) and acknowledges it to itself
    /// once durable.
    fn persist_local(&mut self, index: u64, ctx: &mut Context<Self>) {
        let entry = self
            .log
            .entry(index)
            .expect("the entry just appended is in the log")
            .clone();
        ctx.persist(RaftRecord::Entries {
            first_index: index,
            entries: vec![entry],
        });
        ctx.sync();
        self.acknowledge_self(ctx);
    }

    /// Sends every follower what it can take now; `heartbeat` also starts a new round
    /// and sends at least an empty append to each.
    fn broadcast_appends(&mut self, heartbeat: bool, ctx: &mut Context<Self>) {
        if heartbeat && let Role::Leader(leader) = &mut self.role {
            leader.round += 1;
            let round = leader.round;
            leader.round_sent_at.insert(round, ctx.now());
            while leader.round_sent_at.len() as u64 > ROUND_WINDOW {
                leader.round_sent_at.pop_first();
            }
        }
        for peer in self.peers(ctx) {
            self.send_appends(peer, heartbeat, ctx);
        }
    }

    /// Sends `peer` what its mode allows; with `heartbeat`, sends something even if there is
    /// nothing new (an empty append, a probe retry or the current snapshot chunk).
    fn send_appends(&mut self, peer: NodeId, heartbeat: bool, ctx: &mut Context<Self>) {
        let config = self.config;
        let term = self.term;
        let commit = self.commit_index;
        let last_index = self.log.last_index();
        let snapshot_index = self.log.snapshot_index();
        let needs_image = matches!(&self.role, Role::Leader(leader)
        if leader.progress.get(&peer).is_some_and(|progress| {
            progress.next_index <= snapshot_index
                || matches!(progress.mode, Mode::Snapshot { .. })
        }));
        if needs_image && self.snapshot.is_none() {
            self.build_outgoing_image();
        }
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let round = leader.round;
        let Some(progress) = leader.progress.get_mut(&peer) else {
            return;
        };
        let compacted = progress.next_index <= self.log.snapshot_index();
        if compacted && !matches!(progress.mode, Mode::Snapshot { .. }) {
            progress.mode = Mode::Snapshot {
                last_index: 0,
                offset: 0,
                sent: false,
            };
        }
        if let Mode::Snapshot {
            last_index,
            offset,
            sent,
        } = &mut progress.mode
        {
            // Built above; missing only if the state would not encode.
            let Some(image) = &self.snapshot else {
                return;
            };
            if *last_index != image.last_index {
                *last_index = image.last_index;
                *offset = 0;
                *sent = false;
            }
            if *sent && !heartbeat {
                return;
            }
            *sent = true;
            let total = image.bytes.len();
            let start = (*offset).min(total);
            let end = (start + config.snapshot_chunk_bytes.max(1) as u64).min(total);
            let Ok(data) = image.bytes.read(start, end) else {
                // The tail cannot be read: send nothing (the transfer waits), never a guess.
                return;
            };
            ctx.send(
                peer,
                RaftMessage::InstallSnapshot(Box::new(SnapshotChunk {
                    term,
                    last_index: image.last_index,
                    last_term: image.last_term,
                    digest: image.digest,
                    membership: image.membership.clone(),
                    total_bytes: total,
                    checksum: image.checksum,
                    offset: start,
                    data,
                    round,
                })),
            );
            return;
        }
        let mut sent_any = false;
        loop {
            let first = progress.next_index;
            let allowed = match &progress.mode {
                Mode::Probe { sent } => !*sent || heartbeat,
                Mode::Replicate { inflight } => {
                    let bytes: usize = inflight.iter().map(|(_, bytes)| bytes).sum();
                    inflight.len() < config.inflight_messages_max
                        && bytes < config.inflight_bytes_max
                }
                Mode::Snapshot { .. } => false,
            } && !(sent_any && matches!(progress.mode, Mode::Probe { .. }));
            let prev_index = first - 1;
            let prev_term = self.log.term(prev_index).unwrap_or(0);
            let mut entries = Vec::new();
            let mut bytes = 0;
            if allowed {
                for entry in self.log.slice(first, last_index) {
                    let size = postcard::serialize_with_flavor::<_, _, usize>(
                        entry,
                        postcard::ser_flavors::Size::default(),
                    )
                    .unwrap_or(0);
                    if !entries.is_empty()
                        && (entries.len() >= config.append_entries_max
                            || bytes + size > config.append_bytes_max)
                    {
                        break;
                    }
                    bytes += size;
                    entries.push(entry.clone());
                }
            }
            if entries.is_empty() && (sent_any || !heartbeat) {
                return;
            }
            // With nothing to send, an empty append at the follower's presumed position
            // confirms the round and, if refused, reveals lost messages.
            let last_sent = prev_index + entries.len() as u64;
            let carried = !entries.is_empty();
            progress.commit_sent = progress.commit_sent.max(commit);
            ctx.send(
                peer,
                RaftMessage::AppendEntries {
                    term,
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                    round,
                },
            );
            sent_any = true;
            match &mut progress.mode {
                Mode::Replicate { inflight } if carried => {
                    inflight.push_back((last_sent, bytes));
                    progress.next_index = last_sent + 1;
                }
                Mode::Probe { sent } => *sent = true,
                _ => return,
            }
        }
    }

    fn on_append_entries(
        &mut self,
        from: NodeId,
        message: AppendEntries<S>,
        ctx: &mut Context<Self>,
    ) {
        let AppendEntries {
            term,
            mut prev_index,
            mut prev_term,
            mut entries,
            commit,
            round,
        } = message;
        let rejected_prev = prev_index;
        let refuse = |node: &Self, ctx: &mut Context<Self>, hint_term, hint_index| {
            ctx.send(
                from,
                RaftMessage::AppendReply {
                    term: node.term,
                    success: false,
                    match_index: 0,
                    rejected_prev,
                    hint_term,
                    hint_index,
                    round,
                },
            );
        };
        if term < self.term {
            refuse(self, ctx, None, 0);
            return;
        }
        self.accept_leader(from, term, ctx);
        let match_index = prev_index + entries.len() as u64;
        let snapshot_index = self.log.snapshot_index();
        if prev_index < snapshot_index {
            // Entries up to the snapshot point are committed, so they equal the leader's.
            let covered = (snapshot_index - prev_index).min(entries.len() as u64);
            entries.drain(..covered as usize);
            prev_index = snapshot_index.min(match_index);
            prev_term = self.log.term(prev_index).unwrap_or(prev_term);
        }
        if prev_index >= snapshot_index {
            match self.log.term(prev_index) {
                None => {
                    refuse(self, ctx, None, self.log.last_index() + 1);
                    return;
                }
                Some(held) if held != prev_term => {
                    let first = self.log.first_index_of_term_at(prev_index);
                    refuse(self, ctx, Some(held), first);
                    return;
                }
                Some(_) => {}
            }
        }
        let first_new = entries
            .iter()
            .enumerate()
            .find(|(offset, entry)| {
                self.log.term(prev_index + 1 + *offset as u64) != Some(entry.term)
            })
            .map(|(offset, _)| offset);
        if let Some(offset) = first_new {
            let index = prev_index + 1 + offset as u64;
            if index <= self.commit_index && index <= self.log.last_index() {
                self.note_violation(format!(
                    "{} asked to overwrite committed entry {index} (commit {}) in term {}",
                    ctx.id(),
                    self.commit_index,
                    self.term
                ));
            }
            self.log.overwrite(index, &entries[offset..]);
            self.note_configs_from(index);
            ctx.persist(RaftRecord::Entries {
                first_index: index,
                entries: entries[offset..].to_vec(),
            });
            ctx.sync();
        }
        let new_commit = commit.min(match_index);
        if new_commit > self.commit_index {
            self.commit_index = new_commit;
            self.apply_committed(ctx);
        }
        let own = self.durable.in_term(self.term).own;
        if self.config.durable_hints
            && !self.forwarded.is_empty()
            && match_index > own.max(self.commit_index)
        {
            // Released once this node's copy is durable; see `on_durable`.
            ctx.send(
                ctx.id(),
                RaftMessage::Durable {
                    term: self.term,
                    index: match_index,
                },
            );
        }
        ctx.send(
            from,
            RaftMessage::AppendReply {
                term: self.term,
                success: true,
                match_index,
                rejected_prev: 0,
                hint_term: None,
                hint_index: 0,
                round,
            },
        );
    }

    /// A message from the leader of `term` (at least the current one).
    fn accept_leader(&mut self, from: NodeId, term: u64, ctx: &mut Context<Self>) {
        let changed = self.leader != Some(from);
        if term > self.term || !matches!(self.role, Role::Follower) {
            self.become_follower(term, Some(from), ctx);
        }
        self.leader = Some(from);
        self.promise(ctx);
        self.retry_follower_requests(from, changed, ctx);
    }

    fn note_violation(&mut self, violation: String) {
        if self.violation.is_none() {
            self.violation = Some(violation);
        }
    }

    fn on_append_reply(&mut self, from: NodeId, reply: AppendReply, ctx: &mut Context<Self>) {
        if reply.term > self.term {
            self.become_follower(reply.term, None, ctx);
            return;
        }
        if reply.term < self.term {
            return;
        }
        let id = ctx.id();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if from == id {
            if reply.success {
                leader.self_match = leader.self_match.max(reply.match_index);
                self.advance_commit(ctx);
                self.send_durable_hints(ctx);
            }
            return;
        }
        let last_index = self.log.last_index();
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        progress.active = true;
        progress.acked_round = progress.acked_round.max(reply.round);
        if reply.success {
            if reply.match_index > progress.match_index {
                progress.match_index = reply.match_index.min(last_index);
            }
            progress.next_index = progress.next_index.max(progress.match_index + 1);
            let matched = progress.match_index;
            match &mut progress.mode {
                Mode::Replicate { inflight } => {
                    while inflight.front().is_some_and(|(last, _)| *last <= matched) {
                        inflight.pop_front();
                    }
                }
                Mode::Probe { .. } => {
                    progress.mode = Mode::Replicate {
                        inflight: VecDeque::new(),
                    };
                }
                Mode::Snapshot { .. } => {}
            }
            self.advance_commit(ctx);
            self.maybe_send_timeout_now(ctx);
        } else if reply.rejected_prev >= progress.match_index
            && !matches!(progress.mode, Mode::Snapshot { .. })
        {
            let mut next = match reply.hint_term {
                Some(term) => self
                    .log
                    .last_index_of_term(term)
                    .map_or(reply.hint_index, |index| index + 1),
                None => reply.hint_index,
            };
            next = next.min(reply.rejected_prev).max(progress.match_index + 1);
            progress.next_index = next.min(last_index + 1);
            progress.mode = Mode::Probe { sent: false };
        }
        self.confirm_reads(ctx);
        self.send_appends(from, false, ctx);
    }

    fn on_install_snapshot(&mut self, from: NodeId, chunk: SnapshotChunk, ctx: &mut Context<Self>) {
        let reply = |node: &Self, ctx: &mut Context<Self>, received, done| {
            ctx.send(
                from,
                RaftMessage::SnapshotReply {
                    term: node.term,
                    last_index: chunk.last_index,
                    received,
                    done,
                    round: chunk.round,
                },
            );
        };
        if chunk.term < self.term {
            reply(self, ctx, 0, false);
            return;
        }
        self.accept_leader(from, chunk.term, ctx);
        if chunk.last_index <= self.commit_index {
            self.incoming = None;
            reply(self, ctx, chunk.total_bytes, true);
            return;
        }
        let fits = self.incoming.as_ref().is_some_and(|incoming| {
            incoming.last_index == chunk.last_index
                && incoming.checksum == chunk.checksum
                && incoming.bytes.len() as u64 == chunk.offset
        });
        if chunk.offset == 0 && !fits {
            // Room for the whole image at once (growing by doubling would need up to twice
            // its size); if that much cannot be had, the buffer grows as chunks come.
            let mut bytes = Vec::new();
            let _ = bytes.try_reserve_exact(usize::try_from(chunk.total_bytes).unwrap_or(0));
            self.incoming = Some(Incoming {
                last_index: chunk.last_index,
                checksum: chunk.checksum,
                bytes,
            });
        } else if !fits {
            let received = self
                .incoming
                .as_ref()
                .filter(|incoming| incoming.last_index == chunk.last_index)
                .map_or(0, |incoming| incoming.bytes.len() as u64);
            reply(self, ctx, received, false);
            return;
        }
        let Some(incoming) = &mut self.incoming else {
            return;
        };
        incoming.bytes.extend_from_slice(&chunk.data);
        let received = incoming.bytes.len() as u64;
        if received < chunk.total_bytes {
            reply(self, ctx, received, false);
            return;
        }
        let Some(incoming) = self.incoming.take() else {
            return;
        };
        let state = (crc32c::crc32c(&incoming.bytes) == chunk.checksum
            && received == chunk.total_bytes)
            .then(|| postcard::from_bytes::<S>(&incoming.bytes).ok())
            .flatten();
        drop(incoming);
        let Some(state) = state else {
            // Corrupt or mis-assembled: start the transfer over.
            reply(self, ctx, 0, false);
            return;
        };
        if self.log.term(chunk.last_index) == Some(chunk.last_term) {
            self.log.compact_to(chunk.last_index);
        } else {
            self.log
                .reset(chunk.last_index, chunk.last_term, Vec::new());
        }
        self.fold_configs();
        self.log_configs.split_off(&(self.log.last_index() + 1));
        self.snapshot_membership = chunk.membership.clone();
        self.state.adopt(state);
        self.commit_index = chunk.last_index;
        self.applied_index = chunk.last_index;
        self.digest = chunk.digest;
        self.digests.clear();
        self.digests.insert(chunk.last_index, chunk.digest);
        self.snapshot = None;
        let image = match self.state.snapshot_parts() {
            Ok((head, tail)) => StateImage::from_parts(head.into(), tail),
            Err(_) => StateImage::of(&self.state),
        };
        // State from the leader: no earlier record of ours determines it.
        self.checkpoint(image, false, ctx);
        self.answer_ready_reads(ctx);
        reply(self, ctx, chunk.total_bytes, true);
    }

    fn on_snapshot_reply(&mut self, from: NodeId, reply: SnapshotReply, ctx: &mut Context<Self>) {
        if reply.term > self.term {
            self.become_follower(reply.term, None, ctx);
            return;
        }
        if reply.term < self.term {
            return;
        }
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        progress.active = true;
        progress.acked_round = progress.acked_round.max(reply.round);
        let Mode::Snapshot {
            last_index,
            offset,
            sent,
        } = &mut progress.mode
        else {
            return;
        };
        *sent = false;
        if *last_index != reply.last_index {
            return;
        }
        if reply.done {
            progress.match_index = progress.match_index.max(reply.last_index);
            progress.next_index = progress.match_index + 1;
            progress.mode = Mode::Probe { sent: false };
            let transfers = leader
                .progress
                .values()
                .any(|progress| matches!(progress.mode, Mode::Snapshot { .. }));
            if !transfers {
                // The image can be hundreds of megabytes: keep it only while it is sent.
                self.snapshot = None;
            }
            self.advance_commit(ctx);
        } else {
            *offset = reply.received;
        }
        self.confirm_reads(ctx);
        self.send_appends(from, false, ctx);
    }

    /// Commits the highest index a majority holds, counting only entries of the current
    /// term (the figure-8 variant counts any).
    fn advance_commit(&mut self, ctx: &mut Context<Self>) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let majority = self.quorum_of(leader, |progress| progress.match_index, leader.self_match);
        if majority <= self.commit_index {
            return;
        }
        let counts = match self.variant {
            RaftVariant::Correct | RaftVariant::EarlyFollowerRead | RaftVariant::HintBlindReads => {
                self.log.term(majority) == Some(self.term)
            }
            RaftVariant::Figure8 => true,
        };
        if counts {
            self.commit_index = majority;
            self.apply_committed(ctx);
            self.after_config_commit(ctx);
            if self.config.follower_serve {
                self.announce_commit(ctx);
            }
        }
    }

    /// Tells the followers in step with the log the new commit index: at once those
    /// waiting for a commit (and all of them if [`RaftConfig::commit_announce_delay`] is
    /// zero), the others when the delay ends unless an append told them first. A
    /// follower answers the writes it passed on only once it applied them, and would
    /// otherwise learn of the commit with the next heartbeat.
    fn announce_commit(&mut self, ctx: &mut Context<Self>) {
        let delay = self.config.commit_announce_delay;
        let mut later = false;
        for peer in self.peers(ctx) {
            match self.announcement_due(peer) {
                Some(true) => self.send_appends(peer, true, ctx),
                Some(false) if delay.is_zero() => self.send_appends(peer, true, ctx),
                Some(false) => later = true,
                None => {}
            }
        }
        if let Role::Leader(leader) = &mut self.role
            && later
            && !leader.announce_armed
        {
            leader.announce_armed = true;
            ctx.set_timer(RaftTimer::Announce, delay, delay);
        }
    }

    /// Whether `peer`, a follower in step with the log, was told less than the commit
    /// index: `Some(true)` if it waits for a commit (tell it now), `Some(false)` if the
    /// announcement may wait, `None` if there is nothing to tell.
    fn announcement_due(&self, peer: NodeId) -> Option<bool> {
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        let progress = leader.progress.get(&peer)?;
        if !matches!(progress.mode, Mode::Replicate { .. })
            || progress.commit_sent >= self.commit_index
        {
            return None;
        }
        Some(progress.commit_wanted > progress.commit_sent)
    }

    /// The announcement delay ended: tells every follower in step with the log what no
    /// append told it since.
    fn on_announce(&mut self, ctx: &mut Context<Self>) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.announce_armed = false;
        for peer in self.peers(ctx) {
            if self.announcement_due(peer).is_some() {
                self.send_appends(peer, true, ctx);
            }
        }
    }

    /// `peer` waits for the commit to reach `index` (it was given that read index, or
    /// passed on the write there): tells it the commit at once if that helps.
    fn commit_wanted(&mut self, peer: NodeId, index: u64, ctx: &mut Context<Self>) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(progress) = leader.progress.get_mut(&peer) else {
            return;
        };
        progress.commit_wanted = progress.commit_wanted.max(index);
        if self.announcement_due(peer) == Some(true) {
            self.send_appends(peer, true, ctx);
        }
    }

    /// Once the configuration in effect is committed, a leader leaves a joint
    /// configuration by appending the final one, and a leader the configuration no longer
    /// names as a voter steps down.
    fn after_config_commit(&mut self, ctx: &mut Context<Self>) {
        if !self.is_leader() || self.membership_index() > self.commit_index {
            return;
        }
        let membership = self.membership().clone();
        if membership.is_joint() {
            self.append_local(Payload::Config(membership.leave_joint()), ctx);
            self.broadcast_appends(false, ctx);
        } else if !membership.is_voter(ctx.id()) {
            self.become_follower(self.term, None, ctx);
        }
    }

    /// Applies every committed entry not yet applied; the leader answers the clients.
    fn apply_committed(&mut self, ctx: &mut Context<Self>) {
        while self.applied_index < self.commit_index {
            let index = self.applied_index + 1;
            let Some(entry) = self.log.entry(index) else {
                break;
            };
            if let Payload::Command(command) = &entry.payload
                && let Some((client, response)) = self.state.apply(command)
                && (matches!(self.role, Role::Leader(_))
                    || self.forwarded.remove(&client).is_some())
            {
                // The leader answers its clients; a follower those whose requests it
                // passed on (every replica computes the same answer).
                ctx.reply(client, response);
            }
            if self.config.applied_digests {
                let mut hasher = StableHasher::new();
                self.digest.hash(&mut hasher);
                index.hash(&mut hasher);
                entry.hash(&mut hasher);
                self.digest = hasher.finish();
                self.digests.insert(index, self.digest);
                while self.digests.len() as u64 > DIGEST_WINDOW_ENTRIES {
                    self.digests.pop_first();
                }
            }
            self.applied_index = index;
        }
        self.maybe_snapshot(ctx);
        self.confirm_reads(ctx);
        self.answer_ready_reads(ctx);
    }

    /// Compacts the applied prefix into a checkpoint once it is long enough.
    fn maybe_snapshot(&mut self, ctx: &mut Context<Self>) {
        let threshold = self.config.snapshot_threshold_entries.max(1);
        if self.applied_index < self.checkpoint_index + threshold {
            return;
        }
        // A state that does not encode is not compacted (its log keeps growing).
        let Ok((head, tail)) = self.state.snapshot_parts() else {
            return;
        };
        let keep_from = self
            .applied_index
            .saturating_sub(self.config.snapshot_catch_up_entries)
            .max(self.log.snapshot_index());
        self.log.compact_to(keep_from);
        self.fold_configs();
        // An image being sent may now be older than the log's start: rebuilt when needed.
        self.snapshot = None;
        // The applied prefix of our own log: the records before it determine it.
        self.checkpoint(StateImage::from_parts(head.into(), tail), true, ctx);
    }

    /// Encodes the applied state for followers that need a snapshot.
    fn build_outgoing_image(&mut self) {
        let last_index = self.applied_index;
        let Some(last_term) = self.log.term(last_index) else {
            return;
        };
        let Ok((head, tail)) = self.state.snapshot_parts() else {
            return;
        };
        let Ok(bytes) = ImageBytes::of(StateImage::<S>::from_parts(head.into(), tail)) else {
            return;
        };
        let Ok(checksum) = bytes.checksum() else {
            return;
        };
        let membership = self.membership_at(last_index).clone();
        self.snapshot = Some(SnapshotImage {
            last_index,
            last_term,
            digest: self.digest,
            membership,
            checksum,
            bytes,
        });
    }

    /// The configuration in effect at `index` (applied or the snapshot point).
    fn membership_at(&self, index: u64) -> &Membership {
        self.log_configs
            .range(..=index)
            .next_back()
            .map_or(&self.snapshot_membership, |(_, membership)| membership)
    }

    /// Writes a checkpoint of the applied index: `state` (the state there), term, vote and
    /// the log after it. Entries the log keeps before it (for catching up followers) are
    /// not written. A `derived` checkpoint (a compaction of records we wrote) may be
    /// written in the background (see [`Context::compact`]).
    fn checkpoint(&mut self, state: StateImage<S>, derived: bool, ctx: &mut Context<Self>) {
        let last_index = self.applied_index;
        let last_term = self.log.term(last_index).unwrap_or(0);
        self.checkpoint_index = last_index;
        let record = RaftRecord::Snapshot(Box::new(SnapshotRecord {
            term: self.term,
            voted_for: self.voted_for,
            last_index,
            last_term,
            digest: self.digest,
            membership: self.membership_at(last_index).clone(),
            state,
            entries: self
                .log
                .slice(last_index + 1, self.log.last_index())
                .to_vec(),
        }));
        if derived {
            ctx.compact(record);
        } else {
            ctx.checkpoint(record);
        }
        ctx.sync();
    }

    /// Answers the pending reads whose round a majority acknowledged and whose index is
    /// applied; extends the lease by the newest acknowledged round.
    fn confirm_reads(&mut self, ctx: &mut Context<Self>) {
        let lease = self.config.lease_duration();
        let applied = self.applied_index;
        let confirmed = match &self.role {
            Role::Leader(leader) => {
                self.quorum_of(leader, |progress| progress.acked_round, leader.round)
            }
            _ => return,
        };
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if !leader.lease_void
            && let Some(&sent_at) = leader.round_sent_at.get(&confirmed)
        {
            let until = sent_at + lease;
            if leader.lease_until.is_none_or(|current| current < until) {
                leader.lease_until = Some(until);
            }
        }
        let state = &self.state;
        let mut given = Vec::new();
        leader.reads.retain(|read| {
            if read.round > confirmed {
                return true;
            }
            match &read.reader {
                Reader::Follower(node, id) => {
                    ctx.send(
                        *node,
                        RaftMessage::ReadIndexReply {
                            id: *id,
                            index: read.read_index,
                        },
                    );
                    given.push((*node, read.read_index));
                    false
                }
                Reader::Client(_, _) if read.read_index > applied => true,
                Reader::Client(client, request) => {
                    ctx.reply(*client, state.query(*client, request));
                    false
                }
            }
        });
        // Reads that arrived while a round was in flight share the next one, started once
        // that round is confirmed (a lost round is replaced by the next heartbeat's).
        let round = leader.round;
        let unstarted = leader.reads.iter().any(|read| read.round > round);
        if unstarted && confirmed >= round {
            self.broadcast_appends(true, ctx);
            // A cluster of one confirms its round at once.
            self.confirm_reads(ctx);
        }
        for (node, index) in given {
            self.commit_wanted(node, index, ctx);
        }
    }

    /// Answers the follower-side reads whose read index this node has applied.
    fn answer_ready_reads(&mut self, ctx: &mut Context<Self>) {
        let applied = self.applied_index;
        let state = &self.state;
        self.follower_reads
            .ready
            .retain(|(client, request, index)| {
                if *index > applied {
                    return true;
                }
                ctx.reply(*client, state.query(*client, request));
                false
            });
    }

    /// Sends the leader a read index request for the waiting reads unless one is in flight.
    fn ask_read_index(&mut self, ctx: &mut Context<Self>) {
        let Some(leader) = self.leader.filter(|&leader| leader != ctx.id()) else {
            return;
        };
        let reads = &mut self.follower_reads;
        if reads.ask.is_some() || reads.waiting.is_empty() {
            return;
        }
        let id = ctx.rng().next_u64();
        reads.asked.append(&mut reads.waiting);
        reads.ask = Some(Ask {
            id,
            sent_at: ctx.now(),
        });
        ctx.send(leader, RaftMessage::ReadIndex { id });
    }

    /// A request from the leader `from`: passes on again what a lost message or a leader
    /// change may have left unanswered.
    fn retry_follower_requests(&mut self, from: NodeId, changed: bool, ctx: &mut Context<Self>) {
        if changed {
            for (&client, request) in &self.forwarded {
                ctx.send(
                    from,
                    RaftMessage::Forward {
                        client,
                        request: request.clone(),
                    },
                );
            }
        }
        let reads = &mut self.follower_reads;
        let overdue = reads
            .ask
            .as_ref()
            .is_some_and(|ask| ctx.now() >= ask.sent_at + self.config.election_timeout_min);
        if changed || overdue {
            reads.ask = None;
            let mut waiting = std::mem::take(&mut reads.asked);
            waiting.append(&mut reads.waiting);
            reads.waiting = waiting;
        }
        self.ask_read_index(ctx);
    }

    /// A follower serves `request` (not a serializable read) with the leader's help, or
    /// redirects the client when it cannot.
    fn serve_as_follower(
        &mut self,
        client: ClientId,
        request: S::Request,
        consistency: Option<ReadConsistency>,
        ctx: &mut Context<Self>,
    ) {
        let leader = self.leader.filter(|&leader| {
            self.config.follower_serve && leader != ctx.id() && matches!(self.role, Role::Follower)
        });
        let Some(leader) = leader else {
            ctx.reply(client, S::redirect(&request, self.leader));
            return;
        };
        let read = consistency == Some(ReadConsistency::Linearizable)
            && self.config.read_mode != ReadMode::Log;
        if read {
            if self.follower_reads.len() >= PENDING_READS_MAX {
                ctx.reply(client, S::redirect(&request, Some(leader)));
                return;
            }
            self.follower_reads.waiting.push((client, request));
            self.ask_read_index(ctx);
            return;
        }
        if self.forwarded.len() >= PENDING_READS_MAX && !self.forwarded.contains_key(&client) {
            ctx.reply(client, S::redirect(&request, Some(leader)));
            return;
        }
        self.forwarded.insert(client, request.clone());
        ctx.send(leader, RaftMessage::Forward { client, request });
    }

    /// The leader proposes a request a follower passed on (dropped unless it leads and
    /// takes proposals: the follower passes it on again to the next leader).
    fn on_forward(
        &mut self,
        from: NodeId,
        client: ClientId,
        request: S::Request,
        ctx: &mut Context<Self>,
    ) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        if leader.transfer.is_some() {
            return;
        }
        let command = S::command(client, request, ctx.now());
        self.append_and_replicate(command, ctx);
        let index = self.log.last_index();
        if self.config.durable_hints
            && let Role::Leader(leader) = &mut self.role
        {
            leader.forwarded_up_to.insert(from, index);
        }
        self.commit_wanted(from, index, ctx);
    }

    /// True if `a` and `b` are two voters of a configuration (not joint) of at most three
    /// voters: copies on both are a majority.
    fn pair_is_quorum(&self, a: NodeId, b: NodeId) -> bool {
        let membership = self.membership();
        a != b
            && !membership.is_joint()
            && membership.voters.len() <= 3
            && membership.voters.contains(&a)
            && membership.voters.contains(&b)
    }

    /// The leader's own copy became durable up to `self_match`: tells each follower whose
    /// passed-on writes that covers and that are not yet committed (the commit
    /// announcement told the others).
    fn send_durable_hints(&mut self, ctx: &mut Context<Self>) {
        let id = ctx.id();
        let (term, commit) = (self.term, self.commit_index);
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let durable = leader.self_match;
        let due: Vec<(NodeId, u64)> = leader
            .forwarded_up_to
            .iter()
            .filter(|(_, index)| **index <= durable)
            .map(|(peer, index)| (*peer, *index))
            .collect();
        let hints: Vec<NodeId> = due
            .iter()
            .filter(|(peer, index)| *index > commit && self.pair_is_quorum(id, *peer))
            .map(|(peer, _)| *peer)
            .collect();
        if let Role::Leader(leader) = &mut self.role {
            for (peer, _) in &due {
                leader.forwarded_up_to.remove(peer);
            }
            if !hints.is_empty() {
                leader.hinted = leader.hinted.max(durable);
            }
            for peer in &hints {
                // The hint lets the follower commit what it waits for up to `durable`
                // itself: the commit announcement may wait.
                if let Some(progress) = leader.progress.get_mut(peer)
                    && progress.commit_wanted <= durable
                {
                    progress.commit_wanted = progress.commit_sent;
                }
            }
        }
        for peer in hints {
            ctx.send(
                peer,
                RaftMessage::Durable {
                    term,
                    index: durable,
                },
            );
        }
    }

    /// A follower learns how far its own log (`from` itself) or the leader's is durable,
    /// and commits what both hold in the current term when the two make a majority.
    fn on_durable(&mut self, from: NodeId, term: u64, index: u64, ctx: &mut Context<Self>) {
        let id = ctx.id();
        if term != self.term || !matches!(self.role, Role::Follower) {
            return;
        }
        let Some(leader) = self.leader else {
            return;
        };
        self.durable = self.durable.in_term(term);
        if from == id {
            self.durable.own = self.durable.own.max(index);
        } else if from == leader {
            self.durable.leader = self.durable.leader.max(index);
        } else {
            return;
        }
        let both = self
            .durable
            .own
            .min(self.durable.leader)
            .min(self.log.last_index());
        if both > self.commit_index
            && self.log.term(both) == Some(self.term)
            && self.pair_is_quorum(id, leader)
        {
            self.commit_index = both;
            self.apply_committed(ctx);
        }
    }

    /// The leader confirms its leadership for a follower's batch of reads.
    fn on_read_index(&mut self, from: NodeId, id: u64, ctx: &mut Context<Self>) {
        let commit = self.commit_index;
        let caught_up = self.applied_index;
        let mode = self.config.read_mode;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.transfer.is_some() || leader.reads.len() >= PENDING_READS_MAX {
            return;
        }
        let leased = leader.lease_until.is_some_and(|until| ctx.now() < until);
        let read_index = leader.read_floor(commit, self.variant);
        if mode == ReadMode::Lease && leased && caught_up >= leader.term_start_index {
            ctx.send(
                from,
                RaftMessage::ReadIndexReply {
                    id,
                    index: read_index,
                },
            );
            self.commit_wanted(from, read_index, ctx);
            return;
        }
        leader.reads.push(PendingRead {
            reader: Reader::Follower(from, id),
            read_index,
            round: leader.round + 1,
        });
        self.confirm_reads(ctx);
    }

    /// The leader named the read index of a batch of this follower's reads.
    fn on_read_index_reply(&mut self, id: u64, index: u64, ctx: &mut Context<Self>) {
        let reads = &mut self.follower_reads;
        if reads.ask.as_ref().is_none_or(|ask| ask.id != id) {
            return;
        }
        reads.ask = None;
        let early = self.variant == RaftVariant::EarlyFollowerRead;
        for (client, request) in std::mem::take(&mut reads.asked) {
            if early {
                // Broken on purpose: answers from whatever this node has applied.
                ctx.reply(client, self.state.query(client, &request));
            } else {
                reads.ready.push((client, request, index));
            }
        }
        self.answer_ready_reads(ctx);
        self.ask_read_index(ctx);
    }

    fn on_client_request(
        &mut self,
        client: ClientId,
        request: S::Request,
        ctx: &mut Context<Self>,
    ) {
        let consistency = S::read_consistency(&request);
        if consistency == Some(ReadConsistency::Serializable) {
            ctx.reply(client, self.state.query(client, &request));
            return;
        }
        let Role::Leader(leader) = &mut self.role else {
            self.serve_as_follower(client, request, consistency, ctx);
            return;
        };
        if leader.transfer.is_some() {
            // Handing over: take nothing new (the client retries elsewhere).
            ctx.reply(client, S::redirect(&request, None));
            return;
        }
        let mode = self.config.read_mode;
        if consistency == Some(ReadConsistency::Linearizable) && mode != ReadMode::Log {
            let read_index = leader.read_floor(self.commit_index, self.variant);
            let caught_up = self.applied_index >= read_index;
            let leased = leader.lease_until.is_some_and(|until| ctx.now() < until);
            if mode == ReadMode::Lease && caught_up && leased {
                ctx.reply(client, self.state.query(client, &request));
                return;
            }
            if leader.reads.len() >= PENDING_READS_MAX {
                ctx.reply(client, S::redirect(&request, None));
                return;
            }
            leader.reads.push(PendingRead {
                reader: Reader::Client(client, request),
                read_index,
                round: leader.round + 1,
            });
            self.confirm_reads(ctx);
            return;
        }
        let command = S::command(client, request, ctx.now());
        self.append_and_replicate(command, ctx);
    }

    fn on_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let applied = self.applied_index;
        let now = ctx.now();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if leader
            .transfer
            .as_ref()
            .is_some_and(|transfer| now >= transfer.started + self.config.election_timeout_max)
        {
            // The target did not take over in time: lead on.
            leader.transfer = None;
        }
        let transferring = leader.transfer.is_some();
        let mut due = Vec::new();
        if !transferring && applied >= leader.term_start_index && applied >= leader.due_fence {
            due = self.state.due(now, leader.leading_since);
        }
        for progress in leader.progress.values_mut() {
            // A pipeline that made no progress for a whole interval lost a message; so
            // did a probe: retry from the last known match.
            if let Mode::Probe { sent } = &mut progress.mode {
                *sent = false;
            }
        }
        for command in due {
            self.append_local(Payload::Command(command), ctx);
        }
        let last_index = self.log.last_index();
        if let Role::Leader(leader) = &mut self.role {
            leader.due_fence = leader.due_fence.max(last_index);
        }
        self.broadcast_appends(true, ctx);
        // The TimeoutNow may have been lost.
        self.maybe_send_timeout_now(ctx);
        self.arm_heartbeat(ctx);
    }

    fn on_check_quorum(&mut self, ctx: &mut Context<Self>) {
        let membership = self.membership().clone();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let mut active: BTreeSet<NodeId> = leader
            .progress
            .iter()
            .filter(|(_, progress)| progress.active)
            .map(|(&id, _)| id)
            .collect();
        active.insert(ctx.id());
        for progress in leader.progress.values_mut() {
            progress.active = false;
        }
        if !membership.has_quorum(&active) {
            self.become_follower(self.term, None, ctx);
            return;
        }
        let check = self.config.election_timeout_min;
        ctx.set_timer(RaftTimer::CheckQuorum, check, check);
    }

    fn recover(&mut self, records: Vec<RaftRecord<S>>) {
        for record in records {
            match record {
                RaftRecord::HardState { term, voted_for } => {
                    self.term = term;
                    self.voted_for = voted_for;
                }
                RaftRecord::Entries {
                    first_index,
                    entries,
                } => {
                    if first_index <= self.log.last_index() + 1 {
                        self.log.overwrite(first_index, &entries);
                        self.note_configs_from(first_index);
                    }
                }
                RaftRecord::Snapshot(snapshot) => {
                    let snapshot = *snapshot;
                    self.term = snapshot.term;
                    self.voted_for = snapshot.voted_for;
                    self.log
                        .reset(snapshot.last_index, snapshot.last_term, snapshot.entries);
                    self.snapshot_membership = snapshot.membership.clone();
                    self.log_configs.clear();
                    self.note_configs_from(snapshot.last_index + 1);
                    // The image was decoded (and so checked) when the record was read back;
                    // a record kept in memory, as the simulator keeps them, was encoded from
                    // a state and decodes here.
                    let state = snapshot
                        .state
                        .into_state()
                        .expect("a snapshot record's state decoded when the record was read");
                    self.snapshot = None;
                    self.checkpoint_index = snapshot.last_index;
                    self.state.adopt(state);
                    self.commit_index = snapshot.last_index;
                    self.applied_index = snapshot.last_index;
                    self.digest = snapshot.digest;
                    self.digests.clear();
                    self.digests.insert(snapshot.last_index, snapshot.digest);
                }
            }
        }
    }
}

/// The fields of [`RaftMessage::AppendEntries`].
struct AppendEntries<S: StateMachine> {
    term: u64,
    prev_index: u64,
    prev_term: u64,
    entries: Vec<Entry<S>>,
    commit: u64,
    round: u64,
}

/// The fields of [`RaftMessage::AppendReply`].
struct AppendReply {
    term: u64,
    success: bool,
    match_index: u64,
    rejected_prev: u64,
    hint_term: Option<u64>,
    hint_index: u64,
    round: u64,
}

/// The fields of [`RaftMessage::SnapshotReply`].
struct SnapshotReply {
    term: u64,
    last_index: u64,
    received: u64,
    done: bool,
    round: u64,
}

impl<S: StateMachine> Node for RaftNode<S> {
    type Message = RaftMessage<S>;
    type Request = S::Request;
    type Response = S::Response;
    type Record = RaftRecord<S>;
    type Timer = RaftTimer;

    fn on_start(&mut self, ctx: &mut Context<Self>) {
        self.bootstrap(ctx);
        self.arm_election(ctx);
    }

    fn halted(&self) -> Option<String> {
        self.state.failure()
    }

    fn on_recover(&mut self, records: Vec<RaftRecord<S>>, ctx: &mut Context<Self>) {
        self.bootstrap(ctx);
        self.recover(records);
        // The node may have acknowledged a leader just before crashing: keep its promise.
        self.promise(ctx);
    }

    fn on_message(&mut self, from: NodeId, message: RaftMessage<S>, ctx: &mut Context<Self>) {
        match message {
            RaftMessage::RequestVote {
                term,
                last_index,
                last_term,
                pre_vote,
                transfer,
            } => self.on_request_vote(from, term, last_index, last_term, pre_vote, transfer, ctx),
            RaftMessage::TimeoutNow { term } => self.on_timeout_now(from, term, ctx),
            RaftMessage::VoteReply {
                term,
                granted,
                pre_vote,
            } => self.on_vote_reply(from, term, granted, pre_vote, ctx),
            RaftMessage::AppendEntries {
                term,
                prev_index,
                prev_term,
                entries,
                commit,
                round,
            } => self.on_append_entries(
                from,
                AppendEntries {
                    term,
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                    round,
                },
                ctx,
            ),
            RaftMessage::AppendReply {
                term,
                success,
                match_index,
                rejected_prev,
                hint_term,
                hint_index,
                round,
            } => self.on_append_reply(
                from,
                AppendReply {
                    term,
                    success,
                    match_index,
                    rejected_prev,
                    hint_term,
                    hint_index,
                    round,
                },
                ctx,
            ),
            RaftMessage::InstallSnapshot(chunk) => self.on_install_snapshot(from, *chunk, ctx),
            RaftMessage::Forward { client, request } => self.on_forward(from, client, request, ctx),
            RaftMessage::Durable { term, index } => self.on_durable(from, term, index, ctx),
            RaftMessage::ReadIndex { id } => self.on_read_index(from, id, ctx),
            RaftMessage::ReadIndexReply { id, index } => self.on_read_index_reply(id, index, ctx),
            RaftMessage::SnapshotReply {
                term,
                last_index,
                received,
                done,
                round,
            } => self.on_snapshot_reply(
                from,
                SnapshotReply {
                    term,
                    last_index,
                    received,
                    done,
                    round,
                },
                ctx,
            ),
        }
    }

    fn on_timer(&mut self, timer: RaftTimer, ctx: &mut Context<Self>) {
        match timer {
            RaftTimer::Election => {
                if !self.is_leader() {
                    if self.membership().is_voter(ctx.id()) {
                        self.campaign(true, false, ctx);
                    } else {
                        // Learners and nodes outside the configuration never campaign.
                        self.arm_election(ctx);
                    }
                }
            }
            RaftTimer::Heartbeat => self.on_heartbeat(ctx),
            RaftTimer::CheckQuorum => self.on_check_quorum(ctx),
            RaftTimer::PromiseExpired => self.promised = false,
            RaftTimer::Announce => self.on_announce(ctx),
        }
    }

    fn on_request(&mut self, client: ClientId, request: S::Request, ctx: &mut Context<Self>) {
        self.on_client_request(client, request, ctx);
    }
}
