//! Raft's safety properties (§5.2–5.4 of the paper) as checks over node states, cheap
//! enough to run after every simulated event and in every model-checker state.
//!
//! Each check takes the running nodes with their ids and returns a description of the
//! first violation. [`check_all`] runs every check; [`ElectionHistory`] adds the part of
//! election safety that needs memory (a leader that crashed still counts for its term).

use super::node::RaftNode;
use crate::replicated::StateMachine;
use std::collections::BTreeMap;
use synod_core::node::NodeId;

/// Indexes at the end of two logs' overlap compared by the log-matching check.
const LOG_MATCHING_WINDOW_ENTRIES: u64 = 64;

/// Every check below, and any violation a node noticed itself (e.g. a follower asked to
/// overwrite an entry it knows committed).
pub fn check_all<'a, S: StateMachine + 'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
) -> Result<(), String> {
    let nodes: Vec<(NodeId, &RaftNode<S>)> = nodes.into_iter().collect();
    for (id, node) in &nodes {
        if let Some(violation) = node.violation() {
            return Err(format!("{id}: {violation}"));
        }
    }
    check_election_safety(nodes.iter().copied())?;
    check_log_matching(nodes.iter().copied())?;
    check_leader_completeness(nodes.iter().copied())?;
    check_state_machine_safety(nodes.iter().copied())?;
    check_membership(nodes.iter().copied(), None)
}

/// Membership changes:
/// - every configuration has a voter, and no node is both voter and learner;
/// - at most one configuration change is uncommitted: no log holds more than one
///   configuration entry above the committed index (checked only given
///   `committed_floor`, an index known committed, because a stateless check over running
///   nodes may miss what crashed nodes alone knew committed; the highest commit index
///   among the nodes counts too);
/// - a leader is a voter of its configuration unless the configuration that removed it is
///   still uncommitted (once it commits, the leader steps down);
/// - joint majorities: a leader that committed an entry of its term holds its commit
///   index with a quorum of its configuration (a majority of both voter sets while joint)
///   whenever that configuration is itself committed.
pub fn check_membership<'a, S: StateMachine + 'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
    committed_floor: Option<u64>,
) -> Result<(), String> {
    let nodes: Vec<(NodeId, &RaftNode<S>)> = nodes.into_iter().collect();
    let committed = committed_floor.map(|floor| {
        nodes
            .iter()
            .map(|(_, node)| node.commit_index())
            .fold(floor, u64::max)
    });
    for (id, node) in &nodes {
        let membership = node.membership();
        if membership.voters.is_empty() {
            return Err(format!("{id} holds a configuration without voters"));
        }
        if let Some(both) = membership
            .learners
            .iter()
            .find(|learner| membership.is_voter(**learner))
        {
            return Err(format!("{id}: {both} is both a voter and a learner"));
        }
        let uncommitted = committed.map_or(0, |committed| {
            node.log_memberships().range(committed + 1..).count()
        });
        if let Some(committed) = committed
            && uncommitted > 1
        {
            return Err(format!(
                "{id} holds {uncommitted} configuration entries above the committed index \
                 {committed}: {:?}",
                node.log_memberships()
                    .range(committed + 1..)
                    .collect::<Vec<_>>()
            ));
        }
        if !node.is_leader() {
            continue;
        }
        let config_committed = node.membership_index() <= node.commit_index();
        if !membership.is_voter(*id) && config_committed {
            return Err(format!(
                "{id} still leads term {} though its committed configuration removed it",
                node.term()
            ));
        }
        if let Some(quorum) = node.quorum_match_index()
            && config_committed
            && node
                .term_start_index()
                .is_some_and(|start| node.membership_index() >= start)
            && quorum < node.commit_index()
        {
            return Err(format!(
                "leader {id} committed {} but a quorum of {membership:?} holds only {quorum}",
                node.commit_index()
            ));
        }
    }
    Ok(())
}

/// Remembers the highest commit index ever seen, so that the membership check still knows
/// an index committed when every node that knew it has crashed.
#[derive(Clone, Debug, Default)]
pub struct MembershipHistory {
    committed: u64,
}

impl MembershipHistory {
    /// An empty history.
    pub fn new() -> Self {
        MembershipHistory::default()
    }

    /// Runs [`check_membership`] with the highest commit index seen so far.
    pub fn observe<'a, S: StateMachine + 'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
    ) -> Result<(), String> {
        let nodes: Vec<(NodeId, &RaftNode<S>)> = nodes.into_iter().collect();
        for (_, node) in &nodes {
            self.committed = self.committed.max(node.commit_index());
        }
        check_membership(nodes, Some(self.committed))
    }
}

/// Election safety among the given nodes: at most one leader per term.
pub fn check_election_safety<'a, S: StateMachine + 'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
) -> Result<(), String> {
    let mut leaders: BTreeMap<u64, NodeId> = BTreeMap::new();
    for (id, node) in nodes {
        if !node.is_leader() {
            continue;
        }
        if let Some(other) = leaders.insert(node.term(), id) {
            return Err(format!(
                "two leaders in term {}: {other} and {id}",
                node.term()
            ));
        }
    }
    Ok(())
}

