//! The write-ahead log: segments of CRC32C-framed records, group commit, snapshots for
//! checkpoints, and recovery that tells a torn tail from corruption.
//!
//! See the crate documentation for the on-disk layout and the crash-consistency argument.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::direct::{DIRECT_BLOCK_BYTES, DirectWriter};
use crate::error::StorageError;
use crate::segment::{
    MAX_RECORD_BYTES, RECORD_OVERHEAD_BYTES, SEGMENT_HEADER_BYTES, check_segment_header,
    encode_record_frame, encode_segment_header, parse_segment_file_name, record_bytes,
    scan_segment, segment_file_name,
};
use crate::snapshot::{
    SNAPSHOT_HEADER_BYTES, decode_snapshot, encode_snapshot_header_of, parse_snapshot_file_name,
    snapshot_file_name,
};

/// The suffix of files being written before they are renamed into place.
const TEMPORARY_SUFFIX: &str = ".tmp";
/// The next segment, being written full of zeros ahead of need (see
/// [`WalOptions::preallocate`]); a leftover from a crash is deleted at open.
pub(crate) const SPARE_FILE_NAME: &str = "segment-spare.tmp";
/// A spare is prepared once the current segment holds this much (or is half full), so a log
/// that stays small (a short-lived member, a test) never writes one.
const SPARE_AFTER_BYTES: u64 = 4 * 1024 * 1024;
/// Zeros written per call when preallocating a segment: large enough to be cheap, small
/// enough not to matter as a buffer.
const PREALLOCATE_CHUNK_BYTES: usize = 1024 * 1024;

/// How a [`Wal`] lays out and writes its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed and a new one started once the next record would take it past
    /// this size (a single larger record still gets a segment of its own).
    pub segment_bytes: u64,
    /// Keep the next segment ready: once the current segment holds 4 MiB (or is half
    /// full), a background thread writes a spare file full of zeros (and fsyncs it), and the
    /// next new segment takes it over.
    /// Appends then overwrite allocated blocks and never change the file size, so each
    /// fsync flushes only data, without a journal commit for block allocations and the
    /// size: about 55 µs of kernel CPU less per fsync on ext4 here, and a shorter wait.
    /// A new segment needed before the spare is ready is created without preallocation,
    /// so nothing ever waits for zeros to be written.
    pub preallocate: bool,
    /// Appended records are buffered in memory and written to the file when this many
    /// bytes are waiting, and at every sync. Zero writes each record at once.
    pub write_buffer_bytes: usize,
    /// Write records with `O_DIRECT | O_DSYNC` (see [`crate::direct`]): each write reaches
    /// the disk without the page cache and is durable when it returns, so a sync needs no
    /// fsync of its own. On this project's disk three members syncing at once wait about
    /// 125 µs each this way against about 175 µs with a buffered write and `fdatasync`.
    /// A direct writer writes zeros ahead of its records in 256 KiB steps, so most writes
    /// leave the file's size alone; it needs no spare segment ([`WalOptions::preallocate`]
    /// then only applies where the file system refuses direct I/O, and the log writes
    /// through the page cache).
    pub direct_io: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            preallocate: false,
            write_buffer_bytes: 1024 * 1024,
            direct_io: false,
        }
    }
}

/// What [`Wal::open`] found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The durable records, oldest first: the newest checkpoint (if any) and every record
    /// after it. This is what a node's `on_recover` receives.
    pub records: Vec<Vec<u8>>,
    /// The index of `records[0]` (the checkpoint's index when there is one).
    pub first_index: u64,
    /// The index the next appended record will get.
    pub next_index: u64,
    /// Whether `records[0]` came from a snapshot, i.e. is a checkpoint.
    pub from_snapshot: bool,
    /// The incomplete write that was cut off the end of the log, if there was one.
    pub torn_tail: Option<TornTail>,
}

/// The end of the last segment that a crash left half written, and that recovery removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the first incomplete or unverifiable record started; the file now ends here.
    pub offset: u64,
    /// How many bytes were cut off.
    pub discarded_bytes: u64,
    /// Why the first discarded record did not verify.
    pub reason: String,
}

/// Points inside [`Wal::append_checkpoint`] where tests stop it to simulate a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CheckpointStep {
    /// The snapshot's bytes are in its temporary file, not yet fsynced.
    TemporaryWritten,
    /// The temporary file is fsynced and renamed; the directory is not yet fsynced.
    Renamed,
    /// The directory is fsynced: the checkpoint is durable.
    Durable,
    /// The new segment's temporary file is written, not yet renamed.
    SegmentTemporaryWritten,
    /// The new segment is in place.
    SegmentCreated,
    /// The superseded segments are deleted, the older snapshots not yet.
    SegmentsDeleted,
}

