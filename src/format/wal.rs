//! Write-ahead log framing: a file header, then checksummed records. See `docs/format-wal.md`.
//!
//! ```text
//! file   := file_header record*
//! header := magic:u64 = WAL_MAGIC | version:u32 | reserved:u32 = 0            (16 bytes)
//! record := len:u32 | type:u8 | 0:u8[3] | payload_crc:u32 | header_crc:u32 | payload[len]
//! ```
//!
//! `header_crc` covers the first 12 bytes of the record header, so a damaged length is caught
//! before it is trusted; `payload_crc` covers the payload. All integers are little-endian.
//! A record that runs past the end of the file is a torn tail (the write never completed);
//! a complete record whose checksum fails is corruption.

use crc32fast::Hasher;

use super::coding::{get_u32, get_u64, put_u32, put_u64};
use super::{within, OverLimit};

/// "CHATWAL" followed by a format byte, as a little-endian u64.
pub const WAL_MAGIC: u64 = u64::from_le_bytes(*b"CHATWAL\x01");
/// The newest WAL format version this build writes and reads.
pub const WAL_VERSION: u32 = 1;
/// Size of the file header.
pub const FILE_HEADER_LEN: usize = 16;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// The page size torn-tail detection assumes: file systems write whole pages.
const PAGE: usize = 4096;
/// Largest payload a record may carry; anything bigger is treated as corruption. One record
/// holds everything one write call commits, so this is also the most one write may carry.
pub const MAX_RECORD_LEN: usize = 256 << 20;

/// Record types. The values are part of the format and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// A write batch (see [`crate::format::batch`]).
    Batch = 1,
}

impl RecordType {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RecordType::Batch),
            _ => None,
        }
    }
}

/// Appends the file header to `buf`.
pub fn encode_file_header(buf: &mut Vec<u8>) {
    put_u64(buf, WAL_MAGIC);
    put_u32(buf, WAL_VERSION);
    put_u32(buf, 0);
}

/// Appends one framed record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, ty: RecordType, payload: &[u8]) {
    let start = buf.len();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    put_u32(buf, len);
    buf.extend_from_slice(&[ty as u8, 0, 0, 0]);
    put_u32(buf, crc32fast::hash(payload));
    let header_crc = crc32fast::hash(&buf[start..start + 12]);
    put_u32(buf, header_crc);
    buf.extend_from_slice(payload);
}

/// Begins a record in `buf` whose payload the caller appends next; finish it with
/// [`finish_record`]. Avoids building the payload in a separate buffer.
pub fn begin_record(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    start
}

/// Fills in the header of a record begun at `start` with [`begin_record`]. Refuses (leaving the
/// header unwritten: the caller drops the record) a payload over [`MAX_RECORD_LEN`], which a
/// reader would take for corruption.
pub fn finish_record(buf: &mut [u8], start: usize, ty: RecordType) -> Result<(), OverLimit> {
    let payload_start = start + RECORD_HEADER_LEN;
    let payload = buf.len().saturating_sub(payload_start);
    within(
        "bytes of one write's log record (split the batch)",
        payload,
        MAX_RECORD_LEN,
    )?;
    // Within the limit, so within a u32.
    let len = payload as u32;
    let mut h = Hasher::new();
    h.update(&buf[payload_start..]);
    let payload_crc = h.finalize();
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&[ty as u8, 0, 0, 0]);
    buf[start + 8..start + 12].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[start..start + 12]);
    buf[start + 12..start + 16].copy_from_slice(&header_crc.to_le_bytes());
    Ok(())
}

