//! Synod's deterministic simulator.
//!
//! One thread and virtual time run a cluster of sans-IO nodes ([`synod_core::node::Node`])
//! and their clients under a seeded nemesis: message loss, duplication and reordering,
//! partitions (one-way too), crashes that lose unsynced records (optionally tearing the last
//! one), pauses, and clock jumps and drift. Closed-loop clients record a history in the
//! project's JSONL format ([`synod_check::history`]), which is then checked for
//! linearizability. The same seed and binary replay the same run byte for byte; every run
//! reports a trace hash to prove it.
//!
//! ```
//! use synod_protocols::rpc::{AmoKvClient, AmoKvServer, AmoVariant};
//! use synod_sim::{config::SimConfig, simulation::Simulation, workload::KvWorkload};
//! use synod_sim::verdict::judge_kv_run;
//!
//! let config = SimConfig { seed: 7, ..SimConfig::default() };
//! let workload = KvWorkload::new(config.workload.clone());
//! let simulation = Simulation::new(
//!     config,
//!     Box::new(|_| AmoKvServer::new(AmoVariant::Correct)),
//!     |_, members| AmoKvClient::new(members[0], Default::default()),
//!     workload,
//! );
//! let report = simulation.run();
//! assert!(report.outcomes.ok > 0);
//! assert!(judge_kv_run(&report, Default::default()).is_empty());
//! ```

pub mod config;
pub mod model_checker;
pub mod packet;
pub mod simulation;
pub mod sweep;
pub mod verdict;
pub mod workload;
