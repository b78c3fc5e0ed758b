//! The Wing–Gong/Lowe (WGL) search for a linearization of one independent slice of a history.
//!
//! Interim: the full checker (issue 3) replaces this with a faster search and more models. The
//! search is exact: it answers "linearizable" only if it found a linearization, and "not
//! linearizable" only after ruling out every order; when it would need more than its budget of
//! states it says so instead of guessing.
//!
//! The algorithm is Lowe's "just-in-time linearization" refinement of Wing and Gong's (G. Lowe,
//! *Testing for linearizability*, 2017), the one Knossos and Porcupine use: the history's invoke
//! and completion entries sit in one doubly linked list in real-time order. Walking it from the
//! front, an invoke entry is a candidate to linearize next; linearizing it applies it to the
//! sequential specification and lifts its two entries out of the list. Reaching a completion entry
//! means that operation must have been linearized already, so the search backtracks. Every
//! (set of linearized operations, specification state) pair is explored at most once.
//!
//! One reduction on top: a read that real time allows next and that fits the current state is
//! linearized at once, and no alternative to it is tried. That loses nothing: in any linearization
//! from that point, moving the read to the front changes no state and breaks no real-time order,
//! and it stops concurrent reads of one value from multiplying the configurations by every subset
//! of them.

use std::collections::HashSet;
use std::hash::Hash;
use std::mem;

/// A sequential object: the reference behaviour a concurrent history must be explainable by.
pub(crate) trait SequentialSpecification {
    /// The object's state; hashed to remember which configurations were explored.
    type State: Clone + Eq + Hash;
    /// One operation with its observed result.
    type Operation;

    /// The state before any operation.
    fn initial_state(&self) -> Self::State;

    /// The state after `operation`, or `None` if its observed result is impossible in `state`.
    fn step(&self, state: &Self::State, operation: &Self::Operation) -> Option<Self::State>;

    /// Whether `operation` never changes the state (a read): the search then linearizes it as
    /// soon as it fits, without trying alternatives.
    fn is_read_only(&self, operation: &Self::Operation) -> bool;
}

/// An operation with its place in real time, as positions in the history's event order.
#[derive(Debug, Clone)]
pub(crate) struct TimedOperation<O> {
    /// The operation and its observed result.
    pub operation: O,
    /// Position of its invoke event.
    pub invoke_position: usize,
    /// Position of its completion; `None` if it may take effect at any time after its invoke, or
    /// never (an `info` or missing completion).
    pub complete_position: Option<usize>,
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
        /// Indices of the operations that were candidates to follow it, none of which worked.
        stuck: Vec<usize>,
    },
    /// The search gave up after exploring its budget of states.
    BudgetExhausted {
        /// How many states it explored.
        states_explored: u64,
    },
}

/// Marks the end of the entry list.
const NONE: usize = usize::MAX;

/// Entry 0 is the list's head, a sentinel that never leaves the list.
const HEAD: usize = 0;

/// One entry of the real-time list: an operation's invoke or its completion.
#[derive(Debug, Clone, Copy)]
enum Entry {
    /// The list head.
    Head,
    /// The invoke of operation `.0`.
    Invoke(usize),
    /// The completion of operation `.0`.
    Complete(usize),
}

/// The doubly linked list of entries, in arrays so that lifting and restoring are O(1).
struct EntryList {
    /// What each entry is.
    entries: Vec<Entry>,
    /// The next entry, or `NONE`.
    next: Vec<usize>,
    /// The previous entry; `NONE` only for the head.
    previous: Vec<usize>,
    /// Each operation's invoke entry.
    invoke_entry: Vec<usize>,
    /// Each operation's completion entry, if it has one.
    complete_entry: Vec<Option<usize>>,
}

