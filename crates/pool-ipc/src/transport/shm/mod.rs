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
//! are copied in and out with single-copy-atomic accesses only (`shared::copy_from_shared`
//! and `copy_to_shared`), so bytes the peer scribbles on while we copy them only change the
//! values we read: no data race, no undefined behaviour.
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
//!
//! # Code map
//!
//! `layout.rs` is what the shared memory holds, `mapping.rs` maps it (and checks what the peer
//! made), `ring.rs` copies in and out of one ring, `wait.rs` is the spin-then-futex wait,
//! `sender.rs` and `receiver.rs` are the two halves of an end; this file puts an end together.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

mod layout;
#[cfg(all(test, loom))]
mod loom_tests;
mod mapping;
mod receiver;
mod ring;
mod sender;
#[cfg(all(test, not(loom)))]
mod tests;
mod wait;

pub use layout::DEFAULT_RING_CAPACITY;
pub use mapping::ShmPeerDeath;
pub use receiver::ShmReceiver;
pub use sender::ShmSender;

use mapping::{Mapping, create_mapping};
use ring::Ring;

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
        #[cfg(not(loom))]
        let (map, _fd) = create_mapping(capacity)?;
        #[cfg(loom)]
        let map = Mapping::model(capacity);
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
            sender: ShmSender::new(Ring::new(Arc::clone(&map), tx), write, read_seen),
            receiver: ShmReceiver::new(Ring::new(map, rx), read, write_seen),
        })
    }

    /// Splits this end into its sending and receiving halves, which may be used from
    /// different threads.
    pub fn split(self) -> (ShmSender, ShmReceiver) {
        (self.sender, self.receiver)
    }
}
