//! `Value`, `Array` and `SharedMemory` across real processes. Ported behaviours name their
//! source: CPython's `Lib/test/_test_multiprocessing.py` (`_TestValue`, `_TestArray`,
//! `_TestSharedMemory`) and seed 002's shared-counter-under-a-lock pattern.

use std::time::Duration;

use pool_api::{Array, Process, ProcessHandle, SharedMemory, ShmError, SyncError, Value};

fn add_many((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        counter.update(|v| v + 1).unwrap();
    }
}

fn add_many_with_guard((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        let mut held = counter.lock().unwrap();
        let v = held.get();
        held.set(v + 1);
    }
}

#[test]
fn processes_incrementing_a_shared_counter_get_exact_totals() {
    let counter = Value::new(0u64).unwrap();
    let ps: Vec<Process> = (0..4)
        .map(|i| {
            // Two calls, not one function chosen with `if`: that would be a fn pointer, which
            // cannot travel (a compile-time error says so).
            if i % 2 == 0 {
                Process::new(add_many, (counter.clone(), 500)).unwrap()
            } else {
                Process::new(add_many_with_guard, (counter.clone(), 500)).unwrap()
            }
        })
        .collect();
    let mut ps: Vec<ProcessHandle> = ps.into_iter().map(|p| p.start().unwrap()).collect();
    for p in &mut ps {
        p.wait().unwrap();
        assert_eq!(p.exitcode(), Some(0));
    }
    assert_eq!(counter.get().unwrap(), 2000);
}

fn fill_squares(arr: Array<i64>) {
    for i in 0..arr.len() {
        arr.set(i, (i * i) as i64).unwrap();
    }
}

#[test]
fn an_array_written_by_a_child_is_read_by_the_parent() {
    // CPython _TestArray.test_array.
    let arr = Array::new(&[0i64; 10]).unwrap();
    assert_eq!(arr.len(), 10);
    let mut p = Process::new(fill_squares, arr.clone())
        .unwrap()
        .start()
        .unwrap();
    p.wait().unwrap();
    assert_eq!(
        arr.to_vec().unwrap(),
        (0..10).map(|i| i * i).collect::<Vec<i64>>()
    );
    assert_eq!(arr.get(10).unwrap(), None);
    assert_eq!(
        arr.set(10, 1),
        Err(SyncError::InvalidArgument("index out of range"))
    );
    let mut held = arr.lock().unwrap();
    assert!(held.set_at(3, -1));
    assert!(!held.set_at(99, 0));
    assert_eq!(held.get_at(3), Some(-1));
    drop(held);
    let pairs = Array::new(&[[1.5f64, 2.5]; 3]).unwrap();
    assert_eq!(pairs.get(2).unwrap(), Some([1.5, 2.5]));
}

#[test]
fn raw_values_have_no_lock() {
    // CPython _TestValue.test_rawvalue / test_getobj_getlock.
    let raw = Value::raw(7i32).unwrap();
    raw.set(8).unwrap();
    assert_eq!(raw.get().unwrap(), 8);
    assert!(matches!(raw.lock(), Err(SyncError::InvalidArgument(_))));
    let raw_arr = Array::raw(&[1u8, 2, 3]).unwrap();
    assert!(raw_arr.lock().is_err());
    assert_eq!(raw_arr.to_vec().unwrap(), [1, 2, 3]);
}

fn write_hello(shm: SharedMemory) {
    shm.write(0, b"hello from the child").unwrap();
}

fn attach_and_write(name: String) {
    let shm = SharedMemory::attach(&name).unwrap();
    shm.write(0, b"by name").unwrap();
}

fn create_named_and_hang(name: String) {
    let _shm = SharedMemory::create_named(&name, 4096).unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

/// What `/dev/shm` holds, less the segments the named-segment test creates meanwhile (tests
/// run in parallel).
fn dev_shm_listing() -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    names.retain(|n| !n.to_string_lossy().starts_with("pool-test-"));
    names.sort();
    names
}

fn dev_shm_has(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

#[test]
fn anonymous_shared_memory_travels_to_a_child_and_leaves_nothing_in_dev_shm() {
    // CPython _TestSharedMemory.test_shared_memory_basics (anonymous here by default).
    assert!(matches!(
        SharedMemory::new(0),
        Err(ShmError::InvalidArgument(_))
    ));
    let before = dev_shm_listing();
    let shm = SharedMemory::new(64).unwrap();
    assert_eq!((shm.size(), shm.name()), (64, None));
    let mut p = Process::new(write_hello, shm.clone_handle())
        .unwrap()
        .start()
        .unwrap();
    p.wait().unwrap();
    let mut buf = [0u8; 20];
    shm.read(0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello from the child");
    assert!(matches!(
        shm.read(60, &mut [0u8; 8]),
        Err(ShmError::OutOfRange {
            start: 60,
            end: 68,
            size: 64
        })
    ));
    let after = dev_shm_listing();
    assert_eq!(before, after);
}

#[test]
fn named_segments_attach_by_name_unlink_on_drop_and_can_be_cleaned_up() {
    let name = format!("pool-test-{}", std::process::id());
    assert!(matches!(
        SharedMemory::attach(&name),
        Err(ShmError::NotFound(_))
    ));
    let shm = SharedMemory::create_named(&name, 4096).unwrap();
    assert!(dev_shm_has(&name));
    assert!(matches!(
        SharedMemory::create_named(&name, 10),
        Err(ShmError::AlreadyExists(_))
    ));
    let mut p = Process::new(attach_and_write, name.clone())
        .unwrap()
        .start()
        .unwrap();
    p.wait().unwrap();
    assert_eq!(&shm.to_vec()[..7], b"by name");
    drop(shm);
    assert!(!dev_shm_has(&name), "the creator unlinks its segment");

    // A creator killed before it could unlink leaves the segment; unlink cleans it up.
    let orphan = format!("pool-test-orphan-{}", std::process::id());
    let mut creator = Process::new(create_named_and_hang, orphan.clone())
        .unwrap()
        .start()
        .unwrap();
    let t = std::time::Instant::now();
    while !dev_shm_has(&orphan) && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    creator.kill().unwrap();
    creator.wait().unwrap();
    assert!(dev_shm_has(&orphan), "a SIGKILLed creator cannot unlink");
    SharedMemory::unlink(&orphan).unwrap();
    assert!(!dev_shm_has(&orphan));
}
