//! What a [`ThreadPool`](super::ThreadPool)'s threads, its callers and `terminate` share: the
//! pool's lifecycle, its jobs, and its rayon threads.
//!
//! Work handed to rayon cannot be taken back, yet `cancel` and `terminate` must end queued work
//! at once. So a chunk's closure first asks its [`Job`] whether it may start: a chunk that
//! `cancel` or `terminate` already ended is skipped when rayon reaches it, and a result that
//! arrives for a chunk `terminate` ended is dropped. The job, not rayon, is the record of what
//! ended and how, and every chunk ends there exactly once.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, RwLock, Weak, mpsc};
use std::thread::ThreadId;
use std::time::Instant;

use pool_core::Lifecycle;

use crate::Error;
use crate::futures::{Watcher, Watchers};
use crate::task::{Panic, panic_message};

/// One item's outcome.
pub(super) type Outcome<R> = Result<R, Error>;

/// A task function, shared by the closures of a job's chunks.
pub(super) type Task<A, R> = Arc<dyn Fn(A) -> R + Send + Sync>;

/// A callback, ready to run on the result thread.
type Thunk = Box<dyn FnOnce() + Send>;

/// Makes a finished job's callback from its outcomes (in input order). It runs on the thread
/// that finished the job, so that the callback gets its copy before a `get` takes the values.
pub(super) type Prepare<R> = Box<dyn FnOnce(&[Outcome<R>]) -> Thunk + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- panics -----

thread_local! {
    /// Set while this thread runs a task (or the initializer) under [`catch`].
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    /// The panic the hook recorded for [`catch`].
    static CAUGHT: RefCell<Option<Panic>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Chains a panic hook in front of the current one, once per process. A panic inside
/// [`catch`] is recorded (its location is only known to a hook) instead of printed: the caller
/// gets it from `get`, as a `Pool` caller does. Any other panic goes to the previous hook.
fn install_hook() {
    if std::thread::panicking() {
        // The hook cannot be changed while panicking (a pool built in a destructor during
        // unwinding): such a pool's panics just have no location.
        return;
    }
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CATCHING.try_with(Cell::get).unwrap_or(false) {
                let caught = Panic {
                    message: panic_message(info.payload()),
                    location: info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
                    backtrace: crate::task::captured_backtrace(),
                };
                let _ = CAUGHT.try_with(|c| *c.borrow_mut() = Some(caught));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic into a [`Panic`]. Its location is known unless the program
/// replaced the panic hook after the pool was built.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    CAUGHT.with(|c| c.borrow_mut().take());
    let outer = CATCHING.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    result.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| Panic {
                message: panic_message(&*payload),
                location: None,
                backtrace: None,
            })
    })
}

/// Runs a task on one item.
fn run_item<A, R>(f: &(dyn Fn(A) -> R + Send + Sync), item: A) -> Outcome<R> {
    catch(|| f(item)).map_err(|p| Error::Panicked {
        message: p.message,
        location: p.location,
        pid: std::process::id(),
        backtrace: p.backtrace,
    })
}

// ----- jobs -----

/// A job's chunk that was dispatched and has not ended.
#[derive(Clone, Copy, Debug)]
struct Pending {
    items: usize,
    started: bool,
}

struct JobState<R> {
    next_chunk: usize,
    pending: BTreeMap<usize, Pending>,
    /// Ended chunks' outcomes, in completion order, not yet taken.
    ended: VecDeque<(usize, Vec<Outcome<R>>)>,
    /// No more chunks will be added.
    sealed: bool,
    finished: bool,
    terminated: bool,
    callback: Option<Prepare<R>>,
    /// A batch job's outcomes in input order, from its end until a `get` takes them.
    outcomes: Option<Vec<Outcome<R>>>,
    /// Told once the job finishes (see `crate::futures`).
    watchers: Watchers,
    /// A finished batch job's lowest-index error, which a `get` may return again.
    first_error: Option<Error>,
}

impl<R> JobState<R> {
    /// The state of a job nothing was submitted to yet.
    fn new(callback: Option<Prepare<R>>) -> JobState<R> {
        JobState {
            next_chunk: 0,
            pending: BTreeMap::new(),
            ended: VecDeque::new(),
            sealed: false,
            finished: false,
            terminated: false,
            callback,
            outcomes: None,
            first_error: None,
            watchers: Watchers::default(),
        }
    }
}

