//! `Queue`, `SimpleQueue` and `JoinableQueue`: Python's process queues, without the feeder
//! thread.
//!
//! # Layout
//!
//! One anonymous memfd: a header page, then a byte ring of records (`u64` length, the
//! encoded item, padding to 8 bytes), addressed by `head` and `tail` counters that only grow:
//! the byte at position `p` lives at `p % size`, `size` being the ring's size now, a power of
//! two recorded in the header.
//!
//! # A ring that grows with what it holds
//!
//! A queue starts with a 64 KiB ring (less if its limit is smaller). A `put` that finds no
//! room, while the queue holds less than its limit (the `capacity` of `with_limits`, 8 GiB by
//! default), grows the ring under the queue's lock: it makes the memfd longer (sealed against
//! shrinking, never against growing), maps the larger ring, doubles the size as often as the
//! item needs (up to the limit rounded up to a power of two), copies the queued bytes whose
//! offset changes, and publishes the new size in the header as its last step. The queued
//! bytes lie in at most two runs of the old ring (before and after its wrap); each run either
//! keeps its offset or moves whole into the new part of the ring, which nobody reads until the
//! size is published, so a grower killed in the middle leaves the old ring as it was, in
//! order. The header page is mapped on its own and never moves (other threads wait on futex
//! words in it); the ring is a second mapping that each process replaces when it sees, under
//! the queue's lock, that the header's size is not the size it mapped: nobody reads or writes
//! through a stale mapping. The reservation is thus at most twice what the queue ever held
//! (and 64 KiB for a small queue), not its limit. The ring never shrinks; its memory is given
//! back (below).
//!
//! # Memory given back
//!
//! The memfd is sparse: memory is allocated only where records are written. The consumer
//! punches consumed space back out in steps (a quarter of the ring, between 64 KiB and
//! 2 MiB), and a growth punches out every page of the ring that holds no queued byte, so a
//! queue costs what it holds plus a step, whatever its ring's size.
//!
//! # Why no feeder thread
//!
//! CPython's `Queue.put` hands the item to a background thread that writes it to a pipe
//! later, which is why a process that put items and exits may lose them or block at exit
//! ("joining processes that use queues"). Here `put` copies the item into the shared ring
//! before it returns: when `put` returns `Ok`, the item is in the queue, and a producer that
//! exits afterwards neither loses it nor blocks.
//!
//! # Crashes
//!
//! Producers and consumers take the queue's lock (the owner-death-aware lock of
//! [`Lock`](crate::Lock)), copy, and only then move `tail` (or `head`) and the item count:
//! moving them is the last step, as publishing the size is a growth's. A process killed in the
//! middle of a copy or a growth has changed nothing that others read, and the next user takes
//! the lock over (and gives back what a dead grower left in the memfd beyond the ring). So no
//! other item is lost or duplicated; the killed producer's item was never in the queue (its
//! `put` never returned), and the killed consumer's item stays there for the next `get`.
//!
//! Positions and the ring's size read from shared memory are checked before use (the size
//! against the memfd's length before mapping): a corrupted header gives an error, never an
//! out-of-bounds access.
//!
//! # How many queues
//!
//! Each queue holds one descriptor and two mappings in every process that uses it, so a
//! process's queues are bounded by its descriptor limit and by `vm.max_map_count` (65 530
//! mappings by default, shared with everything else the process maps), not by address space.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pool_ipc::shared::{SharedRegion, SharedWindow, copy_from_shared, copy_to_shared};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{CodecError, PutError, QueueError};
use crate::handles;
use crate::loom::futex::{futex_wait, futex_wake};
use crate::loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use crate::sync::{RawLock, SyncError};

const MAGIC: u64 = 0x706f_6f6c_7175_6575;
const DATA_OFFSET: u64 = 4096;
const PAGE: u64 = 4096;
/// The queue's limit unless told otherwise: how many bytes of records it holds before `put`
/// waits. Its ring grows towards it only as items need.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8 << 30;
/// The ring's size when a queue is made (or its limit's power of two, if smaller).
const INITIAL_RING: u64 = 64 << 10;
/// Consumed space is given back in steps of a quarter of the ring, within these bounds.
const DISCARD_STEP_MIN: u64 = 64 << 10;
const DISCARD_STEP_MAX: u64 = 2 << 20;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    /// The ring's size now: a power of two, changed only by a growth, under the lock.
    capacity: AtomicU64,
    maxsize: AtomicU64,
    /// The lock's word and owner record: std's atomics also under loom, where the queue's
    /// lock is not modelled (its model takes a modelled `Lock` instead).
    lock: std::sync::atomic::AtomicU32,
    _pad: AtomicU32,
    lock_owner: std::sync::atomic::AtomicU64,
    head: AtomicU64,
    tail: AtomicU64,
    count: AtomicU64,
    discarded: AtomicU64,
    /// Bumped by every put: getters sleep on it.
    put_seq: AtomicU32,
    /// Bumped by every get: putters sleep on it.
    get_seq: AtomicU32,
    getters: AtomicU32,
    putters: AtomicU32,
    /// JoinableQueue: items put and not yet marked done, and a futex word for `join`.
    unfinished: AtomicU64,
    done_seq: AtomicU32,
    joiners: AtomicU32,
    /// How many bytes of records the queue holds at most (the `capacity` it was made with).
    limit: AtomicU64,
}

/// One process's view of a queue: the header page, mapped once, and the ring, mapped at the
/// size this process last saw.
struct Ring {
    /// The memfd; its own mapping is the header page, which never moves.
    region: SharedRegion,
    /// Bytes of records the queue may hold (read once, when made or received).
    limit: u64,
    /// The largest the ring may grow: `limit` rounded up to a power of two.
    max_ring: u64,
    /// The ring as mapped here. Only the holder of the queue's lock maps or uses it; the mutex
    /// only makes that visible to the compiler (it is never contended).
    data: Mutex<SharedWindow>,
}

/// The ring, mapped at the size the header gives, for the holder of the queue's lock.
type Mapped<'a> = MutexGuard<'a, SharedWindow>;

