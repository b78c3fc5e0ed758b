//! Durable storage for Synod nodes: a segmented write-ahead log with CRC32C-framed records
//! and group commit, and atomic snapshot files for checkpoints.
//!
//! A sans-IO node emits `Persist`, `Checkpoint` and `Sync` effects
//! (`synod_core::node::Effect`); a runtime carries them out on a [`Wal`] and, after a
//! restart, hands [`Recovered::records`] to the node's `on_recover`. Records are opaque
//! bytes here (the node's postcard encoding).
//!
//! ```
//! use synod_storage::{Wal, WalOptions};
//!
//! let directory = std::env::temp_dir().join(format!("synod-storage-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&directory);
//! let (mut wal, recovered) = Wal::open(&directory, WalOptions::default())?;
//! assert!(recovered.records.is_empty());
//! assert_eq!(wal.append(b"put a 1")?, 0);
//! assert_eq!(wal.append(b"put b 2")?, 1);
//! assert_eq!(wal.sync()?, 2); // one fsync made both durable
//! wal.append(b"never synced")?;
//! drop(wal); // as good as a crash: the unsynced record is gone
//!
//! let (mut wal, recovered) = Wal::open(&directory, WalOptions::default())?;
//! assert_eq!(recovered.records, vec![b"put a 1".to_vec(), b"put b 2".to_vec()]);
//! wal.append_checkpoint(b"{a: 1, b: 2}")?; // supersedes both
//! wal.append(b"put c 3")?;
//! assert_eq!(wal.sync()?, 2); // durable records of this process's life
//! drop(wal);
//!
//! let (_, recovered) = Wal::open(&directory, WalOptions::default())?;
//! assert_eq!(recovered.records, vec![b"{a: 1, b: 2}".to_vec(), b"put c 3".to_vec()]);
//! assert_eq!((recovered.first_index, recovered.next_index), (2, 4));
//! # std::fs::remove_dir_all(&directory).unwrap();
//! # Ok::<(), synod_storage::StorageError>(())
//! ```
//!
//! # On disk
//!
//! One directory per node holds:
//!
//! - **segments** `wal-<first index, 20 digits>.log`: a 24-byte header (magic `SYNODWAL`,
//!   version, first index, CRC32C of the header) and then records, each a
//!   [`synod_core::frame`] frame (length, CRC32C, payload) whose payload is the record's
//!   64-bit index followed by its bytes (layout in [`segment`]). A segment is closed once
//!   the next record would take it past [`WalOptions::segment_bytes`] (64 MiB by default).
//! - **snapshots** `snapshot-<checkpoint index, 20 digits>.snap`: one checkpoint record with
//!   a 36-byte header carrying its index, length and the CRC32C of header and payload
//!   (layout in [`snapshot`]). Snapshots have no size limit beyond memory.
//! - `*.tmp` files: snapshots or segments being created; recovery deletes them.
//!
//! Every record has an index: 0 for the first record ever appended, one more for each
//! record after it, checkpoints included. A checkpoint at index `k` lives only in
//! `snapshot-k.snap`; the segment after it starts at `k + 1`.
//!
//! # Invariants
//!
//! 1. A file under a segment or snapshot name was complete and fsynced when it got that
//!    name (both are written to a `.tmp` name, fsynced, renamed, and the directory fsynced).
//! 2. A segment other than the last was fsynced whole, cut to its last record, before the
//!    next segment was created: only the last segment can end in a torn write.
//! 3. No segment starting at or before a checkpoint `k` holds a record after `k`.
//! 4. The segments after the newest snapshot start at its index + 1 (or 0 without one) and
//!    continue one another without gaps.
//! 5. `sync` (and `append_checkpoint`) report records durable only after the fsync that
//!    covers them returned (with [`WalOptions::direct_io`], the `O_DSYNC` write that carried
//!    them), so [`Wal::durable_records`] never counts a record a crash can take back.
//!
//! # Fault model and recovery
//!
//! A crash (process or machine) may lose any write not covered by a completed fsync, and
//! may persist such writes partly and in any order. Fsynced data, renames and directory
//! entries stay as they were. Beyond that the disk may flip bits; checksums detect it.
//!
//! [`Wal::open`] loads the newest snapshot, deletes the segments and older snapshots it
//! supersedes, then reads the later segments in order:
//!
//! - a frame at the end of the last segment that is cut short, fails its checksum or
//!   carries the wrong index, with no verifying record anywhere after it, is a **torn
//!   tail**: written but never synced. The file is cut there and the log continues.
//! - a bad frame with a verifying later record after it, a bad frame in any other segment,
//!   a bad segment header, a gap between segments or a bad newest snapshot is
//!   **corruption**: opening fails with [`StorageError`] naming the file and byte offset.
//!   Silently truncating there would drop records that were reported durable.
//!
//! The newest snapshot is the only copy of its checkpoint record (the segments before it
//! are deleted once it is durable, and the checkpoint itself is never in a segment), so a
//! damaged newest snapshot is an error even when an older snapshot survives: falling back
//! to it would silently lose the checkpoint and everything it stood for.
//!
//! One limit of the fault model: a crash that persists a later unsynced page but not an
//! earlier one leaves a hole followed by valid records. Recovery cannot tell that from a
//! flipped bit in synced data and refuses to open (an operator decision), never guessing
//! in the direction that could lose acknowledged records.
//!
//! # Crash consistency of a checkpoint
//!
//! [`Wal::append_checkpoint`] at index `k` runs these steps; a crash after each leaves:
//!
//! 1. write `snapshot-k.snap.tmp`: a `.tmp` file, deleted on recovery. The log recovers
//!    as before the checkpoint (its synced records intact); the checkpoint was never
//!    reported durable.
//! 2. fsync it and rename it to `snapshot-k.snap`: without the directory fsync the rename
//!    may or may not survive. If it does, the file is complete (fsynced before the rename,
//!    invariant 1) and recovery returns the checkpoint; if not, the state of step 1. Both
//!    are allowed: the checkpoint was not yet reported durable, and either way every
//!    synced record is represented (by itself, or by the checkpoint that supersedes it).
//! 3. fsync the directory: the checkpoint is durable. Recovery finds `snapshot-k.snap`,
//!    ignores and deletes the old segments (all start at or before `k`, invariant 3) and,
//!    finding no segment after `k`, creates `wal-(k+1).log`. Records appended before the
//!    checkpoint but never synced were dropped unwritten; the checkpoint stands for them.
//! 4. create `wal-(k+1).log` (temporary, fsync, rename, directory fsync): before the
//!    rename, recovery deletes the temporary file and proceeds as after step 3.
//! 5. delete the superseded segments, then the older snapshots: if interrupted, recovery
//!    deletes what is left. Deleting is idempotent, so these need no fsync.
//!
//! # Compactions: checkpoints written in the background
//!
//! A checkpoint the earlier records already stand for (a node compacting its own log,
//! `synod_core::node::Context::compact`) can take seconds to write when the state is large,
//! and [`Wal::append_compaction_with`] does not make later records wait for it. At index `k`
//! it appends an **empty placeholder record** at `k` (empty records are reserved for this;
//! [`Wal::append`] refuses them), closes the segment after it as a full segment is closed
//! (so invariant 3 holds for `k`), and hands the snapshot to a background thread that runs
//! steps 1–3 and 5 above while appends and syncs go on in `wal-(k+1).log`. A crash before
//! step 3 completes leaves the older snapshot and every segment since: recovery returns the
//! records the compaction stands for, skips the placeholder, and goes on with the records
//! after it, which the node recovers to the same state. After step 3 it is like any
//! checkpoint. One compaction runs at a time; the next checkpoint or compaction waits for
//! it, and a failure to write it fails the next [`Wal::sync`].
//!
//! Recovery itself is crash-safe: it only deletes superseded or temporary files, cuts a
//! torn tail (which was never reported durable), and fsyncs the last segment and the
//! directory before returning so a node never acts on records only the page cache held.
//!
//! # Durability accounting
//!
//! [`Wal::sync`] returns the number of records appended in this process's life (since
//! [`Wal::open`]) that are durable: exactly what `synod_core::node::OutputGate::durable`
//! expects, as a node's `records_appended` also counts from its recovery. One sync is one
//! fsync for any number of records (group commit); closing a full segment costs three more
//! (the old segment, the new one, the directory), once per [`WalOptions::segment_bytes`].
//!
//! After an I/O error during a write or fsync the log refuses further work
//! ([`StorageError::Poisoned`]): after a failed fsync the kernel may have dropped the
//! dirty pages, so only reopening can tell what is durable. One process at a time may
//! use a directory; nothing enforces this.

mod direct;
mod error;
pub mod segment;
pub mod snapshot;
mod wal;

#[cfg(test)]
mod wal_tests;

pub use error::StorageError;
pub use wal::{Recovered, TornTail, Wal, WalOptions, WriteCheckpoint};
