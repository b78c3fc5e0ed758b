//! Virtual time: instants as nanoseconds since a driver-chosen origin.
//!
//! Protocols never read a clock themselves: a driver stamps every input with the node's
//! local time ([`crate::node::Context::now`]). In the simulator that time is virtual and
//! may be skewed or drift per node; in the runtime it is a monotonic clock.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// An instant on one node's clock, in nanoseconds since the driver's origin.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    /// The origin of the clock.
    pub const ZERO: Time = Time(0);

    /// Nanoseconds since the origin.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// Builds an instant from milliseconds since the origin.
    pub fn from_millis(milliseconds: u64) -> Time {
        Time(milliseconds.saturating_mul(1_000_000))
    }

    /// The time elapsed since `earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, duration: Duration) -> Time {
        Time(self.0.saturating_add(duration_nanos(duration)))
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, duration: Duration) -> Time {
        Time(self.0.saturating_sub(duration_nanos(duration)))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let milliseconds = self.0 / 1_000_000;
        let micros_rest = (self.0 / 1_000) % 1_000;
        write!(formatter, "{milliseconds}.{micros_rest:03}ms")
    }
}

/// A duration in whole nanoseconds, saturating at `u64::MAX` (584 years).
pub fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        assert_eq!(Time(5) - Duration::from_nanos(9), Time::ZERO);
        assert_eq!(Time(u64::MAX - 1) + Duration::from_nanos(9), Time(u64::MAX));
        assert_eq!(Time(10).saturating_since(Time(4)), Duration::from_nanos(6));
        assert_eq!(Time(4).saturating_since(Time(10)), Duration::ZERO);
    }

    #[test]
    fn display_shows_milliseconds_with_microseconds() {
        assert_eq!(Time(1_234_567).to_string(), "1.234ms");
        assert_eq!(Time::from_millis(2).to_string(), "2.000ms");
    }
}
