//! The shared-memory transport: two single-producer/single-consumer byte rings in one memfd
//! mapping, with a short adaptive spin and then a futex sleep.
//!
//! # Layout
//!
//! One channel is one memfd, mapped `MAP_SHARED` by both processes:
//!
//! ```text
//! 0      global header: magic, version, ring capacity, "second end opened" claim
//! 128    ring 0 header (A → B)   three 128-byte lines: writer's, reader's, state
//! 512    ring 1 header (B → A)
//! 4096   ring 0 data (capacity bytes, a power of two)
//! 4096+c ring 1 data
//! ```
//!
//! End A (the creator) writes ring 0 and reads ring 1; end B (the opener) the reverse. Each
//! ring is a classic SPSC byte ring: the writer owns the write position, the reader owns the
//! read position, both are `u64` counters that only grow (modulo 2^64) and are reduced with
//! the capacity mask to index the data. The writer's line holds the write position and the
//! "writer is asleep, waiting for space" futex word; the reader's line holds the read
//! position and the "reader is asleep, waiting for data" futex word; so on the fast path each
//! line is written by one side only and merely read by the other (no false sharing, one
//! cache-line transfer per publication). The state line holds rarely written flags: closed
//! by the writer, closed by the reader, peer declared dead.
//!
//! # Framing
//!
//! A message is an 8-byte little-endian length and then its bytes, both wrapping around the
//! end of the ring. A message larger than the ring is *streamed* through it: the writer
//! publishes what fits, sleeps until the reader has drained some, and goes on; the reader
//! copies straight into the caller's buffer as bytes arrive. So any size works with a fixed
//! ring, and each byte is copied exactly once on each side (into the ring, out of it).
//!
//! A message whose frame fits in the ring is written only once there is room for all of it,
//! so a send deadline that passes leaves the channel intact. A larger message cannot be
//! taken back once its first piece is visible: if its deadline passes half-way, the sender
//! closes its ring and the channel is broken (the peer sees `Disconnected`). On the
//! receiving side, a deadline that passes half-way through a message is harmless: what has
//! arrived is kept and the next call goes on with it. A length above the receiver's limit
//! gives `TooLarge` and consumes nothing: raising the limit and calling again receives it.
//!
//! # Waiting
//!
//! When the ring is empty (or full), a side first spins briefly — a time budget between 2
//! and 20 µs that grows when spinning pays off and shrinks when it does not, probing the
//! full budget now and then, and no spin at all on a single CPU — then yields a couple of
//! times, then publishes "I am asleep" in its futex word and sleeps on it. The other side,
//! after publishing a position, looks at that word and only makes the `futex_wake` system
//! call when it is set, so a busy channel makes no system call at all. The futexes are the
//! shared (not `FUTEX_PRIVATE`) kind: the two sides are different processes, and the kernel
//! must key the futex on the underlying memfd page, not on this process's address space.
//!
//! # Trust
//!
//! The peer shares our memory and may be buggy or hostile. We therefore never keep our own
//! position only in shared memory (each side keeps its authoritative copy locally and just
//! publishes it), check every position we read from the peer against ours before using it
//! (`RecvError::Corrupt` if out of range, never an out-of-bounds access), check a length
//! header against the limit before allocating anything, and grow the receive buffer only as
//! bytes really arrive. The opener validates the header (magic, version, a power-of-two
//! capacity consistent with the file size) and requires the memfd to be sealed against
//! shrinking, so the creator cannot make our mapping fault (`SIGBUS`) under us. Data bytes
//! the peer scribbles on while we copy them only change the values we read.
//!
//! # Death
//!
//! A graceful close (dropping a [`ShmSender`] or [`ShmReceiver`]) sets a flag and wakes the
//! peer. A peer that dies cannot do that, and shared memory gives no kernel notice: whoever
//! watches the peer process (a pidfd) calls [`ShmPeerDeath::notify`], which marks both rings
//! dead and wakes every sleeper. Either way the receiver first drains the complete messages
//! already in the ring, then reports `Disconnected`.
//!
//! Closing writes to shared memory, so a forked child must not drop the handles of its
//! parent's ends that it inherited (forget them, or leave with `_exit`): that would close the
//! parent's channel.

use super::{DEFAULT_MAX_MESSAGE, RecvError, SendError, YIELD_FOR};

use std::fmt;
use std::io;
use std::mem;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;

/// The default size of each direction's ring, in bytes: 1 MiB. Larger messages are streamed
/// through it, so this bounds memory, not message size.
pub const DEFAULT_RING_CAPACITY: usize = 1 << 20;

/// The smallest ring accepted (one page).
const MIN_CAPACITY: usize = 4096;
/// The largest ring accepted (1 GiB per direction).
const MAX_CAPACITY: usize = 1 << 30;

/// Identifies a mapping made by this module.
const MAGIC: u64 = u64::from_le_bytes(*b"POOLSHM\0");
/// The layout's version: bump on any change to it.
const VERSION: u32 = 1;
/// Where the first ring's header starts.
const RING_HEADERS: [usize; 2] = [128, 128 + size_of::<RingHeader>()];
/// Where the rings' data starts (page-aligned); ring `i` is at `DATA_OFFSET + i * capacity`.
const DATA_OFFSET: usize = 4096;
/// The length prefix of a frame.
const LEN_BYTES: u64 = 8;

/// State bit: the writer has closed its end of the ring (dropped, or gave up mid-message).
const WRITER_CLOSED: u32 = 1 << 0;
/// State bit: the reader has closed its end of the ring.
const READER_CLOSED: u32 = 1 << 1;
/// State bit: the peer was declared dead by its supervisor (set on both rings).
const PEER_DEAD: u32 = 1 << 2;

/// Spinning budget bounds. On two cores a long spin steals the very CPU the peer needs.
const SPIN_MIN: Duration = Duration::from_micros(2);
const SPIN_MAX: Duration = Duration::from_micros(20);
/// After this many waits that ended asleep in a row, spin the full budget once, to notice
/// that the peer became fast again.
const PROBE_EVERY: u32 = 16;
/// `spin_loop` hints between two looks at the ring.
const SPINS_PER_CHECK: u32 = 8;
/// `yield_now` calls between spinning and sleeping, at least (and for [`YIELD_FOR`]).
const YIELDS: u32 = 2;
/// The longest single futex sleep when a deadline is far away (the loop sleeps again).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The mapping's first bytes. Only atomics, so any bit pattern the peer leaves is a valid
/// value and concurrent modification is not undefined behaviour.
#[repr(C)]
struct GlobalHeader {
    magic: AtomicU64,
    version: AtomicU32,
    /// Set once the second end has been opened, so that it is opened at most once.
    opened: AtomicU32,
    /// Bytes per ring.
    capacity: AtomicU64,
}

/// The line written by a ring's writer.
#[repr(C, align(128))]
struct WriterLine {
    /// Bytes ever written (published) into the ring.
    write_pos: AtomicU64,
    /// Nonzero while the writer sleeps (or is about to) waiting for space.
    space_waiter: AtomicU32,
}

/// The line written by a ring's reader.
#[repr(C, align(128))]
struct ReaderLine {
    /// Bytes ever consumed from the ring.
    read_pos: AtomicU64,
    /// Nonzero while the reader sleeps (or is about to) waiting for data.
    data_waiter: AtomicU32,
}

/// The rarely written flags of a ring.
#[repr(C, align(128))]
struct StateLine {
    /// `WRITER_CLOSED | READER_CLOSED | PEER_DEAD`.
    state: AtomicU32,
}

/// One ring's control block. 128-byte lines: the adjacent-line prefetcher of x86 pulls pairs
/// of 64-byte lines, so 64 would still let the two sides' lines interfere.
#[repr(C)]
struct RingHeader {
    writer: WriterLine,
    reader: ReaderLine,
    state: StateLine,
}

const _: () = assert!(size_of::<GlobalHeader>() <= RING_HEADERS[0]);
const _: () = assert!(RING_HEADERS[1] + size_of::<RingHeader>() <= DATA_OFFSET);
const _: () = assert!(RING_HEADERS[0] % align_of::<RingHeader>() == 0);
const _: () = assert!(RING_HEADERS[1] % align_of::<RingHeader>() == 0);

/// A `MAP_SHARED` mapping of a channel's memfd, unmapped on drop. Shared (through an `Arc`)
/// by the two halves of an end and its [`ShmPeerDeath`] handles.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// Bytes per ring, validated; 0 until then.
    capacity: usize,
}