/// A write-ahead log in one directory. See the crate documentation.
///
/// Dropping a `Wal` without [`Wal::sync`] loses the records appended since the last sync,
/// exactly as a crash would; they were never reported durable.
#[derive(Debug)]
pub struct Wal {
    directory: PathBuf,
    options: WalOptions,
    /// The segment records are appended to.
    segment: File,
    segment_path: PathBuf,
    /// The index of the first record of `segment`.
    segment_first_index: u64,
    /// Bytes of `segment` written so far (header and records); the file position.
    segment_end: u64,
    /// Encoded frames appended but not yet written to `segment`.
    pending: Vec<u8>,
    /// Bytes were written to `segment` since its last fsync.
    segment_dirty: bool,
    /// The index the next record gets.
    next_index: u64,
    /// Records with a smaller index are durable.
    durable_index: u64,
    /// The index of the first record appended in this process's life.
    life_first_index: u64,
    /// A write or sync failed: the state on disk is unknown until reopened.
    poisoned: bool,
    /// The next segment being prepared, when preallocating.
    spare: Option<SpareSegment>,
    /// `segment` was preallocated (its file is full size).
    segment_preallocated: bool,
    /// Writes `segment`'s records directly, when [`WalOptions::direct_io`] asks for it and
    /// the file system allows it.
    direct: Option<DirectWriter>,
    /// The snapshot of a compaction being written in the background.
    compaction: Option<Compaction>,
}

/// Writes a checkpoint's bytes into the given writer (a stream into its snapshot file).
pub type WriteCheckpoint = dyn FnMut(&mut dyn Write) -> std::io::Result<()> + Send;

/// A compaction's snapshot file being written by a background thread, which then deletes
/// the files it supersedes.
#[derive(Debug)]
struct Compaction {
    worker: JoinHandle<Result<(), StorageError>>,
    cancel: Arc<AtomicBool>,
}

/// The next segment, when preallocating.
#[derive(Debug)]
enum SpareSegment {
    /// A background thread is writing it.
    Writing {
        worker: JoinHandle<std::io::Result<File>>,
        cancel: Arc<AtomicBool>,
    },
    /// Written and fsynced.
    Ready(File),
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(Compaction { worker, cancel }) = self.compaction.take() {
            // Its writer fails at its next write; the temporary file is deleted at the next
            // open, which recovers the records the compaction stood for.
            cancel.store(true, Ordering::Relaxed);
            let _ = worker.join();
        }
        if let Some(SpareSegment::Writing { worker, cancel }) = self.spare.take() {
            // The writer checks between chunks; its file is deleted at the next open.
            cancel.store(true, Ordering::Relaxed);
            let _ = worker.join();
        }
    }
}

/// The files of a log directory, by kind and index.
#[derive(Debug, Default)]
struct Listing {
    segments: BTreeMap<u64, PathBuf>,
    snapshots: BTreeMap<u64, PathBuf>,
    temporaries: Vec<PathBuf>,
}

