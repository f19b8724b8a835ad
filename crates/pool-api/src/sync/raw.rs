//! What every primitive is made of: a [`Region`] of shared memory holding one [`Shared`]
//! block of atomics (checked for its [`Kind`] when a handle is received), and the lock word
//! with its owner record ([`RawLock`], [`take`], [`give`]) that `Lock`, `RLock`, `Barrier`
//! and `Queue` (`queue.rs`) take and release.
//!
//! It is its own file because it is the layer under every primitive: it knows no primitive's
//! API, and each primitive's file uses it.
//!
//! # A lock whose holder dies is not a deadlock
//!
//! The lock word holds the owner's pid itself (`0`: unlocked; otherwise the pid, with the top
//! bit set when someone waits), so taking the lock and recording who took it are one atomic
//! step: there is no window in which a holder could die unrecorded. Right after, the owner
//! writes a record of its pid and start time beside the word. A waiter sleeps on the futex in
//! slices; when a slice ends with the lock still taken, it checks the owner: dead if no live
//! process has its pid, or if the record is this owner's and the live process with that pid
//! started at another time (the pid was recycled). A record of another pid means the owner
//! has just taken the lock and not written it yet: alive. A dead owner's lock is taken over
//! with a compare-and-swap on its word (so only one waiter wins), and the new holder is told
//! the previous owner died.
//!
//! Kernel robust futexes do not fit: they bind a lock to the thread that holds it, while a
//! `Lock` (as in Python) may be released by another process. A
//! [`Semaphore`](super::Semaphore) has no owner, so a dead process's units are lost, as in
//! Python.

use crate::loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_ipc::shared::SharedRegion;

use crate::loom::futex::{futex_wait, futex_wake};
use crate::loom::process::{ProcessIdentity, thread_id};

use super::error::{SyncError, io};

/// How long a waiter sleeps before it checks whether the lock's owner still lives.
const OWNER_CHECK: Duration = Duration::from_millis(50);
/// The lock word's "someone waits" bit; the rest is the owner's pid.
pub(super) const WAITERS: u32 = 1 << 31;
/// Under loom: the owner's bits of a lock word (for the modelled futex).
#[cfg(loom)]
pub(crate) const LOCK_OWNER: u32 = !WAITERS;
const MAGIC: u32 = 0x706f_6f6c;

/// The outcome of taking a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the lock is held: release it (or use `lock()` for a guard)"]
pub struct Acquired {
    /// The pid of the previous owner if it died holding the lock (the state it protected may
    /// be half-updated).
    pub previous_owner_died: Option<u32>,
}

/// This process's identity, the owner record of every lock it takes. On the hot path of every
/// acquire, so it is two atomic loads: no `getpid` syscall, no mutex. A forked child must not
/// use its parent's identity: a `pthread_atfork` handler forgets it in the child (glibc's
/// `fork` runs the handlers; `exec` starts from scratch anyway).
#[cfg(not(loom))]
pub(super) fn me() -> ProcessIdentity {
    use std::sync::atomic::AtomicU8;
    static PID: AtomicU32 = AtomicU32::new(0);
    static START: AtomicU64 = AtomicU64::new(0);
    // The fork handler's registration: not yet, under way, done, failed. Never waited for: a
    // child forked while another thread of its parent was registering would otherwise wait
    // for a thread it does not have (a `Once` or `OnceLock` blocks there); it sees "under
    // way" for good and simply never caches.
    const UNREGISTERED: u8 = 0;
    const REGISTERING: u8 = 1;
    const REGISTERED: u8 = 2;
    const FAILED: u8 = 3;
    static FORGET_AFTER_FORK: AtomicU8 = AtomicU8::new(UNREGISTERED);
    extern "C" fn forget() {
        PID.store(0, Ordering::Relaxed);
    }
    let pid = PID.load(Ordering::Acquire);
    if pid != 0 {
        return ProcessIdentity {
            pid,
            start: START.load(Ordering::Relaxed),
        };
    }
    if FORGET_AFTER_FORK
        .compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_ok()
    {
        // SAFETY: the handler only stores to an atomic (async-signal-safe, as a handler
        // running in a forked child must be), and is sound at any fork for the rest of the
        // process's life.
        let registered = unsafe { pool_ipc::os::after_fork_in_child(forget) }.is_ok();
        FORGET_AFTER_FORK.store(
            if registered { REGISTERED } else { FAILED },
            Ordering::Release,
        );
    }
    let forgets = FORGET_AFTER_FORK.load(Ordering::Acquire) == REGISTERED;
    let id = ProcessIdentity::current();
    // An unknown start time (0) is not cached: the next call tries again. Without the fork
    // handler nothing is cached, rather than risk a forked child taking its parent's identity.
    if forgets && id.start != 0 {
        START.store(id.start, Ordering::Relaxed);
        PID.store(id.pid, Ordering::Release);
    }
    id
}

