//! The shared-memory tracker: named segments a program created and did not hand over are
//! unlinked once the program's whole process tree has ended, however it ended (a normal exit
//! without unlink, a panic, SIGINT, SIGTERM, SIGKILL of any of its processes).
//!
//! # Who takes part
//!
//! A *program* is a root process (one not started by pool-ipc, see
//! [`pool_ipc::os::program_root`]) and every process pool-ipc started from it, directly or
//! not: `Process` children, pool workers, forkserver children, forked children. They all
//! know the root's identity (pid and start time), so they find the program's one tracker
//! at an abstract Unix socket address named after it and the user:
//! `pool-shm-tracker.UID.PID.START`.
//!
//! The tracker is started by the first process of the program that creates a tracked
//! segment (pool-ipc's `spawn`, with `die_with_parent(false)` so that it outlives the
//! program: it is the one process that must). It binds the address itself: of two processes
//! that start one at once, the second tracker finds the address taken and exits, and both
//! use the first. It ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C or a `kill` of the whole
//! process group must not take it with the program); SIGKILL of it leaves the segments
//! registered so far behind, as before the tracker existed.
//!
//! # What is registered, and when
//!
//! - [`SharedMemory::create_named`](crate::SharedMemory::create_named) registers the name
//!   with the segment's identity (device and inode) *after* creating it: a creator killed in
//!   between leaks that one segment (registering first could unlink a segment of that name
//!   that another program created, which is worse).
//! - Dropping the creating handle, [`SharedMemory::unlink`](crate::SharedMemory::unlink) and
//!   [`SharedMemory::keep`](crate::SharedMemory::keep) unregister the name (before the
//!   unlink, so the tracker never unlinks a later segment of the same name).
//! - [`SharedMemory::create_untracked`](crate::SharedMemory::create_untracked) registers
//!   nothing: that segment is handed over (Python 3.13's `track=False`).
//! - [`SharedMemory::attach`](crate::SharedMemory::attach) registers nothing either (unlike
//!   CPython's, whose attaching processes registered names they did not own, hence its
//!   false "leaked shared_memory objects" warnings and double unlinks); an attaching process
//!   only connects, if the tracker exists, so that it is counted as alive.
//!
//! Every process that registered, unregistered or attached keeps one connection for the
//! rest of its life (one descriptor; a forked child opens its own).
//!
//! # When the program has ended
//!
//! When the root process has ended (checked every 50 ms through `/proc`, by pid and start
//! time) and every connection is closed: pool-ipc's children die with their parent, so after
//! the root's end its tree ends too, and a process of it that is still alive and uses
//! segments (registered, or attached by name) holds a connection, which keeps the segments.
//! Then the tracker unlinks each name still registered whose `/dev/shm` entry is still the
//! segment that was registered (same device and inode: a name that another program reused
//! meanwhile is left alone), and exits. It prints nothing: a name already gone is not an
//! error, nor is a segment some process still maps (unlinking removes only the name).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pool_ipc::ChildStart;
use pool_ipc::os::{self, Signal};
use pool_ipc::shared::{self, ProcessIdentity};

/// How often the tracker looks whether the program's root has ended.
const POLL: Duration = Duration::from_millis(50);
/// How long a process waits for a tracker it started to be listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Where `shm_open` puts named segments on Linux.
const SHM_DIR: &str = "/dev/shm";

const REGISTER: u8 = b'R';
const UNREGISTER: u8 = b'U';

/// The abstract address of the tracker of the program whose root is `root`.
fn address(root: ProcessIdentity) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!(
        "pool-shm-tracker.{}.{}.{}",
        os::user_id(),
        root.pid,
        root.start
    ))
}

/// A segment's identity: its device and inode.
pub(crate) type SegmentId = (u64, u64);

