//! Sending (idempotent, membership-checked) and reading history as a user.

use super::conversations::{corrupt_record, txn_member_link};
use super::keys::{self, read_fields};
use super::ChatError;
use super::ChatStore;
use crate::error::{Error, Result};
use bytes::Bytes;

use crate::types::{ConversationId, Message, MessageId, NewMessage, UserId};

/// Longest client key accepted for idempotent sends.
pub const MAX_CLIENT_KEY: usize = 128;

// The key that remembers a client key (a tag, the conversation and the sender before it) is a
// state key.
const _: () = assert!(1 + 8 + 8 + MAX_CLIENT_KEY <= crate::format::state_block::MAX_KEY_LEN);

/// What [`ChatStore::send_with_key`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SendOutcome {
    /// The stored message (the original one for a retry).
    pub message: Message,
    /// True if this was a retry of an earlier send and nothing was appended.
    pub duplicate: bool,
}

enum Sent {
    New(Message),
    Earlier(MessageId),
}

impl ChatStore {
    /// Sends a message to `conv` as `message.sender`, who must be a current member.
    ///
    /// In one atomic commit: the message takes the conversation's next id, the sender's read
    /// and delivered cursors move to it, and mentioned members get an unread-mention record.
    /// A client that may retry (a lost acknowledgement) sends with
    /// [`send_with_key`](Self::send_with_key) instead.
    pub fn send(&self, conv: ConversationId, message: NewMessage) -> Result<Message> {
        self.send_checked(conv, message, None).map(|s| s.message)
    }

    /// [`send`](Self::send), idempotent by `client_key` (1 to [`MAX_CLIENT_KEY`] bytes, chosen
    /// by the client per message): the key is remembered in the same commit, and a retry with
    /// the same (conversation, sender, key) within [`ChatOptions::idempotency_window`] returns
    /// the original message with `duplicate` set and appends nothing, also after a restart.
    ///
    /// [`ChatOptions::idempotency_window`]: super::ChatOptions::idempotency_window
    pub fn send_with_key(
        &self,
        conv: ConversationId,
        message: NewMessage,
        client_key: impl Into<Bytes>,
    ) -> Result<SendOutcome> {
        let key = client_key.into();
        if key.is_empty() || key.len() > MAX_CLIENT_KEY {
            return Err(Error::InvalidArgument(format!(
                "client key must be 1 to {MAX_CLIENT_KEY} bytes"
            )));
        }
        self.send_checked(conv, message, Some(key))
    }

    fn send_checked(
        &self,
        conv: ConversationId,
        message: NewMessage,
        client_key: Option<Bytes>,
    ) -> Result<SendOutcome> {
        // A chat rule, not a storage one: the raw store keeps empty messages.
        if message.content.is_empty() && message.attachment.is_none() {
            return Err(ChatError::EmptyMessage.into());
        }
        self.store.check_append(conv, &message)?;
        let window_ms = self.opts.idempotency_window.as_millis() as u64;
        let sent = self.store.transact(move |txn| {
            let sender = message.sender;
            let mut link = txn_member_link(txn, sender, conv)?;
            let idem_key = client_key
                .as_ref()
                .map(|k| keys::idempotency(conv, sender, k));
            if let Some(k) = &idem_key {
                if let Some(v) = txn.get(k)? {
                    let [id, at] =
                        read_fields::<2>(&v).ok_or_else(|| corrupt_record("idempotency"))?;
                    if txn.now_ms().saturating_sub(at) < window_ms {
                        return Ok(Sent::Earlier(MessageId(id)));
                    }
                }
            }
            let mut mentioned: Vec<UserId> = message
                .mentions
                .iter()
                .copied()
                .filter(|&u| u != sender)
                .collect();
            mentioned.sort_unstable();
            mentioned.dedup();
            let m = txn.append(conv, message)?;
            for u in mentioned {
                // Only current members get an unread mention.
                let Some(mut mentioned_link) =
                    super::conversations::txn_link(txn, u, conv)?.filter(|l| l.is_member())
                else {
                    continue;
                };
                txn.put(keys::mention(u, conv, m.id), bytes::Bytes::new())?;
                // The newest message is the newest mention, whatever came before.
                mentioned_link.mentions_below = m.id.0 + 1;
                txn.put(keys::link(u, conv), mentioned_link.encode())?;
            }
            link.read = m.id.0;
            link.delivered = m.id.0;
            txn.put(keys::link(sender, conv), link.encode())?;
            if let Some(k) = idem_key {
                txn.put(k, keys::fields(&[m.id.0, m.timestamp_ms]))?;
            }
            Ok(Sent::New(m))
        })?;
        match sent {
            Sent::New(message) => Ok(SendOutcome {
                message,
                duplicate: false,
            }),
            // The original may have expired under retention since: its id is known, its
            // content is gone.
            Sent::Earlier(id) => Ok(SendOutcome {
                message: self.store.get(conv, id)?.ok_or(Error::Expired {
                    conversation: conv,
                    id,
                })?,
                duplicate: true,
            }),
        }
    }

