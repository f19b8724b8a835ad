//! Moving messages between two processes: one contract, two flavors.
//!
//! A [`Channel`] is one end of a bidirectional, message-oriented link. Messages are byte
//! strings; boundaries are kept (an empty message is a message). Both flavors implement the
//! same contract, checked by one conformance suite (`tests/conformance.rs`):
//!
//! - `pipe`: a Unix stream socket pair with our own framing (an 8-byte little-endian length,
//!   then the bytes). The length is checked against a limit before anything is allocated, and
//!   the receive buffer grows only as bytes really arrive, so a lying header costs nothing.
//! - `shm`: two single-producer/single-consumer byte rings (one per direction) in a memfd
//!   mapping, with a short adaptive spin and then a futex sleep. A message larger than the ring
//!   is streamed through it in pieces, so data is copied once on each side.
//!
//! The contract, for both:
//! - `send` returns once the whole message is in the channel (not when the peer has read it);
//!   it blocks while the channel is full, up to its deadline.
//! - `recv_into` replaces the buffer's contents with the next message, reusing its capacity.
//! - `recv_with` hands the next message to a reader piecewise (each part copied once, straight
//!   into where the reader wants it), never past its end, and consumes what is left unread.
//! - A peer that closes its end or dies gives [`RecvError::Disconnected`] /
//!   [`SendError::Disconnected`] once the messages already sent are read — never a hang. For
//!   `shm`, death is noticed by whoever watches the peer process (a pidfd), which calls
//!   [`PeerDeath::notify`]; a graceful close is noticed by itself.
//! - A channel splits into a [`Sender`] and a [`Receiver`] that may live on different threads,
//!   so that a side that sends a large message while its peer does the same can also receive:
//!   a full channel never deadlocks a side that keeps receiving.
//!
//! The flavor is chosen at run time with [`TransportKind`], and dispatched through an enum
//! rather than a trait object (as crossbeam-channel does with its flavors).

mod error;
pub(crate) mod frame;
pub mod pipe;
pub mod shm;

pub use error::{RecvError, SendError};

use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

/// Which transport carries a channel's messages.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum TransportKind {
    /// A Unix socket pair with length-prefixed framing.
    #[default]
    Pipe,
    /// Shared-memory rings with futex wake-ups. It carries bytes only: no descriptors.
    Shm,
}

/// The largest message a channel accepts unless told otherwise: 16 GiB. It exists so that a
/// corrupt length header is refused rather than believed; raise it with `with_max_message`.
pub const DEFAULT_MAX_MESSAGE: u64 = 16 << 30;

/// How long a receive that found nothing keeps yielding its CPU and looking again before it
/// sleeps (in `poll` or on a futex). A sleeping thread's CPU goes idle, and a virtual
/// machine's idle CPU halts: waking it takes an interrupt through the hypervisor, tens of
/// µs here. A peer that answers within this time is met awake. Yielding, unlike spinning,
/// lets any other thread ready on the CPU run first, so it takes no CPU from the thread
/// being waited for. Measured on a 2-CPU VM: a pool's `apply` round trip over shared
/// memory took 4.6-6 µs with it, 33-120 µs without (two yields, then sleep).
pub(crate) const YIELD_FOR: std::time::Duration = std::time::Duration::from_micros(50);

/// One end of a channel. See the [module documentation](self) for the contract.
#[derive(Debug)]
pub struct Channel {
    sender: Sender,
    receiver: Receiver,
}

/// The sending half of a [`Channel`].
#[derive(Debug)]
pub struct Sender {
    flavor: SenderFlavor,
}

/// The receiving half of a [`Channel`].
#[derive(Debug)]
pub struct Receiver {
    flavor: ReceiverFlavor,
}

#[derive(Debug)]
enum SenderFlavor {
    Pipe(pipe::PipeSender),
    Shm(shm::ShmSender),
}

#[derive(Debug)]
enum ReceiverFlavor {
    Pipe(pipe::PipeReceiver),
    Shm(shm::ShmReceiver),
}

/// Marks a channel's peer as dead, waking anything blocked on it. Only `shm` channels need it
/// (a socket's peer death is seen by the kernel); for `pipe` it does nothing.
#[derive(Clone, Debug)]
pub struct PeerDeath {
    shm: Option<shm::ShmPeerDeath>,
}

impl PeerDeath {
    /// The peer is gone: blocked and future operations on the channel report `Disconnected`
    /// once the data already in the channel has been read.
    pub fn notify(&self) {
        if let Some(shm) = &self.shm {
            shm.notify();
        }
    }
}

