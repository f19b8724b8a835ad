//! Beyond one machine: the same [`Pool`](crate::Pool) with its chunks run by worker
//! processes on any number of hosts, through Redis Streams (feature `cluster`).
//!
//! A *client* builds its pool with [`PoolBuilder::redis`](crate::PoolBuilder::redis); every
//! method and error is the local pool's. A *host* is the same executable calling [`serve`]
//! (or [`start`]) with the pool's name: it runs N worker processes (default: its cores),
//! each pulling chunks through the pool's consumer group, supervised (a worker that dies is
//! replaced, its chunk failed at once). Functions travel by identity, so every host must run
//! the very same build: chunks carry the client's build [`fingerprint`], and a host of
//! another build never runs them (it leaves them for a host that matches and logs both
//! fingerprints).
//!
//! ```no_run
//! use pool_api::{Pool, cluster};
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let url = "redis://127.0.0.1:6379/0";
//! if std::env::args().any(|a| a == "--worker") {
//!     // On every host: serve the pool "squares" until stopped.
//!     cluster::serve(url, cluster::options("squares")?.processes(4))?;
//! } else {
//!     let pool = Pool::builder().redis(url).name("squares").build()?;
//!     assert_eq!(pool.map(square, 1..=10)?.iter().sum::<u64>(), 385);
//! }
//! # Ok::<(), pool_api::Error>(())
//! ```
//!
//! # What differs from a local pool
//!
//! - **Handles** (`Queue`, `Lock`, `Pipe` ends, `SharedMemory`, ...) are local to one
//!   machine: as task arguments they fail at submission with [`Error::InvalidArgument`].
//! - **Time limits** count from the chunk's submission to Redis (the client cannot see when
//!   a remote worker starts it); a chunk past its limit fails with [`Error::TimedOut`] and is
//!   deleted from Redis if no host took it yet (a running one runs on, its result dropped).
//! - **No initializer, no `max_tasks_per_child`** on the client: a host sets itself up
//!   before it serves. `worker_pids` is empty and `signal_worker` finds no worker: the
//!   workers are other hosts' processes.
//! - **A worker that dies mid-task** fails its chunk with [`Error::WorkerLost`] (pid 0: the
//!   pid is on another host), reported at once by its host, which replaces it.
//! - **A host that vanishes** (SIGKILL, network gone) stops renewing its leases; after the
//!   lease (10 s by default) other hosts take its chunks over. Those it had not started run
//!   elsewhere, exactly once; those it had started fail with [`Error::WorkerLost`], or, with
//!   [`PoolBuilder::retries`](crate::PoolBuilder::retries) for idempotent work, run again
//!   elsewhere. A chunk whose every try killed its worker (*poisoned*) fails with
//!   [`Error::WorkerLost`] too. Every item has exactly one outcome.
//!   [`Pool::stats`](crate::Pool::stats) counts `reclaimed` and `retried` chunks.
//! - **Redis unreachable or restarted** mid-job: the chunks in Redis fail with
//!   [`Error::Broker`] within the Redis timeout
//!   ([`PoolBuilder::redis_timeout`](crate::PoolBuilder::redis_timeout), 5 s); once the
//!   pool's keys are gone (a restart) every later task fails with it too: build a new pool.
//! - **The client dies**: its keys expire 30 s later and hosts go idle; nothing accumulates.
//!
//! # Security
//!
//! Anyone who can write to the Redis instance can make the workers run any function of the
//! binary with any arguments (a chunk names its function by its place in the executable).
//! Redis must be private to the cluster: bind it to a private network, require a password or
//! an ACL user (`redis://user:password@host:6379/0`), and use `rediss://` (pool-cluster's
//! `tls` feature) across untrusted networks.

use std::sync::OnceLock;

use pool_cluster::ServeError;
pub use pool_cluster::{Fingerprint, Host, HostOptions, HostStats, Stopper, Timeouts};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::task::Call;

/// This executable's build fingerprint: the SHA-256 of its file, read once per process.
/// Every chunk carries its client's, and a host runs only chunks of its own build.
pub fn fingerprint() -> Result<Fingerprint, Error> {
    static FINGERPRINT: OnceLock<Result<Fingerprint, std::sync::Arc<std::io::Error>>> =
        OnceLock::new();
    FINGERPRINT
        .get_or_init(|| {
            use std::io::Read;
            let mut file = std::fs::File::open("/proc/self/exe")?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                match file.read(&mut buf)? {
                    0 => break,
                    n => hasher.update(&buf[..n]),
                }
            }
            Ok(Fingerprint(hasher.finalize().into()))
        })
        .clone()
        .map_err(Error::Io)
}

/// Options for a host serving the pool `name`, with this build's fingerprint and the run
/// function of pool's tasks: chain [`HostOptions::processes`] (default: the cores),
/// [`HostOptions::lease`], [`HostOptions::host_id`], [`HostOptions::stopper`].
pub fn options(name: &str) -> Result<HostOptions, Error> {
    Ok(HostOptions::new(name, fingerprint()?, run_call))
}

/// Runs a host of this executable until `options`' stopper is triggered: worker processes
/// (this executable, re-executed) that run the chunks of every client of the pool's name.
/// Redis need not have the pool yet: the workers wait for a client.
pub fn serve(url: &str, options: HostOptions) -> Result<(), Error> {
    pool_cluster::serve(url, options).map_err(serve_error)
}

/// [`serve`] without waiting: the host runs until its [`Host::stop`] (or drop).
pub fn start(url: &str, options: HostOptions) -> Result<Host, Error> {
    Host::start(url, options).map_err(serve_error)
}

fn serve_error(e: ServeError) -> Error {
    match e {
        ServeError::Name(e) => Error::InvalidArgument(e.to_string()),
        other => Error::Broker(std::sync::Arc::new(other)),
    }
}

/// What a host's workers run for each chunk: the client's `Call` and its encoded arguments,
/// as a local worker runs them; the worker's pid follows the results (for
/// [`Error::Panicked`]'s `pid`).
fn run_call(call: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    // The panic's location for the task's result, as in a local worker.
    HOOK.call_once(crate::task::install_panic_hook);
    let call: Call =
        postcard::from_bytes(call).map_err(|e| format!("cannot decode the task's call: {e}"))?;
    // SAFETY of what `run` does: the chunk carried this build's fingerprint (checked by the
    // host before anything runs), so the call's ids name functions of this executable, as
    // a local pool's do; Redis must be private to the cluster (see the module's docs).
    call.run(payload, out)?;
    out.extend_from_slice(&std::process::id().to_le_bytes());
    Ok(())
}
