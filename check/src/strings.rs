//! Interned strings that can be appended to without being built.
//!
//! A key-value history appends to the same keys over and over; a search tries those appends in
//! many orders, and each order makes a different string, often kilobytes long. Building each one
//! (allocate, copy, hash, intern) dominated the search. Here a string is an id: either a leaf
//! (a string that appears in the history) or a concatenation of two ids, with the length and a
//! polynomial hash of the whole string kept beside it. The hash of a concatenation follows from
//! its parts in O(1), so appending costs a table lookup and no copy. Equal strings must get equal
//! ids (states compare by id), so a new concatenation whose (hash, length) matches an existing id
//! is compared character by character before it reuses that id: the hash only rules matches out,
//! it never rules them in, and the result stays exact.

use crate::fast_hash::FastHashMap;

/// The modulus of the polynomial hash: the Mersenne prime 2^61 - 1, so products reduce cheaply.
const MODULUS: u64 = (1 << 61) - 1;

/// The polynomial hash's base.
const BASE: u64 = 0x1f3d_5b79_a2c4_e681 % MODULUS;

/// No id: the end of a collision chain.
const NO_ID: u32 = u32::MAX;

/// How an id's string is made.
#[derive(Debug, Clone, Copy)]
enum Node {
    /// The `n`th leaf string.
    Leaf(u32),
    /// The string of one id followed by the string of another.
    Concat(u32, u32),
}

/// A set of strings, each with a small id; id 0 is reserved for "no string" (an absent key).
#[derive(Debug)]
pub(crate) struct Strings {
    /// The leaf strings.
    leaves: Vec<Box<str>>,
    /// How each id's string is made (index = id - 1).
    nodes: Vec<Node>,
    /// Each id's length in bytes.
    lengths: Vec<u64>,
    /// Each id's polynomial hash.
    hashes: Vec<u64>,
    /// BASE^length of each id, to extend hashes.
    powers: Vec<u64>,
    /// The first id with each (hash, length).
    first_by_hash: FastHashMap<(u64, u64), u32>,
    /// The next id with the same (hash, length) as this one (a different string), or `NO_ID`.
    collision_next: Vec<u32>,
    /// (prefix id, suffix id) -> the id of their concatenation.
    appended: FastHashMap<(u32, u32), u32>,
}

impl Default for Strings {
    fn default() -> Strings {
        Strings::new()
    }
}

impl Strings {
    /// No strings yet.
    pub(crate) fn new() -> Strings {
        Strings {
            leaves: Vec::new(),
            nodes: Vec::new(),
            lengths: Vec::new(),
            hashes: Vec::new(),
            powers: Vec::new(),
            first_by_hash: FastHashMap::default(),
            collision_next: Vec::new(),
            appended: FastHashMap::default(),
        }
    }

    /// The id of `text` (at least 1).
    pub(crate) fn intern(&mut self, text: &str) -> u32 {
        let (hash, power) = text.bytes().fold((0u64, 1u64), |(hash, power), byte| {
            (
                add(multiply(hash, BASE), u64::from(byte) + 1),
                multiply(power, BASE),
            )
        });
        let length = text.len() as u64;
        if let Some(id) = self.find(hash, length, |strings, id| strings.equals(id, text)) {
            return id;
        }
        let leaf = u32::try_from(self.leaves.len()).expect("fewer than 2^32 strings");
        self.leaves.push(Box::from(text));
        self.add_id(Node::Leaf(leaf), hash, length, power)
    }

    /// The id of the string of `prefix` followed by that of `suffix`; `prefix` may be 0 (no
    /// string), which counts as empty.
    pub(crate) fn append(&mut self, prefix: u32, suffix: u32) -> u32 {
        if prefix == 0 {
            return suffix;
        }
        if self.length(suffix) == 0 {
            return prefix;
        }
        if let Some(&id) = self.appended.get(&(prefix, suffix)) {
            return id;
        }
        let (p, s) = ((prefix - 1) as usize, (suffix - 1) as usize);
        let hash = add(multiply(self.hashes[p], self.powers[s]), self.hashes[s]);
        let length = self.lengths[p] + self.lengths[s];
        let power = multiply(self.powers[p], self.powers[s]);
        let id = match self.find(hash, length, |strings, id| {
            strings.to_string(id) == strings.to_string(prefix) + &strings.to_string(suffix)
        }) {
            Some(id) => id,
            None => self.add_id(Node::Concat(prefix, suffix), hash, length, power),
        };
        self.appended.insert((prefix, suffix), id);
        id
    }

    /// The string of an id; `None` for id 0.
    pub(crate) fn resolve(&self, id: u32) -> Option<String> {
        (id != 0).then(|| self.to_string(id))
    }

    /// The length of an id's string (0 for id 0).
    fn length(&self, id: u32) -> u64 {
        id.checked_sub(1)
            .map_or(0, |index| self.lengths[index as usize])
    }

