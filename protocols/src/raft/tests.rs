//! Scenario tests for the Raft node, each naming the paper section it checks, driven by a
//! tiny in-process network in which every sync completes at once.

use super::invariants::check_all;
use super::*;
use crate::kv_state::{KvError, KvRequest, KvResponse, SessionKv};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use synod_core::kv::{KvCommand, KvOutput};
use synod_core::node::{ClientId, Context, Effect, Node, NodeId};
use synod_core::rng::Rng;
use synod_core::time::Time;

type KvRaft = RaftNode<SessionKv>;

/// Nodes, their durable records, and the messages between them.
struct Cluster {
    members: Vec<NodeId>,
    nodes: Vec<Option<KvRaft>>,
    disks: Vec<Vec<RaftRecord<SessionKv>>>,
    network: VecDeque<(NodeId, NodeId, RaftMessage<SessionKv>)>,
    replies: Vec<(NodeId, ClientId, KvResponse)>,
    /// Messages to or from these nodes are dropped.
    isolated: BTreeSet<NodeId>,
    rng: Rng,
    now: Time,
    make: fn() -> KvRaft,
    /// Whether every delivery is followed by the safety checks.
    checked: bool,
    /// InstallSnapshot chunks delivered.
    chunks_delivered: usize,
    /// Flip a byte of the next snapshot chunk delivered after the first.
    corrupt_next_chunk: bool,
    /// Messages between two different nodes for which this returns true are dropped.
    drop_if: Option<DropIf>,
    /// `Durable` messages a leader sent to a follower, delivered or not.
    hints_sent: usize,
    /// Per destination, appends without entries (heartbeats and commit announcements)
    /// delivered.
    empty_appends: BTreeMap<NodeId, usize>,
    /// Announcement timers set, per node.
    announce_timers: BTreeMap<NodeId, usize>,
}

/// Decides whether a message (from, to) is lost.
type DropIf = fn(NodeId, NodeId, &RaftMessage<SessionKv>) -> bool;

impl Cluster {
    fn new(size: u32, make: fn() -> KvRaft) -> Cluster {
        let members: Vec<NodeId> = (0..size).map(NodeId).collect();
        let mut cluster = Cluster {
            nodes: (0..size).map(|_| Some(make())).collect(),
            disks: (0..size).map(|_| Vec::new()).collect(),
            members,
            network: VecDeque::new(),
            replies: Vec::new(),
            isolated: BTreeSet::new(),
            rng: Rng::new(7),
            now: Time::ZERO,
            make,
            checked: true,
            chunks_delivered: 0,
            corrupt_next_chunk: false,
            drop_if: None,
            hints_sent: 0,
            empty_appends: BTreeMap::new(),
            announce_timers: BTreeMap::new(),
        };
        for id in 0..size {
            cluster.handle(NodeId(id), |node, ctx| node.on_start(ctx));
        }
        cluster
    }

    fn correct() -> KvRaft {
        KvRaft::new(RaftVariant::Correct, RaftConfig::default())
    }

    fn node(&self, id: u32) -> &KvRaft {
        self.nodes[id as usize].as_ref().expect("a running node")
    }

    /// Runs a handler and carries out its effects (syncs complete at once).
    fn handle(
        &mut self,
        id: NodeId,
        input: impl FnOnce(&mut KvRaft, &mut Context<KvRaft>),
    ) -> Vec<Effect<KvRaft>> {
        let Some(node) = self.nodes[id.0 as usize].as_mut() else {
            return Vec::new();
        };
        let mut ctx = Context::new(id, &self.members, self.now, &mut self.rng);
        input(node, &mut ctx);
        let effects = ctx.into_effects();
        for effect in &effects {
            match effect.clone() {
                Effect::Send { to, message, .. } => self.network.push_back((id, to, message)),
                Effect::Reply {
                    client, response, ..
                } => self.replies.push((id, client, response)),
                Effect::Persist { record } => self.disks[id.0 as usize].push(record),
                Effect::Checkpoint { record, .. } => self.disks[id.0 as usize] = vec![record],
                Effect::SetTimer {
                    timer: RaftTimer::Announce,
                    ..
                } => *self.announce_timers.entry(id).or_default() += 1,
                Effect::SetTimer { .. } | Effect::CancelTimer { .. } | Effect::Sync => {}
            }
        }
        effects
    }

    /// Delivers messages until none is left; returns how many were delivered.
    fn deliver_all(&mut self) -> usize {
        let mut delivered = 0;
        while let Some((from, to, mut message)) = self.network.pop_front() {
            if from != to && matches!(message, RaftMessage::Durable { .. }) {
                self.hints_sent += 1;
            }
            if self.isolated.contains(&from) || self.isolated.contains(&to) {
                continue;
            }
            if from != to && self.drop_if.is_some_and(|drop| drop(from, to, &message)) {
                continue;
            }
            if let RaftMessage::InstallSnapshot(chunk) = &mut message {
                self.chunks_delivered += 1;
                if self.corrupt_next_chunk && chunk.offset > 0 && !chunk.data.is_empty() {
                    chunk.data[0] ^= 0xff;
                    self.corrupt_next_chunk = false;
                }
            }
            delivered += 1;
            if from != to
                && let RaftMessage::AppendEntries { entries, .. } = &message
                && entries.is_empty()
            {
                *self.empty_appends.entry(to).or_default() += 1;
            }
            self.handle(to, |node, ctx| node.on_message(from, message, ctx));
            if self.checked {
                assert_eq!(check_all(self.running()), Ok(()));
            }
        }
        delivered
    }

    fn running(&self) -> impl Iterator<Item = (NodeId, &KvRaft)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(index, node)| node.as_ref().map(|node| (NodeId(index as u32), node)))
    }

    fn fire(&mut self, id: u32, timer: RaftTimer) {
        self.handle(NodeId(id), |node, ctx| node.on_timer(timer, ctx));
        self.deliver_all();
    }

    /// Campaigns until elected (a first pre-vote may only teach the node a newer term).
    fn elect(&mut self, id: u32) {
        for _ in 0..3 {
            self.fire(id, RaftTimer::Election);
            if self.node(id).is_leader() {
                return;
            }
        }
        panic!("n{id} did not win");
    }

    /// A leader cut off from everyone steps down after two quorum checks.
    fn depose(&mut self, id: u32) {
        self.fire(id, RaftTimer::CheckQuorum);
        self.fire(id, RaftTimer::CheckQuorum);
        assert!(!self.node(id).is_leader());
    }

    fn request(&mut self, id: u32, client: u64, sequence: u64, command: KvCommand) {
        let request = KvRequest {
            sequence,
            acknowledged_below: sequence,
            command,
        };
        self.handle(NodeId(id), |node, ctx| {
            node.on_request(ClientId(client), request, ctx)
        });
        self.deliver_all();
    }

    fn crash(&mut self, id: u32) {
        self.nodes[id as usize] = None;
    }

    fn restart(&mut self, id: u32) {
        self.nodes[id as usize] = Some((self.make)());
        let records = self.disks[id as usize].clone();
        self.handle(NodeId(id), |node, ctx| node.on_recover(records, ctx));
    }
}

fn put(value: &str) -> KvCommand {
    KvCommand::Put {
        key: "k".to_string(),
        value: value.to_string(),
    }
}

fn get() -> KvCommand {
    KvCommand::Get {
        key: "k".to_string(),
    }
}

fn value(text: &str) -> Result<KvOutput, KvError> {
    Ok(KvOutput::Value(Some(text.to_string())))
}

#[test]
fn section_5_2_a_leader_is_elected_and_commits_a_noop_of_its_term() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    assert_eq!(cluster.node(0).term(), 1);
    assert_eq!(cluster.node(1).leader(), Some(NodeId(0)));
    // The no-op is committed on the leader once a follower acknowledged it.
    assert_eq!(cluster.node(0).commit_index(), 1);
    cluster.fire(0, RaftTimer::Heartbeat);
    assert_eq!(cluster.node(2).commit_index(), 1);
}

#[test]
fn section_9_6_pre_vote_keeps_an_isolated_node_from_raising_its_term() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    cluster.isolated.insert(NodeId(2));
    for _ in 0..5 {
        cluster.fire(2, RaftTimer::PromiseExpired);
        cluster.fire(2, RaftTimer::Election);
    }
    assert_eq!(cluster.node(2).term(), 1, "pre-votes change no term");
    cluster.isolated.clear();
    cluster.fire(0, RaftTimer::Heartbeat);
    assert!(
        cluster.node(0).is_leader(),
        "the returning node did not disrupt"
    );
}

#[test]
fn section_6_a_follower_that_heard_from_its_leader_refuses_votes() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    // n1 campaigns (its promise over), but n2 heard from n0 lately and refuses; n0 leads.
    cluster.fire(1, RaftTimer::PromiseExpired);
    cluster.fire(1, RaftTimer::Election);
    assert!(!cluster.node(1).is_leader());
    assert!(cluster.node(0).is_leader());
    // Once n2's promise is over too, n1 can win (its log is as up to date).
    cluster.fire(2, RaftTimer::PromiseExpired);
    cluster.fire(1, RaftTimer::Election);
    assert!(cluster.node(1).is_leader());
    assert_eq!(cluster.node(1).term(), 2);
}

