//! The `forkserver` start method: children forked on request by a clean helper process.
//!
//! Forking a process that has threads copies its memory in whatever state the other threads
//! left it (see [`fork`](crate::fork)'s hazards); re-executing (`spawn`) is safe but costs a
//! program start each time. The forkserver is the middle way, as in Python: a copy of this
//! program started once by `spawn` (so it is single-threaded and clean), which forks a child
//! for each request. Functions travel by identity, as with `spawn`; the forkserver runs the
//! same build, checked when it started.
//!
//! # Protocol
//!
//! One `pipe` channel between the parent and its forkserver. The parent sends a [`Request`]
//! (an id, the function, the payload, the name, the transport) carrying, as `SCM_RIGHTS`,
//! the write end of a "ready" pipe, the child's end of its data channel, and the descriptors
//! the child inherits. The forkserver forks and answers `Started { id, pid }` with the child's
//! pidfd attached (opened before the child can be reaped, so it names that very process), or
//! `Failed`. When a child exits, the forkserver reaps it and sends `Exited { id, status }`.
//!
//! The forked child closes every descriptor except stdio and its own (`close_range`), so it
//! holds nothing of its siblings' and a dead sibling's channel reaches end of file. It arms
//! `PR_SET_PDEATHSIG` (it dies with the forkserver, which dies with the parent), opens its
//! channel, writes its "ready" byte and runs the function. The parent waits for that byte with
//! the handshake deadline, as `fork` does: a child that dies first gives its exit status.
//!
//! # Invariants
//!
//! - The forkserver is single-threaded: one `poll` over its channel and its children's
//!   pidfds. Nothing else runs in it, so forking it is always safe.
//! - One forkserver per process, started on first use. Its death (seen as end of file by the
//!   parent's reader thread) fails every request in flight with
//!   [`SpawnError::ForkserverDied`], fills in the exit status of its children (killed by
//!   `PR_SET_PDEATHSIG`: SIGKILL), and makes the next request start a new one.
//! - Every wait of a request has the handshake deadline; a child whose requester gave up is
//!   killed when its answer arrives.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::exec::spawn_exec;
use super::ready::wait_ready;
use super::types::{
    ChildMain, ChildStart, EXIT_BOOTSTRAP_FAILED, SpawnError, SpawnOptions, Spawned,
};
use crate::child::Relay;
use crate::code::FnId;
use crate::fork_safety::{PerProcess, Private};
use crate::transport::pipe::MAX_FDS_PER_MESSAGE;
use crate::transport::{Channel, Receiver, SendError, Sender, TransportKind};
use crate::{Child, ExitStatus, Killer, sys};

/// A request to fork a child. Descriptors ride with it: the ready pipe's write end, the
/// child's end of its data channel, then `inherited` more.
#[derive(Serialize, Deserialize)]
struct Request {
    id: u64,
    main: FnId,
    name: String,
    payload: Vec<u8>,
    transport: TransportKind,
    inherited: u32,
}

/// What the forkserver tells its parent.
#[derive(Serialize, Deserialize)]
enum Reply {
    /// Forked `pid`; its pidfd rides with this message.
    Started { id: u64, pid: u32 },
    /// Could not fork.
    Failed { id: u64, reason: String },
    /// Reaped the child of request `id`.
    Exited { id: u64, status: ExitStatus },
}

/// Exit code of a forkserver whose request stream made no sense.
const EXIT_PROTOCOL: i32 = 71;

// ---------------------------------------------------------------------------------------
// The forkserver's side.
// ---------------------------------------------------------------------------------------

/// The forkserver's main loop (a [`ChildMain`] started by `spawn`). Returns when its parent
/// is gone; its children then die with it.
fn serve(start: ChildStart) -> i32 {
    let (mut tx, mut rx) = start.channel.split();
    let me = std::process::id();
    let mut children: Vec<(u64, OwnedFd)> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let ready = {
            let Some(channel) = rx.readable_fd() else {
                return EXIT_PROTOCOL;
            };
            let mut fds: Vec<BorrowedFd<'_>> = vec![channel];
            fds.extend(children.iter().map(|(_, fd)| fd.as_fd()));
            // A request already buffered must not wait for the socket.
            let deadline = rx.has_buffered().then(Instant::now);
            match crate::wait_readable(&fds, deadline) {
                Ok(ready) => ready,
                Err(_) => return EXIT_PROTOCOL,
            }
        };
        // Exited children first (highest index first, so the lower ones stay put).
        for &i in ready.iter().rev().filter(|&&i| i > 0) {
            let (id, pidfd) = children.remove(i - 1);
            match sys::pidfd_reap(pidfd.as_fd(), false) {
                Ok(Some(status)) => {
                    if !send(&mut tx, &Reply::Exited { id, status }, &[]) {
                        return 0;
                    }
                }
                Ok(None) => children.push((id, pidfd)),
                Err(_) => {}
            }
        }
        if ready.first() == Some(&0) || rx.has_buffered() {
            match rx.recv_into(&mut buf, None) {
                Ok(()) => {
                    if !handle(&buf, &mut rx, &mut tx, &mut children, me) {
                        return EXIT_PROTOCOL;
                    }
                }
                // The parent is gone.
                Err(crate::RecvError::Disconnected) => return 0,
                Err(_) => return EXIT_PROTOCOL,
            }
        }
    }
}