impl Ring {
    fn create(capacity: usize, maxsize: u64) -> Result<Ring, String> {
        let limits = capacity
            .max(4096)
            .checked_next_multiple_of(8)
            .and_then(|limit| Some((limit as u64, (limit as u64).checked_next_power_of_two()?)));
        let Some((limit, max_ring)) = limits else {
            return Err(format!("a queue capacity of {capacity} bytes is too large"));
        };
        let size = INITIAL_RING.min(max_ring);
        let region = SharedRegion::create_growable("pool-queue", DATA_OFFSET as usize)
            .map_err(|e| e.to_string())?;
        region
            .grow_to(DATA_OFFSET + size)
            .map_err(|e| e.to_string())?;
        let data = region
            .map_window(DATA_OFFSET, size as usize)
            .map_err(|e| e.to_string())?;
        let ring = Ring {
            region,
            limit,
            max_ring,
            data: Mutex::new(data),
        };
        let h = ring.header();
        h.capacity.store(size, Ordering::Relaxed);
        h.limit.store(limit, Ordering::Relaxed);
        h.maxsize.store(maxsize, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    fn open(fd: std::os::fd::OwnedFd) -> Result<Ring, String> {
        const NOT_A_QUEUE: &str = "the descriptor is not a queue";
        let region =
            SharedRegion::open_prefix(fd, DATA_OFFSET as usize).map_err(|e| e.to_string())?;
        // SAFETY: the region maps the header page (`open_prefix` checked the file's length);
        // `Header` is only atomics, valid for any bytes, used through `&` only.
        let h = unsafe { &*region.as_ptr().cast::<Header>() };
        let (size, limit) = (
            h.capacity.load(Ordering::Acquire),
            h.limit.load(Ordering::Acquire),
        );
        let max_ring = limit.checked_next_power_of_two().unwrap_or(0);
        let file = region.file_len().map_err(|e| e.to_string())?;
        if h.magic.load(Ordering::Acquire) != MAGIC
            || limit < 4096
            || !size.is_power_of_two()
            || size > max_ring
            || file.saturating_sub(DATA_OFFSET) < size
        {
            return Err(NOT_A_QUEUE.into());
        }
        let data = region
            .map_window(DATA_OFFSET, size as usize)
            .map_err(|e| e.to_string())?;
        Ok(Ring {
            region,
            limit,
            max_ring,
            data: Mutex::new(data),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the region maps the header page (made so by `create`, checked by `open`);
        // `Header` is only atomics, valid for any bytes, used through `&` only.
        unsafe { &*self.region.as_ptr().cast::<Header>() }
    }

    fn lock(&self) -> RawLock<'_> {
        let h = self.header();
        RawLock {
            word: &h.lock,
            record: &h.lock_owner,
        }
    }

    /// The ring mapped at the size the header gives now, remapped if it grew since this
    /// process last looked. The queue's lock is held.
    fn mapped(&self) -> Result<Mapped<'_>, QueueError> {
        let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let size = self.header().capacity.load(Ordering::Acquire);
        if size != data.len() as u64 {
            let file = self.region.file_len().map_err(QueueError::from)?;
            if !size.is_power_of_two()
                || size < data.len() as u64
                || size > self.max_ring
                || file.saturating_sub(DATA_OFFSET) < size
            {
                return Err(QueueError::Corrupt("ring size out of range"));
            }
            *data = self
                .region
                .map_window(DATA_OFFSET, size as usize)
                .map_err(|e| {
                    let context = format!("cannot map the queue's grown ring: {e}");
                    QueueError::from(std::io::Error::new(e.kind(), context))
                })?;
        }
        Ok(data)
    }

    /// Grows the ring so that `needed` bytes fit, moving the queued bytes `[head, tail)` to
    /// where the larger ring expects them (see the module docs). The lock is held.
    fn grow(
        &self,
        data: &mut Mapped<'_>,
        head: u64,
        tail: u64,
        needed: u64,
    ) -> Result<(), QueueError> {
        let old = data.len() as u64;
        let new = grown_size(old, needed, self.max_ring);
        let io = |e: std::io::Error| {
            let context = format!("cannot grow the queue's ring to {new} bytes: {e}");
            QueueError::from(std::io::Error::new(e.kind(), context))
        };
        self.region.grow_to(DATA_OFFSET + new).map_err(io)?;
        let window = self
            .region
            .map_window(DATA_OFFSET, new as usize)
            .map_err(io)?;
        for (from, to, len) in relocations(head, tail, old, new) {
            // SAFETY: `from..from + len` lies in the old ring, `to..to + len` in the new part
            // `[old, new)`, both inside the window of `new` bytes: they do not overlap. The
            // lock is held and nobody reads the new part before the size is published.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    window.as_ptr().add(from as usize),
                    window.as_ptr().add(to as usize),
                    len as usize,
                );
            }
        }
        // Publishing the size is the last step: a grower killed before it left the old ring
        // as it was, and the next one overwrites what it copied.
        self.header().capacity.store(new, Ordering::Release);
        **data = window;
        self.discard_free(data, head, tail);
        Ok(())
    }

    /// Gives back every page of the ring that holds no queued byte: after a growth (the old
    /// places of moved bytes, consumed space not given back yet) and after a takeover. The
    /// lock is held and `[head, tail)` are the checked positions.
    fn discard_free(&self, data: &Mapped<'_>, head: u64, tail: u64) {
        let size = data.len() as u64;
        let free = size - (tail - head);
        let start = tail % size;
        let first = free.min(size - start);
        for (at, len) in [(start, first), (0, free - first)] {
            let (from, to) = (at.next_multiple_of(PAGE), (at + len) / PAGE * PAGE);
            if to > from {
                let _ = self.region.discard_file(DATA_OFFSET + from, to - from);
            }
        }
        self.header().discarded.store(head, Ordering::Relaxed);
    }

    /// After taking the lock over from a process that died holding it: rebuilds the item
    /// count, and gives back the ring's free pages and what a grower that died left in the
    /// memfd beyond the ring.
    fn recover(&self, data: &Mapped<'_>) -> Result<(), QueueError> {
        let h = self.header();
        recount(data, h)?;
        let (head, tail) = (
            h.head.load(Ordering::Relaxed),
            h.tail.load(Ordering::Relaxed),
        );
        self.discard_free(data, head, tail);
        let end = DATA_OFFSET + data.len() as u64;
        if let Ok(file) = self.region.file_len() {
            if file > end {
                let _ = self.region.discard_file(end, file - end);
            }
        }
        Ok(())
    }

    /// Gives consumed pages of the ring back to the system, in steps. The lock is held.
    ///
    /// A consumed position `p` shares its bytes with `p + size`, which a producer may
    /// already have written once the ring wrapped: only positions with `p + size >= tail`
    /// are really free.
    fn discard_consumed(&self, data: &Mapped<'_>, head: u64) {
        let h = self.header();
        let size = data.len() as u64;
        let step = discard_step(size);
        let tail = h.tail.load(Ordering::Relaxed);
        let reusable_from = tail.saturating_sub(size).next_multiple_of(step);
        let done = h.discarded.load(Ordering::Relaxed).max(reusable_from);
        let upto = head / step * step;
        if upto <= done {
            return;
        }
        let mut at = done;
        while at < upto {
            let offset = at % size;
            let len = step.min(size - offset).min(upto - at);
            let _ = self.region.discard_file(DATA_OFFSET + offset, len);
            at += len;
        }
        h.discarded.store(upto, Ordering::Relaxed);
    }
}

/// The ring size that holds `needed` bytes: `size` doubled as often as needed, at most `max`
/// (both powers of two).
fn grown_size(size: u64, needed: u64, max: u64) -> u64 {
    let mut grown = size;
    while grown < needed && grown < max {
        grown *= 2;
    }
    grown
}

