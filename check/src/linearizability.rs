//! The Wing–Gong/Lowe (WGL) search for a linearization of one partition of a history.
//!
//! The search is exact: it answers "linearizable" only if it found a linearization, and "not
//! linearizable" only after ruling out every order; when it would need more than its budget it
//! says so instead of guessing.
//!
//! The algorithm is Lowe's "just-in-time linearization" refinement of Wing and Gong's (G. Lowe,
//! *Testing for linearizability*, 2017), the one Knossos and Porcupine use: the history's invoke
//! and completion entries sit in one doubly linked list in real-time order. Walking it from the
//! front, an invoke entry is a candidate to linearize next; linearizing it applies it to the
//! sequential specification and lifts its two entries out of the list. Reaching a completion entry
//! means that operation must have been linearized already, so the search backtracks. Every
//! (set of linearized operations, specification state) configuration is entered at most once.
//!
//! What makes it fast:
//! - the list lives in two `u32` arrays, so lifting and restoring an operation is four stores;
//! - the set of linearized operations is a bitset whose hash is kept up to date in O(1) per
//!   change (a Zobrist hash: the XOR of one random word per member);
//! - explored configurations live in one open-addressing table over flat arrays (the bitsets of
//!   all entries in one `Vec<u64>`), with no allocation per entry;
//! - a read that real time allows next and that fits the current state is linearized at once, and
//!   no alternative to it is tried. That loses nothing: in any linearization from that point,
//!   moving the read to the front changes no state and breaks no real-time order, and it stops
//!   concurrent reads of one value from multiplying the configurations by every subset of them.
//! - operations that may never have taken effect (`info`, or no completion) have no completion
//!   entry: they are optional, and the search is done as soon as every operation that completed
//!   is linearized.

use std::mem;

use crate::fast_hash::{finalize, hash_one, zobrist_key};
use crate::model::SequentialSpecification;

/// An operation with its place in real time, as positions in the history's event order.
#[derive(Debug, Clone)]
pub(crate) struct TimedOperation<I> {
    /// The operation and its observed result.
    pub input: I,
    /// Position of its invoke event.
    pub invoke_position: usize,
    /// Position of its completion; `None` if it may take effect at any time after its invoke, or
    /// never (an `info` or missing completion).
    pub complete_position: Option<usize>,
}

/// The most configurations and bytes one search may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SearchLimits {
    /// The most configurations to enter.
    pub max_states: u64,
    /// The most bytes the explored-configuration table may hold.
    pub max_table_bytes: u64,
}

/// What the search concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SearchOutcome {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists.
    NotLinearizable {
        /// Indices of the operations of the longest linearizable prefix found, in order.
        longest_prefix: Vec<usize>,
        /// Indices of the operations that real time allows right after it, none of which fits.
        stuck: Vec<usize>,
    },
    /// The search gave up: entering one more configuration would exceed a limit.
    BudgetExhausted {
        /// Which limit.
        limit: Limit,
    },
}

/// A limit a search can run into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// [`SearchLimits::max_states`].
    States,
    /// [`SearchLimits::max_table_bytes`].
    Memory,
}

/// Marks "no entry" in the list's links.
const NONE: u32 = u32::MAX;

/// Entry 0 is the list's head, a sentinel that never leaves the list.
const HEAD: u32 = 0;

/// Marks a completion entry in `EntryList::entries` (the rest of the word is the operation).
const COMPLETE_FLAG: u32 = 1 << 31;

/// The most operations one search handles: operation indices must leave room for the flag.
const OPERATIONS_MAX: usize = (COMPLETE_FLAG as usize) - 1;

/// The doubly linked list of entries, in arrays so that lifting and restoring are O(1).
struct EntryList {
    /// Each entry's operation, with `COMPLETE_FLAG` set for a completion (entry 0: the head).
    entries: Vec<u32>,
    /// The next entry, or `NONE`.
    next: Vec<u32>,
    /// The previous entry; `NONE` only for the head.
    previous: Vec<u32>,
    /// Each operation's invoke entry.
    invoke_entry: Vec<u32>,
    /// Each operation's completion entry, or `NONE`.
    complete_entry: Vec<u32>,
}

