//! A chunk's bytes on the parent's side: the encoded arguments sent to a worker
//! ([`Payload`]), the results it sends back and their decoding, one item at a time, into a
//! job's [`Outcomes`] sink ([`ChunkResult`], [`decode_each`], [`FirstError`] for `map`).
//!
//! It is its own file because it knows nothing of workers, links or jobs: the job
//! (`job.rs`), the link to a worker (`link.rs`) and the driver all use it, and it uses none
//! of them.
//!
//! # Spare buffers
//!
//! A chunk of large arguments (eight 1 MiB items, say) is encoded into a buffer of several
//! MiB. The allocator serves a request that size with `mmap` and gives it back with `munmap`,
//! so every such chunk would fault its pages in anew, which costs about as long as encoding
//! into them, on the one thread that feeds every worker. A pool keeps a few of
//! these buffers between chunks instead ([`SpareBuffers`]). What it keeps is bounded, and
//! small buffers (which the allocator recycles well) are not kept at all.

use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;

use crate::Error;
use crate::bulk::{self, PlainOf};
use crate::task::{Appender, ItemCodec, Panic, type_id_of};

use super::placement::{PlaceAhead, Placed, Placement};

/// A chunk's encoded arguments and the descriptors of the handles inside them. Cheap to
/// clone: a requeued chunk is sent again from the same payload.
///
/// Only the bytes take an allocation of their own: most chunks gather no byte vectors and
/// carry no descriptors, and an empty `Arc` of each cost two allocations and two frees per
/// chunk, which a `map` with chunks of one item pays per item.
#[derive(Clone, Debug, Default)]
pub(crate) struct Payload {
    /// The encoded chunk; for a chunk of gathered byte vectors, the bytes around them.
    pub(crate) bytes: Arc<Vec<u8>>,
    /// Byte vectors sent where they are, between pieces of `bytes` (see
    /// [`Payload::with_parts`]).
    gathered: Option<Arc<Gathered>>,
    fds: Option<Arc<Vec<std::os::fd::OwnedFd>>>,
}

/// The byte vectors of a chunk (`Vec<u8>` or [`crate::Bytes`] arguments), moved from the
/// caller's input and sent from there: item `i` follows `bytes[..cuts[i]]`.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    items: Vec<Vec<u8>>,
    cuts: Vec<usize>,
}

impl Payload {
    /// A chunk of encoded bytes, with the descriptors of the handles inside it.
    pub(crate) fn new(bytes: Vec<u8>, fds: Vec<std::os::fd::OwnedFd>) -> Payload {
        Payload {
            bytes: Arc::new(bytes),
            gathered: None,
            fds: (!fds.is_empty()).then(|| Arc::new(fds)),
        }
    }

    /// A chunk of byte vectors, in postcard's layout as [`encode_byte_vecs`] writes it, but
    /// with the vectors kept where they are: the link sends the pieces in one message
    /// ([`Payload::with_parts`]), so their bytes are copied once, into the channel, instead of
    /// into a buffer first.
    pub(crate) fn gather(items: Vec<Vec<u8>>) -> Payload {
        let mut bytes = Vec::with_capacity(11 + 10 * items.len());
        let mut cuts = Vec::with_capacity(items.len());
        bytes.push(bulk::SERDE);
        let mut encoder = postcard::Serializer {
            output: Appender(&mut bytes),
        };
        // Writing into a vector cannot fail.
        let _ = serde::Serialize::serialize(&items.len(), &mut encoder);
        for item in &items {
            let _ = serde::Serialize::serialize(&item.len(), &mut encoder);
            cuts.push(encoder.output.0.len());
        }
        Payload {
            bytes: Arc::new(bytes),
            gathered: (!items.is_empty()).then(|| Arc::new(Gathered { items, cuts })),
            fds: None,
        }
    }

