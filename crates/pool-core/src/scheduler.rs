//! The scheduler: the pool as a state machine over ids, events in, commands out.
//!
//! # Why chunks carry no payload
//!
//! The scheduler moves ids only: the driver keeps the encoded arguments of a chunk (keyed by
//! [`ChunkId`]) from `Pull` until `ChunkEnded`, and the results it received until it hands
//! them on. That keeps this crate free of serialization and lets a requeued chunk be sent
//! again without the scheduler ever having owned its bytes.

use core::time::Duration;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::sync::Arc;

use crate::{
    Chunk, ChunkFailure, ChunkId, ChunkOutcome, Command, Config, ConfigError, Delivery, ExitStatus,
    Input, JobId, JobSpec, Lifecycle, ProtocolViolation, StateError, SubmitError, Time, WorkerId,
    default_chunksize,
};

/// Where a worker is in its life, as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Spawn requested; not yet ready (its initializer may be running).
    Starting,
    /// Ready for chunks.
    Ready,
    /// Told to exit once its chunks are done; gets no more.
    Retiring,
    /// Being killed (terminate, time limit, failed initializer); its exit is awaited.
    Stopping,
}

/// Counters for introspection and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Workers spawned, replacements included.
    pub spawned: u64,
    /// Worker exits reported.
    pub exited: u64,
    /// Workers that exited without being asked to (crash, kill from outside, early exit).
    pub lost: u64,
    /// Kill commands issued.
    pub killed: u64,
    /// Retire commands issued.
    pub retired: u64,
    /// Chunks dispatched (a requeued chunk counts again).
    pub dispatched: u64,
    /// Chunks whose worker reported a result.
    pub finished: u64,
    /// Chunks that ended with a [`ChunkFailure`].
    pub failed: u64,
    /// Chunks that ran out of time.
    pub timed_out: u64,
    /// Chunks given back to the queue (worker lost before starting them, or recalled).
    pub requeued: u64,
    /// Worker starts that failed for a reason other than the initializer (the spawn failed,
    /// the worker died before it was ready); each is retried after a backoff.
    pub start_failures: u64,
    /// Chunks whose outcome came after more than one delivery: taken over from a host that
    /// vanished, or handed to a dead worker's replacement. Counted by a cluster driver (the
    /// scheduler never sees deliveries); always 0 on a local pool.
    pub reclaimed: u64,
    /// Of the reclaimed chunks, those that ran again to a result (a cluster pool with
    /// `retries`). Counted by a cluster driver; always 0 on a local pool.
    pub retried: u64,
}

/// The first retry of a failed start waits this long; each further failure in a row doubles
/// it, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(10);
/// The longest wait between retries of failed starts.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The wait before the next start after `streak` failed starts in a row (`streak` ≥ 1), the
/// last one of `worker`: 10 ms doubling up to 1 s, less up to a quarter of it, derived from
/// the worker's id (pool-core has no randomness: any spread that differs from one failure to
/// the next keeps pools that failed together from retrying in lockstep).
fn retry_delay(streak: u32, worker: WorkerId) -> Duration {
    let doublings = streak.saturating_sub(1).min(16);
    let base = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX);
    // Fibonacci hashing of the id: 10 well-mixed bits, 0..1024.
    let mixed = (u64::from(worker.0).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as u32;
    base - base * mixed / 4096
}

#[derive(Debug)]
struct Worker {
    state: WorkerState,
    /// Chunks sent to the worker and not ended, in dispatch order.
    window: VecDeque<Slot>,
    /// Chunks dispatched over the worker's life (what `maxtasksperchild` counts).
    dispatched: u32,
    /// Last time the worker showed progress: dispatch to an empty window, a start, a finish.
    progress_at: Time,
}

#[derive(Debug)]
struct Slot {
    chunk: Chunk,
    started_at: Option<Time>,
    time_limit: Option<Duration>,
    recalling: bool,
}

#[derive(Debug)]
enum Source {
    Single,
    Sized { total: u64, chunksize: u32 },
    Stream { chunksize: u32 },
}

#[derive(Debug)]
struct Job {
    delivery: Delivery,
    window: Option<u32>,
    time_limit: Option<Duration>,
    source: Source,
    next_index: u32,
    next_item: u64,
    input_done: bool,
    pull_pending: bool,
    /// Chunks pulled and not yet released by the consumer (bounded by `window`).
    unreleased: u32,
    /// Chunks that exist and have not ended.
    in_progress: u32,
    /// Next chunk index to deliver, for ordered delivery.
    next_delivery: u32,
    /// Ended chunks waiting for earlier ones (ordered delivery only).
    held: BTreeMap<u32, (Chunk, ChunkOutcome)>,
}

impl Job {
    /// Items the next pull asks for.
    fn next_pull_size(&self) -> u32 {
        match self.source {
            Source::Single => 0,
            Source::Sized { total, chunksize } => {
                let left = total - self.next_item;
                u32::try_from(left.min(u64::from(chunksize))).unwrap_or(chunksize)
            }
            Source::Stream { chunksize } => chunksize,
        }
    }

    fn may_pull(&self) -> bool {
        !self.input_done && !self.pull_pending && self.window.is_none_or(|w| self.unreleased < w)
    }

    fn is_done(&self) -> bool {
        self.input_done && self.in_progress == 0 && self.held.is_empty()
    }

    /// Makes the next chunk of `items` items exist.
    fn new_chunk(&mut self, job: JobId, items: u32) -> Chunk {
        let chunk = Chunk {
            id: ChunkId {
                job,
                index: self.next_index,
            },
            first_item: self.next_item,
            items,
        };
        self.next_index += 1;
        self.next_item += u64::from(items);
        self.in_progress += 1;
        chunk
    }
}

/// The pool's scheduler.
///
/// # How a driver uses it
///
/// 1. Create it with [`Scheduler::new`]; it queues one [`Command::Spawn`] per process.
/// 2. Whenever something happens, call the matching `handle_*` method (or [`Scheduler::submit`],
///    [`Scheduler::close`], [`Scheduler::terminate`], [`Scheduler::cancel`]) with the current
///    time.
/// 3. After each call, drain [`Scheduler::poll_command`] and carry the commands out in order.
///    A [`Command::Pull`] is answered right away or later with [`Scheduler::handle_pulled`].
/// 4. Wake up at [`Scheduler::poll_timeout`] and call [`Scheduler::handle_timeout`].
///
/// # What it guarantees
///
/// - Every chunk that exists ends exactly once, with a [`Command::ChunkEnded`]; a job's
///   chunks end in input order when its delivery is [`Delivery::Ordered`]; after the last,
///   [`Command::JobFinished`]. For a [`Input::Sized`] job the chunks cover every item, even
///   those never pulled (they fail on terminate or cancel).
/// - Never more than `processes` live workers. A worker is live from its `Spawn` until its
///   exit is reported, so a replacement is only spawned after the exit it replaces.
/// - A worker never holds more chunks than its window, nor gets more than
///   `max_tasks_per_child` chunks in its life; nothing is dispatched after `terminate`.
///
/// # When starts fail
///
/// An initializer that fails ([`Scheduler::handle_worker_init_failed`]) counts toward
/// [`Config::max_failed_starts`] in a row; then the pool is broken
/// ([`ChunkFailure::InitializerFailed`], [`SubmitError::InitializerFailed`]). A start that
/// fails otherwise ([`Scheduler::handle_worker_start_failed`], or an exit before the worker
/// was ready) is retried after a backoff that [`Scheduler::poll_timeout`] includes; it never
/// breaks the pool and never retires a worker. While no worker serves for longer than
/// [`Config::unavailable_after`] and starts keep failing, queued and newly submitted work fails
/// with [`ChunkFailure::StartFailed`]; the first worker ready ends that.
///
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    lifecycle: Lifecycle,
    /// Set once initializers failed `max_failed_starts` times in a row: the last message.
    broken: Option<Arc<str>>,
    /// Initializer failures since a worker was last ready.
    failed_starts: u32,
    /// Starts failed for other reasons since a worker was last ready, and the last reason.
    start_streak: u32,
    last_start_failure: Option<Arc<str>>,
    /// No worker is spawned before this time (the backoff after a failed start).
    retry_at: Option<Time>,
    /// Since when no worker has been serving (ready or retiring), if none is.
    idle_since: Option<Time>,
    /// Set while the pool is unavailable: no serving worker for longer than
    /// `unavailable_after` while starts kept failing. The last start failure's reason.
    outage: Option<Arc<str>>,
    next_worker: u32,
    next_job: u64,
    workers: BTreeMap<WorkerId, Worker>,
    jobs: BTreeMap<JobId, Job>,
    /// Chunks that exist and wait for a worker; requeued ones go to the front.
    ready: VecDeque<Chunk>,
    /// Jobs whose input is not exhausted, in submission order.
    pullable: VecDeque<JobId>,
    pulls_in_flight: u32,
    recalls_in_flight: u32,
    mean_chunk_time: Option<Duration>,
    commands: VecDeque<Command>,
    stats: Stats,
}

