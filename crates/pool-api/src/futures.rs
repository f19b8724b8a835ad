//! `concurrent.futures` for the results of [`Pool`](crate::Pool) and
//! [`ThreadPool`](crate::ThreadPool): wait for a group of result handles
//! ([`as_completed`], [`wait`]), and `.await` any one of them.
//!
//! Every result handle ([`AsyncResult`](crate::AsyncResult),
//! [`MapResult`](crate::MapResult), and the thread pool's) is a [`Completion`]. A job keeps a
//! list of *watchers*, told once when it finishes: a waiting group (a set of indices and a
//! condvar, for `as_completed` and `wait`) or an async task's `Waker` (for `.await`). A
//! watcher added to a finished job is told at once, under the same lock that marks the job
//! finished, so no completion is missed between "is it done?" and "tell me when it is".
//!
//! Handles are also `Future`s, so `pool.apply_async(f, x)?.await` works in any executor
//! (tokio, smol, a hand-written `block_on`) without blocking its threads: the pool's own
//! threads wake the task. Nothing here depends on an async runtime.
//!
//! ```
//! use std::time::Duration;
//! use pool_api::futures::{as_completed_timeout, wait, ReturnWhen};
//! use pool_api::{Error, Pool};
//!
//! fn slow_square(x: u64) -> u64 {
//!     std::thread::sleep(Duration::from_millis(10 * x));
//!     x * x
//! }
//!
//! let pool = Pool::new(2)?;
//! let handles = (1..=4)
//!     .map(|x| pool.apply_async(slow_square, x))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let mut seen = 0;
//! for done in as_completed_timeout(&handles, Duration::from_secs(30)) {
//!     let handle = done?; // Err(Error::Unfinished { .. }) if the time ran out
//!     seen += handle.get()?;
//! }
//! assert_eq!(seen, 1 + 4 + 9 + 16);
//! let all = wait(&handles, ReturnWhen::AllCompleted);
//! assert_eq!((all.done.len(), all.not_done.len()), (4, 0));
//! # Ok::<(), Error>(())
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Error;

/// The watcher machinery. Its items are public only to the crate: the module is private, so
/// no user can name them (the sealed trait's signature may use them).
mod watch {
    use std::collections::VecDeque;
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Condvar, Mutex};
    use std::task::Waker;
    use std::time::Instant;

    /// Who is told when a job finishes.
    #[derive(Debug)]
    pub enum Watcher {
        /// A waiting group: the job's index in it goes into its ready queue.
        Group(Arc<Group>, usize),
        /// An async task polling the job.
        Task(Waker),
        /// A `connection::wait` over descriptors: a byte written wakes its `poll`.
        Socket(Arc<UnixStream>),
    }

    impl Watcher {
        /// Tells the watcher that its job finished.
        pub fn notify(self) {
            match self {
                Watcher::Group(group, index) => group.ready(index),
                Watcher::Task(waker) => waker.wake(),
                // Non-blocking: one byte is enough, and a full socket is awake already.
                Watcher::Socket(stream) => {
                    let _ = (&*stream).write(&[1]);
                }
            }
        }
    }

    /// The watchers of one job, kept under the job's own lock.
    #[derive(Debug, Default)]
    pub(crate) struct Watchers(Vec<Watcher>);

    impl Watchers {
        /// Adds a watcher to an unfinished job (the caller checked, under the job's lock). A task
        /// that polls again replaces its earlier waker instead of piling them up.
        pub(crate) fn add(&mut self, watcher: Watcher) {
            if let Watcher::Task(new) = &watcher {
                self.0
                    .retain(|w| !matches!(w, Watcher::Task(old) if old.will_wake(new)));
            }
            self.0.push(watcher);
        }

        /// The watchers to tell, taken when the job finishes (told after its lock is released).
        pub(crate) fn take(&mut self) -> Vec<Watcher> {
            std::mem::take(&mut self.0)
        }
    }

    /// A set of jobs waited for together: the indices of those that finished, in order.
    #[derive(Debug, Default)]
    pub struct Group {
        ready: Mutex<VecDeque<usize>>,
        cv: Condvar,
    }

    impl Group {
        pub(super) fn ready(&self, index: usize) {
            self.ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(index);
            self.cv.notify_all();
        }

        /// The next finished index, waiting until `deadline`; `None` when it passed.
        pub(super) fn next(&self, deadline: Option<Instant>) -> Option<usize> {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(index) = ready.pop_front() {
                    return Some(index);
                }
                ready = match deadline {
                    None => self.cv.wait(ready).unwrap_or_else(|e| e.into_inner()),
                    Some(d) => {
                        let left = d.checked_duration_since(Instant::now())?;
                        if left.is_zero() {
                            return None;
                        }
                        self.cv
                            .wait_timeout(ready, left)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            }
        }
    }
}

pub(crate) use watch::{Group, Watcher, Watchers};

mod sealed {
    /// Only this crate's result handles are completions: the trait's machinery is ours.
    pub trait Sealed {
        /// Tells `watcher` once the job finished (at once if it has).
        fn watch(&self, watcher: super::Watcher);
        /// The job's identity: two handles of one job have the same.
        fn job_key(&self) -> usize;
    }
}

/// A result handle whose completion can be waited for with others: every result handle of
/// [`Pool`](crate::Pool) and [`ThreadPool`](crate::ThreadPool). Handles of different types
/// mix as `&dyn Completion`.
pub trait Completion: sealed::Sealed {
    /// Whether the work finished (with a value or an error): `done()` of Python's futures.
    fn is_done(&self) -> bool;
    /// Whether the work finished with an error (for a batch: any item's). `false` while it
    /// runs.
    fn has_failed(&self) -> bool;
}

