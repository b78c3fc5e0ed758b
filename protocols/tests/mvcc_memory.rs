//! What the store costs per key with its records in memory (as the simulator runs it): N
//! 64-byte keys with 256-byte values (100,000 by default; set
//! `SYNOD_MVCC_MEMORY_KEYS=1000000` for the benchmark's size), measured as the growth of the
//! process's resident set (Linux `/proc/self/status`). Prints the figure; fails if a key
//! costs more than [`BYTES_PER_KEY_MAX`], which catches a layout that copies values or
//! over-allocates per key. `mvcc_memory_file.rs` measures the server's layout (records in a
//! file).

mod common;
use common::resident_bytes;
use synod_protocols::mvcc::MvccStore;
use synod_protocols::mvcc::api::{CompactionRequest, PutRequest};

/// The value size of the benchmark.
const VALUE_BYTES: usize = 256;

/// A key's budget: its record (key and value, 332 bytes) plus the key in the map, the map
/// slot, the version and the change-log entry, with allocator slack (measured: about 530
/// bytes).
const BYTES_PER_KEY_MAX: u64 = 640;

#[test]
fn a_key_with_a_256_byte_value_costs_under_the_budget() {
    let keys: u64 = std::env::var("SYNOD_MVCC_MEMORY_KEYS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(100_000);
    let Some(before) = resident_bytes() else {
        eprintln!("no /proc/self/status: memory not measured");
        return;
    };
    let mut store = MvccStore::default();
    let mut value = vec![b'v'; VALUE_BYTES];
    for index in 0..keys {
        let text = format!("{index:016}");
        value[..16].copy_from_slice(text.as_bytes());
        store
            .put(&PutRequest::new(format!("key/{index:060}"), value.clone()))
            .expect("put");
    }
    let loaded = resident_bytes().expect("measured before");
    // Compacting to the current revision frees the change log (the history of the puts).
    store
        .compact(&CompactionRequest {
            revision: store.revision(),
            physical: true,
        })
        .expect("compact");
    let compacted = resident_bytes().expect("measured before");
    let per_key = |bytes: u64| bytes.saturating_sub(before) / keys;
    eprintln!(
        "{keys} keys x {VALUE_BYTES} B: {} MiB resident growth ({} B/key); after compaction {} MiB ({} B/key)",
        loaded.saturating_sub(before) >> 20,
        per_key(loaded),
        compacted.saturating_sub(before) >> 20,
        per_key(compacted),
    );
    assert_eq!(store.key_count() as u64, keys);
    assert!(
        per_key(loaded) <= BYTES_PER_KEY_MAX,
        "{} bytes per key exceeds the budget of {BYTES_PER_KEY_MAX}",
        per_key(loaded)
    );
}
