//! A concurrent table keyed by fingerprint: the visited set (DFS, random probes) and the
//! parent map (BFS).
//!
//! The table is split into shards by the fingerprint's low bits, each an open-addressing
//! array behind its own mutex. With many more shards than threads two threads rarely want
//! the same shard at once, and a shard grows alone, so growing never stops the world and
//! the transient copy is a thousandth of the table.
//!
//! Memory is what bounds a model checker, so a slot is just the key (plus the value, if any;
//! zero-sized for a set): no control bytes, no cached hash. The key is the 64-bit
//! fingerprint less the 10 bits its shard index already holds, packed into 7 bytes. Capacities are not
//! powers of two: a slot is picked by "fast range" (`key × capacity >> 54`), a shard grows
//! by an eighth when it is 95% full, and shards start at staggered sizes so they do not
//! all grow at once. Load therefore sits between 84% and 95% and averages about 90% over
//! the table, where a power-of-two table (hashbrown, as used by Stateright's `DashSet`)
//! swings between 44% and 88%, all its shards in lockstep. The price of the high load is
//! longer probes when a key is new; duplicates, the great majority of lookups, are found
//! within a cache line or two, and the depth-first search's per-thread cache of recent
//! fingerprints answers most of them before they reach the table at all.
//!
//! A lookup's cache miss is the table's main cost, so [`FingerprintTable::prefetch`] lets
//! the caller start the loads of several lookups at once.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Shards in a table; with 2 threads the chance that both want the same shard is 1/1024.
const SHARD_COUNT: usize = 1 << SHARD_BITS;
/// The fingerprint's low bits that pick its shard. A shard stores only the other 54 bits,
/// so a key fits in 7 bytes and packing loses nothing: the shard index holds the rest.
const SHARD_BITS: u32 = 10;
/// Bytes per stored key: 54 bits of fingerprint, offset by one so that zero marks an empty
/// slot.
const KEY_BYTES: usize = 7;
/// The low 56 bits, the part of an 8-byte read that is one packed key.
const KEY_MASK: u64 = (1 << (8 * KEY_BYTES)) - 1;
/// A shard's smallest capacity, in slots: 1,024 shards of 16 slots start the table at
/// 112 KiB.
const SHARD_CAPACITY_MIN: usize = 16;
/// A shard grows once `len × LOAD_DENOMINATOR > capacity × LOAD_NUMERATOR`.
const LOAD_NUMERATOR: usize = 19;
/// See [`LOAD_NUMERATOR`].
const LOAD_DENOMINATOR: usize = 20;
/// A growing shard gains `capacity / GROWTH_DIVISOR` slots: growing by an eighth keeps the
/// load high (84% to 95%) at the cost of re-inserting each key about eight times over the
/// run, which is cheap because a shard is small enough to sit in cache.
const GROWTH_DIVISOR: usize = 8;
/// The empty-slot marker: a stored key is never zero (see [`KEY_BYTES`]).
const EMPTY: u64 = 0;

const _: () = assert!(SHARD_COUNT.is_power_of_two());
const _: () = assert!(LOAD_NUMERATOR < LOAD_DENOMINATOR);
const _: () = assert!(64 - SHARD_BITS < 8 * KEY_BYTES as u32);

/// A shard behind its mutex, padded to its own cache line so two threads locking
/// neighbouring shards do not fight over one line.
#[repr(align(64))]
struct Padded<V> {
    shard: Mutex<Shard<V>>,
    /// Where the shard's keys are and how many slots, published (under the lock, whenever
    /// the shard grows) for [`FingerprintTable::prefetch`] only, which reads them without
    /// the lock. A stale pair makes a prefetch useless, never wrong: a prefetch is a hint
    /// that never faults, and nothing ever dereferences these.
    keys_hint: AtomicPtr<u8>,
    capacity_hint: AtomicUsize,
}

impl<V> Padded<V> {
    fn publish(&self, shard: &mut Shard<V>) {
        self.keys_hint
            .store(shard.keys.as_mut_ptr(), Ordering::Relaxed);
        self.capacity_hint.store(shard.capacity, Ordering::Relaxed);
    }
}

