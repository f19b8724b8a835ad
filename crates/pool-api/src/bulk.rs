//! The bulk layout: chunks of fixed-size plain items as raw little-endian arrays.
//!
//! A chunk of `u64`s in postcard's layout is a varint per item, which the profile of a `map`
//! of small items showed as most of its time, on both sides. Items of a fixed-size plain type
//! travel instead as one array of their little-endian bytes, which on a little-endian host is
//! their bytes in memory: encoding and decoding a chunk is a `memcpy` (plus a check of every
//! value for `bool` and `char`). The user writes the same `map` call: the layout is chosen
//! by the item type's [`TypeId`], once per chunk.
//!
//! # Which types
//!
//! [`Fixed`] types, looked up in one table ([`PlainOf::get`]):
//! - the integers (`u8` to `u128`, `i8` to `i128`, `usize`, `isize`), `f32`, `f64`, `bool`
//!   and `char` (`bool` and `char` checked on the way in: a byte other than 0 or 1, or a
//!   `u32` that is no Unicode scalar value, is an error);
//! - pairs of any two of them, and triples and quadruples of one of them;
//! - arrays of 2, 3, 4, 8, 16 or 32 of one of them.
//!
//! A tuple whose fields lie in memory in their order without padding (`(u32, f32)`, not
//! `(u8, u64)`) and arrays are copied as one block too; other tuples field by field.
//!
//! User structs, `#[repr(C)]` or not, keep postcard's layout. A `TypeId` says nothing of a
//! user's type: whether it has padding (bytes a `memcpy` would send uninitialized), whether
//! every bit pattern of its fields is a valid value, whether its `Serialize` writes its fields
//! at all (a hand-written one may write anything). Taking it in bulk would need the user to
//! promise those things with an `unsafe` trait, a new API this layout does without.
//!
//! # On the wire
//!
//! Every encoded chunk starts with a byte saying its layout, which the reader checks:
//! [`SERDE`] (postcard's encoding of the sequence follows) or [`BULK`]. A bulk chunk of
//! arguments is the count (`u64`, little-endian) and the items' bytes. A bulk chunk of
//! results is the count, the count of panics (both `u64`), the bytes of the values of the
//! items that did not panic, and then each panic (its item's index and the panic, postcard).
//! A reader refuses a bulk chunk for a type without a bulk layout, a count the bytes do not
//! match exactly, an invalid `bool` or `char`, panics out of order: typed errors
//! ([`BulkError`]), checked before anything is allocated for the count.

use std::any::TypeId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::LazyLock;

use crate::task::{Panic, type_id_of};

/// The first byte of a chunk in postcard's layout.
pub(crate) const SERDE: u8 = 0;
/// The first byte of a chunk in the bulk layout.
pub(crate) const BULK: u8 = 1;

/// What is wrong with a bulk chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BulkError {
    /// The chunk is shorter than its header.
    #[error("a bulk chunk shorter than its header")]
    Truncated,
    /// The item bytes do not match the count (a truncated chunk or trailing bytes).
    #[error("a bulk chunk's {len} bytes of items do not hold {count} items of {size} bytes")]
    Length { count: u64, size: usize, len: usize },
    /// An item's bytes are no value of the type (a `bool` other than 0 or 1, a `char` that is
    /// no Unicode scalar value).
    #[error("item {0} of a bulk chunk is no valid value of its type")]
    Invalid(usize),
    /// More panics than items, or panics out of order.
    #[error("a bulk chunk's panics are out of order or more than its items")]
    Panics,
    /// The first byte is no layout this build knows, or names the bulk layout for a type
    /// that has none.
    #[error("a chunk's layout tag {0} is unknown, or is not this type's")]
    Tag(u8),
}

/// A type whose values are a fixed number of bytes on the wire, in [`PlainOf`]'s table.
trait Fixed: Copy + 'static {
    /// Bytes of one value on the wire.
    const SIZE: usize;
    /// Whether a value's bytes in memory are its wire bytes, given `size_of::<Self>() ==
    /// SIZE` (checked apart): a little-endian host, fields in order.
    const RAW: bool;
    /// Whether every `SIZE` bytes are a value (no check on the way in).
    const ANY_BITS: bool;
    /// A value, to fill arrays before their elements are read.
    const ZERO: Self;
    /// Writes the value's `SIZE` bytes at the start of `out`.
    fn put(self, out: &mut [u8]);
    /// The value of the first `SIZE` bytes of `bytes`, if they are one.
    fn get(bytes: &[u8]) -> Option<Self>;
}