impl Wal {
    /// Opens (creating if needed) the log in `directory` and recovers its durable records.
    ///
    /// A torn tail of the last segment (a record cut short or failing its checksum with
    /// nothing valid after it) is truncated and reported in [`Recovered::torn_tail`].
    /// Damage anywhere else is an error naming the file and byte offset. Everything
    /// returned is fsynced before this returns, so a node may act on it.
    pub fn open(
        directory: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(Wal, Recovered), StorageError> {
        let directory = directory.as_ref().to_path_buf();
        fs::create_dir_all(&directory)
            .map_err(|error| StorageError::io("create directory", &directory, error))?;
        let listing = list_directory(&directory)?;
        for temporary in &listing.temporaries {
            remove_file(temporary)?;
        }

        let mut records = Vec::new();
        let mut snapshot_index = None;
        if let Some((&index, path)) = listing.snapshots.last_key_value() {
            let bytes = read_file(path)?;
            let payload = decode_snapshot(&bytes, index).map_err(|(offset, reason)| {
                StorageError::CorruptSnapshot {
                    path: path.clone(),
                    offset,
                    reason,
                }
            })?;
            if index == u64::MAX {
                return Err(StorageError::CorruptSnapshot {
                    path: path.clone(),
                    offset: 0,
                    reason: "checkpoint index u64::MAX leaves no room for later records".into(),
                });
            }
            records.push(payload.to_vec());
            snapshot_index = Some(index);
        }
        let first_index = snapshot_index.unwrap_or(0);
        let mut expected = snapshot_index.map_or(0, |index| index + 1);

        // A checkpoint at k is always followed by a segment starting at k + 1, so every
        // segment starting at or before k holds only superseded records.
        for (&first, path) in &listing.segments {
            if first < expected {
                remove_file(path)?;
            }
        }
        for (&index, path) in &listing.snapshots {
            if Some(index) != snapshot_index {
                remove_file(path)?;
            }
        }

        let live: Vec<(u64, &PathBuf)> = listing
            .segments
            .range(expected..)
            .map(|(&first, path)| (first, path))
            .collect();
        let mut torn_tail = None;
        let mut last_segment_end = None;
        let mut last_segment_tail = Vec::new();
        for (position, &(first, path)) in live.iter().enumerate() {
            if first != expected {
                return Err(StorageError::MissingRecords {
                    path: path.clone(),
                    expected,
                    found: first,
                });
            }
            let bytes = read_file(path)?;
            check_segment_header(&bytes, first).map_err(|reason| {
                StorageError::CorruptSegmentHeader {
                    path: path.clone(),
                    reason,
                }
            })?;
            let scan = scan_segment(&bytes, first);
            expected = first + scan.records.len() as u64;
            for frame in &scan.records {
                let record = record_bytes(&bytes, frame.clone());
                // An empty record marks a compaction whose snapshot was not written
                // before the crash: the records before it stand for it.
                if !record.is_empty() {
                    records.push(record.to_vec());
                }
            }
            let is_last = position + 1 == live.len();
            if let Some(stop) = scan.stop {
                let offset = scan.valid_end as u64;
                if !is_last {
                    return Err(StorageError::CorruptRecord {
                        path: path.clone(),
                        offset,
                        reason: format!(
                            "{} in a segment that is not the last (it was fsynced whole before \
                             the next one was created)",
                            stop.reason
                        ),
                    });
                }
                if let Some(after) = stop.valid_record_after {
                    return Err(StorageError::CorruptRecord {
                        path: path.clone(),
                        offset,
                        reason: format!(
                            "{}, yet a valid later record follows at byte offset {after}, so \
                             this is not a torn write",
                            stop.reason
                        ),
                    });
                }
                if !stop.rest_is_zero {
                    truncate_file(path, offset)?;
                    torn_tail = Some(TornTail {
                        path: path.clone(),
                        offset,
                        discarded_bytes: bytes.len() as u64 - offset,
                        reason: stop.reason,
                    });
                }
            }
            if is_last {
                last_segment_end = Some(scan.valid_end as u64);
                let block_start = scan.valid_end - scan.valid_end % DIRECT_BLOCK_BYTES;
                last_segment_tail = bytes[block_start..scan.valid_end].to_vec();
            }
        }

        let recovered = Recovered {
            records,
            first_index,
            next_index: expected,
            from_snapshot: snapshot_index.is_some(),
            torn_tail,
        };
        let mut wal = match (live.last(), last_segment_end) {
            (Some(&(first, path)), Some(end)) => {
                let mut segment = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|error| StorageError::io("open", path, error))?;
                // What recovery read may have been only in the page cache (the process
                // crashed, not the machine): make it durable before anyone acts on it.
                segment
                    .sync_all()
                    .map_err(|error| StorageError::io("fsync", path, error))?;
                segment
                    .seek(SeekFrom::Start(end))
                    .map_err(|error| StorageError::io("seek", path, error))?;
                let preallocated = segment
                    .metadata()
                    .is_ok_and(|metadata| metadata.len() >= options.segment_bytes);
                let direct = open_direct(&options, path, end, &last_segment_tail);
                Wal {
                    directory: directory.clone(),
                    options,
                    segment,
                    segment_path: path.clone(),
                    segment_first_index: first,
                    segment_end: end,
                    pending: Vec::new(),
                    segment_dirty: false,
                    next_index: expected,
                    durable_index: expected,
                    life_first_index: expected,
                    poisoned: false,
                    spare: None,
                    segment_preallocated: preallocated,
                    direct,
                    compaction: None,
                }
            }
            _ => {
                let (segment, segment_path) = create_segment(&directory, expected, None)?;
                let direct = open_direct(
                    &options,
                    &segment_path,
                    SEGMENT_HEADER_BYTES as u64,
                    &encode_segment_header(expected),
                );
                Wal {
                    directory: directory.clone(),
                    options,
                    segment,
                    segment_path,
                    segment_first_index: expected,
                    segment_end: SEGMENT_HEADER_BYTES as u64,
                    pending: Vec::new(),
                    segment_dirty: false,
                    next_index: expected,
                    durable_index: expected,
                    life_first_index: expected,
                    poisoned: false,
                    spare: None,
                    segment_preallocated: false,
                    direct,
                    compaction: None,
                }
            }
        };
        // Renames, creations and deletions above (and a snapshot a crashed process renamed)
        // become durable with the directory.
        sync_directory(&wal.directory)?;
        wal.pending.reserve(wal.options.write_buffer_bytes);
        Ok((wal, recovered))
    }

