//! The payload of a WAL batch record: the entries one write call made, applied all or nothing.
//!
//! ```text
//! batch   := count:varint entry{count}
//! entry   := tag:u8 body
//! tag 1   := message: conv:varint id:varint sender:varint timestamp_ms:varint kind:u8
//!            flags:u8 content_len:varint content
//!            [attachment_len:varint attachment]   if flags & HAS_ATTACHMENT
//!            [reply_to:varint]                    if flags & HAS_REPLY
//!            [n:varint user:varint{n}]            if flags & HAS_MENTIONS
//! tag 2   := put:    key_len:varint key value_len:varint value
//! tag 3   := delete: key_len:varint key
//! ```
//! Tags are part of the format and never change; new entry kinds take new tags.
//!
//! Limits: at most [`MAX_MENTIONS`] mentions per message (the decoder refuses more), keys of
//! at most [`MAX_KEY_LEN`] bytes, and the whole payload within [`MAX_RECORD_LEN`]. The store
//! encodes batches with `encode`, which refuses a batch over any limit a reader of the WAL or of
//! a segment would refuse, so such a batch never reaches the log.
//!
//! [`MAX_KEY_LEN`]: super::state_block::MAX_KEY_LEN
//! [`MAX_RECORD_LEN`]: super::wal::MAX_RECORD_LEN

use bytes::Bytes;

use super::block::MAX_MESSAGE_BYTES;
use super::coding::{put_varint, varint_len, Reader};
use super::state_block::{MAX_KEY_LEN, MAX_VALUE_LEN};
use super::{within, OverLimit};
use crate::types::{ConversationId, Message, MessageId, MessageKind, MessageRef, UserId};

/// Entry tag of an appended message.
pub const TAG_MESSAGE: u8 = 1;
/// Entry tag of a state put.
pub const TAG_PUT: u8 = 2;
/// Entry tag of a state delete.
pub const TAG_DELETE: u8 = 3;

/// Flag bits shared by the WAL entry and the segment flags column.
pub mod flags {
    /// The message has an attachment link.
    pub const HAS_ATTACHMENT: u8 = 1;
    /// The message replies to another.
    pub const HAS_REPLY: u8 = 2;
    /// The message mentions users.
    pub const HAS_MENTIONS: u8 = 4;
    /// Every defined bit.
    pub const ALL: u8 = HAS_ATTACHMENT | HAS_REPLY | HAS_MENTIONS;
}

/// Largest number of mentions a decoder accepts for one message (WAL batches and segment
/// blocks alike).
pub const MAX_MENTIONS: usize = 1 << 16;

/// Checks a message against every limit of the formats it will be written in: the WAL batch
/// (mentions) and the segment block (mentions; content and attachment within
/// [`MAX_MESSAGE_BYTES`], so that the row fits in a block).
pub(crate) fn check_message(m: MessageRef<'_>) -> Result<(), OverLimit> {
    within("mentions of one message", m.mentions.len(), MAX_MENTIONS)?;
    within(
        "bytes of one message's content and attachment",
        m.content.len() + m.attachment.map_or(0, <[u8]>::len),
        MAX_MESSAGE_BYTES,
    )
}

/// Checks a state entry against the limits of the WAL batch and the state block.
pub(crate) fn check_state(key: &[u8], value: Option<&[u8]>) -> Result<(), OverLimit> {
    within("bytes of a state key", key.len(), MAX_KEY_LEN)?;
    within(
        "bytes of a state value",
        value.map_or(0, <[u8]>::len),
        MAX_VALUE_LEN,
    )
}

/// Bytes [`put_message`] appends for `m`.
pub(crate) fn message_len(m: MessageRef<'_>) -> usize {
    let mut n = 1
        + varint_len(m.conversation.0)
        + varint_len(m.id.0)
        + varint_len(m.sender.0)
        + varint_len(m.timestamp_ms)
        + 2
        + varint_len(m.content.len() as u64)
        + m.content.len();
    if let Some(a) = m.attachment {
        n += varint_len(a.len() as u64) + a.len();
    }
    if let Some(r) = m.reply_to {
        n += varint_len(r.0);
    }
    if !m.mentions.is_empty() {
        n += varint_len(m.mentions.len() as u64);
        n += m.mentions.iter().map(|u| varint_len(u.0)).sum::<usize>();
    }
    n
}

/// Appends a whole batch payload: the messages, then the state entries. Refuses (appending
/// nothing) a batch with an entry over a limit of the formats; the record's own size limit is
/// checked when the record is finished ([`super::wal::finish_record`]).
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    messages: &[Message],
    state: &[(Bytes, Option<Bytes>)],
) -> Result<(), OverLimit> {
    for m in messages {
        check_message(m.as_ref())?;
    }
    for (k, v) in state {
        check_state(k, v.as_deref())?;
    }
    put_count(buf, messages.len() + state.len());
    for m in messages {
        put_message(buf, m);
    }
    for (k, v) in state {
        put_state(buf, k, v.as_deref());
    }
    Ok(())
}

