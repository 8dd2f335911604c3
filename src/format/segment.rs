//! Segment files: immutable, sorted by (conversation, id), made of columnar blocks, with a block
//! index, a conversation index and a footer. See `docs/format-segment.md`.
//!
//! ```text
//! segment      := header block* block_index conv_index footer
//! header       := magic:u64 = SEGMENT_MAGIC | version:u32 | reserved:u32 = 0         (16 bytes)
//! block        := body | uncompressed_len:u32 | codec:u8 | crc:u32   (see format::block)
//! block_index  := (first_conv:u64 | first_id:u64 | offset:u64 | len:u32 | rows:u32){block_count}
//! conv_index   := (conv:u64 | first_id:u64 | last_id:u64){conv_count}
//! footer       := block_index_offset:u64 | block_count:u32 | conv_count:u32 |
//!                 message_count:u64 | logical_bytes:u64 | index_crc:u32 | version:u32 |
//!                 footer_crc:u32 | reserved:u32 = 0 | magic:u64 = SEGMENT_MAGIC     (56 bytes)
//! ```
//! Both indexes are fixed-width and sorted, so a lookup is a binary search over the mapped file:
//! opening a segment reads only its footer and checks the index checksum.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::block::{unpack, Block, BlockBuilder};
use super::coding::{get_u32, get_u64, put_u32, put_u64};
use crate::error::{Error, Result};
use crate::fs::WritableFile;
use crate::options::Compression;
use crate::types::{ConversationId, Message};

/// "CHATSEG" and a format byte, as a little-endian u64.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"CHATSEG\x01");
/// The newest segment format version this build writes and reads.
pub const SEGMENT_VERSION: u32 = 1;
/// Size of the file header.
pub const HEADER_LEN: usize = 16;
/// Size of the footer.
pub const FOOTER_LEN: usize = 56;
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
    block_index: Vec<u8>,
    conv_index: Vec<(u64, u64, u64)>,
    summary: SegmentSummary,
}

impl std::fmt::Debug for SegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWriter")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Fixed per-message bytes counted as logical size (ids, sender, timestamp, kind).
const LOGICAL_FIXED_BYTES: u64 = 33;

impl SegmentWriter {
    /// Starts a segment in `file`.
    pub fn new(file: Box<dyn WritableFile>, compression: Compression, block_bytes: usize) -> Self {
        let mut out = Vec::with_capacity(block_bytes * 2);
        put_u64(&mut out, SEGMENT_MAGIC);
        put_u32(&mut out, SEGMENT_VERSION);
        put_u32(&mut out, 0);
        SegmentWriter {
            file,
            compression,
            block_bytes,
            block: BlockBuilder::new(),
            out,
            offset: 0,
            block_index: Vec::new(),
            conv_index: Vec::new(),
            summary: SegmentSummary::default(),
        }
    }

    /// Adds a message. Returns `false` (and adds nothing) if it is out of order.
    pub fn add(&mut self, m: &Message) -> std::io::Result<bool> {
        match self.conv_index.last_mut() {
            Some(last) if last.0 == m.conversation.0 => {
                if m.id.0 != last.2 + 1 {
                    return Ok(false);
                }
                last.2 = m.id.0;
            }
            Some(last) if last.0 > m.conversation.0 => return Ok(false),
            _ => self.conv_index.push((m.conversation.0, m.id.0, m.id.0)),
        }
        if !self.block.accepts(m) {
            self.finish_block()?;
        }
        self.block.add(m);
        self.summary.messages += 1;
        self.summary.logical_bytes += LOGICAL_FIXED_BYTES
            + m.content.len() as u64
            + m.attachment.as_ref().map_or(0, |a| a.len() as u64)
            + 8 * m.mentions.len() as u64;
        if self.block.estimated_len() >= self.block_bytes {
            self.finish_block()?;
        }
        Ok(true)
    }

    fn finish_block(&mut self) -> std::io::Result<()> {
        let Some((conv, id)) = self.block.first_key() else {
            return Ok(());
        };
        let rows = self.block.rows() as u32;
        let start = self.out.len();
        self.block.finish_into(self.compression, &mut self.out);
        let len = (self.out.len() - start) as u32;
        let offset = self.offset + start as u64;
        put_u64(&mut self.block_index, conv.0);
        put_u64(&mut self.block_index, id);
        put_u64(&mut self.block_index, offset);
        put_u32(&mut self.block_index, len);
        put_u32(&mut self.block_index, rows);
        self.summary.blocks += 1;
        if self.out.len() >= (1 << 20) {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.out)?;
        self.offset += self.out.len() as u64;
        self.out.clear();
        Ok(())
    }

