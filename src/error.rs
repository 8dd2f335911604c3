//! The crate's error type.
//!
//! Every fallible public call returns [`Result`]. Errors that come from bad input name what was
//! wrong; errors that come from the disk name the file and, for corruption, the byte offset.

use std::path::PathBuf;

use crate::types::{ConversationId, MessageId};

/// A specialised `Result` for chatstore operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a chatstore call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error, with the file it happened on.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file's bytes do not match their checksum or cannot be decoded.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The corrupted file.
        path: PathBuf,
        /// Byte offset in that file where the bad record, block or footer starts.
        offset: u64,
        /// What was found to be wrong.
        reason: String,
    },

    /// The directory is held by another open store (possibly in another process).
    #[error("{path} is locked by another open store")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },

    /// The directory holds files but no chatstore manifest.
    #[error("{path} is not a chatstore directory (it has files but no MANIFEST)")]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },

    /// A file was written by a newer (or unknown) format version.
    #[error("{path} has format version {found}; this build reads up to version {supported}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },

    /// A message larger than [`Options::max_message_bytes`](crate::Options::max_message_bytes).
    #[error("message is {size} bytes; the limit is {limit}")]
    MessageTooLarge {
        /// Content plus attachment link, in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A message id that is 0 (where 0 is not allowed) or beyond the conversation's last message.
    #[error("message id {id} is out of range for conversation {conversation} (last id is {last})")]
    IdOutOfRange {
        /// The conversation.
        conversation: ConversationId,
        /// The id asked for.
        id: MessageId,
        /// The conversation's last message id (0 if it has none).
        last: MessageId,
    },

    /// A conversation that has no messages (and is therefore unknown to the engine).
    #[error("conversation {0} is unknown")]
    UnknownConversation(ConversationId),

    /// The chat model refused the call ([`ChatStore`](crate::ChatStore) only: the raw
    /// [`Store`](crate::Store) enforces no chat rule).
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),

    /// An argument that makes no sense (the message says which).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// An option value that makes no sense.
    #[error("invalid option: {0}")]
    InvalidOption(String),

    /// An earlier write or background flush failed; the store refuses writes until reopened so
    /// that it never acknowledges a message whose predecessors may not be durable.
    #[error("the store refuses writes after an earlier failure: {0}")]
    Poisoned(String),

    /// The store was opened read-only.
    #[error("the store is open read-only")]
    ReadOnly,

    /// A message that existed has expired under retention: for example the original of a
    /// retried idempotent send, whose id is known but whose content is gone.
    #[error("message {id} of conversation {conversation} has expired under retention")]
    Expired {
        /// The conversation.
        conversation: ConversationId,
        /// The expired message.
        id: MessageId,
    },

    /// The commit log ([`Options::commit_log`](crate::Options::commit_log)) refused or lost a
    /// commit group; the store is poisoned.
    #[error("commit log append failed: {0}")]
    CommitLog(String),

    /// An internal invariant did not hold: a bug in chatstore, not bad input or a bad disk.
    /// The store is not poisoned by it; the call that met it did nothing.
    #[error("internal error (a bug in chatstore): {0}")]
    Internal(String),

    /// The store is shutting down.
    #[error("the store is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True if this error reports corrupted bytes on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}
