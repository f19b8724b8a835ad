//! The driver: carries out the scheduler's commands with real processes.
//!
//! It is the one file of `pool/` that uses all the others, and none uses it: the link to
//! each worker (`link.rs`), the jobs (`job.rs`), their payloads (`payload.rs`), the callback
//! runner (`callbacks.rs`) and the worker's side (`worker.rs`), whose entry point it starts.
//!
//! There is no central event-loop thread. The scheduler lives in one mutex, and whichever
//! thread has news takes the lock, feeds the event in, and drains the commands: the caller
//! that submits a job, the reader thread of the worker that answered, the timer thread. This
//! saves a thread hop on every task: a worker's answer reaches the waiting caller through its
//! reader thread alone.
//!
//! Slow work never happens under the lock. Draining commands only records *effects* (messages
//! queued in a worker's outbox, spawns, kills, results handed to waiting callers, callbacks);
//! they are carried out after the lock is released.
//!
//! No thread that receives from workers ever blocks sending to one. If a reader thread sent
//! the next chunk itself, it could block on a worker that is itself blocked writing a large
//! result the reader is not reading: a deadlock (found in review, tested by
//! `big_arguments_and_big_results_in_flight_together_do_not_deadlock`). So messages go into
//! the worker's outbox. A caller's thread (which receives nothing from workers) drains it at
//! once when nobody else is, sparing a thread hop on every `apply`; readers, the timer and
//! the spawner leave it to the worker's writer thread. One drainer at a time keeps the
//! messages in order.
//!
//! # Receiving
//!
//! A worker's answers are read by one thread at a time: its reader thread, or the caller of
//! an `apply` waiting for the answer, which then receives from the worker's channel itself
//! and spares the round trip the reader's wake-up and the hop from the reader to it (on a
//! virtual machine with 2 CPUs, each of these is microseconds). Whoever holds the receiving
//! half handles every message from that worker, in order, through the same `on_message`.
//!
//! The reader never gives the half up while blocked in a receive, which would need an
//! interruption (a signal, an extra descriptor polled on every message). A caller that
//! finds it with the reader asks for it and waits the old way; the reader, after its next
//! message, steps aside and parks. From then on callers take the half from where the reader
//! left it and give it back when answered. The reader resumes when there is work no caller
//! will receive for: a chunk of any other job sent to its worker, a retire or a kill, a
//! caller that gave the half back while its worker still had work, or a broken channel the
//! caller met. It also resumes after `PARK_AT_MOST` (`link.rs`) in any case, so that the
//! death of an idle worker is seen (and the worker replaced) without anyone's help.
//!
//! A caller that holds the half behaves as a reader: it never blocks sending to a worker.
//!
//! Threads per pool: per worker a reader (blocking on its channel, then reaping it) and a
//! writer; one spawner (starting a worker takes milliseconds), one timer (deadlines), one
//! callback runner.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use pool_core::{
    ChunkFailure, ChunkId, ChunkOutcome, Command, JobId, Lifecycle, Scheduler, Time, WorkerId,
};
use pool_ipc::os::Signal;
use pool_ipc::{Child, Killer, SpawnError, SpawnOptions, TransportKind};

use super::callbacks::CallbackRunner;
use super::job::{JobShared, Source};
use super::link::{
    CALLER_SPIN, Claim, MAY_BLOCK_SENDING, Mailbox, Outgoing, Received, RxEnd, RxSlot, WorkerLink,
    drain, forbid_blocking_sends, writer,
};
use super::payload::{ChunkResult, Payload, SpareBuffers};
use super::worker::{WorkerBoot, worker_main};
use crate::Error;
use crate::error::CodecError;
use crate::task::{self, Call, FromWorker, ToWorker};

/// What every worker of a pool is started with.
#[derive(Debug)]
pub(crate) struct WorkerSetup {
    pub(crate) transport: TransportKind,
    pub(crate) initializer: Option<(Call, Vec<u8>)>,
    /// Descriptors of the handles in the initializer's arguments, inherited by every worker.
    pub(crate) initializer_fds: Vec<std::os::fd::OwnedFd>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) time_limit: Option<Duration>,
    pub(crate) start_method: pool_ipc::StartMethod,
}

/// Everything the pool's threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    epoch: Instant,
    /// The timer thread waits here for the next deadline.
    timer: Condvar,
    /// `join` waits here for the last worker's exit.
    joined: Condvar,
    /// `PoolBuilder::build` waits here for the initial workers' spawns.
    booted: Condvar,
    setup: WorkerSetup,
    callbacks: CallbackRunner,
    /// Buffers of ended chunks, for encoding the next ones.
    spare: SpareBuffers,
    /// Received frames whose results were taken, for the reader threads to receive into.
    frames: SpareBuffers,
    /// Messages handled by callers that held a worker's receiving half.
    #[cfg(test)]
    received_by_callers: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct State {
    sched: Scheduler,
    workers: HashMap<WorkerId, Arc<WorkerLink>>,
    pids: HashMap<WorkerId, u32>,
    /// A worker's report that its running task panicked (message, location), kept until the
    /// task ends: if the worker dies first (`panic = "abort"`), the task failed with that
    /// panic, not with an unexplained crash.
    last_words: HashMap<WorkerId, (String, Option<String>)>,
    /// Kills ordered for workers whose spawn had not completed.
    doomed: HashSet<WorkerId>,
    jobs: HashMap<JobId, Arc<JobShared>>,
    /// Encoded arguments of chunks, from pull to end (a requeued chunk is sent again from here).
    payloads: HashMap<ChunkId, Payload>,
    /// Results received, until the scheduler delivers the chunk.
    results: HashMap<ChunkId, ChunkResult>,
    spawner: Option<mpsc::Sender<WorkerId>>,
    timer_at: Option<Time>,
    shutdown: bool,
    /// The last failed start's cause (a spawn error, or a child that died during start-up),
    /// for work that fails with `ChunkFailure::StartFailed`.
    last_start_error: Option<Arc<SpawnError>>,
    /// The initial workers whose spawn has not succeeded or failed yet, and the first
    /// failure among them (see `Shared::wait_booted`).
    boot_pending: HashSet<WorkerId>,
    boot_error: Option<Arc<SpawnError>>,
}

