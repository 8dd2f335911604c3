//! Running one compaction: merge the inputs' messages and state into new segments.
//!
//! Messages are merged by (conversation, id); inputs never hold the same id twice. State
//! entries are merged by key, the newest input's entry winning (for a watermark, the highest);
//! tombstones are dropped when nothing older lies below the output level. Edits, deletes and
//! retention apply as `ConversationRules` says. Outputs of level 1 and deeper hold one
//! section each and split at `target_segment_bytes` (message segments only between
//! conversations), so a level's segments stay disjoint.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::super::files;
use super::super::memory::{WorkingMemory, MERGE_THREAD_WORKING_BYTES};
use super::super::overrides::{self, Override};
use super::super::version::{attach_reader, Segment, Version};
use super::super::Engine;
use super::conversation_cursor::ConversationCursors;
use super::parts::{self, PartWork};
use super::picker::{fast_codec, SharedBlocks};
use super::read_window::ReadWindow;
use super::split::{self, KeyRange};
use crate::error::{Error, Result};
use crate::format::block::{self, Block};
use crate::format::index_partitions::IndexCursor;
use crate::format::segment::{SegmentReader, SegmentSummary, SegmentWriter};
use crate::options::Compression;
use crate::types::{ConversationId, Message};

/// The watermark entries a message merge raised, in conversation order, for the state merge.
type Watermarks = VecDeque<(Bytes, Option<Bytes>)>;

/// A finished output.
pub(crate) struct Output {
    pub segment: Arc<Segment>,
    pub summary: SegmentSummary,
}

/// Writes a sequence of output segments, starting a new one when asked.
struct OutputSet<'a> {
    engine: &'a Engine,
    level: u32,
    compression: Compression,
    /// The dictionary every output of this compaction is compressed against (taken once, so
    /// that a block copied from an input can be checked against it).
    dictionary: Option<Arc<Bytes>>,
    /// The file number of the (only) output, when the caller chose it.
    number: Option<u64>,
    /// The codec of blocks holding several conversations.
    shared_blocks: SharedBlocks,
    current: Option<(u64, PathBuf, SegmentWriter, WorkingMemory<'a>)>,
    done: Vec<(u64, PathBuf, SegmentSummary)>,
}

impl<'a> OutputSet<'a> {
    fn new(
        engine: &'a Engine,
        level: u32,
        number: Option<u64>,
        shared_blocks: SharedBlocks,
    ) -> Self {
        OutputSet {
            engine,
            level,
            compression: engine.opts.compression,
            dictionary: engine.dictionary.current(),
            number,
            shared_blocks,
            current: None,
            done: Vec::new(),
        }
    }

    /// Another set of outputs at the same level, with the same dictionary (one merge's parts
    /// must all be able to take blocks copied from the same inputs).
    fn sibling(&self) -> Self {
        OutputSet {
            engine: self.engine,
            level: self.level,
            compression: self.compression,
            dictionary: self.dictionary.clone(),
            number: None,
            shared_blocks: self.shared_blocks,
            current: None,
            done: Vec::new(),
        }
    }

    fn writer(&mut self) -> Result<&mut SegmentWriter> {
        if self.current.is_none() {
            let number = match self.number.take() {
                Some(n) => n,
                None => self.engine.versions.new_file_number(),
            };
            let path = files::segment_path(&self.engine.dir, number);
            let file = self
                .engine
                .fs
                .create(&path)
                .map_err(|e| Error::io(&path, e))?;
            let mut w = SegmentWriter::with_dictionary(
                file,
                self.compression,
                self.engine.opts.block_bytes,
                self.dictionary.as_deref().map(|d| d.as_ref()),
            );
            if self.shared_blocks != SharedBlocks::StoreCodec {
                w.store_shared_blocks_with(self.shared_codec());
            }
            let charge = self
                .engine
                .charge_working_memory(MERGE_THREAD_WORKING_BYTES);
            self.current = Some((number, path, w, charge));
        }
        match &mut self.current {
            Some((_, _, w, _)) => Ok(w),
            None => Err(Error::Poisoned("compaction output vanished".into())),
        }
    }

