//! The checker against Porcupine's reference figures, on the vendored corpus
//! (`check/testdata/histories`): the four rows of BENCHMARKS.md's "Checker" section.
//!
//! Run with `cargo bench -p synod-check --bench checker`. Like Porcupine's benchmarks, the files
//! are parsed before timing starts; each iteration checks them.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use synod_check::format::read_history_file;
use synod_check::{CheckOptions, Event, KvModel, RegisterModel, check};

/// The corpus directory.
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/histories")
}

/// The events of one corpus file.
fn events(relative: &str) -> Vec<Event> {
    read_history_file(&corpus().join(relative), None)
        .unwrap_or_else(|error| panic!("{relative}: {error}"))
        .events
}

fn checker(criterion: &mut Criterion) {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let partitioned = CheckOptions {
        threads,
        ..CheckOptions::default()
    };
    let unpartitioned = CheckOptions {
        partition: false,
        ..partitioned
    };
    // etcd_095 holds no history (VERDICTS.txt: no-verdict); the other 102 logs are the row.
    let jepsen: Vec<Vec<Event>> = (0..=102)
        .filter(|&number| number != 95)
        .map(|number| events(&format!("jepsen/etcd_{number:03}.log")))
        .collect();
    let c50_ok = events("kv/c50-ok.txt");
    let c10_ok = events("kv/c10-ok.txt");
    let c10_bad = events("kv/c10-bad.txt");

    let mut group = criterion.benchmark_group("checker");
    group.sample_size(10);
    group.bench_function("102 Jepsen etcd histories (register)", |bencher| {
        bencher.iter(|| {
            for history in &jepsen {
                black_box(check(&RegisterModel, history, &partitioned).expect("well-formed"));
            }
        });
    });
    group.bench_function("kv c50-ok, partitioned", |bencher| {
        bencher.iter(|| black_box(check(&KvModel, &c50_ok, &partitioned).expect("well-formed")));
    });
    group.bench_function("kv c10-ok, not partitioned", |bencher| {
        bencher.iter(|| black_box(check(&KvModel, &c10_ok, &unpartitioned).expect("well-formed")));
    });
    group.bench_function("kv c10-bad, not partitioned", |bencher| {
        bencher.iter(|| black_box(check(&KvModel, &c10_bad, &unpartitioned).expect("well-formed")));
    });
    group.finish();
}

criterion_group!(benches, checker);
criterion_main!(benches);
