//! The errors of queues: [`QueueError`], and [`PutError`], which hands a `put`'s item back.

use std::fmt;

use super::cause::{CodecError, OsError};
use crate::sync::SyncError;

/// Why a queue operation did not succeed. A `put` that fails hands its item back in a
/// [`PutError`], whose [`kind`](PutError::kind) is one of these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// `try_put` on a full queue, or `put_timeout` timed out on one.
    #[error("the queue is full")]
    Full,
    /// `try_get` on an empty queue, or `get_timeout` timed out on one.
    #[error("the queue is empty")]
    Empty,
    /// This handle was closed.
    #[error("the queue is closed")]
    Closed,
    /// `task_done` was called more times than items were put.
    #[error("task_done called too many times")]
    TooManyTaskDone,
    /// The item cannot be encoded, or is larger than the queue's ring.
    #[error(transparent)]
    Encode(CodecError),
    /// The item taken does not decode as the queue's type.
    #[error(transparent)]
    Decode(CodecError),
    /// The queue's shared state is corrupt (a process scribbled on it).
    #[error("the queue's shared state is corrupt: {0}")]
    Corrupt(&'static str),
    /// The OS refused; the `io::Error` is the source.
    #[error("OS error: {0}")]
    Io(#[source] OsError),
}

/// The queue's lock failed (only an OS error can reach a queue's caller).
impl From<SyncError> for QueueError {
    fn from(e: SyncError) -> QueueError {
        match e {
            SyncError::Io(e) => QueueError::Io(OsError(e)),
            other => QueueError::Io(std::io::Error::other(other).into()),
        }
    }
}

impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> QueueError {
        QueueError::Io(e.into())
    }
}

/// Why a `put` did not succeed, with the item handed back: the queue never took it.
///
/// `Debug` is written by hand so that an item type without `Debug` still makes a
/// `std::error::Error` (the item is shown as `..`).
///
/// ```
/// use pool_api::{Queue, QueueError};
///
/// let q: Queue<String> = Queue::bounded(1)?;
/// q.put("first".into())?;
/// let refused = q.try_put("second".into()).unwrap_err();
/// assert_eq!(refused.kind(), &QueueError::Full);
/// assert_eq!(refused.into_item(), "second");
/// # Ok::<(), pool_api::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PutError<T> {
    item: T,
    kind: QueueError,
}

impl<T> PutError<T> {
    /// The error of a `put` that did not take `item`.
    pub(crate) fn new(item: T, kind: QueueError) -> PutError<T> {
        PutError { item, kind }
    }

    /// Why the item was not put.
    pub fn kind(&self) -> &QueueError {
        &self.kind
    }

    /// The item, handed back.
    pub fn item(&self) -> &T {
        &self.item
    }

    /// The item, handed back.
    pub fn into_item(self) -> T {
        self.item
    }

    /// Why the item was not put, the item dropped.
    pub fn into_kind(self) -> QueueError {
        self.kind
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("item", &format_args!(".."))
            .field("kind", &self.kind)
            .finish()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot put the item: {}", self.kind)
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}
