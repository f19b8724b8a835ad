//! Linux: pidfds for supervision, `close_range` and `PR_SET_PDEATHSIG` for children, `poll`
//! for waits with deadlines, memfds, `mmap` and shared futexes for shared memory.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

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
            // Not waitable: reaped already by the kernel (this process ignores SIGCHLD) or by
            // someone else's `wait`. If it exited (its pidfd is readable), its status is lost.
            Err(rustix::io::Errno::CHILD) => {
                let exited = poll_one(pidfd, PollFlags::IN, Some(Instant::now()))?;
                return Ok(exited.then_some(ExitStatus::Unknown));
            }
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
        die_with_parent_ignoring_sigint()?;
    }
    Ok(())
}

/// `PR_SET_PDEATHSIG(SIGKILL)` and SIGINT ignored: what every child starts with, whether it
/// does so before `exec` ([`in_child_after_fork`]) or after ([`child_setup_after_exec`]).
/// Async-signal-safe.
fn die_with_parent_ignoring_sigint() -> io::Result<()> {
    // SAFETY: prctl and signal with valid arguments.
    unsafe {
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
        // A parent that ignores SIGCHLD passes that on across `exec`; our children reap their
        // own children (a forkserver's workers, a worker's `Process`) and need their statuses.
        if libc::signal(libc::SIGCHLD, libc::SIG_DFL) == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts `program` with `env` (`KEY=value` strings) as its whole environment and no
/// arguments but its name, with glibc's `posix_spawn`, which starts the child with
/// `clone(CLONE_VM | CLONE_VFORK)`: this process's page tables are not copied, so the start
/// does not grow with this process's memory (fork + exec from a parent with 130 MiB touched
/// took ~20 ms here, against ~1.6 ms). The child inherits the descriptors in `keep` (their
/// close-on-exec flag is cleared in the child only: a `dup2` onto itself) and any without
/// that flag, which its bootstrap closes (`close_all_except`); stdin is `/dev/null`; SIGINT
/// is blocked, and the bootstrap ignores it before unblocking it (`child_setup_after_exec`).
/// Returns the child's pid.
pub(crate) fn posix_spawn(
    program: &std::ffi::CStr,
    env: &[std::ffi::CString],
    keep: &[RawFd],
) -> io::Result<u32> {
    fn check(r: libc::c_int) -> io::Result<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(r))
        }
    }
    let argv = [program.as_ptr(), std::ptr::null()];
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: the actions and attributes are initialised before use and destroyed once; the
    // argument and environment arrays are null-terminated and outlive the call, as do the
    // strings they point to; `pid` and the signal sets are plain out-parameters.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(e);
        }
        let result = (|| {
            for &fd in keep {
                check(libc::posix_spawn_file_actions_adddup2(&mut actions, fd, fd))?;
            }
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            let mut mask: libc::sigset_t = std::mem::zeroed();
            check(libc::pthread_sigmask(
                libc::SIG_SETMASK,
                std::ptr::null(),
                &mut mask,
            ))?;
            libc::sigaddset(&mut mask, libc::SIGINT);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &mask))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr,
                libc::POSIX_SPAWN_SETSIGMASK as libc::c_short,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv.as_ptr().cast::<*mut libc::c_char>(),
                envp.as_ptr().cast::<*mut libc::c_char>(),
            ))?;
            Ok(pid as u32)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}

