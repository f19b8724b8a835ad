//! The demos built on `Pool`.
//!
//! Worker functions receive their sleep as an argument: they run in other processes, which do
//! not see this process's command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pool_api::{Callbacks, Error, Pool, current_process};

use super::{DemoArgs, Outcome};

fn fail(e: Error) -> String {
    e.to_string()
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

// ----- seed 000 -----

fn func((msg, pause): (String, u64)) {
    println!("in: {msg}");
    sleep_ms(pause);
    println!("out, {msg}");
}

/// Seed 000: five tasks over three processes; the fourth starts when one finishes.
pub(crate) fn apply_async(args: &DemoArgs) -> Outcome {
    let pool = Pool::new(3).map_err(fail)?;
    let pause = millis(args.sleep(3.0));
    for item in [
        "processes1",
        "processes2",
        "processes3",
        "processes4",
        "processes5",
    ] {
        let msg = format!("python course {item}");
        pool.apply_async(func, (msg, pause)).map_err(fail)?;
    }
    pool.close();
    pool.join().map_err(fail)
}

// ----- seeds 001 and 002 -----

fn worker((name, pause): (String, u64)) {
    println!("Worker {name} is starting.");
    sleep_ms(pause);
    println!("Worker {name} is exiting.");
}

fn f(x: u64) -> u64 {
    x * x
}

/// Seeds 001 and 002: `Pool(2).map(worker, ["A", "B"])`, then `Pool().map(f, [1, 2, 3])` five
/// times.
pub(crate) fn map(args: &DemoArgs) -> Outcome {
    let pool = Pool::new(2).map_err(fail)?;
    let pause = millis(args.sleep(2.0));
    pool.map(worker, [("A".to_string(), pause), ("B".to_string(), pause)])
        .map_err(fail)?;
    pool.close();
    pool.join().map_err(fail)?;

    let p = Pool::builder().build().map_err(fail)?;
    for _ in 0..5 {
        println!("{:?}", p.map(f, [1, 2, 3]).map_err(fail)?);
    }
    p.close();
    p.join().map_err(fail)
}

// ----- seed 001: parallel computing -----

fn square_sum_of(numbers: Vec<u64>) -> u64 {
    numbers.iter().map(|x| x * x).sum()
}

fn square_sum_of_range((start, end): (u64, u64)) -> u128 {
    (start..end).map(|x| u128::from(x) * u128::from(x)).sum()
}

/// Seed 001: the sum of squares of 1..10, split into chunks of `10 // 4 = 2`, over 4
/// processes. With `--n N`, of 1..=N, with a progress bar on a terminal and the throughput.
pub(crate) fn square_sum(args: &DemoArgs) -> Outcome {
    let num_processes = 4;
    let pool = Pool::new(num_processes).map_err(fail)?;
    let Some(n) = args.n() else {
        let numbers: Vec<u64> = (1..=10).collect();
        let chunk_size = numbers.len() / num_processes;
        let chunks: Vec<Vec<u64>> = numbers.chunks(chunk_size).map(<[u64]>::to_vec).collect();
        let results = pool.map(square_sum_of, chunks).map_err(fail)?;
        let total_sum: u64 = results.iter().sum();
        println!("Total square sum: {total_sum}");
        pool.close();
        return pool.join().map_err(fail);
    };
    // Ranges of a million numbers travel as two integers each; results stream back in order.
    let step = 1_000_000u64;
    let ranges: Vec<(u64, u64)> = (0..n.div_ceil(step))
        .map(|i| (1 + i * step, (1 + (i + 1) * step).min(n + 1)))
        .collect();
    let bar = if std::io::stdout().is_terminal() {
        indicatif::ProgressBar::new(n)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let t = Instant::now();
    let mut total: u128 = 0;
    for (range, partial) in ranges
        .clone()
        .into_iter()
        .zip(pool.imap(square_sum_of_range, ranges, 1).map_err(fail)?)
    {
        total += partial.map_err(fail)?;
        bar.inc(range.1 - range.0);
    }
    bar.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    println!("Total square sum: {total}");
    println!(
        "{n} numbers in {secs:.3} s: {:.1} M numbers/s over {num_processes} processes",
        n as f64 / secs / 1e6
    );
    pool.close();
    pool.join().map_err(fail)
}

// ----- seed 001: I/O-bound tasks (local files instead of the network) -----

fn copy_file(source: String, target: String) {
    match std::fs::copy(&source, &target) {
        Ok(_) => println!("Downloaded {target} from {source}"),
        Err(e) => println!("Failed to download {target} from {source}: {e}"),
    }
}

fn scratch_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("pool-demo-")
        .tempdir()
        .map_err(|e| e.to_string())
}

/// Seed 001's downloads, from local files: `starmap(copy, [(source, target), ...])`.
pub(crate) fn starmap(_: &DemoArgs) -> Outcome {
    let dir = scratch_dir()?;
    let mut pairs = Vec::new();
    for (i, name) in ["file1.txt", "file2.txt", "file3.txt"].iter().enumerate() {
        let source = dir.path().join(format!("remote-{name}"));
        std::fs::write(&source, format!("contents of file {}\n", i + 1))
            .map_err(|e| e.to_string())?;
        let target = dir.path().join(name);
        pairs.push((path_string(source), path_string(target)));
    }
    let pool = Pool::new(pairs.len()).map_err(fail)?;
    pool.starmap(copy_file, pairs).map_err(fail)?;
    pool.close();
    pool.join().map_err(fail)
}

fn path_string(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

// ----- seed 001: parallel tasking (images) -----

fn process_image((dir, filename): (String, String)) -> Result<(u32, u32), String> {
    let path = std::path::Path::new(&dir).join(&filename);
    let img = image::open(&path).map_err(|e| e.to_string())?;
    let resized = img.resize_exact(300, 300, image::imageops::FilterType::Triangle);
    resized
        .save(std::path::Path::new(&dir).join(format!("processed_{filename}")))
        .map_err(|e| e.to_string())?;
    println!("Processed {filename}");
    Ok((resized.width(), resized.height()))
}

/// Seed 001's image processing: three generated images resized to 300×300 in the pool.
pub(crate) fn images(_: &DemoArgs) -> Outcome {
    let dir = scratch_dir()?;
    let filenames = ["image1.png", "image2.png", "image3.png"];
    for (i, name) in filenames.iter().enumerate() {
        let (w, h) = (640 + 160 * i as u32, 480);
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, (40 * i) as u8])
        });
        img.save(dir.path().join(name)).map_err(|e| e.to_string())?;
    }
    let pool = Pool::new(filenames.len()).map_err(fail)?;
    let jobs: Vec<(String, String)> = filenames
        .iter()
        .map(|f| (path_string(dir.path().to_path_buf()), (*f).to_string()))
        .collect();
    for size in pool.map(process_image, jobs).map_err(fail)? {
        let (w, h) = size?;
        if (w, h) != (300, 300) {
            return Err(format!("resized to {w}x{h}"));
        }
    }
    pool.close();
    pool.join().map_err(fail)
}

