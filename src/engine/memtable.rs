//! The in-memory table of recent messages.
//!
//! Ids only grow inside a conversation, so a memtable is a hash map from conversation to the
//! run of its newest messages: an append is a `Vec::push`, never a sorted insert. Sorting by
//! conversation happens once, when the frozen memtable is flushed. State entries (small
//! key-value records the layers above keep) live in a sorted map beside the runs.
//!
//! Rows are compact: fixed fields inline, content copied into large shared chunks, the rare
//! attachment/reply/mentions boxed aside. A row costs ~40 bytes plus its content instead of a
//! full `Message` (160 bytes) plus a heap allocation per content buffer, so a memtable holds
//! twice the messages in the same memory, and dropping a flushed one frees a few hundred
//! chunks rather than a hundred thousand buffers.

// The flush thread reads frozen memtables: no arithmetic that can overflow.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use crate::types::{ConversationId, Message, MessageId, MessageKind, MessageRef, UserId};

/// Size of a content chunk. Content never straddles chunks; a body over a quarter of a chunk
/// gets a chunk of its own, so at most a quarter of a chunk is left unused at its end.
const CHUNK_BYTES: usize = 256 << 10;
/// Bookkeeping bytes charged per message on top of its content: the row with the slack of its
/// growing `Vec`, and the chunk space left unused.
const PER_MESSAGE_OVERHEAD: usize = 3 * std::mem::size_of::<Row>() / 2 + 8;
/// Charged per conversation (hash map entry, run header).
const PER_RUN_OVERHEAD: usize = 64;
/// Charged for a message's boxed extras (attachment, reply, mentions) on top of their bytes.
const EXTRA_OVERHEAD: usize = 2 * std::mem::size_of::<Extra>();
/// Bookkeeping bytes charged per state entry (tree node share, two `Bytes`).
const STATE_OVERHEAD: usize = 96;

/// Where a row's content is: `chunks[chunk][offset..offset + len]`.
#[derive(Clone, Copy, Debug)]
struct Span {
    chunk: u32,
    offset: u32,
    len: u32,
}

/// The fields few messages have.
#[derive(Debug)]
struct Extra {
    attachment: Option<Bytes>,
    reply_to: Option<MessageId>,
    mentions: Vec<UserId>,
}

#[derive(Debug)]
struct Row {
    sender: UserId,
    timestamp_ms: u64,
    content: Span,
    kind: MessageKind,
    extra: Option<Box<Extra>>,
}

/// A conversation's messages here: ids `first_id..first_id + rows.len()`.
///
/// The first row is kept inline: under a Zipf load most conversations in a memtable get one
/// message, and a `Vec` would allocate room for four rows (160 bytes and a malloc) for it.
#[derive(Debug)]
struct Run {
    first_id: u64,
    rows: SmallVec<[Row; 1]>,
}

/// Content bytes, in chunks that never move once allocated.
#[derive(Debug, Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
    /// The chunk small bodies are appended to.
    open: Option<usize>,
}

impl Arena {
    fn push(&mut self, bytes: &[u8]) -> Span {
        let len = bytes.len() as u32;
        if bytes.len() > CHUNK_BYTES / 4 {
            // A big body gets a chunk of its own; the open chunk keeps filling.
            self.chunks.push(bytes.to_vec());
            let chunk = self.chunks.len().saturating_sub(1) as u32;
            return Span {
                chunk,
                offset: 0,
                len,
            };
        }
        let open = match self.open {
            Some(i)
                if self.chunks[i]
                    .capacity()
                    .saturating_sub(self.chunks[i].len())
                    >= bytes.len() =>
            {
                i
            }
            _ => {
                self.chunks.push(Vec::with_capacity(CHUNK_BYTES));
                let i = self.chunks.len().saturating_sub(1);
                self.open = Some(i);
                i
            }
        };
        let c = &mut self.chunks[open];
        let offset = c.len() as u32;
        c.extend_from_slice(bytes);
        Span {
            chunk: open as u32,
            offset,
            len,
        }
    }

    fn get(&self, s: Span) -> &[u8] {
        let start = s.offset as usize;
        self.chunks
            .get(s.chunk as usize)
            .and_then(|c| c.get(start..start.saturating_add(s.len as usize)))
            .unwrap_or_default()
    }
}

/// Size of a chunk state keys and values are copied into: below glibc's default mmap
/// threshold (128 KiB), so a chunk freed with its memtable never raises it.
const STATE_CHUNK_BYTES: usize = 32 << 10;

