//! What the reliability ("chaos") tests of every crate share: how big a run is, how a test
//! reports what it measured, and the `/proc` probes that tell whether anything leaked.
//!
//! The same tests run in two sizes. `cargo test` runs the CI size (seconds), so that a
//! regression turns CI red; `cargo xtask chaos` sets `POOL_CHAOS=full` and runs the long
//! one. Either way every test prints its figures as one `CHAOS` line on stderr, which
//! `cargo xtask chaos` collects into its summary, so a figure is never a claim without a run
//! behind it.
//!
//! It also starts a real `redis-server` for the cluster backend's tests ([`RedisServer`]).
//!
//! This crate is a dev-dependency only and is never published.

#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::path::Path;

mod redis_server;

pub use redis_server::RedisServer;

/// The environment variable that selects the long run.
pub const FULL_ENV: &str = "POOL_CHAOS";

/// Whether this is the long run (`POOL_CHAOS=full`).
pub fn is_full() -> bool {
    std::env::var(FULL_ENV).is_ok_and(|v| v == "full")
}

/// `ci` in the CI-sized run, `full` in the long one.
pub fn scale(ci: u64, full: u64) -> u64 {
    if is_full() { full } else { ci }
}

/// The seed of the chaos suite's property tests: fixed in the CI-sized run, so that
/// `cargo test` is deterministic (a failure there is reproduced by running it again), and
/// random in the long run, whose point is to explore inputs no earlier run tried (proptest
/// prints the shrunk failing input, which is what reproduces it).
pub fn proptest_seed() -> proptest::test_runner::RngSeed {
    use proptest::test_runner::RngSeed;
    if is_full() {
        RngSeed::Random
    } else {
        RngSeed::Fixed(0x706f_6f6c_6368_616f)
    }
}

/// Prints one test's figures as `CHAOS <test> key=value ...` on stderr (shown by libtest
/// with `--nocapture`, or when the test fails).
pub fn report(test: &str, figures: &[(&str, u64)]) {
    let mut line = format!("CHAOS {test}");
    for (key, value) in figures {
        line.push_str(&format!(" {key}={value}"));
    }
    eprintln!("{line}");
}

/// Parses a `CHAOS` line back into its test name and figures (for `cargo xtask chaos`).
///
/// ```
/// let (test, figures) = pool_testkit::parse_report("CHAOS storm tasks=3 lost=0").unwrap();
/// assert_eq!(test, "storm");
/// assert_eq!(figures, vec![("tasks".to_string(), 3), ("lost".to_string(), 0)]);
/// ```
pub fn parse_report(line: &str) -> Option<(String, Vec<(String, u64)>)> {
    let mut words = line.trim().strip_prefix("CHAOS ")?.split_whitespace();
    let test = words.next()?.to_string();
    let figures = words
        .map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((test, figures))
}

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// This process's resident memory, in KiB.
pub fn rss_kib() -> u64 {
    status_field("VmRSS:").unwrap_or(0)
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The state letter and parent pid of process `pid`, from `/proc/PID/stat` (`None` once it
/// is gone). The command name may hold spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Children of this process, live or zombie.
pub fn children() -> BTreeSet<u32> {
    let me = std::process::id();
    all_pids()
        .filter(|&pid| state_and_parent(pid).is_some_and(|(_, parent)| parent == me))
        .collect()
}

/// Children of this process in the zombie state (exited, not reaped).
pub fn zombie_children() -> BTreeSet<u32> {
    children()
        .into_iter()
        .filter(|&pid| state_and_parent(pid).is_some_and(|(state, _)| state == 'Z'))
        .collect()
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// Entries of `/dev/shm` (named shared memory and POSIX semaphores), to compare before and
/// after a test: anything new that stays is a leaked segment.
pub fn dev_shm_entries() -> BTreeSet<String> {
    let dir = Path::new("/dev/shm");
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_see_this_process() {
        assert!(open_fds() >= 3);
        assert!(rss_kib() > 0);
        let (state, parent) = state_and_parent(std::process::id()).unwrap();
        assert!(matches!(state, 'R' | 'S'), "{state}");
        assert_ne!(parent, 0);
    }

    #[test]
    fn a_child_is_seen_live_then_as_a_zombie_until_reaped() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        assert!(children().contains(&pid));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !zombie_children().contains(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "never became a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(!children().contains(&pid));
    }

    #[test]
    fn reports_round_trip() {
        assert_eq!(parse_report("not a report"), None);
        assert_eq!(parse_report("CHAOS t x=y"), None);
        let (test, figures) = parse_report("CHAOS t a=1 b=22").unwrap();
        assert_eq!((test.as_str(), figures.len()), ("t", 2));
    }
}
