//! What crosses between the pool and its workers: the wire messages, and functions that
//! travel by identity.
//!
//! A task is a plain `fn` pointer (`fn(A) -> R`): a function item, or a closure that
//! captures nothing, coerces to one at the caller's line, and a closure that captures is
//! refused there by the type checker ("closures can only be coerced to `fn` types if they do
//! not capture any variables"), which is what `cargo check` and rust-analyzer show. Its
//! captures would live in this process's memory, which a worker does not share.
//!
//! The pointer travels as an [`FnId`] (its offset in the executable), beside that of
//! `trampoline::<A, R>`, monomorphized for the argument and result types. In the worker, the
//! trampoline decodes a chunk of `A`s, calls the function on each (catching panics one by
//! one), and encodes the `Result<R, Panic>`s. The worker calls every trampoline through one
//! uniform signature, so it needs no knowledge of the types. Both ids are checked against the
//! executable at spawn time (see `pool_ipc::FnId`).
//!
//! `starmap`'s functions take several arguments, and a trait over `fn` pointers of every
//! arity would not accept a function item (trait matching does not coerce). So a
//! [`StarFn`] travels as its type instead: the trampoline is monomorphized for it and
//! *conjures* the value, which is sound only for a zero-sized type, checked when the call is
//! compiled (a `const` assertion, which reports the caller's closure in its "instantiating"
//! note). The type must also be `Copy` and `'static`: a closure capturing a zero-sized value
//! that is not `Copy` (a capability token, a type with a destructor) or that borrows would be
//! zero-sized too, and conjuring it would forge that value.

use std::any::TypeId;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

use pool_ipc::FnId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::error::codec;

/// The uniform signature of trampolines: the address of the user's function (0 for one that
/// needs none), the encoded chunk, and where to write the encoded results.
pub(crate) type Trampoline = fn(usize, &[u8], &mut Vec<u8>) -> Result<(), String>;

/// A task function as it travels to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Call {
    pub(crate) trampoline: FnId,
    /// The user's function, for trampolines that take it as data (`fn` pointers); `None`
    /// for one whose function is its type (a zero-sized `StarFn`).
    pub(crate) function: Option<FnId>,
}

/// A panic caught in a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Panic {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    /// The backtrace at the panic, if one was captured (`RUST_BACKTRACE`).
    pub(crate) backtrace: Option<String>,
}

/// Functions of several arguments, for [`Pool::starmap`](crate::Pool::starmap): each item is
/// the tuple of arguments. Implemented for every `Fn` of 2 to 5 arguments.
pub trait StarFn<Args, R> {
    /// Calls the function with the tuple's elements as arguments.
    fn call_with(&self, args: Args) -> R;
}

macro_rules! star_fn {
    ($($name:ident),+) => {
        impl<F, $($name,)+ R> StarFn<($($name,)+), R> for F
        where
            F: Fn($($name),+) -> R,
        {
            #[allow(non_snake_case)]
            fn call_with(&self, ($($name,)+): ($($name,)+)) -> R {
                self($($name),+)
            }
        }
    };
}
star_fn!(A, B);
star_fn!(A, B, C);
star_fn!(A, B, C, D);
star_fn!(A, B, C, D, E);

/// The value of a zero-sized function type.
fn conjure<F: Copy + 'static>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "pool tasks must be functions or closures that capture nothing"
        )
    };
    // SAFETY: `F` is zero-sized (checked at compile time above), so a value has no bytes to
    // initialize. On stable Rust only function items and closures implement `Fn`; being
    // zero-sized, `Copy` and `'static`, this one captures at most `Copy`, `'static`, data-free
    // values, which have no destructor and no invariant a duplicate could break.
    unsafe { std::mem::zeroed::<F>() }
}

thread_local! {
    /// The last panic of this thread, recorded by the worker's panic hook.
    static LAST_PANIC: RefCell<Option<Panic>> = const { RefCell::new(None) };
}

/// Installs the worker's panic hook: it records the panic for the task's result instead of
/// printing it (the parent reports it through `get`, as Python re-raises in the parent).
pub(crate) fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let message = panic_message(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let panic = Panic {
            message,
            location,
            backtrace: captured_backtrace(),
        };
        if let Some(report) = REPORT_PANIC.get() {
            report(&panic);
        }
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(panic));
    }));
}

