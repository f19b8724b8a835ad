//! What every start method takes and gives back: the function a child runs and what it
//! receives, the options, the started child, the errors.
//!
//! They live apart from the start methods so that `exec`, `fork` and `forkserver` share one
//! vocabulary without depending on each other.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::code::NotInExecutable;
use crate::transport::{Channel, TransportKind};
use crate::{Child, ExitStatus};
/// Exit code of a child whose bootstrap failed before the function ran.
pub const EXIT_BOOTSTRAP_FAILED: i32 = 70;

/// What a child runs: it gets its end of the channel and the payload, and returns the exit
/// code. A plain `fn` (or a closure that captures nothing).
pub type ChildMain = fn(ChildStart) -> i32;

/// What a child's function receives.
#[derive(Debug)]
#[non_exhaustive]
pub struct ChildStart {
    /// The child's end of the data channel.
    pub channel: Channel,
    /// The bytes the parent passed to [`spawn`](crate::spawn).
    pub payload: Vec<u8>,
    /// The name the parent gave the child.
    pub name: String,
    /// The descriptors the parent passed with [`SpawnOptions::inherit`], in order.
    pub inherited: Vec<OwnedFd>,
}

/// How [`spawn`](crate::spawn) starts a child that runs a function by identity (Python's start methods;
/// for a closure, see [`fork`](crate::fork)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StartMethod {
    /// Re-execute this program (the default): a fresh process, safe whatever the parent's
    /// threads were doing; about 2 ms.
    #[default]
    Spawn,
    /// Ask this process's *forkserver* to fork one: a single-threaded copy of this program,
    /// started (by `Spawn`) on first use, that forks children on request. As safe as `Spawn`,
    /// and faster once the forkserver runs. The child inherits the forkserver's environment,
    /// working directory, stdout and stderr: those of this process when the forkserver
    /// started. It is not this process's child: its exit status is relayed by the forkserver
    /// ([`Child`] hides the difference). If the forkserver dies, its children die with it,
    /// starts in progress fail with [`SpawnError::ForkserverDied`], and the next start
    /// starts a new forkserver.
    Forkserver,
}

/// How to start a child.
#[derive(Debug)]
pub struct SpawnOptions {
    pub(crate) transport: TransportKind,
    pub(crate) handshake_timeout: Duration,
    pub(crate) name: String,
    pub(crate) program: Option<(PathBuf, Vec<OsString>)>,
    pub(crate) inherit: Vec<OwnedFd>,
    pub(crate) start_method: StartMethod,
    pub(crate) die_with_parent: bool,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        SpawnOptions {
            transport: TransportKind::Pipe,
            handshake_timeout: Duration::from_secs(30),
            name: String::new(),
            program: None,
            inherit: Vec::new(),
            start_method: StartMethod::Spawn,
            die_with_parent: true,
        }
    }
}

impl SpawnOptions {
    /// Defaults: the `spawn` start method, the `pipe` transport, a 30 s handshake deadline,
    /// no name.
    pub fn new() -> SpawnOptions {
        SpawnOptions::default()
    }

    /// How [`spawn`](crate::spawn) starts the child (default [`StartMethod::Spawn`]). [`fork`](crate::fork)
    /// ignores it.
    ///
    /// ```
    /// use pool_ipc::{ChildStart, SpawnOptions, StartMethod, spawn};
    ///
    /// fn seven(_: ChildStart) -> i32 {
    ///     7
    /// }
    ///
    /// let options = SpawnOptions::new().start_method(StartMethod::Forkserver);
    /// let mut spawned = spawn(seven, b"", &options).unwrap();
    /// assert_eq!(spawned.child.wait().unwrap(), pool_ipc::ExitStatus::Code(7));
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> SpawnOptions {
        self.start_method = method;
        self
    }

    /// The transport of the data channel.
    pub fn transport(mut self, kind: TransportKind) -> SpawnOptions {
        self.transport = kind;
        self
    }

