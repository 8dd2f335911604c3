//! chatstore shards replicated through NATS JetStream.
//!
//! A shard's state is a [`chatstore::Store`]; its source of truth is a JetStream stream, one
//! per shard, holding every commit record (see `docs/cluster.md` for the design and what each
//! failure does):
//!
//! - [`Nats`]: the connection, and the bridge from the synchronous store to the async client;
//! - [`ShardStream`]: the shard's stream, where it ends ([`Tail`]), catch-up of a follower
//!   store ([`ShardStream::catch_up`]), purges below a checkpoint;
//! - [`JetStreamCommitLog`]: the [`chatstore::CommitLog`] of the shard's owner, publishing each
//!   record fenced by the stream's expected last sequence;
//! - [`LeaseBucket`] / [`Lease`]: who owns a shard, in a KV bucket with a TTL;
//! - [`SnapshotBucket`]: shard snapshots in the object store, and
//!   [`checkpoint_and_purge`], which keeps a shard's stream bounded.
//!
//! Taking a shard over:
//!
//! ```no_run
//! # fn main() -> chatstore_cluster::Result<()> {
//! use std::sync::Arc;
//! use chatstore_cluster::*;
//!
//! let nats = Nats::connect(NatsOptions::default())?;
//! let stream = ShardStream::open(&nats, &StreamConfig::default(), 7)?;
//! let leases = LeaseBucket::open(&nats, LeaseConfig::default())?;
//! let log = JetStreamCommitLog::new(stream);
//! let store = chatstore::Store::open_with(
//!     "/var/lib/chat/shard-7",
//!     chatstore::Options {
//!         commit_log: Some(log.clone() as Arc<dyn chatstore::CommitLog>),
//!         ..Default::default()
//!     },
//! )?;
//! if let Some(lease) = leases.try_acquire(&shard_key(7), "node-a")? {
//!     let _renewing = lease.keep_alive(std::time::Duration::from_secs(3));
//!     log.promote(&store, Some(lease))?; // catch up, learn the tail: now writes go through
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod deadline;
mod error;
mod lease;
mod log;
mod nats;
mod snapshot;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
pub use lease::{shard_key, KeepAlive, Lease, LeaseBucket, LeaseConfig};
pub use log::JetStreamCommitLog;
pub use nats::{blocking, Nats, NatsOptions};
pub use snapshot::{
    checkpoint_and_purge, snapshot_name, Snapshot, SnapshotBucket, SnapshotConfig, LSN_METADATA,
};
pub use stream::{CatchUp, ShardStream, StreamConfig, Tail, LSN_HEADER};

/// Re-exported: the NATS client the crate is built on (its version is pinned).
pub use async_nats;
