//! `Pool` over real worker processes (re-executed from this test binary).
//!
//! Ported behaviours name their source: CPython's `Lib/test/_test_multiprocessing.py`
//! (`_TestPool`), and the seed tutorials in `shared/seeds/`. Time bounds are generous (the
//! machine is shared) and tests print what they measured.

#![allow(clippy::print_stderr)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_api::{
    Bytes, Callbacks, Error, Pool, PoolBuilder, StartMethod, TransportKind, current_process,
};

#[path = "support/cluster.rs"]
mod support;

/// One cell of the matrix every behaviour runs in: how workers start (spawned, or forked by
/// the forkserver) and how bytes reach them (socket pair, or shared-memory rings); or a
/// cluster pool.
#[derive(Clone, Copy, Debug)]
struct Cell {
    start: StartMethod,
    transport: TransportKind,
    /// A cluster pool (`PoolBuilder::redis`) instead: each pool built gets a redis-server of
    /// its own and two hosts of two workers each (processes of this test binary), which
    /// live until the test ends ([`ClusterGuard`]).
    cluster: bool,
}

std::thread_local! {
    /// The clusters of the cluster cell's pools, until the test ends.
    static CLUSTERS: std::cell::RefCell<Vec<support::Cluster>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Stops the clusters the test started (their hosts killed, their redis-servers stopped)
/// when the test ends, pass or fail.
struct ClusterGuard;

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let clusters = CLUSTERS.with(|c| std::mem::take(&mut *c.borrow_mut()));
        drop(clusters);
    }
}

impl Cell {
    /// Whether the pool's workers are its own processes, whose pids its results and errors
    /// name: not on a cluster, whose workers are the hosts' (errors name pid 0, and
    /// `processes(1)` sets the window, not how many workers there are).
    fn own_workers(self) -> bool {
        !self.cluster
    }

    fn builder(self) -> PoolBuilder {
        if self.cluster {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("matrix{}", NEXT.fetch_add(1, Ordering::Relaxed));
            let cluster = support::Cluster::new(&name, 2, 2);
            let builder = cluster.builder();
            CLUSTERS.with(|c| c.borrow_mut().push(cluster));
            return builder;
        }
        Pool::builder()
            .start_method(self.start)
            .transport(self.transport)
    }

    fn pool(self, processes: usize) -> Pool {
        self.builder().processes(processes).build().unwrap()
    }

    /// A pool whose workers may each hold two chunks at once (the second sent ahead).
    fn two_chunks_per_worker(self, processes: usize) -> Pool {
        let builder = self.builder().processes(processes).chunks_per_worker(2);
        builder.build().unwrap()
    }
}

/// `matrix!(cells: behaviour, ...)` makes a module per behaviour holding one `#[test]` per
/// cell (`behaviour::spawn_pipe`, `behaviour::forkserver_shm`, ...), so a failure names both
/// the promise and the configuration that broke it. `pipe` and `shm` restrict the matrix to
/// one transport, for behaviours that only one of them has.
macro_rules! matrix {
    (all: $($name:ident),+ $(,)?) => {
        $(matrix!(@one $name: spawn_pipe Spawn Pipe, spawn_shm Spawn Shm,
            forkserver_pipe Forkserver Pipe, forkserver_shm Forkserver Shm);)+
    };
    (pipe: $($name:ident),+ $(,)?) => {
        $(matrix!(@one $name: spawn_pipe Spawn Pipe, forkserver_pipe Forkserver Pipe);)+
    };
    (shm: $($name:ident),+ $(,)?) => {
        $(matrix!(@one $name: spawn_shm Spawn Shm, forkserver_shm Forkserver Shm);)+
    };
    (@one $name:ident: $($test:ident $start:ident $transport:ident),+) => {
        mod $name {
            $(
                #[test]
                fn $test() {
                    super::$name(super::Cell {
                        start: pool_api::StartMethod::$start,
                        transport: pool_api::TransportKind::$transport,
                        cluster: false,
                    });
                }
            )+
        }
    };
}

/// `cluster!(behaviour, ...)`, inside module `on_a_cluster`, runs behaviours once more on a
/// cluster pool over a real redis-server with two hosts (`on_a_cluster::behaviour::cluster`):
/// the promise that one line of the builder changes and the behaviour stays.
macro_rules! cluster {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn cluster() {
                    let _clusters = super::super::ClusterGuard;
                    super::super::$name(super::super::Cell {
                        start: pool_api::StartMethod::Spawn,
                        transport: pool_api::TransportKind::Pipe,
                        cluster: true,
                    });
                }
            }
        )+
    };
}

fn square(x: u64) -> u64 {
    x * x
}