/// Where the queued bytes `[head, tail)` of a ring of `old` bytes must be copied when it grows
/// to `new` bytes (both powers of two, `tail - head <= old < new`): `(from, to, len)` offsets.
/// The byte at position `p` lives at `p % size`. The queued bytes lie in at most two runs of
/// the old ring, each inside one stretch `[k * old, (k + 1) * old)` of positions, and such a
/// run either keeps its offset (`p % new == p % old`) or moves whole by a multiple of `old`,
/// into the new part `[old, new)`: moves never overlap anything queued.
fn relocations(head: u64, tail: u64, old: u64, new: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let mut at = head;
    std::iter::from_fn(move || {
        while at < tail {
            let end = tail.min((at - at % old).saturating_add(old));
            let (from, to, len) = (at % old, at % new, end - at);
            at = end;
            if from != to {
                return Some((from, to, len));
            }
        }
        None
    })
}

/// How much consumed space is given back at once in a ring of `size` bytes.
fn discard_step(size: u64) -> u64 {
    (size / 4).clamp(DISCARD_STEP_MIN, DISCARD_STEP_MAX)
}

/// Copies `bytes` into the ring at position `at` (wrapping).
///
/// # Safety
/// The caller holds the queue's lock and `[at, at + len)` is free space of the ring, which
/// `bytes` is no longer than.
unsafe fn write(data: &SharedWindow, at: u64, bytes: &[u8]) {
    let size = data.len();
    let start = (at % size as u64) as usize;
    let first = bytes.len().min(size - start);
    let data = data.as_ptr();
    // SAFETY: both ranges lie inside the ring (`start + first <= size`, the rest wraps to
    // the start and is shorter than the ring); the caller owns them. The copies are atomic
    // on the ring's side: a lock holder killed and taken over may leave a peer that ignores
    // the lock, and that must not be a data race.
    unsafe {
        copy_to_shared(bytes.as_ptr(), data.add(start), first);
        copy_to_shared(bytes.as_ptr().add(first), data, bytes.len() - first);
    }
}

/// Copies `out.len()` bytes out of the ring from position `at` (wrapping).
///
/// # Safety
/// The caller holds the queue's lock and `[at, at + out.len())` holds queued data.
unsafe fn read(data: &SharedWindow, at: u64, out: &mut [u8]) {
    let size = data.len();
    let start = (at % size as u64) as usize;
    let first = out.len().min(size - start);
    let data = data.as_ptr();
    // SAFETY: as in `write`.
    unsafe {
        copy_from_shared(data.add(start), out.as_mut_ptr(), first);
        copy_from_shared(data, out.as_mut_ptr().add(first), out.len() - first);
    }
}

/// Copies the record of `bytes` (its `u64` length, then its bytes) into the ring at `tail`
/// with `write`; the caller holds the lock and `[tail, tail + record_len)` is free. Nothing
/// others read changes: [`publish_record`] is the step that makes the record queued, so a
/// producer killed between the two left the queue as it was.
fn write_record(tail: u64, bytes: &[u8], write: impl Fn(u64, &[u8])) {
    write(tail, &(bytes.len() as u64).to_le_bytes());
    write(tail + 8, bytes);
}

/// Makes the record written up to `new_tail` queued: the positions, the count and the
/// getters' futex word, in that order, the copies before them (`Release`, for a reader of
/// `tail` without the lock; the lock orders them for the next holder).
fn publish_record(h: &Header, new_tail: u64) {
    h.tail.store(new_tail, Ordering::Release);
    h.count.fetch_add(1, Ordering::Relaxed);
    h.unfinished.fetch_add(1, Ordering::Relaxed);
    h.put_seq.fetch_add(1, Ordering::Release);
}

/// Copies the oldest record out of `[head, tail)` with `read` (which reads queued bytes
/// only) and removes it: the record's bytes and the new head. The caller holds the lock.
/// Removing is the last step: a consumer killed before it leaves the item queued.
fn take_record(
    h: &Header,
    head: u64,
    tail: u64,
    read: impl Fn(u64, &mut [u8]),
) -> Result<(Vec<u8>, u64), QueueError> {
    if tail - head < 8 {
        return Err(QueueError::Corrupt("positions out of range"));
    }
    let mut len = [0u8; 8];
    read(head, &mut len);
    let len = u64::from_le_bytes(len);
    if len > tail - head - 8 {
        return Err(QueueError::Corrupt("a record longer than the queued data"));
    }
    let mut bytes = vec![0u8; len as usize];
    read(head + 8, &mut bytes);
    let new_head = head + record_len(len as usize);
    h.head.store(new_head, Ordering::Release);
    h.count.fetch_sub(1, Ordering::Relaxed);
    h.get_seq.fetch_add(1, Ordering::Release);
    Ok((bytes, new_head))
}

/// How long a `put` or `get` may wait for the queue's lock: as long as for room or an item,
/// and not at all for `try_put`/`try_get`. A holder that is slow (a 64 MiB item being copied
/// in) or stopped must not stretch a timeout, nor make a `try_` call block.
fn lock_deadline(deadline: Option<Instant>, block: bool) -> Option<Instant> {
    if block {
        deadline
    } else {
        Some(Instant::now())
    }
}

/// The positions, checked against the ring: `(head, tail)`.
fn positions(data: &Mapped<'_>, h: &Header) -> Result<(u64, u64), QueueError> {
    let (head, tail) = (
        h.head.load(Ordering::Relaxed),
        h.tail.load(Ordering::Acquire),
    );
    if tail < head || tail - head > data.len() as u64 {
        return Err(QueueError::Corrupt("positions out of range"));
    }
    Ok((head, tail))
}

/// Rebuilds the item count from the records between head and tail, after the queue's lock
/// was taken over from a process that died holding it: the count is updated just after the
/// position that publishes or removes an item, so a death in between leaves it off by one.
/// (`JoinableQueue`'s count of unfinished tasks cannot be rebuilt this way: a producer or
/// consumer killed at that moment may leave it off by one; documented there.) The lock is held.
fn recount(data: &Mapped<'_>, h: &Header) -> Result<(), QueueError> {
    let (head, tail) = positions(data, h)?;
    let (mut at, mut items) = (head, 0u64);
    while at < tail {
        if tail - at < 8 {
            return Err(QueueError::Corrupt("a record cut short"));
        }
        let mut len = [0u8; 8];
        // SAFETY: the lock is held and at least 8 bytes are queued at `at` (checked above).
        unsafe { read(data, at, &mut len) };
        let len = u64::from_le_bytes(len);
        if len > tail - at - 8 {
            return Err(QueueError::Corrupt("a record longer than the queued data"));
        }
        at += record_len(len as usize);
        items += 1;
    }
    h.count.store(items, Ordering::Relaxed);
    Ok(())
}

/// Rounds a record (length word and item) up to 8 bytes.
fn record_len(item: usize) -> u64 {
    (8 + item as u64).next_multiple_of(8)
}

