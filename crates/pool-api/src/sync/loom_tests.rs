//! Loom models of the primitives (`cargo xtask loom`): every interleaving, up to the
//! preemption bound `LOOM_MAX_PREEMPTIONS`, of the real code of `raw.rs`, `lock.rs`,
//! `condition.rs`, `semaphore.rs`, `event.rs` and `barrier.rs`, over loom's atomics and the
//! modelled futex of `crate::loom`. Each loom thread stands for a process
//! (`model::act_as`); a process dies by `model::exit` and returning. A lost wake-up shows as
//! a loom deadlock (a sleeper nobody wakes: timed waits time out only when a process dies), a missing happens-before as a loom data race on the `UnsafeCell` the lock guards.

use std::time::Duration;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use super::{Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, SyncError};
use crate::loom::model;

/// Data guarded by a primitive: loom reports a data race if two holders' accesses are not
/// ordered by happens-before.
struct Guarded(UnsafeCell<u32>);

// SAFETY: every access is made under the primitive the model checks; loom checks that.
unsafe impl Sync for Guarded {}

impl Guarded {
    fn new() -> Arc<Guarded> {
        Arc::new(Guarded(UnsafeCell::new(0)))
    }

    fn bump(&self) -> u32 {
        // SAFETY: see the impl of Sync (checked by loom).
        self.0.with_mut(|p| unsafe {
            *p += 1;
            *p
        })
    }

    fn get(&self) -> u32 {
        // SAFETY: as above.
        self.0.with(|p| unsafe { *p })
    }
}

/// Long enough never to pass: the model, not the clock, lets time pass.
const FOREVER: Duration = Duration::from_secs(3600);

fn spawn_as(pid: u32, tid: u32, f: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        model::act_as(pid, tid);
        f()
    })
}

