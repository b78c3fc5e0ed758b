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
            let mut records_total = 0u64;
            let mut syncs_total = 0u64;
            let mut elapsed_total = Duration::ZERO;
            group.bench_function(BenchmarkId::new(label, every), |bencher| {
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
            report(
                label,
                every,
                records_total,
                syncs_total,
                elapsed_total,
                &directory,
            );
        }

        let baseline = BenchDirectory::new(&format!("raw-{every}"));
        fs::create_dir_all(&baseline.0).expect("creates");
        let mut file = File::create(baseline.0.join("raw")).expect("creates");
        let batch = vec![0xA5u8; RECORD_BYTES * every as usize];
        let (mut records_total, mut syncs_total, mut elapsed_total) = (0, 0, Duration::ZERO);
        group.bench_function(BenchmarkId::new("raw file", every), |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    file.write_all(black_box(&batch)).expect("writes");
                    file.sync_data().expect("syncs");
                }
                let elapsed = start.elapsed();
                records_total += iterations * every;
                syncs_total += iterations;
                elapsed_total += elapsed;
                elapsed
            });
        });
        report(
            "raw file",
            every,
            records_total,
            syncs_total,
            elapsed_total,
            &baseline,
        );
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

/// Prints records/s and fsyncs/s over every timed iteration of one benchmark.
fn report(
    label: &str,
    every: u64,
    records: u64,
    syncs: u64,
    elapsed: Duration,
    directory: &BenchDirectory,
) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "{label}, sync every {every}: {:.0} records/s, {:.0} fsyncs/s ({records} records, \
         {syncs} syncs in {seconds:.2} s, in {})",
        records as f64 / seconds,
        syncs as f64 / seconds,
        directory.0.display(),
    );
}

criterion_group!(benches, append_and_sync, recover);
criterion_main!(benches);