    /// The id among those with (hash, length) for which `same` holds.
    fn find(&self, hash: u64, length: u64, same: impl Fn(&Strings, u32) -> bool) -> Option<u32> {
        let mut id = *self.first_by_hash.get(&(hash, length))?;
        while id != NO_ID {
            if same(self, id) {
                return Some(id);
            }
            id = self.collision_next[(id - 1) as usize];
        }
        None
    }

    /// Adds a new id.
    fn add_id(&mut self, node: Node, hash: u64, length: u64, power: u64) -> u32 {
        let id = u32::try_from(self.nodes.len() + 1).expect("fewer than 2^32 strings");
        self.nodes.push(node);
        self.lengths.push(length);
        self.hashes.push(hash);
        self.powers.push(power);
        let previous_first = self.first_by_hash.insert((hash, length), id);
        self.collision_next.push(previous_first.unwrap_or(NO_ID));
        id
    }

    /// Whether an id's string is `text`.
    fn equals(&self, id: u32, text: &str) -> bool {
        self.length(id) == text.len() as u64 && self.to_string(id) == text
    }

    /// Builds an id's string (id at least 1).
    fn to_string(&self, id: u32) -> String {
        let mut text = String::with_capacity(self.length(id) as usize);
        // Concatenations nest on both sides, so walk them with an explicit stack rather than
        // recursion, whose depth the history would decide.
        let mut pending = vec![id];
        while let Some(id) = pending.pop() {
            match self.nodes[(id - 1) as usize] {
                Node::Leaf(leaf) => text.push_str(&self.leaves[leaf as usize]),
                Node::Concat(prefix, suffix) => {
                    pending.push(suffix);
                    pending.push(prefix);
                }
            }
        }
        text
    }
}

/// (a + b) mod MODULUS, for a, b < MODULUS.
fn add(a: u64, b: u64) -> u64 {
    let sum = a + b;
    if sum >= MODULUS { sum - MODULUS } else { sum }
}

/// (a * b) mod MODULUS, for a, b < MODULUS.
fn multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    let folded = (product & u128::from(MODULUS)) + (product >> 61);
    let folded = folded as u64;
    if folded >= MODULUS {
        folded - MODULUS
    } else {
        folded
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn appending_reaches_the_id_of_the_equal_leaf() {
        let mut strings = Strings::new();
        let whole = strings.intern("x1y2");
        let x1 = strings.intern("x1");
        let y2 = strings.intern("y2");
        assert_eq!(strings.append(x1, y2), whole);
        assert_eq!(strings.append(0, x1), x1);
        let empty = strings.intern("");
        assert_eq!(strings.append(x1, empty), x1);
        // An empty append to no string makes the empty string, which is a string.
        assert_eq!(strings.append(0, empty), empty);
        assert_eq!(strings.resolve(whole).as_deref(), Some("x1y2"));
        assert_eq!(strings.resolve(0), None);
    }

    #[test]
    fn different_groupings_of_one_string_share_an_id() {
        let mut strings = Strings::new();
        let [a, b, c] = ["a", "bb", "ccc"].map(|text| strings.intern(text));
        let left = {
            let ab = strings.append(a, b);
            strings.append(ab, c)
        };
        let right = {
            let bc = strings.append(b, c);
            strings.append(a, bc)
        };
        assert_eq!(left, right);
        assert_eq!(strings.resolve(left).as_deref(), Some("abbccc"));
        assert_ne!(strings.append(c, a), left);
    }

    #[test]
    fn modular_arithmetic_stays_reduced() {
        assert_eq!(multiply(MODULUS - 1, MODULUS - 1), 1);
        assert_eq!(add(MODULUS - 1, 1), 0);
        assert_eq!(multiply(0, BASE), 0);
    }

    proptest! {
        #[test]
        fn ids_are_equal_exactly_when_strings_are(
            pieces in prop::collection::vec("[ab]{0,3}", 1..8),
            order in prop::collection::vec(any::<prop::sample::Index>(), 1..12),
        ) {
            let mut strings = Strings::new();
            let ids: Vec<u32> = pieces.iter().map(|piece| strings.intern(piece)).collect();
            // Build strings by appending pieces in the given order, remembering each result.
            let mut made: Vec<(u32, String)> = Vec::new();
            let mut current = (0u32, String::new());
            for index in order {
                let piece = index.index(pieces.len());
                current.0 = strings.append(current.0, ids[piece]);
                current.1.push_str(&pieces[piece]);
                made.push(current.clone());
            }
            for (id, text) in &made {
                prop_assert_eq!(strings.resolve(*id), Some(text.clone()));
                prop_assert_eq!(strings.intern(text), *id);
            }
            for (first, first_text) in &made {
                for (second, second_text) in &made {
                    prop_assert_eq!(first == second, first_text == second_text);
                }
            }
        }
    }
}
