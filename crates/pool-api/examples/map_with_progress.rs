//! A `map` over worker processes with a progress bar: `imap` hands back each result as soon
//! as it is ready (in input order), so the bar moves while the work runs.
//!
//! `cargo run --release -p pool-api --example map_with_progress`

// An example is a program: printing is its output (the libraries never print).
#![allow(clippy::print_stdout)]

use indicatif::ProgressBar;
use pool_api::{Error, Pool};

/// Something CPU-bound: the number of steps of the Collatz sequence from `n`.
fn collatz_steps(mut n: u64) -> u32 {
    let mut steps = 0;
    while n != 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}

fn main() -> Result<(), Error> {
    let pool = Pool::new(std::thread::available_parallelism().map_or(2, usize::from))?;
    let inputs = 1..=200_000u64;
    let bar = ProgressBar::new(inputs.clone().count() as u64);
    let mut longest = (0, 0);
    // Chunks of 1 000 items: few messages, and the bar still moves smoothly.
    for (n, steps) in inputs.clone().zip(pool.imap(collatz_steps, inputs, 1_000)?) {
        let steps = steps?;
        if steps > longest.1 {
            longest = (n, steps);
        }
        bar.inc(1);
    }
    bar.finish();
    pool.close();
    pool.join()?;
    println!("longest: {} takes {} steps", longest.0, longest.1);
    Ok(())
}
