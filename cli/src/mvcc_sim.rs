//! The MVCC machine under simulation: an etcd-like workload (put, linearizable get, delete,
//! cas, lease grant, put with a lease, keep-alive, revoke), the history joined with its etcd
//! fields, judged by the etcd model, and an audit of the most advanced replica's store that
//! counts acknowledged writes lost.
//!
//! `synod sim --protocol raft-kv` and `--protocol paxos-kv` run it through the registry, and
//! the simulator's tests (`sim/tests/raft_mvcc.rs`) include this file as it is, so the CLI and
//! the CI slice run the same workload and the same judgement.

use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;
use synod_check::etcd::{EtcdEvent, EtcdFields, EtcdOptions, LeaseExpiry, check_etcd_history_with};
use synod_check::history::EventKind;
use synod_check::{Budget, Verdict};
use synod_core::node::{ClientId, Node, NodeId};
use synod_core::rng::Rng;
use synod_core::time::Time;
use synod_protocols::kv_state::ReplicatedClientConfig;
use synod_protocols::mvcc::api::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use synod_protocols::mvcc::watch::{EventType, WatchFilter};
use synod_protocols::mvcc::{
    MvccClient, MvccCommand, MvccMachine, MvccOperation, MvccOutput, MvccRequest, MvccResponse,
};
use synod_protocols::replicated::{ReadConsistency, StateMachine};
use synod_sim::config::{FaultKind, SimConfig, WorkloadConfig};
use synod_sim::simulation::{Invariant, NodeFactory, Nodes, RunReport, Simulation};
use synod_sim::verdict::Finding;
use synod_sim::workload::Workload;

/// The TTL of the leases the workload grants, in seconds: the shortest etcd allows, so
/// leases whose keep-alives stop expire while the run still reads their keys.
pub const LEASE_TTL_SECONDS: i64 = 1;

/// Keep-alives a lease's holder sends at most before it lets the lease lapse (each lease
/// gets between none and this many, decided by its id).
const KEEP_ALIVES_PER_LEASE_MAX: u64 = 2;

/// The longest pause between a client's operations: long enough that a run outlasts a TTL,
/// so expiry happens under the workload's eyes.
pub const THINK_TIME_MAX: Duration = Duration::from_millis(50);

/// A lease the workload knows of.
struct Held {
    /// The lease id.
    id: i64,
    /// Keep-alives still to send.
    keep_alives_left: u64,
}

/// What the workload learns as the run goes, and the etcd fields of each event in order.
#[derive(Default)]
pub struct Shared {
    /// The etcd fields of each invoke event, in history order.
    invoke_fields: Vec<EtcdFields>,
    /// The etcd fields of each `ok` event, in history order.
    ok_fields: Vec<EtcdFields>,
    /// Leases granted and not yet revoked by a client (some may have expired).
    leases: Vec<Held>,
    /// The last value a client saw per key (the `expected` of later cas operations).
    last_seen: BTreeMap<String, Option<String>>,
}

