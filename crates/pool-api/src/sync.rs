//! Locks, semaphores and events shared between processes: futexes in shared memory.
//!
//! Each primitive is a small [`SharedRegion`] (an anonymous memfd) holding atomics; handles
//! are serde values that travel to children in their arguments, like a pipe end.
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
//! `Lock` (as in Python) may be released by another process. A [`Semaphore`] has no owner, so
//! a dead process's units are lost, as in Python.
//!
//! # Memory ordering
//!
//! Acquiring is an `Acquire` compare-and-swap on the lock word and releasing a `Release`
//! swap, so everything written under the lock happens-before the next holder's reads. The
//! owner record is advisory (it only refines the liveness check) and uses `Relaxed`.
//!
//! Where a waker stores one word (an event's flag, a semaphore's count, a condition's
//! sequence) and then reads another (how many sleep), and a sleeper does the opposite (counts
//! itself, then sleeps on the first word), both sides are `SeqCst`: with weaker orderings the
//! waker's store could be ordered after its load (store buffering), it would see no sleeper,
//! the sleeper would see the old value, and the wake-up would be lost (found in review).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pool_ipc::shared::{ProcessIdentity, SharedRegion, futex_wait, futex_wake};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::handles;

/// How long a waiter sleeps before it checks whether the lock's owner still lives.
const OWNER_CHECK: Duration = Duration::from_millis(50);
/// The lock word's "someone waits" bit; the rest is the owner's pid.
const WAITERS: u32 = 1 << 31;
const MAGIC: u32 = 0x706f_6f6c;

/// Why a lock, semaphore or event operation did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A timed wait ended before it succeeded.
    #[error("timed out")]
    Timeout,
    /// A non-blocking attempt found it taken.
    #[error("would block")]
    WouldBlock,
    /// `release` of a lock that is not locked (Python's `ValueError`/`RuntimeError`).
    #[error("release of an unlocked lock")]
    NotLocked,
    /// `release` of an `RLock` by a process or thread that does not own it.
    #[error("release of an RLock not owned by this thread")]
    NotOwner,
    /// `release` of a `BoundedSemaphore` above its initial value.
    #[error("semaphore released too many times")]
    TooManyReleases,
    /// A `Barrier` was aborted, reset while this process waited, timed out, or its action
    /// panicked (Python's `BrokenBarrierError`).
    #[error("the barrier is broken")]
    BrokenBarrier,
    /// An argument that makes no sense (a barrier of 0 parties).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The OS refused (creating the shared memory, a futex).
    #[error("OS error: {0}")]
    Io(String),
}

/// The outcome of taking a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "the lock is held: release it (or use `lock()` for a guard)"]
pub struct Acquired {
    /// The pid of the previous owner if it died holding the lock (the state it protected may
    /// be half-updated).
    pub previous_owner_died: Option<u32>,
}

fn io(e: std::io::Error) -> SyncError {
    SyncError::Io(e.to_string())
}

/// This process's identity, the owner record of every lock it takes. On the hot path of every
/// acquire, so it is two atomic loads: no `getpid` syscall, no mutex. A forked child must not
/// use its parent's identity: a `pthread_atfork` handler forgets it in the child (glibc's
/// `fork` runs the handlers; `exec` starts from scratch anyway).
fn me() -> ProcessIdentity {
    use std::sync::Once;
    static PID: AtomicU32 = AtomicU32::new(0);
    static START: AtomicU64 = AtomicU64::new(0);
    static FORGET_AFTER_FORK: Once = Once::new();
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
    FORGET_AFTER_FORK.call_once(|| {
        // SAFETY: registers a handler that only stores to an atomic (async-signal-safe, as a
        // handler running in a forked child must be).
        unsafe { libc::pthread_atfork(None, None, Some(forget)) };
    });
    let id = ProcessIdentity::current();
    // An unknown start time (0) is not cached: the next call tries again.
    if id.start != 0 {
        START.store(id.start, Ordering::Relaxed);
        PID.store(id.pid, Ordering::Release);
    }
    id
}

