//! The protocols `synod sim` can run, and how to build a simulation of each.

// The MVCC workload and judgement; the simulator's tests include the same file.
#[path = "mvcc_sim.rs"]
pub mod mvcc_sim;

use mvcc_sim::{HalfTtlLeases, MvccRun, WriteAudit, run_mvcc};
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use synod_check::kv::Budget;
use synod_core::kv::{KvCommand, KvOutput};
use synod_core::node::{Client, ClientId, NodeId};
use synod_protocols::kv_state::{ReplicatedClientConfig, ReplicatedKvClient, SessionKv};
use synod_protocols::paxos::{PaxosConfig, PaxosNode, PaxosVariant, check_agreement};
use synod_protocols::pb::invariants::{ViewHistory, permanent_stop};
use synod_protocols::pb::{PbClient, PbClientConfig, PbNode, PbVariant};
use synod_protocols::raft::invariants::{ElectionHistory, check_all};
use synod_protocols::raft::{RaftConfig, RaftNode, RaftVariant, ReadMode};

/// Raft replicating the session key-value state machine.
type KvRaft = RaftNode<SessionKv>;

/// Multi-Paxos replicating the session key-value state machine.
type KvPaxos = PaxosNode<SessionKv>;

/// Raft replicating the MVCC machine.
type MvccRaft = RaftNode<MvccMachine>;

/// Raft replicating the MVCC machine whose leader expires leases at half their TTL.
type HastyRaft = RaftNode<HalfTtlLeases>;

/// Multi-Paxos replicating the MVCC machine.
type MvccPaxos = PaxosNode<MvccMachine>;
use synod_check::etcd::EtcdEvent;
use synod_protocols::mvcc::MvccMachine;
use synod_protocols::rpc::{AmoClientConfig, AmoKvClient, AmoKvServer, AmoVariant};
use synod_sim::config::SimConfig;
use synod_sim::simulation::{Invariant, NodeFactory, RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

/// A protocol with a variant, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The single-server at-most-once key-value store.
    AmoKv(AmoVariant),
    /// Multi-Paxos replicating the key-value state machine.
    PaxosKv(PaxosVariant),
    /// Primary-backup with a view service. Its servers keep state in memory only, so under
    /// crash faults a run may stop for good by design (both copies lost, or the primary lost
    /// before acknowledging its view; see `synod_protocols::pb`): such a run's liveness
    /// finding is dropped, every other finding stands.
    PrimaryBackup(PbVariant),
    /// Raft replicating the key-value state machine, with a way to serve reads.
    RaftKv(RaftSetup),
}

/// A Raft leader and read path, as named by `--variant` for `raft-kv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftSetup {
    /// The leader.
    pub variant: RaftVariant,
    /// How gets are served.
    pub read_mode: ReadMode,
    /// With the MVCC workload: run the broken machine whose leader expires leases at half
    /// their TTL.
    pub half_ttl_leases: bool,
}

impl RaftSetup {
    /// Every `raft-kv` variant: ReadIndex reads, lease reads, reads through the log, the
    /// broken figure-8 leader, the broken lease expiry, and the broken follower that reads
    /// before applying the leader's read index, and the broken leader whose lease reads
    /// miss writes followers committed on its durable hints.
    pub const ALL: [RaftSetup; 7] = [
        RaftSetup {
            variant: RaftVariant::Correct,
            read_mode: ReadMode::ReadIndex,
            half_ttl_leases: false,
        },
        RaftSetup {
            variant: RaftVariant::Correct,
            read_mode: ReadMode::Lease,
            half_ttl_leases: false,
        },
        RaftSetup {
            variant: RaftVariant::Correct,
            read_mode: ReadMode::Log,
            half_ttl_leases: false,
        },
        RaftSetup {
            variant: RaftVariant::Figure8,
            read_mode: ReadMode::ReadIndex,
            half_ttl_leases: false,
        },
        RaftSetup {
            variant: RaftVariant::Correct,
            read_mode: ReadMode::ReadIndex,
            half_ttl_leases: true,
        },
        RaftSetup {
            variant: RaftVariant::EarlyFollowerRead,
            read_mode: ReadMode::ReadIndex,
            half_ttl_leases: false,
        },
        RaftSetup {
            variant: RaftVariant::HintBlindReads,
            read_mode: ReadMode::Lease,
            half_ttl_leases: false,
        },
    ];

