//! Columnar segment blocks: a run of messages sorted by (conversation, id), one column per field.
//! See `docs/format-segment.md` for the byte layout.
//!
//! Chat data is what makes the columns small: ids inside a conversation are gapless, so a block
//! stores only each conversation run's first id; senders come from a handful of members
//! (dictionary + one byte per row); timestamps are small deltas; content is text, compressed
//! with the whole block.

use bytes::Bytes;

use super::batch::{flags, MAX_MENTIONS};
use super::coding::{get_u32, put_u32, put_varint, unzigzag, zigzag, Reader};
use super::compression::Compression;
use super::dictionary::{DictDecoder, DictEncoder};
use super::zstd_contexts;
use crate::types::{ConversationId, Message, MessageId, MessageKind, MessageRef, UserId};

/// Bytes after the stored body: uncompressed_len:u32 | compression:u8 | crc:u32.
pub const BLOCK_TRAILER_LEN: usize = 9;
/// Largest uncompressed block a reader accepts: a block closes at `block_bytes` (at most
/// 4 MiB) plus one message (at most 16 MiB), and a segment writer closes it earlier if its next
/// row might not fit (`BlockBuilder::has_room_for`).
pub const MAX_BLOCK_LEN: usize = 24 << 20;
/// Largest message (content plus attachment link) a block holds: the most
/// `Options::max_message_bytes` may be.
pub(crate) const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Largest target block size (`Options::block_bytes`).
pub(crate) const MAX_TARGET_BLOCK_BYTES: usize = 4 << 20;

/// Body bytes besides its rows and sections, at most: the row, run and dictionary counts and
/// the six section lengths.
const MAX_BODY_FIXED: usize = 3 * 5 + 6 * 10;
/// Bytes a row takes outside the six sections, at most: a sender dictionary entry and index,
/// a timestamp, the kind/flags byte.
const MAX_ROW_FIXED: usize = 10 + 5 + 10 + 1;
/// Bytes of a run entry, at most: conversation delta, first id, length.
const MAX_RUN: usize = 10 + 10 + 5;

/// The most bytes a row can add to a block's body: `bytes` of content and attachment, and
/// the optional fields it has.
#[deny(clippy::arithmetic_side_effects)]
const fn row_bound(bytes: usize, attachment: bool, reply: bool, mentions: usize) -> usize {
    let mut n = (MAX_RUN + MAX_ROW_FIXED + 10).saturating_add(bytes);
    if attachment {
        n = n.saturating_add(10);
    }
    if reply {
        n = n.saturating_add(10);
    }
    if mentions > 0 {
        n = n.saturating_add(mentions.saturating_mul(10).saturating_add(10));
    }
    n
}

// A block that reached its target size still has room for the largest message's bytes.
const _: () = assert!(MAX_TARGET_BLOCK_BYTES + MAX_MESSAGE_BYTES <= MAX_BLOCK_LEN);

// A message within the limits fits in a block of its own, whatever else it carries.
const _: () = assert!(
    MAX_BODY_FIXED + row_bound(MAX_MESSAGE_BYTES, true, true, MAX_MENTIONS) <= MAX_BLOCK_LEN
);

// Compression codes stored in the trailer. Part of the format; values never change.

/// Codec byte of a block stored uncompressed.
pub const CODEC_NONE: u8 = 0;
/// Codec byte of an LZ4 block.
pub const CODEC_LZ4: u8 = 1;
/// Codec byte of a zstd block without a dictionary.
pub const CODEC_ZSTD: u8 = 2;
/// Codec byte of a zstd block compressed against the segment's dictionary.
pub const CODEC_ZSTD_DICT: u8 = 3;

/// Whether a block stored with `codec` is what `compression` writes (zstd blocks may use the
/// segment's dictionary or not).
pub fn codec_matches(compression: Compression, codec: u8) -> bool {
    match compression {
        Compression::None => codec == CODEC_NONE,
        Compression::Lz4 => codec == CODEC_LZ4,
        Compression::Zstd(_) => codec == CODEC_ZSTD || codec == CODEC_ZSTD_DICT,
    }
}

/// The codec byte of a stored block (`stored` as on disk, trailer included).
pub fn stored_codec(stored: &[u8]) -> Option<u8> {
    stored
        .len()
        .checked_sub(5)
        .and_then(|at| stored.get(at))
        .copied()
}

