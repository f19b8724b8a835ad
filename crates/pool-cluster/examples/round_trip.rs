//! Measures a chunk's round trip through Redis on loopback (client → stream → a host's
//! worker process → results stream → client), one at a time and pipelined within a window,
//! so that the cluster transport's cost can be compared with the local pool's
//! (`cargo run --release -p pool-cluster --example round_trip`; needs `redis-server` on
//! PATH). Timing belongs here, not in tests.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use pool_cluster::{Broker, BrokerOptions, Fingerprint, Host, HostOptions};
use pool_testkit::RedisServer;

fn echo(_: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(payload);
    Ok(())
}

fn main() {
    let server = RedisServer::start();
    let url = server.url();
    let fp = Fingerprint([1; 32]);
    let host = Host::start(&url, HostOptions::new("bench", fp, echo).processes(1)).unwrap();
    let client = Broker::connect(&url, BrokerOptions::new("bench", fp).window(64)).unwrap();
    let wait = Duration::from_secs(10);

    let mut times = Vec::new();
    for index in 0..2_000u32 {
        let t = Instant::now();
        client.submit(1, index, b"echo", b"x").unwrap();
        client.recv(wait).unwrap().expect("an outcome");
        times.push(t.elapsed());
    }
    times.drain(..200); // warm-up
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "round trip, one at a time:   median {:>7.0} µs   p10 {:>7.0} µs   p90 {:>7.0} µs   (n={})",
        at(0.5),
        at(0.1),
        at(0.9),
        times.len()
    );

    let n = 20_000u32;
    let t = Instant::now();
    let (mut next, mut done) = (0, 0);
    while done < n {
        while next < n && client.outstanding() < client.window() {
            client.submit(2, next, b"echo", b"x").unwrap();
            next += 1;
        }
        if client.recv(wait).unwrap().is_some() {
            done += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "pipelined, window 64, 1 worker: {:>7.0} chunks/s ({n} chunks in {secs:.2} s)",
        f64::from(n) / secs
    );
    host.stop().unwrap();
}
