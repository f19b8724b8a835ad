//! [`Semaphore`] and [`BoundedSemaphore`]: a counter in shared memory that `acquire`
//! decrements, waiting on its futex while it is zero, and `release` increments.
//!
//! It is its own file because a semaphore shares nothing with the locks but the region
//! (`raw.rs`): it has no owner, and units held by a process that dies are lost.

use crate::loom::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::loom::futex::{futex_wait, futex_wake};

use super::error::{SyncError, io};
use super::raw::{Kind, Region, deadline_of, handle_serde};
use crate::handles;

/// Python's `multiprocessing.Semaphore`: a counter that `acquire` decrements, waiting while it
/// is zero, and `release` increments. It has no owner: units held by a process that dies are
/// lost (as in Python).
#[derive(Clone, Debug)]
pub struct Semaphore(Arc<Region>);
handle_serde!(Semaphore, Kind::Semaphore);

/// Python's `multiprocessing.BoundedSemaphore`: a [`Semaphore`] that refuses to be released
/// above its initial value.
#[derive(Clone, Debug)]
pub struct BoundedSemaphore(Semaphore);

impl Serialize for BoundedSemaphore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        handles::serialize_fd(self.0.0.region.fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BoundedSemaphore, D::Error> {
        use serde::de::Error as _;
        let fd = handles::deserialize_fd(deserializer)?;
        Region::open(fd, Kind::BoundedSemaphore)
            .map(|r| BoundedSemaphore(Semaphore(r)))
            .map_err(D::Error::custom)
    }
}

impl Semaphore {
    /// A semaphore with `value` units.
    pub fn new(value: u32) -> Result<Semaphore, SyncError> {
        let r = Region::create(Kind::Semaphore)?;
        r.state().word.store(value, Ordering::Release);
        Ok(Semaphore(r))
    }

    fn take(&self, deadline: Option<Instant>, block: bool) -> Result<(), SyncError> {
        let s = self.0.state();
        loop {
            let v = s.word.load(Ordering::Relaxed);
            if v > 0 {
                if s.word
                    .compare_exchange(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if !block {
                return Err(SyncError::WouldBlock);
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let woke = futex_wait(&s.word, 0, deadline);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            if !woke.map_err(io)? && s.word.load(Ordering::Relaxed) == 0 {
                return Err(SyncError::Timeout);
            }
        }
    }

    /// Takes a unit, waiting while there is none.
    pub fn acquire(&self) -> Result<(), SyncError> {
        self.take(None, true)
    }

    /// Takes a unit, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), SyncError> {
        self.take(deadline_of(timeout), true)
    }

    /// Takes a unit if there is one.
    pub fn try_acquire(&self) -> Result<(), SyncError> {
        self.take(None, false)
    }

    /// Gives a unit back.
    pub fn release(&self) -> Result<(), SyncError> {
        let s = self.0.state();
        let bound = s.bound.load(Ordering::Relaxed);
        loop {
            let v = s.word.load(Ordering::Relaxed);
            // The bound is stored plus one, so that 0 means none (a `Semaphore`).
            if (bound != 0 && v >= bound - 1) || v == u32::MAX {
                return Err(SyncError::TooManyReleases);
            }
            if s.word
                .compare_exchange(v, v + 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake(&s.word, 1);
        }
        Ok(())
    }

    /// The current value (approximate: others may change it at any moment).
    pub fn value(&self) -> u32 {
        self.0.state().word.load(Ordering::Relaxed)
    }
}

impl BoundedSemaphore {
    /// A bounded semaphore with `value` units, which is also its bound.
    pub fn new(value: u32) -> Result<BoundedSemaphore, SyncError> {
        if value == u32::MAX {
            return Err(SyncError::InvalidArgument(
                "a bounded semaphore's value must be below u32::MAX",
            ));
        }
        let r = Region::create(Kind::BoundedSemaphore)?;
        r.state().bound.store(value + 1, Ordering::Relaxed);
        r.state().word.store(value, Ordering::Release);
        Ok(BoundedSemaphore(Semaphore(r)))
    }

    /// See [`Semaphore::acquire`].
    pub fn acquire(&self) -> Result<(), SyncError> {
        self.0.acquire()
    }

    /// See [`Semaphore::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), SyncError> {
        self.0.acquire_timeout(timeout)
    }

    /// See [`Semaphore::try_acquire`].
    pub fn try_acquire(&self) -> Result<(), SyncError> {
        self.0.try_acquire()
    }

    /// Gives a unit back; [`SyncError::TooManyReleases`] above the initial value.
    pub fn release(&self) -> Result<(), SyncError> {
        self.0.release()
    }

    /// The current value.
    pub fn value(&self) -> u32 {
        self.0.value()
    }
}
