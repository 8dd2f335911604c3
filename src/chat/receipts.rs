//! Delivered and read cursors, and a message's receipt state.

use super::conversations::{corrupt_record, txn_member_link};
use super::keys::{self, read_fields};
use super::ChatStore;
use crate::error::{Error, Result};
use crate::types::{ConversationId, MessageId, UserId};

/// A user's cursors in a conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Cursors {
    /// Every message up to this id reached one of the user's devices.
    pub delivered: MessageId,
    /// The user has read every message up to this id.
    pub read: MessageId,
}

/// Where one member stands on one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ReceiptState {
    /// Not yet on any of their devices.
    Sent,
    /// On a device, not read.
    Delivered,
    /// Read.
    Read,
}

/// A message's receipts across the conversation's members (the sender excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MessageReceipts {
    /// Members other than the sender.
    pub recipients: u64,
    /// How many of them have it delivered (read counts as delivered).
    pub delivered: u64,
    /// How many have read it.
    pub read: u64,
    /// Per member, for groups up to [`ChatOptions::receipt_details_limit`] members; empty
    /// for bigger ones.
    ///
    /// [`ChatOptions::receipt_details_limit`]: super::ChatOptions::receipt_details_limit
    pub details: Vec<(UserId, ReceiptState)>,
}

#[derive(Clone, Copy)]
enum Mark {
    Delivered,
    Read,
}

impl ChatStore {
    fn mark(&self, user: UserId, conv: ConversationId, id: MessageId, mark: Mark) -> Result<bool> {
        self.store.transact(move |txn| {
            let mut link = txn_member_link(txn, user, conv)?;
            let last = txn.last_id(conv)?;
            if id.0 > last {
                return Err(Error::IdOutOfRange {
                    conversation: conv,
                    id,
                    last: MessageId(last),
                });
            }
            let before = link;
            match mark {
                Mark::Delivered => link.delivered = link.delivered.max(id.0),
                Mark::Read => {
                    link.read = link.read.max(id.0);
                    link.delivered = link.delivered.max(link.read);
                }
            }
            if link != before {
                txn.put(keys::link(user, conv), link.encode())?;
            }
            Ok(link != before)
        })
    }

    /// Records that messages up to `id` reached one of `user`'s devices. Moving the cursor
    /// back is a no-op; an id beyond the last message is an error. Returns whether the cursor
    /// moved (so a caller can skip telling anyone about a no-op).
    pub fn mark_delivered(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
    ) -> Result<bool> {
        self.mark(user, conv, id, Mark::Delivered)
    }

    /// Records that `user` read messages up to `id` (which implies delivered). Moving the
    /// cursor back is a no-op; an id beyond the last message is an error. Returns whether a
    /// cursor moved.
    pub fn mark_read(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<bool> {
        self.mark(user, conv, id, Mark::Read)
    }

    /// `user`'s cursors in `conv`.
    pub fn cursors(&self, user: UserId, conv: ConversationId) -> Result<Cursors> {
        let link = self.link_in(&self.store.read_view(), user, conv)?;
        Ok(Cursors {
            delivered: MessageId(link.delivered),
            read: MessageId(link.read),
        })
    }

    /// Who has message `id` of `conv` delivered and read. Costs one cursor lookup per member.
    pub fn receipts(&self, conv: ConversationId, id: MessageId) -> Result<MessageReceipts> {
        let snap = self.store.read_view();
        let Some(msg) = snap.read_range(conv, id.0, id.0)?.pop() else {
            return Err(Error::IdOutOfRange {
                conversation: conv,
                id,
                last: MessageId(snap.last_id(conv)?),
            });
        };
        let prefix = keys::members_prefix(conv);
        let members = snap.state_scan(&prefix, &prefix, usize::MAX)?;
        let detailed = members.len() <= self.opts.receipt_details_limit;
        let mut out = MessageReceipts::default();
        for (k, v) in members {
            let user = UserId(keys::id_at(&k, 1).ok_or_else(|| corrupt_record("member"))?);
            let [joined_after, removed_at] =
                read_fields::<2>(&v).ok_or_else(|| corrupt_record("member"))?;
            // Recipients are the members who could see the message.
            let saw = id.0 > joined_after && (removed_at == 0 || id.0 <= removed_at);
            if user == msg.sender || !saw {
                continue;
            }
            let link = self.link_in(&snap, user, conv)?;
            let state = if link.read >= id.0 {
                ReceiptState::Read
            } else if link.delivered >= id.0 {
                ReceiptState::Delivered
            } else {
                ReceiptState::Sent
            };
            out.recipients += 1;
            out.delivered += u64::from(state != ReceiptState::Sent);
            out.read += u64::from(state == ReceiptState::Read);
            if detailed {
                out.details.push((user, state));
            }
        }
        Ok(out)
    }
}
