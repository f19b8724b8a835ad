//! The program's root: the process that started this program, which children started by
//! this crate inherit.
//!
//! A process that was not started by this crate (its constructor found no bootstrap) is the
//! root of its own program; a child started by [`spawn`](crate::spawn) receives its
//! parent's root in the bootstrap (so a forkserver's children have it too, from the
//! forkserver); a child made by [`fork`](crate::fork) has its parent's copy of these
//! statics. A program started any other way (`std::process::Command`, a shell) is a program
//! of its own, even when it is a build of the same executable.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::shared::ProcessIdentity;

/// The root's pid; 0 until the constructor ran.
static ROOT_PID: AtomicU32 = AtomicU32::new(0);
/// The root's start time; 0 until known (looked up on first use).
static ROOT_START: AtomicU64 = AtomicU64::new(0);

/// This process is the root of its program (called by the constructor, before `main`).
pub(super) fn this_process_is_root() {
    ROOT_PID.store(std::process::id(), Ordering::Relaxed);
}

/// The root is the parent's (called by a spawned child's bootstrap, before `main`).
pub(super) fn inherit(root: ProcessIdentity) {
    ROOT_PID.store(root.pid, Ordering::Relaxed);
    ROOT_START.store(root.start, Ordering::Relaxed);
}

/// See [`os::program_root`](crate::os::program_root).
pub(crate) fn program_root() -> ProcessIdentity {
    let pid = match ROOT_PID.load(Ordering::Relaxed) {
        // A constructor that did not run (a platform without them): on its own.
        0 => std::process::id(),
        pid => pid,
    };
    let start = ROOT_START.load(Ordering::Relaxed);
    if start != 0 {
        return ProcessIdentity { pid, start };
    }
    // Looked up once. Only a forked child of a root that never looked reaches the lookup of
    // another process; its parent (an ancestor, alive when it forked) is then the root.
    let start = match ProcessIdentity::lookup(pid) {
        Ok(Some(id)) => id.start,
        // Gone: a start time no process has, so the identity is never alive.
        Ok(None) => u64::MAX,
        // Cannot tell now: not cached, asked again next time.
        Err(_) => return ProcessIdentity { pid, start: 0 },
    };
    let _ = ROOT_START.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    ProcessIdentity {
        pid,
        start: ROOT_START.load(Ordering::Relaxed),
    }
}
