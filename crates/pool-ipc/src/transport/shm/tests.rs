//! Unit tests of the shared-memory transport that need its internals: the ring protocol at its
//! edges, a hostile peer scribbling on the shared memory, and forked peers.

use std::io;
use std::mem;
use std::os::fd::OwnedFd;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use super::layout::*;
use super::mapping::*;
use super::wait::spinning_pays;
use super::*;
use crate::transport::{RecvError, SendError};

use std::panic::AssertUnwindSafe;
use std::thread;

/// A generous deadline, so that a bug fails a test instead of hanging it.
fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(60))
}

fn split_pair(capacity: usize) -> ((ShmSender, ShmReceiver), (ShmSender, ShmReceiver)) {
    let (a, b) = ShmChannel::pair(capacity).unwrap();
    (a.split(), b.split())
}

/// Deterministic, cheap to check message content.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let block: Vec<u8> = (0..251u32)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let n = (len - out.len()).min(block.len());
        out.extend_from_slice(&block[..n]);
    }
    out
}

fn send(tx: &mut ShmSender, msg: &[u8]) {
    tx.send_parts(&[msg], soon()).unwrap();
}

fn recv(rx: &mut ShmReceiver) -> Vec<u8> {
    let mut buf = Vec::new();
    rx.recv_into(&mut buf, soon()).unwrap();
    buf
}

/// A second, independent mapping of a channel's memfd, as a hostile peer would have.
struct View {
    base: NonNull<u8>,
    len: usize,
}

impl View {
    fn new(fd: &OwnedFd) -> View {
        let len = rustix::fs::fstat(fd).unwrap().st_size as usize;
        // SAFETY: a fresh shared mapping of the whole file; no existing memory is affected.
        let ptr = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .unwrap();
        View {
            base: NonNull::new(ptr.cast()).unwrap(),
            len,
        }
    }

    fn ring(&self, index: usize) -> &RingHeader {
        // SAFETY: in bounds and aligned (same layout as `Mapping::ring`); atomics only.
        unsafe {
            self.base
                .add(RING_HEADERS[index])
                .cast::<RingHeader>()
                .as_ref()
        }
    }

    fn global(&self) -> &GlobalHeader {
        // SAFETY: as `Mapping::global`.
        unsafe { self.base.cast::<GlobalHeader>().as_ref() }
    }

    /// Writes raw bytes at `offset`, as a scribbling peer.
    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len);
        // SAFETY: in bounds (asserted); raw copy into shared memory, no reference formed.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr().add(offset), bytes.len())
        };
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: exactly what mmap returned; no references into it outlive `self`.
        unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) }.unwrap();
    }
}

#[test]
fn halves_are_send_and_death_is_send_sync() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<ShmChannel>();
    send::<ShmSender>();
    send::<ShmReceiver>();
    send_sync::<ShmPeerDeath>();
    let (a, _b) = ShmChannel::pair(MIN_CAPACITY).unwrap();
    let text = format!("{a:?}");
    assert!(
        text.contains("ShmSender") && text.contains("ShmReceiver"),
        "{text}"
    );
    let (_tx, rx) = a.split();
    assert!(format!("{:?}", rx.peer_death()).contains("notified: false"));
}

#[test]
fn bad_capacity_is_refused() {
    for capacity in [0, 1, 4095, 4097, 6000, MIN_CAPACITY / 2, MAX_CAPACITY * 2] {
        let err = ShmChannel::pair(capacity).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{capacity}");
        assert!(ShmChannel::create(capacity).is_err());
    }
}

#[test]
fn many_messages_keep_order_and_boundaries() {
    let ((mut tx, _), (_, mut rx)) = split_pair(MIN_CAPACITY);
    const N: usize = 20_000;
    let writer = thread::spawn(move || {
        for i in 0..N {
            let len = (i * 7919) % 700;
            let mut msg = (i as u64).to_le_bytes().to_vec();
            msg.extend_from_slice(&pattern(len, i as u8));
            send(&mut tx, &msg);
        }
    });
    let mut buf = Vec::new();
    for i in 0..N {
        rx.recv_into(&mut buf, soon()).unwrap();
        let len = (i * 7919) % 700;
        assert_eq!(buf.len(), 8 + len, "message {i}");
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i as u64);
        assert_eq!(&buf[8..], &pattern(len, i as u8)[..], "message {i}");
    }
    writer.join().unwrap();
}

