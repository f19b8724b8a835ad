//! `pool demo cluster` and `pool worker`: the same `Pool` over Redis Streams, with hosts that
//! are `pool worker` processes of this binary (on loopback here; on any machine that reaches
//! the Redis instance in a real cluster).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use pool_api::{Bytes, Error, Pool, cluster};

use super::{DemoArgs, Outcome};

/// The environment variable that tells a host's workers which host they belong to (they
/// inherit it), so that tasks can say where they ran.
const HOST_ENV: &str = "POOL_DEMO_HOST";

/// The pool name the demo's client and hosts share.
const NAME: &str = "demo";

/// `pool worker`: serve a cluster pool's chunks with this binary's functions.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The Redis instance: `redis://[user:password@]host:port/db`.
    #[arg(long, value_name = "URL")]
    redis: String,
    /// Worker processes (default: the cores).
    #[arg(long, value_name = "N")]
    processes: Option<usize>,
    /// The pool name to serve.
    #[arg(long, default_value = NAME)]
    name: String,
    /// This host's id (default HOSTNAME-PID).
    #[arg(long)]
    host_id: Option<String>,
    /// The lease in milliseconds: a vanished host's chunks are taken over after it.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    lease_ms: u64,
}

/// Runs a host until killed.
pub(crate) fn worker(args: &WorkerArgs) -> Result<(), String> {
    let mut options = cluster::options(&args.name)
        .map_err(|e| e.to_string())?
        .lease(Duration::from_millis(args.lease_ms));
    if let Some(n) = args.processes {
        options = options.processes(n);
    }
    if let Some(id) = &args.host_id {
        options = options.host_id(id.clone());
        // SAFETY: before any thread of this program is started.
        unsafe { std::env::set_var(HOST_ENV, id) };
    }
    eprintln!(
        "pool worker: serving pool {:?} from {} (build {})",
        args.name,
        args.redis,
        cluster::fingerprint().map_err(|e| e.to_string())?
    );
    cluster::serve(&args.redis, options).map_err(|e| e.to_string())
}

fn host() -> String {
    std::env::var(HOST_ENV).unwrap_or_else(|_| "?".into())
}

fn square_sum_of(numbers: Vec<u64>) -> (u64, String) {
    (numbers.iter().map(|x| x * x).sum(), host())
}

/// Resizes a PNG to 300x300: the image travels as bytes, so a host on another machine needs
/// no shared disk.
fn resize_png((name, png): (String, Bytes)) -> Result<(String, Bytes, String), String> {
    let img = image::load_from_memory(&png).map_err(|e| e.to_string())?;
    let resized = img.resize_exact(300, 300, image::imageops::FilterType::Triangle);
    let mut out = std::io::Cursor::new(Vec::new());
    resized
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok((name, Bytes::from(out.into_inner()), host()))
}

fn slow_step(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    host()
}

/// A `redis-server` of the demo's own, on a free loopback port, killed on drop.
struct OwnRedis {
    child: Child,
    url: String,
}

impl OwnRedis {
    fn start() -> Result<OwnRedis, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start redis-server ({e}): install the Debian package redis-server, \
                     or give --redis URL"
                )
            })?;
        let redis = OwnRedis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(port) {
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Hosts started as `pool worker` subprocesses, killed on drop.
struct Hosts(Vec<(String, Child)>);

impl Hosts {
    fn start(url: &str, count: usize) -> Result<Hosts, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut hosts = Hosts(Vec::new());
        for i in 1..=count {
            let id = format!("host{i}");
            let child = Command::new(&exe)
                .args(["worker", "--redis", url, "--processes", "2", "--name", NAME])
                .args(["--host-id", &id, "--lease-ms", "1500"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            hosts.0.push((id, child));
        }
        Ok(hosts)
    }

    /// SIGKILLs host `id` (its worker processes die with it).
    fn kill(&mut self, id: &str) {
        if let Some((_, child)) = self.0.iter_mut().find(|(h, _)| h == id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn fail(e: Error) -> String {
    e.to_string()
}

fn tally(hosts: impl IntoIterator<Item = String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for h in hosts {
        *counts.entry(h).or_default() += 1;
    }
    counts
        .iter()
        .map(|(h, n)| format!("{h}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `pool demo cluster`: Redis (its own, or `--redis URL`), three hosts, seed 001's sum of
/// squares and image batch through a cluster pool, then a host SIGKILLed mid-run.
pub(crate) fn cluster_demo(args: &DemoArgs) -> Outcome {
    let own;
    let url = match args.redis() {
        Some(url) => url.to_string(),
        None => {
            own = OwnRedis::start()?;
            println!("Started redis-server at {}", own.url);
            own.url.clone()
        }
    };
    let mut hosts = Hosts::start(&url, 3)?;
    println!("Started 3 hosts (pool worker --processes 2): host1, host2, host3");
    let t = Instant::now();
    let pool = Pool::builder()
        .redis(&url)
        .name(NAME)
        .retries(1)
        .build()
        .map_err(fail)?;

    // Seed 001: the sum of squares of 1..10 in chunks of 2.
    let numbers: Vec<u64> = (1..=10).collect();
    let chunks: Vec<Vec<u64>> = numbers.chunks(2).map(<[u64]>::to_vec).collect();
    let results = pool.map(square_sum_of, chunks).map_err(fail)?;
    println!(
        "Total square sum: {} (first answer {:.0} ms after the hosts were started)",
        results.iter().map(|(s, _)| s).sum::<u64>(),
        t.elapsed().as_secs_f64() * 1e3
    );
    println!(
        "  chunks per host: {}",
        tally(results.into_iter().map(|(_, h)| h))
    );

    // Seed 001: the image batch, as bytes.
    let mut jobs = Vec::new();
    for i in 0..6u32 {
        let img = image::RgbImage::from_fn(640 + 160 * (i % 3), 480, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, (40 * i) as u8])
        });
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        jobs.push((format!("image{}.png", i + 1), Bytes::from(png.into_inner())));
    }
    for outcome in pool.map_chunked(resize_png, jobs, 1).map_err(fail)? {
        let (name, png, host) = outcome?;
        let img = image::load_from_memory(&png).map_err(|e| e.to_string())?;
        println!(
            "Processed {name} on {host}: {}x{}",
            img.width(),
            img.height()
        );
    }

    // A host killed mid-run: its queued chunks run elsewhere at once, its started ones
    // after the lease (1.5 s), again (retries(1): the steps are idempotent).
    let steps = 24;
    let job = pool
        .map_async(slow_step, vec![400u64; steps], Some(1))
        .map_err(fail)?;
    std::thread::sleep(Duration::from_millis(600));
    hosts.kill("host2");
    let killed = Instant::now();
    println!("Killed host2 (SIGKILL) mid-run");
    let ran = job.get().map_err(fail)?;
    println!(
        "All {} steps finished {:.1} s after the kill; steps per host: {}",
        ran.len(),
        killed.elapsed().as_secs_f64(),
        tally(ran)
    );
    let stats = pool.stats();
    println!(
        "Chunks reclaimed from host2: {}, run again elsewhere: {}",
        stats.reclaimed, stats.retried
    );
    pool.close();
    pool.join().map_err(fail)
}
