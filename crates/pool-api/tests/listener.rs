//! `Listener` and `Client` across real processes: a child that inherits nothing connects by
//! address; authentication fails on both sides with a wrong key and no payload is decoded;
//! hostile peers (garbage, silence, a frame cut short) on either side are typed errors within
//! a deadline. Behaviours taken from CPython's `Lib/test/_test_multiprocessing.py`
//! (`_TestListenerClient`, `_TestListener`, `TestWait`, `OtherTest`'s challenge tests) say so.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pool_api::{
    Address, AuthError, Client, Connection, Error, Listener, Pipe, Process, RecvError, SendError,
    wait, wait_timeout,
};
use serde::{Deserialize, Serialize};

/// Long enough for anything that works, short enough that a bug fails instead of hanging.
const GENEROUS: Duration = Duration::from_secs(10);
/// A handshake deadline for the peers that never finish theirs.
const SHORT: Duration = Duration::from_millis(200);

/// A value with some shape, and a large one (well past the handshake's 256-byte limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    words: Vec<String>,
    n: Option<i64>,
    blob: Vec<u8>,
}

fn payload() -> Payload {
    Payload {
        words: vec!["hello".into(), "world".into()],
        n: Some(-42),
        blob: vec![7; 300_000],
    }
}

/// What a child saw, reported through its return value.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Seen {
    /// It connected and got this value.
    Got(Payload),
    /// Its connection failed with this authentication error (its `Debug` form: the error is
    /// not a serde value).
    Auth(String),
    /// Something else failed.
    Other(String),
}

fn seen(e: Error) -> Seen {
    match e {
        Error::Auth(e) => Seen::Auth(format!("{e:?}")),
        other => Seen::Other(other.to_string()),
    }
}

/// Receives a value within [`GENEROUS`].
fn recv_within<T: serde::de::DeserializeOwned>(conn: &mut Connection) -> Result<T, Error> {
    if !conn.poll_timeout(GENEROUS)? {
        return Err(Error::Timeout(GENEROUS));
    }
    Ok(conn.recv()?)
}

/// A child: connects by address (it inherits no descriptor of ours), receives a payload,
/// sends it back doubled, then one more message as bytes.
fn echo_client((address, key): (Address, Option<Vec<u8>>)) -> Seen {
    let run = || -> Result<Payload, Error> {
        let mut conn = Client::connect_timeout(address, key.as_deref(), GENEROUS)?;
        let mut got: Payload = recv_within(&mut conn)?;
        got.n = got.n.map(|n| n * 2);
        conn.send(&got)?;
        conn.send_bytes(b"bye")?;
        Ok(got)
    };
    run().map_or_else(seen, Seen::Got)
}

fn tcp() -> Address {
    Address::from("127.0.0.1:0")
}

fn abstract_address() -> Address {
    // Unique per process and per call: tests of this binary run in parallel.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Address::abstract_name(format!("pool-test-listener-{}-{n}", std::process::id()))
}

/// One address of each family; the directory holds the path and must outlive the listener.
fn every_family(dir: &tempfile::TempDir) -> [Address; 3] {
    [
        Address::unix(dir.path().join("listener.sock")),
        abstract_address(),
        tcp(),
    ]
}

fn accept_within(listener: &Listener) -> Result<Connection, Error> {
    listener
        .accept_timeout(GENEROUS)?
        .ok_or(Error::Timeout(GENEROUS))
}

// CPython: _TestListenerClient.test_listener_client (a Process child connects by address),
// over each family, with and without a key.
#[test]
fn an_unrelated_process_exchanges_values_over_each_family() {
    for key in [None, Some(b"a shared secret".to_vec())] {
        let dir = tempfile::tempdir().unwrap();
        for address in every_family(&dir) {
            let listener = Listener::bind(address.clone(), key.as_deref()).unwrap();
            let bound = listener.address().clone();
            let child = Process::new(echo_client, (bound, key.clone()))
                .unwrap()
                .start()
                .unwrap();
            let mut conn = accept_within(&listener).unwrap();
            conn.send(&payload()).unwrap();
            let back: Payload = recv_within(&mut conn).unwrap();
            assert_eq!(back.n, Some(-84), "{address} key {key:?}");
            assert_eq!(back.blob.len(), 300_000);
            assert_eq!(conn.recv_bytes().unwrap(), b"bye");
            let mut expected = payload();
            expected.n = Some(-84);
            assert_eq!(child.join().unwrap(), Seen::Got(expected));
            // The child exited: end of file, as over a pipe.
            assert_eq!(conn.recv::<u8>(), Err(RecvError::Eof));
        }
    }
}

