//! One ring of a mapping as one side sees it: its capacity, its header, and the copies in
//! and out of its data at a position, wrapping around the end (positions are `u64` counters
//! reduced with the capacity mask).

use std::ptr;
use std::sync::Arc;

use super::layout::RingHeader;
use super::mapping::Mapping;

/// One ring of a mapping, as seen by one side.
pub(super) struct Ring {
    pub(super) map: Arc<Mapping>,
    pub(super) index: usize,
    /// Bytes in the ring (a power of two).
    pub(super) capacity: usize,
    /// How much is copied between two publications of a position, so that the other side
    /// can work on one part while we copy the next.
    pub(super) step: usize,
}

impl Ring {
    pub(super) fn new(map: Arc<Mapping>, index: usize) -> Ring {
        let capacity = map.capacity;
        Ring {
            map,
            index,
            capacity,
            step: capacity / 4,
        }
    }

    pub(super) fn header(&self) -> &RingHeader {
        self.map.ring(self.index)
    }

    pub(super) fn cap(&self) -> u64 {
        self.capacity as u64
    }

    /// Copies `src` into the ring at position `pos`, wrapping around.
    ///
    /// # Safety
    /// `src.len() <= capacity`, and the bytes `[pos, pos + src.len())` of the ring are free:
    /// not between the published read position and the write position, so the reader does not
    /// look at them.
    pub(super) unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
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
    pub(super) unsafe fn copy_out(&self, pos: u64, dst: *mut u8, len: usize) {
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
