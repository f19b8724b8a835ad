//! Named shared memory that does not outlive its program by accident (issue 21): the
//! program's tracker unlinks what it created and did not hand over once its whole process
//! tree has ended, also after SIGINT, SIGTERM or SIGKILL of its main process; handed-over
//! segments survive; a segment a live process of the program attached is left alone.
//!
//! Each *program* here is this test binary started again with `std::process::Command` (a
//! root of its own: a `Process` child would belong to the test's own program, which lives
//! on) and running one `helper` below, chosen by environment variables. Every wait has a
//! deadline (watchdogs, not performance claims).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pool_api::{Pool, Process, SharedMemory};
use pool_ipc::{ChildStart, SpawnOptions};

const MODE: &str = "POOL_SHM_TRACKING_MODE";
const NAME: &str = "POOL_SHM_TRACKING_NAME";
/// Watchdog for anything the tracker should do "soon" (it polls every 50 ms).
const DEADLINE: Duration = Duration::from_secs(20);

fn dev_shm_has(name: &str) -> bool {
    Path::new("/dev/shm").join(name).exists()
}

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "pool-track-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `cond` until it holds or the deadline passes; returns whether it held.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Listening tracker sockets of the program whose root is `pid` (from `/proc/net/unix`).
fn trackers_of(pid: u32) -> usize {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; Flags 00010000 = listening.
            fields.len() >= 8
                && fields[3] == "00010000"
                && fields[7].starts_with("@pool-shm-tracker.")
                && fields[7].split('.').nth(2) == Some(&pid.to_string())
        })
        .count()
}

