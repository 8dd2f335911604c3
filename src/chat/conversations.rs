//! Users, conversations and membership.

use super::keys::{self, read_fields};
use super::ChatError;
use super::{ChatStore, Conversation, ConversationKind};
use crate::error::{Error, Result};
use crate::store::{ReadView, Txn};
use crate::types::{ConversationId, UserId};

const KIND_DIRECT: u64 = 1;
const KIND_GROUP: u64 = 2;

/// A user's record of one conversation: membership and receipt cursors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Link {
    /// The conversation's last id when the user joined; they see later messages.
    pub joined_after: u64,
    /// The conversation's last id when the user was removed (0 while a member).
    pub removed_at: u64,
    pub delivered: u64,
    pub read: u64,
    /// What the user's unread-mention records of this conversation can hold, so that unread
    /// counting scans them only where some may be unread: 1 + the id of the newest message
    /// that mentioned the user (1: none since they joined), or 0 if unknown (a link written
    /// before this field existed: scan).
    pub mentions_below: u64,
}

impl Link {
    pub fn decode(v: &[u8]) -> Option<Link> {
        let [joined_after, removed_at, delivered, read, mentions_below] = read_fields::<5>(v)?;
        Some(Link {
            joined_after,
            removed_at,
            delivered,
            read,
            mentions_below,
        })
    }

    pub fn encode(&self) -> bytes::Bytes {
        keys::fields(&[
            self.joined_after,
            self.removed_at,
            self.delivered,
            self.read,
            self.mentions_below,
        ])
    }

    /// Whether unread-mention records above `floor` may exist (else counting needs no scan).
    pub fn may_have_mentions_above(&self, floor: u64) -> bool {
        self.mentions_below == 0 || self.mentions_below - 1 > floor
    }

    pub fn is_member(&self) -> bool {
        self.removed_at == 0
    }

    /// The last id this user may see, given the conversation's last id.
    pub fn visible_last(&self, last: u64) -> u64 {
        if self.removed_at > 0 {
            last.min(self.removed_at)
        } else {
            last
        }
    }

    /// The cursor unread counting starts from.
    pub fn read_floor(&self) -> u64 {
        self.read.max(self.joined_after)
    }
}

pub(crate) fn corrupt_record(what: &str) -> Error {
    Error::Corruption {
        path: "<state>".into(),
        offset: 0,
        reason: format!("malformed {what} record"),
    }
}

pub(crate) fn txn_link(txn: &Txn<'_>, user: UserId, conv: ConversationId) -> Result<Option<Link>> {
    match txn.get(&keys::link(user, conv))? {
        Some(v) => Link::decode(&v)
            .map(Some)
            .ok_or_else(|| corrupt_record("membership")),
        None => Ok(None),
    }
}

pub(crate) fn txn_member_link(txn: &Txn<'_>, user: UserId, conv: ConversationId) -> Result<Link> {
    match txn_link(txn, user, conv)? {
        Some(l) if l.is_member() => Ok(l),
        _ => {
            require_conversation(txn, conv)?;
            Err(ChatError::NotAMember {
                user,
                conversation: conv,
            }
            .into())
        }
    }
}

fn require_user(txn: &Txn<'_>, user: UserId) -> Result<()> {
    match txn.get(&keys::user(user))? {
        Some(_) => Ok(()),
        None => Err(ChatError::UnknownUser(user).into()),
    }
}

fn require_conversation(txn: &Txn<'_>, conv: ConversationId) -> Result<Conversation> {
    match txn.get(&keys::conversation(conv))? {
        Some(v) => decode_conversation(conv, &v),
        None => Err(Error::UnknownConversation(conv)),
    }
}

fn decode_conversation(id: ConversationId, v: &[u8]) -> Result<Conversation> {
    let [kind, created_ms, creator] =
        read_fields::<3>(v).ok_or_else(|| corrupt_record("conversation"))?;
    let kind = match kind {
        KIND_DIRECT => ConversationKind::Direct,
        KIND_GROUP => ConversationKind::Group,
        _ => return Err(corrupt_record("conversation")),
    };
    Ok(Conversation {
        id,
        kind,
        created_ms,
        creator: UserId(creator),
    })
}

