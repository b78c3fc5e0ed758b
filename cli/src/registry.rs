//! The protocols `synod sim` can run, and how to build a simulation of each.

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

/// Raft replicating the key-value state machine.
type KvRaft = RaftNode<SessionKv>;

/// Multi-Paxos replicating the key-value state machine.
type KvPaxos = PaxosNode<SessionKv>;
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
}

impl RaftSetup {
    /// Every `raft-kv` variant: ReadIndex reads, lease reads, reads through the log, and
    /// the broken figure-8 leader.
    pub const ALL: [RaftSetup; 4] = [
        RaftSetup {
            variant: RaftVariant::Correct,
            read_mode: ReadMode::ReadIndex,
        },
        RaftSetup {
            variant: RaftVariant::Correct,
            read_mode: ReadMode::Lease,
        },
        RaftSetup {
            variant: RaftVariant::Correct,
            read_mode: ReadMode::Log,
        },
        RaftSetup {
            variant: RaftVariant::Figure8,
            read_mode: ReadMode::ReadIndex,
        },
    ];

    /// The `--variant` name.
    pub fn name(self) -> &'static str {
        match (self.variant, self.read_mode) {
            (RaftVariant::Figure8, _) => "figure8",
            (RaftVariant::Correct, ReadMode::Lease) => "lease-reads",
            (RaftVariant::Correct, ReadMode::Log) => "log-reads",
            (RaftVariant::Correct, ReadMode::ReadIndex) => "correct",
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

    /// Runs one seed (tracing to `trace` if given) and judges it.
    pub fn run(
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
