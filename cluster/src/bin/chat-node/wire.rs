//! What one node asks a shard's owner, and what comes back: the chat calls of the server
//! layer as JSON, with cluster-wide conversation ids.
//!
//! A conversation id says which shard holds it: the shard's own store numbers its
//! conversations 1, 2, 3, ... (`local`), and the cluster calls local `l` of shard `s` of `S`
//! `l * S + s`. So `id mod S` is the shard, forever, and ids never collide across shards.

use chatstore::{
    ChatError, ChatStore, Conversation, ConversationId, Cursors, Error, InboxCursor, InboxPage,
    Message, MessageId, MessageReceipts, NewMessage, Unread, UserId,
};
use serde::{Deserialize, Serialize};

use crate::names::{self, ShardAccounts, ACCOUNTS};
use crate::user_index::ShardIndex;

/// Shard count and the shard a store holds: translates ids between the two numberings.
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    pub shards: u32,
    pub shard: u32,
}

impl Ids {
    pub fn global(&self, local: ConversationId) -> ConversationId {
        ConversationId(local.0 * self.shards as u64 + self.shard as u64)
    }

    /// The local id of a chat's global id (never the shard's accounts conversation).
    pub fn local(&self, global: ConversationId) -> Result<ConversationId, Error> {
        let s = self.shards as u64;
        if global.0 % s != self.shard as u64 || global.0 < s || global.0 / s >= ACCOUNTS.0 {
            return Err(Error::UnknownConversation(global));
        }
        Ok(ConversationId(global.0 / s))
    }

    /// The global id of a conversation the chat layer just created.
    fn created(&self, local: ConversationId) -> Result<ConversationId, Error> {
        if local.0 >= ACCOUNTS.0 {
            return Err(Error::InvalidArgument(format!(
                "shard {} has no conversation ids left below its accounts",
                self.shard
            )));
        }
        Ok(self.global(local))
    }

    fn message(&self, mut m: Message) -> Message {
        m.conversation = self.global(m.conversation);
        m
    }

    fn messages(&self, ms: Vec<Message>) -> Vec<Message> {
        ms.into_iter().map(|m| self.message(m)).collect()
    }

    fn unread(&self, mut u: Unread) -> Unread {
        u.conversation = self.global(u.conversation);
        u
    }

    /// The first local conversation that sorts after global `g` in this shard: the inbox
    /// cursor of another shard's entry, in this shard's numbering.
    fn cursor(&self, c: InboxCursor) -> InboxCursor {
        let (g, s, n) = (c.conversation.0, self.shard as u64, self.shards as u64);
        let local = if g >= s { (g - s).div_ceil(n) } else { 0 };
        InboxCursor {
            activity_ms: c.activity_ms,
            conversation: ConversationId(local),
        }
    }
}

/// Where a send came from: a node's fanout id and the device connection there, which gets
/// an ack instead of a push.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Origin {
    pub node: u64,
    pub conn: u64,
}

/// One call to a shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    RegisterUsers(Vec<UserId>),
    Direct(UserId, UserId),
    CreateGroup(UserId, Vec<UserId>),
    AddMember(ConversationId, UserId, UserId),
    RemoveMember(ConversationId, UserId, UserId),
    Conversation(ConversationId),
    Members(ConversationId),
    IsMember(UserId, ConversationId),
    ConversationsOf(UserId),
    LastId(ConversationId),
    /// A message, its client key (an idempotent send), and where it came from.
    Send(ConversationId, NewMessage, Option<Vec<u8>>, Option<Origin>),
    Latest(UserId, ConversationId, usize),
    Before(UserId, ConversationId, MessageId, usize),
    After(UserId, ConversationId, MessageId, usize),
    Around(UserId, ConversationId, MessageId, usize),
    Get(UserId, ConversationId, MessageId),
    RawGet(ConversationId, MessageId),
    RawAfter(ConversationId, MessageId, usize),
    Cursors(UserId, ConversationId),
    MarkRead(UserId, ConversationId, MessageId),
    MarkDelivered(UserId, ConversationId, MessageId),
    Receipts(ConversationId, MessageId),
    Inbox(UserId, usize, Option<InboxCursor>),
    Unread(UserId),
    UnreadMessages(UserId, usize),
    /// Gives a username (lowercased key, as typed) with its password hash to a new user, in
    /// the shard the key hashes to: the user id, or none if the name is taken.
    ClaimName(String, String, String),
    /// The account a lowercased username names, asked of the shard the name hashes to.
    Account(String),
    /// The username of a user id, asked of shard `id mod S`.
    Username(u64),
    /// In the users' shard: these shards hold (or are about to hold) conversations of these
    /// users; with `true`, their indexes now cover all their conversations (see `user_index`).
    IndexShards(Vec<UserId>, Vec<u32>, bool),
    /// In the user's shard: the shards the user's index names, and whether it is complete.
    IndexOf(UserId),
    /// In the user's shard: the user was last seen at this time (ms since the epoch).
    SetLastSeen(UserId, u64),
    /// In the user's shard: when the user was last seen, if ever.
    LastSeen(UserId),
}

