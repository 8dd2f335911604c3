//! Uploaded images: files under `assets/`, an index `assets/index.jsonl` of who uploaded what
//! and in which conversations it was sent. The uploader may fetch an asset; so may the current
//! members of any conversation it was sent to.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use chatstore::{ChatStore, ConversationId, UserId};
use parking_lot::Mutex;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

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
    },
    Link {
        asset: String,
        conversation: u64,
    },
}

#[derive(Clone)]
pub struct Meta {
    pub owner: UserId,
    pub content_type: String,
}

struct Index {
    log: JsonLog,
    meta: HashMap<String, Meta>,
    links: HashMap<String, HashSet<ConversationId>>,
}

pub struct Assets {
    dir: PathBuf,
    index: Mutex<Index>,
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
        };
        for r in records {
            match r {
                Record::Upload {
                    asset,
                    owner,
                    content_type,
                    ..
                } => {
                    index.meta.insert(
                        asset,
                        Meta {
                            owner: UserId(owner),
                            content_type,
                        },
                    );
                }
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
        Ok(Assets {
            dir: dir.to_path_buf(),
            index: Mutex::new(index),
        })
    }

    /// Stores an upload (file written and fsynced, then indexed). Blocking.
    pub fn upload(&self, owner: UserId, content_type: &str, bytes: &[u8]) -> ApiResult<String> {
        if !ALLOWED_TYPES.contains(&content_type) {
            return Err(unsupported(format!(
                "content type must be one of {}",
                ALLOWED_TYPES.join(", ")
            )));
        }
        if !sniff_ok(content_type, bytes) {
            return Err(unsupported(format!(
                "the bytes are not a {content_type} image"
            )));
        }
        let mut raw = [0u8; 16];
        OsRng.fill_bytes(&mut raw);
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(&id);
        let tmp = self.dir.join(format!("{id}.tmp"));
        let io = |e: std::io::Error| {
            eprintln!("chat_server: asset write: {e}");
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
        let mut index = self.index.lock();
        index
            .log
            .append(&Record::Upload {
                asset: id.clone(),
                owner: owner.0,
                content_type: content_type.to_string(),
                size: bytes.len() as u64,
            })
            .map_err(|e| {
                eprintln!("chat_server: asset index: {e}");
                ApiError::internal("could not index the upload")
            })?;
        index.meta.insert(
            id.clone(),
            Meta {
                owner,
                content_type: content_type.to_string(),
            },
        );
        Ok(id)
    }

    /// May `user` see asset `id`? Blocking (reads memberships).
    pub fn can_read(&self, store: &ChatStore, user: UserId, id: &str) -> ApiResult<Meta> {
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
        if meta.owner == user {
            return Ok(meta);
        }
        for conv in convs {
            if store.members(conv)?.contains(&user) {
                return Ok(meta);
            }
        }
        Err(ApiError::forbidden(
            "this asset was not sent to a conversation of yours",
        ))
    }

    /// Records that asset `id` is sent to `conv` (before the message is stored). Blocking.
    pub fn link(&self, id: &str, conv: ConversationId) -> ApiResult<()> {
        let mut index = self.index.lock();
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

fn unsupported(msg: String) -> ApiError {
    ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_type", msg)
}
