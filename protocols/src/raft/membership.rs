//! Cluster configurations as Raft log entries: voters (two voter sets while a change is in
//! its joint phase) and learners, the changes a leader accepts, and the errors it gives.
//!
//! A change goes through two entries. The first is the *joint* configuration: the new voter
//! set as `voters`, the old one as `outgoing`. While it is the latest configuration a node
//! holds, an entry commits and a candidate wins only with a majority of *each* set. Once the
//! leader commits the joint entry it appends the *final* configuration (`outgoing` empty).
//! A node uses the latest configuration in its log whether or not it is committed; when a
//! conflicting suffix is cut away, the configuration it carried goes with it.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use synod_core::node::NodeId;

/// Voters and learners of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Membership {
    /// The voters (the new voter set while joint).
    pub voters: BTreeSet<NodeId>,
    /// While joint, the voters being replaced; empty otherwise.
    pub outgoing: BTreeSet<NodeId>,
    /// Nodes that receive the log but neither vote nor count toward any quorum.
    pub learners: BTreeSet<NodeId>,
    /// Where members can be reached, as the embedding layer describes them (opaque to
    /// Raft; replicated with the configuration so every node can dial a newcomer).
    pub addresses: BTreeMap<NodeId, String>,
}

impl Membership {
    /// A configuration of `voters` only.
    pub fn of_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// True while a change is in its joint phase.
    pub fn is_joint(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// True if `id` votes in either voter set.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing.contains(&id)
    }

    /// True if `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Every voter of either set, ascending.
    pub fn all_voters(&self) -> BTreeSet<NodeId> {
        self.voters.union(&self.outgoing).copied().collect()
    }

    /// Every node the configuration names (voters of both sets and learners), ascending:
    /// the nodes a leader replicates to.
    pub fn nodes(&self) -> BTreeSet<NodeId> {
        let mut nodes = self.all_voters();
        nodes.extend(self.learners.iter().copied());
        nodes
    }

    /// True if `granted` holds a majority of the voters and, while joint, of the outgoing
    /// voters too.
    pub fn has_quorum(&self, granted: &BTreeSet<NodeId>) -> bool {
        let majority = |set: &BTreeSet<NodeId>| {
            set.is_empty() || 2 * set.intersection(granted).count() > set.len()
        };
        !self.voters.is_empty() && majority(&self.voters) && majority(&self.outgoing)
    }

    /// The highest value that a quorum reached, given each voter's value (`value` of a node
    /// it knows nothing of should be 0): per voter set the value a majority is at or above,
    /// and the lower of the two while joint.
    pub fn quorum_value(&self, value: impl Fn(NodeId) -> u64) -> u64 {
        let of_set = |set: &BTreeSet<NodeId>| {
            let mut values: Vec<u64> = set.iter().map(|&id| value(id)).collect();
            values.sort_unstable_by(|left, right| right.cmp(left));
            values.get(set.len() / 2).copied()
        };
        let incoming = of_set(&self.voters).unwrap_or(0);
        match of_set(&self.outgoing) {
            Some(outgoing) => incoming.min(outgoing),
            None => incoming,
        }
    }

    /// The configuration after `changes`, applied in order to the voters and learners of
    /// this (non-joint) one; the old voters become `outgoing` if the voter set changes and
    /// `joint` is asked for.
    pub(crate) fn changed(
        &self,
        changes: &[MembershipChange],
        joint: bool,
    ) -> Result<Membership, MembershipError> {
        if changes.is_empty() {
            return Err(MembershipError::NoChange);
        }
        let mut voters = self.voters.clone();
        let mut learners = self.learners.clone();
        for change in changes {
            match *change {
                MembershipChange::AddVoter(id) => {
                    if voters.contains(&id) || learners.contains(&id) {
                        return Err(MembershipError::AlreadyMember(id));
                    }
                    voters.insert(id);
                }
                MembershipChange::AddLearner(id) => {
                    if voters.contains(&id) || learners.contains(&id) {
                        return Err(MembershipError::AlreadyMember(id));
                    }
                    learners.insert(id);
                }
                MembershipChange::Promote(id) => {
                    if !learners.remove(&id) {
                        return Err(MembershipError::NotLearner(id));
                    }
                    voters.insert(id);
                }
                MembershipChange::Remove(id) => {
                    if !voters.remove(&id) && !learners.remove(&id) {
                        return Err(MembershipError::NotMember(id));
                    }
                }
                MembershipChange::Describe(id) => {
                    if !voters.contains(&id) && !learners.contains(&id) {
                        return Err(MembershipError::NotMember(id));
                    }
                }
            }
        }
        if voters.is_empty() {
            return Err(MembershipError::NoVotersLeft);
        }
        let outgoing = if joint && voters != self.voters {
            self.voters.clone()
        } else {
            BTreeSet::new()
        };
        if let Some(&id) = learners.intersection(&outgoing).next() {
            return Err(MembershipError::DemotionUnsupported(id));
        }
        let mut addresses = self.addresses.clone();
        addresses
            .retain(|id, _| voters.contains(id) || learners.contains(id) || outgoing.contains(id));
        Ok(Membership {
            voters,
            outgoing,
            learners,
            addresses,
        })
    }

    /// The configuration that ends this joint one: the new voters and the learners.
    pub(crate) fn leave_joint(&self) -> Membership {
        let mut next = self.clone();
        next.outgoing.clear();
        next.addresses
            .retain(|id, _| next.voters.contains(id) || next.learners.contains(id));
        next
    }
}

