//! How one side waits for the other (see "Waiting" in the module documentation): an adaptive
//! spin, a few yields, then a sleep on a shared futex; and the wake-ups that pair with that
//! sleep without a system call on the fast path.
//!
//! Under `--cfg loom` there is no clock: a wait does not spin (the spin only looks at the
//! ring more often before the same sleep) and yields exactly [`YIELDS`] times, so that every
//! run of a model takes the same steps, and the futex is the facade's model.

use crate::loom::sync::atomic::{AtomicU32, Ordering, fence};
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use crate::loom::{sys, yield_now};
use crate::transport::YIELD_FOR;

/// Spinning budget bounds. On two cores a long spin steals the very CPU the peer needs.
const SPIN_MIN: Duration = Duration::from_micros(2);
const SPIN_MAX: Duration = Duration::from_micros(20);
/// After this many waits that ended asleep in a row, spin the full budget once, to notice
/// that the peer became fast again.
const PROBE_EVERY: u32 = 16;
/// `spin_loop` hints between two looks at the ring.
const SPINS_PER_CHECK: u32 = 8;
/// `yield_now` calls between spinning and sleeping, at least (and for [`YIELD_FOR`]).
const YIELDS: u32 = 2;
/// The longest single futex sleep when a deadline is far away (the loop sleeps again).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Wakes the sleeper announced in `word`, if any. Called after publishing a position.
pub(super) fn wake_if_waiting(word: &AtomicU32) {
    // The SeqCst fence pairs with the one in `block_on` (Dekker's pattern): we stored the new
    // position and then load the flag; the sleeper stored the flag and then loads the
    // position. With a SeqCst fence between the store and the load on both sides, at least one
    // of us sees the other's store: either we see the flag and wake it, or it sees our
    // position and does not sleep. Without the fences both loads could read stale values
    // (store buffering) and the wake-up would be lost.
    fence(Ordering::SeqCst);
    // The plain load keeps the fast path free of a locked instruction; the swap makes sure
    // that only one waker pays for the system call.
    if word.load(Ordering::Relaxed) != 0 && word.swap(0, Ordering::Relaxed) != 0 {
        sys::futex_wake(word, 1);
    }
}

/// Wakes whoever sleeps on `word`, unconditionally (closing and death: rare, and must not
/// depend on a flag the peer could have cleared). The caller has just set a state bit with
/// a SeqCst operation, which orders it before the swap below; the sleeper stored its flag
/// and fenced before loading the state; so either it sees the bit, or the swap sees its flag
/// and its `futex_wait(word, 1)` finds 0 and returns at once, or it is woken.
pub(super) fn wake_all(word: &AtomicU32) {
    word.swap(0, Ordering::SeqCst);
    sys::futex_wake(word, u32::MAX);
}

/// Whether spinning can help. With one CPU the peer cannot run while we spin. With two, a
/// pool has more threads ready to run than CPUs (the caller, two workers, their readers), and
/// a spinner holds the CPU that the thread it waits for needs, so there the round trip is
/// shortest with no spinning at all (the two `yield_now`s before sleeping remain); large and
/// small Pipe messages run as fast either way.
pub(super) fn spinning_pays() -> bool {
    static CPUS: AtomicUsize = AtomicUsize::new(0);
    let mut cpus = CPUS.load(Ordering::Relaxed);
    if cpus == 0 {
        cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        CPUS.store(cpus, Ordering::Relaxed);
    }
    cpus > 2
}

/// The adaptive spin budget of one side.
pub(super) struct Spinner {
    budget: Duration,
    /// Waits in a row that ended in a futex sleep.
    misses: u32,
    /// Set by the owner: the budget of every wait, whatever the machine.
    pub(super) fixed: Option<Duration>,
}

impl Spinner {
    pub(super) fn new() -> Spinner {
        Spinner {
            budget: SPIN_MAX / 2,
            misses: 0,
            fixed: None,
        }
    }

