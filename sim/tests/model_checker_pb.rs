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
//!
//! The split brain (a backup that acknowledges any primary) needs a view change and two
//! clients before it can matter, too deep for these searches: a directed search through
//! milestones reaches the split, then every interleaving after it is explored, and the
//! stores forking (two servers each holding an append the other lacks) shows it.

use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::pb::invariants::check_append_logs_never_fork;
use synod_protocols::pb::invariants::{
    ObservedViews, check_backup_mirrors_primary, check_one_primary_per_view,
    check_views_come_from_the_view_service,
};
use synod_protocols::pb::{
    PbClient, PbClientConfig, PbNode, PbServer, PbVariant, VIEW_SERVICE, View,
};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterModel, ClusterState, HistoryEvent, NetworkSemantics, kv_history_linearizable,
};
use synod_sim::model_checker::directed::{
    Directed, Milestone, StartingAt, join, through_milestones,
};
use synod_sim::model_checker::model::Model;
use synod_sim::model_checker::path::Path;

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

// ---- Split brain: a deposed primary whose forwards are still acknowledged ----
//
// The broken backup acknowledges any forward. That only matters after a view change
// leaves the old primary serving its old view while the new primary serves the new one,
// some 30 steps into a path with two clients: deeper than an exhaustive search reaches,
// and too specific for random walks. So the search is directed: breadth first from
// milestone to milestone (n1 serves view 2 with backup n2; client 0 has learned view 2,
// so its append goes to n1; n2 serves view 3 while n1 still serves view 2), then every
// interleaving from there. Each variant finds its own path through the milestones (the
// variant lives in the nodes' state), with the same invariants checked on the way.

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);

fn server<G>(state: &ClusterState<PbClient, G>, id: NodeId) -> Option<&PbServer> {
    state.node(id).and_then(|node| node.as_server())
}

/// Two clients appending distinct values to one key, so diverged stores show as two
/// values of the key neither of which is a prefix of the other.
fn split_brain_model(variant: PbVariant) -> ClusterModel<PbClient, ObservedViews> {
    ClusterModel::new(
        3,
        move |id| PbNode::new(id, variant),
        NetworkSemantics::OrderedExactlyOnce,
    )
    .client(PbClient::new(PbClientConfig::default()), vec![append("a")])
    .client(PbClient::new(PbClientConfig::default()), vec![append("b")])
    .ghost(|ghost: &mut ObservedViews, state: &State| ghost.observe(nodes(state)))
    .invariant("one primary per view", |state: &State| {
        check_one_primary_per_view(nodes(state)).is_ok()
    })
    .invariant("the view history holds", |state: &State| {
        state.ghost.violation().is_none()
    })
    .invariant("the backup mirrors its primary", |state: &State| {
        check_backup_mirrors_primary(nodes(state)).is_ok()
    })
    .invariant("the stores never fork", |state: &State| {
        check_append_logs_never_fork(nodes(state), "k").is_ok()
    })
    .invariant("the history is linearizable", |state: &State| {
        kv_history_linearizable(&state.history)
    })
    .goal("an append completed", |state: &State| {
        state
            .history
            .iter()
            .any(|event| matches!(event, HistoryEvent::Complete { .. }))
    })
    .prune(|state: &State| {
        nodes(state)
            .filter_map(|(_, node)| node.as_view_service())
            .any(|view_service| view_service.view().number > 3)
    })
}

fn view_service_view(state: &State) -> Option<View> {
    state
        .node(VIEW_SERVICE)
        .and_then(|node| node.as_view_service())
        .map(|view_service| view_service.view())
}

fn serves(state: &State, id: NodeId, view: u64) -> bool {
    server(state, id).is_some_and(|server| server.serving_view() == Some(view))
}

fn split_brain_milestones() -> Vec<Milestone<State>> {
    vec![
        Milestone::new("n1 serves view 1", |state: &State| serves(state, N1, 1)),
        Milestone::new(
            "the view service names n2 backup in view 2",
            |state: &State| {
                view_service_view(state)
                    .is_some_and(|view| view.number == 2 && view.backup == Some(N2))
            },
        ),
        Milestone::new("n1 serves view 2", |state: &State| serves(state, N1, 2)),
        Milestone::new("client 0 routes to n1 in view 2", |state: &State| {
            state.clients[0].state.view().number == 2
        }),
        Milestone::new("the view service promotes n2 in view 3", |state: &State| {
            view_service_view(state)
                .is_some_and(|view| view.number == 3 && view.primary == Some(N2))
        }),
        Milestone::new(
            "n2 serves view 3 while n1 still serves view 2",
            |state: &State| serves(state, N2, 3) && serves(state, N1, 2),
        ),
    ]
}

/// Each leg of the directed search: at most this deep, at most this many states.
const LEG_DEPTH: usize = 8;
const LEG_STATES: u64 = 100_000;
/// Every interleaving after the last milestone up to this depth.
const SPLIT_DEPTH: usize = 7;

/// The path through the milestones, which both variants must find without a violation.
fn split_brain_setup(model: &SplitBrainModel) -> Path<SplitBrainModel> {
    match through_milestones(model, &split_brain_milestones(), LEG_DEPTH, LEG_STATES) {
        Directed::Reached(path) => path,
        Directed::Violation { property, path } => {
            panic!("{property:?} broke before the split: {path}")
        }
        Directed::Unreached { milestone, path } => {
            panic!("{milestone:?} not reached after {path:?}")
        }
    }
}

type SplitBrainModel = ClusterModel<PbClient, ObservedViews>;

#[test]
fn a_deposed_primary_cannot_serve_once_its_backup_moved_on() {
    let model = split_brain_model(PbVariant::Correct);
    let setup = split_brain_setup(&model);
    let from_there = StartingAt::new(&model, setup.last_state().clone());
    let report = Checker::new(&from_there)
        .max_depth(SPLIT_DEPTH)
        .threads(2)
        .bfs();
    assert!(report.violation.is_none(), "{report}");
    assert!(report.stopped_by.is_none(), "{report}");
    assert!(report.unique_states > 1_000, "{report}");
    assert!(
        report.goals[0].example.is_some(),
        "nothing completed after the split: {report}"
    );
}

#[test]
fn a_backup_that_accepts_any_primary_lets_the_stores_fork() {
    let model = split_brain_model(PbVariant::BackupAcceptsAnyPrimary);
    let setup = split_brain_setup(&model);
    let from_there = StartingAt::new(&model, setup.last_state().clone());
    let report = Checker::new(&from_there)
        .max_depth(SPLIT_DEPTH)
        .threads(2)
        .bfs();
    let found = report.violation.expect("the split brain is reachable");
    assert_eq!(found.property, "the stores never fork");
    // The whole path from the initial state, minimized against the model itself.
    let whole = join(setup, found.path);
    let property = model
        .properties()
        .into_iter()
        .find(|property| property.name == found.property)
        .expect("the broken invariant is the model's");
    let minimized = whole.minimize(&model, &property);
    assert!(minimized.len() <= 32, "{minimized}");
    let actions: Vec<_> = minimized.actions().cloned().collect();
    let replayed = Path::replay(&model, &minimized.init, &actions, &property)
        .expect("the minimized path still breaks the invariant");
    assert_eq!(replayed.len(), minimized.len());
    eprintln!("minimized to {} steps: {:?}", minimized.len(), minimized);
}
