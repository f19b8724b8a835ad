//! `Pool`: Python's process pool, over real processes, with Python's failure modes fixed.

mod awaiting;
mod callbacks;
#[cfg(feature = "cluster")]
mod cluster;
mod driver;
mod job;
mod link;
mod payload;
mod placement;
mod sleepers;
mod worker;

pub(crate) use self::payload::{encode_chunk, from_byte_vec, is_byte_vec};

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::Stats;
use pool_core::{
    ChunkId, Config, Delivery, Input, JobSpec, Lifecycle, Scheduler, Time, default_chunksize,
};
use pool_ipc::os::Signal;
use pool_ipc::{StartMethod, TransportKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use self::driver::{Shared, WorkerSetup};
use self::job::{Callback, JobShared, Source, Wake};
use self::payload::{FirstError, Outcomes, Payload, decoder};
use self::placement::PlaceAhead;
use crate::Error;
use crate::task::{Call, StarFn};

/// A pool of worker processes, with Python's `multiprocessing.Pool` vocabulary.
///
/// # What can be a task
///
/// A task is a `fn` pointer: a plain function, or a closure that captures nothing (which
/// coerces to one). It travels to the workers by identity, since every worker runs this same
/// executable; arguments and results travel with serde (`Serialize + DeserializeOwned`).
/// A closure that captures a variable is refused by the type checker at the line that passes
/// it, since what it captures lives in this process's memory only: pass the value as an
/// argument instead (a tuple of it and the item, or a [`starmap`](Pool::starmap)).
///
/// ```compile_fail,E0308
/// # let pool = pool_api::Pool::new(1)?;
/// let factor = 3u64;
/// // error: closures can only be coerced to `fn` types if they do not capture any variables
/// let tripled = pool.map(move |x: u64| x * factor, 1..=10)?;
/// # Ok::<(), pool_api::Error>(())
/// ```
///
/// `starmap`'s functions (of several arguments) are generic instead, and a capturing closure
/// there is refused when the program is compiled, with a note naming the closure.
///
///
/// ```
/// use pool_api::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.map(square, 1..=10)?.iter().sum::<u64>(), 385);
/// assert_eq!(pool.apply(|s: String| s.len(), "four".to_string())?, 4);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), pool_api::Error>(())
/// ```
///
/// Dropping a pool terminates it, as leaving Python's `with Pool() as p:` block does.
#[derive(Debug)]
pub struct Pool {
    backend: Backend,
    processes: u32,
    transport: TransportKind,
}

/// The driver that carries out a pool's scheduler's commands: its own worker processes
/// (`driver.rs`), or, with the `cluster` feature, chunks through Redis to the worker
/// processes of any number of hosts (`cluster.rs`). Both take the same jobs (`job.rs`) and
/// payloads (`payload.rs`), so every method of [`Pool`] is one implementation. Another
/// backend (MPI, say) is one more variant.
#[derive(Debug, Clone)]
pub(crate) enum Backend {
    Local(Arc<Shared>),
    #[cfg(feature = "cluster")]
    Cluster(Arc<cluster::ClusterShared>),
}

/// `$body` with `$s` bound to whichever driver `$backend` holds.
macro_rules! each_driver {
    ($backend:expr, $s:ident => $body:expr) => {
        match $backend {
            Backend::Local($s) => $body,
            #[cfg(feature = "cluster")]
            Backend::Cluster($s) => $body,
        }
    };
}

impl Backend {
    fn submit(
        &self,
        spec: JobSpec,
        call: Call,
        source: Source,
        callback: Option<Callback>,
        awaited: bool,
    ) -> Result<Arc<JobShared>, Error> {
        each_driver!(self, s => s.submit(spec, call, source, callback, awaited))
    }

    fn pulled(&self, chunk: ChunkId, items: u32, payload: Payload) {
        each_driver!(self, s => s.pulled(chunk, items, payload))
    }

    fn with_scheduler<T>(&self, f: impl FnOnce(&mut Scheduler, Time) -> T) -> T {
        each_driver!(self, s => s.with_scheduler(f))
    }

    fn spare(&self) -> &payload::SpareBuffers {
        each_driver!(self, s => s.spare())
    }

    /// Keeps a frame whose results were taken, for the next message to be received into.
    fn frame_back(&self, frame: Option<Vec<u8>>) {
        // A cluster's results come from Redis, not into kept buffers.
        if let (Backend::Local(s), Some(frame)) = (self, frame) {
            s.frames().keep_frame(frame);
        }
    }

    fn receive_answer(&self, job: &JobShared) {
        match self {
            Backend::Local(s) => s.receive_answer(job),
            #[cfg(feature = "cluster")]
            Backend::Cluster(_) => {}
        }
    }

    fn cancel_queued(&self) -> bool {
        each_driver!(self, s => s.cancel_queued())
    }

    fn terminate(&self) {
        each_driver!(self, s => s.terminate())
    }

    fn join(&self) -> Result<(), Error> {
        each_driver!(self, s => s.join())
    }

    fn worker_pids(&self) -> Vec<u32> {
        match self {
            Backend::Local(s) => s.worker_pids(),
            #[cfg(feature = "cluster")]
            Backend::Cluster(_) => Vec::new(),
        }
    }

    fn signal_worker(&self, pid: u32, signal: Signal) -> Result<bool, Error> {
        match self {
            Backend::Local(s) => s.signal_worker(pid, signal),
            #[cfg(feature = "cluster")]
            Backend::Cluster(_) => Ok(false),
        }
    }

    fn stats(&self) -> Stats {
        each_driver!(self, s => s.stats())
    }

    fn lifecycle(&self) -> Lifecycle {
        each_driver!(self, s => s.lifecycle())
    }

    fn shut_down(&self) {
        each_driver!(self, s => s.shut_down())
    }

    fn is_cluster(&self) -> bool {
        !matches!(self, Backend::Local(_))
    }
}

#[cfg(test)]
impl Pool {
    /// The local driver, for unit tests of its internals.
    pub(crate) fn local(&self) -> &Shared {
        match &self.backend {
            Backend::Local(shared) => shared,
            #[cfg(feature = "cluster")]
            Backend::Cluster(_) => panic!("a cluster pool"),
        }
    }
}

/// An initializer: its call, its encoded arguments, and the descriptors of their handles.
type Initializer = (Call, Vec<u8>, Vec<std::os::fd::OwnedFd>);

/// Settings of a [`Pool`]; see [`Pool::builder`].
#[derive(Debug)]
pub struct PoolBuilder {
    processes: Option<usize>,
    initializer: Option<Result<Initializer, Error>>,
    max_tasks_per_child: Option<usize>,
    transport: TransportKind,
    time_limit: Option<Duration>,
    chunks_per_worker: u32,
    handshake_timeout: Duration,
    start_method: StartMethod,
    unavailable_after: Option<Duration>,
    #[cfg(feature = "cluster")]
    cluster: cluster::ClusterSettings,
}

impl Pool {
    /// A pool of `processes` workers. Zero is an [`Error::InvalidArgument`].
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// A builder, for the settings beyond the number of processes.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            processes: None,
            initializer: None,
            max_tasks_per_child: None,
            transport: TransportKind::Pipe,
            time_limit: None,
            chunks_per_worker: 16,
            handshake_timeout: Duration::from_secs(30),
            start_method: StartMethod::Spawn,
            unavailable_after: None,
            #[cfg(feature = "cluster")]
            cluster: cluster::ClusterSettings::default(),
        }
    }

    /// Number of worker processes.
    pub fn processes(&self) -> usize {
        self.processes as usize
    }

    /// Calls `f(args)` in a worker and waits for the result.
    pub fn apply<A, R>(&self, f: fn(A) -> R, args: A) -> Result<R, Error>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        let result = self.submit_single(f, args, Callbacks::none(), true)?;
        // The answer comes from the worker's channel straight to this thread when it can.
        self.backend.receive_answer(&result.job);
        result.get()
    }

    /// Calls `f(args)` in a worker; the result comes through the returned handle.
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, args: A) -> Result<AsyncResult<R>, Error>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.apply_async_with(f, args, Callbacks::none())
    }

    /// [`Pool::apply_async`] with Python's `callback` and `error_callback`: they run in this
    /// process, on the pool's one callback thread, in completion order. A callback that blocks
    /// delays later callbacks (not results); one that panics is reported through `tracing`
    /// and later callbacks still run.
    pub fn apply_async_with<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        callbacks: Callbacks<R>,
    ) -> Result<AsyncResult<R>, Error>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.submit_single(f, args, callbacks, false)
    }

    /// Submits `f(args)`; `awaited` if the caller waits for it at once (`apply`).
    fn submit_single<A, R>(
        &self,
        f: fn(A) -> R,
        args: A,
        callbacks: Callbacks<R>,
        awaited: bool,
    ) -> Result<AsyncResult<R>, Error>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        let call = Call::new(f)?;
        let chunk = self.payload(std::slice::from_ref(&args))?;
        let callback = callbacks.into_callback(|job: &JobShared| single(job));
        let source = Source::Single(chunk);
        let job = self
            .backend
            .submit(JobSpec::single(), call, source, callback, awaited)?;
        Ok(AsyncResult {
            job,
            backend: self.backend.clone(),
            _r: PhantomData,
        })
    }

    /// Applies `f` to every item, in chunks spread over the workers, and returns the results
    /// in input order. Input is read as it is dispatched.
    ///
    /// Chunks are of Python's default size, `ceil(len / (4 × processes))`, but at most
    /// [`pool_core::MAX_DEFAULT_CHUNKSIZE`] items, so that a huge input keeps its cost per
    /// item and does not hold chunks of millions of items at once.
    ///
    /// Like Python, it waits for every chunk; unlike Python, which raises whichever failure
    /// arrived first, on failure it returns the error of the *lowest-index* failed item (the
    /// same error every time). [`Pool::map_results`] gives every item's own outcome.
    pub fn map<A, R, I>(&self, f: fn(A) -> R, items: I) -> Result<Vec<R>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_values(Call::new(f)?, items, None)
    }

    /// [`Pool::map`] with an explicit chunk size (0 is an error). Unlike `map`, which needs
    /// the input's length for the default chunk size (an iterator that cannot tell it is
    /// read into memory first), this reads any input as the work goes, a bounded window of
    /// chunks ahead.
    pub fn map_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<R>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_values(Call::new(f)?, items, Some(chunksize))
    }

    /// Python's `starmap`: every item is a tuple of arguments (`f` takes 2 to 5 of them).
    pub fn starmap<F, A, R, I>(&self, f: F, items: I) -> Result<Vec<R>, Error>
    where
        F: StarFn<A, R> + Copy + 'static,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_values(Call::new_star(&f)?, items, None)
    }

    /// [`Pool::starmap`] with an explicit chunk size (0 is an error), which streams any input
    /// as [`Pool::map_chunked`] does.
    pub fn starmap_chunked<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<R>, Error>
    where
        F: StarFn<A, R> + Copy + 'static,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.map_values(Call::new_star(&f)?, items, Some(chunksize))
    }

    /// Every item's own outcome, in input order. The call fails as a whole only if it cannot
    /// be submitted (pool closed, chunksize 0, ...).
    pub fn map_results<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<Result<R, Error>>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let mut outcomes = Vec::new();
        self.submit_map(Call::new(f)?, items, chunksize, &mut outcomes)?;
        Ok(outcomes)
    }

    /// Runs a map and returns the values in input order, or the error of the lowest-index
    /// failed item.
    fn map_values<A, R, I>(
        &self,
        call: Call,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let mut values = FirstError::new();
        self.submit_map(call, items, chunksize, &mut values)?;
        values.into_result()
    }

    /// Runs a map, handing every item's outcome to `into` in input order.
    fn submit_map<A, R, I>(
        &self,
        call: Call,
        items: I,
        chunksize: Option<usize>,
        into: &mut impl Outcomes<R>,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize,
        R: DeserializeOwned + Send + 'static,
    {
        let mut items = items.into_iter();
        let (lo, hi) = items.size_hint();
        // The default chunk size needs the length; an iterator that cannot tell it is
        // read once into memory for it. With a chunk size given, it streams (as `imap`'s
        // input does).
        //
        // Either way input is read a bounded window ahead of the results taken. Without
        // one, this thread answered every pull first (workers are kept busy that way) and took
        // no results until the input was all sent: at 100 M `u64`s, 800 MB of results waited
        // in received frames, each faulted in fresh, before a byte was copied out of them.
        let sized = |len: usize, chunksize| {
            let input = Input::Sized {
                items: len as u64,
                chunksize: Some(chunksize),
            };
            JobSpec::new(input, Delivery::Ordered).with_window(self.stream_window())
        };
        // A sized input's chunks have one size (but the last): their results have a place
        // known in advance, where the reader threads may write them.
        let (spec, len, mut items, fixed_chunks) = match chunksize {
            _ if hi == Some(lo) => {
                let chunksize = self.chunksize(lo, chunksize)?;
                let spec = sized(lo, chunksize);
                (spec, lo, Counted::Told(items), Some(chunksize))
            }
            Some(_) => {
                let chunksize = self.chunksize(lo, chunksize)?;
                let spec = JobSpec::new(Input::Stream { chunksize }, Delivery::Ordered)
                    .with_window(self.stream_window());
                (spec, lo, Counted::Told(items), None)
            }
            None => {
                let all: Vec<A> = items.by_ref().collect();
                let len = all.len();
                let chunksize = self.chunksize(len, None)?;
                let spec = sized(len, chunksize);
                (spec, len, Counted::Read(all.into_iter()), Some(chunksize))
            }
        };
        into.reserve(len);
        let placement: Option<Arc<dyn PlaceAhead>> = match fixed_chunks {
            Some(chunksize) => into
                .place_ahead(chunksize as u64, len as u64)
                .map(|placement| placement as Arc<dyn PlaceAhead>),
            None => None,
        };
        let job = self
            .backend
            .submit(spec, call, Source::Caller(decoder::<R>()), None, false)?;
        if let Some(placement) = &placement {
            job.place_results(placement.clone());
        }
        let mut guard = CancelOnDrop {
            backend: &self.backend,
            job: &job,
            armed: true,
        };
        loop {
            match job.next_wake(None) {
                Wake::Pull { chunk, max_items } => self.feed(chunk, max_items, &mut items)?,
                Wake::Delivered(chunks) => {
                    let n = chunks.len() as u32;
                    for (chunk, result) in chunks {
                        let result = match &placement {
                            Some(placement) => result.settle(chunk.id.index, &**placement),
                            None => result,
                        };
                        let frame = result.into_outcomes(chunk.items, into);
                        self.backend.frame_back(frame);
                    }
                    // Taken: the window moves on, and more input is read.
                    self.backend
                        .with_scheduler(|s, now| s.handle_consumed(job.id, n, now));
                }
                Wake::Finished => break,
                Wake::TimedOut => {}
            }
        }
        guard.armed = false;
        Ok(())
    }

    /// [`Pool::map`] without waiting: all arguments are encoded now (so they need not outlive
    /// the call), and the results come through the returned handle.
    pub fn map_async<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<MapResult<R>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.map_async_with(f, items, chunksize, Callbacks::none())
    }

    /// [`Pool::map_async`] with callbacks (the callback receives the whole result vector).
    pub fn map_async_with<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<MapResult<R>, Error>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        self.submit_map_async(Call::new(f)?, items, chunksize, callbacks)
    }

    fn submit_map_async<A, R>(
        &self,
        call: Call,
        items: Vec<A>,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<MapResult<R>, Error>
    where
        A: Serialize,
        R: DeserializeOwned + 'static,
    {
        let len = items.len();
        let chunksize = self.chunksize(len, chunksize)?;
        let mut chunks = VecDeque::new();
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let batch = items.by_ref().take(chunksize as usize);
            chunks.push_back(self.owned_payload(batch)?);
        }
        let spec = JobSpec::new(
            Input::Sized {
                items: len as u64,
                chunksize: Some(chunksize),
            },
            Delivery::Ordered,
        );
        let callback = callbacks.into_callback(|job: &JobShared| job.first_error::<R>());
        let job = self
            .backend
            .submit(spec, call, Source::Encoded(chunks), callback, false)?;
        Ok(MapResult {
            job,
            backend: self.backend.clone(),
            _r: PhantomData,
        })
    }

    /// Python's `starmap_async`.
    pub fn starmap_async<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
    ) -> Result<MapResult<R>, Error>
    where
        F: StarFn<A, R> + Copy + 'static,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.starmap_async_with(f, items, chunksize, Callbacks::none())
    }

    /// [`Pool::starmap_async`] with Python's `callback` and `error_callback` (the callback
    /// receives the whole result vector), as [`Pool::map_async_with`].
    pub fn starmap_async_with<F, A, R, I>(
        &self,
        f: F,
        items: I,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<R>>,
    ) -> Result<MapResult<R>, Error>
    where
        F: StarFn<A, R> + Copy + 'static,
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + 'static,
    {
        let items: Vec<A> = items.into_iter().collect();
        self.submit_map_async::<A, R>(Call::new_star(&f)?, items, chunksize, callbacks)
    }

    /// Python's `imap`: results in input order, as they come. The input is read lazily, with
    /// a bounded number of chunks ahead of the consumer, so an endless iterator is fine.
    /// Chunks of `chunksize` items (Python's default for `imap` is 1). The input may borrow
    /// from the caller: it is read on the thread that iterates the results.
    ///
    /// ```
    /// # fn len(s: String) -> usize { s.len() }
    /// let pool = pool_api::Pool::new(2)?;
    /// let words = vec!["a", "bb", "ccc"];
    /// let lengths: Vec<usize> = pool
    ///     .imap(len, words.iter().map(|w| w.to_string()), 1)?
    ///     .collect::<Result<_, _>>()?;
    /// assert_eq!(lengths, [1, 2, 3]);
    /// # Ok::<(), pool_api::Error>(())
    /// ```
    pub fn imap<'p, A, R, I>(
        &'p self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<IMap<'p, A, R>, Error>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'p,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_with(f, items, chunksize, Delivery::Ordered)
    }

    /// Python's `imap_unordered`: results as they finish.
    pub fn imap_unordered<'p, A, R, I>(
        &'p self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Result<IMap<'p, A, R>, Error>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'p,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.imap_with(f, items, chunksize, Delivery::Unordered)
    }

    fn imap_with<'p, A, R, I>(
        &'p self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
        delivery: Delivery,
    ) -> Result<IMap<'p, A, R>, Error>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'p,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let chunksize = u32::try_from(chunksize)
            .map_err(|_| Error::InvalidArgument("chunksize too large".into()))?;
        let spec =
            JobSpec::new(Input::Stream { chunksize }, delivery).with_window(self.stream_window());
        let job = self.backend.submit(
            spec,
            Call::new(f)?,
            Source::Caller(decoder::<R>()),
            None,
            false,
        )?;
        Ok(IMap {
            pool: self,
            job,
            items: Box::new(items.into_iter()),
            ready: VecDeque::new(),
            done: false,
            input_failed: None,
            deadline: None,
            _r: PhantomData,
        })
    }

    /// Reads up to `max_items` items and hands them to the pool as `chunk`, catching a panic
    /// of the input: the items read before it still go, and the panic is returned for the
    /// caller to resume once their results were handed over.
    fn feed_catching<A: Serialize>(
        &self,
        chunk: ChunkId,
        max_items: u32,
        items: &mut (impl Iterator<Item = A> + ?Sized),
    ) -> Result<Option<Box<dyn std::any::Any + Send>>, Error> {
        let mut batch = Vec::new();
        let mut panicked = None;
        while batch.len() < max_items as usize {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| items.next())) {
                Ok(Some(item)) => batch.push(item),
                Ok(None) => break,
                Err(panic) => {
                    panicked = Some(panic);
                    break;
                }
            }
        }
        let (n, payload) = self.owned_payload(batch.into_iter())?;
        self.backend.pulled(chunk, n, payload);
        Ok(panicked)
    }

    /// A chunk of owned arguments, encoded, or, for byte vectors, moved into the payload
    /// and sent from where they are (see `Payload::gather`; a cluster's chunk is one block of
    /// bytes in Redis, so there they are encoded); with its count of items.
    fn owned_payload<A: Serialize>(
        &self,
        items: impl Iterator<Item = A>,
    ) -> Result<(u32, Payload), Error> {
        if payload::is_byte_vec::<A>() && !self.backend.is_cluster() {
            let vecs: Vec<Vec<u8>> = items
                .filter_map(|item| payload::into_byte_vec(item).ok())
                .collect();
            return Ok((vecs.len() as u32, Payload::gather(vecs)));
        }
        let batch: Vec<A> = items.collect();
        Ok((batch.len() as u32, self.payload(&batch)?))
    }

    /// Reads up to `max_items` items and hands them to the pool as `chunk`.
    fn feed<A: Serialize>(
        &self,
        chunk: ChunkId,
        max_items: u32,
        items: &mut (impl Iterator<Item = A> + ?Sized),
    ) -> Result<(), Error> {
        if let Some(plain) = crate::bulk::PlainOf::<A>::get() {
            // Written as they are read: no vector of the items, one copy.
            let mut bytes = self.backend.spare().take().unwrap_or_default();
            let n = crate::bulk::put_iter(plain, items.take(max_items as usize), &mut bytes);
            self.backend
                .pulled(chunk, n as u32, Payload::new(bytes, Vec::new()));
            return Ok(());
        }
        let (n, payload) = self.owned_payload(items.take(max_items as usize))?;
        self.backend.pulled(chunk, n, payload);
        Ok(())
    }

    /// Encodes a chunk's arguments. Handles inside them (a `Lock`, a `Queue`, ...) travel
    /// with the task as descriptors, which only the `pipe` transport can carry.
    fn payload<A: Serialize>(&self, args: &[A]) -> Result<Payload, Error> {
        let payload = Payload::encode(args, self.backend.spare())?;
        if !payload.fds().is_empty() && self.backend.is_cluster() {
            return Err(Error::InvalidArgument(
                "handles (Lock, Queue, Pipe ends, SharedMemory, ...) are local to one machine: \
                 they cannot be task arguments on a cluster pool"
                    .into(),
            ));
        }
        if payload.fds().len() > pool_ipc::transport::pipe::MAX_FDS_PER_MESSAGE {
            return Err(Error::InvalidArgument(format!(
                "{} handles in one chunk; at most {} fit in a message: use a smaller chunksize",
                payload.fds().len(),
                pool_ipc::transport::pipe::MAX_FDS_PER_MESSAGE
            )));
        }
        if !payload.fds().is_empty() && self.transport != TransportKind::Pipe {
            return Err(Error::InvalidArgument(
                "handles (Lock, Queue, Pipe ends, ...) in task arguments need the pipe transport"
                    .into(),
            ));
        }
        Ok(payload)
    }

    /// How many chunks of a streamed input may be read ahead of the results taken: enough to
    /// keep every worker's window full twice over.
    fn stream_window(&self) -> Option<std::num::NonZeroU32> {
        std::num::NonZeroU32::new(self.processes.saturating_mul(4).max(4))
    }

    fn chunksize(&self, len: usize, asked: Option<usize>) -> Result<u32, Error> {
        match asked {
            Some(0) => Err(Error::InvalidArgument(
                "chunksize must be at least 1".into(),
            )),
            Some(n) => {
                u32::try_from(n).map_err(|_| Error::InvalidArgument("chunksize too large".into()))
            }
            None => Ok(default_chunksize(len as u64, self.processes).max(1)),
        }
    }

    /// Python's `close`: no more work is accepted; the work submitted is finished, then the
    /// workers exit.
    pub fn close(&self) {
        self.backend.with_scheduler(|s, now| s.close(now));
    }

    /// `concurrent.futures`' `shutdown(wait, cancel_futures)`: closes the pool; with
    /// `cancel_queued`, every chunk not yet dispatched to a worker fails with
    /// [`Error::Cancelled`] (running ones finish); with `wait`, waits as [`Pool::join`] does.
    /// Every handle ends in exactly one outcome.
    ///
    /// ```
    /// use pool_api::{Error, Event, Pool};
    ///
    /// fn wait_for(event: Event) -> bool {
    ///     event.wait().is_ok()
    /// }
    ///
    /// let pool = Pool::new(1)?;
    /// let go = Event::new()?;
    /// let handles: Vec<_> = (0..20)
    ///     .map(|_| pool.apply_async(wait_for, go.clone()))
    ///     .collect::<Result<_, _>>()?;
    /// pool.shutdown(false, true)?; // what the worker has not received is cancelled
    /// go.set();
    /// pool.join()?;
    /// let cancelled = handles.iter().filter(|h| h.get() == Err(Error::Cancelled)).count();
    /// let ran = handles.iter().filter(|h| h.get() == Ok(true)).count();
    /// assert_eq!(cancelled + ran, 20); // one outcome each
    /// assert!(cancelled > 0);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn shutdown(&self, wait: bool, cancel_queued: bool) -> Result<(), Error> {
        self.close();
        if cancel_queued {
            self.backend.cancel_queued();
        }
        if wait { self.join() } else { Ok(()) }
    }

    /// Python's `terminate`: stops the workers at once. Unfinished work fails with
    /// [`Error::Terminated`]; no callback runs for it, and none runs after this returns.
    /// As CPython's, it stops the workers first and then waits for a callback that is
    /// running (one waiting on this pool's work gets its error and can return; one that never
    /// returns blocks `terminate` and the pool's drop); callbacks not started are skipped. A
    /// callback may terminate its own pool.
    pub fn terminate(&self) {
        self.backend.terminate();
    }

    /// Python's `join`: waits for the workers to exit, after [`Pool::close`] or
    /// [`Pool::terminate`] ([`Error::StillRunning`] before), and for the callbacks of the
    /// finished work to have run, so that `close(); join()` at the end of `main` loses no
    /// callback's output (called from a callback, it does not wait for callbacks).
    pub fn join(&self) -> Result<(), Error> {
        self.backend.join()
    }

    /// The pids of the live workers. Empty on a cluster pool: its workers are processes of
    /// other hosts (or of this one's `serve`), whose pids mean nothing here; the pid a task's
    /// panic names is the remote worker's, for the logs of its host.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.backend.worker_pids()
    }

    /// Sends `signal` to the live worker `pid` of *this* pool,
    /// through its pidfd, so that a recycled pid is never hit. `Ok(false)` if no live worker
    /// of this pool has that pid (it may just have exited).
    ///
    /// This is for tests and supervisors that want to see the pool's recovery at work: a
    /// worker killed mid-task fails only its chunk with [`Error::WorkerLost`] and is
    /// replaced; a stopped one (`SIGSTOP`) runs into the time limit, if one is set.
    ///
    /// ```
    /// use pool_api::Signal;
    /// # fn pid(_: ()) -> u32 { std::process::id() }
    /// let pool = pool_api::Pool::new(1)?;
    /// let victim = pool.apply(pid, ())?;
    /// assert!(pool.signal_worker(victim, Signal::Kill)?);
    /// assert!(!pool.signal_worker(std::process::id(), Signal::Kill)?); // not a worker
    /// assert_ne!(pool.apply(pid, ())?, victim); // served by the replacement
    /// # Ok::<(), pool_api::Error>(())
    /// ```
    pub fn signal_worker(&self, pid: u32, signal: Signal) -> Result<bool, Error> {
        self.backend.signal_worker(pid, signal)
    }

    /// Counters: workers spawned, lost, chunks dispatched, ... On a cluster pool, also the
    /// chunks `reclaimed` (taken over from a host that vanished, or failed as lost by
    /// another host's worker) and `retried` (of those, the ones that ran again and
    /// succeeded, with `PoolBuilder::retries`); its workers' counters are its window's
    /// slots, not processes.
    pub fn stats(&self) -> Stats {
        self.backend.stats()
    }

    /// Cancels the job's work that was not dispatched yet.
    fn cancel(backend: &Backend, job: &JobShared) -> bool {
        backend.with_scheduler(|s, now| s.cancel(job.id, now))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.backend.lifecycle() != Lifecycle::Joined {
            self.backend.terminate();
        }
        self.backend.shut_down();
    }
}