/// What a child started by [`posix_spawn`] sets up first, where a forked child did it between
/// `fork` and `exec` ([`in_child_after_fork`]): `PR_SET_PDEATHSIG(SIGKILL)` (the bootstrap
/// then checks that the parent did not die before it was armed), SIGINT ignored, then
/// unblocked (a Ctrl-C that came in between was pending, and is discarded). Harmless in a
/// child that was forked: it had all of this already.
pub(crate) fn child_setup_after_exec() -> io::Result<()> {
    die_with_parent_ignoring_sigint()?;
    // SAFETY: sigprocmask with valid arguments; the signal set is ours.
    unsafe {
        let mut sigint: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut sigint);
        libc::sigaddset(&mut sigint, libc::SIGINT);
        if libc::sigprocmask(libc::SIG_UNBLOCK, &sigint, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Ignores SIGPIPE, as std's runtime does before `main`: a write to a closed pipe or socket
/// then fails with `EPIPE` instead of killing the process.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_IGN is always sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Whether `fd` is an open descriptor of this process.
pub(crate) fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// Marks `fd` close-on-exec, so that children this process starts do not inherit it.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: setting FD_CLOEXEC on an open descriptor (borrowed, so open for the call).
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// Identity of the running executable: device, inode, size and modification time of
/// `/proc/self/exe`. A child started from `/proc/self/exe` has the same identity unless the
/// file was replaced in between, which is exactly the case to refuse.
pub(crate) fn executable_identity() -> io::Result<[u64; 5]> {
    let st = rustix::fs::stat("/proc/self/exe")?;
    // A `u64` with rustix's raw-syscall backend, an `i64` with its libc one (under Miri).
    #[allow(clippy::unnecessary_cast)]
    Ok([
        st.st_dev,
        st.st_ino,
        u64::try_from(st.st_size).unwrap_or(0),
        u64::try_from(st.st_mtime).unwrap_or(0),
        st.st_mtime_nsec as u64,
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

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Forks the calling process: `Ok(None)` in the child, `Ok(Some(pid))` in the parent.
///
/// Through the C library's `fork`, so that its `atfork` handlers run (glibc's keep `malloc`
/// usable in the child).
///
/// # Safety
/// In the child of a multi-threaded process only the calling thread exists: until it calls
/// user code (whose hazards are documented), it must make only async-signal-safe calls.
pub(crate) unsafe fn fork() -> io::Result<Option<u32>> {
    // SAFETY: the caller upholds the contract above.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid as u32)),
    }
}

/// Whether the calling thread is the process's main thread, whose end is the process's end
/// (a Rust program's `main` returning exits the process).
pub(crate) fn on_main_thread() -> bool {
    rustix::thread::gettid() == rustix::process::getpid()
}

/// The calling thread's id (its kernel task id: unique among the live threads of the whole
/// system).
pub(crate) fn thread_id() -> u32 {
    rustix::thread::gettid().as_raw_nonzero().get() as u32
}

/// Returns the C library's free heap memory to the system, where it can (glibc).
pub(crate) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only releases memory the allocator holds free; it takes the
    // allocator's own locks and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn prefer_huge_pages(start: usize, len: usize) {
    const PAGE: usize = 4096;
    let (Some(first), Some(end)) = (start.checked_next_multiple_of(PAGE), start.checked_add(len))
    else {
        return;
    };
    let end = end & !(PAGE - 1);
    if end <= first {
        return;
    }
    // SAFETY: `MADV_HUGEPAGE` changes how the kernel backs the pages of the range, never
    // their contents or protection, so no memory of this process changes under anyone's feet;
    // a range (partly) not mapped fails with ENOMEM, which changes nothing either.
    unsafe {
        libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
    }
}

/// Registers `f` to run when the process exits through `exit` (returning from `main`
/// included), as C's `atexit` does.
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: registers a plain `extern "C" fn()`, which has no preconditions, with the C
    // library.
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::other("atexit: no room for another handler"));
    }
    Ok(())
}

