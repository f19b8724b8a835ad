//! The error of [`SharedMemory`](crate::SharedMemory) operations.

/// Why a [`SharedMemory`](crate::SharedMemory) operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// A size of 0 or a bad name.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No segment has that name.
    #[error("no shared memory segment is named {0}")]
    NotFound(String),
    /// A segment with that name exists already.
    #[error("a shared memory segment named {0} exists already")]
    AlreadyExists(String),
    /// A read or write past the end.
    #[error("bytes {start}..{end} are outside the segment of {size} bytes")]
    OutOfRange {
        /// First byte asked for.
        start: usize,
        /// One past the last.
        end: usize,
        /// The segment's size.
        size: usize,
    },
    /// Any other OS error.
    #[error("OS error: {0}")]
    Io(#[source] super::cause::OsError),
}
