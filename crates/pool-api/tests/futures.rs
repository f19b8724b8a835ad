//! `concurrent.futures` parity over real worker processes: `as_completed`, `wait` and
//! `.await` on the result handles of `Pool` (and of `ThreadPool`). Ported behaviours name
//! their source: CPython's `Lib/test/test_concurrent_futures` (`AsCompletedTests`,
//! `WaitTests`).
//!
//! Completion order is made deterministic by gating each task on an `Event` the test sets.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use pool_api::futures::{
    Completion, ReturnWhen, as_completed, as_completed_timeout, wait, wait_timeout,
};
use pool_api::{Error, Event, Pool, ThreadPool};

const GENEROUS: Duration = Duration::from_secs(20);

/// Waits for its event, then returns its number (or panics for a negative one).
fn gated((event, n): (Event, i64)) -> i64 {
    event.wait().unwrap();
    assert!(n >= 0, "deliberate failure of task {n}");
    n
}

fn events(n: usize) -> Vec<Event> {
    (0..n).map(|_| Event::new().unwrap()).collect()
}

#[test]
fn as_completed_yields_in_completion_order_each_handle_once() {
    // AsCompletedTests.test_future_times / test_duplicate_futures.
    let pool = Pool::new(3).unwrap();
    let gates = events(3);
    let handles: Vec<_> = (0..3)
        .map(|i| {
            pool.apply_async(gated, (gates[i].clone(), i as i64))
                .unwrap()
        })
        .collect();
    let twice = [
        &handles[0],
        &handles[1],
        &handles[2],
        &handles[1],
        &handles[0],
    ];
    let mut it = as_completed(twice);
    for i in [2, 0, 1] {
        gates[i].set();
        let done = it.next().unwrap().unwrap();
        assert_eq!(done.get().unwrap(), i as i64);
    }
    assert!(it.next().is_none(), "a handle given twice is yielded once");
}

#[test]
fn as_completed_timeout_yields_what_finished_then_says_how_many_did_not() {
    // AsCompletedTests.test_zero_timeout: the finished ones, then a TimeoutError.
    let pool = Pool::new(2).unwrap();
    let gates = events(2);
    gates[0].set();
    let handles: Vec<_> = (0..2)
        .map(|i| {
            pool.apply_async(gated, (gates[i].clone(), i as i64))
                .unwrap()
        })
        .collect();
    handles[0].wait();
    let got: Vec<_> = as_completed_timeout(&handles, Duration::from_millis(100)).collect();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].as_ref().unwrap().get().unwrap(), 0);
    assert_eq!(
        got[1].as_ref().unwrap_err(),
        &Error::Unfinished {
            unfinished: 1,
            total: 2
        }
    );
    // The unfinished task runs on; its handle still gives its result.
    gates[1].set();
    assert_eq!(handles[1].get_timeout(GENEROUS).unwrap(), 1);
}

#[test]
fn wait_returns_as_return_when_says() {
    // WaitTests.test_first_completed / test_first_exception / test_all_completed.
    let pool = Pool::new(3).unwrap();
    let gates = events(3);
    let handles: Vec<_> = [0, -1, 2]
        .into_iter()
        .enumerate()
        .map(|(i, n)| pool.apply_async(gated, (gates[i].clone(), n)).unwrap())
        .collect();
    let nothing = wait_timeout(
        &handles,
        ReturnWhen::FirstCompleted,
        Duration::from_millis(50),
    );
    assert_eq!((nothing.done.len(), nothing.not_done.len()), (0, 3));

    gates[0].set();
    let first = wait(&handles, ReturnWhen::FirstCompleted);
    assert_eq!(first.done.len(), 1);
    assert_eq!(first.done[0].get().unwrap(), 0);

    // The success so far does not end a FIRST_EXCEPTION wait; the failure does.
    gates[1].set();
    let failed = wait(&handles, ReturnWhen::FirstException);
    assert!(failed.done.iter().any(|h| h.has_failed()));
    assert_eq!(failed.not_done.len(), 1);

    gates[2].set();
    let all = wait(&handles, ReturnWhen::AllCompleted);
    assert_eq!((all.done.len(), all.not_done.len()), (3, 0));
    assert!(all.done.iter().all(|h| h.is_done()));
}

#[test]
fn handles_of_different_types_are_waited_for_together() {
    let pool = Pool::new(2).unwrap();
    let one = pool
        .apply_async(|s: String| s.len(), "four".to_string())
        .unwrap();
    let many = pool.map_async(|x: u32| x + 1, 0..10, None).unwrap();
    let mixed: [&dyn Completion; 2] = [&one, &many];
    assert_eq!(as_completed(mixed).filter_map(Result::ok).count(), 2);
    assert_eq!(one.get().unwrap(), 4);
    assert_eq!(many.get().unwrap().len(), 10);
}

