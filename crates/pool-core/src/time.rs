//! Time as the scheduler sees it: a number the driver passes in.
//!
//! The scheduler never reads a clock. The driver picks an epoch (typically an
//! `std::time::Instant` taken when the pool starts) and passes the time elapsed since then
//! with every event. A simulator passes a virtual clock instead, which is what makes the
//! property tests deterministic.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time, measured from an epoch chosen by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The driver's epoch.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// The time `since_epoch` after the epoch.
    pub const fn from_duration(since_epoch: Duration) -> Time {
        Time(since_epoch)
    }

    /// Time elapsed since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, rhs: Duration) -> Time {
        Time(self.0.saturating_add(rhs))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_since(rhs)
    }
}