impl Op {
    /// Whether running it twice does what running it once does, so that a call whose answer
    /// was lost may be sent again. A send is, with a client key (the store returns the
    /// original); a new group is not.
    pub fn is_idempotent(&self) -> bool {
        match self {
            Op::CreateGroup(..) | Op::ClaimName(..) => false,
            Op::Send(_, _, key, _) => key.is_some(),
            _ => true,
        }
    }
}

/// An owner's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Unit,
    Bool(bool),
    Conv(ConversationId),
    Conversation(Conversation),
    Users(Vec<UserId>),
    Convs(Vec<ConversationId>),
    Id(MessageId),
    Message(Message),
    OptMessage(Option<Message>),
    Messages(Vec<Message>),
    Cursors(Cursors),
    Receipts(MessageReceipts),
    Inbox(InboxPage),
    Unread(Vec<Unread>),
    UnreadMessages(Vec<(Unread, Vec<Message>)>),
    OptUser(Option<u64>),
    Account(Option<(u64, names::Record)>),
    Name(Option<String>),
    Index(Vec<u32>, bool),
    LastSeen(Option<u64>),
}

/// A refusal, carried so that the asking node fails the way a local call would.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireError {
    /// The chat model's refusals, whole.
    Chat(ChatError),
    UnknownConversation(ConversationId),
    IdOutOfRange {
        conversation: ConversationId,
        id: MessageId,
        last: MessageId,
    },
    InvalidArgument(String),
    MessageTooLarge {
        size: usize,
        limit: usize,
    },
    /// The node does not own the shard (any more): ask again, the owner is changing.
    NotOwner(String),
    Other(String),
}

impl From<Error> for WireError {
    fn from(e: Error) -> Self {
        match e {
            Error::Chat(refusal) => WireError::Chat(refusal),
            Error::UnknownConversation(c) => WireError::UnknownConversation(c),
            Error::IdOutOfRange {
                conversation,
                id,
                last,
            } => WireError::IdOutOfRange {
                conversation,
                id,
                last,
            },
            Error::InvalidArgument(s) => WireError::InvalidArgument(s),
            Error::MessageTooLarge { size, limit } => WireError::MessageTooLarge { size, limit },
            // The shard's log refused or failed: this node no longer writes it.
            Error::CommitLog(s) | Error::Poisoned(s) => WireError::NotOwner(s),
            Error::Closed => WireError::NotOwner("the shard's store is closed".into()),
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Chat(refusal) => Error::Chat(refusal),
            WireError::UnknownConversation(c) => Error::UnknownConversation(c),
            WireError::IdOutOfRange {
                conversation,
                id,
                last,
            } => Error::IdOutOfRange {
                conversation,
                id,
                last,
            },
            WireError::InvalidArgument(s) => Error::InvalidArgument(s),
            WireError::MessageTooLarge { size, limit } => Error::MessageTooLarge { size, limit },
            WireError::NotOwner(s) => Error::Internal(format!("no owner answered: {s}")),
            WireError::Other(s) => Error::Internal(s),
        }
    }
}

