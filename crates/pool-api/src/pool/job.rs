//! One job as the driver and its caller share it: where its input comes from, the chunks
//! delivered (in the scheduler's delivery order), and whether it is finished.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pool_core::{Chunk, ChunkId, JobId};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::task::{self, Call};

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
    /// Encodes `value`, collecting the handles' descriptors.
    pub(crate) fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Payload, Error> {
        let (bytes, fds) = crate::handles::encode(value)?;
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
    /// `map`, `imap`: the waiting caller's thread reads and encodes chunks as they are pulled.
    Caller,
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
    /// No result.
    Failed(Error),
}

impl ChunkResult {
    /// The chunk's per-item outcomes (`items` of them).
    pub(crate) fn decode<R: DeserializeOwned>(&self, items: u32) -> Vec<Result<R, Error>> {
        match self {
            ChunkResult::Failed(e) => (0..items).map(|_| Err(e.clone())).collect(),
            ChunkResult::Bytes {
                frame,
                body_at,
                pid,
            } => match task::decode_results::<R>(&frame[*body_at..]) {
                Ok(results) if results.len() == items as usize => results
                    .into_iter()
                    .map(|r| {
                        r.map_err(|p| Error::Panicked {
                            message: p.message,
                            location: p.location,
                            pid: *pid,
                        })
                    })
                    .collect(),
                Ok(_) => (0..items)
                    .map(|_| {
                        Err(Error::Codec(
                            "a chunk came back with the wrong number of results".into(),
                        ))
                    })
                    .collect(),
                Err(e) => (0..items).map(|_| Err(e.clone())).collect(),
            },
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
    ) -> Arc<JobShared> {
        Arc::new(JobShared {
            id,
            call,
            time_limit,
            inner: Mutex::new(Inner {
                source,
                pull: None,
                delivered: VecDeque::new(),
                finished: false,
                callback,
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- the driver's side -----

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
            Source::Caller => None,
        }
    }

    pub(crate) fn request_pull(&self, chunk: ChunkId, max_items: u32) {
        self.lock().pull = Some((chunk, max_items));
    }

    pub(crate) fn deliver(&self, chunk: Chunk, result: ChunkResult) {
        self.lock().delivered.push_back((chunk, result));
    }

    pub(crate) fn finish(&self) {
        let mut inner = self.lock();
        inner.finished = true;
        inner.pull = None;
    }

    pub(crate) fn wake(&self) {
        self.cv.notify_all();
    }

    pub(crate) fn take_callback(&self) -> Option<Callback> {
        self.lock().callback.take()
    }

    // ----- the caller's side -----

    /// Waits for something to do: a pull to answer, chunks to take, or the end.
    pub(crate) fn next_wake(&self, deadline: Option<Instant>) -> Wake {
        let mut inner = self.lock();
        loop {
            if let Some((chunk, max_items)) = inner.pull.take() {
                return Wake::Pull { chunk, max_items };
            }
            if !inner.delivered.is_empty() {
                return Wake::Delivered(inner.delivered.drain(..).collect());
            }
            if inner.finished {
                return Wake::Finished;
            }
            inner = match deadline {
                None => self.cv.wait(inner).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Wake::TimedOut;
                    }
                    self.cv
                        .wait_timeout(inner, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Waits until the job is finished (for jobs whose input needs no caller).
    pub(crate) fn wait_finished(&self, deadline: Option<Instant>) -> bool {
        let mut inner = self.lock();
        while !inner.finished {
            inner = match deadline {
                None => self.cv.wait(inner).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.cv
                        .wait_timeout(inner, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        true
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Every item's outcome, in input order, without consuming them (a finished, ordered job
    /// whose chunks were not taken by a caller).
    pub(crate) fn outcomes<R: DeserializeOwned>(&self) -> Vec<Result<R, Error>> {
        let inner = self.lock();
        inner
            .delivered
            .iter()
            .flat_map(|(chunk, result)| result.decode::<R>(chunk.items))
            .collect()
    }
}
