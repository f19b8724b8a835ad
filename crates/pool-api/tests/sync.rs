//! Locks, semaphores and events across real processes. Ported behaviours name their source:
//! CPython's `Lib/test/_test_multiprocessing.py` (`_TestLock`, `_TestSemaphore`, `_TestEvent`)
//! and seed 002.

#![allow(clippy::print_stderr)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pool_api::{
    BoundedSemaphore, Event, Lock, Process, ProcessHandle, RLock, Semaphore, SyncError,
};

const GENEROUS: Duration = Duration::from_secs(20);

/// Under the lock: read a counter from a file, add one, write it back (a race without the
/// lock), `rounds` times; and append a line, like seed 002's print under a lock.
fn increment((lock, path, i, rounds): (Lock, PathBuf, u32, u32)) {
    for _ in 0..rounds {
        let _guard = lock.lock().unwrap();
        let n: u32 = std::fs::read_to_string(&path)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::fs::write(&path, (n + 1).to_string()).unwrap();
    }
    let _guard = lock.lock().unwrap();
    let log = path.with_extension("log");
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&format!("hello world {i}\n"));
    std::fs::write(log, text).unwrap();
}

#[test]
fn ten_processes_under_one_lock_lose_no_update() {
    // seed 002: for num in range(10): Process(target=f_lock, args=(lock, num)).start()
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counter");
    std::fs::write(&path, "0").unwrap();
    let lock = Lock::new().unwrap();
    let ps: Vec<Process> = (0..10)
        .map(|i| Process::new(increment, (lock.clone(), path.clone(), i, 30)).unwrap())
        .collect();
    let mut ps: Vec<ProcessHandle> = ps.into_iter().map(|p| p.start().unwrap()).collect();
    for p in &mut ps {
        p.wait().unwrap();
        assert_eq!(p.exitcode(), Some(0));
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "300");
    let mut lines: Vec<String> = std::fs::read_to_string(path.with_extension("log"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("hello world {i}")).collect();
    want.sort();
    assert_eq!(lines, want);
}

#[test]
fn lock_semantics_follow_python() {
    // CPython _TestLock.test_lock: acquire, non-blocking acquire fails, release twice errors.
    let lock = Lock::new().unwrap();
    let held = lock.acquire().unwrap();
    assert_eq!(held.previous_owner_died, None);
    assert_eq!(lock.try_acquire(), Err(SyncError::WouldBlock));
    let t = Instant::now();
    assert_eq!(
        lock.acquire_timeout(Duration::from_millis(60)),
        Err(SyncError::Timeout)
    );
    assert!(t.elapsed() >= Duration::from_millis(60));
    // No owner: another thread may release it.
    let other = lock.clone();
    std::thread::spawn(move || other.release().unwrap())
        .join()
        .unwrap();
    assert_eq!(lock.release(), Err(SyncError::NotLocked));
}

#[test]
fn rlock_is_reentrant_for_its_owner_only() {
    // CPython _TestLock.test_rlock.
    let lock = RLock::new().unwrap();
    let _ = lock.acquire().unwrap();
    let _ = lock.acquire().unwrap();
    let _ = lock.try_acquire().unwrap();
    let other = lock.clone();
    let from_other_thread = std::thread::spawn(move || (other.try_acquire(), other.release()))
        .join()
        .unwrap();
    assert_eq!(
        from_other_thread,
        (Err(SyncError::WouldBlock), Err(SyncError::NotOwner))
    );
    for _ in 0..3 {
        lock.release().unwrap();
    }
    assert_eq!(lock.release(), Err(SyncError::NotOwner));
    let other = lock.clone();
    std::thread::spawn(move || {
        let _ = other.try_acquire().unwrap();
        other.release().unwrap();
    })
    .join()
    .unwrap();
}

fn take_one_unit_and_die(sem: Semaphore) {
    sem.acquire().unwrap();
    std::process::exit(0);
}

fn wait_then_report((event, done): (Event, Event)) {
    if event.wait_timeout(GENEROUS).unwrap() {
        done.set();
    }
}

#[test]
fn semaphores_count_across_processes() {
    // CPython _TestSemaphore.test_semaphore / test_bounded_semaphore.
    let sem = Semaphore::new(2).unwrap();
    sem.acquire().unwrap();
    assert_eq!(sem.value(), 1);
    let mut p = Process::new(take_one_unit_and_die, sem.clone())
        .unwrap()
        .start()
        .unwrap();
    p.wait().unwrap();
    // No owner: a unit taken by a process that exits is gone, as in Python.
    assert_eq!(sem.value(), 0);
    assert_eq!(sem.try_acquire(), Err(SyncError::WouldBlock));
    assert_eq!(
        sem.acquire_timeout(Duration::from_millis(30)),
        Err(SyncError::Timeout)
    );
    sem.release().unwrap();
    sem.acquire_timeout(GENEROUS).unwrap();
    let zero = BoundedSemaphore::new(0).unwrap();
    assert_eq!(
        zero.release(),
        Err(SyncError::TooManyReleases),
        "a bound of 0 is a bound"
    );
    let bounded = BoundedSemaphore::new(1).unwrap();
    assert_eq!(bounded.release(), Err(SyncError::TooManyReleases));
    bounded.acquire().unwrap();
    bounded.release().unwrap();
    assert_eq!(bounded.value(), 1);
}

#[test]
fn an_event_wakes_a_waiting_process() {
    // CPython _TestEvent.test_event.
    let event = Event::new().unwrap();
    let done = Event::new().unwrap();
    assert!(!event.is_set());
    let t = Instant::now();
    assert!(!event.wait_timeout(Duration::from_millis(40)).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(40));
    let mut p = Process::new(wait_then_report, (event.clone(), done.clone()))
        .unwrap()
        .start()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    event.set();
    assert!(done.wait_timeout(GENEROUS).unwrap());
    p.wait().unwrap();
    event.clear();
    assert!(!event.is_set());
}

fn wait_on_condition(
    (cond, ready, out, i): (pool_api::Condition, Semaphore, pool_api::Queue<u32>, u32),
) {
    let _ = cond.acquire().unwrap();
    ready.release().unwrap();
    // Spurious wake-ups are allowed: wait until notified at least once.
    assert!(cond.wait_timeout(GENEROUS).unwrap());
    out.put(i).unwrap();
    cond.release().unwrap();
}

#[test]
fn condition_notify_and_notify_all_wake_waiting_processes() {
    // CPython _TestCondition.test_notify / test_notify_all.
    let cond = pool_api::Condition::new().unwrap();
    let ready = Semaphore::new(0).unwrap();
    let out = pool_api::Queue::new().unwrap();
    let mut ps: Vec<ProcessHandle> = (0..3)
        .map(|i| {
            Process::new(
                wait_on_condition,
                (cond.clone(), ready.clone(), out.clone(), i),
            )
            .unwrap()
        })
        .map(|p| p.start().unwrap())
        .collect();
    for _ in 0..3 {
        ready.acquire_timeout(GENEROUS).unwrap();
    }
    // Every child released the lock inside `wait` before we can take it.
    let _ = cond.acquire().unwrap();
    cond.notify(1).unwrap();
    cond.release().unwrap();
    let first = out.get_timeout(GENEROUS).unwrap();
    let _ = cond.acquire().unwrap();
    cond.notify_all().unwrap();
    cond.release().unwrap();
    let mut all = vec![first];
    for _ in 0..2 {
        all.push(out.get_timeout(GENEROUS).unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, [0, 1, 2]);
    for p in &mut ps {
        p.wait().unwrap();
        assert_eq!(p.exitcode(), Some(0));
    }
}

/// Three threads take `cond`'s lock and run `waits` (which waits on `cond`); once all three
/// wait, `notify` runs with the lock held. What each thread's `waits` returned.
fn three_waiters<T: Send>(
    cond: &pool_api::Condition,
    waits: impl Fn() -> T + Sync,
    notify: impl FnOnce(),
) -> Vec<T> {
    let entered = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let _ = cond.acquire().unwrap();
                    entered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let out = waits();
                    cond.release().unwrap();
                    out
                })
            })
            .collect();
        while entered.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            std::thread::yield_now();
        }
        // Every waiter released the lock inside `wait` before we can take it.
        let _ = cond.acquire().unwrap();
        notify();
        cond.release().unwrap();
        waiters.into_iter().map(|w| w.join().unwrap()).collect()
    })
}