/// Under loom: the process the model says this thread stands for.
#[cfg(loom)]
pub(super) fn me() -> ProcessIdentity {
    ProcessIdentity::current()
}

/// The calling thread's id (unique among live threads of the whole system).
pub(super) fn current_thread() -> u32 {
    thread_id()
}

/// The shared state of one primitive, at the start of its region.
#[repr(C, align(64))]
pub(super) struct Shared {
    magic: AtomicU32,
    kind: AtomicU32,
    /// Lock: 0, or owner pid | WAITERS. Semaphore: the value. Event: 0 or 1.
    pub(super) word: AtomicU32,
    /// Semaphore/Event: how many sleep on `word`.
    pub(super) sleepers: AtomicU32,
    /// Lock: the owner's pid (top 24 bits) and start time (low 40 bits).
    pub(super) owner_record: AtomicU64,
    /// RLock: owning thread and depth.
    pub(super) owner_thread: AtomicU32,
    pub(super) depth: AtomicU32,
    /// BoundedSemaphore: the bound.
    pub(super) bound: AtomicU32,
    /// Condition: bumped by every notify. Barrier: the generation.
    pub(super) seq: AtomicU32,
    /// Barrier: arrivals in this generation, the parties, whether broken, and the last
    /// generation that ended broken (plus one; 0: none).
    pub(super) count: AtomicU32,
    pub(super) parties: AtomicU32,
    pub(super) broken: AtomicU32,
    pub(super) broken_generation: AtomicU32,
    /// Barrier: the encoded action (a `Call`), if any, stored at `ACTION_OFFSET`.
    pub(super) action_len: AtomicU32,
    /// Condition: its waiters (high 32 bits) and the wake-ups notify granted them and none
    /// took yet (low 32 bits; never more than the waiters). One word, so that both change
    /// together (see [`Condition::notify`](super::Condition::notify)).
    pub(super) waiting: AtomicU64,
}

