//! The fields of the entries in a pool's streams, and the parsing of Redis's replies.
//!
//! Anyone who can write to the Redis instance can write any entry into a pool's streams, so
//! everything read from Redis is untrusted: every reply is walked as a `redis::Value` with
//! its shape checked, every field is looked up by name, checked for presence, uniqueness and
//! length, and every number is parsed strictly. What does not fit becomes an
//! [`EntryError`]; nothing here indexes, unwraps or allocates from a length it was told.
//!
//! Numbers are written as decimal ASCII so that an entry reads naturally in `redis-cli`;
//! bytes (the call, the payload, an outcome) are stored as they are.

use std::fmt;

use redis::Value;

use crate::keys::Fingerprint;

/// The format version written into every entry as field `v`.
const VERSION: &[u8] = b"1";

/// The most field pairs an entry of ours has, with room to spare; a longer entry is refused
/// before its fields are looked at.
const MAX_FIELDS: usize = 16;

/// The longest consumer name or message kept from an outcome entry.
const MAX_TEXT: usize = 1024;

/// The id of a stream entry, `MILLISECONDS-SEQUENCE` as Redis assigns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// The milliseconds part.
    pub ms: u64,
    /// The sequence part.
    pub seq: u64,
}

impl EntryId {
    /// Parses `MS-SEQ` strictly.
    pub fn parse(text: &[u8]) -> Option<EntryId> {
        let dash = text.iter().position(|&b| b == b'-')?;
        Some(EntryId {
            ms: parse_u64(&text[..dash])?,
            seq: parse_u64(&text[dash + 1..])?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl redis::ToRedisArgs for EntryId {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

impl redis::ToSingleRedisArg for EntryId {}

/// What was wrong with an entry or a reply read from Redis.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The reply does not have the shape the command's documentation gives.
    #[error("a reply from Redis is not shaped as expected: {0}")]
    Shape(&'static str),
    /// A field the entry must have is absent.
    #[error("the entry has no field {0:?}")]
    Missing(&'static str),
    /// A field appears more than once.
    #[error("the entry has field {0:?} twice")]
    Duplicate(String),
    /// A field this format does not have.
    #[error("the entry has an unknown field {0:?}")]
    Unknown(String),
    /// A field's value is not acceptable.
    #[error("the entry's field {field:?} is invalid: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The entry was written in another format version.
    #[error("the entry's format version is {0:?}, not 1")]
    Version(String),
}

/// A chunk as a worker receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its id in the chunk stream.
    pub id: EntryId,
    /// The job it belongs to (the client's number).
    pub job: u64,
    /// Its index within the job.
    pub index: u32,
    /// The build that submitted it.
    pub fingerprint: Fingerprint,
    /// How many deliveries it may have: 1 means it never runs twice (a worker that dies
    /// running it fails it); more allow retries of idempotent work.
    pub tries: u32,
    /// How many times it has been delivered to a worker, this time included.
    pub deliveries: u32,
    /// What to run (opaque to this crate: e.g. a function's identity).
    pub call: Vec<u8>,
    /// Its arguments (opaque to this crate).
    pub payload: Vec<u8>,
}

/// How a chunk ended, as written into the results stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and the run step gave these bytes.
    Ok(Vec<u8>),
    /// It ran and the run step failed with these bytes (its error).
    Failed(Vec<u8>),
    /// The worker running it died (or its host vanished) and it may not run again
    /// (`tries` was 1).
    WorkerLost,
    /// It was delivered `deliveries` times, every worker it reached died, and its tries are
    /// used up: a chunk that kills its workers.
    Poisoned {
        /// How many times it was delivered.
        deliveries: u32,
    },
    /// Its entry could not be decoded (written by something else than this crate), so it
    /// was not run.
    Malformed(String),
}

/// A chunk's outcome as the client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The chunk's job.
    pub job: u64,
    /// The chunk's index.
    pub index: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// The consumer that wrote the outcome (`HOST/WORKER`, or a supervisor).
    pub consumer: String,
    /// How many times the chunk was delivered.
    pub deliveries: u32,
}

/// The fields of a chunk entry, in the order XADD writes them.
pub(crate) fn chunk_fields<'a>(
    fingerprint: &'a Fingerprint,
    job: &'a str,
    index: &'a str,
    tries: &'a str,
    call: &'a [u8],
    payload: &'a [u8],
) -> [(&'static str, &'a [u8]); 7] {
    [
        ("v", VERSION),
        ("fp", &fingerprint.0),
        ("job", job.as_bytes()),
        ("idx", index.as_bytes()),
        ("tries", tries.as_bytes()),
        ("call", call),
        ("data", payload),
    ]
}

/// A chunk entry's fields, decoded. `deliveries` is filled in by the caller, who knows it
/// from the pending list. The call and payload are moved out of `fields`, not copied (a
/// payload may be megabytes).
pub(crate) fn decode_chunk(id: EntryId, mut fields: FieldList) -> Result<Entry, Bad> {
    let f = Fields::new(&fields, &["v", "fp", "job", "idx", "tries", "call", "data"])?;
    // Job and index first: with them a malformed chunk can still get an outcome.
    let job = f.number("job")?;
    let index = f.number("idx")?;
    let at = Some((job, index));
    let rest = || -> Result<(Fingerprint, u32), EntryError> {
        let version = f.get("v")?;
        if version != VERSION {
            return Err(EntryError::Version(text(version)));
        }
        let fingerprint =
            Fingerprint(f.get("fp")?.try_into().map_err(|_| EntryError::Invalid {
                field: "fp",
                why: "not 32 bytes",
            })?);
        let tries = f.number("tries")?;
        if tries == 0 {
            return Err(EntryError::Invalid {
                field: "tries",
                why: "zero",
            });
        }
        f.get("call")?;
        f.get("data")?;
        Ok((fingerprint, tries))
    };
    let (fingerprint, tries) = rest().map_err(|error| Bad { at, error })?;
    // `call` and `data` are there (checked above) and once (`Fields::new`).
    let mut take = |name: &str| {
        fields
            .iter_mut()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    };
    Ok(Entry {
        id,
        job,
        index,
        fingerprint,
        tries,
        deliveries: 1,
        call: take("call"),
        payload: take("data"),
    })
}

/// A chunk entry that could not be decoded, with its job and index when those were readable.
#[derive(Debug)]
pub(crate) struct Bad {
    pub(crate) at: Option<(u64, u32)>,
    pub(crate) error: EntryError,
}

impl From<EntryError> for Bad {
    fn from(error: EntryError) -> Bad {
        Bad { at: None, error }
    }
}

/// The kind and data fields of an outcome.
pub(crate) fn outcome_parts(outcome: &Outcome) -> (&'static str, &[u8]) {
    match outcome {
        Outcome::Ok(data) => ("ok", data),
        Outcome::Failed(data) => ("err", data),
        Outcome::WorkerLost => ("lost", b""),
        Outcome::Poisoned { .. } => ("poisoned", b""),
        Outcome::Malformed(why) => ("malformed", why.as_bytes()),
    }
}

/// A result entry's fields, decoded.
///
/// Takes the fields by value: the data (a chunk's results, up to megabytes) is moved into the
/// outcome, not copied.
pub(crate) fn decode_result(mut fields: FieldList) -> Result<Completion, EntryError> {
    let f = Fields::new(&fields, &["v", "job", "idx", "kind", "by", "n", "data"])?;
    let version = f.get("v")?;
    if version != VERSION {
        return Err(EntryError::Version(text(version)));
    }
    let job = f.number("job")?;
    let index = f.number("idx")?;
    let deliveries = f.number("n")?;
    let consumer = f.text("by")?;
    f.get("data")?;
    enum Kind {
        Ok,
        Err,
        Lost,
        Poisoned,
        Malformed(String),
    }
    let kind = match f.get("kind")? {
        b"ok" => Kind::Ok,
        b"err" => Kind::Err,
        b"lost" => Kind::Lost,
        b"poisoned" => Kind::Poisoned,
        b"malformed" => Kind::Malformed(f.text("data")?),
        _ => {
            return Err(EntryError::Invalid {
                field: "kind",
                why: "not one of ok, err, lost, poisoned, malformed",
            });
        }
    };
    // `data` is there (checked above) and once (`Fields::new`).
    let mut take_data = || {
        fields
            .iter_mut()
            .find(|(n, _)| n.as_slice() == b"data")
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    };
    let outcome = match kind {
        Kind::Ok => Outcome::Ok(take_data()),
        Kind::Err => Outcome::Failed(take_data()),
        Kind::Lost => Outcome::WorkerLost,
        Kind::Poisoned => Outcome::Poisoned { deliveries },
        Kind::Malformed(why) => Outcome::Malformed(why),
    };
    Ok(Completion {
        job,
        index,
        outcome,
        consumer,
        deliveries,
    })
}

/// An entry's fields, looked up by name.
struct Fields<'a> {
    pairs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<'a> Fields<'a> {
    /// Checks that every field is one of `known` and appears once.
    fn new(pairs: &'a [(Vec<u8>, Vec<u8>)], known: &[&str]) -> Result<Fields<'a>, EntryError> {
        if pairs.len() > MAX_FIELDS {
            return Err(EntryError::Shape("an entry with too many fields"));
        }
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.iter().any(|k| k.as_bytes() == name.as_slice()) {
                return Err(EntryError::Unknown(text(name)));
            }
            if pairs[..i].iter().any(|(other, _)| other == name) {
                return Err(EntryError::Duplicate(text(name)));
            }
        }
        Ok(Fields { pairs })
    }

    fn get(&self, name: &'static str) -> Result<&'a [u8], EntryError> {
        self.pairs
            .iter()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
            .ok_or(EntryError::Missing(name))
    }

    fn number<T: TryFrom<u64>>(&self, name: &'static str) -> Result<T, EntryError> {
        parse_u64(self.get(name)?)
            .and_then(|n| T::try_from(n).ok())
            .ok_or(EntryError::Invalid {
                field: name,
                why: "not a decimal number in range",
            })
    }

    fn text(&self, name: &'static str) -> Result<String, EntryError> {
        let bytes = self.get(name)?;
        if bytes.len() > MAX_TEXT {
            return Err(EntryError::Invalid {
                field: name,
                why: "longer than 1024 bytes",
            });
        }
        String::from_utf8(bytes.to_vec()).map_err(|_| EntryError::Invalid {
            field: name,
            why: "not UTF-8",
        })
    }
}

/// A field's name or value for a message: lossy, at most 32 bytes.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).into_owned()
}

/// Parses a decimal number of at most 20 digits, nothing else.
pub(crate) fn parse_u64(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// An entry's fields as name and value pairs, in stream order.
pub(crate) type FieldList = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry of a stream reply: its id, and its fields (`None` when the entry was deleted
/// but is still in a pending list).
pub(crate) type Item = (EntryId, Option<FieldList>);

/// The entries of an XREAD or XREADGROUP reply for one stream (nil: none).
pub(crate) fn read_reply(value: Value) -> Result<Vec<Item>, EntryError> {
    let streams = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(pair) => pair_of(pair),
                _ => Err(EntryError::Shape("a stream in XREAD's reply is not a pair")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(pairs) => pairs,
        _ => return Err(EntryError::Shape("XREAD's reply is not a list of streams")),
    };
    let mut items = Vec::new();
    for (_key, entries) in streams {
        items.extend(entries_of(entries)?);
    }
    Ok(items)
}

/// The entries of a stream range (XRANGE, XCLAIM, XAUTOCLAIM's second element).
pub(crate) fn entries_of(value: Value) -> Result<Vec<Item>, EntryError> {
    let Value::Array(entries) = value else {
        return Err(EntryError::Shape("a list of entries is not a list"));
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(pair) = entry else {
                return Err(EntryError::Shape("an entry is not a pair"));
            };
            let (id, fields) = pair_of(pair)?;
            let id = entry_id(&id)?;
            let fields = match fields {
                Value::Nil => None,
                Value::Array(flat) => Some(field_pairs(flat)?),
                Value::Map(pairs) => Some(
                    pairs
                        .into_iter()
                        .map(|(k, v)| Ok((bytes(k)?, bytes(v)?)))
                        .collect::<Result<_, EntryError>>()?,
                ),
                _ => return Err(EntryError::Shape("an entry's fields are not a list")),
            };
            Ok((id, fields))
        })
        .collect()
}

fn field_pairs(flat: Vec<Value>) -> Result<FieldList, EntryError> {
    if flat.len() % 2 != 0 {
        return Err(EntryError::Shape(
            "an entry has an odd number of field items",
        ));
    }
    if flat.len() > 2 * MAX_FIELDS {
        return Err(EntryError::Shape("an entry with too many fields"));
    }
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        pairs.push((bytes(k)?, bytes(v)?));
    }
    Ok(pairs)
}

fn pair_of(pair: Vec<Value>) -> Result<(Value, Value), EntryError> {
    let mut it = pair.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => Err(EntryError::Shape("expected a pair")),
    }
}

/// A reply item as bytes (bulk or simple string).
pub(crate) fn bytes(value: Value) -> Result<Vec<u8>, EntryError> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        _ => Err(EntryError::Shape("expected a string")),
    }
}