/// Whether values of `T` are copied as one block: their memory is their wire bytes, with
/// no padding (whose bytes are uninitialized).
const fn raw<T: Fixed>() -> bool {
    T::RAW && std::mem::size_of::<T>() == T::SIZE
}

macro_rules! number {
    ($($t:ty),*) => {$(
        impl Fixed for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            const RAW: bool = cfg!(target_endian = "little");
            const ANY_BITS: bool = true;
            const ZERO: $t = 0 as $t;
            #[inline(always)]
            fn put(self, out: &mut [u8]) {
                out[..Self::SIZE].copy_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn get(bytes: &[u8]) -> Option<$t> {
                Some(<$t>::from_le_bytes(bytes.get(..Self::SIZE)?.try_into().ok()?))
            }
        }
    )*};
}
number!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64
);

impl Fixed for bool {
    const SIZE: usize = 1;
    // A `bool` is one byte, 0 or 1, on every host.
    const RAW: bool = true;
    const ANY_BITS: bool = false;
    const ZERO: bool = false;
    #[inline(always)]
    fn put(self, out: &mut [u8]) {
        out[0] = u8::from(self);
    }
    #[inline(always)]
    fn get(bytes: &[u8]) -> Option<bool> {
        match bytes.first()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
}

impl Fixed for char {
    const SIZE: usize = 4;
    // A `char` is its scalar value as a `u32`.
    const RAW: bool = cfg!(target_endian = "little");
    const ANY_BITS: bool = false;
    const ZERO: char = '\0';
    #[inline(always)]
    fn put(self, out: &mut [u8]) {
        out[..4].copy_from_slice(&u32::from(self).to_le_bytes());
    }
    #[inline(always)]
    fn get(bytes: &[u8]) -> Option<char> {
        char::from_u32(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?))
    }
}

impl<T: Fixed, const N: usize> Fixed for [T; N] {
    const SIZE: usize = N * T::SIZE;
    // Arrays have no padding between their elements.
    const RAW: bool = raw::<T>();
    const ANY_BITS: bool = T::ANY_BITS;
    const ZERO: [T; N] = [T::ZERO; N];
    #[inline(always)]
    fn put(self, out: &mut [u8]) {
        for (value, to) in self.into_iter().zip(out.chunks_exact_mut(T::SIZE)) {
            value.put(to);
        }
    }
    #[inline(always)]
    fn get(bytes: &[u8]) -> Option<[T; N]> {
        let mut values = [T::ZERO; N];
        for (i, value) in values.iter_mut().enumerate() {
            *value = T::get(bytes.get(i * T::SIZE..)?)?;
        }
        Some(values)
    }
}

macro_rules! tuple {
    ($(($($t:ident $i:tt),+))*) => {$(
        impl<$($t: Fixed),+> Fixed for ($($t,)+) {
            const SIZE: usize = 0 $(+ $t::SIZE)+;
            // Rust lays tuples out as it likes: raw only if this one has its fields in order,
            // each at the sum of the sizes before it.
            const RAW: bool = {
                let mut at = 0;
                let mut in_order = true;
                $(
                    in_order &= raw::<$t>() && std::mem::offset_of!(Self, $i) == at;
                    at += $t::SIZE;
                )+
                let _ = at;
                in_order
            };
            const ANY_BITS: bool = true $(&& $t::ANY_BITS)+;
            const ZERO: Self = ($($t::ZERO,)+);
            #[inline(always)]
            fn put(self, out: &mut [u8]) {
                let mut at = 0;
                $(
                    self.$i.put(&mut out[at..]);
                    at += $t::SIZE;
                )+
                let _ = at;
            }
            #[inline(always)]
            fn get(bytes: &[u8]) -> Option<Self> {
                let mut at = 0;
                Some(($({
                    let value = $t::get(bytes.get(at..)?)?;
                    at += $t::SIZE;
                    let _ = at;
                    value
                },)+))
            }
        }
    )*};
}
tuple! {
    (A 0, B 1)
    (A 0, B 1, C 2)
    (A 0, B 1, C 2, D 3)
}

