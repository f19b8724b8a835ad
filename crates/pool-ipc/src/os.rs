//! The few process-wide OS facilities that crates built on pool-ipc need besides starting and
//! talking to children: exit and fork hooks, thread ids, signals by name, and telling apart
//! the OS errors they care about.
//!
//! They are here so that those crates need no `libc` of their own (and no `unsafe` but where
//! the contract is theirs to keep): the calls go through this crate's `sys` module, the one
//! place a port to another OS changes.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use crate::shared::ProcessIdentity;
use crate::sys;

/// Registers `f` to run when the process exits through `exit` (returning from `main`
/// included), after the handlers registered later, as C's `atexit` does. A process that
/// leaves with `_exit` or is killed does not run it, nor does a child forked by
/// [`fork`](crate::fork) (it ends with `_exit`).
///
/// ```
/// extern "C" fn goodbye() {
///     // Runs once the doc test's `main` has returned.
/// }
///
/// pool_ipc::os::at_exit(goodbye).unwrap();
/// ```
pub fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    sys::at_exit(f)
}

/// Gives the C library's free heap memory back to the system (glibc's `malloc_trim`; nothing
/// elsewhere). glibc keeps freed memory at the top of its heap for later allocations, up to a
/// threshold that grows with the largest block it has freed (32 MiB and more): a process that
/// freed large buffers and now waits, a pool's idle worker, calls this so that the memory it
/// no longer uses stops counting as its own. It walks the heap: call it when idle, not per
/// message.
pub fn release_free_memory() {
    sys::release_free_memory();
}

/// Asks the kernel to back the memory of `[start, start + len)` with huge pages (Linux's
/// `MADV_HUGEPAGE`, for the whole pages inside the range; nothing elsewhere). Only the way the
/// kernel backs the pages changes, never their contents, and a range that is not mapped is
/// ignored, so any range may be given.
///
/// Fresh memory is faulted in one page at a time: a vector of hundreds of MB that receives
/// results costs one fault per 4 KiB (~1.5 GiB/s here, more than the results' own copy);
/// with transparent huge pages in `madvise` mode (a common default) a 2 MiB page needs one.
pub fn prefer_huge_pages(start: *const u8, len: usize) {
    sys::prefer_huge_pages(start as usize, len);
}

/// Registers `f` to run in the child after every `fork` of this process (by
/// [`fork`](crate::fork), the forkserver or anyone calling the C library's `fork`), before
/// `fork` returns in the child: the place to forget per-process state (a cached pid) that the
/// child must not inherit.
///
/// # Safety
///
/// `f` runs in a copy of the process that has only the forking thread, where other threads'
/// locks stay locked: it must be async-signal-safe (store to atomics, make raw system calls;
/// no allocation, no locks, no printing) and sound to call at any fork for the rest of the
/// process's life.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// use pool_ipc::{ExitStatus, SpawnOptions, fork};
///
/// static FORKED: AtomicBool = AtomicBool::new(false);
///
/// unsafe extern "C" fn in_child() {
///     FORKED.store(true, Ordering::Relaxed);
/// }
///
/// // SAFETY: `in_child` only stores to an atomic.
/// unsafe { pool_ipc::os::after_fork_in_child(in_child) }.unwrap();
/// let mut forked = fork(
///     |_| i32::from(!FORKED.load(Ordering::Relaxed)),
///     &SpawnOptions::new(),
/// )
/// .unwrap();
/// assert_eq!(forked.child.wait().unwrap(), ExitStatus::Code(0));
/// assert!(!FORKED.load(Ordering::Relaxed));
/// ```
pub unsafe fn after_fork_in_child(f: unsafe extern "C" fn()) -> io::Result<()> {
    // SAFETY: the caller keeps the contract above, which is `sys`'s.
    unsafe { sys::after_fork_in_child(f) }
}

/// The calling thread's id: its kernel task id (`gettid`), unique among the live threads of
/// the whole system, so it names a thread across processes (a lock's owner, say). A process's
/// main thread has the process's pid.
///
/// ```
/// let here = pool_ipc::os::thread_id();
/// let there = std::thread::spawn(pool_ipc::os::thread_id).join().unwrap();
/// assert_ne!(here, there);
/// assert_eq!(pool_ipc::os::thread_id(), here);
/// ```
pub fn thread_id() -> u32 {
    sys::thread_id()
}

/// The process that started this program: this process, unless it was started by this
/// crate ([`spawn`](crate::spawn), the forkserver, [`fork`](crate::fork)), in which case its
/// parent's root. A program started any other way (`std::process::Command`, a shell) is a
/// program of its own, even a build of the same executable. Children started by this crate
/// die with their parent unless told otherwise, so when the root has ended its whole tree is
/// ending too; pool-api's shared-memory tracker uses this to know when a program is over.
/// If the root's start time cannot be read now (`/proc` unreadable), it is 0 and asked again
/// on the next call; a root that has already exited gets a start time no process has, so it
/// is never [alive](ProcessIdentity::is_alive).
///
/// ```
/// let root = pool_ipc::os::program_root();
/// assert_eq!(root.pid, std::process::id()); // a doc test is started by rustdoc
/// assert!(root.is_alive());
/// ```
pub fn program_root() -> ProcessIdentity {
    crate::start::root::program_root()
}

