//! Placeholder while the shared-memory ring is written: every operation is unsupported.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

use super::{RecvError, SendError};

/// Bytes per direction.
pub const DEFAULT_RING_CAPACITY: usize = 1 << 20;

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the shm transport is not built yet",
    )
}

/// One end.
#[derive(Debug)]
pub struct ShmChannel(());
/// Sending half.
#[derive(Debug)]
pub struct ShmSender(());
/// Receiving half.
#[derive(Debug)]
pub struct ShmReceiver(());
/// Peer death notifier.
#[derive(Clone, Debug)]
pub struct ShmPeerDeath(());

impl ShmChannel {
    /// Pair.
    pub fn pair(_capacity: usize) -> io::Result<(ShmChannel, ShmChannel)> {
        Err(unsupported())
    }
    /// Create.
    pub fn create(_capacity: usize) -> io::Result<(ShmChannel, OwnedFd)> {
        Err(unsupported())
    }
    /// Open.
    pub fn open(_fd: OwnedFd) -> io::Result<ShmChannel> {
        Err(unsupported())
    }
    /// Split.
    pub fn split(self) -> (ShmSender, ShmReceiver) {
        (ShmSender(()), ShmReceiver(()))
    }
}
impl ShmSender {
    /// Limit.
    pub fn set_max_message(&mut self, _limit: u64) {}
    /// Send.
    pub fn send_parts(
        &mut self,
        _parts: &[&[u8]],
        _deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        Err(SendError::Io(unsupported()))
    }
}
impl ShmReceiver {
    /// Limit.
    pub fn set_max_message(&mut self, _limit: u64) {}
    /// Receive.
    pub fn recv_into(
        &mut self,
        _buf: &mut Vec<u8>,
        _deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        Err(RecvError::Io(unsupported()))
    }
    /// Death.
    pub fn peer_death(&self) -> ShmPeerDeath {
        ShmPeerDeath(())
    }
}
impl ShmPeerDeath {
    /// Notify.
    pub fn notify(&self) {}
}
