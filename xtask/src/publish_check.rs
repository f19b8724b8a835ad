//! `cargo xtask publish-check`: the packaging dry run of every published crate.
//!
//! `cargo publish --dry-run --workspace` packages pool-core, pool-ipc, pool-api and pool-cli
//! together (the path dependencies among them resolved through a local registry overlay),
//! builds each package from its `.crate` file as crates.io would, and uploads nothing. It
//! catches what only the packaged crate shows: missing metadata, a file left out by
//! `include`, a dependency without a version, a dev-dependency on an unpublished crate that
//! is still needed. The tree may be dirty: this checks packaging, not a release.

use std::path::Path;
use std::process::Command;

/// Workspace members that are never published (each has `publish = false`).
const UNPUBLISHED: [&str; 3] = ["pool-testkit", "pool-benches", "xtask"];

pub(crate) fn run() -> Result<(), String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?;
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(root).args([
        "publish",
        "--dry-run",
        "--locked",
        "--allow-dirty",
        "--workspace",
    ]);
    for name in UNPUBLISHED {
        command.args(["--exclude", name]);
    }
    println!(
        "cargo {}",
        command
            .get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        println!("publish-check: every published crate packages and builds; nothing was uploaded");
        Ok(())
    } else {
        Err(format!("cargo publish --dry-run failed ({status})"))
    }
}