    /// Appends `record` (buffered; durable after the next [`Wal::sync`]) and returns its
    /// index.
    pub fn append(&mut self, record: &[u8]) -> Result<u64, StorageError> {
        self.check_usable()?;
        if record.is_empty() {
            return Err(StorageError::EmptyRecord);
        }
        if record.len() > MAX_RECORD_BYTES {
            return Err(StorageError::RecordTooLarge {
                length: record.len(),
                limit: MAX_RECORD_BYTES,
            });
        }
        let result = self.append_unchecked(record);
        self.poison_on_error(result)
    }

    /// Appends `record` as a checkpoint that supersedes every earlier record, and returns
    /// its index.
    ///
    /// Unlike [`Wal::append`] this is durable when it returns (it is written as a snapshot
    /// file, fsynced and renamed into place), and so is everything before it, in the sense
    /// that recovery now returns this record and what follows. The next [`Wal::sync`]
    /// reports it. Records appended before it and not yet synced are dropped unwritten:
    /// the checkpoint stands for them. Superseded segments and snapshots are deleted.
    pub fn append_checkpoint(&mut self, record: &[u8]) -> Result<u64, StorageError> {
        self.check_usable()?;
        let result = self.checkpoint_until(record, None);
        self.poison_on_error(result)
    }

    /// Like [`Wal::append_checkpoint`], with the record's bytes produced by `write` as a
    /// stream into the snapshot file (never whole in memory). An error from `write` fails
    /// the checkpoint like an I/O error.
    pub fn append_checkpoint_with(
        &mut self,
        write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<u64, StorageError> {
        self.check_usable()?;
        let result = self.checkpoint_streamed(write, None);
        self.poison_on_error(result)
    }

    /// Appends a compaction: a checkpoint that the records before it already stand for
    /// (a node's `Context::compact`), whose bytes `write` streams into its snapshot file
    /// on a background thread, so that appends and syncs go on while it is written. Returns
    /// its index.
    ///
    /// Only an empty placeholder record is appended here, in place of the checkpoint, and
    /// the segment is closed after it; like any record it is durable after the next
    /// [`Wal::sync`], and so is the compaction in the sense of the output-commit rule:
    /// until its snapshot is written, recovery returns the records before it (skipping the
    /// placeholder) and what follows, which the node recovers to the same state. Once the
    /// snapshot is durable, the background thread deletes the segments and snapshots it
    /// supersedes. A compaction still being written when the next checkpoint or compaction
    /// is appended is waited for first; one still being written when the log is dropped is
    /// abandoned. A failure to write it surfaces as an error from a later call.
    ///
    /// Never use this for state that earlier records do not determine (a snapshot received
    /// from elsewhere): use [`Wal::append_checkpoint_with`].
    pub fn append_compaction_with(
        &mut self,
        write: Box<WriteCheckpoint>,
    ) -> Result<u64, StorageError> {
        self.check_usable()?;
        let result = self.compaction_unchecked(write);
        self.poison_on_error(result)
    }

    /// Waits until a compaction being written in the background is durable (or failed).
    pub fn wait_for_compaction(&mut self) -> Result<(), StorageError> {
        self.check_usable()?;
        let result = self.finish_compaction(true);
        self.poison_on_error(result)
    }

    /// Makes every record appended so far durable with one fsync (group commit) and
    /// returns how many records appended in this process's life are durable: the number
    /// a driver hands to `OutputGate::durable`.
    pub fn sync(&mut self) -> Result<u64, StorageError> {
        self.check_usable()?;
        let result = self.sync_unchecked();
        self.poison_on_error(result)
    }

    /// How many records appended in this process's life are durable.
    pub fn durable_records(&self) -> u64 {
        self.durable_index - self.life_first_index
    }

    /// How many records were appended in this process's life.
    pub fn appended_records(&self) -> u64 {
        self.next_index - self.life_first_index
    }

    /// The index the next appended record will get.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The directory holding the log.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Refuses work after an I/O error.
    fn check_usable(&self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// Remembers an I/O error: the disk's state is unknown from here on.
    fn poison_on_error<T>(&mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn append_unchecked(&mut self, record: &[u8]) -> Result<u64, StorageError> {
        let frame_bytes = (RECORD_OVERHEAD_BYTES + record.len()) as u64;
        let segment_has_records = self.next_index > self.segment_first_index;
        let segment_bytes_after = self.segment_end + self.pending.len() as u64 + frame_bytes;
        // A segment that was not preallocated (the first of a fresh log, or one made when
        // no spare was ready) is closed early as soon as a spare is.
        let switch_to_spare = !self.segment_preallocated && self.spare_ready();
        if segment_has_records
            && (segment_bytes_after > self.options.segment_bytes || switch_to_spare)
        {
            self.roll_over()?;
        }
        let index = self.next_index;
        encode_record_frame(index, record, &mut self.pending);
        self.next_index += 1;
        if self.pending.len() >= self.options.write_buffer_bytes {
            self.write_pending()?;
        }
        Ok(index)
    }

    fn sync_unchecked(&mut self) -> Result<u64, StorageError> {
        // A compaction that failed in the background fails the log here.
        self.finish_compaction(false)?;
        self.write_pending()?;
        if self.segment_dirty {
            self.segment
                .sync_data()
                .map_err(|error| StorageError::io("fsync", &self.segment_path, error))?;
            self.segment_dirty = false;
        }
        self.durable_index = self.next_index;
        Ok(self.durable_records())
    }

    /// Writes the buffered frames to the segment file (no fsync).
    fn write_pending(&mut self) -> Result<(), StorageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match &mut self.direct {
            // Durable already: the next sync has nothing to flush for it.
            Some(direct) => direct.write(&self.pending),
            None => {
                self.segment_dirty = true;
                self.segment.write_all(&self.pending)
            }
        }
        .map_err(|error| StorageError::io("write", &self.segment_path, error))?;
        self.segment_end += self.pending.len() as u64;
        self.pending.clear();
        if self.segment_end >= (self.options.segment_bytes / 2).min(SPARE_AFTER_BYTES) {
            self.prepare_spare();
        }
        Ok(())
    }

    /// Closes the full segment (written, cut to its records, fsynced) and starts the next.
    /// The old segment is made durable first so that only the last segment can ever have
    /// a torn tail; its records are therefore durable too.
    fn roll_over(&mut self) -> Result<(), StorageError> {
        self.write_pending()?;
        // Drops a preallocated or crash-zeroed remainder: a closed segment ends with its
        // last record, so any unreadable byte in it is corruption.
        self.segment
            .set_len(self.segment_end)
            .map_err(|error| StorageError::io("truncate", &self.segment_path, error))?;
        self.segment
            .sync_all()
            .map_err(|error| StorageError::io("fsync", &self.segment_path, error))?;
        self.segment_dirty = false;
        self.durable_index = self.next_index;
        let (segment, path, preallocated) = self.new_segment(self.next_index, None)?;
        self.install_segment(segment, path, self.next_index, preallocated);
        Ok(())
    }

    /// Creates the segment whose first record is `first_index`, from the spare if one is
    /// ready (the next spare is started once this segment has filled enough); says which.
    fn new_segment(
        &mut self,
        first_index: u64,
        stop: Option<CheckpointStep>,
    ) -> Result<(File, PathBuf, bool), StorageError> {
        match self.take_spare() {
            Some(spare) => install_spare(&self.directory, first_index, spare, stop)
                .map(|(file, path)| (file, path, true)),
            None => create_segment(&self.directory, first_index, stop)
                .map(|(file, path)| (file, path, false)),
        }
    }

    /// Whether a spare segment is written and waiting.
    fn spare_ready(&self) -> bool {
        match &self.spare {
            Some(SpareSegment::Ready(_)) => true,
            Some(SpareSegment::Writing { worker, .. }) => worker.is_finished(),
            None => false,
        }
    }

    /// Starts writing a spare segment in the background, if preallocating and none is
    /// under way.
    fn prepare_spare(&mut self) {
        // A direct writer zero-fills ahead of its records itself.
        if !self.options.preallocate || self.spare.is_some() || self.direct.is_some() {
            return;
        }
        let path = self.directory.join(SPARE_FILE_NAME);
        let bytes = self.options.segment_bytes;
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::clone(&cancel);
        let worker = std::thread::Builder::new()
            .name("synod-wal-spare".into())
            .spawn(move || write_spare(&path, bytes, &cancelled));
        // Without a thread there is simply no spare: segments are created as without
        // preallocation.
        if let Ok(worker) = worker {
            self.spare = Some(SpareSegment::Writing { worker, cancel });
        }
    }

    /// The spare segment if it is ready; never waits for it. A spare whose writing failed
    /// is dropped (the next segment is then created without one).
    fn take_spare(&mut self) -> Option<File> {
        match self.spare.take()? {
            SpareSegment::Ready(file) => Some(file),
            SpareSegment::Writing { worker, .. } if worker.is_finished() => {
                worker.join().ok()?.ok()
            }
            writing => {
                self.spare = Some(writing);
                None
            }
        }
    }

    /// Whether records of the current segment are written with direct I/O
    /// ([`WalOptions::direct_io`] asked for it and the file system allows it).
    pub fn writes_directly(&self) -> bool {
        self.direct.is_some()
    }

    /// The index of the first record of the segment being appended to.
    pub fn segment_first_index(&self) -> u64 {
        self.segment_first_index
    }

    /// Waits until the spare segment being prepared is written, and says whether one is
    /// ready (tests and benchmarks use this to start from a known state).
    pub fn wait_for_spare(&mut self) -> bool {
        if let Some(SpareSegment::Writing { worker, .. }) = self.spare.take() {
            self.spare = worker
                .join()
                .ok()
                .and_then(Result::ok)
                .map(SpareSegment::Ready);
        }
        matches!(self.spare, Some(SpareSegment::Ready(_)))
    }

    fn install_segment(
        &mut self,
        segment: File,
        path: PathBuf,
        first_index: u64,
        preallocated: bool,
    ) {
        self.segment_preallocated = preallocated;
        self.direct = open_direct(
            &self.options,
            &path,
            SEGMENT_HEADER_BYTES as u64,
            &encode_segment_header(first_index),
        );
        self.segment = segment;
        self.segment_path = path;
        self.segment_first_index = first_index;
        self.segment_end = SEGMENT_HEADER_BYTES as u64;
        self.segment_dirty = false;
    }

    /// [`Wal::append_checkpoint`], stopping after `stop` (tests simulate a crash there;
    /// the `Wal` must then be dropped, not used).
    pub(crate) fn checkpoint_until(
        &mut self,
        record: &[u8],
        stop: Option<CheckpointStep>,
    ) -> Result<u64, StorageError> {
        self.checkpoint_streamed(&mut |out| out.write_all(record), stop)
    }

    fn checkpoint_streamed(
        &mut self,
        write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
        stop: Option<CheckpointStep>,
    ) -> Result<u64, StorageError> {
        self.finish_compaction(true)?;
        let index = self.next_index;
        if !write_snapshot(&self.directory, index, write, stop)? {
            return Ok(index);
        }
        // The checkpoint is durable: recovery returns it and nothing before it.
        self.next_index = index + 1;
        self.durable_index = self.next_index;
        self.pending.clear();
        if stop == Some(CheckpointStep::Durable) {
            return Ok(index);
        }
        let (segment, segment_path, preallocated) = self.new_segment(index + 1, stop)?;
        if stop == Some(CheckpointStep::SegmentTemporaryWritten) {
            return Ok(index);
        }
        self.install_segment(segment, segment_path, index + 1, preallocated);
        if stop == Some(CheckpointStep::SegmentCreated) {
            return Ok(index);
        }
        delete_superseded(&self.directory, index, stop)?;
        Ok(index)
    }

    fn compaction_unchecked(
        &mut self,
        mut write: Box<WriteCheckpoint>,
    ) -> Result<u64, StorageError> {
        self.finish_compaction(true)?;
        let index = self.next_index;
        encode_record_frame(index, &[], &mut self.pending);
        self.next_index += 1;
        // The segments the snapshot supersedes end with the placeholder (invariant 3).
        self.roll_over()?;
        let directory = self.directory.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::clone(&cancel);
        let worker = std::thread::Builder::new()
            .name("synod-wal-compaction".into())
            .spawn(move || {
                let mut write = |out: &mut dyn Write| {
                    write(&mut Cancellable {
                        inner: out,
                        cancel: &cancelled,
                    })
                };
                write_snapshot(&directory, index, &mut write, None)?;
                delete_superseded(&directory, index, None)
            })
            .map_err(|error| StorageError::io("start a thread for", &self.directory, error))?;
        self.compaction = Some(Compaction { worker, cancel });
        Ok(index)
    }

    /// Collects the compaction being written in the background: waits for it when `wait`,
    /// otherwise only if it is done. Its error, if it failed, is returned.
    fn finish_compaction(&mut self, wait: bool) -> Result<(), StorageError> {
        match self.compaction.take() {
            Some(Compaction { worker, .. }) if wait || worker.is_finished() => {
                worker.join().unwrap_or_else(|_| {
                    Err(StorageError::io(
                        "write a compaction in",
                        &self.directory,
                        std::io::Error::other("the compaction thread panicked"),
                    ))
                })
            }
            running => {
                self.compaction = running;
                Ok(())
            }
        }
    }
}

/// Writes the snapshot file of the checkpoint at `index` (its bytes from `write`):
/// temporary file, fsync, rename, directory fsync. Returns whether it got that far
/// (`false` when a test's `stop` cut it short).
fn write_snapshot(
    directory: &Path,
    index: u64,
    write: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
    stop: Option<CheckpointStep>,
) -> Result<bool, StorageError> {
    let path = directory.join(snapshot_file_name(index));
    let temporary = temporary_path(&path);
    let mut file =
        File::create(&temporary).map_err(|error| StorageError::io("create", &temporary, error))?;
    // The header (length and checksum) is known only once the payload is written.
    let written = (|| -> std::io::Result<()> {
        file.write_all(&[0u8; SNAPSHOT_HEADER_BYTES])?;
        let paced = PacedWriter {
            file: &mut file,
            written: SNAPSHOT_HEADER_BYTES as u64,
            started: 0,
        };
        let mut payload = ChecksummedWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, paced),
            length: 0,
            checksum: 0,
        };
        write(&mut payload)?;
        let (length, checksum) = (payload.length, payload.checksum);
        payload.inner.flush()?;
        drop(payload);
        file.seek(std::io::SeekFrom::Start(0))?;
        file.write_all(&encode_snapshot_header_of(index, length, checksum))
    })();
    written.map_err(|error| StorageError::io("write", &temporary, error))?;
    if stop == Some(CheckpointStep::TemporaryWritten) {
        return Ok(false);
    }
    file.sync_all()
        .map_err(|error| StorageError::io("fsync", &temporary, error))?;
    drop(file);
    fs::rename(&temporary, &path).map_err(|error| StorageError::io("rename", &temporary, error))?;
    if stop == Some(CheckpointStep::Renamed) {
        return Ok(false);
    }
    sync_directory(directory)?;
    Ok(true)
}