/// Registers `f` to run in the child after every `fork` through the C library, before `fork`
/// returns there.
///
/// # Safety
/// `f` runs in a child that has only the forking thread: it must be async-signal-safe and
/// sound to call with no arguments at any fork, for the rest of the process's life.
pub(crate) unsafe fn after_fork_in_child(f: unsafe extern "C" fn()) -> io::Result<()> {
    // SAFETY: the caller vouches for `f` as above; the other two hooks are none.
    match unsafe { libc::pthread_atfork(None, None, Some(f)) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Exits at once, without running `atexit` handlers or flushing anything: what a forked child
/// does when its work is done (the handlers belong to the parent), or when it cannot start.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Kills and reaps `pid`, a child of this process that has not been reaped (so the pid
/// cannot have been reused), when no pidfd could be had for it.
pub(crate) fn kill_and_reap_unreaped(pid: u32) {
    // SAFETY: plain syscalls on our own unreaped child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
}

/// What a freshly forked child that does not `exec` sets up before running anything: the same
/// environment a spawned child gets (see [`in_child_after_fork`]) except for descriptors:
/// `PR_SET_PDEATHSIG(SIGKILL)`, then a check that `parent` (the pid that forked us) did not die
/// before it was armed, an empty signal mask, SIGINT ignored, stdin on `/dev/null`.
/// Async-signal-safe. `false` if something failed: the caller exits.
///
/// # Safety
/// Call only in a freshly forked child.
pub(crate) unsafe fn forked_child_setup(parent: u32) -> bool {
    // SAFETY: raw syscalls with valid arguments; `set` and the path are valid for the calls.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return false;
        }
        if libc::getppid() as u32 != parent {
            // The parent died before PR_SET_PDEATHSIG was armed: nobody wants us.
            return false;
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return false;
        }
        if libc::signal(libc::SIGINT, libc::SIG_IGN) == libc::SIG_ERR {
            return false;
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if null < 0 {
            return false;
        }
        // dup2 clears close-on-exec on the copy.
        let ok = libc::dup2(null, 0) == 0;
        libc::close(null);
        ok
    }
}

/// Replaces each descriptor of `fds` by `/dev/null` (`dup2`, which closes what it named).
/// The numbers stay taken, so a value that still owns one (say, captured by a forked
/// closure) never closes or uses a file opened later under its number: it just finds
/// `/dev/null` there. Async-signal-safe.
///
/// # Safety
/// Call it in a forked child, on descriptors whose files this process must not hold.
pub(crate) unsafe fn blank_out(fds: &[RawFd]) {
    // SAFETY: raw syscalls on descriptor numbers; see the contract above.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        for &fd in fds {
            if null < 0 {
                libc::close(fd);
            } else if fd != null {
                // Only where something is open: a number never opened stays free.
                if libc::fcntl(fd, libc::F_GETFD) >= 0 {
                    libc::dup3(null, fd, libc::O_CLOEXEC);
                }
            }
        }
        if null >= 0 {
            libc::close(null);
        }
    }
}

/// Closes every descriptor from 3 up except those in `keep` (sorted ascending): `close_range`
/// over the gaps, or, on kernels without it (before 5.9), every descriptor listed in
/// `/proc/self/fd`. Async-signal-safe (no allocation). `false` if it could not be done.
///
/// # Safety
/// Nothing that will run in this process may use the closed descriptors again: call it in a
/// forked child that is about to run code which owns only the kept ones.
pub(crate) unsafe fn close_all_except(keep: &[RawFd]) -> bool {
    let mut low: u32 = 3;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < low {
            continue;
        }
        if fd > low {
            // SAFETY: as the function's contract says.
            if unsafe { close_range(low, fd - 1) }.is_err() {
                // SAFETY: as above.
                return unsafe { close_listed_except(keep) };
            }
        }
        low = fd + 1;
    }
    // SAFETY: as above.
    match unsafe { close_range(low, u32::MAX) } {
        Ok(()) => true,
        // SAFETY: as above.
        Err(_) => unsafe { close_listed_except(keep) },
    }
}

