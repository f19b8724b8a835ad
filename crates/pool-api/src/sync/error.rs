//! The one error type of the primitives, [`SyncError`], and the conversion of an OS error
//! into it.
//!
//! It is its own file because every primitive's file uses it and none of them is its
//! natural home.

/// Why a lock, semaphore or event operation did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A timed wait ended before it succeeded.
    #[error("timed out")]
    Timeout,
    /// A non-blocking attempt found it taken.
    #[error("would block")]
    WouldBlock,
    /// `release` of a lock that is not locked (Python's `ValueError`/`RuntimeError`).
    #[error("release of an unlocked lock")]
    NotLocked,
    /// `release` of an `RLock` by a process or thread that does not own it.
    #[error("release of an RLock not owned by this thread")]
    NotOwner,
    /// `release` of a `BoundedSemaphore` above its initial value.
    #[error("semaphore released too many times")]
    TooManyReleases,
    /// A `Barrier` was aborted, reset while this process waited, timed out, or its action
    /// panicked (Python's `BrokenBarrierError`).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// An argument that makes no sense (a barrier of 0 parties).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The OS refused (creating the shared memory, a futex).
    #[error("OS error: {0}")]
    Io(String),
}

pub(super) fn io(e: std::io::Error) -> SyncError {
    SyncError::Io(e.to_string())
}
