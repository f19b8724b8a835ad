//! Real children started from this test binary: the spawn start method end to end.
//!
//! Each child function below runs in a child process re-executed from this very binary (the
//! child never reaches libtest's `main`). Time bounds are generous (the machine is shared);
//! each test prints what it measured.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use pool_ipc::{ChildStart, ExitStatus, SpawnError, SpawnOptions, TransportKind, spawn};

const GENEROUS: Duration = Duration::from_secs(10);

fn echo(mut start: ChildStart) -> i32 {
    let mut buf = Vec::new();
    while start.channel.recv_into(&mut buf, None).is_ok() {
        if start.channel.send(&buf, None).is_err() {
            break;
        }
    }
    0
}

fn payload_and_name(mut start: ChildStart) -> i32 {
    let reply = format!("{}:{}", start.name, String::from_utf8_lossy(&start.payload));
    start.channel.send(reply.as_bytes(), None).unwrap();
    7
}

fn panics(_: ChildStart) -> i32 {
    panic!("deliberate panic in a child");
}

fn aborts(_: ChildStart) -> i32 {
    std::process::abort();
}

fn sleeps(_: ChildStart) -> i32 {
    std::thread::sleep(Duration::from_secs(600));
    0
}

fn reports_environment(mut start: ChildStart) -> i32 {
    let role = std::env::var_os("POOL_IPC_CONTROL_FD").is_some();
    // SAFETY: `sigaction` is plain data for which all-zero bytes are a valid value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying (not changing) a disposition with a valid out pointer.
    unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) };
    let sigint_ignored = old.sa_sigaction == libc::SIG_IGN;
    let mut stdin = String::new();
    let stdin_empty =
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin).is_ok_and(|n| n == 0);
    let args = std::env::args().count();
    let mut death_signal: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes an int through a valid pointer.
    unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut death_signal as *mut libc::c_int,
        )
    };
    // SAFETY: `sigset_t` is plain data; querying the mask with a valid out pointer.
    let sigint_blocked = unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut mask);
        libc::sigismember(&mask, libc::SIGINT) == 1
    };
    let msg = format!(
        "role={role} sigint_ignored={sigint_ignored} sigint_blocked={sigint_blocked} \
         death_signal={death_signal} stdin_empty={stdin_empty} args={args}"
    );
    start.channel.send(msg.as_bytes(), None).unwrap();
    0
}

fn round_trip(kind: TransportKind) {
    let t = Instant::now();
    let mut s = spawn(echo, b"", &SpawnOptions::new().transport(kind)).unwrap();
    eprintln!("spawn ({kind:?}): {:?}", t.elapsed());
    let mut buf = Vec::new();
    for msg in [&b""[..], b"x", &vec![7u8; 100_000]] {
        s.channel.send(msg, None).unwrap();
        s.channel
            .recv_into(&mut buf, Some(Instant::now() + GENEROUS))
            .unwrap();
        assert_eq!(buf, msg);
    }
    drop(s.channel);
    assert_eq!(
        s.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(0))
    );
}

#[test]
fn a_child_echoes_over_a_pipe() {
    round_trip(TransportKind::Pipe);
}

#[test]
fn payload_name_and_exit_code_reach_the_right_places() {
    let mut s = spawn(
        payload_and_name,
        b"hello",
        &SpawnOptions::new().name("PoolWorker-1"),
    )
    .unwrap();
    let mut buf = Vec::new();
    s.channel
        .recv_into(&mut buf, Some(Instant::now() + GENEROUS))
        .unwrap();
    assert_eq!(buf, b"PoolWorker-1:hello");
    assert_eq!(
        s.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(7))
    );
}

#[test]
fn the_child_has_the_documented_environment() {
    let mut s = spawn(reports_environment, b"", &SpawnOptions::new()).unwrap();
    let mut buf = Vec::new();
    s.channel
        .recv_into(&mut buf, Some(Instant::now() + GENEROUS))
        .unwrap();
    assert_eq!(
        String::from_utf8(buf).unwrap(),
        format!(
            "role=false sigint_ignored=true sigint_blocked=false death_signal={} \
             stdin_empty=true args=1",
            libc::SIGKILL
        )
    );
    s.child.wait().unwrap();
}

fn reports_descriptors(mut start: ChildStart) -> i32 {
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    start.channel.send(fds.join(",").as_bytes(), None).unwrap();
    0
}

