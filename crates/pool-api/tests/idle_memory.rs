//! An idle worker's private memory (`Private_Dirty` in `/proc/PID/smaps_rollup`): small right
//! after start, and small again once a large task has finished (issue 22: at most 2 MB).
//!
//! Memory figures do not depend on timing: a worker's private pages are what it touched, and
//! an idle worker touches nothing more. The bound keeps a margin over what a worker needs
//! (its stack, its heap's first arenas, relocated data of the executable).

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use pool_api::{Bytes, Pool, TransportKind};

/// The most private memory an idle worker may hold, in KiB (the 2 MB).
const BOUND_KIB: u64 = 2000;
/// How much more than when it was fresh an idle worker may hold after large tasks, in KiB.
/// Without the C library's free memory given back, it kept about 1 MiB more.
const GROWTH_KIB: u64 = 512;

/// One field of `/proc/PID/smaps_rollup`, in KiB.
fn rollup_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .map_or(0, |kib| kib.trim().parse().expect("a number of kB"))
}

/// The mappings of `pid` holding the most private dirty memory, for the failure message.
fn largest_mappings(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut header = "";
    let mut found: Vec<(u64, String)> = Vec::new();
    for line in text.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            header = line;
        } else if let Some(kib) = line.strip_prefix("Private_Dirty:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            found.push((kib, header.to_owned()));
        }
    }
    found.sort_by_key(|(kib, _)| std::cmp::Reverse(*kib));
    found
        .iter()
        .take(5)
        .map(|(kib, map)| format!("\n  {kib} kB  {map}"))
        .collect()
}

/// Each worker's private memory once it is idle, asserted within `bound_kib`. An idle worker
/// gives its large buffers back after a short wait (milliseconds), so the figure is read again
/// until it is within the bound or a generous time has passed: what is asserted is the memory,
/// never how soon.
fn private_dirty(pool: &Pool, bound_kib: u64, when: &str) -> u64 {
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 1, "one worker");
    let pid = pids[0];
    let give_up = Instant::now() + Duration::from_secs(10);
    let mut kib = rollup_kib(pid, "Private_Dirty:");
    while kib > bound_kib && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(20));
        kib = rollup_kib(pid, "Private_Dirty:");
    }
    assert!(
        kib <= bound_kib,
        "{when}: worker {pid} holds {kib} KiB of private memory (bound {bound_kib} KiB); \
         largest mappings:{}",
        largest_mappings(pid)
    );
    kib
}

fn ping(x: u32) -> u32 {
    x + 1
}

fn echo(data: Bytes) -> Bytes {
    data
}

fn echo_vec(data: Vec<u8>) -> Vec<u8> {
    data
}

fn idle_worker_memory_stays_small(kind: TransportKind) {
    let pool = Pool::builder()
        .processes(1)
        .transport(kind)
        .build()
        .expect("pool");
    // The worker has answered once: it is started, not starting.
    assert_eq!(pool.apply(ping, 1).unwrap(), 2);
    let fresh = private_dirty(&pool, BOUND_KIB, "right after start");
    // What a large task may leave behind once the worker is idle again: little more than a
    // fresh worker holds (its first small allocations), not its buffers, nor what the C
    // library kept of the task's freed values.
    let after_bound = BOUND_KIB.min(fresh + GROWTH_KIB);
    // One task of 64 MiB, arguments and results (one chunk).
    let big = Bytes(vec![7u8; 64 << 20]);
    assert_eq!(pool.apply(echo, big).unwrap().len(), 64 << 20);
    // The worker has sent its results; the next (small) task finds it idle.
    assert_eq!(pool.apply(ping, 2).unwrap(), 3);
    let after = private_dirty(&pool, after_bound, "after a 64 MiB task");
    // Chunks of many 1 MiB items (as W4's chunks are), as `Vec<u8>`, twice.
    let mut after_chunks = Vec::new();
    for round in 0..2 {
        let items: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 1 << 20]).collect();
        let back = pool.map_chunked(echo_vec, items, 16).unwrap();
        assert_eq!(back.len(), 16);
        assert!(
            back.iter()
                .enumerate()
                .all(|(i, b)| b == &vec![i as u8; 1 << 20])
        );
        assert_eq!(pool.apply(ping, 3).unwrap(), 4);
        after_chunks.push(private_dirty(
            &pool,
            after_bound,
            &format!("after chunk {round} of 16 x 1 MiB"),
        ));
    }
    eprintln!(
        "{kind:?}: private dirty KiB fresh {fresh}, after 64 MiB {after}, after 16 x 1 MiB {after_chunks:?}"
    );
}

#[test]
fn an_idle_worker_holds_little_private_memory_over_pipe() {
    idle_worker_memory_stays_small(TransportKind::Pipe);
}

#[test]
fn an_idle_worker_holds_little_private_memory_over_shm() {
    idle_worker_memory_stays_small(TransportKind::Shm);
}
