//! `Pipe` and `Connection` across real processes. Ported behaviours name their source:
//! CPython's `Lib/test/_test_multiprocessing.py` (`_TestConnection`) and seed 002.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use pool_api::{
    Connection, Pipe, Process, RecvError, SendError, TransportKind, WriteConnection, wait,
    wait_timeout,
};
use serde::{Deserialize, Serialize};

/// Every behaviour holds over both transports: a socket pair and shared memory.
const KINDS: [TransportKind; 2] = [TransportKind::Pipe, TransportKind::Shm];

/// The equivalent of Python's `[42, None, 'hello']`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Py {
    Int(i64),
    None,
    Str(String),
}

fn f_pipe(mut conn: Connection) {
    // seed 002: conn.send([42, None, 'hello']); conn.close()
    conn.send(&vec![Py::Int(42), Py::None, Py::Str("hello".into())])
        .unwrap();
}

fn echo_until_eof(mut conn: Connection) {
    while let Ok(bytes) = conn.recv_bytes() {
        conn.send_bytes(&bytes).unwrap();
    }
}

fn writes_then_exits((mut w, n): (WriteConnection, u32)) {
    for i in 0..n {
        w.send(&i).unwrap();
    }
}

#[test]
fn seed_pipe_sends_a_list_with_a_none() {
    for kind in KINDS {
        seed_pipe_over(kind);
    }
}

fn seed_pipe_over(kind: TransportKind) {
    let (mut parent_conn, child_conn) = Pipe::duplex_over(kind).unwrap();
    let mut p = Process::new(f_pipe, child_conn).unwrap().start().unwrap();
    let got: Vec<Py> = parent_conn.recv().unwrap();
    assert_eq!(got, [Py::Int(42), Py::None, Py::Str("hello".into())]);
    p.wait().unwrap();
    // The child's end went with the child (the parent's copy was moved into its arguments):
    // end of file, as CPython gives once every copy of the other end is closed.
    assert!(matches!(parent_conn.recv::<Vec<Py>>(), Err(RecvError::Eof)));
}

#[test]
fn boundaries_empty_messages_and_bytes_round_trip_through_a_child() {
    for kind in KINDS {
        round_trips_over(kind);
    }
}