/// State keys and values, copied into chunks they share.
///
/// The caller's `Bytes` are each an allocation of their own (a key built for one write, a
/// value encoded for it), sometimes with spare capacity, or a slice keeping a whole log
/// record alive; held by the memtable they were hundreds of thousands of small allocations
/// living exactly as long as it (a chat model's setup writes millions of entries), freed
/// together at its flush between allocations that live on, which the allocator could then
/// seldom give back. Copied here, a memtable's entries hold a few chunks.
#[derive(Debug, Default)]
struct StateArena {
    chunk: BytesMut,
}

impl StateArena {
    /// `bytes`, copied into the open chunk (a large one into an allocation of its own).
    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.len() > STATE_CHUNK_BYTES / 4 {
            return Bytes::copy_from_slice(bytes);
        }
        if self.chunk.capacity().saturating_sub(self.chunk.len()) < bytes.len() {
            self.chunk = BytesMut::with_capacity(STATE_CHUNK_BYTES);
        }
        self.chunk.extend_from_slice(bytes);
        self.chunk.split().freeze()
    }
}

#[derive(Debug, Default)]
struct Inner {
    runs: FxHashMap<ConversationId, Run>,
    arena: Arena,
    state: BTreeMap<Bytes, Option<Bytes>>,
    state_arena: StateArena,
    bytes: usize,
    messages: usize,
}

impl Inner {
    fn row_ref<'a>(&'a self, conv: ConversationId, id: u64, row: &'a Row) -> MessageRef<'a> {
        let extra = row.extra.as_deref();
        MessageRef {
            conversation: conv,
            id: MessageId(id),
            sender: row.sender,
            timestamp_ms: row.timestamp_ms,
            kind: row.kind,
            content: self.arena.get(row.content),
            attachment: extra.and_then(|e| e.attachment.as_deref()),
            reply_to: extra.and_then(|e| e.reply_to),
            mentions: extra.map_or(&[], |e| e.mentions.as_slice()),
        }
    }

    fn message(&self, conv: ConversationId, id: u64, row: &Row) -> Message {
        let extra = row.extra.as_deref();
        Message {
            conversation: conv,
            id: MessageId(id),
            sender: row.sender,
            timestamp_ms: row.timestamp_ms,
            kind: row.kind,
            content: Bytes::copy_from_slice(self.arena.get(row.content)),
            attachment: extra.and_then(|e| e.attachment.clone()),
            reply_to: extra.and_then(|e| e.reply_to),
            mentions: extra.map_or_else(Vec::new, |e| e.mentions.clone()),
            edited_ms: None,
        }
    }
}

/// A memtable. Only the write leader inserts; readers share it through `Arc`.
#[derive(Debug)]
pub struct Memtable {
    inner: RwLock<Inner>,
    /// The first WAL file whose records this memtable holds; once it is flushed, every WAL
    /// file below the next memtable's `first_wal` is obsolete.
    first_wal: u64,
    /// The highest log sequence number of the commit records applied to it.
    max_lsn: AtomicU64,
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

/// One conversation's messages in a frozen memtable, for the flush.
pub struct RunRef<'a> {
    inner: &'a Inner,
    conversation: ConversationId,
    run: &'a Run,
}

impl<'a> RunRef<'a> {
    /// The conversation.
    pub fn conversation(&self) -> ConversationId {
        self.conversation
    }

    /// Its messages, oldest first.
    pub(crate) fn messages(&self) -> impl Iterator<Item = MessageRef<'a>> + 'a {
        let (inner, conv, first) = (self.inner, self.conversation, self.run.first_id);
        self.run
            .rows
            .iter()
            .enumerate()
            .map(move |(i, row)| inner.row_ref(conv, first.saturating_add(i as u64), row))
    }
}

impl Memtable {
    /// An empty memtable fed by WAL files numbered `first_wal` and up, counting its bytes in
    /// `held` while it lives.
    pub fn new(first_wal: u64, held: &Arc<AtomicU64>) -> Self {
        Memtable {
            inner: RwLock::new(Inner::default()),
            first_wal,
            max_lsn: AtomicU64::new(0),
            held: Arc::clone(held),
        }
    }

    /// See the field.
    pub fn first_wal(&self) -> u64 {
        self.first_wal
    }