#[cfg(loom)]
impl Shared {
    fn new() -> Shared {
        const { assert!(std::mem::size_of::<Shared>() <= 1024) };
        Shared {
            magic: AtomicU32::new(0),
            kind: AtomicU32::new(0),
            word: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            owner_record: AtomicU64::new(0),
            owner_thread: AtomicU32::new(0),
            depth: AtomicU32::new(0),
            bound: AtomicU32::new(0),
            seq: AtomicU32::new(0),
            count: AtomicU32::new(0),
            parties: AtomicU32::new(0),
            broken: AtomicU32::new(0),
            broken_generation: AtomicU32::new(0),
            action_len: AtomicU32::new(0),
            waiting: AtomicU64::new(0),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub(super) enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    BoundedSemaphore = 4,
    Event = 5,
    Condition = 6,
    Barrier = 7,
}

/// A region holding one primitive's `Shared`, checked for its kind when received.
pub(super) struct Region {
    pub(super) region: SharedRegion,
}

impl Region {
    pub(super) fn create(kind: Kind) -> Result<Arc<Region>, SyncError> {
        let region = SharedRegion::create("pool-sync", 4096).map_err(io)?;
        // Under loom the atomics are objects of the model: put fresh ones in place.
        #[cfg(loom)]
        // SAFETY: the region is 4096 bytes, page-aligned and ours alone; `Shared` fits below
        // the barrier's action (asserted in `Shared::new`).
        unsafe {
            region.as_ptr().cast::<Shared>().write(Shared::new())
        };
        let r = Region { region };
        r.state().magic.store(MAGIC, Ordering::Relaxed);
        r.state().kind.store(kind as u32, Ordering::Release);
        Ok(Arc::new(r))
    }

    pub(super) fn open(fd: std::os::fd::OwnedFd, kind: Kind) -> Result<Arc<Region>, String> {
        let region = SharedRegion::open(fd).map_err(|e| e.to_string())?;
        if region.len() < std::mem::size_of::<Shared>() {
            return Err("a shared primitive's region is too small".into());
        }
        let r = Region { region };
        if r.state().magic.load(Ordering::Acquire) != MAGIC
            || r.state().kind.load(Ordering::Acquire) != kind as u32
        {
            return Err(format!("the descriptor is not a {kind:?}"));
        }
        Ok(Arc::new(r))
    }

    pub(super) fn state(&self) -> &Shared {
        // SAFETY: the region is page-aligned and at least `size_of::<Shared>()` long (made so
        // by `create`, checked by `open`); `Shared` is only atomics, valid for any bytes, and
        // only ever accessed through shared references.
        unsafe { &*self.region.as_ptr().cast::<Shared>() }
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Region")
            .field("word", &self.state().word.load(Ordering::Relaxed))
            .finish()
    }
}

/// Makes a primitive whose handle is `$ty(Arc<Region>)` a serde value: its region's
/// descriptor travels as a handle (see `handles.rs`), checked for `$kind` when received.
macro_rules! handle_serde {
    ($ty:ident, $kind:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                $crate::handles::serialize_fd(self.0.region.fd(), serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                use serde::de::Error as _;
                let fd = $crate::handles::deserialize_fd(deserializer)?;
                $crate::sync::raw::Region::open(fd, $kind)
                    .map($ty)
                    .map_err(D::Error::custom)
            }
        }
    };
}
pub(super) use handle_serde;

/// A lock word and its owner record, wherever they live in shared memory.
pub(crate) struct RawLock<'a> {
    pub(crate) word: &'a AtomicU32,
    pub(crate) record: &'a AtomicU64,
}

impl RawLock<'_> {
    /// Takes the lock for this process, waiting until `deadline` (see [`take_raw`]).
    pub(crate) fn acquire(&self, deadline: Option<Instant>) -> Result<Acquired, SyncError> {
        take_raw(self.word, self.record, me(), deadline, true)
    }

    /// Releases it.
    pub(crate) fn release(&self) -> Result<(), SyncError> {
        give_raw(self.word)
    }
}

/// Under loom, the lock of `queue.rs` and `values.rs`, whose lock words keep std's atomics
/// and are not modelled (the Queue's model takes a modelled `Lock`): it only has to compile.
#[cfg(loom)]
pub(crate) struct UnmodelledRawLock<'a> {
    pub(crate) word: &'a std::sync::atomic::AtomicU32,
    pub(crate) record: &'a std::sync::atomic::AtomicU64,
}

#[cfg(loom)]
impl UnmodelledRawLock<'_> {
    pub(crate) fn acquire(&self, _: Option<Instant>) -> Result<Acquired, SyncError> {
        let _ = (self.word, self.record);
        unimplemented!("the Queue's and Value's locks are not modelled")
    }

    pub(crate) fn release(&self) -> Result<(), SyncError> {
        unimplemented!("the Queue's and Value's locks are not modelled")
    }
}

/// Takes `s`'s lock word for `owner` (see [`take_raw`]).
pub(super) fn take(
    s: &Shared,
    owner: ProcessIdentity,
    deadline: Option<Instant>,
    block: bool,
) -> Result<Acquired, SyncError> {
    take_raw(&s.word, &s.owner_record, owner, deadline, block)
}

