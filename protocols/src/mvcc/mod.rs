//! The MVCC key-value state machine with etcd v3 semantics.
