//! `Pipe` and its `Connection`s: Python's `multiprocessing.Pipe`, typed.
//!
//! A duplex pipe gives two [`Connection`]s that both send and receive. A one-way pipe gives a
//! [`ReadConnection`] and a [`WriteConnection`], so sending on the reading end does not
//! compile. Values travel with serde (`send`/`recv`), bytes as they are (`send_bytes`,
//! `recv_bytes`, `recv_bytes_into`); message boundaries are kept, empty messages included,
//! and messages over 2 GiB work. Ends are handles: pass one to a child [`Process`] in its
//! arguments, as Python passes `child_conn`.
//!
//! A pipe is a Unix socket pair by default. [`Pipe::duplex_over`] with
//! [`TransportKind::Shm`] carries messages through two rings in shared memory instead (several
//! times the throughput for small messages, and large ones copied once each way instead of
//! through the kernel). Each shared-memory end is paired with a socket that nobody writes to:
//! its hang-up, seen by pool-ipc's watcher thread, is how an end learns that every copy of
//! its peer is closed (dropped, or its process died), so that `recv` ends with
//! [`RecvError::Eof`] and `send` with [`SendError::Closed`] as on a socket, never a hang.
//! As with Python's pipes, a parent that hands an end to a child should drop its own copy.
//!
//! [`Process`]: crate::Process

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_ipc::transport::pipe::PipeChannel;
use pool_ipc::transport::shm::{DEFAULT_RING_CAPACITY, ShmChannel};
use pool_ipc::{Channel, TransportKind, WatchGuard};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CodecError, OsError, RecvError, SendError, transport_io};
use crate::{Error, handles};

/// Makes pipes: Python's `Pipe(duplex)`, as a type whose associated functions are the kinds
/// of pipe (`duplex`, `one_way`, and each `_over` a chosen transport).
///
/// It is a namespace, not a value, on purpose: a pipe is its two ends, which go different
/// ways (one to a child, one kept), so there is nothing a `Pipe` value could hold after it
/// made them; and Python's readers look for `Pipe`. Free functions would scatter the four
/// kinds across the crate root.
#[derive(Debug)]
pub struct Pipe(());

impl Pipe {
    /// A duplex pipe (Python's `Pipe()`): two connected ends that both send and receive.
    ///
    /// ```
    /// let (mut a, mut b) = pool_api::Pipe::duplex()?;
    /// a.send(&(42, None::<i32>, "hello"))?;
    /// let got: (i32, Option<i32>, String) = b.recv()?;
    /// assert_eq!(got, (42, None, "hello".to_string()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn duplex() -> Result<(Connection, Connection), Error> {
        Pipe::duplex_over(TransportKind::Pipe)
    }

    /// A one-way pipe (Python's `Pipe(duplex=False)`): the reading end, then the writing end.
    /// Each end has only its direction's methods, so misuse does not compile:
    ///
    /// ```
    /// let (mut reader, mut writer) = pool_api::Pipe::one_way()?;
    /// writer.send(&"hello")?;
    /// assert_eq!(reader.recv::<String>()?, "hello");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// ```compile_fail
    /// let (mut reader, _writer) = pool_api::Pipe::one_way()?;
    /// reader.send(&"hello")?; // no `send` on the reading end
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn one_way() -> Result<(ReadConnection, WriteConnection), Error> {
        Pipe::one_way_over(TransportKind::Pipe)
    }

    /// A duplex pipe over the given transport: `TransportKind::Pipe` (a socket pair, what
    /// [`Pipe::duplex`] makes) or `TransportKind::Shm` (rings in shared memory; see the
    /// module documentation). Both behave the same to their users.
    ///
    /// ```
    /// use pool_api::{Pipe, Process, TransportKind, WriteConnection};
    ///
    /// fn child(mut conn: WriteConnection) {
    ///     conn.send(&vec![1u8; 100_000]).unwrap();
    /// }
    ///
    /// let (mut reader, writer) = Pipe::one_way_over(TransportKind::Shm)?;
    /// let p = Process::new(child, writer)?.start()?; // `writer` is moved: our copy is dropped
    /// assert_eq!(reader.recv::<Vec<u8>>()?.len(), 100_000);
    /// p.join()?;
    /// // The child exited, so its end is closed: end of file.
    /// assert!(matches!(reader.recv::<u8>(), Err(pool_api::RecvError::Eof)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn duplex_over(kind: TransportKind) -> Result<(Connection, Connection), Error> {
        let io = |e: std::io::Error| Error::from(e);
        match kind {
            TransportKind::Pipe => {
                let (a, b) = Channel::pair(TransportKind::Pipe).map_err(io)?;
                Ok((Connection::over_socket(a), Connection::over_socket(b)))
            }
            TransportKind::Shm => {
                let (a, b, ring) = ShmChannel::pair_shared(DEFAULT_RING_CAPACITY).map_err(io)?;
                let (alive_a, alive_b) = std::os::unix::net::UnixStream::pair().map_err(io)?;
                let a = Connection::over_shm(a, ring.try_clone().map_err(io)?, 0, alive_a.into());
                let b = Connection::over_shm(b, ring, 1, alive_b.into());
                Ok((a.map_err(io)?, b.map_err(io)?))
            }
        }
    }

    /// A one-way pipe over the given transport (see [`Pipe::duplex_over`]): the reading end,
    /// then the writing end.
    pub fn one_way_over(kind: TransportKind) -> Result<(ReadConnection, WriteConnection), Error> {
        let (a, b) = Pipe::duplex_over(kind)?;
        Ok((ReadConnection(a), WriteConnection(b)))
    }
}

