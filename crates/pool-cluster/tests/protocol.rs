//! The protocol against a real redis-server, in one process: a broker and consumers playing
//! workers and supervisors, with short leases and TTLs. The host's processes are tested in
//! `hosts.rs`.

mod common;

use std::time::{Duration, Instant};

use common::{FP, OTHER_FP, broker, keys_of, plain, recv_n, timeouts, wait_until};
use pool_cluster::{
    Broker, BrokerError, BrokerOptions, ClaimError, ConnectError, Consumer, ConsumerOptions,
    Outcome, RecvError, Submission, SubmitError,
};
use pool_testkit::RedisServer;

fn consumer(url: &str, pool: &str, name: &str, lease: Duration) -> Consumer {
    let options = ConsumerOptions::new(pool, name, FP)
        .lease(lease)
        .timeouts(timeouts());
    Consumer::join(url, options).unwrap()
}

/// A lease no run waits out, and the hang guard of every wait.
const LONG: Duration = Duration::from_secs(30);
const BLOCK: Duration = Duration::from_millis(50);

#[test]
fn hosts_announce_their_build_only_while_the_pool_exists_and_garbage_is_skipped() {
    let server = RedisServer::start();
    let url = server.url();
    let mut host = consumer(&url, "beats", "h1/supervisor", LONG);
    // No client yet: nothing is written (a host never creates a pool's keys).
    host.announce("h1", LONG).unwrap();
    let mut con = plain(&url);
    assert!(keys_of(&mut con, "beats").is_empty());
    let client = broker(&url, "beats");
    assert!(client.hosts().unwrap().is_empty());
    host.announce("h1", LONG).unwrap();
    let _: i64 = redis::cmd("HSET")
        .arg("pool:{beats}:meta")
        .arg("host:junk")
        .arg("not a beat")
        .arg("host:")
        .arg(format!("{FP} 1 1"))
        .query(&mut con)
        .unwrap();
    let hosts = client.hosts().unwrap();
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    assert_eq!(
        (
            hosts[0].id.as_str(),
            hosts[0].fingerprint.clone(),
            hosts[0].lease
        ),
        ("h1", FP.to_string(), LONG)
    );
    assert!(hosts[0].is_live());
}

#[test]
fn completing_a_chunk_reads_the_next_one_in_the_same_round_trip() {
    let server = RedisServer::start();
    let url = server.url();
    let mut client = broker(&url, "next");
    let mut worker = consumer(&url, "next", "h1/w0", LONG);
    client.submit(1, 0, b"f", b"a").unwrap();
    client.submit(1, 1, b"f", b"b").unwrap();
    // The first claim looks at the worker's own pending list; the outcome's write then
    // reads the next chunk.
    let first = worker.claim(BLOCK).unwrap().expect("the first chunk");
    assert!(!worker.has_claimed());
    worker.complete(&first, Ok(b"A")).unwrap();
    assert!(worker.has_claimed(), "the second chunk came with the write");
    let pending = worker.pending("h1/w0").unwrap();
    assert_eq!(
        pending.len(),
        1,
        "it is in the worker's pending list: {pending:?}"
    );
    // Another consumer does not get it: it is this worker's.
    let mut other = consumer(&url, "next", "h1/w1", LONG);
    assert_eq!(other.claim(BLOCK).unwrap(), None);
    let second = worker
        .claim(Duration::ZERO)
        .unwrap()
        .expect("the second chunk");
    assert_eq!(
        (
            second.index,
            &second.payload[..],
            second.deliveries,
            second.id
        ),
        (1, &b"b"[..], 1, pending[0].id)
    );
    assert!(!worker.has_claimed());
    // Nothing queued: the write reads nothing, and no round trip is wasted on an error.
    worker.complete(&second, Ok(b"B")).unwrap();
    assert!(!worker.has_claimed());
    let got = recv_n(&mut client, 2, LONG);
    let mut outcomes: Vec<_> = got.iter().map(|c| (c.index, c.outcome.clone())).collect();
    outcomes.sort_by_key(|(index, _)| *index);
    assert_eq!(
        outcomes,
        [
            (0, Outcome::Ok(b"A".to_vec())),
            (1, Outcome::Ok(b"B".to_vec()))
        ]
    );
    assert!(worker.pending("h1/w0").unwrap().is_empty());
}