/// One change to a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MembershipChange {
    /// Adds a voter that is not yet a member.
    AddVoter(NodeId),
    /// Adds a learner that is not yet a member.
    AddLearner(NodeId),
    /// Makes a learner a voter (refused while it lags behind the leader's log).
    Promote(NodeId),
    /// Removes a voter or a learner.
    Remove(NodeId),
    /// Changes no role: only records a member's address anew (the addresses proposed with
    /// the change), e.g. when a member that joined at run time makes its client endpoint
    /// known. Voters stay as they are, so it needs no joint phase.
    Describe(NodeId),
}

/// How a leader changes its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeVariant {
    /// Joint consensus: old and new voters both decide until the joint entry commits.
    Joint,
    /// Broken: the new configuration replaces the old one in a single entry, so when
    /// several voters change at once an old majority and a new majority can each elect a
    /// leader in the same term.
    SingleStep,
}

/// Why a membership change or a leadership transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Only the leader changes the configuration.
    #[error("not the leader: ask {}", leader.map_or("the leader (unknown yet; retry later)".to_string(), |id| id.to_string()))]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The previous change has not finished.
    #[error(
        "a configuration change is in progress (entry {index} is not committed or the joint \
         phase has not ended); retry once it completes"
    )]
    ChangeInProgress {
        /// The index of the pending configuration entry.
        index: u64,
    },
    /// A new leader has not yet committed an entry of its own term.
    #[error("the leader has not committed an entry of its term yet; retry shortly")]
    LeaderNotReady,
    /// A leadership transfer is under way.
    #[error("a leadership transfer to {0} is in progress; retry once it completes or aborts")]
    TransferInProgress(NodeId),
    /// The change list was empty.
    #[error("no change was given")]
    NoChange,
    /// The node is already a voter or learner.
    #[error("{0} is already a member; remove it first to change its role")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("{0} is not a member of the cluster")]
    NotMember(NodeId),
    /// Only learners can be promoted.
    #[error("{0} is not a learner; only learners can be promoted")]
    NotLearner(NodeId),
    /// The learner lags too far behind to be promoted safely.
    #[error(
        "can only promote a learner that is in sync with the leader: {learner} holds the log \
         up to {match_index}, the leader up to {last_index}; retry once it has caught up"
    )]
    LearnerBehind {
        /// The learner.
        learner: NodeId,
        /// How far its log is known to match the leader's.
        match_index: u64,
        /// The leader's last index.
        last_index: u64,
    },
    /// The change would leave no voter.
    #[error("the change would leave the cluster without voters")]
    NoVotersLeft,
    /// A voter cannot become a learner in one change.
    #[error(
        "{0} cannot go from voter to learner in one change: remove it, then add it as a learner"
    )]
    DemotionUnsupported(NodeId),
    /// The transfer target does not vote.
    #[error("{0} is not a voter; leadership can only go to a voter")]
    TargetNotVoter(NodeId),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn joint_quorums_need_both_majorities() {
        let joint = Membership {
            voters: set(&[2, 3, 4]),
            outgoing: set(&[0, 1, 2]),
            learners: set(&[5]),
            addresses: BTreeMap::new(),
        };
        assert!(joint.has_quorum(&set(&[0, 2, 3])));
        assert!(!joint.has_quorum(&set(&[0, 1, 5])));
        assert!(!joint.has_quorum(&set(&[3, 4, 5])));
        assert!(!joint.has_quorum(&set(&[5])));
        let matches = [9, 8, 7, 6, 5, 100];
        // Old voters {0,1,2} reach 8, new voters {2,3,4} reach 6.
        assert_eq!(joint.quorum_value(|id| matches[id.0 as usize]), 6);
        assert_eq!(
            joint
                .leave_joint()
                .quorum_value(|id| matches[id.0 as usize]),
            6
        );
    }

    #[test]
    fn changes_are_validated() {
        let config = Membership {
            voters: set(&[0, 1, 2]),
            learners: set(&[3]),
            ..Membership::default()
        };
        let changed = config
            .changed(
                &[
                    MembershipChange::Promote(NodeId(3)),
                    MembershipChange::Remove(NodeId(0)),
                ],
                true,
            )
            .expect("valid");
        assert_eq!(changed.voters, set(&[1, 2, 3]));
        assert_eq!(changed.outgoing, set(&[0, 1, 2]));
        assert!(changed.learners.is_empty());
        // A learner-only change needs no joint phase.
        let learner = config
            .changed(&[MembershipChange::AddLearner(NodeId(4))], true)
            .expect("valid");
        assert!(!learner.is_joint());
        assert_eq!(
            config.changed(&[MembershipChange::AddVoter(NodeId(1))], true),
            Err(MembershipError::AlreadyMember(NodeId(1)))
        );
        assert_eq!(
            config.changed(&[MembershipChange::Promote(NodeId(1))], true),
            Err(MembershipError::NotLearner(NodeId(1)))
        );
        assert_eq!(
            config.changed(&[MembershipChange::Remove(NodeId(7))], true),
            Err(MembershipError::NotMember(NodeId(7)))
        );
        assert_eq!(
            config.changed(
                &[
                    MembershipChange::Remove(NodeId(1)),
                    MembershipChange::AddLearner(NodeId(1))
                ],
                true
            ),
            Err(MembershipError::DemotionUnsupported(NodeId(1)))
        );
        let single = Membership::of_voters([NodeId(0)]);
        assert_eq!(
            single.changed(&[MembershipChange::Remove(NodeId(0))], true),
            Err(MembershipError::NoVotersLeft)
        );
        assert_eq!(config.changed(&[], true), Err(MembershipError::NoChange));
        // Describing a member changes no role and needs no joint phase.
        let described = config
            .changed(&[MembershipChange::Describe(NodeId(3))], true)
            .expect("valid");
        assert_eq!(described, config);
        assert_eq!(
            config.changed(&[MembershipChange::Describe(NodeId(9))], true),
            Err(MembershipError::NotMember(NodeId(9)))
        );
    }
}