/// One `apply`, `map`, `imap`... of a thread pool.
pub(super) struct Job<R> {
    id: u64,
    /// `apply`, `map_async`: outcomes are kept, in order, for the handle. Otherwise (`map`,
    /// `imap`) the caller takes chunks as they end.
    batch: bool,
    owner: Weak<Shared>,
    /// Set by `terminate` (after ending the chunks): a running chunk stops before its next
    /// item.
    stopped: AtomicBool,
    state: Mutex<JobState<R>>,
    cv: Condvar,
}

/// What `terminate` needs of a job, whatever its result type.
trait Terminate: Send + Sync {
    fn terminate(&self);
    fn cancel(&self) -> bool;
}

impl<R: Send + 'static> Terminate for Job<R> {
    fn terminate(&self) {
        Job::terminate(self);
    }
    fn cancel(&self) -> bool {
        Job::cancel(self)
    }
}

impl<R> std::fmt::Debug for Job<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl<R> Job<R> {
    fn lock(&self) -> MutexGuard<'_, JobState<R>> {
        lock(&self.state)
    }

    /// Adds a chunk of `items` items; `None` if the job already ended (terminated).
    pub(super) fn add_chunk(&self, items: usize) -> Option<usize> {
        let mut st = self.lock();
        if st.finished || st.sealed {
            return None;
        }
        let index = st.next_chunk;
        st.next_chunk += 1;
        st.pending.insert(
            index,
            Pending {
                items,
                started: false,
            },
        );
        Some(index)
    }

    /// Whether chunk `index` may run (it was not cancelled or terminated); marks it started.
    fn begin(&self, index: usize) -> bool {
        match self.lock().pending.get_mut(&index) {
            Some(p) if !p.started => {
                p.started = true;
                true
            }
            _ => false,
        }
    }

    /// Chunk `index` ended with `results` (fewer than its items if it stopped early: the
    /// rest are terminated). A chunk that already ended keeps its first ending.
    fn end_chunk(&self, index: usize, mut results: Vec<Outcome<R>>) {
        let mut st = self.lock();
        let Some(p) = st.pending.remove(&index) else {
            drop(st);
            // Terminated while it ran: the result is discarded (outside the lock: a value's
            // destructor is user code).
            drop(results);
            return;
        };
        results.resize_with(p.items.max(results.len()), || Err(Error::Terminated));
        st.ended.push_back((index, results));
        self.settle(st);
    }

    /// No more chunks: the job finishes when those dispatched end.
    pub(super) fn seal(&self) {
        let mut st = self.lock();
        st.sealed = true;
        self.settle(st);
    }

    /// Ends the chunks not started with [`Error::Cancelled`]; whether there was any.
    pub(super) fn cancel(&self) -> bool {
        let mut st = self.lock();
        let queued: Vec<(usize, usize)> = st
            .pending
            .iter()
            .filter(|(_, p)| !p.started)
            .map(|(i, p)| (*i, p.items))
            .collect();
        for (index, items) in &queued {
            st.pending.remove(index);
            let cancelled = (0..*items).map(|_| Err(Error::Cancelled)).collect();
            st.ended.push_back((*index, cancelled));
        }
        self.settle(st);
        !queued.is_empty()
    }

    /// The caller stops waiting for the job (an `imap` dropped before its end, a panic while
    /// reading `map`'s input): what was not started is cancelled, nothing more is added.
    pub(super) fn abandon(&self) {
        self.cancel();
        self.seal();
    }

    /// Ends every chunk that has not ended, running or not, with [`Error::Terminated`]; no
    /// callback runs.
    fn terminate(&self) {
        let mut st = self.lock();
        if st.finished {
            return;
        }
        let pending = std::mem::take(&mut st.pending);
        for (index, p) in pending {
            let terminated = (0..p.items).map(|_| Err(Error::Terminated)).collect();
            st.ended.push_back((index, terminated));
        }
        st.terminated = true;
        st.sealed = true;
        st.callback = None;
        // Under the lock, after the chunks ended: a chunk that sees `stopped` finds its
        // ending already recorded.
        self.stopped.store(true, Ordering::SeqCst);
        self.settle(st);
    }

    /// Wakes the waiters; finishes the job if it is sealed and nothing is pending.
    fn settle(&self, mut st: MutexGuard<'_, JobState<R>>) {
        let finishing = !st.finished && st.sealed && st.pending.is_empty();
        let mut thunk = None;
        let mut watchers = Vec::new();
        if finishing {
            st.finished = true;
            watchers = st.watchers.take();
            if self.batch {
                let mut chunks: Vec<_> = st.ended.drain(..).collect();
                chunks.sort_unstable_by_key(|(index, _)| *index);
                let outcomes: Vec<Outcome<R>> =
                    chunks.into_iter().flat_map(|(_, chunk)| chunk).collect();
                st.first_error = outcomes.iter().find_map(|o| o.as_ref().err().cloned());
                if let Some(prepare) = st.callback.take() {
                    // Preparing clones the values (user code): a panic there loses the
                    // callback, not the job.
                    thunk = panic::catch_unwind(AssertUnwindSafe(|| prepare(&outcomes))).ok();
                }
                st.outcomes = Some(outcomes);
            }
        }
        drop(st);
        self.cv.notify_all();
        for watcher in watchers {
            watcher.notify();
        }
        if finishing {
            if let Some(shared) = self.owner.upgrade() {
                shared.finished(self.id, thunk);
            }
        }
    }

    fn wait_until<T>(
        &self,
        deadline: Option<Instant>,
        mut ready: impl FnMut(&mut JobState<R>) -> Option<T>,
    ) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(t) = ready(&mut st) {
                return Some(t);
            }
            st = match deadline {
                None => self.cv.wait(st).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.cv
                        .wait_timeout(st, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Tells `watcher` when the job finishes: at once if it has (checked under the lock that
    /// marks it finished, so no finish is missed).
    pub(super) fn watch(&self, watcher: Watcher) {
        let mut st = self.lock();
        if st.finished {
            drop(st);
            watcher.notify();
        } else {
            st.watchers.add(watcher);
        }
    }

    /// Waits until the job is finished (or the deadline); whether it is.
    pub(super) fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        self.wait_until(deadline, |st| st.finished.then_some(()))
            .is_some()
    }

    /// Waits until `deadline` for ended chunks and takes them: `Some(None)` once the job is
    /// finished and every ended chunk was taken, `None` when the deadline passed first.
    #[allow(clippy::type_complexity)]
    pub(super) fn next_ended_until(
        &self,
        deadline: Option<Instant>,
    ) -> Option<Option<Vec<(usize, Vec<Outcome<R>>)>>> {
        self.wait_until(deadline, |st| {
            if !st.ended.is_empty() {
                Some(Some(st.ended.drain(..).collect()))
            } else if st.finished {
                Some(None)
            } else {
                None
            }
        })
    }

    pub(super) fn is_finished(&self) -> bool {
        self.lock().finished
    }

    pub(super) fn was_terminated(&self) -> bool {
        self.lock().terminated
    }

    /// A finished batch job's outcomes, taken; after they were taken, the lowest-index error
    /// again, or an error saying the values are gone.
    pub(super) fn take_outcomes(&self) -> Result<Vec<Outcome<R>>, Error> {
        let mut st = self.lock();
        match st.outcomes.take() {
            Some(outcomes) => Ok(outcomes),
            None => Err(st.first_error.clone().unwrap_or_else(|| {
                Error::InvalidArgument("the result was already taken by an earlier get".into())
            })),
        }
    }

    /// Whether a finished batch job had no error.
    pub(super) fn successful(&self) -> Result<bool, Error> {
        let st = self.lock();
        if !st.finished {
            return Err(Error::NotReady);
        }
        Ok(st.first_error.is_none())
    }
}

// ----- the pool -----

struct State {
    lifecycle: Lifecycle,
    jobs: HashMap<u64, Arc<dyn Terminate>>,
}

/// Counts the rayon threads that exited.
#[derive(Debug, Default)]
struct Exits {
    count: Mutex<usize>,
    cv: Condvar,
}

/// Everything of one thread pool.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Signalled when a job finishes or the lifecycle changes (`join` waits here).
    changed: Condvar,
    next_job: AtomicU64,
    threads: usize,
    /// Taken by `join` (the threads exit once their queued work is done) and on drop.
    rayon: RwLock<Option<rayon::ThreadPool>>,
    exits: Arc<Exits>,
    callbacks: CallbackThread,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("threads", &self.threads)
            .field("lifecycle", &lock(&self.state).lifecycle)
            .finish_non_exhaustive()
    }
}

