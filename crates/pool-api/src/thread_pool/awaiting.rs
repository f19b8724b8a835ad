//! A thread pool's result handles as [`Completion`]s (waited for in groups by
//! `crate::futures`) and as `Future`s (awaited in any executor): both rest on the job's
//! watchers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::shared::Job;
use super::{ThreadAsyncResult, ThreadMapResult, first_error};
use crate::Error;
use crate::futures::{Completion, Sealed, Watcher};

fn key<R>(job: &Arc<Job<R>>) -> usize {
    Arc::as_ptr(job) as usize
}

/// Ready once the job finished; otherwise the task's waker is registered (and told at once
/// if the job finished meanwhile).
fn poll_finished<R: Send + 'static>(job: &Job<R>, cx: &mut Context<'_>) -> Poll<()> {
    if job.is_finished() {
        return Poll::Ready(());
    }
    job.watch(Watcher::Task(cx.waker().clone()));
    Poll::Pending
}

impl<R: Send + 'static> Sealed for ThreadAsyncResult<R> {
    fn watch(&self, watcher: Watcher) {
        self.job.watch(watcher);
    }
    fn job_key(&self) -> usize {
        key(&self.job)
    }
}

impl<R: Send + 'static> Completion for ThreadAsyncResult<R> {
    fn is_done(&self) -> bool {
        self.job.is_finished()
    }
    fn has_failed(&self) -> bool {
        matches!(self.job.successful(), Ok(false))
    }
}

/// `thread_pool.apply_async(f, x)?.await`: the task's result (taken, as `get` takes it).
impl<R: Send + 'static> Future for ThreadAsyncResult<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_finished(&self.job, cx).map(|()| self.take())
    }
}

impl<R: Send + 'static> Sealed for ThreadMapResult<R> {
    fn watch(&self, watcher: Watcher) {
        self.job.watch(watcher);
    }
    fn job_key(&self) -> usize {
        key(&self.job)
    }
}

impl<R: Send + 'static> Completion for ThreadMapResult<R> {
    fn is_done(&self) -> bool {
        self.job.is_finished()
    }
    fn has_failed(&self) -> bool {
        matches!(self.job.successful(), Ok(false))
    }
}

/// `thread_pool.map_async(f, xs, None)?.await`: every value (taken), or the lowest-index
/// error.
impl<R: Send + 'static> Future for ThreadMapResult<R> {
    type Output = Result<Vec<R>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        poll_finished(&self.job, cx).map(|()| self.job.take_outcomes().and_then(first_error))
    }
}

/// A result handle in [`connection::wait`](crate::wait): ready once its work finished.
impl<R: Send + 'static> crate::Waitable for ThreadAsyncResult<R> {
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
impl<R: Send + 'static> crate::Waitable for ThreadMapResult<R> {
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
