//! The cluster `Pool` (feature `cluster`) against a real `redis-server` (pool-testkit's
//! `RedisServer`) and hosts that are separate processes of this test binary (a `Process`
//! child calling `cluster::serve`), each with worker processes of its own.
//!
//! Time bounds are watchdogs for a shared 2-core machine, not performance claims; tests
//! print what they measured.

#![allow(clippy::print_stderr)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

#[path = "support/cluster.rs"]
mod support;

use pool_api::{Error, Lock, Pool, Process, cluster};
use support::{Cluster, LEASE};

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sleeps, then returns the worker's pid (which host ran what).
fn nap_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Leaves a file in `dir` as it starts (how a test knows which chunks are running), then
/// sleeps and returns the worker's pid.
fn nap_pid_marked((dir, ms): (String, u64)) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::fs::write(format!("{dir}/{}-{nanos}", std::process::id()), b"").unwrap();
    nap_pid(ms)
}

fn fail_on_odd(x: u64) -> u64 {
    assert!(x % 2 == 0, "odd input {x}");
    x
}

fn die(_: ()) -> u32 {
    // SAFETY: kill(2) on this very process.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(10));
    0
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn holds_lock(lock: Lock) -> bool {
    lock.try_acquire().is_ok()
}

#[test]
fn results_and_order_are_those_of_a_local_pool() {
    let cluster = Cluster::new("order", 2, 2);
    let pool = cluster.pool();
    let started = Instant::now();
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    let first = started.elapsed();
    let expected: Vec<u64> = (0..1000).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 0..1000).unwrap(), expected);
    assert_eq!(
        pool.map_chunked(square, 0..100, 7).unwrap(),
        expected[..100]
    );
    let imap: Vec<u64> = pool
        .imap(square, 0..200, 3)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(imap, expected[..200]);
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..200, 1)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    unordered.sort_unstable();
    assert_eq!(unordered, expected[..200]);
    let sums = pool.starmap(add, (0..50).map(|i| (i, 2 * i))).unwrap();
    assert_eq!(sums, (0..50).map(|i| 3 * i).collect::<Vec<_>>());
    let handles: Vec<_> = (0..100u64)
        .map(|x| pool.apply_async(square, x).unwrap())
        .collect();
    for (x, h) in handles.iter().enumerate() {
        assert_eq!(h.get().unwrap(), (x as u64).pow(2));
    }
    let async_map = pool.map_async(square, 0..64, Some(5)).unwrap();
    assert_eq!(async_map.get().unwrap(), expected[..64]);
    // Empty input.
    assert_eq!(pool.map(square, 0..0).unwrap(), Vec::<u64>::new());
    assert_eq!(pool.imap(square, 0..0, 1).unwrap().count(), 0);
    assert_eq!(
        pool.map_async(square, 0..0, None).unwrap().get().unwrap(),
        []
    );
    // Both hosts served.
    let pids: HashSet<u32> = pool
        .map_chunked(nap_pid, vec![20; 40], 1)
        .unwrap()
        .into_iter()
        .collect();
    eprintln!(
        "first apply {first:?}; {} worker pids served 40 naps",
        pids.len()
    );
    assert!(pids.len() >= 2, "{pids:?}");
    pool.close();
    pool.join().unwrap();
}

