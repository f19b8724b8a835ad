//! Children die with their parent, and nothing is left as a zombie.
//!
//! Both tests run their scenario inside a middle process started from this test binary, so
//! that what they check (orphans, zombies) is about a process whose life the test controls.

#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use pool_ipc::{Child, ChildStart, ExitStatus, SpawnOptions, spawn};

const GENEROUS: Duration = Duration::from_secs(10);

fn sleeps(_: ChildStart) -> i32 {
    std::thread::sleep(Duration::from_secs(600));
    0
}

fn exits_at_once(_: ChildStart) -> i32 {
    0
}

/// Whether `pid` is a running process (a zombie or a vanished pid is not).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Children of this process that are zombies.
fn my_zombies() -> usize {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str())
        })
        .count()
}

/// Starts three sleeping children from a short-lived thread (which must not matter), sends
/// their pids to the test, and sleeps.
fn middle_with_children(mut start: ChildStart) -> i32 {
    let children: Vec<Child> = std::thread::spawn(|| {
        (0..3)
            .map(|_| spawn(sleeps, b"", &SpawnOptions::new()).unwrap().child)
            .collect()
    })
    .join()
    .unwrap();
    let pids: Vec<String> = children.iter().map(|c| c.pid().to_string()).collect();
    start.channel.send(pids.join(",").as_bytes(), None).unwrap();
    std::thread::sleep(Duration::from_secs(600));
    drop(children);
    0
}

#[test]
fn children_die_when_their_parent_is_killed() {
    let mut middle = spawn(middle_with_children, b"", &SpawnOptions::new()).unwrap();
    let mut buf = Vec::new();
    middle
        .channel
        .recv_into(&mut buf, Some(Instant::now() + GENEROUS))
        .unwrap();
    let pids: Vec<u32> = String::from_utf8(buf)
        .unwrap()
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3);
    // Their spawning thread has exited: they must still be alive (PDEATHSIG is per thread).
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        pids.iter().all(|p| running(*p)),
        "children died with their spawning thread"
    );
    let t = Instant::now();
    middle.child.kill().unwrap();
    assert_eq!(
        middle.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Signal(9))
    );
    while pids.iter().any(|p| running(*p)) && t.elapsed() < GENEROUS {
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "grandchildren gone {:?} after their parent was killed",
        t.elapsed()
    );
    assert!(pids.iter().all(|p| !running(*p)), "orphans left: {pids:?}");
}

/// Runs many spawn/kill and spawn/exit cycles, then reports how many zombie children it has
/// once the reaper had a moment.
fn churn(mut start: ChildStart) -> i32 {
    for i in 0..40 {
        let spawned = spawn(
            if i % 2 == 0 { sleeps } else { exits_at_once },
            b"",
            &SpawnOptions::new(),
        )
        .unwrap();
        if i % 4 == 1 {
            let mut child = spawned.child;
            child.wait().unwrap();
        } else {
            // Dropped while running (or just exited): killed and handed to the reaper.
            drop(spawned);
        }
    }
    let t = Instant::now();
    let mut zombies = my_zombies();
    while zombies > 0 && t.elapsed() < GENEROUS {
        std::thread::sleep(Duration::from_millis(10));
        zombies = my_zombies();
    }
    start
        .channel
        .send(format!("{zombies} {:?}", t.elapsed()).as_bytes(), None)
        .unwrap();
    0
}

#[test]
fn spawn_and_kill_cycles_leave_no_zombies() {
    let mut middle = spawn(churn, b"", &SpawnOptions::new()).unwrap();
    let mut buf = Vec::new();
    middle
        .channel
        .recv_into(&mut buf, Some(Instant::now() + Duration::from_secs(60)))
        .unwrap();
    let report = String::from_utf8(buf).unwrap();
    eprintln!("zombies after 40 cycles, and time to reach that: {report}");
    assert!(report.starts_with("0 "), "zombie children left: {report}");
    assert_eq!(
        middle.child.wait_timeout(GENEROUS).unwrap(),
        Some(ExitStatus::Code(0))
    );
}
