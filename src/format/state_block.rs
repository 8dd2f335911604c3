//! Sorted key-value blocks for the store's small state (memberships, cursors, idempotency
//! keys...). Keys are prefix-compressed against the previous key; a value may be a tombstone.
//! See `docs/format-segment.md`.
//!
//! ```text
//! body  := count:varint entry{count}
//! entry := shared:varint | unshared:varint | value_tag:varint | key_suffix[unshared]
//!          | value[value_tag - 1]          (value_tag 0 = tombstone, n + 1 = n-byte value)
//! ```
//! The body is compressed and framed with the same trailer as message blocks.

use bytes::Bytes;

use super::block::{MAX_BLOCK_LEN, MAX_MESSAGE_BYTES};
use super::coding::{put_varint, Reader};

/// Largest key the store accepts.
pub const MAX_KEY_LEN: usize = 4096;
/// Bytes of an entry's three length fields, at most, plus the block's entry count.
const MAX_ENTRY_FIXED: usize = 4 * 5;
/// Largest value: what a block holds beside the longest key (a reader refuses a block body
/// over [`MAX_BLOCK_LEN`]; a writer starts a new block for an entry that might not fit).
pub(crate) const MAX_VALUE_LEN: usize = MAX_BLOCK_LEN - MAX_KEY_LEN - MAX_ENTRY_FIXED;

// The largest value the store writes, an edit record of the largest message (a kind byte and
// two varints before the content), fits.
const _: () = assert!(MAX_MESSAGE_BYTES + 1 + 10 + 10 <= MAX_VALUE_LEN);

/// The most bytes a block body can take with one more entry of `key` and `value` than the
/// `current` bytes it has.
pub(crate) fn bound_with(current: usize, key: &[u8], value: Option<&[u8]>) -> usize {
    current + MAX_ENTRY_FIXED + key.len() + value.map_or(0, <[u8]>::len)
}

/// Accumulates sorted entries for one block.
#[derive(Debug, Default)]
pub struct StateBlockBuilder {
    body: Vec<u8>,
    last_key: Vec<u8>,
    first_key: Option<Vec<u8>>,
    count: usize,
}

impl StateBlockBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries added.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far.
    pub fn estimated_len(&self) -> usize {
        self.body.len()
    }

    /// The first key added.
    pub fn first_key(&self) -> Option<&[u8]> {
        self.first_key.as_deref()
    }

    /// Adds an entry. REQUIRES: keys strictly increasing, at most [`MAX_KEY_LEN`] bytes, a
    /// value of at most `MAX_VALUE_LEN` bytes; returns `false` (adding nothing) otherwise.
    pub fn add(&mut self, key: &[u8], value: Option<&[u8]>) -> bool {
        if self.count > 0 && key <= self.last_key.as_slice() {
            return false;
        }
        if super::batch::check_state(key, value).is_err() {
            return false;
        }
        let shared = key
            .iter()
            .zip(self.last_key.iter())
            .take_while(|(a, b)| a == b)
            .count();
        put_varint(&mut self.body, shared as u64);
        put_varint(&mut self.body, (key.len() - shared) as u64);
        put_varint(&mut self.body, value.map_or(0, |v| v.len() as u64 + 1));
        self.body.extend_from_slice(&key[shared..]);
        if let Some(v) = value {
            self.body.extend_from_slice(v);
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        if self.first_key.is_none() {
            self.first_key = Some(key.to_vec());
        }
        self.count += 1;
        true
    }

    /// The uncompressed body; resets the builder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 5);
        put_varint(&mut out, self.count as u64);
        out.extend_from_slice(&self.body);
        *self = StateBlockBuilder::default();
        out
    }
}

/// A decoded state block: sorted keys with their values (`None` = tombstone).
#[derive(Debug)]
pub struct StateBlock {
    entries: Vec<(Bytes, Option<Bytes>)>,
    bytes: usize,
}

