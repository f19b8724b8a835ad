//! A `map`'s plain results written straight into the vector it returns, by the reader threads
//! that receive them ([`Placement`]).
//!
//! The thread that calls `map` feeds every worker. When it also copied every chunk's results
//! into the vector it returns, it did most of the parent's work alone: at 100 M `u64`s that
//! vector is 800 MB of fresh memory, and faulting it in, on that one thread, was a quarter of
//! the whole run while the other core sat idle. The reader threads (one per worker) receive
//! the results anyway; for a sized `map` of plain values (see [`crate::bulk`]) each writes its
//! chunks' values at their place in the vector, in parallel, and the caller only counts them
//! in as they are delivered.
//!
//! What keeps it sound, though several threads write into one vector:
//! - **A place is known from the chunk alone.** Only sized maps take it: their chunks all have
//!   the job's chunk size but the last, so chunk `i`'s values start at item `i × chunksize`,
//!   and a chunk of another count of values is not placed (its normal decoding fails it).
//! - **Every place is written once.** Whoever writes a chunk's values claims the chunk first
//!   (an atomic bit each): a reader placing them, or the caller decoding results that were not
//!   placed. A second report of the same chunk (a worker that lies, or a stale report) finds it
//!   claimed and writes nothing.
//! - **The vector outlives every write.** A reader writes under the read side of a lock; the
//!   caller revokes the placement under the write side, which waits for the writes under way,
//!   before the vector can move (grow past what was reserved), be dropped or be returned.
//! - **Values count only once delivered.** The caller sets the vector's length over a chunk's
//!   place when the chunk's placed result reaches it, in order; a reader's writes happen before
//!   that, since the result reaches the caller through the driver's lock after them. A placed
//!   chunk whose report the scheduler refuses is never counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::Error;
use crate::bulk::{self, PlainOf};
use crate::error::CodecError;

/// Below this many bytes of values a chunk is copied by the caller: a reader's lock and claim
/// would cost more than they save.
pub(crate) const PLACED_FROM: u64 = 4096;

/// A chunk's values, written at their place: `items` of them from item `start` on, all of
/// them successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) start: u64,
    pub(crate) items: u32,
}

/// A vector's results written in place by the threads that receive them (see the module
/// documentation), without its type: what the driver and the caller's loop need.
pub(crate) trait PlaceAhead: Send + Sync {
    /// Writes chunk `index`'s values (`body`: the worker's encoded results) at their place.
    /// `Some` if the chunk is settled here: placed, or, for values that are not valid, an
    /// error for each of its items. `None` leaves the body to the usual decoding.
    fn place(&self, index: u32, body: &[u8]) -> Option<Result<Placed, Error>>;

    /// Claims chunk `index`'s place for its one writer; `false` if it was claimed already (or
    /// there is no such chunk). The caller claims a chunk it is about to decode.
    fn claim(&self, index: u32) -> bool;

    /// Gives chunk `index`'s claim back: a reader placed it, but its report was never handled
    /// (the worker broke the protocol before it), so nothing counts those values, and the
    /// chunk's retry must be able to place them again.
    fn release(&self, index: u32);
}

/// The vector's first value's address, valid while the placement is not revoked.
struct Dest<R>(*mut R);

impl<R> Clone for Dest<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Dest<R> {}

// SAFETY: the pointer is written through only by a thread that claimed the chunk it writes,
// under the placement's read lock, while the vector is alive and does not move (see
// `Placement`); `R: Send` values may be written from any thread.
unsafe impl<R: Send> Send for Dest<R> {}
// SAFETY: as for `Send`: shared access only copies the pointer.
unsafe impl<R: Send> Sync for Dest<R> {}

/// The place of a sized `map`'s results: the vector's spare room for `items` values of `R`.
pub(crate) struct Placement<R> {
    plain: PlainOf<R>,
    dest: RwLock<Option<Dest<R>>>,
    chunksize: u64,
    items: u64,
    /// Bit `i`: chunk `i` was written (or is being written).
    claimed: Box<[AtomicU64]>,
}

impl<R> std::fmt::Debug for Placement<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("chunksize", &self.chunksize)
            .field("items", &self.items)
            .finish_non_exhaustive()
    }
}