#[test]
fn a_worker_that_completes_after_its_pool_is_gone_is_not_held_by_the_read() {
    let server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "gone2");
    let mut worker = consumer(&url, "gone2", "h1/w0", LONG);
    client.submit(1, 0, b"f", b"a").unwrap();
    let entry = worker.claim(BLOCK).unwrap().expect("the chunk");
    client.close().unwrap();
    // The write finds no stream (NOMKSTREAM: nothing is created) and the read no group:
    // neither is an error for the worker, which goes on claiming.
    worker.complete(&entry, Ok(b"late")).unwrap();
    assert!(!worker.has_claimed());
    assert!(matches!(worker.claim(BLOCK), Err(ClaimError::NoPool)));
    assert!(keys_of(&mut plain(&url), "gone2").is_empty());
}

#[test]
fn a_chunk_is_claimed_completed_and_received_exactly_once() {
    let server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "once");
    let mut worker = consumer(&url, "once", "h1/w0", LONG);
    let id = client.submit(7, 3, b"double", b"21").unwrap();
    assert_eq!(client.outstanding(), 1);
    let entry = worker.claim(BLOCK).unwrap().expect("the chunk");
    assert_eq!(
        (
            entry.id,
            entry.job,
            entry.index,
            entry.deliveries,
            entry.tries
        ),
        (id, 7, 3, 1, 1)
    );
    assert_eq!(
        (&entry.call[..], &entry.payload[..], entry.fingerprint),
        (&b"double"[..], &b"21"[..], FP)
    );
    worker.complete(&entry, Ok(b"42")).unwrap();
    let got = client.recv(LONG).unwrap().expect("its outcome");
    assert_eq!(
        (got.job, got.index, got.outcome, got.consumer.as_str()),
        (7, 3, Outcome::Ok(b"42".to_vec()), "h1/w0")
    );
    assert_eq!(client.outstanding(), 0);
    assert_eq!(client.recv(Duration::from_millis(50)).unwrap(), None);
    assert_eq!(
        worker.claim(BLOCK).unwrap(),
        None,
        "acknowledged: not delivered again"
    );
    let mut con = plain(&url);
    let len: u64 = redis::cmd("XLEN")
        .arg("pool:{once}:chunks")
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 0, "the finished chunk was deleted");
    // The results the broker read are deleted with its next read.
    assert_eq!(client.recv(Duration::ZERO).unwrap(), None);
    let len: u64 = redis::cmd("XLEN")
        .arg("pool:{once}:results")
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 0, "the read outcome was deleted");
}

#[test]
fn the_window_bounds_outstanding_chunks_and_repeated_outcomes_are_dropped() {
    let server = RedisServer::start();
    let url = server.url();
    let options = BrokerOptions::new("window", FP)
        .window(2)
        .timeouts(timeouts());
    let mut client = Broker::connect(&url, options).unwrap();
    client.submit(1, 0, b"f", b"").unwrap();
    assert!(matches!(
        client.submit(1, 0, b"f", b""),
        Err(SubmitError::Duplicate { job: 1, index: 0 })
    ));
    client.submit(1, 1, b"f", b"").unwrap();
    assert!(matches!(
        client.submit(1, 2, b"f", b""),
        Err(SubmitError::WindowFull { window: 2 })
    ));
    let mut a = consumer(&url, "window", "h1/w0", LONG);
    let first = a.claim(BLOCK).unwrap().unwrap();
    // The same chunk ends twice (a host thought dead came back): one outcome is handed out.
    a.complete(&first, Ok(b"first")).unwrap();
    a.complete(&first, Ok(b"second")).unwrap();
    let got = recv_n(&mut client, 1, LONG);
    assert_eq!(got[0].outcome, Outcome::Ok(b"first".to_vec()));
    assert_eq!(client.recv(Duration::from_millis(100)).unwrap(), None);
    assert_eq!(client.stats().stale, 1);
    client.submit(1, 2, b"f", b"").unwrap();
}