// SAFETY: the mapping is plain memory that lives until drop. Everything reached through it
// is either atomics (the headers) or ring data whose accesses the ring protocol confines to
// one side at a time, through raw pointers only; so it may be used and dropped on any thread.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out `&` to atomics and raw data pointers.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd`, read-write and shared.
    fn map(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping (null hint, no MAP_FIXED) cannot alias any existing memory;
        // `fd` is open for the duration of the call.
        let ptr = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )?
        };
        let base =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping {
            base,
            len,
            capacity: 0,
        })
    }

    fn global(&self) -> &GlobalHeader {
        // SAFETY: every mapping is at least DATA_OFFSET bytes (checked before mapping) and
        // page-aligned, so the header is in bounds and aligned; it is made of atomics only, so
        // any content is valid and the peer may write it concurrently; the borrow cannot
        // outlive `self`, which keeps the memory mapped.
        unsafe { self.base.cast::<GlobalHeader>().as_ref() }
    }

    fn ring(&self, index: usize) -> &RingHeader {
        let offset = RING_HEADERS[index & 1];
        // SAFETY: `offset + size_of::<RingHeader>() <= DATA_OFFSET <= len` (const-asserted and
        // checked at mapping time), the offset is a multiple of the header's alignment and the
        // base is page-aligned; atomics only, and the borrow is tied to `self` as above.
        unsafe { self.base.add(offset).cast::<RingHeader>().as_ref() }
    }

    /// The first data byte of ring `index`. Only meaningful once `capacity` is validated.
    fn data(&self, index: usize) -> *mut u8 {
        debug_assert!(self.capacity > 0);
        // SAFETY: `len == DATA_OFFSET + 2 * capacity` (validated before `capacity` is set), so
        // the offset stays inside the mapping.
        unsafe {
            self.base
                .as_ptr()
                .add(DATA_OFFSET + (index & 1) * self.capacity)
        }
    }

    /// Marks the peer dead on both rings and wakes every sleeper.
    fn declare_dead(&self) {
        for index in 0..2 {
            self.ring(index)
                .state
                .state
                .fetch_or(PEER_DEAD, Ordering::SeqCst);
        }
        for index in 0..2 {
            let ring = self.ring(index);
            wake_all(&ring.reader.data_waiter);
            wake_all(&ring.writer.space_waiter);
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned, and this is the last owner
        // (the `Arc` is gone), so no reference into the mapping remains.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The size of the mapping for a given ring capacity.
fn mapping_len(capacity: usize) -> usize {
    DATA_OFFSET + 2 * capacity
}

fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// A new, initialised, sealed memfd mapping.
fn create_mapping(capacity: usize) -> io::Result<(Mapping, OwnedFd)> {
    if !valid_capacity(capacity) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "ring capacity must be a power of two between {MIN_CAPACITY} and {MAX_CAPACITY}, not {capacity}"
            ),
        ));
    }
    let fd = rustix::fs::memfd_create("pool-shm", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let len = mapping_len(capacity);
    rustix::fs::ftruncate(&fd, len as u64)?;
    // Sealed, so that no holder of the fd (the child) can shrink the file under our mapping:
    // touching a page past the end of a file is a SIGBUS, not an error.
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    let mut map = Mapping::map(&fd, len)?;
    map.capacity = capacity;
    let global = map.global();
    global.capacity.store(capacity as u64, Ordering::Relaxed);
    global.version.store(VERSION, Ordering::Relaxed);
    global.magic.store(MAGIC, Ordering::Release);
    Ok((map, fd))
}

/// Wakes the sleeper announced in `word`, if any. Called after publishing a position.
fn wake_if_waiting(word: &AtomicU32) {
    // The SeqCst fence pairs with the one in `block_on` (Dekker's pattern): we stored the new
    // position and then load the flag; the sleeper stored the flag and then loads the
    // position. With a SeqCst fence between the store and the load on both sides, at least one
    // of us sees the other's store: either we see the flag and wake it, or it sees our
    // position and does not sleep. Without the fences both loads could read stale values
    // (store buffering) and the wake-up would be lost.
    fence(Ordering::SeqCst);
    // The plain load keeps the fast path free of a locked instruction; the swap makes sure
    // that only one waker pays for the system call.
    if word.load(Ordering::Relaxed) != 0 && word.swap(0, Ordering::Relaxed) != 0 {
        let _ = futex::wake(word, futex::Flags::empty(), 1);
    }
}

/// Wakes whoever sleeps on `word`, unconditionally (closing and death: rare, and must not
/// depend on a flag the peer could have cleared). The caller has just set a state bit with
/// a SeqCst operation, which orders it before the swap below; the sleeper stored its flag
/// and fenced before loading the state; so either it sees the bit, or the swap sees its flag
/// and its `futex_wait(word, 1)` finds 0 and returns at once, or it is woken.
fn wake_all(word: &AtomicU32) {
    word.swap(0, Ordering::SeqCst);
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// Whether spinning can help. With one CPU the peer cannot run while we spin. With two, a
/// pool has more threads ready to run than CPUs (the caller, two workers, their readers), and
/// a spinner holds the CPU that the thread it waits for needs: measured on a 2-CPU VM, a
/// pool's `apply` round trip took ~40 µs with spins of up to 20 µs, ~20 µs with 2 µs and
/// ~10 µs with none (the two `yield_now`s before sleeping remain), and `map` with chunksize 1
/// ran a fifth faster; 1 KiB and 64 MiB Pipe messages ran as fast either way.
fn spinning_pays() -> bool {
    static CPUS: AtomicUsize = AtomicUsize::new(0);
    let mut cpus = CPUS.load(Ordering::Relaxed);
    if cpus == 0 {
        cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        CPUS.store(cpus, Ordering::Relaxed);
    }
    cpus > 2
}

/// The adaptive spin budget of one side.
struct Spinner {
    budget: Duration,
    /// Waits in a row that ended in a futex sleep.
    misses: u32,
    /// Set by the owner: the budget of every wait, whatever the machine.
    fixed: Option<Duration>,
}

impl Spinner {
    fn new() -> Spinner {
        Spinner {
            budget: SPIN_MAX / 2,
            misses: 0,
            fixed: None,
        }
    }

    fn budget(&self) -> Duration {
        if let Some(fixed) = self.fixed {
            fixed
        } else if !spinning_pays() {
            Duration::ZERO
        } else if self.misses % PROBE_EVERY == PROBE_EVERY - 1 {
            SPIN_MAX
        } else {
            self.budget
        }
    }

    /// The wait ended while spinning or yielding, after `waited`.
    fn hit(&mut self, waited: Duration) {
        self.misses = 0;
        self.budget = self.budget.max(waited.saturating_mul(2)).min(SPIN_MAX);
    }

    /// The wait had to sleep.
    fn miss(&mut self) {
        self.misses = self.misses.wrapping_add(1);
        self.budget = (self.budget / 2).max(SPIN_MIN);
    }
}

/// Waits until `check` gives a value (or an error): spin, yield, then sleep on the futex
/// `word`, until `deadline`.
///
/// `check` must look at the shared state afresh each time; it is called again after the
/// "asleep" flag is published, so that an event between the last look and the flag is not
/// missed (see `wake_if_waiting`).
fn block_on<T, E: From<io::Error>>(
    spinner: &mut Spinner,
    word: &AtomicU32,
    deadline: Option<Instant>,
    timeout: fn() -> E,
    mut check: impl FnMut() -> Result<Option<T>, E>,
) -> Result<T, E> {
    if let Some(ready) = check()? {
        return Ok(ready);
    }
    let start = Instant::now();
    if deadline.is_some_and(|deadline| start >= deadline) {
        return Err(timeout());
    }

    let budget = spinner.budget();
    if !budget.is_zero() {
        let until = deadline.map_or(start + budget, |deadline| deadline.min(start + budget));
        loop {
            for _ in 0..SPINS_PER_CHECK {
                std::hint::spin_loop();
            }
            if let Some(ready) = check()? {
                spinner.hit(start.elapsed());
                return Ok(ready);
            }
            if Instant::now() >= until {
                break;
            }
        }
    }
    let yield_until = start + YIELD_FOR;
    let yield_until = deadline.map_or(yield_until, |deadline| deadline.min(yield_until));
    let mut yields = 0;
    while yields < YIELDS || Instant::now() < yield_until {
        yields += 1;
        std::thread::yield_now();
        if let Some(ready) = check()? {
            spinner.hit(start.elapsed());
            return Ok(ready);
        }
    }
    spinner.miss();

    loop {
        // Announce the sleep, then look again (the SeqCst fence pairs with the waker's).
        word.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        match check() {
            Ok(None) => {}
            Ok(Some(ready)) => {
                word.store(0, Ordering::Relaxed);
                return Ok(ready);
            }
            Err(err) => {
                word.store(0, Ordering::Relaxed);
                return Err(err);
            }
        }
        let sleep = match deadline {
            None => None,
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left.min(MAX_SLEEP)),
                _ => {
                    word.store(0, Ordering::Relaxed);
                    return Err(timeout());
                }
            },
        };
        let sleep = sleep.map(|left| {
            futex::Timespec::try_from(left).unwrap_or(futex::Timespec {
                tv_sec: 3600,
                tv_nsec: 0,
            })
        });
        // Shared futex (no PRIVATE flag): the waker may be another process. The kernel
        // sleeps only if the word still holds 1, atomically with queueing us, so a waker that
        // cleared it before we got here makes this return at once (EAGAIN).
        match futex::wait(word, futex::Flags::empty(), 1, sleep.as_ref()) {
            Ok(()) => {}
            Err(err) if err == Errno::AGAIN || err == Errno::INTR || err == Errno::TIMEDOUT => {}
            Err(err) => {
                word.store(0, Ordering::Relaxed);
                return Err(io::Error::from(err).into());
            }
        }
    }
}

/// One ring of a mapping, as seen by one side.
struct Ring {
    map: Arc<Mapping>,
    index: usize,
    /// Bytes in the ring (a power of two).
    capacity: usize,
    /// How much is copied between two publications of a position, so that the other side
    /// can work on one part while we copy the next.
    step: usize,
}

impl Ring {
    fn new(map: Arc<Mapping>, index: usize) -> Ring {
        let capacity = map.capacity;
        Ring {
            map,
            index,
            capacity,
            step: capacity / 4,
        }
    }

    fn header(&self) -> &RingHeader {
        self.map.ring(self.index)
    }

    fn cap(&self) -> u64 {
        self.capacity as u64
    }

    /// Copies `src` into the ring at position `pos`, wrapping around.
    ///
    /// # Safety
    /// `src.len() <= capacity`, and the bytes `[pos, pos + src.len())` of the ring are free:
    /// not between the published read position and the write position, so the reader does not
    /// look at them.
    unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let offset = (pos as usize) & (self.capacity - 1);
        let first = src.len().min(self.capacity - offset);
        let data = self.map.data(self.index);
        // SAFETY: `offset + first <= capacity` and `src.len() - first <= capacity - first`
        // (as `src.len() <= capacity`), so both copies stay inside this ring's data; the
        // source is a live slice outside the mapping, so they do not overlap; per the caller,
        // the reader does not access these bytes now.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), data.add(offset), first);
            ptr::copy_nonoverlapping(src.as_ptr().add(first), data, src.len() - first);
        }
    }

    /// Copies `len` bytes from the ring at position `pos` to `dst`, wrapping around.
    ///
    /// # Safety
    /// `len <= capacity`; `dst` is valid for `len` bytes of writes and outside the mapping;
    /// the bytes `[pos, pos + len)` were published by the writer and not yet released by us.
    unsafe fn copy_out(&self, pos: u64, dst: *mut u8, len: usize) {
        let offset = (pos as usize) & (self.capacity - 1);
        let first = len.min(self.capacity - offset);
        let data = self.map.data(self.index);
        // SAFETY: in bounds as in `copy_in`; `dst` is valid and disjoint per the caller. A
        // well-behaved writer does not touch published bytes; a hostile one writing them
        // concurrently can only change the values we copy (plain bytes, no invariant), and we
        // never hold a reference to the shared bytes.
        unsafe {
            ptr::copy_nonoverlapping(data.add(offset), dst, first);
            ptr::copy_nonoverlapping(data, dst.add(first), len - first);
        }
    }
}