    /// Whether `user` is a current member of `conv` (one lookup).
    pub fn is_member(&self, user: UserId, conv: ConversationId) -> Result<bool> {
        let snap = self.store.read_view();
        match self.link_in(&snap, user, conv) {
            Ok(link) => Ok(link.is_member()),
            Err(Error::Chat(ChatError::NotAMember { .. })) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads ids `lo..=hi` of `conv` as `user`: clamped to what their membership lets them see.
    fn read_as(
        &self,
        user: UserId,
        conv: ConversationId,
        range: impl FnOnce(u64, u64) -> Result<(u64, u64)>,
    ) -> Result<Vec<Message>> {
        let snap = self.store.read_view();
        let link = self.link_in(&snap, user, conv)?;
        let first = link.joined_after + 1;
        let last = link.visible_last(snap.last_id(conv)?);
        let (lo, hi) = range(first, last)?;
        let (lo, hi) = (lo.max(first), hi.min(last));
        if lo > hi {
            return Ok(Vec::new());
        }
        snap.read_range(conv, lo, hi)
    }

    /// The newest `n` messages `user` may see, oldest first.
    pub fn latest(&self, user: UserId, conv: ConversationId, n: usize) -> Result<Vec<Message>> {
        self.read_as(user, conv, |_, last| {
            Ok((last.saturating_sub(n as u64).saturating_add(1), last))
        })
    }

    /// Up to `n` messages before `id`, oldest first. `id` must be a message `user` may see.
    pub fn before(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        self.read_as(user, conv, |first, last| {
            check_visible(conv, id, first, last)?;
            Ok((id.0.saturating_sub(n as u64), id.0 - 1))
        })
    }

    /// Up to `n` messages after `id` (0 = from the start), oldest first.
    pub fn after(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        self.read_as(user, conv, |_, last| {
            if id.0 > last {
                return Err(Error::IdOutOfRange {
                    conversation: conv,
                    id,
                    last: MessageId(last),
                });
            }
            Ok((id.0 + 1, id.0.saturating_add(n as u64)))
        })
    }

    /// Message `id` with up to `n` messages on each side, oldest first.
    pub fn around(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        self.read_as(user, conv, |first, last| {
            check_visible(conv, id, first, last)?;
            Ok((id.0.saturating_sub(n as u64), id.0.saturating_add(n as u64)))
        })
    }

    /// Message `id`, if `user` may see it.
    pub fn get(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
    ) -> Result<Option<Message>> {
        Ok(self.read_as(user, conv, |_, _| Ok((id.0, id.0)))?.pop())
    }
}

fn check_visible(conv: ConversationId, id: MessageId, first: u64, last: u64) -> Result<()> {
    if id.0 < first || id.0 > last || id.0 == 0 {
        return Err(Error::IdOutOfRange {
            conversation: conv,
            id,
            last: MessageId(last),
        });
    }
    Ok(())
}
