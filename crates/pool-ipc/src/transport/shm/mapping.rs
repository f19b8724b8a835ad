//! A channel's memfd, mapped in this process: created and initialised by the first end,
//! opened and validated by the second (see "Trust" in the module documentation), unmapped
//! when its last user is dropped; and [`ShmPeerDeath`], which marks the peer dead in it.
//!
//! Under `--cfg loom` the mapping is the model's instead (`model`): the same headers, of
//! loom's atomics, in ordinary memory, and the ring data as loom cells, so that a model sees
//! every ordering the real channel relies on (a byte read without happens-before from its
//! write is a loom data race).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::layout::{
    DATA_OFFSET, GlobalHeader, MAGIC, MAX_CAPACITY, MIN_CAPACITY, PEER_DEAD, RING_HEADERS,
    RingHeader, VERSION,
};
use super::wait::wake_all;
use crate::sys;

#[cfg(loom)]
pub(super) use model::{Mapping, create_mapping};

/// A `MAP_SHARED` mapping of a channel's memfd, unmapped on drop. Shared (through an `Arc`)
/// by the two halves of an end and its [`ShmPeerDeath`] handles.
#[cfg(not(loom))]
pub(super) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// Bytes per ring, validated; 0 until then.
    pub(super) capacity: usize,
}

// SAFETY: the mapping is plain memory that lives until drop. Everything reached through it
// is either atomics (the headers) or ring data whose accesses the ring protocol confines to
// one side at a time, through raw pointers only; so it may be used and dropped on any thread.
#[cfg(not(loom))]
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out `&` to atomics and raw data pointers.
#[cfg(not(loom))]
unsafe impl Sync for Mapping {}

#[cfg(not(loom))]
impl Mapping {
    /// Maps `len` bytes of `fd`, read-write and shared.
    fn map(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        let base = sys::map_shared(fd.as_fd(), len)?;
        Ok(Mapping {
            base,
            len,
            capacity: 0,
        })
    }

    pub(super) fn global(&self) -> &GlobalHeader {
        // SAFETY: every mapping is at least DATA_OFFSET bytes (checked before mapping) and
        // page-aligned, so the header is in bounds and aligned; it is made of atomics only, so
        // any content is valid and the peer may write it concurrently; the borrow cannot
        // outlive `self`, which keeps the memory mapped.
        unsafe { self.base.cast::<GlobalHeader>().as_ref() }
    }

    pub(super) fn ring(&self, index: usize) -> &RingHeader {
        let offset = RING_HEADERS[index & 1];
        // SAFETY: `offset + size_of::<RingHeader>() <= DATA_OFFSET <= len` (const-asserted and
        // checked at mapping time), the offset is a multiple of the header's alignment and the
        // base is page-aligned; atomics only, and the borrow is tied to `self` as above.
        unsafe { self.base.add(offset).cast::<RingHeader>().as_ref() }
    }

    /// The first data byte of ring `index`. Only meaningful once `capacity` is validated.
    pub(super) fn data(&self, index: usize) -> *mut u8 {
        debug_assert!(self.capacity > 0);
        // SAFETY: `len == DATA_OFFSET + 2 * capacity` (validated before `capacity` is set), so
        // the offset stays inside the mapping.
        unsafe {
            self.base
                .as_ptr()
                .add(DATA_OFFSET + (index & 1) * self.capacity)
        }
    }
}

impl Mapping {
    /// Marks the peer dead on both rings and wakes every sleeper.
    pub(super) fn declare_dead(&self) {
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

#[cfg(not(loom))]
impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned, and this is the last owner
        // (the `Arc` is gone), so no reference into the mapping remains.
        let _ = unsafe { sys::unmap(self.base, self.len) };
    }
}

/// The size of the mapping for a given ring capacity.
#[cfg(not(loom))]
pub(super) fn mapping_len(capacity: usize) -> usize {
    DATA_OFFSET + 2 * capacity
}

#[cfg(not(loom))]
fn valid_capacity(capacity: usize) -> bool {
    capacity.is_power_of_two() && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
}

/// A new, initialised, sealed memfd mapping.
#[cfg(not(loom))]
pub(super) fn create_mapping(capacity: usize) -> io::Result<(Mapping, OwnedFd)> {
    if !valid_capacity(capacity) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "ring capacity must be a power of two between {MIN_CAPACITY} and {MAX_CAPACITY}, not {capacity}"
            ),
        ));
    }
    let len = mapping_len(capacity);
    // Sealed, so that no holder of the fd (the child) can shrink the file under our mapping.
    let fd = sys::sealed_memfd("pool-shm", len)?;
    let mut map = Mapping::map(&fd, len)?;
    map.capacity = capacity;
    let global = map.global();
    global.capacity.store(capacity as u64, Ordering::Relaxed);
    global.version.store(VERSION, Ordering::Relaxed);
    global.magic.store(MAGIC, Ordering::Release);
    Ok((map, fd))
}

