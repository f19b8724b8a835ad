//! [`IpcArg`]: an ipc-channel endpoint as a pool argument (see the module documentation of
//! `interop` for the design and its limits).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use ipc_channel::ipc::{
    IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender, IpcSharedMemory,
    OpaqueIpcReceiver, OpaqueIpcSender,
};
use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::handles;

/// How long a child waits for the parent to hand over an endpoint once it asked for it. The
/// parent's thread does nothing else, so only a parent that cannot connect (out of
/// descriptors) or is stopped makes a child wait that long; the child's decoding then fails.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest server name a child may send (a path in the temporary directory).
const MAX_NAME: usize = 4096;

/// What the parent sends to a child's one-shot server: the endpoint, or why there is none.
type Answer<E> = Result<E, String>;

/// An ipc-channel endpoint that can travel inside a pool argument (see [`crate::interop`]).
///
/// Implemented for every endpoint ipc-channel has; sealed. Senders and shared memory are
/// *copied* to each process that decodes the argument; receivers are *moved* to the first.
pub trait IpcEndpoint: Serialize + DeserializeOwned + Send + 'static + private::Sealed {}

mod private {
    /// Seals [`IpcEndpoint`](super::IpcEndpoint) and says how an endpoint is handed out.
    // A public trait in a private module: nameable by no one outside, as sealing requires.
    #[allow(unreachable_pub)]
    pub trait Sealed: Sized {
        /// What error messages call it.
        const NAME: &'static str;
        /// The endpoint for one more process: a clone, or the endpoint itself the first time.
        fn hand_out(held: &mut Option<Self>) -> Option<Self>;
    }
}

macro_rules! endpoint {
    (copied: $name:literal, [$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> private::Sealed for $ty {
            const NAME: &'static str = $name;
            fn hand_out(held: &mut Option<Self>) -> Option<Self> {
                held.clone()
            }
        }
        impl<$($generics)*> IpcEndpoint for $ty {}
    };
    (moved: $name:literal, [$($generics:tt)*] $ty:ty) => {
        impl<$($generics)*> private::Sealed for $ty {
            const NAME: &'static str = $name;
            fn hand_out(held: &mut Option<Self>) -> Option<Self> {
                held.take()
            }
        }
        impl<$($generics)*> IpcEndpoint for $ty {}
    };
}

endpoint!(copied: "an IpcSender", [T: Serialize + Send + 'static] IpcSender<T>);
endpoint!(moved: "an IpcReceiver", [T: Send + 'static] IpcReceiver<T>);
endpoint!(copied: "an IpcBytesSender", [] IpcBytesSender);
endpoint!(moved: "an IpcBytesReceiver", [] IpcBytesReceiver);
endpoint!(copied: "an IpcSharedMemory", [] IpcSharedMemory);
endpoint!(copied: "an OpaqueIpcSender", [] OpaqueIpcSender);
endpoint!(moved: "an OpaqueIpcReceiver", [] OpaqueIpcReceiver);

/// An ipc-channel endpoint as an argument of a [`Process`](crate::Process), a
/// [`Pool`](crate::Pool) task (pipe transport) or a pool initializer.
///
/// Wrap the endpoint with [`IpcArg::new`] (or `.into()`), put it anywhere in the arguments,
/// and take it out in the child with [`IpcArg::into_inner`]. See [`crate::interop`] for how
/// it travels and what does not work.
///
/// ```
/// use ipc_channel::ipc::{self, IpcReceiver};
/// use pool_api::Pool;
/// use pool_api::interop::IpcArg;
///
/// fn sum(rx: IpcArg<IpcReceiver<Vec<u64>>>) -> u64 {
///     rx.into_inner().recv().unwrap().iter().sum()
/// }
///
/// let pool = Pool::new(1)?;
/// let (tx, rx) = ipc::channel().unwrap();
/// let result = pool.apply_async(sum, IpcArg::new(rx))?;
/// tx.send(vec![1, 2, 3]).unwrap();
/// assert_eq!(result.get()?, 6);
/// # Ok::<(), pool_api::Error>(())
/// ```
pub struct IpcArg<E: IpcEndpoint> {
    /// Empty only once a receiver was moved out by encoding it.
    endpoint: Mutex<Option<E>>,
}

impl<E: IpcEndpoint> IpcArg<E> {
    /// Wraps `endpoint`.
    pub fn new(endpoint: E) -> IpcArg<E> {
        IpcArg {
            endpoint: Mutex::new(Some(endpoint)),
        }
    }

    /// The endpoint.
    ///
    /// # Panics
    ///
    /// If this argument held a receiver that was moved out by encoding it (pool took it to
    /// hand it to a child). A decoded argument always holds its endpoint.
    pub fn into_inner(self) -> E {
        self.endpoint
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .unwrap_or_else(|| panic!("{} was already handed to another process", E::NAME))
    }
}

impl<E: IpcEndpoint> From<E> for IpcArg<E> {
    fn from(endpoint: E) -> IpcArg<E> {
        IpcArg::new(endpoint)
    }
}

impl<E: IpcEndpoint + fmt::Debug> fmt::Debug for IpcArg<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.endpoint.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("IpcArg").field("endpoint", &*held).finish()
    }
}

impl<E: IpcEndpoint> Serialize for IpcArg<E> {
    /// Sends a token socket through pool's descriptor sink and leaves a thread that hands the
    /// endpoint to whoever asks through the token. Outside pool's encoding of arguments it
    /// fails (no sink) and the endpoint stays here.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut held = self.endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() {
            return Err(S::Error::custom(format!(
                "{} was already handed to another process",
                E::NAME
            )));
        }
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| S::Error::custom(format!("cannot create a socket pair: {e}")))?;
        // First, so that outside pool (no sink) nothing is taken from the argument.
        let written = handles::serialize_fd(theirs.as_fd(), serializer)?;
        drop(theirs);
        let endpoint = E::hand_out(&mut held);
        std::thread::Builder::new()
            .name("pool-ipc-channel".into())
            .spawn(move || serve(ours, endpoint))
            .map_err(|e| S::Error::custom(format!("cannot start a thread: {e}")))?;
        Ok(written)
    }
}

