//! One conformance suite for every transport (the style of ipc-channel's
//! `src/platform/test.rs`): each test runs once per [`TransportKind`].
//!
//! The contract is in `src/transport/mod.rs`. Tests that need a peer to die mid-message use a
//! real child process and, like a pool's supervisor, tell the channel through `PeerDeath`
//! once the child's pidfd reports its exit.

#![allow(clippy::print_stderr)]

use std::thread;
use std::time::{Duration, Instant};

use pool_ipc::{
    Channel, ChildStart, ReadError, RecvError, SendError, SpawnOptions, TransportKind, spawn,
};

const GENEROUS: Duration = Duration::from_secs(20);

fn soon() -> Option<Instant> {
    Some(Instant::now() + GENEROUS)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A child that sends one enormous message, slowly enough to be killed in the middle.
fn sends_forever(mut start: ChildStart) -> i32 {
    let big = vec![0xabu8; 1 << 30];
    let _ = start.channel.send(&big, None);
    thread::sleep(Duration::from_secs(600));
    0
}

macro_rules! conformance {
    ($module:ident, $kind:expr) => {
        mod $module {
            use super::*;

            fn pair() -> (Channel, Channel) {
                Channel::pair($kind).expect("creating a channel pair")
            }

            #[test]
            fn a_whole_message_is_told_apart_from_none() {
                let (mut a, mut b) = pair();
                assert!(!b.receiver().has_message());
                a.send(b"first", soon()).unwrap();
                a.send(b"", soon()).unwrap();
                let mut buf = Vec::new();
                b.recv_into(&mut buf, soon()).unwrap();
                // The pipe flavor knows of what it has staged; the ring of all it holds.
                assert!(b.receiver().has_message());
                b.recv_into(&mut buf, soon()).unwrap();
                assert!(buf.is_empty());
                assert!(!b.receiver().has_message());
            }

            #[test]
            fn messages_keep_order_and_boundaries() {
                let (mut a, mut b) = pair();
                let sender = thread::spawn(move || {
                    for i in 0..2000u32 {
                        let msg = pattern((i % 300) as usize, i as u8);
                        a.send(&msg, soon()).unwrap();
                    }
                    a
                });
                let mut buf = Vec::new();
                for i in 0..2000u32 {
                    b.recv_into(&mut buf, soon()).unwrap();
                    assert_eq!(buf, pattern((i % 300) as usize, i as u8), "message {i}");
                }
                drop(sender.join().unwrap());
            }

            #[test]
            fn messages_land_in_a_slice_or_come_back_whole() {
                let (mut a, mut b) = pair();
                let sender = thread::spawn(move || {
                    // The 3 MiB one streams through a shared-memory ring.
                    for (len, seed) in [(5usize, 1u8), (0, 2), (4096, 3), (3 << 20, 4), (6, 5)] {
                        a.send(&pattern(len, seed), soon()).unwrap();
                    }
                    a
                });
                let mut dst = vec![0u8; 4096];
                let mut scratch = Vec::new();
                let mut next = || b.recv_into_slice(&mut dst, &mut scratch).unwrap();
                assert_eq!(next(), Ok(5));
                assert_eq!(next(), Ok(0));
                assert_eq!(next(), Ok(4096));
                assert_eq!(next(), Err(pattern(3 << 20, 4)));
                assert_eq!(next(), Ok(6));
                assert_eq!(&dst[..6], &pattern(6, 5)[..]);
                drop(sender.join().unwrap());
            }

            #[test]
            fn empty_messages_are_messages() {
                let (mut a, mut b) = pair();
                a.send(b"", soon()).unwrap();
                a.send(b"x", soon()).unwrap();
                a.send(b"", soon()).unwrap();
                let mut buf = vec![1, 2, 3];
                b.recv_into(&mut buf, soon()).unwrap();
                assert!(buf.is_empty());
                b.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(buf, b"x");
                b.recv_into(&mut buf, soon()).unwrap();
                assert!(buf.is_empty());
            }

            #[test]
            fn sizes_from_zero_to_64_mib_and_parts() {
                let (a, mut b) = pair();
                let sizes = [0usize, 1, 7, 8, 9, 65_536, 3 << 20, 64 << 20];
                let sender = thread::spawn(move || {
                    let mut a = a;
                    for (i, size) in sizes.iter().enumerate() {
                        a.send(&pattern(*size, i as u8), soon()).unwrap();
                    }
                    // One message from several parts.
                    a.send_parts(&[b"head", b"", &pattern(100_000, 9)], soon())
                        .unwrap();
                    a
                });
                let mut buf = Vec::new();
                for (i, size) in sizes.iter().enumerate() {
                    b.recv_into(&mut buf, soon()).unwrap();
                    assert_eq!(buf.len(), *size);
                    assert!(
                        buf == pattern(*size, i as u8),
                        "content of the {size}-byte message"
                    );
                }
                b.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(&buf[..4], b"head");
                assert!(buf[4..] == pattern(100_000, 9)[..]);
                drop(sender.join().unwrap());
            }

            #[test]
            fn both_sides_sending_big_messages_do_not_deadlock() {
                // Each side sends on one thread and receives on another: a full channel must
                // never stop a side that keeps receiving.
                let (a, b) = pair();
                let run = |chan: Channel, seed: u8| {
                    let (mut tx, mut rx) = chan.split();
                    let sender = thread::spawn(move || {
                        for i in 0..6u8 {
                            tx.send(&pattern(4 << 20, seed ^ i), soon()).unwrap();
                        }
                        tx
                    });
                    let receiver = thread::spawn(move || {
                        let mut buf = Vec::new();
                        for i in 0..6u8 {
                            rx.recv_into(&mut buf, soon()).unwrap();
                            assert!(buf == pattern(4 << 20, (seed ^ 0xff) ^ i));
                        }
                        rx
                    });
                    (sender, receiver)
                };
                let (sa, ra) = run(a, 0);
                let (sb, rb) = run(b, 0xff);
                let halves = (
                    sa.join().unwrap(),
                    ra.join().unwrap(),
                    sb.join().unwrap(),
                    rb.join().unwrap(),
                );
                drop(halves);
            }

            #[test]
            fn a_closed_peer_is_disconnected_after_its_messages_are_read() {
                let (mut a, mut b) = pair();
                a.send(b"last words", soon()).unwrap();
                drop(a);
                let mut buf = Vec::new();
                b.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(buf, b"last words");
                assert!(matches!(
                    b.recv_into(&mut buf, soon()),
                    Err(RecvError::Disconnected)
                ));
                assert!(matches!(
                    b.send(b"anyone?", soon()),
                    Err(SendError::Disconnected)
                ));
            }

            #[test]
            fn a_deadline_gives_timeout_and_the_channel_stays_usable() {
                let (mut a, mut b) = pair();
                let mut buf = Vec::new();
                let t = Instant::now();
                let r = b.recv_into(&mut buf, Some(Instant::now() + Duration::from_millis(50)));
                assert!(matches!(r, Err(RecvError::Timeout)), "{r:?}");
                assert!(t.elapsed() >= Duration::from_millis(50));
                a.send(b"late", soon()).unwrap();
                b.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(buf, b"late");
            }

            #[test]
            fn waiting_for_a_message_consumes_none_of_it() {
                let (a, b) = pair();
                let (mut tx, a_rx) = a.split();
                let (_b_tx, mut rx) = b.split();
                let short = || Some(Instant::now() + Duration::from_millis(20));
                assert!(!rx.wait_readable(short()).unwrap(), "nothing sent yet");
                // Bigger than a ring or a socket's buffer: it arrives in pieces, and waits
                // that end between them leave the channel in step.
                let big = pattern(8 << 20, 3);
                let sent = big.clone();
                let sender = thread::spawn(move || {
                    tx.send(&sent, soon()).unwrap();
                    tx.send(b"after", soon()).unwrap();
                    tx
                });
                let until = Instant::now() + GENEROUS;
                while !rx.wait_readable(short()).unwrap() {
                    assert!(Instant::now() < until, "the message never came");
                }
                assert!(rx.wait_readable(short()).unwrap(), "still there");
                let mut buf = Vec::new();
                rx.recv_into(&mut buf, soon()).unwrap();
                assert!(buf == big, "the message came whole");
                assert!(rx.wait_readable(soon()).unwrap());
                rx.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(buf, b"after");
                drop((sender.join().unwrap(), a_rx));
                // A peer that is gone: the wait ends, and the receive says why.
                let ended = rx.wait_readable(soon());
                assert!(
                    matches!(ended, Ok(true) | Err(RecvError::Disconnected)),
                    "{ended:?}"
                );
                assert!(matches!(
                    rx.recv_into(&mut buf, soon()),
                    Err(RecvError::Disconnected)
                ));
            }

            #[test]
            fn oversized_messages_are_refused_on_both_sides() {
                // The sender refuses what exceeds its own limit, before writing anything.
                let (a, _b) = pair();
                let mut a = a.with_max_message(1024);
                assert!(matches!(
                    a.send(&[0; 1025], soon()),
                    Err(SendError::TooLarge {
                        len: 1025,
                        limit: 1024
                    })
                ));
                // The receiver refuses what exceeds its limit, whatever the peer's.
                let (mut c, d) = pair();
                c.send(&[0; 2000], soon()).unwrap();
                let mut d = d.with_max_message(1024);
                let mut buf = Vec::new();
                assert!(matches!(
                    d.recv_into(&mut buf, soon()),
                    Err(RecvError::TooLarge {
                        len: 2000,
                        limit: 1024
                    })
                ));
                assert!(
                    buf.capacity() < 2000,
                    "nothing was reserved for the refused message"
                );
            }

            #[test]
            fn a_message_is_read_piecewise_and_what_is_left_is_skipped() {
                let (mut a, mut b) = pair();
                // Larger than the shm ring and the pipe's staging buffer, so parts wrap and
                // arrive while they are read.
                let big = pattern(9 << 20, 5);
                let sender = thread::spawn(move || {
                    a.send_parts(&[b"head", &big, b"tail"], soon()).unwrap();
                    a.send(b"untouched", soon()).unwrap();
                    a.send(b"next", soon()).unwrap();
                    (a, big)
                });
                let (head, body, rest) = b
                    .recv_with(|r| {
                        let mut head = [0u8; 4];
                        r.read_exact(&mut head).unwrap();
                        let mut body = vec![7u8];
                        r.read_to_vec(&mut body, 9 << 20).unwrap();
                        (head, body, r.remaining())
                    })
                    .unwrap();
                let (_a, big) = sender.join().unwrap();
                assert_eq!(&head, b"head");
                assert_eq!(body[0], 7, "appended after what the vector held");
                assert!(body[1..] == big[..]);
                assert_eq!(rest, 4);
                // A message left unread entirely is consumed too.
                b.recv_with(|_| ()).unwrap();
                let mut buf = Vec::new();
                b.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(buf, b"next");
            }

            #[test]
            fn a_read_past_the_end_is_refused_and_the_stream_stays_in_step() {
                let (mut a, mut b) = pair();
                a.send(b"short", soon()).unwrap();
                a.send(b"after", soon()).unwrap();
                let refused = b
                    .recv_with(|r| {
                        let mut v = Vec::new();
                        let refused = r.read_to_vec(&mut v, 1 << 40);
                        let mut six = [0u8; 6];
                        (refused, r.read_exact(&mut six), v.capacity(), r.remaining())
                    })
                    .unwrap();
                assert_eq!(
                    refused,
                    (
                        Err(ReadError::PastEnd {
                            want: 1 << 40,
                            left: 5
                        }),
                        Err(ReadError::PastEnd { want: 6, left: 5 }),
                        0,
                        5
                    )
                );
                let mut buf = Vec::new();
                b.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(buf, b"after");
            }

            #[test]
            fn a_peer_killed_mid_message_read_piecewise_is_a_disconnect() {
                let mut spawned =
                    spawn(sends_forever, b"", &SpawnOptions::new().transport($kind)).unwrap();
                let death = spawned.channel.peer_death();
                let (_tx, mut rx) = spawned.channel.split();
                let receiver = thread::spawn(move || {
                    rx.recv_with(|r| {
                        let mut v = Vec::new();
                        let len = r.remaining();
                        (r.read_to_vec(&mut v, len), v.len())
                    })
                });
                thread::sleep(Duration::from_millis(100));
                spawned.child.kill().unwrap();
                spawned
                    .child
                    .wait_timeout(GENEROUS)
                    .unwrap()
                    .expect("child exited");
                death.notify();
                let r = receiver.join().unwrap();
                assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
            }

            #[test]
            fn a_peer_killed_mid_message_is_a_disconnect_not_a_hang() {
                let mut spawned =
                    spawn(sends_forever, b"", &SpawnOptions::new().transport($kind)).unwrap();
                let death = spawned.channel.peer_death();
                let (_tx, mut rx) = spawned.channel.split();
                let receiver = thread::spawn(move || {
                    let mut buf = Vec::new();
                    let r = rx.recv_into(&mut buf, soon());
                    (r, buf.len())
                });
                // Let part of the message arrive, then kill the sender; the supervisor's part
                // (pidfd -> PeerDeath) is played by this thread.
                thread::sleep(Duration::from_millis(100));
                let t = Instant::now();
                spawned.child.kill().unwrap();
                spawned
                    .child
                    .wait_timeout(GENEROUS)
                    .unwrap()
                    .expect("child exited");
                death.notify();
                let (r, got) = receiver.join().unwrap();
                eprintln!(
                    "{:?}: disconnect seen {:?} after kill, {got} bytes in",
                    $kind,
                    t.elapsed()
                );
                assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
                assert!(t.elapsed() < GENEROUS);
            }
        }
    };
}

conformance!(pipe, TransportKind::Pipe);
conformance!(shm, TransportKind::Shm);

/// Hostile bytes on the pipe transport's raw socket: a header claiming a huge length, and a
/// message cut short. (The shm ring has the same checks, tested beside its code.)
mod pipe_raw {
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    use pool_ipc::transport::pipe::PipeChannel;

    use super::*;

    fn raw_pair() -> (UnixStream, Channel) {
        let (raw, ours) = PipeChannel::pair().unwrap();
        (UnixStream::from(raw.into_fd()), Channel::from(ours))
    }

    #[test]
    fn a_message_half_arrived_is_not_a_whole_one() {
        let (mut raw, mut chan) = raw_pair();
        let mut bytes = 3u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(b"de");
        raw.write_all(&bytes).unwrap();
        let mut buf = Vec::new();
        chan.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"abc");
        assert!(
            chan.receiver().has_buffered(),
            "the second message's start is here"
        );
        assert!(!chan.receiver().has_message(), "but not all of it");
        raw.write_all(b"fgh").unwrap();
        chan.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"defgh");
    }

    #[test]
    fn a_lying_length_header_is_refused_without_allocating() {
        let (mut raw, chan) = raw_pair();
        let mut chan = chan.with_max_message(1 << 20);
        raw.write_all(&(1u64 << 40).to_le_bytes()).unwrap();
        let mut buf = Vec::new();
        assert!(matches!(
            chan.recv_into(&mut buf, soon()),
            Err(RecvError::TooLarge { len, .. }) if len == 1 << 40
        ));
        assert_eq!(buf.capacity(), 0);
    }

    #[test]
    fn a_header_within_the_limit_but_never_followed_costs_only_what_arrived() {
        let (mut raw, mut chan) = raw_pair();
        // Claims 8 GiB (under the default limit), sends 10 bytes, then hangs up.
        raw.write_all(&(8u64 << 30).to_le_bytes()).unwrap();
        raw.write_all(&[1; 10]).unwrap();
        drop(raw);
        let mut buf = Vec::new();
        assert!(matches!(
            chan.recv_into(&mut buf, soon()),
            Err(RecvError::Disconnected)
        ));
        assert!(
            buf.capacity() <= 128 << 20,
            "reserved {} bytes",
            buf.capacity()
        );
    }

    #[test]
    fn descriptors_travel_with_their_message() {
        use std::io::Read;
        use std::os::fd::AsFd;
        let (a, b) = Channel::pair(TransportKind::Pipe).unwrap();
        let ((mut tx, _), (_, mut rx)) = (a.split(), b.split());
        let (mut reader, writer) = UnixStream::pair().unwrap();
        tx.send(b"plain", soon()).unwrap();
        tx.send_parts_with_fds(&[b"with one"], &[writer.as_fd()], soon())
            .unwrap();
        drop(writer);
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"plain");
        rx.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"with one");
        let mut fds = rx.take_fds(1).expect("the descriptor arrived");
        assert!(rx.take_fds(1).is_none());
        let mut received = UnixStream::from(fds.pop().unwrap());
        received.write_all(b"through it").unwrap();
        drop(received);
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through it");
        let (shm, _peer) = Channel::pair(TransportKind::Shm).unwrap();
        let (mut shm_tx, _) = shm.split();
        let (_r, w) = UnixStream::pair().unwrap();
        assert!(
            shm_tx
                .send_parts_with_fds(&[b"x"], &[w.as_fd()], soon())
                .is_err()
        );
    }

    #[test]
    fn a_message_cut_short_read_piecewise_is_a_disconnect() {
        let (mut raw, mut chan) = raw_pair();
        // Claims 8 GiB (under the default limit), sends 10 bytes, then hangs up: a reader
        // that believes the length is stopped by the disconnect, having reserved little.
        raw.write_all(&(8u64 << 30).to_le_bytes()).unwrap();
        raw.write_all(&[1; 10]).unwrap();
        drop(raw);
        let got = chan.recv_with(|r| {
            let mut v = Vec::new();
            let len = r.remaining();
            let read = r.read_to_vec(&mut v, len);
            assert!(v.capacity() <= 128 << 20, "reserved {} bytes", v.capacity());
            read
        });
        assert!(matches!(got, Err(RecvError::Disconnected)), "{got:?}");
    }

    #[test]
    fn a_truncated_header_is_a_disconnect() {
        let (mut raw, mut chan) = raw_pair();
        raw.write_all(&[5, 0, 0]).unwrap();
        drop(raw);
        let mut buf = Vec::new();
        assert!(matches!(
            chan.recv_into(&mut buf, soon()),
            Err(RecvError::Disconnected)
        ));
    }
}
