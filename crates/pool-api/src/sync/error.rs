//! The one error type of the primitives, [`SyncError`], and the conversion of an OS error
//! into it.
//!
//! It is its own file because every primitive's file uses it and none of them is its
//! natural home.

use std::sync::Arc;

/// Why a lock, semaphore or event operation did not succeed.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// The OS refused (creating the shared memory, a futex); the `io::Error` is the source.
    #[error("OS error: {0}")]
    Io(#[source] Arc<std::io::Error>),
}

/// Equal when the same case; OS errors compare by kind, code and message.
impl PartialEq for SyncError {
    fn eq(&self, other: &SyncError) -> bool {
        use SyncError::*;
        match (self, other) {
            (Io(a), Io(b)) => crate::error::same_io(a, b),
            (InvalidArgument(a), InvalidArgument(b)) => a == b,
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl Eq for SyncError {}

impl From<std::io::Error> for SyncError {
    fn from(e: std::io::Error) -> SyncError {
        SyncError::Io(Arc::new(e))
    }
}

pub(super) fn io(e: std::io::Error) -> SyncError {
    SyncError::from(e)
}