impl PoolBuilder {
    /// Number of worker processes (default: the available parallelism).
    pub fn processes(mut self, n: usize) -> PoolBuilder {
        self.processes = Some(n);
        self
    }

    /// Python's `initializer` and `initargs`: `f(args)` runs once in every worker before its
    /// first task, replacements included.
    ///
    /// # When the pool gives up
    ///
    /// - **The initializer panics** (or its arguments cannot be decoded) in three workers in
    ///   a row (no worker became ready in between): the pool is broken for good. It stops
    ///   starting workers, the work not yet sent to a worker fails with
    ///   [`Error::InitializerFailed`] carrying the panic's message, and so does every later
    ///   call. Workers that were already serving finish what they hold and are retired.
    /// - **A worker fails to start for another reason**: the spawn fails (out of descriptors,
    ///   memory or processes, the executable cannot run), or the worker dies or is killed
    ///   before its initializer returned (the OOM killer, a signal, an initializer that
    ///   aborts the process). The pool never gives up for this: it starts the worker again
    ///   after a backoff (10 ms, doubling, at most 1 s; each retry is logged through
    ///   `tracing` at `warn`), keeps serving with the workers it has, and keeps queued tasks
    ///   in their place; the count of initializer failures is not touched. Only while the
    ///   pool has no serving worker at all, for longer than 10 s
    ///   ([`PoolBuilder::unavailable_after`]) with starts still failing, do the queued tasks and the
    ///   tasks submitted while that lasts fail with [`Error::Start`], whose source is the
    ///   last start failure (the OS error, or `SpawnError::ChildExited` with the exit
    ///   status). The retries go on, and as soon as a worker is ready, new work runs
    ///   normally. [`Pool::stats`] counts the failed starts (`start_failures`).
    ///
    /// `build` waits for the initial workers' spawns, not for their initializers: a failing
    /// initializer shows on the first task, not in `build`.
    pub fn initializer<A>(mut self, f: fn(A), args: A) -> PoolBuilder
    where
        A: Serialize + DeserializeOwned,
    {
        // The arguments may hold handles (Python's `initargs=(lock,)`): every worker inherits
        // their descriptors when it starts.
        let setup = Call::new(f).and_then(|call| {
            let (bytes, fds) = payload::encode_chunk(std::slice::from_ref(&args), None)?;
            Ok((call, bytes, fds))
        });
        self.initializer = Some(setup);
        self
    }

