//! Raft under the model checker: three nodes and two clients, every interleaving of
//! deliveries (on the redeliverable network a packet may be delivered any number of times,
//! in any order, or never, which also covers partitions) and of every timer, bounded to the
//! first few terms. The correct protocol keeps election safety, log matching, leader
//! completeness, state-machine safety and a linearizable history in every state explored.
//!
//! The figure-8 leader (it counts replicas to commit an entry of an earlier term) is caught
//! by a directed search: its shortest counterexample takes about 60 steps, beyond an
//! exhaustive search, and random walks do not find it, so a breadth-first search steers
//! through milestones that name situations of the paper's figure 8 (who leads which term,
//! who alone holds which entry; never whether anything is committed), checking the
//! invariants in every state it visits, then searches every interleaving from the last
//! milestone it could reach. The broken leader breaks leader completeness (the term-4 leader
//! lacks the term-1 entry the term-3 leader counted committed); the correct leader passes
//! the same search, its term-3 no-op keeping the term-4 election from happening.

use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::raft::invariants::check_all;
use synod_protocols::raft::{Payload, RaftConfig, RaftMessage, RaftNode, RaftVariant};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, Network, NetworkSemantics, kv_history_linearizable,
};
use synod_sim::model_checker::directed::{Directed, Milestone, StartingAt, through_milestones};
use synod_sim::packet::Packet;

type KvRaft = RaftNode<SessionKv>;
type KvClient = ReplicatedKvClient<KvRaft>;

/// Terms beyond this are not explored.
const TERM_MAX: u64 = 3;

fn client(id: u32) -> KvClient {
    KvClient::new(NodeId(id), ReplicatedClientConfig::default())
}

fn running(state: &ClusterState<KvClient>) -> impl Iterator<Item = (NodeId, &KvRaft)> {
    state
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| slot.state.as_ref().map(|node| (NodeId(index as u32), node)))
}

fn model(variant: RaftVariant, network: NetworkSemantics) -> ClusterModel<KvClient> {
    let put = KvCommand::Put {
        key: "k".to_string(),
        value: "a".to_string(),
    };
    let get = KvCommand::Get {
        key: "k".to_string(),
    };
    ClusterModel::new(
        3,
        move |_| KvRaft::new(variant, RaftConfig::default()),
        network,
    )
    .client(client(0), vec![put])
    .client(client(1), vec![get])
    .invariant(
        "election, log, leader-completeness and state-machine safety",
        |state: &ClusterState<KvClient>| check_all(running(state)).is_ok(),
    )
    .invariant(
        "the history is linearizable",
        |state: &ClusterState<KvClient>| kv_history_linearizable(&state.history),
    )
    .goal("a leader was elected", |state: &ClusterState<KvClient>| {
        running(state).any(|(_, node)| node.is_leader())
    })
    .goal(
        "a replica applied a command",
        |state: &ClusterState<KvClient>| running(state).any(|(_, node)| node.applied_index() > 1),
    )
    .prune(|state: &ClusterState<KvClient>| running(state).any(|(_, node)| node.term() > TERM_MAX))
}

#[test]
fn the_correct_protocol_holds_in_every_state_to_a_bounded_depth() {
    let model = model(RaftVariant::Correct, NetworkSemantics::Redeliverable);
    let report = Checker::new(&model).max_depth(9).threads(2).bfs();
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(report.unique_states > 1_000, "{report}");
    assert!(
        report.goals[0].example.is_some(),
        "no leader within the depth: {report}"
    );
}

#[test]
fn the_correct_protocol_holds_on_random_walks_and_applies_commands() {
    let model = model(RaftVariant::Correct, NetworkSemantics::Redeliverable);
    let report = Checker::new(&model)
        .max_depth(150)
        .threads(2)
        .random_probes(1, 3_000);
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(
        report.goals[1].example.is_some(),
        "nothing was ever applied: {report}"
    );
}

