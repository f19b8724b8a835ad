//! A child process, watched through its pidfd.
//!
//! Signals go through the pidfd, never to a raw pid (which may have been reused by the time
//! the signal is sent); exits are reaped through it too. The pidfd is exposed so that a
//! driver can wait for a child's exit in the same `poll` as its channels and notice it at
//! once.
//!
//! Dropping a [`Child`] that is still running kills it (SIGKILL) and hands it to the reaper
//! thread, so that nothing is left as a zombie. To let a child run on after its handle is
//! gone, call [`Child::disown`]: the reaper then reaps it whenever it exits.
//!
//! A worker started by the forkserver is not our child: the forkserver reaps it and relays its
//! exit status. Its `Child` signals and polls through a pidfd just the same (both work on any
//! process), and takes its status from the relay (a [`Relay`]) instead of `waitid`, so that
//! callers cannot tell the difference.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::event::PollFlags;

use crate::fork_safety::PerProcess;
use crate::{ExitStatus, sys};

/// A running (or exited, not yet reaped) child process.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
    /// Where the exit status of a process we cannot reap (a forkserver's child) arrives.
    relay: Option<Arc<Relay>>,
}

/// The exit status of a process that another process (the forkserver) reaps, once that one
/// relays it.
#[derive(Debug, Default)]
pub(crate) struct Relay {
    status: Mutex<Option<ExitStatus>>,
    arrived: Condvar,
}

impl Relay {
    /// The status arrived (the first one counts).
    pub(crate) fn set(&self, status: ExitStatus) {
        let mut slot = self.status.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(status);
        self.arrived.notify_all();
    }

    /// Waits until the status arrives or `deadline` passes.
    fn wait(&self, deadline: Option<Instant>) -> Option<ExitStatus> {
        let mut slot = self.status.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(status) = *slot {
                return Some(status);
            }
            slot = match deadline {
                None => self.arrived.wait(slot).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.arrived
                        .wait_timeout(slot, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

impl Child {
    /// Takes charge of the child `pid`, which must be a child of this process that has not
    /// been reaped.
    pub(crate) fn from_pid(pid: u32) -> io::Result<Child> {
        let pidfd = sys::pidfd_open(pid)?;
        Ok(Child {
            pid,
            pidfd: Some(pidfd),
            status: None,
            relay: None,
        })
    }

    /// Takes charge of a process that another process reaps: signals and exit notices go
    /// through `pidfd`, the exit status comes from `relay`.
    pub(crate) fn relayed(pid: u32, pidfd: OwnedFd, relay: Arc<Relay>) -> Child {
        Child {
            pid,
            pidfd: Some(pidfd),
            status: None,
            relay: Some(relay),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The pidfd: readable once the child has exited. For a driver's `poll` set.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd
            .as_ref()
            .expect("a live Child has its pidfd")
            .as_fd()
    }

    /// The exit status, if the child has exited (reaping it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = match &self.relay {
                None => sys::pidfd_reap(self.pidfd(), false)?,
                Some(relay) => {
                    if sys::poll_one(self.pidfd(), PollFlags::IN, Some(Instant::now()))? {
                        relay.wait(Some(Instant::now()))
                    } else {
                        None
                    }
                }
            };
        }
        Ok(self.status)
    }

    /// Waits for the child to exit, until `deadline` if given (`Ok(None)`: still running).
    pub fn wait_deadline(&mut self, deadline: Option<Instant>) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.try_wait()? {
            return Ok(Some(status));
        }
        if !sys::poll_one(self.pidfd(), PollFlags::IN, deadline)? {
            return Ok(None);
        }
        self.status = match &self.relay {
            None => sys::pidfd_reap(self.pidfd(), true)?,
            // It has exited; its reaper relays the status at once (or, if the reaper died,
            // the relay is filled in by whoever noticed).
            Some(relay) => relay.wait(deadline),
        };
        Ok(self.status)
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.wait_deadline(None)? {
                return Ok(status);
            }
        }
    }