impl EntryList {
    /// Builds the list of all operations' entries in event order.
    fn new<O>(operations: &[TimedOperation<O>]) -> EntryList {
        let mut positioned: Vec<(usize, Entry)> = Vec::with_capacity(operations.len() * 2);
        for (index, operation) in operations.iter().enumerate() {
            positioned.push((operation.invoke_position, Entry::Invoke(index)));
            if let Some(position) = operation.complete_position {
                assert!(
                    position > operation.invoke_position,
                    "operation {index} completes at {position}, not after its invoke at {}",
                    operation.invoke_position
                );
                positioned.push((position, Entry::Complete(index)));
            }
        }
        positioned.sort_by_key(|(position, _)| *position);
        let mut entries = Vec::with_capacity(positioned.len() + 1);
        entries.push(Entry::Head);
        entries.extend(positioned.iter().map(|(_, entry)| *entry));
        let count = entries.len();
        let next = (0..count)
            .map(|entry| if entry + 1 < count { entry + 1 } else { NONE })
            .collect();
        let previous = (0..count)
            .map(|entry| if entry == HEAD { NONE } else { entry - 1 })
            .collect();
        let mut invoke_entry = vec![NONE; operations.len()];
        let mut complete_entry = vec![None; operations.len()];
        for (entry, kind) in entries.iter().enumerate() {
            match *kind {
                Entry::Head => {}
                Entry::Invoke(operation) => invoke_entry[operation] = entry,
                Entry::Complete(operation) => complete_entry[operation] = Some(entry),
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

    /// Unlinks one entry; its own links stay so that `restore` can put it back.
    fn unlink(&mut self, entry: usize) {
        let (previous, next) = (self.previous[entry], self.next[entry]);
        self.next[previous] = next;
        if next != NONE {
            self.previous[next] = previous;
        }
    }

    /// Relinks an entry removed by `unlink`; restorations must undo removals in reverse order.
    fn relink(&mut self, entry: usize) {
        let (previous, next) = (self.previous[entry], self.next[entry]);
        self.next[previous] = entry;
        if next != NONE {
            self.previous[next] = entry;
        }
    }

    /// Removes an operation's entries: it has been linearized.
    fn lift(&mut self, operation: usize) {
        self.unlink(self.invoke_entry[operation]);
        if let Some(entry) = self.complete_entry[operation] {
            self.unlink(entry);
        }
    }

    /// Puts back the entries of the most recently lifted operation.
    fn unlift(&mut self, operation: usize) {
        if let Some(entry) = self.complete_entry[operation] {
            self.relink(entry);
        }
        self.relink(self.invoke_entry[operation]);
    }
}

/// A set of operation indices, hashed as part of the explored-configuration cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct OperationSet {
    /// Bit `i % 64` of word `i / 64` is set when operation `i` is in the set.
    words: Box<[u64]>,
}

impl OperationSet {
    /// The empty set over `count` operations.
    fn with_capacity(count: usize) -> OperationSet {
        OperationSet {
            words: vec![0; count.div_ceil(64)].into_boxed_slice(),
        }
    }

    /// Adds an operation.
    fn insert(&mut self, operation: usize) {
        self.words[operation / 64] |= 1 << (operation % 64);
    }

    /// Removes an operation.
    fn remove(&mut self, operation: usize) {
        self.words[operation / 64] &= !(1 << (operation % 64));
    }
}

/// One linearized operation on the search stack.
struct Step<State> {
    /// The operation.
    operation: usize,
    /// The state before it, restored on backtracking.
    previous_state: State,
    /// Whether it was a read linearized without trying alternatives, so that backtracking over it
    /// also abandons the configuration before it.
    forced: bool,
}

/// A search in progress: where it is (the linearized operations and the resulting state) and what
/// it has explored.
struct Search<'a, S: SequentialSpecification> {
    /// The sequential object.
    specification: &'a S,
    /// All operations being linearized.
    operations: &'a [TimedOperation<S::Operation>],
    /// The entries of the operations not linearized yet.
    list: EntryList,
    /// The operations linearized so far.
    linearized: OperationSet,
    /// The state after them.
    state: S::State,
    /// The operations linearized so far, in order.
    stack: Vec<Step<S::State>>,
    /// How many operations with a completion are linearized.
    required_linearized: usize,
    /// Every (linearized set, state) configuration entered so far.
    explored: HashSet<(OperationSet, S::State)>,
    /// The deepest stack seen, as operation indices.
    longest_prefix: Vec<usize>,
}

/// What happened when the search tried to linearize an operation next.
enum Attempt {
    /// It moved to a configuration never seen before.
    Entered,
    /// That configuration was explored already (and led nowhere).
    AlreadyExplored,
    /// Entering it would exceed the budget.
    OverBudget,
}

impl<S: SequentialSpecification> Search<'_, S> {
    /// A read among the operations real time allows next that fits the current state.
    fn fitting_read(&self) -> Option<(usize, S::State)> {
        let mut entry = self.list.next[HEAD];
        while entry != NONE {
            let Entry::Invoke(operation) = self.list.entries[entry] else {
                return None;
            };
            let command = &self.operations[operation].operation;
            if self.specification.is_read_only(command)
                && let Some(next_state) = self.specification.step(&self.state, command)
            {
                return Some((operation, next_state));
            }
            entry = self.list.next[entry];
        }
        None
    }