#[test]
fn a_listener_tells_its_address_and_a_path_socket_is_removed_with_it() {
    let listener = Listener::bind(tcp(), None).unwrap();
    let Address::Tcp(bound) = listener.address() else {
        panic!("{:?}", listener.address())
    };
    assert_eq!(bound.ip().to_string(), "127.0.0.1");
    assert_ne!(bound.port(), 0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = Listener::bind(Address::unix(&path), None).unwrap();
    assert!(path.exists());
    // A second listener on the same path is refused, as in Python.
    let Err(Error::Io(e)) = Listener::bind(Address::unix(&path), None) else {
        panic!("a second bind on the same path succeeded")
    };
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    drop(listener);
    assert!(!path.exists(), "the socket file outlived its listener");
    // And the path can be bound again.
    Listener::bind(Address::unix(&path), None).unwrap();
}

/// A child: connects with `key` and, if that succeeds, reports the value it receives.
fn connects_with((address, key): (Address, Option<Vec<u8>>)) -> Seen {
    match Client::connect_timeout(address, key.as_deref(), GENEROUS) {
        Ok(mut conn) => recv_within::<Payload>(&mut conn).map_or_else(seen, Seen::Got),
        Err(e) => seen(e),
    }
}

/// The server of the authentication tests: sends the payload on every connection it
/// accepts; only what authenticated gets one.
fn serve_once(listener: &Listener) -> Result<(), Error> {
    let mut conn = accept_within(listener)?;
    conn.send(&payload())?;
    Ok(())
}

// CPython: OtherTest.test_answer_challenge_auth_failure / test_deliver_challenge_auth_failure,
// with real processes and both sides checked.
#[test]
fn a_wrong_key_fails_on_both_sides_and_nothing_is_received() {
    let dir = tempfile::tempdir().unwrap();
    for address in every_family(&dir) {
        let listener = Listener::bind(address, Some(b"right key")).unwrap();
        let child = Process::new(
            connects_with,
            (listener.address().clone(), Some(b"wrong key".to_vec())),
        )
        .unwrap()
        .start()
        .unwrap();
        assert_eq!(
            serve_once(&listener),
            Err(Error::Auth(AuthError::WrongDigest))
        );
        assert_eq!(
            child.join().unwrap(),
            Seen::Auth(format!("{:?}", AuthError::Rejected))
        );

        // The listener is unharmed: the next client, with the right key, gets the payload.
        let child = Process::new(
            connects_with,
            (listener.address().clone(), Some(b"right key".to_vec())),
        )
        .unwrap()
        .start()
        .unwrap();
        serve_once(&listener).unwrap();
        assert_eq!(child.join().unwrap(), Seen::Got(payload()));
    }
}

/// A child without a key against a keyed listener: it answers the challenge with a value
/// and reports every message it receives, as bytes, until end of file.
fn talks_without_a_key(address: Address) -> Result<Vec<Vec<u8>>, String> {
    let mut conn = Client::connect_timeout(address, None, GENEROUS).map_err(|e| e.to_string())?;
    conn.send(&"let me in").map_err(|e| e.to_string())?;
    let mut messages = Vec::new();
    loop {
        if !conn.poll_timeout(GENEROUS).map_err(|e| e.to_string())? {
            return Err("nothing within the time limit".into());
        }
        match conn.recv_bytes() {
            Ok(m) => messages.push(m),
            Err(RecvError::Eof) => return Ok(messages),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn a_client_without_a_key_is_refused_and_gets_no_payload() {
    let listener = Listener::bind(tcp(), Some(b"secret")).unwrap();
    let child = Process::new(talks_without_a_key, listener.address().clone())
        .unwrap()
        .start()
        .unwrap();
    let Err(Error::Auth(AuthError::Protocol(why))) = serve_once(&listener) else {
        panic!("a client without the key was accepted")
    };
    assert!(why.contains("{sha256}"), "{why}");
    // The client saw the challenge and the failure, nothing else: no payload was sent.
    let messages = child.join().unwrap().unwrap();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].starts_with(b"#CHALLENGE#{sha256}"));
    assert_eq!(messages[1], b"#FAILURE#");
}

#[test]
fn a_client_with_a_key_against_a_listener_without_one_decodes_nothing() {
    let listener = Listener::bind(tcp(), None).unwrap();
    let child = Process::new(
        connects_with,
        (listener.address().clone(), Some(b"secret".to_vec())),
    )
    .unwrap()
    .start()
    .unwrap();
    // The keyless listener sends its payload at once; the client expected a challenge: the
    // payload is refused (too long for a handshake message: not even read), not decoded.
    // (The send may fail: the client hangs up without reading it.)
    let _ = serve_once(&listener);
    let Seen::Auth(why) = child.join().unwrap() else {
        panic!("the client accepted a listener that does not authenticate")
    };
    assert!(
        why.starts_with("Protocol(") && why.contains("bytes"),
        "{why}"
    );
}

/// A child: connects, waits for a word from the parent over the connection, then sends one.
fn connects_then_sends(address: Address) {
    let mut conn = Client::connect_timeout(address, Some(b"k"), GENEROUS).unwrap();
    let go: String = recv_within(&mut conn).unwrap();
    conn.send(&format!("{go}!")).unwrap();
}

// CPython: TestWait.test_wait_socket / test_neg_timeout, with a listener among the objects.
#[test]
fn wait_takes_listeners_and_connections_together() {
    let listener = Listener::bind(abstract_address(), Some(b"k")).unwrap();
    let (idle, _other_end) = Pipe::duplex().unwrap();
    // Nothing pending, nothing to read.
    assert!(
        wait_timeout(&[&listener, &idle], Duration::from_millis(20))
            .unwrap()
            .is_empty()
    );
    let child = Process::new(connects_then_sends, listener.address().clone())
        .unwrap()
        .start()
        .unwrap();
    // The child connects: the listener is ready, the pipe is not.
    assert_eq!(wait(&[&listener, &idle]).unwrap(), [0]);
    let mut conn = listener.accept().unwrap();
    // Taken: no longer ready.
    assert!(
        wait_timeout(&[&listener, &conn], Duration::ZERO)
            .unwrap()
            .is_empty()
    );
    conn.send(&"go").unwrap();
    assert_eq!(wait(&[&listener, &idle, &conn]).unwrap(), [2]);
    assert_eq!(conn.recv::<String>().unwrap(), "go!");
    child.join().unwrap();
}

#[test]
fn accept_timeout_times_out_and_returns_none() {
    let listener = Listener::bind(tcp(), Some(b"k")).unwrap();
    let t = Instant::now();
    assert!(
        listener
            .accept_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none()
    );
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < GENEROUS, "{took:?}");
    assert!(listener.accept_timeout(Duration::ZERO).unwrap().is_none());
}

/// A frame of the pipe transport, as a hostile peer could write it.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// What a keyed listener with a short handshake deadline makes of a raw client that writes
/// `bytes` (and keeps its socket open until the listener is done), and that it is unharmed.
fn listener_meets(bytes: &[u8]) -> (Error, Duration) {
    let mut listener = Listener::bind(tcp(), Some(b"k")).unwrap();
    listener.set_handshake_timeout(SHORT);
    let Address::Tcp(address) = listener.address().clone() else {
        unreachable!()
    };
    let mut raw = TcpStream::connect(address).unwrap();
    raw.write_all(bytes).unwrap();
    let t = Instant::now();
    let err = accept_within(&listener).unwrap_err();
    let took = t.elapsed();
    drop(raw);
    // The next, honest client is served.
    let client = std::thread::spawn(move || Client::connect_timeout(address, Some(b"k"), GENEROUS));
    let mut conn = accept_within(&listener).unwrap();
    conn.send(&1u8).unwrap();
    assert_eq!(client.join().unwrap().unwrap().recv::<u8>().unwrap(), 1);
    (err, took)
}

#[test]
fn garbage_from_a_raw_client_is_a_typed_error_within_the_deadline() {
    // Text where a frame header should be: an absurd length, refused before any allocation.
    let (err, took) = listener_meets(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(err, Error::Auth(AuthError::Protocol(_))), "{err}");
    assert!(took < SHORT, "{took:?}");
    // A value where the digest should be: refused, not decoded.
    let (err, _) = listener_meets(&frame(&postcard::to_stdvec(&payload()).unwrap()[..200]));
    assert!(matches!(err, Error::Auth(AuthError::Protocol(_))), "{err}");
    // A digest of the right form but not made with the key.
    let (err, _) = listener_meets(&frame(&[b"{sha256}".as_slice(), &[0; 32]].concat()));
    assert_eq!(err, Error::Auth(AuthError::WrongDigest));
    // Half a header, then silence; a frame cut short, then silence: the deadline.
    for bytes in [&b"\x10\0\0"[..], &frame(b"{sha256}0123456789")[..12]] {
        let (err, took) = listener_meets(bytes);
        assert_eq!(err, Error::Auth(AuthError::Timeout(SHORT)));
        assert!(took >= SHORT && took < GENEROUS, "{took:?}");
    }
    // Silence from the start.
    let (err, _) = listener_meets(b"");
    assert_eq!(err, Error::Auth(AuthError::Timeout(SHORT)));
}

#[test]
fn a_raw_client_that_hangs_up_is_a_typed_error() {
    let listener = Listener::bind(abstract_address(), Some(b"k")).unwrap();
    let Address::Abstract(name) = listener.address().clone() else {
        unreachable!()
    };
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    drop(UnixStream::connect_addr(&addr).unwrap());
    assert_eq!(
        accept_within(&listener).unwrap_err(),
        Error::Auth(AuthError::Closed)
    );
}

/// What a keyed client with a short deadline makes of a raw listener that writes `bytes` to
/// it (and then keeps the socket open, reading what comes).
fn client_meets(bytes: &'static [u8]) -> (Error, Duration) {
    let raw = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = raw.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = raw.accept().unwrap();
        s.write_all(bytes).unwrap();
        // Until the client hangs up.
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    });
    let t = Instant::now();
    let err = Client::connect_timeout(address, Some(b"k"), SHORT).unwrap_err();
    let took = t.elapsed();
    server.join().unwrap();
    (err, took)
}