/// The calling thread's id (unique among live threads of the whole system).
fn current_thread() -> u32 {
    // SAFETY: gettid has no preconditions.
    (unsafe { libc::gettid() }) as u32
}

/// The shared state of one primitive, at the start of its region.
#[repr(C, align(64))]
struct Shared {
    magic: AtomicU32,
    kind: AtomicU32,
    /// Lock: 0, or owner pid | WAITERS. Semaphore: the value. Event: 0 or 1.
    word: AtomicU32,
    /// Semaphore/Event: how many sleep on `word`.
    sleepers: AtomicU32,
    /// Lock: the owner's pid (top 24 bits) and start time (low 40 bits).
    owner_record: AtomicU64,
    /// RLock: owning thread and depth.
    owner_thread: AtomicU32,
    depth: AtomicU32,
    /// BoundedSemaphore: the bound.
    bound: AtomicU32,
    /// Condition: bumped by every notify. Barrier: the generation.
    seq: AtomicU32,
    /// Barrier: arrivals in this generation, the parties, whether broken, and the last
    /// generation that ended broken (plus one; 0: none).
    count: AtomicU32,
    parties: AtomicU32,
    broken: AtomicU32,
    broken_generation: AtomicU32,
    /// Barrier: the encoded action (a `Call`), if any, stored at `ACTION_OFFSET`.
    action_len: AtomicU32,
    /// Condition: its waiters (high 32 bits) and the wake-ups notify granted them and none
    /// took yet (low 32 bits; never more than the waiters). One word, so that both change
    /// together (see [`Condition::notify`]).
    waiting: AtomicU64,
}

/// One waiter in [`Shared::waiting`].
const WAITER: u64 = 1 << 32;
const GRANTS: u64 = WAITER - 1;

/// Where a barrier's encoded action lives in its region.
const ACTION_OFFSET: usize = 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    BoundedSemaphore = 4,
    Event = 5,
    Condition = 6,
    Barrier = 7,
}

/// A region holding one primitive's `Shared`, checked for its kind when received.
struct Region {
    region: SharedRegion,
}

impl Region {
    fn create(kind: Kind) -> Result<Arc<Region>, SyncError> {
        let region = SharedRegion::create("pool-sync", 4096).map_err(io)?;
        let r = Region { region };
        r.state().magic.store(MAGIC, Ordering::Relaxed);
        r.state().kind.store(kind as u32, Ordering::Release);
        Ok(Arc::new(r))
    }

    fn open(fd: std::os::fd::OwnedFd, kind: Kind) -> Result<Arc<Region>, String> {
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

    fn state(&self) -> &Shared {
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

macro_rules! handle_serde {
    ($ty:ident, $kind:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                handles::serialize_fd(self.0.region.fd(), serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                use serde::de::Error as _;
                let fd = handles::deserialize_fd(deserializer)?;
                Region::open(fd, $kind).map($ty).map_err(D::Error::custom)
            }
        }
    };
}

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

/// Takes `s`'s lock word for `owner` (see [`take_raw`]).
fn take(
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

fn give(s: &Shared) -> Result<(), SyncError> {
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

fn deadline_of(timeout: Duration) -> Option<Instant> {
    Some(Instant::now() + timeout)
}

/// Python's `multiprocessing.Lock`: a lock any process may release, shared by passing it to
/// children. A holder that dies does not deadlock it (see the module documentation).
///
/// ```
/// let lock = pool_api::Lock::new()?;
/// {
///     let _guard = lock.lock()?;
///     assert!(lock.try_acquire().is_err());
/// }
/// let taken = lock.try_acquire()?;
/// assert_eq!(taken.previous_owner_died, None);
/// lock.release()?;
/// # Ok::<(), pool_api::SyncError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Lock(Arc<Region>);
handle_serde!(Lock, Kind::Lock);

impl Lock {
    /// A new, unlocked lock.
    pub fn new() -> Result<Lock, SyncError> {
        Region::create(Kind::Lock).map(Lock)
    }

    /// Takes the lock, waiting as long as it takes.
    pub fn acquire(&self) -> Result<Acquired, SyncError> {
        take(self.0.state(), me(), None, true)
    }

    /// Takes the lock, waiting at most `timeout` ([`SyncError::Timeout`]).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Acquired, SyncError> {
        take(self.0.state(), me(), deadline_of(timeout), true)
    }

    /// Takes the lock if it is free, or if its holder died (then
    /// [`Acquired::previous_owner_died`] names it); [`SyncError::WouldBlock`] otherwise. A
    /// failed attempt asks `/proc` whether the holder lives, so it costs microseconds.
    pub fn try_acquire(&self) -> Result<Acquired, SyncError> {
        take(self.0.state(), me(), None, false)
    }

    /// Releases the lock (any process may); [`SyncError::NotLocked`] if it is not locked.
    pub fn release(&self) -> Result<(), SyncError> {
        give(self.0.state())
    }

    /// Takes the lock and returns a guard that releases it when dropped.
    pub fn lock(&self) -> Result<LockGuard<'_>, SyncError> {
        let acquired = self.acquire()?;
        Ok(LockGuard {
            lock: self,
            acquired,
        })
    }
}

/// Holds a [`Lock`] until dropped.
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    acquired: Acquired,
}

impl LockGuard<'_> {
    /// The pid of the previous owner if it died holding the lock.
    pub fn previous_owner_died(&self) -> Option<u32> {
        self.acquired.previous_owner_died
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let _ = self.lock.release();
    }
}

