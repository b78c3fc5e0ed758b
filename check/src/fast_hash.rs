//! A small, fast hasher for the checker's own tables, and value interning built on it.
//!
//! Why not std's SipHash: the search hashes millions of small keys (value ids, short strings,
//! configurations), and SipHash's resistance to chosen-key flooding buys nothing for a checker
//! reading a history it was handed; it only costs time. This is the multiply-and-rotate scheme of
//! rustc's `FxHasher` (from Firefox), a few lines written here instead of a dependency. Its low
//! bits are weak, so tables that index by low bits pass the result through [`finalize`] first.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// The multiplier of the rotate-xor-multiply step (the one rustc's `FxHasher` uses).
const MULTIPLIER: u64 = 0x517c_c1b7_2722_0a95;

/// A non-cryptographic hasher for small keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher {
    /// The hash so far.
    hash: u64,
}

impl FastHasher {
    /// Mixes one word into the hash.
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let remainder = chunks.remainder();
        if !remainder.is_empty() {
            let mut word = [0u8; 8];
            word[..remainder.len()].copy_from_slice(remainder);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` hashed with [`FastHasher`].
pub(crate) type FastHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Hashes one value with [`FastHasher`].
pub(crate) fn hash_one<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = FastHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// MurmurHash3's 64-bit finalizer: spreads every input bit over every output bit, so that the
/// low bits can index a table.
pub(crate) fn finalize(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// A pseudo-random word per index (SplitMix64 of the index): the Zobrist keys that let a set's
/// hash be updated in O(1) as members come and go.
pub(crate) fn zobrist_key(index: usize) -> u64 {
    finalize(
        (index as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

/// Gives each distinct string a small id, so that states hold ids and compare in one instruction.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    /// The string of each id.
    strings: Vec<Box<str>>,
    /// The id of each string.
    ids: FastHashMap<Box<str>, u32>,
}

impl Interner {
    /// The id of `text`, assigning the next one if it is new.
    pub(crate) fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = u32::try_from(self.strings.len()).expect("fewer than 2^32 distinct values");
        self.strings.push(Box::from(text));
        self.ids.insert(Box::from(text), id);
        id
    }

    /// The string of an id handed out by `intern`.
    pub(crate) fn resolve(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_differ_for_different_lengths_and_contents() {
        assert_ne!(hash_one("a"), hash_one("b"));
        assert_ne!(hash_one("abcdefgh"), hash_one("abcdefgh\0"));
        assert_eq!(hash_one(&(1u32, 2u64)), hash_one(&(1u32, 2u64)));
        assert_ne!(finalize(1), finalize(2));
        assert_ne!(zobrist_key(0), zobrist_key(1));
        assert_ne!(zobrist_key(0), 0);
    }

    #[test]
    fn interning_is_stable_and_resolves_back() {
        let mut interner = Interner::default();
        let a = interner.intern("a");
        let b = interner.intern("b");
        assert_ne!(a, b);
        assert_eq!(interner.intern("a"), a);
        assert_eq!(interner.resolve(b), "b");
    }
}
