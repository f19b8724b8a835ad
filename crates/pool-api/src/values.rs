//! `Value`, `Array` and `SharedMemory`: data shared between processes.
//!
//! Memory another process may write at any moment must never be reached through a Rust
//! reference (that would be a data race, undefined behaviour). So these types hand out
//! *copies*: `get`/`set`, and a guard that holds the value's lock across several of them.
//! Their element types are plain data ([`Plain`]): every bit pattern is a valid value, so
//! whatever another process wrote, reading it is sound.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use pool_ipc::shared::{self, SharedRegion};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ShmError;
use crate::handles;
use crate::sync::{RawLock, SyncError};

/// Types every bit pattern of which is a valid value: integers, floats, and arrays of them.
/// Only these can live in [`Value`] and [`Array`], since another process may write any bytes.
///
/// # Safety
/// An implementor must be valid for every bit pattern and have no padding, and must not hold
/// pointers, references or anything whose meaning is local to one process.
pub unsafe trait Plain: Copy + Send + Sync + 'static {}

macro_rules! plain {
    ($($t:ty),*) => { $(
        // SAFETY: a primitive number: every bit pattern is a value, no padding, no pointers.
        unsafe impl Plain for $t {}
    )* };
}
plain!(
    u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, usize, isize, f32, f64
);
// SAFETY: an array of `Plain` elements has no padding between them and inherits validity.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

const MAGIC: u64 = 0x706f_6f6c_7661_6c75;
const DATA_OFFSET: usize = 128;

#[repr(C)]
struct Header {
    magic: AtomicU64,
    type_tag: AtomicU64,
    len: AtomicU64,
    lock: AtomicU32,
    has_lock: AtomicU32,
    lock_owner: AtomicU64,
}

/// A shared area of `len` elements of `T` behind a header with an optional lock.
struct Cells<T> {
    region: SharedRegion,
    len: usize,
    _t: PhantomData<T>,
}