/// The figure-8 search's clients: two puts of different values, client 0 first trying n0
/// and client 1 first trying n1.
fn figure8_model(variant: RaftVariant) -> ClusterModel<KvClient> {
    let put = |value: &str| KvCommand::Put {
        key: "k".to_string(),
        value: value.to_string(),
    };
    ClusterModel::new(
        3,
        move |_| KvRaft::new(variant, RaftConfig::default()),
        NetworkSemantics::OrderedExactlyOnce,
    )
    .client(client(0), vec![put("a")])
    .client(client(1), vec![put("b")])
    .invariant(
        "election, log, leader-completeness and state-machine safety",
        |state: &ClusterState<KvClient>| check_all(running(state)).is_ok(),
    )
    .prune(|state: &ClusterState<KvClient>| running(state).any(|(_, node)| node.term() > 4))
}

fn node(state: &ClusterState<KvClient>, id: u32) -> Option<&KvRaft> {
    state.nodes.get(id as usize)?.state.as_ref()
}

/// True if node `id` leads in `term`.
fn leads(state: &ClusterState<KvClient>, id: u32, term: u64) -> bool {
    node(state, id).is_some_and(|node| node.is_leader() && node.term() == term)
}

/// The indexes where node `id` holds a client command of `term`.
fn commands_of_term(state: &ClusterState<KvClient>, id: u32, term: u64) -> Vec<u64> {
    let Some(node) = node(state, id) else {
        return Vec::new();
    };
    let log = node.log();
    (log.snapshot_index() + 1..=log.last_index())
        .filter(|&index| {
            log.entry(index).is_some_and(|entry| {
                entry.term == term && matches!(entry.payload, Payload::Command(_))
            })
        })
        .collect()
}

/// True if node `id` holds a client command of `term` at `index`.
fn holds(state: &ClusterState<KvClient>, id: u32, index: u64, term: u64) -> bool {
    node(state, id).is_some_and(|node| node.log().term(index) == Some(term))
        && commands_of_term(state, id, term).contains(&index)
}

/// True if only node `id` holds a client command of `term`, at an index where `other`
/// holds a command of `other_term` (0: anything or nothing).
fn alone_with_command(state: &ClusterState<KvClient>, id: u32, term: u64) -> Option<u64> {
    commands_of_term(state, id, term)
        .into_iter()
        .find(|&index| {
            (0..3).filter(|&other| other != id).all(|other| {
                node(state, other).is_none_or(|node| node.log().term(index) != Some(term))
            })
        })
}

/// True if a message from `from` to `to` satisfying `wanted` is in flight.
fn in_flight(
    state: &ClusterState<KvClient>,
    from: u32,
    to: u32,
    wanted: impl Fn(&RaftMessage<SessionKv>) -> bool,
) -> bool {
    let matches = |packet: &Packet<KvClient>| {
        matches!(packet, Packet::Message { from: sender, to: receiver, message }
            if *sender == NodeId(from) && *receiver == NodeId(to) && wanted(message))
    };
    match &state.network {
        Network::Redeliverable(packets) => packets.iter().any(|(_, packet)| matches(packet)),
        Network::OrderedExactlyOnce(channels) => channels.values().flatten().any(matches),
    }
}

/// True if `voter`'s answer granting `candidate` a vote (or a pre-vote) for `term` is in
/// flight.
fn granted(
    state: &ClusterState<KvClient>,
    voter: u32,
    candidate: u32,
    term: u64,
    pre: bool,
) -> bool {
    in_flight(state, voter, candidate, |message| {
        matches!(*message, RaftMessage::VoteReply { term: asked, granted: true, pre_vote }
            if asked == term && pre_vote == pre)
    })
}