/// A reply item as an entry id.
pub(crate) fn entry_id(value: &Value) -> Result<EntryId, EntryError> {
    let parsed = match value {
        Value::BulkString(b) => EntryId::parse(b),
        Value::SimpleString(s) => EntryId::parse(s.as_bytes()),
        _ => None,
    };
    parsed.ok_or(EntryError::Shape("expected an entry id"))
}

/// A reply item as an integer.
pub(crate) fn int(value: &Value) -> Result<i64, EntryError> {
    match value {
        Value::Int(n) => Ok(*n),
        _ => Err(EntryError::Shape("expected an integer")),
    }
}

/// One line of XPENDING's extended form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The entry.
    pub id: EntryId,
    /// The consumer holding it.
    pub consumer: String,
    /// Milliseconds since it was last delivered or renewed.
    pub idle_ms: u64,
    /// How many times it was delivered.
    pub deliveries: u32,
}

/// XPENDING's extended reply.
pub(crate) fn pending_reply(value: Value) -> Result<Vec<Pending>, EntryError> {
    let Value::Array(lines) = value else {
        return Err(EntryError::Shape("XPENDING's reply is not a list"));
    };
    lines
        .into_iter()
        .map(|line| {
            let Value::Array(items) = line else {
                return Err(EntryError::Shape("an XPENDING line is not a list"));
            };
            let [id, consumer, idle, count] = <[Value; 4]>::try_from(items)
                .map_err(|_| EntryError::Shape("an XPENDING line has not 4 items"))?;
            let consumer = String::from_utf8(bytes(consumer)?)
                .map_err(|_| EntryError::Shape("a consumer name is not UTF-8"))?;
            Ok(Pending {
                id: entry_id(&id)?,
                consumer,
                idle_ms: u64::try_from(int(&idle)?).unwrap_or(0),
                deliveries: u32::try_from(int(&count)?).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn a_chunk_round_trips() {
        let fp = Fingerprint([7; 32]);
        let fields = chunk_fields(&fp, "42", "3", "2", b"f", b"args");
        let entry = decode_chunk(EntryId { ms: 1, seq: 0 }, owned(&fields)).unwrap();
        assert_eq!((entry.job, entry.index, entry.tries), (42, 3, 2));
        assert_eq!(
            (entry.fingerprint, &entry.call[..], &entry.payload[..]),
            (fp, &b"f"[..], &b"args"[..])
        );
    }

    #[test]
    fn bad_chunks_are_typed_errors_with_their_place_when_known() {
        let fp = Fingerprint([7; 32]);
        let good = owned(&chunk_fields(&fp, "42", "3", "1", b"f", b""));
        let id = EntryId { ms: 1, seq: 0 };
        let mut short_fp = good.clone();
        short_fp[1].1.pop();
        let bad = decode_chunk(id, short_fp).unwrap_err();
        assert_eq!(bad.at, Some((42, 3)));
        assert!(matches!(bad.error, EntryError::Invalid { field: "fp", .. }));
        let mut huge = good.clone();
        huge[3].1 = b"4294967296".to_vec();
        assert!(decode_chunk(id, huge).unwrap_err().at.is_none());
        let mut twice = good.clone();
        twice.push(twice[0].clone());
        assert!(matches!(
            decode_chunk(id, twice).unwrap_err().error,
            EntryError::Duplicate(_)
        ));
        assert!(matches!(
            decode_chunk(id, good[1..].to_vec()).unwrap_err().error,
            EntryError::Missing("v")
        ));
        for number in [&b"-1"[..], b"+1", b"", b"1 ", b"99999999999999999999999"] {
            assert_eq!(parse_u64(number), None, "{number:?}");
        }
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors() {
        assert!(read_reply(Value::Int(3)).is_err());
        assert!(read_reply(Value::Array(vec![Value::Int(3)])).is_err());
        let odd = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"1-1".to_vec()),
            Value::Array(vec![Value::BulkString(b"k".to_vec())]),
        ])]);
        assert!(entries_of(odd).is_err());
        assert!(pending_reply(Value::Array(vec![Value::Array(vec![])])).is_err());
        assert_eq!(EntryId::parse(b"12-3"), Some(EntryId { ms: 12, seq: 3 }));
        assert_eq!(EntryId::parse(b"12"), None);
    }
}
