//! ipc-channel's endpoints as arguments (feature `ipc-channel`), across real child processes:
//! `Process` children and pool workers started with the default (spawn) start method.

use std::sync::OnceLock;
use std::time::Duration;

use ipc_channel::ipc::{self, IpcBytesSender, IpcReceiver, IpcSender, IpcSharedMemory};
use pool_api::interop::IpcArg;
use pool_api::{Error, Pool, Process, StartMethod, TransportKind};

const GENEROUS: Duration = Duration::from_secs(20);

fn greet(tx: IpcArg<IpcSender<String>>) {
    let name = pool_api::current_process().name;
    tx.into_inner()
        .send(format!("hello from {name} (pid {})", std::process::id()))
        .unwrap();
}

#[test]
fn an_ipc_sender_reaches_a_process_child() {
    let (tx, rx) = ipc::channel::<String>().unwrap();
    let child = Process::new(greet, IpcArg::new(tx))
        .unwrap()
        .with_name("greeter")
        .start()
        .unwrap();
    let pid = child.pid();
    let greeting = rx.try_recv_timeout(GENEROUS).unwrap();
    assert_eq!(greeting, format!("hello from greeter (pid {pid})"));
    child.join().unwrap();
    // Every copy of the sender is gone (the child's, and the one the parent kept to hand
    // out, once the child exited): the receiver sees the channel closed.
    match rx.try_recv_timeout(GENEROUS) {
        Err(ipc_channel::TryRecvError::IpcError(ipc_channel::IpcError::Disconnected)) => {}
        other => panic!("expected the channel closed, got {other:?}"),
    }
}

#[test]
fn an_ipc_sender_reaches_a_forkserver_child() {
    let (tx, rx) = ipc::channel::<String>().unwrap();
    let child = Process::new(greet, IpcArg::new(tx))
        .unwrap()
        .with_name("forkserved")
        .start_method(StartMethod::Forkserver)
        .start()
        .unwrap();
    let pid = child.pid();
    let greeting = rx.try_recv_timeout(GENEROUS).unwrap();
    assert_eq!(greeting, format!("hello from forkserved (pid {pid})"));
    child.join().unwrap();
    // The forkserver kept no copy of the token: the parent's copy of the sender is gone too.
    assert!(matches!(
        rx.try_recv_timeout(GENEROUS),
        Err(ipc_channel::TryRecvError::IpcError(
            ipc_channel::IpcError::Disconnected
        ))
    ));
}

#[test]
fn a_forked_child_keeps_the_endpoints_it_captures() {
    // No IpcArg needed: a forked child is a copy of this process, descriptors included.
    let (tx, rx) = ipc::channel::<u32>().unwrap();
    let child = Process::fork(move || tx.send(std::process::id()).unwrap())
        .start()
        .unwrap();
    let pid = child.pid();
    assert_eq!(rx.try_recv_timeout(GENEROUS).unwrap(), pid);
    child.join().unwrap();
}

/// A pool task that receives its input through an ipc-channel receiver it was given.
fn sum_received(rx: IpcArg<IpcReceiver<Vec<u64>>>) -> (u32, u64) {
    let numbers = rx.into_inner().recv().unwrap();
    (std::process::id(), numbers.iter().sum())
}

#[test]
fn an_ipc_receiver_reaches_a_pool_worker() {
    let pool = Pool::builder()
        .processes(1)
        .transport(TransportKind::Pipe)
        .build()
        .unwrap();
    let (tx, rx) = ipc::channel::<Vec<u64>>().unwrap();
    let result = pool.apply_async(sum_received, IpcArg::new(rx)).unwrap();
    // Sent after the receiver left: the worker gets what is sent to it from now on.
    tx.send(vec![1, 2, 3, 4]).unwrap();
    let (pid, sum) = result.get_timeout(GENEROUS).unwrap();
    assert_eq!(sum, 10);
    assert_eq!(pool.worker_pids(), vec![pid]);
    assert_ne!(pid, std::process::id());
    // The worker dropped its receiver when the task ended: the channel is closed.
    let closed = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        tx.send(vec![0]).is_err()
    });
    assert!(closed, "the worker's receiver is still open");
    pool.close();
    pool.join().unwrap();
}