/// Two processes take and release the lock: never both inside, and the one that sleeps is
/// woken (a lost wake-up is a deadlock: timed waits do not time out here).
#[test]
fn lock_mutual_exclusion_and_no_lost_wakeup() {
    loom::model(|| {
        let lock = Lock::new().unwrap();
        let data = Guarded::new();
        let threads: Vec<_> = (1..=2)
            .map(|pid| {
                let (lock, data) = (lock.clone(), data.clone());
                spawn_as(pid, pid, move || {
                    let taken = lock.acquire().unwrap();
                    assert_eq!(taken.previous_owner_died, None);
                    data.bump();
                    lock.release().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(data.get(), 2);
        assert_eq!(lock.try_acquire().unwrap().previous_owner_died, None);
    });
}

/// Process 1 takes the lock and dies holding it; processes 2 and 3 want it, then the main
/// one. The dead owner's lock is taken over exactly once, by one taker (told who died),
/// and never held by two.
#[test]
fn lock_dead_owner_taken_over_by_exactly_one() {
    loom::model(|| {
        let lock = Lock::new().unwrap();
        let data = Guarded::new();
        let takeovers = Arc::new(loom::sync::atomic::AtomicU32::new(0));
        let dying = {
            let lock = lock.clone();
            spawn_as(1, 1, move || {
                let _ = lock.acquire().unwrap();
                model::exit();
            })
        };
        let waiters: Vec<_> = (2..=3)
            .map(|pid| {
                let (lock, data, takeovers) = (lock.clone(), data.clone(), takeovers.clone());
                spawn_as(pid, pid, move || {
                    let taken = lock.acquire().unwrap();
                    data.bump();
                    if let Some(dead) = taken.previous_owner_died {
                        assert_eq!(dead, 1);
                        takeovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    lock.release().unwrap();
                })
            })
            .collect();
        dying.join().unwrap();
        for t in waiters {
            t.join().unwrap();
        }
        let last = lock.try_acquire().unwrap();
        let total = takeovers.load(std::sync::atomic::Ordering::Relaxed)
            + u32::from(last.previous_owner_died.is_some());
        assert_eq!(total, 1, "the dead owner's lock is taken over exactly once");
        assert_eq!(data.get(), 2);
    });
}

/// Two threads of one process: each takes the RLock twice; only the owner thread may
/// release; each level counts; at the end it is free.
#[test]
fn rlock_counts() {
    loom::model(|| {
        let lock = RLock::new().unwrap();
        let data = Guarded::new();
        let threads: Vec<_> = (1..=2)
            .map(|tid| {
                let (lock, data) = (lock.clone(), data.clone());
                spawn_as(7, tid, move || {
                    let _ = lock.acquire().unwrap();
                    let _ = lock.acquire().unwrap();
                    data.bump();
                    lock.release().unwrap();
                    // Still held at depth 1: nobody else got in.
                    data.bump();
                    lock.release().unwrap();
                    assert!(matches!(lock.release(), Err(SyncError::NotOwner)));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(data.get(), 4);
        let _ = lock.try_acquire().unwrap();
        lock.release().unwrap();
    });
}

/// Two processes wait on a condition; a third notifies one at a time, once per token. No
/// wait returns before a notify meant for it (the k-th return sees at least k notifies: a
/// `notify(1)` wakes at most one), and none sleeps through its notify (a deadlock).
///
/// Three processes, each `wait` a lock release, a futex sleep and a lock retake: at bound 3
/// this model alone runs for many minutes, so it is capped at [`CONDITION_BOUND`].
#[test]
fn condition_notify_wakes_at_most_n_and_none_sleeps_through() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(
        model
            .preemption_bound
            .map_or(CONDITION_BOUND, |b| b.min(CONDITION_BOUND)),
    );
    model.check(|| {
        let cond = Condition::with_lock(Lock::new().unwrap()).unwrap();
        // (waiters arrived, notifies made, waits returned), under the condition's lock.
        let state = Arc::new(Guarded3::default());
        let waiters: Vec<_> = (1..=2)
            .map(|pid| {
                let (cond, state) = (cond.clone(), state.clone());
                spawn_as(pid, pid, move || {
                    let _ = cond.acquire().unwrap();
                    state.with(|s| s.0 += 1);
                    let granted = cond.wait_timeout(FOREVER).unwrap();
                    state.with(|s| {
                        s.2 += 1;
                        assert!(s.2 <= s.1, "a wait returned without a notify for it");
                    });
                    assert!(granted, "woken by a notify, not by time");
                    cond.release().unwrap();
                })
            })
            .collect();
        spawn_as(3, 3, move || {
            for n in 1..=2 {
                // Notify once every waiter is counted (or the one left, for the second).
                loop {
                    let _ = cond.acquire().unwrap();
                    if state.with(|s| s.0 == 2) {
                        break;
                    }
                    cond.release().unwrap();
                    thread::yield_now();
                }
                state.with(|s| s.1 = n);
                cond.notify(1).unwrap();
                cond.release().unwrap();
            }
        })
        .join()
        .unwrap();
        for t in waiters {
            t.join().unwrap();
        }
    });
}

/// The highest preemption bound of the condition model.
const CONDITION_BOUND: usize = 2;

/// Counters guarded by a lock the model holds around each `with`.
#[derive(Default)]
struct Guarded3(UnsafeCell<(u32, u32, u32)>);

// SAFETY: accessed only with the model's lock held (checked by loom).
unsafe impl Sync for Guarded3 {}

impl Guarded3 {
    fn with<R>(&self, f: impl FnOnce(&mut (u32, u32, u32)) -> R) -> R {
        // SAFETY: see the impl of Sync.
        self.0.with_mut(|p| f(unsafe { &mut *p }))
    }
}

/// A semaphore of one unit between two processes: never both inside; the one that sleeps
/// is woken by the release; the count ends where it began.
#[test]
fn semaphore_counts_and_wakes() {
    loom::model(|| {
        let sem = Semaphore::new(1).unwrap();
        let data = Guarded::new();
        let threads: Vec<_> = (1..=2)
            .map(|pid| {
                let (sem, data) = (sem.clone(), data.clone());
                spawn_as(pid, pid, move || {
                    sem.acquire().unwrap();
                    data.bump();
                    sem.release().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(sem.value(), 1);
        assert_eq!(data.get(), 2);
    });
}

/// A bounded semaphore at zero: one process waits for a unit another releases (no lost
/// wake-up); a release above the bound is refused, whatever the interleaving.
#[test]
fn bounded_semaphore_counts() {
    loom::model(|| {
        let sem = BoundedSemaphore::new(1).unwrap();
        sem.acquire().unwrap();
        let waiter = {
            let sem = sem.clone();
            spawn_as(1, 1, move || sem.acquire().unwrap())
        };
        let releaser = {
            let sem = sem.clone();
            spawn_as(2, 2, move || sem.release().unwrap())
        };
        waiter.join().unwrap();
        releaser.join().unwrap();
        assert_eq!(sem.value(), 0);
        sem.release().unwrap();
        assert!(matches!(sem.release(), Err(SyncError::TooManyReleases)));
        assert_eq!(sem.value(), 1);
    });
}

/// A waiter and a setter that sets, clears and sets again: the waiter wakes (it may see
/// either set); a wait after the last set returns at once.
#[test]
fn event_set_clear_wait() {
    loom::model(|| {
        let event = Event::new().unwrap();
        let waiter = {
            let event = event.clone();
            spawn_as(1, 1, move || event.wait().unwrap())
        };
        let setter = {
            let event = event.clone();
            spawn_as(2, 2, move || {
                event.set();
                event.clear();
                event.set();
            })
        };
        waiter.join().unwrap();
        setter.join().unwrap();
        assert!(event.is_set());
        assert!(event.wait_timeout(FOREVER).unwrap());
    });
}

/// Two parties pass a barrier twice: each round gives the indices 0 and 1 once, and nobody
/// passes round 2 before both arrived in it.
#[test]
fn barrier_generations() {
    loom::model(|| {
        let barrier = Barrier::new(2).unwrap();
        let threads: Vec<_> = (1..=2)
            .map(|pid| {
                let barrier = barrier.clone();
                thread::spawn(move || {
                    model::act_as(pid, pid);
                    [barrier.wait().unwrap(), barrier.wait().unwrap()]
                })
            })
            .collect();
        let got: Vec<[u32; 2]> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for round in 0..2 {
            let mut indices = [got[0][round], got[1][round]];
            indices.sort_unstable();
            assert_eq!(indices, [0, 1], "round {round}: each index once");
        }
        assert!(!barrier.broken());
        assert_eq!(barrier.n_waiting(), 0);
    });
}

/// A party waits while another aborts the barrier: the waiter gets `BrokenBarrier` (it does
/// not sleep through the abort), and so does every later wait.
#[test]
fn barrier_abort() {
    loom::model(|| {
        let barrier = Barrier::new(2).unwrap();
        let waiter = {
            let barrier = barrier.clone();
            spawn_as(1, 1, move || {
                assert!(matches!(barrier.wait(), Err(SyncError::BrokenBarrier)));
            })
        };
        let aborter = {
            let barrier = barrier.clone();
            spawn_as(2, 2, move || barrier.abort().unwrap())
        };
        waiter.join().unwrap();
        aborter.join().unwrap();
        assert!(barrier.broken());
        assert!(matches!(barrier.wait(), Err(SyncError::BrokenBarrier)));
    });
}
