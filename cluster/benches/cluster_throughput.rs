//! The chat cluster under load: the example load generator pointed at 1 chat node and then
//! at 3, each time on a fresh 3-server NATS cluster (replicas 3), on this machine.
//!
//! ```sh
//! cargo bench -p chatstore-cluster --bench cluster_throughput -- \
//!     --nodes 1,3 --clients 2000 --interval-ms 200 --duration 20
//! ```
//!
//! For each node count it reports delivered messages/s, send-to-deliver latency (p50, p99),
//! what the shards' streams hold (bytes per message), and what a checkpoint of every shard
//! store takes (bytes per message): the figures docs/cluster.md's capacity plan is built
//! from. All processes share the machine's cores, so a 3-node figure here is a lower bound
//! of three machines' and the ratio says how much the extra hops cost, not how it scales.

#[allow(dead_code)]
#[path = "../../tests/chat_server/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../tests/chat_nodes/harness.rs"]
mod harness;
#[allow(dead_code)]
#[path = "../../examples/load.rs"]
mod load;

use std::path::Path;
use std::time::{Duration, Instant};

use chatstore_cluster::testing::NatsCluster;
use chatstore_cluster::StreamConfig;
use harness::{all_owned, leases, Node, SHARDS};

struct Options {
    nodes: Vec<usize>,
    clients: usize,
    devices: usize,
    interval: Duration,
    duration: Duration,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        nodes: vec![1, 3],
        clients: 2000,
        devices: 2,
        interval: Duration::from_millis(200),
        duration: Duration::from_secs(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to every bench target.
        if flag == "--bench" {
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("bad value {v:?} for {flag}"))
        };
        match flag.as_str() {
            "--nodes" => {
                o.nodes = v
                    .split(',')
                    .map(|n| num(n).map(|n| n as usize))
                    .collect::<Result<_, _>>()?
            }
            "--clients" => o.clients = num(&v)? as usize,
            "--devices" => o.devices = num(&v)? as usize,
            "--interval-ms" => o.interval = Duration::from_millis(num(&v)?),
            "--duration" => o.duration = Duration::from_secs(num(&v)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.nodes.contains(&0) {
        return Err("--nodes: every count must be at least 1".into());
    }
    Ok(o)
}

struct Row {
    nodes: usize,
    report: load::Report,
    stream_bytes: u64,
    stream_records: u64,
    checkpoint_bytes: u64,
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\nusage: cluster_throughput [--nodes 1,3] [--clients 2000] [--devices 2] [--interval-ms 200] [--duration 20]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut rows = Vec::new();
    for &n in &o.nodes {
        println!("\n== {n} chat node(s), 3 NATS servers ==");
        rows.push(run(&rt, &o, n));
    }
    println!(
        "\n| nodes | sent msgs/s | delivered msgs/s | p50 ms | p99 ms | errors | stream B/msg | checkpoint B/msg |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let per = |b: u64| b as f64 / r.report.acked.max(1) as f64;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.0} |",
            r.nodes,
            r.report.sent_per_s(),
            r.report.delivered_per_s(),
            r.report.p50_ms,
            r.report.p99_ms,
            r.report.errors,
            per(r.stream_bytes),
            per(r.checkpoint_bytes),
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if rows.len() > 1 {
            println!(
                "\n{} nodes ÷ {} node(s): delivered msgs/s {:.2}x, p99 {:.2}x",
                last.nodes,
                first.nodes,
                last.report.delivered_per_s() / first.report.delivered_per_s(),
                last.report.p99_ms / first.report.p99_ms
            );
        }
    }
    for r in &rows {
        println!(
            "{} node(s): {} stream records for {} acknowledged messages ({} held of {} connections)",
            r.nodes, r.stream_records, r.report.acked, r.report.held, r.report.total
        );
    }
}

fn run(rt: &tokio::runtime::Runtime, o: &Options, n: usize) -> Row {
    let nats = NatsCluster::start(3).expect("a 3-server NATS cluster (is nats-server installed?)");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| Node::start_with(&format!("node{i}"), &nats, dir.path(), n, &[]))
        .collect();
    let t = Instant::now();
    all_owned(&leases(&nats), &nodes);
    println!("every shard owned after {:.1} s", t.elapsed().as_secs_f64());
    let args = load::Args {
        addrs: nodes.iter().map(|node| node.addr).collect(),
        clients: o.clients,
        devices: o.devices,
        duration: o.duration,
        interval: o.interval,
        concurrency: 100,
    };
    let report = rt.block_on(load::run(args)).unwrap_or_else(|e| {
        let logs: String = nodes.iter().map(Node::log).collect();
        panic!("load: {e}\n{logs}")
    });
    // What the nodes said (errors, snapshots), trimmed.
    for node in &nodes {
        let log = node.log();
        let lines: Vec<&str> = log.lines().collect();
        for line in &lines[lines.len().saturating_sub(15)..] {
            println!("{line}");
        }
    }
    let (stream_bytes, stream_records) = streams(&nats);
    for node in &mut nodes {
        node.kill();
    }
    let checkpoint_bytes = checkpoints(dir.path());
    Row {
        nodes: n,
        report,
        stream_bytes,
        stream_records,
        checkpoint_bytes,
    }
}

/// Bytes and records the shards' streams hold (one replica's worth).
fn streams(nats: &NatsCluster) -> (u64, u64) {
    let conn = nats.connect("bench-observer").expect("connect");
    let js = conn.jetstream().clone();
    let prefix = StreamConfig::default().prefix;
    conn.block_on(async move {
        let (mut bytes, mut records) = (0, 0);
        for s in 0..SHARDS {
            let mut stream = js
                .get_stream(format!("{prefix}-shard-{s}"))
                .await
                .expect("a shard stream");
            let info = stream.info().await.expect("stream info");
            bytes += info.state.bytes;
            records += info.state.messages;
        }
        (bytes, records)
    })
    .expect("the NATS runtime")
}

/// Bytes of a fresh checkpoint of every shard store the nodes left in `dir` (what a shard
/// owner uploads to the object store; the nodes are stopped, so each store is opened here).
fn checkpoints(dir: &Path) -> u64 {
    let out = tempfile::tempdir().expect("tempdir");
    let mut total = 0;
    for node in std::fs::read_dir(dir).expect("node dirs").flatten() {
        let shards = node.path().join("shards");
        let Ok(entries) = std::fs::read_dir(&shards) else {
            continue;
        };
        for shard in entries.flatten() {
            let store = chatstore::Store::open(shard.path()).expect("a shard store");
            let dest = out.path().join(format!(
                "{}-{}",
                node.file_name().to_string_lossy(),
                shard.file_name().to_string_lossy()
            ));
            store.checkpoint(&dest).expect("a checkpoint");
            total += dir_bytes(&dest);
        }
    }
    total
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
