//! The facade under `--cfg loom`: loom's atomics (with the SeqCst strengthening described in
//! [`sync::atomic`]), and a futex modelled with loom's `Mutex` and `Condvar`.

pub use ::loom::hint::spin_loop;
pub use ::loom::thread;
pub use ::loom::thread::yield_now;

/// Loom's atomics, wrapped.
pub mod sync {
    /// Loom's atomics, each access of which is a point where loom may switch threads.
    ///
    /// Loom models `SeqCst` fences but not `SeqCst` accesses (it treats them as
    /// `AcqRel`: `loom::rt::thread::Set::seq_cst` is a no-op), so a store-buffering protocol
    /// written with `SeqCst` stores and loads (a waker stores a flag and loads a sleeper
    /// count; a sleeper counts itself and loads the flag) would be reported broken although
    /// C++20 and every CPU forbid the outcome. These wrappers restore it: a `SeqCst` load
    /// that follows a `SeqCst` store or read-modify-write of the same thread (with no `SeqCst`
    /// fence between) is preceded by a `SeqCst` fence. A `Relaxed` or `Release` store, or a
    /// `Relaxed` or `Acquire` load, gets no fence: the store-buffering outcome stays possible
    /// and loom finds it. (The fence also orders the thread's accesses between the two, which
    /// is stronger than C++: a bug that needs one of those to be `SeqCst` is not found.)
    pub mod atomic {
        use std::cell::Cell;
        pub use std::sync::atomic::Ordering;
        use std::sync::atomic::Ordering::SeqCst;

        ::loom::thread_local! {
            /// A `SeqCst` store of this thread not yet followed by a `SeqCst` fence.
            static PENDING: Cell<bool> = Cell::new(false);
        }

        /// A fence; a `SeqCst` one settles a pending `SeqCst` store.
        pub fn fence(order: Ordering) {
            ::loom::sync::atomic::fence(order);
            if order == SeqCst {
                PENDING.with(|p| p.set(false));
            }
        }

        fn before_load(order: Ordering) {
            if order == SeqCst && PENDING.with(|p| p.replace(false)) {
                ::loom::sync::atomic::fence(SeqCst);
            }
        }

        fn after_store(order: Ordering) {
            if order == SeqCst {
                PENDING.with(|p| p.set(true));
            }
        }

        macro_rules! atomic {
            ($name:ident, $t:ty) => {
                /// A loom atomic, see the module documentation.
                #[derive(Debug)]
                pub struct $name(::loom::sync::atomic::$name);

                #[allow(missing_docs)]
                impl $name {
                    pub fn new(v: $t) -> Self {
                        Self(::loom::sync::atomic::$name::new(v))
                    }
                    pub fn load(&self, order: Ordering) -> $t {
                        before_load(order);
                        self.0.load(order)
                    }
                    pub fn store(&self, v: $t, order: Ordering) {
                        self.0.store(v, order);
                        after_store(order);
                    }
                    pub fn swap(&self, v: $t, order: Ordering) -> $t {
                        let r = self.0.swap(v, order);
                        after_store(order);
                        r
                    }
                    pub fn compare_exchange(
                        &self,
                        current: $t,
                        new: $t,
                        success: Ordering,
                        failure: Ordering,
                    ) -> Result<$t, $t> {
                        let r = self.0.compare_exchange(current, new, success, failure);
                        match r {
                            Ok(_) => after_store(success),
                            Err(_) => before_load(failure),
                        }
                        r
                    }
                    pub fn compare_exchange_weak(
                        &self,
                        current: $t,
                        new: $t,
                        success: Ordering,
                        failure: Ordering,
                    ) -> Result<$t, $t> {
                        let r = self.0.compare_exchange_weak(current, new, success, failure);
                        match r {
                            Ok(_) => after_store(success),
                            Err(_) => before_load(failure),
                        }
                        r
                    }
                }
            };
            ($name:ident, $t:ty, int) => {
                atomic!($name, $t);

                #[allow(missing_docs)]
                impl $name {
                    pub fn fetch_add(&self, v: $t, order: Ordering) -> $t {
                        let r = self.0.fetch_add(v, order);
                        after_store(order);
                        r
                    }
                    pub fn fetch_sub(&self, v: $t, order: Ordering) -> $t {
                        let r = self.0.fetch_sub(v, order);
                        after_store(order);
                        r
                    }
                    pub fn fetch_or(&self, v: $t, order: Ordering) -> $t {
                        let r = self.0.fetch_or(v, order);
                        after_store(order);
                        r
                    }
                    pub fn fetch_and(&self, v: $t, order: Ordering) -> $t {
                        let r = self.0.fetch_and(v, order);
                        after_store(order);
                        r
                    }
                    pub fn fetch_update(
                        &self,
                        set_order: Ordering,
                        fetch_order: Ordering,
                        f: impl FnMut($t) -> Option<$t>,
                    ) -> Result<$t, $t> {
                        // It starts with a load.
                        before_load(fetch_order);
                        let r = self.0.fetch_update(set_order, fetch_order, f);
                        if r.is_ok() {
                            after_store(set_order);
                        }
                        r
                    }
                }
            };
        }