    /// Whether a segment whose dictionary is `dictionary` shares these outputs' dictionary.
    fn same_dictionary(&self, dictionary: Option<&Bytes>) -> bool {
        match (dictionary, self.dictionary.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
    }

    /// The codec of these outputs' blocks holding several conversations.
    fn shared_codec(&self) -> Compression {
        match self.shared_blocks {
            SharedBlocks::StoreCodec => self.compression,
            SharedBlocks::FlushCodec => self.engine.opts.flush_compression,
            SharedBlocks::Fast => fast_codec(self.compression),
        }
    }

    /// Whether a block stored with `codec`, holding several conversations (`shared`) or one,
    /// in a segment that shares these outputs' dictionary or not, can be copied unchanged into
    /// them: its codec is the one they would write it in.
    fn can_copy(&self, codec: Option<u8>, same_dictionary: bool, shared: bool) -> bool {
        let want = if shared {
            self.shared_codec()
        } else {
            self.compression
        };
        codec.is_some_and(|c| block::copyable(c, want, same_dictionary))
    }

    fn current_bytes(&self) -> u64 {
        self.current
            .as_ref()
            .map_or(0, |(_, _, w, _)| w.written_bytes())
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some((number, path, w, _charge)) = self.current.take() {
            let summary = w.finish().map_err(|e| Error::io(&path, e))?;
            self.done.push((number, path, summary));
        }
        Ok(())
    }

    fn open_all(mut self) -> Result<Vec<Output>> {
        self.finish_current()?;
        let mut out = Vec::with_capacity(self.done.len());
        for (number, path, summary) in self.done {
            let data = self
                .engine
                .fs
                .open_random_access(&path)
                .map_err(|e| Error::io(&path, e))?;
            let mut reader = SegmentReader::open(&path, data)?;
            attach_reader(&mut reader, number, &self.engine.readers);
            let mut segment =
                Segment::open(number, self.level, reader, Arc::clone(&self.engine.fs))?;
            segment.compacted = true;
            out.push(Output {
                segment: Arc::new(segment),
                summary,
            });
        }
        Ok(out)
    }

    /// Removes whatever was written (after a failure).
    fn abandon(self) {
        for (_, path, _) in &self.done {
            let _ = self.engine.fs.remove(path);
        }
        if let Some((_, path, _, _)) = &self.current {
            let _ = self.engine.fs.remove(path);
        }
    }
}

/// Reads one input's messages in order, a block at a time. Between blocks it knows the next
/// block's first key from the index, so the merge can take the next block whole (and copy it
/// if no other input interleaves with it) or row by row.
struct MessageCursor<'a> {
    reader: &'a SegmentReader,
    /// The input's block index, read a partition at a time as the cursor moves on.
    index: IndexCursor<'a>,
    next_block: usize,
    buf: VecDeque<Message>,
    /// The conversations this cursor hands out (one part of a merge cut in parts).
    range: KeyRange,
    /// The input's file read ahead.
    window: ReadWindow,
}

impl<'a> MessageCursor<'a> {
    /// A cursor at the first row of `reader` in `range`, one of `inputs` read side by side.
    fn open(reader: &'a SegmentReader, range: KeyRange, inputs: usize) -> Result<Self> {
        let mut index = reader.index_cursor();
        let mut start = 0;
        if let Some(lo) = range.lo {
            // The last block that starts below `lo` may hold rows of `lo` and above (ids
            // start at 1, so no block starts at (lo, 0)). Found through the partition table:
            // a search across the whole block index would read a partition per step.
            start = index.find_block(lo, 0)?.unwrap_or(0);
        }
        let straddles = match range.lo {
            Some(lo) if start < reader.block_count() => index.block_first_key(start)?.0 < lo,
            _ => false,
        };
        let mut cursor = MessageCursor {
            reader,
            index,
            next_block: start,
            buf: VecDeque::new(),
            range,
            window: ReadWindow::for_inputs(inputs),
        };
        if straddles {
            if let Some((_, block)) = cursor.next_block()? {
                cursor.buffer(&block);
            }
        }
        Ok(cursor)
    }

    /// The key of the next row: the next buffered row's, or the next block's first.
    fn head(&mut self) -> Result<Option<(ConversationId, u64)>> {
        match self.buf.front() {
            Some(m) => Ok(Some((m.conversation, m.id.0))),
            None if self.next_block < self.reader.block_count() => {
                let key = self.index.block_first_key(self.next_block)?;
                Ok(self.range.before_end(key.0).then_some(key))
            }
            None => Ok(None),
        }
    }

    /// Whether every row of `block` lies in this cursor's range.
    fn holds_whole(&self, block: &Block) -> bool {
        match (block.runs().first(), block.runs().last()) {
            (Some(first), Some(last)) => {
                self.range.contains(first.conversation) && self.range.contains(last.conversation)
            }
            _ => false,
        }
    }

    /// Reads the next block, as stored and decoded. REQUIRES: no row buffered.
    fn next_block(&mut self) -> Result<Option<(Bytes, Block)>> {
        if self.next_block >= self.reader.block_count() {
            return Ok(None);
        }
        let entry = self.index.block(self.next_block)?;
        let stored = self.window.block(self.reader, entry.handle)?;
        // Decoding checks the checksum.
        let block = self.reader.decode_block_at(entry, &stored)?;
        self.next_block = self.next_block.saturating_add(1);
        Ok(Some((stored, block)))
    }

    /// The next block, if no row is buffered and the input's indexes show that it holds rows
    /// of one conversation only, in range, and give its logical size (version 3): all that
    /// copying it needs, without decoding it. A block holds one conversation alone when the
    /// block after it starts with the same conversation at the id after its last row, or,
    /// for the conversation's last block in the input, when its rows end at the
    /// conversation's last id there (a segment holds each conversation's ids without a gap).
    /// Only a block of `merging` (the conversation being merged) is looked at: no other can
    /// be copied this way, and finding a last block's end takes a search.
    fn next_block_of_one_conversation(
        &mut self,
        merging: Option<ConversationId>,
    ) -> Result<Option<OneConversationBlock>> {
        let i = self.next_block;
        if !self.buf.is_empty() || i >= self.reader.block_count() {
            return Ok(None);
        }
        let entry = self.index.block(i)?;
        let (conversation, first_id) = (ConversationId(entry.first.0), entry.first.1);
        if merging != Some(conversation) {
            return Ok(None);
        }
        let rows = entry.rows;
        let Some(logical) = self.index.block_logical_bytes(i)? else {
            return Ok(None);
        };
        let Some(end) = first_id.checked_add(u64::from(rows)) else {
            return Ok(None);
        };
        let next = match i.checked_add(1) {
            Some(after) if after < self.reader.block_count() => {
                Some(self.index.block_first_key(after)?)
            }
            _ => None,
        };
        let alone = match next {
            Some(next) if next.0 == conversation => next.1 == end,
            _ => self
                .index
                .conversation_range(conversation)?
                .is_some_and(|(_, last)| last.checked_add(1) == Some(end)),
        };
        let whole = rows > 0 && alone && self.range.contains(conversation);
        Ok(whole.then_some(OneConversationBlock {
            conversation,
            first_id,
            rows,
            logical,
        }))
    }