impl Scheduler {
    /// A scheduler for a pool with `config`, asking for its workers to be spawned.
    ///
    /// ```
    /// use pool_core::{Command, Config, Scheduler, Time};
    /// let mut s = Scheduler::new(Config::new(2), Time::ZERO).unwrap();
    /// assert!(matches!(s.poll_command(), Some(Command::Spawn { .. })));
    /// assert!(matches!(s.poll_command(), Some(Command::Spawn { .. })));
    /// assert_eq!(s.poll_command(), None);
    /// assert!(Scheduler::new(Config::new(0), Time::ZERO).is_err());
    /// ```
    pub fn new(config: Config, now: Time) -> Result<Scheduler, ConfigError> {
        config.validate()?;
        let mut scheduler = Scheduler {
            config,
            lifecycle: Lifecycle::Running,
            broken: None,
            failed_starts: 0,
            start_streak: 0,
            last_start_failure: None,
            retry_at: None,
            idle_since: None,
            outage: None,
            next_worker: 1,
            next_job: 0,
            workers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            ready: VecDeque::new(),
            pullable: VecDeque::new(),
            pulls_in_flight: 0,
            recalls_in_flight: 0,
            mean_chunk_time: None,
            commands: VecDeque::new(),
            stats: Stats::default(),
        };
        scheduler.settle(now);
        Ok(scheduler)
    }

    // ----- what the driver reads -----

    /// The next command to carry out, if any.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Scheduler::handle_timeout`] must be called next, if a deadline is pending.
    pub fn poll_timeout(&self) -> Option<Time> {
        let retry = self
            .retry_at
            .filter(|_| self.workers.len() < self.wanted_workers() as usize);
        self.workers
            .values()
            .filter_map(|w| self.deadline(w))
            .chain(retry)
            .chain(self.outage_deadline())
            .min()
    }