/// Python's `multiprocessing.RLock`: a lock its owning thread (of its owning process) may
/// take again; only the owner may release it. A dead owner is detected as for [`Lock`].
#[derive(Clone, Debug)]
pub struct RLock(Arc<Region>);
handle_serde!(RLock, Kind::RLock);

impl RLock {
    /// A new, unlocked reentrant lock.
    pub fn new() -> Result<RLock, SyncError> {
        Region::create(Kind::RLock).map(RLock)
    }

    fn take(&self, deadline: Option<Instant>, block: bool) -> Result<Acquired, SyncError> {
        let s = self.0.state();
        let id = me();
        if self.held_by(id.pid) {
            s.depth.fetch_add(1, Ordering::Relaxed);
            return Ok(Acquired {
                previous_owner_died: None,
            });
        }
        let acquired = take(s, id, deadline, block)?;
        s.owner_thread.store(current_thread(), Ordering::Relaxed);
        s.depth.store(1, Ordering::Relaxed);
        Ok(acquired)
    }

    /// Takes the lock (again, if this thread holds it).
    pub fn acquire(&self) -> Result<Acquired, SyncError> {
        self.take(None, true)
    }

    /// Takes the lock, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Acquired, SyncError> {
        self.take(deadline_of(timeout), true)
    }

    /// Takes the lock if it is free, already this thread's, or its holder died (as
    /// [`Lock::try_acquire`]).
    pub fn try_acquire(&self) -> Result<Acquired, SyncError> {
        self.take(None, false)
    }

    /// Releases one level; [`SyncError::NotOwner`] if this thread does not hold it.
    pub fn release(&self) -> Result<(), SyncError> {
        let s = self.0.state();
        if !self.held_by_me() {
            return Err(SyncError::NotOwner);
        }
        if s.depth.fetch_sub(1, Ordering::Relaxed) > 1 {
            return Ok(());
        }
        s.owner_thread.store(0, Ordering::Relaxed);
        give(s)
    }
}

/// Python's `multiprocessing.Semaphore`: a counter that `acquire` decrements, waiting while it
/// is zero, and `release` increments. It has no owner: units held by a process that dies are
/// lost (as in Python).
#[derive(Clone, Debug)]
pub struct Semaphore(Arc<Region>);
handle_serde!(Semaphore, Kind::Semaphore);

/// Python's `multiprocessing.BoundedSemaphore`: a [`Semaphore`] that refuses to be released
/// above its initial value.
#[derive(Clone, Debug)]
pub struct BoundedSemaphore(Semaphore);