/// How one plain type travels, through functions monomorphized once, in the table.
struct Plain {
    size: usize,
    /// Whether a value's bytes in memory are its wire bytes (see [`raw`]).
    raw: bool,
    /// Checks that every `size` bytes are a value; the first that is not, if any.
    check: fn(&[u8]) -> Result<(), usize>,
    /// Appends `n` values (at the pointer) as wire bytes.
    encode: unsafe fn(*const u8, usize, &mut Vec<u8>),
    /// Writes the values of `bytes` (a multiple of `size` long) at the pointer, or says
    /// which one is invalid.
    decode: unsafe fn(&[u8], *mut u8) -> Result<(), usize>,
}

/// # Safety
/// `items` points to `n` initialized values of `T`.
unsafe fn encode<T: Fixed>(items: *const u8, n: usize, out: &mut Vec<u8>) {
    // SAFETY: per the caller.
    let items = unsafe { std::slice::from_raw_parts(items.cast::<T>(), n) };
    if raw::<T>() {
        // SAFETY: a raw type has no padding (its size is the sum of its fields'), so all
        // `n * size_of::<T>()` bytes of the slice are initialized.
        let bytes = unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<u8>(), n * T::SIZE) };
        out.extend_from_slice(bytes);
    } else {
        let start = out.len();
        out.resize(start + n * T::SIZE, 0);
        for (item, to) in items.iter().zip(out[start..].chunks_exact_mut(T::SIZE)) {
            item.put(to);
        }
    }
}

/// # Safety
/// `bytes.len()` is a multiple of `T::SIZE`; `out` is valid for writes of
/// `bytes.len() / T::SIZE` values of `T`.
unsafe fn decode<T: Fixed>(bytes: &[u8], out: *mut u8) -> Result<(), usize> {
    if raw::<T>() {
        if !T::ANY_BITS {
            if let Some(bad) = bytes
                .chunks_exact(T::SIZE)
                .position(|b| T::get(b).is_none())
            {
                return Err(bad);
            }
        }
        // SAFETY: `out` has room for the values, whose bytes these are (a raw type's memory
        // is its wire bytes), each checked to be a value above unless any bytes are; `out`
        // is the caller's fresh buffer, not inside `bytes`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, bytes.len()) };
    } else {
        let out = out.cast::<T>();
        for (i, b) in bytes.chunks_exact(T::SIZE).enumerate() {
            let value = T::get(b).ok_or(i)?;
            // SAFETY: `i` is below the number of values `out` has room for.
            unsafe { out.add(i).write(value) };
        }
    }
    Ok(())
}

fn check<T: Fixed>(bytes: &[u8]) -> Result<(), usize> {
    if T::ANY_BITS {
        return Ok(());
    }
    match bytes
        .chunks_exact(T::SIZE)
        .position(|b| T::get(b).is_none())
    {
        Some(bad) => Err(bad),
        None => Ok(()),
    }
}

fn entry<T: Fixed>() -> (TypeId, Plain) {
    (
        TypeId::of::<T>(),
        Plain {
            size: T::SIZE,
            raw: raw::<T>(),
            check: check::<T>,
            encode: encode::<T>,
            decode: decode::<T>,
        },
    )
}

/// Every scalar, as the argument list of a macro.
macro_rules! with_scalars {
    ($m:ident!($($pre:tt)*)) => {
        $m!($($pre)* u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool, char)
    };
}

/// The plain types of the table: each scalar, alone, in arrays and in tuples of its kind.
macro_rules! add_scalars {
    ($table:ident; $($s:ty),*) => {$(
        $table.extend([
            entry::<$s>(),
            entry::<($s, $s, $s)>(),
            entry::<($s, $s, $s, $s)>(),
            entry::<[$s; 2]>(),
            entry::<[$s; 3]>(),
            entry::<[$s; 4]>(),
            entry::<[$s; 8]>(),
            entry::<[$s; 16]>(),
            entry::<[$s; 32]>(),
        ]);
        with_scalars!(add_pairs!($table, $s;));
    )*};
}

/// Pairs of `$a` and each scalar.
macro_rules! add_pairs {
    ($table:ident, $a:ty; $($b:ty),*) => {
        $table.extend([$(entry::<($a, $b)>()),*]);
    };
}

