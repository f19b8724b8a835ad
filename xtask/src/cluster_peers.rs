//! W9's Python peers for `cargo xtask bench`: Celery 5, RQ and Ray's multiprocessing Pool,
//! installed with pip into a venv under the target dir and run by
//! `benches/python/cluster_peers.py`, which starts its own redis-server.
//!
//! Full mode only: the install downloads a few hundred megabytes (Ray's wheel most of it)
//! the first time, and the peers' runs take minutes; `--quick` (CI's smoke test) leaves
//! W9's peer column empty. A peer that does not install or import is left out of the table
//! with the reason printed; the others still count.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What pip installs: each peer as the issue names it, with a Redis client.
const PACKAGES: [&str; 4] = ["celery[redis]>=5,<6", "rq>=2", "redis>=5", "ray>=2"];

/// One figure of one peer, as the script prints it.
pub(crate) struct PeerFigure {
    /// The workload (`W9 cluster ...`).
    pub(crate) workload: String,
    /// The peer (`celery`, `rq`, `ray`), or `best`.
    pub(crate) variant: String,
    /// The best peer's name, on `best` lines.
    pub(crate) peer: Option<String>,
    /// The line as printed, for `parse_python_line`.
    pub(crate) line: String,
}

/// The venv's interpreter, made and filled on first use.
fn venv(root: &Path) -> Result<PathBuf, String> {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("bench/peers-venv");
    let python = dir.join("bin/python");
    let ready = dir.join(".installed");
    if ready.exists() {
        return Ok(python);
    }
    println!("installing W9's Python peers into {} ...", dir.display());
    run(Command::new("python3").arg("-m").arg("venv").arg(&dir))?;
    // Ray last and on its own: when its wheel does not install (no wheel for this Python or
    // platform), Celery and RQ still do.
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .args(&PACKAGES[..3]))?;
    if let Err(e) = run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .arg(PACKAGES[3]))
    {
        println!("Ray did not install, W9 goes on without it: {e}");
    }
    std::fs::write(&ready, PACKAGES.join("\n")).map_err(|e| e.to_string())?;
    Ok(python)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {status}"))
    }
}

/// Runs the peers and returns their figures; an error says why there are none.
pub(crate) fn measure(root: &Path) -> Result<Vec<PeerFigure>, String> {
    let python = venv(root)?;
    println!("running W9's Python peers (Celery, RQ, Ray; 2 workers each) ...");
    let mut child = Command::new(&python)
        .arg(root.join("benches/python/cluster_peers.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run cluster_peers.py: {e}"))?;
    // A stuck framework must not hang the table: a generous deadline, then a kill. The
    // output (a few dozen short lines) is read after the exit, far below a pipe's capacity.
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(_) => break,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("cluster_peers.py did not finish in 30 minutes; killed".into());
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("cluster_peers.py failed: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(parse)
        .collect())
}

/// A line of the script: its workload, variant and, on `best` lines, the peer.
fn parse(line: &str) -> Option<PeerFigure> {
    let text = |key: &str| -> Option<String> {
        let start = line.find(&format!("\"{key}\": \""))? + key.len() + 5;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_string())
    };
    Some(PeerFigure {
        workload: text("workload")?,
        variant: text("variant")?,
        peer: text("peer"),
        line: line.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_lines_name_their_peer() {
        let line = r#"{"workload": "W9 cluster start-up", "variant": "best", "value": 150.5, "unit": "ms", "peer": "rq"}"#;
        let f = parse(line).unwrap();
        assert_eq!(
            (f.workload.as_str(), f.variant.as_str(), f.peer.as_deref()),
            ("W9 cluster start-up", "best", Some("rq"))
        );
        assert!(parse("rq skipped").is_none());
    }
}