impl StateBlock {
    /// Decodes an uncompressed body. Values share memory with `data`.
    pub fn decode(data: Bytes) -> Result<StateBlock, &'static str> {
        let buf: &[u8] = &data;
        let mut r = Reader::new(buf);
        // Every entry takes at least three bytes; never reserve by the claimed count alone.
        let count = r.len(buf.len() / 3).ok_or("bad entry count")?;
        let mut entries: Vec<(Bytes, Option<Bytes>)> = Vec::with_capacity(count.min(4096));
        let mut key: Vec<u8> = Vec::new();
        for _ in 0..count {
            let shared = r.len(key.len()).ok_or("bad shared length")?;
            let unshared = r.len(MAX_KEY_LEN).ok_or("bad key length")?;
            let tag = r.len(buf.len() + 1).ok_or("bad value length")?;
            key.truncate(shared);
            key.extend_from_slice(r.bytes(unshared).ok_or("key runs past the block")?);
            if key.len() > MAX_KEY_LEN {
                return Err("key too long");
            }
            let value = if tag == 0 {
                None
            } else {
                let at = r.position();
                r.bytes(tag - 1).ok_or("value runs past the block")?;
                Some(data.slice(at..at + tag - 1))
            };
            if let Some((prev, _)) = entries.last() {
                if key.as_slice() <= prev.as_ref() {
                    return Err("keys out of order");
                }
            }
            entries.push((Bytes::copy_from_slice(&key), value));
        }
        if !r.is_empty() {
            return Err("trailing bytes in state block");
        }
        Ok(StateBlock {
            bytes: data.len() + entries.len() * 64,
            entries,
        })
    }

    /// Memory held, for cache accounting.
    pub fn footprint(&self) -> usize {
        self.bytes
    }

    /// Looks up `key`: `None` if absent, `Some(None)` if a tombstone.
    pub fn get(&self, key: &[u8]) -> Option<Option<Bytes>> {
        let i = self
            .entries
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()?;
        Some(self.entries[i].1.clone())
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> &[(Bytes, Option<Bytes>)] {
        &self.entries
    }

    /// Entries with keys at or after `from`.
    pub fn entries_from(&self, from: &[u8]) -> &[(Bytes, Option<Bytes>)] {
        let i = self.entries.partition_point(|(k, _)| k.as_ref() < from);
        &self.entries[i..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_tombstones_and_shared_prefixes() {
        let mut b = StateBlockBuilder::new();
        let entries: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (b"U\x00\x01a".to_vec(), Some(b"one".to_vec())),
            (b"U\x00\x01b".to_vec(), None),
            (b"U\x00\x02".to_vec(), Some(Vec::new())),
            (b"X".to_vec(), Some(vec![7; 300])),
        ];
        for (k, v) in &entries {
            assert!(b.add(k, v.as_deref()));
        }
        assert!(!b.add(b"A", None), "out of order key accepted");
        assert_eq!(b.len(), 4);
        let block = StateBlock::decode(Bytes::from(b.finish())).unwrap();
        for (k, v) in &entries {
            assert_eq!(block.get(k), Some(v.clone().map(Bytes::from)));
        }
        assert_eq!(block.get(b"U"), None);
        assert_eq!(block.entries_from(b"U\x00\x02").len(), 2);
        assert_eq!(block.entries_from(b"Z").len(), 0);
    }

    #[test]
    fn entries_over_the_limits_are_refused() {
        let mut b = StateBlockBuilder::new();
        assert!(!b.add(&[b'k'; MAX_KEY_LEN + 1], None));
        assert!(b.add(&[b'k'; MAX_KEY_LEN], None));
        assert_eq!(b.len(), 1);
        let key = [b'l'; MAX_KEY_LEN];
        let value = vec![b'v'; MAX_VALUE_LEN];
        let mut b = StateBlockBuilder::new();
        let over = [&value[..], &b"!"[..]].concat();
        assert!(!b.add(&key, Some(&over)));
        assert!(b.add(&key, Some(&value)));
        let body = b.finish();
        assert!(body.len() <= bound_with(0, &key, Some(&value)));
        assert!(body.len() <= MAX_BLOCK_LEN);
        let block = StateBlock::decode(Bytes::from(body)).unwrap();
        assert_eq!(block.get(&key), Some(Some(Bytes::from(value))));
    }

    #[test]
    fn truncated_bodies_are_errors() {
        let mut b = StateBlockBuilder::new();
        b.add(b"key-one", Some(b"value"));
        b.add(b"key-two", Some(b"value"));
        let body = b.finish();
        for cut in 0..body.len() {
            assert!(StateBlock::decode(Bytes::copy_from_slice(&body[..cut])).is_err());
        }
    }
}
