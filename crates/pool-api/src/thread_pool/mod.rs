//! `ThreadPool`: `Pool`'s vocabulary on threads, for work that needs no isolation.
//!
//! A process pool pays for its isolation: arguments and results cross a process boundary
//! (serde), and tasks must be functions that travel by identity. Work that neither crashes nor
//! hangs, or that shares memory with the caller, does not need that price; Python offers
//! `multiprocessing.pool.ThreadPool` for it, with the same methods. This is that pool, on a
//! dedicated rayon pool: closures may capture anything `Send + Sync`, values move instead of
//! being encoded. What cannot mean the same on threads (terminate, time limits, worker loss)
//! is cooperative, and said so on [`ThreadPool`].

mod awaiting;
mod shared;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::{Lifecycle, default_chunksize};

use self::shared::{Initializer, Job, Outcome, Prepare, Shared, Task};
use crate::{Callbacks, Error, StarFn};

/// A pool of threads with Python's `multiprocessing.pool.ThreadPool` vocabulary: the methods
/// of [`Pool`](crate::Pool), for work that needs no process isolation.
///
/// Tasks are closures (`Fn(A) -> R + Send + Sync + 'static`) that may capture anything;
/// arguments and results are moved, not encoded, so they need only be `Send + 'static`. The
/// threads are a rayon pool of this `ThreadPool`'s own (not rayon's global pool).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// use pool_api::ThreadPool;
///
/// let pool = ThreadPool::new(2)?;
/// let offset = 10; // captured: no serde, no `fn` pointer needed
/// assert_eq!(pool.map(move |x: u64| x * x + offset, 1..=3)?, [11, 14, 19]);
///
/// let total = Arc::new(AtomicU64::new(0));
/// let t = Arc::clone(&total);
/// let r = pool.apply_async(move |x: u64| t.fetch_add(x, Ordering::SeqCst), 5)?;
/// r.wait();
/// assert_eq!(total.load(Ordering::SeqCst), 5);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), pool_api::Error>(())
/// ```
///
/// # Same as `Pool`
///
/// `map` returns results in input order and, on failure, the error of the lowest-index failed
/// item; `imap` reads its input lazily, a bounded number of chunks ahead of the consumer;
/// callbacks run on one result thread of the pool, in completion order; submitting after
/// [`close`](ThreadPool::close) is [`Error::Closed`], [`join`](ThreadPool::join) before
/// `close` or `terminate` is [`Error::StillRunning`]; dropping the pool terminates it. A task
/// that panics fails with [`Error::Panicked`] (message, location, and this process's pid) and
/// its thread takes the next task.
///
/// # What is cooperative on threads
///
/// A thread cannot be killed, so:
///
/// - **[`terminate`](ThreadPool::terminate)** ends all unfinished work at once for its
///   callers: queued tasks never start, and every unfinished result is [`Error::Terminated`]
///   (a `get` never waits for a running task). A task *already running* runs to its end on its
///   thread and its result is discarded; the rest of its chunk is skipped. `join` after
///   `terminate` waits for those running tasks to return.
/// - **No worker loss.** A panic is caught and reported; there is no process to lose. Code
///   that aborts (`std::process::abort`, a double panic, a crash in C code) takes the whole
///   process down, caller included: use [`Pool`](crate::Pool) for such work.
/// - **No time limit and no `maxtasksperchild`.** A stuck task keeps its thread. To stop
///   waiting, use [`ThreadAsyncResult::get_timeout`]: the caller gets [`Error::Timeout`] and
///   the task runs on.
///
/// Waiting on the pool from one of its own threads (a task calling `map` or `join` on its own
/// pool, or `get` on a result of it) can deadlock once every thread waits, as with any
/// fixed-size thread pool.
#[derive(Debug)]
pub struct ThreadPool {
    shared: Arc<Shared>,
}

/// Settings of a [`ThreadPool`]; see [`ThreadPool::builder`].
pub struct ThreadPoolBuilder {
    processes: Option<usize>,
    initializer: Option<Initializer>,
}