/// What draining commands asks to be done once the state lock is released.
///
/// Its vectors are reused, one set per thread ([`SPARE_EFFECTS`]): most drains push a link or
/// a job or two, and fresh vectors cost an allocation and a free each, several per task when
/// tasks are small (a `map` with chunks of one item drains on the feeding thread and on the
/// reader for every item).
#[derive(Default)]
struct Effects {
    flush: Vec<Arc<WorkerLink>>,
    /// Links whose reader thread must receive (see "Receiving").
    kick: Vec<Arc<WorkerLink>>,
    kill: Vec<Killer>,
    spawn: Vec<WorkerId>,
    wake: Vec<Arc<JobShared>>,
    /// Jobs that ended, with their callback (already counted as pending, see `CallbackRunner`).
    finished: Vec<(Arc<JobShared>, Option<super::job::Callback>)>,
}

/// Vectors longer than this are not kept for the next [`Effects`] (a burst of commands, a
/// pool of many workers shutting down): what is kept per thread stays small.
const EFFECTS_KEPT_UP_TO: usize = 64;

thread_local! {
    /// This thread's emptied [`Effects`], for its next drain.
    static SPARE_EFFECTS: std::cell::Cell<Option<Effects>> = const { std::cell::Cell::new(None) };
}

impl Effects {
    /// Empty, with the vectors of this thread's last effects if it kept them.
    fn new() -> Effects {
        SPARE_EFFECTS.take().unwrap_or_default()
    }

    /// Keeps the (emptied) vectors for this thread's next drain, unless one grew large.
    fn keep(mut self) {
        let Effects {
            flush,
            kick,
            kill,
            spawn,
            wake,
            finished,
        } = &mut self;
        flush.clear();
        kick.clear();
        kill.clear();
        spawn.clear();
        wake.clear();
        finished.clear();
        let largest = [
            flush.capacity(),
            kick.capacity(),
            kill.capacity(),
            spawn.capacity(),
            wake.capacity(),
            finished.capacity(),
        ];
        if largest.iter().all(|&c| c <= EFFECTS_KEPT_UP_TO) {
            SPARE_EFFECTS.set(Some(self));
        }
    }
}

