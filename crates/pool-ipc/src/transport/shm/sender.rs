//! The sending half of an end, the only writer of its ring: a message is framed (its length,
//! then its parts) into the ring, at once when it fits and streamed through it when it does
//! not (see "Framing" in the module documentation).

use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::layout::{LEN_BYTES, PEER_DEAD, READER_CLOSED, WRITER_CLOSED};
use super::ring::Ring;
use super::wait::{Spinner, block_on, wake_all, wake_if_waiting};
use crate::transport::{DEFAULT_MAX_MESSAGE, SendError};

/// The sending half of an end: the only writer of its ring.
pub struct ShmSender {
    ring: Ring,
    /// Our write position (authoritative: never read back from shared memory).
    write: u64,
    /// The reader's position when we last looked; `write - read_seen <= capacity`.
    read_seen: u64,
    max_message: u64,
    spinner: Spinner,
    /// A streamed message was abandoned half-way: the ring is closed.
    broken: bool,
    /// A copy whose process is not the end's user (see [`ShmSender::forget_copy`]): dropping
    /// it must not close the ring.
    pub(super) copy: bool,
}

impl ShmSender {
    /// The sender of `ring`, which holds `write` bytes ever written and `read_seen` ever
    /// consumed (the caller checked `write - read_seen <= capacity`).
    pub(super) fn new(ring: Ring, write: u64, read_seen: u64) -> ShmSender {
        ShmSender {
            ring,
            write,
            read_seen,
            max_message: DEFAULT_MAX_MESSAGE,
            spinner: Spinner::new(),
            broken: false,
            copy: false,
        }
    }
}

/// The pieces of one frame (length prefix, then the message's parts), copied in order.
struct Frame<'a> {
    prefix: [u8; 8],
    parts: &'a [&'a [u8]],
    /// 0 is the prefix, `i + 1` is `parts[i]`.
    segment: usize,
    offset: usize,
}

impl Frame<'_> {
    /// Copies the next `len` bytes of the frame into `ring` at `pos`.
    ///
    /// # Safety
    /// As [`Ring::copy_in`] for `[pos, pos + len)`; `len` is at most what is left of the frame.
    unsafe fn copy_into(&mut self, ring: &Ring, mut pos: u64, mut len: usize) {
        while len > 0 {
            let segment: &[u8] = match self.segment {
                0 => &self.prefix,
                i => match self.parts.get(i - 1) {
                    Some(part) => part,
                    None => return,
                },
            };
            let rest = segment.get(self.offset..).unwrap_or_default();
            let n = rest.len().min(len);
            // SAFETY: `[pos, pos + n)` is part of the range the caller vouched for.
            unsafe { ring.copy_in(pos, &rest[..n]) };
            pos = pos.wrapping_add(n as u64);
            len -= n;
            self.offset += n;
            if self.offset >= segment.len() {
                self.segment += 1;
                self.offset = 0;
            }
        }
    }
}

impl ShmSender {
    /// Sets the largest message this half sends (16 GiB by default); a larger one is refused
    /// with [`SendError::TooLarge`] before anything is written.
    pub fn set_max_message(&mut self, limit: u64) {
        self.max_message = limit;
    }

    /// Sends one message whose bytes are the concatenation of `parts`, blocking while the
    /// ring is full, until `deadline` if given. On `Ok` the whole message is in the ring (not
    /// necessarily read).
    ///
    /// A message that fits in the ring is written only once there is room for all of it, so
    /// `Timeout` leaves the channel as it was. A larger one is streamed as the peer drains it;
    /// if the deadline passes half-way, the channel is closed (the peer sees `Disconnected`
    /// after its earlier messages) and later sends return `Disconnected`.
    pub fn send_parts(
        &mut self,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        let total = self.check_send(parts)?;
        let cap = self.ring.cap();
        let step = self.ring.step as u64;
        let frame_len = total.saturating_add(LEN_BYTES);
        let mut frame = Frame {
            prefix: total.to_le_bytes(),
            parts,
            segment: 0,
            offset: 0,
        };
        let mut remaining = frame_len;
        let mut started = false;
        while remaining > 0 {
            // All at once if it can ever fit (so a timeout leaves nothing behind), else a
            // good piece at a time.
            let need = if frame_len <= cap {
                remaining
            } else {
                remaining.min(step)
            };
            let free = match self.wait_for_space(need, deadline) {
                Ok(free) => free,
                Err(err) => {
                    if started {
                        self.abandon();
                    }
                    return Err(err);
                }
            };
            let n = free.min(remaining);
            // SAFETY: `wait_for_space` saw `free >= n` bytes free.
            unsafe { self.write_frame(&mut frame, n) };
            started = true;
            remaining -= n;
        }
        Ok(())
    }

