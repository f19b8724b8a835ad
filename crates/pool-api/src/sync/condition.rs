//! [`Condition`]: wait until notified, across processes, with a [`Lock`] or an [`RLock`].
//! Its waiters and the wake-ups `notify` granted them share one 64-bit word ([`WAITER`],
//! [`GRANTS`]), so that both change together; see [`Condition::notify`] and [`take_grant`].
//!
//! It is its own file because it is the one primitive built on another (its lock, from
//! `lock.rs`) and its grant protocol is its own.

use crate::loom::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::loom::futex::{futex_wait, futex_wake};

use super::error::{SyncError, io};
use super::lock::{Lock, RLock};
use super::raw::{Acquired, Kind, Region, Shared, WAITERS, handle_serde, me};

/// One waiter in [`Shared::waiting`].
const WAITER: u64 = 1 << 32;
const GRANTS: u64 = WAITER - 1;

/// The lock of a [`Condition`].
#[derive(Clone, Debug, Serialize, Deserialize)]
enum CondLock {
    Lock(Lock),
    RLock(RLock),
}

/// A condition's own futex word.
#[derive(Clone, Debug)]
struct CondState(Arc<Region>);
handle_serde!(CondState, Kind::Condition);

/// Python's `multiprocessing.Condition`: wait until notified, across processes.
///
/// `wait` may return although no `notify` was meant for this waiter (a spurious wake-up, as
/// condition variables allow): check the condition in a loop, or use
/// [`Condition::wait_for`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Condition {
    lock: CondLock,
    state: CondState,
}

impl Condition {
    /// A condition with its own [`RLock`] (Python's default).
    pub fn new() -> Result<Condition, SyncError> {
        Ok(Condition {
            lock: CondLock::RLock(RLock::new()?),
            state: CondState(Region::create(Kind::Condition)?),
        })
    }

    /// A condition over an existing [`Lock`].
    pub fn with_lock(lock: Lock) -> Result<Condition, SyncError> {
        Ok(Condition {
            lock: CondLock::Lock(lock),
            state: CondState(Region::create(Kind::Condition)?),
        })
    }

