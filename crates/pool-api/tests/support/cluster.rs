//! A cluster for tests: a real `redis-server` (pool-testkit's `RedisServer`) and hosts that
//! are separate processes of the test binary (a `Process` child calling `cluster::serve`),
//! each with worker processes of its own. Shared by tests/cluster.rs and the cluster cell of
//! tests/pool.rs's matrix.

#![allow(dead_code)]

use std::time::Duration;

use pool_api::{Pool, Process, ProcessHandle, cluster};
use pool_testkit::RedisServer;

/// The lease of the tests' hosts: a vanished host's chunks are taken over after it. Long
/// beside the third of it at which a supervisor renews its running chunks, so that a loaded
/// machine (a renewal late by seconds) does not let a host take over chunks of a live one.
pub(crate) const LEASE: Duration = Duration::from_secs(5);

/// The Redis timeouts of the hosts and pools: ones a loaded machine does not run out (a
/// reply a second late is no error here). A killed Redis still shows at once, its
/// connections refused or reset.
pub(crate) const TIMEOUTS: cluster::Timeouts = cluster::Timeouts {
    connect: Duration::from_secs(10),
    io: Duration::from_secs(10),
};

/// A host of another build (its fingerprint is not this binary's): it serves the pool but
/// never runs its chunks.
pub(crate) fn foreign_host_main(args: (String, String)) -> bool {
    let (url, name) = args;
    let options = cluster::HostOptions::new(name, cluster::Fingerprint([9; 32]), never_run)
        .host_id("foreign")
        .processes(1)
        .lease(LEASE)
        .claim_block(Duration::from_millis(100));
    cluster::serve(&url, options).is_ok()
}

fn never_run(_: &[u8], _: &[u8], _: &mut Vec<u8>) -> Result<(), String> {
    Err("a foreign host ran a chunk".into())
}

/// A host: `cluster::serve` in a process of its own, until killed.
pub(crate) fn host_main(args: (String, String, String, usize)) -> bool {
    let (url, name, host, processes) = args;
    let options = cluster::options(&name)
        .unwrap()
        .host_id(host)
        .processes(processes)
        .lease(LEASE)
        .claim_block(Duration::from_millis(100))
        .timeouts(TIMEOUTS)
        .grace(Duration::from_secs(1));
    cluster::serve(&url, options).is_ok()
}

/// A Redis and the hosts serving one pool name; the hosts are killed on drop.
pub(crate) struct Cluster {
    pub(crate) redis: RedisServer,
    pub(crate) name: String,
    hosts: Vec<(String, ProcessHandle<bool>)>,
}

impl Cluster {
    pub(crate) fn new(name: &str, hosts: usize, processes: usize) -> Cluster {
        let mut cluster = Cluster {
            redis: RedisServer::start(),
            name: name.to_string(),
            hosts: Vec::new(),
        };
        for i in 0..hosts {
            cluster.add_host(&format!("h{i}"), processes);
        }
        cluster
    }

    pub(crate) fn url(&self) -> String {
        self.redis.url()
    }

    pub(crate) fn add_host(&mut self, id: &str, processes: usize) {
        let args = (self.url(), self.name.clone(), id.to_string(), processes);
        let handle = Process::new(host_main, args)
            .unwrap()
            .daemon(true)
            .start()
            .unwrap();
        self.hosts.push((id.to_string(), handle));
    }

    /// Whether every host process still runs.
    pub(crate) fn hosts_alive(&mut self) -> bool {
        self.hosts.iter_mut().all(|(_, handle)| handle.is_alive())
    }

    /// Starts a host of another build (see [`foreign_host_main`]).
    pub(crate) fn add_foreign_host(&mut self) {
        let args = (self.url(), self.name.clone());
        let handle = Process::new(foreign_host_main, args)
            .unwrap()
            .daemon(true)
            .start()
            .unwrap();
        self.hosts.push(("foreign".to_string(), handle));
    }

    /// SIGKILLs host `id` (its workers die with it) and waits for its exit.
    pub(crate) fn kill_host(&mut self, id: &str) {
        let at = self.hosts.iter().position(|(h, _)| h == id).unwrap();
        let (_, mut handle) = self.hosts.remove(at);
        handle.kill().unwrap();
        handle.wait().unwrap();
    }

    pub(crate) fn builder(&self) -> pool_api::PoolBuilder {
        Pool::builder()
            .redis(self.url())
            .name(&self.name)
            .redis_timeout(TIMEOUTS.io)
    }

    pub(crate) fn pool(&self) -> Pool {
        self.builder().build().unwrap()
    }

    pub(crate) fn redis(&self) -> redis::Connection {
        let con = redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(TIMEOUTS.connect)
            .unwrap();
        con.set_read_timeout(Some(TIMEOUTS.io)).unwrap();
        con
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, handle) in &self.hosts {
            let _ = handle.kill();
        }
        for (_, handle) in &mut self.hosts {
            let _ = handle.wait();
        }
    }
}
