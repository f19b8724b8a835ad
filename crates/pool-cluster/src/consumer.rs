//! The worker's side: take chunks from the consumer group, write their outcomes, renew and
//! take over leases.
//!
//! A chunk taken by a worker sits in the worker's pending list (Redis's PEL) until the worker
//! writes its outcome, which acknowledges and deletes it in the same MULTI/EXEC, so an outcome
//! is never written without the chunk leaving the group, nor the other way round. The worker's
//! next chunk is read in the same round trip, after the EXEC ([`Consumer::complete`]): one
//! round trip per chunk while work is queued, and still at most one chunk in a worker's
//! pending list that it has not finished, the one it is about to run. The time
//! since an entry was last delivered or renewed is its *lease*: a host's supervisor renews
//! the entries of its live workers (XCLAIM to the same consumer with JUSTID resets the idle
//! time), and any worker may take over entries idle longer than the lease (XAUTOCLAIM), which
//! are those of hosts that stopped renewing: dead or cut off.
//!
//! Delivery counts are Redis's: reading an entry (new, or again from one's own pending list)
//! counts one delivery; taking over and renewing (JUSTID) count none. So an entry taken over
//! from a dead host, or handed by a supervisor to the replacement of a dead worker, counts a
//! delivery when the worker reads it, and a chunk whose deliveries exceed its `tries` is
//! failed instead of run: [`Outcome::WorkerLost`] when it may run once,
//! [`Outcome::Poisoned`] when every one of its tries killed its worker.
//!
//! A chunk of another build is never run: it is *parked*, handed with its delivery undone to
//! the consumer `parked:FINGERPRINT` of the chunk's build, which no worker is named after.
//! A worker of that build moves what that consumer holds into its own pending list at its
//! next takeover (at most half a lease later), so a refused chunk waits for its build's next
//! free worker, not for a lease. Nobody renews parked entries, so any worker may still take
//! them over after the lease (and a worker of another build parks them again): a chunk of a
//! build no host serves stays parked until its client gives up on it.

use std::time::{Duration, Instant};

use redis::{RedisError, Value};

use crate::conn::{Conn, OpenError, Timeouts, is_no_pool, millis};
use crate::keys::{self, Fingerprint, GROUP, Keys, NameError};
use crate::wire::{self, Bad, Entry, EntryError, EntryId, Outcome, Pending};

/// How many entries of its own pending list or of a dead consumer's one call looks at.
const PEL_BATCH: usize = 64;

/// How many entries one automatic takeover takes at most.
const RECLAIM_BATCH: usize = 8;

/// How many entries one [`Consumer::claim`] skips (deleted, used up) before it answers
/// `None`, so that it returns in bounded time whatever is in the stream.
const MAX_SKIPS: usize = 64;

/// What a [`Consumer`] joins with.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    pool: String,
    consumer: String,
    fingerprint: Fingerprint,
    lease: Duration,
    timeouts: Timeouts,
}

impl ConsumerOptions {
    /// Options for consumer `consumer` (`HOST/WORKER`) of pool `pool`, running chunks of
    /// build `fingerprint` only.
    pub fn new(
        pool: impl Into<String>,
        consumer: impl Into<String>,
        fingerprint: Fingerprint,
    ) -> ConsumerOptions {
        ConsumerOptions {
            pool: pool.into(),
            consumer: consumer.into(),
            fingerprint,
            lease: Duration::from_secs(10),
            timeouts: Timeouts::default(),
        }
    }