    /// Linearizes `operation` next, leading to `next_state`, unless that configuration was seen.
    fn enter(
        &mut self,
        operation: usize,
        next_state: S::State,
        forced: bool,
        max_states: u64,
    ) -> Attempt {
        self.linearized.insert(operation);
        let configuration = (mem::take(&mut self.linearized), next_state);
        if self.explored.contains(&configuration) {
            self.linearized = configuration.0;
            self.linearized.remove(operation);
            return Attempt::AlreadyExplored;
        }
        if self.states_explored() >= max_states {
            self.linearized = configuration.0;
            self.linearized.remove(operation);
            return Attempt::OverBudget;
        }
        let (linearized, next_state) = configuration;
        self.explored
            .insert((linearized.clone(), next_state.clone()));
        self.linearized = linearized;
        let previous_state = mem::replace(&mut self.state, next_state);
        self.stack.push(Step {
            operation,
            previous_state,
            forced,
        });
        if self.operations[operation].complete_position.is_some() {
            self.required_linearized += 1;
        }
        self.list.lift(operation);
        if self.stack.len() > self.longest_prefix.len() {
            self.longest_prefix = self.stack.iter().map(|step| step.operation).collect();
        }
        Attempt::Entered
    }

    /// Undoes the last linearized operation, returning it and whether it was forced.
    fn undo(&mut self) -> Option<(usize, bool)> {
        let step = self.stack.pop()?;
        self.linearized.remove(step.operation);
        if self.operations[step.operation].complete_position.is_some() {
            self.required_linearized -= 1;
        }
        self.list.unlift(step.operation);
        self.state = step.previous_state;
        Some((step.operation, step.forced))
    }

    /// How many configurations were entered.
    fn states_explored(&self) -> u64 {
        u64::try_from(self.explored.len()).unwrap_or(u64::MAX)
    }
}

/// Searches for a linearization of `operations` under `specification`, exploring at most
/// `max_states` configurations.
pub(crate) fn search<S: SequentialSpecification>(
    specification: &S,
    operations: &[TimedOperation<S::Operation>],
    max_states: u64,
) -> SearchOutcome {
    // Operations without a completion may be left out, so the search is done once every operation
    // with a completion is linearized: the rest are placed after it, or never take effect.
    let required_total = operations
        .iter()
        .filter(|operation| operation.complete_position.is_some())
        .count();
    let mut progress = Search {
        specification,
        operations,
        list: EntryList::new(operations),
        linearized: OperationSet::with_capacity(operations.len()),
        state: specification.initial_state(),
        stack: Vec::new(),
        required_linearized: 0,
        explored: HashSet::new(),
        longest_prefix: Vec::new(),
    };
    // The entry the walk looks at next; `None` means a configuration was just entered.
    let mut entry: Option<usize> = None;
    while progress.required_linearized < required_total {
        let mut backtrack = false;
        match entry {
            None => {
                // A read that fits can go next without trying anything else: in any
                // linearization from here, moving it to the front changes no state and breaks
                // no real-time order (nothing unlinearized completed before it was invoked).
                if let Some((read, next_state)) = progress.fitting_read() {
                    match progress.enter(read, next_state, true, max_states) {
                        Attempt::Entered => continue,
                        Attempt::AlreadyExplored => backtrack = true,
                        Attempt::OverBudget => return over_budget(&progress),
                    }
                } else {
                    entry = Some(progress.list.next[HEAD]);
                }
            }
            Some(current) => {
                // An unlinearized operation with a completion has its completion entry in the
                // list, and the walk backtracks there, so it cannot run off the end.
                assert!(
                    current != NONE,
                    "linearization search walked past the last entry"
                );
                match progress.list.entries[current] {
                    Entry::Head => unreachable!("the head entry is never after another entry"),
                    Entry::Invoke(operation) => {
                        let command = &operations[operation].operation;
                        let attempt =
                            specification
                                .step(&progress.state, command)
                                .map(|next_state| {
                                    progress.enter(operation, next_state, false, max_states)
                                });
                        match attempt {
                            Some(Attempt::Entered) => entry = None,
                            Some(Attempt::OverBudget) => return over_budget(&progress),
                            Some(Attempt::AlreadyExplored) | None => {
                                entry = Some(progress.list.next[current]);
                            }
                        }
                    }
                    Entry::Complete(_) => backtrack = true,
                }
            }
        }
        if backtrack {
            // Abandon the current configuration, and with it every configuration whose only
            // move was a forced read; resume the walk after the first real choice.
            loop {
                let Some((operation, forced)) = progress.undo() else {
                    let stuck = candidates_after(operations, &progress.longest_prefix);
                    return SearchOutcome::NotLinearizable {
                        longest_prefix: progress.longest_prefix,
                        stuck,
                    };
                };
                if !forced {
                    entry = Some(progress.list.next[progress.list.invoke_entry[operation]]);
                    break;
                }
            }
        }
    }
    SearchOutcome::Linearizable
}

