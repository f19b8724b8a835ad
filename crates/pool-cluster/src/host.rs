//! A host: a supervisor and its worker processes, serving one pool.
//!
//! Each worker is a process of its own, started with pool-ipc's `spawn` (this executable,
//! re-executed; the run function travels by identity, which is sound because pool-ipc checks
//! that the child is the same build) and is one consumer of the pool's group: it loops claim,
//! run, complete. Processes rather than threads because a chunk may crash its worker (that is
//! what `WorkerLost` and poison budgets are about) and the host must outlive it.
//!
//! The supervisor is one thread that does everything else, in one place so that its steps
//! never race each other: it waits on its workers' pidfds and log channels; when a worker
//! dies it settles the dead worker's chunks at once (fail, or hand to the replacement when
//! tries are left: [`Consumer::fail_lost`]) before it starts the replacement under a new
//! consumer name; every third of the lease it renews the leases of the entries its live
//! workers hold, so a long chunk is never taken over by another host. A host that stops
//! renewing (dead, cut off) has its entries taken over by other hosts' workers after the
//! lease, which the workers look for themselves ([`Consumer::claim`]).
//!
//! Workers have no logging of their own (a re-executed child does not run `main`, where a
//! program installs its `tracing` subscriber): they send their warnings over their channel
//! and the supervisor logs them through `tracing`, naming the worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pool_ipc::{Channel, Child, ChildStart, FnId, NotInExecutable, SpawnError, SpawnOptions};
use serde::{Deserialize, Serialize};

use crate::conn::Timeouts;
use crate::consumer::{ClaimError, Consumer, ConsumerOptions, JoinError};
use crate::keys::{self, Fingerprint, Keys, NameError};

/// The function a host's workers run for each chunk: `call` and `payload` are the bytes the
/// client submitted; the outcome's bytes go into `out` (empty on entry); an error's text
/// becomes [`Outcome::Failed`](crate::Outcome::Failed). A panic is caught and becomes a
/// failure too.
pub type RunFn = fn(call: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), String>;

/// How often the supervisor looks at its stop flag when nothing else happens.
const TICK: Duration = Duration::from_millis(50);

/// How long after a failed start the supervisor tries again.
const RESPAWN_DELAY: Duration = Duration::from_millis(500);

/// Asks a host to stop. Clones share the request.
#[derive(Clone, Debug, Default)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    /// A stopper not yet triggered.
    pub fn new() -> Stopper {
        Stopper::default()
    }

    /// Asks the host to stop: its workers finish the chunk they run and exit, those that do
    /// not within the grace period are killed and their chunks failed.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What a host is started with.
#[derive(Clone, Debug)]
pub struct HostOptions {
    pool: String,
    fingerprint: Fingerprint,
    run: RunFn,
    processes: usize,
    host_id: String,
    lease: Duration,
    claim_block: Duration,
    timeouts: Timeouts,
    grace: Duration,
    stopper: Stopper,
}

impl HostOptions {
    /// Options for a host serving pool `pool`, running chunks of build `fingerprint` with
    /// `run`.
    pub fn new(pool: impl Into<String>, fingerprint: Fingerprint, run: RunFn) -> HostOptions {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        HostOptions {
            pool: pool.into(),
            fingerprint,
            run,
            processes: std::thread::available_parallelism().map_or(1, |n| n.get()),
            host_id: format!("{}-{}", host.trim(), std::process::id()),
            lease: Duration::from_secs(10),
            claim_block: Duration::from_millis(500),
            timeouts: Timeouts::default(),
            grace: Duration::from_secs(5),
            stopper: Stopper::new(),
        }
    }

    /// How many worker processes (default: the available parallelism).
    pub fn processes(mut self, n: usize) -> HostOptions {
        self.processes = n.max(1);
        self
    }

    /// This host's id, the first part of its consumers' names (default `HOSTNAME-PID`).
    pub fn host_id(mut self, id: impl Into<String>) -> HostOptions {
        self.host_id = id.into();
        self
    }

    /// The lease (default 10 s): renewed every third of it while a chunk runs; entries idle
    /// longer are taken over from hosts that stopped renewing. Every host of a pool should
    /// use the same.
    pub fn lease(mut self, lease: Duration) -> HostOptions {
        self.lease = lease.max(Duration::from_millis(30));
        self
    }

