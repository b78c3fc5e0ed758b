//! Multi-Paxos under the model checker: three replicas and two clients, every interleaving
//! of deliveries (messages may be redelivered, dropped or reordered) and election timeouts,
//! bounded to the first round of ballots. The correct protocol keeps agreement and a
//! linearizable history in every state; the proposer that forgets accepted values is caught.

use synod_core::kv::KvCommand;
use synod_core::node::NodeId;
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::model_checker::checker::{Checker, Verdict};
use synod_sim::model_checker::cluster::{
    ClusterAction, ClusterModel, ClusterState, NetworkSemantics, kv_history_linearizable,
};
use synod_sim::simulation::{RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::ScriptedKvWorkload;

type KvPaxos = PaxosNode<SessionKv>;
type KvClient = ReplicatedKvClient<KvPaxos>;

/// Ballots beyond this round are not explored: every node may campaign once.
const ROUND_MAX: u64 = 3;

/// Client 0 puts, client 1 reads.
fn scripts() -> Vec<Vec<KvCommand>> {
    let put = KvCommand::Put {
        key: "k".to_string(),
        value: "a".to_string(),
    };
    let get = KvCommand::Get {
        key: "k".to_string(),
    };
    vec![vec![put], vec![get]]
}

fn client(id: u32) -> KvClient {
    KvClient::new(NodeId(id), ReplicatedClientConfig::default())
}

fn model(variant: PaxosVariant, network: NetworkSemantics) -> ClusterModel<KvClient> {
    let [put, get]: [Vec<KvCommand>; 2] = scripts().try_into().expect("two scripts");
    ClusterModel::new(
        3,
        move |_| KvPaxos::new(variant, PaxosConfig::default()),
        network,
    )
    .client(client(0), put)
    .client(client(1), get)
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

/// Runs `actions` (a model checker's path) in the simulator, with the agreement invariant.
fn replay(variant: PaxosVariant, actions: &[ClusterAction<KvClient>]) -> RunReport {
    let mut config = SimConfig {
        nodes: 3,
        faults: FaultSet::none(),
        ..SimConfig::default()
    };
    config.workload.clients = 2;
    let mut simulation = Simulation::new(
        config,
        Box::new(move |_| KvPaxos::new(variant, PaxosConfig::default())),
        |id, _| client(id.0 as u32),
        ScriptedKvWorkload::new(scripts()),
    );
    simulation.add_invariant(Box::new(|nodes| {
        check_agreement(nodes.running().map(|(_, node)| node))
    }));
    simulation.replay(actions)
}

#[test]
fn the_checkers_counterexample_replays_in_the_simulator() {
    let model = model(
        PaxosVariant::ForgetAcceptedValues,
        NetworkSemantics::OrderedExactlyOnce,
    );
    let report = Checker::new(&model)
        .max_depth(200)
        .threads(2)
        .random_probes(1, 20_000);
    let counterexample = report.violation.expect("the checker finds the bug");
    let actions: Vec<ClusterAction<KvClient>> = counterexample
        .path
        .steps
        .iter()
        .map(|step| step.action.clone())
        .collect();
    let replayed = replay(PaxosVariant::ForgetAcceptedValues, &actions);
    let findings = judge_kv_run(&replayed, Default::default());
    let reproduced = match counterexample.property.as_str() {
        "replicas agree" => findings
            .iter()
            .any(|finding| matches!(finding, Finding::Invariant(_))),
        _ => findings
            .iter()
            .any(|finding| matches!(finding, Finding::NotLinearizable(_))),
    };
    assert!(
        reproduced,
        "the replay did not reproduce {}: {findings:?}",
        counterexample.property
    );
    // The correct protocol, driven through the very same steps, breaks nothing.
    let clean = replay(PaxosVariant::Correct, &actions);
    assert_eq!(judge_kv_run(&clean, Default::default()), Vec::new());
}
