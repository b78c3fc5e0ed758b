//! The MVCC key-value state machine with etcd v3 semantics.
//!
//! - [`api`]: requests, responses and errors shaped after etcd's `etcdserverpb` and
//!   `mvccpb`, so the gRPC layer maps them one to one.
//! - [`store`]: the multi-version keyspace: one cluster-wide revision per write or
//!   transaction; per key `create_revision`, `mod_revision` and `version`; ranges at past
//!   revisions until compacted; transactions; leases owning keys.
//! - [`lease`]: lease deadlines and how a leader change extends them.
//! - [`watch`]: the store's history as events, and a hub streaming them to watchers.
//! - [`machine`]: [`MvccMachine`], the [`crate::replicated::StateMachine`] a log replicates,
//!   with client sessions for exactly-once retried mutations and leader-proposed expiry.
//! - [`client`]: [`MvccClient`], a sans-IO client that seeks the leader and retries.
//!
//! Everything is deterministic (ordered maps, no clocks but the stamps in commands) and
//! serde-serializable, so the whole machine is its own snapshot.
//!
//! ```
//! use synod_protocols::mvcc::api::{PutRequest, RangeRequest};
//! use synod_protocols::mvcc::MvccStore;
//!
//! let mut store = MvccStore::default();
//! let first = store.put(&PutRequest::new("k", "a")).unwrap();
//! store.put(&PutRequest::new("k", "b")).unwrap();
//! // The current value, written by the second revision after the empty store's first.
//! let now = store.range(&RangeRequest::key("k")).unwrap();
//! assert_eq!((now.kvs[0].value.as_slice(), now.kvs[0].version), (&b"b"[..], 2));
//! // The past stays readable until compacted.
//! let past = RangeRequest { revision: first.header.revision, ..RangeRequest::key("k") };
//! assert_eq!(store.range(&past).unwrap().kvs[0].value, b"a");
//! ```

pub mod api;
pub mod client;
pub mod lease;
pub mod machine;
pub mod records;
pub mod store;
pub mod watch;

pub use client::MvccClient;
pub use lease::{LEASE_TTL_SECONDS_MAX, LEASE_TTL_SECONDS_MIN};
pub use machine::{MvccCommand, MvccMachine, MvccOperation, MvccOutput, MvccRequest, MvccResponse};
pub use store::{MAX_TXN_OPS_DEFAULT, MvccStore};
pub use watch::{WatchEvent, WatchFilter, WatchHub};
