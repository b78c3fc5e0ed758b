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
//!
//! `recover` times `Wal::open` over a log of 200,000 such records (52 MiB in one segment,
//! all in the page cache): reading, verifying every CRC32C and copying the records out.
//!
//! `wal direct` is the same log with `WalOptions::direct_io` (what the server uses): each
//! write is `O_DIRECT | O_DSYNC`, so a sync costs one write and no `fdatasync`.
//!
//! The baseline beside each N, `raw file`, appends the same bytes (framed records cost 16
//! more each) to a plain file with `write` and `fdatasync` and nothing else: the floor the
//! disk sets, so the ratio shows what the log itself costs.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
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
    let direct = WalOptions {
        direct_io: true,
        ..WalOptions::default()
    };
    for every in SYNC_EVERY {
        group.throughput(Throughput::Elements(every));
        for (label, options) in [
            ("wal", WalOptions::default()),
            ("wal direct", direct.clone()),
        ] {
            let directory = BenchDirectory::new(&format!("{}-{every}", label.replace(' ', "-")));
            let (mut wal, _) = Wal::open(&directory.0, options).expect("opens");
            let mut totals = Totals::default();
            group.bench_function(BenchmarkId::new(label, every), |bencher| {
                bencher.iter_custom(|iterations| {
                    totals.time(iterations, every, || {
                        for _ in 0..every {
                            black_box(wal.append(&record).expect("appends"));
                        }
                        black_box(wal.sync().expect("syncs"));
                    })
                });
            });
            totals.report(label, every, &directory);
        }

        let baseline = BenchDirectory::new(&format!("raw-{every}"));
        fs::create_dir_all(&baseline.0).expect("creates");
        let mut file = File::create(baseline.0.join("raw")).expect("creates");
        let batch = vec![0xA5u8; RECORD_BYTES * every as usize];
        let mut totals = Totals::default();
        group.bench_function(BenchmarkId::new("raw file", every), |bencher| {
            bencher.iter_custom(|iterations| {
                totals.time(iterations, every, || {
                    file.write_all(black_box(&batch)).expect("writes");
                    file.sync_data().expect("syncs");
                })
            });
        });
        totals.report("raw file", every, &baseline);
    }
    group.finish();
}

/// Records in the log that `recover` reopens.
const RECOVER_RECORDS: u64 = 200_000;

fn recover(criterion: &mut Criterion) {
    let directory = BenchDirectory::new("recover");
    let (mut wal, _) = Wal::open(&directory.0, WalOptions::default()).expect("opens");
    let record = vec![0x5Au8; RECORD_BYTES];
    for _ in 0..RECOVER_RECORDS {
        wal.append(&record).expect("appends");
    }
    wal.sync().expect("syncs");
    drop(wal);
    let mut group = criterion.benchmark_group("wal recover 200k records of 256 B");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECOVER_RECORDS));
    group.bench_function("open", |bencher| {
        bencher.iter(|| {
            let (_, recovered) = Wal::open(&directory.0, WalOptions::default()).expect("reopens");
            assert_eq!(recovered.records.len() as u64, RECOVER_RECORDS);
            black_box(recovered)
        });
    });
    group.finish();
}

/// Records, syncs and time over every timed iteration of one benchmark.
#[derive(Default)]
struct Totals {
    records: u64,
    syncs: u64,
    elapsed: Duration,
}

impl Totals {
    /// Runs `sync_once` (`every` records and one sync) `iterations` times; returns the time.
    fn time(&mut self, iterations: u64, every: u64, mut sync_once: impl FnMut()) -> Duration {
        let start = Instant::now();
        for _ in 0..iterations {
            sync_once();
        }
        let elapsed = start.elapsed();
        self.records += iterations * every;
        self.syncs += iterations;
        self.elapsed += elapsed;
        elapsed
    }

    /// Prints records/s and fsyncs/s (nothing for a benchmark the filter skipped).
    fn report(&self, label: &str, every: u64, directory: &BenchDirectory) {
        if self.syncs == 0 {
            return;
        }
        let seconds = self.elapsed.as_secs_f64();
        println!(
            "{label}, sync every {every}: {:.0} records/s, {:.0} fsyncs/s ({} records, \
             {} syncs in {seconds:.2} s, in {})",
            self.records as f64 / seconds,
            self.syncs as f64 / seconds,
            self.records,
            self.syncs,
            directory.0.display(),
        );
    }
}

criterion_group!(benches, append_and_sync, recover);
criterion_main!(benches);
