//! "Wake only a sleeper": a count of the threads sleeping on a condition variable, so that a
//! waker makes the futex call of `notify_all` (a system call even with nobody asleep) only
//! when someone sleeps. The job's callers use it (`job.rs`: [`JobShared::wake`] and its
//! sleep); it is its own type so that the loom model below checks exactly that code.
//!
//! The contract: a sleeper counts itself while it holds the lock it sleeps with, after it
//! found nothing to do; a waker changes the state under that lock, releases it, then calls
//! [`Sleepers::wake`]. Either the sleeper's look came after the waker's change (it sees it and
//! does not sleep), or its count came before the waker took the lock, so the waker's load
//! (after the lock, which orders them) sees it: a count of zero means nobody needs the wake.
//!
//! [`JobShared::wake`]: super::job::JobShared::wake

use std::time::Duration;

use crate::loom::sync::atomic::{AtomicU32, Ordering};
use crate::loom::sync::{Condvar, MutexGuard};

/// Threads asleep on one condition variable (see the module documentation).
#[derive(Debug)]
pub(crate) struct Sleepers(AtomicU32);

impl Sleepers {
    pub(crate) fn new() -> Sleepers {
        Sleepers(AtomicU32::new(0))
    }

    /// Sleeps on `cv` with `guard` (the lock the state is changed under) until woken or
    /// `timeout`, counted meanwhile.
    pub(crate) fn sleep<'a, T>(
        &self,
        cv: &Condvar,
        guard: MutexGuard<'a, T>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, T> {
        // Counted while the lock is held, so a waker that changes the state under the lock
        // afterwards sees the count.
        self.0.fetch_add(1, Ordering::Relaxed);
        let guard = match timeout {
            None => cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                cv.wait_timeout(guard, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        self.0.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// Wakes every sleeper of `cv`, if there is one; called after the state changed under
    /// the lock, with the lock released.
    pub(crate) fn wake(&self, cv: &Condvar) {
        if self.0.load(Ordering::Relaxed) > 0 {
            cv.notify_all();
        }
    }
}

/// The model: two callers sleep until their news arrives; two wakers each bring news under
/// the lock and then wake. No caller sleeps through the news meant for it (a loom deadlock)
/// although the wakers skip `notify_all` whenever the count says nobody sleeps.
#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::Arc;
    use loom::thread;

    use super::Sleepers;
    use crate::loom::sync::{Condvar, Mutex};

    #[test]
    fn no_wake_up_missed_when_the_count_says_nobody_sleeps() {
        loom::model(|| {
            let shared = Arc::new((Mutex::new([false; 2]), Condvar::new(), Sleepers::new()));
            let callers: Vec<_> = (0..2)
                .map(|i| {
                    let shared = shared.clone();
                    thread::spawn(move || {
                        let (state, cv, sleepers) = &*shared;
                        let mut news = state.lock().unwrap();
                        while !news[i] {
                            news = sleepers.sleep(cv, news, None);
                        }
                    })
                })
                .collect();
            for i in 0..2 {
                let shared = shared.clone();
                thread::spawn(move || {
                    let (state, cv, sleepers) = &*shared;
                    state.lock().unwrap()[i] = true;
                    sleepers.wake(cv);
                });
            }
            for caller in callers {
                caller.join().unwrap();
            }
        });
    }
}
