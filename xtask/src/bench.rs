//! `cargo xtask bench`: pool's criterion benches beside CPython's multiprocessing, measured in
//! the same run, printed as one markdown table of ratios.
//!
//! Timings on a shared machine drift, so both sides of each workload run back to back, and
//! what counts is their ratio. The CPython side is `benches/python/mp_bench.py`; the Rust side
//! is read from criterion's own estimates (`target/criterion/<group>/<bench>/new/`), medians,
//! and, for the benches with their own harness (`latency`, `cluster`, `growth`), from the
//! figures they write to `target/bench/`.
//!
//! The cost-growth rows (issue 22) come from `growth`: W3's time per item at 1M, 10M and 100M
//! items, `imap`'s rate and its process's peak RSS at 1M and 100M items, `Pool(n)`'s start
//! until all n workers answered, and an idle worker's memory. Under the table, the growth
//! from 1M to 100M items is printed as a ratio.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CPython figure, keyed by workload and variant.
type PythonFigure = ((String, String), Figure);

/// What `mp_bench.py` prints: a figure, or why it did not measure one.
enum PythonLine {
    Figure(PythonFigure),
    Skipped((String, String), String),
}

/// One measured figure.
#[derive(Clone, Debug)]
struct Figure {
    value: f64,
    unit: &'static str,
}

/// How a workload's Rust figure derives from a criterion bench's median time.
struct RustSide {
    bench_file: &'static str,
    group: &'static str,
    /// (column, bench id) pairs: the pipe and shm columns.
    ids: [(&'static str, &'static str); 2],
    /// From seconds per iteration to the figure.
    derive: fn(f64) -> f64,
    unit: &'static str,
}

struct Workload {
    /// Row label.
    name: &'static str,
    /// `mp_bench.py` workload and variant it compares with.
    python: (&'static str, &'static str),
    /// Which `mp_bench.py` group (`w1` ... `w8`) produces it.
    python_group: &'static str,
    rust: RustSide,
    target: &'static str,
}

fn per_second(items: f64) -> fn(f64) -> f64 {
    // Function pointers cannot capture: one helper per count keeps the table declarative.
    match items as u64 {
        10_000 => |s| 10_000.0 / s,
        100_000 => |s| 100_000.0 / s,
        200_000 => |s| 200_000.0 / s,
        1_000_000 => |s| 1_000_000.0 / s,
        _ => |s| 1.0 / s,
    }
}

/// Row names the growth summary under the table looks up.
const W3_1M: &str = "W3 map 1M tiny items, time per item (ns/item, lower is better)";
const W3_100M: &str = "W3 map 100M tiny items, time per item (ns/item, lower is better)";
const IMAP_1M_RSS: &str = "imap 1M tiny items, its process's peak RSS (MiB, lower is better)";
const IMAP_100M_RSS: &str = "imap 100M tiny items, its process's peak RSS (MiB, lower is better)";

