//! The receiving half of an end, the only reader of its ring: a message's length is checked
//! against the limit before anything is allocated, and its bytes are copied out as they
//! arrive, a deadline that passes half-way keeping what came (see "Framing" and "Trust" in
//! the module documentation).

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::layout::{LEN_BYTES, PEER_DEAD, READER_CLOSED, WRITER_CLOSED};
use super::mapping::ShmPeerDeath;
use super::ring::Ring;
use super::wait::{Spinner, block_on, wake_all, wake_if_waiting};
use crate::transport::{self, DEFAULT_MAX_MESSAGE, RecvError};

/// A part of a message read piecewise at least this long gives its bytes back to the writer
/// at once (smaller ones when the message ends, or when the reader waits): the reader may
/// work on a large part a while before it reads on.
const PUBLISH_AFTER: usize = 64 << 10;

/// Why a receiver stopped for good.
#[derive(Clone, Copy, Debug)]
enum Failed {
    Disconnected,
    Corrupt(&'static str),
}

impl From<Failed> for RecvError {
    fn from(failed: Failed) -> RecvError {
        match failed {
            Failed::Disconnected => RecvError::Disconnected,
            Failed::Corrupt(what) => RecvError::Corrupt(what),
        }
    }
}

/// A message whose reception a deadline interrupted.
#[derive(Clone, Copy, Debug)]
struct Pending {
    total: usize,
    remaining: usize,
}

/// The receiving half of an end: the only reader of its ring.
pub struct ShmReceiver {
    ring: Ring,
    /// Our read position (authoritative: never read back from shared memory).
    read: u64,
    /// The read position last published to the writer.
    published: u64,
    /// The writer's position when we last looked; `write_seen - read <= capacity`.
    write_seen: u64,
    max_message: u64,
    spinner: Spinner,
    /// Set when a deadline interrupted a message; its bytes so far are in `stash`.
    pending: Option<Pending>,
    stash: Vec<u8>,
    /// Sticky end: the peer is gone, or broke the framing.
    failed: Option<Failed>,
    /// See [`ShmSender::copy`].
    pub(super) copy: bool,
}

impl ShmReceiver {
    /// The receiver of `ring`, which holds `write_seen` bytes ever written and `read` ever
    /// consumed (the caller checked `write_seen - read <= capacity`).
    pub(super) fn new(ring: Ring, read: u64, write_seen: u64) -> ShmReceiver {
        ShmReceiver {
            ring,
            read,
            published: read,
            write_seen,
            max_message: DEFAULT_MAX_MESSAGE,
            spinner: Spinner::new(),
            pending: None,
            stash: Vec::new(),
            failed: None,
            copy: false,
        }
    }
    /// Sets the largest message this half accepts (16 GiB by default). A longer length
    /// header gives [`RecvError::TooLarge`] without consuming or allocating anything: raise
    /// the limit and call again to receive it.
    pub fn set_max_message(&mut self, limit: u64) {
        self.max_message = limit;
    }

    /// See [`crate::Receiver::set_spin`].
    pub fn set_spin(&mut self, budget: Option<Duration>) {
        self.spinner.fixed = budget;
    }

