//! Edits, deletes, reactions and disappearing messages, as a member.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::conversations::{corrupt_record, txn_member_link};
use super::keys;
use super::ChatError;
use super::ChatStore;
use crate::error::{Error, Result};
use crate::store::{edit_in, retention_ms};
use crate::types::{ConversationId, Message, MessageId, UserId};

/// Longest reaction accepted, in bytes (an emoji with modifiers fits easily).
pub const MAX_REACTION_BYTES: usize = 32;

// A reaction is a state value.
const _: () = assert!(MAX_REACTION_BYTES <= crate::format::state_block::MAX_VALUE_LEN);

/// One emoji's reactions on a message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many members reacted with it.
    pub count: u64,
    /// Whether the reader is one of them.
    pub mine: bool,
}

/// Only a message's sender may edit or delete it.
fn sent_by(m: &Message, by: UserId) -> Result<()> {
    if m.sender == by {
        Ok(())
    } else {
        Err(ChatError::NotTheSender {
            user: by,
            conversation: m.conversation,
            id: m.id,
        }
        .into())
    }
}

impl ChatStore {
    /// Edits message `id`; `by` must be a current member and its sender.
    /// See [`Store::edit`](crate::Store::edit) for ordering rules.
    pub fn edit(
        &self,
        conv: ConversationId,
        id: MessageId,
        by: UserId,
        content: impl Into<Bytes>,
    ) -> Result<Message> {
        let content: Bytes = content.into();
        if content.is_empty() {
            return Err(ChatError::EmptyMessage.into());
        }
        self.store.check_edit(&content)?;
        self.store.transact(move |txn| {
            txn_member_link(txn, by, conv)?;
            edit_in(txn, conv, id, Some(content), |m| sent_by(m, by))
        })
    }

    /// Deletes message `id` for everyone; `by` must be a current member and its sender.
    pub fn delete(&self, conv: ConversationId, id: MessageId, by: UserId) -> Result<Message> {
        self.store.transact(move |txn| {
            txn_member_link(txn, by, conv)?;
            edit_in(txn, conv, id, None, |m| sent_by(m, by))
        })
    }

    /// Sets `user`'s reaction to message `id` (one per user and message; a new one replaces
    /// the old). `user` must be a current member who can see the message.
    pub fn react(
        &self,
        conv: ConversationId,
        id: MessageId,
        user: UserId,
        emoji: &str,
    ) -> Result<()> {
        if emoji.is_empty() || emoji.len() > MAX_REACTION_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a reaction is 1 to {MAX_REACTION_BYTES} bytes"
            )));
        }
        let emoji = Bytes::copy_from_slice(emoji.as_bytes());
        self.store.transact(move |txn| {
            let link = txn_member_link(txn, user, conv)?;
            let visible = id.0 > link.joined_after
                && txn
                    .message(conv, id)?
                    .is_some_and(|m| m.kind != crate::MessageKind::Deleted);
            if !visible {
                return Err(Error::IdOutOfRange {
                    conversation: conv,
                    id,
                    last: MessageId(txn.last_id(conv)?),
                });
            }
            txn.put(keys::reaction(conv, id, user), emoji)
        })
    }

    /// Removes `user`'s reaction to message `id` (a no-op if there is none).
    pub fn unreact(&self, conv: ConversationId, id: MessageId, user: UserId) -> Result<()> {
        self.store.transact(move |txn| {
            txn_member_link(txn, user, conv)?;
            txn.delete(keys::reaction(conv, id, user))
        })
    }

    /// Reactions on messages `lo..=hi` of `conv` as `reader` sees them: per message that has
    /// any, each emoji with its count and whether `reader` used it, most used first.
    pub fn reactions(
        &self,
        reader: UserId,
        conv: ConversationId,
        lo: MessageId,
        hi: MessageId,
    ) -> Result<BTreeMap<MessageId, Vec<Reaction>>> {
        let snap = self.store.read_view();
        self.link_in(&snap, reader, conv)?;
        let prefix = keys::reactions_prefix(conv);
        let from = keys::reaction(conv, lo, UserId(0));
        let mut out: BTreeMap<MessageId, Vec<Reaction>> = BTreeMap::new();
        for (k, v) in snap.state_scan(&prefix, &from, usize::MAX)? {
            let id = MessageId(keys::id_at(&k, 1).ok_or_else(|| corrupt_record("reaction"))?);
            if id > hi {
                break;
            }
            let user = UserId(keys::id_at(&k, 2).ok_or_else(|| corrupt_record("reaction"))?);
            let emoji = String::from_utf8_lossy(&v).into_owned();
            let list = out.entry(id).or_default();
            match list.iter_mut().find(|r| r.emoji == emoji) {
                Some(r) => {
                    r.count += 1;
                    r.mine |= user == reader;
                }
                None => list.push(Reaction {
                    emoji,
                    count: 1,
                    mine: user == reader,
                }),
            }
        }
        for list in out.values_mut() {
            list.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.emoji.cmp(&b.emoji)));
        }
        Ok(out)
    }

    /// Turns on disappearing messages in `conv` (`None` turns them off); `by` must be a
    /// current member. See [`Store::set_retention`](crate::Store::set_retention).
    pub fn set_retention(
        &self,
        conv: ConversationId,
        by: UserId,
        ttl: Option<Duration>,
    ) -> Result<()> {
        let ms = retention_ms(ttl)?;
        self.store.transact(move |txn| {
            txn_member_link(txn, by, conv)?;
            txn.set_ttl(conv, ms)
        })
    }
}