#[test]
fn empty_messages_are_messages() {
    let ((mut tx, _), (_, mut rx)) = split_pair(MIN_CAPACITY);
    // More empty frames than fit in the ring at once: needs the reader to drain.
    let writer = thread::spawn(move || {
        for _ in 0..3 * MIN_CAPACITY / 8 {
            tx.send_parts(&[], soon()).unwrap();
            tx.send_parts(&[b"", b""], soon()).unwrap();
        }
        send(&mut tx, b"end");
    });
    let mut buf = b"junk".to_vec();
    for _ in 0..3 * MIN_CAPACITY / 8 * 2 {
        rx.recv_into(&mut buf, soon()).unwrap();
        assert!(buf.is_empty());
    }
    assert_eq!(recv(&mut rx), b"end");
    writer.join().unwrap();
}

#[test]
fn sizes_around_and_beyond_the_ring() {
    let cap = MIN_CAPACITY;
    let sizes = [
        0,
        1,
        7,
        8,
        9,
        cap - 9,
        cap - 8,
        cap - 7,
        cap,
        cap + 1,
        64 << 10,
        2 * cap + 3,
        10 * cap + 17,
    ];
    let ((mut tx, _), (_, mut rx)) = split_pair(cap);
    let writer = thread::spawn(move || {
        for (i, &len) in sizes.iter().enumerate() {
            let msg = pattern(len, i as u8);
            // As one part, and as three parts (one empty) of the same bytes.
            send(&mut tx, &msg);
            let (head, tail) = msg.split_at(len / 3);
            tx.send_parts(&[head, b"", tail], soon()).unwrap();
        }
    });
    let mut buf = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let expected = pattern(len, i as u8);
        for _ in 0..2 {
            rx.recv_into(&mut buf, soon()).unwrap();
            assert_eq!(buf.len(), len);
            assert!(buf == expected, "message of {len} bytes differs");
        }
    }
    writer.join().unwrap();
}

#[test]
fn a_receive_buffer_is_reused() {
    let ((mut tx, _), (_, mut rx)) = split_pair(MIN_CAPACITY);
    let mut buf = Vec::with_capacity(100_000);
    let ptr = buf.as_ptr();
    let writer = thread::spawn(move || {
        send(&mut tx, &pattern(50_000, 1));
        send(&mut tx, b"short");
    });
    rx.recv_into(&mut buf, soon()).unwrap();
    assert_eq!(buf, pattern(50_000, 1));
    rx.recv_into(&mut buf, soon()).unwrap();
    assert_eq!(buf, b"short");
    assert_eq!(buf.as_ptr(), ptr, "the buffer was reallocated");
    writer.join().unwrap();
}

