//! A segment's block and conversation indexes read a partition at a time.
//!
//! The conversation index holds 24 bytes per conversation and the block index 32 per block, so
//! a store of half a million conversations holds tens of megabytes of them across its
//! segments: kept whole in memory from a segment's first lookup to its deletion, they were the
//! largest thing the process held, and no budget could take them back. Instead a segment keeps
//! a small *partition table* (the first key and checksum of every run of
//! [`PARTITION_ENTRIES`] entries, ~0.1 byte per conversation), and a lookup reads the one
//! partition it needs through a cache the engine supplies (its block cache, under the memory
//! budget, evictable like any block), as RocksDB's partitioned index does. Nothing changes on
//! disk: a partition is a slice of the indexes as written, and its checksum is taken when the
//! whole index is first read and checked against `message_index_crc`, so a partition read
//! later is checked against a checksum that was itself verified.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::coding::{get_u32, get_u64};
use super::segment::{
    conv_entry, conv_key, last_block_not_after, search_sorted, BlockHandle, SegmentReader,
    BLOCK_ENTRY_LEN, BLOCK_SIZE_ENTRY_LEN, CONV_ENTRY_LEN,
};
use crate::error::{Error, Result};
use crate::types::ConversationId;

/// Entries per partition, in every index: 4 KiB of block index, 3 KiB of conversation index,
/// 512 bytes of block sizes.
pub const PARTITION_ENTRIES: usize = 128;

/// One partition of a segment's indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexPart {
    /// Partition `n` of the block index: block entries `n * 128 ..`.
    Blocks(u32),
    /// Partition `n` of the conversation index.
    Conversations(u32),
    /// Partition `n` of the block sizes (version 3 on): block `n * 128 ..`'s logical sizes.
    BlockSizes(u32),
}

/// Where a segment reader keeps the partitions it reads (the engine's block cache). `segment`
/// names the file (numbers are never reused); `load` reads and checks the partition.
pub trait IndexPartitionCache: Send + Sync + std::fmt::Debug {
    /// The partition, from the cache or else loaded (and kept).
    fn get_or_load(
        &self,
        segment: u64,
        part: IndexPart,
        load: &mut dyn FnMut() -> Result<Bytes>,
    ) -> Result<Bytes>;
}

/// A cache and the segment number it files this reader's partitions under.
#[derive(Clone, Debug)]
pub(crate) struct SharedPartitions {
    pub cache: Arc<dyn IndexPartitionCache>,
    pub segment: u64,
}

/// Grants segments the keeping of their indexes whole, up to a total: a lookup in a kept
/// index is a search in memory, where a partitioned one takes a cache lookup per index. A
/// store whose indexes fit the total (the engine gives an eighth of its memory budget) reads
/// as if nothing were partitioned; past it, the segments that asked first keep theirs, and
/// a grant is given back when its segment is dropped.
#[derive(Clone, Debug)]
pub struct IndexPins {
    held: Arc<AtomicU64>,
    limit: u64,
}

impl IndexPins {
    /// Grants up to `limit` bytes in all.
    pub fn new(limit: u64) -> Self {
        IndexPins {
            held: Arc::new(AtomicU64::new(0)),
            limit,
        }
    }

    /// Bytes granted now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// A grant of `bytes`, if the total stays within the limit.
    pub(crate) fn grant(&self, bytes: usize) -> Option<Pin> {
        let bytes = bytes as u64;
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()?;
        Some(Pin {
            held: Arc::clone(&self.held),
            bytes,
        })
    }
}

