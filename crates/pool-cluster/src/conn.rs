//! One blocking connection to Redis, with every wait bounded.
//!
//! A broker that goes away must be a typed error in bounded time, never a hang, so the
//! connection has a connect timeout and read and write timeouts on every command; a blocking
//! read (XREAD ... BLOCK) gets its block time plus the I/O timeout. After an error that is
//! not the server's answer (I/O, timeout, a dropped or unparsable connection) the connection
//! is out of step and is dropped; the next command connects again, once, within the same
//! bounds.

use std::time::Duration;

use redis::{Cmd, ConnectionLike, ErrorKind, Pipeline, RedisError, RedisResult, Value};

/// How long a connection may take to open, and a command to be written and answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting (TCP, TLS and authentication). Default 2 s.
    pub connect: Duration,
    /// Writing a command and reading its reply, beyond any block time the command asks for.
    /// Default 5 s.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            io: Duration::from_secs(5),
        }
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("rediss:// needs pool-cluster's `tls` feature")]
    TlsDisabled,
    #[error("Redis: {0}")]
    Redis(#[source] RedisError),
}

/// A connection that reconnects after a broken one.
pub(crate) struct Conn {
    client: redis::Client,
    con: Option<redis::Connection>,
    timeouts: Timeouts,
}

impl Conn {
    /// Parses `url` (user and password in it are used for AUTH) and connects.
    pub(crate) fn open(url: &str, timeouts: Timeouts) -> Result<Conn, OpenError> {
        if url.starts_with("rediss://") && !cfg!(feature = "tls") {
            return Err(OpenError::TlsDisabled);
        }
        let client = redis::Client::open(url).map_err(OpenError::Redis)?;
        let mut conn = Conn {
            client,
            con: None,
            timeouts,
        };
        conn.connection().map_err(OpenError::Redis)?;
        Ok(conn)
    }

    fn connection(&mut self) -> RedisResult<&mut redis::Connection> {
        if self.con.as_ref().is_some_and(|c| !c.is_open()) {
            self.con = None;
        }
        let con = match self.con.take() {
            Some(con) => con,
            None => {
                let con = self
                    .client
                    .get_connection_with_timeout(self.timeouts.connect)?;
                con.set_write_timeout(Some(self.timeouts.io))?;
                con.set_read_timeout(Some(self.timeouts.io))?;
                con
            }
        };
        Ok(self.con.insert(con))
    }

    /// Runs `cmd`.
    pub(crate) fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let result = cmd.query(self.connection()?);
        self.keep_if_in_step(result)
    }

    /// Runs `cmd`, which may block on the server for up to `block`.
    pub(crate) fn query_blocking(&mut self, cmd: &Cmd, block: Duration) -> RedisResult<Value> {
        let io = self.timeouts.io;
        let con = self.connection()?;
        con.set_read_timeout(Some(block + io))?;
        let result = cmd.query(con);
        let result = self.keep_if_in_step(result);
        if let Some(con) = &self.con {
            con.set_read_timeout(Some(io))?;
        }
        result
    }

    /// Runs `pipe` (atomic or not), one reply per command not ignored.
    pub(crate) fn pipe(&mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let result = pipe.query(self.connection()?);
        self.keep_if_in_step(result)
    }

    /// Runs `pipe`, whose last command may block on the server for up to `block`.
    pub(crate) fn pipe_blocking(
        &mut self,
        pipe: &Pipeline,
        block: Duration,
    ) -> RedisResult<Vec<Value>> {
        let io = self.timeouts.io;
        let con = self.connection()?;
        con.set_read_timeout(Some(block + io))?;
        let result = pipe.query(con);
        let result = self.keep_if_in_step(result);
        if let Some(con) = &self.con {
            con.set_read_timeout(Some(io))?;
        }
        result
    }

    fn keep_if_in_step<T>(&mut self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if !matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) {
                self.con = None;
            }
        }
        result
    }
}

/// Whether `e` says the pool's stream or group does not exist (never created, expired with
/// its client, or deleted while we were blocked on it).
pub(crate) fn is_no_pool(e: &RedisError) -> bool {
    matches!(e.code(), Some("NOGROUP" | "UNBLOCKED"))
        || e.to_string().contains("NOGROUP")
        || e.to_string().contains("UNBLOCKED")
}

/// Milliseconds for a command argument, at least 1 (0 means "forever" to BLOCK).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