/// The milestones of `candidate`'s election in `term` with `voter`'s vote: it grants itself
/// a pre-vote, gets `voter`'s, stands, gets the vote, leads. `also` must hold at each.
fn election(
    candidate: u32,
    voter: u32,
    term: u64,
    also: fn(&ClusterState<KvClient>) -> bool,
) -> Vec<Milestone<ClusterState<KvClient>>> {
    type State = ClusterState<KvClient>;
    vec![
        Milestone::new(
            format!("n{candidate} grants itself a pre-vote for term {term}"),
            move |state: &State| granted(state, candidate, candidate, term, true) && also(state),
        ),
        Milestone::new(
            format!("n{voter} grants n{candidate} a pre-vote for term {term}"),
            move |state: &State| granted(state, voter, candidate, term, true) && also(state),
        ),
        Milestone::new(
            format!("n{candidate} stands for term {term}"),
            move |state: &State| stands(state, candidate, term) && also(state),
        ),
        Milestone::new(
            format!("n{voter} votes for n{candidate} in term {term}"),
            move |state: &State| granted(state, voter, candidate, term, false) && also(state),
        ),
        Milestone::new(
            format!("n{candidate} leads term {term}"),
            move |state: &State| leads(state, candidate, term) && also(state),
        ),
    ]
}

/// True if node `id` campaigns in `term` (it voted for itself) or leads it.
fn stands(state: &ClusterState<KvClient>, id: u32, term: u64) -> bool {
    node(state, id).is_some_and(|node| node.term() == term && node.voted_for() == Some(NodeId(id)))
}

/// Figure 8 of the Raft paper, scaled to three nodes, as milestones a breadth-first search
/// steers through: each names a situation, never the steps to it, and every state on the way
/// is checked against the invariants. The situations are neutral (nothing in them says an
/// entry is committed): n0 leads term 1 and alone holds a client entry; n1 leads term 2 and
/// alone holds a different one at the same index; n0 leads term 3; n2 holds n0's term-1
/// entry; n1 leads term 4. Whether the term-1 entry was counted committed on the way is the
/// protocol's doing, and the invariants judge it.
fn figure8_milestones() -> Vec<Milestone<ClusterState<KvClient>>> {
    type State = ClusterState<KvClient>;
    fn n0_alone(state: &State) -> bool {
        alone_with_command(state, 0, 1).is_some()
    }
    fn diverged(state: &State) -> bool {
        alone_with_command(state, 1, 2).is_some_and(|index| holds(state, 0, index, 1))
    }
    fn n2_holds_term_1(state: &State) -> bool {
        commands_of_term(state, 0, 1)
            .into_iter()
            .any(|index| holds(state, 2, index, 1))
    }
    fn anything(_: &State) -> bool {
        true
    }
    let mut milestones = election(0, 1, 1, anything);
    milestones.push(Milestone::new(
        "n0 alone holds a client entry of term 1",
        n0_alone,
    ));
    milestones.extend(election(1, 2, 2, n0_alone));
    milestones.push(Milestone::new(
        "n1 alone holds a client entry of term 2 where n0 holds its term-1 entry",
        diverged,
    ));
    milestones.push(Milestone::new("n0 learns of term 2", |state: &State| {
        node(state, 0).is_some_and(|node| node.term() == 2 && !node.is_leader()) && diverged(state)
    }));
    milestones.extend(election(0, 2, 3, diverged));
    milestones.push(Milestone::new(
        "n2 holds n0's term-1 entry",
        n2_holds_term_1,
    ));
    milestones.push(Milestone::new("n1 no longer leads", |state: &State| {
        node(state, 1).is_some_and(|node| !node.is_leader()) && n2_holds_term_1(state)
    }));
    milestones.extend(election(1, 2, 4, anything));
    milestones
}

/// Steps a leg of the figure-8 search may take, and states it may visit.
const FIGURE8_LEG_DEPTH: usize = 8;
const FIGURE8_LEG_STATES: u64 = 30_000;

/// How deep the exhaustive search from the end of the milestones goes.
const FIGURE8_FINAL_DEPTH: usize = 5;

