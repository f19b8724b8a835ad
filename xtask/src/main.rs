//! Project automation for the pool workspace, in Rust rather than shell scripts.
//!
//! Run `cargo xtask help` for the commands. Each one is a thin wrapper over `cargo` with the
//! settings the project agreed on, so that CI and developers run the same thing.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::{Command, ExitCode};

mod bench;
mod chaos;
mod cluster_peers;
mod loom;
mod miri;
mod publish_check;
mod tidy;

const HELP: &str = "\
cargo xtask <command>

Commands:
  bench [--quick]       build in release and run pool's benchmarks beside CPython's
                        multiprocessing (benches/python/mp_bench.py), workload by workload;
                        print one markdown table, write target/bench/results.json
  chaos [--quick]       the reliability suite (kill storms, parent death, leaks, hostile
                        bytes, dead holders, low limits) in release at full size, then
                        its figures summed; --quick runs the CI size
  core-stress [CASES]   run pool-core's property tests with CASES generated sequences
                        (default 20000) from a random seed; a failure prints the seed
  loom [--quick]        the loom models of the shared-memory protocols (sync primitives,
                        the Pool's sleeper counter, the shm ring), `--cfg loom` in
                        target/loom, preemption bound 3; --quick (CI) bound 2
  miri                  Miri (nightly) on pool-core's tests and the pure helpers of
                        pool-ipc and pool-api (framing, codecs, errors)
  publish-check         package every published crate (pool-core, pool-ipc, pool-api,
                        pool-cli) and build each package, as `cargo publish --dry-run`
                        does; uploads nothing
  help                  this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("core-stress") => core_stress(args.get(1).map(String::as_str)),
        Some("bench") => match bench::run(args.iter().any(|a| a == "--quick")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask bench: {e}");
                ExitCode::FAILURE
            }
        },
        Some("chaos") => match chaos::run(args.iter().any(|a| a == "--quick")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask chaos: {e}");
                ExitCode::FAILURE
            }
        },
        Some("loom") => match loom::run(args.iter().any(|a| a == "--quick")) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask loom: {e}");
                ExitCode::FAILURE
            }
        },
        Some("miri") => match miri::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask miri: {e}");
                ExitCode::FAILURE
            }
        },
        Some("publish-check") => match publish_check::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask publish-check: {e}");
                ExitCode::FAILURE
            }
        },
        Some("help" | "--help" | "-h") | None => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("xtask: unknown command `{other}`\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

/// The long, random run of the scheduler's property tests. The default test run uses a fixed
/// seed so CI stays deterministic; this one explores new sequences each time.
fn core_stress(cases: Option<&str>) -> ExitCode {
    let cases = cases.unwrap_or("20000");
    if cases.parse::<u32>().is_err() {
        eprintln!("xtask: CASES must be a number, got `{cases}`");
        return ExitCode::from(2);
    }
    println!("pool-core property tests: {cases} cases per property, random seed");
    let status = Command::new(env!("CARGO"))
        .args([
            "test",
            "--release",
            "-p",
            "pool-core",
            "--test",
            "properties",
        ])
        .env("PROPTEST_CASES", cases)
        .env("POOL_CORE_RANDOM_SEED", "1")
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}