/// Bytes granted by [`IndexPins`], given back when dropped.
#[derive(Debug)]
pub struct Pin {
    held: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// What a segment keeps of its block and conversation indexes: each partition's first key
/// (to find the partition a lookup needs) and checksum (to check it when it is read).
#[derive(Debug, Default)]
pub(crate) struct PartitionTable {
    /// (conversation, id) of the first entry of each block index partition.
    block_firsts: Vec<(u64, u64)>,
    block_crcs: Vec<u32>,
    /// Conversation of the first entry of each conversation index partition.
    conv_firsts: Vec<u64>,
    conv_crcs: Vec<u32>,
    size_crcs: Vec<u32>,
}

impl PartitionTable {
    /// The table of a checked message index: `blocks` block entries, then `convs`
    /// conversation entries, then (`sizes`) a block size per block.
    pub fn of(index: &[u8], blocks: usize, convs: usize, sizes: bool) -> Self {
        let area = |part: IndexPart| -> &[u8] {
            let (start, len) = match part {
                IndexPart::Blocks(_) => (0, blocks.saturating_mul(BLOCK_ENTRY_LEN)),
                IndexPart::Conversations(_) => (
                    blocks.saturating_mul(BLOCK_ENTRY_LEN),
                    convs.saturating_mul(CONV_ENTRY_LEN),
                ),
                IndexPart::BlockSizes(_) if sizes => (
                    blocks
                        .saturating_mul(BLOCK_ENTRY_LEN)
                        .saturating_add(convs.saturating_mul(CONV_ENTRY_LEN)),
                    blocks.saturating_mul(BLOCK_SIZE_ENTRY_LEN),
                ),
                IndexPart::BlockSizes(_) => (0, 0),
            };
            index
                .get(start..start.saturating_add(len))
                .unwrap_or_default()
        };
        let mut table = PartitionTable::default();
        for part in area(IndexPart::Blocks(0)).chunks(PARTITION_ENTRIES * BLOCK_ENTRY_LEN) {
            table
                .block_firsts
                .push((get_u64(part, 0).unwrap_or(0), get_u64(part, 8).unwrap_or(0)));
            table.block_crcs.push(crc32fast::hash(part));
        }
        for part in area(IndexPart::Conversations(0)).chunks(PARTITION_ENTRIES * CONV_ENTRY_LEN) {
            table.conv_firsts.push(get_u64(part, 0).unwrap_or(0));
            table.conv_crcs.push(crc32fast::hash(part));
        }
        for part in area(IndexPart::BlockSizes(0)).chunks(PARTITION_ENTRIES * BLOCK_SIZE_ENTRY_LEN)
        {
            table.size_crcs.push(crc32fast::hash(part));
        }
        table.block_firsts.shrink_to_fit();
        table.block_crcs.shrink_to_fit();
        table.conv_firsts.shrink_to_fit();
        table.conv_crcs.shrink_to_fit();
        table.size_crcs.shrink_to_fit();
        table
    }

    /// Bytes it holds.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.block_firsts.capacity() * 16
            + self.block_crcs.capacity() * 4
            + self.conv_firsts.capacity() * 8
            + self.conv_crcs.capacity() * 4
            + self.size_crcs.capacity() * 4
    }

    /// The block index partition that holds the last block whose first key is not after
    /// `key`, if any block's is not.
    pub fn block_partition_of(&self, key: (u64, u64)) -> Option<usize> {
        self.block_firsts
            .partition_point(|&first| first <= key)
            .checked_sub(1)
    }

    /// The conversation index partition where `conv` would be, if it can be in any.
    pub fn conv_partition_of(&self, conv: u64) -> Option<usize> {
        self.conv_firsts
            .partition_point(|&first| first <= conv)
            .checked_sub(1)
    }

    /// [`conv_partition_of`](Self::conv_partition_of), answered without a search when it is
    /// `hint` (a merge looks conversations up in order, mostly in the partition it read last).
    pub fn conv_partition_near(&self, conv: u64, hint: usize) -> Option<usize> {
        let starts_by = self
            .conv_firsts
            .get(hint)
            .is_some_and(|&first| first <= conv);
        let next_after = self
            .conv_firsts
            .get(hint.saturating_add(1))
            .is_none_or(|&next| conv < next);
        if starts_by && next_after {
            return Some(hint);
        }
        self.conv_partition_of(conv)
    }

    /// The checksum partition `part` must have.
    pub fn crc(&self, part: IndexPart) -> Option<u32> {
        match part {
            IndexPart::Blocks(n) => self.block_crcs.get(n as usize).copied(),
            IndexPart::Conversations(n) => self.conv_crcs.get(n as usize).copied(),
            IndexPart::BlockSizes(n) => self.size_crcs.get(n as usize).copied(),
        }
    }
}

