//! `synod sim --replay FILE`: runs a model checker's counterexample (a trace file written by
//! `synod mc --trace-out`) in the simulator and reports what the simulator's own checks find.
//!
//! The model is rebuilt from the file's protocol, variant and parameters with the very
//! builders `synod mc` uses ([`crate::mc_command`]), the path is re-executed on it to recover
//! the actions, and [`Simulation::replay`] carries them out on the same nodes and clients,
//! with the protocol's invariants after every step and the history judged at the end. The
//! protocol dispatch lives here rather than in the sweep's registry because a replay needs
//! the model checker's configuration (node count, scripted clients), not the sweep's.

use crate::mc_command::{
    PAXOS_REPLICAS, PB_NODES, parse_paxos_variant, parse_pb_variant, paxos_client, paxos_model,
    paxos_scripts, pb_model, pb_scripts,
};
use anyhow::{Context as _, bail};
use std::cell::RefCell;
use std::path::Path;
use std::process::ExitCode;
use synod_check::kv::Budget;
use synod_core::kv::KvCommand;
use synod_protocols::paxos::{PaxosConfig, check_agreement};
use synod_protocols::pb::invariants::{ViewHistory, check_backup_mirrors_primary};
use synod_protocols::pb::{PbClient, PbClientConfig, PbNode};
use synod_sim::config::{FaultSet, SimConfig};
use synod_sim::model_checker::trace_file::{TraceFile, enabled_actions};
use synod_sim::simulation::{RunReport, Simulation};
use synod_sim::verdict::{Finding, judge_kv_run};
use synod_sim::workload::ScriptedKvWorkload;

/// A fault-free configuration with `nodes` nodes and one client per script.
fn replay_config(nodes: u32, scripts: &[Vec<KvCommand>]) -> SimConfig {
    let mut config = SimConfig {
        nodes,
        faults: FaultSet::none(),
        ..SimConfig::default()
    };
    config.workload.clients = scripts.len() as u32;
    config
}

/// Replays the trace file at `path` on the nodes of its own variant, or of `on_variant` if
/// given (the same schedule against, say, the correct protocol: the steps that variant's
/// model does not enable where they come up, such as deliveries of messages it never
/// sent, are left out); exit code 1 if the simulator finds a violation.
pub fn run(path: &Path, on_variant: Option<&str>) -> anyhow::Result<ExitCode> {
    let file = TraceFile::read(path)?;
    let nodes_variant = on_variant.unwrap_or(&file.variant);
    let report = match file.protocol.as_str() {
        "paxos-kv" => {
            let variant = parse_paxos_variant(&file.variant)?;
            let rounds = file
                .config_u64("rounds")
                .context("the paxos-kv trace has no \"rounds\" in its config")?;
            let actions = file.actions(&paxos_model(variant, rounds))?;
            let variant = parse_paxos_variant(nodes_variant)?;
            let actions = enabled_actions(&paxos_model(variant, rounds), &actions);
            let scripts = paxos_scripts();
            let mut simulation = Simulation::new(
                replay_config(PAXOS_REPLICAS, &scripts),
                Box::new(move |_| crate::mc_command::KvPaxos::new(variant, PaxosConfig::default())),
                |client, _| paxos_client(client.0 as u32),
                ScriptedKvWorkload::new(scripts),
            );
            simulation.add_invariant(Box::new(|nodes| {
                check_agreement(nodes.running().map(|(_, node)| node))
            }));
            simulation.replay(&actions)
        }
        "pb-kv" => {
            let variant = parse_pb_variant(&file.variant)?;
            let crashes = file.config_u64("crashes").unwrap_or(0) as u32;
            let actions = file.actions(&pb_model(variant, crashes))?;
            let variant = parse_pb_variant(nodes_variant)?;
            let actions = enabled_actions(&pb_model(variant, crashes), &actions);
            let scripts = pb_scripts();
            let mut simulation = Simulation::new(
                replay_config(PB_NODES, &scripts),
                Box::new(move |id| PbNode::new(id, variant)),
                |_, _| PbClient::new(PbClientConfig::default()),
                ScriptedKvWorkload::new(scripts),
            );
            let history = RefCell::new(ViewHistory::new());
            simulation.add_invariant(Box::new(move |nodes| {
                history.borrow_mut().observe(nodes.running())?;
                check_backup_mirrors_primary(nodes.running())
            }));
            simulation.replay(&actions)
        }
        other => bail!(
            "a {other:?} trace cannot be replayed: the simulator runs the cluster models paxos-kv and pb-kv"
        ),
    };
    Ok(summarize(&file, nodes_variant, &report))
}

/// Prints what the replay found and picks the exit code.
fn summarize(file: &TraceFile, nodes_variant: &str, report: &RunReport) -> ExitCode {
    let findings: Vec<Finding> = judge_kv_run(report, Budget::default());
    println!(
        "replayed the {} steps of a {} counterexample to {:?} (found in the {} variant) on the {nodes_variant} variant",
        file.steps.len(),
        file.protocol,
        file.property,
        file.variant,
    );
    println!(
        "ops: ok {}, fail {}, info {}",
        report.outcomes.ok, report.outcomes.fail, report.outcomes.info
    );
    for finding in &findings {
        println!("{finding}");
    }
    println!("violations: {}", usize::from(!findings.is_empty()));
    println!("trace hash: {:016x}", report.trace_hash);
    if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
