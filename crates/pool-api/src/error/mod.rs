//! [`Error`], the error of a pool's calls and of a task's outcome, and every other error type
//! of the crate, one file each, so that no module that returns them is imported here.
//!
//! Causes are kept, not flattened into text: an OS error is the `io::Error` itself (behind an
//! `Arc`, so that an outcome delivered to a callback and to `get` can be cloned), reachable
//! through `source()` and its `kind()`. Each primitive keeps an error type of its own (its
//! failure modes differ: a `put` hands the item back, a `get` does not), and every one of
//! them converts into [`Error`], so that `?` works across primitives and pools in one
//! function returning `pool_api::Error`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

mod auth;
mod cause;
mod pipe;
mod queue;
mod shm;

pub use self::auth::AuthError;
pub use self::cause::{CodecError, OsError};
pub(crate) use self::cause::{codec, same_io, transport_io};
pub use self::pipe::{RecvError, SendError};
pub use self::queue::{PutError, QueueError};
pub use self::shm::ShmError;
use crate::sync::SyncError;

/// What went wrong with a pool call, a process or a task. The variants are the cases a caller
/// can act on; match on them.
///
/// Two errors are equal when they are the same case with equal details; OS errors compare by
/// kind, code and message (`io::Error` itself has no equality).
///
/// ```
/// use pool_api::{Error, Lock, Queue};
///
/// // `?` converts each primitive's error into `pool_api::Error`.
/// fn hand_over(queue: &Queue<u32>, lock: &Lock) -> Result<u32, Error> {
///     let _held = lock.lock()?;
///     queue.put(7)?;
///     Ok(queue.get()?)
/// }
///
/// assert_eq!(hand_over(&Queue::new()?, &Lock::new()?)?, 7);
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked in its worker (the worker survives and takes the next task).
    #[error(
        "task panicked in worker {pid}: {message}{}{}",
        location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default(),
        backtrace.as_ref().map(|b| format!("\n\nworker backtrace:\n{b}")).unwrap_or_default()
    )]
    #[non_exhaustive]
    Panicked {
        /// The panic message.
        message: String,
        /// Where it panicked (`file:line:column`), if known.
        location: Option<String>,
        /// The worker's pid (for a [`ThreadPool`](crate::ThreadPool), this process's).
        pid: u32,
        /// The worker's backtrace at the panic, when the worker captured one: with
        /// `RUST_BACKTRACE=1` (or `RUST_LIB_BACKTRACE=1`) in the environment the pool's workers
        /// start with, as CPython carries the remote traceback as the exception's cause.
        backtrace: Option<String>,
    },
    /// The worker running the task exited (crash, SIGKILL, `abort`, `exit`) before finishing
    /// it. The worker was replaced; other tasks go on. For a
    /// [`ProcessHandle::join`](crate::ProcessHandle::join): the child exited without a value.
    #[error("worker {pid} was lost while running the task (exitcode {exitcode})")]
    WorkerLost {
        /// The worker's pid.
        pid: u32,
        /// Python's `exitcode`: the exit code, or minus the signal number.
        exitcode: i32,
    },
    /// The task ran past its time limit; its worker was killed and replaced.
    #[error("task exceeded its time limit of {limit:?}; worker {pid} was killed")]
    TimedOut {
        /// The killed worker's pid.
        pid: u32,
        /// The limit.
        limit: Duration,
    },
    /// The pool was closed: it takes no more work.
    #[error("the pool is closed")]
    Closed,
    /// The pool was terminated (or dropped) before the task finished.
    #[error("the pool was terminated")]
    Terminated,
    /// `join` was called while the pool is running: call `close` or `terminate` first.
    #[error("join called on a running pool: call close or terminate first")]
    StillRunning,
    /// The pool's initializer failed in its workers, repeatedly; the pool stopped trying.
    #[error("worker initializer failed: {0}")]
    InitializerFailed(String),
    /// The task was cancelled before it was dispatched.
    #[error("the task was cancelled")]
    Cancelled,
    /// A setting or argument that makes no sense (0 processes, chunksize 0, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `get` with a timeout: the result is not ready yet (the task runs on; a later `get`
    /// returns it).
    #[error("the result was not ready within {0:?}")]
    Timeout(Duration),
    /// `successful` was asked before the result was ready.
    #[error("the result is not ready")]
    NotReady,
    /// [`as_completed_timeout`](crate::futures::as_completed_timeout): the time ran out with
    /// handles unfinished (they run on).
    #[error("{unfinished} (of {total}) results unfinished when the time ran out")]
    Unfinished {
        /// Handles not finished.
        unfinished: usize,
        /// Distinct handles waited for.
        total: usize,
    },
    /// Arguments or results could not be encoded or decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A process (a worker, a [`Process`](crate::Process)) could not be started; the
    /// source says why (an OS error, a function that cannot travel, a child that died during
    /// start-up: `SpawnError::ChildExited` with its exit status, ...).
    ///
    /// From a [`Pool`](crate::Pool) it comes in two places only: from
    /// [`PoolBuilder::build`](crate::PoolBuilder::build) when an initial worker cannot be
    /// spawned (the workers already started are killed first), and for tasks while the pool
    /// has had no serving worker for longer than
    /// [`PoolBuilder::unavailable_after`](crate::PoolBuilder::unavailable_after) (10 s by
    /// default) and worker starts keep failing (see
    /// [`PoolBuilder::initializer`](crate::PoolBuilder::initializer) for when exactly); the
    /// source is then the last start failure. That pool keeps retrying and serves new work
    /// again once a worker starts: the error is not permanent, unlike
    /// [`Error::InitializerFailed`].
    #[error("cannot start a process: {0}")]
    Start(#[source] Arc<pool_ipc::SpawnError>),
    /// The OS refused something (a channel, a wait); the `io::Error` is the source.
    #[error("OS error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// A lock, semaphore, event, condition, barrier or `Value` operation failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// A queue operation failed (an item the queue handed back is dropped here: match the
    /// queue's own error to keep it).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A `SharedMemory` operation failed.
    #[error(transparent)]
    SharedMemory(#[from] ShmError),
    /// Sending on a pipe's connection failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// Receiving on a pipe's connection failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// A [`Listener`](crate::Listener) or [`Client`](crate::Client) connection failed its
    /// authentication handshake (Python's `AuthenticationError`).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A cluster pool's Redis failed: unreachable, timed out, or restarted (the pool's keys
    /// are gone). The source is pool-cluster's error, with the redis error below it where
    /// there is one. The chunks that were in Redis fail with it; a pool whose keys are gone
    /// fails every later task with it too: build a new pool once Redis is back.
    #[cfg(feature = "cluster")]
    #[error("the cluster's Redis failed: {0}")]
    Broker(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// A cluster pool's chunk waited its start timeout
    /// ([`PoolBuilder::start_timeout`](crate::PoolBuilder::start_timeout)) with no live host
    /// of this build serving the pool: none at all, or only hosts of other builds, which
    /// never run its chunks (functions travel by identity). Both fingerprints are named.
    #[cfg(feature = "cluster")]
    #[error(
        "no host of this build ({ours}) served the cluster pool for {waited:?}{}",
        if others.is_empty() {
            ": no host at all".to_string()
        } else {
            format!("; hosts of other builds: {}", others.join(", "))
        }
    )]
    NoCompatibleWorker {
        /// This build's fingerprint.
        ours: String,
        /// The fingerprints of the live hosts that serve the pool, all of other builds.
        others: Vec<String>,
        /// How long the chunk waited.
        waited: std::time::Duration,
    },
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        use Error::*;
        match (self, other) {
            (
                Panicked {
                    message: m1,
                    location: l1,
                    pid: p1,
                    backtrace: b1,
                },
                Panicked {
                    message: m2,
                    location: l2,
                    pid: p2,
                    backtrace: b2,
                },
            ) => (m1, l1, p1, b1) == (m2, l2, p2, b2),
            (
                WorkerLost {
                    pid: p1,
                    exitcode: e1,
                },
                WorkerLost {
                    pid: p2,
                    exitcode: e2,
                },
            ) => (p1, e1) == (p2, e2),
            (TimedOut { pid: p1, limit: l1 }, TimedOut { pid: p2, limit: l2 }) => {
                (p1, l1) == (p2, l2)
            }
            (Closed, Closed)
            | (Terminated, Terminated)
            | (StillRunning, StillRunning)
            | (Cancelled, Cancelled)
            | (NotReady, NotReady) => true,
            (InitializerFailed(a), InitializerFailed(b)) => a == b,
            (InvalidArgument(a), InvalidArgument(b)) => a == b,
            (Timeout(a), Timeout(b)) => a == b,
            (
                Unfinished {
                    unfinished: u1,
                    total: t1,
                },
                Unfinished {
                    unfinished: u2,
                    total: t2,
                },
            ) => (u1, t1) == (u2, t2),
            (Codec(a), Codec(b)) => a == b,
            (Start(a), Start(b)) => a.to_string() == b.to_string(),
            (Io(a), Io(b)) => same_io(a, b),
            (Sync(a), Sync(b)) => a == b,
            (Queue(a), Queue(b)) => a == b,
            (SharedMemory(a), SharedMemory(b)) => a == b,
            (Send(a), Send(b)) => a == b,
            (Recv(a), Recv(b)) => a == b,
            (Auth(a), Auth(b)) => a == b,
            #[cfg(feature = "cluster")]
            (Broker(a), Broker(b)) => a.to_string() == b.to_string(),
            #[cfg(feature = "cluster")]
            (
                NoCompatibleWorker {
                    ours: a,
                    others: b,
                    waited: c,
                },
                NoCompatibleWorker {
                    ours: x,
                    others: y,
                    waited: z,
                },
            ) => (a, b, c) == (x, y, z),
            _ => false,
        }
    }
}

