//! One workload of the benchmark suite, repeated, for profiling and quick comparisons:
//!
//! ```text
//! cargo run --release -p pool-benches --example workload -- w3 [pipe|shm] [rounds]
//! cargo run --release -p pool-benches --example workload -- w4vec shm
//! perf record -g target/release/examples/workload w3 pipe 50
//! ```
//!
//! W4 comes in variants: `w4` maps `Bytes` to their length, `w4vec` the same with plain
//! `Vec<u8>`, `w4echo` and `w4vececho` send the data back (results as large as the arguments),
//! `w4c1` is `w4` with chunk size 1.
//!
//! W3 maps `POOL_W3_ITEMS` items (default 1 000 000) in chunks of `POOL_W3_CHUNK` (default:
//! the pool's default chunk size), to see how the cost grows with the work:
//!
//! ```text
//! POOL_W3_ITEMS=100000000 POOL_W3_CHUNK=125000 target/release/examples/workload w3 shm 3
//! ```
//!
//! `w3local` and `w3rayon` are the same `u64 -> u64` map in this one process, over the same
//! `POOL_W3_ITEMS`: `(0..n).map(square).collect()` and rayon's `into_par_iter()`, the
//! machine's own cost of the work and of the result vector, for the pool's figures to be read
//! against.
//!
//! It prints the minimum and the median time of a round (the minimum is the steadiest figure
//! on a shared machine). Criterion (`cargo xtask bench`) remains the measurement of record;
//! this is the loop to put under `perf` or to compare two builds in a minute.

#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use pool_api::{Bytes, Pipe, Pool, Process, TransportKind};
use pool_benches::{Round, pipe_sink};

fn noop(_: ()) {}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn len(data: Bytes) -> usize {
    data.len()
}

fn len_vec(data: Vec<u8>) -> usize {
    data.len()
}

fn echo(data: Bytes) -> Bytes {
    data
}

fn echo_vec(data: Vec<u8>) -> Vec<u8> {
    data
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = args.first().map_or("w3", String::as_str);
    let kind = match args.get(1).map(String::as_str) {
        Some("shm") => TransportKind::Shm,
        _ => TransportKind::Pipe,
    };
    let rounds: usize = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(20);
    // Only the pool workloads get a pool: W1 starts its own, W5 uses a Pipe, and W8 measures
    // process starts from a small parent (as the issue asks).
    let needs_pool = matches!(workload, "w2" | "w2b" | "w3" | "w3c1") || workload.starts_with("w4");
    let pool = needs_pool.then(|| {
        Pool::builder()
            .processes(2)
            .transport(kind)
            .build()
            .expect("pool")
    });
    let pool = || pool.as_ref().expect("a pool");
    let env_number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let w3_items = env_number("POOL_W3_ITEMS").unwrap_or(1_000_000);
    let w3_chunk = env_number("POOL_W3_CHUNK").map(|c| c as usize);
    let (unit, per_round): (&str, f64) = match workload {
        "w1" => ("pools", 1.0),
        "w2" => ("calls", 10_000.0),
        "w2b" => ("tasks", 10_000.0),
        "w3" | "w3local" | "w3rayon" => ("items", w3_items as f64),
        "w3c1" => ("items", 1e5),
        "w4" | "w4c1" | "w4vec" | "w4echo" | "w4vececho" => ("MiB", 64.0),
        "w5" => ("msgs", 10_000.0),
        "w5big" => ("MiB", 256.0),
        "w8spawn" | "w8fork" => ("processes", 1.0),
        other => {
            eprintln!(
                "unknown workload {other}: w1, w2, w2b, w3, w3local, w3rayon, w3c1, w4, w4c1, w4vec, w4echo, w4vececho, w5, w5big, w8spawn, w8fork"
            );
            std::process::exit(2);
        }
    };
    // W4's copies of the buffers are all made before the first clock starts (CPython's `map`
    // does not copy its list either), so that a profile of the rounds shows the pool, not the
    // page faults of 64 MiB of fresh copies.
    let mut inputs: Vec<Vec<Bytes>> = if workload.starts_with("w4") {
        let buffers: Vec<Bytes> = (0..64u8).map(|i| Bytes(vec![i; 1 << 20])).collect();
        (0..=rounds).map(|_| buffers.clone()).collect()
    } else {
        Vec::new()
    };
    // W5: a duplex Pipe over the transport to a child that receives into a reused buffer.
    let (mut conn, _sink) = if workload.starts_with("w5") {
        let (ours, theirs) = Pipe::duplex_over(kind).expect("pipe");
        let sink = Process::new(pipe_sink, theirs)
            .expect("process")
            .start()
            .expect("start");
        (Some(ours), Some(sink))
    } else {
        (None, None)
    };
    let small = vec![1u8; 1024];
    let big = if workload == "w5big" {
        vec![2u8; 64 << 20]
    } else {
        Vec::new()
    };
    let mut round = || {
        let input = inputs.pop().unwrap_or_default();
        let start = Instant::now();
        match workload {
            // W1 as the bench has it: start Pool(2), hear from both workers, close and join.
            "w1" => pool_benches::w1_round(kind, pool_api::StartMethod::Spawn),
            "w2" => (0..10_000).for_each(|_| pool().apply(noop, ()).unwrap()),
            "w2b" => {
                let results: Vec<_> = (0..10_000)
                    .map(|_| pool().apply_async(noop, ()).unwrap())
                    .collect();
                results.into_iter().for_each(|r| r.get().unwrap());
            }
            "w3" => match w3_chunk {
                Some(chunk) => drop(pool().map_chunked(square, 0..w3_items, chunk).unwrap()),
                None => drop(pool().map(square, 0..w3_items).unwrap()),
            },
            "w3local" => drop((0..w3_items).map(square).collect::<Vec<u64>>()),
            "w3rayon" => {
                use rayon::prelude::*;
                drop(
                    (0..w3_items)
                        .into_par_iter()
                        .map(square)
                        .collect::<Vec<u64>>(),
                );
            }
            "w3c1" => drop(pool().map_chunked(square, 0..100_000u64, 1).unwrap()),
            "w4" => drop(pool().map(len, input).unwrap()),
            "w4echo" => drop(pool().map(echo, input).unwrap()),
            "w4vec" | "w4vececho" => {
                let input: Vec<Vec<u8>> = input.into_iter().map(Vec::from).collect();
                if workload == "w4vec" {
                    drop(pool().map(len_vec, input).unwrap());
                } else {
                    drop(pool().map(echo_vec, input).unwrap());
                }
            }
            "w5" | "w5big" => {
                let (count, msg) = if workload == "w5" {
                    (10_000u64, &small)
                } else {
                    (4, &big)
                };
                conn.as_mut().expect("a pipe").round(count, msg.len(), msg);
            }
            "w8spawn" => {
                let mut p = Process::new(noop, ())
                    .expect("process")
                    .start()
                    .expect("start");
                p.wait().expect("join");
            }
            "w8fork" => {
                let mut p = Process::fork(|| {}).start().expect("start");
                p.wait().expect("join");
            }
            _ => drop(pool().map_chunked(len, input, 1).unwrap()),
        }
        start.elapsed()
    };
    round();
    eprintln!("rounds start");
    let mut times: Vec<Duration> = (0..rounds).map(|_| round()).collect();
    times.sort();
    let rate = |t: Duration| per_round / t.as_secs_f64();
    println!(
        "{workload} {kind:?}: min {:?} ({:.3e} {unit}/s), median {:?} ({:.3e} {unit}/s)",
        times[0],
        rate(times[0]),
        times[rounds / 2],
        rate(times[rounds / 2]),
    );
}
