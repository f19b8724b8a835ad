//! `Bytes`: binary data that crosses to workers as one block.
//!
//! serde sees a `Vec<u8>` as a sequence of numbers and encodes it one byte at a time; this
//! wrapper tells it the data is bytes, which the wire format copies in one `memcpy`. A pool
//! task whose argument or result *is* a `Vec<u8>` needs no wrapper: the pool recognises the
//! type and copies it in one block too (the bytes on the wire are the same). `Bytes` is for
//! binary data *inside* other values (a field of a struct, an element of a tuple), and for
//! `Process` arguments and `Pipe` messages, which serde encodes as it is told.

use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Binary data, encoded as one block rather than as a sequence of numbers.
///
/// ```
/// use pool_api::{Bytes, Pool};
///
/// fn checksum(data: Bytes) -> u64 {
///     data.iter().map(|b| u64::from(*b)).sum()
/// }
///
/// let pool = Pool::new(1)?;
/// assert_eq!(pool.apply(checksum, Bytes::from(vec![1u8; 1 << 20]))?, 1 << 20);
/// # Ok::<(), pool_api::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Bytes {
        Bytes(v)
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Vec<u8> {
        b.0
    }
}

impl Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
        struct BytesVisitor;

        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Bytes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                // Formats without a bytes type send a sequence; its claimed size is not trusted
                // for the allocation.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(Bytes(out))
            }
        }

        deserializer.deserialize_byte_buf(BytesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_as_one_block() {
        let data = Bytes(vec![1, 2, 3, 255]);
        let encoded = postcard::to_stdvec(&data).unwrap();
        assert_eq!(encoded, [4, 1, 2, 3, 255]);
        assert_eq!(postcard::from_bytes::<Bytes>(&encoded).unwrap(), data);
    }
}
