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
    check_state_machine_safety(nodes.iter().copied())
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