    /// The highest log sequence number applied (0 if none).
    pub fn max_lsn(&self) -> u64 {
        self.max_lsn.load(Ordering::Acquire)
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
    /// lock, so a reader sees all of a commit or none of it. `lsn` is the highest log
    /// sequence number among the records applied.
    /// REQUIRES: each message's id is the next one of its conversation.
    pub fn apply<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a Message>,
        state: &[(Bytes, Option<Bytes>)],
        lsn: u64,
    ) {
        let mut guard = self.inner.write();
        self.max_lsn.fetch_max(lsn, Ordering::AcqRel);
        let inner = &mut *guard;
        let before = inner.bytes;
        for m in messages {
            let mut cost = PER_MESSAGE_OVERHEAD.saturating_add(m.content.len());
            let extra = if m.attachment.is_some() || m.reply_to.is_some() || !m.mentions.is_empty()
            {
                cost = cost
                    .saturating_add(EXTRA_OVERHEAD)
                    .saturating_add(m.attachment.as_ref().map_or(0, Bytes::len))
                    .saturating_add(m.mentions.len().saturating_mul(8));
                Some(Box::new(Extra {
                    attachment: m.attachment.clone(),
                    reply_to: m.reply_to,
                    mentions: m.mentions.clone(),
                }))
            } else {
                None
            };
            let row = Row {
                sender: m.sender,
                timestamp_ms: m.timestamp_ms,
                content: inner.arena.push(&m.content),
                kind: m.kind,
                extra,
            };
            let run = inner.runs.entry(m.conversation).or_insert_with(|| {
                cost = cost.saturating_add(PER_RUN_OVERHEAD);
                Run {
                    first_id: m.id.0,
                    rows: SmallVec::new(),
                }
            });
            run.rows.push(row);
            inner.bytes = inner.bytes.saturating_add(cost);
            inner.messages = inner.messages.saturating_add(1);
        }
        for (k, v) in state {
            let cost = STATE_OVERHEAD
                .saturating_add(k.len())
                .saturating_add(v.as_ref().map_or(0, Bytes::len));
            inner.bytes = inner.bytes.saturating_add(cost);
            let value = v.as_deref().map(|v| inner.state_arena.copy(v));
            // A key written again keeps its first copy; the new one's bytes stay unused in
            // their chunk (charged like any entry) rather than costing a second search.
            let key = inner.state_arena.copy(k);
            inner.state.insert(key, value);
        }
        self.held
            .fetch_add(inner.bytes.saturating_sub(before) as u64, Ordering::Relaxed);
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

    /// Calls `f` with every state entry in key order, stopping at its first error.
    ///
    /// Visits the entries in place rather than collecting them: a memtable can hold hundreds
    /// of thousands of them (a chat model's setup), and a transient vector that large, once
    /// freed, raises glibc's mmap and trim thresholds for the rest of the process, which then
    /// keeps up to twice its size of freed heap resident in every arena.
    pub fn try_for_each_state<E>(
        &self,
        mut f: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        let inner = self.inner.read();
        for (key, value) in &inner.state {
            f(key, value.as_deref())?;
        }
        Ok(())
    }

    /// The first and last id of `conv` held here.
    pub fn range(&self, conv: ConversationId) -> Option<(u64, u64)> {
        let inner = self.inner.read();
        let run = inner.runs.get(&conv)?;
        let len = run.rows.len() as u64;
        (len > 0).then(|| {
            (
                run.first_id,
                run.first_id.saturating_add(len.saturating_sub(1)),
            )
        })
    }

    /// Appends the messages of `conv` with ids in `lo..=hi` to `out`, oldest first.
    pub fn collect(&self, conv: ConversationId, lo: u64, hi: u64, out: &mut Vec<Message>) {
        let inner = self.inner.read();
        let Some(run) = inner.runs.get(&conv) else {
            return;
        };
        let first = run.first_id;
        if run.rows.is_empty() || hi < first || lo > hi {
            return;
        }
        let from = lo.saturating_sub(first) as usize;
        let to = (hi.saturating_sub(first) as usize).min(run.rows.len().saturating_sub(1));
        if let Some(rows) = run.rows.get(from..=to) {
            out.reserve(rows.len());
            for (i, row) in rows.iter().enumerate() {
                let id = first.saturating_add(from.saturating_add(i) as u64);
                out.push(inner.message(conv, id, row));
            }
        }
    }

    /// Calls `f` with every conversation's messages, sorted by conversation: the order a
    /// segment is written in. Holds the read lock meanwhile instead of copying the memtable
    /// (REQUIRES: frozen, so no writer waits on it).
    pub fn with_sorted_runs<R>(&self, f: impl FnOnce(&[RunRef<'_>]) -> R) -> R {
        let inner = self.inner.read();
        let mut runs: Vec<RunRef<'_>> = inner
            .runs
            .iter()
            .map(|(c, run)| RunRef {
                inner: &inner,
                conversation: *c,
                run,
            })
            .collect();
        runs.sort_unstable_by_key(|r| r.conversation);
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

    /// State entries are copied: the memtable keeps none of the caller's buffers alive (a key
    /// sliced from a whole log record would keep the record), and the last write of a key
    /// wins, a deletion included.
    #[test]
    fn state_entries_are_copied_out_of_the_callers_buffers() {
        let mt = Memtable::new(1, &Arc::default());
        let record = Bytes::from(vec![7u8; 1 << 20]);
        let within = |b: &Bytes| {
            let (p, r) = (b.as_ptr() as usize, record.as_ptr() as usize);
            p >= r && p < r + record.len()
        };
        let key = record.slice(10..30);
        let value = record.slice(100..200);
        mt.apply(&[], &[(key.clone(), Some(value.clone()))], 1);
        let big = Bytes::from(vec![9u8; 64 << 10]);
        mt.apply(&[], &[(Bytes::from_static(b"big"), Some(big.clone()))], 2);

        let got = mt.state_get(&key).flatten().expect("the value");
        assert_eq!(got, value);
        assert!(
            !within(&got),
            "the value still points into the caller's record"
        );
        let scanned = mt.state_scan(b"", b"", 10);
        let (k, _) = scanned.iter().find(|(k, _)| *k == key).expect("the key");
        assert!(!within(k), "the key still points into the caller's record");
        assert_eq!(mt.state_get(b"big"), Some(Some(big)));

        mt.apply(&[], &[(key.clone(), Some(Bytes::from_static(b"v2")))], 3);
        assert_eq!(mt.state_get(&key), Some(Some(Bytes::from_static(b"v2"))));
        mt.apply(&[], &[(key.clone(), None)], 4);
        assert_eq!(mt.state_get(&key), Some(None));
        let mut keys = Vec::new();
        mt.try_for_each_state(|k, _| -> Result<(), ()> {
            keys.push(k.to_vec());
            Ok(())
        })
        .expect("no error");
        assert_eq!(keys, vec![key.to_vec(), b"big".to_vec()]);
    }

    /// Ids at the top of the range (a damaged segment can claim any last id) are read back
    /// as they are, by readers and by the flush thread, without an overflow.
    #[test]
    fn ids_at_the_end_of_the_range_read_back_without_overflow() {
        let mt = Memtable::new(1, &Arc::default());
        let msgs = vec![msg(1, u64::MAX - 1), msg(1, u64::MAX)];
        mt.apply(&msgs, &[], 1);
        assert_eq!(mt.range(ConversationId(1)), Some((u64::MAX - 1, u64::MAX)));
        let mut out = Vec::new();
        mt.collect(ConversationId(1), 0, u64::MAX, &mut out);
        assert_eq!(
            out.iter().map(|m| m.id.0).collect::<Vec<_>>(),
            vec![u64::MAX - 1, u64::MAX]
        );
        mt.with_sorted_runs(|runs| {
            let ids: Vec<u64> = runs[0].messages().map(|m| m.id.0).collect();
            assert_eq!(ids, vec![u64::MAX - 1, u64::MAX]);
        });
    }

    #[test]
    fn ranges_and_collect() {
        let mt = Memtable::new(3, &Arc::default());
        let msgs: Vec<Message> = (5..=9).map(|i| msg(1, i)).chain([msg(2, 1)]).collect();
        mt.apply(&msgs, &[], 1);
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
            assert_eq!(runs[0].conversation(), ConversationId(1));
            let ids: Vec<u64> = runs[0].messages().map(|m| m.id.0).collect();
            assert_eq!(ids, vec![5, 6, 7, 8, 9]);
            assert!(runs[0].messages().all(|m| m.content == b"hi"));
        });
    }

    #[test]
    fn big_and_small_bodies_keep_their_bytes_across_chunks() {
        let mt = Memtable::new(1, &Arc::default());
        let body = |i: u64| {
            let len = match i % 5 {
                0 => CHUNK_BYTES / 4 + 1 + i as usize,
                1 => CHUNK_BYTES / 3,
                _ => 100 + (i as usize * 37) % 900,
            };
            (0..len)
                .map(|j| (i as usize * 31 + j) as u8)
                .collect::<Vec<u8>>()
        };
        let msgs: Vec<Message> = (1..=200u64)
            .map(|i| {
                let mut m = msg(1 + i % 3, i.div_ceil(3));
                m.content = Bytes::from(body(i));
                m
            })
            .collect();
        // Ids per conversation must be gapless: conversation c gets 1, 2, 3, ...
        let mut next = [0u64; 4];
        let msgs: Vec<Message> = msgs
            .into_iter()
            .map(|mut m| {
                let c = m.conversation.0 as usize;
                next[c] += 1;
                m.id = MessageId(next[c]);
                m
            })
            .collect();
        mt.apply(&msgs, &[], 1);
        for conv in 1..=3u64 {
            let mut out = Vec::new();
            mt.collect(ConversationId(conv), 1, u64::MAX, &mut out);
            let want: Vec<&Message> = msgs.iter().filter(|m| m.conversation.0 == conv).collect();
            assert_eq!(out.len(), want.len());
            for (got, want) in out.iter().zip(want) {
                assert_eq!(got, want);
            }
        }
        assert!(mt.bytes() >= msgs.iter().map(|m| m.content.len()).sum::<usize>());
    }
}