fn send(tx: &mut Sender, reply: &Reply, fds: &[BorrowedFd<'_>]) -> bool {
    match postcard::to_stdvec(reply) {
        Ok(bytes) => tx.send_parts_with_fds(&[&bytes], fds, None).is_ok(),
        Err(_) => false,
    }
}

/// Forks the child a request asks for; `false` if the request stream is broken.
fn handle(
    bytes: &[u8],
    rx: &mut Receiver,
    tx: &mut Sender,
    children: &mut Vec<(u64, OwnedFd)>,
    me: u32,
) -> bool {
    let Ok(request) = postcard::from_bytes::<Request>(bytes) else {
        return false;
    };
    let Some(fds) = rx.take_fds(2 + request.inherited as usize) else {
        return false;
    };
    let mut fds = fds.into_iter();
    let (Some(ready), Some(data)) = (fds.next(), fds.next()) else {
        return false;
    };
    let inherited: Vec<OwnedFd> = fds.collect();
    let mut keep: Vec<RawFd> = vec![ready.as_raw_fd(), data.as_raw_fd()];
    keep.extend(inherited.iter().map(AsRawFd::as_raw_fd));
    keep.sort_unstable();
    let id = request.id;
    // SAFETY: this process is single-threaded (see the module documentation), so the child
    // may do anything.
    match unsafe { sys::fork() } {
        Ok(None) => run_child(request, ready, data, inherited, &keep, me),
        Ok(Some(pid)) => {
            drop((ready, data, inherited));
            match sys::pidfd_open(pid) {
                Ok(pidfd) => {
                    let ok = send(tx, &Reply::Started { id, pid }, &[pidfd.as_fd()]);
                    children.push((id, pidfd));
                    ok
                }
                Err(e) => {
                    sys::kill_and_reap_unreaped(pid);
                    let reason = format!("no pidfd for the child: {e}");
                    send(tx, &Reply::Failed { id, reason }, &[])
                }
            }
        }
        Err(e) => send(
            tx,
            &Reply::Failed {
                id,
                reason: e.to_string(),
            },
            &[],
        ),
    }
}

/// The forked child: see the module documentation.
fn run_child(
    request: Request,
    ready: OwnedFd,
    data: OwnedFd,
    inherited: Vec<OwnedFd>,
    keep: &[RawFd],
    forkserver: u32,
) -> ! {
    // SAFETY: the descriptors closed are the forkserver's (its channel, its other children's
    // pidfds): nothing that runs in this process from here uses them.
    if !unsafe { sys::close_all_except(keep) } {
        sys::exit_now(EXIT_BOOTSTRAP_FAILED);
    }
    // SAFETY: we are the freshly forked child.
    if !unsafe { sys::forked_child_setup(forkserver) } {
        sys::exit_now(EXIT_BOOTSTRAP_FAILED);
    }
    let Ok(channel) = Channel::from_inherited(request.transport, vec![data]) else {
        sys::exit_now(EXIT_BOOTSTRAP_FAILED);
    };
    // SAFETY: `ready` is ours alone; ownership passes to the call, which closes it.
    if !unsafe { sys::signal_ready(ready.into_raw_fd()) } {
        sys::exit_now(EXIT_BOOTSTRAP_FAILED);
    }
    // SAFETY: the parent made `main` from a `ChildMain` of this very build (the forkserver's
    // identity and layout were checked when it started, and its children share its code).
    let main: ChildMain = unsafe { std::mem::transmute::<usize, ChildMain>(request.main.addr()) };
    let start = ChildStart {
        channel,
        payload: request.payload,
        name: request.name,
        inherited,
    };
    // A panic was printed by the hook; Python's exit code for an exception in the target is 1.
    let code =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || main(start))).unwrap_or(1);
    let _ = io::stdout().flush();
    std::process::exit(code)
}

// ---------------------------------------------------------------------------------------
// The parent's side.
// ---------------------------------------------------------------------------------------