/// Deletes the segments and older snapshots that the durable checkpoint at `index`
/// supersedes. This is only housekeeping: recovery ignores and deletes these files too,
/// so the deletions need no fsync of their own.
fn delete_superseded(
    directory: &Path,
    index: u64,
    stop: Option<CheckpointStep>,
) -> Result<(), StorageError> {
    let listing = list_directory(directory)?;
    for (_, path) in listing.segments.range(..=index) {
        remove_file(path)?;
    }
    if stop == Some(CheckpointStep::SegmentsDeleted) {
        return Ok(());
    }
    for (_, path) in listing.snapshots.range(..index) {
        remove_file(path)?;
    }
    Ok(())
}

/// Writes a file front to back, starting writeback every MiB and keeping at most
/// [`WRITE_AHEAD_BYTES`] of it unwritten to the disk: a snapshot of hundreds of
/// megabytes then streams to the disk instead of landing in one burst at its fsync, which
/// the log's group commits would queue behind.
struct PacedWriter<'a> {
    file: &'a mut File,
    /// Bytes of the file written so far.
    written: u64,
    /// Writeback was started for the bytes before this offset.
    started: u64,
}

impl Write for PacedWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let count = self.file.write(bytes)?;
        self.written += count as u64;
        if self.written - self.started >= PREALLOCATE_CHUNK_BYTES as u64 {
            start_writeback(self.file, self.started, self.written - self.started, false)?;
            self.started = self.written;
            if self.started > WRITE_AHEAD_BYTES {
                start_writeback(self.file, 0, self.started - WRITE_AHEAD_BYTES, true)?;
            }
        }
        Ok(count)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Passes writes on until `cancel` is set, then fails them: a compaction abandoned when its