    /// Writes the indexes and footer and fsyncs the file.
    pub fn finish(mut self) -> std::io::Result<SegmentSummary> {
        self.finish_block()?;
        let block_index_offset = self.offset + self.out.len() as u64;
        let index_start = self.out.len();
        self.out.extend_from_slice(&self.block_index);
        for &(conv, first, last) in &self.conv_index {
            put_u64(&mut self.out, conv);
            put_u64(&mut self.out, first);
            put_u64(&mut self.out, last);
        }
        let index_crc = crc32fast::hash(&self.out[index_start..]);
        let footer_start = self.out.len();
        put_u64(&mut self.out, block_index_offset);
        put_u32(&mut self.out, self.summary.blocks as u32);
        put_u32(&mut self.out, self.conv_index.len() as u32);
        put_u64(&mut self.out, self.summary.messages);
        put_u64(&mut self.out, self.summary.logical_bytes);
        put_u32(&mut self.out, index_crc);
        put_u32(&mut self.out, SEGMENT_VERSION);
        let footer_crc = crc32fast::hash(&self.out[footer_start..]);
        put_u32(&mut self.out, footer_crc);
        put_u32(&mut self.out, 0);
        put_u64(&mut self.out, SEGMENT_MAGIC);
        self.drain()?;
        self.file.sync()?;
        self.summary.conversations = self.conv_index.len() as u64;
        self.summary.file_bytes = self.offset;
        Ok(self.summary)
    }
}

/// An open segment: the mapped file plus the positions of its indexes.
#[derive(Debug)]
pub struct SegmentReader {
    path: PathBuf,
    data: Bytes,
    block_index_offset: usize,
    block_count: usize,
    conv_index_offset: usize,
    conv_count: usize,
    message_count: u64,
    logical_bytes: u64,
}

/// Location and size of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHandle {
    /// File offset.
    pub offset: u64,
    /// Stored length, trailer included.
    pub len: u32,
}

