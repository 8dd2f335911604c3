//! Uploaded images shared by every node: any node serves an image uploaded through any
//! other, and after a restart of all of them.
//!
//! - **Bytes**: object store bucket `chatstore_assets` (replicas as the cluster's), one
//!   object per asset named by its id, with its uploader, content type and upload time in
//!   the object's metadata. The object store keeps a SHA-256 digest of each object and the
//!   client checks it on every download. Objects never change (an id is random and never
//!   reused), so a node keeps a copy of each one it served in `<data>/asset-cache/` and
//!   reads that afterwards.
//! - **Where an asset was sent**: KV bucket `chatstore_asset_links`, one key
//!   `<asset>.<conversation>` per link, written once and never changed. No two writers race
//!   on one value (the 2.9 server's compare-and-set is not atomic under racing writers), and
//!   the links of an asset are the subjects of its keys (one stream-info request).
//! - **Quotas**: see `asset_usage`.
//! - **Expiry of unattached uploads**: every node sweeps; an object older than the TTL with
//!   no link is deleted. An upload may be attached only until [`GRACE`] before its TTL runs
//!   out, so a link written by one node is in the bucket before another node's sweep can
//!   look for it (unless its write took longer than the grace).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::{self, InfoErrorKind, ObjectInfo, ObjectMetadata};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use chatstore::{ConversationId, UserId};
use chatstore_cluster::Nats;
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use rand::rngs::OsRng;
use rand::RngCore;
use tokio::io::AsyncReadExt;

use crate::asset_usage::Usage;
use crate::server::asset_store::{authorize, check_upload, AssetStore};
use crate::server::assets::{check_room, Meta, UploadLimits};
use crate::server::backend::ChatBackend;
use crate::server::error::{ApiError, ApiResult};

pub const BUCKET: &str = "chatstore_assets";
pub const LINKS: &str = "chatstore_asset_links";

/// Object metadata keys.
const OWNER: &str = "owner";
const CONTENT_TYPE: &str = "content-type";
const AT_MS: &str = "at-ms";

/// How long before its expiry an upload can no longer be attached: a minute, or a tenth of
/// a shorter TTL.
const GRACE: Duration = Duration::from_secs(60);
/// The fewest time between two listings of the bucket by one node's sweep.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

pub struct ObjectAssets {
    nats: Nats,
    objects: object_store::ObjectStore,
    links: kv::Store,
    cache: PathBuf,
    ttl_ms: u64,
    /// Assets with at least one link: those are never deleted, and their metadata never
    /// changes, so it is kept; their links are read again when a reader is refused.
    linked: Mutex<HashMap<String, (Meta, Vec<ConversationId>)>>,
    usage: Mutex<Usage>,
    last_sweep: Mutex<Option<Instant>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    eprintln!("chat-node: {what}: {e}");
    ApiError::internal(format!("{what} are unavailable"))
}

/// The metadata of an object of the bucket; `None` for one that is not an asset.
fn meta_of(info: &ObjectInfo) -> Option<Meta> {
    if info.deleted {
        return None;
    }
    let m = &info.metadata;
    Some(Meta {
        owner: UserId(m.get(OWNER)?.parse().ok()?),
        content_type: m.get(CONTENT_TYPE)?.clone(),
        size: info.size as u64,
        at_ms: m.get(AT_MS)?.parse().ok()?,
    })
}

impl ObjectAssets {
    /// Opens (or creates) the buckets; `cache` is this node's copy of objects it served.
    /// Blocking.
    pub fn open(
        nats: &Nats,
        replicas: usize,
        cache: PathBuf,
        unattached_ttl: Duration,
    ) -> Result<Arc<ObjectAssets>, String> {
        std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
        // A copy cut short by a crash is never read (only whole files are renamed in).
        if let Ok(entries) = std::fs::read_dir(&cache) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let js = nats.jetstream().clone();
        let objects = nats
            .block_on(async move {
                match js.get_object_store(BUCKET).await {
                    Ok(store) => Ok(store),
                    Err(_) => js
                        .create_object_store(object_store::Config {
                            bucket: BUCKET.into(),
                            description: Some("uploaded images, by asset id".into()),
                            storage: StorageType::File,
                            num_replicas: replicas.max(1),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| format!("bucket {BUCKET}: {e}")),
                }
            })
            .map_err(|e| e.to_string())??;
        let links = crate::buckets::open(
            nats,
            LINKS,
            replicas,
            Duration::ZERO,
            "where each asset was sent: <asset>.<conversation>",
        )?;
        Ok(Arc::new(ObjectAssets {
            nats: nats.clone(),
            objects,
            links,
            cache,
            ttl_ms: unattached_ttl.as_millis() as u64,
            linked: Mutex::new(HashMap::new()),
            usage: Mutex::new(Usage::default()),
            last_sweep: Mutex::new(None),
        }))
    }

    /// The asset's metadata as stored; `None` if there is no such asset. Blocking.
    fn info(&self, id: &str) -> ApiResult<Option<Meta>> {
        let objects = self.objects.clone();
        let name = id.to_string();
        let info = self
            .nats
            .block_on(async move { objects.info(name).await })
            .map_err(|e| unavailable("assets", e))?;
        match info {
            Ok(info) => Ok(meta_of(&info)),
            Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("assets", e)),
        }
    }