#[test]
fn both_sides_sending_big_messages_do_not_deadlock() {
    let cap = 64 << 10;
    let ((mut tx_a, mut rx_a), (mut tx_b, mut rx_b)) = split_pair(cap);
    const N: usize = 6;
    let len = 17 * cap + 5;
    let threads = vec![
        thread::spawn(move || (0..N).for_each(|i| send(&mut tx_a, &pattern(len, i as u8)))),
        thread::spawn(move || (0..N).for_each(|i| send(&mut tx_b, &pattern(len, 100 + i as u8)))),
        thread::spawn(move || {
            (0..N).for_each(|i| assert!(recv(&mut rx_b) == pattern(len, i as u8)))
        }),
        thread::spawn(move || {
            (0..N).for_each(|i| assert!(recv(&mut rx_a) == pattern(len, 100 + i as u8)))
        }),
    ];
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn sleepers_on_both_sides_are_always_woken() {
    // Pauses longer than any spin make the reader sleep on an empty ring, then the writer
    // sleep on a full one, hundreds of times: a lost wake-up would hang (until the
    // generous deadline, which fails the test).
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    const N: usize = 300;
    let writer = thread::spawn(move || {
        for i in 0..N {
            if i % 2 == 0 {
                thread::sleep(Duration::from_micros(200));
            }
            send(&mut tx, &pattern(1000 + i % 7, i as u8));
        }
    });
    let mut buf = Vec::new();
    for i in 0..N {
        if i % 3 == 0 {
            thread::sleep(Duration::from_micros(300));
        }
        rx.recv_into(&mut buf, soon()).unwrap();
        assert!(buf == pattern(1000 + i % 7, i as u8), "message {i}");
    }
    writer.join().unwrap();
}

#[test]
fn dropped_sender_disconnects_after_draining() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    for msg in [&b"one"[..], b"", b"three"] {
        send(&mut tx, msg);
    }
    drop(tx);
    assert_eq!(recv(&mut rx), b"one");
    assert_eq!(recv(&mut rx), b"");
    assert_eq!(recv(&mut rx), b"three");
    let mut buf = Vec::new();
    for _ in 0..2 {
        assert!(matches!(
            rx.recv_into(&mut buf, None),
            Err(RecvError::Disconnected)
        ));
    }
}

#[test]
fn dropped_sender_wakes_a_blocked_receiver() {
    let ((tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon())
    });
    thread::sleep(Duration::from_millis(50));
    drop(tx);
    assert!(matches!(
        reader.join().unwrap(),
        Err(RecvError::Disconnected)
    ));
}

#[test]
fn a_message_larger_than_the_ring_is_never_whole_in_it() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    let big = pattern(2 * MIN_CAPACITY, 5);
    let sender = {
        let big = big.clone();
        thread::spawn(move || {
            send(&mut tx, &big);
            tx
        })
    };
    while !rx.has_data() {
        thread::yield_now();
    }
    assert!(!rx.has_message(), "only the start of it fits");
    assert_eq!(recv(&mut rx), big);
    let mut tx = sender.join().unwrap();
    send(&mut tx, b"small");
    assert!(rx.has_message());
    assert_eq!(recv(&mut rx), b"small");
    assert!(!rx.has_message());
}

#[test]
fn try_send_writes_whole_messages_or_nothing() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    let first = pattern(MIN_CAPACITY / 2, 1);
    let second = pattern(MIN_CAPACITY / 2 - 16, 2);
    assert!(tx.try_send_parts(&[&first]).unwrap());
    // Its frame is 9 bytes more than the room left: refused, nothing written.
    let too_big = pattern(MIN_CAPACITY / 2 - 7, 3);
    assert!(
        !tx.try_send_parts(&[&too_big[..10], &too_big[10..]])
            .unwrap()
    );
    assert!(tx.try_send_parts(&[&second[..5], &second[5..]]).unwrap());
    // Larger than the ring: could only be streamed, so never tried.
    assert!(!tx.try_send_parts(&[&pattern(MIN_CAPACITY, 4)]).unwrap());
    assert_eq!(recv(&mut rx), first);
    // Room again once the reader moved on (the sender looks at its position anew).
    assert!(tx.try_send_parts(&[&too_big]).unwrap());
    assert_eq!(recv(&mut rx), second);
    assert_eq!(recv(&mut rx), too_big);
    drop(rx);
    assert!(matches!(
        tx.try_send_parts(&[b"x"]),
        Err(SendError::Disconnected)
    ));
}

#[test]
fn dropped_receiver_disconnects_a_blocked_sender() {
    let ((mut tx, _rx_a), (_tx_b, rx)) = split_pair(MIN_CAPACITY);
    send(&mut tx, &pattern(MIN_CAPACITY - 8, 0)); // fills the ring exactly
    let writer = thread::spawn(move || {
        let first = tx.send_parts(&[b"more"], soon());
        let later = tx.send_parts(&[b""], soon());
        (first, later)
    });
    thread::sleep(Duration::from_millis(50));
    drop(rx);
    let (first, later) = writer.join().unwrap();
    assert!(matches!(first, Err(SendError::Disconnected)), "{first:?}");
    assert!(matches!(later, Err(SendError::Disconnected)), "{later:?}");
}

