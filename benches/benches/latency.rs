//! W2 as the benchmark issue defines it: a warm `Pool(2)`, 500 `apply` calls of a no-op to
//! warm up, then 10 000 timed one at a time; the median and the 99th percentile.
//!
//! Criterion reports a per-iteration mean over batches, which hides the tail; a percentile
//! needs every call timed on its own. So this bench has its own harness: it prints the
//! figures and writes them to `target/bench/latency.json`, where `cargo xtask bench` reads
//! them. `POOL_BENCH_QUICK` cuts it to 1 000 calls.

#![allow(missing_docs, clippy::print_stdout)]

use std::time::Instant;

use pool_api::{Pool, TransportKind};

fn noop(_: ()) {}

/// Median and 99th percentile, in microseconds, of `calls` apply round trips.
fn percentiles(kind: TransportKind, warm_up: usize, calls: usize) -> (f64, f64) {
    let pool = Pool::builder()
        .processes(2)
        .transport(kind)
        .build()
        .expect("pool");
    for _ in 0..warm_up {
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
    (samples[calls / 2], samples[calls * 99 / 100])
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours means another bench was
    // asked for.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"w2_apply_latency".contains(&a))
    {
        return;
    }
    let quick = std::env::var_os("POOL_BENCH_QUICK").is_some();
    let (warm_up, calls) = if quick { (100, 1_000) } else { (500, 10_000) };
    let mut json = Vec::new();
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let (median, p99) = percentiles(kind, warm_up, calls);
        let name = format!("{kind:?}").to_lowercase();
        println!("w2_apply_latency/{name}: median {median:.1} us, p99 {p99:.1} us ({calls} calls)");
        json.push(format!(
            "\"{name}\": {{\"median_us\": {median}, \"p99_us\": {p99}, \"calls\": {calls}}}"
        ));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("creating target/bench");
    std::fs::write(
        dir.join("latency.json"),
        format!("{{{}}}\n", json.join(", ")),
    )
    .expect("writing latency.json");
}