    /// The pool's settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the pool is in its lifecycle.
    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle {
            Lifecycle::Closed if self.workers.is_empty() && self.jobs.is_empty() => {
                Lifecycle::Joined
            }
            Lifecycle::Terminated if self.workers.is_empty() => Lifecycle::Joined,
            other => other,
        }
    }

    /// Whether `join` may wait now: an error while the pool is running (Python raises
    /// `ValueError` there). Joining is complete when [`Scheduler::lifecycle`] is `Joined`.
    pub fn check_join(&self) -> Result<(), StateError> {
        match self.lifecycle {
            Lifecycle::Running => Err(StateError::StillRunning),
            _ => Ok(()),
        }
    }

    /// The initializer failure that stopped the pool from respawning, if it happened.
    pub fn broken(&self) -> Option<&Arc<str>> {
        self.broken.as_ref()
    }

    /// While the pool is unavailable (no serving worker for longer than
    /// [`Config::unavailable_after`] while starts keep failing), the last start failure's
    /// reason: work fails with [`ChunkFailure::StartFailed`] until a worker is ready again.
    pub fn unavailable(&self) -> Option<&Arc<str>> {
        self.outage.as_ref()
    }

    /// The worker's state, if it is live.
    pub fn worker_state(&self, worker: WorkerId) -> Option<WorkerState> {
        self.workers.get(&worker).map(|w| w.state)
    }

    /// Live workers (from spawn to reported exit) and their states, by id.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, WorkerState)> + '_ {
        self.workers.iter().map(|(id, w)| (*id, w.state))
    }

    /// Number of live workers.
    pub fn live_workers(&self) -> usize {
        self.workers.len()
    }

    /// Chunks the worker holds (dispatched, not ended).
    pub fn worker_load(&self, worker: WorkerId) -> usize {
        self.workers.get(&worker).map_or(0, |w| w.window.len())
    }

    /// Jobs not yet finished.
    pub fn pending_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ----- the pool's own calls -----

    /// Submits a job. For [`Input::Single`] the job's only chunk exists at once; other inputs
    /// are pulled as workers have room.
    ///
    /// ```
    /// use pool_core::{Command, Config, JobSpec, Scheduler, SubmitError, Time};
    /// let mut s = Scheduler::new(Config::new(1), Time::ZERO).unwrap();
    /// let job = s.submit(JobSpec::single(), Time::ZERO).unwrap();
    /// s.close(Time::ZERO);
    /// assert_eq!(s.submit(JobSpec::single(), Time::ZERO), Err(SubmitError::Closed));
    /// # let _ = job;
    /// ```
    pub fn submit(&mut self, spec: JobSpec, now: Time) -> Result<JobId, SubmitError> {
        match self.lifecycle {
            Lifecycle::Running => {}
            Lifecycle::Terminated => return Err(SubmitError::Terminated),
            Lifecycle::Closed | Lifecycle::Joined => return Err(SubmitError::Closed),
        }
        if let Some(msg) = &self.broken {
            return Err(SubmitError::InitializerFailed(msg.clone()));
        }
        let source = match spec.input {
            Input::Single => Source::Single,
            Input::Sized {
                chunksize: Some(0), ..
            }
            | Input::Stream { chunksize: 0 } => {
                return Err(SubmitError::ZeroChunksize);
            }
            Input::Sized { items, chunksize } => Source::Sized {
                total: items,
                chunksize: chunksize
                    .unwrap_or_else(|| default_chunksize(items, self.config.processes).max(1)),
            },
            Input::Stream { chunksize } => Source::Stream { chunksize },
        };
        let id = JobId(self.next_job);
        self.next_job += 1;
        let mut job = Job {
            delivery: spec.delivery,
            window: spec.window.map(|w| w.get()),
            time_limit: spec.time_limit,
            input_done: matches!(source, Source::Sized { total: 0, .. }),
            source,
            next_index: 0,
            next_item: 0,
            pull_pending: false,
            unreleased: 0,
            in_progress: 0,
            next_delivery: 0,
            held: BTreeMap::new(),
        };
        if matches!(job.source, Source::Single) {
            let chunk = job.new_chunk(id, 1);
            job.input_done = true;
            self.ready.push_back(chunk);
        } else if !job.input_done {
            self.pullable.push_back(id);
        }
        self.jobs.insert(id, job);
        self.finish_job_if_done(id);
        self.settle(now);
        Ok(id)
    }

    /// The driver's answer to [`Command::Pull`]: `items` items were read (at most the
    /// `max_items` asked). Fewer than asked means the input is exhausted.
    ///
    /// Returns whether the items became a chunk. An answer for a job that was cancelled or
    /// terminated meanwhile is refused (`false`): the driver drops what it read, and those
    /// items are not tasks of the pool.
    #[must_use = "a refused pull's items must be dropped by the driver"]
    pub fn handle_pulled(&mut self, chunk: ChunkId, items: u32, now: Time) -> bool {
        let Some(job) = self.jobs.get_mut(&chunk.job) else {
            return false;
        };
        if !job.pull_pending || job.next_index != chunk.index {
            return false;
        }
        job.pull_pending = false;
        self.pulls_in_flight -= 1;
        let asked = job.next_pull_size();
        let items = items.min(asked);
        if items > 0 {
            let new = job.new_chunk(chunk.job, items);
            job.unreleased += 1;
            self.ready.push_back(new);
        }
        let exhausted = match job.source {
            Source::Sized { total, .. } => items < asked || job.next_item == total,
            _ => items < asked,
        };
        if exhausted {
            if let Source::Sized { total, .. } = &mut job.source {
                *total = job.next_item;
            }
            self.end_input(chunk.job);
        }
        self.finish_job_if_done(chunk.job);
        self.settle(now);
        items > 0
    }

    /// The consumer of a job with a [`JobSpec::window`] has taken `chunks` delivered chunks,
    /// making room for more to be pulled.
    pub fn handle_consumed(&mut self, job: JobId, chunks: u32, now: Time) {
        if let Some(job) = self.jobs.get_mut(&job) {
            job.unreleased = job.unreleased.saturating_sub(chunks);
            self.settle(now);
        }
    }

    /// Cancels the job's work that was not dispatched yet: those chunks (and, for a sized
    /// input, the items never pulled) fail with [`ChunkFailure::Cancelled`]. Dispatched chunks
    /// run on. Returns whether anything was cancelled.
    pub fn cancel(&mut self, job: JobId, now: Time) -> bool {
        if !self.jobs.contains_key(&job) {
            return false;
        }
        let mut cancelled = false;
        let mut kept = VecDeque::with_capacity(self.ready.len());
        for chunk in core::mem::take(&mut self.ready) {
            if chunk.id.job == job {
                self.end_chunk(chunk, ChunkOutcome::Failed(ChunkFailure::Cancelled));
                cancelled = true;
            } else {
                kept.push_back(chunk);
            }
        }
        self.ready = kept;
        cancelled |= self.fail_unpulled(job, &ChunkFailure::Cancelled);
        self.finish_job_if_done(job);
        self.settle(now);
        cancelled
    }

    /// Closes the pool: no more submissions; the work it has is finished, then the workers
    /// are retired. Closing twice, or after terminate, does nothing.
    pub fn close(&mut self, now: Time) {
        if self.lifecycle == Lifecycle::Running {
            self.lifecycle = Lifecycle::Closed;
        }
        self.settle(now);
    }

    /// Terminates the pool: every chunk not ended fails with [`ChunkFailure::Terminated`],
    /// every job finishes, every worker is killed. Idempotent.
    pub fn terminate(&mut self, now: Time) {
        if self.lifecycle == Lifecycle::Terminated {
            return;
        }
        self.lifecycle = Lifecycle::Terminated;
        let failure = ChunkOutcome::Failed(ChunkFailure::Terminated);
        for chunk in core::mem::take(&mut self.ready) {
            self.end_chunk(chunk, failure.clone());
        }
        let ids: alloc::vec::Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            let slots = self
                .workers
                .get_mut(&id)
                .map(|w| core::mem::take(&mut w.window));
            for slot in slots.into_iter().flatten() {
                self.end_chunk(slot.chunk, failure.clone());
            }
            self.stop_worker(id);
        }
        self.recalls_in_flight = 0;
        let jobs: alloc::vec::Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            self.fail_unpulled(job, &ChunkFailure::Terminated);
            self.finish_job_if_done(job);
        }
        self.settle(now);
    }

    // ----- what workers report -----

    /// The worker is ready (its initializer, if any, succeeded).
    pub fn handle_worker_started(
        &mut self,
        worker: WorkerId,
        now: Time,
    ) -> Result<(), ProtocolViolation> {
        let Some(w) = self.workers.get_mut(&worker) else {
            return Ok(());
        };
        match w.state {
            WorkerState::Starting => {
                w.state = WorkerState::Ready;
                w.progress_at = now;
                self.failed_starts = 0;
                self.start_streak = 0;
                self.last_start_failure = None;
                self.retry_at = None;
                self.outage = None;
            }
            WorkerState::Stopping => return Ok(()),
            WorkerState::Ready | WorkerState::Retiring => {
                return Err(ProtocolViolation::AlreadyStarted(worker));
            }
        }
        self.settle(now);
        Ok(())
    }

    /// The worker's initializer failed with `message`. The worker is killed (if it did not
    /// exit by itself) and counts as a failed start; after
    /// [`Config::max_failed_starts`] in a row, the pool stops respawning and fails its work
    /// with [`ChunkFailure::InitializerFailed`]. The worker is replaced at once.
    pub fn handle_worker_init_failed(
        &mut self,
        worker: WorkerId,
        message: &str,
        now: Time,
    ) -> Result<(), ProtocolViolation> {
        let Some(w) = self.workers.get(&worker) else {
            return Ok(());
        };
        match w.state {
            WorkerState::Starting => {}
            WorkerState::Stopping => return Ok(()),
            WorkerState::Ready | WorkerState::Retiring => {
                return Err(ProtocolViolation::AlreadyStarted(worker));
            }
        }
        self.stop_worker(worker);
        self.record_failed_start(Arc::from(message));
        self.settle(now);
        Ok(())
    }

    /// The worker started running the chunk.
    pub fn handle_chunk_started(
        &mut self,
        worker: WorkerId,
        chunk: ChunkId,
        now: Time,
    ) -> Result<(), ProtocolViolation> {
        let Some(w) = self.workers.get_mut(&worker) else {
            return Ok(());
        };
        let stopping = w.state == WorkerState::Stopping;
        let Some(slot) = w.window.iter_mut().find(|s| s.chunk.id == chunk) else {
            return if stopping {
                Ok(())
            } else {
                Err(ProtocolViolation::UnknownChunk(worker, chunk))
            };
        };
        if slot.started_at.is_some() {
            return Err(ProtocolViolation::UnknownChunk(worker, chunk));
        }
        slot.started_at = Some(now);
        if core::mem::take(&mut slot.recalling) {
            self.recalls_in_flight -= 1;
        }
        w.progress_at = now;
        Ok(())
    }

    /// The worker finished the chunk and sent its result (which the driver keeps).
    pub fn handle_chunk_finished(
        &mut self,
        worker: WorkerId,
        chunk: ChunkId,
        now: Time,
    ) -> Result<(), ProtocolViolation> {
        let slot = match self.take_slot(worker, chunk)? {
            Some(slot) => slot,
            None => return Ok(()),
        };
        if let Some(started) = slot.started_at {
            self.observe_chunk_time(now - started);
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.progress_at = now;
        }
        self.stats.finished += 1;
        self.end_chunk(slot.chunk, ChunkOutcome::Finished);
        self.settle(now);
        Ok(())
    }

    /// The worker gave back a chunk it had not started (the answer to [`Command::Recall`]).
    pub fn handle_recalled(
        &mut self,
        worker: WorkerId,
        chunk: ChunkId,
        now: Time,
    ) -> Result<(), ProtocolViolation> {
        if let Some(w) = self.workers.get(&worker) {
            if w.window
                .iter()
                .any(|s| s.chunk.id == chunk && s.started_at.is_some())
            {
                return Err(ProtocolViolation::UnknownChunk(worker, chunk));
            }
        }
        let slot = match self.take_slot(worker, chunk)? {
            Some(slot) => slot,
            None => return Ok(()),
        };
        if let Some(w) = self.workers.get_mut(&worker) {
            w.progress_at = now;
        }
        self.requeue(slot.chunk);
        self.settle(now);
        Ok(())
    }

    /// The worker could not be started: no process, or one that died before the driver got
    /// hold of it (`reason` says why). For the scheduler this is the worker's exit; unless the
    /// scheduler had asked for the worker to be killed, it is a failed start, retried after a
    /// backoff (see [`Config::unavailable_after`]). It never breaks the pool.
    ///
    /// A report for a worker that already reported ready is a violation (report its exit).
    pub fn handle_worker_start_failed(
        &mut self,
        worker: WorkerId,
        reason: &str,
        now: Time,
    ) -> Result<(), ProtocolViolation> {
        let Some(w) = self.workers.get(&worker) else {
            return Ok(());
        };
        match w.state {
            WorkerState::Starting => {
                self.workers.remove(&worker);
                self.stats.exited += 1;
                self.start_failed(worker, Arc::from(reason), now);
                self.settle(now);
                Ok(())
            }
            // Killed before it could start (terminate, a failed initializer): an exit.
            WorkerState::Stopping if w.window.is_empty() => {
                self.workers.remove(&worker);
                self.stats.exited += 1;
                self.settle(now);
                Ok(())
            }
            _ => Err(ProtocolViolation::AlreadyStarted(worker)),
        }
    }

    /// The worker's process exited. Chunks it had started fail with
    /// [`ChunkFailure::WorkerLost`]; chunks it only held go back to the queue; a replacement
    /// is spawned if the pool still needs one. A worker that exits before it was ready (killed
    /// during start-up, say) is a failed start, retried after a backoff, as
    /// [`Scheduler::handle_worker_start_failed`] says.
    pub fn handle_worker_exited(&mut self, worker: WorkerId, status: ExitStatus, now: Time) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        self.stats.exited += 1;
        match w.state {
            WorkerState::Starting => {
                self.stats.lost += 1;
                let reason = format!("{worker} exited during start-up ({status})");
                self.start_failed(worker, Arc::from(reason), now);
            }
            WorkerState::Ready => self.stats.lost += 1,
            WorkerState::Retiring if !w.window.is_empty() => self.stats.lost += 1,
            WorkerState::Retiring | WorkerState::Stopping => {}
        }
        // Requeue in reverse so that the chunks keep their order at the queue's front.
        for slot in w.window.into_iter().rev() {
            if slot.recalling {
                self.recalls_in_flight -= 1;
            }
            if slot.started_at.is_some() {
                let failure = ChunkFailure::WorkerLost { worker, status };
                self.end_chunk(slot.chunk, ChunkOutcome::Failed(failure));
            } else {
                self.requeue(slot.chunk);
            }
        }
        self.settle(now);
    }

    /// Checks deadlines: a chunk past its time limit fails with
    /// [`ChunkFailure::TimedOut`] and its worker is killed; a worker that sat on chunks past
    /// the start timeout is killed (its chunks are requeued when its exit is reported).
    pub fn handle_timeout(&mut self, now: Time) {
        let expired: alloc::vec::Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| self.deadline(w).is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            if let Some(pos) = w.window.iter().position(|s| s.started_at.is_some()) {
                let slot = w.window.remove(pos).expect("position is in the window");
                if slot.recalling {
                    self.recalls_in_flight -= 1;
                }
                self.stats.timed_out += 1;
                let failure = ChunkFailure::TimedOut { worker: id };
                self.end_chunk(slot.chunk, ChunkOutcome::Failed(failure));
            }
            self.stop_worker(id);
        }
        self.settle(now);
    }

    // ----- inside -----

    /// The worker's next deadline: its running chunk's time limit, or, if it holds chunks
    /// but runs none, the start timeout counted from its last progress.
    fn deadline(&self, w: &Worker) -> Option<Time> {
        if !matches!(w.state, WorkerState::Ready | WorkerState::Retiring) {
            return None;
        }
        match w.window.iter().find(|s| s.started_at.is_some()) {
            Some(running) => Some(running.started_at? + running.time_limit?),
            None => {
                let head = w.window.front()?;
                Some(w.progress_at + self.config.start_timeout.or(head.time_limit)?)
            }
        }
    }

    /// Removes a chunk from a worker's window. `Ok(None)`: a stale report from a worker that
    /// is gone or being killed, to ignore.
    fn take_slot(
        &mut self,
        worker: WorkerId,
        chunk: ChunkId,
    ) -> Result<Option<Slot>, ProtocolViolation> {
        let Some(w) = self.workers.get_mut(&worker) else {
            return Ok(None);
        };
        let Some(pos) = w.window.iter().position(|s| s.chunk.id == chunk) else {
            return if w.state == WorkerState::Stopping {
                Ok(None)
            } else {
                Err(ProtocolViolation::UnknownChunk(worker, chunk))
            };
        };
        let slot = w.window.remove(pos).expect("position is in the window");
        if slot.recalling {
            self.recalls_in_flight -= 1;
        }
        Ok(Some(slot))
    }

    fn observe_chunk_time(&mut self, sample: Duration) {
        self.mean_chunk_time = Some(match self.mean_chunk_time {
            None => sample,
            // An exponential moving average: recent chunks count most, one outlier little.
            Some(mean) => (mean * 7 + sample) / 8,
        });
    }

    /// A start failed for a reason other than the initializer: spawn again after a backoff.
    fn start_failed(&mut self, worker: WorkerId, reason: Arc<str>, now: Time) {
        self.stats.start_failures += 1;
        self.start_streak = self.start_streak.saturating_add(1);
        let at = now + retry_delay(self.start_streak, worker);
        self.retry_at = Some(self.retry_at.map_or(at, |t| t.max(at)));
        if self.outage.is_some() {
            self.outage = Some(reason.clone());
        }
        self.last_start_failure = Some(reason);
    }

    /// When the pool becomes unavailable if no worker is ready by then: starts keep failing
    /// and none has served since `idle_since`.
    fn outage_deadline(&self) -> Option<Time> {
        if self.outage.is_some()
            || self.start_streak == 0
            || self.lifecycle == Lifecycle::Terminated
            || self.broken.is_some()
        {
            return None;
        }
        Some(self.idle_since? + self.config.unavailable_after)
    }

    /// Tracks whether a worker serves, declares the outage when its deadline passed, and
    /// while it lasts fails the queued work and the input not yet read.
    fn watch_outage(&mut self, now: Time) {
        let serving = self
            .workers
            .values()
            .any(|w| matches!(w.state, WorkerState::Ready | WorkerState::Retiring));
        if serving {
            self.idle_since = None;
            return;
        }
        if self.idle_since.is_none() {
            self.idle_since = Some(now);
        }
        if self.outage_deadline().is_some_and(|d| d <= now) {
            self.outage = self.last_start_failure.clone();
        }
        let Some(reason) = self.outage.clone() else {
            return;
        };
        let failure = ChunkFailure::StartFailed(reason);
        for chunk in core::mem::take(&mut self.ready) {
            self.end_chunk(chunk, ChunkOutcome::Failed(failure.clone()));
        }
        let jobs: alloc::vec::Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            self.fail_unpulled(job, &failure);
            self.finish_job_if_done(job);
        }
    }

    fn record_failed_start(&mut self, message: Arc<str>) {
        self.failed_starts += 1;
        if self.failed_starts >= self.config.max_failed_starts && self.broken.is_none() {
            self.break_pool(message);
        }
    }

    /// Worker starts keep failing: stop respawning and fail every chunk not yet dispatched.
    /// Chunks already at healthy workers run on.
    fn break_pool(&mut self, message: Arc<str>) {
        self.broken = Some(message.clone());
        let failure = ChunkFailure::InitializerFailed(message);
        for chunk in core::mem::take(&mut self.ready) {
            self.end_chunk(chunk, ChunkOutcome::Failed(failure.clone()));
        }
        let jobs: alloc::vec::Vec<JobId> = self.jobs.keys().copied().collect();
        for job in jobs {
            self.fail_unpulled(job, &failure);
            self.finish_job_if_done(job);
        }
    }

    /// Ends the job's input; for a sized input, the items never pulled become chunks that
    /// fail with `failure`. Returns whether any chunk failed.
    fn fail_unpulled(&mut self, id: JobId, failure: &ChunkFailure) -> bool {
        let Some(job) = self.jobs.get_mut(&id) else {
            return false;
        };
        if job.input_done {
            return false;
        }
        if core::mem::take(&mut job.pull_pending) {
            self.pulls_in_flight -= 1;
        }
        let mut doomed = alloc::vec::Vec::new();
        if let Source::Sized { total, .. } = job.source {
            while job.next_item < total {
                let items = job.next_pull_size();
                doomed.push(job.new_chunk(id, items));
            }
        }
        self.end_input(id);
        let any = !doomed.is_empty();
        for chunk in doomed {
            self.end_chunk(chunk, ChunkOutcome::Failed(failure.clone()));
        }
        any
    }

    fn end_input(&mut self, id: JobId) {
        if let Some(job) = self.jobs.get_mut(&id) {
            job.input_done = true;
        }
        self.pullable.retain(|j| *j != id);
    }

    /// A chunk a worker will not run goes back to the queue's front, unless the pool can no
    /// longer run anything.
    fn requeue(&mut self, chunk: Chunk) {
        if let Some(msg) = &self.broken {
            let failure = ChunkFailure::InitializerFailed(msg.clone());
            self.end_chunk(chunk, ChunkOutcome::Failed(failure));
        } else if self.lifecycle == Lifecycle::Terminated {
            self.end_chunk(chunk, ChunkOutcome::Failed(ChunkFailure::Terminated));
        } else {
            self.stats.requeued += 1;
            self.ready.push_front(chunk);
        }
    }

    /// The one place a chunk ends: it is delivered now or held for ordered delivery.
    fn end_chunk(&mut self, chunk: Chunk, outcome: ChunkOutcome) {
        if matches!(outcome, ChunkOutcome::Failed(_)) {
            self.stats.failed += 1;
        }
        let Some(job) = self.jobs.get_mut(&chunk.id.job) else {
            debug_assert!(false, "a chunk ended after its job");
            return;
        };
        job.in_progress -= 1;
        match job.delivery {
            Delivery::Unordered => self
                .commands
                .push_back(Command::ChunkEnded { chunk, outcome }),
            Delivery::Ordered => {
                job.held.insert(chunk.id.index, (chunk, outcome));
                while let Some((chunk, outcome)) = job.held.remove(&job.next_delivery) {
                    job.next_delivery += 1;
                    self.commands
                        .push_back(Command::ChunkEnded { chunk, outcome });
                }
            }
        }
        self.finish_job_if_done(chunk.id.job);
    }

    fn finish_job_if_done(&mut self, id: JobId) {
        if self.jobs.get(&id).is_some_and(Job::is_done) {
            self.jobs.remove(&id);
            self.pullable.retain(|j| *j != id);
            self.commands.push_back(Command::JobFinished { job: id });
        }
    }

    fn stop_worker(&mut self, id: WorkerId) {
        if let Some(w) = self.workers.get_mut(&id) {
            if w.state != WorkerState::Stopping {
                w.state = WorkerState::Stopping;
                self.stats.killed += 1;
                self.commands.push_back(Command::Kill { worker: id });
            }
        }
    }

    /// Brings the pool to rest after any event: workers replaced, chunks dispatched, input
    /// pulled, idle workers recalled to or retired.
    fn settle(&mut self, now: Time) {
        self.spawn_missing(now);
        self.watch_outage(now);
        self.dispatch_ready(now);
        self.request_pulls();
        self.request_recalls();
        self.retire_if_drained();
    }

    fn wanted_workers(&self) -> u32 {
        if self.broken.is_some() {
            return 0;
        }
        match self.lifecycle {
            Lifecycle::Running => self.config.processes,
            Lifecycle::Closed if !self.jobs.is_empty() => self.config.processes,
            _ => 0,
        }
    }

    fn spawn_missing(&mut self, now: Time) {
        if let Some(at) = self.retry_at {
            if now < at {
                return;
            }
            self.retry_at = None;
        }
        while self.workers.len() < self.wanted_workers() as usize {
            let id = WorkerId(self.next_worker);
            self.next_worker += 1;
            self.workers.insert(
                id,
                Worker {
                    state: WorkerState::Starting,
                    window: VecDeque::new(),
                    dispatched: 0,
                    progress_at: Time::ZERO,
                },
            );
            self.stats.spawned += 1;
            self.commands.push_back(Command::Spawn { worker: id });
        }
    }

    /// Room for more chunks at the worker.
    fn capacity(&self, w: &Worker) -> u32 {
        if w.state != WorkerState::Ready {
            return 0;
        }
        let window = match self.mean_chunk_time {
            // A worker holds about `prefetch_below` of work: deep windows for tiny chunks
            // (each round trip hidden behind the chunks queued before it), two for chunks
            // near the bound, never more than `chunks_per_worker`.
            Some(mean) if mean <= self.config.prefetch_below => {
                let fits = self.config.prefetch_below.as_nanos() / mean.as_nanos().max(1);
                u32::try_from(fits)
                    .unwrap_or(u32::MAX)
                    .max(2)
                    .min(self.config.chunks_per_worker)
            }
            _ => 1,
        };
        let held = u32::try_from(w.window.len()).unwrap_or(u32::MAX);
        let room = window.saturating_sub(held);
        match self.config.max_tasks_per_child {
            Some(max) => room.min(max.saturating_sub(w.dispatched)),
            None => room,
        }
    }

    /// The least loaded worker with room (lowest id on ties, for determinism).
    fn pick_worker(&self) -> Option<WorkerId> {
        self.workers
            .iter()
            .filter(|(_, w)| self.capacity(w) > 0)
            .min_by_key(|(id, w)| (w.window.len(), **id))
            .map(|(id, _)| *id)
    }

    fn dispatch_ready(&mut self, now: Time) {
        if self.lifecycle == Lifecycle::Terminated || self.broken.is_some() {
            return;
        }
        while !self.ready.is_empty() {
            let Some(id) = self.pick_worker() else { break };
            let chunk = self.ready.pop_front().expect("checked non-empty");
            let job_limit = self.jobs.get(&chunk.id.job).and_then(|j| j.time_limit);
            let time_limit = job_limit.or(self.config.task_time_limit);
            let max_tasks = self.config.max_tasks_per_child;
            let w = self.workers.get_mut(&id).expect("picked worker exists");
            if w.window.is_empty() {
                w.progress_at = now;
            }
            w.window.push_back(Slot {
                chunk,
                started_at: None,
                time_limit,
                recalling: false,
            });
            w.dispatched += 1;
            self.stats.dispatched += 1;
            self.commands
                .push_back(Command::Dispatch { worker: id, chunk });
            if max_tasks == Some(w.dispatched) {
                w.state = WorkerState::Retiring;
                self.stats.retired += 1;
                self.commands.push_back(Command::Retire { worker: id });
            }
        }
    }

    /// Asks the driver for as many new chunks as workers have room for, beyond those already
    /// asked for, one outstanding pull per job, oldest job first. A job with nothing in
    /// progress may always ask for one chunk: otherwise a job whose pulls are answered late
    /// (an `imap` nobody iterates) could hold the whole budget and starve the others.
    fn request_pulls(&mut self) {
        if self.lifecycle == Lifecycle::Terminated || self.broken.is_some() {
            return;
        }
        let free: u32 = self.workers.values().map(|w| self.capacity(w)).sum();
        let mut wanted = free.saturating_sub(self.pulls_in_flight);
        let mut i = 0;
        while i < self.pullable.len() {
            let id = self.pullable[i];
            i += 1;
            let job = self.jobs.get_mut(&id).expect("pullable jobs exist");
            if !job.may_pull() {
                continue;
            }
            let starving = job.in_progress == 0;
            if wanted == 0 && !starving {
                continue;
            }
            job.pull_pending = true;
            self.pulls_in_flight += 1;
            wanted = wanted.saturating_sub(1);
            self.commands.push_back(Command::Pull {
                chunk: ChunkId {
                    job: id,
                    index: job.next_index,
                },
                first_item: job.next_item,
                max_items: job.next_pull_size(),
            });
        }
    }

    /// With nothing left to dispatch and a worker idle, asks busy workers to give back a
    /// chunk they hold behind a running one, so it does not wait behind a long task.
    fn request_recalls(&mut self) {
        if !self.ready.is_empty() || self.pulls_in_flight > 0 {
            return;
        }
        let idle = self
            .workers
            .values()
            .filter(|w| w.window.is_empty() && self.capacity(w) > 0)
            .count();
        let mut wanted = u32::try_from(idle)
            .unwrap_or(u32::MAX)
            .saturating_sub(self.recalls_in_flight);
        if wanted == 0 {
            return;
        }
        for (id, w) in self.workers.iter_mut() {
            if wanted == 0 {
                break;
            }
            let busy = matches!(w.state, WorkerState::Ready | WorkerState::Retiring)
                && w.window.iter().any(|s| s.started_at.is_some());
            if !busy {
                continue;
            }
            if let Some(slot) = w
                .window
                .iter_mut()
                .rev()
                .find(|s| s.started_at.is_none() && !s.recalling)
            {
                slot.recalling = true;
                self.recalls_in_flight += 1;
                wanted -= 1;
                self.commands.push_back(Command::Recall {
                    worker: *id,
                    chunk: slot.chunk.id,
                });
            }
        }
    }

    /// A closed pool with no work left, or a broken one, retires its ready workers.
    fn retire_if_drained(&mut self) {
        let drained = match self.lifecycle {
            Lifecycle::Closed => self.jobs.is_empty(),
            Lifecycle::Running => false,
            Lifecycle::Terminated | Lifecycle::Joined => false,
        };
        if !(drained || self.broken.is_some()) {
            return;
        }
        for (id, w) in self.workers.iter_mut() {
            if w.state == WorkerState::Ready {
                w.state = WorkerState::Retiring;
                self.stats.retired += 1;
                self.commands.push_back(Command::Retire { worker: *id });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Scenarios spelled out one event at a time; the property tests cover the rest.

    use super::*;
    use alloc::vec::Vec;

    const T0: Time = Time::ZERO;

    fn ms(n: u64) -> Time {
        Time::from_duration(Duration::from_millis(n))
    }

    fn drain(s: &mut Scheduler) -> Vec<Command> {
        core::iter::from_fn(|| s.poll_command()).collect()
    }

    /// A pool whose workers all reported ready.
    fn ready_pool(config: Config) -> (Scheduler, Vec<WorkerId>) {
        let mut s = Scheduler::new(config, T0).unwrap();
        let workers: Vec<WorkerId> = drain(&mut s)
            .into_iter()
            .map(|c| match c {
                Command::Spawn { worker } => worker,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        for w in &workers {
            s.handle_worker_started(*w, T0).unwrap();
        }
        (s, workers)
    }

    fn dispatched(cmds: &[Command]) -> Vec<(WorkerId, Chunk)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Dispatch { worker, chunk } => Some((*worker, *chunk)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn invalid_settings_are_typed_errors() {
        let mut c = Config::new(0);
        assert_eq!(
            Scheduler::new(c.clone(), T0).unwrap_err(),
            ConfigError::ZeroProcesses
        );
        c.processes = 2;
        c.max_tasks_per_child = Some(0);
        assert_eq!(
            Scheduler::new(c, T0).unwrap_err(),
            ConfigError::ZeroMaxTasksPerChild
        );
        let (mut s, _) = ready_pool(Config::new(2));
        let zero = JobSpec::new(
            Input::Sized {
                items: 3,
                chunksize: Some(0),
            },
            Delivery::Ordered,
        );
        assert_eq!(s.submit(zero, T0), Err(SubmitError::ZeroChunksize));
    }

    #[test]
    fn map_uses_pythons_default_chunksize_and_keeps_input_order() {
        // Python: map over 10 items with 2 workers -> chunksize ceil(10 / 8) = 2, 5 chunks.
        let (mut s, _) = ready_pool(Config::new(2));
        let job = s
            .submit(
                JobSpec::new(
                    Input::Sized {
                        items: 10,
                        chunksize: None,
                    },
                    Delivery::Ordered,
                ),
                T0,
            )
            .unwrap();
        let mut ended = Vec::new();
        for _ in 0..100 {
            let cmds = drain(&mut s);
            for cmd in &cmds {
                match *cmd {
                    Command::Pull {
                        chunk, max_items, ..
                    } => {
                        assert_eq!(max_items, 2);
                        assert!(s.handle_pulled(chunk, max_items, T0));
                    }
                    Command::ChunkEnded { chunk, .. } => ended.push(chunk.id.index),
                    _ => {}
                }
            }
            // Finish the chunks in reverse dispatch order: delivery must still be in order.
            for (w, chunk) in dispatched(&cmds).into_iter().rev() {
                s.handle_chunk_finished(w, chunk.id, T0).unwrap();
            }
            if cmds.contains(&Command::JobFinished { job }) {
                break;
            }
        }
        assert_eq!(ended, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn empty_map_finishes_at_once() {
        let (mut s, _) = ready_pool(Config::new(2));
        let spec = JobSpec::new(
            Input::Sized {
                items: 0,
                chunksize: None,
            },
            Delivery::Ordered,
        );
        let job = s.submit(spec, T0).unwrap();
        assert_eq!(drain(&mut s), [Command::JobFinished { job }]);
    }

    #[test]
    fn the_window_holds_about_prefetch_below_of_work() {
        let mut c = Config::new(1);
        c.chunks_per_worker = 16;
        c.prefetch_below = Duration::from_millis(10);
        let dispatched_after_chunks_of = |c: &Config, chunk_time: Duration| {
            let (mut s, workers) = ready_pool(c.clone());
            s.submit(JobSpec::single(), T0).unwrap();
            let (w, first) = dispatched(&drain(&mut s))[0];
            assert_eq!(w, workers[0]);
            s.handle_chunk_started(w, first.id, T0).unwrap();
            s.handle_chunk_finished(w, first.id, T0 + chunk_time)
                .unwrap();
            drain(&mut s);
            for _ in 0..32 {
                s.submit(JobSpec::single(), T0 + chunk_time).unwrap();
            }
            dispatched(&drain(&mut s)).len()
        };
        // Tiny chunks: the whole window; 2.5 ms chunks: four (10 ms of work); near the bound:
        // two; over it: one at a time.
        assert_eq!(dispatched_after_chunks_of(&c, Duration::from_micros(5)), 16);
        assert_eq!(
            dispatched_after_chunks_of(&c, Duration::from_micros(2_500)),
            4
        );
        assert_eq!(dispatched_after_chunks_of(&c, Duration::from_millis(9)), 2);
        assert_eq!(dispatched_after_chunks_of(&c, Duration::from_millis(11)), 1);
        c.chunks_per_worker = 1;
        assert_eq!(dispatched_after_chunks_of(&c, Duration::from_micros(5)), 1);
    }

    #[test]
    fn lost_worker_fails_its_running_chunk_requeues_the_rest_and_is_replaced() {
        let mut c = Config::new(2);
        c.chunks_per_worker = 2;
        c.prefetch_below = Duration::from_secs(1);
        let (mut s, workers) = ready_pool(c);
        // Measure one quick chunk so that prefetching (a window of 2) is on.
        s.submit(JobSpec::single(), T0).unwrap();
        let (w, first) = dispatched(&drain(&mut s))[0];
        s.handle_chunk_started(w, first.id, T0).unwrap();
        s.handle_chunk_finished(w, first.id, T0).unwrap();
        drain(&mut s);
        for _ in 0..4 {
            s.submit(JobSpec::single(), T0).unwrap();
        }
        let sent = dispatched(&drain(&mut s));
        assert_eq!(sent.len(), 4);
        let victim = workers[0];
        let mine: Vec<Chunk> = sent
            .iter()
            .filter(|(w, _)| *w == victim)
            .map(|(_, c)| *c)
            .collect();
        assert_eq!(mine.len(), 2, "two chunks in the victim's window");
        s.handle_chunk_started(victim, mine[0].id, T0).unwrap();
        s.handle_worker_exited(victim, ExitStatus::Signal(9), ms(1));
        let cmds = drain(&mut s);
        let lost = ChunkFailure::WorkerLost {
            worker: victim,
            status: ExitStatus::Signal(9),
        };
        assert!(cmds.contains(&Command::ChunkEnded {
            chunk: mine[0],
            outcome: ChunkOutcome::Failed(lost)
        }));
        assert!(matches!(
            cmds.last(),
            Some(Command::Spawn {
                worker: WorkerId(3)
            })
        ));
        assert_eq!(s.stats().requeued, 1);
        // The requeued chunk goes to the next worker with room once one is ready.
        s.handle_worker_started(WorkerId(3), ms(2)).unwrap();
        let resent = dispatched(&drain(&mut s));
        assert_eq!(resent, [(WorkerId(3), mine[1])]);
    }

    #[test]
    fn a_chunk_over_its_time_limit_times_out_and_its_worker_is_killed() {
        let mut c = Config::new(1);
        c.task_time_limit = Some(Duration::from_millis(100));
        let (mut s, workers) = ready_pool(c);
        s.submit(JobSpec::single(), T0).unwrap();
        let (w, chunk) = dispatched(&drain(&mut s))[0];
        s.handle_chunk_started(w, chunk.id, ms(10)).unwrap();
        assert_eq!(s.poll_timeout(), Some(ms(110)));
        s.handle_timeout(ms(109));
        assert_eq!(drain(&mut s), []);
        s.handle_timeout(ms(110));
        let failure = ChunkFailure::TimedOut { worker: workers[0] };
        assert_eq!(
            drain(&mut s)[..2],
            [
                Command::ChunkEnded {
                    chunk,
                    outcome: ChunkOutcome::Failed(failure)
                },
                Command::JobFinished { job: chunk.id.job },
            ]
        );
        assert!(s.workers().all(|(_, st)| st == WorkerState::Stopping));
        s.handle_worker_exited(w, ExitStatus::Signal(9), ms(111));
        assert_eq!(
            drain(&mut s),
            [Command::Spawn {
                worker: WorkerId(2)
            }]
        );
    }

    #[test]
    fn failing_initializer_stops_respawning_after_three_tries() {
        let mut s = Scheduler::new(Config::new(2), T0).unwrap();
        drain(&mut s);
        let job = s.submit(JobSpec::single(), T0).unwrap();
        let mut spawned = 2;
        for n in 1..=3u32 {
            let w = WorkerId(n);
            s.handle_worker_init_failed(w, "no config file", T0)
                .unwrap();
            s.handle_worker_exited(w, ExitStatus::Code(1), T0);
            spawned += drain(&mut s)
                .iter()
                .filter(|c| matches!(c, Command::Spawn { .. }))
                .count();
        }
        assert_eq!(s.broken().map(|m| &**m), Some("no config file"));
        assert_eq!(
            spawned, 4,
            "two initial workers and two replacements, then no more"
        );
        assert_eq!(
            s.submit(JobSpec::single(), T0),
            Err(SubmitError::InitializerFailed(Arc::from("no config file")))
        );
        let _ = job;
    }

    fn spawns(cmds: &[Command]) -> Vec<WorkerId> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Spawn { worker } => Some(*worker),
                _ => None,
            })
            .collect()
    }

    /// A replacement that cannot start (EMFILE) is retried after a backoff that grows and is
    /// bounded, expressed as a deadline; the pool never breaks, its healthy worker keeps
    /// serving and is never retired, and the pool is back to full strength once a start
    /// succeeds.
    #[test]
    fn failed_spawns_are_retried_with_bounded_backoff_while_the_healthy_worker_serves() {
        let (mut s, workers) = ready_pool(Config::new(2));
        s.handle_worker_exited(workers[0], ExitStatus::Signal(9), ms(0));
        let mut starting = spawns(&drain(&mut s));
        assert_eq!(starting.len(), 1);
        let mut now = ms(0);
        let mut delays = Vec::new();
        for round in 0..30u64 {
            s.handle_worker_start_failed(starting[0], "Too many open files (os error 24)", now)
                .unwrap();
            assert!(
                spawns(&drain(&mut s)).is_empty(),
                "retried before the backoff"
            );
            let at = s.poll_timeout().expect("the retry is a deadline");
            delays.push(at - now);
            // Work submitted meanwhile runs on the healthy worker.
            s.submit(JobSpec::single(), now).unwrap();
            let cmds = drain(&mut s);
            let sent = dispatched(&cmds);
            assert_eq!(sent.len(), 1, "round {round}: {cmds:?}");
            assert_eq!(sent[0].0, workers[1]);
            s.handle_chunk_started(workers[1], sent[0].1.id, now)
                .unwrap();
            s.handle_chunk_finished(workers[1], sent[0].1.id, now)
                .unwrap();
            let cmds = drain(&mut s);
            assert!(cmds.contains(&Command::ChunkEnded {
                chunk: sent[0].1,
                outcome: ChunkOutcome::Finished
            }));
            assert!(!cmds.iter().any(|c| matches!(c, Command::Retire { .. })));
            s.handle_timeout(Time::from_duration(
                at.since_epoch() - Duration::from_nanos(1),
            ));
            assert!(
                spawns(&drain(&mut s)).is_empty(),
                "retried before the backoff"
            );
            now = at;
            s.handle_timeout(now);
            starting = spawns(&drain(&mut s));
            assert_eq!(starting.len(), 1, "one retry at the deadline");
        }
        assert!(delays[0] >= Duration::from_micros(7_500) && delays[0] <= ms(10).since_epoch());
        assert!(delays[3] > delays[0] * 4, "the backoff grows: {delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(delays[29] >= Duration::from_millis(750), "{delays:?}");
        assert_eq!(s.broken(), None);
        assert_eq!(s.unavailable(), None);
        assert_eq!(s.stats().start_failures, 30);
        assert_eq!(s.stats().failed, 0);
        s.handle_worker_started(starting[0], now).unwrap();
        assert_eq!(
            s.workers()
                .filter(|(_, st)| *st == WorkerState::Ready)
                .count(),
            2
        );
        assert_eq!(s.poll_timeout(), None);
    }

    /// With no serving worker for longer than `unavailable_after` while starts keep failing,
    /// the queued work and later submissions fail with the start failure's reason; the
    /// scheduler keeps retrying and new work runs normally once a worker is ready again.
    #[test]
    fn an_outage_fails_queued_work_with_the_start_error_and_the_pool_recovers() {
        let mut c = Config::new(1);
        c.unavailable_after = Duration::from_millis(100);
        let (mut s, workers) = ready_pool(c);
        s.handle_worker_exited(workers[0], ExitStatus::Signal(9), ms(0));
        let mut starting = spawns(&drain(&mut s));
        let queued = s.submit(JobSpec::single(), ms(0)).unwrap();
        assert!(drain(&mut s).is_empty(), "nothing to dispatch to");
        let mut now = ms(0);
        let mut failed_at = None;
        for _ in 0..20 {
            s.handle_worker_start_failed(starting[0], "Cannot allocate memory", now)
                .unwrap();
            let cmds = drain(&mut s);
            let next = s.poll_timeout().expect("a deadline");
            now = next;
            s.handle_timeout(now);
            let cmds: Vec<Command> = cmds.into_iter().chain(drain(&mut s)).collect();
            if cmds.contains(&Command::JobFinished { job: queued }) {
                failed_at = Some(now);
                let failure = ChunkFailure::StartFailed(Arc::from("Cannot allocate memory"));
                assert!(
                    cmds.iter().any(|c| matches!(c,
                    Command::ChunkEnded { outcome: ChunkOutcome::Failed(f), .. } if *f == failure))
                );
            }
            starting = spawns(&cmds);
            if starting.is_empty() {
                now = s.poll_timeout().expect("the retry");
                s.handle_timeout(now);
                starting = spawns(&drain(&mut s));
            }
            assert_eq!(starting.len(), 1, "the scheduler keeps retrying");
        }
        let failed_at = failed_at.expect("the queued work failed");
        assert!(
            failed_at >= ms(100),
            "failed before the timeout: {failed_at:?}"
        );
        assert!(s.unavailable().is_some());
        assert_eq!(s.broken(), None);
        // Work submitted during the outage fails at once, with the same cause.
        let late = s.submit(JobSpec::single(), now).unwrap();
        assert!(drain(&mut s).contains(&Command::JobFinished { job: late }));
        // Resources are back: the next start succeeds and new work runs.
        s.handle_worker_started(starting[0], now).unwrap();
        assert_eq!(s.unavailable(), None);
        s.submit(JobSpec::single(), now).unwrap();
        assert_eq!(dispatched(&drain(&mut s)).len(), 1);
    }

    /// Only initializer failures count toward `max_failed_starts`; failed spawns in between
    /// neither count nor reset the count.
    #[test]
    fn initializer_failures_break_the_pool_failed_spawns_do_not() {
        let mut s = Scheduler::new(Config::new(1), T0).unwrap();
        let mut w = spawns(&drain(&mut s))[0];
        let mut now = T0;
        for n in 1..=3 {
            s.handle_worker_start_failed(w, "Resource temporarily unavailable", now)
                .unwrap();
            drain(&mut s);
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            w = spawns(&drain(&mut s))[0];
            assert_eq!(s.broken(), None);
            s.handle_worker_init_failed(w, "no config file", now)
                .unwrap();
            s.handle_worker_exited(w, ExitStatus::Code(1), now);
            let next = spawns(&drain(&mut s));
            if n < 3 {
                w = next[0];
            } else {
                assert!(next.is_empty());
            }
        }
        assert_eq!(s.broken().map(|m| &**m), Some("no config file"));
        assert_eq!(
            s.submit(JobSpec::single(), now),
            Err(SubmitError::InitializerFailed(Arc::from("no config file")))
        );
    }

    #[test]
    fn recall_moves_a_waiting_chunk_to_an_idle_worker() {
        let mut c = Config::new(2);
        c.prefetch_below = Duration::from_secs(1);
        let (mut s, workers) = ready_pool(c);
        // Warm up the chunk-time estimate, then give worker 1 two chunks and worker 2 one.
        s.submit(JobSpec::single(), T0).unwrap();
        let (w, c0) = dispatched(&drain(&mut s))[0];
        s.handle_chunk_started(w, c0.id, T0).unwrap();
        s.handle_chunk_finished(w, c0.id, T0).unwrap();
        drain(&mut s);
        for _ in 0..3 {
            s.submit(JobSpec::single(), T0).unwrap();
        }
        let sent = dispatched(&drain(&mut s));
        let (w1, w2) = (workers[0], workers[1]);
        let at_w1: Vec<Chunk> = sent
            .iter()
            .filter(|(w, _)| *w == w1)
            .map(|(_, c)| *c)
            .collect();
        let at_w2: Vec<Chunk> = sent
            .iter()
            .filter(|(w, _)| *w == w2)
            .map(|(_, c)| *c)
            .collect();
        assert_eq!((at_w1.len(), at_w2.len()), (2, 1));
        s.handle_chunk_started(w1, at_w1[0].id, T0).unwrap();
        s.handle_chunk_started(w2, at_w2[0].id, T0).unwrap();
        s.handle_chunk_finished(w2, at_w2[0].id, ms(1)).unwrap();
        let cmds = drain(&mut s);
        assert!(cmds.contains(&Command::Recall {
            worker: w1,
            chunk: at_w1[1].id
        }));
        s.handle_recalled(w1, at_w1[1].id, ms(2)).unwrap();
        assert_eq!(dispatched(&drain(&mut s)), [(w2, at_w1[1])]);
    }

    #[test]
    fn lifecycle_close_join_terminate() {
        let (mut s, workers) = ready_pool(Config::new(2));
        assert_eq!(s.check_join(), Err(StateError::StillRunning));
        s.submit(JobSpec::single(), T0).unwrap();
        let (w, chunk) = dispatched(&drain(&mut s))[0];
        s.close(T0);
        assert_eq!(s.check_join(), Ok(()));
        assert_eq!(s.lifecycle(), Lifecycle::Closed);
        // The idle worker is not retired while work is pending; both are once it drains.
        assert_eq!(drain(&mut s), []);
        s.handle_chunk_finished(w, chunk.id, T0).unwrap();
        let retired = drain(&mut s)
            .iter()
            .filter(|c| matches!(c, Command::Retire { .. }))
            .count();
        assert_eq!(retired, 2);
        for w in workers {
            s.handle_worker_exited(w, ExitStatus::Code(0), T0);
        }
        assert_eq!(s.lifecycle(), Lifecycle::Joined);
        assert_eq!(s.stats().lost, 0);
        s.terminate(T0);
        assert_eq!(
            s.submit(JobSpec::single(), T0),
            Err(SubmitError::Terminated)
        );
    }

    #[test]
    fn terminate_fails_pending_work_and_never_dispatches_again() {
        let (mut s, workers) = ready_pool(Config::new(1));
        let spec = JobSpec::new(
            Input::Sized {
                items: 1000,
                chunksize: Some(1),
            },
            Delivery::Ordered,
        );
        let job = s.submit(spec, T0).unwrap();
        let Some(Command::Pull { chunk, .. }) = s.poll_command() else {
            panic!()
        };
        assert!(s.handle_pulled(chunk, 1, T0));
        drain(&mut s);
        s.terminate(T0);
        let cmds = drain(&mut s);
        let failed = cmds
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::ChunkEnded {
                        outcome: ChunkOutcome::Failed(ChunkFailure::Terminated),
                        ..
                    }
                )
            })
            .count();
        assert_eq!(failed, 1000, "every item, pulled or not, ends once");
        assert!(cmds.contains(&Command::JobFinished { job }));
        assert!(cmds.contains(&Command::Kill { worker: workers[0] }));
        assert!(dispatched(&cmds).is_empty());
        s.handle_worker_exited(workers[0], ExitStatus::Signal(15), T0);
        assert_eq!(drain(&mut s), []);
        assert_eq!(s.lifecycle(), Lifecycle::Joined);
    }

    #[test]
    fn a_report_for_a_chunk_the_worker_does_not_hold_is_a_violation() {
        let (mut s, workers) = ready_pool(Config::new(1));
        let bogus = ChunkId {
            job: JobId(7),
            index: 0,
        };
        assert_eq!(
            s.handle_chunk_finished(workers[0], bogus, T0),
            Err(ProtocolViolation::UnknownChunk(workers[0], bogus))
        );
        assert_eq!(
            s.handle_worker_started(workers[0], T0),
            Err(ProtocolViolation::AlreadyStarted(workers[0]))
        );
    }
}
