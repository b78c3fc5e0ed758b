//! An explicit-state model checker for sans-IO protocols.
//!
//! A [`model::Model`] is a transition system with properties: invariants that must hold in
//! every reachable state and goals that must hold in some (pair each invariant with a goal,
//! so a model that does nothing cannot pass). A [`checker::Checker`] explores it:
//!
//! - **breadth first**, so the first counterexample is a shortest one;
//! - **depth first** on several threads, the fastest way to exhaust a space;
//! - **random probes**, seeded walks for bugs deeper than an exhaustive search reaches;
//!
//! within limits on depth, unique states and time. States are deduplicated by 64-bit
//! fingerprints ([`fingerprint`]). A counterexample is re-executed from its initial state,
//! then minimized by deleting actions while the invariant still breaks, and printed as a
//! numbered trace.
//!
//! [`cluster::ClusterModel`] turns unmodified [`synod_core::node::Node`]s and their
//! [`synod_core::node::Client`]s into a model: the global state is every node, its durable
//! records and pending timers, the network, every client and the history of completed
//! operations; the actions deliver messages, fire timers, invoke client operations, and
//! crash and restart nodes. A ghost ([`cluster::ClusterModel::ghost`]) carried along each
//! path turns properties about history into invariants of single states.
//!
//! [`directed::StartingAt`] searches from one chosen state (a directed search behind a long
//! setup), and [`trace_file::TraceFile`] writes a counterexample as a file the simulator
//! replays (`synod mc --trace-out`, `synod sim --replay`).
//!
//! ```
//! use synod_sim::model_checker::checker::{Checker, Verdict};
//! use synod_sim::model_checker::two_phase_commit::TwoPhaseCommit;
//!
//! let report = Checker::new(&TwoPhaseCommit::new(5)).threads(2).dfs();
//! assert_eq!(report.unique_states, 8_832);
//! assert_eq!(report.verdict(), Verdict::Verified);
//! ```

mod bfs;
pub mod checker;
pub mod cluster;
mod dfs;
pub mod directed;
pub mod fingerprint;
pub mod model;
pub mod path;
pub mod probes;
mod table;
pub mod trace_file;
pub mod two_phase_commit;