    /// The conversations asset `id` was sent to. Blocking.
    fn convs(&self, id: &str) -> ApiResult<Vec<ConversationId>> {
        let stream = self.links.stream.clone();
        let prefix = format!("{}{id}.", self.links.prefix);
        let subjects = self
            .nats
            .block_on(async move {
                let filter = format!("{prefix}*");
                let info = stream.info_with_subjects(filter).await?;
                let subjects: Vec<(String, usize)> = info.try_collect().await?;
                Ok::<_, async_nats::Error>(
                    subjects
                        .into_iter()
                        .filter_map(|(s, _)| s.strip_prefix(&prefix)?.parse().ok())
                        .map(ConversationId)
                        .collect::<Vec<_>>(),
                )
            })
            .map_err(|e| unavailable("asset links", e))?
            .map_err(|e| unavailable("asset links", e))?;
        Ok(subjects)
    }

    /// Every asset in the bucket (metadata only). Blocking.
    fn list(&self) -> ApiResult<Vec<(String, Meta)>> {
        let objects = self.objects.clone();
        let listed = self
            .nats
            .block_on(async move {
                let mut list = objects.list().await?;
                let mut out = Vec::new();
                while let Some(info) = list.next().await {
                    let info = info?;
                    if let Some(meta) = meta_of(&info) {
                        out.push((info.name.clone(), meta));
                    }
                }
                Ok::<_, async_nats::Error>(out)
            })
            .map_err(|e| unavailable("assets", e))?
            .map_err(|e| unavailable("assets", e))?;
        Ok(listed)
    }

    /// Lists the bucket into the quota counts; the listing. Blocking.
    fn refresh_usage(&self) -> ApiResult<Vec<(String, Meta)>> {
        let started = Instant::now();
        let listed = self.list()?;
        self.usage
            .lock()
            .listed(started, listed.iter().map(|(_, m)| (m.owner, m.size)));
        Ok(listed)
    }

    /// Counts `size` bytes against the quotas, or says which one is exhausted; the ticket
    /// that settles it.
    fn reserve(&self, owner: UserId, size: u64, limits: &UploadLimits) -> ApiResult<u64> {
        if !self.usage.lock().listed_once() {
            self.refresh_usage()?;
        }
        let mut usage = self.usage.lock();
        let (mine, total) = usage.of(owner);
        check_room("chat-node", mine, total, size, &self.cache, limits)?;
        Ok(usage.reserve(owner, size))
    }

