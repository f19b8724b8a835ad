//! What the cluster tests share: fingerprints, options with short leases and TTLs, a plain
//! Redis client for playing a hostile writer or an observer, and bounded polling.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use pool_cluster::{Broker, BrokerOptions, Completion, Fingerprint, Timeouts};

/// This build's fingerprint in the tests.
pub const FP: Fingerprint = Fingerprint([0x11; 32]);

/// Another build's.
pub const OTHER_FP: Fingerprint = Fingerprint([0x22; 32]);

/// Short timeouts, so that a dead Redis shows in well under a second or two.
pub fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(500),
        io: Duration::from_millis(1000),
    }
}

pub fn broker(url: &str, name: &str) -> Broker {
    Broker::connect(url, BrokerOptions::new(name, FP).timeouts(timeouts())).unwrap()
}

/// A plain connection, as any other client of the instance has.
pub fn plain(url: &str) -> redis::Connection {
    let con = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    con
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Receives until `n` outcomes came or `limit` passed, then checks that no more come within
/// `quiet`.
pub fn recv_n(broker: &mut Broker, n: usize, limit: Duration) -> Vec<Completion> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {n} outcomes within {limit:?}: {got:?}",
            got.len()
        );
        if let Some(c) = broker.recv(left).unwrap() {
            got.push(c);
        }
    }
    got
}

/// The keys of pool `name` that exist.
pub fn keys_of(con: &mut redis::Connection, name: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("pool:{{{name}}}:*"))
        .query(con)
        .unwrap()
}
