//! The MVCC machine on Multi-Paxos, hunted by the simulator: seeded sweeps under every fault
//! kind with a workload of put, get, delete, cas and leases, each history judged by the etcd
//! model (revisions across keys, then linearizability per key and lease group), replicas
//! checked for agreement after every event, and the most advanced replica's store compared
//! with the history (every stored write was invoked, and exactly once). Negative controls:
//! the forgetful Paxos proposer, and a machine that forgets its sessions (retries execute
//! twice), must both be caught.

use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use synod_check::etcd::{EtcdEvent, EtcdFields, check_etcd_history};
use synod_check::history::EventKind;
use synod_check::{Budget, Verdict};
use synod_core::node::{ClientId, NodeId};
use synod_core::rng::Rng;
use synod_core::time::Time;
use synod_protocols::kv_state::ReplicatedClientConfig;
use synod_protocols::mvcc::api::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use synod_protocols::mvcc::watch::{EventType, WatchFilter};
use synod_protocols::mvcc::{
    MvccClient, MvccCommand, MvccMachine, MvccOperation, MvccOutput, MvccRequest, MvccResponse,
};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};
use synod_protocols::replicated::StateMachine;
use synod_sim::config::{FaultSet, SimConfig, WorkloadConfig};
use synod_sim::simulation::{RunReport, Simulation};
use synod_sim::workload::Workload;

/// Leases outlive every run: the history vocabulary has no expiry event.
const LEASE_TTL_SECONDS: i64 = 3_600;

/// What the workload learns as the run goes, and the etcd fields of each event in order.
#[derive(Default)]
struct Shared {
    /// The etcd fields of each invoke event, in history order.
    invoke_fields: Vec<EtcdFields>,
    /// The etcd fields of each `ok` event, in history order.
    ok_fields: Vec<EtcdFields>,
    /// Leases granted and not yet revoked.
    leases: Vec<i64>,
    /// The last value a client saw per key (the `expected` of later cas operations).
    last_seen: BTreeMap<String, Option<String>>,
}

/// Random etcd-like operations over a few keys; every written value is unique.
struct EtcdWorkload {
    config: WorkloadConfig,
    issued: Vec<u32>,
    shared: Rc<RefCell<Shared>>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn revision_field(revision: i64) -> Option<u64> {
    u64::try_from(revision).ok()
}

fn cas(key: &str, expected: Option<&str>, new: &str) -> MvccOperation {
    let compare = match expected {
        None => Compare::key(key, CompareResult::Equal, CompareTarget::Create(0)),
        Some(expected) => Compare::key(
            key,
            CompareResult::Equal,
            CompareTarget::Value(expected.as_bytes().to_vec()),
        ),
    };
    MvccOperation::Txn(TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp::Put(PutRequest::new(key, new))],
        failure: Vec::new(),
    })
}

/// `(expected, new)` of a cas built by [`cas`].
fn cas_arguments(txn: &TxnRequest) -> (Value, Value) {
    let expected = match txn.compare.first().map(|compare| &compare.target) {
        Some(CompareTarget::Value(value)) => Value::String(text(value)),
        _ => Value::Null,
    };
    let new = match txn.success.first() {
        Some(RequestOp::Put(put)) => Value::String(text(&put.value)),
        _ => Value::Null,
    };
    (expected, new)
}

impl EtcdWorkload {
    fn new(config: WorkloadConfig, shared: Rc<RefCell<Shared>>) -> Self {
        let issued = vec![0; config.clients as usize];
        EtcdWorkload {
            config,
            issued,
            shared,
        }
    }
}

impl Workload for EtcdWorkload {
    type Operation = MvccOperation;
    type Output = MvccOutput;