/// Hashes a [`TypeId`], which is a hash already: as it is, not through SipHash again (the
/// lookup happens for every chunk, on both sides, and SipHash was most of its time).
#[derive(Default)]
struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    /// For a `TypeId` that hashes itself as bytes instead (std does not promise how).
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

static TABLE: LazyLock<HashMap<TypeId, Plain, BuildHasherDefault<TypeIdHasher>>> =
    LazyLock::new(|| {
        let mut table = HashMap::default();
        with_scalars!(add_scalars!(table;));
        table
    });

/// The bulk layout of `T`, for a type in the table: proof that `T` is that [`Fixed`] type.
pub(crate) struct PlainOf<T> {
    plain: &'static Plain,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> Clone for PlainOf<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for PlainOf<T> {}

impl<T> PlainOf<T> {
    /// `T`'s bulk layout, if it has one.
    pub(crate) fn get() -> Option<PlainOf<T>> {
        // No type of the table is zero-sized or has a destructor: most others (`()`,
        // `String`, `Vec`) are told apart at compile time, without a lookup per chunk (a
        // fifth of a microsecond in each `apply`, as every chunk asks for both its types).
        if std::mem::size_of::<T>() == 0 || std::mem::needs_drop::<T>() {
            return None;
        }
        // `type_id_of` erases lifetimes, and no type of the table has any: a match is `T`.
        TABLE.get(&type_id_of::<T>()).map(|plain| PlainOf {
            plain,
            _t: PhantomData,
        })
    }

    /// Appends the values' wire bytes.
    pub(crate) fn put(self, values: &[T], out: &mut Vec<u8>) {
        // SAFETY: the table's entry for `T`'s `TypeId` was made for `T` (see `get`), and the
        // slice holds `values.len()` values.
        unsafe { (self.plain.encode)(values.as_ptr().cast(), values.len(), out) }
    }

    /// The `count` values' bytes at the front of `bytes` (not checked), and the bytes after.
    pub(crate) fn split(self, count: u64, bytes: &[u8]) -> Result<(&[u8], &[u8]), BulkError> {
        let size = self.plain.size;
        let len = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(size))
            .filter(|&len| len <= bytes.len())
            .ok_or(BulkError::Length {
                count,
                size,
                len: bytes.len(),
            })?;
        Ok(bytes.split_at(len))
    }

    /// Appends the values of `bytes` (a multiple of the size long, as [`PlainOf::split`]
    /// gives) to `values`; nothing if one is invalid.
    pub(crate) fn append(self, bytes: &[u8], values: &mut Vec<T>) -> Result<(), BulkError> {
        let n = self.count(bytes)?;
        // Bounded by the bytes received.
        values.reserve(n);
        let at = values.len();
        // SAFETY: `values` has room for the `n` values after its `at` values, and is borrowed
        // mutably; `set_len` follows only their writing, all of them.
        unsafe {
            self.write_at(bytes, values.as_mut_ptr().add(at))?;
            values.set_len(at + n);
        }
        Ok(())
    }

    /// How many values `bytes` holds, if it is a multiple of the size long.
    pub(crate) fn count(self, bytes: &[u8]) -> Result<usize, BulkError> {
        let size = self.plain.size;
        if bytes.len() % size != 0 {
            return Err(BulkError::Length {
                count: (bytes.len() / size) as u64,
                size,
                len: bytes.len(),
            });
        }
        Ok(bytes.len() / size)
    }

    /// Writes the values of `bytes` (a multiple of the size long, as [`PlainOf::count`]
    /// checks) at `dest`. If one is invalid, the error names it, and what was written at
    /// `dest` must not be read as `T`s.
    ///
    /// # Safety
    /// `dest` is valid for writes of as many `T`s as `bytes` holds, and nothing else reads or
    /// writes them meanwhile.
    pub(crate) unsafe fn write_at(self, bytes: &[u8], dest: *mut T) -> Result<(), BulkError> {
        self.count(bytes)?;
        // SAFETY: the entry is `T`'s (see `put`); `bytes` is a whole number of values, for
        // which `dest` has room (per the caller).
        unsafe { (self.plain.decode)(bytes, dest.cast()) }.map_err(BulkError::Invalid)
    }
}

/// The items of a chunk of arguments, read in place when their memory is their wire bytes,
/// else decoded into a vector first.
pub(crate) enum Items<'b, T> {
    /// Checked bytes of a raw type, read one value at a time.
    Raw { bytes: &'b [u8], _t: PhantomData<T> },
    /// Decoded values.
    Decoded(std::vec::IntoIter<T>),
}

