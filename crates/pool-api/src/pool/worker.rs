//! The worker process's side of a pool: run the initializer, then chunks, until told to
//! retire or until the parent is gone.
//!
//! The loop is single-threaded and runs chunks in the order they arrive, which is what the
//! scheduler's model of a worker assumes. Before each chunk it tells the parent `Started`, so
//! that a worker that dies inside a chunk fails that chunk (it is never run twice) while the
//! chunks still queued behind it are given to other workers.
//!
//! It is its own file because it runs in the worker process, where nothing else of `pool/`
//! runs: it shares only the task protocol (`task.rs`) with the parent's side.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pool_ipc::ChildStart;
use serde::{Deserialize, Serialize};

use crate::process;
use crate::task::{self, Call, FromWorker, Input, Panic, ToWorker};

/// What a worker is started with.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerBoot {
    pub(crate) name: String,
    pub(crate) initializer: Option<(Call, Vec<u8>)>,
}

/// Exit code of a worker that received something it could not decode from its parent.
const EXIT_PROTOCOL: i32 = 71;

/// The worker's sending half. The loop sends through it between tasks; the panic hook sends
/// through it while a task panics (the loop is then inside the task, not sending).
static TO_PARENT: Mutex<Option<pool_ipc::Sender>> = Mutex::new(None);

/// Tells the parent that the running task panicked, before unwinding starts. Under
/// `panic = "abort"` the worker dies right after the hook, and without this the parent would
/// only see a worker killed by SIGABRT.
fn report_panic(panic: &Panic) {
    let msg = FromWorker::Panicking {
        message: panic.message.clone(),
        location: panic.location.clone(),
    };
    // `try_lock`: a panic while sending (the loop holds the lock) is not a task's panic.
    if let (Ok(mut guard), Ok(header)) = (TO_PARENT.try_lock(), task::header_bytes(&msg)) {
        if let Some(tx) = guard.as_mut() {
            let _ = tx.send_parts(&[&header], None);
        }
    }
}

/// Sends one message and the results that follow it; false once the parent is gone.
fn send(msg: &FromWorker, body: &[u8]) -> bool {
    let mut guard = TO_PARENT.lock().unwrap_or_else(|e| e.into_inner());
    match (guard.as_mut(), task::header_bytes(msg)) {
        (Some(tx), Ok(header)) => tx.send_parts(&[&header, body], None).is_ok(),
        _ => false,
    }
}

/// A receive or result buffer larger than this is given back to the system when the worker
/// has been idle for [`RELEASE_AFTER`]; smaller ones are kept for good (the allocator recycles
/// them well, and an idle worker holds at most twice this).
const KEPT_IDLE: usize = 256 << 10;

/// How long a worker holding large buffers waits for its next task before it gives them back.
/// Tasks that follow each other closer than this (a `map` of large items) reuse them. Giving
/// them back costs their page faults when the next large task comes (a few ms for 8 MiB), so
/// this is long enough that the cost stays a few percent of the time spent idle, and that a
/// loaded machine (where a worker waits for a descheduled parent) does not trigger it mid-map:
/// at 10 ms, W4 on a machine shared with builds lost 10-20%.
const RELEASE_AFTER: Duration = Duration::from_millis(100);

/// Gives back the large buffers of the last task (see [`KEPT_IDLE`]), and what the allocator
/// kept of the task's own large values (its arguments and results, freed when it ended): glibc
/// keeps freed memory at the top of its heap, up to tens of MiB after large blocks.
fn release(buf: &mut Vec<u8>, out: &mut Vec<u8>) {
    for b in [buf, out] {
        if b.capacity() > KEPT_IDLE {
            *b = Vec::new();
        }
    }
    pool_ipc::os::release_free_memory();
}

/// A message up to this long is read whole into the receive buffer, in one read, and its
/// header decoded from there; a longer one has its header read first, so that a task of
/// byte vectors can be run while it is read (see [`Received::Ran`]). Read in three parts
/// (the header's length, the header, the body), a task of one small item spent about twice
/// as long receiving as one read takes (perf, W3 with chunks of one item).
const READ_WHOLE_UP_TO: usize = 64 << 10;

/// What one message from the parent came to.
enum Received {
    /// A message other than a task of byte vectors read as it arrives; its body is the
    /// receive buffer from the offset given.
    Message(ToWorker, usize),
    /// A task of byte vectors, run while it was received: each item was read straight out
    /// of the channel into its own vector just before it ran (see `task::Input::ByteVecs`).
    Ran {
        job: u64,
        index: u32,
        ran: Result<(), String>,
    },
    /// The parent is gone.
    Gone,
}

/// Reads a message's header (see [`task::header_bytes`]) into `head` and decodes it.
fn read_header(r: &mut pool_ipc::MessageReader<'_>, head: &mut Vec<u8>) -> Option<ToWorker> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).ok()?;
    head.clear();
    r.read_to_vec(head, u32::from_le_bytes(len) as usize).ok()?;
    postcard::from_bytes(head).ok()
}

/// Tells the parent that the chunk `job`/`index` starts, together with the report of the
/// task held back (its results in `out`), if any; false once the parent is gone.
fn report_start(held: &mut Option<(u64, u32)>, job: u64, index: u32, out: &[u8]) -> bool {
    match held.take() {
        Some((done_job, done_index)) => send(
            &FromWorker::FinishedThenStarted {
                job: done_job,
                index: done_index,
                next_job: job,
                next_index: index,
            },
            out,
        ),
        None => send(&FromWorker::Started { job, index }, &[]),
    }
}