    /// The descriptors of the handles inside the arguments.
    pub(crate) fn fds(&self) -> &[std::os::fd::OwnedFd] {
        self.fds.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The message's pieces after the header (see [`Payload::with_parts`]).
    #[cfg(test)]
    pub(crate) fn parts(&self) -> Vec<&[u8]> {
        let mut parts = Vec::new();
        self.with_parts(&[], |all| parts.extend_from_slice(&all[1..]));
        parts
    }

    /// Calls `f` with the message's pieces, in order: `header`, then the encoded bytes, or,
    /// for gathered byte vectors, each vector after the bytes before it. A chunk that
    /// gathers nothing needs no vector of them.
    pub(crate) fn with_parts<'a, T>(
        &'a self,
        header: &'a [u8],
        f: impl FnOnce(&[&'a [u8]]) -> T,
    ) -> T {
        let Some(gathered) = &self.gathered else {
            return f(&[header, &self.bytes]);
        };
        let Gathered { items, cuts } = &**gathered;
        let mut parts = Vec::with_capacity(2 * items.len() + 2);
        parts.push(header);
        let mut at = 0;
        for (item, &cut) in items.iter().zip(cuts) {
            parts.push(&self.bytes[at..cut]);
            parts.push(&item[..]);
            at = cut;
        }
        parts.push(&self.bytes[at..]);
        f(&parts)
    }

    /// Whether the chunk is byte vectors gathered by [`Payload::gather`] (at least one).
    pub(crate) fn is_gathered(&self) -> bool {
        self.gathered.is_some()
    }

    /// Encodes a chunk of arguments into a buffer from `spare` (see [`encode_chunk`]).
    pub(crate) fn encode<A: serde::Serialize>(
        items: &[A],
        spare: &SpareBuffers,
    ) -> Result<Payload, Error> {
        let (bytes, fds) = encode_chunk(items, spare.take())?;
        Ok(Payload::new(bytes, fds))
    }
}

/// Encodes a chunk of arguments, into `buffer` if there is one, collecting the descriptors
/// of the handles inside them: in the bulk layout if `A` has one (see [`crate::bulk`]),
/// else in postcard's, each after the byte that says which.
pub(crate) fn encode_chunk<A: serde::Serialize>(
    items: &[A],
    buffer: Option<Vec<u8>>,
) -> Result<(Vec<u8>, Vec<std::os::fd::OwnedFd>), Error> {
    if let Some(plain) = PlainOf::<A>::get() {
        let mut bytes = buffer.unwrap_or_default();
        bytes.clear();
        bulk::put_items(plain, items, &mut bytes);
        return Ok((bytes, Vec::new()));
    }
    if let Some(items) = byte_vecs(items) {
        return Ok((encode_byte_vecs(items, buffer), Vec::new()));
    }
    crate::handles::encode_into(items, buffer, &[bulk::SERDE])
}

/// Moves the byte vector out of `item`, if `A` is `Vec<u8>` or [`crate::Bytes`]; else
/// hands the item back.
pub(crate) fn into_byte_vec<A>(item: A) -> Result<Vec<u8>, A> {
    let id = type_id_of::<A>();
    let item = std::mem::ManuallyDrop::new(item);
    if id == TypeId::of::<Vec<u8>>() {
        // SAFETY: `A` is `Vec<u8>` (same `TypeId`, no lifetime erased); it is moved out of
        // the `ManuallyDrop`, which does not drop it again.
        Ok(unsafe { std::ptr::read(std::ptr::from_ref(&*item).cast::<Vec<u8>>()) })
    } else if id == TypeId::of::<crate::Bytes>() {
        // SAFETY: as above, `A` is `Bytes`.
        Ok(unsafe { std::ptr::read(std::ptr::from_ref(&*item).cast::<crate::Bytes>()) }.0)
    } else {
        Err(std::mem::ManuallyDrop::into_inner(item))
    }
}

/// Makes an `A` of a byte vector, if `A` is `Vec<u8>` or [`crate::Bytes`] (the inverse of
/// [`into_byte_vec`]); else hands the vector back.
pub(crate) fn from_byte_vec<A>(bytes: Vec<u8>) -> Result<A, Vec<u8>> {
    let id = type_id_of::<A>();
    if id == TypeId::of::<Vec<u8>>() {
        let bytes = std::mem::ManuallyDrop::new(bytes);
        // SAFETY: `A` is `Vec<u8>` (same `TypeId`, no lifetime erased); the vector is moved
        // out of the `ManuallyDrop`, which does not drop it again.
        Ok(unsafe { std::ptr::read(std::ptr::from_ref(&*bytes).cast::<A>()) })
    } else if id == TypeId::of::<crate::Bytes>() {
        let bytes = std::mem::ManuallyDrop::new(crate::Bytes(bytes));
        // SAFETY: as above, `A` is `Bytes`.
        Ok(unsafe { std::ptr::read(std::ptr::from_ref(&*bytes).cast::<A>()) })
    } else {
        Err(bytes)
    }
}

/// Whether `A` is `Vec<u8>` or [`crate::Bytes`] (see [`into_byte_vec`]).
pub(crate) fn is_byte_vec<A>() -> bool {
    let id = type_id_of::<A>();
    id == TypeId::of::<Vec<u8>>() || id == TypeId::of::<crate::Bytes>()
}

/// A chunk of `Vec<u8>` arguments, seen as such; `None` for a chunk of anything else.
fn byte_vecs<A>(items: &[A]) -> Option<&[Vec<u8>]> {
    if type_id_of::<A>() == TypeId::of::<Vec<u8>>() {
        // SAFETY: `A` is `Vec<u8>` (same `TypeId`, and the type has no lifetime that erasing
        // could have hidden), so the slice is one of `Vec<u8>`s.
        Some(unsafe { std::slice::from_raw_parts(items.as_ptr().cast::<Vec<u8>>(), items.len()) })
    } else {
        None
    }
}

/// Encodes a chunk of `Vec<u8>` arguments as postcard encodes the sequence (a varint count,
/// then each vector's varint length and bytes) after the tag of that layout, one copy per
/// vector instead of a call per byte (see `task::ItemCodec`), into `buffer` if there is one.
fn encode_byte_vecs(items: &[Vec<u8>], buffer: Option<Vec<u8>>) -> Vec<u8> {
    use serde::Serializer;
    let mut bytes = buffer.unwrap_or_default();
    bytes.clear();
    // A varint of a `usize` takes at most 10 bytes.
    bytes.reserve(11 + items.iter().map(|v| 10 + v.len()).sum::<usize>());
    bytes.push(bulk::SERDE);
    let mut encoder = postcard::Serializer {
        output: Appender(&mut bytes),
    };
    // Writing into a vector cannot fail.
    let _ = serde::Serialize::serialize(&items.len(), &mut encoder);
    for item in items {
        let _ = encoder.serialize_bytes(item);
    }
    bytes
}

/// Decodes a chunk's encoded results (`body`, from the worker whose pid is given) into a
/// [`DecodedChunk`] of the job's result type, on the thread that received them (see
/// [`ChunkResult::Decoded`]).
/// `None` for a chunk in the bulk layout: its values are copied once, by the job's caller,
/// straight into the vector it returns, which decoding ahead would make two copies.
pub(crate) type Decoder = fn(body: &[u8], pid: u32) -> Option<Box<dyn Any + Send>>;

/// The [`Decoder`] of jobs whose results are `R`s.
pub(crate) fn decoder<R: DeserializeOwned + Send + 'static>() -> Decoder {
    decode_ahead::<R>
}

fn decode_ahead<R: DeserializeOwned + Send + 'static>(
    body: &[u8],
    pid: u32,
) -> Option<Box<dyn Any + Send>> {
    if body.first() == Some(&bulk::BULK) {
        return None;
    }
    let mut chunk = DecodedChunk::<R> {
        values: Vec::new(),
        failures: Vec::new(),
        outcomes: 0,
    };
    // As many as the results say they are; checked against the chunk when it is taken.
    let (items, serde) = match body.split_first() {
        Some((&bulk::SERDE, rest)) => (postcard::take_from_bytes::<u64>(rest).ok(), true),
        Some((&bulk::BULK, rest)) => (bulk::take_u64(rest).ok(), false),
        _ => (None, false),
    };
    let items = items.and_then(|(n, _)| u32::try_from(n).ok()).unwrap_or(0);
    // Every outcome takes at least a byte (its variant): a count the body cannot hold is
    // hostile, and reserving for it would abort the process, not fail the chunk. Bulk
    // values arrive as one vector, which needs no room here.
    if serde {
        chunk.reserve((items as usize).min(body.len()));
    }
    let mut pushed = 0;
    if let Err(error) = decode_each(body, items, pid, &mut pushed, &mut chunk) {
        chunk.fail(items - pushed, &error);
    }
    Some(Box::new(chunk))
}

/// A chunk's outcomes, decoded: the values of the items that succeeded, in order, and the
/// runs of items that failed, as (first item, how many, why).
#[derive(Debug)]
struct DecodedChunk<R> {
    values: Vec<R>,
    failures: Vec<(u32, u32, Error)>,
    outcomes: u32,
}

