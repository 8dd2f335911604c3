//! A version: one consistent set of memtables and segments that reads run against.
//!
//! The engine swaps in a new `Arc<Version>` whenever a memtable is frozen or flushed; a reader
//! clones the current one and is unaffected by later swaps. Within one version every message
//! lives in exactly one place, and for a given conversation the places hold consecutive id
//! ranges in age order: segments (oldest first), frozen memtables, the active memtable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::block_cache::{BlockCache, CachedBlock, Section};
use super::memtable::Memtable;
use crate::error::Result;
use crate::format::index_partitions::IndexPins;
use crate::format::segment::{IndexView, SegmentReader};
use crate::fs::FileSystem;
use crate::types::{ConversationId, Message};

/// Wires a segment reader to the engine: the index bytes it keeps are charged to the memory
/// budget, and the index partitions its lookups read are kept in the block cache.
pub fn attach_reader(reader: &mut SegmentReader, number: u64, shared: &ReaderShared) {
    reader.count_index_loads_in(Arc::clone(&shared.index_loads));
    reader.share_index_partitions(Arc::clone(&shared.cache) as Arc<_>, number);
    reader.pin_indexes_from(shared.pins.clone());
}

/// What every segment reader of a store shares.
#[derive(Debug)]
pub struct ReaderShared {
    /// Bytes of indexes read since the memory budget was last rebalanced.
    pub index_loads: Arc<AtomicU64>,
    /// Decoded blocks and index partitions.
    pub cache: Arc<BlockCache>,
    /// Grants keeping indexes whole, up to a share of the budget.
    pub pins: IndexPins,
}

/// The share of the memory budget that segments may keep their indexes whole in (see
/// `IndexPins`): a store of a few million messages keeps them all, one of half a million
/// conversations reads the rest a partition at a time through the block cache.
pub const PINNED_INDEX_DIVISOR: u64 = 8;

/// A live segment file. When it becomes obsolete the file is removed as soon as the last
/// version (and so the last reader) using it lets go.
#[derive(Debug)]
pub struct Segment {
    /// File number.
    pub number: u64,
    /// Compaction level (0 for flushed segments).
    pub level: u32,
    /// The open file.
    pub reader: SegmentReader,
    /// Smallest and largest conversation with messages here.
    pub conversations: Option<(ConversationId, ConversationId)>,
    /// Smallest and largest state key here.
    pub state_keys: Option<(Bytes, Bytes)>,
    /// Codec byte of the first message block (what the flush or compaction compressed with).
    pub first_codec: Option<u8>,
    /// Written by a compaction of this process: never *provisional* (in the flush's codec and
    /// due for a rewrite), whatever its first block's codec says (a block that does not
    /// compress is stored raw, which would otherwise look like a flush's output).
    pub compacted: bool,
    /// Written under writes for a merge to come, with its blocks of several conversations in
    /// a faster codec than the rest (see `picker::SharedBlocks`); from the segment header's hint.
    pub fast_shared_blocks: bool,
    /// Which conversations it may hold (see `ConversationFilter`), built from its
    /// conversation index when it is written or at the first lookup after an open.
    filter: OnceLock<ConversationFilter>,
    /// Whether it holds any watermark entry, once looked up (see `holds_watermarks`).
    watermarks: OnceLock<bool>,
    obsolete: AtomicBool,
    fs: Arc<dyn FileSystem>,
}

