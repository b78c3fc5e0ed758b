//! Depth-first search over a shared visited set of fingerprints.
//!
//! Each thread keeps its own stack of states still to expand. A stack entry carries only
//! its depth and the index of the action that produced it; the thread keeps the action
//! indices of the current path in one vector and truncates it to an entry's depth when
//! popping the entry. This is sound because an entry's parent is always on the current
//! path: a parent stays on it until all of its children have been popped. Paths therefore
//! cost nothing per state, where a per-state copy of the path (Stateright's DFS) costs an
//! allocation for every unique state.
//!
//! Work is shared on demand: when some thread is idle, a busy one hands over the bottom half
//! of its stack (the shallowest entries, which root the largest subtrees), each with a copy
//! of its path prefix. The search ends when every thread is idle and no work is left, or
//! when a thread finds a violation or hits a limit.

use super::checker::{Evaluation, FLUSH_INTERVAL_STATES, Found, Search, Trail};
use super::fingerprint::fingerprint;
use super::model::Model;
use super::table::FingerprintTable;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// A thread's cache of recently seen fingerprints has `2^RECENT_BITS` slots: 8,192 slots
/// are 64 KiB, small enough for the second-level cache, and with two-phase commit they
/// already answer about three lookups in four (eight times as many slots answer hardly
/// more, and cost memory the visited table would rather have).
const RECENT_BITS: u32 = 13;
/// A fingerprint's slot in the recent cache is its top bits (the shared table's shard is
/// picked by the low ones).
const RECENT_SHIFT: u32 = 64 - RECENT_BITS;

/// A state waiting to be expanded.
struct Entry<S> {
    state: S,
    /// Actions from an initial state.
    depth: u32,
    /// The index of the action that produced it (at depth 0: of the initial state).
    index: u32,
}

/// An entry handed to another thread, with the path that leads to it.
struct Job<S> {
    entry: Entry<S>,
    /// Indices of the initial state and of the actions up to the entry's parent.
    prefix: Vec<u32>,
}

/// The jobs waiting for a thread.
struct Pool<S> {
    inner: Mutex<PoolInner<S>>,
    work_available: Condvar,
    /// How many threads are waiting for work; read on every expansion, written rarely.
    hungry: AtomicUsize,
    threads: usize,
}

struct PoolInner<S> {
    jobs: Vec<Job<S>>,
    waiting: usize,
    closed: bool,
}

impl<S> Pool<S> {
    fn lock(&self) -> MutexGuard<'_, PoolInner<S>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next job, or `None` once the search is over.
    fn take(&self) -> Option<Job<S>> {
        let mut inner = self.lock();
        loop {
            if inner.closed {
                return None;
            }
            if let Some(job) = inner.jobs.pop() {
                return Some(job);
            }
            inner.waiting += 1;
            if inner.waiting == self.threads {
                // Everyone is idle and nothing is left: the space is exhausted.
                inner.closed = true;
                self.work_available.notify_all();
                return None;
            }
            self.hungry.store(inner.waiting, Ordering::Relaxed);
            inner = self
                .work_available
                .wait(inner)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            inner.waiting -= 1;
            self.hungry.store(inner.waiting, Ordering::Relaxed);
        }
    }

    fn push(&self, jobs: impl IntoIterator<Item = Job<S>>) {
        let mut inner = self.lock();
        inner.jobs.extend(jobs);
        self.work_available.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work_available.notify_all();
    }

    /// Hands the bottom half of `stack` to idle threads, if any are idle.
    fn share(&self, stack: &mut Vec<Entry<S>>, path: &[u32]) {
        if self.hungry.load(Ordering::Relaxed) == 0 || stack.len() < 2 {
            return;
        }
        let count = stack.len() / 2;
        let jobs: Vec<Job<S>> = stack
            .drain(..count)
            .map(|entry| Job {
                prefix: path[..entry.depth as usize].to_vec(),
                entry,
            })
            .collect();
        self.push(jobs);
    }
}