/// Identifies `T` across processes of the same build (an FNV-1a hash of its name and size).
fn type_tag<T>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::any::type_name::<T>()
        .bytes()
        .chain(std::mem::size_of::<T>().to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

impl<T: Plain> Cells<T> {
    fn create(len: usize, lock: bool, init: impl Fn(usize) -> T) -> Result<Cells<T>, SyncError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(SyncError::InvalidArgument("too many elements"))?;
        let region = SharedRegion::create("pool-value", DATA_OFFSET + bytes.max(1))
            .map_err(SyncError::from)?;
        let cells = Cells {
            region,
            len,
            _t: PhantomData,
        };
        for i in 0..len {
            cells.write(i, init(i));
        }
        let h = cells.header();
        h.len.store(len as u64, Ordering::Relaxed);
        h.has_lock.store(u32::from(lock), Ordering::Relaxed);
        h.type_tag.store(type_tag::<T>(), Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(cells)
    }

    fn open(fd: std::os::fd::OwnedFd) -> Result<Cells<T>, String> {
        let region = SharedRegion::open(fd).map_err(|e| e.to_string())?;
        if region.len() < DATA_OFFSET {
            return Err("the descriptor is not a shared value".into());
        }
        // SAFETY: the region holds at least the header (checked) and is page-aligned.
        let h = unsafe { &*region.as_ptr().cast::<Header>() };
        if h.magic.load(Ordering::Acquire) != MAGIC
            || h.type_tag.load(Ordering::Relaxed) != type_tag::<T>()
        {
            return Err(format!(
                "the descriptor is not a shared value of {}",
                std::any::type_name::<T>()
            ));
        }
        let len =
            usize::try_from(h.len.load(Ordering::Relaxed)).map_err(|_| "bad length".to_string())?;
        if len
            .checked_mul(std::mem::size_of::<T>())
            .is_none_or(|b| DATA_OFFSET + b > region.len())
        {
            return Err("the shared value's length exceeds its memory".into());
        }
        Ok(Cells {
            region,
            len,
            _t: PhantomData,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the region starts with the header (made so by `create`, checked by `open`);
        // it is only atomics, valid for any bytes, used through `&` only.
        unsafe { &*self.region.as_ptr().cast::<Header>() }
    }

    fn lock(&self) -> Option<RawLock<'_>> {
        let h = self.header();
        (h.has_lock.load(Ordering::Relaxed) != 0).then_some(RawLock {
            word: &h.lock,
            record: &h.lock_owner,
        })
    }

    fn slot(&self, i: usize) -> *mut T {
        assert!(i < self.len, "index checked by the callers");
        // The data area starts 128 bytes in: aligned for any `Plain` type (at most 16).
        self.region
            .as_ptr()
            .wrapping_add(DATA_OFFSET)
            .cast::<T>()
            .wrapping_add(i)
    }

    // A raw value (no lock) may be written by another process while this one reads it, as
    // Python's `RawValue` allows: the slot is copied with atomic accesses (`pool_ipc::shared`),
    // so that is not a data race. An aligned 8-byte value is one atomic word, never torn.
    fn read(&self, i: usize) -> T {
        let mut out = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `slot(i)` is inside the region and aligned, `size_of::<T>()` bytes long;
        // `out` is private and as long; every byte of `out` is written, and `T: Plain` is
        // valid for any bytes.
        unsafe {
            pool_ipc::shared::copy_from_shared(
                self.slot(i).cast::<u8>(),
                out.as_mut_ptr().cast::<u8>(),
                std::mem::size_of::<T>(),
            );
            out.assume_init()
        }
    }

    fn write(&self, i: usize, v: T) {
        // SAFETY: as in `read`; `v` is a private `Plain` value of `size_of::<T>()` bytes
        // (no padding, so every byte read from it is initialised).
        unsafe {
            pool_ipc::shared::copy_to_shared(
                (&raw const v).cast::<u8>(),
                self.slot(i).cast::<u8>(),
                std::mem::size_of::<T>(),
            );
        }
    }

    /// Runs `f` under the lock, if there is one.
    fn locked<R>(&self, f: impl FnOnce() -> R) -> Result<R, SyncError> {
        match self.lock() {
            None => Ok(f()),
            Some(lock) => {
                let _taken = lock.acquire(None)?;
                let out = f();
                lock.release()?;
                Ok(out)
            }
        }
    }
}

/// Python's `multiprocessing.Value`: one value of a plain-data type in shared memory, with a
/// lock (or none: [`Value::raw`], Python's `RawValue`). Pass it to children in their
/// arguments.
///
/// ```
/// let counter = pool_api::Value::new(0u64)?;
/// counter.update(|n| n + 1)?;                   // atomic under the value's lock
/// assert_eq!(counter.get()?, 1);
/// let mut held = counter.lock()?;               // several steps under one lock
/// held.set(held.get() * 10);
/// drop(held);
/// assert_eq!(counter.get()?, 10);
/// # Ok::<(), pool_api::SyncError>(())
/// ```
pub struct Value<T>(Arc<Cells<T>>);

/// Python's `multiprocessing.Array`: a fixed number of plain-data values in shared memory,
/// with a lock (or none: [`Array::raw`]).
pub struct Array<T>(Arc<Cells<T>>);

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value(Arc::clone(&self.0))
    }
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array(Arc::clone(&self.0))
    }
}

impl<T: Plain + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.0.read(0)).finish()
    }
}

impl<T: Plain> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("len", &self.0.len)
            .finish_non_exhaustive()
    }
}

impl<T: Plain> Value<T> {
    /// A shared value with a lock.
    pub fn new(value: T) -> Result<Value<T>, SyncError> {
        Cells::create(1, true, |_| value).map(|c| Value(Arc::new(c)))
    }

    /// A shared value without a lock (Python's `RawValue`): `get` and `set` are single copies;
    /// a value wider than the machine's word may be read torn while another process writes.
    pub fn raw(value: T) -> Result<Value<T>, SyncError> {
        Cells::create(1, false, |_| value).map(|c| Value(Arc::new(c)))
    }

    /// A copy of the value (taken under the lock, if any).
    pub fn get(&self) -> Result<T, SyncError> {
        self.0.locked(|| self.0.read(0))
    }

    /// Sets the value (under the lock, if any).
    pub fn set(&self, value: T) -> Result<(), SyncError> {
        self.0.locked(|| self.0.write(0, value))
    }

    /// Replaces the value with `f(value)` under the lock: the `with v.get_lock(): v.value += 1`
    /// of Python, in one call.
    pub fn update(&self, f: impl FnOnce(T) -> T) -> Result<T, SyncError> {
        self.0.locked(|| {
            let new = f(self.0.read(0));
            self.0.write(0, new);
            new
        })
    }