#[test]
fn submit_many_sends_a_batch_in_order_and_refuses_each_chunk_on_its_own() {
    let server = RedisServer::start();
    let url = server.url();
    let options = BrokerOptions::new("many", FP)
        .window(4)
        .timeouts(timeouts());
    let mut client = Broker::connect(&url, options).unwrap();
    let chunk = |index: u32, payload: &'static [u8]| Submission {
        job: 3,
        index,
        call: b"f",
        payload,
    };
    // The fourth is a duplicate of the first, the sixth finds the window full.
    let batch = [
        chunk(0, b"a"),
        chunk(1, b"b"),
        chunk(2, b"c"),
        chunk(0, b"again"),
        chunk(3, b"d"),
        chunk(4, b"e"),
    ];
    let answers = client.submit_many(&batch).unwrap();
    assert_eq!(answers.len(), 6);
    let ids: Vec<_> = [0, 1, 2, 4]
        .iter()
        .map(|&at| *answers[at].as_ref().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(matches!(
        answers[3],
        Err(SubmitError::Duplicate { job: 3, index: 0 })
    ));
    assert!(matches!(
        answers[5],
        Err(SubmitError::WindowFull { window: 4 })
    ));
    assert_eq!(client.outstanding(), 4);
    assert_eq!(client.stats().submitted, 4);
    // The stream holds them in order, payloads intact; each ends once.
    let mut worker = consumer(&url, "many", "h1/w0", LONG);
    for (index, payload) in [(0u32, b"a"), (1, b"b"), (2, b"c"), (3, b"d")] {
        let entry = worker.claim(BLOCK).unwrap().unwrap();
        assert_eq!((entry.job, entry.index), (3, index));
        assert_eq!(entry.payload, payload.to_vec());
        worker.complete(&entry, Ok(&entry.payload)).unwrap();
    }
    let mut got: Vec<_> = recv_n(&mut client, 4, LONG)
        .into_iter()
        .map(|c| (c.index, c.outcome))
        .collect();
    got.sort_by_key(|(index, _)| *index);
    assert_eq!(got[3], (3, Outcome::Ok(b"d".to_vec())));
    assert_eq!(client.recv(Duration::from_millis(100)).unwrap(), None);
    assert_eq!(client.outstanding(), 0);
    // An empty batch is no round trip and no error.
    assert!(client.submit_many(&[]).unwrap().is_empty());
}

#[test]
fn garbage_entries_are_typed_errors_and_everyone_goes_on() {
    let server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "garbage");
    let mut worker = consumer(&url, "garbage", "h1/w0", LONG);
    let mut con = plain(&url);
    // A chunk's head as the format has it: job, index (le), version, tries (le), fingerprint.
    let head = |job: u64, index: u32, version: u8, tries: u32, fp: &[u8]| {
        let mut h = job.to_le_bytes().to_vec();
        h.extend_from_slice(&index.to_le_bytes());
        h.push(version);
        h.extend_from_slice(&tries.to_le_bytes());
        h.extend_from_slice(fp);
        h
    };
    let garbage: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![("hello", b"world".to_vec())],
        vec![("h", vec![1; 12]), ("d", vec![])],
        vec![("h", head(1, 1, 2, 1, &FP.0)), ("d", vec![]), ("x", vec![])],
        // Job and index readable, the fingerprint too short: a Malformed outcome for (5, 5).
        vec![("h", head(5, 5, 2, 1, &[1; 31])), ("d", vec![])],
        vec![("h", head(5, 6, 3, 1, &FP.0)), ("d", vec![])],
        vec![("h", head(5, 7, 2, 0, &FP.0)), ("d", vec![])],
        vec![("h", vec![1; 49]), ("h", vec![1; 49])],
    ];
    for fields in &garbage {
        let mut cmd = redis::cmd("XADD");
        cmd.arg("pool:{garbage}:chunks").arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(&v[..]);
        }
        let _: String = cmd.query(&mut con).unwrap();
    }
    client.submit(1, 0, b"good", b"").unwrap();
    let mut errors = Vec::new();
    let entry = loop {
        match worker.claim(BLOCK) {
            Ok(Some(entry)) => break entry,
            Ok(None) => panic!("the good chunk never came; errors: {errors:?}"),
            Err(ClaimError::Malformed { error, .. }) => errors.push(error.to_string()),
            Err(e) => panic!("unexpected {e}"),
        }
    };
    assert_eq!(errors.len(), garbage.len(), "{errors:?}");
    assert_eq!((entry.job, entry.index), (1, 0));
    worker.complete(&entry, Ok(b"")).unwrap();
    // Garbage in the results stream is an error about one entry; the broker goes on.
    let _: String = redis::cmd("XADD")
        .arg("pool:{garbage}:results")
        .arg("*")
        .arg("h")
        .arg("ok")
        .query(&mut con)
        .unwrap();
    let mut outcomes = Vec::new();
    let mut malformed = 0;
    let deadline = Instant::now() + LONG;
    while outcomes.is_empty() || malformed == 0 {
        assert!(Instant::now() < deadline, "{outcomes:?} {malformed}");
        match client.recv(Duration::from_millis(100)) {
            Ok(Some(c)) => outcomes.push(c),
            Ok(None) => {}
            Err(RecvError::Malformed { .. }) => malformed += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(outcomes.len(), 1);
    // The chunks with a readable place got a Malformed outcome each; the broker had not
    // submitted them, so it drops them.
    assert_eq!(client.stats().stale, 3);
}

/// An XPENDING row: id, consumer, idle ms, deliveries.
type PendingRow = (String, String, i64, u64);

/// The consumer and delivery count of every entry pending in pool `pool`'s group.
fn pending_of(url: &str, pool: &str) -> Vec<(String, u64)> {
    let pending: Vec<PendingRow> = redis::cmd("XPENDING")
        .arg(format!("pool:{{{pool}}}:chunks"))
        .arg("hosts")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut plain(url))
        .unwrap();
    pending.into_iter().map(|p| (p.1, p.3)).collect()
}

