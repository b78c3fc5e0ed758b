//! Unit tests of the write-ahead log: recovery decisions, segments, checkpoints and a crash
//! at every step of a checkpoint.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use crate::segment::{SEGMENT_HEADER_BYTES, segment_file_name};
use crate::snapshot::snapshot_file_name;
use crate::wal::CheckpointStep;
use crate::{StorageError, Wal, WalOptions};

/// A fresh directory under the system temp dir, removed on drop.
struct TestDirectory(PathBuf);

impl TestDirectory {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "synod-storage-unit-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        TestDirectory(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// The file names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .expect("directory exists")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestDirectory {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 128,
        preallocate: false,
        write_buffer_bytes: 0,
        direct_io: false,
    }
}

fn open(directory: &TestDirectory, options: &WalOptions) -> (Wal, Vec<Vec<u8>>) {
    let (wal, recovered) = Wal::open(directory.path(), options.clone()).expect("opens");
    (wal, recovered.records)
}

fn record(index: usize) -> Vec<u8> {
    format!("record {index}").into_bytes()
}

/// Appends `record(index)` for each index, then syncs.
fn append_synced(wal: &mut Wal, indexes: std::ops::Range<usize>) {
    for index in indexes {
        wal.append(&record(index)).expect("appends");
    }
    wal.sync().expect("syncs");
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).expect("readable");
    bytes[offset] ^= 0x10;
    fs::write(path, bytes).expect("writable");
}

#[test]
fn records_survive_a_reopen_and_the_life_count_restarts() {
    let directory = TestDirectory::new();
    let (mut wal, records) = open(&directory, &WalOptions::default());
    assert!(records.is_empty());
    for index in 0..3 {
        assert_eq!(wal.append(&record(index)).expect("appends"), index as u64);
    }
    assert_eq!(wal.durable_records(), 0);
    assert_eq!(wal.sync().expect("syncs"), 3);
    assert_eq!(wal.sync().expect("nothing new"), 3);
    drop(wal);

    let (mut wal, recovered) = Wal::open(directory.path(), WalOptions::default()).expect("opens");
    assert_eq!(recovered.records, (0..3).map(record).collect::<Vec<_>>());
    assert_eq!((recovered.first_index, recovered.next_index), (0, 3));
    assert_eq!(recovered.torn_tail, None);
    assert_eq!(wal.append(&record(3)).expect("appends"), 3);
    assert_eq!(wal.appended_records(), 1);
    assert_eq!(wal.sync().expect("syncs"), 1);
}

#[test]
fn buffered_records_that_were_never_synced_are_lost_on_a_crash() {
    let directory = TestDirectory::new();
    let (mut wal, _) = open(&directory, &WalOptions::default());
    wal.append(b"synced").expect("appends");
    wal.sync().expect("syncs");
    wal.append(b"buffered only").expect("appends");
    drop(wal);
    let (_, records) = open(&directory, &WalOptions::default());
    assert_eq!(records, vec![b"synced".to_vec()]);
}

#[test]
fn full_segments_roll_over_and_read_back_in_order() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    append_synced(&mut wal, 0..20);
    drop(wal);
    let names = directory.names();
    assert!(names.len() > 3, "expected several segments: {names:?}");
    assert_eq!(names[0], segment_file_name(0));
    let (_, records) = open(&directory, &options);
    assert_eq!(records, (0..20).map(record).collect::<Vec<_>>());
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    let big = vec![7u8; 1000];
    wal.append(b"small").expect("appends");
    wal.append(&big).expect("appends");
    wal.append(b"after").expect("appends");
    wal.sync().expect("syncs");
    drop(wal);
    let (_, records) = open(&directory, &options);
    assert_eq!(records, vec![b"small".to_vec(), big, b"after".to_vec()]);
}

#[test]
fn a_torn_tail_is_cut_off_and_the_log_continues() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    wal.append(b"one").expect("appends");
    wal.sync().expect("syncs");
    let last = directory.path().join(segment_file_name(0));
    let length = fs::metadata(&last).expect("exists").len();
    // Half a frame: a crash in the middle of writing the second record.
    wal.append(b"two").expect("appends");
    drop(wal);
    let full = fs::metadata(&last).expect("exists").len();
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("opens");
    file.set_len(full - 3).expect("truncates");
    drop(file);

    let (mut wal, recovered) = Wal::open(directory.path(), options.clone()).expect("opens");
    assert_eq!(recovered.records, vec![b"one".to_vec()]);
    let torn = recovered.torn_tail.expect("reported");
    assert_eq!((torn.path, torn.offset), (last.clone(), length));
    assert!(torn.reason.contains("cut short"), "{}", torn.reason);
    assert_eq!(fs::metadata(&last).expect("exists").len(), length);
    assert_eq!(wal.append(b"three").expect("appends"), 1);
    wal.sync().expect("syncs");
    drop(wal);
    let (_, records) = open(&directory, &options);
    assert_eq!(records, vec![b"one".to_vec(), b"three".to_vec()]);
}

