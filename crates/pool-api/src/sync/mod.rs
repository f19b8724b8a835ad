//! Locks, semaphores and events shared between processes: futexes in shared memory.
//!
//! Each primitive is a small [`SharedRegion`](pool_ipc::shared::SharedRegion) (an anonymous
//! memfd) holding atomics; handles are serde values that travel to children in their
//! arguments, like a pipe end.
//!
//! One file per primitive (`lock.rs`, `semaphore.rs`, `event.rs`, `condition.rs`,
//! `barrier.rs`) over what they all share (`raw.rs`: the region, the lock word and its
//! owner record, taken over from a dead holder) and their error (`error.rs`). This file only
//! names them; none of them uses it.
//!
//! # Memory ordering
//!
//! Acquiring is an `Acquire` compare-and-swap on the lock word and releasing a `Release`
//! swap, so everything written under the lock happens-before the next holder's reads. The
//! owner record is advisory (it only refines the liveness check) and uses `Relaxed`.
//!
//! Where a waker stores one word (an event's flag, a semaphore's count, a condition's
//! sequence) and then reads another (how many sleep), and a sleeper does the opposite (counts
//! itself, then sleeps on the first word), both sides are `SeqCst`: with weaker orderings the
//! waker's store could be ordered after its load (store buffering), it would see no sleeper,
//! the sleeper would see the old value, and the wake-up would be lost.

mod barrier;
mod condition;
mod error;
mod event;
mod lock;
mod raw;
mod semaphore;

#[cfg(all(test, loom))]
mod loom_tests;

pub use self::barrier::Barrier;
pub use self::condition::Condition;
pub use self::error::SyncError;
pub use self::event::Event;
pub use self::lock::{Lock, LockGuard, RLock};
pub use self::raw::Acquired;
#[cfg(loom)]
pub(crate) use self::raw::LOCK_OWNER;
#[cfg(not(loom))]
pub(crate) use self::raw::RawLock;
#[cfg(loom)]
pub(crate) use self::raw::UnmodelledRawLock as RawLock;
pub use self::semaphore::{BoundedSemaphore, Semaphore};