#[cfg(not(loom))]
impl Mapping {
    /// Maps a channel's memfd made by another process, trusting nothing in it: the file must
    /// be a memfd sealed against shrinking, and its header must carry the right magic and
    /// version and a power-of-two capacity that matches the file's size.
    pub(super) fn open_checked(fd: &OwnedFd) -> io::Result<Mapping> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a usable shared-memory channel: {what}"),
            )
        };
        let size =
            usize::try_from(sys::file_size(fd.as_fd())?).map_err(|_| bad("negative size"))?;
        if size < mapping_len(MIN_CAPACITY) || size > mapping_len(MAX_CAPACITY) {
            return Err(bad("size out of range"));
        }
        if !sys::sealed_against_shrinking(fd.as_fd()).map_err(|_| bad("not a memfd"))? {
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

/// Declares a channel's peer dead. Shared memory gives no notice of a peer's death, so the
/// supervisor that sees the peer process exit (through a pidfd) calls [`notify`]: blocked
/// and later operations then return `Disconnected`, after the receiver has drained the
/// complete messages already in its ring.
///
/// [`notify`]: ShmPeerDeath::notify
#[derive(Clone)]
pub struct ShmPeerDeath {
    pub(super) map: Arc<Mapping>,
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

/// The model's mapping: the headers and the data in ordinary memory, of loom's types.
#[cfg(loom)]
mod model {
    use std::io;
    use std::os::fd::OwnedFd;

    use loom::cell::UnsafeCell;

    use super::super::layout::{GlobalHeader, ReaderLine, RingHeader, StateLine, WriterLine};
    use crate::loom::sync::atomic::{AtomicU32, AtomicU64};

    /// A channel's shared memory in a model: both rings' headers and data.
    pub(in super::super) struct Mapping {
        global: GlobalHeader,
        rings: [RingHeader; 2],
        /// Each ring's bytes, one loom cell each: loom checks that every read of a byte
        /// happens-after its last write, and no two accesses race.
        data: [Box<[UnsafeCell<u8>]>; 2],
        pub(in super::super) capacity: usize,
    }

    // SAFETY: the headers are atomics; the data cells are accessed as the ring protocol
    // allows (one side at a time), which is what the models check: loom reports any access
    // to a cell that races with another.
    unsafe impl Send for Mapping {}
    // SAFETY: as above.
    unsafe impl Sync for Mapping {}

    fn ring_header() -> RingHeader {
        RingHeader {
            writer: WriterLine {
                write_pos: AtomicU64::new(0),
                space_waiter: AtomicU32::new(0),
            },
            reader: ReaderLine {
                read_pos: AtomicU64::new(0),
                data_waiter: AtomicU32::new(0),
            },
            state: StateLine {
                state: AtomicU32::new(0),
            },
        }
    }

    impl Mapping {
        /// A fresh channel's memory with rings of `capacity` bytes (a power of two; no
        /// lower bound, so that a model's ring fills and wraps in a few messages).
        pub(in super::super) fn model(capacity: usize) -> Mapping {
            assert!(capacity.is_power_of_two());
            let data = || (0..capacity).map(|_| UnsafeCell::new(0)).collect();
            Mapping {
                global: GlobalHeader {
                    magic: AtomicU64::new(0),
                    version: AtomicU32::new(0),
                    opened: AtomicU32::new(1),
                    capacity: AtomicU64::new(capacity as u64),
                },
                rings: [ring_header(), ring_header()],
                data: [data(), data()],
                capacity,
            }
        }

        pub(in super::super) fn global(&self) -> &GlobalHeader {
            &self.global
        }

        pub(in super::super) fn ring(&self, index: usize) -> &RingHeader {
            &self.rings[index & 1]
        }

        /// Ring `index`'s bytes.
        pub(in super::super) fn cells(&self, index: usize) -> &[UnsafeCell<u8>] {
            &self.data[index & 1]
        }

        /// Models have no memfd to open.
        pub(in super::super) fn open_checked(_fd: &OwnedFd) -> io::Result<Mapping> {
            Err(io::ErrorKind::Unsupported.into())
        }
    }

    /// Models have no memfd: they build the mapping with [`Mapping::model`].
    pub(in super::super) fn create_mapping(_capacity: usize) -> io::Result<(Mapping, OwnedFd)> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