#[test]
fn a_bad_record_followed_by_a_good_one_refuses_to_open_and_says_where() {
    let directory = TestDirectory::new();
    let options = WalOptions::default();
    let (mut wal, _) = open(&directory, &options);
    append_synced(&mut wal, 0..3);
    drop(wal);
    let path = directory.path().join(segment_file_name(0));
    let second = SEGMENT_HEADER_BYTES + 16 + record(0).len();
    flip_byte(&path, second + 20);
    let error = Wal::open(directory.path(), options).expect_err("corruption");
    assert!(
        matches!(&error, StorageError::CorruptRecord { path: p, offset, .. } if *p == path && *offset == second as u64),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("wal-00000000000000000000.log"),
        "{message}"
    );
    assert!(message.contains("restore"), "{message}");
    // Refusing did not change the file: the damaged record is still there to inspect.
    assert_eq!(
        fs::metadata(&path).expect("exists").len() as usize,
        SEGMENT_HEADER_BYTES + 3 * (16 + record(0).len())
    );
}

#[test]
fn a_bad_record_in_a_closed_segment_refuses_to_open() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    append_synced(&mut wal, 0..20);
    drop(wal);
    // The last record of the first segment: no record follows it in its own file.
    let path = directory.path().join(segment_file_name(0));
    let length = fs::metadata(&path).expect("exists").len() as usize;
    flip_byte(&path, length - 1);
    let error = Wal::open(directory.path(), options).expect_err("corruption");
    assert!(error.to_string().contains("not the last"), "{error}");
}

#[test]
fn a_missing_segment_is_a_gap_not_a_shorter_log() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    append_synced(&mut wal, 0..20);
    drop(wal);
    let names = directory.names();
    fs::remove_file(directory.path().join(&names[1])).expect("removes");
    let error = Wal::open(directory.path(), options.clone()).expect_err("gap");
    assert!(
        matches!(error, StorageError::MissingRecords { .. }),
        "{error}"
    );
    // Without a snapshot the log must start at record 0.
    fs::remove_file(directory.path().join(&names[0])).expect("removes");
    let error = Wal::open(directory.path(), options).expect_err("gap");
    assert!(
        matches!(error, StorageError::MissingRecords { expected: 0, .. }),
        "{error}"
    );
}

#[test]
fn a_damaged_segment_header_refuses_to_open() {
    let directory = TestDirectory::new();
    let (mut wal, _) = open(&directory, &WalOptions::default());
    wal.append(b"x").expect("appends");
    wal.sync().expect("syncs");
    drop(wal);
    flip_byte(&directory.path().join(segment_file_name(0)), 2);
    let error = Wal::open(directory.path(), WalOptions::default()).expect_err("bad header");
    assert!(
        matches!(error, StorageError::CorruptSegmentHeader { .. }),
        "{error}"
    );
}

#[test]
fn checkpoints_supersede_earlier_records_and_files() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    append_synced(&mut wal, 0..10);
    assert_eq!(wal.append(b"unsynced, superseded").expect("appends"), 10);
    assert_eq!(
        wal.append_checkpoint(b"state after 11")
            .expect("checkpoints"),
        11
    );
    assert_eq!(wal.durable_records(), 12);
    wal.append(b"after").expect("appends");
    assert_eq!(wal.sync().expect("syncs"), 13);
    assert_eq!(
        directory.names(),
        vec![snapshot_file_name(11), segment_file_name(12)]
    );
    let big = vec![3u8; 5000];
    assert_eq!(wal.append_checkpoint(&big).expect("checkpoints"), 13);
    assert_eq!(
        directory.names(),
        vec![snapshot_file_name(13), segment_file_name(14)]
    );
    drop(wal);
    let (_, recovered) = Wal::open(directory.path(), options).expect("opens");
    assert_eq!(recovered.records, vec![big]);
    assert!(recovered.from_snapshot);
    assert_eq!((recovered.first_index, recovered.next_index), (13, 14));
}

