//! `pool`: the demonstration front end of the pool crates.
//!
//! It will run every example of the multiprocessing tutorials the project started from
//! (`pool demo`). It is the only crate of the workspace that prints.

fn main() {
    // The demos arrive with the Pool and primitives; until then say so plainly.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("pool: the demos are not built yet (they arrive with pool-api's Pool).");
    }
    std::process::exit(2);
}
