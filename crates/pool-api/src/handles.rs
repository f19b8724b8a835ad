//! How handles (a pipe end, a lock, a queue) travel to a child inside its arguments.
//!
//! A handle is a serde value, so it can sit anywhere in a `Process`'s arguments, as a Python
//! `Queue` sits in `args=(q,)`. What makes it work is a descriptor that must reach the child
//! too. While pool encodes arguments for a child, a thread-local *sink* is active: a handle
//! serializes by duplicating its descriptor into the sink and writing the descriptor's index.
//! The child inherits the collected descriptors, and while it decodes its arguments a
//! thread-local *source* hands each handle its descriptor back by index.
//!
//! Serializing a handle any other way (to JSON, say) finds no sink and fails with a clear
//! error rather than writing a number that means nothing elsewhere. This is the trick
//! ipc-channel plays with its own channels; doing it here keeps that dependency and its
//! unchecked receive path out, and works for any descriptor.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

thread_local! {
    static SINK: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static SOURCE: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Encodes `value`, collecting the descriptors of the handles inside it (tests: chunks are
/// encoded by `pool::encode_chunk`, after their layout tag).
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
    encode_into(value, None, &[])
}

/// [`encode`], after `prefix`, into `buffer` (emptied) if one is given.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buffer: Option<Vec<u8>>,
    prefix: &[u8],
) -> Result<(Vec<u8>, Vec<OwnedFd>), Error> {
    let mut bytes = match buffer {
        // Most likely the buffer of a chunk like this one: as large as needed already.
        Some(mut buffer) => {
            buffer.clear();
            buffer
        }
        // Measured first so that a large value is written once, not copied as its buffer
        // grows. A value holding handles cannot be measured without the sink: it starts small.
        None => Vec::with_capacity(
            prefix.len() + postcard::experimental::serialized_size(value).unwrap_or(0),
        ),
    };
    bytes.extend_from_slice(prefix);
    let sink = Armed::sink();
    let encoded = value.serialize(&mut postcard::Serializer {
        output: crate::task::Appender(&mut bytes),
    });
    let fds = sink.disarm();
    encoded.map_err(crate::error::codec("encoding a value"))?;
    Ok((bytes, fds))
}

/// The sink, armed for one encoding. Dropped without [`Armed::disarm`] (a `Serialize` impl
/// panicked), it disarms anyway and closes what it collected, so that no later serialization
/// on this thread meets a stale sink.
struct Armed;

impl Armed {
    fn sink() -> Armed {
        SINK.with(|sink| *sink.borrow_mut() = Some(Vec::new()));
        Armed
    }

    fn disarm(self) -> Vec<OwnedFd> {
        SINK.with(|sink| sink.borrow_mut().take())
            .unwrap_or_default()
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        SINK.with(|sink| sink.borrow_mut().take());
    }
}

/// Runs `f` (which decodes) with `fds` available to the handles it meets.
pub(crate) fn with_descriptors<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    SOURCE.with(|source| *source.borrow_mut() = Some(fds.into_iter().map(Some).collect()));
    let out = f();
    SOURCE.with(|source| source.borrow_mut().take());
    out
}

/// Decodes `bytes` with `fds` available to the handles inside.
#[cfg(test)]
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, Error> {
    with_descriptors(fds, || {
        Ok(postcard::from_bytes(bytes).map_err(crate::error::codec("decoding a value"))?)
    })
}

/// Serializes a handle's descriptor (see the module documentation).
pub(crate) fn serialize_fd<S: Serializer>(
    fd: BorrowedFd<'_>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let index = SINK.with(|sink| -> Result<u32, String> {
        let mut sink = sink.borrow_mut();
        let sink = sink.as_mut().ok_or_else(|| {
            "a pool handle (Pipe end, Lock, Queue, ...) can only be serialized by pool, as an argument of a child process"
                .to_owned()
        })?;
        sink.push(fd.try_clone_to_owned().map_err(|e| format!("cannot duplicate a handle's descriptor: {e}"))?);
        Ok((sink.len() - 1) as u32)
    });
    match index {
        Ok(index) => serializer.serialize_u32(index),
        Err(msg) => Err(S::Error::custom(msg)),
    }
}

/// Deserializes a handle's descriptor.
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(deserializer)? as usize;
    SOURCE.with(|source| {
        let mut source = source.borrow_mut();
        let fds = source
            .as_mut()
            .ok_or_else(|| D::Error::custom("a pool handle can only be deserialized by pool"))?;
        fds.get_mut(index).and_then(Option::take).ok_or_else(|| {
            D::Error::custom(format!(
                "handle descriptor {index} is missing or used twice"
            ))
        })
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    struct Handle(OwnedFd);

    impl Serialize for Handle {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize_fd(self.0.as_fd(), s)
        }
    }

    impl<'de> Deserialize<'de> for Handle {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Handle, D::Error> {
            deserialize_fd(d).map(Handle)
        }
    }

    fn handle() -> Handle {
        Handle(std::fs::File::open("/dev/null").unwrap().into())
    }

    struct Panics;

    impl Serialize for Panics {
        fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            panic!("a Serialize impl that panics")
        }
    }

    #[test]
    fn a_panic_while_encoding_leaves_no_sink_behind() {
        let panicked = std::panic::catch_unwind(|| encode(&(handle(), Panics))).is_err();
        assert!(panicked);
        // Outside an encoding, a handle still refuses to serialize.
        assert!(postcard::to_stdvec(&handle()).is_err());
    }

    #[test]
    fn handles_round_trip_with_their_descriptors() {
        let (bytes, fds) = encode(&(1u8, handle(), "x", handle())).unwrap();
        assert_eq!(fds.len(), 2);
        let (n, _a, s, _b): (u8, Handle, String, Handle) = decode(&bytes, fds).unwrap();
        assert_eq!((n, s.as_str()), (1, "x"));
    }

    #[test]
    fn a_handle_outside_pool_is_a_clear_error() {
        let err = postcard::to_stdvec(&handle()).unwrap_err();
        let _ = err;
        let (bytes, _) = encode(&handle()).unwrap();
        assert!(postcard::from_bytes::<Handle>(&bytes).is_err());
        assert!(
            decode::<Handle>(&bytes, Vec::new()).is_err(),
            "a missing descriptor"
        );
    }
}
