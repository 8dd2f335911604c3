//! Where uploaded images live, as a trait: the single-node server keeps them in its data
//! folder ([`super::assets::Assets`]); a cluster node keeps them where every node reads them.
//! The rules (types, quotas, who may read, expiry of unattached uploads) are the same, and
//! the checks both share are here.
//!
//! Every method blocks (files, network): call from a blocking thread.

use chatstore::{ConversationId, UserId};

use super::assets::{sniff_ok, unsupported, Meta, UploadLimits, ALLOWED_TYPES};
use super::backend::ChatBackend;
use super::error::{ApiError, ApiResult};

pub trait AssetStore: Send + Sync {
    /// Stores an upload of `owner` within `limits`; its id.
    fn upload(
        &self,
        owner: UserId,
        content_type: &str,
        bytes: &[u8],
        limits: &UploadLimits,
    ) -> ApiResult<String>;
    /// Deletes the uploads not attached to any message within `ttl_ms` of their upload;
    /// how many.
    fn sweep_unattached(&self, now_ms: u64, ttl_ms: u64) -> usize;
    /// May `user` see asset `id`? Its metadata if so.
    fn can_read(&self, store: &dyn ChatBackend, user: UserId, id: &str) -> ApiResult<Meta>;
    /// Records that asset `id` is sent to `conv` (before the message is stored).
    fn link(&self, id: &str, conv: ConversationId) -> ApiResult<()>;
    /// The bytes of asset `id` (whose reader was checked by [`AssetStore::can_read`]).
    fn read(&self, id: &str) -> ApiResult<Vec<u8>>;
}

/// Refuses an upload that is not an image of an allowed type whose bytes say so.
pub fn check_upload(content_type: &str, bytes: &[u8]) -> ApiResult<()> {
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
    Ok(())
}

/// The uploader may read an asset, and so may the current members of any conversation it
/// was sent to (`convs`).
pub fn authorize(
    store: &dyn ChatBackend,
    user: UserId,
    meta: Meta,
    convs: &[ConversationId],
) -> ApiResult<Meta> {
    if meta.owner == user {
        return Ok(meta);
    }
    for conv in convs {
        if store.members(*conv)?.contains(&user) {
            return Ok(meta);
        }
    }
    Err(ApiError::forbidden(
        "this asset was not sent to a conversation of yours",
    ))
}