/// Random etcd-like operations over a few keys; every written value is unique.
pub struct EtcdWorkload {
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

/// A transaction putting `new` if `key` holds `expected` (is absent, for `None`).
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
    /// A workload following `config`, recording etcd fields into `shared`.
    pub fn new(config: WorkloadConfig, shared: Rc<RefCell<Shared>>) -> Self {
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
        let lease = rng.choose(&shared.leases).map(|held| held.id);
        let renewable: Vec<usize> = (0..shared.leases.len())
            .filter(|&index| shared.leases[index].keep_alives_left > 0)
            .collect();
        let put = |lease: i64, fields: &mut EtcdFields| {
            if lease != 0 {
                fields.lease = Some(json!(lease));
            }
            MvccOperation::Put(PutRequest {
                lease,
                ..PutRequest::new(key.clone(), value.clone())
            })
        };
        let operation = match rng.below(20) {
            0..5 => MvccOperation::Range(RangeRequest::key(key.clone())),
            5..10 => {
                let lease = lease.filter(|_| rng.chance(0.3)).unwrap_or(0);
                put(lease, &mut fields)
            }
            10..12 => MvccOperation::DeleteRange(DeleteRangeRequest::key(key.clone())),
            12..15 => {
                let seen = shared.last_seen.get(&key).cloned().flatten();
                let expected = seen.filter(|_| rng.chance(0.7));
                cas(&key, expected.as_deref(), &value)
            }
            15 => MvccOperation::LeaseGrant(LeaseGrantRequest {
                ttl: LEASE_TTL_SECONDS,
                id: 0,
            }),
            16 | 17 => match rng.choose(&renewable) {
                Some(&index) => {
                    let held = &mut shared.leases[index];
                    held.keep_alives_left -= 1;
                    fields.lease = Some(json!(held.id));
                    MvccOperation::LeaseKeepAlive(LeaseKeepAliveRequest { id: held.id })
                }
                None => MvccOperation::Range(RangeRequest::key(key.clone())),
            },
            18 => match lease {
                Some(id) => {
                    fields.lease = Some(json!(id));
                    MvccOperation::LeaseRevoke(LeaseRevokeRequest { id })
                }
                None => MvccOperation::Range(RangeRequest::key(key.clone())),
            },
            _ => put(lease.unwrap_or(0), &mut fields),
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
            MvccOperation::LeaseKeepAlive(_) => ("lease-keepalive".into(), None, Value::Null),
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
                let keep_alives_left = grant.id.unsigned_abs() % (KEEP_ALIVES_PER_LEASE_MAX + 1);
                shared.leases.push(Held {
                    id: grant.id,
                    keep_alives_left,
                });
                invoke_value
            }
            (MvccOperation::LeaseKeepAlive(renew), MvccOutput::LeaseKeepAlive(response)) => {
                fields.lease = Some(json!(renew.id));
                json!(response.ttl)
            }
            (MvccOperation::LeaseRevoke(revoke), MvccOutput::LeaseRevoke(response)) => {
                fields.lease = Some(json!(revoke.id));
                fields.revision = revision_field(response.header.revision);
                shared.leases.retain(|held| held.id != revoke.id);
                invoke_value
            }
            _ => Value::String(format!("unexpected output {output:?}")),
        };
        shared.ok_fields.push(fields);
        value
    }
}

/// The etcd fields joined to the simulator's history, in order.
pub fn etcd_history(report: &RunReport, shared: &Shared) -> Vec<EtcdEvent> {
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

/// What the store audit found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteAudit {
    /// Writes acknowledged `ok` (puts, and cas operations that succeeded).
    pub acknowledged: u64,
    /// Acknowledged writes the most advanced replica does not hold at the revision they
    /// reported.
    pub lost: u64,
    /// Leases granted (`ok`) that the store no longer has though no client revoked them:
    /// they expired.
    pub leases_expired: u64,
    /// The first problems found, for the findings.
    pub problems: Vec<String>,
}

/// Problems an audit lists at most (the count of lost writes is exact regardless).
const AUDIT_PROBLEMS_MAX: usize = 5;

impl WriteAudit {
    fn problem(&mut self, problem: String) {
        if self.problems.len() < AUDIT_PROBLEMS_MAX {
            self.problems.push(problem);
        }
    }
}