impl Shared {
    pub(crate) fn start(sched: Scheduler, setup: WorkerSetup) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sched,
                workers: HashMap::new(),
                pids: HashMap::new(),
                last_words: HashMap::new(),
                doomed: HashSet::new(),
                jobs: HashMap::new(),
                payloads: HashMap::new(),
                results: HashMap::new(),
                spawner: None,
                timer_at: None,
                shutdown: false,
                last_start_error: None,
                boot_pending: HashSet::new(),
                boot_error: None,
            }),
            epoch: Instant::now(),
            timer: Condvar::new(),
            joined: Condvar::new(),
            booted: Condvar::new(),
            setup,
            callbacks: CallbackRunner::start(),
            spare: SpareBuffers::default(),
            frames: SpareBuffers::default(),
            #[cfg(test)]
            received_by_callers: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        {
            let weak = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("pool-spawner".into())
                .spawn(move || spawner(weak, rx))
                .expect("starting the pool's spawner thread");
            let timer = Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("pool-timer".into())
                .spawn(move || timer_thread(timer))
                .expect("starting the pool's timer thread");
        }
        let mut state = shared.lock();
        state.spawner = Some(tx);
        let effects = shared.drain(&mut state);
        state.boot_pending = effects.spawn.iter().copied().collect();
        drop(state);
        shared.apply(effects);
        shared
    }

    /// Waits (at most `timeout`) until the spawn of every initial worker has succeeded (the
    /// pool_ipc handshake, not the initializer) or one has failed; the first failure, if any.
    /// The spawns run in parallel, so this costs about one spawn.
    pub(crate) fn wait_booted(&self, timeout: Duration) -> Result<(), Arc<SpawnError>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(e) = &state.boot_error {
                return Err(Arc::clone(e));
            }
            let now = Instant::now();
            if state.boot_pending.is_empty() || now >= deadline {
                return Ok(());
            }
            state = self
                .booted
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// An initial worker's spawn succeeded or failed.
    fn boot_done(&self, state: &mut State, worker: WorkerId, error: Option<&Arc<SpawnError>>) {
        if state.boot_pending.remove(&worker) {
            if let Some(e) = error {
                state.boot_error.get_or_insert_with(|| Arc::clone(e));
            }
            if state.boot_pending.is_empty() || error.is_some() {
                self.booted.notify_all();
            }
        }
    }

    /// A worker could not be started: the scheduler retries after a backoff (see
    /// `pool_core::Config::unavailable_after`); `error` is kept for the work that fails if no
    /// worker serves for too long, and logged with the delay before the retry.
    fn on_start_failed(&self, worker: WorkerId, error: SpawnError) {
        let error = Arc::new(error);
        let mut state = self.lock();
        if let Some(link) = state.workers.remove(&worker) {
            link.close();
        }
        state.doomed.remove(&worker);
        state.last_start_error = Some(Arc::clone(&error));
        self.boot_done(&mut state, worker, Some(&error));
        let now = self.now();
        if let Err(violation) =
            state
                .sched
                .handle_worker_start_failed(worker, &error.to_string(), now)
        {
            crate::log::error!(%violation, "a failed start the scheduler does not expect");
        }
        let retry_in = state.sched.poll_timeout().map(|at| at - now);
        crate::log::warning!(%worker, error = %error, ?retry_in, "worker failed to start; retrying");
        let effects = self.drain(&mut state);
        drop(state);
        self.apply(effects);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now(&self) -> Time {
        Time::from_duration(self.epoch.elapsed())
    }

    /// Runs `f` on the scheduler under the lock, then carries out what it caused.
    pub(crate) fn with_scheduler<T>(&self, f: impl FnOnce(&mut Scheduler, Time) -> T) -> T {
        let mut state = self.lock();
        let now = self.now();
        let out = f(&mut state.sched, now);
        let effects = self.drain(&mut state);
        drop(state);
        self.apply(effects);
        out
    }

    /// Submits a job whose chunks come from `source`.
    pub(crate) fn submit(
        &self,
        spec: pool_core::JobSpec,
        call: Call,
        source: Source,
        callback: Option<super::job::Callback>,
        awaited: bool,
    ) -> Result<Arc<JobShared>, Error> {
        let mut state = self.lock();
        let now = self.now();
        let single = matches!(source, Source::Single(_));
        let job_id = state.sched.submit(spec, now)?;
        let job = JobShared::new(
            job_id,
            call,
            source,
            callback,
            self.setup.time_limit,
            awaited,
        );
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
        let effects = self.drain(&mut state);
        // Sent later, by another thread, its chunk is left to the reader: this caller will
        // have gone to wait the usual way by then.
        job.awaited.store(false, Ordering::Relaxed);
        drop(state);
        self.apply(effects);
        Ok(job)
    }

    /// A caller serviced a pull: the chunk's encoded items, `items` of them.
    pub(crate) fn pulled(&self, chunk: ChunkId, items: u32, payload: Payload) {
        let mut state = self.lock();
        let now = self.now();
        if items > 0 {
            state.payloads.insert(chunk, payload);
        }
        if !state.sched.handle_pulled(chunk, items, now) {
            state.payloads.remove(&chunk);
        }
        let effects = self.drain(&mut state);
        drop(state);
        self.apply(effects);
    }

    /// The buffers that chunks' arguments are encoded into.
    pub(crate) fn spare(&self) -> &SpareBuffers {
        &self.spare
    }

    /// The buffers that workers' messages are received into.
    pub(crate) fn frames(&self) -> &SpareBuffers {
        &self.frames
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.lock().sched.lifecycle()
    }

    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        let state = self.lock();
        let mut pids: Vec<u32> = state.workers.values().map(|w| w.pid).collect();
        pids.sort_unstable();
        pids
    }

    pub(crate) fn signal_worker(&self, pid: u32, signal: Signal) -> Result<bool, Error> {
        let link = self.lock().workers.values().find(|w| w.pid == pid).cloned();
        let Some(link) = link else {
            return Ok(false);
        };
        // A worker that exited (not yet reaped) between the look-up and the signal is not an
        // error: the pidfd's signal reports success for it, as for a live one.
        link.killer
            .signal(signal.as_raw())
            .map(|()| true)
            .map_err(Error::from)
    }

    /// Cancels every chunk not dispatched yet, in every job; whether any was.
    pub(crate) fn cancel_queued(&self) -> bool {
        let ids: Vec<pool_core::JobId> = self.lock().jobs.keys().copied().collect();
        ids.into_iter().fold(false, |any, id| {
            self.with_scheduler(|s, now| s.cancel(id, now)) | any
        })
    }

    pub(crate) fn stats(&self) -> pool_core::Stats {
        self.lock().sched.stats()
    }

    pub(crate) fn terminate(&self) {
        // No callback runs for the work terminate kills, and none after it returns.
        // As CPython: the workers go first, then the running callback is waited for. The
        // other way round, a callback waiting on its own pool's work would hang terminate.
        self.callbacks.disable();
        self.with_scheduler(|s, now| s.terminate(now));
        self.callbacks.wait_running();
    }

    /// Waits until the pool is joined: closed or terminated, every worker's exit reaped, and
    /// every callback of the finished work run (as Python's `join` waits for its result
    /// handler thread), unless called from a callback, which would wait for itself.
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

    /// Stops the pool's helper threads (after terminate). The readers end with their workers.
    pub(crate) fn shut_down(&self) {
        let mut state = self.lock();
        state.shutdown = true;
        state.spawner = None;
        drop(state);
        self.timer.notify_all();
        self.callbacks.stop();
    }

    /// Drains the scheduler's commands, recording their effects.
    fn drain(&self, state: &mut State) -> Effects {
        let mut fx = Effects::new();
        while let Some(cmd) = state.sched.poll_command() {
            match cmd {
                Command::Spawn { worker } => fx.spawn.push(worker),
                Command::Pull {
                    chunk,
                    first_item: _,
                    max_items,
                } => {
                    let Some(job) = state.jobs.get(&chunk.job).cloned() else {
                        continue;
                    };
                    match job.pull_now(max_items) {
                        // Pre-encoded input: answer at once, under the lock.
                        Some((items, payload)) => {
                            if items > 0 {
                                state.payloads.insert(chunk, payload);
                            }
                            let now = self.now();
                            if !state.sched.handle_pulled(chunk, items, now) {
                                state.payloads.remove(&chunk);
                            }
                        }
                        // The caller's iterator: its thread answers.
                        None => {
                            job.request_pull(chunk, max_items);
                            fx.wake.push(job);
                        }
                    }
                }
                Command::Dispatch { worker, chunk } => {
                    let (Some(link), Some(job), Some(body)) = (
                        state.workers.get(&worker),
                        state.jobs.get(&chunk.id.job),
                        state.payloads.get(&chunk.id),
                    ) else {
                        continue;
                    };
                    let msg = ToWorker::Task {
                        job: chunk.id.job.0,
                        index: chunk.id.index,
                        call: job.call,
                        fds: body.fds().len() as u32,
                        byte_vecs: body.is_gathered(),
                    };
                    match task::header_bytes(&msg) {
                        Ok(header) => {
                            link.push(Outgoing::Task {
                                header,
                                body: body.clone(),
                            });
                            fx.flush.push(link.clone());
                            // An awaited job's caller receives its answer; a chunk sent again
                            // (its first worker gone) is left to the reader.
                            let caller_receives = job.awaited.load(Ordering::Relaxed)
                                && job.sent_to.set((worker, Arc::clone(link))).is_ok();
                            if !caller_receives {
                                fx.kick.push(link.clone());
                            }
                        }
                        Err(_) => fx.kill.push(link.killer.clone()),
                    }
                }
                // Workers run one chunk at a time and do not read ahead, so a recalled chunk is
                // always already running by the time it could be given back: nothing to do.
                Command::Recall { .. } => {}
                Command::Retire { worker } => {
                    if let Some(link) = state.workers.get(&worker) {
                        link.push(Outgoing::Retire);
                        fx.flush.push(link.clone());
                        fx.kick.push(link.clone());
                    }
                }
                Command::Kill { worker } => match state.workers.get(&worker) {
                    Some(link) => {
                        fx.kill.push(link.killer.clone());
                        fx.kick.push(link.clone());
                    }
                    None => {
                        state.doomed.insert(worker);
                    }
                },
                Command::ChunkEnded { chunk, outcome } => {
                    if let Some(payload) = state.payloads.remove(&chunk.id) {
                        self.spare.give_back(payload);
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
                            ChunkResult::Failed(self.failure(state, &failure, chunk.id.job))
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
                        // Counted under the state lock, before `join` can see the pool
                        // joined: `join` then waits for it to have run.
                        let callback = job.take_callback();
                        if callback.is_some() {
                            self.callbacks.expect_one();
                        }
                        fx.finished.push((job, callback));
                    }
                }
            }
        }
        // Wake the timer if a deadline earlier than the one it sleeps toward appeared.
        let next = state.sched.poll_timeout();
        if next.is_some() && (state.timer_at.is_none() || next < state.timer_at) {
            state.timer_at = next;
            self.timer.notify_one();
        }
        if state.sched.lifecycle() == Lifecycle::Joined {
            self.joined.notify_all();
        }
        fx
    }

    fn failure(&self, state: &State, failure: &ChunkFailure, job: JobId) -> Error {
        let pid = |w: &WorkerId| state.pids.get(w).copied().unwrap_or(0);
        match failure {
            ChunkFailure::WorkerLost { worker, status } => match state.last_words.get(worker) {
                Some((message, location)) => Error::Panicked {
                    message: message.clone(),
                    location: location.clone(),
                    pid: pid(worker),
                    backtrace: None,
                },
                None => Error::WorkerLost {
                    pid: pid(worker),
                    exitcode: status.python_exitcode(),
                },
            },
            ChunkFailure::TimedOut { worker } => {
                let limit = state
                    .jobs
                    .get(&job)
                    .and_then(|j| j.time_limit)
                    .unwrap_or_default();
                Error::TimedOut {
                    pid: pid(worker),
                    limit,
                }
            }
            ChunkFailure::Terminated => Error::Terminated,
            ChunkFailure::Cancelled => Error::Cancelled,
            ChunkFailure::InitializerFailed(m) => Error::InitializerFailed(m.to_string()),
            ChunkFailure::StartFailed(reason) => Error::Start(
                state
                    .last_start_error
                    .clone()
                    .unwrap_or_else(|| Arc::new(SpawnError::Io(std::io::Error::other(&**reason)))),
            ),
            other => Error::from(std::io::Error::other(other.to_string())),
        }
    }

    /// Carries out effects, outside the state lock.
    fn apply(&self, mut fx: Effects) {
        for killer in &fx.kill {
            let _ = killer.kill();
        }
        dedup(&mut fx.kick);
        for link in &fx.kick {
            link.kick();
        }
        let direct = MAY_BLOCK_SENDING.with(std::cell::Cell::get);
        let ring = self.setup.transport == TransportKind::Shm;
        dedup(&mut fx.flush);
        for link in &fx.flush {
            if direct {
                // A caller's thread: send now rather than hop through the writer thread.
                drain(link, true);
            } else if ring {
                // A reader (or the timer): what fits in the ring now goes now, sparing the
                // hop through the writer thread, which sends the rest.
                drain(link, false);
            } else {
                link.wake_writer();
            }
        }
        if !fx.spawn.is_empty() {
            let state = self.lock();
            if let Some(spawner) = &state.spawner {
                for &worker in &fx.spawn {
                    let _ = spawner.send(worker);
                }
            }
        }
        dedup(&mut fx.wake);
        for job in &fx.wake {
            job.wake();
        }
        for (job, callback) in fx.finished.drain(..) {
            job.wake();
            if let Some(callback) = callback {
                self.callbacks.run(job, callback);
            }
        }
        fx.keep();
    }

    /// A worker's messages, in the order sent, from whoever holds its receiving half: all
    /// handled under one taking of the state lock, with one drain of the commands they cause.
    /// `Ok(true)` if the worker still has work in flight afterwards; `Err` at the first
    /// message that is garbage or breaks the protocol (those after it are not handled).
    fn on_messages(&self, worker: WorkerId, frames: Vec<Vec<u8>>) -> Result<bool, ()> {
        let mut parsed = Vec::with_capacity(frames.len());
        let mut garbage = false;
        for frame in frames {
            match task::split_frame::<FromWorker>(&frame) {
                Ok((msg, body)) => {
                    let body_at = frame.len() - body.len();
                    let decoded = self.decode_ahead(worker, &msg, &frame, body_at);
                    // Results written in place leave their frame to be received into again.
                    let frame = if matches!(decoded, Some(ChunkResult::Placed(_))) {
                        self.frames.keep_frame(frame);
                        Vec::new()
                    } else {
                        frame
                    };
                    parsed.push(Received {
                        msg,
                        frame,
                        body_at,
                        decoded,
                    });
                }
                Err(_) => {
                    garbage = true;
                    break;
                }
            }
        }
        let mut state = self.lock();
        let now = self.now();
        let pid = state.pids.get(&worker).copied().unwrap_or(0);
        let mut verdict = if garbage { Err(None) } else { Ok(()) };
        let mut parsed = parsed.into_iter();
        for received in parsed.by_ref() {
            if let Err(violation) = Self::handle(&mut state, worker, pid, now, received) {
                verdict = Err(Some(violation));
                break;
            }
        }
        // Results placed ahead but not handled (the worker broke the protocol before them)
        // give their chunk's claim back: nothing counts those values, and the chunk's retry
        // must be able to place them.
        for received in parsed {
            let Some((job, index)) = finished_chunk(&received.msg) else {
                continue;
            };
            if matches!(received.decoded, Some(ChunkResult::Placed(_))) {
                let placement = state.jobs.get(&job).and_then(|j| j.placement());
                if let Some(placement) = placement {
                    placement.release(index);
                }
            }
        }
        let effects = self.drain(&mut state);
        let busy = state.sched.worker_load(worker) > 0;
        drop(state);
        self.apply(effects);
        verdict.map(|()| busy).map_err(|violation| {
            if let Some(violation) = violation {
                crate::log::warning!(%violation, "worker broke the protocol; killing it");
            }
        })
    }

    /// A large chunk of results is written in place or decoded before the scheduler's lock
    /// is taken, if its caller takes it once (see `ChunkResult::Placed` and
    /// `ChunkResult::Decoded`).
    fn decode_ahead(
        &self,
        worker: WorkerId,
        msg: &FromWorker,
        frame: &[u8],
        body_at: usize,
    ) -> Option<ChunkResult> {
        let (job, index) = finished_chunk(msg)?;
        if frame.len() - body_at < DECODE_AHEAD_FROM {
            return None;
        }
        let (decoder, placement, pid) = {
            let state = self.lock();
            let job = state.jobs.get(&job);
            (
                job.and_then(|j| j.decoder()),
                job.and_then(|j| j.placement()),
                state.pids.get(&worker).copied().unwrap_or(0),
            )
        };
        let body = &frame[body_at..];
        if let Some(placed) = placement.and_then(|p| p.place(index, body)) {
            return Some(placed.map_or_else(ChunkResult::Failed, ChunkResult::Placed));
        }
        decoder.and_then(|decode| decode(body, pid).map(ChunkResult::Decoded))
    }

    /// One message of `worker`'s, under the state lock.
    fn handle(
        state: &mut State,
        worker: WorkerId,
        pid: u32,
        now: Time,
        received: Received,
    ) -> Result<(), pool_core::ProtocolViolation> {
        let Received {
            msg,
            frame,
            body_at,
            decoded,
        } = received;
        let chunk = |job: u64, index: u32| ChunkId {
            job: JobId(job),
            index,
        };
        let result = |frame| {
            decoded.unwrap_or(ChunkResult::Bytes {
                frame,
                body_at,
                pid,
            })
        };
        match msg {
            FromWorker::Ready => state.sched.handle_worker_started(worker, now),
            FromWorker::InitFailed { message } => {
                state.sched.handle_worker_init_failed(worker, &message, now)
            }
            FromWorker::Started { job, index } => {
                state
                    .sched
                    .handle_chunk_started(worker, chunk(job, index), now)
            }
            FromWorker::Finished { job, index } => {
                Self::finished(state, worker, chunk(job, index), result(frame), now)
            }
            FromWorker::FinishedThenStarted {
                job,
                index,
                next_job,
                next_index,
            } => {
                let result = result(frame);
                Self::finished(state, worker, chunk(job, index), result, now).and_then(|()| {
                    state
                        .sched
                        .handle_chunk_started(worker, chunk(next_job, next_index), now)
                })
            }
            FromWorker::Failed {
                job,
                index,
                message,
            } => {
                let result = ChunkResult::Failed(Error::Codec(CodecError::new(message)));
                Self::finished(state, worker, chunk(job, index), result, now)
            }
            FromWorker::Panicking { message, location } => {
                // The first report wins: a panic that cannot unwind panics a second time.
                state
                    .last_words
                    .entry(worker)
                    .or_insert((message, location));
                Ok(())
            }
        }
    }

    /// Receives one of `worker`'s messages, and those wholly here after it (up to
    /// [`RECEIVE_BATCH`] messages and about [`RECEIVE_BATCH_BYTES`]), and handles them; `Ok(true)` if the worker still has work in
    /// flight afterwards. Messages before the channel's end are handled before the end is
    /// reported.
    fn receive_one(&self, worker: WorkerId, rx: &mut pool_ipc::Receiver) -> Result<bool, RxEnd> {
        let mut frames = Vec::new();
        let mut end = None;
        let mut bytes = 0;
        loop {
            let mut frame = self.frames.take().unwrap_or_default();
            match rx.recv_into(&mut frame, None) {
                Ok(()) => {
                    let frame = self.frames.fit(frame);
                    bytes += frame.len();
                    frames.push(frame);
                }
                Err(pool_ipc::RecvError::Disconnected) => {
                    end = Some(RxEnd::Closed);
                    break;
                }
                Err(e) => {
                    // An oversized or broken frame: the worker is not trusted further.
                    crate::log::warning!(error = %e, "unreadable message from a worker; killing it");
                    end = Some(RxEnd::Untrusted);
                    break;
                }
            }
            // Only what is wholly here: a message half-way through its arrival would hold
            // up those received (an answer its caller waits for, say).
            if frames.len() >= RECEIVE_BATCH || bytes >= RECEIVE_BATCH_BYTES || !rx.has_message() {
                break;
            }
        }
        let handled = if frames.is_empty() {
            Ok(false)
        } else {
            // Garbage or a lie from a worker: it is not trusted further either.
            self.on_messages(worker, frames)
                .map_err(|()| RxEnd::Untrusted)
        };
        match (handled, end) {
            (Err(untrusted), _) => Err(untrusted),
            (Ok(_), Some(end)) => Err(end),
            (Ok(busy), None) => Ok(busy),
        }
    }

    /// An `apply`'s caller receives its answer from the worker's channel itself, if the
    /// reader thread left the receiving half (see "Receiving"). Returns once the job has
    /// news, or at once if the half is not to be had; the caller then waits as usual.
    pub(crate) fn receive_answer(&self, job: &JobShared) {
        let Some((worker, link)) = job.sent_to.get() else {
            return;
        };
        if job.has_news() {
            return;
        }
        let Some(mut rx) = link.claim() else {
            return;
        };
        rx.set_spin(Some(CALLER_SPIN));
        let mut claim = Claim {
            link,
            rx: Some(rx),
            end: None,
            busy: false,
            may_block: MAY_BLOCK_SENDING.with(|c| c.replace(false)),
        };
        while !job.has_news() {
            let rx = claim.rx.as_mut().expect("held until the claim ends");
            let received = self.receive_one(*worker, rx);
            #[cfg(test)]
            self.received_by_callers.fetch_add(1, Ordering::Relaxed);
            match received {
                Ok(busy) => claim.busy = busy,
                Err(end) => {
                    claim.end = Some(end);
                    break;
                }
            }
        }
    }

    /// A worker reported a chunk's outcome: keep it for delivery and tell the scheduler.
    fn finished(
        state: &mut State,
        worker: WorkerId,
        id: ChunkId,
        result: ChunkResult,
        now: Time,
    ) -> Result<(), pool_core::ProtocolViolation> {
        state.results.insert(id, result);
        // Its panic, if any, is in its results: the worker survived it.
        state.last_words.remove(&worker);
        let verdict = state.sched.handle_chunk_finished(worker, id, now);
        // A stale report (the chunk already timed out) leaves its result unclaimed.
        if !state.payloads.contains_key(&id) {
            state.results.remove(&id);
        }
        verdict
    }

    /// A worker's process exited, from its reader thread.
    fn on_exit(&self, worker: WorkerId, status: pool_ipc::ExitStatus) {
        let mut state = self.lock();
        if let Some(link) = state.workers.remove(&worker) {
            link.close();
        }
        let now = self.now();
        if state.sched.worker_state(worker) == Some(pool_core::WorkerState::Starting) {
            // Died before it was ready (killed during its initializer, say): a failed start,
            // which the scheduler retries after a backoff.
            let pid = state.pids.get(&worker).copied().unwrap_or(0);
            let error = SpawnError::ChildExited { pid, status };
            crate::log::warning!(%worker, error = %error, "worker died during start-up; retrying");
            state.last_start_error = Some(Arc::new(error));
        }
        state
            .sched
            .handle_worker_exited(worker, core_status(status), now);
        let effects = self.drain(&mut state);
        state.last_words.remove(&worker);
        drop(state);
        self.apply(effects);
    }
}

