//! Benchmarks of the pool crates.
//!
//! The criterion suites live in `benches/`; `cargo xtask bench` runs them beside CPython's
//! `multiprocessing` on the same machine and prints one table of ratios.
