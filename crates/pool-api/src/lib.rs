//! Python's `multiprocessing`, done in Rust.
//!
//! This is the facade users depend on: `Pool` with Python's vocabulary (`apply`, `map`,
//! `imap`, `close`, `join`, ...) and the primitives (`Process`, `Queue`, `Pipe`, `Lock`, ...).
//! It drives the pure scheduler of `pool-core` with the processes and transports of
//! `pool-ipc`.
//!
//! Status: being built (see the project's issues); nothing public yet.
