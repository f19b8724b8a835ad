//! What a channel's shared memory holds, and where: the global header, each ring's header of
//! three 128-byte lines, the data offsets, and the constants and state bits both processes
//! agree on (see "Layout" in the module documentation).
//!
//! Nothing here touches memory: `mapping.rs` maps a memfd with this layout and checks it.

use crate::loom::sync::atomic::{AtomicU32, AtomicU64};

/// The default size of each direction's ring, in bytes: 1 MiB. Larger messages are streamed
/// through it, so this bounds memory, not message size.
pub const DEFAULT_RING_CAPACITY: usize = 1 << 20;

/// The smallest ring accepted (one page).
pub(super) const MIN_CAPACITY: usize = 4096;
/// The largest ring accepted (1 GiB per direction).
pub(super) const MAX_CAPACITY: usize = 1 << 30;

/// Identifies a mapping made by this module.
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"POOLSHM\0");
/// The layout's version: bump on any change to it.
pub(super) const VERSION: u32 = 1;
/// Where the first ring's header starts.
pub(super) const RING_HEADERS: [usize; 2] = [128, 128 + size_of::<RingHeader>()];
/// Where the rings' data starts (page-aligned); ring `i` is at `DATA_OFFSET + i * capacity`.
pub(super) const DATA_OFFSET: usize = 4096;
/// The length prefix of a frame.
pub(super) const LEN_BYTES: u64 = 8;

/// State bit: the writer has closed its end of the ring (dropped, or gave up mid-message).
pub(super) const WRITER_CLOSED: u32 = 1 << 0;
/// State bit: the reader has closed its end of the ring.
pub(super) const READER_CLOSED: u32 = 1 << 1;
/// State bit: the peer was declared dead by its supervisor (set on both rings).
pub(super) const PEER_DEAD: u32 = 1 << 2;

/// The mapping's first bytes. Only atomics, so any bit pattern the peer leaves is a valid
/// value and concurrent modification is not undefined behaviour.
#[repr(C)]
pub(super) struct GlobalHeader {
    pub(super) magic: AtomicU64,
    pub(super) version: AtomicU32,
    /// Set once the second end has been opened, so that it is opened at most once.
    pub(super) opened: AtomicU32,
    /// Bytes per ring.
    pub(super) capacity: AtomicU64,
}

/// The line written by a ring's writer.
#[repr(C, align(128))]
pub(super) struct WriterLine {
    /// Bytes ever written (published) into the ring.
    pub(super) write_pos: AtomicU64,
    /// Nonzero while the writer sleeps (or is about to) waiting for space.
    pub(super) space_waiter: AtomicU32,
}

/// The line written by a ring's reader.
#[repr(C, align(128))]
pub(super) struct ReaderLine {
    /// Bytes ever consumed from the ring.
    pub(super) read_pos: AtomicU64,
    /// Nonzero while the reader sleeps (or is about to) waiting for data.
    pub(super) data_waiter: AtomicU32,
}

/// The rarely written flags of a ring.
#[repr(C, align(128))]
pub(super) struct StateLine {
    /// `WRITER_CLOSED | READER_CLOSED | PEER_DEAD`.
    pub(super) state: AtomicU32,
}

/// One ring's control block. 128-byte lines: the adjacent-line prefetcher of x86 pulls pairs
/// of 64-byte lines, so 64 would still let the two sides' lines interfere.
#[repr(C)]
pub(super) struct RingHeader {
    pub(super) writer: WriterLine,
    pub(super) reader: ReaderLine,
    pub(super) state: StateLine,
}

const _: () = assert!(size_of::<GlobalHeader>() <= RING_HEADERS[0]);
const _: () = assert!(RING_HEADERS[1] + size_of::<RingHeader>() <= DATA_OFFSET);
const _: () = assert!(RING_HEADERS[0] % align_of::<RingHeader>() == 0);
const _: () = assert!(RING_HEADERS[1] % align_of::<RingHeader>() == 0);
