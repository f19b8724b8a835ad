//! The `spawn` start method: a child that re-executes the current binary.
//!
//! # The parent
//!
//! [`spawn`](crate::spawn) makes a control socket pair and the data channel, then (on the
//! main thread or the spawner thread, see `spawner.rs`) starts `/proc/self/exe` with `posix_spawn`
//! (`clone(CLONE_VM | CLONE_VFORK)` in glibc: nothing of this process is copied, so a start
//! costs the same from a parent of 10 MiB or 10 GiB) with `POOL_IPC_CONTROL_FD` in the
//! environment, stdin on `/dev/null`, SIGINT blocked, no arguments, and the control and
//! channel descriptors inherited. (A `program` of the caller's choosing is forked and
//! executed instead, with that setup done between the two, since it may not run this crate's
//! bootstrap.) It sends the bootstrap (the build's identity, the function to run, its
//! payload) and waits, with a deadline, for the child's hello. A child that dies first gives
//! [`SpawnError::ChildExited`] with its status, one that stays silent
//! [`SpawnError::Timeout`] (it is killed and reaped), one of another build
//! [`SpawnError::Mismatch`].
//!
//! # The child
//!
//! A constructor of this crate runs before `main` (before libtest's, in a test binary): it
//! sees `POOL_IPC_CONTROL_FD`, removes it from the environment (so user code in the child can
//! start children of its own), receives the bootstrap, checks the build, and runs the
//! function, then exits with its return value; a panic exits with code 1 after the panic
//! hook printed it. Neither the program's `main` nor its argument parsing ever runs. Because
//! this happens before std's runtime setup, the child does what that setup would have done
//! for this code: SIGPIPE is ignored. It also does what a hook between fork and exec would
//! have: `PR_SET_PDEATHSIG(SIGKILL)` (then checks that the parent did not die first), SIGINT
//! ignored and unblocked, and every descriptor closed but its own (one the parent left
//! without close-on-exec came along).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::spawner;
use super::types::{
    ChildMain, ChildStart, EXIT_BOOTSTRAP_FAILED, SpawnError, SpawnOptions, Spawned,
};
use crate::code::{self, FnId};
use crate::fork_safety::{PerProcess, Private};
use crate::transport::pipe::PipeChannel;
use crate::transport::{Channel, RecvError, TransportKind};
use crate::{Child, sys};

/// The environment variable that tells a process it is a child of pool-ipc, and on which
/// descriptor its bootstrap arrives.
const CONTROL_ENV: &str = "POOL_IPC_CONTROL_FD";

/// Bumped whenever the bootstrap's shape changes.
const PROTOCOL: u32 = 2;

