//! Processes and a queue, as in Python's tutorials: producers put work into a `Queue`, a
//! consumer process takes it out and sends its total back through its return value.
//!
//! `cargo run --release -p pool-api --example producer_consumer`

// An example is a program: printing is its output (the libraries never print).
#![allow(clippy::print_stdout)]

use pool_api::{Error, Process, Queue};

/// Puts `count` numbers, then one `None` to say it is done.
fn produce((queue, first, count): (Queue<Option<u64>>, u64, u64)) {
    for n in first..first + count {
        queue.put(Some(n)).expect("the queue takes the item");
    }
    queue.put(None).expect("the queue takes the end mark");
}

/// Sums what it takes until it has seen `producers` end marks; returns the sum.
fn consume((queue, producers): (Queue<Option<u64>>, u32)) -> u64 {
    let (mut sum, mut done) = (0, 0);
    while done < producers {
        match queue.get().expect("the queue gives an item") {
            Some(n) => sum += n,
            None => done += 1,
        }
    }
    sum
}

fn main() -> Result<(), Error> {
    let queue = Queue::new()?;
    let consumer = Process::new(consume, (queue.clone(), 3))?
        .with_name("consumer")
        .start()?;
    let producers = (0..3)
        .map(|i| Process::new(produce, (queue.clone(), i * 1_000, 1_000))?.start())
        .collect::<Result<Vec<_>, _>>()?;
    for producer in producers {
        producer.join()?;
    }
    let sum = consumer.join()?;
    assert_eq!(sum, (0..3_000).sum::<u64>());
    println!("the consumer summed {sum}");
    Ok(())
}
