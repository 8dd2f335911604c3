//! The inbox: a user's conversations, newest activity first.

use super::ChatStore;
use crate::error::Result;
use crate::types::{ConversationId, Message, UserId};

/// One row of the inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InboxEntry {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its last message the user may see, if any.
    pub last_message: Option<Message>,
    /// Unread messages.
    pub unread: u64,
    /// Time of the last activity (last message, else creation), ms since the Unix epoch.
    pub activity_ms: u64,
}

/// Where the next page of an inbox starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InboxCursor {
    /// Activity time of the last entry returned.
    pub activity_ms: u64,
    /// Its conversation.
    pub conversation: ConversationId,
}

/// A page of the inbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InboxPage {
    /// Entries, newest activity first (ties: higher conversation id first).
    pub entries: Vec<InboxEntry>,
    /// Pass to get the next page; `None` on the last page.
    pub next: Option<InboxCursor>,
}

impl ChatStore {
    /// Up to `limit` of `user`'s conversations, newest activity first, starting after
    /// `cursor` (from a previous page). Cost: one cursor scan plus one last-message read per
    /// conversation of the user (fanout on read: a send writes nothing per member).
    pub fn inbox(
        &self,
        user: UserId,
        limit: usize,
        cursor: Option<InboxCursor>,
    ) -> Result<InboxPage> {
        let snap = self.store.read_view();
        let mut rows: Vec<InboxEntry> = Vec::new();
        for (conv, link) in self.links_of(&snap, user)? {
            if !link.is_member() {
                continue;
            }
            let last = snap.last_id(conv)?;
            let visible = link.visible_last(last);
            let last_message = if visible > link.joined_after {
                snap.read_range(conv, visible, visible)?.pop()
            } else {
                None
            };
            let activity_ms = match &last_message {
                Some(m) => m.timestamp_ms,
                None => self.conversation(conv).map(|c| c.created_ms).unwrap_or(0),
            };
            rows.push(InboxEntry {
                conversation: conv,
                last_message,
                unread: visible
                    .saturating_sub(link.read_floor().max(snap.first_live_id(conv, last)? - 1)),
                activity_ms,
            });
        }
        let key = |e: &InboxEntry| InboxCursor {
            activity_ms: e.activity_ms,
            conversation: e.conversation,
        };
        rows.sort_unstable_by_key(|e| std::cmp::Reverse(key(e)));
        let start = match cursor {
            Some(c) => rows.partition_point(|e| key(e) >= c),
            None => 0,
        };
        let entries: Vec<InboxEntry> = rows.iter().skip(start).take(limit).cloned().collect();
        let more = start + entries.len() < rows.len();
        let next = if more { entries.last().map(key) } else { None };
        Ok(InboxPage { entries, next })
    }
}
