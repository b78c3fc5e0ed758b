//! Synod's protocols, each a sans-IO [`synod_core::node::Node`] with its client.
//!
//! - [`kv_state`]: the replicated key-value state machine with client sessions, shared by
//!   every replicated protocol.
//! - [`paxos`]: Multi-Paxos replicating the key-value state machine.
//! - [`pb`]: primary-backup replication with a view service (seed 003), with deliberately
//!   broken variants kept as negative controls.
//! - [`replicated`]: the interface between a replicated log and its state machine.
//! - [`session_client`]: the leader-seeking, retrying session client of every replicated
//!   cluster.
//! - [`rpc`]: a single-server key-value store with at-most-once RPC semantics (seed 003's
//!   first assignment), with deliberately broken variants kept as negative controls.
//!
//! Protocols depend on `synod-core` only; the simulator, the model checker and the runtime
//! drive them through the node contract.

mod bytes;
pub mod kv_state;
pub mod mvcc;
pub mod paxos;
pub mod pb;
pub mod raft;
pub mod replicated;
pub mod rpc;
pub mod session_client;
