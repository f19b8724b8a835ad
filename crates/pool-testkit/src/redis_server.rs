//! A real `redis-server` for tests, on loopback, owned by the test.
//!
//! The cluster backend rides on Redis Streams, and its promises (a dead consumer's entries
//! are reclaimed, a dead client's keys expire, a dead broker is a typed error) are promises
//! about what a real server does, so its tests run the real thing rather than a mock. Redis
//! starts on loopback in milliseconds, which makes one server per test affordable: tests
//! never share state, and a test may kill its server.
//!
//! A server here has no persistence (`--save "" --appendonly no`), listens only on
//! 127.0.0.1, works in a fresh temporary directory, and is killed (SIGKILL) and reaped when
//! its [`RedisServer`] is dropped, so nothing outlives the test. Redis cannot bind port 0,
//! so a free port is found by binding a listener to port 0 and dropping it; if another
//! process takes the port in between, the start fails and is retried on another port.
//!
//! Without `redis-server` on `PATH` the start panics with a message naming the Debian
//! package: a missing server must turn the run red, never skip the tests silently.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a started server has to answer `PING` before the start counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many ports are tried before [`RedisServer::start`] gives up.
const START_ATTEMPTS: u32 = 5;

/// The message given when the server binary is missing.
const MISSING: &str = "redis-server is not on PATH: the cluster tests need a real Redis. \
    Install the Debian package `redis-server` (apt-get install -y redis-server); \
    .ci/run does this when it is missing";

/// A `redis-server` child process listening on 127.0.0.1, killed and reaped on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed (the message names the Debian package), or when
    /// no server could be started after several ports.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`start`](RedisServer::start), with extra configuration arguments for the server
    /// (e.g. `["--requirepass", "secret"]`).
    pub fn start_with(args: &[&str]) -> RedisServer {
        let dir = temp_dir();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match launch(&dir, port, &args) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                        args,
                    };
                }
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!(
            "could not start redis-server after {START_ATTEMPTS} attempts: {}",
            failures.join("; ")
        );
    }

    /// The URL a client connects with: `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port the server listens on (kept across [`restart`](RedisServer::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL now and reaps it, for tests where the broker dies.
    /// Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child is ours and not yet reaped, so its pid cannot have been reused.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a fresh one (empty: there is no persistence)
    /// on the same port with the same arguments, and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When the port cannot be bound again within a few attempts.
    pub fn restart(&mut self) {
        self.kill();
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match launch(&self.dir, self.port, &self.args) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => failures.push(e),
            }
            // The old server's socket is gone once it is reaped; another process may have
            // taken the port meanwhile, which only time can tell.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "could not restart redis-server on port {}: {}",
            self.port,
            failures.join("; ")
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener on 127.0.0.1:0");
    listener
        .local_addr()
        .expect("the listener's address")
        .port()
}

/// A fresh directory for one server (its working directory and log).
fn temp_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pool-redis-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the server's temporary directory");
    dir
}

/// Starts `redis-server` on `port` and waits for it to answer, or says why it did not.
fn launch(dir: &Path, port: u16, args: &[String]) -> Result<Child, String> {
    let log_path = dir.join(format!("redis-{port}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| format!("create log: {e}"))?;
    let err_log = log.try_clone().map_err(|e| format!("clone log: {e}"))?;
    let spawned = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no", "--protected-mode", "no"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
        Err(e) => return Err(format!("spawn redis-server: {e}")),
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("redis-server exited ({status}): {}", log.trim()));
        }
        if answers_ping(port) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no answer to PING within {READY_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether a server on `port` answers an inline `PING` (any reply counts: a server that
/// requires a password answers `-NOAUTH`, and is up).
fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && !line.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_dies_and_restarts_on_the_same_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert!(answers_ping(port));
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}/0"));
        let pid = server.pid().unwrap();
        server.kill();
        assert!(server.pid().is_none());
        assert!(!answers_ping(port));
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
        server.restart();
        assert_eq!(server.port(), port);
        assert!(answers_ping(port));
        let dir = server.dir.clone();
        drop(server);
        assert!(!answers_ping(port));
        assert!(!dir.exists());
    }

    #[test]
    fn two_servers_get_two_ports() {
        let a = RedisServer::start();
        let b = RedisServer::start_with(&["--requirepass", "secret"]);
        assert_ne!(a.port(), b.port());
        assert!(answers_ping(b.port()), "a server with a password is up too");
    }
}
