//! Primary-backup under the model checker: a view service, two servers and a client that
//! appends, every interleaving of deliveries and timers (any timer may fire at any step, so
//! servers are declared dead and views change as often as the rules allow), bounded to the
//! first two views.
//!
//! Besides one primary per view and a linearizable history, two properties make the broken
//! variants show early on a path, where a search reaches them: the view history carried as a
//! ghost along each path (no view is revealed before the previous view's primary served it),
//! and the backup mirroring its primary (so an answered operation is on the backup the
//! moment the primary applies it). Each correct configuration is explored the same way
//! clean.

use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::pb::invariants::{
    ObservedViews, check_backup_mirrors_primary, check_one_primary_per_view,
    check_views_come_from_the_view_service,
};
use synod_protocols::pb::{PbClient, PbClientConfig, PbNode, PbVariant};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, NetworkSemantics, kv_history_linearizable,
};

type State = ClusterState<PbClient, ObservedViews>;

fn nodes<G>(state: &ClusterState<PbClient, G>) -> impl Iterator<Item = (NodeId, &PbNode)> {
    state
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(index, slot)| slot.state.as_ref().map(|node| (NodeId(index as u32), node)))
}

fn append(value: &str) -> KvCommand {
    KvCommand::Append {
        key: "k".to_string(),
        value: value.to_string(),
    }
}

/// Views beyond this number are not explored.
const VIEW_MAX: u64 = 2;

fn model(variant: PbVariant) -> ClusterModel<PbClient, ObservedViews> {
    ClusterModel::new(
        3,
        move |id| PbNode::new(id, variant),
        NetworkSemantics::OrderedExactlyOnce,
    )
    .client(PbClient::new(PbClientConfig::default()), vec![append("a")])
    .ghost(|ghost: &mut ObservedViews, state: &State| ghost.observe(nodes(state)))
    .invariant("one primary per view", |state: &State| {
        check_one_primary_per_view(nodes(state)).is_ok()
    })
    .invariant("views come from the view service", |state: &State| {
        check_views_come_from_the_view_service(nodes(state)).is_ok()
    })
    .invariant("the view history holds", |state: &State| {
        state.ghost.violation().is_none()
    })
    .invariant("the backup mirrors its primary", |state: &State| {
        check_backup_mirrors_primary(nodes(state)).is_ok()
    })
    .invariant("the history is linearizable", |state: &State| {
        kv_history_linearizable(&state.history)
    })
    .goal("an operation completed", |state: &State| {
        state.history.len() > 1
    })
    .prune(move |state: &State| {
        nodes(state)
            .filter_map(|(_, node)| node.as_view_service())
            .any(|view_service| view_service.view().number > VIEW_MAX)
    })
}

/// Breadth first to this depth: the skipped acknowledgement shows within it.
const BFS_DEPTH: usize = 8;
/// Random walks of this length, this many of them, seed 1: the early reply shows in them.
const WALK_LENGTH: usize = 30;
const WALKS: u64 = 5_000;

#[test]
fn the_correct_protocol_holds_in_every_state_up_to_depth_eight() {
    let model = model(PbVariant::Correct);
    let report = Checker::new(&model).max_depth(BFS_DEPTH).threads(2).bfs();
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(report.unique_states > 1_000, "{report}");
}

#[test]
fn the_correct_protocol_holds_on_every_walk() {
    let model = model(PbVariant::Correct);
    let report = Checker::new(&model)
        .max_depth(WALK_LENGTH)
        .threads(2)
        .random_probes(1, WALKS);
    assert_ne!(report.verdict(), Verdict::Violation, "{report}");
    assert!(
        report.goals[0].example.is_some(),
        "nothing completed: {report}"
    );
}

#[test]
fn a_view_service_that_skips_the_acknowledgement_breaks_the_view_history() {
    let model = model(PbVariant::ViewServiceSkipsAck);
    let report = Checker::new(&model).max_depth(BFS_DEPTH).threads(2).bfs();
    let counterexample = report.violation.as_ref().expect("a violation");
    assert_eq!(counterexample.property, "the view history holds");
    assert!(
        counterexample.path.len() <= BFS_DEPTH,
        "{}",
        counterexample.path
    );
}

#[test]
fn a_primary_that_replies_before_its_backup_acknowledges_is_caught_at_once() {
    let model = model(PbVariant::ReplyBeforeBackupAck);
    let report = Checker::new(&model)
        .max_depth(WALK_LENGTH)
        .threads(2)
        .random_probes(1, WALKS);
    let counterexample = report.violation.as_ref().expect("a violation");
    assert_eq!(counterexample.property, "the backup mirrors its primary");
    assert!(counterexample.path.len() <= 20, "{}", counterexample.path);
}

#[test]
fn a_view_service_that_forgets_its_views_in_a_crash_is_caught() {
    let model = model(PbVariant::VolatileViewService).max_crashes(1);
    let report = Checker::new(&model).max_depth(12).threads(2).bfs();
    assert_eq!(report.verdict(), Verdict::Violation, "{report}");
    let counterexample = report.violation.as_ref().expect("a violation");
    assert!(counterexample.path.len() <= 12, "{}", counterexample.path);
}