fn round_trips_over(kind: TransportKind) {
    // CPython _TestConnection.test_connection: send_bytes / recv_bytes / recv_bytes_into.
    let (mut conn, child_conn) = Pipe::duplex_over(kind).unwrap();
    let mut p = Process::new(echo_until_eof, child_conn)
        .unwrap()
        .start()
        .unwrap();
    // 3 MiB is larger than a shared-memory ring: it streams through.
    for msg in [&b""[..], b"a", b"", &[9u8; 70_000], &vec![7u8; 3 << 20]] {
        conn.send_bytes(msg).unwrap();
        assert_eq!(conn.recv_bytes().unwrap(), msg);
    }
    conn.send_bytes(b"0123456789").unwrap();
    let mut short = [0u8; 4];
    match conn.recv_bytes_into(&mut short) {
        Err(RecvError::BufferTooShort { needed, message }) => {
            assert_eq!(needed, 10);
            assert_eq!(message, b"0123456789");
        }
        other => panic!("expected BufferTooShort, got {other:?}"),
    }
    conn.send_bytes(b"fits").unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(conn.recv_bytes_into(&mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"fits");
    drop(conn);
    p.wait().unwrap();
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn poll_waits_with_a_timeout() {
    for kind in KINDS {
        poll_over(kind);
    }
}

fn poll_over(kind: TransportKind) {
    // CPython _TestConnection.test_poll_eof and timeouts.
    let (mut a, b) = Pipe::duplex_over(kind).unwrap();
    let t = Instant::now();
    assert!(!b.poll_timeout(Duration::from_millis(50)).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(!b.poll_timeout(Duration::ZERO).unwrap());
    a.send(&1u8).unwrap();
    assert!(b.poll_timeout(Duration::MAX).unwrap());
    drop(a);
    let mut b = b;
    assert_eq!(b.recv::<u8>().unwrap(), 1);
    assert!(
        b.poll_timeout(Duration::ZERO).unwrap(),
        "end of file counts as ready"
    );
    assert!(matches!(b.recv::<u8>(), Err(RecvError::Eof)));
}

#[test]
fn one_way_pipes_and_wait_over_connections_and_processes() {
    for kind in KINDS {
        one_way_over(kind);
    }
}

fn one_way_over(kind: TransportKind) {
    let (mut r1, w1) = Pipe::one_way_over(kind).unwrap();
    let (r2, _w2) = Pipe::one_way_over(kind).unwrap();
    let p = Process::new(writes_then_exits, (w1, 3))
        .unwrap()
        .start()
        .unwrap();
    let ready = wait(&[&r2, &r1]).unwrap();
    assert_eq!(ready, [1]);
    let got: Vec<u32> = (0..3).map(|_| r1.recv().unwrap()).collect();
    assert_eq!(got, [0, 1, 2]);
    // A process is ready once it exited.
    let ready = wait_timeout(&[&r2, &p], Duration::from_secs(10)).unwrap();
    assert_eq!(ready, [1]);
    assert!(
        wait_timeout(&[&r2], Duration::from_millis(20))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_handle_cannot_be_serialized_outside_pool() {
    let (a, _b) = Pipe::duplex().unwrap();
    assert!(postcard::to_stdvec(&a).is_err());
    // A serializer that keeps the message shows the user why.
    let lock = pool_api::Lock::new().unwrap();
    for err in [
        serde_json::to_string(&a).unwrap_err(),
        serde_json::to_string(&lock).unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            message.contains("can only be serialized by pool"),
            "{message}"
        );
    }
}

#[test]
fn a_message_over_two_gib() {
    // From a child process, over each transport in turn (one at a time: each holds two
    // copies of the message, one on either side).
    for kind in [TransportKind::Pipe, TransportKind::Shm] {
        let (mut ours, theirs) = Pipe::duplex_over(kind).unwrap();
        let mut p = Process::new(sends_over_two_gib, theirs)
            .unwrap()
            .start()
            .unwrap();
        let t = Instant::now();
        let got = ours.recv_bytes().unwrap();
        eprintln!("2 GiB + 3 bytes over {kind:?} in {:?}", t.elapsed());
        assert_eq!(got.len(), OVER_TWO_GIB);
        assert!(got.iter().step_by(4096).all(|x| *x == 0xa5) && got[OVER_TWO_GIB - 1] == 0x5a);
        drop(got);
        p.wait().unwrap();
        assert_eq!(p.exitcode(), Some(0));
    }
}

const OVER_TWO_GIB: usize = (2 << 30) + 3;

fn sends_over_two_gib(mut conn: Connection) {
    let mut big = vec![0xa5u8; OVER_TWO_GIB];
    big[OVER_TWO_GIB - 1] = 0x5a;
    conn.send_bytes(&big).unwrap();
}

fn receives_forever(mut conn: Connection) {
    conn.send(&std::process::id()).unwrap();
    while conn.recv_bytes().is_ok() {}
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_killed_peer_is_end_of_file_and_closed_over_shared_memory() {
    // Shared memory has no hang-up of its own: the liveness socket must end a blocked
    // receive and refuse sends once the child is killed, never hang.
    let (mut conn, child_conn) = Pipe::duplex_over(TransportKind::Shm).unwrap();
    let mut p = Process::new(receives_forever, child_conn)
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(conn.recv::<u32>().unwrap(), p.pid());
    conn.send_bytes(b"still there").unwrap();
    p.kill().unwrap();
    p.wait().unwrap();
    let t = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let received = conn.recv_bytes();
        // A full ring would block a sender forever without the peer's death noticed.
        let sent = (0..64).try_for_each(|_| conn.send_bytes(&[0u8; 64 << 10]));
        let _ = tx.send((received.map(|_| ()), sent));
    });
    let (received, sent) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a dead peer must not leave a receive or a send blocked");
    eprintln!("end of file {:?} after the peer was reaped", t.elapsed());
    assert!(matches!(received, Err(RecvError::Eof)), "{received:?}");
    assert!(matches!(sent, Err(SendError::Closed)), "{sent:?}");
}

#[test]
fn shared_memory_ends_work_in_threads_and_see_each_other_dropped() {
    let (mut a, mut b) = Pipe::duplex_over(TransportKind::Shm).unwrap();
    let echo = std::thread::spawn(move || {
        while let Ok(v) = b.recv::<u64>() {
            b.send(&(v * 2)).unwrap();
        }
    });
    for i in 0..1_000u64 {
        a.send(&i).unwrap();
        assert_eq!(a.recv::<u64>().unwrap(), i * 2);
    }
    drop(a);
    echo.join().unwrap();
}
