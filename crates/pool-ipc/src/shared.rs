//! Shared memory and futexes: the OS half of cross-process locks, events and queues.
//!
//! A [`SharedRegion`] is an anonymous memfd mapped shared: nothing appears in `/dev/shm`, and
//! the memory is gone when the last process holding it closes it, crash or not. Its
//! descriptor travels to children like any handle's. [`futex_wait`] and [`futex_wake`] are
//! the shared (not process-private) futex, so waiters in different processes meet on the same
//! word. [`ProcessIdentity`] names a process by pid *and* start time, so that the owner of a
//! lock who died is never confused with a new process that got its pid.
//! [`copy_from_shared`] and [`copy_to_shared`] move bytes out of and into memory another
//! process may be writing at the same time, without a data race.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use crate::sys;

mod copy;
pub use copy::{copy_from_shared, copy_to_shared};

/// A region of memory shared between processes (an anonymous memfd, mapped shared).
#[derive(Debug)]
pub struct SharedRegion {
    base: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the region is plain memory; all access to its contents goes through atomics or
// through code that synchronizes with them (the users' documented contract), and the mapping
// itself is owned by this value alone.
unsafe impl Send for SharedRegion {}
// SAFETY: as above: `&SharedRegion` only hands out raw pointers, never references.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// A new zero-filled region of `len` bytes (at least 1). Its size is sealed, so a process
    /// it is passed to cannot shrink it under another's feet.
    pub fn create(name: &str, len: usize) -> io::Result<SharedRegion> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared region needs at least 1 byte",
            ));
        }
        let fd = sys::sealed_memfd(name, len)?;
        Self::map(fd, len)
    }

    /// Maps a region received from another process. Its size is read from the descriptor,
    /// which must be sealed against shrinking (as [`SharedRegion::create`] makes it), so that
    /// no access can fault.
    pub fn open(fd: OwnedFd) -> io::Result<SharedRegion> {
        if !sys::sealed_against_shrinking(fd.as_fd())? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the shared region is not sealed against shrinking",
            ));
        }
        Self::open_unsealed(fd)
    }

    /// Maps a named segment received as a descriptor (named segments cannot be sealed; see
    /// [`SharedRegion::open_named`]).
    pub fn open_unsealed(fd: OwnedFd) -> io::Result<SharedRegion> {
        let len = usize::try_from(sys::file_size(fd.as_fd())?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad shared region size"))?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an empty shared region",
            ));
        }
        Self::map(fd, len)
    }

    /// A new named POSIX shared-memory segment (`/dev/shm/NAME`) of `len` bytes, which other
    /// processes can attach by name. It stays in `/dev/shm` until [`unlink_named`] removes it,
    /// even if every process using it dies: the caller owns that clean-up.
    pub fn create_named(name: &str, len: usize) -> io::Result<SharedRegion> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared region needs at least 1 byte",
            ));
        }
        let fd = sys::shm_create(&posix_name(name)?)?;
        sys::set_file_size(fd.as_fd(), len)?;
        Self::map(fd, len)
    }

    /// Attaches the named segment `name` ([`io::ErrorKind::NotFound`] if there is none).
    /// Named segments cannot be sealed: a process that shrinks one makes accesses beyond the
    /// new end fault, so share names only between cooperating processes.
    pub fn open_named(name: &str) -> io::Result<SharedRegion> {
        let fd = sys::shm_open(&posix_name(name)?)?;
        Self::open_unsealed(fd)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<SharedRegion> {
        // The file is at least `len` bytes long: checked or made so above.
        let base = sys::map_shared(fd.as_fd(), len)?;
        Ok(SharedRegion { base, len, fd })
    }

    /// The first byte. Page-aligned.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: regions have at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Gives the memory of `len` bytes at `offset` back to the system (they read as zeros
    /// afterwards): consumed parts of a large, sparse region stop costing memory.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the region",
            ));
        }
        sys::punch_hole(self.fd.as_fd(), offset, len)
    }

    /// The memfd, to pass the region to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: exactly the range `map` created, unmapped once, by its only owner.
        let _ = unsafe { sys::unmap(self.base, self.len) };
    }
}

/// Removes the named segment `name` from `/dev/shm` (processes that have it mapped keep it
/// until they unmap it). This is also how to clean up after a creator that was killed.
pub fn unlink_named(name: &str) -> io::Result<()> {
    sys::shm_unlink(&posix_name(name)?)
}

