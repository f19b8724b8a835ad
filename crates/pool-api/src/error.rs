//! The one error type of a pool's calls and task outcomes.

use std::time::Duration;

/// What went wrong with a pool call or a task. The variants are the cases a caller can act
/// on; match on them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked in its worker (the worker survives and takes the next task).
    #[error("task panicked in worker {pid}: {message}{}", location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panicked {
        /// The panic message.
        message: String,
        /// Where it panicked (`file:line:column`), if known.
        location: Option<String>,
        /// The worker's pid (for a [`ThreadPool`](crate::ThreadPool), this process's).
        pid: u32,
    },
    /// The worker running the task exited (crash, SIGKILL, `abort`, `exit`) before finishing
    /// it. The worker was replaced; other tasks go on.
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
    /// Arguments or results could not be encoded or decoded.
    #[error("cannot encode or decode a value: {0}")]
    Codec(String),
    /// The OS refused something (starting a worker, a channel).
    #[error("OS error: {0}")]
    Io(String),
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

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Error {
        Error::Codec(e.to_string())
    }
}
