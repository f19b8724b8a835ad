//! [`Barrier`]: `parties` processes wait until all have arrived, with an optional action
//! (a function, stored encoded in the barrier's region at [`ACTION_OFFSET`]) run by the last
//! to arrive.
//!
//! It is its own file because it is a primitive of its own: a round counter and a
//! generation under the region's lock word (`raw.rs`).

use crate::loom::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::loom::futex::{futex_wait, futex_wake};

use super::error::{SyncError, io};
use super::raw::{Kind, RawLock, Region, handle_serde};

/// Where a barrier's encoded action lives in its region.
const ACTION_OFFSET: usize = 1024;

/// Python's `multiprocessing.Barrier`: `parties` processes (or threads) wait until all have
/// arrived; then all go on. `wait` returns each a distinct index; an optional action runs
/// once per round, in the last process to arrive. A timeout, `abort`, a `reset` during a
/// round, or a panicking action breaks it ([`SyncError::BrokenBarrier`]) until `reset`.
#[derive(Clone, Debug)]
pub struct Barrier(Arc<Region>);
handle_serde!(Barrier, Kind::Barrier);

impl Barrier {
    /// A barrier for `parties` (at least 1).
    pub fn new(parties: u32) -> Result<Barrier, SyncError> {
        if parties == 0 {
            return Err(SyncError::InvalidArgument(
                "a barrier needs at least one party",
            ));
        }
        let r = Region::create(Kind::Barrier)?;
        r.state().parties.store(parties, Ordering::Release);
        Ok(Barrier(r))
    }

    /// A barrier whose `action` (a function, or a closure that captures nothing) runs once per
    /// round, in the process that arrives last, before the others go on.
    pub fn with_action(parties: u32, action: fn()) -> Result<Barrier, SyncError> {
        let barrier = Barrier::new(parties)?;
        let call = crate::task::Call::new_nullary(action)
            .map_err(|e| SyncError::Io(std::sync::Arc::new(std::io::Error::other(e))))?;
        let bytes = postcard::to_stdvec(&call)
            .map_err(|e| SyncError::Io(std::sync::Arc::new(std::io::Error::other(e))))?;
        assert!(
            bytes.len() < 4096 - ACTION_OFFSET,
            "an encoded call is a few bytes"
        );
        // SAFETY: the region is 4096 bytes and private to this process until the handle is
        // shared, which happens-after this write (descriptor passing or process start).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                barrier.0.region.as_ptr().add(ACTION_OFFSET),
                bytes.len(),
            )
        };
        barrier
            .0
            .state()
            .action_len
            .store(bytes.len() as u32, Ordering::Release);
        Ok(barrier)
    }

    fn lock(&self) -> RawLock<'_> {
        let s = self.0.state();
        RawLock {
            word: &s.word,
            record: &s.owner_record,
        }
    }

    fn run_action(&self) -> Result<(), String> {
        let len =
            (self.0.state().action_len.load(Ordering::Acquire) as usize).min(4096 - ACTION_OFFSET);
        if len == 0 {
            return Ok(());
        }
        let mut bytes = vec![0u8; len];
        // SAFETY: `len` bytes at `ACTION_OFFSET` lie inside the 4096-byte region (clamped).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.0.region.as_ptr().add(ACTION_OFFSET),
                bytes.as_mut_ptr(),
                len,
            )
        };
        let call: crate::task::Call = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
        call.run(&[], &mut Vec::new())
    }

    /// Waits until every party arrived; this party's arrival index, from 0 to `parties - 1`.
    pub fn wait(&self) -> Result<u32, SyncError> {
        self.wait_within(None)
    }

    /// [`wait`](Self::wait) for at most `timeout`: a timeout breaks the barrier for every
    /// party of the round ([`SyncError::BrokenBarrier`]), as in Python.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u32, SyncError> {
        self.wait_within(Some(timeout))
    }

    fn wait_within(&self, timeout: Option<Duration>) -> Result<u32, SyncError> {
        let s = self.0.state();
        let deadline = timeout.and_then(crate::deadline_in);
        let lock = self.lock();
        let _held = lock.acquire(None)?;
        if s.broken.load(Ordering::Relaxed) != 0 {
            lock.release()?;
            return Err(SyncError::BrokenBarrier);
        }
        let generation = s.seq.load(Ordering::Relaxed);
        let index = s.count.fetch_add(1, Ordering::Relaxed);
        if index + 1 >= s.parties.load(Ordering::Relaxed) {
            let outcome = self.run_action();
            if outcome.is_err() {
                s.broken.store(1, Ordering::Relaxed);
                s.broken_generation
                    .store(generation.wrapping_add(1), Ordering::Relaxed);
            }
            s.count.store(0, Ordering::Relaxed);
            s.seq.store(generation.wrapping_add(1), Ordering::Release);
            lock.release()?;
            futex_wake(&s.seq, u32::MAX);
            return outcome
                .map(|()| index)
                .map_err(|_| SyncError::BrokenBarrier);
        }
        lock.release()?;
        loop {
            let woke = futex_wait(&s.seq, generation, deadline).map_err(io)?;
            if s.seq.load(Ordering::Acquire) != generation {
                // The round ended: well, or broken (reset, abort, a failed action).
                return if s.broken_generation.load(Ordering::Acquire) == generation.wrapping_add(1)
                {
                    Err(SyncError::BrokenBarrier)
                } else {
                    Ok(index)
                };
            }
            if s.broken.load(Ordering::Acquire) != 0 {
                return Err(SyncError::BrokenBarrier);
            }
            if !woke {
                // Timed out: the barrier breaks for everyone in this round, as in Python.
                self.break_round()?;
                return Err(SyncError::BrokenBarrier);
            }
        }
    }

    /// Ends the current round broken.
    fn break_round(&self) -> Result<(), SyncError> {
        let s = self.0.state();
        let lock = self.lock();
        let _held = lock.acquire(None)?;
        let generation = s.seq.load(Ordering::Relaxed);
        s.broken.store(1, Ordering::Relaxed);
        if s.count.load(Ordering::Relaxed) > 0 {
            s.broken_generation
                .store(generation.wrapping_add(1), Ordering::Relaxed);
            s.count.store(0, Ordering::Relaxed);
            s.seq.store(generation.wrapping_add(1), Ordering::Release);
        }
        lock.release()?;
        futex_wake(&s.seq, u32::MAX);
        Ok(())
    }

    /// Breaks the barrier: waiters and later `wait`s get [`SyncError::BrokenBarrier`] until
    /// [`Barrier::reset`].
    pub fn abort(&self) -> Result<(), SyncError> {
        self.break_round()
    }

    /// Makes the barrier usable again; parties waiting in the current round get
    /// [`SyncError::BrokenBarrier`].
    pub fn reset(&self) -> Result<(), SyncError> {
        self.break_round()?;
        let s = self.0.state();
        let lock = self.lock();
        let _held = lock.acquire(None)?;
        s.broken.store(0, Ordering::Relaxed);
        lock.release()
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.0.state().parties.load(Ordering::Relaxed)
    }

    /// Parties waiting now.
    pub fn n_waiting(&self) -> u32 {
        self.0.state().count.load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.0.state().broken.load(Ordering::Acquire) != 0
    }
}