#[test]
fn a_chunk_of_another_build_is_parked_never_run_and_found_by_its_build_at_once() {
    let server = RedisServer::start();
    let url = server.url();
    let options = BrokerOptions::new("foreign", OTHER_FP).timeouts(timeouts());
    let mut client = Broker::connect(&url, options).unwrap();
    // Leases no run waits out: the chunk must reach its build without one passing.
    let mut ours = consumer(&url, "foreign", "h1/w0", LONG);
    client.submit(1, 0, b"f", b"").unwrap();
    let refused = |claimed: Result<Option<_>, ClaimError>| match claimed {
        Err(e @ ClaimError::Foreign { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&OTHER_FP.to_string()) && text.contains(&FP.to_string()),
                "{text}"
            );
        }
        other => panic!("expected Foreign, got {other:?}"),
    };
    refused(ours.claim(BLOCK));
    assert_eq!(
        ours.claim(BLOCK).unwrap(),
        None,
        "parked, not delivered again at once"
    );
    let parked = || (format!("parked:{OTHER_FP}"), 0);
    assert_eq!(
        pending_of(&url, "foreign"),
        [parked()],
        "parked for its build, delivery undone"
    );
    // Taken over by a worker of another build once its lease is over (here at once), it is
    // parked again for its build, still never run.
    assert_eq!(ours.reclaim(Duration::ZERO, 8).unwrap(), 1);
    refused(ours.claim(BLOCK));
    assert_eq!(pending_of(&url, "foreign"), [parked()]);
    let theirs = |name: &str| {
        let options = ConsumerOptions::new("foreign", name, OTHER_FP)
            .lease(LONG)
            .timeouts(timeouts());
        Consumer::join(&url, options).unwrap()
    };
    let mut theirs0 = theirs("h2/w0");
    let entry = theirs0
        .claim(BLOCK)
        .unwrap()
        .expect("its build takes it from the parked consumer, with no lease to wait");
    assert_eq!(entry.deliveries, 1, "the foreign deliveries did not count");
    assert_eq!(
        theirs("h2/w1").claim(BLOCK).unwrap(),
        None,
        "another worker of its build does not take it from the one running it"
    );
    theirs0.complete(&entry, Ok(b"ran")).unwrap();
    assert_eq!(recv_n(&mut client, 1, LONG)[0].consumer, "h2/w0");
}

