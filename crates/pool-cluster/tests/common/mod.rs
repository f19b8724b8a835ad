//! What the cluster tests share: fingerprints, options with short leases and TTLs, a plain
//! Redis client for playing a hostile writer or an observer, and bounded polling.

#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use pool_cluster::{Broker, BrokerOptions, Completion, Fingerprint, Timeouts};

/// This build's fingerprint in the tests.
pub const FP: Fingerprint = Fingerprint([0x11; 32]);

/// Another build's.
pub const OTHER_FP: Fingerprint = Fingerprint([0x22; 32]);

/// Timeouts that a loaded machine does not run out: a reply delayed a second by the
/// scheduler is no error here. A killed Redis still shows at once, its connections refused
/// or reset, which no timeout waits for.
pub fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(10),
        io: Duration::from_secs(10),
    }
}

pub fn broker(url: &str, name: &str) -> Broker {
    Broker::connect(url, BrokerOptions::new(name, FP).timeouts(timeouts())).unwrap()
}

/// A plain connection, as any other client of the instance has.
pub fn plain(url: &str) -> redis::Connection {
    let con = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(10))
        .unwrap();
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
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

/// The run step of the tests' hosts: `echo` returns its payload, `sleep` sleeps the payload's
/// milliseconds and returns its pid, `fail` and `panic` fail, `die` SIGKILLs its own worker.
pub fn run(call: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    match call {
        b"echo" => out.extend_from_slice(payload),
        b"sleep" => {
            let ms: u64 = std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("bad sleep payload")?;
            std::thread::sleep(Duration::from_millis(ms));
            out.extend_from_slice(std::process::id().to_string().as_bytes());
        }
        b"fail" => return Err("asked to fail".into()),
        b"panic" => panic!("asked to panic"),
        b"die" => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(10));
            return Err("SIGKILL did not kill".into());
        }
        _ => return Err("unknown call".into()),
    }
    Ok(())
}

/// Host options for the tests: `processes` workers, a short lease, short blocks.
pub fn host_options(
    pool: &str,
    host: &str,
    processes: usize,
    lease: Duration,
) -> pool_cluster::HostOptions {
    pool_cluster::HostOptions::new(pool, FP, run)
        .host_id(host)
        .processes(processes)
        .lease(lease)
        .claim_block(Duration::from_millis(100))
        .timeouts(timeouts())
        .grace(Duration::from_secs(2))
}
