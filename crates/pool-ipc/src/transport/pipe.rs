//! The `pipe` transport: a Unix stream socket pair with length-prefixed framing.
//!
//! A socket pair rather than two pipes: one descriptor per end, full duplex, and `sendmsg`
//! takes `MSG_NOSIGNAL`, so a dead peer is an `EPIPE` error rather than a SIGPIPE that kills
//! a worker whose signal dispositions were never set up by std's runtime.
//!
//! Receiving reads into a staging buffer, so a small message costs one `recv` (header and
//! body together, often several messages at once); a large body is read straight into the
//! caller's buffer, so bulk data is copied once. The two halves of a split channel share one
//! open socket (through `dup`), so blocking is chosen per call (`MSG_DONTWAIT`) rather than
//! with `O_NONBLOCK`, which the halves would share.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use rustix::event::PollFlags;

use super::frame::{self, HEADER};
use super::{DEFAULT_MAX_MESSAGE, RecvError, SendError, YIELD_FOR};
use crate::sys;

const STAGING: usize = 64 * 1024;

/// How many times a receiver finding nothing yields before it sleeps, at least (see
/// `received`; and [`YIELD_FOR`]).
const YIELDS_BEFORE_SLEEP: u32 = 2;

/// One end of a `pipe` channel.
#[derive(Debug)]
pub struct PipeChannel {
    stream: UnixStream,
}

/// The sending half of a [`PipeChannel`].
#[derive(Debug)]
pub struct PipeSender {
    /// Declared before `stream`, so it is dropped (unregistered) before the socket closes.
    forks: ForkRegistration,
    /// Shared with the receiving half: splitting needs no second descriptor, so it cannot
    /// fail when the process is out of them.
    stream: Arc<UnixStream>,
    max_message: u64,
}

/// The receiving half of a [`PipeChannel`].
#[derive(Debug)]
pub struct PipeReceiver {
    /// See [`PipeSender`]'s.
    forks: ForkRegistration,
    stream: Arc<UnixStream>,
    max_message: u64,
    /// Bytes received and not yet handed out: `staging[start..end]`. Zero-initialised once,
    /// so that `recvmsg` (which needs initialised memory) can read into it.
    staging: Box<[u8]>,
    end: usize,
    start: usize,
    /// Between a consumed header and the end of its body.
    mid_message: bool,
    /// Set when a message was cut by a timeout: the stream is out of step.
    broken: bool,
    /// Descriptors received with the first byte of the messages that carried them, in order,
    /// until the message's reader takes them with [`PipeReceiver::take_fds`].
    fds: VecDeque<OwnedFd>,
}

/// Most descriptors one message may carry (Linux's `SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

impl PipeChannel {
    /// A connected pair (close-on-exec).
    pub fn pair() -> io::Result<(PipeChannel, PipeChannel)> {
        let (a, b) = UnixStream::pair()?;
        Ok((PipeChannel { stream: a }, PipeChannel { stream: b }))
    }

    /// Opens an end from an inherited descriptor, which must be a stream socket.
    pub fn from_fd(fd: OwnedFd) -> io::Result<PipeChannel> {
        if !sys::is_stream_socket(fd.as_fd())? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a stream socket",
            ));
        }
        Ok(PipeChannel {
            stream: UnixStream::from(fd),
        })
    }

    /// The end's descriptor, to be inherited by a child.
    pub fn into_fd(self) -> OwnedFd {
        self.stream.into()
    }

    /// Splits into halves, which share the descriptor (it closes with the second).
    pub fn split(self) -> (PipeSender, PipeReceiver) {
        let stream = Arc::new(self.stream);
        (
            PipeSender {
                forks: ForkRegistration::default(),
                stream: Arc::clone(&stream),
                max_message: DEFAULT_MAX_MESSAGE,
            },
            PipeReceiver {
                forks: ForkRegistration::default(),
                stream,
                max_message: DEFAULT_MAX_MESSAGE,
                staging: vec![0u8; STAGING].into_boxed_slice(),
                end: 0,
                start: 0,
                mid_message: false,
                broken: false,
                fds: VecDeque::new(),
            },
        )
    }
}

