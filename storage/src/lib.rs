//! Durable storage for Synod nodes: the write-ahead log and snapshots.
