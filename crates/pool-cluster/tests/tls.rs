//! `rediss://` (feature `tls`) against a real redis-server listening on a TLS port with a
//! self-signed certificate made here by the `openssl` CLI: a chunk goes from a broker to a
//! consumer and its outcome back, both over TLS. Without the feature this file is empty
//! (`cargo test -p pool-cluster --features tls` runs it).

#![cfg(feature = "tls")]

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{FP, broker, recv_n, timeouts};
use pool_cluster::{Consumer, ConsumerOptions, Outcome};
use pool_testkit::RedisServer;

/// Runs the `openssl` CLI with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the TLS test needs the openssl CLI (Debian package openssl)");
    assert!(status.success(), "openssl {args:?} failed: {status}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`: `ca.pem`,
/// `server.pem`, `server.key`.
fn certificates(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ]
        .into_iter()
        .chain([
            "-subj",
            "/CN=pool test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])
        .collect::<Vec<_>>(),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ]
        .into_iter()
        .chain(["-keyout", "server.key", "-out", "server.csr"])
        .collect::<Vec<_>>(),
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
        ]
        .into_iter()
        .chain([
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ])
        .collect::<Vec<_>>(),
    );
}

#[test]
fn a_chunk_and_its_outcome_travel_over_tls() {
    let dir = std::env::temp_dir().join(format!("pool-cluster-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (cert, key) = (path("server.pem"), path("server.key"));
    let tls_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port = tls_port.to_string();
    let _server = RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-auth-clients",
        "no",
    ]);
    // The client trusts the test CA as it would any other: through the system's roots,
    // which SSL_CERT_FILE replaces (rustls-native-certs reads it). The server's certificate
    // is verified, name included.
    // SAFETY: this test binary runs this one test, and nothing else reads the environment
    // meanwhile.
    unsafe { std::env::set_var("SSL_CERT_FILE", path("ca.pem")) };
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let mut client = broker(&url, "tls");
    let mut worker = Consumer::join(
        &url,
        ConsumerOptions::new("tls", "h1/w0", FP).timeouts(timeouts()),
    )
    .unwrap();
    client.submit(1, 0, b"f", b"over tls").unwrap();
    let entry = worker
        .claim(Duration::from_millis(500))
        .unwrap()
        .expect("the chunk");
    assert_eq!(&entry.payload[..], b"over tls");
    worker.complete(&entry, Ok(b"back over tls")).unwrap();
    let got = recv_n(&mut client, 1, Duration::from_secs(60));
    assert_eq!(got[0].outcome, Outcome::Ok(b"back over tls".to_vec()));
    let _ = std::fs::remove_dir_all(&dir);
}
