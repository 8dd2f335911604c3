//! The chat backend of a node: each call goes to the shard that holds it, on this node if it
//! owns the shard, else to the owner over NATS request/reply (`<prefix>.rpc.<shard>`).
//!
//! - a conversation's calls: shard `id mod S` (see `wire`);
//! - a new direct chat: the shard of a hash of the two users (so both find the same one);
//!   a new group: the shard of a hash of the creator and a nonce;
//! - a user's records (their registration, their index): the shard of a hash of the user id;
//! - a user's conversations, inbox and unread: the shards the user's index names (see
//!   `user_index`), in parallel, merged. The index entry is written before the membership it
//!   covers, so it names every shard that matters, and the shards, asked, say what is true.
//!
//! While a shard is between owners (nobody answers, or a node answers that it just lost the
//! shard) a call is asked again until `deadline`. A call whose answer was lost (a timeout, a
//! dropped connection) is asked again only if it is idempotent: a send with a client key, a
//! read, a cursor move.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::RequestErrorKind;
use chatstore::{
    Conversation, ConversationId, Cursors, Error, InboxCursor, InboxPage, Message, MessageId,
    MessageReceipts, NewMessage, Result, Unread, UserId,
};
use parking_lot::Mutex;

use crate::server::backend::ChatBackend;
use crate::shards::{fnv, rpc_subject, Shards};
use crate::wire::{Op, Origin, Reply, WireError};

const IDEMPOTENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Index entries this node knows are written; past this many it forgets them all (asking
/// again costs one idempotent call).
const INDEXED_CACHE: usize = 1 << 20;

fn unexpected(r: Reply) -> Error {
    Error::Internal(format!("unexpected answer from a shard: {r:?}"))
}

macro_rules! expect {
    ($r:expr, $variant:ident) => {
        match $r? {
            Reply::$variant(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    };
}

pub struct Router {
    shards: Arc<Shards>,
    /// This node's fanout id (see `fanout`).
    node: u64,
    /// How long a call keeps trying while its shard has no owner.
    deadline: Duration,
    /// (user, shard) pairs whose index entry is known to be written: a direct chat opened
    /// again, or a second group in one shard, writes nothing more.
    indexed: Mutex<HashSet<(u64, u32)>>,
    /// Prints which shards each read of a user's lists asked (`CHAT_NODE_LOG_USER_READS=1`).
    log_user_reads: bool,
}

enum Outcome {
    Done(Result<Reply>),
    /// Nobody owns the shard right now, or the owner changed under the call: try again.
    Retry(String),
}

impl Router {
    pub fn new(shards: Arc<Shards>, node: u64, deadline: Duration) -> Router {
        Router {
            shards,
            node,
            deadline,
            indexed: Mutex::new(HashSet::new()),
            log_user_reads: std::env::var("CHAT_NODE_LOG_USER_READS").is_ok_and(|v| v == "1"),
        }
    }

    fn count(&self) -> u64 {
        self.shards.cfg.shards as u64
    }

    fn conv_shard(&self, conv: ConversationId) -> u32 {
        (conv.0 % self.count()) as u32
    }

    fn user_shard(&self, user: UserId) -> u32 {
        (fnv(&[user.0]) % self.count()) as u32
    }

    /// Asks shard `shard`. Blocking, and safe to call from a worker of a tokio runtime (the
    /// node's own included: it answers other nodes' calls on the same runtime).
    fn call(&self, shard: u32, op: Op) -> Result<Reply> {
        chatstore_cluster::blocking(|| self.call_blocking(shard, op))
    }

    fn call_blocking(&self, shard: u32, op: Op) -> Result<Reply> {
        let idempotent = op.is_idempotent();
        let payload = serde_json::to_vec(&op)
            .map_err(|e| Error::Internal(format!("encoding a request: {e}")))?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let why = match self.try_once(shard, &payload, idempotent) {
                Outcome::Done(r) => return r,
                Outcome::Retry(why) => why,
            };
            if start.elapsed() >= self.deadline {
                return Err(Error::Internal(format!(
                    "shard {shard} has no owner after {:?}: {why}",
                    self.deadline
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    fn try_once(&self, shard: u32, payload: &[u8], idempotent: bool) -> Outcome {
        if let Some(owned) = self.shards.local(shard) {
            let op: Op = match serde_json::from_slice(payload) {
                Ok(op) => op,
                Err(e) => return Outcome::Done(Err(Error::Internal(e.to_string()))),
            };
            return match self.shards.execute(&owned, op) {
                Ok(r) => Outcome::Done(Ok(r)),
                Err(e) => match WireError::from(e) {
                    // The store failed under the call: its outcome is unknown unless the
                    // call may run twice.
                    WireError::NotOwner(why) if idempotent => Outcome::Retry(why),
                    other => Outcome::Done(Err(other.into())),
                },
            };
        }
        let client = self.shards.nats.client().clone();
        let subject = rpc_subject(&self.shards.cfg.stream.prefix, shard);
        // An owner that died with the call in flight never answers: a call that may be asked
        // again gives up on it sooner (a commit takes milliseconds, a lease TTL seconds).
        let timeout = if idempotent {
            IDEMPOTENT_TIMEOUT
        } else {
            self.shards.nats.options().request_timeout
        };
        let request = async_nats::Request::new()
            .payload(bytes::Bytes::copy_from_slice(payload))
            .timeout(Some(timeout));
        let asked = self
            .shards
            .nats
            .block_on(async move { client.send_request(subject, request).await });
        let answer = match asked {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => {
                return match e.kind() {
                    RequestErrorKind::NoResponders => Outcome::Retry("no responders".into()),
                    // No answer in time, or the connection dropped (a NATS server died and
                    // the client is moving to another): the call may or may not have run.
                    _ if idempotent => Outcome::Retry(format!("no answer: {e}")),
                    _ => Outcome::Done(Err(Error::Internal(format!(
                        "shard {shard}: {e} (the outcome is unknown)"
                    )))),
                };
            }
            Err(e) => return Outcome::Done(Err(Error::Internal(e.to_string()))),
        };
        match serde_json::from_slice::<std::result::Result<Reply, WireError>>(&answer.payload) {
            Ok(Ok(r)) => Outcome::Done(Ok(r)),
            Ok(Err(WireError::NotOwner(why))) => Outcome::Retry(why),
            Ok(Err(e)) => Outcome::Done(Err(e.into())),
            Err(e) => Outcome::Done(Err(Error::Internal(format!("bad answer: {e}")))),
        }
    }

    fn on_conv(&self, conv: ConversationId, op: Op) -> Result<Reply> {
        self.call(self.conv_shard(conv), op)
    }

    /// Calls on several shards, in parallel; the answers in the calls' order.
    fn parallel(&self, calls: Vec<(u32, Op)>) -> Result<Vec<Reply>> {
        if calls.len() <= 1 {
            return calls
                .into_iter()
                .map(|(shard, op)| self.call(shard, op))
                .collect();
        }
        let results: Vec<Result<Reply>> = std::thread::scope(|scope| {
            let handles: Vec<_> = calls
                .into_iter()
                .map(|(shard, op)| scope.spawn(move || self.call(shard, op)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Internal("a shard call panicked".into())))
                })
                .collect()
        });
        results.into_iter().collect()
    }

    /// The same question to the shards holding `user`'s conversations, in parallel.
    fn on_user_shards(&self, what: &str, user: UserId, op: impl Fn() -> Op) -> Result<Vec<Reply>> {
        let shards = self.shards_of(user)?;
        if self.log_user_reads {
            println!(
                "chat-node {}: {what} of user {} asked shards {shards:?}",
                self.shards.cfg.node, user.0
            );
        }
        self.parallel(shards.into_iter().map(|s| (s, op())).collect())
    }

    /// The shards that hold conversations of `user`, from the user's index. A user from
    /// before the index (no complete index) is looked up in every shard once, and what was
    /// found recorded: entries written meanwhile (before new memberships) are kept.
    fn shards_of(&self, user: UserId) -> Result<Vec<u32>> {
        let home = self.user_shard(user);
        let (shards, complete) = match self.call(home, Op::IndexOf(user))? {
            Reply::Index(shards, complete) => (shards, complete),
            other => return Err(unexpected(other)),
        };
        if complete {
            return Ok(shards);
        }
        let mut found: BTreeSet<u32> = shards.into_iter().collect();
        let all = self.parallel(
            (0..self.shards.cfg.shards)
                .map(|s| (s, Op::ConversationsOf(user)))
                .collect(),
        )?;
        for (s, r) in all.into_iter().enumerate() {
            if !expect!(Ok::<_, Error>(r), Convs)?.is_empty() {
                found.insert(s as u32);
            }
        }
        let found: Vec<u32> = found.into_iter().collect();
        unit(self.call(home, Op::IndexShards(vec![user], found.clone(), true)))?;
        Ok(found)
    }

    /// Writes, in each user's shard, that `shard` holds a conversation of theirs: called
    /// before the membership is written there, so the index is never behind it.
    fn index(&self, users: &[UserId], shard: u32) -> Result<()> {
        let mut by_home: BTreeMap<u32, Vec<UserId>> = BTreeMap::new();
        {
            let known = self.indexed.lock();
            for &u in users {
                if !known.contains(&(u.0, shard)) {
                    by_home.entry(self.user_shard(u)).or_default().push(u);
                }
            }
        }
        if by_home.is_empty() {
            return Ok(());
        }
        let written: Vec<UserId> = by_home.values().flatten().copied().collect();
        let calls = by_home
            .into_iter()
            .map(|(home, users)| (home, Op::IndexShards(users, vec![shard], false)))
            .collect();
        for r in self.parallel(calls)? {
            unit(Ok(r))?;
        }
        let mut known = self.indexed.lock();
        if known.len() >= INDEXED_CACHE {
            known.clear();
        }
        known.extend(written.into_iter().map(|u| (u.0, shard)));
        Ok(())
    }
}

/// What presence keeps in the user's shard (see `presence_watch`).
impl Router {
    /// Whether this node owns the user's shard now (and so announces the user's presence).
    pub fn owns_home(&self, user: UserId) -> bool {
        self.shards.local(self.user_shard(user)).is_some()
    }

    pub fn set_last_seen(&self, user: UserId, ms: u64) -> Result<()> {
        unit(self.call(self.user_shard(user), Op::SetLastSeen(user, ms)))
    }

    pub fn last_seen(&self, user: UserId) -> Result<Option<u64>> {
        expect!(
            self.call(self.user_shard(user), Op::LastSeen(user)),
            LastSeen
        )
    }
}

/// The accounts, kept in the shards their names hash to (see `names`).
impl Router {
    /// Gives `username` (lowercased: `key`) with password `hash` to a new user, in the shard
    /// the name hashes to: the new user's id, or `None` if the name is taken.
    pub fn claim_name(&self, key: &str, username: &str, hash: &str) -> Result<Option<u64>> {
        let op = Op::ClaimName(key.to_string(), username.to_string(), hash.to_string());
        expect!(self.call(self.name_shard(key), op), OptUser)
    }

    /// The account `key` (a lowercased username) names: its user id and record.
    pub fn account(&self, key: &str) -> Result<Option<(u64, crate::names::Record)>> {
        expect!(
            self.call(self.name_shard(key), Op::Account(key.to_string())),
            Account
        )
    }

    /// The username of user `id`.
    pub fn username(&self, id: u64) -> Result<Option<String>> {
        let shard = (id % self.count()) as u32;
        expect!(self.call(shard, Op::Username(id)), Name)
    }

    fn name_shard(&self, key: &str) -> u32 {
        let bytes: Vec<u64> = key.bytes().map(u64::from).collect();
        (fnv(&bytes) % self.count()) as u32
    }
}

fn unit(r: Result<Reply>) -> Result<()> {
    match r? {
        Reply::Unit => Ok(()),
        other => Err(unexpected(other)),
    }
}

impl ChatBackend for Router {
    fn register_user(&self, user: UserId) -> Result<()> {
        unit(self.call(self.user_shard(user), Op::RegisterUsers(vec![user])))
    }

    fn direct(&self, a: UserId, b: UserId) -> Result<ConversationId> {
        let shard = (fnv(&[a.0.min(b.0), a.0.max(b.0)]) % self.count()) as u32;
        self.index(&[a, b], shard)?;
        expect!(self.call(shard, Op::Direct(a, b)), Conv)
    }

    fn create_group(&self, creator: UserId, members: &[UserId]) -> Result<ConversationId> {
        static NONCE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = NONCE.fetch_add(1, Ordering::Relaxed);
        let shard = (fnv(&[creator.0, nanos, n]) % self.count()) as u32;
        let mut everyone = members.to_vec();
        everyone.push(creator);
        self.index(&everyone, shard)?;
        expect!(
            self.call(shard, Op::CreateGroup(creator, members.to_vec())),
            Conv
        )
    }

    fn add_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()> {
        self.index(&[user], self.conv_shard(conv))?;
        unit(self.on_conv(conv, Op::AddMember(conv, by, user)))
    }

    fn remove_member(&self, conv: ConversationId, by: UserId, user: UserId) -> Result<()> {
        unit(self.on_conv(conv, Op::RemoveMember(conv, by, user)))
    }

    fn conversation(&self, conv: ConversationId) -> Result<Conversation> {
        expect!(self.on_conv(conv, Op::Conversation(conv)), Conversation)
    }

    fn members(&self, conv: ConversationId) -> Result<Vec<UserId>> {
        expect!(self.on_conv(conv, Op::Members(conv)), Users)
    }

    fn is_member(&self, user: UserId, conv: ConversationId) -> Result<bool> {
        expect!(self.on_conv(conv, Op::IsMember(user, conv)), Bool)
    }

    fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationId>> {
        let mut all = Vec::new();
        for r in self.on_user_shards("conversations", user, || Op::ConversationsOf(user))? {
            all.extend(expect!(Ok::<_, Error>(r), Convs)?);
        }
        all.sort_unstable();
        Ok(all)
    }

    fn last_id(&self, conv: ConversationId) -> Result<MessageId> {
        expect!(self.on_conv(conv, Op::LastId(conv)), Id)
    }

    fn send(
        &self,
        conv: ConversationId,
        message: NewMessage,
        client_key: Option<Vec<u8>>,
    ) -> Result<Message> {
        self.send_from(conv, message, client_key, None)
    }

    fn send_from(
        &self,
        conv: ConversationId,
        message: NewMessage,
        client_key: Option<Vec<u8>>,
        from: Option<u64>,
    ) -> Result<Message> {
        let origin = from.map(|conn| Origin {
            node: self.node,
            conn,
        });
        expect!(
            self.on_conv(conv, Op::Send(conv, message, client_key, origin)),
            Message
        )
    }

    fn pushes_messages(&self) -> bool {
        true
    }

    fn latest(&self, user: UserId, conv: ConversationId, n: usize) -> Result<Vec<Message>> {
        expect!(self.on_conv(conv, Op::Latest(user, conv, n)), Messages)
    }

    fn before(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        expect!(self.on_conv(conv, Op::Before(user, conv, id, n)), Messages)
    }

    fn after(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        expect!(self.on_conv(conv, Op::After(user, conv, id, n)), Messages)
    }

    fn around(
        &self,
        user: UserId,
        conv: ConversationId,
        id: MessageId,
        n: usize,
    ) -> Result<Vec<Message>> {
        expect!(self.on_conv(conv, Op::Around(user, conv, id, n)), Messages)
    }

    fn get(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<Option<Message>> {
        expect!(self.on_conv(conv, Op::Get(user, conv, id)), OptMessage)
    }

    fn raw_get(&self, conv: ConversationId, id: MessageId) -> Result<Option<Message>> {
        expect!(self.on_conv(conv, Op::RawGet(conv, id)), OptMessage)
    }

    fn raw_after(&self, conv: ConversationId, id: MessageId, n: usize) -> Result<Vec<Message>> {
        expect!(self.on_conv(conv, Op::RawAfter(conv, id, n)), Messages)
    }

    fn cursors(&self, user: UserId, conv: ConversationId) -> Result<Cursors> {
        expect!(self.on_conv(conv, Op::Cursors(user, conv)), Cursors)
    }

    fn mark_read(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<bool> {
        expect!(self.on_conv(conv, Op::MarkRead(user, conv, id)), Bool)
    }

    fn mark_delivered(&self, user: UserId, conv: ConversationId, id: MessageId) -> Result<bool> {
        expect!(self.on_conv(conv, Op::MarkDelivered(user, conv, id)), Bool)
    }

    fn receipts(&self, conv: ConversationId, id: MessageId) -> Result<MessageReceipts> {
        expect!(self.on_conv(conv, Op::Receipts(conv, id)), Receipts)
    }

    fn inbox(&self, user: UserId, limit: usize, cursor: Option<InboxCursor>) -> Result<InboxPage> {
        let mut entries = Vec::new();
        let mut more = false;
        for r in self.on_user_shards("inbox", user, || Op::Inbox(user, limit, cursor))? {
            let page = expect!(Ok::<_, Error>(r), Inbox)?;
            more |= page.next.is_some();
            entries.extend(page.entries);
        }
        // Newest activity first, ties by higher id: the order each shard pages in.
        entries.sort_by_key(|e| std::cmp::Reverse((e.activity_ms, e.conversation)));
        more |= entries.len() > limit;
        entries.truncate(limit);
        let next = match entries.last() {
            Some(e) if more => Some(InboxCursor {
                activity_ms: e.activity_ms,
                conversation: e.conversation,
            }),
            _ => None,
        };
        Ok(InboxPage { entries, next })
    }

    fn unread(&self, user: UserId) -> Result<Vec<Unread>> {
        let mut all = Vec::new();
        for r in self.on_user_shards("unread", user, || Op::Unread(user))? {
            all.extend(expect!(Ok::<_, Error>(r), Unread)?);
        }
        all.sort_by_key(|u| u.conversation);
        Ok(all)
    }

    fn unread_messages(
        &self,
        user: UserId,
        per_conversation: usize,
    ) -> Result<Vec<(Unread, Vec<Message>)>> {
        let mut all = Vec::new();
        for r in self.on_user_shards("unread messages", user, || {
            Op::UnreadMessages(user, per_conversation)
        })? {
            all.extend(expect!(Ok::<_, Error>(r), UnreadMessages)?);
        }
        all.sort_by_key(|(u, _)| u.conversation);
        Ok(all)
    }

    fn stats(&self) -> String {
        format!(
            "node {}: shards {:?} of {}",
            self.shards.cfg.node,
            self.shards.owned(),
            self.shards.cfg.shards
        )
    }

    fn close(&self) -> Result<()> {
        self.shards.stop();
        Ok(())
    }
}
