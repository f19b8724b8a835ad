//! [`Listener`] and [`Client`]: Python's `multiprocessing.connection.Listener` and `Client`.
//!
//! Processes that share no ancestry connect by [`Address`]: a Unix socket path, a Linux
//! abstract socket name, or TCP. Each side gets the same [`Connection`] a [`Pipe`] gives, so
//! code written for a pipe works unchanged over a socket someone connected to.
//!
//! With an authentication key, both sides prove that they hold it before anything else is
//! read: a challenge–response with HMAC-SHA256 over a random nonce, in both directions, as
//! CPython 3.12 does it (see `auth.rs` for the messages). A wrong key fails on both sides with
//! [`AuthError`], before a byte of payload is sent or decoded; every handshake message is
//! bounded (256 bytes) and the whole handshake has a deadline
//! ([`DEFAULT_HANDSHAKE_TIMEOUT`] unless set otherwise), so garbage or silence from a peer is
//! a typed error, never a hang or an allocation the peer chose.
//!
//! The key authenticates; it does not encrypt. Over TCP, traffic after the handshake is in
//! the clear and a machine on the path can take over an authenticated connection: use TCP on
//! trusted networks (or a tunnel), as with Python's.
//!
//! Connections carry values and bytes, not handles: a value holding a [`Connection`], a
//! [`Queue`](crate::Queue) or a lock cannot be sent (the encoding fails with a clear error),
//! over Unix sockets as over TCP. Hand handles to children in their arguments instead.
//!
//! [`Pipe`]: crate::Pipe

mod auth;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{self as unix, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pool_ipc::Channel;
use pool_ipc::transport::DEFAULT_MAX_MESSAGE;
use pool_ipc::transport::pipe::PipeChannel;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::connection::{Connection, Waitable};

/// How long the authentication handshake may take unless told otherwise: on a listener, from
/// the moment a connection is taken; on a client, from the moment it connected (which
/// includes waiting for the listener to accept it).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a [`Listener`] listens and a [`Client`] connects.
///
/// Built with [`Address::unix`], [`Address::abstract_name`], [`Address::tcp`], or from a
/// string as Python infers the family from an address: `"@name"` (or `"\0name"`) is an
/// abstract name, a string that parses as a socket address (`"127.0.0.1:5000"`,
/// `"[::1]:0"`) is TCP, anything else is a path. Host names are not resolved: a string
/// like `"localhost:5000"` is a path; resolve it first and use [`Address::tcp`]. An address
/// is a serde value, so it can be handed to a child [`Process`](crate::Process).
///
/// ```
/// use pool_api::Address;
///
/// assert_eq!(Address::from("127.0.0.1:0"), Address::tcp("127.0.0.1:0".parse()?));
/// assert_eq!(Address::from("@my-app"), Address::abstract_name("my-app"));
/// assert_eq!(Address::from("/run/my-app.sock"), Address::unix("/run/my-app.sock"));
/// assert_eq!(Address::abstract_name("my-app").to_string(), "@my-app");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Address {
    /// A Unix socket at a path in the file system. The listener creates the file and removes
    /// it when dropped; a file left there (by a program that was killed) makes `bind` fail
    /// with "address in use", as in Python.
    Unix(PathBuf),
    /// A Linux abstract Unix socket: a name in the network namespace, no file, gone with its
    /// listener. The leading NUL byte is not part of the name.
    Abstract(Vec<u8>),
    /// A TCP socket. Port 0 lets the system pick a free one: [`Listener::address`] tells which.
    Tcp(SocketAddr),
}

impl Address {
    /// A Unix socket at `path`.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let address = pool_api::Address::unix(dir.path().join("app.sock"));
    /// let listener = pool_api::Listener::bind(address.clone(), None)?;
    /// assert_eq!(listener.address(), &address);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unix(path: impl Into<PathBuf>) -> Address {
        Address::Unix(path.into())
    }

    /// A Linux abstract socket named `name` (without the leading NUL byte).
    ///
    /// ```
    /// let name = format!("pool-doc-{}", std::process::id());
    /// let listener = pool_api::Listener::bind(pool_api::Address::abstract_name(name), None)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn abstract_name(name: impl Into<Vec<u8>>) -> Address {
        Address::Abstract(name.into())
    }

    /// A TCP socket address (port 0: any free port, when binding).
    ///
    /// ```
    /// let listener = pool_api::Listener::bind(pool_api::Address::tcp("127.0.0.1:0".parse()?), None)?;
    /// let pool_api::Address::Tcp(bound) = listener.address() else { unreachable!() };
    /// assert_ne!(bound.port(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tcp(address: SocketAddr) -> Address {
        Address::Tcp(address)
    }
}

