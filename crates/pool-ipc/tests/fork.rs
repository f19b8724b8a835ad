//! The `fork` and `forkserver` start methods, end to end with real processes.
//!
//! Scenarios that break something process-wide (a killed or stopped forkserver, a seccomp
//! filter) run inside a middle process started from this test binary, which has its own
//! forkserver, so that tests running in parallel here never see it. Every wait is bounded;
//! each test prints what it measured.

#![allow(clippy::print_stderr)]

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pool_ipc::{
    ChildStart, ExitStatus, RecvError, SpawnError, SpawnOptions, Spawned, StartMethod,
    TransportKind, fork, spawn,
};

const GENEROUS: Duration = Duration::from_secs(10);

fn forkserver() -> SpawnOptions {
    SpawnOptions::new().start_method(StartMethod::Forkserver)
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + GENEROUS)
}

fn recv(channel: &mut pool_ipc::Channel) -> Vec<u8> {
    let mut buf = Vec::new();
    channel.recv_into(&mut buf, soon()).unwrap();
    buf
}

/// Whether `pid` is a running process (a zombie or a vanished pid is not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The parent pid of `pid`, from `/proc`.
fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits (bounded) until none of `pids` runs; whether that happened.
fn all_gone(pids: &[u32]) -> bool {
    let t = Instant::now();
    while pids.iter().any(|p| running(*p)) && t.elapsed() < GENEROUS {
        std::thread::sleep(Duration::from_millis(5));
    }
    pids.iter().all(|p| !running(*p))
}

/// Sends `signal` to `pid` through a pidfd (the test holds no `Child` for it).
fn signal(pid: u32, signal: i32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    rustix::process::pidfd_send_signal(
        &pidfd,
        rustix::process::Signal::from_named_raw(signal).unwrap(),
    )
    .unwrap();
}

fn sleeps(_: ChildStart) -> i32 {
    std::thread::sleep(Duration::from_secs(600));
    0
}

fn echo(mut start: ChildStart) -> i32 {
    let mut buf = Vec::new();
    while start.channel.recv_into(&mut buf, None).is_ok() {
        if start.channel.send(&buf, None).is_err() {
            break;
        }
    }
    0
}

// ---------------------------------------------------------------------------------------
// fork
// ---------------------------------------------------------------------------------------

#[test]
fn fork_runs_a_capturing_closure_and_returns_its_exit_code() {
    let words = [String::from("captured"), String::from("values")];
    let t = Instant::now();
    let mut forked = fork(
        move |mut start| {
            let msg = format!("{} {} {}", start.name, words.join(" "), start.payload.len());
            start.channel.send(msg.as_bytes(), None).unwrap();
            42
        },
        &SpawnOptions::new().name("forked-1"),
    )
    .unwrap();
    let started = t.elapsed();
    assert_eq!(recv(&mut forked.channel), b"forked-1 captured values 0");
    assert_eq!(
        forked.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(42))
    );
    eprintln!(
        "fork: started in {started:?}, joined after {:?}",
        t.elapsed()
    );
}

#[test]
fn fork_start_and_join_of_a_no_op() {
    let mut times = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let mut forked = fork(|_| 0, &SpawnOptions::new()).unwrap();
        assert_eq!(forked.child.wait().unwrap(), ExitStatus::Code(0));
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "fork no-op start+join (debug build): median {:?}, min {:?}",
        times[times.len() / 2],
        times[0]
    );
}

#[test]
fn a_panicking_forked_closure_exits_with_code_1() {
    let mut forked = fork(
        |_| panic!("deliberate panic in a forked child"),
        &SpawnOptions::new(),
    )
    .unwrap();
    assert_eq!(
        forked.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(1))
    );
}

#[test]
fn a_forked_child_has_the_documented_environment() {
    let mut forked = fork(
        |mut start| {
            let mut deathsig: libc::c_int = 0;
            // SAFETY: PR_GET_PDEATHSIG writes an int through the valid pointer.
            unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut deathsig) };
            // SAFETY: `sigaction` is plain data; querying with a valid out pointer.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut old) };
            let sigint_ignored = old.sa_sigaction == libc::SIG_IGN;
            let mut stdin = String::new();
            let stdin_empty = std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin)
                .is_ok_and(|n| n == 0);
            let msg = format!(
                "deathsig={deathsig} sigint_ignored={sigint_ignored} stdin_empty={stdin_empty}"
            );
            start.channel.send(msg.as_bytes(), None).unwrap();
            0
        },
        &SpawnOptions::new(),
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(recv(&mut forked.channel)).unwrap(),
        format!(
            "deathsig={} sigint_ignored=true stdin_empty=true",
            libc::SIGKILL
        )
    );
    assert_eq!(forked.child.wait().unwrap(), ExitStatus::Code(0));
}

