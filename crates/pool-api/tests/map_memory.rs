//! The parent's memory during a large `map`: the results it has received wait in memory only
//! a bounded window ahead of the vector it returns (issue 22: the cost of a map grows with
//! its items, not faster).
//!
//! Memory figures do not depend on timing: the peak RSS (`VmHWM`, reset through
//! `/proc/self/clear_refs`) counts every page the process held at once, whichever thread
//! held it. This file holds one test, so that no other test's memory counts.

#![allow(clippy::print_stderr)]

use pool_api::{Pool, TransportKind};

/// Items mapped: 32 MiB of results.
const ITEMS: u64 = 4 << 20;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// `0..n`, told exactly, each item after a little work: this thread, which reads the input
/// and takes the results, is the slow side, and workers always want more input, as they do
/// when the release build's parent is busy faulting in fresh memory.
struct Slow {
    next: u64,
    end: u64,
}

impl Iterator for Slow {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.next == self.end {
            return None;
        }
        let mut x = self.next;
        for _ in 0..200 {
            x = std::hint::black_box(x.rotate_left(7) ^ 0x9E37_79B9);
        }
        std::hint::black_box(x);
        self.next += 1;
        Some(self.next - 1)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end - self.next) as usize;
        (left, Some(left))
    }
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").expect("status");
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .map_or(0, |kib| kib.trim().parse().expect("a number of kB"))
}

#[test]
fn a_large_map_holds_its_results_about_once() {
    for kind in [TransportKind::Shm, TransportKind::Pipe] {
        let pool = Pool::builder()
            .processes(2)
            .transport(kind)
            .build()
            .expect("pool");
        // Workers started, buffers of a map's first chunks allocated.
        assert_eq!(pool.map(square, 0..1000u64).unwrap()[999], 998_001);
        std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
        let before = status_kib("VmRSS:");
        let results = pool
            .map(
                square,
                Slow {
                    next: 0,
                    end: ITEMS,
                },
            )
            .unwrap();
        let peak = status_kib("VmHWM:");
        assert_eq!(results.len() as u64, ITEMS);
        assert_eq!(results[12345], 12345 * 12345);
        let results_kib = ITEMS * 8 / 1024;
        let held = peak.saturating_sub(before);
        eprintln!("{kind:?}: results {results_kib} KiB, peak RSS grew {held} KiB");
        // The results, and a window of chunks (of 1 MiB) on their way: without the window,
        // every chunk's results (as much again) waited in received frames first.
        assert!(
            held < results_kib + results_kib / 2,
            "{kind:?}: the map held {held} KiB at its peak for {results_kib} KiB of results"
        );
    }
}
