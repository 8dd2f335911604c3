//! Which shards this node owns, and taking them over.
//!
//! A shard is owned by the node holding its lease (`chatstore_cluster::LeaseBucket`). A
//! placement loop, every `tick`:
//!
//! 1. says the node is alive (a key in the `nodes` KV bucket, expiring after the lease TTL),
//!    and counts the live nodes;
//! 2. drops every owned shard whose lease is no longer valid or whose commit log stopped
//!    (fenced, failed): such a shard is closed and left for whoever takes it next, possibly
//!    this node again on a later tick (reopen, catch up from the stream: the one recovery);
//! 3. takes free shards, in rendezvous order (the shards that hash highest with this node's
//!    name first), up to a fair share of `ceil(S / live nodes)`: nodes that start together
//!    spread the shards, and when a node dies its shards become free after the lease TTL and
//!    the survivors' shares grow to take them.
//!
//! Taking a shard: lease → open the node's own copy of the shard's store (or an empty one)
//! with the shard's `JetStreamCommitLog` → `promote` (catch up from the stream, learn its
//! tail) → keep the lease alive → answer the shard's requests subject.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use chatstore::{
    ChatOptions, ChatStore, CommitLog, ConversationId, Durability, Message, Options, UserId,
};
use chatstore_cluster::{
    checkpoint_and_purge, shard_key, Error as ClusterError, JetStreamCommitLog, KeepAlive, Lease,
    LeaseBucket, LeaseConfig, Nats, ShardStream, SnapshotBucket, SnapshotConfig, StreamConfig,
};
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use std::sync::OnceLock;
use tokio::runtime::{Handle, Runtime};

use crate::names::ShardAccounts;
use crate::user_index::ShardIndex;
use crate::wire::{self, Ids, Op, Origin, Reply, WireError};

/// Pushes a stored message to its members' devices (set once the server layer runs).
pub type Publish = dyn Fn(&Message, &[UserId], Option<Origin>) + Send + Sync;

/// Per conversation, the next id to push and the stored messages waiting for it: commits
/// finish in id order but their threads may reach the push in any order.
struct Sequence {
    next: u64,
    waiting: BTreeMap<u64, (Message, Vec<UserId>, Option<Origin>)>,
}

/// How the node places and keeps shards.
#[derive(Clone, Debug)]
pub struct Placement {
    /// This node's name (unique in the cluster).
    pub node: String,
    /// Shards in the cluster (fixed when it is created).
    pub shards: u32,
    /// Where this node keeps its copies of shard stores.
    pub dir: PathBuf,
    pub stream: StreamConfig,
    pub lease: LeaseConfig,
    /// How often the placement loop runs.
    pub tick: Duration,
    /// Nodes to wait for (briefly) before taking shards, so that they spread.
    pub expect_nodes: usize,
    /// An owner snapshots its shard (and purges the stream below the snapshot) once the
    /// stream holds this many records; 0: never.
    pub snapshot_every: u64,
}

/// A shard this node owns.
pub struct Owned {
    pub chat: ChatStore,
    pub log: Arc<JetStreamCommitLog>,
    pub lease: Lease,
    pub ids: Ids,
    accounts: ShardAccounts,
    index: ShardIndex,
    pushes: Mutex<HashMap<ConversationId, Sequence>>,
    /// The LSN below which the stream is purged (a snapshot holds it): the stream holds the
    /// records after it.
    snapshot_lsn: AtomicU64,
    snapshotting: AtomicBool,
    _renewing: KeepAlive,
    serving: tokio::task::JoinHandle<()>,
}