#[test]
fn a_forked_child_keeps_the_descriptors_it_captured() {
    // A captured socket keeps working in the child: nothing closes what a captured value owns.
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut forked = fork(
        move |_| {
            let mut theirs = theirs;
            std::io::Write::write_all(&mut theirs, b"through a captured socket").unwrap();
            0
        },
        &SpawnOptions::new(),
    )
    .unwrap();
    assert_eq!(forked.child.wait().unwrap(), ExitStatus::Code(0));
    assert_eq!(read_some(&mut ours), "through a captured socket");
}

/// Reads what is there (bounded: a forked sibling may hold a copy, so no end of file).
fn read_some(stream: &mut std::os::unix::net::UnixStream) -> String {
    stream.set_read_timeout(Some(GENEROUS)).unwrap();
    let mut buf = vec![0u8; 256];
    let n = std::io::Read::read(stream, &mut buf).unwrap();
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn a_child_sees_end_of_file_from_its_parent_even_with_a_forked_sibling_alive() {
    // The sibling is forked while the parent holds its end of the echo child's channel: it
    // must not hold a copy, or the echo child would never see end of file.
    for method in [StartMethod::Spawn, StartMethod::Forkserver] {
        let echoing = spawn(echo, b"", &SpawnOptions::new().start_method(method)).unwrap();
        let sibling = fork(sleeps, &SpawnOptions::new()).unwrap();
        let mut child = echoing.child;
        drop(echoing.channel);
        assert_eq!(
            child.wait_timeout(GENEROUS).unwrap(),
            Some(ExitStatus::Code(0)),
            "{method:?}"
        );
        assert!(running(sibling.child.pid()));
    }
}

#[test]
fn fork_over_shared_memory_echoes_and_sees_its_child_die() {
    let options = SpawnOptions::new().transport(TransportKind::Shm);
    let mut forked = fork(echo, &options).unwrap();
    for msg in [&b""[..], b"x", &vec![5u8; 3 << 20]] {
        forked.channel.send(msg, soon()).unwrap();
        assert_eq!(recv(&mut forked.channel), msg);
    }
    let (_tx, mut rx) = forked.channel.split();
    let waiter = std::thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon())
    });
    std::thread::sleep(Duration::from_millis(50));
    forked.child.kill().unwrap();
    let r = waiter.join().unwrap();
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    assert_eq!(
        forked.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Signal(libc::SIGKILL))
    );
}

#[test]
fn a_forked_child_sees_end_of_file_when_the_parent_closes_its_end() {
    // The child must not hold the parent's end of its own channel.
    let forked = fork(echo, &SpawnOptions::new()).unwrap();
    let mut child = forked.child;
    drop(forked.channel);
    assert_eq!(
        child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(0))
    );
}

/// Kills `a` and checks that its channel reaches end of file at once although its sibling
/// `b` (which must hold no end of it) still runs.
fn killed_child_disconnects_while_its_sibling_lives(a: Spawned, b: &Spawned, what: &str) {
    let (_tx, mut rx) = a.channel.split();
    let t = Instant::now();
    a.child.kill().unwrap();
    let mut buf = Vec::new();
    let r = rx.recv_into(&mut buf, soon());
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    eprintln!("killed {what}'s channel closed after {:?}", t.elapsed());
    assert!(running(b.child.pid()));
}

#[test]
fn a_killed_forked_child_is_seen_at_once_by_its_channel_even_with_siblings_alive() {
    let a = fork(sleeps, &SpawnOptions::new()).unwrap();
    let b = fork(sleeps, &SpawnOptions::new()).unwrap();
    killed_child_disconnects_while_its_sibling_lives(a, &b, "forked child");
}

