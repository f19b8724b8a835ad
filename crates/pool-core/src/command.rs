//! What the scheduler asks its driver to do, and the outcomes it reports.

use core::fmt;

use alloc::sync::Arc;

use crate::{Chunk, ChunkId, JobId, WorkerId};

/// An action for the driver, from [`Scheduler::poll_command`](crate::Scheduler::poll_command).
///
/// Commands must be carried out in the order they are polled. The ones that expect an answer
/// say which event reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a command the driver drops leaves the pool waiting for an event that never comes"]
pub enum Command {
    /// Start a worker process. Answer with
    /// [`handle_worker_started`](crate::Scheduler::handle_worker_started) once it is ready
    /// (its initializer ran), or with
    /// [`handle_worker_init_failed`](crate::Scheduler::handle_worker_init_failed); in every
    /// case report its exit with [`handle_worker_exited`](crate::Scheduler::handle_worker_exited).
    /// A spawn that fails (no process, or one that died before the driver got hold of it) is
    /// reported with [`handle_worker_start_failed`](crate::Scheduler::handle_worker_start_failed)
    /// instead of an exit.
    Spawn {
        /// The new worker's id.
        worker: WorkerId,
    },
    /// Read up to `max_items` items of the job's input as the chunk `chunk`, and answer with
    /// [`handle_pulled`](crate::Scheduler::handle_pulled).
    Pull {
        /// The chunk to fill.
        chunk: ChunkId,
        /// Index of the chunk's first item within the job.
        first_item: u64,
        /// Most items to read.
        max_items: u32,
    },
    /// Send the chunk to the worker. The worker reports
    /// [`handle_chunk_started`](crate::Scheduler::handle_chunk_started) and
    /// [`handle_chunk_finished`](crate::Scheduler::handle_chunk_finished).
    Dispatch {
        /// The worker.
        worker: WorkerId,
        /// The chunk.
        chunk: Chunk,
    },
    /// Ask the worker to give back a chunk it has not started, because another worker is
    /// idle. The worker answers with
    /// [`handle_recalled`](crate::Scheduler::handle_recalled), or starts the chunk anyway
    /// (a recall that arrives too late is simply moot). A driver may ignore recalls.
    Recall {
        /// The worker holding the chunk.
        worker: WorkerId,
        /// The chunk.
        chunk: ChunkId,
    },
    /// Tell the worker to exit once the chunks it holds are done (its `maxtasksperchild` is
    /// reached, or the pool is closed and drained).
    Retire {
        /// The worker.
        worker: WorkerId,
    },
    /// Kill the worker now (terminate, a time limit, a failed initializer).
    Kill {
        /// The worker.
        worker: WorkerId,
    },
    /// A chunk has ended. For [`ChunkOutcome::Finished`] the driver holds what the worker
    /// returned; for [`ChunkOutcome::Failed`] the scheduler says why. Each chunk ends exactly
    /// once, in the job's [`Delivery`](crate::Delivery) order.
    ChunkEnded {
        /// The chunk.
        chunk: Chunk,
        /// How it ended.
        outcome: ChunkOutcome,
    },
    /// Every chunk of the job has ended and been reported; the job is forgotten.
    JobFinished {
        /// The job.
        job: JobId,
    },
}

/// How a chunk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// The worker reported a result (which may itself be an error the task returned or a
    /// panic; that is in the driver's payload, not the scheduler's business).
    Finished,
    /// The chunk produced no result.
    Failed(ChunkFailure),
}

/// Why a chunk produced no result.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkFailure {
    /// The worker running the chunk exited.
    WorkerLost {
        /// The worker.
        worker: WorkerId,
        /// How it exited.
        status: ExitStatus,
    },
    /// The chunk ran past its time limit; its worker was killed.
    TimedOut {
        /// The worker that was killed.
        worker: WorkerId,
    },
    /// The pool was terminated before the chunk finished.
    Terminated,
    /// The job was cancelled before the chunk was dispatched.
    Cancelled,
    /// Workers could not be started; the message is the last initializer failure.
    InitializerFailed(Arc<str>),
    /// The pool had no serving worker for longer than
    /// [`Config::unavailable_after`](crate::Config::unavailable_after) while worker starts kept
    /// failing for a reason other than the initializer (the spawn failed, the worker died
    /// during start-up); the text is the last start failure's reason. The pool keeps retrying
    /// and recovers by itself.
    StartFailed(Arc<str>),
}

impl fmt::Display for ChunkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkFailure::WorkerLost { worker, status } => {
                write!(f, "{worker} was lost while running the task ({status})")
            }
            ChunkFailure::TimedOut { worker } => {
                write!(f, "the task exceeded its time limit; {worker} was killed")
            }
            ChunkFailure::Terminated => f.write_str("the pool was terminated"),
            ChunkFailure::Cancelled => f.write_str("the task was cancelled"),
            ChunkFailure::InitializerFailed(msg) => {
                write!(f, "the pool's worker initializer failed: {msg}")
            }
            ChunkFailure::StartFailed(reason) => {
                write!(f, "no worker of the pool could be started: {reason}")
            }
        }
    }
}

impl core::error::Error for ChunkFailure {}

/// How a process exited, as Python's `exitcode` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Python's `exitcode`: the code, or minus the signal number.
    ///
    /// ```
    /// use pool_core::ExitStatus;
    /// assert_eq!(ExitStatus::Code(3).python_exitcode(), 3);
    /// assert_eq!(ExitStatus::Signal(9).python_exitcode(), -9);
    /// ```
    pub fn python_exitcode(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(sig) => -sig,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// The pool's lifecycle, as [`Scheduler::lifecycle`](crate::Scheduler::lifecycle) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Taking work.
    Running,
    /// Closed: finishing the work it has, then retiring its workers.
    Closed,
    /// Terminated: work failed, workers killed; waiting for their exits.
    Terminated,
    /// Closed or terminated, with no work left and every worker's exit reported.
    Joined,
}

/// A call that the pool's lifecycle does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// `join` before `close` or `terminate`.
    StillRunning,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::StillRunning => {
                f.write_str("the pool is still running: call close or terminate before join")
            }
        }
    }
}

impl core::error::Error for StateError {}

/// An event from a worker that contradicts what the scheduler knows: the worker reports a
/// chunk it does not hold, or a start it already reported. The driver should treat the
/// worker as untrustworthy (kill it); the scheduler's state is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// The worker is not running or not known.
    UnknownWorker(WorkerId),
    /// The worker does not hold the chunk.
    UnknownChunk(WorkerId, ChunkId),
    /// The worker reported being ready twice.
    AlreadyStarted(WorkerId),
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolViolation::UnknownWorker(w) => write!(f, "{w} is not a live worker"),
            ProtocolViolation::UnknownChunk(w, c) => write!(f, "{w} does not hold {c}"),
            ProtocolViolation::AlreadyStarted(w) => write!(f, "{w} reported ready twice"),
        }
    }
}

impl core::error::Error for ProtocolViolation {}
