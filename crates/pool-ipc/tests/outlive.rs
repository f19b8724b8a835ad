//! `SpawnOptions::die_with_parent(false)` and `os::program_root`: what pool-api's
//! shared-memory tracker stands on. (That such a child really outlives a SIGKILLed parent is
//! shown by pool-api's `tests/shm_tracking.rs`, whose attaching child does.)

use pool_ipc::{ChildStart, ExitStatus, SpawnOptions, StartMethod, fork, spawn};

/// Sends back the program root's pid and start time as the child sees them.
fn report_root(mut start: ChildStart) -> i32 {
    let root = pool_ipc::os::program_root();
    let mut msg = root.pid.to_le_bytes().to_vec();
    msg.extend_from_slice(&root.start.to_le_bytes());
    i32::from(start.channel.send(&msg, None).is_err())
}

#[test]
fn a_spawned_child_inherits_the_program_root_detached_or_not() {
    let root = pool_ipc::os::program_root();
    assert_eq!(root.pid, std::process::id());
    assert!(root.is_alive());
    for (method, die) in [
        (StartMethod::Spawn, true),
        (StartMethod::Spawn, false),
        (StartMethod::Forkserver, true),
    ] {
        let options = SpawnOptions::new()
            .start_method(method)
            .die_with_parent(die);
        let mut spawned = spawn(report_root, b"", &options).unwrap();
        let mut got = Vec::new();
        spawned.channel.recv_into(&mut got, None).unwrap();
        assert_eq!(got[..4], root.pid.to_le_bytes(), "{method:?} {die}");
        assert_eq!(got[4..], root.start.to_le_bytes(), "{method:?} {die}");
        assert_eq!(spawned.child.wait().unwrap(), ExitStatus::Code(0));
    }
}

#[test]
fn only_the_spawn_start_method_lets_a_child_outlive_its_parent() {
    let options = SpawnOptions::new()
        .start_method(StartMethod::Forkserver)
        .die_with_parent(false);
    let refused = spawn(report_root, b"", &options).unwrap_err();
    assert!(refused.to_string().contains("die_with_parent"), "{refused}");
    let refused = fork(|_| 0, &SpawnOptions::new().die_with_parent(false)).unwrap_err();
    assert!(refused.to_string().contains("die_with_parent"), "{refused}");
}