impl std::fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("processes", &self.processes)
            .field("initializer", &self.initializer.is_some())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `processes` threads (Python's `ThreadPool(processes)`). Zero is an
    /// [`Error::InvalidArgument`].
    pub fn new(processes: usize) -> Result<ThreadPool, Error> {
        ThreadPool::builder().processes(processes).build()
    }

    /// A builder, for the settings beyond the number of threads.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder {
            processes: None,
            initializer: None,
        }
    }

    /// Number of threads (named as Python names it).
    pub fn processes(&self) -> usize {
        self.shared.threads()
    }

    /// Calls `f(args)` on a thread of the pool and waits for the result.
    pub fn apply<F, A, R>(&self, f: F, args: A) -> Result<R, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        A: Send + 'static,
        R: Send + 'static,
    {
        self.apply_async(f, args)?.get()
    }

    /// Calls `f(args)` on a thread of the pool; the result comes through the returned handle.
    pub fn apply_async<F, A, R>(&self, f: F, args: A) -> Result<ThreadAsyncResult<R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        A: Send + 'static,
        R: Send + 'static,
    {
        let job = self.submit_batch(Arc::new(f), vec![vec![args]], None)?;
        Ok(ThreadAsyncResult { job })
    }

    /// [`ThreadPool::apply_async`] with Python's `callback` and `error_callback`. They run on
    /// the pool's one result thread, in completion order; one that panics is reported through
    /// `tracing` and later callbacks still run. The callback gets a clone of the result (hence
    /// `R: Clone`): the handle keeps the value for `get`.
    pub fn apply_async_with<F, A, R>(
        &self,
        f: F,
        args: A,
        callbacks: Callbacks<R>,
    ) -> Result<ThreadAsyncResult<R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        A: Send + 'static,
        R: Clone + Send + 'static,
    {
        let prepare = callbacks.into_fn().map(|run| -> Prepare<R> {
            Box::new(move |outcomes: &[Outcome<R>]| {
                let outcome = outcomes.first().cloned().unwrap_or(Err(Error::Terminated));
                Box::new(move || run(outcome))
            })
        });
        let job = self.submit_batch(Arc::new(f), vec![vec![args]], prepare)?;
        Ok(ThreadAsyncResult { job })
    }

    /// Applies `f` to every item, in chunks spread over the threads, and returns the results
    /// in input order. Input is read as it is dispatched, a bounded number of chunks ahead.
    ///
    /// It waits for every item; on failure it returns the error of the *lowest-index* failed
    /// item. [`ThreadPool::map_results`] gives every item's own outcome.
    ///
    /// ```
    /// use pool_api::{Error, ThreadPool};
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let words = vec!["one".to_string(), "three".to_string()];
    /// assert_eq!(pool.map(|w: String| w.len(), words)?, [3, 5]);
    ///
    /// let failed = pool.map(|x: u32| if x % 2 == 1 { panic!("odd {x}") } else { x }, 0..10);
    /// match failed {
    ///     Err(Error::Panicked { message, .. }) => assert_eq!(message, "odd 1"),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), pool_api::Error>(())
    /// ```
    pub fn map<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        first_error(self.map_results(f, items, None)?)
    }

    /// [`ThreadPool::map`] with an explicit chunk size (0 is an error).
    pub fn map_chunked<F, A, R, I>(&self, f: F, items: I, chunksize: usize) -> Result<Vec<R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        first_error(self.map_results(f, items, Some(chunksize))?)
    }

    /// Python's `starmap`: every item is a tuple of arguments (`f` takes 2 to 5 of them).
    pub fn starmap<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: StarFn<A, R> + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        first_error(self.map_results(move |args| f.call_with(args), items, None)?)
    }

    /// [`ThreadPool::starmap`] with an explicit chunk size (0 is an error).
    pub fn starmap_chunked<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<R>, Error>
    where
        F: StarFn<A, R> + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        first_error(self.map_results(move |args| f.call_with(args), items, Some(chunksize))?)
    }

    /// Every item's own outcome, in input order. The call fails as a whole only if it cannot
    /// be submitted (pool closed, chunksize 0, ...).
    pub fn map_results<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<Result<R, Error>>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        let mut items = items.into_iter();
        let (lo, hi) = items.size_hint();
        // A length must be known for the default chunk size; an iterator that cannot tell
        // is read once into memory.
        let (len, items): (usize, Box<dyn Iterator<Item = A> + '_>) = if hi == Some(lo) {
            (lo, Box::new(items))
        } else {
            let all: Vec<A> = items.by_ref().collect();
            (all.len(), Box::new(all.into_iter()))
        };
        let chunksize = self.chunksize(len, chunksize)?;
        let mut stream = self.stream(Arc::new(f), items, chunksize, true)?;
        let mut out = Vec::with_capacity(len);
        out.extend(stream.by_ref());
        if out.len() < len && stream.job.was_terminated() {
            // Items never read fail as those read and not finished: one outcome per item.
            out.resize_with(len, || Err(Error::Terminated));
        }
        Ok(out)
    }

    /// [`ThreadPool::map`] without waiting: the items are read now, and the results come
    /// through the returned handle.
    pub fn map_async<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<ThreadMapResult<R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        self.submit_map_async(Arc::new(f), items, chunksize, None)
    }

    /// [`ThreadPool::map_async`] with callbacks (the callback receives a clone of the whole
    /// result vector; see [`ThreadPool::apply_async_with`]).
    pub fn map_async_with<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<ThreadMapResult<R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Clone + Send + 'static,
    {
        let prepare = callbacks.into_fn().map(|run| -> Prepare<R> {
            Box::new(move |outcomes: &[Outcome<R>]| {
                let outcome = first_error(outcomes.to_vec());
                Box::new(move || run(outcome))
            })
        });
        self.submit_map_async(Arc::new(f), items, chunksize, prepare)
    }

    /// Python's `starmap_async`.
    pub fn starmap_async<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<ThreadMapResult<R>, Error>
    where
        F: StarFn<A, R> + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        self.submit_map_async(
            Arc::new(move |args| f.call_with(args)),
            items,
            chunksize,
            None,
        )
    }

    /// [`ThreadPool::starmap_async`] with callbacks (see [`ThreadPool::map_async_with`]).
    pub fn starmap_async_with<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<ThreadMapResult<R>, Error>
    where
        F: StarFn<A, R> + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Clone + Send + 'static,
    {
        self.map_async_with(move |args| f.call_with(args), items, chunksize, callbacks)
    }

    /// Python's `imap`: results in input order, as they come. The input is read lazily, on
    /// the consumer's thread, with a bounded number of chunks ahead of the consumer, so an
    /// endless iterator is fine. Chunks of `chunksize` items (Python's default for `imap` is
    /// 1; 0 is an error).
    pub fn imap<'p, F, A, R, I>(
        &'p self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<ThreadIMap<'p, A, R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'p,
        A: Send + 'static,
        R: Send + 'static,
    {
        let chunksize = self.chunksize(0, Some(chunksize))?;
        self.stream(Arc::new(f), Box::new(items.into_iter()), chunksize, true)
    }

    /// Python's `imap_unordered`: results as they finish.
    pub fn imap_unordered<'p, F, A, R, I>(
        &'p self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<ThreadIMap<'p, A, R>, Error>
    where
        F: Fn(A) -> R + Send + Sync + 'static,
        I: IntoIterator<Item = A>,
        I::IntoIter: 'p,
        A: Send + 'static,
        R: Send + 'static,
    {
        let chunksize = self.chunksize(0, Some(chunksize))?;
        self.stream(Arc::new(f), Box::new(items.into_iter()), chunksize, false)
    }

    /// Python's `close`: no more work is accepted; the work submitted is finished, then the
    /// threads exit.
    pub fn close(&self) {
        self.shared.close();
    }

    /// `concurrent.futures`' `shutdown(wait, cancel_futures)`: closes the pool; with
    /// `cancel_queued`, every task no thread started yet fails with [`Error::Cancelled`]
    /// (running ones finish); with `wait`, waits as [`ThreadPool::join`] does. Every handle
    /// ends in exactly one outcome.
    pub fn shutdown(&self, wait: bool, cancel_queued: bool) -> Result<(), Error> {
        self.close();
        if cancel_queued {
            self.shared.cancel_queued();
        }
        if wait { self.join() } else { Ok(()) }
    }

    /// Python's `terminate`, cooperatively: every unfinished task fails with
    /// [`Error::Terminated`] at once, queued ones never start, no callback runs for them and
    /// none runs after this returns. A task already running on a thread cannot be stopped: it
    /// runs to its end and its result is discarded.
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Python's `join`: waits for the threads to exit, after [`ThreadPool::close`] or
    /// [`ThreadPool::terminate`] ([`Error::StillRunning`] before). After `close`, every task
    /// and every callback has run when it returns (an `imap` still being read keeps it
    /// waiting); after `terminate`, the tasks that were running have returned.
    pub fn join(&self) -> Result<(), Error> {
        self.shared.join()
    }

    fn chunksize(&self, len: usize, asked: Option<usize>) -> Result<usize, Error> {
        match asked {
            Some(0) => Err(Error::InvalidArgument(
                "chunksize must be at least 1".into(),
            )),
            Some(n) => Ok(n),
            None => {
                let threads = u32::try_from(self.processes()).unwrap_or(u32::MAX);
                Ok(default_chunksize(len as u64, threads).max(1) as usize)
            }
        }
    }

    /// Submits a job whose chunks are all known now (`apply`, `map_async`).
    fn submit_batch<A, R>(
        &self,
        f: Task<A, R>,
        chunks: Vec<Vec<A>>,
        callback: Option<Prepare<R>>,
    ) -> Result<Arc<Job<R>>, Error>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        let job = self.shared.new_job(true, callback);
        // Every chunk is pending before the job is submitted: from then on, `terminate`
        // accounts for each.
        let indices: Vec<Option<usize>> = chunks.iter().map(|c| job.add_chunk(c.len())).collect();
        self.shared.submit(&job)?;
        for (index, items) in indices.into_iter().zip(chunks) {
            if let Some(index) = index {
                self.shared.spawn(&job, index, items, &f);
            }
        }
        job.seal();
        Ok(job)
    }

    fn submit_map_async<A, R, I>(
        &self,
        f: Task<A, R>,
        items: I,
        chunksize: Option<usize>,
        callback: Option<Prepare<R>>,
    ) -> Result<ThreadMapResult<R>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Send + 'static,
        R: Send + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        let chunksize = self.chunksize(items.len(), chunksize)?;
        let mut chunks = Vec::with_capacity(items.len().div_ceil(chunksize));
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            chunks.push(items.by_ref().take(chunksize).collect());
        }
        let job = self.submit_batch(f, chunks, callback)?;
        Ok(ThreadMapResult { job })
    }

    /// Submits a job whose chunks are read from `items` as the consumer goes (`map`, `imap`).
    fn stream<'p, A, R>(
        &'p self,
        f: Task<A, R>,
        items: Box<dyn Iterator<Item = A> + 'p>,
        chunksize: usize,
        ordered: bool,
    ) -> Result<ThreadIMap<'p, A, R>, Error>
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        let job = self.shared.new_job(false, None);
        self.shared.submit(&job)?;
        Ok(ThreadIMap {
            pool: self,
            job,
            f,
            items,
            chunksize,
            // Enough chunks ahead to keep every thread busy while the consumer catches up.
            window: self.processes().saturating_mul(4).max(4),
            ordered,
            exhausted: false,
            in_flight: 0,
            next_chunk: 0,
            early: BTreeMap::new(),
            ready: VecDeque::new(),
            done: false,
            input_panic: None,
            deadline: None,
        })
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        if self.shared.lifecycle() != Lifecycle::Joined {
            self.shared.terminate();
        }
        self.shared.shut_down();
    }
}