impl Segment {
    /// Wraps a segment just written. It gets its conversation filter now, built from its
    /// conversation index read once and dropped, so that lookups of conversations it does
    /// not hold (the writer's last-id lookups, a conversation's first message) pass it by
    /// without reading it. The indexes themselves are read at the first lookup that needs
    /// them (a read, a lookup the filter lets through, the compaction that takes it as
    /// input): a store whose compaction is behind holds dozens of level-0 segments, each
    /// indexing most conversations, and keeping all their indexes in memory from the flush
    /// on made them the largest part of the process.
    pub fn open(
        number: u64,
        level: u32,
        reader: SegmentReader,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Self> {
        let segment = Self::open_lazily(number, level, reader, fs)?;
        let filter = segment.reader.with_indexes(|index| {
            ConversationFilter::of_index(segment.reader.conversation_count(), index)
        })?;
        // Nobody else has the segment yet: the cell is empty.
        let _ = segment.filter.set(filter);
        Ok(segment)
    }

    /// Wraps an open segment whose indexes are read at the first lookup that needs them (a
    /// segment found when the store is opened: opening reads no index).
    pub fn open_lazily(
        number: u64,
        level: u32,
        reader: SegmentReader,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Self> {
        Ok(Segment {
            number,
            level,
            conversations: reader.conversation_bounds(),
            state_keys: reader.state_bounds()?,
            first_codec: reader.first_block_codec(),
            compacted: false,
            fast_shared_blocks: reader.fast_shared_blocks(),
            filter: OnceLock::new(),
            watermarks: OnceLock::new(),
            reader,
            obsolete: AtomicBool::new(false),
            fs,
        })
    }

    /// The conversation filter, built from the conversation index at the first call (for a
    /// segment found at open; one written since has it already), the index read for it
    /// alone unless it is loaded. `None` when the index cannot be read (then the lookup that
    /// follows reports the error).
    fn filter(&self) -> Option<&ConversationFilter> {
        if let Some(f) = self.filter.get() {
            return Some(f);
        }
        let n = self.reader.conversation_count();
        let built = self
            .reader
            .with_indexes(|index| ConversationFilter::of_index(n, index))
            .ok()?;
        Some(self.filter.get_or_init(|| built))
    }

    /// Whether `conv` lies within this segment's conversation range and passes its filter:
    /// `false` means the segment has no message of it.
    pub fn may_hold(&self, conv: ConversationId) -> bool {
        self.conversations
            .is_some_and(|(lo, hi)| lo <= conv && conv <= hi)
            && self.filter().is_none_or(|f| f.may_hold(conv))
    }

    /// Memory it keeps while open: its indexes and footer, and its conversation filter.
    pub fn resident_bytes(&self) -> u64 {
        let filter = self.filter.get().map_or(0, |f| f.bits.len() * 8);
        (self.reader.resident_bytes() as u64).saturating_add(filter as u64)
    }

    /// Marks the file for deletion once unused.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, Ordering::Release);
    }

    /// Appends the messages of `conv` with ids in `lo..=hi` to `out`, reading blocks through
    /// `cache`. Returns whether the segment held any of them (for read-amplification stats).
    pub fn collect(
        &self,
        cache: &BlockCache,
        conv: ConversationId,
        lo: u64,
        hi: u64,
        out: &mut Vec<Message>,
    ) -> Result<bool> {
        let Some((first, last)) = self.reader.conversation_range(conv)? else {
            return Ok(false);
        };
        let from = lo.max(first);
        let to = hi.min(last);
        if from > to {
            return Ok(false);
        }
        let Some(mut b) = self.reader.find_block(conv, from)? else {
            return Ok(false);
        };
        let want = (to - from + 1) as usize;
        let start = out.len();
        while out.len() - start < want && b < self.reader.block_count() {
            let cached = cache.get_or_load((self.number, Section::Messages, b as u32), || {
                self.reader.read_block(b).map(CachedBlock::Messages)
            })?;
            let CachedBlock::Messages(block) = &*cached else {
                break;
            };
            let before = out.len();
            let next = from + (before - start) as u64;
            block.collect(conv, next, to, out);
            if out.len() == before {
                break;
            }
            b += 1;
        }
        if out.len() - start != want {
            return Err(crate::Error::corruption(
                self.reader.path(),
                0,
                format!(
                    "conversation {conv} ids {from}..={to} are in the index but not all in the blocks"
                ),
            ));
        }
        Ok(true)
    }
}

/// A two-probe Bloom filter of the conversations a segment holds messages of, ~8 bits per
/// conversation (about 5 % false positives). Level-0 segments each span nearly every
/// conversation's id range, so their range says nothing: without it, finding a conversation's
/// last id for an append (a conversation the writer's cache does not hold) or the newest
/// messages for a read searched every level-0 segment's conversation index, and the writer
/// slowed down as level 0 grew. Deeper segments have one too: a conversation's first
/// message, whose range check passes one segment per level, would otherwise read (and keep
/// in memory) that segment's whole conversation index to learn it is not there.
#[derive(Debug)]
struct ConversationFilter {
    bits: Vec<u64>,
    /// `bits.len() * 64 - 1` (a power of two minus one).
    mask: u64,
}

impl ConversationFilter {
    /// A filter of `n` conversations.
    fn of(n: usize, convs: impl Iterator<Item = ConversationId>) -> Self {
        let words = n.saturating_mul(8).div_ceil(64).max(1).next_power_of_two();
        let mut f = ConversationFilter {
            bits: vec![0; words],
            mask: (words as u64).saturating_mul(64).saturating_sub(1),
        };
        for conv in convs {
            let (a, b) = f.probes(conv);
            for bit in [a, b] {
                if let Some(w) = f.bits.get_mut((bit >> 6) as usize) {
                    *w |= 1 << (bit & 63);
                }
            }
        }
        f
    }

