//! The client's side: submit chunks, read their outcomes, keep the pool's keys alive.
//!
//! A [`Broker`] owns one pool name while it lives: connecting claims the name in the meta
//! hash (a second client of the same name is refused), clears what a dead predecessor left,
//! creates the chunk stream with its consumer group and the results stream, and gives every
//! key a TTL. The TTL is refreshed by the broker's heartbeat, which rides along with the
//! broker's own commands when it is due, so a broker that is used never expires and a client
//! that dies leaves nothing behind after the TTL.
//!
//! The broker does not decide which chunks to submit or when: the caller (pool-core's
//! scheduler, through pool-api) does. The broker enforces the window the caller chose,
//! remembers which chunks are outstanding, and hands out exactly one outcome per
//! `(job, index)`: a chunk that ran twice (a host that seemed dead came back) has its second
//! outcome dropped here.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{RedisError, Value};

use crate::conn::{Conn, OpenError, Timeouts, millis};
use crate::keys::{Fingerprint, GROUP, Keys, NameError};
use crate::wire::{self, Completion, EntryError, EntryId};

/// How many result entries one read takes at most.
const READ_BATCH: usize = 128;

/// What a [`Broker`] is connected with.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    name: String,
    fingerprint: Fingerprint,
    window: usize,
    tries: u32,
    ttl: Duration,
    timeouts: Timeouts,
}

impl BrokerOptions {
    /// Options for the pool `name` (ASCII letters, digits, `_`, `-`, `.`; at most 64 bytes),
    /// whose chunks carry `fingerprint`.
    pub fn new(name: impl Into<String>, fingerprint: Fingerprint) -> BrokerOptions {
        BrokerOptions {
            name: name.into(),
            fingerprint,
            window: 64,
            tries: 1,
            ttl: Duration::from_secs(60),
            timeouts: Timeouts::default(),
        }
    }

    /// At most this many chunks outstanding (submitted, no outcome read yet). Default 64.
    pub fn window(mut self, window: usize) -> BrokerOptions {
        self.window = window.max(1);
        self
    }

    /// How many deliveries each chunk may have (default 1: a chunk whose worker dies fails
    /// with [`Outcome::WorkerLost`](crate::Outcome::WorkerLost) rather than run twice; more
    /// for idempotent work, which then fails with
    /// [`Outcome::Poisoned`](crate::Outcome::Poisoned) when every try killed its worker).
    pub fn tries(mut self, tries: u32) -> BrokerOptions {
        self.tries = tries.max(1);
        self
    }

    /// How long the pool's keys outlive the last heartbeat (default 60 s, at least 100 ms).
    /// The heartbeat is due every third of it.
    pub fn ttl(mut self, ttl: Duration) -> BrokerOptions {
        self.ttl = ttl.max(Duration::from_millis(100));
        self
    }

    /// Connect and command timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> BrokerOptions {
        self.timeouts = timeouts;
        self
    }
}

/// Why [`Broker::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The pool name cannot be used.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The URL is `rediss://` and this build has no `tls` feature.
    #[error("rediss:// needs pool-cluster's `tls` feature")]
    TlsDisabled,
    /// Another live client holds this pool name.
    #[error("pool name {name:?} is held by another live client ({holder})")]
    InUse {
        /// The pool name.
        name: String,
        /// The other client's id.
        holder: String,
    },
    /// Connecting or setting up the keys failed.
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

impl From<OpenError> for ConnectError {
    fn from(e: OpenError) -> ConnectError {
        match e {
            OpenError::TlsDisabled => ConnectError::TlsDisabled,
            OpenError::Redis(e) => ConnectError::Redis(e),
        }
    }
}

/// A chunk for [`Broker::submit_many`]: chunk `index` of `job`, `call` saying what to run
/// and `payload` its arguments (both opaque here).
#[derive(Clone, Copy, Debug)]
pub struct Submission<'a> {
    /// The job.
    pub job: u64,
    /// The chunk's index in its job.
    pub index: u32,
    /// What to run.
    pub call: &'a [u8],
    /// Its arguments.
    pub payload: &'a [u8],
}

