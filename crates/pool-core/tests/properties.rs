//! Property tests of the scheduler: generated sequences of submissions, worker behaviour,
//! faults, cancels, closes, terminates and clock ticks, run through the simulator, which
//! checks the pool's promises after every step and then drives the pool to a clean join.
//!
//! The default run is deterministic (a fixed seed, 1 000 sequences per property) so that CI
//! never flakes; `cargo xtask core-stress` runs many more from a random seed.

mod sim;

use std::time::Duration;

use pool_core::Config;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, RngSeed};
use sim::{Op, Sim};

fn proptest_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    let rng_seed = if std::env::var_os("POOL_CORE_RANDOM_SEED").is_some() {
        RngSeed::Random
    } else {
        RngSeed::Fixed(0x9e37_79b9_7f4a_7c15)
    };
    ProptestConfig {
        cases,
        rng_seed,
        max_shrink_iters: 20_000,
        // Failures are saved beside this file (`properties.proptest-regressions`) and replayed
        // first on every later run; commit that file when it appears.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

fn config() -> impl Strategy<Value = Config> {
    (
        1u32..=4,
        prop::option::weighted(0.4, 1u32..=4),
        1u32..=3,
        prop::option::weighted(0.4, 5u64..=60),
        prop::option::weighted(0.3, 5u64..=60),
        1u32..=4,
        prop::bool::ANY,
        prop::option::weighted(0.6, 0u64..=200),
    )
        .prop_map(
            |(processes, max_tasks, window, limit, start, failed, prefetch, unavailable)| {
                let mut c = Config::new(processes);
                c.max_tasks_per_child = max_tasks;
                c.chunks_per_worker = window;
                c.task_time_limit = limit.map(Duration::from_millis);
                c.start_timeout = start.map(Duration::from_millis);
                c.max_failed_starts = failed;
                c.prefetch_below = if prefetch {
                    Duration::from_secs(1)
                } else {
                    Duration::ZERO
                };
                if let Some(ms) = unavailable {
                    c.unavailable_after = Duration::from_millis(ms);
                }
                c
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let w = 0usize..8;
    prop_oneof![
        4 => Just(Op::SubmitApply),
        3 => (0u16..40, prop::option::weighted(0.7, 0u8..6), prop::bool::ANY)
            .prop_map(|(items, chunksize, ordered)| Op::SubmitMap { items, chunksize, ordered }),
        2 => (prop::option::weighted(0.7, 0u16..30), 0u8..4, prop::option::of(1u8..4), prop::bool::ANY)
            .prop_map(|(len, chunksize, window, ordered)| Op::SubmitStream { len, chunksize, window, ordered }),
        6 => w.clone().prop_map(Op::Ready),
        1 => w.clone().prop_map(Op::InitFail),
        1 => w.clone().prop_map(Op::SpawnFail),
        1 => w.clone().prop_map(Op::CrashStarting),
        10 => w.clone().prop_map(Op::Start),
        10 => w.clone().prop_map(Op::Finish),
        1 => w.clone().prop_map(Op::Crash),
        1 => w.clone().prop_map(Op::Stall),
        2 => w.clone().prop_map(Op::AnswerRecall),
        2 => Just(Op::Reap),
        2 => Just(Op::AnswerPulls),
        2 => w.clone().prop_map(Op::Consume),
        1 => w.prop_map(Op::Cancel),
        3 => (0u16..40).prop_map(Op::Advance),
        1 => Just(Op::Close),
        1 => Just(Op::Terminate),
    ]
}

proptest! {
    #![proptest_config(proptest_config())]

    /// Any sequence keeps the promises at every step, and the pool then drains and joins.
    #[test]
    fn every_sequence_keeps_the_promises(
        config in config(),
        defer_pulls in prop::bool::ANY,
        ops in prop::collection::vec(op(), 1..150),
    ) {
        let mut sim = Sim::new(config, defer_pulls);
        for op in &ops {
            sim.step(op);
        }
        sim.run_to_completion();
    }

    /// Starts that fail for OS reasons (the spawn failed, the worker was killed during
    /// start-up), however many, never break the pool, and with nothing else going wrong every
    /// task finishes once starts succeed again: none fails, none is lost.
    #[test]
    fn transient_start_failures_never_break_the_pool(
        processes in 1u32..=4,
        window in 1u32..=3,
        defer_pulls in prop::bool::ANY,
        ops in prop::collection::vec(healthy_op_or_failed_start(), 1..150),
    ) {
        let mut c = Config::new(processes);
        c.chunks_per_worker = window;
        c.max_failed_starts = 1;
        let mut sim = Sim::new(c, defer_pulls);
        for op in &ops {
            sim.step(op);
        }
        sim.run_to_completion();
        prop_assert!(sim.sched.broken().is_none());
        prop_assert_eq!(&sim.failures, &Default::default());
    }
}

/// What a pool meets when nothing goes wrong but starts failing for OS reasons.
fn healthy_op_or_failed_start() -> impl Strategy<Value = Op> {
    let w = 0usize..8;
    prop_oneof![
        4 => Just(Op::SubmitApply),
        3 => (0u16..40, prop::option::weighted(0.7, 1u8..6), prop::bool::ANY)
            .prop_map(|(items, chunksize, ordered)| Op::SubmitMap { items, chunksize, ordered }),
        2 => (0u16..30, 1u8..4, prop::option::of(1u8..4), prop::bool::ANY)
            .prop_map(|(len, chunksize, window, ordered)| Op::SubmitStream { len: Some(len), chunksize, window, ordered }),
        4 => w.clone().prop_map(Op::Ready),
        3 => w.clone().prop_map(Op::SpawnFail),
        3 => w.clone().prop_map(Op::CrashStarting),
        10 => w.clone().prop_map(Op::Start),
        10 => w.clone().prop_map(Op::Finish),
        2 => w.clone().prop_map(Op::AnswerRecall),
        2 => Just(Op::AnswerPulls),
        2 => w.prop_map(Op::Consume),
        3 => (0u16..400).prop_map(Op::Advance),
    ]
}

/// Sequences that once failed, kept as plain tests (found while the simulator was written).
mod regressions {
    use super::*;

    /// A worker whose initializer fails is told to die before its exit is reported; the
    /// driver must see the `Kill` for a worker that is still live.
    #[test]
    fn init_failure_with_one_allowed_failed_start() {
        let mut c = Config::new(1);
        c.max_failed_starts = 1;
        let mut sim = Sim::new(c, false);
        sim.step(&Op::InitFail(0));
        sim.run_to_completion();
    }

    /// A pull answered after the job's input was ended (cancel) must be refused, so that
    /// the driver drops those items instead of expecting results for them.
    #[test]
    fn late_pull_answer_for_a_cancelled_stream() {
        let mut c = Config::new(1);
        c.chunks_per_worker = 1;
        c.max_failed_starts = 2;
        let mut sim = Sim::new(c, true);
        sim.step(&Op::SubmitStream {
            len: None,
            chunksize: 0,
            window: None,
            ordered: false,
        });
        sim.step(&Op::Ready(0));
        sim.step(&Op::Ready(0));
        sim.step(&Op::SubmitStream {
            len: None,
            chunksize: 1,
            window: None,
            ordered: false,
        });
        sim.step(&Op::AnswerPulls);
        sim.run_to_completion();
    }

    /// `imap` over an endless input with a window pulls no more than the window allows
    /// while the consumer takes nothing.
    #[test]
    fn endless_stream_is_bounded_by_its_window() {
        let mut sim = Sim::new(Config::new(2), false);
        sim.step(&Op::Ready(0));
        sim.step(&Op::Ready(1));
        sim.step(&Op::SubmitStream {
            len: None,
            chunksize: 1,
            window: Some(3),
            ordered: true,
        });
        for _ in 0..50 {
            for i in 0..2 {
                sim.step(&Op::Start(i));
                sim.step(&Op::Finish(i));
            }
        }
        assert_eq!(
            sim.pulled_items(),
            3,
            "pulled beyond the window with nothing consumed"
        );
        sim.step(&Op::Consume(0));
        for i in 0..2 {
            sim.step(&Op::Start(i));
            sim.step(&Op::Finish(i));
        }
        assert!(sim.pulled_items() > 3, "consuming made room for more");
        sim.run_to_completion();
    }
}
