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
    let p1 = Process::new(worker, ("A".to_string(), pause)).map_err(fail)?;
    let p2 = Process::new(worker, ("B".to_string(), pause)).map_err(fail)?;
    let p1 = p1.start().map_err(fail)?;
    let p2 = p2.start().map_err(fail)?;
    p1.join().map_err(fail)?;
    p2.join().map_err(fail)?;

    println!("Parent process {}.", std::process::id());
    let p = Process::new(run_proc, "test".to_string()).map_err(fail)?;
    println!("Process will start.");
    let mut p = p.start().map_err(fail)?;
    let status = p.wait().map_err(fail)?;
    println!("Process end.");
    if status.success() {
        Ok(())
    } else {
        Err(format!("the child ended with {status}"))
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
    let p = Process::new(f_pipe, child_conn)
        .and_then(Process::start)
        .map_err(fail)?;
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

/// A sleep of up to `max_ms`, varying by process and call (the seed's `random.random()`).
fn random_pause(max_ms: u64, salt: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mix = (u64::from(nanos) ^ u64::from(std::process::id()) ^ salt)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Duration::from_millis((mix >> 33) % max_ms.max(1))
}

fn write((q, max_ms): (pool_api::Queue<String>, u64)) {
    for (i, value) in ["A", "B", "C"].into_iter().enumerate() {
        println!("Put {value} to queue...");
        q.put(value.to_string()).expect("putting into the queue");
        std::thread::sleep(random_pause(max_ms, i as u64));
    }
}

fn read((q, printed): (pool_api::Queue<String>, pool_api::Value<u32>)) {
    loop {
        let Ok(value) = q.get() else { return };
        println!("Get {value} from queue.");
        let _ = printed.update(|n| n + 1);
    }
}

/// Seed 002: a writer process puts A, B, C with random sleeps; a reader process loops on
/// `get`; the parent joins the writer and terminates the reader.
///
/// The seed terminates the reader right after joining the writer, trusting the writer's
/// last random sleep to have given the reader time to print "Get C". Here the reader counts
/// what it printed, and the parent terminates it once all three are out (or after ten
/// seconds), so that a slow machine does not lose the last line.
pub(crate) fn queue(args: &DemoArgs) -> Outcome {
    let q = pool_api::Queue::new().map_err(|e| e.to_string())?;
    let printed = pool_api::Value::new(0u32).map_err(|e| e.to_string())?;
    let max_ms = args.sleep(1.0).as_millis() as u64;
    let pw = Process::new(write, (q.clone(), max_ms)).map_err(fail)?;
    let pr = Process::new(read, (q.clone(), printed.clone())).map_err(fail)?;
    let pw = pw.start().map_err(fail)?;
    let mut pr = pr.start().map_err(fail)?;
    pw.join().map_err(fail)?;
    // The reader loops forever: once it has printed everything, it can only be terminated.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while printed.get().map_err(|e| e.to_string())? < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    pr.terminate().map_err(fail)?;
    pr.wait().map(drop).map_err(fail)
}