    /// How long a worker's claim waits for a chunk before it looks at its stop request and
    /// at expired leases again (default 500 ms).
    pub fn claim_block(mut self, block: Duration) -> HostOptions {
        self.claim_block = block.max(Duration::from_millis(1));
        self
    }

    /// Connect and command timeouts, for the supervisor and the workers.
    pub fn timeouts(mut self, timeouts: Timeouts) -> HostOptions {
        self.timeouts = timeouts;
        self
    }

    /// How long stopping waits for workers to finish their chunk before killing them
    /// (default 5 s).
    pub fn grace(mut self, grace: Duration) -> HostOptions {
        self.grace = grace;
        self
    }

    /// The stopper that ends [`serve`] (and [`Host::join`]).
    pub fn stopper(mut self, stopper: Stopper) -> HostOptions {
        self.stopper = stopper;
        self
    }
}

/// Why a host could not start, or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The pool name or the host id cannot be used.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The run function is not in the executable (it cannot travel to a worker).
    #[error(transparent)]
    Function(#[from] NotInExecutable),
    /// The supervisor could not connect.
    #[error("the supervisor could not connect: {0}")]
    Join(#[from] JoinError),
    /// The supervisor thread could not be started, or panicked.
    #[error("the supervisor thread: {0}")]
    Thread(String),
}

/// What a host has counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Worker processes started.
    pub started: u64,
    /// Worker processes that died while the host was not stopping.
    pub died: u64,
    /// Worker starts that failed.
    pub start_failures: u64,
    /// Chunks failed at once because their worker died.
    pub failed_lost: u64,
    /// Chunks handed to a dead worker's replacement.
    pub handed: u64,
    /// Lease renewals (entries renewed, summed over heartbeats).
    pub renewed: u64,
}

#[derive(Default)]
struct Counters {
    started: AtomicU64,
    died: AtomicU64,
    start_failures: AtomicU64,
    failed_lost: AtomicU64,
    handed: AtomicU64,
    renewed: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HostStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HostStats {
            started: get(&self.started),
            died: get(&self.died),
            start_failures: get(&self.start_failures),
            failed_lost: get(&self.failed_lost),
            handed: get(&self.handed),
            renewed: get(&self.renewed),
        }
    }
}

/// A running host: its supervisor thread and worker processes.
pub struct Host {
    stopper: Stopper,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl Host {
    /// Checks the options, connects the supervisor and starts it and the workers; returns at
    /// once. Redis need not have the pool yet: workers wait for a client to set it up.
    pub fn start(url: &str, options: HostOptions) -> Result<Host, ServeError> {
        Keys::new(&options.pool)?;
        let supervisor_name = format!("{}/supervisor", options.host_id);
        keys::check_consumer(&supervisor_name)?;
        keys::check_consumer(&format!(
            "{}/w{}.{}",
            options.host_id,
            options.processes,
            u32::MAX
        ))?;
        let run = FnId::new(options.run as usize)?;
        let consumer = Consumer::join(
            url,
            ConsumerOptions::new(&options.pool, supervisor_name, options.fingerprint)
                .lease(options.lease)
                .timeouts(options.timeouts),
        )?;
        let config = WorkerConfig {
            url: url.to_string(),
            pool: options.pool.clone(),
            fingerprint: options.fingerprint.0,
            lease_ms: duration_ms(options.lease),
            block_ms: duration_ms(options.claim_block),
            connect_ms: duration_ms(options.timeouts.connect),
            io_ms: duration_ms(options.timeouts.io),
            run,
            consumer: String::new(),
        };
        let counters = Arc::new(Counters::default());
        let mut supervisor = Supervisor {
            consumer,
            config,
            slots: (0..options.processes)
                .map(|i| Slot {
                    base: format!("{}/w{i}", options.host_id),
                    generation: 0,
                    worker: None,
                    retry_at: None,
                })
                .collect(),
            unsettled: Vec::new(),
            host_id: options.host_id.clone(),
            lease: options.lease,
            grace: options.grace,
            stopper: options.stopper.clone(),
            counters: counters.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("pool-cluster host {}", options.host_id))
            .spawn(move || supervisor.run())
            .map_err(|e| ServeError::Thread(e.to_string()))?;
        Ok(Host {
            stopper: options.stopper,
            counters,
            thread: Some(thread),
        })
    }

    /// The stopper of this host.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// What the host has counted so far.
    pub fn stats(&self) -> HostStats {
        self.counters.snapshot()
    }

    /// Asks the host to stop and waits until it has (workers gone, their chunks settled).
    pub fn stop(self) -> Result<(), ServeError> {
        self.stopper.stop();
        self.join()
    }

    /// Waits until the host stops (its stopper was triggered).
    pub fn join(mut self) -> Result<(), ServeError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(ServeError::Thread("the supervisor panicked".into())),
            _ => Ok(()),
        }
    }
}

