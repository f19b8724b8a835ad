//! One job as the driver and its caller share it: where its input comes from, the chunks
//! delivered (in the scheduler's delivery order), and whether it is finished.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pool_core::{Chunk, ChunkId, JobId, WorkerId};
use serde::de::DeserializeOwned;

use super::driver::WorkerLink;
use super::spare::SpareBuffers;
use crate::Error;
use crate::task::{Call, Panic};

/// How long a caller waiting for a job spins before it sleeps (see
/// [`JobShared::spin_for_news`]): a few round trips, so that a long task costs its caller
/// little CPU.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(50);

/// A callback to run on the pool's callback thread once the job finished.
pub(crate) type Callback = Box<dyn FnOnce(&JobShared) + Send>;

/// A chunk's encoded arguments and the descriptors of the handles inside them. Cheap to
/// clone: a requeued chunk is sent again from the same payload.
#[derive(Clone, Debug, Default)]
pub(crate) struct Payload {
    pub(crate) bytes: Arc<Vec<u8>>,
    pub(crate) fds: Arc<Vec<std::os::fd::OwnedFd>>,
}

impl Payload {
    /// Encodes `value` into a buffer from `spare`, collecting the handles' descriptors.
    pub(crate) fn encode<T: serde::Serialize + ?Sized>(
        value: &T,
        spare: &SpareBuffers,
    ) -> Result<Payload, Error> {
        let (bytes, fds) = crate::handles::encode_into(value, spare.take())?;
        Ok(Payload {
            bytes: Arc::new(bytes),
            fds: Arc::new(fds),
        })
    }
}

/// Where a job's chunks come from.
#[derive(Debug)]
pub(crate) enum Source {
    /// `apply`: the one chunk, encoded at submission.
    Single(Payload),
    /// `map_async`, `starmap_async`: every chunk encoded at submission, in order.
    Encoded(VecDeque<(u32, Payload)>),
    /// `map`, `imap`: the waiting caller's thread reads and encodes chunks as they are pulled,
    /// and takes each delivered chunk once: its results may be decoded ahead, by `Decoder`.
    Caller(Decoder),
}

/// Decodes a chunk's encoded results (`body`, from the worker whose pid is given) into a
/// [`DecodedChunk`] of the job's result type, on the thread that received them (see
/// [`ChunkResult::Decoded`]).
pub(crate) type Decoder = fn(body: &[u8], pid: u32) -> Box<dyn Any + Send>;

/// The [`Decoder`] of jobs whose results are `R`s.
pub(crate) fn decoder<R: DeserializeOwned + Send + 'static>() -> Decoder {
    decode_ahead::<R>
}

fn decode_ahead<R: DeserializeOwned + Send + 'static>(
    body: &[u8],
    pid: u32,
) -> Box<dyn Any + Send> {
    let mut chunk = DecodedChunk::<R> {
        values: Vec::new(),
        failures: Vec::new(),
        outcomes: 0,
    };
    // As many as the results say they are; checked against the chunk when it is taken.
    let items = postcard::take_from_bytes::<u64>(body)
        .ok()
        .and_then(|(n, _)| u32::try_from(n).ok())
        .unwrap_or(0);
    chunk.reserve(items as usize);
    let mut pushed = 0;
    if let Err(error) = decode_each(body, items, pid, &mut pushed, &mut chunk) {
        chunk.fail(items - pushed, &error);
    }
    Box::new(chunk)
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
    /// No result.
    Failed(Error),
}