/// Flag bits describing the optional fields of `m`.
pub fn message_flags(m: &Message) -> u8 {
    flags_of(m.as_ref())
}

pub(crate) fn flags_of(m: MessageRef<'_>) -> u8 {
    let mut f = 0;
    if m.attachment.is_some() {
        f |= flags::HAS_ATTACHMENT;
    }
    if m.reply_to.is_some() {
        f |= flags::HAS_REPLY;
    }
    if !m.mentions.is_empty() {
        f |= flags::HAS_MENTIONS;
    }
    f
}

/// Appends the batch header for `count` entries.
pub fn put_count(buf: &mut Vec<u8>, count: usize) {
    put_varint(buf, count as u64);
}

/// Appends a message entry. REQUIRES: `m` within the limits `encode` checks; a reader
/// refuses the batch otherwise.
pub fn put_message(buf: &mut Vec<u8>, m: &Message) {
    buf.push(TAG_MESSAGE);
    put_varint(buf, m.conversation.0);
    put_varint(buf, m.id.0);
    put_varint(buf, m.sender.0);
    put_varint(buf, m.timestamp_ms);
    buf.push(m.kind as u8);
    let f = message_flags(m);
    buf.push(f);
    put_varint(buf, m.content.len() as u64);
    buf.extend_from_slice(&m.content);
    if let Some(a) = &m.attachment {
        put_varint(buf, a.len() as u64);
        buf.extend_from_slice(a);
    }
    if let Some(r) = m.reply_to {
        put_varint(buf, r.0);
    }
    if !m.mentions.is_empty() {
        put_varint(buf, m.mentions.len() as u64);
        for u in &m.mentions {
            put_varint(buf, u.0);
        }
    }
}

/// Appends a state put (`Some`) or delete (`None`) entry. REQUIRES: within the limits
/// `encode` checks.
pub fn put_state(buf: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    buf.push(if value.is_some() { TAG_PUT } else { TAG_DELETE });
    put_varint(buf, key.len() as u64);
    buf.extend_from_slice(key);
    if let Some(v) = value {
        put_varint(buf, v.len() as u64);
        buf.extend_from_slice(v);
    }
}

/// A decoded batch entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An appended message.
    Message(Message),
    /// A state key set to a value (`Some`) or deleted (`None`).
    State(Bytes, Option<Bytes>),
}

