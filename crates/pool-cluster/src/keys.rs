//! The names of a pool's keys, and the checks on the names callers choose.
//!
//! Every key of a pool is `pool:{NAME}:...`. The braces are Redis Cluster's hash tag: all of
//! a pool's keys hash to one slot, so the MULTI/EXEC that writes a result and acknowledges
//! its chunk touches one node. Names are restricted to a small alphabet so that a name can
//! neither escape its prefix nor contain a brace that would move the hash tag.

use std::fmt;

/// The consumer group every host's workers join on the chunk stream.
pub(crate) const GROUP: &str = "hosts";

/// The consumer that holds chunks of build `fingerprint` refused by workers of other builds,
/// `parked:FINGERPRINT`, one per build so that a worker of that build finds them there at
/// its next takeover ([`Consumer::claim`](crate::Consumer::claim)) instead of waiting for
/// their lease to pass. No worker is ever named so (worker names contain a `/`, see
/// [`check_consumer`]), so nobody renews them.
pub(crate) fn parked(fingerprint: &Fingerprint) -> String {
    format!("parked:{fingerprint}")
}

/// The longest pool name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The longest consumer name accepted.
pub const MAX_CONSUMER_LEN: usize = 128;

/// A pool name or consumer name that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {name:?}: {why}")]
pub struct NameError {
    /// `"pool name"` or `"consumer name"`.
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The keys of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Keys {
    /// The stream of chunks, read by the consumer group [`GROUP`].
    pub(crate) chunks: String,
    /// The stream of outcomes, read by the client.
    pub(crate) results: String,
    /// The hash of the pool's metadata: the owning client, its fingerprint and heartbeat.
    pub(crate) meta: String,
}

impl Keys {
    /// The keys of the pool named `name`, after checking the name.
    pub(crate) fn new(name: &str) -> Result<Keys, NameError> {
        let fail = |why| NameError {
            what: "pool name",
            name: name.to_string(),
            why,
        };
        if name.is_empty() {
            return Err(fail("it is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(fail("it is longer than 64 bytes"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(fail(
                "only ASCII letters, digits, '_', '-' and '.' are allowed",
            ));
        }
        Ok(Keys {
            chunks: format!("pool:{{{name}}}:chunks"),
            results: format!("pool:{{{name}}}:results"),
            meta: format!("pool:{{{name}}}:meta"),
        })
    }

    /// All keys, for expiry and deletion.
    pub(crate) fn all(&self) -> [&str; 3] {
        [&self.chunks, &self.results, &self.meta]
    }
}

/// Checks a worker's consumer name: `HOST/WORKER`, printable ASCII without spaces, at most
/// [`MAX_CONSUMER_LEN`] bytes. The `/` keeps worker names apart from [`parked`] ones.
pub(crate) fn check_consumer(name: &str) -> Result<(), NameError> {
    let fail = |why| NameError {
        what: "consumer name",
        name: name.to_string(),
        why,
    };
    if name.len() > MAX_CONSUMER_LEN {
        return Err(fail("it is longer than 128 bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail("only printable ASCII without spaces is allowed"));
    }
    match name.split_once('/') {
        Some((host, worker)) if !host.is_empty() && !worker.is_empty() => Ok(()),
        _ => Err(fail("it must be HOST/WORKER")),
    }
}

/// A build fingerprint: every chunk carries its client's, and a worker runs only chunks
/// whose fingerprint equals its own, because functions travel by identity (their place in
/// the executable) and only the same build has them in the same place.
///
/// What it is computed from is the caller's choice (a hash of the executable, a version
/// string's hash, ...); this crate only compares them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    /// Lowercase hex, 64 digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("resize-1.v2").unwrap();
        assert_eq!(keys.chunks, "pool:{resize-1.v2}:chunks");
        assert_eq!(keys.results, "pool:{resize-1.v2}:results");
        assert_eq!(keys.meta, "pool:{resize-1.v2}:meta");
    }

    #[test]
    fn names_that_could_escape_are_refused() {
        for bad in ["", "a}b", "a{b", "a b", "a:b", "é", &"x".repeat(65)] {
            assert!(Keys::new(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "nohost",
            "/w",
            "h/",
            "h /w",
            "parked",
            &parked(&Fingerprint([0x22; 32])),
            &format!("h/{}", "x".repeat(127)),
        ] {
            assert!(check_consumer(bad).is_err(), "{bad:?}");
        }
        check_consumer("host-1/w0.3").unwrap();
    }

    #[test]
    fn fingerprints_print_as_hex() {
        let mut fp = [0u8; 32];
        fp[0] = 0xab;
        fp[31] = 0x01;
        let text = Fingerprint(fp).to_string();
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("ab00") && text.ends_with("01"));
    }
}
