//! Presence in a replicated KV bucket, `chatstore_online`: a node puts `u.<user>.<node>` when
//! a device of the user connects there and at every 3 s heartbeat for each user it holds a
//! device of, and puts "left" there when the user's last device on it leaves. One key per
//! (user, node): a user with devices on two nodes is online while either refreshes its own.
//!
//! Every node watches the bucket (`presence_watch`): views read who is online from that
//! watch, and the owner of a user's shard announces the user's online/offline to their
//! contacts, writes their last seen to the shard, and clears their keys.
//!
//! The bucket's TTL is not the offline time: NATS 2.9 says nothing when an entry expires, so
//! liveness is the age of a node's last put, and entries stay long enough (the offline time
//! plus two lease TTLs, twice) for the owner of the user's shard, even one that took it over
//! from a dead node, to see them go stale and announce it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chatstore::presence::PresenceStatus;
use chatstore::UserId;
use chatstore_cluster::Nats;

use crate::presence_watch::{key, Watcher, LEFT};
use crate::server::shared_presence::SharedPresence;

pub struct KvPresence {
    nats: Nats,
    kv: kv::Store,
    node: String,
    watcher: Arc<Watcher>,
}

impl KvPresence {
    pub fn open(
        nats: &Nats,
        node: &str,
        offline_after: Duration,
        lease_ttl: Duration,
        replicas: usize,
    ) -> Result<KvPresence, String> {
        let keep = (offline_after + lease_ttl * 2) * 2;
        let kv = crate::buckets::open(
            nats,
            "chatstore_online",
            replicas,
            keep,
            "who is online: u.<user>.<node>, put at every heartbeat",
        )?;
        let tick = (offline_after / 10).clamp(Duration::from_millis(200), Duration::from_secs(1));
        let watcher = Watcher::start(nats, kv.clone(), offline_after, keep, tick)?;
        Ok(KvPresence {
            nats: nats.clone(),
            kv,
            node: node.to_string(),
            watcher,
        })
    }

    pub fn watcher(&self) -> &Arc<Watcher> {
        &self.watcher
    }

    fn put(&self, users: &[UserId], value: &'static [u8]) {
        let kv = self.kv.clone();
        let keys: Vec<String> = users.iter().map(|&u| key(u, &self.node)).collect();
        let res = self.nats.block_on(async move {
            for k in keys {
                kv.put(k, Bytes::from_static(value)).await?;
            }
            Ok::<_, kv::PutError>(())
        });
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("chat-node: presence: {e}"),
            Err(e) => eprintln!("chat-node: presence: {e}"),
        }
    }
}

impl SharedPresence for KvPresence {
    fn heartbeat(&self, users: &[UserId]) {
        self.put(users, b"");
    }

    fn left(&self, user: UserId) {
        self.put(&[user], LEFT);
    }

    fn status(&self, user: UserId) -> Option<PresenceStatus> {
        Some(self.watcher.status(user))
    }

    fn announces(&self) -> bool {
        true
    }
}
