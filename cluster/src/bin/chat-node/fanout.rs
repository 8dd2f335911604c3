//! Sessions and fanout on NATS subjects: a node subscribes `user.<id>` while it holds a device
//! of that user, and a push for a user is one publish on that subject. Nobody keeps a table
//! of who is connected where: the subscriptions are the table, and NATS routes by them.
//!
//! Publishes leave in the order they were made (one queue, one publishing task), so two
//! pushes one node makes for a user arrive in that order.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, Weak};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use chatstore::UserId;
use chatstore_cluster::Nats;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::server::hub::{Fanout, Hub};

/// One push on the wire.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The node that published it, and the connection there that must not get it.
    node: u64,
    skip: Option<u64>,
    msg: Option<(u64, u64)>,
    frame: String,
}

pub struct NatsFanout {
    nats: Nats,
    /// Random per process: connection ids are only unique within one.
    node: u64,
    hub: OnceLock<Weak<Hub>>,
    queue: mpsc::UnboundedSender<(String, Bytes)>,
    watching: Mutex<HashMap<UserId, (usize, tokio::task::JoinHandle<()>)>>,
}

pub fn subject(user: UserId) -> String {
    format!("user.{}", user.0)
}

impl NatsFanout {
    pub fn new(nats: &Nats, node: u64) -> NatsFanout {
        let (queue, mut rx) = mpsc::unbounded_channel::<(String, Bytes)>();
        let client = nats.client().clone();
        nats.handle().spawn(async move {
            while let Some((subject, payload)) = rx.recv().await {
                if let Err(e) = client.publish(subject, payload).await {
                    eprintln!("chat-node: fanout publish: {e}");
                }
            }
        });
        NatsFanout {
            nats: nats.clone(),
            node,
            hub: OnceLock::new(),
            queue,
            watching: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes for connection `skip` of node `node` (a shard owner pushing a message sent
    /// through another node).
    pub fn publish_as(
        &self,
        node: u64,
        users: &[UserId],
        text: &str,
        msg: Option<(u64, u64)>,
        skip: Option<u64>,
    ) {
        let env = Envelope {
            node,
            skip,
            msg,
            frame: text.to_string(),
        };
        let Ok(payload) = serde_json::to_vec(&env) else {
            return;
        };
        let payload = Bytes::from(payload);
        for &u in users {
            let _ = self.queue.send((subject(u), payload.clone()));
        }
    }

    fn deliver(node: u64, hub: &Weak<Hub>, user: UserId, payload: &[u8]) {
        let Ok(env) = serde_json::from_slice::<Envelope>(payload) else {
            return;
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        let skip = if env.node == node { env.skip } else { None };
        hub.push_local(&[user], &Utf8Bytes::from(env.frame), env.msg, skip);
    }
}

impl Fanout for NatsFanout {
    fn attach(&self, hub: Weak<Hub>) {
        let _ = self.hub.set(hub);
    }

    fn publish(
        &self,
        users: &[UserId],
        text: &Utf8Bytes,
        msg: Option<(u64, u64)>,
        skip: Option<u64>,
    ) {
        self.publish_as(self.node, users, text.as_str(), msg, skip);
    }

    fn watch(&self, user: UserId) {
        let mut watching = self.watching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, _)) = watching.get_mut(&user) {
            *n += 1;
            return;
        }
        let Some(hub) = self.hub.get().cloned() else {
            return;
        };
        let client = self.nats.client().clone();
        let node = self.node;
        // Subscribed (and the server told) before this returns: a push made after the
        // connection's first frame was read cannot miss it.
        let subscribed = self.nats.block_on(async move {
            let sub = client
                .subscribe(subject(user))
                .await
                .map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(sub)
        });
        let mut sub = match subscribed {
            Ok(Ok(sub)) => sub,
            Ok(Err(e)) | Err(chatstore_cluster::Error::Nats(e)) => {
                eprintln!("chat-node: subscribing to {}: {e}", subject(user));
                return;
            }
            Err(e) => {
                eprintln!("chat-node: subscribing to {}: {e}", subject(user));
                return;
            }
        };
        let task = self.nats.handle().spawn(async move {
            while let Some(m) = sub.next().await {
                NatsFanout::deliver(node, &hub, user, &m.payload);
            }
        });
        watching.insert(user, (1, task));
    }

    fn unwatch(&self, user: UserId) {
        let mut watching = self.watching.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((n, task)) = watching.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                // Dropping the subscriber (with the task) unsubscribes.
                task.abort();
                watching.remove(&user);
            }
        }
    }
}