/// The form a fingerprint takes inside its shard: the bits the shard index does not hold,
/// plus one (never zero, never above [`KEY_MASK`]).
fn stored_key(fingerprint: u64) -> u64 {
    (fingerprint >> SHARD_BITS) + 1
}

/// The slot of `capacity` where a probe for a stored key starts ("fast range" on the
/// 54 stored bits: monotone in the key, no division).
fn home_slot(stored: u64, capacity: usize) -> usize {
    ((u128::from(stored - 1) * capacity as u128) >> (64 - SHARD_BITS)) as usize
}

/// One open-addressing array with linear probing, keys packed 7 bytes apart. Hand-written
/// because no hash-table crate stores keys in fewer bytes than their type: the 12.5% saved
/// here is the difference between matching Stateright's memory and beating it.
struct Shard<V> {
    /// `capacity × KEY_BYTES` bytes of packed keys, plus one spare byte so that an 8-byte
    /// read of the last slot stays in bounds.
    keys: Vec<u8>,
    values: Vec<V>,
    capacity: usize,
    len: usize,
}

impl<V: Copy + Default> Shard<V> {
    fn with_capacity(capacity: usize) -> Self {
        Shard {
            keys: vec![0; capacity * KEY_BYTES + 8 - KEY_BYTES],
            values: vec![V::default(); capacity],
            capacity,
            len: 0,
        }
    }

    fn key_at(&self, slot: usize) -> u64 {
        let start = slot * KEY_BYTES;
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.keys[start..start + 8]);
        u64::from_le_bytes(word) & KEY_MASK
    }

    fn set_key(&mut self, slot: usize, stored: u64) {
        let start = slot * KEY_BYTES;
        self.keys[start..start + KEY_BYTES].copy_from_slice(&stored.to_le_bytes()[..KEY_BYTES]);
    }

    /// The slot holding the stored key, or the empty slot where it would go.
    fn find(&self, stored: u64) -> usize {
        let mut slot = home_slot(stored, self.capacity);
        loop {
            let found = self.key_at(slot);
            if found == stored || found == EMPTY {
                return slot;
            }
            slot += 1;
            if slot == self.capacity {
                slot = 0;
            }
        }
    }

    fn insert(&mut self, stored: u64, value: V) -> bool {
        let slot = self.find(stored);
        if self.key_at(slot) == stored {
            return false;
        }
        self.set_key(slot, stored);
        self.values[slot] = value;
        self.len += 1;
        if self.len * LOAD_DENOMINATOR > self.capacity * LOAD_NUMERATOR {
            self.grow();
        }
        true
    }

    fn get(&self, stored: u64) -> Option<V> {
        let slot = self.find(stored);
        (self.key_at(slot) == stored).then(|| self.values[slot])
    }

    fn grow(&mut self) {
        let capacity = self.capacity + self.capacity / GROWTH_DIVISOR;
        let mut grown = Shard::with_capacity(capacity);
        for slot in 0..self.capacity {
            let stored = self.key_at(slot);
            if stored != EMPTY {
                let target = grown.find(stored);
                grown.set_key(target, stored);
                grown.values[target] = self.values[slot];
            }
        }
        grown.len = self.len;
        *self = grown;
    }
}

/// A concurrent map from fingerprint to a small value (`()` for a set).
pub(crate) struct FingerprintTable<V> {
    shards: Box<[Padded<V>]>,
}

impl<V: Copy + Default> FingerprintTable<V> {
    /// An empty table.
    pub(crate) fn new() -> Self {
        let shards = (0..SHARD_COUNT)
            .map(|index| {
                // Staggered starting sizes spread the shards' growth points over one
                // growth factor, so the table's load stays near its average.
                let capacity = SHARD_CAPACITY_MIN
                    + SHARD_CAPACITY_MIN * index / (GROWTH_DIVISOR * SHARD_COUNT);
                let mut shard = Shard::with_capacity(capacity);
                let padded = Padded {
                    keys_hint: AtomicPtr::new(std::ptr::null_mut()),
                    capacity_hint: AtomicUsize::new(0),
                    shard: Mutex::new(Shard::with_capacity(0)),
                };
                padded.publish(&mut shard);
                *padded
                    .shard
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = shard;
                padded
            })
            .collect();
        FingerprintTable { shards }
    }