    /// The lease: entries idle (neither delivered nor renewed) for longer are taken over by
    /// [`Consumer::claim`]. Default 10 s, at least 10 ms. Supervisors renew every third of it.
    pub fn lease(mut self, lease: Duration) -> ConsumerOptions {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Connect and command timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> ConsumerOptions {
        self.timeouts = timeouts;
        self
    }
}

/// Why [`Consumer::join`] failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The pool or consumer name cannot be used.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The URL is `rediss://` and this build has no `tls` feature.
    #[error("rediss:// needs pool-cluster's `tls` feature")]
    TlsDisabled,
    /// Connecting failed.
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

/// Why [`Consumer::claim`] has no chunk to run. Only [`ClaimError::Redis`] is about the
/// connection; the others are about one entry (already dealt with) or the pool's absence,
/// and the consumer can claim again.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The pool's stream does not exist: no client has set it up, or its client is gone.
    #[error("the pool has no chunk stream: no live client")]
    NoPool,
    /// A chunk of another build: it was not run, and was parked for a host of its build.
    #[error(
        "chunk {index} of job {job} (entry {id}) is of build {theirs}, this worker is of build {ours}: not run, parked"
    )]
    Foreign {
        /// The entry.
        id: EntryId,
        /// Its job.
        job: u64,
        /// Its index.
        index: u32,
        /// The chunk's fingerprint.
        theirs: Fingerprint,
        /// This worker's.
        ours: Fingerprint,
    },
    /// An entry that could not be decoded: not run; acknowledged and deleted, with a
    /// [`Outcome::Malformed`] written when its job and index were readable.
    #[error("entry {id} is malformed: {error}")]
    Malformed {
        /// The entry.
        id: EntryId,
        /// What is wrong with it.
        error: EntryError,
    },
    /// A command failed.
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

/// Why writing an outcome, renewing, taking over or failing entries failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// A reply could not be decoded.
    #[error("unexpected reply: {0}")]
    Malformed(#[from] EntryError),
    /// A command failed.
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

/// What [`Consumer::fail_lost`] did with a dead worker's entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LostReport {
    /// Chunks failed (`WorkerLost` or `Poisoned`), as `(job, index)`.
    pub failed: Vec<(u64, u32)>,
    /// Chunks handed to the heir to run again.
    pub handed: Vec<(u64, u32)>,
    /// Entries dropped: deleted (abandoned) or malformed.
    pub dropped: usize,
}

/// One consumer of a pool's consumer group: a worker, or a supervisor acting for its workers.
pub struct Consumer {
    conn: Conn,
    keys: Keys,
    name: String,
    fingerprint: Fingerprint,
    /// The consumer holding chunks of this build that workers of other builds refused.
    parked: String,
    lease: Duration,
    /// Whether this consumer's own pending list may hold entries to run (handed over by a
    /// supervisor, taken over, or left by a predecessor of the same name).
    check_own: bool,
    next_reclaim: Instant,
    /// An entry read along with the last outcome written, which [`Consumer::claim`] looks
    /// at first: it is in this consumer's pending list already.
    stashed: Option<(EntryId, Option<wire::FieldList>)>,
}

/// What to do with one entry read.
enum Step {
    Run(Entry),
    Skip,
}

impl Consumer {
    /// Connects as consumer `options.consumer`. Creates nothing: until a client sets the pool
    /// up, [`claim`](Consumer::claim) answers [`ClaimError::NoPool`].
    pub fn join(url: &str, options: ConsumerOptions) -> Result<Consumer, JoinError> {
        let keys = Keys::new(&options.pool)?;
        keys::check_consumer(&options.consumer)?;
        let conn = Conn::open(url, options.timeouts).map_err(|e| match e {
            OpenError::TlsDisabled => JoinError::TlsDisabled,
            OpenError::Redis(e) => JoinError::Redis(e),
        })?;
        Ok(Consumer {
            conn,
            keys,
            name: options.consumer,
            parked: keys::parked(&options.fingerprint),
            fingerprint: options.fingerprint,
            lease: options.lease,
            check_own: true,
            next_reclaim: Instant::now(),
            stashed: None,
        })
    }