/// One end of a shared-memory channel: a ring to send on and a ring to receive from, in one
/// mapping shared with the peer. Split it to use the directions from different threads.
#[derive(Debug)]
pub struct ShmChannel {
    sender: ShmSender,
    receiver: ShmReceiver,
}

impl ShmChannel {
    /// Both ends of a new channel, in this process (for threads, and for tests), sharing one
    /// mapping. `capacity` is the size of each direction's ring: a power of two, at least
    /// 4096 and at most 1 GiB ([`DEFAULT_RING_CAPACITY`] is a good choice).
    pub fn pair(capacity: usize) -> io::Result<(ShmChannel, ShmChannel)> {
        let (map, _fd) = create_mapping(capacity)?;
        map.global().opened.store(1, Ordering::Relaxed);
        let map = Arc::new(map);
        let a = ShmChannel::from_mapping(Arc::clone(&map), 0)?;
        let b = ShmChannel::from_mapping(map, 1)?;
        Ok((a, b))
    }

    /// The creator's end of a new channel, and the memfd from which the other process opens
    /// its end with [`ShmChannel::open`]. The descriptor is close-on-exec: a child started by
    /// `exec` must be handed it explicitly (a forked child simply has it).
    pub fn create(capacity: usize) -> io::Result<(ShmChannel, OwnedFd)> {
        let (map, fd) = create_mapping(capacity)?;
        let end = ShmChannel::from_mapping(Arc::new(map), 0)?;
        Ok((end, fd))
    }

    /// Opens the second end of a channel from the memfd [`ShmChannel::create`] made (inherited
    /// by this process). Nothing in it is trusted: the file must be a memfd sealed against
    /// shrinking, and its header must carry the right magic and version and a power-of-two
    /// capacity that matches the file's size; otherwise this fails with
    /// [`io::ErrorKind::InvalidData`]. A channel's second end can be opened only once.
    pub fn open(fd: OwnedFd) -> io::Result<ShmChannel> {
        let map = Mapping::open_checked(&fd)?;
        if map
            .global()
            .opened
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a usable shared-memory channel: its second end is already open",
            ));
        }
        ShmChannel::from_mapping(Arc::new(map), 1)
    }

    /// Both ends of a new channel whose ends may move between processes (a `Pipe` whose ends
    /// are handed to children), and the memfd from which [`ShmChannel::open_shared`] opens
    /// either end again in another process.
    ///
    /// Such ends never close their rings when dropped: a process dropping its copy of an end
    /// that a child now uses must not end the child's conversation. Whoever shares ends this
    /// way learns that the peer is gone by other means (pool-api pairs each end with a socket
    /// whose hang-up says so). An end must be *used* by one process at a time, as each ring
    /// has one writer and one reader; positions live in the mapping after every complete
    /// message, so an end moves between messages.
    pub fn pair_shared(capacity: usize) -> io::Result<(ShmChannel, ShmChannel, OwnedFd)> {
        let (map, fd) = create_mapping(capacity)?;
        map.global().opened.store(1, Ordering::Relaxed);
        let map = Arc::new(map);
        let a = ShmChannel::from_mapping(Arc::clone(&map), 0)?.into_copy();
        let b = ShmChannel::from_mapping(map, 1)?.into_copy();
        Ok((a, b, fd))
    }

    /// End `end` (0 or 1) of a channel made by [`ShmChannel::pair_shared`], from its memfd
    /// (inherited by this process). The mapping is validated as by [`ShmChannel::open`].
    pub fn open_shared(fd: &OwnedFd, end: usize) -> io::Result<ShmChannel> {
        if end > 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared-memory channel has ends 0 and 1",
            ));
        }
        let map = Mapping::open_checked(fd)?;
        Ok(ShmChannel::from_mapping(Arc::new(map), end)?.into_copy())
    }

    /// Marks both halves as copies: dropping them does not close the rings.
    fn into_copy(mut self) -> ShmChannel {
        self.sender.copy = true;
        self.receiver.copy = true;
        self
    }
}

impl Mapping {
    /// Maps a channel's memfd made by another process, trusting nothing in it: the file must
    /// be a memfd sealed against shrinking, and its header must carry the right magic and
    /// version and a power-of-two capacity that matches the file's size.
    fn open_checked(fd: &OwnedFd) -> io::Result<Mapping> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a usable shared-memory channel: {what}"),
            )
        };
        let stat = rustix::fs::fstat(fd)?;
        let size = usize::try_from(stat.st_size).map_err(|_| bad("negative size"))?;
        if size < mapping_len(MIN_CAPACITY) || size > mapping_len(MAX_CAPACITY) {
            return Err(bad("size out of range"));
        }
        let seals = rustix::fs::fcntl_get_seals(fd).map_err(|_| bad("not a memfd"))?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(bad("the file is not sealed against shrinking"));
        }
        let mut map = Mapping::map(fd, size)?;
        let global = map.global();
        if global.magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("wrong magic number"));
        }
        if global.version.load(Ordering::Relaxed) != VERSION {
            return Err(bad("unsupported layout version"));
        }
        let capacity = usize::try_from(global.capacity.load(Ordering::Relaxed))
            .ok()
            .filter(|&capacity| valid_capacity(capacity))
            .ok_or_else(|| bad("invalid ring capacity"))?;
        if mapping_len(capacity) != size {
            return Err(bad("ring capacity does not match the file size"));
        }
        map.capacity = capacity;
        Ok(map)
    }
}

impl ShmChannel {
    /// The end that writes ring `tx` and reads the other one. Positions come from the
    /// mapping (the creator may have sent before the opener maps it) and are checked.
    fn from_mapping(map: Arc<Mapping>, tx: usize) -> io::Result<ShmChannel> {
        let rx = 1 - tx;
        let cap = map.capacity as u64;
        let tx_ring = map.ring(tx);
        let write = tx_ring.writer.write_pos.load(Ordering::Acquire);
        let read_seen = tx_ring.reader.read_pos.load(Ordering::Acquire);
        let rx_ring = map.ring(rx);
        let read = rx_ring.reader.read_pos.load(Ordering::Acquire);
        let write_seen = rx_ring.writer.write_pos.load(Ordering::Acquire);
        if write.wrapping_sub(read_seen) > cap || write_seen.wrapping_sub(read) > cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ring positions out of range",
            ));
        }
        Ok(ShmChannel {
            sender: ShmSender {
                ring: Ring::new(Arc::clone(&map), tx),
                write,
                read_seen,
                max_message: DEFAULT_MAX_MESSAGE,
                spinner: Spinner::new(),
                broken: false,
                copy: false,
            },
            receiver: ShmReceiver {
                ring: Ring::new(map, rx),
                read,
                published: read,
                write_seen,
                max_message: DEFAULT_MAX_MESSAGE,
                spinner: Spinner::new(),
                pending: None,
                stash: Vec::new(),
                failed: None,
                copy: false,
            },
        })
    }

    /// Splits this end into its sending and receiving halves, which may be used from
    /// different threads.
    pub fn split(self) -> (ShmSender, ShmReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of an end: the only writer of its ring.
pub struct ShmSender {
    ring: Ring,
    /// Our write position (authoritative: never read back from shared memory).
    write: u64,
    /// The reader's position when we last looked; `write - read_seen <= capacity`.
    read_seen: u64,
    max_message: u64,
    spinner: Spinner,
    /// A streamed message was abandoned half-way: the ring is closed.
    broken: bool,
    /// A copy whose process is not the end's user (see [`ShmSender::forget_copy`]): dropping
    /// it must not close the ring.
    copy: bool,
}

/// The pieces of one frame (length prefix, then the message's parts), copied in order.
struct Frame<'a> {
    prefix: [u8; 8],
    parts: &'a [&'a [u8]],
    /// 0 is the prefix, `i + 1` is `parts[i]`.
    segment: usize,
    offset: usize,
}

impl Frame<'_> {
    /// Copies the next `len` bytes of the frame into `ring` at `pos`.
    ///
    /// # Safety
    /// As [`Ring::copy_in`] for `[pos, pos + len)`; `len` is at most what is left of the frame.
    unsafe fn copy_into(&mut self, ring: &Ring, mut pos: u64, mut len: usize) {
        while len > 0 {
            let segment: &[u8] = match self.segment {
                0 => &self.prefix,
                i => match self.parts.get(i - 1) {
                    Some(part) => part,
                    None => return,
                },
            };
            let rest = segment.get(self.offset..).unwrap_or_default();
            let n = rest.len().min(len);
            // SAFETY: `[pos, pos + n)` is part of the range the caller vouched for.
            unsafe { ring.copy_in(pos, &rest[..n]) };
            pos = pos.wrapping_add(n as u64);
            len -= n;
            self.offset += n;
            if self.offset >= segment.len() {
                self.segment += 1;
                self.offset = 0;
            }
        }
    }
}

impl ShmSender {
    /// Sets the largest message this half sends (16 GiB by default); a larger one is refused
    /// with [`SendError::TooLarge`] before anything is written.
    pub fn set_max_message(&mut self, limit: u64) {
        self.max_message = limit;
    }

