//! Functions that cross to a child by identity.
//!
//! Rust cannot send a closure to another process, but a child started from the same
//! executable has the same code at the same offsets from any reference point. So a function
//! travels as its offset from [`anchor`], a function of this crate, and the child adds the
//! offset to its own `anchor`. This is only sound when both run the very same build, which the
//! bootstrap checks (the executable's identity and a second offset between two known
//! functions) before anything is called.
//!
//! A function in a shared library loaded at another base (e.g. `dlopen`ed) would not be at the
//! same offset: [`FnId::new`] detects that and refuses it.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::sys;

/// The reference point for offsets. Never inlined, so it has one address.
#[inline(never)]
pub(crate) fn anchor() -> u32 {
    0x706f_6f6c
}

/// A second reference point, whose offset from `anchor` checks that parent and child share a
/// code layout.
#[inline(never)]
pub(crate) fn layout_probe() -> u32 {
    0x6c61_796f
}

/// The offset of `layout_probe` from `anchor` in this build.
pub(crate) fn layout() -> i64 {
    (layout_probe as fn() -> u32 as usize as i64)
        .wrapping_sub(anchor as fn() -> u32 as usize as i64)
}

/// A function identified by its place in the executable, which a child of the same build can
/// turn back into a callable pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FnId {
    offset: i64,
}

/// The function's code is not in the main executable (it lives in a shared library), so a
/// child could not find it at the same offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "function at {addr:#x} is not in the executable (a function in a shared library cannot be sent to a child)"
)]
pub struct NotInExecutable {
    /// The function's address.
    pub addr: usize,
}

/// The address range of the object this crate's code is in, looked up once.
static OURS: OnceLock<Option<(usize, usize)>> = OnceLock::new();

fn ours() -> Option<(usize, usize)> {
    *OURS.get_or_init(|| sys::object_range(anchor as fn() -> u32 as usize))
}

/// Looks up now what [`FnId::new`] would look up lazily, so that a child forked later never
/// finds that lookup in progress (its lock held by a thread that does not exist there).
pub(crate) fn warm_up() {
    let _ = ours();
}

impl FnId {
    /// Identifies the function at `addr` (a `fn` pointer cast to `usize`).
    pub fn new(addr: usize) -> Result<FnId, NotInExecutable> {
        let ours = ours();
        match ours {
            Some((lo, hi)) if (lo..hi).contains(&addr) => {}
            // Without loader information we cannot tell, and the bootstrap's layout check is
            // the remaining safeguard.
            None => {}
            Some(_) => return Err(NotInExecutable { addr }),
        }
        let base = anchor as fn() -> u32 as usize;
        Ok(FnId {
            offset: (addr as i64).wrapping_sub(base as i64),
        })
    }

    /// The function's address in this process.
    ///
    /// Only meaningful in a process of the same build as the one that made the id; the child
    /// bootstrap guarantees that before any id from the parent is used.
    pub fn addr(self) -> usize {
        (anchor as fn() -> u32 as usize as i64).wrapping_add(self.offset) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(x: u32) -> u32 {
        x + 1
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "reads the executable's program headers (dl_iterate_phdr), which Miri cannot call"
    )]
    fn an_id_resolves_to_the_same_function() {
        let id = FnId::new(sample as fn(u32) -> u32 as usize).unwrap();
        // SAFETY: the id was made from a `fn(u32) -> u32` in this very process.
        let f: fn(u32) -> u32 = unsafe { std::mem::transmute(id.addr()) };
        assert_eq!(f(41), 42);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "reads the executable's program headers (dl_iterate_phdr), which Miri cannot call"
    )]
    fn code_outside_the_executable_is_refused() {
        // `libc::getpid` lives in the C library, a shared object.
        let addr = libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize;
        assert_eq!(FnId::new(addr), Err(NotInExecutable { addr }));
    }
}
