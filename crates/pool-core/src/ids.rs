//! Small `Copy` identifiers for the things the scheduler tracks.
//!
//! They are plain numbers handed out in increasing order, never reused within one
//! [`Scheduler`](crate::Scheduler), so a stale id from an old event can never name a new thing.

use core::fmt;

/// A job: one call such as `apply`, `map` or `imap`. Ids increase with submission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

/// A worker process. The first worker of a pool is `WorkerId(1)` and ids are never reused,
/// so its `Display` form (`PoolWorker-1`, `PoolWorker-2`, ...) numbers workers as Python does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u32);

/// A chunk: a run of consecutive items of one job, sent to a worker as one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId {
    /// The job the chunk belongs to.
    pub job: JobId,
    /// The chunk's position in the job's input, from 0.
    pub index: u32,
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolWorker-{}", self.0)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chunk {} of {}", self.index, self.job)
    }
}

/// A chunk together with the items it covers.
///
/// Items are numbered from 0 in input order across the whole job, so a driver that keeps
/// results in a vector can place a chunk's results at `first_item..first_item + items`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Which chunk.
    pub id: ChunkId,
    /// Index of the chunk's first item within the job.
    pub first_item: u64,
    /// Number of items in the chunk (at least 1).
    pub items: u32,
}

impl Chunk {
    /// The item indices the chunk covers.
    pub fn item_range(&self) -> core::ops::Range<u64> {
        self.first_item..self.first_item + u64::from(self.items)
    }
}
