//! The error of a `Listener`/`Client` handshake.

use std::time::Duration;

use super::cause::OsError;

/// Why the authentication handshake failed ([`Error::Auth`](crate::Error::Auth); Python's
/// `AuthenticationError`). A wrong key fails on both sides: the side that checked the other's
/// answer gets [`AuthError::WrongDigest`], the side that gave it [`AuthError::Rejected`].
/// Nothing sent after the handshake was read by either side.
///
/// ```
/// use pool_api::{AuthError, Client, Error, Listener};
///
/// let listener = Listener::bind("127.0.0.1:0", Some(b"right key"))?;
/// let address = listener.address().clone();
/// let client = std::thread::spawn(move || Client::connect(address, Some(b"wrong key")));
/// assert_eq!(listener.accept().unwrap_err(), Error::Auth(AuthError::WrongDigest));
/// assert_eq!(client.join().unwrap().unwrap_err(), Error::Auth(AuthError::Rejected));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer's answer to our challenge was wrong: it does not hold our key.
    #[error("authentication failed: the peer's digest was wrong (it holds another key)")]
    WrongDigest,
    /// The peer rejected our answer to its challenge: we do not hold its key.
    #[error("authentication failed: the peer rejected our digest (it holds another key)")]
    Rejected,
    /// The peer did not follow the handshake: a message that is not the expected one, too
    /// long, or a digest other than `{sha256}` (a Python 3.11 peer's HMAC-MD5, say); or it
    /// expected no handshake at all.
    #[error("authentication failed: protocol error: {0}")]
    Protocol(String),
    /// The handshake did not finish within its time limit (a peer that sends nothing, or a
    /// listener that did not accept the connection in time).
    #[error("authentication did not finish within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection during the handshake (a listener without a key, say,
    /// that closed it; or one that rejected us without saying so).
    #[error("authentication failed: the peer closed the connection during the handshake")]
    Closed,
    /// An OS error during the handshake.
    #[error("authentication failed: I/O error: {0}")]
    Io(#[source] OsError),
}