/// The backtrace here, as text, when the environment asks for one (`RUST_BACKTRACE` or
/// `RUST_LIB_BACKTRACE`), as std's own hook prints one only then.
pub(crate) fn captured_backtrace() -> Option<String> {
    let backtrace = std::backtrace::Backtrace::capture();
    (backtrace.status() == std::backtrace::BacktraceStatus::Captured).then(|| backtrace.to_string())
}

/// Called by the panic hook with every panic, before unwinding (or aborting) starts.
static REPORT_PANIC: std::sync::OnceLock<fn(&Panic)> = std::sync::OnceLock::new();

/// Makes the panic hook also hand each panic to `report` (the worker sends it to its parent).
pub(crate) fn report_panics_to(report: fn(&Panic)) {
    let _ = REPORT_PANIC.set(report);
}

/// The message of a panic, from its payload (`panic!` makes a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Runs `f`, turning a panic into a [`Panic`].
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        // The hook's record has the location; without the hook (a `Process` child keeps
        // std's, which prints), the payload still has the message.
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| Panic {
                message: panic_message(&*payload),
                location: None,
                backtrace: None,
            })
    })
}

/// Runs `f` on every item of an encoded chunk (a sequence of `A`s), writing the encoded
/// sequence of `Result<R, Panic>`s to `out`.
///
/// Items are decoded, run and encoded one at a time: no vector of arguments or of results
/// exists, which for a chunk of many small items is most of the work saved (a `Result<R,
/// Panic>` is several times the size of a small `R`).
fn run_chunk<A, R>(chunk: &[u8], out: &mut Vec<u8>, f: impl Fn(A) -> R) -> Result<(), String>
where
    A: DeserializeOwned,
    R: Serialize,
{
    // Two copies of the loop: one that may take the bulk path, and serde's alone, which a map
    // of small items runs (a bulk check in its loop, even never taken, cost W3 a fifth).
    if ItemCodec::<A>::new().byte_vec || ItemCodec::<R>::new().byte_vec {
        run_items::<A, R, true>(chunk, out, &f)
    } else {
        run_items::<A, R, false>(chunk, out, &f)
    }
}

/// [`run_chunk`]'s loop; `BULK`: byte vectors may take the bulk path (see [`ItemCodec`]).
fn run_items<A, R, const BULK: bool>(
    chunk: &[u8],
    out: &mut Vec<u8>,
    f: &impl Fn(A) -> R,
) -> Result<(), String>
where
    A: DeserializeOwned,
    R: Serialize,
{
    // Which value failed, of which type, and why: the message reaches the caller's error.
    let cannot_decode = |i: u64, e: postcard::Error| {
        let what = std::any::type_name::<A>();
        format!("cannot decode the chunk's argument {i} as {what}: {e}")
    };
    let cannot_encode = |i: u64, e: postcard::Error| {
        let what = std::any::type_name::<R>();
        format!("cannot encode the result of the chunk's item {i} as {what}: {e}")
    };
    // A sequence's length is the same varint as a `u64`.
    let (len, mut items) = postcard::take_from_bytes::<u64>(chunk)
        .map_err(|e| format!("cannot decode the chunk's count of arguments: {e}"))?;
    out.clear();
    let mut encoder = postcard::Serializer {
        output: Appender(out),
    };
    len.serialize(&mut encoder)
        .map_err(|e| format!("cannot encode the count of results: {e}"))?;
    let (args, results) = (ItemCodec::<A, BULK>::new(), ItemCodec::<R, BULK>::new());
    // serde's path reads on from one decoder (no cursor to hand back per item: a map of small
    // items is mostly this loop); the bulk path from `items`.
    let mut decoder = postcard::Deserializer::from_bytes(items);
    for i in 0..len {
        let item = if args.bulk() {
            let (item, rest) = args.take(items).map_err(|e| cannot_decode(i, e))?;
            items = rest;
            item
        } else {
            A::deserialize(&mut decoder).map_err(|e| cannot_decode(i, e))?
        };
        // A `Result<R, Panic>` as postcard writes it (the variant's index, one byte, then the
        // value), written by hand: serde's enum path was a fifth of a worker's time on small
        // results. The parent reads it back by hand too (`payload::decode_each`).
        match catch(|| f(item)) {
            Ok(value) => {
                encoder.output.0.push(0);
                results
                    .encode(&value, &mut encoder)
                    .map_err(|e| cannot_encode(i, e))?;
            }
            Err(panic) => {
                encoder.output.0.push(1);
                panic
                    .serialize(&mut encoder)
                    .map_err(|e| cannot_encode(i, e))?;
            }
        }
    }
    Ok(())
}