    /// Takes the value's lock for several steps ([`SyncError::InvalidArgument`] for a raw
    /// value, which has none).
    pub fn lock(&self) -> Result<ValueGuard<'_, T>, SyncError> {
        let lock = self
            .0
            .lock()
            .ok_or(SyncError::InvalidArgument("a raw value has no lock"))?;
        let _taken = lock.acquire(None)?;
        Ok(ValueGuard {
            cells: &self.0,
            index: 0,
        })
    }
}

/// The lock of a [`Value`] or [`Array`], held; reads and writes through it are copies.
pub struct ValueGuard<'a, T: Plain> {
    cells: &'a Cells<T>,
    index: usize,
}

impl<T: Plain> ValueGuard<'_, T> {
    /// The value (for an array: the first element).
    pub fn get(&self) -> T {
        self.cells.read(self.index)
    }

    /// Sets the value (for an array: the first element).
    pub fn set(&mut self, value: T) {
        self.cells.write(self.index, value);
    }

    /// Element `i` ([`None`] out of range).
    pub fn get_at(&self, i: usize) -> Option<T> {
        (i < self.cells.len).then(|| self.cells.read(i))
    }

    /// Sets element `i`; `false` out of range.
    pub fn set_at(&mut self, i: usize, value: T) -> bool {
        let inside = i < self.cells.len;
        if inside {
            self.cells.write(i, value);
        }
        inside
    }
}

impl<T: Plain> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(lock) = self.cells.lock() {
            let _ = lock.release();
        }
    }
}

impl<T: Plain> Array<T> {
    /// A shared array of the given values, with a lock.
    pub fn new(values: &[T]) -> Result<Array<T>, SyncError> {
        Cells::create(values.len(), true, |i| values[i]).map(|c| Array(Arc::new(c)))
    }

    /// A shared array without a lock (Python's `RawArray`).
    pub fn raw(values: &[T]) -> Result<Array<T>, SyncError> {
        Cells::create(values.len(), false, |i| values[i]).map(|c| Array(Arc::new(c)))
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.0.len
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }

    /// Element `i`, or `None` out of range.
    pub fn get(&self, i: usize) -> Result<Option<T>, SyncError> {
        if i >= self.0.len {
            return Ok(None);
        }
        self.0.locked(|| Some(self.0.read(i)))
    }

    /// Sets element `i`; [`SyncError::InvalidArgument`] out of range.
    pub fn set(&self, i: usize, value: T) -> Result<(), SyncError> {
        if i >= self.0.len {
            return Err(SyncError::InvalidArgument("index out of range"));
        }
        self.0.locked(|| self.0.write(i, value))
    }

    /// A copy of every element, taken under one lock.
    pub fn to_vec(&self) -> Result<Vec<T>, SyncError> {
        self.0
            .locked(|| (0..self.0.len).map(|i| self.0.read(i)).collect())
    }

    /// Takes the array's lock for several steps.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>, SyncError> {
        let lock = self
            .0
            .lock()
            .ok_or(SyncError::InvalidArgument("a raw array has no lock"))?;
        let _taken = lock.acquire(None)?;
        Ok(ValueGuard {
            cells: &self.0,
            index: 0,
        })
    }
}

macro_rules! cells_serde {
    ($ty:ident) => {
        impl<T: Plain> Serialize for $ty<T> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                handles::serialize_fd(self.0.region.fd(), serializer)
            }
        }

        impl<'de, T: Plain> Deserialize<'de> for $ty<T> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<$ty<T>, D::Error> {
                use serde::de::Error as _;
                let fd = handles::deserialize_fd(deserializer)?;
                Cells::open(fd)
                    .map(|c| $ty(Arc::new(c)))
                    .map_err(D::Error::custom)
            }
        }
    };
}
cells_serde!(Value);
cells_serde!(Array);

fn shm_error(e: std::io::Error, name: &str) -> ShmError {
    match e.kind() {
        std::io::ErrorKind::NotFound => ShmError::NotFound(name.to_owned()),
        std::io::ErrorKind::AlreadyExists => ShmError::AlreadyExists(name.to_owned()),
        std::io::ErrorKind::InvalidInput => ShmError::InvalidArgument(e.to_string()),
        _ => ShmError::Io(e.into()),
    }
}

