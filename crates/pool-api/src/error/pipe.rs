//! The errors of a pipe's ends: [`SendError`] and [`RecvError`], and how a transport's own
//! errors become them.

use super::cause::{CodecError, OsError, transport_io};

/// Why a value was not sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The other end is closed.
    #[error("the other end of the pipe is closed")]
    Closed,
    /// The value could not be encoded.
    #[error(transparent)]
    Encode(CodecError),
    /// An OS error (the transport's own error is the `io::Error`'s source).
    #[error("pipe I/O error: {0}")]
    Io(#[source] OsError),
}

/// Why nothing was received.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The other end is closed and every message it sent was read (Python's `EOFError`).
    #[error("end of file: the other end of the pipe is closed")]
    Eof,
    /// The message does not decode as the type asked for.
    #[error(transparent)]
    Decode(CodecError),
    /// `recv_bytes_into` was given a buffer shorter than the message; the message is handed
    /// back whole (Python's `BufferTooShort`).
    #[error("the buffer is too short: the message needs {needed} bytes")]
    BufferTooShort {
        /// The message's length.
        needed: usize,
        /// The message.
        message: Vec<u8>,
    },
    /// An OS error (the transport's own error is the `io::Error`'s source).
    #[error("pipe I/O error: {0}")]
    Io(#[source] OsError),
}

impl From<pool_ipc::SendError> for SendError {
    fn from(e: pool_ipc::SendError) -> SendError {
        match e {
            pool_ipc::SendError::Disconnected => SendError::Closed,
            pool_ipc::SendError::Io(e) => SendError::Io(e.into()),
            other => SendError::Io(transport_io(other)),
        }
    }
}

impl From<pool_ipc::RecvError> for RecvError {
    fn from(e: pool_ipc::RecvError) -> RecvError {
        match e {
            pool_ipc::RecvError::Disconnected => RecvError::Eof,
            pool_ipc::RecvError::Io(e) => RecvError::Io(e.into()),
            other => RecvError::Io(transport_io(other)),
        }
    }
}
