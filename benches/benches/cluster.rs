//! W9: the cluster pool over a loopback `redis-server`, with one host of 2 worker processes
//! (started in this process by `cluster::start`; its workers are this binary re-executed),
//! beside the local `Pool(2)` (pipe transport) on the same workloads: apply round trip
//! (median), 10k pipelined `apply_async`, `map` of 1M tiny items with the default chunking,
//! `map` of 64 × 1 MiB (echoed back), and start-up (host started to first answer; for the
//! local pool, `Pool::new(2)` to first answer).
//!
//! Like `latency`, it has its own harness: it prints the figures and writes them, in their
//! units, to `target/bench/cluster.json` for `cargo xtask bench`. `POOL_BENCH_QUICK` cuts
//! the repetitions.

#![allow(missing_docs, clippy::print_stdout)]

use std::time::{Duration, Instant};

use pool_api::{Bytes, Pool, cluster};
use pool_testkit::RedisServer;

fn noop(_: ()) {}

fn tiny(x: u32) -> u32 {
    x.wrapping_add(1)
}

fn echo(b: Bytes) -> Bytes {
    b
}

/// Whether workload `name` runs: all unless `POOL_W9_ONLY` names some (comma-separated:
/// rt, pipelined, tiny, mib), for profiling one of them; the others are then 0.
fn runs(name: &str) -> bool {
    std::env::var("POOL_W9_ONLY").map_or(true, |only| only.split(',').any(|n| n == name))
}

/// The figures of one pool: (round trip us, pipelined tasks/s, tiny items/s, MiB/s).
fn workloads(pool: &Pool, quick: bool) -> [f64; 4] {
    let mut figures = [0.0; 4];
    if runs("rt") {
        figures[0] = round_trip(pool, quick);
    }
    if runs("pipelined") {
        figures[1] = pipelined(pool);
    }
    if runs("tiny") {
        figures[2] = tiny_items(pool, quick);
    }
    if runs("mib") {
        figures[3] = mib(pool);
    }
    figures
}

fn round_trip(pool: &Pool, quick: bool) -> f64 {
    let calls = if quick { 200 } else { 2_000 };
    for _ in 0..calls / 10 {
        pool.apply(noop, ()).unwrap();
    }
    let mut samples: Vec<f64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            pool.apply(noop, ()).unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[calls / 2]
}

fn pipelined(pool: &Pool) -> f64 {
    let t = Instant::now();
    let handles: Vec<_> = (0..10_000)
        .map(|_| pool.apply_async(noop, ()).unwrap())
        .collect();
    for h in handles {
        h.get().unwrap();
    }
    10_000.0 / t.elapsed().as_secs_f64()
}

fn tiny_items(pool: &Pool, quick: bool) -> f64 {
    let items = if quick { 100_000u32 } else { 1_000_000 };
    let t = Instant::now();
    let out = pool.map(tiny, 0..items).unwrap();
    assert_eq!(out.len(), items as usize);
    f64::from(items) / t.elapsed().as_secs_f64()
}

fn mib(pool: &Pool) -> f64 {
    let payloads: Vec<Bytes> = (0..64).map(|_| Bytes::from(vec![7u8; 1 << 20])).collect();
    let t = Instant::now();
    let back = pool.map_chunked(echo, payloads, 1).unwrap();
    let mib_s = 64.0 / t.elapsed().as_secs_f64();
    assert_eq!(back.len(), 64);
    mib_s
}

fn host(url: &str, name: &str) -> cluster::Host {
    let options = cluster::options(name)
        .unwrap()
        .processes(2)
        .claim_block(Duration::from_millis(100));
    cluster::start(url, options).unwrap()
}

fn main() {
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"w9_cluster".contains(&a))
    {
        return;
    }
    let quick = std::env::var_os("POOL_BENCH_QUICK").is_some();

    // Start-up: host (or pool) started to first answer.
    let redis = RedisServer::start();
    let url = redis.url();
    let t = Instant::now();
    let first_host = host(&url, "w9start");
    let pool = Pool::builder().redis(&url).name("w9start").build().unwrap();
    pool.apply(noop, ()).unwrap();
    let cluster_start = t.elapsed().as_secs_f64() * 1e3;
    drop(pool);
    drop(first_host);
    let t = Instant::now();
    let local = Pool::new(2).unwrap();
    local.apply(noop, ()).unwrap();
    let local_start = t.elapsed().as_secs_f64() * 1e3;

    let local_figures = workloads(&local, quick);
    drop(local);
    let _host = host(&url, "w9");
    let pool = Pool::builder().redis(&url).name("w9").build().unwrap();
    let cluster_figures = workloads(&pool, quick);

    let names = ["rt_us", "pipelined_per_s", "tiny_per_s", "mib_per_s"];
    let mut json = Vec::new();
    for (column, figures, start) in [
        ("local", local_figures, local_start),
        ("cluster", cluster_figures, cluster_start),
    ] {
        println!(
            "w9_cluster/{column}: round trip {:.1} us, {:.0} pipelined tasks/s, {:.2} M tiny items/s, {:.0} MiB/s (64 x 1 MiB), start-up {start:.1} ms",
            figures[0],
            figures[1],
            figures[2] / 1e6,
            figures[3]
        );
        let fields: Vec<String> = names
            .iter()
            .zip(figures)
            .map(|(n, v)| format!("\"{n}\": {v}"))
            .chain([format!("\"start_ms\": {start}")])
            .collect();
        json.push(format!("\"{column}\": {{{}}}", fields.join(", ")));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("creating target/bench");
    std::fs::write(
        dir.join("cluster.json"),
        format!("{{{}}}\n", json.join(", ")),
    )
    .expect("writing cluster.json");
}