impl<'de, E: IpcEndpoint> Deserialize<'de> for IpcArg<E> {
    /// Asks the parent, through the token, for the endpoint (see the module documentation).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IpcArg<E>, D::Error> {
        let token = UnixStream::from(handles::deserialize_fd(deserializer)?);
        receive::<E>(token)
            .map(IpcArg::new)
            .map_err(D::Error::custom)
    }
}

/// The parent's side: answers each request read from the token until every other copy of the
/// token is closed.
fn serve<E: IpcEndpoint>(mut token: UnixStream, mut held: Option<E>) {
    loop {
        let name = match read_request(&mut token) {
            Ok(Some(name)) => name,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, endpoint = E::NAME, "unreadable ipc-channel hand-off request; no more hand-offs of this argument");
                return;
            }
        };
        let answer: Answer<E> = E::hand_out(&mut held).ok_or_else(|| {
            format!(
                "{} goes to one process only, and it went to another one already",
                E::NAME
            )
        });
        let sent = IpcSender::<Answer<E>>::connect(name)
            .map_err(|e| e.to_string())
            .and_then(|sender| sender.send(answer).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            // The child's wait for this answer ends at its deadline.
            tracing::warn!(error = %e, endpoint = E::NAME, "cannot hand an ipc-channel endpoint to a child");
        }
    }
}

/// One request: a child's one-shot server name, length first. `None` at the end.
fn read_request(token: &mut UnixStream) -> io::Result<Option<String>> {
    let mut len = [0u8; 2];
    loop {
        match token.read(&mut len[..1]) {
            Ok(0) => return Ok(None),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    token.read_exact(&mut len[1..])?;
    let len = usize::from(u16::from_le_bytes(len));
    if len > MAX_NAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "server name too long",
        ));
    }
    let mut name = vec![0; len];
    token.read_exact(&mut name)?;
    String::from_utf8(name)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The child's side: opens a one-shot server, sends its name through the token, and waits for
