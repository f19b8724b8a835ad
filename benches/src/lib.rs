//! Benchmarks of the pool crates.
//!
//! The criterion suites live in `benches/`; `cargo xtask bench` runs them beside CPython's
//! `multiprocessing` on the same machine and prints one table of ratios. This library holds
//! what the suites share.

use std::time::Duration;

use pool_api::{Connection, ReadConnection, WriteConnection};

/// A measurement time of `n` seconds, cut short under `POOL_BENCH_QUICK` (what
/// `cargo xtask bench --quick` sets), where only the shape of the results matters.
pub fn secs(n: u64) -> Duration {
    if std::env::var_os("POOL_BENCH_QUICK").is_some() {
        Duration::from_millis(300 * n.min(2))
    } else {
        Duration::from_secs(n)
    }
}

fn pid(_: u32) -> u32 {
    std::process::id()
}

/// One round of W1: start `Pool(2)`, hear from both workers, close and join.
pub fn w1_round(transport: pool_api::TransportKind, start: pool_api::StartMethod) {
    let pool = pool_api::Pool::builder()
        .processes(2)
        .transport(transport)
        .start_method(start)
        .build()
        .expect("pool");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 2 {
        seen.extend(pool.map_chunked(pid, 0..4, 1).unwrap());
    }
    pool.close();
    pool.join().unwrap();
}

/// W5's child: receives `(count, size)` rounds of `count` messages into one reused buffer,
/// then acknowledges the last.
pub fn pipe_sink(mut conn: Connection) {
    let mut buf = vec![0u8; 64 << 20];
    while let Ok((count, _size)) = conn.recv::<(u64, usize)>() {
        for _ in 0..count {
            conn.recv_bytes_into(&mut buf).unwrap();
        }
        conn.send(&1u8).unwrap();
    }
}

/// [`pipe_sink`] over two one-way pipes: rounds come in on one, acknowledgements go out on
/// the other (Python's `Pipe(duplex=False)`).
pub fn one_way_sink((mut inbox, mut ack): (ReadConnection, WriteConnection)) {
    let mut buf = vec![0u8; 64 << 20];
    while let Ok((count, _size)) = inbox.recv::<(u64, usize)>() {
        for _ in 0..count {
            inbox.recv_bytes_into(&mut buf).unwrap();
        }
        ack.send(&1u8).unwrap();
    }
}

/// The parent's side of one W5 round, whichever pipe carries it.
pub trait Round {
    /// Sends `count` messages `msg` (announced as `size` bytes each) and waits for the ack.
    fn round(&mut self, count: u64, size: usize, msg: &[u8]);
}

impl Round for Connection {
    fn round(&mut self, count: u64, size: usize, msg: &[u8]) {
        self.send(&(count, size)).unwrap();
        for _ in 0..count {
            self.send_bytes(msg).unwrap();
        }
        let _: u8 = self.recv().unwrap();
    }
}

impl Round for (WriteConnection, ReadConnection) {
    fn round(&mut self, count: u64, size: usize, msg: &[u8]) {
        self.0.send(&(count, size)).unwrap();
        for _ in 0..count {
            self.0.send_bytes(msg).unwrap();
        }
        let _: u8 = self.1.recv().unwrap();
    }
}

/// The workspace README's examples, compiled and run as doc tests so that they stay true
/// (here, in a crate that is not published, since the README is outside every package).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct WorkspaceReadme;
