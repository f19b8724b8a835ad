//! Starting children: the start methods and what they share.
//!
//! A child runs either a function by identity ([`spawn`], a [`ChildMain`]) or a closure
//! ([`fork`]). [`SpawnOptions::start_method`] chooses how a function by identity reaches its
//! child: [`StartMethod::Spawn`] (the default) re-executes this program (`exec.rs`);
//! [`StartMethod::Forkserver`] asks a clean helper process to fork one (`forkserver.rs`).
//! [`fork`] forks this very process (`fork.rs`).
//!
//! The start methods share their vocabulary (`types.rs`), the thread children are started
//! from (`spawner.rs`) and, for forked children, the wait for their "ready" byte
//! (`ready.rs`); none of them depends on another, except the forkserver, which is itself
//! started by `exec`.

use std::io;

use crate::code::FnId;

mod exec;
pub use exec::is_spawned_child;
mod fork;
mod forkserver;
mod ready;
pub(crate) mod root;
mod spawner;
mod types;

pub use fork::fork;
pub use types::{
    ChildMain, ChildStart, EXIT_BOOTSTRAP_FAILED, SpawnError, SpawnOptions, Spawned, StartMethod,
};

/// Starts a child running `main` with `payload`; returns once the child is ready.
///
/// ```
/// use pool_ipc::{ChildStart, SpawnOptions, spawn};
///
/// fn double(mut start: ChildStart) -> i32 {
///     let mut buf = Vec::new();
///     start.channel.recv_into(&mut buf, None).unwrap();
///     buf.iter_mut().for_each(|b| *b *= 2);
///     start.channel.send(&buf, None).unwrap();
///     0
/// }
///
/// let mut spawned = spawn(double, b"", &SpawnOptions::new()).unwrap();
/// spawned.channel.send(&[1, 2, 3], None).unwrap();
/// let mut reply = Vec::new();
/// spawned.channel.recv_into(&mut reply, None).unwrap();
/// assert_eq!(reply, [2, 4, 6]);
/// assert_eq!(spawned.child.wait().unwrap(), pool_ipc::ExitStatus::Code(0));
/// ```
pub fn spawn(
    main: ChildMain,
    payload: &[u8],
    options: &SpawnOptions,
) -> Result<Spawned, SpawnError> {
    let main = FnId::new(main as usize)?;
    // Referencing the child hook keeps its object file (and so its constructor) linked into
    // every program that can spawn.
    std::hint::black_box(exec::child_side::HOOK);
    match options.start_method {
        StartMethod::Spawn => exec::spawn_exec(main, payload, options),
        StartMethod::Forkserver => {
            if options.program.is_some() {
                return Err(SpawnError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "SpawnOptions::program needs the spawn start method",
                )));
            }
            if !options.die_with_parent {
                return Err(SpawnError::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "SpawnOptions::die_with_parent(false) needs the spawn start method",
                )));
            }
            forkserver::start(main, payload, options)
        }
    }
}
