//! Shard leases in a JetStream KV bucket.
//!
//! One key per shard (`shard-<n>`). Taking a lease is a KV `create` (refused if the key
//! exists); renewing is an `update` at the revision the holder last wrote (refused if anyone
//! wrote since, or if the entry expired); the bucket's TTL (`max_age`) expires a lease that is
//! not renewed, after which the next `create` takes it. The value names the holder and is
//! unique to one acquisition, so a holder recognises its own write after an answer was lost.
//!
//! The holder's own view is conservative: a lease is valid locally until the moment its last
//! successful create or renew was *sent* plus the TTL minus a safety margin, measured on the
//! monotonic clock. The server expires it no earlier than TTL after it stored it, which is
//! after it was sent, so a holder stops using a lease before anyone else can take it (as long
//! as clock rates differ by less than the margin). Fencing by the stream's expected last
//! sequence does not depend on clocks at all: see [`JetStreamCommitLog`](crate::JetStreamCommitLog).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::deadline;
use crate::error::{nats_err, Error, Result};
use crate::nats::Nats;

/// How leases are kept.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// The KV bucket (letters, digits, `-`, `_`).
    pub bucket: String,
    /// How long a lease lives without renewal: the bucket's `max_age`. Fixed when the bucket
    /// is created; opening an existing bucket with another TTL is an error.
    pub ttl: Duration,
    /// Replicas of the bucket (3 on a 3-server cluster).
    pub replicas: usize,
    /// How long before the TTL runs out the holder stops trusting its lease.
    pub margin: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            bucket: "chatstore_leases".to_string(),
            ttl: Duration::from_secs(10),
            replicas: 3,
            margin: Duration::from_secs(2),
        }
    }
}

/// The lease bucket.
#[derive(Clone)]
pub struct LeaseBucket {
    nats: Nats,
    kv: kv::Store,
    config: LeaseConfig,
}

impl std::fmt::Debug for LeaseBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseBucket")
            .field("config", &self.config)
            .finish()
    }
}

/// The key of a shard's lease.
pub fn shard_key(shard: u32) -> String {
    format!("shard-{shard}")
}

impl LeaseBucket {
    /// Opens the bucket, creating it if it does not exist. Blocking.
    pub fn open(nats: &Nats, config: LeaseConfig) -> Result<LeaseBucket> {
        if config.ttl.is_zero() || config.margin >= config.ttl {
            return Err(Error::Usage(format!(
                "lease TTL {:?} must be longer than its margin {:?}",
                config.ttl, config.margin
            )));
        }
        let js = nats.jetstream().clone();
        let cfg = config.clone();
        let kv = nats.block_on(async move {
            let created = js
                .create_key_value(kv::Config {
                    bucket: cfg.bucket.clone(),
                    history: 1,
                    max_age: cfg.ttl,
                    storage: StorageType::File,
                    num_replicas: cfg.replicas.max(1),
                    description: "chatstore shard leases".into(),
                    ..Default::default()
                })
                .await;
            let kv = match created {
                Ok(kv) => kv,
                // It exists with another configuration (another TTL?): open it and compare.
                Err(create) => js
                    .get_key_value(&cfg.bucket)
                    .await
                    .map_err(|e| Error::Nats(format!("open lease bucket: {create}; then: {e}")))?,
            };
            let ttl = kv
                .status()
                .await
                .map_err(nats_err("lease bucket status"))?
                .max_age();
            if ttl != cfg.ttl {
                return Err(Error::Usage(format!(
                    "lease bucket {} has a TTL of {ttl:?}, not {:?}",
                    cfg.bucket, cfg.ttl
                )));
            }
            Ok(kv)
        })??;
        Ok(LeaseBucket {
            nats: nats.clone(),
            kv,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Takes the lease `key` for `owner` if nobody holds it; `None` if somebody does.
    /// Blocking.
    pub fn try_acquire(&self, key: &str, owner: &str) -> Result<Option<Lease>> {
        let token = token(owner);
        let kv = self.kv.clone();
        let k = key.to_string();
        let value = Bytes::from(token.clone());
        let sent = Instant::now();
        let revision = self
            .nats
            .block_on(async move { create(&kv, &k, value).await })??;
        Ok(revision.map(|revision| Lease {
            inner: Arc::new(LeaseInner {
                nats: self.nats.clone(),
                kv: self.kv.clone(),
                key: key.to_string(),
                owner: owner.to_string(),
                token: Bytes::from(token),
                valid_for: self.config.ttl.saturating_sub(self.config.margin),
                state: Mutex::new(LeaseState {
                    revision,
                    valid_until: deadline::after(
                        sent,
                        self.config.ttl.saturating_sub(self.config.margin),
                    ),
                    lost: None,
                }),
            }),
        }))
    }

    /// Who holds `key` now, and at which revision (`None`: nobody). Informational: the
    /// answer may be stale by the time it arrives. Blocking.
    pub fn holder(&self, key: &str) -> Result<Option<(String, u64)>> {
        let kv = self.kv.clone();
        let k = key.to_string();
        let entry = self
            .nats
            .block_on(async move { kv.entry(&k).await.map_err(nats_err("read a lease")) })??;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| (owner_of(&e.value), e.revision)))
    }
}

/// A held lease. Cheap to clone; all clones share its state.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    nats: Nats,
    kv: kv::Store,
    key: String,
    owner: String,
    token: Bytes,
    valid_for: Duration,
    state: Mutex<LeaseState>,
}

struct LeaseState {
    revision: u64,
    valid_until: Instant,
    lost: Option<String>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("Lease")
            .field("key", &self.inner.key)
            .field("owner", &self.inner.owner)
            .field("revision", &st.revision)
            .field("lost", &st.lost)
            .finish()
    }
}