    /// The next block as stored, its checksum checked, without decoding it or moving on.
    fn read_next_stored(&mut self) -> Result<Bytes> {
        let h = self.index.block(self.next_block)?.handle;
        let stored = self.window.block(self.reader, h)?;
        self.reader.check_stored_at(h, &stored)?;
        Ok(stored)
    }

    /// Decodes the next block from `stored` (as `read_next_stored` gave it) and moves on.
    fn decode_next(&mut self, stored: &Bytes) -> Result<Block> {
        let entry = self.index.block(self.next_block)?;
        let block = self.reader.decode_block_at(entry, stored)?;
        self.next_block = self.next_block.saturating_add(1);
        Ok(block)
    }

    /// Moves past the next block (copied without being decoded).
    fn skip_block(&mut self) {
        self.next_block = self.next_block.saturating_add(1);
    }

    /// Buffers `block`'s rows in range, to be merged one at a time.
    fn buffer(&mut self, block: &Block) {
        let mut v = Vec::new();
        block.collect_all(&mut v);
        let range = self.range;
        self.buf
            .extend(v.into_iter().filter(|m| range.contains(m.conversation)));
    }
}

/// The error for a copied block that does not follow what the output holds: the inputs are
/// damaged (ids with a gap, or out of order).
fn out_of_order(path: &Path, conv: ConversationId, id: u64) -> Error {
    Error::corruption(
        path,
        0,
        format!("compaction inputs are not gapless or out of order at conversation {conv} id {id}"),
    )
}

/// A block of one conversation, as its segment's indexes describe it.
#[derive(Clone, Copy, Debug)]
struct OneConversationBlock {
    conversation: ConversationId,
    first_id: u64,
    rows: u32,
    /// Its logical size (version 3's block sizes).
    logical: u32,
}

/// Reads one input's state entries in order, a block at a time; or, without a reader, hands
/// out entries given up front (the watermarks the merge of messages produced).
struct StateCursor<'a> {
    reader: Option<&'a SegmentReader>,
    next_block: usize,
    buf: VecDeque<(Bytes, Option<Bytes>)>,
}

impl StateCursor<'_> {
    fn next(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        if let Some(reader) = self.reader {
            while self.buf.is_empty() && self.next_block < reader.state_block_count() {
                let block = reader.read_state_block(self.next_block)?;
                self.next_block = self.next_block.saturating_add(1);
                self.buf.extend(block.entries().iter().cloned());
            }
        }
        Ok(self.buf.pop_front())
    }
}

/// Ids read at a time when checking whether the messages below a merge's first one expired.
const EXPIRY_PROBE_IDS: u64 = 1024;

/// What compaction does to one conversation's rows: strip edited and deleted content, drop
/// the ids below the conversation's watermark, and drop the expired messages just above it,
/// raising the watermark over them.
///
/// Only what is on disk in segments counts (`durable`): in buffered durability an edit or a
/// retention change still in a memtable may be lost to a power cut, and content it removed
/// from a segment would be lost with it. Retention drops a message only if it has expired
/// under both the policy on disk and the latest one (which may be in a memtable), so a
/// retention the user just removed or lengthened drops nothing.
///
/// The watermark only rises over messages from the current watermark on that all expired, so
/// whatever the policy says later (retention removed or lengthened, the clock set back, old
/// messages imported), the ids at and above it are all still there, gapless: no later merge
/// meets a hole. If every row of the conversation in this merge is below the new watermark,
/// the last one is kept as an empty stub (hidden, being below the watermark): newer rows may
/// still sit in the WAL, and the segments must keep knowing the conversation's last id, or
/// recovery and id assignment would restart it.
#[derive(Default)]
struct ConversationRules {
    overrides: Vec<(u64, Override)>,
    cutoff: Option<u64>,
    /// The watermark before this merge.
    floor_before: u64,
    /// The watermark as the merge goes: rows below it are dropped.
    floor: u64,
    /// Whether the rows from `floor` on have all expired so far (so the next one may be
    /// dropped too if it has).
    expired_prefix: bool,
    /// The last row dropped, kept if no row of the conversation is written.
    pending_stub: Option<Message>,
}