/// One step of reading a log.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStep<'a> {
    /// A complete, checksummed record; `offset` is where its header starts.
    Record {
        /// Record type.
        ty: RecordType,
        /// The payload.
        payload: &'a [u8],
        /// File offset of the record header.
        offset: u64,
    },
    /// The log ends cleanly at `offset`.
    End {
        /// File offset of the end.
        offset: u64,
    },
    /// The log ends with an incomplete record (or zero fill) starting at `offset`: everything
    /// from there on was never fully written and may be cut off.
    TornTail {
        /// File offset of the incomplete record.
        offset: u64,
    },
    /// Damaged bytes at `offset`.
    Corrupt {
        /// File offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Reads records out of a whole log file held in memory.
#[derive(Debug)]
pub struct LogReader<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

/// Checks the file header. `Ok(None)` if the file is too short to hold one (a torn creation).
pub fn check_file_header(buf: &[u8]) -> Result<Option<u32>, &'static str> {
    if buf.len() < FILE_HEADER_LEN {
        return Ok(None);
    }
    if get_u64(buf, 0) != Some(WAL_MAGIC) {
        if buf[..FILE_HEADER_LEN].iter().all(|&b| b == 0) {
            return Ok(None);
        }
        return Err("bad WAL magic");
    }
    Ok(get_u32(buf, 8))
}

impl<'a> LogReader<'a> {
    /// Reads the records of `buf`, which must start with a valid file header.
    pub fn new(buf: &'a [u8]) -> Self {
        LogReader {
            buf,
            pos: FILE_HEADER_LEN.min(buf.len()),
            done: false,
        }
    }

    fn tail_is_zero(&self) -> bool {
        self.buf[self.pos..].iter().all(|&b| b == 0)
    }