    fn padded(&self, key: u64) -> &Padded<V> {
        &self.shards[(key as usize) & (SHARD_COUNT - 1)]
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard<V>> {
        // A worker that panicked poisons nothing we rely on: the shard is consistent
        // between statements, so take the data anyway.
        self.padded(key)
            .shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the processor to start loading the slot where `key` would be, so that a later
    /// [`FingerprintTable::insert`] finds it in cache. The checker computes every successor
    /// of a state first and prefetches them all, so their cache misses (the table is far
    /// larger than any cache) overlap instead of following one another.
    pub(crate) fn prefetch(&self, key: u64) {
        let padded = self.padded(key);
        let capacity = padded.capacity_hint.load(Ordering::Relaxed);
        let keys = padded.keys_hint.load(Ordering::Relaxed);
        let home = home_slot(stored_key(key), capacity);
        prefetch_address(keys.wrapping_add(home * KEY_BYTES));
    }

    /// Inserts `key` with `value` unless present; true if it was new.
    pub(crate) fn insert(&self, key: u64, value: V) -> bool {
        let padded = self.padded(key);
        let mut shard = padded
            .shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let capacity = shard.capacity;
        let inserted = shard.insert(stored_key(key), value);
        if shard.capacity != capacity {
            padded.publish(&mut shard);
        }
        inserted
    }

    /// The value stored with `key`.
    pub(crate) fn get(&self, key: u64) -> Option<V> {
        self.shard(key).get(stored_key(key))
    }

    /// How many keys the table holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        (0..SHARD_COUNT)
            .map(|index| self.shard(index as u64).len as u64)
            .sum()
    }
}

/// Starts loading the cache line at `address` (a hint: any address is allowed, none is
/// dereferenced).
#[cfg(target_arch = "x86_64")]
fn prefetch_address(address: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: the only requirement is the SSE target feature, which every x86_64
    // processor has; a prefetch never dereferences or faults on its address.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(address.cast()) };
}

/// Elsewhere prefetching is left to the hardware.
#[cfg(not(target_arch = "x86_64"))]
fn prefetch_address(_address: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_checker::fingerprint::fingerprint;

    #[test]
    fn inserts_are_counted_once_and_values_kept() {
        let table = FingerprintTable::<u64>::new();
        for value in 0..50_000u64 {
            assert!(table.insert(fingerprint(&value), value));
        }
        for value in 0..50_000u64 {
            assert!(!table.insert(fingerprint(&value), 0));
            assert_eq!(table.get(fingerprint(&value)), Some(value));
        }
        assert_eq!(table.len(), 50_000);
        assert_eq!(table.get(fingerprint(&u64::MAX)), None);
    }

    #[test]
    fn packed_keys_keep_every_bit_of_the_fingerprint() {
        // Keys that differ only in the shard bits, only in the top bits, or sit at the
        // extremes must stay distinct after packing.
        let keys = [
            1,
            1 << SHARD_BITS,
            (1 << SHARD_BITS) + 1,
            1 << 63,
            (1 << 63) | 1,
            u64::MAX,
            u64::MAX - 1,
            u64::MAX - (1 << SHARD_BITS),
        ];
        let table = FingerprintTable::<u64>::new();
        for (index, &key) in keys.iter().enumerate() {
            assert!(table.insert(key, index as u64), "{key:#x} was taken");
        }
        for (index, &key) in keys.iter().enumerate() {
            assert_eq!(table.get(key), Some(index as u64), "{key:#x}");
            assert!(!table.insert(key, 99));
        }
        assert_eq!(table.get(2), None);
        assert_eq!(table.len(), keys.len() as u64);
    }

    #[test]
    fn concurrent_inserts_of_the_same_keys_succeed_exactly_once() {
        let table = FingerprintTable::<()>::new();
        let wins: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        (0..40_000u64)
                            .filter(|value| table.insert(fingerprint(value), ()))
                            .count() as u64
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|worker| worker.join().expect("worker panicked"))
                .sum()
        });
        assert_eq!(wins, 40_000);
        assert_eq!(table.len(), 40_000);
    }
}