#[test]
fn check_quorum_deposes_a_leader_that_hears_from_no_majority() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    cluster.isolated.extend([NodeId(1), NodeId(2)]);
    cluster.fire(0, RaftTimer::Heartbeat);
    cluster.fire(0, RaftTimer::CheckQuorum);
    assert!(
        cluster.node(0).is_leader(),
        "followers answered since the election"
    );
    cluster.fire(0, RaftTimer::CheckQuorum);
    assert!(!cluster.node(0).is_leader());
}

#[test]
fn votes_and_acknowledgements_leave_only_after_their_records() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    // A vote request in a new term: the vote waits for the term and vote record.
    let effects = cluster.handle(NodeId(1), |node, ctx| {
        node.on_message(
            NodeId(2),
            RaftMessage::RequestVote {
                term: 5,
                last_index: 9,
                last_term: 4,
                pre_vote: false,
                transfer: false,
            },
            ctx,
        )
    });
    let (persisted, vote_required) =
        effects
            .iter()
            .fold((0, 0), |(count, required), effect| match effect {
                Effect::Persist { .. } => (count + 1, required),
                Effect::Send {
                    records_required, ..
                } => (count, *records_required),
                _ => (count, required),
            });
    assert!(persisted >= 1);
    assert_eq!(vote_required, persisted, "the vote waits for every record");
}

/// Section 10.2.1 of Ongaro's thesis: a leader sends a new entry to its followers without
/// waiting for its own record of it, but counts itself toward the commit only through an
/// acknowledgement to itself that waits for that record.
#[test]
fn a_leader_replicates_a_new_entry_before_its_own_record_is_durable() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    let request = KvRequest {
        sequence: 1,
        acknowledged_below: 1,
        command: put("a"),
    };
    let effects = cluster.handle(NodeId(0), |node, ctx| {
        node.on_request(ClientId(9), request, ctx)
    });
    let appended = effects
        .iter()
        .filter(|effect| matches!(effect, Effect::Persist { .. }))
        .count();
    assert_eq!(appended, 1, "{effects:?}");
    let mut to_followers = Vec::new();
    let mut to_itself = Vec::new();
    for effect in &effects {
        if let Effect::Send {
            to,
            message,
            records_required,
        } = effect
        {
            match message {
                RaftMessage::AppendEntries { entries, .. } if !entries.is_empty() => {
                    to_followers.push(*records_required)
                }
                RaftMessage::AppendReply { .. } if *to == NodeId(0) => {
                    to_itself.push(*records_required)
                }
                _ => {}
            }
        }
    }
    assert_eq!(to_followers.len(), 2, "{effects:?}");
    assert_eq!(to_itself.len(), 1, "{effects:?}");
    assert!(
        to_followers.iter().all(|&required| required < to_itself[0]),
        "the appends wait for the entry's record: {effects:?}"
    );
    // Nothing is committed before the followers or the leader's own record answer.
    let before = cluster.node(0).commit_index();
    cluster.deliver_all();
    assert_eq!(cluster.node(0).commit_index(), before + 1);
}

/// Elects n0, lets it append an entry alone, deposes it, then elects it again with
/// one-entry messages and reports every commit index it reached with the entry's term.
fn commits_of_a_reelected_leader(variant: RaftVariant) -> Vec<(u64, Option<u64>)> {
    fn make_correct() -> KvRaft {
        KvRaft::new(
            RaftVariant::Correct,
            RaftConfig {
                append_entries_max: 1,
                ..RaftConfig::default()
            },
        )
    }
    fn make_broken() -> KvRaft {
        KvRaft::new(
            RaftVariant::Figure8,
            RaftConfig {
                append_entries_max: 1,
                ..RaftConfig::default()
            },
        )
    }
    let make = match variant {
        RaftVariant::Figure8 => make_broken,
        RaftVariant::Correct | RaftVariant::EarlyFollowerRead | RaftVariant::HintBlindReads => {
            make_correct
        }
    };
    let mut cluster = Cluster::new(3, make);
    cluster.elect(0);
    cluster.fire(0, RaftTimer::Heartbeat);
    cluster.isolated.extend([NodeId(1), NodeId(2)]);
    cluster.request(0, 1, 0, put("a"));
    cluster.depose(0);
    cluster.isolated.clear();
    cluster.fire(1, RaftTimer::PromiseExpired);
    cluster.fire(2, RaftTimer::PromiseExpired);
    let before = cluster.node(0).commit_index();
    cluster.handle(NodeId(0), |node, ctx| {
        node.on_timer(RaftTimer::Election, ctx)
    });
    let mut commits = Vec::new();
    while let Some((from, to, message)) = cluster.network.pop_front() {
        cluster.handle(to, |node, ctx| node.on_message(from, message, ctx));
        let leader = cluster.node(0);
        let commit = leader.commit_index();
        if commit > before && commits.last().is_none_or(|(last, _)| *last != commit) {
            commits.push((commit, leader.log().term(commit)));
        }
    }
    assert!(cluster.node(0).is_leader());
    commits
}

#[test]
fn section_5_4_2_an_entry_of_an_earlier_term_is_not_committed_by_counting() {
    // The correct leader holds [no-op 1, put 1] from term 1 and appends its no-op of term
    // 2 at index 3: index 2 reaches a majority first but is committed only with index 3.
    let commits = commits_of_a_reelected_leader(RaftVariant::Correct);
    assert_eq!(commits, vec![(3, Some(2))]);
    // The figure-8 leader commits index 2 of term 1 by counting replicas.
    let commits = commits_of_a_reelected_leader(RaftVariant::Figure8);
    assert!(
        commits.first().is_some_and(|(_, term)| *term == Some(1)),
        "{commits:?}"
    );
}

#[test]
fn section_5_3_a_conflicting_follower_is_repaired_with_one_round_trip_per_term() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    // n0 appends 20 entries alone in term 1 and is deposed.
    cluster.isolated.insert(NodeId(0));
    for sequence in 0..20 {
        cluster.request(0, 1, sequence, put("stale"));
    }
    cluster.isolated.clear();
    cluster.crash(0);
    cluster.fire(1, RaftTimer::PromiseExpired);
    cluster.fire(2, RaftTimer::PromiseExpired);
    cluster.elect(1);
    cluster.request(1, 2, 0, put("fresh"));
    cluster.restart(0);
    assert_eq!(cluster.node(0).log().last_index(), 21);
    // The hint names term 1 from index 2: n1 resends from there at once.
    cluster.fire(1, RaftTimer::Heartbeat);
    assert_eq!(cluster.node(0).log().last_index(), 3);
    assert_eq!(cluster.node(0).log().term(3), Some(2));
    assert_eq!(cluster.node(0).commit_index(), 3);
}

#[test]
fn a_restarted_node_recovers_term_vote_and_log_from_its_records() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    cluster.request(0, 1, 0, put("a"));
    cluster.fire(0, RaftTimer::Heartbeat);
    let before = cluster.node(1).clone();
    cluster.crash(1);
    cluster.restart(1);
    let after = cluster.node(1);
    assert_eq!(after.term(), before.term());
    assert_eq!(after.voted_for(), before.voted_for());
    assert_eq!(after.log(), before.log());
    // Commit and state are volatile: they come back from the leader.
    assert_eq!(after.commit_index(), 0);
    cluster.fire(0, RaftTimer::Heartbeat);
    assert_eq!(cluster.node(1).state(), before.state());
}

fn compacting() -> KvRaft {
    KvRaft::new(
        RaftVariant::Correct,
        RaftConfig {
            snapshot_threshold_entries: 4,
            snapshot_chunk_bytes: 8,
            ..RaftConfig::default()
        },
    )
}

#[test]
fn section_7_a_lagging_follower_is_restored_by_a_chunked_snapshot() {
    let mut cluster = Cluster::new(3, compacting);
    cluster.elect(0);
    cluster.isolated.insert(NodeId(2));
    for sequence in 0..10 {
        cluster.request(0, 1, sequence, put(&format!("v{sequence}")));
    }
    assert!(cluster.node(0).log().snapshot_index() >= 8);
    // The checkpoint superseded every earlier record.
    assert!(matches!(cluster.disks[0][0], RaftRecord::Snapshot(_)));
    cluster.isolated.clear();
    for _ in 0..40 {
        cluster.fire(0, RaftTimer::Heartbeat);
        if cluster.node(2).applied_index() == cluster.node(0).applied_index() {
            break;
        }
    }
    assert!(
        cluster.chunks_delivered > 1,
        "the snapshot came in one chunk"
    );
    assert_eq!(cluster.node(2).state(), cluster.node(0).state());
    assert_eq!(
        cluster.node(2).applied_digest(),
        cluster.node(0).applied_digest()
    );
    // And it survives a restart from its checkpoint: the snapshot and the retained
    // entries come back, the commit index (volatile) from the leader.
    let log = cluster.node(2).log().clone();
    cluster.crash(2);
    cluster.restart(2);
    assert_eq!(cluster.node(2).log(), &log);
    assert_eq!(cluster.node(2).applied_index(), log.snapshot_index());
    cluster.fire(0, RaftTimer::Heartbeat);
    assert_eq!(cluster.node(2).state(), cluster.node(0).state());
}

