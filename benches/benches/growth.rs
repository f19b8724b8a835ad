//! How the cost grows with the work (issue 22), each group beside its CPython counterpart in
//! `benches/python/mp_bench.py`:
//!
//! - `w3_growth`: W3's `map` of `u64 -> u64` on `Pool(2)` with the default chunks, at 1 M,
//!   10 M and 100 M items: the median time per item. Beside it, as a reference, the same map
//!   in this one process (`local`: `(0..n).map(square).collect()`; `rayon`: the same with
//!   `into_par_iter`): how the machine's own cost grows, fresh memory for the results
//!   included.
//! - `imap_memory`: `imap` over 1 M and 100 M items (chunks of [`IMAP_CHUNK`]), results
//!   consumed and dropped as they come: items/s and the peak RSS (`VmHWM`) of the process
//!   that ran it, a child run for just this measurement so that nothing else this bench did
//!   counts.
//! - `pool_start`: `Pool(n)` built until all `n` workers have answered a task, for n = 2, 16,
//!   64, spawned and forkserver workers. Each task waits on a [`Barrier`] of `n` parties
//!   (handed to the workers by the initializer), so the `n` tasks are all running at once,
//!   one on each worker, before any answers.
//! - `idle_memory`: the RSS and `Private_Dirty` (`/proc/PID/smaps_rollup`) of an idle worker
//!   of `Pool(1)`, right after it answered its first task and after a task of 64 MiB
//!   (arguments and result), each read [`SETTLE`] after the worker's last answer.
//!
//! Like `latency` and `cluster`, it has its own harness: each group prints its figures and
//! writes them, in their units, to `target/bench/<group>.json` for `cargo xtask bench`.
//! `POOL_BENCH_QUICK` divides every item count by [`QUICK_SCALE`] and cuts the rounds.

#![allow(missing_docs, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pool_api::{Barrier, Bytes, Pool, StartMethod, TransportKind};

/// Items per `imap` chunk, on both sides (CPython's default of 1 would measure the per-task
/// cost instead, at 100 M tasks).
const IMAP_CHUNK: usize = 10_000;
/// What `POOL_BENCH_QUICK` divides item counts by.
const QUICK_SCALE: u64 = 10;
/// How long after its last answer an idle worker's memory is read (it gives large buffers
/// back ~10 ms after a task; CPython's worker frees them at once).
const SETTLE: Duration = Duration::from_millis(500);
/// Set in the child that runs one `imap` measurement: `pipe:N` or `shm:N`.
const IMAP_CHILD: &str = "POOL_GROWTH_IMAP_CHILD";

const KINDS: [TransportKind; 2] = [TransportKind::Pipe, TransportKind::Shm];

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn ping(x: u32) -> u32 {
    x + 1
}

fn echo(data: Bytes) -> Bytes {
    data
}