impl ThreadPoolBuilder {
    /// Number of threads (default: the available parallelism). Named `processes` as in
    /// Python's `ThreadPool(processes=...)`.
    pub fn processes(mut self, n: usize) -> ThreadPoolBuilder {
        self.processes = Some(n);
        self
    }

    /// Python's `initializer`: `f()` runs once on every thread of the pool before its first
    /// task (arguments are whatever `f` captures). [`build`](ThreadPoolBuilder::build) waits
    /// until it ran on every thread; if it panics on one, `build` fails with
    /// [`Error::InitializerFailed`].
    pub fn initializer<F>(mut self, f: F) -> ThreadPoolBuilder
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.initializer = Some(Arc::new(f));
        self
    }

    /// Starts the threads (and runs the initializer on each).
    pub fn build(self) -> Result<ThreadPool, Error> {
        let threads = match self.processes {
            Some(0) => {
                return Err(Error::InvalidArgument(
                    "a pool needs at least one thread".into(),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(ThreadPool {
            shared: Shared::start(threads, self.initializer)?,
        })
    }
}

/// The values, or the error of the lowest-index failed item.
fn first_error<R>(results: Vec<Result<R, Error>>) -> Result<Vec<R>, Error> {
    results.into_iter().collect()
}

/// The result of [`ThreadPool::apply_async`]: Python's `AsyncResult`.
///
/// Values are moved, not copied: the first `get` that succeeds takes the value, and a later
/// `get` is an [`Error::InvalidArgument`] (a failed task's error is returned every time).
#[derive(Debug)]
pub struct ThreadAsyncResult<R> {
    job: Arc<Job<R>>,
}

impl<R: Send + 'static> ThreadAsyncResult<R> {
    /// Waits for the result, and takes it.
    pub fn get(&self) -> Result<R, Error> {
        self.job.wait_finished(None);
        self.take()
    }

    /// Waits at most `timeout`; [`Error::Timeout`] if the result is not ready (the task runs
    /// on, and a later `get` returns its result).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, Error> {
        if !self.job.wait_finished(crate::deadline_in(timeout)) {
            return Err(Error::Timeout(timeout));
        }
        self.take()
    }

    fn take(&self) -> Result<R, Error> {
        self.job
            .take_outcomes()?
            .into_iter()
            .next()
            .unwrap_or(Err(Error::Terminated))
    }

    /// Waits until the result is ready.
    pub fn wait(&self) {
        self.job.wait_finished(None);
    }

    /// Waits at most `timeout`; whether the result is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait_finished(crate::deadline_in(timeout))
    }

    /// Whether the result is ready.
    pub fn ready(&self) -> bool {
        self.job.is_finished()
    }

    /// Whether the task succeeded; [`Error::NotReady`] before it is ready.
    pub fn successful(&self) -> Result<bool, Error> {
        self.job.successful()
    }

    /// Cancels the task if no thread started it yet (its result is then
    /// [`Error::Cancelled`]); whether it was. A running task is not interrupted.
    pub fn cancel(&self) -> bool {
        self.job.cancel()
    }
}