/// `/NAME`, refusing names that POSIX shared memory cannot hold.
fn posix_name(name: &str) -> io::Result<String> {
    if name.is_empty() || name.len() > 200 || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a shared memory name is 1 to 200 bytes without '/'",
        ));
    }
    Ok(format!("/{name}"))
}

/// Sleeps while `*word == expected`, until woken, `deadline` passes, or a signal interrupts.
/// Returns `false` only when the deadline passed. The word may be shared between processes.
pub fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> io::Result<bool> {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            Some(left)
        }
    };
    sys::futex_wait(word, expected, timeout)
}

/// Wakes up to `n` waiters of `word` (in any process); `u32::MAX` wakes them all.
pub fn futex_wake(word: &AtomicU32, n: u32) {
    sys::futex_wake(word, n);
}

/// A process named by pid and start time (in clock ticks since boot, from `/proc`), which no
/// later process with the same pid shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessIdentity {
    /// The pid.
    pub pid: u32,
    /// Its start time.
    pub start: u64,
}

impl ProcessIdentity {
    /// This process.
    /// This process. Its start time is 0 if `/proc` could not tell it (callers must not
    /// treat 0 as a real start time).
    pub fn current() -> ProcessIdentity {
        let pid = std::process::id();
        let start = ProcessIdentity::lookup(pid)
            .ok()
            .flatten()
            .map_or(0, |id| id.start);
        ProcessIdentity { pid, start }
    }

    /// The live (not zombie) process with this pid now: `Ok(None)` if there is none for sure,
    /// `Err` if `/proc` could not tell (out of descriptors, a restricted `/proc`, ...), which
    /// a caller deciding whether a lock's owner died must take as "maybe alive".
    pub fn lookup(pid: u32) -> io::Result<Option<ProcessIdentity>> {
        let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        match parse_stat(&stat) {
            Some(('Z' | 'X', _)) => Ok(None),
            Some((_, start)) => Ok(Some(ProcessIdentity { pid, start })),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unreadable /proc stat line",
            )),
        }
    }

    /// Whether that very process still runs (a zombie counts as dead; "cannot tell" counts
    /// as alive).
    pub fn is_alive(self) -> bool {
        match ProcessIdentity::lookup(self.pid) {
            Ok(Some(live)) => live.start == self.start,
            Ok(None) => false,
            Err(_) => true,
        }
    }
}

/// The state and start time from a `/proc/PID/stat` line. The command name may contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come fields 4..; the start time is field 22, the 19th after it.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

/// A region whose file may grow (never shrink) after it is created: what a queue whose ring
/// grows with its contents needs. [`SharedRegion::create_growable`] maps only its first `len`
/// bytes (a header that must stay put); [`SharedRegion::map_window`] maps any part of the
/// file, which [`SharedRegion::grow_to`] makes longer. Every process that received the
/// descriptor (and mapped its first bytes with [`SharedRegion::open_prefix`]) can map the grown
/// part itself.
impl SharedRegion {
    /// A new zero-filled region of `len` bytes (at least 1), sealed against shrinking only.
    pub fn create_growable(name: &str, len: usize) -> io::Result<SharedRegion> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a shared region needs at least 1 byte",
            ));
        }
        let fd = sys::growable_memfd(name, len)?;
        Self::map(fd, len)
    }

    /// Maps the first `len` bytes of a region received from another process, which must be
    /// sealed against shrinking and at least that long.
    pub fn open_prefix(fd: OwnedFd, len: usize) -> io::Result<SharedRegion> {
        if len == 0 || !sys::sealed_against_shrinking(fd.as_fd())? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the shared region is empty or not sealed against shrinking",
            ));
        }
        if (sys::file_size(fd.as_fd())? as u64) < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the shared region is shorter than asked",
            ));
        }
        Self::map(fd, len)
    }

    /// The length of the region's file now (at least the mapped length).
    pub fn file_len(&self) -> io::Result<u64> {
        Ok(sys::file_size(self.fd.as_fd())? as u64)
    }

    /// Makes the file at least `len` bytes long (the new part reads as zeros and costs no
    /// memory until written); never shrinks it.
    pub fn grow_to(&self, len: u64) -> io::Result<()> {
        if self.file_len()? < len {
            let len = usize::try_from(len).map_err(io::Error::other)?;
            sys::set_file_size(self.fd.as_fd(), len)?;
        }
        Ok(())
    }

    /// Maps `len` bytes of the file from `offset` (a multiple of the page size). Refused
    /// unless the file is sealed against shrinking and that long, so no access can fault.
    pub fn map_window(&self, offset: u64, len: usize) -> io::Result<SharedWindow> {
        let sealed = sys::sealed_against_shrinking(self.fd.as_fd())?;
        let end = offset.checked_add(len as u64);
        if len == 0 || !sealed || end.is_none_or(|end| end > self.file_len().unwrap_or(0)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a window must lie inside a region sealed against shrinking",
            ));
        }
        // A file at least `offset + len` long that cannot shrink (checked above): the
        // mapping never faults.
        let base = sys::map_shared_at(self.fd.as_fd(), offset, len)?;
        Ok(SharedWindow { base, len })
    }

    /// Gives the memory of `len` bytes of the file at `offset` back to the system, mapped here
    /// or not (they read as zeros afterwards).
    pub fn discard_file(&self, offset: u64, len: u64) -> io::Result<()> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.file_len().unwrap_or(0))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the region",
            ));
        }
        let offset = usize::try_from(offset).map_err(io::Error::other)?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        sys::punch_hole(self.fd.as_fd(), offset, len)
    }
}