#[test]
fn errors_and_panics_are_those_of_a_local_pool() {
    let cluster = Cluster::new("errors", 1, 2);
    let pool = cluster.pool();
    match pool.apply(fail_on_odd, 3) {
        Err(Error::Panicked { message, pid, .. }) => {
            assert!(message.contains("odd input 3"), "{message}");
            assert_ne!(pid, 0, "the remote worker's pid");
        }
        other => panic!("{other:?}"),
    }
    // map: the lowest-index failed item's error; map_results: every item's own outcome.
    match pool.map_chunked(fail_on_odd, 0..10, 2) {
        Err(Error::Panicked { message, .. }) => assert!(message.contains("odd input 1")),
        other => panic!("{other:?}"),
    }
    let each = pool.map_results(fail_on_odd, 0..6, Some(1)).unwrap();
    let oks: Vec<bool> = each.iter().map(Result::is_ok).collect();
    assert_eq!(oks, [true, false, true, false, true, false]);
    // The pool goes on.
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    // Handles are local to one machine: refused at submission.
    let lock = Lock::new().unwrap();
    match pool.apply(holds_lock, lock) {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("cluster"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // So are what a cluster pool has not.
    assert!(matches!(
        cluster.builder().initializer(|_: ()| {}, ()).build(),
        Err(Error::InvalidArgument(_))
    ));
    // A second live client of the same name is refused with a typed error.
    assert!(matches!(cluster.builder().build(), Err(Error::Broker(_))));
}

#[test]
fn a_lazy_imap_over_an_endless_input_keeps_redis_flat() {
    let cluster = Cluster::new("endless", 2, 2);
    let pool = cluster.builder().processes(8).build().unwrap();
    let mut con = cluster.redis();
    let mut most = 0usize;
    let mut taken = 0u64;
    for (i, r) in pool.imap(square, 0u64.., 4).unwrap().enumerate() {
        assert_eq!(r.unwrap(), (i as u64).pow(2));
        taken += 1;
        if i % 97 == 0 {
            let len: usize = redis::cmd("XLEN")
                .arg(format!("pool:{{{}}}:chunks", cluster.name))
                .query(&mut con)
                .unwrap();
            most = most.max(len);
            // Slow consumer now and then: the window must hold.
            std::thread::sleep(Duration::from_millis(20));
        }
        if taken == 20_000 {
            break;
        }
    }
    eprintln!("20000 items through an endless imap; at most {most} chunk entries in Redis");
    assert!(
        most <= 8,
        "{most} entries in the chunk stream with a window of 8"
    );
}

#[test]
fn close_join_and_terminate() {
    let cluster = Cluster::new("lifecycle", 1, 2);
    let pool = cluster.pool();
    let handles: Vec<_> = (0..4).map(|_| pool.apply_async(nap, 50).unwrap()).collect();
    assert!(matches!(pool.join(), Err(Error::StillRunning)));
    pool.close();
    assert!(matches!(pool.apply(square, 1), Err(Error::Closed)));
    pool.join().unwrap();
    for h in handles {
        assert_eq!(h.get().unwrap(), 50);
    }
    drop(pool);

    let pool = cluster.pool();
    let long = pool.apply_async(nap, 30_000).unwrap();
    let queued: Vec<_> = (0..20)
        .map(|_| pool.apply_async(nap, 30_000).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    pool.terminate();
    pool.join().unwrap();
    assert_eq!(long.get(), Err(Error::Terminated));
    for h in queued {
        assert_eq!(h.get(), Err(Error::Terminated));
    }
    eprintln!("terminate with 21 long tasks out: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_time_limit_fails_the_chunk_and_the_pool_goes_on() {
    let cluster = Cluster::new("limits", 1, 2);
    let pool = cluster
        .builder()
        .time_limit(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let got = pool.apply(nap, 20_000);
    eprintln!("time limit of 2 s: {got:?} after {:?}", started.elapsed());
    assert!(matches!(got, Err(Error::TimedOut { .. })), "{got:?}");
    // The host's other worker serves meanwhile (the first still runs the long nap).
    assert_eq!(pool.apply(nap, 10).unwrap(), 10);
}

#[test]
fn chaos_a_worker_killed_mid_task_fails_it_with_worker_lost_and_is_replaced() {
    let cluster = Cluster::new("workerdies", 1, 1);
    let pool = cluster.pool();
    let rounds = pool_testkit::scale(1, 5);
    let mut wrong = 0;
    for _ in 0..rounds {
        let before = pool.apply(pid, ()).unwrap();
        let started = Instant::now();
        let got = pool.apply(die, ());
        wrong += u64::from(!matches!(got, Err(Error::WorkerLost { .. })));
        eprintln!("worker lost reported in {:?}", started.elapsed());
        let after = pool.apply(pid, ()).unwrap();
        assert_ne!(before, after, "served by the replacement");
    }
    pool_testkit::report(
        "cluster_worker_killed",
        &[("tasks", rounds * 3), ("wrong", wrong), ("lost", 0)],
    );
    assert_eq!(wrong, 0);
}

/// Host h0 runs two chunks and holds six more queued in Redis when it is SIGKILLed; h1, started
/// then, takes the queued ones at once and the started ones after the lease.
fn kill_a_host_mid_run(name: &str, retries: u32) -> (Vec<Result<u32, Error>>, pool_api::Stats) {
    let mut cluster = Cluster::new(name, 1, 2);
    let pool = cluster.builder().retries(retries).build().unwrap();
    let victim_pids: HashSet<u32> = pool
        .map_chunked(nap_pid, vec![50; 8], 1)
        .unwrap()
        .into_iter()
        .collect();
    let marks = std::env::temp_dir().join(format!("pool-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&marks).unwrap();
    let dir = marks.to_str().unwrap().to_owned();
    let job = pool
        .map_async(nap_pid_marked, vec![(dir, 1_500u64); 8], Some(1))
        .unwrap();
    // h0 is the only host: once two chunks started, its two workers are each running one
    // (for 1.5 s), and those two are what the kill takes.
    let watchdog = Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&marks).unwrap().count() < 2 {
        assert!(Instant::now() < watchdog, "no two chunks started in 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    cluster.kill_host("h0");
    let killed = Instant::now();
    cluster.add_host("h1", 2);
    let results = job.get_results();
    let took = killed.elapsed();
    eprintln!("{name}: 8 outcomes {took:?} after the host was killed (lease {LEASE:?})");
    assert!(took < LEASE * 3 + Duration::from_secs(8), "{took:?}");
    for r in results.iter().flatten() {
        assert!(!victim_pids.contains(r), "ran on the killed host");
    }
    std::fs::remove_dir_all(&marks).unwrap();
    (results, pool.stats())
}

#[test]
fn chaos_a_killed_hosts_chunks_are_reclaimed_with_one_outcome_each() {
    let rounds = pool_testkit::scale(1, 3);
    for round in 0..rounds {
        a_killed_hosts_chunks_are_reclaimed_with_one_outcome_each(&format!("hostdies{round}"));
    }
}

fn a_killed_hosts_chunks_are_reclaimed_with_one_outcome_each(name: &str) {
    let (results, stats) = kill_a_host_mid_run(name, 0);
    pool_testkit::report(
        "cluster_host_killed",
        &[
            ("tasks", 8),
            ("lost", 8 - results.len() as u64),
            ("duplicated", 0),
            (
                "wrong",
                results
                    .iter()
                    .filter(|r| !matches!(r, Ok(_) | Err(Error::WorkerLost { .. })))
                    .count() as u64,
            ),
        ],
    );
    assert_eq!(results.len(), 8);
    let lost = results
        .iter()
        .filter(|r| matches!(r, Err(Error::WorkerLost { .. })))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    eprintln!("lost {lost}, ok {ok}, stats {stats:?}");
    assert_eq!(lost, 2, "{results:?}");
    assert_eq!(ok, 6, "{results:?}");
    assert_eq!(stats.reclaimed, 2);
    assert_eq!(stats.retried, 0);
}

#[test]
fn chaos_with_retries_a_killed_hosts_started_chunks_run_again() {
    let (results, stats) = kill_a_host_mid_run("hostretries", 1);
    pool_testkit::report(
        "cluster_host_killed_retries",
        &[
            ("tasks", 8),
            ("lost", 8 - results.len() as u64),
            (
                "wrong",
                results.iter().filter(|r| r.is_err()).count() as u64,
            ),
        ],
    );
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(results.len(), 8);
    assert_eq!(stats.reclaimed, 2);
    assert_eq!(stats.retried, 2);
}

#[test]
fn chaos_redis_killed_mid_job_is_a_typed_error_in_bounded_time_and_a_new_pool_works_after() {
    let mut cluster = Cluster::new("redisdies", 1, 2);
    let pool = cluster.pool();
    assert_eq!(pool.apply(square, 2).unwrap(), 4);
    let job = pool.map_async(nap, vec![2_000u64; 4], Some(1)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    cluster.redis.kill();
    let killed = Instant::now();
    let results = job.get_results();
    let took = killed.elapsed();
    eprintln!("redis killed: {} outcomes in {took:?}", results.len());
    assert_eq!(results.len(), 4);
    assert!(
        results.iter().all(|r| matches!(r, Err(Error::Broker(_)))),
        "{results:?}"
    );
    pool_testkit::report(
        "cluster_redis_killed",
        &[
            ("tasks", 4),
            ("lost", 4 - results.len() as u64),
            ("hangs", u64::from(took >= Duration::from_secs(10))),
        ],
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let e = pool.apply(square, 3).unwrap_err();
    assert!(matches!(e, Error::Broker(_)), "{e:?}");
    assert!(std::error::Error::source(&e).is_some());
    drop(pool);
    cluster.redis.restart();
    // The host reconnects by itself; a new pool serves.
    let pool = cluster.pool();
    assert_eq!(pool.map(square, 0..10).unwrap()[9], 81);
}

#[test]
fn many_apply_async_in_a_row_each_end_exactly_once() {
    // Submissions made while others are in flight share round trips (one pipeline per
    // batch); each still ends once, with its own result, and nothing is left in Redis.
    let cluster = Cluster::new("burst", 1, 2);
    let pool = cluster.builder().processes(8).build().unwrap();
    let handles: Vec<_> = (0..2_000u64)
        .map(|i| pool.apply_async(square, i).unwrap())
        .collect();
    for (i, h) in (0u64..).zip(handles) {
        assert_eq!(h.get().unwrap(), i * i);
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.dispatched, stats.finished),
        (2_000, 2_000),
        "{stats:?}"
    );
    assert_eq!(stats.failed, 0, "{stats:?}");
    // A lone apply after the burst goes at once and ends once too.
    assert_eq!(pool.apply(square, 7).unwrap(), 49);
    let mut con = cluster.redis();
    let len: usize = redis::cmd("XLEN")
        .arg("pool:{burst}:chunks")
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 0);
}

#[test]
fn terminate_while_submissions_are_queued_sends_none_after_it() {
    // No host serves this name: every chunk sent stays in the stream until forgotten. A
    // burst of apply_async keeps the outbox busy while terminate comes; once terminate
    // returns, the chunks killed were either never sent or deleted, and nothing more comes.
    let cluster = Cluster::new("queued", 0, 0);
    let mut con = cluster.redis();
    for round in 0..5 {
        let pool = cluster.builder().processes(16).build().unwrap();
        let handles: Vec<_> = (0..200)
            .map(|_| pool.apply_async(nap, 10).unwrap())
            .collect();
        pool.terminate();
        let xlen = |con: &mut redis::Connection| -> usize {
            redis::cmd("XLEN")
                .arg("pool:{queued}:chunks")
                .query(con)
                .unwrap()
        };
        assert_eq!(
            xlen(&mut con),
            0,
            "round {round}: chunks left after terminate"
        );
        pool.join().unwrap();
        for h in handles {
            assert_eq!(h.get(), Err(Error::Terminated), "round {round}");
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            xlen(&mut con),
            0,
            "round {round}: a chunk sent after terminate"
        );
        drop(pool);
    }
}

#[test]
fn a_job_with_no_host_of_its_build_fails_after_the_start_timeout_naming_both_fingerprints() {
    let mut cluster = Cluster::new("foreign", 0, 0);
    let pool = cluster
        .builder()
        .start_timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let ours = cluster::fingerprint().unwrap().to_string();
    // No host at all.
    let started = Instant::now();
    match pool.apply(square, 3) {
        Err(Error::NoCompatibleWorker {
            ours: o, others, ..
        }) => {
            assert_eq!((o, others), (ours.clone(), Vec::<String>::new()));
        }
        other => panic!("expected NoCompatibleWorker, got {other:?}"),
    }
    eprintln!("no host: failed after {:?}", started.elapsed());
    // Only a host of another build: it leaves the chunk parked, and the error names its
    // fingerprint beside ours.
    cluster.add_foreign_host();
    let theirs = cluster::Fingerprint([9; 32]).to_string();
    let err = pool.map(square, 0..4u64).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, Error::NoCompatibleWorker { others, .. } if *others == [theirs.clone()]),
        "{err:?}"
    );
    assert!(text.contains(&ours) && text.contains(&theirs), "{text}");
    // A host of this build joins: the pool works, and a task longer than the start timeout
    // (its host busy, not missing) is not failed.
    cluster.add_host("h0", 1);
    assert_eq!(pool.apply(square, 3), Ok(9));
    assert_eq!(pool.apply(nap, 2000), Ok(2000));
}

/// A client in a process of its own, for killing: it submits a long map to pool `name` with
/// a 1 s key TTL and waits.
fn client_main(args: (String, String)) -> bool {
    let (url, name) = args;
    let pool = Pool::builder()
        .redis(url)
        .name(name)
        .key_ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let job = pool.map_async(nap, vec![100u64; 200], Some(1)).unwrap();
    job.get().is_ok()
}

fn pool_keys(con: &mut redis::Connection, name: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(format!("pool:{{{name}}}:*"))
        .query(con)
        .unwrap()
}

#[test]
fn chaos_a_killed_client_leaves_idle_hosts_and_no_keys_after_its_ttl() {
    let cluster = Cluster::new("clientdies", 2, 2);
    let mut con = cluster.redis();
    let mut client = Process::new(client_main, (cluster.url(), "clientdies".to_string()))
        .unwrap()
        .start()
        .unwrap();
    // Until the hosts run its chunks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool_keys(&mut con, "clientdies").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the client never set up its pool"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    client.kill().unwrap();
    client.wait().unwrap();
    let killed = Instant::now();
    // The TTL (1 s), then nothing: the hosts' outcomes of chunks still running are not
    // written into new keys (NOMKSTREAM, announcements only while the meta hash exists).
    let mut gone = None;
    while Instant::now() < killed + Duration::from_secs(15) {
        if pool_keys(&mut con, "clientdies").is_empty() {
            gone = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("keys gone {gone:?} after the client was killed");
    std::thread::sleep(Duration::from_millis(500));
    let leaked = pool_keys(&mut con, "clientdies");
    pool_testkit::report(
        "cluster_client_killed",
        &[
            ("hangs", u64::from(gone.is_none())),
            ("keys_leaked", leaked.len() as u64),
        ],
    );
    assert!(gone.is_some(), "the keys outlived their TTL");
    assert!(leaked.is_empty(), "{leaked:?}");
    // The hosts went idle and serve the next client of the name.
    let pool = cluster.pool();
    assert_eq!(pool.map(square, 0..10).unwrap()[9], 81);
}

#[test]
fn pool_cluster_in_the_environment_turns_a_program_into_a_host_before_its_main() {
    // This very test binary, started with POOL_CLUSTER: were its `main` (libtest) to run,
    // it would run tests, not serve; the pool's work done by its workers shows it served.
    let cluster = Cluster::new("envhost", 0, 0);
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .env(cluster::CLUSTER_ENV, cluster.url())
        .env("POOL_CLUSTER_NAME", "envhost")
        .env("POOL_CLUSTER_PROCESSES", "2")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pool = cluster
        .builder()
        .start_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let pids: HashSet<u32> = pool
        .map_chunked(nap_pid, vec![30u64; 20], 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        !pids.contains(&host.id()),
        "run by the host's workers, not by itself"
    );
    assert_eq!(pool.map(square, 0..100u64).unwrap()[99], 99 * 99);
    drop(pool);
    host.kill().unwrap();
    host.wait().unwrap();
    let mut out = String::new();
    use std::io::Read;
    host.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!out.contains("running"), "libtest's main ran: {out}");
    // A bad process count is refused with code 2 before anything starts.
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .env(cluster::CLUSTER_ENV, cluster.url())
        .env("POOL_CLUSTER_PROCESSES", "none")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

#[test]
fn chaos_garbage_written_into_the_pools_streams_is_dropped_and_the_pool_goes_on() {
    // Anyone who can write to Redis can write anything: entries a plain client writes into
    // both streams are dropped (a chunk's with a `malformed` outcome when its place is
    // readable, a result's with a warning), and neither the hosts nor the pool fail.
    let mut cluster = Cluster::new("garbage", 1, 2);
    let pool = cluster.pool();
    assert_eq!(pool.map(square, 0..10u64).unwrap()[9], 81);
    let mut con = cluster.redis();
    let junk: [&[&[u8]]; 5] = [
        &[
            b"h",
            &[0x3f, 0x42, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            b"d",
            b"",
        ],
        &[b"v", b"1", b"job", b"x"],
        &[b"data", &[0xff; 4096]],
        &[b"", b""],
        // Job 1, index 1 (little-endian), format version 9.
        &[b"h", &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9], b"d", b""],
    ];
    let mut written = 0u64;
    for stream in ["chunks", "results"] {
        for fields in junk {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(format!("pool:{{garbage}}:{stream}")).arg("*");
            for f in fields {
                cmd.arg(*f);
            }
            let _: String = cmd.query(&mut con).unwrap();
            written += 1;
        }
    }
    // A forged entry that names a chunk of this pool (job 1, index 1: the next map's second
    // chunk) gets that chunk a typed error (`malformed`, as Codec); any other outcome, or a
    // wrong value, counts as wrong.
    let out = pool.map_results(square, 0..100u64, Some(1)).unwrap();
    let wrong = (0u64..)
        .zip(&out)
        .filter(|(i, r)| match r {
            Ok(v) => i * i != *v,
            Err(e) => !matches!(e, Error::Codec(_)),
        })
        .count() as u64;
    let forged = out.iter().filter(|r| r.is_err()).count();
    eprintln!("chunks failed by forged entries: {forged}");
    assert!(forged <= 1, "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left: u64 = u64::MAX;
    while Instant::now() < deadline {
        left = redis::cmd("XLEN")
            .arg("pool:{garbage}:chunks")
            .query(&mut con)
            .unwrap();
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = cluster.hosts_alive();
    pool_testkit::report(
        "cluster_garbage",
        &[
            ("entries", written),
            ("wrong", wrong),
            ("panics", u64::from(!alive)),
            ("hangs", u64::from(left != 0)),
        ],
    );
    assert_eq!(wrong, 0);
    assert!(alive, "a host died of garbage");
    assert_eq!(left, 0, "garbage chunks were not dropped");
    assert_eq!(pool.apply(square, 7), Ok(49));
    assert_eq!(pool.map(square, 0..100u64).unwrap()[99], 9801);
}