/// Makes `user` a member of `conv` (which has last id `last`), writing both membership records.
fn join(txn: &mut Txn<'_>, conv: ConversationId, user: UserId, joined_after: u64) -> Result<()> {
    txn.put(keys::member(conv, user), keys::fields(&[joined_after, 0]))?;
    // Mention records are written for current members only, so any of an earlier membership
    // are at or below `joined_after`, under every floor unread counting uses.
    let link = Link {
        joined_after,
        removed_at: 0,
        delivered: joined_after,
        read: joined_after,
        mentions_below: 1,
    };
    txn.put(keys::link(user, conv), link.encode())
}

fn new_conversation(txn: &mut Txn<'_>, kind: u64, creator: UserId) -> Result<ConversationId> {
    let next = match txn.get(&keys::next_conversation())? {
        Some(v) => read_fields::<1>(&v).ok_or_else(|| corrupt_record("counter"))?[0],
        None => 1,
    };
    let conv = ConversationId(next);
    txn.put(keys::next_conversation(), keys::fields(&[next + 1]))?;
    let now = txn.now_ms();
    txn.put(
        keys::conversation(conv),
        keys::fields(&[kind, now, creator.0]),
    )?;
    Ok(conv)
}

impl ChatStore {
    /// Makes `user` known to the store. Idempotent.
    pub fn register_user(&self, user: UserId) -> Result<()> {
        self.store.transact(move |txn| {
            if txn.get(&keys::user(user))?.is_none() {
                let now = txn.now_ms();
                txn.put(keys::user(user), keys::fields(&[now]))?;
            }
            Ok(())
        })
    }

    /// Whether `user` was registered.
    pub fn user_exists(&self, user: UserId) -> Result<bool> {
        Ok(self
            .store
            .read_view()
            .state_get(&keys::user(user))?
            .is_some())
    }

    /// The 1:1 conversation of `a` and `b` (the same for `(b, a)`), created on first use.
    pub fn direct(&self, a: UserId, b: UserId) -> Result<ConversationId> {
        if a == b {
            return Err(Error::InvalidArgument(
                "a direct conversation needs two different users".into(),
            ));
        }
        // Fast path without a write when it exists already.
        if let Some(v) = self.store.read_view().state_get(&keys::direct(a, b))? {
            let [id] = read_fields::<1>(&v).ok_or_else(|| corrupt_record("direct"))?;
            return Ok(ConversationId(id));
        }
        self.store.transact(move |txn| {
            if let Some(v) = txn.get(&keys::direct(a, b))? {
                let [id] = read_fields::<1>(&v).ok_or_else(|| corrupt_record("direct"))?;
                return Ok(ConversationId(id));
            }
            require_user(txn, a)?;
            require_user(txn, b)?;
            let conv = new_conversation(txn, KIND_DIRECT, a)?;
            txn.put(keys::direct(a, b), keys::fields(&[conv.0]))?;
            join(txn, conv, a, 0)?;
            join(txn, conv, b, 0)?;
            Ok(conv)
        })
    }

    /// Creates a group of `members` (the creator is added if not listed).
    pub fn create_group(&self, creator: UserId, members: &[UserId]) -> Result<ConversationId> {
        if members.is_empty() {
            return Err(ChatError::EmptyGroup.into());
        }
        let mut all: Vec<UserId> = members.to_vec();
        all.push(creator);
        all.sort_unstable();
        all.dedup();
        self.store.transact(move |txn| {
            for &u in &all {
                require_user(txn, u)?;
            }
            let conv = new_conversation(txn, KIND_GROUP, creator)?;
            for &u in &all {
                join(txn, conv, u, 0)?;
            }
            Ok(conv)
        })
    }

    /// Adds `user` to group `conv`, on behalf of member `by`. Adding a current member is a
    /// no-op. The new member sees messages sent from now on.
    pub fn add_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()> {
        self.store.transact(move |txn| {
            let c = require_conversation(txn, conv)?;
            if c.kind != ConversationKind::Group {
                return Err(Error::InvalidArgument(
                    "members can only be added to a group".into(),
                ));
            }
            txn_member_link(txn, by, conv)?;
            require_user(txn, user)?;
            if txn_link(txn, user, conv)?.is_some_and(|l| l.is_member()) {
                return Ok(());
            }
            let last = txn.last_id(conv)?;
            join(txn, conv, user, last)
        })
    }

