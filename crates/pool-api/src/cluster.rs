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
//! # A host with no code: `POOL_CLUSTER`
//!
//! Any program built with this feature becomes a host when started with `POOL_CLUSTER` set
//! to the Redis URL: before its `main` runs (which then never runs), it serves the pool
//! named by `POOL_CLUSTER_NAME` (default `pool`) with `POOL_CLUSTER_PROCESSES` worker
//! processes (default: its cores) until it is killed (SIGTERM, SIGINT; its workers die with
//! it), exactly as [`serve`] with [`options`] would:
//!
//! ```text
//! POOL_CLUSTER=redis://10.0.0.5:6379/0 POOL_CLUSTER_NAME=squares ./myapp
//! ```
//!
//! It exits with code 2 when the variables cannot be used (a bad name or process count, a
//! URL the client refuses) and 3 when the host fails; what went wrong is logged through
//! `tracing` if the program had installed a subscriber (it has not: its `main` never ran),
//! so check the variables against [`serve`]'s errors first.
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
//! - **No host of this build**: hosts announce themselves and their build in the pool's
//!   meta hash every third of their lease. Chunks that wait with no live host of the
//!   client's build for the start timeout
//!   ([`PoolBuilder::start_timeout`](crate::PoolBuilder::start_timeout), 60 s) fail with
//!   [`Error::NoCompatibleWorker`], which names this
//!   build's fingerprint and those of the live hosts of other builds (which never run its
//!   chunks). Chunks waiting for busy hosts of this build wait on.
//! - **The client dies**: its keys expire after their TTL
//!   ([`PoolBuilder::key_ttl`](crate::PoolBuilder::key_ttl), 30 s) and hosts go idle; nothing
//!   accumulates.
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

/// This executable's build fingerprint, computed once per process: the SHA-256 of the
/// linker's build id (the ELF `NT_GNU_BUILD_ID` note, itself a hash of the linked output)
/// and the file's size when the executable has one, else the SHA-256 of the whole file (a
/// 100 MB debug build takes seconds to hash that way). Every chunk carries its client's, and
/// a host runs only chunks of its own build.
pub fn fingerprint() -> Result<Fingerprint, Error> {
    static FINGERPRINT: OnceLock<Result<Fingerprint, std::sync::Arc<std::io::Error>>> =
        OnceLock::new();
    FINGERPRINT
        .get_or_init(|| compute_fingerprint().map_err(std::sync::Arc::new))
        .clone()
        .map_err(Error::Io)
}

fn compute_fingerprint() -> std::io::Result<Fingerprint> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open("/proc/self/exe")?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    if let Some(id) = build_id(&mut file) {
        hasher.update(b"build-id");
        hasher.update(&id);
        hasher.update(size.to_le_bytes());
        return Ok(Fingerprint(hasher.finalize().into()));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(Fingerprint(hasher.finalize().into()))
}

/// The GNU build id of a 64-bit little-endian ELF file, from its `PT_NOTE` segments.
fn build_id(file: &mut std::fs::File) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut header = [0u8; 64];
    file.read_exact(&mut header).ok()?;
    // ELF magic, 64-bit, little-endian.
    if header[..4] != *b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default());
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let phoff = u64_at(&header, 0x20);
    let phentsize = usize::from(u16_at(&header, 0x36));
    let phnum = usize::from(u16_at(&header, 0x38));
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut phdrs = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut phdrs).ok()?;
    for ph in phdrs.chunks_exact(phentsize) {
        // PT_NOTE, at most 64 KiB of notes.
        let (kind, offset, len) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 32));
        if kind != 4 || len > 1 << 16 {
            continue;
        }
        let mut notes = vec![0u8; usize::try_from(len).ok()?];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut notes).ok()?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = u32_at(&notes, at) as usize;
            let descsz = u32_at(&notes, at + 4) as usize;
            let kind = u32_at(&notes, at + 8);
            let name_at = at + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            let end = desc_at + descsz.div_ceil(4) * 4;
            if desc_at + descsz > notes.len() {
                break;
            }
            // NT_GNU_BUILD_ID, owner "GNU".
            if kind == 3 && notes[name_at..name_at + namesz].starts_with(b"GNU") && descsz >= 8 {
                return Some(notes[desc_at..desc_at + descsz].to_vec());
            }
            at = end;
        }
    }
    None
}

/// Options for a host serving the pool `name`, with this build's fingerprint and the run
/// function of pool's tasks: chain [`HostOptions::processes`] (default: the cores),
/// [`HostOptions::lease`], [`HostOptions::host_id`], [`HostOptions::stopper`].
pub fn options(name: &str) -> Result<HostOptions, Error> {
    std::hint::black_box(KEEP_HOOK);
    Ok(HostOptions::new(name, fingerprint()?, run_call))
}

/// Runs a host of this executable until `options`' stopper is triggered: worker processes
/// (this executable, re-executed) that run the chunks of every client of the pool's name.
/// Redis need not have the pool yet: the workers wait for a client.
pub fn serve(url: &str, options: HostOptions) -> Result<(), Error> {
    pool_cluster::serve(url, options).map_err(serve_error)
}

/// The environment variable that turns a program into a host before its `main` (see the
/// module's docs).
pub const CLUSTER_ENV: &str = "POOL_CLUSTER";

/// Before `main`: a program started with [`CLUSTER_ENV`] set serves the pool and exits,
/// without running `main`.
///
/// SAFETY (of running before `main`): it returns at once unless the variable is set (and
/// leaves a process started by pool-ipc's `spawn` to pool-ipc's own constructor); then it
/// uses what works before `main` on Linux (the environment, threads, sockets, allocation)
/// and never returns.
#[ctor::ctor(unsafe)]
fn serve_if_asked() {
    serve_if_asked_now();
}

/// Referenced by [`options`] and `PoolBuilder::redis`, which keeps the constructor's object
/// file linked into every program that can be a client or a host.
pub(crate) static KEEP_HOOK: fn() = serve_if_asked_now;

fn serve_if_asked_now() {
    if pool_ipc::is_spawned_child() {
        return;
    }
    let Some(url) = std::env::var_os(CLUSTER_ENV) else {
        return;
    };
    // SAFETY: before `main`, no other thread of this program exists yet. Removed so that
    // the host's own workers (this program, re-executed) and anything they start do not
    // become hosts in turn.
    unsafe { std::env::remove_var(CLUSTER_ENV) };
    std::process::exit(serve_from_env(url));
}

/// Serves as [`CLUSTER_ENV`] and its companions say; the process's exit code.
fn serve_from_env(url: std::ffi::OsString) -> i32 {
    // What std's runtime does before `main`, which has not run: a Redis connection closed
    // by the server must be an error, not SIGPIPE's death.
    let _ = pool_ipc::os::ignore_signal(pool_ipc::os::Signal::Pipe);
    let Some(url) = url.to_str() else {
        return 2;
    };
    let name = std::env::var("POOL_CLUSTER_NAME").unwrap_or_else(|_| "pool".into());
    let Ok(mut options) = options(&name) else {
        return 2;
    };
    if let Ok(text) = std::env::var("POOL_CLUSTER_PROCESSES") {
        match text.parse::<usize>() {
            Ok(n) if n > 0 => options = options.processes(n),
            _ => return 2,
        }
    }
    match serve(url, options) {
        Ok(()) => 0,
        Err(Error::InvalidArgument(_)) => 2,
        Err(e) => {
            crate::log::error!(error = %e, "the host started by POOL_CLUSTER failed");
            3
        }
    }
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
