//! `Process` over real child processes. Ported behaviours name their source: CPython's
//! `Lib/test/_test_multiprocessing.py` (`_TestProcess`) and the seed tutorials.

#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pool_api::{Error, Process, active_children, current_process};

const GENEROUS: Duration = Duration::from_secs(10);

fn worker(name: String) {
    let _ = name;
    std::thread::sleep(Duration::from_millis(50));
}

fn sleeps(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn panics(_: ()) {
    panic!("deliberate panic in a Process target");
}

fn exits(code: i32) {
    std::process::exit(code);
}

/// Writes the process's name into `path`, after `ms` milliseconds.
fn write_name((path, ms): (PathBuf, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, current_process().name).unwrap();
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn two_processes_start_and_join() {
    // seed 001: p1 = Process(target=worker, args=("A",)); p2 likewise; start both, join both.
    let mut p1 = Process::new(worker, "A".to_string()).unwrap();
    let mut p2 = Process::new(worker, "B".to_string()).unwrap();
    assert_eq!(p1.exitcode(), None);
    assert!(!p1.is_alive());
    p1.start().unwrap();
    p2.start().unwrap();
    assert!(p1.pid().is_some() && p1.pid() != p2.pid());
    p1.join().unwrap();
    p2.join().unwrap();
    assert_eq!((p1.exitcode(), p2.exitcode()), (Some(0), Some(0)));
    assert!(!p1.is_alive());
}

#[test]
fn lifecycle_misuse_is_a_typed_error() {
    // CPython: start twice -> AssertionError; join before start -> AssertionError.
    let mut p = Process::new(worker, "x".to_string()).unwrap();
    assert!(matches!(p.join(), Err(Error::InvalidArgument(_))));
    assert!(matches!(p.terminate(), Err(Error::InvalidArgument(_))));
    p.start().unwrap();
    assert!(matches!(p.start(), Err(Error::InvalidArgument(_))));
    p.join().unwrap();
    assert!(matches!(p.start(), Err(Error::InvalidArgument(_))));
    p.terminate().unwrap();
}

#[test]
fn exitcodes_follow_python() {
    // CPython _TestProcess.test_process / test_terminate: exitcode is -SIGTERM after terminate.
    let mut panicking = Process::new(panics, ()).unwrap();
    let mut exiting = Process::new(exits, 3).unwrap();
    let mut terminated = Process::new(sleeps, 60_000).unwrap();
    let mut killed = Process::new(sleeps, 60_000).unwrap();
    for p in [&mut panicking, &mut exiting, &mut terminated, &mut killed] {
        p.start().unwrap();
    }
    assert!(terminated.is_alive());
    assert_eq!(
        terminated.join_timeout(Duration::from_millis(50)),
        Ok(false)
    );
    terminated.terminate().unwrap();
    killed.kill().unwrap();
    for p in [&mut panicking, &mut exiting, &mut terminated, &mut killed] {
        assert_eq!(p.join_timeout(GENEROUS), Ok(true));
    }
    assert_eq!(panicking.exitcode(), Some(1));
    assert_eq!(exiting.exitcode(), Some(3));
    assert_eq!(terminated.exitcode(), Some(-15));
    assert_eq!(killed.exitcode(), Some(-9));
}

/// Sends its stderr to `path`, then runs [`panics`] in a child of its own (which inherits
/// that stderr) and exits with the child's exit code.
fn panics_with_stderr_in(path: PathBuf) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path).unwrap();
    // SAFETY: both descriptors are open; fd 2 is replaced atomically.
    assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), 2) }, 2);
    let mut child = Process::new(panics, ()).unwrap();
    child.start().unwrap();
    child.join().unwrap();
    std::process::exit(child.exitcode().unwrap_or(-1));
}

#[test]
fn a_panicking_target_exits_with_1_and_its_message_on_stderr() {
    // CPython: an exception in the target prints its traceback to stderr, exitcode 1.
    let dir = scratch();
    let path = dir.path().join("stderr");
    let mut middle = Process::new(panics_with_stderr_in, path.clone()).unwrap();
    middle.start().unwrap();
    assert_eq!(middle.join_timeout(GENEROUS), Ok(true));
    assert_eq!(middle.exitcode(), Some(1));
    let stderr = std::fs::read_to_string(path).unwrap();
    assert!(
        stderr.contains("deliberate panic in a Process target"),
        "{stderr}"
    );
}

