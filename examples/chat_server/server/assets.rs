//! Uploaded images: files under `assets/`, an index `assets/index.jsonl` of who uploaded what
//! and in which conversations it was sent. The uploader may fetch an asset; so may the current
//! members of any conversation it was sent to.
//!
//! Uploads count against a per-user quota and a total, and are refused while the disk has
//! less free space than a reserve (the store shares that disk: it must never fill up from
//! uploads). An upload never attached to a message is deleted after a while, and its bytes
//! return to the quota.
//!
//! This is the single-node [`AssetStore`]; a cluster node has its own.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use chatstore::{ConversationId, UserId};
use parking_lot::Mutex;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::asset_store::{authorize, check_upload, AssetStore};
use super::backend::ChatBackend;
use super::error::{ApiError, ApiResult};
use super::jsonlog::JsonLog;

pub const ALLOWED_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];
pub const URL_PREFIX: &str = "/api/assets/";

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Upload {
        asset: String,
        owner: u64,
        content_type: String,
        size: u64,
        /// When it was uploaded (ms since the epoch; absent in older indexes).
        #[serde(default)]
        at_ms: u64,
    },
    Link {
        asset: String,
        conversation: u64,
    },
    /// Deleted (never attached to a message in time).
    Remove {
        asset: String,
    },
}

#[derive(Clone)]
pub struct Meta {
    pub owner: UserId,
    pub content_type: String,
    pub size: u64,
    pub at_ms: u64,
}

struct Index {
    log: JsonLog,
    meta: HashMap<String, Meta>,
    links: HashMap<String, HashSet<ConversationId>>,
    /// Bytes stored per uploader, and in all (reserved before the file is written).
    owner_bytes: HashMap<UserId, u64>,
    total_bytes: u64,
}

/// How much may be uploaded.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// Bytes one user may have stored.
    pub per_user_bytes: u64,
    /// Bytes of all uploads together.
    pub total_bytes: u64,
    /// Free space the disk must keep after an upload.
    pub min_free_bytes: u64,
}

pub struct Assets {
    dir: PathBuf,
    index: Mutex<Index>,
}

