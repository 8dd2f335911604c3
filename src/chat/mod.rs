//! The chat model on top of the engine: users, 1:1 and group conversations, membership,
//! idempotent sends, delivered/read receipts, unread counts and the inbox.
//!
//! All of it is state in the engine (see [`keys`] for the records): it goes through the same
//! WAL, memtable and segments as messages, so opening a store reads nothing in proportion to
//! the number of users or conversations. Each operation is one engine transaction: a send
//! appends the message and moves the sender's read cursor in one WAL record.
//!
//! The model uses the engine only through a narrow, crate-internal surface of
//! [`Store`](crate::Store) (one transaction per operation, consistent read views, the append
//! checks); the raw store enforces no chat rule. The model's own rules and refusals live here:
//! membership, authorship of edits, non-empty messages, idempotency keys
//! ([`ChatStore::send_with_key`]), and [`ChatError`] (inside [`Error::Chat`](crate::Error::Chat)).
//!
//! Rules worth knowing:
//! - A member sees the messages sent while they are a member: from the one after the last id
//!   at the time they joined (group creators and initial members see everything) up to the
//!   last id when they were removed. A removed member keeps read access to that history, and
//!   no more; they can no longer send or mark. Rejoining starts a new membership.
//! - Adding a current member again is a no-op, not an error.
//! - Fanout is on read: a send writes the same records whatever the group size; unread counts
//!   come from each member's cursor and the conversation's last id.

mod conversations;
mod edits;
mod error;
mod inbox;
pub(crate) mod keys;
mod messaging;
mod receipts;
mod unread;

use std::path::Path;
use std::time::Duration;

pub use edits::Reaction;
pub use error::ChatError;
pub use inbox::{InboxCursor, InboxEntry, InboxPage};
pub use messaging::SendOutcome;
pub use receipts::{Cursors, MessageReceipts, ReceiptState};
pub use unread::Unread;

use crate::error::{Error, Result};
use crate::options::Options;
use crate::store::Store;
use crate::types::{ConversationId, UserId};

/// Options of the chat model.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    /// How long a client key is remembered for idempotent sends. A retry within the window
    /// returns the original message; after it, the key may be reused for a new message.
    pub idempotency_window: Duration,
    /// Groups up to this size get per-member receipt details; bigger ones get counts only.
    pub receipt_details_limit: usize,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            idempotency_window: Duration::from_secs(24 * 3600),
            receipt_details_limit: 256,
        }
    }
}

/// What kind of conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ConversationKind {
    /// A 1:1 chat between two users.
    Direct,
    /// A group chat.
    Group,
}

/// A conversation's fixed facts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Conversation {
    /// Its id.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// When it was created, ms since the Unix epoch.
    pub created_ms: u64,
    /// Who created it (for a direct chat, the user who opened it first).
    pub creator: UserId,
}

/// A chat store: the engine plus the chat model. Cheap to clone and share between threads.
#[derive(Clone, Debug)]
pub struct ChatStore {
    store: Store,
    opts: ChatOptions,
}

impl ChatStore {
    /// Opens (or creates) a chat store in `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<ChatStore> {
        ChatStore::open_with(path, Options::default(), ChatOptions::default())
    }

    /// Opens (or creates) a chat store with the given engine and chat options.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: Options,
        chat: ChatOptions,
    ) -> Result<ChatStore> {
        if chat.idempotency_window.is_zero() {
            return Err(Error::InvalidOption(
                "idempotency_window must be greater than zero".into(),
            ));
        }
        Ok(ChatStore {
            store: Store::open_with(path, options)?,
            opts: chat,
        })
    }

    /// The engine underneath, for flush, sync, stats and raw reads. Appending through it
    /// bypasses membership checks and receipts: don't, on a store the chat model manages.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Closes the store (see [`Store::close`]).
    pub fn close(self) -> Result<()> {
        self.store.close()
    }
}

impl ChatStore {
    /// Records when `user` was last seen (ms since the Unix epoch). Never moves backwards.
    pub fn set_last_seen(&self, user: UserId, ms: u64) -> Result<()> {
        self.store.transact(move |txn| {
            let key = keys::presence(user);
            let prev = match txn.get(&key)? {
                Some(v) => keys::read_fields::<1>(&v).map_or(0, |[x]| x),
                None => 0,
            };
            if ms > prev {
                txn.put(key, keys::fields(&[ms]))?;
            }
            Ok(())
        })
    }

    /// When `user` was last seen, if ever recorded.
    pub fn last_seen(&self, user: UserId) -> Result<Option<u64>> {
        let v = self.store.read_view().state_get(&keys::presence(user))?;
        Ok(v.and_then(|v| keys::read_fields::<1>(&v)).map(|[x]| x))
    }
}