#[derive(Serialize, Deserialize)]
struct Bootstrap {
    protocol: u32,
    identity: [u64; 5],
    layout: i64,
    parent_pid: u32,
    /// The program's root (pid, start time), which the child inherits (see `root.rs`).
    root: (u32, u64),
    /// `false`: the child disarms `PR_SET_PDEATHSIG` (`SpawnOptions::die_with_parent`).
    die_with_parent: bool,
    main: FnId,
    transport: TransportKind,
    data_fd: i32,
    inherited: Vec<i32>,
    name: String,
    payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
enum Hello {
    Ready { pid: u32 },
    Refused { reason: String },
}

/// The `spawn` start method: see the module documentation.
pub(crate) fn spawn_exec(
    main: FnId,
    payload: &[u8],
    options: &SpawnOptions,
) -> Result<Spawned, SpawnError> {
    // The child's ends are in flight until the child has them (see `fork_safety`).
    let (child_ends, (control, channel)) = Private::create(
        || {
            let (control, control_child) = PipeChannel::pair()?;
            let (channel, data_fds) = Channel::for_child(options.transport)?;
            Ok(((control_child.into_fd(), data_fds), (control, channel)))
        },
        |(control_child, data_fds): &(OwnedFd, Vec<OwnedFd>)| {
            let mut fds = vec![control_child.as_raw_fd()];
            fds.extend(data_fds.iter().map(|fd| fd.as_raw_fd()));
            fds
        },
    )?;
    let mut channel = channel;
    channel.hide_from_forked_children();
    let control_child = child_ends.get().0.as_raw_fd();
    let inherited: Vec<i32> = options.inherit.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut keep: Vec<RawFd> = child_ends.fds().to_vec();
    keep.extend(&inherited);

    let mut child = match &options.program {
        // This executable: posix_spawn (no copy of our page tables; see `sys::posix_spawn`),
        // the child's bootstrap doing what a pre-exec hook would.
        None => {
            let env = child_environment(control_child)?;
            let program = std::ffi::CString::new(sys::SELF_EXE).map_err(io::Error::other)?;
            let fds = keep.clone();
            let pid = spawner::run(move || sys::posix_spawn(&program, &env, &fds))??;
            match Child::from_pid(pid) {
                Ok(child) => child,
                Err(e) => {
                    // Without a pidfd (an old kernel, no descriptors left) it cannot be
                    // supervised: do not leave it running, nor as a zombie.
                    sys::kill_and_reap_unreaped(pid);
                    return Err(e.into());
                }
            }
        }
        // Another program may not run our bootstrap: fork, set up, then exec.
        Some((path, args)) => {
            let mut command = Command::new(path);
            command
                .args(args)
                .env(CONTROL_ENV, control_child.to_string())
                .stdin(Stdio::null());
            let keep_in_child = keep.clone();
            // SAFETY: the hook only makes async-signal-safe syscalls (see
            // `in_child_after_fork`) and uses `keep_in_child`, allocated before the fork.
            unsafe {
                command.pre_exec(move || sys::in_child_after_fork(&keep_in_child));
            }
            let mut std_child = spawner::spawn(command)?;
            match Child::from_pid(std_child.id()) {
                // From here the pidfd reaps it; std's handle is dropped without waiting.
                Ok(child) => child,
                Err(e) => {
                    let _ = std_child.kill();
                    let _ = std_child.wait();
                    return Err(e.into());
                }
            }
        }
    };
    // The child has its copies; ours would keep its channel from reaching EOF.
    let data_fd = keep.get(1).copied().unwrap_or(-1);
    child_ends.release_with(drop);

    let bootstrap = Bootstrap {
        protocol: PROTOCOL,
        identity: identity()?,
        layout: code::layout(),
        parent_pid: std::process::id(),
        root: {
            let root = super::root::program_root();
            (root.pid, root.start)
        },
        die_with_parent: options.die_with_parent,
        main,
        transport: options.transport,
        data_fd,
        inherited,
        name: options.name.clone(),
        payload: payload.to_vec(),
    };
    let deadline = Instant::now() + options.handshake_timeout;
    match handshake(
        control,
        &bootstrap,
        deadline,
        &mut child,
        options.handshake_timeout,
    ) {
        Ok(()) => {
            if options.transport == TransportKind::Shm {
                // A futex wait cannot watch the child: the watcher wakes it when the child dies.
                child.notify_on_exit(channel.peer_death())?;
            }
            Ok(Spawned { child, channel })
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait_timeout(Duration::from_secs(5));
            Err(e)
        }
    }
}

/// This process's environment plus the variable that makes the child run its bootstrap.
fn child_environment(control_child: RawFd) -> io::Result<Vec<std::ffi::CString>> {
    use std::os::unix::ffi::OsStrExt;
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        if key == CONTROL_ENV {
            continue;
        }
        let mut entry = key.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        // A variable with a NUL byte cannot be passed on (nor could std's Command).
        if let Ok(entry) = std::ffi::CString::new(entry) {
            env.push(entry);
        }
    }
    env.push(
        std::ffi::CString::new(format!("{CONTROL_ENV}={control_child}"))
            .map_err(io::Error::other)?,
    );
    Ok(env)
}

