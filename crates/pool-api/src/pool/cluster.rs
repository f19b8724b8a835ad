//! The cluster driver: carries out the scheduler's commands through Redis Streams
//! (pool-cluster's [`Broker`]) instead of with worker processes of its own.
//!
//! The scheduler is the local pool's, unchanged: its "workers" are the slots of the pool's
//! window of chunks in Redis (*virtual workers*). `Spawn` makes a slot ready at once;
//! `Dispatch` submits the chunk (its `Call` and encoded arguments) to Redis and counts it as
//! started at once (a slot holds one chunk: `chunks_per_worker` is 1), so time limits count
//! from the submission; a [`Completion`] read from Redis is the slot's `handle_chunk_finished`
//! with the chunk's result, or with the error its outcome maps to; `Retire` ends a slot at
//! once; `Kill` (a time limit, `terminate`) forgets the slot's chunk in Redis (deleted if no
//! host took it yet, its late outcome dropped) and ends the slot, which the scheduler then
//! fails with `TimedOut` or `Terminated` and replaces. Chunk sizes, the order of `map` and
//! `imap`, the window of an endless `imap`, cancel, close and terminate are the scheduler's,
//! as for a local pool.
//!
//! Submitting: a dispatched chunk goes into the pool's *outbox* (under the state lock), and
//! the outbox is sent by one drainer at a time, every chunk it holds in one pipeline of
//! `XADD`s (one round trip: `Broker::submit_many`). A chunk dispatched while nothing else is
//! in Redis or queued (a lone `apply`) is sent at once by the thread that dispatched it, after
//! the state lock is released: no added latency. Otherwise (chunks in flight, a burst of
//! `apply_async`, the pump refilling the window) the *submitter* thread is woken to send it,
//! with whatever else was queued meanwhile, so that a burst shares round trips and the pump
//! never waits on an `XADD`. A chunk killed (time limit, `terminate`) while still in the
//! outbox is taken out of it and never sent; one killed while its batch is under way is
//! deleted from the stream once its entry id is known (`Broker::submit_many`), and
//! `terminate` waits for a batch under way, so that nothing is sent after it returns.
//!
//! Threads: one *pump* thread per pool waits for outcomes (a blocking `XREAD` on the
//! broker's receiving connection, up to 128 entries a read), for the scheduler's deadlines,
//! and beats the keys' heartbeat while idle; one submitter thread; one callback runner, as
//! locally.
//!
//! Outcomes map to the local pool's errors: values and per-item panics come in the chunk's
//! result bytes ([`Error::Panicked`] with the remote worker's pid); a worker or host lost
//! after it started the chunk is [`Error::WorkerLost`] (pid 0: the pid is on another host;
//! exit code -9), and so is a *poisoned* chunk (its every try killed its worker, with
//! `retries`); a Redis that fails is [`Error::Broker`] for the chunks it held.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use pool_cluster::{
    Broker, BrokerOptions, Completion, Outcome, RecvError, Submission, SubmitError, Timeouts,
};
use pool_core::{
    ChunkFailure, ChunkId, ChunkOutcome, Command, ExitStatus, JobId, JobSpec, Lifecycle, Scheduler,
    Stats, Time, WorkerId,
};

use super::callbacks::CallbackRunner;
use super::job::{Callback, JobShared, Source};
use super::payload::{ChunkResult, Payload, SpareBuffers};
use crate::Error;
use crate::error::CodecError;
use crate::task::Call;

/// The cluster settings of a [`PoolBuilder`](crate::PoolBuilder).
#[derive(Clone, Debug)]
pub(crate) struct ClusterSettings {
    pub(crate) url: Option<String>,
    pub(crate) name: String,
    pub(crate) retries: u32,
    pub(crate) timeout: Duration,
    pub(crate) start_timeout: Duration,
    /// The keys' TTL: a client that dies leaves nothing in Redis after it.
    pub(crate) key_ttl: Duration,
}

impl Default for ClusterSettings {
    fn default() -> ClusterSettings {
        ClusterSettings {
            url: None,
            name: "pool".into(),
            retries: 0,
            timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(60),
            key_ttl: Duration::from_secs(30),
        }
    }
}