    /// This consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next chunk to run, waiting up to `block` for one (`None`: none came).
    ///
    /// In order: entries in this consumer's own pending list (handed over or taken over);
    /// entries of this build that workers of other builds refused, and entries of other
    /// consumers idle longer than the lease (both looked for at most every half lease); new
    /// entries. A chunk is returned only if it is of this build and has tries
    /// left; the others are dealt with here (see [`ClaimError`]).
    pub fn claim(&mut self, block: Duration) -> Result<Option<Entry>, ClaimError> {
        let deadline = Instant::now() + block;
        for _ in 0..MAX_SKIPS {
            if let Some((id, fields)) = self.stashed.take() {
                match self.step(id, fields, 1, false)? {
                    Step::Run(entry) => return Ok(Some(entry)),
                    Step::Skip => continue,
                }
            }
            if self.check_own {
                match self.claim_own()? {
                    Some(Step::Run(entry)) => return Ok(Some(entry)),
                    Some(Step::Skip) => continue,
                    None => self.check_own = false,
                }
            }
            if Instant::now() >= self.next_reclaim {
                // Set after the takeover succeeded: one that failed (a timeout on a loaded
                // machine) is due again at the next claim, not half a lease later.
                let taken = self.take_over()?;
                self.next_reclaim = Instant::now() + self.lease / 2;
                if taken > 0 {
                    continue;
                }
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            let read = self.read_one(">", wait);
            let reply = self.conn.query_blocking(&read, wait).map_err(claim_error)?;
            let items = wire::read_reply(reply).map_err(malformed)?;
            let Some((id, fields)) = items.into_iter().next() else {
                return Ok(None);
            };
            match self.step(id, fields, 1, false)? {
                Step::Run(entry) => return Ok(Some(entry)),
                Step::Skip if Instant::now() >= deadline => return Ok(None),
                Step::Skip => {}
            }
        }
        Ok(None)
    }

    /// `XREADGROUP` of at most one chunk for this consumer: from `start` "0" its own pending
    /// list (read again), from ">" a new entry; waiting up to `block` for one (none if zero).
    fn read_one(&self, start: &str, block: Duration) -> redis::Cmd {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(GROUP)
            .arg(&self.name)
            .arg("COUNT")
            .arg(1);
        if !block.is_zero() {
            read.arg("BLOCK").arg(millis(block));
        }
        read.arg("STREAMS").arg(&self.keys.chunks).arg(start);
        read
    }

    /// The first entry of this consumer's own pending list, read again (which counts a
    /// delivery), with its delivery count. `None`: the list is empty.
    fn claim_own(&mut self) -> Result<Option<Step>, ClaimError> {
        let mut pipe = redis::pipe();
        pipe.add_command(self.read_one("0", Duration::ZERO));
        pipe.cmd("XPENDING")
            .arg(&self.keys.chunks)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(1)
            .arg(&self.name);
        let replies = self.conn.pipe(&pipe).map_err(claim_error)?;
        let [read, pending] = <[Value; 2]>::try_from(replies)
            .map_err(|_| malformed(EntryError::Shape("two replies expected")))?;
        let items = wire::read_reply(read).map_err(malformed)?;
        let pending = wire::pending_reply(pending).map_err(malformed)?;
        let Some((id, fields)) = items.into_iter().next() else {
            return Ok(None);
        };
        let deliveries = pending
            .iter()
            .find(|p| p.id == id)
            .map_or(1, |p| p.deliveries);
        self.step(id, fields, deliveries, true).map(Some)
    }

    /// Decides what to do with an entry read: run it, or deal with it here.
    fn step(
        &mut self,
        id: EntryId,
        fields: Option<wire::FieldList>,
        deliveries: u32,
        again: bool,
    ) -> Result<Step, ClaimError> {
        let Some(fields) = fields else {
            // Deleted while pending: its job was abandoned.
            self.ack(id).map_err(claim_error)?;
            return Ok(Step::Skip);
        };
        let mut entry = match wire::decode_chunk(id, fields) {
            Ok(entry) => entry,
            Err(bad) => {
                self.drop_malformed(id, &bad).map_err(claim_error)?;
                return Err(ClaimError::Malformed {
                    id,
                    error: bad.error,
                });
            }
        };
        entry.deliveries = deliveries;
        if entry.fingerprint != self.fingerprint {
            self.park(id, deliveries.saturating_sub(1), &entry.fingerprint)
                .map_err(claim_error)?;
            tracing::warn!(
                %id, job = entry.job, index = entry.index, consumer = %self.name,
                theirs = %entry.fingerprint, ours = %self.fingerprint,
                "chunk of another build not run: parked for a host of its build"
            );
            return Err(ClaimError::Foreign {
                id,
                job: entry.job,
                index: entry.index,
                theirs: entry.fingerprint,
                ours: self.fingerprint,
            });
        }
        if again && deliveries > entry.tries {
            // This read counted a delivery that will not run.
            let outcome = exhausted(deliveries - 1, entry.tries);
            tracing::warn!(
                %id, job = entry.job, index = entry.index, deliveries = deliveries - 1,
                tries = entry.tries, "chunk's tries used up: failed, not run"
            );
            self.write(&entry, deliveries - 1, &outcome)
                .map_err(claim_error)?;
            return Ok(Step::Skip);
        }
        Ok(Step::Run(entry))
    }

    /// Whether a chunk was read along with the last outcome written and not yet returned by
    /// [`claim`](Consumer::claim): it is in this consumer's pending list, so a worker that
    /// stops now without claiming it leaves it to be failed as lost.
    pub fn has_claimed(&self) -> bool {
        self.stashed.is_some()
    }

    /// Writes the outcome of a chunk this consumer ran: its bytes, or its error's bytes.
    /// The outcome is added to the results stream and the chunk acknowledged and deleted in
    /// one MULTI/EXEC. When [`claim`](Consumer::claim) would read a new entry next (nothing
    /// in this consumer's own pending list, no takeover due), the same round trip reads it
    /// (without blocking), and `claim` returns it.
    pub fn complete(
        &mut self,
        entry: &Entry,
        result: Result<&[u8], &[u8]>,
    ) -> Result<(), ConsumerError> {
        let (kind, data) = match result {
            Ok(data) => (wire::KIND_OK, data),
            Err(data) => (wire::KIND_ERR, data),
        };
        let read_next =
            self.stashed.is_none() && !self.check_own && Instant::now() < self.next_reclaim;
        if !read_next {
            return self
                .write_parts(
                    entry.id,
                    entry.job,
                    entry.index,
                    entry.deliveries,
                    kind,
                    data,
                )
                .map_err(ConsumerError::Redis);
        }
        let mut pipe = redis::pipe();
        // MULTI/EXEC written out rather than `atomic()`, so that the read can follow the
        // EXEC in the same pipeline, outside the transaction.
        pipe.cmd("MULTI").ignore();
        self.add_write(
            &mut pipe,
            entry.id,
            entry.job,
            entry.index,
            entry.deliveries,
            kind,
            data,
        );
        pipe.cmd("EXEC");
        pipe.add_command(self.read_one(">", Duration::ZERO));
        // Replies one by one: the read may fail (the pool gone: NOGROUP) after the write
        // succeeded, and the write's outcome is the EXEC's alone.
        pipe.ignore_errors();
        let replies = self.conn.pipe(&pipe).map_err(ConsumerError::Redis)?;
        let [exec, read] = <[Value; 2]>::try_from(replies)
            .map_err(|_| EntryError::Shape("two replies expected"))?;
        // EXECABORT (a queued command refused: OOM, READONLY, ...) means nothing was written
        // and the chunk is still pending: the caller writes again.
        exec.extract_error().map_err(ConsumerError::Redis)?;
        match read.extract_error() {
            Ok(read) => {
                // An entry read is in this consumer's pending list whatever happens next, so
                // a reply that cannot be parsed has `claim` look at that list.
                match wire::read_reply(read) {
                    Ok(items) => self.stashed = items.into_iter().next(),
                    Err(_) => self.check_own = true,
                }
            }
            Err(e) if is_no_pool(&e) => {}
            Err(_) => self.check_own = true,
        }
        Ok(())
    }

    /// Ends a chunk with `outcome` without running it (e.g. a supervisor failing a dead
    /// worker's chunk), in the same way as [`complete`](Consumer::complete).
    pub fn fail(&mut self, entry: &Entry, outcome: &Outcome) -> Result<(), ConsumerError> {
        self.write(entry, entry.deliveries, outcome)
            .map_err(ConsumerError::Redis)
    }

    fn write(
        &mut self,
        entry: &Entry,
        deliveries: u32,
        outcome: &Outcome,
    ) -> Result<(), RedisError> {
        let (kind, data) = wire::outcome_parts(outcome);
        self.write_parts(entry.id, entry.job, entry.index, deliveries, kind, data)
    }

    fn write_parts(
        &mut self,
        id: EntryId,
        job: u64,
        index: u32,
        deliveries: u32,
        kind: u8,
        data: &[u8],
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.add_write(&mut pipe, id, job, index, deliveries, kind, data);
        self.conn.pipe(&pipe).map(drop)
    }

    /// Adds the commands of an outcome's write (replies ignored), for a MULTI/EXEC: the
    /// outcome's XADD, then the chunk's XACK and XDEL.
    ///
    /// Why a transaction and not a plain pipeline, though commands of one connection run in
    /// order: a refused XADD (OOM under `maxmemory`, READONLY, MISCONF) is an error reply
    /// after which a pipeline's XACK would still run, acknowledging a chunk with no outcome
    /// (its caller would wait forever); a transaction with a refused command is aborted
    /// whole (EXECABORT) and the chunk stays pending. The order still matters within it: a
    /// worker that dies before its EXEC is read leaves either nothing (the chunk pending,
    /// settled as lost) or everything done; a chunk run twice (taken over from a host that
    /// came back) has two outcomes, and the client keeps the first.
    #[allow(clippy::too_many_arguments)]
    fn add_write(
        &self,
        pipe: &mut redis::Pipeline,
        id: EntryId,
        job: u64,
        index: u32,
        deliveries: u32,
        kind: u8,
        data: &[u8],
    ) {
        // NOMKSTREAM: the outcome of a chunk whose client is gone is not written into a new
        // stream that nobody would expire.
        pipe.cmd("XADD")
            .arg(&self.keys.results)
            .arg("NOMKSTREAM")
            .arg("*")
            .arg(wire::HEAD)
            .arg(wire::result_head(job, index, deliveries, kind, &self.name))
            .arg(wire::DATA)
            .arg(data)
            .ignore();
        pipe.cmd("XACK")
            .arg(&self.keys.chunks)
            .arg(GROUP)
            .arg(id)
            .ignore();
        pipe.cmd("XDEL").arg(&self.keys.chunks).arg(id).ignore();
    }

    /// Tells the pool's clients that host `host_id`, of this consumer's build, is alive:
    /// field `host:HOST_ID` of the pool's meta hash gets `FINGERPRINT TIME_MS LEASE_MS`, the
    /// time being Redis's own (`TIME`, so that no two machines' clocks are compared). A
    /// client whose chunks no host of its build serves fails them after its start timeout
    /// ([`Broker::hosts`](crate::Broker::hosts)). Written only while the hash exists (a
    /// script: the check and the write in one step), so that a host never recreates the key
    /// of a client that is gone, without its TTL.
    pub fn announce(&mut self, host_id: &str, lease: Duration) -> Result<(), ConsumerError> {
        const SCRIPT: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
            local t = redis.call('TIME') \
            local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
            redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ms .. ' ' .. ARGV[3]) \
            return 1";
        self.conn
            .query(
                redis::cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(1)
                    .arg(&self.keys.meta)
                    .arg(format!("host:{host_id}"))
                    .arg(self.fingerprint.to_string())
                    .arg(millis(lease)),
            )
            .map(drop)
            .map_err(ConsumerError::Redis)
    }