fn name(kind: TransportKind) -> String {
    format!("{kind:?}").to_lowercase()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn pool(kind: TransportKind, processes: usize) -> Pool {
    Pool::builder()
        .processes(processes)
        .transport(kind)
        .build()
        .expect("pool")
}

/// `(transport, [(key, value)])` sections as `{"pipe": {...}, "shm": {...}}`, written to
/// `target/bench/<group>.json`.
fn write(group: &str, sections: &[(String, Vec<(String, f64)>)]) {
    let body: Vec<String> = sections
        .iter()
        .map(|(section, fields)| {
            let fields: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            format!("\"{section}\": {{{}}}", fields.join(", "))
        })
        .collect();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("creating target/bench");
    std::fs::write(
        dir.join(format!("{group}.json")),
        format!("{{{}}}\n", body.join(", ")),
    )
    .expect("writing the group's json");
}

/// The sizes `w3_growth` runs: label, items, rounds.
const W3_SIZES: [(&str, u64, usize); 3] = [
    ("1M", 1_000_000, 10),
    ("10M", 10_000_000, 5),
    ("100M", 100_000_000, 3),
];

/// W3's map in this process, no pool: the median time per item at each size, as a section.
fn w3_in_process(
    section: &str,
    scale: u64,
    quick: bool,
    map: fn(u64) -> Vec<u64>,
) -> (String, Vec<(String, f64)>) {
    drop(map(1_000_000 / scale));
    let mut fields = Vec::new();
    for (label, items, rounds) in W3_SIZES {
        let items = items / scale;
        let rounds = if quick { 1 } else { rounds };
        let per_item_ns = median(
            (0..rounds)
                .map(|_| {
                    let t = Instant::now();
                    let out = map(items);
                    let secs = t.elapsed().as_secs_f64();
                    assert_eq!(out[3], 9);
                    secs * 1e9 / items as f64
                })
                .collect(),
        );
        println!(
            "w3_growth/{section} (one process, no pool): {label} items: {per_item_ns:.2} ns/item"
        );
        fields.push((format!("{label}_ns_per_item"), per_item_ns));
    }
    (section.into(), fields)
}

fn w3_growth(scale: u64, quick: bool) {
    let mut sections = vec![
        w3_in_process("local", scale, quick, |n| (0..n).map(square).collect()),
        w3_in_process("rayon", scale, quick, |n| {
            use rayon::prelude::*;
            (0..n).into_par_iter().map(square).collect()
        }),
    ];
    for kind in KINDS {
        let pool = pool(kind, 2);
        drop(pool.map(square, 0..1_000_000 / scale).unwrap());
        let mut fields = Vec::new();
        for (label, items, rounds) in W3_SIZES {
            let items: u64 = items / scale;
            let rounds = if quick { 1 } else { rounds };
            let per_item_ns = median(
                (0..rounds)
                    .map(|_| {
                        let t = Instant::now();
                        let out = pool.map(square, 0..items).unwrap();
                        // The results are freed outside the clock, as CPython's list is.
                        let secs = t.elapsed().as_secs_f64();
                        assert_eq!(out.len() as u64, items);
                        assert_eq!(out[3], 9);
                        secs * 1e9 / items as f64
                    })
                    .collect(),
            );
            println!(
                "w3_growth/{}: {label} items ({items} run): {per_item_ns:.2} ns/item, {:.2} M items/s",
                name(kind),
                1e3 / per_item_ns
            );
            fields.push((format!("{label}_ns_per_item"), per_item_ns));
        }
        sections.push((name(kind), fields));
    }
    write("w3_growth", &sections);
}

/// One field of `/proc/PID/status` or `/proc/PID/smaps_rollup`, in KiB.
fn proc_kib(path: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .map_or(0, |kib| kib.trim().parse().expect("a number of kB"))
}

/// The child's side of `imap_memory`: runs the `imap` and prints `items/s peak-RSS-KiB`.
fn imap_child(spec: &str) {
    let (kind, items) = spec.split_once(':').expect("transport:items");
    let kind = if kind == "shm" {
        TransportKind::Shm
    } else {
        TransportKind::Pipe
    };
    let items: u64 = items.parse().expect("an item count");
    let pool = pool(kind, 2);
    let t = Instant::now();
    let mut count = 0u64;
    let mut last = 0;
    for r in pool.imap(square, 0..items, IMAP_CHUNK).unwrap() {
        last = r.unwrap();
        count += 1;
    }
    let rate = items as f64 / t.elapsed().as_secs_f64();
    assert_eq!(count, items);
    assert_eq!(last, square(items - 1));
    println!("{rate} {}", proc_kib("/proc/self/status", "VmHWM:"));
}

fn imap_memory(scale: u64) {
    let exe = std::env::current_exe().expect("this bench's path");
    let mut sections = Vec::new();
    for kind in KINDS {
        let mut fields = Vec::new();
        for (label, items) in [("1M", 1_000_000u64), ("100M", 100_000_000)] {
            let items = items / scale;
            let out = Command::new(&exe)
                .env(IMAP_CHILD, format!("{}:{items}", name(kind)))
                .output()
                .expect("running the imap child");
            assert!(
                out.status.success(),
                "imap child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let mut figures = text.split_whitespace().map(|f| f.parse::<f64>().unwrap());
            let (rate, hwm_kib) = (figures.next().unwrap(), figures.next().unwrap());
            println!(
                "imap_memory/{}: {label} items ({items} run): {:.2} M items/s, peak RSS {:.1} MiB",
                name(kind),
                rate / 1e6,
                hwm_kib / 1024.0
            );
            fields.push((format!("{label}_per_s"), rate));
            fields.push((format!("{label}_hwm_mib"), hwm_kib / 1024.0));
        }
        sections.push((name(kind), fields));
    }
    write("imap_memory", &sections);
}

/// The barrier of the pool a worker belongs to, set by [`arm`] (its initializer).
static BARRIER: OnceLock<Barrier> = OnceLock::new();

fn arm(barrier: Barrier) {
    BARRIER.set(barrier).expect("one initializer per worker");
}

/// Returns once every worker of the pool runs this task: its pid.
fn meet(_: u32) -> u32 {
    // A generous bound turns a scheduler that never reaches every worker into an error, not
    // a hang.
    BARRIER
        .get()
        .expect("armed by the initializer")
        .wait_timeout(Duration::from_secs(120))
        .expect("every worker met");
    std::process::id()
}

/// Milliseconds from `Pool(n)`'s build until all `n` workers have answered.
fn start_round(n: usize, kind: TransportKind, method: StartMethod) -> f64 {
    let barrier = Barrier::new(n as u32).expect("barrier");
    let t = Instant::now();
    let pool = Pool::builder()
        .processes(n)
        .transport(kind)
        .start_method(method)
        .initializer(arm, barrier)
        .build()
        .expect("pool");
    let pids: BTreeSet<u32> = pool
        .map_chunked(meet, 0..n as u32, 1)
        .unwrap()
        .into_iter()
        .collect();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(pids.len(), n, "every worker answered");
    // Shutdown is outside the clock, as it is on CPython's side.
    drop(pool);
    ms
}

fn pool_start(quick: bool) {
    let methods = [
        (StartMethod::Spawn, "spawn"),
        (StartMethod::Forkserver, "forkserver"),
    ];
    // The forkserver starts on first use: that start belongs to no pool's figure.
    start_round(2, TransportKind::Pipe, StartMethod::Forkserver);
    let mut sections = Vec::new();
    for kind in KINDS {
        let mut fields = Vec::new();
        for (method, method_name) in methods {
            for n in [2, 16, 64] {
                let rounds = if quick { 1 } else { 5 };
                let ms = median((0..rounds).map(|_| start_round(n, kind, method)).collect());
                println!(
                    "pool_start/{}: Pool({n}), {method_name}, to all answered: {ms:.2} ms",
                    name(kind)
                );
                fields.push((format!("{method_name}_{n}_ms"), ms));
            }
        }
        sections.push((name(kind), fields));
    }
    write("pool_start", &sections);
}

/// The idle worker's RSS and `Private_Dirty`, in MiB, [`SETTLE`] after its last answer.
fn idle_figures(pid: u32) -> (f64, f64) {
    std::thread::sleep(SETTLE);
    let path = format!("/proc/{pid}/smaps_rollup");
    (
        proc_kib(&path, "Rss:") as f64 / 1024.0,
        proc_kib(&path, "Private_Dirty:") as f64 / 1024.0,
    )
}

fn idle_memory() {
    let mut sections = Vec::new();
    for kind in KINDS {
        let pool = pool(kind, 1);
        assert_eq!(pool.apply(ping, 1).unwrap(), 2);
        let pid = pool.worker_pids()[0];
        let (fresh_rss, fresh_private) = idle_figures(pid);
        let big = Bytes(vec![7u8; 64 << 20]);
        assert_eq!(pool.apply(echo, big).unwrap().len(), 64 << 20);
        assert_eq!(pool.worker_pids(), [pid], "the same worker");
        let (after_rss, after_private) = idle_figures(pid);
        println!(
            "idle_memory/{}: fresh RSS {fresh_rss:.2} MiB, private dirty {fresh_private:.2} MiB; \
             after a 64 MiB task RSS {after_rss:.2} MiB, private dirty {after_private:.2} MiB",
            name(kind)
        );
        sections.push((
            name(kind),
            vec![
                ("fresh_rss_mib".into(), fresh_rss),
                ("fresh_private_dirty_mib".into(), fresh_private),
                ("after_64mib_rss_mib".into(), after_rss),
                ("after_64mib_private_dirty_mib".into(), after_private),
            ],
        ));
    }
    write("idle_memory", &sections);
}

fn main() {
    if let Ok(spec) = std::env::var(IMAP_CHILD) {
        imap_child(&spec);
        return;
    }
    // `cargo bench` passes `--bench`; other arguments are filters, as criterion reads them.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |group: &str| filters.is_empty() || filters.iter().any(|f| group.contains(f));
    let quick = std::env::var_os("POOL_BENCH_QUICK").is_some();
    let scale = if quick { QUICK_SCALE } else { 1 };
    if wanted("w3_growth") {
        w3_growth(scale, quick);
    }
    if wanted("imap_memory") {
        imap_memory(scale);
    }
    if wanted("pool_start") {
        pool_start(quick);
    }
    if wanted("idle_memory") {
        idle_memory();
    }
}
