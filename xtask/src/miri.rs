//! `cargo xtask miri`: Miri (the nightly toolchain's interpreter that finds undefined
//! behaviour: out-of-bounds or dangling accesses, misaligned or invalid values, data races
//! between threads, leaks) on what it can run: pool-core's tests (the scheduler is pure), and
//! the pure helpers of pool-ipc and pool-api (framing, the function-id codec, the task and
//! payload codecs, the bulk layout, the error types). What spawns processes or uses futexes, memfds, mmap or
//! sockets cannot run under Miri: such tests in these modules say so beside them with
//! `#[cfg_attr(miri, ignore = "...")]`.
//!
//! Miri's own target directory is `<target>/miri` (cargo miri puts it there), so the normal
//! build's artifacts stay valid.

use std::process::Command;
use std::time::Instant;

/// One Miri run: a package, its test targets, and the test-name filters (empty: all).
struct Run {
    package: &'static str,
    targets: &'static [&'static str],
    filters: &'static [&'static str],
}

const RUNS: &[Run] = &[
    Run {
        package: "pool-core",
        targets: &["--lib", "--tests"],
        // The two generated properties: under Miri (some 1000 times slower) even 4 sequences
        // each take over 15 minutes; the scheduler code they drive runs in every other test.
        filters: &[
            "--skip",
            "every_sequence_keeps_the_promises",
            "--skip",
            "transient_start_failures_never_break_the_pool",
        ],
    },
    Run {
        package: "pool-ipc",
        targets: &["--lib"],
        filters: &["transport::frame::", "code::", "shared::copy::"],
    },
    Run {
        package: "pool-api",
        targets: &["--lib"],
        filters: &[
            "task::",
            "error::",
            "pool::payload::",
            "pool::placement::",
            "bytes::",
            "bulk::",
        ],
    },
];

const INSTALL: &str = "Miri needs the nightly toolchain with its miri component: \
`rustup toolchain install nightly --component miri` (or `rustup +nightly component add \
miri rust-src`), then `cargo +nightly miri setup` once";

pub(crate) fn run() -> Result<(), String> {
    let cargo = "cargo";
    let version = Command::new(cargo)
        .args(["+nightly", "miri", "--version"])
        .output()
        .map_err(|e| format!("cannot run `cargo +nightly miri`: {e}. {INSTALL}"))?;
    if !version.status.success() {
        return Err(format!(
            "`cargo +nightly miri --version` failed ({}). {INSTALL}",
            String::from_utf8_lossy(&version.stderr).trim()
        ));
    }
    print!("{}", String::from_utf8_lossy(&version.stdout));
    let setup = Command::new(cargo)
        .args(["+nightly", "miri", "setup"])
        .status()
        .map_err(|e| format!("cannot run `cargo +nightly miri setup`: {e}"))?;
    if !setup.success() {
        return Err(format!("`cargo +nightly miri setup` failed. {INSTALL}"));
    }
    let start = Instant::now();
    for run in RUNS {
        let mut cmd = Command::new(cargo);
        cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            // The `+nightly` proxy must choose the toolchain: not the one running xtask.
            .env_remove("RUSTC")
            .env_remove("RUSTDOC")
            .env_remove("CARGO")
            .args(["+nightly", "miri", "test", "-p", run.package])
            .args(run.targets)
            // proptest looks for its regressions file (getcwd, open): allowed.
            .env("MIRIFLAGS", "-Zmiri-disable-isolation")
            // Miri is some 1000 times slower: few generated cases, should one run.
            .env("PROPTEST_CASES", "4");
        if !run.filters.is_empty() {
            cmd.arg("--").args(run.filters);
        }
        println!("== miri: {}", run.package);
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run cargo miri: {e}"))?;
        if !status.success() {
            return Err(format!("Miri failed on {}", run.package));
        }
    }
    println!("Miri passed in {:.0?}", start.elapsed());
    Ok(())
}