#[test]
fn notify_wakes_a_blocked_receive_and_send() {
    let ((mut tx, mut rx), (_tx_b, _rx_b)) = split_pair(MIN_CAPACITY);
    let death = rx.peer_death();
    // Nobody reads ring 0 and nobody writes ring 1: both block, in the futex.
    send(&mut tx, &pattern(MIN_CAPACITY - 8 - 18, 3));
    let writer = thread::spawn(move || tx.send_parts(&[&pattern(3 * MIN_CAPACITY, 0)], soon()));
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon())
    });
    thread::sleep(Duration::from_millis(100));
    death.notify();
    let sent = writer.join().unwrap();
    assert!(matches!(sent, Err(SendError::Disconnected)), "{sent:?}");
    let received = reader.join().unwrap();
    assert!(
        matches!(received, Err(RecvError::Disconnected)),
        "{received:?}"
    );
    assert!(format!("{death:?}").contains("notified: true"));
}

#[test]
fn notify_wakes_a_receiver_blocked_on_an_empty_ring() {
    let ((_tx_a, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    let death = rx.peer_death();
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, None)
    });
    thread::sleep(Duration::from_millis(100));
    death.notify();
    assert!(matches!(
        reader.join().unwrap(),
        Err(RecvError::Disconnected)
    ));
}

#[test]
fn notify_lets_the_receiver_drain_first() {
    let ((mut tx, _rx_a), (mut tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    send(&mut tx, b"a");
    send(&mut tx, b"b");
    rx.peer_death().notify();
    assert_eq!(recv(&mut rx), b"a");
    assert_eq!(recv(&mut rx), b"b");
    let mut buf = Vec::new();
    assert!(matches!(
        rx.recv_into(&mut buf, None),
        Err(RecvError::Disconnected)
    ));
    assert!(matches!(
        tx.send_parts(&[b"x"], None),
        Err(SendError::Disconnected)
    ));
    assert!(matches!(
        tx_b.send_parts(&[b"x"], None),
        Err(SendError::Disconnected)
    ));
}

#[test]
fn deadlines_give_timeout_and_leave_the_channel_usable() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    let mut buf = Vec::new();
    let short = || Some(Instant::now() + Duration::from_millis(30));
    assert!(matches!(
        rx.recv_into(&mut buf, short()),
        Err(RecvError::Timeout)
    ));
    assert!(matches!(
        rx.recv_into(&mut buf, Some(Instant::now())),
        Err(RecvError::Timeout)
    ));
    // A full ring: a message that fits in the ring times out cleanly.
    send(&mut tx, &pattern(MIN_CAPACITY - 8 - 20, 9));
    assert!(matches!(
        tx.send_parts(&[&[1; 100]], short()),
        Err(SendError::Timeout)
    ));
    assert!(matches!(
        tx.send_parts(&[&[1; 100]], Some(Instant::now())),
        Err(SendError::Timeout)
    ));
    send(&mut tx, b"fits"); // 12 bytes of frame: still room
    assert_eq!(recv(&mut rx), pattern(MIN_CAPACITY - 8 - 20, 9));
    tx.send_parts(&[&[1; 100]], short()).unwrap();
    assert_eq!(recv(&mut rx), b"fits");
    assert_eq!(recv(&mut rx), [1; 100]);
}

#[test]
fn receive_deadline_mid_message_resumes() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    let msg = pattern(20 * MIN_CAPACITY + 3, 4);
    let expected = msg.clone();
    let writer = thread::spawn(move || {
        send(&mut tx, &msg);
        send(&mut tx, b"next");
    });
    let mut buf = Vec::new();
    let mut timeouts = 0;
    loop {
        match rx.recv_into(&mut buf, Some(Instant::now())) {
            Ok(()) => break,
            Err(RecvError::Timeout) => {
                timeouts += 1;
                thread::yield_now();
            }
            Err(err) => panic!("{err:?}"),
        }
    }
    assert!(buf == expected, "after {timeouts} timeouts");
    assert_eq!(recv(&mut rx), b"next");
    writer.join().unwrap();
}