/// The initializer of a pool's threads.
pub(super) type Initializer = Arc<dyn Fn() + Send + Sync>;

impl Shared {
    /// Starts `threads` threads and runs `initializer` in each before returning.
    pub(super) fn start(
        threads: usize,
        initializer: Option<Initializer>,
    ) -> Result<Arc<Shared>, Error> {
        install_hook();
        let exits = Arc::new(Exits::default());
        let exited = Arc::clone(&exits);
        let (init_tx, init_rx) = mpsc::channel::<Result<(), String>>();
        let mut builder = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("pool-thread-{i}"))
            // Task panics are caught per item; this is for a destructor that panics.
            .panic_handler(|payload| {
                crate::log::error!(
                    "a thread pool's job panicked outside its task: {}",
                    panic_message(&*payload)
                );
            })
            .exit_handler(move |_| {
                *lock(&exited.count) += 1;
                exited.cv.notify_all();
            });
        if let Some(init) = initializer.clone() {
            builder = builder.start_handler(move |_| {
                let _ = init_tx.send(catch(|| init()).map_err(|p| p.message));
            });
        }
        let pool = builder
            .build()
            .map_err(|e| Error::from(std::io::Error::other(e)))?;
        if initializer.is_some() {
            // Every thread runs the initializer before it takes any work: wait for them all.
            for _ in 0..threads {
                match init_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(message)) => return Err(Error::InitializerFailed(message)),
                    Err(_) => {
                        return Err(Error::InitializerFailed(
                            "a thread ended before running the initializer".into(),
                        ));
                    }
                }
            }
        }
        Ok(Arc::new(Shared {
            state: Mutex::new(State {
                lifecycle: Lifecycle::Running,
                jobs: HashMap::new(),
            }),
            changed: Condvar::new(),
            next_job: AtomicU64::new(0),
            threads,
            rayon: RwLock::new(Some(pool)),
            exits,
            callbacks: CallbackThread::start()?,
        }))
    }

    /// A new job, not yet submitted.
    pub(super) fn new_job<R>(
        self: &Arc<Shared>,
        batch: bool,
        callback: Option<Prepare<R>>,
    ) -> Arc<Job<R>> {
        Arc::new(Job {
            id: self.next_job.fetch_add(1, Ordering::Relaxed),
            batch,
            owner: Arc::downgrade(self),
            stopped: AtomicBool::new(false),
            state: Mutex::new(JobState::new(callback)),
            cv: Condvar::new(),
        })
    }

    /// Accepts `job` if the pool takes work: from now on `terminate` ends it.
    pub(super) fn submit<R: Send + 'static>(&self, job: &Arc<Job<R>>) -> Result<(), Error> {
        let mut st = lock(&self.state);
        match st.lifecycle {
            Lifecycle::Running => {
                st.jobs
                    .insert(job.id, Arc::clone(job) as Arc<dyn Terminate>);
                Ok(())
            }
            Lifecycle::Terminated => Err(Error::Terminated),
            Lifecycle::Closed | Lifecycle::Joined => Err(Error::Closed),
        }
    }

    /// Hands chunk `index` of `job` (already added) to a thread.
    pub(super) fn spawn<A, R>(&self, job: &Arc<Job<R>>, index: usize, items: Vec<A>, f: &Task<A, R>)
    where
        A: Send + 'static,
        R: Send + 'static,
    {
        let rayon = self.rayon.read().unwrap_or_else(|e| e.into_inner());
        let Some(rayon) = rayon.as_ref() else {
            drop(rayon);
            // The threads are gone (the pool was joined or dropped): nothing will run it.
            job.end_chunk(index, Vec::new());
            return;
        };
        let (job, f) = (Arc::clone(job), Arc::clone(f));
        rayon.spawn(move || {
            if !job.begin(index) {
                return;
            }
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                if job.stopped.load(Ordering::SeqCst) {
                    break;
                }
                results.push(run_item(&*f, item));
            }
            job.end_chunk(index, results);
        });
    }

    /// A job finished: it leaves the registry, and its callback (if any) is queued.
    fn finished(&self, id: u64, callback: Option<Thunk>) {
        lock(&self.state).jobs.remove(&id);
        self.changed.notify_all();
        if let Some(callback) = callback {
            self.callbacks.run(callback);
        }
    }

    pub(super) fn close(&self) {
        let mut st = lock(&self.state);
        if st.lifecycle == Lifecycle::Running {
            st.lifecycle = Lifecycle::Closed;
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Cancels what no thread started yet, in every job; whether anything was.
    pub(super) fn cancel_queued(&self) -> bool {
        let jobs: Vec<Arc<dyn Terminate>> = lock(&self.state).jobs.values().cloned().collect();
        jobs.iter().fold(false, |any, job| job.cancel() | any)
    }

    pub(super) fn terminate(&self) {
        // No callback runs for the work terminate ends, and none after it returns.
        self.callbacks.disable();
        let jobs: Vec<Arc<dyn Terminate>> = {
            let mut st = lock(&self.state);
            if matches!(st.lifecycle, Lifecycle::Running | Lifecycle::Closed) {
                st.lifecycle = Lifecycle::Terminated;
            }
            st.jobs.values().cloned().collect()
        };
        for job in jobs {
            job.terminate();
        }
        self.changed.notify_all();
    }

    pub(super) fn join(&self) -> Result<(), Error> {
        let mut st = lock(&self.state);
        match st.lifecycle {
            Lifecycle::Running => return Err(Error::StillRunning),
            Lifecycle::Joined => return Ok(()),
            Lifecycle::Closed | Lifecycle::Terminated => {}
        }
        while !st.jobs.is_empty() {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        drop(st);
        self.release_threads();
        let mut exited = lock(&self.exits.count);
        while *exited < self.threads {
            exited = self
                .exits
                .cv
                .wait(exited)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(exited);
        self.callbacks.flush();
        lock(&self.state).lifecycle = Lifecycle::Joined;
        Ok(())
    }

    pub(super) fn lifecycle(&self) -> Lifecycle {
        lock(&self.state).lifecycle
    }

    /// Lets the threads exit once their queued work is done (skipped, if it was ended).
    fn release_threads(&self) {
        let pool = self.rayon.write().unwrap_or_else(|e| e.into_inner()).take();
        drop(pool);
    }

    /// After `terminate`, on drop: the threads exit when their running tasks return, the
    /// result thread when its queue is empty.
    pub(super) fn shut_down(&self) {
        self.release_threads();
        self.callbacks.stop();
    }

    pub(super) fn threads(&self) -> usize {
        self.threads
    }
}

// ----- callbacks -----

enum Message {
    Run(Thunk),
    /// Answered once every callback queued before it has run.
    Flush(mpsc::Sender<()>),
}

/// The one thread on which a pool's callbacks run, in completion order.
#[derive(Debug)]
struct CallbackThread {
    queue: Mutex<Option<mpsc::Sender<Message>>>,
    /// Held while a callback runs, so that `terminate` can wait for it to return.
    running: Arc<Mutex<()>>,
    /// `false` once the pool was terminated: no more callbacks run.
    enabled: Arc<AtomicBool>,
    thread: ThreadId,
}

impl CallbackThread {
    fn start() -> Result<CallbackThread, Error> {
        let (tx, rx) = mpsc::channel::<Message>();
        let enabled = Arc::new(AtomicBool::new(true));
        let running = Arc::new(Mutex::new(()));
        let (gate, busy) = (Arc::clone(&enabled), Arc::clone(&running));
        let handle = std::thread::Builder::new()
            .name("pool-thread-callbacks".into())
            .spawn(move || {
                for message in rx {
                    match message {
                        Message::Run(callback) => {
                            let _running = lock(&busy);
                            if !gate.load(Ordering::SeqCst) {
                                continue;
                            }
                            if panic::catch_unwind(AssertUnwindSafe(callback)).is_err() {
                                crate::log::error!(
                                    "a result callback panicked; later callbacks still run"
                                );
                            }
                        }
                        Message::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .map_err(Error::from)?;
        Ok(CallbackThread {
            queue: Mutex::new(Some(tx)),
            running,
            enabled,
            thread: handle.thread().id(),
        })
    }

    fn on_this_thread(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    fn run(&self, callback: Thunk) {
        if let Some(queue) = &*lock(&self.queue) {
            let _ = queue.send(Message::Run(callback));
        }
    }

    /// Waits until the callbacks queued so far have run (unless asked by one of them).
    fn flush(&self) {
        if self.on_this_thread() {
            return;
        }
        let (tx, rx) = mpsc::channel();
        if let Some(queue) = &*lock(&self.queue) {
            if queue.send(Message::Flush(tx)).is_err() {
                return;
            }
        } else {
            return;
        }
        let _ = rx.recv();
    }

    /// Runs no more callbacks, and waits for a running one to return, unless it is that very
    /// callback asking (a callback may terminate its own pool).
    fn disable(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        if !self.on_this_thread() {
            drop(lock(&self.running));
        }
    }

    fn stop(&self) {
        lock(&self.queue).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job<R>(batch: bool) -> Job<R> {
        Job {
            id: 0,
            batch,
            owner: Weak::new(),
            stopped: AtomicBool::new(false),
            state: Mutex::new(JobState::new(None)),
            cv: Condvar::new(),
        }
    }

    #[test]
    fn a_chunk_ends_once_and_a_late_result_is_discarded() {
        let job = job::<u32>(true);
        let (a, b) = (job.add_chunk(2).unwrap(), job.add_chunk(1).unwrap());
        job.seal();
        assert!(job.add_chunk(1).is_none(), "sealed");
        assert!(job.begin(a));
        assert!(!job.begin(a), "started once");
        job.terminate();
        assert!(job.stopped.load(Ordering::SeqCst));
        assert!(!job.begin(b), "a terminated chunk never starts");
        job.end_chunk(a, vec![Ok(1), Ok(2)]);
        assert!(job.is_finished() && job.was_terminated());
        assert_eq!(
            job.take_outcomes().unwrap(),
            vec![Err(Error::Terminated); 3]
        );
        assert_eq!(job.take_outcomes(), Err(Error::Terminated));
        assert!(!job.cancel());
    }

    #[test]
    fn cancel_ends_only_what_did_not_start_and_short_chunks_are_padded() {
        let job = job::<u32>(true);
        let (a, b) = (job.add_chunk(3).unwrap(), job.add_chunk(1).unwrap());
        job.seal();
        assert!(job.begin(a));
        assert!(job.cancel());
        assert!(!job.is_finished(), "the running chunk has not ended");
        job.end_chunk(a, vec![Ok(5)]);
        assert!(job.is_finished());
        assert_eq!(job.successful(), Ok(false));
        assert_eq!(
            job.take_outcomes().unwrap(),
            vec![
                Ok(5),
                Err(Error::Terminated),
                Err(Error::Terminated),
                Err(Error::Cancelled)
            ]
        );
        assert!(!job.begin(b));
    }

    #[test]
    fn a_stream_job_hands_over_chunks_as_they_end() {
        let job = job::<u32>(false);
        let a = job.add_chunk(1).unwrap();
        job.end_chunk(a, vec![Ok(1)]);
        assert_eq!(
            job.next_ended_until(None),
            Some(Some(vec![(a, vec![Ok(1)])]))
        );
        assert!(!job.is_finished(), "more may come until sealed");
        job.seal();
        assert_eq!(job.next_ended_until(None), Some(None));
    }

    #[test]
    fn catch_records_message_and_location_and_restores_the_flag() {
        install_hook();
        let caught = catch(|| -> u32 { panic!("boom {}", 7) }).unwrap_err();
        assert_eq!(caught.message, "boom 7");
        assert!(caught.location.unwrap().contains("shared.rs:"));
        assert!(!CATCHING.with(Cell::get));
        assert_eq!(catch(|| 3).ok(), Some(3));
    }
}