impl PipeSender {
    /// Sets the largest message this half sends.
    pub fn set_max_message(&mut self, limit: u64) {
        self.max_message = limit;
    }

    /// Sends one message made of `parts`; see [`Sender::send_parts`](super::Sender::send_parts).
    pub fn send_parts(
        &mut self,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        self.send_parts_with_fds(parts, &[], deadline)
    }

    /// Sends one message made of `parts`, carrying duplicates of `fds` to the peer: they
    /// travel with the message's first byte (see [`PipeReceiver::take_fds`]).
    pub fn send_parts_with_fds(
        &mut self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        if fds.len() > MAX_FDS_PER_MESSAGE {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many descriptors in one message",
            );
            return Err(SendError::Io(e));
        }
        let mut space = vec![MaybeUninit::<u8>::uninit(); sys::space_for_fds(fds.len().max(1))];
        let mut fds_pending = !fds.is_empty();
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if len > self.max_message {
            return Err(SendError::TooLarge {
                len,
                limit: self.max_message,
            });
        }
        let header = frame::header(len);
        let mut slices: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        slices.push(&header);
        slices.extend(parts.iter().copied().filter(|p| !p.is_empty()));
        let (mut idx, mut off) = (0usize, 0usize);
        while idx < slices.len() {
            let iov: Vec<IoSlice<'_>> = std::iter::once(&slices[idx][off..])
                .chain(slices[idx + 1..].iter().copied())
                .take(64)
                .map(IoSlice::new)
                .collect();
            let with = if fds_pending { fds } else { &[] };
            let nonblocking = deadline.is_some();
            let sent = match sys::send_with_fds(
                self.stream.as_fd(),
                &iov,
                with,
                &mut space,
                nonblocking,
            ) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => 0,
                Err(rustix::io::Errno::AGAIN) => {
                    if !sys::poll_one(self.stream.as_fd(), PollFlags::OUT, deadline)? {
                        return Err(SendError::Timeout);
                    }
                    0
                }
                Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                    return Err(SendError::Disconnected);
                }
                Err(e) => return Err(SendError::Io(e.into())),
            };
            if sent > 0 {
                fds_pending = false;
            }
            // Advance over what was written.
            let mut left = sent;
            while left > 0 {
                let rest = slices[idx].len() - off;
                if left >= rest {
                    left -= rest;
                    idx += 1;
                    off = 0;
                } else {
                    off += left;
                    left = 0;
                }
            }
        }
        Ok(())
    }
}

impl PipeSender {
    /// The socket.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// See [`ForkRegistration`].
    pub(crate) fn hide_from_forked_children(&mut self) {
        self.forks = ForkRegistration::new(self.stream.as_raw_fd());
    }
}

impl PipeReceiver {
    /// See [`ForkRegistration`].
    pub(crate) fn hide_from_forked_children(&mut self) {
        self.forks = ForkRegistration::new(self.stream.as_raw_fd());
    }
}

/// Registers a parent's end of a child's channel so that children forked from this process
/// (`fork`) do not hold it: otherwise the child at the other end would not see end of file
/// when the parent drops its end while such a sibling lives. Unregistered when dropped, just
/// before the socket closes (so a registered number always names this socket).
#[derive(Debug, Default)]
struct ForkRegistration(Option<std::os::fd::RawFd>);

impl ForkRegistration {
    fn new(fd: std::os::fd::RawFd) -> ForkRegistration {
        crate::fork_safety::lock_in_flight().push(fd);
        ForkRegistration(Some(fd))
    }
}

impl Drop for ForkRegistration {
    fn drop(&mut self) {
        if let Some(fd) = self.0.take() {
            let mut registry = crate::fork_safety::lock_in_flight();
            if let Some(i) = registry.iter().position(|r| *r == fd) {
                registry.swap_remove(i);
            }
        }
    }
}