impl Drop for Host {
    /// Stops the host and waits for it.
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Runs a host until `options`' stopper is triggered: [`Host::start`] then [`Host::join`].
pub fn serve(url: &str, options: HostOptions) -> Result<(), ServeError> {
    Host::start(url, options)?.join()
}

/// What a worker process is started with (its spawn payload).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WorkerConfig {
    url: String,
    pool: String,
    consumer: String,
    fingerprint: [u8; 32],
    lease_ms: u64,
    block_ms: u64,
    connect_ms: u64,
    io_ms: u64,
    run: FnId,
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One worker place: the worker in it and the name it runs under.
struct Slot {
    base: String,
    generation: u32,
    worker: Option<(Child, Channel)>,
    retry_at: Option<Instant>,
}

impl Slot {
    fn name(&self) -> String {
        if self.generation == 0 {
            self.base.clone()
        } else {
            format!("{}.{}", self.base, self.generation)
        }
    }
}

struct Supervisor {
    consumer: Consumer,
    config: WorkerConfig,
    slots: Vec<Slot>,
    /// Dead workers whose chunks could not be settled yet (Redis was away): `(dead, heir)`.
    unsettled: Vec<(String, Option<String>)>,
    host_id: String,
    lease: Duration,
    grace: Duration,
    stopper: Stopper,
    counters: Arc<Counters>,
}

impl Supervisor {
    fn run(&mut self) {
        let span = tracing::info_span!("pool_cluster::host", pool = %self.config.pool);
        let _enter = span.enter();
        for i in 0..self.slots.len() {
            self.start_worker(i);
        }
        let mut next_beat = Instant::now();
        while !self.stopper.is_stopped() {
            let deadline = next_beat.min(Instant::now() + TICK);
            self.wait(deadline);
            for i in 0..self.slots.len() {
                self.check_worker(i);
            }
            self.retry_unsettled();
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + self.lease / 3;
                self.renew();
            }
        }
        self.shut_down();
    }