impl Serialize for BoundedSemaphore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        handles::serialize_fd(self.0.0.region.fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for BoundedSemaphore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<BoundedSemaphore, D::Error> {
        use serde::de::Error as _;
        let fd = handles::deserialize_fd(deserializer)?;
        Region::open(fd, Kind::BoundedSemaphore)
            .map(|r| BoundedSemaphore(Semaphore(r)))
            .map_err(D::Error::custom)
    }
}

impl Semaphore {
    /// A semaphore with `value` units.
    pub fn new(value: u32) -> Result<Semaphore, SyncError> {
        let r = Region::create(Kind::Semaphore)?;
        r.state().word.store(value, Ordering::Release);
        Ok(Semaphore(r))
    }

    fn take(&self, deadline: Option<Instant>, block: bool) -> Result<(), SyncError> {
        let s = self.0.state();
        loop {
            let v = s.word.load(Ordering::Relaxed);
            if v > 0 {
                if s.word
                    .compare_exchange(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if !block {
                return Err(SyncError::WouldBlock);
            }
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let woke = futex_wait(&s.word, 0, deadline);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            if !woke.map_err(io)? && s.word.load(Ordering::Relaxed) == 0 {
                return Err(SyncError::Timeout);
            }
        }
    }

    /// Takes a unit, waiting while there is none.
    pub fn acquire(&self) -> Result<(), SyncError> {
        self.take(None, true)
    }

    /// Takes a unit, waiting at most `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), SyncError> {
        self.take(deadline_of(timeout), true)
    }

    /// Takes a unit if there is one.
    pub fn try_acquire(&self) -> Result<(), SyncError> {
        self.take(None, false)
    }

    /// Gives a unit back.
    pub fn release(&self) -> Result<(), SyncError> {
        let s = self.0.state();
        let bound = s.bound.load(Ordering::Relaxed);
        loop {
            let v = s.word.load(Ordering::Relaxed);
            // The bound is stored plus one, so that 0 means none (a `Semaphore`).
            if (bound != 0 && v >= bound - 1) || v == u32::MAX {
                return Err(SyncError::TooManyReleases);
            }
            if s.word
                .compare_exchange(v, v + 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake(&s.word, 1);
        }
        Ok(())
    }

    /// The current value (approximate: others may change it at any moment).
    pub fn value(&self) -> u32 {
        self.0.state().word.load(Ordering::Relaxed)
    }
}

impl BoundedSemaphore {
    /// A bounded semaphore with `value` units, which is also its bound.
    pub fn new(value: u32) -> Result<BoundedSemaphore, SyncError> {
        if value == u32::MAX {
            return Err(SyncError::InvalidArgument(
                "a bounded semaphore's value must be below u32::MAX",
            ));
        }
        let r = Region::create(Kind::BoundedSemaphore)?;
        r.state().bound.store(value + 1, Ordering::Relaxed);
        r.state().word.store(value, Ordering::Release);
        Ok(BoundedSemaphore(Semaphore(r)))
    }

    /// See [`Semaphore::acquire`].
    pub fn acquire(&self) -> Result<(), SyncError> {
        self.0.acquire()
    }

    /// See [`Semaphore::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), SyncError> {
        self.0.acquire_timeout(timeout)
    }

    /// See [`Semaphore::try_acquire`].
    pub fn try_acquire(&self) -> Result<(), SyncError> {
        self.0.try_acquire()
    }

    /// Gives a unit back; [`SyncError::TooManyReleases`] above the initial value.
    pub fn release(&self) -> Result<(), SyncError> {
        self.0.release()
    }

    /// The current value.
    pub fn value(&self) -> u32 {
        self.0.value()
    }
}

/// Python's `multiprocessing.Event`: a flag that processes can wait for.
#[derive(Clone, Debug)]
pub struct Event(Arc<Region>);
handle_serde!(Event, Kind::Event);

impl Event {
    /// A new, cleared event.
    pub fn new() -> Result<Event, SyncError> {
        Region::create(Kind::Event).map(Event)
    }