#[test]
fn condition_notify_n_wakes_exactly_n_of_the_waiters() {
    // CPython _TestCondition.test_notify_n: notify(n) wakes n waiters, not more; the others
    // time out (wait returns false), also those whose timeout ends after a notify that was
    // not theirs.
    let cond = pool_api::Condition::new().unwrap();
    for n in [1, 2] {
        let woke = three_waiters(
            &cond,
            || cond.wait_timeout(Duration::from_millis(800)).unwrap(),
            || cond.notify(n).unwrap(),
        );
        assert_eq!(woke.iter().filter(|w| **w).count(), n as usize, "{woke:?}");
    }
}

#[test]
fn condition_a_waiter_back_at_once_does_not_take_anothers_wake_up() {
    // The round pattern: woken by notify_all, each waiter does its round and waits again at
    // once. The first back must not take the wake-up of one that has not run yet (which then
    // would sleep through its own notify).
    let cond = pool_api::Condition::new().unwrap();
    for _ in 0..20 {
        let first_waits = three_waiters(
            &cond,
            || {
                let first = cond.wait_timeout(GENEROUS).unwrap();
                let _again = cond.wait_timeout(Duration::from_millis(20)).unwrap();
                first
            },
            || cond.notify_all().unwrap(),
        );
        assert_eq!(first_waits, [true, true, true]);
    }
}

