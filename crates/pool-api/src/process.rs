//! `Process` (the builder) and `ProcessHandle` (the started child): one function in a child
//! process, with Python's lifecycle and its value returned by `join`; and which process this
//! is (`current_process`, `active_children`).
//!
//! As in Python, a started process whose handle is dropped keeps running: the program's
//! normal exit waits for such non-daemon children and terminates daemon ones (an `atexit`
//! handler, like Python's `multiprocessing` registers), and children that exit meanwhile are
//! reaped at once (the pidfd watcher), so none lingers as a zombie.
//!
//! [`Process::fork`] runs a closure in a forked child (pool-ipc's `fork`). What this module
//! keeps per process (the current name, the registry of children) is therefore lock-free or
//! keyed by pid: a forked child starts with its own name and no children, and never finds a
//! lock held by one of its parent's threads.

use std::marker::PhantomData;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::os::fd::{BorrowedFd, OwnedFd};

use pool_ipc::ExitStatus;
use pool_ipc::os::Signal;
use pool_ipc::{Child, ChildStart, Killer, SpawnOptions, StartMethod};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::task::{self, Call};
use crate::{Error, handles};

/// This process's name, once set (leaked: readers may hold it). Lock-free, so that a forked
/// child can set its own.
static NAME: AtomicPtr<String> = AtomicPtr::new(std::ptr::null_mut());

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
    // SAFETY: a non-null pointer comes from `Box::into_raw` in `set_current` and is never
    // freed.
    let name = unsafe { NAME.load(Ordering::Acquire).as_ref() };
    ProcessInfo {
        name: name.cloned().unwrap_or_else(|| "MainProcess".to_owned()),
        pid: std::process::id(),
    }
}

/// Names this process (at worker or forked child start).
pub(crate) fn set_current(name: String) {
    // The previous name is leaked, not freed: another thread may be reading it.
    NAME.store(Box::into_raw(Box::new(name)), Ordering::Release);
}

/// The `exitcode` of [`Error::WorkerLost`] when the exit status cannot be read (this program
/// ignores SIGCHLD, or another part of it reaped the child).
pub(crate) const UNKNOWN_EXITCODE: i32 = -1;

/// Numbers `Process-N` names, as Python does.
static NEXT_NUMBER: AtomicU64 = AtomicU64::new(1);

#[derive(Serialize, Deserialize)]
struct ProcessBoot {
    name: String,
    call: Call,
    args: Vec<u8>,
}

/// The entry point of `Process` children: runs the target and sends its outcome (its value,
/// or its panic) to the parent as one message, the encoded `[Result<R, Panic>]` of a chunk
/// of one.
fn process_main(mut start: ChildStart) -> i32 {
    let Ok(boot) = postcard::from_bytes::<ProcessBoot>(&start.payload) else {
        return pool_ipc::EXIT_BOOTSTRAP_FAILED;
    };
    set_current(boot.name);
    // std's default panic hook prints the panic to this child's stderr, as Python prints the
    // traceback of an exception in the target; the exit code is then 1, as in Python.
    let mut out = Vec::new();
    // The handles in the arguments (pipe ends, locks, ...) find their inherited descriptors.
    let inherited = std::mem::take(&mut start.inherited);
    if handles::with_descriptors(inherited, || boot.call.run(&boot.args, &mut out)).is_err() {
        return 1;
    }
    send_outcome(&mut start.channel, &out)
}

/// Sends a target's encoded outcome to the parent; the exit code: 0 for a value, 1 for a
/// panic (Python's exit code of a target that raised) or an outcome that could not be sent.
fn send_outcome(channel: &mut pool_ipc::Channel, outcome: &[u8]) -> i32 {
    let returned = matches!(task::outcome_is_value(outcome), Ok(true));
    if channel.send(outcome, None).is_err() || !returned {
        return 1;
    }
    0
}

