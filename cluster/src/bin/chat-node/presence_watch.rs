//! Who is online across the cluster, from a watch of the presence bucket, and the one node
//! that announces each user's online/offline: the owner of the user's shard.
//!
//! Every node watches every key (`u.<user>.<node>`, written by `presence`) and keeps, per
//! user, the time of each node's last put (the server's timestamp, the same for every
//! watcher) and whether that node's devices left. A user is online while some node's put is
//! younger than the offline time and not a "left".
//!
//! NATS 2.9 sends a watch nothing when an entry expires by the bucket's TTL
//! (`tests/nats_server.rs`), so a node that dies never says its users left; its puts just
//! stop. Hence liveness by age, and offline decided by a sweep: a user with entries but none
//! live is offline, and the node owning the user's shard (whoever it is at that sweep: the
//! rule is level-triggered, so an owner that took the shard over finds the same users) writes
//! their last seen to the shard, pushes the offline frame to their contacts, and deletes the
//! entries (at their revisions, so a device that came back meanwhile is kept). The deletes
//! reach every watcher, which then forget the user (keeping their last seen in memory for
//! views). An online transition is announced when the put that makes a user live arrives, by
//! the owner of the user's shard at that moment.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use chatstore::presence::PresenceStatus;
use chatstore::UserId;
use chatstore_cluster::Nats;
use futures_util::StreamExt;
use parking_lot::Mutex;

/// A "left" put: the node's last device of the user went away at the put's time.
pub const LEFT: &[u8] = b"left";

/// Last-seen times kept in memory for views; past this many users they are all forgotten
/// (the user's shard has them).
const LAST_SEEN_CACHE: usize = 100_000;

/// What the node does on the cluster's behalf (set once the server runs).
pub struct Authority {
    /// Whether this node owns the user's shard now.
    pub speaks_for: Box<dyn Fn(UserId) -> bool + Send + Sync>,
    /// Writes the user's last seen to their shard.
    pub store_last_seen: Box<dyn Fn(UserId, u64) + Send + Sync>,
    /// The user's last seen as their shard keeps it.
    pub stored_last_seen: Box<dyn Fn(UserId) -> Option<u64> + Send + Sync>,
    /// Pushes the presence frame to the user's contacts.
    pub push: Box<dyn Fn(UserId, bool, Option<u64>) + Send + Sync>,
}

#[derive(Clone, Copy)]
struct Put {
    at_ms: u64,
    left: bool,
    revision: u64,
}

#[derive(Default)]
struct User {
    by_node: HashMap<String, Put>,
    /// This node announced the user offline and is waiting for the deletes.
    announced_offline: bool,
}

impl User {
    fn live(&self, now_ms: u64, offline_ms: u64) -> bool {
        self.by_node
            .values()
            .any(|p| !p.left && now_ms.saturating_sub(p.at_ms) < offline_ms)
    }

    fn last_ms(&self) -> u64 {
        self.by_node.values().map(|p| p.at_ms).max().unwrap_or(0)
    }
}

enum Announce {
    Online(UserId),
    Offline {
        user: UserId,
        last_seen_ms: u64,
        keys: Vec<(String, u64)>,
    },
}

