//! A chunk of another build reaches a host: it is not run, the host logs why through
//! `tracing` naming both fingerprints, and a host of the chunk's build runs it without
//! waiting for a lease. In a test binary of its own because it installs a global `tracing`
//! subscriber to read the log.

// The captured log is printed when the test fails.
#![allow(clippy::print_stderr)]

mod common;

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use common::{FP, OTHER_FP, host_options, recv_n, run, timeouts, wait_until};
use pool_cluster::{Broker, BrokerOptions, Host, HostOptions, Outcome};
use pool_testkit::RedisServer;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Keeps every event's fields as one line.
struct Capture;

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        LINES.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// Prints the captured log when the test fails, which says what the hosts did.
struct LogOnFailure;

impl Drop for LogOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for line in LINES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                eprintln!("log: {line}");
            }
        }
    }
}

#[test]
fn a_foreign_chunk_is_not_run_is_logged_with_both_fingerprints_and_runs_on_its_build() {
    tracing::subscriber::set_global_default(Capture).unwrap();
    let _log = LogOnFailure;
    let server = RedisServer::start();
    let url = server.url();
    // A lease no run of this test waits out: the chunk reaches its build through the parked
    // consumer of that build, not by a takeover after the lease. Deadlines are hang guards.
    let lease = Duration::from_secs(600);
    let ours = Host::start(&url, host_options("foreign", "h1", 1, lease)).unwrap();
    let options = BrokerOptions::new("foreign", OTHER_FP).timeouts(timeouts());
    let mut client = Broker::connect(&url, options).unwrap();
    client.submit(1, 0, b"echo", b"x").unwrap();
    let (theirs, mine) = (OTHER_FP.to_string(), FP.to_string());
    wait_until(Duration::from_secs(60), "the refusal is logged", || {
        LINES
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&theirs) && l.contains(&mine) && l.contains("worker=h1/w0"))
    });
    // Our host's worker goes on claiming (it logs the refusal after the park): it does not
    // take the parked chunk back.
    assert_eq!(
        client.recv(Duration::from_millis(500)).unwrap(),
        None,
        "a foreign build ran the chunk"
    );
    assert_eq!(ours.stats().died, 0);
    let their_host = HostOptions::new("foreign", OTHER_FP, run)
        .host_id("h2")
        .processes(1)
        .lease(lease)
        .claim_block(Duration::from_millis(100))
        .timeouts(timeouts());
    let _theirs = Host::start(&url, their_host).unwrap();
    let got = recv_n(&mut client, 1, Duration::from_secs(120));
    assert_eq!(
        (got[0].outcome.clone(), got[0].consumer.as_str()),
        (Outcome::Ok(b"x".to_vec()), "h2/w0")
    );
    assert_eq!(got[0].deliveries, 1, "refusals do not count as deliveries");
}
