//! A user's index, in the user's shard: which shards hold conversations of the user, so that
//! "all my unread", the inbox and the conversation list ask those shards and not all S.
//!
//! Why shards and not conversations: an entry is written *before* the membership it covers
//! (cross-shard writes are not atomic, and an index that is a superset of the truth is safe to
//! read through the conversation's shard, one that misses a conversation is not), and a new
//! conversation's id is only known once its shard created it, while its shard is known before.
//! A shard also answers for every conversation of the user it holds in one scan of the user's
//! links there, so naming the shard is all a reader needs, and a user has at most S entries
//! however many conversations they join (an entry is written once, the first time).
//!
//! Where: the user's shard keeps the index of user `u` as the messages of the reserved local
//! conversation [`BASE`]` + u` (the chat layer never numbers a conversation that high, and
//! `Ids::local` refuses every id at or above the accounts conversation): one message per
//! record, appended by the shard's owner, read back in order. The store's keyed state would
//! fit as well, but only the chat layer writes it; a reserved conversation is what the public
//! `Store` API offers, as for the accounts (`names`).
//!
//! Records: [`Record::Shard`] (a shard that holds, or held, a conversation of the user) and
//! [`Record::Complete`] (the index covers every conversation of the user: written when the
//! user registers, or when a user from before the index was looked up in every shard once).
//! Entries are never removed: a removed member's shard stays listed, and the shard (the truth)
//! answers only for current memberships, as a single server's inbox and lists do.

use std::collections::BTreeSet;

use chatstore::{ChatStore, ConversationId, Error, NewMessage, UserId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The first local conversation of the indexes (above the accounts conversation, `2^40`).
pub const BASE: u64 = 1 << 56;

/// One record of a user's index.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Shard(u32),
    Complete,
}

/// What the index of one user says.
#[derive(Debug, Default)]
pub struct Entries {
    pub shards: BTreeSet<u32>,
    /// Whether it covers every conversation of the user.
    pub complete: bool,
}

fn conversation(user: UserId) -> Result<ConversationId, Error> {
    if user.0 >= u64::MAX - BASE {
        return Err(Error::InvalidArgument(format!(
            "user id {} is beyond the range of the user index",
            user.0
        )));
    }
    Ok(ConversationId(BASE + user.0))
}

/// The indexes of one owned shard. The owner is the shard's one writer; the lock makes
/// check-then-append atomic among its own threads, so an entry is written once.
#[derive(Default)]
pub struct ShardIndex {
    writing: Mutex<()>,
}

impl ShardIndex {
    /// The index of `user` (a user of this shard).
    pub fn read(&self, chat: &ChatStore, user: UserId) -> Result<Entries, Error> {
        let conv = conversation(user)?;
        let mut entries = Entries::default();
        for m in chat.store().export(conv) {
            let m = m?;
            match serde_json::from_slice(&m.content) {
                Ok(Record::Shard(s)) => {
                    entries.shards.insert(s);
                }
                Ok(Record::Complete) => entries.complete = true,
                Err(e) => {
                    return Err(Error::Internal(format!(
                        "record {} of user {}'s index is malformed: {e}",
                        m.id.0, user.0
                    )))
                }
            }
        }
        Ok(entries)
    }

    /// Records that `shard` holds (or is about to hold) a conversation of each of `users`,
    /// and, with `complete`, that the index of each covers all their conversations. Writes
    /// only what is missing, all in one commit.
    pub fn add(
        &self,
        chat: &ChatStore,
        users: &[UserId],
        shards: &[u32],
        complete: bool,
    ) -> Result<(), Error> {
        let users: BTreeSet<UserId> = users.iter().copied().collect();
        let _writing = self.writing.lock();
        let mut missing = Vec::new();
        for user in users {
            let have = self.read(chat, user)?;
            let conv = conversation(user)?;
            let mut records: Vec<Record> = shards
                .iter()
                .filter(|s| !have.shards.contains(s))
                .map(|&s| Record::Shard(s))
                .collect();
            if complete && !have.complete {
                records.push(Record::Complete);
            }
            for r in records {
                let body = serde_json::to_vec(&r)
                    .map_err(|e| Error::Internal(format!("encoding an index record: {e}")))?;
                missing.push((conv, NewMessage::new(UserId(0), body)));
            }
        }
        if !missing.is_empty() {
            chat.store().append_batch(missing)?;
        }
        Ok(())
    }
}