#[test]
fn children_forked_while_others_are_spawned_do_not_keep_their_channels_open() {
    // One thread spawns (re-exec) children while another forks: a forked child must close
    // the channel ends in flight to the spawned ones, or a killed spawned child's channel
    // would not reach end of file while the forked one lives.
    let forker = std::thread::spawn(|| {
        (0..12)
            .map(|_| fork(sleeps, &SpawnOptions::new()).unwrap())
            .collect::<Vec<_>>()
    });
    let mut slow = Vec::new();
    for _ in 0..12 {
        let s = spawn(sleeps, b"", &SpawnOptions::new()).unwrap();
        let (_tx, rx) = s.channel.split();
        slow.push((s.child, rx));
    }
    let forked = forker.join().unwrap();
    for (child, mut rx) in slow {
        child.kill().unwrap();
        let mut buf = Vec::new();
        let r = rx.recv_into(&mut buf, soon());
        assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    }
    assert!(forked.iter().all(|f| running(f.child.pid())));
}

/// Installs a seccomp filter on this thread (inherited by threads and children created
/// after) under which `prctl(PR_SET_PDEATHSIG, ...)` fails with EPERM.
fn forbid_pdeathsig() {
    let nr_offset = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    let arg0_offset = std::mem::offset_of!(libc::seccomp_data, args) as u32;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut filter = [
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, nr_offset),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_prctl as u32,
            0,
            3,
        ),
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, arg0_offset),
        jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::PR_SET_PDEATHSIG as u32,
            0,
            1,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `program` points to a valid filter for the call's duration.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ),
            0
        );
    }
}

/// In a middle process: forks with `PR_SET_PDEATHSIG` forbidden, so the forked child fails
/// its set-up and dies before it is ready; reports what `fork` returned.
fn fork_under_seccomp(mut start: ChildStart) -> i32 {
    forbid_pdeathsig();
    let t = Instant::now();
    let report = match fork(|_| 0, &SpawnOptions::new()) {
        Err(SpawnError::ChildExited { status, .. }) => {
            format!("exited {status} after {:?}", t.elapsed())
        }
        Err(e) => format!("other error: {e}"),
        Ok(_) => "started".into(),
    };
    start.channel.send(report.as_bytes(), None).unwrap();
    0
}

#[test]
fn a_forked_child_that_dies_before_it_is_ready_gives_its_exit_status() {
    let mut middle = spawn(fork_under_seccomp, b"", &SpawnOptions::new()).unwrap();
    let report = String::from_utf8(recv(&mut middle.channel)).unwrap();
    eprintln!("fork under seccomp: {report}");
    assert!(
        report.starts_with(&format!(
            "exited {}",
            ExitStatus::Code(pool_ipc::EXIT_BOOTSTRAP_FAILED)
        )),
        "{report}"
    );
    assert_eq!(
        middle.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(0))
    );
}

/// In a middle process: forks a sleeping child and starts two through the forkserver,
/// reports their pids (and the forkserver's), then sleeps.
fn middle_with_forked_children(mut start: ChildStart) -> i32 {
    let forked = fork(sleeps, &SpawnOptions::new()).unwrap();
    let served: Vec<_> = (0..2)
        .map(|_| spawn(sleeps, b"", &forkserver()).unwrap())
        .collect();
    let forkserver = parent_of(served[0].child.pid());
    let mut pids = vec![forked.child.pid(), forkserver];
    pids.extend(served.iter().map(|s| s.child.pid()));
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    start.channel.send(pids.join(",").as_bytes(), None).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop((forked, served));
    0
}

