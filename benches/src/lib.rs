//! Benchmarks of the pool crates.
//!
//! The criterion suites live in `benches/`; `cargo xtask bench` runs them beside CPython's
//! `multiprocessing` on the same machine and prints one table of ratios. This library holds
//! what the suites share.

use std::time::Duration;

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
