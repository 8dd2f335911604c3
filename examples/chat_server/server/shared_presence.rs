//! Presence shared by the nodes of a cluster. Each node still runs the single server's
//! presence for the devices it holds (heartbeats, silent devices); this seam lets it tell the
//! others, ask what the cluster knows of a user it holds no device of, and leave announcing
//! online/offline to the cluster (which sees every node's devices, and the nodes that died).

use chatstore::presence::PresenceStatus;
use chatstore::UserId;

/// Blocking calls.
pub trait SharedPresence: Send + Sync {
    /// These users have a live device on this node (called at connect and every heartbeat).
    fn heartbeat(&self, users: &[UserId]);
    /// The last device of `user` on this node left.
    fn left(&self, user: UserId);
    /// The user's presence across the cluster: online through some node, or offline with
    /// their last seen time. `None` if it cannot be told (the node's own view stands).
    fn status(&self, user: UserId) -> Option<PresenceStatus>;
    /// Whether the cluster announces online/offline to contacts itself; then a node does not
    /// broadcast its own devices' transitions (they would be told twice, or wrongly: a user
    /// leaving one node may still be online through another).
    fn announces(&self) -> bool;
}