impl<R> Outcomes<R> for DecodedChunk<R> {
    fn push_ok(&mut self, value: R) {
        self.values.push(value);
        self.outcomes += 1;
    }

    fn push(&mut self, outcome: Result<R, Error>) {
        match outcome {
            Ok(value) => self.push_ok(value),
            Err(error) => self.fail(1, &error),
        }
    }

    fn reserve(&mut self, n: usize) {
        self.values.reserve(n);
    }

    fn fail(&mut self, n: u32, error: &Error) {
        if n > 0 {
            self.failures.push((self.outcomes, n, error.clone()));
            self.outcomes += n;
        }
    }
}

impl<R> DecodedChunk<R> {
    /// Hands the outcomes to `into`, in order.
    fn replay(self, into: &mut impl Outcomes<R>) {
        if self.failures.is_empty() {
            return into.extend_ok(self.values);
        }
        let mut values = self.values.into_iter();
        let mut at = 0;
        for (first, n, error) in self.failures {
            for value in values.by_ref().take((first - at) as usize) {
                into.push_ok(value);
            }
            into.fail(n, &error);
            at = first + n;
        }
        for value in values {
            into.push_ok(value);
        }
    }
}

/// A chunk's outcome as delivered.
#[derive(Debug)]
pub(crate) enum ChunkResult {
    /// The worker's encoded results are `frame[body_at..]`.
    Bytes {
        frame: Vec<u8>,
        body_at: usize,
        pid: u32,
    },
    /// The results, decoded by the reader thread that received them (a `DecodedChunk<R>`),
    /// so that a `map`'s one feeding thread does not decode for every worker as well. Only
    /// for chunks taken once, by [`ChunkResult::into_outcomes`].
    Decoded(Box<dyn Any + Send>),
    /// The results (all of them successes) were written by the reader thread that received
    /// them into the caller's vector (see [`super::placement`]).
    Placed(Placed),
    /// No result.
    Failed(Error),
}

impl ChunkResult {
    /// This result of chunk `index` of a job whose results may be placed: as it is if it was
    /// placed or failed (a failure writes no value, and keeps its cause); the caller, which
    /// decodes it next, claims the chunk first, and fails it if it was written already.
    pub(crate) fn settle(self, index: u32, placement: &dyn PlaceAhead) -> ChunkResult {
        match self {
            ChunkResult::Placed(_) | ChunkResult::Failed(_) => self,
            _ if placement.claim(index) => self,
            _ => ChunkResult::Failed(Error::Codec(crate::error::CodecError::new(
                "a chunk's results were reported twice",
            ))),
        }
    }

    /// Hands the chunk's per-item outcomes (`items` of them) to `into`, in order, decoding
    /// them one by one (no vector of `Result<R, Panic>` is built: see `task::run_chunk`).
    pub(crate) fn decode_into<R: DeserializeOwned>(&self, items: u32, into: &mut impl Outcomes<R>) {
        let (frame, body_at, pid) = match self {
            ChunkResult::Failed(e) => return into.fail(items, e),
            // Values cannot be handed out twice; only jobs whose chunks are taken once (by
            // `into_outcomes`) have their results decoded ahead, or placed.
            ChunkResult::Decoded(_) | ChunkResult::Placed(_) => {
                return into.fail(
                    items,
                    &Error::Codec(crate::error::CodecError::new("results already taken")),
                );
            }
            ChunkResult::Bytes {
                frame,
                body_at,
                pid,
            } => (frame, *body_at, *pid),
        };
        let mut pushed = 0;
        if let Err(error) = decode_each(&frame[body_at..], items, pid, &mut pushed, into) {
            // Every item gets one outcome: those not decoded fail.
            into.fail(items - pushed, &error);
        }
    }

    /// [`ChunkResult::decode_into`], taking the chunk: results decoded ahead are moved out.
    /// Hands back the received frame, once decoded, for the next one to be received into
    /// (see [`SpareBuffers::keep_frame`]).
    pub(crate) fn into_outcomes<R: DeserializeOwned + 'static>(
        self,
        items: u32,
        into: &mut impl Outcomes<R>,
    ) -> Option<Vec<u8>> {
        if let ChunkResult::Placed(placed) = self {
            if placed.items == items {
                into.placed(placed.start, items);
            } else {
                into.fail(items, &wrong_count());
            }
            return None;
        }
        let ChunkResult::Decoded(decoded) = self else {
            self.decode_into(items, into);
            return match self {
                ChunkResult::Bytes { frame, .. } => Some(frame),
                _ => None,
            };
        };
        match decoded.downcast::<DecodedChunk<R>>() {
            Ok(chunk) if chunk.outcomes == items => chunk.replay(into),
            Ok(_) => into.fail(items, &wrong_count()),
            Err(_) => into.fail(
                items,
                &Error::Codec(crate::error::CodecError::new("results of another type")),
            ),
        }
        None
    }
}

fn wrong_count() -> Error {
    Error::Codec(crate::error::CodecError::new(
        "a chunk came back with the wrong number of results",
    ))
}

/// Decodes a chunk's `items` results, handing each to `into` and counting them in `pushed`.
fn decode_each<R: DeserializeOwned>(
    body: &[u8],
    items: u32,
    pid: u32,
    pushed: &mut u32,
    into: &mut impl Outcomes<R>,
) -> Result<(), Error> {
    let tag_error = |tag| {
        let e = crate::error::CodecError::caused_by(
            "decoding a chunk's results",
            bulk::BulkError::Tag(tag),
        );
        Err(Error::Codec(e))
    };
    match body.split_first() {
        Some((&bulk::SERDE, body)) => {
            // serde's loop alone unless the results are byte vectors (see `task::run_chunk`).
            if ItemCodec::<R>::new().is_byte_vec() {
                decode_each_as::<R, true>(body, items, pid, pushed, into)
            } else {
                decode_each_as::<R, false>(body, items, pid, pushed, into)
            }
        }
        Some((&bulk::BULK, body)) => match PlainOf::<R>::get() {
            Some(plain) => decode_bulk(plain, body, items, pid, pushed, into),
            None => tag_error(bulk::BULK),
        },
        Some((&tag, _)) => tag_error(tag),
        None => Err(Error::Codec(crate::error::CodecError::new(
            "a chunk's results were cut short",
        ))),
    }
}

