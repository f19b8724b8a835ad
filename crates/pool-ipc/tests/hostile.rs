//! Hostile bytes into pool-ipc's decoding paths: the stream transport's framing and a child's
//! bootstrap, fed random, truncated and oversized input.
//!
//! What must hold for every input: a typed error (or a message, if the bytes happen to form
//! one), never a panic, never a hang, and never an allocation of the size a header claims
//! before the bytes are there. The shared-memory transport's version of this lives next to
//! its code (`transport::shm`'s `chaos_scribbled_memory_never_panics`), because scribbling
//! needs its layout. `cargo xtask chaos` runs these with many more cases.

#![allow(clippy::print_stderr)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pool_ipc::transport::pipe::PipeChannel;
use pool_ipc::{Channel, EXIT_BOOTSTRAP_FAILED, RecvError};
use pool_testkit::{report, scale};
use proptest::prelude::*;

const GENEROUS: Duration = Duration::from_secs(20);

/// One piece of a hostile stream: raw bytes, or a header announcing some length.
#[derive(Clone, Debug)]
enum Piece {
    Raw(Vec<u8>),
    Header(u64),
    /// A well-formed frame, so that good messages sit between the bad bytes.
    Frame(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600).prop_map(Piece::Raw),
        (0u64..2048).prop_map(Piece::Header),
        any::<u64>().prop_map(Piece::Header),
        Just(Piece::Header(u64::MAX)),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Piece::Frame),
    ]
}

fn bytes_of(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Raw(raw) => out.extend_from_slice(raw),
            Piece::Header(len) => out.extend_from_slice(&len.to_le_bytes()),
            Piece::Frame(body) => {
                out.extend_from_slice(&(body.len() as u64).to_le_bytes());
                out.extend_from_slice(body);
            }
        }
    }
    out
}

/// A channel end whose peer is a raw socket we write anything into.
fn raw_peer() -> (Channel, UnixStream) {
    let (ours, theirs) = PipeChannel::pair().unwrap();
    (Channel::from(ours), UnixStream::from(theirs.into_fd()))
}

static STREAMS: AtomicU64 = AtomicU64::new(0);
static MESSAGES: AtomicU64 = AtomicU64::new(0);

/// Feeds `bytes` (then end of file) to a receiver limited to `limit`-byte messages; every
/// receive must end with a message or a typed error before the deadline.
fn feed_stream(bytes: &[u8], limit: u64) -> Result<(), TestCaseError> {
    let (channel, mut raw) = raw_peer();
    let mut channel = channel.with_max_message(limit);
    // Written from a thread: the stream may be longer than the socket's buffer.
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = raw.write_all(&bytes);
    });
    let deadline = Instant::now() + GENEROUS;
    let mut buf = Vec::new();
    loop {
        match channel.recv_into(&mut buf, Some(deadline)) {
            Ok(()) => {
                MESSAGES.fetch_add(1, Ordering::Relaxed);
                prop_assert!(buf.len() as u64 <= limit);
            }
            Err(RecvError::Timeout) => prop_assert!(false, "a receive hung"),
            // The stream is over, or the receiver refused it: either way, typed.
            Err(RecvError::Disconnected | RecvError::TooLarge { .. } | RecvError::Io(_)) => break,
            Err(e) => prop_assert!(false, "unexpected error {e:?}"),
        }
        // The reservation follows the bytes that arrived, never the header's claim.
        prop_assert!(buf.capacity() <= (128 << 20));
    }
    writer.join().unwrap();
    STREAMS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[test]
fn chaos_hostile_streams_give_messages_or_typed_errors() {
    let cases = scale(256, 20_000) as u32;
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: pool_testkit::proptest_seed(),
        ..ProptestConfig::default()
    };
    let input = (proptest::collection::vec(piece(), 0..12), any::<bool>());
    proptest::test_runner::TestRunner::new(config)
        .run(&input, |(pieces, small_limit)| {
            let limit = if small_limit { 1024 } else { u64::MAX };
            feed_stream(&bytes_of(&pieces), limit)
        })
        .unwrap();
    // A petabyte announced, ten bytes sent: the receiver must not try to reserve it.
    feed_stream(
        &bytes_of(&[Piece::Header(1 << 50), Piece::Raw(vec![1; 10])]),
        u64::MAX,
    )
    .unwrap();
    report(
        "hostile-stream",
        &[
            ("inputs", STREAMS.load(Ordering::Relaxed)),
            ("messages_decoded", MESSAGES.load(Ordering::Relaxed)),
            ("panics", 0),
            ("hangs", 0),
        ],
    );
}

/// Starts this test binary as a would-be child whose control socket carries `bytes` (then
/// end of file), as a broken or hostile parent would send. Returns its exit code and what it
/// replied.
fn hostile_bootstrap(bytes: &[u8]) -> (Option<i32>, Vec<u8>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let theirs: OwnedFd = theirs.into();
    let raw = theirs.as_raw_fd();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("POOL_IPC_CONTROL_FD", raw.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only `fcntl` on a descriptor that stays open in the child (async-signal-safe).
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    drop(theirs);
    let mut writer = ours.try_clone().unwrap();
    let bytes = bytes.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let deadline = Instant::now() + GENEROUS;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    feeder.join().unwrap();
    let mut reply = Vec::new();
    let mut ours = ours;
    ours.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let _ = ours.read_to_end(&mut reply);
    (code, reply)
}

fn bootstrap_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Random bytes, often cut short of what their header says.
        proptest::collection::vec(any::<u8>(), 0..200),
        // A whole frame of garbage: it reaches the decoder.
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(|body| {
            let mut frame = (body.len() as u64).to_le_bytes().to_vec();
            frame.extend(body);
            frame
        }),
        // A header claiming an absurd length, and a little data.
        (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(len, tail)| {
            let mut frame = len.to_le_bytes().to_vec();
            frame.extend(tail);
            frame
        }),
    ]
}

#[test]
fn chaos_hostile_bootstraps_are_refused_with_a_typed_exit() {
    let cases = scale(24, 1_000) as u32;
    let refused_with_reason = AtomicU64::new(0);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        rng_seed: pool_testkit::proptest_seed(),
        ..ProptestConfig::default()
    };
    proptest::test_runner::TestRunner::new(config)
        .run(&bootstrap_input(), |bytes| {
            let (code, reply) = hostile_bootstrap(&bytes);
            // Never a panic (101, or an abort), never a hang (None): the bootstrap's own exit.
            prop_assert_eq!(code, Some(EXIT_BOOTSTRAP_FAILED));
            if !reply.is_empty() {
                refused_with_reason.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    report(
        "hostile-bootstrap",
        &[
            ("inputs", u64::from(cases)),
            (
                "refused_with_reason",
                refused_with_reason.load(Ordering::Relaxed),
            ),
            ("panics", 0),
            ("hangs", 0),
        ],
    );
}
