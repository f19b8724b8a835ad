//! The reliability suite: workers killed and stopped under load, a parent killed with its
//! pool, create/drop cycles watched for leaks, dead lock holders and queue users, hostile
//! workers, and a tight descriptor limit.
//!
//! Isolation is the reason to pick processes over threads, so it is what we prove: every
//! submitted task ends exactly once (a correct value or a typed error), nothing hangs, no
//! process, descriptor or segment outlives its owner. `cargo test` runs each test at CI size
//! (seconds); `cargo xtask chaos` runs them with `POOL_CHAOS=full` and sums the `CHAOS`
//! lines they print. Tests run one at a time (see [`serial`]): the leak checks count this
//! process's descriptors and children, which a concurrent test would disturb. Time bounds
//! are generous watchdogs, never performance assertions.

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pool_api::{
    Bytes, Callbacks, Error, Event, Lock, Pipe, Pool, Process, ProcessHandle, Queue, RLock,
    SharedMemory, SyncError, Value,
};
use pool_ipc::shared::ProcessIdentity;
use pool_testkit::{report, scale};

/// How long anything may take before the test calls it a hang.
const WATCHDOG: Duration = Duration::from_secs(120);
const GENEROUS: Duration = Duration::from_secs(20);

/// One test at a time in this binary (see the module documentation).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small deterministic generator (xorshift): which worker to hit next.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// A tiny task with enough duration that a storm of signals lands in the middle of work.
fn double_slowly(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(200));
    x * 2
}

fn double(x: u64) -> u64 {
    x * 2
}

/// Sends `signal` to a random worker of `pool` every `period` until `stop`; returns how many
/// signals landed.
fn storm(
    pool: Arc<Pool>,
    signal: pool_api::Signal,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let (mut rng, mut landed) = (Rng(0x2545_f491_4f6c_dd1d), 0);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(period);
            let pids = pool.worker_pids();
            if let Some(&pid) = pids.get(rng.below(pids.len())) {
                if pool.signal_worker(pid, signal).unwrap() {
                    landed += 1;
                }
            }
        }
        landed
    })
}

/// What happened to the tasks of one storm.
#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    lost: u64,
    timed_out: u64,
    wrong: u64,
    /// `get` timed out on the watchdog.
    hangs: u64,
    /// Tasks that never ended at all (no callback ran, no result came).
    never_ended: u64,
    unexpected: Vec<Error>,
}

impl Tally {
    fn add(&mut self, index: u64, outcome: Result<u64, Error>) {
        match outcome {
            Ok(v) if v == index * 2 => self.ok += 1,
            Ok(_) => self.wrong += 1,
            Err(Error::WorkerLost { .. }) => self.lost += 1,
            Err(Error::TimedOut { .. }) => self.timed_out += 1,
            Err(Error::Timeout(_)) => self.hangs += 1,
            Err(e) => self.unexpected.push(e),
        }
    }

    /// Prints the storm's `CHAOS` line; `signalled` names what the storm did and how often.
    fn report(
        &self,
        test: &str,
        n: u64,
        signalled: (&str, u64),
        duplicated: u64,
        started: Instant,
    ) {
        report(
            test,
            &[
                ("tasks", n),
                ("ok", self.ok),
                signalled,
                ("timed_out", self.timed_out),
                ("worker_lost", self.lost),
                ("lost", self.never_ended),
                ("duplicated", duplicated),
                ("wrong", self.wrong),
                ("hangs", self.hangs),
                ("ms", started.elapsed().as_millis() as u64),
            ],
        );
    }

    /// The promise: each of the `n` tasks ended exactly once, with its value or a typed error.
    fn assert_each_ended_once(&self, n: u64, duplicated: u64) {
        assert!(self.unexpected.is_empty(), "{:?}", self.unexpected);
        assert_eq!(
            (self.wrong, self.hangs, self.never_ended, duplicated),
            (0, 0, 0, 0),
            "{self:?}"
        );
        assert_eq!(self.ok + self.lost + self.timed_out, n);
    }
}

/// Waits until `pool` has `n` live workers again; how many it has at the deadline.
fn settle_workers(pool: &Pool, n: usize) -> usize {
    let deadline = Instant::now() + GENEROUS;
    while pool.worker_pids().len() != n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    pool.worker_pids().len()
}

