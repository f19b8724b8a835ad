//! Start, supervise and talk to worker processes.
//!
//! `pool-core` decides *what* happens in a pool; this crate makes it happen with real
//! processes: it starts children (re-executing the current binary, or forking), hands them
//! their bootstrap, watches their exit, and moves bytes between parent and child over a
//! transport (a socket pair or a shared-memory ring). It is the only crate of the workspace
//! that talks to the OS for processes and transports.
//!
//! Status: being built (see the project's issues); nothing public yet.