/// Whether a block stored with `codec` can be copied unchanged into a segment written with
/// `compression`: same codec family, and, for a block compressed against a dictionary, the
/// same dictionary (`same_dictionary`). A block stored raw because it did not compress is not
/// what a compressing writer produces, so it is not copied into one.
pub fn copyable(codec: u8, compression: Compression, same_dictionary: bool) -> bool {
    codec_matches(compression, codec) && (codec != CODEC_ZSTD_DICT || same_dictionary)
}

/// A conversation's rows inside a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// The conversation.
    pub conversation: ConversationId,
    /// Id of the run's first row; the following rows have the following ids.
    pub first_id: u64,
    /// First row of the run in the block.
    pub start_row: u32,
    /// Number of rows.
    pub len: u32,
}

impl Run {
    /// Id of the run's last row (`None` for an empty run, or one past the largest id).
    pub fn last_id(&self) -> Option<u64> {
        last_id_of(self.first_id, self.len)
    }
}

/// Id of the last of `len` consecutive rows from `first_id` (`None` if `len` is 0 or the ids
/// would pass the largest).
pub fn last_id_of(first_id: u64, len: u32) -> Option<u64> {
    first_id
        .checked_add(u64::from(len))
        .and_then(|end| end.checked_sub(1))
        .filter(|_| len > 0)
}

/// Accumulates messages (in (conversation, id) order) and encodes them as one block.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    runs: Vec<Run>,
    senders: Vec<u64>,
    timestamps: Vec<u64>,
    kind_flags: Vec<u8>,
    replies: Vec<u8>,
    mentions: Vec<u8>,
    content_lens: Vec<u8>,
    content: Vec<u8>,
    attachment_lens: Vec<u8>,
    attachments: Vec<u8>,
    /// Scratch buffers kept from block to block.
    sender_dict: Vec<u64>,
    body: Vec<u8>,
}

