//! Queues across real processes. Ported behaviours name their source: CPython's
//! `Lib/test/_test_multiprocessing.py` (`_TestQueue`) and seed 002.

#![allow(clippy::print_stderr)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pool_api::{Bytes, JoinableQueue, Process, ProcessHandle, Queue, QueueError, SimpleQueue};

const GENEROUS: Duration = Duration::from_secs(20);

fn write(q: Queue<String>) {
    // seed 002: for value in ['A', 'B', 'C']: q.put(value); time.sleep(random.random())
    for (i, value) in ["A", "B", "C"].into_iter().enumerate() {
        q.put(value.to_string()).unwrap();
        std::thread::sleep(Duration::from_millis(10 * i as u64));
    }
}

fn read((q, seen): (Queue<String>, Queue<String>)) {
    loop {
        let value = q.get().unwrap();
        seen.put(format!("Get {value} from queue.")).unwrap();
    }
}

#[test]
fn seed_writer_and_reader_processes() {
    let q = Queue::new().unwrap();
    let seen = Queue::new().unwrap();
    let mut pw = Process::new(write, q.clone()).unwrap().start().unwrap();
    let mut pr = Process::new(read, (q.clone(), seen.clone()))
        .unwrap()
        .start()
        .unwrap();
    pw.wait().unwrap();
    let got: Vec<String> = (0..3)
        .map(|_| seen.get_timeout(GENEROUS).unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "Get A from queue.",
            "Get B from queue.",
            "Get C from queue."
        ]
    );
    // The reader loops forever: it can only be terminated.
    pr.terminate().unwrap();
    pr.wait().unwrap();
    assert_eq!(pr.exitcode(), Some(-15));
}

fn consume((q, out, n): (Queue<u32>, Queue<u32>, u32)) {
    for _ in 0..n {
        out.put(q.get().unwrap()).unwrap();
    }
}

fn produce((q, from, to): (Queue<u32>, u32, u32)) {
    for i in from..to {
        q.put(i).unwrap();
    }
}

#[test]
fn many_producers_and_consumers_lose_and_duplicate_nothing() {
    let q = Queue::new().unwrap();
    let out = Queue::new().unwrap();
    let mut ps: Vec<Process> = Vec::new();
    for c in 0..3 {
        let _ = c;
        ps.push(Process::new(consume, (q.clone(), out.clone(), 1000)).unwrap());
    }
    for p in 0..3u32 {
        ps.push(Process::new(produce, (q.clone(), p * 1000, (p + 1) * 1000)).unwrap());
    }
    let mut ps: Vec<ProcessHandle> = ps.into_iter().map(|p| p.start().unwrap()).collect();
    let mut got = BTreeSet::new();
    for _ in 0..3000 {
        assert!(
            got.insert(out.get_timeout(GENEROUS).unwrap()),
            "duplicate item"
        );
    }
    assert_eq!(got, (0..3000).collect());
    for p in &mut ps {
        p.wait().unwrap();
        assert_eq!(p.exitcode(), Some(0));
    }
    assert!(q.is_empty() && out.is_empty());
}