/// The result of [`ThreadPool::map_async`]: Python's `MapResult`.
///
/// Values are moved, not copied: the first `get` (or `get_results`) that returns them takes
/// them; see [`ThreadAsyncResult`].
#[derive(Debug)]
pub struct ThreadMapResult<R> {
    job: Arc<Job<R>>,
}

impl<R: Send + 'static> ThreadMapResult<R> {
    /// Waits for every result and takes them; on failure, the error of the lowest-index failed
    /// item.
    pub fn get(&self) -> Result<Vec<R>, Error> {
        self.job.wait_finished(None);
        first_error(self.job.take_outcomes()?)
    }

    /// Waits at most `timeout`; [`Error::Timeout`] if not ready.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<R>, Error> {
        if !self.job.wait_finished(crate::deadline_in(timeout)) {
            return Err(Error::Timeout(timeout));
        }
        first_error(self.job.take_outcomes()?)
    }

    /// Every item's own outcome, in input order (waits, and takes them: empty if an earlier
    /// call took them).
    pub fn get_results(&self) -> Vec<Result<R, Error>> {
        self.job.wait_finished(None);
        self.job.take_outcomes().unwrap_or_default()
    }

    /// Waits until every result is ready.
    pub fn wait(&self) {
        self.job.wait_finished(None);
    }

    /// Waits at most `timeout`; whether every result is ready.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait_finished(crate::deadline_in(timeout))
    }

    /// Whether every result is ready.
    pub fn ready(&self) -> bool {
        self.job.is_finished()
    }

    /// Whether every item succeeded; [`Error::NotReady`] before it is ready.
    pub fn successful(&self) -> Result<bool, Error> {
        self.job.successful()
    }

    /// Cancels the chunks no thread started yet (their items fail with [`Error::Cancelled`]);
    /// whether any was.
    pub fn cancel(&self) -> bool {
        self.job.cancel()
    }
}

