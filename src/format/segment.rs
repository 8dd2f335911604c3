//! Segment files: immutable, sorted by (conversation, id), made of columnar blocks, with a block
//! index, a conversation index and a footer. See `docs/format-segment.md`.
//!
//! ```text
//! segment      := header [dictionary] block* state_block* block_index conv_index block_sizes
//!                 state_index footer
//! dictionary   := zstd dictionary bytes | len:u32 | codec:u8 = 0 | crc:u32  (block framing)
//! header       := magic:u64 = SEGMENT_MAGIC | version:u32 | hints:u32                 (16 bytes)
//! block        := body | uncompressed_len:u32 | codec:u8 | crc:u32   (see format::block)
//! state_block  := same framing, body per format::state_block
//! block_index  := (first_conv:u64 | first_id:u64 | offset:u64 | len:u32 | rows:u32){block_count}
//! conv_index   := (conv:u64 | first_id:u64 | last_id:u64){conv_count}
//! block_sizes  := logical_bytes:u32{block_count}                       (version 3 on)
//! state_index  := (offset:u64 | len:u32 | key_pos:u32){state_block_count}
//!                 (key_len:varint | first_key){state_block_count}
//! footer       := first_conv:u64 | last_conv:u64 | message_index_crc:u32 | first_codec:u32 |
//!                 block_index_offset:u64 | block_count:u32 | conv_count:u32 |
//!                 message_count:u64 | logical_bytes:u64 | state_index_offset:u64 |
//!                 state_block_count:u32 | state_entry_count:u32 | state_index_len:u32 |
//!                 dict_len:u32 | dict_offset:u64 |
//!                 index_crc:u32 | version:u32 | footer_crc:u32 | magic:u64   (108 bytes)
//! ```
//! `key_pos` is the offset of a state block's first key from the start of the key area;
//! `message_index_crc` covers the block and conversation indexes and the block sizes (each
//! block's logical size, so that compaction can copy a block without decoding it and still
//! count what it holds), `index_crc` the state index,
//! `footer_crc` the footer bytes before it. A version-1 footer is the last 84 bytes alone, and
//! its `index_crc` covers all three indexes.
//! Both message indexes are fixed-width and sorted, so a lookup is a binary search. Opening a
//! segment reads its footer, state index and dictionary; the block and conversation indexes
//! are read and checked at the first lookup that needs them (a version-1 segment, whose one
//! checksum covers every index, loads them at open); blocks are read with positioned reads
//! when needed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::block::{
    check_stored, last_id_of, pack, stored_codec, unpack, Block, BlockBuilder, BLOCK_TRAILER_LEN,
    MAX_BLOCK_LEN,
};
use super::coding::{get_u32, get_u64, put_u32, put_u64};
use super::coding::{put_varint, Reader};
use super::compression::Compression;
use super::dictionary::{DictDecoder, DictEncoder};
use super::index_partitions::{
    block_in_partition, conv_range_in_partition, partition_span, BlockEntry, IndexCursor,
    IndexPart, IndexPartitionCache, IndexPins, PartitionTable, Pin, SharedPartitions,
    PARTITION_ENTRIES,
};
use super::packed_entries::PackedEntries;
use super::state_block::{self, StateBlock, StateBlockBuilder, MAX_KEY_LEN};
use super::{within, OverLimit};
use crate::error::{Error, Result};
use crate::fs::{RandomAccessFile, WritableFile};
use crate::types::{ConversationId, Message, MessageRef};

/// "CHATSEG" and a format byte, as a little-endian u64.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"CHATSEG\x01");
/// The newest segment format version this build writes and reads (it reads versions 1 and 2
/// too).
pub const SEGMENT_VERSION: u32 = 3;
/// Size of a block's entry in the block sizes (version 3 on).
pub const BLOCK_SIZE_ENTRY_LEN: usize = 4;
/// Size of the file header.
pub const HEADER_LEN: usize = 16;
/// Header hint: the segment stores its blocks of several conversations in a faster codec than
/// its blocks of one conversation (see [`SegmentWriter::store_shared_blocks_with`]).
/// Compaction rewrites such a segment when the store is at rest. Hints are not covered by a
/// checksum: a wrong one only changes what compaction chooses to rewrite, never what is read.
pub const HINT_FAST_SHARED_BLOCKS: u32 = 1;
/// Where the hints word is in the header.
const HEADER_HINTS_AT: usize = 12;
/// Size of the footer this build writes (versions 2 and 3).
pub const FOOTER_LEN: usize = 108;
/// Size of a version-1 footer: the last 84 bytes of a version-2 one, whose first 24 bytes
/// (the extension) it lacks.
pub const FOOTER_V1_LEN: usize = 84;
/// The footer's `first_codec` when the segment has no message block.
const NO_CODEC: u32 = u32::MAX;
/// Size of a state index entry.
pub const STATE_ENTRY_LEN: usize = 16;
/// Target uncompressed size of a state block (small: state is read by point lookups).
pub const STATE_BLOCK_BYTES: usize = 4096;
/// Size of a block index entry.
pub const BLOCK_ENTRY_LEN: usize = 32;
/// Size of a conversation index entry.
pub const CONV_ENTRY_LEN: usize = 24;

/// What a finished segment holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentSummary {
    /// File size in bytes.
    pub file_bytes: u64,
    /// Messages stored.
    pub messages: u64,
    /// Conversations with at least one message.
    pub conversations: u64,
    /// Blocks written.
    pub blocks: u64,
    /// Bytes of message content, attachment links and fixed fields before encoding.
    pub logical_bytes: u64,
    /// State entries (tombstones included).
    pub state_entries: u64,
    /// Bytes of the block bodies this writer compressed (before compression; blocks written
    /// with `Compression::None` and blocks copied as stored do not count): the work its
    /// codec did.
    pub compressed_bytes: u64,
    /// Bytes of the blocks added as stored (copied from another segment without encoding).
    pub copied_bytes: u64,
}

/// Writes a segment to a file. Messages must arrive in (conversation, id) order with gapless
/// ids inside a conversation.
pub struct SegmentWriter {
    file: Box<dyn WritableFile>,
    compression: Compression,
    block_bytes: usize,
    block: BlockBuilder,
    out: Vec<u8>,
    offset: u64,
    /// (first conversation, first id, offset, stored length, rows) of each message block.
    block_index: PackedEntries<5>,
    /// (conversation, first id, last id) of each conversation before `open_conversation`.
    conv_index: PackedEntries<3>,
    /// The conversation index's last entry, still growing as rows arrive.
    open_conversation: Option<(u64, u64, u64)>,
    /// The first conversation of the segment.
    first_conversation: Option<u64>,
    /// Each message block's logical size, in block order.
    block_sizes: PackedEntries<1>,
    /// Logical bytes of the rows in `block`, not yet in a finished block.
    pending_logical: u64,
    state: StateBlockBuilder,
    state_started: bool,
    state_index: Vec<(u64, u32, Vec<u8>)>,
    last_state_key: Vec<u8>,
    dict: Option<DictEncoder>,
    dict_at: (u64, u32),
    /// The codec for blocks holding several conversations, when it differs from
    /// `compression` (see [`SegmentWriter::store_shared_blocks_with`]).
    shared_block_compression: Option<Compression>,
    /// Codec byte of the first message block written, recorded in the footer.
    first_codec: Option<u8>,
    summary: SegmentSummary,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// A conversation's rows in a block being copied: what the conversation index needs of it.
#[derive(Clone, Copy, Debug)]
struct StoredRun {
    conversation: u64,
    first_id: u64,
    len: u32,
}

/// Fixed per-message bytes counted as logical size (ids, sender, timestamp, kind).
const LOGICAL_FIXED_BYTES: u64 = 33;

/// The logical size of a block's rows, as a segment counts it (`logical_bytes`).
#[deny(clippy::arithmetic_side_effects)]
pub fn logical_bytes_of(block: &Block) -> u64 {
    let (content, attachments, mentions) = block.payload();
    LOGICAL_FIXED_BYTES
        .saturating_mul(block.rows() as u64)
        .saturating_add(content)
        .saturating_add(attachments)
        .saturating_add(mentions.saturating_mul(8))
}

/// `v` as a u32 field of the format, refused if it would wrap.
fn u32_field(what: &'static str, v: usize) -> Result<u32, OverLimit> {
    within(what, v, u32::MAX as usize)?;
    Ok(v as u32)
}

// Flushes and compactions write segments on background threads: no arithmetic that can
// overflow.
#[deny(clippy::arithmetic_side_effects)]
impl SegmentWriter {
    /// Starts a segment in `file`.
    pub fn new(file: Box<dyn WritableFile>, compression: Compression, block_bytes: usize) -> Self {
        Self::with_dictionary(file, compression, block_bytes, None)
    }

    /// Starts a segment whose zstd blocks are compressed against `dictionary` (stored in the
    /// segment). Ignored for other codecs or if zstd rejects the dictionary.
    pub fn with_dictionary(
        file: Box<dyn WritableFile>,
        compression: Compression,
        block_bytes: usize,
        dictionary: Option<&[u8]>,
    ) -> Self {
        let mut out = Vec::with_capacity(OUT_CAPACITY.max(block_bytes.saturating_mul(2)));
        put_u64(&mut out, SEGMENT_MAGIC);
        put_u32(&mut out, SEGMENT_VERSION);
        put_u32(&mut out, 0);
        let mut dict = None;
        let mut dict_at = (0, 0);
        if let (Compression::Zstd(level), Some(d)) = (compression, dictionary) {
            if let Some(enc) = DictEncoder::new(d, level) {
                let start = out.len();
                pack(d, Compression::None, None, &mut out);
                dict_at = (start as u64, out.len().saturating_sub(start) as u32);
                dict = Some(enc);
            }
        }
        SegmentWriter {
            file,
            compression,
            block_bytes,
            block: BlockBuilder::new(),
            out,
            offset: 0,
            block_index: PackedEntries::new(),
            conv_index: PackedEntries::new(),
            open_conversation: None,
            first_conversation: None,
            block_sizes: PackedEntries::new(),
            pending_logical: 0,
            state: StateBlockBuilder::new(),
            state_started: false,
            state_index: Vec::new(),
            last_state_key: Vec::new(),
            dict,
            dict_at,
            shared_block_compression: None,
            first_codec: None,
            summary: SegmentSummary::default(),
        }
    }

    /// Stores the message blocks that hold rows of more than one conversation with
    /// `compression` instead of the segment's own codec. For an output that will soon be
    /// merged again: such blocks (the quiet conversations, a few rows each) are decoded and
    /// re-encoded by that merge whatever their codec, while a block of one conversation can be
    /// copied by it as stored, so only the latter is worth the segment's slower codec.
    /// The segment's header says so (`HINT_FAST_SHARED_BLOCKS`) when the codec differs from the
    /// segment's. Call it before adding anything: the header may already be on its way to the
    /// file after that, and then it is not marked.
    pub fn store_shared_blocks_with(&mut self, compression: Compression) {
        self.shared_block_compression = Some(compression);
        if compression != self.compression && self.offset == 0 {
            if let Some(hints) = self.out.get_mut(HEADER_HINTS_AT..HEADER_LEN) {
                hints.copy_from_slice(&HINT_FAST_SHARED_BLOCKS.to_le_bytes());
            }
        }
    }

    /// Adds a message. Returns `false` (and adds nothing) if it is out of order or state
    /// entries were already added, and an error (adding nothing) if it is over a limit of the
    /// format (`batch::check_message`).
    pub fn add(&mut self, m: &Message) -> std::io::Result<bool> {
        self.add_ref(m.as_ref())
    }

    /// [`add`](Self::add) from borrowed fields.
    pub(crate) fn add_ref(&mut self, m: MessageRef<'_>) -> std::io::Result<bool> {
        if self.state_started {
            return Ok(false);
        }
        super::batch::check_message(m)?;
        match &mut self.open_conversation {
            Some(last) if last.0 == m.conversation.0 => {
                if last.2.checked_add(1) != Some(m.id.0) {
                    return Ok(false);
                }
                last.2 = m.id.0;
            }
            Some(last) if last.0 > m.conversation.0 => return Ok(false),
            _ => self.open_conversation_entry(m.conversation.0, m.id.0, m.id.0),
        }
        let new_conversation = self
            .block
            .last_conversation()
            .is_some_and(|c| c != m.conversation);
        if !self.block.accepts_ref(m)
            || !self.block.has_room_for(m)
            || (new_conversation && self.block.estimated_len() >= self.block_bytes / 2)
        {
            self.finish_block()?;
        }
        if !self.block.add_ref(m) {
            // Checked above: in order, within the limits, and the block was just ended if
            // need be.
            return Err(std::io::Error::other(
                "a block refused a row it had accepted",
            ));
        }
        self.summary.messages = self.summary.messages.saturating_add(1);
        let logical = LOGICAL_FIXED_BYTES
            .saturating_add(m.content.len() as u64)
            .saturating_add(m.attachment.map_or(0, |a| a.len() as u64))
            .saturating_add((m.mentions.len() as u64).saturating_mul(8));
        self.summary.logical_bytes = self.summary.logical_bytes.saturating_add(logical);
        self.pending_logical = self.pending_logical.saturating_add(logical);
        if self.block.estimated_len() >= self.block_bytes {
            self.finish_block()?;
        }
        Ok(true)
    }