fn core_status(status: pool_ipc::ExitStatus) -> pool_core::ExitStatus {
    match status {
        pool_ipc::ExitStatus::Code(c) => pool_core::ExitStatus::Code(c),
        pool_ipc::ExitStatus::Signal(s) => pool_core::ExitStatus::Signal(s),
        // Only when another part of the program reaped the worker: a pool whose program
        // ignores SIGCHLD starts its workers from the forkserver, which relays statuses.
        _ => pool_core::ExitStatus::Code(crate::process::UNKNOWN_EXITCODE),
    }
}

/// Removes the repeats of an item (the same `Arc`), keeping the first of each in its place;
/// in place, as the lists are a few items long.
fn dedup<T>(items: &mut Vec<Arc<T>>) {
    let mut kept = 0;
    for i in 0..items.len() {
        if !items[..kept].iter().any(|o| Arc::ptr_eq(o, &items[i])) {
            items.swap(kept, i);
            kept += 1;
        }
    }
    items.truncate(kept);
}

/// At most this many messages that arrived together are handled under one taking of the
/// state lock.
const RECEIVE_BATCH: usize = 32;

/// A batch ends once its messages hold this many bytes: results are decoded and kept while
/// the batch is handled.
const RECEIVE_BATCH_BYTES: usize = 1 << 20;