/// Why [`Broker::submit`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The window is full: read outcomes first.
    #[error("{window} chunks are outstanding, the window")]
    WindowFull {
        /// The window.
        window: usize,
    },
    /// This `(job, index)` is outstanding already.
    #[error("chunk {index} of job {job} is outstanding already")]
    Duplicate {
        /// The job.
        job: u64,
        /// The index.
        index: u32,
    },
    /// The pool's keys are gone (Redis restarted, or the TTL passed): its outstanding chunks
    /// will never end. Connect a new broker.
    #[error("the pool's keys are gone from Redis (restarted, or expired)")]
    Lost,
    /// The command failed.
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

/// Why [`Broker::recv`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// A result entry could not be decoded (something else wrote into the results stream).
    /// It has been deleted; the broker can go on receiving.
    #[error("result entry {id} is malformed: {error}")]
    Malformed {
        /// The entry.
        id: EntryId,
        /// What is wrong with it.
        error: EntryError,
    },
    /// The pool's keys are gone (Redis restarted, or the TTL passed).
    #[error("the pool's keys are gone from Redis (restarted, or expired)")]
    Lost,
    /// The read failed.
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

/// Why [`Broker::abandon`], [`Broker::heartbeat`] or [`Broker::close`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The pool's keys are gone (Redis restarted, or the TTL passed).
    #[error("the pool's keys are gone from Redis (restarted, or expired)")]
    Lost,
    /// The command failed.
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

/// What a broker has counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BrokerStats {
    /// Chunks submitted.
    pub submitted: u64,
    /// Outcomes handed out by [`Broker::recv`].
    pub completed: u64,
    /// Outcomes dropped because their chunk was not outstanding: a second outcome of a chunk
    /// that ran twice, or an outcome of an abandoned job.
    pub stale: u64,
    /// Result entries that could not be decoded.
    pub malformed: u64,
}

/// A client of one pool: submits chunks and reads their outcomes.
///
/// Its methods take `&self`, so that one thread may wait in [`Broker::recv`] while others
/// submit: submitting and receiving have a connection each (a blocking XREAD holds its
/// connection), and the book of outstanding chunks is shared under a lock.
pub struct Broker {
    keys: Keys,
    options: BrokerOptions,
    client_id: String,
    /// The connection that submits, abandons and beats.
    tx: Mutex<Conn>,
    /// The connection that reads results, and what it read.
    rx: Mutex<Reading>,
    book: Mutex<Book>,
    /// Outcomes read and not yet handed out (in `Reading::ready`), which are outstanding
    /// still: counted here so that [`Broker::outstanding`] need not wait for a receiver.
    buffered: AtomicUsize,
}

/// The receiving side's state.
struct Reading {
    conn: Conn,
    /// The last result entry read.
    last_result: EntryId,
    /// Whether result entries were read and not yet deleted: all entries up to
    /// `last_result` go with the next read.
    untrimmed: bool,
    /// Decoded outcomes (or errors) not yet handed out.
    ready: VecDeque<Result<Completion, RecvError>>,
}

