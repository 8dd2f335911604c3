//! What the HTTP/WebSocket layer needs from storage, as a trait: the single-node server stores
//! everything in one local [`ChatStore`]; a cluster node routes each call to the shard that
//! holds the conversation (or the user), wherever that shard's owner runs. The layer above
//! calls nothing else of the store, so both run the same handlers, frames and web page.
//!
//! Every method blocks (a write waits for its commit): call from a blocking thread.

use chatstore::{
    ChatStore, Conversation, ConversationId, Cursors, InboxCursor, InboxPage, Message, MessageId,
    MessageReceipts, NewMessage, Result, Unread, UserId,
};

/// The chat model as the server layer uses it. Errors are the library's, so that a routed
/// call fails the way a local one does (a remote owner's refusal keeps its variant).
pub trait ChatBackend: Send + Sync {
    fn register_user(&self, user: UserId) -> Result<()>;
    fn direct(&self, a: UserId, b: UserId) -> Result<ConversationId>;
    fn create_group(&self, creator: UserId, members: &[UserId]) -> Result<ConversationId>;
    fn add_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()>;
    fn remove_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()>;
    fn conversation(&self, conv: ConversationId) -> Result<Conversation>;
    fn members(&self, conv: ConversationId) -> Result<Vec<UserId>>;
    fn is_member(&self, user: UserId, conv: ConversationId) -> Result<bool>;
    fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>>;
    /// The conversation's last message id (0 for none), whoever may read it.
    fn last_id(&self, conv: ConversationId) -> Result<MessageId>;
    /// Stores a message; with a client key, idempotently (a retry returns the original).
    fn send(
        &self,
        conv: ConversationId,
        message: NewMessage,
        client_key: Option<Vec<u8>>,
    ) -> Result<Message>;
    /// Like [`ChatBackend::send`], for a message sent from connection `from` of this process
    /// (a backend that pushes stored messages itself must not push it to that connection).
    fn send_from(
        &self,
        conv: ConversationId,
        message: NewMessage,
        client_key: Option<Vec<u8>>,
        from: Option<u64>,
    ) -> Result<Message> {
        let _ = from;
        self.send(conv, message, client_key)
    }
    /// Whether the backend pushes every stored message to its members' devices itself (a
    /// cluster's shard owner does, in commit order); then the caller pushes none.
    fn pushes_messages(&self) -> bool {
        false
    }
    fn latest(&self, user: UserId, conv: ConversationId, n: usize) -> Result<Vec<Message>>;
    fn before(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>>;
    fn after(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>>;
    fn around(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>>;
    fn get(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<Option<Message>>;
    /// A message whoever may read it (the server checks visibility itself).
    fn raw_get(&self, conv: ConversationId, id: MessageId) -> Result<Option<Message>>;
    /// Up to `n` messages after `id`, whoever may read them.
    fn raw_after(&self, conv: ConversationId, id: MessageId, n: usize) -> Result<Vec<Message>>;
    fn cursors(&self, user: UserId, conv: ConversationId) -> Result<Cursors>;
    fn mark_read(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<bool>;
    fn mark_delivered(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<bool>;
    fn receipts(&self, conv: ConversationId, id: MessageId) -> Result<MessageReceipts>;
    fn inbox(&self, user: UserId, limit: usize, cursor: Option<InboxCursor>) -> Result<InboxPage>;
    fn unread(&self, user: UserId) -> Result<Vec<Unread>>;
    fn unread_messages(
        &self,
        user: UserId,
        per_conversation: usize,
    ) -> Result<Vec<(Unread, Vec<Message>)>>;
    /// Storage figures for `/api/stats`.
    fn stats(&self) -> String;
    /// Flushes and closes what this process holds; acknowledged writes are durable after it.
    fn close(&self) -> Result<()>;
}

impl ChatBackend for ChatStore {
    fn register_user(&self, user: UserId) -> Result<()> {
        ChatStore::register_user(self, user)
    }
    fn direct(&self, a: UserId, b: UserId) -> Result<ConversationId> {
        ChatStore::direct(self, a, b)
    }
    fn create_group(&self, creator: UserId, members: &[UserId]) -> Result<ConversationId> {
        ChatStore::create_group(self, creator, members)
    }
    fn add_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()> {
        ChatStore::add_member(self, conv, by, user)
    }
    fn remove_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()> {
        ChatStore::remove_member(self, conv, by, user)
    }
    fn conversation(&self, conv: ConversationId) -> Result<Conversation> {
        ChatStore::conversation(self, conv)
    }
    fn members(&self, conv: ConversationId) -> Result<Vec<UserId>> {
        ChatStore::members(self, conv)
    }
    fn is_member(&self, user: UserId, conv: ConversationId) -> Result<bool> {
        ChatStore::is_member(self, user, conv)
    }
    fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>> {
        ChatStore::conversations_of(self, user)
    }
    fn last_id(&self, conv: ConversationId) -> Result<MessageId> {
        self.store().last_id(conv)
    }
    fn send(
        &self,
        conv: ConversationId,
        message: NewMessage,
        client_key: Option<Vec<u8>>,
    ) -> Result<Message> {
        match client_key {
            Some(key) => Ok(ChatStore::send_with_key(self, conv, message, key)?.message),
            None => ChatStore::send(self, conv, message),
        }
    }
    fn latest(&self, user: UserId, conv: ConversationId, n: usize) -> Result<Vec<Message>> {
        ChatStore::latest(self, user, conv, n)
    }
    fn before(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        ChatStore::before(self, user, conv, id, n)
    }
    fn after(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        ChatStore::after(self, user, conv, id, n)
    }
    fn around(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        ChatStore::around(self, user, conv, id, n)
    }
    fn get(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<Option<Message>> {
        ChatStore::get(self, user, conv, id)
    }
    fn raw_get(&self, conv: ConversationId, id: MessageId) -> Result<Option<Message>> {
        self.store().get(conv, id)
    }
    fn raw_after(&self, conv: ConversationId, id: MessageId, n: usize) -> Result<Vec<Message>> {
        self.store().after(conv, id, n)
    }
    fn cursors(&self, user: UserId, conv: ConversationId) -> Result<Cursors> {
        ChatStore::cursors(self, user, conv)
    }
    fn mark_read(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<bool> {
        ChatStore::mark_read(self, user, conv, id)
    }
    fn mark_delivered(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<bool> {
        ChatStore::mark_delivered(self, user, conv, id)
    }
    fn receipts(&self, conv: ConversationId, id: MessageId) -> Result<MessageReceipts> {
        ChatStore::receipts(self, conv, id)
    }
    fn inbox(&self, user: UserId, limit: usize, cursor: Option<InboxCursor>) -> Result<InboxPage> {
        ChatStore::inbox(self, user, limit, cursor)
    }
    fn unread_messages(
        &self,
        user: UserId,
        per_conversation: usize,
    ) -> Result<Vec<(Unread, Vec<Message>)>> {
        ChatStore::unread_messages(self, user, per_conversation)
    }
    fn unread(&self, user: UserId) -> Result<Vec<Unread>> {
        ChatStore::unread(self, user)
    }
    fn stats(&self) -> String {
        format!("{:?}", self.store().stats())
    }
    fn close(&self) -> Result<()> {
        self.clone().close()
    }
}