/// The iterator of [`ThreadPool::imap`] and [`ThreadPool::imap_unordered`]: one `Result` per
/// item. It reads its input as it goes, on the thread that iterates.
///
/// Dropping it before the end cancels the chunks no thread started.
pub struct ThreadIMap<'p, A, R> {
    pool: &'p ThreadPool,
    job: Arc<Job<R>>,
    f: Task<A, R>,
    items: Box<dyn Iterator<Item = A> + 'p>,
    chunksize: usize,
    /// Most chunks read and not yet handed to the consumer.
    window: usize,
    ordered: bool,
    exhausted: bool,
    in_flight: usize,
    /// The next chunk to hand over, in order.
    next_chunk: usize,
    /// Chunks that ended before an earlier one (ordered delivery).
    early: BTreeMap<usize, Vec<Outcome<R>>>,
    ready: VecDeque<Outcome<R>>,
    done: bool,
    /// The input panicked: the panic resumes in the caller once the results of the items
    /// before it were handed over, as Python raises it at that point.
    input_panic: Option<Box<dyn std::any::Any + Send>>,
    /// Set by [`ThreadIMap::with_timeout`]: when the results stop being handed over.
    deadline: Option<(Instant, Duration)>,
}

impl<A, R> ThreadIMap<'_, A, R> {
    /// Hands results over only until `timeout` from now: the results finished in time, in
    /// order, then one [`Error::Timeout`], after which the iterator ends (see
    /// [`IMap::with_timeout`](crate::IMap::with_timeout)).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = crate::deadline_in(timeout).map(|at| (at, timeout));
        self
    }
}