    /// Python's `maxtasksperchild`: a worker is replaced after this many chunks (0 is an error).
    pub fn max_tasks_per_child(mut self, n: usize) -> PoolBuilder {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// The transport between the pool and its workers: [`TransportKind::Pipe`] (the default,
    /// a socket pair) or [`TransportKind::Shm`] (shared-memory rings: lower latency, faster
    /// bulk data). Handles in a task's arguments (a `Lock`, a `Queue`, a `Pipe` end, ...)
    /// travel as descriptors, which only the pipe transport can carry: over shm such a task
    /// is refused at submission with [`Error::InvalidArgument`]. The initializer's arguments
    /// may hold handles with either transport (workers inherit them when they start).
    pub fn transport(mut self, kind: TransportKind) -> PoolBuilder {
        self.transport = kind;
        self
    }

    /// How workers are started, replacements included (default [`StartMethod::Spawn`]: the
    /// program re-executed). [`StartMethod::Forkserver`] forks them from this process's
    /// forkserver, a clean single-threaded copy of the program started on first use: the
    /// same isolation, a faster start (workers inherit the forkserver's environment, working
    /// directory, stdout and stderr, those of when it started).
    ///
    /// A program that ignores SIGCHLD has its children reaped by the kernel, statuses lost:
    /// there a pool starts its workers from the forkserver whatever this says, since the
    /// forkserver reaps its children itself and relays how each exited (so a crashed worker
    /// is still `WorkerLost` with its signal).
    ///
    /// ```
    /// use pool_api::{Pool, StartMethod};
    ///
    /// let pool = Pool::builder()
    ///     .processes(2)
    ///     .start_method(StartMethod::Forkserver)
    ///     .build()?;
    /// assert_eq!(pool.map(|x: u32| x * 2, 1..=3)?, [2, 4, 6]);
    /// # Ok::<(), pool_api::Error>(())
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> PoolBuilder {
        self.start_method = method;
        self
    }

    /// A time limit for every chunk: past it, the worker is killed and replaced, and the
    /// chunk's items fail with [`Error::TimedOut`].
    pub fn time_limit(mut self, limit: Duration) -> PoolBuilder {
        self.time_limit = Some(limit);
        self
    }

    /// Most chunks queued at one worker (default 16). How many a worker really holds adapts
    /// to the measured chunk time: about 10 ms of work, so tiny tasks are pipelined deeply
    /// and long ones go one at a time (see `pool_core::Config`).
    pub fn chunks_per_worker(mut self, n: u32) -> PoolBuilder {
        self.chunks_per_worker = n;
        self
    }

    /// How long the pool may go without a serving worker, while worker starts keep failing
    /// for reasons other than the initializer, before tasks fail with [`Error::Start`]
    /// (default 10 s).
    ///
    /// A worker that cannot start (out of descriptors, memory or processes; killed before its
    /// initializer returned) is started again after a backoff (10 ms, doubling, at most 1 s),
    /// for as long as the pool lives; meanwhile the workers that serve take the work. Once no
    /// worker has served (ready, or finishing its last chunks) for `after`, and starts are
    /// still failing, the tasks waiting in the queue, the items of a `map` not yet sent, and
    /// every task submitted while that lasts fail with [`Error::Start`] (its source: the last
    /// start failure). The first worker that starts ends it; later tasks run normally. See
    /// [`PoolBuilder::initializer`] for the failures that do break a pool.
    pub fn unavailable_after(mut self, after: Duration) -> PoolBuilder {
        self.unavailable_after = Some(after);
        self
    }

    /// Starts the workers, and waits until each has been spawned (its process runs and
    /// answered the start-up handshake; its initializer may still be running). The spawns run
    /// in parallel, so this takes about one spawn.
    ///
    /// # Errors
    ///
    /// [`Error::Start`] if an initial worker cannot be spawned (the descriptor or process
    /// limit is reached, the executable cannot run, the child dies during the handshake): the
    /// source is pool-ipc's [`SpawnError`](pool_ipc::SpawnError), with the OS error below it
    /// where there is one. The workers already started are killed and reaped before `build`
    /// returns. An initializer that fails does not fail `build`: see
    /// [`PoolBuilder::initializer`]. [`Error::InvalidArgument`] for settings that make no
    /// sense.
    pub fn build(self) -> Result<Pool, Error> {
        #[cfg(feature = "cluster")]
        if self.cluster.url.is_some() {
            return self.build_cluster();
        }
        let processes = match self.processes {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let processes = u32::try_from(processes)
            .map_err(|_| Error::InvalidArgument("too many processes".into()))?;
        let mut config = Config::new(processes);
        config.max_tasks_per_child = self
            .max_tasks_per_child
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        config.chunks_per_worker = self.chunks_per_worker;
        config.task_time_limit = self.time_limit;
        if let Some(after) = self.unavailable_after {
            config.unavailable_after = after;
        }
        let sched = Scheduler::new(config, Time::ZERO)?;
        let (initializer, initializer_fds) = match self.initializer.transpose()? {
            Some((call, bytes, fds)) => (Some((call, bytes)), fds),
            None => (None, Vec::new()),
        };
        let setup = WorkerSetup {
            transport: self.transport,
            initializer,
            initializer_fds,
            handshake_timeout: self.handshake_timeout,
            time_limit: self.time_limit,
            start_method: if pool_ipc::ExitStatus::unknowable_for_children() {
                StartMethod::Forkserver
            } else {
                self.start_method
            },
        };
        let transport = self.transport;
        let handshake_timeout = self.handshake_timeout;
        let shared = Shared::start(sched, setup);
        let pool = Pool {
            backend: Backend::Local(Arc::clone(&shared)),
            processes,
            transport,
        };
        // Each spawn is bounded by the handshake timeout, and they run in parallel.
        if let Err(e) = shared.wait_booted(handshake_timeout.saturating_add(Duration::from_secs(5)))
        {
            // Kill the workers already started and wait for their exits: nothing is left.
            shared.terminate();
            let _ = shared.join();
            return Err(Error::Start(e));
        }
        Ok(pool)
    }
}

#[cfg(feature = "cluster")]
impl PoolBuilder {
    /// Makes this a *cluster* pool: its chunks go through the Redis instance at `url`
    /// (`redis://[user:password@]host:port/db`) to the worker processes of every host that
    /// serves the pool's name ([`cluster::serve`](crate::cluster::serve), `pool worker
    /// --redis URL`), on this machine or any other. The methods, their results and errors
    /// are those of a local pool; see [`crate::cluster`] for what differs (no handles in
    /// arguments, time limits counted from submission, no initializer, what a lost host
    /// means) and the security note: Redis must be private to the cluster.
    ///
    /// `processes` is then how many chunks the pool keeps in Redis at once (its window;
    /// default 16), which also sets the default chunk size as the number of workers
    /// does locally.
    pub fn redis(mut self, url: impl Into<String>) -> PoolBuilder {
        std::hint::black_box(crate::cluster::KEEP_HOOK);
        self.cluster.url = Some(url.into());
        self
    }

    /// The cluster pool's name (default `pool`): the hosts that serve this name run its
    /// chunks, and one live client holds a name at a time (a second one is refused). ASCII
    /// letters, digits, `_`, `-`, `.`.
    pub fn name(mut self, name: impl Into<String>) -> PoolBuilder {
        self.cluster.name = name.into();
        self
    }

    /// For idempotent work on a cluster pool: a chunk whose worker (or host) died after it
    /// started runs again elsewhere, up to `n` more times, instead of failing with
    /// [`Error::WorkerLost`] (default 0). Each item still has exactly one outcome.
    pub fn retries(mut self, n: u32) -> PoolBuilder {
        self.cluster.retries = n;
        self
    }

    /// How long a Redis command may take, connecting included, before the pool's calls fail
    /// with [`Error::Broker`] (default 5 s): the bound on noticing that Redis is gone.
    pub fn redis_timeout(mut self, timeout: Duration) -> PoolBuilder {
        self.cluster.timeout = timeout;
        self
    }

    /// How long a cluster pool's chunks may wait with no live host of this build serving
    /// the pool before they fail with [`Error::NoCompatibleWorker`] (default 60 s): no host
    /// started, or only hosts of another build (they leave its chunks for a host of its
    /// build). Chunks waiting for busy hosts of this build wait on.
    pub fn start_timeout(mut self, timeout: Duration) -> PoolBuilder {
        self.cluster.start_timeout = timeout;
        self
    }

    /// How long a cluster pool's keys outlive its client (default 30 s, at least 100 ms):
    /// the pool refreshes them every third of it, and a client that dies (SIGKILL, its
    /// machine gone) leaves nothing in Redis after it; its hosts go idle as its keys go.
    pub fn key_ttl(mut self, ttl: Duration) -> PoolBuilder {
        self.cluster.key_ttl = ttl;
        self
    }

    fn build_cluster(self) -> Result<Pool, Error> {
        if self.initializer.is_some() {
            return Err(Error::InvalidArgument(
                "a cluster pool has no initializer: hosts set themselves up before `serve`".into(),
            ));
        }
        if self.max_tasks_per_child.is_some() {
            return Err(Error::InvalidArgument(
                "max_tasks_per_child is the hosts' business on a cluster pool".into(),
            ));
        }
        let processes = self.processes.unwrap_or(16);
        let processes = u32::try_from(processes)
            .map_err(|_| Error::InvalidArgument("too many processes".into()))?;
        let mut config = Config::new(processes);
        // A slot of the window holds one chunk, counted as started once it is in Redis.
        config.chunks_per_worker = 1;
        config.task_time_limit = self.time_limit;
        let sched = Scheduler::new(config, Time::ZERO)?;
        let shared = cluster::ClusterShared::start(sched, &self.cluster, self.time_limit)?;
        Ok(Pool {
            backend: Backend::Cluster(shared),
            processes,
            transport: self.transport,
        })
    }
}

/// Python's `callback` and `error_callback` for [`Pool::apply_async_with`] and
/// [`Pool::map_async_with`] (and the same methods of [`ThreadPool`](crate::ThreadPool)).
pub struct Callbacks<R> {
    on_ok: Option<Box<dyn FnOnce(R) + Send>>,
    on_err: Option<Box<dyn FnOnce(Error) + Send>>,
}

/// A task's callbacks as one function of its outcome.
pub(crate) type OnOutcome<R> = Box<dyn FnOnce(Result<R, Error>) + Send>;

impl<R> std::fmt::Debug for Callbacks<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("on_ok", &self.on_ok.is_some())
            .field("on_err", &self.on_err.is_some())
            .finish()
    }
}