impl SegmentReader {
    /// Checks the footer and index checksum of the segment held in `data`.
    pub fn open(path: &Path, data: Bytes) -> Result<Self> {
        let corrupt = |offset: usize, why: &str| Error::corruption(path, offset as u64, why);
        if data.len() < HEADER_LEN + FOOTER_LEN {
            return Err(corrupt(0, "file too short to be a segment"));
        }
        if get_u64(&data, 0) != Some(SEGMENT_MAGIC) {
            return Err(corrupt(0, "bad segment magic"));
        }
        let f = data.len() - FOOTER_LEN;
        if get_u64(&data, f + 48) != Some(SEGMENT_MAGIC) {
            return Err(corrupt(f, "bad footer magic"));
        }
        let footer_crc = get_u32(&data, f + 40).unwrap_or(0);
        if get_u32(&data, f + 44) != Some(0) {
            return Err(corrupt(f + 44, "reserved footer word is not zero"));
        }
        if crc32fast::hash(&data[f..f + 40]) != footer_crc {
            return Err(corrupt(f, "footer checksum mismatch"));
        }
        let field = |at: usize| get_u64(&data, f + at).unwrap_or(0);
        let field32 = |at: usize| get_u32(&data, f + at).unwrap_or(0);
        let version = field32(36);
        if version == 0 || version > SEGMENT_VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: SEGMENT_VERSION,
            });
        }
        let block_index_offset = usize::try_from(field(0)).unwrap_or(usize::MAX);
        let block_count = field32(8) as usize;
        let conv_count = field32(12) as usize;
        let index_len = block_count
            .checked_mul(BLOCK_ENTRY_LEN)
            .and_then(|b| b.checked_add(conv_count.checked_mul(CONV_ENTRY_LEN)?));
        match index_len.and_then(|l| block_index_offset.checked_add(l)) {
            Some(end) if end == f && block_index_offset >= HEADER_LEN => {}
            _ => return Err(corrupt(f, "index bounds do not match the footer")),
        }
        if crc32fast::hash(&data[block_index_offset..f]) != field32(32) {
            return Err(corrupt(block_index_offset, "index checksum mismatch"));
        }
        let reader = SegmentReader {
            path: path.to_path_buf(),
            block_index_offset,
            block_count,
            conv_index_offset: block_index_offset + block_count * BLOCK_ENTRY_LEN,
            conv_count,
            message_count: field(16),
            logical_bytes: field(24),
            data,
        };
        for i in 0..block_count {
            let h = reader.block_handle(i);
            let end = h.offset.checked_add(u64::from(h.len));
            if h.offset < HEADER_LEN as u64 || end.is_none_or(|e| e > block_index_offset as u64) {
                return Err(corrupt(
                    reader.block_index_offset + i * BLOCK_ENTRY_LEN,
                    "block handle outside the data area",
                ));
            }
        }
        Ok(reader)
    }

    /// The file this segment was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Messages stored.
    pub fn message_count(&self) -> u64 {
        self.message_count
    }

    /// Logical (pre-encoding) bytes of the messages stored.
    pub fn logical_bytes(&self) -> u64 {
        self.logical_bytes
    }

    /// File size.
    pub fn file_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Number of blocks.
    pub fn block_count(&self) -> usize {
        self.block_count
    }

    /// Number of conversations.
    pub fn conversation_count(&self) -> usize {
        self.conv_count
    }

    fn block_entry(&self, i: usize) -> (u64, u64) {
        let at = self.block_index_offset + i * BLOCK_ENTRY_LEN;
        (
            get_u64(&self.data, at).unwrap_or(0),
            get_u64(&self.data, at + 8).unwrap_or(0),
        )
    }

    /// Where block `i` is. REQUIRES: `i < block_count()`.
    pub fn block_handle(&self, i: usize) -> BlockHandle {
        let at = self.block_index_offset + i * BLOCK_ENTRY_LEN;
        BlockHandle {
            offset: get_u64(&self.data, at + 16).unwrap_or(0),
            len: get_u32(&self.data, at + 24).unwrap_or(0),
        }
    }

    /// The i-th conversation index entry: (conversation, first id, last id).
    pub fn conversation_entry(&self, i: usize) -> (ConversationId, u64, u64) {
        let at = self.conv_index_offset + i * CONV_ENTRY_LEN;
        (
            ConversationId(get_u64(&self.data, at).unwrap_or(0)),
            get_u64(&self.data, at + 8).unwrap_or(0),
            get_u64(&self.data, at + 16).unwrap_or(0),
        )
    }

    /// The first and last id of `conv` in this segment.
    pub fn conversation_range(&self, conv: ConversationId) -> Option<(u64, u64)> {
        let (mut lo, mut hi) = (0, self.conv_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (c, first, last) = self.conversation_entry(mid);
            match c.cmp(&conv) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some((first, last)),
            }
        }
        None
    }

    /// The block that holds (conv, id) if the segment has it: the last block whose first key is
    /// not after it.
    pub fn find_block(&self, conv: ConversationId, id: u64) -> Option<usize> {
        let key = (conv.0, id);
        let (mut lo, mut hi) = (0, self.block_count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.block_entry(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }

    /// Reads, checks and decodes block `i`.
    pub fn read_block(&self, i: usize) -> Result<Block> {
        if i >= self.block_count {
            return Err(Error::corruption(
                &self.path,
                0,
                "block number out of range",
            ));
        }
        let h = self.block_handle(i);
        let start = h.offset as usize;
        let stored = self.data.slice(start..start + h.len as usize);
        let body = unpack(&stored).map_err(|why| Error::corruption(&self.path, h.offset, why))?;
        let block =
            Block::decode(body).map_err(|why| Error::corruption(&self.path, h.offset, why))?;
        let want_rows = get_u32(
            &self.data,
            self.block_index_offset + i * BLOCK_ENTRY_LEN + 28,
        );
        if Some(block.rows() as u32) != want_rows {
            return Err(Error::corruption(
                &self.path,
                h.offset,
                "block row count disagrees with the index",
            ));
        }
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let seg = SegmentReader::open(Path::new("t.seg"), data).unwrap();
        assert_eq!(seg.message_count(), msgs.len() as u64);
        assert_eq!(seg.conversation_count(), 4);
        for conv in [1u64, 2, 5, 1000] {
            let want: Vec<&Message> = msgs.iter().filter(|m| m.conversation.0 == conv).collect();
            let (first, last) = seg.conversation_range(ConversationId(conv)).unwrap();
            assert_eq!((first, last), (1, want.len() as u64));
            // Every id is found in the block the index points to.
            for m in &want {
                let b = seg.find_block(m.conversation, m.id.0).unwrap();
                let mut got = Vec::new();
                seg.read_block(b)
                    .unwrap()
                    .collect(m.conversation, m.id.0, m.id.0, &mut got);
                assert_eq!(got, vec![(*m).clone()]);
            }
        }
        assert_eq!(seg.conversation_range(ConversationId(3)), None);
        assert_eq!(seg.conversation_range(ConversationId(0)), None);
        assert_eq!(seg.find_block(ConversationId(0), 1), None);
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
            let outcome = SegmentReader::open(Path::new("x.seg"), Bytes::from(bad)).and_then(|s| {
                for b in 0..s.block_count() {
                    s.read_block(b)?;
                }
                Ok(())
            });
            match outcome {
                Err(e) if e.is_corruption() => {}
                // The header version and reserved words are not read: the footer version rules.
                Ok(()) if (8..16).contains(&byte) => {}
                // A flipped version byte in the footer is caught by the footer checksum.
                other => panic!("byte {byte}: {other:?}"),
            }
        }
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
            let err = SegmentReader::open(Path::new("x.seg"), data.slice(..cut)).unwrap_err();
            assert!(err.is_corruption(), "cut {cut}: {err}");
        }
    }
}
