//! Write-ahead log throughput on the real file system: 256-byte records appended with a
//! sync (one fsync, group commit) every N records, N = 1, 16, 256.
//!
//! ```sh
//! cargo bench -p synod-storage --bench wal
//! ```
//!
//! Criterion's throughput is records per second; after each N the bench prints records/s
//! and fsyncs/s over all its timed iterations. The log lives in a fresh directory under
//! the system temp dir (set `TMPDIR` to measure another file system).

use std::fs;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use synod_storage::{Wal, WalOptions};

/// The record size the issue asks about: a small replicated command.
const RECORD_BYTES: usize = 256;
/// Records per sync.
const SYNC_EVERY: [u64; 3] = [1, 16, 256];

/// A fresh directory under the system temp dir, removed on drop.
struct BenchDirectory(PathBuf);

impl BenchDirectory {
    fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "synod-storage-bench-{label}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        BenchDirectory(path)
    }
}

impl Drop for BenchDirectory {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn append_and_sync(criterion: &mut Criterion) {
    let record = vec![0xA5u8; RECORD_BYTES];
    let mut group = criterion.benchmark_group("wal append 256 B, sync every N");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for every in SYNC_EVERY {
        let directory = BenchDirectory::new(&every.to_string());
        let (mut wal, _) = Wal::open(&directory.0, WalOptions::default()).expect("opens");
        let mut records_total = 0u64;
        let mut syncs_total = 0u64;
        let mut elapsed_total = Duration::ZERO;
        group.throughput(Throughput::Elements(every));
        group.bench_function(BenchmarkId::from_parameter(every), |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    for _ in 0..every {
                        black_box(wal.append(&record).expect("appends"));
                    }
                    black_box(wal.sync().expect("syncs"));
                }
                let elapsed = start.elapsed();
                records_total += iterations * every;
                syncs_total += iterations;
                elapsed_total += elapsed;
                elapsed
            });
        });
        let seconds = elapsed_total.as_secs_f64();
        println!(
            "sync every {every}: {:.0} records/s, {:.0} fsyncs/s ({records_total} records, \
             {syncs_total} syncs in {seconds:.2} s, in {})",
            records_total as f64 / seconds,
            syncs_total as f64 / seconds,
            directory.0.display(),
        );
    }
    group.finish();
}

criterion_group!(benches, append_and_sync);
criterion_main!(benches);
