//! The demos built on `Process`.

use std::time::Duration;

use pool_api::{Error, Process};

use super::{DemoArgs, Outcome};

fn fail(e: Error) -> String {
    e.to_string()
}

fn worker((name, pause): (String, u64)) {
    println!("Worker {name} is starting.");
    std::thread::sleep(Duration::from_millis(pause));
    println!("Worker {name} is exiting.");
}

fn run_proc(name: String) {
    println!("Run child process {name} ({})...", std::process::id());
}

/// Seed 001: two processes `worker("A")` and `worker("B")`, started and joined; seed 002:
/// `run_proc('test')` with the parent's and the child's pids.
pub(crate) fn process(args: &DemoArgs) -> Outcome {
    let pause = args.sleep(2.0).as_millis() as u64;
    let mut p1 = Process::new(worker, ("A".to_string(), pause)).map_err(fail)?;
    let mut p2 = Process::new(worker, ("B".to_string(), pause)).map_err(fail)?;
    p1.start().map_err(fail)?;
    p2.start().map_err(fail)?;
    p1.join().map_err(fail)?;
    p2.join().map_err(fail)?;

    println!("Parent process {}.", std::process::id());
    let mut p = Process::new(run_proc, "test".to_string()).map_err(fail)?;
    println!("Process will start.");
    p.start().map_err(fail)?;
    p.join().map_err(fail)?;
    println!("Process end.");
    match p.exitcode() {
        Some(0) => Ok(()),
        other => Err(format!("the child exited with {other:?}")),
    }
}