        atomic!(AtomicBool, bool);
        atomic!(AtomicU32, u32, int);
        atomic!(AtomicU64, u64, int);
        atomic!(AtomicUsize, usize, int);
    }
}

/// The OS layer with the futex replaced by [`futex`]'s model.
pub mod sys {
    pub use super::futex::{futex_wait, futex_wake};
    #[allow(unused_imports)]
    pub(crate) use crate::sys::*;
}

/// The futex as the models see it: `futex_wait(word, expected)` sleeps, atomically with
/// reading `*word == expected`, until a `futex_wake` of the same word picks it; a wait whose
/// word no longer holds `expected` returns at once. A sleeper nobody wakes is a loom
/// deadlock: that is how a lost wake-up shows. There are no spurious wake-ups.
///
/// Time does not pass by itself: a timed wait sleeps like an untimed one (a wait that relies
/// on its timeout to make progress is reported as a deadlock, which is stricter than the real
/// code needs: a lost wake-up hidden by a 50 ms slice is still a bug), until
/// [`end_timed_waits`] ends every timed wait then asleep with "timed out". The models call it
/// when a process dies, the one event a waiter's slice exists to notice.
pub mod futex {
    use std::io;
    use std::time::Duration;

    use ::loom::sync::{Condvar, Mutex};

    use super::sync::atomic::{AtomicU32, Ordering, fence};

    #[derive(Default)]
    struct Table {
        next: usize,
        /// Sleepers not yet woken: the word's address, the sleeper's ticket, whether timed.
        sleeping: Vec<(usize, usize, bool)>,
        /// Tickets whose wait timed out.
        timed_out: Vec<usize>,
    }

    ::loom::lazy_static! {
        static ref TABLE: Mutex<Table> = Mutex::new(Table::default());
        static ref WOKEN: Condvar = Condvar::new();
    }

    /// See the module documentation; `Ok(false)` only for a timeout.
    pub fn futex_wait(
        word: &AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
    ) -> io::Result<bool> {
        futex_wait_or(word, expected, timeout, |_| false)
    }

    /// [`futex_wait`], but a timed wait ends "timed out" at once if `passed(expected)` says,
    /// under the same lock as [`end_timed_waits`] (so no death falls between the look and
    /// the sleep).
    pub fn futex_wait_or(
        word: &AtomicU32,
        expected: u32,
        timeout: Option<Duration>,
        passed: impl FnOnce(u32) -> bool,
    ) -> io::Result<bool> {
        let addr = std::ptr::from_ref(word) as usize;
        let mut table = TABLE.lock().unwrap();
        // The kernel reads the word after a full barrier (`smp_mb` in `futex_wait_setup`).
        fence(Ordering::SeqCst);
        if word.load(Ordering::Relaxed) != expected {
            return Ok(true);
        }
        if timeout.is_some() && passed(expected) {
            return Ok(false);
        }
        let ticket = table.next;
        table.next += 1;
        table.sleeping.push((addr, ticket, timeout.is_some()));
        while table.sleeping.iter().any(|s| s.1 == ticket) {
            table = WOKEN.wait(table).unwrap();
        }
        if let Some(i) = table.timed_out.iter().position(|&t| t == ticket) {
            table.timed_out.swap_remove(i);
            return Ok(false);
        }
        Ok(true)
    }

    /// Wakes up to `n` sleepers of `word` (the longest asleep first).
    pub fn futex_wake(word: &AtomicU32, n: u32) {
        let addr = std::ptr::from_ref(word) as usize;
        let mut table = TABLE.lock().unwrap();
        let mut left = n;
        table.sleeping.retain(|&(a, _, _)| {
            if a == addr && left > 0 {
                left -= 1;
                false
            } else {
                true
            }
        });
        if left != n {
            WOKEN.notify_all();
        }
    }

    /// Ends every timed wait asleep now: each returns "timed out".
    pub fn end_timed_waits() {
        let mut table = TABLE.lock().unwrap();
        let Table {
            sleeping,
            timed_out,
            ..
        } = &mut *table;
        sleeping.retain(|&(_, ticket, timed)| {
            if timed {
                timed_out.push(ticket);
            }
            !timed
        });
        WOKEN.notify_all();
    }
}