    /// Sets the flag and wakes every waiter.
    pub fn set(&self) {
        let s = self.0.state();
        s.word.store(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            futex_wake(&s.word, u32::MAX);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.0.state().word.store(0, Ordering::Release);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.0.state().word.load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set, at most `timeout` (`None`: forever); whether it is set.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, SyncError> {
        let s = self.0.state();
        let deadline = timeout.map(|t| Instant::now() + t);
        while !self.is_set() {
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            // A word other than 0 means set (a scribbling process cannot make us spin).
            let woke = futex_wait(&s.word, 0, deadline);
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            if !woke.map_err(io)? {
                return Ok(self.is_set());
            }
        }
        Ok(true)
    }
}

impl RLock {
    /// Releases every level this thread holds (for `Condition::wait`); the depth to restore.
    fn release_save(&self) -> Result<u32, SyncError> {
        let s = self.0.state();
        if !self.held_by_me() {
            return Err(SyncError::NotOwner);
        }
        let depth = s.depth.swap(0, Ordering::Relaxed);
        s.owner_thread.store(0, Ordering::Relaxed);
        give(s)?;
        Ok(depth)
    }

    /// Takes the lock back at `depth` levels (after `Condition::wait`).
    fn acquire_restore(&self, depth: u32) -> Result<Acquired, SyncError> {
        let s = self.0.state();
        let acquired = take(s, me(), None, true)?;
        s.owner_thread.store(current_thread(), Ordering::Relaxed);
        s.depth.store(depth, Ordering::Relaxed);
        Ok(acquired)
    }

    /// Whether this thread of this process holds the lock.
    fn held_by_me(&self) -> bool {
        self.held_by(me().pid)
    }

    /// Whether this thread of process `pid` (this one) holds the lock.
    fn held_by(&self, pid: u32) -> bool {
        let s = self.0.state();
        let word = s.word.load(Ordering::Acquire);
        word != 0
            && word & !WAITERS == pid
            && s.owner_thread.load(Ordering::Relaxed) == current_thread()
    }
}

/// The lock of a [`Condition`].
#[derive(Clone, Debug, Serialize, Deserialize)]
enum CondLock {
    Lock(Lock),
    RLock(RLock),
}

/// A condition's own futex word.
#[derive(Clone, Debug)]
struct CondState(Arc<Region>);
handle_serde!(CondState, Kind::Condition);

/// Python's `multiprocessing.Condition`: wait until notified, across processes.
///
/// `wait` may return although no `notify` was meant for this waiter (a spurious wake-up, as
/// condition variables allow): check the condition in a loop, or use
/// [`Condition::wait_for`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Condition {
    lock: CondLock,
    state: CondState,
}

impl Condition {
    /// A condition with its own [`RLock`] (Python's default).
    pub fn new() -> Result<Condition, SyncError> {
        Ok(Condition {
            lock: CondLock::RLock(RLock::new()?),
            state: CondState(Region::create(Kind::Condition)?),
        })
    }

    /// A condition over an existing [`Lock`].
    pub fn with_lock(lock: Lock) -> Result<Condition, SyncError> {
        Ok(Condition {
            lock: CondLock::Lock(lock),
            state: CondState(Region::create(Kind::Condition)?),
        })
    }

    /// Takes the condition's lock.
    pub fn acquire(&self) -> Result<Acquired, SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.acquire(),
            CondLock::RLock(l) => l.acquire(),
        }
    }

