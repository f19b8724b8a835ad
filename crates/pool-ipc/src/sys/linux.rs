//! Linux: pidfds for supervision, `close_range` and `PR_SET_PDEATHSIG` for children, `poll`
//! for waits with deadlines.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::time::Instant;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitIdOptions};

use crate::ExitStatus;

/// Waits until one of `fds` is ready for `events` or `deadline` passes. Returns the index of
/// a ready descriptor (the lowest), or `None` on timeout. Interrupted waits are resumed.
pub(crate) fn poll_any(
    fds: &[BorrowedFd<'_>],
    events: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<Option<usize>> {
    let mut pollfds: Vec<PollFd<'_>> = fds.iter().map(|fd| PollFd::new(fd, events)).collect();
    loop {
        let timeout = match deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                Some(Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                }))
            }
        };
        match rustix::event::poll(&mut pollfds, timeout.as_ref()) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(None);
                }
            }
            Ok(_) => {
                return Ok(pollfds.iter().position(|p| !p.revents().is_empty()));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for one descriptor; `true` if ready, `false` on timeout.
pub(crate) fn poll_one(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    Ok(poll_any(&[fd], events, deadline)?.is_some())
}

/// A pidfd for a child of this process that has not been reaped (so its pid cannot have been
/// reused).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `signal` through the pidfd. A process that already exited is not an error.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    let signal = Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "unknown signal"))?;
    match rustix::process::pidfd_send_signal(pidfd, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the process if it has exited (`block: false`) or once it does (`block: true`).
pub(crate) fn pidfd_reap(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<ExitStatus>> {
    let mut options = WaitIdOptions::EXITED;
    if !block {
        options |= WaitIdOptions::NOHANG;
    }
    loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd), options) {
            Ok(None) => return Ok(None),
            Ok(Some(status)) => {
                let status = if let Some(code) = status.exit_status() {
                    ExitStatus::Code(code)
                } else if let Some(sig) = status.terminating_signal() {
                    ExitStatus::Signal(sig)
                } else {
                    // WEXITED only reports exits; anything else would be a kernel surprise.
                    return Err(io::Error::other(
                        "waitid reported a process that did not exit",
                    ));
                };
                return Ok(Some(status));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// What a freshly forked child does before `exec` (or before running a forked closure).
/// Everything here must be async-signal-safe: raw syscalls only, no allocation, no locks.
///
/// - every descriptor from 3 up becomes close-on-exec, then the ones in `keep` are cleared of
///   it, so the child inherits exactly stdio and its channel (not its siblings' channels,
///   which would keep a dead sibling's socket from reaching EOF);
/// - `PR_SET_PDEATHSIG(SIGKILL)`: the child dies with the thread that forked it, which is
///   why children are forked from the long-lived spawner thread; the bootstrap then checks
///   that the parent did not die before this was armed;
/// - SIGINT is ignored: Ctrl-C is the parent's to handle (an ignored signal stays ignored
///   across `exec`).
///
/// # Safety
/// Call only in the child between `fork` and `exec`.
pub(crate) unsafe fn in_child_after_fork(keep: &[RawFd]) -> io::Result<()> {
    // SAFETY: raw syscalls with valid arguments; close_range with CLOSE_RANGE_CLOEXEC only
    // sets flags.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        for &fd in keep {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Identity of the running executable: device, inode, size and modification time of
/// `/proc/self/exe`. A child started from `/proc/self/exe` has the same identity unless the
/// file was replaced in between, which is exactly the case to refuse.
pub(crate) fn executable_identity() -> io::Result<[u64; 5]> {
    let st = rustix::fs::stat("/proc/self/exe")?;
    Ok([
        st.st_dev,
        st.st_ino,
        u64::try_from(st.st_size).unwrap_or(0),
        u64::try_from(st.st_mtime).unwrap_or(0),
        st.st_mtime_nsec,
    ])
}

/// The executable's file, to re-execute. `/proc/self/exe` names the very file this process
/// runs, even if it was renamed or deleted since.
pub(crate) const SELF_EXE: &str = "/proc/self/exe";

/// The parent process id.
pub(crate) fn parent_pid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// The range of addresses `[start, end)` of the loaded object (executable or shared library)
/// that contains `addr`, from the dynamic loader's program headers.
pub(crate) fn object_range(addr: usize) -> Option<(usize, usize)> {
    struct Search {
        addr: usize,
        found: Option<(usize, usize)>,
    }
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid `info` for the duration of the call, and `data` is
        // the `Search` we passed to `dl_iterate_phdr` below, alive and exclusively ours.
        let (info, search) = unsafe { (&*info, &mut *data.cast::<Search>()) };
        let base = info.dlpi_addr as usize;
        let (mut lo, mut hi) = (usize::MAX, 0usize);
        for i in 0..usize::from(info.dlpi_phnum) {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD {
                lo = lo.min(base + ph.p_vaddr as usize);
                hi = hi.max(base + (ph.p_vaddr + ph.p_memsz) as usize);
            }
        }
        if lo <= search.addr && search.addr < hi {
            search.found = Some((lo, hi));
            return 1;
        }
        0
    }
    let mut search = Search { addr, found: None };
    // SAFETY: `visit` matches the callback type and only reads what the loader gives it;
    // `search` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&raw mut search).cast());
    }
    search.found
}