/// Restores a follower that missed ten compacted writes; returns the chunks delivered.
#[test]
fn a_checkpoint_read_back_from_bytes_restores_the_state_and_a_damaged_one_is_refused() {
    let mut cluster = Cluster::new(3, compacting);
    cluster.elect(0);
    for sequence in 0..10 {
        cluster.request(0, 1, sequence, put(&format!("v{sequence}")));
    }
    let record = cluster.disks[0][0].clone();
    let RaftRecord::Snapshot(snapshot) = &record else {
        panic!("the first record is not a checkpoint: {record:?}");
    };
    // The record holds the state's encoding only, the same bytes the leader sends.
    assert!(!snapshot.state.bytes().is_empty());
    // Written and read back as the server's log does: the state decodes on reading.
    let written = postcard::to_allocvec(&record).unwrap();
    let read: RaftRecord<SessionKv> = postcard::from_bytes(&written).unwrap();
    // Read back, the image holds the decoded state (not the bytes again).
    let RaftRecord::Snapshot(read_snapshot) = &read else {
        panic!("read back as another record: {read:?}");
    };
    assert_eq!(read_snapshot.state.decode(), snapshot.state.decode());
    assert_eq!(
        (
            read_snapshot.last_index,
            read_snapshot.term,
            &read_snapshot.entries
        ),
        (snapshot.last_index, snapshot.term, &snapshot.entries)
    );
    let mut restarted = compacting();
    let mut rng = Rng::new(7);
    let mut ctx = Context::new(
        NodeId(0),
        &[NodeId(0), NodeId(1), NodeId(2)],
        Time(0),
        &mut rng,
    );
    restarted.on_recover(vec![read], &mut ctx);
    // Recovery restores the state at the snapshot point, which holds the writes before it.
    assert_eq!(Some(restarted.state().clone()), snapshot.state.decode());
    assert_ne!(restarted.state(), &SessionKv::default());
    assert_eq!(restarted.applied_index(), snapshot.last_index);
    assert_eq!(
        restarted.applied_index(),
        cluster.node(0).log().snapshot_index()
    );
    // A state image that is not a state (bytes from another version) fails to read with
    // an error, not later: overwrite the state's bytes inside the written record.
    let state = snapshot.state.bytes();
    let mut damaged = written.clone();
    let position = damaged
        .windows(state.len())
        .position(|window| window == &state[..])
        .expect("the state's bytes are inside the record");
    damaged[position..position + state.len()].fill(0xff);
    let error = postcard::from_bytes::<RaftRecord<SessionKv>>(&damaged).unwrap_err();
    assert!(!error.to_string().is_empty());
}

fn snapshotting_with_catch_up(catch_up_entries: u64) -> KvRaft {
    KvRaft::new(
        RaftVariant::Correct,
        RaftConfig {
            snapshot_threshold_entries: 4,
            snapshot_chunk_bytes: 8,
            snapshot_catch_up_entries: catch_up_entries,
            ..RaftConfig::default()
        },
    )
}

/// A follower a few entries behind when the leader snapshots.
fn catch_up_after_snapshot(make: fn() -> KvRaft) -> (usize, Cluster) {
    let mut cluster = Cluster::new(3, make);
    cluster.elect(0);
    cluster.request(0, 1, 0, put("before"));
    cluster.isolated.insert(NodeId(2));
    for sequence in 1..5 {
        cluster.request(0, 1, sequence, put(&format!("v{sequence}")));
    }
    cluster.isolated.clear();
    for _ in 0..40 {
        cluster.fire(0, RaftTimer::Heartbeat);
        if cluster.node(2).applied_index() == cluster.node(0).applied_index() {
            break;
        }
    }
    assert_eq!(cluster.node(2).state(), cluster.node(0).state());
    (cluster.chunks_delivered, cluster)
}

#[test]
fn entries_kept_behind_a_snapshot_catch_a_follower_up_without_a_transfer() {
    let (chunks, cluster) = catch_up_after_snapshot(|| snapshotting_with_catch_up(8));
    assert_eq!(chunks, 0, "the follower was sent a snapshot");
    // The checkpoint covers the applied index; the log in memory starts earlier.
    let RaftRecord::Snapshot(checkpoint) = &cluster.disks[0][0] else {
        panic!("the first record is not a checkpoint");
    };
    assert!(cluster.node(0).log().snapshot_index() < checkpoint.last_index);
    // Without them, the same follower needs the whole state.
    let (chunks, _) = catch_up_after_snapshot(|| snapshotting_with_catch_up(0));
    assert!(
        chunks > 0,
        "a follower behind the snapshot point got no snapshot"
    );
}

fn restore_lagging_follower(corrupt_one_chunk: bool) -> usize {
    let mut cluster = Cluster::new(3, compacting);
    cluster.elect(0);
    cluster.isolated.insert(NodeId(2));
    for sequence in 0..10 {
        cluster.request(0, 1, sequence, put(&format!("v{sequence}")));
    }
    cluster.isolated.clear();
    cluster.corrupt_next_chunk = corrupt_one_chunk;
    cluster.fire(0, RaftTimer::Heartbeat);
    assert!(!cluster.corrupt_next_chunk, "a chunk was corrupted");
    assert_eq!(cluster.node(2).state(), cluster.node(0).state());
    cluster.chunks_delivered
}

#[test]
fn a_corrupted_snapshot_fails_its_checksum_and_is_sent_again() {
    let clean = restore_lagging_follower(false);
    let corrupted = restore_lagging_follower(true);
    assert!(clean > 1);
    assert!(
        corrupted > clean,
        "the corrupted transfer ({corrupted} chunks) was not restarted (clean: {clean})"
    );
}

fn with_reads(read_mode: ReadMode) -> KvRaft {
    KvRaft::new(
        RaftVariant::Correct,
        RaftConfig {
            read_mode,
            ..RaftConfig::default()
        },
    )
}

#[test]
fn read_index_answers_after_a_heartbeat_round_without_a_log_entry() {
    let mut cluster = Cluster::new(3, || with_reads(ReadMode::ReadIndex));
    cluster.elect(0);
    cluster.request(0, 1, 0, put("a"));
    let last = cluster.node(0).log().last_index();
    cluster.isolated.extend([NodeId(1), NodeId(2)]);
    cluster.request(0, 2, 0, get());
    assert!(
        !cluster
            .replies
            .iter()
            .any(|(_, client, _)| *client == ClientId(2)),
        "no majority confirmed the leadership yet"
    );
    cluster.isolated.clear();
    cluster.fire(0, RaftTimer::Heartbeat);
    let answer = cluster
        .replies
        .iter()
        .find(|(_, client, _)| *client == ClientId(2))
        .map(|(_, _, response)| response.result.clone());
    assert_eq!(answer, Some(value("a")));
    assert_eq!(
        cluster.node(0).log().last_index(),
        last,
        "no entry for a read"
    );
    // A follower serves a read itself with the leader's read index, without a log entry.
    cluster.request(1, 3, 0, get());
    let answer = cluster
        .replies
        .last()
        .map(|(from, client, response)| (*from, *client, response.result.clone()));
    assert_eq!(answer, Some((NodeId(1), ClientId(3), value("a"))));
    assert_eq!(cluster.node(0).log().last_index(), last);
}

#[test]
fn a_follower_that_does_not_serve_redirects_to_the_leader() {
    let mut cluster = Cluster::new(3, || {
        KvRaft::new(
            RaftVariant::Correct,
            RaftConfig {
                follower_serve: false,
                ..RaftConfig::default()
            },
        )
    });
    cluster.elect(0);
    for request in [get(), put("a")] {
        cluster.request(1, 3, 0, request);
        let redirect = cluster
            .replies
            .last()
            .map(|(_, _, response)| response.result.clone());
        assert_eq!(
            redirect,
            Some(Err(KvError::NotLeader {
                hint: Some(NodeId(0))
            }))
        );
    }
}

#[test]
fn a_follower_passes_a_write_to_the_leader_and_answers_it_once_applied() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    cluster.request(1, 4, 0, put("a"));
    // The leader committed it and announced the commit at once (no heartbeat needed):
    // the follower applied it and answered its client.
    assert_eq!(cluster.node(0).commit_index(), 2);
    assert_eq!(cluster.node(1).applied_index(), 2);
    let answers: Vec<&KvResponse> = cluster
        .replies
        .iter()
        .filter(|(from, client, _)| *from == NodeId(1) && *client == ClientId(4))
        .map(|(_, _, response)| response)
        .collect();
    assert_eq!(
        answers,
        vec![&KvResponse {
            sequence: 0,
            result: Ok(KvOutput::Done),
        }]
    );
}

/// Followers' acknowledgements to the leader are lost.
fn acknowledgement(from: NodeId, _: NodeId, message: &RaftMessage<SessionKv>) -> bool {
    from != NodeId(0) && matches!(message, RaftMessage::AppendReply { .. })
}

