//! Presence shared by the nodes of a cluster. Each node still runs the single server's
//! presence for the devices it holds (heartbeats, online/offline transitions); this seam lets
//! it tell the others, and ask whether a user it does not see is online on another node.

use chatstore::UserId;

/// Blocking calls.
pub trait SharedPresence: Send + Sync {
    /// These users have a live device on this node (called at connect and every heartbeat).
    fn heartbeat(&self, users: &[UserId]);
    /// The last device of `user` on this node left.
    fn left(&self, user: UserId);
    /// Whether `user` is online through another node, as of that node's last heartbeat.
    fn online_elsewhere(&self, user: UserId) -> bool;
}