/// A compaction whose writer waits for `gate`: `true` writes `bytes`, `false` fails (as
/// a crash in the middle of writing would leave it: never durable).
fn gated_compaction(bytes: &'static [u8]) -> (Box<crate::WriteCheckpoint>, mpsc::Sender<bool>) {
    let (gate, wait) = mpsc::channel::<bool>();
    let write = move |out: &mut dyn Write| match wait.recv() {
        Ok(true) => out.write_all(bytes),
        _ => Err(std::io::Error::other("cut short")),
    };
    (Box::new(write), gate)
}

#[test]
fn a_compaction_is_written_while_appends_and_syncs_go_on() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    append_synced(&mut wal, 0..10);
    wal.append(b"unsynced before the compaction")
        .expect("appends");
    let (write, gate) = gated_compaction(b"state after 11");
    assert_eq!(wal.append_compaction_with(write).expect("compacts"), 11);
    // Everything before the placeholder was synced with it.
    assert_eq!(wal.durable_records(), 12);
    // The snapshot is still being written: appends and syncs do not wait for it.
    for index in 12..20 {
        wal.append(&record(index)).expect("appends");
    }
    assert_eq!(wal.sync().expect("syncs"), 20);
    assert!(!directory.names().contains(&snapshot_file_name(11)));
    gate.send(true).expect("the writer waits");
    wal.wait_for_compaction()
        .expect("the compaction is written");
    // The superseded segments are gone; the later ones start after the placeholder.
    let names = directory.names();
    assert_eq!(names[0], snapshot_file_name(11));
    assert_eq!(names[1], segment_file_name(12));
    drop(wal);
    let (_, recovered) = Wal::open(directory.path(), options).expect("opens");
    let mut expected = vec![b"state after 11".to_vec()];
    expected.extend((12..20).map(record));
    assert_eq!(recovered.records, expected);
    assert!(recovered.from_snapshot);
    assert_eq!((recovered.first_index, recovered.next_index), (11, 20));
}

#[test]
fn a_crash_before_a_compaction_is_written_recovers_the_records_it_stands_for() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    wal.append_checkpoint(b"older state").expect("checkpoints");
    for index in 1..6 {
        wal.append(&record(index)).expect("appends");
    }
    let (write, gate) = gated_compaction(b"state after 6");
    assert_eq!(wal.append_compaction_with(write).expect("compacts"), 6);
    wal.append(&record(7)).expect("appends");
    assert_eq!(wal.sync().expect("syncs"), 8);
    gate.send(false).expect("the writer waits");
    drop(wal);

    // The older snapshot, the records after it, the placeholder skipped, and what followed.
    let (mut wal, recovered) = Wal::open(directory.path(), options.clone()).expect("opens");
    let mut expected = vec![b"older state".to_vec()];
    expected.extend((1..6).map(record));
    expected.push(record(7));
    assert_eq!(recovered.records, expected);
    assert_eq!((recovered.first_index, recovered.next_index), (0, 8));
    assert!(
        directory.names().iter().all(|name| !name.ends_with(".tmp")),
        "{:?}",
        directory.names()
    );
    // The log goes on, and a later compaction supersedes the placeholder too.
    let (write, gate) = gated_compaction(b"state after 8");
    assert_eq!(wal.append_compaction_with(write).expect("compacts"), 8);
    gate.send(true).expect("the writer waits");
    wal.wait_for_compaction()
        .expect("the compaction is written");
    drop(wal);
    let (_, recovered) = Wal::open(directory.path(), options).expect("opens");
    assert_eq!(recovered.records, vec![b"state after 8".to_vec()]);
}

#[test]
fn a_failed_compaction_fails_the_next_sync_and_a_dropped_log_abandons_one() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    wal.append(&record(0)).expect("appends");
    let (write, gate) = gated_compaction(b"never");
    wal.append_compaction_with(write).expect("compacts");
    gate.send(false).expect("the writer waits");
    let error = wal.wait_for_compaction().expect_err("the writer failed");
    assert!(error.to_string().contains("cut short"), "{error}");
    assert!(matches!(wal.sync(), Err(StorageError::Poisoned)));
    drop(wal);

    // A writer that would stream forever stops once its log is dropped.
    let (mut wal, recovered) = open(&directory, &options);
    assert_eq!(recovered, vec![record(0)]);
    let endless = |out: &mut dyn Write| loop {
        out.write_all(&[7u8; 4096])?;
    };
    wal.append_compaction_with(Box::new(endless))
        .expect("compacts");
    wal.append(&record(2)).expect("appends");
    wal.sync().expect("syncs");
    drop(wal);
    let (_, recovered) = open(&directory, &options);
    assert_eq!(recovered, vec![record(0), record(2)]);
}