impl Channel {
    /// A connected pair of channels of the given kind, both in this process (for threads, and
    /// for tests). Across processes, use [`Channel::for_child`].
    pub fn pair(kind: TransportKind) -> io::Result<(Channel, Channel)> {
        Ok(match kind {
            TransportKind::Pipe => {
                let (a, b) = pipe::PipeChannel::pair()?;
                (a.into(), b.into())
            }
            TransportKind::Shm => {
                let (a, b) = shm::ShmChannel::pair(shm::DEFAULT_RING_CAPACITY)?;
                (a.into(), b.into())
            }
        })
    }

    /// This process's end of a new channel, and the file descriptors the child inherits to
    /// open the other end with [`Channel::from_inherited`].
    pub fn for_child(kind: TransportKind) -> io::Result<(Channel, Vec<OwnedFd>)> {
        Ok(match kind {
            TransportKind::Pipe => {
                let (mine, theirs) = pipe::PipeChannel::pair()?;
                (mine.into(), vec![theirs.into_fd()])
            }
            TransportKind::Shm => {
                let (mine, fd) = shm::ShmChannel::create(shm::DEFAULT_RING_CAPACITY)?;
                (mine.into(), vec![fd])
            }
        })
    }

    /// Opens the child's end of a channel from the descriptors [`Channel::for_child`] gave the
    /// parent, inherited by this process. The mapping's header is validated, never trusted.
    pub fn from_inherited(kind: TransportKind, mut fds: Vec<OwnedFd>) -> io::Result<Channel> {
        let fd = match (fds.pop(), fds.is_empty()) {
            (Some(fd), true) => fd,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a channel end is made of exactly one descriptor",
                ));
            }
        };
        Ok(match kind {
            TransportKind::Pipe => pipe::PipeChannel::from_fd(fd)?.into(),
            TransportKind::Shm => shm::ShmChannel::open(fd)?.into(),
        })
    }

    /// Sets the largest message this end accepts (both directions), [`DEFAULT_MAX_MESSAGE`]
    /// by default.
    pub fn with_max_message(mut self, limit: u64) -> Channel {
        match &mut self.receiver.flavor {
            ReceiverFlavor::Pipe(r) => r.set_max_message(limit),
            ReceiverFlavor::Shm(r) => r.set_max_message(limit),
        }
        match &mut self.sender.flavor {
            SenderFlavor::Pipe(s) => s.set_max_message(limit),
            SenderFlavor::Shm(s) => s.set_max_message(limit),
        }
        self
    }

    /// A handle that declares this channel's peer dead (see [`PeerDeath`]).
    pub fn peer_death(&self) -> PeerDeath {
        match &self.receiver.flavor {
            ReceiverFlavor::Pipe(_) => PeerDeath { shm: None },
            ReceiverFlavor::Shm(r) => PeerDeath {
                shm: Some(r.peer_death()),
            },
        }
    }

    /// Sends one message; see [`Sender::send`].
    pub fn send(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendError> {
        self.sender.send(msg, deadline)
    }

    /// Sends one message made of `parts`; see [`Sender::send_parts`].
    pub fn send_parts(
        &mut self,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        self.sender.send_parts(parts, deadline)
    }

    /// The receiving half, borrowed.
    pub fn receiver(&self) -> &Receiver {
        &self.receiver
    }

    /// Receives one message into a slice; see [`Receiver::recv_into_slice`].
    pub fn recv_into_slice(
        &mut self,
        dst: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Result<usize, Vec<u8>>, RecvError> {
        self.receiver.recv_into_slice(dst, scratch)
    }

    /// Receives one message piecewise; see [`Receiver::recv_with`].
    pub fn recv_with<T>(
        &mut self,
        read: impl FnOnce(&mut MessageReader<'_>) -> T,
    ) -> Result<T, RecvError> {
        self.receiver.recv_with(read)
    }

    /// Receives one message; see [`Receiver::recv_into`].
    pub fn recv_into(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        self.receiver.recv_into(buf, deadline)
    }

    /// The descriptors this end holds (none for `shm`, whose mapping outlives its memfd).
    pub(crate) fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let mut fds = Vec::new();
        if let SenderFlavor::Pipe(s) = &self.sender.flavor {
            fds.push(s.fd().as_raw_fd());
        }
        if let ReceiverFlavor::Pipe(r) = &self.receiver.flavor {
            fds.push(r.fd().as_raw_fd());
        }
        // A pipe end's halves share one socket.
        fds.dedup();
        fds
    }

    /// Marks this end as a parent's end of a child's channel: children forked later from this
    /// process do not hold it (see `fork_safety`). A no-op for `shm`, which holds no
    /// descriptor.
    pub(crate) fn hide_from_forked_children(&mut self) {
        if let SenderFlavor::Pipe(s) = &mut self.sender.flavor {
            s.hide_from_forked_children();
        }
        if let ReceiverFlavor::Pipe(r) = &mut self.receiver.flavor {
            r.hide_from_forked_children();
        }
    }

    /// Drops this process's copy of an end that a forked child uses: its descriptors are
    /// closed here, and a shared-memory end is not marked closed (the child's copy is live).
    pub(crate) fn forget_copy(self) {
        let Channel { sender, receiver } = self;
        if let SenderFlavor::Shm(s) = sender.flavor {
            s.forget_copy();
        }
        if let ReceiverFlavor::Shm(r) = receiver.flavor {
            r.forget_copy();
        }
    }

    /// Splits the channel into halves that may be used from different threads.
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// Joins halves split from the same channel.
    pub fn unsplit(sender: Sender, receiver: Receiver) -> Channel {
        Channel { sender, receiver }
    }
}

impl Sender {
    /// Sends one message, blocking while the channel is full, until `deadline` if given.
    /// On `Ok` the whole message is in the channel.
    pub fn send(&mut self, msg: &[u8], deadline: Option<Instant>) -> Result<(), SendError> {
        self.send_parts(&[msg], deadline)
    }

    /// Sends one message carrying duplicates of `fds` to the peer, which takes them with
    /// [`Receiver::take_fds`] once it read the message. Only the `pipe` flavor carries
    /// descriptors: `shm` refuses any (an `Unsupported` I/O error) and sends nothing.
    pub fn send_parts_with_fds(
        &mut self,
        parts: &[&[u8]],
        fds: &[std::os::fd::BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        match &mut self.flavor {
            SenderFlavor::Pipe(s) => s.send_parts_with_fds(parts, fds, deadline),
            SenderFlavor::Shm(s) if fds.is_empty() => s.send_parts(parts, deadline),
            SenderFlavor::Shm(_) => Err(SendError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "the shm transport cannot carry descriptors",
            ))),
        }
    }

    /// Sends one message now if that needs no waiting; `Ok(false)`, with nothing sent, if it
    /// would have to wait. For a thread that must never block on its peer. Only the `shm`
    /// flavor sends this way (it knows the room left in its ring, and writes a message that
    /// fits all at once); `pipe` always answers `Ok(false)`, since a socket's non-blocking
    /// send may take part of a message and leave the rest to a send that waits.
    pub fn try_send_parts(&mut self, parts: &[&[u8]]) -> Result<bool, SendError> {
        match &mut self.flavor {
            SenderFlavor::Pipe(_) => Ok(false),
            SenderFlavor::Shm(s) => s.try_send_parts(parts),
        }
    }

    /// Sends one message whose bytes are the concatenation of `parts` (a header and a payload,
    /// say) without concatenating them first.
    pub fn send_parts(
        &mut self,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        match &mut self.flavor {
            SenderFlavor::Pipe(s) => s.send_parts(parts, deadline),
            SenderFlavor::Shm(s) => s.send_parts(parts, deadline),
        }
    }
}