#[test]
fn garbage_from_a_raw_listener_is_a_typed_error_within_the_deadline() {
    let (err, took) = client_meets(b"\xff\xff\xff\xff\xff\xff\xff\xffwhatever");
    assert!(matches!(err, Error::Auth(AuthError::Protocol(_))), "{err}");
    assert!(took < SHORT, "{took:?}");
    // A challenge for a digest we do not speak (Python 3.11's HMAC-MD5: no prefix).
    let md5 = Box::leak(frame(&[b"#CHALLENGE#".as_slice(), &[1; 20]].concat()).into_boxed_slice());
    let (err, _) = client_meets(md5);
    assert!(matches!(err, Error::Auth(AuthError::Protocol(_))), "{err}");
    // A challenge too short to be one.
    let short = Box::leak(frame(b"#CHALLENGE#{sha256}abc").into_boxed_slice());
    let (err, _) = client_meets(short);
    assert!(matches!(err, Error::Auth(AuthError::Protocol(_))), "{err}");
    // A well-formed challenge, then no verdict; and nothing at all.
    let challenge = Box::leak(
        frame(&[b"#CHALLENGE#{sha256}".as_slice(), &[3; 40]].concat()).into_boxed_slice(),
    );
    for bytes in [&challenge[..], b""] {
        let (err, took) = client_meets(bytes);
        assert_eq!(err, Error::Auth(AuthError::Timeout(SHORT)));
        assert!(took >= SHORT && took < GENEROUS, "{took:?}");
    }
}

