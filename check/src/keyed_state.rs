//! Compact states for models made of independent cells (a register or a value per key).
//!
//! Every state the search sees is one `u32`, so the explored-configuration table stores four
//! bytes per state and compares states in one instruction, however many keys there are. Values
//! are interned strings; a state over one cell *is* its value's id; a state over several cells is
//! the id of its vector of value ids, hash-consed so that equal vectors get equal ids. That is
//! what keeps a key-value history checked without partitioning (one state holding every key)
//! cheap: a step copies one small vector only when it creates a state never seen before.

use crate::fast_hash::{FastHashMap, Interner};

/// The value id of an absent key (or a register holding nil).
pub(crate) const ABSENT: u32 = 0;

/// Interned values: id 0 is [`ABSENT`], id `n + 1` is the `n`th distinct string.
#[derive(Debug, Default)]
pub(crate) struct Values {
    /// The strings behind ids 1 and up.
    interner: Interner,
}

impl Values {
    /// The id of `text`.
    pub(crate) fn intern(&mut self, text: &str) -> u32 {
        self.interner.intern(text) + 1
    }

    /// The string of a value id, `None` for [`ABSENT`].
    pub(crate) fn resolve(&self, id: u32) -> Option<&str> {
        id.checked_sub(1).map(|index| self.interner.resolve(index))
    }
}

/// The states of `cell_count` cells, each a `u32` id.
#[derive(Debug)]
pub(crate) struct CellStates {
    /// How many cells a state has.
    cell_count: usize,
    /// For several cells: each state's value ids, `cell_count` per state, state after state.
    vectors: Vec<u32>,
    /// For several cells: the state id of each vector of value ids.
    ids: FastHashMap<Box<[u32]>, u32>,
    /// A reusable buffer for building the next vector.
    scratch: Vec<u32>,
}

impl CellStates {
    /// States over `cell_count` cells (at least one); the initial state has every cell absent.
    pub(crate) fn new(cell_count: usize) -> CellStates {
        let cell_count = cell_count.max(1);
        let mut states = CellStates {
            cell_count,
            vectors: Vec::new(),
            ids: FastHashMap::default(),
            scratch: vec![ABSENT; cell_count],
        };
        if cell_count > 1 {
            states
                .vectors
                .extend(std::iter::repeat_n(ABSENT, cell_count));
            states
                .ids
                .insert(vec![ABSENT; cell_count].into_boxed_slice(), 0);
        }
        states
    }

    /// The state with every cell absent.
    pub(crate) fn initial(&self) -> u32 {
        0
    }

    /// How many cells a state has.
    pub(crate) fn cell_count(&self) -> usize {
        self.cell_count
    }

    /// The value id of `cell` in `state`.
    pub(crate) fn get(&self, state: u32, cell: u32) -> u32 {
        if self.cell_count == 1 {
            return state;
        }
        self.vectors[state as usize * self.cell_count + cell as usize]
    }

    /// The state equal to `state` except that `cell` holds `value`.
    pub(crate) fn set(&mut self, state: u32, cell: u32, value: u32) -> u32 {
        if self.cell_count == 1 {
            return value;
        }
        if self.get(state, cell) == value {
            return state;
        }
        let start = state as usize * self.cell_count;
        self.scratch
            .copy_from_slice(&self.vectors[start..start + self.cell_count]);
        self.scratch[cell as usize] = value;
        if let Some(&id) = self.ids.get(self.scratch.as_slice()) {
            return id;
        }
        let id = u32::try_from(self.ids.len()).expect("fewer than 2^32 distinct states");
        self.vectors.extend_from_slice(&self.scratch);
        self.ids.insert(self.scratch.clone().into_boxed_slice(), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cell_states_are_their_values() {
        let mut states = CellStates::new(1);
        assert_eq!(states.initial(), ABSENT);
        assert_eq!(states.set(0, 0, 7), 7);
        assert_eq!(states.get(7, 0), 7);
    }

    #[test]
    fn equal_vectors_get_equal_ids() {
        let mut states = CellStates::new(3);
        let initial = states.initial();
        let a = states.set(initial, 1, 5);
        let b = states.set(a, 2, 6);
        let b_other_order = {
            let c = states.set(initial, 2, 6);
            states.set(c, 1, 5)
        };
        assert_eq!(b, b_other_order);
        assert_ne!(a, b);
        assert_eq!(states.get(b, 0), ABSENT);
        assert_eq!(states.get(b, 1), 5);
        assert_eq!(states.get(b, 2), 6);
        assert_eq!(states.set(b, 1, 5), b);
        assert_eq!(states.set(a, 1, ABSENT), initial);
    }

    #[test]
    fn values_reserve_zero_for_absent() {
        let mut values = Values::default();
        let empty = values.intern("");
        assert_ne!(empty, ABSENT);
        assert_eq!(values.resolve(empty), Some(""));
        assert_eq!(values.resolve(ABSENT), None);
    }
}
