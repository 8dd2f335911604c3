//! What replicas of a chat store must agree on, and a random chat workload to drive a leader
//! with: shared by the in-process replication test (`tests/replication.rs`) and the JetStream
//! shard tests (`cluster/tests/shard_log.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use chatstore::{
    ChatError, ChatStore, ConversationId, Error, Message, MessageId, NewMessage, Unread, UserId,
};
use rand::rngs::StdRng;
use rand::Rng;

/// Users `1..=USERS` take part.
pub const USERS: u64 = 5;

/// Everything replicas must agree on.
#[derive(Debug, PartialEq)]
pub struct State {
    pub lsn: u64,
    pub messages: BTreeMap<u64, Vec<Message>>,
    pub unread: BTreeMap<u64, Vec<Unread>>,
    pub read_cursors: BTreeMap<(u64, u64), u64>,
}

/// The state of `chat` over `convs` and every user.
pub fn state(chat: &ChatStore, convs: &[ConversationId]) -> State {
    let store = chat.store();
    let mut messages = BTreeMap::new();
    let mut read_cursors = BTreeMap::new();
    for &c in convs {
        messages.insert(c.0, store.latest(c, usize::MAX).unwrap());
        for u in 1..=USERS {
            if let Ok(cursors) = chat.cursors(UserId(u), c) {
                read_cursors.insert((c.0, u), cursors.read.0);
            }
        }
    }
    let unread = (1..=USERS)
        .map(|u| (u, chat.unread(UserId(u)).unwrap()))
        .collect();
    State {
        lsn: store.last_lsn(),
        messages,
        unread,
        read_cursors,
    }
}

/// One random chat operation on the leader (messages, retried sends, receipts, edits,
/// deletes, retention, flushes); refusals the chat model gives for bad requests (not a
/// member, not the sender...) are fine, storage errors are not.
pub fn random_op(rng: &mut StdRng, chat: &ChatStore, convs: &[ConversationId], n: u64) {
    let conv = convs[rng.gen_range(0..convs.len())];
    let user = UserId(rng.gen_range(1..=USERS));
    let last = chat.store().last_id(conv).unwrap().0;
    let result = match rng.gen_range(0..12) {
        0..=5 => {
            let m = NewMessage::text(
                user,
                &format!("message {n} {}", "x".repeat(n as usize % 90)),
            );
            if rng.gen_ratio(1, 4) {
                let key = format!("k{}", rng.gen_range(0..20));
                chat.send_with_key(conv, m, key).map(|_| ())
            } else {
                chat.send(conv, m).map(|_| ())
            }
        }
        6 | 7 if last > 0 => chat
            .mark_read(user, conv, MessageId(rng.gen_range(1..=last)))
            .map(|_| ()),
        8 if last > 0 => chat
            .edit(
                conv,
                MessageId(rng.gen_range(1..=last)),
                user,
                format!("edited {n}"),
            )
            .map(|_| ()),
        9 if last > 0 => chat
            .delete(conv, MessageId(rng.gen_range(1..=last)), user)
            .map(|_| ()),
        10 => chat
            .set_retention(conv, user, Some(Duration::from_secs(3600 * 24)))
            .map(|_| ()),
        _ => chat.store().flush(),
    };
    match result {
        Ok(())
        | Err(Error::Chat(ChatError::NotAMember { .. }))
        | Err(Error::Chat(ChatError::NotTheSender { .. }))
        | Err(Error::InvalidArgument(_))
        | Err(Error::IdOutOfRange { .. }) => {}
        Err(e) => panic!("operation {n}: {e}"),
    }
}
