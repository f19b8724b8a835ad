//! A pool heals from start failures that are not its initializer's fault: a descriptor
//! shortage while a worker is replaced, workers killed during their start-up. It keeps
//! serving with the workers it has, retries with backoff, is back to full strength once the
//! OS allows, and never breaks for good. `build` fails with the start error when the initial
//! workers cannot be started, leaving no child behind.
//!
//! The descriptor limits are set in a child process (a `Process`), never in the test binary.
//! The shortage is made deterministic with descriptor *numbers*: the child first fills every
//! number below `HOG_BELOW` with `/dev/null`, then builds its pool (whose descriptors thus get
//! numbers above it), then lowers `RLIMIT_NOFILE` to `HOG_BELOW`: from then on no descriptor
//! can be created (every allowed number is taken) although the pool's own stay valid, and a
//! worker's exit frees only numbers the limit forbids. Raising the limit back ends the
//! shortage. Every wait is bounded in count and time. Each test prints a `CHAOS` line;
//! `cargo xtask chaos` sums `broken_by_transient` into "pools broken by transient failures".

use std::error::Error as _;
use std::fs::File;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pool_api::{Error, Pool, Process, ProcessHandle, Queue, Signal};
use pool_testkit::report;

/// How long anything may take before the test calls it a hang.
const WATCHDOG: Duration = Duration::from_secs(60);

/// One test at a time: the children count this process's children and descriptors.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn double(x: u64) -> u64 {
    x * 2
}

fn pid(_: u64) -> u32 {
    std::process::id()
}

/// Every descriptor number below this is taken by `/dev/null` before the pool is built.
const HOG_BELOW: u64 = 200;

fn nofile() -> libc::rlimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading this process's own limit into a valid struct.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    assert_eq!(rc, 0);
    limit
}

fn set_nofile_soft(soft: u64) {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: nofile().rlim_max,
    };
    // SAFETY: setting this process's own limit from a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Takes every free descriptor number below `below`.
fn hog_descriptors(below: u64) -> Vec<File> {
    let mut hog = Vec::new();
    for _ in 0..below {
        let file = File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file) as u64;
        hog.push(file);
        if fd + 1 >= below {
            break;
        }
    }
    hog
}