/// `close_range(first, last, 0)`.
///
/// # Safety
/// As for [`close_all_except`].
unsafe fn close_range(first: u32, last: u32) -> Result<(), i32> {
    // SAFETY: a raw syscall with plain integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The fallback of [`close_all_except`]: walks `/proc/self/fd` with raw `getdents64` into a
/// buffer on the stack, closing as it goes (the directory lists descriptors in order, and
/// closing one does not disturb the walk).
///
/// # Safety
/// As for [`close_all_except`].
pub(crate) unsafe fn close_listed_except(keep: &[RawFd]) -> bool {
    // SAFETY: raw syscalls on a directory descriptor we opened, reading into our own buffer;
    // every record read is inside the bytes the kernel returned.
    unsafe {
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return false;
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = libc::syscall(
                libc::SYS_getdents64,
                dir,
                buf.as_mut_ptr(),
                buf.len() as libc::c_ulong,
            );
            if n < 0 {
                libc::close(dir);
                return false;
            }
            if n == 0 {
                break;
            }
            let n = n as usize;
            let mut at = 0;
            // A record: inode (8), offset (8), record length (2), type (1), NUL-ended name.
            while at + 19 < n {
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if reclen == 0 || at + reclen > n {
                    break;
                }
                let mut fd: i64 = 0;
                let mut digits = 0;
                for &b in &buf[at + 19..at + reclen] {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    fd = fd * 10 + i64::from(b - b'0');
                    digits += 1;
                }
                if digits > 0 {
                    if let Ok(fd) = RawFd::try_from(fd) {
                        if fd >= 3 && fd != dir && keep.binary_search(&fd).is_err() {
                            libc::close(fd);
                        }
                    }
                }
                at += reclen;
            }
        }
        libc::close(dir);
        true
    }
}

/// Writes one byte to `fd`, then closes it: a forked child's "ready" to its parent.
/// Async-signal-safe.
///
/// # Safety
/// `fd` must be open and owned by nothing that will use it again.
pub(crate) unsafe fn signal_ready(fd: RawFd) -> bool {
    let byte = 1u8;
    // SAFETY: writing one byte from a valid buffer, then closing the caller's descriptor.
    unsafe {
        let ok = loop {
            match libc::write(fd, (&raw const byte).cast(), 1) {
                1 => break true,
                -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
                _ => break false,
            }
        };
        libc::close(fd);
        ok
    }
}

/// Waits until the child's "ready" byte arrives on `fd` (`Ok(true)`), the pipe reaches end of
/// file because the child is gone without sending it (`Ok(false)`), or `deadline` passes
/// (`Err(TimedOut)`).
pub(crate) fn wait_ready(fd: BorrowedFd<'_>, deadline: Instant) -> io::Result<bool> {
    loop {
        if !poll_one(fd, PollFlags::IN, Some(deadline))? {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut byte = [0u8; 1];
        match rustix::io::read(fd, &mut byte) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stream sockets carrying descriptors.
// ---------------------------------------------------------------------------------------

/// Whether `fd` is a stream socket.
pub(crate) fn is_stream_socket(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::net::sockopt::socket_type(fd)? == rustix::net::SocketType::STREAM)
}

/// The size of the control buffer that carries `n` descriptors with one message.
pub(crate) const fn space_for_fds(n: usize) -> usize {
    rustix::cmsg_space!(ScmRights(n))
}

/// Sends the bytes of `iov` on `socket` with duplicates of `fds` attached to the first one,
/// `space` being at least [`space_for_fds`]`(fds.len())` bytes; returns how many bytes went.
/// A peer that is gone is `EPIPE`, never a SIGPIPE. Without `nonblocking`, it waits for room.
/// The error is the bare errno, for the caller to tell "try again" from "gone".
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    iov: &[io::IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
    space: &mut [std::mem::MaybeUninit<u8>],
    nonblocking: bool,
) -> rustix::io::Result<usize> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    let mut control = SendAncillaryBuffer::new(space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        // `space` is too small for `fds`: the caller's sizing is wrong.
        return Err(rustix::io::Errno::NOBUFS);
    }
    rustix::net::sendmsg(socket, iov, &mut control, flags)
}

/// Receives what is there (without waiting) into `into`, and the descriptors that came with
/// it (close-on-exec) at the end of `fds`; `space` is the control buffer, sized with
/// [`space_for_fds`]. `Ok(0)` is the end of the stream. The error is the bare errno.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    into: &mut [u8],
    space: &mut [std::mem::MaybeUninit<u8>],
    fds: &mut std::collections::VecDeque<OwnedFd>,
) -> rustix::io::Result<usize> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    let mut control = RecvAncillaryBuffer::new(space);
    let got = rustix::net::recvmsg(
        socket,
        &mut [io::IoSliceMut::new(into)],
        &mut control,
        flags,
    );
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    got.map(|msg| msg.bytes)
}