/// Submits `n` tasks as `apply_async` with callbacks while a storm of `signal` runs; checks
/// that each task ended exactly once, through its `get` and through exactly one callback.
fn apply_async_storm(
    pool: Pool,
    n: u64,
    signal: pool_api::Signal,
    period: Duration,
) -> (Tally, u64, u64) {
    let processes = pool.processes();
    let pool = Arc::new(pool);
    let stop = Arc::new(AtomicBool::new(false));
    let stormer = storm(pool.clone(), signal, period, stop.clone());
    let endings: Arc<Vec<AtomicU32>> = Arc::new((0..n).map(|_| AtomicU32::new(0)).collect());
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (on_ok, on_err) = (endings.clone(), endings.clone());
            let callbacks = Callbacks::none()
                .on_ok(move |_| {
                    on_ok[i as usize].fetch_add(1, Ordering::Relaxed);
                })
                .on_err(move |_| {
                    on_err[i as usize].fetch_add(1, Ordering::Relaxed);
                });
            pool.apply_async_with(double_slowly, i, callbacks).unwrap()
        })
        .collect();
    let deadline = Instant::now() + WATCHDOG;
    let mut tally = Tally::default();
    for (i, handle) in handles.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        tally.add(
            i as u64,
            handle.get_timeout(left.max(Duration::from_millis(1))),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let signalled = stormer.join().unwrap();
    // Callbacks run on the pool's callback thread, a moment after `get` returns.
    let ended = || {
        endings
            .iter()
            .filter(|e| e.load(Ordering::Relaxed) > 0)
            .count() as u64
    };
    while ended() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let duplicated = endings
        .iter()
        .filter(|e| e.load(Ordering::Relaxed) > 1)
        .count() as u64;
    let never_ended = n - ended();
    assert_eq!(
        settle_workers(&pool, processes),
        processes,
        "the pool is back to full strength"
    );
    tally.never_ended = never_ended;
    (tally, signalled, duplicated)
}

#[test]
fn chaos_kill_storm_every_task_ends_exactly_once() {
    let _serial = serial();
    let n = scale(4_000, 100_000);
    let started = Instant::now();
    let pool = Pool::new(4).unwrap();
    let (tally, killed, duplicated) =
        apply_async_storm(pool, n, pool_api::Signal::Kill, Duration::from_millis(50));
    tally.report(
        "kill-storm-apply-async",
        n,
        ("workers_killed", killed),
        duplicated,
        started,
    );
    tally.assert_each_ended_once(n, duplicated);
    assert_eq!(tally.timed_out, 0, "no time limit was set");
    assert!(
        killed > 0,
        "the storm killed nobody: the test proved nothing"
    );
}