#[test]
fn a_snapshot_larger_than_the_write_ahead_window_streams_and_reads_back() {
    let directory = TestDirectory::new();
    let options = small_segments();
    let (mut wal, _) = open(&directory, &options);
    wal.append(&record(0)).expect("appends");
    // 9 MiB in odd-sized writes: writeback is started and waited for many times over.
    let expected: Vec<u8> = (0..9 * 1024 * 1024 + 17).map(|i| (i % 251) as u8).collect();
    let source = expected.clone();
    let write = move |out: &mut dyn Write| {
        for chunk in source.chunks(300_007) {
            out.write_all(chunk)?;
        }
        Ok(())
    };
    assert_eq!(
        wal.append_compaction_with(Box::new(write))
            .expect("compacts"),
        1
    );
    wal.wait_for_compaction()
        .expect("the compaction is written");
    drop(wal);
    let (_, recovered) = open(&directory, &options);
    assert_eq!(recovered.len(), 1);
    assert!(
        recovered[0] == expected,
        "the snapshot reads back as written"
    );
}

#[test]
fn empty_records_are_reserved() {
    let directory = TestDirectory::new();
    let (mut wal, _) = open(&directory, &small_segments());
    assert!(matches!(wal.append(b""), Err(StorageError::EmptyRecord)));
    // Refusing it is not an I/O error: the log goes on.
    wal.append(b"x").expect("appends");
    assert_eq!(wal.sync().expect("syncs"), 1);
}

#[test]
fn a_damaged_newest_snapshot_is_an_error_even_with_an_older_one() {
    let directory = TestDirectory::new();
    let options = WalOptions::default();
    let (mut wal, _) = open(&directory, &options);
    wal.append_checkpoint(b"first").expect("checkpoints");
    wal.append(b"between").expect("appends");
    wal.sync().expect("syncs");
    let older = fs::read(directory.path().join(snapshot_file_name(0))).expect("exists");
    wal.append_checkpoint(b"second").expect("checkpoints");
    drop(wal);
    // An older snapshot left behind (as by a crash before its deletion) cannot stand in.
    fs::write(directory.path().join(snapshot_file_name(0)), older).expect("writes");
    let newest = directory.path().join(snapshot_file_name(2));
    flip_byte(&newest, 40);
    let error = Wal::open(directory.path(), options).expect_err("corrupt snapshot");
    assert!(
        matches!(&error, StorageError::CorruptSnapshot { path, offset: 36, .. } if *path == newest),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("snapshot-00000000000000000002.snap")
    );
}

#[test]
fn preallocated_segments_recover_and_close_cleanly() {
    let directory = TestDirectory::new();
    let options = WalOptions {
        segment_bytes: 4096,
        preallocate: true,
        write_buffer_bytes: 0,
        direct_io: false,
    };
    let segment_length = |first: u64| {
        fs::metadata(directory.path().join(segment_file_name(first)))
            .expect("exists")
            .len()
    };
    let spare = directory.path().join(crate::wal::SPARE_FILE_NAME);
    let (mut wal, _) = open(&directory, &options);
    // The first segment is made at once; its successor is prepared in the background
    // once it is half full.
    assert_eq!(segment_length(0), SEGMENT_HEADER_BYTES as u64);
    assert!(!wal.wait_for_spare(), "no spare for an empty log");
    let mut next = 0;
    while segment_length(0) < 2048 {
        wal.append(&record(next)).expect("appends");
        next += 1;
    }
    assert!(wal.wait_for_spare(), "a spare segment was written");
    assert_eq!(fs::metadata(&spare).expect("spare exists").len(), 4096);
    // The first segment was not preallocated: the next append moves to the spare at once,
    // long before the first segment is full.
    wal.append(&record(next)).expect("appends");
    next += 1;
    assert_eq!(wal.segment_first_index(), next as u64 - 1);
    // The second segment took over the spare: full size, zeros after the records.
    let second = wal.segment_first_index();
    assert_eq!(segment_length(second), 4096);
    assert!(
        segment_length(0) < 4096,
        "a closed segment is cut to its records"
    );
    wal.sync().expect("syncs");
    drop(wal);
    let (mut wal, recovered) = Wal::open(directory.path(), options.clone()).expect("opens");
    assert_eq!(recovered.records, (0..next).map(record).collect::<Vec<_>>());
    assert_eq!(recovered.torn_tail, None, "zeros are not a torn tail");
    for index in next..400 {
        wal.append(&record(index)).expect("appends");
    }
    // A checkpoint's new segment comes from the spare too: fill the current segment
    // until one is prepared.
    let mut index = 400;
    while !wal.wait_for_spare() {
        wal.append(&record(index)).expect("appends");
        index += 1;
    }
    wal.sync().expect("syncs");
    let checkpoint = wal.append_checkpoint(b"state").expect("checkpoints");
    assert_eq!(segment_length(checkpoint + 1), 4096);
    wal.append(b"after").expect("appends");
    wal.sync().expect("syncs");
    drop(wal);
    let (_, records) = open(&directory, &options);
    assert_eq!(records, vec![b"state".to_vec(), b"after".to_vec()]);
}

