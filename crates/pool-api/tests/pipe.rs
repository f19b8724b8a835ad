//! `Pipe` and `Connection` across real processes. Ported behaviours name their source:
//! CPython's `Lib/test/_test_multiprocessing.py` (`_TestConnection`) and seed 002.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use pool_api::{Connection, Pipe, Process, RecvError, WriteConnection, wait};
use serde::{Deserialize, Serialize};

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
    let (mut parent_conn, child_conn) = Pipe::duplex().unwrap();
    let mut p = Process::new(f_pipe, child_conn).unwrap();
    p.start().unwrap();
    let got: Vec<Py> = parent_conn.recv().unwrap();
    assert_eq!(got, [Py::Int(42), Py::None, Py::Str("hello".into())]);
    p.join().unwrap();
    // The child's end went with the child (the parent's copy was moved into its arguments):
    // end of file, as CPython gives once every copy of the other end is closed.
    assert!(matches!(parent_conn.recv::<Vec<Py>>(), Err(RecvError::Eof)));
}

#[test]
fn boundaries_empty_messages_and_bytes_round_trip_through_a_child() {
    // CPython _TestConnection.test_connection: send_bytes / recv_bytes / recv_bytes_into.
    let (mut conn, child_conn) = Pipe::duplex().unwrap();
    let mut p = Process::new(echo_until_eof, child_conn).unwrap();
    p.start().unwrap();
    for msg in [&b""[..], b"a", b"", &[9u8; 70_000]] {
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
    p.join().unwrap();
    assert_eq!(p.exitcode(), Some(0));
}

#[test]
fn poll_waits_with_a_timeout() {
    // CPython _TestConnection.test_poll_eof and timeouts.
    let (mut a, b) = Pipe::duplex().unwrap();
    let t = Instant::now();
    assert!(!b.poll(Some(Duration::from_millis(50))).unwrap());
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert!(!b.poll(Some(Duration::ZERO)).unwrap());
    a.send(&1u8).unwrap();
    assert!(b.poll(None).unwrap());
    drop(a);
    let mut b = b;
    assert_eq!(b.recv::<u8>().unwrap(), 1);
    assert!(
        b.poll(Some(Duration::ZERO)).unwrap(),
        "end of file counts as ready"
    );
    assert!(matches!(b.recv::<u8>(), Err(RecvError::Eof)));
}

#[test]
fn one_way_pipes_and_wait_over_connections_and_processes() {
    let (mut r1, w1) = Pipe::one_way().unwrap();
    let (r2, _w2) = Pipe::one_way().unwrap();
    let mut p = Process::new(writes_then_exits, (w1, 3)).unwrap();
    p.start().unwrap();
    let ready = wait(&[&r2, &r1], Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ready, [1]);
    let got: Vec<u32> = (0..3).map(|_| r1.recv().unwrap()).collect();
    assert_eq!(got, [0, 1, 2]);
    // A process is ready once it exited.
    let ready = wait(&[&r2, &p], Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ready, [1]);
    assert!(
        wait(&[&r2], Some(Duration::from_millis(20)))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_handle_cannot_be_serialized_outside_pool() {
    let (a, _b) = Pipe::duplex().unwrap();
    let err = postcard::to_stdvec(&a).unwrap_err();
    eprintln!("serializing a Connection by hand: {err}");
}

#[test]
fn a_message_over_two_gib() {
    let (mut a, mut b) = Pipe::duplex().unwrap();
    let len = (2usize << 30) + 3;
    let sender = std::thread::spawn(move || {
        let big = vec![0xa5u8; len];
        a.send_bytes(&big).unwrap();
    });
    let t = Instant::now();
    let got = b.recv_bytes().unwrap();
    eprintln!("2 GiB + 3 bytes through a pipe in {:?}", t.elapsed());
    assert_eq!(got.len(), len);
    assert!(got.iter().step_by(4096).all(|x| *x == 0xa5) && got[len - 1] == 0xa5);
    sender.join().unwrap();
}