impl ConversationRules {
    /// The rules for `conv` in a merge of `inputs`, whose first row of `conv` is `head`.
    /// `durable` is the store's segments at the start of the compaction, `reserved` whether
    /// they hold any engine-reserved state (edits, deletes, retention, watermarks); the latest
    /// retention setting is read from the current version, only if the segments say rows may
    /// expire, and let go of at once: a version lists memtables, and holding one for a whole
    /// compaction would keep every memtable flushed meanwhile in memory.
    fn load(
        engine: &Engine,
        durable: &Version,
        reserved: bool,
        inputs: &mut ConversationCursors<'_>,
        head: &Message,
    ) -> Result<Self> {
        let conv = head.conversation;
        let mut overrides = Vec::new();
        if reserved {
            let prefix = overrides::edit_prefix(conv);
            for (k, v) in durable.state_scan(&engine.readers.cache, &prefix, &prefix, usize::MAX)? {
                let (Some(id), Some(o)) = (overrides::edit_key_id(&k), Override::decode(&v)) else {
                    return Err(Error::corruption("<state>", 0, "malformed edit record"));
                };
                overrides.push((id, o));
            }
        }
        let floor_before = if reserved {
            durable.watermark(&engine.readers.cache, conv)?
        } else {
            1
        };
        // A row is dropped only if it has expired under both settings: when the segments'
        // setting keeps everything (the common case) the latest one is not read at all.
        let cutoff = match engine.cutoff_in(durable, conv, reserved)? {
            Some(on_disk) => engine
                .retention_cutoff(&engine.current(), conv)?
                .map(|latest| on_disk.min(latest)),
            None => None,
        };

        // The inputs' id ranges at and above the watermark. Inputs hold a gapless band of the
        // conversation's ids, except where a version that kept no watermark dropped expired
        // rows: ids below such a hole are treated as below a watermark.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        inputs.ranges(conv, |first, last| {
            if last >= floor_before {
                ranges.push((first.max(floor_before), last));
            }
        })?;
        ranges.sort_unstable();
        let mut floor = floor_before;
        let mut end: Option<u64> = None;
        for &(first, last) in &ranges {
            if end.is_some_and(|e| first > e.saturating_add(1)) {
                floor = first;
            }
            end = Some(end.map_or(last, |e| e.max(last)));
        }
        let first = ranges
            .iter()
            .map(|&(first, _)| first)
            .filter(|&first| first >= floor)
            .min();

        // The expired prefix can grow from the watermark only if the ids between the
        // watermark and this merge's first row (in older segments) have all expired too. No
        // need to read them if that first row is live: the prefix would stop there anyway.
        let expired_prefix = match (cutoff, first) {
            (Some(cutoff), Some(first)) if first > floor => {
                let live_head = head.id.0 == first && head.timestamp_ms >= cutoff;
                !live_head && all_expired(engine, durable, conv, floor, first, cutoff)?
            }
            (Some(_), _) => true,
            (None, _) => false,
        };
        Ok(ConversationRules {
            overrides,
            cutoff,
            floor_before,
            floor,
            expired_prefix,
            pending_stub: None,
        })
    }

    /// The row to write in place of `m`, if any. `path`: the input it came from, named if
    /// its id is impossible.
    fn rewrite(&mut self, m: Message, path: &Path) -> Result<Option<Message>> {
        if m.id.0 < self.floor {
            self.pending_stub = Some(Override::Deleted { at_ms: 0 }.strip(&m));
            return Ok(None);
        }
        if self.expired_prefix {
            match self.cutoff {
                Some(c) if m.timestamp_ms < c => {
                    // No id follows the largest: a row carrying it is damage, not data.
                    self.floor = m.id.0.checked_add(1).ok_or_else(|| {
                        Error::corruption(
                            path,
                            0,
                            format!("conversation {} holds id {}", m.conversation, m.id),
                        )
                    })?;
                    self.pending_stub = Some(Override::Deleted { at_ms: 0 }.strip(&m));
                    return Ok(None);
                }
                _ => self.expired_prefix = false,
            }
        }
        // A row at or above the watermark follows: it carries the last id, no stub needed.
        self.pending_stub = None;
        Ok(
            match self.overrides.binary_search_by_key(&m.id.0, |(id, _)| *id) {
                Ok(i) => self.overrides.get(i).map(|(_, o)| o.strip(&m)),
                Err(_) => Some(m),
            },
        )
    }

    /// Whether the rows `first..=last` would all be written unchanged (so a block holding
    /// them can be copied as it is stored).
    fn keeps(&self, first: u64, last: u64) -> bool {
        let expiring = self.expired_prefix && self.cutoff.is_some();
        let at = self.overrides.partition_point(|&(id, _)| id < first);
        first >= self.floor && !expiring && self.overrides.get(at).is_none_or(|&(id, _)| id > last)
    }

    /// Records that rows at or above the watermark were written unchanged (a copied block),
    /// as [`rewrite`](Self::rewrite) would have.
    fn kept(&mut self) {
        self.pending_stub = None;
        self.expired_prefix = false;
    }

    /// Called after the conversation's last row: the stub to write, if no row was written.
    fn finish(&mut self) -> Option<Message> {
        self.pending_stub.take()
    }

    /// The watermark entry to write, if this merge raised it.
    fn watermark(&self, conv: ConversationId) -> Option<(Bytes, Option<Bytes>)> {
        (self.floor > self.floor_before).then(|| {
            (
                Bytes::from(overrides::watermark_key(conv)),
                Some(overrides::encode_watermark(self.floor)),
            )
        })
    }
}

/// Whether every message of `conv` in `from..to` that `v` holds has expired (a missing one was
/// dropped by a version that kept no watermark). Reads in steps and stops at the first live one.
fn all_expired(
    engine: &Engine,
    v: &Version,
    conv: ConversationId,
    from: u64,
    to: u64,
    cutoff: u64,
) -> Result<bool> {
    let mut lo = from;
    let mut rows = Vec::new();
    while lo < to {
        let hi = lo
            .saturating_add(EXPIRY_PROBE_IDS.saturating_sub(1))
            .min(to.saturating_sub(1));
        rows.clear();
        v.collect(&engine.readers.cache, conv, lo, hi, &mut rows)?;
        if rows.iter().any(|m| m.timestamp_ms >= cutoff) {
            return Ok(false);
        }
        lo = hi.saturating_add(1);
    }
    Ok(true)
}