    /// The filter of a segment's `n` conversations, from its conversation index.
    fn of_index(n: usize, index: IndexView<'_>) -> Self {
        Self::of(n, (0..n).map(|i| index.conversation_entry(i).0))
    }

    /// Two bit positions from one 64-bit mix (splitmix64's finalizer) of the id.
    fn probes(&self, conv: ConversationId) -> (u64, u64) {
        let mut z = conv.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z & self.mask, z.rotate_left(32) & self.mask)
    }

    fn may_hold(&self, conv: ConversationId) -> bool {
        let (a, b) = self.probes(conv);
        let set = |bit: u64| {
            self.bits
                .get((bit >> 6) as usize)
                .is_none_or(|w| w & (1 << (bit & 63)) != 0)
        };
        set(a) && set(b)
    }
}

impl Segment {
    fn state_block(&self, cache: &BlockCache, i: usize) -> Result<Arc<CachedBlock>> {
        cache.get_or_load((self.number, Section::State, i as u32), || {
            self.reader.read_state_block(i).map(CachedBlock::State)
        })
    }

    /// Whether this segment holds any watermark entry. Only compaction writes them, so most
    /// segments (every flushed one) hold none; found once, then remembered, so that reads
    /// probe only the segments that may hold a conversation's watermark.
    fn holds_watermarks(&self, cache: &BlockCache) -> Result<bool> {
        if let Some(&held) = self.watermarks.get() {
            return Ok(held);
        }
        let prefix = super::overrides::watermark_prefix();
        let mut held = false;
        let in_range = self.state_keys.as_ref().is_some_and(|(lo, hi)| {
            hi.as_ref() >= prefix.as_slice()
                && (lo.as_ref() <= prefix.as_slice() || lo.starts_with(&prefix))
        });
        if in_range {
            // The first key at or after the prefix tells.
            let mut i = self.reader.find_state_block(&prefix).unwrap_or(0);
            while i < self.reader.state_block_count() {
                let cached = self.state_block(cache, i)?;
                let CachedBlock::State(b) = &*cached else {
                    break;
                };
                if let Some((k, _)) = b.entries_from(&prefix).first() {
                    held = k.starts_with(&prefix);
                    break;
                }
                i += 1;
            }
        }
        let _ = self.watermarks.set(held);
        Ok(held)
    }

    /// The state entry for `key` in this segment (`Some(None)` for a tombstone).
    pub fn state_get(&self, cache: &BlockCache, key: &[u8]) -> Result<Option<Option<Bytes>>> {
        match &self.state_keys {
            Some((lo, hi)) if lo.as_ref() <= key && key <= hi.as_ref() => {}
            _ => return Ok(None),
        }
        let Some(i) = self.reader.find_state_block(key) else {
            return Ok(None);
        };
        match &*self.state_block(cache, i)? {
            CachedBlock::State(b) => Ok(b.get(key)),
            CachedBlock::Messages(_) | CachedBlock::IndexPartition(_) => Ok(None),
        }
    }