impl PipeReceiver {
    /// Takes the `n` oldest descriptors received: those carried by the message just read,
    /// when its header says it carries `n`. `None` (and nothing taken) if fewer arrived.
    pub fn take_fds(&mut self, n: usize) -> Option<Vec<OwnedFd>> {
        if self.fds.len() < n {
            return None;
        }
        Some(self.fds.drain(..n).collect())
    }

    /// Waits until bytes are here to receive, consuming no message: `Ok(false)` once
    /// `deadline` passes first. The first bytes are received into the staging buffer, as a
    /// receive does first (yielding before it sleeps the same way), so the receive that
    /// follows finds them there.
    pub fn wait_readable(&mut self, deadline: Option<Instant>) -> Result<bool, RecvError> {
        if self.has_buffered() || self.broken {
            return Ok(true);
        }
        match self.fill(deadline, 1) {
            Ok(()) => Ok(true),
            Err(RecvError::Timeout) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Whether received bytes wait in the staging buffer.
    pub fn has_buffered(&self) -> bool {
        self.buffered() > 0
    }

    /// Whether a whole message waits in the staging buffer, so that a receive would not wait
    /// at all (a message longer than the buffer never does).
    pub fn has_message(&self) -> bool {
        let staged = &self.staging[self.start..self.end];
        match staged.first_chunk::<HEADER>() {
            Some(header) => (staged.len() - HEADER) as u64 >= u64::from_le_bytes(*header),
            None => false,
        }
    }

    /// The socket.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// Sets the largest message this half accepts.
    pub fn set_max_message(&mut self, limit: u64) {
        self.max_message = limit;
    }

    /// Receives one message; see [`Receiver::recv_into`](super::Receiver::recv_into).
    pub fn recv_into(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        if self.broken {
            return Err(RecvError::Corrupt(
                "a previous receive was cut short by its deadline",
            ));
        }
        let result = self.recv_inner(buf, deadline);
        // A timeout before the header was complete leaves the stream in step (the partial
        // header stays staged); one inside a body does not.
        if matches!(result, Err(RecvError::Timeout)) && self.mid_message {
            self.broken = true;
        }
        self.mid_message = false;
        result
    }

    fn recv_inner(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        buf.clear();
        while self.buffered() < HEADER {
            self.fill(deadline, HEADER - self.buffered())?;
        }
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&self.staging[self.start..self.start + HEADER]);
        let len = frame::body_len(header, self.max_message)?;
        self.start += HEADER;
        self.mid_message = true;
        // What is already staged goes over first.
        let staged = self
            .buffered()
            .min(usize::try_from(len).unwrap_or(usize::MAX));
        buf.extend_from_slice(&self.staging[self.start..self.start + staged]);
        self.start += staged;
        // The rest straight into `buf`, grown only as bytes arrive.
        while (buf.len() as u64) < len {
            let step = frame::reserve_step(len, buf.len());
            if len - (buf.len() as u64) < STAGING as u64 {
                // A small remainder: stage it so that the next message's header comes along.
                self.fill(deadline, 1)?;
                let take = self.buffered().min(step);
                buf.extend_from_slice(&self.staging[self.start..self.start + take]);
                self.start += take;
                continue;
            }
            buf.reserve(step);
            let spare = &mut buf.spare_capacity_mut()[..step];
            let n = recv_some(&self.stream, spare, deadline)?;
            // SAFETY: `recv_some` initialized the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
        }
        Ok(())
    }

    /// Starts receiving the next message piecewise: waits for its header, checks its length
    /// against the limit and consumes it. The caller then reads exactly that many bytes with
    /// [`PipeReceiver::read_part`] and [`PipeReceiver::skip_part`], and ends with
    /// [`PipeReceiver::end_message`].
    pub(crate) fn begin_message(&mut self) -> Result<usize, RecvError> {
        if self.broken {
            return Err(RecvError::Corrupt(
                "a previous receive was cut short by its deadline",
            ));
        }
        while self.buffered() < HEADER {
            self.fill(None, HEADER - self.buffered())?;
        }
        let mut header = [0u8; HEADER];
        header.copy_from_slice(&self.staging[self.start..self.start + HEADER]);
        let len = frame::body_len(header, self.max_message)?;
        let len = usize::try_from(len).map_err(|_| RecvError::TooLarge {
            len,
            limit: usize::MAX as u64,
        })?;
        self.start += HEADER;
        self.mid_message = true;
        Ok(len)
    }

    /// Receives the next `dst.len()` bytes of the message begun with
    /// [`PipeReceiver::begin_message`] into `dst` (the caller keeps within the message's
    /// length): what is staged first, then a large part straight from the socket, a small
    /// one through the staging buffer (so that the next message's header comes along).
    pub(crate) fn read_part(
        &mut self,
        dst: &mut [std::mem::MaybeUninit<u8>],
    ) -> Result<(), RecvError> {
        let result = self.read_part_inner(dst);
        self.cut_if_failed(&result);
        result
    }

    fn read_part_inner(&mut self, dst: &mut [std::mem::MaybeUninit<u8>]) -> Result<(), RecvError> {
        let mut done = 0;
        while done < dst.len() {
            let left = dst.len() - done;
            if self.buffered() == 0 {
                if left >= STAGING {
                    done += recv_some(&self.stream, &mut dst[done..], None)?;
                    continue;
                }
                self.fill(None, 1)?;
            }
            let take = self.buffered().min(left);
            let from = &self.staging[self.start..self.start + take];
            let to = &mut dst[done..done + take];
            // SAFETY: `from` and `to` are `take` bytes each, one in our staging buffer, the
            // other in the caller's slice (borrowed mutably, so not overlapping); a
            // `MaybeUninit<u8>` has the layout of a `u8`.
            unsafe {
                std::ptr::copy_nonoverlapping(from.as_ptr(), to.as_mut_ptr().cast::<u8>(), take)
            };
            self.start += take;
            done += take;
        }
        Ok(())
    }

    /// Consumes the next `len` bytes of the message being read, through the staging buffer.
    pub(crate) fn skip_part(&mut self, len: usize) -> Result<(), RecvError> {
        let mut done = 0;
        let mut result = Ok(());
        while done < len {
            if self.buffered() == 0 {
                if let Err(err) = self.fill(None, 1) {
                    result = Err(err);
                    break;
                }
            }
            let take = self.buffered().min(len - done);
            self.start += take;
            done += take;
        }
        self.cut_if_failed(&result);
        result
    }

    /// A message cut short by anything but the peer's going away leaves the stream out of
    /// step: later receives refuse it.
    fn cut_if_failed(&mut self, result: &Result<(), RecvError>) {
        if matches!(result, Err(err) if !matches!(err, RecvError::Disconnected)) {
            self.broken = true;
        }
    }

    /// Ends a message read piecewise.
    pub(crate) fn end_message(&mut self) {
        self.mid_message = false;
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Receives at least one byte into the staging buffer, with any descriptors that came
    /// along. Only called with fewer than a header's bytes staged, so there is room.
    fn fill(&mut self, deadline: Option<Instant>, _want: usize) -> Result<(), RecvError> {
        if self.start > 0 {
            self.staging.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = recv_staged(
            &self.stream,
            &mut self.staging[self.end..],
            deadline,
            &mut self.fds,
        )?;
        self.end += n;
        Ok(())
    }
}

/// Receives at least one byte into `into` with `recvmsg`, collecting the descriptors that came
/// along into `fds`; end of stream is `Disconnected`. Every message's first bytes (its header,
/// which its descriptors ride with) are read through here.
fn recv_staged(
    stream: &UnixStream,
    into: &mut [u8],
    deadline: Option<Instant>,
    fds: &mut VecDeque<OwnedFd>,
) -> Result<usize, RecvError> {
    let mut space = [MaybeUninit::<u8>::uninit(); sys::space_for_fds(MAX_FDS_PER_MESSAGE)];
    let mut yields = Patience::new();
    loop {
        let got = sys::recv_with_fds(stream.as_fd(), into, &mut space, fds);
        if let Some(n) = received(got, stream, deadline, &mut yields)? {
            return Ok(n);
        }
    }
}

/// What one receive call means: `Some(n)` bytes arrived; `None`: nothing yet, call again
/// (interrupted, or readable after waiting); an error: end of stream, deadline, or failure.
///
/// Nothing there yet: the first `yields` times, the thread yields its CPU and looks again
/// before it sleeps in `poll`. On a machine with fewer CPUs than ready threads the peer is
/// often one yield away from answering, and a sleep costs a wake-up (an inter-processor
/// interrupt on a VM): a pool's `apply` round trip over pipes took ~50 µs without the yields.
fn received(
    got: rustix::io::Result<usize>,
    stream: &UnixStream,
    deadline: Option<Instant>,
    yields: &mut Patience,
) -> Result<Option<usize>, RecvError> {
    match got {
        Ok(0) => Err(RecvError::Disconnected),
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::INTR) => Ok(None),
        Err(rustix::io::Errno::AGAIN) if yields.yield_once(deadline) => Ok(None),
        Err(rustix::io::Errno::AGAIN) => {
            if sys::poll_one(stream.as_fd(), PollFlags::IN, deadline)? {
                Ok(None)
            } else {
                Err(RecvError::Timeout)
            }
        }
        Err(rustix::io::Errno::CONNRESET) => Err(RecvError::Disconnected),
        Err(e) => Err(RecvError::Io(e.into())),
    }
}

/// How long a receive that found nothing keeps yielding before it sleeps in `poll`: at least
/// [`YIELDS_BEFORE_SLEEP`] times, and until [`YIELD_FOR`] passed since it first found nothing.
struct Patience {
    yields: u32,
    since: Option<Instant>,
}

impl Patience {
    fn new() -> Patience {
        Patience {
            yields: 0,
            since: None,
        }
    }

    /// Yields the CPU once, unless patience (or the time until `deadline`) ran out.
    fn yield_once(&mut self, deadline: Option<Instant>) -> bool {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        let until = deadline.map_or(since + YIELD_FOR, |d| d.min(since + YIELD_FOR));
        if self.yields >= YIELDS_BEFORE_SLEEP && now >= until {
            return false;
        }
        self.yields += 1;
        std::thread::yield_now();
        true
    }
}

/// Receives at least one byte of a message's body straight into the caller's buffer, waiting
/// until `deadline`; end of stream is `Disconnected`. Never reads past the body it is given
/// room for, so never reaches the next message's first byte and its descriptors.
fn recv_some(
    stream: &UnixStream,
    into: &mut [std::mem::MaybeUninit<u8>],
    deadline: Option<Instant>,
) -> Result<usize, RecvError> {
    let mut yields = Patience::new();
    loop {
        let got = sys::recv_nonblocking(stream.as_fd(), into);
        if let Some(n) = received(got, stream, deadline, &mut yields)? {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_takes_no_second_descriptor() {
        // Splitting must not need a descriptor: a process out of them must still split.
        let (a, b) = PipeChannel::pair().unwrap();
        let fd = a.stream.as_raw_fd();
        let (mut tx, rx) = a.split();
        assert_eq!(tx.fd().as_raw_fd(), fd);
        assert_eq!(rx.fd().as_raw_fd(), fd);
        // The socket closes with the second half, not the first.
        drop(rx);
        tx.send_parts(&[b"still open"], None).unwrap();
        let (_, mut from_a) = b.split();
        let mut got = Vec::new();
        from_a.recv_into(&mut got, None).unwrap();
        assert_eq!(got, b"still open");
        drop(tx);
        assert!(matches!(
            from_a.recv_into(&mut got, None),
            Err(RecvError::Disconnected)
        ));
    }
}