impl Receiver {
    /// Takes the `n` oldest descriptors that arrived with messages (see
    /// [`Sender::send_parts_with_fds`]); `None` if fewer arrived.
    pub fn take_fds(&mut self, n: usize) -> Option<Vec<OwnedFd>> {
        match &mut self.flavor {
            ReceiverFlavor::Pipe(r) => r.take_fds(n),
            ReceiverFlavor::Shm(_) => (n == 0).then(Vec::new),
        }
    }

    /// Whether a message (or its start) is already here, so that a receive would not wait for
    /// the descriptor: buffered by the `pipe` flavor, or in the ring of the `shm` flavor.
    pub fn has_buffered(&self) -> bool {
        match &self.flavor {
            ReceiverFlavor::Pipe(r) => r.has_buffered(),
            ReceiverFlavor::Shm(r) => r.has_data(),
        }
    }

    /// Whether a whole message is here, so that a receive would not wait at all: in the
    /// `pipe` flavor's buffer (one longer than the buffer never is), or in the `shm` flavor's
    /// ring (one longer than the ring never is).
    pub fn has_message(&self) -> bool {
        match &self.flavor {
            ReceiverFlavor::Pipe(r) => r.has_message(),
            ReceiverFlavor::Shm(r) => r.has_message(),
        }
    }

