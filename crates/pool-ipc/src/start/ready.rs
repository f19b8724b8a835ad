//! The "ready" byte of a forked child.
//!
//! A child forked by `fork` or by the forkserver writes one byte on a pipe once it is set up
//! and about to run its function; its parent waits for it with the handshake deadline. Both
//! start methods wait the same way, and read a child's death before that byte the same way.

use std::time::{Duration, Instant};

use super::types::SpawnError;
use crate::{Child, sys};

/// Waits for a forked child's "ready" byte on `ready`; a child that dies first gives its exit
/// status, one that stays silent past `deadline` is killed.
pub(crate) fn wait_ready(
    ready: std::os::fd::BorrowedFd<'_>,
    child: &mut Child,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), SpawnError> {
    let pid = child.pid();
    let failure = match sys::wait_ready(ready, deadline) {
        Ok(true) => return Ok(()),
        Ok(false) => match child.wait_timeout(Duration::from_secs(5)) {
            Ok(Some(status)) => SpawnError::ChildExited { pid, status },
            Ok(None) => SpawnError::Protocol {
                pid,
                reason: "closed its ready pipe without a word".into(),
            },
            Err(e) => SpawnError::Io(e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => SpawnError::Timeout { pid, timeout },
        Err(e) => SpawnError::Io(e),
    };
    let _ = child.kill();
    let _ = child.wait_timeout(Duration::from_secs(5));
    Err(failure)
}