// ----- seed 003 -----

fn do_calculation(data: u64) -> u64 {
    data * 2
}

fn start_process(_: ()) {
    println!("Starting {}", current_process().name);
}

/// Seed 003: an initializer that prints the worker's name; then the same with
/// `maxtasksperchild=2`, where more workers start.
pub(crate) fn initializer(_: &DemoArgs) -> Outcome {
    let inputs: Vec<u64> = (0..10).collect();
    println!("Inputs  : {inputs:?}");
    let builtin_output: Vec<u64> = inputs.iter().map(|x| do_calculation(*x)).collect();
    println!("Build-In : {builtin_output:?}");
    let pool_size = std::thread::available_parallelism().map_or(1, |n| n.get()) * 2;
    for max_tasks in [None, Some(2)] {
        let mut builder = Pool::builder()
            .processes(pool_size)
            .initializer(start_process, ());
        if let Some(m) = max_tasks {
            println!("-- with maxtasksperchild={m}");
            builder = builder.max_tasks_per_child(m);
        }
        let pool = builder.build().map_err(fail)?;
        let pool_outputs = pool
            .map_chunked(do_calculation, inputs.clone(), 1)
            .map_err(fail)?;
        pool.close();
        pool.join().map_err(fail)?;
        println!("Pool  : {pool_outputs:?}");
    }
    Ok(())
}

fn hello((msg, pause): (String, u64)) -> String {
    for _ in 0..3 {
        println!("{msg}");
        sleep_ms(pause);
    }
    format!("done {msg}")
}

/// Seed 003: ten `apply_async`, then every result through `get()`.
pub(crate) fn results(args: &DemoArgs) -> Outcome {
    let pool = Pool::new(4).map_err(fail)?;
    let pause = millis(args.sleep(1.0));
    let mut result = Vec::new();
    for i in 0..10 {
        let msg = format!("hello {i}");
        result.push(pool.apply_async(hello, (msg, pause)).map_err(fail)?);
    }
    pool.close();
    pool.join().map_err(fail)?;
    for res in result {
        println!("{}", res.get().map_err(fail)?);
    }
    println!("Sub-process(es) done.");
    Ok(())
}

// ----- seed 004 -----

fn foo((i, pause): (u64, u64)) -> u64 {
    sleep_ms(pause);
    println!("in process {}", std::process::id());
    i + 100
}