    /// Takes the condition's lock, waiting at most `timeout` ([`SyncError::Timeout`]).
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Acquired, SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.acquire_timeout(timeout),
            CondLock::RLock(l) => l.acquire_timeout(timeout),
        }
    }

    /// Takes the condition's lock if that needs no wait ([`SyncError::WouldBlock`] otherwise).
    pub fn try_acquire(&self) -> Result<Acquired, SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.try_acquire(),
            CondLock::RLock(l) => l.try_acquire(),
        }
    }

    /// Releases the condition's lock.
    pub fn release(&self) -> Result<(), SyncError> {
        match &self.lock {
            CondLock::Lock(l) => l.release(),
            CondLock::RLock(l) => l.release(),
        }
    }

    fn check_held(&self) -> Result<(), SyncError> {
        let held = match &self.lock {
            // A `Lock` records its holder's pid, not its thread: held by this process (Python
            // checks the thread too).
            CondLock::Lock(l) => l.0.state().word.load(Ordering::Acquire) & !WAITERS == me().pid,
            CondLock::RLock(l) => l.held_by_me(),
        };
        if held {
            Ok(())
        } else {
            Err(SyncError::NotOwner)
        }
    }

    /// Releases the lock, waits to be notified (at most `timeout`; `None`: forever), takes
    /// the lock back. Returns `false` if the timeout passed. The lock must be held
    /// ([`SyncError::NotOwner`] otherwise).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, SyncError> {
        self.check_held()?;
        let s = self.state.0.state();
        let deadline = timeout.map(|t| Instant::now() + t);
        // Counted under the lock: a notify (which needs the lock) sees this waiter exactly
        // when it comes after this wait began; and only a notify after that (one that moved
        // `seq` past `arrived`) was meant for it.
        s.waiting.fetch_add(WAITER, Ordering::SeqCst);
        let arrived = s.seq.load(Ordering::SeqCst);
        let released = match &self.lock {
            CondLock::Lock(l) => l.release().map(|()| 0),
            CondLock::RLock(l) => l.release_save(),
        };
        let saved = match released {
            Ok(saved) => saved,
            Err(e) => {
                leave(s);
                return Err(e);
            }
        };
        let woke = take_grant(s, arrived, deadline);
        let _retaken = match &self.lock {
            CondLock::Lock(l) => l.acquire()?,
            CondLock::RLock(l) => l.acquire_restore(saved)?,
        };
        woke
    }

    /// Waits until `predicate` holds (checked with the lock held), at most `timeout`; the
    /// predicate's last value.
    pub fn wait_for(
        &self,
        mut predicate: impl FnMut() -> bool,
        timeout: Option<Duration>,
    ) -> Result<bool, SyncError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if predicate() {
                return Ok(true);
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(predicate()),
                },
                None => None,
            };
            self.wait(left)?;
        }
    }

    /// Wakes up to `n` of the waiters (fewer if fewer wait), as Python's: it grants `n`
    /// wake-ups, each taken by one waiter of those waiting now (a waiter that starts waiting
    /// later cannot take them). The lock must be held.
    ///
    /// Grants are not labelled with their notify, so while an earlier one is still untaken
    /// (a woken waiter has not run yet, or died waiting) a waiter could take it in place of
    /// the one it was meant for. So a notify that finds one untaken wakes every waiter: more
    /// than `n` (spurious wake-ups, which CPython's documentation allows and
    /// [`Condition::wait_for`] absorbs), never a waiter missing its notify. A dead waiter's
    /// untaken grant makes every later notify wake all. A notify never waits for a waiter, so
    /// a dead one cannot hang it.
    pub fn notify(&self, n: u32) -> Result<(), SyncError> {
        self.check_held()?;
        let s = self.state.0.state();
        let mut cur = s.waiting.load(Ordering::SeqCst);
        let granted = loop {
            let (waiters, grants) = (cur >> 32, cur & GRANTS);
            let grant = if grants > 0 {
                waiters.saturating_sub(grants)
            } else {
                u64::from(n).min(waiters)
            };
            if grant == 0 {
                return Ok(());
            }
            match s.waiting.compare_exchange_weak(
                cur,
                cur + grant,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break grant,
                Err(now) => cur = now,
            }
        };
        // After the grant: a waiter that read `seq` before this bump and saw no grant is in,
        // or about to enter, its futex wait on the old value, which this bump ends.
        s.seq.fetch_add(1, Ordering::SeqCst);
        futex_wake(&s.seq, u32::try_from(granted).unwrap_or(u32::MAX));
        Ok(())
    }

    /// Wakes every waiter. The lock must be held.
    pub fn notify_all(&self) -> Result<(), SyncError> {
        self.notify(u32::MAX)
    }
}