impl EntryList {
    /// Builds the list of all operations' entries in event order.
    fn new<I>(operations: &[TimedOperation<I>]) -> EntryList {
        assert!(operations.len() <= OPERATIONS_MAX, "too many operations");
        let mut positioned: Vec<(usize, u32)> = Vec::with_capacity(operations.len() * 2);
        for (index, operation) in operations.iter().enumerate() {
            let index = index as u32;
            positioned.push((operation.invoke_position, index));
            if let Some(position) = operation.complete_position {
                assert!(
                    position > operation.invoke_position,
                    "operation {index} completes at {position}, not after its invoke at {}",
                    operation.invoke_position
                );
                positioned.push((position, index | COMPLETE_FLAG));
            }
        }
        positioned.sort_unstable_by_key(|&(position, _)| position);
        let count = positioned.len() + 1;
        let count_u32 = u32::try_from(count).expect("entry count fits in u32");
        let mut entries = Vec::with_capacity(count);
        entries.push(NONE);
        entries.extend(positioned.iter().map(|&(_, entry)| entry));
        let next = (0..count_u32)
            .map(|entry| {
                if entry + 1 < count_u32 {
                    entry + 1
                } else {
                    NONE
                }
            })
            .collect();
        let previous = (0..count_u32)
            .map(|entry| if entry == HEAD { NONE } else { entry - 1 })
            .collect();
        let mut invoke_entry = vec![NONE; operations.len()];
        let mut complete_entry = vec![NONE; operations.len()];
        for (entry, &kind) in entries.iter().enumerate().skip(1) {
            let operation = (kind & !COMPLETE_FLAG) as usize;
            if kind & COMPLETE_FLAG == 0 {
                invoke_entry[operation] = entry as u32;
            } else {
                complete_entry[operation] = entry as u32;
            }
        }
        EntryList {
            entries,
            next,
            previous,
            invoke_entry,
            complete_entry,
        }
    }

    /// Unlinks one entry; its own links stay so that `relink` can put it back.
    fn unlink(&mut self, entry: u32) {
        let (previous, next) = (self.previous[entry as usize], self.next[entry as usize]);
        self.next[previous as usize] = next;
        if next != NONE {
            self.previous[next as usize] = previous;
        }
    }

    /// Relinks an entry removed by `unlink`; relinks must undo unlinks in reverse order.
    fn relink(&mut self, entry: u32) {
        let (previous, next) = (self.previous[entry as usize], self.next[entry as usize]);
        self.next[previous as usize] = entry;
        if next != NONE {
            self.previous[next as usize] = entry;
        }
    }

    /// Removes an operation's entries: it has been linearized.
    fn lift(&mut self, operation: usize) {
        self.unlink(self.invoke_entry[operation]);
        let complete = self.complete_entry[operation];
        if complete != NONE {
            self.unlink(complete);
        }
    }

    /// Puts back the entries of the most recently lifted operation.
    fn unlift(&mut self, operation: usize) {
        let complete = self.complete_entry[operation];
        if complete != NONE {
            self.relink(complete);
        }
        self.relink(self.invoke_entry[operation]);
    }
}

/// Every configuration entered so far: an open-addressing hash table over flat arrays.
struct ExploredTable<S> {
    /// Words per bitset.
    words_per_set: usize,
    /// The bitsets of all entries, `words_per_set` words each, entry after entry.
    sets: Vec<u64>,
    /// The state of each entry.
    states: Vec<S>,
    /// The hash of each entry, kept to reject mismatches fast and to rehash without recomputing.
    hashes: Vec<u64>,
    /// Entry index + 1 per slot; 0 marks an empty slot. The length is a power of two.
    slots: Vec<u32>,
}

/// Where a configuration is, or would go, in the table.
enum Probe {
    /// It is there already.
    Found,
    /// It is not; this empty slot is where it belongs.
    Vacant(usize),
}