/// How long the pump waits at most before it looks at its deadlines and the stop flag.
const PUMP_TICK: Duration = Duration::from_millis(100);

/// Everything a cluster pool's threads share.
pub(crate) struct ClusterShared {
    state: Mutex<State>,
    epoch: Instant,
    broker: Broker,
    /// The pump waits here when nothing is in Redis.
    pump: Condvar,
    /// `join` waits here.
    joined: Condvar,
    callbacks: CallbackRunner,
    spare: SpareBuffers,
    time_limit: Option<Duration>,
    stopped: AtomicBool,
    /// Chunks dispatched and not yet sent to Redis (locked after `state`, never before).
    outbox: Mutex<Outbox>,
    /// The submitter thread waits here for chunks to send.
    outbox_ready: Condvar,
    /// `terminate` waits here for a batch under way.
    outbox_idle: Condvar,
    /// This build's fingerprint, as hosts announce theirs.
    fingerprint: String,
    start_timeout: Duration,
    key_ttl: Duration,
    /// Since when chunks have waited with no live host of this build (the pump's).
    no_host: Mutex<HostWatch>,
}

/// The pump's watch for a live host of this build.
struct HostWatch {
    /// When chunks were first seen waiting with no live host of this build.
    since: Option<Instant>,
    next_check: Instant,
}

/// Chunks dispatched and not yet sent, and whether a drainer is sending a batch.
#[derive(Default)]
struct Outbox {
    queue: VecDeque<(ChunkId, Call, Payload)>,
    draining: bool,
    /// The chunks of the batch under way.
    in_flight: Vec<ChunkId>,
    /// Those of them killed meanwhile: forgotten by the drainer once the batch is in.
    killed: Vec<ChunkId>,
    submitter_asleep: bool,
}

thread_local! {
    /// This thread is sending a batch (so `terminate` on it does not wait for itself).
    static DRAINING: Cell<bool> = const { Cell::new(false) };
}

impl std::fmt::Debug for ClusterShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterShared")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

struct State {
    sched: Scheduler,
    jobs: HashMap<JobId, Arc<JobShared>>,
    /// Encoded arguments of chunks, from pull to end.
    payloads: HashMap<ChunkId, Payload>,
    /// Results received, until the scheduler delivers the chunk.
    results: HashMap<ChunkId, ChunkResult>,
    /// The slot each chunk in Redis was dispatched from.
    slots: HashMap<ChunkId, WorkerId>,
    /// Why the pool's keys are gone, once they are: every later chunk fails with it.
    lost: Option<Arc<dyn std::error::Error + Send + Sync>>,
    reclaimed: u64,
    retried: u64,
}

/// What draining commands asks to be done once the state lock is released.
#[derive(Default)]
struct Effects {
    /// Chunks were put in the outbox.
    queued: bool,
    /// And nothing else is in Redis or queued: the outbox may be sent by this thread at once.
    at_once: bool,
    forget: Vec<ChunkId>,
    wake: Vec<Arc<JobShared>>,
    finished: Vec<(Arc<JobShared>, Option<Callback>)>,
}