/// A part of a [`SharedRegion`]'s file, mapped by [`SharedRegion::map_window`]; unmapped when
/// dropped.
#[derive(Debug)]
pub struct SharedWindow {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: as for `SharedRegion`: plain shared memory whose users synchronize their accesses;
// the mapping is owned by this value alone.
unsafe impl Send for SharedWindow {}
// SAFETY: as above: `&SharedWindow` only hands out a raw pointer.
unsafe impl Sync for SharedWindow {}

impl SharedWindow {
    /// The first byte. Page-aligned.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Its length in bytes (never 0).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: windows have at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Drop for SharedWindow {
    fn drop(&mut self) {
        // SAFETY: exactly the range `map_window` created, unmapped once, by its only owner.
        let _ = unsafe { sys::unmap(self.base, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not_the_same_process() {
        let me = ProcessIdentity::current();
        assert!(me.start > 0);
        assert!(me.is_alive());
        assert!(
            !ProcessIdentity {
                pid: me.pid,
                start: me.start + 1
            }
            .is_alive()
        );
        assert!(
            !ProcessIdentity {
                pid: u32::MAX - 1,
                start: 0
            }
            .is_alive()
        );
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 777)));
    }

    #[test]
    fn regions_are_shared_through_their_descriptor() {
        let a = SharedRegion::create("test", 4096).unwrap();
        let b = SharedRegion::open(a.fd().try_clone_to_owned().unwrap()).unwrap();
        // SAFETY: both map the same 4096-byte file; single-threaded test.
        unsafe {
            *a.as_ptr() = 7;
            assert_eq!(*b.as_ptr(), 7);
        }
        assert!(SharedRegion::create("test", 0).is_err());
    }

    #[test]
    fn waking_all_wakes_every_waiter() {
        use std::sync::Arc;
        let word = Arc::new(AtomicU32::new(0));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let w = Arc::clone(&word);
                std::thread::spawn(move || {
                    let deadline = Some(Instant::now() + std::time::Duration::from_secs(20));
                    while w.load(std::sync::atomic::Ordering::Acquire) == 0 {
                        futex_wait(&w, 0, deadline).unwrap();
                    }
                    Instant::now()
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let woken_at = Instant::now();
        word.store(1, std::sync::atomic::Ordering::Release);
        futex_wake(&word, u32::MAX);
        for w in waiters {
            let t = w.join().unwrap();
            assert!(
                t.duration_since(woken_at) < std::time::Duration::from_secs(10),
                "a waiter slept on"
            );
        }
    }

    #[test]
    fn futex_wait_times_out_and_returns_at_once_on_a_changed_word() {
        let word = AtomicU32::new(1);
        assert!(
            futex_wait(
                &word,
                0,
                Some(Instant::now() + std::time::Duration::from_secs(5))
            )
            .unwrap()
        );
        let t = Instant::now();
        assert!(
            !futex_wait(
                &word,
                1,
                Some(Instant::now() + std::time::Duration::from_millis(30))
            )
            .unwrap()
        );
        assert!(t.elapsed() >= std::time::Duration::from_millis(30));
    }
}