/// The identity of the segment behind `fd`.
pub(crate) fn segment_id(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<SegmentId> {
    let meta = std::fs::File::from(fd.try_clone_to_owned()?).metadata()?;
    Ok((meta.dev(), meta.ino()))
}

fn encode(op: u8, name: &str, id: Option<SegmentId>) -> io::Result<Vec<u8>> {
    let len = u16::try_from(name.len()).map_err(|_| io::Error::other("name too long"))?;
    let mut msg = Vec::with_capacity(3 + name.len() + 16);
    msg.push(op);
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(name.as_bytes());
    if let Some((dev, ino)) = id {
        msg.extend_from_slice(&dev.to_le_bytes());
        msg.extend_from_slice(&ino.to_le_bytes());
    }
    Ok(msg)
}

// ---------------------------------------------------------------------------------------
// The program's side.

/// This process's link to the tracker.
struct Client {
    conn: Option<UnixStream>,
    /// What this process registered and has not unregistered: sent again to a new tracker
    /// if the old one went away.
    mine: HashMap<String, SegmentId>,
}

struct PerProcess {
    pid: u32,
    client: Mutex<Client>,
}

/// This process's client. A forked child makes its own (the parent's lock may have been
/// held by another thread at the fork, and the connection is the parent's); the parent's
/// copy is left alone, leaked.
fn client() -> MutexGuard<'static, Client> {
    static CLIENT: AtomicPtr<PerProcess> = AtomicPtr::new(std::ptr::null_mut());
    let pid = std::process::id();
    let seen = CLIENT.load(Ordering::Acquire);
    // SAFETY: non-null pointers come from `Box::into_raw` below and are never freed.
    let mine = match unsafe { seen.as_ref() } {
        Some(per) if per.pid == pid => per,
        _ => {
            let fresh = Box::into_raw(Box::new(PerProcess {
                pid,
                client: Mutex::new(Client {
                    conn: None,
                    mine: HashMap::new(),
                }),
            }));
            match CLIENT.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
                // SAFETY: just published, never freed.
                Ok(_) => unsafe { &*fresh },
                // SAFETY: `fresh` was never published; `theirs` (another thread of this
                // process published first) is never freed.
                Err(theirs) => unsafe {
                    drop(Box::from_raw(fresh));
                    &*theirs
                },
            }
        }
    };
    mine.client.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connects to the program's tracker, if it runs and belongs to this user.
fn connect(root: ProcessIdentity) -> io::Result<UnixStream> {
    let conn = UnixStream::connect_addr(&address(root)?)?;
    if os::peer_user_id(conn.as_fd())? != os::user_id() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the tracker's address is held by another user",
        ));
    }
    Ok(conn)
}

/// The program's root, if it can be named for sure.
fn root() -> io::Result<ProcessIdentity> {
    let root = os::program_root();
    if root.start == 0 {
        return Err(io::Error::other(
            "the program's root cannot be read in /proc",
        ));
    }
    Ok(root)
}

impl Client {
    /// The connection, made now if needed; `start`: start the tracker if none runs.
    fn conn(&mut self, start: bool) -> io::Result<&mut UnixStream> {
        if self.conn.is_none() {
            let root = root()?;
            let conn = match connect(root) {
                Ok(conn) => conn,
                Err(e) if !start => return Err(e),
                Err(_) => {
                    if !root.is_alive() {
                        // A tracker started now would unlink at once: leave it untracked.
                        return Err(io::Error::other("the program's root has ended"));
                    }
                    start_tracker(root)?;
                    connect(root)?
                }
            };
            // A new tracker (the old one was killed) learns what this process holds.
            let mut conn = conn;
            for (name, id) in &self.mine {
                conn.write_all(&encode(REGISTER, name, Some(*id))?)?;
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Sends `msg`, reconnecting once (to a new tracker if `start`) if the tracker is gone.
    fn send(&mut self, msg: &[u8], start: bool) -> io::Result<()> {
        match self.conn(start)?.write_all(msg) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.conn = None;
                self.conn(start)?.write_all(msg)
            }
        }
    }
}

/// Registers a segment this process created: it is unlinked when the program has ended,
/// unless unregistered first.
pub(crate) fn register(name: &str, id: SegmentId) -> io::Result<()> {
    let mut client = client();
    client.mine.insert(name.to_owned(), id);
    let msg = encode(REGISTER, name, Some(id))?;
    // A new connection sends `mine`, this name included; sending it again is harmless.
    client.send(&msg, true)
}

/// Unregisters `name` (from whichever process of the program registered it), if a tracker
/// runs.
pub(crate) fn unregister(name: &str) {
    let mut client = client();
    client.mine.remove(name);
    if let Ok(msg) = encode(UNREGISTER, name, None) {
        let _ = client.send(&msg, false);
    }
}

/// Tells the tracker, if one runs, that this process uses named segments: it then keeps
/// them while this process lives, even after the program's root has ended.
pub(crate) fn note_user() {
    let _ = client().conn(false);
}

/// Starts the program's tracker and waits until it listens (or lost the race to another).
fn start_tracker(root: ProcessIdentity) -> io::Result<()> {
    let payload = postcard::to_stdvec(&(root.pid, root.start)).map_err(io::Error::other)?;
    let options = pool_ipc::SpawnOptions::new()
        .name("pool-shm-tracker")
        .die_with_parent(false)
        .handshake_timeout(START_TIMEOUT);
    let mut spawned =
        pool_ipc::spawn(tracker_main, &payload, &options).map_err(io::Error::other)?;
    let mut answer = Vec::new();
    let got = spawned
        .channel
        .recv_into(&mut answer, Some(Instant::now() + START_TIMEOUT));
    // It runs on without us (until the program has ended); the reaper reaps it if it ends
    // while this process lives.
    spawned.child.disown();
    got.map_err(io::Error::other)?;
    match answer.as_slice() {
        [BOUND | TAKEN] => Ok(()),
        _ => Err(io::Error::other("the tracker could not listen")),
    }
}

// ---------------------------------------------------------------------------------------
// The tracker's side.

/// Answers of a starting tracker: it listens, or another one does.
const BOUND: u8 = 1;
const TAKEN: u8 = 2;

#[derive(Default)]
struct State {
    names: HashMap<String, SegmentId>,
    /// Connections not yet at end of file.
    open: usize,
}

/// The tracker process (started by `spawn`).
fn tracker_main(mut start: ChildStart) -> i32 {
    // SIGINT is ignored by every spawned child already.
    let _ = os::ignore_signal(Signal::Term);
    let _ = os::ignore_signal(Signal::Hup);
    let Ok((pid, started)) = postcard::from_bytes::<(u32, u64)>(&start.payload) else {
        return 2;
    };
    let root = ProcessIdentity {
        pid,
        start: started,
    };
    let listener = match address(root).and_then(|a| UnixListener::bind_addr(&a)) {
        Ok(listener) => listener,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let _ = start.channel.send(&[TAKEN], None);
            return 0;
        }
        Err(_) => return 1,
    };
    if start.channel.send(&[BOUND], None).is_err() {
        // The starter died before it heard: others will connect anyway.
    }
    drop(start);
    if listener.set_nonblocking(true).is_err() {
        return 1;
    }
    let state = Arc::new(Mutex::new(State::default()));
    loop {
        let accepted = accept_all(&listener, &state);
        let ended = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.open == 0 && !root.is_alive()
        };
        // A connection still in the queue is a process of the program that is alive.
        if ended && accepted == 0 && accept_all(&listener, &state) == 0 {
            break;
        }
        std::thread::sleep(POLL);
    }
    drop(listener);
    let names = std::mem::take(&mut state.lock().unwrap_or_else(|e| e.into_inner()).names);
    for (name, id) in names {
        match std::fs::metadata(std::path::Path::new(SHM_DIR).join(&name)) {
            Ok(meta) if (meta.dev(), meta.ino()) == id => {
                let _ = shared::unlink_named(&name);
            }
            // Gone already, or another segment under that name now: not ours.
            _ => {}
        }
    }
    0
}

