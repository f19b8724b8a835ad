//! `ThreadPool`: `Pool`'s methods and state rules on threads, and what is cooperative there.
//!
//! The tests mirror `tests/pool.rs` where the behaviour is the same. Anything that could hang
//! on failure waits with a generous bound (a channel's `recv_timeout`, `get_timeout`), and
//! blocked tasks wait on gates the test opens, so nothing depends on timing.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use pool_api::{Callbacks, Error, ThreadPool};

/// Long enough never to be reached unless something is broken.
const BOUND: Duration = Duration::from_secs(60);

/// A gate a task waits at until the test opens it (or the bound passes).
#[derive(Clone)]
struct Gate(Arc<Mutex<Receiver<()>>>);

impl Gate {
    fn new() -> (Sender<()>, Gate) {
        let (tx, rx) = mpsc::channel();
        (tx, Gate(Arc::new(Mutex::new(rx))))
    }

    fn pass(&self) {
        let _ = self.0.lock().unwrap().recv_timeout(BOUND);
    }
}

/// A pool of one thread whose thread is held by a task until the returned sender opens the
/// gate; returns once that task is running.
fn held_pool() -> (ThreadPool, Sender<()>, pool_api::ThreadAsyncResult<u32>) {
    let pool = ThreadPool::new(1).unwrap();
    let (open, gate) = Gate::new();
    let (started_tx, started) = mpsc::channel();
    let running = pool
        .apply_async(
            move |x: u32| {
                let _ = started_tx.send(());
                gate.pass();
                x
            },
            7,
        )
        .unwrap();
    started
        .recv_timeout(BOUND)
        .expect("the holding task started");
    (pool, open, running)
}

#[test]
fn map_returns_results_in_input_order() {
    let pool = ThreadPool::new(2).unwrap();
    assert_eq!(pool.processes(), 2);
    for _ in 0..5 {
        assert_eq!(pool.map(|x: u64| x * x, [1, 2, 3]).unwrap(), [1, 4, 9]);
    }
    let big: Vec<u64> = (0..10_000).collect();
    let expect: Vec<u64> = big.iter().map(|x| x * x).collect();
    assert_eq!(pool.map(|x: u64| x * x, big.clone()).unwrap(), expect);
    assert_eq!(pool.map_chunked(|x: u64| x * x, big, 7).unwrap(), expect);
    // An iterator that cannot tell its length.
    let odd = pool
        .map(|x: u64| x + 1, (0..100).filter(|x| x % 2 == 1))
        .unwrap();
    assert_eq!(odd, (1..100).step_by(2).map(|x| x + 1).collect::<Vec<_>>());
    assert!(pool.map(|x: u64| x, Vec::new()).unwrap().is_empty());
}