/// The table's first size, in slots.
const TABLE_SLOTS_INITIAL: usize = 1 << 10;

impl<S: Eq + Clone> ExploredTable<S> {
    /// An empty table for bitsets of `words_per_set` words.
    fn new(words_per_set: usize) -> ExploredTable<S> {
        ExploredTable {
            words_per_set,
            sets: Vec::new(),
            states: Vec::new(),
            hashes: Vec::new(),
            slots: vec![0; TABLE_SLOTS_INITIAL],
        }
    }

    /// How many configurations it holds.
    fn len(&self) -> usize {
        self.states.len()
    }

    /// Looks for (set, state) with the given hash.
    fn probe(&self, hash: u64, set: &[u64], state: &S) -> Probe {
        let mask = self.slots.len() - 1;
        let mut slot = (hash as usize) & mask;
        loop {
            let occupant = self.slots[slot];
            if occupant == 0 {
                return Probe::Vacant(slot);
            }
            let entry = (occupant - 1) as usize;
            if self.hashes[entry] == hash
                && self.states[entry] == *state
                && self.sets[entry * self.words_per_set..(entry + 1) * self.words_per_set] == *set
            {
                return Probe::Found;
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Inserts (set, state) into the vacant slot `probe` returned for it.
    fn insert(&mut self, slot: usize, hash: u64, set: &[u64], state: &S) {
        let entry = u32::try_from(self.states.len() + 1).expect("fewer than 2^32 configurations");
        self.sets.extend_from_slice(set);
        self.states.push(state.clone());
        self.hashes.push(hash);
        self.slots[slot] = entry;
        // Keep the load under 1/2 so probe sequences stay short.
        if self.states.len() * 2 > self.slots.len() {
            self.grow();
        }
    }

    /// Doubles the slots and re-places every entry.
    fn grow(&mut self) {
        let size = self.slots.len() * 2;
        let mask = size - 1;
        let mut slots = vec![0u32; size];
        for (entry, &hash) in self.hashes.iter().enumerate() {
            let mut slot = (hash as usize) & mask;
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = entry as u32 + 1;
        }
        self.slots = slots;
    }

    /// Bytes the table holds (capacity, not just length: that is what the process pays for).
    fn bytes(&self) -> u64 {
        let bytes = self.sets.capacity() * mem::size_of::<u64>()
            + self.states.capacity() * mem::size_of::<S>()
            + self.hashes.capacity() * mem::size_of::<u64>()
            + self.slots.capacity() * mem::size_of::<u32>();
        bytes as u64
    }

    /// Bytes the table will hold after one more insertion, counting the growth it may trigger.
    fn bytes_after_insert(&self) -> u64 {
        let grow_vec = |length: usize, capacity: usize, element: usize, per_entry: usize| {
            if length + per_entry > capacity {
                (capacity.max(per_entry * 4)) * element
            } else {
                0
            }
        };
        let extra = grow_vec(
            self.sets.len(),
            self.sets.capacity(),
            mem::size_of::<u64>(),
            self.words_per_set,
        ) + grow_vec(
            self.states.len(),
            self.states.capacity(),
            mem::size_of::<S>(),
            1,
        ) + grow_vec(
            self.hashes.len(),
            self.hashes.capacity(),
            mem::size_of::<u64>(),
            1,
        ) + if (self.states.len() + 1) * 2 > self.slots.len() {
            self.slots.len() * 2 * mem::size_of::<u32>()
        } else {
            0
        };
        self.bytes() + extra as u64
    }
}

/// One linearized operation on the search stack.
struct Step<State> {
    /// The operation.
    operation: u32,
    /// Whether it was a read linearized without trying alternatives, so that backtracking over it
    /// also abandons the configuration before it.
    forced: bool,
    /// The state before it, restored on backtracking.
    previous_state: State,
}

/// A search in progress: where it is (the linearized operations and the resulting state) and what
/// it has explored. It can stop at a budget and be resumed with a larger one, losing nothing.
pub(crate) struct Searcher<S: SequentialSpecification> {
    /// The sequential object.
    specification: S,
    /// All operations being linearized.
    operations: Vec<TimedOperation<S::Input>>,
    /// Whether each operation is a read, asked once up front.
    read_only: Vec<bool>,
    /// The entries of the operations not linearized yet.
    list: EntryList,
    /// The operations linearized so far: bit `i % 64` of word `i / 64` for operation `i`.
    linearized: Vec<u64>,
    /// The XOR of the Zobrist keys of the linearized operations.
    linearized_hash: u64,
    /// Each operation's Zobrist key.
    zobrist: Vec<u64>,
    /// The state after the linearized operations.
    state: S::State,
    /// The operations linearized so far, in order.
    stack: Vec<Step<S::State>>,
    /// How many operations with a completion are linearized.
    required_linearized: usize,
    /// How many operations have a completion: the search is done when all are linearized.
    required_total: usize,
    /// Every configuration entered so far.
    explored: ExploredTable<S::State>,
    /// The deepest stack seen, as operation indices.
    longest_prefix: Vec<usize>,
    /// The entry the walk looks at next, unless `fresh`.
    entry: u32,
    /// Whether a configuration was just entered (and the walk starts over from the head).
    fresh: bool,
    /// The limits of the current run.
    limits: SearchLimits,
}

/// What happened when the search tried to linearize an operation next.
enum Attempt {
    /// It moved to a configuration never seen before.
    Entered,
    /// That configuration was explored already (and led nowhere).
    AlreadyExplored,
    /// Entering it would exceed a limit.
    OverBudget(Limit),
}

impl<S: SequentialSpecification> Searcher<S> {
    /// A search for a linearization of `operations` under `specification`.
    pub(crate) fn new(
        mut specification: S,
        operations: Vec<TimedOperation<S::Input>>,
    ) -> Searcher<S> {
        // Operations without a completion may be left out, so the search is done once every
        // operation with a completion is linearized: the rest are placed after it, or never
        // take effect.
        let required_total = operations
            .iter()
            .filter(|operation| operation.complete_position.is_some())
            .count();
        let state = specification.initial_state();
        let read_only = operations
            .iter()
            .map(|operation| specification.is_read_only(&operation.input))
            .collect();
        let words_per_set = operations.len().div_ceil(64).max(1);
        Searcher {
            list: EntryList::new(&operations),
            zobrist: (0..operations.len()).map(zobrist_key).collect(),
            specification,
            operations,
            read_only,
            linearized: vec![0; words_per_set],
            linearized_hash: 0,
            state,
            stack: Vec::new(),
            required_linearized: 0,
            required_total,
            explored: ExploredTable::new(words_per_set),
            longest_prefix: Vec::new(),
            entry: NONE,
            fresh: true,
            limits: SearchLimits {
                max_states: 0,
                max_table_bytes: 0,
            },
        }
    }

    /// The sequential object and the operations, to replay a prefix with after the search.
    pub(crate) fn parts(&mut self) -> (&mut S, &[TimedOperation<S::Input>]) {
        (&mut self.specification, &self.operations)
    }

    /// How many configurations it has entered.
    pub(crate) fn states_explored(&self) -> u64 {
        self.explored.len() as u64
    }

    /// Searches on within `limits`. After `BudgetExhausted` it may be run again with larger
    /// limits and carries on where it stopped; after any other outcome it is done.
    pub(crate) fn run(&mut self, limits: SearchLimits) -> SearchOutcome {
        self.limits = limits;
        while self.required_linearized < self.required_total {
            let mut backtrack = false;
            if self.fresh {
                self.fresh = false;
                // A read that fits can go next without trying anything else: in any
                // linearization from here, moving it to the front changes no state and breaks
                // no real-time order (nothing unlinearized completed before it was invoked).
                if let Some((read, next_state)) = self.fitting_read() {
                    match self.enter(read, next_state, true) {
                        Attempt::Entered => {
                            self.fresh = true;
                            continue;
                        }
                        Attempt::AlreadyExplored => backtrack = true,
                        Attempt::OverBudget(limit) => {
                            // Resuming starts this configuration over.
                            self.fresh = true;
                            return SearchOutcome::BudgetExhausted { limit };
                        }
                    }
                } else {
                    self.entry = self.list.next[HEAD as usize];
                }
            } else {
                // An unlinearized operation with a completion has its completion entry in the
                // list, and the walk backtracks there, so it cannot run off the end.
                assert!(
                    self.entry != NONE,
                    "linearization search walked past the last entry"
                );
                let kind = self.list.entries[self.entry as usize];
                if kind & COMPLETE_FLAG != 0 {
                    backtrack = true;
                } else {
                    let operation = kind as usize;
                    let attempt = if self.read_only[operation] {
                        // A read that fit would have been forced when this configuration was
                        // entered.
                        None
                    } else {
                        self.specification
                            .step(&self.state, &self.operations[operation].input)
                            .map(|next_state| self.enter(operation, next_state, false))
                    };
                    match attempt {
                        Some(Attempt::Entered) => self.fresh = true,
                        // Resuming tries this entry again.
                        Some(Attempt::OverBudget(limit)) => {
                            return SearchOutcome::BudgetExhausted { limit };
                        }
                        Some(Attempt::AlreadyExplored) | None => {
                            self.entry = self.list.next[self.entry as usize];
                        }
                    }
                }
            }
            if backtrack {
                // Abandon the current configuration, and with it every configuration whose
                // only move was a forced read; resume the walk after the first real choice.
                loop {
                    let Some((operation, forced)) = self.undo() else {
                        let stuck = candidates_after(&self.operations, &self.longest_prefix);
                        return SearchOutcome::NotLinearizable {
                            longest_prefix: mem::take(&mut self.longest_prefix),
                            stuck,
                        };
                    };
                    if !forced {
                        self.entry = self.list.next[self.list.invoke_entry[operation] as usize];
                        break;
                    }
                }
            }
        }
        SearchOutcome::Linearizable
    }

    /// A read among the operations real time allows next that fits the current state.
    fn fitting_read(&mut self) -> Option<(usize, S::State)> {
        let mut entry = self.list.next[HEAD as usize];
        while entry != NONE {
            let kind = self.list.entries[entry as usize];
            if kind & COMPLETE_FLAG != 0 {
                return None;
            }
            let operation = kind as usize;
            if self.read_only[operation]
                && let Some(next_state) = self
                    .specification
                    .step(&self.state, &self.operations[operation].input)
            {
                return Some((operation, next_state));
            }
            entry = self.list.next[entry as usize];
        }
        None
    }

    /// Linearizes `operation` next, leading to `next_state`, unless that configuration was seen.
    fn enter(&mut self, operation: usize, next_state: S::State, forced: bool) -> Attempt {
        let word = operation / 64;
        let bit = 1u64 << (operation % 64);
        self.linearized[word] |= bit;
        let set_hash = self.linearized_hash ^ self.zobrist[operation];
        let hash = finalize(set_hash ^ hash_one(&next_state).rotate_left(17));
        let probe = self.explored.probe(hash, &self.linearized, &next_state);
        let slot = match probe {
            Probe::Found => {
                self.linearized[word] &= !bit;
                return Attempt::AlreadyExplored;
            }
            Probe::Vacant(slot) => slot,
        };
        if self.explored.len() as u64 >= self.limits.max_states {
            self.linearized[word] &= !bit;
            return Attempt::OverBudget(Limit::States);
        }
        if self.explored.bytes_after_insert() > self.limits.max_table_bytes {
            self.linearized[word] &= !bit;
            return Attempt::OverBudget(Limit::Memory);
        }
        self.explored
            .insert(slot, hash, &self.linearized, &next_state);
        self.linearized_hash = set_hash;
        let previous_state = mem::replace(&mut self.state, next_state);
        self.stack.push(Step {
            operation: operation as u32,
            forced,
            previous_state,
        });
        if self.operations[operation].complete_position.is_some() {
            self.required_linearized += 1;
        }
        self.list.lift(operation);
        if self.stack.len() > self.longest_prefix.len() {
            self.longest_prefix.clear();
            self.longest_prefix
                .extend(self.stack.iter().map(|step| step.operation as usize));
        }
        Attempt::Entered
    }

    /// Undoes the last linearized operation, returning it and whether it was forced.
    fn undo(&mut self) -> Option<(usize, bool)> {
        let step = self.stack.pop()?;
        let operation = step.operation as usize;
        self.linearized[operation / 64] &= !(1u64 << (operation % 64));
        self.linearized_hash ^= self.zobrist[operation];
        if self.operations[operation].complete_position.is_some() {
            self.required_linearized -= 1;
        }
        self.list.unlift(operation);
        self.state = step.previous_state;
        Some((operation, step.forced))
    }
}

/// The operations that could be linearized right after `prefix` as far as real time goes: those
/// not in it that were invoked before the earliest completion among those not in it.
fn candidates_after<I>(operations: &[TimedOperation<I>], prefix: &[usize]) -> Vec<usize> {
    let mut in_prefix = vec![false; operations.len()];
    for &operation in prefix {
        in_prefix[operation] = true;
    }
    let remaining = || (0..operations.len()).filter(|&operation| !in_prefix[operation]);
    let earliest_completion = remaining()
        .filter_map(|operation| operations[operation].complete_position)
        .min()
        .unwrap_or(usize::MAX);
    let mut candidates: Vec<usize> = remaining()
        .filter(|&operation| operations[operation].invoke_position < earliest_completion)
        .collect();
    candidates.sort_by_key(|&operation| operations[operation].invoke_position);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register of one integer: `Write(v)` sets it, `Read(v)` observes it.
    struct Register;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum RegisterOperation {
        Write(u8),
        Read(u8),
    }

    impl SequentialSpecification for Register {
        type State = u8;
        type Input = RegisterOperation;

        fn initial_state(&mut self) -> u8 {
            0
        }

        fn step(&mut self, state: &u8, operation: &RegisterOperation) -> Option<u8> {
            match *operation {
                RegisterOperation::Write(value) => Some(value),
                RegisterOperation::Read(value) => (value == *state).then_some(*state),
            }
        }

        fn is_read_only(&self, operation: &RegisterOperation) -> bool {
            matches!(operation, RegisterOperation::Read(_))
        }

        fn describe_state(&self, state: &u8) -> String {
            format!("the register {state}")
        }

        fn explain_refusal(&self, state: &u8, _: &RegisterOperation) -> String {
            format!("would read {state}")
        }
    }

    fn timed(
        input: RegisterOperation,
        invoke_position: usize,
        complete_position: Option<usize>,
    ) -> TimedOperation<RegisterOperation> {
        TimedOperation {
            input,
            invoke_position,
            complete_position,
        }
    }

    fn limits(max_states: u64) -> SearchLimits {
        SearchLimits {
            max_states,
            max_table_bytes: u64::MAX,
        }
    }

    fn outcome(operations: &[TimedOperation<RegisterOperation>], max_states: u64) -> SearchOutcome {
        Searcher::new(Register, operations.to_vec()).run(limits(max_states))
    }

    use RegisterOperation::{Read, Write};

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(outcome(&[], 0), SearchOutcome::Linearizable);
    }

    #[test]
    fn overlapping_operations_are_reordered() {
        // Read(1) is invoked first but must be ordered after the overlapping Write(1).
        let operations = [timed(Read(1), 0, Some(3)), timed(Write(1), 1, Some(2))];
        assert_eq!(outcome(&operations, 10), SearchOutcome::Linearizable);
    }

    #[test]
    fn real_time_order_is_respected() {
        let operations = [timed(Read(1), 0, Some(1)), timed(Write(1), 2, Some(3))];
        assert_eq!(
            outcome(&operations, 10),
            SearchOutcome::NotLinearizable {
                longest_prefix: vec![],
                stuck: vec![0],
            }
        );
    }

    #[test]
    fn operations_without_completion_are_optional_and_unordered() {
        // A write that never completed may land after a later read, or never.
        let operations = [
            timed(Write(1), 0, None),
            timed(Read(0), 1, Some(2)),
            timed(Read(1), 3, Some(4)),
        ];
        assert_eq!(outcome(&operations, 10), SearchOutcome::Linearizable);
        let never = [timed(Write(1), 0, None), timed(Read(0), 1, Some(2))];
        assert_eq!(outcome(&never, 10), SearchOutcome::Linearizable);
    }

    #[test]
    fn reports_longest_prefix_and_stuck_candidates() {
        // Write(1) then Write(2) complete; two overlapping reads see 2 then 1.
        let operations = [
            timed(Write(1), 0, Some(1)),
            timed(Write(2), 2, Some(3)),
            timed(Read(2), 4, Some(6)),
            timed(Read(1), 5, Some(7)),
        ];
        assert_eq!(
            outcome(&operations, 100),
            SearchOutcome::NotLinearizable {
                longest_prefix: vec![0, 1, 2],
                stuck: vec![3],
            }
        );
    }

    #[test]
    fn exhausting_the_budget_is_never_a_pass() {
        let operations = vec![timed(Write(1), 0, Some(1)), timed(Read(1), 2, Some(3))];
        let mut searcher = Searcher::new(Register, operations.clone());
        assert_eq!(
            searcher.run(limits(1)),
            SearchOutcome::BudgetExhausted {
                limit: Limit::States
            }
        );
        assert_eq!(searcher.states_explored(), 1);
        assert_eq!(outcome(&operations, 2), SearchOutcome::Linearizable);
        let tiny_memory = SearchLimits {
            max_states: u64::MAX,
            max_table_bytes: 16,
        };
        assert_eq!(
            Searcher::new(Register, operations).run(tiny_memory),
            SearchOutcome::BudgetExhausted {
                limit: Limit::Memory
            }
        );
    }

    #[test]
    fn a_resumed_search_ends_as_an_uninterrupted_one() {
        // Concurrent writes and reads: the search backtracks a lot, so budgets of one state at a
        // time interrupt it at every kind of step.
        let operations = vec![
            timed(Write(1), 0, Some(6)),
            timed(Write(2), 1, Some(7)),
            timed(Read(2), 2, Some(8)),
            timed(Write(3), 3, None),
            timed(Read(1), 4, Some(9)),
            timed(Read(3), 10, Some(11)),
            timed(Read(2), 12, Some(13)),
        ];
        let mut uninterrupted = Searcher::new(Register, operations.clone());
        let whole = uninterrupted.run(limits(u64::MAX));
        assert!(matches!(whole, SearchOutcome::NotLinearizable { .. }));
        let mut searcher = Searcher::new(Register, operations);
        let mut budget = 0;
        let resumed = loop {
            budget += 1;
            match searcher.run(limits(budget)) {
                SearchOutcome::BudgetExhausted { .. } => {}
                other => break other,
            }
        };
        assert_eq!(resumed, whole);
        assert_eq!(searcher.states_explored(), uninterrupted.states_explored());
    }

    #[test]
    fn the_table_grows_and_keeps_every_configuration() {
        // Twelve concurrent writes of distinct values, then a read of a value none wrote: proving
        // that impossible enters thousands of configurations, so the table grows several times.
        let mut operations: Vec<_> = (0..12u8)
            .map(|value| timed(Write(value + 1), usize::from(value), Some(100)))
            .collect();
        operations.push(timed(Read(200), 101, Some(102)));
        let mut searcher = Searcher::new(Register, operations);
        assert!(matches!(
            searcher.run(limits(u64::MAX)),
            SearchOutcome::NotLinearizable { .. }
        ));
        assert!(searcher.states_explored() > TABLE_SLOTS_INITIAL as u64);
    }
}
