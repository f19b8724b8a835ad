//! The primitives across processes (the benchmark issue's W5–W8): Pipe messages of 1 KiB and
//! of 64 MiB received into a reused buffer, a Queue of small items from a producer process,
//! a Lock contended by two processes, and Process, ProcessHandle start + join.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pool_api::{
    Lock, Pipe, Process, ProcessHandle, Queue, SimpleQueue, StartMethod, TransportKind, Value,
};
use pool_benches::{Round, one_way_sink, pipe_sink, secs};

fn w5_pipe(c: &mut Criterion) {
    let mut group = c.benchmark_group("w5_pipe");
    group.sample_size(10).measurement_time(secs(5));
    let mut sides: Vec<(&str, Box<dyn Round>)> = Vec::new();
    let mut children = Vec::new();
    // A socket pair (the ids without a suffix, as before shared memory existed) and shared
    // memory.
    for (kind, duplex_id, one_way_id) in [
        (TransportKind::Pipe, "duplex", "one_way_pipe"),
        (TransportKind::Shm, "duplex_shm", "one_way_shm"),
    ] {
        let (parent, child) = Pipe::duplex_over(kind).unwrap();
        let duplex = Process::new(pipe_sink, child).unwrap().start().unwrap();
        let (inbox, outbox) = Pipe::one_way_over(kind).unwrap();
        let (acks, ack) = Pipe::one_way_over(kind).unwrap();
        let one_way = Process::new(one_way_sink, (inbox, ack))
            .unwrap()
            .start()
            .unwrap();
        sides.push((duplex_id, Box::new(parent)));
        sides.push((one_way_id, Box::new((outbox, acks))));
        children.extend([duplex, one_way]);
    }
    for (count, size) in [(10_000u64, 1024usize), (4, 64 << 20)] {
        let msg = vec![7u8; size];
        group.throughput(Throughput::Bytes(count * size as u64));
        for (variant, side) in &mut sides {
            group.bench_function(format!("{count}x{size}B_{variant}"), |b| {
                b.iter(|| side.round(count, size, &msg))
            });
        }
    }
    group.finish();
    drop(sides);
    for child in children {
        child.join().unwrap();
    }
}

fn produce((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

fn produce_simple((q, n): (SimpleQueue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

/// Times `iters` runs of: start a producer process, take its `n` items.
fn consume_from_producer<Q>(
    iters: u64,
    n: u64,
    make: impl Fn() -> (Q, Process),
    get: impl Fn(&Q),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (q, p) = make();
        let t = Instant::now();
        let mut p = p.start().unwrap();
        for _ in 0..n {
            get(&q);
        }
        total += t.elapsed();
        p.wait().unwrap();
    }
    total
}

fn w6_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("w6_queue");
    group.sample_size(10).measurement_time(secs(5));
    let n = 200_000u64;
    group.throughput(Throughput::Elements(n));
    group.bench_function("200k_small_items_producer_process", |b| {
        b.iter_custom(|iters| {
            let make = || {
                let q = Queue::new().unwrap();
                let p = Process::new(produce, (q.clone(), n)).unwrap();
                (q, p)
            };
            consume_from_producer(iters, n, make, |q: &Queue<u64>| {
                q.get().unwrap();
            })
        })
    });
    group.bench_function("200k_small_items_producer_process_simplequeue", |b| {
        b.iter_custom(|iters| {
            let make = || {
                let q = SimpleQueue::new().unwrap();
                let p = Process::new(produce_simple, (q.clone(), n)).unwrap();
                (q, p)
            };
            consume_from_producer(iters, n, make, |q: &SimpleQueue<u64>| {
                q.get().unwrap();
            })
        })
    });
    group.finish();
}

fn increment((lock, counter, n): (Lock, Value<u64>, u64)) {
    for _ in 0..n {
        let _held = lock.lock().unwrap();
        counter.set(counter.get().unwrap() + 1).unwrap();
    }
}

fn w7_lock(c: &mut Criterion) {
    let mut group = c.benchmark_group("w7_lock");
    group.sample_size(10).measurement_time(secs(5));
    let per = 50_000u64;
    group.throughput(Throughput::Elements(2 * per));
    group.bench_function("2_processes_x_50k_increments", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let lock = Lock::new().unwrap();
                let counter = Value::raw(0u64).unwrap();
                let ps: Vec<Process> = (0..2)
                    .map(|_| Process::new(increment, (lock.clone(), counter.clone(), per)).unwrap())
                    .collect();
                let t = Instant::now();
                let mut ps: Vec<ProcessHandle> =
                    ps.into_iter().map(|p| p.start().unwrap()).collect();
                for p in &mut ps {
                    p.wait().unwrap();
                }
                total += t.elapsed();
                assert_eq!(counter.get().unwrap(), 2 * per);
            }
            total
        })
    });
    group.finish();
}

fn noop(_: ()) {}

fn w8_process(c: &mut Criterion) {
    let mut group = c.benchmark_group("w8_process_start_join");
    group.sample_size(20).measurement_time(secs(5));
    for (id, method) in [
        ("spawn", StartMethod::Spawn),
        ("forkserver", StartMethod::Forkserver),
    ] {
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut p = Process::new(noop, ())
                    .unwrap()
                    .start_method(method)
                    .start()
                    .unwrap();
                p.wait().unwrap();
            })
        });
    }
    group.bench_function("fork", |b| {
        b.iter(|| {
            let mut p = Process::fork(|| {}).start().unwrap();
            p.wait().unwrap();
        })
    });
    group.finish();
}

// W8 first: the issue measures process starts from a small parent, and a fork's cost grows
// with the memory the parent has touched (W5 touches hundreds of MiB).
criterion_group!(benches, w8_process, w5_pipe, w6_queue, w7_lock);
criterion_main!(benches);
