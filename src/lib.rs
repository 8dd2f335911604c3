//! # chatstore
//!
//! An embedded storage engine made for chat messages: an LSM-style column store keyed by
//! conversation, with per-conversation message ids that start at 1 and never skip.
//!
//! - **Write-ahead log** with group commit: concurrent writers share one fsync.
//! - **Memtable** that appends per conversation (ids only grow, so no sorted inserts).
//! - **Segments**: immutable, columnar, compressed files with a conversation index, so the
//!   newest messages of a conversation are one binary search and one block away.
//! - **Manifest** replaced atomically; **recovery** replays the WAL tail and cuts a torn tail,
//!   but reports real damage with the file and offset.
//!
//! ```
//! use chatstore::{ConversationId, MessageId, NewMessage, Store, UserId};
//!
//! # fn main() -> chatstore::Result<()> {
//! let dir = tempfile::tempdir().map_err(|e| chatstore::Error::InvalidOption(e.to_string()))?;
//! let store = Store::open(dir.path())?;
//! let chat = ConversationId(42);
//! let alice = UserId(1);
//!
//! let first = store.append(chat, NewMessage::text(alice, "hello"))?;
//! assert_eq!(first.id, MessageId(1));
//! store.append(chat, NewMessage::text(alice, "anyone here?"))?;
//!
//! let newest = store.latest(chat, 50)?;
//! assert_eq!(newest.len(), 2);
//! assert_eq!(newest[1].text(), Some("anyone here?"));
//!
//! // Page backwards from the oldest message we have.
//! let older = store.before(chat, newest[1].id, 50)?;
//! assert_eq!(older[0].id, MessageId(1));
//! # Ok(())
//! # }
//! ```
//!
//! Formats are documented in `docs/` (WAL, segment, manifest). Errors are values of
//! [`Error`]; nothing in the public API panics on bad input or bad bytes.
//!
//! **Platforms:** Unix-like systems only (developed and tested on Linux): segments are read
//! with `pread` and the store directory is locked with a file lock. Other targets (Windows)
//! fail to compile with a message saying so.
//!
//! **Cargo features** (all off by default):
//!
//! - `serde`: `Serialize`/`Deserialize` on the public data types ([`Message`], the ids,
//!   [`Stats`], the chat model's receipts, unread and inbox summaries...).
//! - `fault-injection`: `fs::fault`, an in-memory file system that injects I/O errors and
//!   power cuts, for testing code built on the store.
//! - `cli`: the `chatstore-inspect` binary (`cargo install --path . --features cli`).

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(not(unix))]
compile_error!("chatstore supports Unix-like systems only (it reads segments with pread)");

pub mod chat;
pub mod commit_log;
mod engine;
mod error;
// The on-disk formats, public only for the fuzz targets and the format tests: not part of the
// stable API.
#[doc(hidden)]
pub mod format;
pub mod fs;
mod options;
pub mod presence;
mod store;
mod types;

pub use chat::{
    ChatError, ChatOptions, ChatStore, Conversation, ConversationKind, Cursors, InboxCursor,
    InboxEntry, InboxPage, MessageReceipts, Reaction, ReceiptState, SendOutcome, Unread,
};
pub use commit_log::{CommitLog, CommitRecord};
pub use engine::{LevelCompactionStats, Problem, Stats, VerifyReport, ABORT_ON_PANIC_VAR};
pub use error::{Error, Result};
pub use options::{CompactionPolicy, Compression, Durability, Options};
pub use store::{Export, Store};
pub use types::{ConversationId, Message, MessageId, MessageKind, NewMessage, UserId};