#[test]
fn tasks_are_closures_over_values_that_need_no_serde() {
    // Neither arguments nor results are serde values, nor Clone; the task captures state.
    struct Opaque(u32);
    let pool = ThreadPool::new(2).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let receivers = pool
        .map(
            move |x: Opaque| {
                counted.fetch_add(1, Ordering::SeqCst);
                let (tx, rx) = mpsc::channel();
                tx.send(x.0 * 2).unwrap();
                rx
            },
            (0..10).map(Opaque),
        )
        .unwrap();
    let values: Vec<u32> = receivers.iter().map(|rx| rx.recv().unwrap()).collect();
    assert_eq!(values, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}

#[test]
fn apply_and_apply_async() {
    let pool = ThreadPool::new(2).unwrap();
    assert_eq!(pool.apply(|s: String| s.len(), "four".to_string()), Ok(4));
    let r = pool.apply_async(|x: u64| x + 1, 41).unwrap();
    r.wait();
    assert!(r.ready());
    assert!(r.wait_timeout(Duration::ZERO));
    assert_eq!(r.successful(), Ok(true));
    assert_eq!(r.get_timeout(BOUND), Ok(42));
    // The value was moved out by the first get.
    assert!(matches!(r.get(), Err(Error::InvalidArgument(_))));
    assert_eq!(r.successful(), Ok(true));
    assert!(!r.cancel(), "nothing left to cancel");
}

#[test]
fn a_failed_tasks_error_is_returned_every_time() {
    let pool = ThreadPool::new(1).unwrap();
    let r = pool
        .apply_async(|x: u32| -> u32 { panic!("bad {x}") }, 3)
        .unwrap();
    let first = r.get();
    assert!(matches!(&first, Err(Error::Panicked { message, .. }) if message == "bad 3"));
    assert_eq!(r.get(), first);
    assert_eq!(r.successful(), Ok(false));
}

#[test]
fn not_ready_get_timeout_and_successful() {
    let (pool, open, running) = held_pool();
    assert!(!running.ready());
    assert_eq!(running.successful(), Err(Error::NotReady));
    assert!(!running.wait_timeout(Duration::from_millis(10)));
    assert_eq!(
        running.get_timeout(Duration::from_millis(10)),
        Err(Error::Timeout(Duration::from_millis(10)))
    );
    open.send(()).unwrap();
    assert_eq!(running.get_timeout(BOUND), Ok(7), "the task ran on");
    pool.close();
    pool.join().unwrap();
}

#[test]
fn a_panic_is_reported_with_its_location_and_the_thread_survives() {
    let pool = ThreadPool::new(1).unwrap();
    let before = pool.apply(|_: ()| std::thread::current().id(), ()).unwrap();
    let err = pool
        .apply(
            |x: u32| -> u32 {
                assert!(x % 2 == 0, "odd input {x}");
                x
            },
            3,
        )
        .unwrap_err();
    match err {
        Error::Panicked {
            message,
            location,
            pid,
            ..
        } => {
            assert_eq!(message, "odd input 3");
            let location = location.expect("a location");
            assert!(location.contains("thread_pool.rs:"), "{location}");
            assert_eq!(pid, std::process::id());
        }
        other => panic!("unexpected {other:?}"),
    }
    let after = pool.apply(|_: ()| std::thread::current().id(), ()).unwrap();
    assert_eq!(before, after, "the same thread took the next task");
}

#[test]
fn map_fails_with_the_lowest_index_error_and_map_results_gives_each() {
    let pool = ThreadPool::new(2).unwrap();
    let f = |x: u32| {
        assert!(x % 7 != 3, "bad {x}");
        x
    };
    for _ in 0..5 {
        match pool.map_chunked(f, 0..100, 5) {
            Err(Error::Panicked { message, .. }) => assert_eq!(message, "bad 3"),
            other => panic!("unexpected {other:?}"),
        }
    }
    let results = pool.map_results(f, 0..100, Some(1)).unwrap();
    assert_eq!(results.len(), 100);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i % 7 == 3, "item {i}: {r:?}");
    }
}

