//! A chat node: the example chat server's HTTP/WebSocket layer and web page, on conversations
//! sharded over the cluster (`docs/cluster.md`). Any node accepts any user.
//!
//! ```text
//! chat-node --node a --nats nats://127.0.0.1:4222,nats://127.0.0.1:4223 [--shards 16]
//!           [--lease-ttl-ms 10000] [--expect-nodes 3] [chat server flags: --port, --data, ...]
//! ```

#[allow(dead_code)]
#[path = "../../../../examples/chat_server/server/mod.rs"]
mod server;

mod asset_usage;
mod assets_store;
mod buckets;
mod directory;
mod fanout;
mod names;
mod presence;
mod presence_watch;
mod route;
mod shards;
mod user_index;
mod wire;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chatstore_cluster::{LeaseConfig, Nats, NatsOptions, StreamConfig};

const USAGE: &str = "\
chat-node: a node of the chatstore cluster (docs/cluster.md)

Cluster flags (the chat server's own flags, below, follow them):
  --node NAME            this node's name, unique in the cluster      (CHAT_NODE)
  --nats URL[,URL...]    the NATS servers                              (CHAT_NATS)
  --shards N             shards in the cluster, fixed at creation: 16  (CHAT_SHARDS)
  --replicas N           replicas of streams and buckets: 3            (CHAT_REPLICAS)
  --lease-ttl-ms MS      shard lease TTL, the same on every node: 10000 (CHAT_LEASE_TTL_MS)
  --expect-nodes N       nodes to wait for (up to 3 s) before taking shards: 1 (CHAT_EXPECT_NODES)
  --snapshot-every N     snapshot a shard (and purge its stream below) every N records;
                         0 never: 100000                               (CHAT_SNAPSHOT_EVERY)
";

/// How long a node keeps trying to reach NATS and open the shared buckets at start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct NodeArgs {
    node: String,
    nats: Vec<String>,
    shards: u32,
    replicas: usize,
    lease_ttl: Duration,
    expect_nodes: usize,
    snapshot_every: u64,
    rest: Vec<String>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<NodeArgs>, String> {
    let env = |k: &str| std::env::var(k).ok();
    let mut node = env("CHAT_NODE");
    let mut nats = env("CHAT_NATS");
    let mut shards = env("CHAT_SHARDS");
    let mut replicas = env("CHAT_REPLICAS");
    let mut ttl = env("CHAT_LEASE_TTL_MS");
    let mut expect = env("CHAT_EXPECT_NODES");
    let mut snapshot_every = env("CHAT_SNAPSHOT_EVERY");
    let mut rest = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let slot = match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--node" => &mut node,
            "--nats" => &mut nats,
            "--shards" => &mut shards,
            "--replicas" => &mut replicas,
            "--lease-ttl-ms" => &mut ttl,
            "--expect-nodes" => &mut expect,
            "--snapshot-every" => &mut snapshot_every,
            _ => {
                rest.push(arg);
                continue;
            }
        };
        let v = match inline {
            Some(v) => v,
            None => args.next().ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(v);
    }
    let num = |v: Option<String>, name: &str, default: u64| -> Result<u64, String> {
        v.map_or(Ok(default), |s| {
            s.parse()
                .map_err(|_| format!("{name}: not a number: {s:?}"))
        })
    };
    let node = node.ok_or("--node is required")?;
    if node.is_empty()
        || !node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("--node: letters, digits, '-' and '_' only".into());
    }
    let nats: Vec<String> = nats
        .ok_or("--nats is required")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let shards = num(shards, "--shards", 16)?;
    if !(1..=4096).contains(&shards) {
        return Err("--shards: 1 to 4096".into());
    }
    Ok(Some(NodeArgs {
        node,
        nats,
        shards: shards as u32,
        replicas: num(replicas, "--replicas", 3)?.max(1) as usize,
        lease_ttl: Duration::from_millis(num(ttl, "--lease-ttl-ms", 10_000)?.max(1000)),
        expect_nodes: num(expect, "--expect-nodes", 1)?.max(1) as usize,
        snapshot_every: num(snapshot_every, "--snapshot-every", 100_000)?,
        rest,
    }))
}

fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(128)
        .build()
    {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("chat-node: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}\n{}", server::config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chat-node: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let cfg = match server::Config::from_env_and_args(args.rest.clone()) {
        Ok(server::config::Parsed::Run(cfg)) => *cfg,
        Ok(server::config::Parsed::Help) => {
            print!("{USAGE}\n{}", server::config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chat-node: {e}");
            return ExitCode::from(2);
        }
    };
    let started = tokio::task::spawn_blocking(move || {
        // NATS may be electing leaders (a server just died or started): keep trying for a
        // while rather than give up on the first refusal.
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            match start_cluster_parts(&args, &cfg) {
                Ok(parts) => return Ok(parts),
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("chat-node: starting: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("starting the node panicked".into()));
    let Parts {
        backing,
        cfg,
        name,
        shards,
        fanout,
        node_id,
        router,
        watcher,
    } = match started {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match server::start_with(cfg, backing).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat-node: {e}");
            shards.stop();
            return ExitCode::FAILURE;
        }
    };
    // Shard owners push stored messages themselves, in id order, as the server layer would
    // (same frame), to the devices of every member on any node.
    let state = Arc::downgrade(running.state());
    shards.set_publish(Arc::new(move |m, members, origin| {
        let Some(st) = state.upgrade() else {
            return;
        };
        let frame = serde_json::json!({
            "type": "message",
            "message": server::views::message_json(&st, m),
        });
        let (node, skip) = match origin {
            Some(o) => (o.node, Some(o.conn)),
            None => (node_id, None),
        };
        fanout.publish_as(
            node,
            members,
            &frame.to_string(),
            Some((m.conversation.0, m.id.0)),
            skip,
        );
    }));
    // The owner of a user's shard announces the user's presence, cluster-wide, in the
    // frames a single server sends.
    let state = Arc::downgrade(running.state());
    let (r1, r2, r3) = (router.clone(), router.clone(), router);
    watcher.set_authority(presence_watch::Authority {
        speaks_for: Box::new(move |u| r1.owns_home(u)),
        store_last_seen: Box::new(move |u, ms| {
            if let Err(e) = r2.set_last_seen(u, ms) {
                eprintln!("chat-node: last seen of user {}: {e}", u.0);
            }
        }),
        stored_last_seen: Box::new(move |u| r3.last_seen(u).ok().flatten()),
        push: Box::new(move |u, online, last_seen| {
            if let Some(st) = state.upgrade() {
                server::push_presence(&st, u, online, last_seen);
            }
        }),
    });
    let _placing = shards.run();
    println!("chat node {name} listening on {}", running.url());
    wait_for_signal().await;
    println!("chat node {name}: shutting down");
    match running.shutdown().await {
        Ok(()) => {
            println!("chat node {name}: stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-node: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Parts {
    backing: server::Backing,
    cfg: server::Config,
    name: String,
    shards: Arc<shards::Shards>,
    fanout: Arc<fanout::NatsFanout>,
    /// This process's id in fanout envelopes.
    node_id: u64,
    router: Arc<route::Router>,
    watcher: Arc<presence_watch::Watcher>,
}

/// Connects to NATS and opens the shared buckets. Blocking.
fn start_cluster_parts(args: &NodeArgs, cfg: &server::Config) -> Result<Parts, String> {
    let nats = Nats::connect(NatsOptions {
        urls: args.nats.clone(),
        name: format!("chat-node-{}", args.node),
        ..NatsOptions::default()
    })
    .map_err(|e| format!("connecting to NATS: {e}"))?;
    let placement = shards::Placement {
        node: args.node.clone(),
        shards: args.shards,
        dir: cfg.data_dir.join("shards"),
        stream: StreamConfig {
            replicas: args.replicas,
            ..StreamConfig::default()
        },
        lease: LeaseConfig {
            ttl: args.lease_ttl,
            replicas: args.replicas,
            margin: (args.lease_ttl / 5).max(Duration::from_millis(500)),
            ..LeaseConfig::default()
        },
        tick: (args.lease_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)),
        expect_nodes: args.expect_nodes,
        snapshot_every: args.snapshot_every,
    };
    let shards = shards::Shards::open(nats.clone(), placement)?;
    let node_id: u64 = rand::random();
    // A call waits out a failover (a lease TTL and a takeover) and a commit that rides out
    // a NATS election (the stream's append timeout).
    let patience = StreamConfig::default()
        .append_timeout
        .saturating_add(args.lease_ttl.saturating_mul(3));
    let router = Arc::new(route::Router::new(shards.clone(), node_id, patience));
    let directory = directory::ClusterDirectory::open(&nats, router.clone(), args.replicas)?;
    let fanout = Arc::new(fanout::NatsFanout::new(&nats, node_id));
    let presence = presence::KvPresence::open(
        &nats,
        &args.node,
        cfg.offline_after,
        args.lease_ttl,
        args.replicas,
    )?;
    let watcher = presence.watcher().clone();
    let assets = assets_store::ObjectAssets::open(
        &nats,
        args.replicas,
        cfg.data_dir.join("asset-cache"),
        cfg.unattached_upload_ttl,
    )?;
    let backing = server::Backing {
        store: router.clone(),
        last_seen: None,
        directory: Some(Arc::new(directory)),
        fanout: Some(fanout.clone()),
        presence: Some(Arc::new(presence)),
        assets: Some(assets),
    };
    Ok(Parts {
        backing,
        cfg: cfg.clone(),
        name: args.node.clone(),
        shards,
        fanout,
        node_id,
        router,
        watcher,
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