/// Results at least this large are decoded by the reader thread that received them, when
/// their job allows it; smaller ones (an `apply`'s) are not worth a second look at the state.
const DECODE_AHEAD_FROM: usize = 4096;

/// The chunk whose results follow `msg`, if it carries any.
fn finished_chunk(msg: &FromWorker) -> Option<(JobId, u32)> {
    match msg {
        FromWorker::Finished { job, index }
        | FromWorker::FinishedThenStarted { job, index, .. } => Some((JobId(*job), *index)),
        _ => None,
    }
}

/// Starts workers as the scheduler asks. Workers asked for together start together, each
/// from a thread of its own, so that their children load and initialise in parallel: a pool
/// of N starts in about the time of one start, not N (W1), and a wave of replacements too.
fn spawner(shared: std::sync::Weak<Shared>, requests: mpsc::Receiver<WorkerId>) {
    forbid_blocking_sends();
    while let Ok(first) = requests.recv() {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let rest: Vec<WorkerId> = requests.try_iter().collect();
        std::thread::scope(|scope| {
            for worker in rest {
                let shared = &shared;
                let started = std::thread::Builder::new()
                    .name("pool-spawner".into())
                    .spawn_scoped(scope, move || {
                        forbid_blocking_sends();
                        start_worker(shared, worker);
                    });
                if started.is_err() {
                    // No thread to spare: start it from this one, after the others.
                    start_worker(shared, worker);
                }
            }
            start_worker(&shared, first);
        });
    }
}

