//! A batch where some items crash the process that runs them (a C library that aborts, a
//! parser that segfaults on hostile input). Each crash fails only its own item with
//! `Error::WorkerLost`; the worker is replaced and the rest of the batch runs on. CPython's
//! `Pool.map` would hang forever at the first crash.
//!
//! `cargo run --release -p pool-api --example crash_tolerant_batch`

// An example is a program: printing is its output (the libraries never print).
#![allow(clippy::print_stdout)]

use pool_api::{Error, Pool};

/// Parses a "document"; documents divisible by 7 make it abort, as a buggy native parser
/// would.
fn parse(doc: u32) -> usize {
    if doc % 7 == 0 {
        std::process::abort();
    }
    format!("document {doc}").len()
}

fn main() -> Result<(), Error> {
    let pool = Pool::new(2)?;
    // Chunks of 1: a crash takes only its own item with it.
    let outcomes = pool.map_results(parse, 1..=30, Some(1))?;
    let mut crashed = Vec::new();
    for (doc, outcome) in (1..=30).zip(&outcomes) {
        match outcome {
            Ok(len) => println!("document {doc}: {len} bytes"),
            Err(Error::WorkerLost { pid, exitcode }) => {
                println!("document {doc}: worker {pid} died (exitcode {exitcode})");
                crashed.push(doc);
            }
            Err(other) => return Err(other.clone()),
        }
    }
    assert_eq!(crashed, [7, 14, 21, 28]);
    println!(
        "{} documents parsed, {} crashed, {} workers started in all",
        outcomes.iter().filter(|o| o.is_ok()).count(),
        crashed.len(),
        pool.stats().spawned
    );
    pool.close();
    pool.join()
}