/// A minimal executor: polls on this thread, parks until woken; counts its wake-ups.
struct Parker {
    thread: std::thread::Thread,
    wakes: AtomicUsize,
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

fn block_on<F: Future>(future: F, parker: &Arc<Parker>) -> F::Output {
    let waker = Waker::from(Arc::clone(parker));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park_timeout(GENEROUS);
    }
}

fn parker() -> Arc<Parker> {
    Arc::new(Parker {
        thread: std::thread::current(),
        wakes: AtomicUsize::new(0),
    })
}

#[test]
fn result_handles_are_futures_woken_by_the_pool() {
    let pool = Pool::new(2).unwrap();
    let gate = Event::new().unwrap();
    let mut pending = pool.apply_async(gated, (gate.clone(), 7)).unwrap();
    // Polled before the task can finish: pending, and nothing blocks.
    let p = parker();
    let waker = Waker::from(Arc::clone(&p));
    assert!(
        Pin::new(&mut pending)
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    gate.set();
    // The pool's thread wakes the task; the executor then finds it ready.
    assert_eq!(block_on(pending, &p).unwrap(), 7);
    assert!(
        p.wakes.load(Ordering::SeqCst) >= 1,
        "the pool woke the task"
    );

    let p = parker();
    let squares = pool.map_async(|x: u64| x * x, 1..=4, None).unwrap();
    let sum = block_on(
        async {
            let one = pool.apply_async(|x: u64| x + 1, 1).unwrap().await?;
            Ok::<u64, Error>(one + squares.await?.iter().sum::<u64>())
        },
        &p,
    );
    assert_eq!(sum.unwrap(), 2 + 30);
    let failed = pool.apply_async(gated, (gate, -1)).unwrap();
    assert!(matches!(
        block_on(failed, &parker()),
        Err(Error::Panicked { .. })
    ));
}

#[test]
fn thread_pool_handles_are_completions_and_futures_too() {
    let pool = ThreadPool::new(2).unwrap();
    let handles: Vec<_> = (0..4u64)
        .map(|x| pool.apply_async(move |x: u64| x * 10, x).unwrap())
        .collect();
    let all = wait(&handles, ReturnWhen::AllCompleted);
    assert_eq!(all.done.len(), 4);
    let many = pool.map_async(|x: u64| x + 1, 0..5, None).unwrap();
    assert_eq!(block_on(many, &parker()).unwrap(), vec![1, 2, 3, 4, 5]);
    let one = pool.apply_async(|x: u64| x, 3).unwrap();
    assert_eq!(as_completed([&one]).count(), 1);
    assert_eq!(block_on(one, &parker()).unwrap(), 3);
}

#[test]
fn an_imap_with_a_timeout_yields_what_finished_in_time_then_a_timeout_error() {
    // Executor.map(..., timeout=): the results in time, in order, then TimeoutError.
    let gate = Event::new().unwrap();
    let inputs = [(gate.clone(), 0), (gate.clone(), 1)];
    {
        let pool = Pool::new(2).unwrap();
        let open = Event::new().unwrap();
        open.set();
        let items = [(open.clone(), 0), (open, 1), inputs[0].clone()];
        let got: Vec<_> = pool
            .imap(gated, items, 1)
            .unwrap()
            .with_timeout(Duration::from_millis(300))
            .collect();
        assert!(
            matches!(got[..], [Ok(0), Ok(1), Err(Error::Timeout(_))]),
            "{got:?}"
        );
        gate.set();
        pool.close();
        pool.join().unwrap();
    }
    let pool = ThreadPool::new(2).unwrap();
    let later = Event::new().unwrap();
    let got: Vec<_> = pool
        .imap(gated, [inputs[0].clone(), (later.clone(), 5)], 1)
        .unwrap()
        .with_timeout(Duration::from_millis(300))
        .collect();
    assert!(
        matches!(got[..], [Ok(0), Err(Error::Timeout(_))]),
        "{got:?}"
    );
    later.set();
}

/// 0, 1, 2, 3, 4, then a panic: an input that fails part-way.
fn failing_input() -> impl Iterator<Item = u64> {
    (0..).inspect(|i| assert!(*i < 5, "the input failed after 5 items"))
}

fn double(x: u64) -> u64 {
    x * 2
}

/// Runs `consume` and returns what it collected before the input's panic reached it.
fn collect_until_panic(consume: impl FnOnce(&mut Vec<u64>)) -> Vec<u64> {
    let mut got = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| consume(&mut got)));
    let panic = outcome.expect_err("the input's panic reaches the caller");
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        message.contains("the input failed after 5 items"),
        "{message}"
    );
    got.sort_unstable();
    got
}

