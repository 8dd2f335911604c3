//! Edits, deletes and retention: engine records that change how stored messages read.
//!
//! They are state entries in the engine's reserved key space (keys starting with byte 0, which
//! no layer above may use):
//!
//! | key                                | value                                              |
//! |------------------------------------|----------------------------------------------------|
//! | `0 'e' conversation:u64be id:u64be` | kind:u8 (1 edited, 2 deleted) edited_ms:varint [content_len:varint content] |
//! | `0 't' conversation:u64be`          | ttl_ms:varint (0 = no time-to-live)                |
//! | `0 'w' conversation:u64be`          | first_kept_id:varint (the watermark)               |
//!
//! Reads overlay them on the stored rows. Compaction strips the content of overridden rows
//! from the segments it writes (the edited text lives only in its record; a deleted message's
//! text nowhere) and drops messages older than their retention.
//!
//! The watermark is written by compaction only, into the segments it outputs, when it drops a
//! conversation's expired messages: every id below it is gone for good, whatever the retention
//! says later (removed, lengthened, a clock set back, old messages imported). Copies of it at
//! several levels may differ (each compaction writes its own output level); the highest wins.

use bytes::Bytes;

use crate::format::coding::{put_varint, Reader};
use crate::types::{ConversationId, Message, MessageId, MessageKind};

/// First byte of every engine-reserved state key.
pub const RESERVED: u8 = 0;
const EDIT: u8 = b'e';
const TTL: u8 = b't';
const WATERMARK: u8 = b'w';

const KIND_EDITED: u8 = 1;
const KIND_DELETED: u8 = 2;

/// An edit or delete of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Override {
    /// New content, and when.
    Edited {
        /// Edit time.
        at_ms: u64,
        /// The new content.
        content: Bytes,
    },
    /// Deleted for everyone, and when.
    Deleted {
        /// Delete time.
        at_ms: u64,
    },
}

impl Override {
    /// Encodes the record value.
    pub fn encode(&self) -> Bytes {
        let mut v = Vec::new();
        match self {
            Override::Edited { at_ms, content } => {
                v.push(KIND_EDITED);
                put_varint(&mut v, *at_ms);
                put_varint(&mut v, content.len() as u64);
                v.extend_from_slice(content);
            }
            Override::Deleted { at_ms } => {
                v.push(KIND_DELETED);
                put_varint(&mut v, *at_ms);
            }
        }
        Bytes::from(v)
    }

    /// Decodes a record value; `value` is kept as the owner of the content.
    pub fn decode(value: &Bytes) -> Option<Override> {
        let mut r = Reader::new(value);
        match r.u8()? {
            KIND_EDITED => {
                let at_ms = r.varint()?;
                let n = r.len(value.len())?;
                let start = r.position();
                r.bytes(n)?;
                Some(Override::Edited {
                    at_ms,
                    content: value.slice(start..start + n),
                })
            }
            KIND_DELETED => Some(Override::Deleted { at_ms: r.varint()? }),
            _ => None,
        }
    }

    /// Applies the override to a stored message.
    pub fn apply(&self, m: &mut Message) {
        match self {
            Override::Edited { at_ms, content } => {
                m.content = content.clone();
                m.edited_ms = Some(*at_ms);
            }
            Override::Deleted { at_ms } => {
                m.kind = MessageKind::Deleted;
                m.content = Bytes::new();
                m.attachment = None;
                m.mentions = Vec::new();
                m.reply_to = None;
                m.edited_ms = Some(*at_ms);
            }
        }
    }

    /// The row compaction writes in place of `m`: everything but the content, which lives in
    /// the record (edit) or nowhere (delete).
    pub fn strip(&self, m: &Message) -> Message {
        let mut out = m.clone();
        out.content = Bytes::new();
        if let Override::Deleted { .. } = self {
            out.kind = MessageKind::Deleted;
            out.attachment = None;
            out.mentions = Vec::new();
            out.reply_to = None;
        }
        out
    }
}

fn key(tag: u8, ids: &[u64]) -> Vec<u8> {
    let mut k = vec![RESERVED, tag];
    for id in ids {
        k.extend_from_slice(&id.to_be_bytes());
    }
    k
}

/// Key of the override record of one message.
pub fn edit_key(conv: ConversationId, id: MessageId) -> Vec<u8> {
    key(EDIT, &[conv.0, id.0])
}

/// Prefix of every override record of a conversation.
pub fn edit_prefix(conv: ConversationId) -> Vec<u8> {
    key(EDIT, &[conv.0])
}

/// The message id in an override key.
pub fn edit_key_id(k: &[u8]) -> Option<u64> {
    let b = k.get(10..18)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_be_bytes(a))
}

/// Key of a conversation's time-to-live record.
pub fn ttl_key(conv: ConversationId) -> Vec<u8> {
    key(TTL, &[conv.0])
}

/// Encodes a time-to-live record.
pub fn encode_ttl(ttl_ms: u64) -> Bytes {
    let mut v = Vec::new();
    put_varint(&mut v, ttl_ms);
    Bytes::from(v)
}

/// Decodes a time-to-live record.
pub fn decode_ttl(v: &[u8]) -> Option<u64> {
    Reader::new(v).varint()
}

/// Key of a conversation's watermark: ids below it were dropped by compaction.
pub fn watermark_key(conv: ConversationId) -> Vec<u8> {
    key(WATERMARK, &[conv.0])
}

/// Prefix of every watermark key.
pub fn watermark_prefix() -> Vec<u8> {
    key(WATERMARK, &[])
}

/// Whether `k` is a watermark key (whose copies merge by taking the highest, not the newest).
pub fn is_watermark_key(k: &[u8]) -> bool {
    k.len() == 10 && k[0] == RESERVED && k[1] == WATERMARK
}

/// Encodes a watermark.
pub fn encode_watermark(first_kept_id: u64) -> Bytes {
    let mut v = Vec::new();
    put_varint(&mut v, first_kept_id);
    Bytes::from(v)
}

/// Decodes a watermark.
pub fn decode_watermark(v: &[u8]) -> Option<u64> {
    Reader::new(v).varint()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for o in [
            Override::Edited {
                at_ms: 77,
                content: Bytes::from_static(b"fixed typo"),
            },
            Override::Deleted { at_ms: 99 },
        ] {
            assert_eq!(Override::decode(&o.encode()), Some(o));
        }
        assert_eq!(Override::decode(&Bytes::from_static(&[9])), None);
        let k = edit_key(ConversationId(5), MessageId(300));
        assert!(k.starts_with(&edit_prefix(ConversationId(5))));
        assert_eq!(edit_key_id(&k), Some(300));
        assert_eq!(decode_ttl(&encode_ttl(86_400_000)), Some(86_400_000));
        let w = watermark_key(ConversationId(5));
        assert!(is_watermark_key(&w));
        assert!(w.starts_with(&watermark_prefix()));
        assert!(!is_watermark_key(&ttl_key(ConversationId(5))));
        assert!(!is_watermark_key(&k));
        assert_eq!(decode_watermark(&encode_watermark(301)), Some(301));
    }
}
