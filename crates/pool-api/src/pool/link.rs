//! The parent's link to one worker ([`WorkerLink`]): the sending half with its outbox and
//! the writer thread that drains it, and the receiving half with the slot where it waits
//! while the reader thread has stepped aside for callers ([`RxSlot`], [`Claim`]).
//!
//! It is its own file because it is the one place that moves bytes to and from a worker: it
//! knows messages and payloads, not the scheduler, jobs or the pool's state, which the driver
//! (`driver.rs`) keeps. The driver's module documentation says why no thread that receives
//! from workers (nor the timer, nor the spawner) ever blocks sending to one, and how the
//! receiving half moves between the reader thread and callers ("Receiving"); this file holds
//! the mechanisms that keep those rules: [`forbid_blocking_sends`], [`drain`], the slot.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pool_ipc::Killer;

use crate::loom;

use super::payload::{ChunkResult, Payload};
use crate::task::{self, FromWorker, ToWorker};

/// The parent's link to one worker.
#[derive(Debug)]
pub(crate) struct WorkerLink {
    pub(super) pid: u32,
    pub(super) killer: Killer,
    pub(super) outbox: Mailbox,
    /// The sending half; taken by whoever drains the outbox (`Outbox::draining`).
    pub(super) sender: Mutex<pool_ipc::Sender>,
    /// The receiving half while its reader thread has stepped aside (see the driver's
    /// "Receiving").
    pub(super) receiving: Mutex<RxSlot>,
    /// Wakes the parked reader thread.
    pub(super) resume: Condvar,
    /// A caller asks the reader thread to step aside after its next message.
    pub(super) rx_wanted: AtomicBool,
}

/// Where a worker's receiving half waits while its reader thread is parked.
#[derive(Debug, Default)]
pub(super) struct RxSlot {
    /// Here while nobody receives; taken by a caller, or by the reader when it resumes.
    rx: Option<pool_ipc::Receiver>,
    /// The reader thread is waiting for `rx` (a kick must wake it).
    parked: bool,
    /// The parked reader waits only for `rx` to come back (its time is up, or it was kicked
    /// while a caller held it): giving it back must wake it.
    due: bool,
    /// There is work for the reader: it takes `rx` as soon as it is here.
    kick: bool,
    /// A caller met the end of the channel: the reader takes over to reap the worker.
    end: Option<RxEnd>,
}

/// Why a worker's messages stop being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RxEnd {
    /// The worker closed its channel: it exited, or is exiting.
    Closed,
    /// An unreadable message, or one that broke the protocol: the worker is killed.
    Untrusted,
}

/// What waits to be sent to a worker, and the writer thread's sleep on it: the one protocol
/// of this file with a "wake only a sleeper" flag (`writer_asleep`), over the loom facade's
/// `Mutex` and `Condvar` so that its model (`loom_tests` below) runs this very code.
#[derive(Debug)]
pub(super) struct Mailbox {
    state: loom::sync::Mutex<Outbox>,
    /// Wakes the worker's writer thread.
    ready: loom::sync::Condvar,
}

#[derive(Debug, Default)]
struct Outbox {
    queue: VecDeque<Outgoing>,
    /// Someone is sending this worker's messages: others leave theirs in the queue, which
    /// keeps them in order.
    draining: bool,
    closed: bool,
    /// The writer thread sleeps on `ready` (see [`Mailbox::wake_writer`]).
    writer_asleep: bool,
}

impl Outbox {
    /// Nothing for the writer thread to do: open, and empty or being drained by another.
    fn idle(&self) -> bool {
        !self.closed && (self.queue.is_empty() || self.draining)
    }
}