/// [`decode_each`] for a chunk in the bulk layout (`body`: the bytes after the tag), all
/// checked before the first outcome is handed on.
fn decode_bulk<R>(
    plain: PlainOf<R>,
    body: &[u8],
    items: u32,
    pid: u32,
    pushed: &mut u32,
    into: &mut impl Outcomes<R>,
) -> Result<(), Error> {
    let results = bulk::take_results(plain, body).map_err(|e| {
        Error::Codec(crate::error::CodecError::caused_by(
            "decoding a chunk's results",
            e,
        ))
    })?;
    if results.count != u64::from(items) {
        return Err(Error::Codec(crate::error::CodecError::new(
            "a chunk came back with the wrong number of results",
        )));
    }
    let invalid = |e| {
        Error::Codec(crate::error::CodecError::caused_by(
            "decoding a chunk's results",
            e,
        ))
    };
    if results.panics.is_empty() {
        // Straight into the caller's vector, when it has one (`FirstError`: `map`).
        into.extend_plain(plain, results.values).map_err(invalid)?;
        *pushed = items;
        return Ok(());
    }
    let mut values = Vec::new();
    plain.append(results.values, &mut values).map_err(invalid)?;
    *pushed = items;
    let mut values = values.into_iter();
    let mut at = 0;
    for (index, p) in results.panics {
        // Indices increase and stay below the count (checked by the decoding).
        for value in values.by_ref().take((index - at) as usize) {
            into.push_ok(value);
        }
        into.push(Err(Error::Panicked {
            message: p.message,
            location: p.location,
            pid,
            backtrace: p.backtrace,
        }));
        at = index + 1;
    }
    for value in values {
        into.push_ok(value);
    }
    Ok(())
}

/// [`decode_each`]'s loop; `BULK`: as in `task::ItemCodec`.
fn decode_each_as<R: DeserializeOwned, const BULK: bool>(
    body: &[u8],
    items: u32,
    pid: u32,
    pushed: &mut u32,
    into: &mut impl Outcomes<R>,
) -> Result<(), Error> {
    // A sequence's length is the same varint as a `u64`.
    let (len, results) = postcard::take_from_bytes::<u64>(body)
        .map_err(crate::error::codec("decoding a chunk's count of results"))?;
    if len != u64::from(items) {
        return Err(Error::Codec(crate::error::CodecError::new(
            "a chunk came back with the wrong number of results",
        )));
    }
    // A `Result` is its variant's index (one byte, 0 or 1) and then the value or the panic.
    // Read by hand: serde's enum visitor was a sixth of the parent's time in a map of small
    // items, on the one thread that decodes for every worker.
    let values = ItemCodec::<R, BULK>::new();
    let mut rest = results;
    while *pushed < items {
        let Some((&variant, after)) = rest.split_first() else {
            return Err(Error::Codec(crate::error::CodecError::new(
                "a chunk's results were cut short",
            )));
        };
        match variant {
            0 => {
                let (value, after) = values.take(after).map_err(|e| {
                    let what = format!(
                        "decoding the result of the chunk's item {} as {}",
                        *pushed,
                        std::any::type_name::<R>()
                    );
                    crate::error::CodecError::caused_by(what, e)
                })?;
                rest = after;
                *pushed += 1;
                into.push_ok(value);
            }
            1 => {
                let (p, after) = postcard::take_from_bytes::<Panic>(after)
                    .map_err(crate::error::codec("decoding a task's panic"))?;
                rest = after;
                *pushed += 1;
                into.push(Err(Error::Panicked {
                    message: p.message,
                    location: p.location,
                    pid,
                    backtrace: p.backtrace,
                }));
            }
            _ => {
                return Err(Error::Codec(crate::error::CodecError::new(
                    "a result that is neither a value nor a panic",
                )));
            }
        }
    }
    Ok(())
}

/// Where a job's per-item outcomes go, in delivery order.
pub(crate) trait Outcomes<R> {
    /// The next item's outcome.
    fn push(&mut self, outcome: Result<R, Error>);

    /// The next item succeeded (the common case, without building a `Result`).
    fn push_ok(&mut self, value: R) {
        self.push(Ok(value));
    }

    /// The next items all succeeded, with these values.
    fn extend_ok(&mut self, values: Vec<R>) {
        for value in values {
            self.push_ok(value);
        }
    }

    /// The next items all succeeded, with the values of these bytes in the bulk layout
    /// (see [`crate::bulk`]); none of them if one is invalid.
    fn extend_plain(&mut self, plain: PlainOf<R>, bytes: &[u8]) -> Result<(), bulk::BulkError> {
        let mut values = Vec::new();
        plain.append(bytes, &mut values)?;
        self.extend_ok(values);
        Ok(())
    }

    /// Room for `n` more outcomes is wanted.
    fn reserve(&mut self, _n: usize) {}

    /// The reader threads may write the values of a sized map's chunks (of `chunksize` of
    /// its `items` items) where they go, if this sink has such a place (see
    /// [`super::placement`]); called after [`Outcomes::reserve`], before any outcome.
    fn place_ahead(&mut self, _chunksize: u64, _items: u64) -> Option<Arc<Placement<R>>> {
        None
    }

    /// The next `items` items succeeded, and their values were written in place, from item
    /// `start` on (see [`Outcomes::place_ahead`]).
    fn placed(&mut self, _start: u64, items: u32) {
        self.fail(
            items,
            &Error::Codec(crate::error::CodecError::new(
                "results were placed where nothing waits for them",
            )),
        );
    }

    /// The next `n` items all failed with `error`.
    fn fail(&mut self, n: u32, error: &Error) {
        for _ in 0..n {
            self.push(Err(error.clone()));
        }
    }
}

impl<R> Outcomes<R> for Vec<Result<R, Error>> {
    fn push(&mut self, outcome: Result<R, Error>) {
        Vec::push(self, outcome);
    }

    fn reserve(&mut self, n: usize) {
        reserve_large(self, n);
    }
}

impl<R> Outcomes<R> for VecDeque<Result<R, Error>> {
    fn push(&mut self, outcome: Result<R, Error>) {
        self.push_back(outcome);
    }
}

/// What `map` returns: the values in order, or the error of the lowest-index failed item.
/// Outcomes arrive in input order, so the first error seen is that one, and values after it
/// are not kept.
#[derive(Debug)]
pub(crate) struct FirstError<R> {
    values: Vec<R>,
    error: Option<Error>,
    /// Where the reader threads write values into `values`, if they do (see
    /// [`super::placement`]): revoked before `values` may move or go.
    placement: Option<Arc<Placement<R>>>,
}