#[test]
fn forked_children_and_the_forkserver_die_with_their_parent() {
    let mut middle = spawn(middle_with_forked_children, b"", &SpawnOptions::new()).unwrap();
    let pids: Vec<u32> = String::from_utf8(recv(&mut middle.channel))
        .unwrap()
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 4);
    assert_ne!(
        pids[1],
        middle.child.pid(),
        "the forkserver is not the middle"
    );
    assert!(pids.iter().all(|p| running(*p)));
    let t = Instant::now();
    middle.child.kill().unwrap();
    assert_eq!(
        middle.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Signal(libc::SIGKILL))
    );
    assert!(all_gone(&pids), "orphans left: {pids:?}");
    eprintln!(
        "forked child, forkserver and its children gone {:?} after their parent was killed",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------------------
// forkserver
// ---------------------------------------------------------------------------------------

fn exits_with_payload(start: ChildStart) -> i32 {
    i32::from(start.payload[0])
}

fn aborts(_: ChildStart) -> i32 {
    std::process::abort();
}

fn payload_and_name(mut start: ChildStart) -> i32 {
    let reply = format!("{}:{}", start.name, String::from_utf8_lossy(&start.payload));
    start.channel.send(reply.as_bytes(), None).unwrap();
    7
}

#[test]
fn the_forkserver_starts_many_children_and_relays_their_exit_statuses() {
    let mut times = Vec::new();
    let mut children = Vec::new();
    let mut killed = spawn(sleeps, b"", &forkserver()).unwrap();
    let me = std::process::id();
    let server = parent_of(killed.child.pid());
    assert_ne!(server, me, "a forkserver child is not ours");
    for i in 0..24u8 {
        let t = Instant::now();
        let s = spawn(exits_with_payload, &[i], &forkserver()).unwrap();
        times.push(t.elapsed());
        children.push((i, s));
    }
    for (i, mut s) in children {
        assert_eq!(
            s.child.wait_timeout(GENEROUS).unwrap(),
            Some(ExitStatus::Code(i32::from(i)))
        );
        // Waiting again gives the same answer.
        assert_eq!(
            s.child.try_wait().unwrap(),
            Some(ExitStatus::Code(i32::from(i)))
        );
    }
    let first = times[0];
    let later = &mut times[1..];
    later.sort();
    eprintln!(
        "forkserver start: first (may include starting the forkserver) {:?}, then median {:?} (debug build)",
        first,
        later[later.len() / 2]
    );

    let mut aborted = spawn(aborts, b"", &forkserver()).unwrap();
    assert_eq!(
        aborted.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Signal(libc::SIGABRT))
    );
    assert_eq!(killed.child.try_wait().unwrap(), None);
    killed.child.kill().unwrap();
    assert_eq!(
        killed.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Signal(libc::SIGKILL))
    );
    let mut terminated = spawn(sleeps, b"", &forkserver()).unwrap();
    assert_eq!(
        terminated.child.terminate(GENEROUS).unwrap(),
        ExitStatus::Signal(libc::SIGTERM)
    );
}

#[test]
fn a_forkserver_child_gets_its_payload_name_and_channel() {
    let options = forkserver().name("served");
    let mut s = spawn(payload_and_name, b"payload", &options).unwrap();
    assert_eq!(recv(&mut s.channel), b"served:payload");
    assert_eq!(s.child.wait().unwrap(), ExitStatus::Code(7));
}

#[test]
fn a_forkserver_child_inherits_the_descriptors_it_is_given() {
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    fn write_to_inherited(start: ChildStart) -> i32 {
        let mut stream =
            std::os::unix::net::UnixStream::from(start.inherited.into_iter().next().unwrap());
        std::io::Write::write_all(&mut stream, b"inherited").unwrap();
        0
    }
    let options = forkserver().inherit(vec![theirs.into()]);
    let mut s = spawn(write_to_inherited, b"", &options).unwrap();
    drop(options);
    assert_eq!(s.child.wait().unwrap(), ExitStatus::Code(0));
    assert_eq!(read_some(&mut ours), "inherited");
}

#[test]
fn forkserver_children_do_not_hold_their_siblings_channels() {
    let a = spawn(sleeps, b"", &forkserver()).unwrap();
    let b = spawn(sleeps, b"", &forkserver()).unwrap();
    assert_eq!(parent_of(a.child.pid()), parent_of(b.child.pid()));
    killed_child_disconnects_while_its_sibling_lives(a, &b, "forkserver child");
    // Only stdio and its own channel (one socket, shared by its halves); its ready pipe is
    // closed, and nothing of the forkserver's or its siblings' is left.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", b.child.pid()))
        .unwrap()
        .count();
    assert_eq!(fds, 4, "stdin, stdout, stderr and its channel");
}

#[test]
fn a_forkserver_child_over_shared_memory_echoes_and_its_death_is_noticed() {
    let options = forkserver().transport(TransportKind::Shm);
    let mut s = spawn(echo, b"", &options).unwrap();
    for msg in [&b""[..], b"x", &vec![9u8; 3 << 20]] {
        s.channel.send(msg, soon()).unwrap();
        assert_eq!(recv(&mut s.channel), msg);
    }
    let (_tx, mut rx) = s.channel.split();
    let waiter = std::thread::spawn(move || {
        let mut buf = Vec::new();
        rx.recv_into(&mut buf, soon())
    });
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    s.child.kill().unwrap();
    let r = waiter.join().unwrap();
    // The watcher polls the pidfd of a process that is not our child.
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    eprintln!(
        "shm peer death of a forkserver child noticed after {:?}",
        t.elapsed()
    );
}