    /// Adds a block as stored in another segment (`stored`, trailer included), whose decoded
    /// form is `block`, without decoding or compressing it again. The caller checks that the
    /// codec suits this segment (`block::copyable`): a dictionary-compressed block needs this
    /// segment's dictionary. Rows still pending from [`add`](Self::add) are closed into a
    /// block of their own first. Returns `false` (adding nothing) if the rows are out of order
    /// or not gapless after what was added before, or state entries were already added.
    pub fn add_stored_block(&mut self, stored: &[u8], block: &Block) -> std::io::Result<bool> {
        let runs: Vec<StoredRun> = block
            .runs()
            .iter()
            .map(|r| StoredRun {
                conversation: r.conversation.0,
                first_id: r.first_id,
                len: r.len,
            })
            .collect();
        self.add_stored(stored, &runs, block.rows(), logical_bytes_of(block))
    }

    /// [`add_stored_block`](Self::add_stored_block) for a block known, from its segment's
    /// indexes, to hold only `rows` rows of `conversation` from `first_id` on, of `logical`
    /// bytes: it is copied without being decoded at all.
    pub fn add_stored_run(
        &mut self,
        stored: &[u8],
        conversation: ConversationId,
        first_id: u64,
        rows: u32,
        logical: u32,
    ) -> std::io::Result<bool> {
        let run = StoredRun {
            conversation: conversation.0,
            first_id,
            len: rows,
        };
        self.add_stored(stored, &[run], rows as usize, u64::from(logical))
    }

    fn add_stored(
        &mut self,
        stored: &[u8],
        runs: &[StoredRun],
        rows: usize,
        logical: u64,
    ) -> std::io::Result<bool> {
        if self.state_started || rows == 0 {
            return Ok(false);
        }
        // Check the whole block against the conversation index before changing anything.
        let mut prev = self.open_conversation.map(|(c, _, last)| (c, last));
        let mut counted = 0u64;
        for run in runs {
            let conv = run.conversation;
            let ok = match prev {
                Some((c, last)) if c == conv => last.checked_add(1) == Some(run.first_id),
                Some((c, _)) => c < conv,
                None => true,
            };
            let Some(end) = last_id_of(run.first_id, run.len) else {
                return Ok(false);
            };
            if !ok || run.first_id == 0 {
                return Ok(false);
            }
            counted = counted.saturating_add(u64::from(run.len));
            prev = Some((conv, end));
        }
        let (Some(first), Ok(rows)) = (runs.first(), u32::try_from(rows)) else {
            return Ok(false);
        };
        let Ok(block_logical) = u32::try_from(logical) else {
            return Ok(false);
        };
        if counted != u64::from(rows) {
            return Ok(false);
        }
        let len = u32_field("bytes of one stored block", stored.len())?;
        self.finish_block()?;
        for run in runs {
            // Checked above.
            let end = last_id_of(run.first_id, run.len).unwrap_or(run.first_id);
            match &mut self.open_conversation {
                Some(last) if last.0 == run.conversation => last.2 = end,
                _ => self.open_conversation_entry(run.conversation, run.first_id, end),
            }
        }
        let offset = self.file_offset(self.out.len());
        self.out.extend_from_slice(stored);
        if self.first_codec.is_none() {
            self.first_codec = stored_codec(stored);
        }
        self.block_index.push([
            first.conversation,
            first.first_id,
            offset,
            u64::from(len),
            u64::from(rows),
        ]);
        self.block_sizes.push([u64::from(block_logical)]);
        self.summary.blocks = self.summary.blocks.saturating_add(1);
        self.summary.messages = self.summary.messages.saturating_add(u64::from(rows));
        self.summary.logical_bytes = self.summary.logical_bytes.saturating_add(logical);
        self.summary.copied_bytes = self.summary.copied_bytes.saturating_add(u64::from(len));
        if self.out.len() >= DRAIN_BYTES {
            self.drain()?;
        }
        Ok(true)
    }

    /// The file offset of byte `pos` of the buffer not yet written.
    fn file_offset(&self, pos: usize) -> u64 {
        self.offset.saturating_add(pos as u64)
    }

    /// Starts the conversation index's entry for `conv`, closing the one before it.
    fn open_conversation_entry(&mut self, conv: u64, first: u64, last: u64) {
        if let Some((c, f, l)) = self.open_conversation.replace((conv, first, last)) {
            self.conv_index.push([c, f, l]);
        }
        self.first_conversation.get_or_insert(conv);
    }

    fn count_compressed(&mut self, compression: Compression, body_len: usize) {
        if compression != Compression::None {
            self.summary.compressed_bytes = self
                .summary
                .compressed_bytes
                .saturating_add(body_len as u64);
        }
    }

    fn finish_block(&mut self) -> std::io::Result<()> {
        let Some((conv, id)) = self.block.first_key() else {
            return Ok(());
        };
        let rows = u32_field("rows of one block", self.block.rows())?;
        let start = self.out.len();
        let compression = match self.shared_block_compression {
            Some(shared) if self.block.conversations() > 1 => shared,
            _ => self.compression,
        };
        let body_len = self
            .block
            .finish_into(compression, self.dict.as_mut(), &mut self.out);
        self.count_compressed(compression, body_len);
        let len = u32_field(
            "bytes of one stored block",
            self.out.len().saturating_sub(start),
        )?;
        if self.first_codec.is_none() {
            self.first_codec = stored_codec(&self.out[start..]);
        }
        let offset = self.file_offset(start);
        self.block_index
            .push([conv.0, id, offset, u64::from(len), u64::from(rows)]);
        // A block holds at most `MAX_BLOCK_LEN` of rows, each counted at most a few times
        // its stored size: far below 4 GiB.
        self.block_sizes.push([u64::from(u32_field(
            "logical bytes of one block",
            self.pending_logical as usize,
        )?)]);
        self.pending_logical = 0;
        self.summary.blocks = self.summary.blocks.saturating_add(1);
        if self.out.len() >= DRAIN_BYTES {
            self.drain()?;
        }
        Ok(())
    }

    /// Adds a state entry (`None` = tombstone). REQUIRES: every message was added before, and
    /// keys arrive strictly increasing; returns `false` (adding nothing) otherwise, and an
    /// error (adding nothing) for a key or value over the format's limits.
    pub fn add_state(&mut self, key: &[u8], value: Option<&[u8]>) -> std::io::Result<bool> {
        super::batch::check_state(key, value)?;
        if !self.state.is_empty()
            && state_block::bound_with(self.state.estimated_len(), key, value) > MAX_BLOCK_LEN
        {
            // The entry might not fit beside the others: it starts the next block.
            if key <= self.last_state_key.as_slice() {
                return Ok(false);
            }
            self.finish_state_block()?;
        }
        if !self.state_started {
            self.finish_block()?;
            self.state_started = true;
        }
        if self.state.is_empty()
            && !self.state_index.is_empty()
            && key <= self.last_state_key.as_slice()
        {
            return Ok(false);
        }
        if !self.state.add(key, value) {
            return Ok(false);
        }
        self.last_state_key.clear();
        self.last_state_key.extend_from_slice(key);
        self.summary.state_entries = self.summary.state_entries.saturating_add(1);
        if self.state.estimated_len() >= STATE_BLOCK_BYTES {
            self.finish_state_block()?;
        }
        Ok(true)
    }

    fn finish_state_block(&mut self) -> std::io::Result<()> {
        let Some(first) = self.state.first_key().map(<[u8]>::to_vec) else {
            return Ok(());
        };
        let body = self.state.finish();
        within("bytes of one state block", body.len(), MAX_BLOCK_LEN)?;
        let start = self.out.len();
        pack(&body, self.compression, self.dict.as_mut(), &mut self.out);
        self.count_compressed(self.compression, body.len());
        let len = u32_field(
            "bytes of one stored state block",
            self.out.len().saturating_sub(start),
        )?;
        self.state_index.push((self.file_offset(start), len, first));
        if self.out.len() >= DRAIN_BYTES {
            self.drain()?;
        }
        Ok(())
    }

    /// Bytes written or buffered so far.
    pub fn written_bytes(&self) -> u64 {
        self.file_offset(self.out.len())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.out)?;
        self.offset = self.file_offset(self.out.len());
        self.out.clear();
        Ok(())
    }

    /// Writes the indexes and footer and fsyncs the file.
    pub fn finish(mut self) -> std::io::Result<SegmentSummary> {
        self.finish_block()?;
        self.finish_state_block()?;
        let block_index_offset = self.file_offset(self.out.len());
        // The message index is streamed to the file a slice at a time: gathered whole, a
        // large segment's (megabytes) would be one transient buffer, whose freeing raises
        // the allocator's thresholds and leaves its size resident in an arena.
        let mut index = IndexStream {
            crc: crc32fast::Hasher::new(),
            from: self.out.len(),
        };
        if let Some((conv, first, last)) = self.open_conversation.take() {
            self.conv_index.push([conv, first, last]);
        }
        let block_index = std::mem::replace(&mut self.block_index, PackedEntries::new());
        let mut blocks = 0usize;
        for [conv, first, offset, len, rows] in block_index.iter() {
            put_u64(&mut self.out, conv);
            put_u64(&mut self.out, first);
            put_u64(&mut self.out, offset);
            // Pushed from `u32`s.
            put_u32(&mut self.out, len as u32);
            put_u32(&mut self.out, rows as u32);
            blocks = blocks.saturating_add(1);
            index.spill_if_full(&mut self)?;
        }
        let conv_index = std::mem::replace(&mut self.conv_index, PackedEntries::new());
        let mut conversations = 0usize;
        let mut last_conv = 0;
        for [conv, first, last] in conv_index.iter() {
            put_u64(&mut self.out, conv);
            put_u64(&mut self.out, first);
            put_u64(&mut self.out, last);
            last_conv = conv;
            conversations = conversations.saturating_add(1);
            index.spill_if_full(&mut self)?;
        }
        let block_sizes = std::mem::replace(&mut self.block_sizes, PackedEntries::new());
        let mut sizes = 0usize;
        for [size] in block_sizes.iter() {
            // Pushed from `u32`s.
            put_u32(&mut self.out, size as u32);
            sizes = sizes.saturating_add(1);
            index.spill_if_full(&mut self)?;
        }
        if blocks != block_index.len()
            || conversations != conv_index.len()
            || sizes != block_sizes.len()
        {
            return Err(std::io::Error::other(
                "segment writer: an index entry did not read back",
            ));
        }
        let message_index_crc = index.finish(&self.out);
        let state_index_offset = self.file_offset(self.out.len());
        let state_start = self.out.len();
        let mut keys = Vec::new();
        for (offset, len, first) in &self.state_index {
            put_u64(&mut self.out, *offset);
            put_u32(&mut self.out, *len);
            put_u32(
                &mut self.out,
                u32_field("bytes of the state index keys", keys.len())?,
            );
            put_varint(&mut keys, first.len() as u64);
            keys.extend_from_slice(first);
        }
        self.out.extend_from_slice(&keys);
        let state_index_len = u32_field(
            "bytes of the state index",
            self.out.len().saturating_sub(state_start),
        )?;
        let block_count = u32_field("blocks of one segment", self.summary.blocks as usize)?;
        let conv_count = u32_field("conversations of one segment", conversations)?;
        let state_blocks = u32_field("state blocks of one segment", self.state_index.len())?;
        let state_entries = u32_field(
            "state entries of one segment",
            self.summary.state_entries as usize,
        )?;
        let state_index_crc = crc32fast::hash(&self.out[state_start..]);
        let footer_start = self.out.len();
        // The extension (version 2): what opening the segment needs without its message
        // indexes.
        let first_conv = self.first_conversation.unwrap_or(0);
        put_u64(&mut self.out, first_conv);
        put_u64(&mut self.out, last_conv);
        put_u32(&mut self.out, message_index_crc);
        put_u32(&mut self.out, self.first_codec.map_or(NO_CODEC, u32::from));
        put_u64(&mut self.out, block_index_offset);
        put_u32(&mut self.out, block_count);
        put_u32(&mut self.out, conv_count);
        put_u64(&mut self.out, self.summary.messages);
        put_u64(&mut self.out, self.summary.logical_bytes);
        put_u64(&mut self.out, state_index_offset);
        put_u32(&mut self.out, state_blocks);
        put_u32(&mut self.out, state_entries);
        put_u32(&mut self.out, state_index_len);
        put_u32(&mut self.out, self.dict_at.1);
        put_u64(&mut self.out, self.dict_at.0);
        put_u32(&mut self.out, state_index_crc);
        put_u32(&mut self.out, SEGMENT_VERSION);
        let footer_crc = crc32fast::hash(&self.out[footer_start..]);
        put_u32(&mut self.out, footer_crc);
        put_u64(&mut self.out, SEGMENT_MAGIC);
        self.drain()?;
        self.file.sync()?;
        self.summary.conversations = conversations as u64;
        self.summary.file_bytes = self.offset;
        Ok(self.summary)
    }
}

/// Bytes of the message index gathered before they are handed to the file (with what the
/// buffer held before it, below the mmap threshold too: see [`DRAIN_BYTES`]).
const INDEX_SPILL_BYTES: usize = 32 << 10;

/// The writer hands its buffer to the file once it holds this much. Small enough that the
/// buffer (allocated at [`OUT_CAPACITY`]) stays below glibc's default mmap threshold while
/// blocks of a few KiB go through it: a buffer of megabytes, freed with each segment, would
/// raise the allocator's thresholds for the rest of the process (`docs/memory.md`).
const DRAIN_BYTES: usize = 48 << 10;

/// The capacity a writer's buffer starts with.
const OUT_CAPACITY: usize = 64 << 10;

/// The message index on its way out: its checksum so far, and where in the writer's buffer
/// its bytes not yet in the checksum start.
struct IndexStream {
    crc: crc32fast::Hasher,
    from: usize,
}

