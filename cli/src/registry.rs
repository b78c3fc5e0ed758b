//! The protocols `synod sim` can run, and how to build a simulation of each.

use std::io::Write;
use synod_check::kv::Budget;
use synod_protocols::rpc::{AmoClientConfig, AmoKvClient, AmoKvServer, AmoVariant};
use synod_sim::config::SimConfig;
use synod_sim::simulation::{RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::KvWorkload;

/// A protocol with a variant, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// The single-server at-most-once key-value store.
    AmoKv(AmoVariant),
}

/// Names accepted by `--protocol`.
pub const PROTOCOL_NAMES: [&str; 1] = ["amo-kv"];

impl Protocol {
    /// Parses `--protocol` and `--variant`.
    pub fn parse(protocol: &str, variant: &str) -> Result<Protocol, String> {
        match protocol {
            "amo-kv" => {
                let found = AmoVariant::ALL
                    .into_iter()
                    .find(|candidate| candidate.name() == variant)
                    .ok_or_else(|| {
                        let names: Vec<&str> = AmoVariant::ALL
                            .iter()
                            .map(|variant| variant.name())
                            .collect();
                        format!(
                            "unknown variant '{variant}' for amo-kv: choose one of {}",
                            names.join(", ")
                        )
                    })?;
                Ok(Protocol::AmoKv(found))
            }
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
        }
    }

    /// The `--variant` name.
    pub fn variant_name(self) -> &'static str {
        match self {
            Protocol::AmoKv(variant) => variant.name(),
        }
    }

    /// The node count the protocol runs with.
    pub fn nodes(self) -> u32 {
        match self {
            Protocol::AmoKv(_) => 1,
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
                let workload = KvWorkload::new(config.workload.clone());
                let mut simulation = Simulation::new(
                    config,
                    Box::new(move |_| AmoKvServer::new(variant)),
                    |_, members| AmoKvClient::new(members[0], AmoClientConfig::default()),
                    workload,
                );
                simulation.add_invariant(Box::new(move |nodes| {
                    nodes
                        .running()
                        .try_for_each(|(_, server)| server.check_session_bound(clients))
                }));
                if let Some(trace) = trace {
                    simulation.set_trace(trace);
                }
                let report = simulation.run();
                let findings = judge_kv_run(&report, Budget::default());
                (report, findings)
            }
        }
    }
}