    /// Returns the next step. After `End`, `TornTail` or `Corrupt` it keeps returning the same.
    pub fn next_step(&mut self) -> ReadStep<'a> {
        let offset = self.pos as u64;
        let remaining = self.buf.len() - self.pos;
        if remaining == 0 {
            self.done = true;
            return ReadStep::End { offset };
        }
        if remaining < RECORD_HEADER_LEN {
            return ReadStep::TornTail { offset };
        }
        let h = &self.buf[self.pos..self.pos + RECORD_HEADER_LEN];
        let header_crc = get_u32(h, 12).unwrap_or(0);
        if crc32fast::hash(&h[..12]) != header_crc {
            // A file system may extend a file with zeroes that were never written (power cut
            // after the size update but before the data): that is a torn tail, not damage.
            if self.tail_is_zero() {
                return ReadStep::TornTail { offset };
            }
            return ReadStep::Corrupt {
                offset,
                reason: "record header checksum mismatch",
            };
        }
        let len = get_u32(h, 0).unwrap_or(0) as usize;
        let Some(ty) = RecordType::from_u8(h[4]) else {
            return ReadStep::Corrupt {
                offset,
                reason: "unknown record type",
            };
        };
        if len > MAX_RECORD_LEN {
            return ReadStep::Corrupt {
                offset,
                reason: "record length over the limit",
            };
        }
        let start = self.pos + RECORD_HEADER_LEN;
        if len > self.buf.len() - start {
            return ReadStep::TornTail { offset };
        }
        let payload = &self.buf[start..start + len];
        if crc32fast::hash(payload) != get_u32(h, 8).unwrap_or(0) {
            // A record whose tail never reached the disk: zeroes from a page boundary inside
            // it to the end of the file (the file system extended the file, the pages were
            // never written). Such a record was never synced, so never acknowledged.
            let zero_from = self
                .buf
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1)
                .max(start);
            let page_aligned = zero_from.div_ceil(PAGE) * PAGE;
            if zero_from == start || page_aligned < start + len {
                return ReadStep::TornTail { offset };
            }
            return ReadStep::Corrupt {
                offset,
                reason: "record payload checksum mismatch",
            };
        }
        self.pos = start + len;
        ReadStep::Record {
            ty,
            payload,
            offset,
        }
    }

    /// Whether the reader reached a clean end.
    pub fn finished(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        encode_file_header(&mut buf);
        let mut ends = Vec::new();
        for p in payloads {
            encode_record(&mut buf, RecordType::Batch, p);
            ends.push(buf.len());
        }
        (buf, ends)
    }

    fn read_all(buf: &[u8]) -> (Vec<Vec<u8>>, ReadStep<'_>) {
        let mut r = LogReader::new(buf);
        let mut out = Vec::new();
        loop {
            match r.next_step() {
                ReadStep::Record { payload, .. } => out.push(payload.to_vec()),
                other => return (out, other),
            }
        }
    }

    #[test]
    fn records_round_trip() {
        let (buf, _) = log_of(&[b"a", b"", b"hello world"]);
        assert_eq!(check_file_header(&buf), Ok(Some(WAL_VERSION)));
        let (recs, end) = read_all(&buf);
        assert_eq!(recs, vec![b"a".to_vec(), vec![], b"hello world".to_vec()]);
        assert_eq!(
            end,
            ReadStep::End {
                offset: buf.len() as u64
            }
        );
    }

    #[test]
    fn begin_finish_matches_encode() {
        let mut a = Vec::new();
        encode_record(&mut a, RecordType::Batch, b"payload bytes");
        let mut b = Vec::new();
        let start = begin_record(&mut b);
        b.extend_from_slice(b"payload bytes");
        finish_record(&mut b, start, RecordType::Batch).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn finish_refuses_a_payload_over_the_limit() {
        let mut log = Vec::new();
        encode_file_header(&mut log);
        let start = begin_record(&mut log);
        log.resize(start + RECORD_HEADER_LEN + MAX_RECORD_LEN + 1, 7);
        assert!(finish_record(&mut log, start, RecordType::Batch).is_err());
        log.pop();
        finish_record(&mut log, start, RecordType::Batch).unwrap();
        let mut r = LogReader::new(&log);
        assert!(
            matches!(r.next_step(), ReadStep::Record { payload, .. } if payload.len() == MAX_RECORD_LEN),
            "a record of exactly the limit reads back"
        );
        assert!(matches!(r.next_step(), ReadStep::End { .. }));
    }

    #[test]
    fn every_cut_is_a_torn_tail_after_the_complete_records() {
        let (buf, ends) = log_of(&[b"first", b"second record", b"third"]);
        for cut in FILE_HEADER_LEN..buf.len() {
            let (recs, end) = read_all(&buf[..cut]);
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(recs.len(), complete, "cut at {cut}");
            let boundary = if complete == 0 {
                FILE_HEADER_LEN
            } else {
                ends[complete - 1]
            };
            if boundary == cut {
                assert_eq!(end, ReadStep::End { offset: cut as u64 });
            } else {
                assert_eq!(
                    end,
                    ReadStep::TornTail {
                        offset: boundary as u64
                    },
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn zero_fill_is_a_torn_tail() {
        let (mut buf, ends) = log_of(&[b"one"]);
        buf.extend_from_slice(&[0u8; 100]);
        let (recs, end) = read_all(&buf);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            end,
            ReadStep::TornTail {
                offset: ends[0] as u64
            }
        );
    }

    #[test]
    fn a_header_followed_by_zeroes_is_a_torn_tail() {
        let (mut buf, ends) = log_of(&[b"one", b"second payload"]);
        let payload_start = ends[0] + RECORD_HEADER_LEN;
        for b in &mut buf[payload_start..] {
            *b = 0;
        }
        buf.extend_from_slice(&[0u8; 64]);
        let (recs, end) = read_all(&buf);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            end,
            ReadStep::TornTail {
                offset: ends[0] as u64
            }
        );
    }

    #[test]
    fn a_flipped_bit_in_a_complete_record_is_corruption() {
        let (buf, ends) = log_of(&[b"first", b"second record", b"third"]);
        for byte in ends[0]..ends[1] {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                let (recs, end) = read_all(&bad);
                assert_eq!(recs.len(), 1, "byte {byte} bit {bit}");
                assert!(
                    matches!(end, ReadStep::Corrupt { offset, .. } if offset == ends[0] as u64),
                    "byte {byte} bit {bit}: {end:?}"
                );
            }
        }
    }
}
