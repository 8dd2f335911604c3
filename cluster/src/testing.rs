//! A real NATS cluster on loopback, for tests and benchmarks (feature `testing`).
//!
//! [`NatsCluster::start`] runs `n` `nats-server` processes with JetStream (file storage in a
//! temporary directory) on free loopback ports, routed to each other, and waits until
//! JetStream answers through every one of them and a stream with `n` replicas can be created.
//! Servers can be stopped, killed, paused and started again on the same ports and storage.
//! Dropping the cluster kills every server and removes the directory. Clusters of one test
//! process take turns: `start` waits until the previous cluster is dropped, so parallel tests
//! do not starve each other's servers (see `Turn`).
//!
//! The `nats-server` binary is taken from `$NATS_SERVER`, else from `PATH`, else from
//! `/usr/sbin` or `/usr/bin` (where Debian's package puts it). Without one, `start` fails: a
//! test that needs NATS fails rather than passing without it.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use futures_util::StreamExt;

use crate::nats::{Nats, NatsOptions};

/// How long a cluster (or a restarted server) may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running NATS cluster on loopback.
pub struct NatsCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    servers: Vec<Server>,
    /// Held for the cluster's life: one cluster per test process at a time.
    _turn: Turn,
}

/// The right to run a NATS cluster in this process. Tests that each start a 3-server
/// cluster, run in parallel on a small machine, starve each other's Raft heartbeats into
/// leader elections and time-outs that test nothing; taking turns keeps each test's cluster
/// as healthy as a real one, at the cost of running them one after another.
struct Turn;

static TURN: (std::sync::Mutex<bool>, std::sync::Condvar) =
    (std::sync::Mutex::new(false), std::sync::Condvar::new());

impl Turn {
    fn take() -> Turn {
        let (taken, freed) = &TURN;
        // A test that panicked while holding the turn has released it (Drop runs on unwind):
        // the poison carries no broken state.
        let mut busy = taken.lock().unwrap_or_else(|p| p.into_inner());
        while *busy {
            busy = freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy = true;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (taken, freed) = &TURN;
        *taken.lock().unwrap_or_else(|p| p.into_inner()) = false;
        freed.notify_one();
    }
}

struct Server {
    name: String,
    client_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster")
            .field("dir", &self.dir.path())
            .field("urls", &self.urls())
            .finish()
    }
}

/// The `nats-server` binary, or an error saying how to get one.
pub fn nats_server_binary() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("NATS_SERVER={} is not a file", p.display()),
            ));
        }
        return Ok(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    dirs.into_iter()
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "nats-server not found (install Debian's `nats-server` package, or set \
                 NATS_SERVER to the binary)",
            )
        })
}

/// The configuration file of server `i` of `n`, with the given ports and store directory.
/// The same shape as the hand-run files in `cluster/nats/`.
pub fn server_config(
    name: &str,
    client_port: u16,
    cluster_ports: &[u16],
    i: usize,
    store_dir: &Path,
) -> String {
    let mut c = format!(
        "server_name: \"{name}\"\nlisten: \"127.0.0.1:{client_port}\"\n\
         jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 268435456\n  \
         max_file_store: 4294967296\n}}\n",
        store_dir.display()
    );
    if cluster_ports.len() > 1 {
        let routes: Vec<String> = cluster_ports
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, p)| format!("    \"nats-route://127.0.0.1:{p}\""))
            .collect();
        c.push_str(&format!(
            "cluster {{\n  name: \"chatstore\"\n  listen: \"127.0.0.1:{}\"\n  routes: [\n{}\n  ]\n}}\n",
            cluster_ports[i],
            routes.join("\n")
        ));
    }
    c
}

fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Hold them all at once so no two are the same, then let them go for the servers.
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