impl<T> Iterator for Items<'_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        match self {
            Items::Raw { bytes, .. } => {
                let size = std::mem::size_of::<T>();
                let (value, rest) = bytes.split_at_checked(size)?;
                *bytes = rest;
                // SAFETY: `Items::Raw` is made only for a raw type of the table (its memory
                // is its `size_of` wire bytes), from bytes checked to be values of it; the
                // read is unaligned, as the chunk's bytes may be.
                Some(unsafe { value.as_ptr().cast::<T>().read_unaligned() })
            }
            Items::Decoded(values) => values.next(),
        }
    }
}

/// The items of a bulk chunk of arguments, given the bytes after its tag, and their count;
/// all of the bytes must be items.
pub(crate) fn items<T>(plain: PlainOf<T>, bytes: &[u8]) -> Result<(u64, Items<'_, T>), BulkError> {
    let (count, rest) = take_u64(bytes)?;
    let (items, after) = plain.split(count, rest)?;
    if !after.is_empty() {
        return Err(BulkError::Length {
            count,
            size: plain.plain.size,
            len: rest.len(),
        });
    }
    if plain.plain.raw {
        (plain.plain.check)(items).map_err(BulkError::Invalid)?;
        return Ok((
            count,
            Items::Raw {
                bytes: items,
                _t: PhantomData,
            },
        ));
    }
    let mut values = Vec::new();
    plain.append(items, &mut values)?;
    Ok((count, Items::Decoded(values.into_iter())))
}

/// Writes a chunk of results in the bulk layout, value by value.
pub(crate) struct ResultWriter<T> {
    plain: PlainOf<T>,
    /// The values, for a type that is not raw (written out at the end).
    values: Vec<T>,
    panics: u64,
}

impl<T> ResultWriter<T> {
    /// Starts a chunk of `count` results in `out` (emptied).
    pub(crate) fn new(plain: PlainOf<T>, count: u64, out: &mut Vec<u8>) -> ResultWriter<T> {
        out.clear();
        out.push(BULK);
        out.extend_from_slice(&count.to_le_bytes());
        // The count of panics, written by `finish`.
        out.extend_from_slice(&0u64.to_le_bytes());
        if plain.plain.raw {
            // Room for every value at once, up to a bound (a count is bounded by the bytes
            // of its arguments, not by those of its results).
            let bytes =
                usize::try_from(count).map_or(usize::MAX, |n| n.saturating_mul(plain.plain.size));
            out.reserve(bytes.min(64 << 20));
        }
        ResultWriter {
            plain,
            values: Vec::new(),
            panics: 0,
        }
    }

    /// Appends the next value.
    #[inline]
    pub(crate) fn push(&mut self, value: T, out: &mut Vec<u8>) {
        if !self.plain.plain.raw {
            return self.values.push(value);
        }
        let size = std::mem::size_of::<T>();
        out.reserve(size);
        let at = out.len();
        // SAFETY: a raw type's memory is its `size_of` wire bytes, all initialized (no
        // padding); `out` has room for them after its `at` bytes (reserved above).
        unsafe {
            out.as_mut_ptr().add(at).cast::<T>().write_unaligned(value);
            out.set_len(at + size);
        }
    }

    /// The item at `index` panicked: `push` was not called for it.
    pub(crate) fn panicked(&mut self) {
        self.panics += 1;
    }

    /// Writes the values not yet written and the count of panics; the panics themselves
    /// follow, appended by the caller.
    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        self.plain.put(&self.values, out);
        out[9..17].copy_from_slice(&self.panics.to_le_bytes());
    }
}

/// Appends a chunk of arguments in the bulk layout: the tag, the count, the items.
pub(crate) fn put_items<T>(plain: PlainOf<T>, items: &[T], out: &mut Vec<u8>) {
    out.reserve(9 + items.len() * plain.plain.size);
    out.push(BULK);
    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
    plain.put(items, out);
}

/// Items [`put_iter`] reads before it copies them into the chunk (at most 32 KiB of the
/// largest plain type on the stack).
const PUT_BATCH: usize = 64;

