//! The fields of the entries in a pool's streams, and the parsing of Redis's replies.
//!
//! Anyone who can write to the Redis instance can write any entry into a pool's streams, so
//! everything read from Redis is untrusted: every reply is walked as a `redis::Value` with
//! its shape checked, every field is looked up by name, checked for presence, uniqueness and
//! length. What does not fit becomes an [`EntryError`]; nothing here indexes, unwraps or
//! allocates from a length it was told.
//!
//! An entry has two fields: `h`, its head (fixed-width little-endian numbers, then a call or a
//! consumer name), and `d`, its bytes (a payload or an outcome's data). Two fields rather than
//! one per number, because redis-server walks every field of every entry between a stream
//! node's start and the id it reads from: fewer fields are less of its time per chunk.

use std::fmt;

use redis::Value;

use crate::keys::Fingerprint;

/// The format version written into every entry's head.
const VERSION: u8 = 2;

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
    #[error("the entry's format version is {0}, not 2")]
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

/// The length of a chunk's head before its call: job, index, version, tries, fingerprint.
const CHUNK_HEAD: usize = 8 + 4 + 1 + 4 + 32;

/// The length of an outcome's head before its consumer name: job, index, version,
/// deliveries, kind.
const RESULT_HEAD: usize = 8 + 4 + 1 + 4 + 1;

/// The head of a chunk entry: `JOB (u64) IDX (u32) VERSION (u8) TRIES (u32) FP (32 bytes)`,
/// numbers little-endian, then the call. Job and index come first in every version so that a
/// chunk in another format still gets an outcome.
pub(crate) fn chunk_head(
    fingerprint: &Fingerprint,
    job: u64,
    index: u32,
    tries: u32,
    call: &[u8],
) -> Vec<u8> {
    let mut head = Vec::with_capacity(CHUNK_HEAD + call.len());
    head.extend_from_slice(&job.to_le_bytes());
    head.extend_from_slice(&index.to_le_bytes());
    head.push(VERSION);
    head.extend_from_slice(&tries.to_le_bytes());
    head.extend_from_slice(&fingerprint.0);
    head.extend_from_slice(call);
    head
}

/// A chunk entry's fields, decoded. `deliveries` is filled in by the caller, who knows it
/// from the pending list. The call and payload are moved out of `fields`, not copied (a
/// payload may be megabytes).
pub(crate) fn decode_chunk(id: EntryId, mut fields: FieldList) -> Result<Entry, Bad> {
    let f = Fields::new(&fields, &[HEAD, DATA])?;
    let head = f.get(HEAD)?;
    f.get(DATA)?;
    // Job and index first: with them a malformed chunk can still get an outcome.
    let (job, index, version) = place(head)?;
    let at = Some((job, index));
    let rest = || -> Result<(Fingerprint, u32), EntryError> {
        if version != VERSION {
            return Err(EntryError::Version(version.to_string()));
        }
        let Some(fixed) = head.get(13..CHUNK_HEAD) else {
            return Err(EntryError::Invalid {
                field: HEAD,
                why: "shorter than a chunk's head (49 bytes)",
            });
        };
        let (tries, fingerprint) = fixed.split_at(4);
        let tries = u32::from_le_bytes(tries.try_into().unwrap_or_default());
        if tries == 0 {
            return Err(EntryError::Invalid {
                field: HEAD,
                why: "tries is zero",
            });
        }
        Ok((
            Fingerprint(fingerprint.try_into().unwrap_or_default()),
            tries,
        ))
    };
    let (fingerprint, tries) = rest().map_err(|error| Bad { at, error })?;
    // Both fields are there (checked above) and once (`Fields::new`).
    let mut take = |name: &str| {
        fields
            .iter_mut()
            .find(|(n, _)| n.as_slice() == name.as_bytes())
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    };
    let mut call = take(HEAD);
    // Shifts the call to the front in place: no allocation per chunk.
    call.drain(..CHUNK_HEAD);
    Ok(Entry {
        id,
        job,
        index,
        fingerprint,
        tries,
        deliveries: 1,
        call,
        payload: take(DATA),
    })
}

/// The name of the field that holds an entry's head (numbers, then a call or a name).
pub(crate) const HEAD: &str = "h";

/// The name of the field that holds an entry's bytes (a payload or an outcome).
pub(crate) const DATA: &str = "d";