/// What both sides share.
struct Book {
    /// Submitted chunks without an outcome yet, with their entries' ids (`None` while the
    /// XADD is under way: the chunk counts as outstanding before it is in the stream, so that
    /// an outcome read at once is not taken for a stale one).
    outstanding: HashMap<(u64, u32), Option<EntryId>>,
    next_heartbeat: Instant,
    stats: BrokerStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Broker {
    /// Connects to `url` (`redis://[user:password@]host:port/db`, or `rediss://` with the
    /// `tls` feature) and sets up the pool's keys.
    pub fn connect(url: &str, options: BrokerOptions) -> Result<Broker, ConnectError> {
        let keys = Keys::new(&options.name)?;
        let mut conn = Conn::open(url, options.timeouts)?;
        let client_id = client_id();
        let ttl = millis(options.ttl);
        let mut claim = redis::pipe();
        claim
            .cmd("HSETNX")
            .arg(&keys.meta)
            .arg("client")
            .arg(&client_id)
            .cmd("HGET")
            .arg(&keys.meta)
            .arg("client")
            // NX: only a key without expiry (ours, just created) gets one here; another
            // client's keys keep their own TTL.
            .cmd("PEXPIRE")
            .arg(&keys.meta)
            .arg(ttl)
            .arg("NX")
            .ignore();
        let replies = conn.pipe(&claim).map_err(ConnectError::Redis)?;
        let holder = match replies.get(1) {
            Some(v) => wire::bytes(v.clone()).unwrap_or_default(),
            None => Vec::new(),
        };
        if holder != client_id.as_bytes() {
            return Err(ConnectError::InUse {
                name: options.name.clone(),
                holder: String::from_utf8_lossy(&holder).into_owned(),
            });
        }
        // The name is ours: what a dead predecessor left goes, then the streams are created
        // empty (XADD with MAXLEN 0 creates a stream and leaves it empty), all with the TTL.
        let mut setup = redis::pipe();
        setup.atomic();
        setup
            .cmd("DEL")
            .arg(&keys.chunks)
            .arg(&keys.results)
            .ignore();
        setup
            .cmd("HSET")
            .arg(&keys.meta)
            .arg("fingerprint")
            .arg(options.fingerprint.to_string())
            .arg("ttl_ms")
            .arg(ttl)
            .arg("heartbeat_ms")
            .arg(unix_ms())
            .ignore();
        setup
            .cmd("XGROUP")
            .arg("CREATE")
            .arg(&keys.chunks)
            .arg(GROUP)
            .arg("$")
            .arg("MKSTREAM")
            .ignore();
        setup
            .cmd("XADD")
            .arg(&keys.results)
            .arg("MAXLEN")
            .arg(0)
            .arg("*")
            .arg("v")
            .arg("1")
            .ignore();
        for key in keys.all() {
            setup.cmd("PEXPIRE").arg(key).arg(ttl).ignore();
        }
        conn.pipe(&setup).map_err(ConnectError::Redis)?;
        let reader = Conn::open(url, options.timeouts)?;
        let span = tracing::info_span!("pool_cluster::connect", pool = %options.name);
        let _enter = span.enter();
        tracing::info!(client = %client_id, fingerprint = %options.fingerprint, "pool keys set up");
        Ok(Broker {
            keys,
            book: Mutex::new(Book {
                outstanding: HashMap::new(),
                next_heartbeat: Instant::now() + options.ttl / 3,
                stats: BrokerStats::default(),
            }),
            options,
            client_id,
            tx: Mutex::new(conn),
            buffered: AtomicUsize::new(0),
            rx: Mutex::new(Reading {
                conn: reader,
                last_result: EntryId { ms: 0, seq: 0 },
                untrimmed: false,
                ready: VecDeque::new(),
            }),
        })
    }

    /// This client's id, as held in the meta hash.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How many chunks are outstanding (submitted, outcome not yet handed out).
    pub fn outstanding(&self) -> usize {
        lock(&self.book).outstanding.len() + self.buffered.load(Ordering::Acquire)
    }

    /// The window: how many chunks may be outstanding.
    pub fn window(&self) -> usize {
        self.options.window
    }

    /// What this broker has counted.
    pub fn stats(&self) -> BrokerStats {
        lock(&self.book).stats
    }

    /// Submits chunk `index` of `job`: `call` says what to run, `payload` its arguments (both
    /// opaque here). Refused when the window is full or the chunk is outstanding already.
    pub fn submit(
        &self,
        job: u64,
        index: u32,
        call: &[u8],
        payload: &[u8],
    ) -> Result<EntryId, SubmitError> {
        let chunk = Submission {
            job,
            index,
            call,
            payload,
        };
        match self.submit_many(&[chunk]) {
            Ok(mut each) => each.pop().unwrap_or(Err(SubmitError::Lost)),
            Err(e) => Err(e),
        }
    }

    /// Submits `chunks` in one round trip (one pipeline of XADDs, with the heartbeat when
    /// due), in order. Each chunk is refused on its own as [`Broker::submit`] would refuse it
    /// (the window full, a duplicate, the pool's keys gone): the answer has one result per
    /// chunk, in order. `Err` means the round trip failed: none of the chunks it carried is
    /// outstanding (some may have reached the stream; their outcomes are dropped as stale).
    ///
    /// A chunk forgotten ([`Broker::forget`], [`Broker::abandon`]) while its round trip is
    /// under way is deleted from the stream once its entry's id is known.
    pub fn submit_many(
        &self,
        chunks: &[Submission<'_>],
    ) -> Result<Vec<Result<EntryId, SubmitError>>, SubmitError> {
        let mut answers: Vec<Result<EntryId, SubmitError>> = Vec::with_capacity(chunks.len());
        let mut sent: Vec<usize> = Vec::with_capacity(chunks.len());
        {
            let mut book = lock(&self.book);
            for (at, c) in chunks.iter().enumerate() {
                if book.outstanding.len() >= self.options.window {
                    answers.push(Err(SubmitError::WindowFull {
                        window: self.options.window,
                    }));
                } else if let std::collections::hash_map::Entry::Vacant(slot) =
                    book.outstanding.entry((c.job, c.index))
                {
                    slot.insert(None);
                    // A placeholder until the reply comes.
                    answers.push(Err(SubmitError::Lost));
                    sent.push(at);
                } else {
                    answers.push(Err(SubmitError::Duplicate {
                        job: c.job,
                        index: c.index,
                    }));
                }
            }
        }
        if sent.is_empty() {
            return Ok(answers);
        }
        let result = self.add_chunks(chunks, &sent);
        let mut book = lock(&self.book);
        let ids = match result {
            Ok(ids) => ids,
            Err(e) => {
                for &at in &sent {
                    book.outstanding.remove(&(chunks[at].job, chunks[at].index));
                }
                return Err(e);
            }
        };
        let mut orphans = Vec::new();
        for (&at, id) in sent.iter().zip(ids) {
            let c = &chunks[at];
            match id {
                Some(id) => {
                    // Still outstanding unless its outcome came already, or it was forgotten
                    // meanwhile: then it goes from the stream (a no-op if a host took it).
                    match book.outstanding.get_mut(&(c.job, c.index)) {
                        Some(slot) => *slot = Some(id),
                        None => orphans.push(id),
                    }
                    book.stats.submitted += 1;
                    tracing::debug!(job = c.job, index = c.index, %id, "chunk submitted");
                    answers[at] = Ok(id);
                }
                None => {
                    book.outstanding.remove(&(c.job, c.index));
                    answers[at] = Err(SubmitError::Lost);
                }
            }
        }
        drop(book);
        if !orphans.is_empty() {
            // The chunks were submitted; only their deletion failed (they run, their
            // outcomes are dropped as stale).
            if let Err(e) = self.delete_chunks(&orphans) {
                tracing::warn!(error = %e, "could not delete chunks forgotten while submitted");
            }
        }
        Ok(answers)
    }

    /// The XADDs of `chunks[at]` for each `at` of `sent` (and the heartbeat when due), in one
    /// pipeline: each one's entry id (`None`: the stream is gone).
    fn add_chunks(
        &self,
        chunks: &[Submission<'_>],
        sent: &[usize],
    ) -> Result<Vec<Option<EntryId>>, SubmitError> {
        let mut pipe = redis::pipe();
        for &at in sent {
            let c = &chunks[at];
            let head = wire::chunk_head(
                &self.options.fingerprint,
                c.job,
                c.index,
                self.options.tries,
                c.call,
            );
            // NOMKSTREAM: a pool whose keys are gone is not silently recreated without its
            // group and TTL.
            pipe.cmd("XADD")
                .arg(&self.keys.chunks)
                .arg("NOMKSTREAM")
                .arg("*")
                .arg(wire::HEAD)
                .arg(head)
                .arg(wire::DATA)
                .arg(c.payload);
        }
        let beat = self.add_heartbeat_if_due(&mut pipe);
        let replies = lock(&self.tx).pipe(&pipe).map_err(SubmitError::Redis)?;
        if replies.len() < sent.len() {
            return Err(SubmitError::Lost);
        }
        if beat && !self.heartbeat_held(&replies[sent.len()..]) {
            return Err(SubmitError::Lost);
        }
        Ok(replies[..sent.len()]
            .iter()
            .map(|v| match v {
                Value::Nil => None,
                v => wire::entry_id(v).ok(),
            })
            .collect())
    }

    /// The next outcome of an outstanding chunk, waiting up to `timeout` for one (`None`: none
    /// came). Each `(job, index)` is handed out once; outcomes of chunks not outstanding
    /// (repeats, abandoned jobs) are dropped and counted in [`BrokerStats::stale`].
    ///
    /// [`RecvError::Malformed`] is about one entry and the broker can go on; the other errors
    /// are about the connection or the pool.
    ///
    /// One thread at a time receives (others wait for it); submitting goes on meanwhile.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Completion>, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut reading = lock(&self.rx);
        loop {
            if let Some(next) = reading.ready.pop_front() {
                if next.is_ok() {
                    self.buffered.fetch_sub(1, Ordering::AcqRel);
                }
                return next.map(Some);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Block no longer than the heartbeat allows, so the keys stay alive.
            let block = left.min(self.options.ttl / 3);
            self.read_results(&mut reading, block)?;
            if reading.ready.is_empty() && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// The next outcome already read from Redis by [`recv`](Broker::recv), if there is one
    /// and it is an outcome (an error stays for `recv` to return): for a receiver that
    /// handles the outcomes of one read together. Never waits on Redis; waits only for a
    /// `recv` under way in another thread.
    pub fn recv_buffered(&self) -> Option<Completion> {
        let mut reading = lock(&self.rx);
        if !matches!(reading.ready.front(), Some(Ok(_))) {
            return None;
        }
        let next = reading.ready.pop_front()?.ok()?;
        self.buffered.fetch_sub(1, Ordering::AcqRel);
        Some(next)
    }

    /// One XREAD of the results stream, deleting what the previous reads took.
    ///
    /// Deleted with `XTRIM MINID` (every entry below the one after the last read), not with
    /// `XDEL` of each id read: XREAD hands out entries in id order and each one is read once,
    /// so the two delete the same entries, but XDEL looks each id up from the start of its
    /// stream node (up to 100 entries walked per id) while XTRIM drops whole nodes and walks
    /// at most one.
    fn read_results(&self, reading: &mut Reading, block: Duration) -> Result<(), RecvError> {
        let mut pipe = redis::pipe();
        if reading.untrimmed {
            let last = reading.last_result;
            let above = match last.seq.checked_add(1) {
                Some(seq) => EntryId { ms: last.ms, seq },
                None => EntryId {
                    ms: last.ms.saturating_add(1),
                    seq: 0,
                },
            };
            pipe.cmd("XTRIM")
                .arg(&self.keys.results)
                .arg("MINID")
                .arg(above)
                .ignore();
        }
        let beat = self.add_heartbeat_if_due(&mut pipe);
        let read = pipe.cmd("XREAD").arg("COUNT").arg(READ_BATCH);
        if !block.is_zero() {
            read.arg("BLOCK").arg(millis(block));
        }
        read.arg("STREAMS")
            .arg(&self.keys.results)
            .arg(reading.last_result);
        let replies = reading
            .conn
            .pipe_blocking(&pipe, block)
            .map_err(RecvError::Redis)?;
        reading.untrimmed = false;
        if beat && !self.heartbeat_held(&replies) {
            return Err(RecvError::Lost);
        }
        let mut replies = replies;
        let Some(reply) = replies.pop() else {
            return Err(RecvError::Lost);
        };
        let items = wire::read_reply(reply).map_err(|error| RecvError::Malformed {
            id: reading.last_result,
            error,
        })?;
        let mut book = lock(&self.book);
        for (id, fields) in items {
            reading.last_result = reading.last_result.max(id);
            reading.untrimmed = true;
            let decoded = fields
                .ok_or(EntryError::Missing(wire::HEAD))
                .and_then(wire::decode_result);
            match decoded {
                Ok(completion) => {
                    if book
                        .outstanding
                        .remove(&(completion.job, completion.index))
                        .is_some()
                    {
                        book.stats.completed += 1;
                        self.buffered.fetch_add(1, Ordering::AcqRel);
                        reading.ready.push_back(Ok(completion));
                    } else {
                        book.stats.stale += 1;
                        tracing::debug!(
                            job = completion.job,
                            index = completion.index,
                            "outcome of a chunk not outstanding dropped"
                        );
                    }
                }
                Err(error) => {
                    book.stats.malformed += 1;
                    tracing::warn!(%id, %error, "malformed result entry deleted");
                    reading
                        .ready
                        .push_back(Err(RecvError::Malformed { id, error }));
                }
            }
        }
        Ok(())
    }

    /// Abandons `job`: its chunks not yet taken by a worker are deleted from the stream (no
    /// host will start them), and outcomes that still come for it are dropped. Returns how
    /// many of its chunks were outstanding.
    pub fn abandon(&self, job: u64) -> Result<usize, BrokerError> {
        let (count, ids) = {
            let mut book = lock(&self.book);
            let mine: Vec<(u64, u32)> = book
                .outstanding
                .keys()
                .filter(|(j, _)| *j == job)
                .copied()
                .collect();
            let ids: Vec<EntryId> = mine
                .iter()
                .filter_map(|k| book.outstanding.remove(k).flatten())
                .collect();
            (mine.len(), ids)
        };
        self.delete_chunks(&ids)?;
        tracing::info!(job, chunks = count, "job abandoned");
        Ok(count)
    }

    /// Forgets chunk `index` of `job`: deleted from the stream if no worker took it yet, and
    /// its outcome dropped if one still comes (a chunk whose caller stopped waiting for it:
    /// timed out, terminated). Returns whether it was outstanding.
    pub fn forget(&self, job: u64, index: u32) -> Result<bool, BrokerError> {
        let id = lock(&self.book).outstanding.remove(&(job, index));
        if let Some(Some(id)) = id {
            self.delete_chunks(&[id])?;
        }
        Ok(id.is_some())
    }

    fn delete_chunks(&self, ids: &[EntryId]) -> Result<(), BrokerError> {
        if !ids.is_empty() {
            lock(&self.tx)
                .query(redis::cmd("XDEL").arg(&self.keys.chunks).arg(ids))
                .map_err(BrokerError::Redis)?;
        }
        Ok(())
    }

    /// The hosts that announced themselves on this pool ([`Consumer::announce`](
    /// crate::Consumer::announce)), with how long ago they last did, by Redis's clock. Fields
    /// that do not parse are left out (the hash is untrusted).
    pub fn hosts(&self) -> Result<Vec<HostBeat>, BrokerError> {
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(&self.keys.meta).cmd("TIME");
        let replies = lock(&self.tx).pipe(&pipe).map_err(BrokerError::Redis)?;
        let [fields, time] = <[Value; 2]>::try_from(replies).map_err(|_| BrokerError::Lost)?;
        let now_ms = match time {
            Value::Array(parts) if parts.len() == 2 => {
                let secs = wire::bytes(parts[0].clone())
                    .ok()
                    .and_then(|b| wire::parse_u64(&b));
                let micros = wire::bytes(parts[1].clone())
                    .ok()
                    .and_then(|b| wire::parse_u64(&b));
                match (secs, micros) {
                    (Some(s), Some(us)) => s.saturating_mul(1000).saturating_add(us / 1000),
                    _ => return Err(BrokerError::Lost),
                }
            }
            _ => return Err(BrokerError::Lost),
        };
        let pairs: Vec<Value> = match fields {
            Value::Array(items) => items,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => Vec::new(),
        };
        let mut hosts = Vec::new();
        for pair in pairs.chunks_exact(2) {
            let (Ok(name), Ok(value)) =
                (wire::bytes(pair[0].clone()), wire::bytes(pair[1].clone()))
            else {
                continue;
            };
            let Some(id) = name.strip_prefix(b"host:") else {
                continue;
            };
            if let Some(beat) = HostBeat::parse(id, &value, now_ms) {
                hosts.push(beat);
            }
        }
        Ok(hosts)
    }

    /// Refreshes the keys' TTL now (it is also done along with other commands when due).
    pub fn heartbeat(&self) -> Result<(), BrokerError> {
        lock(&self.book).next_heartbeat = Instant::now();
        let mut pipe = redis::pipe();
        self.add_heartbeat_if_due(&mut pipe);
        let replies = lock(&self.tx).pipe(&pipe).map_err(BrokerError::Redis)?;
        if self.heartbeat_held(&replies) {
            Ok(())
        } else {
            Err(BrokerError::Lost)
        }
    }

    /// Deletes the pool's keys: hosts stop at once, outstanding chunks never end. The broker
    /// is of no use afterwards (its commands fail with `Lost`).
    pub fn close(&self) -> Result<(), BrokerError> {
        let keys = self.keys.all();
        lock(&self.tx)
            .query(redis::cmd("DEL").arg(&keys[..]))
            .map(drop)
            .map_err(BrokerError::Redis)
    }

    /// Adds the heartbeat to `pipe` when due: four replies, the PEXPIREs of the three keys
    /// and the HSET of the heartbeat time. Returns whether it did.
    fn add_heartbeat_if_due(&self, pipe: &mut redis::Pipeline) -> bool {
        let now = Instant::now();
        {
            let mut book = lock(&self.book);
            if now < book.next_heartbeat {
                return false;
            }
            book.next_heartbeat = now + self.options.ttl / 3;
        }
        let ttl = millis(self.options.ttl);
        for key in self.keys.all() {
            pipe.cmd("PEXPIRE").arg(key).arg(ttl);
        }
        pipe.cmd("HSET")
            .arg(&self.keys.meta)
            .arg("heartbeat_ms")
            .arg(unix_ms())
            .ignore();
        true
    }

    /// Whether the heartbeat's PEXPIREs (the first three of `replies` from where it was
    /// added) found every key: if one is gone, the pool is lost.
    fn heartbeat_held(&self, replies: &[Value]) -> bool {
        replies.len() >= 3 && replies[..3].iter().all(|r| matches!(r, Value::Int(1)))
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("pool", &self.options.name)
            .field("client", &self.client_id)
            .field("outstanding", &self.outstanding())
            .finish_non_exhaustive()
    }
}

/// A host as it last announced itself on a pool ([`Broker::hosts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBeat {
    /// The host's id.
    pub id: String,
    /// Its build's fingerprint, as lowercase hex.
    pub fingerprint: String,
    /// How long ago it announced itself.
    pub age: Duration,
    /// Its lease: it announces itself every third of it while it has a live worker.
    pub lease: Duration,
}

impl HostBeat {
    /// `FINGERPRINT TIME_MS LEASE_MS`, checked strictly; `None` if it is not that.
    fn parse(id: &[u8], value: &[u8], now_ms: u64) -> Option<HostBeat> {
        if id.is_empty() || id.len() > crate::keys::MAX_CONSUMER_LEN {
            return None;
        }
        let id = std::str::from_utf8(id).ok()?.to_string();
        let mut parts = value.split(|b| *b == b' ');
        let fingerprint = parts.next()?;
        let at = wire::parse_u64(parts.next()?)?;
        let lease = wire::parse_u64(parts.next()?)?;
        if parts.next().is_some()
            || fingerprint.len() != 64
            || !fingerprint
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return None;
        }
        Some(HostBeat {
            id,
            fingerprint: String::from_utf8(fingerprint.to_vec()).ok()?,
            age: Duration::from_millis(now_ms.saturating_sub(at)),
            lease: Duration::from_millis(lease),
        })
    }

    /// Whether it announced itself within its lease (it does every third of it).
    pub fn is_live(&self) -> bool {
        self.age < self.lease
    }
}

/// A client id unique enough across hosts and restarts: host name, pid, start time.
fn client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{}-{nanos:x}", host.trim(), std::process::id())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