/// Audits `store`, the most advanced replica's machine, against the history: every value
/// stored was written by an invoked put or cas, at most once; every acknowledged write is
/// stored at the revision it reported (else it is lost); no key is attached to a lease that
/// was revoked or expired.
pub fn audit_store(store: &MvccMachine, history: &[EtcdEvent]) -> WriteAudit {
    let mut audit = WriteAudit::default();
    let mut invoked = BTreeSet::new();
    let mut acknowledged = BTreeMap::new();
    let mut granted = BTreeSet::new();
    let mut revoked = BTreeSet::new();
    for event in history {
        let lease = || event.fields.lease.as_ref().and_then(Value::as_i64);
        match (event.event.kind, event.event.f.as_str()) {
            (EventKind::Ok, "lease-grant") => granted.extend(lease()),
            // A revoke that may have happened counts as a revoke.
            (EventKind::Invoke, "lease-revoke") => revoked.extend(lease()),
            _ => {}
        }
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
            EventKind::Ok if event.event.f == "put" || event.fields.succeeded == Some(true) => {
                acknowledged.insert(value, event.fields.revision);
            }
            _ => {}
        }
    }
    audit.leases_expired = granted
        .iter()
        .filter(|&&id| !revoked.contains(&id) && store.store().lease(id).is_none())
        .count() as u64;
    // A revoke or an expiry deletes every key attached to the lease in the same revision:
    // no current key may name a lease that is gone.
    let current = RangeRequest {
        range_end: vec![0],
        ..RangeRequest::key(vec![0])
    };
    match store.store().range(&current) {
        Ok(range) => {
            for kv in range.kvs.iter().filter(|kv| kv.lease != 0) {
                if store.store().lease(kv.lease).is_none() {
                    audit.problem(format!(
                        "key {} is still attached to lease {}, which is gone",
                        text(&kv.key),
                        kv.lease
                    ));
                }
            }
        }
        Err(error) => audit.problem(format!("the store cannot be read: {error}")),
    }
    let everything = WatchFilter {
        key: vec![0],
        range_end: vec![0],
        ..WatchFilter::default()
    };
    let events = match store.store().events(&everything, 0, i64::MAX) {
        Ok(events) => events,
        Err(error) => {
            audit.problem(format!("the store's history cannot be read: {error}"));
            return audit;
        }
    };
    let mut stored = BTreeMap::new();
    for event in events.iter().filter(|event| event.kind == EventType::Put) {
        let value = text(&event.kv.value);
        if !invoked.contains(&value) {
            audit.problem(format!("value {value} is stored but was never written"));
        }
        if let Some(first) = stored.insert(value.clone(), event.kv.mod_revision) {
            audit.problem(format!(
                "value {value} was written twice, at revisions {first} and {}",
                event.kv.mod_revision
            ));
        }
    }
    let applied = u64::try_from(store.store().revision()).unwrap_or(0);
    for (value, revision) in acknowledged {
        audit.acknowledged += 1;
        let stored_at = stored
            .get(&value)
            .and_then(|&revision| u64::try_from(revision).ok());
        // A write acknowledged at a revision the replica has not applied yet is not judged
        // (the most advanced replica always has, unless the write was lost with the log).
        let lost = match revision {
            Some(revision) => stored_at != Some(revision) && revision <= applied,
            None => stored_at.is_none(),
        };
        if lost {
            audit.lost += 1;
            audit.problem(format!(
                "write of {value} acknowledged at revision {revision:?} but stored at \
                 {stored_at:?}"
            ));
        }
    }
    audit
}

/// One judged run of the MVCC machine.
pub struct MvccRun {
    /// The simulator's report.
    pub report: RunReport,
    /// Everything that went wrong (empty: the run passed).
    pub findings: Vec<Finding>,
    /// The history with its etcd fields.
    pub history: Vec<EtcdEvent>,
    /// The store audit.
    pub audit: WriteAudit,
}

/// How lease expiry may look to the checker in a run under `config` with `report`'s faults:
/// after a TTL less the clock jumps the nemesis may have made (each at most
/// `clock_jump_max`), at the drift bound Raft's leases assume.
pub fn lease_expiry_bound(config: &SimConfig, report: &RunReport) -> LeaseExpiry {
    let clock_faults = if config.faults.contains(FaultKind::Clock) {
        report.faults.get("clock").copied().unwrap_or(0)
    } else {
        0
    };
    let jumps = config
        .nemesis
        .clock_jump_max
        .saturating_mul(u32::try_from(clock_faults).unwrap_or(u32::MAX));
    LeaseExpiry::AfterTtl {
        drift_ppm: synod_protocols::raft::RaftConfig::default().clock_drift_bound_ppm,
        clock_jumps: jumps,
    }
}