/// The figure-8 search: steer through [`figure8_milestones`] as far as the protocol lets
/// it, then search every interleaving from there to [`FIGURE8_FINAL_DEPTH`]. The violated
/// invariant and the whole path's length, or `None` if nothing broke.
fn figure8_search(variant: RaftVariant) -> Option<(String, usize)> {
    let model = figure8_model(variant);
    let milestones = figure8_milestones();
    // Which invariant broke, in the words of the check.
    let broken = |state: &ClusterState<KvClient>| match check_all(running(state)) {
        Err(violation) => violation,
        Ok(()) => "the history is not linearizable".to_owned(),
    };
    let path = match through_milestones(&model, &milestones, FIGURE8_LEG_DEPTH, FIGURE8_LEG_STATES)
    {
        Directed::Violation { path, .. } => return Some((broken(path.last_state()), path.len())),
        Directed::Reached(path) => path,
        Directed::Unreached { milestone, path } => {
            eprintln!("{variant:?}: milestone {milestone:?} unreached; searching from there");
            path
        }
    };
    let from_there = StartingAt::new(&model, path.last_state().clone());
    let report = Checker::new(&from_there)
        .max_depth(FIGURE8_FINAL_DEPTH)
        .threads(2)
        .bfs();
    report.violation.map(|found| {
        (
            broken(found.path.last_state()),
            path.len() + found.path.len(),
        )
    })
}

#[test]
fn a_directed_search_catches_the_figure_8_leader() {
    let (property, steps) =
        figure8_search(RaftVariant::Figure8).expect("the figure-8 leader breaks an invariant");
    // Leader completeness: the new leader lacks an entry the broken leader counted committed.
    assert!(
        property.contains("leader n1 of term 4") && property.contains("committed with term 1"),
        "{property}"
    );
    eprintln!("figure 8 caught after {steps} steps: {property}");
}

#[test]
fn the_correct_leader_passes_the_figure_8_search() {
    assert_eq!(figure8_search(RaftVariant::Correct), None);
}

/// A snapshot after every applied entry, crashes allowed: a directed search steers to a
/// leader whose compaction is durable but unwritten, crashes it there (it recovers from the
/// records the compaction stood for) and restarts it; every state on the way, and every
/// interleaving from there to a small depth, stays safe and linearizable.
#[test]
fn crashes_that_find_a_compaction_unwritten_stay_safe() {
    type State = ClusterState<KvClient>;
    let put = KvCommand::Put {
        key: "k".to_string(),
        value: "a".to_string(),
    };
    let get = KvCommand::Get {
        key: "k".to_string(),
    };
    let raft = RaftConfig {
        snapshot_threshold_entries: 1,
        ..RaftConfig::default()
    };
    let model = ClusterModel::new(
        3,
        move |_| KvRaft::new(RaftVariant::Correct, raft),
        NetworkSemantics::Redeliverable,
    )
    .client(client(0), vec![put])
    .client(client(1), vec![get])
    .max_crashes(1)
    .invariant(
        "election, log, leader-completeness and state-machine safety",
        |state: &State| check_all(running(state)).is_ok(),
    )
    .invariant("the history is linearizable", |state: &State| {
        kv_history_linearizable(&state.history)
    })
    .prune(|state: &State| running(state).any(|(_, node)| node.term() > TERM_MAX));
    fn anything(_: &State) -> bool {
        true
    }
    let mut milestones = election(0, 1, 1, anything);
    milestones.extend([
        Milestone::new(
            "n0 holds a durable, unwritten compaction",
            |state: &State| state.nodes[0].unwritten_compaction.is_some(),
        ),
        Milestone::new("a crash finds the compaction unwritten", |state: &State| {
            state.unwritten_compactions_lost == 1
        }),
        Milestone::new("n0 runs again", |state: &State| {
            state.nodes[0].state.is_some()
        }),
    ]);
    let path = match through_milestones(&model, &milestones, 8, 30_000) {
        Directed::Reached(path) => path,
        Directed::Violation { property, .. } => panic!("{property}"),
        Directed::Unreached { milestone, .. } => panic!("milestone {milestone:?} unreached"),
    };
    // The restarted leader recovered the entry its lost compaction covered.
    let restarted = path.last_state().nodes[0].state.as_ref().unwrap();
    assert!(restarted.log().last_index() >= 1, "n0 lost its log");
    let from_there = StartingAt::new(&model, path.last_state().clone());
    let report = Checker::new(&from_there).max_depth(5).threads(2).bfs();
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
}
