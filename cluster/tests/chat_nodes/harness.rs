//! Chat nodes as real processes (the `chat-node` binary) on a real NATS cluster, and
//! WebSocket devices that record every frame they get.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chatstore_cluster::testing::NatsCluster;
use chatstore_cluster::{shard_key, LeaseBucket, LeaseConfig};
use futures_util::stream::{SplitSink, StreamExt};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SHARDS: u32 = 8;
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// Seconds since this test process first asked: the time base of node logs and test
/// milestones, so that a failure's log reads as one timeline.
pub fn clock() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The node binary cargo built for these tests (a missing one fails the build, not the test).
fn node_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chat-node"))
}

pub struct Node {
    pub name: String,
    args: Vec<String>,
    child: Option<Child>,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// A 3-server NATS cluster and `n` chat nodes on it, each started with `extra` flags.
pub fn start_cluster_with(n: usize, extra: &[&str]) -> (NatsCluster, tempfile::TempDir, Vec<Node>) {
    let nats = NatsCluster::start(3).expect("a 3-server NATS cluster (is nats-server installed?)");
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes: Vec<Node> = (0..n)
        .map(|i| Node::start_with(&format!("node{i}"), &nats, dir.path(), n, extra))
        .collect();
    (nats, dir, nodes)
}

impl Node {
    /// A chat node with `extra` flags besides the cluster's.
    pub fn start_with(
        name: &str,
        nats: &NatsCluster,
        dir: &std::path::Path,
        nodes: usize,
        extra: &[&str],
    ) -> Node {
        let mut args: Vec<String> = vec![
            "--node".into(),
            name.into(),
            "--nats".into(),
            nats.urls().join(","),
            "--shards".into(),
            SHARDS.to_string(),
            "--lease-ttl-ms".into(),
            LEASE_TTL.as_millis().to_string(),
            "--expect-nodes".into(),
            nodes.to_string(),
            "--port".into(),
            "0".into(),
            "--data".into(),
            dir.join(name).display().to_string(),
            "--argon2-memory-kib".into(),
            "256".into(),
            "--argon2-iterations".into(),
            "1".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut node = Node {
            name: name.to_string(),
            args,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Arc::new(Mutex::new(String::new())),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        assert!(
            node_binary().is_file(),
            "{} is missing: build it with `cargo build --release -p chatstore-cluster --features node`",
            node_binary().display()
        );
        let mut child = Command::new(node_binary())
            .args(&self.args)
            // Rate limits off: the tests send as fast as they can.
            .env("CHAT_SEND_RATE", "100000")
            .env("CHAT_SEND_BURST", "100000")
            .env("CHAT_AUTH_RATE", "100000")
            .env("CHAT_AUTH_BURST", "100000")
            .env("CHAT_CONV_RATE", "100000")
            .env("CHAT_CONV_BURST", "100000")
            .env("CHAT_RECEIPT_RATE", "100000")
            .env("CHAT_RECEIPT_BURST", "100000")
            // Which shards each read of a user's lists asks (tests check it).
            .env("CHAT_NODE_LOG_USER_READS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", node_binary().display()));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (log, log2) = (self.log.clone(), self.log.clone());
        let name = self.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(url) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(url.trim().to_string());
                }
                log.lock()
                    .unwrap()
                    .push_str(&format!("{:8.3} {name} out: {line}\n", clock()));
            }
        });
        let name = self.name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log2.lock()
                    .unwrap()
                    .push_str(&format!("{:8.3} {name} err: {line}\n", clock()));
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(90)) {
            Ok(addr) => self.addr = addr.parse().expect("listening address"),
            Err(_) => {
                let status = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!("{} did not start ({status:?}):\n{}", self.name, self.log())
            }
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn http(&self) -> crate::client::Http {
        crate::client::Http { addr: self.addr }
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal {sig}");
    }

    /// kill -9, then start again on the same data folder (on a new port).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
        if let Some(c) = &self.child {
            // A paused process does not die of SIGKILL until it is continued on some kernels.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// The lease bucket as the nodes configure it.
pub fn leases(nats: &NatsCluster) -> LeaseBucket {
    let conn = nats.connect("test-observer").expect("connect");
    LeaseBucket::open(
        &conn,
        LeaseConfig {
            ttl: LEASE_TTL,
            replicas: 3,
            margin: Duration::from_millis(600),
            ..LeaseConfig::default()
        },
    )
    .expect("lease bucket")
}

/// Who owns `shard` (a node name), waiting for one up to `within`.
pub fn owner(leases: &LeaseBucket, shard: u32, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some((holder, _))) = leases.holder(&shard_key(shard)) {
            return Some(holder);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (up to 30 s) until a node other than `old` holds `shard`'s lease; returns its name.
pub fn new_owner(leases: &LeaseBucket, shard: u32, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match owner(leases, shard, Duration::from_secs(1)) {
            Some(o) if o != old => return o,
            _ => assert!(Instant::now() < deadline, "nobody took shard {shard} over"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until every shard has an owner; returns them.
pub fn all_owned(leases: &LeaseBucket, nodes: &[Node]) -> Vec<String> {
    (0..SHARDS)
        .map(|s| {
            owner(leases, s, Duration::from_secs(60)).unwrap_or_else(|| {
                let logs: String = nodes.iter().map(Node::log).collect();
                panic!("shard {s} has no owner:\n{logs}")
            })
        })
        .collect()
}

pub fn shard_of(conv: u64) -> u32 {
    (conv % SHARDS as u64) as u32
}

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;

/// A connected device: every text frame it gets is recorded, in order.
pub struct Device {
    pub name: String,
    sink: Sink,
    pub frames: Arc<Mutex<Vec<Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Device {
    pub async fn connect(name: &str, addr: SocketAddr, token: &str) -> Device {
        let url = format!("ws://{addr}/ws?token={token}");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: WebSocket connect: {e}"));
        let (sink, mut stream) = ws.split();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let f = frames.clone();
        let reader = tokio::spawn(async move {
            // The end of the connection is recorded too (as a frame of type
            // `connection_closed`), so that a wait that times out can say why.
            let why = loop {
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(v) = serde_json::from_str::<Value>(t.as_str()) {
                            f.lock().unwrap().push(v);
                        }
                    }
                    Some(Ok(Message::Close(c))) => break format!("closed by the server: {c:?}"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("error: {e}"),
                    None => break "the stream ended".to_string(),
                }
            };
            f.lock()
                .unwrap()
                .push(json!({ "type": "connection_closed", "why": why, "at": clock() }));
        });
        let d = Device {
            name: name.to_string(),
            sink,
            frames,
            reader,
        };
        let first = d.wait_for(|v| v["type"] == "unread").await;
        assert_eq!(d.frames.lock().unwrap()[0], first, "{name}: first frame");
        d
    }

    /// The unread summary it got on connecting.
    pub fn unread(&self) -> Value {
        self.frames.lock().unwrap()[0].clone()
    }

    pub async fn wait_for(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.frames.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: a frame did not come",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends any frame.
    pub async fn frame(&mut self, v: Value) {
        self.sink
            .send(Message::text(v.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// Sends a message (with a client key, so that retries are safe) without waiting.
    pub async fn send(&mut self, conv: u64, text: &str, key: &str) {
        let f = json!({ "type": "send", "conversation": conv, "text": text, "client_key": key });
        self.sink
            .send(Message::text(f.to_string()))
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The ack or error for client key `key`, once it came.
    pub async fn answer(&self, key: &str, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .frames
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|v| (v["type"] == "ack" || v["type"] == "error") && v["client_key"] == key)
                .cloned();
            if found.is_some() {
                return found;
            }
            // A closed connection brings no answer: say so now (the caller shows why).
            let closed = self
                .frames
                .lock()
                .unwrap()
                .iter()
                .any(|v| v["type"] == "connection_closed");
            if closed || Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Sends until acked (a refused send is sent again with the same key), for up to
    /// `within`; returns the stored message.
    pub async fn send_until_acked(
        &mut self,
        conv: u64,
        text: &str,
        key: &str,
        within: Duration,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            self.send(conv, text, key).await;
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answer(key, left).await {
                Some(a) if a["type"] == "ack" => return a["message"].clone(),
                Some(a) => {
                    eprintln!("{}: send {key} refused, again: {a}", self.name);
                    self.frames
                        .lock()
                        .unwrap()
                        .retain(|v| v["client_key"] != key);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                None => {
                    let frames = self.frames.lock().unwrap();
                    let last: Vec<String> = frames
                        .iter()
                        .rev()
                        .take(5)
                        .map(|v| v.to_string().chars().take(200).collect())
                        .collect();
                    panic!(
                        "{:8.3} {}: {key} not acked in {within:?}; its last frames, newest \
                         first:\n{}",
                        clock(),
                        self.name,
                        last.join("\n")
                    )
                }
            }
        }
    }

    /// Sends and waits for the ack; returns the stored message.
    pub async fn send_acked(&mut self, conv: u64, text: &str, key: &str) -> Value {
        self.send(conv, text, key).await;
        let a = self
            .answer(key, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{}: no answer for {key}", self.name));
        assert_eq!(a["type"], "ack", "{}: send {key}: {a}", self.name);
        a["message"].clone()
    }

    /// `(conversation, id)` of every message this device got live (pushed, or acked as its
    /// own send), in arrival order.
    pub fn live_ids(&self) -> Vec<(u64, u64)> {
        self.ids_of(&["message", "ack"])
    }

    /// `(conversation, id)` of every message pushed to this device, in arrival order.
    pub fn pushed_ids(&self) -> Vec<(u64, u64)> {
        self.ids_of(&["message"])
    }

    fn ids_of(&self, types: &[&str]) -> Vec<(u64, u64)> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|v| types.iter().any(|t| v["type"] == *t))
            .map(|v| {
                (
                    v["message"]["conversation"].as_u64().expect("conversation"),
                    v["message"]["id"].as_u64().expect("id"),
                )
            })
            .collect()
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
        self.reader.abort();
    }
}