#[test]
fn a_takeover_that_failed_is_tried_again_at_the_next_claim() {
    // A worker's user that may not run scripts until the test allows it: its first takeover
    // fails (as one that times out on a loaded machine does), the next claim's succeeds.
    let server =
        RedisServer::start_with(&["--user", "w", "on", ">pw", "~*", "&*", "+@all", "-eval"]);
    let url = server.url();
    let client = broker(&url, "retry");
    client.submit(1, 0, b"f", b"").unwrap();
    let refusing = ConsumerOptions::new("retry", "h1/w0", OTHER_FP).timeouts(timeouts());
    let refused = Consumer::join(&url, refusing).unwrap().claim(BLOCK);
    assert!(
        matches!(refused, Err(ClaimError::Foreign { .. })),
        "{refused:?}"
    );
    let worker_url = format!("redis://w:pw@127.0.0.1:{}/0", server.port());
    let mut worker = consumer(&worker_url, "retry", "h2/w0", LONG);
    let failed = worker.claim(BLOCK);
    assert!(matches!(failed, Err(ClaimError::Redis(_))), "{failed:?}");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("w")
        .arg("+eval")
        .query(&mut plain(&url))
        .unwrap();
    let entry = worker
        .claim(BLOCK)
        .unwrap()
        .expect("the takeover was tried again, not put off for half a lease");
    assert_eq!((entry.job, entry.index, entry.deliveries), (1, 0, 1));
}

#[test]
fn a_dead_workers_chunk_fails_at_once_or_goes_to_its_heir() {
    let server = RedisServer::start();
    let url = server.url();
    for tries in [1, 2] {
        let pool = format!("heir{tries}");
        let options = BrokerOptions::new(&pool, FP)
            .tries(tries)
            .timeouts(timeouts());
        let mut client = Broker::connect(&url, options).unwrap();
        let mut dead = consumer(&url, &pool, "h1/w0", LONG);
        let mut supervisor = consumer(&url, &pool, "h1/supervisor", LONG);
        client.submit(1, 0, b"f", b"").unwrap();
        assert!(dead.claim(BLOCK).unwrap().is_some());
        drop(dead);
        let report = supervisor.fail_lost("h1/w0", Some("h1/w0.1")).unwrap();
        if tries == 1 {
            assert_eq!(report.failed, vec![(1, 0)]);
            let got = recv_n(&mut client, 1, LONG);
            assert_eq!(
                (got[0].outcome.clone(), got[0].deliveries),
                (Outcome::WorkerLost, 1)
            );
        } else {
            assert_eq!(report.handed, vec![(1, 0)]);
            let mut heir = consumer(&url, &pool, "h1/w0.1", LONG);
            let entry = heir.claim(BLOCK).unwrap().expect("handed to the heir");
            assert_eq!(entry.deliveries, 2);
            heir.complete(&entry, Ok(b"")).unwrap();
            assert_eq!(recv_n(&mut client, 1, LONG)[0].deliveries, 2);
        }
        assert!(supervisor.pending("h1/w0").unwrap().is_empty());
    }
}

#[test]
fn expired_leases_are_taken_over_and_used_up_tries_fail() {
    let server = RedisServer::start();
    let url = server.url();
    let lease = Duration::from_millis(200);
    for tries in [1, 2] {
        let pool = format!("lease{tries}");
        let options = BrokerOptions::new(&pool, FP)
            .tries(tries)
            .timeouts(timeouts());
        let client = Broker::connect(&url, options).unwrap();
        let mut vanished = consumer(&url, &pool, "h1/w0", lease);
        client.submit(1, 0, b"f", b"").unwrap();
        // Before the delivery, so that the lease has passed by this clock too when it is
        // taken over (less a millisecond of each clock's rounding).
        let start = Instant::now();
        assert!(vanished.claim(BLOCK).unwrap().is_some());
        let mut other = consumer(&url, &pool, "h2/w0", lease);
        let mut ran = None;
        while client.outstanding() > 0 {
            assert!(start.elapsed() < LONG, "never taken over");
            if let Some(entry) = other.claim(BLOCK).unwrap() {
                assert!(start.elapsed() >= lease - Duration::from_millis(2));
                other.complete(&entry, Ok(b"")).unwrap();
                ran = Some(entry.deliveries);
            }
            if let Some(c) = client.recv(Duration::ZERO).unwrap() {
                let expected = if tries == 1 {
                    Outcome::WorkerLost
                } else {
                    Outcome::Ok(vec![])
                };
                assert_eq!(c.outcome, expected);
            }
        }
        assert_eq!(ran, (tries == 2).then_some(2));
    }
}

