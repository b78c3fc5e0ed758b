//! What the store costs per key in memory when its records (keys' and values' bytes) live in
//! a file, as the server runs it: N 64-byte keys with 256-byte values (100,000 by default;
//! `SYNOD_MVCC_MEMORY_KEYS=1000000` for the benchmark's size), measured as the growth of
//! the process's resident set. Only the index stays on the heap; fails above
//! [`BYTES_PER_KEY_MAX`].

mod common;
use common::resident_bytes;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use synod_protocols::mvcc::MvccStore;
use synod_protocols::mvcc::api::{PutRequest, RangeRequest};
use synod_protocols::mvcc::records::RecordFile;
use synod_protocols::replicated::SnapshotTail;

const VALUE_BYTES: usize = 256;

/// The index of a key: the key in the map (64 bytes), the map slot, one version and one
/// change-log entry, with allocator slack (measured: about 200 bytes).
const BYTES_PER_KEY_MAX: u64 = 260;

#[derive(Debug)]
struct File {
    file: std::fs::File,
    length: AtomicU64,
    directory: std::path::PathBuf,
}

fn create(directory: &std::path::Path) -> Arc<File> {
    let path = directory.join(format!("records-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    // Unlinked at once: the open handle keeps it until dropped.
    std::fs::remove_file(&path).unwrap();
    Arc::new(File {
        file,
        length: AtomicU64::new(0),
        directory: directory.to_path_buf(),
    })
}

impl SnapshotTail for File {
    fn len(&self) -> u64 {
        self.length.load(Ordering::Acquire)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(out, offset)
    }
}

impl RecordFile for File {
    fn append(&self, bytes: &[u8]) -> std::io::Result<u64> {
        let offset = self.len();
        self.file.write_all_at(bytes, offset)?;
        self.length
            .store(offset + bytes.len() as u64, Ordering::Release);
        Ok(offset)
    }

    fn fresh(&self) -> std::io::Result<Arc<dyn RecordFile>> {
        let file: Arc<dyn RecordFile> = create(&self.directory);
        Ok(file)
    }
}

#[test]
fn a_key_costs_only_its_index_when_values_are_in_a_file() {
    let keys: u64 = std::env::var("SYNOD_MVCC_MEMORY_KEYS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(100_000);
    let Some(before) = resident_bytes() else {
        eprintln!("no /proc/self/status: memory not measured");
        return;
    };
    let file: Arc<dyn RecordFile> = create(&std::env::temp_dir());
    let mut store = MvccStore::default();
    store.use_file(&file).unwrap();
    let mut value = vec![b'v'; VALUE_BYTES];
    for index in 0..keys {
        let text = format!("{index:016}");
        value[..16].copy_from_slice(text.as_bytes());
        store
            .put(&PutRequest::new(format!("key/{index:060}"), value.clone()))
            .expect("put");
    }
    let loaded = resident_bytes().expect("measured before");
    let per_key = loaded.saturating_sub(before) / keys;
    eprintln!(
        "{keys} keys x {VALUE_BYTES} B, records in a file ({} MiB): {} MiB resident growth ({per_key} B/key)",
        store.record_bytes() >> 20,
        loaded.saturating_sub(before) >> 20,
    );
    assert_eq!(store.key_count() as u64, keys);
    // The values read back from the file.
    let last = store
        .range(&RangeRequest::key(format!("key/{:060}", keys - 1)))
        .unwrap();
    assert_eq!(
        &last.kvs[0].value[..16],
        format!("{:016}", keys - 1).as_bytes()
    );
    assert!(
        per_key <= BYTES_PER_KEY_MAX,
        "{per_key} bytes per key exceeds the budget of {BYTES_PER_KEY_MAX}"
    );
}