/// Python's `multiprocessing.Queue`: many producers and consumers in any processes, items in
/// order, none lost or duplicated. Pass it to a child in its arguments.
///
/// `len` is exact at the moment it is read, and stale the moment after, as Python's `qsize`.
///
/// ```
/// let q = pool_api::Queue::<String>::new()?;
/// q.put("A".to_string())?;
/// assert_eq!(q.len(), 1);
/// assert_eq!(q.get()?, "A");
/// assert!(q.is_empty());
/// # Ok::<(), pool_api::Error>(())
/// ```
pub struct Queue<T> {
    ring: Arc<Ring>,
    closed: bool,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            ring: Arc::clone(&self.ring),
            closed: false,
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.ring.header();
        f.debug_struct("Queue")
            .field("qsize", &h.count.load(Ordering::Relaxed))
            .field("closed", &self.closed)
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// An unbounded queue, as Python's: no item count limit. It holds at most
    /// [`DEFAULT_QUEUE_CAPACITY`] bytes of records (8 GiB), so `put` waits only once that much
    /// is queued and unread, and an item whose encoding is larger is refused with an error
    /// that hands it back. Its ring starts at 64 KiB and grows as items need (see
    /// [`Queue::with_limits`]).
    pub fn new() -> Result<Queue<T>, QueueError> {
        Queue::with_limits(0, DEFAULT_QUEUE_CAPACITY)
    }

    /// A queue of at most `maxsize` items (Python's `Queue(maxsize)`; 0: unbounded).
    pub fn bounded(maxsize: usize) -> Result<Queue<T>, QueueError> {
        Queue::with_limits(maxsize, DEFAULT_QUEUE_CAPACITY)
    }

    /// A queue of at most `maxsize` items (0: unbounded) and `capacity` bytes of records
    /// (each item's encoding plus 8 to 15 bytes; at least 4096 in all).
    ///
    /// `capacity` is an upper bound, not a reservation: the ring starts at 64 KiB (or
    /// `capacity`'s power of two, if smaller) and doubles when a `put` needs room, up to
    /// `capacity` rounded up to a power of two, so a queue's address space is at most twice
    /// what it ever held. Growing maps the larger ring in every process that uses the queue
    /// (each on its next `put` or `get`): under an address-space limit (`ulimit -v`) a growth
    /// this process cannot map fails that `put` with [`QueueError::Io`], and a process that
    /// cannot map the grown ring gets [`QueueError::Io`] from its `put` and `get`. Memory is
    /// allocated only for what is queued.
    pub fn with_limits(maxsize: usize, capacity: usize) -> Result<Queue<T>, QueueError> {
        let ring = Ring::create(capacity, maxsize as u64)
            .map_err(|e| QueueError::Io(std::io::Error::other(e).into()))?;
        Ok(Queue {
            ring: Arc::new(ring),
            closed: false,
            _t: PhantomData,
        })
    }