/// Redis's time (ms) and, for the entries pending on `owner` in pool `pool`, when by that
/// clock they were last delivered or renewed (from which their lease counts) and their
/// delivery counts: the time and the idle times read in one transaction.
fn delivered_at(con: &mut redis::Connection, pool: &str, owner: &str) -> (i64, Vec<(i64, u64)>) {
    let ((secs, micros), pending): ((i64, i64), Vec<PendingRow>) = redis::pipe()
        .atomic()
        .cmd("TIME")
        .cmd("XPENDING")
        .arg(format!("pool:{{{pool}}}:chunks"))
        .arg("hosts")
        .arg("-")
        .arg("+")
        .arg(10)
        .arg(owner)
        .query(con)
        .unwrap();
    let now = secs * 1000 + micros / 1000;
    (now, pending.iter().map(|p| (now - p.2, p.3)).collect())
}

#[test]
fn a_renewal_restarts_a_lease_and_keeps_its_owner_and_deliveries() {
    let server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "renew");
    let mut busy = consumer(&url, "renew", "h1/w0", LONG);
    let mut supervisor = consumer(&url, "renew", "h1/supervisor", LONG);
    let mut con = plain(&url);
    client.submit(1, 0, b"f", b"").unwrap();
    let entry = busy.claim(BLOCK).unwrap().unwrap();
    // Each renewal moves the time the lease counts from forward. Compared on Redis's clock
    // (which is what takeovers compare with), so the test holds however slowly it runs;
    // that a worker takes over only entries idle a whole lease is
    // `expired_leases_are_taken_over_and_used_up_tries_fail`'s.
    let (_, mut last) = delivered_at(&mut con, "renew", "h1/w0");
    for _ in 0..3 {
        assert_eq!(last.len(), 1, "{last:?}");
        wait_until(LONG, "Redis's clock passes the last renewal", || {
            delivered_at(&mut con, "renew", "h1/w0").0 > last[0].0
        });
        assert_eq!(supervisor.renew_all(&["h1/w0"]).unwrap(), 1);
        let (_, now) = delivered_at(&mut con, "renew", "h1/w0");
        assert_eq!(now.len(), 1, "the worker still holds it: {now:?}");
        assert!(now[0].0 > last[0].0, "not renewed: {last:?} then {now:?}");
        assert_eq!(now[0].1, 1, "a renewal counts no delivery");
        last = now;
    }
    assert_eq!(busy.renew(&[entry.id]).unwrap(), 1);
    busy.complete(&entry, Ok(b"")).unwrap();
    assert_eq!(busy.renew(&[entry.id]).unwrap(), 0, "no longer pending");
}

#[test]
fn an_abandoned_jobs_chunks_are_not_started() {
    let server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "abandon");
    for index in 0..3 {
        client.submit(1, index, b"f", b"").unwrap();
    }
    client.submit(2, 0, b"f", b"").unwrap();
    assert_eq!(client.abandon(1).unwrap(), 3);
    assert_eq!(client.outstanding(), 1);
    let mut worker = consumer(&url, "abandon", "h1/w0", LONG);
    let entry = worker.claim(BLOCK).unwrap().unwrap();
    assert_eq!(entry.job, 2);
    assert_eq!(worker.claim(BLOCK).unwrap(), None);
}

#[test]
fn a_gone_clients_keys_expire_and_hosts_do_not_bring_them_back() {
    let server = RedisServer::start();
    let url = server.url();
    // Long enough that the client's keys outlive a loaded machine's stalls while it uses
    // them (its heartbeat rides with its commands).
    let ttl = Duration::from_secs(3);
    let options = BrokerOptions::new("ttl", FP).ttl(ttl).timeouts(timeouts());
    // Before the keys get their TTL: they expire a TTL after it at the earliest (less a
    // millisecond of each clock's rounding).
    let created = Instant::now();
    let client = Broker::connect(&url, options).unwrap();
    client.submit(1, 0, b"f", b"").unwrap();
    let mut worker = consumer(&url, "ttl", "h1/w0", Duration::from_millis(100));
    let entry = worker.claim(BLOCK).unwrap().unwrap();
    let mut con = plain(&url);
    assert_eq!(keys_of(&mut con, "ttl").len(), 3);
    drop(client);
    wait_until(LONG, "the keys expire", || {
        keys_of(&mut con, "ttl").is_empty()
    });
    assert!(created.elapsed() >= ttl - Duration::from_millis(2));
    // A worker finishing late, renewing, claiming: nothing comes back.
    worker.complete(&entry, Ok(b"late")).unwrap();
    assert_eq!(worker.renew(&[entry.id]).unwrap(), 0);
    assert!(matches!(worker.claim(BLOCK), Err(ClaimError::NoPool)));
    assert!(keys_of(&mut con, "ttl").is_empty());
}