/// Waits (bounded) until `pool` has `n` distinct workers that answered a task.
fn wait_full_strength(pool: &Pool, n: usize, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut seen = std::collections::BTreeSet::new();
    while Instant::now() < deadline {
        if pool.worker_pids().len() == n {
            seen.extend(pool.map_chunked(pid, 0..4 * n as u64, 1).unwrap());
            if seen.len() >= n && seen.iter().all(|p| pool.worker_pids().contains(p)) {
                return true;
            }
            seen.clear();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Waits (bounded) until `cond` holds.
fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// The `N` figures a child test process reports, then its exit: fails at once if the child
/// dies first (a panic there), and after `WATCHDOG * 3` if it hangs.
fn figures<const N: usize>(out: &Queue<u64>, child: &mut ProcessHandle) -> [u64; N] {
    let deadline = Instant::now() + WATCHDOG * 3;
    let mut got = Vec::with_capacity(N);
    while got.len() < N {
        match out.get_timeout(Duration::from_millis(50)) {
            Ok(figure) => got.push(figure),
            Err(_) if !child.is_alive() => {
                // Figures put just before the exit are in the queue already.
                while let Ok(figure) = out.get_timeout(Duration::ZERO) {
                    got.push(figure);
                }
                assert_eq!(
                    got.len(),
                    N,
                    "the child test process failed (exit code {:?}) after {got:?}",
                    child.exitcode()
                );
            }
            Err(_) => assert!(Instant::now() < deadline, "the child test process hung"),
        }
    }
    child.wait().unwrap();
    got.try_into().expect("N figures")
}

/// The child of the replacement test: a `Pool(3)`, a worker killed while no descriptor can
/// be made, work during the shortage, then the limit raised. Reports, in order: tasks that
/// ended correctly during the shortage, tasks submitted then, live workers during it, failed
/// starts counted, whether full strength came back, tasks correct after.
fn replace_during_a_descriptor_shortage(out: Queue<u64>) {
    let _hog = hog_descriptors(HOG_BELOW);
    let pool = Pool::new(3).unwrap();
    assert!(wait_full_strength(&pool, 3, WATCHDOG));
    let original = nofile().rlim_cur;
    set_nofile_soft(HOG_BELOW);
    let victim = pool.worker_pids()[0];
    assert!(pool.signal_worker(victim, Signal::Kill).unwrap());
    // The replacement fails to start, again and again (bounded wait for two failures).
    assert!(wait_until(WATCHDOG, || pool.stats().start_failures >= 2));
    let tasks = 300u64;
    let results: Vec<_> = (0..tasks)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let ok = results
        .iter()
        .enumerate()
        .filter(|(i, r)| r.get_timeout(WATCHDOG) == Ok(*i as u64 * 2))
        .count() as u64;
    let live = pool.worker_pids().len() as u64;
    let failures = pool.stats().start_failures;
    set_nofile_soft(original);
    let healed = wait_full_strength(&pool, 3, WATCHDOG);
    let after = pool.map(double, 0..100u64).unwrap();
    let ok_after = after
        .iter()
        .enumerate()
        .filter(|(i, r)| **r == *i as u64 * 2)
        .count() as u64;
    pool.close();
    pool.join().unwrap();
    for figure in [ok, tasks, live, failures, u64::from(healed), ok_after] {
        out.put(figure).unwrap();
    }
}

#[test]
fn chaos_a_descriptor_shortage_during_a_replacement_does_not_break_the_pool() {
    let _serial = serial();
    let out = Queue::new().unwrap();
    let mut child = Process::new(replace_during_a_descriptor_shortage, out.clone())
        .unwrap()
        .start()
        .unwrap();
    let [ok, tasks, live, failures, healed, ok_after] = figures(&out, &mut child);
    report(
        "heal-fd-shortage",
        &[
            ("tasks", tasks + 100),
            ("lost", tasks - ok + 100 - ok_after),
            ("start_failures", failures),
            ("broken_by_transient", u64::from(ok < tasks || healed == 0)),
        ],
    );
    assert_eq!(
        ok, tasks,
        "every task submitted during the shortage ended once, correctly"
    );
    assert_eq!(live, 2, "the two healthy workers served on, nobody retired");
    assert!(failures >= 2, "the replacement really failed ({failures})");
    assert_eq!(healed, 1, "back to 3 workers once descriptors are back");
    assert_eq!(ok_after, 100);
    assert_eq!(child.exitcode(), Some(0));
}

/// The child of the `build` test: `Pool::new(40)` under a descriptor limit that allows a
/// few workers only. Reports: whether `build` failed with `Error::Start`, whether the OS's
/// EMFILE is in its source chain, and the children left behind.
fn build_beyond_the_descriptor_limit(out: Queue<u64>) {
    let _hog = hog_descriptors(HOG_BELOW);
    let original = nofile().rlim_cur;
    // Room for a handful of workers' descriptors above the hog, not for 40.
    let used = pool_testkit::open_fds() as u64;
    set_nofile_soft(HOG_BELOW.max(used) + 24);
    let built = Pool::new(40);
    set_nofile_soft(original);
    let (is_start, emfile) = match &built {
        Err(e @ Error::Start(_)) => {
            let mut source = e.source();
            let mut emfile = false;
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    emfile |= io.raw_os_error() == Some(libc::EMFILE);
                }
                source = s.source();
            }
            (true, emfile)
        }
        Err(e) => panic!("build failed with {e:?}, not Error::Start"),
        Ok(_) => (false, false),
    };
    drop(built);
    let gone = wait_until(Duration::from_secs(5), || {
        pool_testkit::children().is_empty()
    });
    let left = pool_testkit::children().len() as u64;
    let _ = gone;
    for figure in [u64::from(is_start), u64::from(emfile), left] {
        out.put(figure).unwrap();
    }
}

#[test]
fn chaos_build_fails_with_the_start_error_beyond_the_descriptor_limit_and_leaves_no_child() {
    let _serial = serial();
    let out = Queue::new().unwrap();
    let mut child = Process::new(build_beyond_the_descriptor_limit, out.clone())
        .unwrap()
        .start()
        .unwrap();
    let [is_start, emfile, left] = figures(&out, &mut child);
    report("heal-build-beyond-fd-limit", &[("orphans", left)]);
    assert_eq!(is_start, 1, "build returned Ok beyond the descriptor limit");
    assert_eq!(emfile, 1, "EMFILE is not in the error's source chain");
    assert_eq!(left, 0, "workers left behind by a failed build");
    assert_eq!(child.exitcode(), Some(0));
}

/// The child of the outage test: `Pool(1)` that may go 300 ms without a worker; its worker
/// is killed while no descriptor can be made. Reports: whether a task then failed with
/// `Error::Start` carrying EMFILE, and whether a task ran after the limit was raised.
fn no_worker_during_a_descriptor_shortage(out: Queue<u64>) {
    let _hog = hog_descriptors(HOG_BELOW);
    let pool = Pool::builder()
        .processes(1)
        .unavailable_after(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(pool.apply(double, 1), Ok(2));
    let original = nofile().rlim_cur;
    set_nofile_soft(HOG_BELOW);
    let victim = pool.worker_pids()[0];
    let started = Instant::now();
    assert!(pool.signal_worker(victim, Signal::Kill).unwrap());
    let failed = pool.apply_async(double, 2).unwrap().get_timeout(WATCHDOG);
    let waited = started.elapsed();
    let emfile = match &failed {
        Err(Error::Start(e)) => e
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.raw_os_error() == Some(libc::EMFILE)),
        _ => false,
    };
    // Later submissions fail at once, while the outage lasts.
    let late = pool.apply(double, 3);
    set_nofile_soft(original);
    let recovered = wait_until(WATCHDOG, || pool.apply(double, 4) == Ok(8));
    pool.close();
    pool.join().unwrap();
    for figure in [
        u64::from(emfile),
        u64::from(waited >= Duration::from_millis(300)),
        u64::from(matches!(late, Err(Error::Start(_)))),
        u64::from(recovered),
    ] {
        out.put(figure).unwrap();
    }
}

#[test]
fn chaos_a_pool_without_workers_fails_tasks_with_the_start_error_then_recovers() {
    let _serial = serial();
    let out = Queue::new().unwrap();
    let mut child = Process::new(no_worker_during_a_descriptor_shortage, out.clone())
        .unwrap()
        .start()
        .unwrap();
    let [emfile, waited, late, recovered] = figures(&out, &mut child);
    report(
        "heal-outage",
        &[("broken_by_transient", u64::from(recovered == 0))],
    );
    assert_eq!(emfile, 1, "the task failed without Error::Start(EMFILE)");
    assert_eq!(waited, 1, "failed before unavailable_after");
    assert_eq!(
        late, 1,
        "a task submitted during the outage did not fail with Start"
    );
    assert_eq!(recovered, 1, "the pool did not recover");
    assert_eq!(child.exitcode(), Some(0));
}

fn slow_init(_: ()) {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn chaos_workers_killed_during_a_slow_start_do_not_break_the_pool() {
    let _serial = serial();
    let pool = Pool::builder()
        .processes(2)
        .initializer(slow_init, ())
        .build()
        .unwrap();
    assert!(wait_full_strength(&pool, 2, WATCHDOG));
    let tasks = 200u64;
    let results: Vec<_> = (0..tasks)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let mut known: Vec<u32> = pool.worker_pids();
    // Kill one worker, then its replacement three times while its initializer runs.
    assert!(pool.signal_worker(known[0], Signal::Kill).unwrap());
    let mut killed_starting = 0;
    for _ in 0..3 {
        let mut fresh = None;
        assert!(
            wait_until(WATCHDOG, || {
                fresh = pool.worker_pids().into_iter().find(|p| !known.contains(p));
                fresh.is_some()
            }),
            "no replacement appeared"
        );
        let fresh = fresh.unwrap();
        known.push(fresh);
        if pool.signal_worker(fresh, Signal::Kill).unwrap() {
            killed_starting += 1;
        }
    }
    assert_eq!(killed_starting, 3);
    // The first kill hits a ready worker, which may be running a task: that task, and only
    // that one, may fail with WorkerLost (a crash fails its own task). Starting workers hold
    // none. Every other task ends with its value, and every task ends exactly once.
    let outcomes: Vec<_> = results.iter().map(|r| r.get_timeout(WATCHDOG)).collect();
    let ok = outcomes
        .iter()
        .enumerate()
        .filter(|(i, r)| **r == Ok(*i as u64 * 2))
        .count() as u64;
    let lost_with_the_first = outcomes
        .iter()
        .filter(|r| matches!(r, Err(Error::WorkerLost { .. })))
        .count() as u64;
    // Each kill landed during start-up: three failed starts (their exits are reported by
    // the reader threads, a moment after the kill).
    let failures_seen = wait_until(WATCHDOG, || pool.stats().start_failures >= 3);
    // Work submitted after the kills runs too, and the pool is back to full strength.
    let after = pool.map(double, 0..50u64);
    let healed = after.is_ok() && wait_full_strength(&pool, 2, Duration::from_secs(10));
    report(
        "heal-kills-during-start",
        &[
            ("tasks", tasks + 50),
            (
                "lost",
                tasks - ok - lost_with_the_first + if after.is_ok() { 0 } else { 50 },
            ),
            ("workers_killed", 1 + killed_starting),
            (
                "broken_by_transient",
                u64::from(ok + lost_with_the_first < tasks || !healed),
            ),
        ],
    );
    assert_eq!(
        ok + lost_with_the_first,
        tasks,
        "every task ended once: its value, or WorkerLost with the first killed worker"
    );
    assert!(
        lost_with_the_first <= 1,
        "only the running task fails with its worker"
    );
    assert!(failures_seen, "{:?}", pool.stats());
    assert_eq!(after, Ok((0..50u64).map(double).collect()));
    assert!(healed, "not back to 2 workers");
    pool.close();
    pool.join().unwrap();
}