    /// Puts an item, waiting while the queue is full (only with a `maxsize`, or once its
    /// `capacity` of bytes is used up).
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_inner(&item, None, true)
            .map_err(|kind| PutError::new(item, kind))
    }

    /// Puts an item, waiting at most `timeout` while the queue is full (a
    /// [`QueueError::Full`] then, the item handed back).
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_inner(&item, crate::deadline_in(timeout), true)
            .map_err(|kind| PutError::new(item, kind))
    }

    /// Puts an item if there is room now (a [`QueueError::Full`] otherwise, the item handed
    /// back).
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_inner(&item, None, false)
            .map_err(|kind| PutError::new(item, kind))
    }

    fn put_inner(
        &self,
        item: &T,
        deadline: Option<Instant>,
        block: bool,
    ) -> Result<(), QueueError> {
        if self.closed {
            return Err(QueueError::Closed);
        }
        let bytes = match postcard::to_stdvec(item) {
            Ok(b) => b,
            Err(e) => {
                return Err(QueueError::Encode(CodecError::caused_by(
                    "encoding an item",
                    e,
                )));
            }
        };
        let need = record_len(bytes.len());
        let ring = &*self.ring;
        if need > ring.limit {
            return Err(QueueError::Encode(CodecError::new(format!(
                "an item of {} bytes does not fit the queue's ring",
                bytes.len()
            ))));
        }
        let h = ring.header();
        let lock = ring.lock();
        loop {
            let taken = match lock.acquire(lock_deadline(deadline, block)) {
                Ok(taken) => taken,
                Err(SyncError::Timeout) => return Err(QueueError::Full),
                Err(e) => return Err(e.into()),
            };
            match self.put_locked(&bytes, need, taken.previous_owner_died.is_some()) {
                Ok(true) => {
                    let wake = h.getters.load(Ordering::Relaxed) > 0;
                    lock.release()?;
                    if wake {
                        futex_wake(&h.put_seq, 1);
                    }
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = lock.release();
                    return Err(e);
                }
            }
            let seq = h.get_seq.load(Ordering::Acquire);
            h.putters.fetch_add(1, Ordering::Relaxed);
            lock.release()?;
            let waited = if block {
                futex_wait(&h.get_seq, seq, deadline)
            } else {
                Ok(false)
            };
            h.putters.fetch_sub(1, Ordering::Relaxed);
            if !waited.map_err(QueueError::from)? {
                return Err(QueueError::Full);
            }
        }
    }

    /// Writes the record of `bytes` (`need` bytes) if there is room, growing the ring if the
    /// limits allow; whether it did. The lock is held (taken over from a dead owner if
    /// `recover`).
    fn put_locked(&self, bytes: &[u8], need: u64, recover: bool) -> Result<bool, QueueError> {
        let ring = &*self.ring;
        let h = ring.header();
        let mut data = ring.mapped()?;
        if recover {
            ring.recover(&data)?;
        }
        let (head, tail) = positions(&data, h)?;
        let maxsize = h.maxsize.load(Ordering::Relaxed);
        let queued = tail - head;
        if (maxsize != 0 && h.count.load(Ordering::Relaxed) >= maxsize)
            || queued + need > ring.limit
        {
            return Ok(false);
        }
        if queued + need > data.len() as u64 {
            ring.grow(&mut data, head, tail, queued + need)?;
        }
        let Some(new_tail) = tail.checked_add(need) else {
            return Err(QueueError::Corrupt("positions out of range"));
        };
        if queued + need > data.len() as u64 {
            return Err(QueueError::Corrupt("ring size out of range"));
        }
        // SAFETY: the lock is held and `[tail, tail + need)` is free (checked above).
        write_record(tail, bytes, |at, part| unsafe { write(&data, at, part) });
        publish_record(h, new_tail);
        Ok(true)
    }

    /// Takes the oldest item, waiting while the queue is empty.
    pub fn get(&self) -> Result<T, QueueError> {
        self.get_inner(None, true)
    }

    /// Takes the oldest item, waiting at most `timeout` ([`QueueError::Empty`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, QueueError> {
        self.get_inner(crate::deadline_in(timeout), true)
    }

    /// Takes the oldest item if there is one ([`QueueError::Empty`] otherwise).
    pub fn try_get(&self) -> Result<T, QueueError> {
        self.get_inner(None, false)
    }

    fn get_inner(&self, deadline: Option<Instant>, block: bool) -> Result<T, QueueError> {
        if self.closed {
            return Err(QueueError::Closed);
        }
        let ring = &*self.ring;
        let h = ring.header();
        let lock = ring.lock();
        loop {
            // A previous owner that died left the queue consistent (see the module docs).
            let taken = match lock.acquire(lock_deadline(deadline, block)) {
                Ok(taken) => taken,
                // Python's `get` too raises `Empty` when its lock is not had in time.
                Err(SyncError::Timeout) => return Err(QueueError::Empty),
                Err(e) => return Err(e.into()),
            };
            match self.take_locked(taken.previous_owner_died.is_some()) {
                Ok(Some(bytes)) => {
                    let wake = h.putters.load(Ordering::Relaxed) > 0;
                    lock.release()?;
                    if wake {
                        futex_wake(&h.get_seq, 1);
                    }
                    return postcard::from_bytes(&bytes).map_err(|e| {
                        QueueError::Decode(CodecError::caused_by("decoding an item", e))
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = lock.release();
                    return Err(e);
                }
            }
            let seq = h.put_seq.load(Ordering::Acquire);
            h.getters.fetch_add(1, Ordering::Relaxed);
            lock.release()?;
            let waited = if block {
                futex_wait(&h.put_seq, seq, deadline)
            } else {
                Ok(false)
            };
            h.getters.fetch_sub(1, Ordering::Relaxed);
            if !waited.map_err(QueueError::from)? {
                return Err(QueueError::Empty);
            }
        }
    }

    /// Copies the oldest record out and removes it, if there is one. The lock is held (taken
    /// over from a dead owner if `recover`).
    fn take_locked(&self, recover: bool) -> Result<Option<Vec<u8>>, QueueError> {
        let ring = &*self.ring;
        let h = ring.header();
        let data = ring.mapped()?;
        if recover {
            ring.recover(&data)?;
        }
        if h.count.load(Ordering::Relaxed) == 0 {
            return Ok(None);
        }
        let (head, tail) = positions(&data, h)?;
        // SAFETY: the lock is held; `take_record` reads only queued bytes of `[head, tail)`,
        // which lie in the ring (`positions` checked them against its size).
        let (bytes, new_head) =
            take_record(h, head, tail, |at, out| unsafe { read(&data, at, out) })?;
        ring.discard_consumed(&data, new_head);
        Ok(Some(bytes))
    }

    /// Items in the queue now (Python's `qsize()`: stale as soon as it is read, since other
    /// processes put and get meanwhile).
    #[doc(alias = "qsize")]
    pub fn len(&self) -> usize {
        self.ring.header().count.load(Ordering::Acquire) as usize
    }

    /// Whether the queue is empty now (Python's `empty()`).
    #[doc(alias = "empty")]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the queue is at its `maxsize` now, never for an unbounded queue (Python's
    /// `full()`).
    #[doc(alias = "full")]
    pub fn is_full(&self) -> bool {
        let maxsize = self.ring.header().maxsize.load(Ordering::Relaxed);
        maxsize != 0 && self.len() as u64 >= maxsize
    }

    /// Closes this handle: its later `put` and `get` give [`QueueError::Closed`]. Other
    /// handles, in this process or others, are not affected (as in Python).
    pub fn close(&mut self) {
        self.closed = true;
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        handles::serialize_fd(self.ring.region.fd(), serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Queue<T>, D::Error> {
        use serde::de::Error as _;
        let fd = handles::deserialize_fd(deserializer)?;
        let ring = Ring::open(fd).map_err(D::Error::custom)?;
        Ok(Queue {
            ring: Arc::new(ring),
            closed: false,
            _t: PhantomData,
        })
    }
}

/// Python's `multiprocessing.SimpleQueue`: a [`Queue`] with only `put`, `get` and `empty`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct SimpleQueue<T>(Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue (limits as [`Queue::new`]'s).
    pub fn new() -> Result<SimpleQueue<T>, QueueError> {
        Queue::new().map(SimpleQueue)
    }

    /// A queue of at most `maxsize` items (0: unbounded) and `capacity` bytes of records, an
    /// upper bound its ring grows towards only as items need: see [`Queue::with_limits`].
    pub fn with_limits(maxsize: usize, capacity: usize) -> Result<SimpleQueue<T>, QueueError> {
        Queue::with_limits(maxsize, capacity).map(SimpleQueue)
    }

    /// Puts an item.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.0.put(item)
    }

    /// Takes the oldest item, waiting while there is none.
    pub fn get(&self) -> Result<T, QueueError> {
        self.0.get()
    }

    /// Whether the queue is empty now (Python's `empty()`).
    #[doc(alias = "empty")]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Python's `multiprocessing.JoinableQueue`: a [`Queue`] whose consumers mark items done, so
/// that a producer can `join` until every item put has been processed.
///
/// A producer killed in the middle of `put` may leave the count of unfinished tasks one too
/// high (then `join` waits for a task that never comes; use its timeout), since that count,
/// unlike the items, cannot be rebuilt from the queue's contents.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct JoinableQueue<T>(Queue<T>);

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue (limits as [`Queue::new`]'s).
    pub fn new() -> Result<JoinableQueue<T>, QueueError> {
        Queue::new().map(JoinableQueue)
    }

    /// A joinable queue of at most `maxsize` items (0: unbounded) and `capacity` bytes of
    /// records, an upper bound its ring grows towards only as items need: see
    /// [`Queue::with_limits`].
    pub fn with_limits(maxsize: usize, capacity: usize) -> Result<JoinableQueue<T>, QueueError> {
        Queue::with_limits(maxsize, capacity).map(JoinableQueue)
    }

    /// The queue's `put`, `get` and the rest.
    pub fn queue(&self) -> &Queue<T> {
        &self.0
    }

    /// Puts an item (one more unfinished task).
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.0.put(item)
    }

    /// Takes the oldest item.
    pub fn get(&self) -> Result<T, QueueError> {
        self.0.get()
    }

    /// Marks one item taken with `get` as processed; [`QueueError::TooManyTaskDone`] if more
    /// were marked than put.
    pub fn task_done(&self) -> Result<(), QueueError> {
        let h = self.0.ring.header();
        let prev = h
            .unfinished
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map_err(|_| QueueError::TooManyTaskDone)?;
        if prev == 1 {
            h.done_seq.fetch_add(1, Ordering::SeqCst);
            if h.joiners.load(Ordering::SeqCst) > 0 {
                futex_wake(&h.done_seq, u32::MAX);
            }
        }
        Ok(())
    }

    /// Waits until every item put has been marked done (Python's `join()`).
    pub fn join(&self) -> Result<(), QueueError> {
        self.join_within(None).map(drop)
    }

    /// [`join`](Self::join) for at most `timeout`; whether every item was marked done.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, QueueError> {
        self.join_within(Some(timeout))
    }

    fn join_within(&self, timeout: Option<Duration>) -> Result<bool, QueueError> {
        let h = self.0.ring.header();
        let deadline = timeout.and_then(crate::deadline_in);
        loop {
            let seq = h.done_seq.load(Ordering::Acquire);
            if h.unfinished.load(Ordering::Acquire) == 0 {
                return Ok(true);
            }
            h.joiners.fetch_add(1, Ordering::SeqCst);
            let woke = futex_wait(&h.done_seq, seq, deadline);
            h.joiners.fetch_sub(1, Ordering::SeqCst);
            if !woke.map_err(QueueError::from)? {
                return Ok(h.unfinished.load(Ordering::Acquire) == 0);
            }
        }
    }
}