impl<R> Placement<R> {
    /// A placement in `values`, which is empty and has room for `items` values, for chunks of
    /// `chunksize` items; `None` if `R` has no bulk layout, or its chunks are too small to be
    /// worth placing.
    pub(crate) fn new(values: &mut Vec<R>, chunksize: u64, items: u64) -> Option<Arc<Self>> {
        let plain = PlainOf::<R>::get()?;
        let bytes = chunksize.saturating_mul(std::mem::size_of::<R>() as u64);
        if !values.is_empty()
            || chunksize == 0
            || bytes < PLACED_FROM
            || (values.capacity() as u64) < items
        {
            return None;
        }
        let chunks = items.div_ceil(chunksize);
        Some(Arc::new(Placement {
            plain,
            dest: RwLock::new(Some(Dest(values.as_mut_ptr()))),
            chunksize,
            items,
            claimed: (0..chunks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }))
    }

    /// No value is written in place after this returns (those under way are finished): the
    /// vector may move or go.
    pub(crate) fn revoke(&self) {
        *self.dest.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl<R: Send + 'static> PlaceAhead for Placement<R> {
    fn place(&self, index: u32, body: &[u8]) -> Option<Result<Placed, Error>> {
        let (&bulk::BULK, body) = body.split_first()? else {
            return None;
        };
        let results = bulk::take_results(self.plain, body).ok()?;
        let start = u64::from(index).checked_mul(self.chunksize)?;
        let expected = self.items.checked_sub(start)?.min(self.chunksize);
        if !results.panics.is_empty() || expected == 0 || results.count != expected {
            return None;
        }
        let dest = self.dest.read().unwrap_or_else(PoisonError::into_inner);
        let base = (*dest)?;
        if !self.claim(index) {
            return None;
        }
        // SAFETY: the vector has room for `items` values from `base` and stays where it is
        // while `dest` is read-locked and not revoked; `start + expected <= items` (above);
        // this thread claimed the chunk, so no other writes these values, and the caller
        // reads them only once the chunk is delivered, after this write.
        let written = unsafe {
            self.plain
                .write_at(results.values, base.0.add(start as usize))
        };
        Some(match written {
            Ok(()) => Ok(Placed {
                start,
                items: expected as u32,
            }),
            Err(e) => Err(Error::Codec(CodecError::caused_by(
                "decoding a chunk's results",
                e,
            ))),
        })
    }

    fn claim(&self, index: u32) -> bool {
        if u64::from(index) >= self.items.div_ceil(self.chunksize) {
            return false;
        }
        let Some(word) = self.claimed.get(index as usize / 64) else {
            return false;
        };
        let bit = 1u64 << (index % 64);
        word.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    fn release(&self, index: u32) {
        if let Some(word) = self.claimed.get(index as usize / 64) {
            word.fetch_and(!(1u64 << (index % 64)), Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk_results(values: &[u64]) -> Vec<u8> {
        bulk_results_of(values)
    }

    #[test]
    fn placed_values_land_at_their_chunks_place_once() {
        let mut values: Vec<u64> = Vec::with_capacity(1200);
        let place = Placement::new(&mut values, 512, 1200).unwrap();
        let last: Vec<u64> = (1024..1200).collect();
        let first: Vec<u64> = (0..512).collect();
        let placed = |start, items| Placed { start, items };
        let got = place.place(2, &bulk_results(&last)).unwrap().unwrap();
        assert_eq!(got, placed(1024, 176));
        let got = place.place(0, &bulk_results(&first)).unwrap().unwrap();
        assert_eq!(got, placed(0, 512));
        // A second report of a chunk writes nothing, and the caller cannot claim it either.
        assert!(place.place(0, &bulk_results(&first)).is_none());
        assert!(!place.claim(0));
        // A chunk not placed is claimed by the caller, and no reader writes it afterwards.
        let middle: Vec<u64> = (512..1024).collect();
        assert!(place.claim(1));
        assert!(place.place(1, &bulk_results(&middle)).is_none());
        place.revoke();
        // SAFETY: chunks 0 and 2 were written above; the test reads only those.
        unsafe {
            let base = values.as_ptr();
            assert_eq!(*base.add(511), 511);
            assert_eq!(*base.add(1199), 1199);
        }
    }

    #[test]
    fn chunks_of_another_count_or_with_panics_or_after_revoking_are_not_placed() {
        let mut values: Vec<u64> = Vec::with_capacity(1024);
        let place = Placement::new(&mut values, 512, 1024).unwrap();
        let short: Vec<u64> = (0..100).collect();
        assert!(place.place(0, &bulk_results(&short)).is_none());
        // Beyond the last chunk, and not bulk at all.
        assert!(place.place(2, &bulk_results(&short)).is_none());
        assert!(place.place(u32::MAX, &bulk_results(&short)).is_none());
        assert!(place.place(0, &[bulk::SERDE, 0]).is_none());
        assert!(place.place(0, &[]).is_none());
        place.revoke();
        let full: Vec<u64> = (0..512).collect();
        assert!(place.place(0, &bulk_results(&full)).is_none());
        // Not claimed by the refusals: the caller decodes it.
        assert!(place.claim(0));
        assert!(!place.claim(2), "there is no chunk 2");
        // A claim given back (its report never handled) can be taken again, once.
        place.release(0);
        assert!(place.claim(0));
        assert!(!place.claim(0));
    }

    #[test]
    fn invalid_values_fail_the_chunk() {
        let mut values: Vec<bool> = Vec::with_capacity(8192);
        let place = Placement::new(&mut values, 4096, 8192).unwrap();
        let mut body = bulk_results_of::<bool>(&[true; 4096]);
        let last = body.len() - 1;
        body[last] = 7;
        assert!(matches!(place.place(1, &body), Some(Err(Error::Codec(_)))));
    }

    #[test]
    fn small_chunks_and_types_without_a_bulk_layout_are_left_to_the_caller() {
        let mut values: Vec<u64> = Vec::with_capacity(100);
        assert!(Placement::new(&mut values, 10, 100).is_none());
        let mut strings: Vec<String> = Vec::with_capacity(100_000);
        assert!(Placement::new(&mut strings, 10_000, 100_000).is_none());
        let mut short: Vec<u64> = Vec::with_capacity(10);
        assert!(Placement::new(&mut short, 1024, 100_000).is_none());
    }

    /// A worker's results for `values`, as it encodes them.
    fn bulk_results_of<T: Copy>(values: &[T]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer =
            bulk::ResultWriter::new(PlainOf::<T>::get().unwrap(), values.len() as u64, &mut out);
        for &value in values {
            writer.push(value, &mut out);
        }
        writer.finish(&mut out);
        out
    }
}