    /// The `--variant` name.
    pub fn name(self) -> &'static str {
        match (self.half_ttl_leases, self.variant, self.read_mode) {
            (true, _, _) => "half-ttl-leases",
            (false, RaftVariant::Figure8, _) => "figure8",
            (false, RaftVariant::EarlyFollowerRead, _) => "early-follower-read",
            (false, RaftVariant::HintBlindReads, _) => "hint-blind-reads",
            (false, RaftVariant::Correct, ReadMode::Lease) => "lease-reads",
            (false, RaftVariant::Correct, ReadMode::Log) => "log-reads",
            (false, RaftVariant::Correct, ReadMode::ReadIndex) => "correct",
        }
    }

    /// The node configuration.
    pub fn config(self) -> RaftConfig {
        RaftConfig {
            read_mode: self.read_mode,
            ..RaftConfig::default()
        }
    }
}

/// What the clients of a run do, as named by `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// The MVCC machine with etcd semantics: put, linearizable get, delete, cas, leases
    /// (grant, put with a lease, keep-alive, revoke, expiry), judged by the etcd model.
    Mvcc,
    /// The session key-value store: get, put, append, delete, judged by the key-value model.
    SessionKv,
}

impl WorkloadKind {
    /// The `--workload` name.
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::Mvcc => "mvcc",
            WorkloadKind::SessionKv => "session-kv",
        }
    }

    /// The workload `--workload` names for `protocol` (`None`: its default).
    pub fn parse(protocol: Protocol, name: Option<&str>) -> Result<WorkloadKind, String> {
        let replicated = matches!(protocol, Protocol::PaxosKv(_) | Protocol::RaftKv(_));
        let wanted = match name {
            None if replicated => WorkloadKind::Mvcc,
            None => WorkloadKind::SessionKv,
            Some("mvcc") => WorkloadKind::Mvcc,
            Some("session-kv") => WorkloadKind::SessionKv,
            Some(other) => {
                return Err(format!(
                    "unknown workload '{other}': choose mvcc or session-kv"
                ));
            }
        };
        if wanted == WorkloadKind::Mvcc && !replicated {
            return Err(format!(
                "{} runs only the session-kv workload; mvcc needs paxos-kv or raft-kv",
                protocol.name()
            ));
        }
        if let Protocol::RaftKv(setup) = protocol
            && setup.half_ttl_leases
            && wanted != WorkloadKind::Mvcc
        {
            return Err(
                "variant half-ttl-leases breaks the MVCC machine's leases: use it with \
                        --workload mvcc"
                    .to_owned(),
            );
        }
        Ok(wanted)
    }
}

/// One run, judged.
pub struct Judged {
    /// The simulator's report.
    pub report: RunReport,
    /// What went wrong (empty: the run passed).
    pub findings: Vec<Finding>,
    /// With the MVCC workload: the history with its etcd fields.
    pub etcd_history: Option<Vec<EtcdEvent>>,
    /// With the MVCC workload: the audit of acknowledged writes.
    pub audit: Option<WriteAudit>,
}

impl From<(RunReport, Vec<Finding>)> for Judged {
    fn from((report, findings): (RunReport, Vec<Finding>)) -> Judged {
        Judged {
            report,
            findings,
            etcd_history: None,
            audit: None,
        }
    }
}

impl From<MvccRun> for Judged {
    fn from(run: MvccRun) -> Judged {
        Judged {
            report: run.report,
            findings: run.findings,
            etcd_history: Some(run.history),
            audit: Some(run.audit),
        }
    }
}

/// Names accepted by `--protocol`.
pub const PROTOCOL_NAMES: [&str; 4] = ["amo-kv", "paxos-kv", "pb-kv", "raft-kv"];

