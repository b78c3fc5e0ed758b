//! Arbitrary directory contents through write-ahead log recovery: `Wal::open` must never
//! panic; a directory it accepts must reopen to the same records, and must keep a record
//! appended and synced after recovery.
//!
//! The input is read as up to eight files, each `[kind, index, length (u16 LE), body]`:
//! segments and snapshots with a valid header or raw bytes, segments of valid records cut
//! anywhere, and leftover temporary files, under colliding small indexes so that gaps,
//! superseded segments and competing snapshots all occur.
#![no_main]

use std::fs;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use synod_storage::segment::{encode_record_frame, encode_segment_header, segment_file_name};
use synod_storage::snapshot::{encode_snapshot_header, snapshot_file_name};
use synod_storage::{Wal, WalOptions};

const FILES_MAX: usize = 8;

/// One directory per fuzzing process, emptied before every input.
fn directory() -> PathBuf {
    std::env::temp_dir().join(format!("synod-fuzz-recover-{}", std::process::id()))
}

/// The name and contents of the file described by `kind`, `index` and `body`.
fn file(kind: u8, index: u64, body: &[u8]) -> (String, Vec<u8>) {
    match kind % 6 {
        0 => {
            let mut bytes = encode_segment_header(index).to_vec();
            bytes.extend_from_slice(body);
            (segment_file_name(index), bytes)
        }
        1 => (segment_file_name(index), body.to_vec()),
        2 => {
            let mut bytes = encode_snapshot_header(index, body).to_vec();
            bytes.extend_from_slice(body);
            (snapshot_file_name(index), bytes)
        }
        3 => (snapshot_file_name(index), body.to_vec()),
        4 => (format!("{}.tmp", segment_file_name(index)), body.to_vec()),
        _ => {
            // Valid records of up to 16 bytes each, then the whole cut by the first byte.
            let mut bytes = encode_segment_header(index).to_vec();
            let (cut, records) = body.split_first().unwrap_or((&0, &[]));
            for (offset, record) in records.chunks(16).enumerate() {
                encode_record_frame(index + offset as u64, record, &mut bytes);
            }
            let keep = bytes.len().saturating_sub(*cut as usize % 32);
            bytes.truncate(keep);
            (segment_file_name(index), bytes)
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let directory = directory();
    let _ = fs::remove_dir_all(&directory);
    fs::create_dir_all(&directory).expect("creates the fuzz directory");
    let mut rest = input;
    for _ in 0..FILES_MAX {
        let [kind, index, low, high, tail @ ..] = rest else {
            break;
        };
        let length = (u16::from_le_bytes([*low, *high]) as usize).min(tail.len());
        let (body, after) = tail.split_at(length);
        let (name, bytes) = file(*kind, u64::from(*index % 8), body);
        fs::write(directory.join(name), bytes).expect("writes a fuzz file");
        rest = after;
    }

    let options = WalOptions {
        segment_bytes: 256,
        ..WalOptions::default()
    };
    let Ok((mut wal, first)) = Wal::open(&directory, options.clone()) else {
        return;
    };
    let index = wal.append(b"appended").expect("appends after recovery");
    assert_eq!(index, first.next_index);
    wal.sync().expect("syncs after recovery");
    drop(wal);
    let (_, second) = Wal::open(&directory, options).expect("a recovered log reopens");
    assert_eq!(second.torn_tail, None);
    assert_eq!(second.first_index, first.first_index);
    let mut expected = first.records;
    expected.push(b"appended".to_vec());
    assert_eq!(second.records, expected);
});