/// log is dropped stops at its next write.
struct Cancellable<'a> {
    inner: &'a mut dyn Write,
    cancel: &'a AtomicBool,
}

impl Write for Cancellable<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not `Interrupted`: `write_all` retries that.
            return Err(std::io::Error::other("the log was closed"));
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The direct writer for the segment at `path`, whose first `end` bytes end with `tail`
/// (see [`DirectWriter::open`]), if the options ask for one and the file system allows it.
fn open_direct(options: &WalOptions, path: &Path, end: u64, tail: &[u8]) -> Option<DirectWriter> {
    if !options.direct_io {
        return None;
    }
    DirectWriter::open(path, end, tail, options.segment_bytes).ok()
}

/// Creates the segment whose first record is `first_index`: header into a temporary file,
/// fsync, rename, fsync the directory. A segment under its final name therefore always has a
/// complete header, and records synced into it cannot vanish with a directory entry that was
/// never made durable.
fn create_segment(
    directory: &Path,
    first_index: u64,
    stop: Option<CheckpointStep>,
) -> Result<(File, PathBuf), StorageError> {
    let path = directory.join(segment_file_name(first_index));
    let temporary = temporary_path(&path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(|error| StorageError::io("create", &temporary, error))?;
    file.write_all(&encode_segment_header(first_index))
        .map_err(|error| StorageError::io("write", &temporary, error))?;
    if stop == Some(CheckpointStep::SegmentTemporaryWritten) {
        return Ok((file, temporary));
    }
    file.sync_all()
        .map_err(|error| StorageError::io("fsync", &temporary, error))?;
    put_segment_in_place(file, &temporary, path, directory)
}

/// Makes the spare file (zeros, fsynced) the segment whose first record is `first_index`:
/// its header over the first zeros, fsync (the size does not change, so data suffices),
/// rename, fsync the directory: the same guarantees as [`create_segment`].
fn install_spare(
    directory: &Path,
    first_index: u64,
    file: File,
    stop: Option<CheckpointStep>,
) -> Result<(File, PathBuf), StorageError> {
    let spare = directory.join(SPARE_FILE_NAME);
    let path = directory.join(segment_file_name(first_index));
    file.write_all_at(&encode_segment_header(first_index), 0)
        .map_err(|error| StorageError::io("write", &spare, error))?;
    if stop == Some(CheckpointStep::SegmentTemporaryWritten) {
        return Ok((file, spare));
    }
    file.sync_data()
        .map_err(|error| StorageError::io("fsync", &spare, error))?;
    put_segment_in_place(file, &spare, path, directory)
}

/// The end of making a segment whose file (durable, header included) is at `from`: rename
/// it to `path`, fsync the directory, and position the file after the header.
fn put_segment_in_place(
    mut file: File,
    from: &Path,
    path: PathBuf,
    directory: &Path,
) -> Result<(File, PathBuf), StorageError> {
    fs::rename(from, &path).map_err(|error| StorageError::io("rename", from, error))?;
    sync_directory(directory)?;
    file.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES as u64))
        .map_err(|error| StorageError::io("seek", &path, error))?;
    Ok((file, path))
}