fn put_and_exit_at_once((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

#[test]
fn a_producer_that_exits_right_after_put_loses_nothing() {
    // CPython's "joining processes that use queues" pitfall cannot happen: no feeder thread.
    let q = Queue::new().unwrap();
    let mut p = Process::new(put_and_exit_at_once, (q.clone(), 5000))
        .unwrap()
        .start()
        .unwrap();
    assert!(
        p.wait_timeout(GENEROUS).unwrap().is_some(),
        "the producer exits without waiting for a consumer"
    );
    assert_eq!(q.len(), 5000);
    let got: Vec<u64> = (0..5000).map(|_| q.try_get().unwrap()).collect();
    assert_eq!(got, (0..5000).collect::<Vec<_>>());
}

fn put_blocks_and_exit((q, blocks): (Queue<pool_api::Bytes>, u8)) {
    for i in 0..blocks {
        q.put(pool_api::Bytes(vec![i; 1 << 20])).unwrap();
    }
}

#[test]
fn a_producer_of_a_hundred_mib_nobody_reads_yet_exits_and_loses_nothing() {
    // The CPython pitfall needs more than a pipe's buffer in flight (its feeder thread then
    // blocks the producer's exit until someone reads): here 128 MiB, with no consumer.
    let q = Queue::new().unwrap();
    let mut p = Process::new(put_blocks_and_exit, (q.clone(), 128))
        .unwrap()
        .start()
        .unwrap();
    assert!(p.wait_timeout(GENEROUS).unwrap().is_some());
    assert_eq!(p.exitcode(), Some(0));
    for i in 0..128u8 {
        let block = q.try_get().unwrap();
        assert!(
            block.len() == 1 << 20 && block.iter().all(|b| *b == i),
            "block {i}"
        );
    }
    assert!(q.is_empty());
}

#[test]
fn bounded_queues_timeouts_and_close() {
    // CPython _TestQueue.test_put / test_get: Full, Empty, timeouts, qsize/empty/full.
    let mut q = Queue::bounded(2).unwrap();
    assert!(q.is_empty() && !q.is_full());
    q.put(1u8).unwrap();
    q.try_put(2).unwrap();
    assert!(q.is_full());
    assert!(matches!(q.try_put(3), Err(e) if *e.kind() == QueueError::Full && *e.item() == 3));
    let t = Instant::now();
    assert!(matches!(
        q.put_timeout(4, Duration::from_millis(40)),
        Err(e) if *e.kind() == QueueError::Full && *e.item() == 4
    ));
    assert!(t.elapsed() >= Duration::from_millis(40));
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(q.get().unwrap(), 2);
    assert!(matches!(q.try_get(), Err(QueueError::Empty)));
    assert!(matches!(
        q.get_timeout(Duration::from_millis(30)),
        Err(QueueError::Empty)
    ));
    let other = q.clone();
    q.close();
    assert_eq!(q.put(5).unwrap_err().kind(), &QueueError::Closed);
    assert!(matches!(q.get(), Err(QueueError::Closed)));
    other.put(6).unwrap();
    assert_eq!(other.get().unwrap(), 6);
}

#[test]
fn giving_consumed_memory_back_never_touches_queued_items() {
    // Found in review: when the consumer crossed a 2 MiB boundary, the range given back
    // could already hold new items written after the ring wrapped.
    let q: Queue<Bytes> = Queue::with_limits(0, 1 << 20).unwrap();
    let mut next_in = 0u32;
    for next_out in 0..40u32 {
        // Keep the ring well filled while the consumer moves across boundaries.
        while q.len() < 6 {
            q.put(Bytes(vec![(next_in % 251) as u8; 100_000])).unwrap();
            next_in += 1;
        }
        let item = q.get().unwrap();
        assert_eq!(item.len(), 100_000);
        assert!(
            item.iter().all(|b| *b == (next_out % 251) as u8),
            "item {next_out} was overwritten"
        );
    }
}

#[test]
fn items_larger_than_small_messages_and_wrapping_the_ring() {
    let q: Queue<Bytes> = Queue::with_limits(0, 1 << 20).unwrap();
    for round in 0..40u8 {
        let item = Bytes(vec![round; 300_000]);
        q.put(item.clone()).unwrap();
        assert_eq!(q.get().unwrap(), item);
    }
    let refused = q.put(Bytes(vec![0; 2 << 20])).unwrap_err();
    assert!(matches!(refused.kind(), QueueError::Encode(_)));
    assert_eq!(
        refused.into_item().0.len(),
        2 << 20,
        "the item is handed back"
    );
}

fn work_and_mark_done((q, n): (JoinableQueue<u32>, u32)) {
    for _ in 0..n {
        let _ = q.get().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        q.task_done().unwrap();
    }
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    // CPython _TestQueue.test_task_done.
    let q = JoinableQueue::new().unwrap();
    for i in 0..10 {
        q.put(i).unwrap();
    }
    assert!(!q.join_timeout(Duration::from_millis(20)).unwrap());
    let mut p = Process::new(work_and_mark_done, (q.clone(), 10))
        .unwrap()
        .start()
        .unwrap();
    assert!(q.join_timeout(GENEROUS).unwrap());
    p.wait().unwrap();
    assert!(matches!(q.task_done(), Err(QueueError::TooManyTaskDone)));
    let simple = SimpleQueue::new().unwrap();
    simple.put("x".to_string()).unwrap();
    assert!(!simple.is_empty());
    assert_eq!(simple.get().unwrap(), "x");
}

#[test]
fn a_timeout_too_long_for_the_clock_waits_as_long_as_needed() {
    // `Instant::now() + Duration::MAX` overflows: such a timeout means no deadline.
    let q: Queue<u32> = Queue::new().unwrap();
    q.put(7).unwrap();
    assert_eq!(q.get_timeout(Duration::MAX).unwrap(), 7);
    let e = pool_api::Event::new().unwrap();
    e.set();
    assert!(e.wait_timeout(Duration::MAX).unwrap());
}

/// The sizes of this process's mappings of queue memory (from `/proc/self/maps`).
fn queue_mappings() -> Vec<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.contains("memfd:pool-queue"))
        .map(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (from, to) = range.split_once('-').unwrap();
            u64::from_str_radix(to, 16).unwrap() - u64::from_str_radix(from, 16).unwrap()
        })
        .collect()
}

