//! One job as the driver and its caller share it: where its input comes from, the chunks
//! delivered (in the scheduler's delivery order), and whether it is finished.
//!
//! It is its own file because it is where the driver and a waiting caller meet, and neither
//! side's machinery is in it: it holds chunks' results (`payload.rs`) and, for an `apply`,
//! the link its chunk was sent on (`link.rs`), nothing of the scheduler or the threads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pool_core::{Chunk, ChunkId, JobId, WorkerId};
use serde::de::DeserializeOwned;

use super::link::WorkerLink;
use super::payload::{ChunkResult, Decoder, FirstError, Outcomes, Payload};
use super::placement::PlaceAhead;
use super::sleepers::Sleepers;
use crate::Error;
use crate::futures::{Watcher, Watchers};
use crate::loom::sync::{Condvar, Mutex, MutexGuard};
use crate::task::Call;

/// How long a caller waiting for a job spins before it sleeps (see
/// [`JobShared::spin_for_news`]): a few round trips, so that a long task costs its caller
/// little CPU.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(50);

/// A callback to run on the pool's callback thread once the job finished.
pub(crate) type Callback = Box<dyn FnOnce(&JobShared) + Send>;

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
    /// Told once the job finishes (see `crate::futures`).
    watchers: Watchers,
}

/// A job, shared between the driver and the caller's handle.
pub(crate) struct JobShared {
    pub(crate) id: JobId,
    pub(crate) call: Call,
    pub(crate) time_limit: Option<Duration>,
    inner: Mutex<Inner>,
    cv: Condvar,
    /// Callers sleeping on `cv` (see [`JobShared::wake`]); changed under `inner`'s lock.
    sleepers: Sleepers,
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
    /// Where the reader threads write this job's results, if they do (see
    /// [`super::placement`]).
    placement: OnceLock<Arc<dyn PlaceAhead>>,
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
                watchers: Watchers::default(),
            }),
            cv: Condvar::new(),
            sleepers: Sleepers::new(),
            news: AtomicBool::new(false),
            awaited: AtomicBool::new(awaited),
            sent_to: OnceLock::new(),
            placement: OnceLock::new(),
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

    /// Where the reader threads write this job's results, if they do.
    pub(crate) fn placement(&self) -> Option<Arc<dyn PlaceAhead>> {
        self.placement.get().cloned()
    }

    /// The reader threads are to write this job's results at `placement`; set by the caller
    /// before it answers the first pull, so before any result arrives.
    pub(crate) fn place_results(&self, placement: Arc<dyn PlaceAhead>) {
        let _ = self.placement.set(placement);
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
        let watchers = inner.watchers.take();
        drop(inner);
        for watcher in watchers {
            watcher.notify();
        }
    }

    /// Tells `watcher` when the job finishes: at once if it has (checked under the lock that
    /// marks it finished, so no finish is missed).
    pub(crate) fn watch(&self, watcher: Watcher) {
        let mut inner = self.lock();
        if inner.finished {
            drop(inner);
            watcher.notify();
        } else {
            inner.watchers.add(watcher);
        }
    }

    /// Wakes the callers sleeping on this job, after news was stored under its lock.
    ///
    /// A caller counts itself in `sleepers` under the lock before it sleeps, and the news was
    /// stored under that lock before this call: either the caller saw the news and does not
    /// sleep, or its count happened before the news and is seen here. So a count of zero
    /// means nobody needs the wake, and the futex call (a system call even with no waiter,
    /// two per `apply_async`) is skipped.
    pub(crate) fn wake(&self) {
        self.sleepers.wake(&self.cv);
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
        // afterwards sees the count (see `wake` and `sleepers.rs`).
        Some(self.sleepers.sleep(&self.cv, inner, timeout))
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
    use crate::pool::payload::decoder;
    use crate::task::Panic;

    /// A chunk's results as a worker encodes them.
    fn frame(results: &[Result<u64, Panic>]) -> ChunkResult {
        ChunkResult::Bytes {
            frame: postcard::to_extend(results, vec![crate::bulk::SERDE]).unwrap(),
            body_at: 0,
            pid: 42,
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
}
