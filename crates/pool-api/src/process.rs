//! Which process this is, as Python's `multiprocessing.current_process()` tells it.

use std::sync::OnceLock;

static NAME: OnceLock<String> = OnceLock::new();

/// The current process: its name and pid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// `MainProcess` in the program that started the pool, `PoolWorker-N` in a pool's worker.
    pub name: String,
    /// The process id.
    pub pid: u32,
}

/// The current process, like Python's `multiprocessing.current_process()`.
///
/// ```
/// assert_eq!(pool_api::current_process().name, "MainProcess");
/// ```
pub fn current_process() -> ProcessInfo {
    ProcessInfo {
        name: NAME
            .get()
            .cloned()
            .unwrap_or_else(|| "MainProcess".to_owned()),
        pid: std::process::id(),
    }
}

/// Names this process (once, at worker start).
pub(crate) fn set_current(name: String) {
    let _ = NAME.set(name);
}