fn answers_to(cluster: &Cluster, node: u32, client: u64) -> Vec<Result<KvOutput, KvError>> {
    cluster
        .replies
        .iter()
        .filter(|(from, to, _)| *from == NodeId(node) && *to == ClientId(client))
        .map(|(_, _, response)| response.result.clone())
        .collect()
}

fn durable_hints(enabled: bool, read_mode: ReadMode) -> KvRaft {
    KvRaft::new(
        RaftVariant::Correct,
        RaftConfig {
            read_mode,
            durable_hints: enabled,
            ..RaftConfig::default()
        },
    )
}

/// n1 passes a write to the leader n0, which hears no follower's acknowledgement.
fn write_passed_on_unacknowledged(size: u32, make: fn() -> KvRaft) -> Cluster {
    let mut cluster = Cluster::new(size, make);
    cluster.elect(0);
    cluster.drop_if = Some(acknowledgement);
    cluster.request(1, 4, 0, put("a"));
    cluster
}

#[test]
fn a_follower_commits_a_write_it_passed_on_once_it_and_the_leader_hold_it() {
    for enabled in [true, false] {
        let make = if enabled {
            || durable_hints(true, ReadMode::ReadIndex)
        } else {
            || durable_hints(false, ReadMode::ReadIndex)
        };
        // The leader never hears that a follower holds the write, so it cannot count a
        // majority; n1 and the leader together are one.
        let cluster = write_passed_on_unacknowledged(3, make);
        assert_eq!(cluster.node(0).commit_index(), 1);
        assert_eq!(cluster.node(2).commit_index(), 1, "n2 passed nothing on");
        if enabled {
            assert_eq!(cluster.node(1).commit_index(), 2);
            assert_eq!(answers_to(&cluster, 1, 4), vec![Ok(KvOutput::Done)]);
            assert_eq!(cluster.hints_sent, 1);
        } else {
            assert_eq!(cluster.node(1).commit_index(), 1);
            assert!(answers_to(&cluster, 1, 4).is_empty());
        }
    }
}

#[test]
fn no_durable_hint_in_a_cluster_of_five() {
    let cluster = write_passed_on_unacknowledged(5, Cluster::correct);
    // Two copies of five are no majority: the leader sends no hint, and the follower
    // would not count one.
    assert_eq!(cluster.hints_sent, 0);
    assert_eq!(cluster.node(1).commit_index(), 1);
    assert!(answers_to(&cluster, 1, 4).is_empty());
}

#[test]
fn no_durable_hint_once_the_commit_covers_the_write() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    // The followers' acknowledgements arrive before the leader's own: the announcement
    // tells n1 of the commit, and a hint would say nothing new.
    let mut held = Vec::new();
    cluster.handle(NodeId(1), |node, ctx| {
        node.on_request(
            ClientId(4),
            KvRequest {
                sequence: 0,
                acknowledged_below: 0,
                command: put("a"),
            },
            ctx,
        )
    });
    while let Some((from, to, message)) = cluster.network.pop_front() {
        if from == NodeId(0) && to == NodeId(0) {
            held.push(message); // The leader's acknowledgement to itself, held back.
            continue;
        }
        cluster.handle(to, |node, ctx| node.on_message(from, message, ctx));
    }
    assert_eq!(cluster.node(1).commit_index(), 2);
    for message in held {
        cluster.network.push_back((NodeId(0), NodeId(0), message));
    }
    cluster.deliver_all();
    assert_eq!(cluster.hints_sent, 0);
    assert_eq!(answers_to(&cluster, 1, 4), vec![Ok(KvOutput::Done)]);
}

/// A follower n1 of a three-node cluster; returns it after `steps` (sender, message),
/// each handled in a context of its own.
fn follower_after(steps: Vec<(u32, RaftMessage<SessionKv>)>) -> KvRaft {
    let members = [NodeId(0), NodeId(1), NodeId(2)];
    let mut rng = Rng::new(5);
    let mut follower = Cluster::correct();
    let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
    follower.on_start(&mut ctx);
    for (from, message) in steps {
        let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
        follower.on_message(NodeId(from), message, &mut ctx);
    }
    follower
}

fn appends(term: u64, prev: (u64, u64), terms: &[u64], commit: u64) -> RaftMessage<SessionKv> {
    RaftMessage::AppendEntries {
        term,
        prev_index: prev.0,
        prev_term: prev.1,
        entries: terms
            .iter()
            .map(|&term| Entry {
                term,
                payload: Payload::Noop,
            })
            .collect(),
        commit,
        round: 0,
    }
}

fn durable(term: u64, index: u64) -> RaftMessage<SessionKv> {
    RaftMessage::Durable { term, index }
}

#[test]
fn durable_hints_count_only_entries_of_the_current_term_held_in_it() {
    let cases = [
        (
            "both copies durable in term 1: index 2 commits",
            vec![
                (0, appends(1, (0, 0), &[1, 1], 0)),
                (1, durable(1, 2)),
                (0, durable(1, 2)),
            ],
            2,
        ),
        (
            "its own copy was durable in term 1, but n2, leading term 2, replaced index 2: \
             the new entry's own copy is not known durable",
            vec![
                (0, appends(1, (0, 0), &[1, 1], 0)),
                (1, durable(1, 2)),
                (2, appends(2, (1, 1), &[2], 0)),
                (2, durable(2, 2)),
            ],
            0,
        ),
        (
            "entries of an earlier term are never committed by counting copies (5.4.2)",
            vec![
                (0, appends(1, (0, 0), &[1, 1], 0)),
                (2, appends(2, (2, 1), &[], 0)),
                (1, durable(2, 2)),
                (2, durable(2, 2)),
            ],
            0,
        ),
        (
            "a hint below the commit index leaves it where it is",
            vec![
                (0, appends(1, (0, 0), &[1, 1, 1], 3)),
                (1, durable(1, 2)),
                (0, durable(1, 2)),
            ],
            3,
        ),
        (
            "a hint from a node that does not lead counts for nothing",
            vec![
                (0, appends(1, (0, 0), &[1, 1], 0)),
                (1, durable(1, 2)),
                (2, durable(1, 2)),
            ],
            0,
        ),
    ];
    for (case, steps, commit) in cases {
        assert_eq!(follower_after(steps).commit_index(), commit, "{case}");
    }
}

#[test]
fn a_lease_read_on_the_leader_sees_a_write_a_follower_committed_first() {
    let mut cluster = Cluster::new(3, || durable_hints(true, ReadMode::Lease));
    cluster.elect(0);
    cluster.fire(0, RaftTimer::Heartbeat);
    assert!(cluster.node(0).lease_until().is_some());
    cluster.drop_if = Some(acknowledgement);
    cluster.request(1, 4, 0, put("a"));
    assert_eq!(answers_to(&cluster, 1, 4), vec![Ok(KvOutput::Done)]);
    // The leader still holds its lease but has not committed the write n1 answered: a
    // read it served from its own state now would miss that write.
    assert_eq!(cluster.node(0).commit_index(), 1);
    cluster.request(0, 5, 0, get());
    assert!(
        answers_to(&cluster, 0, 5).is_empty(),
        "answered a stale read"
    );
    cluster.drop_if = None;
    cluster.fire(0, RaftTimer::Heartbeat);
    assert_eq!(answers_to(&cluster, 0, 5), vec![value("a")]);
}

#[test]
fn a_write_passed_to_a_lost_leader_goes_to_the_next_one_and_executes_once() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    // n0 is cut off: the write n1 passes to it is lost.
    cluster.isolated.insert(NodeId(0));
    cluster.request(1, 4, 0, put("a"));
    // n2 takes over; n1 hears from it and passes the write on again.
    cluster.fire(1, RaftTimer::PromiseExpired);
    cluster.fire(2, RaftTimer::PromiseExpired);
    cluster.elect(2);
    cluster.fire(2, RaftTimer::Heartbeat);
    cluster.fire(2, RaftTimer::Heartbeat);
    let answers: Vec<&KvResponse> = cluster
        .replies
        .iter()
        .filter(|(from, client, _)| *from == NodeId(1) && *client == ClientId(4))
        .map(|(_, _, response)| response)
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(answers[0].result, Ok(KvOutput::Done));
    // The client retries at n1 (its answer was lost, say): the session answers again
    // without a second execution.
    let entries_before = cluster.node(2).log().last_index();
    cluster.request(1, 4, 0, put("a"));
    cluster.fire(2, RaftTimer::Heartbeat);
    assert_eq!(cluster.node(2).log().last_index(), entries_before + 1);
    let written = cluster
        .replies
        .iter()
        .filter(|(from, client, response)| {
            *from == NodeId(1) && *client == ClientId(4) && response.result.is_ok()
        })
        .count();
    assert_eq!(written, 2);
    cluster.request(2, 5, 0, get());
    assert_eq!(
        cluster
            .replies
            .last()
            .map(|(_, _, response)| response.result.clone()),
        Some(value("a"))
    );
}

#[test]
fn a_new_leader_proposes_the_writes_it_had_passed_on() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    cluster.isolated.insert(NodeId(0));
    cluster.request(1, 4, 0, put("a"));
    cluster.fire(1, RaftTimer::PromiseExpired);
    cluster.fire(2, RaftTimer::PromiseExpired);
    cluster.elect(1);
    cluster.fire(1, RaftTimer::Heartbeat);
    let answers = cluster
        .replies
        .iter()
        .filter(|(from, client, response)| {
            *from == NodeId(1) && *client == ClientId(4) && response.result.is_ok()
        })
        .count();
    assert_eq!(answers, 1);
}

