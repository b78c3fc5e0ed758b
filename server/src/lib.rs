//! The real runtime: one task per node, peers over framed TCP, storage with fsync.
