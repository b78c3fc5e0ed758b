//! Unique 64-bit ids that sort by creation time, made without coordination.
//!
//! ```text
//! | 40 bits: ms since the epoch | 14 bits: sequence | 10 bits: node id |
//! ```
//!
//! The generator never reads a clock itself: the caller passes its reading. It never
//! repeats an id and never goes backwards, even when the clock does (the seeds' "time
//! travel" failure, e.g. an NTP step): it keeps issuing from the last timestamp it used.
//! When the 16,384 sequence numbers of one millisecond run out it borrows the next
//! millisecond instead of failing or blocking, so its logical time can run ahead of the
//! real clock by at most the number of borrowed milliseconds, and catches up as soon as
//! the clock passes it.
//!
//! ```
//! use synod_core::unique_id::UniqueIdGenerator;
//!
//! let epoch = synod_core::unique_id::DEFAULT_EPOCH_UNIX_MS;
//! let mut generator = UniqueIdGenerator::new(7, epoch).unwrap();
//! let first = generator.next(epoch + 1_000).unwrap();
//! let second = generator.next(epoch + 999).unwrap(); // the clock went back
//! assert!(second > first);
//! assert_eq!(second.node_id(), 7);
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

/// Bits of milliseconds since the epoch: about 34.8 years.
pub const TIMESTAMP_BITS: u32 = 40;
/// Bits of per-millisecond sequence: 16,384 ids per millisecond per node.
pub const SEQUENCE_BITS: u32 = 14;
/// Bits of node id: 1,024 nodes.
pub const NODE_ID_BITS: u32 = 10;

const _: () = assert!(TIMESTAMP_BITS + SEQUENCE_BITS + NODE_ID_BITS == 64);

/// Where the sequence field starts: just above the node id.
const SEQUENCE_SHIFT: u32 = NODE_ID_BITS;
/// Where the timestamp field starts: the most significant bits, so ids sort by time.
const TIMESTAMP_SHIFT: u32 = NODE_ID_BITS + SEQUENCE_BITS;
/// The largest timestamp (ms since the epoch) an id can hold.
const TIMESTAMP_MAX: u64 = (1 << TIMESTAMP_BITS) - 1;
/// The largest sequence number within one millisecond.
const SEQUENCE_MAX: u64 = (1 << SEQUENCE_BITS) - 1;
/// The largest node id.
const NODE_ID_MAX: u32 = (1 << NODE_ID_BITS) - 1;

/// 2026-01-01T00:00:00Z in Unix milliseconds: ids last until late 2060.
pub const DEFAULT_EPOCH_UNIX_MS: u64 = 1_767_225_600_000;

/// Why an id could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The node id needs more than [`NODE_ID_BITS`] bits.
    #[error("node id {node_id} does not fit in {NODE_ID_BITS} bits (at most {NODE_ID_MAX})")]
    NodeIdTooLarge {
        /// The id given.
        node_id: u32,
    },
    /// The clock reads earlier than the epoch, and no id was issued yet to continue from.
    #[error("clock reads {now_unix_ms} ms, before the epoch {epoch_unix_ms} ms")]
    BeforeEpoch {
        /// The reading.
        now_unix_ms: u64,
        /// The epoch.
        epoch_unix_ms: u64,
    },
    /// The timestamp no longer fits in [`TIMESTAMP_BITS`] bits: choose a later epoch.
    #[error("timestamp overflows {TIMESTAMP_BITS} bits; the epoch is too old")]
    TimestampOverflow,
}

/// A unique id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UniqueId(pub u64);

impl UniqueId {
    /// Milliseconds since the generator's epoch (possibly borrowed ahead of the clock).
    pub fn timestamp_ms_since_epoch(self) -> u64 {
        self.0 >> TIMESTAMP_SHIFT
    }

    /// The sequence number within its millisecond.
    pub fn sequence(self) -> u64 {
        (self.0 >> SEQUENCE_SHIFT) & SEQUENCE_MAX
    }