/// Reports how the chunk `job`/`index` ran: held back (in `held`) if the next task is
/// already here (`next_here`), so that both reports share a message; false once the parent
/// is gone.
fn report_end(
    held: &mut Option<(u64, u32)>,
    next_here: bool,
    job: u64,
    index: u32,
    ran: Result<(), String>,
    out: &[u8],
) -> bool {
    match ran {
        // The next task is already here, whole: report this one together with its start.
        // Otherwise report now, so the result is not held up (by a large next task still
        // arriving, say).
        Ok(()) if next_here => {
            *held = Some((job, index));
            true
        }
        Ok(()) => send(&FromWorker::Finished { job, index }, out),
        Err(message) => send(
            &FromWorker::Failed {
                job,
                index,
                message,
            },
            &[],
        ),
    }
}

/// The entry point of pool workers (a `pool_ipc::ChildMain`).
pub(crate) fn worker_main(start: ChildStart) -> i32 {
    task::install_panic_hook();
    task::report_panics_to(report_panic);
    let Ok(boot) = postcard::from_bytes::<WorkerBoot>(&start.payload) else {
        return EXIT_PROTOCOL;
    };
    process::set_current(boot.name.clone());
    let (tx, mut rx) = start.channel.split();
    *TO_PARENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let mut out = Vec::new();
    if let Some((call, args)) = &boot.initializer {
        // Handles in the initializer's arguments find the descriptors this worker inherited.
        let failure =
            match crate::handles::with_descriptors(start.inherited, || call.run(args, &mut out)) {
                Err(message) => Some(message),
                Ok(()) => match task::decode_results::<()>(&out) {
                    Ok(mut r) if r.len() == 1 => r.pop().and_then(|r| r.err()).map(|p| p.message),
                    _ => Some("the initializer's outcome could not be decoded".into()),
                },
            };
        if let Some(message) = failure {
            send(&FromWorker::InitFailed { message }, &[]);
            return 1;
        }
    }
    if !send(&FromWorker::Ready, &[]) {
        return 0;
    }
    let mut buf = Vec::new();
    let mut head = Vec::new();
    // A finished task's report, held back while the next task is already arriving, so that
    // "finished N" and "started N+1" share one message (one write instead of two). Its
    // results are in `out`.
    let mut held: Option<(u64, u32)> = None;
    loop {
        if held.is_none() && (buf.capacity() > KEPT_IDLE || out.capacity() > KEPT_IDLE) {
            // Large buffers of the last task: kept while tasks keep coming (the next one
            // reuses them instead of faulting fresh pages in), given back once idle.
            match rx.wait_readable(Some(Instant::now() + RELEASE_AFTER)) {
                Ok(true) => {}
                Ok(false) => release(&mut buf, &mut out),
                Err(_) => return 0,
            }
        }
        let received = rx.recv_with(|r| {
            buf.clear();
            let len = r.remaining();
            if len <= READ_WHOLE_UP_TO {
                r.read_to_vec(&mut buf, len).ok()?;
                let (msg, body) = task::split_frame::<ToWorker>(&buf).ok()?;
                return Some(Received::Message(msg, len - body.len()));
            }
            let msg = read_header(r, &mut head)?;
            if let ToWorker::Task {
                job,
                index,
                call,
                fds: 0,
                byte_vecs: true,
            } = msg
            {
                if !report_start(&mut held, job, index, &out) {
                    return Some(Received::Gone);
                }
                let ran = call.run_input(Input::ByteVecs(r), &mut out);
                return Some(Received::Ran { job, index, ran });
            }
            let rest = r.remaining();
            r.read_to_vec(&mut buf, rest).ok()?;
            Some(Received::Message(msg, 0))
        });
        let (msg, body_at) = match received {
            // The parent is gone (or closed our channel): nothing more to do.
            Err(_) | Ok(Some(Received::Gone)) => return 0,
            Ok(None) => return EXIT_PROTOCOL,
            Ok(Some(Received::Ran { job, index, ran })) => {
                if !report_end(&mut held, rx.has_message(), job, index, ran, &out) {
                    return 0;
                }
                continue;
            }
            Ok(Some(Received::Message(msg, body_at))) => (msg, body_at),
        };
        match msg {
            // A task of byte vectors read whole (a small one) runs from the buffer: the
            // same bytes, in postcard's layout.
            ToWorker::Task {
                job,
                index,
                call,
                fds,
                byte_vecs: _,
            } => {
                // The descriptors of the handles in the arguments came with the message.
                let Some(fds) = rx.take_fds(fds as usize) else {
                    return EXIT_PROTOCOL;
                };
                if !report_start(&mut held, job, index, &out) {
                    return 0;
                }
                let ran =
                    crate::handles::with_descriptors(fds, || call.run(&buf[body_at..], &mut out));
                if !report_end(&mut held, rx.has_message(), job, index, ran, &out) {
                    return 0;
                }
            }
            ToWorker::Retire => {
                if let Some((job, index)) = held.take() {
                    send(&FromWorker::Finished { job, index }, &out);
                }
                return 0;
            }
        }
    }
}
