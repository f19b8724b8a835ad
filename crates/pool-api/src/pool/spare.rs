//! Encode buffers of ended chunks, kept for the next chunks of the same pool.
//!
//! A chunk of large arguments (eight 1 MiB items, say) is encoded into a buffer of several
//! MiB. The allocator serves a request that size with `mmap` and gives it back with `munmap`,
//! so every such chunk faulted its pages in anew: about 2 µs a page on this machine, as long
//! as encoding into them, on the one thread that feeds every worker. A pool keeps a few of
//! these buffers between chunks instead. What it keeps is bounded, and small buffers (which
//! the allocator recycles well) are not kept at all.

use std::sync::{Arc, Mutex};

use super::job::Payload;

/// Below this, a buffer comes from the allocator and goes back to it.
const KEPT_FROM: usize = 256 << 10;
/// At most this many buffers are kept...
const KEPT_BUFFERS: usize = 8;
/// ...holding at most this much memory.
const KEPT_BYTES: usize = 64 << 20;

/// The buffers a pool keeps for encoding (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct SpareBuffers {
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl SpareBuffers {
    /// The most recently kept buffer, emptied, if any. Chunks of one job look alike, so it
    /// is most likely large enough already; encoding into it needs no measuring pass.
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let mut buffer = buffers.pop()?;
        buffer.clear();
        Some(buffer)
    }

    /// Keeps the buffer of an ended chunk's payload, if nothing else still holds it and it is
    /// worth keeping; otherwise drops it.
    pub(crate) fn give_back(&self, payload: Payload) {
        let Ok(buffer) = Arc::try_unwrap(payload.bytes) else {
            return;
        };
        if buffer.capacity() < KEPT_FROM {
            return;
        }
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = buffers.iter().map(Vec::capacity).sum();
        if buffers.len() < KEPT_BUFFERS && kept + buffer.capacity() <= KEPT_BYTES {
            buffers.push(buffer);
        }
    }

    /// How many buffers are kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.buffers.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(capacity: usize) -> Payload {
        Payload {
            bytes: Arc::new(Vec::with_capacity(capacity)),
            fds: Arc::default(),
        }
    }

    #[test]
    fn a_large_buffer_is_reused_and_a_small_one_is_not_kept() {
        let spare = SpareBuffers::default();
        assert!(spare.take().is_none());
        let first = Vec::with_capacity(1 << 20);
        let at = first.as_ptr();
        spare.give_back(Payload {
            bytes: Arc::new(first),
            fds: Arc::default(),
        });
        assert_eq!(spare.kept(), 1);
        let again = spare.take().unwrap();
        assert_eq!(again.as_ptr(), at, "the same buffer came back");
        assert!(again.is_empty());
        spare.give_back(payload(1024));
        assert_eq!(spare.kept(), 0, "small buffers go back to the allocator");
    }

    fn len(data: crate::Bytes) -> usize {
        data.len()
    }

    #[test]
    fn a_pool_keeps_the_buffers_of_its_ended_chunks() {
        let pool = crate::Pool::new(1).unwrap();
        let items: Vec<crate::Bytes> = (0..6).map(|_| crate::Bytes(vec![1; 512 << 10])).collect();
        let lengths = pool.map_chunked(len, items, 1).unwrap();
        assert_eq!(lengths, [512 << 10; 6]);
        assert!(pool.shared.spare().kept() >= 1, "no buffer came back");
    }

    #[test]
    fn a_buffer_still_shared_is_not_kept() {
        let spare = SpareBuffers::default();
        let shared = payload(1 << 20);
        let _in_flight = shared.clone();
        spare.give_back(shared);
        assert_eq!(spare.kept(), 0);
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let spare = SpareBuffers::default();
        for _ in 0..3 * KEPT_BUFFERS {
            spare.give_back(payload(KEPT_FROM));
        }
        assert_eq!(spare.kept(), KEPT_BUFFERS);
        let spare = SpareBuffers::default();
        for _ in 0..4 {
            spare.give_back(payload(KEPT_BYTES / 2));
        }
        assert_eq!(spare.kept(), 2, "at most KEPT_BYTES");
    }
}
