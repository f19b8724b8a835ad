//! `Pipe` and its `Connection`s: Python's `multiprocessing.Pipe`, typed.
//!
//! A duplex pipe gives two [`Connection`]s that both send and receive. A one-way pipe gives a
//! [`ReadConnection`] and a [`WriteConnection`], so sending on the reading end does not
//! compile. Values travel with serde (`send`/`recv`), bytes as they are (`send_bytes`,
//! `recv_bytes`, `recv_bytes_into`); message boundaries are kept, empty messages included,
//! and messages over 2 GiB work. Ends are handles: pass one to a child [`Process`] in its
//! arguments, as Python passes `child_conn`.
//!
//! [`Process`]: crate::Process

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use pool_ipc::transport::pipe::PipeChannel;
use pool_ipc::{Channel, TransportKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, handles};

/// Why a value was not sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The other end is closed.
    #[error("the other end of the pipe is closed")]
    Closed,
    /// The value could not be encoded.
    #[error("cannot encode the value: {0}")]
    Encode(String),
    /// An OS error.
    #[error("pipe I/O error: {0}")]
    Io(String),
}

/// Why nothing was received.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The other end is closed and every message it sent was read (Python's `EOFError`).
    #[error("end of file: the other end of the pipe is closed")]
    Eof,
    /// The message does not decode as the type asked for.
    #[error("cannot decode the message: {0}")]
    Decode(String),
    /// `recv_bytes_into` was given a buffer shorter than the message; the message is handed
    /// back whole (Python's `BufferTooShort`).
    #[error("the buffer is too short: the message needs {needed} bytes")]
    BufferTooShort {
        /// The message's length.
        needed: usize,
        /// The message.
        message: Vec<u8>,
    },
    /// An OS error.
    #[error("pipe I/O error: {0}")]
    Io(String),
}

impl From<pool_ipc::SendError> for SendError {
    fn from(e: pool_ipc::SendError) -> SendError {
        match e {
            pool_ipc::SendError::Disconnected => SendError::Closed,
            other => SendError::Io(other.to_string()),
        }
    }
}

impl From<pool_ipc::RecvError> for RecvError {
    fn from(e: pool_ipc::RecvError) -> RecvError {
        match e {
            pool_ipc::RecvError::Disconnected => RecvError::Eof,
            other => RecvError::Io(other.to_string()),
        }
    }
}

/// Makes pipes.
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
        let (a, b) = Channel::pair(TransportKind::Pipe).map_err(|e| Error::Io(e.to_string()))?;
        Ok((
            Connection {
                chan: a,
                scratch: Vec::new(),
            },
            Connection {
                chan: b,
                scratch: Vec::new(),
            },
        ))
    }

    /// A one-way pipe (Python's `Pipe(duplex=False)`): the reading end, then the writing end.
    pub fn one_way() -> Result<(ReadConnection, WriteConnection), Error> {
        let (a, b) = Pipe::duplex()?;
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
}

impl Connection {
    /// Sends a value.
    pub fn send<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SendError> {
        let bytes = postcard::to_stdvec(value).map_err(|e| SendError::Encode(e.to_string()))?;
        self.send_bytes(&bytes)
    }

    /// Receives a value of type `T`.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<T, RecvError> {
        let bytes = self.recv_bytes()?;
        postcard::from_bytes(&bytes).map_err(|e| RecvError::Decode(e.to_string()))
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
        self.chan.recv_into(&mut self.scratch, None)?;
        let len = self.scratch.len();
        if len > buf.len() {
            return Err(RecvError::BufferTooShort {
                needed: len,
                message: std::mem::take(&mut self.scratch),
            });
        }
        buf[..len].copy_from_slice(&self.scratch);
        Ok(len)
    }

    /// Whether a message (or the end of file) is ready, waiting up to `timeout` (`None`:
    /// forever; zero: just look).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, RecvError> {
        if self.chan.receiver().has_buffered() {
            return Ok(true);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let ready = pool_ipc::wait_readable(&[self.fd()], deadline)
            .map_err(|e| RecvError::Io(e.to_string()))?;
        Ok(!ready.is_empty())
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.chan
            .receiver()
            .readable_fd()
            .expect("pipes are sockets")
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
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, RecvError> {
        self.0.poll(timeout)
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

impl Serialize for Connection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        handles::serialize_fd(self.fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for Connection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Connection, D::Error> {
        use serde::de::Error as _;
        let fd = handles::deserialize_fd(deserializer)?;
        let chan = PipeChannel::from_fd(fd).map_err(|e| D::Error::custom(e.to_string()))?;
        Ok(Connection {
            chan: Channel::from(chan),
            scratch: Vec::new(),
        })
    }
}

/// Something [`wait`] can wait for: a connection with a message (or end of file) ready, or a
/// process that exited.
pub trait Waitable {
    /// Ready without waiting (buffered data).
    #[doc(hidden)]
    fn ready_now(&self) -> bool;
    /// The descriptor that becomes readable.
    #[doc(hidden)]
    fn sentinel(&self) -> Option<BorrowedFd<'_>>;
}

impl Waitable for Connection {
    fn ready_now(&self) -> bool {
        self.chan.receiver().has_buffered()
    }
    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd())
    }
}

impl Waitable for ReadConnection {
    fn ready_now(&self) -> bool {
        self.0.ready_now()
    }
    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.0.sentinel()
    }
}

/// Python's `multiprocessing.connection.wait`: waits until at least one of `objects` is
/// ready or `timeout` passes (`None`: forever), and returns the indices of the ready ones
/// (empty on timeout).
pub fn wait(objects: &[&dyn Waitable], timeout: Option<Duration>) -> Result<Vec<usize>, Error> {
    let now: Vec<usize> = objects
        .iter()
        .enumerate()
        .filter(|(_, o)| o.ready_now())
        .map(|(i, _)| i)
        .collect();
    if !now.is_empty() {
        return Ok(now);
    }
    let mut fds = Vec::new();
    let mut index = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        if let Some(fd) = o.sentinel() {
            fds.push(fd);
            index.push(i);
        }
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let ready = pool_ipc::wait_readable(&fds, deadline).map_err(|e| Error::Io(e.to_string()))?;
    Ok(ready.into_iter().map(|i| index[i]).collect())
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}