/// The entry point of `Process::fork` children (in the forked child).
fn forked_main(name: String, target: ForkTarget, mut start: ChildStart) -> i32 {
    set_current(name);
    let code = (target.0)(&mut start.channel);
    // The child ends without running its parent's `atexit` handlers; Python's forked child
    // still waits for its own children (`_exit_function`), and so does this one.
    registry::exit_function();
    code
}

/// The closure of a [`Process::fork`], with the encoding of its value, until it is started.
struct ForkTarget(Box<dyn FnOnce(&mut pool_ipc::Channel) -> i32 + Send>);

impl std::fmt::Debug for ForkTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForkTarget")
    }
}

/// What a [`Process`] will run once started.
#[derive(Debug)]
enum Target {
    /// A function by identity, in a spawned (or forkserver-forked) child: the encoded
    /// [`ProcessBoot`] and the descriptors of the handles in its arguments.
    Spawn {
        boot: ProcessBoot,
        fds: Vec<OwnedFd>,
    },
    /// A closure in a child forked from this process.
    Fork(ForkTarget),
}

impl std::fmt::Debug for ProcessBoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessBoot")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A function to run in a child process, not yet started: Python's
/// `multiprocessing.Process` before `start()`, as a builder. [`start`](Process::start)
/// consumes it and returns the [`ProcessHandle`] of the running child, whose
/// [`join`](ProcessHandle::join) returns the function's value, as
/// `std::thread::JoinHandle::join` does for a thread.
///
/// ```
/// use pool_api::Process;
///
/// fn greet(name: String) -> String {
///     format!("hello, {name}")
/// }
///
/// let child = Process::new(greet, "test".to_string())?.start()?;
/// assert_eq!(child.join()?, "hello, test");
/// # Ok::<(), pool_api::Error>(())
/// ```
///
/// Python's lifecycle is on the handle: [`wait`](ProcessHandle::wait) (Python's `join`,
/// which keeps the handle), [`exitcode`](ProcessHandle::exitcode),
/// [`is_alive`](ProcessHandle::is_alive), [`terminate`](ProcessHandle::terminate),
/// [`kill`](ProcessHandle::kill).
///
/// # At exit
///
/// As in Python, a started process whose handle is dropped keeps running, and the program's
/// normal exit (returning from `main`, or `std::process::exit`) waits for such non-daemon
/// children and terminates daemon ones (a C `atexit` handler, registered when the first
/// process starts). A process that must not hold up the exit is made a
/// [`daemon`](Process::daemon).
#[derive(Debug)]
pub struct Process<R = ()> {
    name: String,
    daemon: bool,
    target: Target,
    /// How a [`Process::new`] child starts (`None`: spawn).
    start_method: Option<StartMethod>,
    result: PhantomData<fn() -> R>,
}

