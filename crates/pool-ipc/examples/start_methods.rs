//! Measures how long each start method takes to start a child that does nothing and reap it,
//! so that the start methods' costs can be compared on this machine (`cargo run --release -p
//! pool-ipc --example start_methods`). Timing belongs here, not in tests.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use pool_ipc::{ChildStart, ExitStatus, SpawnOptions, StartMethod, fork, spawn};

fn nothing(_: ChildStart) -> i32 {
    0
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<34} median {:>8.3} ms   p10 {:>8.3} ms   p90 {:>8.3} ms   (n={})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.1).as_secs_f64() * 1e3,
        at(0.9).as_secs_f64() * 1e3,
        times.len()
    );
}

fn measure(n: usize, mut start_and_join: impl FnMut()) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            start_and_join();
            t.elapsed()
        })
        .collect()
}

fn main() {
    let spawned = measure(50, || {
        let mut s = spawn(nothing, b"", &SpawnOptions::new()).unwrap();
        assert_eq!(s.child.wait().unwrap(), ExitStatus::Code(0));
    });
    report("spawn: start + join", spawned);

    let forked = measure(300, || {
        let mut f = fork(|_| 0, &SpawnOptions::new()).unwrap();
        assert_eq!(f.child.wait().unwrap(), ExitStatus::Code(0));
    });
    report("fork: start + join", forked);

    let options = SpawnOptions::new().start_method(StartMethod::Forkserver);
    let t = Instant::now();
    let mut first = spawn(nothing, b"", &options).unwrap();
    let first_start = t.elapsed();
    assert_eq!(first.child.wait().unwrap(), ExitStatus::Code(0));
    println!(
        "{:<34} {:>8.3} ms (starts the forkserver too)",
        "forkserver: first start",
        first_start.as_secs_f64() * 1e3
    );
    let mut starts = Vec::new();
    let served = measure(300, || {
        let t = Instant::now();
        let mut s = spawn(nothing, b"", &options).unwrap();
        starts.push(t.elapsed());
        assert_eq!(s.child.wait().unwrap(), ExitStatus::Code(0));
    });
    report("forkserver: start", starts);
    report("forkserver: start + join", served);
}
