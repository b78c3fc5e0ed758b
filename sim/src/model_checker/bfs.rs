//! Breadth-first search: level by level, so the first violation found has a shortest path.
//!
//! Every unique state's fingerprint maps to its parent's fingerprint; a path is rebuilt by
//! walking the parents back to an initial state and re-executing forward, picking at each
//! step the action whose successor has the next fingerprint. Only the current frontier's
//! states are kept. Threads split each level between them and meet at its end, so a level is
//! complete before the next begins and a violation found at depth `d` has no shorter rival.
//! With several threads which of the shortest counterexamples is reported may vary from run
//! to run; with one it never does.

use super::checker::{Evaluation, FLUSH_INTERVAL_STATES, Found, Search, Trail};
use super::fingerprint::fingerprint;
use super::model::Model;
use super::table::FingerprintTable;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The parent recorded for an initial state (fingerprints are never zero).
const NO_PARENT: u64 = 0;
/// Frontier states a thread claims at a time: large enough that the shared cursor is cheap.
const CLAIM_STATES: usize = 256;

/// The fingerprints from an initial state to `fingerprint`.
fn chain(parents: &FingerprintTable<u64>, fingerprint: u64) -> Trail {
    let mut fingerprints = vec![fingerprint];
    let mut current = fingerprint;
    loop {
        let parent = parents
            .get(current)
            .expect("every visited state has a recorded parent");
        if parent == NO_PARENT {
            break;
        }
        fingerprints.push(parent);
        current = parent;
    }
    fingerprints.reverse();
    Trail::Fingerprints(fingerprints)
}

/// Explores every state reachable within the limits, shallowest first.
pub(crate) fn explore<M: Model>(search: &Search<'_, M>) -> Found {
    let parents = FingerprintTable::<u64>::new();
    let mut found = Found {
        violation: None,
        goals: Vec::new(),
    };
    let mut frontier = Vec::new();
    let mut generated = 0;
    let mut unique = 0;
    for state in search.model.init_states() {
        generated += 1;
        let key = fingerprint(&state);
        if !parents.insert(key, NO_PARENT) {
            continue;
        }
        unique += 1;
        let trail = || chain(&parents, key);
        if let Evaluation::Broken(property) = search.evaluate(&state, &mut found.goals, trail) {
            found.violation = Some((property, trail()));
            search.flush(generated, unique, 0);
            return found;
        }
        frontier.push((state, key));
    }
    search.flush(generated, unique, 0);
    let mut depth = 0;
    while !frontier.is_empty() && !search.stopped() {
        if search.max_depth.is_some_and(|max| depth >= max) {
            let mut actions = Vec::new();
            let expandable = frontier.iter().any(|(state, _)| {
                actions.clear();
                search.model.actions(state, &mut actions);
                !search.model.prune(state) && !actions.is_empty()
            });
            if expandable {
                search.depth_bounded.store(true, Ordering::Relaxed);
            }
            break;
        }
        depth += 1;
        frontier = expand_level(search, &parents, frontier, depth, &mut found);
    }
    found
}

/// Expands every state of `frontier` (at depth `depth - 1`) on the search's threads and
/// returns the new states.
fn expand_level<M: Model>(
    search: &Search<'_, M>,
    parents: &FingerprintTable<u64>,
    frontier: Vec<(M::State, u64)>,
    depth: usize,
    found: &mut Found,
) -> Vec<(M::State, u64)> {
    let cursor = AtomicUsize::new(0);
    let violation = Mutex::new(None);
    let expand = || expand_claims(search, parents, &frontier, &cursor, depth, &violation);
    let results: Vec<Expansion<M::State>> = if search.threads == 1 {
        vec![expand()]
    } else {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..search.threads).map(|_| scope.spawn(expand)).collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("a checker thread panicked"))
                .collect()
        })
    };
    let mut next = Vec::new();
    for (states, goals) in results {
        found.goals.extend(goals);
        if next.is_empty() {
            next = states;
        } else {
            next.extend(states);
        }
    }
    if let Some(broken) = violation
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
    {
        found.violation = Some(broken);
        return Vec::new();
    }
    next
}

/// What a thread's part of a level produced: the new states and the goals reached.
type Expansion<S> = (Vec<(S, u64)>, Vec<(usize, Trail)>);

/// One thread's part of a level: claims frontier states until none are left.
fn expand_claims<M: Model>(
    search: &Search<'_, M>,
    parents: &FingerprintTable<u64>,
    frontier: &[(M::State, u64)],
    cursor: &AtomicUsize,
    depth: usize,
    violation: &Mutex<Option<(usize, Trail)>>,
) -> Expansion<M::State> {
    let model = search.model;
    let mut next = Vec::new();
    let mut goals = Vec::new();
    let mut actions = Vec::new();
    let mut generated = 0;
    let mut unique = 0;
    // The depth reached: this level's, once it has produced a new state.
    let mut reached = 0;
    'claims: loop {
        let start = cursor.fetch_add(CLAIM_STATES, Ordering::Relaxed);
        if start >= frontier.len() || search.stopped() {
            break;
        }
        let end = (start + CLAIM_STATES).min(frontier.len());
        for (state, key) in &frontier[start..end] {
            if model.prune(state) {
                continue;
            }
            model.actions(state, &mut actions);
            for action in actions.drain(..) {
                let Some(next_state) = model.next_state(state, action) else {
                    continue;
                };
                generated += 1;
                let next_key = fingerprint(&next_state);
                if !parents.insert(next_key, *key) {
                    continue;
                }
                unique += 1;
                reached = depth;
                let trail = || chain(parents, next_key);
                if let Evaluation::Broken(property) =
                    search.evaluate(&next_state, &mut goals, trail)
                {
                    let mut slot = violation
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    slot.get_or_insert_with(|| (property, trail()));
                    search.request_stop();
                    break 'claims;
                }
                next.push((next_state, next_key));
            }
            if generated >= FLUSH_INTERVAL_STATES {
                let stop = search.flush(generated, unique, reached);
                (generated, unique) = (0, 0);
                if stop {
                    break 'claims;
                }
            }
        }
    }
    search.flush(generated, unique, reached);
    (next, goals)
}