#[test]
fn a_spare_segment_left_by_a_crash_is_deleted_and_closing_stops_its_writer() {
    let directory = TestDirectory::new();
    let options = WalOptions {
        // Large enough that the writer is still busy when the log is dropped.
        segment_bytes: 256 * 1024 * 1024,
        preallocate: true,
        write_buffer_bytes: 0,
        direct_io: false,
    };
    let spare = directory.path().join(crate::wal::SPARE_FILE_NAME);
    let (mut wal, _) = open(&directory, &options);
    // 4 MiB of records start the spare's writer.
    let record = vec![7u8; 64 * 1024];
    for _ in 0..64 {
        wal.append(&record).expect("appends");
    }
    wal.sync().expect("syncs");
    // The writer creates its file on its own thread.
    let started = std::time::Instant::now();
    while !spare.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the writer started"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let closing = std::time::Instant::now();
    drop(wal);
    assert!(
        closing.elapsed() < std::time::Duration::from_secs(10),
        "closing waits for one chunk, not the whole spare"
    );
    fs::write(&spare, b"half written").expect("writes");
    let (wal, records) = open(
        &directory,
        &WalOptions {
            preallocate: false,
            ..options
        },
    );
    assert_eq!(records, vec![record; 64]);
    assert!(!spare.exists(), "recovery deletes a leftover spare");
    drop(wal);
}

#[test]
fn a_record_too_large_for_a_frame_is_refused_without_poisoning() {
    let directory = TestDirectory::new();
    let (mut wal, _) = open(&directory, &WalOptions::default());
    let huge = vec![0u8; crate::segment::MAX_RECORD_BYTES + 1];
    assert!(matches!(
        wal.append(&huge),
        Err(StorageError::RecordTooLarge { .. })
    ));
    assert_eq!(wal.append(b"fine").expect("still usable"), 0);
}

#[test]
fn files_that_are_not_ours_are_left_alone() {
    let directory = TestDirectory::new();
    fs::create_dir_all(directory.path()).expect("creates");
    fs::write(directory.path().join("LOCK"), b"x").expect("writes");
    fs::write(directory.path().join("wal-1.log"), b"x").expect("writes");
    let (mut wal, records) = open(&directory, &WalOptions::default());
    assert!(records.is_empty());
    wal.append(b"a").expect("appends");
    wal.sync().expect("syncs");
    assert!(directory.names().contains(&"LOCK".to_string()));
    assert!(directory.names().contains(&"wal-1.log".to_string()));
}