#[test]
fn send_deadline_mid_stream_breaks_the_channel() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    send(&mut tx, b"before");
    let result = tx.send_parts(
        &[&pattern(3 * MIN_CAPACITY, 0)],
        Some(Instant::now() + Duration::from_millis(30)),
    );
    assert!(matches!(result, Err(SendError::Timeout)), "{result:?}");
    assert!(matches!(
        tx.send_parts(&[b"after"], None),
        Err(SendError::Disconnected)
    ));
    assert_eq!(recv(&mut rx), b"before");
    let mut buf = Vec::new();
    assert!(matches!(
        rx.recv_into(&mut buf, soon()),
        Err(RecvError::Disconnected)
    ));
}

#[test]
fn too_large_on_the_sending_side() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    tx.set_max_message(10);
    let err = tx.send_parts(&[b"12345", b"678901"], None).unwrap_err();
    assert!(
        matches!(err, SendError::TooLarge { len: 11, limit: 10 }),
        "{err:?}"
    );
    // Larger than the ring too: refused before anything is written.
    assert!(matches!(
        tx.send_parts(&[&[0; 3 * MIN_CAPACITY]], None),
        Err(SendError::TooLarge { .. })
    ));
    tx.send_parts(&[b"12345", b"67890"], None).unwrap();
    assert_eq!(recv(&mut rx), b"1234567890");
}

#[test]
fn too_large_on_the_receiving_side() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
    rx.set_max_message(10);
    send(&mut tx, b"12345678901");
    send(&mut tx, b"ok");
    let mut buf = Vec::new();
    for _ in 0..2 {
        let err = rx.recv_into(&mut buf, None).unwrap_err();
        assert!(
            matches!(err, RecvError::TooLarge { len: 11, limit: 10 }),
            "{err:?}"
        );
        assert_eq!(buf.capacity(), 0);
    }
    rx.set_max_message(11);
    assert_eq!(recv(&mut rx), b"12345678901");
    assert_eq!(recv(&mut rx), b"ok");
}

#[test]
fn a_lying_length_costs_only_what_arrived() {
    let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
    let (tx, _rx_a) = a.split();
    let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
    let view = View::new(&fd);
    // 8 GiB announced (under the 16 GiB limit), 100 bytes sent, then the writer leaves.
    view.write(DATA_OFFSET, &(8u64 << 30).to_le_bytes());
    view.write(DATA_OFFSET + 8, &[5; 100]);
    view.ring(0).writer.write_pos.store(108, Ordering::Release);
    drop(tx);
    let mut buf = Vec::new();
    assert!(matches!(
        rx.recv_into(&mut buf, soon()),
        Err(RecvError::Disconnected)
    ));
    assert!(
        buf.capacity() < 1 << 20,
        "allocated {} bytes",
        buf.capacity()
    );
    // And a length above the limit is refused outright.
    let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
    let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
    let view = View::new(&fd);
    view.write(DATA_OFFSET, &u64::MAX.to_le_bytes());
    view.ring(0).writer.write_pos.store(8, Ordering::Release);
    let err = rx.recv_into(&mut buf, soon()).unwrap_err();
    assert!(
        matches!(err, RecvError::TooLarge { len: u64::MAX, .. }),
        "{err:?}"
    );
    drop(a);
}