impl<R: 'static> Callbacks<R> {
    /// No callbacks.
    pub fn none() -> Callbacks<R> {
        Callbacks {
            on_ok: None,
            on_err: None,
        }
    }

    /// Runs `f` with the result when the task succeeds (Python's `callback`).
    pub fn on_ok(mut self, f: impl FnOnce(R) + Send + 'static) -> Callbacks<R> {
        self.on_ok = Some(Box::new(f));
        self
    }

    /// Runs `f` with the error when the task fails (Python's `error_callback`).
    pub fn on_err(mut self, f: impl FnOnce(Error) + Send + 'static) -> Callbacks<R> {
        self.on_err = Some(Box::new(f));
        self
    }

    /// Both callbacks as one function of the outcome; `None` if there are none. The thread
    /// pool calls it on its own result thread.
    pub(crate) fn into_fn(self) -> Option<OnOutcome<R>> {
        if self.on_ok.is_none() && self.on_err.is_none() {
            return None;
        }
        let Callbacks { on_ok, on_err } = self;
        Some(Box::new(move |outcome: Result<R, Error>| match outcome {
            Ok(r) => {
                if let Some(f) = on_ok {
                    f(r);
                }
            }
            Err(e) => {
                if let Some(f) = on_err {
                    f(e);
                }
            }
        }))
    }

    fn into_callback(
        self,
        outcome: impl FnOnce(&JobShared) -> Result<R, Error> + Send + 'static,
    ) -> Option<Callback> {
        let run = self.into_fn()?;
        Some(Box::new(move |job: &JobShared| run(outcome(job))))
    }
}

