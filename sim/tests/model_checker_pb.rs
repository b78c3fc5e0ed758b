//! Primary-backup under the model checker: a view service, two servers and two clients,
//! every interleaving of deliveries and timers (any timer may fire at any step, so servers
//! are declared dead and views change as often as the rules allow), bounded to the first
//! few views. The correct protocol keeps one primary per view and a linearizable history
//! in every state; a view service that keeps its views only in memory is caught after a crash.

use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::pb::invariants::{
    check_one_primary_per_view, check_views_come_from_the_view_service,
};
use synod_protocols::pb::{PbClient, PbClientConfig, PbNode, PbVariant};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, NetworkSemantics, kv_history_linearizable,
};

/// Views beyond this number are not explored.
const VIEW_MAX: u64 = 3;

fn nodes(state: &ClusterState<PbClient>) -> impl Iterator<Item = (NodeId, &PbNode)> {
    state
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| slot.state.as_ref().map(|node| (NodeId(index as u32), node)))
}

fn model(variant: PbVariant) -> ClusterModel<PbClient> {
    let append = KvCommand::Append {
        key: "k".to_string(),
        value: "a".to_string(),
    };
    let get = KvCommand::Get {
        key: "k".to_string(),
    };
    ClusterModel::new(
        3,
        move |id| PbNode::new(id, variant),
        NetworkSemantics::OrderedExactlyOnce,
    )
    .client(PbClient::new(PbClientConfig::default()), vec![append])
    .client(PbClient::new(PbClientConfig::default()), vec![get])
    .invariant("one primary per view", |state: &ClusterState<PbClient>| {
        check_one_primary_per_view(nodes(state)).is_ok()
    })
    .invariant(
        "views come from the view service",
        |state: &ClusterState<PbClient>| {
            check_views_come_from_the_view_service(nodes(state)).is_ok()
        },
    )
    .invariant(
        "the history is linearizable",
        |state: &ClusterState<PbClient>| kv_history_linearizable(&state.history),
    )
    .goal(
        "an operation completed",
        |state: &ClusterState<PbClient>| state.history.len() > 2,
    )
    .prune(|state: &ClusterState<PbClient>| {
        nodes(state)
            .filter_map(|(_, node)| node.as_view_service())
            .any(|view_service| view_service.view().number > VIEW_MAX)
    })
}

#[test]
fn the_correct_protocol_holds_on_every_walk() {
    let model = model(PbVariant::Correct);
    let report = Checker::new(&model)
        .max_depth(200)
        .threads(2)
        .random_probes(1, 5_000);
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(
        report.goals[0].example.is_some(),
        "nothing completed: {report}"
    );
}

#[test]
fn the_correct_protocol_holds_in_every_state_up_to_depth_eight() {
    let model = model(PbVariant::Correct);
    let report = Checker::new(&model).max_depth(8).threads(2).bfs();
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(report.unique_states > 1_000, "{report}");
}

#[test]
fn a_view_service_that_forgets_its_views_in_a_crash_is_caught() {
    let model = model(PbVariant::VolatileViewService).max_crashes(1);
    let report = Checker::new(&model).max_depth(12).threads(2).bfs();
    assert_eq!(report.verdict(), Verdict::Violation, "{report}");
    let counterexample = report.violation.as_ref().expect("a violation");
    assert_eq!(counterexample.property, "views come from the view service");
    assert!(counterexample.path.len() <= 12, "{}", counterexample.path);
}