impl Mailbox {
    pub(super) fn new() -> Mailbox {
        Mailbox {
            state: loom::sync::Mutex::new(Outbox::default()),
            ready: loom::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> loom::sync::MutexGuard<'_, Outbox> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, msg: Outgoing) {
        self.lock().queue.push_back(msg);
    }

    /// Wakes the writer thread if it sleeps. It marks itself asleep under the lock after
    /// finding nothing to do, so a message pushed under that lock before this call is
    /// either seen by it or finds it marked; no futex call is made for a writer awake.
    fn wake_writer(&self) {
        let asleep = self.lock().writer_asleep;
        if asleep {
            self.ready.notify_one();
        }
    }

    /// Stops the writer thread (the worker is gone).
    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Takes the queue to send it: `Err` once the worker is gone, `Ok(None)` if someone
    /// else is sending (it, or the writer thread, sends what is queued).
    fn take_for_drain(&self) -> Result<Option<VecDeque<Outgoing>>, Closed> {
        let mut outbox = self.lock();
        if outbox.closed {
            return Err(Closed);
        }
        if outbox.draining {
            return Ok(None);
        }
        outbox.draining = true;
        Ok(Some(std::mem::take(&mut outbox.queue)))
    }

    /// Ends a drain: what `batch` still holds goes back first (or, with `ok` false, the
    /// worker is gone and nothing stays), and the writer is woken if it sleeps with
    /// messages queued.
    fn end_drain(&self, mut batch: VecDeque<Outgoing>, ok: bool) {
        let wake = {
            let mut outbox = self.lock();
            outbox.draining = false;
            if ok {
                // What was not sent goes before what was queued meanwhile.
                batch.append(&mut outbox.queue);
                outbox.queue = batch;
            } else {
                outbox.queue.clear();
            }
            !outbox.queue.is_empty() && outbox.writer_asleep
        };
        if wake {
            self.ready.notify_one();
        }
    }

    /// The writer thread waits until there is something for it to send (`true`) or the
    /// worker is gone (`false`).
    fn wait_for_work(&self) -> bool {
        let mut outbox = self.lock();
        // Before sleeping, yield a few times: on a machine with fewer CPUs than ready
        // threads the reader that will hand over the next task is often running right
        // then, and a condvar sleep costs a wake-up per task (W2b, pipelined apply_async).
        let mut yields = WRITER_YIELDS;
        while outbox.idle() && yields > 0 {
            yields -= 1;
            drop(outbox);
            loom::yield_now();
            outbox = self.lock();
        }
        while outbox.idle() {
            outbox.writer_asleep = true;
            outbox = self.ready.wait(outbox).unwrap_or_else(|e| e.into_inner());
            outbox.writer_asleep = false;
        }
        !outbox.closed
    }
}

/// The worker is gone: its outbox takes nothing more.
struct Closed;

thread_local! {
    /// Whether this thread may block sending to a worker. Never a thread that receives from
    /// workers (a reader), nor the timer, nor the spawner: see the driver's module
    /// documentation.
    pub(super) static MAY_BLOCK_SENDING: std::cell::Cell<bool> =
        const { std::cell::Cell::new(true) };
}

pub(super) fn forbid_blocking_sends() {
    MAY_BLOCK_SENDING.with(|c| c.set(false));
}

impl WorkerLink {
    /// Takes the receiving half if the reader thread left it; otherwise asks the reader to
    /// step aside after its next message, for the next caller.
    pub(super) fn claim(&self) -> Option<pool_ipc::Receiver> {
        let mut slot = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
        if slot.end.is_none() {
            if let Some(rx) = slot.rx.take() {
                return Some(rx);
            }
        }
        drop(slot);
        self.rx_wanted.store(true, Ordering::Release);
        None
    }

    /// A caller gives the receiving half back, with the reader woken if its worker still
    /// has work or the channel ended.
    fn give_back(&self, rx: pool_ipc::Receiver, end: Option<RxEnd>, busy: bool) {
        let mut slot = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
        slot.rx = Some(rx);
        if end.is_some() {
            slot.end = end;
        }
        slot.kick |= busy || end.is_some();
        let wake = slot.parked && (slot.kick || slot.due);
        drop(slot);
        if wake {
            self.resume.notify_one();
        }
    }

    /// There is work no caller will receive for: the reader thread resumes if parked.
    pub(super) fn kick(&self) {
        let mut slot = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
        slot.kick = true;
        let wake = slot.parked;
        drop(slot);
        if wake {
            self.resume.notify_one();
        }
    }

