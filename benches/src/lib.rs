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
