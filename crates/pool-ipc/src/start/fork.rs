//! The `fork` start method: a closure in a forked copy of this process.
//!
//! [`spawn`](crate::spawn) can only start a function the child finds by identity; a closure
//! that captures values cannot travel. Forking copies the whole process instead, so the child
//! simply has the closure and everything it captured, and starts in a fraction of the time.
//! The price is Unix's: the child is a copy of a process that may have had other threads.
//!
//! # How
//!
//! Everything the child needs (its channel end, the closure, a "ready" pipe) is built in the
//! parent, then the main thread or the long-lived spawner thread forks (so that
//! `PR_SET_PDEATHSIG` outlives the caller's thread, as for `spawn`). Between `fork` and the
//! closure the child makes only async-signal-safe calls: it drops the descriptors that belong
//! to other children and the parent's end of its own channel (see below), arms
//! `PR_SET_PDEATHSIG`
//! (and checks that the parent did not die before), empties its signal mask, ignores SIGINT,
//! puts stdin on `/dev/null`, writes its "ready" byte, and runs the closure. The parent waits
//! for that byte with a deadline; end of file instead means the child died, and its status is
//! the error. The child ends with `_exit`: no `atexit` handler of the parent runs in it.
//!
//! # Descriptors
//!
//! The child keeps the descriptors the parent had (as Python's `os.fork` and `fork` start
//! method do), because the closure may own some: a captured `File`, a socket, a pipe end or
//! a lock handle keeps working, and nothing in the child can ever close or reuse a descriptor
//! that a captured value still owns. The exceptions are pool-ipc's own descriptors for other
//! children (see `fork_safety`): the child ends of channels being handed to a child at that
//! instant, and the parent's ends of every child's channel. The child replaces those by
//! `/dev/null` (the numbers stay taken, so a value that owns one meets `/dev/null`, never
//! another file), so a sibling's channel still reaches end of file when the sibling dies or
//! the parent drops its end. Children started by `spawn` or the forkserver inherit nothing
//! of the sort, by construction.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use super::ready::wait_ready;
use super::spawner;
use super::types::{ChildStart, EXIT_BOOTSTRAP_FAILED, SpawnError, SpawnOptions, Spawned};
use crate::fork_safety::{Private, lock_in_flight};
use crate::transport::{Channel, TransportKind};
use crate::{Child, sys};

/// What the child owns, built in the parent before the fork.
struct ChildParts {
    start: ChildStart,
    ready: OwnedFd,
}

/// A fork request for the thread that forks (see `spawner::run`).
struct Job {
    main: Box<dyn FnOnce(ChildStart) -> i32 + Send>,
    parts: Private<ChildParts>,
    /// Descriptors of the parent's ends, which the child closes.
    parents_ends: Vec<RawFd>,
    /// Filled (before the fork) with every descriptor the child closes.
    to_close: Vec<RawFd>,
    parent: u32,
}