    fn next_operation(&mut self, client: ClientId, rng: &mut Rng) -> Option<MvccOperation> {
        let issued = self.issued.get_mut(usize::try_from(client.0).ok()?)?;
        if *issued >= self.config.operations_per_client {
            return None;
        }
        *issued += 1;
        let key = format!("k{}", rng.below(u64::from(self.config.keys.max(1))));
        let value = format!("{}:{}", client.0, issued);
        let mut shared = self.shared.borrow_mut();
        let mut fields = EtcdFields::default();
        let lease = rng.choose(&shared.leases).copied();
        let operation = match rng.below(20) {
            0..6 => MvccOperation::Range(RangeRequest::key(key)),
            6..12 => {
                let lease = lease.filter(|_| rng.chance(0.4)).unwrap_or(0);
                if lease != 0 {
                    fields.lease = Some(json!(lease));
                }
                MvccOperation::Put(PutRequest {
                    lease,
                    ..PutRequest::new(key, value)
                })
            }
            12..14 => MvccOperation::DeleteRange(DeleteRangeRequest::key(key)),
            14..18 => {
                let seen = shared.last_seen.get(&key).cloned().flatten();
                let expected = seen.filter(|_| rng.chance(0.7));
                cas(&key, expected.as_deref(), &value)
            }
            18 => MvccOperation::LeaseGrant(LeaseGrantRequest {
                ttl: LEASE_TTL_SECONDS,
                id: 0,
            }),
            _ => match lease {
                Some(id) => {
                    fields.lease = Some(json!(id));
                    MvccOperation::LeaseRevoke(LeaseRevokeRequest { id })
                }
                None => MvccOperation::Range(RangeRequest::key(key)),
            },
        };
        shared.invoke_fields.push(fields);
        Some(operation)
    }

    fn describe_invoke(&self, operation: &MvccOperation) -> (String, Option<String>, Value) {
        match operation {
            MvccOperation::Range(range) => ("get".into(), Some(text(&range.key)), Value::Null),
            MvccOperation::Put(put) => (
                "put".into(),
                Some(text(&put.key)),
                Value::String(text(&put.value)),
            ),
            MvccOperation::DeleteRange(delete) => {
                ("delete".into(), Some(text(&delete.key)), Value::Null)
            }
            MvccOperation::Txn(txn) => {
                let key = txn.compare.first().map(|compare| text(&compare.key));
                let (expected, new) = cas_arguments(txn);
                ("cas".into(), key, json!([expected, new]))
            }
            MvccOperation::LeaseGrant(grant) => ("lease-grant".into(), None, json!(grant.ttl)),
            MvccOperation::LeaseRevoke(_) => ("lease-revoke".into(), None, Value::Null),
            other => (format!("{other:?}"), None, Value::Null),
        }
    }

    fn describe_ok(&self, operation: &MvccOperation, output: &MvccOutput) -> Value {
        let mut shared = self.shared.borrow_mut();
        let mut fields = EtcdFields::default();
        let (_, key, invoke_value) = self.describe_invoke(operation);
        let key = key.unwrap_or_default();
        let value = match (operation, output) {
            (MvccOperation::Range(_), MvccOutput::Range(range)) => {
                let found = range.kvs.first();
                fields.revision = revision_field(range.header.revision);
                fields.mod_revision = Some(found.map_or(0, |kv| kv.mod_revision as u64));
                let read = found.map(|kv| text(&kv.value));
                shared.last_seen.insert(key, read.clone());
                read.map_or(Value::Null, Value::String)
            }
            (MvccOperation::Put(_), MvccOutput::Put(put)) => {
                fields.revision = revision_field(put.header.revision);
                shared
                    .last_seen
                    .insert(key, invoke_value.as_str().map(str::to_string));
                invoke_value
            }
            (MvccOperation::DeleteRange(_), MvccOutput::DeleteRange(delete)) => {
                fields.revision = revision_field(delete.header.revision);
                shared.last_seen.insert(key, None);
                json!(delete.deleted)
            }
            (MvccOperation::Txn(txn), MvccOutput::Txn(response)) => {
                fields.revision = revision_field(response.header.revision);
                fields.succeeded = Some(response.succeeded);
                if response.succeeded {
                    let (_, new) = cas_arguments(txn);
                    shared
                        .last_seen
                        .insert(key, new.as_str().map(str::to_string));
                }
                invoke_value
            }
            (MvccOperation::LeaseGrant(_), MvccOutput::LeaseGrant(grant)) => {
                fields.lease = Some(json!(grant.id));
                shared.leases.push(grant.id);
                invoke_value
            }
            (MvccOperation::LeaseRevoke(revoke), MvccOutput::LeaseRevoke(response)) => {
                fields.lease = Some(json!(revoke.id));
                fields.revision = revision_field(response.header.revision);
                shared.leases.retain(|&id| id != revoke.id);
                invoke_value
            }
            _ => Value::String(format!("unexpected output {output:?}")),
        };
        shared.ok_fields.push(fields);
        value
    }
}

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