/// Runs `op` on the shard's store (and its account table). Blocking (a write waits for the
/// shard's stream).
pub fn execute(
    chat: &ChatStore,
    accounts: &ShardAccounts,
    index: &ShardIndex,
    ids: Ids,
    op: Op,
) -> Result<Reply, Error> {
    let l = |c: ConversationId| ids.local(c);
    Ok(match op {
        // A user registers once, in their own shard, before any conversation: an empty
        // index is a complete one.
        Op::RegisterUsers(users) => {
            for &u in &users {
                chat.register_user(u)?;
            }
            index.add(chat, &users, &[], true)?;
            Reply::Unit
        }
        // The users are made known to this shard first: an account exists once, in the
        // directory, and a shard learns of a user when a conversation of theirs lands in it.
        Op::Direct(a, b) => {
            chat.register_user(a)?;
            chat.register_user(b)?;
            Reply::Conv(ids.created(chat.direct(a, b)?)?)
        }
        Op::CreateGroup(creator, members) => {
            chat.register_user(creator)?;
            for &u in &members {
                chat.register_user(u)?;
            }
            Reply::Conv(ids.created(chat.create_group(creator, &members)?)?)
        }
        Op::AddMember(c, by, u) => {
            let c = l(c)?;
            chat.register_user(u)?;
            chat.add_member(c, by, u)?;
            Reply::Unit
        }
        Op::RemoveMember(c, by, u) => {
            chat.remove_member(l(c)?, by, u)?;
            Reply::Unit
        }
        Op::Conversation(c) => {
            let mut conv = chat.conversation(l(c)?)?;
            conv.id = c;
            Reply::Conversation(conv)
        }
        Op::Members(c) => Reply::Users(chat.members(l(c)?)?),
        Op::IsMember(u, c) => Reply::Bool(chat.is_member(u, l(c)?)?),
        Op::ConversationsOf(u) => Reply::Convs(
            chat.conversations_of(u)?
                .into_iter()
                .map(|c| ids.global(c))
                .collect(),
        ),
        Op::LastId(c) => Reply::Id(chat.store().last_id(l(c)?)?),
        Op::Send(c, m, key, _) => {
            let sent = match key {
                Some(key) => chat.send_with_key(l(c)?, m, key)?.message,
                None => chat.send(l(c)?, m)?,
            };
            Reply::Message(ids.message(sent))
        }
        Op::Latest(u, c, n) => Reply::Messages(ids.messages(chat.latest(u, l(c)?, n)?)),
        Op::Before(u, c, id, n) => Reply::Messages(ids.messages(chat.before(u, l(c)?, id, n)?)),
        Op::After(u, c, id, n) => Reply::Messages(ids.messages(chat.after(u, l(c)?, id, n)?)),
        Op::Around(u, c, id, n) => Reply::Messages(ids.messages(chat.around(u, l(c)?, id, n)?)),
        Op::Get(u, c, id) => Reply::OptMessage(chat.get(u, l(c)?, id)?.map(|m| ids.message(m))),
        Op::RawGet(c, id) => {
            Reply::OptMessage(chat.store().get(l(c)?, id)?.map(|m| ids.message(m)))
        }
        Op::RawAfter(c, id, n) => {
            Reply::Messages(ids.messages(chat.store().after(l(c)?, id, n)?))
        }
        Op::Cursors(u, c) => Reply::Cursors(chat.cursors(u, l(c)?)?),
        Op::MarkRead(u, c, id) => Reply::Bool(chat.mark_read(u, l(c)?, id)?),
        Op::MarkDelivered(u, c, id) => Reply::Bool(chat.mark_delivered(u, l(c)?, id)?),
        Op::Receipts(c, id) => Reply::Receipts(chat.receipts(l(c)?, id)?),
        Op::Inbox(u, limit, cursor) => {
            let mut page = chat.inbox(u, limit, cursor.map(|c| ids.cursor(c)))?;
            for e in &mut page.entries {
                e.conversation = ids.global(e.conversation);
                e.last_message = e.last_message.take().map(|m| ids.message(m));
            }
            page.next = page.next.map(|mut c| {
                c.conversation = ids.global(c.conversation);
                c
            });
            Reply::Inbox(page)
        }
        Op::Unread(u) => {
            Reply::Unread(chat.unread(u)?.into_iter().map(|x| ids.unread(x)).collect())
        }
        Op::UnreadMessages(u, n) => Reply::UnreadMessages(
            chat.unread_messages(u, n)?
                .into_iter()
                .map(|(x, ms)| (ids.unread(x), ids.messages(ms)))
                .collect(),
        ),
        Op::ClaimName(key, username, hash) => {
            Reply::OptUser(accounts.claim(chat, ids, &key, &username, &hash)?)
        }
        Op::Account(key) => Reply::Account(accounts.find(chat, ids, &key)?),
        Op::Username(id) => Reply::Name(names::username(chat, ids, id)?),
        Op::IndexShards(users, shards, complete) => {
            index.add(chat, &users, &shards, complete)?;
            Reply::Unit
        }
        Op::SetLastSeen(user, ms) => {
            chat.set_last_seen(user, ms)?;
            Reply::Unit
        }
        Op::LastSeen(user) => Reply::LastSeen(chat.last_seen(user)?),
        Op::IndexOf(user) => {
            let entries = index.read(chat, user)?;
            Reply::Index(entries.shards.into_iter().collect(), entries.complete)
        }
    })
}