    /// Waits until a worker exits or writes, or `deadline`; logs what workers wrote.
    fn wait(&mut self, deadline: Instant) {
        let mut fds = Vec::new();
        // Which slot each channel descriptor in `fds` belongs to (pidfds map to `None`).
        let mut owners = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some((child, channel)) = &slot.worker {
                fds.push(child.pidfd());
                owners.push(None);
                if let Some(fd) = channel.receiver().readable_fd() {
                    fds.push(fd);
                    owners.push(Some(i));
                }
            }
        }
        if fds.is_empty() {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            return;
        }
        let ready = match pool_ipc::wait_readable(&fds, Some(deadline)) {
            Ok(ready) => ready,
            Err(e) => {
                tracing::warn!("cannot wait on workers: {e}");
                std::thread::sleep(TICK.min(deadline.saturating_duration_since(Instant::now())));
                return;
            }
        };
        drop(fds);
        let mut message = Vec::new();
        for i in ready
            .into_iter()
            .filter_map(|r| owners.get(r).copied().flatten())
        {
            let slot = &mut self.slots[i];
            let name = slot.name();
            if let Some((_, channel)) = &mut slot.worker {
                // A worker sends whole short lines: one is here (or EOF: its exit follows).
                if channel
                    .recv_into(
                        &mut message,
                        Some(Instant::now() + Duration::from_millis(10)),
                    )
                    .is_ok()
                {
                    let text = String::from_utf8_lossy(&message);
                    tracing::warn!(worker = %name, "{text}");
                }
            }
        }
    }

    fn start_worker(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        self.config.consumer = slot.name();
        let payload = match postcard::to_stdvec(&self.config) {
            Ok(payload) => payload,
            Err(e) => {
                tracing::error!("cannot encode a worker's configuration: {e}");
                return;
            }
        };
        let options = SpawnOptions::new().name(slot.name());
        match pool_ipc::spawn(worker_main, &payload, &options) {
            Ok(spawned) => {
                Counters::add(&self.counters.started, 1);
                tracing::debug!(worker = %slot.name(), pid = spawned.child.pid(), "worker started");
                slot.worker = Some((spawned.child, spawned.channel));
                slot.retry_at = None;
            }
            Err(e) => {
                Counters::add(&self.counters.start_failures, 1);
                log_spawn_error(&slot.name(), &e);
                slot.retry_at = Some(Instant::now() + RESPAWN_DELAY);
            }
        }
    }

    /// Replaces slot `i`'s worker if it died, after settling its chunks; retries a failed
    /// start when due.
    fn check_worker(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        let status = match &mut slot.worker {
            Some((child, _)) => match child.try_wait() {
                Ok(Some(status)) => status,
                _ => return,
            },
            None => {
                if slot.retry_at.is_some_and(|t| Instant::now() >= t) {
                    self.start_worker(i);
                }
                return;
            }
        };
        slot.worker = None;
        Counters::add(&self.counters.died, 1);
        let dead = slot.name();
        slot.generation = slot.generation.wrapping_add(1);
        let heir = slot.name();
        tracing::warn!(worker = %dead, %status, replacement = %heir, "worker died");
        // Settle before the replacement starts: it reads its own pending list first.
        self.settle(dead, Some(heir));
        self.start_worker(i);
    }

    fn settle(&mut self, dead: String, heir: Option<String>) {
        match self.consumer.fail_lost(&dead, heir.as_deref()) {
            Ok(report) => {
                Counters::add(&self.counters.failed_lost, report.failed.len() as u64);
                Counters::add(&self.counters.handed, report.handed.len() as u64);
            }
            Err(e) => {
                tracing::warn!(worker = %dead, "cannot settle a dead worker's chunks yet: {e}");
                self.unsettled.push((dead, heir));
            }
        }
    }

    fn retry_unsettled(&mut self) {
        for (dead, heir) in std::mem::take(&mut self.unsettled) {
            self.settle(dead, heir);
        }
    }

    /// Renews the leases of live workers' entries. Not those of a slot whose worker could
    /// not be started: entries handed to it expire and other hosts take them over, rather
    /// than wait on a host that cannot start workers.
    fn renew(&mut self) {
        let names: Vec<String> = self
            .slots
            .iter()
            .filter(|slot| slot.worker.is_some())
            .map(Slot::name)
            .collect();
        let owners: Vec<&str> = names.iter().map(String::as_str).collect();
        // Announced only with a live worker: a host that cannot start any does not keep its
        // clients waiting on it.
        if !owners.is_empty() {
            if let Err(e) = self.consumer.announce(&self.host_id, self.lease) {
                tracing::warn!("cannot announce this host: {e}");
            }
        }
        match self.consumer.renew_all(&owners) {
            Ok(n) => {
                Counters::add(&self.counters.renewed, n as u64);
                if n > 0 {
                    tracing::trace!(entries = n, "leases renewed");
                }
            }
            Err(e) => tracing::warn!("cannot renew leases: {e}"),
        }
    }

    /// Hangs up on every worker (each exits after its chunk), kills those still there after
    /// the grace period, and fails their chunks.
    fn shut_down(&mut self) {
        let mut workers = Vec::new();
        for slot in &mut self.slots {
            if let Some((child, channel)) = slot.worker.take() {
                drop(channel);
                workers.push((slot.name(), child));
            }
        }
        let deadline = Instant::now() + self.grace;
        for (name, mut child) in workers {
            if !matches!(child.wait_deadline(Some(deadline)), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait_timeout(Duration::from_secs(5));
            }
            self.settle(name, None);
        }
        self.retry_unsettled();
    }
}

fn log_spawn_error(worker: &str, e: &SpawnError) {
    tracing::error!(%worker, "cannot start a worker process: {e}");
}