fn square_sum(numbers: Vec<u64>) -> u64 {
    numbers.iter().map(|x| x * x).sum()
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn panics_on_odd(x: u32) -> u32 {
    assert!(x % 2 == 0, "odd input {x}");
    x
}

/// Dies in the way its argument says, or returns it.
fn dies(how: String) -> String {
    match how.as_str() {
        "sigkill" => {
            // SAFETY: raising a signal at ourselves.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        "abort" => std::process::abort(),
        "exit" => std::process::exit(3),
        "segfault" => {
            // SAFETY: deliberately not safe: this worker must crash the way C code does.
            unsafe { libc::raise(libc::SIGSEGV) };
        }
        _ => {}
    }
    how
}

/// Panics where unwinding is impossible, so the worker aborts right after its panic hook,
/// exactly as under `panic = "abort"` (which a test binary cannot be built with).
fn panics_then_aborts(x: u32) -> u32 {
    extern "C" fn cannot_unwind(x: u32) -> u32 {
        if x > 0 {
            panic!("deliberate panic {x} with nowhere to unwind");
        }
        x
    }
    cannot_unwind(x)
}

fn a_panic_that_aborts_the_worker_is_still_reported_as_a_panic(cell: Cell) {
    let pool = cell.pool(1);
    let before = pool.apply(pid, ()).unwrap();
    let err = pool.apply(panics_then_aborts, 7).unwrap_err();
    match &err {
        Error::Panicked {
            message,
            location,
            pid,
            ..
        } => {
            assert_eq!(message, "deliberate panic 7 with nowhere to unwind");
            assert!(
                location.as_deref().unwrap_or("").contains("pool.rs"),
                "{location:?}"
            );
            assert_eq!(*pid, before, "the panicking worker's pid");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    // The worker died of it and was replaced; the pool goes on.
    let after = pool.apply(pid, ()).unwrap();
    assert_ne!(after, before);
    assert_eq!(pool.apply(panics_then_aborts, 0).unwrap(), 0);
    assert_eq!(pool.stats().lost, 1);
    // A panic the worker survives is reported once, from its result, and leaves no trace
    // that could mislabel a later crash.
    assert!(matches!(
        pool.apply(panics_on_odd, 1),
        Err(Error::Panicked { .. })
    ));
    assert!(matches!(
        pool.apply(dies, "sigkill".to_string()),
        Err(Error::WorkerLost { .. })
    ));
}

fn worker_name(_: ()) -> String {
    current_process().name
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn length(data: Bytes) -> usize {
    data.len()
}

fn echo_bytes(data: Bytes) -> Bytes {
    data
}

/// The parent pid of `pid`, from `/proc`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn workers_come_from_the_start_method_asked_for(cell: Cell) {
    let pool = cell.pool(2);
    assert_eq!(pool.map(square, 0..20u64).unwrap().len(), 20);
    let me = std::process::id();
    // One worker may have served the whole map while the other was still starting.
    let t = Instant::now();
    while pool.worker_pids().len() < 2 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    for worker in pids {
        match cell.start {
            StartMethod::Forkserver => {
                assert_ne!(parent_of(worker), me, "the forkserver's children")
            }
            _ => assert_eq!(parent_of(worker), me, "this process's children"),
        }
    }
}

fn map_returns_results_in_input_order(cell: Cell) {
    // seed 002: Pool().map(f, [1, 2, 3]) five times prints [1, 4, 9].
    let pool = cell.pool(2);
    for _ in 0..5 {
        assert_eq!(pool.map(square, [1, 2, 3]).unwrap(), [1, 4, 9]);
    }
    let big: Vec<u64> = (0..10_000).collect();
    let expect: Vec<u64> = big.iter().map(|x| x * x).collect();
    assert_eq!(pool.map(square, big.clone()).unwrap(), expect);
    assert_eq!(pool.map_chunked(square, big, 1).unwrap(), expect);
    pool.close();
    pool.join().unwrap();
}

fn seed_square_sum_of_chunks_is_385(cell: Cell) {
    // seed 001: numbers 1..10 in chunks of 10 // 4 = 2 over 4 processes.
    let numbers: Vec<u64> = (1..=10).collect();
    let pool = cell.pool(4);
    let chunk_size = numbers.len() / 4;
    let chunks: Vec<Vec<u64>> = numbers.chunks(chunk_size).map(<[u64]>::to_vec).collect();
    let total: u64 = pool.map(square_sum, chunks).unwrap().iter().sum();
    assert_eq!(total, 385);
}

fn empty_input_gives_an_empty_result_at_once(cell: Cell) {
    let pool = cell.pool(1);
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
    assert!(
        pool.map_async(square, Vec::<u64>::new(), None)
            .unwrap()
            .get()
            .unwrap()
            .is_empty()
    );
    assert_eq!(pool.imap(square, Vec::<u64>::new(), 1).unwrap().count(), 0);
}

fn starmap_and_async_variants(cell: Cell) {
    // seed 001: starmap(download_file, [(url, filename), ...]).
    let pool = cell.pool(2);
    let pairs = vec![(1u64, 2u64), (3, 4), (5, 6)];
    assert_eq!(pool.starmap(add, pairs.clone()).unwrap(), [3, 7, 11]);
    let streamed = pairs.iter().copied().filter(|_| true);
    assert_eq!(pool.starmap_chunked(add, streamed, 2).unwrap(), [3, 7, 11]);
    let (tx, rx) = std::sync::mpsc::channel();
    let on_ok = Callbacks::none().on_ok(move |sums: Vec<u64>| tx.send(sums).unwrap());
    let r = pool.starmap_async_with(add, pairs, Some(1), on_ok).unwrap();
    assert_eq!(r.get().unwrap(), [3, 7, 11]);
    assert!(r.ready());
    assert_eq!(r.successful(), Ok(true));
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(vec![3, 7, 11]));
    let a = pool.apply_async(square, 12).unwrap();
    assert_eq!(a.get().unwrap(), 144);
    assert_eq!(a.get().unwrap(), 144, "get may be called again");
}

fn get_with_a_timeout_lets_the_task_run_on(cell: Cell) {
    // CPython _TestPool.test_async_timeout: get(timeout) raises TimeoutError.
    let pool = cell.pool(1);
    let r = pool.apply_async(sleep_ms, 300).unwrap();
    assert_eq!(r.successful(), Err(Error::NotReady));
    assert_eq!(
        r.get_timeout(Duration::from_millis(10)),
        Err(Error::Timeout(Duration::from_millis(10)))
    );
    assert!(!r.ready());
    assert_eq!(r.get().unwrap(), 300);
    assert_eq!(r.successful(), Ok(true));
}

fn a_panic_comes_back_from_get_and_the_worker_survives(cell: Cell) {
    let pool = cell.pool(1);
    let before = pool.apply(pid, ()).unwrap();
    match pool.apply(panics_on_odd, 3) {
        Err(Error::Panicked {
            message,
            location,
            pid,
            ..
        }) => {
            assert_eq!(message, "odd input 3");
            assert!(location.unwrap().contains("pool.rs"));
            if cell.own_workers() {
                assert_eq!(pid, before);
            }
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    if cell.own_workers() {
        assert_eq!(
            pool.apply(pid, ()).unwrap(),
            before,
            "the same worker takes the next task"
        );
    }
    // map: the error of the lowest-index failed item; per-item outcomes otherwise.
    let err = pool.map(panics_on_odd, [0, 2, 5, 4, 7]).unwrap_err();
    assert!(
        matches!(err, Error::Panicked { ref message, .. } if message == "odd input 5"),
        "{err}"
    );
    let each = pool.map_results(panics_on_odd, [0, 1, 2], Some(3)).unwrap();
    assert!(each[0].is_ok() && each[1].is_err() && each[2].is_ok());
}

fn panics_on_some(x: u32) -> u32 {
    assert!(x % 997 != 5, "unlucky {x}");
    x
}

fn large_chunks_keep_every_outcome_in_its_place(cell: Cell) {
    // Chunks of thousands of results are decoded by the reader threads, not the caller's.
    let pool = cell.pool(2);
    let unlucky = |i: u32| i % 997 == 5;
    let each = pool
        .map_results(panics_on_some, 0..20_000u32, None)
        .unwrap();
    assert_eq!(each.len(), 20_000);
    for (i, r) in (0u32..).zip(&each) {
        match r {
            Ok(v) => assert!(!unlucky(i) && *v == i, "item {i}: {r:?}"),
            Err(Error::Panicked { message, .. }) => {
                assert!(
                    unlucky(i) && *message == format!("unlucky {i}"),
                    "item {i}: {r:?}"
                )
            }
            Err(e) => panic!("item {i}: {e}"),
        }
    }
    let err = pool.map(panics_on_some, 0..20_000u32).unwrap_err();
    assert!(
        matches!(err, Error::Panicked { ref message, .. } if message == "unlucky 5"),
        "{err}"
    );
    let fine: Vec<u32> = (0..20_000u32).filter(|i| !unlucky(*i)).collect();
    assert_eq!(pool.map(panics_on_some, fine.clone()).unwrap(), fine);
    // Which worker ran a chunk differs from run to run: compare the outcomes, not the pids.
    let outcome = |r: &Result<u32, Error>| match r {
        Ok(v) => Ok(*v),
        Err(Error::Panicked { message, .. }) => Err(message.clone()),
        Err(e) => Err(format!("unexpected: {e}")),
    };
    let streamed: Vec<_> = pool
        .imap(panics_on_some, 0..20_000u32, 2_000)
        .unwrap()
        .map(|r| outcome(&r))
        .collect();
    assert!(
        streamed == each.iter().map(outcome).collect::<Vec<_>>(),
        "imap differs from map_results"
    );
}

fn a_worker_that_dies_fails_only_its_task_and_is_replaced(cell: Cell) {
    // CPython's Pool hangs forever here (bpo-22393).
    let pool = cell.pool(2);
    for (how, exitcode) in [
        ("sigkill", -9),
        ("abort", -6),
        ("exit", 3),
        ("segfault", -11),
    ] {
        let t = Instant::now();
        let crash = pool.apply_async(dies, how.to_string()).unwrap();
        let fine = pool.apply_async(dies, "fine".to_string()).unwrap();
        match crash.get() {
            Err(Error::WorkerLost {
                exitcode: code,
                pid,
            }) => {
                assert_eq!(code, exitcode, "{how}");
                assert!(pid > 0);
            }
            other => panic!("{how}: expected worker lost, got {other:?}"),
        }
        eprintln!("{how}: worker loss reported after {:?}", t.elapsed());
        // Promptly: seen through the worker's channel and pidfd, not a periodic check.
        assert!(t.elapsed() < Duration::from_secs(10), "{how}");
        assert_eq!(fine.get().unwrap(), "fine");
    }
    // The pool is back to two live workers, and still works.
    let t = Instant::now();
    while pool.worker_pids().len() < 2 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.worker_pids().len(), 2);
    assert_eq!(pool.map(square, 0..100).unwrap().len(), 100);
    assert_eq!(pool.stats().lost, 4);
}

fn a_chunk_of_a_lost_worker_fails_as_a_whole_and_the_map_goes_on(cell: Cell) {
    let pool = cell.pool(2);
    let items: Vec<String> = (0..20)
        .map(|i| {
            if i == 7 {
                "sigkill".into()
            } else {
                format!("ok{i}")
            }
        })
        .collect();
    let results = pool.map_results(dies, items, Some(4)).unwrap();
    for (i, r) in results.iter().enumerate() {
        if (4..8).contains(&i) {
            assert!(
                matches!(r, Err(Error::WorkerLost { exitcode: -9, .. })),
                "item {i}: {r:?}"
            );
        } else {
            assert_eq!(r.as_ref().unwrap(), &format!("ok{i}"));
        }
    }
}

fn a_task_over_its_time_limit_is_killed_and_reported(cell: Cell) {
    let pool = cell
        .builder()
        .processes(1)
        .time_limit(Duration::from_millis(200))
        .build()
        .unwrap();
    let first = pool.apply(pid, ()).unwrap();
    let t = Instant::now();
    let r = pool.apply(sleep_ms, 5_000);
    eprintln!("time limit enforced after {:?}", t.elapsed());
    // On a cluster the pid is on another host (0), and the chunk's worker runs on (its
    // late result dropped) rather than being killed.
    let expected = if cell.own_workers() { first } else { 0 };
    assert!(
        matches!(r, Err(Error::TimedOut { pid, .. }) if pid == expected),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(4));
    let second = pool.apply(pid, ()).unwrap();
    if cell.own_workers() {
        assert_ne!(first, second, "the worker was replaced");
    }
    assert_eq!(pool.apply(sleep_ms, 10).unwrap(), 10);
}

fn maxtasksperchild_replaces_workers_and_the_initializer_runs_in_each(cell: Cell) {
    // seed 003: Pool(processes, initializer=start_process, maxtasksperchild=2).
    let pool = cell
        .builder()
        .processes(2)
        .max_tasks_per_child(2)
        .initializer(remember_init, ())
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..12)
        .map(|_| pool.apply(pid_if_initialized, ()).unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<u32> = pids.iter().copied().collect();
    eprintln!(
        "12 tasks, maxtasksperchild 2: {} distinct workers",
        distinct.len()
    );
    assert!(distinct.len() >= 6, "workers were not replaced: {pids:?}");
    let stats = pool.stats();
    assert!(stats.spawned >= 6);
}

static INITIALIZED: AtomicUsize = AtomicUsize::new(0);

fn remember_init(_: ()) {
    INITIALIZED.fetch_add(1, Ordering::SeqCst);
}

fn pid_if_initialized(_: ()) -> u32 {
    assert_eq!(
        INITIALIZED.load(Ordering::SeqCst),
        1,
        "the initializer ran once in this worker"
    );
    std::process::id()
}

fn failing_init(_: ()) {
    panic!("no configuration file");
}

fn a_failing_initializer_is_reported_once_and_not_respawned_forever(cell: Cell) {
    let pool = cell
        .builder()
        .processes(2)
        .initializer(failing_init, ())
        .build()
        .unwrap();
    let r = pool.apply(square, 3);
    assert_eq!(
        r,
        Err(Error::InitializerFailed("no configuration file".into()))
    );
    assert_eq!(
        pool.apply(square, 3),
        Err(Error::InitializerFailed("no configuration file".into()))
    );
    std::thread::sleep(Duration::from_millis(200));
    let spawned = pool.stats().spawned;
    eprintln!("workers spawned before giving up: {spawned}");
    assert!(spawned <= 4, "respawned {spawned} times");
}

fn worker_names_follow_python(cell: Cell) {
    // seed 003: "Starting PoolWorker-N" from current_process().name.
    let pool = cell.pool(2);
    let name = pool.apply(worker_name, ()).unwrap();
    assert!(name.starts_with("PoolWorker-"), "{name}");
    assert_eq!(current_process().name, "MainProcess");
}

fn callbacks_run_once_each_in_the_parent_in_completion_order(cell: Cell) {
    // seed 004: ten apply_async(Foo, (i,), callback=Bar); Bar runs in the main process, and
    // `close(); join()` returns after the last Bar (CPython's join waits for its result
    // handler thread). One worker ends the tasks in submission order, so that is the order
    // the callbacks must run in; each takes a while, so most still wait when join is called.
    let pool = cell.pool(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let results: Vec<_> = (0..10u64)
        .map(|i| {
            let seen = Arc::clone(&seen);
            let cb = Callbacks::none().on_ok(move |r: u64| {
                std::thread::sleep(Duration::from_millis(20));
                seen.lock().unwrap().push((r, std::process::id()));
            });
            pool.apply_async_with(plus_100, i, cb).unwrap()
        })
        .collect();
    pool.close();
    pool.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let values: Vec<u64> = seen.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, (100..110).collect::<Vec<_>>());
    assert!(seen.iter().all(|(_, pid)| *pid == std::process::id()));
    for (r, i) in results.iter().zip(100..) {
        assert_eq!(r.get(), Ok(i));
    }
}

fn terminate_runs_no_callback_for_the_work_it_kills(cell: Cell) {
    // CPython: terminate() stops the result handler; no callback runs for killed work.
    let pool = cell.pool(1);
    let oks = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let results: Vec<_> = (0..20)
        .map(|_| {
            let (o, e) = (Arc::clone(&oks), Arc::clone(&errors));
            let cb = Callbacks::none()
                .on_ok(move |_| {
                    o.fetch_add(1, Ordering::SeqCst);
                })
                .on_err(move |_| {
                    e.fetch_add(1, Ordering::SeqCst);
                });
            pool.apply_async_with(sleep_ms, 30, cb).unwrap()
        })
        .collect();
    assert!(eventually(Duration::from_secs(20), || oks
        .load(Ordering::SeqCst)
        > 0));
    pool.terminate();
    let after_terminate = oks.load(Ordering::SeqCst);
    pool.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        oks.load(Ordering::SeqCst),
        after_terminate,
        "a callback ran late"
    );
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "killed work had a callback"
    );
    let finished = results.iter().filter(|r| r.get().is_ok()).count();
    let terminated = results
        .iter()
        .filter(|r| r.get() == Err(Error::Terminated))
        .count();
    assert_eq!(finished + terminated, 20);
    assert!(
        after_terminate <= finished && terminated > 0,
        "{after_terminate} {finished}"
    );
}

fn terminate_ends_a_callback_that_waits_on_the_pools_own_work(cell: Cell) {
    // CPython's terminate kills the workers first, then joins its result handler: a callback
    // waiting on the pool's own unfinished work gets its error, and terminate returns.
    let pool = cell.pool(2);
    let long = pool.apply_async(sleep_ms, 60_000).unwrap();
    let slot = Arc::new(Mutex::new(Some(long)));
    let (started, has_started) = std::sync::mpsc::channel();
    let (seen, got) = std::sync::mpsc::channel();
    let on_ok = Callbacks::none().on_ok(move |_: u64| {
        started.send(()).unwrap();
        let long = slot.lock().unwrap().take().unwrap();
        seen.send(long.get()).unwrap();
    });
    let _short = pool.apply_async_with(sleep_ms, 1, on_ok).unwrap();
    has_started.recv_timeout(Duration::from_secs(20)).unwrap();
    let t = Instant::now();
    pool.terminate();
    eprintln!("terminate returned after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(
        got.try_recv(),
        Ok(Err(Error::Terminated)),
        "the callback had ended"
    );
}

fn one_pools_callback_waits_for_anothers_callbacks(cell: Cell) {
    // A callback of pool A that joins pool B waits for B's callbacks (it is not B's own
    // callback thread).
    let a = cell.pool(1);
    let b = cell.pool(1);
    let b_done = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&b_done);
    let slow = Callbacks::none().on_ok(move |_: u64| {
        std::thread::sleep(Duration::from_millis(200));
        counter.fetch_add(1, Ordering::SeqCst);
    });
    b.apply_async_with(sleep_ms, 1, slow).unwrap();
    b.close();
    let b = Arc::new(b);
    let (tx, rx) = std::sync::mpsc::channel();
    let (b2, seen) = (Arc::clone(&b), Arc::clone(&b_done));
    let joins_b = Callbacks::none().on_ok(move |_: u64| {
        b2.join().unwrap();
        tx.send(seen.load(Ordering::SeqCst)).unwrap();
    });
    a.apply_async_with(sleep_ms, 1, joins_b).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(1));
}