/// The outcome of one task of an `apply`.
fn single<R: DeserializeOwned>(job: &JobShared) -> Result<R, Error> {
    job.outcomes::<R>()
        .into_iter()
        .next()
        .unwrap_or(Err(Error::Terminated))
}

/// A map's input, of a length known in advance: as given when the iterator tells its length,
/// else read into memory first.
enum Counted<I: Iterator> {
    Told(I),
    Read(std::vec::IntoIter<I::Item>),
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        match self {
            Counted::Told(items) => items.next(),
            Counted::Read(items) => items.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        // A chunk of plain items is written in one pass when its length is known.
        match self {
            Counted::Told(items) => items.size_hint(),
            Counted::Read(items) => items.size_hint(),
        }
    }
}

/// Cancels a job whose caller stops waiting for it (a panic while reading its input, or
/// dropping an `imap` iterator), so that its undispatched work does not linger.
struct CancelOnDrop<'a> {
    backend: &'a Backend,
    job: &'a JobShared,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed && !self.job.is_finished() {
            Pool::cancel(self.backend, self.job);
        }
    }
}

/// The result of [`Pool::apply_async`]: Python's `AsyncResult`.
#[derive(Debug)]
pub struct AsyncResult<R> {
    job: Arc<JobShared>,
    backend: Backend,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the result.
    pub fn get(&self) -> Result<R, Error> {
        self.job.wait_finished(None);
        single(&self.job)
    }

