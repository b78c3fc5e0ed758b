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

/// Locks `mutex`, taking over a lock a panicking thread left poisoned. For the locks whose
/// every change is a single step (a buffer, a queue of outputs), so a panic elsewhere
/// cannot leave them half-changed: at worst an output is lost, which the protocols
/// tolerate like a lost message.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
