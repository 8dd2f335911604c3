//! The sessions registry: which users have which live connections (several devices a user),
//! and pushing frames to them without ever waiting on a slow one.
//!
//! On a cluster node the registry only knows this node's connections: a [`Fanout`] carries
//! every push to the nodes that hold devices of the users it is for (this one included).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use axum::extract::ws::Utf8Bytes;
use chatstore::UserId;
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A frame on its way to one connection.
pub enum Out {
    /// A JSON text frame; `msg` is `(conversation, id)` for `message` frames.
    Frame {
        text: Utf8Bytes,
        msg: Option<(u64, u64)>,
    },
    /// Send a close frame after everything queued before it, then stop.
    Close(u16, &'static str),
}

impl Out {
    pub fn text(text: impl Into<Utf8Bytes>) -> Out {
        Out::Frame {
            text: text.into(),
            msg: None,
        }
    }
}

#[derive(PartialEq, Eq)]
enum Pushed {
    Queued,
    Full,
    Gone,
}

/// One live WebSocket.
pub struct Conn {
    pub id: u64,
    pub user: UserId,
    pub token: Arc<str>,
    tx: mpsc::Sender<Out>,
    /// Cancelled to drop the connection at once (too slow, signed out, dead).
    pub cancel: CancellationToken,
    /// Why it was dropped: a WebSocket close code and reason.
    pub close_reason: Mutex<Option<(u16, &'static str)>>,
    /// When the connection opened (a monotonic clock).
    opened: tokio::time::Instant,
    /// Last time anything came from the client, ms after `opened`.
    last_heard_ms: AtomicU64,
    /// Whether a frame of the client's is being handled: frames (pongs, heartbeats) are read
    /// one after another, so while the server works on one, the client's next ones wait
    /// unread, and that silence is the server's, not the client's.
    handling: AtomicBool,
}

impl Conn {
    pub fn new(id: u64, user: UserId, token: Arc<str>, tx: mpsc::Sender<Out>) -> Self {
        Conn {
            id,
            user,
            token,
            tx,
            cancel: CancellationToken::new(),
            close_reason: Mutex::new(None),
            opened: tokio::time::Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            handling: AtomicBool::new(false),
        }
    }

    /// A frame of the client's is being handled (until [`Conn::handled`]).
    pub fn handling(&self) {
        self.heard();
        self.handling.store(true, Ordering::Relaxed);
    }

    /// The frame is handled; the client counts as heard now (its frames that queued
    /// meanwhile are read next).
    pub fn handled(&self) {
        self.handling.store(false, Ordering::Relaxed);
        self.heard();
    }

    /// Something came from the client.
    pub fn heard(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_heard_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the connection counts as dead if nothing more comes from the client.
    pub fn silent_deadline(&self, offline_after: std::time::Duration) -> tokio::time::Instant {
        if self.handling.load(Ordering::Relaxed) {
            return tokio::time::Instant::now() + offline_after;
        }
        self.opened
            + std::time::Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed))
            + offline_after
    }

    /// Queues a frame; a full queue drops the connection (it is not reading). Never waits.
    /// Returns false if the frame was not queued.
    pub fn push(&self, out: Out) -> bool {
        self.try_push(out) == Pushed::Queued
    }

    fn try_push(&self, out: Out) -> Pushed {
        if self.cancel.is_cancelled() {
            return Pushed::Gone;
        }
        match self.tx.try_send(out) {
            Ok(()) => Pushed::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_with(1008, "too slow: outgoing queue full");
                Pushed::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Gone,
        }
    }