    /// Waits until a message (or its start) is here, the peer is gone, or `deadline` passes
    /// (`Ok(false)`), consuming nothing: unlike a receive with a deadline, it never leaves a
    /// message half-received. A peer that is gone is seen by the next receive (`pipe`) or
    /// returned here (`shm`).
    pub fn wait_readable(&mut self, deadline: Option<Instant>) -> Result<bool, RecvError> {
        match &mut self.flavor {
            ReceiverFlavor::Pipe(r) => r.wait_readable(deadline),
            ReceiverFlavor::Shm(r) => r.wait_readable(deadline),
        }
    }

    /// How long each wait for a message spins before it sleeps (`shm` only; a `pipe` wait
    /// always sleeps in the kernel). `None`, the default, adapts the spin to how long past
    /// waits took, and never spins on a machine of two CPUs or fewer, where a spinner
    /// usually holds the CPU that the thread it waits for needs. A thread that knows its
    /// answer comes within microseconds, and that nothing else of its process needs the CPU
    /// meanwhile, gains by spinning: it is spared the wake-up of a sleeper.
    pub fn set_spin(&mut self, budget: Option<std::time::Duration>) {
        if let ReceiverFlavor::Shm(r) = &mut self.flavor {
            r.set_spin(budget);
        }
    }

    /// The descriptor that becomes readable when data arrives or the peer hangs up (`pipe`
    /// only), for a `poll` over several channels.
    pub fn readable_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match &self.flavor {
            ReceiverFlavor::Pipe(r) => Some(r.fd()),
            ReceiverFlavor::Shm(_) => None,
        }
    }

    /// Receives the next message into `buf` (its previous contents are replaced, its capacity
    /// reused), blocking until one arrives, the peer is gone, or `deadline` passes.
    pub fn recv_into(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        match &mut self.flavor {
            ReceiverFlavor::Pipe(r) => r.recv_into(buf, deadline),
            ReceiverFlavor::Shm(r) => r.recv_into(buf, deadline),
        }
    }

    /// Receives the next message into `dst`, blocking until one arrives or the peer is gone:
    /// `Ok(len)`, or `Err(message)` (whole) when it is longer than `dst`. The `shm` flavor
    /// copies out of its ring straight into `dst`; the `pipe` flavor receives into `scratch`
    /// (reused between calls) and copies.
    pub fn recv_into_slice(
        &mut self,
        dst: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<Result<usize, Vec<u8>>, RecvError> {
        match &mut self.flavor {
            ReceiverFlavor::Shm(r) => r.recv_into_slice(dst),
            ReceiverFlavor::Pipe(r) => {
                r.recv_into(scratch, None)?;
                Ok(fit(scratch, dst))
            }
        }
    }
    /// Receives the next message piecewise: `read` is handed a [`MessageReader`] over it and
    /// reads its bytes in parts of the lengths it picks, each straight into the destination
    /// it picks (one copy out of the ring or the socket, no receive buffer). Blocks until
    /// the parts arrive or the peer is gone. What `read` leaves unread is consumed, so the
    /// next receive starts at the next message whatever `read` did.
    ///
    /// `Ok` with what `read` returned once the whole message is consumed; `Err` if the
    /// message could not be received whole (the error a receive would give: the peer went
    /// away in the middle of it, say), after `read`'s reads saw [`ReadError::Transport`].
    /// A message begun by a receive that timed out is completed whole first, then read from
    /// memory.
    pub fn recv_with<T>(
        &mut self,
        read: impl FnOnce(&mut MessageReader<'_>) -> T,
    ) -> Result<T, RecvError> {
        let mut whole = Vec::new();
        let (source, left) = match &mut self.flavor {
            ReceiverFlavor::Shm(r) if r.has_pending() => {
                r.recv_into(&mut whole, None)?;
                let left = whole.len();
                (Source::Slice(&whole), left)
            }
            ReceiverFlavor::Shm(r) => {
                let left = r.begin_message()?;
                (Source::Shm(r), left)
            }
            ReceiverFlavor::Pipe(r) => {
                let left = r.begin_message()?;
                (Source::Pipe(r), left)
            }
        };
        let mut reader = MessageReader {
            source,
            left,
            failed: None,
        };
        let value = read(&mut reader);
        reader.finish()?;
        Ok(value)
    }
}

/// A message being received piecewise (see [`Receiver::recv_with`]): its bytes are read in
/// order, each part into a destination of the reader's choosing, and never past the
/// message's end.
#[derive(Debug)]
pub struct MessageReader<'r> {
    source: Source<'r>,
    /// Bytes of the message not read yet.
    left: usize,
    /// Why the message cannot be received whole, once a read found out.
    failed: Option<RecvError>,
}

