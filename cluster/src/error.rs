//! The cluster layer's error type.

use std::fmt::Display;

/// What went wrong in the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NATS refused a request, or it failed in transit (connection lost, no answer in time):
    /// the outcome of a write may be unknown.
    #[error("nats: {0}")]
    Nats(String),
    /// Another writer holds the shard's stream: a publish fenced by the expected last sequence
    /// was refused, and the stream's record at that sequence is not ours.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The shard lease is not (or no longer) held: it expired, another node took it, or it was
    /// released.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// A commit reached a commit log that does not lead its shard (it follows, or a failure
    /// stopped it): the node is not the shard's owner.
    #[error("not the shard's owner: {0}")]
    NotOwner(String),
    /// The stream and the store disagree in a way no retry repairs: a record without its
    /// sequence header, a store ahead of the stream, a stream emptied by a full purge.
    #[error("inconsistent: {0}")]
    Inconsistent(String),
    /// The stream no longer holds the records a store needs (purged below a checkpoint):
    /// restore the store from a checkpoint at or after `first_lsn - 1`.
    #[error("the stream starts at LSN {first_lsn}; a store at LSN {store_lsn} needs a checkpoint")]
    Truncated {
        /// The store's last LSN.
        store_lsn: u64,
        /// The first LSN the stream still holds.
        first_lsn: u64,
    },
    /// A local file operation failed (snapshot archives, restores); the message names the
    /// file.
    #[error("I/O: {0}")]
    Io(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The store refused an operation.
    #[error("store: {0}")]
    Store(#[from] chatstore::Error),
    /// Misuse of the blocking bridge (a blocking call made on the bridge's own runtime, or
    /// after it shut down), or bad configuration.
    #[error("{0}")]
    Usage(String),
}

/// A result with the cluster layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a NATS client error to [`Error::Nats`], saying what was being done.
pub(crate) fn nats_err<E: Display>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Nats(format!("{what}: {e}"))
}