/// the endpoint.
fn receive<E: IpcEndpoint>(mut token: UnixStream) -> Result<E, String> {
    let (server, name) = IpcOneShotServer::<Answer<E>>::new()
        .map_err(|e| format!("cannot open an ipc-channel one-shot server: {e}"))?;
    let len = u16::try_from(name.len())
        .ok()
        .filter(|&len| usize::from(len) <= MAX_NAME)
        .ok_or("the one-shot server's name is too long")?;
    // One write of a few dozen bytes: a request never interleaves with another child's
    // (the workers of a pool share an initializer argument's token).
    let mut request = Vec::with_capacity(2 + name.len());
    request.extend_from_slice(&len.to_le_bytes());
    request.extend_from_slice(name.as_bytes());
    token
        .write_all(&request)
        .map_err(|e| format!("cannot ask the parent for {}: {e}", E::NAME))?;
    // `accept` has no deadline of its own: it waits on a thread, which stays blocked only if
    // the parent never answers.
    let (done, answer) = mpsc::channel();
    std::thread::Builder::new()
        .name("pool-ipc-channel-accept".into())
        .spawn(move || {
            let _ = done.send(server.accept());
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    match answer.recv_timeout(HANDOFF_TIMEOUT) {
        Ok(Ok((_receiver, answer))) => answer,
        Ok(Err(e)) => Err(format!("receiving {} from the parent: {e}", E::NAME)),
        Err(_) => Err(format!(
            "the parent did not hand over {} within {HANDOFF_TIMEOUT:?}",
            E::NAME
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use ipc_channel::ipc;

    use super::*;

    fn copies(fds: &[OwnedFd]) -> Vec<OwnedFd> {
        fds.iter().map(|fd| fd.try_clone().unwrap()).collect()
    }

    #[test]
    fn a_sender_is_copied_to_every_decoder() {
        let (tx, rx) = ipc::channel::<u32>().unwrap();
        let (bytes, fds) = handles::encode(&IpcArg::new(tx)).unwrap();
        for n in 0..3 {
            let arg: IpcArg<IpcSender<u32>> = handles::decode(&bytes, copies(&fds)).unwrap();
            arg.into_inner().send(n).unwrap();
            assert_eq!(rx.recv().unwrap(), n);
        }
    }

    #[test]
    fn a_receiver_goes_to_the_first_decoder_only() {
        let (tx, rx) = ipc::channel::<u32>().unwrap();
        let arg = IpcArg::new(rx);
        let (bytes, fds) = handles::encode(&arg).unwrap();
        // Encoding moved it out of the argument, as sending it over ipc-channel would.
        // (postcard keeps no message of a custom error: serde_json shows the one written.)
        assert!(handles::encode(&arg).is_err());
        let again = serde_json::to_string(&arg).unwrap_err().to_string();
        assert!(again.contains("already handed"), "{again}");
        let first: IpcArg<IpcReceiver<u32>> = handles::decode(&bytes, copies(&fds)).unwrap();
        assert!(handles::decode::<IpcArg<IpcReceiver<u32>>>(&bytes, fds).is_err());
        tx.send(7).unwrap();
        assert_eq!(first.into_inner().recv().unwrap(), 7);
    }

    #[test]
    fn an_endpoint_nobody_decodes_is_released_with_its_encoding() {
        let (tx, rx) = ipc::channel::<u32>().unwrap();
        let encoded = handles::encode(&IpcArg::new(rx)).unwrap();
        tx.send(1).unwrap();
        drop(encoded);
        // The parent's thread saw the token's last copy close and dropped the receiver.
        let released = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            tx.send(2).is_err()
        });
        assert!(released, "the receiver is still held");
    }
}
