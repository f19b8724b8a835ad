//! Everything that differs between operating systems, behind one module.
//!
//! Only Linux is implemented. A macOS port provides the same functions in a sibling module
//! (kqueue's `EVFILT_PROC` in place of pidfds, `posix_spawn` file actions in place of
//! `close_range`) and selects it here.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("pool-ipc supports Linux only for now (see src/sys/mod.rs for what a port needs)");