/// Starts one worker and its reader and writer threads, or reports that it could not start.
fn start_worker(shared: &Arc<Shared>, worker: WorkerId) {
    // What the scheduler hears of a worker that could not be started.
    let could_not_start = |error: std::io::Error| {
        shared.on_start_failed(worker, SpawnError::Io(error));
    };
    let boot = WorkerBoot {
        name: worker.to_string(),
        initializer: shared.setup.initializer.clone(),
    };
    let payload = postcard::to_stdvec(&boot).unwrap_or_default();
    let inherit: Result<Vec<_>, _> = shared
        .setup
        .initializer_fds
        .iter()
        .map(|fd| fd.try_clone())
        .collect();
    let inherit = match inherit {
        Ok(inherit) => inherit,
        Err(e) => {
            crate::log::error!(error = %e, "cannot duplicate the initializer's handles for a new worker");
            could_not_start(e);
            return;
        }
    };
    let options = SpawnOptions::new()
        .transport(shared.setup.transport)
        .handshake_timeout(shared.setup.handshake_timeout)
        .name(worker.to_string())
        .start_method(shared.setup.start_method)
        .inherit(inherit);
    match pool_ipc::spawn(worker_main, &payload, &options) {
        Ok(spawned) => {
            let killer = match spawned.child.killer() {
                Ok(k) => k,
                Err(e) => {
                    crate::log::error!(error = %e, "cannot watch a new worker");
                    drop(spawned);
                    could_not_start(std::io::Error::other(e));
                    return;
                }
            };
            let (tx, rx) = spawned.channel.split();
            let link = Arc::new(WorkerLink {
                pid: spawned.child.pid(),
                killer,
                outbox: Mailbox::new(),
                sender: Mutex::new(tx),
                receiving: Mutex::new(RxSlot::default()),
                resume: Condvar::new(),
                rx_wanted: AtomicBool::new(false),
            });
            let writer_link = Arc::clone(&link);
            let started = std::thread::Builder::new()
                .name(format!("pool-writer-{}", worker.0))
                .spawn(move || writer(writer_link));
            if let Err(e) = started {
                crate::log::error!(error = %e, "cannot start a worker's writer thread");
                // Dropping the `Child` kills and reaps it.
                drop(spawned.child);
                could_not_start(e);
                return;
            }
            {
                let mut state = shared.lock();
                state.pids.insert(worker, link.pid);
                if state.doomed.remove(&worker) {
                    let _ = link.killer.kill();
                }
                state.workers.insert(worker, Arc::clone(&link));
                shared.boot_done(&mut state, worker, None);
            }
            let reader_shared = Arc::clone(shared);
            let reader_link = link;
            let child = spawned.child;
            let killer = child.killer();
            let started = std::thread::Builder::new()
                .name(format!("pool-reader-{}", worker.0))
                .spawn(move || reader(reader_shared, worker, reader_link, rx, child));
            if let Err(e) = started {
                // Without a reader nobody would see this worker's exit: kill it, and the
                // failed spawn closure dropped the `Child`, which reaps it.
                crate::log::error!(error = %e, "cannot start a worker's reader thread");
                if let Ok(k) = killer {
                    let _ = k.kill();
                }
                could_not_start(e);
            }
        }
        Err(e) => shared.on_start_failed(worker, e),
    }
}