/// Every way a crash can cut a checkpoint short, and what recovery must return for each.
#[test]
fn a_crash_at_every_step_of_a_checkpoint_recovers_a_consistent_log() {
    let steps = [
        CheckpointStep::TemporaryWritten,
        CheckpointStep::Renamed,
        CheckpointStep::Durable,
        CheckpointStep::SegmentTemporaryWritten,
        CheckpointStep::SegmentCreated,
        CheckpointStep::SegmentsDeleted,
    ];
    let before = vec![record(0), record(1)];
    let checkpoint = b"checkpoint".to_vec();
    for step in steps {
        // `lose_rename`: the crash also loses the un-fsynced rename of step 2.
        // `cut`: the crash persisted only part of the temporary file.
        for (lose_rename, cut) in [(false, None), (true, None), (false, Some(5))] {
            if step != CheckpointStep::Renamed && lose_rename {
                continue;
            }
            if step != CheckpointStep::TemporaryWritten && cut.is_some() {
                continue;
            }
            let directory = TestDirectory::new();
            let options = small_segments();
            let (mut wal, _) = open(&directory, &options);
            wal.append(&before[0]).expect("appends");
            wal.append(&before[1]).expect("appends");
            wal.sync().expect("syncs");
            wal.append(b"unsynced").expect("appends");
            wal.checkpoint_until(&checkpoint, Some(step))
                .expect("checkpoint steps");
            drop(wal);
            let snapshot = directory.path().join(snapshot_file_name(3));
            let temporary = directory
                .path()
                .join(format!("{}.tmp", snapshot_file_name(3)));
            if lose_rename {
                fs::rename(&snapshot, &temporary).expect("renames back");
            }
            if let Some(keep) = cut {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&temporary)
                    .expect("opens");
                file.set_len(keep).expect("cuts");
            }

            let context =
                format!("crash after {step:?} (rename lost: {lose_rename}, cut: {cut:?})");
            let (mut wal, recovered) = Wal::open(directory.path(), options.clone())
                .unwrap_or_else(|error| panic!("{context}: {error}"));
            let durable = step >= CheckpointStep::Durable
                || (step == CheckpointStep::Renamed && !lose_rename);
            if durable {
                assert_eq!(recovered.records, vec![checkpoint.clone()], "{context}");
                assert_eq!(recovered.first_index, 3, "{context}");
            } else {
                // The synced records survive; the unsynced one may (it was written through).
                let mut with_unsynced = before.clone();
                with_unsynced.push(b"unsynced".to_vec());
                assert!(
                    recovered.records == before || recovered.records == with_unsynced,
                    "{context}: {:?}",
                    recovered.records
                );
            }
            // No leftovers: no temporary files, and only what the newest checkpoint needs.
            let names = directory.names();
            assert!(
                names.iter().all(|name| !name.ends_with(".tmp")),
                "{context}: {names:?}"
            );
            if durable {
                assert_eq!(
                    names,
                    vec![snapshot_file_name(3), segment_file_name(4)],
                    "{context}"
                );
            }
            // The log continues, and the continuation survives another reopen.
            let index = wal.append(b"next").expect("appends");
            wal.sync().expect("syncs");
            drop(wal);
            let (_, records) = open(&directory, &options);
            assert_eq!(records.last(), Some(&b"next".to_vec()), "{context}");
            assert_eq!(index, recovered.next_index, "{context}");
        }
    }
}

/// The counts `sync` returns drive `OutputGate` as a runtime would: a reply waiting for a
/// record leaves only after the sync covering it, and a restarted node counts from zero.
#[test]
fn sync_counts_release_held_outputs_in_each_life() {
    use synod_core::node::OutputGate;

    let directory = TestDirectory::new();
    let options = WalOptions::default();
    for life in 0..2 {
        let (mut wal, _) = open(&directory, &options);
        let mut gate = OutputGate::new(wal.durable_records());
        wal.append(b"vote").expect("appends");
        assert_eq!(
            gate.submit(1, "vote reply"),
            None,
            "life {life}: held until synced"
        );
        wal.append(b"entry").expect("appends");
        wal.append_checkpoint(b"snapshot").expect("checkpoints");
        assert_eq!(gate.submit(3, "after the checkpoint"), None);
        wal.append(b"unsynced").expect("appends");
        assert_eq!(gate.submit(4, "needs the unsynced record"), None);
        let durable = wal.sync().expect("syncs");
        assert_eq!(durable, 4, "life {life}");
        assert_eq!(
            gate.durable(durable),
            vec![
                "vote reply",
                "after the checkpoint",
                "needs the unsynced record"
            ]
        );
    }
    let (_, records) = open(&directory, &options);
    assert_eq!(records, vec![b"snapshot".to_vec(), b"unsynced".to_vec()]);
}

/// The documented limit of the fault model: a crash that lost an earlier unsynced page but
/// kept a later one leaves a hole before valid records. Recovery cannot tell it from rot in
/// synced data, so it refuses to open rather than guess in the direction that could lose
/// acknowledged records.
#[test]
fn a_hole_before_valid_unsynced_records_refuses_rather_than_guesses() {
    let directory = TestDirectory::new();
    let options = WalOptions {
        write_buffer_bytes: 0,
        ..WalOptions::default()
    };
    let (mut wal, _) = open(&directory, &options);
    wal.append(b"synced").expect("appends");
    wal.sync().expect("syncs");
    wal.append(b"lost page").expect("appends");
    wal.append(b"kept page").expect("appends");
    drop(wal);
    let path = directory.path().join(segment_file_name(0));
    let mut bytes = fs::read(&path).expect("readable");
    let hole = SEGMENT_HEADER_BYTES + 16 + b"synced".len();
    bytes[hole..hole + 16 + b"lost page".len()].fill(0);
    fs::write(&path, bytes).expect("writable");
    let error = Wal::open(directory.path(), options).expect_err("refuses");
    assert!(
        matches!(error, StorageError::CorruptRecord { offset, .. } if offset == hole as u64),
        "{error}"
    );
}