pub struct Watcher {
    offline_ms: u64,
    /// Entries older than this are forgotten even if nobody deleted them (the bucket's TTL
    /// removed them without a word).
    forget_ms: u64,
    users: Mutex<HashMap<UserId, User>>,
    last_seen: Mutex<HashMap<UserId, u64>>,
    authority: OnceLock<Authority>,
    announcing: Mutex<mpsc::Sender<Announce>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn key(user: UserId, node: &str) -> String {
    format!("u.{}.{node}", user.0)
}

fn parse(key: &str) -> Option<(UserId, &str)> {
    let rest = key.strip_prefix("u.")?;
    let (user, node) = rest.split_once('.')?;
    Some((UserId(user.parse().ok()?), node))
}

impl Watcher {
    /// Starts watching `kv` (and sweeping every `tick`). Announcements wait for
    /// [`Watcher::set_authority`].
    pub fn start(
        nats: &Nats,
        kv: kv::Store,
        offline_after: Duration,
        forget_after: Duration,
        tick: Duration,
    ) -> Result<Arc<Watcher>, String> {
        let (tx, rx) = mpsc::channel();
        let watcher = Arc::new(Watcher {
            offline_ms: offline_after.as_millis() as u64,
            forget_ms: forget_after.as_millis() as u64,
            users: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            authority: OnceLock::new(),
            announcing: Mutex::new(tx),
        });
        // Announcing calls shards and NATS (blocking): one thread, in order, so a user's
        // online and offline frames leave in the order they were decided.
        let w = Arc::downgrade(&watcher);
        let (announce_nats, announce_kv) = (nats.clone(), kv.clone());
        std::thread::Builder::new()
            .name("presence-announce".into())
            .spawn(move || {
                while let Ok(a) = rx.recv() {
                    let Some(w) = w.upgrade() else { return };
                    w.announce(&announce_nats, &announce_kv, a);
                }
            })
            .map_err(|e| format!("cannot start the presence thread: {e}"))?;
        let w = Arc::downgrade(&watcher);
        nats.handle().spawn(async move {
            loop {
                match kv.watch_with_history("u.>").await {
                    Ok(mut entries) => {
                        while let Some(entry) = entries.next().await {
                            let Some(w) = w.upgrade() else { return };
                            match entry {
                                Ok(e) => w.apply(&e),
                                Err(e) => {
                                    eprintln!("chat-node: presence watch: {e}");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => eprintln!("chat-node: presence watch: {e}"),
                }
                if w.strong_count() == 0 {
                    return;
                }
                // The watch ended (a NATS server went away): start again; its history
                // brings the map up to date.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let w = Arc::downgrade(&watcher);
        nats.handle().spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                let Some(w) = w.upgrade() else { return };
                w.sweep();
            }
        });
        Ok(watcher)
    }

    pub fn set_authority(&self, authority: Authority) {
        let _ = self.authority.set(authority);
    }

    /// The user's presence as the cluster knows it.
    pub fn status(&self, user: UserId) -> PresenceStatus {
        let now = now_ms();
        if let Some(u) = self.users.lock().get(&user) {
            if u.live(now, self.offline_ms) {
                return PresenceStatus::Online;
            }
            return PresenceStatus::Offline {
                last_seen_ms: Some(u.last_ms()),
            };
        }
        if let Some(&ms) = self.last_seen.lock().get(&user) {
            return PresenceStatus::Offline {
                last_seen_ms: Some(ms),
            };
        }
        let stored = self
            .authority
            .get()
            .and_then(|a| (a.stored_last_seen)(user));
        PresenceStatus::Offline {
            last_seen_ms: stored,
        }
    }

    fn speaks_for(&self, user: UserId) -> bool {
        self.authority.get().is_some_and(|a| (a.speaks_for)(user))
    }

    fn send(&self, a: Announce) {
        let _ = self.announcing.lock().send(a);
    }

    fn apply(&self, e: &kv::Entry) {
        let Some((user, node)) = parse(&e.key) else {
            return;
        };
        let now = now_ms();
        let created = (e.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let mut users = self.users.lock();
        let u = users.entry(user).or_default();
        let was_live = u.live(now, self.offline_ms);
        // Last seen is the newest put's time, not the time its key was cleared.
        let last_put = u.last_ms();
        match e.operation {
            kv::Operation::Put => {
                u.by_node.insert(
                    node.to_string(),
                    Put {
                        at_ms: created.min(now),
                        left: e.value.as_ref() == LEFT,
                        revision: e.revision,
                    },
                );
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                u.by_node.remove(node);
            }
        }
        let live = u.live(now, self.offline_ms);
        if live {
            u.announced_offline = false;
        }
        if u.by_node.is_empty() {
            users.remove(&user);
            if last_put > 0 {
                self.remember_last_seen(user, last_put);
            }
            return;
        }
        // A put replayed from the watch's history is a user the previous announcer (or this
        // node before a restart of the watch) already told about.
        if !was_live && live && e.seen_current && self.speaks_for(user) {
            self.send(Announce::Online(user));
        } else if was_live && !live {
            if let Some(a) = self.settle(user, u, now) {
                self.send(a);
            }
        }
    }

    /// What to do about a user who is not live: announce them offline if this node speaks
    /// for them and has not yet.
    fn settle(&self, user: UserId, u: &mut User, now: u64) -> Option<Announce> {
        if u.announced_offline || u.live(now, self.offline_ms) || !self.speaks_for(user) {
            return None;
        }
        u.announced_offline = true;
        Some(Announce::Offline {
            user,
            last_seen_ms: u.last_ms(),
            keys: u
                .by_node
                .iter()
                .map(|(node, p)| (key(user, node), p.revision))
                .collect(),
        })
    }

    fn sweep(&self) {
        let now = now_ms();
        let mut due = Vec::new();
        let mut forgotten = Vec::new();
        {
            let mut users = self.users.lock();
            users.retain(|&user, u| {
                if u.live(now, self.offline_ms) {
                    return true;
                }
                if now.saturating_sub(u.last_ms()) >= self.forget_ms {
                    forgotten.push((user, u.last_ms()));
                    return false;
                }
                due.extend(self.settle(user, u, now));
                true
            });
        }
        for (user, ms) in forgotten {
            self.remember_last_seen(user, ms);
        }
        for a in due {
            self.send(a);
        }
    }

    fn remember_last_seen(&self, user: UserId, ms: u64) {
        let mut seen = self.last_seen.lock();
        if seen.len() >= LAST_SEEN_CACHE {
            seen.clear();
        }
        let e = seen.entry(user).or_insert(ms);
        *e = (*e).max(ms);
    }

    fn announce(&self, nats: &Nats, kv: &kv::Store, a: Announce) {
        let Some(auth) = self.authority.get() else {
            return;
        };
        match a {
            Announce::Online(user) => (auth.push)(user, true, None),
            Announce::Offline {
                user,
                last_seen_ms,
                keys,
            } => {
                (auth.store_last_seen)(user, last_seen_ms);
                self.remember_last_seen(user, last_seen_ms);
                (auth.push)(user, false, Some(last_seen_ms));
                let kv = kv.clone();
                let deleted = nats.block_on(async move {
                    for (k, revision) in keys {
                        // At the revision seen: a device that came back meanwhile stays. A key
                        // the bucket's TTL already removed refuses; nothing to do then.
                        let _ = kv.delete_expect_revision(k, Some(revision)).await;
                    }
                });
                if let Err(e) = deleted {
                    eprintln!("chat-node: presence: clearing user {}: {e}", user.0);
                }
            }
        }
    }
}
