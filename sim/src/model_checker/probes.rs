//! Random probes: seeded random walks for bugs too deep for an exhaustive search.
//!
//! Walk `n` draws every choice from `Rng::derive(seed, n)`, so it takes the same path
//! whichever thread runs it. Invariants are checked at every step of every walk (not only
//! on states new to the run) and the violation reported is the one found by the
//! lowest-numbered walk, so a run's verdict and counterexample do not depend on the thread
//! count or on scheduling.

use super::checker::{Evaluation, FLUSH_INTERVAL_STATES, Found, Search, Trail};
use super::fingerprint::fingerprint;
use super::model::Model;
use super::table::FingerprintTable;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use synod_core::rng::Rng;

/// A walk's length when the search sets no depth limit: random walks through a network in
/// which every message can be delivered again never end by themselves.
pub const PROBE_DEPTH_DEFAULT: usize = 200;

/// The lowest-numbered walk's violation so far.
struct FirstViolation {
    probe: AtomicU64,
    found: Mutex<Option<(u64, usize, Trail)>>,
}

/// Runs `probes` walks on the search's threads.
pub(crate) fn explore<M: Model>(search: &Search<'_, M>, seed: u64, probes: u64) -> Found {
    let visited = FingerprintTable::<()>::new();
    let next_probe = AtomicU64::new(0);
    let first = FirstViolation {
        probe: AtomicU64::new(u64::MAX),
        found: Mutex::new(None),
    };
    let walker = || walk_many(search, &visited, &next_probe, probes, seed, &first);
    let goal_lists: Vec<Vec<(usize, Trail)>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..search.threads).map(|_| scope.spawn(walker)).collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a checker thread panicked"))
            .collect()
    });
    let violation = first
        .found
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .map(|(_, property, trail)| (property, trail));
    Found {
        violation,
        goals: goal_lists.into_iter().flatten().collect(),
    }
}

/// One thread's walks: claims walk numbers until none are left or a lower-numbered walk
/// has already found a violation.
fn walk_many<M: Model>(
    search: &Search<'_, M>,
    visited: &FingerprintTable<()>,
    next_probe: &AtomicU64,
    probes: u64,
    seed: u64,
    first: &FirstViolation,
) -> Vec<(usize, Trail)> {
    let model = search.model;
    let max_depth = search.max_depth.unwrap_or(PROBE_DEPTH_DEFAULT);
    let init_states = model.init_states();
    let mut goals = Vec::new();
    let mut actions = Vec::new();
    let mut untried: Vec<u32> = Vec::new();
    let mut generated = 0;
    let mut unique = 0;
    let mut deepest = 0;
    loop {
        let probe = next_probe.fetch_add(1, Ordering::Relaxed);
        if probe >= probes || probe > first.probe.load(Ordering::Relaxed) || search.stopped() {
            break;
        }
        if init_states.is_empty() {
            break;
        }
        let mut rng = Rng::derive(seed, probe);
        let init_index = rng.below(init_states.len() as u64) as u32;
        let mut path = vec![init_index];
        let mut state = init_states[init_index as usize].clone();
        generated += 1;
        let mut broken = None;
        unique += u64::from(visited.insert(fingerprint(&state), ()));
        if let Evaluation::Broken(property) =
            search.evaluate(&state, &mut goals, || Trail::Indices(path.clone()))
        {
            broken = Some(property);
        }
        while broken.is_none() && path.len() <= max_depth && !model.prune(&state) {
            actions.clear();
            model.actions(&state, &mut actions);
            untried.clear();
            untried.extend(0..actions.len() as u32);
            let mut step = None;
            while !untried.is_empty() {
                let pick = rng.below(untried.len() as u64) as usize;
                let index = untried.swap_remove(pick);
                if let Some(next) = model.next_state(&state, actions[index as usize].clone()) {
                    step = Some((index, next));
                    break;
                }
            }
            let Some((index, next)) = step else {
                break; // A dead end: no action changes anything.
            };
            generated += 1;
            path.push(index);
            state = next;
            unique += u64::from(visited.insert(fingerprint(&state), ()));
            if let Evaluation::Broken(property) =
                search.evaluate(&state, &mut goals, || Trail::Indices(path.clone()))
            {
                broken = Some(property);
            }
        }
        if path.len() > max_depth && !model.prune(&state) {
            search.depth_bounded.store(true, Ordering::Relaxed);
        }
        deepest = deepest.max(path.len() - 1);
        if let Some(property) = broken {
            first.probe.fetch_min(probe, Ordering::Relaxed);
            let mut slot = first
                .found
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.as_ref().is_none_or(|(best, _, _)| probe < *best) {
                *slot = Some((probe, property, Trail::Indices(path)));
            }
        }
        if generated >= FLUSH_INTERVAL_STATES {
            let stop = search.flush(generated, unique, deepest);
            (generated, unique) = (0, 0);
            if stop {
                break;
            }
        }
    }
    search.flush(generated, unique, deepest);
    goals
}