mod checkpoint_crash_properties {
    use super::*;
    use proptest::prelude::*;

    fn step() -> impl Strategy<Value = CheckpointStep> {
        prop_oneof![
            Just(CheckpointStep::TemporaryWritten),
            Just(CheckpointStep::Renamed),
            Just(CheckpointStep::Durable),
            Just(CheckpointStep::SegmentTemporaryWritten),
            Just(CheckpointStep::SegmentCreated),
            Just(CheckpointStep::SegmentsDeleted),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Random records and syncs (an earlier checkpoint perhaps among them), then a
        /// checkpoint cut short at a random step, its un-fsynced rename perhaps lost and its
        /// temporary file perhaps cut: recovery returns either the log as it was (every
        /// synced record) or the checkpoint alone, and the latter once it was durable.
        #[test]
        fn a_checkpoint_cut_short_anywhere_recovers_old_or_new(
            records in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 1..40), 0u8..8), 1..20),
            step in step(),
            lose_rename in any::<bool>(),
            cut in proptest::option::of(0u64..80),
        ) {
            let directory = TestDirectory::new();
            let options = small_segments();
            let (mut wal, _) = open(&directory, &options);
            // What recovery must return before the final checkpoint, and how much of it is
            // durable (the rest may survive too: it was written through).
            let mut log: Vec<Vec<u8>> = Vec::new();
            let mut durable = 0;
            for (record, action) in &records {
                match action {
                    0 => {
                        wal.append_checkpoint(record).expect("checkpoints");
                        log = vec![record.clone()];
                        durable = 1;
                    }
                    1 | 2 => {
                        wal.append(record).expect("appends");
                        log.push(record.clone());
                        wal.sync().expect("syncs");
                        durable = log.len();
                    }
                    _ => {
                        wal.append(record).expect("appends");
                        log.push(record.clone());
                    }
                }
            }
            let index = wal.next_index();
            wal.checkpoint_until(b"final checkpoint", Some(step)).expect("steps");
            drop(wal);
            let snapshot = directory.path().join(snapshot_file_name(index));
            let temporary = directory.path().join(format!("{}.tmp", snapshot_file_name(index)));
            let rename_lost = step == CheckpointStep::Renamed && lose_rename;
            if rename_lost {
                fs::rename(&snapshot, &temporary).expect("renames back");
            }
            if let (CheckpointStep::TemporaryWritten, Some(keep)) = (step, cut) {
                let file = fs::OpenOptions::new().write(true).open(&temporary).expect("opens");
                file.set_len(keep).expect("cuts");
            }

            let (_, recovered) = Wal::open(directory.path(), options).expect("recovers");
            let checkpoint_durable = step >= CheckpointStep::Renamed && !rename_lost;
            if checkpoint_durable {
                prop_assert_eq!(recovered.records, vec![b"final checkpoint".to_vec()]);
                prop_assert_eq!(recovered.next_index, index + 1);
            } else {
                prop_assert!(recovered.records.len() >= durable);
                prop_assert_eq!(&recovered.records[..], &log[..recovered.records.len()]);
            }
        }
    }
}

mod direct_io {
    use super::*;
    use proptest::prelude::*;

    /// The bytes of every segment file in `directory`, by name.
    fn segments(directory: &TestDirectory) -> Vec<(String, Vec<u8>)> {
        directory
            .names()
            .into_iter()
            .filter(|name| name.starts_with("wal-"))
            .map(|name| {
                let bytes = fs::read(directory.path().join(&name)).expect("reads");
                (name, bytes)
            })
            .collect()
    }

