//! What the shared-memory protocols are made of, behind one facade (tokio's `src/loom`
//! pattern): the atomics, `fence`, the futex wait/wake pair and the spin hints. In a normal
//! build they are std's and the real futex (`std.rs`); under `--cfg loom` (`cargo xtask
//! loom`) they are loom's and a modelled futex (`mocked.rs`), so that the loom models explore
//! every interleaving of the very code that runs in production.
//!
//! Code with such a protocol imports from here (`crate::loom::sync::atomic`, `crate::loom::sys`
//! for the futex) instead of `std::sync::atomic` and `crate::sys`; nothing else changes.
//!
//! Under `--cfg loom` the module is public (hidden), so that pool-api's protocols share its
//! atomics and futex (one `AtomicU32` type for both crates) and its models can use them.

#[cfg(not(loom))]
mod std;
#[cfg(not(loom))]
pub(crate) use self::std::*;

#[cfg(loom)]
mod mocked;
#[cfg(loom)]
pub use self::mocked::*;