/// A row of `benches/benches/growth.rs`, whose figures are already in the row's unit:
/// `ids` are `transport.key` in `target/bench/<group>.json`, pipe then shm.
fn growth(
    name: &'static str,
    python: (&'static str, &'static str),
    python_group: &'static str,
    group: &'static str,
    ids: [&'static str; 2],
    unit: &'static str,
    target: &'static str,
) -> Workload {
    Workload {
        name,
        python,
        python_group,
        rust: RustSide {
            bench_file: "growth",
            group,
            ids: [("pipe", ids[0]), ("shm", ids[1])],
            derive: |x| x,
            unit,
        },
        target,
    }
}

fn workloads() -> Vec<Workload> {
    let ms = |s: f64| s * 1e3;
    let us = |s: f64| s * 1e6;
    let mib64 = |s: f64| 64.0 / s;
    let mib256 = |s: f64| 256.0 / s;
    vec![
        Workload {
            name: "W1 Pool(2) start, 2 answers, close+join (ms, lower is better)",
            python: ("W1 pool startup", "spawn"),
            python_group: "w1",
            rust: RustSide {
                bench_file: "pool",
                group: "w1_pool_startup",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: ms,
                unit: "ms",
            },
            target: "<= 3 ms",
        },
        Workload {
            name: "W1 Pool(2) start, forkserver workers (ms, lower is better)",
            python: ("W1 pool startup", "forkserver"),
            python_group: "w1",
            rust: RustSide {
                bench_file: "pool",
                group: "w1_pool_startup",
                ids: [("pipe", "pipe_forkserver"), ("shm", "shm_forkserver")],
                derive: ms,
                unit: "ms",
            },
            target: "-",
        },
        Workload {
            name: "W2 apply round trip, median (us, lower is better)",
            python: ("W2 apply round trip", "median"),
            python_group: "w2",
            rust: RustSide {
                bench_file: "pool",
                group: "w2_apply_round_trip",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: us,
                unit: "us",
            },
            target: "<= 25 us pipe, <= 5 us shm",
        },
        Workload {
            name: "W2 apply round trip, p99 of 10k calls (us, lower is better)",
            python: ("W2 apply round trip", "p99"),
            python_group: "w2",
            rust: RustSide {
                bench_file: "latency",
                group: "w2_apply_latency",
                ids: [("pipe", "pipe.p99_us"), ("shm", "shm.p99_us")],
                derive: us,
                unit: "us",
            },
            target: "-",
        },
        Workload {
            name: "W2 apply round trip vs ProcessPoolExecutor.submit, median (us)",
            python: ("W2 apply round trip", "ProcessPoolExecutor median"),
            python_group: "w2",
            rust: RustSide {
                bench_file: "pool",
                group: "w2_apply_round_trip",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: us,
                unit: "us",
            },
            target: "-",
        },
        Workload {
            name: "W2b 10k apply_async pipelined (tasks/s)",
            python: ("W2b apply_async pipelined", ""),
            python_group: "w2",
            rust: RustSide {
                bench_file: "pool",
                group: "w2b_apply_async_10k",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: per_second(10_000.0),
                unit: "tasks/s",
            },
            target: ">= 250k/s shm",
        },
        Workload {
            name: "W2b vs ProcessPoolExecutor, 10k submitted at once (tasks/s)",
            python: ("W2b apply_async pipelined", "ProcessPoolExecutor"),
            python_group: "w2",
            rust: RustSide {
                bench_file: "pool",
                group: "w2b_apply_async_10k",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: per_second(10_000.0),
                unit: "tasks/s",
            },
            target: "-",
        },
        Workload {
            name: "W3 map 1M tiny items, default chunks (items/s)",
            python: ("W3 map tiny items", "default chunksize"),
            python_group: "w3",
            rust: RustSide {
                bench_file: "pool",
                group: "w3_map_1M_default_chunks",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: per_second(1_000_000.0),
                unit: "items/s",
            },
            target: ">= 150M/s shm, >= 25x both",
        },
        Workload {
            name: "W3 map 1M tiny items vs ProcessPoolExecutor.map (items/s)",
            python: ("W3 map tiny items", "ProcessPoolExecutor"),
            python_group: "w3",
            rust: RustSide {
                bench_file: "pool",
                group: "w3_map_1M_default_chunks",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: per_second(1_000_000.0),
                unit: "items/s",
            },
            target: "-",
        },
        Workload {
            name: "W3 map 100k tiny items, chunksize 1 (items/s)",
            python: ("W3 map tiny items", "chunksize 1"),
            python_group: "w3",
            rust: RustSide {
                bench_file: "pool",
                group: "w3_map_100k_chunksize_1",
                ids: [("pipe", "pipe"), ("shm", "shm")],
                derive: per_second(100_000.0),
                unit: "items/s",
            },
            target: ">= 200k/s shm",
        },
        Workload {
            name: "W4 map 64 x 1 MiB, default chunks (MiB/s)",
            python: ("W4 map 64 x 1 MiB", "default chunksize"),
            python_group: "w4",
            rust: RustSide {
                bench_file: "pool",
                group: "w4_map_64x1MiB",
                ids: [
                    ("pipe", "pipe_chunksize_default"),
                    ("shm", "shm_chunksize_default"),
                ],
                derive: mib64,
                unit: "MiB/s",
            },
            target: ">= 2.5 GiB/s pipe, >= 8 GiB/s shm",
        },
        Workload {
            name: "W4 map 64 x 1 MiB echoed back, Bytes (MiB/s)",
            python: ("W4 map 64 x 1 MiB", "echoed"),
            python_group: "w4",
            rust: RustSide {
                bench_file: "pool",
                group: "w4_echo_64x1MiB",
                ids: [("pipe", "pipe_bytes"), ("shm", "shm_bytes")],
                derive: mib64,
                unit: "MiB/s",
            },
            target: "-",
        },
        Workload {
            name: "W4 map 64 x 1 MiB echoed back, Vec<u8> (MiB/s)",
            python: ("W4 map 64 x 1 MiB", "echoed"),
            python_group: "w4",
            rust: RustSide {
                bench_file: "pool",
                group: "w4_echo_64x1MiB",
                ids: [("pipe", "pipe_vec"), ("shm", "shm_vec")],
                derive: mib64,
                unit: "MiB/s",
            },
            target: "within 1.5x of Bytes",
        },
        Workload {
            name: "W5 Pipe 10k x 1 KiB, duplex (msgs/s)",
            python: ("W5 Pipe 1 KiB", "duplex"),
            python_group: "w5",
            rust: RustSide {
                bench_file: "primitives",
                group: "w5_pipe",
                ids: [
                    ("pipe", "10000x1024B_duplex"),
                    ("shm", "10000x1024B_duplex_shm"),
                ],
                derive: per_second(10_000.0),
                unit: "msgs/s",
            },
            target: ">= 500k/s socket",
        },
        Workload {
            name: "W5 Pipe 10k x 1 KiB, one-way pipes (msgs/s)",
            python: ("W5 Pipe 1 KiB", "one-way pipe"),
            python_group: "w5",
            rust: RustSide {
                bench_file: "primitives",
                group: "w5_pipe",
                ids: [
                    ("pipe", "10000x1024B_one_way_pipe"),
                    ("shm", "10000x1024B_one_way_shm"),
                ],
                derive: per_second(10_000.0),
                unit: "msgs/s",
            },
            target: ">= 500k/s socket",
        },
        Workload {
            name: "W5 Pipe 4 x 64 MiB, reused buffer, duplex (MiB/s)",
            python: ("W5 Pipe 64 MiB", "duplex"),
            python_group: "w5",
            rust: RustSide {
                bench_file: "primitives",
                group: "w5_pipe",
                ids: [
                    ("pipe", "4x67108864B_duplex"),
                    ("shm", "4x67108864B_duplex_shm"),
                ],
                derive: mib256,
                unit: "MiB/s",
            },
            target: ">= 4 GiB/s shm",
        },
        Workload {
            name: "W5 Pipe 4 x 64 MiB, reused buffer, one-way pipes (MiB/s)",
            python: ("W5 Pipe 64 MiB", "one-way pipe"),
            python_group: "w5",
            rust: RustSide {
                bench_file: "primitives",
                group: "w5_pipe",
                ids: [
                    ("pipe", "4x67108864B_one_way_pipe"),
                    ("shm", "4x67108864B_one_way_shm"),
                ],
                derive: mib256,
                unit: "MiB/s",
            },
            target: ">= 4 GiB/s shm",
        },
        Workload {
            name: "W6 Queue, 200k small items from a producer process (items/s)",
            python: ("W6 Queue small items", ""),
            python_group: "w6",
            rust: RustSide {
                bench_file: "primitives",
                group: "w6_queue",
                ids: [("pipe", "200k_small_items_producer_process"), ("shm", "")],
                derive: per_second(200_000.0),
                unit: "items/s",
            },
            target: ">= 2M/s",
        },
        Workload {
            name: "W6 SimpleQueue, 200k small items from a producer process (items/s)",
            python: ("W6 Queue small items", "SimpleQueue"),
            python_group: "w6",
            rust: RustSide {
                bench_file: "primitives",
                group: "w6_queue",
                ids: [
                    ("pipe", "200k_small_items_producer_process_simplequeue"),
                    ("shm", ""),
                ],
                derive: per_second(200_000.0),
                unit: "items/s",
            },
            target: ">= 2M/s",
        },
        Workload {
            name: "W7 Lock, 2 processes x 50k increments (ops/s)",
            python: ("W7 Lock contended by 2 processes", ""),
            python_group: "w7",
            rust: RustSide {
                bench_file: "primitives",
                group: "w7_lock",
                ids: [("pipe", "2_processes_x_50k_increments"), ("shm", "")],
                derive: per_second(100_000.0),
                unit: "ops/s",
            },
            target: ">= 10M/s",
        },
        Workload {
            name: "W8 Process start + join, spawn (ms, lower is better)",
            python: ("W8 Process start + join", "spawn"),
            python_group: "w8",
            rust: RustSide {
                bench_file: "primitives",
                group: "w8_process_start_join",
                ids: [("pipe", "spawn"), ("shm", "")],
                derive: ms,
                unit: "ms",
            },
            target: "<= 1.5 ms",
        },
        Workload {
            name: "W8 Process start + join, forkserver (ms, lower is better)",
            python: ("W8 Process start + join", "forkserver"),
            python_group: "w8",
            rust: RustSide {
                bench_file: "primitives",
                group: "w8_process_start_join",
                ids: [("pipe", "forkserver"), ("shm", "")],
                derive: ms,
                unit: "ms",
            },
            target: "-",
        },
        Workload {
            name: "W8 Process start + join, fork (ms, lower is better)",
            python: ("W8 Process start + join", "fork"),
            python_group: "w8",
            rust: RustSide {
                bench_file: "primitives",
                group: "w8_process_start_join",
                ids: [("pipe", "fork"), ("shm", "")],
                derive: ms,
                unit: "ms",
            },
            target: "<= 0.6 ms",
        },
        Workload {
            name: "W9 cluster apply round trip over loopback Redis, median (us, lower is better)",
            python: ("W9 cluster apply round trip", "best"),
            python_group: "w9",
            rust: RustSide {
                bench_file: "cluster",
                group: "w9_cluster",
                ids: [("pipe", "local.rt_us"), ("shm", "cluster.rt_us")],
                derive: |x| x,
                unit: "us",
            },
            target: "<= 300 us",
        },
        Workload {
            name: "W9 cluster 10k apply_async pipelined (tasks/s)",
            python: ("W9 cluster 10k apply_async pipelined", "best"),
            python_group: "w9",
            rust: RustSide {
                bench_file: "cluster",
                group: "w9_cluster",
                ids: [
                    ("pipe", "local.pipelined_per_s"),
                    ("shm", "cluster.pipelined_per_s"),
                ],
                derive: |x| x,
                unit: "tasks/s",
            },
            target: ">= 20k/s",
        },
        Workload {
            name: "W9 cluster map of 1M tiny items, default chunking (items/s)",
            python: ("W9 cluster map of 1M tiny items", "best"),
            python_group: "w9",
            rust: RustSide {
                bench_file: "cluster",
                group: "w9_cluster",
                ids: [("pipe", "local.tiny_per_s"), ("shm", "cluster.tiny_per_s")],
                derive: |x| x,
                unit: "items/s",
            },
            target: ">= 30 M/s",
        },
        Workload {
            name: "W9 cluster map of 64 x 1 MiB echoed back (MiB/s)",
            python: ("W9 cluster map of 64 x 1 MiB", "best"),
            python_group: "w9",
            rust: RustSide {
                bench_file: "cluster",
                group: "w9_cluster",
                ids: [("pipe", "local.mib_per_s"), ("shm", "cluster.mib_per_s")],
                derive: |x| x,
                unit: "MiB/s",
            },
            target: ">= 1024 MiB/s",
        },
        Workload {
            name: "W9 cluster start-up, host started to first answer (ms, lower is better)",
            python: ("W9 cluster start-up", "best"),
            python_group: "w9",
            rust: RustSide {
                bench_file: "cluster",
                group: "w9_cluster",
                ids: [("pipe", "local.start_ms"), ("shm", "cluster.start_ms")],
                derive: |x| x,
                unit: "ms",
            },
            target: "<= 100 ms",
        },
        growth(
            W3_1M,
            ("W3 growth", "1M"),
            "w3growth",
            "w3_growth",
            ["pipe.1M_ns_per_item", "shm.1M_ns_per_item"],
            "ns/item",
            ">= 150M/s shm, >= 25x",
        ),
        growth(
            "W3 map 10M tiny items, time per item (ns/item, lower is better)",
            ("W3 growth", "10M"),
            "w3growth",
            "w3_growth",
            ["pipe.10M_ns_per_item", "shm.10M_ns_per_item"],
            "ns/item",
            "within 20% of 1M's",
        ),
        growth(
            W3_100M,
            ("W3 growth", "100M"),
            "w3growth",
            "w3_growth",
            ["pipe.100M_ns_per_item", "shm.100M_ns_per_item"],
            "ns/item",
            "within 20% of 1M's",
        ),
        growth(
            "imap 1M tiny items, chunks of 10k, consumed as they come (items/s)",
            ("imap growth", "1M rate"),
            "imap",
            "imap_memory",
            ["pipe.1M_per_s", "shm.1M_per_s"],
            "items/s",
            "-",
        ),
        growth(
            "imap 100M tiny items, chunks of 10k, consumed as they come (items/s)",
            ("imap growth", "100M rate"),
            "imap",
            "imap_memory",
            ["pipe.100M_per_s", "shm.100M_per_s"],
            "items/s",
            "-",
        ),
        growth(
            IMAP_1M_RSS,
            ("imap growth", "1M peak RSS"),
            "imap",
            "imap_memory",
            ["pipe.1M_hwm_mib", "shm.1M_hwm_mib"],
            "MiB",
            "-",
        ),
        growth(
            IMAP_100M_RSS,
            ("imap growth", "100M peak RSS"),
            "imap",
            "imap_memory",
            ["pipe.100M_hwm_mib", "shm.100M_hwm_mib"],
            "MiB",
            "flat: as 1M's",
        ),
        growth(
            "Pool(2) start to all 2 answered, spawn (ms, lower is better)",
            ("Pool(n) start", "spawn 2"),
            "poolstart",
            "pool_start",
            ["pipe.spawn_2_ms", "shm.spawn_2_ms"],
            "ms",
            "-",
        ),
        growth(
            "Pool(16) start to all 16 answered, spawn (ms, lower is better)",
            ("Pool(n) start", "spawn 16"),
            "poolstart",
            "pool_start",
            ["pipe.spawn_16_ms", "shm.spawn_16_ms"],
            "ms",
            "-",
        ),
        growth(
            "Pool(64) start to all 64 answered, spawn (ms, lower is better)",
            ("Pool(n) start", "spawn 64"),
            "poolstart",
            "pool_start",
            ["pipe.spawn_64_ms", "shm.spawn_64_ms"],
            "ms",
            "-",
        ),
        growth(
            "Pool(2) start to all 2 answered, forkserver (ms, lower is better)",
            ("Pool(n) start", "forkserver 2"),
            "poolstart",
            "pool_start",
            ["pipe.forkserver_2_ms", "shm.forkserver_2_ms"],
            "ms",
            "-",
        ),
        growth(
            "Pool(16) start to all 16 answered, forkserver (ms, lower is better)",
            ("Pool(n) start", "forkserver 16"),
            "poolstart",
            "pool_start",
            ["pipe.forkserver_16_ms", "shm.forkserver_16_ms"],
            "ms",
            "-",
        ),
        growth(
            "Pool(64) start to all 64 answered, forkserver (ms, lower is better)",
            ("Pool(n) start", "forkserver 64"),
            "poolstart",
            "pool_start",
            ["pipe.forkserver_64_ms", "shm.forkserver_64_ms"],
            "ms",
            "-",
        ),
        growth(
            "Idle worker RSS, right after start (MiB, lower is better)",
            ("idle worker", "fresh RSS"),
            "idle",
            "idle_memory",
            ["pipe.fresh_rss_mib", "shm.fresh_rss_mib"],
            "MiB",
            "-",
        ),
        growth(
            "Idle worker Private_Dirty, right after start (MiB, lower is better)",
            ("idle worker", "fresh Private_Dirty"),
            "idle",
            "idle_memory",
            [
                "pipe.fresh_private_dirty_mib",
                "shm.fresh_private_dirty_mib",
            ],
            "MiB",
            "<= 2 MB",
        ),
        growth(
            "Idle worker RSS, after a 64 MiB task (MiB, lower is better)",
            ("idle worker", "after 64 MiB RSS"),
            "idle",
            "idle_memory",
            ["pipe.after_64mib_rss_mib", "shm.after_64mib_rss_mib"],
            "MiB",
            "-",
        ),
        growth(
            "Idle worker Private_Dirty, after a 64 MiB task (MiB, lower is better)",
            ("idle worker", "after 64 MiB Private_Dirty"),
            "idle",
            "idle_memory",
            [
                "pipe.after_64mib_private_dirty_mib",
                "shm.after_64mib_private_dirty_mib",
            ],
            "MiB",
            "<= 2 MB",
        ),
    ]
}

/// Runs the comparison; `quick` shortens every measurement (CI's smoke test).
pub(crate) fn run(quick: bool) -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let cargo = env!("CARGO");
    println!("building the benches in release ...");
    status(Command::new(cargo).current_dir(&root).args([
        "bench",
        "-p",
        "pool-benches",
        "--no-run",
        "--quiet",
    ]))?;
    let python = python_available();
    if !python {
        println!("python3 is missing: the CPython column stays empty.");
    }
    let mut python_figures: BTreeMap<(String, String), Figure> = BTreeMap::new();
    let mut python_skipped: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut done_python = std::collections::BTreeSet::new();
    let mut done_rust = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for w in workloads() {
        // Interleave: this workload's CPython side, then its Rust side. W9's "CPython side"
        // is the best of its Python peers (`cluster_peers.rs`).
        if python && !w.python_group.is_empty() && done_python.insert(w.python_group) {
            for line in run_python(&root, w.python_group, quick)? {
                match line {
                    PythonLine::Figure((key, fig)) => {
                        python_figures.insert(key, fig);
                    }
                    PythonLine::Skipped(key, why) => {
                        python_skipped.insert(key, why);
                    }
                }
            }
        }
        let bench_key = (w.rust.bench_file, w.rust.group);
        if done_rust.insert(bench_key) {
            let mut cmd = Command::new(cargo);
            cmd.current_dir(&root)
                .args([
                    "bench",
                    "-p",
                    "pool-benches",
                    "--quiet",
                    "--bench",
                    w.rust.bench_file,
                    "--",
                    w.rust.group,
                ])
                .stdout(std::process::Stdio::null());
            if quick {
                cmd.env("POOL_BENCH_QUICK", "1");
            }
            status(&mut cmd)?;
        }
        let key = (w.python.0.to_string(), w.python.1.to_string());
        let cpython = python_figures.get(&key).cloned();
        let skipped = python_skipped.get(&key).cloned();
        let mut ours = Vec::new();
        for (column, id) in w.rust.ids {
            let fig = if id.is_empty() {
                None
            } else {
                rust_seconds(&root, &w.rust, id).map(|s| Figure {
                    value: (w.rust.derive)(s),
                    unit: w.rust.unit,
                })
            };
            ours.push((column, fig));
        }
        rows.push((w, cpython, ours, skipped));
    }
    print_table(&rows, quick);
    let growth = std::fs::read_to_string(root.join("target/bench/w3_growth.json"));
    if let Some(line) = growth.ok().and_then(|json| in_process_line(&json)) {
        println!("{line}");
    }
    write_json(&root, &rows)?;
    // CI judges no timing, but a bench that produced no figure is broken.
    let missing: Vec<String> = rows
        .iter()
        .flat_map(|(w, _, ours, _)| {
            ours.iter()
                .zip(w.rust.ids)
                .filter(|((_, fig), (_, id))| fig.is_none() && !id.is_empty())
                .map(|((column, _), _)| format!("{} ({column})", w.name))
        })
        .collect();
    if !missing.is_empty() {
        return Err(format!("no Rust figure for: {}", missing.join("; ")));
    }
    Ok(())
}