impl Eq for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

impl From<pool_ipc::SpawnError> for Error {
    fn from(e: pool_ipc::SpawnError) -> Error {
        Error::Start(Arc::new(e))
    }
}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Error {
        Error::Queue(e.into_kind())
    }
}

impl From<pool_core::SubmitError> for Error {
    fn from(e: pool_core::SubmitError) -> Error {
        match e {
            pool_core::SubmitError::Closed => Error::Closed,
            pool_core::SubmitError::Terminated => Error::Terminated,
            pool_core::SubmitError::InitializerFailed(m) => Error::InitializerFailed(m.to_string()),
            pool_core::SubmitError::ZeroChunksize => {
                Error::InvalidArgument("chunksize must be at least 1".into())
            }
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

impl From<pool_core::ConfigError> for Error {
    fn from(e: pool_core::ConfigError) -> Error {
        Error::InvalidArgument(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_os_error_keeps_its_kind_and_source() {
        let e = Error::from(io::Error::from_raw_os_error(24));
        let Error::Io(inner) = &e else { panic!() };
        assert_eq!(inner.raw_os_error(), Some(24));
        let source = e.source().expect("the io::Error is the source");
        assert!(
            source.to_string().contains("Too many open files"),
            "{source}"
        );
        assert_eq!(e, Error::from(io::Error::from_raw_os_error(24)));
        assert_ne!(e, Error::from(io::Error::from_raw_os_error(12)));
    }

    #[test]
    fn a_codec_error_says_what_and_keeps_the_encoders_error() {
        let err = postcard::from_bytes::<String>(&[5, b'a']).unwrap_err();
        let e = codec("decoding the result of task 3")(err);
        assert!(
            e.to_string().contains("decoding the result of task 3"),
            "{e}"
        );
        // `Error::Codec` is transparent: its source is the encoder's own error.
        let source = e.source().expect("the encoder's error");
        assert!(
            e.to_string().ends_with(&source.to_string()),
            "{e} / {source}"
        );
    }

    #[test]
    fn primitive_errors_convert_and_keep_their_cause() {
        let e: Error = SyncError::Timeout.into();
        assert_eq!(e, Error::Sync(SyncError::Timeout));
        let e: Error = QueueError::Full.into();
        assert_eq!(e, Error::Queue(QueueError::Full));
    }
}
