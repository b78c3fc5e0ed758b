//! The real runtime: one task per node, peers over framed TCP, storage with fsync.
//!
//! [`runtime::NodeHandle`] drives any sans-IO [`synod_core::node::Node`] (the same code the
//! simulator and the model checker run); [`transport`] carries peer messages;
//! [`log`] makes records durable with group commit.

pub mod api;
pub mod etcd;
pub mod grpc;
pub mod log;
pub mod member;
pub mod metrics;
pub mod runtime;
pub mod transport;
pub mod values;