    /// Sends one message whose bytes are the concatenation of `parts`, blocking while the
    /// ring is full, until `deadline` if given. On `Ok` the whole message is in the ring (not
    /// necessarily read).
    ///
    /// A message that fits in the ring is written only once there is room for all of it, so
    /// `Timeout` leaves the channel as it was. A larger one is streamed as the peer drains it;
    /// if the deadline passes half-way, the channel is closed (the peer sees `Disconnected`
    /// after its earlier messages) and later sends return `Disconnected`.
    pub fn send_parts(
        &mut self,
        parts: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<(), SendError> {
        let total = self.check_send(parts)?;
        let cap = self.ring.cap();
        let step = self.ring.step as u64;
        let frame_len = total.saturating_add(LEN_BYTES);
        let mut frame = Frame {
            prefix: total.to_le_bytes(),
            parts,
            segment: 0,
            offset: 0,
        };
        let mut remaining = frame_len;
        let mut started = false;
        while remaining > 0 {
            // All at once if it can ever fit (so a timeout leaves nothing behind), else a
            // good piece at a time.
            let need = if frame_len <= cap {
                remaining
            } else {
                remaining.min(step)
            };
            let free = match self.wait_for_space(need, deadline) {
                Ok(free) => free,
                Err(err) => {
                    if started {
                        self.abandon();
                    }
                    return Err(err);
                }
            };
            let n = free.min(remaining);
            // SAFETY: `wait_for_space` saw `free >= n` bytes free.
            unsafe { self.write_frame(&mut frame, n) };
            started = true;
            remaining -= n;
        }
        Ok(())
    }

    /// Sends one message now if the ring has room for all of it; `Ok(false)`, with nothing
    /// written, if it has not (or if the message is larger than the ring and so can only be
    /// streamed). Never waits: for a thread that must not block on its peer.
    pub fn try_send_parts(&mut self, parts: &[&[u8]]) -> Result<bool, SendError> {
        let total = self.check_send(parts)?;
        let frame_len = total.saturating_add(LEN_BYTES);
        let cap = self.ring.cap();
        if frame_len > cap {
            return Ok(false);
        }
        // A deadline already passed: one look at the reader's position, no wait.
        match self.wait_for_space(frame_len, Some(Instant::now())) {
            Ok(_) => {}
            Err(SendError::Timeout) => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut frame = Frame {
            prefix: total.to_le_bytes(),
            parts,
            segment: 0,
            offset: 0,
        };
        // SAFETY: `wait_for_space` saw `frame_len` bytes free.
        unsafe { self.write_frame(&mut frame, frame_len) };
        Ok(true)
    }

    /// What every send checks first; the message's length.
    fn check_send(&self, parts: &[&[u8]]) -> Result<u64, SendError> {
        let total = parts
            .iter()
            .fold(0u64, |sum, part| sum.saturating_add(part.len() as u64));
        if total > self.max_message {
            return Err(SendError::TooLarge {
                len: total,
                limit: self.max_message,
            });
        }
        if self.broken {
            return Err(SendError::Disconnected);
        }
        // Acquire: pairs with the Release/SeqCst `fetch_or` of whoever closed the ring.
        if self.ring.header().state.state.load(Ordering::Acquire) & (READER_CLOSED | PEER_DEAD) != 0
        {
            return Err(SendError::Disconnected);
        }
        Ok(total)
    }

    /// Copies the next `n` bytes of `frame` into the ring and publishes them, a step at a
    /// time (so the reader can start on a long message before its end is written).
    ///
    /// # Safety
    /// At least `n` bytes after our write position are free: `n <= capacity - (write -
    /// read_seen)`, with `read_seen` a read position the reader has published.
    unsafe fn write_frame(&mut self, frame: &mut Frame<'_>, mut n: u64) {
        let step = self.ring.step as u64;
        while n > 0 {
            let k = n.min(step);
            // SAFETY: `k <= n` bytes after our write position are free (the caller's promise),
            // and free bytes are not readable by the reader (it stops at `write`, and had
            // released everything up to `read_seen`).
            unsafe { frame.copy_into(&self.ring, self.write, k as usize) };
            self.write = self.write.wrapping_add(k);
            self.publish();
            n -= k;
        }
    }

    /// Makes the bytes written so far visible to the reader, and wakes it if it sleeps.
    fn publish(&self) {
        let header = self.ring.header();
        // Release: our copies into the ring happen-before any read of them by a reader whose
        // Acquire load sees this position, so it never reads bytes not yet written.
        header.writer.write_pos.store(self.write, Ordering::Release);
        wake_if_waiting(&header.reader.data_waiter);
    }

    /// Waits until at least `need` (`<= capacity`) bytes are free; returns how many are.
    fn wait_for_space(&mut self, need: u64, deadline: Option<Instant>) -> Result<u64, SendError> {
        let cap = self.ring.cap();
        let free = cap - self.write.wrapping_sub(self.read_seen);
        if free >= need {
            return Ok(free);
        }
        let header = self.ring.header();
        let write = self.write;
        let (read, free) = block_on(
            &mut self.spinner,
            &header.writer.space_waiter,
            deadline,
            || SendError::Timeout,
            || {
                if header.state.state.load(Ordering::Acquire) & (READER_CLOSED | PEER_DEAD) != 0 {
                    return Err(SendError::Disconnected);
                }
                // Acquire: the reader's copies out of the bytes below this position
                // happen-before our overwriting them.
                let read = header.reader.read_pos.load(Ordering::Acquire);
                let used = write.wrapping_sub(read);
                if used > cap {
                    return Err(SendError::Io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the peer corrupted the ring's read position",
                    )));
                }
                let free = cap - used;
                Ok((free >= need).then_some((read, free)))
            },
        )?;
        self.read_seen = read;
        Ok(free)
    }

    /// Gives up on a message half-way through: the stream cannot be resynchronised, so the
    /// ring is closed for good.
    fn abandon(&mut self) {
        self.broken = true;
        self.close();
    }

    fn close(&self) {
        let header = self.ring.header();
        // SeqCst (so also Release): the reader that sees the bit sees every position we
        // published before it; and it is ordered before the wake below (see `wake_all`).
        header.state.state.fetch_or(WRITER_CLOSED, Ordering::SeqCst);
        wake_all(&header.reader.data_waiter);
    }
}

impl ShmSender {
    /// Drops this process's copy of a half that a forked child uses: the mapping is unmapped
    /// here, but the ring is not marked closed (the child's copy is the live one).
    pub(crate) fn forget_copy(mut self) {
        self.copy = true;
    }
}

impl Drop for ShmSender {
    fn drop(&mut self) {
        if !self.copy {
            self.close();
        }
    }
}

impl fmt::Debug for ShmSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmSender")
            .field("ring", &self.ring.index)
            .field("capacity", &self.ring.capacity)
            .field("written", &self.write)
            .field("max_message", &self.max_message)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Why a receiver stopped for good.
#[derive(Clone, Copy, Debug)]
enum Failed {
    Disconnected,
    Corrupt(&'static str),
}

impl From<Failed> for RecvError {
    fn from(failed: Failed) -> RecvError {
        match failed {
            Failed::Disconnected => RecvError::Disconnected,
            Failed::Corrupt(what) => RecvError::Corrupt(what),
        }
    }
}

/// A message whose reception a deadline interrupted.
#[derive(Clone, Copy, Debug)]
struct Pending {
    total: usize,
    remaining: usize,
}

/// The receiving half of an end: the only reader of its ring.
pub struct ShmReceiver {
    ring: Ring,
    /// Our read position (authoritative: never read back from shared memory).
    read: u64,
    /// The read position last published to the writer.
    published: u64,
    /// The writer's position when we last looked; `write_seen - read <= capacity`.
    write_seen: u64,
    max_message: u64,
    spinner: Spinner,
    /// Set when a deadline interrupted a message; its bytes so far are in `stash`.
    pending: Option<Pending>,
    stash: Vec<u8>,
    /// Sticky end: the peer is gone, or broke the framing.
    failed: Option<Failed>,
    /// See [`ShmSender::copy`].
    copy: bool,
}

impl ShmReceiver {
    /// Sets the largest message this half accepts (16 GiB by default). A longer length
    /// header gives [`RecvError::TooLarge`] without consuming or allocating anything: raise
    /// the limit and call again to receive it.
    pub fn set_max_message(&mut self, limit: u64) {
        self.max_message = limit;
    }

    /// See [`crate::Receiver::set_spin`].
    pub fn set_spin(&mut self, budget: Option<Duration>) {
        self.spinner.fixed = budget;
    }

    /// Replaces `buf`'s contents with the next message (reusing its capacity), blocking until
    /// one has fully arrived, the peer is gone (`Disconnected`, once every complete message it
    /// sent has been read), or `deadline` passes (`Timeout`).
    ///
    /// If the deadline passes in the middle of a message, the part received is kept inside
    /// (`buf` is left empty) and the next call completes that message. `Corrupt` and
    /// `Disconnected` are final: every later call returns them again.
    pub fn recv_into(
        &mut self,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), RecvError> {
        if let Some(failed) = self.failed {
            return Err(failed.into());
        }
        let (total, mut remaining) = match self.pending.take() {
            Some(pending) => {
                mem::swap(buf, &mut self.stash);
                self.stash = Vec::new();
                (pending.total, pending.remaining)
            }
            None => {
                let len = self.take_length(deadline)?;
                buf.clear();
                (len, len)
            }
        };
        while remaining > 0 {
            let available = match self.wait_for_data(1, deadline) {
                Ok(available) => available,
                Err(RecvError::Timeout) => {
                    self.pending = Some(Pending { total, remaining });
                    mem::swap(buf, &mut self.stash);
                    return Err(RecvError::Timeout);
                }
                Err(err) => return Err(err),
            };
            let n = available.min(remaining).min(self.ring.step);
            reserve_bounded(buf, n, total);
            let spare = buf.spare_capacity_mut();
            debug_assert!(spare.len() >= n);
            // SAFETY: `n <= available` published bytes from `read` on, `n <= capacity`; the
            // destination is our own vector's spare capacity, at least `n` bytes (reserved just
            // above), outside the mapping; after the copy those `n` bytes are initialised.
            unsafe {
                self.ring
                    .copy_out(self.read, spare.as_mut_ptr().cast::<u8>(), n);
                buf.set_len(buf.len() + n);
            }
            self.read = self.read.wrapping_add(n as u64);
            remaining -= n;
            if remaining > 0 {
                // Let the writer refill the ring while we copy the next piece.
                self.publish();
            }
        }
        self.publish();
        Ok(())
    }

