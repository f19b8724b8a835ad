//! The `fork` and `forkserver` start methods through pool-api: `Process::fork` with closures
//! that capture handles, and pools whose workers come from the forkserver.
//!
//! Every wait is bounded; tests print what they measured.

#![allow(clippy::print_stderr)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pool_api::{
    Error, Lock, Pipe, Pool, Process, Queue, RLock, StartMethod, active_children, current_process,
};

const GENEROUS: Duration = Duration::from_secs(10);

/// The parent pid of `pid`, from `/proc`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// Process::fork
// ---------------------------------------------------------------------------------------

#[test]
fn a_forked_closure_uses_a_captured_queue_and_lock() {
    let queue: Queue<String> = Queue::new().unwrap();
    let lock = Lock::new().unwrap();
    let rlock = RLock::new().unwrap();
    let (q, l, r) = (queue.clone(), lock.clone(), rlock.clone());
    let prefix = String::from("captured");
    // The parent holds both locks: the child must wait for them, across processes. (An
    // RLock that took the child for its parent, whose identity it was copied with, would let
    // it in at once.)
    let held = lock.lock().unwrap();
    let _owned = rlock.acquire().unwrap();
    let mut p = Process::fork(move || {
        let r_free = r.try_acquire().is_ok();
        q.put(format!("{prefix}: waiting, rlock free: {r_free}"))
            .unwrap();
        let _guard = l.lock().unwrap();
        let _acquired = r.acquire().unwrap();
        let _again = r.acquire().unwrap();
        q.put(format!("{prefix}: {}", current_process().name))
            .unwrap();
        r.release().unwrap();
        r.release().unwrap();
    })
    .with_name("forked-with-handles");
    let t = Instant::now();
    p.start().unwrap();
    eprintln!("Process::fork started in {:?}", t.elapsed());
    assert_eq!(
        queue.get_timeout(GENEROUS).unwrap(),
        "captured: waiting, rlock free: false"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(queue.empty(), "the child took a lock its parent holds");
    drop(held);
    rlock.release().unwrap();
    assert_eq!(
        queue.get_timeout(GENEROUS).unwrap(),
        "captured: forked-with-handles"
    );
    assert_eq!(p.join_timeout(GENEROUS), Ok(true));
    assert_eq!(p.exitcode(), Some(0));
    // The parent's handles still work after the child's copies are gone.
    drop(lock.lock().unwrap());
    let _acquired = rlock.acquire().unwrap();
    rlock.release().unwrap();
}

#[test]
fn a_forked_closure_uses_a_captured_pipe_end() {
    let (mut ours, mut theirs) = Pipe::duplex().unwrap();
    let mut p = Process::fork(move || {
        let n: u64 = theirs.recv().unwrap();
        theirs.send(&(n * 2)).unwrap();
    });
    p.start().unwrap();
    ours.send(&21u64).unwrap();
    assert_eq!(ours.recv::<u64>().unwrap(), 42);
    assert_eq!(p.join_timeout(GENEROUS), Ok(true));
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn forked_processes_have_python_exit_codes() {
    let mut ok = Process::fork(|| {});
    let mut panics = Process::fork(|| panic!("deliberate panic in a forked Process"));
    let mut exits = Process::fork(|| std::process::exit(3));
    for p in [&mut ok, &mut panics, &mut exits] {
        p.start().unwrap();
    }
    for p in [&mut ok, &mut panics, &mut exits] {
        assert_eq!(p.join_timeout(GENEROUS), Ok(true));
    }
    assert_eq!(
        (ok.exitcode(), panics.exitcode(), exits.exitcode()),
        (Some(0), Some(1), Some(3))
    );
}

#[test]
fn a_forked_process_has_the_whole_process_lifecycle() {
    let mut p = Process::fork(|| std::thread::sleep(Duration::from_secs(600)));
    assert!(p.name().starts_with("Process-"));
    assert_eq!((p.pid(), p.exitcode(), p.is_alive()), (None, None, false));
    assert!(matches!(p.join(), Err(Error::InvalidArgument(_))));
    p.start().unwrap();
    assert!(matches!(p.start(), Err(Error::InvalidArgument(_))));
    let pid = p.pid().unwrap();
    assert!(p.is_alive());
    assert!(
        active_children()
            .iter()
            .any(|c| c.pid == pid && c.name == p.name())
    );
    assert_eq!(p.join_timeout(Duration::from_millis(50)), Ok(false));
    p.terminate().unwrap();
    assert_eq!(p.join_timeout(GENEROUS), Ok(true));
    assert_eq!(p.exitcode(), Some(-libc::SIGTERM));
    assert!(!active_children().iter().any(|c| c.pid == pid));

    let mut q = Process::fork(|| std::thread::sleep(Duration::from_secs(600)));
    q.start().unwrap();
    q.kill().unwrap();
    assert_eq!(q.join_timeout(GENEROUS), Ok(true));
    assert_eq!(q.exitcode(), Some(-libc::SIGKILL));
}

#[test]
fn a_forked_child_has_its_own_name_and_children() {
    // In the child: its name, no inherited children; it starts its own (spawned and forked),
    // abandons them, and its end waits for the non-daemon one, as Python's does.
    let results: Queue<String> = Queue::new().unwrap();
    let out = results.clone();
    let mut p = Process::fork(move || {
        let me = current_process();
        out.put(format!("{} {}", me.name, active_children().len()))
            .unwrap();
        let out2 = out.clone();
        let mut grandchild = Process::fork(move || {
            std::thread::sleep(Duration::from_millis(300));
            out2.put("grandchild done".into()).unwrap();
        })
        .with_name("grandchild");
        grandchild.start().unwrap();
        let names: Vec<String> = active_children().into_iter().map(|c| c.name).collect();
        out.put(names.join(",")).unwrap();
        drop(grandchild);
    })
    .with_name("middle");
    p.start().unwrap();
    assert_eq!(results.get_timeout(GENEROUS).unwrap(), "middle 0");
    assert_eq!(results.get_timeout(GENEROUS).unwrap(), "grandchild");
    assert_eq!(p.join_timeout(GENEROUS), Ok(true));
    // The middle's end waited for its non-daemon grandchild.
    assert_eq!(results.try_get().unwrap(), "grandchild done");
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(current_process().name, "MainProcess");
}

#[test]
fn many_forked_processes_start_and_join() {
    let counter: Queue<u32> = Queue::new().unwrap();
    let t = Instant::now();
    let mut ps: Vec<Process> = (0..16)
        .map(|i| {
            let q = counter.clone();
            let mut p = Process::fork(move || q.put(i).unwrap());
            p.start().unwrap();
            p
        })
        .collect();
    for p in &mut ps {
        assert_eq!(p.join_timeout(GENEROUS), Ok(true));
        assert_eq!(p.exitcode(), Some(0));
    }
    eprintln!(
        "16 forked processes started and joined in {:?}",
        t.elapsed()
    );
    let mut got: Vec<u32> = (0..16).map(|_| counter.try_get().unwrap()).collect();
    got.sort();
    assert_eq!(got, (0..16).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Pool with the forkserver
// ---------------------------------------------------------------------------------------

fn forkserver_pool(n: usize) -> pool_api::PoolBuilder {
    Pool::builder()
        .processes(n)
        .start_method(StartMethod::Forkserver)
}

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn worker_name(_: ()) -> String {
    current_process().name
}

fn dies(how: String) -> String {
    match how.as_str() {
        "abort" => std::process::abort(),
        "exit" => std::process::exit(3),
        "sigkill" => {
            // SAFETY: signalling ourselves.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!()
        }
        _ => how,
    }
}

#[test]
fn a_forkserver_pool_maps_in_order() {
    let t = Instant::now();
    let pool = forkserver_pool(3).build().unwrap();
    let squares = pool.map(square, 0..200u64).unwrap();
    eprintln!("forkserver pool built and mapped in {:?}", t.elapsed());
    assert_eq!(squares, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    let me = std::process::id();
    for worker in pool.worker_pids() {
        assert_ne!(
            parent_of(worker),
            me,
            "workers are the forkserver's children"
        );
    }
    let names: std::collections::BTreeSet<String> = (0..30)
        .map(|_| pool.apply(worker_name, ()).unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n.starts_with("PoolWorker-")),
        "{names:?}"
    );
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_forkserver_worker_that_dies_is_reported_and_replaced() {
    let pool = forkserver_pool(2).build().unwrap();
    for (how, exitcode) in [("sigkill", -9), ("abort", -6), ("exit", 3)] {
        let crash = pool.apply_async(dies, how.to_string()).unwrap();
        let fine = pool.apply_async(dies, "fine".to_string()).unwrap();
        match crash.get() {
            Err(Error::WorkerLost { exitcode: code, .. }) => assert_eq!(code, exitcode, "{how}"),
            other => panic!("{how}: expected worker lost, got {other:?}"),
        }
        assert_eq!(fine.get().unwrap(), "fine");
    }
    let t = Instant::now();
    while pool.worker_pids().len() < 2 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.worker_pids().len(), 2);
    assert_eq!(pool.map(square, 0..50).unwrap().len(), 50);
    assert_eq!(pool.stats().lost, 3);
}

#[test]
fn a_forkserver_pool_enforces_time_limits() {
    fn sleep_ms(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }
    let pool = forkserver_pool(1)
        .time_limit(Duration::from_millis(200))
        .build()
        .unwrap();
    let first = pool.apply(pid, ()).unwrap();
    let r = pool.apply(sleep_ms, 5_000);
    assert!(
        matches!(r, Err(Error::TimedOut { pid, .. }) if pid == first),
        "{r:?}"
    );
    assert_ne!(
        pool.apply(pid, ()).unwrap(),
        first,
        "the worker was replaced"
    );
}

static INITIALIZED: AtomicUsize = AtomicUsize::new(0);

fn remember_init(_: ()) {
    INITIALIZED.fetch_add(1, Ordering::SeqCst);
}

fn pid_if_initialized(_: ()) -> u32 {
    assert_eq!(INITIALIZED.load(Ordering::SeqCst), 1);
    std::process::id()
}

#[test]
fn a_forkserver_pool_replaces_workers_after_maxtasksperchild() {
    let pool = forkserver_pool(2)
        .max_tasks_per_child(2)
        .initializer(remember_init, ())
        .build()
        .unwrap();
    let t = Instant::now();
    let pids: Vec<u32> = (0..12)
        .map(|_| pool.apply(pid_if_initialized, ()).unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<u32> = pids.iter().copied().collect();
    eprintln!(
        "12 tasks, maxtasksperchild 2, forkserver: {} distinct workers in {:?}",
        distinct.len(),
        t.elapsed()
    );
    assert!(distinct.len() >= 6, "workers were not replaced: {pids:?}");
}

#[test]
fn a_forkserver_pool_over_shared_memory() {
    let pool = forkserver_pool(2)
        .transport(pool_api::TransportKind::Shm)
        .build()
        .unwrap();
    assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    let r = pool.apply(dies, "sigkill".to_string());
    assert!(
        matches!(r, Err(Error::WorkerLost { exitcode: -9, .. })),
        "{r:?}"
    );
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
}
