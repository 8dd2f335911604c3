//! The commit-log seam: where a commit must be durable before it is acknowledged, and how
//! another store applies the same commit.
//!
//! Every commit (one transaction: the messages it appended, with their assigned ids and
//! timestamps, and the state entries it set) becomes one **commit record** with a **log
//! sequence number** (LSN): 1, 2, 3, ... in commit order. By default the local WAL is the
//! log: a record is acknowledged once it is fsynced there ([`Durability::Sync`]). A store
//! opened with [`Options::commit_log`] also hands each commit group's records to that log and
//! acknowledges nothing until it returns: a replicated log (a Raft group, a JetStream stream)
//! is then the source of truth, and the local WAL only a cache of it that may run in
//! [`Durability::Buffered`].
//!
//! Another store reaches the same state by [`Store::apply`]ing the same records in order:
//! apply is deterministic (the record carries ids and timestamps) and idempotent by sequence
//! (a record at or below [`Store::last_lsn`] is a no-op), and the last applied sequence is
//! durable with the data (the manifest records the highest flushed one, the WAL the rest), so
//! a store that restarts resumes from [`Store::last_lsn`]. [`Store::checkpoint`] reports the
//! sequence its copy holds; a store opened from it continues from there.
//!
//! A store that applies records must take no writes of its own: its sequence numbers would
//! no longer be the log's. Both stores need the same [`Options::max_message_bytes`].
//!
//! [`Durability::Sync`]: crate::Durability::Sync
//! [`Durability::Buffered`]: crate::Durability::Buffered
//! [`Options::commit_log`]: crate::Options::commit_log
//! [`Options::max_message_bytes`]: crate::Options::max_message_bytes
//! [`Store::apply`]: crate::Store::apply
//! [`Store::last_lsn`]: crate::Store::last_lsn
//! [`Store::checkpoint`]: crate::Store::checkpoint

use std::fmt;

/// One commit record as a commit log receives it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CommitRecord<'a> {
    /// Its log sequence number.
    pub lsn: u64,
    /// The encoded commit: the WAL batch body (`docs/format-wal.md`, "Batch payload"). Pass it
    /// unchanged to [`Store::apply`](crate::Store::apply).
    pub body: &'a [u8],
}

impl fmt::Debug for CommitRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitRecord")
            .field("lsn", &self.lsn)
            .field("body_bytes", &self.body.len())
            .finish()
    }
}

/// A log every commit must reach before it is acknowledged (see the [module
/// documentation](self)).
pub trait CommitLog: Send + Sync + fmt::Debug {
    /// Makes `records` durable in the log, in order. The store calls it from its commit
    /// leader, once per commit group, with consecutive sequence numbers continuing the
    /// previous call's, before anything of the group is applied or acknowledged.
    ///
    /// An error fails every write of the group and poisons the store: the log may or may not
    /// hold the records, so the store must not guess. Reopen it and [`apply`] what the log
    /// holds after [`last_lsn`].
    ///
    /// [`apply`]: crate::Store::apply
    /// [`last_lsn`]: crate::Store::last_lsn
    fn append(
        &self,
        records: &[CommitRecord<'_>],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}