fn bar(arg: u64) {
    println!(
        "-->exec done: {arg}  main process pid: {}",
        std::process::id()
    );
}

/// Seed 004: callbacks run in the main process; then the serial `apply` variant.
pub(crate) fn callback(args: &DemoArgs) -> Outcome {
    let pool = Pool::new(5).map_err(fail)?;
    println!("main process pid: {}", std::process::id());
    let pause = millis(args.sleep(2.0));
    for i in 0..10 {
        pool.apply_async_with(foo, (i, pause), Callbacks::none().on_ok(bar))
            .map_err(fail)?;
    }
    println!("end");
    pool.close();
    pool.join().map_err(fail)?;

    println!("-- serial: apply");
    let pool = Pool::new(5).map_err(fail)?;
    for i in 0..3 {
        let r = pool.apply(foo, (i, pause / 4)).map_err(fail)?;
        bar(r);
    }
    pool.close();
    pool.join().map_err(fail)
}

// ----- beyond the seeds -----

fn fragile(x: u64) -> u64 {
    if x == 13 {
        // A C library crashing, a kill from outside: the worker dies mid-task.
        std::process::abort();
    }
    x * x
}

/// A worker dies mid-task: its chunk fails with worker-lost, the rest of the map finishes,
/// and the pool goes on (CPython's Pool hangs forever here).
pub(crate) fn crash(_: &DemoArgs) -> Outcome {
    let pool = Pool::new(2).map_err(fail)?;
    let results = pool.map_results(fragile, 0..20, Some(2)).map_err(fail)?;
    let mut lost = 0;
    for (x, r) in results.iter().enumerate() {
        match r {
            Ok(v) => println!("{x:>2} -> {v}"),
            Err(e) => {
                lost += 1;
                println!("{x:>2} -> {e}");
            }
        }
    }
    println!(
        "{} results, {lost} lost with their worker; the pool goes on: {:?}",
        results.len() - lost,
        pool.map(f, [1, 2, 3]).map_err(fail)?
    );
    if lost != 2 {
        return Err(format!(
            "expected the 2 items of the crashed chunk to fail, {lost} did"
        ));
    }
    pool.close();
    pool.join().map_err(fail)
}

/// A batch job: some inputs are bad (a panic), one kills its worker (an abort), the rest
/// take a while; the larger the input, the longer.
fn batch_job(x: u64) -> u64 {
    if x % 5 == 0 {
        panic!("bad input {x}");
    }
    if x == 7 {
        std::process::abort();
    }
    sleep_ms(3 * x);
    x * 10
}

/// `concurrent.futures.as_completed` over a batch: each result is handled as it finishes, in
/// completion order; failures (panics, a killed worker) are results like the others.
pub(crate) fn as_completed(_: &DemoArgs) -> Outcome {
    use pool_api::futures::as_completed_timeout;
    let pool = Pool::new(3).map_err(fail)?;
    let inputs: Vec<u64> = (1..=12).rev().collect();
    let handles = inputs
        .iter()
        .map(|&x| pool.apply_async(batch_job, x))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let (mut ok, mut failed) = (0, 0);
    for done in as_completed_timeout(&handles, Duration::from_secs(60)) {
        let handle = done.map_err(fail)?;
        let x = inputs[handles
            .iter()
            .position(|h| std::ptr::eq(h, handle))
            .unwrap_or(0)];
        match handle.get() {
            Ok(v) => {
                ok += 1;
                println!("{x:>2} -> {v}");
            }
            Err(e) => {
                failed += 1;
                println!("{x:>2} -> {e}");
            }
        }
    }
    println!("{ok} done, {failed} failed, every one reported as it finished");
    if (ok, failed) != (9, 3) {
        return Err(format!(
            "expected 9 done and 3 failed, got {ok} and {failed}"
        ));
    }
    pool.close();
    pool.join().map_err(fail)
}

fn slow(ms: u64) -> u64 {
    sleep_ms(ms);
    ms
}

/// A task over its time limit is killed and reported; the pool goes on.
pub(crate) fn timeout(args: &DemoArgs) -> Outcome {
    let limit = args.sleep(5.0);
    let pool = Pool::builder()
        .processes(2)
        .time_limit(limit)
        .build()
        .map_err(fail)?;
    println!("time limit per task: {limit:?}");
    let quick = millis(limit) / 10;
    let stuck = millis(limit) * 100;
    for ms in [quick, stuck, quick] {
        match pool.apply(slow, ms) {
            Ok(v) => println!("slept {v} ms: ok"),
            Err(e) => println!("asked to sleep {ms} ms: {e}"),
        }
    }
    pool.close();
    pool.join().map_err(fail)
}