impl NatsCluster {
    /// Starts `n` servers (1 or more) and waits until the cluster is ready. Fails if
    /// `nats-server` is missing or the cluster does not become ready in time.
    pub fn start(n: usize) -> io::Result<NatsCluster> {
        let bin = nats_server_binary()?;
        let mut last = None;
        // A port taken by someone else between picking it and the server binding it fails
        // the start: try again with new ports.
        for _ in 0..3 {
            match Self::try_start(&bin, n, Turn::take()) {
                Ok(c) => return Ok(c),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no attempt")))
    }

    fn try_start(bin: &Path, n: usize, turn: Turn) -> io::Result<NatsCluster> {
        let dir = tempfile::Builder::new().prefix("nats-cluster").tempdir()?;
        let ports = free_ports(2 * n.max(1))?;
        let (client_ports, cluster_ports) = ports.split_at(n.max(1));
        let mut servers = Vec::new();
        for (i, &client_port) in client_ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            fs::create_dir_all(&store)?;
            let config = dir.path().join(format!("{name}.conf"));
            fs::write(
                &config,
                server_config(&name, client_port, cluster_ports, i, &store),
            )?;
            servers.push(Server {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port,
                config,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            dir,
            bin: bin.to_path_buf(),
            servers,
            _turn: turn,
        };
        for i in 0..cluster.servers.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_ready(READY_TIMEOUT)?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> io::Result<()> {
        let s = &mut self.servers[i];
        if s.child.is_some() {
            return Ok(());
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&s.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        s.child = Some(child);
        Ok(())
    }

    /// Number of servers (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether it has no servers (never: `start` makes at least one).
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Client URL of server `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].client_port)
    }

    /// Client URLs of every server.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Connection options for every server of the cluster.
    pub fn options(&self, name: &str) -> NatsOptions {
        NatsOptions {
            urls: self.urls(),
            name: name.to_string(),
            ..NatsOptions::default()
        }
    }

    /// Connects to the cluster.
    pub fn connect(&self, name: &str) -> crate::Result<Nats> {
        Nats::connect(self.options(name))
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.servers[i].log).unwrap_or_default()
    }

    /// Whether server `i` runs (it was started and has not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        match &mut self.servers[i].child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&mut self, i: usize, sig: libc::c_int) -> io::Result<()> {
        let Some(child) = &self.servers[i].child else {
            return Err(io::Error::other(format!(
                "server {} is not running",
                self.servers[i].name
            )));
        };
        let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
        // SAFETY: sending a signal to our own child process.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kills server `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            c.wait()?;
        }
        Ok(())
    }

    /// Stops server `i` gracefully (SIGTERM), waiting for it to exit; kills it if it has not
    /// within 30 s.
    pub fn stop(&mut self, i: usize) -> io::Result<()> {
        if self.servers[i].child.is_none() {
            return Ok(());
        }
        self.signal(i, libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = &mut self.servers[i].child {
                if c.try_wait()?.is_some() {
                    self.servers[i].child = None;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill(i)
    }

    /// Freezes server `i` (SIGSTOP).
    pub fn pause(&mut self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGSTOP)
    }

    /// Thaws server `i` (SIGCONT).
    pub fn resume(&mut self, i: usize) -> io::Result<()> {
        self.signal(i, libc::SIGCONT)
    }

    /// Starts server `i` again (same ports, same storage) and waits until JetStream answers
    /// through it.
    pub fn restart(&mut self, i: usize) -> io::Result<()> {
        self.spawn(i)?;
        self.wait_server(i, Instant::now() + READY_TIMEOUT)
    }

    /// Waits until JetStream answers through every running server and a stream with as many
    /// replicas as servers can be created.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        for i in 0..self.servers.len() {
            if self.servers[i].child.is_some() {
                self.wait_server(i, deadline)?;
            }
        }
        let replicas = self.servers.len();
        let nats = self.connect_until(0, deadline)?;
        let mut last = String::new();
        while Instant::now() < deadline {
            let js = nats.jetstream().clone();
            let probe = nats.block_on(async move {
                let cfg = stream::Config {
                    name: "ready-probe".into(),
                    subjects: vec!["ready.probe".into()],
                    num_replicas: replicas,
                    storage: stream::StorageType::Memory,
                    ..Default::default()
                };
                js.create_stream(cfg).await.map_err(|e| e.to_string())?;
                js.delete_stream("ready-probe")
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            });
            match probe {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(self.not_ready(format!("no stream with {replicas} replicas: {last}")))
    }

    /// Waits until every stream of the cluster (shard streams, KV buckets, object stores)
    /// has a leader and every replica of it is current: the state in which one server may
    /// die without any stream losing what it acknowledged or stalling on a replica that never
    /// caught up. A stream created a moment ago is not there yet.
    pub fn wait_replicated(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let nats = self
            .connect("replication-check")
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut last = String::new();
        while Instant::now() < deadline {
            let js = nats.jetstream().clone();
            let lagging = nats.block_on(async move {
                let mut streams = js.streams();
                let mut lagging = Vec::new();
                while let Some(info) = streams.next().await {
                    let info = info.map_err(|e| e.to_string())?;
                    let ok = info.cluster.as_ref().is_some_and(|c| {
                        c.leader.is_some() && c.replicas.iter().all(|r| r.current && !r.offline)
                    });
                    if !ok {
                        lagging.push(info.config.name.clone());
                    }
                }
                Ok::<_, String>(lagging)
            });
            match lagging {
                Ok(Ok(l)) if l.is_empty() => return Ok(()),
                Ok(Ok(l)) => last = format!("not yet replicated: {l:?}"),
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(self.not_ready(last))
    }

    fn wait_server(&mut self, i: usize, deadline: Instant) -> io::Result<()> {
        let nats = self.connect_until(i, deadline)?;
        let mut last = String::new();
        while Instant::now() < deadline {
            let js = nats.jetstream().clone();
            match nats.block_on(async move { js.query_account().await.map_err(|e| e.to_string()) })
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(self.not_ready(format!(
            "JetStream does not answer through {}: {last}",
            self.servers[i].name
        )))
    }

    fn connect_until(&mut self, i: usize, deadline: Instant) -> io::Result<Nats> {
        let mut last = String::new();
        while Instant::now() < deadline {
            if !self.is_running(i) {
                let e = self.not_ready(format!("server {} exited", self.servers[i].name));
                let kind = if self.log(i).contains("address already in use") {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(kind, e.to_string()));
            }
            let opts = NatsOptions {
                urls: vec![self.url(i)],
                name: "ready-check".into(),
                connect_timeout: Duration::from_secs(1),
                worker_threads: 1,
                ..NatsOptions::default()
            };
            match Nats::connect(opts) {
                Ok(n) => return Ok(n),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.not_ready(format!(
            "cannot connect to {}: {last}",
            self.servers[i].name
        )))
    }

    fn not_ready(&self, why: String) -> io::Error {
        let logs: Vec<String> = (0..self.servers.len())
            .map(|i| {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} ---\n{}", self.servers[i].name, tail.join("\n"))
            })
            .collect();
        io::Error::other(format!(
            "NATS cluster not ready: {why}\n{}",
            logs.join("\n")
        ))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test's NATS side: elections, lost peers, refused requests.
            for (i, s) in self.servers.iter().enumerate() {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(80)..];
                eprintln!(
                    "--- last lines of NATS server {} ({}, {} bytes) ---\n{}",
                    s.name,
                    s.log.display(),
                    log.len(),
                    tail.join("\n")
                );
            }
        }
        for s in &mut self.servers {
            if let Some(mut c) = s.child.take() {
                if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                    // A paused server must run again to die of SIGKILL promptly... it does
                    // not need to, but reaping is simpler after SIGCONT.
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