/// Where partition `part` lies in a message index of `blocks` block entries, `convs`
/// conversation entries and (`sizes`) a block size per block: (offset from the index's start,
/// length). `None` past the end.
pub(crate) fn partition_span(
    part: IndexPart,
    blocks: usize,
    convs: usize,
    sizes: bool,
) -> Option<(usize, usize)> {
    let conv_base = blocks.checked_mul(BLOCK_ENTRY_LEN)?;
    let (base, count, entry_len, n) = match part {
        IndexPart::Blocks(n) => (0, blocks, BLOCK_ENTRY_LEN, n),
        IndexPart::Conversations(n) => (conv_base, convs, CONV_ENTRY_LEN, n),
        IndexPart::BlockSizes(n) if sizes => (
            conv_base.checked_add(convs.checked_mul(CONV_ENTRY_LEN)?)?,
            blocks,
            BLOCK_SIZE_ENTRY_LEN,
            n,
        ),
        IndexPart::BlockSizes(_) => return None,
    };
    let first = (n as usize).checked_mul(PARTITION_ENTRIES)?;
    if first >= count {
        return None;
    }
    let entries = (count - first).min(PARTITION_ENTRIES);
    Some((
        base.checked_add(first.checked_mul(entry_len)?)?,
        entries.checked_mul(entry_len)?,
    ))
}

/// The first and last id of `conv` in a conversation index partition.
pub(crate) fn conv_range_in_partition(part: &[u8], conv: ConversationId) -> Option<(u64, u64)> {
    let entries = part.len() / CONV_ENTRY_LEN;
    let at = search_sorted(entries, conv.0, |i| conv_key(part, 0, i))?;
    let (_, first, last) = conv_entry(part, 0, at);
    Some((first, last))
}

/// The number of the last block whose first key is not after `key`, in block index partition
/// `p` (whose bytes are `part`), if one of its entries is not.
pub(crate) fn block_in_partition(part: &[u8], p: usize, key: (u64, u64)) -> Option<usize> {
    let within = last_block_not_after(part, part.len() / BLOCK_ENTRY_LEN, key)?;
    p.checked_mul(PARTITION_ENTRIES)?.checked_add(within)
}

/// One block index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// (conversation, id) of the block's first row.
    pub first: (u64, u64),
    /// Where the block is.
    pub handle: BlockHandle,
    /// Rows in the block.
    pub rows: u32,
}

impl BlockEntry {
    /// Entry `i` of a block index (or of a partition of one), if it is there.
    pub(crate) fn decode(index: &[u8], i: usize) -> Option<Self> {
        let at = i.checked_mul(BLOCK_ENTRY_LEN)?;
        Some(BlockEntry {
            first: (get_u64(index, at)?, get_u64(index, at.checked_add(8)?)?),
            handle: BlockHandle {
                offset: get_u64(index, at.checked_add(16)?)?,
                len: get_u32(index, at.checked_add(24)?)?,
            },
            rows: get_u32(index, at.checked_add(28)?)?,
        })
    }
}

/// Reads a segment's indexes for one pass in key order (a merge, a split), a partition at a
/// time and not through the block cache (a merge's inputs are about to be deleted: their
/// partitions would only push out what reads use), keeping the last partition of each index
/// it read. A merge walks every input's indexes in order, so it reads each partition about
/// once, and holds a few kilobytes per input instead of the inputs' whole indexes.
#[derive(Debug)]
pub struct IndexCursor<'a> {
    reader: &'a SegmentReader,
    blocks: Option<(u32, Bytes)>,
    convs: Option<(u32, Bytes)>,
    sizes: Option<(u32, Bytes)>,
    /// Where the last conversation lookup left off: the conversation asked for and the
    /// position of the first conversation entry after it.
    walk: Option<(u64, usize)>,
}

/// Conversation entries a lookup steps over before it searches instead. A merge asks for
/// every conversation any of its inputs holds, in order, so an input's next entry is nearly
/// always the one asked for or one after it: no step at all.
const WALK_STEPS: usize = 4;

impl<'a> IndexCursor<'a> {
    pub(crate) fn new(reader: &'a SegmentReader) -> Self {
        IndexCursor {
            reader,
            blocks: None,
            convs: None,
            sizes: None,
            walk: None,
        }
    }

    /// Partition `part`, the one kept if it is that one.
    fn part(&mut self, part: IndexPart) -> Result<&Bytes> {
        let (slot, n) = match part {
            IndexPart::Blocks(n) => (&mut self.blocks, n),
            IndexPart::Conversations(n) => (&mut self.convs, n),
            IndexPart::BlockSizes(n) => (&mut self.sizes, n),
        };
        if slot.as_ref().is_none_or(|(kept, _)| *kept != n) {
            *slot = Some((n, self.reader.read_partition(part)?));
        }
        match slot {
            Some((_, bytes)) => Ok(bytes),
            None => Err(Error::Internal("index partition not kept".into())),
        }
    }

