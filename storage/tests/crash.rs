//! Crash tests by proptest: random appends, syncs, checkpoints and compactions on small segments, then a
//! simulated crash (the unsynced tail of the last segment cut at a random offset, its last
//! record perhaps bit-flipped) or bit rot (a flipped bit in synced data before the end of the
//! log), then a reopen.
//!
//! What must hold:
//! - every record reported durable survives, and recovery returns exactly the records whole
//!   before the torn point, reduced by the newest checkpoint: nothing after it;
//! - a flipped bit anywhere before the last record of the log refuses to open with an
//!   error naming the damaged file, never a silently shorter log;
//! - arbitrary directory contents never make `Wal::open` panic, and what it accepts it
//!   accepts again unchanged.
//!
//! `SYNOD_STORAGE_CASES` raises the number of cases (default 24 each; every case fsyncs).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::sample::Index;
use synod_storage::segment::{
    SEGMENT_HEADER_BYTES, encode_record_frame, encode_segment_header, parse_segment_file_name,
    scan_segment, segment_file_name,
};
use synod_storage::snapshot::{
    encode_snapshot_header, parse_snapshot_file_name, snapshot_file_name,
};
use synod_storage::{Wal, WalOptions};

/// A fresh directory under the system temp dir, removed on drop.
struct TestDirectory(PathBuf);

impl TestDirectory {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "synod-storage-crash-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        TestDirectory(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDirectory {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cases() -> u32 {
    std::env::var("SYNOD_STORAGE_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(24)
}

#[derive(Clone, Debug)]
enum Operation {
    Append(Vec<u8>),
    Sync,
    Checkpoint(Vec<u8>),
    /// A compaction written in the background, waited for before the next operation.
    Compaction(Vec<u8>),
}

fn operations() -> impl Strategy<Value = Vec<Operation>> {
    let operation = prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 1..80).prop_map(Operation::Append),
        3 => Just(Operation::Sync),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Operation::Checkpoint),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Operation::Compaction),
    ];
    proptest::collection::vec(operation, 1..40)
}