/// A follower with a read waiting; returns it, its context's effects and the read index
/// request's id. The follower has applied index 1 of term 1.
fn follower_with_a_read(variant: RaftVariant) -> (KvRaft, Rng, u64) {
    let members = [NodeId(0), NodeId(1), NodeId(2)];
    let mut rng = Rng::new(3);
    let mut follower = KvRaft::new(variant, RaftConfig::default());
    let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
    follower.on_start(&mut ctx);
    follower.on_message(
        NodeId(0),
        RaftMessage::AppendEntries {
            term: 1,
            prev_index: 0,
            prev_term: 0,
            entries: vec![Entry {
                term: 1,
                payload: Payload::Noop,
            }],
            commit: 1,
            round: 1,
        },
        &mut ctx,
    );
    let _ = ctx.into_effects();
    let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
    let request = KvRequest {
        sequence: 0,
        acknowledged_below: 0,
        command: get(),
    };
    follower.on_request(ClientId(9), request, &mut ctx);
    let asks: Vec<u64> = ctx
        .into_effects()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Send {
                to: NodeId(0),
                message: RaftMessage::ReadIndex { id },
                ..
            } => Some(id),
            Effect::Reply { .. } => panic!("answered before the leader named a read index"),
            _ => None,
        })
        .collect();
    assert_eq!(asks.len(), 1);
    (follower, rng, asks[0])
}

fn replies_of(ctx: Context<KvRaft>) -> Vec<KvResponse> {
    ctx.into_effects()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Reply { response, .. } => Some(response),
            _ => None,
        })
        .collect()
}

/// The leader names read index 2 (a write this follower has not received yet); the follower
/// answers once it applied it. Returns the answers given at each of the two steps.
fn follower_read_answers(variant: RaftVariant) -> (Vec<KvResponse>, Vec<KvResponse>) {
    let members = [NodeId(0), NodeId(1), NodeId(2)];
    let (mut follower, mut rng, id) = follower_with_a_read(variant);
    let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
    follower.on_message(
        NodeId(0),
        RaftMessage::ReadIndexReply {
            id: id ^ 1,
            index: 2,
        },
        &mut ctx,
    );
    assert!(
        replies_of(ctx).is_empty(),
        "a reply to another batch counted"
    );
    let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
    follower.on_message(
        NodeId(0),
        RaftMessage::ReadIndexReply { id, index: 2 },
        &mut ctx,
    );
    let first = replies_of(ctx);
    let write = KvRequest {
        sequence: 0,
        acknowledged_below: 0,
        command: put("a"),
    };
    let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
    follower.on_message(
        NodeId(0),
        RaftMessage::AppendEntries {
            term: 1,
            prev_index: 1,
            prev_term: 1,
            entries: vec![Entry {
                term: 1,
                payload: Payload::Command(<SessionKv as crate::replicated::StateMachine>::command(
                    ClientId(7),
                    write,
                    Time::ZERO,
                )),
            }],
            commit: 2,
            round: 2,
        },
        &mut ctx,
    );
    (first, replies_of(ctx))
}

#[test]
fn a_follower_answers_a_read_only_once_it_applied_the_read_index() {
    let (early, late) = follower_read_answers(RaftVariant::Correct);
    assert!(early.is_empty(), "answered before applying: {early:?}");
    assert_eq!(
        late.iter()
            .map(|response| response.result.clone())
            .collect::<Vec<_>>(),
        vec![value("a")]
    );
    // The broken variant answers at once, from a state without the write.
    let (early, _) = follower_read_answers(RaftVariant::EarlyFollowerRead);
    assert_eq!(
        early
            .iter()
            .map(|response| response.result.clone())
            .collect::<Vec<_>>(),
        vec![Ok(KvOutput::Value(None))]
    );
}

#[test]
fn reads_that_arrive_during_a_round_share_the_next_one() {
    let mut cluster = Cluster::new(3, || with_reads(ReadMode::ReadIndex));
    cluster.elect(0);
    cluster.request(0, 1, 0, put("a"));
    let round_before = cluster.node(0).heartbeat_round().expect("n0 leads");
    // Three reads arrive before any acknowledgement: one round for the first, one shared
    // by the other two once the first is confirmed.
    for client in 10..13 {
        let request = KvRequest {
            sequence: 0,
            acknowledged_below: 0,
            command: get(),
        };
        cluster.handle(NodeId(0), |node, ctx| {
            node.on_request(ClientId(client), request, ctx)
        });
    }
    cluster.deliver_all();
    let round_after = cluster.node(0).heartbeat_round().expect("n0 leads");
    assert_eq!(round_after, round_before + 2);
    let answered = cluster
        .replies
        .iter()
        .filter(|(_, client, response)| client.0 >= 10 && response.result == value("a"))
        .count();
    assert_eq!(answered, 3);
}

#[test]
fn a_lease_answers_locally_until_it_lapses() {
    let mut cluster = Cluster::new(3, || with_reads(ReadMode::Lease));
    cluster.elect(0);
    cluster.request(0, 1, 0, put("a"));
    cluster.fire(0, RaftTimer::Heartbeat);
    let lease = cluster.node(0).lease_until().expect("a lease");
    assert_eq!(lease, Time::ZERO + RaftConfig::default().lease_duration());
    cluster.isolated.extend([NodeId(1), NodeId(2)]);
    cluster.request(0, 2, 0, get());
    assert_eq!(
        cluster
            .replies
            .last()
            .map(|(_, client, response)| (*client, response.result.clone())),
        Some((ClientId(2), value("a"))),
        "served under the lease with no follower reachable"
    );
    cluster.now = lease;
    cluster.request(0, 3, 0, get());
    assert!(
        !cluster
            .replies
            .iter()
            .any(|(_, client, _)| *client == ClientId(3)),
        "a lapsed lease falls back to ReadIndex"
    );
}

#[test]
fn the_lease_shrinks_with_the_drift_bound() {
    let config = RaftConfig {
        election_timeout_min: Duration::from_millis(100),
        clock_drift_bound_ppm: 10_000,
        ..RaftConfig::default()
    };
    // 100 ms × 0.99 / 1.01.
    assert_eq!(config.lease_duration(), Duration::from_nanos(98_019_801));
    let none = RaftConfig {
        clock_drift_bound_ppm: 0,
        ..config
    };
    assert_eq!(none.lease_duration(), Duration::from_millis(100));
}

#[test]
fn figure_8_the_broken_leader_commits_an_entry_that_is_then_overwritten() {
    fn broken() -> KvRaft {
        KvRaft::new(RaftVariant::Figure8, RaftConfig::default())
    }
    // Term 1: n0 leads (n1 votes) and appends entry 1 alone.
    let mut cluster = Cluster::new(3, broken);
    cluster.checked = false;
    cluster.elect(0);
    cluster.isolated.extend([NodeId(1), NodeId(2)]);
    cluster.request(0, 1, 0, put("a"));
    cluster.depose(0);
    // Term 2: n1 leads with n2 and appends a different entry 1 alone.
    cluster.isolated = [NodeId(0)].into();
    cluster.fire(1, RaftTimer::PromiseExpired);
    cluster.fire(2, RaftTimer::PromiseExpired);
    cluster.elect(1);
    cluster.isolated = [NodeId(0), NodeId(2)].into();
    cluster.request(1, 2, 0, put("b"));
    cluster.depose(1);
    // Term 3: n0 leads with n2, copies its entry 1 (term 1) to n2 and counts it committed.
    cluster.isolated = [NodeId(1)].into();
    cluster.fire(0, RaftTimer::PromiseExpired);
    cluster.fire(2, RaftTimer::PromiseExpired);
    cluster.elect(0);
    cluster.fire(0, RaftTimer::Heartbeat);
    cluster.fire(0, RaftTimer::Heartbeat);
    assert_eq!(cluster.node(2).commit_index(), 1);
    // Term 4: n1 (last term 2) wins n2's vote and overwrites the "committed" entry.
    cluster.isolated = [NodeId(0)].into();
    cluster.fire(2, RaftTimer::PromiseExpired);
    cluster.elect(1);
    cluster.fire(1, RaftTimer::Heartbeat);
    let violation = cluster.node(2).violation().map(str::to_string);
    assert!(
        violation.is_some_and(|text| text.contains("overwrite committed entry 1")),
        "{:?}",
        cluster.node(2).violation()
    );
}