    fn put(&self, owner: UserId, content_type: &str, bytes: &[u8]) -> ApiResult<String> {
        let mut raw = [0u8; 16];
        OsRng.fill_bytes(&mut raw);
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let meta = ObjectMetadata {
            name: id.clone(),
            description: None,
            metadata: [
                (OWNER.to_string(), owner.0.to_string()),
                (CONTENT_TYPE.to_string(), content_type.to_string()),
                (AT_MS.to_string(), crate::server::now_ms().to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let objects = self.objects.clone();
        let body = Bytes::copy_from_slice(bytes);
        self.nats
            .block_on(async move { objects.put(meta, &mut body.as_ref()).await })
            .map_err(|e| unavailable("asset uploads", e))?
            .map_err(|e| {
                eprintln!("chat-node: asset upload: {e}");
                ApiError::internal("could not store the upload")
            })?;
        self.keep_copy(&id, bytes);
        Ok(id)
    }

    /// Keeps a copy of asset `id` (best effort: a failure only costs a later download).
    fn keep_copy(&self, id: &str, bytes: &[u8]) {
        let path = self.cache.join(id);
        let tmp = self.cache.join(format!("{id}.tmp"));
        let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            eprintln!("chat-node: caching asset {id}: {e}");
            let _ = std::fs::remove_file(&tmp);
        }
    }

    fn delete(&self, id: &str) -> ApiResult<()> {
        let objects = self.objects.clone();
        let name = id.to_string();
        self.nats
            .block_on(async move { objects.delete(name).await })
            .map_err(|e| unavailable("assets", e))?
            .map_err(|e| unavailable("assets", e))?;
        let _ = std::fs::remove_file(self.cache.join(id));
        Ok(())
    }
}

impl AssetStore for ObjectAssets {
    fn upload(
        &self,
        owner: UserId,
        content_type: &str,
        bytes: &[u8],
        limits: &UploadLimits,
    ) -> ApiResult<String> {
        check_upload(content_type, bytes)?;
        let ticket = self.reserve(owner, bytes.len() as u64, limits)?;
        let stored = self.put(owner, content_type, bytes);
        self.usage.lock().settle(ticket, stored.is_ok());
        stored
    }

    fn sweep_unattached(&self, now_ms: u64, ttl_ms: u64) -> usize {
        {
            let mut last = self.last_sweep.lock();
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return 0;
            }
            *last = Some(Instant::now());
        }
        let listed = match self.refresh_usage() {
            Ok(l) => l,
            Err(_) => return 0, // logged; the next sweep tries again
        };
        let mut removed = 0;
        for (id, meta) in listed {
            if now_ms.saturating_sub(meta.at_ms) < ttl_ms || self.linked.lock().contains_key(&id) {
                continue;
            }
            match self.convs(&id) {
                Ok(c) if c.is_empty() => {}
                Ok(_) | Err(_) => continue,
            }
            // Another node's sweep may have deleted it first: either way it is gone.
            if self.delete(&id).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    fn can_read(&self, store: &dyn ChatBackend, user: UserId, id: &str) -> ApiResult<Meta> {
        let known = self.linked.lock().get(id).cloned();
        if let Some((meta, convs)) = known {
            match authorize(store, user, meta, &convs) {
                Err(e) if e.status == axum::http::StatusCode::FORBIDDEN => {}
                done => return done,
            }
            // Refused: another node may have sent it to a conversation of the reader since.
        }
        let Some(meta) = self.info(id)? else {
            return Err(ApiError::not_found("no such asset"));
        };
        let convs = self.convs(id)?;
        if !convs.is_empty() {
            self.linked
                .lock()
                .insert(id.to_string(), (meta.clone(), convs.clone()));
        }
        authorize(store, user, meta, &convs)
    }

    fn link(&self, id: &str, conv: ConversationId) -> ApiResult<()> {
        if self
            .linked
            .lock()
            .get(id)
            .is_some_and(|(_, c)| c.contains(&conv))
        {
            return Ok(());
        }
        let Some(meta) = self.info(id)? else {
            return Err(ApiError::not_found("no such asset"));
        };
        let deadline = meta
            .at_ms
            .saturating_add(self.ttl_ms)
            .saturating_sub((GRACE.as_millis() as u64).min(self.ttl_ms / 10));
        let was_linked = self.linked.lock().contains_key(id);
        if !was_linked && crate::server::now_ms() >= deadline && self.convs(id)?.is_empty() {
            // About to be swept by some node: as if it already was.
            return Err(ApiError::not_found("no such asset"));
        }
        let links = self.links.clone();
        let key = format!("{id}.{}", conv.0);
        self.nats
            .block_on(async move { links.put(key, Bytes::new()).await })
            .map_err(|e| unavailable("asset links", e))?
            .map_err(|e| unavailable("asset links", e))?;
        let mut linked = self.linked.lock();
        let entry = linked
            .entry(id.to_string())
            .or_insert_with(|| (meta, Vec::new()));
        if !entry.1.contains(&conv) {
            entry.1.push(conv);
        }
        Ok(())
    }

    fn read(&self, id: &str) -> ApiResult<Vec<u8>> {
        if let Ok(bytes) = std::fs::read(self.cache.join(id)) {
            return Ok(bytes);
        }
        let objects = self.objects.clone();
        let name = id.to_string();
        let bytes = self
            .nats
            .block_on(async move {
                let mut object = objects.get(name).await?;
                let mut bytes = Vec::new();
                object.read_to_end(&mut bytes).await?;
                Ok::<_, async_nats::Error>(bytes)
            })
            .map_err(|e| unavailable("assets", e))?
            .map_err(|e| {
                eprintln!("chat-node: reading asset {id}: {e}");
                ApiError::not_found("asset file missing")
            })?;
        self.keep_copy(id, &bytes);
        Ok(bytes)
    }
}