#[test]
fn corrupt_positions_are_reported_not_trusted() {
    // The write position jumps more than a ring ahead of the reader.
    let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
    let (mut tx, _rx_a) = a.split();
    let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
    let view = View::new(&fd);
    send(&mut tx, b"fine");
    assert_eq!(recv(&mut rx), b"fine");
    view.ring(0)
        .writer
        .write_pos
        .store(12 + MIN_CAPACITY as u64 + 1, Ordering::Release);
    let mut buf = Vec::new();
    for _ in 0..2 {
        assert!(matches!(
            rx.recv_into(&mut buf, soon()),
            Err(RecvError::Corrupt(_))
        ));
    }

    // The write position goes behind the read position.
    let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
    let (mut tx, _rx_a) = a.split();
    let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
    let view = View::new(&fd);
    send(&mut tx, b"fine");
    assert_eq!(recv(&mut rx), b"fine");
    view.ring(0).writer.write_pos.store(3, Ordering::Release);
    assert!(matches!(
        rx.recv_into(&mut buf, soon()),
        Err(RecvError::Corrupt(_))
    ));

    // The read position, as the sender sees it, runs ahead of the write position.
    let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
    let (mut tx, _rx_a) = a.split();
    let (_tx_b, _rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
    let view = View::new(&fd);
    send(&mut tx, &pattern(MIN_CAPACITY - 8, 0));
    view.ring(0)
        .reader
        .read_pos
        .store(u64::MAX / 2, Ordering::Release);
    let err = tx.send_parts(&[b"x"], soon()).unwrap_err();
    assert!(
        matches!(&err, SendError::Io(io) if io.kind() == io::ErrorKind::InvalidData),
        "{err:?}"
    );
}

/// Part of the reliability suite: `cargo xtask chaos` runs it with many more rounds.
#[test]
#[allow(clippy::print_stderr)]
fn chaos_scribbled_memory_never_panics() {
    let rounds = pool_testkit::scale(200, 20_000);
    // xorshift64*, deterministic.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for round in 0..rounds as usize {
        let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let (mut tx_a, mut rx_a) = a.split();
        let (mut tx_b, mut rx_b) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
        let view = View::new(&fd);
        if round % 2 == 0 {
            // Shorter than the ring: nobody reads while it is sent.
            send(&mut tx_a, &pattern(round * 13 % 2048, 1));
        }
        // Scribble on the positions, flags and futex words of both rings, and on the data.
        for ring in 0..2 {
            let header = view.ring(ring);
            let small = next() % (3 * MIN_CAPACITY as u64);
            let value = match next() % 4 {
                0 => next(),
                1 => small,
                2 => small.wrapping_neg(),
                _ => u64::MAX - small,
            };
            match next() % 3 {
                0 => header.writer.write_pos.store(value, Ordering::Relaxed),
                1 => header.reader.read_pos.store(value, Ordering::Relaxed),
                _ => {
                    header.writer.write_pos.store(value, Ordering::Relaxed);
                    header.reader.read_pos.store(next(), Ordering::Relaxed);
                }
            }
            header
                .state
                .state
                .store((next() % 8) as u32 & (next() % 8) as u32, Ordering::Relaxed);
            header
                .reader
                .data_waiter
                .store(next() as u32 & 3, Ordering::Relaxed);
            header
                .writer
                .space_waiter
                .store(next() as u32 & 3, Ordering::Relaxed);
        }
        for _ in 0..8 {
            let offset = DATA_OFFSET + (next() as usize % (2 * MIN_CAPACITY - 8));
            view.write(offset, &next().to_le_bytes());
        }
        let deadline = Some(Instant::now() + Duration::from_millis(2));
        let mut buf = Vec::new();
        for _ in 0..3 {
            let _ = rx_b.recv_into(&mut buf, deadline);
            let _ = rx_a.recv_into(&mut buf, deadline);
            let _ = tx_b.send_parts(&[&pattern(round * 31, 2)], deadline);
            let _ = tx_a.send_parts(&[&pattern(round * 17, 3)], deadline);
            assert!(
                buf.capacity() <= 16 * MIN_CAPACITY,
                "allocated {}",
                buf.capacity()
            );
        }
    }
    pool_testkit::report(
        "hostile-shm",
        &[("inputs", rounds), ("panics", 0), ("hangs", 0)],
    );
}

