//! Interoperation with other IPC crates, each behind a cargo feature.
//!
//! # ipc-channel (feature `ipc-channel`)
//!
//! A program already built on [ipc-channel](https://docs.rs/ipc-channel) (servo-style) can
//! hand its channels to pool's children: wrap an endpoint in an [`IpcArg`] and pass it
//! anywhere in the arguments of [`Process::new`](crate::Process::new), of a
//! [`Pool`](crate::Pool) task or of a pool's
//! [`initializer`](crate::PoolBuilder::initializer); the child takes it out with
//! [`IpcArg::into_inner`]. Every endpoint ipc-channel has can travel: [`IpcSender`],
//! [`IpcReceiver`], [`IpcBytesSender`], [`IpcBytesReceiver`], [`IpcSharedMemory`] and the
//! opaque sender and receiver (see [`IpcEndpoint`]).
//!
//! ```
//! use ipc_channel::ipc::{self, IpcSender};
//! use pool_api::Process;
//! use pool_api::interop::IpcArg;
//!
//! fn child(tx: IpcArg<IpcSender<String>>) {
//!     tx.into_inner().send("hello from the child".to_owned()).unwrap();
//! }
//!
//! let (tx, rx) = ipc::channel::<String>().unwrap();
//! let child = Process::new(child, IpcArg::new(tx))?.start()?;
//! assert_eq!(rx.recv().unwrap(), "hello from the child");
//! child.join()?;
//! # Ok::<(), pool_api::Error>(())
//! ```
//!
//! **What travels, and why this way.** ipc-channel's endpoints serialize only inside
//! ipc-channel's own `send`: their `Serialize` impl parks the OS handle in a thread-local of
//! ipc-channel, and their `Deserialize` impl takes it from another one that only
//! ipc-channel's receive fills (outside it, the index is out of bounds and it panics). Its
//! public API (0.23) has no way to get at an endpoint's descriptor, nor to build an endpoint
//! from one: no `AsFd`/`IntoRawFd`/`FromRawFd`, `from_fd` is private, the `Opaque*` types
//! and `platform::Os*` types hide their descriptor too. So pool cannot move the descriptor
//! through its own `SCM_RIGHTS` path, and copying ipc-channel's wire format to fake a message
//! would tie us to its private internals. The honest way is ipc-channel's own bootstrap,
//! which its README documents: an [`IpcOneShotServer`](::ipc_channel::ipc::IpcOneShotServer)
//! and its name.
//!
//! An [`IpcArg`] serializes as a pool handle: a socket of pool's own (a *token*) goes to the
//! child through the descriptor sink, exactly like a `Lock`'s descriptor, and a thread of
//! the parent keeps the endpoint and the other end of the token. Decoding in the child
//! opens an `IpcOneShotServer`, writes its name into the token, and waits (30 s at most) for
//! the parent's thread to connect to it and send the endpoint with ipc-channel's `send`. The
//! parent's thread serves every child that decodes the argument (a pool initializer's
//! arguments are decoded by every worker) and ends when the last copy of the token is
//! closed: the parent's copy goes when pool drops the encoded arguments (the `Process` is
//! started or dropped, the task ends), a child's when it has its endpoint or exits.
//!
//! Senders (`IpcSender`, `IpcBytesSender`, `OpaqueIpcSender`) and `IpcSharedMemory` are
//! copied: every process that decodes the argument gets its own clone, as with ipc-channel's
//! own `send` of a clone. A receiver (`IpcReceiver`, `IpcBytesReceiver`,
//! `OpaqueIpcReceiver`) is moved: encoding the argument takes it out of the [`IpcArg`] (so it
//! is gone from the parent even if the rest of the encoding fails), and only the first
//! process that decodes it gets it; a later one fails to decode the argument (a codec error:
//! postcard keeps no message of a custom serde error, so it does not say why, as for the
//! other handles).
//!
//! **What does not work.**
//!
//! - The `shm` transport: like every handle, an `IpcArg` in a task's arguments needs the
//!   `pipe` transport (the token is a descriptor); over shm the task is refused at
//!   submission with [`Error::InvalidArgument`](crate::Error::InvalidArgument). In a pool
//!   initializer's arguments it works with either transport, as other handles do.
//! - Serializing an `IpcArg` other than as pool's argument (JSON, postcard, or inside an
//!   ipc-channel message) fails with a clear error, as any pool handle does; send the plain
//!   endpoint through ipc-channel instead.
//! - A receiver goes to one process only: in a pool initializer's arguments, only the first
//!   worker gets it (the others fail to start). Pass receivers as task or `Process`
//!   arguments.
//! - Each endpoint in flight costs a thread in the parent (until its token is closed) and
//!   one in the child while it waits for the endpoint, and a round trip through a named
//!   socket: this is an interop path, not the hot path. A process *forked* (not spawned)
//!   while an argument is in flight holds a copy of its token, so the parent's thread (and
//!   a receiver it still holds) lives until that process exits.
//! - [`Process::fork`](crate::Process::fork) needs none of this: a forked child keeps the
//!   descriptors of the endpoints its closure captures.
//! - The feature needs Rust 1.86 (ipc-channel 0.23's own minimum), one more than the rest
//!   of the crate.
//!
//! [`IpcSender`]: ::ipc_channel::ipc::IpcSender
//! [`IpcReceiver`]: ::ipc_channel::ipc::IpcReceiver
//! [`IpcBytesSender`]: ::ipc_channel::ipc::IpcBytesSender
//! [`IpcBytesReceiver`]: ::ipc_channel::ipc::IpcBytesReceiver
//! [`IpcSharedMemory`]: ::ipc_channel::ipc::IpcSharedMemory

mod ipc_arg;

pub use self::ipc_arg::{IpcArg, IpcEndpoint};