fn send_bytes((tx, n): (IpcArg<IpcBytesSender>, u8)) {
    let bytes: Vec<u8> = (0..n).collect();
    tx.into_inner().send(&bytes).unwrap();
}

#[test]
fn an_ipc_bytes_sender_reaches_a_process_child_and_pool_workers() {
    let (tx, rx) = ipc::bytes_channel().unwrap();
    let child = Process::new(send_bytes, (IpcArg::new(tx.clone()), 5))
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(rx.recv().unwrap(), vec![0, 1, 2, 3, 4]);
    child.join().unwrap();

    // Many tasks, each with its own copy of the sender, over two workers.
    let pool = Pool::new(2).unwrap();
    let items: Vec<_> = (1..=6).map(|n| (IpcArg::new(tx.clone()), n)).collect();
    pool.map(send_bytes, items).unwrap();
    let mut lengths: Vec<usize> = (0..6).map(|_| rx.recv().unwrap().len()).collect();
    lengths.sort_unstable();
    assert_eq!(lengths, vec![1, 2, 3, 4, 5, 6]);
    pool.close();
    pool.join().unwrap();
}

/// What the child sees in the shared memory: its length and sum.
fn read_shared(shm: IpcArg<IpcSharedMemory>) -> (usize, u64) {
    let shm = shm.into_inner();
    (shm.len(), shm.iter().map(|&b| u64::from(b)).sum())
}

#[test]
fn ipc_shared_memory_content_is_visible_in_the_child() {
    let bytes: Vec<u8> = (0..=255).cycle().take(1 << 20).collect();
    let expected = (bytes.len(), bytes.iter().map(|&b| u64::from(b)).sum());
    let shm = IpcSharedMemory::from_bytes(&bytes);
    let child = Process::new(read_shared, IpcArg::new(shm.clone()))
        .unwrap()
        .start()
        .unwrap();
    assert_eq!(child.join().unwrap(), expected);

    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.apply(read_shared, IpcArg::new(shm)).unwrap(), expected);
    pool.close();
    pool.join().unwrap();
}

fn never_runs(_: IpcArg<IpcSender<String>>) {}

#[test]
fn over_the_shm_transport_an_ipc_channel_argument_is_refused() {
    let pool = Pool::builder()
        .processes(1)
        .transport(TransportKind::Shm)
        .build()
        .unwrap();
    let (tx, _rx) = ipc::channel::<String>().unwrap();
    match pool.apply(never_runs, IpcArg::new(tx)) {
        Err(Error::InvalidArgument(message)) => {
            assert!(message.contains("pipe transport"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The pool still works for arguments without handles.
    assert_eq!(pool.apply(read_len, "four".to_owned()).unwrap(), 4);
    pool.close();
    pool.join().unwrap();
}

fn read_len(s: String) -> usize {
    s.len()
}

static REPORTS: OnceLock<IpcSender<u32>> = OnceLock::new();

fn keep_sender(tx: IpcArg<IpcSender<u32>>) {
    let _ = REPORTS.set(tx.into_inner());
}

fn report(x: u32) -> u32 {
    REPORTS.get().expect("the initializer ran").send(x).unwrap();
    x
}

#[test]
fn every_worker_gets_an_initializer_sender() {
    let (tx, rx) = ipc::channel::<u32>().unwrap();
    let pool = Pool::builder()
        .processes(2)
        .initializer(keep_sender, IpcArg::new(tx))
        .build()
        .unwrap();
    assert_eq!(
        pool.map(report, 0..20).unwrap(),
        (0..20).collect::<Vec<_>>()
    );
    let mut got: Vec<u32> = (0..20).map(|_| rx.recv().unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    pool.close();
    pool.join().unwrap();
}

#[test]
fn outside_pool_an_ipc_arg_does_not_serialize_and_keeps_its_receiver() {
    let (tx, rx) = ipc::channel::<String>().unwrap();
    let arg = IpcArg::new(rx);
    let err = serde_json::to_string(&arg).unwrap_err();
    assert!(
        err.to_string().contains("only be serialized by pool"),
        "{err}"
    );
    // Nothing was taken: the receiver still receives.
    tx.send("still here".to_owned()).unwrap();
    assert_eq!(arg.into_inner().recv().unwrap(), "still here");
}