#[deny(clippy::arithmetic_side_effects)]
impl IndexStream {
    /// Hands the buffer to the file once it holds `INDEX_SPILL_BYTES`, checksumming the
    /// index bytes in it first.
    fn spill_if_full(&mut self, w: &mut SegmentWriter) -> std::io::Result<()> {
        if w.out.len() < self.from.saturating_add(INDEX_SPILL_BYTES) {
            return Ok(());
        }
        self.crc.update(w.out.get(self.from..).unwrap_or_default());
        w.drain()?;
        self.from = 0;
        Ok(())
    }

    /// The checksum of the whole index, whose last bytes are in `out` from `from` on.
    fn finish(mut self, out: &[u8]) -> u32 {
        self.crc.update(out.get(self.from..).unwrap_or_default());
        self.crc.finalize()
    }
}

/// An open segment: the file, read a block at a time, its footer and state index, held in
/// memory from the open, and its block and conversation indexes, read at first use.
#[derive(Debug)]
pub struct SegmentReader {
    path: PathBuf,
    file: Arc<dyn RandomAccessFile>,
    file_len: u64,
    version: u32,
    /// The state index and the footer, read when the segment is opened.
    state_meta: Bytes,
    state_block_count: usize,
    /// Where the state index's key area starts in `state_meta`.
    state_keys_offset: usize,
    /// Length of the footer at the end of `state_meta`.
    footer_len: usize,
    state_entry_count: u64,
    /// The block index then the conversation index (`block_count * 32 + conv_count * 24`
    /// bytes at `message_index_offset`), loaded once, at the first lookup that needs them.
    message_index: OnceLock<Bytes>,
    message_index_offset: u64,
    /// The checksum `message_index` must have when it is loaded (version 2; a version-1
    /// segment's indexes are loaded and checked when it is opened, and this is 0).
    message_index_crc: u32,
    /// Where the data area ends: blocks must lie before it.
    data_end: u64,
    block_count: usize,
    conv_count: usize,
    message_count: u64,
    logical_bytes: u64,
    conversations: Option<(ConversationId, ConversationId)>,
    first_codec: Option<u8>,
    /// The header's hints word (`HINT_*`), not checked.
    hints: u32,
    dict: Option<Arc<DictDecoder>>,
    /// Bytes of message indexes loaded after the open are added here (the engine charges them
    /// to its memory budget).
    index_loads: Option<Arc<AtomicU64>>,
    /// Each index partition's first key and checksum (see `index_partitions`), built at the
    /// first lookup from the whole index, read once and checked, and kept while the segment
    /// is open: lookups then read only the partition they need.
    table: OnceLock<PartitionTable>,
    /// Where lookups keep the partitions they read (none: each lookup reads its own).
    partitions: Option<SharedPartitions>,
    /// Who grants keeping the indexes whole (none: never kept whole after the open).
    pins: Option<IndexPins>,
    /// The grant the indexes kept whole hold, given back when the reader is dropped.
    pinned: OnceLock<Option<Pin>>,
}

/// How a lookup reaches a segment's block and conversation indexes.
enum Lookup<'a> {
    /// Kept whole in memory.
    Whole(&'a Bytes),
    /// Read a partition at a time, found through the table.
    Partitioned(&'a PartitionTable),
}

/// Location and size of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHandle {
    /// File offset.
    pub offset: u64,
    /// Stored length, trailer included.
    pub len: u32,
}

/// The fields of a footer (either version), as stored.
struct Footer {
    block_index_offset: u64,
    block_count: usize,
    conv_count: usize,
    message_count: u64,
    logical_bytes: u64,
    state_index_offset: u64,
    state_block_count: usize,
    state_entry_count: u64,
    state_index_len: u64,
    dict_len: usize,
    dict_offset: u64,
    index_crc: u32,
    /// Version 2 only: (first conversation, last conversation, message index crc, first codec).
    extension: Option<(u64, u64, u32, u32)>,
}

#[deny(clippy::arithmetic_side_effects)]
impl Footer {
    /// Reads and checks the footer at the end of the file: magic, checksum, version. Returns
    /// the bytes read too (the file's tail, which may hold the state index).
    fn read(
        path: &Path,
        file: &dyn RandomAccessFile,
        file_len: u64,
    ) -> Result<(u32, Footer, Bytes)> {
        let corrupt = |offset: u64, why: &str| Error::corruption(path, offset, why);
        // Read enough for the larger footer at once; a version-1 footer is its last 84 bytes.
        let tail_len = (FOOTER_LEN as u64).min(file_len.saturating_sub(HEADER_LEN as u64)) as usize;
        let tail_at = file_len.saturating_sub(tail_len as u64);
        let tail = file
            .read_at(tail_at, tail_len)
            .map_err(|e| Error::io(path, e))?;
        let base_at = tail_len.saturating_sub(FOOTER_V1_LEN);
        let base = &tail[base_at..];
        let f = file_len.saturating_sub(FOOTER_V1_LEN as u64);
        if get_u64(base, 76) != Some(SEGMENT_MAGIC) {
            return Err(corrupt(f, "bad footer magic"));
        }
        let version = get_u32(base, 68).unwrap_or(0);
        let footer_len = match version {
            1 => FOOTER_V1_LEN,
            2 | 3 => FOOTER_LEN,
            _ => {
                // Checked against the footer checksum of the layout this build knows best
                // first: a damaged version word must read as corruption, not as a newer file.
                let stored = get_u32(base, 72).unwrap_or(0);
                let v1_ok = crc32fast::hash(&base[..72]) == stored;
                let v2_ok =
                    tail_len == FOOTER_LEN && crc32fast::hash(&tail[..FOOTER_LEN - 12]) == stored;
                if v1_ok || v2_ok {
                    return Err(Error::UnsupportedVersion {
                        path: path.to_path_buf(),
                        found: version,
                        supported: SEGMENT_VERSION,
                    });
                }
                return Err(corrupt(f, "footer checksum mismatch"));
            }
        };
        if footer_len > tail_len {
            return Err(corrupt(0, "file too short to be a segment"));
        }
        let footer = &tail[tail_len.saturating_sub(footer_len)..];
        let crc_at = footer_len.saturating_sub(12);
        if crc32fast::hash(&footer[..crc_at]) != get_u32(footer, crc_at).unwrap_or(0) {
            return Err(corrupt(
                file_len.saturating_sub(footer_len as u64),
                "footer checksum mismatch",
            ));
        }
        let extension = (version >= 2).then(|| {
            (
                get_u64(footer, 0).unwrap_or(0),
                get_u64(footer, 8).unwrap_or(0),
                get_u32(footer, 16).unwrap_or(0),
                get_u32(footer, 20).unwrap_or(0),
            )
        });
        let field = |at: usize| get_u64(base, at).unwrap_or(0);
        let field32 = |at: usize| get_u32(base, at).unwrap_or(0);
        Ok((
            version,
            Footer {
                block_index_offset: field(0),
                block_count: field32(8) as usize,
                conv_count: field32(12) as usize,
                message_count: field(16),
                logical_bytes: field(24),
                state_index_offset: field(32),
                state_block_count: field32(40) as usize,
                state_entry_count: u64::from(field32(44)),
                state_index_len: u64::from(field32(48)),
                dict_len: field32(52) as usize,
                dict_offset: field(56),
                index_crc: field32(64),
                extension,
            },
            tail.clone(),
        ))
    }
}

#[deny(clippy::arithmetic_side_effects)]
impl SegmentReader {
    /// Checks the segment in `file` (footer, state index and its checksum, dictionary) and
    /// keeps what every lookup needs. The block and conversation indexes of a version-2
    /// segment are read and checked at the first lookup that needs them (a version-1 segment,
    /// whose checksum covers every index at once, loads them here).
    pub fn open(path: &Path, file: Arc<dyn RandomAccessFile>) -> Result<Self> {
        let corrupt = |offset: u64, why: &str| Error::corruption(path, offset, why);
        let read =
            |offset: u64, len: usize| file.read_at(offset, len).map_err(|e| Error::io(path, e));
        let file_len = file.len();
        if file_len < (HEADER_LEN + FOOTER_V1_LEN) as u64 {
            return Err(corrupt(0, "file too short to be a segment"));
        }
        let header = read(0, HEADER_LEN)?;
        if get_u64(&header, 0) != Some(SEGMENT_MAGIC) {
            return Err(corrupt(0, "bad segment magic"));
        }
        let hints = get_u32(&header, HEADER_HINTS_AT).unwrap_or(0);
        let (version, footer, tail) = Footer::read(path, &*file, file_len)?;
        let footer_len = if footer.extension.is_some() {
            FOOTER_LEN
        } else {
            FOOTER_V1_LEN
        };
        let f = file_len.saturating_sub(footer_len as u64);
        let block_index_offset = footer.block_index_offset;
        let state_index_offset = footer.state_index_offset;
        let message_index_len = (footer.block_count as u64)
            .checked_mul(block_entries_len(version) as u64)
            .and_then(|b| {
                b.checked_add((footer.conv_count as u64).checked_mul(CONV_ENTRY_LEN as u64)?)
            });
        let state_fixed = (footer.state_block_count as u64).checked_mul(STATE_ENTRY_LEN as u64);
        let bounds_ok = block_index_offset >= HEADER_LEN as u64
            && message_index_len.and_then(|l| block_index_offset.checked_add(l))
                == Some(state_index_offset)
            && state_index_offset.checked_add(footer.state_index_len) == Some(f)
            && state_fixed.is_some_and(|l| l <= footer.state_index_len);
        if !bounds_ok {
            return Err(corrupt(f, "index bounds do not match the footer"));
        }
        // In bounds of the file (checked above), so these fit in memory-sized integers.
        let message_index = OnceLock::new();
        let (state_meta, message_index_crc) = match footer.extension {
            Some((_, _, crc, _)) => {
                let tail_at = file_len.saturating_sub(tail.len() as u64);
                let meta = match state_index_offset.checked_sub(tail_at) {
                    // The footer read took it all (no state, or little).
                    Some(within) => tail.slice(within as usize..),
                    None => read(
                        state_index_offset,
                        file_len.saturating_sub(state_index_offset) as usize,
                    )?,
                };
                if crc32fast::hash(&meta[..footer.state_index_len as usize]) != footer.index_crc {
                    return Err(corrupt(state_index_offset, "state index checksum mismatch"));
                }
                (meta, crc)
            }
            None => {
                let meta = read(
                    block_index_offset,
                    file_len.saturating_sub(block_index_offset) as usize,
                )?;
                let index_len = f.saturating_sub(block_index_offset) as usize;
                let crc = crc32fast::hash(&meta[..index_len]);
                if crc != footer.index_crc {
                    return Err(corrupt(block_index_offset, "index checksum mismatch"));
                }
                let split = state_index_offset.saturating_sub(block_index_offset) as usize;
                let _ = message_index.set(meta.slice(..split));
                // Checked above with the state index; never loaded again, so no checksum of
                // its own is needed.
                (meta.slice(split..), 0)
            }
        };
        let dict = if footer.dict_len == 0 {
            None
        } else {
            let at = footer.dict_offset;
            let end = at
                .checked_add(footer.dict_len as u64)
                .filter(|&e| e <= block_index_offset);
            if end.is_none() || at < HEADER_LEN as u64 {
                return Err(corrupt(f, "dictionary outside the data area"));
            }
            let raw = unpack(&read(at, footer.dict_len)?, None).map_err(|why| corrupt(at, why))?;
            Some(
                DictDecoder::shared(raw)
                    .ok_or_else(|| corrupt(at, "zstd rejects the dictionary"))?,
            )
        };
        let data_end = if footer.block_count > 0 || footer.state_block_count > 0 {
            block_index_offset
        } else {
            0
        };
        let (conversations, first_codec) = match footer.extension {
            Some((first, last, _, codec)) => {
                let conversations = (footer.conv_count > 0)
                    .then_some((ConversationId(first), ConversationId(last)));
                let first_codec = match codec {
                    NO_CODEC => None,
                    c => Some(u8::try_from(c).map_err(|_| corrupt(f, "bad first block codec"))?),
                };
                if first > last || first_codec.is_some() != (footer.block_count > 0) {
                    return Err(corrupt(f, "footer contradicts itself"));
                }
                (conversations, first_codec)
            }
            None => (None, None),
        };
        let mut reader = SegmentReader {
            path: path.to_path_buf(),
            file,
            file_len,
            version,
            state_meta,
            state_block_count: footer.state_block_count,
            state_keys_offset: footer.state_block_count.saturating_mul(STATE_ENTRY_LEN),
            footer_len,
            state_entry_count: footer.state_entry_count,
            message_index,
            message_index_offset: block_index_offset,
            message_index_crc,
            data_end,
            block_count: footer.block_count,
            conv_count: footer.conv_count,
            message_count: footer.message_count,
            logical_bytes: footer.logical_bytes,
            conversations,
            first_codec,
            hints,
            dict,
            index_loads: None,
            table: OnceLock::new(),
            partitions: None,
            pins: None,
            pinned: OnceLock::new(),
        };
        if let Some(index) = reader.message_index.get() {
            // Version 1: the indexes were read with the state index; check them now, and
            // take what the footer of version 2 records from them.
            reader.check_message_index(index)?;
            reader.conversations = (reader.conv_count > 0).then(|| {
                (
                    conv_entry(index, reader.block_count, 0).0,
                    conv_entry(
                        index,
                        reader.block_count,
                        reader.conv_count.saturating_sub(1),
                    )
                    .0,
                )
            });
            reader.first_codec = reader.read_first_block_codec()?;
        }
        reader.check_state_index(state_index_offset)?;
        Ok(reader)
    }

