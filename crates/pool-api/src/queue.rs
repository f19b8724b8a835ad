//! `Queue`, `SimpleQueue` and `JoinableQueue`: Python's process queues, without the feeder
//! thread.
//!
//! # Layout
//!
//! One anonymous memfd: a header page, then a byte ring of records (`u64` length, the
//! encoded item, padding to 8 bytes), addressed by `head` and `tail` counters that only grow.
//! The ring is large (8 GiB by default) but *sparse*: memory is allocated only where records
//! are written, and the consumer punches the consumed part back out, so an unbounded queue
//! costs what it holds.
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
//! moving them is the last step. A process killed in the middle of a copy has changed nothing
//! that others read, and the next user takes the lock over. So no other item is lost or
//! duplicated; the killed producer's item was never in the queue (its `put` never returned),
//! and the killed consumer's item stays there for the next `get`.
//!
//! Positions read from shared memory are checked before use: a corrupted header gives an
//! error, never an out-of-bounds access.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pool_ipc::shared::{SharedRegion, futex_wait, futex_wake};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::CodecError;
use crate::sync::{RawLock, SyncError};
use crate::{OsError, handles};

const MAGIC: u64 = 0x706f_6f6c_7175_6575;
const DATA_OFFSET: usize = 4096;
/// The ring's size unless told otherwise. Virtual: only what is queued costs memory.
pub const DEFAULT_QUEUE_CAPACITY: usize = 8 << 30;
/// Consumed space is given back in steps of this much.
const DISCARD_STEP: u64 = 2 << 20;

/// Why a queue operation did not succeed. The item is handed back where one was given.
///
/// `Debug` is written by hand so that an item type without `Debug` still makes a
/// `std::error::Error` (the item is shown as `..`).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError<T> {
    /// `try_put` on a full queue, or `put` timed out on one.
    #[error("the queue is full")]
    Full(T),
    /// `try_get` on an empty queue, or `get` timed out on one.
    #[error("the queue is empty")]
    Empty,
    /// This handle was closed.
    #[error("the queue is closed")]
    Closed,
    /// `task_done` was called more times than items were put.
    #[error("task_done called too many times")]
    TooManyTaskDone,
    /// The item cannot be encoded, or is larger than the queue's ring.
    #[error(transparent)]
    Encode(CodecError),
    /// The item taken does not decode as the queue's type.
    #[error(transparent)]
    Decode(CodecError),
    /// The queue's shared state is corrupt (a process scribbled on it).
    #[error("the queue's shared state is corrupt: {0}")]
    Corrupt(&'static str),
    /// The OS refused; the `io::Error` is the source.
    #[error("OS error: {0}")]
    Io(#[source] OsError),
}

impl<T> fmt::Debug for QueueError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Full(_) => f.write_str("Full(..)"),
            QueueError::Empty => f.write_str("Empty"),
            QueueError::Closed => f.write_str("Closed"),
            QueueError::TooManyTaskDone => f.write_str("TooManyTaskDone"),
            QueueError::Encode(e) => f.debug_tuple("Encode").field(e).finish(),
            QueueError::Decode(e) => f.debug_tuple("Decode").field(e).finish(),
            QueueError::Corrupt(what) => f.debug_tuple("Corrupt").field(what).finish(),
            QueueError::Io(e) => f.debug_tuple("Io").field(e).finish(),
        }
    }
}

impl<T> QueueError<T> {
    /// The same error with the handed-back item dropped, for an error type that holds none
    /// (what `?` into [`Error`](crate::Error) does).
    pub fn without_item(self) -> QueueError<()> {
        match self {
            QueueError::Full(_) => QueueError::Full(()),
            QueueError::Empty => QueueError::Empty,
            QueueError::Closed => QueueError::Closed,
            QueueError::TooManyTaskDone => QueueError::TooManyTaskDone,
            QueueError::Encode(e) => QueueError::Encode(e),
            QueueError::Decode(e) => QueueError::Decode(e),
            QueueError::Corrupt(what) => QueueError::Corrupt(what),
            QueueError::Io(e) => QueueError::Io(e),
        }
    }