fn terminate_ends_callers_blocked_in_apply_and_map(cell: Cell) {
    let pool = cell.pool(2);
    let dispatched = |n| eventually(Duration::from_secs(20), || pool.stats().dispatched >= n);
    let t = std::thread::scope(|scope| {
        // Each caller waits once a worker holds its task.
        let apply = scope.spawn(|| pool.apply(sleep_ms, 60_000));
        assert!(dispatched(1));
        let map = scope.spawn(|| pool.map_chunked(sleep_ms, vec![60_000; 4], 1));
        assert!(dispatched(2));
        let t = Instant::now();
        pool.terminate();
        assert_eq!(apply.join().unwrap(), Err(Error::Terminated));
        assert_eq!(map.join().unwrap(), Err(Error::Terminated));
        t.elapsed()
    });
    eprintln!("callers released {t:?} after terminate");
    assert!(t < Duration::from_secs(10));
}

fn panics_late_on_zero(x: u64) -> u64 {
    match x {
        0 => {
            std::thread::sleep(Duration::from_millis(300));
            panic!("item zero failed last")
        }
        1 => panic!("item one failed first"),
        x => x,
    }
}

fn map_returns_the_lowest_index_error_after_every_item_ran(cell: Cell) {
    // Python's map raises whichever failure arrived first; ours is the lowest-index item's,
    // here the one that failed last. Like Python, the map does not stop at the first failure.
    let pool = cell.pool(2);
    match pool.map_results(panics_late_on_zero, 0..6u64, Some(1)) {
        Ok(outcomes) => {
            assert!(outcomes[1].is_err());
            assert_eq!(outcomes[2..], [Ok(2), Ok(3), Ok(4), Ok(5)]);
        }
        Err(e) => panic!("{e}"),
    }
    match pool.map_chunked(panics_late_on_zero, 0..6u64, 1) {
        Err(Error::Panicked { message, .. }) => assert!(message.contains("zero"), "{message}"),
        other => panic!("{other:?}"),
    }
}