    /// The reader thread steps aside: leaves `rx` for callers and waits until there is work
    /// for it (or [`PARK_AT_MOST`] passed) and the half is back.
    pub(super) fn park(&self, rx: pool_ipc::Receiver) -> (pool_ipc::Receiver, Option<RxEnd>) {
        let mut slot = self.receiving.lock().unwrap_or_else(|e| e.into_inner());
        slot.rx = Some(rx);
        slot.parked = true;
        let since = Instant::now();
        loop {
            let waited = since.elapsed();
            if slot.kick || slot.end.is_some() || waited >= PARK_AT_MOST {
                if let Some(rx) = slot.rx.take() {
                    slot.parked = false;
                    slot.due = false;
                    slot.kick = false;
                    return (rx, slot.end.take());
                }
                // A caller holds it: it gives it back when answered, and wakes us.
                slot.due = true;
                slot = self.resume.wait(slot).unwrap_or_else(|e| e.into_inner());
            } else {
                slot = self
                    .resume
                    .wait_timeout(slot, PARK_AT_MOST - waited)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }

    /// Wakes the writer thread if it sleeps (see [`Mailbox::wake_writer`]).
    pub(super) fn wake_writer(&self) {
        self.outbox.wake_writer();
    }

    pub(super) fn push(&self, msg: Outgoing) {
        self.outbox.push(msg);
    }

    /// Stops the writer thread (the worker is gone).
    pub(super) fn close(&self) {
        self.outbox.close();
    }
}

/// A worker's message as received: decoded, its frame (which holds a result's bytes), where
/// the body starts, and the result decoded ahead of the lock, if it was.
pub(super) struct Received {
    pub(super) msg: FromWorker,
    pub(super) frame: Vec<u8>,
    pub(super) body_at: usize,
    pub(super) decoded: Option<ChunkResult>,
}

#[derive(Debug)]
pub(super) enum Outgoing {
    Task { header: Vec<u8>, body: Payload },
    Retire,
}

/// Sends what the worker's outbox holds, in order, unless someone else is already doing so
/// (then that drainer, or the writer thread, will). Returns `false` once the worker is gone.
///
/// With `wait` false, for a thread that must not block sending (see the driver's
/// module documentation), it sends only the messages the channel takes at once; the rest stays
/// first in the outbox, for the writer thread, woken for it.
pub(super) fn drain(link: &WorkerLink, wait: bool) -> bool {
    let mut batch = match link.outbox.take_for_drain() {
        Ok(Some(batch)) => batch,
        Ok(None) => return true,
        Err(Closed) => return false,
    };
    let ok = send_all(link, &mut batch, wait);
    link.outbox.end_drain(batch, ok);
    ok
}

/// Sends messages from the front of `batch`, in order, removing each one sent; without
/// `wait`, stops at the first the channel does not take at once. A send that fails means the
/// worker is gone (its reader thread reports the exit); it is killed to be sure.
fn send_all(link: &WorkerLink, batch: &mut VecDeque<Outgoing>, wait: bool) -> bool {
    let mut sender = link.sender.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(msg) = batch.front() {
        let sent = match msg {
            Outgoing::Task { header, body } if wait => {
                use std::os::fd::AsFd;
                let fds: Vec<_> = body.fds().iter().map(AsFd::as_fd).collect();
                body.with_parts(header, |parts| {
                    sender.send_parts_with_fds(parts, &fds, None).map(|()| true)
                })
            }
            Outgoing::Task { header, body } if body.fds().is_empty() => {
                body.with_parts(header, |parts| sender.try_send_parts(parts))
            }
            // Descriptors travel over a socket only, and a socket send may wait.
            Outgoing::Task { .. } => Ok(false),
            Outgoing::Retire => match task::header_bytes(&ToWorker::Retire) {
                Ok(header) if wait => sender.send(&header, None).map(|()| true),
                Ok(header) => sender.try_send_parts(&[&header]),
                Err(_) => Ok(true),
            },
        };
        match sent {
            Ok(true) => {
                batch.pop_front();
            }
            Ok(false) => break,
            Err(_) => {
                let _ = link.killer.kill();
                return false;
            }
        }
    }
    true
}

/// A worker's writer thread: drains its outbox whenever told to, until the worker is gone.
pub(super) fn writer(link: Arc<WorkerLink>) {
    while link.outbox.wait_for_work() {
        if !drain(&link, true) {
            return;
        }
    }
}

/// How many times a writer thread with nothing to send yields before it sleeps.
const WRITER_YIELDS: u32 = 2;

/// A caller's hold on a worker's receiving half: given back when dropped, also if handling
/// a message panicked (the reader thread would otherwise wait for it forever).
pub(super) struct Claim<'a> {
    pub(super) link: &'a WorkerLink,
    pub(super) rx: Option<pool_ipc::Receiver>,
    pub(super) end: Option<RxEnd>,
    pub(super) busy: bool,
    pub(super) may_block: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        MAY_BLOCK_SENDING.with(|c| c.set(self.may_block));
        if let Some(mut rx) = self.rx.take() {
            rx.set_spin(None);
            // A panic mid-message leaves the channel in an unknown state: the reader ends it.
            let end = self
                .end
                .or(std::thread::panicking().then_some(RxEnd::Untrusted));
            self.link.give_back(rx, end, self.busy);
        }
    }
}

/// How long a caller that receives its own answer spins for each message before it sleeps.
pub(super) const CALLER_SPIN: Duration = Duration::from_micros(50);

/// How long a parked reader thread leaves its worker's channel to callers before it
/// receives again (see the driver's "Receiving"): the longest an idle worker's death goes
/// unseen.
const PARK_AT_MOST: Duration = Duration::from_millis(10);

/// The model of the writer's asleep flag (`cargo xtask loom`): the real [`Mailbox`], a writer
/// thread running [`Mailbox::wait_for_work`] as [`writer`] does (sending a batch is counting
/// it), a caller that queues a message and wakes the writer only if the flag says it sleeps
/// (`apply_async`), and a reader thread that must not block: it takes the queue, sends
/// nothing (the channel is full) and puts it back. Every message is sent although the wakes
/// are skipped whenever the flag says nobody sleeps: a writer asleep with messages queued
/// is a loom deadlock (the main thread waits for the count).
#[cfg(all(test, loom))]
mod loom_tests {
    use std::collections::VecDeque;

