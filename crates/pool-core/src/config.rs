//! The pool's settings and their validation.

use core::fmt;
use core::time::Duration;

/// Settings of a [`Scheduler`](crate::Scheduler).
///
/// Build one with [`Config::new`] and adjust the public fields; [`Scheduler::new`]
/// validates it.
///
/// [`Scheduler::new`]: crate::Scheduler::new
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Number of worker processes (Python's `processes`). Must be at least 1.
    pub processes: u32,
    /// Chunks a worker may run before it is retired and replaced (Python's
    /// `maxtasksperchild`, which counts dispatched chunks). `None`: workers live as long as
    /// the pool. `Some(0)` is invalid.
    pub max_tasks_per_child: Option<u32>,
    /// Most chunks queued at one worker, the running one included. Above 1, the next chunk is
    /// already at the worker when one finishes, which hides the round trip for short tasks.
    /// Must be at least 1.
    pub chunks_per_worker: u32,
    /// A worker only gets more than one chunk at a time while the measured mean chunk time is
    /// at most this: for long tasks prefetching gains nothing and would make a chunk wait
    /// behind a long task. Until a chunk time has been measured, workers get one chunk. Below
    /// it, a worker's window holds about this much work (`prefetch_below / mean`, at least 2,
    /// at most `chunks_per_worker`).
    pub prefetch_below: Duration,
    /// Time limit of one chunk, counted from the moment the worker reports it started.
    /// `None`: no limit. A job may set its own.
    pub task_time_limit: Option<Duration>,
    /// Longest a worker may hold dispatched chunks without starting or finishing any. This
    /// catches a stopped worker that would otherwise sit on queued chunks. `None`: the task
    /// time limit of the chunk at the head of the worker's queue is used, if any.
    pub start_timeout: Option<Duration>,
    /// Consecutive initializer failures (a worker reported
    /// [`handle_worker_init_failed`](crate::Scheduler::handle_worker_init_failed)) after which
    /// the pool is *broken*: it stops respawning, fails the work it has not dispatched with
    /// [`ChunkFailure::InitializerFailed`](crate::ChunkFailure::InitializerFailed) and refuses
    /// new work. A start that fails for another reason (the spawn failed, the worker died or
    /// was killed before it was ready) does not count: it is retried with backoff (see
    /// [`Config::unavailable_after`]). A worker that becomes ready resets the count. Must be
    /// at least 1.
    pub max_failed_starts: u32,
    /// How long the pool may have no serving worker (none ready or finishing its chunks) while
    /// worker starts keep failing for reasons other than the initializer, before the work it
    /// holds fails. Past it, the chunks waiting in the queue, the items of its jobs not yet
    /// read, and the work submitted while the outage lasts fail with
    /// [`ChunkFailure::StartFailed`](crate::ChunkFailure::StartFailed) (the last start
    /// failure's reason). The pool never gives up: it keeps retrying with backoff (10 ms,
    /// doubling, at most 1 s, less a deterministic jitter of up to a quarter), and once a
    /// worker is ready again new work runs normally. A pool with a serving worker never fails
    /// work because replacements fail to start. Default 10 s.
    pub unavailable_after: Duration,
}

impl Config {
    /// Settings for a pool of `processes` workers, with every other setting at its default.
    pub fn new(processes: u32) -> Config {
        Config {
            processes,
            max_tasks_per_child: None,
            chunks_per_worker: 16,
            prefetch_below: Duration::from_millis(10),
            task_time_limit: None,
            start_timeout: None,
            max_failed_starts: 3,
            unavailable_after: Duration::from_secs(10),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.processes == 0 {
            return Err(ConfigError::ZeroProcesses);
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(ConfigError::ZeroMaxTasksPerChild);
        }
        if self.chunks_per_worker == 0 {
            return Err(ConfigError::ZeroChunksPerWorker);
        }
        if self.max_failed_starts == 0 {
            return Err(ConfigError::ZeroMaxFailedStarts);
        }
        Ok(())
    }
}

/// The largest chunk [`default_chunksize`] picks.
///
/// Python's formula alone makes a map of 100 M items into chunks of 12.5 M items on two
/// workers: each chunk's arguments and results are held whole (hundreds of MB at once), and
/// with one chunk per worker in flight nothing overlaps the encoding and the transfer of the
/// next. Above this size a chunk's fixed cost (dispatch, a wake-up each way) is already far
/// below 1% of its run time, so larger chunks only add memory and latency: capped, the cost
/// per item of a map stays the same from 1 M items to 100 M.
pub const MAX_DEFAULT_CHUNKSIZE: u32 = 1 << 17;

/// The default `map` chunk size: Python's `ceil(len / (4 × workers))`, at most
/// [`MAX_DEFAULT_CHUNKSIZE`], and 0 for empty input.
///
/// ```
/// use pool_core::{MAX_DEFAULT_CHUNKSIZE, default_chunksize};
///
/// assert_eq!(default_chunksize(10, 2), 2); // ceil(10 / 8)
/// assert_eq!(default_chunksize(1_000_000, 2), 125_000);
/// assert_eq!(default_chunksize(100_000_000, 2), MAX_DEFAULT_CHUNKSIZE); // not 12.5 M
/// assert_eq!(default_chunksize(0, 4), 0);
/// ```
pub fn default_chunksize(len: u64, workers: u32) -> u32 {
    let per = u64::from(workers.max(1)) * 4;
    let size = len.div_ceil(per).min(u64::from(MAX_DEFAULT_CHUNKSIZE));
    u32::try_from(size).expect("at most MAX_DEFAULT_CHUNKSIZE")
}

/// A setting that makes no sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `processes` is 0.
    ZeroProcesses,
    /// `max_tasks_per_child` is `Some(0)`.
    ZeroMaxTasksPerChild,
    /// `chunks_per_worker` is 0.
    ZeroChunksPerWorker,
    /// `max_failed_starts` is 0.
    ZeroMaxFailedStarts,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::ZeroProcesses => "the number of processes must be at least 1",
            ConfigError::ZeroMaxTasksPerChild => "maxtasksperchild must be at least 1",
            ConfigError::ZeroChunksPerWorker => "chunks per worker must be at least 1",
            ConfigError::ZeroMaxFailedStarts => "max failed starts must be at least 1",
        })
    }
}

impl core::error::Error for ConfigError {}
