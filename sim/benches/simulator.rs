//! Simulator speed: one at-most-once KV seed with every fault kind, end to end (boot,
//! workload, nemesis, history) and the same run plus the history check.
//!
//! Run with `cargo bench -p synod-sim --bench simulator`; events per second are printed
//! as criterion's throughput.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use synod_check::kv::Budget;
use synod_protocols::rpc::{AmoClientConfig, AmoKvClient, AmoKvServer, AmoVariant};
use synod_sim::config::SimConfig;
use synod_sim::simulation::{RunReport, Simulation};
use synod_sim::verdict::judge_kv_run;
use synod_sim::workload::KvWorkload;

fn run_seed(seed: u64) -> RunReport {
    let config = SimConfig {
        seed,
        ..SimConfig::default()
    };
    let workload = KvWorkload::new(config.workload.clone());
    Simulation::new(
        config,
        Box::new(|_| AmoKvServer::new(AmoVariant::Correct)),
        |_, members| AmoKvClient::new(members[0], AmoClientConfig::default()),
        workload,
    )
    .run()
}

fn simulator(criterion: &mut Criterion) {
    let events = run_seed(1).events;
    let mut group = criterion.benchmark_group("amo-kv seed 1, all faults");
    group.throughput(Throughput::Elements(events));
    group.bench_function("simulate", |bencher| {
        bencher.iter(|| black_box(run_seed(black_box(1))));
    });
    group.bench_function("simulate and check", |bencher| {
        bencher.iter(|| {
            let report = run_seed(black_box(1));
            black_box(judge_kv_run(&report, Budget::default()))
        });
    });
    group.finish();
}

criterion_group!(benches, simulator);
criterion_main!(benches);