impl Process {
    /// A process that will run `target(args)` once started. The target is a `fn` pointer (a
    /// function, or a closure that captures nothing: see [`Pool`](crate::Pool) for why);
    /// the arguments are encoded now, and may contain handles (a
    /// [`Connection`](crate::Connection), a [`Queue`](crate::Queue), ...) which the child
    /// receives. Its value comes back through [`ProcessHandle::join`].
    pub fn new<A, R>(target: fn(A) -> R, args: A) -> Result<Process<R>, Error>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let name = format!("Process-{}", NEXT_NUMBER.fetch_add(1, Ordering::Relaxed));
        let call = Call::new(target)?;
        let (args, fds) = crate::pool::encode_chunk(std::slice::from_ref(&args), None)?;
        Ok(Process {
            name: name.clone(),
            daemon: false,
            target: Target::Spawn {
                boot: ProcessBoot { name, call, args },
                fds,
            },
            start_method: None,
            result: PhantomData,
        })
    }

    /// A process that will run `target` in a child *forked* from this process once started
    /// (Python's `fork` start method). Unlike [`Process::new`], `target` may be any closure:
    /// the child is a copy of this process, so what it captures is simply there, handles
    /// included. A captured [`Queue`](crate::Queue), [`Lock`](crate::Lock) (or any other
    /// primitive), [`Connection`](crate::Connection), `Value` or `SharedMemory` keeps working
    /// in the child: the child keeps the descriptors they own. Everything else about the
    /// process is as with [`Process::new`]: name, daemon flag, the value from `join`,
    /// `wait`, `terminate`, exit codes (a panic is exit code 1), [`active_children`], and in
    /// the child [`current_process`] reports this process's name.
    ///
    /// The child starts in a fraction of a millisecond, but it is a copy of a process that may
    /// have had other threads, with the hazards that brings (see `pool_ipc::fork`): a lock
    /// another thread held at the fork (stdout's, a logger's) stays locked in the child; a
    /// captured `Pool` or runtime handle does not work there (its threads are not copied); the
    /// child holds copies of the parent's open descriptors until it exits. When the program
    /// has busy threads, prefer [`Process::new`].
    ///
    /// ```
    /// use pool_api::{Lock, Process, Queue};
    ///
    /// let queue: Queue<String> = Queue::new().unwrap();
    /// let lock = Lock::new().unwrap();
    /// let (q, l) = (queue.clone(), lock.clone());
    /// let greeting = String::from("hello");
    /// let child = Process::fork(move || {
    ///     let _held = l.lock().unwrap();
    ///     let name = pool_api::current_process().name;
    ///     q.put(format!("{greeting} from {name}")).unwrap();
    ///     name.len()
    /// })
    /// .with_name("forked")
    /// .start()?;
    /// assert_eq!(queue.get().unwrap(), "hello from forked");
    /// assert_eq!(child.join()?, 6);
    /// # Ok::<(), pool_api::Error>(())
    /// ```
    pub fn fork<F, R>(target: F) -> Process<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Serialize + DeserializeOwned,
    {
        let run = move |channel: &mut pool_ipc::Channel| {
            let outcome = task::catch(target);
            // In postcard's layout, after its tag (see `crate::bulk`).
            let tagged = vec![crate::bulk::SERDE];
            match postcard::to_extend(std::slice::from_ref(&outcome), tagged) {
                Ok(encoded) => send_outcome(channel, &encoded),
                Err(_) => 1,
            }
        };
        Process {
            name: format!("Process-{}", NEXT_NUMBER.fetch_add(1, Ordering::Relaxed)),
            daemon: false,
            target: Target::Fork(ForkTarget(Box::new(run))),
            start_method: None,
            result: PhantomData,
        }
    }
}

impl<R> Process<R> {
    /// How a process made by [`Process::new`] starts: `StartMethod::Spawn` (the default: a
    /// fresh copy of this program) or `StartMethod::Forkserver` (forked by a clean,
    /// single-threaded helper started on first use: several times faster than spawn, and
    /// none of fork's hazards, since the helper has no threads and no state of this
    /// process). Python's `multiprocessing.get_context(method).Process`.
    ///
    /// A [`Process::fork`] process is always forked from this process; starting one with a
    /// start method set is an [`Error::InvalidArgument`].
    ///
    /// ```
    /// use pool_api::{Process, StartMethod};
    ///
    /// fn double(x: u32) -> u32 {
    ///     x * 2
    /// }
    ///
    /// let child = Process::new(double, 7)?.start_method(StartMethod::Forkserver).start()?;
    /// assert_eq!(child.join()?, 14);
    /// # Ok::<(), pool_api::Error>(())
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Process<R> {
        self.start_method = Some(method);
        self
    }

    /// Names the process (default `Process-N`).
    pub fn with_name(mut self, name: impl Into<String>) -> Process<R> {
        self.name = name.into();
        self
    }