/// A helper program running `mode` with `name`, its stdout piped; returns it once it printed
/// "ready", with the rest of that line.
fn start_helper(mode: &str, name: &str) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper", "--nocapture", "--test-threads=1"])
        .env(MODE, mode)
        .env(NAME, name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread, so that a helper that never says "ready" fails the test at the
    // deadline instead of hanging it. (Not to the end: the tracker holds stdout too.)
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may have printed "test helper ... " on the same line.
            if let Some((_, rest)) = line.split_once("@@ready") {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(rest) => (child, rest),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("helper {mode} never got ready");
        }
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill with a pid we spawned and have not reaped (so it cannot be reused).
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("helper did not end");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// What the helper programs run.

/// A pool task: creates a tracked segment in the worker and leaks the handle.
fn create_in_worker(name: String) {
    std::mem::forget(SharedMemory::create_named(&name, 4096).unwrap());
}

/// What `create_and_hang` writes into its segment once `create_named` has returned.
const REGISTERED: &[u8] = b"registered";

/// A `Process` target: creates a tracked segment, says so in it, and hangs.
fn create_and_hang(name: String) {
    let shm = SharedMemory::create_named(&name, 4096).unwrap();
    // The segment's name appears in /dev/shm before `create_named` registers it with the
    // tracker; a child killed in between leaks it (documented). The marker tells the test
    // that the registration is done.
    shm.write(0, REGISTERED).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

/// Whether the segment `name` holds `REGISTERED` (read through /dev/shm).
fn registered(name: &str) -> bool {
    std::fs::read(Path::new("/dev/shm").join(name)).is_ok_and(|bytes| bytes.starts_with(REGISTERED))
}

/// A child started with `die_with_parent(false)`, so that it outlives its program's main
/// process: attaches the segment by name, reports, and lives while the marker file exists.
fn attach_and_linger(mut start: ChildStart) -> i32 {
    let payload = String::from_utf8(start.payload.clone()).unwrap();
    let (name, marker) = payload.split_once('\n').unwrap();
    let shm = SharedMemory::attach(name).unwrap();
    start.channel.send(b"attached", None).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while Path::new(marker).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    shm.write(0, b"still here").unwrap();
    0
}

fn ready(rest: &str) {
    use std::io::Write;
    // The protocol with the test that started this helper, not a report.
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ready {rest}").unwrap();
    out.flush().unwrap();
}

fn hang() -> ! {
    std::thread::sleep(Duration::from_secs(600));
    panic!("nobody stopped the helper");
}

/// Not a test of its own: the body of the helper programs (returns at once otherwise).
#[test]
fn helper() {
    let (Ok(mode), Ok(name)) = (std::env::var(MODE), std::env::var(NAME)) else {
        return;
    };
    // A shell may start background jobs with SIGINT ignored; these helpers must die of it.
    // SAFETY: restoring a signal's default disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    match mode.as_str() {
        // Tracked segments made by the main process, a `Process` child and a pool worker;
        // then wait for a signal.
        "hang" => {
            let _main = SharedMemory::create_named(&format!("{name}-main"), 4096).unwrap();
            let pool = Pool::new(1).unwrap();
            pool.apply(create_in_worker, format!("{name}-worker"))
                .unwrap();
            let _child = Process::new(create_and_hang, format!("{name}-child"))
                .unwrap()
                .start()
                .unwrap();
            assert!(eventually(|| registered(&format!("{name}-child"))));
            ready("");
            hang();
        }
        // A tracked segment whose handle is leaked; a normal exit.
        "exit" => {
            std::mem::forget(SharedMemory::create_named(&name, 4096).unwrap());
            ready("");
        }
        // Handed-over segments (untracked, kept) and a tracked one; then wait for SIGKILL.
        "handed-over" => {
            let _untracked =
                SharedMemory::create_untracked(&format!("{name}-untracked"), 64).unwrap();
            let mut kept = SharedMemory::create_named(&format!("{name}-kept"), 64).unwrap();
            kept.keep();
            let _tracked = SharedMemory::create_named(&format!("{name}-tracked"), 64).unwrap();
            ready("");
            hang();
        }
        // A tracked segment attached by a process of this program that outlives its main
        // process; then wait for SIGKILL.
        "attached" => {
            let _shm = SharedMemory::create_named(&name, 4096).unwrap();
            let marker = format!("{}/{name}.marker", std::env::temp_dir().display());
            std::fs::write(&marker, b"").unwrap();
            let options = SpawnOptions::new().die_with_parent(false);
            let mut spawned = pool_ipc::spawn(
                attach_and_linger,
                format!("{name}\n{marker}").as_bytes(),
                &options,
            )
            .unwrap();
            let mut got = Vec::new();
            spawned.channel.recv_into(&mut got, None).unwrap();
            assert_eq!(got, b"attached");
            let pid = spawned.child.pid();
            spawned.child.disown();
            ready(&format!("{pid} {marker}"));
            hang();
        }
        // Many creations and unlinks: one tracker, one descriptor, nothing left.
        "many" => {
            let first = SharedMemory::create_named(&format!("{name}-first"), 64).unwrap();
            drop(first);
            let fds = pool_testkit::open_fds();
            let rounds = pool_testkit::scale(200, 5_000);
            for i in 0..rounds {
                let shm = SharedMemory::create_named(&format!("{name}-{i}"), 64).unwrap();
                if i % 2 == 0 {
                    drop(shm);
                } else {
                    SharedMemory::unlink(&format!("{name}-{i}")).unwrap();
                    drop(shm); // its unlink finds the name gone: not an error
                }
            }
            let leaked = pool_testkit::open_fds().saturating_sub(fds);
            let trackers = trackers_of(std::process::id());
            ready(&format!("{rounds} {leaked} {trackers}"));
        }
        other => panic!("unknown helper mode {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// The tests.

/// The three segments of a "hang" helper disappear after the helper dies of `sig`, and its
/// tracker exits.
fn stopped_by(sig: i32, tag: &str) {
    let name = unique(tag);
    let (mut helper, _) = start_helper("hang", &name);
    let pid = helper.id();
    let names = ["main", "worker", "child"].map(|who| format!("{name}-{who}"));
    for n in &names {
        assert!(dev_shm_has(n), "{n} exists while its program runs");
    }
    assert_eq!(trackers_of(pid), 1, "one tracker per program");
    signal(&helper, sig);
    let status = wait_with_deadline(&mut helper);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(sig));
    let t = Instant::now();
    for n in &names {
        assert!(
            eventually(|| !dev_shm_has(n)),
            "{n} unlinked after the program ended"
        );
    }
    assert!(eventually(|| trackers_of(pid) == 0), "the tracker exits");
    pool_testkit::report(
        &format!("chaos_shm_tracking_{tag}"),
        &[
            ("segments", 3),
            ("cleanup_ms", t.elapsed().as_millis() as u64),
        ],
    );
}

#[test]
fn chaos_shm_tracking_sigkill_of_the_main_process_unlinks_its_segments() {
    stopped_by(libc::SIGKILL, "sigkill");
}

#[test]
fn chaos_shm_tracking_sigterm_of_the_main_process_unlinks_its_segments() {
    stopped_by(libc::SIGTERM, "sigterm");
}

#[test]
fn chaos_shm_tracking_sigint_of_the_main_process_unlinks_its_segments() {
    stopped_by(libc::SIGINT, "sigint");
}

#[test]
fn a_normal_exit_without_unlink_cleans_up() {
    let name = unique("exit");
    let (mut helper, _) = start_helper("exit", &name);
    let pid = helper.id();
    assert!(wait_with_deadline(&mut helper).success());
    assert!(eventually(|| !dev_shm_has(&name)));
    assert!(eventually(|| trackers_of(pid) == 0));
}

#[test]
fn handed_over_segments_survive_their_program() {
    let name = unique("handed");
    let (mut helper, _) = start_helper("handed-over", &name);
    let pid = helper.id();
    helper.kill().unwrap();
    wait_with_deadline(&mut helper);
    // The tracker did its work (the tracked one is gone) and exited...
    assert!(eventually(|| !dev_shm_has(&format!("{name}-tracked"))));
    assert!(eventually(|| trackers_of(pid) == 0));
    // ...and left the handed-over ones alone.
    for kept in [format!("{name}-untracked"), format!("{name}-kept")] {
        assert!(dev_shm_has(&kept), "{kept} survives its program");
        SharedMemory::unlink(&kept).unwrap();
    }
}

#[test]
fn a_segment_attached_by_a_live_process_of_the_program_is_not_unlinked() {
    let name = unique("attached");
    let (mut helper, rest) = start_helper("attached", &name);
    let pid = helper.id();
    let (_attacher, marker) = rest.split_once(' ').unwrap();
    helper.kill().unwrap();
    wait_with_deadline(&mut helper);
    // The main process has ended, its attaching child lives on: many tracker polls later,
    // the segment is still there and the tracker still runs.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dev_shm_has(&name),
        "unlinked under a live process that attached it"
    );
    assert_eq!(trackers_of(pid), 1);
    // The child ends: now the program has ended.
    std::fs::remove_file(marker).unwrap();
    assert!(eventually(|| !dev_shm_has(&name)));
    assert!(eventually(|| trackers_of(pid) == 0));
}

#[test]
fn chaos_shm_tracking_many_segments_one_tracker_no_leaks() {
    let name = unique("many");
    let (mut helper, rest) = start_helper("many", &name);
    let pid = helper.id();
    let figures: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap()).collect();
    let [rounds, leaked_fds, trackers] = figures[..] else {
        panic!("bad report {rest}")
    };
    assert_eq!(
        leaked_fds, 0,
        "descriptors leaked by {rounds} create/unlink rounds"
    );
    assert_eq!(trackers, 1, "one tracker per program, not per segment");
    assert!(wait_with_deadline(&mut helper).success());
    assert!(
        eventually(|| trackers_of(pid) == 0),
        "no tracker left behind"
    );
    for i in 0..rounds {
        assert!(!dev_shm_has(&format!("{name}-{i}")));
    }
    pool_testkit::report(
        "chaos_shm_tracking_many_segments_one_tracker_no_leaks",
        &[
            ("segments", rounds),
            ("leaked_fds", leaked_fds),
            ("trackers", trackers),
        ],
    );
}
