//! Unread counts and unread messages: what a client asks for when it comes online.

use super::keys;
use super::ChatStore;
use crate::error::Result;
use crate::store::ReadView;
use crate::types::{ConversationId, Message, MessageId, UserId};

/// One conversation with unread messages.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Unread {
    /// The conversation.
    pub conversation: ConversationId,
    /// Messages after the read cursor.
    pub count: u64,
    /// How many of those mention the user.
    pub mentions: u64,
    /// The first unread message.
    pub first_unread: MessageId,
    /// The conversation's last message.
    pub last_id: MessageId,
}

impl ChatStore {
    /// Every conversation where `user` has unread messages, in conversation id order, with
    /// counts, unread mentions and the first unread id. One consistent snapshot; the cost is
    /// one cursor scan plus one last-id lookup per conversation of the user.
    pub fn unread(&self, user: UserId) -> Result<Vec<Unread>> {
        self.unread_in(&self.store.read_view(), user)
    }

    fn unread_in(&self, snap: &ReadView<'_>, user: UserId) -> Result<Vec<Unread>> {
        let mut out = Vec::new();
        for (conv, link) in self.links_of(snap, user)? {
            if !link.is_member() {
                continue;
            }
            let last = snap.last_id(conv)?;
            let floor = link.read_floor().max(snap.first_live_id(conv, last)? - 1);
            if last <= floor {
                continue;
            }
            let mentions = if link.may_have_mentions_above(floor) {
                let prefix = keys::mentions_prefix(user, conv);
                let from = keys::mention(user, conv, MessageId(floor + 1));
                snap.state_scan(&prefix, &from, usize::MAX)?.len() as u64
            } else {
                0
            };
            out.push(Unread {
                conversation: conv,
                count: last - floor,
                mentions,
                first_unread: MessageId(floor + 1),
                last_id: MessageId(last),
            });
        }
        Ok(out)
    }

    /// Like [`ChatStore::unread`], with up to `per_conversation` of the oldest unread messages
    /// of each conversation, counts and messages from one consistent snapshot.
    pub fn unread_messages(
        &self,
        user: UserId,
        per_conversation: usize,
    ) -> Result<Vec<(Unread, Vec<Message>)>> {
        let snap = self.store.read_view();
        let mut out = Vec::new();
        for u in self.unread_in(&snap, user)? {
            let hi = u.last_id.0.min(
                u.first_unread
                    .0
                    .saturating_add(per_conversation as u64)
                    .saturating_sub(1),
            );
            let msgs = if per_conversation == 0 {
                Vec::new()
            } else {
                snap.read_range(u.conversation, u.first_unread.0, hi)?
            };
            out.push((u, msgs));
        }
        Ok(out)
    }
}