impl<R> FirstError<R> {
    pub(crate) fn new() -> FirstError<R> {
        FirstError {
            values: Vec::new(),
            error: None,
            placement: None,
        }
    }

    pub(crate) fn into_result(mut self) -> Result<Vec<R>, Error> {
        self.revoke();
        match self.error.take() {
            None => Ok(std::mem::take(&mut self.values)),
            Some(e) => Err(e),
        }
    }

    /// No reader thread writes into `values` from now on.
    fn revoke(&mut self) {
        if let Some(placement) = self.placement.take() {
            placement.revoke();
        }
    }

    /// `n` more values are to be pushed: if that could move the vector (more than its room,
    /// which a worker's lie could ask for), nothing may be written in place any more.
    fn room_for(&mut self, n: usize) {
        if self.values.capacity() - self.values.len() < n {
            self.revoke();
        }
    }
}

impl<R> Drop for FirstError<R> {
    fn drop(&mut self) {
        self.revoke();
    }
}

impl<R> Outcomes<R> for FirstError<R> {
    fn push_ok(&mut self, value: R) {
        if self.error.is_none() {
            self.room_for(1);
            self.values.push(value);
        }
    }

    fn extend_ok(&mut self, mut values: Vec<R>) {
        if self.error.is_none() {
            self.room_for(values.len());
            self.values.append(&mut values);
        }
    }

    fn extend_plain(&mut self, plain: PlainOf<R>, bytes: &[u8]) -> Result<(), bulk::BulkError> {
        if self.error.is_none() {
            self.room_for(plain.count(bytes)?);
            // One copy, from the received bytes into the vector `map` returns.
            plain.append(bytes, &mut self.values)?;
        }
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        if self.error.is_none() {
            self.room_for(n);
            reserve_large(&mut self.values, n);
        }
    }

    fn place_ahead(&mut self, chunksize: u64, items: u64) -> Option<Arc<Placement<R>>> {
        if self.error.is_some() || self.placement.is_some() {
            return None;
        }
        let placement = Placement::new(&mut self.values, chunksize, items)?;
        self.placement = Some(placement.clone());
        Some(placement)
    }

    fn placed(&mut self, start: u64, items: u32) {
        if self.error.is_some() {
            return;
        }
        let at = self.values.len();
        let n = items as usize;
        if self.placement.is_some() && start == at as u64 && self.values.capacity() - at >= n {
            // SAFETY: a reader thread wrote these `n` values at `at` (the chunk's place: it
            // starts at `start`, and chunks are delivered in order), having claimed the chunk,
            // so nothing else wrote them; its writes happened before the chunk was delivered
            // to this thread, through the driver's lock. The vector has not moved since the
            // placement was made: every push that could move it revokes the placement first,
            // and then `self.placement` is `None`.
            unsafe { self.values.set_len(at + n) };
        } else {
            self.fail(
                items,
                &Error::Codec(crate::error::CodecError::new(
                    "a chunk's results were placed out of order",
                )),
            );
        }
    }

    fn push(&mut self, outcome: Result<R, Error>) {
        match (outcome, &self.error) {
            (Ok(value), None) => self.push_ok(value),
            (Err(e), None) => {
                self.revoke();
                self.error = Some(e);
                self.values = Vec::new();
            }
            (_, Some(_)) => {}
        }
    }

    fn fail(&mut self, n: u32, error: &Error) {
        if n > 0 && self.error.is_none() {
            self.push(Err(error.clone()));
        }
    }
}

/// From this size on, a vector of results asks for huge pages ([`reserve_large`]).
const HUGE_PAGES_FROM: usize = 32 << 20;

/// Reserves room for `n` more values; a vector of [`HUGE_PAGES_FROM`] bytes or more asks the
/// kernel for huge pages. The C library serves allocations that large straight from the
/// kernel, fresh for every `map`, and filling them costs a page fault per 4 KiB: at 100 M
/// results of 8 bytes that doubled the time per item against a map of 1 M, whose smaller
/// vector comes back warm from the heap.
fn reserve_large<T>(values: &mut Vec<T>, n: usize) {
    let before = values.capacity();
    values.reserve(n);
    let bytes = values.capacity().saturating_mul(std::mem::size_of::<T>());
    if values.capacity() != before && bytes >= HUGE_PAGES_FROM {
        pool_ipc::os::prefer_huge_pages(values.as_ptr().cast(), bytes);
    }
}

/// Below this, a buffer comes from the allocator and goes back to it.
const KEPT_FROM: usize = 256 << 10;
/// At most this many buffers are kept...
const KEPT_BUFFERS: usize = 8;
/// ...holding at most this much memory.
const KEPT_BYTES: usize = 64 << 20;

/// The buffers a pool keeps for encoding, or for receiving (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct SpareBuffers {
    buffers: Mutex<Vec<Vec<u8>>>,
    /// How many buffers `buffers` holds, read without its lock: a receiver of small messages
    /// that never come back here pays no lock for them.
    count: AtomicUsize,
}

