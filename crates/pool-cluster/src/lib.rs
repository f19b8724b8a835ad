//! Chunks of opaque bytes, run by worker processes on any number of hosts, through Redis
//! Streams.
//!
//! This is the transport of pool's cluster backend: it moves a chunk's bytes from a client to
//! a worker on some host and the chunk's outcome back, and it knows nothing of pools, tasks
//! or encodings (pool-api decides what the bytes are; pool-core's scheduler decides which
//! chunks to submit and when). It rides on an existing engine rather than on a protocol of
//! its own, because a Redis consumer group already is a task queue with what a pool needs:
//! per-entry acknowledgement, a pending list per consumer, takeover of a dead consumer's
//! entries (XAUTOCLAIM, with the idle time as a lease), and a delivery count per entry.
//!
//! - [`Broker`]: the client. Submits chunks `(job, index, call, payload)` within a window,
//!   reads their outcomes with exactly one per chunk, abandons jobs, keeps the pool's keys
//!   alive (they expire a TTL after the client dies).
//! - [`Consumer`]: one worker's membership of the consumer group. Claims a chunk, writes its
//!   outcome and acknowledges it in one MULTI/EXEC, renews leases, takes over expired ones,
//!   fails a dead worker's chunks, refuses chunks of another build.
//! - [`Host`] and [`serve`]: a host's supervisor. Runs N worker processes (pool-ipc's
//!   `spawn`: the same binary, re-executed) that claim, run a caller-given function, and
//!   complete; replaces a worker that dies and settles its chunks at once; renews its
//!   workers' leases.
//!
//! The layout of keys and entries, the states of a chunk and the invariants are in the
//! workspace's ARCHITECTURE.md ("pool-cluster").
//!
//! Everything read from Redis is untrusted: anyone who can write to the instance can write
//! entries, and a worker runs what a chunk names. Replies are parsed into typed errors
//! ([`EntryError`]), never a panic; but Redis itself must be private to the cluster.
//!
//! Every wait is bounded: connections have connect, read and write timeouts ([`Timeouts`]),
//! so a Redis that goes away is a typed error within a bounded time.

mod broker;
mod conn;
mod consumer;
mod host;
mod keys;
mod wire;

pub use broker::{
    Broker, BrokerError, BrokerOptions, BrokerStats, ConnectError, HostBeat, RecvError, Submission,
    SubmitError,
};
pub use conn::Timeouts;
pub use consumer::{ClaimError, Consumer, ConsumerError, ConsumerOptions, JoinError, LostReport};
pub use host::{Host, HostOptions, HostStats, RunFn, ServeError, Stopper, serve};
pub use keys::{Fingerprint, MAX_CONSUMER_LEN, MAX_NAME_LEN, NameError};
pub use wire::{Completion, Entry, EntryError, EntryId, Outcome, Pending};