impl Owned {
    fn is_sound(&self) -> bool {
        self.lease.is_valid() && self.log.stopped().is_none()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

pub struct Shards {
    pub nats: Nats,
    pub cfg: Placement,
    leases: LeaseBucket,
    snapshots: SnapshotBucket,
    nodes: kv::Store,
    slots: Vec<RwLock<Option<Arc<Owned>>>>,
    /// Runs the shard request handlers, and nothing else: answering only touches this node's
    /// own shards (never another node), so as long as no caller shares its threads, every
    /// request gets a thread. On the node's runtime instead, a burst of calls *to* other nodes
    /// (reconnecting devices gathering unread from every shard) filled the blocking pool of
    /// every node at once, and each node's answers queued behind its own waiting calls.
    answering: Answering,
    /// Serialises take-overs and drops of one shard.
    placing: Mutex<()>,
    stopping: AtomicBool,
    publish: OnceLock<Arc<Publish>>,
}

impl Shards {
    pub fn open(nats: Nats, cfg: Placement) -> Result<Arc<Shards>, String> {
        if cfg.shards == 0 {
            return Err("--shards must be at least 1".into());
        }
        let leases = LeaseBucket::open(&nats, cfg.lease.clone()).map_err(|e| e.to_string())?;
        let snapshots = SnapshotBucket::open(
            &nats,
            SnapshotConfig {
                replicas: cfg.lease.replicas,
                ..SnapshotConfig::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let nodes = crate::buckets::open(
            &nats,
            "chatstore_nodes",
            cfg.lease.replicas,
            cfg.lease.ttl,
            "live chat nodes",
        )?;
        std::fs::create_dir_all(&cfg.dir).map_err(|e| format!("{}: {e}", cfg.dir.display()))?;
        Ok(Arc::new(Shards {
            slots: (0..cfg.shards).map(|_| RwLock::new(None)).collect(),
            nats,
            cfg,
            leases,
            snapshots,
            nodes,
            answering: Answering::start()?,
            placing: Mutex::new(()),
            stopping: AtomicBool::new(false),
            publish: OnceLock::new(),
        }))
    }

    /// How stored messages reach their members' devices.
    pub fn set_publish(&self, publish: Arc<Publish>) {
        let _ = self.publish.set(publish);
    }

    /// Runs `op` on an owned shard. A stored message is pushed to every member's devices from
    /// here, the owner, in id order per conversation.
    pub fn execute(&self, owned: &Owned, op: Op) -> chatstore::Result<Reply> {
        let Op::Send(conv, message, key, origin) = op else {
            return wire::execute(&owned.chat, &owned.accounts, &owned.index, owned.ids, op);
        };
        let local = owned.ids.local(conv)?;
        if !owned.pushes.lock().contains_key(&local) {
            let next = owned.chat.store().last_id(local)?.0 + 1;
            owned
                .pushes
                .lock()
                .entry(local)
                .or_insert_with(|| Sequence {
                    next,
                    waiting: BTreeMap::new(),
                });
        }
        let reply = wire::execute(
            &owned.chat,
            &owned.accounts,
            &owned.index,
            owned.ids,
            Op::Send(conv, message, key, None),
        )?;
        if let (Reply::Message(m), Some(publish)) = (&reply, self.publish.get()) {
            let members = owned.chat.members(local)?;
            let mut pushes = owned.pushes.lock();
            let Some(seq) = pushes.get_mut(&local) else {
                return Ok(reply);
            };
            if m.id.0 < seq.next {
                // A repeated send (same client key): pushed again, as a single server does.
                publish(m, &members, origin);
                return Ok(reply);
            }
            seq.waiting.insert(m.id.0, (m.clone(), members, origin));
            while let Some((m, members, origin)) = seq.waiting.remove(&seq.next) {
                publish(&m, &members, origin);
                seq.next += 1;
            }
        }
        Ok(reply)
    }

    /// The shard's store, if this node owns it and may still act on it.
    pub fn local(&self, shard: u32) -> Option<Arc<Owned>> {
        let slot = self.slots.get(shard as usize)?.read();
        slot.as_ref().filter(|o| o.is_sound()).cloned()
    }

    pub fn owned(&self) -> Vec<u32> {
        (0..self.cfg.shards)
            .filter(|&s| self.slots[s as usize].read().is_some())
            .collect()
    }

    /// Runs the placement loop on a thread of its own until [`Shards::stop`].
    pub fn run(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("placement".into())
            .spawn(move || me.placement_loop())
            .unwrap_or_else(|e| {
                eprintln!("chat-node: cannot start the placement thread: {e}");
                std::process::exit(1)
            })
    }

    fn placement_loop(self: Arc<Self>) {
        let started = Instant::now();
        // Nodes started together wait for each other (a little), so the first does not take
        // every shard.
        let settle = self.cfg.lease.ttl.min(Duration::from_secs(3));
        while !self.stopping.load(Ordering::Relaxed) {
            // First, and whatever NATS does: a shard this node may no longer write is given up.
            self.drop_unsound();
            let live = self.heartbeat().unwrap_or(1).max(1);
            if live >= self.cfg.expect_nodes || started.elapsed() >= settle {
                self.place(live);
            }
            self.snapshot_due();
            std::thread::sleep(self.cfg.tick);
        }
    }

    /// Says this node is alive; returns how many are.
    fn heartbeat(&self) -> Option<usize> {
        let kv = self.nodes.clone();
        let key = format!("node.{}", self.cfg.node);
        let timeout = self.cfg.tick.max(Duration::from_secs(1)) * 2;
        let res = self.nats.block_on(async move {
            let count = async {
                kv.put(key, bytes::Bytes::from_static(b"1")).await.ok()?;
                let mut keys = kv.keys().await.ok()?;
                let mut n = 0;
                while let Some(k) = keys.next().await {
                    if k.is_ok() {
                        n += 1;
                    }
                }
                Some(n)
            };
            // A connection being re-established must not stall placement.
            tokio::time::timeout(timeout, count).await.ok().flatten()
        });
        res.ok().flatten()
    }

    fn drop_unsound(&self) {
        let _placing = self.placing.lock();
        for s in 0..self.cfg.shards {
            let unsound = self.slots[s as usize]
                .read()
                .as_ref()
                .is_some_and(|o| !o.is_sound());
            if unsound {
                self.drop_shard(s, "lease lost or log stopped");
            }
        }
    }

    fn place(self: &Arc<Self>, live: usize) {
        let _placing = self.placing.lock();
        let share = (self.cfg.shards as usize).div_ceil(live);
        let mut owned: HashSet<u32> = self.owned().into_iter().collect();
        let mut order: Vec<u32> = (0..self.cfg.shards).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(rendezvous(&self.cfg.node, s)));
        for s in order {
            if owned.len() >= share || self.stopping.load(Ordering::Relaxed) {
                break;
            }
            if owned.contains(&s) {
                continue;
            }
            match self.leases.try_acquire(&shard_key(s), &self.cfg.node) {
                Ok(Some(lease)) => {
                    let t = Instant::now();
                    match self.take_over(s, lease.clone()) {
                        Ok(owner) => {
                            *self.slots[s as usize].write() = Some(owner);
                            owned.insert(s);
                            println!(
                                "chat-node {}: took shard {s} in {} ms",
                                self.cfg.node,
                                t.elapsed().as_millis()
                            );
                        }
                        Err(e) => {
                            eprintln!("chat-node {}: taking shard {s}: {e}", self.cfg.node);
                            let _ = lease.release();
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => eprintln!("chat-node {}: lease of shard {s}: {e}", self.cfg.node),
            }
        }
    }

    fn take_over(self: &Arc<Self>, shard: u32, lease: Lease) -> Result<Arc<Owned>, String> {
        let stream =
            ShardStream::open(&self.nats, &self.cfg.stream, shard).map_err(|e| e.to_string())?;
        let log = JetStreamCommitLog::new(stream);
        let dir = self.cfg.dir.join(format!("shard-{shard}"));
        // No copy of its own: start from the latest snapshot (the stream may be purged below
        // it, and replaying less is faster anyway).
        if !dir.exists() {
            self.restore(shard, &dir)?;
        }
        let (chat, tail) = match self.open_and_promote(&dir, &log, &lease) {
            Ok(opened) => opened,
            // Its own copy is older than the stream's start: the records in between are only
            // in the snapshot. Put the copy aside, restore, and try again.
            Err((ClusterError::Truncated { .. }, why)) => {
                eprintln!(
                    "chat-node {}: shard {shard}: {why}; restoring the latest snapshot",
                    self.cfg.node
                );
                let aside = self.cfg.dir.join(format!("shard-{shard}.behind"));
                let _ = std::fs::remove_dir_all(&aside);
                std::fs::rename(&dir, &aside).map_err(|e| format!("{}: {e}", dir.display()))?;
                self.restore(shard, &dir)?;
                let opened = self
                    .open_and_promote(&dir, &log, &lease)
                    .map_err(|(_, why)| why)?;
                let _ = std::fs::remove_dir_all(&aside);
                opened
            }
            Err((_, why)) => return Err(why),
        };
        let renewing = lease.keep_alive(self.cfg.lease.ttl / 4);
        let serving = self.serve(shard)?;
        Ok(Arc::new(Owned {
            chat,
            log,
            lease,
            ids: Ids {
                shards: self.cfg.shards,
                shard,
            },
            accounts: ShardAccounts::default(),
            index: ShardIndex::default(),
            pushes: Mutex::new(HashMap::new()),
            snapshot_lsn: AtomicU64::new(tail.first_lsn().saturating_sub(1)),
            snapshotting: AtomicBool::new(false),
            _renewing: renewing,
            serving,
        }))
    }

    /// Opens the store in `dir` on `log` and makes the log lead (catch-up included).
    fn open_and_promote(
        &self,
        dir: &std::path::Path,
        log: &Arc<JetStreamCommitLog>,
        lease: &Lease,
    ) -> Result<(ChatStore, chatstore_cluster::Tail), (ClusterError, String)> {
        let options = Options {
            // The stream is the shard's truth; the local WAL is a cache of it.
            durability: Durability::Buffered {
                interval: Duration::from_millis(100),
            },
            commit_log: Some(Arc::clone(log) as Arc<dyn CommitLog>),
            ..Options::default()
        };
        let chat = ChatStore::open_with(dir, options, ChatOptions::default()).map_err(|e| {
            let why = format!("opening {}: {e}", dir.display());
            (ClusterError::Store(e), why)
        })?;
        match log.promote(chat.store(), Some(lease.clone())) {
            Ok(tail) => Ok((chat, tail)),
            Err(e) => {
                let _ = chat.close();
                let why = format!("catching up {}: {e}", dir.display());
                Err((e, why))
            }
        }
    }

    /// Restores shard `shard`'s latest snapshot into `dir` (which must not exist); nothing
    /// if it has none.
    fn restore(&self, shard: u32, dir: &std::path::Path) -> Result<(), String> {
        let t = Instant::now();
        let restored = self
            .snapshots
            .restore(shard, dir, &self.scratch())
            .map_err(|e| format!("restoring shard {shard}'s snapshot: {e}"))?;
        if let Some(snap) = restored {
            println!(
                "chat-node {}: restored shard {shard} from its snapshot at LSN {} ({} bytes) in {} ms",
                self.cfg.node,
                snap.lsn,
                snap.bytes,
                t.elapsed().as_millis()
            );
        }
        Ok(())
    }

    fn scratch(&self) -> PathBuf {
        self.cfg.dir.join("scratch")
    }

    /// Starts a snapshot (and purge) of every owned shard whose stream holds
    /// `snapshot_every` records or more, each on a thread of its own; one at a time per shard.
    fn snapshot_due(self: &Arc<Self>) {
        let every = self.cfg.snapshot_every;
        if every == 0 {
            return;
        }
        for s in 0..self.cfg.shards {
            let Some(owned) = self.local(s) else {
                continue;
            };
            let held = owned
                .chat
                .store()
                .last_lsn()
                .saturating_sub(owned.snapshot_lsn.load(Ordering::Relaxed));
            if held < every || owned.snapshotting.swap(true, Ordering::AcqRel) {
                continue;
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("snapshot-{s}"))
                .spawn(move || {
                    let t = Instant::now();
                    match checkpoint_and_purge(
                        &me.snapshots,
                        owned.log.stream(),
                        owned.chat.store(),
                        &me.scratch(),
                    ) {
                        Ok((snap, purged)) => {
                            owned.snapshot_lsn.store(snap.lsn, Ordering::Relaxed);
                            println!(
                                "chat-node {}: snapshot of shard {s} at LSN {}: {} bytes, {purged} \
                                 records purged, in {} ms",
                                me.cfg.node,
                                snap.lsn,
                                snap.bytes,
                                t.elapsed().as_millis()
                            );
                        }
                        Err(e) => {
                            eprintln!("chat-node {}: snapshot of shard {s}: {e}", me.cfg.node)
                        }
                    }
                    owned.snapshotting.store(false, Ordering::Release);
                });
            if let Err(e) = spawned {
                eprintln!("chat-node: cannot start a snapshot thread: {e}");
            }
        }
    }

    /// Answers the shard's request subject: each request runs on a blocking thread of the
    /// node's runtime, against the shard's store as long as this node owns it.
    fn serve(self: &Arc<Self>, shard: u32) -> Result<tokio::task::JoinHandle<()>, String> {
        let client = self.nats.client().clone();
        let subject = rpc_subject(&self.cfg.stream.prefix, shard);
        let sub = self
            .nats
            .block_on(async move {
                let sub = client.subscribe(subject).await.map_err(|e| e.to_string())?;
                client.flush().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(sub)
            })
            .map_err(|e| e.to_string())??;
        let me = self.clone();
        let client = self.nats.client().clone();
        Ok(self.answering.handle().spawn(async move {
            let mut sub = sub;
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let me = me.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let answer =
                        tokio::task::spawn_blocking(move || me.answer(shard, &msg.payload))
                            .await
                            .unwrap_or_else(|_| {
                                Err(WireError::Other("request handler failed".into()))
                            });
                    let bytes = serde_json::to_vec(&answer).unwrap_or_default();
                    let _ = client.publish(reply, bytes.into()).await;
                });
            }
        }))
    }

    fn answer(&self, shard: u32, payload: &[u8]) -> Result<Reply, WireError> {
        let op: Op = serde_json::from_slice(payload)
            .map_err(|e| WireError::Other(format!("bad request: {e}")))?;
        let Some(owned) = self.local(shard) else {
            return Err(WireError::NotOwner(format!(
                "{} does not own shard {shard}",
                self.cfg.node
            )));
        };
        self.execute(&owned, op).map_err(WireError::from)
    }

    fn drop_shard(&self, shard: u32, why: &str) {
        let Some(owned) = self.slots[shard as usize].write().take() else {
            return;
        };
        eprintln!(
            "chat-node {}: giving up shard {shard}: {why}",
            self.cfg.node
        );
        owned.log.demote();
        owned.serving.abort();
        let _ = owned.lease.release();
        // Requests in flight hold clones; they fail with `Closed` and are asked again.
        let _ = owned.chat.clone().close();
    }

    /// Stops placing and gives every shard up (released leases: others take them at once
    /// instead of after the TTL).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _placing = self.placing.lock();
        for s in 0..self.cfg.shards {
            self.drop_shard(s, "shutting down");
        }
        let kv = self.nodes.clone();
        let key = format!("node.{}", self.cfg.node);
        let _ = self.nats.block_on(async move { kv.delete(key).await });
    }
}

/// The runtime that answers shard requests (see `Shards::answering`).
struct Answering {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Answering {
    fn start() -> Result<Answering, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shard-answer")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the shard request runtime: {e}"))?;
        Ok(Answering {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        // Never block here: the last owner may be dropped inside async code.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

pub fn rpc_subject(prefix: &str, shard: u32) -> String {
    format!("{prefix}.rpc.{shard}")
}

/// FNV-1a: stable across processes, versions and platforms (the standard library's hasher
/// is not).
pub fn fnv(parts: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn rendezvous(node: &str, shard: u32) -> u64 {
    let name = fnv(&node.bytes().map(u64::from).collect::<Vec<_>>());
    fnv(&[name, shard as u64])
}