/// Encodes and decodes values of one type `T` as postcard does, with a bulk path for byte
/// vectors.
///
/// serde sees a `Vec<u8>` as a sequence of numbers: postcard writes each `u8` as one byte, so
/// the wire already holds a varint length and the raw bytes (exactly what `serialize_bytes`
/// writes), but it gets there one call per byte, both ways (about 0.6 GiB/s where [`Bytes`]
/// runs at memory speed). A codec made for `T = Vec<u8>` (told by its [`TypeId`], with
/// lifetimes erased, see [`type_id_of`]) writes and reads those same bytes in one copy, so a
/// user gets the speed of [`Bytes`] without knowing of it. Every other type takes serde's
/// path; the bytes on the wire are the same either way, and the bulk reader checks them as
/// postcard does (a length past the end is an error, before anything is allocated).
///
/// Decided once per chunk, not per item: the check is a call through a vtable. A loop over
/// small items is sensitive to the mere presence of the bulk branch, so a codec made with
/// `BULK = false` never takes it, and callers run such a loop when neither type is a byte
/// vector.
///
/// [`Bytes`]: crate::Bytes
pub(crate) struct ItemCodec<T: ?Sized, const BULK: bool = true> {
    byte_vec: bool,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<T: ?Sized, const BULK: bool> ItemCodec<T, BULK> {
    pub(crate) fn new() -> ItemCodec<T, BULK> {
        ItemCodec {
            byte_vec: type_id_of::<T>() == TypeId::of::<Vec<u8>>(),
            _t: std::marker::PhantomData,
        }
    }

    /// Whether `T` is `Vec<u8>`, whatever `BULK` says.
    pub(crate) fn is_byte_vec(&self) -> bool {
        self.byte_vec
    }

    /// Whether values take the bulk path.
    #[inline(always)]
    fn bulk(&self) -> bool {
        BULK && self.byte_vec
    }
}

impl<T: Serialize + ?Sized, const BULK: bool> ItemCodec<T, BULK> {
    /// Appends `value`, as `value.serialize` would.
    pub(crate) fn encode<S>(&self, value: &T, encoder: S) -> Result<S::Ok, S::Error>
    where
        S: serde::Serializer,
    {
        if self.bulk() {
            // SAFETY: `T` is `Vec<u8>` (same `TypeId`, and `Vec<u8>` has no lifetime that
            // erasing could have hidden), so the reference is to a `Vec<u8>`.
            let bytes = unsafe { &*std::ptr::from_ref(value).cast::<Vec<u8>>() };
            return encoder.serialize_bytes(bytes);
        }
        value.serialize(encoder)
    }
}

impl<T: DeserializeOwned, const BULK: bool> ItemCodec<T, BULK> {
    /// Decodes one value from the front of `bytes`, as `postcard::take_from_bytes` does.
    pub(crate) fn take<'b>(&self, bytes: &'b [u8]) -> postcard::Result<(T, &'b [u8])> {
        if self.bulk() {
            let (len, rest) = postcard::take_from_bytes::<usize>(bytes)?;
            let data = rest
                .get(..len)
                .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
            let value = std::mem::ManuallyDrop::new(data.to_vec());
            // SAFETY: `T` is `Vec<u8>` (see `encode`); the vector is moved into the `T`
            // read out of it (`ManuallyDrop`: it is not dropped here too).
            let value = unsafe { std::ptr::read(std::ptr::from_ref(&*value).cast::<T>()) };
            return Ok((value, &rest[len..]));
        }
        postcard::take_from_bytes::<T>(bytes)
    }
}

