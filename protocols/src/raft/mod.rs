//! Raft: a replicated log under a leader elected per term, generic over the replicated
//! [`StateMachine`](crate::replicated::StateMachine).
//!
//! Every node is a follower, a pre-candidate, a candidate or the leader of its current term.
//!
//! - **Election**: a follower whose randomized election timer fires without word from a
//!   leader first asks for *pre-votes* for the next term without changing its own term, so
//!   a node cut off from the cluster cannot force terms up when it returns. With a majority
//!   of pre-votes it becomes a candidate: term + 1, a durable vote for itself, and
//!   `RequestVote` to everyone (itself included, so its own vote too is counted only once
//!   durable). A node grants one vote per term, to a candidate whose log is at least as up to
//!   date as its own (§5.4.1), and refuses every vote while it heard from a leader within the
//!   minimum election timeout (the *follower promise*, which also makes leader leases safe).
//! - **Check-quorum**: a leader that did not hear from a majority within an election timeout
//!   steps down.
//! - **Replication**: a new leader appends a no-op of its term; entries are committed only by
//!   counting replicas of entries of the leader's own term (§5.4.2). Rejections carry a
//!   conflict hint (term and first index of that term) so a leader skips a whole term per
//!   round trip. Each follower is in one of three modes: *probe* (position unknown: one
//!   append per heartbeat), *replicate* (pipelined batches bounded by a count and a byte
//!   window of unacknowledged messages) and *snapshot* (an InstallSnapshot transfer).
//! - **Durability**: term, vote and entries are persisted and synced before any vote, append
//!   acknowledgement or client reply that depends on them leaves (the driver's output gate
//!   holds them). The leader appends to its own log in parallel with replication and counts
//!   itself only when an acknowledgement it sends *to itself* after the persist comes back,
//!   which the gate releases only once those records are durable.
//! - **Compaction**: once the applied prefix exceeds a threshold the node checkpoints the
//!   state machine (with term, vote and the retained suffix) as one record that supersedes
//!   every earlier one. A follower behind the leader's first retained entry receives the
//!   snapshot in chunks with a CRC32C of the encoded state and verifies it before installing.
//! - **Reads**: requests the state machine declares read-only skip the log. Linearizable
//!   reads use ReadIndex (the leader notes its commit index, confirms with a heartbeat round
//!   that a majority still follows it, and answers once applied that far) or, with
//!   [`ReadMode::Lease`], a lease: the leader answers locally while its clock reads less than
//!   the send time of the last majority-acknowledged heartbeat round plus
//!   [`RaftConfig::lease_duration`]. The lease assumes that clocks never jump backward and
//!   that their rates differ from real time by at most [`RaftConfig::clock_drift_bound_ppm`].
//!   Serializable reads are answered by any replica from its applied state.
//! - **Followers serve clients** ([`RaftConfig::follower_serve`]): a follower passes a
//!   write to the leader and answers it once applied; the leader tells it the commit at
//!   once. Other followers learn a new commit index from the next append, or from an
//!   announcement once [`RaftConfig::commit_announce_delay`] (1 ms) passed without one: a
//!   steady stream of writes then costs no extra message (and no reply) per commit. A
//!   follower given a read index is told at once too. With at most three voters a
//!   follower need not wait for the leader's announcement
//!   ([`RaftConfig::durable_hints`]): the leader tells it when its own copy is durable
//!   (`Durable`, sent when the leader's acknowledgement to itself comes back), the
//!   follower tells itself the same of its copy (a message the gate releases once its
//!   records are durable), and two durable copies of an entry of the current term are a
//!   majority, so it commits and answers one round trip earlier. A follower may then have
//!   answered a write the leader has not yet counted committed, so the leader's read index
//!   (and its lease reads) cover every index it named in a `Durable`.
//!
//! - **Membership**: the cluster's configuration ([`Membership`]: voters and learners) is a
//!   log entry, in effect on a node as soon as its log holds it, and part of every
//!   snapshot. A change ([`RaftNode::propose_membership_change`]) that alters the voters
//!   first appends a *joint* configuration (old and new voter sets); while it is the latest,
//!   commits, elections, ReadIndex rounds and check-quorum need a majority of both sets.
//!   Once the joint entry commits, the leader appends the final configuration by itself.
//!   One change at a time: another is refused until the previous one is committed and out
//!   of its joint phase, and a new leader must first commit its no-op. A leader removed
//!   from the voters leads through the change and steps down once the configuration
//!   without it commits. Nodes replicate to, and ask votes of, the nodes the configuration
//!   names; [`RaftNode::with_voters`] sets the configuration before any entry (otherwise
//!   the driver's members), so spare nodes can wait outside the cluster.
//! - **Learners** receive entries and snapshots but never campaign and never count toward
//!   a quorum; promoting one is refused while its log lags behind the leader's by more
//!   than a tenth of the log or one append batch, whichever is less.
//! - **Leadership transfer** ([`RaftNode::transfer_leadership`]): the leader stops taking
//!   proposals, brings the target up to date and sends it `TimeoutNow`; the target
//!   campaigns at once without a pre-vote, and voters answer it despite their promise.
//!   The old leader gives up its lease for the rest of its term, and abandons the transfer
//!   if it still leads after the longest election timeout.
//!
//! [`RaftVariant::Figure8`] is a deliberately broken leader (Raft paper, figure 8): it
//! appends no no-op when elected and commits any entry a majority holds, whatever its term,
//! so an entry it counts as committed can later be overwritten.
//!
//! [`ChangeVariant::SingleStep`] is a deliberately broken way to change the configuration:
//! the new voters replace the old in one entry, so an old and a new majority can elect two
//! leaders in one term.
//!
//! [`invariants`] checks election safety, log matching, leader completeness, state-machine
//! safety and the membership rules across nodes. [`churn::ChurnNode`] drives membership
//! changes and transfers from inside a simulator or the model checker.
//!
//! ```
//! use synod_core::node::{Context, Effect, Node, NodeId};
//! use synod_core::rng::Rng;
//! use synod_core::time::Time;
//! use synod_protocols::kv_state::SessionKv;
//! use synod_protocols::raft::{RaftConfig, RaftNode, RaftTimer, RaftVariant};
//!
//! // A single-node cluster elects itself: pre-vote, vote, then leadership.
//! let members = [NodeId(0)];
//! let mut rng = Rng::new(1);
//! let mut node = RaftNode::<SessionKv>::new(RaftVariant::Correct, RaftConfig::default());
//! let mut ctx = Context::new(NodeId(0), &members, Time::ZERO, &mut rng);
//! node.on_start(&mut ctx);
//! node.on_timer(RaftTimer::Election, &mut ctx);
//! // Its pre-vote request to itself, then its vote request to itself, are messages.
//! for _ in 0..2 {
//!     let request = ctx.effects().iter().rev().find_map(|effect| match effect {
//!         Effect::Send { message, .. } => Some(message.clone()),
//!         _ => None,
//!     });
//!     let request = request.expect("a request to itself");
//!     node.on_message(NodeId(0), request, &mut ctx);
//!     let reply = ctx.effects().iter().rev().find_map(|effect| match effect {
//!         Effect::Send { message, .. } => Some(message.clone()),
//!         _ => None,
//!     });
//!     node.on_message(NodeId(0), reply.expect("a vote"), &mut ctx);
//! }
//! assert!(node.is_leader());
//! assert_eq!(node.term(), 1);
//! ```

pub mod churn;
pub mod invariants;
mod log;
mod membership;
mod node;

pub use log::{Entry, Payload, RaftLog};
pub use membership::{ChangeVariant, Membership, MembershipChange, MembershipError};
pub use node::{
    RaftConfig, RaftMessage, RaftNode, RaftRecord, RaftTimer, RaftVariant, ReadMode, SnapshotChunk,
    SnapshotRecord, StateImage,
};

#[cfg(test)]
mod tests;