    /// State entries with keys in `from..` that start with `prefix`, in order.
    pub fn state_scan(
        &self,
        cache: &BlockCache,
        prefix: &[u8],
        from: &[u8],
        out: &mut Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<()> {
        // Skip segments whose key range cannot hold a key in `from..` with `prefix`.
        match &self.state_keys {
            Some((lo, hi)) => {
                if hi.as_ref() < from || (lo.as_ref() > prefix && !lo.starts_with(prefix)) {
                    return Ok(());
                }
            }
            None => return Ok(()),
        }
        let mut i = self.reader.find_state_block(from).unwrap_or(0);
        while i < self.reader.state_block_count() {
            let cached = self.state_block(cache, i)?;
            let CachedBlock::State(b) = &*cached else {
                return Ok(());
            };
            for (k, v) in b.entries_from(from) {
                if !k.starts_with(prefix) {
                    if k.as_ref() > prefix {
                        return Ok(());
                    }
                    continue;
                }
                out.push((k.clone(), v.clone()));
            }
            i += 1;
        }
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::Acquire) {
            // Best effort: a file left behind is collected at the next open.
            let _ = self.fs.remove(self.reader.path());
        }
    }
}

/// One consistent view of the store's data.
#[derive(Debug, Clone)]
pub struct Version {
    /// The memtable writes go to.
    pub active: Arc<Memtable>,
    /// Frozen memtables waiting for flush, oldest first.
    pub frozen: Vec<Arc<Memtable>>,
    /// Live segments, oldest data first: deepest level first, level 0 last in flush order.
    /// Compaction keeps every key's newer data in a lower level, so this is age order.
    pub segments: Vec<Arc<Segment>>,
}

/// Sorts segments into the age order [`Version::segments`] documents.
pub fn sort_by_age(segments: &mut [Arc<Segment>]) {
    segments.sort_by_key(|s| (std::cmp::Reverse(s.level), s.number));
}

impl Version {
    /// The last message id of `conv` (0 if it has none). Looks newest-first and stops at the
    /// first place that holds the conversation, since newer places hold higher ids.
    pub fn last_id(&self, conv: ConversationId) -> Result<u64> {
        if let Some((_, last)) = self.active.range(conv) {
            return Ok(last);
        }
        for m in self.frozen.iter().rev() {
            if let Some((_, last)) = m.range(conv) {
                return Ok(last);
            }
        }
        for s in self.segments.iter().rev() {
            if !s.may_hold(conv) {
                continue;
            }
            if let Some((_, last)) = s.reader.conversation_range(conv)? {
                return Ok(last);
            }
        }
        Ok(0)
    }

    /// Whether any source holds engine-reserved state (edits, deletes, retention), so reads
    /// can skip looking for them in the common case of a store that has none.
    pub fn has_reserved_state(&self) -> bool {
        let bound = [super::overrides::RESERVED + 1];
        self.active.has_key_below(&bound)
            || self.frozen.iter().any(|m| m.has_key_below(&bound))
            || self.segments.iter().any(|s| {
                s.state_keys
                    .as_ref()
                    .is_some_and(|(lo, _)| lo.as_ref() < bound.as_slice())
            })
    }

    /// The same store without its memtables: what is on disk in segments. In buffered
    /// durability the memtables may hold writes a power cut would still take back.
    pub fn segments_only(&self, held: &Arc<AtomicU64>) -> Version {
        Version {
            active: Arc::new(Memtable::new(self.active.first_wal(), held)),
            frozen: Vec::new(),
            segments: self.segments.clone(),
        }
    }

    /// The conversation's watermark: every id below it was dropped by compaction and is gone
    /// (1 if none was). Compactions write it into their own output level, so an older source
    /// may hold a higher value than a newer one: the highest of all sources counts.
    pub fn watermark(&self, cache: &BlockCache, conv: ConversationId) -> Result<u64> {
        let key = super::overrides::watermark_key(conv);
        let mut values = Vec::new();
        for m in self.frozen.iter().chain(std::iter::once(&self.active)) {
            values.extend(m.state_get(&key).flatten());
        }
        for s in &self.segments {
            if s.holds_watermarks(cache)? {
                values.extend(s.state_get(cache, &key)?.flatten());
            }
        }
        let mut floor = 1;
        for v in values {
            let id = super::overrides::decode_watermark(&v)
                .ok_or_else(|| crate::Error::corruption("<state>", 0, "malformed watermark"))?;
            floor = floor.max(id);
        }
        Ok(floor)
    }