/// Decodes every entry of a batch payload. `payload` is a slice of `owner`, so message content
/// can share its memory. Returns a static reason on malformed input.
pub fn decode(owner: &Bytes, payload: &[u8]) -> Result<Vec<Entry>, &'static str> {
    let base = (payload.as_ptr() as usize).wrapping_sub(owner.as_ptr() as usize);
    if base > owner.len() || owner.len() - base < payload.len() {
        return Err("batch payload is not inside its buffer");
    }
    let mut r = Reader::new(payload);
    // Every entry takes at least two bytes; reserve by what the payload can hold, not by what
    // it claims, so a damaged count cannot make us allocate.
    let count = r.len(payload.len() / 2).ok_or("bad entry count")?;
    let mut out = Vec::with_capacity(count.min(1024));
    let slice = |r: &mut Reader<'_>, n: usize| -> Result<Bytes, &'static str> {
        let at = r.position();
        r.bytes(n).ok_or("field runs past the record")?;
        Ok(owner.slice(base + at..base + at + n))
    };
    for _ in 0..count {
        match r.u8().ok_or("truncated entry")? {
            TAG_MESSAGE => {
                let conversation = ConversationId(r.varint().ok_or("bad conversation")?);
                let id = MessageId(r.varint().ok_or("bad id")?);
                let sender = UserId(r.varint().ok_or("bad sender")?);
                let timestamp_ms = r.varint().ok_or("bad timestamp")?;
                let kind = MessageKind::from_u8(r.u8().ok_or("bad kind")?).ok_or("bad kind")?;
                let f = r.u8().ok_or("bad flags")?;
                if f & !flags::ALL != 0 {
                    return Err("unknown flag bits");
                }
                let n = r.len(payload.len()).ok_or("bad content length")?;
                let content = slice(&mut r, n)?;
                let attachment = if f & flags::HAS_ATTACHMENT != 0 {
                    let n = r.len(payload.len()).ok_or("bad attachment length")?;
                    Some(slice(&mut r, n)?)
                } else {
                    None
                };
                let reply_to = if f & flags::HAS_REPLY != 0 {
                    Some(MessageId(r.varint().ok_or("bad reply id")?))
                } else {
                    None
                };
                let mut mentions = Vec::new();
                if f & flags::HAS_MENTIONS != 0 {
                    let n = r
                        .len(MAX_MENTIONS.min(r.remaining()))
                        .ok_or("bad mentions")?;
                    mentions.reserve(n);
                    for _ in 0..n {
                        mentions.push(UserId(r.varint().ok_or("bad mention")?));
                    }
                }
                if id.0 == 0 {
                    return Err("message id 0");
                }
                out.push(Entry::Message(Message {
                    conversation,
                    id,
                    sender,
                    timestamp_ms,
                    kind,
                    content,
                    attachment,
                    reply_to,
                    mentions,
                    edited_ms: None,
                }));
            }
            tag @ (TAG_PUT | TAG_DELETE) => {
                let n = r.len(MAX_KEY_LEN).ok_or("bad key length")?;
                let key = slice(&mut r, n)?;
                let value = if tag == TAG_PUT {
                    let n = r.len(payload.len()).ok_or("bad value length")?;
                    Some(slice(&mut r, n)?)
                } else {
                    None
                };
                out.push(Entry::State(key, value));
            }
            _ => return Err("unknown entry tag"),
        }
    }
    if !r.is_empty() {
        return Err("trailing bytes after the last entry");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conv: u64, id: u64) -> Message {
        Message {
            conversation: ConversationId(conv),
            id: MessageId(id),
            sender: UserId(7),
            timestamp_ms: 1_700_000_000_000u64.wrapping_add(id),
            kind: MessageKind::Normal,
            content: Bytes::from(format!("message {id}")),
            attachment: None,
            reply_to: None,
            mentions: Vec::new(),
            edited_ms: None,
        }
    }

    #[test]
    fn entries_round_trip_with_every_optional_field() {
        let mut full = msg(3, 9);
        full.kind = MessageKind::System;
        full.attachment = Some(Bytes::from_static(b"https://assets/x.png"));
        full.reply_to = Some(MessageId(4));
        full.mentions = vec![UserId(1), UserId(u64::MAX)];
        let msgs = vec![msg(1, 1), full, msg(u64::MAX, u64::MAX)];
        let mut buf = vec![0xAA];
        put_count(&mut buf, msgs.len() + 3);
        for m in &msgs {
            put_message(&mut buf, m);
        }
        put_state(&mut buf, b"key", Some(b"value"));
        put_state(&mut buf, b"gone", None);
        put_state(&mut buf, b"", Some(b""));
        let owner = Bytes::from(buf);
        let got = decode(&owner, &owner[1..]).unwrap();
        let mut want: Vec<Entry> = msgs.into_iter().map(Entry::Message).collect();
        want.push(Entry::State(
            Bytes::from_static(b"key"),
            Some(Bytes::from_static(b"value")),
        ));
        want.push(Entry::State(Bytes::from_static(b"gone"), None));
        want.push(Entry::State(Bytes::new(), Some(Bytes::new())));
        assert_eq!(got, want);
    }

    #[test]
    fn message_len_is_what_put_message_appends() {
        let mut full = msg(u64::MAX, u64::MAX);
        full.attachment = Some(Bytes::from(vec![b'a'; 300]));
        full.reply_to = Some(MessageId(1 << 40));
        full.mentions = vec![UserId(0), UserId(200), UserId(u64::MAX)];
        full.content = Bytes::from(vec![b'c'; 20_000]);
        for m in [msg(1, 1), msg(300, 70_000), full] {
            let mut buf = Vec::new();
            put_message(&mut buf, &m);
            assert_eq!(message_len(m.as_ref()), buf.len());
        }
    }

    #[test]
    fn encode_refuses_what_a_reader_would_refuse() {
        let mut at = msg(1, 1);
        at.mentions = (0..MAX_MENTIONS as u64).map(UserId).collect();
        let mut buf = Vec::new();
        encode(&mut buf, std::slice::from_ref(&at), &[]).unwrap();
        let owner = Bytes::from(buf);
        assert_eq!(
            decode(&owner, &owner).unwrap(),
            vec![Entry::Message(at.clone())]
        );

        let mut over = at;
        over.mentions.push(UserId(7));
        let long_key = Bytes::from(vec![b'k'; MAX_KEY_LEN + 1]);
        let mut buf = vec![0xAA];
        let refused = [
            encode(&mut buf, &[msg(1, 1), over], &[]),
            encode(&mut buf, &[], &[(long_key, None)]),
        ];
        for r in refused {
            assert!(r.is_err());
        }
        assert_eq!(buf, vec![0xAA], "a refused batch appends nothing");
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        let mut buf = Vec::new();
        put_count(&mut buf, 1);
        let mut m = msg(1, 1);
        m.mentions = vec![UserId(5)];
        put_message(&mut buf, &m);
        let owner = Bytes::from(buf.clone());
        for cut in 0..buf.len() {
            assert!(decode(&owner, &owner[..cut]).is_err(), "cut {cut}");
        }
    }
}