/// Python's `multiprocessing.shared_memory.SharedMemory`: a block of bytes shared between
/// processes, read and written by copy.
///
/// By default it is anonymous (a memfd): nothing appears in `/dev/shm`, and the memory is
/// freed when the last process holding it exits, crash or not. Pass it to a child in its
/// arguments. A *named* segment ([`SharedMemory::create_named`]) can be attached by name from
/// any process, and lives in `/dev/shm` until unlinked: its creator unlinks it when dropped,
/// or explicitly with [`SharedMemory::unlink`].
///
/// # Tracking
///
/// A named segment that its program created and did not hand over never
/// outlives the program by accident: if the creating handle is never dropped (a process
/// killed by SIGKILL, SIGTERM or SIGINT, a panic that aborts, `std::process::exit`, a leaked
/// handle), the program's shared-memory *tracker*, a small helper process, unlinks it once
/// every process of the program has ended (its main process and the children pool started
/// from it: a segment that a live process of the program still uses is never unlinked under
/// it). The tracker is started by the first tracked creation, one per program, and exits
/// when the program has ended. See the `tracker` module of the source for the protocol.
///
/// # Handing a segment over
///
/// A segment is *handed over*, meant to outlive its program, when it is created with
/// [`SharedMemory::create_untracked`] (Python 3.13's `track=False`) or when its creator calls
/// [`SharedMemory::keep`]: then neither the handle nor the tracker unlinks it, and someone
/// (another program, or a later run) must call [`SharedMemory::unlink`]. Attaching
/// ([`SharedMemory::attach`]) never takes ownership: only the creating program unlinks.
///
/// # Example
///
/// ```
/// use pool_api::SharedMemory;
///
/// let name = format!("pool-doc-{}", std::process::id());
/// let mut shm = SharedMemory::create_named(&name, 4096)?; // tracked
/// shm.write(0, b"for the next run")?;
/// shm.keep(); // handed over: survives this handle and this program
/// drop(shm);
/// let again = SharedMemory::attach(&name)?;
/// assert_eq!(&again.to_vec()[..16], b"for the next run");
/// SharedMemory::unlink(&name)?;
/// # Ok::<(), pool_api::ShmError>(())
/// ```
pub struct SharedMemory {
    region: SharedRegion,
    name: Option<String>,
    owner: bool,
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("size", &self.region.len())
            .field("name", &self.name)
            .finish()
    }
}

impl SharedMemory {
    /// An anonymous segment of `size` bytes (at least 1), zero-filled.
    pub fn new(size: usize) -> Result<SharedMemory, ShmError> {
        if size == 0 {
            return Err(ShmError::InvalidArgument(
                "a segment needs at least 1 byte".into(),
            ));
        }
        let region =
            SharedRegion::create("pool-shared-memory", size).map_err(|e| shm_error(e, ""))?;
        Ok(SharedMemory {
            region,
            name: None,
            owner: true,
        })
    }

    /// A named segment (`/dev/shm/NAME`) of `size` bytes, unlinked when this handle drops,
    /// and *tracked*: unlinked by the program's tracker once every process of the program has
    /// ended, if it was not unlinked before (see [tracking](SharedMemory#tracking)). If no
    /// tracker can be started (no `/proc`, no process left to start), the segment is created
    /// untracked and a `tracing` warning says so.
    pub fn create_named(name: &str, size: usize) -> Result<SharedMemory, ShmError> {
        let shm = SharedMemory::create_untracked(name, size)?;
        let registered = crate::tracker::segment_id(shm.region.fd())
            .and_then(|id| crate::tracker::register(name, id));
        if let Err(e) = registered {
            tracing::warn!(name, error = %e, "named shared memory is not tracked");
        }
        let mut shm = shm;
        shm.owner = true;
        Ok(shm)
    }

    /// A named segment (`/dev/shm/NAME`) of `size` bytes, handed over from the start (Python
    /// 3.13's `SharedMemory(track=False)`): neither this handle nor the program's tracker
    /// ever unlinks it; [`SharedMemory::unlink`] does, from this or any other program.
    ///
    /// ```
    /// use pool_api::SharedMemory;
    ///
    /// let name = format!("pool-doc-untracked-{}", std::process::id());
    /// drop(SharedMemory::create_untracked(&name, 64)?);
    /// assert!(SharedMemory::attach(&name).is_ok()); // still there
    /// SharedMemory::unlink(&name)?;
    /// # Ok::<(), pool_api::ShmError>(())
    /// ```
    pub fn create_untracked(name: &str, size: usize) -> Result<SharedMemory, ShmError> {
        let region = SharedRegion::create_named(name, size).map_err(|e| shm_error(e, name))?;
        Ok(SharedMemory {
            region,
            name: Some(name.to_owned()),
            owner: false,
        })
    }