/// One end of a duplex [`Pipe`].
#[derive(Debug)]
pub struct Connection {
    chan: Channel,
    /// Reused by `recv_bytes_into`, so that receiving into a caller's buffer allocates nothing
    /// once it has grown to the messages' size.
    scratch: Vec<u8>,
    /// For an end over shared memory, what it needs beyond its rings.
    shm: Option<ShmEnd>,
}

/// What a shared-memory end needs beyond its rings (see the module documentation).
#[derive(Debug)]
struct ShmEnd {
    /// The rings' memfd, to hand this end to a child.
    ring: OwnedFd,
    /// Which end of the rings this is (0 or 1).
    end: u8,
    /// Our side of the liveness socket pair: it hangs up when every copy of the peer's side
    /// is closed.
    alive: OwnedFd,
    /// Declares the peer gone (waking anyone blocked on the rings) when `alive` hangs up.
    _watch: WatchGuard,
}

/// How long a shared-memory end's `poll` and [`wait`] sleep between two looks at the rings
/// (the rings have no descriptor to wait on).
const SHM_POLL_SLICE: Duration = Duration::from_millis(1);

impl Connection {
    /// An end over a connected stream socket's channel (a pipe's, or a [`Listener`]'s or
    /// [`Client`]'s socket).
    ///
    /// [`Listener`]: crate::Listener
    /// [`Client`]: crate::Client
    pub(crate) fn over_socket(chan: Channel) -> Connection {
        Connection {
            chan,
            scratch: Vec::new(),
            shm: None,
        }
    }

    fn over_shm(
        rings: ShmChannel,
        ring: OwnedFd,
        end: u8,
        alive: OwnedFd,
    ) -> std::io::Result<Connection> {
        let chan = Channel::from(rings);
        let death = chan.peer_death();
        let watch = pool_ipc::on_readable(alive.as_fd(), move || death.notify())?;
        Ok(Connection {
            chan,
            scratch: Vec::new(),
            shm: Some(ShmEnd {
                ring,
                end,
                alive,
                _watch: watch,
            }),
        })
    }

    /// Sends a value.
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendError> {
        let bytes = postcard::to_stdvec(value)
            .map_err(|e| SendError::Encode(CodecError::caused_by("encoding a message", e)))?;
        self.send_bytes(&bytes)
    }