/// Receives what is there (without waiting) into `into`; `Ok(0)` is the end of the stream.
/// The error is the bare errno.
pub(crate) fn recv_nonblocking(
    socket: BorrowedFd<'_>,
    into: &mut [std::mem::MaybeUninit<u8>],
) -> rustix::io::Result<usize> {
    rustix::net::recv(socket, into, rustix::net::RecvFlags::DONTWAIT).map(|(_, n)| n)
}

// ---------------------------------------------------------------------------------------
// Shared memory and futexes.
// ---------------------------------------------------------------------------------------

/// A new anonymous memfd of `len` zero bytes, close-on-exec, sealed against shrinking,
/// growing and further sealing: no process it is passed to can shrink it under another's
/// mapping (touching a page past the end of a file is a `SIGBUS`, not an error).
pub(crate) fn sealed_memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// A new anonymous memfd of `len` zero bytes, close-on-exec, sealed against shrinking and
/// further sealing but free to grow: a mapping of any prefix stays valid, and the file can be
/// made longer for a larger mapping.
pub(crate) fn growable_memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::SEAL)?;
    Ok(fd)
}

/// Whether `fd` is sealed against shrinking; an error if it cannot carry seals (not a memfd).
pub(crate) fn sealed_against_shrinking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    Ok(rustix::fs::fcntl_get_seals(fd)?.contains(rustix::fs::SealFlags::SHRINK))
}

/// The size of the file `fd` refers to, as the kernel reports it (signed).
pub(crate) fn file_size(fd: BorrowedFd<'_>) -> io::Result<i64> {
    Ok(rustix::fs::fstat(fd)?.st_size)
}

/// Sets the size of the file `fd` refers to.
pub(crate) fn set_file_size(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    Ok(rustix::fs::ftruncate(fd, len as u64)?)
}

/// Gives the `len` bytes at `offset` of the file back to the system (they read as zeros
/// afterwards), keeping its size.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset as u64,
        len as u64,
    )?;
    Ok(())
}

/// Creates the POSIX shared-memory segment `/dev/shm/NAME` (`name` is `/NAME`), readable and
/// writable by this user only; fails if it exists.
pub(crate) fn shm_create(name: &str) -> io::Result<OwnedFd> {
    use rustix::shm::OFlags;
    Ok(rustix::shm::open(
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )?)
}

/// Opens the existing POSIX shared-memory segment `name` (`/NAME`) for reading and writing.
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::shm::open(
        name,
        rustix::shm::OFlags::RDWR,
        rustix::fs::Mode::empty(),
    )?)
}

/// Removes the POSIX shared-memory segment `name` (`/NAME`).
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    Ok(rustix::shm::unlink(name)?)
}

/// Maps the first `len` bytes of `fd`, readable, writable and shared with every process that
/// maps the same file. The caller makes sure the file is at least `len` bytes long for as
/// long as the mapping lives (a sealed or freshly sized file), since an access past its end
/// is a `SIGBUS`; unmap it with [`unmap`].
pub(crate) fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<NonNull<u8>> {
    map_shared_at(fd, 0, len)
}

/// [`map_shared`] of the `len` bytes of `fd` from `offset` (a multiple of the page size).
pub(crate) fn map_shared_at(
    fd: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<NonNull<u8>> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh mapping (null hint, no MAP_FIXED) cannot alias any existing memory;
    // `fd` is open for the duration of the call.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            fd,
            offset,
        )?
    };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmaps a mapping made by [`map_shared`].
