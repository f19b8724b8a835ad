//! [`Event`]: a flag in shared memory that processes can wait for.
//!
//! It is its own file because it is a primitive of its own: one futex word, no lock.

use crate::loom::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::loom::futex::{futex_wait, futex_wake};

use super::error::{SyncError, io};
use super::raw::{Kind, Region, handle_serde};

/// Python's `multiprocessing.Event`: a flag that processes can wait for.
#[derive(Clone, Debug)]
pub struct Event(Arc<Region>);
handle_serde!(Event, Kind::Event);

impl Event {
    /// A new, cleared event.
    pub fn new() -> Result<Event, SyncError> {
        Region::create(Kind::Event).map(Event)
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let s = self.0.state();
        s.word.store(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake(&s.word, u32::MAX);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.0.state().word.store(0, Ordering::Release);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.0.state().word.load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set.
    pub fn wait(&self) -> Result<(), SyncError> {
        self.wait_within(None).map(drop)
    }

    /// Waits until the flag is set, at most `timeout`; whether it is set.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, SyncError> {
        self.wait_within(Some(timeout))
    }

    fn wait_within(&self, timeout: Option<Duration>) -> Result<bool, SyncError> {
        let s = self.0.state();
        let deadline = timeout.and_then(crate::deadline_in);
        while !self.is_set() {
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            // A word other than 0 means set (a scribbling process cannot make us spin).
            let woke = futex_wait(&s.word, 0, deadline);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            if !woke.map_err(io)? {
                return Ok(self.is_set());
            }
        }
        Ok(true)
    }
}
