//! The callback runner ([`CallbackRunner`]): the one thread per pool on which the callbacks
//! of finished jobs run, in completion order, and the count of callbacks still to run that
//! `join` waits for.
//!
//! It is its own file because it only needs a finished job and its callback (`job.rs`): it
//! knows nothing of workers or the scheduler. The driver hands it a job's callback once the
//! job finished, counted under the state lock so that `join` cannot miss it. (The user's
//! `Callbacks<R>`, in `mod.rs`, is what such a callback is made from.)

use std::sync::{Arc, Condvar, Mutex, mpsc};

use super::job::JobShared;

/// A finished job and the callback to run with it.
type PendingCallback = (Arc<JobShared>, super::job::Callback);

thread_local! {
    /// Set on the callback thread while a callback runs.
    /// Which pool's callback runs on this thread (the address of its `Pending`), if any.
    static IN_CALLBACK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The one thread on which a pool's callbacks run, in completion order.
#[derive(Debug)]
pub(super) struct CallbackRunner {
    queue: Mutex<Option<mpsc::Sender<PendingCallback>>>,
    /// Held while a callback runs, so that `terminate` can wait for it to return.
    running: Arc<Mutex<()>>,
    /// `false` once the pool was terminated: no more callbacks run.
    enabled: Arc<std::sync::atomic::AtomicBool>,
    /// Callbacks of finished jobs not yet run (or skipped), for `join`.
    pending: Arc<Pending>,
}

/// A count of callbacks still to run, and a condvar to wait for it to reach zero.
#[derive(Debug, Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

impl Pending {
    fn done_one(&self) {
        let mut count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.idle.notify_all();
        }
    }
}

impl CallbackRunner {
    pub(super) fn start() -> CallbackRunner {
        let (tx, rx) = mpsc::channel::<PendingCallback>();
        let enabled = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let running = Arc::new(Mutex::new(()));
        let pending = Arc::new(Pending::default());
        let (gate, busy, counted) = (
            Arc::clone(&enabled),
            Arc::clone(&running),
            Arc::clone(&pending),
        );
        std::thread::Builder::new()
            .name("pool-callbacks".into())
            .spawn(move || {
                for (job, callback) in rx {
                    let running = busy.lock().unwrap_or_else(|e| e.into_inner());
                    if gate.load(std::sync::atomic::Ordering::SeqCst) {
                        IN_CALLBACK.with(|c| c.set(Arc::as_ptr(&counted) as usize));
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                callback(&job)
                            }));
                        IN_CALLBACK.with(|c| c.set(0));
                        if outcome.is_err() {
                            crate::log::error!(
                                "a result callback panicked; later callbacks still run"
                            );
                        }
                    }
                    drop(running);
                    counted.done_one();
                }
            })
            .expect("starting the pool's callback thread");
        CallbackRunner {
            queue: Mutex::new(Some(tx)),
            running,
            enabled,
            pending,
        }
    }

    /// A finished job's callback will be handed to [`CallbackRunner::run`].
    pub(super) fn expect_one(&self) {
        *self.pending.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    pub(super) fn run(&self, job: Arc<JobShared>, callback: super::job::Callback) {
        let queued = match &*self.queue.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(queue) => queue.send((job, callback)).is_ok(),
            None => false,
        };
        if !queued {
            self.pending.done_one();
        }
    }

    /// Waits until every callback handed over has run (or was skipped after `terminate`),
    /// unless this is the callback thread.
    pub(super) fn wait_idle(&self) {
        if self.on_own_thread() {
            return;
        }
        let mut count = self.pending.count.lock().unwrap_or_else(|e| e.into_inner());
        while *count > 0 {
            count = self
                .pending
                .idle
                .wait(count)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Starts no more callbacks (those queued are skipped).
    pub(super) fn disable(&self) {
        self.enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits for a running callback to return, unless it is that very callback asking (a
    /// callback may terminate its own pool).
    pub(super) fn wait_running(&self) {
        if !self.on_own_thread() {
            drop(self.running.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Whether this thread is this pool's callback thread, running a callback.
    fn on_own_thread(&self) -> bool {
        IN_CALLBACK.with(std::cell::Cell::get) == Arc::as_ptr(&self.pending) as usize
    }

    pub(super) fn stop(&self) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

// The test reads what was logged, which needs `tracing`.
#[cfg(all(test, feature = "tracing"))]
mod tests {
    fn double(x: u64) -> u64 {
        2 * x
    }

    /// The messages of every `tracing` event of this test binary, from a subscriber installed
    /// on first use (callbacks log on the pool's callback thread, so it must be global).
    fn logged() -> &'static std::sync::Mutex<Vec<String>> {
        static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        static INSTALL: std::sync::Once = std::sync::Once::new();

        struct Recorder;

        impl tracing::Subscriber for Recorder {
            fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
                tracing::span::Id::from_u64(1)
            }
            fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
            fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
            fn event(&self, event: &tracing::Event<'_>) {
                struct Message(String);
                impl tracing::field::Visit for Message {
                    fn record_debug(
                        &mut self,
                        field: &tracing::field::Field,
                        value: &dyn std::fmt::Debug,
                    ) {
                        if field.name() == "message" {
                            self.0 = format!("{value:?}");
                        }
                    }
                }
                let mut message = Message(String::new());
                event.record(&mut message);
                LOGGED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(message.0);
            }
            fn enter(&self, _: &tracing::span::Id) {}
            fn exit(&self, _: &tracing::span::Id) {}
        }

        INSTALL.call_once(|| {
            let _ = tracing::subscriber::set_global_default(Recorder);
        });
        &LOGGED
    }

    /// A callback that panics is reported through `tracing`, and the callbacks after it run.
    #[test]
    fn a_panicking_callback_is_reported_and_later_callbacks_run() {
        let logged = logged();
        let pool = crate::Pool::builder().processes(1).build().unwrap();
        let buggy = crate::Callbacks::none().on_ok(|_: u64| panic!("a bug in a callback"));
        let first = pool.apply_async_with(double, 1, buggy).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let fine = crate::Callbacks::none().on_ok(move |v: u64| tx.send(v).unwrap());
        let second = pool.apply_async_with(double, 2, fine).unwrap();
        // Callbacks run in completion order on one thread: the first has run when the second
        // reports.
        assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(20)), Ok(4));
        assert_eq!((first.get(), second.get()), (Ok(2), Ok(4)));
        let logged = logged.lock().unwrap();
        assert!(
            logged
                .iter()
                .any(|m| m.contains("a result callback panicked")),
            "{logged:?}"
        );
    }
}