    #[derive(Clone, Debug)]
    enum Step {
        Append(usize),
        Sync,
        Reopen,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            // Sizes from a few bytes to more than two blocks, so records end anywhere in a
            // block, fill it exactly, or span several.
            6 => (1usize..9000).prop_map(Step::Append),
            3 => Just(Step::Sync),
            1 => Just(Step::Reopen),
        ];
        proptest::collection::vec(step, 1..40)
    }

    /// A record of `length` bytes that differs from its neighbours and ends in a non-zero
    /// byte (so zero padding cannot pass for part of it).
    fn sized_record(index: usize, length: usize) -> Vec<u8> {
        (0..length).map(|at| (index * 31 + at) as u8 | 1).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Direct writes leave every segment with the bytes buffered writes leave, followed
        /// only by zeros, across block boundaries, roll-overs and reopens; and both recover
        /// the same records.
        #[test]
        fn direct_writes_leave_the_bytes_buffered_writes_leave(
            steps in steps(),
            write_buffer_bytes in prop_oneof![Just(0usize), Just(5000), Just(1 << 20)],
        ) {
            let buffered_directory = TestDirectory::new();
            let direct_directory = TestDirectory::new();
            let options = |direct_io| WalOptions {
                segment_bytes: 20_000,
                preallocate: false,
                write_buffer_bytes,
                direct_io,
            };
            let (mut buffered, _) = open(&buffered_directory, &options(false));
            let (mut direct, _) = open(&direct_directory, &options(true));
            prop_assert!(!buffered.writes_directly());
            // Where the file system has no direct I/O both logs write through the page
            // cache, and the comparison still holds.
            prop_assert_eq!(
                direct.writes_directly(),
                crate::direct::available_in(&std::env::temp_dir())
            );
            let mut appended = Vec::new();
            for (index, step) in steps.iter().enumerate() {
                match step {
                    Step::Append(length) => {
                        let record = sized_record(index, *length);
                        buffered.append(&record).expect("appends");
                        direct.append(&record).expect("appends");
                        appended.push(record);
                    }
                    Step::Sync => {
                        prop_assert_eq!(
                            buffered.sync().expect("syncs"),
                            direct.sync().expect("syncs")
                        );
                    }
                    Step::Reopen => {
                        // Without a sync: both keep exactly the records they wrote (those
                        // past the write buffer), whether synced or not.
                        drop((buffered, direct));
                        let (reopened, records) = open(&buffered_directory, &options(false));
                        buffered = reopened;
                        let (reopened, direct_records) = open(&direct_directory, &options(true));
                        direct = reopened;
                        prop_assert_eq!(&direct_records, &records);
                        prop_assert!(appended.starts_with(&records));
                        appended = records;
                    }
                }
            }
            buffered.sync().expect("syncs");
            direct.sync().expect("syncs");
            let expected = segments(&buffered_directory);
            let actual = segments(&direct_directory);
            prop_assert_eq!(
                expected.iter().map(|(name, _)| name).collect::<Vec<_>>(),
                actual.iter().map(|(name, _)| name).collect::<Vec<_>>()
            );
            for ((name, expected), (_, actual)) in expected.iter().zip(&actual) {
                prop_assert!(actual.len() >= expected.len(), "{} is short", name);
                prop_assert!(actual[..expected.len()] == expected[..], "{} differs", name);
                prop_assert!(
                    actual[expected.len()..].iter().all(|&byte| byte == 0),
                    "{} has more than zeros after its records",
                    name
                );
            }
            drop((buffered, direct));
            let (_, records) = open(&direct_directory, &options(true));
            prop_assert_eq!(records, appended);
        }
    }

    #[test]
    fn direct_writes_zero_fill_ahead_in_steps_and_need_no_spare() {
        use crate::direct::ZERO_AHEAD_BYTES;
        let directory = TestDirectory::new();
        let options = WalOptions {
            segment_bytes: 600 * 1024,
            preallocate: true,
            write_buffer_bytes: 0,
            direct_io: true,
        };
        if !crate::direct::available_in(&std::env::temp_dir()) {
            eprintln!("no direct I/O in the temp dir's file system: nothing to check");
            return;
        }
        let (mut wal, _) = open(&directory, &options);
        assert!(wal.writes_directly());
        let length = || {
            fs::metadata(directory.path().join(segment_file_name(0)))
                .expect("exists")
                .len()
        };
        wal.append(b"first").expect("appends");
        let (_, bytes) = segments(&directory).pop().expect("a segment");
        assert_eq!(
            bytes.len() as u64,
            ZERO_AHEAD_BYTES,
            "one step of zeros ahead"
        );
        let end = SEGMENT_HEADER_BYTES + crate::segment::RECORD_OVERHEAD_BYTES + 5;
        assert_eq!(&bytes[end - 5..end], b"first");
        assert!(bytes[end..].iter().all(|&byte| byte == 0));
        // Records inside the zeroed part leave the size alone; the first one past it adds
        // another step, and the last step stops at the segment's size.
        let record = vec![9u8; 50 * 1024];
        let mut lengths = Vec::new();
        for _ in 0..11 {
            wal.append(&record).expect("appends");
            lengths.push(length() / 1024);
        }
        assert_eq!(
            lengths,
            [256, 256, 256, 256, 256, 512, 512, 512, 512, 512, 600]
        );
        assert_eq!(wal.sync().expect("syncs"), 12);
        assert!(
            !wal.wait_for_spare(),
            "no spare segment beside a direct writer"
        );
        drop(wal);
        let (_, records) = open(&directory, &options);
        assert_eq!(records.len(), 12);
    }
}