// Flushes and compactions build blocks on background threads: no arithmetic that can overflow.
#[deny(clippy::arithmetic_side_effects)]
impl BlockBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.senders.len()
    }

    /// True if nothing was added.
    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Conversations with rows in the block so far.
    pub fn conversations(&self) -> usize {
        self.runs.len()
    }

    /// Rough uncompressed size of the block so far.
    pub fn estimated_len(&self) -> usize {
        [
            self.content.len(),
            self.attachments.len(),
            self.rows().saturating_mul(8),
            self.mentions.len(),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// The most bytes the block's body can take so far (the estimate above undercounts rows
    /// whose senders, timestamps or replies take long encodings).
    pub(crate) fn max_body_len(&self) -> usize {
        [
            MAX_BODY_FIXED,
            self.runs.len().saturating_mul(MAX_RUN),
            self.rows().saturating_mul(MAX_ROW_FIXED),
            self.replies.len(),
            self.mentions.len(),
            self.content_lens.len(),
            self.content.len(),
            self.attachment_lens.len(),
            self.attachments.len(),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// The most bytes `m` can add to a block's body.
    pub(crate) fn max_row_len(m: MessageRef<'_>) -> usize {
        row_bound(
            m.content
                .len()
                .saturating_add(m.attachment.map_or(0, <[u8]>::len)),
            m.attachment.is_some(),
            m.reply_to.is_some(),
            m.mentions.len(),
        )
    }

    /// Whether `m` surely fits: the block is empty, or its body with `m` stays within
    /// [`MAX_BLOCK_LEN`] however long the encodings turn out. A writer that closes the block
    /// when this is false never writes a block a reader refuses.
    pub(crate) fn has_room_for(&self, m: MessageRef<'_>) -> bool {
        self.is_empty() || self.max_body_len().saturating_add(Self::max_row_len(m)) <= MAX_BLOCK_LEN
    }

    /// The conversation of the last row, if any.
    pub fn last_conversation(&self) -> Option<ConversationId> {
        self.runs.last().map(|r| r.conversation)
    }

    /// The (conversation, id) of the first row, if any.
    pub fn first_key(&self) -> Option<(ConversationId, u64)> {
        self.runs.first().map(|r| (r.conversation, r.first_id))
    }

    /// Whether `m` may follow the rows already added: same conversation with the next id, or
    /// a later conversation.
    pub fn accepts(&self, m: &Message) -> bool {
        self.accepts_ref(m.as_ref())
    }

    pub(crate) fn accepts_ref(&self, m: MessageRef<'_>) -> bool {
        match self.runs.last() {
            None => true,
            Some(r) if r.conversation == m.conversation => {
                r.first_id.checked_add(u64::from(r.len)) == Some(m.id.0)
            }
            Some(r) => m.conversation > r.conversation,
        }
    }

    /// Adds a message. REQUIRES: `self.accepts(m)`, and `m` within the limits of
    /// `batch::check_message`; otherwise the row is refused and `false` returned, leaving the
    /// builder unchanged.
    pub fn add(&mut self, m: &Message) -> bool {
        self.add_ref(m.as_ref())
    }

    /// [`add`](Self::add) from borrowed fields.
    pub(crate) fn add_ref(&mut self, m: MessageRef<'_>) -> bool {
        if !self.accepts_ref(m)
            || self.rows() >= u32::MAX as usize
            || super::batch::check_message(m).is_err()
        {
            return false;
        }
        let row = self.rows() as u32;
        match self.runs.last_mut() {
            Some(r) if r.conversation == m.conversation => r.len = r.len.saturating_add(1),
            _ => self.runs.push(Run {
                conversation: m.conversation,
                first_id: m.id.0,
                start_row: row,
                len: 1,
            }),
        }
        self.senders.push(m.sender.0);
        self.timestamps.push(m.timestamp_ms);
        let f = super::batch::flags_of(m);
        self.kind_flags.push(m.kind as u8 | (f << 4));
        if let Some(r) = m.reply_to {
            // Replies point backwards, usually not far: store the distance.
            put_varint(&mut self.replies, zigzag(m.id.0.wrapping_sub(r.0) as i64));
        }
        if !m.mentions.is_empty() {
            put_varint(&mut self.mentions, m.mentions.len() as u64);
            for u in m.mentions {
                put_varint(&mut self.mentions, u.0);
            }
        }
        put_varint(&mut self.content_lens, m.content.len() as u64);
        self.content.extend_from_slice(m.content);
        if let Some(a) = m.attachment {
            put_varint(&mut self.attachment_lens, a.len() as u64);
            self.attachments.extend_from_slice(a);
        }
        true
    }

    /// Encodes the block (body, compressed, plus trailer) onto `out` and resets the builder.
    /// Returns the length of the block's body before compression.
    pub fn finish_into(
        &mut self,
        compression: Compression,
        dict: Option<&mut DictEncoder>,
        out: &mut Vec<u8>,
    ) -> usize {
        let mut body = std::mem::take(&mut self.body);
        self.encode_body(&mut body);
        pack(&body, compression, dict, out);
        let len = body.len();
        // Keep the buffer: a segment writer builds thousands of blocks.
        self.body = body;
        len
    }

    /// Encodes the uncompressed block body and resets the builder.
    pub fn finish_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        self.encode_body(&mut body);
        body
    }

    /// Encodes the body into `body` (cleared first) and resets the builder, keeping the
    /// capacity of its columns.
    fn encode_body(&mut self, body: &mut Vec<u8>) {
        body.clear();
        body.reserve(self.estimated_len().saturating_add(64));
        put_varint(body, self.rows() as u64);
        put_varint(body, self.runs.len() as u64);
        let mut prev_conv = 0u64;
        for r in &self.runs {
            // Runs are in conversation order (`add` refuses others).
            put_varint(body, r.conversation.0.saturating_sub(prev_conv));
            prev_conv = r.conversation.0;
            put_varint(body, r.first_id);
            put_varint(body, u64::from(r.len));
        }
        // Sender dictionary, sorted, delta-coded; rows store an index into it.
        let mut dict = std::mem::take(&mut self.sender_dict);
        dict.clear();
        dict.extend_from_slice(&self.senders);
        dict.sort_unstable();
        dict.dedup();
        put_varint(body, dict.len() as u64);
        let mut prev = 0u64;
        for &s in &dict {
            put_varint(body, s.saturating_sub(prev));
            prev = s;
        }
        for &s in &self.senders {
            let idx = dict.binary_search(&s).unwrap_or(0);
            if dict.len() <= 256 {
                body.push(idx as u8);
            } else {
                put_varint(body, idx as u64);
            }
        }
        let mut prev_ts = 0u64;
        for &t in &self.timestamps {
            put_varint(body, zigzag(t.wrapping_sub(prev_ts) as i64));
            prev_ts = t;
        }
        body.extend_from_slice(&self.kind_flags);
        for section in [
            &self.replies,
            &self.mentions,
            &self.content_lens,
            &self.attachment_lens,
            &self.content,
            &self.attachments,
        ] {
            put_varint(body, section.len() as u64);
            body.extend_from_slice(section);
        }
        self.sender_dict = dict;
        self.runs.clear();
        self.senders.clear();
        self.timestamps.clear();
        self.kind_flags.clear();
        self.replies.clear();
        self.mentions.clear();
        self.content_lens.clear();
        self.content.clear();
        self.attachment_lens.clear();
        self.attachments.clear();
    }
}

/// Compresses `body` (unless that does not shrink it) and appends it with its trailer to `out`.
/// With `dict`, zstd blocks are compressed against the segment's dictionary.
#[deny(clippy::arithmetic_side_effects)]
pub fn pack(
    body: &[u8],
    compression: Compression,
    dict: Option<&mut DictEncoder>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    let codec = match (compression, dict) {
        (Compression::Zstd(_), Some(enc)) => match enc.compress_into(body, out) {
            Some(n) if n < body.len() => CODEC_ZSTD_DICT,
            _ => {
                out.truncate(start);
                CODEC_NONE
            }
        },
        (compression, _) => match compression {
            Compression::None => CODEC_NONE,
            Compression::Lz4 => {
                // Compress straight into `out`, without an intermediate buffer.
                let bound = lz4_flex::block::get_maximum_output_size(body.len());
                out.resize(start.saturating_add(bound), 0);
                match lz4_flex::block::compress_into(body, &mut out[start..]) {
                    Ok(n) if n < body.len() => {
                        out.truncate(start.saturating_add(n));
                        CODEC_LZ4
                    }
                    _ => {
                        out.truncate(start);
                        CODEC_NONE
                    }
                }
            }
            Compression::Zstd(level) => match zstd_contexts::compress(body, level) {
                Some(c) if c.len() < body.len() => {
                    out.extend_from_slice(&c);
                    CODEC_ZSTD
                }
                _ => CODEC_NONE,
            },
        },
    };
    if codec == CODEC_NONE {
        out.extend_from_slice(body);
    }
    put_u32(out, body.len() as u32);
    out.push(codec);
    let crc = crc32fast::hash(&out[start..]);
    put_u32(out, crc);
}

/// A decoded block, ready to hand out messages. Content shares memory with `data`. Kept
/// compact, since the block cache's capacity is counted in these: per row a sender index, a
/// timestamp, the kind/flags byte and a content offset (14-17 bytes); replies, mentions and
/// attachments, which few rows have, are stored only for the rows that have them.
#[derive(Debug)]
pub struct Block {
    data: Bytes,
    runs: Vec<Run>,
    sender_dict: Vec<u64>,
    senders: SenderColumn,
    timestamps: Vec<u64>,
    kind_flags: Vec<u8>,
    /// Start of each row's content in `data`, plus the end of the last one.
    content_offsets: Vec<u32>,
    /// (row, reply_to) of the rows with a reply, by row.
    replies: Vec<(u32, u64)>,
    /// (row, start in `mentions`) of the rows with mentions, by row; a row's mentions end
    /// where the next entry's start (or `mentions`) does.
    mention_rows: Vec<(u32, u32)>,
    mentions: Vec<u64>,
    /// (row, start, end) in `data` of the rows with an attachment, by row.
    attachments: Vec<(u32, u32, u32)>,
}

/// Each row's index into the block's sender dictionary.
#[derive(Debug)]
enum SenderColumn {
    /// At most 256 distinct senders (the usual case).
    Narrow(Vec<u8>),
    Wide(Vec<u32>),
}

impl SenderColumn {
    fn get(&self, row: usize) -> usize {
        match self {
            SenderColumn::Narrow(v) => usize::from(v[row]),
            SenderColumn::Wide(v) => v[row] as usize,
        }
    }

    fn bytes_per_row(&self) -> usize {
        match self {
            SenderColumn::Narrow(_) => 1,
            SenderColumn::Wide(_) => 4,
        }
    }
}

/// Checks a stored block's trailer and checksum; returns the length of its uncompressed body.
pub fn check_stored(stored: &[u8]) -> Result<usize, &'static str> {
    if stored.len() < BLOCK_TRAILER_LEN {
        return Err("block shorter than its trailer");
    }
    let t = stored.len() - BLOCK_TRAILER_LEN;
    let crc = get_u32(stored, t + 5).ok_or("short trailer")?;
    if crc32fast::hash(&stored[..t + 5]) != crc {
        return Err("block checksum mismatch");
    }
    let raw_len = get_u32(stored, t).ok_or("short trailer")? as usize;
    if raw_len > MAX_BLOCK_LEN {
        return Err("block length over the limit");
    }
    Ok(raw_len)
}

/// Checks a stored block's checksum and returns its uncompressed body.
/// `stored` is the block as on disk, trailer included.
/// `dict` is the segment's dictionary, needed by blocks compressed against it.
pub fn unpack(stored: &Bytes, dict: Option<&DictDecoder>) -> Result<Bytes, &'static str> {
    let raw_len = check_stored(stored)?;
    let t = stored.len() - BLOCK_TRAILER_LEN;
    let body = stored.slice(..t);
    let out = match stored[t + 4] {
        CODEC_NONE => body,
        CODEC_LZ4 => Bytes::from(
            lz4_flex::block::decompress(&body, raw_len).map_err(|_| "lz4 decode failed")?,
        ),
        CODEC_ZSTD_DICT => match dict {
            Some(d) => Bytes::from(d.decompress(&body, raw_len)?),
            None => return Err("block needs a dictionary the segment does not have"),
        },
        CODEC_ZSTD => Bytes::from(zstd_contexts::decompress(&body, raw_len)?),
        _ => return Err("unknown compression"),
    };
    if out.len() != raw_len {
        return Err("uncompressed length mismatch");
    }
    Ok(out)
}