    /// Waits at most `timeout`; [`Error::Timeout`] if the result is not ready (the task runs
    /// on, and a later `get` returns its result).
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, Error> {
        if !self.job.wait_finished(crate::deadline_in(timeout)) {
            return Err(Error::Timeout(timeout));
        }
        single(&self.job)
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
        if !self.ready() {
            return Err(Error::NotReady);
        }
        Ok(single::<R>(&self.job).is_ok())
    }

    /// Cancels the task if it was not dispatched to a worker yet (its result is then
    /// [`Error::Cancelled`]); whether it was. A running task is not interrupted.
    pub fn cancel(&self) -> bool {
        Pool::cancel(&self.backend, &self.job)
    }
}

/// The result of [`Pool::map_async`]: Python's `MapResult`.
#[derive(Debug)]
pub struct MapResult<R> {
    job: Arc<JobShared>,
    backend: Backend,
    _r: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> MapResult<R> {
    /// Waits for every result; on failure, the error of the lowest-index failed item.
    pub fn get(&self) -> Result<Vec<R>, Error> {
        self.job.wait_finished(None);
        self.job.first_error()
    }

    /// Waits at most `timeout`; [`Error::Timeout`] if not ready.
    pub fn get_timeout(&self, timeout: Duration) -> Result<Vec<R>, Error> {
        if !self.job.wait_finished(crate::deadline_in(timeout)) {
            return Err(Error::Timeout(timeout));
        }
        self.job.first_error()
    }

    /// Every item's own outcome, in input order (waits).
    pub fn get_results(&self) -> Vec<Result<R, Error>> {
        self.job.wait_finished(None);
        self.job.outcomes()
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

    /// Cancels the items not dispatched yet (they fail with [`Error::Cancelled`]); whether
    /// any was.
    pub fn cancel(&self) -> bool {
        Pool::cancel(&self.backend, &self.job)
    }

    /// Whether every item succeeded; [`Error::NotReady`] before it is ready.
    pub fn successful(&self) -> Result<bool, Error> {
        if !self.ready() {
            return Err(Error::NotReady);
        }
        Ok(self.job.outcomes::<R>().iter().all(Result::is_ok))
    }
}

/// The iterator of [`Pool::imap`] and [`Pool::imap_unordered`]: one `Result` per item.
///
/// Dropping it before the end cancels the work not yet dispatched.
pub struct IMap<'p, A, R> {
    pool: &'p Pool,
    job: Arc<JobShared>,
    items: Box<dyn Iterator<Item = A> + 'p>,
    ready: VecDeque<Result<R, Error>>,
    done: bool,
    /// The input failed (it panicked, or an item did not encode): reported once the results
    /// of the items before it were handed over, as Python raises it at that point.
    input_failed: Option<InputFailure>,
    /// Set by [`IMap::with_timeout`]: when the results stop being handed over.
    deadline: Option<(Instant, Duration)>,
    _r: PhantomData<fn() -> R>,
}

/// Why an `imap`'s input stopped early.
enum InputFailure {
    /// The input iterator panicked: the panic resumes in the caller, in its place.
    Panicked(Box<dyn std::any::Any + Send>),
    /// An item could not be encoded.
    Failed(Error),
}

impl<A, R> IMap<'_, A, R> {
    /// Hands results over only until `timeout` from now (Python's `Executor.map(...,
    /// timeout=)`): the results finished in time, in order, then one [`Error::Timeout`], after
    /// which the iterator ends (and its unfinished work is cancelled when it is dropped).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = pool_api::Pool::new(1)?;
    /// let got: Vec<_> = pool
    ///     .imap(nap, [0, 0, 60_000], 1)?
    ///     .with_timeout(Duration::from_secs(5))
    ///     .collect();
    /// assert!(matches!(got[..], [Ok(0), Ok(0), Err(pool_api::Error::Timeout(_))]));
    /// pool.terminate();
    /// # Ok::<(), pool_api::Error>(())
    /// ```
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.deadline = crate::deadline_in(timeout).map(|at| (at, timeout));
        self
    }
}

