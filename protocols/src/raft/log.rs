//! The replicated log as one node holds it: a compacted prefix (the snapshot point) followed
//! by the retained entries. Indexes start at 1; index 0 with term 0 is the empty prefix.

use super::membership::Membership;
use crate::replicated::StateMachine;
use serde::{Deserialize, Serialize};

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Payload<S: StateMachine> {
    /// The entry a new leader appends so that it can commit something of its own term.
    Noop,
    /// A state-machine command.
    Command(S::Command),
    /// A cluster configuration, in effect on a node as soon as its log holds it.
    Config(Membership),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Entry<S: StateMachine> {
    /// The term of the leader that created it.
    pub term: u64,
    /// What it carries.
    pub payload: Payload<S>,
}

/// A log whose entries up to `snapshot_index` were compacted into a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RaftLog<S: StateMachine> {
    snapshot_index: u64,
    snapshot_term: u64,
    entries: Vec<Entry<S>>,
}

impl<S: StateMachine> Default for RaftLog<S> {
    fn default() -> Self {
        RaftLog {
            snapshot_index: 0,
            snapshot_term: 0,
            entries: Vec::new(),
        }
    }
}

impl<S: StateMachine> RaftLog<S> {
    /// The last index covered by the snapshot (0 if nothing was compacted).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// The term of the entry at the snapshot index.
    pub fn snapshot_term(&self) -> u64 {
        self.snapshot_term
    }

    /// The index of the last entry (the snapshot index if no entry is retained).
    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    /// The term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_term, |entry| entry.term)
    }

    /// The term at `index`, if this log still knows it (the snapshot point counts).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    /// The retained entry at `index`.
    pub fn entry(&self, index: u64) -> Option<&Entry<S>> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    /// Retained entries from `from` (at least the first retained index) up to `to`
    /// inclusive.
    pub fn slice(&self, from: u64, to: u64) -> &[Entry<S>] {
        let from = from.max(self.snapshot_index + 1);
        let to = to.min(self.last_index());
        if from > to {
            return &[];
        }
        let start = (from - self.snapshot_index - 1) as usize;
        let end = (to - self.snapshot_index) as usize;
        &self.entries[start..end]
    }

    /// Appends one entry at the end; returns its index.
    pub fn push(&mut self, entry: Entry<S>) -> u64 {
        self.entries.push(entry);
        self.last_index()
    }

    /// Drops every entry at or after `index` (never into the snapshot).
    pub fn truncate_from(&mut self, index: u64) {
        let index = index.max(self.snapshot_index + 1);
        self.entries
            .truncate((index - self.snapshot_index - 1) as usize);
    }

    /// Replaces the log from `first_index` on with `entries` (a record or a leader's
    /// message); entries inside the snapshot are skipped because they are committed and so
    /// already equal. A `first_index` past the end leaves a gap, which a correct caller
    /// never asks for: such entries are ignored.
    pub fn overwrite(&mut self, first_index: u64, entries: &[Entry<S>]) {
        if first_index > self.last_index() + 1 {
            return;
        }
        let skip = (self.snapshot_index + 1).saturating_sub(first_index) as usize;
        if skip >= entries.len() && first_index + (entries.len() as u64) <= self.snapshot_index {
            return;
        }
        let start = first_index + skip as u64;
        self.truncate_from(start);
        self.entries
            .extend_from_slice(&entries[skip.min(entries.len())..]);
    }

    /// The first index of the term of the entry at `index`, at or after the first retained
    /// index (for the conflict hint).
    pub fn first_index_of_term_at(&self, index: u64) -> u64 {
        let Some(term) = self.term(index) else {
            return index;
        };
        let mut first = index;
        while first > self.snapshot_index + 1 && self.term(first - 1) == Some(term) {
            first -= 1;
        }
        first
    }

    /// The last index holding an entry of `term`, if the retained log has one.
    pub fn last_index_of_term(&self, term: u64) -> Option<u64> {
        (self.snapshot_index + 1..=self.last_index())
            .rev()
            .find(|&index| self.term(index) == Some(term))
    }

    /// Compacts every entry up to `index` (which must be retained or the snapshot point)
    /// into the snapshot point.
    pub fn compact_to(&mut self, index: u64) {
        let Some(term) = self.term(index) else {
            return;
        };
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log by a snapshot point at (`index`, `term`) followed by
    /// `entries`.
    pub fn reset(&mut self, index: u64, term: u64, entries: Vec<Entry<S>>) {
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.entries = entries;
    }

    /// True if a candidate whose log ends at (`last_index`, `last_term`) is at least as up
    /// to date as this log (Raft §5.4.1).
    pub fn candidate_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_state::SessionKv;

    fn entry(term: u64) -> Entry<SessionKv> {
        Entry {
            term,
            payload: Payload::Noop,
        }
    }

    #[test]
    fn overwrite_truncates_conflicts_and_skips_the_snapshot() {
        let mut log = RaftLog::<SessionKv>::default();
        log.overwrite(1, &[entry(1), entry(1), entry(2)]);
        assert_eq!((log.last_index(), log.last_term()), (3, 2));
        log.overwrite(3, &[entry(3), entry(3)]);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.last_index(), 4);
        log.compact_to(2);
        assert_eq!((log.snapshot_index(), log.snapshot_term()), (2, 1));
        assert_eq!(log.term(1), None);
        assert_eq!(log.term(2), Some(1));
        // Entries inside the snapshot are skipped, the rest overwrite.
        log.overwrite(1, &[entry(1), entry(1), entry(4)]);
        assert_eq!((log.last_index(), log.term(3)), (3, Some(4)));
        // A gap is refused.
        log.overwrite(9, &[entry(5)]);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.first_index_of_term_at(3), 3);
        assert_eq!(log.last_index_of_term(4), Some(3));
        assert_eq!(log.slice(1, 10).len(), 1);
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        let mut log = RaftLog::<SessionKv>::default();
        log.overwrite(1, &[entry(1), entry(2)]);
        assert!(log.candidate_up_to_date(1, 3));
        assert!(log.candidate_up_to_date(2, 2));
        assert!(!log.candidate_up_to_date(5, 1));
        assert!(!log.candidate_up_to_date(1, 2));
    }
}