    /// Every state index entry points inside the data area, and first keys increase.
    fn check_state_index(&self, state_index_offset: u64) -> Result<()> {
        let corrupt = |offset: u64, why: &str| Error::corruption(&self.path, offset, why);
        let mut prev_key: Option<&[u8]> = None;
        for i in 0..self.state_block_count {
            let h = self.state_handle(i);
            let end = h.offset.checked_add(u64::from(h.len));
            let key = self.state_first_key(i);
            let at = state_index_offset.saturating_add(i.saturating_mul(STATE_ENTRY_LEN) as u64);
            if h.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > self.data_end) {
                return Err(corrupt(at, "state block handle outside the data area"));
            }
            match (key, prev_key) {
                (None, _) => return Err(corrupt(at, "bad state block key")),
                (Some(k), Some(p)) if k <= p => {
                    return Err(corrupt(at, "state blocks out of order"))
                }
                (Some(k), _) => prev_key = Some(k),
            }
        }
        Ok(())
    }

    /// Every block handle points inside the data area, and the conversation index agrees with
    /// the footer's bounds.
    fn check_message_index(&self, index: &[u8]) -> Result<()> {
        for i in 0..self.block_count {
            let h = block_handle_in(index, i);
            let end = h.offset.checked_add(u64::from(h.len));
            if h.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > self.data_end) {
                return Err(Error::corruption(
                    &self.path,
                    self.message_index_offset
                        .saturating_add(i.saturating_mul(BLOCK_ENTRY_LEN) as u64),
                    "block handle outside the data area",
                ));
            }
        }
        if self.version >= 3 {
            // Each block's logical size adds up to the footer's, and its rows to the
            // footer's message count: copies that trust the sizes copy what the footer says.
            let view = IndexView {
                index,
                blocks: self.block_count,
                convs: self.conv_count,
                has_block_sizes: true,
            };
            let (mut logical, mut rows) = (0u64, 0u64);
            for i in 0..self.block_count {
                logical =
                    logical.saturating_add(u64::from(view.block_logical_bytes(i).unwrap_or(0)));
                rows = rows.saturating_add(u64::from(view.block_rows(i)));
            }
            if logical != self.logical_bytes || rows != self.message_count {
                return Err(Error::corruption(
                    &self.path,
                    self.message_index_offset,
                    "block sizes disagree with the footer",
                ));
            }
        }
        if self.version >= 2 && self.conv_count > 0 {
            let first = conv_entry(index, self.block_count, 0).0;
            let last = conv_entry(index, self.block_count, self.conv_count.saturating_sub(1)).0;
            if self.conversations != Some((first, last)) {
                return Err(Error::corruption(
                    &self.path,
                    self.message_index_offset,
                    "conversation index disagrees with the footer",
                ));
            }
        }
        Ok(())
    }

    /// Reads and checks the block and conversation indexes.
    fn load_message_index(&self) -> Result<Bytes> {
        let len = self
            .block_count
            .saturating_mul(block_entries_len(self.version))
            .saturating_add(self.conv_count.saturating_mul(CONV_ENTRY_LEN));
        let index = self
            .file
            .read_at(self.message_index_offset, len)
            .map_err(|e| Error::io(&self.path, e))?;
        if index.len() != len || crc32fast::hash(&index) != self.message_index_crc {
            return Err(Error::corruption(
                &self.path,
                self.message_index_offset,
                "message index checksum mismatch",
            ));
        }
        self.check_message_index(&index)?;
        Ok(index)
    }

    /// Runs `f` on the block and conversation indexes: the loaded ones, or else ones read and
    /// checked for this call alone and dropped after it (a one-off pass, such as building a
    /// segment's conversation filter, that should not leave the indexes in memory).
    pub fn with_indexes<T>(&self, f: impl FnOnce(IndexView<'_>) -> T) -> Result<T> {
        Ok(f(self.load_indexes()?.view()))
    }

    /// The block and conversation indexes for one pass (a verification, a filter): the kept
    /// ones, or else read and checked now and dropped with the value returned.
    pub fn load_indexes(&self) -> Result<LoadedIndexes> {
        let index = match self.message_index.get() {
            Some(index) => index.clone(),
            None => self.load_message_index()?,
        };
        Ok(LoadedIndexes {
            index,
            blocks: self.block_count,
            convs: self.conv_count,
            has_block_sizes: self.version >= 3,
        })
    }

    /// Keeps the index partitions that lookups read in `cache`, filed under `segment` (the
    /// file's number, never reused).
    pub fn share_index_partitions(&mut self, cache: Arc<dyn IndexPartitionCache>, segment: u64) {
        self.partitions = Some(SharedPartitions { cache, segment });
    }

    /// Keeps the indexes whole, for lookups without a partition read, when `pins` grants
    /// their size (see [`IndexPins`]).
    pub fn pin_indexes_from(&mut self, pins: IndexPins) {
        self.pins = Some(pins);
    }

    /// How lookups reach the indexes. The first call reads them whole and checks them, then
    /// keeps them whole if a pin is granted, or else keeps their partition table alone.
    fn lookup(&self) -> Result<Lookup<'_>> {
        if let Some(index) = self.message_index.get() {
            return Ok(Lookup::Whole(index));
        }
        if let Some(table) = self.table.get() {
            return Ok(Lookup::Partitioned(table));
        }
        let index = self.load_message_index()?;
        if let Some(pin) = self.pins.as_ref().and_then(|p| p.grant(index.len())) {
            let mut pin = Some(pin);
            let len = index.len();
            let kept = self.message_index.get_or_init(|| {
                let _ = self.pinned.set(pin.take());
                if let Some(loads) = &self.index_loads {
                    loads.fetch_add(len as u64, Ordering::Relaxed);
                }
                index
            });
            // A racing lookup that kept them first: this pin is dropped, given back.
            return Ok(Lookup::Whole(kept));
        }
        Ok(Lookup::Partitioned(self.table_of(&index)))
    }

    /// The partition table, built at the first call from the whole index, read and checked.
    fn table(&self) -> Result<&PartitionTable> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let index = self.load_message_index()?;
        Ok(self.table_of(&index))
    }

    /// The partition table, built from `index` (checked) if there is none yet.
    fn table_of(&self, index: &[u8]) -> &PartitionTable {
        self.table.get_or_init(|| {
            let table =
                PartitionTable::of(index, self.block_count, self.conv_count, self.version >= 3);
            if let Some(loads) = &self.index_loads {
                loads.fetch_add(table.footprint() as u64, Ordering::Relaxed);
            }
            table
        })
    }

    /// Index partition `part`: from the shared cache, or read and checked against the
    /// checksum the table took of it.
    fn partition(&self, part: IndexPart) -> Result<Bytes> {
        let mut load = || self.read_partition(part);
        match &self.partitions {
            Some(shared) => shared.cache.get_or_load(shared.segment, part, &mut load),
            None => load(),
        }
    }

    /// Index partition `part`, not through the cache: a slice of the loaded indexes, or read
    /// from the file and checked against the checksum the partition table took of it.
    pub(crate) fn read_partition(&self, part: IndexPart) -> Result<Bytes> {
        let (at, len) = partition_span(part, self.block_count, self.conv_count, self.version >= 3)
            .ok_or_else(|| {
                Error::corruption(
                    &self.path,
                    self.message_index_offset,
                    "index partition out of range",
                )
            })?;
        if let Some(index) = self.message_index.get() {
            return index
                .get(at..at.saturating_add(len))
                .map(|_| index.slice(at..at.saturating_add(len)))
                .ok_or_else(|| {
                    Error::corruption(&self.path, self.message_index_offset, "index too short")
                });
        }
        let table = self.table()?;
        let offset = self.message_index_offset.saturating_add(at as u64);
        let bytes = self
            .file
            .read_at(offset, len)
            .map_err(|e| Error::io(&self.path, e))?;
        if bytes.len() != len || Some(crc32fast::hash(&bytes)) != table.crc(part) {
            return Err(Error::corruption(
                &self.path,
                offset,
                "index partition checksum mismatch",
            ));
        }
        Ok(bytes)
    }

    /// A cursor for one pass over the indexes in key order (a merge): it reads them a
    /// partition at a time, not through the cache, keeping the last one of each.
    pub fn index_cursor(&self) -> IndexCursor<'_> {
        IndexCursor::new(self)
    }

    /// The indexes, if they are kept whole.
    pub(crate) fn kept_indexes(&self) -> Option<IndexView<'_>> {
        self.message_index.get().map(|index| self.view_of(index))
    }

    /// The partition table (built at the first call: see `table`).
    pub(crate) fn partition_table(&self) -> Result<&PartitionTable> {
        self.table()
    }

    /// Block `i`'s index entry: from the kept indexes, or else from its partition.
    pub fn block_entry(&self, i: usize) -> Result<BlockEntry> {
        let missing = || Error::corruption(&self.path, 0, "block number out of range");
        if i >= self.block_count {
            return Err(missing());
        }
        if let Lookup::Whole(index) = self.lookup()? {
            return BlockEntry::decode(index, i).ok_or_else(missing);
        }
        let part = self.partition(IndexPart::Blocks((i / PARTITION_ENTRIES) as u32))?;
        BlockEntry::decode(&part, i % PARTITION_ENTRIES).ok_or_else(missing)
    }

    /// Whether the block and conversation indexes are in memory.
    pub fn indexes_loaded(&self) -> bool {
        self.message_index.get().is_some()
    }

    /// Adds the bytes of message indexes loaded from now on to `counter`.
    pub fn count_index_loads_in(&mut self, counter: Arc<AtomicU64>) {
        self.index_loads = Some(counter);
    }

    /// The segment format version of the file.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Reads the stored bytes (trailer included) of the block at `h`.
    fn read_stored(&self, h: BlockHandle) -> Result<Bytes> {
        self.file
            .read_at(h.offset, h.len as usize)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Reads the codec byte of the first message block (version 1, whose footer lacks it).
    fn read_first_block_codec(&self) -> Result<Option<u8>> {
        if self.block_count == 0 {
            return Ok(None);
        }
        let h = self.block_handle(0)?;
        if h.len < BLOCK_TRAILER_LEN as u32 {
            return Err(Error::corruption(
                &self.path,
                h.offset,
                "block shorter than its trailer",
            ));
        }
        let at = h.offset.saturating_add(u64::from(h.len)).saturating_sub(5);
        let byte = self
            .file
            .read_at(at, 1)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(byte.first().copied())
    }

    /// The codec byte of the first message block (see `docs/format-segment.md`), `None` when
    /// the segment has no message blocks.
    pub fn first_block_codec(&self) -> Option<u8> {
        self.first_codec
    }

    /// The file this segment was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages stored.
    pub fn message_count(&self) -> u64 {
        self.message_count
    }

    /// Whether the header says the blocks of several conversations are in a faster codec than
    /// the others (`HINT_FAST_SHARED_BLOCKS`; a hint, not checked).
    pub fn fast_shared_blocks(&self) -> bool {
        self.hints & HINT_FAST_SHARED_BLOCKS != 0
    }

    /// Logical (pre-encoding) bytes of the messages stored.
    pub fn logical_bytes(&self) -> u64 {
        self.logical_bytes
    }

    /// Bytes this reader keeps in memory while open: the state index and footer, and the
    /// block and conversation indexes once loaded. The dictionary is shared by the segments
    /// that use it and not counted here.
    pub fn resident_bytes(&self) -> usize {
        self.state_meta
            .len()
            .saturating_add(self.message_index.get().map_or(0, Bytes::len))
            .saturating_add(self.table.get().map_or(0, PartitionTable::footprint))
    }

    /// File size.
    pub fn file_bytes(&self) -> u64 {
        self.file_len
    }

    /// Number of blocks.
    pub fn block_count(&self) -> usize {
        self.block_count
    }

    /// Number of conversations.
    pub fn conversation_count(&self) -> usize {
        self.conv_count
    }

    /// The zstd dictionary this segment's blocks were compressed with, if any.
    pub fn dictionary(&self) -> Option<&Bytes> {
        self.dict.as_deref().map(DictDecoder::bytes)
    }

    /// Number of state blocks.
    pub fn state_block_count(&self) -> usize {
        self.state_block_count
    }

    /// Number of state entries (tombstones included).
    pub fn state_entry_count(&self) -> u64 {
        self.state_entry_count
    }

    /// Where state block `i` is. REQUIRES: `i < state_block_count()`.
    pub fn state_handle(&self, i: usize) -> BlockHandle {
        let at = i.saturating_mul(STATE_ENTRY_LEN);
        BlockHandle {
            offset: get_u64(&self.state_meta, at).unwrap_or(0),
            len: get_u32(&self.state_meta, at.saturating_add(8)).unwrap_or(0),
        }
    }

    /// The first key of state block `i`, or `None` if the index entry is malformed (checked
    /// for every block when the segment is opened).
    fn state_first_key(&self, i: usize) -> Option<&[u8]> {
        let at = i.saturating_mul(STATE_ENTRY_LEN);
        let pos = get_u32(&self.state_meta, at.saturating_add(12))? as usize;
        let area = self
            .state_meta
            .get(self.state_keys_offset..self.state_meta.len().saturating_sub(self.footer_len))?;
        let mut r = Reader::new(area.get(pos..)?);
        let len = r.len(MAX_KEY_LEN)?;
        r.bytes(len)
    }

    /// The state block that would hold `key`: the last one whose first key is not after it.
    pub fn find_state_block(&self, key: &[u8]) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.state_block_count);
        while lo < hi {
            let mid = lo.saturating_add(hi.saturating_sub(lo) / 2);
            if self.state_first_key(mid).unwrap_or(&[]) <= key {
                lo = mid.saturating_add(1);
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Reads, checks and decodes state block `i`.
    pub fn read_state_block(&self, i: usize) -> Result<StateBlock> {
        if i >= self.state_block_count {
            return Err(Error::corruption(
                &self.path,
                0,
                "state block number out of range",
            ));
        }
        let h = self.state_handle(i);
        let stored = self.read_stored(h)?;
        let body = unpack(&stored, self.dict.as_deref())
            .map_err(|why| Error::corruption(&self.path, h.offset, why))?;
        StateBlock::decode(body).map_err(|why| Error::corruption(&self.path, h.offset, why))
    }

    fn view_of<'a>(&self, index: &'a [u8]) -> IndexView<'a> {
        IndexView {
            index,
            blocks: self.block_count,
            convs: self.conv_count,
            has_block_sizes: self.version >= 3,
        }
    }

    /// The (conversation, id) of block `i`'s first row, as the index says.
    /// REQUIRES: `i < block_count()`.
    pub fn block_first_key(&self, i: usize) -> Result<(ConversationId, u64)> {
        let (conv, id) = self.block_entry(i)?.first;
        Ok((ConversationId(conv), id))
    }

    /// Where block `i` is. REQUIRES: `i < block_count()`.
    pub fn block_handle(&self, i: usize) -> Result<BlockHandle> {
        Ok(self.block_entry(i)?.handle)
    }

    /// The i-th conversation index entry: (conversation, first id, last id).
    pub fn conversation_entry(&self, i: usize) -> Result<(ConversationId, u64, u64)> {
        if i >= self.conv_count {
            return Err(Error::corruption(
                &self.path,
                0,
                "conversation entry out of range",
            ));
        }
        if let Lookup::Whole(index) = self.lookup()? {
            return Ok(self.view_of(index).conversation_entry(i));
        }
        let part = self.partition(IndexPart::Conversations((i / PARTITION_ENTRIES) as u32))?;
        Ok(conv_entry(&part, 0, i % PARTITION_ENTRIES))
    }

    /// The smallest and largest conversation with messages here (from the footer: no index
    /// is read).
    pub fn conversation_bounds(&self) -> Option<(ConversationId, ConversationId)> {
        self.conversations
    }

    /// The smallest and largest state key here (reads the last state block).
    pub fn state_bounds(&self) -> Result<Option<(Bytes, Bytes)>> {
        if self.state_block_count == 0 {
            return Ok(None);
        }
        let first = self.state_first_key(0).unwrap_or(&[]);
        let last_block = self.read_state_block(self.state_block_count.saturating_sub(1))?;
        let last = last_block
            .entries()
            .last()
            .map(|(k, _)| k.clone())
            .ok_or_else(|| Error::corruption(&self.path, 0, "empty state block"))?;
        Ok(Some((Bytes::copy_from_slice(first), last)))
    }

    /// The first and last id of `conv` in this segment.
    pub fn conversation_range(&self, conv: ConversationId) -> Result<Option<(u64, u64)>> {
        if self
            .conversations
            .is_none_or(|(lo, hi)| conv < lo || conv > hi)
        {
            return Ok(None);
        }
        let table = match self.lookup()? {
            Lookup::Whole(index) => return Ok(self.view_of(index).conversation_range(conv)),
            Lookup::Partitioned(table) => table,
        };
        let Some(p) = table.conv_partition_of(conv.0) else {
            return Ok(None);
        };
        let part = self.partition(IndexPart::Conversations(p as u32))?;
        Ok(conv_range_in_partition(&part, conv))
    }

    /// The block that holds (conv, id) if the segment has it: the last block whose first key is
    /// not after it.
    pub fn find_block(&self, conv: ConversationId, id: u64) -> Result<Option<usize>> {
        let table = match self.lookup()? {
            Lookup::Whole(index) => return Ok(self.view_of(index).find_block(conv, id)),
            Lookup::Partitioned(table) => table,
        };
        let key = (conv.0, id);
        let Some(p) = table.block_partition_of(key) else {
            return Ok(None);
        };
        let part = self.partition(IndexPart::Blocks(p as u32))?;
        Ok(block_in_partition(&part, p, key))
    }

    /// Reads, checks and decodes block `i`.
    pub fn read_block(&self, i: usize) -> Result<Block> {
        self.read_block_stored(i).map(|(_, b)| b)
    }

    /// Reads, checks and decodes block `i`; returns it as stored (trailer included) too.
    pub fn read_block_stored(&self, i: usize) -> Result<(Bytes, Block)> {
        self.read_block_stored_at(self.block_entry(i)?)
    }

    /// Reads, checks and decodes the block `entry` describes; returns it as stored too.
    pub fn read_block_stored_at(&self, entry: BlockEntry) -> Result<(Bytes, Block)> {
        let stored = self.read_stored(entry.handle)?;
        // Decoding checks the checksum.
        let block = self.decode_block_at(entry, &stored)?;
        Ok((stored, block))
    }

    /// Reads block `i` as stored (trailer included) and checks its checksum, without
    /// decompressing or decoding it: what a copy into another segment needs.
    pub fn read_block_checked(&self, i: usize) -> Result<Bytes> {
        self.read_block_checked_at(self.block_entry(i)?.handle)
    }

    /// Reads the block at `h` as stored and checks its checksum (see `read_block_checked`).
    pub fn read_block_checked_at(&self, h: BlockHandle) -> Result<Bytes> {
        let stored = self.read_stored(h)?;
        self.check_stored_at(h, &stored)?;
        Ok(stored)
    }

    /// Reads `len` bytes at `offset`, or fewer if the file ends first: several blocks read
    /// at once by a reader that goes through them in order (see
    /// [`block_in_span`](Self::block_in_span)).
    pub fn read_span(&self, offset: u64, len: usize) -> Result<Bytes> {
        let left = self.file_len.saturating_sub(offset);
        let len = len.min(usize::try_from(left).unwrap_or(usize::MAX));
        self.file
            .read_at(offset, len)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The block at `h` as stored, sliced out of `span` (bytes [`read_span`](Self::read_span)
    /// read at `span_offset`) without a copy; `None` if the span does not hold all of it.
    /// Not checked: [`decode_block_at`](Self::decode_block_at) checks what it decodes, and
    /// [`check_stored_at`](Self::check_stored_at) what is copied as stored.
    pub fn block_in_span(h: BlockHandle, span: &Bytes, span_offset: u64) -> Option<Bytes> {
        let start = h.offset.checked_sub(span_offset)?;
        let end = start.checked_add(u64::from(h.len))?;
        if end > span.len() as u64 {
            return None;
        }
        Some(span.slice(usize::try_from(start).ok()?..usize::try_from(end).ok()?))
    }

    /// Checks the checksum of the block at `h`, `stored` as read (the check
    /// [`read_block_checked_at`](Self::read_block_checked_at) makes).
    pub fn check_stored_at(&self, h: BlockHandle, stored: &[u8]) -> Result<()> {
        check_stored(stored)
            .map(|_| ())
            .map_err(|why| Error::corruption(&self.path, h.offset, why))
    }

    /// Decodes block `i` from `stored` (as read by
    /// [`read_block_checked`](Self::read_block_checked)), checking it all over again.
    pub fn decode_block(&self, i: usize, stored: &Bytes) -> Result<Block> {
        self.decode_block_at(self.block_entry(i)?, stored)
    }

    /// Decodes the block `entry` describes from `stored`, checking it all over again.
    pub fn decode_block_at(&self, entry: BlockEntry, stored: &Bytes) -> Result<Block> {
        let at = entry.handle.offset;
        let body = unpack(stored, self.dict.as_deref())
            .map_err(|why| Error::corruption(&self.path, at, why))?;
        let block = Block::decode(body).map_err(|why| Error::corruption(&self.path, at, why))?;
        if block.rows() as u32 != entry.rows {
            return Err(Error::corruption(
                &self.path,
                at,
                "block row count disagrees with the index",
            ));
        }
        Ok(block)
    }
}

/// A segment's block and conversation indexes read whole, held by whoever read them.
#[derive(Clone, Debug)]
pub struct LoadedIndexes {
    index: Bytes,
    blocks: usize,
    convs: usize,
    has_block_sizes: bool,
}

impl LoadedIndexes {
    /// Lookups in them.
    pub fn view(&self) -> IndexView<'_> {
        IndexView {
            index: &self.index,
            blocks: self.blocks,
            convs: self.convs,
            has_block_sizes: self.has_block_sizes,
        }
    }
}

