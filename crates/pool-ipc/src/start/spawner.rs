//! The long-lived thread children are started from.
//!
//! `PR_SET_PDEATHSIG` kills a child when the *thread* that created it exits, not the
//! process. Children are therefore created from a thread that lives as long as the process,
//! so that a pool created on a short-lived thread (a test, a request handler) keeps its
//! workers until the process dies. The main thread is such a thread: a start asked for there
//! happens there, with no hop (two thread wake-ups on the path of every start). A start asked
//! for on any other thread happens on one long-lived spawner thread, started on first use.
//! The `spawn` start method starts its children there, and `fork` forks there.

use std::io;
use std::process::Command;
use std::sync::mpsc;

use crate::fork_safety::PerProcess;
use crate::sys;

type Job = Box<dyn FnOnce() + Send>;

/// Per process: a forked child has no spawner thread until it starts its own.
static JOBS: PerProcess<mpsc::Sender<Job>> = PerProcess::new();

/// The spawner thread's stack: a child forked from it (`fork`) runs its closure there, so
/// it gets what a main thread usually has. Only touched pages cost memory.
const STACK: usize = 8 << 20;

/// Runs `job` on a thread that lives as long as the process and returns its result: here
/// on the main thread, else on the spawner thread.
pub(crate) fn run<R: Send + 'static>(job: impl FnOnce() -> R + Send + 'static) -> io::Result<R> {
    if sys::on_main_thread() {
        return Ok(job());
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    let jobs = JOBS.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pool-ipc-spawner".into())
            .stack_size(STACK)
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("starting the spawner thread");
        tx
    });
    jobs.send(Box::new(move || {
        let _ = reply_tx.send(job());
    }))
    .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))
}

pub(super) fn spawn(mut command: Command) -> io::Result<std::process::Child> {
    run(move || command.spawn())?
}
