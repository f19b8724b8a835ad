//! What keeps a forked child sane: per-process state, and descriptors in flight.
//!
//! A child forked from a multi-threaded process (the `fork` start method) is a copy of its
//! parent's memory with one thread. Two kinds of state would betray it:
//!
//! - **State bound to the parent's threads or locks.** The spawner, watcher and reaper threads
//!   do not exist in the child, and a lock another thread held at the fork stays locked
//!   forever. [`PerProcess`] holds such state keyed by pid, lock-free: the child's first use
//!   builds its own, never touching (nor freeing) the parent's copy.
//! - **Descriptors meant for other children.** Between creating a child's ends of its
//!   channels and closing the parent's copies, those descriptors sit in the parent; a child
//!   forked by another thread meanwhile would inherit them, and a dead child's channel would
//!   never reach end of file while that sibling lives. They are created, registered and
//!   closed under the lock of this registry ([`Private`]), which the forking thread holds
//!   across `fork`, so a forked child knows exactly which of its inherited descriptors to
//!   drop. The parent's ends of children's channels are registered too, for their whole life
//!   (unregistered just before they close), so that a child sees end of file when its parent
//!   drops its end even while a forked sibling lives.

use std::io;
use std::marker::PhantomData;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A lazily built value of which each process has its own (a forked child does not see its
/// parent's). Lock-free, so a fork can never find it locked.
pub(crate) struct PerProcess<T> {
    current: AtomicPtr<(u32, T)>,
    /// Shared like a `&T`: `Sync` only if `T` is.
    _shares: PhantomData<T>,
}

impl<T> PerProcess<T> {
    /// Empty: built on first use in each process.
    pub(crate) const fn new() -> PerProcess<T> {
        PerProcess {
            current: AtomicPtr::new(std::ptr::null_mut()),
            _shares: PhantomData,
        }
    }

    /// This process's value, built by `init` on its first use here. A value built by a parent
    /// process before a fork is left alone (leaked: its threads and locks are not ours).
    pub(crate) fn get_or_init(&'static self, init: impl FnOnce() -> T) -> &'static T {
        let pid = std::process::id();
        let seen = self.current.load(Ordering::Acquire);
        // SAFETY: a non-null pointer was published by `Box::into_raw` below and is never freed
        // once published (see the leak note), so it points to a live value.
        if let Some((owner, value)) = unsafe { seen.as_ref() } {
            if *owner == pid {
                return value;
            }
        }
        let mine = Box::into_raw(Box::new((pid, init())));
        match self
            .current
            .compare_exchange(seen, mine, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: just published; never freed.
            Ok(_) => unsafe { &(*mine).1 },
            Err(theirs) => {
                // Another thread of this process published first (only threads of this
                // process write here once it runs): use theirs.
                // SAFETY: `mine` was never published, so we still own it.
                drop(unsafe { Box::from_raw(mine) });
                // SAFETY: published by `Box::into_raw` and never freed, as above.
                unsafe { &(*theirs).1 }
            }
        }
    }
}

static REGISTRY: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());

/// Locks the registry of descriptors in flight to a child. The forking thread holds it across
/// `fork`, so no descriptor is being created or closed meanwhile.
pub(crate) fn lock_in_flight() -> MutexGuard<'static, Vec<RawFd>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A value made of descriptors meant for one child (its ends of its channels), registered as
/// in flight from its creation until it is released; see the module documentation.
pub(crate) struct Private<T> {
    value: Option<T>,
    fds: Vec<RawFd>,
}

impl<T> Private<T> {
    /// Runs `make` under the registry's lock and registers the descriptors `fds_of` lists in
    /// the private part; the public part is returned beside it.
    pub(crate) fn create<U>(
        make: impl FnOnce() -> io::Result<(T, U)>,
        fds_of: impl FnOnce(&T) -> Vec<RawFd>,
    ) -> io::Result<(Private<T>, U)> {
        let mut registry = lock_in_flight();
        let (value, public) = make()?;
        let fds = fds_of(&value);
        registry.extend(&fds);
        Ok((
            Private {
                value: Some(value),
                fds,
            },
            public,
        ))
    }

    /// The private part.
    pub(crate) fn get(&self) -> &T {
        self.value
            .as_ref()
            .expect("a Private holds its value until released")
    }

    /// Its registered descriptors.
    pub(crate) fn fds(&self) -> &[RawFd] {
        &self.fds
    }

    /// Disposes of the value with `dispose` (which closes its descriptors) under the
    /// registry's lock, and unregisters them: a number is never registered while it may name
    /// another file.
    pub(crate) fn release_with(mut self, dispose: impl FnOnce(T)) {
        let mut registry = lock_in_flight();
        if let Some(value) = self.value.take() {
            dispose(value);
        }
        for fd in &self.fds {
            if let Some(i) = registry.iter().position(|r| r == fd) {
                registry.swap_remove(i);
            }
        }
        self.fds.clear();
    }

    /// In the forked child that owns the value: takes it, without touching the registry
    /// (the child's copy of it was cleared at the fork).
    pub(crate) fn into_inner_in_child(mut self) -> T {
        let value = self.value.take().expect("a Private holds its value");
        // The registration list is not freed: nothing needs it, and the child exits soon.
        std::mem::forget(self);
        value
    }
}

impl<T> Drop for Private<T> {
    fn drop(&mut self) {
        if self.value.is_some() || !self.fds.is_empty() {
            let this = Private {
                value: self.value.take(),
                fds: std::mem::take(&mut self.fds),
            };
            this.release_with(drop);
        }
    }
}

impl<T> std::fmt::Debug for Private<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Private").field("fds", &self.fds).finish()
    }
}