/// The model of the queue's records (`cargo xtask loom`): the real [`write_record`],
/// [`publish_record`] and [`take_record`] over a header of loom's atomics and a 64-byte ring
/// of loom cells, under a modelled [`Lock`](crate::Lock) (the queue's own lock word is not
/// modelled; `Lock` is the same lock over the facade). Producer 1 puts an item; producer 2
/// takes the lock, copies its item and dies before publishing it (a thread that stops
/// there, holding the lock); a consumer takes what it finds meanwhile, the main thread the
/// rest. Only producer 1's item is ever taken, once and whole: producer 2's bytes are never
/// seen (a torn or phantom item fails the assertions; a byte read without happens-before
/// from its write is a loom data race), and the lock it died holding is taken over.
#[cfg(all(test, loom))]
mod loom_tests {
    use ::loom::cell::UnsafeCell;
    use ::loom::sync::Arc;
    use ::loom::thread;

    use super::{Header, publish_record, record_len, take_record, write_record};
    use crate::Lock;
    use crate::loom::model;
    use crate::loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    const SIZE: u64 = 64;

    struct Ring {
        h: Header,
        data: Vec<UnsafeCell<u8>>,
    }

    // SAFETY: the cells are accessed under the lock, as the queue's ring is; loom reports
    // any access that races with another.
    unsafe impl Sync for Ring {}
    // SAFETY: as above.
    unsafe impl Send for Ring {}

    impl Ring {
        fn new() -> Ring {
            let (u32s, u64s) = (|| AtomicU32::new(0), || AtomicU64::new(0));
            Ring {
                h: Header {
                    magic: u64s(),
                    capacity: AtomicU64::new(SIZE),
                    maxsize: u64s(),
                    lock: std::sync::atomic::AtomicU32::new(0),
                    _pad: u32s(),
                    lock_owner: std::sync::atomic::AtomicU64::new(0),
                    head: u64s(),
                    tail: u64s(),
                    count: u64s(),
                    discarded: u64s(),
                    put_seq: u32s(),
                    get_seq: u32s(),
                    getters: u32s(),
                    putters: u32s(),
                    unfinished: u64s(),
                    done_seq: u32s(),
                    joiners: u32s(),
                    limit: AtomicU64::new(SIZE),
                },
                data: (0..SIZE).map(|_| UnsafeCell::new(0)).collect(),
            }
        }

        fn write(&self, at: u64, bytes: &[u8]) {
            for (i, &b) in bytes.iter().enumerate() {
                let cell = &self.data[((at + i as u64) % SIZE) as usize];
                // SAFETY: see the impl of Sync (checked by loom).
                cell.with_mut(|p| unsafe { *p = b });
            }
        }

        fn read(&self, at: u64, out: &mut [u8]) {
            for (i, b) in out.iter_mut().enumerate() {
                let cell = &self.data[((at + i as u64) % SIZE) as usize];
                // SAFETY: as above.
                *b = cell.with(|p| unsafe { *p });
            }
        }

        /// `put_locked`'s record steps; with `die`, the producer stops between the copy and
        /// the publication (its process dies there).
        fn put(&self, item: &[u8], die: bool) {
            let tail = self.h.tail.load(Ordering::Relaxed);
            write_record(tail, item, |at, part| self.write(at, part));
            if die {
                model::exit();
                return;
            }
            publish_record(&self.h, tail + record_len(item.len()));
        }

        /// `take_locked`'s record steps.
        fn take(&self) -> Option<Vec<u8>> {
            if self.h.count.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let head = self.h.head.load(Ordering::Relaxed);
            let tail = self.h.tail.load(Ordering::Relaxed);
            let (bytes, _) = take_record(&self.h, head, tail, |at, out| self.read(at, out))
                .expect("a well-formed record");
            Some(bytes)
        }
    }