/// Explores every state reachable within the limits.
pub(crate) fn explore<M: Model>(search: &Search<'_, M>) -> Found {
    let visited = FingerprintTable::<()>::new();
    let pool = Pool {
        inner: Mutex::new(PoolInner {
            jobs: Vec::new(),
            waiting: 0,
            closed: false,
        }),
        work_available: Condvar::new(),
        hungry: AtomicUsize::new(0),
        threads: search.threads,
    };
    let mut found = Found {
        violation: None,
        goals: Vec::new(),
    };
    let mut generated = 0;
    let mut unique = 0;
    let mut roots = Vec::new();
    for (index, state) in search.model.init_states().into_iter().enumerate() {
        generated += 1;
        if !visited.insert(fingerprint(&state), ()) {
            continue;
        }
        unique += 1;
        let index = index as u32;
        let trail = || Trail::Indices(vec![index]);
        if let Evaluation::Broken(property) = search.evaluate(&state, &mut found.goals, trail) {
            found.violation = Some((property, trail()));
            search.flush(generated, unique, 0);
            return found;
        }
        roots.push(Job {
            entry: Entry {
                state,
                depth: 0,
                index,
            },
            prefix: Vec::new(),
        });
    }
    search.flush(generated, unique, 0);
    // The stack is a LIFO: push the roots reversed so the first initial state goes first.
    roots.reverse();
    pool.push(roots);
    let results: Vec<Found> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..search.threads)
            .map(|_| scope.spawn(|| work(search, &visited, &pool)))
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a checker thread panicked"))
            .collect()
    });
    for result in results {
        found.goals.extend(result.goals);
        if found.violation.is_none() {
            found.violation = result.violation;
        }
    }
    found
}

/// One thread's share of the search.
fn work<M: Model>(
    search: &Search<'_, M>,
    visited: &FingerprintTable<()>,
    pool: &Pool<M::State>,
) -> Found {
    let model = search.model;
    let max_depth = search
        .max_depth
        .map_or(u32::MAX, |depth| depth.min(u32::MAX as usize) as u32);
    let mut found = Found {
        violation: None,
        goals: Vec::new(),
    };
    let mut stack: Vec<Entry<M::State>> = Vec::new();
    let mut path: Vec<u32> = Vec::new();
    let mut actions = Vec::new();
    let mut successors: Vec<(u32, u64, M::State)> = Vec::new();
    // Fingerprints this thread looked up lately, one per slot, newest wins: every key here
    // is in the shared table already, so a hit is a duplicate found without the lock or
    // the cache miss. Depth-first search meets most duplicates soon after their first
    // visit (two orders of the same independent actions), so most lookups end here.
    let mut recent = vec![0u64; 1 << RECENT_BITS];
    let mut generated = 0;
    let mut unique = 0;
    let mut deepest = 0;
    while let Some(job) = pool.take() {
        path.clear();
        path.extend_from_slice(&job.prefix);
        stack.push(job.entry);
        while let Some(entry) = stack.pop() {
            path.truncate(entry.depth as usize);
            path.push(entry.index);
            if model.prune(&entry.state) {
                continue;
            }
            model.actions(&entry.state, &mut actions);
            if entry.depth >= max_depth {
                if !actions.is_empty() {
                    search.depth_bounded.store(true, Ordering::Relaxed);
                }
                actions.clear();
                continue;
            }
            let depth = entry.depth + 1;
            // Every successor first, each slot prefetched, then the lookups: the table is
            // far larger than the caches, and this way the misses overlap.
            for (index, action) in actions.drain(..).enumerate() {
                let Some(next) = model.next_state(&entry.state, action) else {
                    continue;
                };
                let key = fingerprint(&next);
                let slot = &mut recent[(key >> RECENT_SHIFT) as usize];
                if *slot == key {
                    generated += 1;
                    continue;
                }
                *slot = key;
                visited.prefetch(key);
                successors.push((index as u32, key, next));
            }
            for (index, key, next) in successors.drain(..) {
                generated += 1;
                if !visited.insert(key, ()) {
                    continue;
                }
                unique += 1;
                let trail = || {
                    let mut indices = path.clone();
                    indices.push(index);
                    Trail::Indices(indices)
                };
                if let Evaluation::Broken(property) =
                    search.evaluate(&next, &mut found.goals, trail)
                {
                    found.violation = Some((property, trail()));
                    search.request_stop();
                }
                stack.push(Entry {
                    state: next,
                    depth,
                    index,
                });
            }
            deepest = deepest.max(stack.last().map_or(0, |entry| entry.depth as usize));
            if found.violation.is_some() {
                break;
            }
            if generated >= FLUSH_INTERVAL_STATES {
                let stop = search.flush(generated, unique, deepest);
                (generated, unique) = (0, 0);
                if stop {
                    break;
                }
            }
            pool.share(&mut stack, &path);
        }
        if search.stopped() {
            pool.close();
            stack.clear();
        }
    }
    search.flush(generated, unique, deepest);
    found
}