impl<A, R> std::fmt::Debug for ThreadIMap<'_, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadIMap")
            .field("job", &self.job)
            .field("ordered", &self.ordered)
            .field("in_flight", &self.in_flight)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<A: Send + 'static, R: Send + 'static> ThreadIMap<'_, A, R> {
    /// Reads and dispatches chunks until the window is full or the input ends.
    fn fill(&mut self) {
        while !self.exhausted && self.in_flight < self.window {
            if self.job.is_finished() {
                // Terminated: read no more input.
                self.exhausted = true;
                break;
            }
            let mut batch: Vec<A> = Vec::with_capacity(self.chunksize);
            while batch.len() < self.chunksize {
                let items = &mut self.items;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| items.next())) {
                    Ok(Some(item)) => batch.push(item),
                    Ok(None) => break,
                    Err(panic) => {
                        self.input_panic = Some(panic);
                        break;
                    }
                }
            }
            if batch.len() < self.chunksize {
                self.exhausted = true;
            }
            if !batch.is_empty() {
                match self.job.add_chunk(batch.len()) {
                    Some(index) => {
                        self.pool.shared.spawn(&self.job, index, batch, &self.f);
                        self.in_flight += 1;
                    }
                    // Terminated: nothing more runs.
                    None => self.exhausted = true,
                }
            }
            if self.exhausted {
                self.job.seal();
            }
        }
    }
}

impl<A: Send + 'static, R: Send + 'static> Iterator for ThreadIMap<'_, A, R> {
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.done {
                return self
                    .input_panic
                    .take()
                    .map(|p| std::panic::resume_unwind(p));
            }
            self.fill();
            let chunks = match self.job.next_ended_until(self.deadline.map(|(at, _)| at)) {
                Some(Some(chunks)) => chunks,
                Some(None) => {
                    self.done = true;
                    continue;
                }
                None => {
                    self.done = true;
                    self.input_panic = None;
                    return self
                        .deadline
                        .map(|(_, timeout)| Err(Error::Timeout(timeout)));
                }
            };
            for (index, outcomes) in chunks {
                if self.ordered {
                    self.early.insert(index, outcomes);
                } else {
                    self.in_flight -= 1;
                    self.ready.extend(outcomes);
                }
            }
            while let Some(outcomes) = self.early.remove(&self.next_chunk) {
                self.next_chunk += 1;
                self.in_flight -= 1;
                self.ready.extend(outcomes);
            }
        }
    }
}

impl<A, R> Drop for ThreadIMap<'_, A, R> {
    fn drop(&mut self) {
        if !self.job.is_finished() {
            self.job.abandon();
        }
    }
}