/// Ignores `signal` from now on (its disposition becomes `SIG_IGN`, which children inherit
/// across `exec`). For a helper process that must outlive a Ctrl-C or a `SIGTERM` sent to
/// its whole process group. `SIGKILL` and `SIGSTOP` cannot be ignored (an error).
///
/// ```
/// use pool_ipc::os::Signal;
///
/// assert!(pool_ipc::os::ignore_signal(Signal::Kill).is_err());
/// ```
pub fn ignore_signal(signal: Signal) -> io::Result<()> {
    sys::ignore_signal(signal.as_raw())
}

/// This process's real user id.
///
/// ```
/// let me = pool_ipc::os::user_id();
/// let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
/// use std::os::fd::AsFd;
/// assert_eq!(pool_ipc::os::peer_user_id(a.as_fd()).unwrap(), me);
/// ```
pub fn user_id() -> u32 {
    sys::user_id()
}

/// The user id of the process at the other end of a connected Unix socket (`SO_PEERCRED`,
/// taken when the peer connected or started listening): lets a server refuse other users'
/// clients, and a client a listener of another user, on an abstract address anyone may
/// bind or reach.
pub fn peer_user_id(socket: BorrowedFd<'_>) -> io::Result<u32> {
    sys::peer_user_id(socket)
}

/// Whether `error` says that the process it was about does not exist (`ESRCH`). A signal
/// through [`Killer::signal`](crate::Killer::signal) or [`Child::signal`](crate::Child::signal)
/// to a process that has exited is not an error at all: a pidfd still names it.
///
/// ```
/// use std::io;
///
/// assert!(pool_ipc::os::is_no_such_process(&io::Error::from_raw_os_error(libc::ESRCH)));
/// assert!(!pool_ipc::os::is_no_such_process(&io::Error::other("no")));
/// ```
pub fn is_no_such_process(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ESRCH)
}

/// Whether `error` says that an argument was invalid: `EINVAL` from the OS, or this crate's
/// own refusal of one ([`io::ErrorKind::InvalidInput`]), such as a signal number that is no
/// signal.
///
/// ```
/// use std::io;
///
/// assert!(pool_ipc::os::is_invalid_argument(&io::Error::from_raw_os_error(libc::EINVAL)));
/// assert!(!pool_ipc::os::is_invalid_argument(&io::Error::from_raw_os_error(libc::ESRCH)));
/// ```
pub fn is_invalid_argument(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EINVAL) || error.kind() == io::ErrorKind::InvalidInput
}

/// A signal, by name. Its number ([`Signal::as_raw`]) is the one the running OS gives it,
/// which is what [`Killer::signal`](crate::Killer::signal) and
/// [`Child::signal`](crate::Child::signal) take; [`ExitStatus::Signal`](crate::ExitStatus)
/// carries a number too, which `Signal::try_from` names.
///
/// ```
/// use pool_ipc::os::Signal;
///
/// let term = Signal::Term;
/// assert_eq!(term.to_string(), "SIGTERM");
/// assert_eq!(Signal::try_from(term.as_raw()), Ok(Signal::Term));
/// assert_eq!(Signal::try_from(9), Ok(Signal::Kill));
/// assert!(Signal::try_from(0).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGHUP`: the terminal hung up, or "reload".
    Hup,
    /// `SIGINT`: interrupt (Ctrl-C).
    Int,
    /// `SIGQUIT`: quit (Ctrl-\\), with a core dump.
    Quit,
    /// `SIGILL`: illegal instruction.
    Ill,
    /// `SIGTRAP`: trace or breakpoint trap.
    Trap,
    /// `SIGABRT`: `abort()`.
    Abrt,
    /// `SIGBUS`: bus error (a mapped file's page past its end, for one).
    Bus,
    /// `SIGFPE`: arithmetic exception.
    Fpe,
    /// `SIGKILL`: kill; cannot be caught, blocked or ignored.
    Kill,
    /// `SIGUSR1`: for the program's own use.
    Usr1,
    /// `SIGSEGV`: invalid memory access.
    Segv,
    /// `SIGUSR2`: for the program's own use.
    Usr2,
    /// `SIGPIPE`: write to a pipe or socket nobody reads.
    Pipe,
    /// `SIGALRM`: a timer set by `alarm` expired.
    Alrm,
    /// `SIGTERM`: polite termination.
    Term,
    /// `SIGCHLD`: a child stopped or exited.
    Chld,
    /// `SIGCONT`: continue if stopped.
    Cont,
    /// `SIGSTOP`: stop; cannot be caught, blocked or ignored.
    Stop,
    /// `SIGTSTP`: stop from the terminal (Ctrl-Z).
    Tstp,
    /// `SIGTTIN`: background read from the terminal.
    Ttin,
    /// `SIGTTOU`: background write to the terminal.
    Ttou,
    /// `SIGXCPU`: CPU time limit exceeded.
    Xcpu,
    /// `SIGXFSZ`: file size limit exceeded.
    Xfsz,
    /// `SIGWINCH`: the terminal's window changed size.
    Winch,
}

