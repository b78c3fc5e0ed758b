//! Logical clocks: Lamport clocks order events consistently with causality; vector clocks
//! also tell when two events are concurrent.
//!
//! ```
//! use synod_core::clock::{ClockOrdering, VectorClock};
//!
//! let mut a = VectorClock::new();
//! a.increment(1);
//! let mut b = a.clone();
//! b.increment(2);
//! assert_eq!(a.compare(&b), ClockOrdering::Before);
//! a.increment(1);
//! assert_eq!(a.compare(&b), ClockOrdering::Concurrent);
//! a.merge(&b);
//! assert_eq!(b.compare(&a), ClockOrdering::Before);
//! ```

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Lamport clock: a counter that every local event advances and every received
/// timestamp pushes forward, so `a` happened-before `b` implies `time(a) < time(b)`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LamportClock {
    time: u64,
}

impl LamportClock {
    /// A clock at zero.
    pub fn new() -> Self {
        LamportClock::default()
    }

    /// The current time, without advancing.
    pub fn now(&self) -> u64 {
        self.time
    }

    /// A local event or a send: advances the clock and returns the event's timestamp.
    pub fn tick(&mut self) -> u64 {
        self.time = self
            .time
            .checked_add(1)
            .expect("a Lamport clock cannot overflow 64 bits in practice");
        self.time
    }

    /// A receive of a message stamped `received`: jumps past it and returns the receive's
    /// timestamp.
    pub fn observe(&mut self, received: u64) -> u64 {
        self.time = self.time.max(received);
        self.tick()
    }
}

/// How two vector clocks relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClockOrdering {
    /// The left clock happened-before the right one.
    Before,
    /// The right clock happened-before the left one.
    After,
    /// The clocks are identical.
    Equal,
    /// Neither happened-before the other.
    Concurrent,
}

/// A vector clock over node ids. Missing entries are zero and zeros are never stored, so
/// equal clocks have equal representations (and hashes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
// A peer may legitimately send a zero entry ({a: 0} means {}), so decoding goes through
// `VectorClockWire` and drops zeros; a derived decoder would let them in and break `Eq`/`Hash`.
#[serde(from = "VectorClockWire")]
pub struct VectorClock {
    entries: BTreeMap<u32, u64>,
}

/// `VectorClock`'s encoded shape before zero entries are dropped (same fields, same bytes).
#[derive(Deserialize)]
struct VectorClockWire {
    entries: BTreeMap<u32, u64>,
}

impl From<VectorClockWire> for VectorClock {
    fn from(wire: VectorClockWire) -> Self {
        let mut entries = wire.entries;
        entries.retain(|_, value| *value != 0);
        VectorClock { entries }
    }
}

impl VectorClock {
    /// The zero clock.
    pub fn new() -> Self {
        VectorClock::default()
    }

    /// The entry for `node` (zero if absent).
    pub fn get(&self, node: u32) -> u64 {
        self.entries.get(&node).copied().unwrap_or(0)
    }

    /// A local event on `node`: advances its entry and returns the new value.
    pub fn increment(&mut self, node: u32) -> u64 {
        let entry = self.entries.entry(node).or_insert(0);
        *entry = entry
            .checked_add(1)
            .expect("a vector clock entry cannot overflow 64 bits in practice");
        *entry
    }

    /// Pointwise maximum with `other` (what a receive does before its own increment).
    pub fn merge(&mut self, other: &VectorClock) {
        for (&node, &value) in &other.entries {
            assert!(value != 0, "a vector clock never stores a zero entry");
            let entry = self.entries.entry(node).or_insert(0);
            *entry = (*entry).max(value);
        }
    }

    /// How this clock relates to `other`.
    pub fn compare(&self, other: &VectorClock) -> ClockOrdering {
        let mut some_less = false;
        let mut some_greater = false;
        let nodes = self.entries.keys().chain(other.entries.keys());
        for &node in nodes {
            let (mine, theirs) = (self.get(node), other.get(node));
            some_less |= mine < theirs;
            some_greater |= mine > theirs;
        }
        match (some_less, some_greater) {
            (false, false) => ClockOrdering::Equal,
            (true, false) => ClockOrdering::Before,
            (false, true) => ClockOrdering::After,
            (true, true) => ClockOrdering::Concurrent,
        }
    }

    /// True if this clock happened-before `other`.
    pub fn happened_before(&self, other: &VectorClock) -> bool {
        self.compare(other) == ClockOrdering::Before
    }