    /// Receives the next message straight into `dst` (no intermediate buffer: one copy out
    /// of the ring), blocking until one arrives or the peer is gone. A message longer than
    /// `dst` is received whole into a vector and handed back as `Err(message)`.
    pub fn recv_into_slice(&mut self, dst: &mut [u8]) -> Result<Result<usize, Vec<u8>>, RecvError> {
        if let Some(failed) = self.failed {
            return Err(failed.into());
        }
        if self.pending.is_some() {
            // A message begun by a receive that timed out: finish it the usual way.
            let mut message = Vec::new();
            self.recv_into(&mut message, None)?;
            return Ok(super::fit(&mut message, dst));
        }
        let len = self.take_length(None)?;
        if len > dst.len() {
            // Too long for `dst`: the rest arrives as a pending message into a vector.
            self.pending = Some(Pending {
                total: len,
                remaining: len,
            });
            self.stash = Vec::new();
            let mut message = Vec::new();
            self.recv_into(&mut message, None)?;
            return Ok(Err(message));
        }
        let mut done = 0;
        while done < len {
            let available = self.wait_for_data(1, None)?;
            let n = available.min(len - done).min(self.ring.step);
            let to = &mut dst[done..done + n];
            // SAFETY: `n <= available` published bytes from `read` on, `n <= capacity`; the
            // destination is `n` bytes of the caller's slice, outside the mapping.
            unsafe { self.ring.copy_out(self.read, to.as_mut_ptr(), n) };
            self.read = self.read.wrapping_add(n as u64);
            done += n;
            if done < len {
                // Let the writer refill the ring while we copy the next piece.
                self.publish();
            }
        }
        self.publish();
        Ok(Ok(len))
    }

    /// Waits for the next message's length prefix and consumes it; the length is checked
    /// against the limit.
    fn take_length(&mut self, deadline: Option<Instant>) -> Result<usize, RecvError> {
        self.wait_for_data(LEN_BYTES, deadline)?;
        let mut prefix = [0u8; 8];
        // SAFETY: 8 bytes from `read` on are published and ours; `prefix` is a local array of
        // 8 bytes.
        unsafe {
            self.ring
                .copy_out(self.read, prefix.as_mut_ptr(), prefix.len())
        };
        let len = u64::from_le_bytes(prefix);
        let limit = self.max_message.min(isize::MAX as u64);
        if len > limit {
            return Err(RecvError::TooLarge { len, limit });
        }
        self.read = self.read.wrapping_add(LEN_BYTES);
        // `len <= isize::MAX`, so this does not truncate.
        Ok(len as usize)
    }

    /// A handle that declares the peer dead, for whoever watches the peer process.
    pub fn peer_death(&self) -> ShmPeerDeath {
        ShmPeerDeath {
            map: Arc::clone(&self.ring.map),
        }
    }

    /// Gives the bytes consumed so far back to the writer, and wakes it if it sleeps.
    fn publish(&mut self) {
        if self.read == self.published {
            return;
        }
        self.published = self.read;
        let header = self.ring.header();
        // Release: our copies out of the released bytes happen-before the writer's overwriting
        // them (its Acquire load of this position).
        header.reader.read_pos.store(self.read, Ordering::Release);
        wake_if_waiting(&header.writer.space_waiter);
    }

    /// Waits until at least `need` (`<= 8`) bytes are readable; returns how many are.
    fn wait_for_data(&mut self, need: u64, deadline: Option<Instant>) -> Result<usize, RecvError> {
        let available = self.write_seen.wrapping_sub(self.read);
        if available >= need {
            return Ok(available as usize);
        }
        // About to wait: the writer may be waiting for the space we freed.
        self.publish();
        let cap = self.ring.cap();
        let read = self.read;
        let header = self.ring.header();
        let result = block_on(
            &mut self.spinner,
            &header.reader.data_waiter,
            deadline,
            || RecvError::Timeout,
            || {
                // The state first, then the position (both Acquire): if the writer had closed,
                // or its death was declared, when we read the state, the position we read after
                // it is final, so "not enough data" then really means "never".
                let state = header.state.state.load(Ordering::Acquire);
                let write = header.writer.write_pos.load(Ordering::Acquire);
                let available = write.wrapping_sub(read);
                if available > cap {
                    return Err(RecvError::Corrupt("write position out of range"));
                }
                if available >= need {
                    return Ok(Some(write));
                }
                if state & (WRITER_CLOSED | PEER_DEAD) != 0 {
                    return Err(RecvError::Disconnected);
                }
                Ok(None)
            },
        );
        match result {
            Ok(write) => {
                self.write_seen = write;
                // `<= capacity`, checked above.
                Ok(write.wrapping_sub(read) as usize)
            }
            Err(err) => {
                match err {
                    RecvError::Disconnected => self.failed = Some(Failed::Disconnected),
                    RecvError::Corrupt(what) => self.failed = Some(Failed::Corrupt(what)),
                    _ => {}
                }
                Err(err)
            }
        }
    }

    fn close(&self) {
        let header = self.ring.header();
        header.state.state.fetch_or(READER_CLOSED, Ordering::SeqCst);
        wake_all(&header.writer.space_waiter);
    }
}

/// Makes room for `n` more bytes in `buf`, growing geometrically but never past `total` (the
/// announced length) nor past twice what has really arrived: a lying length header costs at
/// most what the peer actually sent.
fn reserve_bounded(buf: &mut Vec<u8>, n: usize, total: usize) {
    let needed = buf.len() + n;
    if needed > buf.capacity() {
        let target = needed.max(buf.capacity().saturating_mul(2).min(total));
        buf.reserve_exact(target - buf.len());
    }
}

impl ShmReceiver {
    /// Whether a message (or part of one) is waiting to be received, without waiting.
    pub fn has_data(&self) -> bool {
        if self.pending.is_some() || self.write_seen != self.read {
            return true;
        }
        let write = self.ring.header().writer.write_pos.load(Ordering::Acquire);
        write != self.read
    }

    /// Whether a whole message is in the ring, so that a receive would not wait at all (one
    /// larger than the ring never is; nor is one a deadline interrupted).
    pub fn has_message(&self) -> bool {
        if self.pending.is_some() || self.failed.is_some() {
            return false;
        }
        // Acquire: as in `wait_for_data`, the bytes below this position are written.
        let write = self.ring.header().writer.write_pos.load(Ordering::Acquire);
        let available = write.wrapping_sub(self.read);
        if available < LEN_BYTES || available > self.ring.cap() {
            return false;
        }
        let mut prefix = [0u8; 8];
        // SAFETY: 8 bytes from `read` on are published (`available >= 8`, and the writer
        // never has more than the ring's capacity ahead of us) and not yet released to the
        // writer; `prefix` is a local array of 8 bytes.
        unsafe {
            self.ring
                .copy_out(self.read, prefix.as_mut_ptr(), prefix.len())
        };
        available - LEN_BYTES >= u64::from_le_bytes(prefix)
    }

    /// See [`ShmSender::forget_copy`].
    pub(crate) fn forget_copy(mut self) {
        self.copy = true;
    }
}

impl Drop for ShmReceiver {
    fn drop(&mut self) {
        if !self.copy {
            self.close();
        }
    }
}

impl fmt::Debug for ShmReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmReceiver")
            .field("ring", &self.ring.index)
            .field("capacity", &self.ring.capacity)
            .field("read", &self.read)
            .field("max_message", &self.max_message)
            .field("pending", &self.pending)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Declares a channel's peer dead. Shared memory gives no notice of a peer's death, so the
/// supervisor that sees the peer process exit (through a pidfd) calls [`notify`]: blocked
/// and later operations then return `Disconnected`, after the receiver has drained the
/// complete messages already in its ring.
///
/// [`notify`]: ShmPeerDeath::notify
#[derive(Clone)]
pub struct ShmPeerDeath {
    map: Arc<Mapping>,
}

impl ShmPeerDeath {
    /// Marks the peer dead in shared memory, for both directions, and wakes every sleeper.
    /// Idempotent.
    pub fn notify(&self) {
        self.map.declare_dead();
    }
}

impl fmt::Debug for ShmPeerDeath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dead = self.map.ring(0).state.state.load(Ordering::Relaxed) & PEER_DEAD != 0;
        f.debug_struct("ShmPeerDeath")
            .field("notified", &dead)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::panic::AssertUnwindSafe;
    use std::thread;

