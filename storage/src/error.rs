//! Why a storage operation failed, with what to do about it.

use std::io;
use std::path::PathBuf;

/// Advice repeated by every "the data on disk is damaged" error: the one thing an operator
/// must not do is delete or truncate files until the log opens, because that silently
/// throws away records this node already promised were durable.
const DAMAGED_ADVICE: &str = "records this node reported durable would be lost, so the log \
     refuses to open; restore this node's data directory from a backup or wipe it and let the \
     node rejoin from its replicas (do not delete or truncate files to make it open)";

/// Errors from [`crate::Wal`].
///
/// Every variant that describes damaged data names the file, the byte offset where it is
/// bad and what to do. After an [`StorageError::Io`] during a write or sync the log refuses
/// all further work ([`StorageError::Poisoned`]): what reached the disk is unknown, and only
/// [`crate::Wal::open`] can find out.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The operating system refused a file operation.
    #[error("cannot {operation} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "fsync" or "create".
        operation: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
    /// A record before the end of the log does not verify (checksum, length or index).
    #[error(
        "corrupt write-ahead log: {} at byte offset {offset}: {reason}; {DAMAGED_ADVICE}",
        path.display()
    )]
    CorruptRecord {
        /// The segment file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A segment file's header is not a valid header for its name.
    #[error(
        "corrupt write-ahead log segment header: {} at byte offset 0: {reason}; {DAMAGED_ADVICE}",
        path.display()
    )]
    CorruptSegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The segments do not form one unbroken run of record indexes after the snapshot.
    #[error(
        "write-ahead log has a gap: {} starts at record {found} but record {expected} was \
         expected there; {DAMAGED_ADVICE}",
        path.display()
    )]
    MissingRecords {
        /// The segment that starts in the wrong place.
        path: PathBuf,
        /// The index the previous segment (or snapshot) ends before.
        expected: u64,
        /// The index this segment starts at.
        found: u64,
    },
    /// The newest snapshot does not verify. It is the only copy of its checkpoint record
    /// (the log before it was discarded), so no older state can stand in for it.
    #[error(
        "corrupt snapshot {} at byte offset {offset}: {reason}; {DAMAGED_ADVICE}",
        path.display()
    )]
    CorruptSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// Where the damage was detected.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A record is larger than one write-ahead log frame may hold.
    #[error(
        "record of {length} bytes exceeds the write-ahead log limit of {limit} bytes; \
         store large state with append_checkpoint (snapshot files have no such limit) or \
         split the record"
    )]
    RecordTooLarge {
        /// The record's size.
        length: usize,
        /// The largest record a segment accepts.
        limit: usize,
    },
    /// Empty records are reserved: the log writes one where a compaction's snapshot is
    /// being written in the background (see [`crate::Wal::append_compaction_with`]).
    #[error(
        "an empty record cannot be appended: the write-ahead log reserves empty records as \
         placeholders for compactions; encode at least one byte"
    )]
    EmptyRecord,
    /// An earlier write or sync failed; the state on disk is unknown until reopened.
    #[error(
        "the write-ahead log had an I/O error earlier and refuses further work; drop it and \
         call Wal::open again to learn what is durable"
    )]
    Poisoned,
}

impl StorageError {
    /// An [`StorageError::Io`] for `operation` on `path`.
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            operation,
            path: path.into(),
            source,
        }
    }
}