fn status(cmd: &mut Command) -> Result<(), String> {
    let s = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if s.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {s}"))
    }
}

fn python_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_python(root: &Path, group: &str, quick: bool) -> Result<Vec<PythonLine>, String> {
    if group == "w9" {
        return Ok(w9_peers(root, quick));
    }
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("benches/python/mp_bench.py")).arg(group);
    if quick {
        cmd.arg("--quick");
    }
    // A stuck CPython run (a forked child that never sees EOF, say) must not hang the table:
    // it gets a generous deadline and is killed after it. Its output (a dozen short lines) is
    // read after it exits, which is fine while it stays far below a pipe's 64 KiB.
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(if quick { 300 } else { 1200 });
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "mp_bench.py {group} did not finish in time; killed"
                ));
            }
            None => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "mp_bench.py {group} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse_python_line)
        .collect())
}

/// W9's Python peers, full mode only; without them (quick mode, or they failed: the reason
/// is printed) W9's peer column stays empty and the rest of the table is unaffected.
fn w9_peers(root: &Path, quick: bool) -> Vec<PythonLine> {
    if quick {
        println!("W9's Python peers run in full mode only (they install Celery, RQ and Ray).");
        return Vec::new();
    }
    match crate::cluster_peers::measure(root) {
        Ok(figures) => {
            for f in figures.iter().filter(|f| f.variant != "best") {
                println!("  W9 peer {}: {}", f.variant, f.line);
            }
            for f in figures.iter().filter(|f| f.variant == "best") {
                println!(
                    "  W9 best peer for {}: {}",
                    f.workload,
                    f.peer.as_deref().unwrap_or("?")
                );
            }
            figures
                .iter()
                .filter_map(|f| parse_python_line(&f.line))
                .collect()
        }
        Err(e) => {
            println!("W9's Python peers were not measured: {e}");
            Vec::new()
        }
    }
}