    /// Receives a value of type `T`.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let bytes = self.recv_bytes()?;
        postcard::from_bytes(&bytes).map_err(|e| {
            RecvError::Decode(CodecError::caused_by(
                format!(
                    "decoding a message of {} bytes as {}",
                    bytes.len(),
                    std::any::type_name::<T>()
                ),
                e,
            ))
        })
    }

    /// Sends bytes as one message.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        Ok(self.chan.send(bytes, None)?)
    }

    /// Receives one message's bytes.
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, RecvError> {
        let mut buf = Vec::new();
        self.chan.recv_into(&mut buf, None)?;
        Ok(buf)
    }

    /// Receives one message into `buf`, returning its length. A message longer than `buf`
    /// gives [`RecvError::BufferTooShort`], which carries it.
    pub fn recv_bytes_into(&mut self, buf: &mut [u8]) -> Result<usize, RecvError> {
        match self.chan.recv_into_slice(buf, &mut self.scratch)? {
            Ok(len) => Ok(len),
            Err(message) => Err(RecvError::BufferTooShort {
                needed: message.len(),
                message,
            }),
        }
    }

    /// Whether a message (or the end of file) is ready now (Python's `poll()`).
    pub fn poll(&self) -> Result<bool, RecvError> {
        self.poll_timeout(Duration::ZERO)
    }

    /// Whether a message (or the end of file) is ready, waiting up to `timeout`.
    pub fn poll_timeout(&self, timeout: Duration) -> Result<bool, RecvError> {
        let ready = wait_timeout(&[self], timeout).map_err(|e| match e {
            Error::Io(e) => RecvError::Io(OsError(e)),
            other => RecvError::Io(transport_io(other)),
        })?;
        Ok(!ready.is_empty())
    }

    /// The socket: the pipe itself, or a shared-memory end's liveness socket.
    fn fd(&self) -> BorrowedFd<'_> {
        match &self.shm {
            Some(shm) => shm.alive.as_fd(),
            None => self
                .chan
                .receiver()
                .readable_fd()
                .expect("pipes are sockets"),
        }
    }
}

/// The reading end of a one-way [`Pipe`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadConnection(Connection);

/// The writing end of a one-way [`Pipe`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WriteConnection(Connection);

impl ReadConnection {
    /// See [`Connection::recv`].
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        self.0.recv()
    }
    /// See [`Connection::recv_bytes`].
    pub fn recv_bytes(&mut self) -> Result<Vec<u8>, RecvError> {
        self.0.recv_bytes()
    }
    /// See [`Connection::recv_bytes_into`].
    pub fn recv_bytes_into(&mut self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.0.recv_bytes_into(buf)
    }
    /// See [`Connection::poll`].
    pub fn poll(&self) -> Result<bool, RecvError> {
        self.0.poll()
    }

    /// See [`Connection::poll_timeout`].
    pub fn poll_timeout(&self, timeout: Duration) -> Result<bool, RecvError> {
        self.0.poll_timeout(timeout)
    }
}

impl WriteConnection {
    /// See [`Connection::send`].
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendError> {
        self.0.send(value)
    }
    /// See [`Connection::send_bytes`].
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.0.send_bytes(bytes)
    }
}

/// A descriptor on its way into a child's arguments (see `handles`).
struct SentFd<'a>(BorrowedFd<'a>);

impl Serialize for SentFd<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        handles::serialize_fd(self.0, serializer)
    }
}

/// A descriptor received in a child's arguments.
struct ReceivedFd(OwnedFd);

impl<'de> Deserialize<'de> for ReceivedFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReceivedFd, D::Error> {
        handles::deserialize_fd(deserializer).map(ReceivedFd)
    }
}

/// A connection as it travels ([`WireIn`] has the same variants, in the same order).
#[derive(Serialize)]
enum WireOut<'a> {
    Socket(SentFd<'a>),
    Shm {
        ring: SentFd<'a>,
        end: u8,
        alive: SentFd<'a>,
    },
}

#[derive(Deserialize)]
enum WireIn {
    Socket(ReceivedFd),
    Shm {
        ring: ReceivedFd,
        end: u8,
        alive: ReceivedFd,
    },
}

impl Serialize for Connection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.shm {
            None => WireOut::Socket(SentFd(self.fd())),
            Some(shm) => WireOut::Shm {
                ring: SentFd(shm.ring.as_fd()),
                end: shm.end,
                alive: SentFd(shm.alive.as_fd()),
            },
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Connection, D::Error> {
        use serde::de::Error as _;
        let failed = |e: std::io::Error| D::Error::custom(e.to_string());
        match WireIn::deserialize(deserializer)? {
            WireIn::Socket(ReceivedFd(fd)) => {
                let chan = PipeChannel::from_fd(fd).map_err(failed)?;
                Ok(Connection::over_socket(Channel::from(chan)))
            }
            WireIn::Shm {
                ring: ReceivedFd(ring),
                end,
                alive: ReceivedFd(alive),
            } => {
                let rings = ShmChannel::open_shared(&ring, usize::from(end)).map_err(failed)?;
                Connection::over_shm(rings, ring, end, alive).map_err(failed)
            }
        }
    }
}

