//! Raft membership changes under the model checker: a cluster that starts with n0 as its
//! only voter grows to three voters (n1 and n2 join through the joint configuration
//! {n0, n1, n2} / {n0}), then n0 hands leadership to n1. Every interleaving of deliveries
//! (on the redeliverable network a packet may be delivered any number of times, in any
//! order, or never) and of every timer, including the leader's step timer, is explored to
//! a bounded depth; election safety, log matching, leader completeness, state-machine
//! safety and the membership invariants (at most one configuration change uncommitted, a
//! removed leader steps down, joint majorities) hold in every state, and the history of a
//! client's put is linearizable. The exhaustive searches start from the initial state and
//! from a joint state that random walks reached; random walks from the committed
//! three-voter configuration reach the transfer.
//!
//! `SYNOD_RAFT_MEMBERSHIP_DEPTH=<n>` deepens both exhaustive searches by `n` steps.

use std::time::Duration;
use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::raft::churn::{ChurnNode, ChurnPlan, ChurnStep};
use synod_protocols::raft::invariants::{check_all, check_membership};
use synod_protocols::raft::{MembershipChange, RaftConfig, RaftNode, RaftVariant};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, NetworkSemantics, kv_history_linearizable,
};
use synod_sim::model_checker::directed::StartingAt;

type KvRaft = RaftNode<SessionKv>;
type Churning = ChurnNode<SessionKv>;
type KvClient = ReplicatedKvClient<Churning>;

/// `SYNOD_RAFT_MEMBERSHIP_DEPTH=<n>` searches `n` steps deeper than the CI slice.
fn depth(default: usize) -> usize {
    let extra: usize = std::env::var("SYNOD_RAFT_MEMBERSHIP_DEPTH")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    default + extra
}

/// Terms beyond this are not explored.
const TERM_MAX: u64 = 3;

fn node() -> Churning {
    let raft = KvRaft::new(RaftVariant::Correct, RaftConfig::default()).with_voters([NodeId(0)]);
    let plan = ChurnPlan {
        interval: Duration::from_millis(100),
        min_voters: 1,
        max_voters: 3,
        script: Some(vec![
            ChurnStep::Change(vec![
                MembershipChange::AddVoter(NodeId(1)),
                MembershipChange::AddVoter(NodeId(2)),
            ]),
            ChurnStep::Transfer(NodeId(1)),
        ]),
    };
    ChurnNode::new(raft, plan)
}

fn running(state: &ClusterState<KvClient>) -> impl Iterator<Item = (NodeId, &KvRaft)> {
    state.nodes.iter().enumerate().filter_map(|(index, slot)| {
        slot.state
            .as_ref()
            .map(|node| (NodeId(index as u32), node.raft()))
    })
}

fn model() -> ClusterModel<KvClient> {
    let put = KvCommand::Put {
        key: "k".to_string(),
        value: "a".to_string(),
    };
    ClusterModel::new(3, move |_| node(), NetworkSemantics::Redeliverable)
        .client(
            KvClient::new(NodeId(0), ReplicatedClientConfig::default()),
            vec![put],
        )
        .invariant(
            "election, log, leader-completeness and state-machine safety",
            |state: &ClusterState<KvClient>| check_all(running(state)).is_ok(),
        )
        .invariant(
            "one configuration change at a time; joint majorities; removed leaders step down",
            |state: &ClusterState<KvClient>| check_membership(running(state), Some(0)).is_ok(),
        )
        .invariant(
            "the history is linearizable",
            |state: &ClusterState<KvClient>| kv_history_linearizable(&state.history),
        )
        .goal("a joint configuration", |state: &ClusterState<KvClient>| {
            running(state).any(|(_, node)| node.membership().is_joint())
        })
        .goal(
            "the three-voter configuration committed",
            |state: &ClusterState<KvClient>| {
                running(state).any(|(_, node)| {
                    !node.membership().is_joint()
                        && node.membership().voters.len() == 3
                        && node.commit_index() >= node.membership_index()
                })
            },
        )
        .goal(
            "leadership handed to n1",
            |state: &ClusterState<KvClient>| {
                running(state).any(|(id, node)| id == NodeId(1) && node.is_leader())
            },
        )
        .prune(|state: &ClusterState<KvClient>| {
            running(state).any(|(_, node)| node.term() > TERM_MAX)
        })
}

#[test]
fn the_correct_protocol_holds_in_every_state_to_a_bounded_depth() {
    let model = model();
    let report = Checker::new(&model).max_depth(depth(12)).threads(2).bfs();
    eprintln!("{report}");
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(report.unique_states > 1_000, "{report}");
}

/// A state reached by random walks where goal `goal` holds.
fn reached(model: &ClusterModel<KvClient>, goal: usize) -> ClusterState<KvClient> {
    let report = Checker::new(model)
        .max_depth(150)
        .threads(2)
        .random_probes(1, 400);
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    let path = report.goals[goal]
        .example
        .as_ref()
        .unwrap_or_else(|| panic!("goal {goal} not reached: {report}"));
    path.last_state().clone()
}

#[test]
fn every_interleaving_from_the_joint_configuration_is_safe() {
    let model = model();
    let joint = reached(&model, 0);
    let from_joint = StartingAt::new(&model, joint);
    let report = Checker::new(&from_joint)
        .max_depth(depth(6))
        .threads(2)
        .bfs();
    eprintln!("{report}");
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(report.unique_states > 1_000, "{report}");
}

#[test]
fn random_walks_from_the_new_configuration_transfer_leadership_safely() {
    let model = model();
    let committed = reached(&model, 1);
    let from_there = StartingAt::new(&model, committed);
    let report = Checker::new(&from_there)
        .max_depth(120)
        .threads(2)
        .random_probes(1, 500);
    eprintln!("{report}");
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(
        report.goals[2].example.is_some(),
        "the transfer never happened: {report}"
    );
}