/// `{"workload": "...", "variant": "...", "value": 1.5, "unit": "..."}`, or
/// `{"workload": "...", "variant": "...", "skipped": "why"}`, as mp_bench.py prints.
fn parse_python_line(line: &str) -> Option<PythonLine> {
    let text = |key: &str| -> Option<String> {
        let start = line.find(&format!("\"{key}\": \""))? + key.len() + 5;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_string())
    };
    if let Some(why) = text("skipped") {
        return Some(PythonLine::Skipped(
            (text("workload")?, text("variant")?),
            why,
        ));
    }
    let start = line.find("\"value\": ")? + 9;
    let end = start + line[start..].find([',', '}'])?;
    let value: f64 = line[start..end].trim().parse().ok()?;
    let unit: &'static str = match text("unit")?.as_str() {
        "ms" => "ms",
        "us" => "us",
        "tasks/s" => "tasks/s",
        "items/s" => "items/s",
        "MiB/s" => "MiB/s",
        "msgs/s" => "msgs/s",
        "ops/s" => "ops/s",
        "ns/item" => "ns/item",
        "MiB" => "MiB",
        _ => return None,
    };
    Some(PythonLine::Figure((
        (text("workload")?, text("variant")?),
        Figure { value, unit },
    )))
}

/// Criterion's median estimate for `group/id`, in seconds.
/// A Rust figure in seconds: criterion's median, or a percentile the latency bench wrote
/// (`id` is then `transport.key`).
fn rust_seconds(root: &Path, rust: &RustSide, id: &str) -> Option<f64> {
    if rust.bench_file == "cluster" {
        // Written in the row's own unit by benches/benches/cluster.rs (derive is identity).
        let (column, key) = id.split_once('.')?;
        let json = std::fs::read_to_string(root.join("target/bench/cluster.json")).ok()?;
        return number_in(&json, column, key);
    }
    if rust.bench_file == "growth" {
        // Written in the row's unit by benches/benches/growth.rs, one file per group.
        let (column, key) = id.split_once('.')?;
        let path = root.join(format!("target/bench/{}.json", rust.group));
        return number_in(&std::fs::read_to_string(path).ok()?, column, key);
    }
    if rust.bench_file != "latency" {
        return median_seconds(root, rust.group, id);
    }
    let (transport, key) = id.split_once('.')?;
    let json = std::fs::read_to_string(root.join("target/bench/latency.json")).ok()?;
    Some(number_in(&json, transport, key)? / 1e6)
}