fn handshake(
    control: PipeChannel,
    bootstrap: &Bootstrap,
    deadline: Instant,
    child: &mut Child,
    timeout: Duration,
) -> Result<(), SpawnError> {
    let pid = child.pid();
    let mut control = Channel::from(control);
    control.hide_from_forked_children();
    let bytes = postcard::to_stdvec(bootstrap).map_err(|e| io::Error::other(e.to_string()))?;
    // A child that dies before reading is seen below, through EOF on the control socket.
    let _ = control.send(&bytes, Some(deadline));
    let mut reply = Vec::new();
    match control.recv_into(&mut reply, Some(deadline)) {
        Ok(()) => {}
        Err(RecvError::Timeout) => return Err(SpawnError::Timeout { pid, timeout }),
        Err(_) => {
            // The child closed its end: it is exiting (or exec failed late). Its status says why.
            let status = child.wait_timeout(Duration::from_secs(5))?;
            return Err(match status {
                Some(status) => SpawnError::ChildExited { pid, status },
                None => SpawnError::Protocol {
                    pid,
                    reason: "closed the control socket".into(),
                },
            });
        }
    }
    match postcard::from_bytes::<Hello>(&reply) {
        Ok(Hello::Ready { pid: theirs }) if theirs == pid => Ok(()),
        Ok(Hello::Ready { pid: theirs }) => Err(SpawnError::Protocol {
            pid,
            reason: format!("said it was pid {theirs}"),
        }),
        Ok(Hello::Refused { reason }) => Err(SpawnError::Mismatch(reason)),
        Err(e) => Err(SpawnError::Protocol {
            pid,
            reason: format!("undecodable hello: {e}"),
        }),
    }
}

/// The executable's identity, read once per process (lock-free, so that a forked child never
/// finds it locked).
pub(crate) fn identity() -> io::Result<[u64; 5]> {
    static IDENTITY: PerProcess<Mutex<Option<[u64; 5]>>> = PerProcess::new();
    let cell = IDENTITY.get_or_init(|| Mutex::new(None));
    let mut cached = cell.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(id) = *cached {
        return Ok(id);
    }
    let id = sys::executable_identity()?;
    *cached = Some(id);
    Ok(id)
}

/// Whether this process was started by [`spawn`](crate::spawn) and its bootstrap is still to
/// run: for another crate's code that runs before `main` (a constructor of its own, whose
/// order against this crate's is unspecified), which must leave such a process alone.
pub fn is_spawned_child() -> bool {
    std::env::var_os(CONTROL_ENV).is_some()
}

/// The child's side: runs before `main` in every process that links this crate.
pub(super) mod child_side {
    use super::*;

    // SAFETY (of running before main): the hook returns at once unless this process was
    // started by `spawn`; then it only uses std facilities that work before `main` on Linux
    // (the environment, files, allocation, panics) and never returns.
    pub(in crate::start) static HOOK: fn() = pool_ipc_child_hook;

    #[ctor::ctor(unsafe)]
    fn pool_ipc_child_hook() {
        let Some(fd) = std::env::var_os(CONTROL_ENV) else {
            // Not started by `spawn`: the root of its own program.
            crate::start::root::this_process_is_root();
            return;
        };
        // SAFETY: before `main`, no other thread of this program exists yet.
        unsafe { std::env::remove_var(CONTROL_ENV) };
        let code = run(fd);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::process::exit(code);
    }

