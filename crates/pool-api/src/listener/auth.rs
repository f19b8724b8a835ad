//! The challenge–response that proves both ends of a connection hold the same key, before any
//! payload is decoded: CPython 3.12's `deliver_challenge`/`answer_challenge`
//! (`Lib/multiprocessing/connection.py`) with its `{sha256}` messages, each one a frame of the
//! pipe transport.
//!
//! One direction ("deliver" on the challenger's side, "answer" on the other):
//!
//! 1. challenger → answerer: `#CHALLENGE#{sha256}` and 40 random bytes;
//! 2. answerer → challenger: `{sha256}` and HMAC-SHA256(key, `{sha256}` + the 40 bytes);
//! 3. challenger → answerer: `#WELCOME#` if the MAC is right (compared in constant time),
//!    else `#FAILURE#`, and the challenger gives up.
//!
//! The listener delivers first and answers second; the client answers first and delivers
//! second. Every message of the handshake is read with a limit of 256 bytes (a longer frame
//! header is refused before anything is allocated) and before one deadline, so a peer that
//! sends garbage or nothing costs a bounded wait and a typed error.
//!
//! Unlike CPython, only `{sha256}` is spoken: a legacy HMAC-MD5 peer (Python 3.11 and older)
//! or another digest is a protocol error.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use pool_ipc::Channel;
use sha2::Sha256;

use crate::error::AuthError;

type HmacSha256 = Hmac<Sha256>;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
const DIGEST: &[u8] = b"{sha256}";
/// Random bytes in a challenge (CPython's `MESSAGE_LENGTH`).
const NONCE_LEN: usize = 40;
/// Fewest random bytes accepted in a peer's challenge (CPython's `_MD5ONLY_MESSAGE_LENGTH`).
const MIN_NONCE_LEN: usize = 20;
/// Longest message read during the handshake (CPython's `recv_bytes(256)`).
pub(super) const MAX_HANDSHAKE_MESSAGE: u64 = 256;

/// Which end of the connection this is: the listener challenges first.
#[derive(Clone, Copy, Debug)]
pub(super) enum Side {
    Listener,
    Client,
}

/// Runs both directions of the challenge–response on `chan`, by `deadline`. The channel must
/// accept messages of at most [`MAX_HANDSHAKE_MESSAGE`] bytes while it runs.
pub(super) fn handshake(
    chan: &mut Channel,
    key: &[u8],
    side: Side,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), AuthError> {
    let mut io = Frames {
        chan,
        deadline,
        timeout,
    };
    match side {
        Side::Listener => {
            deliver(&mut io, key)?;
            answer(&mut io, key)
        }
        Side::Client => {
            answer(&mut io, key)?;
            deliver(&mut io, key)
        }
    }
}

/// The channel with the handshake's deadline, speaking in [`AuthError`]s.
struct Frames<'a> {
    chan: &'a mut Channel,
    deadline: Instant,
    timeout: Duration,
}

impl Frames<'_> {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), AuthError> {
        self.chan
            .send_parts(parts, Some(self.deadline))
            .map_err(|e| match e {
                pool_ipc::SendError::Disconnected => AuthError::Closed,
                pool_ipc::SendError::Timeout => AuthError::Timeout(self.timeout),
                pool_ipc::SendError::Io(e) => AuthError::Io(e.into()),
                other => AuthError::Io(std::io::Error::other(other).into()),
            })
    }

    fn recv(&mut self) -> Result<Vec<u8>, AuthError> {
        let mut buf = Vec::new();
        self.chan
            .recv_into(&mut buf, Some(self.deadline))
            .map_err(|e| match e {
                pool_ipc::RecvError::Disconnected => AuthError::Closed,
                pool_ipc::RecvError::Timeout => AuthError::Timeout(self.timeout),
                pool_ipc::RecvError::TooLarge { len, limit } => AuthError::Protocol(format!(
                    "a handshake message of {len} bytes (at most {limit} expected)"
                )),
                pool_ipc::RecvError::Corrupt(what) => AuthError::Protocol(what.to_string()),
                pool_ipc::RecvError::Io(e) => AuthError::Io(e.into()),
                other => AuthError::Io(std::io::Error::other(other).into()),
            })?;
        Ok(buf)
    }
}

/// A MAC under `key`, to be fed the message.
fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (a long one is hashed first): this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Challenges the peer and checks its answer; tells it whether it passed.
fn deliver(io: &mut Frames<'_>, key: &[u8]) -> Result<(), AuthError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| {
        let e = e.raw_os_error().map_or_else(
            || std::io::Error::other(e.to_string()),
            std::io::Error::from_raw_os_error,
        );
        AuthError::Io(e.into())
    })?;
    io.send(&[CHALLENGE, DIGEST, &nonce])?;
    let response = io.recv()?;
    match verify(key, &nonce, &response) {
        Ok(()) => io.send(&[WELCOME]),
        Err(e) => {
            // Best effort: the peer learns why we hang up, if it still listens.
            let _ = io.send(&[FAILURE]);
            Err(e)
        }
    }
}