/// The [`TypeId`] of `T` with its lifetimes erased (`T` need not be `'static`): the trick of
/// the `typeid` crate. Two types that differ only in lifetimes get the same id, so it tells a
/// type apart only from types that have no lifetimes, which is all it is used for.
pub(crate) fn type_id_of<T: ?Sized>() -> TypeId {
    trait NonStaticAny {
        fn get_type_id(&self) -> TypeId
        where
            Self: 'static;
    }
    impl<T: ?Sized> NonStaticAny for std::marker::PhantomData<T> {
        fn get_type_id(&self) -> TypeId
        where
            Self: 'static,
        {
            TypeId::of::<T>()
        }
    }
    let phantom = std::marker::PhantomData::<T>;
    let erased: &dyn NonStaticAny = &phantom;
    // SAFETY: only the lifetime bound of the trait object changes; the one method called
    // reads nothing through the reference and returns a `TypeId`, which holds no lifetime.
    let erased =
        unsafe { std::mem::transmute::<&dyn NonStaticAny, &(dyn NonStaticAny + 'static)>(erased) };
    erased.get_type_id()
}

/// postcard's output appended to a borrowed vector (its own flavors own theirs), so that one
/// encoder writes a whole chunk's results.
pub(crate) struct Appender<'v>(pub(crate) &'v mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        // Most writes are a varint of a few bytes, which postcard has just stored byte by byte
        // into a buffer on the stack. A plain byte loop is turned back into a call to `memcpy`
        // by the optimiser (a fifth of an encoder's time on small items), and wider reads of
        // those fresh byte stores stall the core (store forwarding fails): so the copy reads
        // one byte at a time, with volatile reads the optimiser leaves as they are.
        if bytes.len() <= 16 {
            let v = &mut *self.0;
            v.reserve(bytes.len());
            let len = v.len();
            // SAFETY: `reserve` made room for `bytes.len()` more bytes after `len`; each read is
            // of a byte inside `bytes`, each write of a byte inside that room; the length
            // covers the bytes only once they are written, and `bytes` cannot overlap the
            // vector's spare capacity (borrowed shared while the vector is borrowed mutably).
            unsafe {
                let dst = v.as_mut_ptr().add(len);
                let src = bytes.as_ptr();
                for i in 0..bytes.len() {
                    dst.add(i).write(src.add(i).read_volatile());
                }
                v.set_len(len + bytes.len());
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn trampoline<A, R>(function: usize, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String>
where
    A: DeserializeOwned,
    R: Serialize,
{
    // SAFETY: `function` is the address of a `fn(A) -> R`: `Call::new` took it from one, in
    // this same build (checked at spawn), and monomorphized this trampoline for that type.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(function) };
    run_chunk(chunk, out, f)
}

fn star_trampoline<F, T, R>(_: usize, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String>
where
    F: StarFn<T, R> + Copy + 'static,
    T: DeserializeOwned,
    R: Serialize,
{
    let f: F = conjure();
    run_chunk(chunk, out, |t| f.call_with(t))
}

fn nullary_trampoline(function: usize, _: &[u8], _: &mut Vec<u8>) -> Result<(), String> {
    // SAFETY: `function` is the address of a `fn()`: `Call::new_nullary` took it from one, in
    // this same build (checked at spawn).
    let f = unsafe { std::mem::transmute::<usize, fn()>(function) };
    catch(f).map_err(|p| p.message)
}

impl Call {
    /// The call of a function of no arguments (a barrier's action); `run` reports its panic.
    pub(crate) fn new_nullary(f: fn()) -> Result<Call, Error> {
        Call::from_parts(nullary_trampoline, Some(f as usize))
    }

    fn from_parts(t: Trampoline, function: Option<usize>) -> Result<Call, Error> {
        let id = |addr: usize| FnId::new(addr).map_err(|e| Error::InvalidArgument(e.to_string()));
        Ok(Call {
            trampoline: id(t as usize)?,
            function: function.map(id).transpose()?,
        })
    }

    /// The call of `f` on items of type `A`.
    pub(crate) fn new<A, R>(f: fn(A) -> R) -> Result<Call, Error>
    where
        A: DeserializeOwned,
        R: Serialize,
    {
        Call::from_parts(trampoline::<A, R>, Some(f as usize))
    }

    /// The call of a function of several arguments on tuples of them.
    pub(crate) fn new_star<F, T, R>(_f: &F) -> Result<Call, Error>
    where
        F: StarFn<T, R> + Copy + 'static,
        T: DeserializeOwned,
        R: Serialize,
    {
        Call::from_parts(star_trampoline::<F, T, R>, None)
    }

    /// Runs the call on an encoded chunk, in a worker.
    pub(crate) fn run(&self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        // SAFETY: the id was made from a `Trampoline` in the parent, of this same build
        // (checked at spawn), so the address is that function.
        let t: Trampoline =
            unsafe { std::mem::transmute::<usize, Trampoline>(self.trampoline.addr()) };
        t(self.function.map_or(0, FnId::addr), chunk, out)
    }
}

/// Parent to worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run a chunk; its encoded items follow the message in the same frame.
    Task {
        job: u64,
        index: u32,
        call: Call,
        fds: u32,
    },
    /// Exit once the tasks before this message are done.
    Retire,
}

/// Worker to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The initializer ran (or there was none): ready for tasks.
    Ready,
    /// The initializer panicked.
    InitFailed { message: String },
    /// Starting the chunk.
    Started { job: u64, index: u32 },
    /// The chunk's results follow the message in the same frame.
    Finished { job: u64, index: u32 },
    /// `Finished` for one chunk and `Started` for the next, in one message (the next task had
    /// already arrived); the finished chunk's results follow.
    FinishedThenStarted {
        job: u64,
        index: u32,
        next_job: u64,
        next_index: u32,
    },
    /// The chunk could not be run at all (undecodable arguments).
    Failed {
        job: u64,
        index: u32,
        message: String,
    },
    /// The running task panicked; sent by the panic hook, before unwinding starts. Under
    /// `panic = "abort"` (or a panic that cannot unwind) the worker dies right after, and
    /// this is how the parent learns it was a panic rather than a crash.
    Panicking {
        message: String,
        location: Option<String>,
    },
}

/// Encodes `header` followed by `body` as one frame: the header is length-prefixed with a
/// u32 so that the body can be sent as a separate part, without copying it.
pub(crate) fn header_bytes<T: Serialize>(header: &T) -> Result<Vec<u8>, Error> {
    let encoded = postcard::to_stdvec(header).map_err(codec("encoding a message's header"))?;
    let mut out = Vec::with_capacity(encoded.len() + 4);
    out.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
    out.extend_from_slice(&encoded);
    Ok(out)
}

/// Splits a frame made by [`header_bytes`] + body into the decoded header and the body.
pub(crate) fn split_frame<T: DeserializeOwned>(frame: &[u8]) -> Result<(T, &[u8]), Error> {
    let len_bytes: [u8; 4] = frame
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::Codec(crate::error::CodecError::new(
                "frame shorter than its header length",
            ))
        })?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let header = frame.get(4..4 + len).ok_or_else(|| {
        Error::Codec(crate::error::CodecError::new(
            "frame shorter than its header",
        ))
    })?;
    let header = postcard::from_bytes(header).map_err(codec("decoding a message's header"))?;
    Ok((header, &frame[4 + len..]))
}

/// Whether the first outcome of an encoded chunk of results is a value (not a panic), read
/// without decoding the value.
pub(crate) fn outcome_is_value(bytes: &[u8]) -> Result<bool, Error> {
    let (len, rest) =
        postcard::take_from_bytes::<u64>(bytes).map_err(codec("decoding the count of outcomes"))?;
    match (len, rest.first()) {
        (0, _) | (_, None) => Err(Error::Codec(crate::error::CodecError::new(
            "no outcome in the results",
        ))),
        (_, Some(tag)) => Ok(*tag == 0),
    }
}

/// Decodes a chunk's results.
pub(crate) fn decode_results<R: DeserializeOwned>(
    bytes: &[u8],
) -> Result<Vec<Result<R, Panic>>, Error> {
    Ok(postcard::from_bytes(bytes).map_err(codec("decoding a chunk's results"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add((a, b): (u32, u32)) -> u32 {
        a + b
    }

    fn add2(a: u32, b: u32) -> u32 {
        a + b
    }

    #[test]
    fn the_appender_copies_every_short_length_exactly() {
        use postcard::ser_flavors::Flavor;
        let source: Vec<u8> = (1..=40).collect();
        for n in 0..=source.len() {
            let mut out = vec![0xAA; 3];
            Appender(&mut out).try_extend(&source[..n]).unwrap();
            assert_eq!(out[..3], [0xAA; 3], "length {n}: the bytes before are kept");
            assert_eq!(out[3..], source[..n], "length {n}");
        }
    }

    #[test]
    fn the_appender_writes_what_postcard_writes() {
        let values: Vec<(u64, String, Vec<u8>)> = [0u64, 1, 127, 128, 300, 1 << 35, u64::MAX]
            .into_iter()
            .map(|n| (n, "x".repeat(n as usize % 40), vec![7; n as usize % 100]))
            .collect();
        let mut out = vec![9u8];
        values
            .serialize(&mut postcard::Serializer {
                output: Appender(&mut out),
            })
            .unwrap();
        assert_eq!(out[0], 9, "appended, not overwritten");
        assert_eq!(out[1..], postcard::to_stdvec(&values).unwrap()[..]);
    }

    /// Encodes with a codec for `T` into a fresh vector.
    fn encoded_by_codec<T: Serialize>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ItemCodec::<T>::new()
            .encode(
                value,
                &mut postcard::Serializer {
                    output: Appender(&mut out),
                },
            )
            .unwrap();
        out
    }

    #[test]
    fn byte_vectors_take_the_bulk_path_with_postcards_bytes() {
        assert!(ItemCodec::<Vec<u8>>::new().byte_vec);
        assert!(!ItemCodec::<Vec<u16>>::new().byte_vec);
        assert!(!ItemCodec::<Vec<i8>>::new().byte_vec);
        assert!(!ItemCodec::<crate::Bytes>::new().byte_vec);
        assert!(!ItemCodec::<(Vec<u8>,)>::new().byte_vec);
        assert!(!ItemCodec::<&[u8]>::new().byte_vec);
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let wire = postcard::to_stdvec(&v).unwrap();
            assert_eq!(encoded_by_codec(&v), wire, "length {len}");
            let mut trailing = wire.clone();
            trailing.extend_from_slice(&[9, 9]);
            let (back, rest) = ItemCodec::<Vec<u8>>::new().take(&trailing).unwrap();
            assert_eq!(back, v);
            assert_eq!(rest, [9, 9]);
            // Other types still take serde's path, with the same results.
            let words: Vec<u16> = v.iter().map(|&b| u16::from(b) * 3).collect();
            assert_eq!(
                encoded_by_codec(&words),
                postcard::to_stdvec(&words).unwrap()
            );
            let (back, _) = ItemCodec::<Vec<u16>>::new()
                .take(&postcard::to_stdvec(&words).unwrap())
                .unwrap();
            assert_eq!(back, words);
        }
    }

    #[test]
    fn hostile_byte_vectors_are_errors_not_allocations() {
        let codec = ItemCodec::<Vec<u8>>::new();
        // A length past the end: nothing is allocated for it.
        assert!(codec.take(&[5, 1, 2]).is_err());
        assert!(
            codec
                .take(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
                .is_err()
        );
        // A varint longer than any `usize`, and one cut short.
        assert!(codec.take(&[0xff; 11]).is_err());
        assert!(codec.take(&[0x80]).is_err());
        assert!(codec.take(&[]).is_err());
        // Whatever postcard refuses, the bulk path refuses too, and both agree on the rest.
        // A fixed seed: the same inputs in every run.
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            proptest::test_runner::Config::default(),
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        );
        runner
            .run(
                &proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
                |bytes| {
                    let bulk = codec.take(&bytes).ok();
                    let serde = postcard::take_from_bytes::<Vec<u8>>(&bytes).ok();
                    proptest::prop_assert_eq!(bulk, serde);
                    Ok(())
                },
            )
            .unwrap();
    }

    fn double(v: Vec<u8>) -> Vec<u8> {
        v.iter().chain(&v).copied().collect()
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "makes a Call: resolving a function id reads the executable's program headers (dl_iterate_phdr), which Miri cannot call"
    )]
    fn a_chunk_of_byte_vectors_runs_and_answers_as_postcard_wrote_it() {
        let call = Call::new(double).unwrap();
        let items = vec![vec![1u8, 2], vec![], vec![7; 300]];
        let mut out = Vec::new();
        call.run(&postcard::to_stdvec(&items).unwrap(), &mut out)
            .unwrap();
        let results: Vec<Vec<u8>> = decode_results::<Vec<u8>>(&out)
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            results,
            items.iter().cloned().map(double).collect::<Vec<_>>()
        );
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "makes a Call: resolving a function id reads the executable's program headers (dl_iterate_phdr), which Miri cannot call"
    )]
    fn a_call_runs_its_function_over_a_chunk() {
        let call = Call::new(add).unwrap();
        let chunk = postcard::to_stdvec(&vec![(1u32, 2u32), (3, 4)]).unwrap();
        let mut out = Vec::new();
        call.run(&chunk, &mut out).unwrap();
        let results: Vec<Result<u32, Panic>> = decode_results(&out).unwrap();
        let values: Vec<u32> = results.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(values, [3, 7]);
        let star = Call::new_star(&add2).unwrap();
        star.run(&chunk, &mut out).unwrap();
        assert_eq!(decode_results::<u32>(&out).unwrap().len(), 2);
        let closure = Call::new(|x: u32| x * 10).unwrap();
        closure
            .run(&postcard::to_stdvec(&vec![4u32]).unwrap(), &mut out)
            .unwrap();
        assert_eq!(
            decode_results::<u32>(&out).unwrap()[0].as_ref().unwrap(),
            &40
        );
    }

    fn seven(_: ()) -> u8 {
        7
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "makes a Call: resolving a function id reads the executable's program headers (dl_iterate_phdr), which Miri cannot call"
    )]
    fn zero_sized_arguments_run_once_each() {
        // `()` takes no bytes: the count, not the bytes left, says how many items there are.
        let call = Call::new(seven).unwrap();
        let mut out = Vec::new();
        call.run(&postcard::to_stdvec(&vec![(), (), ()]).unwrap(), &mut out)
            .unwrap();
        let results = decode_results::<u8>(&out).unwrap();
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| matches!(r, Ok(7))));
        // A chunk cut short is an error, not fewer results.
        assert!(call.run(&[], &mut out).is_err());
        let add = Call::new(add).unwrap();
        let mut chunk = postcard::to_stdvec(&vec![(1u32, 2u32), (3, 4)]).unwrap();
        chunk.pop();
        assert!(add.run(&chunk, &mut out).is_err());
    }

    #[test]
    fn frames_split_back_into_header_and_body() {
        let mut frame = header_bytes(&FromWorker::Finished { job: 3, index: 4 }).unwrap();
        frame.extend_from_slice(b"body");
        let (h, body): (FromWorker, &[u8]) = split_frame(&frame).unwrap();
        assert!(matches!(h, FromWorker::Finished { job: 3, index: 4 }));
        assert_eq!(body, b"body");
        assert!(split_frame::<FromWorker>(&[9, 0, 0, 0, 1]).is_err());
        assert!(split_frame::<FromWorker>(&[]).is_err());
    }

    /// Part of the reliability suite: any bytes from a worker (or, for a worker, from its
    /// parent) decode to a message or a typed error. `cargo xtask chaos` runs more cases.
    #[test]
    fn chaos_hostile_protocol_frames_decode_or_fail_typed() {
        use proptest::prelude::*;
        let cases = pool_testkit::scale(2_000, 200_000) as u32;
        let config = ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let frame = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // A plausible header length, then garbage.
            (0u32..32, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(len, rest)| {
                let mut f = len.to_le_bytes().to_vec();
                f.extend(rest);
                f
            }),
        ];
        proptest::test_runner::TestRunner::new(config)
            .run(&frame, |frame| {
                let _ = split_frame::<FromWorker>(&frame);
                let _ = split_frame::<ToWorker>(&frame);
                let _ = decode_results::<u64>(&frame);
                let _ = decode_results::<String>(&frame);
                let _ = decode_results::<Vec<u8>>(&frame);
                Ok(())
            })
            .unwrap();
        pool_testkit::report(
            "hostile-protocol",
            &[("inputs", u64::from(cases)), ("panics", 0)],
        );
    }
}