    /// A generous deadline, so that a bug fails a test instead of hanging it.
    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(60))
    }

    fn split_pair(capacity: usize) -> ((ShmSender, ShmReceiver), (ShmSender, ShmReceiver)) {
        let (a, b) = ShmChannel::pair(capacity).unwrap();
        (a.split(), b.split())
    }

    /// Deterministic, cheap to check message content.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        let block: Vec<u8> = (0..251u32)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect();
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let n = (len - out.len()).min(block.len());
            out.extend_from_slice(&block[..n]);
        }
        out
    }

    fn send(tx: &mut ShmSender, msg: &[u8]) {
        tx.send_parts(&[msg], soon()).unwrap();
    }

    fn recv(rx: &mut ShmReceiver) -> Vec<u8> {
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon()).unwrap();
        buf
    }

    /// A second, independent mapping of a channel's memfd, as a hostile peer would have.
    struct View {
        base: NonNull<u8>,
        len: usize,
    }

    impl View {
        fn new(fd: &OwnedFd) -> View {
            let len = rustix::fs::fstat(fd).unwrap().st_size as usize;
            // SAFETY: a fresh shared mapping of the whole file; no existing memory is affected.
            let ptr = unsafe {
                rustix::mm::mmap(
                    ptr::null_mut(),
                    len,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::SHARED,
                    fd,
                    0,
                )
            }
            .unwrap();
            View {
                base: NonNull::new(ptr.cast()).unwrap(),
                len,
            }
        }

        fn ring(&self, index: usize) -> &RingHeader {
            // SAFETY: in bounds and aligned (same layout as `Mapping::ring`); atomics only.
            unsafe {
                self.base
                    .add(RING_HEADERS[index])
                    .cast::<RingHeader>()
                    .as_ref()
            }
        }

        fn global(&self) -> &GlobalHeader {
            // SAFETY: as `Mapping::global`.
            unsafe { self.base.cast::<GlobalHeader>().as_ref() }
        }

        /// Writes raw bytes at `offset`, as a scribbling peer.
        fn write(&self, offset: usize, bytes: &[u8]) {
            assert!(offset + bytes.len() <= self.len);
            // SAFETY: in bounds (asserted); raw copy into shared memory, no reference formed.
            unsafe {
                ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.base.as_ptr().add(offset),
                    bytes.len(),
                )
            };
        }
    }

    impl Drop for View {
        fn drop(&mut self) {
            // SAFETY: exactly what mmap returned; no references into it outlive `self`.
            unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) }.unwrap();
        }
    }

    #[test]
    fn halves_are_send_and_death_is_send_sync() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<ShmChannel>();
        send::<ShmSender>();
        send::<ShmReceiver>();
        send_sync::<ShmPeerDeath>();
        let (a, _b) = ShmChannel::pair(MIN_CAPACITY).unwrap();
        let text = format!("{a:?}");
        assert!(
            text.contains("ShmSender") && text.contains("ShmReceiver"),
            "{text}"
        );
        let (_tx, rx) = a.split();
        assert!(format!("{:?}", rx.peer_death()).contains("notified: false"));
    }

    #[test]
    fn bad_capacity_is_refused() {
        for capacity in [0, 1, 4095, 4097, 6000, MIN_CAPACITY / 2, MAX_CAPACITY * 2] {
            let err = ShmChannel::pair(capacity).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{capacity}");
            assert!(ShmChannel::create(capacity).is_err());
        }
    }

    #[test]
    fn many_messages_keep_order_and_boundaries() {
        let ((mut tx, _), (_, mut rx)) = split_pair(MIN_CAPACITY);
        const N: usize = 20_000;
        let writer = thread::spawn(move || {
            for i in 0..N {
                let len = (i * 7919) % 700;
                let mut msg = (i as u64).to_le_bytes().to_vec();
                msg.extend_from_slice(&pattern(len, i as u8));
                send(&mut tx, &msg);
            }
        });
        let mut buf = Vec::new();
        for i in 0..N {
            rx.recv_into(&mut buf, soon()).unwrap();
            let len = (i * 7919) % 700;
            assert_eq!(buf.len(), 8 + len, "message {i}");
            assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), i as u64);
            assert_eq!(&buf[8..], &pattern(len, i as u8)[..], "message {i}");
        }
        writer.join().unwrap();
    }

    #[test]
    fn empty_messages_are_messages() {
        let ((mut tx, _), (_, mut rx)) = split_pair(MIN_CAPACITY);
        // More empty frames than fit in the ring at once: needs the reader to drain.
        let writer = thread::spawn(move || {
            for _ in 0..3 * MIN_CAPACITY / 8 {
                tx.send_parts(&[], soon()).unwrap();
                tx.send_parts(&[b"", b""], soon()).unwrap();
            }
            send(&mut tx, b"end");
        });
        let mut buf = b"junk".to_vec();
        for _ in 0..3 * MIN_CAPACITY / 8 * 2 {
            rx.recv_into(&mut buf, soon()).unwrap();
            assert!(buf.is_empty());
        }
        assert_eq!(recv(&mut rx), b"end");
        writer.join().unwrap();
    }

    #[test]
    fn sizes_around_and_beyond_the_ring() {
        let cap = MIN_CAPACITY;
        let sizes = [
            0,
            1,
            7,
            8,
            9,
            cap - 9,
            cap - 8,
            cap - 7,
            cap,
            cap + 1,
            64 << 10,
            2 * cap + 3,
            10 * cap + 17,
        ];
        let ((mut tx, _), (_, mut rx)) = split_pair(cap);
        let writer = thread::spawn(move || {
            for (i, &len) in sizes.iter().enumerate() {
                let msg = pattern(len, i as u8);
                // As one part, and as three parts (one empty) of the same bytes.
                send(&mut tx, &msg);
                let (head, tail) = msg.split_at(len / 3);
                tx.send_parts(&[head, b"", tail], soon()).unwrap();
            }
        });
        let mut buf = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let expected = pattern(len, i as u8);
            for _ in 0..2 {
                rx.recv_into(&mut buf, soon()).unwrap();
                assert_eq!(buf.len(), len);
                assert!(buf == expected, "message of {len} bytes differs");
            }
        }
        writer.join().unwrap();
    }

    #[test]
    fn a_receive_buffer_is_reused() {
        let ((mut tx, _), (_, mut rx)) = split_pair(MIN_CAPACITY);
        let mut buf = Vec::with_capacity(100_000);
        let ptr = buf.as_ptr();
        let writer = thread::spawn(move || {
            send(&mut tx, &pattern(50_000, 1));
            send(&mut tx, b"short");
        });
        rx.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, pattern(50_000, 1));
        rx.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"short");
        assert_eq!(buf.as_ptr(), ptr, "the buffer was reallocated");
        writer.join().unwrap();
    }

    #[test]
    fn both_sides_sending_big_messages_do_not_deadlock() {
        let cap = 64 << 10;
        let ((mut tx_a, mut rx_a), (mut tx_b, mut rx_b)) = split_pair(cap);
        const N: usize = 6;
        let len = 17 * cap + 5;
        let threads = vec![
            thread::spawn(move || (0..N).for_each(|i| send(&mut tx_a, &pattern(len, i as u8)))),
            thread::spawn(move || {
                (0..N).for_each(|i| send(&mut tx_b, &pattern(len, 100 + i as u8)))
            }),
            thread::spawn(move || {
                (0..N).for_each(|i| assert!(recv(&mut rx_b) == pattern(len, i as u8)))
            }),
            thread::spawn(move || {
                (0..N).for_each(|i| assert!(recv(&mut rx_a) == pattern(len, 100 + i as u8)))
            }),
        ];
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn sleepers_on_both_sides_are_always_woken() {
        // Pauses longer than any spin make the reader sleep on an empty ring, then the writer
        // sleep on a full one, hundreds of times: a lost wake-up would hang (until the
        // generous deadline, which fails the test).
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        const N: usize = 300;
        let writer = thread::spawn(move || {
            for i in 0..N {
                if i % 2 == 0 {
                    thread::sleep(Duration::from_micros(200));
                }
                send(&mut tx, &pattern(1000 + i % 7, i as u8));
            }
        });
        let mut buf = Vec::new();
        for i in 0..N {
            if i % 3 == 0 {
                thread::sleep(Duration::from_micros(300));
            }
            rx.recv_into(&mut buf, soon()).unwrap();
            assert!(buf == pattern(1000 + i % 7, i as u8), "message {i}");
        }
        writer.join().unwrap();
    }

    #[test]
    fn dropped_sender_disconnects_after_draining() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        for msg in [&b"one"[..], b"", b"three"] {
            send(&mut tx, msg);
        }
        drop(tx);
        assert_eq!(recv(&mut rx), b"one");
        assert_eq!(recv(&mut rx), b"");
        assert_eq!(recv(&mut rx), b"three");
        let mut buf = Vec::new();
        for _ in 0..2 {
            assert!(matches!(
                rx.recv_into(&mut buf, None),
                Err(RecvError::Disconnected)
            ));
        }
    }

    #[test]
    fn dropped_sender_wakes_a_blocked_receiver() {
        let ((tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        let reader = thread::spawn(move || {
            let mut buf = Vec::new();
            rx.recv_into(&mut buf, soon())
        });
        thread::sleep(Duration::from_millis(50));
        drop(tx);
        assert!(matches!(
            reader.join().unwrap(),
            Err(RecvError::Disconnected)
        ));
    }

    #[test]
    fn a_message_larger_than_the_ring_is_never_whole_in_it() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        let big = pattern(2 * MIN_CAPACITY, 5);
        let sender = {
            let big = big.clone();
            thread::spawn(move || {
                send(&mut tx, &big);
                tx
            })
        };
        while !rx.has_data() {
            thread::yield_now();
        }
        assert!(!rx.has_message(), "only the start of it fits");
        assert_eq!(recv(&mut rx), big);
        let mut tx = sender.join().unwrap();
        send(&mut tx, b"small");
        assert!(rx.has_message());
        assert_eq!(recv(&mut rx), b"small");
        assert!(!rx.has_message());
    }

    #[test]
    fn try_send_writes_whole_messages_or_nothing() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        let first = pattern(MIN_CAPACITY / 2, 1);
        let second = pattern(MIN_CAPACITY / 2 - 16, 2);
        assert!(tx.try_send_parts(&[&first]).unwrap());
        // Its frame is 9 bytes more than the room left: refused, nothing written.
        let too_big = pattern(MIN_CAPACITY / 2 - 7, 3);
        assert!(
            !tx.try_send_parts(&[&too_big[..10], &too_big[10..]])
                .unwrap()
        );
        assert!(tx.try_send_parts(&[&second[..5], &second[5..]]).unwrap());
        // Larger than the ring: could only be streamed, so never tried.
        assert!(!tx.try_send_parts(&[&pattern(MIN_CAPACITY, 4)]).unwrap());
        assert_eq!(recv(&mut rx), first);
        // Room again once the reader moved on (the sender looks at its position anew).
        assert!(tx.try_send_parts(&[&too_big]).unwrap());
        assert_eq!(recv(&mut rx), second);
        assert_eq!(recv(&mut rx), too_big);
        drop(rx);
        assert!(matches!(
            tx.try_send_parts(&[b"x"]),
            Err(SendError::Disconnected)
        ));
    }

    #[test]
    fn dropped_receiver_disconnects_a_blocked_sender() {
        let ((mut tx, _rx_a), (_tx_b, rx)) = split_pair(MIN_CAPACITY);
        send(&mut tx, &pattern(MIN_CAPACITY - 8, 0)); // fills the ring exactly
        let writer = thread::spawn(move || {
            let first = tx.send_parts(&[b"more"], soon());
            let later = tx.send_parts(&[b""], soon());
            (first, later)
        });
        thread::sleep(Duration::from_millis(50));
        drop(rx);
        let (first, later) = writer.join().unwrap();
        assert!(matches!(first, Err(SendError::Disconnected)), "{first:?}");
        assert!(matches!(later, Err(SendError::Disconnected)), "{later:?}");
    }

    #[test]
    fn notify_wakes_a_blocked_receive_and_send() {
        let ((mut tx, mut rx), (_tx_b, _rx_b)) = split_pair(MIN_CAPACITY);
        let death = rx.peer_death();
        // Nobody reads ring 0 and nobody writes ring 1: both block, in the futex.
        send(&mut tx, &pattern(MIN_CAPACITY - 8 - 18, 3));
        let writer = thread::spawn(move || tx.send_parts(&[&pattern(3 * MIN_CAPACITY, 0)], soon()));
        let reader = thread::spawn(move || {
            let mut buf = Vec::new();
            rx.recv_into(&mut buf, soon())
        });
        thread::sleep(Duration::from_millis(100));
        death.notify();
        let sent = writer.join().unwrap();
        assert!(matches!(sent, Err(SendError::Disconnected)), "{sent:?}");
        let received = reader.join().unwrap();
        assert!(
            matches!(received, Err(RecvError::Disconnected)),
            "{received:?}"
        );
        assert!(format!("{death:?}").contains("notified: true"));
    }

    #[test]
    fn notify_wakes_a_receiver_blocked_on_an_empty_ring() {
        let ((_tx_a, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        let death = rx.peer_death();
        let reader = thread::spawn(move || {
            let mut buf = Vec::new();
            rx.recv_into(&mut buf, None)
        });
        thread::sleep(Duration::from_millis(100));
        death.notify();
        assert!(matches!(
            reader.join().unwrap(),
            Err(RecvError::Disconnected)
        ));
    }

    #[test]
    fn notify_lets_the_receiver_drain_first() {
        let ((mut tx, _rx_a), (mut tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        send(&mut tx, b"a");
        send(&mut tx, b"b");
        rx.peer_death().notify();
        assert_eq!(recv(&mut rx), b"a");
        assert_eq!(recv(&mut rx), b"b");
        let mut buf = Vec::new();
        assert!(matches!(
            rx.recv_into(&mut buf, None),
            Err(RecvError::Disconnected)
        ));
        assert!(matches!(
            tx.send_parts(&[b"x"], None),
            Err(SendError::Disconnected)
        ));
        assert!(matches!(
            tx_b.send_parts(&[b"x"], None),
            Err(SendError::Disconnected)
        ));
    }

    #[test]
    fn deadlines_give_timeout_and_leave_the_channel_usable() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        let mut buf = Vec::new();
        let short = || Some(Instant::now() + Duration::from_millis(30));
        assert!(matches!(
            rx.recv_into(&mut buf, short()),
            Err(RecvError::Timeout)
        ));
        assert!(matches!(
            rx.recv_into(&mut buf, Some(Instant::now())),
            Err(RecvError::Timeout)
        ));
        // A full ring: a message that fits in the ring times out cleanly.
        send(&mut tx, &pattern(MIN_CAPACITY - 8 - 20, 9));
        assert!(matches!(
            tx.send_parts(&[&[1; 100]], short()),
            Err(SendError::Timeout)
        ));
        assert!(matches!(
            tx.send_parts(&[&[1; 100]], Some(Instant::now())),
            Err(SendError::Timeout)
        ));
        send(&mut tx, b"fits"); // 12 bytes of frame: still room
        assert_eq!(recv(&mut rx), pattern(MIN_CAPACITY - 8 - 20, 9));
        tx.send_parts(&[&[1; 100]], short()).unwrap();
        assert_eq!(recv(&mut rx), b"fits");
        assert_eq!(recv(&mut rx), [1; 100]);
    }

    #[test]
    fn receive_deadline_mid_message_resumes() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        let msg = pattern(20 * MIN_CAPACITY + 3, 4);
        let expected = msg.clone();
        let writer = thread::spawn(move || {
            send(&mut tx, &msg);
            send(&mut tx, b"next");
        });
        let mut buf = Vec::new();
        let mut timeouts = 0;
        loop {
            match rx.recv_into(&mut buf, Some(Instant::now())) {
                Ok(()) => break,
                Err(RecvError::Timeout) => {
                    timeouts += 1;
                    thread::yield_now();
                }
                Err(err) => panic!("{err:?}"),
            }
        }
        assert!(buf == expected, "after {timeouts} timeouts");
        assert_eq!(recv(&mut rx), b"next");
        writer.join().unwrap();
    }

    #[test]
    fn send_deadline_mid_stream_breaks_the_channel() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        send(&mut tx, b"before");
        let result = tx.send_parts(
            &[&pattern(3 * MIN_CAPACITY, 0)],
            Some(Instant::now() + Duration::from_millis(30)),
        );
        assert!(matches!(result, Err(SendError::Timeout)), "{result:?}");
        assert!(matches!(
            tx.send_parts(&[b"after"], None),
            Err(SendError::Disconnected)
        ));
        assert_eq!(recv(&mut rx), b"before");
        let mut buf = Vec::new();
        assert!(matches!(
            rx.recv_into(&mut buf, soon()),
            Err(RecvError::Disconnected)
        ));
    }

    #[test]
    fn too_large_on_the_sending_side() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        tx.set_max_message(10);
        let err = tx.send_parts(&[b"12345", b"678901"], None).unwrap_err();
        assert!(
            matches!(err, SendError::TooLarge { len: 11, limit: 10 }),
            "{err:?}"
        );
        // Larger than the ring too: refused before anything is written.
        assert!(matches!(
            tx.send_parts(&[&[0; 3 * MIN_CAPACITY]], None),
            Err(SendError::TooLarge { .. })
        ));
        tx.send_parts(&[b"12345", b"67890"], None).unwrap();
        assert_eq!(recv(&mut rx), b"1234567890");
    }

    #[test]
    fn too_large_on_the_receiving_side() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(MIN_CAPACITY);
        rx.set_max_message(10);
        send(&mut tx, b"12345678901");
        send(&mut tx, b"ok");
        let mut buf = Vec::new();
        for _ in 0..2 {
            let err = rx.recv_into(&mut buf, None).unwrap_err();
            assert!(
                matches!(err, RecvError::TooLarge { len: 11, limit: 10 }),
                "{err:?}"
            );
            assert_eq!(buf.capacity(), 0);
        }
        rx.set_max_message(11);
        assert_eq!(recv(&mut rx), b"12345678901");
        assert_eq!(recv(&mut rx), b"ok");
    }

    #[test]
    fn a_lying_length_costs_only_what_arrived() {
        let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let (tx, _rx_a) = a.split();
        let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
        let view = View::new(&fd);
        // 8 GiB announced (under the 16 GiB limit), 100 bytes sent, then the writer leaves.
        view.write(DATA_OFFSET, &(8u64 << 30).to_le_bytes());
        view.write(DATA_OFFSET + 8, &[5; 100]);
        view.ring(0).writer.write_pos.store(108, Ordering::Release);
        drop(tx);
        let mut buf = Vec::new();
        assert!(matches!(
            rx.recv_into(&mut buf, soon()),
            Err(RecvError::Disconnected)
        ));
        assert!(
            buf.capacity() < 1 << 20,
            "allocated {} bytes",
            buf.capacity()
        );
        // And a length above the limit is refused outright.
        let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
        let view = View::new(&fd);
        view.write(DATA_OFFSET, &u64::MAX.to_le_bytes());
        view.ring(0).writer.write_pos.store(8, Ordering::Release);
        let err = rx.recv_into(&mut buf, soon()).unwrap_err();
        assert!(
            matches!(err, RecvError::TooLarge { len: u64::MAX, .. }),
            "{err:?}"
        );
        drop(a);
    }

    #[test]
    fn corrupt_positions_are_reported_not_trusted() {
        // The write position jumps more than a ring ahead of the reader.
        let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let (mut tx, _rx_a) = a.split();
        let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
        let view = View::new(&fd);
        send(&mut tx, b"fine");
        assert_eq!(recv(&mut rx), b"fine");
        view.ring(0)
            .writer
            .write_pos
            .store(12 + MIN_CAPACITY as u64 + 1, Ordering::Release);
        let mut buf = Vec::new();
        for _ in 0..2 {
            assert!(matches!(
                rx.recv_into(&mut buf, soon()),
                Err(RecvError::Corrupt(_))
            ));
        }

        // The write position goes behind the read position.
        let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let (mut tx, _rx_a) = a.split();
        let (_tx_b, mut rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
        let view = View::new(&fd);
        send(&mut tx, b"fine");
        assert_eq!(recv(&mut rx), b"fine");
        view.ring(0).writer.write_pos.store(3, Ordering::Release);
        assert!(matches!(
            rx.recv_into(&mut buf, soon()),
            Err(RecvError::Corrupt(_))
        ));

        // The read position, as the sender sees it, runs ahead of the write position.
        let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let (mut tx, _rx_a) = a.split();
        let (_tx_b, _rx) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
        let view = View::new(&fd);
        send(&mut tx, &pattern(MIN_CAPACITY - 8, 0));
        view.ring(0)
            .reader
            .read_pos
            .store(u64::MAX / 2, Ordering::Release);
        let err = tx.send_parts(&[b"x"], soon()).unwrap_err();
        assert!(
            matches!(&err, SendError::Io(io) if io.kind() == io::ErrorKind::InvalidData),
            "{err:?}"
        );
    }

    /// Part of the reliability suite: `cargo xtask chaos` runs it with many more rounds.
    #[test]
    #[allow(clippy::print_stderr)]
    fn chaos_scribbled_memory_never_panics() {
        let rounds = pool_testkit::scale(200, 20_000);
        // xorshift64*, deterministic.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        for round in 0..rounds as usize {
            let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
            let (mut tx_a, mut rx_a) = a.split();
            let (mut tx_b, mut rx_b) = ShmChannel::open(fd.try_clone().unwrap()).unwrap().split();
            let view = View::new(&fd);
            if round % 2 == 0 {
                // Shorter than the ring: nobody reads while it is sent.
                send(&mut tx_a, &pattern(round * 13 % 2048, 1));
            }
            // Scribble on the positions, flags and futex words of both rings, and on the data.
            for ring in 0..2 {
                let header = view.ring(ring);
                let small = next() % (3 * MIN_CAPACITY as u64);
                let value = match next() % 4 {
                    0 => next(),
                    1 => small,
                    2 => small.wrapping_neg(),
                    _ => u64::MAX - small,
                };
                match next() % 3 {
                    0 => header.writer.write_pos.store(value, Ordering::Relaxed),
                    1 => header.reader.read_pos.store(value, Ordering::Relaxed),
                    _ => {
                        header.writer.write_pos.store(value, Ordering::Relaxed);
                        header.reader.read_pos.store(next(), Ordering::Relaxed);
                    }
                }
                header
                    .state
                    .state
                    .store((next() % 8) as u32 & (next() % 8) as u32, Ordering::Relaxed);
                header
                    .reader
                    .data_waiter
                    .store(next() as u32 & 3, Ordering::Relaxed);
                header
                    .writer
                    .space_waiter
                    .store(next() as u32 & 3, Ordering::Relaxed);
            }
            for _ in 0..8 {
                let offset = DATA_OFFSET + (next() as usize % (2 * MIN_CAPACITY - 8));
                view.write(offset, &next().to_le_bytes());
            }
            let deadline = Some(Instant::now() + Duration::from_millis(2));
            let mut buf = Vec::new();
            for _ in 0..3 {
                let _ = rx_b.recv_into(&mut buf, deadline);
                let _ = rx_a.recv_into(&mut buf, deadline);
                let _ = tx_b.send_parts(&[&pattern(round * 31, 2)], deadline);
                let _ = tx_a.send_parts(&[&pattern(round * 17, 3)], deadline);
                assert!(
                    buf.capacity() <= 16 * MIN_CAPACITY,
                    "allocated {}",
                    buf.capacity()
                );
            }
        }
        pool_testkit::report(
            "hostile-shm",
            &[("inputs", rounds), ("panics", 0), ("hangs", 0)],
        );
    }

    #[test]
    fn open_validates_the_header() {
        let expect_invalid = |fd: OwnedFd, why: &str| {
            let err = ShmChannel::open(fd).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{why}: {err}");
        };
        // Scribble on a good channel's header, one field at a time.
        type Scribble = fn(&View);
        let cases: [(&str, Scribble); 5] = [
            ("magic", |v| {
                v.global().magic.store(0x1234, Ordering::Relaxed)
            }),
            ("version", |v| {
                v.global().version.store(VERSION + 1, Ordering::Relaxed)
            }),
            ("capacity not a power of two", |v| {
                v.global()
                    .capacity
                    .store(MIN_CAPACITY as u64 + 8, Ordering::Relaxed)
            }),
            ("capacity not the file's", |v| {
                v.global()
                    .capacity
                    .store(2 * MIN_CAPACITY as u64, Ordering::Relaxed)
            }),
            ("positions", |v| {
                v.ring(0)
                    .writer
                    .write_pos
                    .store(MIN_CAPACITY as u64 + 1, Ordering::Relaxed)
            }),
        ];
        for (why, scribble) in cases {
            let (_a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
            scribble(&View::new(&fd));
            expect_invalid(fd, why);
        }
        // Opened twice.
        let (_a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let _b = ShmChannel::open(fd.try_clone().unwrap()).unwrap();
        expect_invalid(fd, "second open");
        // A pair's mapping has both ends taken already; a plain, unsealed memfd of the right
        // size; an empty one; something that is not a memfd at all.
        let unsealed = rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, mapping_len(MIN_CAPACITY) as u64).unwrap();
        expect_invalid(unsealed, "unsealed");
        let empty =
            rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        expect_invalid(empty, "empty");
        let zeros =
            rustix::fs::memfd_create("x", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&zeros, mapping_len(MIN_CAPACITY) as u64).unwrap();
        rustix::fs::fcntl_add_seals(&zeros, SealFlags::SHRINK).unwrap();
        expect_invalid(zeros, "all zeros");
        let (read, _write) = rustix::pipe::pipe().unwrap();
        expect_invalid(read, "a pipe");
    }

    #[test]
    #[allow(clippy::print_stderr)]
    fn ping_pong_between_threads() {
        let ((mut tx_a, mut rx_a), (mut tx_b, mut rx_b)) = split_pair(DEFAULT_RING_CAPACITY);
        const N: u64 = 20_000;
        let echo = thread::spawn(move || {
            let mut buf = Vec::with_capacity(64);
            for _ in 0..N {
                rx_b.recv_into(&mut buf, soon()).unwrap();
                tx_b.send_parts(&[&buf], soon()).unwrap();
            }
        });
        let mut buf = Vec::with_capacity(64);
        let start = Instant::now();
        for i in 0..N {
            tx_a.send_parts(&[&i.to_le_bytes()], soon()).unwrap();
            rx_a.recv_into(&mut buf, soon()).unwrap();
            assert_eq!(buf, i.to_le_bytes());
        }
        let elapsed = start.elapsed();
        echo.join().unwrap();
        eprintln!(
            "shm round trip between threads: {:.2} µs",
            elapsed.as_secs_f64() * 1e6 / N as f64
        );
    }

    #[test]
    #[allow(clippy::print_stderr)]
    fn throughput_of_64_mib_messages() {
        let ((mut tx, _rx_a), (_tx_b, mut rx)) = split_pair(DEFAULT_RING_CAPACITY);
        const ROUNDS: usize = 8;
        let len = 64 << 20;
        let msg = Arc::new(pattern(len, 42));
        let sent = Arc::clone(&msg);
        let writer = thread::spawn(move || {
            for _ in 0..ROUNDS {
                tx.send_parts(&[&sent], soon()).unwrap();
            }
        });
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon()).unwrap(); // warms the buffer up
        assert!(buf == *msg);
        let start = Instant::now();
        for _ in 1..ROUNDS {
            rx.recv_into(&mut buf, soon()).unwrap();
        }
        let elapsed = start.elapsed();
        assert!(buf == *msg);
        writer.join().unwrap();
        let bytes = (ROUNDS - 1) * len;
        eprintln!(
            "shm throughput, 64 MiB messages into a reused buffer: {:.2} GiB/s",
            bytes as f64 / elapsed.as_secs_f64() / (1u64 << 30) as f64
        );
    }

    /// Forks; the child runs `child` and `_exit`s with its result (101 on panic). Returns the
    /// child's pid in the parent; `child` is dropped there unrun.
    fn fork_child(child: impl FnOnce() -> i32) -> libc::pid_t {
        spinning_pays(); // cache the CPU count before forking
        // SAFETY: the child only runs `child`, which touches its inherited memory, the
        // channel's mapping and system calls, and then `_exit`s without returning to the test
        // harness or running any destructor.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(AssertUnwindSafe(child)).unwrap_or(101);
            // SAFETY: ends the child at once, skipping destructors of inherited state (owned by
            // the parent), as after any fork.
            unsafe { libc::_exit(code) }
        }
        pid
    }

    /// Waits for the child and returns its exit code (or -signal).
    fn wait_child(pid: libc::pid_t) -> i32 {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(ret, pid, "waitpid: {}", io::Error::last_os_error());
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -libc::WTERMSIG(status)
        }
    }

    #[test]
    #[allow(clippy::print_stderr)]
    fn ping_pong_between_processes() {
        const N: u64 = 10_000;
        let (a, fd) = ShmChannel::create(DEFAULT_RING_CAPACITY).unwrap();
        let mut child_buf = Vec::with_capacity(64);
        let pid = fork_child(move || {
            let Ok(b) = ShmChannel::open(fd) else {
                return 2;
            };
            let (mut tx, mut rx) = b.split();
            for _ in 0..N {
                if rx.recv_into(&mut child_buf, soon()).is_err() {
                    return 3;
                }
                if tx.send_parts(&[&child_buf], soon()).is_err() {
                    return 4;
                }
            }
            // A graceful close: the parent sees `Disconnected` next.
            drop((tx, rx));
            0
        });
        let (mut tx, mut rx) = a.split();
        let mut buf = Vec::with_capacity(64);
        let start = Instant::now();
        for i in 0..N {
            tx.send_parts(&[&i.to_le_bytes()], soon()).unwrap();
            rx.recv_into(&mut buf, soon()).unwrap();
            assert_eq!(buf, i.to_le_bytes());
        }
        let elapsed = start.elapsed();
        assert!(matches!(
            rx.recv_into(&mut buf, soon()),
            Err(RecvError::Disconnected)
        ));
        assert_eq!(wait_child(pid), 0);
        eprintln!(
            "shm round trip between processes: {:.2} µs",
            elapsed.as_secs_f64() * 1e6 / N as f64
        );
    }

    #[test]
    fn a_dead_child_is_reported_through_notify() {
        let (a, fd) = ShmChannel::create(MIN_CAPACITY).unwrap();
        let pid = fork_child(move || {
            let Ok(b) = ShmChannel::open(fd) else {
                return 2;
            };
            let (mut tx, rx) = b.split();
            if tx.send_parts(&[b"hello"], soon()).is_err() {
                return 3;
            }
            thread::sleep(Duration::from_millis(100));
            // Dies without closing anything, as a crash would.
            mem::forget((tx, rx));
            0
        });
        let (mut tx, mut rx) = a.split();
        let death = rx.peer_death();
        let supervisor = thread::spawn(move || {
            let code = wait_child(pid);
            death.notify();
            code
        });
        // The child never reads: this blocks on a full ring until the death is declared.
        let writer = thread::spawn(move || tx.send_parts(&[&pattern(3 * MIN_CAPACITY, 0)], soon()));
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon()).unwrap();
        assert_eq!(buf, b"hello");
        let end = rx.recv_into(&mut buf, soon());
        assert!(matches!(end, Err(RecvError::Disconnected)), "{end:?}");
        let sent = writer.join().unwrap();
        assert!(matches!(sent, Err(SendError::Disconnected)), "{sent:?}");
        assert_eq!(supervisor.join().unwrap(), 0);
    }
}
