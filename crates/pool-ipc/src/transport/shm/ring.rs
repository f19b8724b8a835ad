//! One ring of a mapping as one side sees it: its capacity, its header, and the copies in
//! and out of its data at a position, wrapping around the end (positions are `u64` counters
//! reduced with the capacity mask).

use std::sync::Arc;

use super::layout::RingHeader;
use super::mapping::Mapping;
use crate::shared::{copy_from_shared, copy_to_shared};

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
    #[cfg(not(loom))]
    pub(super) unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let offset = (pos as usize) & (self.capacity - 1);
        let first = src.len().min(self.capacity - offset);
        let data = self.map.data(self.index);
        // SAFETY: `offset + first <= capacity` and `src.len() - first <= capacity - first`
        // (as `src.len() <= capacity`), so both copies stay inside this ring's data; the
        // source is a live slice outside the mapping, so they do not overlap; a peer that
        // touches these bytes anyway (it should not, per the caller) does so atomically too.
        unsafe {
            copy_to_shared(src.as_ptr(), data.add(offset), first);
            if first < src.len() {
                copy_to_shared(src.as_ptr().add(first), data, src.len() - first);
            }
        }
    }

    /// Copies `len` bytes from the ring at position `pos` to `dst`, wrapping around.
    ///
    /// # Safety
    /// `len <= capacity`; `dst` is valid for `len` bytes of writes and outside the mapping;
    /// the bytes `[pos, pos + len)` were published by the writer and not yet released by us.
    #[cfg(not(loom))]
    pub(super) unsafe fn copy_out(&self, pos: u64, dst: *mut u8, len: usize) {
        let offset = (pos as usize) & (self.capacity - 1);
        let first = len.min(self.capacity - offset);
        let data = self.map.data(self.index);
        // SAFETY: in bounds as in `copy_in`; `dst` is valid and disjoint per the caller. A
        // well-behaved writer does not touch published bytes; a hostile one writing them
        // concurrently (its copies are atomic too) can only change the values we copy: plain
        // bytes, no invariant, and no data race.
        unsafe {
            copy_from_shared(data.add(offset), dst, first);
            if first < len {
                copy_from_shared(data, dst.add(first), len - first);
            }
        }
    }

    /// The model's `copy_in`: byte by byte into loom's cells, which report a write that
    /// races with a read of the reader.
    ///
    /// # Safety
    /// As the real one.
    #[cfg(loom)]
    pub(super) unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let cells = self.map.cells(self.index);
        for (i, &byte) in src.iter().enumerate() {
            let at = (pos as usize).wrapping_add(i) & (self.capacity - 1);
            // SAFETY: loom checks that no access of the reader races with this one.
            cells[at].with_mut(|cell| unsafe { *cell = byte });
        }
    }

    /// The model's `copy_out`: byte by byte out of loom's cells, which report a read that
    /// does not happen-after the write of the byte (or races with a later one).
    ///
    /// # Safety
    /// As the real one.
    #[cfg(loom)]
    pub(super) unsafe fn copy_out(&self, pos: u64, dst: *mut u8, len: usize) {
        let cells = self.map.cells(self.index);
        for i in 0..len {
            let at = (pos as usize).wrapping_add(i) & (self.capacity - 1);
            // SAFETY: `dst` is valid for `len` bytes (the caller's promise); loom checks the
            // cell's access.
            cells[at].with(|cell| unsafe { dst.add(i).write(*cell) });
        }
    }
}
