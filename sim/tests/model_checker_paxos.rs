//! Multi-Paxos under the model checker: three replicas and two clients, every interleaving
//! of deliveries (messages may be redelivered, dropped or reordered) and election timeouts,
//! bounded to the first round of ballots. The correct protocol keeps agreement and a
//! linearizable history in every state; the proposer that forgets accepted values is caught.

use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, NetworkSemantics, kv_history_linearizable,
};

type KvPaxos = PaxosNode<SessionKv>;
type KvClient = ReplicatedKvClient<KvPaxos>;

/// Ballots beyond this round are not explored: every node may campaign once.
const ROUND_MAX: u64 = 3;

fn model(variant: PaxosVariant, network: NetworkSemantics) -> ClusterModel<KvClient> {
    let put = KvCommand::Put {
        key: "k".to_string(),
        value: "a".to_string(),
    };
    let get = KvCommand::Get {
        key: "k".to_string(),
    };
    ClusterModel::new(
        3,
        move |_| KvPaxos::new(variant, PaxosConfig::default()),
        network,
    )
    .client(
        KvClient::new(NodeId(0), ReplicatedClientConfig::default()),
        vec![put],
    )
    .client(
        KvClient::new(NodeId(1), ReplicatedClientConfig::default()),
        vec![get],
    )
    .invariant("replicas agree", |state: &ClusterState<KvClient>| {
        check_agreement(state.nodes.iter().filter_map(|slot| slot.state.as_ref())).is_ok()
    })
    .invariant(
        "the history is linearizable",
        |state: &ClusterState<KvClient>| kv_history_linearizable(&state.history),
    )
    .goal(
        "a replica executed a command",
        |state: &ClusterState<KvClient>| {
            state
                .nodes
                .iter()
                .filter_map(|slot| slot.state.as_ref())
                .any(|node| node.executed_below() > 0)
        },
    )
    .goal("every client is done", |state: &ClusterState<KvClient>| {
        state.all_clients_done()
    })
    .prune(|state: &ClusterState<KvClient>| {
        state
            .nodes
            .iter()
            .filter_map(|slot| slot.state.as_ref())
            .any(|node| node.promised().round > ROUND_MAX)
    })
}

#[test]
fn the_forgetful_proposer_is_caught_by_random_walks_and_minimized() {
    let model = model(
        PaxosVariant::ForgetAcceptedValues,
        NetworkSemantics::OrderedExactlyOnce,
    );
    let report = Checker::new(&model)
        .max_depth(200)
        .threads(2)
        .random_probes(1, 20_000);
    assert_eq!(report.verdict(), Verdict::Violation, "{report}");
    let counterexample = report.violation.as_ref().expect("a violation");
    // Two elections, a chosen command, and the second leader's no-op in its slot.
    assert!(counterexample.path.len() <= 45, "{}", counterexample.path);
}

#[test]
fn the_correct_protocol_holds_on_every_walk_and_chooses_commands() {
    let model = model(PaxosVariant::Correct, NetworkSemantics::OrderedExactlyOnce);
    let report = Checker::new(&model)
        .max_depth(200)
        .threads(2)
        .random_probes(1, 5_000);
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    // Walks rarely keep one leader long enough for both clients to finish (every timer
    // may fire at any step), but they must get a command chosen and executed.
    assert!(
        report.goals[0].example.is_some(),
        "nothing was ever executed: {report}"
    );
}

#[test]
fn the_correct_protocol_holds_in_every_state_up_to_depth_seven() {
    let model = model(PaxosVariant::Correct, NetworkSemantics::Redeliverable);
    let report = Checker::new(&model).max_depth(7).threads(2).bfs();
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(report.unique_states > 1_000, "{report}");
}
