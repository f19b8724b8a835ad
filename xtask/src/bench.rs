//! `cargo xtask bench`: pool's criterion benches beside CPython's multiprocessing, measured in
//! the same run, printed as one markdown table of ratios.
//!
//! Timings on a shared machine drift, so both sides of each workload run back to back, and
//! what counts is their ratio. The CPython side is `benches/python/mp_bench.py`; the Rust side
//! is read from criterion's own estimates (`target/criterion/<group>/<bench>/new/`), medians.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A CPython figure, keyed by workload and variant.
type PythonFigure = ((String, String), Figure);

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
            target: ">= 60M/s",
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
            target: ">= 1.5 GiB/s pipe, >= 4 GiB/s shm",
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
    let mut done_python = std::collections::BTreeSet::new();
    let mut done_rust = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    for w in workloads() {
        // Interleave: this workload's CPython side, then its Rust side. W9's "CPython side"
        // is the best of its Python peers (`cluster_peers.rs`).
        if python && !w.python_group.is_empty() && done_python.insert(w.python_group) {
            for (key, fig) in run_python(&root, w.python_group, quick)? {
                python_figures.insert(key, fig);
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
        let cpython = python_figures
            .get(&(w.python.0.to_string(), w.python.1.to_string()))
            .cloned();
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
        rows.push((w, cpython, ours));
    }
    print_table(&rows);
    write_json(&root, &rows)?;
    // CI judges no timing, but a bench that produced no figure is broken.
    let missing: Vec<String> = rows
        .iter()
        .flat_map(|(w, _, ours)| {
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

fn run_python(root: &Path, group: &str, quick: bool) -> Result<Vec<PythonFigure>, String> {
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
fn w9_peers(root: &Path, quick: bool) -> Vec<PythonFigure> {
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

/// `{"workload": "...", "variant": "...", "value": 1.5, "unit": "..."}`, as mp_bench.py prints.
fn parse_python_line(line: &str) -> Option<PythonFigure> {
    let text = |key: &str| -> Option<String> {
        let start = line.find(&format!("\"{key}\": \""))? + key.len() + 5;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_string())
    };
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
        _ => return None,
    };
    Some((
        (text("workload")?, text("variant")?),
        Figure { value, unit },
    ))
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
    if rust.bench_file != "latency" {
        return median_seconds(root, rust.group, id);
    }
    let (transport, key) = id.split_once('.')?;
    let json = std::fs::read_to_string(root.join("target/bench/latency.json")).ok()?;
    Some(number_in(&json, transport, key)? / 1e6)
}

fn median_seconds(root: &Path, group: &str, id: &str) -> Option<f64> {
    let path: PathBuf = root
        .join("target/criterion")
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
    unit == "ms" || unit == "us"
}

fn show(f: &Option<Figure>) -> String {
    match f {
        None => "–".into(),
        Some(f) if f.value >= 1e6 => format!("{:.2} M{}", f.value / 1e6, f.unit),
        Some(f) if f.value >= 1e4 => format!("{:.0} k{}", f.value / 1e3, f.unit),
        Some(f) => format!("{:.2} {}", f.value, f.unit),
    }
}

type Row = (
    Workload,
    Option<Figure>,
    Vec<(&'static str, Option<Figure>)>,
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

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| workload | CPython 3 multiprocessing | pool (pipe) | pool (shm) | pool vs CPython | target |"
    );
    println!("|---|---|---|---|---|---|");
    for (w, cpython, ours) in rows {
        let r = ratio(cpython, ours).map_or("–".into(), |r| format!("{r:.1}x"));
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            w.name,
            show(cpython),
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
}

fn write_json(root: &Path, rows: &[Row]) -> Result<(), String> {
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let num = |f: &Option<Figure>| {
        f.as_ref()
            .map_or("null".to_string(), |f| format!("{}", f.value))
    };
    let mut out = String::from("[\n");
    for (i, (w, cpython, ours)) in rows.iter().enumerate() {
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
        let ((w, v), f) = parse_python_line(line).unwrap();
        assert_eq!(
            (w.as_str(), v.as_str(), f.value, f.unit),
            ("W6 Queue small items", "", 145000.5, "items/s")
        );
        assert!(parse_python_line("garbage").is_none());
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