#[test]
fn starmap_and_starmap_async_take_tuples() {
    let pool = ThreadPool::new(2).unwrap();
    let add = |a: u64, b: u64| a + b;
    assert_eq!(pool.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
    let three = pool
        .starmap(
            |a: u8, b: String, c: bool| format!("{a}{b}{c}"),
            [(1, "x".to_string(), true)],
        )
        .unwrap();
    assert_eq!(three, ["1xtrue"]);
    let r = pool.starmap_async(add, vec![(5, 5); 10], None).unwrap();
    assert_eq!(r.get_timeout(BOUND).unwrap(), vec![10; 10]);
}

#[test]
fn map_async_results_and_chunksize_checks() {
    let pool = ThreadPool::new(2).unwrap();
    let r = pool.map_async(|x: u64| x * 3, 0..50, Some(4)).unwrap();
    assert!(r.wait_timeout(BOUND));
    r.wait();
    assert!(r.ready());
    assert_eq!(r.successful(), Ok(true));
    assert_eq!(r.get().unwrap(), (0..50).map(|x| x * 3).collect::<Vec<_>>());
    assert!(matches!(r.get(), Err(Error::InvalidArgument(_))));
    assert!(r.get_results().is_empty(), "taken by the first get");

    let r = pool
        .map_async(
            |x: u32| {
                assert!(x != 2, "two");
                x
            },
            0..5,
            None,
        )
        .unwrap();
    let results = r.get_results();
    assert_eq!(results.len(), 5);
    assert!(results[2].is_err() && results.iter().filter(|r| r.is_ok()).count() == 4);
    assert_eq!(r.successful(), Ok(false));
    assert!(matches!(r.get(), Err(Error::Panicked { .. })));

    assert!(matches!(
        pool.map_async(|x: u32| x, 0..5, Some(0)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pool.map_chunked(|x: u32| x, 0..5, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pool.imap(|x: u32| x, 0..5, 0),
        Err(Error::InvalidArgument(_))
    ));
    let empty = pool.map_async(|x: u32| x, Vec::new(), None).unwrap();
    assert_eq!(empty.get_timeout(BOUND), Ok(Vec::new()));
}

#[test]
fn callbacks_run_once_each_on_one_thread_in_completion_order() {
    // One thread: completion order is submission order.
    let pool = ThreadPool::new(1).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let results: Vec<_> = (0..10u64)
        .map(|i| {
            let seen = Arc::clone(&seen);
            let cb = Callbacks::none()
                .on_ok(move |r: u64| seen.lock().unwrap().push((r, std::thread::current().id())));
            pool.apply_async_with(|x: u64| x + 100, i, cb).unwrap()
        })
        .collect();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let e = Arc::clone(&errors);
    let failed = pool
        .apply_async_with(
            |_: ()| -> u64 { panic!("no") },
            (),
            Callbacks::none()
                .on_ok(|_| panic!("not this one"))
                .on_err(move |err| e.lock().unwrap().push(err)),
        )
        .unwrap();
    let vector = Arc::new(Mutex::new(None));
    let v = Arc::clone(&vector);
    let mapped = pool
        .map_async_with(
            |x: u64| x * 2,
            0..4,
            None,
            Callbacks::none().on_ok(move |all: Vec<u64>| *v.lock().unwrap() = Some(all)),
        )
        .unwrap();
    pool.close();
    pool.join().unwrap();
    // After close + join, every callback has run; the handles still hold the values.
    let seen = seen.lock().unwrap().clone();
    let values: Vec<u64> = seen.iter().map(|(v, _)| *v).collect();
    assert_eq!(values, (100..110).collect::<Vec<_>>());
    let threads: HashSet<ThreadId> = seen.iter().map(|(_, t)| *t).collect();
    assert_eq!(threads.len(), 1, "one result thread");
    assert!(!threads.contains(&std::thread::current().id()));
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.get(), Ok(i as u64 + 100));
    }
    assert!(matches!(
        &errors.lock().unwrap()[..],
        [Error::Panicked { .. }]
    ));
    assert!(failed.get().is_err());
    assert_eq!(*vector.lock().unwrap(), Some(vec![0, 2, 4, 6]));
    assert_eq!(mapped.get(), Ok(vec![0, 2, 4, 6]));
}

#[test]
fn a_panicking_callback_does_not_stop_later_ones() {
    let pool = ThreadPool::new(1).unwrap();
    let oks = Arc::new(AtomicUsize::new(0));
    pool.apply_async_with(
        |x: u64| x,
        1,
        Callbacks::none().on_ok(|_| panic!("callback bug")),
    )
    .unwrap();
    let o = Arc::clone(&oks);
    let last = pool
        .apply_async_with(
            |x: u64| x,
            2,
            Callbacks::none().on_ok(move |_| {
                o.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
    assert_eq!(last.get(), Ok(2));
    pool.close();
    pool.join().unwrap();
    assert_eq!(oks.load(Ordering::SeqCst), 1);
}

#[test]
fn a_callback_may_terminate_its_own_pool() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let inside = Arc::clone(&pool);
    let r = pool
        .apply_async_with(
            |_: ()| -> u32 { panic!("fail") },
            (),
            Callbacks::none().on_err(move |_| inside.terminate()),
        )
        .unwrap();
    assert!(r.get().is_err());
    let (tx, rx) = mpsc::channel();
    let joiner = Arc::clone(&pool);
    std::thread::spawn(move || {
        let mut joined = joiner.join();
        while joined == Err(Error::StillRunning) {
            std::thread::sleep(Duration::from_millis(5));
            joined = joiner.join();
        }
        tx.send(joined).unwrap();
    });
    assert_eq!(rx.recv_timeout(BOUND), Ok(Ok(())));
}

#[test]
fn lifecycle_errors_are_typed() {
    assert!(matches!(ThreadPool::new(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        ThreadPool::builder().processes(0).build(),
        Err(Error::InvalidArgument(_))
    ));
    let pool = ThreadPool::new(1).unwrap();
    assert_eq!(pool.join(), Err(Error::StillRunning));
    pool.close();
    assert_eq!(pool.apply(|x: u32| x, 2), Err(Error::Closed));
    assert!(matches!(
        pool.apply_async(|x: u32| x, 2),
        Err(Error::Closed)
    ));
    assert_eq!(pool.map(|x: u32| x, [1]), Err(Error::Closed));
    assert!(matches!(
        pool.map_async(|x: u32| x, [1], None),
        Err(Error::Closed)
    ));
    assert!(matches!(pool.imap(|x: u32| x, [1], 1), Err(Error::Closed)));
    assert!(matches!(
        pool.imap_unordered(|x: u32| x, [1], 1),
        Err(Error::Closed)
    ));
    pool.join().unwrap();
    pool.join().unwrap();
    assert_eq!(pool.apply(|x: u32| x, 2), Err(Error::Closed));

    let pool = ThreadPool::new(1).unwrap();
    pool.terminate();
    assert_eq!(pool.apply(|x: u32| x, 2), Err(Error::Terminated));
    pool.join().unwrap();
    assert_eq!(pool.apply(|x: u32| x, 2), Err(Error::Closed));
}

#[test]
fn close_then_join_waits_for_all_work() {
    let pool = ThreadPool::new(3).unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let rs: Vec<_> = (0..20)
        .map(|_| {
            let done = Arc::clone(&done);
            pool.apply_async(
                move |ms: u64| {
                    std::thread::sleep(Duration::from_millis(ms));
                    done.fetch_add(1, Ordering::SeqCst)
                },
                5,
            )
            .unwrap()
        })
        .collect();
    pool.close();
    pool.join().unwrap();
    assert!(rs.iter().all(|r| r.ready()));
    assert_eq!(done.load(Ordering::SeqCst), 20);
}

#[test]
fn terminate_ends_queued_and_running_work_at_once() {
    let (pool, open, running) = held_pool();
    let ran = Arc::new(AtomicUsize::new(0));
    let queued: Vec<_> = (0..1_000)
        .map(|_| {
            let ran = Arc::clone(&ran);
            pool.apply_async(
                move |x: u32| ran.fetch_add(1, Ordering::SeqCst) as u32 + x,
                0,
            )
            .unwrap()
        })
        .collect();
    let mapped = pool.map_async(|x: u32| x, 0..100, Some(1)).unwrap();
    pool.terminate();
    // The running task still holds the thread: nothing waits for it.
    assert_eq!(running.get_timeout(BOUND), Err(Error::Terminated));
    for r in &queued {
        assert_eq!(r.get_timeout(BOUND), Err(Error::Terminated));
    }
    let results = mapped.get_results();
    assert_eq!(results.len(), 100);
    assert!(results.iter().all(|r| *r == Err(Error::Terminated)));
    // join waits for the running task to return (cooperative): let it.
    open.send(()).unwrap();
    pool.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "queued work never started");
}

#[test]
fn terminate_during_map_returns_terminated_without_waiting_for_the_running_task() {
    let pool = Arc::new(ThreadPool::new(1).unwrap());
    let (open, gate) = Gate::new();
    let (started_tx, started) = mpsc::channel();
    let (result_tx, result) = mpsc::channel();
    let mapper = Arc::clone(&pool);
    std::thread::spawn(move || {
        let started_tx = Mutex::new(started_tx);
        let r = mapper.map_results(
            move |x: u32| {
                if x == 0 {
                    let _ = started_tx.lock().unwrap().send(());
                    gate.pass();
                }
                x
            },
            0..10,
            Some(1),
        );
        let _ = result_tx.send(r);
    });
    started.recv_timeout(BOUND).expect("the first item started");
    pool.terminate();
    let results = result.recv_timeout(BOUND).expect("map returned").unwrap();
    assert_eq!(results.len(), 10, "one outcome per item");
    assert!(results.iter().all(|r| *r == Err(Error::Terminated)));
    open.send(()).unwrap();
    pool.join().unwrap();
}

#[test]
fn cancel_stops_work_that_was_not_started() {
    let (pool, open, running) = held_pool();
    let queued = pool.apply_async(|x: u32| x, 1).unwrap();
    let many = pool.map_async(|x: u32| x, vec![1; 50], Some(1)).unwrap();
    assert!(queued.cancel());
    assert!(!queued.cancel(), "already cancelled");
    assert!(many.cancel());
    assert!(!running.cancel(), "a running task is not interrupted");
    assert_eq!(queued.get(), Err(Error::Cancelled));
    let results = many.get_results();
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(|r| *r == Err(Error::Cancelled)));
    open.send(()).unwrap();
    assert_eq!(running.get_timeout(BOUND), Ok(7));
    pool.close();
    pool.join().unwrap();
}

#[test]
fn dropping_the_pool_terminates_it() {
    let (pool, open, running) = held_pool();
    let queued = pool.apply_async(|x: u32| x, 1).unwrap();
    let mapped = pool.map_async(|x: u32| x, 0..10, None).unwrap();
    drop(pool);
    assert_eq!(running.get_timeout(BOUND), Err(Error::Terminated));
    assert_eq!(queued.get_timeout(BOUND), Err(Error::Terminated));
    assert_eq!(mapped.get_timeout(BOUND), Err(Error::Terminated));
    open.send(()).unwrap();
}

#[test]
fn imap_streams_in_order_and_imap_unordered_yields_each_once() {
    let pool = ThreadPool::new(2).unwrap();
    // Later items finish first within each window: order must come from the pool.
    let slow_first = |x: u64| {
        std::thread::sleep(Duration::from_micros((10 - x % 10) * 100));
        x * x
    };
    let ordered: Vec<u64> = pool
        .imap(slow_first, 0..500u64, 3)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ordered, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(slow_first, 0..500u64, 1)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, (0..500u64).map(|x| x * x).collect::<Vec<_>>());
    // Per-item errors, and an empty input.
    let items: Vec<Result<u32, Error>> = pool
        .imap(
            |x: u32| {
                assert!(x != 1, "one");
                x
            },
            0..3,
            1,
        )
        .unwrap()
        .collect();
    assert!(items[0].is_ok() && items[1].is_err() && items[2].is_ok());
    assert_eq!(pool.imap(|x: u32| x, 0..0, 1).unwrap().count(), 0);
}

#[test]
fn imap_reads_its_input_lazily_in_a_bounded_window() {
    let pool = ThreadPool::new(2).unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut it = pool.imap(|x: u64| x + 1, endless, 1).unwrap();
    assert_eq!(pulled.load(Ordering::SeqCst), 0, "nothing read before next");
    let first: Vec<u64> = it.by_ref().take(20).map(Result::unwrap).collect();
    assert_eq!(first, (1..=20).collect::<Vec<_>>());
    let n = pulled.load(Ordering::SeqCst);
    // 4 chunks per thread ahead of the consumer, at most.
    assert!((20..=20 + 8).contains(&n), "read {n} items for 20 results");
    drop(it);
    pool.close();
    pool.join().unwrap();
}

#[test]
fn map_reads_its_input_as_it_dispatches() {
    // When item i runs, at most a window of chunks beyond it was read.
    let pool = ThreadPool::new(2).unwrap();
    let pulled = Arc::new(AtomicUsize::new(0));
    let ahead = Arc::new(AtomicUsize::new(0));
    let (p, a) = (Arc::clone(&pulled), Arc::clone(&ahead));
    let counter = Arc::clone(&pulled);
    let items = (0..1_000usize).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let out = pool
        .map_chunked(
            move |i: usize| {
                let read = p.load(Ordering::SeqCst);
                a.fetch_max(read.saturating_sub(i + 1), Ordering::SeqCst);
                i
            },
            items,
            1,
        )
        .unwrap();
    assert_eq!(out, (0..1_000).collect::<Vec<_>>());
    assert_eq!(pulled.load(Ordering::SeqCst), 1_000);
    let ahead = ahead.load(Ordering::SeqCst);
    assert!(ahead <= 8, "read {ahead} items ahead of the one running");
}

#[test]
fn dropping_an_imap_cancels_what_did_not_start() {
    let pool = ThreadPool::new(1).unwrap();
    let (open, gate) = Gate::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&ran);
    let mut it = pool
        .imap(
            move |x: u32| {
                r.lock().unwrap().push(x);
                if x == 1 {
                    gate.pass();
                }
                x
            },
            0..100,
            1,
        )
        .unwrap();
    assert_eq!(it.next(), Some(Ok(0)));
    drop(it);
    open.send(()).unwrap();
    pool.close();
    pool.join().unwrap();
    let ran = ran.lock().unwrap().clone();
    assert!(ran == [0] || ran == [0, 1], "{ran:?}");
}