    /// Python's `daemon` flag: a daemon process is terminated when the program exits, a
    /// non-daemon one is waited for (see "At exit" on [`Process`]).
    pub fn daemon(mut self, daemon: bool) -> Process<R> {
        self.daemon = daemon;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts the process: Python's `start()`. The builder is consumed; the handle of the
    /// running child is returned.
    pub fn start(self) -> Result<ProcessHandle<R>, Error> {
        let spawned = match self.target {
            Target::Fork(_) if self.start_method.is_some() => {
                return Err(Error::InvalidArgument(
                    "a Process::fork closure is always forked: it has no start method".into(),
                ));
            }
            Target::Fork(target) => {
                let name = self.name.clone();
                let options = SpawnOptions::new().name(self.name.clone());
                pool_ipc::fork(move |start| forked_main(name, target, start), &options)
            }
            Target::Spawn { mut boot, fds } => {
                // The name may have been changed after `new`: the child learns the current one.
                boot.name = self.name.clone();
                let payload = postcard::to_stdvec(&boot)
                    .map_err(crate::error::codec("encoding a process's bootstrap"))?;
                let options = SpawnOptions::new()
                    .name(self.name.clone())
                    .start_method(self.start_method.unwrap_or(StartMethod::Spawn))
                    .inherit(fds);
                pool_ipc::spawn(process_main, &payload, &options)
            }
        }
        .map_err(Error::from)?;
        registry::add(&spawned.child, &self.name, self.daemon)?;
        Ok(ProcessHandle {
            name: self.name,
            pid: spawned.child.pid(),
            child: Some(spawned.child),
            channel: Some(spawned.channel),
            outcome: None,
            status: None,
            result: PhantomData,
        })
    }
}

/// A started child process, as [`Process::start`] returns it: Python's started
/// `multiprocessing.Process`, and `std::thread::JoinHandle`'s counterpart for a process.
///
/// [`join`](ProcessHandle::join) waits for the child and returns the target's value (or its
/// panic as [`Error::Panicked`], or [`Error::WorkerLost`] with the exit code if the child died
/// without one). [`wait`](ProcessHandle::wait) is Python's `join()`: it waits and keeps the
/// handle, for [`exitcode`](ProcessHandle::exitcode) and the value later.
///
/// ```
/// use pool_api::{ExitStatus, Process};
///
/// fn fail(_: ()) {
///     panic!("no luck");
/// }
///
/// let mut child = Process::new(fail, ())?.start()?;
/// assert_eq!(child.wait()?, ExitStatus::Code(1)); // Python's exit code of a target that raised
/// assert_eq!(child.exitcode(), Some(1));
/// assert!(matches!(child.join(), Err(pool_api::Error::Panicked { message, .. }) if message == "no luck"));
/// # Ok::<(), pool_api::Error>(())
/// ```
///
/// Dropping the handle of a running child leaves it running (see "At exit" on [`Process`]).
#[derive(Debug)]
pub struct ProcessHandle<R = ()> {
    name: String,
    pid: u32,
    /// The child until it is reaped.
    child: Option<Child>,
    /// The parent's end of the child's channel, until its outcome (or its end) was read.
    channel: Option<pool_ipc::Channel>,
    /// The target's encoded outcome, once received.
    outcome: Option<Vec<u8>>,
    status: Option<ExitStatus>,
    result: PhantomData<fn() -> R>,
}

impl<R> ProcessHandle<R> {
    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Records the exit of the child, reaping it.
    fn reaped(&mut self, status: pool_ipc::ExitStatus) {
        if let Some(child) = self.child.take() {
            registry::remove(child.pid());
        }
        self.status = Some(status);
    }

    /// Reads the child's outcome if it arrives by `deadline`; false if the deadline passed
    /// first. The outcome is read while the child runs, not after it exits: one larger than
    /// the channel's buffer would otherwise keep the child from exiting.
    fn receive_outcome(&mut self, deadline: Option<Instant>) -> Result<bool, Error> {
        let Some(channel) = self.channel.as_mut() else {
            return Ok(true);
        };
        let child = self.child.as_ref();
        loop {
            // The message, or the child's exit (then whatever it sent is already here): a
            // descendant that inherited the channel must not keep us waiting for its end.
            let fds: Vec<BorrowedFd<'_>> = channel
                .receiver()
                .readable_fd()
                .into_iter()
                .chain(child.map(Child::pidfd))
                .collect();
            let ready = pool_ipc::wait_readable(&fds, deadline).map_err(Error::from)?;
            if ready.is_empty() && !channel.receiver().has_buffered() {
                return Ok(false);
            }
            let exited = child.is_none() || ready.contains(&(fds.len() - 1));
            let mut message = Vec::new();
            let until = if exited {
                Some(Instant::now())
            } else {
                deadline
            };
            match channel.recv_into(&mut message, until) {
                Ok(_) => {
                    self.outcome = Some(message);
                    self.channel = None;
                    return Ok(true);
                }
                Err(pool_ipc::RecvError::Timeout) if !exited => continue,
                Err(_) => {
                    self.channel = None;
                    return Ok(true);
                }
            }
        }
    }