    use ::loom::sync::{Arc, Condvar, Mutex};
    use ::loom::thread;

    use super::{Mailbox, Outgoing};

    #[test]
    fn writer_asleep_flag_loses_no_message() {
        ::loom::model(|| {
            let mailbox = Arc::new(Mailbox::new());
            let sent = Arc::new((Mutex::new(0usize), Condvar::new()));
            let writer = {
                let (mailbox, sent) = (mailbox.clone(), sent.clone());
                thread::spawn(move || {
                    while mailbox.wait_for_work() {
                        if let Ok(Some(batch)) = mailbox.take_for_drain() {
                            let n = batch.len();
                            mailbox.end_drain(VecDeque::new(), true);
                            *sent.0.lock().unwrap() += n;
                            sent.1.notify_all();
                        }
                    }
                })
            };
            let caller = {
                let mailbox = mailbox.clone();
                thread::spawn(move || {
                    mailbox.push(Outgoing::Retire);
                    mailbox.wake_writer();
                })
            };
            let reader = {
                let mailbox = mailbox.clone();
                thread::spawn(move || {
                    mailbox.push(Outgoing::Retire);
                    if let Ok(Some(batch)) = mailbox.take_for_drain() {
                        mailbox.end_drain(batch, true);
                    }
                })
            };
            caller.join().unwrap();
            reader.join().unwrap();
            let mut count = sent.0.lock().unwrap();
            while *count < 2 {
                count = sent.1.wait(count).unwrap();
            }
            assert_eq!(*count, 2, "each message sent once");
            drop(count);
            mailbox.close();
            writer.join().unwrap();
        });
    }
}