/// Accepts every connection waiting; each gets a reader thread. Returns how many.
fn accept_all(listener: &UnixListener, state: &Arc<Mutex<State>>) -> usize {
    let mut accepted = 0;
    loop {
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // WouldBlock, or out of descriptors: the rest wait in the queue.
            Err(_) => return accepted,
        };
        accepted += 1;
        if os::peer_user_id(conn.as_fd()).ok() != Some(os::user_id())
            || conn.set_nonblocking(false).is_err()
        {
            continue;
        }
        state.lock().unwrap_or_else(|e| e.into_inner()).open += 1;
        let shared = Arc::clone(state);
        let reader = std::thread::Builder::new()
            .name("shm-tracker-conn".into())
            .stack_size(64 * 1024)
            .spawn(move || serve(conn, &shared));
        if reader.is_err() {
            // No thread for it: it cannot be watched; count it as closed. (Its process's
            // segments stay safe while the root lives.)
            state.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
        }
    }
}

/// Applies one connection's messages until it closes (or sends garbage).
fn serve(mut conn: UnixStream, state: &Mutex<State>) {
    let _ = (|| -> io::Result<()> {
        loop {
            let mut head = [0u8; 3];
            match conn.read_exact(&mut head) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                other => other?,
            }
            let len = usize::from(u16::from_le_bytes([head[1], head[2]]));
            let mut name = vec![0u8; len];
            conn.read_exact(&mut name)?;
            let name = String::from_utf8(name).map_err(io::Error::other)?;
            match head[0] {
                REGISTER => {
                    let mut id = [0u8; 16];
                    conn.read_exact(&mut id)?;
                    let dev = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
                    let ino = u64::from_le_bytes(id[8..].try_into().expect("8 bytes"));
                    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                    s.names.insert(name, (dev, ino));
                }
                UNREGISTER => {
                    state
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .names
                        .remove(&name);
                }
                _ => return Err(io::Error::other("unknown message")),
            }
        }
    })();
    // Read until the peer's end of file even after garbage, so that this connection keeps
    // the program alive for as long as its process holds it.
    let _ = io::copy(&mut conn, &mut io::sink());
    state.lock().unwrap_or_else(|e| e.into_inner()).open -= 1;
}