#[test]
fn names_and_active_children() {
    let dir = scratch();
    let path = dir.path().join("name");
    let mut named = Process::new(write_name, (path.clone(), 0))
        .unwrap()
        .with_name("writer");
    assert_eq!(named.name(), "writer");
    let mut unnamed = Process::new(sleeps, 300).unwrap();
    assert!(unnamed.name().starts_with("Process-"), "{}", unnamed.name());
    named.start().unwrap();
    unnamed.start().unwrap();
    let active: Vec<u32> = active_children().iter().map(|p| p.pid).collect();
    assert!(active.contains(&unnamed.pid().unwrap()));
    named.join().unwrap();
    unnamed.join().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "writer");
    let active: Vec<u32> = active_children().iter().map(|p| p.pid).collect();
    assert!(!active.contains(&unnamed.pid().unwrap_or(0)));
}

/// Starts a child that writes a file after 300 ms and drops its handle at once, then
/// returns: the program's exit must wait for it (non-daemon) or terminate it (daemon).
fn abandons_a_child((path, daemon): (PathBuf, bool)) {
    let mut child = Process::new(write_name, (path, 300))
        .unwrap()
        .daemon(daemon);
    child.start().unwrap();
    drop(child);
}

#[test]
fn exit_waits_for_non_daemon_children_and_terminates_daemons() {
    // seed 002: ten Processes started and never joined still all print.
    let dir = scratch();
    for daemon in [false, true] {
        let path = dir.path().join(format!("daemon-{daemon}"));
        let mut middle = Process::new(abandons_a_child, (path.clone(), daemon)).unwrap();
        let t = Instant::now();
        middle.start().unwrap();
        assert_eq!(middle.join_timeout(GENEROUS), Ok(true));
        assert_eq!(middle.exitcode(), Some(0));
        eprintln!("daemon={daemon}: parent exited after {:?}", t.elapsed());
        assert_eq!(path.exists(), !daemon, "daemon={daemon}");
    }
}

/// Starts short-lived children, drops their handles, and exits 0 only if none is left as a
/// zombie once they are done.
fn churns(_: ()) {
    for _ in 0..8 {
        let mut p = Process::new(sleeps, 10).unwrap();
        p.start().unwrap();
    }
    let t = Instant::now();
    while (!pool_testkit::zombie_children().is_empty() || !active_children().is_empty())
        && t.elapsed() < GENEROUS
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !pool_testkit::zombie_children().is_empty() {
        std::process::exit(1);
    }
}

#[test]
fn abandoned_children_are_reaped_as_they_exit() {
    let mut p = Process::new(churns, ()).unwrap();
    p.start().unwrap();
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0), "zombies were left");
}

fn sends_its_pid(queue: pool_api::Queue<u32>) {
    queue.put(std::process::id()).unwrap();
}

#[test]
fn forkserver_processes_behave_as_spawned_ones() {
    use pool_api::{Queue, StartMethod};
    let forkserver = |p: Process| p.start_method(StartMethod::Forkserver);
    // Exit codes as with spawn.
    let mut panicking = forkserver(Process::new(panics, ()).unwrap());
    let mut exiting = forkserver(Process::new(exits, 3).unwrap());
    let mut killed = forkserver(Process::new(sleeps, 60_000).unwrap());
    for p in [&mut panicking, &mut exiting, &mut killed] {
        p.start().unwrap();
    }
    killed.kill().unwrap();
    for p in [&mut panicking, &mut exiting, &mut killed] {
        assert_eq!(p.join_timeout(GENEROUS), Ok(true));
    }
    assert_eq!(panicking.exitcode(), Some(1));
    assert_eq!(exiting.exitcode(), Some(3));
    assert_eq!(killed.exitcode(), Some(-9));
    // Names, and handles in the arguments.
    let dir = scratch();
    let path = dir.path().join("name");
    let mut named =
        forkserver(Process::new(write_name, (path.clone(), 0)).unwrap()).with_name("fs");
    named.start().unwrap();
    named.join().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "fs");
    let queue: Queue<u32> = Queue::new().unwrap();
    let mut sender = forkserver(Process::new(sends_its_pid, queue.clone()).unwrap());
    sender.start().unwrap();
    assert_eq!(queue.get_timeout(GENEROUS).unwrap(), sender.pid().unwrap());
    sender.join().unwrap();
    assert_eq!(sender.exitcode(), Some(0));
    // A forked closure has no start method to choose.
    let mut forked = Process::fork(|| {}).start_method(StartMethod::Spawn);
    assert!(matches!(forked.start(), Err(Error::InvalidArgument(_))));
}