    /// How long the child has to answer the bootstrap (it includes loading the executable,
    /// which can take a while on a loaded machine).
    pub fn handshake_timeout(mut self, timeout: Duration) -> SpawnOptions {
        self.handshake_timeout = timeout;
        self
    }

    /// A name for the child (Python's process name), passed to it in [`ChildStart`].
    pub fn name(mut self, name: impl Into<String>) -> SpawnOptions {
        self.name = name.into();
        self
    }

    /// Descriptors the child inherits (as well as its channel), handed to its function in
    /// [`ChildStart::inherited`]. This is how handles such as a pipe end reach a child.
    pub fn inherit(mut self, fds: Vec<OwnedFd>) -> SpawnOptions {
        self.inherit = fds;
        self
    }

    /// Whether the child dies with the thread that started it (default `true`:
    /// `PR_SET_PDEATHSIG(SIGKILL)`, so no child outlives its parent). With `false` the child
    /// keeps running after this process ends (it is then re-parented to the nearest
    /// subreaper, or init), which is what a helper that must clean up *after* its parent
    /// needs (pool-api's shared-memory tracker). It still ignores SIGINT, like every child.
    /// Dropping its [`Child`] still kills it: call [`Child::disown`] to let it run on. Only
    /// for [`StartMethod::Spawn`]: the forkserver and [`fork`](crate::fork) refuse `false`
    /// (their children die with the forkserver, or cannot be told apart from a copy of this
    /// process).
    ///
    /// ```
    /// use pool_ipc::{ChildStart, ExitStatus, SpawnOptions, spawn};
    ///
    /// fn three(_: ChildStart) -> i32 {
    ///     3
    /// }
    ///
    /// let options = SpawnOptions::new().die_with_parent(false);
    /// let mut spawned = spawn(three, b"", &options).unwrap();
    /// assert_eq!(spawned.child.wait().unwrap(), ExitStatus::Code(3));
    /// ```
    pub fn die_with_parent(mut self, yes: bool) -> SpawnOptions {
        self.die_with_parent = yes;
        self
    }

    /// Executes another program instead of this executable. It must be a build of the same
    /// program that links pool-ipc, or the handshake fails; mostly useful to test that. Only
    /// for [`StartMethod::Spawn`]: other start methods refuse it.
    pub fn program(mut self, path: impl Into<PathBuf>, args: Vec<OsString>) -> SpawnOptions {
        self.program = Some((path.into(), args));
        self
    }
}

/// A started child and the parent's end of its channel.
#[derive(Debug)]
pub struct Spawned {
    /// The child process.
    pub child: Child,
    /// The parent's end of the data channel.
    pub channel: Channel,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The function cannot travel to a child.
    #[error(transparent)]
    NotInExecutable(#[from] NotInExecutable),
    /// The child died before it was ready.
    #[error("child {pid} exited during start-up ({status})")]
    ChildExited {
        /// Its pid.
        pid: u32,
        /// How it exited.
        status: ExitStatus,
    },
    /// The child did not answer within the handshake deadline; it was killed.
    #[error("child {pid} did not answer its bootstrap within {timeout:?}")]
    Timeout {
        /// Its pid.
        pid: u32,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// The child runs another build of the program; nothing was run in it.
    #[error("child refused to start: {0}")]
    Mismatch(String),
    /// The child broke the handshake protocol.
    #[error("child {pid} broke the start-up protocol: {reason}")]
    Protocol {
        /// Its pid.
        pid: u32,
        /// What went wrong.
        reason: String,
    },
    /// The forkserver died (or was killed) while it was starting this child; the next start
    /// starts a new one.
    #[error("the forkserver {pid} died while starting a child{}", status.map(|s| format!(" ({s})")).unwrap_or_default())]
    ForkserverDied {
        /// The forkserver's pid.
        pid: u32,
        /// How it exited, if known.
        status: Option<ExitStatus>,
    },
    /// An OS error (creating the channel, forking, executing).
    #[error("cannot start a child: {0}")]
    Io(#[from] io::Error),
}