    /// Replaces `buf`'s contents with the next message (reusing its capacity), blocking until
    /// one has fully arrived, the peer is gone (`Disconnected`, once every complete message it
    /// sent has been read), or `deadline` passes (`Timeout`).
    ///
    /// If the deadline passes in the middle of a message, the part received is kept inside
    /// (`buf` is left empty) and the next call completes that message. `Corrupt` and
    /// `Disconnected` are final: every later call returns them again.
    pub fn recv_into(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        if let Some(failed) = self.failed {
            return Err(failed.into());
        }
        let (total, mut remaining) = match self.pending.take() {
            Some(pending) => {
                mem::swap(buf, &mut self.stash);
                self.stash = Vec::new();
                (pending.total, pending.remaining)
            }
            None => {
                let len = self.take_length(deadline)?;
                buf.clear();
                (len, len)
            }
        };
        while remaining > 0 {
            let available = match self.wait_for_data(1, deadline) {
                Ok(available) => available,
                Err(RecvError::Timeout) => {
                    self.pending = Some(Pending { total, remaining });
                    mem::swap(buf, &mut self.stash);
                    return Err(RecvError::Timeout);
                }
                Err(err) => return Err(err),
            };
            let n = available.min(remaining).min(self.ring.step);
            reserve_bounded(buf, n, total);
            let spare = buf.spare_capacity_mut();
            debug_assert!(spare.len() >= n);
            // SAFETY: `n <= available` published bytes from `read` on, `n <= capacity`; the
            // destination is our own vector's spare capacity, at least `n` bytes (reserved just
            // above), outside the mapping; after the copy those `n` bytes are initialised.
            unsafe {
                self.ring
                    .copy_out(self.read, spare.as_mut_ptr().cast::<u8>(), n);
                buf.set_len(buf.len() + n);
            }
            self.read = self.read.wrapping_add(n as u64);
            remaining -= n;
            if remaining > 0 {
                // Let the writer refill the ring while we copy the next piece.
                self.publish();
            }
        }
        self.publish();
        Ok(())
    }

    /// Receives the next message straight into `dst` (no intermediate buffer: one copy out
    /// of the ring), blocking until one arrives or the peer is gone. A message longer than
    /// `dst` is received whole into a vector and handed back as `Err(message)`.
    pub fn recv_into_slice(&mut self, dst: &mut [u8]) -> Result<Result<usize, Vec<u8>>, RecvError> {
        if let Some(failed) = self.failed {
            return Err(failed.into());
        }
        if self.pending.is_some() {
            // A message begun by a receive that timed out: finish it the usual way.
            let mut message = Vec::new();
            self.recv_into(&mut message, None)?;
            return Ok(transport::fit(&mut message, dst));
        }
        let len = self.take_length(None)?;
        if len > dst.len() {
            // Too long for `dst`: the rest arrives as a pending message into a vector.
            self.pending = Some(Pending {
                total: len,
                remaining: len,
            });
            self.stash = Vec::new();
            let mut message = Vec::new();
            self.recv_into(&mut message, None)?;
            return Ok(Err(message));
        }
        let mut done = 0;
        while done < len {
            let available = self.wait_for_data(1, None)?;
            let n = available.min(len - done).min(self.ring.step);
            let to = &mut dst[done..done + n];
            // SAFETY: `n <= available` published bytes from `read` on, `n <= capacity`; the
            // destination is `n` bytes of the caller's slice, outside the mapping.
            unsafe { self.ring.copy_out(self.read, to.as_mut_ptr(), n) };
            self.read = self.read.wrapping_add(n as u64);
            done += n;
            if done < len {
                // Let the writer refill the ring while we copy the next piece.
                self.publish();
            }
        }
        self.publish();
        Ok(Ok(len))
    }

    /// Whether a message begun by a receive that timed out waits to be completed (it is
    /// received whole with [`ShmReceiver::recv_into`], not piecewise).
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Starts receiving the next message piecewise: waits for its length prefix, checks it
    /// against the limit and consumes it. The caller then reads exactly that many bytes with
    /// [`ShmReceiver::read_part`] and [`ShmReceiver::skip_part`], and ends with
    /// [`ShmReceiver::end_message`]. Not for a receiver with a pending message.
    pub(crate) fn begin_message(&mut self) -> Result<usize, RecvError> {
        if let Some(failed) = self.failed {
            return Err(failed.into());
        }
        debug_assert!(self.pending.is_none());
        self.take_length(None)
    }

