//! [`Lock`] (with its guard, [`LockGuard`]) and [`RLock`]: Python's two locks, over the
//! lock word of `raw.rs`. A holder that dies does not deadlock them: the next taker takes
//! the lock over and is told ([`Acquired::previous_owner_died`]; `raw.rs` says how a dead
//! holder is told from a live one).
//!
//! It is its own file because the locks are the primitives the others build on: a
//! `Condition` (`condition.rs`) waits with one of them.

use crate::loom::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::SyncError;
use super::raw::{
    Acquired, Kind, Region, WAITERS, current_thread, deadline_of, give, handle_serde, me, take,
};

/// Python's `multiprocessing.Lock`: a lock any process may release, shared by passing it to
/// children. A holder that dies does not deadlock it (see the module documentation).
///
/// ```
/// let lock = pool_api::Lock::new()?;
/// {
///     let _guard = lock.lock()?;
///     assert!(lock.try_acquire().is_err());
/// }
/// let taken = lock.try_acquire()?;
/// assert_eq!(taken.previous_owner_died, None);
/// lock.release()?;
/// # Ok::<(), pool_api::SyncError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Lock(pub(super) Arc<Region>);
handle_serde!(Lock, Kind::Lock);

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Result<Lock, SyncError> {
        Region::create(Kind::Lock).map(Lock)
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn acquire(&self) -> Result<Acquired, SyncError> {
        take(self.0.state(), me(), None, true)
    }

    /// Takes the lock, waiting at most `timeout` ([`SyncError::Timeout`]).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Acquired, SyncError> {
        take(self.0.state(), me(), deadline_of(timeout), true)
    }

    /// Takes the lock if it is free, or if its holder died (then
    /// [`Acquired::previous_owner_died`] names it); [`SyncError::WouldBlock`] otherwise. A
    /// failed attempt asks `/proc` whether the holder lives, so it costs microseconds.
    pub fn try_acquire(&self) -> Result<Acquired, SyncError> {
        take(self.0.state(), me(), None, false)
    }

    /// Releases the lock (any process may); [`SyncError::NotLocked`] if it is not locked.
    pub fn release(&self) -> Result<(), SyncError> {
        give(self.0.state())
    }

    /// Takes the lock and returns a guard that releases it when dropped.
    pub fn lock(&self) -> Result<LockGuard<'_>, SyncError> {
        let acquired = self.acquire()?;
        Ok(LockGuard {
            lock: self,
            acquired,
        })
    }
}

/// Holds a [`Lock`] until dropped.
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    acquired: Acquired,
}

impl LockGuard<'_> {
    /// The pid of the previous owner if it died holding the lock.
    pub fn previous_owner_died(&self) -> Option<u32> {
        self.acquired.previous_owner_died
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

/// Python's `multiprocessing.RLock`: a lock its owning thread (of its owning process) may
/// take again; only the owner may release it. A dead owner is detected as for [`Lock`].
#[derive(Clone, Debug)]
pub struct RLock(Arc<Region>);
handle_serde!(RLock, Kind::RLock);

impl RLock {
    /// A new, unlocked reentrant lock.
    pub fn new() -> Result<RLock, SyncError> {
        Region::create(Kind::RLock).map(RLock)
    }

    fn take(&self, deadline: Option<Instant>, block: bool) -> Result<Acquired, SyncError> {
        let s = self.0.state();
        let id = me();
        if self.held_by(id.pid) {
            s.depth.fetch_add(1, Ordering::Relaxed);
            return Ok(Acquired {
                previous_owner_died: None,
            });
        }
        let acquired = take(s, id, deadline, block)?;
        s.owner_thread.store(current_thread(), Ordering::Relaxed);
        s.depth.store(1, Ordering::Relaxed);
        Ok(acquired)
    }

    /// Takes the lock (again, if this thread holds it).
    pub fn acquire(&self) -> Result<Acquired, SyncError> {
        self.take(None, true)
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Acquired, SyncError> {
        self.take(deadline_of(timeout), true)
    }

    /// Takes the lock if it is free, already this thread's, or its holder died (as
    /// [`Lock::try_acquire`]).
    pub fn try_acquire(&self) -> Result<Acquired, SyncError> {
        self.take(None, false)
    }

    /// Releases one level; [`SyncError::NotOwner`] if this thread does not hold it.
    pub fn release(&self) -> Result<(), SyncError> {
        let s = self.0.state();
        if !self.held_by_me() {
            return Err(SyncError::NotOwner);
        }
        if s.depth.fetch_sub(1, Ordering::Relaxed) > 1 {
            return Ok(());
        }
        s.owner_thread.store(0, Ordering::Relaxed);
        give(s)
    }
}

impl RLock {
    /// Releases every level this thread holds (for `Condition::wait`); the depth to restore.
    pub(super) fn release_save(&self) -> Result<u32, SyncError> {
        let s = self.0.state();
        if !self.held_by_me() {
            return Err(SyncError::NotOwner);
        }
        let depth = s.depth.swap(0, Ordering::Relaxed);
        s.owner_thread.store(0, Ordering::Relaxed);
        give(s)?;
        Ok(depth)
    }

    /// Takes the lock back at `depth` levels (after `Condition::wait`).
    pub(super) fn acquire_restore(&self, depth: u32) -> Result<Acquired, SyncError> {
        let s = self.0.state();
        let acquired = take(s, me(), None, true)?;
        s.owner_thread.store(current_thread(), Ordering::Relaxed);
        s.depth.store(depth, Ordering::Relaxed);
        Ok(acquired)
    }

    /// Whether this thread of this process holds the lock.
    pub(super) fn held_by_me(&self) -> bool {
        self.held_by(me().pid)
    }

    /// Whether this thread of process `pid` (this one) holds the lock.
    fn held_by(&self, pid: u32) -> bool {
        let s = self.0.state();
        let word = s.word.load(Ordering::Acquire);
        word != 0
            && word & !WAITERS == pid
            && s.owner_thread.load(Ordering::Relaxed) == current_thread()
    }
}
