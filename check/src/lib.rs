//! Synod's history format and linearizability checking.
//!
//! Every Synod workload, in the simulator or against real processes, records a *history* of what
//! its clients invoked and what they heard back. This crate owns that history's one format
//! ([`history`]: JSON Lines modelled on Jepsen's) and decides whether a history is
//! *linearizable*: whether every operation can be given one instant between its invoke and its
//! completion so that, in that order, a single sequential copy of the data explains every result.
//!
//! For now it checks the key-value workload ([`kv`]: `get`, `put`, `append`, `delete` on string
//! keys) with an interim, exact checker; issue 3 brings the full checker.
//!
//! # Example
//!
//! Two clients: process 1 appends `"x"` while process 2 reads the key twice. The first read
//! overlaps the append and may see either value; the second starts after the append completed,
//! so it must see `"x"`.
//!
//! ```
//! use synod_check::{check_kv_history, read_jsonl, Budget, Verdict};
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
//! assert_eq!(check_kv_history(&events, Budget::default())?, Verdict::Linearizable);
//!
//! // A stale second read is caught.
//! let stale = history.replace(r#""value":"x","time":150"#, r#""value":null,"time":150"#);
//! let events = read_jsonl(stale.as_bytes(), "stale.jsonl")?;
//! let Verdict::NotLinearizable(violation) = check_kv_history(&events, Budget::default())? else {
//!     panic!("the stale read should be caught");
//! };
//! println!("{violation}");
//! assert_eq!(violation.key, "k");
//! # Ok::<(), synod_check::HistoryError>(())
//! ```

pub mod history;
pub mod kv;
mod linearizability;

pub use history::{
    Event, EventKind, HistoryError, Operation, Outcome, pair_operations, read_jsonl,
    read_jsonl_file, to_jsonl_line, write_jsonl,
};
pub use kv::{Budget, Verdict, Violation, check_kv_history};