/// Every signal with its number and name, in the order of the enum.
const SIGNALS: [(Signal, i32, &str); 24] = [
    (Signal::Hup, libc::SIGHUP, "SIGHUP"),
    (Signal::Int, libc::SIGINT, "SIGINT"),
    (Signal::Quit, libc::SIGQUIT, "SIGQUIT"),
    (Signal::Ill, libc::SIGILL, "SIGILL"),
    (Signal::Trap, libc::SIGTRAP, "SIGTRAP"),
    (Signal::Abrt, libc::SIGABRT, "SIGABRT"),
    (Signal::Bus, libc::SIGBUS, "SIGBUS"),
    (Signal::Fpe, libc::SIGFPE, "SIGFPE"),
    (Signal::Kill, libc::SIGKILL, "SIGKILL"),
    (Signal::Usr1, libc::SIGUSR1, "SIGUSR1"),
    (Signal::Segv, libc::SIGSEGV, "SIGSEGV"),
    (Signal::Usr2, libc::SIGUSR2, "SIGUSR2"),
    (Signal::Pipe, libc::SIGPIPE, "SIGPIPE"),
    (Signal::Alrm, libc::SIGALRM, "SIGALRM"),
    (Signal::Term, libc::SIGTERM, "SIGTERM"),
    (Signal::Chld, libc::SIGCHLD, "SIGCHLD"),
    (Signal::Cont, libc::SIGCONT, "SIGCONT"),
    (Signal::Stop, libc::SIGSTOP, "SIGSTOP"),
    (Signal::Tstp, libc::SIGTSTP, "SIGTSTP"),
    (Signal::Ttin, libc::SIGTTIN, "SIGTTIN"),
    (Signal::Ttou, libc::SIGTTOU, "SIGTTOU"),
    (Signal::Xcpu, libc::SIGXCPU, "SIGXCPU"),
    (Signal::Xfsz, libc::SIGXFSZ, "SIGXFSZ"),
    (Signal::Winch, libc::SIGWINCH, "SIGWINCH"),
];

impl Signal {
    /// The signal's number on this OS.
    pub fn as_raw(self) -> i32 {
        SIGNALS[self as usize].1
    }

    /// Its name, as C spells it (`"SIGTERM"`).
    pub fn name(self) -> &'static str {
        SIGNALS[self as usize].2
    }
}

impl From<Signal> for i32 {
    fn from(signal: Signal) -> i32 {
        signal.as_raw()
    }
}

impl TryFrom<i32> for Signal {
    type Error = UnknownSignal;

    /// The signal with this number; real-time signals and numbers that are no signal are
    /// [`UnknownSignal`].
    fn try_from(raw: i32) -> Result<Signal, UnknownSignal> {
        SIGNALS
            .iter()
            .find(|(_, number, _)| *number == raw)
            .map(|(signal, _, _)| *signal)
            .ok_or(UnknownSignal(raw))
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A number that [`Signal`] does not name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{0} is not a signal this crate names")]
pub struct UnknownSignal(pub i32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_enum_order_and_numbers_are_distinct() {
        for (index, (signal, raw, name)) in SIGNALS.iter().enumerate() {
            assert_eq!(*signal as usize, index, "{name}");
            assert_eq!(Signal::try_from(*raw), Ok(*signal));
            assert_eq!(signal.to_string(), *name);
        }
        assert_eq!(Signal::Term.as_raw(), libc::SIGTERM);
        assert_eq!(i32::from(Signal::Kill), libc::SIGKILL);
        assert_eq!(Signal::try_from(-1), Err(UnknownSignal(-1)));
    }

    /// The `VmFlags` of the mapping of this process that holds `addr` (`/proc/self/smaps`).
    fn vm_flags_at(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            if let Some((lo, hi)) = range.filter(|_| line.contains(' ')) {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = (lo..hi).contains(&addr);
                    continue;
                }
            }
            match line.strip_prefix("VmFlags:") {
                Some(flags) if inside => return flags.to_owned(),
                _ => {}
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn a_range_asks_for_huge_pages_and_a_bad_one_is_ignored() {
        // 64 MiB: the C library maps it on its own, so its flags are its own.
        let buffer = vec![1u8; 64 << 20];
        let middle = buffer.as_ptr() as usize + (32 << 20);
        assert!(!vm_flags_at(middle).split_whitespace().any(|f| f == "hg"));
        prefer_huge_pages(buffer.as_ptr(), buffer.len());
        assert!(vm_flags_at(middle).split_whitespace().any(|f| f == "hg"));
        assert_eq!(
            buffer[middle - buffer.as_ptr() as usize],
            1,
            "contents unchanged"
        );
        // Not mapped, too short for a whole page, wrapping around: nothing happens.
        prefer_huge_pages(std::ptr::null(), 1 << 30);
        prefer_huge_pages(buffer.as_ptr(), 100);
        prefer_huge_pages(usize::MAX as *const u8, 4096);
    }
}