impl From<SocketAddr> for Address {
    fn from(address: SocketAddr) -> Address {
        Address::Tcp(address)
    }
}

impl From<PathBuf> for Address {
    fn from(path: PathBuf) -> Address {
        Address::Unix(path)
    }
}

impl From<&Path> for Address {
    fn from(path: &Path) -> Address {
        Address::Unix(path.to_path_buf())
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Address {
        if let Some(name) = s.strip_prefix('@').or_else(|| s.strip_prefix('\0')) {
            Address::Abstract(name.as_bytes().to_vec())
        } else if let Ok(address) = s.parse::<SocketAddr>() {
            Address::Tcp(address)
        } else {
            Address::Unix(PathBuf::from(s))
        }
    }
}

impl From<String> for Address {
    fn from(s: String) -> Address {
        Address::from(s.as_str())
    }
}

impl std::str::FromStr for Address {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Address, Self::Err> {
        Ok(Address::from(s))
    }
}

/// `@name` for an abstract socket (bytes that are not printable ASCII escaped), the path,
/// or `ip:port`.
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => path.display().fmt(f),
            Address::Abstract(name) => write!(f, "@{}", name.escape_ascii()),
            Address::Tcp(address) => address.fmt(f),
        }
    }
}

/// A socket that takes connections (Python's `multiprocessing.connection.Listener`). Each
/// [`accept`](Listener::accept) gives a [`Connection`], authenticated when the listener has
/// a key. [`wait`](crate::wait) accepts a listener: it is ready when a connection is pending.
///
/// ```
/// use pool_api::{Client, Listener};
///
/// let listener = Listener::bind("127.0.0.1:0", Some(b"secret"))?;
/// let address = listener.address().clone();
/// let client = std::thread::spawn(move || -> Result<String, pool_api::Error> {
///     let mut conn = Client::connect(address, Some(b"secret"))?;
///     conn.send(&"hello")?;
///     Ok(conn.recv::<String>()?)
/// });
/// let mut conn = listener.accept()?;
/// let got: String = conn.recv()?;
/// conn.send(&format!("{got}, world"))?;
/// assert_eq!(client.join().unwrap()?, "hello, world");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    socket: Socket,
    address: Address,
    authkey: Option<Vec<u8>>,
    handshake_timeout: Duration,
    /// The process that created the socket file of an [`Address::Unix`] listener, which
    /// removes it on drop (a forked copy of the listener leaves it alone).
    owner: Option<u32>,
}