fn vm_size_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Puts `n` numbers through each queue and takes them back, in order.
fn round_trip<Q>(queues: &[Q], n: u64, put: impl Fn(&Q, u64), get: impl Fn(&Q) -> u64) -> u64 {
    for q in queues {
        for i in 0..n {
            put(q, i);
        }
    }
    for q in queues {
        for i in 0..n {
            assert_eq!(get(q), i);
        }
    }
    queues.len() as u64 * n
}

/// Under an address-space limit of `limit_gib` GiB: `per_type` queues of each type, items
/// through all of them, and one queue grown to 64 MiB. Reports the items it moved, or what
/// failed.
/// What a child reports: its figures, or what failed.
type Report<T> = Queue<Result<T, String>>;

fn queues_under_an_address_space_limit(
    (limit_gib, per_type, out): (u64, usize, Report<(u64, u64)>),
) {
    let start_kib = vm_size_kib();
    let limit = limit_gib << 30;
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setting this process's own limit from a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlimit) }, 0);
    let run = || -> Result<u64, String> {
        let err = |e: QueueError| e.to_string();
        let queues = (0..per_type)
            .map(|_| Queue::new())
            .collect::<Result<Vec<Queue<u64>>, _>>()
            .map_err(err)?;
        let simple = (0..per_type)
            .map(|_| SimpleQueue::new())
            .collect::<Result<Vec<SimpleQueue<u64>>, _>>()
            .map_err(err)?;
        let joinable = (0..per_type)
            .map(|_| JoinableQueue::new())
            .collect::<Result<Vec<JoinableQueue<u64>>, _>>()
            .map_err(err)?;
        let mut moved = round_trip(&queues, 100, |q, i| q.put(i).unwrap(), |q| q.get().unwrap());
        moved += round_trip(&simple, 100, |q, i| q.put(i).unwrap(), |q| q.get().unwrap());
        moved += round_trip(
            &joinable,
            100,
            |q, i| q.put(i).unwrap(),
            |q| {
                let v = q.get().unwrap();
                q.task_done().unwrap();
                v
            },
        );
        assert!(joinable.iter().all(|q| q.join_timeout(GENEROUS).unwrap()));
        let big: Queue<Bytes> = Queue::new().map_err(|e| e.to_string())?;
        for i in 0..64u8 {
            big.put(Bytes(vec![i; 1 << 20]))
                .map_err(|e| e.to_string())?;
        }
        for i in 0..64u8 {
            assert_eq!(big.get().unwrap().0, vec![i; 1 << 20]);
        }
        Ok(moved + 64)
    };
    let outcome = run().map(|moved| (moved, start_kib));
    out.put(outcome).unwrap();
}

#[test]
fn hundreds_of_queues_of_every_type_work_under_a_2_gib_address_space_limit() {
    // The issue: each queue reserved 8 GiB of address space, so under `ulimit -v 4G` (HPC
    // clusters, containers) not even one could be made.
    let out = Queue::new().unwrap();
    let mut child = Process::new(queues_under_an_address_space_limit, (2, 100, out.clone()))
        .unwrap()
        .start()
        .unwrap();
    let outcome = out
        .get_timeout(Duration::from_secs(120))
        .expect("the limited child reports");
    assert!(child.wait_timeout(GENEROUS).unwrap().is_some());
    let (moved, start_kib) = outcome.expect("queues work under the limit");
    eprintln!("moved {moved} items; the child started with {start_kib} KiB of address space");
    assert_eq!(moved, 3 * 100 * 100 + 64);
    assert_eq!(child.exitcode(), Some(0));
}

