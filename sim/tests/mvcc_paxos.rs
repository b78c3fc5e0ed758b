//! The MVCC machine on Multi-Paxos, hunted by the simulator: seeded sweeps under every fault
//! kind with `synod sim`'s etcd workload (put, get, delete, cas and leases), each history judged
//! by the etcd model (revisions across keys, then linearizability per key and lease group),
//! replicas checked for agreement after every event, and the most advanced replica's store
//! audited against the history (every stored write was invoked, exactly once; no acknowledged
//! write lost). Negative controls: the forgetful Paxos proposer, and a machine that forgets its
//! sessions (retries execute twice), must both be caught.
//!
//! The workload and the judgement are `synod sim --protocol paxos-kv`'s own
//! (`cli/src/mvcc_sim.rs`, included here as it is, as `raft_mvcc.rs` does).
//! `SYNOD_MVCC_SEEDS=<n>` widens the fault sweep (100 seeds in CI).

#[path = "../../cli/src/mvcc_sim.rs"]
#[allow(dead_code)] // `synod sim` uses parts of the shared file this test does not.
mod mvcc_sim;

use mvcc_sim::{MvccRun, THINK_TIME_MAX, run_mvcc};
use synod_check::history::EventKind;
use synod_core::node::{ClientId, NodeId};
use synod_core::time::Time;
use synod_protocols::mvcc::{MvccCommand, MvccMachine, MvccRequest, MvccResponse};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};
use synod_protocols::replicated::StateMachine;
use synod_sim::config::{FaultSet, SimConfig, WorkloadConfig};
use synod_sim::verdict::Finding;

/// A broken machine for the negative control: it gives every command a fresh session
/// sequence, so a retried mutation that reaches the log twice executes twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct ForgetfulMvcc {
    inner: MvccMachine,
    applied: u64,
}

impl StateMachine for ForgetfulMvcc {
    type Request = MvccRequest;
    type Response = MvccResponse;
    type Command = MvccCommand;

    fn command(client: ClientId, request: MvccRequest, now: Time) -> MvccCommand {
        MvccMachine::command(client, request, now)
    }

    fn apply(&mut self, command: &MvccCommand) -> Option<(ClientId, MvccResponse)> {
        let MvccCommand::Client {
            client,
            sequence,
            operation,
            proposed_at,
            ..
        } = command
        else {
            return self.inner.apply(command);
        };
        self.applied += 1;
        let fresh = MvccCommand::Client {
            client: *client,
            sequence: self.applied,
            acknowledged_below: self.applied,
            operation: operation.clone(),
            proposed_at: *proposed_at,
        };
        let (client, mut response) = self.inner.apply(&fresh)?;
        response.sequence = *sequence;
        Some((client, response))
    }

    fn redirect(request: &MvccRequest, leader: Option<NodeId>) -> MvccResponse {
        MvccMachine::redirect(request, leader)
    }
}

fn config(seed: u64, faults: FaultSet) -> SimConfig {
    SimConfig {
        seed,
        nodes: 3,
        faults,
        workload: WorkloadConfig {
            clients: 4,
            operations_per_client: 40,
            keys: 3,
            think_time_max: THINK_TIME_MAX,
            ..WorkloadConfig::default()
        },
        ..SimConfig::default()
    }
}

/// One run of `variant` replicating machine `S` (`machine_of` finds a node's executed
/// position and MVCC machine).
fn run<S>(
    variant: PaxosVariant,
    config: SimConfig,
    machine_of: fn(&PaxosNode<S>) -> (u64, &MvccMachine),
) -> MvccRun
where
    S: StateMachine<Request = MvccRequest, Response = MvccResponse> + 'static,
{
    run_mvcc(
        config,
        Box::new(move |_| PaxosNode::<S>::new(variant, PaxosConfig::default())),
        machine_of,
        Box::new(|nodes| check_agreement(nodes.running().map(|(_, node)| node))),
        None,
    )
}

fn correct(seed: u64, faults: FaultSet) -> MvccRun {
    run::<MvccMachine>(PaxosVariant::Correct, config(seed, faults), |node| {
        (node.executed_below(), node.store())
    })
}

/// The seeds of `seeds` with findings, and their findings.
fn failing_seeds(
    seeds: std::ops::RangeInclusive<u64>,
    run_seed: impl Fn(u64) -> MvccRun + Sync,
) -> Vec<(u64, Vec<Finding>)> {
    let seeds: Vec<u64> = seeds.collect();
    synod_sim::sweep::sweep(&seeds, 2, |seed| run_seed(seed).findings, |_, _| {})
        .into_iter()
        .filter(|(_, findings)| !findings.is_empty())
        .collect()
}

/// True if the etcd history model (not only the invariants or the audit) flagged some seed.
fn caught_by_the_history_check(failures: &[(u64, Vec<Finding>)]) -> bool {
    failures.iter().any(|(_, findings)| {
        findings
            .iter()
            .any(|finding| matches!(finding, Finding::NotLinearizable(_)))
    })
}

/// Seeds for the fault sweep: 100 in CI, more with `SYNOD_MVCC_SEEDS`.
fn sweep_seeds() -> u64 {
    std::env::var("SYNOD_MVCC_SEEDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(100)
}

#[test]
fn a_quiet_cluster_serves_every_operation_and_the_history_checks() {
    let run = correct(1, FaultSet::none());
    assert!(run.findings.is_empty(), "{:?}", run.findings);
    assert_eq!(run.report.outcomes.ok + run.report.outcomes.fail, 160);
    // Every kind of operation happened, with both cas outcomes and a lease revoked.
    let history = &run.report.history;
    for f in ["get", "put", "delete", "cas", "lease-grant", "lease-revoke"] {
        assert!(
            history.iter().any(|e| e.f == f && e.kind == EventKind::Ok),
            "no ok {f}"
        );
    }
    assert!(run.audit.acknowledged > 0);
    assert_eq!(run.audit.lost, 0);
}

#[test]
fn the_correct_protocol_survives_every_fault_kind() {
    let failures = failing_seeds(1..=sweep_seeds(), |seed| correct(seed, FaultSet::all()));
    assert!(failures.is_empty(), "failing seeds: {failures:#?}");
}

#[test]
fn one_seed_replays_identically() {
    let first = correct(7, FaultSet::all()).report;
    let second = correct(7, FaultSet::all()).report;
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.history, second.history);
}

#[test]
fn a_leader_that_forgets_accepted_values_is_caught() {
    let faults: FaultSet = "partition,crash,drop".parse().expect("valid fault list");
    let failures = failing_seeds(1..=60, |seed| {
        run::<MvccMachine>(
            PaxosVariant::ForgetAcceptedValues,
            config(seed, faults.clone()),
            |node| (node.executed_below(), node.store()),
        )
    });
    assert!(
        caught_by_the_history_check(&failures),
        "the etcd model never caught the broken proposer: {failures:#?}"
    );
}

#[test]
fn a_machine_that_forgets_sessions_is_caught() {
    let faults: FaultSet = "drop,duplicate,partition"
        .parse()
        .expect("valid fault list");
    let failures = failing_seeds(1..=60, |seed| {
        run::<ForgetfulMvcc>(
            PaxosVariant::Correct,
            config(seed, faults.clone()),
            |node| (node.executed_below(), &node.store().inner),
        )
    });
    assert!(
        caught_by_the_history_check(&failures),
        "the etcd model never caught the double execution: {failures:#?}"
    );
}
