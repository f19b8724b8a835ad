//! The Pool's workloads (the definitions of the benchmark issue), for each transport: pool
//! startup with spawned and with forkserver workers (W1), apply round trip (W2), pipelined apply_async (W2b), map of tiny items with the default
//! chunk size and with chunk size 1 (W3), map of 1 MiB payloads, one way and echoed as
//! `Bytes` and as `Vec<u8>` (W4); and rayon running W3
//! in-process, as the reference for what processes cost.

#![allow(missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pool_api::{Bytes, Pool, StartMethod, TransportKind};
use pool_benches::{secs, w1_round};
use rayon::prelude::*;

fn noop(_: ()) {}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn len(data: Bytes) -> usize {
    data.len()
}

fn echo(data: Bytes) -> Bytes {
    data
}

fn echo_vec(data: Vec<u8>) -> Vec<u8> {
    data
}

fn pool(kind: TransportKind) -> Pool {
    Pool::builder()
        .processes(2)
        .transport(kind)
        .build()
        .expect("pool")
}

fn name(kind: TransportKind) -> String {
    format!("{kind:?}").to_lowercase()
}

fn w1_startup(c: &mut Criterion) {
    let mut group = c.benchmark_group("w1_pool_startup");
    group.sample_size(10).measurement_time(secs(5));
    let methods = [
        (StartMethod::Spawn, ""),
        (StartMethod::Forkserver, "_forkserver"),
    ];
    for (kind, (method, suffix)) in [TransportKind::Pipe, TransportKind::Shm]
        .into_iter()
        .flat_map(|kind| methods.map(|m| (kind, m)))
    {
        group.bench_function(format!("{}{suffix}", name(kind)), |b| {
            b.iter(|| w1_round(kind, method))
        });
    }
    group.finish();
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("w2_apply_round_trip");
    group.measurement_time(secs(3)).warm_up_time(secs(1) / 2);
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let p = pool(kind);
        group.bench_function(name(kind), |b| b.iter(|| p.apply(noop, ()).unwrap()));
    }
    group.finish();

    let mut group = c.benchmark_group("w2b_apply_async_10k");
    group.sample_size(10).measurement_time(secs(5));
    group.throughput(Throughput::Elements(10_000));
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let p = pool(kind);
        group.bench_function(name(kind), |b| {
            b.iter(|| {
                let rs: Vec<_> = (0..10_000)
                    .map(|_| p.apply_async(noop, ()).unwrap())
                    .collect();
                for r in rs {
                    r.get().unwrap();
                }
            })
        });
    }
    group.finish();
}

fn map_tiny(c: &mut Criterion) {
    let mut group = c.benchmark_group("w3_map_1M_default_chunks");
    group.sample_size(10).measurement_time(secs(5));
    group.throughput(Throughput::Elements(1_000_000));
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let p = pool(kind);
        group.bench_function(name(kind), |b| {
            b.iter(|| p.map(square, 0..1_000_000u64).unwrap())
        });
    }
    group.bench_function("rayon_in_process", |b| {
        b.iter(|| {
            (0..1_000_000u64)
                .into_par_iter()
                .map(square)
                .collect::<Vec<_>>()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("w3_map_100k_chunksize_1");
    group.sample_size(10).measurement_time(secs(5));
    group.throughput(Throughput::Elements(100_000));
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let p = pool(kind);
        group.bench_function(name(kind), |b| {
            b.iter(|| p.map_chunked(square, 0..100_000u64, 1).unwrap())
        });
    }
    group.finish();
}

fn map_payloads(c: &mut Criterion) {
    let mut group = c.benchmark_group("w4_map_64x1MiB");
    group.sample_size(10).measurement_time(secs(5));
    group.throughput(Throughput::Bytes(64 << 20));
    let buffers: Vec<Bytes> = (0..64u8).map(|i| Bytes(vec![i; 1 << 20])).collect();
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let p = pool(kind);
        for chunksize in [None, Some(1)] {
            let label = format!(
                "{}_chunksize_{}",
                name(kind),
                chunksize.map_or("default".into(), |c: usize| c.to_string())
            );
            // The copy of the input is made outside the clock, as CPython's side maps one
            // list it built beforehand: 64 MiB of fresh pages cost ~50 ms here in page faults
            // alone, which would be measured instead of the pool.
            group.bench_function(label, |b| {
                b.iter_batched(
                    || buffers.clone(),
                    |input| p.map_results(len, input, chunksize).unwrap(),
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

/// W4 with results: 64 x 1 MiB echoed back, as `Bytes` and as plain `Vec<u8>` (which must
/// not cost much more than `Bytes`: serde alone would see a sequence of numbers).
fn map_echo(c: &mut Criterion) {
    let mut group = c.benchmark_group("w4_echo_64x1MiB");
    group.sample_size(10).measurement_time(secs(5));
    group.throughput(Throughput::Bytes(64 << 20));
    let vecs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 1 << 20]).collect();
    let bytes: Vec<Bytes> = vecs.iter().cloned().map(Bytes).collect();
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let p = pool(kind);
        // Inputs are copied outside the clock, as in `map_payloads`.
        group.bench_function(format!("{}_bytes", name(kind)), |b| {
            b.iter_batched(
                || bytes.clone(),
                |input| p.map(echo, input).unwrap(),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(format!("{}_vec", name(kind)), |b| {
            b.iter_batched(
                || vecs.clone(),
                |input| p.map(echo_vec, input).unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, w1_startup, apply, map_tiny, map_payloads, map_echo);
criterion_main!(benches);