/// The job, index and version that open a head of any version.
fn place(head: &[u8]) -> Result<(u64, u32, u8), EntryError> {
    match (head.get(..8), head.get(8..12), head.get(12)) {
        (Some(job), Some(index), Some(&version)) => Ok((
            u64::from_le_bytes(job.try_into().unwrap_or_default()),
            u32::from_le_bytes(index.try_into().unwrap_or_default()),
            version,
        )),
        _ => Err(EntryError::Invalid {
            field: HEAD,
            why: "shorter than 13 bytes",
        }),
    }
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

/// The kind byte and the data of an outcome.
pub(crate) fn outcome_parts(outcome: &Outcome) -> (u8, &[u8]) {
    match outcome {
        Outcome::Ok(data) => (KIND_OK, data),
        Outcome::Failed(data) => (KIND_ERR, data),
        Outcome::WorkerLost => (KIND_LOST, b""),
        Outcome::Poisoned { .. } => (KIND_POISONED, b""),
        Outcome::Malformed(why) => (KIND_MALFORMED, why.as_bytes()),
    }
}

/// The kind byte of an [`Outcome::Ok`].
pub(crate) const KIND_OK: u8 = 0;
/// The kind byte of an [`Outcome::Failed`].
pub(crate) const KIND_ERR: u8 = 1;
/// The kind byte of an [`Outcome::WorkerLost`].
const KIND_LOST: u8 = 2;
/// The kind byte of an [`Outcome::Poisoned`].
const KIND_POISONED: u8 = 3;
/// The kind byte of an [`Outcome::Malformed`].
pub(crate) const KIND_MALFORMED: u8 = 4;

/// The head of an outcome entry: `JOB (u64) IDX (u32) VERSION (u8) DELIVERIES (u32) KIND
/// (u8)`, numbers little-endian, kind 0 ok, 1 err, 2 lost, 3 poisoned, 4 malformed; then the
/// name of the consumer that wrote it.
pub(crate) fn result_head(
    job: u64,
    index: u32,
    deliveries: u32,
    kind: u8,
    consumer: &str,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(RESULT_HEAD + consumer.len());
    head.extend_from_slice(&job.to_le_bytes());
    head.extend_from_slice(&index.to_le_bytes());
    head.push(VERSION);
    head.extend_from_slice(&deliveries.to_le_bytes());
    head.push(kind);
    head.extend_from_slice(consumer.as_bytes());
    head
}

/// A result entry's fields, decoded.
///
/// Takes the fields by value: the data (a chunk's results, up to megabytes) is moved into the
/// outcome, not copied.
pub(crate) fn decode_result(mut fields: FieldList) -> Result<Completion, EntryError> {
    let f = Fields::new(&fields, &[HEAD, DATA])?;
    let head = f.get(HEAD)?;
    let data = f.get(DATA)?;
    let (job, index, version) = place(head)?;
    if version != VERSION {
        return Err(EntryError::Version(version.to_string()));
    }
    let Some(fixed) = head.get(13..RESULT_HEAD) else {
        return Err(EntryError::Invalid {
            field: HEAD,
            why: "shorter than an outcome's head (18 bytes)",
        });
    };
    let (deliveries, kind) = fixed.split_at(4);
    let deliveries = u32::from_le_bytes(deliveries.try_into().unwrap_or_default());
    let consumer = text_of(HEAD, head.get(RESULT_HEAD..).unwrap_or_default())?;
    enum Kind {
        Ok,
        Err,
        Lost,
        Poisoned,
        Malformed(String),
    }
    let kind = match kind.first().copied().unwrap_or(u8::MAX) {
        KIND_OK => Kind::Ok,
        KIND_ERR => Kind::Err,
        KIND_LOST => Kind::Lost,
        KIND_POISONED => Kind::Poisoned,
        KIND_MALFORMED => Kind::Malformed(text_of(DATA, data)?),
        _ => {
            return Err(EntryError::Invalid {
                field: HEAD,
                why: "its kind is not one of ok, err, lost, poisoned, malformed",
            });
        }
    };
    // `d` is there (checked above) and once (`Fields::new`).
    let mut take_data = || {
        fields
            .iter_mut()
            .find(|(n, _)| n.as_slice() == DATA.as_bytes())
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

/// Text read from an entry: UTF-8, at most [`MAX_TEXT`] bytes.
fn text_of(field: &'static str, bytes: &[u8]) -> Result<String, EntryError> {
    if bytes.len() > MAX_TEXT {
        return Err(EntryError::Invalid {
            field,
            why: "text longer than 1024 bytes",
        });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| EntryError::Invalid {
        field,
        why: "text not UTF-8",
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

    fn chunk(head: Vec<u8>, data: &[u8]) -> FieldList {
        vec![
            (HEAD.as_bytes().to_vec(), head),
            (DATA.as_bytes().to_vec(), data.to_vec()),
        ]
    }

    #[test]
    fn a_chunk_round_trips() {
        let fp = Fingerprint([7; 32]);
        let fields = chunk(chunk_head(&fp, 42, 3, 2, b"f"), b"args");
        let entry = decode_chunk(EntryId { ms: 1, seq: 0 }, fields).unwrap();
        assert_eq!((entry.job, entry.index, entry.tries), (42, 3, 2));
        assert_eq!(
            (entry.fingerprint, &entry.call[..], &entry.payload[..]),
            (fp, &b"f"[..], &b"args"[..])
        );
    }

    #[test]
    fn an_outcome_round_trips() {
        for outcome in [
            Outcome::Ok(b"r".to_vec()),
            Outcome::Failed(b"e".to_vec()),
            Outcome::WorkerLost,
            Outcome::Poisoned { deliveries: 4 },
            Outcome::Malformed("why".into()),
        ] {
            let (kind, data) = outcome_parts(&outcome);
            let fields = chunk(result_head(u64::MAX, 9, 4, kind, "h/w0"), data);
            let c = decode_result(fields).unwrap();
            assert_eq!((c.job, c.index, c.deliveries), (u64::MAX, 9, 4));
            assert_eq!((c.outcome, &c.consumer[..]), (outcome, "h/w0"));
        }
    }

    #[test]
    fn bad_chunks_are_typed_errors_with_their_place_when_known() {
        let fp = Fingerprint([7; 32]);
        let good = chunk(chunk_head(&fp, 42, 3, 1, b""), b"");
        let id = EntryId { ms: 1, seq: 0 };
        let mut short_fp = good.clone();
        short_fp[0].1.pop();
        let bad = decode_chunk(id, short_fp).unwrap_err();
        assert_eq!(bad.at, Some((42, 3)));
        assert!(matches!(bad.error, EntryError::Invalid { field: "h", .. }));
        let mut version = good.clone();
        version[0].1[12] = 1;
        let bad = decode_chunk(id, version).unwrap_err();
        assert_eq!(
            (bad.at, bad.error),
            (Some((42, 3)), EntryError::Version("1".into()))
        );
        let zero_tries = chunk(chunk_head(&fp, 42, 3, 0, b""), b"");
        assert_eq!(decode_chunk(id, zero_tries).unwrap_err().at, Some((42, 3)));
        let mut short = good.clone();
        short[0].1.truncate(12);
        assert!(decode_chunk(id, short).unwrap_err().at.is_none());
        let mut twice = good.clone();
        twice.push(twice[0].clone());
        assert!(matches!(
            decode_chunk(id, twice).unwrap_err().error,
            EntryError::Duplicate(_)
        ));
        assert!(matches!(
            decode_chunk(id, good[1..].to_vec()).unwrap_err().error,
            EntryError::Missing("h")
        ));
        for number in [&b"-1"[..], b"+1", b"", b"1 ", b"99999999999999999999999"] {
            assert_eq!(parse_u64(number), None, "{number:?}");
        }
    }

    #[test]
    fn bad_outcomes_are_typed_errors() {
        let good = result_head(1, 2, 1, KIND_OK, "h/w0");
        let mut unknown_kind = good.clone();
        unknown_kind[17] = 9;
        let long_name = result_head(1, 2, 1, KIND_OK, &"x".repeat(MAX_TEXT + 1));
        let mut not_utf8 = good.clone();
        not_utf8.push(0xff);
        for head in [good[..17].to_vec(), unknown_kind, long_name, not_utf8] {
            assert!(matches!(
                decode_result(chunk(head, b"")),
                Err(EntryError::Invalid { field: "h", .. })
            ));
        }
        let malformed = result_head(1, 2, 1, KIND_MALFORMED, "h/w0");
        assert!(decode_result(chunk(malformed, &[0xff])).is_err());
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