#[test]
fn open_validates_the_header() {
    let expect_invalid = |fd: OwnedFd, why: &str| {
        let err = ShmChannel::open(fd).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{why}: {err}");
    };
    // Scribble on a good channel's header, one field at a time.
    type Scribble = fn(&View);
    let cases: [(&str, Scribble); 5] = [
        ("magic", |v| {
            v.global().magic.store(0x1234, Ordering::Relaxed)
        }),
        ("version", |v| {
            v.global().version.store(VERSION + 1, Ordering::Relaxed)
        }),
        ("capacity not a power of two", |v| {
            v.global()
                .capacity
                .store(MIN_CAPACITY as u64 + 8, Ordering::Relaxed)
        }),
        ("capacity not the file's", |v| {
            v.global()
                .capacity
                .store(2 * MIN_CAPACITY as u64, Ordering::Relaxed)
        }),
        ("positions", |v| {
            v.ring(0)
                .writer
                .write_pos
                .store(MIN_CAPACITY as u64 + 1, Ordering::Relaxed)
        }),
    ];
    for (why, scribble) in cases {
        let (_a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        scribble(&View::new(&fd));
        expect_invalid(fd, why);
    }
    // Opened twice.
    let (_a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
    let _b = ShmChannel::open(fd.try_clone().unwrap()).unwrap();
    expect_invalid(fd, "second open");
    // A pair's mapping has both ends taken already; a plain, unsealed memfd of the right
    // size; an empty one; something that is not a memfd at all.
    let unsealed = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&unsealed, mapping_len(MIN_CAPACITY) as u64).unwrap();
    expect_invalid(unsealed, "unsealed");
    let empty =
        rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    expect_invalid(empty, "empty");
    let zeros =
        rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&zeros, mapping_len(MIN_CAPACITY) as u64).unwrap();
    rustix::fs::fcntl_add_seals(&zeros, SealFlags::SHRINK).unwrap();
    expect_invalid(zeros, "all zeros");
    let (read, _write) = rustix::pipe::pipe().unwrap();
    expect_invalid(read, "a pipe");
}

#[test]
#[allow(clippy::print_stderr)]
fn ping_pong_between_threads() {
    let ((mut tx_a, mut rx_a), (mut tx_b, mut rx_b)) = split_pair(DEFAULT_RING_CAPACITY);
    const N: u64 = 20_000;
    let echo = thread::spawn(move || {
        let mut buf = Vec::with_capacity(64);
        for _ in 0..N {
            rx_b.recv_into(&mut buf, soon()).unwrap();
            tx_b.send_parts(&[&buf], soon()).unwrap();
        }
    });
    let mut buf = Vec::with_capacity(64);
    let start = Instant::now();
    for i in 0..N {
        tx_a.send_parts(&[&i.to_le_bytes()], soon()).unwrap();
        rx_a.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, i.to_le_bytes());
    }
    let elapsed = start.elapsed();
    echo.join().unwrap();
    eprintln!(
        "shm round trip between threads: {:.2} µs",
        elapsed.as_secs_f64() * 1e6 / N as f64
    );
}

#[test]
#[allow(clippy::print_stderr)]
fn throughput_of_64_mib_messages() {
    let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(DEFAULT_RING_CAPACITY);
    const ROUNDS: usize = 8;
    let len = 64 << 20;
    let msg = Arc::new(pattern(len, 42));
    let sent = Arc::clone(&msg);
    let writer = thread::spawn(move || {
        for _ in 0..ROUNDS {
            tx.send_parts(&[&sent], soon()).unwrap();
        }
    });
    let mut buf = Vec::new();
    rx.recv_into(&mut buf, soon()).unwrap(); // warms the buffer up
    assert!(buf == *msg);
    let start = Instant::now();
    for _ in 1..ROUNDS {
        rx.recv_into(&mut buf, soon()).unwrap();
    }
    let elapsed = start.elapsed();
    assert!(buf == *msg);
    writer.join().unwrap();
    let bytes = (ROUNDS - 1) * len;
    eprintln!(
        "shm throughput, 64 MiB messages into a reused buffer: {:.2} GiB/s",
        bytes as f64 / elapsed.as_secs_f64() / (1u64 << 30) as f64
    );
}