/// What a run showed.
struct Outcome {
    report: RunReport,
    findings: Vec<String>,
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
            ..WorkloadConfig::default()
        },
        ..SimConfig::default()
    }
}

/// The etcd fields joined to the simulator's history, in order.
fn etcd_history(report: &RunReport, shared: &Shared) -> Vec<EtcdEvent> {
    let mut invokes = shared.invoke_fields.iter();
    let mut oks = shared.ok_fields.iter();
    report
        .history
        .iter()
        .map(|event| {
            let fields = match event.kind {
                EventKind::Invoke => invokes.next(),
                EventKind::Ok => oks.next(),
                EventKind::Fail | EventKind::Info => None,
            };
            EtcdEvent {
                event: event.clone(),
                fields: fields.cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// Every value stored was written by an invoked put or cas, and at most once; every `ok`
/// put is stored at the revision it reported.
fn check_store(store: &MvccMachine, history: &[EtcdEvent]) -> Result<(), String> {
    let mut invoked = BTreeSet::new();
    let mut acknowledged = BTreeMap::new();
    for event in history {
        let value = match (event.event.f.as_str(), &event.event.value) {
            ("put", Value::String(value)) => value.clone(),
            ("cas", Value::Array(pair)) => match pair.get(1) {
                Some(Value::String(value)) => value.clone(),
                _ => continue,
            },
            _ => continue,
        };
        match event.event.kind {
            EventKind::Invoke => {
                invoked.insert(value);
            }
            EventKind::Ok if event.event.f == "put" => {
                acknowledged.insert(value, event.fields.revision);
            }
            _ => {}
        }
    }
    let everything = WatchFilter {
        key: vec![0],
        range_end: vec![0],
        ..WatchFilter::default()
    };
    let events = store
        .store()
        .events(&everything, 0, i64::MAX)
        .map_err(|error| error.to_string())?;
    let mut stored = BTreeMap::new();
    for event in events.iter().filter(|event| event.kind == EventType::Put) {
        let value = text(&event.kv.value);
        if !invoked.contains(&value) {
            return Err(format!("value {value} is stored but was never written"));
        }
        if let Some(first) = stored.insert(value.clone(), event.kv.mod_revision) {
            return Err(format!(
                "value {value} was written twice, at revisions {first} and {}",
                event.kv.mod_revision
            ));
        }
    }
    for (value, revision) in acknowledged {
        let stored_at = stored.get(&value).map(|&revision| revision as u64);
        let applied_far_enough = revision.is_some_and(|r| r <= store.store().revision() as u64);
        if applied_far_enough && stored_at != revision {
            return Err(format!(
                "put of {value} acknowledged at revision {revision:?} but stored at {stored_at:?}"
            ));
        }
    }
    Ok(())
}

fn run<S>(variant: PaxosVariant, config: SimConfig, inner: fn(&S) -> &MvccMachine) -> Outcome
where
    S: StateMachine<Request = MvccRequest, Response = MvccResponse> + 'static,
{
    let shared = Rc::new(RefCell::new(Shared::default()));
    let workload = EtcdWorkload::new(config.workload.clone(), shared.clone());
    let mut simulation = Simulation::new(
        config,
        Box::new(move |_| PaxosNode::<S>::new(variant, PaxosConfig::default())),
        |client, members| {
            let first_guess = members[client.0 as usize % members.len()];
            MvccClient::<PaxosNode<S>>::new(first_guess, ReplicatedClientConfig::default())
        },
        workload,
    );
    simulation.add_invariant(Box::new(|nodes| {
        check_agreement(nodes.running().map(|(_, node)| node))
    }));
    // Keep a copy of the most advanced replica's machine (copied only when it advances).
    let newest: Rc<RefCell<(u64, MvccMachine)>> = Rc::default();
    let keeper = newest.clone();
    simulation.add_invariant(Box::new(move |nodes| {
        let mut newest = keeper.borrow_mut();
        for (_, node) in nodes.running() {
            if node.executed_below() > newest.0 {
                *newest = (node.executed_below(), inner(node.store()).clone());
            }
        }
        Ok(())
    }));
    let report = simulation.run();
    let mut findings = Vec::new();
    if let Some(violation) = &report.invariant_violation {
        findings.push(format!("invariant: {violation}"));
    }
    if let Some(violation) = &report.liveness_violation {
        findings.push(format!("liveness: {violation}"));
    }
    let history = etcd_history(&report, &shared.borrow());
    match check_etcd_history(&history, Budget::default()) {
        Ok(Verdict::Linearizable) => {}
        Ok(verdict) => findings.push(format!("history: {verdict:?}")),
        Err(error) => findings.push(format!("malformed history: {error}")),
    }
    if let Err(problem) = check_store(&newest.borrow().1, &history) {
        findings.push(format!("store: {problem}"));
    }
    Outcome { report, findings }
}

fn correct(seed: u64, faults: FaultSet) -> Outcome {
    run::<MvccMachine>(PaxosVariant::Correct, config(seed, faults), |machine| {
        machine
    })
}

fn failing_seeds(
    seeds: std::ops::RangeInclusive<u64>,
    run_seed: impl Fn(u64) -> Vec<String> + Sync,
) -> Vec<(u64, Vec<String>)> {
    let seeds: Vec<u64> = seeds.collect();
    synod_sim::sweep::sweep(&seeds, 2, run_seed, |_, _| {})
        .into_iter()
        .filter(|(_, findings)| !findings.is_empty())
        .collect()
}

/// True if the etcd history model (not only the invariants) flagged some seed.
fn caught_by_the_history_check(failures: &[(u64, Vec<String>)]) -> bool {
    failures.iter().any(|(_, findings)| {
        findings
            .iter()
            .any(|finding| finding.starts_with("history:"))
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
    let outcome = correct(1, FaultSet::none());
    assert!(outcome.findings.is_empty(), "{:?}", outcome.findings);
    assert_eq!(
        outcome.report.outcomes.ok + outcome.report.outcomes.fail,
        160
    );
    // Every kind of operation happened, with both cas outcomes and a lease revoked.
    let history = &outcome.report.history;
    for f in ["get", "put", "delete", "cas", "lease-grant", "lease-revoke"] {
        assert!(
            history.iter().any(|e| e.f == f && e.kind == EventKind::Ok),
            "no ok {f}"
        );
    }
}

#[test]
fn the_correct_protocol_survives_every_fault_kind() {
    let failures = failing_seeds(1..=sweep_seeds(), |seed| {
        correct(seed, FaultSet::all()).findings
    });
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
            |machine| machine,
        )
        .findings
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
        run::<ForgetfulMvcc>(PaxosVariant::Correct, config(seed, faults.clone()), |m| {
            &m.inner
        })
        .findings
    });
    assert!(
        caught_by_the_history_check(&failures),
        "the etcd model never caught the double execution: {failures:#?}"
    );
}