/// A segment's block and conversation indexes, loaded: lookups that cannot fail.
#[derive(Clone, Copy, Debug)]
pub struct IndexView<'a> {
    index: &'a [u8],
    blocks: usize,
    convs: usize,
    /// Whether the index ends with the block sizes (version 3 on).
    has_block_sizes: bool,
}

#[deny(clippy::arithmetic_side_effects)]
impl IndexView<'_> {
    /// The (conversation, id) of block `i`'s first row. REQUIRES: `i < block_count()`.
    pub fn block_first_key(&self, i: usize) -> (ConversationId, u64) {
        let (conv, id) = block_entry(self.index, i);
        (ConversationId(conv), id)
    }

    /// Where block `i` is. REQUIRES: `i < block_count()`.
    pub fn block_handle(&self, i: usize) -> BlockHandle {
        block_handle_in(self.index, i)
    }

    /// The i-th conversation index entry: (conversation, first id, last id).
    pub fn conversation_entry(&self, i: usize) -> (ConversationId, u64, u64) {
        conv_entry(self.index, self.blocks, i)
    }

    /// The number of rows in block `i`. REQUIRES: `i < block_count()`.
    pub fn block_rows(&self, i: usize) -> u32 {
        get_u32(
            self.index,
            i.saturating_mul(BLOCK_ENTRY_LEN).saturating_add(28),
        )
        .unwrap_or(0)
    }

    /// The logical size of block `i`'s rows (what the segment counts in `logical_bytes`), if
    /// the segment records it (version 3 on). REQUIRES: `i < block_count()`.
    pub fn block_logical_bytes(&self, i: usize) -> Option<u32> {
        if !self.has_block_sizes {
            return None;
        }
        let at = (self.blocks.saturating_mul(BLOCK_ENTRY_LEN))
            .saturating_add(self.convs.saturating_mul(CONV_ENTRY_LEN))
            .saturating_add(i.saturating_mul(BLOCK_SIZE_ENTRY_LEN));
        get_u32(self.index, at)
    }

    /// The first and last id of `conv` in the segment.
    pub fn conversation_range(&self, conv: ConversationId) -> Option<(u64, u64)> {
        let at = search_sorted(self.convs, conv.0, |i| conv_key(self.index, self.blocks, i))?;
        let (_, first, last) = self.conversation_entry(at);
        Some((first, last))
    }

    /// The last block whose first key is not after (conv, id).
    pub fn find_block(&self, conv: ConversationId, id: u64) -> Option<usize> {
        last_block_not_after(self.index, self.blocks, (conv.0, id))
    }
}

/// Bytes of the message index per block: its block index entry, and from version 3 on its
/// entry in the block sizes.
#[deny(clippy::arithmetic_side_effects)]
fn block_entries_len(version: u32) -> usize {
    if version >= 3 {
        BLOCK_ENTRY_LEN + BLOCK_SIZE_ENTRY_LEN
    } else {
        BLOCK_ENTRY_LEN
    }
}

/// The last of the first `n` entries of a block index (or partition) whose first key is not
/// after `key`.
#[deny(clippy::arithmetic_side_effects)]
pub(crate) fn last_block_not_after(index: &[u8], n: usize, key: (u64, u64)) -> Option<usize> {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo.saturating_add(hi.saturating_sub(lo) / 2);
        if block_entry(index, mid) <= key {
            lo = mid.saturating_add(1);
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1)
}

/// Block index entry `i`'s first key, from the loaded message index.
#[deny(clippy::arithmetic_side_effects)]
fn block_entry(index: &[u8], i: usize) -> (u64, u64) {
    let at = i.saturating_mul(BLOCK_ENTRY_LEN);
    (
        get_u64(index, at).unwrap_or(0),
        get_u64(index, at.saturating_add(8)).unwrap_or(0),
    )
}

/// Block index entry `i`'s location, from the loaded message index.
#[deny(clippy::arithmetic_side_effects)]
fn block_handle_in(index: &[u8], i: usize) -> BlockHandle {
    let at = i.saturating_mul(BLOCK_ENTRY_LEN);
    BlockHandle {
        offset: get_u64(index, at.saturating_add(16)).unwrap_or(0),
        len: get_u32(index, at.saturating_add(24)).unwrap_or(0),
    }
}

/// Interpolation steps `search_sorted` takes before it falls back to halving.
const INTERPOLATION_STEPS: usize = 4;
/// Ranges this small are searched by halving at once.
const INTERPOLATE_ABOVE: usize = 16;