impl<A, R> std::fmt::Debug for IMap<'_, A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IMap")
            .field("job", &self.job)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<A: Serialize, R: DeserializeOwned + Send + 'static> Iterator for IMap<'_, A, R> {
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.done {
                return match self.input_failed.take()? {
                    InputFailure::Panicked(panic) => std::panic::resume_unwind(panic),
                    InputFailure::Failed(e) => Some(Err(e)),
                };
            }
            match self.job.next_wake(self.deadline.map(|(at, _)| at)) {
                Wake::Pull { chunk, .. } if self.input_failed.is_some() => {
                    // The input ended where it failed.
                    self.pool.backend.pulled(chunk, 0, Payload::default());
                }
                Wake::Pull { chunk, max_items } => {
                    match self.pool.feed_catching(chunk, max_items, &mut self.items) {
                        Ok(None) => {}
                        Ok(Some(panic)) => self.input_failed = Some(InputFailure::Panicked(panic)),
                        Err(e) => {
                            self.pool.backend.pulled(chunk, 0, Payload::default());
                            self.input_failed = Some(InputFailure::Failed(e));
                        }
                    }
                }
                Wake::Delivered(chunks) => {
                    let n = chunks.len() as u32;
                    for (chunk, result) in chunks {
                        let frame = result.into_outcomes(chunk.items, &mut self.ready);
                        self.pool.backend.frame_back(frame);
                    }
                    let id = self.job.id;
                    self.pool
                        .backend
                        .with_scheduler(|s, now| s.handle_consumed(id, n, now));
                }
                Wake::Finished => self.done = true,
                Wake::TimedOut => {
                    if let Some((_, timeout)) = self.deadline {
                        // The rest is cancelled when the iterator is dropped.
                        self.done = true;
                        self.input_failed = None;
                        return Some(Err(Error::Timeout(timeout)));
                    }
                }
            }
        }
    }
}

impl<A, R> Drop for IMap<'_, A, R> {
    fn drop(&mut self) {
        if !self.job.is_finished() {
            Pool::cancel(&self.pool.backend, &self.job);
        }
    }
}
