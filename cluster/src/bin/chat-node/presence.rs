//! Presence in a replicated KV bucket (`chatstore_presence`) whose TTL is the seed's offline
//! time (10 s by default): a node puts `user.<id>` = its name at connect and at every 3 s
//! heartbeat for each user it holds a device of, and deletes it when the user's last device
//! on it leaves (if the key is still its own). A user whose key exists under another node's
//! name is online elsewhere; a node that dies stops refreshing and its users' keys expire.
//!
//! One key per user, so with devices on two nodes the key names the one that wrote last; when
//! that one's device leaves, the user looks offline until the other's next heartbeat (≤ 3 s).
//! NATS 2.9 sends no watch event for a TTL expiry, so nothing is pushed when a dead node's
//! users expire: views read the bucket when they are built.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chatstore::UserId;
use chatstore_cluster::Nats;

use crate::server::shared_presence::SharedPresence;

pub struct KvPresence {
    nats: Nats,
    kv: kv::Store,
    node: Bytes,
}

fn key(user: UserId) -> String {
    format!("user.{}", user.0)
}

impl KvPresence {
    pub fn open(
        nats: &Nats,
        node: &str,
        offline_after: Duration,
        replicas: usize,
    ) -> Result<KvPresence, String> {
        let kv = crate::buckets::open(
            nats,
            "chatstore_presence",
            replicas,
            offline_after,
            "who is online, refreshed by heartbeats",
        )?;
        Ok(KvPresence {
            nats: nats.clone(),
            kv,
            node: Bytes::from(node.to_string()),
        })
    }
}

impl SharedPresence for KvPresence {
    fn heartbeat(&self, users: &[UserId]) {
        let (kv, node, keys) = (
            self.kv.clone(),
            self.node.clone(),
            users.iter().map(|&u| key(u)).collect::<Vec<_>>(),
        );
        let _ = self.nats.block_on(async move {
            for k in keys {
                if let Err(e) = kv.put(k, node.clone()).await {
                    eprintln!("chat-node: presence heartbeat: {e}");
                    return;
                }
            }
        });
    }

    fn left(&self, user: UserId) {
        let (kv, node) = (self.kv.clone(), self.node.clone());
        let _ = self.nats.block_on(async move {
            if let Ok(Some(e)) = kv.entry(key(user)).await {
                if e.operation == kv::Operation::Put && e.value == node {
                    // At its revision: a heartbeat of another node meanwhile is left alone.
                    let _ = kv.delete_expect_revision(key(user), Some(e.revision)).await;
                }
            }
        });
    }

    fn online_elsewhere(&self, user: UserId) -> bool {
        let (kv, node) = (self.kv.clone(), self.node.clone());
        self.nats
            .block_on(async move { matches!(kv.get(key(user)).await, Ok(Some(v)) if v != node) })
            .unwrap_or(false)
    }
}