/// Ends a conversation's rows: writes its stub if it needs one, and queues its watermark.
fn finish_conversation(
    out: &mut OutputSet<'_>,
    rules: &mut ConversationRules,
    conv: ConversationId,
    watermarks: &mut VecDeque<(Bytes, Option<Bytes>)>,
    path: &Path,
) -> Result<()> {
    if let Some(stub) = rules.finish() {
        write_row(out, &stub, path)?;
    }
    // Conversations come in order, and so do their watermark keys.
    watermarks.extend(rules.watermark(conv));
    Ok(())
}

/// A watermark's id (0 for a deleted entry, which no watermark ever is).
fn watermark_value(v: &Option<Bytes>) -> Result<u64> {
    match v {
        Some(v) => overrides::decode_watermark(v)
            .ok_or_else(|| Error::corruption("<state>", 0, "malformed watermark")),
        None => Ok(0),
    }
}

/// Writes the winning entry of a state key (unless it is a tombstone that may go).
fn write_state(
    engine: &Engine,
    out: &mut OutputSet<'_>,
    inputs: &[Arc<Segment>],
    (k, v, i): (Bytes, Option<Bytes>, usize),
    target: u64,
    drop_tombstones: bool,
) -> Result<()> {
    if v.is_none() && drop_tombstones {
        return Ok(());
    }
    if out.current_bytes() >= target {
        out.finish_current()?;
    }
    let path = inputs
        .get(i)
        .map_or(engine.dir.as_path(), |s| s.reader.path());
    if !out
        .writer()?
        .add_state(&k, v.as_deref())
        .map_err(|e| Error::io(path, e))?
    {
        return Err(Error::corruption(path, 0, "state keys out of order"));
    }
    Ok(())
}

fn write_row(out: &mut OutputSet<'_>, m: &Message, input: &Path) -> Result<()> {
    if !out.writer()?.add(m).map_err(|e| Error::io(input, e))? {
        return Err(Error::corruption(
            input,
            0,
            format!(
                "compaction inputs are not gapless: conversation {} id {}",
                m.conversation, m.id
            ),
        ));
    }
    Ok(())
}

/// Merges `inputs` (in age order, oldest first) into segments at `level`. With `number`, the
/// output is one segment (both sections, no split) with that file number: a rewrite within
/// level 0, where the number orders segments by age. Leveled outputs below level 0 split, so
/// their message merge is cut into up to `threads` key ranges merged in parallel (see
/// [`split`](super::split)).
pub(crate) fn run(
    engine: &Engine,
    inputs: &[Arc<Segment>],
    level: u32,
    drop_tombstones: bool,
    number: Option<u64>,
    shared_blocks: SharedBlocks,
    threads: &(dyn Fn() -> usize + Sync),
) -> Result<Vec<Output>> {
    // Tiered runs and level-0 rewrites are one segment each; leveled outputs split to keep
    // levels fine-grained.
    let (target, separate) = match (engine.opts.compaction_policy, number) {
        (_, Some(_)) | (crate::options::CompactionPolicy::Tiered, None) => (u64::MAX, false),
        (crate::options::CompactionPolicy::Leveled, None) => {
            (engine.opts.target_segment_bytes, true)
        }
    };
    let first = OutputSet::new(engine, level, number, shared_blocks);
    // Edits and retention as on disk when the compaction starts (see `ConversationRules`).
    let durable = engine.current().segments_only(&engine.memtables_held);
    // Messages go to the sets of the merge's parts; state follows in a set of its own, or,
    // for a single segment holding both sections, in the same set after the messages.
    let mut state;
    let mut sets = Vec::new();
    let merged = if separate {
        // Cut into ranges of about half an output segment of input each, so that threads
        // joining while the merge runs find work to take; a merge smaller than a quarter of
        // an output segment is not cut.
        let parts = if engine.opts.compaction_threads > 1 {
            let input: u64 = inputs
                .iter()
                .map(|s| s.reader.file_bytes())
                .fold(0, u64::saturating_add);
            usize::try_from(input.checked_div(target / 2).unwrap_or(u64::MAX))
                .unwrap_or(MAX_RANGES)
                .clamp(2, MAX_RANGES)
        } else {
            1
        };
        let ranges = split::ranges(inputs, parts, target / 4);
        state = first.sibling();
        match merge_parts(engine, inputs, &durable, target, &ranges, first, threads) {
            Ok((done, watermarks)) => {
                sets = done;
                Ok(watermarks)
            }
            Err((e, done)) => {
                sets = done;
                Err(e)
            }
        }
    } else {
        state = first;
        merge_messages(engine, inputs, &durable, target, KeyRange::ALL, &mut state)
    };
    drop(durable);
    let result = merged.and_then(|watermarks| {
        merge_state(
            engine,
            inputs,
            watermarks,
            target,
            drop_tombstones,
            &mut state,
        )
    });
    if let Err(e) = result {
        for set in sets {
            set.abandon();
        }
        state.abandon();
        return Err(e);
    }
    let mut outputs = Vec::new();
    for set in sets {
        outputs.extend(set.open_all()?);
    }
    outputs.extend(state.open_all()?);
    Ok(outputs)
}