    /// Waits until `deadline` for the outcome and the exit; how it exited, if it did.
    fn wait_deadline(&mut self, deadline: Option<Instant>) -> Result<Option<ExitStatus>, Error> {
        if !self.receive_outcome(deadline)? {
            return Ok(None);
        }
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(self.status);
        };
        match child.wait_deadline(deadline).map_err(Error::from)? {
            Some(status) => {
                self.reaped(status);
                Ok(self.status)
            }
            None => Ok(None),
        }
    }

    /// Python's `join()`: waits for the process to exit, and returns how it exited (its
    /// exit code, the signal that killed it, or [`ExitStatus::Unknown`] when this program
    /// ignores SIGCHLD). The handle stays, for the value ([`join`](Self::join)).
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        Ok(self
            .wait_deadline(None)?
            .expect("a wait with no deadline ends with an exit"))
    }

    /// Python's `join(timeout)`: waits at most `timeout`; how it exited, or `None` if the
    /// process is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, Error> {
        self.wait_deadline(crate::deadline_in(timeout))
    }

    /// How the process exited, or `None` while it runs (without waiting).
    ///
    /// A program that sets SIGCHLD to `SIG_IGN` (some daemons and embedding programs do) has
    /// its children reaped by the kernel the moment they exit: their status is gone before
    /// anyone can read it. The exit is still seen (through the child's pidfd), so the process
    /// is no longer alive and its handle's waits return, with [`ExitStatus::Unknown`].
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.reaped(status);
            }
        }
        self.status
    }

    /// Python's `exitcode`: `None` while running, else the exit code, or minus the signal
    /// that killed it; also `None` when the status is unknown (see
    /// [`exit_status`](Self::exit_status)).
    pub fn exitcode(&mut self) -> Option<i32> {
        self.exit_status().and_then(ExitStatus::python_exitcode)
    }

    /// Whether the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// Python's `terminate`: SIGTERM.
    pub fn terminate(&self) -> Result<(), Error> {
        self.signal(Signal::Term)
    }

    /// Python's `kill`: SIGKILL.
    pub fn kill(&self) -> Result<(), Error> {
        self.signal(Signal::Kill)
    }

    fn signal(&self, sig: Signal) -> Result<(), Error> {
        match &self.child {
            Some(child) => child.signal(sig.as_raw()).map_err(Error::from),
            None => Ok(()),
        }
    }
}

impl<R: DeserializeOwned> ProcessHandle<R> {
    /// Waits for the process to exit and returns the target's value: `std`'s
    /// `JoinHandle::join` for a process. A target that panicked is [`Error::Panicked`] (with
    /// its message); a child that died without a value (killed, `exit`, a crash) is
    /// [`Error::WorkerLost`] with its exit code.
    pub fn join(mut self) -> Result<R, Error> {
        let status = self.wait()?;
        let lost = Error::WorkerLost {
            pid: self.pid,
            exitcode: status.python_exitcode().unwrap_or(UNKNOWN_EXITCODE),
        };
        let Some(outcome) = self.outcome.take() else {
            return Err(lost);
        };
        match task::decode_results::<R>(&outcome)?.pop() {
            Some(Ok(value)) => Ok(value),
            Some(Err(panic)) => Err(Error::Panicked {
                message: panic.message,
                location: panic.location,
                pid: self.pid,
                backtrace: panic.backtrace,
            }),
            None => Err(lost),
        }
    }
}

