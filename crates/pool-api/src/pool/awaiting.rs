//! A pool's result handles as [`Completion`]s (waited for in groups by `crate::futures`) and
//! as `Future`s (awaited in any executor): both rest on the job's watchers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::de::DeserializeOwned;

use super::job::JobShared;
use super::{AsyncResult, MapResult, single};
use crate::Error;
use crate::futures::{Completion, Sealed, Watcher};

fn key(job: &Arc<JobShared>) -> usize {
    Arc::as_ptr(job) as usize
}

/// Ready once the job finished; otherwise the task's waker is registered (and told at once
/// if the job finished meanwhile).
fn poll_finished(job: &JobShared, cx: &mut Context<'_>) -> Poll<()> {
    if job.is_finished() {
        return Poll::Ready(());
    }
    job.watch(Watcher::Task(cx.waker().clone()));
    Poll::Pending
}

impl<R> Sealed for AsyncResult<R> {
    fn watch(&self, watcher: Watcher) {
        self.job.watch(watcher);
    }
    fn job_key(&self) -> usize {
        key(&self.job)
    }
}

impl<R: DeserializeOwned> Completion for AsyncResult<R> {
    fn is_done(&self) -> bool {
        self.job.is_finished()
    }
    fn has_failed(&self) -> bool {
        self.job.is_finished() && single::<R>(&self.job).is_err()
    }
}

/// `pool.apply_async(f, x)?.await`: the task's result, without blocking the executor's
/// thread (the pool's reader thread wakes the task).
impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_finished(&self.job, cx).map(|()| single(&self.job))
    }
}

impl<R> Sealed for MapResult<R> {
    fn watch(&self, watcher: Watcher) {
        self.job.watch(watcher);
    }
    fn job_key(&self) -> usize {
        key(&self.job)
    }
}

impl<R: DeserializeOwned> Completion for MapResult<R> {
    fn is_done(&self) -> bool {
        self.job.is_finished()
    }
    fn has_failed(&self) -> bool {
        self.job.is_finished() && self.job.first_error::<R>().is_err()
    }
}

/// `pool.map_async(f, xs, None)?.await`: every value, or the lowest-index error.
impl<R: DeserializeOwned> Future for MapResult<R> {
    type Output = Result<Vec<R>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_finished(&self.job, cx).map(|()| self.job.first_error())
    }
}

/// A result handle in [`connection::wait`](crate::wait): ready once its work finished.
impl<R: DeserializeOwned> crate::Waitable for AsyncResult<R> {
    fn ready_now(&self) -> bool {
        self.job.is_finished()
    }
    fn sentinel(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    fn completion(&self) -> Option<&dyn Completion> {
        Some(self)
    }
}

/// A result handle in [`connection::wait`](crate::wait): ready once its work finished.
impl<R: DeserializeOwned> crate::Waitable for MapResult<R> {
    fn ready_now(&self) -> bool {
        self.job.is_finished()
    }
    fn sentinel(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    fn completion(&self) -> Option<&dyn Completion> {
        Some(self)
    }
}