/// Finds the variant called `wanted` among `variants`, or explains the choices.
fn find_variant<V: Copy>(
    protocol: &str,
    variants: &[V],
    name: impl Fn(V) -> &'static str,
    wanted: &str,
) -> Result<V, String> {
    variants
        .iter()
        .copied()
        .find(|&variant| name(variant) == wanted)
        .ok_or_else(|| {
            let names: Vec<&str> = variants.iter().map(|&variant| name(variant)).collect();
            format!(
                "unknown variant '{wanted}' for {protocol}: choose one of {}",
                names.join(", ")
            )
        })
}

impl Protocol {
    /// Parses `--protocol` and `--variant`.
    pub fn parse(protocol: &str, variant: &str) -> Result<Protocol, String> {
        match protocol {
            "amo-kv" => find_variant(protocol, &AmoVariant::ALL, AmoVariant::name, variant)
                .map(Protocol::AmoKv),
            "paxos-kv" => find_variant(protocol, &PaxosVariant::ALL, PaxosVariant::name, variant)
                .map(Protocol::PaxosKv),
            "pb-kv" => find_variant(protocol, &PbVariant::ALL, PbVariant::name, variant)
                .map(Protocol::PrimaryBackup),
            "raft-kv" => find_variant(protocol, &RaftSetup::ALL, RaftSetup::name, variant)
                .map(Protocol::RaftKv),
            other => Err(format!(
                "unknown protocol '{other}': choose one of {}",
                PROTOCOL_NAMES.join(", ")
            )),
        }
    }