/// Simulates `config` on nodes from `make_node` running the MVCC machine (`machine_of`
/// returns a node's applied position and machine), checks `invariant` after every event,
/// and judges the run.
pub fn run_mvcc<N>(
    config: SimConfig,
    make_node: NodeFactory<MvccClient<N>>,
    machine_of: fn(&N) -> (u64, &MvccMachine),
    invariant: Invariant<MvccClient<N>>,
    trace: Option<Box<dyn Write>>,
) -> MvccRun
where
    N: Node<Request = MvccRequest, Response = MvccResponse> + 'static,
{
    let shared = Rc::new(RefCell::new(Shared::default()));
    let workload = EtcdWorkload::new(config.workload.clone(), shared.clone());
    let mut simulation = Simulation::new(
        config.clone(),
        make_node,
        |client, members: &[NodeId]| {
            let first_guess = members[client.0 as usize % members.len()];
            MvccClient::<N>::new(first_guess, ReplicatedClientConfig::default())
        },
        workload,
    );
    simulation.add_invariant(invariant);
    // A copy of the most advanced replica's machine, taken only when it advances.
    let newest: Rc<RefCell<(u64, MvccMachine)>> = Rc::default();
    let keeper = newest.clone();
    simulation.add_invariant(Box::new(move |nodes: &Nodes<'_, MvccClient<N>>| {
        let mut newest = keeper.borrow_mut();
        for (_, node) in nodes.running() {
            let (applied, machine) = machine_of(node);
            if applied > newest.0 {
                *newest = (applied, machine.clone());
            }
        }
        Ok(())
    }));
    if let Some(trace) = trace {
        simulation.set_trace(trace);
    }
    let report = simulation.run();
    let mut findings = Vec::new();
    if let Some(violation) = &report.invariant_violation {
        findings.push(Finding::Invariant(violation.clone()));
    }
    if let Some(violation) = &report.liveness_violation {
        findings.push(Finding::Liveness(violation.clone()));
    }
    let history = etcd_history(&report, &shared.borrow());
    let options = EtcdOptions {
        budget: Budget::default(),
        lease_expiry: lease_expiry_bound(&config, &report),
    };
    match check_etcd_history_with(&history, &options) {
        Ok(Verdict::Linearizable) => {}
        Ok(Verdict::NotLinearizable(violation)) => {
            findings.push(Finding::NotLinearizable(violation.to_string()));
        }
        Ok(Verdict::Unknown { key, reason }) => {
            findings.push(Finding::CheckerUnknown(format!("key {key}: {reason}")));
        }
        Err(error) => findings.push(Finding::BadHistory(error.to_string())),
    }
    let audit = audit_store(&newest.borrow().1, &history);
    if !audit.problems.is_empty() {
        findings.push(Finding::Invariant(format!(
            "in the store audit ({} of {} acknowledged writes lost): {}",
            audit.lost,
            audit.acknowledged,
            audit.problems.join("; ")
        )));
    }
    MvccRun {
        report,
        findings,
        history,
        audit,
    }
}

/// A deliberately broken machine for the negative control: its leader expires a lease once
/// half its TTL has passed (on its clock), so keys vanish while their holder may still
/// count on them. The etcd model must catch it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct HalfTtlLeases(pub MvccMachine);

impl StateMachine for HalfTtlLeases {
    type Request = MvccRequest;
    type Response = MvccResponse;
    type Command = MvccCommand;

    fn command(client: ClientId, request: MvccRequest, now: Time) -> MvccCommand {
        MvccMachine::command(client, request, now)
    }

    fn apply(&mut self, command: &MvccCommand) -> Option<(ClientId, MvccResponse)> {
        self.0.apply(command)
    }

    fn redirect(request: &MvccRequest, leader: Option<NodeId>) -> MvccResponse {
        MvccMachine::redirect(request, leader)
    }

    fn read_consistency(request: &MvccRequest) -> Option<ReadConsistency> {
        MvccMachine::read_consistency(request)
    }

    fn query(&self, client: ClientId, request: &MvccRequest) -> MvccResponse {
        self.0.query(client, request)
    }

    fn due(&self, now: Time, leading_since: Time) -> Vec<MvccCommand> {
        let mut commands = self.0.due(now, leading_since);
        let store = self.0.store();
        for id in store.lease_leases().leases {
            let Some(lease) = store.lease(id) else {
                continue;
            };
            let early = lease.deadline(leading_since) <= now + lease.ttl_duration() / 2;
            let expire = MvccCommand::ExpireLease {
                id,
                renewed_at: lease.renewed_at,
            };
            if early && !commands.contains(&expire) {
                commands.push(expire);
            }
        }
        commands
    }
}