    /// Copies the next `dst.len()` bytes of the message begun with
    /// [`ShmReceiver::begin_message`] out of the ring into `dst` (the caller keeps within
    /// the message's length), blocking until they arrive or the peer is gone.
    pub(crate) fn read_part(
        &mut self,
        dst: &mut [std::mem::MaybeUninit<u8>],
    ) -> Result<(), RecvError> {
        let mut done = 0;
        while done < dst.len() {
            let available = self.wait_for_data(1, None)?;
            let n = available.min(dst.len() - done).min(self.ring.step);
            let to = &mut dst[done..done + n];
            // SAFETY: `n <= available` published bytes from `read` on, `n <= capacity`; the
            // destination is `n` bytes of the caller's slice, outside the mapping.
            unsafe {
                self.ring
                    .copy_out(self.read, to.as_mut_ptr().cast::<u8>(), n)
            };
            self.read = self.read.wrapping_add(n as u64);
            done += n;
            if done < dst.len() {
                // Let the writer refill the ring while we copy the next piece.
                self.publish();
            }
        }
        if dst.len() >= PUBLISH_AFTER {
            // A large part: let the writer refill the ring while the reader works on it.
            self.publish();
        }
        Ok(())
    }

    /// Consumes the next `len` bytes of the message being read without copying them.
    pub(crate) fn skip_part(&mut self, len: usize) -> Result<(), RecvError> {
        let mut done = 0;
        while done < len {
            let available = self.wait_for_data(1, None)?;
            let n = available.min(len - done);
            self.read = self.read.wrapping_add(n as u64);
            done += n;
        }
        Ok(())
    }

    /// Ends a message read piecewise: its bytes go back to the writer.
    pub(crate) fn end_message(&mut self) {
        self.publish();
    }

    /// Waits for the next message's length prefix and consumes it; the length is checked
    /// against the limit.
    fn take_length(&mut self, deadline: Option<Instant>) -> Result<usize, RecvError> {
        self.wait_for_data(LEN_BYTES, deadline)?;
        let mut prefix = [0u8; 8];
        // SAFETY: 8 bytes from `read` on are published and ours; `prefix` is a local array of
        // 8 bytes.
        unsafe {
            self.ring
                .copy_out(self.read, prefix.as_mut_ptr(), prefix.len())
        };
        let len = u64::from_le_bytes(prefix);
        let limit = self.max_message.min(isize::MAX as u64);
        if len > limit {
            return Err(RecvError::TooLarge { len, limit });
        }
        self.read = self.read.wrapping_add(LEN_BYTES);
        // `len <= isize::MAX`, so this does not truncate.
        Ok(len as usize)
    }

    /// A handle that declares the peer dead, for whoever watches the peer process.
    pub fn peer_death(&self) -> ShmPeerDeath {
        ShmPeerDeath {
            map: Arc::clone(&self.ring.map),
        }
    }

    /// Gives the bytes consumed so far back to the writer, and wakes it if it sleeps.
    fn publish(&mut self) {
        if self.read == self.published {
            return;
        }
        self.published = self.read;
        let header = self.ring.header();
        // Release: our copies out of the released bytes happen-before the writer's overwriting
        // them (its Acquire load of this position).
        header.reader.read_pos.store(self.read, Ordering::Release);
        wake_if_waiting(&header.writer.space_waiter);
    }

    /// Waits until at least `need` (`<= 8`) bytes are readable; returns how many are.
    fn wait_for_data(&mut self, need: u64, deadline: Option<Instant>) -> Result<usize, RecvError> {
        let available = self.write_seen.wrapping_sub(self.read);
        if available >= need {
            return Ok(available as usize);
        }
        // About to wait: the writer may be waiting for the space we freed.
        self.publish();
        let cap = self.ring.cap();
        let read = self.read;
        let header = self.ring.header();
        let result = block_on(
            &mut self.spinner,
            &header.reader.data_waiter,
            deadline,
            || RecvError::Timeout,
            || {
                // The state first, then the position (both Acquire): if the writer had closed,
                // or its death was declared, when we read the state, the position we read after
                // it is final, so "not enough data" then really means "never".
                let state = header.state.state.load(Ordering::Acquire);
                let write = header.writer.write_pos.load(Ordering::Acquire);
                let available = write.wrapping_sub(read);
                if available > cap {
                    return Err(RecvError::Corrupt("write position out of range"));
                }
                if available >= need {
                    return Ok(Some(write));
                }
                if state & (WRITER_CLOSED | PEER_DEAD) != 0 {
                    return Err(RecvError::Disconnected);
                }
                Ok(None)
            },
        );
        match result {
            Ok(write) => {
                self.write_seen = write;
                // `<= capacity`, checked above.
                Ok(write.wrapping_sub(read) as usize)
            }
            Err(err) => {
                match err {
                    RecvError::Disconnected => self.failed = Some(Failed::Disconnected),
                    RecvError::Corrupt(what) => self.failed = Some(Failed::Corrupt(what)),
                    _ => {}
                }
                Err(err)
            }
        }
    }