    pub fn drop_with(&self, code: u16, reason: &'static str) {
        self.close_reason.lock().get_or_insert((code, reason));
        self.cancel.cancel();
    }
}

/// Delivery of pushes beyond this process. Calls never wait on a slow receiver.
pub trait Fanout: Send + Sync {
    /// Called once the hub exists: deliveries from other nodes go to its
    /// [`Hub::push_local`].
    fn attach(&self, hub: Weak<Hub>);
    /// Delivers a frame to every device of every user in `users`, on any node; `skip` is a
    /// connection of this node's hub.
    fn publish(
        &self,
        users: &[UserId],
        text: &Utf8Bytes,
        msg: Option<(u64, u64)>,
        skip: Option<u64>,
    );
    /// A device of `user` connected here: from when this returns, frames for `user` reach
    /// this node.
    fn watch(&self, user: UserId);
    /// A device of `user` left this node (one call per earlier `watch`).
    fn unwatch(&self, user: UserId);
}

#[derive(Default)]
pub struct Hub {
    conns: RwLock<HashMap<UserId, Vec<Arc<Conn>>>>,
    next_id: AtomicU64,
    pub dropped_slow: AtomicU64,
    fanout: OnceLock<Arc<dyn Fanout>>,
}

impl Hub {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Sends every push through `fanout` from now on.
    pub fn set_fanout(self: &Arc<Self>, fanout: Arc<dyn Fanout>) {
        fanout.attach(Arc::downgrade(self));
        let _ = self.fanout.set(fanout);
    }

    /// Adds a connection; true if it is the user's first.
    pub fn register(&self, conn: Arc<Conn>) -> bool {
        if let Some(f) = self.fanout.get() {
            f.watch(conn.user);
        }
        let mut map = self.conns.write();
        let list = map.entry(conn.user).or_default();
        list.push(conn);
        list.len() == 1
    }

    /// Removes a connection; true if it was the user's last.
    pub fn unregister(&self, conn: &Conn) -> bool {
        let last = {
            let mut map = self.conns.write();
            let Some(list) = map.get_mut(&conn.user) else {
                return false;
            };
            list.retain(|c| c.id != conn.id);
            if list.is_empty() {
                map.remove(&conn.user);
                true
            } else {
                false
            }
        };
        if let Some(f) = self.fanout.get() {
            f.unwatch(conn.user);
        }
        last
    }

    /// Users with at least one live connection here.
    pub fn users(&self) -> Vec<UserId> {
        self.conns.read().keys().copied().collect()
    }

    pub fn is_connected(&self, user: UserId) -> bool {
        self.conns.read().contains_key(&user)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.read().values().map(Vec::len).sum()
    }

    /// Pushes a frame to every connection of every user in `users`, except connection `skip`.
    pub fn push_users(
        &self,
        users: &[UserId],
        text: &Utf8Bytes,
        msg: Option<(u64, u64)>,
        skip: Option<u64>,
    ) {
        match self.fanout.get() {
            Some(f) => f.publish(users, text, msg, skip),
            None => self.push_local(users, text, msg, skip),
        }
    }

    /// Pushes a frame to this process's connections only.
    pub fn push_local(
        &self,
        users: &[UserId],
        text: &Utf8Bytes,
        msg: Option<(u64, u64)>,
        skip: Option<u64>,
    ) {
        let targets: Vec<Arc<Conn>> = {
            let map = self.conns.read();
            users
                .iter()
                .filter_map(|u| map.get(u))
                .flatten()
                .filter(|c| Some(c.id) != skip)
                .cloned()
                .collect()
        };
        for c in targets {
            let pushed = c.try_push(Out::Frame {
                text: text.clone(),
                msg,
            });
            if pushed == Pushed::Full {
                self.dropped_slow.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Drops every connection opened with `token` (sign-out).
    pub fn drop_token(&self, token: &str) {
        for c in self.conns.read().values().flatten() {
            if &*c.token == token {
                c.drop_with(4001, "signed out");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection whose frame the server is still handling is not silent, however long
    /// the handling takes: the client's pongs wait unread behind it.
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_not_silent_while_its_frame_is_handled() {
        let (tx, _rx) = mpsc::channel(4);
        let conn = Conn::new(1, UserId(1), Arc::from("t"), tx);
        let offline_after = Duration::from_secs(10);
        conn.handling();
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(
            conn.silent_deadline(offline_after) > tokio::time::Instant::now(),
            "silent while its own request was in progress"
        );
        conn.handled();
        assert_eq!(
            conn.silent_deadline(offline_after),
            tokio::time::Instant::now() + offline_after,
            "heard when the handling ended"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(conn.silent_deadline(offline_after) <= tokio::time::Instant::now());
    }
}