/// AppendEntries messages waiting in the network for `to`, with their entry counts.
fn appends_to(cluster: &Cluster, to: u32) -> Vec<usize> {
    cluster
        .network
        .iter()
        .filter_map(|(_, destination, message)| match message {
            RaftMessage::AppendEntries { entries, .. } if *destination == NodeId(to) => {
                Some(entries.len())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn replication_pipelines_up_to_the_window_then_batches() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    cluster.fire(0, RaftTimer::Heartbeat);
    // Followers are in replicate mode now: each write goes out at once, without waiting
    // for the acknowledgement of the previous one, until the window of four is full.
    for sequence in 0..10 {
        let request = KvRequest {
            sequence,
            acknowledged_below: sequence,
            command: put("x"),
        };
        cluster.handle(NodeId(0), |node, ctx| {
            node.on_request(ClientId(1), request, ctx)
        });
    }
    let window = RaftConfig::default().inflight_messages_max;
    assert_eq!(appends_to(&cluster, 1), vec![1; window]);
    // The acknowledgements open the window: the six waiting writes leave in one batch.
    cluster.deliver_all();
    assert_eq!(cluster.node(0).commit_index(), 11);
    assert_eq!(cluster.node(1).log().last_index(), 11);
}

#[test]
fn a_follower_in_probe_mode_gets_one_append_per_heartbeat() {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.isolated.insert(NodeId(2));
    cluster.elect(0);
    cluster.isolated.clear();
    // n2 never answered, so n0 does not know where its log ends: it probes.
    for sequence in 0..3 {
        let request = KvRequest {
            sequence,
            acknowledged_below: sequence,
            command: put("x"),
        };
        cluster.handle(NodeId(0), |node, ctx| {
            node.on_request(ClientId(1), request, ctx)
        });
    }
    assert!(appends_to(&cluster, 2).is_empty(), "a probe is outstanding");
    cluster.handle(NodeId(0), |node, ctx| {
        node.on_timer(RaftTimer::Heartbeat, ctx)
    });
    assert_eq!(appends_to(&cluster, 2).len(), 1);
    cluster.deliver_all();
    assert_eq!(cluster.node(2).log().last_index(), 4);
}

#[test]
fn batches_respect_the_entry_and_byte_limits() {
    fn small_batches() -> KvRaft {
        KvRaft::new(
            RaftVariant::Correct,
            RaftConfig {
                append_entries_max: 3,
                ..RaftConfig::default()
            },
        )
    }
    let mut cluster = Cluster::new(3, small_batches);
    cluster.elect(0);
    cluster.isolated.insert(NodeId(2));
    for sequence in 0..7 {
        cluster.request(0, 1, sequence, put("x"));
    }
    cluster.isolated.clear();
    cluster.handle(NodeId(0), |node, ctx| {
        node.on_timer(RaftTimer::Heartbeat, ctx)
    });
    // The probe of n2 is refused with a hint; the resend carries at most three entries.
    let mut largest = 0;
    while let Some((from, to, message)) = cluster.network.pop_front() {
        if let RaftMessage::AppendEntries { entries, .. } = &message {
            largest = largest.max(entries.len());
        }
        cluster.handle(to, |node, ctx| node.on_message(from, message, ctx));
    }
    assert_eq!(largest, 3);
    assert_eq!(cluster.node(2).log().last_index(), 8);
}

/// A counter whose reads may be served by any replica (serializable).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct Counter {
    total: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
enum CounterRequest {
    Add(u64),
    ReadAny,
}

impl crate::replicated::StateMachine for Counter {
    type Request = CounterRequest;
    type Response = Option<u64>;
    type Command = (ClientId, u64);

    fn command(client: ClientId, request: CounterRequest, _now: Time) -> (ClientId, u64) {
        match request {
            CounterRequest::Add(amount) => (client, amount),
            CounterRequest::ReadAny => (client, 0),
        }
    }

    fn apply(&mut self, command: &(ClientId, u64)) -> Option<(ClientId, Option<u64>)> {
        self.total += command.1;
        Some((command.0, Some(self.total)))
    }

    fn redirect(_request: &CounterRequest, _leader: Option<NodeId>) -> Option<u64> {
        None
    }

    fn read_consistency(request: &CounterRequest) -> Option<crate::replicated::ReadConsistency> {
        (*request == CounterRequest::ReadAny)
            .then_some(crate::replicated::ReadConsistency::Serializable)
    }

    fn query(&self, _client: ClientId, _request: &CounterRequest) -> Option<u64> {
        Some(self.total)
    }
}

#[test]
fn a_serializable_read_is_answered_by_any_replica_from_its_applied_state() {
    type CounterRaft = RaftNode<Counter>;
    let members = [NodeId(0), NodeId(1), NodeId(2)];
    let mut rng = Rng::new(3);
    let mut follower = CounterRaft::new(RaftVariant::Correct, RaftConfig::default());
    let mut ctx = Context::new(NodeId(1), &members, Time::ZERO, &mut rng);
    follower.on_start(&mut ctx);
    // The leader of term 1 replicates and commits one addition.
    follower.on_message(
        NodeId(0),
        RaftMessage::AppendEntries {
            term: 1,
            prev_index: 0,
            prev_term: 0,
            entries: vec![Entry {
                term: 1,
                payload: Payload::Command((ClientId(5), 7)),
            }],
            commit: 1,
            round: 1,
        },
        &mut ctx,
    );
    assert_eq!(follower.applied_index(), 1);
    follower.on_request(ClientId(9), CounterRequest::ReadAny, &mut ctx);
    follower.on_request(ClientId(9), CounterRequest::Add(1), &mut ctx);
    let replies: Vec<Option<u64>> = ctx
        .into_effects()
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Reply { response, .. } => Some(response),
            _ => None,
        })
        .collect();
    // The read is served locally; the write goes to the leader, unanswered for now.
    assert_eq!(replies, vec![Some(7)]);
}

/// n0, n1 and n2 vote; n3 and n4 wait outside the cluster.
fn three_of_five() -> KvRaft {
    Cluster::correct().with_voters([NodeId(0), NodeId(1), NodeId(2)])
}

/// Like [`three_of_five`], compacting every four applied entries in 8-byte chunks.
fn three_of_five_compacting() -> KvRaft {
    compacting().with_voters([NodeId(0), NodeId(1), NodeId(2)])
}

fn ids(list: &[u32]) -> BTreeSet<NodeId> {
    list.iter().copied().map(NodeId).collect()
}

impl Cluster {
    /// Proposes `changes` on `id` (messages stay queued).
    fn propose(&mut self, id: u32, changes: &[MembershipChange]) -> Result<u64, MembershipError> {
        let mut result = Err(MembershipError::NoChange);
        self.handle(NodeId(id), |node, ctx| {
            result = node.propose_membership_change(changes, ctx);
        });
        result
    }

    /// Like [`Cluster::propose`], recording `addresses` with the change.
    fn propose_with(
        &mut self,
        id: u32,
        changes: &[MembershipChange],
        addresses: &[(u32, &str)],
    ) -> Result<u64, MembershipError> {
        let addresses = addresses
            .iter()
            .map(|&(node, address)| (NodeId(node), address.to_string()))
            .collect();
        let mut result = Err(MembershipError::NoChange);
        self.handle(NodeId(id), |node, ctx| {
            result = node.propose_membership_change_with(changes, &addresses, ctx);
        });
        result
    }

    fn transfer(&mut self, id: u32, target: u32) -> Result<(), MembershipError> {
        let mut result = Err(MembershipError::NoChange);
        self.handle(NodeId(id), |node, ctx| {
            result = node.transfer_leadership(NodeId(target), ctx);
        });
        result
    }
}

#[test]
fn section_4_3_learners_replicate_but_never_campaign_and_are_promoted_once_in_sync() {
    let mut cluster = Cluster::new(5, three_of_five);
    // Nodes outside the configuration do not campaign.
    cluster.fire(3, RaftTimer::Election);
    assert_eq!(cluster.node(3).term(), 0);
    cluster.elect(0);
    assert_eq!(
        cluster.propose(0, &[MembershipChange::AddLearner(NodeId(3))]),
        Ok(2)
    );
    cluster.deliver_all();
    assert!(cluster.node(3).membership().is_learner(NodeId(3)));
    assert_eq!(
        cluster.node(3).log().last_index(),
        2,
        "the learner replicates"
    );
    cluster.fire(3, RaftTimer::PromiseExpired);
    cluster.fire(3, RaftTimer::Election);
    assert_eq!(cluster.node(3).term(), 1, "a learner never campaigns");
    // A learner cut off while the log grows lags too far behind to be promoted.
    assert!(
        cluster
            .propose(0, &[MembershipChange::AddLearner(NodeId(4))])
            .is_ok()
    );
    cluster.deliver_all();
    cluster.isolated.insert(NodeId(4));
    for sequence in 0..70 {
        cluster.request(0, 1, sequence, put(&format!("v{sequence}")));
    }
    let refused = cluster.propose(0, &[MembershipChange::Promote(NodeId(4))]);
    assert!(
        matches!(
            refused,
            Err(MembershipError::LearnerBehind {
                learner: NodeId(4),
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(
        refused
            .expect_err("refused")
            .to_string()
            .contains("can only promote a learner that is in sync")
    );
    cluster.isolated.clear();
    for _ in 0..10 {
        cluster.fire(0, RaftTimer::Heartbeat);
    }
    // Promoting goes through the joint configuration, which the leader leaves by itself.
    let joint = cluster
        .propose(0, &[MembershipChange::Promote(NodeId(4))])
        .expect("the learner caught up");
    assert_eq!(cluster.node(0).membership().outgoing, ids(&[0, 1, 2]));
    assert_eq!(cluster.node(0).membership().voters, ids(&[0, 1, 2, 4]));
    // One change at a time.
    assert_eq!(
        cluster.propose(0, &[MembershipChange::Promote(NodeId(3))]),
        Err(MembershipError::ChangeInProgress { index: joint })
    );
    cluster.deliver_all();
    cluster.fire(0, RaftTimer::Heartbeat);
    for id in 0..5 {
        let membership = cluster.node(id).membership();
        assert!(!membership.is_joint(), "n{id}: {membership:?}");
        assert_eq!(membership.voters, ids(&[0, 1, 2, 4]));
        assert_eq!(membership.learners, ids(&[3]));
    }
    assert_eq!(cluster.node(0).membership_index(), joint + 1);
    assert!(cluster.node(0).commit_index() > joint);
}

#[test]
fn section_4_2_2_a_removed_leader_steps_down_once_the_new_configuration_commits() {
    let mut cluster = Cluster::new(5, three_of_five);
    cluster.elect(0);
    // Replace n0 and n1 by n3 and n4: both voter sets change, so the change is joint.
    let changes = [
        MembershipChange::Remove(NodeId(0)),
        MembershipChange::Remove(NodeId(1)),
        MembershipChange::AddVoter(NodeId(3)),
        MembershipChange::AddVoter(NodeId(4)),
    ];
    let joint = cluster.propose(0, &changes).expect("accepted");
    assert!(
        cluster.node(0).is_leader(),
        "it leads through the joint phase"
    );
    assert!(cluster.node(0).membership().is_joint());
    cluster.deliver_all();
    cluster.fire(0, RaftTimer::Heartbeat);
    assert!(cluster.node(0).commit_index() > joint);
    assert!(!cluster.node(0).is_leader(), "it stepped down");
    assert_eq!(cluster.node(0).membership().voters, ids(&[2, 3, 4]));
    // The removed node never campaigns again; the new voters elect one of theirs.
    cluster.fire(0, RaftTimer::PromiseExpired);
    cluster.fire(0, RaftTimer::Election);
    assert!(!cluster.node(0).is_leader());
    for id in [2, 4] {
        cluster.fire(id, RaftTimer::PromiseExpired);
    }
    cluster.elect(3);
    cluster.request(3, 1, 0, put("after"));
    assert!(cluster.node(3).commit_index() > joint + 1);
}

/// n0 leads, committed a write from client 1, and hands its leadership to n2, which is cut
/// off: the transfer stays under way.
fn transferring_to_a_cut_off_member() -> Cluster {
    let mut cluster = Cluster::new(3, Cluster::correct);
    cluster.elect(0);
    cluster.request(0, 1, 0, put("a"));
    cluster.isolated.insert(NodeId(2));
    assert_eq!(cluster.transfer(0, 2), Ok(()));
    assert_eq!(cluster.node(0).transfer_target(), Some(NodeId(2)));
    cluster
}

#[test]
fn section_3_10_leadership_transfer_hands_over_and_aborts_after_a_timeout() {
    // The target is cut off: the transfer waits, proposals are refused meanwhile.
    let mut cluster = transferring_to_a_cut_off_member();
    assert_eq!(
        cluster.transfer(0, 1),
        Err(MembershipError::TransferInProgress(NodeId(2)))
    );
    assert_eq!(
        cluster.propose(0, &[MembershipChange::Remove(NodeId(1))]),
        Err(MembershipError::TransferInProgress(NodeId(2)))
    );
    let commit = cluster.node(0).commit_index();
    cluster.request(0, 1, 1, put("b"));
    assert_eq!(
        cluster.node(0).commit_index(),
        commit,
        "a proposal was taken"
    );
    // After the longest election timeout it gives up and takes proposals again.
    cluster.now = cluster.now + RaftConfig::default().election_timeout_max;
    cluster.fire(0, RaftTimer::Heartbeat);
    assert_eq!(cluster.node(0).transfer_target(), None);
    cluster.request(0, 1, 1, put("b"));
    assert!(cluster.node(0).commit_index() > commit);
    // Reachable, the target takes over at once, though every voter heard from n0 lately
    // (it skips the pre-vote and the followers' promise).
    cluster.isolated.clear();
    cluster.fire(0, RaftTimer::Heartbeat);
    assert_eq!(cluster.transfer(0, 2), Ok(()));
    cluster.deliver_all();
    assert!(cluster.node(2).is_leader());
    assert_eq!(cluster.node(2).term(), 2);
    assert!(!cluster.node(0).is_leader());
    assert_eq!(
        cluster.transfer(1, 0),
        Err(MembershipError::NotLeader {
            leader: Some(NodeId(2))
        })
    );
    // A learner cannot be a target.
    assert_eq!(
        cluster.transfer(2, 7),
        Err(MembershipError::TargetNotVoter(NodeId(7)))
    );
}

#[test]
fn configurations_survive_restarts_and_travel_in_snapshots() {
    let mut cluster = Cluster::new(5, three_of_five_compacting);
    cluster.elect(0);
    assert!(
        cluster
            .propose(0, &[MembershipChange::AddLearner(NodeId(3))])
            .is_ok()
    );
    cluster.deliver_all();
    assert!(
        cluster
            .propose(0, &[MembershipChange::Promote(NodeId(3))])
            .is_ok()
    );
    cluster.deliver_all();
    cluster.fire(0, RaftTimer::Heartbeat);
    let expected = cluster.node(0).membership().clone();
    assert_eq!(expected.voters, ids(&[0, 1, 2, 3]));
    // Compact the configuration entries away, then restart a voter from its checkpoint.
    for sequence in 0..10 {
        cluster.request(0, 1, sequence, put(&format!("v{sequence}")));
    }
    assert!(
        cluster.node(1).log_memberships().is_empty(),
        "no configuration entry is retained"
    );
    cluster.crash(1);
    cluster.restart(1);
    assert_eq!(cluster.node(1).membership(), &expected);
    // A node added now learns the configuration from an InstallSnapshot.
    assert!(
        cluster
            .propose(0, &[MembershipChange::AddLearner(NodeId(4))])
            .is_ok()
    );
    for _ in 0..40 {
        cluster.fire(0, RaftTimer::Heartbeat);
    }
    assert!(cluster.chunks_delivered > 0);
    let mut with_four = expected.clone();
    with_four.learners.insert(NodeId(4));
    assert_eq!(cluster.node(4).membership(), &with_four);
    assert_eq!(cluster.node(4).state(), cluster.node(0).state());
    cluster.crash(4);
    cluster.restart(4);
    assert_eq!(cluster.node(4).membership(), &with_four);
}

/// Replaces n1 and n2 by n3 and n4 on leader n0, letting only n3 and n4 hear of it; then
/// n1 and n2, and separately n3 and n4, hold elections. Returns the leaders of term 2.
fn replace_two_voters_and_split(change: ChangeVariant) -> Vec<u32> {
    fn make_joint() -> KvRaft {
        three_of_five()
    }
    fn make_single() -> KvRaft {
        three_of_five().with_change_variant(ChangeVariant::SingleStep)
    }
    let make = match change {
        ChangeVariant::Joint => make_joint,
        ChangeVariant::SingleStep => make_single,
    };
    let mut cluster = Cluster::new(5, make);
    cluster.checked = false;
    cluster.elect(0);
    for id in [3, 4] {
        assert!(
            cluster
                .propose(0, &[MembershipChange::AddLearner(NodeId(id))])
                .is_ok()
        );
        cluster.deliver_all();
        cluster.fire(0, RaftTimer::Heartbeat);
    }
    let changes = [
        MembershipChange::Promote(NodeId(3)),
        MembershipChange::Promote(NodeId(4)),
        MembershipChange::Remove(NodeId(1)),
        MembershipChange::Remove(NodeId(2)),
    ];
    assert!(cluster.propose(0, &changes).is_ok());
    cluster
        .network
        .retain(|(_, to, _)| *to == NodeId(3) || *to == NodeId(4));
    cluster.deliver_all();
    // The old voters n1 and n2 elect one of theirs, cut off from everyone else.
    cluster.isolated = ids(&[0, 3, 4]);
    for id in 0..5 {
        cluster.fire(id, RaftTimer::PromiseExpired);
    }
    cluster.fire(1, RaftTimer::Election);
    // So do n3 and n4, cut off from the old voters.
    cluster.isolated = ids(&[0, 1, 2]);
    cluster.fire(3, RaftTimer::Election);
    cluster.fire(3, RaftTimer::Election);
    (0..5)
        .filter(|&id| cluster.node(id).is_leader() && cluster.node(id).term() == 2)
        .collect()
}

#[test]
fn section_4_3_a_single_step_change_of_two_voters_elects_two_leaders_in_one_term() {
    assert_eq!(
        replace_two_voters_and_split(ChangeVariant::SingleStep),
        vec![1, 3],
        "an old majority and a new majority each elected a leader of term 2"
    );
    // Joint consensus: n3 and n4 also need a majority of the old voters, so only n1 leads.
    assert_eq!(replace_two_voters_and_split(ChangeVariant::Joint), vec![1]);
}

#[test]
fn a_joined_member_that_wins_an_election_describes_itself_without_a_joint_phase() {
    let mut cluster = Cluster::new(5, three_of_five);
    cluster.elect(0);
    assert!(
        cluster
            .propose_with(
                0,
                &[MembershipChange::AddLearner(NodeId(3))],
                &[(3, "peer")]
            )
            .is_ok()
    );
    cluster.deliver_all();
    assert!(
        cluster
            .propose(0, &[MembershipChange::Promote(NodeId(3))])
            .is_ok()
    );
    cluster.deliver_all();
    cluster.fire(0, RaftTimer::Heartbeat);
    // The leader is lost right after the promotion; the newcomer wins the next term.
    cluster.crash(0);
    for follower in [1, 2] {
        cluster.fire(follower, RaftTimer::PromiseExpired);
    }
    cluster.elect(3);
    // Once its term has an entry committed, it records its own address anew (only
    // members can be described).
    let voters = cluster.node(3).membership().voters.clone();
    assert_eq!(voters, ids(&[0, 1, 2, 3]));
    cluster.fire(3, RaftTimer::Heartbeat);
    assert_eq!(
        cluster.propose_with(3, &[MembershipChange::Describe(NodeId(9))], &[(9, "x")]),
        Err(MembershipError::NotMember(NodeId(9)))
    );
    assert!(
        cluster
            .propose_with(
                3,
                &[MembershipChange::Describe(NodeId(3))],
                &[(3, "peer+client")]
            )
            .is_ok()
    );
    cluster.fire(3, RaftTimer::Heartbeat);
    cluster.fire(3, RaftTimer::Heartbeat);
    for id in [1, 2, 3] {
        let membership = cluster.node(id).membership();
        assert!(!membership.is_joint(), "n{id} never entered a joint phase");
        assert_eq!(membership.voters, voters);
        assert_eq!(
            membership.addresses.get(&NodeId(3)).map(String::as_str),
            Some("peer+client")
        );
        assert!(cluster.node(id).commit_index() >= cluster.node(3).membership_index());
    }
}

#[test]
fn applied_digests_chain_every_entry_unless_turned_off() {
    fn without_digests() -> KvRaft {
        KvRaft::new(
            RaftVariant::Correct,
            RaftConfig {
                applied_digests: false,
                ..RaftConfig::default()
            },
        )
    }
    let mut with = Cluster::new(3, Cluster::correct);
    let mut without = Cluster::new(3, without_digests);
    for cluster in [&mut with, &mut without] {
        cluster.elect(0);
        cluster.request(0, 1, 1, put("a"));
        cluster.request(0, 1, 2, put("b"));
        cluster.fire(0, RaftTimer::Heartbeat);
    }
    for id in 0..3 {
        let (digesting, plain) = (with.node(id), without.node(id));
        assert_eq!(digesting.applied_index(), plain.applied_index());
        assert!(digesting.applied_index() >= 3, "the puts were applied");
        // Replicas that applied the same prefix agree on its digest, and each applied
        // index has its own.
        assert_eq!(digesting.applied_digest(), with.node(0).applied_digest());
        assert_ne!(digesting.applied_digest(), 0);
        assert_eq!(
            digesting.applied_digests().len() as u64,
            digesting.applied_index()
        );
        assert_eq!(plain.applied_digest(), 0);
        assert!(plain.applied_digests().is_empty());
    }
}

fn announcing_after(delay: Duration, read_mode: ReadMode) -> KvRaft {
    KvRaft::new(
        RaftVariant::Correct,
        RaftConfig {
            read_mode,
            commit_announce_delay: delay,
            ..RaftConfig::default()
        },
    )
}

fn commits(cluster: &Cluster) -> Vec<u64> {
    cluster
        .running()
        .map(|(_, node)| node.commit_index())
        .collect()
}

#[test]
fn a_commit_is_announced_after_the_delay_unless_it_is_zero() {
    let lazy = || announcing_after(Duration::from_millis(1), ReadMode::ReadIndex);
    let eager = || announcing_after(Duration::ZERO, ReadMode::ReadIndex);
    for (make, announced_at_once) in [(lazy as fn() -> KvRaft, false), (eager, true)] {
        let mut cluster = Cluster::new(3, make);
        cluster.elect(0);
        if !announced_at_once {
            assert_eq!(commits(&cluster), vec![1, 0, 0], "the no-op's commit waits");
        }
        let timers = if announced_at_once { 0 } else { 1 };
        let timers_set = |cluster: &Cluster| cluster.announce_timers.get(&NodeId(0)).copied();
        assert_eq!(timers_set(&cluster).unwrap_or(0), timers);
        cluster.request(0, 4, 0, put("a"));
        // The put's append carried the no-op's commit; only the announcement carries the
        // put's.
        let told = if announced_at_once { 2 } else { 1 };
        assert_eq!(commits(&cluster), vec![2, told, told]);
        cluster.request(0, 4, 1, put("b"));
        assert_eq!(
            commits(&cluster),
            vec![3, told + 1, told + 1],
            "the next append"
        );
        // One timer covers every commit until it fires.
        assert_eq!(timers_set(&cluster).unwrap_or(0), timers);
        let heartbeats = cluster.empty_appends.clone();
        cluster.fire(0, RaftTimer::Announce);
        assert_eq!(commits(&cluster), vec![3, 3, 3]);
        let told_now = if announced_at_once { 0 } else { 1 };
        for follower in [NodeId(1), NodeId(2)] {
            let before = heartbeats.get(&follower).copied().unwrap_or(0);
            assert_eq!(cluster.empty_appends[&follower], before + told_now);
        }
        // Nothing left to tell: a second firing sends nothing.
        let heartbeats = cluster.empty_appends.clone();
        cluster.fire(0, RaftTimer::Announce);
        assert_eq!(cluster.empty_appends, heartbeats);
        cluster.request(0, 4, 2, put("c"));
        assert_eq!(
            timers_set(&cluster).unwrap_or(0),
            2 * timers,
            "set again once fired"
        );
    }
}

#[test]
fn a_follower_given_a_read_index_is_told_the_commit_at_once() {
    for read_mode in [ReadMode::ReadIndex, ReadMode::Lease] {
        let mut cluster = Cluster::new(
            3,
            if read_mode == ReadMode::Lease {
                || announcing_after(Duration::from_secs(1), ReadMode::Lease)
            } else {
                || announcing_after(Duration::from_secs(1), ReadMode::ReadIndex)
            },
        );
        cluster.elect(0);
        cluster.fire(0, RaftTimer::Heartbeat);
        cluster.request(0, 4, 0, put("a"));
        assert_eq!(commits(&cluster), vec![2, 1, 1]);
        // n1's read index is 2, which only an announcement tells it: no timer fires.
        cluster.request(1, 5, 0, get());
        assert_eq!(
            answers_to(&cluster, 1, 5),
            vec![value("a")],
            "{read_mode:?}"
        );
        // ReadIndex confirms the leadership with a heartbeat round, which tells everyone;
        // under the lease the leader answers at once and tells n1 alone.
        let n2 = if read_mode == ReadMode::Lease { 1 } else { 2 };
        assert_eq!(commits(&cluster), vec![2, 2, n2], "{read_mode:?}");
    }
}

#[test]
fn a_follower_that_passed_a_write_on_is_told_the_commit_at_once_without_a_hint() {
    let lazy = || announcing_after(Duration::from_secs(1), ReadMode::ReadIndex);
    // Five voters: two durable copies are no majority, so no hint covers the write.
    let mut cluster = Cluster::new(5, lazy);
    cluster.elect(0);
    cluster.request(1, 4, 0, put("a"));
    assert_eq!(cluster.hints_sent, 0);
    assert_eq!(answers_to(&cluster, 1, 4), vec![Ok(KvOutput::Done)]);
    assert_eq!(commits(&cluster), vec![2, 2, 1, 1, 1]);
}

#[test]
fn a_durable_hint_spares_the_follower_that_passed_a_write_on_an_announcement() {
    let lazy = || announcing_after(Duration::from_secs(1), ReadMode::ReadIndex);
    for (size, hints, announced) in [(3, 1, 0), (5, 0, 1)] {
        let mut cluster = Cluster::new(size, lazy);
        cluster.elect(0);
        let before = cluster.empty_appends.clone();
        cluster.request(1, 4, 0, put("a"));
        assert_eq!(cluster.hints_sent, hints);
        assert_eq!(answers_to(&cluster, 1, 4), vec![Ok(KvOutput::Done)]);
        let count = |appends: &BTreeMap<NodeId, usize>| appends.get(&NodeId(1)).copied();
        assert_eq!(
            count(&cluster.empty_appends).unwrap_or(0),
            count(&before).unwrap_or(0) + announced,
            "{size} voters"
        );
    }
}

#[test]
fn a_leader_handing_over_names_no_read_index() {
    // n2 cannot take over while cut off: the transfer stays under way.
    let mut cluster = transferring_to_a_cut_off_member();
    cluster.request(1, 5, 0, get());
    assert!(
        answers_to(&cluster, 1, 5).is_empty(),
        "a leader about to step down confirmed a read"
    );
}