    /// True if neither clock happened-before the other.
    pub fn concurrent_with(&self, other: &VectorClock) -> bool {
        self.compare(other) == ClockOrdering::Concurrent
    }

    /// The non-zero entries, by node id.
    pub fn entries(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.entries.iter().map(|(&node, &value)| (node, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lamport_clocks_jump_past_what_they_receive() {
        let mut sender = LamportClock::new();
        let mut receiver = LamportClock::new();
        let sent = sender.tick();
        assert_eq!(sent, 1);
        receiver.tick();
        receiver.tick();
        receiver.tick();
        assert_eq!(receiver.observe(sent), 4);
        assert_eq!(sender.observe(10), 11);
        assert_eq!(sender.now(), 11);
    }

    #[test]
    fn zero_entries_do_not_change_identity() {
        let mut with_zero = VectorClock::new();
        let mut other = VectorClock::new();
        other.increment(3);
        with_zero.merge(&VectorClock::new());
        assert_eq!(with_zero, VectorClock::new());
        assert_eq!(with_zero.compare(&VectorClock::new()), ClockOrdering::Equal);
        assert!(with_zero.happened_before(&other));
        assert!(!other.concurrent_with(&with_zero));
    }

    #[test]
    fn decoding_drops_zero_entries() {
        // Same bytes as a `VectorClock` holding {1: 0, 2: 3}, which the API cannot build.
        let wire = BTreeMap::from([(1u32, 0u64), (2, 3)]);
        let bytes = postcard::to_allocvec(&wire).expect("encodes");
        let decoded: VectorClock = postcard::from_bytes(&bytes).expect("decodes");
        let mut expected = VectorClock::new();
        for _ in 0..3 {
            expected.increment(2);
        }
        assert_eq!(decoded, expected);
        assert_eq!(decoded.entries().collect::<Vec<_>>(), vec![(2, 3)]);
    }

    fn clock() -> impl Strategy<Value = VectorClock> {
        proptest::collection::btree_map(0u32..5, 1u64..6, 0..5)
            .prop_map(|entries| VectorClock { entries })
    }

    fn pointwise_at_least(big: &VectorClock, small: &VectorClock) -> bool {
        small.entries().all(|(node, value)| big.get(node) >= value)
    }

    proptest! {
        #[test]
        fn comparison_is_antisymmetric(a in clock(), b in clock()) {
            let forward = a.compare(&b);
            let backward = b.compare(&a);
            let expected = match forward {
                ClockOrdering::Before => ClockOrdering::After,
                ClockOrdering::After => ClockOrdering::Before,
                same => same,
            };
            prop_assert_eq!(backward, expected);
            prop_assert_eq!(forward == ClockOrdering::Equal, a == b);
        }

        #[test]
        fn merge_is_a_least_upper_bound(a in clock(), b in clock(), c in clock()) {
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            prop_assert!(pointwise_at_least(&ab, &a) && pointwise_at_least(&ab, &b));
            prop_assert!(matches!(a.compare(&ab), ClockOrdering::Before | ClockOrdering::Equal));
            let mut twice = ab.clone();
            twice.merge(&b);
            prop_assert_eq!(&twice, &ab);
            let mut ab_c = ab.clone();
            ab_c.merge(&c);
            let mut bc = b.clone();
            bc.merge(&c);
            let mut a_bc = a.clone();
            a_bc.merge(&bc);
            prop_assert_eq!(ab_c, a_bc);
        }

        #[test]
        fn clocks_round_trip_through_postcard(a in clock()) {
            let bytes = postcard::to_allocvec(&a).expect("encodes");
            let decoded: VectorClock = postcard::from_bytes(&bytes).expect("decodes");
            prop_assert_eq!(decoded, a);
        }

        #[test]
        fn an_increment_happens_after_the_old_clock(a in clock(), node in 0u32..5) {
            let mut next = a.clone();
            next.increment(node);
            prop_assert_eq!(next.compare(&a), ClockOrdering::After);
            prop_assert!(a.happened_before(&next));
        }

        #[test]
        fn independent_increments_are_concurrent(a in clock(), left in 0u32..5, right in 0u32..5) {
            prop_assume!(left != right);
            let mut x = a.clone();
            x.increment(left);
            let mut y = a.clone();
            y.increment(right);
            prop_assert!(x.concurrent_with(&y));
        }
    }
}