    fn close(&self) {
        let header = self.ring.header();
        header.state.state.fetch_or(READER_CLOSED, Ordering::SeqCst);
        wake_all(&header.writer.space_waiter);
    }
}

/// Makes room for `n` more bytes in `buf`, growing geometrically but never past `total` (the
/// announced length) nor past twice what has really arrived: a lying length header costs at
/// most what the peer actually sent.
fn reserve_bounded(buf: &mut Vec<u8>, n: usize, total: usize) {
    let needed = buf.len() + n;
    if needed > buf.capacity() {
        let target = needed.max(buf.capacity().saturating_mul(2).min(total));
        buf.reserve_exact(target - buf.len());
    }
}

impl ShmReceiver {
    /// Whether a message (or part of one) is waiting to be received, without waiting.
    pub fn has_data(&self) -> bool {
        if self.pending.is_some() || self.write_seen != self.read {
            return true;
        }
        let write = self.ring.header().writer.write_pos.load(Ordering::Acquire);
        write != self.read
    }

    /// Waits until a message (or part of one) is here to receive, consuming nothing:
    /// `Ok(false)` once `deadline` passes first. A peer that is gone, or that broke the
    /// framing, is the error the next receive returns.
    pub fn wait_readable(&mut self, deadline: Option<Instant>) -> Result<bool, RecvError> {
        if let Some(failed) = self.failed {
            return Err(failed.into());
        }
        if self.pending.is_some() {
            return Ok(true);
        }
        match self.wait_for_data(1, deadline) {
            Ok(_) => Ok(true),
            Err(RecvError::Timeout) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Whether a whole message is in the ring, so that a receive would not wait at all (one
    /// larger than the ring never is; nor is one a deadline interrupted).
    pub fn has_message(&self) -> bool {
        if self.pending.is_some() || self.failed.is_some() {
            return false;
        }
        // Acquire: as in `wait_for_data`, the bytes below this position are written.
        let write = self.ring.header().writer.write_pos.load(Ordering::Acquire);
        let available = write.wrapping_sub(self.read);
        if available < LEN_BYTES || available > self.ring.cap() {
            return false;
        }
        let mut prefix = [0u8; 8];
        // SAFETY: 8 bytes from `read` on are published (`available >= 8`, and the writer
        // never has more than the ring's capacity ahead of us) and not yet released to the
        // writer; `prefix` is a local array of 8 bytes.
        unsafe {
            self.ring
                .copy_out(self.read, prefix.as_mut_ptr(), prefix.len())
        };
        available - LEN_BYTES >= u64::from_le_bytes(prefix)
    }

    /// See [`ShmSender::forget_copy`].
    pub(crate) fn forget_copy(mut self) {
        self.copy = true;
    }
}

impl Drop for ShmReceiver {
    fn drop(&mut self) {
        if !self.copy {
            self.close();
        }
    }
}

impl fmt::Debug for ShmReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmReceiver")
            .field("ring", &self.ring.index)
            .field("capacity", &self.ring.capacity)
            .field("read", &self.read)
            .field("max_message", &self.max_message)
            .field("pending", &self.pending)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