pub(crate) use sealed::Sealed;

/// The distinct handles of `handles`, in order (a handle given twice counts once).
fn distinct<'a, H: Completion + ?Sized + 'a>(
    handles: impl IntoIterator<Item = &'a H>,
) -> Vec<&'a H> {
    let mut seen = std::collections::HashSet::new();
    handles
        .into_iter()
        .filter(|h| seen.insert(h.job_key()))
        .collect()
}

/// Registers a group watching every handle.
fn watch_all<H: Completion + ?Sized>(handles: &[&H]) -> Arc<Group> {
    let group = Arc::new(Group::default());
    for (index, handle) in handles.iter().enumerate() {
        handle.watch(Watcher::Group(Arc::clone(&group), index));
    }
    group
}

/// Yields each handle as its work finishes, in completion order (Python's `as_completed`).
/// A handle given twice is yielded once.
pub fn as_completed<'a, H>(handles: impl IntoIterator<Item = &'a H>) -> AsCompleted<'a, H>
where
    H: Completion + ?Sized + 'a,
{
    AsCompleted::new(distinct(handles), None)
}

/// [`as_completed`] within `timeout` (counted from this call): once it passes, the iterator
/// yields one [`Error::Unfinished`] saying how many of how many handles did not finish, then
/// ends.
pub fn as_completed_timeout<'a, H>(
    handles: impl IntoIterator<Item = &'a H>,
    timeout: Duration,
) -> AsCompleted<'a, H>
where
    H: Completion + ?Sized + 'a,
{
    AsCompleted::new(distinct(handles), crate::deadline_in(timeout))
}

/// The iterator of [`as_completed`].
pub struct AsCompleted<'a, H: ?Sized> {
    handles: Vec<&'a H>,
    group: Arc<Group>,
    deadline: Option<Instant>,
    yielded: usize,
    timed_out: bool,
}

impl<'a, H: Completion + ?Sized> AsCompleted<'a, H> {
    fn new(handles: Vec<&'a H>, deadline: Option<Instant>) -> AsCompleted<'a, H> {
        let group = watch_all(&handles);
        AsCompleted {
            handles,
            group,
            deadline,
            yielded: 0,
            timed_out: false,
        }
    }
}

impl<H: ?Sized> std::fmt::Debug for AsCompleted<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("handles", &self.handles.len())
            .field("yielded", &self.yielded)
            .finish_non_exhaustive()
    }
}

impl<'a, H: Completion + ?Sized> Iterator for AsCompleted<'a, H> {
    type Item = Result<&'a H, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.yielded == self.handles.len() || self.timed_out {
            return None;
        }
        match self.group.next(self.deadline) {
            Some(index) => {
                self.yielded += 1;
                Some(Ok(self.handles[index]))
            }
            None => {
                self.timed_out = true;
                Some(Err(Error::Unfinished {
                    unfinished: self.handles.len() - self.yielded,
                    total: self.handles.len(),
                }))
            }
        }
    }
}

/// When [`wait`] returns (Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`, `ALL_COMPLETED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnWhen {
    /// As soon as any handle is done.
    FirstCompleted,
    /// As soon as any handle failed, or when all are done.
    FirstException,
    /// When all are done.
    AllCompleted,
}

/// What [`wait`] found: the handles done and those not done (Python's `DoneAndNotDoneFutures`),
/// each in the order given.
#[derive(Debug)]
pub struct Done<'a, H: ?Sized> {
    /// Finished handles.
    pub done: Vec<&'a H>,
    /// Handles still running.
    pub not_done: Vec<&'a H>,
}

/// Waits for the handles as `return_when` says (Python's `concurrent.futures.wait`).
pub fn wait<'a, H>(handles: impl IntoIterator<Item = &'a H>, return_when: ReturnWhen) -> Done<'a, H>
where
    H: Completion + ?Sized + 'a,
{
    wait_until(distinct(handles), return_when, None)
}

/// [`wait`] for at most `timeout`; what is done then.
pub fn wait_timeout<'a, H>(
    handles: impl IntoIterator<Item = &'a H>,
    return_when: ReturnWhen,
    timeout: Duration,
) -> Done<'a, H>
where
    H: Completion + ?Sized + 'a,
{
    wait_until(distinct(handles), return_when, crate::deadline_in(timeout))
}

fn wait_until<'a, H: Completion + ?Sized>(
    handles: Vec<&'a H>,
    return_when: ReturnWhen,
    deadline: Option<Instant>,
) -> Done<'a, H> {
    let group = watch_all(&handles);
    let mut finished = vec![false; handles.len()];
    let mut count = 0;
    while count < handles.len() {
        let Some(index) = group.next(deadline) else {
            break;
        };
        finished[index] = true;
        count += 1;
        match return_when {
            ReturnWhen::FirstCompleted => break,
            ReturnWhen::FirstException if handles[index].has_failed() => break,
            _ => {}
        }
    }
    let (mut done, mut not_done) = (Vec::new(), Vec::new());
    for (handle, finished) in handles.into_iter().zip(finished) {
        // A handle that finished after the loop stopped is done too, as Python reports it.
        if finished || handle.is_done() {
            done.push(handle);
        } else {
            not_done.push(handle);
        }
    }
    Done { done, not_done }
}