#[test]
fn connections_carry_no_handles_over_sockets() {
    let listener = Listener::bind(tcp(), None).unwrap();
    let mut client = Client::connect(listener.address().clone(), None).unwrap();
    let (pipe_end, _other) = Pipe::duplex().unwrap();
    // A handle in a value cannot be encoded for a connection (as with a pipe's own ends).
    assert!(matches!(client.send(&pipe_end), Err(SendError::Encode(_))));
    // The connection is still good.
    client.send(&5u32).unwrap();
    assert_eq!(accept_within(&listener).unwrap().recv::<u32>().unwrap(), 5);
}

#[test]
fn an_accepted_connection_can_be_handed_to_a_child() {
    // Connections over TCP are handles like a pipe's ends: a child takes one in its arguments.
    fn replies(mut conn: Connection) {
        let n: u32 = recv_within(&mut conn).unwrap();
        conn.send(&(n + 1)).unwrap();
    }
    let listener = Listener::bind(tcp(), Some(b"k")).unwrap();
    let address = listener.address().clone();
    let client = std::thread::spawn(move || Client::connect(address, Some(b"k")));
    let server_end = accept_within(&listener).unwrap();
    let child = Process::new(replies, server_end).unwrap().start().unwrap();
    let mut conn = client.join().unwrap().unwrap();
    conn.send(&41u32).unwrap();
    assert_eq!(recv_within::<u32>(&mut conn).unwrap(), 42);
    child.join().unwrap();
}