/// The most ranges one merge is cut into.
const MAX_RANGES: usize = 256;

/// The message merge of one cut compaction, shared among threads range by range (see
/// `parts`).
struct MessageParts<'a, 'e> {
    engine: &'a Engine,
    inputs: &'a [Arc<Segment>],
    durable: &'a Version,
    target: u64,
    ranges: &'a [KeyRange],
    /// What a stolen span's output set is made like.
    template: parking_lot::Mutex<OutputSet<'e>>,
    threads: &'a (dyn Fn() -> usize + Sync),
}

impl<'e> PartWork for MessageParts<'_, 'e> {
    type Set = OutputSet<'e>;
    type Out = Watermarks;

    fn threads(&self) -> usize {
        (self.threads)()
    }

    fn new_set(&self) -> OutputSet<'e> {
        self.template.lock().sibling()
    }

    fn merge(&self, range: usize, set: &mut OutputSet<'e>) -> Result<Watermarks> {
        let range = self.ranges.get(range).copied().ok_or_else(|| {
            Error::Internal(format!(
                "compaction range {range} out of {}",
                self.ranges.len()
            ))
        })?;
        merge_messages(
            self.engine,
            self.inputs,
            self.durable,
            self.target,
            range,
            set,
        )
    }

    fn finish(&self, set: &mut OutputSet<'e>) -> Result<()> {
        set.finish_current()
    }
}

