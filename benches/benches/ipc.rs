//! pool-ipc's transports between two processes, beside a raw pipe ping-pong measured in the
//! same run (a `cat` process echoing through its stdin and stdout pipes: plain `read` and
//! `write`, no framing).
//!
//! Round trip: the parent sends 8 bytes, the child echoes them. Throughput: 64 MiB messages
//! one way, received into a reused buffer, the child acknowledging each.

#![allow(missing_docs)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pool_benches::secs;
use pool_ipc::{ChildStart, SpawnOptions, Spawned, TransportKind, spawn};

fn echo(mut start: ChildStart) -> i32 {
    let mut buf = Vec::new();
    while start.channel.recv_into(&mut buf, None).is_ok() {
        if start.channel.send(&buf, None).is_err() {
            break;
        }
    }
    0
}

fn sink(mut start: ChildStart) -> i32 {
    let mut buf = Vec::new();
    while start.channel.recv_into(&mut buf, None).is_ok() {
        if start.channel.send(&[1], None).is_err() {
            break;
        }
    }
    0
}

fn child(main: pool_ipc::ChildMain, kind: TransportKind) -> Spawned {
    spawn(main, b"", &SpawnOptions::new().transport(kind)).expect("spawning the peer")
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip_8B");
    group.measurement_time(secs(3)).warm_up_time(secs(1) / 2);

    let mut cat = Command::new("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cat");
    let mut to_cat = cat.stdin.take().unwrap();
    let mut from_cat = cat.stdout.take().unwrap();
    group.bench_function("raw_pipe_cat", |b| {
        let mut back = [0u8; 8];
        b.iter(|| {
            to_cat.write_all(b"12345678").unwrap();
            from_cat.read_exact(&mut back).unwrap();
        })
    });
    drop(to_cat);
    let _ = cat.wait();

    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let mut peer = child(echo, kind);
        let mut buf = Vec::with_capacity(64);
        group.bench_function(format!("{kind:?}").to_lowercase(), |b| {
            b.iter(|| {
                peer.channel.send(b"12345678", None).unwrap();
                peer.channel.recv_into(&mut buf, None).unwrap();
            })
        });
    }
    group.finish();
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_way_64MiB");
    group
        .sample_size(10)
        .measurement_time(secs(5))
        .warm_up_time(secs(1) / 2);
    group.throughput(Throughput::Bytes(64 << 20));
    let payload = vec![0x5au8; 64 << 20];
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let mut peer = child(sink, kind);
        let mut ack = Vec::new();
        group.bench_function(format!("{kind:?}").to_lowercase(), |b| {
            b.iter(|| {
                peer.channel.send(&payload, None).unwrap();
                peer.channel.recv_into(&mut ack, None).unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip, throughput);
criterion_main!(benches);