    /// Waits at most `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        self.wait_deadline(Some(Instant::now() + timeout))
    }

    /// Sends `signal` (a number: [`Signal::as_raw`](crate::os::Signal::as_raw)) through the pidfd. Signalling a child that has
    /// exited does nothing.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        sys::pidfd_signal(self.pidfd(), signal)
    }

    /// SIGKILL.
    pub fn kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Terminates the child the polite way: SIGTERM, then SIGKILL if it has not exited after
    /// `grace`; returns its exit status.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill()?;
        self.wait()
    }

    /// A handle that can signal this child from other threads (a duplicate of its pidfd), so
    /// that one thread can wait for the child while others may kill it.
    pub fn killer(&self) -> io::Result<Killer> {
        Ok(Killer {
            pidfd: std::sync::Arc::new(self.pidfd().try_clone_to_owned()?),
        })
    }

    /// Calls `death.notify()` as soon as the child exits, from the watcher thread. This is the
    /// supervision a shared-memory channel needs: a futex cannot be waited on together with a
    /// pidfd, so whoever sees the pidfd fire wakes the channel's waiters.
    pub fn notify_on_exit(&self, death: crate::PeerDeath) -> io::Result<()> {
        self.on_exit(move || death.notify())
    }

    /// Runs `action` on the watcher thread as soon as the child exits (it is not reaped by
    /// this: its owner still reaps it). Keep `action` short; it delays other notifications.
    pub fn on_exit(&self, action: impl FnOnce() + Send + 'static) -> io::Result<()> {
        watcher::watch(self.pidfd().try_clone_to_owned()?, Box::new(action), None);
        Ok(())
    }

    /// Lets the child run on without this handle; it is reaped when it exits.
    pub fn disown(mut self) {
        if self.status.is_none() && self.relay.is_none() {
            if let Some(pidfd) = self.pidfd.take() {
                reaper::adopt(pidfd);
            }
        }
        // A relayed child is reaped by its own parent: dropping the pidfd is all.
        self.pidfd = None;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(pidfd) = self.pidfd.take() {
            if self.status.is_none() {
                let _ = sys::pidfd_signal(pidfd.as_fd(), libc::SIGKILL);
                if self.relay.is_some() {
                    // Not ours to reap: its parent (the forkserver) does.
                    return;
                }
                // Reap right away if it is already gone; otherwise let the reaper wait.
                match sys::pidfd_reap(pidfd.as_fd(), false) {
                    Ok(Some(_)) => {}
                    _ => reaper::adopt(pidfd),
                }
            }
        }
    }
}

/// Signals one child through a duplicate of its pidfd; see [`Child::killer`]. Signals to a
/// child that has exited (even if reaped) do nothing: the pidfd never names another process.
#[derive(Clone, Debug)]
pub struct Killer {
    pidfd: std::sync::Arc<OwnedFd>,
}

impl Killer {
    /// Sends `signal` (a number: [`Signal::as_raw`](crate::os::Signal::as_raw)) to the child.
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        sys::pidfd_signal(self.pidfd.as_fd(), signal)
    }

    /// SIGKILL.
    pub fn kill(&self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// Waits until the child has exited (without reaping it), up to `deadline`; whether it
    /// has.
    pub fn wait_exited(&self, deadline: Option<Instant>) -> io::Result<bool> {
        sys::poll_one(self.pidfd.as_fd(), PollFlags::IN, deadline)
    }
}

/// Runs `action` on the watcher thread (the one that turns child exits into `PeerDeath`
/// notifications) as soon as `fd` becomes readable, unless the returned guard is dropped
/// first. For a socket nobody writes to, readable means hung up: every copy of its peer is
/// closed, which is how a shared-memory `Pipe` end learns that its peer is gone. The watcher
/// holds a duplicate of `fd` until the action ran or the guard is dropped.
pub fn on_readable(
    fd: BorrowedFd<'_>,
    action: impl FnOnce() + Send + 'static,
) -> io::Result<WatchGuard> {
    let state = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(watcher::ACTIVE));
    watcher::watch(
        fd.try_clone_to_owned()?,
        Box::new(action),
        Some(std::sync::Arc::clone(&state)),
    );
    Ok(WatchGuard {
        state,
        pid: std::process::id(),
    })
}

/// Stops an [`on_readable`] watch when dropped: the action never runs, and the watcher has
/// closed its duplicate of the descriptor when `drop` returns (so that a socket's peer sees
/// the hang-up at once).
#[derive(Debug)]
pub struct WatchGuard {
    state: std::sync::Arc<std::sync::atomic::AtomicU8>,
    /// The process whose watcher holds the duplicate (a forked copy of the guard has none to
    /// wait for).
    pid: u32,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let _ = self.state.compare_exchange(
            watcher::ACTIVE,
            watcher::CANCELLED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if self.pid != std::process::id() {
            return;
        }
        watcher::wake();
        // A bounded wait: the watcher answers in microseconds; a stuck one must not hang us.
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while self.state.load(Ordering::Acquire) != watcher::CLOSED && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }
}

/// The thread that turns child exits into `PeerDeath` notifications.
mod watcher {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;

    struct Watcher {
        new: mpsc::Sender<Watch>,
        wake: UnixStream,
    }

    type Action = Box<dyn FnOnce() + Send>;

    /// A descriptor, what to do when it becomes readable, and the state of a cancellable
    /// watch.
    type Watch = (OwnedFd, Action, Option<Arc<AtomicU8>>);