#[test]
fn a_descriptor_left_inheritable_in_the_parent_does_not_reach_the_child() {
    // A C library may open descriptors without close-on-exec; a child must not hold them
    // (a pipe's writer kept open in a worker would keep its reader from seeing EOF).
    let mut ends = [0; 2];
    // SAFETY: `pipe` (without O_CLOEXEC) writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
    // SAFETY: both are new descriptors owned by nothing else; they close at the end.
    let _ends =
        ends.map(|fd| unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let stray = ends[1];
    let mut s = spawn(reports_descriptors, b"", &SpawnOptions::new()).unwrap();
    let mut buf = Vec::new();
    s.channel
        .recv_into(&mut buf, Some(Instant::now() + GENEROUS))
        .unwrap();
    let listed = String::from_utf8(buf).unwrap();
    let fds: Vec<i32> = listed.split(',').map(|f| f.parse().unwrap()).collect();
    assert!(!fds.contains(&stray), "the child holds {stray}: {listed}");
    // stdio, its channel, the control socket, and read_dir's own descriptor at most.
    assert!(fds.len() <= 6, "{listed}");
    s.child.wait().unwrap();
}

#[test]
fn a_panicking_child_exits_with_code_1() {
    let mut s = spawn(panics, b"", &SpawnOptions::new()).unwrap();
    let t = Instant::now();
    let status = s.child.wait_timeout(GENEROUS).unwrap();
    eprintln!("panic noticed after {:?}", t.elapsed());
    assert_eq!(status, Some(ExitStatus::Code(1)));
    let mut buf = Vec::new();
    assert!(matches!(
        s.channel.recv_into(&mut buf, None),
        Err(pool_ipc::RecvError::Disconnected)
    ));
}

#[test]
fn an_aborting_child_is_reported_as_sigabrt() {
    let mut s = spawn(aborts, b"", &SpawnOptions::new()).unwrap();
    let status = s.child.wait_timeout(GENEROUS).unwrap();
    assert_eq!(status, Some(ExitStatus::Signal(libc::SIGABRT)));
    assert_eq!(status.unwrap().python_exitcode(), Some(-6));
}

#[test]
fn a_killed_child_is_reported_promptly_and_its_channel_disconnects() {
    let mut s = spawn(sleeps, b"", &SpawnOptions::new()).unwrap();
    let t = Instant::now();
    s.child.kill().unwrap();
    let mut buf = Vec::new();
    let r = s
        .channel
        .recv_into(&mut buf, Some(Instant::now() + GENEROUS));
    assert!(matches!(r, Err(pool_ipc::RecvError::Disconnected)), "{r:?}");
    assert_eq!(
        s.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Signal(libc::SIGKILL))
    );
    eprintln!("kill to disconnect and reap: {:?}", t.elapsed());
    // Signalling a reaped child is harmless.
    s.child.kill().unwrap();
}

#[test]
fn a_child_that_never_answers_times_out_and_is_killed() {
    let options = SpawnOptions::new()
        .program("/bin/sleep", vec!["30".into()])
        .handshake_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let err = spawn(echo, b"", &options).unwrap_err();
    eprintln!("never-connecting child refused after {:?}", t.elapsed());
    assert!(matches!(err, SpawnError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < GENEROUS);
}

#[test]
fn a_child_that_dies_before_answering_gives_its_exit_status() {
    let options = SpawnOptions::new().program("/bin/false", vec![]);
    let t = Instant::now();
    let err = spawn(echo, b"", &options).unwrap_err();
    eprintln!("early death noticed after {:?}", t.elapsed());
    assert!(
        matches!(
            err,
            SpawnError::ChildExited {
                status: ExitStatus::Code(1),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn terminate_escalates_to_sigkill_when_sigterm_is_not_enough() {
    let mut s = spawn(sleeps, b"", &SpawnOptions::new()).unwrap();
    // `sleeps` does not handle SIGTERM, so SIGTERM alone ends it.
    let status = s.child.terminate(GENEROUS).unwrap();
    assert_eq!(status, ExitStatus::Signal(libc::SIGTERM));
}

#[test]
fn a_shm_channel_reports_its_dead_child_without_help() {
    // `spawn` registers shm children with the watcher, which wakes a blocked receive.
    let s = spawn(
        sleeps,
        b"",
        &SpawnOptions::new().transport(TransportKind::Shm),
    )
    .unwrap();
    let (_tx, mut rx) = s.channel.split();
    let waiter = std::thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, Some(Instant::now() + GENEROUS))
    });
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    s.child.kill().unwrap();
    let r = waiter.join().unwrap();
    eprintln!(
        "shm receiver woken {:?} after its peer was killed",
        t.elapsed()
    );
    assert!(matches!(r, Err(pool_ipc::RecvError::Disconnected)), "{r:?}");
    assert!(t.elapsed() < GENEROUS);
}

#[test]
fn a_child_echoes_over_shared_memory() {
    round_trip(TransportKind::Shm);
}
