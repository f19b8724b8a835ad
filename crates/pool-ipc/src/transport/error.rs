//! The errors of sending and receiving, shared by every transport.

use std::io;

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer closed its end or died.
    #[error("the peer has disconnected")]
    Disconnected,
    /// The deadline passed before the whole message was in the channel. The channel is then
    /// unusable for sending (part of a message may be in it) and should be dropped.
    #[error("timed out while sending")]
    Timeout,
    /// The message is larger than the channel's limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message's length.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// Any other OS error.
    #[error("transport I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Why no message was received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The peer closed its end or died, and every message it sent has been read.
    #[error("the peer has disconnected")]
    Disconnected,
    /// The deadline passed with no complete message. No bytes of a message were consumed
    /// unless the message had started to arrive (then the channel should be dropped).
    #[error("timed out while receiving")]
    Timeout,
    /// The next message claims a length above the channel's limit. Nothing was allocated for
    /// it; the channel is out of step and should be dropped.
    #[error("incoming message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The length the peer claimed.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// The peer broke the framing (a message cut short, an impossible header): it is not to be
    /// trusted further.
    #[error("corrupt frame: {0}")]
    Corrupt(&'static str),
    /// Any other OS error.
    #[error("transport I/O error: {0}")]
    Io(#[from] io::Error),
}