    fn budget(&self) -> Duration {
        if cfg!(loom) {
            Duration::ZERO
        } else if let Some(fixed) = self.fixed {
            fixed
        } else if !spinning_pays() {
            Duration::ZERO
        } else if self.misses % PROBE_EVERY == PROBE_EVERY - 1 {
            SPIN_MAX
        } else {
            self.budget
        }
    }

    /// The wait ended while spinning or yielding, after `waited`.
    fn hit(&mut self, waited: Duration) {
        self.misses = 0;
        self.budget = self.budget.max(waited.saturating_mul(2)).min(SPIN_MAX);
    }

    /// The wait had to sleep.
    fn miss(&mut self) {
        self.misses = self.misses.wrapping_add(1);
        self.budget = (self.budget / 2).max(SPIN_MIN);
    }
}

/// Waits until `check` gives a value (or an error): spin, yield, then sleep on the futex
/// `word`, until `deadline`.
///
/// `check` must look at the shared state afresh each time; it is called again after the
/// "asleep" flag is published, so that an event between the last look and the flag is not
/// missed (see `wake_if_waiting`).
pub(super) fn block_on<T, E: From<io::Error>>(
    spinner: &mut Spinner,
    word: &AtomicU32,
    deadline: Option<Instant>,
    timeout: fn() -> E,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<T, E> {
    if let Some(ready) = check()? {
        return Ok(ready);
    }
    let start = Instant::now();
    if deadline.is_some_and(|deadline| start >= deadline) {
        return Err(timeout());
    }

    let budget = spinner.budget();
    if !budget.is_zero() {
        let until = deadline.map_or(start + budget, |deadline| deadline.min(start + budget));
        loop {
            for _ in 0..SPINS_PER_CHECK {
                std::hint::spin_loop();
            }
            if let Some(ready) = check()? {
                spinner.hit(start.elapsed());
                return Ok(ready);
            }
            if Instant::now() >= until {
                break;
            }
        }
    }
    let yield_until = start + YIELD_FOR;
    let yield_until = deadline.map_or(yield_until, |deadline| deadline.min(yield_until));
    let mut yields = 0;
    while yields < YIELDS || (!cfg!(loom) && Instant::now() < yield_until) {
        yields += 1;
        yield_now();
        if let Some(ready) = check()? {
            spinner.hit(start.elapsed());
            return Ok(ready);
        }
    }
    spinner.miss();

    loop {
        // Announce the sleep, then look again (the SeqCst fence pairs with the waker's).
        //
        // Under loom the announcement is a swap: loom's modification order is partial, so
        // after the waker's swap(0) cleared our previous announcement, loom lets the waker's
        // next load read its own 0 rather than this 1, a lost wake-up that C++ rules out (the
        // swap sits right after the 1 it read in the flag's modification order, so this
        // later store of ours follows it, and the fences then make the waker see it). A swap
        // here costs W5 a third of its rate (the receiver sleeps on most messages), so the
        // real build keeps the store.
        #[cfg(not(loom))]
        word.store(1, Ordering::Relaxed);
        #[cfg(loom)]
        word.swap(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        match check() {
            Ok(None) => {}
            Ok(Some(ready)) => {
                word.store(0, Ordering::Relaxed);
                return Ok(ready);
            }
            Err(err) => {
                word.store(0, Ordering::Relaxed);
                return Err(err);
            }
        }
        let sleep = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left.min(MAX_SLEEP)),
                _ => {
                    word.store(0, Ordering::Relaxed);
                    return Err(timeout());
                }
            },
        };
        // Shared futex (no PRIVATE flag): the waker may be another process. The kernel
        // sleeps only if the word still holds 1, atomically with queueing us, so a waker that
        // cleared it before we got here makes this return at once (EAGAIN).
        match sys::futex_wait(word, 1, sleep) {
            Ok(_) => {}
            Err(err) => {
                word.store(0, Ordering::Relaxed);
                return Err(err.into());
            }
        }
    }
}