fn waits_once((cond, ready, out): (pool_api::Condition, Semaphore, pool_api::Queue<bool>)) {
    let _ = cond.acquire().unwrap();
    ready.release().unwrap();
    let woke = cond.wait_timeout(Duration::from_secs(10)).unwrap();
    out.put(woke).unwrap();
    cond.release().unwrap();
}

#[test]
fn condition_a_later_notify_does_not_hand_an_earlier_ones_wake_up_to_others() {
    // B is woken by notify_all but has not run (stopped) when A, woken with it, waits again,
    // C starts waiting, and notify(1) comes: A and C must not take B's wake-up between them.
    let cond = pool_api::Condition::new().unwrap();
    let (ready, out) = (Semaphore::new(0).unwrap(), pool_api::Queue::new().unwrap());
    let mut b = Process::new(waits_once, (cond.clone(), ready.clone(), out.clone()))
        .unwrap()
        .start()
        .unwrap();
    ready.acquire_timeout(GENEROUS).unwrap();
    let b_pid = b.pid() as libc::pid_t;
    let flag = |f: &std::sync::atomic::AtomicBool| f.load(std::sync::atomic::Ordering::SeqCst);
    let (a_rewaits, c_waits) = (
        std::sync::atomic::AtomicBool::new(false),
        std::sync::atomic::AtomicBool::new(false),
    );
    std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            let _ = cond.acquire().unwrap();
            ready.release().unwrap();
            let first = cond.wait_timeout(GENEROUS).unwrap();
            a_rewaits.store(true, std::sync::atomic::Ordering::SeqCst);
            let _again = cond.wait_timeout(Duration::from_millis(300)).unwrap();
            cond.release().unwrap();
            first
        });
        ready.acquire_timeout(GENEROUS).unwrap();
        // Both wait once we hold the lock. Stop B, wake both.
        let _ = cond.acquire().unwrap();
        // SAFETY: a plain signal to our own live child.
        assert_eq!(unsafe { libc::kill(b_pid, libc::SIGSTOP) }, 0);
        cond.notify_all().unwrap();
        cond.release().unwrap();
        while !flag(&a_rewaits) {
            std::thread::yield_now();
        }
        let c = scope.spawn(|| {
            let _ = cond.acquire().unwrap();
            c_waits.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = cond.wait_timeout(Duration::from_millis(300)).unwrap();
            cond.release().unwrap();
        });
        while !flag(&c_waits) {
            std::thread::yield_now();
        }
        // A and C wait (again) once we hold the lock.
        let _ = cond.acquire().unwrap();
        cond.notify(1).unwrap();
        cond.release().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(b_pid, libc::SIGCONT) }, 0);
        assert!(a.join().unwrap());
        c.join().unwrap();
    });
    assert!(
        out.get_timeout(GENEROUS).unwrap(),
        "B was woken by its notify_all"
    );
    b.wait().unwrap();
}