    /// Resets the idle time of this consumer's entries `ids` (XCLAIM with min-idle 0 and
    /// JUSTID, which counts no delivery). Returns how many are still this consumer's (none
    /// when the pool is gone).
    pub fn renew(&mut self, ids: &[EntryId]) -> Result<usize, ConsumerError> {
        let name = self.name.clone();
        self.renew_for(&name, ids)
    }

    /// Like [`renew`](Consumer::renew), for entries held by consumer `owner` (a supervisor
    /// renewing for its workers: ownership stays with `owner`).
    pub fn renew_for(&mut self, owner: &str, ids: &[EntryId]) -> Result<usize, ConsumerError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let reply = match self.conn.query(
            redis::cmd("XCLAIM")
                .arg(&self.keys.chunks)
                .arg(GROUP)
                .arg(owner)
                .arg(0)
                .arg(ids)
                .arg("JUSTID"),
        ) {
            Err(e) if is_no_pool(&e) => return Ok(0),
            other => other.map_err(ConsumerError::Redis)?,
        };
        match reply {
            Value::Array(ids) => Ok(ids.len()),
            _ => Err(EntryError::Shape("XCLAIM's reply is not a list").into()),
        }
    }

    /// Renews every entry held by the consumers `owners` (one round trip whatever their
    /// number). Returns how many entries were renewed. A pool without a stream renews none.
    pub fn renew_all(&mut self, owners: &[&str]) -> Result<usize, ConsumerError> {
        // One script: which entries an owner holds and their renewal in one step. As two
        // round trips (XPENDING, then XCLAIM with min-idle 0 to the owner), an entry that the
        // owner handed on in between (parked, being of another build) was taken back to an
        // owner that no longer looks at it, and renewed there for good: the chunk never ran.
        const RENEW: &str = "local n = 0 \
            for i = 3, #ARGV do \
              local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[2], ARGV[i]) \
              if #pending > 0 then \
                local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[i], '0'} \
                for _, p in ipairs(pending) do claim[#claim + 1] = p[1] end \
                claim[#claim + 1] = 'JUSTID' \
                n = n + #redis.call(unpack(claim)) \
              end \
            end \
            return n";
        if owners.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(RENEW)
            .arg(1)
            .arg(&self.keys.chunks)
            .arg(GROUP)
            .arg(PEL_BATCH);
        for owner in owners {
            cmd.arg(*owner);
        }
        match self.conn.query(&cmd) {
            Err(e) if is_no_pool(&e) => Ok(0),
            Err(e) => Err(ConsumerError::Redis(e)),
            Ok(Value::Int(n)) => Ok(usize::try_from(n).unwrap_or(0)),
            Ok(_) => Err(EntryError::Shape("the renewal script's reply is not a number").into()),
        }
    }

    /// Takes over up to `count` entries idle for at least `min_idle` (XAUTOCLAIM with
    /// JUSTID), into this consumer's pending list; [`claim`](Consumer::claim) returns them
    /// next, each counting a delivery then. Returns how many were taken.
    pub fn reclaim(&mut self, min_idle: Duration, count: usize) -> Result<usize, ClaimError> {
        let reply = self
            .conn
            .query(&self.autoclaim(min_idle, count))
            .map_err(claim_error)?;
        self.reclaimed(reply)
    }

    /// The takeover [`claim`](Consumer::claim) makes every half lease, in one round trip:
    /// the entries parked for this build (all of them: refused by workers of other builds,
    /// and due now), then up to [`RECLAIM_BATCH`] entries idle longer than the lease. Both
    /// go into this consumer's own pending list. Returns how many were taken.
    fn take_over(&mut self) -> Result<usize, ClaimError> {
        // Moved in a script so that the check of who holds an entry and the move are one
        // step: a plain XPENDING then XCLAIM could take an entry that another worker of this
        // build moved to itself in between and has started, and run it a second time.
        const UNPARK: &str = "local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[2], ARGV[3]) \
            if #pending == 0 then return 0 end \
            local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[4], '0'} \
            for _, p in ipairs(pending) do claim[#claim + 1] = p[1] end \
            claim[#claim + 1] = 'JUSTID' \
            return #redis.call(unpack(claim))";
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(UNPARK)
            .arg(1)
            .arg(&self.keys.chunks)
            .arg(GROUP)
            .arg(PEL_BATCH)
            .arg(&self.parked)
            .arg(&self.name);
        pipe.add_command(self.autoclaim(self.lease, RECLAIM_BATCH));
        let replies = self.conn.pipe(&pipe).map_err(claim_error)?;
        let [unparked, reclaimed] = <[Value; 2]>::try_from(replies)
            .map_err(|_| malformed(EntryError::Shape("two replies expected")))?;
        let unparked = match unparked {
            Value::Int(n) => usize::try_from(n).unwrap_or(0),
            _ => {
                return Err(malformed(EntryError::Shape(
                    "the unpark script's reply is not a number",
                )));
            }
        };
        if unparked > 0 {
            self.check_own = true;
            tracing::info!(consumer = %self.name, count = unparked, "chunks of this build refused by another build taken");
        }
        Ok(unparked + self.reclaimed(reclaimed)?)
    }

    /// XAUTOCLAIM of up to `count` entries idle for at least `min_idle`, into this consumer's
    /// pending list.
    fn autoclaim(&self, min_idle: Duration, count: usize) -> redis::Cmd {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.keys.chunks)
            .arg(GROUP)
            .arg(&self.name)
            .arg(millis(min_idle))
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .arg("JUSTID");
        cmd
    }

    /// Reads an XAUTOCLAIM's reply; see [`reclaim`](Consumer::reclaim).
    fn reclaimed(&mut self, reply: Value) -> Result<usize, ClaimError> {
        let Value::Array(parts) = reply else {
            return Err(malformed(EntryError::Shape(
                "XAUTOCLAIM's reply is not a list",
            )));
        };
        let taken = match parts.get(1) {
            Some(Value::Array(ids)) => ids
                .iter()
                .map(wire::entry_id)
                .collect::<Result<Vec<_>, _>>()
                .map_err(malformed)?,
            _ => {
                return Err(malformed(EntryError::Shape(
                    "XAUTOCLAIM's reply has no ids",
                )));
            }
        };
        if !taken.is_empty() {
            self.check_own = true;
            for id in &taken {
                tracing::info!(%id, consumer = %self.name, "chunk reclaimed: its lease expired");
            }
        }
        Ok(taken.len())
    }

    /// The entries pending on consumer `owner` (at most 64), with their delivery counts.
    pub fn pending(&mut self, owner: &str) -> Result<Vec<Pending>, ConsumerError> {
        let mut pipe = redis::pipe();
        self.add_pending(&mut pipe, owner);
        match self.conn.pipe(&pipe) {
            Err(e) if is_no_pool(&e) => Ok(Vec::new()),
            Err(e) => Err(ConsumerError::Redis(e)),
            Ok(replies) => match replies.into_iter().next() {
                Some(reply) => Ok(wire::pending_reply(reply)?),
                None => Ok(Vec::new()),
            },
        }
    }

    fn add_pending(&self, pipe: &mut redis::Pipeline, owner: &str) {
        pipe.cmd("XPENDING")
            .arg(&self.keys.chunks)
            .arg(GROUP)
            .arg("-")
            .arg("+")
            .arg(PEL_BATCH)
            .arg(owner);
    }

    /// Settles the entries pending on `dead`, a worker that died: each is failed at once
    /// (`WorkerLost`, or `Poisoned` when it had more than one try), or, when it has tries
    /// left and there is an `heir`, handed to the heir (the dead worker's replacement, which
    /// reads its own pending list first). Then `dead` leaves the group.
    pub fn fail_lost(
        &mut self,
        dead: &str,
        heir: Option<&str>,
    ) -> Result<LostReport, ConsumerError> {
        let mut report = LostReport::default();
        // Bounded: each round settles every entry it sees, so a second round sees only
        // entries that arrived meanwhile (none: `dead` is dead).
        for _ in 0..4 {
            let pending = self.pending(dead)?;
            if pending.is_empty() {
                break;
            }
            for p in pending {
                self.settle_lost(&p, heir, &mut report)?;
            }
        }
        match self.conn.query(
            redis::cmd("XGROUP")
                .arg("DELCONSUMER")
                .arg(&self.keys.chunks)
                .arg(GROUP)
                .arg(dead),
        ) {
            Err(e) if !is_no_pool(&e) => return Err(ConsumerError::Redis(e)),
            _ => {}
        }
        if !report.failed.is_empty() || !report.handed.is_empty() {
            tracing::warn!(
                worker = dead,
                failed = report.failed.len(),
                handed = report.handed.len(),
                "a worker died: its chunks settled"
            );
        }
        Ok(report)
    }

    fn settle_lost(
        &mut self,
        p: &Pending,
        heir: Option<&str>,
        report: &mut LostReport,
    ) -> Result<(), ConsumerError> {
        let reply = self
            .conn
            .query(
                redis::cmd("XRANGE")
                    .arg(&self.keys.chunks)
                    .arg(p.id)
                    .arg(p.id),
            )
            .map_err(ConsumerError::Redis)?;
        let fields = wire::entries_of(reply)?
            .into_iter()
            .next()
            .and_then(|(_, f)| f);
        let Some(fields) = fields else {
            self.ack(p.id).map_err(ConsumerError::Redis)?;
            report.dropped += 1;
            return Ok(());
        };
        let mut entry = match wire::decode_chunk(p.id, fields) {
            Ok(entry) => entry,
            Err(bad) => {
                self.drop_malformed(p.id, &bad)
                    .map_err(ConsumerError::Redis)?;
                report.dropped += 1;
                return Ok(());
            }
        };
        entry.deliveries = p.deliveries;
        let place = (entry.job, entry.index);
        match heir {
            Some(heir) if p.deliveries < entry.tries && entry.fingerprint == self.fingerprint => {
                self.renew_for(heir, &[p.id])?;
                report.handed.push(place);
            }
            _ if entry.fingerprint != self.fingerprint => {
                self.park(p.id, p.deliveries.saturating_sub(1), &entry.fingerprint)
                    .map_err(ConsumerError::Redis)?;
            }
            _ => {
                let outcome = exhausted(p.deliveries, entry.tries);
                self.write(&entry, p.deliveries, &outcome)
                    .map_err(ConsumerError::Redis)?;
                report.failed.push(place);
            }
        }
        Ok(())
    }

    fn ack(&mut self, id: EntryId) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("XACK")
            .arg(&self.keys.chunks)
            .arg(GROUP)
            .arg(id)
            .ignore();
        pipe.cmd("XDEL").arg(&self.keys.chunks).arg(id).ignore();
        self.conn.pipe(&pipe).map(drop)
    }

    /// Acknowledges and deletes a malformed entry, with a `Malformed` outcome when its place
    /// is known (so the client still gets one outcome for it).
    fn drop_malformed(&mut self, id: EntryId, bad: &Bad) -> Result<(), RedisError> {
        tracing::warn!(%id, error = %bad.error, "malformed chunk entry dropped");
        match bad.at {
            Some((job, index)) => {
                let why = bad.error.to_string();
                self.write_parts(id, job, index, 1, wire::KIND_MALFORMED, why.as_bytes())
            }
            None => self.ack(id),
        }
    }

    /// Hands `id` to the parked consumer of build `build` with its delivery count set to
    /// `deliveries`.
    fn park(
        &mut self,
        id: EntryId,
        deliveries: u32,
        build: &Fingerprint,
    ) -> Result<(), RedisError> {
        self.conn
            .query(
                redis::cmd("XCLAIM")
                    .arg(&self.keys.chunks)
                    .arg(GROUP)
                    .arg(keys::parked(build))
                    .arg(0)
                    .arg(id)
                    .arg("RETRYCOUNT")
                    .arg(deliveries)
                    .arg("JUSTID"),
            )
            .map(drop)
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The outcome of a chunk whose `deliveries` used up its `tries`.
fn exhausted(deliveries: u32, tries: u32) -> Outcome {
    if tries <= 1 {
        Outcome::WorkerLost
    } else {
        Outcome::Poisoned { deliveries }
    }
}

/// A reply of Redis that does not have the shape of its command's (no entry to name: the
/// id is zero).
fn malformed(error: EntryError) -> ClaimError {
    ClaimError::Malformed {
        id: EntryId { ms: 0, seq: 0 },
        error,
    }
}

fn claim_error(e: RedisError) -> ClaimError {
    if is_no_pool(&e) {
        ClaimError::NoPool
    } else {
        ClaimError::Redis(e)
    }
}