#[derive(Debug)]
enum Socket {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    /// Listens at `address` (anything that converts [into an `Address`](Address)). With
    /// `authkey`, every connection is authenticated before [`accept`](Listener::accept)
    /// returns it; a client must then connect with the same key.
    ///
    /// ```
    /// let listener = pool_api::Listener::bind("127.0.0.1:0", Some(b"secret"))?;
    /// assert!(matches!(listener.address(), pool_api::Address::Tcp(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Listener, Error> {
        let address = address.into();
        let (socket, address, owner) = match address {
            Address::Unix(path) => {
                let l = UnixListener::bind(&path)?;
                (
                    Socket::Unix(l),
                    Address::Unix(path),
                    Some(std::process::id()),
                )
            }
            Address::Abstract(name) => {
                let l = UnixListener::bind_addr(&unix::SocketAddr::from_abstract_name(&name)?)?;
                (Socket::Unix(l), Address::Abstract(name), None)
            }
            Address::Tcp(address) => {
                let l = TcpListener::bind(address)?;
                let bound = l.local_addr()?;
                (Socket::Tcp(l), Address::Tcp(bound), None)
            }
        };
        let listener = Listener {
            socket,
            address,
            authkey: authkey.map(<[u8]>::to_vec),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            owner,
        };
        // Accepting never blocks in `accept(2)`: a connection that was pending when `poll`
        // said so may be gone (reset) by the time it is taken.
        match &listener.socket {
            Socket::Unix(l) => l.set_nonblocking(true)?,
            Socket::Tcp(l) => l.set_nonblocking(true)?,
        }
        Ok(listener)
    }

    /// Where the listener listens; for TCP with port 0, the port the system picked.
    ///
    /// ```
    /// let listener = pool_api::Listener::bind("127.0.0.1:0", None)?;
    /// assert!(listener.address().to_string().starts_with("127.0.0.1:"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Sets how long the authentication handshake of each accepted connection may take
    /// ([`DEFAULT_HANDSHAKE_TIMEOUT`] by default). A client that has not proven its key by
    /// then fails [`accept`](Listener::accept) with [`AuthError::Timeout`](crate::AuthError::Timeout).
    ///
    /// ```
    /// let mut listener = pool_api::Listener::bind("127.0.0.1:0", Some(b"secret"))?;
    /// listener.set_handshake_timeout(std::time::Duration::from_secs(2));
    /// assert_eq!(listener.handshake_timeout(), std::time::Duration::from_secs(2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_handshake_timeout(&mut self, timeout: Duration) {
        self.handshake_timeout = timeout;
    }

    /// How long the authentication handshake of each accepted connection may take.
    ///
    /// ```
    /// let listener = pool_api::Listener::bind("127.0.0.1:0", None)?;
    /// assert_eq!(listener.handshake_timeout(), pool_api::DEFAULT_HANDSHAKE_TIMEOUT);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Waits for a connection and returns it, once authenticated if the listener has a key.
    ///
    /// A client that fails authentication (or sends garbage, or nothing until the handshake
    /// timeout) makes this call fail with [`Error::Auth`]; the listener is unharmed, and
    /// the next call takes the next connection.
    ///
    /// ```
    /// use pool_api::{Client, Listener};
    ///
    /// let listener = Listener::bind("127.0.0.1:0", None)?;
    /// let mut client = Client::connect(listener.address().clone(), None)?;
    /// let mut server = listener.accept()?;
    /// client.send_bytes(b"ping")?;
    /// assert_eq!(server.recv_bytes()?, b"ping");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn accept(&self) -> Result<Connection, Error> {
        match self.accept_until(None)? {
            Some(conn) => Ok(conn),
            None => unreachable!("a wait without a deadline does not time out"),
        }
    }

    /// [`accept`](Listener::accept), waiting at most `timeout` for a connection to arrive:
    /// `Ok(None)` if none did. The handshake of a connection that arrived is bounded by the
    /// [handshake timeout](Listener::set_handshake_timeout), not by `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let listener = pool_api::Listener::bind("127.0.0.1:0", None)?;
    /// assert!(listener.accept_timeout(Duration::from_millis(10))?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<Connection>, Error> {
        self.accept_until(crate::deadline_in(timeout))
    }

    fn accept_until(&self, deadline: Option<Instant>) -> Result<Option<Connection>, Error> {
        loop {
            let accepted = match &self.socket {
                Socket::Unix(l) => l.accept().map(|(s, _)| OwnedFd::from(s)),
                Socket::Tcp(l) => l.accept().and_then(|(s, _)| {
                    s.set_nodelay(true)?;
                    Ok(OwnedFd::from(s))
                }),
            };
            match accepted {
                Ok(fd) => {
                    let (key, timeout) = (self.authkey.as_deref(), self.handshake_timeout);
                    return open(fd, key, auth::Side::Listener, timeout).map(Some);
                }
                // Nothing pending, or a connection reset before we took it: wait for the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if pool_ipc::wait_readable(&[self.socket_fd()], deadline)?.is_empty() {
                return Ok(None);
            }
        }
    }

    fn socket_fd(&self) -> BorrowedFd<'_> {
        match &self.socket {
            Socket::Unix(l) => l.as_fd(),
            Socket::Tcp(l) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let (Address::Unix(path), Some(owner)) = (&self.address, self.owner) {
            if owner == std::process::id() {
                // As Python's listener does; a file someone else put there since is theirs to
                // lose, as in Python.
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Ready when a connection is pending, so that [`accept`](Listener::accept) takes it without
/// waiting for one (its handshake may still wait for the client).
///
/// ```
/// use std::time::Duration;
/// use pool_api::{Client, Listener, wait_timeout};
///
/// let listener = Listener::bind("127.0.0.1:0", None)?;
/// assert!(wait_timeout(&[&listener], Duration::ZERO)?.is_empty());
/// let _client = Client::connect(listener.address().clone(), None)?;
/// assert_eq!(wait_timeout(&[&listener], Duration::from_secs(5))?, [0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl Waitable for Listener {
    fn ready_now(&self) -> bool {
        false
    }
    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        Some(self.socket_fd())
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket_fd()
    }
}

/// Connects to a [`Listener`] (Python's `multiprocessing.connection.Client`). Also
/// [`connect`], the same as a free function.
///
/// ```
/// use pool_api::{Client, Listener};
///
/// let listener = Listener::bind("@pool-doc-client-".to_string() + &std::process::id().to_string(), None)?;
/// let mut conn = Client::connect(listener.address().clone(), None)?;
/// conn.send(&[1, 2, 3])?;
/// assert_eq!(listener.accept()?.recv::<[i32; 3]>()?, [1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Client(());

impl Client {
    /// Connects to the listener at `address` and, with `authkey`, authenticates (both ways)
    /// within [`DEFAULT_HANDSHAKE_TIMEOUT`] (which counts the wait for the listener to
    /// accept). The key must be the listener's: a wrong one fails on both sides with
    /// [`Error::Auth`]. Keys on one side only fail too: a client with a key, against a
    /// listener without one, fails with [`AuthError::Protocol`](crate::AuthError::Protocol) (or its handshake times out);
    /// a client without a key, against a listener with one, receives the listener's
    /// challenge as its first message (which no value of ours decodes from), and the
    /// listener's `accept` fails.
    ///
    /// ```
    /// use pool_api::{Client, Listener};
    ///
    /// let listener = Listener::bind("127.0.0.1:0", Some(b"secret"))?;
    /// let address = listener.address().clone();
    /// let server = std::thread::spawn(move || -> Result<u64, pool_api::Error> {
    ///     Ok(listener.accept()?.recv::<u64>()?)
    /// });
    /// Client::connect(address, Some(b"secret"))?.send(&7u64)?;
    /// assert_eq!(server.join().unwrap()?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
    ) -> Result<Connection, Error> {
        Client::connect_timeout(address, authkey, DEFAULT_HANDSHAKE_TIMEOUT)
    }

    /// [`Client::connect`], with the handshake (and, over TCP, the connection itself) bounded
    /// by `timeout` instead of [`DEFAULT_HANDSHAKE_TIMEOUT`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use pool_api::{AuthError, Client, Error, Listener};
    ///
    /// // A listener that never accepts: the client's handshake times out.
    /// let listener = Listener::bind("127.0.0.1:0", Some(b"secret"))?;
    /// let timeout = Duration::from_millis(50);
    /// let err = Client::connect_timeout(listener.address().clone(), Some(b"secret"), timeout);
    /// assert_eq!(err.unwrap_err(), Error::Auth(AuthError::Timeout(timeout)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_timeout(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Connection, Error> {
        let fd = match address.into() {
            Address::Unix(path) => OwnedFd::from(UnixStream::connect(path)?),
            Address::Abstract(name) => OwnedFd::from(UnixStream::connect_addr(
                &unix::SocketAddr::from_abstract_name(&name)?,
            )?),
            Address::Tcp(address) => {
                let s = TcpStream::connect_timeout(&address, timeout)?;
                s.set_nodelay(true)?;
                OwnedFd::from(s)
            }
        };
        open(fd, authkey, auth::Side::Client, timeout)
    }
}

/// [`Client::connect`] as a free function, as Python's `Client(address, authkey=...)` is one.
///
/// ```
/// let listener = pool_api::Listener::bind("127.0.0.1:0", None)?;
/// let mut conn = pool_api::connect(listener.address().clone(), None)?;
/// conn.send(&"hi")?;
/// assert_eq!(listener.accept()?.recv::<String>()?, "hi");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect(address: impl Into<Address>, authkey: Option<&[u8]>) -> Result<Connection, Error> {
    Client::connect(address, authkey)
}

/// A connected stream socket as a [`Connection`], after the handshake if there is a key.
fn open(
    fd: OwnedFd,
    authkey: Option<&[u8]>,
    side: auth::Side,
    timeout: Duration,
) -> Result<Connection, Error> {
    let mut chan = Channel::from(PipeChannel::from_fd(fd)?);
    if let Some(key) = authkey {
        // Nothing longer than a handshake message is read until the peer proved its key.
        chan = chan.with_max_message(auth::MAX_HANDSHAKE_MESSAGE);
        auth::handshake(&mut chan, key, side, Instant::now() + timeout, timeout)?;
        chan = chan.with_max_message(DEFAULT_MAX_MESSAGE);
    }
    Ok(Connection::over_socket(chan))
}