    fn out_of_range(&self, what: &str) -> Error {
        Error::corruption(self.reader.path(), 0, format!("{what} out of range"))
    }

    /// Block `i`'s index entry.
    pub fn block(&mut self, i: usize) -> Result<BlockEntry> {
        if i >= self.reader.block_count() {
            return Err(self.out_of_range("block number"));
        }
        let part = self.part(IndexPart::Blocks((i / PARTITION_ENTRIES) as u32))?;
        let entry = BlockEntry::decode(part, i % PARTITION_ENTRIES);
        entry.ok_or_else(|| self.out_of_range("block number"))
    }

    /// The (conversation, id) of block `i`'s first row.
    pub fn block_first_key(&mut self, i: usize) -> Result<(ConversationId, u64)> {
        let (conv, id) = self.block(i)?.first;
        Ok((ConversationId(conv), id))
    }

    /// Block `i`'s logical size, if the segment records it (version 3 on).
    pub fn block_logical_bytes(&mut self, i: usize) -> Result<Option<u32>> {
        if self.reader.version() < 3 {
            return Ok(None);
        }
        if i >= self.reader.block_count() {
            return Err(self.out_of_range("block number"));
        }
        let part = self.part(IndexPart::BlockSizes((i / PARTITION_ENTRIES) as u32))?;
        Ok(get_u32(
            part,
            (i % PARTITION_ENTRIES) * BLOCK_SIZE_ENTRY_LEN,
        ))
    }

    /// The i-th conversation index entry: (conversation, first id, last id), from the kept
    /// indexes if the segment keeps them whole, else from its partition.
    pub fn conversation_entry(&mut self, i: usize) -> Result<(ConversationId, u64, u64)> {
        if i >= self.reader.conversation_count() {
            return Err(self.out_of_range("conversation entry"));
        }
        if let Some(view) = self.reader.kept_indexes() {
            return Ok(view.conversation_entry(i));
        }
        let part = self.part(IndexPart::Conversations((i / PARTITION_ENTRIES) as u32))?;
        Ok(conv_entry(part, 0, i % PARTITION_ENTRIES))
    }

    /// The first and last id of `conv` in the segment. Asked in conversation order (as a merge
    /// asks), each answer walks on from where the last one stopped: one entry read, in the
    /// partition already kept, instead of a search. Any order gives the right answer.
    pub fn conversation_range(&mut self, conv: ConversationId) -> Result<Option<(u64, u64)>> {
        if self
            .reader
            .conversation_bounds()
            .is_none_or(|(lo, hi)| conv < lo || conv > hi)
        {
            return Ok(None);
        }
        let count = self.reader.conversation_count();
        let mut at = match self.walk {
            Some((asked, next)) if asked < conv.0 => next,
            _ => self.conv_lower_bound(conv.0)?,
        };
        let (mut steps, mut searched) = (0, false);
        loop {
            if at >= count {
                self.walk = Some((conv.0, count));
                return Ok(None);
            }
            let (key, first, last) = self.conversation_entry(at)?;
            match key.0.cmp(&conv.0) {
                std::cmp::Ordering::Equal => {
                    self.walk = Some((conv.0, at.saturating_add(1)));
                    return Ok(Some((first, last)));
                }
                std::cmp::Ordering::Greater => {
                    self.walk = Some((conv.0, at));
                    return Ok(None);
                }
                std::cmp::Ordering::Less if steps < WALK_STEPS || searched => {
                    // (After a search only keys out of order get here: stepping on to the
                    // end is slow but ends.)
                    steps += 1;
                    at = at.saturating_add(1);
                }
                std::cmp::Ordering::Less => {
                    searched = true;
                    at = self.conv_lower_bound(conv.0)?.max(at.saturating_add(1));
                }
            }
        }
    }