/// The parent's link to its forkserver.
#[derive(Debug)]
struct Forkserver {
    pid: u32,
    killer: Killer,
    sender: Mutex<Sender>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The forkserver is gone (and how it exited, if known).
    dead: Option<Option<ExitStatus>>,
    /// Requests waiting for their answer.
    pending: HashMap<u64, mpsc::Sender<Answer>>,
    /// Children whose exit status is still to be relayed.
    relays: HashMap<u64, Arc<Relay>>,
}

#[derive(Debug)]
enum Answer {
    Started { pid: u32, pidfd: OwnedFd },
    Failed(String),
    Died(Option<ExitStatus>),
}

/// This process's forkserver (a forked child has none until it starts its own).
static CURRENT: PerProcess<Mutex<Option<Arc<Forkserver>>>> = PerProcess::new();
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Forkserver {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets request `id` (its requester gave up).
    fn forget(&self, id: u64) {
        let mut state = self.state();
        state.pending.remove(&id);
        state.relays.remove(&id);
    }

    /// Marks it dead, so that the next request starts a new one. Its reader thread finishes
    /// the clean-up.
    fn mark_dead(self: &Arc<Self>, status: Option<ExitStatus>) {
        self.state().dead.get_or_insert(status);
        let mut current = slot();
        if current.as_ref().is_some_and(|fs| Arc::ptr_eq(fs, self)) {
            *current = None;
        }
    }
}

fn slot() -> MutexGuard<'static, Option<Arc<Forkserver>>> {
    CURRENT
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// This process's forkserver, started if there is none (or the last one died).
fn current(options: &SpawnOptions) -> Result<Arc<Forkserver>, SpawnError> {
    let mut current = slot();
    if let Some(fs) = current.as_ref() {
        if fs.state().dead.is_none() {
            return Ok(Arc::clone(fs));
        }
    }
    let serve_id = FnId::new(serve as ChildMain as usize)?;
    let startup = SpawnOptions::new()
        .name("pool-forkserver")
        .handshake_timeout(options.handshake_timeout);
    let Spawned { child, channel } = spawn_exec(serve_id, b"", &startup)?;
    let (sender, receiver) = channel.split();
    let fs = Arc::new(Forkserver {
        pid: child.pid(),
        killer: child.killer()?,
        sender: Mutex::new(sender),
        state: Mutex::new(State::default()),
    });
    let reader = Arc::clone(&fs);
    // If the thread cannot start, the closure (and so the `Child`) is dropped: it is killed.
    std::thread::Builder::new()
        .name("pool-ipc-forkserver".into())
        .spawn(move || read_replies(reader, receiver, child))?;
    *current = Some(Arc::clone(&fs));
    Ok(fs)
}

/// The parent's reader thread: routes the forkserver's answers, and cleans up when it dies.
fn read_replies(fs: Arc<Forkserver>, mut rx: Receiver, mut server: Child) {
    let mut buf = Vec::new();
    while rx.recv_into(&mut buf, None).is_ok() {
        let Ok(reply) = postcard::from_bytes::<Reply>(&buf) else {
            break;
        };
        match reply {
            Reply::Started { id, pid } => {
                let Some(pidfd) = rx.take_fds(1).and_then(|mut fds| fds.pop()) else {
                    break;
                };
                let waiter = fs.state().pending.remove(&id);
                let answer = Answer::Started { pid, pidfd };
                let undelivered = match waiter {
                    Some(waiter) => waiter.send(answer).err().map(|e| e.0),
                    None => Some(answer),
                };
                if let Some(Answer::Started { pidfd, .. }) = undelivered {
                    // Its requester gave up: nobody would supervise it.
                    let _ = sys::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
                }
            }
            Reply::Failed { id, reason } => {
                let mut state = fs.state();
                state.relays.remove(&id);
                if let Some(waiter) = state.pending.remove(&id) {
                    let _ = waiter.send(Answer::Failed(reason));
                }
            }
            Reply::Exited { id, status } => {
                if let Some(relay) = fs.state().relays.remove(&id) {
                    relay.set(status);
                }
            }
        }
    }
    // It is gone, or broke the protocol (then it is not trusted further).
    let _ = server.kill();
    let status = server.wait_timeout(Duration::from_secs(5)).ok().flatten();
    fs.mark_dead(status);
    let (pending, relays) = {
        let mut state = fs.state();
        (
            std::mem::take(&mut state.pending),
            std::mem::take(&mut state.relays),
        )
    };
    for waiter in pending.into_values() {
        let _ = waiter.send(Answer::Died(status));
    }
    // Its children were killed by PR_SET_PDEATHSIG; what it had not relayed is lost.
    for relay in relays.into_values() {
        relay.set(ExitStatus::Signal(libc::SIGKILL));
    }
}

