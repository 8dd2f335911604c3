//! Load generator for the example chat server.
//!
//! ```sh
//! ulimit -n 20000
//! cargo run --release --example chat_server -- --data /tmp/load-data \
//!     --argon2-memory-kib 256 --argon2-iterations 1 --auth-rate 100000 --auth-burst 100000 &
//! cargo run --release --example load -- --clients 10000 --devices 2 --duration 30
//! ```
//!
//! Signs up `clients / devices` users in pairs with a 1:1 chat each, opens `clients`
//! WebSockets (`devices` per user), then every user sends one message every `--interval-ms`
//! from its first device for `--duration` seconds. Each message carries its send time, so every
//! device that receives it (the peer's devices and the sender's other devices) measures
//! send-to-deliver latency. Reports connections held, messages/s delivered, p50/p99 latency.
//! Talks only to the addresses given (loopback by default); stops by itself.
//!
//! Several `--addr` (comma-separated: the nodes of a cluster) spread the users: user `i`
//! signs up and its first device connects through node `i mod n`, its other devices through
//! the next nodes, so a chat's two users (and one user's devices) sit on different nodes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// What to run.
pub struct Args {
    /// The nodes to talk to (users spread over them).
    pub addrs: Vec<SocketAddr>,
    /// WebSocket connections (devices) in all.
    pub clients: usize,
    /// Devices per user (the first one sends).
    pub devices: usize,
    /// How long traffic runs.
    pub duration: Duration,
    /// Each user sends one message per interval.
    pub interval: Duration,
    /// Sign-ups and connection attempts in flight at once.
    pub concurrency: usize,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            clients: 1000,
            devices: 2,
            duration: Duration::from_secs(20),
            interval: Duration::from_millis(2000),
            concurrency: 200,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub connected: u64,
    pub held: u64,
    pub total: u64,
    pub secs: f64,
    pub sent: u64,
    pub acked: u64,
    pub errors: u64,
    /// Message frames delivered to devices during the traffic phase.
    pub delivered: u64,
    /// Send-to-deliver latency, milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub samples: usize,
}