/// The outcome for a search that ran out of budget.
fn over_budget<S: SequentialSpecification>(progress: &Search<'_, S>) -> SearchOutcome {
    SearchOutcome::BudgetExhausted {
        states_explored: progress.states_explored(),
    }
}

/// The operations that could be linearized right after `prefix` as far as real time goes: those
/// not in it that were invoked before the earliest completion among those not in it.
fn candidates_after<O>(operations: &[TimedOperation<O>], prefix: &[usize]) -> Vec<usize> {
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

    #[derive(Debug, Clone, Copy)]
    enum RegisterOperation {
        Write(u8),
        Read(u8),
    }

    impl SequentialSpecification for Register {
        type State = u8;
        type Operation = RegisterOperation;

        fn initial_state(&self) -> u8 {
            0
        }

        fn step(&self, state: &u8, operation: &RegisterOperation) -> Option<u8> {
            match *operation {
                RegisterOperation::Write(value) => Some(value),
                RegisterOperation::Read(value) => (value == *state).then_some(*state),
            }
        }

        fn is_read_only(&self, operation: &RegisterOperation) -> bool {
            matches!(operation, RegisterOperation::Read(_))
        }
    }

    fn timed(
        operation: RegisterOperation,
        invoke_position: usize,
        complete_position: Option<usize>,
    ) -> TimedOperation<RegisterOperation> {
        TimedOperation {
            operation,
            invoke_position,
            complete_position,
        }
    }

    use RegisterOperation::{Read, Write};

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(search(&Register, &[], 0), SearchOutcome::Linearizable);
    }

    #[test]
    fn overlapping_operations_are_reordered() {
        // Read(1) is invoked first but must be ordered after the overlapping Write(1).
        let operations = [timed(Read(1), 0, Some(3)), timed(Write(1), 1, Some(2))];
        assert_eq!(
            search(&Register, &operations, 10),
            SearchOutcome::Linearizable
        );
    }

    #[test]
    fn real_time_order_is_respected() {
        let operations = [timed(Read(1), 0, Some(1)), timed(Write(1), 2, Some(3))];
        assert_eq!(
            search(&Register, &operations, 10),
            SearchOutcome::NotLinearizable {
                longest_prefix: vec![],
                stuck: vec![0],
            }
        );
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
            search(&Register, &operations, 100),
            SearchOutcome::NotLinearizable {
                longest_prefix: vec![0, 1, 2],
                stuck: vec![3],
            }
        );
    }

    #[test]
    fn exhausting_the_budget_is_never_a_pass() {
        let operations = [timed(Write(1), 0, Some(1)), timed(Read(1), 2, Some(3))];
        assert_eq!(
            search(&Register, &operations, 1),
            SearchOutcome::BudgetExhausted { states_explored: 1 }
        );
        assert_eq!(
            search(&Register, &operations, 2),
            SearchOutcome::Linearizable
        );
    }
}