#[test]
fn chaos_kill_storm_during_a_chunked_map() {
    let _serial = serial();
    let n = scale(4_000, 100_000);
    let started = Instant::now();
    let pool = Arc::new(Pool::new(4).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let stormer = storm(
        pool.clone(),
        pool_api::Signal::Kill,
        Duration::from_millis(50),
        stop.clone(),
    );
    // The watchdog: a map that hangs fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let mapper = pool.clone();
    std::thread::spawn(move || {
        let _ = tx.send(mapper.map_results(double_slowly, 0..n, Some(8)));
    });
    let results = rx
        .recv_timeout(WATCHDOG)
        .expect("the map hung")
        .expect("the map was accepted");
    stop.store(true, Ordering::Relaxed);
    let killed = stormer.join().unwrap();
    let mut tally = Tally {
        never_ended: n.saturating_sub(results.len() as u64),
        ..Tally::default()
    };
    for (i, r) in results.iter().enumerate() {
        tally.add(i as u64, r.clone());
    }
    let duplicated = (results.len() as u64).saturating_sub(n);
    assert_eq!(settle_workers(&pool, 4), 4);
    tally.report(
        "kill-storm-map",
        n,
        ("workers_killed", killed),
        duplicated,
        started,
    );
    assert_eq!(results.len() as u64, n, "one result per item");
    tally.assert_each_ended_once(n, duplicated);
    assert_eq!(tally.timed_out, 0, "no time limit was set");
    // Failures are per chunk: a lost chunk fails all of its items.
    assert_eq!(tally.lost % 8, 0, "only whole chunks fail: {tally:?}");
    assert!(
        killed > 0,
        "the storm killed nobody: the test proved nothing"
    );
}

#[test]
fn chaos_stop_storm_past_the_time_limit_times_out_and_recovers() {
    let _serial = serial();
    let n = scale(1_500, 20_000);
    let started = Instant::now();
    let pool = Pool::builder()
        .processes(4)
        .time_limit(Duration::from_millis(300))
        .build()
        .unwrap();
    let (tally, stopped, duplicated) =
        apply_async_storm(pool, n, pool_api::Signal::Stop, Duration::from_millis(100));
    tally.report(
        "stop-storm",
        n,
        ("workers_stopped", stopped),
        duplicated,
        started,
    );
    tally.assert_each_ended_once(n, duplicated);
    assert!(
        stopped > 0,
        "the storm stopped nobody: the test proved nothing"
    );
}

fn sleep_long(_: ()) {
    std::thread::sleep(Duration::from_secs(600));
}

fn busy_forever(_: u32) -> u32 {
    std::thread::sleep(Duration::from_secs(600));
    0
}

/// The middle process: a pool of 8 busy workers and a `Process` child, whose pids it
/// reports before waiting to be killed.
fn own_a_busy_pool(pids: Queue<u32>) {
    let pool = Pool::new(8).unwrap();
    let _busy: Vec<_> = (0..8)
        .map(|i| pool.apply_async(busy_forever, i).unwrap())
        .collect();
    let child = Process::new(sleep_long, ()).unwrap().start().unwrap();
    pids.put(child.pid()).unwrap();
    let deadline = Instant::now() + GENEROUS;
    while pool.worker_pids().len() < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for pid in pool.worker_pids() {
        pids.put(pid).unwrap();
    }
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn chaos_a_killed_parent_leaves_no_child_alive() {
    let _serial = serial();
    let rounds = scale(1, 10);
    let (mut orphans_at_1s, mut children_seen) = (0, 0);
    for _ in 0..rounds {
        let pids = Queue::new().unwrap();
        let mut middle = Process::new(own_a_busy_pool, pids.clone())
            .unwrap()
            .start()
            .unwrap();
        let children: Vec<ProcessIdentity> = (0..9)
            .map(|_| {
                pids.get_timeout(GENEROUS)
                    .expect("the middle reports its children")
            })
            .map(|pid| {
                ProcessIdentity::lookup(pid)
                    .unwrap()
                    .expect("the child is alive before its parent dies")
            })
            .collect();
        children_seen += children.len() as u64;
        middle.kill().unwrap();
        middle.wait().unwrap();
        let killed_at = Instant::now();
        std::thread::sleep(Duration::from_secs(1).saturating_sub(killed_at.elapsed()));
        orphans_at_1s += children.iter().filter(|c| c.is_alive()).count() as u64;
        // Generous for the assertion below; the figure reported is the one at 1 s.
        while children.iter().any(|c| c.is_alive()) && killed_at.elapsed() < GENEROUS {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            children.iter().all(|c| !c.is_alive()),
            "children outlived their killed parent"
        );
    }
    report(
        "parent-death",
        &[
            ("parents_killed", rounds),
            ("children", children_seen),
            ("orphans", orphans_at_1s),
        ],
    );
    assert_eq!(
        orphans_at_1s, 0,
        "a child was alive 1 s after its parent died"
    );
}

fn noop(_: ()) {}

/// One round of everything that owns processes, descriptors or shared memory.
fn create_and_drop_everything(round: u64) {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(double, 0..64).unwrap()[63], 126);
    pool.terminate();
    pool.join().unwrap();
    drop(pool);

    let mut p = Process::new(noop, ()).unwrap().start().unwrap();
    p.wait().unwrap();
    assert_eq!(p.exitcode(), Some(0));

    let q: Queue<u64> = Queue::new().unwrap();
    q.put(round).unwrap();
    assert_eq!(q.get().unwrap(), round);

    let (mut a, mut b) = Pipe::duplex().unwrap();
    a.send(&round).unwrap();
    assert_eq!(b.recv::<u64>().unwrap(), round);

    let lock = Lock::new().unwrap();
    let _held = lock.acquire().unwrap();
    lock.release().unwrap();

    let anonymous = SharedMemory::new(4096).unwrap();
    anonymous.write(0, b"x").unwrap();
    let name = format!("pool-chaos-{}-{round}", std::process::id());
    let named = SharedMemory::create_named(&name, 4096).unwrap();
    let attached = SharedMemory::attach(&name).unwrap();
    assert_eq!(attached.size(), named.size());
    drop(attached);
    // The creator unlinks it as it drops.
    drop(named);
    assert!(SharedMemory::attach(&name).is_err());
}

#[test]
fn chaos_create_and_drop_cycles_leak_nothing() {
    let _serial = serial();
    let cycles = scale(25, 1_000);
    // The first round starts the library's long-lived threads (spawner, reaper, watcher)
    // and their descriptors: the baseline is taken after it.
    create_and_drop_everything(0);
    let settle = |fds: usize| {
        let deadline = Instant::now() + GENEROUS;
        while (pool_testkit::open_fds() > fds || !pool_testkit::zombie_children().is_empty())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    settle(usize::MAX);
    let (fds, shm, rss) = (
        pool_testkit::open_fds(),
        pool_testkit::dev_shm_entries(),
        pool_testkit::rss_kib(),
    );
    let started = Instant::now();
    for round in 1..=cycles {
        create_and_drop_everything(round);
    }
    settle(fds);
    let fds_leaked = pool_testkit::open_fds().saturating_sub(fds) as u64;
    let zombies = pool_testkit::zombie_children().len() as u64;
    let shm_leaked = pool_testkit::dev_shm_entries().difference(&shm).count() as u64;
    let rss_growth = pool_testkit::rss_kib().saturating_sub(rss);
    report(
        "leaks",
        &[
            ("cycles", cycles),
            ("fds_leaked", fds_leaked),
            ("zombies", zombies),
            ("shm_segments_leaked", shm_leaked),
            ("rss_growth_kib", rss_growth),
            ("ms", started.elapsed().as_millis() as u64),
        ],
    );
    assert_eq!((fds_leaked, zombies, shm_leaked), (0, 0, 0));
    assert!(rss_growth < 128 << 10, "RSS grew by {rss_growth} KiB");
}

fn hold_locks_forever((locks, ready): (Vec<Lock>, Event)) {
    for lock in &locks {
        let _held = lock.acquire().unwrap();
    }
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
}

fn hold_rlocks_forever((locks, ready): (Vec<RLock>, Event)) {
    for lock in &locks {
        let _ = lock.acquire().unwrap();
        let _ = lock.acquire().unwrap();
    }
    ready.set();
    std::thread::sleep(Duration::from_secs(600));
}

/// The three ways a process may ask for a lock whose holder died: a blocking acquire, one
/// with a timeout shorter than any liveness check, and an attempt that does not wait (a
/// caller that only polls must get the lock too).
const TAKERS: usize = 3;

#[test]
fn chaos_a_lock_whose_holder_is_killed_is_taken_over_and_says_so() {
    let _serial = serial();
    let rounds = scale(1, 20);
    let mut slowest = Duration::ZERO;
    for _ in 0..rounds {
        let locks: Vec<Lock> = (0..TAKERS).map(|_| Lock::new().unwrap()).collect();
        let ready = Event::new().unwrap();
        let mut holder = Process::new(hold_locks_forever, (locks.clone(), ready.clone()))
            .unwrap()
            .start()
            .unwrap();
        assert!(ready.wait_timeout(GENEROUS).unwrap());
        let pid = holder.pid();
        assert_eq!(locks[0].try_acquire(), Err(SyncError::WouldBlock));
        assert_eq!(
            locks[1].acquire_timeout(Duration::from_millis(1)),
            Err(SyncError::Timeout)
        );
        holder.kill().unwrap();
        let t = Instant::now();
        let taken = locks[2].acquire_timeout(GENEROUS).unwrap();
        slowest = slowest.max(t.elapsed());
        assert_eq!(taken.previous_owner_died, Some(pid));
        holder.wait().unwrap();
        let polled = locks[0].try_acquire().unwrap();
        assert_eq!(polled.previous_owner_died, Some(pid));
        let briefly = locks[1].acquire_timeout(Duration::from_millis(1)).unwrap();
        assert_eq!(briefly.previous_owner_died, Some(pid));
        for lock in &locks {
            lock.release().unwrap();
            let again = lock.acquire().unwrap();
            assert_eq!(again.previous_owner_died, None);
            lock.release().unwrap();
        }
    }
    report(
        "dead-lock-holder",
        &[
            ("holders_killed", rounds),
            ("slowest_takeover_ms", slowest.as_millis() as u64),
        ],
    );
}

#[test]
fn chaos_an_rlock_whose_holder_is_killed_is_taken_over() {
    let _serial = serial();
    let rounds = scale(1, 20);
    for _ in 0..rounds {
        let locks: Vec<RLock> = (0..TAKERS).map(|_| RLock::new().unwrap()).collect();
        let ready = Event::new().unwrap();
        let mut holder = Process::new(hold_rlocks_forever, (locks.clone(), ready.clone()))
            .unwrap()
            .start()
            .unwrap();
        assert!(ready.wait_timeout(GENEROUS).unwrap());
        assert_eq!(
            locks[0].release(),
            Err(SyncError::NotOwner),
            "we do not own it"
        );
        let pid = Some(holder.pid());
        holder.kill().unwrap();
        let taken = locks[2].acquire_timeout(GENEROUS).unwrap();
        assert_eq!(taken.previous_owner_died, pid);
        holder.wait().unwrap();
        let polled = locks[0].try_acquire().unwrap();
        assert_eq!(polled.previous_owner_died, pid);
        let briefly = locks[1].acquire_timeout(Duration::from_millis(1)).unwrap();
        assert_eq!(briefly.previous_owner_died, pid);
        for lock in &locks {
            lock.release().unwrap();
            assert_eq!(lock.release(), Err(SyncError::NotOwner));
        }
    }
    report("dead-rlock-holder", &[("holders_killed", rounds)]);
}

fn block_in_get((q, ready): (Queue<u32>, Event)) {
    ready.set();
    let _ = q.get();
}

fn put_big_after_signal((q, ready): (Queue<Bytes>, Event)) {
    q.put(Bytes(b"before".to_vec())).unwrap();
    let item = Bytes(vec![7; 64 << 20]);
    ready.set();
    // Most of each round is spent inside `put` (encoding, then copying under the queue's
    // lock), so the kill usually lands in the middle of one.
    loop {
        q.put(item.clone()).unwrap();
    }
}

#[test]
fn chaos_killed_queue_users_lose_and_duplicate_no_other_item() {
    let _serial = serial();
    let rounds = scale(1, 10);
    let mut whole_items = 0;
    for round in 0..rounds {
        // A consumer killed while blocked in get.
        let q = Queue::new().unwrap();
        let ready = Event::new().unwrap();
        let mut consumer = Process::new(block_in_get, (q.clone(), ready.clone()))
            .unwrap()
            .start()
            .unwrap();
        assert!(ready.wait_timeout(GENEROUS).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        consumer.kill().unwrap();
        consumer.wait().unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        assert_eq!((q.get().unwrap(), q.get().unwrap()), (1, 2));

        // A producer killed while putting 64 MiB items (at a different moment each round).
        let big: Queue<Bytes> = Queue::new().unwrap();
        let ready = Event::new().unwrap();
        let mut producer = Process::new(put_big_after_signal, (big.clone(), ready.clone()))
            .unwrap()
            .start()
            .unwrap();
        assert!(ready.wait_timeout(GENEROUS).unwrap());
        std::thread::sleep(Duration::from_millis(150 + 37 * round));
        producer.kill().unwrap();
        producer.wait().unwrap();
        big.put(Bytes(b"after".to_vec())).unwrap();
        assert_eq!(big.get_timeout(GENEROUS).unwrap().0, b"before");
        loop {
            let item = big.get_timeout(GENEROUS).unwrap();
            if item.0 == b"after" {
                break;
            }
            assert_eq!(item.len(), 64 << 20, "only whole items");
            assert!(item.iter().all(|b| *b == 7));
            whole_items += 1;
        }
        assert!(big.is_empty());
    }
    report(
        "dead-queue-users",
        &[
            ("consumers_killed", rounds),
            ("producers_killed", rounds),
            ("whole_64mib_items_before_kill", whole_items),
            ("lost", 0),
            ("duplicated", 0),
        ],
    );
}

/// Writes `frame` to every socket this worker holds beyond stdio: its channel to the pool.
fn send_garbage(frame: Vec<u8>) -> u64 {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket = std::fs::metadata(entry.path()).is_ok_and(|m| m.file_type().is_socket());
        if fd > 2 && is_socket {
            // SAFETY: writing bytes from a live buffer to a descriptor of this process.
            unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        }
    }
    0
}

#[test]
fn chaos_a_worker_that_sends_garbage_is_treated_as_lost() {
    let _serial = serial();
    let cases = scale(24, 500);
    let pool = Pool::new(2).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = BTreeMap::<&str, u64>::new();
    for case in 0..cases {
        // A whole frame (length, then that many random bytes) that does not decode as a
        // worker's message, or that decodes as a lie about a chunk.
        let len = rng.below(64);
        let mut frame = (len as u64).to_le_bytes().to_vec();
        frame.extend((0..len).map(|_| rng.below(256) as u8));
        let outcome = pool
            .apply_async(send_garbage, frame)
            .unwrap()
            .get_timeout(WATCHDOG);
        let kind = match outcome {
            Err(Error::WorkerLost { .. }) => "worker_lost",
            // Some garbage is a well-formed report about another chunk: the worker is killed
            // for lying, and this task is lost with it — or its own true answer came first.
            Ok(0) => "answered",
            Err(Error::Timeout(_)) => panic!("case {case}: the pool hung"),
            other => panic!("case {case}: unexpected outcome {other:?}"),
        };
        *outcomes.entry(kind).or_default() += 1;
        assert_eq!(pool.apply(double, 21).unwrap(), 42, "the pool goes on");
    }
    report(
        "hostile-worker",
        &[
            ("inputs", cases),
            (
                "worker_lost",
                outcomes.get("worker_lost").copied().unwrap_or(0),
            ),
            ("answered", outcomes.get("answered").copied().unwrap_or(0)),
            ("panics", 0),
            ("hangs", 0),
        ],
    );
    assert!(outcomes.get("worker_lost").copied().unwrap_or(0) > 0);
}

fn under_a_descriptor_limit((limit, tasks, out): (u64, u64, Queue<u64>)) {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setting this process's own limit from a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) }, 0);
    let pool = Pool::new(4).unwrap();
    let results: Vec<_> = (0..tasks)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let peak = pool_testkit::open_fds() as u64;
    let ok = results
        .iter()
        .enumerate()
        .filter(|(i, r)| r.get_timeout(GENEROUS) == Ok(*i as u64 * 2))
        .count() as u64;
    out.put(ok).unwrap();
    out.put(peak).unwrap();
}

#[test]
fn chaos_ten_thousand_queued_tasks_under_a_256_descriptor_limit() {
    let _serial = serial();
    let tasks = 10_000;
    let out = Queue::new().unwrap();
    let mut child = Process::new(under_a_descriptor_limit, (256, tasks, out.clone()))
        .unwrap()
        .start()
        .unwrap();
    let ok = out.get_timeout(WATCHDOG).expect("the limited process hung");
    let peak = out.get_timeout(GENEROUS).unwrap();
    child.wait().unwrap();
    report(
        "fd-limit",
        &[
            ("fd_limit", 256),
            ("tasks", tasks),
            ("ok", ok),
            ("fds_with_all_queued", peak),
        ],
    );
    assert_eq!(child.exitcode(), Some(0));
    assert_eq!(ok, tasks);
}

/// The initializer: caps this worker's address space a little above what it maps now.
fn cap_address_space(headroom_mib: u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let cap = (vm_kib << 10) + (headroom_mib << 20);
    let rlimit = libc::rlimit {
        rlim_cur: cap,
        rlim_max: cap,
    };
    // SAFETY: setting this process's own limit from a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) }, 0);
}

/// Allocates and touches `mib` MiB.
fn allocate(mib: u64) -> u64 {
    let v = vec![1u8; (mib << 20) as usize];
    v.iter().step_by(4096).map(|b| *b as u64).sum()
}

#[test]
fn chaos_a_task_that_exhausts_memory_fails_alone() {
    let _serial = serial();
    let pool = Pool::builder()
        .processes(2)
        .initializer(cap_address_space, 256)
        .build()
        .unwrap();
    let hog = pool.apply_async(allocate, 4096).unwrap();
    let fine: Vec<_> = (0..100)
        .map(|i| pool.apply_async(double, i).unwrap())
        .collect();
    let hog = hog.get_timeout(WATCHDOG);
    assert!(
        matches!(hog, Err(Error::WorkerLost { .. })),
        "the hog fails with its worker: {hog:?}"
    );
    for (i, r) in fine.iter().enumerate() {
        assert_eq!(r.get_timeout(WATCHDOG), Ok(i as u64 * 2));
    }
    assert_eq!(
        pool.apply(allocate, 16).unwrap(),
        4096,
        "a modest task still runs"
    );
    report(
        "memory-hog",
        &[("hogs", 1), ("others", 100), ("others_lost", 0)],
    );
}

#[test]
fn chaos_imap_over_a_million_results_keeps_memory_bounded() {
    // An endless input, a million results taken one by one: the input is read a bounded
    // window ahead and taken results are not kept, so the parent's memory stays flat.
    let _serial = serial();
    let pool = Pool::new(2).unwrap();
    let total = 1_000_000u64;
    let mut results = pool.imap(double, 0u64.., 1000).unwrap();
    let mut settled = 0;
    for i in 0..total {
        assert_eq!(results.next().unwrap(), Ok(i * 2));
        if i == total / 10 {
            settled = pool_testkit::rss_kib();
        }
    }
    let growth = pool_testkit::rss_kib().saturating_sub(settled);
    drop(results);
    report(
        "imap-million",
        &[("results", total), ("rss_growth_kib", growth)],
    );
    assert!(
        growth < 16 << 10,
        "RSS grew by {growth} KiB from 100 000 to 1 000 000 results"
    );
}

/// A producer's item: its id and sequence number, then a fill byte, over 16 bytes to 512 KiB.
fn tagged(id: u64, seq: u64) -> Bytes {
    let mut item = vec![((id * 31 + seq) % 251) as u8; tagged_len(id, seq) as usize];
    item[..8].copy_from_slice(&id.to_le_bytes());
    item[8..16].copy_from_slice(&seq.to_le_bytes());
    Bytes(item)
}

fn tagged_len(id: u64, seq: u64) -> u64 {
    16 + (id * 131 + seq * 7919) % (512 << 10)
}

/// The bytes `tagged(id, seq)` takes in a queue's ring (its record).
fn record_bytes(id: u64, seq: u64) -> u64 {
    let len = tagged_len(id, seq);
    // postcard: a varint length, then the bytes; the record: a u64 length word, padded to 8.
    let varint = (64 - len.leading_zeros()).div_ceil(7).max(1) as u64;
    (8 + varint + len).next_multiple_of(8)
}

/// Puts tagged items until killed; `progress` is how many of its `put`s returned.
fn put_tagged_until_killed((q, id, progress): (Queue<Bytes>, u64, Value<u64>)) {
    for seq in 0.. {
        q.put(tagged(id, seq)).unwrap();
        progress.set(seq + 1).unwrap();
    }
}

/// The largest of this process's mappings of queue memory (from `/proc/self/maps`).
fn largest_queue_mapping() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.contains("memfd:pool-queue"))
        .filter_map(|l| {
            let (from, to) = l.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(to, 16).ok()? - u64::from_str_radix(from, 16).ok()?)
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn chaos_a_growing_queue_whose_producers_are_killed_loses_and_duplicates_nothing() {
    let _serial = serial();
    let rounds = scale(3, 30);
    let limit: u64 = 64 << 20;
    let (mut killed, mut items, mut unreturned_found) = (0u64, 0u64, 0u64);
    let mut killed_while_growing = 0u64;
    let (mut lost, mut duplicated, mut wrong) = (0u64, 0u64, 0u64);
    let mut rng = Rng(0x853c_49e6_748f_ea9b);
    let started = Instant::now();
    for _ in 0..rounds {
        let q: Queue<Bytes> = Queue::with_limits(0, limit as usize).unwrap();
        assert!(
            largest_queue_mapping() <= 1 << 20,
            "a new queue reserves only its small ring"
        );
        let mut producers: Vec<(u64, ProcessHandle, Value<u64>)> = Vec::new();
        let mut next_id = 0;
        let mut start_producer = |producers: &mut Vec<(u64, ProcessHandle, Value<u64>)>| {
            let progress = Value::raw(0u64).unwrap();
            let p = Process::new(
                put_tagged_until_killed,
                (q.clone(), next_id, progress.clone()),
            )
            .unwrap()
            .start()
            .unwrap();
            producers.push((next_id, p, progress));
            next_id += 1;
        };
        for _ in 0..3 {
            start_producer(&mut producers);
        }
        // What the `put`s that returned hold in the ring.
        let queued = |all: &[&(u64, ProcessHandle, Value<u64>)]| -> u64 {
            all.iter()
                .map(|(id, _, progress)| {
                    (0..progress.get().unwrap())
                        .map(|s| record_bytes(*id, s))
                        .sum::<u64>()
                })
                .sum()
        };
        // Kill a producer now and then while the ring grows from 64 KiB towards 64 MiB
        // (nobody consumes yet), starting another in its place.
        let mut dead: Vec<(u64, ProcessHandle, Value<u64>)> = Vec::new();
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(rng.below(25) as u64));
            let all: Vec<_> = producers.iter().chain(&dead).collect();
            killed_while_growing += u64::from(queued(&all) < limit / 2);
            let victim = rng.below(producers.len());
            let (id, mut p, progress) = producers.swap_remove(victim);
            p.kill().unwrap();
            p.wait().unwrap();
            dead.push((id, p, progress));
            killed += 1;
            start_producer(&mut producers);
        }
        // Let the survivors fill the queue to its limit (what the `put`s that returned hold),
        // then kill them too, blocked in `put` or not.
        let deadline = Instant::now() + WATCHDOG;
        loop {
            let all: Vec<_> = producers.iter().chain(&dead).collect();
            if queued(&all) + (1 << 20) > limit || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for (id, mut p, progress) in producers.drain(..) {
            p.kill().unwrap();
            p.wait().unwrap();
            dead.push((id, p, progress));
            killed += 1;
        }
        // Every item whose `put` returned is there, once, in its producer's order; at most
        // the one `put` each killed producer was in may have made it too.
        let mut seen = BTreeMap::<u64, u64>::new();
        loop {
            let item = match q.try_get() {
                Ok(item) => item,
                Err(pool_api::QueueError::Empty) => break,
                Err(e) => panic!("the queue broke: {e}"),
            };
            items += 1;
            let id = u64::from_le_bytes(item[..8].try_into().unwrap());
            let seq = u64::from_le_bytes(item[8..16].try_into().unwrap());
            let next = seen.entry(id).or_default();
            if seq != *next {
                duplicated += u64::from(seq < *next);
                wrong += u64::from(seq > *next);
            }
            wrong += u64::from(item != tagged(id, seq));
            *next = seq + 1;
        }
        for (id, _, progress) in &dead {
            let returned = progress.get().unwrap();
            let got = seen.get(id).copied().unwrap_or(0);
            lost += returned.saturating_sub(got);
            assert!(
                got <= returned + 1,
                "producer {id}: {got} items, {returned} puts"
            );
            unreturned_found += got.saturating_sub(returned);
        }
        assert_eq!(
            largest_queue_mapping(),
            limit,
            "the ring grew to the limit, in this process too"
        );
        // The queue goes on.
        q.put(tagged(99, 0)).unwrap();
        assert_eq!(q.get_timeout(GENEROUS).unwrap(), tagged(99, 0));
        assert!(q.is_empty());
    }
    report(
        "queue-growth-kills",
        &[
            ("rounds", rounds),
            ("producers_killed", killed),
            ("killed_while_growing", killed_while_growing),
            ("items", items),
            ("unreturned_puts_found", unreturned_found),
            ("lost", lost),
            ("duplicated", duplicated),
            ("wrong", wrong),
            ("ms", started.elapsed().as_millis() as u64),
        ],
    );
    assert_eq!((lost, duplicated, wrong), (0, 0, 0));
    assert!(
        killed_while_growing > 0,
        "no producer was killed while the ring grew: the test proved nothing"
    );
}