/// How many bytes may be written ahead of the writeback of a spare segment or a snapshot:
/// the writer waits for older chunks to reach the disk before it writes more, so neither
/// lands on the disk as one burst (64 MiB per member for a spare, hundreds for a large
/// snapshot) that the log's own fsyncs queue behind.
const WRITE_AHEAD_BYTES: u64 = 4 * 1024 * 1024;

/// Starts writeback of `length` bytes of `file` at `offset` (`SYNC_FILE_RANGE_WRITE`), and
/// first, when `wait`, waits for the writeback of that range's earlier pages. This is only
/// pacing: durability still comes from the final fsync.
fn start_writeback(file: &File, offset: u64, length: u64, wait: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Ok(());
    };
    // SAFETY: sync_file_range reads no memory of ours; the descriptor is open for the
    // whole call because `file` is borrowed.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, length, flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes `bytes` zeros to a fresh file at `path` and fsyncs it; stops early (an error)
/// once `cancel` is set. Writeback is started chunk by chunk and kept at most
/// [`WRITE_AHEAD_BYTES`] behind, so the disk sees a steady stream, not a burst.
fn write_spare(path: &Path, bytes: u64, cancel: &AtomicBool) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let zeros = vec![0u8; PREALLOCATE_CHUNK_BYTES];
    let mut written = 0u64;
    while written < bytes {
        if cancel.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the log was closed",
            ));
        }
        let chunk = (bytes - written).min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..chunk])?;
        start_writeback(&file, written, chunk as u64, false)?;
        if written >= WRITE_AHEAD_BYTES {
            // Wait for the chunks written well before this one.
            start_writeback(&file, 0, written - WRITE_AHEAD_BYTES, true)?;
        }
        written += chunk as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// `path` with the temporary suffix.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(TEMPORARY_SUFFIX);
    PathBuf::from(name)
}