    /// The item handed back by a `put` that did not succeed, if this error holds it.
    pub fn into_item(self) -> Option<T> {
        match self {
            QueueError::Full(item) => Some(item),
            _ => None,
        }
    }
}

/// The queue's lock failed (only an OS error can reach a queue's caller).
impl<T> From<SyncError> for QueueError<T> {
    fn from(e: SyncError) -> QueueError<T> {
        match e {
            SyncError::Io(e) => QueueError::Io(OsError(e)),
            other => QueueError::Io(std::io::Error::other(other).into()),
        }
    }
}

impl<T> From<std::io::Error> for QueueError<T> {
    fn from(e: std::io::Error) -> QueueError<T> {
        QueueError::Io(e.into())
    }
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    capacity: AtomicU64,
    maxsize: AtomicU64,
    lock: AtomicU32,
    _pad: AtomicU32,
    lock_owner: AtomicU64,
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
}

struct Ring {
    region: SharedRegion,
    capacity: u64,
}

impl Ring {
    fn create(capacity: usize, maxsize: u64) -> Result<Ring, String> {
        let capacity = capacity.max(4096).next_multiple_of(8);
        let region = SharedRegion::create("pool-queue", DATA_OFFSET + capacity)
            .map_err(|e| e.to_string())?;
        let ring = Ring {
            region,
            capacity: capacity as u64,
        };
        let h = ring.header();
        h.capacity.store(capacity as u64, Ordering::Relaxed);
        h.maxsize.store(maxsize, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    fn open(fd: std::os::fd::OwnedFd) -> Result<Ring, String> {
        let region = SharedRegion::open(fd).map_err(|e| e.to_string())?;
        if region.len() <= DATA_OFFSET {
            return Err("the descriptor is not a queue".into());
        }
        // SAFETY: the region is longer than the header page (checked above) and page-aligned.
        let h = unsafe { &*region.as_ptr().cast::<Header>() };
        let capacity = h.capacity.load(Ordering::Acquire);
        if h.magic.load(Ordering::Acquire) != MAGIC
            || capacity != (region.len() - DATA_OFFSET) as u64
        {
            return Err("the descriptor is not a queue".into());
        }
        Ok(Ring { region, capacity })
    }

    fn header(&self) -> &Header {
        // SAFETY: the region starts with a header page (made so by `create`, checked by
        // `open`); `Header` is only atomics, valid for any bytes, used through `&` only.
        unsafe { &*self.region.as_ptr().cast::<Header>() }
    }

    fn lock(&self) -> RawLock<'_> {
        let h = self.header();
        RawLock {
            word: &h.lock,
            record: &h.lock_owner,
        }
    }

    /// Copies `bytes` into the ring at position `at` (wrapping).
    ///
    /// # Safety
    /// The caller holds the queue's lock and `[at, at + len)` is free space of the ring.
    unsafe fn write(&self, at: u64, bytes: &[u8]) {
        let start = (at % self.capacity) as usize;
        let first = bytes.len().min(self.capacity as usize - start);
        let data = self.region.as_ptr().wrapping_add(DATA_OFFSET);
        // SAFETY: both ranges lie inside the data area (`start + first <= capacity`, the rest
        // wraps to the start and is shorter than the capacity); the caller owns them.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(start), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), data, bytes.len() - first);
        }
    }

    /// Copies `out.len()` bytes out of the ring from position `at` (wrapping).
    ///
    /// # Safety
    /// The caller holds the queue's lock and `[at, at + out.len())` holds queued data.
    unsafe fn read(&self, at: u64, out: &mut [u8]) {
        let start = (at % self.capacity) as usize;
        let first = out.len().min(self.capacity as usize - start);
        let data = self.region.as_ptr().wrapping_add(DATA_OFFSET);
        // SAFETY: as in `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
        }
    }
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

