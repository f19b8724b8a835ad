//! `pool`: the demonstration front end of the pool crates.
//!
//! `pool demo` runs every example of the multiprocessing tutorials the project started from
//! (`shared/seeds/`), each under a header, printing what the tutorial prints. It is the only
//! crate of the workspace that writes to stdout; its worker functions print too, as the
//! tutorials' workers do, through the stdout they inherit.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod demos;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Python's multiprocessing, in Rust: runnable demonstrations.
///
/// The libraries log through `tracing`; set RUST_LOG (e.g. RUST_LOG=debug) to see it on
/// stderr.
#[derive(Debug, Parser)]
#[command(name = "pool", version, about, after_help = demos::catalogue())]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the tutorials' examples with pool (all of them, or one by name).
    #[command(after_help = demos::catalogue())]
    Demo(demos::DemoArgs),
    /// Serve a cluster pool's chunks (this binary's demo functions) from Redis: a host.
    Worker(demos::WorkerArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Commands::Demo(args) => demos::run(&args),
        Commands::Worker(args) => match demos::worker(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("pool worker: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}
