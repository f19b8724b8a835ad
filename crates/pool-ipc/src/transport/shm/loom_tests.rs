//! Loom models of the shm ring (`cargo xtask loom`): every interleaving, up to the preemption
//! bound `LOOM_MAX_PREEMPTIONS`, of the real `sender.rs`, `receiver.rs` and `wait.rs` over a
//! ring of 16 bytes in the model's mapping (`mapping.rs`, `model`): loom's atomics for the
//! headers, a loom cell per data byte, the modelled futex of `crate::loom`.
//!
//! What each run checks:
//! - every message arrives once, whole and in order (the receiver compares the bytes);
//! - no byte is read before it was written or overwritten before it was read: each data
//!   byte is a loom cell, so an access without happens-before from the other side's is a
//!   loom data race (a missing Release on a position, a missing Acquire);
//! - nobody sleeps with data ready or space free: a sleeper nobody wakes is a loom deadlock
//!   (the modelled futex has no timeouts and no spurious wake-ups), and so is the writer
//!   and the reader both asleep.

use std::time::Instant;

use loom::thread;

use super::{ShmChannel, ShmReceiver, ShmSender};
use crate::transport::RecvError;

/// Small enough that two frames (8-byte length and payload) do not fit at once.
const CAPACITY: usize = 16;

/// The sending half of end A and the receiving half of end B (ring 0), and the two other
/// halves (ring 1), which the model keeps open until it ends so that closing them adds no
/// steps.
fn ring() -> (ShmSender, ShmReceiver, impl Sized) {
    let (a, b) = ShmChannel::pair(CAPACITY).unwrap();
    let (tx, rx_a) = a.split();
    let (tx_b, rx) = b.split();
    (tx, rx, (rx_a, tx_b))
}

fn recv(rx: &mut ShmReceiver) -> Result<Vec<u8>, RecvError> {
    let mut buf = Vec::new();
    rx.recv_into(&mut buf, None::<Instant>)?;
    Ok(buf)
}

/// Two messages, the second larger than the space the first leaves (11 + 10 > 16 bytes), so
/// the writer waits for the reader, and the second frame wraps around the ring's end. The
/// writer stays open until the reader has both (its close would wake a reader that slept
/// through a publication, hiding the lost wake-up), so a wake-up lost either way is a
/// deadlock.
#[test]
fn ring_delivers_each_message_once_whole_in_order() {
    loom::model(|| {
        let (mut tx, mut rx, _others) = ring();
        let writer = thread::spawn(move || {
            tx.send_parts(&[b"abc"], None).unwrap();
            tx.send_parts(&[b"de"], None).unwrap();
            tx
        });
        assert_eq!(recv(&mut rx).unwrap(), b"abc");
        assert_eq!(recv(&mut rx).unwrap(), b"de");
        drop(writer.join().unwrap());
        assert!(matches!(recv(&mut rx), Err(RecvError::Disconnected)));
    });
}

/// A message larger than the whole ring (8 + 12 > 16 bytes) is streamed through it in
/// pieces of a quarter ring, the writer sleeping for space and the reader for data in turn;
/// then the writer closes, which the reader sees after the message (a close must wake a
/// sleeping reader, and must not overtake the bytes published before it).
#[test]
fn ring_streams_a_message_larger_than_itself_then_closes() {
    loom::model(|| {
        let (mut tx, mut rx, _others) = ring();
        let writer = thread::spawn(move || {
            tx.send_parts(&[b"0123", b"456789ab"], None).unwrap();
        });
        assert_eq!(recv(&mut rx).unwrap(), b"0123456789ab");
        assert!(matches!(recv(&mut rx), Err(RecvError::Disconnected)));
        writer.join().unwrap();
    });
}

/// The peer is declared dead (its supervisor saw it exit) while a message is in flight and
/// the reader may be asleep: the reader gets what was published before, then
/// `Disconnected`; it never sleeps on.
#[test]
fn ring_peer_death_wakes_the_reader_after_the_published_messages() {
    loom::model(|| {
        let (mut tx, mut rx, _others) = ring();
        let death = rx.peer_death();
        let writer = thread::spawn(move || {
            tx.send_parts(&[b"xyz"], None).unwrap();
            death.notify();
            // The dead process's memory stays as it left it: no close of its own.
            tx.forget_copy();
        });
        assert_eq!(recv(&mut rx).unwrap(), b"xyz");
        assert!(matches!(recv(&mut rx), Err(RecvError::Disconnected)));
        writer.join().unwrap();
    });
}