/// Appends a chunk of arguments in the bulk layout, read from `items` as they are written
/// (no vector of them first); their count.
pub(crate) fn put_iter<T>(
    plain: PlainOf<T>,
    items: impl Iterator<Item = T>,
    out: &mut Vec<u8>,
) -> u64 {
    let (lo, hi) = items.size_hint();
    // The header and, for a told length, the items: one allocation for a fresh buffer,
    // where growing it piece by piece took three for a chunk of one item.
    let told = if hi == Some(lo) { lo } else { 0 };
    out.reserve(told.saturating_mul(plain.plain.size).saturating_add(9));
    let start = out.len();
    out.push(BULK);
    // The count, written at the end.
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut count = 0u64;
    if plain.plain.raw {
        let size = std::mem::size_of::<T>();
        let mut items = items;
        if hi == Some(lo) {
            // A told length (bounded by `take` in case it is wrong): written in one pass,
            // without a check of the room per item (reserved above), a batch at a time.
            // The batch is this frame's own: written straight into `out`, each item was a
            // store the compiler could not tell from the iterator's state behind its `&mut`,
            // so the state went back to memory on every item (W3's feeding thread spent
            // about 2 ns an item here).
            let at = out.len();
            let base = out.as_mut_ptr();
            let mut written = 0;
            let mut batch = [const { MaybeUninit::<T>::uninit() }; PUT_BATCH];
            let mut items = items.by_ref().take(lo);
            loop {
                let mut n = 0;
                for slot in batch.iter_mut() {
                    let Some(item) = items.next() else { break };
                    slot.write(item);
                    n += 1;
                }
                // SAFETY: the first `n` slots of `batch` were written above, and a raw type's
                // memory is its `size_of` wire bytes, all initialized (no padding);
                // `written + n <= lo`, and `out` has room for `lo` values after its `at`
                // bytes (reserved above); `batch` is a local, apart from `out`.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        batch.as_ptr().cast::<u8>(),
                        base.add(at + written * size),
                        n * size,
                    )
                };
                written += n;
                if n < PUT_BATCH {
                    break;
                }
            }
            // SAFETY: the `written` values after `at` were written above.
            unsafe { out.set_len(at + written * size) };
            count = written as u64;
        }
        for item in items {
            out.reserve(size);
            let at = out.len();
            // SAFETY: as in `ResultWriter::push`.
            unsafe {
                out.as_mut_ptr().add(at).cast::<T>().write_unaligned(item);
                out.set_len(at + size);
            }
            count += 1;
        }
    } else {
        let values: Vec<T> = items.collect();
        count = values.len() as u64;
        plain.put(&values, out);
    }
    out[start + 1..start + 9].copy_from_slice(&count.to_le_bytes());
    count
}

/// Reads a `u64` (little-endian) from the front of `bytes`.
pub(crate) fn take_u64(bytes: &[u8]) -> Result<(u64, &[u8]), BulkError> {
    let (head, rest) = bytes.split_first_chunk::<8>().ok_or(BulkError::Truncated)?;
    Ok((u64::from_le_bytes(*head), rest))
}

/// A bulk chunk of results, read.
#[derive(Debug)]
pub(crate) struct BulkResults<'b> {
    /// How many items the chunk had.
    pub(crate) count: u64,
    /// The bytes of the values of the items that did not panic, in order, as many as they
    /// are (not yet checked: [`PlainOf::append`] does).
    pub(crate) values: &'b [u8],
    /// The items that panicked (strictly increasing indices below `count`), and why.
    pub(crate) panics: Vec<(u64, Panic)>,
}

