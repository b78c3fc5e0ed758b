//! Leases: TTLs renewed by keep-alives, with the keys attached to them.
//!
//! A lease records the proposer's clock reading at its last renewal (grant or keep-alive),
//! taken from the command that renewed it, so every replica holds the same stamps. Only
//! the leader decides expiry ([`crate::replicated::StateMachine::due`]); its deadline for a
//! lease is
//!
//! ```text
//! deadline = max(last renewal stamp, leader's leading_since) + ttl
//! ```
//!
//! so on a leader change every lease gets at least a full TTL from the new leader's
//! promotion, measured on its own clock: renewals it never saw (or stamped by another
//! clock) cannot make it revoke a lease early. etcd does the same when a member becomes
//! leader (it "promotes" the lessor, refreshing every lease). The cost is that a lease can
//! outlive its TTL by up to one TTL per leader change.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;
use synod_core::time::Time;

/// The largest TTL a grant may ask for, in seconds (etcd's limit).
pub const LEASE_TTL_SECONDS_MAX: i64 = 9_000_000_000;

/// Smaller requested TTLs are raised to this many seconds.
pub const LEASE_TTL_SECONDS_MIN: i64 = 1;

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The granted TTL in seconds.
    pub ttl: i64,
    /// The proposer's clock when the lease was last granted or kept alive.
    pub renewed_at: Time,
    /// Keys whose current version is attached to this lease, in key order. Not encoded:
    /// a decoded store rebuilds it from its records.
    #[serde(skip)]
    pub keys: BTreeSet<Box<[u8]>>,
}

impl Lease {
    /// The TTL as a duration.
    pub fn ttl_duration(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.ttl).unwrap_or(0))
    }

    /// When the lease expires for a leader that has led since `leading_since`.
    pub fn deadline(&self, leading_since: Time) -> Time {
        self.renewed_at.max(leading_since) + self.ttl_duration()
    }

    /// Whole seconds left at `now` for a leader that has led since `leading_since`
    /// (rounded down, never negative).
    pub fn remaining_seconds(&self, now: Time, leading_since: Time) -> i64 {
        let left = self.deadline(leading_since).saturating_since(now);
        i64::try_from(left.as_secs()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leader_extends_the_deadline_to_a_full_ttl() {
        let lease = Lease {
            ttl: 10,
            renewed_at: Time::from_millis(1_000),
            keys: BTreeSet::new(),
        };
        assert_eq!(lease.deadline(Time::ZERO), Time::from_millis(11_000));
        assert_eq!(
            lease.deadline(Time::from_millis(5_000)),
            Time::from_millis(15_000)
        );
        assert_eq!(
            lease.remaining_seconds(Time::from_millis(2_500), Time::ZERO),
            8
        );
        assert_eq!(
            lease.remaining_seconds(Time::from_millis(20_000), Time::ZERO),
            0
        );
    }
}