    /// Hands the segment over: it outlives this handle and this program (this handle no
    /// longer unlinks it, and the tracker forgets it). Does nothing on a handle that does
    /// not own its segment (attached, cloned, received, or untracked).
    pub fn keep(&mut self) {
        if let (true, Some(name)) = (self.owner, &self.name) {
            crate::tracker::unregister(name);
        }
        self.owner = false;
    }

    /// Attaches the named segment `name` ([`ShmError::NotFound`] if there is none).
    pub fn attach(name: &str) -> Result<SharedMemory, ShmError> {
        let region = SharedRegion::open_named(name).map_err(|e| shm_error(e, name))?;
        // Not registered (an attaching process does not own the segment); but if this
        // program's tracker runs, this process is counted among its live ones.
        crate::tracker::note_user();
        Ok(SharedMemory {
            region,
            name: Some(name.to_owned()),
            owner: false,
        })
    }

    /// Removes the named segment `name` from `/dev/shm` (for instance a handed-over one, or
    /// one whose creator was killed). Processes that have it attached keep it until they drop
    /// it. If this program's tracker had it registered, it forgets it.
    pub fn unlink(name: &str) -> Result<(), ShmError> {
        // First: a tracker must never unlink a later segment of the same name.
        crate::tracker::unregister(name);
        shared::unlink_named(name).map_err(|e| shm_error(e, name))
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.region.len()
    }

    /// The name, for a named segment.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), ShmError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(ShmError::OutOfRange {
                start: offset,
                end: offset.saturating_add(len),
                size,
            }),
        }
    }

    /// Copies `buf.len()` bytes from `offset` into `buf`. Nothing orders this against another
    /// process's `write` of the same bytes: a read racing a write may see some old bytes and
    /// some new (torn), as with Python's `SharedMemory.buf`. Guard shared updates with a
    /// [`Lock`](crate::Lock) passed along with the segment.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), ShmError> {
        self.check(offset, buf.len())?;
        // SAFETY: the range is inside the mapping (checked); the copy's accesses to the
        // shared bytes, which another process may be writing, are atomic: torn values, no
        // data race.
        unsafe {
            pool_ipc::shared::copy_from_shared(
                self.region.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` into the segment at `offset` (see [`SharedMemory::read`] on racing access).
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), ShmError> {
        self.check(offset, data.len())?;
        // SAFETY: as in `read`.
        unsafe {
            pool_ipc::shared::copy_to_shared(
                data.as_ptr(),
                self.region.as_ptr().add(offset),
                data.len(),
            )
        };
        Ok(())
    }

    /// Another handle to the same memory, to pass to a child (it never unlinks the name).
    pub fn clone_handle(&self) -> SharedMemory {
        let fd = self.region.fd().try_clone_to_owned();
        let region = fd
            .and_then(SharedRegion::open_unsealed)
            .expect("duplicating a mapped segment");
        SharedMemory {
            region,
            name: self.name.clone(),
            owner: false,
        }
    }

    /// A copy of the whole segment.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size()];
        let _ = self.read(0, &mut out);
        out
    }
}

impl Drop for SharedMemory {
    fn drop(&mut self) {
        if let (true, Some(name)) = (self.owner, &self.name) {
            crate::tracker::unregister(name);
            let _ = shared::unlink_named(name);
        }
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        handles::serialize_fd(self.region.fd(), serializer)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SharedMemory, D::Error> {
        use serde::de::Error as _;
        let fd = handles::deserialize_fd(deserializer)?;
        let region = SharedRegion::open_unsealed(fd).map_err(D::Error::custom)?;
        // A received segment is not the creator: it never unlinks a name.
        Ok(SharedMemory {
            region,
            name: None,
            owner: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_of_another_type_is_refused() {
        let v = Value::new(1u32).unwrap();
        let (bytes, fds) = handles::encode(&v).unwrap();
        assert!(handles::decode::<Value<u64>>(&bytes, fds).is_err());
        let (bytes, fds) = handles::encode(&v).unwrap();
        assert_eq!(
            handles::decode::<Value<u32>>(&bytes, fds)
                .unwrap()
                .get()
                .unwrap(),
            1
        );
    }
}
