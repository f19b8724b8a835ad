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
    let p1 = Process::new(worker, "A".to_string()).unwrap();
    let p2 = Process::new(worker, "B".to_string()).unwrap();
    let mut p1 = p1.start().unwrap();
    let mut p2 = p2.start().unwrap();
    assert_ne!(p1.pid(), p2.pid());
    assert_eq!(p1.wait().unwrap(), pool_api::ExitStatus::Code(0));
    assert_eq!(p2.wait().unwrap(), pool_api::ExitStatus::Code(0));
    assert_eq!((p1.exitcode(), p2.exitcode()), (Some(0), Some(0)));
    assert!(!p1.is_alive());
    p1.join().unwrap();
    p2.join().unwrap();
}

fn double(x: u64) -> u64 {
    x * 2
}

fn big(n: usize) -> Vec<u8> {
    vec![7; n]
}

#[test]
fn join_returns_the_targets_value() {
    // std's JoinHandle::join for a process: the value, however large.
    assert_eq!(
        Process::new(double, 21)
            .unwrap()
            .start()
            .unwrap()
            .join()
            .unwrap(),
        42
    );
    // Larger than a socket's buffer: read while the child runs, or it could not exit.
    let n = 16 << 20;
    let mut child = Process::new(big, n).unwrap().start().unwrap();
    assert_eq!(
        child.wait_timeout(GENEROUS).unwrap(),
        Some(pool_api::ExitStatus::Code(0))
    );
    assert_eq!(child.join().unwrap(), vec![7; n]);
    let forked = Process::fork(|| String::from("from the fork"))
        .start()
        .unwrap();
    assert_eq!(forked.join().unwrap(), "from the fork");
}

#[test]
fn join_reports_a_panic_or_a_death_as_typed_errors() {
    let panicked = Process::new(panics, ()).unwrap().start().unwrap();
    match panicked.join() {
        Err(Error::Panicked { message, pid, .. }) => {
            assert_eq!(message, "deliberate panic in a Process target");
            assert_ne!(pid, 0);
        }
        other => panic!("{other:?}"),
    }
    let exited = Process::new(exits, 3).unwrap().start().unwrap();
    assert!(matches!(
        exited.join(),
        Err(Error::WorkerLost { exitcode: 3, .. })
    ));
    let killed = Process::new(sleeps, 60_000).unwrap().start().unwrap();
    killed.kill().unwrap();
    assert!(matches!(
        killed.join(),
        Err(Error::WorkerLost { exitcode: -9, .. })
    ));
    let forked = Process::fork(|| -> u8 { panic!("in the fork") })
        .start()
        .unwrap();
    assert!(
        matches!(forked.join(), Err(Error::Panicked { message, .. }) if message == "in the fork")
    );
}