/// Starts `main` in a child forked by this process's forkserver (see the module
/// documentation).
pub(crate) fn start(
    main: FnId,
    payload: &[u8],
    options: &SpawnOptions,
) -> Result<Spawned, SpawnError> {
    if options.inherit.len() + 2 > MAX_FDS_PER_MESSAGE {
        return Err(SpawnError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors to inherit",
        )));
    }
    let timeout = options.handshake_timeout;
    let deadline = Instant::now() + timeout;
    // A forkserver found dead when the request is sent never saw it: one more try with a new
    // one.
    let mut retried = false;
    loop {
        let fs = current(options)?;
        match request(&fs, main, payload, options, deadline) {
            Err(SpawnError::ForkserverDied { status: None, .. }) if !retried => {
                retried = true;
            }
            other => return other,
        }
    }
}

/// One request to one forkserver.
fn request(
    fs: &Arc<Forkserver>,
    main: FnId,
    payload: &[u8],
    options: &SpawnOptions,
    deadline: Instant,
) -> Result<Spawned, SpawnError> {
    let timeout = options.handshake_timeout;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let bytes = postcard::to_stdvec(&Request {
        id,
        main,
        name: options.name.clone(),
        payload: payload.to_vec(),
        transport: options.transport,
        inherited: options.inherit.len() as u32,
    })
    .map_err(|e| io::Error::other(e.to_string()))?;
    // The child's ends are in flight until sent (see `fork_safety`).
    let (ends, (channel, ready)) = Private::create(
        || {
            let (ready, ready_child) = sys::pipe()?;
            let (channel, data) = Channel::for_child(options.transport)?;
            Ok(((ready_child, data), (channel, ready)))
        },
        |(ready, data): &(OwnedFd, Vec<OwnedFd>)| {
            let mut fds = vec![ready.as_raw_fd()];
            fds.extend(data.iter().map(AsRawFd::as_raw_fd));
            fds
        },
    )?;
    let mut channel = channel;
    channel.hide_from_forked_children();
    let relay = Arc::new(Relay::default());
    let (answer_tx, answer_rx) = mpsc::channel();
    {
        let mut state = fs.state();
        if let Some(status) = state.dead {
            return Err(SpawnError::ForkserverDied {
                pid: fs.pid,
                status,
            });
        }
        state.pending.insert(id, answer_tx);
        state.relays.insert(id, Arc::clone(&relay));
    }
    let sent = {
        let (ready_child, data) = ends.get();
        let mut fds: Vec<BorrowedFd<'_>> = vec![ready_child.as_fd()];
        fds.extend(data.iter().map(AsFd::as_fd));
        fds.extend(options.inherit.iter().map(AsFd::as_fd));
        let mut sender = fs.sender.lock().unwrap_or_else(|e| e.into_inner());
        sender.send_parts_with_fds(&[&bytes], &fds, Some(deadline))
    };
    // The forkserver has its copies (or never will).
    ends.release_with(drop);
    if let Err(e) = sent {
        fs.forget(id);
        return Err(match e {
            SendError::Disconnected => {
                fs.mark_dead(None);
                SpawnError::ForkserverDied {
                    pid: fs.pid,
                    status: None,
                }
            }
            other => {
                // Part of a request may have gone: the stream is out of step for good.
                let _ = fs.killer.kill();
                match other {
                    SendError::Timeout => SpawnError::Timeout {
                        pid: fs.pid,
                        timeout,
                    },
                    other => SpawnError::Io(io::Error::other(other.to_string())),
                }
            }
        });
    }
    let answer = answer_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    let (pid, pidfd) = match answer {
        Ok(Answer::Started { pid, pidfd }) => (pid, pidfd),
        Ok(Answer::Failed(reason)) => {
            return Err(SpawnError::Io(io::Error::other(format!(
                "the forkserver could not fork: {reason}"
            ))));
        }
        Ok(Answer::Died(status)) => {
            return Err(SpawnError::ForkserverDied {
                pid: fs.pid,
                status,
            });
        }
        Err(_) => {
            fs.forget(id);
            // The answer may have arrived meanwhile.
            if let Ok(Answer::Started { pidfd, .. }) = answer_rx.try_recv() {
                let _ = sys::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
            }
            return Err(SpawnError::Timeout {
                pid: fs.pid,
                timeout,
            });
        }
    };
    let mut child = Child::relayed(pid, pidfd, relay);
    wait_ready(ready.as_fd(), &mut child, deadline, timeout)?;
    if options.transport == TransportKind::Shm {
        // A futex wait cannot watch the child: the watcher wakes it when the child dies.
        child.notify_on_exit(channel.peer_death())?;
    }
    Ok(Spawned { child, channel })
}