/// Merges the messages of `ranges` (in key order) into `first` and the sets of the spans
/// helpers take (see `parts`), and returns the sets in key order with the watermarks raised,
/// or the first error with every set (to be abandoned).
#[allow(clippy::type_complexity)]
fn merge_parts<'e>(
    engine: &Engine,
    inputs: &[Arc<Segment>],
    durable: &Version,
    target: u64,
    ranges: &[KeyRange],
    first: OutputSet<'e>,
    threads: &(dyn Fn() -> usize + Sync),
) -> std::result::Result<(Vec<OutputSet<'e>>, Watermarks), (Error, Vec<OutputSet<'e>>)> {
    let work = MessageParts {
        engine,
        inputs,
        durable,
        target,
        ranges,
        template: parking_lot::Mutex::new(first.sibling()),
        threads,
    };
    let shared = parts::run(&work, ranges.len(), first, &|n| {
        format!("chatstore-compact-{n}")
    });
    engine.counters.compaction_parts_beside.fetch_add(
        shared.ranges_beside as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut sets = Vec::with_capacity(shared.spans.len());
    let mut watermarks = VecDeque::new();
    let mut error = None;
    for span in shared.spans {
        match span.result {
            Ok(outs) => watermarks.extend(outs.into_iter().flatten()),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
        sets.push(span.set);
    }
    match error {
        Some(e) => Err((e, sets)),
        None => Ok((sets, watermarks)),
    }
}

/// The merge of messages: which conversation it is in and that conversation's rules.
struct MessageMerge<'a, 'w> {
    engine: &'a Engine,
    inputs: &'a [Arc<Segment>],
    /// Where each input holds the conversations the merge meets.
    held: ConversationCursors<'a>,
    durable: &'a Version,
    /// Whether `durable` holds engine-reserved state (asked once, not per conversation).
    reserved: bool,
    /// Outputs are split at this size, between conversations.
    target: u64,
    last_conv: Option<ConversationId>,
    rules: ConversationRules,
    /// The input the last row came from (named in errors).
    last_path: &'a Path,
    /// Watermarks raised, in conversation order.
    watermarks: &'w mut VecDeque<(Bytes, Option<Bytes>)>,
    /// Per input, whether it shares the outputs' dictionary (compared once, not per block).
    same_dictionary: Vec<bool>,
}

impl<'a> MessageMerge<'a, '_> {
    /// The file of input `input` (named in errors): borrowed, as this is asked per row.
    fn path(&self, input: usize) -> &'a Path {
        let (inputs, engine): (&'a [Arc<Segment>], &'a Engine) = (self.inputs, self.engine);
        inputs
            .get(input)
            .map_or(engine.dir.as_path(), |s| s.reader.path())
    }

    /// Ends the conversation being merged (if any) before `conv` starts, and starts a new
    /// output if the current one is full.
    fn end_conversation(&mut self, out: &mut OutputSet<'_>, path: &Path) -> Result<()> {
        if let Some(done) = self.last_conv {
            finish_conversation(out, &mut self.rules, done, self.watermarks, path)?;
        }
        if out.current_bytes() >= self.target {
            out.finish_current()?;
        }
        Ok(())
    }

    /// Merges one row of input `input`.
    fn row(&mut self, out: &mut OutputSet<'_>, input: usize, m: Message) -> Result<()> {
        let path = self.path(input);
        let conv = m.conversation;
        if self.last_conv != Some(conv) {
            self.end_conversation(out, path)?;
            self.rules = ConversationRules::load(
                self.engine,
                self.durable,
                self.reserved,
                &mut self.held,
                &m,
            )?;
            self.last_conv = Some(conv);
        }
        if let Some(m) = self.rules.rewrite(m, path)? {
            write_row(out, &m, path)?;
        }
        self.last_path = path;
        Ok(())
    }

    /// Copies `block` (read from input `input`, `stored` as on disk) into the output unchanged
    /// if that gives what merging its rows would: no other input's next row (`next_other`)
    /// sorts before its last row, its codec and dictionary suit the output, and the rules of
    /// its conversations keep every row as it is. Chat data makes this the common case: ids
    /// only grow within a conversation, so an older input's blocks of a busy conversation
    /// end before a newer input's rows of it start. Returns whether it copied.
    fn copy_block(
        &mut self,
        out: &mut OutputSet<'_>,
        input: usize,
        stored: &Bytes,
        block: &Block,
        next_other: Option<(ConversationId, u64)>,
    ) -> Result<bool> {
        if self.inputs.get(input).is_none() {
            return Ok(false);
        }
        let (Some(first), Some(last)) = (block.runs().first(), block.runs().last()) else {
            return Ok(false);
        };
        let Some(last_id) = last.last_id() else {
            return Ok(false);
        };
        let same_dictionary = self.same_dictionary.get(input).copied().unwrap_or(false);
        let shared = block.runs().len() > 1;
        if next_other.is_some_and(|k| k <= (last.conversation, last_id))
            || !out.can_copy(block::stored_codec(stored), same_dictionary, shared)
        {
            return Ok(false);
        }
        // The rules of each conversation in the block: the current ones for the conversation
        // being merged, fresh ones for the others (loaded without side effects, so that a
        // refusal leaves the merge as it was).
        let mut fresh = Vec::with_capacity(block.runs().len());
        for run in block.runs() {
            let end = run
                .first_id
                .saturating_add(u64::from(run.len))
                .saturating_sub(1);
            let keeps = if self.last_conv == Some(run.conversation) {
                self.rules.keeps(run.first_id, end)
            } else {
                let head = block.first_of(run);
                let rules = ConversationRules::load(
                    self.engine,
                    self.durable,
                    self.reserved,
                    &mut self.held,
                    &head,
                )?;
                let keeps = rules.keeps(run.first_id, end);
                fresh.push(rules);
                keeps
            };
            if !keeps {
                return Ok(false);
            }
        }
        let path = self.path(input);
        let mut fresh = fresh.into_iter();
        if self.last_conv != Some(first.conversation) {
            self.end_conversation(out, path)?;
            self.last_conv = None;
        }
        if !out
            .writer()?
            .add_stored_block(stored, block)
            .map_err(|e| Error::io(path, e))?
        {
            return Err(out_of_order(path, first.conversation, first.first_id));
        }
        self.count_copy(stored, false);
        for run in block.runs() {
            if self.last_conv != Some(run.conversation) {
                if let Some(done) = self.last_conv {
                    // Its rows were all kept (in this block), so it writes no stub.
                    finish_conversation(out, &mut self.rules, done, self.watermarks, path)?;
                }
                self.rules = fresh.next().ok_or_else(|| {
                    Error::Internal("compaction lost a conversation's rules".into())
                })?;
                self.last_conv = Some(run.conversation);
            }
            self.rules.kept();
        }
        self.last_path = path;
        Ok(true)
    }

    /// Copies a block of one conversation (`meta`, from its input's indexes; `stored` as on
    /// disk, its checksum checked) into the output without decompressing it, if it continues
    /// the conversation being merged (whose rules are loaded), no other input's next row
    /// (`next_other`) sorts at or before its last row, its codec and dictionary suit the
    /// output, and the rules keep all its rows. The blocks of a busy conversation after its
    /// first in each input are all such blocks: on the chat workload most of what compaction
    /// copies. Returns whether it copied.
    fn copy_undecoded(
        &mut self,
        out: &mut OutputSet<'_>,
        input: usize,
        stored: &Bytes,
        meta: OneConversationBlock,
        next_other: Option<(ConversationId, u64)>,
    ) -> Result<bool> {
        let Some(last_id) = block::last_id_of(meta.first_id, meta.rows) else {
            return Ok(false);
        };
        let same_dictionary = self.same_dictionary.get(input).copied().unwrap_or(false);
        if self.last_conv != Some(meta.conversation)
            || next_other.is_some_and(|k| k <= (meta.conversation, last_id))
            || !out.can_copy(block::stored_codec(stored), same_dictionary, false)
            || !self.rules.keeps(meta.first_id, last_id)
        {
            return Ok(false);
        }
        let path = self.path(input);
        if !out
            .writer()?
            .add_stored_run(
                stored,
                meta.conversation,
                meta.first_id,
                meta.rows,
                meta.logical,
            )
            .map_err(|e| Error::io(path, e))?
        {
            return Err(out_of_order(path, meta.conversation, meta.first_id));
        }
        self.count_copy(stored, true);
        self.rules.kept();
        self.last_path = path;
        Ok(true)
    }

    /// Counts a block copied as stored (`undecoded`: without even decompressing it).
    fn count_copy(&self, stored: &Bytes, undecoded: bool) {
        let counters = &self.engine.counters;
        let len = stored.len() as u64;
        counters
            .compaction_bytes_copied
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        if undecoded {
            counters
                .compaction_bytes_copied_undecoded
                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Ends the last conversation.
    fn finish(&mut self, out: &mut OutputSet<'_>) -> Result<()> {
        if let Some(done) = self.last_conv.take() {
            finish_conversation(out, &mut self.rules, done, self.watermarks, self.last_path)?;
        }
        Ok(())
    }
}

/// Merges the messages of `range` in `inputs` into `out`; returns the watermarks raised, in
/// conversation order.
fn merge_messages(
    engine: &Engine,
    inputs: &[Arc<Segment>],
    durable: &Version,
    target: u64,
    range: KeyRange,
    out: &mut OutputSet<'_>,
) -> Result<Watermarks> {
    let messages = out;
    let mut watermarks = VecDeque::new();
    let mut cursors: Vec<MessageCursor<'_>> = inputs
        .iter()
        .map(|s| MessageCursor::open(&s.reader, range, inputs.len()))
        .collect::<Result<_>>()?;
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        if let Some((conv, id)) = c.head()? {
            heap.push(Reverse((conv, id, i)));
        }
    }
    let mut merge = MessageMerge {
        engine,
        inputs,
        held: ConversationCursors::open(inputs),
        durable,
        reserved: durable.has_reserved_state(),
        target,
        last_conv: None,
        rules: ConversationRules::default(),
        last_path: engine.dir.as_path(),
        watermarks: &mut watermarks,
        same_dictionary: inputs
            .iter()
            .map(|s| messages.same_dictionary(s.reader.dictionary()))
            .collect(),
    };
    while let Some(Reverse((_, _, i))) = heap.pop() {
        let Some(cursor) = cursors.get_mut(i) else {
            continue;
        };
        if cursor.buf.is_empty() {
            // A block boundary: take the whole block, copied as stored if no other input has
            // a row that sorts inside it and the rules change none of its rows; a block of the
            // conversation being merged, without even decoding it when its input's indexes
            // say enough.
            let next_other = heap.peek().map(|Reverse((c, id, _))| (*c, *id));
            let read = match cursor.next_block_of_one_conversation(merge.last_conv)? {
                Some(meta) => {
                    let stored = cursor.read_next_stored()?;
                    if merge.copy_undecoded(messages, i, &stored, meta, next_other)? {
                        cursor.skip_block();
                        None
                    } else {
                        let block = cursor.decode_next(&stored)?;
                        Some((stored, block))
                    }
                }
                None => cursor.next_block()?,
            };
            if let Some((stored, block)) = read {
                if !(cursor.holds_whole(&block)
                    && merge.copy_block(messages, i, &stored, &block, next_other)?)
                {
                    cursor.buffer(&block);
                }
            }
        } else if let Some(m) = cursor.buf.pop_front() {
            merge.row(messages, i, m)?;
            // The rows after it in this input go first while they sort before every other
            // input's next row (a conversation's run in one input, the common case): the heap
            // would hand them back one by one, in the same order.
            let others = heap.peek().map(|Reverse(key)| *key);
            while let Some(next) = cursor.buf.front() {
                if others.is_some_and(|o| (next.conversation, next.id.0, i) >= o) {
                    break;
                }
                if let Some(m) = cursor.buf.pop_front() {
                    merge.row(messages, i, m)?;
                }
            }
        }
        if let Some((conv, id)) = cursor.head()? {
            heap.push(Reverse((conv, id, i)));
        }
    }
    merge.finish(messages)?;
    drop(merge);
    Ok(watermarks)
}

/// Merges the state entries of `inputs`, and the `watermarks` the message merge raised, into
/// `out`, then syncs the directory that holds the outputs.
fn merge_state(
    engine: &Engine,
    inputs: &[Arc<Segment>],
    watermarks: VecDeque<(Bytes, Option<Bytes>)>,
    target: u64,
    drop_tombstones: bool,
    state: &mut OutputSet<'_>,
) -> Result<()> {
    // State: inputs later in the slice are newer, so on equal keys the higher index wins; the
    // watermarks this merge raised come last. Copies of a watermark merge by taking the
    // highest (see `overrides`).
    let mut cursors: Vec<StateCursor<'_>> = inputs
        .iter()
        .map(|s| StateCursor {
            reader: Some(&s.reader),
            next_block: 0,
            buf: VecDeque::new(),
        })
        .collect();
    cursors.push(StateCursor {
        reader: None,
        next_block: 0,
        buf: watermarks,
    });
    let mut heads: Vec<Option<(Bytes, Option<Bytes>)>> = Vec::with_capacity(cursors.len());
    let mut heap = BinaryHeap::new();
    for (i, c) in cursors.iter_mut().enumerate() {
        let head = c.next()?;
        if let Some((k, _)) = &head {
            heap.push(Reverse((k.clone(), Reverse(i))));
        }
        heads.push(head);
    }
    // The winning entry of the key being merged, and the input it came from.
    let mut winner: Option<(Bytes, Option<Bytes>, usize)> = None;
    while let Some(Reverse((key, Reverse(i)))) = heap.pop() {
        let Some((k, v)) = heads[i].take() else {
            continue;
        };
        let next = cursors[i].next()?;
        if let Some((nk, _)) = &next {
            heap.push(Reverse((nk.clone(), Reverse(i))));
        }
        heads[i] = next;
        if let Some((wk, wv, _)) = &mut winner {
            if *wk == key {
                // An older version of the key: it loses, except a higher watermark.
                if overrides::is_watermark_key(&key) && watermark_value(&v)? > watermark_value(wv)?
                {
                    *wv = v;
                }
                continue;
            }
        }
        if let Some(done) = winner.take() {
            write_state(engine, state, inputs, done, target, drop_tombstones)?;
        }
        winner = Some((k, v, i));
    }
    if let Some(done) = winner.take() {
        write_state(engine, state, inputs, done, target, drop_tombstones)?;
    }
    state.finish_current()?;
    engine
        .fs
        .sync_dir(&engine.dir)
        .map_err(|e| Error::io(&engine.dir, e))
}