/// Bytes available to this process on the file system holding `dir`.
#[cfg(unix)]
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized, writable struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
pub fn free_bytes(_dir: &Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// Does `bytes` start the way `content_type` says it does?
pub fn sniff_ok(content_type: &str, bytes: &[u8]) -> bool {
    match content_type {
        "image/png" => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "image/jpeg" => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
        "image/gif" => bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a"),
        "image/webp" => bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP",
        _ => false,
    }
}

/// The asset id in an attachment link, if it is one of ours.
pub fn parse_link(link: &str) -> Option<&str> {
    let id = link.strip_prefix(URL_PREFIX)?;
    valid_id(id).then_some(id)
}

pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Assets {
    pub fn open(dir: &Path) -> Result<Assets, String> {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (log, records) = JsonLog::open::<Record>(&dir.join("index.jsonl"))?;
        let mut index = Index {
            log,
            meta: HashMap::new(),
            links: HashMap::new(),
            owner_bytes: HashMap::new(),
            total_bytes: 0,
        };
        let now = super::now_ms();
        for r in records {
            match r {
                Record::Upload {
                    asset,
                    owner,
                    content_type,
                    size,
                    at_ms,
                } => {
                    // An upload from before upload times were kept counts from now.
                    let at_ms = if at_ms == 0 { now } else { at_ms };
                    index.add(
                        asset,
                        Meta {
                            owner: UserId(owner),
                            content_type,
                            size,
                            at_ms,
                        },
                    );
                }
                Record::Remove { asset } => index.remove(&asset),
                Record::Link {
                    asset,
                    conversation,
                } => {
                    index
                        .links
                        .entry(asset)
                        .or_default()
                        .insert(ConversationId(conversation));
                }
            }
        }
        // Files nobody can reach: a write cut short, or one written but never indexed.
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let stray = name.ends_with(".tmp")
                    || (valid_id(&name) && !index.meta.contains_key(name.as_ref()));
                if stray {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(Assets {
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
        })
    }

    /// Stores an upload (room reserved, file written and fsynced, then indexed). Blocking.
    pub fn upload(
        &self,
        owner: UserId,
        content_type: &str,
        bytes: &[u8],
        limits: &UploadLimits,
    ) -> ApiResult<String> {
        check_upload(content_type, bytes)?;
        let size = bytes.len() as u64;
        self.reserve(owner, size, limits)?;
        let stored = self.write_and_index(owner, content_type, bytes);
        if stored.is_err() {
            self.index.lock().unreserve(owner, size);
        }
        stored
    }

    /// Counts `size` bytes against the quotas, or says which one is exhausted.
    fn reserve(&self, owner: UserId, size: u64, limits: &UploadLimits) -> ApiResult<()> {
        let mut index = self.index.lock();
        let mine = index.owner_bytes.get(&owner).copied().unwrap_or(0);
        check_room(
            "chat_server",
            mine,
            index.total_bytes,
            size,
            &self.dir,
            limits,
        )?;
        *index.owner_bytes.entry(owner).or_default() += size;
        index.total_bytes += size;
        Ok(())
    }

    fn write_and_index(
        &self,
        owner: UserId,
        content_type: &str,
        bytes: &[u8],
    ) -> ApiResult<String> {
        let mut raw = [0u8; 16];
        OsRng.fill_bytes(&mut raw);
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(&id);
        let tmp = self.dir.join(format!("{id}.tmp"));
        let io = |e: std::io::Error| {
            eprintln!("chat_server: asset write: {e}");
            let _ = fs::remove_file(&tmp);
            ApiError::internal("could not store the upload")
        };
        {
            let mut f = File::create(&tmp).map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        fs::rename(&tmp, &path).map_err(io)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        let at_ms = super::now_ms();
        let mut index = self.index.lock();
        index
            .log
            .append(&Record::Upload {
                asset: id.clone(),
                owner: owner.0,
                content_type: content_type.to_string(),
                size: bytes.len() as u64,
                at_ms,
            })
            .map_err(|e| {
                eprintln!("chat_server: asset index: {e}");
                let _ = fs::remove_file(&path);
                ApiError::internal("could not index the upload")
            })?;
        // Reserved already: only the metadata is new.
        index.meta.insert(
            id.clone(),
            Meta {
                owner,
                content_type: content_type.to_string(),
                size: bytes.len() as u64,
                at_ms,
            },
        );
        Ok(id)
    }

    /// Deletes the uploads that were not attached to any message within `ttl_ms` of their
    /// upload; returns how many. Blocking.
    pub fn sweep_unattached(&self, now_ms: u64, ttl_ms: u64) -> usize {
        let mut index = self.index.lock();
        let old: Vec<String> = index
            .meta
            .iter()
            .filter(|(id, m)| {
                now_ms.saturating_sub(m.at_ms) >= ttl_ms
                    && index.links.get(*id).is_none_or(|l| l.is_empty())
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut removed = 0;
        for id in old {
            if let Err(e) = index.log.append(&Record::Remove { asset: id.clone() }) {
                eprintln!("chat_server: asset index: {e}");
                break;
            }
            index.remove(&id);
            if let Err(e) = fs::remove_file(self.dir.join(&id)) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("chat_server: removing asset {id}: {e}");
                }
            }
            removed += 1;
        }
        removed
    }

    /// May `user` see asset `id`? Blocking (reads memberships).
    pub fn can_read(&self, store: &dyn ChatBackend, user: UserId, id: &str) -> ApiResult<Meta> {
        let (meta, convs) = {
            let index = self.index.lock();
            let Some(meta) = index.meta.get(id).cloned() else {
                return Err(ApiError::not_found("no such asset"));
            };
            let convs: Vec<ConversationId> = index
                .links
                .get(id)
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            (meta, convs)
        };
        authorize(store, user, meta, &convs)
    }

    /// Records that asset `id` is sent to `conv` (before the message is stored). Blocking.
    pub fn link(&self, id: &str, conv: ConversationId) -> ApiResult<()> {
        let mut index = self.index.lock();
        if !index.meta.contains_key(id) {
            return Err(ApiError::not_found("no such asset"));
        }
        if index.links.get(id).is_some_and(|s| s.contains(&conv)) {
            return Ok(());
        }
        index
            .log
            .append(&Record::Link {
                asset: id.to_string(),
                conversation: conv.0,
            })
            .map_err(|e| {
                eprintln!("chat_server: asset index: {e}");
                ApiError::internal("could not index the attachment")
            })?;
        index.links.entry(id.to_string()).or_default().insert(conv);
        Ok(())
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }
}

impl AssetStore for Assets {
    fn upload(
        &self,
        owner: UserId,
        content_type: &str,
        bytes: &[u8],
        limits: &UploadLimits,
    ) -> ApiResult<String> {
        Assets::upload(self, owner, content_type, bytes, limits)
    }

    fn sweep_unattached(&self, now_ms: u64, ttl_ms: u64) -> usize {
        Assets::sweep_unattached(self, now_ms, ttl_ms)
    }

    fn can_read(&self, store: &dyn ChatBackend, user: UserId, id: &str) -> ApiResult<Meta> {
        Assets::can_read(self, store, user, id)
    }

    fn link(&self, id: &str, conv: ConversationId) -> ApiResult<()> {
        Assets::link(self, id, conv)
    }

    fn read(&self, id: &str) -> ApiResult<Vec<u8>> {
        fs::read(self.path(id)).map_err(|e| {
            eprintln!("chat_server: reading asset {id}: {e}");
            ApiError::not_found("asset file missing")
        })
    }
}

impl Index {
    fn add(&mut self, id: String, meta: Meta) {
        *self.owner_bytes.entry(meta.owner).or_default() += meta.size;
        self.total_bytes += meta.size;
        self.meta.insert(id, meta);
    }

    fn remove(&mut self, id: &str) {
        if let Some(m) = self.meta.remove(id) {
            self.unreserve(m.owner, m.size);
        }
        self.links.remove(id);
    }

    fn unreserve(&mut self, owner: UserId, size: u64) {
        if let Some(b) = self.owner_bytes.get_mut(&owner) {
            *b = b.saturating_sub(size);
            if *b == 0 {
                self.owner_bytes.remove(&owner);
            }
        }
        self.total_bytes = self.total_bytes.saturating_sub(size);
    }
}

/// Whether an upload of `size` bytes fits the limits, given what its owner (`mine`) and
/// everyone (`total`) store already and the free space of the disk holding `dir`; otherwise
/// the error naming the limit it breaks. `server` names the process in its log lines.
pub fn check_room(
    server: &str,
    mine: u64,
    total: u64,
    size: u64,
    dir: &Path,
    limits: &UploadLimits,
) -> ApiResult<()> {
    if mine.saturating_add(size) > limits.per_user_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "quota_exceeded",
            format!(
                "your uploads would take {} bytes; the quota is {} (unattached uploads are deleted after a while)",
                mine.saturating_add(size),
                limits.per_user_bytes
            ),
        ));
    }
    if total.saturating_add(size) > limits.total_bytes {
        eprintln!(
            "{server}: uploads refused: {total} bytes stored, the limit is {}",
            limits.total_bytes
        );
        return Err(no_space());
    }
    let free = free_bytes(dir).map_err(|e| {
        eprintln!("{server}: free space of {}: {e}", dir.display());
        ApiError::internal("could not check free space")
    })?;
    if free.saturating_sub(size) < limits.min_free_bytes {
        eprintln!(
            "{server}: uploads refused: {free} bytes free on the data disk, the reserve is {}",
            limits.min_free_bytes
        );
        return Err(no_space());
    }
    Ok(())
}

pub fn no_space() -> ApiError {
    ApiError::new(
        StatusCode::INSUFFICIENT_STORAGE,
        "no_space",
        "the server has no room for uploads now",
    )
}

pub fn unsupported(msg: String) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_type", msg)
}