/// Log matching: where two logs hold entries of the same term at an index, they hold the
/// same entry there and agree on the term of every earlier index (checked over the last
/// `LOG_MATCHING_WINDOW_ENTRIES` (64) indexes both still retain).
pub fn check_log_matching<'a, S: StateMachine + 'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
) -> Result<(), String> {
    let nodes: Vec<(NodeId, &RaftNode<S>)> = nodes.into_iter().collect();
    for (position, (left_id, left)) in nodes.iter().enumerate() {
        for (right_id, right) in &nodes[position + 1..] {
            let (left_log, right_log) = (left.log(), right.log());
            let high = left_log.last_index().min(right_log.last_index());
            let low = left_log
                .snapshot_index()
                .max(right_log.snapshot_index())
                .max(high.saturating_sub(LOG_MATCHING_WINDOW_ENTRIES))
                .max(1);
            let mut matched_at = None;
            for index in (low..=high).rev() {
                let (Some(left_term), Some(right_term)) =
                    (left_log.term(index), right_log.term(index))
                else {
                    continue;
                };
                if left_term != right_term {
                    if let Some(matched) = matched_at {
                        return Err(format!(
                            "logs of {left_id} and {right_id} match at {matched} but differ \
                             in term at {index}"
                        ));
                    }
                    continue;
                }
                matched_at.get_or_insert(index);
                if let (Some(left_entry), Some(right_entry)) =
                    (left_log.entry(index), right_log.entry(index))
                    && left_entry != right_entry
                {
                    return Err(format!(
                        "{left_id} and {right_id} hold different entries of term {left_term} \
                         at index {index}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Leader completeness: a leader holds every entry any node knows committed, as long as
/// that node's term is not above the leader's (its commit index came from a leader of a
/// term no later than the leader's, and leaders of later terms hold what earlier terms
/// committed).
pub fn check_leader_completeness<'a, S: StateMachine + 'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
) -> Result<(), String> {
    let nodes: Vec<(NodeId, &RaftNode<S>)> = nodes.into_iter().collect();
    for (leader_id, leader) in nodes.iter().filter(|(_, node)| node.is_leader()) {
        for (id, node) in &nodes {
            let commit = node.commit_index();
            if commit == 0 || node.term() > leader.term() {
                continue;
            }
            if leader.log().last_index() < commit {
                return Err(format!(
                    "leader {leader_id} of term {} lacks entry {commit} that {id} knows committed",
                    leader.term()
                ));
            }
            if let (Some(held), Some(committed)) =
                (leader.log().term(commit), node.log().term(commit))
                && held != committed
            {
                return Err(format!(
                    "leader {leader_id} of term {} holds term {held} at {commit}, which {id} \
                     committed with term {committed}",
                    leader.term()
                ));
            }
        }
    }
    Ok(())
}

/// State-machine safety: replicas applied the same entries in index order. Two nodes are
/// compared at the shorter one's applied index when the longer one still remembers its
/// digest there (each keeps its last 256).
pub fn check_state_machine_safety<'a, S: StateMachine + 'a>(
    nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
) -> Result<(), String> {
    let nodes: Vec<(NodeId, &RaftNode<S>)> = nodes.into_iter().collect();
    for (position, (left_id, left)) in nodes.iter().enumerate() {
        for (right_id, right) in &nodes[position + 1..] {
            let (shorter, longer) = if left.applied_index() <= right.applied_index() {
                (left, right)
            } else {
                (right, left)
            };
            if shorter.applied_index() == 0 {
                continue;
            }
            if let Some(&digest) = longer.applied_digests().get(&shorter.applied_index())
                && digest != shorter.applied_digest()
            {
                return Err(format!(
                    "{left_id} and {right_id} applied different entries among the first {}",
                    shorter.applied_index()
                ));
            }
        }
    }
    Ok(())
}

/// Remembers which node led each term, so a second leader of a term is caught even if the
/// first crashed or stepped down meanwhile.
#[derive(Clone, Debug, Default)]
pub struct ElectionHistory {
    leaders: BTreeMap<u64, NodeId>,
}

impl ElectionHistory {
    /// An empty history.
    pub fn new() -> Self {
        ElectionHistory::default()
    }

    /// Records the current leaders; fails if a term now has a second one.
    pub fn observe<'a, S: StateMachine + 'a>(
        &mut self,
        nodes: impl IntoIterator<Item = (NodeId, &'a RaftNode<S>)>,
    ) -> Result<(), String> {
        for (id, node) in nodes {
            if !node.is_leader() {
                continue;
            }
            let first = *self.leaders.entry(node.term()).or_insert(id);
            if first != id {
                return Err(format!(
                    "two leaders in term {}: {first} and then {id}",
                    node.term()
                ));
            }
        }
        Ok(())
    }
}