    /// Takes the condition's lock.
    pub fn acquire(&self) -> Result<Acquired, SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.acquire(),
            CondLock::RLock(l) => l.acquire(),
        }
    }

    /// Takes the condition's lock, waiting at most `timeout` ([`SyncError::Timeout`]).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Acquired, SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.acquire_timeout(timeout),
            CondLock::RLock(l) => l.acquire_timeout(timeout),
        }
    }

    /// Takes the condition's lock if that needs no wait ([`SyncError::WouldBlock`] otherwise).
    pub fn try_acquire(&self) -> Result<Acquired, SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.try_acquire(),
            CondLock::RLock(l) => l.try_acquire(),
        }
    }

    /// Releases the condition's lock.
    pub fn release(&self) -> Result<(), SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.release(),
            CondLock::RLock(l) => l.release(),
        }
    }

    fn check_held(&self) -> Result<(), SyncError> {
        let held = match &self.lock {
            // A `Lock` records its holder's pid, not its thread: held by this process (Python
            // checks the thread too).
            CondLock::Lock(l) => l.0.state().word.load(Ordering::Acquire) & !WAITERS == me().pid,
            CondLock::RLock(l) => l.held_by_me(),
        };
        if held {
            Ok(())
        } else {
            Err(SyncError::NotOwner)
        }
    }

    /// Releases the lock, waits to be notified, takes the lock back. The lock must be held
    /// ([`SyncError::NotOwner`] otherwise).
    pub fn wait(&self) -> Result<(), SyncError> {
        self.wait_within(None).map(drop)
    }

    /// [`wait`](Self::wait) for at most `timeout`: `false` if the timeout passed first (the
    /// lock is held again either way).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, SyncError> {
        self.wait_within(Some(timeout))
    }

    fn wait_within(&self, timeout: Option<Duration>) -> Result<bool, SyncError> {
        self.check_held()?;
        let s = self.state.0.state();
        let deadline = timeout.and_then(crate::deadline_in);
        // Counted under the lock: a notify (which needs the lock) sees this waiter exactly
        // when it comes after this wait began; and only a notify after that (one that moved
        // `seq` past `arrived`) was meant for it.
        s.waiting.fetch_add(WAITER, Ordering::SeqCst);
        let arrived = s.seq.load(Ordering::SeqCst);
        let released = match &self.lock {
            CondLock::Lock(l) => l.release().map(|()| 0),
            CondLock::RLock(l) => l.release_save(),
        };
        let saved = match released {
            Ok(saved) => saved,
            Err(e) => {
                leave(s);
                return Err(e);
            }
        };
        let woke = take_grant(s, arrived, deadline);
        let _retaken = match &self.lock {
            CondLock::Lock(l) => l.acquire()?,
            CondLock::RLock(l) => l.acquire_restore(saved)?,
        };
        woke
    }

    /// Waits until `predicate` holds (checked with the lock held).
    pub fn wait_for(&self, predicate: impl FnMut() -> bool) -> Result<(), SyncError> {
        self.wait_for_within(predicate, None).map(drop)
    }

    /// [`wait_for`](Self::wait_for) for at most `timeout`; the predicate's last value.
    pub fn wait_for_timeout(
        &self,
        predicate: impl FnMut() -> bool,
        timeout: Duration,
    ) -> Result<bool, SyncError> {
        self.wait_for_within(predicate, Some(timeout))
    }

    fn wait_for_within(
        &self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, SyncError> {
        let deadline = timeout.and_then(crate::deadline_in);
        loop {
            if predicate() {
                return Ok(true);
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(predicate()),
                },
                None => None,
            };
            self.wait_within(left)?;
        }
    }

    /// Wakes up to `n` of the waiters (fewer if fewer wait), as Python's: it grants `n`
    /// wake-ups, each taken by one waiter of those waiting now (a waiter that starts waiting
    /// later cannot take them). The lock must be held.
    ///
    /// Grants are not labelled with their notify, so while an earlier one is still untaken
    /// (a woken waiter has not run yet, or died waiting) a waiter could take it in place of
    /// the one it was meant for. So a notify that finds one untaken wakes every waiter: more
    /// than `n` (spurious wake-ups, which CPython's documentation allows and
    /// [`Condition::wait_for`] absorbs), never a waiter missing its notify. A dead waiter's
    /// untaken grant makes every later notify wake all. A notify never waits for a waiter, so
    /// a dead one cannot hang it.
    pub fn notify(&self, n: u32) -> Result<(), SyncError> {
        self.check_held()?;
        let s = self.state.0.state();
        let mut cur = s.waiting.load(Ordering::SeqCst);
        let granted = loop {
            let (waiters, grants) = (cur >> 32, cur & GRANTS);
            let grant = if grants > 0 {
                waiters.saturating_sub(grants)
            } else {
                u64::from(n).min(waiters)
            };
            if grant == 0 {
                return Ok(());
            }
            match s.waiting.compare_exchange_weak(
                cur,
                cur + grant,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break grant,
                Err(now) => cur = now,
            }
        };
        // After the grant: a waiter that read `seq` before this bump and saw no grant is in,
        // or about to enter, its futex wait on the old value, which this bump ends.
        s.seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&s.seq, u32::try_from(granted).unwrap_or(u32::MAX));
        Ok(())
    }

    /// Wakes every waiter. The lock must be held.
    pub fn notify_all(&self) -> Result<(), SyncError> {
        self.notify(u32::MAX)
    }
}

/// A condition waiter's wait for a grant (see [`Condition::notify`]), once its lock is
/// released: `true` if it took one, `false` if `deadline` passed first. Only a grant made
/// after the waiter arrived (`seq` moved past `arrived`) is its to take: a waiter that comes
/// back to wait at once must not take the grant of one that was woken with it and has not
/// run yet. A grant that arrives with the deadline is still taken, so none is left behind.
fn take_grant(s: &Shared, arrived: u32, deadline: Option<Instant>) -> Result<bool, SyncError> {
    loop {
        // `seq` before `waiting` (both SeqCst): a notify whose grant this look misses bumps
        // `seq` after it, so the futex wait below returns at once or is woken.
        let seq = s.seq.load(Ordering::SeqCst);
        let cur = s.waiting.load(Ordering::SeqCst);
        let take = seq != arrived && cur & GRANTS > 0;
        let next = if take {
            cur - WAITER - 1
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            // Without a grant of its own, grants <= waiters - 1 still holds.
            cur.saturating_sub(WAITER)
        } else {
            if let Err(e) = futex_wait(&s.seq, seq, deadline) {
                leave(s);
                return Err(io(e));
            }
            continue;
        };
        if s.waiting
            .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Ok(take);
        }
    }
}

/// A condition waiter that gives up (an error) stops being counted.
fn leave(s: &Shared) {
    let mut cur = s.waiting.load(Ordering::SeqCst);
    loop {
        let waiters = (cur >> 32).saturating_sub(1);
        let next = (waiters << 32) | (cur & GRANTS).min(waiters);
        match s
            .waiting
            .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}