#[test]
fn the_initializer_runs_once_on_every_thread_before_its_tasks() {
    let inits = Arc::new(Mutex::new(Vec::new()));
    let i = Arc::clone(&inits);
    let pool = ThreadPool::builder()
        .processes(3)
        .initializer(move || i.lock().unwrap().push(std::thread::current().id()))
        .build()
        .unwrap();
    // build waits for every thread's initializer.
    let initialized: HashSet<ThreadId> = inits.lock().unwrap().iter().copied().collect();
    assert_eq!(inits.lock().unwrap().len(), 3);
    assert_eq!(initialized.len(), 3);
    let ran_on = pool
        .map_chunked(|_: u32| std::thread::current().id(), 0..300, 1)
        .unwrap();
    assert!(ran_on.iter().all(|t| initialized.contains(t)));
    pool.close();
    pool.join().unwrap();
    assert_eq!(inits.lock().unwrap().len(), 3, "once per thread");

    let failed = ThreadPool::builder()
        .processes(2)
        .initializer(|| panic!("no config"))
        .build();
    assert_eq!(
        failed.map(|_| ()),
        Err(Error::InitializerFailed("no config".into()))
    );
}

#[test]
fn a_thread_pool_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ThreadPool>();
    check::<pool_api::ThreadAsyncResult<Vec<u8>>>();
    check::<pool_api::ThreadMapResult<String>>();
}