impl ClusterShared {
    /// Connects to Redis (the pool's keys are set up) and starts the pump.
    pub(crate) fn start(
        sched: Scheduler,
        settings: &ClusterSettings,
        time_limit: Option<Duration>,
    ) -> Result<Arc<ClusterShared>, Error> {
        let url = settings.url.as_deref().unwrap_or_default();
        let fingerprint = crate::cluster::fingerprint()?;
        let window = sched.config().processes as usize;
        let options = BrokerOptions::new(&settings.name, fingerprint)
            // Forgotten chunks leave the window at once; slack for outcomes in flight.
            .window(window.saturating_mul(2).max(window + 16))
            .tries(settings.retries.saturating_add(1))
            .ttl(settings.key_ttl)
            .timeouts(Timeouts {
                connect: settings.timeout,
                io: settings.timeout,
            });
        let broker = Broker::connect(url, options).map_err(broker_error)?;
        let shared = Arc::new(ClusterShared {
            state: Mutex::new(State {
                sched,
                jobs: HashMap::new(),
                payloads: HashMap::new(),
                results: HashMap::new(),
                slots: HashMap::new(),
                lost: None,
                reclaimed: 0,
                retried: 0,
            }),
            epoch: Instant::now(),
            broker,
            pump: Condvar::new(),
            joined: Condvar::new(),
            callbacks: CallbackRunner::start(),
            spare: SpareBuffers::default(),
            time_limit,
            stopped: AtomicBool::new(false),
            outbox: Mutex::new(Outbox::default()),
            outbox_ready: Condvar::new(),
            outbox_idle: Condvar::new(),
            fingerprint: fingerprint.to_string(),
            start_timeout: settings.start_timeout,
            key_ttl: settings.key_ttl.max(Duration::from_millis(100)),
            no_host: Mutex::new(HostWatch {
                since: None,
                next_check: Instant::now(),
            }),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("pool-cluster-pump".into())
            .spawn(move || pump(weak))
            .map_err(Error::from)?;
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("pool-cluster-submit".into())
            .spawn(move || submitter(weak))
            .map_err(Error::from)?;
        // The initial slots.
        shared.with_scheduler(|_, _| ());
        Ok(shared)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Time {
        Time::from_duration(self.epoch.elapsed())
    }

    pub(crate) fn with_scheduler<T>(&self, f: impl FnOnce(&mut Scheduler, Time) -> T) -> T {
        let mut state = self.lock();
        let now = self.now();
        let out = f(&mut state.sched, now);
        self.drain_and_apply(state);
        out
    }

    pub(crate) fn submit(
        &self,
        spec: JobSpec,
        call: Call,
        source: Source,
        callback: Option<Callback>,
        awaited: bool,
    ) -> Result<Arc<JobShared>, Error> {
        let mut state = self.lock();
        let now = self.now();
        let single = matches!(source, Source::Single(_));
        let job_id = state.sched.submit(spec, now)?;
        let job = JobShared::new(job_id, call, source, callback, self.time_limit, awaited);
        job.awaited.store(false, Ordering::Relaxed);
        if single {
            if let Some(payload) = job.take_single() {
                state.payloads.insert(
                    ChunkId {
                        job: job_id,
                        index: 0,
                    },
                    payload,
                );
            }
        }
        state.jobs.insert(job_id, job.clone());
        self.drain_and_apply(state);
        Ok(job)
    }

    pub(crate) fn pulled(&self, chunk: ChunkId, items: u32, payload: Payload) {
        let mut state = self.lock();
        let now = self.now();
        if items > 0 {
            state.payloads.insert(chunk, payload);
        }
        if !state.sched.handle_pulled(chunk, items, now) {
            state.payloads.remove(&chunk);
        }
        self.drain_and_apply(state);
    }

    pub(crate) fn spare(&self) -> &SpareBuffers {
        &self.spare
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.lock().sched.lifecycle()
    }

    pub(crate) fn cancel_queued(&self) -> bool {
        let ids: Vec<JobId> = self.lock().jobs.keys().copied().collect();
        ids.into_iter().fold(false, |any, id| {
            self.with_scheduler(|s, now| s.cancel(id, now)) | any
        })
    }

    /// The scheduler's counters, with the chunks this pool saw reclaimed and retried.
    pub(crate) fn stats(&self) -> Stats {
        let state = self.lock();
        let mut stats = state.sched.stats();
        stats.reclaimed = state.reclaimed;
        stats.retried = state.retried;
        stats
    }

    pub(crate) fn terminate(&self) {
        self.callbacks.disable();
        self.with_scheduler(|s, now| s.terminate(now));
        // The chunks killed were taken out of the outbox; a batch under way deletes those of
        // its chunks that were killed meanwhile: once it ends, nothing more is sent.
        self.wait_outbox_idle();
        self.callbacks.wait_running();
    }

    /// Waits until no batch is being sent (unless this thread is sending one).
    fn wait_outbox_idle(&self) {
        if DRAINING.with(Cell::get) {
            return;
        }
        let mut outbox = self.lock_outbox();
        while outbox.draining {
            outbox = self
                .outbox_idle
                .wait(outbox)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn lock_outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn join(&self) -> Result<(), Error> {
        let mut state = self.lock();
        state.sched.check_join().map_err(|_| Error::StillRunning)?;
        while state.sched.lifecycle() != Lifecycle::Joined {
            state = self.joined.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        self.callbacks.wait_idle();
        Ok(())
    }

    /// Stops the pump and deletes the pool's keys (hosts go idle at once).
    pub(crate) fn shut_down(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        self.pump.notify_all();
        drop(self.lock_outbox());
        self.outbox_ready.notify_all();
        self.callbacks.stop();
        if self.lock().lost.is_none() {
            if let Err(e) = self.broker.close() {
                crate::log::warning!(error = %e, "could not delete the cluster pool's keys; they expire");
            }
        }
    }

    /// Drains the scheduler's commands, releases the lock and carries out their effects;
    /// chunks put in the outbox are sent at once by this thread when nothing else is in
    /// Redis, else by the submitter thread.
    fn drain_and_apply<'a>(&'a self, mut state: MutexGuard<'a, State>) {
        let fx = self.drain(&mut state);
        drop(state);
        let (queued, at_once) = (fx.queued, fx.at_once);
        self.apply(fx);
        if at_once {
            self.send_batch();
        } else if queued {
            self.wake_submitter();
        }
    }

    /// Wakes the submitter thread if it sleeps (no futex call for a submitter awake).
    fn wake_submitter(&self) {
        let asleep = self.lock_outbox().submitter_asleep;
        if asleep {
            self.outbox_ready.notify_one();
        }
    }

    /// Sends what the outbox holds in one round trip, unless a batch is under way (its
    /// drainer sees what was queued meanwhile). Returns whether it sent one. What is queued
    /// after the batch was taken is left to the submitter thread, woken for it.
    fn send_batch(&self) -> bool {
        let batch = {
            let mut outbox = self.lock_outbox();
            if outbox.draining || outbox.queue.is_empty() {
                return false;
            }
            outbox.draining = true;
            let batch = std::mem::take(&mut outbox.queue);
            outbox.in_flight = batch.iter().map(|(id, _, _)| *id).collect();
            batch
        };
        DRAINING.with(|d| d.set(true));
        let failed = self.send(batch);
        let killed = {
            let mut outbox = self.lock_outbox();
            outbox.in_flight.clear();
            std::mem::take(&mut outbox.killed)
        };
        for id in killed {
            if let Err(e) = self.broker.forget(id.job.0, id.index) {
                crate::log::warning!(error = %e, "could not delete a forgotten chunk from Redis");
            }
        }
        DRAINING.with(|d| d.set(false));
        let more = {
            let mut outbox = self.lock_outbox();
            outbox.draining = false;
            self.outbox_idle.notify_all();
            !outbox.queue.is_empty() && outbox.submitter_asleep
        };
        if more {
            self.outbox_ready.notify_one();
        }
        if !failed.is_empty() {
            // Failed chunks end with the error; the scheduler may dispatch more, which are
            // queued (the submitter thread, or this thread's caller, sends them).
            let mut state = self.lock();
            let now = self.now();
            for (id, error) in failed {
                if error.lost {
                    state.lost.get_or_insert_with(|| Arc::clone(&error.error));
                }
                Self::finished(
                    &mut state,
                    id,
                    ChunkResult::Failed(Error::Broker(error.error)),
                    now,
                );
            }
            let fx = self.drain(&mut state);
            drop(state);
            let queued = fx.queued;
            self.apply(fx);
            if queued {
                self.wake_submitter();
            }
        }
        true
    }

    /// One pipeline of the batch's `XADD`s; the chunks that failed, with why.
    fn send(&self, batch: VecDeque<(ChunkId, Call, Payload)>) -> Vec<(ChunkId, Failed)> {
        let mut failed = Vec::new();
        let mut calls: Vec<(ChunkId, Vec<u8>, &Payload)> = Vec::with_capacity(batch.len());
        for (id, call, body) in &batch {
            match postcard::to_stdvec(call) {
                Ok(bytes) => calls.push((*id, bytes, body)),
                Err(e) => failed.push((
                    *id,
                    Failed {
                        error: Arc::new(e),
                        lost: false,
                    },
                )),
            }
        }
        if calls.is_empty() {
            return failed;
        }
        let chunks: Vec<Submission<'_>> = calls
            .iter()
            .map(|(id, call, body)| Submission {
                job: id.job.0,
                index: id.index,
                call,
                payload: &body.bytes,
            })
            .collect();
        let answers = self.broker.submit_many(&chunks);
        match answers {
            Ok(answers) => {
                for ((id, _, _), answer) in calls.iter().zip(answers) {
                    if let Err(e) = answer {
                        crate::log::warning!(error = %e, "a chunk could not be submitted to Redis");
                        let lost = matches!(e, SubmitError::Lost);
                        failed.push((
                            *id,
                            Failed {
                                error: Arc::new(e),
                                lost,
                            },
                        ));
                    }
                }
            }
            Err(e) => {
                crate::log::warning!(error = %e, chunks = calls.len(), "chunks could not be submitted to Redis");
                let lost = matches!(e, SubmitError::Lost);
                let error: Arc<dyn std::error::Error + Send + Sync> = Arc::new(e);
                for (id, _, _) in &calls {
                    failed.push((
                        *id,
                        Failed {
                            error: Arc::clone(&error),
                            lost,
                        },
                    ));
                }
            }
        }
        failed
    }

    fn drain(&self, state: &mut State) -> Effects {
        let mut fx = Effects::default();
        let now = self.now();
        while let Some(cmd) = state.sched.poll_command() {
            match cmd {
                Command::Spawn { worker } => {
                    let _ = state.sched.handle_worker_started(worker, now);
                }
                Command::Pull {
                    chunk,
                    first_item: _,
                    max_items,
                } => {
                    let Some(job) = state.jobs.get(&chunk.job).cloned() else {
                        continue;
                    };
                    match job.pull_now(max_items) {
                        Some((items, payload)) => {
                            if items > 0 {
                                state.payloads.insert(chunk, payload);
                            }
                            if !state.sched.handle_pulled(chunk, items, now) {
                                state.payloads.remove(&chunk);
                            }
                        }
                        None => {
                            job.request_pull(chunk, max_items);
                            fx.wake.push(job);
                        }
                    }
                }
                Command::Dispatch { worker, chunk } => {
                    let _ = state.sched.handle_chunk_started(worker, chunk.id, now);
                    state.slots.insert(chunk.id, worker);
                    let body = state.payloads.get(&chunk.id).cloned();
                    let call = state.jobs.get(&chunk.id.job).map(|j| j.call);
                    match (&state.lost, call, body) {
                        (None, Some(call), Some(body)) => {
                            self.lock_outbox().queue.push_back((chunk.id, call, body));
                            fx.queued = true;
                        }
                        (Some(lost), _, _) => {
                            let error = Error::Broker(Arc::clone(lost));
                            Self::finished(state, chunk.id, ChunkResult::Failed(error), now);
                        }
                        _ => {
                            let error = Error::Codec(CodecError::new("a chunk without its job"));
                            Self::finished(state, chunk.id, ChunkResult::Failed(error), now);
                        }
                    }
                }
                Command::Recall { .. } => {}
                Command::Retire { worker } => {
                    state
                        .sched
                        .handle_worker_exited(worker, ExitStatus::Code(0), now);
                }
                Command::Kill { worker } => {
                    let held: Vec<ChunkId> = state
                        .slots
                        .iter()
                        .filter(|(_, w)| **w == worker)
                        .map(|(id, _)| *id)
                        .collect();
                    for id in held {
                        state.slots.remove(&id);
                        self.withdraw(id, &mut fx);
                    }
                    state
                        .sched
                        .handle_worker_exited(worker, ExitStatus::Signal(9), now);
                }
                Command::ChunkEnded { chunk, outcome } => {
                    if let Some(payload) = state.payloads.remove(&chunk.id) {
                        self.spare.give_back(payload);
                    }
                    if state.slots.remove(&chunk.id).is_some() {
                        // Ended without its outcome (terminate ends chunks before it kills
                        // their slots): nobody waits for it any more.
                        self.withdraw(chunk.id, &mut fx);
                    }
                    let result = match outcome {
                        ChunkOutcome::Finished => {
                            state
                                .results
                                .remove(&chunk.id)
                                .unwrap_or(ChunkResult::Failed(Error::Codec(CodecError::new(
                                    "a finished chunk without its result",
                                ))))
                        }
                        ChunkOutcome::Failed(failure) => {
                            ChunkResult::Failed(self.failure(&failure))
                        }
                    };
                    if let Some(job) = state.jobs.get(&chunk.id.job) {
                        job.deliver(chunk, result);
                        fx.wake.push(job.clone());
                    }
                }
                Command::JobFinished { job } => {
                    if let Some(job) = state.jobs.remove(&job) {
                        job.finish();
                        let callback = job.take_callback();
                        if callback.is_some() {
                            self.callbacks.expect_one();
                        }
                        fx.finished.push((job, callback));
                    }
                }
            }
        }
        if fx.queued {
            // Nothing else in Redis or queued: this thread may send at once.
            fx.at_once = state.slots.len() == self.lock_outbox().queue.len();
        }
        // The pump sleeps toward the next deadline, or until chunks are in Redis.
        if state.sched.poll_timeout().is_some() || fx.queued {
            self.pump.notify_all();
        }
        if state.sched.lifecycle() == Lifecycle::Joined {
            self.joined.notify_all();
        }
        fx
    }

    /// A chunk whose outcome nobody waits for any more: still in the outbox, it is taken out
    /// and never sent; in the batch under way, its drainer forgets it once it is in; else
    /// it is forgotten in Redis (deleted if no host took it, its late outcome dropped).
    fn withdraw(&self, id: ChunkId, fx: &mut Effects) {
        let mut outbox = self.lock_outbox();
        let before = outbox.queue.len();
        outbox.queue.retain(|(queued, _, _)| *queued != id);
        if outbox.queue.len() < before {
            return;
        }
        if outbox.in_flight.contains(&id) {
            outbox.killed.push(id);
        } else {
            fx.forget.push(id);
        }
    }

    fn failure(&self, failure: &ChunkFailure) -> Error {
        match failure {
            // Slots end only when the driver says so: a `Kill` (time limit, terminate).
            ChunkFailure::WorkerLost { .. } => Error::WorkerLost {
                pid: 0,
                exitcode: -9,
            },
            ChunkFailure::TimedOut { .. } => Error::TimedOut {
                pid: 0,
                limit: self.time_limit.unwrap_or_default(),
            },
            ChunkFailure::Terminated => Error::Terminated,
            ChunkFailure::Cancelled => Error::Cancelled,
            ChunkFailure::InitializerFailed(m) => Error::InitializerFailed(m.to_string()),
            other => Error::from(std::io::Error::other(other.to_string())),
        }
    }

    /// A chunk's outcome is known: keep it for delivery and tell the scheduler.
    fn finished(state: &mut State, id: ChunkId, result: ChunkResult, now: Time) {
        let Some(worker) = state.slots.remove(&id) else {
            // Forgotten (timed out, terminated): its late outcome is dropped.
            return;
        };
        state.results.insert(id, result);
        let _ = state.sched.handle_chunk_finished(worker, id, now);
        if !state.payloads.contains_key(&id) {
            state.results.remove(&id);
        }
    }

    /// Carries out effects outside the state lock (sending the outbox aside).
    fn apply(&self, fx: Effects) {
        for id in fx.forget {
            if let Err(e) = self.broker.forget(id.job.0, id.index) {
                crate::log::warning!(error = %e, "could not delete a forgotten chunk from Redis");
            }
        }
        for job in dedup(fx.wake) {
            job.wake();
        }
        for (job, callback) in fx.finished {
            job.wake();
            if let Some(callback) = callback {
                self.callbacks.run(job, callback);
            }
        }
    }

    /// Outcomes read from Redis (those of one read), handed to the scheduler under one lock
    /// and followed by one drain.
    fn on_completions(&self, completions: Vec<Completion>) {
        let results: Vec<_> = completions.into_iter().map(Self::chunk_result).collect();
        let mut state = self.lock();
        let now = self.now();
        for (id, reclaimed, result) in results {
            if reclaimed && state.slots.contains_key(&id) {
                state.reclaimed += 1;
                if matches!(result, ChunkResult::Bytes { .. }) {
                    state.retried += 1;
                }
            }
            Self::finished(&mut state, id, result, now);
        }
        self.drain_and_apply(state);
    }

    /// A completion's chunk, whether it was reclaimed from another host, and its result.
    fn chunk_result(completion: Completion) -> (ChunkId, bool, ChunkResult) {
        let id = ChunkId {
            job: JobId(completion.job),
            index: completion.index,
        };
        // Taken over from a host that vanished: delivered again, or ended as lost by another
        // host's worker (a dead worker's own supervisor settles its chunks otherwise).
        let lost = matches!(
            completion.outcome,
            Outcome::WorkerLost | Outcome::Poisoned { .. }
        );
        let reclaimed =
            completion.deliveries > 1 || (lost && !completion.consumer.ends_with("/supervisor"));
        let result = match completion.outcome {
            Outcome::Ok(mut bytes) => match split_pid(&mut bytes) {
                Some(pid) => ChunkResult::Bytes {
                    frame: bytes,
                    body_at: 0,
                    pid,
                },
                None => ChunkResult::Failed(Error::Codec(CodecError::new(
                    "a chunk's results from a host are cut short",
                ))),
            },
            Outcome::Failed(message) => ChunkResult::Failed(Error::Codec(CodecError::new(
                String::from_utf8_lossy(&message).into_owned(),
            ))),
            Outcome::WorkerLost | Outcome::Poisoned { .. } => {
                ChunkResult::Failed(Error::WorkerLost {
                    pid: 0,
                    exitcode: -9,
                })
            }
            Outcome::Malformed(why) => ChunkResult::Failed(Error::Codec(CodecError::new(why))),
        };
        (id, reclaimed, result)
    }

    /// While chunks are in Redis, looks (at most every quarter of the start timeout, and
    /// every second) for a live host of this build; when there has been none for the start
    /// timeout, the chunks in Redis fail with [`Error::NoCompatibleWorker`] and are
    /// forgotten (deleted if no host took them).
    fn watch_hosts(&self) {
        let now = Instant::now();
        let waited = {
            let mut watch = self.no_host.lock().unwrap_or_else(|e| e.into_inner());
            if self.lock().slots.is_empty() {
                watch.since = None;
                return;
            }
            if now < watch.next_check {
                return;
            }
            watch.next_check = now
                + (self.start_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            let hosts = match self.broker.hosts() {
                Ok(hosts) => hosts,
                // Redis failing is the receiving side's to report.
                Err(_) => return,
            };
            let live: Vec<_> = hosts.into_iter().filter(|h| h.is_live()).collect();
            if live.iter().any(|h| h.fingerprint == self.fingerprint) {
                watch.since = None;
                return;
            }
            let since = *watch.since.get_or_insert(now);
            if now.duration_since(since) < self.start_timeout {
                return;
            }
            watch.since = None;
            let mut others: Vec<String> = live.into_iter().map(|h| h.fingerprint).collect();
            others.sort();
            others.dedup();
            (now.duration_since(since), others)
        };
        let (waited, others) = waited;
        crate::log::warning!(
            ours = %self.fingerprint,
            others = ?others,
            "no host of this build serves the cluster pool: its chunks fail"
        );
        let error = Error::NoCompatibleWorker {
            ours: self.fingerprint.clone(),
            others,
            waited,
        };
        let mut state = self.lock();
        let held: Vec<ChunkId> = state.slots.keys().copied().collect();
        let now = self.now();
        for id in &held {
            if let Err(e) = self.broker.forget(id.job.0, id.index) {
                crate::log::warning!(error = %e, "could not delete a forgotten chunk from Redis");
            }
            Self::finished(&mut state, *id, ChunkResult::Failed(error.clone()), now);
        }
        self.drain_and_apply(state);
    }

    /// Redis failed while outcomes were awaited: every chunk in Redis fails with `error`
    /// (they are forgotten: their outcomes, if Redis comes back with them, are dropped).
    fn on_broker_failure(&self, error: RecvError) {
        let lost = matches!(error, RecvError::Lost);
        let error: Arc<dyn std::error::Error + Send + Sync> = Arc::new(error);
        let mut state = self.lock();
        if lost {
            state.lost.get_or_insert_with(|| Arc::clone(&error));
        }
        let held: Vec<ChunkId> = state.slots.keys().copied().collect();
        let now = self.now();
        for id in &held {
            let _ = self.broker.forget(id.job.0, id.index);
            Self::finished(
                &mut state,
                *id,
                ChunkResult::Failed(Error::Broker(Arc::clone(&error))),
                now,
            );
        }
        self.drain_and_apply(state);
    }
}

/// A submission that failed.
struct Failed {
    error: Arc<dyn std::error::Error + Send + Sync>,
    /// The pool's keys are gone: later chunks fail at once.
    lost: bool,
}

/// The worker's pid, which a host's run function appends to a chunk's results
/// (`crate::cluster::run_call`).
fn split_pid(bytes: &mut Vec<u8>) -> Option<u32> {
    let at = bytes.len().checked_sub(4)?;
    let pid = u32::from_le_bytes(bytes[at..].try_into().ok()?);
    bytes.truncate(at);
    Some(pid)
}

fn broker_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Broker(Arc::new(e))
}

fn dedup<T>(items: Vec<Arc<T>>) -> Vec<Arc<T>> {
    let mut out: Vec<Arc<T>> = Vec::with_capacity(items.len());
    for item in items {
        if !out.iter().any(|o| Arc::ptr_eq(o, &item)) {
            out.push(item);
        }
    }
    out
}

/// The submitter: sends the outbox whenever it holds chunks and no one else is sending it.
fn submitter(shared: Weak<ClusterShared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        if shared.send_batch() {
            continue;
        }
        let mut outbox = shared.lock_outbox();
        if (outbox.queue.is_empty() || outbox.draining) && !shared.stopped.load(Ordering::Acquire) {
            outbox.submitter_asleep = true;
            // Bounded, so that a pool dropped meanwhile lets this thread end.
            let (mut outbox, _) = shared
                .outbox_ready
                .wait_timeout(outbox, PUMP_TICK)
                .unwrap_or_else(|e| e.into_inner());
            outbox.submitter_asleep = false;
        }
    }
}

/// The pump: outcomes from Redis, the scheduler's deadlines, the heartbeat while idle.
fn pump(shared: Weak<ClusterShared>) {
    let mut last_beat = Instant::now();
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.stopped.load(Ordering::Acquire) {
            return;
        }
        // Deadlines first.
        let wait = {
            let mut state = shared.lock();
            let now = shared.now();
            match state.sched.poll_timeout() {
                Some(at) if at <= now => {
                    state.sched.handle_timeout(now);
                    shared.drain_and_apply(state);
                    continue;
                }
                Some(at) => (at - now).min(PUMP_TICK),
                None => PUMP_TICK,
            }
        };
        // Nothing in Redis that anyone waits for (forgotten chunks are not waited for).
        if shared.lock().slots.is_empty() {
            let state = shared.lock();
            if state.slots.is_empty() && !shared.stopped.load(Ordering::Acquire) {
                let _unused = shared
                    .pump
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner());
            }
            if last_beat.elapsed() >= shared.key_ttl / 3 {
                last_beat = Instant::now();
                if shared.lock().lost.is_none() {
                    if let Err(e) = shared.broker.heartbeat() {
                        crate::log::warning!(error = %e, "the cluster pool's heartbeat failed");
                    }
                }
            }
            continue;
        }
        last_beat = Instant::now();
        shared.watch_hosts();
        match shared.broker.recv(wait) {
            Ok(Some(completion)) => {
                // The rest of the same read under the same lock and drain: one scheduler
                // pass per read, not per outcome.
                let mut batch = vec![completion];
                while let Some(next) = shared.broker.recv_buffered() {
                    batch.push(next);
                }
                shared.on_completions(batch);
            }
            Ok(None) => {}
            Err(RecvError::Malformed { id, error }) => {
                crate::log::warning!(%id, %error, "a malformed result entry was dropped");
            }
            Err(e) => {
                crate::log::warning!(error = %e, "the cluster pool's Redis failed");
                shared.on_broker_failure(e);
            }
        }
    }
}