/// Where criterion writes its estimates, found as criterion finds it: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the workspace's `target/criterion`.
fn criterion_dir(root: &Path) -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        PathBuf::from(home)
    } else if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(target).join("criterion")
    } else {
        root.join("target/criterion")
    }
}

fn median_seconds(root: &Path, group: &str, id: &str) -> Option<f64> {
    let path: PathBuf = criterion_dir(root)
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let json = std::fs::read_to_string(path).ok()?;
    Some(number_in(&json, "median", "point_estimate")? / 1e9)
}

/// The number of field `key` inside object `section` of a flat JSON text (both files read
/// here are written by known tools; no JSON parser is worth a dependency for them).
fn number_in(json: &str, section: &str, key: &str) -> Option<f64> {
    let within = &json[json.find(&format!("\"{section}\""))?..];
    let field = format!("\"{key}\":");
    let start = within.find(&field)? + field.len();
    let end = start + within[start..].find([',', '}'])?;
    within[start..end].trim().parse().ok()
}

fn lower_is_better(unit: &str) -> bool {
    matches!(unit, "ms" | "us" | "ns/item" | "MiB")
}

fn show(f: &Option<Figure>) -> String {
    match f {
        None => "–".into(),
        // A time per item reads better beside the rate it makes.
        Some(f) if f.unit == "ns/item" => {
            format!("{:.2} ns/item ({:.1} M/s)", f.value, 1e3 / f.value)
        }
        Some(f) if f.value >= 1e6 => format!("{:.2} M{}", f.value / 1e6, f.unit),
        Some(f) if f.value >= 1e4 => format!("{:.0} k{}", f.value / 1e3, f.unit),
        Some(f) => format!("{:.2} {}", f.value, f.unit),
    }
}