// Compactions decode blocks on background threads: no arithmetic that can overflow.
#[deny(clippy::arithmetic_side_effects)]
impl Block {
    /// Decodes an uncompressed block body.
    pub fn decode(data: Bytes) -> Result<Block, &'static str> {
        let buf: &[u8] = &data;
        let mut r = Reader::new(buf);
        // A row takes at least four bytes (sender index, timestamp, kind/flags, content length),
        // which bounds what the per-row columns below may allocate by the body's size.
        let rows = r.len(buf.len() / 4).ok_or("bad row count")?;
        let nruns = r.len(rows).ok_or("bad run count")?;
        let mut runs = Vec::with_capacity(nruns);
        let mut conv = 0u64;
        let mut row = 0u32;
        for i in 0..nruns {
            let delta = r.varint().ok_or("bad run")?;
            if i > 0 && delta == 0 {
                return Err("runs out of order");
            }
            conv = conv.checked_add(delta).ok_or("conversation overflow")?;
            let first_id = r.varint().ok_or("bad run id")?;
            let len = r.len(rows).ok_or("bad run length")? as u32;
            if len == 0 || first_id == 0 || first_id.checked_add(u64::from(len)).is_none() {
                return Err("bad run");
            }
            runs.push(Run {
                conversation: ConversationId(conv),
                first_id,
                start_row: row,
                len,
            });
            row = row.checked_add(len).ok_or("row overflow")?;
        }
        if row as usize != rows {
            return Err("runs do not cover the rows");
        }
        let ndict = r.len(rows).ok_or("bad sender dictionary")?;
        let mut sender_dict = Vec::with_capacity(ndict);
        let mut prev = 0u64;
        for _ in 0..ndict {
            prev = prev
                .checked_add(r.varint().ok_or("bad sender")?)
                .ok_or("sender overflow")?;
            sender_dict.push(prev);
        }
        let senders = if ndict <= 256 {
            let idx = r.bytes(rows).ok_or("bad sender index")?;
            if idx.iter().any(|&i| usize::from(i) >= ndict) {
                return Err("sender index out of range");
            }
            SenderColumn::Narrow(idx.to_vec())
        } else {
            let mut idx = Vec::with_capacity(rows);
            for _ in 0..rows {
                // More than 256 senders here.
                idx.push(r.len(ndict.saturating_sub(1)).ok_or("bad sender index")? as u32);
            }
            SenderColumn::Wide(idx)
        };
        let mut timestamps = Vec::with_capacity(rows);
        let mut ts = 0u64;
        for _ in 0..rows {
            ts = ts.wrapping_add(unzigzag(r.varint().ok_or("bad timestamp")?) as u64);
            timestamps.push(ts);
        }
        let kind_flags = r.bytes(rows).ok_or("bad flags column")?.to_vec();
        let mut sections = [(0usize, 0usize); 6];
        for s in sections.iter_mut() {
            let n = r.len(buf.len()).ok_or("bad section length")?;
            let start = r.position();
            r.bytes(n).ok_or("section runs past the block")?;
            // `bytes(n)` succeeded: `start + n` is within the block.
            *s = (start, start.saturating_add(n));
        }
        if !r.is_empty() {
            return Err("trailing bytes in block");
        }
        let [replies_s, mentions_s, clens_s, alens_s, content_s, attach_s] = sections;