/// Takes the lock word for `owner`, waiting until `deadline`; takes it over if its owner died.
fn take_raw(
    word: &AtomicU32,
    owner_record: &AtomicU64,
    owner: ProcessIdentity,
    deadline: Option<Instant>,
    block: bool,
) -> Result<Acquired, SyncError> {
    let mine = owner.pid & !WAITERS;
    let won = |died: Option<u32>| {
        owner_record.store(record(owner), Ordering::Relaxed);
        Ok(Acquired {
            previous_owner_died: died,
        })
    };
    if word
        .compare_exchange(0, mine, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return won(None);
    }
    if !block {
        // Even an attempt that does not wait takes over a dead owner's lock: a caller that
        // only ever polls must not be locked out for good.
        let now = word.load(Ordering::Relaxed);
        return match take_over(word, owner_record, now, mine | (now & WAITERS)) {
            Some(pid) => won(Some(pid)),
            None => Err(SyncError::WouldBlock),
        };
    }
    loop {
        let cur = word.load(Ordering::Relaxed);
        if cur == 0 {
            // Taken with the waiters bit, since others may sleep: the release will wake one.
            if word
                .compare_exchange(0, mine | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return won(None);
            }
            continue;
        }
        if cur & WAITERS == 0
            && word
                .compare_exchange(cur, cur | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        let slice = Instant::now() + OWNER_CHECK;
        let until = deadline.map_or(slice, |d| d.min(slice));
        futex_wait(word, cur | WAITERS, Some(until)).map_err(io)?;
        // Still taken by the same owner after a slice (or at the deadline, however short):
        // does it live?
        let now = word.load(Ordering::Relaxed);
        if now & !WAITERS == cur & !WAITERS {
            if let Some(pid) = take_over(word, owner_record, now, mine | WAITERS) {
                return won(Some(pid));
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(SyncError::Timeout);
        }
    }
}

/// Replaces the lock word `seen` by `mine` if it names an owner that died; that owner's pid.
/// The compare-and-swap fails if anything changed meanwhile (a release, a takeover by another
/// waiter), so a lock never gets two holders.
fn take_over(word: &AtomicU32, owner_record: &AtomicU64, seen: u32, mine: u32) -> Option<u32> {
    let pid = seen & !WAITERS;
    (pid != 0
        && holder_died(pid, owner_record.load(Ordering::Relaxed))
        && word
            .compare_exchange(seen, mine, Ordering::Acquire, Ordering::Relaxed)
            .is_ok())
    .then_some(pid)
}

const START_BITS: u32 = 40;
const START_MASK: u64 = (1 << START_BITS) - 1;

/// A start time that says "unknown": the record then identifies the owner by pid only.
const UNKNOWN_START: u64 = START_MASK;

/// The owner record: pid and start time in one word, so that a reader can tell whose it is.
fn record(owner: ProcessIdentity) -> u64 {
    let start = if owner.start == 0 {
        UNKNOWN_START
    } else {
        owner.start & START_MASK
    };
    (u64::from(owner.pid) << START_BITS) | start
}

/// Whether the lock's holder `pid` is dead, given the owner record (see the module docs).
/// When `/proc` cannot tell, the holder counts as alive: a lock must never have two holders.
fn holder_died(pid: u32, record: u64) -> bool {
    match ProcessIdentity::lookup(pid) {
        Ok(None) => true,
        Ok(Some(live)) => {
            let recorded = record & START_MASK;
            record >> START_BITS == u64::from(pid)
                && recorded != UNKNOWN_START
                && recorded != live.start & START_MASK
        }
        Err(_) => false,
    }
}

pub(super) fn give(s: &Shared) -> Result<(), SyncError> {
    give_raw(&s.word)
}

fn give_raw(word: &AtomicU32) -> Result<(), SyncError> {
    let prev = word.swap(0, Ordering::Release);
    if prev == 0 {
        return Err(SyncError::NotLocked);
    }
    if prev & WAITERS != 0 {
        futex_wake(word, 1);
    }
    Ok(())
}

pub(super) fn deadline_of(timeout: Duration) -> Option<Instant> {
    crate::deadline_in(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_does_not_keep_its_parents_identity() {
        let parent = me();
        assert_eq!(parent.pid, std::process::id());
        assert_eq!(me(), parent, "cached");
        // SAFETY: the child only computes its identity (a /proc read, allocation: glibc's
        // malloc is fork-safe) and `_exit`s without returning to the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let child = me();
            let ok = child.pid == std::process::id() && child != parent;
            // SAFETY: ends the forked child at once, as after any fork.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