/// A workload, CPython's figure, ours by column, and why CPython's is missing if it said.
type Row = (
    Workload,
    Option<Figure>,
    Vec<(&'static str, Option<Figure>)>,
    Option<String>,
);

/// How many times better than CPython the better of our columns is.
fn ratio(cpython: &Option<Figure>, ours: &[(&'static str, Option<Figure>)]) -> Option<f64> {
    let c = cpython.as_ref()?;
    let best = ours
        .iter()
        .filter_map(|(_, f)| f.as_ref().map(|f| f.value))
        .reduce(|a, b| {
            if lower_is_better(c.unit) {
                a.min(b)
            } else {
                a.max(b)
            }
        })?;
    Some(if lower_is_better(c.unit) {
        c.value / best
    } else {
        best / c.value
    })
}

/// The columns compared with CPython's: W9's CPython column holds the Python peers of the
/// cluster pool, so only the cluster column (the second, "shm") is compared with it, not the
/// local pool beside it.
fn compared<'a>(
    python_group: &str,
    ours: &'a [(&'static str, Option<Figure>)],
) -> &'a [(&'static str, Option<Figure>)] {
    if python_group == "w9" {
        ours.get(1..).unwrap_or(&[])
    } else {
        ours
    }
}

fn print_table(rows: &[Row], quick: bool) {
    println!();
    println!(
        "| workload | CPython 3 multiprocessing | pool (pipe) | pool (shm) | pool vs CPython | target |"
    );
    println!("|---|---|---|---|---|---|");
    for (w, cpython, ours, skipped) in rows {
        let r = ratio(cpython, compared(w.python_group, ours))
            .map_or("–".into(), |r| format!("{r:.1}x"));
        let cpython = match (cpython, skipped) {
            (None, Some(why)) => format!("not run: {why}"),
            _ => show(cpython),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            w.name,
            cpython,
            show(&ours[0].1),
            show(&ours[1].1),
            r,
            w.target
        );
    }
    println!();
    println!(
        "(W6-W8 have one column: Queue, Lock and Process have no transport choice. W5's shm column is Pipe::duplex_over(TransportKind::Shm).)"
    );
    println!(
        "(W9's columns are the local Pool(2) (pipe) and the cluster pool over loopback Redis with one host of 2 workers; its CPython column holds the best of its Python peers, Celery 5, RQ and Ray's Pool with 2 workers each (full mode only; which peer is printed above the table).)"
    );
    for line in growth_summary(rows) {
        println!("{line}");
    }
    if quick {
        println!(
            "(--quick: the W3 growth and imap rows ran a tenth of the items their names say, one round each.)"
        );
    }
}