impl ChunkResult {
    /// Hands the chunk's per-item outcomes (`items` of them) to `into`, in order, decoding
    /// them one by one (no vector of `Result<R, Panic>` is built: see `task::run_chunk`).
    pub(crate) fn decode_into<R: DeserializeOwned>(&self, items: u32, into: &mut impl Outcomes<R>) {
        let (frame, body_at, pid) = match self {
            ChunkResult::Failed(e) => return into.fail(items, e),
            // Values cannot be handed out twice; only jobs whose chunks are taken once (by
            // `into_outcomes`) have their results decoded ahead.
            ChunkResult::Decoded(_) => {
                return into.fail(items, &Error::Codec("results already taken".into()));
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
    pub(crate) fn into_outcomes<R: DeserializeOwned + 'static>(
        self,
        items: u32,
        into: &mut impl Outcomes<R>,
    ) {
        let ChunkResult::Decoded(decoded) = self else {
            return self.decode_into(items, into);
        };
        match decoded.downcast::<DecodedChunk<R>>() {
            Ok(chunk) if chunk.outcomes == items => chunk.replay(into),
            Ok(_) => into.fail(
                items,
                &Error::Codec("a chunk came back with the wrong number of results".into()),
            ),
            Err(_) => into.fail(items, &Error::Codec("results of another type".into())),
        }
    }
}

/// Decodes a chunk's `items` results, handing each to `into` and counting them in `pushed`.
fn decode_each<R: DeserializeOwned>(
    body: &[u8],
    items: u32,
    pid: u32,
    pushed: &mut u32,
    into: &mut impl Outcomes<R>,
) -> Result<(), Error> {
    // A sequence's length is the same varint as a `u64`.
    let (len, results) = postcard::take_from_bytes::<u64>(body)?;
    if len != u64::from(items) {
        return Err(Error::Codec(
            "a chunk came back with the wrong number of results".into(),
        ));
    }
    // A `Result` is its variant's index (one byte, 0 or 1) and then the value or the panic.
    // Read by hand: serde's enum visitor was a sixth of the parent's time in a map of small
    // items, on the one thread that decodes for every worker.
    let mut rest = results;
    while *pushed < items {
        let Some((&variant, after)) = rest.split_first() else {
            return Err(Error::Codec("a chunk's results were cut short".into()));
        };
        match variant {
            0 => {
                let (value, after) = postcard::take_from_bytes::<R>(after)?;
                rest = after;
                *pushed += 1;
                into.push_ok(value);
            }
            1 => {
                let (p, after) = postcard::take_from_bytes::<Panic>(after)?;
                rest = after;
                *pushed += 1;
                into.push(Err(Error::Panicked {
                    message: p.message,
                    location: p.location,
                    pid,
                }));
            }
            _ => {
                return Err(Error::Codec(
                    "a result that is neither a value nor a panic".into(),
                ));
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

    /// Room for `n` more outcomes is wanted.
    fn reserve(&mut self, _n: usize) {}

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
        Vec::reserve(self, n);
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
}

impl<R> FirstError<R> {
    pub(crate) fn new() -> FirstError<R> {
        FirstError {
            values: Vec::new(),
            error: None,
        }
    }

    pub(crate) fn into_result(self) -> Result<Vec<R>, Error> {
        match self.error {
            None => Ok(self.values),
            Some(e) => Err(e),
        }
    }
}

impl<R> Outcomes<R> for FirstError<R> {
    fn push_ok(&mut self, value: R) {
        if self.error.is_none() {
            self.values.push(value);
        }
    }

    fn extend_ok(&mut self, mut values: Vec<R>) {
        if self.error.is_none() {
            self.values.append(&mut values);
        }
    }

    fn reserve(&mut self, n: usize) {
        if self.error.is_none() {
            self.values.reserve(n);
        }
    }

    fn push(&mut self, outcome: Result<R, Error>) {
        match (outcome, &self.error) {
            (Ok(value), None) => self.values.push(value),
            (Err(e), None) => {
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

/// What a waiting caller is asked to do, or may do.
pub(crate) enum Wake {
    /// Read and encode up to `max_items` items as chunk `chunk`.
    Pull { chunk: ChunkId, max_items: u32 },
    /// Chunks were delivered.
    Delivered(Vec<(Chunk, ChunkResult)>),
    /// The job is finished and everything delivered was taken.
    Finished,
    /// The deadline passed.
    TimedOut,
}

struct Inner {
    source: Source,
    pull: Option<(ChunkId, u32)>,
    delivered: VecDeque<(Chunk, ChunkResult)>,
    finished: bool,
    callback: Option<Callback>,
}

/// A job, shared between the driver and the caller's handle.
pub(crate) struct JobShared {
    pub(crate) id: JobId,
    pub(crate) call: Call,
    pub(crate) time_limit: Option<Duration>,
    inner: Mutex<Inner>,
    cv: Condvar,
    /// Callers sleeping on `cv` (see [`JobShared::wake`]); changed under `inner`'s lock.
    sleepers: AtomicU32,
    /// See [`Source::Caller`].
    decoder: Option<Decoder>,
    /// Whether `inner` holds something for the caller (a pull to answer, chunks delivered,
    /// the end), readable without the lock by a caller that spins before it sleeps. Written
    /// under the lock.
    news: AtomicBool,
    /// An `apply` being submitted: its caller waits for the answer from the moment it
    /// submits, and receives it from the worker's channel itself (the driver's "Receiving")
    /// if its chunk is sent during the submission. Cleared when the submission ends.
    pub(crate) awaited: AtomicBool,
    /// The worker an awaited job's one chunk was first sent to.
    pub(crate) sent_to: OnceLock<(WorkerId, Arc<WorkerLink>)>,
}

impl std::fmt::Debug for JobShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobShared")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl JobShared {
    pub(crate) fn new(
        id: JobId,
        call: Call,
        source: Source,
        callback: Option<Callback>,
        time_limit: Option<Duration>,
        awaited: bool,
    ) -> Arc<JobShared> {
        let decoder = match &source {
            Source::Caller(decoder) => Some(*decoder),
            _ => None,
        };
        Arc::new(JobShared {
            id,
            call,
            time_limit,
            decoder,
            inner: Mutex::new(Inner {
                source,
                pull: None,
                delivered: VecDeque::new(),
                finished: false,
                callback,
            }),
            cv: Condvar::new(),
            sleepers: AtomicU32::new(0),
            news: AtomicBool::new(false),
            awaited: AtomicBool::new(awaited),
            sent_to: OnceLock::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- the driver's side -----

    /// How the reader threads may decode this job's results ahead (see [`Source::Caller`]).
    pub(crate) fn decoder(&self) -> Option<Decoder> {
        self.decoder
    }

    pub(crate) fn take_single(&self) -> Option<Payload> {
        match &self.lock().source {
            Source::Single(bytes) => Some(bytes.clone()),
            _ => None,
        }
    }

    /// Answers a pull from pre-encoded input; `None` if the caller must answer it.
    pub(crate) fn pull_now(&self, _max_items: u32) -> Option<(u32, Payload)> {
        match &mut self.lock().source {
            Source::Encoded(chunks) => Some(
                chunks
                    .pop_front()
                    .unwrap_or_else(|| (0, Payload::default())),
            ),
            Source::Single(_) => Some((0, Payload::default())),
            Source::Caller(_) => None,
        }
    }

    pub(crate) fn request_pull(&self, chunk: ChunkId, max_items: u32) {
        let mut inner = self.lock();
        inner.pull = Some((chunk, max_items));
        self.news.store(true, Ordering::Release);
    }

    pub(crate) fn deliver(&self, chunk: Chunk, result: ChunkResult) {
        let mut inner = self.lock();
        inner.delivered.push_back((chunk, result));
        self.news.store(true, Ordering::Release);
    }

    pub(crate) fn finish(&self) {
        let mut inner = self.lock();
        inner.finished = true;
        inner.pull = None;
        self.news.store(true, Ordering::Release);
    }

    /// Wakes the callers sleeping on this job, after news was stored under its lock.
    ///
    /// A caller counts itself in `sleepers` under the lock before it sleeps, and the news was
    /// stored under that lock before this call: either the caller saw the news and does not
    /// sleep, or its count happened before the news and is seen here. So a count of zero
    /// means nobody needs the wake, and the futex call (a system call even with no waiter,
    /// two per `apply_async`) is skipped.
    pub(crate) fn wake(&self) {
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.cv.notify_all();
        }
    }

    pub(crate) fn take_callback(&self) -> Option<Callback> {
        self.lock().callback.take()
    }

    // ----- the caller's side -----

    /// Waits for something to do: a pull to answer, chunks to take, or the end.
    pub(crate) fn next_wake(&self, deadline: Option<Instant>) -> Wake {
        self.spin_for_news(deadline);
        let mut inner = self.lock();
        loop {
            if let Some((chunk, max_items)) = inner.pull.take() {
                self.news.store(
                    !inner.delivered.is_empty() || inner.finished,
                    Ordering::Relaxed,
                );
                return Wake::Pull { chunk, max_items };
            }
            if !inner.delivered.is_empty() {
                self.news.store(inner.finished, Ordering::Relaxed);
                return Wake::Delivered(inner.delivered.drain(..).collect());
            }
            if inner.finished {
                return Wake::Finished;
            }
            inner = match self.sleep(inner, deadline) {
                Some(inner) => inner,
                None => return Wake::TimedOut,
            };
        }
    }

    /// Waits until the job is finished (for jobs whose input needs no caller).
    pub(crate) fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        // Nothing else is news for a job whose input needs no caller: news is the end.
        self.spin_for_news(deadline);
        let mut inner = self.lock();
        while !inner.finished {
            inner = match self.sleep(inner, deadline) {
                Some(inner) => inner,
                None => return false,
            };
        }
        true
    }

    /// Sleeps on the condvar until woken or `deadline` (then `None`), counted in `sleepers`
    /// so that [`JobShared::wake`] makes no futex call when nobody sleeps.
    fn sleep<'a>(
        &self,
        inner: MutexGuard<'a, Inner>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, Inner>> {
        let timeout = match deadline {
            None => None,
            Some(d) => Some(
                d.checked_duration_since(Instant::now())
                    .filter(|t| !t.is_zero())?,
            ),
        };
        // Counted while the lock is held, so a waker that changes `inner` under the lock
        // afterwards sees the count (see `wake`).
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        let inner = match timeout {
            None => self.cv.wait(inner).unwrap_or_else(|e| e.into_inner()),
            Some(t) => {
                self.cv
                    .wait_timeout(inner, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        Some(inner)
    }

    /// Spins (yielding now and then) for up to [`SPIN_BEFORE_SLEEP`], or until `deadline`,
    /// while there is no news. A result that comes back within microseconds is then seen
    /// without the futex wake of a sleeping caller, which is a large part of an `apply`'s
    /// round trip on a virtual machine (an inter-processor interrupt per wake).
    fn spin_for_news(&self, deadline: Option<Instant>) {
        let until = Instant::now() + SPIN_BEFORE_SLEEP;
        let until = deadline.map_or(until, |d| d.min(until));
        let mut spins = 0u32;
        while !self.news.load(Ordering::Acquire) {
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 {
                if Instant::now() >= until {
                    return;
                }
                // Let the thread that will bring the news run if it shares this core.
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Whether something is there for the caller; for a job whose input needs no caller,
    /// whether it is finished.
    pub(crate) fn has_news(&self) -> bool {
        self.news.load(Ordering::Acquire)
    }

    /// Every item's outcome, in input order, without consuming them (a finished, ordered job
    /// whose chunks were not taken by a caller).
    pub(crate) fn outcomes_into<R: DeserializeOwned>(&self, into: &mut impl Outcomes<R>) {
        let inner = self.lock();
        for (chunk, result) in &inner.delivered {
            result.decode_into(chunk.items, into);
        }
    }

    /// [`JobShared::outcomes_into`] a vector.
    pub(crate) fn outcomes<R: DeserializeOwned>(&self) -> Vec<Result<R, Error>> {
        let mut all = Vec::new();
        self.outcomes_into(&mut all);
        all
    }

    /// The values in order, or the error of the lowest-index failed item.
    pub(crate) fn first_error<R: DeserializeOwned>(&self) -> Result<Vec<R>, Error> {
        let mut values = FirstError::new();
        self.outcomes_into(&mut values);
        values.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk's results as a worker encodes them.
    fn frame(results: &[Result<u64, Panic>]) -> ChunkResult {
        ChunkResult::Bytes {
            frame: postcard::to_stdvec(results).unwrap(),
            body_at: 0,
            pid: 42,
        }
    }

    fn panic(message: &str) -> Panic {
        Panic {
            message: message.into(),
            location: None,
        }
    }

    fn square(x: u64) -> u64 {
        x * x
    }

    #[test]
    fn news_stays_set_while_the_caller_has_something_left_to_take() {
        let job = JobShared::new(
            JobId(1),
            Call::new(square).unwrap(),
            Source::Caller(decoder::<u64>()),
            None,
            None,
            false,
        );
        let id = |index| ChunkId {
            job: JobId(1),
            index,
        };
        assert!(!job.news.load(Ordering::Acquire));
        job.request_pull(id(1), 4);
        let chunk = Chunk {
            id: id(0),
            first_item: 0,
            items: 1,
        };
        job.deliver(chunk, frame(&[Ok(9)]));
        let never = Some(Instant::now());
        assert!(matches!(
            job.next_wake(never),
            Wake::Pull { max_items: 4, .. }
        ));
        assert!(
            job.news.load(Ordering::Acquire),
            "the delivered chunk is still news"
        );
        assert!(matches!(job.next_wake(never), Wake::Delivered(d) if d.len() == 1));
        assert!(!job.news.load(Ordering::Acquire), "nothing left");
        assert!(matches!(job.next_wake(never), Wake::TimedOut));
        job.finish();
        assert!(job.news.load(Ordering::Acquire));
        assert!(job.wait_finished(never));
        assert!(matches!(job.next_wake(never), Wake::Finished));
    }

    /// A chunk's results as a reader thread decodes them ahead.
    fn decoded_ahead(results: &[Result<u64, Panic>]) -> ChunkResult {
        let body = postcard::to_stdvec(results).unwrap();
        ChunkResult::Decoded(decoder::<u64>()(&body, 42))
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
        let mut cut = postcard::to_stdvec(&[Ok::<u64, Panic>(1), Ok(300)][..]).unwrap();
        cut.pop();
        let mut all: Vec<Result<u64, Error>> = Vec::new();
        ChunkResult::Decoded(decoder::<u64>()(&cut, 42)).into_outcomes::<u64>(2, &mut all);
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
}
