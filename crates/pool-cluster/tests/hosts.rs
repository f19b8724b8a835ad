//! Hosts with real worker processes against a real redis-server: the work runs, is shared,
//! survives workers, hosts and Redis dying, and poison ends.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{FP, broker, host_options, plain, recv_n, timeouts, wait_until};
use pool_cluster::{
    Broker, BrokerOptions, Consumer, ConsumerOptions, Host, Outcome, RecvError, serve,
};
use pool_ipc::{ChildStart, SpawnOptions, spawn};
use pool_testkit::RedisServer;

/// A lease no run waits out: nothing is taken over, however slowly the test runs.
const LONG_LEASE: Duration = Duration::from_secs(30);
/// For hosts where a takeover changes no outcome the test checks (one worker, or a client
/// that is gone), so that they renew and look for takeovers often while it watches them.
const SHORT_LEASE: Duration = Duration::from_millis(500);
/// The lease after which a killed host's chunks are taken over: long beside the third of it
/// at which the survivor renews its own running chunks, so that a loaded machine does not
/// let it take over its own.
const TAKEOVER_LEASE: Duration = Duration::from_secs(2);
/// The hang guard of every wait.
const GUARD: Duration = Duration::from_secs(60);

fn text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(b) | Outcome::Failed(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn chunks_run_on_a_hosts_workers_with_one_outcome_each() {
    let server = RedisServer::start();
    let url = server.url();
    let host = Host::start(&url, host_options("run", "h1", 2, LONG_LEASE)).unwrap();
    let mut client = broker(&url, "run");
    client.submit(1, 0, b"echo", b"hello").unwrap();
    client.submit(1, 1, b"fail", b"").unwrap();
    client.submit(1, 2, b"panic", b"").unwrap();
    let mut got = recv_n(&mut client, 3, GUARD);
    got.sort_by_key(|c| c.index);
    assert_eq!(got[0].outcome, Outcome::Ok(b"hello".to_vec()));
    assert_eq!(got[1].outcome, Outcome::Failed(b"asked to fail".to_vec()));
    assert_eq!(text(&got[2].outcome), "panicked: asked to panic");
    assert!(
        got.iter()
            .all(|c| c.consumer.starts_with("h1/w") && c.deliveries == 1)
    );
    assert_eq!(client.recv(Duration::from_millis(200)).unwrap(), None);
    assert_eq!(client.stats().stale, 0);
    let stats = host.stats();
    assert_eq!((stats.started, stats.died), (2, 0));
    host.stop().unwrap();
}

#[test]
fn two_hosts_share_the_work() {
    let server = RedisServer::start();
    let url = server.url();
    let h1 = Host::start(&url, host_options("share", "h1", 1, LONG_LEASE)).unwrap();
    let h2 = Host::start(&url, host_options("share", "h2", 1, LONG_LEASE)).unwrap();
    let mut client = broker(&url, "share");
    for index in 0..12 {
        client.submit(1, index, b"sleep", b"40").unwrap();
    }
    let got = recv_n(&mut client, 12, GUARD);
    let mut by_host = BTreeMap::new();
    for c in &got {
        assert!(matches!(c.outcome, Outcome::Ok(_)), "{c:?}");
        *by_host
            .entry(c.consumer.split('/').next().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(by_host.len(), 2, "both hosts ran chunks: {by_host:?}");
    let mut indexes: Vec<u32> = got.iter().map(|c| c.index).collect();
    indexes.sort();
    assert_eq!(indexes, (0..12).collect::<Vec<_>>());
    drop((h1, h2));
}

#[test]
fn a_worker_killed_mid_chunk_fails_it_at_once_and_is_replaced() {
    let server = RedisServer::start();
    let url = server.url();
    // A long lease: the outcome must come from the supervisor seeing the death, not from a
    // lease running out.
    let host = Host::start(&url, host_options("killed", "h1", 1, LONG_LEASE)).unwrap();
    let mut client = broker(&url, "killed");
    let start = Instant::now();
    client.submit(1, 0, b"die", b"").unwrap();
    let got = recv_n(&mut client, 1, GUARD);
    assert_eq!(
        (got[0].outcome.clone(), got[0].deliveries),
        (Outcome::WorkerLost, 1)
    );
    assert_eq!(got[0].consumer, "h1/supervisor");
    assert!(
        start.elapsed() < LONG_LEASE,
        "not a takeover after the lease"
    );
    client.submit(1, 1, b"echo", b"again").unwrap();
    let got = recv_n(&mut client, 1, GUARD);
    assert_eq!(
        (got[0].outcome.clone(), got[0].consumer.as_str()),
        (Outcome::Ok(b"again".to_vec()), "h1/w0.1")
    );
    wait_until(GUARD, "one death, one failure, one replacement", || {
        let stats = host.stats();
        (stats.started, stats.died, stats.failed_lost) == (2, 1, 1)
    });
}

#[test]
fn a_poison_chunk_fails_after_its_delivery_budget_and_the_host_goes_on() {
    let server = RedisServer::start();
    let url = server.url();
    let host = Host::start(&url, host_options("poison", "h1", 2, LONG_LEASE)).unwrap();
    let options = BrokerOptions::new("poison", FP)
        .tries(3)
        .timeouts(timeouts());
    let mut client = Broker::connect(&url, options).unwrap();
    client.submit(1, 0, b"die", b"").unwrap();
    let got = recv_n(&mut client, 1, GUARD);
    assert_eq!(got[0].outcome, Outcome::Poisoned { deliveries: 3 });
    // The supervisor counts after writing the outcome.
    wait_until(GUARD, "three deaths, two hand-overs, one failure", || {
        let stats = host.stats();
        (stats.died, stats.handed, stats.failed_lost) == (3, 2, 1)
    });
    client.submit(1, 1, b"echo", b"alive").unwrap();
    assert_eq!(
        recv_n(&mut client, 1, GUARD)[0].outcome,
        Outcome::Ok(b"alive".to_vec())
    );
}

/// A host in a process of its own, for killing: payload `URL\nPOOL\nHOST`.
fn host_process(start: ChildStart) -> i32 {
    let text = String::from_utf8(start.payload).unwrap();
    let mut lines = text.lines();
    let (url, pool, host) = (
        lines.next().unwrap(),
        lines.next().unwrap(),
        lines.next().unwrap(),
    );
    serve(url, host_options(pool, host, 2, LONG_LEASE)).map_or(1, |()| 0)
}

#[test]
fn a_killed_hosts_chunks_are_reclaimed_by_another_host_with_one_outcome_each() {
    let server = RedisServer::start();
    let url = server.url();
    let mut client = broker(&url, "hostdies");
    let chunks = 6;
    for index in 0..chunks {
        client.submit(1, index, b"sleep", b"300").unwrap();
    }
    let payload = format!("{url}\nhostdies\nhA");
    let mut doomed = spawn(host_process, payload.as_bytes(), &SpawnOptions::new()).unwrap();
    // Wait until both of its workers run a chunk, then kill the whole host.
    let mut observer = Consumer::join(
        &url,
        ConsumerOptions::new("hostdies", "obs/x", FP).timeouts(timeouts()),
    )
    .unwrap();
    wait_until(GUARD, "host A's workers hold chunks", || {
        observer.pending("hA/w0").unwrap().len() == 1
            && observer.pending("hA/w1").unwrap().len() == 1
    });
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let host_b = Host::start(&url, host_options("hostdies", "hB", 2, TAKEOVER_LEASE)).unwrap();
    let got = recv_n(&mut client, chunks as usize, GUARD);
    let mut indexes: Vec<u32> = got.iter().map(|c| c.index).collect();
    indexes.sort();
    assert_eq!(
        indexes,
        (0..chunks).collect::<Vec<_>>(),
        "one outcome per chunk"
    );
    let lost: Vec<_> = got
        .iter()
        .filter(|c| c.outcome == Outcome::WorkerLost)
        .collect();
    assert_eq!(
        lost.len(),
        2,
        "the two started on the dead host fail (tries 1): {got:?}"
    );
    assert!(
        lost.iter()
            .all(|c| c.deliveries == 1 && c.consumer.starts_with("hB/"))
    );
    assert!(
        got.iter()
            .filter(|c| c.outcome != Outcome::WorkerLost)
            .all(|c| c.consumer.starts_with("hB/") && matches!(c.outcome, Outcome::Ok(_)))
    );
    assert_eq!(client.recv(Duration::from_millis(300)).unwrap(), None);
    assert_eq!(client.stats().stale, 0, "no chunk ended twice");
    assert_eq!(host_b.stats().died, 0);
}

#[test]
fn a_host_outlives_redis_dying_and_serves_a_new_client_after_it_is_back() {
    let mut server = RedisServer::start();
    let url = server.url();
    let host = Host::start(&url, host_options("redisdies", "h1", 1, SHORT_LEASE)).unwrap();
    let client = broker(&url, "redisdies");
    client.submit(1, 0, b"sleep", b"2000").unwrap();
    let mut observer = Consumer::join(
        &url,
        ConsumerOptions::new("redisdies", "obs/x", FP).timeouts(timeouts()),
    )
    .unwrap();
    wait_until(GUARD, "the chunk runs", || {
        !observer.pending("h1/w0").unwrap().is_empty()
    });
    server.kill();
    let start = Instant::now();
    assert!(matches!(client.recv(GUARD * 2), Err(RecvError::Redis(_))));
    // A block of two minutes ended by the error, not waited out.
    assert!(start.elapsed() < GUARD, "took {:?}", start.elapsed());
    server.restart();
    let mut client = broker(&url, "redisdies");
    client.submit(2, 0, b"echo", b"back").unwrap();
    let got = recv_n(&mut client, 1, GUARD);
    assert_eq!(got[0].outcome, Outcome::Ok(b"back".to_vec()));
    assert_eq!(host.stats().died, 0);
}

#[test]
fn garbage_in_the_stream_does_not_hurt_a_host() {
    let server = RedisServer::start();
    let url = server.url();
    let host = Host::start(&url, host_options("junk", "h1", 2, LONG_LEASE)).unwrap();
    let mut client = broker(&url, "junk");
    let mut con = plain(&url);
    for junk in [&b"x"[..], b"", &[0xff; 4096][..]] {
        let _: String = redis::cmd("XADD")
            .arg("pool:{junk}:chunks")
            .arg("*")
            .arg("job")
            .arg(junk)
            .arg(junk)
            .arg(junk)
            .query(&mut con)
            .unwrap();
    }
    client.submit(1, 0, b"echo", b"fine").unwrap();
    assert_eq!(
        recv_n(&mut client, 1, GUARD)[0].outcome,
        Outcome::Ok(b"fine".to_vec())
    );
    // The other worker may still be dropping the last piece of garbage when the good
    // chunk's outcome arrives: wait for it (a watchdog bound, not a timing claim).
    wait_until(GUARD, "the garbage was dropped", || {
        let len: u64 = redis::cmd("XLEN")
            .arg("pool:{junk}:chunks")
            .query(&mut con)
            .unwrap();
        len == 0
    });
    assert_eq!(host.stats().died, 0);
}

#[test]
fn a_gone_clients_keys_expire_while_hosts_idle() {
    let server = RedisServer::start();
    let url = server.url();
    let _host = Host::start(&url, host_options("gone", "h1", 2, SHORT_LEASE)).unwrap();
    // Long enough that the client's keys outlive a loaded machine's stalls while it uses
    // them (its heartbeat rides with its commands).
    let ttl = Duration::from_secs(3);
    let options = BrokerOptions::new("gone", FP).ttl(ttl).timeouts(timeouts());
    let mut client = Broker::connect(&url, options).unwrap();
    client.submit(1, 0, b"echo", b"").unwrap();
    recv_n(&mut client, 1, GUARD);
    client.submit(1, 1, b"sleep", b"100").unwrap();
    let mut con = plain(&url);
    // The client dies (it does not close): only the TTL removes its keys.
    drop(client);
    wait_until(GUARD, "the keys expire", || {
        common::keys_of(&mut con, "gone").is_empty()
    });
    // The hosts, claiming and renewing all along, do not bring any key back.
    let quiet = Instant::now() + SHORT_LEASE * 2;
    while Instant::now() < quiet {
        assert!(common::keys_of(&mut con, "gone").is_empty());
        std::thread::sleep(Duration::from_millis(50));
    }
}