/// The position of `target` among the strictly increasing keys `key(0)..key(n - 1)`, if it is
/// there. Guesses the position from the key first, a few times, then halves what is left.
/// Conversation ids are spread about evenly over their range (counters, or random 64-bit
/// ids), so the first guess lands on or next to the entry: a lookup in a 500 000-entry
/// conversation index touches ~3 entries (two of them the range's ends, which stay cached)
/// instead of ~19 scattered ones. Skewed ids cost at most `INTERPOLATION_STEPS` probes more
/// than halving alone. Keys out of order (a damaged index) give a wrong answer or none, never
/// a panic or an endless loop.
// Reached from the compaction thread and the writer: no arithmetic that can overflow, even
// on keys out of order.
#[deny(clippy::arithmetic_side_effects)]
pub(crate) fn search_sorted(n: usize, target: u64, key: impl Fn(usize) -> u64) -> Option<usize> {
    let (mut lo, mut hi) = (0usize, n);
    for _ in 0..INTERPOLATION_STEPS {
        let last_at = hi.saturating_sub(1);
        if hi.saturating_sub(lo) <= INTERPOLATE_ABOVE {
            break;
        }
        let (first, last) = (key(lo), key(last_at));
        if target < first || target > last {
            return None;
        }
        let (Some(from_first), Some(key_span)) =
            (target.checked_sub(first), last.checked_sub(first))
        else {
            break;
        };
        if key_span == 0 {
            break;
        }
        // `first <= target <= last`, so the offset is at most `last_at - lo`.
        let span = last_at.saturating_sub(lo);
        let offset = u128::from(from_first)
            .saturating_mul(span as u128)
            .checked_div(u128::from(key_span))
            .unwrap_or(0);
        let guess = lo.saturating_add(usize::try_from(offset).unwrap_or(span).min(span));
        match key(guess).cmp(&target) {
            std::cmp::Ordering::Equal => return Some(guess),
            std::cmp::Ordering::Less => lo = guess.saturating_add(1),
            std::cmp::Ordering::Greater => hi = guess,
        }
    }
    while lo < hi {
        let mid = lo.saturating_add(hi.saturating_sub(lo) / 2);
        match key(mid).cmp(&target) {
            std::cmp::Ordering::Equal => return Some(mid),
            std::cmp::Ordering::Less => lo = mid.saturating_add(1),
            std::cmp::Ordering::Greater => hi = mid,
        }
    }
    None
}

/// The conversation of index entry `i` alone (see `conv_entry`).
#[deny(clippy::arithmetic_side_effects)]
pub(crate) fn conv_key(index: &[u8], blocks: usize, i: usize) -> u64 {
    get_u64(
        index,
        blocks
            .saturating_mul(BLOCK_ENTRY_LEN)
            .saturating_add(i.saturating_mul(CONV_ENTRY_LEN)),
    )
    .unwrap_or(0)
}