    /// The `--protocol` name.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::AmoKv(_) => "amo-kv",
            Protocol::PaxosKv(_) => "paxos-kv",
            Protocol::PrimaryBackup(_) => "pb-kv",
            Protocol::RaftKv(_) => "raft-kv",
        }
    }

    /// The `--variant` name.
    pub fn variant_name(self) -> &'static str {
        match self {
            Protocol::AmoKv(variant) => variant.name(),
            Protocol::PaxosKv(variant) => variant.name(),
            Protocol::PrimaryBackup(variant) => variant.name(),
            Protocol::RaftKv(setup) => setup.name(),
        }
    }

    /// The node count the protocol runs with.
    pub fn nodes(self) -> u32 {
        match self {
            Protocol::AmoKv(_) => 1,
            Protocol::PaxosKv(_) | Protocol::RaftKv(_) => 3,
            // The view service, a primary, a backup and a spare.
            Protocol::PrimaryBackup(_) => 4,
        }
    }

    /// Runs one seed of `workload` (tracing to `trace` if given) and judges it.
    pub fn run(
        self,
        workload: WorkloadKind,
        config: SimConfig,
        trace: Option<Box<dyn Write>>,
    ) -> Judged {
        if workload == WorkloadKind::Mvcc {
            return self.run_mvcc(config, trace);
        }
        self.run_session_kv(config, trace).into()
    }

    /// Runs one seed of the MVCC workload on a replicated protocol.
    fn run_mvcc(self, config: SimConfig, trace: Option<Box<dyn Write>>) -> Judged {
        match self {
            Protocol::RaftKv(setup) if setup.half_ttl_leases => {
                let history = RefCell::new(ElectionHistory::new());
                run_mvcc(
                    config,
                    Box::new(move |_| HastyRaft::new(setup.variant, setup.config())),
                    |node: &HastyRaft| (node.applied_index(), &node.state().0),
                    Box::new(move |nodes| {
                        history.borrow_mut().observe(nodes.running())?;
                        check_all(nodes.running())
                    }),
                    trace,
                )
                .into()
            }
            Protocol::RaftKv(setup) => {
                let history = RefCell::new(ElectionHistory::new());
                run_mvcc(
                    config,
                    Box::new(move |_| MvccRaft::new(setup.variant, setup.config())),
                    |node: &MvccRaft| (node.applied_index(), node.state()),
                    Box::new(move |nodes| {
                        history.borrow_mut().observe(nodes.running())?;
                        check_all(nodes.running())
                    }),
                    trace,
                )
                .into()
            }
            Protocol::PaxosKv(variant) => run_mvcc(
                config,
                Box::new(move |_| MvccPaxos::new(variant, PaxosConfig::default())),
                |node: &MvccPaxos| (node.executed_below(), node.store()),
                Box::new(|nodes| {
                    check_agreement(nodes.running().map(|(_, node): (NodeId, &MvccPaxos)| node))
                }),
                trace,
            )
            .into(),
            // `WorkloadKind::parse` allows the MVCC workload on replicated protocols only.
            Protocol::AmoKv(_) | Protocol::PrimaryBackup(_) => {
                self.run_session_kv(config, trace).into()
            }
        }
    }

    /// Runs one seed of the session key-value workload.
    fn run_session_kv(
        self,
        config: SimConfig,
        trace: Option<Box<dyn Write>>,
    ) -> (RunReport, Vec<Finding>) {
        match self {
            Protocol::AmoKv(variant) => {
                let clients = config.workload.clients as usize;
                simulate(
                    config,
                    Box::new(move |_| AmoKvServer::new(variant)),
                    |_, members| AmoKvClient::new(members[0], AmoClientConfig::default()),
                    Box::new(move |nodes| {
                        nodes
                            .running()
                            .try_for_each(|(_, server): (NodeId, &AmoKvServer)| {
                                server.check_session_bound(clients)
                            })
                    }),
                    trace,
                )
            }
            Protocol::PaxosKv(variant) => simulate(
                config,
                Box::new(move |_| KvPaxos::new(variant, PaxosConfig::default())),
                |client, members| {
                    let first_guess = members[client.0 as usize % members.len()];
                    ReplicatedKvClient::new(first_guess, ReplicatedClientConfig::default())
                },
                Box::new(|nodes| {
                    check_agreement(nodes.running().map(|(_, node): (NodeId, &KvPaxos)| node))
                }),
                trace,
            ),
            Protocol::PrimaryBackup(variant) => {
                let stop = Rc::new(RefCell::new(None));
                let seen = Rc::clone(&stop);
                let history = RefCell::new(ViewHistory::new());
                let (report, mut findings) = simulate(
                    config,
                    Box::new(move |id| PbNode::new(id, variant)),
                    |_, _| PbClient::new(PbClientConfig::default()),
                    Box::new(move |nodes| {
                        *seen.borrow_mut() = permanent_stop(nodes.running());
                        history.borrow_mut().observe(nodes.running())
                    }),
                    trace,
                );
                if stop.borrow().is_some() {
                    findings.retain(|finding| !matches!(finding, Finding::Liveness(_)));
                }
                (report, findings)
            }
            Protocol::RaftKv(setup) => {
                let history = RefCell::new(ElectionHistory::new());
                simulate(
                    config,
                    Box::new(move |_| KvRaft::new(setup.variant, setup.config())),
                    |client, members| {
                        let first_guess = members[client.0 as usize % members.len()];
                        ReplicatedKvClient::new(first_guess, ReplicatedClientConfig::default())
                    },
                    Box::new(move |nodes| {
                        history.borrow_mut().observe(nodes.running())?;
                        check_all(nodes.running())
                    }),
                    trace,
                )
            }
        }
    }
}

/// Builds, runs and judges one simulation of a key-value protocol.
fn simulate<C>(
    config: SimConfig,
    make_node: NodeFactory<C>,
    make_client: impl Fn(ClientId, &[NodeId]) -> C,
    invariant: Invariant<C>,
    trace: Option<Box<dyn Write>>,
) -> (RunReport, Vec<Finding>)
where
    C: Client<Operation = KvCommand, Output = KvOutput>,
{
    let workload = KvWorkload::new(config.workload.clone());
    let mut simulation = Simulation::new(config, make_node, make_client, workload);
    simulation.add_invariant(invariant);
    if let Some(trace) = trace {
        simulation.set_trace(trace);
    }
    let report = simulation.run();
    let findings = judge_kv_run(&report, Budget::default());
    (report, findings)
}
