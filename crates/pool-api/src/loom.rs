//! What the shared-memory protocols of this crate (`sync/`) and the Pool's "wake only a
//! sleeper" counters (`pool/job.rs`, `pool/link.rs`) are made of, behind one facade (tokio's
//! `src/loom` pattern): std's in a normal build, loom's under `--cfg loom` (`cargo xtask
//! loom`), where the models explore every interleaving of the very code that runs in
//! production. The atomics and the futex are pool-ipc's facade (one `AtomicU32` type for
//! both crates).
//!
//! Under loom, the process a thread stands for is the model's to say ([`model::act_as`]),
//! and so is whether a process lives ([`model::exit`]): process death is a thread that stops.

#[cfg(not(loom))]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use std::sync::atomic::*;
    }
    pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
}

#[cfg(loom)]
pub(crate) mod sync {
    pub(crate) mod atomic {
        pub(crate) use pool_ipc::loom::sync::atomic::*;
    }
    pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
}

#[cfg(loom)]
pub(crate) use loom::thread::yield_now;
/// Lets another thread run (loom's, which lets the model run the other threads, under loom).
#[cfg(not(loom))]
pub(crate) use std::thread::yield_now;

/// The shared futex, with a deadline.
#[cfg(not(loom))]
pub(crate) mod futex {
    pub(crate) use pool_ipc::shared::{futex_wait, futex_wake};
}

/// The modelled futex (pool-ipc's `loom::futex`): a deadline is not the clock's but the
/// model's to let pass, so that runs are deterministic: a timed wait ends "timed out" when a
/// process dies ([`model::exit`]), and at once if the word is a lock word naming a dead
/// owner (the waiter's slice ends, and it finds the owner dead).
#[cfg(loom)]
pub(crate) mod futex {
    use std::io;
    use std::time::{Duration, Instant};

    use super::sync::atomic::AtomicU32;

    pub(crate) use pool_ipc::loom::futex::futex_wake;

    pub(crate) fn futex_wait(
        word: &AtomicU32,
        expected: u32,
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        pool_ipc::loom::futex::futex_wait_or(
            word,
            expected,
            deadline.map(|_| Duration::ZERO),
            |expected| {
                let owner = expected & crate::sync::LOCK_OWNER;
                owner != 0 && super::model::is_dead(owner)
            },
        )
    }
}

/// Which process and thread this is, and whether another process lives.
#[cfg(not(loom))]
pub(crate) mod process {
    pub(crate) use pool_ipc::os::thread_id;
    pub(crate) use pool_ipc::shared::ProcessIdentity;
}

#[cfg(loom)]
pub(crate) use self::model as process;

/// The model's processes: each loom thread stands for a thread of a process it names
/// ([`act_as`]); a process is dead once one of its threads called [`exit`].
#[cfg(loom)]
pub(crate) mod model {
    use std::cell::Cell;
    use std::io;

    pub(crate) use loom::thread;

    loom::thread_local! {
        static ME: Cell<(u32, u32)> = Cell::new((1000, 1000));
    }

    loom::lazy_static! {
        static ref DEAD: loom::sync::Mutex<Vec<u32>> = loom::sync::Mutex::new(Vec::new());
    }

    /// This loom thread is thread `tid` of process `pid` from now on.
    pub(crate) fn act_as(pid: u32, tid: u32) {
        ME.with(|me| me.set((pid, tid)));
    }

    /// This thread's process dies (the thread must return right after); the timed waits
    /// asleep end (their slice ends, so that they may look whether their lock's owner lives).
    pub(crate) fn exit() {
        let pid = ME.with(Cell::get).0;
        DEAD.lock().unwrap().push(pid);
        pool_ipc::loom::futex::end_timed_waits();
    }

    /// Whether process `pid` died.
    pub(crate) fn is_dead(pid: u32) -> bool {
        DEAD.lock().unwrap().contains(&pid)
    }

    /// The model's stand-in for `pool_ipc::os::thread_id`.
    pub(crate) fn thread_id() -> u32 {
        ME.with(Cell::get).1
    }

    /// The model's stand-in for `pool_ipc::shared::ProcessIdentity`: every process started at
    /// time 1, and `/proc` knows exactly the processes that did not [`exit`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub(crate) struct ProcessIdentity {
        pub(crate) pid: u32,
        pub(crate) start: u64,
    }

    impl ProcessIdentity {
        pub(crate) fn current() -> ProcessIdentity {
            ProcessIdentity {
                pid: ME.with(Cell::get).0,
                start: 1,
            }
        }

        pub(crate) fn lookup(pid: u32) -> io::Result<Option<ProcessIdentity>> {
            let dead = DEAD.lock().unwrap().contains(&pid);
            Ok((!dead).then_some(ProcessIdentity { pid, start: 1 }))
        }
    }
}