    /// Removes `user` from group `conv`, on behalf of member `by` (a user may remove
    /// themself: leaving). The user keeps read access to the history up to now.
    pub fn remove_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()> {
        self.store.transact(move |txn| {
            let c = require_conversation(txn, conv)?;
            if c.kind != ConversationKind::Group {
                return Err(Error::InvalidArgument(
                    "members can only be removed from a group".into(),
                ));
            }
            txn_member_link(txn, by, conv)?;
            let mut link = txn_member_link(txn, user, conv)?;
            // removed_at 0 means "member", so a removal before any message records the
            // membership as ended by keeping no visible id: joined_after == removed_at.
            let last = txn.last_id(conv)?;
            link.removed_at = last.max(1);
            if last == 0 {
                link.joined_after = 1;
            }
            txn.put(
                keys::member(conv, user),
                keys::fields(&[link.joined_after, link.removed_at]),
            )?;
            txn.put(keys::link(user, conv), link.encode())
        })
    }

    /// The conversation's facts.
    pub fn conversation(&self, conv: ConversationId) -> Result<Conversation> {
        match self
            .store
            .read_view()
            .state_get(&keys::conversation(conv))?
        {
            Some(v) => decode_conversation(conv, &v),
            None => Err(Error::UnknownConversation(conv)),
        }
    }

    /// Current members of `conv`, in id order.
    pub fn members(&self, conv: ConversationId) -> Result<Vec<UserId>> {
        let snap = self.store.read_view();
        if snap.state_get(&keys::conversation(conv))?.is_none() {
            return Err(Error::UnknownConversation(conv));
        }
        let prefix = keys::members_prefix(conv);
        let mut out = Vec::new();
        for (k, v) in snap.state_scan(&prefix, &prefix, usize::MAX)? {
            let [_, removed_at] = read_fields::<2>(&v).ok_or_else(|| corrupt_record("member"))?;
            if removed_at == 0 {
                out.push(UserId(
                    keys::id_at(&k, 1).ok_or_else(|| corrupt_record("member"))?,
                ));
            }
        }
        Ok(out)
    }

    /// The conversations `user` is currently a member of, in id order.
    pub fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>> {
        Ok(self
            .links_of(&self.store.read_view(), user)?
            .into_iter()
            .filter(|(_, l)| l.is_member())
            .map(|(c, _)| c)
            .collect())
    }

    /// Every conversation link of `user` (current and former memberships).
    pub(crate) fn links_of(
        &self,
        snap: &ReadView<'_>,
        user: UserId,
    ) -> Result<Vec<(ConversationId, Link)>> {
        let prefix = keys::links_prefix(user);
        let mut out = Vec::new();
        for (k, v) in snap.state_scan(&prefix, &prefix, usize::MAX)? {
            let conv = ConversationId(keys::id_at(&k, 1).ok_or_else(|| corrupt_record("link"))?);
            out.push((
                conv,
                Link::decode(&v).ok_or_else(|| corrupt_record("link"))?,
            ));
        }
        Ok(out)
    }

    /// `user`'s link to `conv` as of `snap`, or [`ChatError::NotAMember`] if they never were one.
    pub(crate) fn link_in(
        &self,
        snap: &ReadView<'_>,
        user: UserId,
        conv: ConversationId,
    ) -> Result<Link> {
        match snap.state_get(&keys::link(user, conv))? {
            Some(v) => Link::decode(&v).ok_or_else(|| corrupt_record("link")),
            None => {
                if snap.state_get(&keys::conversation(conv))?.is_none() {
                    return Err(Error::UnknownConversation(conv));
                }
                Err(ChatError::NotAMember {
                    user,
                    conversation: conv,
                }
                .into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_written_before_the_mention_field_scans_for_mentions() {
        // Four fields: the layout before `mentions_below`.
        let old = keys::fields(&[3, 0, 9, 7]);
        let link = Link::decode(&old).unwrap();
        assert_eq!((link.read, link.mentions_below), (7, 0));
        assert!(link.may_have_mentions_above(1_000), "unknown: scan");
    }

    #[test]
    fn a_known_newest_mention_decides_whether_to_scan() {
        let none = Link {
            mentions_below: 1,
            ..Link::default()
        };
        assert!(!none.may_have_mentions_above(0));
        let newest_at_12 = Link {
            mentions_below: 13,
            ..Link::default()
        };
        assert!(newest_at_12.may_have_mentions_above(11));
        assert!(!newest_at_12.may_have_mentions_above(12));
        assert_eq!(Link::decode(&newest_at_12.encode()), Some(newest_at_12));
    }
}