/// Rebuilds the item count from the records between head and tail, after the queue's lock
/// was taken over from a process that died holding it: the count is updated just after the
/// position that publishes or removes an item, so a death in between leaves it off by one.
/// (`JoinableQueue`'s count of unfinished tasks cannot be rebuilt this way: a producer or
/// consumer killed at that moment may leave it off by one; documented there.) The lock is held.
fn recount<T>(ring: &Ring, h: &Header) -> Result<(), QueueError<T>> {
    let (head, tail) = (
        h.head.load(Ordering::Relaxed),
        h.tail.load(Ordering::Relaxed),
    );
    if tail < head || tail - head > ring.capacity {
        return Err(QueueError::Corrupt("positions out of range"));
    }
    let (mut at, mut items) = (head, 0u64);
    while at < tail {
        if tail - at < 8 {
            return Err(QueueError::Corrupt("a record cut short"));
        }
        let mut len = [0u8; 8];
        // SAFETY: the lock is held and at least 8 bytes are queued at `at` (checked above).
        unsafe { ring.read(at, &mut len) };
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
/// `qsize` is exact at the moment it is read, and stale the moment after, as in Python.
///
/// ```
/// let q = pool_api::Queue::<String>::new()?;
/// q.put("A".to_string())?;
/// assert_eq!(q.len(), 1);
/// assert_eq!(q.get()?, "A");
/// assert!(q.is_empty());
/// # Ok::<(), pool_api::QueueError<String>>(())
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
    /// An unbounded queue, as Python's: no item count limit. Its items live in a sparse
    /// ring of [`DEFAULT_QUEUE_CAPACITY`] bytes of address space (only what is queued costs
    /// memory), so `put` waits only once 8 GiB are queued and unread, and an item whose
    /// encoding is larger than that is refused with an error that hands it back.
    pub fn new() -> Result<Queue<T>, QueueError<T>> {
        Queue::with_limits(0, DEFAULT_QUEUE_CAPACITY)
    }

    /// A queue of at most `maxsize` items (Python's `Queue(maxsize)`; 0: unbounded).
    pub fn bounded(maxsize: usize) -> Result<Queue<T>, QueueError<T>> {
        Queue::with_limits(maxsize, DEFAULT_QUEUE_CAPACITY)
    }

    /// A queue of at most `maxsize` items (0: unbounded) and `capacity` bytes of ring (virtual
    /// memory; only what is queued is allocated).
    pub fn with_limits(maxsize: usize, capacity: usize) -> Result<Queue<T>, QueueError<T>> {
        let ring = Ring::create(capacity, maxsize as u64)
            .map_err(|e| QueueError::Io(std::io::Error::other(e).into()))?;
        Ok(Queue {
            ring: Arc::new(ring),
            closed: false,
            _t: PhantomData,
        })
    }

    /// Puts an item, waiting while the queue is full (only with a `maxsize`, or once the
    /// ring's bytes are used up).
    pub fn put(&self, item: T) -> Result<(), QueueError<T>> {
        self.put_inner(item, None, true)
    }

    /// Puts an item, waiting at most `timeout` while the queue is full
    /// ([`QueueError::Full`] hands the item back).
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), QueueError<T>> {
        self.put_inner(item, crate::deadline_in(timeout), true)
    }

    /// Puts an item if there is room now ([`QueueError::Full`] hands it back).
    pub fn try_put(&self, item: T) -> Result<(), QueueError<T>> {
        self.put_inner(item, None, false)
    }

    fn put_inner(
        &self,
        item: T,
        deadline: Option<Instant>,
        block: bool,
    ) -> Result<(), QueueError<T>> {
        if self.closed {
            return Err(QueueError::Closed);
        }
        let bytes = match postcard::to_stdvec(&item) {
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
        if need > ring.capacity {
            return Err(QueueError::Encode(CodecError::new(format!(
                "an item of {} bytes does not fit the queue's ring",
                bytes.len()
            ))));
        }
        let h = ring.header();
        let lock = ring.lock();
        loop {
            match lock.acquire(lock_deadline(deadline, block)) {
                Ok(taken) if taken.previous_owner_died.is_some() => {
                    if let Err(e) = recount(ring, h) {
                        let _ = lock.release();
                        return Err(e);
                    }
                }
                Ok(_) => {}
                Err(SyncError::Timeout) => return Err(QueueError::Full(item)),
                Err(e) => return Err(e.into()),
            }
            let (head, tail) = (
                h.head.load(Ordering::Relaxed),
                h.tail.load(Ordering::Relaxed),
            );
            if tail < head || tail - head > ring.capacity {
                let _ = lock.release();
                return Err(QueueError::Corrupt("positions out of range"));
            }
            let maxsize = h.maxsize.load(Ordering::Relaxed);
            let full = (maxsize != 0 && h.count.load(Ordering::Relaxed) >= maxsize)
                || tail - head + need > ring.capacity;
            if !full {
                // SAFETY: the lock is held and `[tail, tail + need)` is free (checked above).
                unsafe {
                    ring.write(tail, &(bytes.len() as u64).to_le_bytes());
                    ring.write(tail + 8, &bytes);
                }
                // Publishing is the last step: a producer killed before it changed nothing.
                h.tail.store(tail + need, Ordering::Release);
                h.count.fetch_add(1, Ordering::Relaxed);
                h.unfinished.fetch_add(1, Ordering::Relaxed);
                h.put_seq.fetch_add(1, Ordering::Release);
                let wake = h.getters.load(Ordering::Relaxed) > 0;
                lock.release()?;
                if wake {
                    futex_wake(&h.put_seq, 1);
                }
                return Ok(());
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
                return Err(QueueError::Full(item));
            }
        }
    }

    /// Takes the oldest item, waiting while the queue is empty.
    pub fn get(&self) -> Result<T, QueueError<T>> {
        self.get_inner(None, true)
    }

    /// Takes the oldest item, waiting at most `timeout` ([`QueueError::Empty`]).
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, QueueError<T>> {
        self.get_inner(crate::deadline_in(timeout), true)
    }

    /// Takes the oldest item if there is one ([`QueueError::Empty`] otherwise).
    pub fn try_get(&self) -> Result<T, QueueError<T>> {
        self.get_inner(None, false)
    }

    fn get_inner(&self, deadline: Option<Instant>, block: bool) -> Result<T, QueueError<T>> {
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
            if taken.previous_owner_died.is_some() {
                if let Err(e) = recount(ring, h) {
                    let _ = lock.release();
                    return Err(e);
                }
            }
            if h.count.load(Ordering::Relaxed) > 0 {
                let bytes = self.take_one(ring, h);
                let wake = h.putters.load(Ordering::Relaxed) > 0;
                lock.release()?;
                if wake {
                    futex_wake(&h.get_seq, 1);
                }
                let bytes = bytes?;
                return postcard::from_bytes(&bytes)
                    .map_err(|e| QueueError::Decode(CodecError::caused_by("decoding an item", e)));
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

    /// Copies the oldest record out and removes it. The lock is held.
    fn take_one(&self, ring: &Ring, h: &Header) -> Result<Vec<u8>, QueueError<T>> {
        let (head, tail) = (
            h.head.load(Ordering::Relaxed),
            h.tail.load(Ordering::Acquire),
        );
        if head.checked_add(8).is_none_or(|h8| tail < h8) || tail - head > ring.capacity {
            return Err(QueueError::Corrupt("positions out of range"));
        }
        let mut len = [0u8; 8];
        // SAFETY: the lock is held and at least 8 bytes are queued at `head` (checked above).
        unsafe { ring.read(head, &mut len) };
        let len = u64::from_le_bytes(len);
        if len > tail - head - 8 {
            return Err(QueueError::Corrupt("a record longer than the queued data"));
        }
        let mut bytes = vec![0u8; len as usize];
        // SAFETY: the lock is held and `len` bytes are queued after the length (checked).
        unsafe { ring.read(head + 8, &mut bytes) };
        // Removing is the last step: a consumer killed before it leaves the item queued.
        let new_head = head + record_len(len as usize);
        h.head.store(new_head, Ordering::Release);
        h.count.fetch_sub(1, Ordering::Relaxed);
        h.get_seq.fetch_add(1, Ordering::Release);
        self.discard_consumed(ring, h, new_head);
        Ok(bytes)
    }

    /// Gives consumed pages of the ring back to the system, in steps. The lock is held.
    ///
    /// A consumed position `p` shares its bytes with `p + capacity`, which a producer may
    /// already have written once the ring wrapped: only positions with `p + capacity >= tail`
    /// are really free.
    fn discard_consumed(&self, ring: &Ring, h: &Header, head: u64) {
        let tail = h.tail.load(Ordering::Relaxed);
        let reusable_from = tail
            .saturating_sub(ring.capacity)
            .next_multiple_of(DISCARD_STEP);
        let done = h.discarded.load(Ordering::Relaxed).max(reusable_from);
        let upto = head / DISCARD_STEP * DISCARD_STEP;
        if upto <= done {
            return;
        }
        let mut at = done;
        while at < upto {
            let offset = (at % ring.capacity) as usize;
            let len = (DISCARD_STEP as usize).min(ring.capacity as usize - offset);
            let _ = ring.region.discard(DATA_OFFSET + offset, len);
            at += len as u64;
        }
        h.discarded.store(upto, Ordering::Relaxed);
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
    /// A new, empty queue.
    pub fn new() -> Result<SimpleQueue<T>, QueueError<T>> {
        Queue::new().map(SimpleQueue)
    }

    /// Puts an item.
    pub fn put(&self, item: T) -> Result<(), QueueError<T>> {
        self.0.put(item)
    }

    /// Takes the oldest item, waiting while there is none.
    pub fn get(&self) -> Result<T, QueueError<T>> {
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
    /// An unbounded joinable queue.
    pub fn new() -> Result<JoinableQueue<T>, QueueError<T>> {
        Queue::new().map(JoinableQueue)
    }

    /// The queue's `put`, `get` and the rest.
    pub fn queue(&self) -> &Queue<T> {
        &self.0
    }

    /// Puts an item (one more unfinished task).
    pub fn put(&self, item: T) -> Result<(), QueueError<T>> {
        self.0.put(item)
    }

    /// Takes the oldest item.
    pub fn get(&self) -> Result<T, QueueError<T>> {
        self.0.get()
    }

    /// Marks one item taken with `get` as processed; [`QueueError::TooManyTaskDone`] if more
    /// were marked than put.
    pub fn task_done(&self) -> Result<(), QueueError<T>> {
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
    pub fn join(&self) -> Result<(), QueueError<T>> {
        self.join_within(None).map(drop)
    }

    /// [`join`](Self::join) for at most `timeout`; whether every item was marked done.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, QueueError<T>> {
        self.join_within(Some(timeout))
    }

    fn join_within(&self, timeout: Option<Duration>) -> Result<bool, QueueError<T>> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
                matches!(other.try_put(2), Err(QueueError::Full(2))),
                matches!(other.put_timeout(3, short), Err(QueueError::Full(3))),
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

    /// What a scribbling process may do to a queue's shared state: set its positions and
    /// count to anything, and overwrite record bytes (lengths included).
    #[derive(Clone, Debug)]
    enum Scribble {
        Head(u64),
        Tail(u64),
        Count(u64),
        Data { at: u64, bytes: [u8; 8] },
    }

    fn scribble() -> impl Strategy<Value = Scribble> {
        let position = prop_oneof![0u64..20_000, any::<u64>()];
        prop_oneof![
            position.clone().prop_map(Scribble::Head),
            position.prop_map(Scribble::Tail),
            prop_oneof![0u64..8, any::<u64>()].prop_map(Scribble::Count),
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
            ..ProptestConfig::default()
        };
        let input = (
            proptest::collection::vec(any::<String>(), 0..6),
            proptest::collection::vec(scribble(), 1..4),
        );
        proptest::test_runner::TestRunner::new(config)
            .run(&input, |(items, scribbles)| {
                let q: Queue<String> = Queue::with_limits(0, 8192).unwrap();
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
                        // SAFETY: nobody else uses this queue; the position is wrapped into
                        // the ring by `write`.
                        Scribble::Data { at, bytes } => unsafe { ring.write(at, &bytes) },
                    }
                }
                let short = Duration::from_millis(1);
                for _ in 0..4 {
                    let _ = q.get_timeout(short);
                    let _ = q.try_put("after".to_string());
                    let _ = q.len();
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