    /// The node that made it.
    pub fn node_id(self) -> u32 {
        (self.0 & u64::from(NODE_ID_MAX)) as u32
    }
}

impl fmt::Display for UniqueId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:016x}", self.0)
    }
}

/// Issues ids for one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UniqueIdGenerator {
    node_id: u32,
    epoch_unix_ms: u64,
    /// The (timestamp, sequence) of the last id issued.
    last: Option<(u64, u64)>,
}

impl UniqueIdGenerator {
    /// A generator for `node_id` counting milliseconds from `epoch_unix_ms`.
    pub fn new(node_id: u32, epoch_unix_ms: u64) -> Result<Self, IdError> {
        if node_id > NODE_ID_MAX {
            return Err(IdError::NodeIdTooLarge { node_id });
        }
        Ok(UniqueIdGenerator {
            node_id,
            epoch_unix_ms,
            last: None,
        })
    }

    /// The next id, given the caller's clock reading in Unix milliseconds.
    pub fn next(&mut self, now_unix_ms: u64) -> Result<UniqueId, IdError> {
        let reading = now_unix_ms.checked_sub(self.epoch_unix_ms);
        let (timestamp, sequence) = match (self.last, reading) {
            (None, None) => {
                return Err(IdError::BeforeEpoch {
                    now_unix_ms,
                    epoch_unix_ms: self.epoch_unix_ms,
                });
            }
            (None, Some(reading)) => (reading, 0),
            // The clock moved past everything issued: start a fresh millisecond.
            (Some((last_timestamp, _)), Some(reading)) if reading > last_timestamp => (reading, 0),
            // Same millisecond, or the clock went back: continue from the last id.
            (Some((last_timestamp, last_sequence)), _) => {
                if last_sequence < SEQUENCE_MAX {
                    (last_timestamp, last_sequence + 1)
                } else {
                    // Sequence exhausted: borrow the next millisecond.
                    (last_timestamp + 1, 0)
                }
            }
        };
        if timestamp > TIMESTAMP_MAX {
            return Err(IdError::TimestampOverflow);
        }
        if let Some(previous) = self.last {
            assert!(
                (timestamp, sequence) > previous,
                "ids must strictly increase"
            );
        }
        self.last = Some((timestamp, sequence));
        let id = UniqueId(
            timestamp << TIMESTAMP_SHIFT | sequence << SEQUENCE_SHIFT | u64::from(self.node_id),
        );
        // Read the fields back: a field spilling into its neighbour would break uniqueness
        // across nodes without breaking monotonicity on this one.
        assert_eq!(id.timestamp_ms_since_epoch(), timestamp, "timestamp field");
        assert_eq!(id.sequence(), sequence, "sequence field");
        assert_eq!(id.node_id(), self.node_id, "node id field");
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EPOCH: u64 = DEFAULT_EPOCH_UNIX_MS;

    #[test]
    fn the_fields_land_where_the_layout_says() {
        let mut generator = UniqueIdGenerator::new(5, EPOCH).expect("valid node");
        let id = generator.next(EPOCH + 3).expect("after epoch");
        assert_eq!(id.0, 3 << 24 | 5);
        assert_eq!(id.timestamp_ms_since_epoch(), 3);
        assert_eq!(id.sequence(), 0);
        assert_eq!(generator.next(EPOCH + 3).expect("same ms").sequence(), 1);
    }

    #[test]
    fn exhausting_a_millisecond_borrows_the_next() {
        let mut generator = UniqueIdGenerator::new(1, EPOCH).expect("valid node");
        let mut last = None;
        for expected in 0..=SEQUENCE_MAX {
            let id = generator.next(EPOCH + 10).expect("in range");
            assert_eq!(
                (id.timestamp_ms_since_epoch(), id.sequence()),
                (10, expected)
            );
            last = Some(id);
        }
        let borrowed = generator.next(EPOCH + 10).expect("borrowing never fails");
        assert!(Some(borrowed) > last);
        assert_eq!(
            (borrowed.timestamp_ms_since_epoch(), borrowed.sequence()),
            (11, 0)
        );
        // When the real clock reaches the borrowed millisecond, ids continue after it.
        let caught_up = generator.next(EPOCH + 11).expect("in range");
        assert_eq!(
            (caught_up.timestamp_ms_since_epoch(), caught_up.sequence()),
            (11, 1)
        );
    }

    #[test]
    fn bad_configurations_are_errors() {
        assert_eq!(
            UniqueIdGenerator::new(1024, EPOCH),
            Err(IdError::NodeIdTooLarge { node_id: 1024 })
        );
        let mut generator = UniqueIdGenerator::new(0, EPOCH).expect("valid node");
        assert!(matches!(
            generator.next(EPOCH - 1),
            Err(IdError::BeforeEpoch { .. })
        ));
        assert_eq!(
            generator.next(EPOCH + (1 << 40)),
            Err(IdError::TimestampOverflow)
        );
        // Once an id exists, a clock before the epoch is just a clock that went back.
        generator.next(EPOCH).expect("at epoch");
        assert!(generator.next(EPOCH - 5).is_ok());
    }

    proptest! {
        #[test]
        fn ids_strictly_increase_whatever_the_clock_does(
            node in 0u32..1024,
            steps in proptest::collection::vec(
                (
                    -50i64..50,
                    // Mostly a few calls per reading, sometimes a burst that exhausts the
                    // sequence and borrows milliseconds.
                    prop_oneof![40 => 1u64..40, 1 => 16_000u64..20_000],
                ),
                1..100,
            ),
        ) {
            let mut generator = UniqueIdGenerator::new(node, EPOCH).expect("valid node");
            let mut clock = EPOCH as i64 + 1_000;
            let mut clock_highest = 0;
            let mut issued = 0u64;
            let mut previous: Option<UniqueId> = None;
            for (jump, repeats) in steps {
                clock += jump;
                clock_highest = clock_highest.max((clock as u64).saturating_sub(EPOCH));
                for _ in 0..repeats {
                    let id = generator.next(clock as u64).expect("in range");
                    prop_assert_eq!(id.node_id(), node);
                    if let Some(previous) = previous {
                        prop_assert!(id > previous, "{} after {}", id, previous);
                    }
                    // Each borrowed millisecond needs a full sequence issued before it, so
                    // logical time leads the clock by at most issued / 2^SEQUENCE_BITS.
                    prop_assert!(
                        id.timestamp_ms_since_epoch()
                            <= clock_highest + issued / (SEQUENCE_MAX + 1)
                    );
                    previous = Some(id);
                    issued += 1;
                }
            }
        }

        #[test]
        fn different_nodes_never_collide(
            readings in proptest::collection::vec(0u64..20, 1..300),
            left in 0u32..1024,
            right in 0u32..1024,
        ) {
            prop_assume!(left != right);
            let mut a = UniqueIdGenerator::new(left, EPOCH).expect("valid node");
            let mut b = UniqueIdGenerator::new(right, EPOCH).expect("valid node");
            let mut seen = std::collections::BTreeSet::new();
            for reading in readings {
                prop_assert!(seen.insert(a.next(EPOCH + reading).expect("in range")));
                prop_assert!(seen.insert(b.next(EPOCH + reading).expect("in range")));
            }
        }
    }

    #[test]
    fn twenty_thousand_ids_in_one_millisecond_stay_unique() {
        let mut generator = UniqueIdGenerator::new(3, EPOCH).expect("valid node");
        let ids: Vec<UniqueId> = (0..20_000)
            .map(|_| generator.next(EPOCH + 7).expect("in range"))
            .collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(ids.last().map(|id| id.timestamp_ms_since_epoch()), Some(8));
    }
}