#[test]
fn the_forkserver_refuses_another_program() {
    let options = forkserver().program("/bin/true", vec![]);
    let err = spawn(sleeps, b"", &options).unwrap_err();
    assert!(matches!(err, SpawnError::Io(_)), "{err}");
    let err = fork(|_| 0, &SpawnOptions::new().program("/bin/true", vec![])).unwrap_err();
    assert!(matches!(err, SpawnError::Io(_)), "{err}");
}

/// The state letter of thread `tid` of this process.
fn thread_state(tid: i32) -> char {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten()
        .unwrap_or('?')
}

/// In a middle process (its own forkserver): a stopped forkserver makes a start time out;
/// one killed while a start is in flight fails it with `ForkserverDied`, and its children
/// are reported killed; the next start starts a new forkserver.
fn forkserver_trouble(mut start: ChildStart) -> i32 {
    let mut report = Vec::new();
    let mut old = spawn(sleeps, b"", &forkserver()).unwrap();
    let server = parent_of(old.child.pid());

    // Stopped: a start times out (typed), then works again once it continues.
    signal(server, libc::SIGSTOP);
    let quick = forkserver().handshake_timeout(Duration::from_millis(300));
    match spawn(sleeps, b"", &quick) {
        Err(SpawnError::Timeout { pid, .. }) if pid == server => report.push("timeout".into()),
        other => report.push(format!("stopped: {:?}", other.map(|s| s.child.pid()))),
    }
    signal(server, libc::SIGCONT);
    let again = spawn(exits_with_payload, &[3], &forkserver()).unwrap();
    let mut again_child = again.child;
    report.push(format!("again {}", again_child.wait().unwrap()));

    // Killed with a start in flight.
    signal(server, libc::SIGSTOP);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let requester = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        spawn(sleeps, b"", &forkserver()).map(|s| parent_of(s.child.pid()))
    });
    let tid = tid_rx.recv().unwrap();
    // Blocked waiting for the answer (it sent its request first; nothing else blocks).
    let t = Instant::now();
    while thread_state(tid) != 'S' && t.elapsed() < GENEROUS {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    signal(server, libc::SIGKILL);
    match requester.join().unwrap() {
        Err(SpawnError::ForkserverDied { pid, status }) if pid == server => {
            report.push(format!("died {status:?}"))
        }
        // Only if the kill came before the request was sent: then a new forkserver served it.
        Ok(new) if new != server => report.push("died Some(Signal(9))".into()),
        other => report.push(format!("in flight: {other:?}")),
    }
    // Its child was killed with it, and says so.
    report.push(format!(
        "old child {:?}",
        old.child.wait_timeout(GENEROUS).unwrap()
    ));
    let new = spawn(sleeps, b"", &forkserver()).unwrap();
    let new_server = parent_of(new.child.pid());
    let mut new_child = new.child;
    new_child.kill().unwrap();
    report.push(format!(
        "restarted {} {}",
        new_server != server,
        new_child.wait().unwrap()
    ));
    start
        .channel
        .send(report.join("; ").as_bytes(), None)
        .unwrap();
    0
}

#[test]
fn a_stopped_or_killed_forkserver_fails_starts_with_typed_errors_and_is_restarted() {
    let mut middle = spawn(forkserver_trouble, b"", &SpawnOptions::new()).unwrap();
    let mut buf = Vec::new();
    middle
        .channel
        .recv_into(&mut buf, Some(Instant::now() + Duration::from_secs(60)))
        .unwrap();
    let report = String::from_utf8(buf).unwrap();
    eprintln!("forkserver trouble: {report}");
    assert_eq!(
        report,
        "timeout; again exit code 3; died Some(Signal(9)); old child Some(Signal(9)); restarted true killed by signal 9"
    );
    assert_eq!(
        middle.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(0))
    );
}

#[test]
fn fork_and_forkserver_children_keep_their_raw_descriptor_numbers_private() {
    // A forked child's inherited descriptors are duplicates it owns.
    let file = std::fs::File::open("/dev/null").unwrap();
    let parent_fd = file.as_raw_fd();
    let options = SpawnOptions::new().inherit(vec![file.into()]);
    let mut forked = fork(
        move |mut start| {
            let fd = start.inherited[0].as_raw_fd();
            start
                .channel
                .send(format!("{}", fd != parent_fd).as_bytes(), None)
                .unwrap();
            0
        },
        &options,
    )
    .unwrap();
    assert_eq!(recv(&mut forked.channel), b"true");
    assert_eq!(forked.child.wait().unwrap(), ExitStatus::Code(0));
}