impl Lease {
    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The holder's name.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The KV revision of the holder's last write.
    pub fn revision(&self) -> u64 {
        self.inner.state.lock().revision
    }

    /// Whether the holder may still act on it (not lost, not past its local deadline).
    pub fn is_valid(&self) -> bool {
        self.check().is_ok()
    }

    /// [`Error::LeaseLost`] unless the lease is valid.
    pub fn check(&self) -> Result<()> {
        let st = self.inner.state.lock();
        if let Some(why) = &st.lost {
            return Err(Error::LeaseLost(format!("{}: {why}", self.inner.key)));
        }
        if Instant::now() >= st.valid_until {
            return Err(Error::LeaseLost(format!(
                "{}: not renewed in time",
                self.inner.key
            )));
        }
        Ok(())
    }

    /// Renews the lease (compare-and-set on its revision). [`Error::LeaseLost`] if someone
    /// else wrote the key or it expired; a transient failure leaves it valid until its
    /// deadline. Blocking.
    pub fn renew(&self) -> Result<()> {
        let me = self.clone();
        self.inner
            .nats
            .block_on(async move { me.renew_async().await })?
    }

    /// [`renew`](Self::renew), from async code on any runtime.
    pub async fn renew_async(&self) -> Result<()> {
        let revision = {
            let st = self.inner.state.lock();
            if let Some(why) = &st.lost {
                return Err(Error::LeaseLost(format!("{}: {why}", self.inner.key)));
            }
            st.revision
        };
        let sent = Instant::now();
        let kv = &self.inner.kv;
        match kv
            .update(&self.inner.key, self.inner.token.clone(), revision)
            .await
        {
            Ok(new) => {
                let mut st = self.inner.state.lock();
                if st.lost.is_none() && st.revision == revision {
                    st.revision = new;
                    st.valid_until = deadline::after(sent, self.inner.valid_for);
                }
                Ok(())
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                // Our own earlier renewal may have gone through with its answer lost.
                if let Ok(Some(entry)) = kv.entry(&self.inner.key).await {
                    if entry.operation == Operation::Put
                        && entry.value == self.inner.token
                        && entry.revision > revision
                    {
                        let mut st = self.inner.state.lock();
                        if st.revision == revision {
                            st.revision = entry.revision;
                        }
                        return Ok(());
                    }
                }
                let why = "another node holds it, or it expired".to_string();
                self.inner.state.lock().lost = Some(why.clone());
                Err(Error::LeaseLost(format!("{}: {why}", self.inner.key)))
            }
            Err(e) => Err(Error::Nats(format!("renew lease {}: {e}", self.inner.key))),
        }
    }

    /// Gives the lease up (deletes the key at its revision, so a lease someone else took
    /// meanwhile is left alone). Blocking.
    pub fn release(&self) -> Result<()> {
        let revision = {
            let mut st = self.inner.state.lock();
            if st.lost.is_some() {
                return Ok(());
            }
            st.lost = Some("released".into());
            st.revision
        };
        let kv = self.inner.kv.clone();
        let key = self.inner.key.clone();
        self.inner.nats.block_on(async move {
            kv.delete_expect_revision(&key, Some(revision))
                .await
                .map_err(nats_err("release a lease"))
        })?
    }

    /// Renews the lease every `every` in the background (on the NATS runtime) until the
    /// returned guard is dropped or the lease is lost. `every` must be well under the TTL
    /// minus the margin (a third of the TTL leaves room for two failed attempts): the lease
    /// stops being valid locally when a renewal is that late.
    pub fn keep_alive(&self, every: Duration) -> KeepAlive {
        let me = self.clone();
        let task = self.inner.nats.handle().spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(Error::LeaseLost(_)) = me.renew_async().await {
                    return;
                }
            }
        });
        KeepAlive { task }
    }
}

/// Stops renewing its lease when dropped.
#[derive(Debug)]
pub struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `value` at `key` if no live entry holds it (the key never written, released, or
/// expired): `Some(revision)`, or `None` if someone holds it. Like the client's `create`, but
/// a failure keeps the server's reason (the client's own drops it), and an answer lost in
/// transit is recovered by recognising `value`.
async fn create(kv: &kv::Store, key: &str, value: Bytes) -> Result<Option<u64>> {
    // Revision 0: "the key has no entry", which holds for a key never written or expired.
    let mut expected = 0;
    for _ in 0..2 {
        let failure = match kv.update(key, value.clone(), expected).await {
            Ok(revision) => return Ok(Some(revision)),
            Err(e) => e,
        };
        let entry = kv.entry(key).await;
        if let Ok(Some(entry)) = &entry {
            if entry.operation == Operation::Put && entry.value == value {
                return Ok(Some(entry.revision)); // ours: the answer was lost
            }
        }
        if failure.kind() != UpdateErrorKind::WrongLastRevision {
            return Err(Error::Nats(format!("take lease {key}: {failure}")));
        }
        match entry {
            Ok(Some(entry)) if entry.operation == Operation::Put => return Ok(None),
            // Released (a delete marker at some revision): take it at that revision.
            Ok(Some(entry)) => expected = entry.revision,
            // Expired between the two calls, or someone else's write raced ours.
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::Nats(format!("read lease {key}: {e}"))),
        }
    }
    Ok(None)
}

/// A value unique to one acquisition: the owner's name, then a nonce.
fn token(owner: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{owner} {}-{nanos:x}-{n}", std::process::id())
}

fn owner_of(value: &[u8]) -> String {
    let s = String::from_utf8_lossy(value);
    s.rsplit_once(' ')
        .map_or_else(|| s.to_string(), |(o, _)| o.to_string())
}