    /// The position of the first conversation entry not below `conv` (the entry count if
    /// there is none).
    fn conv_lower_bound(&mut self, conv: u64) -> Result<usize> {
        let count = self.reader.conversation_count();
        let (mut lo, mut hi) = if self.reader.kept_indexes().is_some() {
            (0, count)
        } else {
            let kept = self.convs.as_ref().map_or(0, |(n, _)| *n as usize);
            let Some(p) = self
                .reader
                .partition_table()?
                .conv_partition_near(conv, kept)
            else {
                return Ok(0);
            };
            let start = p.saturating_mul(PARTITION_ENTRIES).min(count);
            (start, start.saturating_add(PARTITION_ENTRIES).min(count))
        };
        while lo < hi {
            let mid = lo.saturating_add(hi.saturating_sub(lo) / 2);
            if self.conversation_entry(mid)?.0 .0 < conv {
                lo = mid.saturating_add(1);
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// The last block whose first key is not after (conv, id).
    pub fn find_block(&mut self, conv: ConversationId, id: u64) -> Result<Option<usize>> {
        if let Some(view) = self.reader.kept_indexes() {
            return Ok(view.find_block(conv, id));
        }
        let key = (conv.0, id);
        let Some(p) = self.reader.partition_table()?.block_partition_of(key) else {
            return Ok(None);
        };
        let part = self.part(IndexPart::Blocks(p as u32))?;
        Ok(block_in_partition(part, p, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::coding::put_u64;

    /// A message index of `blocks` block entries (first keys (b, 1)) and `convs` conversation
    /// entries (conversations 10, 20, ...), with only the keys filled in.
    fn index(blocks: usize, convs: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..blocks as u64 {
            put_u64(&mut out, b);
            put_u64(&mut out, 1);
            out.extend_from_slice(&[0; BLOCK_ENTRY_LEN - 16]);
        }
        for c in 1..=convs as u64 {
            put_u64(&mut out, c * 10);
            out.extend_from_slice(&[0; CONV_ENTRY_LEN - 8]);
        }
        out
    }

    #[test]
    fn partitions_cover_the_indexes_and_are_found_by_first_key() {
        let (blocks, convs) = (300, 257);
        let idx = index(blocks, convs);
        let table = PartitionTable::of(&idx, blocks, convs, false);
        assert_eq!(table.block_firsts, vec![(0, 1), (128, 1), (256, 1)]);
        assert_eq!(table.conv_firsts, vec![10, 1290, 2570]);
        // Spans tile each index, the last partition short.
        assert_eq!(
            partition_span(IndexPart::Blocks(2), blocks, convs, false),
            Some((256 * 32, 44 * 32))
        );
        assert_eq!(
            partition_span(IndexPart::Blocks(3), blocks, convs, false),
            None
        );
        let conv_base = blocks * BLOCK_ENTRY_LEN;
        assert_eq!(
            partition_span(IndexPart::Conversations(2), blocks, convs, false),
            Some((conv_base + 256 * 24, 24))
        );
        for n in 0..3u32 {
            let (at, len) =
                partition_span(IndexPart::Conversations(n), blocks, convs, false).unwrap();
            assert_eq!(
                table.crc(IndexPart::Conversations(n)),
                Some(crc32fast::hash(&idx[at..at + len]))
            );
        }
        assert_eq!(table.block_partition_of((0, 0)), None);
        assert_eq!(table.block_partition_of((127, 5)), Some(0));
        assert_eq!(table.block_partition_of((128, 1)), Some(1));
        assert_eq!(table.block_partition_of((u64::MAX, 0)), Some(2));
        assert_eq!(table.conv_partition_of(5), None);
        assert_eq!(table.conv_partition_of(1289), Some(0));
        assert_eq!(table.conv_partition_of(1290), Some(1));
        assert!(table.footprint() < 256, "{}", table.footprint());
    }

    #[test]
    fn pins_are_granted_up_to_the_limit_and_given_back_when_dropped() {
        let pins = IndexPins::new(1000);
        let a = pins.grant(600).unwrap();
        assert!(pins.grant(401).is_none(), "over the limit");
        let b = pins.grant(400).unwrap();
        assert_eq!(pins.held(), 1000);
        drop(a);
        assert_eq!(pins.held(), 400);
        assert!(pins.grant(600).is_some_and(|c| c.bytes == 600));
        drop(b);
        assert_eq!(pins.held(), 0, "the grant above was dropped at once");
        assert!(IndexPins::new(0).grant(1).is_none());
    }

    #[test]
    fn an_empty_index_has_no_partitions() {
        let table = PartitionTable::of(&[], 0, 0, true);
        assert_eq!(table.block_partition_of((1, 1)), None);
        assert_eq!(table.conv_partition_of(1), None);
        assert_eq!(partition_span(IndexPart::Blocks(0), 0, 0, true), None);
        assert_eq!(
            partition_span(IndexPart::Conversations(0), 0, 0, true),
            None
        );
    }
}