    fn spawn_as<T: Send + 'static>(
        pid: u32,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        thread::spawn(move || {
            model::act_as(pid, pid);
            f()
        })
    }

    #[test]
    fn a_producer_killed_between_copy_and_publish_leaves_no_item() {
        ::loom::model(|| {
            let lock = Lock::new().unwrap();
            let ring = Arc::new(Ring::new());
            let producer = {
                let (lock, ring) = (lock.clone(), ring.clone());
                spawn_as(1, move || {
                    let _ = lock.acquire().unwrap();
                    ring.put(&[1, 1, 1], false);
                    lock.release().unwrap();
                })
            };
            let killed = {
                let (lock, ring) = (lock.clone(), ring.clone());
                spawn_as(2, move || {
                    let _ = lock.acquire().unwrap();
                    ring.put(&[2, 2, 2, 2, 2], true);
                })
            };
            let consumer = {
                let (lock, ring) = (lock.clone(), ring.clone());
                spawn_as(3, move || {
                    let _ = lock.acquire().unwrap();
                    let got = ring.take();
                    lock.release().unwrap();
                    got
                })
            };
            producer.join().unwrap();
            killed.join().unwrap();
            let got = consumer.join().unwrap();
            let _ = lock.acquire().unwrap();
            let rest = ring.take();
            assert_eq!(ring.take(), None, "producer 2's item never queued");
            lock.release().unwrap();
            let taken: Vec<_> = got.into_iter().chain(rest).collect();
            assert_eq!(taken, [vec![1, 1, 1]], "producer 1's item once, whole");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bytes;
    use proptest::prelude::*;

    #[test]
    fn a_held_queue_lock_neither_stretches_a_timeout_nor_blocks_a_try() {
        // The queue's lock, held as by another process copying a big item in (or stopped).
        let q: Queue<u32> = Queue::new().unwrap();
        q.put(1).unwrap();
        let held = q.ring.lock();
        let _held_here = held.acquire(None).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = q.clone();
        std::thread::spawn(move || {
            let short = Duration::from_millis(50);
            let _ = tx.send((
                matches!(other.try_get(), Err(QueueError::Empty)),
                matches!(other.get_timeout(short), Err(QueueError::Empty)),
                matches!(other.try_put(2), Err(e) if *e.kind() == QueueError::Full && *e.item() == 2),
                matches!(other.put_timeout(3, short), Err(e) if *e.kind() == QueueError::Full && *e.item() == 3),
            ));
        });
        let outcome = rx.recv_timeout(Duration::from_secs(20));
        held.release().unwrap();
        assert_eq!(
            outcome,
            Ok((true, true, true, true)),
            "they waited for the lock"
        );
        assert_eq!(q.get_timeout(Duration::from_secs(5)).unwrap(), 1);
    }

    /// A second handle on `q`'s memfd with its own mappings, as a process it was sent to has.
    fn reopened<T>(q: &Queue<T>) -> Queue<T> {
        let fd = q.ring.region.fd().try_clone_to_owned().unwrap();
        Queue {
            ring: Arc::new(Ring::open(fd).unwrap()),
            closed: false,
            _t: PhantomData,
        }
    }

    /// The ring's size as this handle maps it.
    fn mapped_size<T>(q: &Queue<T>) -> u64 {
        q.ring.data.lock().unwrap().len() as u64
    }

    #[test]
    fn rings_double_as_needed_up_to_the_limit_rounded_to_a_power_of_two() {
        assert_eq!(grown_size(64 << 10, 64 << 10, 8 << 30), 64 << 10);
        assert_eq!(grown_size(64 << 10, (64 << 10) + 1, 8 << 30), 128 << 10);
        assert_eq!(grown_size(64 << 10, 3 << 20, 8 << 30), 4 << 20);
        assert_eq!(grown_size(64 << 10, 8 << 30, 8 << 30), 8 << 30);
        assert_eq!(
            grown_size(64 << 10, 5 << 20, 4 << 20),
            4 << 20,
            "never past max"
        );
        // A limit is rounded up to 8 bytes (and 4096 at least); its ring to a power of two.
        let ring = |capacity: usize| {
            let r = Ring::create(capacity, 0).unwrap();
            let size = r.data.lock().unwrap().len();
            (r.limit, r.max_ring, size)
        };
        assert_eq!(ring(1), (4096, 4096, 4096));
        assert_eq!(ring(3 << 20), (3 << 20, 4 << 20, 64 << 10));
        assert_eq!(ring(100_001), (100_008, 128 << 10, 64 << 10));
        assert_eq!(ring(DEFAULT_QUEUE_CAPACITY), (8 << 30, 8 << 30, 64 << 10));
        assert!(Ring::create(usize::MAX, 0).is_err());
    }

    #[test]
    fn growth_moves_only_runs_whose_offset_changes_into_the_new_part() {
        const K: u64 = 1024;
        // Not wrapped, in an even stretch: nothing moves.
        assert_eq!(relocations(10, 50, K, 2 * K).count(), 0);
        // Not wrapped, in an odd stretch: the run moves up by the old size.
        assert_eq!(
            relocations(K + 10, K + 50, K, 2 * K).collect::<Vec<_>>(),
            [(10, K + 10, 40)]
        );
        // Wrapped from an even stretch: the part after the wrap moves behind the first.
        assert_eq!(
            relocations(900, K + 100, K, 2 * K).collect::<Vec<_>>(),
            [(0, K, 100)]
        );
        // Wrapped from an odd stretch: the part before the wrap moves, the rest stays.
        assert_eq!(
            relocations(3 * K + 900, 4 * K + 100, K, 2 * K).collect::<Vec<_>>(),
            [(900, K + 900, 124)]
        );
        // Growing by 8 at once: each run goes to its own stretch of the new ring.
        assert_eq!(
            relocations(5 * K + 900, 6 * K + 100, K, 8 * K).collect::<Vec<_>>(),
            [(900, 5 * K + 900, 124), (0, 6 * K, 100)]
        );
        // A full ring at a stretch boundary, and positions near the end of the counter.
        assert_eq!(
            relocations(K, 2 * K, K, 2 * K).collect::<Vec<_>>(),
            [(0, K, K)]
        );
        let top = u64::MAX - u64::MAX % K;
        assert_eq!(relocations(top - 8, top + 8, K, 2 * K).count(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed_9e37),
            ..ProptestConfig::default()
        })]

        /// Every queued byte ends where the larger ring expects it; moves come from the old
        /// ring, go to its new part, and never overlap.
        #[test]
        fn relocations_put_every_queued_byte_where_the_grown_ring_reads_it(
            old_bits in 3u32..12,
            times in 1u32..4,
            head in 0u64..100_000,
            fill in 0.0f64..=1.0,
        ) {
            let old = 1u64 << old_bits;
            let new = old << times;
            let tail = head + (old as f64 * fill) as u64;
            let mut ring = vec![None; new as usize];
            for p in head..tail {
                ring[(p % old) as usize] = Some(p);
            }
            let moves: Vec<_> = relocations(head, tail, old, new).collect();
            prop_assert!(moves.len() <= 2);
            for &(from, to, len) in &moves {
                prop_assert!(from + len <= old && to >= old && to + len <= new);
                for i in 0..len {
                    ring[(to + i) as usize] = ring[(from + i) as usize];
                }
            }
            for p in head..tail {
                prop_assert_eq!(ring[(p % new) as usize], Some(p));
            }
        }
    }

    #[test]
    fn discard_steps_are_a_quarter_of_the_ring_within_bounds() {
        assert_eq!(discard_step(64 << 10), 64 << 10);
        assert_eq!(discard_step(1 << 20), 256 << 10);
        assert_eq!(discard_step(8 << 20), 2 << 20);
        assert_eq!(discard_step(8 << 30), 2 << 20);
    }

    #[test]
    fn a_wrapped_ring_grows_with_its_items_in_order_and_other_handles_follow() {
        let q: Queue<Bytes> = Queue::with_limits(0, 64 << 20).unwrap();
        let other: Queue<Bytes> = reopened(&q);
        assert_eq!(mapped_size(&q), 64 << 10);
        let item = |i: u32| Bytes(vec![i as u8; 3000 + i as usize * 7]);
        let (mut next_in, mut next_out) = (0u32, 0u32);
        // Move the positions round the small ring so that what is queued wraps, then put
        // more than it holds: every growth finds wrapped data, in both kinds of stretch.
        for round in 0..12u32 {
            while q.len() < 10 {
                q.put(item(next_in)).unwrap();
                next_in += 1;
            }
            for _ in 0..7 {
                assert_eq!(other.get().unwrap(), item(next_out), "round {round}");
                next_out += 1;
            }
        }
        let before = mapped_size(&q);
        for _ in 0..600 {
            q.put(item(next_in)).unwrap();
            next_in += 1;
        }
        assert!(mapped_size(&q) > before, "the ring grew");
        assert!(
            mapped_size(&other) < mapped_size(&q),
            "the other handle has not looked yet"
        );
        while next_out < next_in {
            // Alternate handles: each maps the grown ring when it sees the new size.
            let from = if next_out % 2 == 0 { &other } else { &q };
            assert_eq!(from.get().unwrap(), item(next_out));
            next_out += 1;
        }
        assert_eq!(mapped_size(&other), mapped_size(&q));
        assert!(q.is_empty());
    }

    #[test]
    fn one_item_may_grow_the_ring_many_times_at_once_and_not_past_its_limit() {
        let q: SimpleQueue<Bytes> = SimpleQueue::with_limits(0, 3 << 20).unwrap();
        q.put(Bytes(vec![1; 100])).unwrap();
        q.put(Bytes(vec![2; 2 << 20])).unwrap();
        assert_eq!(mapped_size(&q.0), 4 << 20);
        assert_eq!(q.get().unwrap().0, vec![1; 100]);
        assert_eq!(q.get().unwrap().0, vec![2; 2 << 20]);
        assert!(matches!(
            q.0.put(Bytes(vec![3; 3 << 20])),
            Err(e) if matches!(e.kind(), QueueError::Encode(_))
        ));
        let j: JoinableQueue<u8> = JoinableQueue::with_limits(1, 4096).unwrap();
        j.put(1).unwrap();
        assert!(
            matches!(j.queue().try_put(2), Err(e) if *e.kind() == QueueError::Full && *e.item() == 2)
        );
    }

    /// The memory the queue's memfd holds now, in bytes.
    fn allocated<T>(q: &Queue<T>) -> u64 {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let fd = q.ring.region.fd().as_raw_fd();
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .blocks()
            * 512
    }

    #[test]
    fn a_grown_ring_gives_back_what_was_consumed_and_what_growth_moved() {
        let q: Queue<Bytes> = Queue::new().unwrap();
        let item = |i: u8| Bytes(vec![i; (1 << 20) - 64]);
        // Wrap a 1 MiB ring (the consumer half-way), then grow it to 64 MiB at once.
        q.put(item(0)).unwrap();
        assert_eq!(q.get().unwrap(), item(0));
        for i in 1..48 {
            q.put(item(i)).unwrap();
        }
        assert_eq!(mapped_size(&q), 64 << 20);
        let held = allocated(&q);
        assert!(held <= 49 << 20, "{held} bytes for 47 MiB queued");
        for i in 1..48 {
            assert_eq!(q.get().unwrap(), item(i));
        }
        let left = allocated(&q);
        assert!(left <= 4 << 20, "{left} bytes left once drained");
    }

    #[test]
    fn a_grower_killed_before_publishing_left_the_old_ring_as_it_was() {
        let q: Queue<Bytes> = Queue::with_limits(0, 1 << 20).unwrap();
        // Wrap the ring, then do what a grower does up to (not including) publishing.
        for i in 0..6u8 {
            q.put(Bytes(vec![i; 10_000])).unwrap();
        }
        for i in 0..4u8 {
            assert_eq!(q.get().unwrap().0, vec![i; 10_000]);
        }
        for i in 6..10u8 {
            q.put(Bytes(vec![i; 10_000])).unwrap();
        }
        let ring = &*q.ring;
        let h = ring.header();
        let (head, tail) = (
            h.head.load(Ordering::Relaxed),
            h.tail.load(Ordering::Relaxed),
        );
        assert!(head % (64 << 10) > tail % (64 << 10), "wrapped");
        assert!(
            ring.region.map_window(DATA_OFFSET, 256 << 10).is_err(),
            "no window past the memfd's end"
        );
        ring.region.grow_to(DATA_OFFSET + (256 << 10)).unwrap();
        let window = ring.region.map_window(DATA_OFFSET, 256 << 10).unwrap();
        for (from, to, len) in relocations(head, tail, 64 << 10, 256 << 10) {
            // SAFETY: as in `Ring::grow`; this test is the queue's only user.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    window.as_ptr().add(from as usize),
                    window.as_ptr().add(to as usize),
                    len as usize,
                );
            }
        }
        drop(window);
        // Killed here. The next user finds the old ring, in order, and grows it itself.
        for i in 4..10u8 {
            assert_eq!(q.get().unwrap().0, vec![i; 10_000]);
        }
        q.put(Bytes(vec![10; 300_000])).unwrap();
        assert_eq!(q.get().unwrap().0, vec![10; 300_000]);
        assert_eq!(mapped_size(&q), 512 << 10);
    }

    /// What a scribbling process may do to a queue's shared state: set its positions and
    /// count to anything, and overwrite record bytes (lengths included).
    #[derive(Clone, Debug)]
    enum Scribble {
        Head(u64),
        Tail(u64),
        Count(u64),
        Size(u64),
        Data { at: u64, bytes: [u8; 8] },
    }

    fn scribble() -> impl Strategy<Value = Scribble> {
        let position = prop_oneof![0u64..20_000, any::<u64>()];
        prop_oneof![
            position.clone().prop_map(Scribble::Head),
            position.prop_map(Scribble::Tail),
            prop_oneof![0u64..8, any::<u64>()].prop_map(Scribble::Count),
            prop_oneof![(12u32..22).prop_map(|b| 1u64 << b), any::<u64>()].prop_map(Scribble::Size),
            (0u64..8192, any::<[u8; 8]>()).prop_map(|(at, bytes)| Scribble::Data { at, bytes }),
        ]
    }

    /// Part of the reliability suite: a queue whose memory was scribbled on gives items or
    /// typed errors (`Corrupt`, `Decode`, `Empty`, `Full`), never a panic, an out-of-bounds
    /// access or a hang. `cargo xtask chaos` runs more cases.
    #[test]
    fn chaos_scribbled_queue_memory_gives_typed_errors() {
        let cases = pool_testkit::scale(500, 50_000) as u32;
        let config = ProptestConfig {
            cases,
            failure_persistence: None,
            rng_seed: pool_testkit::proptest_seed(),
            ..ProptestConfig::default()
        };
        let input = (
            proptest::collection::vec(any::<String>(), 0..6),
            proptest::collection::vec(scribble(), 1..4),
        );
        proptest::test_runner::TestRunner::new(config)
            .run(&input, |(items, scribbles)| {
                // A ring that grew from 64 KiB to 256 KiB (its limit is 1 MiB), and a second
                // handle that mapped it before it grew, as another process would have.
                let q: Queue<String> = Queue::with_limits(0, 1 << 20).unwrap();
                let other: Queue<String> = reopened(&q);
                q.put("x".repeat(200_000)).unwrap();
                assert_eq!(q.get().unwrap().len(), 200_000);
                for item in items {
                    let _ = q.try_put(item);
                }
                let ring = &*q.ring;
                let h = ring.header();
                for s in scribbles {
                    match s {
                        Scribble::Head(v) => h.head.store(v, Ordering::Relaxed),
                        Scribble::Tail(v) => h.tail.store(v, Ordering::Relaxed),
                        Scribble::Count(v) => h.count.store(v, Ordering::Relaxed),
                        Scribble::Size(v) => h.capacity.store(v, Ordering::Relaxed),
                        Scribble::Data { at, bytes } => {
                            let data = ring.data.lock().unwrap();
                            // SAFETY: nobody else uses this queue; the position is wrapped
                            // into the ring by `write`.
                            unsafe { write(&data, at, &bytes) }
                        }
                    }
                }
                let short = Duration::from_millis(1);
                for _ in 0..4 {
                    for q in [&q, &other] {
                        let _ = q.get_timeout(short);
                        let _ = q.try_put("after".to_string());
                        let _ = q.len();
                    }
                }
                Ok(())
            })
            .unwrap();
        pool_testkit::report(
            "hostile-queue",
            &[("inputs", u64::from(cases)), ("panics", 0), ("hangs", 0)],
        );
    }
}