/// Decodes a bulk chunk of results, given the bytes after its tag; all of the bytes must be
/// the chunk's.
pub(crate) fn take_results<R>(
    plain: PlainOf<R>,
    bytes: &[u8],
) -> Result<BulkResults<'_>, BulkError> {
    let (count, rest) = take_u64(bytes)?;
    let (panicked, rest) = take_u64(rest)?;
    let ok = count.checked_sub(panicked).ok_or(BulkError::Panics)?;
    let (values, mut rest) = plain.split(ok, rest)?;
    // Each panic takes at least two bytes: a count the bytes cannot hold is refused before
    // anything is reserved for it.
    if panicked > rest.len() as u64 {
        return Err(BulkError::Panics);
    }
    let mut panics = Vec::with_capacity(panicked as usize);
    for _ in 0..panicked {
        let ((index, panic), after) =
            postcard::take_from_bytes::<(u64, Panic)>(rest).map_err(|_| BulkError::Panics)?;
        let after_last = panics.last().is_none_or(|(last, _)| index > *last);
        if index >= count || !after_last {
            return Err(BulkError::Panics);
        }
        panics.push((index, panic));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(BulkError::Length {
            count,
            size: plain.plain.size,
            len: bytes.len(),
        });
    }
    Ok(BulkResults {
        count,
        values,
        panics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The items of a bulk chunk of arguments (the bytes after the tag), collected.
    fn take_items<T>(plain: PlainOf<T>, bytes: &[u8]) -> Result<Vec<T>, BulkError> {
        items(plain, bytes).map(|(_, items)| items.collect())
    }

    /// Round trip through the bulk layout, against postcard's.
    fn round_trip<T>(values: &[T])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let plain = PlainOf::<T>::get()
            .unwrap_or_else(|| panic!("{} has no bulk layout", std::any::type_name::<T>()));
        let mut out = Vec::new();
        put_items(plain, values, &mut out);
        assert_eq!(out[0], BULK);
        let back = take_items(plain, &out[1..]).unwrap();
        assert_eq!(back, values, "{}", std::any::type_name::<T>());
        // The same values as postcard's layout gives.
        let serde: Vec<T> = postcard::from_bytes(&postcard::to_stdvec(values).unwrap()).unwrap();
        assert_eq!(back, serde);
    }

    #[test]
    fn every_plain_type_round_trips() {
        round_trip(&[0u8, 1, 255]);
        round_trip(&[0u16, 1, u16::MAX]);
        round_trip(&[0u32, 7, u32::MAX]);
        round_trip(&[0u64, 1 << 40, u64::MAX]);
        round_trip(&[0u128, u128::MAX]);
        round_trip(&[0usize, usize::MAX]);
        round_trip(&[i8::MIN, -1, i8::MAX]);
        round_trip(&[i16::MIN, -1, i16::MAX]);
        round_trip(&[i32::MIN, -1, i32::MAX]);
        round_trip(&[i64::MIN, -1, i64::MAX]);
        round_trip(&[i128::MIN, -1, i128::MAX]);
        round_trip(&[isize::MIN, -1, isize::MAX]);
        round_trip(&[0.0f32, -1.5, f32::MAX, f32::INFINITY]);
        round_trip(&[0.0f64, -1.5, f64::MIN_POSITIVE, f64::NEG_INFINITY]);
        round_trip(&[true, false, true]);
        round_trip(&['a', 'é', '\u{10FFFF}', '\0']);
        round_trip(&[(1u32, 2.5f32), (u32::MAX, -0.0)]);
        round_trip(&[(1u8, 2u64), (255, u64::MAX)]);
        round_trip(&[(true, 'x'), (false, '\u{1F600}')]);
        round_trip(&[(-1i16, 3u128)]);
        round_trip(&[(1.0f64, 2.0f64, 3.0f64)]);
        round_trip(&[(1u16, 2u16, 3u16, 4u16)]);
        round_trip(&[[1u64, 2], [3, 4]]);
        round_trip(&[[true, false, true]]);
        round_trip(&[[1.5f32; 4]]);
        round_trip(&[[7u8; 8], [9; 8]]);
        round_trip(&[[-3i32; 16]]);
        round_trip(&[['z'; 32]]);
        round_trip::<u64>(&[]);
    }

    #[test]
    fn only_the_tables_types_have_a_bulk_layout() {
        #[derive(Clone, Copy)]
        #[repr(C)]
        struct Point {
            _x: u32,
            _y: u32,
        }
        assert!(PlainOf::<Point>::get().is_none());
        assert!(PlainOf::<String>::get().is_none());
        assert!(PlainOf::<Vec<u64>>::get().is_none());
        assert!(PlainOf::<Option<u64>>::get().is_none());
        assert!(PlainOf::<()>::get().is_none());
        assert!(PlainOf::<(u64, u64, u32)>::get().is_none());
        assert!(PlainOf::<[u64; 5]>::get().is_none());
        // Raw when the memory is the wire bytes: arrays, scalars, tuples without padding.
        assert!(raw::<u64>() == cfg!(target_endian = "little"));
        assert!(raw::<bool>());
        assert!(!raw::<(u8, u64)>(), "padding after the u8");
        assert_eq!(<(u8, u64)>::SIZE, 9);
    }

    #[test]
    fn a_chunk_of_told_length_is_written_into_one_allocation() {
        // A `map` with chunks of one item encodes one chunk per item: a fresh buffer is
        // sized once for the header and the items, not grown piece by piece.
        let plain = PlainOf::<u64>::get().unwrap();
        for n in [0u64, 1, 3, 63, 64, 65, 128, 1000] {
            let mut out = Vec::new();
            assert_eq!(put_iter(plain, 0..n, &mut out), n);
            assert_eq!(out.capacity(), 9 + 8 * n as usize, "{n} items");
            assert_eq!(
                take_items(plain, &out[1..]).unwrap(),
                (0..n).collect::<Vec<_>>()
            );
        }
        // A length not told: still right, however the buffer grew.
        let mut out = Vec::new();
        let n = put_iter(plain, (0..10u64).filter(|x| x % 2 == 0), &mut out);
        assert_eq!(n, 5);
        assert_eq!(take_items(plain, &out[1..]).unwrap(), [0, 2, 4, 6, 8]);
    }

    /// Yields `0..yields` while telling an exact length of `tells`.
    struct Lying {
        next: u64,
        yields: u64,
        tells: usize,
    }

    impl Iterator for Lying {
        type Item = u64;

        fn next(&mut self) -> Option<u64> {
            (self.next < self.yields).then(|| {
                self.next += 1;
                self.next - 1
            })
        }

        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.tells, Some(self.tells))
        }
    }

    #[test]
    fn an_iterator_that_lies_about_its_length_still_gives_its_items() {
        let plain = PlainOf::<u64>::get().unwrap();
        for (yields, tells) in [(70, 200), (200, 70), (64, 65), (65, 64), (0, 10), (10, 0)] {
            let mut out = Vec::new();
            let items = Lying {
                next: 0,
                yields,
                tells,
            };
            assert_eq!(
                put_iter(plain, items, &mut out),
                yields,
                "{yields} told {tells}"
            );
            assert_eq!(
                take_items(plain, &out[1..]).unwrap(),
                (0..yields).collect::<Vec<_>>()
            );
        }
        // Pairs are copied as their memory too, a batch at a time.
        let pairs = PlainOf::<(u32, f32)>::get().unwrap();
        let mut out = Vec::new();
        let want: Vec<(u32, f32)> = (0..300).map(|i| (i, i as f32 / 4.0)).collect();
        assert_eq!(put_iter(pairs, want.iter().copied(), &mut out), 300);
        assert_eq!(take_items(pairs, &out[1..]).unwrap(), want);
    }

    #[test]
    fn hostile_bulk_chunks_are_typed_errors() {
        let plain = PlainOf::<u64>::get().unwrap();
        let mut good = Vec::new();
        put_items(plain, &[1u64, 2, 3], &mut good);
        let body = &good[1..];
        // Truncated: in the header, in the items; trailing bytes.
        assert_eq!(take_items(plain, &body[..5]), Err(BulkError::Truncated));
        assert!(matches!(
            take_items(plain, &body[..body.len() - 1]),
            Err(BulkError::Length { count: 3, .. })
        ));
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(matches!(
            take_items(plain, &longer),
            Err(BulkError::Length { .. })
        ));
        // A count nothing could hold: refused before anything is allocated for it.
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        assert!(matches!(
            take_items(plain, &huge),
            Err(BulkError::Length { .. })
        ));
        // Bad bool and char values.
        let bools = PlainOf::<bool>::get().unwrap();
        let mut bad = 3u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&[1, 0, 2]);
        assert_eq!(take_items(bools, &bad), Err(BulkError::Invalid(2)));
        let chars = PlainOf::<char>::get().unwrap();
        let mut bad = 2u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&u32::from('a').to_le_bytes());
        bad.extend_from_slice(&0xD800u32.to_le_bytes());
        assert_eq!(take_items(chars, &bad), Err(BulkError::Invalid(1)));
        let pairs = PlainOf::<(u8, bool)>::get().unwrap();
        let mut bad = 1u64.to_le_bytes().to_vec();
        bad.extend_from_slice(&[7, 9]);
        assert_eq!(take_items(pairs, &bad), Err(BulkError::Invalid(0)));
    }
}
