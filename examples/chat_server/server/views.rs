//! JSON views of the store's values, and the few things the server derives from them
//! (titles, group names, who shares a conversation with whom). All blocking.

use std::collections::{BTreeSet, HashMap};

use chatstore::presence::PresenceStatus;
use chatstore::{
    ConversationId, ConversationKind, InboxEntry, Message, MessageId, MessageKind, NewMessage,
    UserId,
};
use parking_lot::RwLock;
use serde_json::{json, Value};

use super::error::ApiResult;
use super::{membership, AppState};

pub fn message_json(st: &AppState, m: &Message) -> Value {
    json!({
        "conversation": m.conversation.0,
        "id": m.id.0,
        "sender": m.sender.0,
        "sender_name": &*st.accounts.name(m.sender),
        "timestamp_ms": m.timestamp_ms,
        "kind": format!("{:?}", m.kind).to_ascii_lowercase(),
        "text": String::from_utf8_lossy(&m.content),
        "attachment": m.attachment.as_ref().map(|a| String::from_utf8_lossy(a).into_owned()),
        "reply_to": m.reply_to.map(|r| r.0),
    })
}

pub fn presence_json(st: &AppState, user: UserId) -> Value {
    let shared = || st.shared_presence.as_ref().and_then(|p| p.status(user));
    match st.presence.status(user) {
        Ok(PresenceStatus::Online) => json!({ "online": true, "last_seen_ms": null }),
        Ok(PresenceStatus::Offline { last_seen_ms }) => match shared() {
            Some(PresenceStatus::Online) => json!({ "online": true, "last_seen_ms": null }),
            Some(PresenceStatus::Offline { last_seen_ms: seen }) => {
                json!({ "online": false, "last_seen_ms": seen.max(last_seen_ms) })
            }
            None => json!({ "online": false, "last_seen_ms": last_seen_ms }),
        },
        Err(_) => json!({ "online": false, "last_seen_ms": null }),
    }
}

/// Group names come from the group's first message (a system message written at creation);
/// cached in memory.
#[derive(Default)]
pub struct GroupNames(RwLock<HashMap<ConversationId, String>>);

impl GroupNames {
    pub fn get(&self, st: &AppState, conv: ConversationId) -> String {
        if let Some(n) = self.0.read().get(&conv) {
            return n.clone();
        }
        let name = st
            .store
            .raw_get(conv, MessageId(1))
            .ok()
            .flatten()
            .filter(|m| m.kind == MessageKind::System)
            .and_then(|m| serde_json::from_slice::<Value>(&m.content).ok())
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
        match name {
            Some(n) => {
                self.0.write().insert(conv, n.clone());
                n
            }
            None => format!("Group {}", conv.0),
        }
    }

    pub fn set(&self, conv: ConversationId, name: &str) {
        self.0.write().insert(conv, name.to_string());
    }
}

/// Title and kind of a conversation as `user` sees it.
fn title(
    st: &AppState,
    user: UserId,
    conv: ConversationId,
) -> ApiResult<(ConversationKind, String, Vec<UserId>)> {
    let c = st.store.conversation(conv)?;
    let members = st.store.members(conv)?;
    let title = match c.kind {
        ConversationKind::Direct => members
            .iter()
            .find(|&&m| m != user)
            .map(|&m| st.accounts.name(m).to_string())
            .unwrap_or_else(|| "(direct chat)".into()),
        ConversationKind::Group => st.groups.get(st, conv),
    };
    Ok((c.kind, title, members))
}

fn kind_str(k: ConversationKind) -> &'static str {
    match k {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

/// A conversation with its members, their presence and receipt cursors. A former member gets
/// only what they could see while a member: the facts, no member list (its changes, presence
/// and cursors are live data), and `last_id` the last id they may read.
pub fn conversation_json(st: &AppState, user: UserId, conv: ConversationId) -> ApiResult<Value> {
    let c = st.store.conversation(conv)?;
    let (kind, title, members) = title(st, user, conv)?;
    let is_member = members.contains(&user);
    let mut list = Vec::with_capacity(members.len());
    let last_id = if is_member {
        for m in &members {
            let cur = st.store.cursors(*m, conv)?;
            let mut v = json!({
                "id": m.0,
                "username": &*st.accounts.name(*m),
                "delivered": cur.delivered.0,
                "read": cur.read.0,
            });
            if let (Value::Object(o), Value::Object(p)) = (&mut v, presence_json(st, *m)) {
                o.extend(p);
            }
            list.push(v);
        }
        st.store.last_id(conv)?.0
    } else {
        membership::last_visible(st, conv, user)?
    };
    Ok(json!({
        "id": conv.0,
        "kind": kind_str(kind),
        "title": title,
        "created_ms": c.created_ms,
        "creator": c.creator.0,
        "member": is_member,
        "members": list,
        "last_id": last_id,
    }))
}

pub fn inbox_entry_json(st: &AppState, user: UserId, e: &InboxEntry) -> ApiResult<Value> {
    let (kind, title, members) = title(st, user, e.conversation)?;
    let peer = match kind {
        ConversationKind::Direct => members.iter().find(|&&m| m != user).map(|&m| {
            let mut v = json!({ "id": m.0, "username": &*st.accounts.name(m) });
            if let (Value::Object(o), Value::Object(p)) = (&mut v, presence_json(st, m)) {
                o.extend(p);
            }
            v
        }),
        ConversationKind::Group => None,
    };
    Ok(json!({
        "conversation": e.conversation.0,
        "kind": kind_str(kind),
        "title": title,
        "members": members.len(),
        "peer": peer,
        "last_message": e.last_message.as_ref().map(|m| message_json(st, m)),
        "unread": e.unread,
        "activity_ms": e.activity_ms,
    }))
}

/// Everyone who shares a current conversation with `user` (not `user`).
pub fn peers_of(st: &AppState, user: UserId) -> ApiResult<Vec<UserId>> {
    let mut peers = BTreeSet::new();
    for conv in st.store.conversations_of(user)? {
        peers.extend(st.store.members(conv)?);
    }
    peers.remove(&user);
    Ok(peers.into_iter().collect())
}

/// Writes a system message (group created, member added...) as `by`, and pushes it to the
/// members' live connections.
pub fn system_message(
    st: &AppState,
    conv: ConversationId,
    by: UserId,
    body: Value,
) -> ApiResult<Message> {
    let m = {
        let _appending = st.memberships.appending(conv);
        st.store.send(
            conv,
            NewMessage::new(by, body.to_string().into_bytes()).with_kind(MessageKind::System),
            None,
        )?
    };
    if !st.store.pushes_messages() {
        fanout(st, &m, None)?;
    }
    Ok(m)
}

/// Pushes a stored message to every live connection of every member, except `skip`.
pub fn fanout(st: &AppState, m: &Message, skip: Option<u64>) -> ApiResult<()> {
    let members = st.store.members(m.conversation)?;
    fanout_to(st, m, &members, skip);
    Ok(())
}

pub fn fanout_to(st: &AppState, m: &Message, members: &[UserId], skip: Option<u64>) {
    let frame = json!({ "type": "message", "message": message_json(st, m) });
    st.hub.push_users(
        members,
        &frame.to_string().into(),
        Some((m.conversation.0, m.id.0)),
        skip,
    );
}
