//! Accounts kept in the shards: a username belongs to the shard its name hashes to, and that
//! shard's owner is the one writer that may give it out.
//!
//! Why not a KV bucket: on a replicated bucket, the server this cluster runs on (2.9) lets two
//! concurrent compare-and-set writes of one key both succeed (`cluster/tests/nats_server.rs`
//! shows it), so two sign-ups could get one user id, or one name. A shard's writes go through
//! its stream fenced by the expected last sequence, which holds under any race (the same file
//! shows that too), and only the lease holder writes them.
//!
//! In each shard's store, local conversation [`ACCOUNTS`] (never a chat: the chat layer
//! numbers conversations from 1 and would need 2^40 of them to reach it) holds one message per
//! account, `{"username", "hash"}`, sent by user 0. The account's user id is that message's id
//! `m` in the cluster's numbering, `m * S + shard`: unique across shards with no counter to
//! share, and the record of user `u` is found at message `u / S` of shard `u mod S`. The
//! owner keeps a name → account table of its shard, read from the conversation when it first
//! needs it (after taking the shard over, so it holds every account written before).

use std::collections::HashMap;

use chatstore::{ChatStore, ConversationId, Error, MessageId, NewMessage, UserId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::wire::Ids;

/// The local conversation of a shard that holds its accounts.
pub const ACCOUNTS: ConversationId = ConversationId(1 << 40);

/// One account as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub username: String,
    pub hash: String,
}

/// An account found by name: its user id and record.
pub type Found = (u64, Record);

/// The accounts of one owned shard.
#[derive(Default)]
pub struct ShardAccounts {
    /// Lowercased username → (user id, record); `None` until first read.
    table: Mutex<Option<HashMap<String, Found>>>,
}

impl ShardAccounts {
    /// Gives `username` (lowercased: `key`) to a new user with password `hash`: its user id,
    /// or `None` if the name is taken. The table's lock is held across the append, so two
    /// sign-ups of one name on this owner cannot both pass the check.
    pub fn claim(
        &self,
        chat: &ChatStore,
        ids: Ids,
        key: &str,
        username: &str,
        hash: &str,
    ) -> Result<Option<u64>, Error> {
        let mut table = self.table.lock();
        let table = loaded(&mut table, chat, ids)?;
        if table.contains_key(key) {
            return Ok(None);
        }
        let record = Record {
            username: username.to_string(),
            hash: hash.to_string(),
        };
        let body = serde_json::to_vec(&record)
            .map_err(|e| Error::Internal(format!("encoding an account: {e}")))?;
        let m = chat
            .store()
            .append(ACCOUNTS, NewMessage::new(UserId(0), body))?;
        let id = user_id(ids, m.id);
        table.insert(key.to_string(), (id, record));
        Ok(Some(id))
    }

    /// The account named `key` (lowercased), if this shard has it.
    pub fn find(&self, chat: &ChatStore, ids: Ids, key: &str) -> Result<Option<Found>, Error> {
        let mut table = self.table.lock();
        Ok(loaded(&mut table, chat, ids)?.get(key).cloned())
    }
}

/// The username of user `id` (of this shard), read from its record.
pub fn username(chat: &ChatStore, ids: Ids, id: u64) -> Result<Option<String>, Error> {
    let n = u64::from(ids.shards);
    if id % n != u64::from(ids.shard) || id < n {
        return Ok(None);
    }
    match chat.store().get(ACCOUNTS, MessageId(id / n)) {
        Ok(Some(m)) => Ok(Some(decode(&m.content, id)?.username)),
        Ok(None) | Err(Error::IdOutOfRange { .. }) | Err(Error::UnknownConversation(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn user_id(ids: Ids, m: MessageId) -> u64 {
    m.0 * u64::from(ids.shards) + u64::from(ids.shard)
}

fn decode(content: &[u8], id: u64) -> Result<Record, Error> {
    serde_json::from_slice(content)
        .map_err(|e| Error::Internal(format!("the account record of user {id} is malformed: {e}")))
}

fn loaded<'a>(
    table: &'a mut Option<HashMap<String, Found>>,
    chat: &ChatStore,
    ids: Ids,
) -> Result<&'a mut HashMap<String, Found>, Error> {
    if table.is_none() {
        let mut read = HashMap::new();
        for m in chat.store().export(ACCOUNTS) {
            let m = m?;
            let id = user_id(ids, m.id);
            let record = decode(&m.content, id)?;
            read.insert(record.username.to_ascii_lowercase(), (id, record));
        }
        *table = Some(read);
    }
    Ok(table.get_or_insert_with(HashMap::new))
}