fn plus_100(i: u64) -> u64 {
    i + 100
}

fn a_panicking_callback_does_not_stop_later_results(cell: Cell) {
    let pool = cell.pool(1);
    let errors = Arc::new(AtomicUsize::new(0));
    let oks = Arc::new(AtomicUsize::new(0));
    let first = pool
        .apply_async_with(
            plus_100,
            1,
            Callbacks::none().on_ok(|_| panic!("callback bug")),
        )
        .unwrap();
    let e = Arc::clone(&errors);
    let second = pool
        .apply_async_with(
            panics_on_odd,
            3,
            Callbacks::none().on_err(move |_| {
                e.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
    let o = Arc::clone(&oks);
    let third = pool
        .apply_async_with(
            plus_100,
            2,
            Callbacks::none().on_ok(move |_| {
                o.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
    assert_eq!(first.get().unwrap(), 101);
    assert!(second.get().is_err());
    assert_eq!(third.get().unwrap(), 102);
    let t = Instant::now();
    while oks.load(Ordering::SeqCst) == 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(errors.load(Ordering::SeqCst), 1);
    assert_eq!(oks.load(Ordering::SeqCst), 1);
}

fn a_callback_may_terminate_its_own_pool(cell: Cell) {
    // A common Python pattern: error_callback=lambda e: pool.terminate(). Found in review
    // to deadlock the callback thread.
    let pool = Arc::new(cell.pool(1));
    let inside = Arc::clone(&pool);
    let r = pool
        .apply_async_with(
            panics_on_odd,
            1,
            Callbacks::none().on_err(move |_| inside.terminate()),
        )
        .unwrap();
    assert!(r.get().is_err());
    let (tx, rx) = std::sync::mpsc::channel();
    let joiner = Arc::clone(&pool);
    std::thread::spawn(move || {
        // The callback runs on its own thread: join once it has terminated the pool.
        let mut joined = joiner.join();
        while joined == Err(Error::StillRunning) {
            std::thread::sleep(Duration::from_millis(5));
            joined = joiner.join();
        }
        tx.send(joined).unwrap();
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)),
        Ok(Ok(())),
        "the pool was terminated and joined"
    );
}

fn lifecycle_errors_are_typed(cell: Cell) {
    // CPython: join before close raises ValueError; apply after close raises ValueError.
    assert!(matches!(
        cell.builder().processes(0).build(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        cell.builder().processes(1).max_tasks_per_child(0).build(),
        Err(Error::InvalidArgument(_))
    ));
    let pool = cell.pool(1);
    assert_eq!(pool.join(), Err(Error::StillRunning));
    assert!(matches!(
        pool.map_chunked(square, [1], 0),
        Err(Error::InvalidArgument(_))
    ));
    pool.close();
    assert_eq!(pool.apply(square, 2), Err(Error::Closed));
    pool.join().unwrap();
    assert!(pool.worker_pids().is_empty());
}

fn close_then_join_waits_for_all_work(cell: Cell) {
    // seed 000: Pool(3), five apply_async, close, join: every task ran.
    let pool = cell.pool(3);
    let rs: Vec<_> = (0..5)
        .map(|_| pool.apply_async(sleep_ms, 50).unwrap())
        .collect();
    pool.close();
    pool.join().unwrap();
    assert!(rs.iter().all(|r| r.ready()));
}

fn terminate_with_many_queued_tasks_returns_promptly(cell: Cell) {
    let pool = cell.pool(2);
    let rs: Vec<_> = (0..10_000)
        .map(|_| pool.apply_async(sleep_ms, 1).unwrap())
        .collect();
    let t = Instant::now();
    pool.terminate();
    pool.join().unwrap();
    eprintln!("terminate + join with 10 000 queued: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(10));
    let terminated = rs
        .iter()
        .filter(|r| r.get() == Err(Error::Terminated))
        .count();
    assert!(terminated > 9_000, "{terminated}");
    assert!(pool.worker_pids().is_empty());
}

fn cancel_stops_work_that_was_not_dispatched(cell: Cell) {
    let pool = cell.pool(1);
    let running = pool.apply_async(sleep_ms, 300).unwrap();
    let queued = pool.apply_async(sleep_ms, 1).unwrap();
    let many = pool.map_async(sleep_ms, vec![1; 50], Some(1)).unwrap();
    assert!(queued.cancel());
    assert!(many.cancel());
    assert_eq!(queued.get(), Err(Error::Cancelled));
    assert_eq!(running.get(), Ok(300), "a running task is not interrupted");
    let results = many.get_results();
    assert_eq!(results.len(), 50);
    assert!(
        results
            .iter()
            .filter(|r| **r == Err(Error::Cancelled))
            .count()
            >= 49
    );
    assert!(!running.cancel(), "nothing left to cancel");
}

fn results_of_a_dropped_pool_are_terminated_errors(cell: Cell) {
    let pool = cell.pool(1);
    let r = pool.apply_async(sleep_ms, 10_000).unwrap();
    drop(pool);
    assert_eq!(r.get(), Err(Error::Terminated));
}

fn imap_streams_in_order_and_imap_unordered_yields_each_once(cell: Cell) {
    let pool = cell.pool(2);
    let ordered: Vec<u64> = pool
        .imap(square, 0..500u64, 7)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ordered, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..500u64, 3)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, ordered);
}

fn an_idle_imap_does_not_starve_other_jobs(cell: Cell) {
    // Found in review: an imap whose iterator is not being consumed held the only pull the
    // scheduler allowed, and a map on the same one-worker pool waited forever.
    let pool = Arc::new(cell.pool(1));
    let idle = pool.imap(square, 0..10u64, 1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let other = Arc::clone(&pool);
    std::thread::spawn(move || {
        let _ = tx.send(other.map(square, [1u64, 2, 3]));
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)),
        Ok(Ok(vec![1, 4, 9]))
    );
    drop(idle);
}

fn imap_over_an_endless_iterator_reads_its_input_lazily(cell: Cell) {
    let pool = cell.pool(2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut results = pool.imap(square, endless, 100).unwrap();
    for i in 0..100_000u64 {
        assert_eq!(results.next().unwrap().unwrap(), i * i);
    }
    let ahead = pulled.load(Ordering::SeqCst) - 100_000;
    eprintln!("after 100 000 results, input read ahead by {ahead} items");
    // A window of 4 x processes chunks of 100 items.
    assert!(
        ahead <= 8 * 100 + 100,
        "read {ahead} items ahead of the consumer"
    );
    drop(results);
    assert_eq!(
        pool.apply(square, 3).unwrap(),
        9,
        "the pool goes on after a dropped imap"
    );
}

/// A value whose encoding always fails.
#[derive(Debug, serde::Deserialize)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value cannot be encoded"))
    }
}

fn takes_unencodable(_: Unencodable) -> u64 {
    7
}

fn returns_unencodable(_: u64) -> Unencodable {
    Unencodable
}

fn encoding_errors_are_typed_and_the_pool_goes_on(cell: Cell) {
    // Arguments are encoded on the caller's thread: the error comes back at once.
    let pool = cell.pool(1);
    let codec = |r: Result<_, Error>| matches!(r, Err(Error::Codec(_)));
    assert!(codec(
        pool.apply(takes_unencodable, Unencodable).map(|_| ())
    ));
    assert!(codec(
        pool.apply_async(takes_unencodable, Unencodable).map(|_| ())
    ));
    assert!(codec(
        pool.map(takes_unencodable, [Unencodable]).map(|_| ())
    ));
    assert!(codec(
        pool.map_async(takes_unencodable, [Unencodable], None)
            .map(|_| ())
    ));
    // A result the worker cannot encode fails its task, not the worker.
    let worker = pool.apply(pid, ()).unwrap();
    assert!(codec(pool.apply(returns_unencodable, 1).map(|_| ())));
    match pool.map_results(returns_unencodable, 0..3u64, Some(1)) {
        Ok(outcomes) => assert!(outcomes.into_iter().all(|r| codec(r.map(|_| ())))),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(pool.apply(square, 3), Ok(9));
    if cell.own_workers() {
        assert_eq!(pool.apply(pid, ()), Ok(worker), "the same worker");
    }
}

fn map_streams_an_input_of_unknown_length_when_given_a_chunksize(cell: Cell) {
    // Only Python's default chunk size needs the input's length; with a chunk size given, an
    // iterator that cannot tell its length is read as the work goes, not all at once first.
    let pool = cell.pool(1);
    let finished_when_read = Mutex::new(Vec::new());
    let input = (0..200u64).filter(|_| true).inspect(|_| {
        finished_when_read
            .lock()
            .unwrap()
            .push(pool.stats().finished)
    });
    let out = pool.map_chunked(square, input, 1).unwrap();
    assert_eq!(out, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    let last = *finished_when_read.lock().unwrap().last().unwrap();
    eprintln!("the last item was read when {last} chunks had finished");
    assert!(last >= 100, "read ahead of the work: {last}");
}

fn grow(data: Bytes) -> Bytes {
    let mut out = data.0;
    out.push(1);
    Bytes(out)
}

fn big_arguments_and_big_results_in_flight_together_do_not_deadlock(cell: Cell) {
    // A reader thread that sent the worker its next (big) chunk while the worker was writing
    // a big result would wait on the worker, which waits on the reader: found in review.
    let pool = cell.pool(1);
    let items: Vec<Bytes> = (0..24).map(|i| Bytes(vec![i as u8; 1 << 20])).collect();
    let r = pool.map_async(grow, items, Some(1)).unwrap();
    let out = r
        .get_timeout(Duration::from_secs(60))
        .expect("the map finished");
    assert_eq!(out.len(), 24);
    assert!(out.iter().all(|b| b.len() == (1 << 20) + 1));
}

fn put_under_lock((q, lock, i): (pool_api::Queue<u64>, pool_api::Lock, u64)) -> u64 {
    let _held = lock.lock().unwrap();
    q.put(i * 2).unwrap();
    i
}

fn handles_travel_in_task_arguments(cell: Cell) {
    let pool = cell.pool(2);
    let q = pool_api::Queue::new().unwrap();
    let lock = pool_api::Lock::new().unwrap();
    let items: Vec<_> = (0..30u64).map(|i| (q.clone(), lock.clone(), i)).collect();
    assert_eq!(
        pool.map(put_under_lock, items).unwrap(),
        (0..30).collect::<Vec<u64>>()
    );
    let mut got: Vec<u64> = (0..30)
        .map(|_| q.get_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..30).map(|i| i * 2).collect::<Vec<u64>>());
    assert_eq!(
        pool.apply(put_under_lock, (q.clone(), lock.clone(), 7))
            .unwrap(),
        7
    );
    assert_eq!(q.get().unwrap(), 14);
}

/// Every other kind of handle, in one task: adds `n` to a shared counter and writes it into
/// shared memory, under the counter's own lock, then answers through a Pipe end and an Event.
fn use_every_handle(
    (counter, memory, mut conn, done, n): (
        pool_api::Value<u64>,
        pool_api::SharedMemory,
        pool_api::Connection,
        pool_api::Event,
        u64,
    ),
) -> u64 {
    let total = counter.update(|c| c + n).unwrap();
    memory.write(0, &total.to_le_bytes()).unwrap();
    conn.send(&total).unwrap();
    done.set();
    total
}

fn more_handles_travel_in_task_arguments(cell: Cell) {
    let pool = cell.pool(2);
    let counter = pool_api::Value::new(0u64).unwrap();
    let memory = pool_api::SharedMemory::new(8).unwrap();
    let (mut ours, theirs) = pool_api::Pipe::duplex().unwrap();
    let done = pool_api::Event::new().unwrap();
    let args = (
        counter.clone(),
        memory.clone_handle(),
        theirs,
        done.clone(),
        5,
    );
    assert_eq!(pool.apply(use_every_handle, args), Ok(5));
    assert!(done.is_set());
    assert_eq!(ours.recv::<u64>().unwrap(), 5);
    assert_eq!(counter.get().unwrap(), 5);
    let mut bytes = [0u8; 8];
    memory.read(0, &mut bytes).unwrap();
    assert_eq!(u64::from_le_bytes(bytes), 5);
}

fn handles_in_task_arguments_are_refused_over_shm(cell: Cell) {
    // The shm transport cannot carry descriptors: a clear error, not a lost task.
    let pool = cell.pool(1);
    let (q, lock) = (
        pool_api::Queue::new().unwrap(),
        pool_api::Lock::new().unwrap(),
    );
    assert!(matches!(
        pool.apply(put_under_lock, (q, lock, 1)),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(pool.apply(square, 4).unwrap(), 16, "the pool goes on");
}

fn init_with_lock((lock, q): (pool_api::Lock, pool_api::Queue<String>)) {
    let _held = lock.lock().unwrap();
    q.put(current_process().name).unwrap();
}

fn initializer_arguments_may_hold_handles(cell: Cell) {
    // Python's classic Pool(initializer=init, initargs=(lock,)).
    let lock = pool_api::Lock::new().unwrap();
    let q = pool_api::Queue::new().unwrap();
    let pool = cell
        .builder()
        .processes(2)
        .initializer(init_with_lock, (lock, q.clone()))
        .build()
        .unwrap();
    assert_eq!(pool.map(square, 0..10u64).unwrap().len(), 10);
    let mut names: Vec<String> = (0..2)
        .map(|_| q.get_timeout(Duration::from_secs(20)).unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["PoolWorker-1", "PoolWorker-2"]);
}

fn sixty_four_mib_arguments_and_results(cell: Cell) {
    let pool = cell.pool(1);
    let big = Bytes(vec![7u8; 64 << 20]);
    assert_eq!(pool.apply(length, big.clone()).unwrap(), 64 << 20);
    let back = pool.apply(echo_bytes, big.clone()).unwrap();
    assert!(back == big);
}

/// Waits until `done` holds, polling, for at most `limit`; whether it did.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

// An `apply`'s caller receives its answer from the worker's channel itself, while the reader
// thread steps aside (the driver's "Receiving"). These cover what that must not break.

/// The death of a worker that is idle between `apply`s, while its reader thread has left the
/// channel to the callers, is still seen, and the worker replaced, without any new work.
fn an_idle_worker_killed_between_applies_is_replaced(cell: Cell) {
    let pool = cell.pool(1);
    let mut victim = 0;
    for _ in 0..20 {
        victim = pool.apply(pid, ()).unwrap();
    }
    assert!(pool.signal_worker(victim, pool_api::Signal::Kill).unwrap());
    assert!(
        eventually(Duration::from_secs(20), || {
            let stats = pool.stats();
            stats.lost == 1 && stats.spawned == 2 && pool.worker_pids().len() == 1
        }),
        "the idle worker's death went unseen: {:?}",
        pool.stats()
    );
    assert_ne!(pool.worker_pids(), [victim]);
    assert_ne!(pool.apply(pid, ()).unwrap(), victim);
}

/// `apply`s and asynchronous work on the same workers: every result arrives, once, right,
/// whoever received it.
fn applies_mixed_with_async_work_all_complete(cell: Cell) {
    let pool = cell.two_chunks_per_worker(2);
    for round in 0..100u64 {
        let pending: Vec<_> = (0..3)
            .map(|k| pool.apply_async(square, round * 10 + k).unwrap())
            .collect();
        assert_eq!(pool.apply(square, round).unwrap(), round * round);
        for (k, result) in (0..3).zip(pending) {
            let x = round * 10 + k;
            assert_eq!(result.get().unwrap(), x * x);
        }
    }
    let map = pool.map_async(square, 0..1000u64, Some(10)).unwrap();
    for x in 0..50u64 {
        assert_eq!(pool.apply(square, x).unwrap(), x * x);
    }
    assert_eq!(
        map.get().unwrap(),
        (0..1000u64).map(|x| x * x).collect::<Vec<_>>()
    );
}

/// Several threads `apply` on one pool at once; a worker may hold chunks of two callers, and
/// one of them receives the other's answer.
fn concurrent_applies_from_several_threads_all_complete(cell: Cell) {
    let pool = cell.two_chunks_per_worker(2);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let pool = &pool;
            scope.spawn(move || {
                for i in 0..300u64 {
                    let x = t * 1000 + i;
                    assert_eq!(pool.apply(square, x).unwrap(), x * x);
                }
            });
        }
    });
    assert_eq!(pool.stats().lost, 0);
}

matrix!(all:
    workers_come_from_the_start_method_asked_for,
    an_idle_worker_killed_between_applies_is_replaced,
    applies_mixed_with_async_work_all_complete,
    concurrent_applies_from_several_threads_all_complete,
    a_panic_that_aborts_the_worker_is_still_reported_as_a_panic,
    map_returns_results_in_input_order,
    seed_square_sum_of_chunks_is_385,
    empty_input_gives_an_empty_result_at_once,
    starmap_and_async_variants,
    get_with_a_timeout_lets_the_task_run_on,
    a_panic_comes_back_from_get_and_the_worker_survives,
    a_worker_that_dies_fails_only_its_task_and_is_replaced,
    large_chunks_keep_every_outcome_in_its_place,
    a_chunk_of_a_lost_worker_fails_as_a_whole_and_the_map_goes_on,
    a_task_over_its_time_limit_is_killed_and_reported,
    maxtasksperchild_replaces_workers_and_the_initializer_runs_in_each,
    a_failing_initializer_is_reported_once_and_not_respawned_forever,
    worker_names_follow_python,
    callbacks_run_once_each_in_the_parent_in_completion_order,
    terminate_runs_no_callback_for_the_work_it_kills,
    terminate_ends_callers_blocked_in_apply_and_map,
    terminate_ends_a_callback_that_waits_on_the_pools_own_work,
    one_pools_callback_waits_for_anothers_callbacks,
    map_returns_the_lowest_index_error_after_every_item_ran,
    a_panicking_callback_does_not_stop_later_results,
    a_callback_may_terminate_its_own_pool,
    lifecycle_errors_are_typed,
    close_then_join_waits_for_all_work,
    terminate_with_many_queued_tasks_returns_promptly,
    cancel_stops_work_that_was_not_dispatched,
    results_of_a_dropped_pool_are_terminated_errors,
    imap_streams_in_order_and_imap_unordered_yields_each_once,
    an_idle_imap_does_not_starve_other_jobs,
    imap_over_an_endless_iterator_reads_its_input_lazily,
    map_streams_an_input_of_unknown_length_when_given_a_chunksize,
    encoding_errors_are_typed_and_the_pool_goes_on,
    big_arguments_and_big_results_in_flight_together_do_not_deadlock,
    sixty_four_mib_arguments_and_results,
);

matrix!(pipe: handles_travel_in_task_arguments, more_handles_travel_in_task_arguments);

/// The behaviours that hold on a cluster pool as they are. Not here, for what a cluster
/// pool does differently (documented in `pool_api::cluster`): those about the pool's own
/// worker processes (start method, pids, names, a worker killed or dying, an aborting panic's
/// exit status, `max_tasks_per_child`, initializers) and handles in arguments (refused); the
/// cluster's own versions of those are in tests/cluster.rs.
mod on_a_cluster {
    cluster!(
        map_returns_results_in_input_order,
        seed_square_sum_of_chunks_is_385,
        empty_input_gives_an_empty_result_at_once,
        starmap_and_async_variants,
        get_with_a_timeout_lets_the_task_run_on,
        a_panic_comes_back_from_get_and_the_worker_survives,
        large_chunks_keep_every_outcome_in_its_place,
        a_task_over_its_time_limit_is_killed_and_reported,
        callbacks_run_once_each_in_the_parent_in_completion_order,
        terminate_runs_no_callback_for_the_work_it_kills,
        terminate_ends_callers_blocked_in_apply_and_map,
        terminate_ends_a_callback_that_waits_on_the_pools_own_work,
        one_pools_callback_waits_for_anothers_callbacks,
        map_returns_the_lowest_index_error_after_every_item_ran,
        a_panicking_callback_does_not_stop_later_results,
        a_callback_may_terminate_its_own_pool,
        lifecycle_errors_are_typed,
        close_then_join_waits_for_all_work,
        terminate_with_many_queued_tasks_returns_promptly,
        cancel_stops_work_that_was_not_dispatched,
        results_of_a_dropped_pool_are_terminated_errors,
        imap_streams_in_order_and_imap_unordered_yields_each_once,
        an_idle_imap_does_not_starve_other_jobs,
        imap_over_an_endless_iterator_reads_its_input_lazily,
        map_streams_an_input_of_unknown_length_when_given_a_chunksize,
        encoding_errors_are_typed_and_the_pool_goes_on,
        big_arguments_and_big_results_in_flight_together_do_not_deadlock,
        applies_mixed_with_async_work_all_complete,
        concurrent_applies_from_several_threads_all_complete,
    );
}

matrix!(all: initializer_arguments_may_hold_handles);

matrix!(shm: handles_in_task_arguments_are_refused_over_shm);

/// A value whose encoding anyone can write, but which decodes only when even: what a peer of
/// another version, or a type with a stricter `Deserialize`, hands a worker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u32")]
struct Even(u32);

impl TryFrom<u32> for Even {
    type Error = String;
    fn try_from(n: u32) -> Result<Even, String> {
        if n % 2 == 0 {
            Ok(Even(n))
        } else {
            Err(format!("{n} is odd"))
        }
    }
}

fn halve(e: Even) -> u32 {
    e.0 / 2
}

#[test]
fn a_decode_error_says_which_value_of_which_type_failed() {
    // CPython's unpickling errors name the class; ours name the item and the type.
    let pool = Pool::new(1).unwrap();
    let outcomes = pool
        .map_results(halve, [Even(2), Even(3)], Some(2))
        .unwrap();
    match &outcomes[..] {
        [Err(Error::Codec(e)), Err(Error::Codec(_))] => {
            let text = e.to_string();
            assert!(text.contains("argument 1"), "{text}");
            assert!(text.contains("Even"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pool.apply(halve, Even(4)), Ok(2), "the worker goes on");
}