/// How the cost grows: W3's time per item at 100M over 1M's, and imap's peak RSS at 100M over
/// 1M's, for CPython and each of our columns (the issue wants both flat: within 20%, and flat).
fn growth_summary(rows: &[Row]) -> Vec<String> {
    let find = |name: &str| rows.iter().find(|r| r.0.name == name);
    let mut lines = Vec::new();
    for (what, small, large) in [
        ("W3 time per item, 100M over 1M", W3_1M, W3_100M),
        ("imap peak RSS, 100M over 1M", IMAP_1M_RSS, IMAP_100M_RSS),
    ] {
        let (Some(small), Some(large)) = (find(small), find(large)) else {
            continue;
        };
        let growth = |a: &Option<Figure>, b: &Option<Figure>| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}x", b.value / a.value),
            _ => "–".into(),
        };
        let ours: Vec<String> = small
            .2
            .iter()
            .zip(&large.2)
            .map(|((column, a), (_, b))| format!("{column} {}", growth(a, b)))
            .collect();
        lines.push(format!(
            "({what}: CPython {}, {})",
            growth(&small.1, &large.1),
            ours.join(", ")
        ));
    }
    lines
}

/// The reference under the growth rows: W3's map in one process, no pool (`local` and `rayon`
/// in `target/bench/w3_growth.json`), per item at each size and 100M over 1M, for reading
/// how much of the pool's growth is the machine's own (fresh memory for the results).
fn in_process_line(json: &str) -> Option<String> {
    let mut parts = Vec::new();
    for (section, label) in [("local", "collect"), ("rayon", "rayon")] {
        let at = |size: &str| number_in(json, section, &format!("{size}_ns_per_item"));
        let (small, mid, large) = (at("1M")?, at("10M")?, at("100M")?);
        parts.push(format!(
            "{label} {small:.2} / {mid:.2} / {large:.2} ns/item ({:.2}x)",
            large / small
        ));
    }
    Some(format!(
        "(W3 in one process, no pool, 1M / 10M / 100M items (100M over 1M): {})",
        parts.join("; ")
    ))
}