    /// Sends one message now if the ring has room for all of it; `Ok(false)`, with nothing
    /// written, if it has not (or if the message is larger than the ring and so can only be
    /// streamed). Never waits: for a thread that must not block on its peer.
    pub fn try_send_parts(&mut self, parts: &[&[u8]]) -> Result<bool, SendError> {
        let total = self.check_send(parts)?;
        let frame_len = total.saturating_add(LEN_BYTES);
        let cap = self.ring.cap();
        if frame_len > cap {
            return Ok(false);
        }
        // A deadline already passed: one look at the reader's position, no wait.
        match self.wait_for_space(frame_len, Some(Instant::now())) {
            Ok(_) => {}
            Err(SendError::Timeout) => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut frame = Frame {
            prefix: total.to_le_bytes(),
            parts,
            segment: 0,
            offset: 0,
        };
        // SAFETY: `wait_for_space` saw `frame_len` bytes free.
        unsafe { self.write_frame(&mut frame, frame_len) };
        Ok(true)
    }

    /// What every send checks first; the message's length.
    fn check_send(&self, parts: &[&[u8]]) -> Result<u64, SendError> {
        let total = parts
            .iter()
            .fold(0u64, |sum, part| sum.saturating_add(part.len() as u64));
        if total > self.max_message {
            return Err(SendError::TooLarge {
                len: total,
                limit: self.max_message,
            });
        }
        if self.broken {
            return Err(SendError::Disconnected);
        }
        // Acquire: pairs with the Release/SeqCst `fetch_or` of whoever closed the ring.
        if self.ring.header().state.state.load(Ordering::Acquire) & (READER_CLOSED | PEER_DEAD) != 0
        {
            return Err(SendError::Disconnected);
        }
        Ok(total)
    }

    /// Copies the next `n` bytes of `frame` into the ring and publishes them, a step at a
    /// time (so the reader can start on a long message before its end is written).
    ///
    /// # Safety
    /// At least `n` bytes after our write position are free: `n <= capacity - (write -
    /// read_seen)`, with `read_seen` a read position the reader has published.
    unsafe fn write_frame(&mut self, frame: &mut Frame<'_>, mut n: u64) {
        let step = self.ring.step as u64;
        while n > 0 {
            let k = n.min(step);
            // SAFETY: `k <= n` bytes after our write position are free (the caller's promise),
            // and free bytes are not readable by the reader (it stops at `write`, and had
            // released everything up to `read_seen`).
            unsafe { frame.copy_into(&self.ring, self.write, k as usize) };
            self.write = self.write.wrapping_add(k);
            self.publish();
            n -= k;
        }
    }

    /// Makes the bytes written so far visible to the reader, and wakes it if it sleeps.
    fn publish(&self) {
        let header = self.ring.header();
        // Release: our copies into the ring happen-before any read of them by a reader whose
        // Acquire load sees this position, so it never reads bytes not yet written.
        header.writer.write_pos.store(self.write, Ordering::Release);
        wake_if_waiting(&header.reader.data_waiter);
    }

    /// Waits until at least `need` (`<= capacity`) bytes are free; returns how many are.
    fn wait_for_space(&mut self, need: u64, deadline: Option<Instant>) -> Result<u64, SendError> {
        let cap = self.ring.cap();
        let free = cap - self.write.wrapping_sub(self.read_seen);
        if free >= need {
            return Ok(free);
        }
        let header = self.ring.header();
        let write = self.write;
        let (read, free) = block_on(
            &mut self.spinner,
            &header.writer.space_waiter,
            deadline,
            || SendError::Timeout,
            || {
                if header.state.state.load(Ordering::Acquire) & (READER_CLOSED | PEER_DEAD) != 0 {
                    return Err(SendError::Disconnected);
                }
                // Acquire: the reader's copies out of the bytes below this position
                // happen-before our overwriting them.
                let read = header.reader.read_pos.load(Ordering::Acquire);
                let used = write.wrapping_sub(read);
                if used > cap {
                    return Err(SendError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer corrupted the ring's read position",
                    )));
                }
                let free = cap - used;
                Ok((free >= need).then_some((read, free)))
            },
        )?;
        self.read_seen = read;
        Ok(free)
    }

    /// Gives up on a message half-way through: the stream cannot be resynchronised, so the
    /// ring is closed for good.
    fn abandon(&mut self) {
        self.broken = true;
        self.close();
    }

    fn close(&self) {
        let header = self.ring.header();
        // SeqCst (so also Release): the reader that sees the bit sees every position we
        // published before it; and it is ordered before the wake below (see `wake_all`).
        header.state.state.fetch_or(WRITER_CLOSED, Ordering::SeqCst);
        wake_all(&header.reader.data_waiter);
    }
}

impl ShmSender {
    /// Drops this process's copy of a half that a forked child uses: the mapping is unmapped
    /// here, but the ring is not marked closed (the child's copy is the live one).
    pub(crate) fn forget_copy(mut self) {
        self.copy = true;
    }
}

impl Drop for ShmSender {
    fn drop(&mut self) {
        if !self.copy {
            self.close();
        }
    }
}

impl fmt::Debug for ShmSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmSender")
            .field("ring", &self.ring.index)
            .field("capacity", &self.ring.capacity)
            .field("written", &self.write)
            .field("max_message", &self.max_message)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}