#[test]
fn lifecycle_after_exit_is_harmless() {
    // CPython: terminate after the exit is a no-op; join again returns at once. Starting
    // twice or waiting before start cannot be written: start consumes the builder.
    let mut p = Process::new(worker, "x".to_string())
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(p.wait().unwrap(), pool_api::ExitStatus::Code(0));
    assert_eq!(p.wait().unwrap(), pool_api::ExitStatus::Code(0));
    p.terminate().unwrap();
    p.kill().unwrap();
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn exitcodes_follow_python() {
    // CPython _TestProcess.test_process / test_terminate: exitcode is -SIGTERM after terminate.
    let mut panicking = Process::new(panics, ()).unwrap().start().unwrap();
    let mut exiting = Process::new(exits, 3).unwrap().start().unwrap();
    let mut terminated = Process::new(sleeps, 60_000).unwrap().start().unwrap();
    let mut killed = Process::new(sleeps, 60_000).unwrap().start().unwrap();
    assert!(terminated.is_alive());
    assert_eq!(
        terminated.wait_timeout(Duration::from_millis(50)).unwrap(),
        None
    );
    terminated.terminate().unwrap();
    killed.kill().unwrap();
    for p in [&mut panicking, &mut exiting, &mut terminated, &mut killed] {
        assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
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
    let mut child = Process::new(panics, ()).unwrap().start().unwrap();
    child.wait().unwrap();
    std::process::exit(child.exitcode().unwrap_or(-1));
}

#[test]
fn a_panicking_target_exits_with_1_and_its_message_on_stderr() {
    // CPython: an exception in the target prints its traceback to stderr, exitcode 1.
    let dir = scratch();
    let path = dir.path().join("stderr");
    let mut middle = Process::new(panics_with_stderr_in, path.clone())
        .unwrap()
        .start()
        .unwrap();
    assert!(middle.wait_timeout(GENEROUS).unwrap().is_some());
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
        .with_name("writer")
        .start()
        .unwrap();
    assert_eq!(named.name(), "writer");
    let mut unnamed = Process::new(sleeps, 300).unwrap().start().unwrap();
    assert!(unnamed.name().starts_with("Process-"), "{}", unnamed.name());
    let active: Vec<u32> = active_children().iter().map(|p| p.pid).collect();
    assert!(active.contains(&unnamed.pid()));
    named.wait().unwrap();
    unnamed.wait().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "writer");
    let active: Vec<u32> = active_children().iter().map(|p| p.pid).collect();
    assert!(!active.contains(&unnamed.pid()));
}

/// Starts a child that writes a file after 300 ms and drops its handle at once, then
/// returns: the program's exit must wait for it (non-daemon) or terminate it (daemon).
fn abandons_a_child((path, daemon): (PathBuf, bool)) {
    let child = Process::new(write_name, (path, 300))
        .unwrap()
        .daemon(daemon)
        .start()
        .unwrap();
    drop(child);
}

#[test]
fn exit_waits_for_non_daemon_children_and_terminates_daemons() {
    // seed 002: ten Processes started and never joined still all print.
    let dir = scratch();
    for daemon in [false, true] {
        let path = dir.path().join(format!("daemon-{daemon}"));
        let mut middle = Process::new(abandons_a_child, (path.clone(), daemon))
            .unwrap()
            .start()
            .unwrap();
        let t = Instant::now();
        assert!(middle.wait_timeout(GENEROUS).unwrap().is_some());
        assert_eq!(middle.exitcode(), Some(0));
        eprintln!("daemon={daemon}: parent exited after {:?}", t.elapsed());
        assert_eq!(path.exists(), !daemon, "daemon={daemon}");
    }
}

/// As [`abandons_a_child`] (non-daemon), after opting out of the exit-time wait.
fn abandons_a_child_without_waiting(path: PathBuf) {
    pool_api::set_exit_waits_for_children(false);
    abandons_a_child((path, false));
}

#[test]
fn the_exit_time_wait_can_be_turned_off() {
    let dir = scratch();
    let path = dir.path().join("not-waited-for");
    let mut middle = Process::new(abandons_a_child_without_waiting, path.clone())
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(
        middle.wait_timeout(GENEROUS).unwrap(),
        Some(pool_api::ExitStatus::Code(0))
    );
    // The child would have written after 300 ms; terminated at the exit, it never does.
    std::thread::sleep(Duration::from_millis(600));
    assert!(!path.exists(), "the child outlived its parent's exit");
}

/// Starts short-lived children, drops their handles, and exits 0 only if none is left as a
/// zombie once they are done.
fn churns(_: ()) {
    for _ in 0..8 {
        drop(Process::new(sleeps, 10).unwrap().start().unwrap());
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
    let mut p = Process::new(churns, ()).unwrap().start().unwrap();
    p.wait().unwrap();
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
    let mut panicking = forkserver(Process::new(panics, ()).unwrap())
        .start()
        .unwrap();
    let mut exiting = forkserver(Process::new(exits, 3).unwrap()).start().unwrap();
    let mut killed = forkserver(Process::new(sleeps, 60_000).unwrap())
        .start()
        .unwrap();
    killed.kill().unwrap();
    for p in [&mut panicking, &mut exiting, &mut killed] {
        assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
    }
    assert_eq!(panicking.exitcode(), Some(1));
    assert_eq!(exiting.exitcode(), Some(3));
    assert_eq!(killed.exitcode(), Some(-9));
    // Names, and handles in the arguments.
    let dir = scratch();
    let path = dir.path().join("name");
    let mut named = forkserver(Process::new(write_name, (path.clone(), 0)).unwrap())
        .with_name("fs")
        .start()
        .unwrap();
    named.wait().unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "fs");
    let queue: Queue<u32> = Queue::new().unwrap();
    let mut sender = forkserver(Process::new(sends_its_pid, queue.clone()).unwrap())
        .start()
        .unwrap();
    assert_eq!(queue.get_timeout(GENEROUS).unwrap(), sender.pid());
    sender.wait().unwrap();
    assert_eq!(sender.exitcode(), Some(0));
    // A forked closure has no start method to choose.
    let forked = Process::fork(|| {}).start_method(StartMethod::Spawn);
    assert!(matches!(forked.start(), Err(Error::InvalidArgument(_))));
}

fn panics_with_a_backtrace(_: ()) -> u32 {
    panic!("deliberate panic to carry a backtrace")
}

/// In a child of its own (so that the environment can be changed before any other thread
/// starts): a pool whose workers run with `RUST_BACKTRACE=1` carries the worker's backtrace
/// to the caller's error.
fn pool_error_carries_the_workers_backtrace(_: ()) -> Option<String> {
    // SAFETY: this child process runs only this function, and has started no thread of its
    // own that reads the environment yet.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let pool = pool_api::Pool::new(1).unwrap();
    match pool.apply(panics_with_a_backtrace, ()) {
        Err(e @ Error::Panicked { .. }) => Some(e.to_string()),
        _ => None,
    }
}

#[test]
fn a_workers_panic_carries_its_backtrace_when_rust_backtrace_is_set() {
    // CPython carries the remote traceback as the exception's cause.
    let shown = Process::new(pool_error_carries_the_workers_backtrace, ())
        .unwrap()
        .start()
        .unwrap()
        .join()
        .unwrap()
        .expect("a Panicked error");
    assert!(shown.contains("worker backtrace:"), "{shown}");
    assert!(shown.contains("panics_with_a_backtrace"), "{shown}");
}

fn segfaults(_: ()) {
    // SAFETY: raising a signal is sound; the default action of SIGSEGV ends the process.
    unsafe { libc::raise(libc::SIGSEGV) };
}

/// In a child of its own: this program ignores SIGCHLD (as some daemons do), so the kernel
/// reaps its children at once. What a `Process` and a `Pool` report then, as
/// `(wait, is_alive, exitcode, the pool's error for a segfaulted worker)`.
fn with_sigchld_ignored(_: ()) -> (String, bool, Option<i32>, String) {
    // SAFETY: setting a signal's disposition to SIG_IGN is sound.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut child = Process::new(exits, 3).unwrap().start().unwrap();
    let status = child
        .wait()
        .map(|s| s.to_string())
        .unwrap_or_else(|e| e.to_string());
    let alive = child.is_alive();
    let exitcode = child.exitcode();
    let pool = pool_api::Pool::new(1).unwrap();
    let crashed = pool.apply(segfaults, ()).unwrap_err().to_string();
    (status, alive, exitcode, crashed)
}

#[test]
fn exit_statuses_do_not_depend_on_sigchld_being_ignored() {
    let (status, alive, exitcode, crashed) = Process::new(with_sigchld_ignored, ())
        .unwrap()
        .start()
        .unwrap()
        .join()
        .unwrap();
    // The exit is seen (pidfd); the status is gone, and said to be: not an error.
    assert_eq!(status, pool_api::ExitStatus::Unknown.to_string());
    assert!(!alive);
    assert_eq!(exitcode, None);
    // A pool's workers come from the forkserver there, which relays how each exited.
    assert!(crashed.contains("exitcode -11"), "{crashed}");
}