/// Reads a worker's messages until its channel closes, then reaps it and reports the exit.
/// Steps aside for callers that ask (see "Receiving").
fn reader(
    shared: Arc<Shared>,
    worker: WorkerId,
    link: Arc<WorkerLink>,
    mut rx: pool_ipc::Receiver,
    mut child: Child,
) {
    forbid_blocking_sends();
    let end = 'reading: loop {
        loop {
            match shared.receive_one(worker, &mut rx) {
                Err(end) => break 'reading end,
                // Only between tasks: the caller that asked is waiting for this worker's
                // answer the usual way, and the reader must bring it.
                Ok(false) if link.rx_wanted.swap(false, Ordering::AcqRel) => break,
                Ok(_) => {}
            }
        }
        let (back, end) = link.park(rx);
        rx = back;
        if let Some(end) = end {
            break end;
        }
    };
    if end == RxEnd::Untrusted {
        // Killed so that its exit can be reaped below (it would otherwise wait for work).
        let _ = child.kill();
    }
    drop(rx);
    let status = child.wait().unwrap_or(pool_ipc::ExitStatus::Code(-1));
    shared.on_exit(worker, status);
}

/// Handles the scheduler's deadlines.
fn timer_thread(shared: std::sync::Weak<Shared>) {
    forbid_blocking_sends();
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        if state.shutdown {
            return;
        }
        let now = shared.now();
        let next = state.sched.poll_timeout();
        state.timer_at = next;
        match next {
            Some(at) if at <= now => {
                state.sched.handle_timeout(now);
                let effects = shared.drain(&mut state);
                drop(state);
                shared.apply(effects);
            }
            Some(at) => {
                let wait = at - now;
                let _unused = shared
                    .timer
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner());
            }
            None => {
                // Re-check now and then so that the thread notices the pool is gone.
                let _unused = shared
                    .timer
                    .wait_timeout(state, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use pool_ipc::TransportKind;

    fn double(x: u64) -> u64 {
        2 * x
    }

    #[test]
    fn dedup_keeps_the_first_of_each_in_order() {
        use std::sync::Arc;
        let (a, b, c) = (Arc::new(1), Arc::new(2), Arc::new(3));
        let mut items = vec![
            b.clone(),
            a.clone(),
            b.clone(),
            c.clone(),
            a.clone(),
            c.clone(),
        ];
        super::dedup(&mut items);
        let got: Vec<i32> = items.iter().map(|x| **x).collect();
        assert_eq!(got, [2, 1, 3]);
        // The same value in another `Arc` is another item.
        let mut items = vec![a.clone(), Arc::new(1)];
        super::dedup(&mut items);
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn a_threads_effects_are_reused_emptied_and_large_ones_dropped() {
        use super::{EFFECTS_KEPT_UP_TO, Effects};
        let mut fx = Effects::new();
        fx.spawn.push(pool_core::WorkerId(7));
        let at = fx.spawn.as_ptr();
        fx.keep();
        let again = Effects::new();
        assert!(again.spawn.is_empty(), "kept emptied");
        assert_eq!(again.spawn.as_ptr(), at, "the same vector came back");
        // Another thread has its own.
        std::thread::spawn(|| assert_eq!(Effects::new().spawn.capacity(), 0))
            .join()
            .unwrap();
        let mut large = again;
        large.spawn.reserve(EFFECTS_KEPT_UP_TO + 1);
        large.keep();
        assert_eq!(
            Effects::new().spawn.capacity(),
            0,
            "a large one is not kept"
        );
    }

    /// After the first `apply` (whose answer the reader thread brings, then steps aside), the
    /// callers receive their answers themselves: two messages each (started, finished).
    #[test]
    fn apply_callers_receive_their_answers_themselves() {
        for kind in [TransportKind::Pipe, TransportKind::Shm] {
            let pool = crate::Pool::builder()
                .processes(1)
                .transport(kind)
                .build()
                .unwrap();
            for x in 0..100 {
                assert_eq!(pool.apply(double, x).unwrap(), 2 * x);
            }
            let received = pool.local().received_by_callers.load(Ordering::Relaxed);
            // The reader may take the channel back now and then (`PARK_AT_MOST`) on a slow
            // machine; most answers still go straight to their callers.
            assert!(
                received >= 20,
                "{kind:?}: callers received {received} messages"
            );
        }
    }
}
