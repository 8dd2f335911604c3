//! State keys and values of the chat model. Keys are a one-byte table tag followed by
//! big-endian ids, so a prefix scan walks one user's or one conversation's records in order.
//! Values are varint fields. Tags and field orders are part of the on-disk format; they never
//! change (new fields are appended, and decoders treat missing trailing fields as zero).
//!
//! | tag | key                              | value                                        |
//! |-----|----------------------------------|----------------------------------------------|
//! | `u` | user                             | registered_ms                                |
//! | `c` | conversation                     | kind, created_ms, creator, [user_a, user_b]  |
//! | `d` | user_a, user_b (a < b)           | conversation                                 |
//! | `m` | conversation, user               | joined_after, removed_at (0 = member)        |
//! | `i` | user, conversation               | joined_after, removed_at, delivered, read, mentions_below |
//! | `k` | conversation, sender, client key | message id, timestamp_ms                     |
//! | `x` | user, conversation, message id   | (empty: the message mentions the user)       |
//! | `p` | user                             | last_seen_ms                                 |
//! | `r` | conversation, message id, user   | emoji (UTF-8)                                |
//! | `n` | (none)                           | next conversation id                         |

use bytes::Bytes;

use crate::format::coding::{put_varint, Reader};
use crate::types::{ConversationId, MessageId, UserId};

pub const USER: u8 = b'u';
pub const CONV: u8 = b'c';
pub const DIRECT: u8 = b'd';
pub const MEMBER: u8 = b'm';
pub const LINK: u8 = b'i';
pub const IDEMPOTENCY: u8 = b'k';
pub const MENTION: u8 = b'x';
pub const PRESENCE: u8 = b'p';
pub const REACTION: u8 = b'r';
pub const NEXT_CONV: u8 = b'n';

fn key(tag: u8, ids: &[u64]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 8 * ids.len());
    k.push(tag);
    for id in ids {
        k.extend_from_slice(&id.to_be_bytes());
    }
    k
}

pub fn user(u: UserId) -> Vec<u8> {
    key(USER, &[u.0])
}

pub fn conversation(c: ConversationId) -> Vec<u8> {
    key(CONV, &[c.0])
}

pub fn direct(a: UserId, b: UserId) -> Vec<u8> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    key(DIRECT, &[lo.0, hi.0])
}

pub fn member(c: ConversationId, u: UserId) -> Vec<u8> {
    key(MEMBER, &[c.0, u.0])
}

pub fn members_prefix(c: ConversationId) -> Vec<u8> {
    key(MEMBER, &[c.0])
}

pub fn link(u: UserId, c: ConversationId) -> Vec<u8> {
    key(LINK, &[u.0, c.0])
}

pub fn links_prefix(u: UserId) -> Vec<u8> {
    key(LINK, &[u.0])
}

pub fn idempotency(c: ConversationId, sender: UserId, client_key: &[u8]) -> Vec<u8> {
    let mut k = key(IDEMPOTENCY, &[c.0, sender.0]);
    k.extend_from_slice(client_key);
    k
}

pub fn mention(u: UserId, c: ConversationId, id: MessageId) -> Vec<u8> {
    key(MENTION, &[u.0, c.0, id.0])
}

pub fn mentions_prefix(u: UserId, c: ConversationId) -> Vec<u8> {
    key(MENTION, &[u.0, c.0])
}

pub fn reaction(c: ConversationId, id: MessageId, u: UserId) -> Vec<u8> {
    key(REACTION, &[c.0, id.0, u.0])
}

pub fn reactions_prefix(c: ConversationId) -> Vec<u8> {
    key(REACTION, &[c.0])
}

pub fn presence(u: UserId) -> Vec<u8> {
    key(PRESENCE, &[u.0])
}

pub fn next_conversation() -> Vec<u8> {
    vec![NEXT_CONV]
}

/// The big-endian u64 at `index` (0-based, after the tag) of a key.
pub fn id_at(key: &[u8], index: usize) -> Option<u64> {
    let at = 1 + 8 * index;
    let b = key.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_be_bytes(a))
}

/// Encodes varint fields.
pub fn fields(values: &[u64]) -> Bytes {
    let mut v = Vec::with_capacity(values.len() * 3);
    for &x in values {
        put_varint(&mut v, x);
    }
    Bytes::from(v)
}

/// Decodes `N` varint fields; missing trailing fields read as 0, malformed input as `None`.
pub fn read_fields<const N: usize>(value: &[u8]) -> Option<[u64; N]> {
    let mut r = Reader::new(value);
    let mut out = [0u64; N];
    for slot in out.iter_mut() {
        if r.is_empty() {
            break;
        }
        *slot = r.varint()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_their_ids() {
        assert!(link(UserId(1), ConversationId(2)) < link(UserId(1), ConversationId(256)));
        assert!(link(UserId(1), ConversationId(u64::MAX)) < link(UserId(2), ConversationId(0)));
        assert!(link(UserId(7), ConversationId(3)).starts_with(&links_prefix(UserId(7))));
        assert_eq!(direct(UserId(9), UserId(3)), direct(UserId(3), UserId(9)));
        assert_eq!(id_at(&member(ConversationId(5), UserId(6)), 1), Some(6));
    }

    #[test]
    fn fields_round_trip_and_default_missing_ones() {
        let v = fields(&[1, 0, u64::MAX]);
        assert_eq!(read_fields::<3>(&v), Some([1, 0, u64::MAX]));
        assert_eq!(read_fields::<5>(&v), Some([1, 0, u64::MAX, 0, 0]));
        assert_eq!(read_fields::<1>(&[0x80]), None);
    }
}