impl<R> Drop for ProcessHandle<R> {
    fn drop(&mut self) {
        // A running process outlives its handle, as in Python: the registry reaps it when it
        // exits, and the program's exit waits for it (or terminates it, for a daemon).
        if let Some(child) = self.child.take() {
            registry::orphan(child);
        }
    }
}

impl<R> crate::Waitable for ProcessHandle<R> {
    fn ready_now(&self) -> bool {
        self.status.is_some()
    }
    fn sentinel(&self) -> Option<BorrowedFd<'_>> {
        self.child.as_ref().map(Child::pidfd)
    }
}

/// Whether this program's normal exit waits for its running non-daemon [`Process`]
/// children (`true`, the default, as Python does) or terminates them as it does daemon ones
/// (`false`): for a program that must exit promptly whatever its children are doing. It
/// concerns only children whose handle was dropped or is still held at exit; a pool's
/// workers are stopped by the pool's own `Drop`.
///
/// ```
/// pool_api::set_exit_waits_for_children(false);
/// # pool_api::set_exit_waits_for_children(true);
/// ```
pub fn set_exit_waits_for_children(wait: bool) {
    registry::WAIT_FOR_CHILDREN.store(wait, Ordering::Relaxed);
}

/// The live children started with [`Process`] by this process (Python's
/// `multiprocessing.active_children()`).
pub fn active_children() -> Vec<ProcessInfo> {
    registry::active()
}

/// Every `Process` started by this process and not yet reaped.
mod registry {
    use super::*;

    struct Entry {
        pid: u32,
        name: String,
        daemon: bool,
        /// Watches the child through its own pidfd (no thread involved): it tells whether the
        /// child has exited, and signals it at exit if it is a daemon.
        killer: Killer,
        /// Set once the `Process` handle is gone: pool-ipc's reaper reaps the child.
        orphaned: bool,
    }

    impl Entry {
        fn exited(&self) -> bool {
            self.killer
                .wait_exited(Some(Instant::now()))
                .unwrap_or(true)
        }
    }

    /// One process's registry. A forked child makes its own: its parent's children are not
    /// its children, and the parent's lock may have been held by another thread at the fork.
    struct Registry {
        pid: u32,
        entries: Mutex<Vec<Entry>>,
    }

    /// This process's registry (a parent's, copied by a fork, is left alone: leaked).
    static REGISTRY: AtomicPtr<Registry> = AtomicPtr::new(std::ptr::null_mut());
    static AT_EXIT: AtomicBool = AtomicBool::new(false);

    fn entries() -> std::sync::MutexGuard<'static, Vec<Entry>> {
        let pid = std::process::id();
        let seen = REGISTRY.load(Ordering::Acquire);
        // SAFETY: non-null pointers come from `Box::into_raw` below and are never freed.
        let registry = match unsafe { seen.as_ref() } {
            Some(registry) if registry.pid == pid => registry,
            _ => {
                let mine = Box::into_raw(Box::new(Registry {
                    pid,
                    entries: Mutex::new(Vec::new()),
                }));
                match REGISTRY.compare_exchange(seen, mine, Ordering::AcqRel, Ordering::Acquire) {
                    // SAFETY: just published, never freed.
                    Ok(_) => unsafe { &*mine },
                    Err(theirs) => {
                        // Another thread of this process published first.
                        // SAFETY: `mine` was never published; `theirs` never freed.
                        unsafe {
                            drop(Box::from_raw(mine));
                            &*theirs
                        }
                    }
                }
            }
        };
        registry.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the orphans that have exited (the reaper has them), so that a program that
    /// drops many handles does not grow the registry without end.
    fn prune(entries: &mut Vec<Entry>) {
        entries.retain(|e| !(e.orphaned && e.exited()));
    }