/// Something [`wait`] can wait for: a connection with a message (or end of file) ready, or a
/// process that exited.
pub trait Waitable {
    /// Ready without waiting (buffered data).
    #[doc(hidden)]
    fn ready_now(&self) -> bool;
    /// Data can arrive without its descriptor becoming readable (shared memory): [`wait`]
    /// must look again now and then.
    #[doc(hidden)]
    fn polled(&self) -> bool {
        false
    }
    /// The descriptor that becomes readable.
    #[doc(hidden)]
    fn sentinel(&self) -> Option<BorrowedFd<'_>>;
    /// A result handle, which has no descriptor: [`wait`] asks it to write to one of its own.
    #[doc(hidden)]
    fn completion(&self) -> Option<&dyn crate::futures::Completion> {
        None
    }
}

impl Waitable for Connection {
    fn ready_now(&self) -> bool {
        self.chan.receiver().has_buffered()
    }
    fn polled(&self) -> bool {
        self.shm.is_some()
    }
    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd())
    }
}

impl Waitable for ReadConnection {
    fn ready_now(&self) -> bool {
        self.0.ready_now()
    }
    fn polled(&self) -> bool {
        self.0.polled()
    }
    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.0.sentinel()
    }
}

/// Python's `multiprocessing.connection.wait`: waits until at least one of `objects` is
/// ready, and returns the indices of the ready ones.
pub fn wait(objects: &[&dyn Waitable]) -> Result<Vec<usize>, Error> {
    wait_within(objects, None)
}

/// [`wait`] for at most `timeout`: the indices of the ready ones, empty on timeout.
pub fn wait_timeout(objects: &[&dyn Waitable], timeout: Duration) -> Result<Vec<usize>, Error> {
    wait_within(objects, Some(timeout))
}

fn wait_within(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>, Error> {
    let deadline = timeout.and_then(crate::deadline_in);
    let mut fds = Vec::new();
    let mut index = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        if let Some(fd) = o.sentinel() {
            fds.push(fd);
            index.push(i);
        }
    }
    let polled = objects.iter().any(|o| o.polled());
    // Result handles have no descriptor: each is asked to write a byte to a socket of this
    // wait's own when its work finishes, and the socket's other end is polled with the rest.
    let completions: Vec<&dyn crate::futures::Completion> =
        objects.iter().filter_map(|o| o.completion()).collect();
    let woken = if completions.is_empty() {
        None
    } else {
        let (reader, writer) = std::os::unix::net::UnixStream::pair()?;
        writer.set_nonblocking(true)?;
        let writer = Arc::new(writer);
        for completion in completions {
            crate::futures::Sealed::watch(
                completion,
                crate::futures::Watcher::Socket(Arc::clone(&writer)),
            );
        }
        Some(reader)
    };
    if let Some(reader) = &woken {
        fds.push(reader.as_fd());
        index.push(usize::MAX);
    }
    loop {
        let now: Vec<usize> = objects
            .iter()
            .enumerate()
            .filter(|(_, o)| o.ready_now())
            .map(|(i, _)| i)
            .collect();
        if !now.is_empty() {
            return Ok(now);
        }
        // Shared-memory data wakes no descriptor: wait in slices and look again.
        let slice = match (polled, deadline) {
            (false, _) => deadline,
            (true, Some(d)) => Some(d.min(Instant::now() + SHM_POLL_SLICE)),
            (true, None) => Some(Instant::now() + SHM_POLL_SLICE),
        };
        let ready = pool_ipc::wait_readable(&fds, slice).map_err(Error::from)?;
        if !ready.is_empty() || slice == deadline || deadline.is_some_and(|d| Instant::now() >= d) {
            // A shared-memory end whose liveness socket fired has its end of file (or the
            // peer's last messages) ready: report it, as a socket's hang-up is.
            // The completions' socket itself is no object: what it woke is found by
            // `ready_now` on the next round.
            let ready: Vec<usize> = ready
                .into_iter()
                .map(|i| index[i])
                .filter(|&i| i != usize::MAX)
                .collect();
            if !ready.is_empty() || woken.is_none() || deadline.is_some_and(|d| Instant::now() >= d)
            {
                return Ok(ready);
            }
        }
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}