/// A worker process: claim, run, complete, until the supervisor hangs up (or dies: the
/// worker dies with it, pool-ipc arms PDEATHSIG).
fn worker_main(mut start: ChildStart) -> i32 {
    let Ok(config) = postcard::from_bytes::<WorkerConfig>(&start.payload) else {
        return 2;
    };
    // SAFETY: `run` was made by `Host::start` from a `RunFn`, in the parent, of this same
    // build (pool-ipc's bootstrap checked the executable and its code layout before calling
    // this function), so the address is that function's.
    let run = unsafe { std::mem::transmute::<usize, RunFn>(config.run.addr()) };
    let options = ConsumerOptions::new(
        &config.pool,
        &config.consumer,
        Fingerprint(config.fingerprint),
    )
    .lease(Duration::from_millis(config.lease_ms))
    .timeouts(Timeouts {
        connect: Duration::from_millis(config.connect_ms),
        io: Duration::from_millis(config.io_ms),
    });
    let block = Duration::from_millis(config.block_ms);
    let mut consumer = None;
    let mut backoff = Duration::from_millis(50);
    let mut out = Vec::new();
    // A chunk read along with the last outcome is run before the worker looks at a hang-up:
    // it is this worker's already, and would be failed as lost if left.
    while consumer.as_ref().is_some_and(Consumer::has_claimed) || !hung_up(&mut start.channel) {
        let worker = match &mut consumer {
            Some(worker) => worker,
            None => match Consumer::join(&config.url, options.clone()) {
                Ok(joined) => consumer.insert(joined),
                Err(e) => {
                    tell(&mut start.channel, &format!("cannot connect: {e}"));
                    pause(&mut backoff, block);
                    continue;
                }
            },
        };
        match worker.claim(block) {
            Ok(Some(entry)) => {
                backoff = Duration::from_millis(50);
                out.clear();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&entry.call, &entry.payload, &mut out)
                }));
                let error = match result {
                    Ok(Ok(())) => None,
                    Ok(Err(message)) => Some(message),
                    Err(panic) => Some(panic_message(&*panic)),
                };
                let outcome = match &error {
                    None => Ok(&out[..]),
                    Some(message) => Err(message.as_bytes()),
                };
                // The chunk ran: its outcome must be written, however long Redis is away
                // (the supervisor keeps its lease meanwhile).
                while let Err(e) = worker.complete(&entry, outcome) {
                    tell(
                        &mut start.channel,
                        &format!("cannot write an outcome yet: {e}"),
                    );
                    if hung_up(&mut start.channel) {
                        return 0;
                    }
                    pause(&mut backoff, block);
                }
            }
            Ok(None) => backoff = Duration::from_millis(50),
            Err(ClaimError::NoPool) => std::thread::sleep(block),
            Err(e @ (ClaimError::Foreign { .. } | ClaimError::Malformed { .. })) => {
                tell(&mut start.channel, &e.to_string());
            }
            Err(e) => {
                tell(&mut start.channel, &format!("cannot claim: {e}"));
                pause(&mut backoff, block);
            }
        }
    }
    0
}

/// Whether the supervisor hung up (it is stopping this worker).
fn hung_up(channel: &mut Channel) -> bool {
    let Some(fd) = channel.receiver().readable_fd() else {
        return false;
    };
    match pool_ipc::wait_readable(&[fd], Some(Instant::now())) {
        Ok(ready) if !ready.is_empty() => {
            let mut ignored = Vec::new();
            matches!(
                channel.recv_into(&mut ignored, Some(Instant::now())),
                Err(pool_ipc::RecvError::Disconnected)
            )
        }
        _ => false,
    }
}

/// Sends a line for the supervisor to log; dropped if it cannot be sent at once.
fn tell(channel: &mut Channel, text: &str) {
    let _ = channel.send(
        text.as_bytes(),
        Some(Instant::now() + Duration::from_millis(100)),
    );
}

/// Sleeps `backoff` (doubling it, up to `cap` and at most 1 s): Redis is away.
fn pause(backoff: &mut Duration, cap: Duration) {
    std::thread::sleep(*backoff);
    *backoff = (*backoff * 2)
        .min(cap.max(Duration::from_millis(50)))
        .min(Duration::from_secs(1));
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_string());
    format!("panicked: {text}")
}
