//! Running many seeds at once. Every seed is an independent, deterministic run, so seeds
//! are spread over threads and the results come back in seed order whatever the thread
//! count.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `run` for every seed on `threads` threads (at least one), calling `on_done` as each
/// seed finishes (in completion order, e.g. for a progress bar), and returns every
/// (seed, result) in the order of `seeds`.
pub fn sweep<T: Send>(
    seeds: &[u64],
    threads: usize,
    run: impl Fn(u64) -> T + Sync,
    on_done: impl Fn(u64, &T) + Sync,
) -> Vec<(u64, T)> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, u64, T)>> = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, seeds.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&seed) = seeds.get(index) else {
                        break;
                    };
                    let result = run(seed);
                    on_done(seed, &result);
                    results
                        .lock()
                        .expect("a sweep thread panicked while recording")
                        .push((index, seed, result));
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .expect("a sweep thread panicked while recording");
    results.sort_by_key(|(index, _, _)| *index);
    results
        .into_iter()
        .map(|(_, seed, result)| (seed, result))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn results_come_back_in_seed_order_once_each() {
        let seeds: Vec<u64> = (10..60).rev().collect();
        let finished = AtomicU64::new(0);
        let results = sweep(
            &seeds,
            3,
            |seed| seed * 2,
            |_, _| {
                finished.fetch_add(1, Ordering::Relaxed);
            },
        );
        assert_eq!(finished.load(Ordering::Relaxed), 50);
        let expected: Vec<(u64, u64)> = seeds.iter().map(|&seed| (seed, seed * 2)).collect();
        assert_eq!(results, expected);
        assert!(sweep(&[], 2, |seed| seed, |_, _| {}).is_empty());
    }
}