    /// Watch states: watching; given up by its guard; descriptor closed by the watcher.
    pub(super) const ACTIVE: u8 = 0;
    pub(super) const CANCELLED: u8 = 1;
    pub(super) const CLOSED: u8 = 2;

    /// Tells a cancellable watch's guard that its descriptor is closed.
    fn closed(state: &Option<Arc<AtomicU8>>) {
        if let Some(state) = state {
            state.store(CLOSED, Ordering::Release);
        }
    }

    /// Per process: a forked child has no watcher thread until it starts its own.
    static WATCHER: PerProcess<Watcher> = PerProcess::new();

    pub(super) fn watch(fd: OwnedFd, action: Action, state: Option<Arc<AtomicU8>>) {
        let watcher = watcher();
        let _ = watcher.new.send((fd, action, state));
        let _ = (&watcher.wake).write_all(&[1]);
    }

    /// Makes the watcher look at its watches again (one was given up).
    pub(super) fn wake() {
        let _ = (&watcher().wake).write_all(&[1]);
    }

    fn watcher() -> &'static Watcher {
        WATCHER.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let (wake, wakened) =
                UnixStream::pair().expect("creating the watcher's wake-up socket");
            std::thread::Builder::new()
                .name("pool-ipc-watcher".into())
                .spawn(move || run(rx, wakened))
                .expect("starting the watcher thread");
            Watcher { new: tx, wake }
        })
    }

    fn run(rx: mpsc::Receiver<Watch>, mut wakened: UnixStream) {
        let mut watched: Vec<(OwnedFd, Option<Action>, Option<Arc<AtomicU8>>)> = Vec::new();
        let mut sink = [0u8; 64];
        loop {
            while let Ok((fd, action, cancelled)) = rx.try_recv() {
                watched.push((fd, Some(action), cancelled));
            }
            // Given-up watches close their descriptor now (a socket's peer may be waiting for
            // that very hang-up).
            let mut ended = Vec::new();
            watched.retain_mut(|(_, _, state)| {
                let cancelled = state
                    .as_ref()
                    .is_some_and(|s| s.load(Ordering::Acquire) == CANCELLED);
                if cancelled {
                    ended.push(state.take());
                }
                !cancelled
            });
            // `retain` has dropped their descriptors.
            ended.iter().for_each(closed);
            let mut fds: Vec<BorrowedFd<'_>> = vec![wakened.as_fd()];
            fds.extend(watched.iter().map(|(fd, _, _)| fd.as_fd()));
            match sys::poll_any(&fds, PollFlags::IN, None) {
                Ok(Some(0)) => {
                    if matches!(wakened.read(&mut sink), Ok(0)) {
                        return;
                    }
                }
                Ok(Some(_)) => {
                    // Every exited child (a readable pidfd) is reported and forgotten; its
                    // owner still reaps it.
                    let mut ended = Vec::new();
                    watched.retain_mut(|(fd, action, state)| {
                        let exited = sys::poll_one(fd.as_fd(), PollFlags::IN, Some(Instant::now()))
                            .unwrap_or(true);
                        if exited {
                            if let Some(action) = action.take() {
                                action();
                            }
                            ended.push(state.take());
                        }
                        !exited
                    });
                    ended.iter().for_each(closed);
                }
                Ok(None) | Err(_) => {}
            }
        }
    }
}

/// The thread that reaps children nobody waits for any more.
mod reaper {
    use super::*;

    /// Per process: a forked child has no reaper thread until it starts its own.
    static ADOPT: PerProcess<mpsc::Sender<OwnedFd>> = PerProcess::new();

    /// Hands a child's pidfd to the reaper thread (started on first use).
    pub(super) fn adopt(pidfd: OwnedFd) {
        let sender = ADOPT.get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            std::thread::Builder::new()
                .name("pool-ipc-reaper".into())
                .spawn(move || run(rx))
                .expect("starting the reaper thread");
            tx
        });
        let _ = sender.send(pidfd);
    }

    fn run(rx: mpsc::Receiver<OwnedFd>) {
        let mut children: Vec<OwnedFd> = Vec::new();
        loop {
            // New adoptions are noticed within a poll period; exits at once.
            while let Ok(fd) = rx.try_recv() {
                children.push(fd);
            }
            if children.is_empty() {
                match rx.recv() {
                    Ok(fd) => children.push(fd),
                    Err(_) => return,
                }
                continue;
            }
            let fds: Vec<BorrowedFd<'_>> = children.iter().map(AsFd::as_fd).collect();
            let deadline = Some(Instant::now() + Duration::from_millis(50));
            if let Ok(Some(_)) = sys::poll_any(&fds, PollFlags::IN, deadline) {
                children.retain(|fd| {
                    !matches!(sys::pidfd_reap(fd.as_fd(), false), Ok(Some(_)) | Err(_))
                });
            }
        }
    }
}