fn options() -> impl Strategy<Value = WalOptions> {
    (
        64u64..600,
        prop_oneof![Just(0usize), Just(50), Just(4096)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(segment_bytes, write_buffer_bytes, preallocate, direct_io)| WalOptions {
                segment_bytes,
                preallocate,
                write_buffer_bytes,
                direct_io,
            },
        )
}

/// Everything a run appended (record, is it a checkpoint), in index order.
struct Run {
    appended: Vec<(Vec<u8>, bool)>,
    /// Records with a smaller index were reported durable.
    durable: u64,
}

impl Run {
    /// What recovery must return when exactly the records before index `survivors` are
    /// on disk: the newest checkpoint among them and what follows it.
    fn expected(&self, survivors: u64) -> Vec<Vec<u8>> {
        let prefix = &self.appended[..survivors as usize];
        let start = prefix
            .iter()
            .rposition(|(_, checkpoint)| *checkpoint)
            .unwrap_or(0);
        prefix[start..]
            .iter()
            .map(|(record, _)| record.clone())
            .collect()
    }
}

/// Runs `operations` on a fresh log in `directory` and drops it without a final sync.
fn run(directory: &Path, options: &WalOptions, operations: &[Operation]) -> Run {
    let (mut wal, recovered) = Wal::open(directory, options.clone()).expect("opens");
    assert!(recovered.records.is_empty());
    let mut appended = Vec::new();
    for operation in operations {
        match operation {
            Operation::Append(record) => {
                let index = wal.append(record).expect("appends");
                assert_eq!(index, appended.len() as u64);
                appended.push((record.clone(), false));
            }
            Operation::Sync => {
                assert_eq!(wal.sync().expect("syncs"), appended.len() as u64);
            }
            Operation::Checkpoint(record) => {
                let index = wal.append_checkpoint(record).expect("checkpoints");
                assert_eq!(index, appended.len() as u64);
                appended.push((record.clone(), true));
                assert_eq!(wal.durable_records(), appended.len() as u64);
            }
            Operation::Compaction(record) => {
                let bytes = record.clone();
                let write = move |out: &mut dyn std::io::Write| out.write_all(&bytes);
                let index = wal
                    .append_compaction_with(Box::new(write))
                    .expect("compacts");
                assert_eq!(index, appended.len() as u64);
                appended.push((record.clone(), true));
                // Its placeholder and everything before it were synced.
                assert_eq!(wal.durable_records(), appended.len() as u64);
                wal.wait_for_compaction()
                    .expect("the compaction is written");
            }
        }
    }
    let durable = wal.durable_records();
    drop(wal);
    Run { appended, durable }
}

/// Files of one kind with their indexes, in index order.
type IndexedFiles = Vec<(u64, PathBuf)>;

/// The files of the log directory by kind: segments and snapshots.
fn files(directory: &Path) -> (IndexedFiles, IndexedFiles) {
    let mut segments = Vec::new();
    let mut snapshots = Vec::new();
    for entry in fs::read_dir(directory).expect("lists") {
        let entry = entry.expect("entry");
        let name = entry.file_name().into_string().expect("utf-8");
        if let Some(first) = parse_segment_file_name(&name) {
            segments.push((first, entry.path()));
        } else if let Some(index) = parse_snapshot_file_name(&name) {
            snapshots.push((index, entry.path()));
        }
    }
    segments.sort();
    snapshots.sort();
    (segments, snapshots)
}

fn flip_bit(path: &Path, offset: usize, bit: u8) {
    let mut bytes = fs::read(path).expect("readable");
    bytes[offset] ^= 1 << bit;
    fs::write(path, bytes).expect("writable");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// A crash loses or tears only what was never synced, and recovery returns exactly the
    /// whole records before the torn point.
    #[test]
    fn a_crash_in_the_unsynced_tail_keeps_every_synced_record(
        options in options(),
        operations in operations(),
        cut in any::<Index>(),
        flip in proptest::option::of((any::<Index>(), 0u8..8)),
    ) {
        let directory = TestDirectory::new();
        let run = run(directory.path(), &options, &operations);
        let (segments, _) = files(directory.path());
        let (first, path) = segments.last().expect("a log always has a segment").clone();
        let bytes = fs::read(&path).expect("readable");
        let scan = scan_segment(&bytes, first);
        // The records of this segment before `run.durable` were synced; later ones may be
        // anywhere between absent and complete.
        let durable_end = scan
            .records
            .iter()
            .zip(first..)
            .filter(|(_, index)| *index < run.durable)
            .map(|(frame, _)| frame.end)
            .last()
            .unwrap_or(SEGMENT_HEADER_BYTES);
        let written_end = scan.valid_end;
        let cut = durable_end + cut.index(written_end - durable_end + 1);
        // Where the bytes on disk first differ from what was written.
        let intact_end = if options.preallocate {
            // Lost pages of a preallocated file read back as the zeros written up front; a
            // record whose lost bytes were zeros anyway survives whole.
            let mut damaged = bytes.clone();
            damaged[cut..written_end].fill(0);
            fs::write(&path, damaged).expect("writable");
            cut + bytes[cut..written_end].iter().take_while(|&&byte| byte == 0).count()
        } else {
            fs::OpenOptions::new().write(true).open(&path).expect("opens").set_len(cut as u64).expect("cuts");
            cut
        };
        // The record the cut falls in (or ends), if unsynced: a torn write may garble it.
        let last_unsynced = scan.records.iter().rev().find(|frame| frame.start >= durable_end && frame.start < cut);
        let mut torn_at = intact_end;
        if let (Some((position, bit)), Some(frame)) = (flip, last_unsynced) {
            let end = frame.end.min(cut);
            flip_bit(&path, frame.start + position.index(end - frame.start), bit);
            torn_at = frame.start;
        }
        let survivors = first + scan.records.iter().filter(|frame| frame.end <= torn_at).count() as u64;
        prop_assert!(survivors >= run.durable);

        let (mut wal, recovered) = Wal::open(directory.path(), options.clone()).expect("a torn tail is not corruption");
        prop_assert_eq!(&recovered.records, &run.expected(survivors));
        prop_assert_eq!(recovered.next_index, survivors);
        // The log continues past the cut.
        wal.append(b"after the crash").expect("appends");
        wal.sync().expect("syncs");
        drop(wal);
        let (_, again) = Wal::open(directory.path(), options).expect("reopens");
        let mut continued = run.expected(survivors);
        continued.push(b"after the crash".to_vec());
        prop_assert_eq!(again.records, continued);
    }

    /// A flipped bit in synced data that a valid record follows (or in any closed segment,
    /// segment header or the snapshot) is an error naming the file, never silent loss.
    #[test]
    fn a_flip_before_the_end_of_the_log_refuses_to_open(
        options in options(),
        operations in operations(),
        target in any::<Index>(),
        bit in 0u8..8,
    ) {
        let directory = TestDirectory::new();
        let mut operations = operations;
        operations.push(Operation::Sync);
        run(directory.path(), &options, &operations);
        let (segments, snapshots) = files(directory.path());
        // Every byte before the last record of the last segment is followed by something
        // that proves it was meant to be there.
        let mut regions: Vec<(PathBuf, usize)> = Vec::new();
        for (position, (first, path)) in segments.iter().enumerate() {
            let bytes = fs::read(path).expect("readable");
            let length = if position + 1 == segments.len() {
                scan_segment(&bytes, *first).records.last().map_or(SEGMENT_HEADER_BYTES, |frame| frame.start)
            } else {
                bytes.len()
            };
            regions.push((path.clone(), length));
        }
        for (_, path) in &snapshots {
            regions.push((path.clone(), fs::metadata(path).expect("exists").len() as usize));
        }
        let total: usize = regions.iter().map(|(_, length)| length).sum();
        let mut offset = target.index(total);
        let (path, offset) = regions
            .iter()
            .find_map(|(path, length)| {
                if offset < *length {
                    Some((path.clone(), offset))
                } else {
                    offset -= length;
                    None
                }
            })
            .expect("the offset falls in a region");
        flip_bit(&path, offset, bit);

        let error = Wal::open(directory.path(), options).expect_err("corruption must not open");
        let name = path.file_name().expect("named").to_string_lossy().into_owned();
        prop_assert!(error.to_string().contains(&name), "{} does not name {}", error, name);
    }

    /// Arbitrary files under our names never make recovery panic, and a directory that
    /// opened once opens again with the same records.
    #[test]
    fn arbitrary_directory_contents_never_panic(
        files in proptest::collection::vec(
            (0u8..4, 0u64..6, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..120)),
            0..5,
        ),
    ) {
        let directory = TestDirectory::new();
        fs::create_dir_all(directory.path()).expect("creates");
        for (kind, index, with_header, body) in &files {
            let (name, mut bytes) = match kind {
                0 => (segment_file_name(*index), encode_segment_header(*index).to_vec()),
                1 => (snapshot_file_name(*index), encode_snapshot_header(*index, body).to_vec()),
                2 => (format!("{}.tmp", segment_file_name(*index)), Vec::new()),
                _ => {
                    let mut framed = encode_segment_header(*index).to_vec();
                    encode_record_frame(*index, body, &mut framed);
                    (segment_file_name(*index), framed)
                }
            };
            if !with_header {
                bytes.clear();
            }
            bytes.extend_from_slice(body);
            fs::write(directory.path().join(name), bytes).expect("writes");
        }
        let options = WalOptions { segment_bytes: 256, ..WalOptions::default() };
        if let Ok((wal, first)) = Wal::open(directory.path(), options.clone()) {
            drop(wal);
            let (_, second) = Wal::open(directory.path(), options).expect("opens again");
            prop_assert_eq!(first.records, second.records);
            prop_assert_eq!(second.torn_tail, None);
        }
    }
}
