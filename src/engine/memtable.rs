//! The in-memory table of recent messages.
//!
//! Ids only grow inside a conversation, so a memtable is a hash map from conversation to the
//! run of its newest messages: an append is a `Vec::push`, never a sorted insert. Sorting by
//! conversation happens once, when the frozen memtable is flushed. State entries (small
//! key-value records the layers above keep) live in a sorted map beside the runs.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::types::{ConversationId, Message};

/// Bookkeeping bytes charged per message on top of its content (struct, hash map share).
/// Counted generously: the struct, its share of the run's `Vec` (which grows by doubling), and
/// the allocator's overhead on the content buffer, so `memtable_bytes` bounds real memory.
const PER_MESSAGE_OVERHEAD: usize = 2 * std::mem::size_of::<Message>() + 32;
/// Bookkeeping bytes charged per state entry (tree node share, two `Bytes`).
const STATE_OVERHEAD: usize = 96;

#[derive(Debug, Default)]
struct Inner {
    runs: FxHashMap<ConversationId, Vec<Message>>,
    state: BTreeMap<Bytes, Option<Bytes>>,
    bytes: usize,
    messages: usize,
}

/// A memtable. Only the write leader inserts; readers share it through `Arc`.
#[derive(Debug)]
pub struct Memtable {
    inner: RwLock<Inner>,
    /// The first WAL file whose records this memtable holds; once it is flushed, every WAL
    /// file below the next memtable's `first_wal` is obsolete.
    first_wal: u64,
    /// Bytes held by every live memtable of the engine, this one included until it drops: a
    /// flushed memtable lives on while a reader still holds a version that lists it.
    held: Arc<AtomicU64>,
}

impl Drop for Memtable {
    fn drop(&mut self) {
        let bytes = self.inner.get_mut().bytes as u64;
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Memtable {
    /// An empty memtable fed by WAL files numbered `first_wal` and up, counting its bytes in
    /// `held` while it lives.
    pub fn new(first_wal: u64, held: &Arc<AtomicU64>) -> Self {
        Memtable {
            inner: RwLock::new(Inner::default()),
            first_wal,
            held: Arc::clone(held),
        }
    }

    /// See the field.
    pub fn first_wal(&self) -> u64 {
        self.first_wal
    }

    /// Approximate memory held.
    pub fn bytes(&self) -> usize {
        self.inner.read().bytes
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.inner.read().messages
    }

    /// True if nothing (no message, no state) was inserted.
    pub fn is_empty(&self) -> bool {
        let inner = self.inner.read();
        inner.messages == 0 && inner.state.is_empty()
    }

    /// Inserts messages and sets state keys (`None` deletes; later entries win) under one
    /// lock, so a reader sees all of a commit or none of it.
    /// REQUIRES: each message's id is the next one of its conversation.
    pub fn apply<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a Message>,
        state: &[(Bytes, Option<Bytes>)],
    ) {
        let mut inner = self.inner.write();
        let before = inner.bytes;
        for m in messages {
            inner.bytes += PER_MESSAGE_OVERHEAD
                + m.content.len()
                + m.attachment.as_ref().map_or(0, |a| a.len())
                + m.mentions.len() * 8;
            inner.messages += 1;
            inner
                .runs
                .entry(m.conversation)
                .or_default()
                .push(m.clone());
        }
        for (k, v) in state {
            inner.bytes += STATE_OVERHEAD + k.len() + v.as_ref().map_or(0, Bytes::len);
            inner.state.insert(k.clone(), v.clone());
        }
        self.held
            .fetch_add((inner.bytes - before) as u64, Ordering::Relaxed);
    }

    /// The state entry for `key`: `None` if this memtable has none, `Some(None)` if deleted.
    pub fn state_get(&self, key: &[u8]) -> Option<Option<Bytes>> {
        self.inner.read().state.get(key).cloned()
    }

    /// Up to `limit` state entries with keys in `from..` that start with `prefix`, in order.
    pub fn state_scan(
        &self,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Vec<(Bytes, Option<Bytes>)> {
        let inner = self.inner.read();
        inner
            .state
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether any state key sorts below `bound`.
    pub fn has_key_below(&self, bound: &[u8]) -> bool {
        self.inner
            .read()
            .state
            .keys()
            .next()
            .is_some_and(|k| k.as_ref() < bound)
    }

    /// Every state entry, sorted by key.
    pub fn sorted_state(&self) -> Vec<(Bytes, Option<Bytes>)> {
        let inner = self.inner.read();
        inner
            .state
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The first and last id of `conv` held here.
    pub fn range(&self, conv: ConversationId) -> Option<(u64, u64)> {
        let inner = self.inner.read();
        let run = inner.runs.get(&conv)?;
        Some((run.first()?.id.0, run.last()?.id.0))
    }

    /// Appends the messages of `conv` with ids in `lo..=hi` to `out`, oldest first.
    pub fn collect(&self, conv: ConversationId, lo: u64, hi: u64, out: &mut Vec<Message>) {
        let inner = self.inner.read();
        let Some(run) = inner.runs.get(&conv) else {
            return;
        };
        let Some(first) = run.first().map(|m| m.id.0) else {
            return;
        };
        if hi < first || lo > hi {
            return;
        }
        let from = lo.saturating_sub(first) as usize;
        let to = ((hi - first) as usize).min(run.len().saturating_sub(1));
        if from <= to {
            out.extend_from_slice(&run[from..=to]);
        }
    }

    /// Calls `f` with every conversation's messages, sorted by conversation: the order a
    /// segment is written in. Holds the read lock meanwhile instead of copying the memtable
    /// (REQUIRES: frozen, so no writer waits on it).
    pub fn with_sorted_runs<R>(&self, f: impl FnOnce(&[(ConversationId, &[Message])]) -> R) -> R {
        let inner = self.inner.read();
        let mut runs: Vec<(ConversationId, &[Message])> =
            inner.runs.iter().map(|(c, v)| (*c, v.as_slice())).collect();
        runs.sort_unstable_by_key(|(c, _)| *c);
        f(&runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{MessageId, MessageKind, UserId};
    use bytes::Bytes;

    fn msg(conv: u64, id: u64) -> Message {
        Message {
            conversation: ConversationId(conv),
            id: MessageId(id),
            sender: UserId(1),
            timestamp_ms: id,
            kind: MessageKind::Normal,
            content: Bytes::from_static(b"hi"),
            attachment: None,
            reply_to: None,
            mentions: Vec::new(),
            edited_ms: None,
        }
    }

    #[test]
    fn ranges_and_collect() {
        let mt = Memtable::new(3, &Arc::default());
        let msgs: Vec<Message> = (5..=9).map(|i| msg(1, i)).chain([msg(2, 1)]).collect();
        mt.apply(&msgs, &[]);
        assert_eq!(mt.len(), 6);
        assert_eq!(mt.range(ConversationId(1)), Some((5, 9)));
        assert_eq!(mt.range(ConversationId(3)), None);
        let mut out = Vec::new();
        mt.collect(ConversationId(1), 7, 100, &mut out);
        assert_eq!(
            out.iter().map(|m| m.id.0).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        out.clear();
        mt.collect(ConversationId(1), 0, 5, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        mt.collect(ConversationId(1), 0, 4, &mut out);
        mt.collect(ConversationId(1), 10, 20, &mut out);
        assert!(out.is_empty());
        mt.with_sorted_runs(|runs| {
            assert_eq!(runs.len(), 2);
            assert_eq!(runs[0].0, ConversationId(1));
        });
    }
}