/// Sorts the directory's files into segments, snapshots and leftover temporaries; other
/// files are not ours and are left alone.
fn list_directory(directory: &Path) -> Result<Listing, StorageError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(directory)
        .map_err(|error| StorageError::io("list directory", directory, error))?;
    for entry in entries {
        let entry = entry.map_err(|error| StorageError::io("list directory", directory, error))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if let Some(first) = parse_segment_file_name(name) {
            listing.segments.insert(first, entry.path());
        } else if let Some(index) = parse_snapshot_file_name(name) {
            listing.snapshots.insert(index, entry.path());
        } else if name == SPARE_FILE_NAME
            || name.strip_suffix(TEMPORARY_SUFFIX).is_some_and(|base| {
                parse_segment_file_name(base).is_some() || parse_snapshot_file_name(base).is_some()
            })
        {
            listing.temporaries.push(entry.path());
        }
    }
    Ok(listing)
}

fn read_file(path: &Path) -> Result<Vec<u8>, StorageError> {
    fs::read(path).map_err(|error| StorageError::io("read", path, error))
}

fn remove_file(path: &Path) -> Result<(), StorageError> {
    fs::remove_file(path).map_err(|error| StorageError::io("delete", path, error))
}

/// Cuts a torn tail off `path` and makes the new length durable.
fn truncate_file(path: &Path, length: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|error| StorageError::io("open", path, error))?;
    file.set_len(length)
        .map_err(|error| StorageError::io("truncate", path, error))?;
    file.sync_all()
        .map_err(|error| StorageError::io("fsync", path, error))
}

/// Makes the directory's entries (creations, renames, deletions) durable.
fn sync_directory(directory: &Path) -> Result<(), StorageError> {
    File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| StorageError::io("fsync directory", directory, error))
}

/// Passes bytes on, counting them and their CRC32C.
struct ChecksummedWriter<W: Write> {
    inner: W,
    length: u64,
    checksum: u32,
}

impl<W: Write> Write for ChecksummedWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.checksum = crc32c::crc32c_append(self.checksum, &bytes[..written]);
        self.length += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