fn holds_lock((lock, ready): (Lock, Semaphore)) {
    let _held = lock.acquire().unwrap();
    ready.release().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_condition_over_a_lock_another_process_holds_is_not_ours_to_notify() {
    // CPython: notify on a Condition whose lock is not ours raises.
    let lock = Lock::new().unwrap();
    let cond = pool_api::Condition::with_lock(lock.clone()).unwrap();
    let ready = Semaphore::new(0).unwrap();
    let mut holder = Process::new(holds_lock, (lock, ready.clone()))
        .unwrap()
        .start()
        .unwrap();
    ready.acquire_timeout(GENEROUS).unwrap();
    assert_eq!(cond.notify(1), Err(SyncError::NotOwner));
    assert_eq!(
        cond.wait_timeout(Duration::from_millis(1)),
        Err(SyncError::NotOwner)
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn condition_misuse_and_timeouts() {
    let cond = pool_api::Condition::with_lock(Lock::new().unwrap()).unwrap();
    assert_eq!(
        cond.wait_timeout(Duration::from_millis(10)),
        Err(SyncError::NotOwner)
    );
    assert_eq!(cond.notify(1), Err(SyncError::NotOwner));
    let _ = cond.acquire().unwrap();
    // A plain Lock has no owner: taking it again waits, as CPython's.
    assert_eq!(cond.try_acquire(), Err(SyncError::WouldBlock));
    assert_eq!(
        cond.acquire_timeout(Duration::from_millis(10)),
        Err(SyncError::Timeout)
    );
    let t = Instant::now();
    assert_eq!(cond.wait_timeout(Duration::from_millis(40)), Ok(false));
    assert!(t.elapsed() >= Duration::from_millis(40));
    let mut calls = 0;
    assert_eq!(
        cond.wait_for_timeout(
            || {
                calls += 1;
                calls > 2
            },
            Duration::from_millis(200)
        ),
        Ok(true)
    );
    assert_eq!(
        cond.wait_for_timeout(|| false, Duration::from_millis(30)),
        Ok(false)
    );
    cond.wait_for(|| true).unwrap();
    cond.release().unwrap();
    let _ = cond.try_acquire().unwrap();
    cond.release().unwrap();
    let _ = cond.acquire_timeout(Duration::from_millis(10)).unwrap();
    cond.release().unwrap();
}

fn arrive((barrier, out): (pool_api::Barrier, pool_api::Queue<u32>)) {
    out.put(barrier.wait_timeout(GENEROUS).unwrap()).unwrap();
}

#[test]
fn barrier_releases_all_parties_with_distinct_indices() {
    // CPython _TestBarrier.test_barrier.
    let barrier = pool_api::Barrier::new(4).unwrap();
    let out = pool_api::Queue::new().unwrap();
    let mut ps: Vec<ProcessHandle> = (0..3)
        .map(|_| Process::new(arrive, (barrier.clone(), out.clone())).unwrap())
        .map(|p| p.start().unwrap())
        .collect();
    let mine = barrier.wait_timeout(GENEROUS).unwrap();
    let mut indices: Vec<u32> = (0..3).map(|_| out.get_timeout(GENEROUS).unwrap()).collect();
    indices.push(mine);
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2, 3]);
    for p in &mut ps {
        p.wait().unwrap();
    }
    assert_eq!(barrier.n_waiting(), 0);
    assert_eq!(barrier.parties(), 4);
}

static ACTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_action() {
    ACTIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

#[test]
fn barrier_action_timeout_abort_and_reset() {
    // CPython _TestBarrier.test_action / test_timeout / test_abort / test_reset.
    assert!(matches!(
        pool_api::Barrier::new(0),
        Err(SyncError::InvalidArgument(_))
    ));
    let barrier = pool_api::Barrier::with_action(2, count_action).unwrap();
    for _ in 0..3 {
        let other = barrier.clone();
        let t = std::thread::spawn(move || other.wait_timeout(GENEROUS));
        barrier.wait_timeout(GENEROUS).unwrap();
        t.join().unwrap().unwrap();
    }
    assert_eq!(
        ACTIONS.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the action runs once per round"
    );

    let lonely = pool_api::Barrier::new(2).unwrap();
    assert_eq!(
        lonely.wait_timeout(Duration::from_millis(30)),
        Err(SyncError::BrokenBarrier)
    );
    assert!(lonely.broken());
    assert_eq!(
        lonely.wait_timeout(Duration::from_millis(30)),
        Err(SyncError::BrokenBarrier)
    );
    lonely.reset().unwrap();
    assert!(!lonely.broken());
    let other = lonely.clone();
    let waiter = std::thread::spawn(move || other.wait_timeout(GENEROUS));
    while lonely.n_waiting() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    lonely.abort().unwrap();
    assert_eq!(waiter.join().unwrap(), Err(SyncError::BrokenBarrier));
}
