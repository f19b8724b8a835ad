//! What a job is: how its input arrives and how its results leave.

use core::fmt;
use core::num::NonZeroU32;
use core::time::Duration;

use alloc::sync::Arc;

/// Describes a job to [`Scheduler::submit`](crate::Scheduler::submit).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobSpec {
    /// Where the items come from and how they are cut into chunks.
    pub input: Input,
    /// In which order finished chunks are handed to the driver.
    pub delivery: Delivery,
    /// Most chunks of this job that may be pulled from the input and not yet released with
    /// [`Scheduler::handle_consumed`](crate::Scheduler::handle_consumed). This bounds the
    /// memory of a streamed job whose consumer is slower than the pool (`imap` over an endless
    /// iterator). `None`: no bound beyond the workers' own capacity.
    pub window: Option<NonZeroU32>,
    /// Time limit of each chunk of this job; overrides the pool's.
    pub time_limit: Option<Duration>,
}

impl JobSpec {
    /// One task (`apply`): a single chunk of one item, present at submission.
    pub fn single() -> JobSpec {
        JobSpec::new(Input::Single, Delivery::Ordered)
    }

    /// A job with the given input and delivery, no window and the pool's time limit.
    pub fn new(input: Input, delivery: Delivery) -> JobSpec {
        JobSpec {
            input,
            delivery,
            window: None,
            time_limit: None,
        }
    }

    /// Sets [`JobSpec::window`].
    pub fn with_window(mut self, window: Option<NonZeroU32>) -> JobSpec {
        self.window = window;
        self
    }

    /// Sets [`JobSpec::time_limit`].
    pub fn with_time_limit(mut self, limit: Option<Duration>) -> JobSpec {
        self.time_limit = limit;
        self
    }
}

/// How a job's items arrive.
///
/// Except for [`Input::Single`], the scheduler pulls chunks from the driver only when a worker
/// has room for them ([`Command::Pull`](crate::Command::Pull)), so input is read lazily.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// One item, already encoded by the driver (`apply`, `apply_async`).
    Single,
    /// A known number of items (`map`, `starmap`). `chunksize: None` picks Python's default
    /// capped for huge inputs, [`default_chunksize`](crate::default_chunksize). Zero items finish the job at once.
    Sized {
        /// Number of items.
        items: u64,
        /// Items per chunk; `Some(0)` is an error.
        chunksize: Option<u32>,
    },
    /// Items of unknown number, possibly endless (`imap` over an iterator). The input ends
    /// when the driver answers a pull with fewer items than asked.
    Stream {
        /// Items per chunk; 0 is an error.
        chunksize: u32,
    },
}

/// In which order a job's chunks are handed to the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// In input order (`map`, `imap`): a finished chunk waits for the ones before it.
    Ordered,
    /// As they finish (`imap_unordered`).
    Unordered,
}

/// Why a submission was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubmitError {
    /// The pool was closed; it takes no more work.
    Closed,
    /// The pool was terminated.
    Terminated,
    /// Worker initialization failed repeatedly; the message is the last failure's.
    InitializerFailed(Arc<str>),
    /// A chunk size of 0 was asked for.
    ZeroChunksize,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::Closed => f.write_str("the pool is closed"),
            SubmitError::Terminated => f.write_str("the pool was terminated"),
            SubmitError::InitializerFailed(msg) => {
                write!(f, "the pool's worker initializer failed: {msg}")
            }
            SubmitError::ZeroChunksize => f.write_str("chunksize must be at least 1"),
        }
    }
}

impl core::error::Error for SubmitError {}