#[derive(Debug)]
enum Source<'r> {
    Pipe(&'r mut pipe::PipeReceiver),
    Shm(&'r mut shm::ShmReceiver),
    Slice(&'r [u8]),
}

/// Why a [`MessageReader`] read nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The part asked for goes past the message's end (a length inside the message claims
    /// more than the message holds). Nothing was consumed; the message may still be read.
    #[error("a read of {want} bytes past the message's end ({left} bytes left)")]
    PastEnd {
        /// The bytes asked for.
        want: usize,
        /// The bytes left in the message.
        left: usize,
    },
    /// The message could not be received whole; [`Receiver::recv_with`] returns why.
    #[error("the message could not be received")]
    Transport,
}

impl MessageReader<'_> {
    /// The bytes of the message not read yet.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Reads the next `dst.len()` bytes of the message into `dst`.
    pub fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), ReadError> {
        // SAFETY: a `MaybeUninit<u8>` has the layout of a `u8`, and the reads below only
        // write initialised bytes into it, so `dst` stays initialised.
        let dst = unsafe { &mut *(std::ptr::from_mut(dst) as *mut [std::mem::MaybeUninit<u8>]) };
        self.read_uninit(dst)
    }

    /// Appends the next `len` bytes of the message to `dst`. The vector grows as bytes
    /// arrive (in steps of at most 64 MiB), so a message whose sender died in the middle of
    /// it costs no more than what arrived.
    pub fn read_to_vec(&mut self, dst: &mut Vec<u8>, len: usize) -> Result<(), ReadError> {
        self.check(len)?;
        let mut done = 0;
        while done < len {
            let step = frame::reserve_step(len as u64, done);
            dst.reserve_exact(step);
            let spare = &mut dst.spare_capacity_mut()[..step];
            self.read_uninit(spare)?;
            // SAFETY: `read_uninit` initialised those `step` bytes of the spare capacity.
            unsafe { dst.set_len(dst.len() + step) };
            done += step;
        }
        Ok(())
    }

    fn check(&self, want: usize) -> Result<(), ReadError> {
        if self.failed.is_some() {
            return Err(ReadError::Transport);
        }
        if want > self.left {
            return Err(ReadError::PastEnd {
                want,
                left: self.left,
            });
        }
        Ok(())
    }

    /// Reads the next `dst.len()` bytes of the message into `dst`, initialising it.
    fn read_uninit(&mut self, dst: &mut [std::mem::MaybeUninit<u8>]) -> Result<(), ReadError> {
        self.check(dst.len())?;
        let result = match &mut self.source {
            Source::Pipe(r) => r.read_part(dst),
            Source::Shm(r) => r.read_part(dst),
            Source::Slice(bytes) => {
                let (part, rest) = bytes.split_at(dst.len());
                for (to, from) in dst.iter_mut().zip(part) {
                    to.write(*from);
                }
                *bytes = rest;
                Ok(())
            }
        };
        match result {
            Ok(()) => {
                self.left -= dst.len();
                Ok(())
            }
            Err(err) => {
                self.failed = Some(err);
                Err(ReadError::Transport)
            }
        }
    }

    /// Consumes what was not read, and ends the message.
    fn finish(self) -> Result<(), RecvError> {
        let MessageReader {
            source,
            left,
            failed,
        } = self;
        if let Some(err) = failed {
            return Err(err);
        }
        match source {
            Source::Pipe(r) => {
                r.skip_part(left)?;
                r.end_message();
            }
            Source::Shm(r) => {
                r.skip_part(left)?;
                r.end_message();
            }
            Source::Slice(_) => {}
        }
        Ok(())
    }
}

/// A whole received message copied into `dst` if it fits (`message` keeps its buffer for
/// reuse), else taken out of `message` and handed back.
fn fit(message: &mut Vec<u8>, dst: &mut [u8]) -> Result<usize, Vec<u8>> {
    match dst.get_mut(..message.len()) {
        Some(to) => {
            to.copy_from_slice(message);
            Ok(message.len())
        }
        None => Err(std::mem::take(message)),
    }
}

impl From<pipe::PipeChannel> for Channel {
    fn from(c: pipe::PipeChannel) -> Channel {
        let (s, r) = c.split();
        Channel {
            sender: Sender {
                flavor: SenderFlavor::Pipe(s),
            },
            receiver: Receiver {
                flavor: ReceiverFlavor::Pipe(r),
            },
        }
    }
}

impl From<shm::ShmChannel> for Channel {
    fn from(c: shm::ShmChannel) -> Channel {
        let (s, r) = c.split();
        Channel {
            sender: Sender {
                flavor: SenderFlavor::Shm(s),
            },
            receiver: Receiver {
                flavor: ReceiverFlavor::Shm(r),
            },
        }
    }
}