fn write_json(root: &Path, rows: &[Row]) -> Result<(), String> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let num = |f: &Option<Figure>| {
        f.as_ref()
            .map_or("null".to_string(), |f| format!("{}", f.value))
    };
    let mut out = String::from("[\n");
    for (i, (w, cpython, ours, _)) in rows.iter().enumerate() {
        out.push_str(&format!(
            "  {{\"workload\": {:?}, \"unit\": {:?}, \"cpython\": {}, \"pool_pipe\": {}, \"pool_shm\": {}}}{}\n",
            w.name,
            w.rust.unit,
            num(cpython),
            num(&ours[0].1),
            num(&ours[1].1),
            if i + 1 < rows.len() { "," } else { "" }
        ));
    }
    out.push(']');
    let path = dir.join("results.json");
    std::fs::write(&path, out).map_err(|e| e.to_string())?;
    println!("raw results: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_in_their_section() {
        let json = r#"{"mean": {"point_estimate": 1.5}, "median": {"point_estimate": 2.25}}"#;
        assert_eq!(number_in(json, "median", "point_estimate"), Some(2.25));
        assert_eq!(number_in(json, "mean", "point_estimate"), Some(1.5));
        assert_eq!(number_in(json, "p99", "point_estimate"), None);
    }

    #[test]
    fn python_lines_parse() {
        let line = r#"{"workload": "W6 Queue small items", "variant": "", "value": 145000.5, "unit": "items/s"}"#;
        let Some(PythonLine::Figure(((w, v), f))) = parse_python_line(line) else {
            panic!("a figure");
        };
        assert_eq!(
            (w.as_str(), v.as_str(), f.value, f.unit),
            ("W6 Queue small items", "", 145000.5, "items/s")
        );
        assert!(parse_python_line("garbage").is_none());
        let line = r#"{"workload": "W3 growth", "variant": "100M", "skipped": "needs 8 GiB, 3 available"}"#;
        let Some(PythonLine::Skipped((w, v), why)) = parse_python_line(line) else {
            panic!("a skipped figure");
        };
        assert_eq!(
            (w.as_str(), v.as_str(), why.as_str()),
            ("W3 growth", "100M", "needs 8 GiB, 3 available")
        );
        let line =
            r#"{"workload": "idle worker", "variant": "fresh RSS", "value": 13.5, "unit": "MiB"}"#;
        assert!(matches!(
            parse_python_line(line),
            Some(PythonLine::Figure((_, Figure { unit: "MiB", .. })))
        ));
    }

    #[test]
    fn growth_is_the_ratio_of_the_large_run_to_the_small_one() {
        let fig = |value| {
            Some(Figure {
                value,
                unit: "ns/item",
            })
        };
        let row = |name: &'static str, c, pipe, shm| -> Row {
            let w = growth(name, ("", ""), "", "", ["", ""], "ns/item", "-");
            (
                w,
                fig(c),
                vec![("pipe", fig(pipe)), ("shm", fig(shm))],
                None,
            )
        };
        let rows = [
            row(W3_1M, 100.0, 10.0, 8.0),
            row(W3_100M, 150.0, 11.0, 10.0),
        ];
        assert_eq!(
            growth_summary(&rows),
            ["(W3 time per item, 100M over 1M: CPython 1.50x, pipe 1.10x, shm 1.25x)"]
        );
        // A per-item time is lower-is-better, and shown with its rate.
        assert_eq!(ratio(&fig(100.0), &rows[0].2), Some(12.5));
        assert_eq!(show(&fig(8.0)), "8.00 ns/item (125.0 M/s)");
    }

    #[test]
    fn the_in_process_reference_reads_both_sections() {
        let json = r#"{"local": {"1M_ns_per_item": 0.5, "10M_ns_per_item": 4, "100M_ns_per_item": 5}, "rayon": {"1M_ns_per_item": 0.25, "10M_ns_per_item": 3, "100M_ns_per_item": 2.5}, "pipe": {"1M_ns_per_item": 6}}"#;
        assert_eq!(
            in_process_line(json).as_deref(),
            Some(
                "(W3 in one process, no pool, 1M / 10M / 100M items (100M over 1M): \
                 collect 0.50 / 4.00 / 5.00 ns/item (10.00x); rayon 0.25 / 3.00 / 2.50 ns/item (10.00x))"
            )
        );
        assert_eq!(in_process_line(r#"{"pipe": {"1M_ns_per_item": 6}}"#), None);
    }

    #[test]
    fn w9_is_compared_by_its_cluster_column_only() {
        let fig = |value| Some(Figure { value, unit: "us" });
        let ours = [("pipe", fig(10.0)), ("shm", fig(2.0))];
        assert_eq!(compared("w9", &ours).len(), 1);
        assert_eq!(compared("w9", &ours)[0].0, "shm");
        assert_eq!(compared("w3", &ours).len(), 2);
    }

    #[test]
    fn ratios_favour_the_better_column() {
        let c = Some(Figure {
            value: 100.0,
            unit: "us",
        });
        let ours = [
            (
                "pipe",
                Some(Figure {
                    value: 20.0,
                    unit: "us",
                }),
            ),
            (
                "shm",
                Some(Figure {
                    value: 10.0,
                    unit: "us",
                }),
            ),
        ];
        assert_eq!(ratio(&c, &ours), Some(10.0));
        let c = Some(Figure {
            value: 100.0,
            unit: "items/s",
        });
        let ours = [
            (
                "pipe",
                Some(Figure {
                    value: 300.0,
                    unit: "items/s",
                }),
            ),
            ("shm", None),
        ];
        assert_eq!(ratio(&c, &ours), Some(3.0));
    }
}