#[test]
fn an_imap_whose_input_panics_hands_over_the_earlier_results_first() {
    let pool = Pool::new(2).unwrap();
    for ordered in [true, false] {
        let got = collect_until_panic(|got| {
            let results: Box<dyn Iterator<Item = Result<u64, Error>>> = if ordered {
                Box::new(pool.imap(double, failing_input(), 1).unwrap())
            } else {
                Box::new(pool.imap_unordered(double, failing_input(), 1).unwrap())
            };
            for r in results {
                got.push(r.unwrap());
            }
        });
        assert_eq!(got, [0, 2, 4, 6, 8], "ordered={ordered}");
    }
    // The pool is fine afterwards.
    assert_eq!(pool.apply(double, 21).unwrap(), 42);
    let threads = ThreadPool::new(2).unwrap();
    let got = collect_until_panic(|got| {
        for r in threads.imap(double, failing_input(), 1).unwrap() {
            got.push(r.unwrap());
        }
    });
    assert_eq!(got, [0, 2, 4, 6, 8]);
}

/// Says it started, then waits for its gate.
fn started_then_gated((started, gate, n): (Event, Event, i64)) -> i64 {
    started.set();
    gated((gate, n))
}

#[test]
fn shutdown_cancels_what_is_queued_and_lets_running_work_finish() {
    // Executor.shutdown(wait=False, cancel_futures=True): queued futures are cancelled, the
    // running one finishes; every handle ends in exactly one outcome.
    let (started, gate) = (Event::new().unwrap(), Event::new().unwrap());
    let pool = Pool::new(1).unwrap();
    let running = pool
        .apply_async(started_then_gated, (started.clone(), gate.clone(), 1))
        .unwrap();
    started.wait().unwrap();
    let queued: Vec<_> = (0..20)
        .map(|i| pool.apply_async(gated, (gate.clone(), i)).unwrap())
        .collect();
    pool.shutdown(false, true).unwrap();
    assert!(
        pool.apply(double, 1).is_err(),
        "a shut-down pool takes no work"
    );
    gate.set();
    assert_eq!(running.get_timeout(GENEROUS).unwrap(), 1);
    let cancelled = queued
        .iter()
        .filter(|h| h.get_timeout(GENEROUS) == Err(Error::Cancelled))
        .count();
    // The worker's window may hold a prefetched task or two, which run.
    assert!(cancelled >= 18, "{cancelled} of 20 cancelled");
    pool.join().unwrap();

    let threads = ThreadPool::new(1).unwrap();
    let (started, gate) = (Event::new().unwrap(), Event::new().unwrap());
    let running = threads
        .apply_async(started_then_gated, (started.clone(), gate.clone(), 1))
        .unwrap();
    started.wait().unwrap();
    let queued: Vec<_> = (0..5)
        .map(|i| threads.apply_async(gated, (gate.clone(), i)).unwrap())
        .collect();
    threads.shutdown(false, true).unwrap();
    gate.set();
    assert_eq!(running.get_timeout(GENEROUS).unwrap(), 1);
    assert!(
        queued
            .iter()
            .all(|h| h.get_timeout(GENEROUS) == Err(Error::Cancelled))
    );
    threads.join().unwrap();
}

#[test]
fn shutdown_with_wait_runs_everything_queued() {
    let pool = Pool::new(2).unwrap();
    let handles: Vec<_> = (0..20)
        .map(|x| pool.apply_async(double, x).unwrap())
        .collect();
    pool.shutdown(true, false).unwrap();
    assert!(handles.iter().all(|h| h.ready()), "waited for all");
    let sum: u64 = handles.iter().map(|h| h.get().unwrap()).sum();
    assert_eq!(sum, (0..20).map(|x| x * 2).sum::<u64>());
}

#[test]
fn connection_wait_takes_result_handles_beside_connections_and_processes() {
    // multiprocessing.connection.wait over every kind of waitable at once.
    let pool = Pool::new(1).unwrap();
    let gate = Event::new().unwrap();
    let handle = pool.apply_async(gated, (gate.clone(), 3)).unwrap();
    let (reader, _writer) = pool_api::Pipe::one_way().unwrap();
    let sleeper = pool_api::Process::new(
        |ms: u64| std::thread::sleep(Duration::from_millis(ms)),
        60_000,
    )
    .unwrap()
    .start()
    .unwrap();
    let nothing =
        pool_api::wait_timeout(&[&reader, &handle, &sleeper], Duration::from_millis(50)).unwrap();
    assert!(nothing.is_empty(), "{nothing:?}");
    // Set from another thread while `wait` blocks with no timeout: the handle's completion
    // wakes it.
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        gate.set();
    });
    assert_eq!(pool_api::wait(&[&reader, &handle, &sleeper]).unwrap(), [1]);
    setter.join().unwrap();
    assert_eq!(handle.get().unwrap(), 3);
    let threads = ThreadPool::new(1).unwrap();
    let done = threads.apply_async(|x: u64| x, 5).unwrap();
    assert_eq!(pool_api::wait(&[&reader, &done]).unwrap(), [1]);
    sleeper.kill().unwrap();
}