    fn run(fd: OsString) -> i32 {
        // What std's runtime does before `main`, which has not run here.
        sys::ignore_sigpipe();
        // What a pre-exec hook would have done (the child was started by posix_spawn).
        if sys::child_setup_after_exec().is_err() {
            return EXIT_BOOTSTRAP_FAILED;
        }
        match bootstrap(fd) {
            // A panic was printed by the hook; Python's exit code for an exception in the
            // target is 1.
            Ok((main, start)) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| main(start))).unwrap_or(1)
            }
            Err(()) => EXIT_BOOTSTRAP_FAILED,
        }
    }

    fn take_fd(raw: i32) -> Result<OwnedFd, ()> {
        if !sys::is_open(raw) {
            return Err(());
        }
        // SAFETY: the descriptor is open and was handed to this process by its parent for it
        // alone; nothing else in this process refers to it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Our own children must not inherit it.
        sys::set_cloexec(fd.as_fd());
        Ok(fd)
    }

    fn bootstrap(fd: OsString) -> Result<(ChildMain, ChildStart), ()> {
        let raw: i32 = fd.to_str().and_then(|s| s.parse().ok()).ok_or(())?;
        let control = PipeChannel::from_fd(take_fd(raw)?).map_err(|_| ())?;
        let mut control = Channel::from(control);
        let mut bytes = Vec::new();
        let deadline = Some(Instant::now() + Duration::from_secs(60));
        control.recv_into(&mut bytes, deadline).map_err(|_| ())?;
        let refuse = |control: &mut Channel, reason: String| {
            if let Ok(msg) = postcard::to_stdvec(&Hello::Refused { reason }) {
                let _ = control.send(&msg, deadline);
            }
        };
        let boot: Bootstrap = match postcard::from_bytes(&bytes) {
            Ok(b) => b,
            Err(e) => {
                refuse(&mut control, format!("undecodable bootstrap: {e}"));
                return Err(());
            }
        };
        if boot.protocol != PROTOCOL {
            refuse(
                &mut control,
                format!("protocol {} where {PROTOCOL} was expected", boot.protocol),
            );
            return Err(());
        }
        let mine = sys::executable_identity().map_err(|_| ())?;
        if boot.identity != mine || boot.layout != code::layout() {
            refuse(
                &mut control,
                "the child runs a different build of the executable".into(),
            );
            return Err(());
        }
        if sys::parent_pid() != boot.parent_pid {
            // The parent died before PR_SET_PDEATHSIG was armed: nobody wants us.
            return Err(());
        }
        if !boot.die_with_parent && sys::disarm_parent_death_signal().is_err() {
            return Err(());
        }
        crate::start::root::inherit(crate::shared::ProcessIdentity {
            pid: boot.root.0,
            start: boot.root.1,
        });
        // Descriptors the parent had open without close-on-exec came along (posix_spawn
        // cannot leave them behind): only the control socket, the channel and the inherited
        // ones are ours. Nothing else in this process, which has not reached `main`, uses any.
        let mut keep: Vec<RawFd> = vec![raw];
        keep.extend((boot.data_fd >= 0).then_some(boot.data_fd));
        keep.extend(&boot.inherited);
        keep.sort_unstable();
        // SAFETY: before `main`, no code of this program holds a descriptor but those kept.
        if !unsafe { sys::close_all_except(&keep) } {
            return Err(());
        }
        let data = if boot.data_fd >= 0 {
            vec![take_fd(boot.data_fd)?]
        } else {
            Vec::new()
        };
        let channel = Channel::from_inherited(boot.transport, data).map_err(|_| ())?;
        let inherited = boot
            .inherited
            .iter()
            .map(|fd| take_fd(*fd))
            .collect::<Result<Vec<_>, ()>>()?;
        let hello = postcard::to_stdvec(&Hello::Ready {
            pid: std::process::id(),
        })
        .map_err(|_| ())?;
        control.send(&hello, deadline).map_err(|_| ())?;
        // SAFETY: the parent made `main` from a `ChildMain` of this very build (identity and
        // layout checked above), so the address is that function.
        let main: ChildMain = unsafe { std::mem::transmute::<usize, ChildMain>(boot.main.addr()) };
        Ok((
            main,
            ChildStart {
                channel,
                payload: boot.payload,
                name: boot.name,
                inherited,
            },
        ))
    }
}