impl Report {
    pub fn delivered_per_s(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    pub fn sent_per_s(&self) -> f64 {
        self.sent as f64 / self.secs
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let bad = |v: &str| format!("bad value {v:?} for {flag}");
        match flag.as_str() {
            "--addr" => {
                let v = val()?;
                a.addrs = v
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|_| bad(&v)))
                    .collect::<Result<_, _>>()?;
            }
            "--clients" => {
                let v = val()?;
                a.clients = v.parse().map_err(|_| bad(&v))?;
            }
            "--devices" => {
                let v = val()?;
                a.devices = v.parse().map_err(|_| bad(&v))?;
            }
            "--duration" => {
                let v = val()?;
                a.duration = Duration::from_secs(v.parse().map_err(|_| bad(&v))?);
            }
            "--interval-ms" => {
                let v = val()?;
                a.interval = Duration::from_millis(v.parse().map_err(|_| bad(&v))?);
            }
            "--concurrency" => {
                let v = val()?;
                a.concurrency = v.parse().map_err(|_| bad(&v))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: load [--addr 127.0.0.1:8080[,...]] [--clients 1000] [--devices 2] \
                            [--duration 20] [--interval-ms 2000] [--concurrency 200]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.devices == 0 || a.clients < 2 * a.devices || a.concurrency == 0 {
        return Err("need devices >= 1, clients >= 2 * devices, concurrency >= 1".into());
    }
    if a.addrs.is_empty() || a.addrs.iter().any(|x| !x.ip().is_loopback()) {
        return Err("this load tool only targets loopback addresses".into());
    }
    Ok(a)
}

/// POSTs `body`; a `429` is retried after the `retry_after_ms` the server asks for.
async fn http(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Value, String> {
    loop {
        match http_once(addr, path, token, &body).await? {
            Ok(v) => return Ok(v),
            Err(wait_ms) => tokio::time::sleep(Duration::from_millis(wait_ms)).await,
        }
    }
}

/// One POST: the JSON answer, or `Err(ms)` for a `429` to retry after `ms`.
async fn http_once(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Result<Value, u64>, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if status.as_u16() == 429 {
        return Ok(Err(v["retry_after_ms"].as_u64().unwrap_or(1000).max(1)));
    }
    if !status.is_success() {
        return Err(format!("{path}: {status} {v}"));
    }
    Ok(Ok(v))
}

#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    connect_failed: AtomicU64,
    closed_early: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    delivered: AtomicU64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// Runs the load and prints (and returns) what it measured.
pub async fn run(args: Args) -> Result<Report, String> {
    let users = args.clients / args.devices;
    let users = users - users % 2;
    let run = format!(
        "{:x}",
        std::process::id() ^ (Instant::now().elapsed().subsec_nanos())
    );
    let epoch = Instant::now();
    let gate = Arc::new(Semaphore::new(args.concurrency));

    // 1. Users, in pairs with a direct chat.
    let t = Instant::now();
    let mut handles = Vec::new();
    let node_of = |user: usize, device: usize| args.addrs[(user + device) % args.addrs.len()];
    for i in 0..users {
        let gate = gate.clone();
        let addr = node_of(i, 0);
        let name = format!("load{run}x{i}");
        handles.push(tokio::spawn(async move {
            let _p = gate.acquire().await.map_err(|e| e.to_string())?;
            let v = http(
                addr,
                "/api/signup",
                None,
                json!({ "username": name, "password": "load-test-password" }),
            )
            .await?;
            let token = v["token"].as_str().unwrap_or_default().to_string();
            Ok::<(String, u64), String>((token, v["user"]["id"].as_u64().unwrap_or(0)))
        }));
    }
    let mut tokens = Vec::with_capacity(users);
    let mut ids = std::collections::HashMap::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(Ok((t, id))) => {
                if let Some(first) = ids.insert(id, i) {
                    return Err(format!(
                        "the server gave user id {id} to two sign-ups (users {first} and {i})"
                    ));
                }
                tokens.push(t)
            }
            Ok(Err(e)) => return Err(format!("signup failed: {e}")),
            Err(e) => return Err(format!("signup task failed: {e}")),
        }
    }
    let mut convs = vec![0u64; users];
    let mut handles = Vec::new();
    for pair in 0..users / 2 {
        let (a, b) = (2 * pair, 2 * pair + 1);
        let token = tokens[a].clone();
        let other = format!("load{run}x{b}");
        let addr = node_of(a, 0);
        let gate = gate.clone();
        handles.push(tokio::spawn(async move {
            let _p = gate.acquire().await.map_err(|e| e.to_string())?;
            let v = http(
                addr,
                "/api/direct",
                Some(&token),
                json!({ "username": other }),
            )
            .await?;
            Ok::<u64, String>(v["id"].as_u64().unwrap_or(0))
        }));
    }
    for (pair, h) in handles.into_iter().enumerate() {
        let id = match h.await {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => return Err(format!("direct failed: {e}")),
            Err(e) => return Err(format!("direct task failed: {e}")),
        };
        convs[2 * pair] = id;
        convs[2 * pair + 1] = id;
    }
    println!(
        "setup: {users} users, {} chats in {:.1} s",
        users / 2,
        t.elapsed().as_secs_f64()
    );

    // 2. Connections.
    let counters = Arc::new(Counters::default());
    let stop_sending = Arc::new(AtomicBool::new(false));
    let stop_all = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let mut tasks = Vec::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    for u in 0..users {
        for d in 0..args.devices {
            let token = tokens[u].clone();
            let conv = convs[u];
            let addr = node_of(u, d);
            let gate = gate.clone();
            let c = counters.clone();
            let stop_sending = stop_sending.clone();
            let stop_all = stop_all.clone();
            let ready = ready_tx.clone();
            let interval = args.interval;
            let sender = d == 0;
            tasks.push(tokio::spawn(async move {
                let cfg = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                let url = format!("ws://{addr}/ws?token={token}");
                let conn = {
                    let _p = gate.acquire().await;
                    tokio_tungstenite::connect_async_with_config(url, Some(cfg), true).await
                };
                let ws = match conn {
                    Ok((ws, _)) => ws,
                    Err(_) => {
                        c.connect_failed.fetch_add(1, Ordering::Relaxed);
                        let _ = ready.send(false);
                        return Vec::new();
                    }
                };
                c.connected.fetch_add(1, Ordering::Relaxed);
                let _ = ready.send(true);
                let (mut tx, mut rx) = ws.split();
                let mut lat: Vec<u32> = Vec::new();
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // Spread the senders over the interval.
                let offset = Duration::from_micros(rand::random::<u64>() % interval.as_micros().max(1) as u64);
                tick.reset_after(offset);
                let mut n = 0u64;
                loop {
                    tokio::select! {
                        frame = rx.next() => {
                            let Some(Ok(frame)) = frame else {
                                if !stop_all.load(Ordering::Relaxed) {
                                    c.closed_early.fetch_add(1, Ordering::Relaxed);
                                }
                                break;
                            };
                            let Message::Text(t) = frame else { continue };
                            let t = t.as_str();
                            if t.starts_with("{\"type\":\"message\"") || t.contains("\"type\":\"message\"") {
                                let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
                                if let Some(sent) = v["message"]["text"].as_str().and_then(|s| s.strip_prefix("t=")).and_then(|s| s.parse::<u64>().ok()) {
                                    let now = epoch.elapsed().as_micros() as u64;
                                    lat.push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                                    c.delivered.fetch_add(1, Ordering::Relaxed);
                                }
                            } else if t.contains("\"type\":\"ack\"") {
                                c.acked.fetch_add(1, Ordering::Relaxed);
                            } else if t.contains("\"type\":\"error\"") {
                                c.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ = tick.tick(), if sender && !stop_sending.load(Ordering::Relaxed) => {
                            n += 1;
                            let now = epoch.elapsed().as_micros() as u64;
                            let f = json!({ "type": "send", "conversation": conv, "text": format!("t={now}"), "client_key": format!("{now}-{n}") });
                            if tx.send(Message::text(f.to_string())).await.is_err() {
                                break;
                            }
                            c.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop_all.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(Message::Close(None)).await;
                lat
            }));
        }
    }
    drop(ready_tx);
    let total = users * args.devices;
    let mut done = 0;
    while done < total {
        if ready_rx.recv().await.is_none() {
            break;
        }
        done += 1;
    }
    let connect_s = t.elapsed().as_secs_f64();
    println!(
        "connected {} of {} in {connect_s:.1} s ({} failed)",
        counters.connected.load(Ordering::Relaxed),
        total,
        counters.connect_failed.load(Ordering::Relaxed)
    );

    // 3. Traffic.
    let d0 = counters.delivered.load(Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(args.duration).await;
    let delivered = counters.delivered.load(Ordering::Relaxed) - d0;
    let secs = t.elapsed().as_secs_f64();
    stop_sending.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await; // in-flight deliveries
    let held =
        counters.connected.load(Ordering::Relaxed) - counters.closed_early.load(Ordering::Relaxed);
    stop_all.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    lat.sort_unstable();
    let report = Report {
        connected: counters.connected.load(Ordering::Relaxed),
        held,
        total: total as u64,
        secs,
        sent: counters.sent.load(Ordering::Relaxed),
        acked: counters.acked.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        delivered,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: percentile(&lat, 1.0),
        samples: lat.len(),
    };
    println!("connections held to the end: {held} of {total}");
    println!(
        "sent {} ({:.0}/s), acked {}, errors {}",
        report.sent,
        report.sent_per_s(),
        report.acked,
        report.errors
    );
    println!(
        "delivered {delivered} frames in {secs:.1} s = {:.0} messages/s delivered",
        report.delivered_per_s()
    );
    println!(
        "send-to-deliver latency (ms): p50 {:.2}  p99 {:.2}  max {:.2}  ({} samples)",
        report.p50_ms, report.p99_ms, report.max_ms, report.samples
    );
    Ok(report)
}