#[test]
fn a_second_client_of_a_live_pool_is_refused() {
    let server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "mine");
    match Broker::connect(&url, BrokerOptions::new("mine", FP).timeouts(timeouts())) {
        Err(ConnectError::InUse { holder, .. }) => assert_eq!(holder, client.client_id()),
        other => panic!("expected InUse, got {other:?}"),
    }
    client.close().unwrap();
    broker(&url, "mine");
    assert!(matches!(
        Broker::connect(&url, BrokerOptions::new("bad name", FP)),
        Err(ConnectError::Name(_))
    ));
}

#[test]
fn passwords_and_acl_users_come_from_the_url() {
    let server = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--user",
        "alice",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let port = server.port();
    let refused = Broker::connect(
        &server.url(),
        BrokerOptions::new("auth", FP).timeouts(timeouts()),
    );
    assert!(
        matches!(refused, Err(ConnectError::Redis(_))),
        "{refused:?}"
    );
    broker(&format!("redis://:s3cret@127.0.0.1:{port}/0"), "auth");
    broker(&format!("redis://alice:pw@127.0.0.1:{port}/0"), "auth2");
    let wrong = Broker::connect(
        &format!("redis://alice:nope@127.0.0.1:{port}/0"),
        BrokerOptions::new("auth3", FP),
    );
    assert!(matches!(wrong, Err(ConnectError::Redis(_))), "{wrong:?}");
}

#[test]
fn a_dead_redis_is_a_typed_error_in_bounded_time() {
    let mut server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "dies");
    let mut worker = consumer(&url, "dies", "h1/w0", LONG);
    client.submit(1, 0, b"f", b"").unwrap();
    server.kill();
    let start = Instant::now();
    // Blocks of a minute, a hang guard of half that: a dead Redis ends both waits with an
    // error instead of being waited out.
    let error = client.recv(LONG * 2).unwrap_err();
    assert!(matches!(error, RecvError::Redis(_)), "{error:?}");
    assert!(
        std::error::Error::source(&error).is_some(),
        "the redis error is the source"
    );
    assert!(matches!(
        client.submit(1, 1, b"f", b""),
        Err(SubmitError::Redis(_))
    ));
    assert!(matches!(worker.claim(LONG * 2), Err(ClaimError::Redis(_))));
    assert!(start.elapsed() < LONG, "took {:?}", start.elapsed());
    // Back, empty: the old broker learns its pool is lost; a new one works.
    server.restart();
    assert!(matches!(client.heartbeat(), Err(BrokerError::Lost)));
    let mut client = broker(&url, "dies");
    client.submit(1, 0, b"f", b"").unwrap();
    let entry = worker.claim(LONG).unwrap().expect("the worker reconnected");
    worker.complete(&entry, Ok(b"")).unwrap();
    recv_n(&mut client, 1, LONG);
}

#[test]
fn outcomes_of_one_read_are_handed_out_by_recv_then_recv_buffered() {
    let server = RedisServer::start();
    let url = server.url();
    let client = broker(&url, "buffered");
    let mut worker = consumer(&url, "buffered", "h1/w0", LONG);
    for index in 0..3 {
        client.submit(1, index, b"f", b"").unwrap();
    }
    for _ in 0..3 {
        let entry = worker.claim(BLOCK).unwrap().expect("a chunk");
        worker.complete(&entry, Ok(b"")).unwrap();
    }
    let mut con = plain(&url);
    wait_until(LONG, "the three outcomes are written", || {
        redis::cmd("XLEN")
            .arg("pool:{buffered}:results")
            .query::<u64>(&mut con)
            .unwrap()
            == 3
    });
    // Nothing read yet: recv_buffered does not read Redis.
    assert_eq!(client.recv_buffered(), None);
    let first = client.recv(LONG).unwrap().expect("an outcome");
    let rest: Vec<_> = std::iter::from_fn(|| client.recv_buffered()).collect();
    let mut indices: Vec<u32> = [first].iter().chain(&rest).map(|c| c.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, [0, 1, 2]);
    assert_eq!(client.outstanding(), 0);
}