    /// The value of state `key`, newest source first (`None` if absent or deleted).
    pub fn state_get(&self, cache: &BlockCache, key: &[u8]) -> Result<Option<Bytes>> {
        if let Some(v) = self.active.state_get(key) {
            return Ok(v);
        }
        for m in self.frozen.iter().rev() {
            if let Some(v) = m.state_get(key) {
                return Ok(v);
            }
        }
        for s in self.segments.iter().rev() {
            if let Some(v) = s.state_get(cache, key)? {
                return Ok(v);
            }
        }
        Ok(None)
    }

    /// Up to `limit` live state entries with keys in `from..` starting with `prefix`, merged
    /// across every source (the newest source's entry wins; deleted keys are left out).
    pub fn state_scan(
        &self,
        cache: &BlockCache,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let from = from.max(prefix);
        // Oldest first, so inserting into the map lets newer sources overwrite older ones.
        let mut merged: std::collections::BTreeMap<Bytes, Option<Bytes>> = Default::default();
        let mut buf = Vec::new();
        for s in &self.segments {
            buf.clear();
            s.state_scan(cache, prefix, from, &mut buf)?;
            merged.extend(buf.drain(..));
        }
        for m in self.frozen.iter().chain(std::iter::once(&self.active)) {
            merged.extend(m.state_scan(prefix, from, usize::MAX));
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    /// Appends the messages of `conv` with ids in `lo..=hi` to `out`, oldest first.
    /// Returns how many segments were read.
    pub fn collect(
        &self,
        cache: &BlockCache,
        conv: ConversationId,
        lo: u64,
        hi: u64,
        out: &mut Vec<Message>,
    ) -> Result<u64> {
        let mut touched = 0;
        if lo > hi {
            return Ok(0);
        }
        // Segments hold the oldest ids; skip the search entirely when the memtables already
        // start at or below `lo`.
        let mem_first = self
            .frozen
            .iter()
            .chain(std::iter::once(&self.active))
            .filter_map(|m| m.range(conv).map(|r| r.0))
            .min();
        if mem_first.is_none_or(|f| f > lo) {
            // Walk newest-first to find the segments that overlap, stopping at the first one
            // that reaches down to `lo`: older segments hold only older ids.
            let mut overlapping: Vec<&Arc<Segment>> = Vec::new();
            for s in self.segments.iter().rev() {
                if !s.may_hold(conv) {
                    continue;
                }
                let Some((first, last)) = s.reader.conversation_range(conv)? else {
                    continue;
                };
                if first <= hi && last >= lo {
                    overlapping.push(s);
                }
                if first <= lo {
                    break;
                }
            }
            for s in overlapping.into_iter().rev() {
                if s.collect(cache, conv, lo, hi, out)? {
                    touched += 1;
                }
            }
        }
        for m in &self.frozen {
            m.collect(conv, lo, hi, out);
        }
        self.active.collect(conv, lo, hi, out);
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conversation_filter_keeps_every_member_and_few_others() {
        let members: Vec<ConversationId> = (0..80_000u64).map(|i| ConversationId(i * 3)).collect();
        let f = ConversationFilter::of(members.len(), members.iter().copied());
        assert!(members.iter().all(|&c| f.may_hold(c)), "no false negatives");
        let others = (0..80_000u64).map(|i| ConversationId(i * 3 + 1));
        let false_positives = others.filter(|&c| f.may_hold(c)).count();
        assert!(
            false_positives < 80_000 / 10,
            "{false_positives} false positives"
        );
        let empty = ConversationFilter::of(0, std::iter::empty());
        assert!(!empty.may_hold(ConversationId(7)));
    }
}
