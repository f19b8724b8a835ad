//! The `fork` start method through pool-api: `Process::fork` with closures that capture
//! handles. Pools whose workers come from the forkserver run the whole `Pool` suite in
//! `tests/pool.rs` (its matrix of start methods and transports).
//!
//! Every wait is bounded; tests print what they measured.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use pool_api::{
    Lock, Pipe, Process, ProcessHandle, Queue, RLock, active_children, current_process,
};

const GENEROUS: Duration = Duration::from_secs(10);

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
    let p = Process::fork(move || {
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
    let mut p = p.start().unwrap();
    eprintln!("Process::fork started in {:?}", t.elapsed());
    assert_eq!(
        queue.get_timeout(GENEROUS).unwrap(),
        "captured: waiting, rlock free: false"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(queue.is_empty(), "the child took a lock its parent holds");
    drop(held);
    rlock.release().unwrap();
    assert_eq!(
        queue.get_timeout(GENEROUS).unwrap(),
        "captured: forked-with-handles"
    );
    assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
    assert_eq!(p.exitcode(), Some(0));
    // The parent's handles still work after the child's copies are gone.
    drop(lock.lock().unwrap());
    let _acquired = rlock.acquire().unwrap();
    rlock.release().unwrap();
}

#[test]
fn a_forked_closure_uses_a_captured_pipe_end() {
    let (mut ours, mut theirs) = Pipe::duplex().unwrap();
    let p = Process::fork(move || {
        let n: u64 = theirs.recv().unwrap();
        theirs.send(&(n * 2)).unwrap();
    });
    let mut p = p.start().unwrap();
    ours.send(&21u64).unwrap();
    assert_eq!(ours.recv::<u64>().unwrap(), 42);
    assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn forked_processes_have_python_exit_codes() {
    let mut ok = Process::fork(|| {}).start().unwrap();
    let mut panics = Process::fork(|| panic!("deliberate panic in a forked Process"))
        .start()
        .unwrap();
    let mut exits = Process::fork(|| std::process::exit(3)).start().unwrap();
    for p in [&mut ok, &mut panics, &mut exits] {
        assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
    }
    assert_eq!(
        (ok.exitcode(), panics.exitcode(), exits.exitcode()),
        (Some(0), Some(1), Some(3))
    );
}

#[test]
fn a_forked_process_has_the_whole_process_lifecycle() {
    let p = Process::fork(|| std::thread::sleep(Duration::from_secs(600)));
    assert!(p.name().starts_with("Process-"));
    let mut p = p.start().unwrap();
    let pid = p.pid();
    assert!(p.is_alive());
    assert!(
        active_children()
            .iter()
            .any(|c| c.pid == pid && c.name == p.name())
    );
    assert!(p.wait_timeout(Duration::from_millis(50)).unwrap().is_none());
    p.terminate().unwrap();
    assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
    assert_eq!(p.exitcode(), Some(-libc::SIGTERM));
    assert!(!active_children().iter().any(|c| c.pid == pid));

    let mut q = Process::fork(|| std::thread::sleep(Duration::from_secs(600)))
        .start()
        .unwrap();
    q.kill().unwrap();
    assert!(q.wait_timeout(GENEROUS).unwrap().is_some());
    assert_eq!(q.exitcode(), Some(-libc::SIGKILL));
}

#[test]
fn a_forked_child_has_its_own_name_and_children() {
    // In the child: its name, no inherited children; it starts its own (spawned and forked),
    // abandons them, and its end waits for the non-daemon one, as Python's does.
    let results: Queue<String> = Queue::new().unwrap();
    let out = results.clone();
    let p = Process::fork(move || {
        let me = current_process();
        out.put(format!("{} {}", me.name, active_children().len()))
            .unwrap();
        let out2 = out.clone();
        let grandchild = Process::fork(move || {
            std::thread::sleep(Duration::from_millis(300));
            out2.put("grandchild done".into()).unwrap();
        })
        .with_name("grandchild");
        let grandchild = grandchild.start().unwrap();
        let names: Vec<String> = active_children().into_iter().map(|c| c.name).collect();
        out.put(names.join(",")).unwrap();
        drop(grandchild);
    })
    .with_name("middle");
    let mut p = p.start().unwrap();
    assert_eq!(results.get_timeout(GENEROUS).unwrap(), "middle 0");
    assert_eq!(results.get_timeout(GENEROUS).unwrap(), "grandchild");
    assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
    // The middle's end waited for its non-daemon grandchild.
    assert_eq!(results.try_get().unwrap(), "grandchild done");
    assert_eq!(p.exitcode(), Some(0));
    assert_eq!(current_process().name, "MainProcess");
}

#[test]
fn many_forked_processes_start_and_join() {
    let counter: Queue<u32> = Queue::new().unwrap();
    let t = Instant::now();
    let mut ps: Vec<ProcessHandle> = (0..16)
        .map(|i| {
            let q = counter.clone();
            Process::fork(move || q.put(i).unwrap()).start().unwrap()
        })
        .collect();
    for p in &mut ps {
        assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
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