/// A condition waiter's wait for a grant (see [`Condition::notify`]), once its lock is
/// released: `true` if it took one, `false` if `deadline` passed first. Only a grant made
/// after the waiter arrived (`seq` moved past `arrived`) is its to take: a waiter that comes
/// back to wait at once must not take the grant of one that was woken with it and has not
/// run yet. A grant that arrives with the deadline is still taken, so none is left behind.
fn take_grant(s: &Shared, arrived: u32, deadline: Option<Instant>) -> Result<bool, SyncError> {
    loop {
        // `seq` before `waiting` (both SeqCst): a notify whose grant this look misses bumps
        // `seq` after it, so the futex wait below returns at once or is woken.
        let seq = s.seq.load(Ordering::SeqCst);
        let cur = s.waiting.load(Ordering::SeqCst);
        let take = seq != arrived && cur & GRANTS > 0;
        let next = if take {
            cur - WAITER - 1
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            // Without a grant of its own, grants <= waiters - 1 still holds.
            cur.saturating_sub(WAITER)
        } else {
            if let Err(e) = futex_wait(&s.seq, seq, deadline) {
                leave(s);
                return Err(io(e));
            }
            continue;
        };
        if s.waiting
            .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return Ok(take);
        }
    }
}

/// A condition waiter that gives up (an error) stops being counted.
fn leave(s: &Shared) {
    let mut cur = s.waiting.load(Ordering::SeqCst);
    loop {
        let waiters = (cur >> 32).saturating_sub(1);
        let next = (waiters << 32) | (cur & GRANTS).min(waiters);
        match s
            .waiting
            .compare_exchange_weak(cur, next, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// Python's `multiprocessing.Barrier`: `parties` processes (or threads) wait until all have
/// arrived; then all go on. `wait` returns each a distinct index; an optional action runs
/// once per round, in the last process to arrive. A timeout, `abort`, a `reset` during a
/// round, or a panicking action breaks it ([`SyncError::BrokenBarrier`]) until `reset`.
#[derive(Clone, Debug)]
pub struct Barrier(Arc<Region>);
handle_serde!(Barrier, Kind::Barrier);

impl Barrier {
    /// A barrier for `parties` (at least 1).
    pub fn new(parties: u32) -> Result<Barrier, SyncError> {
        if parties == 0 {
            return Err(SyncError::InvalidArgument(
                "a barrier needs at least one party",
            ));
        }
        let r = Region::create(Kind::Barrier)?;
        r.state().parties.store(parties, Ordering::Release);
        Ok(Barrier(r))
    }

    /// A barrier whose `action` (a function, or a closure that captures nothing) runs once per
    /// round, in the process that arrives last, before the others go on.
    pub fn with_action(parties: u32, action: fn()) -> Result<Barrier, SyncError> {
        let barrier = Barrier::new(parties)?;
        let call =
            crate::task::Call::new_nullary(action).map_err(|e| SyncError::Io(e.to_string()))?;
        let bytes = postcard::to_stdvec(&call).map_err(|e| SyncError::Io(e.to_string()))?;
        assert!(
            bytes.len() < 4096 - ACTION_OFFSET,
            "an encoded call is a few bytes"
        );
        // SAFETY: the region is 4096 bytes and private to this process until the handle is
        // shared, which happens-after this write (descriptor passing or process start).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                barrier.0.region.as_ptr().add(ACTION_OFFSET),
                bytes.len(),
            )
        };
        barrier
            .0
            .state()
            .action_len
            .store(bytes.len() as u32, Ordering::Release);
        Ok(barrier)
    }

    fn lock(&self) -> RawLock<'_> {
        let s = self.0.state();
        RawLock {
            word: &s.word,
            record: &s.owner_record,
        }
    }

    fn run_action(&self) -> Result<(), String> {
        let len =
            (self.0.state().action_len.load(Ordering::Acquire) as usize).min(4096 - ACTION_OFFSET);
        if len == 0 {
            return Ok(());
        }
        let mut bytes = vec![0u8; len];
        // SAFETY: `len` bytes at `ACTION_OFFSET` lie inside the 4096-byte region (clamped).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.0.region.as_ptr().add(ACTION_OFFSET),
                bytes.as_mut_ptr(),
                len,
            )
        };
        let call: crate::task::Call = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
        call.run(&[], &mut Vec::new())
    }

    /// Waits until every party arrived (at most `timeout`); this party's arrival index, from
    /// 0 to `parties - 1`.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<u32, SyncError> {
        let s = self.0.state();
        let deadline = timeout.map(|t| Instant::now() + t);
        let lock = self.lock();
        let _held = lock.acquire(None)?;
        if s.broken.load(Ordering::Relaxed) != 0 {
            lock.release()?;
            return Err(SyncError::BrokenBarrier);
        }
        let generation = s.seq.load(Ordering::Relaxed);
        let index = s.count.fetch_add(1, Ordering::Relaxed);
        if index + 1 >= s.parties.load(Ordering::Relaxed) {
            let outcome = self.run_action();
            if outcome.is_err() {
                s.broken.store(1, Ordering::Relaxed);
                s.broken_generation
                    .store(generation.wrapping_add(1), Ordering::Relaxed);
            }
            s.count.store(0, Ordering::Relaxed);
            s.seq.store(generation.wrapping_add(1), Ordering::Release);
            lock.release()?;
            futex_wake(&s.seq, u32::MAX);
            return outcome
                .map(|()| index)
                .map_err(|_| SyncError::BrokenBarrier);
        }
        lock.release()?;
        loop {
            let woke = futex_wait(&s.seq, generation, deadline).map_err(io)?;
            if s.seq.load(Ordering::Acquire) != generation {
                // The round ended: well, or broken (reset, abort, a failed action).
                return if s.broken_generation.load(Ordering::Acquire) == generation.wrapping_add(1)
                {
                    Err(SyncError::BrokenBarrier)
                } else {
                    Ok(index)
                };
            }
            if s.broken.load(Ordering::Acquire) != 0 {
                return Err(SyncError::BrokenBarrier);
            }
            if !woke {
                // Timed out: the barrier breaks for everyone in this round, as in Python.
                self.break_round()?;
                return Err(SyncError::BrokenBarrier);
            }
        }
    }

    /// Ends the current round broken.
    fn break_round(&self) -> Result<(), SyncError> {
        let s = self.0.state();
        let lock = self.lock();
        let _held = lock.acquire(None)?;
        let generation = s.seq.load(Ordering::Relaxed);
        s.broken.store(1, Ordering::Relaxed);
        if s.count.load(Ordering::Relaxed) > 0 {
            s.broken_generation
                .store(generation.wrapping_add(1), Ordering::Relaxed);
            s.count.store(0, Ordering::Relaxed);
            s.seq.store(generation.wrapping_add(1), Ordering::Release);
        }
        lock.release()?;
        futex_wake(&s.seq, u32::MAX);
        Ok(())
    }

    /// Breaks the barrier: waiters and later `wait`s get [`SyncError::BrokenBarrier`] until
    /// [`Barrier::reset`].
    pub fn abort(&self) -> Result<(), SyncError> {
        self.break_round()
    }

    /// Makes the barrier usable again; parties waiting in the current round get
    /// [`SyncError::BrokenBarrier`].
    pub fn reset(&self) -> Result<(), SyncError> {
        self.break_round()?;
        let s = self.0.state();
        let lock = self.lock();
        let _held = lock.acquire(None)?;
        s.broken.store(0, Ordering::Relaxed);
        lock.release()
    }

    /// The number of parties.
    pub fn parties(&self) -> u32 {
        self.0.state().parties.load(Ordering::Relaxed)
    }

    /// Parties waiting now.
    pub fn n_waiting(&self) -> u32 {
        self.0.state().count.load(Ordering::Relaxed)
    }

    /// Whether the barrier is broken.
    pub fn broken(&self) -> bool {
        self.0.state().broken.load(Ordering::Acquire) != 0
    }
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
