//! The scheduling state machine of a process pool, with no I/O.
//!
//! A process pool has two hard parts: deciding (which worker gets which chunk, when a worker
//! is replaced, how every task ends when workers crash, stall or are killed) and doing
//! (starting processes, moving bytes). This crate is the deciding part, written like
//! `quinn-proto`: a [`Scheduler`] fed with events (a job submitted, a worker started, a chunk
//! finished, a worker exited, a deadline passed, ...) that answers with [`Command`]s (spawn a
//! worker, dispatch a chunk, kill a worker, a chunk ended, ...). It never spawns, never reads
//! a clock, never touches a file descriptor: time is passed in as [`Time`]. The crate is
//! `#![no_std]` (with `alloc`), so the compiler itself keeps the OS out.
//!
//! That is what makes it testable to the bone: the property tests drive it with simulated
//! workers and a virtual clock through arbitrary sequences of submissions, crashes, stalls,
//! closes and terminations, checking after every step that every task ends exactly once.
//!
//! `pool-api` drives it with real processes from `pool-ipc`; any other driver (threads, a
//! remote backend) can drive it the same way.
//!
//! ```
//! use pool_core::{ChunkOutcome, Command, Config, JobSpec, Scheduler, Time};
//!
//! let now = Time::ZERO;
//! let mut pool = Scheduler::new(Config::new(1), now).unwrap();
//! let Some(Command::Spawn { worker }) = pool.poll_command() else { unreachable!() };
//! pool.handle_worker_started(worker, now).unwrap();
//!
//! let job = pool.submit(JobSpec::single(), now).unwrap();
//! let Some(Command::Dispatch { chunk, .. }) = pool.poll_command() else { unreachable!() };
//! // ... the driver sends the chunk's arguments to the worker, which reports back:
//! pool.handle_chunk_started(worker, chunk.id, now).unwrap();
//! pool.handle_chunk_finished(worker, chunk.id, now).unwrap();
//! assert_eq!(
//!     pool.poll_command(),
//!     Some(Command::ChunkEnded { chunk, outcome: ChunkOutcome::Finished })
//! );
//! assert_eq!(pool.poll_command(), Some(Command::JobFinished { job }));
//! ```
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

mod command;
mod config;
mod ids;
mod job;
mod scheduler;
mod time;

pub use command::{
    ChunkFailure, ChunkOutcome, Command, ExitStatus, Lifecycle, ProtocolViolation, StateError,
};
pub use config::{Config, ConfigError, MAX_DEFAULT_CHUNKSIZE, default_chunksize};
pub use ids::{Chunk, ChunkId, JobId, WorkerId};
pub use job::{Delivery, Input, JobSpec, SubmitError};
pub use scheduler::{Scheduler, Stats, WorkerState};
pub use time::Time;

// The README is the crate's page on crates.io; its example runs as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
