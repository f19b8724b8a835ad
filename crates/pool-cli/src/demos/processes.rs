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

/// A Python value, enough for seed 002's `[42, None, 'hello']`, printed as Python does.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Py {
    Int(i64),
    None,
    Str(String),
}

impl std::fmt::Display for Py {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Py::Int(i) => write!(f, "{i}"),
            Py::None => f.write_str("None"),
            Py::Str(s) => write!(f, "'{s}'"),
        }
    }
}

fn f_pipe(mut conn: pool_api::Connection) {
    let _ = conn.send(&vec![Py::Int(42), Py::None, Py::Str("hello".into())]);
}

/// Seed 002: a child sends `[42, None, 'hello']` through a Pipe; the parent prints it.
pub(crate) fn pipe(_: &DemoArgs) -> Outcome {
    let (mut parent_conn, child_conn) = pool_api::Pipe::duplex().map_err(fail)?;
    let mut p = Process::new(f_pipe, child_conn).map_err(fail)?;
    p.start().map_err(fail)?;
    let list: Vec<Py> = parent_conn.recv().map_err(|e| e.to_string())?;
    let items: Vec<String> = list.iter().map(ToString::to_string).collect();
    println!("[{}]", items.join(", "));
    p.join().map_err(fail)
}

fn f_lock((l, i): (pool_api::Lock, u32)) {
    let _held = l.lock().expect("taking the lock");
    println!("hello world {i}");
}

/// Seed 002: ten processes print under one Lock. As in the seed, they are started and never
/// joined; the demo waits for them as the program's exit would.
pub(crate) fn lock(_: &DemoArgs) -> Outcome {
    let lock = pool_api::Lock::new().map_err(|e| e.to_string())?;
    for num in 0..10 {
        Process::new(f_lock, (lock.clone(), num))
            .map_err(fail)?
            .start()
            .map_err(fail)?;
    }
    while !pool_api::active_children().is_empty() {
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