///
/// # Safety
/// `base` and `len` are exactly what [`map_shared`] returned and was given, the range is
/// unmapped once, and no reference into it is used afterwards.
pub(crate) unsafe fn unmap(base: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: per the caller, the whole range is a mapping of ours that nothing uses anymore.
    unsafe { rustix::mm::munmap(base.as_ptr().cast(), len) }?;
    Ok(())
}

/// Sleeps while `*word == expected`, until woken, `timeout` passes or a signal interrupts:
/// `Ok(false)` when the timeout passed, `Ok(true)` otherwise (including a word that no longer
/// held `expected`: the kernel checks it atomically with queueing the sleeper, so a wake-up
/// between the caller's last look and this call is not lost). The shared kind of futex (no
/// `FUTEX_PRIVATE_FLAG`): the kernel keys it on the page, so sleepers and wakers may be in
/// different processes that map the word.
pub(crate) fn futex_wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    use rustix::thread::futex;
    let timeout = timeout.map(|left| {
        futex::Timespec::try_from(left).unwrap_or(futex::Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        })
    });
    match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) | Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(true),
        Err(rustix::io::Errno::TIMEDOUT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Wakes up to `n` sleepers on `word` (in any process); `u32::MAX` wakes them all.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) {
    use rustix::thread::futex;
    // The kernel reads the count as a signed int: `u32::MAX` would arrive as -1 and wake one.
    let n = n.min(i32::MAX as u32);
    let _ = futex::wake(word, futex::Flags::empty(), n);
}

/// Undoes `PR_SET_PDEATHSIG`: this process keeps running when its parent thread exits.
pub(crate) fn disarm_parent_death_signal() -> io::Result<()> {
    // SAFETY: prctl with valid arguments (signal 0 clears the setting).
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `signal`'s disposition to "ignore".
pub(crate) fn ignore_signal(signal: i32) -> io::Result<()> {
    // SAFETY: setting a disposition to SIG_IGN is always sound; an invalid number is EINVAL.
    if unsafe { libc::signal(signal, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process's children are reaped by the kernel as they exit (SIGCHLD set to
/// `SIG_IGN`, or `SA_NOCLDWAIT`): then their exit statuses cannot be read.
pub(crate) fn children_auto_reaped() -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGCHLD, std::ptr::null(), &mut old) != 0 {
            return false;
        }
        old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0
    }
}

/// The real user id of this process.
pub(crate) fn user_id() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The user id of the peer of a connected Unix socket (`SO_PEERCRED`: the peer's
/// credentials when it connected or listened).
pub(crate) fn peer_user_id(socket: BorrowedFd<'_>) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a `ucred` we own.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forks; in the child, runs `check` (async-signal-safe code only) and exits with its
    /// answer; returns whether it said yes.
    fn in_a_forked_child(check: fn() -> bool) -> bool {
        // SAFETY: the child below only makes raw syscalls, then `_exit`s.
        match unsafe { fork() }.unwrap() {
            None => exit_now(if check() { 0 } else { 1 }),
            Some(pid) => {
                let mut status = 0;
                // SAFETY: waiting for our own child, with a valid out pointer.
                unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            }
        }
    }

    fn open_null() -> RawFd {
        // SAFETY: opening a path given as a C string literal.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) }
    }

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only inspects the descriptor table.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn closing_all_but_some_descriptors_works_with_and_without_close_range() {
        fn check(fallback: bool) -> bool {
            let fds = [open_null(), open_null(), open_null(), open_null()];
            let keep = [fds[1], fds[3]];
            // SAFETY: in a forked child that uses nothing but `fds` afterwards.
            let done = unsafe {
                if fallback {
                    close_listed_except(&keep)
                } else {
                    close_all_except(&keep)
                }
            };
            done && (0..3).all(is_open)
                && !is_open(fds[0])
                && is_open(fds[1])
                && !is_open(fds[2])
                && is_open(fds[3])
        }
        assert!(in_a_forked_child(|| check(false)));
        assert!(in_a_forked_child(|| check(true)));
    }
}
