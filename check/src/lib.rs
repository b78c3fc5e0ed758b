//! Synod's history format and linearizability checker.
//!
//! Every Synod workload, in the simulator or against real processes, records a *history* of what
//! its clients invoked and what they heard back. This crate owns that history's one format
//! ([`history`]: JSON Lines modelled on Jepsen's), reads the formats other tools write
//! ([`format`]: Jepsen's logs and EDN maps), and decides whether a history is *linearizable*:
//! whether every operation can be given one instant between its invoke and its completion so
//! that, in that order, a single sequential copy of the data explains every result.
//!
//! # How it decides
//!
//! [`check`] splits the history into independent partitions (one per key: linearizability is
//! local, so the history is linearizable exactly when each key's part is) and searches each one,
//! in parallel, with Lowe's just-in-time refinement of the Wing–Gong search, the algorithm of
//! Knossos and Porcupine: walk the invokes and completions in real-time order, linearize an
//! operation whose invoke comes before every pending completion if the model accepts its result,
//! backtrack at a completion whose operation is not placed yet, and never enter the same
//! (set of placed operations, model state) configuration twice. Operations that ended `fail` did
//! not happen and are dropped; `info` ones (or ones that never completed) may be placed anywhere
//! after their invoke, or nowhere. States are interned to integers (appended strings as hashed
//! concatenations, never built), the set of placed operations is a bitset with an incrementally
//! updated hash, and the explored configurations sit in one flat open-addressing table, so the
//! inner loop neither allocates nor clones strings. When a search would exceed its [`Budget`]
//! the answer is [`Verdict::Unknown`], never a pass.
//!
//! # Models
//!
//! A [`Model`] is the extension point: [`register::RegisterModel`] (read, write, compare-and-set;
//! Jepsen's register tests), [`kv::KvModel`] (get, put, append, delete) and
//! [`etcd::EtcdModel`] (etcd's get, put, delete, compare-and-set and leases, with cluster-wide
//! revisions checked across keys too) are the three here.
//!
//! # Example
//!
//! Two clients: process 1 appends `"x"` while process 2 reads the key twice. The first read
//! overlaps the append and may see either value; the second starts after the append completed,
//! so it must see `"x"`.
//!
//! ```
//! use synod_check::{check, read_jsonl, CheckOptions, KvModel, Verdict};
//!
//! let history = r#"
//! {"process":1,"type":"invoke","f":"append","key":"k","value":"x","time":100}
//! {"process":2,"type":"invoke","f":"get","key":"k","value":null,"time":110}
//! {"process":2,"type":"ok","f":"get","key":"k","value":null,"time":120}
//! {"process":1,"type":"ok","f":"append","key":"k","value":"x","time":130}
//! {"process":2,"type":"invoke","f":"get","key":"k","value":null,"time":140}
//! {"process":2,"type":"ok","f":"get","key":"k","value":"x","time":150}
//! "#;
//! let events = read_jsonl(history.as_bytes(), "example.jsonl")?;
//! let report = check(&KvModel, &events, &CheckOptions::default())?;
//! assert_eq!(report.verdict, Verdict::Linearizable);
//!
//! // A stale second read is caught.
//! let stale = history.replace(r#""value":"x","time":150"#, r#""value":null,"time":150"#);
//! let events = read_jsonl(stale.as_bytes(), "stale.jsonl")?;
//! let Verdict::NotLinearizable(violation) = check(&KvModel, &events, &CheckOptions::default())?.verdict
//! else {
//!     panic!("the stale read should be caught");
//! };
//! println!("{violation}");
//! assert_eq!(violation.key, "k");
//! assert_eq!(violation.operations[violation.failing].invoke_index, 4);
//! # Ok::<(), synod_check::HistoryError>(())
//! ```

pub mod checker;
pub mod etcd;
mod fast_hash;
pub mod format;
pub mod history;
pub mod html;
mod keyed_state;
pub mod kv;
mod linearizability;
pub mod model;
pub mod register;
mod strings;

pub use checker::{Budget, CheckOptions, CheckReport, Verdict, Violation, check};
pub use history::{
    Event, EventKind, HistoryError, Operation, Outcome, pair_operations, read_jsonl,
    read_jsonl_file, to_jsonl_line, write_jsonl,
};
pub use kv::{KvModel, check_kv_history};
pub use model::{Interpretation, Model, SequentialSpecification};
pub use register::RegisterModel;