        let mut replies = Vec::new();
        let mut mention_rows = Vec::new();
        let mut mentions = Vec::new();
        let mut attachments = Vec::new();
        let mut content_offsets = Vec::with_capacity(rows.saturating_add(1));
        let mut rr = Reader::new(&buf[replies_s.0..replies_s.1]);
        let mut mr = Reader::new(&buf[mentions_s.0..mentions_s.1]);
        let mut cr = Reader::new(&buf[clens_s.0..clens_s.1]);
        let mut ar = Reader::new(&buf[alens_s.0..alens_s.1]);
        let mut coff = content_s.0;
        let mut aoff = attach_s.0;
        content_offsets.push(coff as u32);
        for run in &runs {
            for i in 0..run.len {
                // Runs were checked above: rows and ids within range.
                let row = run.start_row.saturating_add(i);
                let id = run.first_id.saturating_add(u64::from(i));
                let kf = kind_flags[row as usize];
                MessageKind::from_u8(kf & 0x0f).ok_or("bad kind")?;
                let f = kf >> 4;
                if f & !flags::ALL != 0 {
                    return Err("unknown flag bits");
                }
                if f & flags::HAS_REPLY != 0 {
                    let d = unzigzag(rr.varint().ok_or("bad reply")?);
                    replies.push((row, id.wrapping_sub(d as u64)));
                }
                if f & flags::HAS_MENTIONS != 0 {
                    let n = mr
                        .len(MAX_MENTIONS.min(mr.remaining()))
                        .ok_or("bad mentions")?;
                    mention_rows.push((row, mentions.len() as u32));
                    for _ in 0..n {
                        mentions.push(mr.varint().ok_or("bad mention")?);
                    }
                }
                coff = coff.saturating_add(
                    cr.len(content_s.1.saturating_sub(coff))
                        .ok_or("bad content length")?,
                );
                content_offsets.push(coff as u32);
                if f & flags::HAS_ATTACHMENT != 0 {
                    let start = aoff;
                    aoff = aoff.saturating_add(
                        ar.len(attach_s.1.saturating_sub(aoff))
                            .ok_or("bad attachment length")?,
                    );
                    attachments.push((row, start as u32, aoff as u32));
                }
            }
        }
        if coff != content_s.1 || aoff != attach_s.1 {
            return Err("content lengths do not match the content column");
        }
        if !rr.is_empty() || !mr.is_empty() || !cr.is_empty() || !ar.is_empty() {
            return Err("trailing bytes in a column");
        }
        Ok(Block {
            data,
            runs,
            sender_dict,
            senders,
            timestamps,
            kind_flags,
            content_offsets,
            replies,
            mention_rows,
            mentions,
            attachments,
        })
    }

    /// The conversation runs in this block, in order.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.kind_flags.len()
    }

    /// Memory this decoded block holds, for cache accounting.
    pub fn footprint(&self) -> usize {
        use std::mem::size_of;
        [
            self.data.len(),
            self.rows()
                .saturating_mul(self.senders.bytes_per_row().saturating_add(8 + 1 + 4)),
            self.runs.len().saturating_mul(size_of::<Run>()),
            self.sender_dict.len().saturating_mul(8),
            self.replies.len().saturating_mul(size_of::<(u32, u64)>()),
            self.mention_rows
                .len()
                .saturating_mul(size_of::<(u32, u32)>()),
            self.mentions.len().saturating_mul(8),
            self.attachments
                .len()
                .saturating_mul(size_of::<(u32, u32, u32)>()),
            size_of::<Block>(),
        ]
        .into_iter()
        .fold(0, usize::saturating_add)
    }

    /// The run of `conv` in this block.
    pub fn run_of(&self, conv: ConversationId) -> Option<&Run> {
        let i = self
            .runs
            .binary_search_by_key(&conv, |r| r.conversation)
            .ok()?;
        self.runs.get(i)
    }

    /// Appends the messages of `conv` with ids in `lo..=hi` found in this block to `out`.
    pub fn collect(&self, conv: ConversationId, lo: u64, hi: u64, out: &mut Vec<Message>) {
        let Some(run) = self.run_of(conv) else {
            return;
        };
        // Decoding checked that a run's ids neither start at 0 nor overflow.
        let last = run
            .first_id
            .saturating_add(u64::from(run.len))
            .saturating_sub(1);
        for id in lo.max(run.first_id)..=hi.min(last) {
            let row =
                (run.start_row as usize).saturating_add(id.saturating_sub(run.first_id) as usize);
            out.push(self.message(row, conv, id));
        }
    }

    /// The first message of `run` (one of this block's runs).
    pub fn first_of(&self, run: &Run) -> Message {
        self.message(run.start_row as usize, run.conversation, run.first_id)
    }

    /// Bytes of content, bytes of attachment links and number of mentions of all rows: what a
    /// segment counts as their logical size besides the fixed fields.
    pub fn payload(&self) -> (u64, u64, u64) {
        let content = match (self.content_offsets.first(), self.content_offsets.last()) {
            (Some(&a), Some(&b)) => u64::from(b.saturating_sub(a)),
            _ => 0,
        };
        let attachments = self
            .attachments
            .iter()
            .map(|&(_, start, end)| u64::from(end.saturating_sub(start)))
            .fold(0u64, u64::saturating_add);
        (content, attachments, self.mentions.len() as u64)
    }

    /// Appends every message of the block to `out`, in (conversation, id) order.
    pub fn collect_all(&self, out: &mut Vec<Message>) {
        out.reserve(self.rows());
        for run in &self.runs {
            for i in 0..run.len {
                let row = run.start_row.saturating_add(i) as usize;
                let id = run.first_id.saturating_add(u64::from(i));
                out.push(self.message(row, run.conversation, id));
            }
        }
    }

    fn message(&self, row: usize, conv: ConversationId, id: u64) -> Message {
        let kf = self.kind_flags[row];
        let f = kf >> 4;
        let reply_to = if f & flags::HAS_REPLY != 0 {
            self.replies
                .binary_search_by_key(&(row as u32), |&(r, _)| r)
                .ok()
                .map(|i| MessageId(self.replies[i].1))
        } else {
            None
        };
        let mentions = if f & flags::HAS_MENTIONS != 0 {
            match self
                .mention_rows
                .binary_search_by_key(&(row as u32), |&(r, _)| r)
            {
                Ok(i) => {
                    let start = self.mention_rows[i].1 as usize;
                    let end = self
                        .mention_rows
                        .get(i.saturating_add(1))
                        .map_or(self.mentions.len(), |&(_, s)| s as usize);
                    self.mentions[start..end]
                        .iter()
                        .map(|&u| UserId(u))
                        .collect()
                }
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let attachment = if f & flags::HAS_ATTACHMENT != 0 {
            self.attachments
                .binary_search_by_key(&(row as u32), |&(r, _, _)| r)
                .ok()
                .map(|i| {
                    let (_, start, end) = self.attachments[i];
                    self.data.slice(start as usize..end as usize)
                })
        } else {
            None
        };
        Message {
            conversation: conv,
            id: MessageId(id),
            sender: UserId(self.sender_dict[self.senders.get(row)]),
            timestamp_ms: self.timestamps[row],
            kind: MessageKind::from_u8(kf & 0x0f).unwrap_or_default(),
            content: self.data.slice(
                self.content_offsets[row] as usize
                    ..self.content_offsets[row.saturating_add(1)] as usize,
            ),
            attachment,
            reply_to,
            mentions,
            edited_ms: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runs_last_id_is_checked() {
        assert_eq!(last_id_of(5, 3), Some(7));
        assert_eq!(last_id_of(5, 1), Some(5));
        assert_eq!(last_id_of(5, 0), None);
        assert_eq!(last_id_of(u64::MAX, 1), None);
        assert_eq!(last_id_of(u64::MAX - 1, 1), Some(u64::MAX - 1));
    }

    fn msg(conv: u64, id: u64, text: &str) -> Message {
        Message {
            conversation: ConversationId(conv),
            id: MessageId(id),
            sender: UserId(100 + id % 3),
            // Wrapping: some tests take ids near u64::MAX (and set their own timestamps).
            timestamp_ms: 1_700_000_000_000u64.wrapping_add(id.wrapping_mul(1000)),
            kind: MessageKind::Normal,
            content: Bytes::copy_from_slice(text.as_bytes()),
            attachment: None,
            reply_to: None,
            mentions: Vec::new(),
            edited_ms: None,
        }
    }

    fn sample() -> Vec<Message> {
        let mut v = Vec::new();
        for id in 5..40 {
            let mut m = msg(2, id, &format!("hello number {id} from conversation two"));
            if id % 7 == 0 {
                m.attachment = Some(Bytes::from(format!("https://a/{id}.png")));
            }
            if id % 5 == 0 {
                m.reply_to = Some(MessageId(id - 3));
                // Different counts per row: each row's mentions end where the next row's start.
                m.mentions = (0..id % 3 + 1).map(|k| UserId(id + k)).collect();
                m.kind = MessageKind::System;
            }
            v.push(m);
        }
        v.push(msg(9, 1, ""));
        v.push(msg(u64::MAX, 1, "last"));
        v
    }

    fn round_trip(compression: Compression, msgs: &[Message]) -> Block {
        let mut b = BlockBuilder::new();
        for m in msgs {
            assert!(b.add(m));
        }
        let mut out = Vec::new();
        b.finish_into(compression, None, &mut out);
        assert!(b.is_empty());
        Block::decode(unpack(&Bytes::from(out), None).unwrap()).unwrap()
    }

    #[test]
    fn blocks_round_trip_with_every_codec() {
        let msgs = sample();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
            let block = round_trip(c, &msgs);
            let mut got = Vec::new();
            for conv in [2, 9, u64::MAX] {
                block.collect(ConversationId(conv), 0, u64::MAX, &mut got);
            }
            assert_eq!(got, msgs, "{c:?}");
        }
    }

    #[test]
    fn collect_honours_bounds() {
        let block = round_trip(Compression::Lz4, &sample());
        let mut got = Vec::new();
        block.collect(ConversationId(2), 10, 12, &mut got);
        let ids: Vec<u64> = got.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, vec![10, 11, 12]);
        got.clear();
        block.collect(ConversationId(3), 0, u64::MAX, &mut got);
        assert!(got.is_empty());
    }

    #[test]
    fn builder_refuses_out_of_order_rows() {
        let mut b = BlockBuilder::new();
        assert!(b.add(&msg(5, 1, "a")));
        assert!(!b.add(&msg(5, 3, "gap")));
        assert!(!b.add(&msg(4, 1, "earlier conversation")));
        assert!(b.add(&msg(5, 2, "b")));
        assert_eq!(b.rows(), 2);
    }

    #[test]
    fn many_senders_use_wide_indexes() {
        let msgs: Vec<Message> = (1..=600)
            .map(|id| {
                let mut m = msg(1, id, "x");
                m.sender = UserId(id * 13);
                m
            })
            .collect();
        let block = round_trip(Compression::None, &msgs);
        let mut got = Vec::new();
        block.collect(ConversationId(1), 1, 600, &mut got);
        assert_eq!(got, msgs);
    }

    #[test]
    fn every_flipped_bit_is_caught_by_the_checksum() {
        let mut b = BlockBuilder::new();
        for m in sample().iter().take(5) {
            b.add(m);
        }
        let mut out = Vec::new();
        b.finish_into(Compression::Lz4, None, &mut out);
        for byte in 0..out.len() {
            let mut bad = out.clone();
            bad[byte] ^= 0x10;
            assert!(unpack(&Bytes::from(bad), None).is_err(), "byte {byte}");
        }
    }

    #[test]
    fn the_body_bound_holds_for_the_longest_encodings() {
        // Rows whose fixed fields take the longest encodings: a new conversation, sender and
        // far timestamp each, replies far back, mentions of the largest ids.
        let mut b = BlockBuilder::new();
        for i in 0..2000u64 {
            let mut m = msg(u64::MAX / 2000 * (i + 1), u64::MAX / 2 + i, "");
            m.sender = UserId(u64::MAX - i * (1 << 50));
            m.timestamp_ms = if i % 2 == 0 { 0 } else { u64::MAX / 2 + 1 };
            m.reply_to = Some(MessageId(1));
            m.mentions = vec![UserId(u64::MAX); (i % 3) as usize];
            m.attachment = (i % 2 == 0).then(|| Bytes::from_static(b"a"));
            let room = b.has_room_for(m.as_ref());
            let before = b.max_body_len();
            assert!(room && b.add(&m));
            assert!(b.max_body_len() <= before + BlockBuilder::max_row_len(m.as_ref()));
        }
        let bound = b.max_body_len();
        let body = b.finish_body();
        assert!(body.len() <= bound, "{} > {bound}", body.len());
    }

    #[test]
    fn rows_over_the_limits_are_refused() {
        let mut b = BlockBuilder::new();
        let mut m = msg(1, 1, "x");
        m.mentions = vec![UserId(1); MAX_MENTIONS + 1];
        assert!(!b.add(&m));
        m.mentions.pop();
        assert!(b.add(&m));
    }

    #[test]
    fn the_options_stay_within_what_a_block_holds() {
        use crate::options::Options;
        let with = |max_message_bytes, block_bytes| {
            Options {
                max_message_bytes,
                block_bytes,
                ..Options::default()
            }
            .validate()
        };
        assert!(with(MAX_MESSAGE_BYTES, MAX_TARGET_BLOCK_BYTES).is_ok());
        assert!(with(MAX_MESSAGE_BYTES + 1, MAX_TARGET_BLOCK_BYTES).is_err());
        assert!(with(MAX_MESSAGE_BYTES, MAX_TARGET_BLOCK_BYTES + 1).is_err());
    }

    #[test]
    fn decoding_garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Block::decode(Bytes::from(bytes));
        }
    }
}