/// Conversation index entry `i`, from the loaded message index of a segment of `blocks` blocks.
#[deny(clippy::arithmetic_side_effects)]
pub(crate) fn conv_entry(index: &[u8], blocks: usize, i: usize) -> (ConversationId, u64, u64) {
    let at = blocks
        .saturating_mul(BLOCK_ENTRY_LEN)
        .saturating_add(i.saturating_mul(CONV_ENTRY_LEN));
    (
        ConversationId(conv_key(index, blocks, i)),
        get_u64(index, at.saturating_add(8)).unwrap_or(0),
        get_u64(index, at.saturating_add(16)).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::index_partitions::IndexPins;
    use crate::types::{MessageId, MessageKind, UserId};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct VecFile(Arc<Mutex<Vec<u8>>>);

    impl WritableFile for VecFile {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn msg(conv: u64, id: u64) -> Message {
        Message {
            conversation: ConversationId(conv),
            id: MessageId(id),
            sender: UserId(conv * 10 + id % 4),
            timestamp_ms: 1_700_000_000_000 + id * 731,
            kind: MessageKind::Normal,
            content: Bytes::from(format!(
                "conversation {conv} says hello for the {id}th time"
            )),
            attachment: None,
            reply_to: None,
            mentions: Vec::new(),
            edited_ms: None,
        }
    }

    fn build(msgs: &[Message], block_bytes: usize) -> (Bytes, SegmentSummary) {
        let file = VecFile::default();
        let mut w = SegmentWriter::new(Box::new(file.clone()), Compression::Lz4, block_bytes);
        for m in msgs {
            assert!(w.add(m).unwrap());
        }
        let summary = w.finish().unwrap();
        let data = file.0.lock().unwrap().clone();
        assert_eq!(summary.file_bytes, data.len() as u64);
        (Bytes::from(data), summary)
    }

    fn sample() -> Vec<Message> {
        let mut v = Vec::new();
        for conv in [1u64, 2, 5, 1000] {
            for id in 1..=(conv * 7 % 200 + 3) {
                v.push(msg(conv, id));
            }
        }
        v
    }

    #[test]
    fn segment_round_trips_across_block_boundaries() {
        let msgs = sample();
        let (data, summary) = build(&msgs, 600);
        assert!(
            summary.blocks > 5,
            "want several blocks, got {}",
            summary.blocks
        );
        let seg = SegmentReader::open(Path::new("t.seg"), Arc::new(data)).unwrap();
        assert_eq!(seg.message_count(), msgs.len() as u64);
        assert_eq!(seg.conversation_count(), 4);
        for conv in [1u64, 2, 5, 1000] {
            let want: Vec<&Message> = msgs.iter().filter(|m| m.conversation.0 == conv).collect();
            let (first, last) = seg
                .conversation_range(ConversationId(conv))
                .unwrap()
                .unwrap();
            assert_eq!((first, last), (1, want.len() as u64));
            // Every id is found in the block the index points to.
            for m in &want {
                let b = seg.find_block(m.conversation, m.id.0).unwrap().unwrap();
                let mut got = Vec::new();
                seg.read_block(b)
                    .unwrap()
                    .collect(m.conversation, m.id.0, m.id.0, &mut got);
                assert_eq!(got, vec![(*m).clone()]);
            }
        }
        assert_eq!(seg.conversation_range(ConversationId(3)).unwrap(), None);
        assert_eq!(seg.conversation_range(ConversationId(0)).unwrap(), None);
        assert_eq!(seg.find_block(ConversationId(0), 1).unwrap(), None);
    }

    /// A message index larger than the slice the writer hands to the file at a time is
    /// written across several slices, and its checksum covers all of them.
    #[test]
    fn a_message_index_written_in_slices_reads_back_whole() {
        let convs = 3 * INDEX_SPILL_BYTES as u64 / CONV_ENTRY_LEN as u64;
        let msgs: Vec<Message> = (1..=convs)
            .flat_map(|conv| (1..=conv % 3 + 1).map(move |id| msg(conv, id)))
            .collect();
        let (data, summary) = build(&msgs, 4096);
        let seg = SegmentReader::open(Path::new("t.seg"), Arc::new(data.clone())).unwrap();
        assert_eq!(seg.conversation_count() as u64, convs);
        assert_eq!(seg.block_count() as u64, summary.blocks);
        for conv in (1..=convs).step_by(997).chain([convs]) {
            assert_eq!(
                seg.conversation_range(ConversationId(conv)).unwrap(),
                Some((1, conv % 3 + 1))
            );
            let b = seg.find_block(ConversationId(conv), 1).unwrap().unwrap();
            let mut got = Vec::new();
            seg.read_block(b)
                .unwrap()
                .collect(ConversationId(conv), 1, 1, &mut got);
            assert_eq!(got, vec![msg(conv, 1)]);
        }
        // One flipped bit in the index's last slice fails its checksum.
        let (start, end) = message_index_span(&data);
        assert!(end - start > 2 * INDEX_SPILL_BYTES as u64);
        let mut bad = data.to_vec();
        bad[end as usize - 3] ^= 0x10;
        let seg = SegmentReader::open(Path::new("t.seg"), Arc::new(Bytes::from(bad))).unwrap();
        match seg.conversation_range(ConversationId(1)) {
            Err(Error::Corruption { reason, .. }) => {
                assert!(reason.contains("message index"), "{reason}")
            }
            other => panic!("expected a checksum error, got {other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn search_sorted_finds_what_a_model_holds(
            keys in proptest::collection::btree_set(proptest::prelude::any::<u64>(), 0..300),
            dense_from in 0u64..1000,
            dense_len in 0usize..300,
            skew in 1u32..40,
            probes in proptest::collection::vec(proptest::prelude::any::<u64>(), 1..50),
        ) {
            let dense: std::collections::BTreeSet<u64> =
                (0..dense_len as u64).map(|i| dense_from + i).collect();
            // Keys crowded at the low end of a wide range: the worst case for guessing.
            let skewed: std::collections::BTreeSet<u64> =
                (0..200u64).map(|i| i.pow(skew.min(8)) + u64::from(skew)).collect();
            for set in [&keys, &dense, &skewed] {
                let sorted: Vec<u64> = set.iter().copied().collect();
                let mut targets = probes.clone();
                targets.extend(sorted.iter().copied());
                targets.extend(sorted.iter().map(|k| k.wrapping_add(1)));
                for t in targets {
                    let want = sorted.binary_search(&t).ok();
                    let got = search_sorted(sorted.len(), t, |i| sorted[i]);
                    proptest::prop_assert_eq!(got, want, "target {}", t);
                }
            }
        }

        #[test]
        fn search_sorted_survives_keys_out_of_order(
            keys in proptest::collection::vec(proptest::prelude::any::<u64>(), 0..200),
            target in proptest::prelude::any::<u64>(),
        ) {
            if let Some(i) = search_sorted(keys.len(), target, |i| keys[i]) {
                proptest::prop_assert_eq!(keys[i], target);
            }
        }
    }

    #[test]
    fn the_header_hints_shared_blocks_only_in_another_codec_and_only_before_writing() {
        let open = |codec: Compression, shared: Option<Compression>, rows_before: u64| {
            let file = VecFile::default();
            let mut w = SegmentWriter::new(Box::new(file.clone()), codec, 1000);
            for id in 1..=rows_before {
                assert!(w.add(&msg(7, id)).unwrap());
            }
            if let Some(c) = shared {
                w.store_shared_blocks_with(c);
            }
            assert!(w.add(&msg(8, 1)).unwrap());
            w.finish().unwrap();
            let data = Bytes::from(file.0.lock().unwrap().clone());
            SegmentReader::open(Path::new("t.seg"), Arc::new(data))
                .unwrap()
                .fast_shared_blocks()
        };
        let zstd = Compression::Zstd(3);
        assert!(open(zstd, Some(Compression::Lz4), 0));
        assert!(open(Compression::None, Some(Compression::Lz4), 100));
        assert!(!open(zstd, None, 0));
        assert!(!open(zstd, Some(zstd), 0));
        // Over a megabyte of raw rows: the header has left the writer, unmarked.
        assert!(!open(Compression::None, Some(Compression::Lz4), 40_000));
    }

    #[test]
    fn shared_blocks_can_take_another_codec_than_single_conversation_blocks() {
        // One busy conversation filling several blocks, then quiet ones sharing blocks.
        let mut msgs: Vec<Message> = (1..=120).map(|id| msg(7, id)).collect();
        for conv in 100..160u64 {
            msgs.extend((1..=conv % 3 + 1).map(|id| msg(conv, id)));
        }
        let file = VecFile::default();
        let mut w = SegmentWriter::new(Box::new(file.clone()), Compression::Zstd(3), 1000);
        w.store_shared_blocks_with(Compression::None);
        for m in &msgs {
            assert!(w.add(m).unwrap());
        }
        w.finish().unwrap();
        let data = Bytes::from(file.0.lock().unwrap().clone());
        let seg = SegmentReader::open(Path::new("t.seg"), Arc::new(data)).unwrap();
        let (mut single, mut shared) = (0, 0);
        for b in 0..seg.block_count() {
            let (stored, block) = seg.read_block_stored(b).unwrap();
            let codec = stored_codec(&stored);
            if block.runs().len() > 1 {
                shared += 1;
                assert_eq!(codec, Some(crate::format::block::CODEC_NONE), "block {b}");
            } else if block.rows() >= 10 {
                // (A block of one quiet conversation may be too small to compress.)
                single += 1;
                assert_eq!(codec, Some(crate::format::block::CODEC_ZSTD), "block {b}");
            }
        }
        assert!(
            single >= 3 && shared >= 2,
            "{single} single, {shared} shared"
        );
        // The footer records the first block's codec: the busy conversation's, here; the
        // header says that shared blocks are in another.
        assert_eq!(
            seg.first_block_codec(),
            Some(crate::format::block::CODEC_ZSTD)
        );
        assert!(seg.fast_shared_blocks());
        let mut got = Vec::new();
        for b in 0..seg.block_count() {
            let block = seg.read_block(b).unwrap();
            for run in block.runs() {
                block.collect(
                    run.conversation,
                    run.first_id,
                    run.first_id + u64::from(run.len) - 1,
                    &mut got,
                );
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn a_block_at_least_half_full_ends_where_a_conversation_ends() {
        // ~53 estimated bytes per row against 1000-byte blocks.
        let mut msgs: Vec<Message> = (1..=12).map(|id| msg(1, id)).collect();
        msgs.push(msg(2, 1));
        msgs.extend((1..=5).map(|id| msg(3, id)));
        msgs.push(msg(4, 1));
        let (data, _) = build(&msgs, 1000);
        let seg = SegmentReader::open(Path::new("t.seg"), Arc::new(data)).unwrap();
        let block = |c: u64, id: u64| seg.find_block(ConversationId(c), id).unwrap().unwrap();
        // Conversation 1 filled more than half a block: conversation 2 starts the next one, so
        // the newest rows of 1 share their block with nobody after them.
        assert_eq!(block(1, 12), 0);
        assert_eq!(block(2, 1), 1);
        // Below half, conversations keep sharing a block.
        assert_eq!(block(3, 1), 1);
        assert_eq!(block(4, 1), 1);
        assert_eq!(seg.block_count(), 2);
    }

    #[test]
    fn state_entries_round_trip_after_messages() {
        let file = VecFile::default();
        let mut w = SegmentWriter::new(Box::new(file.clone()), Compression::Zstd(3), 4096);
        for m in &sample()[..50] {
            assert!(w.add(m).unwrap());
        }
        let keys: Vec<Vec<u8>> = (0..2000u32)
            .map(|i| format!("U{i:08}").into_bytes())
            .collect();
        for (i, k) in keys.iter().enumerate() {
            let v = (i % 7 != 0).then(|| format!("value {i}").into_bytes());
            assert!(w.add_state(k, v.as_deref()).unwrap());
        }
        assert!(
            !w.add_state(b"A", None).unwrap(),
            "out of order state key accepted"
        );
        assert!(
            !w.add(&msg(5000, 1)).unwrap(),
            "message accepted after state"
        );
        let summary = w.finish().unwrap();
        assert_eq!(summary.state_entries, 2000);
        let data = Bytes::from(file.0.lock().unwrap().clone());
        let seg = SegmentReader::open(Path::new("s.seg"), Arc::new(data)).unwrap();
        assert!(seg.state_block_count() > 1);
        assert_eq!(seg.state_entry_count(), 2000);
        for (i, k) in keys.iter().enumerate() {
            let b = seg.find_state_block(k).unwrap();
            let got = seg.read_state_block(b).unwrap().get(k);
            let want = (i % 7 != 0).then(|| Bytes::from(format!("value {i}")));
            assert_eq!(got, Some(want), "key {i}");
        }
        assert_eq!(seg.find_state_block(b"A"), None);
        let last = seg.find_state_block(b"Z").unwrap();
        assert_eq!(seg.read_state_block(last).unwrap().get(b"Z"), None);
        // Messages are still there.
        assert_eq!(seg.message_count(), 50);
    }

    #[test]
    fn stored_blocks_are_copied_as_they_are_and_checked_for_order() {
        let msgs = sample();
        let (data, _) = build(&msgs, 600);
        let src = SegmentReader::open(Path::new("src.seg"), Arc::new(data)).unwrap();
        // Rows of conversation 1 before the copies, then every block of the source from the
        // one holding conversation 2 on, then a row after them.
        let first_copied = src.find_block(ConversationId(2), 1).unwrap().unwrap();
        let (stored, block) = src.read_block_stored(first_copied).unwrap();
        assert_eq!(block.runs()[0].conversation, ConversationId(2));
        let file = VecFile::default();
        let mut w = SegmentWriter::new(Box::new(file.clone()), Compression::Lz4, 600);
        let before: Vec<&Message> = msgs.iter().filter(|m| m.conversation.0 == 1).collect();
        for m in &before {
            assert!(w.add(m).unwrap());
        }
        let mut copied = Vec::new();
        for b in first_copied..src.block_count() {
            let (stored, block) = src.read_block_stored(b).unwrap();
            assert_eq!(
                crate::format::block::stored_codec(&stored),
                Some(1),
                "this sample compresses with LZ4"
            );
            assert!(w.add_stored_block(&stored, &block).unwrap());
            block.collect_all(&mut copied);
        }
        // The same block again: its ids are not after what was added.
        assert!(!w.add_stored_block(&stored, &block).unwrap());
        let after = msg(2000, 1);
        assert!(w.add(&after).unwrap());
        let summary = w.finish().unwrap();
        let data = Bytes::from(file.0.lock().unwrap().clone());
        let out = SegmentReader::open(Path::new("out.seg"), Arc::new(data)).unwrap();
        let mut all = Vec::new();
        for b in 0..out.block_count() {
            out.read_block(b).unwrap().collect_all(&mut all);
        }
        let mut want: Vec<Message> = before.into_iter().cloned().collect();
        want.extend(copied);
        want.push(after);
        assert_eq!(all, want);
        assert_eq!(summary.messages, want.len() as u64);
        let (direct, direct_summary) = build(&want, 600);
        assert_eq!(summary.logical_bytes, direct_summary.logical_bytes);
        assert!(!direct.is_empty());
        for conv in [1u64, 2, 5, 1000, 2000] {
            let n = want.iter().filter(|m| m.conversation.0 == conv).count() as u64;
            assert_eq!(
                out.conversation_range(ConversationId(conv)).unwrap(),
                Some((1, n))
            );
        }
    }

    #[test]
    fn a_stored_block_that_does_not_continue_its_conversation_is_refused() {
        let msgs = sample();
        let (data, _) = build(&msgs, 600);
        let src = SegmentReader::open(Path::new("src.seg"), Arc::new(data)).unwrap();
        // A block starting inside conversation 5 (38 rows, several blocks), past id 2.
        let (stored, block) = (0..src.block_count())
            .map(|b| src.read_block_stored(b).unwrap())
            .find(|(_, b)| {
                b.runs()[0].conversation == ConversationId(5) && b.runs()[0].first_id > 2
            })
            .unwrap();
        let mut w = SegmentWriter::new(Box::new(VecFile::default()), Compression::Lz4, 600);
        assert!(w.add(&msg(5, 1)).unwrap());
        assert!(
            !w.add_stored_block(&stored, &block).unwrap(),
            "a gap in the ids"
        );
        // Nothing was added: the next row still continues at id 2.
        assert!(w.add(&msg(5, 2)).unwrap());
    }

    #[test]
    fn out_of_order_rows_are_refused() {
        let mut w = SegmentWriter::new(Box::new(VecFile::default()), Compression::None, 4096);
        assert!(w.add(&msg(2, 1)).unwrap());
        assert!(!w.add(&msg(2, 3)).unwrap());
        assert!(!w.add(&msg(1, 1)).unwrap());
        assert!(w.add(&msg(2, 2)).unwrap());
    }

    #[test]
    fn a_flipped_bit_anywhere_is_reported_as_corruption() {
        let msgs = sample();
        let (data, _) = build(&msgs[..60], 500);
        for byte in 0..data.len() {
            let mut bad = data.to_vec();
            bad[byte] ^= 0x04;
            let outcome = SegmentReader::open(Path::new("x.seg"), Arc::new(Bytes::from(bad)))
                .and_then(|s| {
                    for b in 0..s.block_count() {
                        s.read_block(b)?;
                    }
                    Ok(())
                });
            match outcome {
                Err(e) if e.is_corruption() => {}
                // The header version is not read (the footer version rules), and its hints
                // change no read.
                Ok(()) if (8..16).contains(&byte) => {}
                // A flipped version byte in the footer is caught by the footer checksum.
                other => panic!("byte {byte}: {other:?}"),
            }
        }
    }

    /// A file that records the byte ranges read from it.
    #[derive(Debug)]
    struct RecordingFile {
        data: Bytes,
        reads: Mutex<Vec<(u64, usize)>>,
    }

    impl RandomAccessFile for RecordingFile {
        fn len(&self) -> u64 {
            self.data.len() as u64
        }
        fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
            self.reads
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .push((offset, len));
            self.data.read_at(offset, len)
        }
    }

    /// Where the message indexes of `data` (version 2) start and end.
    fn message_index_span(data: &[u8]) -> (u64, u64) {
        let footer = &data[data.len() - FOOTER_V1_LEN..];
        (get_u64(footer, 0).unwrap(), get_u64(footer, 32).unwrap())
    }

    #[test]
    fn opening_reads_no_message_index_and_lookups_read_one_partition_each() {
        let msgs = sample();
        let (data, summary) = build(&msgs, 600);
        let (start, end) = message_index_span(&data);
        let file = Arc::new(RecordingFile {
            data: data.clone(),
            reads: Mutex::new(Vec::new()),
        });
        let seg = SegmentReader::open(Path::new("t.seg"), file.clone()).unwrap();
        let touches_index = |reads: &[(u64, usize)]| {
            reads
                .iter()
                .filter(|&&(at, len)| at < end && at + len as u64 > start)
                .count()
        };
        assert_eq!(touches_index(&file.reads.lock().unwrap()), 0);
        assert!(!seg.indexes_loaded());
        let open_resident = seg.resident_bytes();
        // What the footer answers needs no index.
        assert_eq!(
            seg.conversation_bounds(),
            Some((ConversationId(1), ConversationId(1000)))
        );
        assert_eq!(seg.first_block_codec(), Some(1));
        assert_eq!(seg.block_count() as u64, summary.blocks);
        assert_eq!(
            seg.conversation_range(ConversationId(1_000_000)).unwrap(),
            None
        );
        assert!(!seg.indexes_loaded());
        // The first lookup reads both indexes whole, once, to check them and build the
        // partition table; it and every later lookup then read the one partition it needs.
        assert_eq!(
            seg.conversation_range(ConversationId(5)).unwrap(),
            Some((1, 38))
        );
        assert!(seg.find_block(ConversationId(1000), 1).unwrap().is_some());
        let reads = file.reads.lock().unwrap().clone();
        let whole = reads
            .iter()
            .filter(|&&(at, len)| (at, at + len as u64) == (start, end))
            .count();
        assert_eq!(whole, 1, "{reads:?}");
        assert_eq!(touches_index(&reads), 3, "{reads:?}");
        assert!(!seg.indexes_loaded());
        let table = seg.resident_bytes() - open_resident;
        assert!(
            table > 0 && table < 300,
            "the partition table ({table} bytes) is resident, not the indexes"
        );
    }

    /// A reader granted a pin keeps its indexes whole at the first lookup (and reads no
    /// partition after it), and gives the grant back when dropped; one refused keeps the
    /// partition table alone.
    #[test]
    fn indexes_are_kept_whole_when_a_pin_is_granted() {
        let (data, _) = build(&sample(), 600);
        let (start, end) = message_index_span(&data);
        let len = (end - start) as usize;
        let pins = IndexPins::new(len as u64 + 10);
        let open = |name: &str| {
            let mut seg = SegmentReader::open(Path::new(name), Arc::new(data.clone())).unwrap();
            seg.pin_indexes_from(pins.clone());
            seg
        };
        let kept = open("kept.seg");
        let refused = open("refused.seg");
        let before = kept.resident_bytes();
        assert_eq!(
            kept.conversation_range(ConversationId(5)).unwrap(),
            Some((1, 38))
        );
        assert!(kept.indexes_loaded());
        assert_eq!(kept.resident_bytes() - before, len);
        assert_eq!(pins.held(), len as u64);
        assert_eq!(
            refused.conversation_range(ConversationId(5)).unwrap(),
            Some((1, 38))
        );
        assert!(!refused.indexes_loaded(), "no room left under the limit");
        drop(kept);
        assert_eq!(pins.held(), 0);
    }

    /// A file whose bytes can be damaged after it is opened.
    #[derive(Debug)]
    struct DamageableFile(Mutex<Vec<u8>>);

    impl RandomAccessFile for DamageableFile {
        fn len(&self) -> u64 {
            self.0.lock().map_or(0, |d| d.len() as u64)
        }
        fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
            let data = self
                .0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            Bytes::copy_from_slice(&data).read_at(offset, len)
        }
    }

    /// Lookups through partitions answer what the whole index answers, for every conversation
    /// and block and for keys between and around them, and read one partition each; a
    /// partition damaged after the table was built is reported with its offset.
    #[test]
    fn partitioned_lookups_agree_with_the_whole_index() {
        let mut msgs = Vec::new();
        for conv in 1..=700u64 {
            for id in 1..=(conv % 3 + 1) {
                msgs.push(msg(conv * 4, id));
            }
        }
        let (data, summary) = build(&msgs, 256);
        assert!(
            summary.blocks > 2 * PARTITION_ENTRIES as u64,
            "{}",
            summary.blocks
        );
        let (start, _) = message_index_span(&data);
        let whole = SegmentReader::open(Path::new("w.seg"), Arc::new(data.clone())).unwrap();
        let model = whole.load_indexes().unwrap();
        let model = model.view();
        let file = Arc::new(DamageableFile(Mutex::new(data.to_vec())));
        let seg = SegmentReader::open(Path::new("p.seg"), file.clone()).unwrap();
        for conv in 0..=2_810u64 {
            let c = ConversationId(conv);
            assert_eq!(
                seg.conversation_range(c).unwrap(),
                model.conversation_range(c),
                "conversation {conv}"
            );
            for id in [0, 1, 2, 3, 9] {
                assert_eq!(seg.find_block(c, id).unwrap(), model.find_block(c, id));
            }
        }
        for b in 0..seg.block_count() {
            assert_eq!(seg.block_handle(b).unwrap(), model.block_handle(b));
            assert_eq!(seg.block_first_key(b).unwrap(), model.block_first_key(b));
            assert_eq!(
                seg.read_block(b).unwrap().rows() as u32,
                model.block_rows(b)
            );
        }
        for i in 0..seg.conversation_count() {
            assert_eq!(
                seg.conversation_entry(i).unwrap(),
                model.conversation_entry(i)
            );
        }
        // A merge's cursor, in key order and against it.
        let mut cursor = seg.index_cursor();
        for conv in (0..=2_810u64).chain((0..=2_810u64).rev().step_by(7)) {
            let c = ConversationId(conv);
            assert_eq!(
                cursor.conversation_range(c).unwrap(),
                model.conversation_range(c),
                "cursor, conversation {conv}"
            );
        }
        assert!(!seg.indexes_loaded());
        // Damage block index partition 1 (block 130's entry) after the table was built.
        let at = start as usize + 130 * BLOCK_ENTRY_LEN + 20;
        file.0.lock().unwrap()[at] ^= 0x10;
        assert_eq!(seg.block_handle(3).unwrap(), model.block_handle(3));
        let err = seg.block_handle(130).unwrap_err().to_string();
        let part_at = start + (PARTITION_ENTRIES * BLOCK_ENTRY_LEN) as u64;
        assert!(err.contains("index partition checksum mismatch"), "{err}");
        assert!(err.contains(&part_at.to_string()), "{err}");
        assert!(seg.read_block(200).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// A merge's cursor answers what a model of the conversations answers, kept whole or
        /// read a partition at a time, asked in key order (runs of it, as a merge asks), with
        /// jumps forward past many entries and back, and for conversations it does not hold.
        #[test]
        fn the_cursor_walk_answers_what_a_model_holds(
            convs in proptest::collection::btree_set(1u64..3_000, 1..600),
            asks in proptest::collection::vec((0u64..3_100, 0usize..40), 1..40),
        ) {
            let model: std::collections::BTreeMap<u64, (u64, u64)> =
                convs.iter().map(|&c| (c, (1, c % 3 + 1))).collect();
            let msgs: Vec<Message> = model
                .iter()
                .flat_map(|(&c, &(first, last))| (first..=last).map(move |id| msg(c, id)))
                .collect();
            let (data, _) = build(&msgs, 256);
            let (start, end) = message_index_span(&data);
            let mut kept = SegmentReader::open(Path::new("k.seg"), Arc::new(data.clone())).unwrap();
            kept.pin_indexes_from(IndexPins::new(end - start));
            // A lookup pins them (a merge's cursor reads what lookups have left).
            let first = model.keys().next().copied().unwrap_or(0);
            kept.conversation_range(ConversationId(first)).unwrap();
            let parted = SegmentReader::open(Path::new("p.seg"), Arc::new(data)).unwrap();
            for seg in [&kept, &parted] {
                let mut cursor = seg.index_cursor();
                for &(from, run) in &asks {
                    for conv in from..from + run as u64 {
                        proptest::prop_assert_eq!(
                            cursor.conversation_range(ConversationId(conv)).unwrap(),
                            model.get(&conv).copied(),
                            "conversation {}", conv
                        );
                    }
                }
            }
            proptest::prop_assert!(kept.indexes_loaded());
            proptest::prop_assert!(!parted.indexes_loaded());
        }
    }

    #[test]
    fn a_damaged_message_index_is_reported_at_the_first_lookup_with_its_offset() {
        let (data, _) = build(&sample(), 600);
        let (start, end) = message_index_span(&data);
        for at in [start, (start + end) / 2, end - 1] {
            let mut bad = data.to_vec();
            bad[at as usize] ^= 0x10;
            let seg = SegmentReader::open(Path::new("x.seg"), Arc::new(Bytes::from(bad))).unwrap();
            for outcome in [
                seg.conversation_range(ConversationId(5)).map(|_| ()),
                seg.read_block(0).map(|_| ()),
                seg.load_indexes().map(|_| ()),
            ] {
                match outcome {
                    Err(Error::Corruption { offset, .. }) => assert_eq!(offset, start),
                    other => panic!("byte {at}: {other:?}"),
                }
            }
        }
    }

    /// `data` (version 3) rewritten in the version-2 layout: no block sizes.
    fn as_version_2(data: &[u8]) -> Bytes {
        let ext_at = data.len() - FOOTER_LEN;
        let mut footer = data[ext_at..].to_vec();
        let (start, state_at) = message_index_span(data);
        let blocks = get_u32(&footer, 32).unwrap() as u64;
        let sizes_at = state_at - BLOCK_SIZE_ENTRY_LEN as u64 * blocks;
        let mut out = data[..sizes_at as usize].to_vec();
        out.extend_from_slice(&data[state_at as usize..ext_at]);
        let index_crc = crc32fast::hash(&out[start as usize..sizes_at as usize]);
        footer[16..20].copy_from_slice(&index_crc.to_le_bytes());
        footer[56..64].copy_from_slice(&sizes_at.to_le_bytes());
        footer[92..96].copy_from_slice(&2u32.to_le_bytes());
        let footer_crc = crc32fast::hash(&footer[..96]);
        footer[96..100].copy_from_slice(&footer_crc.to_le_bytes());
        out[8..12].copy_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&footer);
        Bytes::from(out)
    }

    /// Asserts that two segments holding the same messages read the same.
    fn assert_read_the_same(a: &SegmentReader, b: &SegmentReader) {
        assert_eq!(a.conversation_bounds(), b.conversation_bounds());
        assert_eq!(a.first_block_codec(), b.first_block_codec());
        assert_eq!(a.block_count(), b.block_count());
        assert_eq!(
            (a.message_count(), a.logical_bytes()),
            (b.message_count(), b.logical_bytes())
        );
        for conv in [0u64, 1, 2, 3, 5, 1000, 1001] {
            let c = ConversationId(conv);
            assert_eq!(
                a.conversation_range(c).unwrap(),
                b.conversation_range(c).unwrap()
            );
            assert_eq!(a.find_block(c, 7).unwrap(), b.find_block(c, 7).unwrap());
        }
        for i in 0..a.block_count() {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            a.read_block(i).unwrap().collect_all(&mut x);
            b.read_block(i).unwrap().collect_all(&mut y);
            assert_eq!(x, y);
        }
    }

    #[test]
    fn version_2_segments_still_read_the_same() {
        let (data, _) = build(&sample(), 600);
        let v3 = SegmentReader::open(Path::new("v3.seg"), Arc::new(data.clone())).unwrap();
        let v2 = SegmentReader::open(Path::new("v2.seg"), Arc::new(as_version_2(&data))).unwrap();
        assert_eq!((v2.version(), v3.version()), (2, 3));
        assert_read_the_same(&v2, &v3);
        assert_eq!(
            v2.load_indexes().unwrap().view().block_logical_bytes(0),
            None
        );
    }

    #[test]
    fn block_sizes_are_each_blocks_logical_bytes_copied_or_not() {
        let msgs = sample();
        let (data, summary) = build(&msgs, 600);
        let src = SegmentReader::open(Path::new("a.seg"), Arc::new(data)).unwrap();
        let loaded = src.load_indexes().unwrap();
        let view = loaded.view();
        let mut total = 0;
        for i in 0..src.block_count() {
            let size = view.block_logical_bytes(i).unwrap();
            assert_eq!(
                u64::from(size),
                logical_bytes_of(&src.read_block(i).unwrap())
            );
            total += u64::from(size);
        }
        assert_eq!(total, summary.logical_bytes);

        // A copy of every block, the odd ones through `add_stored_run` (their size from the
        // index, undecoded), the even ones decoded, keeps every size and the totals.
        let file = VecFile::default();
        let mut w = SegmentWriter::new(Box::new(file.clone()), Compression::Lz4, 600);
        for i in 0..src.block_count() {
            let stored = src.read_block_checked(i).unwrap();
            let block = src.decode_block(i, &stored).unwrap();
            let copied = if i % 2 == 1 && block.runs().len() == 1 {
                let (conv, first) = view.block_first_key(i);
                w.add_stored_run(
                    &stored,
                    conv,
                    first,
                    view.block_rows(i),
                    view.block_logical_bytes(i).unwrap(),
                )
            } else {
                w.add_stored_block(&stored, &block)
            };
            assert!(copied.unwrap(), "block {i}");
        }
        let copy_summary = w.finish().unwrap();
        assert_eq!(
            (copy_summary.messages, copy_summary.logical_bytes),
            (summary.messages, summary.logical_bytes)
        );
        let copy = file.0.lock().unwrap().clone();
        let dst = SegmentReader::open(Path::new("b.seg"), Arc::new(Bytes::from(copy))).unwrap();
        assert_read_the_same(&src, &dst);
        let dst_loaded = dst.load_indexes().unwrap();
        let dst_view = dst_loaded.view();
        for i in 0..src.block_count() {
            assert_eq!(dst_view.block_logical_bytes(i), view.block_logical_bytes(i));
        }
    }

    #[test]
    fn a_run_that_does_not_follow_what_was_added_is_refused() {
        let (data, _) = build(&sample(), 600);
        let src = SegmentReader::open(Path::new("a.seg"), Arc::new(data)).unwrap();
        let loaded = src.load_indexes().unwrap();
        let view = loaded.view();
        let stored = src.read_block_checked(1).unwrap();
        let (conv, first) = view.block_first_key(1);
        let rows = view.block_rows(1);
        let size = view.block_logical_bytes(1).unwrap();
        let file = VecFile::default();
        let mut w = SegmentWriter::new(Box::new(file), Compression::Lz4, 600);
        // The first run may start at any id; the same rows again overlap them, no rows is
        // no run, and an earlier conversation is out of order.
        assert!(w.add_stored_run(&stored, conv, first, rows, size).unwrap());
        assert!(!w.add_stored_run(&stored, conv, first, rows, size).unwrap());
        assert!(!w.add_stored_run(&stored, conv, first, 0, size).unwrap());
        assert!(!w
            .add_stored_run(&stored, ConversationId(0), 5, rows, size)
            .unwrap());
    }

    #[test]
    fn block_sizes_that_do_not_add_up_are_corruption_at_the_first_lookup() {
        let (data, _) = build(&sample(), 600);
        let (start, state_at) = message_index_span(&data);
        let mut bad = data.to_vec();
        // The last block's size one larger, the message index checksum made to match: only
        // the sum gives it away.
        let at = state_at as usize - BLOCK_SIZE_ENTRY_LEN;
        let size = get_u32(&bad, at).unwrap() + 1;
        bad[at..at + 4].copy_from_slice(&size.to_le_bytes());
        let crc = crc32fast::hash(&bad[start as usize..state_at as usize]);
        let ext_at = bad.len() - FOOTER_LEN;
        bad[ext_at + 16..ext_at + 20].copy_from_slice(&crc.to_le_bytes());
        let footer_crc = crc32fast::hash(&bad[ext_at..ext_at + 96]);
        bad[ext_at + 96..ext_at + 100].copy_from_slice(&footer_crc.to_le_bytes());
        let seg = SegmentReader::open(Path::new("x.seg"), Arc::new(Bytes::from(bad))).unwrap();
        match seg.load_indexes() {
            Err(Error::Corruption { offset, reason, .. }) => {
                assert_eq!(offset, start);
                assert!(reason.contains("block sizes"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// `data` (version 2) rewritten in the version-1 layout: no footer extension, one
    /// checksum over the three indexes.
    fn as_version_1(data: &[u8]) -> Bytes {
        let ext_at = data.len() - FOOTER_LEN;
        let mut out = data[..ext_at].to_vec();
        let mut footer = data[ext_at + (FOOTER_LEN - FOOTER_V1_LEN)..].to_vec();
        let (start, _) = message_index_span(data);
        let index_crc = crc32fast::hash(&out[start as usize..]);
        footer[64..68].copy_from_slice(&index_crc.to_le_bytes());
        footer[68..72].copy_from_slice(&1u32.to_le_bytes());
        let footer_crc = crc32fast::hash(&footer[..72]);
        footer[72..76].copy_from_slice(&footer_crc.to_le_bytes());
        out[8..12].copy_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&footer);
        Bytes::from(out)
    }

    #[test]
    fn version_1_segments_still_read_the_same() {
        let (data, _) = build(&sample(), 600);
        let v2_data = as_version_2(&data);
        let v2 = SegmentReader::open(Path::new("v2.seg"), Arc::new(v2_data.clone())).unwrap();
        let v1 =
            SegmentReader::open(Path::new("v1.seg"), Arc::new(as_version_1(&v2_data))).unwrap();
        assert_eq!((v1.version(), v2.version()), (1, 2));
        assert!(v1.indexes_loaded(), "version 1 checks its indexes at open");
        assert_read_the_same(&v1, &v2);
    }

    /// The bytes of the example in `docs/format-segment.md`: the hex columns of its dump.
    fn documented_example() -> Vec<u8> {
        let doc = include_str!("../../docs/format-segment.md");
        let example = &doc[doc.find("## Example").unwrap()..];
        let dump = example.split("```").nth(1).unwrap();
        let mut bytes = Vec::new();
        for line in dump.lines().skip(1) {
            let Some(columns) = line.get(6..) else {
                continue;
            };
            for token in columns.split_whitespace() {
                match u8::from_str_radix(token, 16) {
                    Ok(b) if token.len() == 2 => bytes.push(b),
                    _ => break,
                }
            }
        }
        bytes
    }

    #[test]
    fn the_documented_example_is_what_the_writer_writes() {
        let row = |conv: u64, id: u64, sender: u64, ms: u64, content: &str| Message {
            conversation: ConversationId(conv),
            id: MessageId(id),
            sender: UserId(sender),
            timestamp_ms: ms,
            kind: MessageKind::Normal,
            content: Bytes::from(content.to_string()),
            attachment: None,
            reply_to: None,
            mentions: Vec::new(),
            edited_ms: None,
        };
        let t0 = 1_700_000_000_000;
        let mut reply = row(7, 2, 43, t0 + 1500, "ok");
        reply.reply_to = Some(MessageId(1));
        let file = VecFile::default();
        let mut w = SegmentWriter::new(Box::new(file.clone()), Compression::None, 4096);
        for m in [
            row(7, 1, 42, t0, "hi"),
            reply,
            row(9, 1, 42, t0 + 2000, "yo"),
        ] {
            assert!(w.add(&m).unwrap());
        }
        assert!(w.add_state(b"dog", Some(b"1")).unwrap());
        assert!(w.add_state(b"door", None).unwrap());
        w.finish().unwrap();
        let written = file.0.lock().unwrap().clone();
        assert_eq!(
            documented_example(),
            written,
            "docs/format-segment.md, Example"
        );
        let seg =
            SegmentReader::open(Path::new("example.seg"), Arc::new(Bytes::from(written))).unwrap();
        assert_eq!(
            seg.conversation_range(ConversationId(7)).unwrap(),
            Some((1, 2))
        );
    }

    #[test]
    fn truncated_segments_are_corruption() {
        let (data, _) = build(&sample(), 800);
        for cut in [
            0,
            10,
            HEADER_LEN + FOOTER_LEN - 1,
            data.len() / 2,
            data.len() - 1,
        ] {
            let err =
                SegmentReader::open(Path::new("x.seg"), Arc::new(data.slice(..cut))).unwrap_err();
            assert!(err.is_corruption(), "cut {cut}: {err}");
        }
    }
}