/// Forks; the child runs `child` and `_exit`s with its result (101 on panic). Returns the
/// child's pid in the parent; `child` is dropped there unrun.
fn fork_child(child: impl FnOnce() -> i32) -> libc::pid_t {
    spinning_pays(); // cache the CPU count before forking
    // SAFETY: the child only runs `child`, which touches its inherited memory, the
    // channel's mapping and system calls, and then `_exit`s without returning to the test
    // harness or running any destructor.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(AssertUnwindSafe(child)).unwrap_or(101);
        // SAFETY: ends the child at once, skipping destructors of inherited state (owned by
        // the parent), as after any fork.
        unsafe { libc::_exit(code) }
    }
    pid
}

/// Waits for the child and returns its exit code (or -signal).
fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: `pid` is our child; `status` is a valid out-pointer.
    let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(ret, pid, "waitpid: {}", io::Error::last_os_error());
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    }
}

#[test]
#[allow(clippy::print_stderr)]
fn ping_pong_between_processes() {
    const N: u64 = 10_000;
    let (a, fd) = ShmChannel::create(DEFAULT_RING_CAPACITY).unwrap();
    let mut child_buf = Vec::with_capacity(64);
    let pid = fork_child(move || {
        let Ok(b) = ShmChannel::open(fd) else {
            return 2;
        };
        let (mut tx, mut rx) = b.split();
        for _ in 0..N {
            if rx.recv_into(&mut child_buf, soon()).is_err() {
                return 3;
            }
            if tx.send_parts(&[&child_buf], soon()).is_err() {
                return 4;
            }
        }
        // A graceful close: the parent sees `Disconnected` next.
        drop((tx, rx));
        0
    });
    let (mut tx, mut rx) = a.split();
    let mut buf = Vec::with_capacity(64);
    let start = Instant::now();
    for i in 0..N {
        tx.send_parts(&[&i.to_le_bytes()], soon()).unwrap();
        rx.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, i.to_le_bytes());
    }
    let elapsed = start.elapsed();
    assert!(matches!(
        rx.recv_into(&mut buf, soon()),
        Err(RecvError::Disconnected)
    ));
    assert_eq!(wait_child(pid), 0);
    eprintln!(
        "shm round trip between processes: {:.2} µs",
        elapsed.as_secs_f64() * 1e6 / N as f64
    );
}

#[test]
fn a_dead_child_is_reported_through_notify() {
    let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
    let pid = fork_child(move || {
        let Ok(b) = ShmChannel::open(fd) else {
            return 2;
        };
        let (mut tx, rx) = b.split();
        if tx.send_parts(&[b"hello"], soon()).is_err() {
            return 3;
        }
        thread::sleep(Duration::from_millis(100));
        // Dies without closing anything, as a crash would.
        mem::forget((tx, rx));
        0
    });
    let (mut tx, mut rx) = a.split();
    let death = rx.peer_death();
    let supervisor = thread::spawn(move || {
        let code = wait_child(pid);
        death.notify();
        code
    });
    // The child never reads: this blocks on a full ring until the death is declared.
    let writer = thread::spawn(move || tx.send_parts(&[&pattern(3 * MIN_CAPACITY, 0)], soon()));
    let mut buf = Vec::new();
    rx.recv_into(&mut buf, soon()).unwrap();
    assert_eq!(buf, b"hello");
    let end = rx.recv_into(&mut buf, soon());
    assert!(matches!(end, Err(RecvError::Disconnected)), "{end:?}");
    let sent = writer.join().unwrap();
    assert!(matches!(sent, Err(SendError::Disconnected)), "{sent:?}");
    assert_eq!(supervisor.join().unwrap(), 0);
}