    /// Registers a started child. Nothing watches it in the background: whether it has exited
    /// is asked of its pidfd when someone wants to know (`active_children`, the exit), which
    /// keeps a thread's two wake-ups off the path of every start.
    pub(super) fn add(child: &Child, name: &str, daemon: bool) -> Result<(), Error> {
        // Registered once; a forked child inherits the registration (and runs it only if it
        // calls `exit`, for its own children).
        if !AT_EXIT.swap(true, Ordering::AcqRel) {
            pool_ipc::os::at_exit(at_exit).map_err(Error::from)?;
        }
        let killer = child.killer().map_err(Error::from)?;
        let mut entries = entries();
        prune(&mut entries);
        entries.push(Entry {
            pid: child.pid(),
            name: name.to_owned(),
            daemon,
            killer,
            orphaned: false,
        });
        Ok(())
    }

    /// Forgets the child `pid` that its handle has just reaped. Only the first entry with that
    /// pid is this child's: a later one can only be of a child started after this one was
    /// reaped and given its pid again, which must stay registered (and be waited for at exit).
    pub(super) fn remove(pid: u32) {
        let mut entries = entries();
        if let Some(at) = entries.iter().position(|e| e.pid == pid) {
            entries.remove(at);
        }
    }

    /// The handle of a running child is gone: the child runs on (as in Python) and is reaped
    /// when it exits, by pool-ipc's reaper (or here, if it has exited already).
    pub(super) fn orphan(mut child: Child) {
        let pid = child.pid();
        if let Ok(Some(_)) = child.try_wait() {
            remove(pid);
            return;
        }
        if let Some(entry) = entries().iter_mut().find(|e| e.pid == pid) {
            entry.orphaned = true;
        }
        child.disown();
    }

    pub(super) fn active() -> Vec<ProcessInfo> {
        let mut entries = entries();
        prune(&mut entries);
        entries
            .iter()
            .filter(|e| !e.exited())
            .map(|e| ProcessInfo {
                name: e.name.clone(),
                pid: e.pid,
            })
            .collect()
    }

    /// What a forked `Process` child does before it ends (it skips `atexit` handlers).
    pub(super) fn exit_function() {
        at_exit();
    }

    /// Whether the exit waits for non-daemon children (see [`set_exit_waits_for_children`]).
    pub(super) static WAIT_FOR_CHILDREN: AtomicBool = AtomicBool::new(true);

    /// At normal exit: terminate daemons, wait for the others (Python's `_exit_function`).
    extern "C" fn at_exit() {
        let entries = entries();
        let wait = WAIT_FOR_CHILDREN.load(Ordering::Relaxed);
        for entry in entries.iter().filter(|e| e.daemon || !wait) {
            let _ = entry.killer.signal(Signal::Term.as_raw());
        }
        // Orphans are reaped by the reaper thread as they exit; the others by their handles,
        // or by the process's own end.
        for entry in entries.iter() {
            let _ = entry.killer.wait_exited(None);
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn nap(ms: u64) {
            std::thread::sleep(Duration::from_millis(ms));
        }

        #[test]
        fn a_reaped_childs_entry_goes_not_a_later_one_with_its_pid() {
            let mut started: Vec<ProcessHandle> = (0..2)
                .map(|_| Process::new(nap, 60_000u64).unwrap().start().unwrap())
                .collect();
            // The registry as it is when a pid is reused between a child's reap and its
            // `remove`: two entries with one pid, the reaped child's first.
            let pid = u32::MAX - 1;
            for (p, name) in started.iter().zip(["reaped", "reused"]) {
                let killer = p.child.as_ref().unwrap().killer().unwrap();
                entries().push(Entry {
                    pid,
                    name: name.into(),
                    daemon: false,
                    killer,
                    orphaned: false,
                });
            }
            remove(pid);
            let left: Vec<String> = entries()
                .iter()
                .filter(|e| e.pid == pid)
                .map(|e| e.name.clone())
                .collect();
            remove(pid);
            for p in &mut started {
                p.kill().unwrap();
                p.wait().unwrap();
            }
            assert_eq!(left, ["reused"]);
        }
    }
}