/// Runs `main` in a child forked from this process, with a channel to it; returns once the
/// child is running `main`. `main` may capture anything `Send + 'static`; its return value is
/// the child's exit code (a panic exits with code 1 after the panic message is printed). The
/// child ends with `_exit` when `main` returns: no `atexit` handler runs in it, but stdout and
/// stderr are flushed.
///
/// From `options` it takes the transport, the handshake deadline, the name
/// ([`ChildStart::name`]) and the descriptors to inherit (duplicates, in
/// [`ChildStart::inherited`]); [`ChildStart::payload`] is empty (capture what you need).
/// [`SpawnOptions::program`] is refused, and the start method does not apply.
///
/// # Hazards
///
/// The child is a copy of this process, in which only the forking thread exists. This is safe
/// in the Rust sense (nothing here is undefined behaviour), but a program with threads should
/// know what the copy does not have:
///
/// - **Locks held by other threads at the fork stay locked forever in the child.** If another
///   thread was writing to stdout or stderr (their locks), logging (a logger's lock), or
///   holding any `Mutex` the closure then takes, the child blocks on it. glibc's `malloc` is
///   fork-safe (its locks are reset in the child); allocators that are not cannot be used
///   with `fork`. pool-ipc's own state is kept per process, and stdout is flushed before the
///   fork so the child does not print the parent's buffered output a second time.
/// - **Other threads' work does not exist in the child**: a thread pool, an async runtime or
///   a pool's threads are gone, so a captured handle to them (a `Pool`, a runtime handle)
///   does not work there. Capture data and plain handles.
/// - **Descriptors are inherited**: the child holds copies of the parent's open files and
///   sockets until it exits (except pool-ipc's channels to other children, which it does not
///   hold), so a peer of one of them may not see end of file while the child lives. Close
///   what the child does not need, or start long-lived children with
///   [`spawn`](crate::spawn) or the forkserver.
/// - Called on the main thread, the child runs on a copy of it. Called on another thread, the
///   child runs on a copy of pool-ipc's spawner thread: `std::thread::current()` is named
///   `pool-ipc-spawner` there, and its stack is 8 MiB.
///
/// When the parent has threads and the child must be long-lived or run arbitrary libraries,
/// prefer [`StartMethod::Forkserver`](crate::StartMethod::Forkserver).
///
/// A child forked from the main thread is a copy of it:
///
/// ```
/// use pool_ipc::{ExitStatus, SpawnOptions, fork};
///
/// let on_main = |_| i32::from(std::thread::current().name() != Some("main"));
/// let mut forked = fork(on_main, &SpawnOptions::new()).unwrap();
/// assert_eq!(forked.child.wait().unwrap(), ExitStatus::Code(0));
/// ```
///
/// ```
/// use pool_ipc::{ExitStatus, SpawnOptions, fork};
///
/// let greeting = String::from("hello from the parent");
/// let mut forked = fork(
///     move |mut start| {
///         start.channel.send(greeting.as_bytes(), None).unwrap();
///         3
///     },
///     &SpawnOptions::new(),
/// )
/// .unwrap();
/// let mut got = Vec::new();
/// forked.channel.recv_into(&mut got, None).unwrap();
/// assert_eq!(got, b"hello from the parent");
/// assert_eq!(forked.child.wait().unwrap(), ExitStatus::Code(3));
/// ```
pub fn fork<F>(main: F, options: &SpawnOptions) -> Result<Spawned, SpawnError>
where
    F: FnOnce(ChildStart) -> i32 + Send + 'static,
{
    if options.program.is_some() {
        return Err(SpawnError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "SpawnOptions::program needs the spawn start method",
        )));
    }
    if !options.die_with_parent {
        return Err(SpawnError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "SpawnOptions::die_with_parent(false) needs the spawn start method",
        )));
    }
    let deadline = Instant::now() + options.handshake_timeout;
    // As Python does before forking: the child must not print our buffered output again.
    let _ = std::io::stdout().flush();
    // What the child may need and would otherwise initialise lazily, behind a lock another
    // thread might hold at the fork.
    crate::code::warm_up();
    let (parts, (channel, ready)) = Private::create(
        || {
            let (mine, theirs) = Channel::pair(options.transport)?;
            let (ready, ready_child) = sys::pipe()?;
            let inherited = options
                .inherit
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<std::io::Result<Vec<_>>>()?;
            let start = ChildStart {
                channel: theirs,
                payload: Vec::new(),
                name: options.name.clone(),
                inherited,
            };
            Ok((
                ChildParts {
                    start,
                    ready: ready_child,
                },
                (mine, ready),
            ))
        },
        |parts: &ChildParts| {
            let mut fds = parts.start.channel.raw_fds();
            fds.push(parts.ready.as_raw_fd());
            fds.extend(parts.start.inherited.iter().map(AsRawFd::as_raw_fd));
            fds
        },
    )?;
    let mut channel = channel;
    channel.hide_from_forked_children();
    let mut parents_ends = channel.raw_fds();
    parents_ends.push(ready.as_raw_fd());
    let job = Job {
        main: Box::new(main),
        parts,
        to_close: Vec::new(),
        parents_ends,
        parent: std::process::id(),
    };
    let (forked, job) = spawner::run(move || fork_on_this_thread(job))?;
    // Our copies of the child's parts go (a shared-memory end is not closed: the child's copy
    // is the live one); so does the closure, whose captured values now live in the child.
    let Job { main, parts, .. } = job;
    parts.release_with(|parts| {
        parts.start.channel.forget_copy();
        drop(parts.start.inherited);
        drop(parts.ready);
    });
    drop(main);
    let pid = forked?;
    let mut child = match Child::from_pid(pid) {
        Ok(child) => child,
        Err(e) => {
            sys::kill_and_reap_unreaped(pid);
            return Err(e.into());
        }
    };
    wait_ready(
        ready.as_fd(),
        &mut child,
        deadline,
        options.handshake_timeout,
    )?;
    if options.transport == TransportKind::Shm {
        // A futex wait cannot watch the child: the watcher wakes it when the child dies.
        child.notify_on_exit(channel.peer_death())?;
    }
    Ok(Spawned { child, channel })
}

/// On the main thread or the spawner thread: forks. Returns the child's pid and the job (for
/// the caller to dispose of); in the child, runs it and never returns.
fn fork_on_this_thread(mut job: Job) -> (std::io::Result<u32>, Job) {
    // Held across the fork: no descriptor is created or closed in flight meanwhile, so the
    // list of those the child must close is exact.
    let mut in_flight = lock_in_flight();
    let own = job.parts.fds();
    let to_close: Vec<RawFd> = in_flight
        .iter()
        .copied()
        .filter(|fd| !own.contains(fd))
        .chain(job.parents_ends.iter().copied())
        .collect();
    job.to_close = to_close;
    // SAFETY: the child below makes only async-signal-safe calls until it runs `main`: raw
    // syscalls, clearing a `Vec` (no deallocation) and unlocking a mutex its own thread holds.
    match unsafe { sys::fork() } {
        Ok(None) => {
            // The child's copy of the registry lists the parent's descriptors in flight, which
            // it is about to close.
            in_flight.clear();
            drop(in_flight);
            run_child(job)
        }
        Ok(Some(pid)) => {
            drop(in_flight);
            (Ok(pid), job)
        }
        Err(e) => {
            drop(in_flight);
            (Err(e), job)
        }
    }
}

/// The child's side; see the module documentation.
fn run_child(job: Job) -> ! {
    let Job {
        main,
        parts,
        to_close,
        parent,
        ..
    } = job;
    // SAFETY: these descriptors belong to the parent's other children or to the parent's
    // ends of children's channels; whatever still owns them here finds `/dev/null` there.
    unsafe { sys::blank_out(&to_close) };
    // SAFETY: we are the freshly forked child.
    if !unsafe { sys::forked_child_setup(parent) } {
        sys::exit_now(EXIT_BOOTSTRAP_FAILED);
    }
    let ChildParts { start, ready } = parts.into_inner_in_child();
    // SAFETY: `ready` is ours alone; ownership passes to the call, which closes it.
    if !unsafe { sys::signal_ready(std::os::fd::IntoRawFd::into_raw_fd(ready)) } {
        sys::exit_now(EXIT_BOOTSTRAP_FAILED);
    }
    // Not freed: the process ends soon, and freeing is not needed for anything.
    std::mem::forget(to_close);
    // From here on, user code: the hazards are documented on `fork`.
    let code =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || main(start))).unwrap_or(1);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_now(code)
}
