//! `cargo xtask loom [--quick]`: the loom models of the shared-memory protocols (the
//! primitives of pool-api `src/sync/`, the Pool's sleeper counter and writer-asleep flag, the
//! Queue's records, the shm ring of pool-ipc), built with `--cfg loom` (which swaps std's
//! atomics and the futex for loom's, see each crate's `src/loom`) in their own target
//! directory, so that the normal build's artifacts stay valid.
//!
//! Loom explores every interleaving up to a bound on preemptions (`LOOM_MAX_PREEMPTIONS`):
//! the full run uses [`FULL`], `--quick` (CI) uses [`QUICK`]. A model that fails prints
//! loom's report: the panic (a data race on a guarded cell, a failed assertion) or
//! `deadlock` (a sleeper nobody woke: a lost wake-up).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// The preemption bound of the full run.
const FULL: u32 = 3;
/// The preemption bound of `--quick`, the one CI runs.
const QUICK: u32 = 2;

/// Where the `--cfg loom` build goes: beside the normal one.
fn target_dir() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    base.join("loom")
}

pub(crate) fn run(quick: bool) -> Result<(), String> {
    let bound = if quick { QUICK } else { FULL };
    println!("loom models, LOOM_MAX_PREEMPTIONS={bound} (`--cfg loom`, release build)");
    let start = Instant::now();
    let status = Command::new(env!("CARGO"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args([
            "test",
            "--release",
            "--locked",
            "-p",
            "pool-ipc",
            "-p",
            "pool-api",
            "--lib",
            "--",
            "loom_tests",
        ])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", target_dir())
        .env("LOOM_MAX_PREEMPTIONS", bound.to_string())
        .env("RUST_BACKTRACE", "0")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "a loom model failed (bound {bound}); rerun one with `LOOM_LOG=trace` for its trace"
        ));
    }
    println!(
        "loom models passed (bound {bound}) in {:.0?}",
        start.elapsed()
    );
    Ok(())
}
