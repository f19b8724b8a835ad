//! Start, supervise and talk to worker processes.
//!
//! `pool-core` decides *what* happens in a pool; this crate makes it happen with real
//! processes, and knows nothing of pools, jobs or chunks:
//!
//! - [`spawn`] starts a child by re-executing the current binary; the child recognises itself
//!   before `main` (in any binary, test, doc test, example or bench that links this crate,
//!   with no setup), checks that it is the same build, and runs the function it was given
//!   (a plain `fn`, identified by its offset in the executable: see [`FnId`]). With
//!   [`StartMethod::Forkserver`] the child is forked instead by a clean single-threaded helper
//!   (started by `spawn` on first use), which is faster and just as safe.
//! - [`fork`] runs a closure (capturing anything `Send`) in a forked copy of this process:
//!   the fastest start, with the hazards of forking a process that has threads.
//! - [`Child`] watches a child through its pidfd: its exit is noticed at once and reported as
//!   Python does ([`ExitStatus`]), signals never reach a reused pid, and nothing is left as a
//!   zombie. Children die with their parent (`PR_SET_PDEATHSIG`, armed from the main thread
//!   or a long-lived spawner thread).
//! - [`Channel`] moves messages over a transport chosen at run time ([`TransportKind`]): a
//!   socket pair with checked framing, or shared-memory rings.
//!
//! Errors are typed; OS errors are converted at this crate's boundary.

#![deny(missing_docs)]
// A `--cfg loom` build (the models) leaves the real futex and much else unused.
#![cfg_attr(loom, allow(dead_code, unused_imports))]

// The README is the crate's page on crates.io; its examples run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod child;
mod code;
mod fork_safety;
#[cfg(loom)]
#[doc(hidden)]
pub mod loom;
#[cfg(not(loom))]
mod loom;
pub mod os;
pub mod shared;
mod start;
mod sys;
pub mod transport;

pub use child::{Child, Killer, WatchGuard, on_readable};
pub use code::{FnId, NotInExecutable};
pub use start::{
    ChildMain, ChildStart, EXIT_BOOTSTRAP_FAILED, SpawnError, SpawnOptions, Spawned, StartMethod,
    fork, is_spawned_child, spawn,
};
pub use transport::{
    Channel, MessageReader, PeerDeath, ReadError, Receiver, RecvError, SendError, Sender,
    TransportKind,
};

/// Waits until at least one of `fds` is readable (data, end of file, or for a pidfd: the
/// process exited) or `deadline` passes; returns the indices of the readable ones (empty on
/// timeout). The building block of `multiprocessing.connection.wait`.
pub fn wait_readable(
    fds: &[std::os::fd::BorrowedFd<'_>],
    deadline: Option<std::time::Instant>,
) -> std::io::Result<Vec<usize>> {
    if sys::poll_any(fds, rustix::event::PollFlags::IN, deadline)?.is_none() {
        return Ok(Vec::new());
    }
    let now = Some(std::time::Instant::now());
    let mut ready = Vec::new();
    for (i, fd) in fds.iter().enumerate() {
        if sys::poll_one(*fd, rustix::event::PollFlags::IN, now)? {
            ready.push(i);
        }
    }
    Ok(ready)
}

/// How a process exited, as Python's `exitcode` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It exited, but how cannot be known: the kernel reaped it because this process ignores
    /// SIGCHLD (some daemons and embedding programs set it to `SIG_IGN`), or another part of
    /// the program reaped it with a `wait` of its own.
    Unknown,
}

impl ExitStatus {
    /// Python's `exitcode`: the code, or minus the signal number; `None` when unknown.
    pub fn python_exitcode(self) -> Option<i32> {
        match self {
            ExitStatus::Code(code) => Some(code),
            ExitStatus::Signal(sig) => Some(-sig),
            ExitStatus::Unknown => None,
        }
    }

    /// Whether this process's children are reaped by the kernel as they exit (SIGCHLD is
    /// ignored): their statuses will be [`ExitStatus::Unknown`], unless they are started by
    /// the forkserver, which reaps its children itself and relays their statuses.
    pub fn unknowable_for_children() -> bool {
        sys::children_auto_reaped()
    }

    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(sig) => write!(f, "killed by signal {sig}"),
            ExitStatus::Unknown => f.write_str("exit status unknown (reaped elsewhere)"),
        }
    }
}