impl SpareBuffers {
    /// The most recently kept buffer, emptied, if any. Chunks of one job look alike, so it
    /// is most likely large enough already; encoding into it needs no measuring pass.
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let mut buffer = buffers.pop()?;
        self.count.store(buffers.len(), Ordering::Relaxed);
        buffer.clear();
        Some(buffer)
    }

    /// Keeps the buffer of an ended chunk's payload, if nothing else still holds it and it is
    /// worth keeping; otherwise drops it.
    pub(crate) fn give_back(&self, payload: Payload) {
        if let Ok(buffer) = Arc::try_unwrap(payload.bytes) {
            self.keep(buffer);
        }
    }

    /// Keeps a received frame whose results were taken, for [`SpareBuffers::take`] to hand
    /// to the next receive, if it is worth keeping.
    ///
    /// The C library hands a reader thread's megabyte frames fresh from the kernel once the
    /// results of a map are too large to raise its threshold for giving memory back (a vector
    /// of 32 MiB or more): each frame then cost 256 page faults, and a map of 100 M `u64`s
    /// 85,000 of them, on the threads that receive for every worker.
    pub(crate) fn keep_frame(&self, frame: Vec<u8>) {
        self.keep(frame);
    }

    /// A frame received into a buffer from [`SpareBuffers::take`], in a vector of its own
    /// size if it is small (the buffer is kept again): a small message, handled and kept
    /// apart from any map's results, must not hold a large buffer.
    pub(crate) fn fit(&self, frame: Vec<u8>) -> Vec<u8> {
        if frame.capacity() < KEPT_FROM || frame.len() >= KEPT_FROM {
            return frame;
        }
        let small = frame.clone();
        self.keep(frame);
        small
    }

    fn keep(&self, buffer: Vec<u8>) {
        if buffer.capacity() < KEPT_FROM {
            return;
        }
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        let kept: usize = buffers.iter().map(Vec::capacity).sum();
        if buffers.len() < KEPT_BUFFERS && kept + buffer.capacity() <= KEPT_BYTES {
            buffers.push(buffer);
            self.count.store(buffers.len(), Ordering::Relaxed);
        }
    }

    /// How many buffers are kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.buffers.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes in postcard's layout, after its tag.
    fn serde_chunk<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
        postcard::to_extend(value, vec![bulk::SERDE]).unwrap()
    }

    #[test]
    fn a_chunk_the_caller_decodes_is_claimed_once_and_failures_keep_their_cause() {
        let mut values: Vec<u64> = Vec::with_capacity(1024);
        let place = Placement::new(&mut values, 512, 1024).unwrap();
        let decoded = || ChunkResult::Decoded(Box::new(()));
        assert!(matches!(
            decoded().settle(0, &*place),
            ChunkResult::Decoded(_)
        ));
        let twice = decoded().settle(0, &*place);
        assert!(matches!(twice, ChunkResult::Failed(Error::Codec(_))));
        let failed = ChunkResult::Failed(Error::Terminated).settle(0, &*place);
        assert!(matches!(failed, ChunkResult::Failed(Error::Terminated)));
        let placed = Placed {
            start: 512,
            items: 512,
        };
        let settled = ChunkResult::Placed(placed).settle(1, &*place);
        assert!(matches!(settled, ChunkResult::Placed(p) if p == placed));
    }

    #[test]
    fn values_placed_out_of_order_are_not_counted() {
        let mut into = FirstError::<u64>::new();
        into.reserve(1024);
        assert!(into.place_ahead(512, 1024).is_some());
        // Chunk 1 comes first: its place is not where the vector ends.
        into.placed(512, 512);
        assert!(into.values.is_empty());
        assert!(matches!(into.into_result(), Err(Error::Codec(_))));
    }

    /// A chunk's results as a worker encodes them.
    fn frame(results: &[Result<u64, Panic>]) -> ChunkResult {
        ChunkResult::Bytes {
            frame: serde_chunk(results),
            body_at: 0,
            pid: 42,
        }
    }

    fn panic(message: &str) -> Panic {
        Panic {
            message: message.into(),
            location: None,
            backtrace: None,
        }
    }

    /// A chunk's results as a reader thread decodes them ahead.
    fn decoded_ahead(results: &[Result<u64, Panic>]) -> ChunkResult {
        let body = serde_chunk(results);
        ChunkResult::Decoded(decoder::<u64>()(&body, 42).unwrap())
    }

    #[test]
    fn results_decoded_ahead_come_out_as_decoded_in_place() {
        let results = [
            Ok(1),
            Err(panic("a")),
            Err(panic("b")),
            Ok(4),
            Ok(5),
            Err(panic("c")),
        ];
        let (mut ahead, mut here) = (Vec::new(), Vec::new());
        decoded_ahead(&results).into_outcomes::<u64>(6, &mut ahead);
        frame(&results).decode_into::<u64>(6, &mut here);
        assert_eq!(ahead, here);
        assert_eq!(ahead.len(), 6);
        assert!(matches!(&ahead[2], Err(Error::Panicked { message, .. }) if message == "b"));
        let mut values = FirstError::new();
        decoded_ahead(&[Ok(1), Ok(2)]).into_outcomes::<u64>(2, &mut values);
        decoded_ahead(&[Ok(3), Err(panic("first"))]).into_outcomes::<u64>(2, &mut values);
        assert!(
            matches!(values.into_result(), Err(Error::Panicked { message, .. }) if message == "first")
        );
        let mut values = FirstError::new();
        decoded_ahead(&[Ok(1), Ok(2)]).into_outcomes::<u64>(2, &mut values);
        assert_eq!(values.into_result(), Ok(vec![1, 2]));
    }

    #[test]
    fn results_decoded_ahead_of_the_wrong_count_or_type_fail_every_item() {
        let mut all: Vec<Result<u64, Error>> = Vec::new();
        decoded_ahead(&[Ok(1), Ok(2)]).into_outcomes::<u64>(3, &mut all);
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|r| matches!(r, Err(Error::Codec(_)))));
        let mut strings: Vec<Result<String, Error>> = Vec::new();
        decoded_ahead(&[Ok(1)]).into_outcomes::<String>(1, &mut strings);
        assert!(matches!(&strings[..], [Err(Error::Codec(_))]));
        let mut cut = serde_chunk(&[Ok::<u64, Panic>(1), Ok(300)][..]);
        cut.pop();
        let mut all: Vec<Result<u64, Error>> = Vec::new();
        ChunkResult::Decoded(decoder::<u64>()(&cut, 42).unwrap()).into_outcomes::<u64>(2, &mut all);
        assert!(
            all[0].is_ok() && matches!(all[1], Err(Error::Codec(_))),
            "{all:?}"
        );
    }

    #[test]
    fn results_decode_in_order_with_panics_in_place() {
        let chunk = frame(&[Ok(1), Err(panic("boom")), Ok(3)]);
        let mut all = Vec::new();
        chunk.decode_into::<u64>(3, &mut all);
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].as_ref().unwrap(), &1);
        assert!(
            matches!(&all[1], Err(Error::Panicked { message, pid: 42, .. }) if message == "boom")
        );
        assert_eq!(all[2].as_ref().unwrap(), &3);
    }

    #[test]
    fn every_item_gets_one_outcome_from_a_bad_chunk() {
        // A count other than the chunk's: every item fails.
        let mut all = Vec::new();
        frame(&[Ok(1), Ok(2)]).decode_into::<u64>(3, &mut all);
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|r| matches!(r, Err(Error::Codec(_)))));
        // Cut short: what decoded stands, the rest fail.
        let ChunkResult::Bytes { mut frame, .. } = frame(&[Ok(1), Ok(300), Ok(70_000)]) else {
            unreachable!()
        };
        frame.truncate(frame.len() - 1);
        let cut = ChunkResult::Bytes {
            frame,
            body_at: 0,
            pid: 1,
        };
        let mut all = Vec::new();
        cut.decode_into::<u64>(3, &mut all);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].as_ref().unwrap(), &300);
        assert!(matches!(all[2], Err(Error::Codec(_))));
        // A failed chunk: every item gets its error.
        let mut all: Vec<Result<u64, Error>> = Vec::new();
        ChunkResult::Failed(Error::Terminated).decode_into(4, &mut all);
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn map_keeps_the_error_of_the_lowest_index() {
        let mut values = FirstError::new();
        frame(&[Ok(1), Ok(2)]).decode_into::<u64>(2, &mut values);
        frame(&[Ok(3), Err(panic("first")), Err(panic("second"))]).decode_into(3, &mut values);
        ChunkResult::Failed(Error::Terminated).decode_into(2, &mut values);
        assert!(
            matches!(values.into_result(), Err(Error::Panicked { message, .. }) if message == "first")
        );
        let mut values = FirstError::new();
        frame(&[Ok(1), Ok(2)]).decode_into::<u64>(2, &mut values);
        assert_eq!(values.into_result().unwrap(), [1, 2]);
    }

    #[test]
    fn chunks_of_byte_vectors_are_encoded_as_postcard_encodes_them() {
        let spare = SpareBuffers::default();
        let items: Vec<Vec<u8>> = (0..5).map(|i| vec![i as u8; i * 100]).collect();
        let wire = serde_chunk(&items);
        assert_eq!(*Payload::encode(&items, &spare).unwrap().bytes, wire);
        assert_eq!(*Payload::encode(&items[..], &spare).unwrap().bytes, wire);
        let one = std::slice::from_ref(&items[3]);
        assert_eq!(
            *Payload::encode(one, &spare).unwrap().bytes,
            serde_chunk(one)
        );
        assert!(byte_vecs(&items).is_some());
        assert!(byte_vecs(&[vec![1u16]]).is_none());
        assert!(byte_vecs(&[vec![(1u8,)]][..]).is_none());
        // Into a kept buffer, whatever it held.
        let kept = vec![0xAA; 1 << 20];
        assert_eq!(encode_byte_vecs(&items, Some(kept)), wire);
    }

    #[test]
    fn gathered_byte_vectors_send_the_bytes_they_would_be_encoded_to() {
        let items: Vec<Vec<u8>> = [0usize, 1, 127, 128, 70_000]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 3) as u8).collect())
            .collect();
        let wire = serde_chunk(&items);
        let gathered = Payload::gather(items.clone());
        assert_eq!(gathered.parts().concat(), wire);
        assert_eq!(gathered.parts().len(), 2 * items.len() + 1);
        assert_eq!(
            Payload::gather(Vec::new()).parts().concat(),
            serde_chunk(&[0u8; 0][..])
        );
        let encoded = Payload::encode(&items, &SpareBuffers::default()).unwrap();
        assert_eq!(encoded.parts(), [&wire[..]]);
        // Moved out of either type; other types are handed back.
        assert_eq!(into_byte_vec(vec![1u8, 2]), Ok(vec![1, 2]));
        assert_eq!(into_byte_vec(crate::Bytes(vec![3])), Ok(vec![3]));
        assert_eq!(into_byte_vec(vec![1u16]), Err(vec![1u16]));
        assert!(is_byte_vec::<crate::Bytes>() && !is_byte_vec::<Vec<u16>>());
        assert_eq!(from_byte_vec::<Vec<u8>>(vec![4]), Ok(vec![4]));
        assert_eq!(
            from_byte_vec::<crate::Bytes>(vec![5]),
            Ok(crate::Bytes(vec![5]))
        );
        assert_eq!(from_byte_vec::<Vec<u16>>(vec![6]), Err(vec![6]));
    }

    #[test]
    fn byte_vector_results_decode_in_bulk_and_hostile_ones_fail_typed() {
        let results: Vec<Result<Vec<u8>, Panic>> =
            vec![Ok(vec![1, 2, 3]), Err(panic("p")), Ok(vec![9; 1000])];
        let body = serde_chunk(&results);
        let mut all: Vec<Result<Vec<u8>, Error>> = Vec::new();
        ChunkResult::Decoded(decoder::<Vec<u8>>()(&body, 1).unwrap()).into_outcomes(3, &mut all);
        assert_eq!(all[0].as_ref().unwrap(), &[1, 2, 3]);
        assert!(matches!(all[1], Err(Error::Panicked { .. })));
        assert_eq!(all[2].as_ref().unwrap(), &vec![9; 1000]);
        // A length past the end fails that item and the rest, typed.
        let hostile = [bulk::SERDE, 2, 0, 200, 1, 1, 0, 1];
        // A count far beyond what the bytes hold (u32::MAX results in 7 bytes): typed
        // errors, no attempt to reserve for them.
        let mut huge: Vec<Result<Vec<u8>, Error>> = Vec::new();
        ChunkResult::Decoded(
            decoder::<Vec<u8>>()(&[bulk::SERDE, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0], 1).unwrap(),
        )
        .into_outcomes(1, &mut huge);
        assert!(huge.iter().all(|r| r.is_err()), "{huge:?}");
        let mut all: Vec<Result<Vec<u8>, Error>> = Vec::new();
        ChunkResult::Decoded(decoder::<Vec<u8>>()(&hostile, 1).unwrap()).into_outcomes(2, &mut all);
        assert!(
            all.iter().all(|r| matches!(r, Err(Error::Codec(_)))),
            "{all:?}"
        );
        // A fixed seed: the same hostile inputs in every run.
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            proptest::test_runner::Config::default(),
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        );
        runner
            .run(
                &proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                |bytes| {
                    let _ = decoder::<Vec<u8>>()(&bytes, 1);
                    Ok(())
                },
            )
            .unwrap();
    }

    /// A bulk chunk of results as a worker writes it.
    fn bulk_frame(values: &[u64], panics: &[(u64, Panic)], count: u64) -> Vec<u8> {
        let plain = PlainOf::<u64>::get().unwrap();
        let mut out = Vec::new();
        let mut writer = bulk::ResultWriter::new(plain, count, &mut out);
        for &v in values {
            writer.push(v, &mut out);
        }
        for _ in panics {
            writer.panicked();
        }
        writer.finish(&mut out);
        for p in panics {
            out.extend(postcard::to_stdvec(p).unwrap());
        }
        out
    }

    fn outcomes(frame: Vec<u8>, items: u32) -> Vec<Result<u64, Error>> {
        let mut all = Vec::new();
        let result = ChunkResult::Bytes {
            frame,
            body_at: 0,
            pid: 5,
        };
        result.decode_into(items, &mut all);
        all
    }

    #[test]
    fn bulk_results_decode_with_panics_in_place_and_hostile_ones_fail_typed() {
        let frame = bulk_frame(&[10, 30], &[(1, panic("two"))], 3);
        assert!(decoder::<u64>()(&frame, 5).is_none(), "not decoded ahead");
        let all = outcomes(frame.clone(), 3);
        assert_eq!(all[0].as_ref().unwrap(), &10);
        assert!(
            matches!(&all[1], Err(Error::Panicked { message, pid: 5, .. }) if message == "two")
        );
        assert_eq!(all[2].as_ref().unwrap(), &30);
        let mut values = FirstError::new();
        outcomes(bulk_frame(&[1, 2], &[], 2), 2)
            .into_iter()
            .for_each(|o| values.push(o));
        let ok = bulk_frame(&[1, 2], &[], 2);
        ChunkResult::Bytes {
            frame: ok.clone(),
            body_at: 0,
            pid: 1,
        }
        .decode_into(2, &mut values);
        assert_eq!(values.into_result().unwrap(), [1, 2, 1, 2]);
        let all_codec = |all: Vec<Result<u64, Error>>| {
            all.len() == 3 && all.iter().all(|r| matches!(r, Err(Error::Codec(_))))
        };
        // The wrong count, a cut chunk, trailing bytes, an unknown tag, panics out of order
        // or past the end: every item fails, typed.
        assert!(all_codec(outcomes(bulk_frame(&[1, 2], &[], 2), 3)));
        assert!(all_codec(outcomes(frame[..frame.len() - 1].to_vec(), 3)));
        let mut longer = frame.clone();
        longer.push(0);
        assert!(all_codec(outcomes(longer, 3)));
        let mut unknown = frame.clone();
        unknown[0] = 9;
        assert!(all_codec(outcomes(unknown, 3)));
        let twice = bulk_frame(&[1], &[(1, panic("a")), (1, panic("b"))], 3);
        assert!(all_codec(outcomes(twice, 3)));
        let past = bulk_frame(&[1, 2], &[(3, panic("a"))], 3);
        assert!(all_codec(outcomes(past, 3)));
        let mut strings: Vec<Result<String, Error>> = Vec::new();
        ChunkResult::Bytes {
            frame,
            body_at: 0,
            pid: 1,
        }
        .decode_into(3, &mut strings);
        assert!(strings.iter().all(|r| matches!(r, Err(Error::Codec(_)))));
    }

    fn payload(capacity: usize) -> Payload {
        Payload::new(Vec::with_capacity(capacity), Vec::new())
    }

    #[test]
    fn a_large_buffer_is_reused_and_a_small_one_is_not_kept() {
        let spare = SpareBuffers::default();
        assert!(spare.take().is_none());
        let first = Vec::with_capacity(1 << 20);
        let at = first.as_ptr();
        spare.give_back(Payload::new(first, Vec::new()));
        assert_eq!(spare.kept(), 1);
        let again = spare.take().unwrap();
        assert_eq!(again.as_ptr(), at, "the same buffer came back");
        assert!(again.is_empty());
        spare.give_back(payload(1024));
        assert_eq!(spare.kept(), 0, "small buffers go back to the allocator");
    }

    fn len(data: Vec<u32>) -> usize {
        data.len()
    }

    #[test]
    #[cfg_attr(miri, ignore = "starts a Pool: worker processes, pipes, pidfds")]
    fn a_pool_keeps_the_buffers_of_its_ended_chunks() {
        // Large items that are encoded (byte vectors are sent where they are instead).
        let pool = crate::Pool::new(1).unwrap();
        let items: Vec<Vec<u32>> = (0..6).map(|_| vec![u32::MAX; 128 << 10]).collect();
        let lengths = pool.map_chunked(len, items, 1).unwrap();
        assert_eq!(lengths, [128 << 10; 6]);
        assert!(pool.local().spare().kept() >= 1, "no buffer came back");
    }

    #[test]
    fn a_buffer_still_shared_is_not_kept() {
        let spare = SpareBuffers::default();
        let shared = payload(1 << 20);
        let _in_flight = shared.clone();
        spare.give_back(shared);
        assert_eq!(spare.kept(), 0);
    }

    #[test]
    fn received_frames_are_kept_and_small_messages_leave_their_buffer() {
        let frames = SpareBuffers::default();
        assert!(frames.take().is_none(), "nothing kept yet");
        frames.keep_frame(vec![1; 100]);
        assert!(frames.take().is_none(), "too small to keep");
        let big = vec![2; KEPT_FROM];
        let at = big.as_ptr();
        frames.keep_frame(big);
        let mut buffer = frames.take().expect("kept");
        assert!(buffer.is_empty() && buffer.capacity() >= KEPT_FROM);
        assert_eq!(buffer.as_ptr(), at, "the same memory, received into again");
        // A large message stays in the buffer it was received into...
        buffer.resize(KEPT_FROM, 3);
        let large = frames.fit(buffer);
        assert_eq!((large.as_ptr(), large.len()), (at, KEPT_FROM));
        assert_eq!(frames.kept(), 0);
        // ...a small one moves out of it, and the buffer is kept again.
        let mut buffer = large;
        buffer.clear();
        buffer.extend_from_slice(b"ready");
        let small = frames.fit(buffer);
        assert_eq!(small, b"ready");
        assert!(small.capacity() < KEPT_FROM);
        assert_eq!(frames.kept(), 1);
        let again = frames.take().unwrap();
        assert_eq!(again.as_ptr(), at);
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let spare = SpareBuffers::default();
        for _ in 0..3 * KEPT_BUFFERS {
            spare.give_back(payload(KEPT_FROM));
        }
        assert_eq!(spare.kept(), KEPT_BUFFERS);
        let spare = SpareBuffers::default();
        for _ in 0..4 {
            spare.give_back(payload(KEPT_BYTES / 2));
        }
        assert_eq!(spare.kept(), 2, "at most KEPT_BYTES");
    }
}