/// A marked item: its sequence number, then a fill byte, over a size that varies from 8 bytes
/// to 1 MiB so that records wrap the ring at every offset.
fn marked(seq: u64) -> Bytes {
    let size = 8 + (seq * 7919 % (1 << 20)) as usize;
    let mut item = vec![(seq % 251) as u8; size];
    item[..8].copy_from_slice(&seq.to_le_bytes());
    Bytes(item)
}

fn is_marked(seq: u64, item: &Bytes) -> bool {
    let fill = (seq % 251) as u8;
    item.len() == 8 + (seq * 7919 % (1 << 20)) as usize
        && item[..8] == seq.to_le_bytes()
        && item[8..].iter().step_by(4093).all(|b| *b == fill)
        && item.last().is_some_and(|b| item.len() == 8 || *b == fill)
}

/// Takes as many items as each credit says, checking their order, until a credit of 0;
/// reports how many it took and its largest mapping of queue memory, at the start and the end.
fn consume_on_credit((q, credits, out): (Queue<Bytes>, Queue<u64>, Report<[u64; 3]>)) {
    let first_mapping = queue_mappings().into_iter().max().unwrap_or(0);
    let mut next = 0u64;
    let outcome = loop {
        let n = credits.get().unwrap();
        if n == 0 {
            let last_mapping = queue_mappings().into_iter().max().unwrap_or(0);
            break Ok([next, first_mapping, last_mapping]);
        }
        let taken = (0..n).try_for_each(|_| {
            let item = q.get().map_err(|e| e.to_string())?;
            if !is_marked(next, &item) {
                return Err(format!("item {next} is not the one put (out of order?)"));
            }
            next += 1;
            Ok(())
        });
        if let Err(e) = taken {
            break Err(e);
        }
    };
    out.put(outcome).unwrap();
}

#[test]
fn a_ring_grows_to_hundreds_of_mib_while_another_process_consumes_in_order() {
    let q: Queue<Bytes> = Queue::new().unwrap();
    let credits = Queue::new().unwrap();
    let out = Queue::new().unwrap();
    let mut consumer = Process::new(consume_on_credit, (q.clone(), credits.clone(), out.clone()))
        .unwrap()
        .start()
        .unwrap();
    // Each round puts 100 items (about 50 MiB) and lets the consumer take 50 of them while
    // the next round is put: what is queued grows by about 25 MiB a round, wrapping the ring
    // as the consumer moves its head, and the ring grows under both processes.
    let (rounds, per_round) = (12u64, 100u64);
    let mut seq = 0;
    for _ in 0..rounds {
        credits.put(per_round / 2).unwrap();
        for _ in 0..per_round {
            q.put(marked(seq)).unwrap();
            seq += 1;
        }
    }
    // At least this many bytes were queued at once (the consumer had no more credit).
    let queued_at_least: u64 = (rounds * per_round / 2..rounds * per_round)
        .map(|s| marked(s).len() as u64)
        .sum();
    credits.put(rounds * per_round / 2).unwrap();
    credits.put(0).unwrap();
    let [taken, first_mapping, last_mapping] = out
        .get_timeout(Duration::from_secs(120))
        .expect("the consumer reports")
        .expect("every item came in order");
    assert!(consumer.wait_timeout(GENEROUS).unwrap().is_some());
    eprintln!(
        "{taken} items; at least {} MiB queued at once; the consumer's largest queue mapping \
         grew from {} KiB to {} MiB",
        queued_at_least >> 20,
        first_mapping >> 10,
        last_mapping >> 20
    );
    assert_eq!(taken, rounds * per_round);
    assert!(queued_at_least > 256 << 20);
    assert!(
        first_mapping <= 1 << 20,
        "a new queue reserves {first_mapping} bytes"
    );
    assert!(
        last_mapping >= queued_at_least && last_mapping < 2 * queued_at_least,
        "the ring grew with what it held: {last_mapping} bytes"
    );
    assert!(q.is_empty());
}