/// Whether `response` is `{sha256}` and the MAC of `{sha256}` + `nonce` under `key`.
fn verify(key: &[u8], nonce: &[u8], response: &[u8]) -> Result<(), AuthError> {
    let Some(tag) = response.strip_prefix(DIGEST) else {
        return Err(AuthError::Protocol(
            "the answer to our challenge is not a {sha256} digest".into(),
        ));
    };
    let mut expected = mac(key);
    expected.update(DIGEST);
    expected.update(nonce);
    // Constant time; a tag of the wrong length is refused too.
    expected
        .verify_slice(tag)
        .map_err(|_| AuthError::WrongDigest)
}

/// Answers the peer's challenge and reads its verdict.
fn answer(io: &mut Frames<'_>, key: &[u8]) -> Result<(), AuthError> {
    let message = io.recv()?;
    let Some(challenge) = message.strip_prefix(CHALLENGE) else {
        return Err(AuthError::Protocol(
            "expected a challenge, got something else".into(),
        ));
    };
    let Some(nonce) = challenge.strip_prefix(DIGEST) else {
        return Err(AuthError::Protocol(
            "the challenge asks for a digest other than {sha256}".into(),
        ));
    };
    if nonce.len() < MIN_NONCE_LEN {
        return Err(AuthError::Protocol(format!(
            "a challenge of {} random bytes (at least {MIN_NONCE_LEN} expected)",
            nonce.len()
        )));
    }
    let mut response = mac(key);
    response.update(challenge);
    let tag = response.finalize().into_bytes();
    io.send(&[DIGEST, &tag])?;
    let verdict = io.recv()?;
    match verdict.as_slice() {
        WELCOME => Ok(()),
        FAILURE => Err(AuthError::Rejected),
        _ => Err(AuthError::Protocol(
            "expected #WELCOME# or #FAILURE#, got something else".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pool_ipc::TransportKind;

    fn pair() -> (Channel, Channel) {
        let (a, b) = Channel::pair(TransportKind::Pipe).unwrap();
        (
            a.with_max_message(MAX_HANDSHAKE_MESSAGE),
            b.with_max_message(MAX_HANDSHAKE_MESSAGE),
        )
    }

    fn run(listener_key: &'static [u8], client_key: &'static [u8]) -> [Result<(), AuthError>; 2] {
        let (mut a, mut b) = pair();
        let t = Duration::from_secs(5);
        let deadline = Instant::now() + t;
        let client =
            std::thread::spawn(move || handshake(&mut b, client_key, Side::Client, deadline, t));
        let listener = handshake(&mut a, listener_key, Side::Listener, deadline, t);
        // The listener's end closes on failure, as the real listener's does.
        drop(a);
        [listener, client.join().unwrap()]
    }

    #[test]
    fn the_same_key_passes_both_ways() {
        assert_eq!(run(b"secret", b"secret"), [Ok(()), Ok(())]);
        // Empty and long keys are keys too (HMAC hashes a long one).
        assert_eq!(run(b"", b""), [Ok(()), Ok(())]);
        assert_eq!(run(&[7; 300], &[7; 300]), [Ok(()), Ok(())]);
    }

    #[test]
    fn a_wrong_key_fails_on_both_sides() {
        assert_eq!(
            run(b"secret", b"guess"),
            [Err(AuthError::WrongDigest), Err(AuthError::Rejected)]
        );
    }

    #[test]
    fn the_answer_is_cpythons() {
        // CPython 3.12: hmac.new(key, b"{sha256}" + nonce, "sha256").digest(), prefixed.
        // Reference value computed with Python's hmac module.
        let nonce = [0u8; NONCE_LEN];
        let mut m = mac(b"key");
        m.update(DIGEST);
        m.update(&nonce);
        let tag = m.finalize().into_bytes();
        assert_eq!(
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "21156a7f747e08a3a4512da2478039425891e6c6c9b383ce5c9151aff97bfbb8"
        );
        assert!(verify(b"key", &nonce, &[DIGEST, &tag[..]].concat()).is_ok());
        assert_eq!(
            verify(b"key", &nonce, &[DIGEST, &tag[..31]].concat()),
            Err(AuthError::WrongDigest)
        );
        assert!(matches!(
            verify(b"key", &nonce, &tag),
            Err(AuthError::Protocol(_))
        ));
    }
}
