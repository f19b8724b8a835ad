//! Python's `multiprocessing`, done in Rust.
//!
//! This is the facade users depend on: [`Pool`] with Python's vocabulary (`apply`,
//! `apply_async` with callbacks, `map`, `starmap`, `imap`, `imap_unordered`, `close`,
//! `terminate`, `join`, an initializer, `maxtasksperchild`) over real worker processes, with
//! Python's failure modes fixed:
//!
//! - a worker that dies mid-task (segfault, `abort`, SIGKILL, `exit`) fails only the chunk it
//!   was running, with [`Error::WorkerLost`]; it is replaced and the pool goes on (CPython's
//!   `Pool` hangs forever there);
//! - a task can have a time limit: its worker is killed and replaced, the task fails with
//!   [`Error::TimedOut`];
//! - a failing initializer is reported as [`Error::InitializerFailed`] instead of workers
//!   being respawned forever;
//! - a panicking callback is reported and later results still arrive.
//!
//! [`ThreadPool`] has the same methods on threads (a rayon pool of its own), for work that
//! needs no isolation: tasks are any `Send + Sync` closures, arguments and results are moved
//! instead of encoded (`Send + 'static`, no serde). What cannot mean the same on threads is
//! cooperative and documented on the type: `terminate` fails unfinished work at once but a
//! running task runs to its end, a panic is caught (an abort takes the process), and there is
//! no time limit or `maxtasksperchild`.
//!
//! It drives the pure scheduler of `pool-core` with the processes and transports of
//! `pool-ipc`. Workers are this same executable, started again: nothing to set up in `main`,
//! and it works in tests, doc tests and examples too.

#![deny(missing_docs)]
// A `--cfg loom` build (the models) leaves the real futex and much else unused.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod bulk;
mod bytes;
#[cfg(feature = "cluster")]
pub mod cluster;
mod connection;
mod error;
pub mod futures;
mod handles;
#[cfg(feature = "ipc-channel")]
pub mod interop;
mod listener;
mod log;
mod loom;
mod pool;
mod process;
mod queue;
mod sync;
mod task;
#[cfg(feature = "thread-pool")]
mod thread_pool;
mod tracker;
mod values;

pub use bytes::Bytes;
pub use connection::{
    Connection, Pipe, ReadConnection, Waitable, WriteConnection, wait, wait_timeout,
};
pub use error::{
    AuthError, CodecError, Error, OsError, PutError, QueueError, RecvError, SendError, ShmError,
};
pub use listener::{Address, Client, DEFAULT_HANDSHAKE_TIMEOUT, Listener, connect};
pub use pool::{AsyncResult, Callbacks, IMap, MapResult, Pool, PoolBuilder};
pub use pool_core::Stats;
pub use pool_ipc::SpawnError;
pub use pool_ipc::os::Signal;
pub use pool_ipc::{ExitStatus, StartMethod, TransportKind};
pub use process::{
    Process, ProcessHandle, ProcessInfo, active_children, current_process,
    set_exit_waits_for_children,
};
pub use queue::{DEFAULT_QUEUE_CAPACITY, JoinableQueue, Queue, SimpleQueue};
pub use sync::{
    Acquired, Barrier, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock, Semaphore,
    SyncError,
};
pub use task::StarFn;
#[cfg(feature = "thread-pool")]
pub use thread_pool::{
    ThreadAsyncResult, ThreadIMap, ThreadMapResult, ThreadPool, ThreadPoolBuilder,
};
pub use values::{Array, Plain, SharedMemory, Value, ValueGuard};

/// The moment `timeout` from now, or `None` (no deadline: wait for ever) for a timeout too
/// long to add to the clock, such as `Duration::MAX`.
pub(crate) fn deadline_in(timeout: std::time::Duration) -> Option<std::time::Instant> {
    std::time::Instant::now().checked_add(timeout)
}

/// The crate's README (its crates.io page), compiled and run as a doc test so that it stays
/// true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
