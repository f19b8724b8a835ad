//! The primitives across processes (the benchmark issue's W5–W8): Pipe messages of 1 KiB and
//! of 64 MiB received into a reused buffer, a Queue of small items from a producer process,
//! a Lock contended by two processes, and Process start + join.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pool_api::{Connection, Lock, Pipe, Process, Queue, Value};
use pool_benches::secs;

/// Receives `(count, size)` rounds: `count` messages, then acknowledges the last.
fn pipe_sink(mut conn: Connection) {
    let mut buf = vec![0u8; 64 << 20];
    while let Ok((count, _size)) = conn.recv::<(u64, usize)>() {
        for _ in 0..count {
            conn.recv_bytes_into(&mut buf).unwrap();
        }
        conn.send(&1u8).unwrap();
    }
}

fn w5_pipe(c: &mut Criterion) {
    let (mut conn, child_conn) = Pipe::duplex().unwrap();
    let mut p = Process::new(pipe_sink, child_conn).unwrap();
    p.start().unwrap();
    let mut group = c.benchmark_group("w5_pipe");
    group.sample_size(10).measurement_time(secs(5));
    for (count, size) in [(10_000u64, 1024usize), (4, 64 << 20)] {
        let msg = vec![7u8; size];
        group.throughput(Throughput::Bytes(count * size as u64));
        group.bench_function(format!("{count}x{size}B_one_way"), |b| {
            b.iter(|| {
                conn.send(&(count, size)).unwrap();
                for _ in 0..count {
                    conn.send_bytes(&msg).unwrap();
                }
                let _: u8 = conn.recv().unwrap();
            })
        });
    }
    group.finish();
    drop(conn);
    p.join().unwrap();
}

fn produce((q, n): (Queue<u64>, u64)) {
    for i in 0..n {
        q.put(i).unwrap();
    }
}

fn w6_queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("w6_queue");
    group.sample_size(10).measurement_time(secs(5));
    let n = 200_000u64;
    group.throughput(Throughput::Elements(n));
    group.bench_function("200k_small_items_producer_process", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let q = Queue::new().unwrap();
                let mut p = Process::new(produce, (q.clone(), n)).unwrap();
                let t = Instant::now();
                p.start().unwrap();
                for _ in 0..n {
                    q.get().unwrap();
                }
                total += t.elapsed();
                p.join().unwrap();
            }
            total
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
                let mut ps: Vec<Process> = (0..2)
                    .map(|_| Process::new(increment, (lock.clone(), counter.clone(), per)).unwrap())
                    .collect();
                let t = Instant::now();
                for p in &mut ps {
                    p.start().unwrap();
                }
                for p in &mut ps {
                    p.join().unwrap();
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
    group.bench_function("spawn", |b| {
        b.iter(|| {
            let mut p = Process::new(noop, ()).unwrap();
            p.start().unwrap();
            p.join().unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, w5_pipe, w6_queue, w7_lock, w8_process);
criterion_main!(benches);
