//! Write-ahead log framing: a file header, then checksummed records. See `docs/format-wal.md`.
//!
//! ```text
//! file    := file_header record*
//! header  := magic:u64 = WAL_MAGIC | version:u32 | reserved:u32 = 0           (16 bytes)
//! record  := len:u32 | type:u8 | 0:u8[3] | payload_crc:u32 | header_crc:u32 | payload[len]
//! payload := synced_through:varint lsn:varint body          (versions 2 and 3; v1: body only)
//! ```
//!
//! `header_crc` covers the first 12 bytes of the record header, so a damaged length is caught
//! before it is trusted; `payload_crc` covers the payload. All integers are little-endian.
//! From version 3 `header_crc` also covers the number of the log file the record was written
//! to (the number in its name, which no byte of the file holds): a file reused for a newer log
//! keeps the records of its earlier use past the newer records, and those no longer check
//! out, so they end the log like any torn tail.
//! `synced_through` is how many bytes of the file were known durable (fsynced) when the record
//! was written. It tells damage apart from a torn tail: bytes that a later valid record says
//! were durable cannot have been lost by a power cut, so damage there is corruption; damage
//! that no later record vouches for is the unsynced tail of a write that never completed
//! (pages of it may be lost in any order), and is cut off. `lsn` is the record's log sequence
//! number: one per commit record, consecutive across the store's WAL files, and the same on
//! every store that applies the record (see `Store::apply`).

use crc32fast::Hasher;

use super::coding::{get_u32, get_u64, put_u32, put_u64, put_varint, Reader};
use super::{within, OverLimit};

/// "CHATWAL" followed by a format byte, as a little-endian u64.
pub const WAL_MAGIC: u64 = u64::from_le_bytes(*b"CHATWAL\x01");
/// The newest WAL format version this build writes and reads.
pub const WAL_VERSION: u32 = 3;
/// The first version whose records carry `synced_through`.
const SYNCED_THROUGH_VERSION: u32 = 2;
/// The first version whose record checksums cover the log file's number.
const LOG_NUMBER_VERSION: u32 = 3;
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
        // A new type must also be searched for in `vouched_after`.
        match v {
            1 => Some(RecordType::Batch),
            _ => None,
        }
    }
}

/// Appends the file header (of the newest version) to `buf`.
pub fn encode_file_header(buf: &mut Vec<u8>) {
    encode_file_header_version(buf, WAL_VERSION);
}

/// Appends a file header of `version` (tests and tools that make files of older versions).
pub fn encode_file_header_version(buf: &mut Vec<u8>, version: u32) {
    put_u64(buf, WAL_MAGIC);
    put_u32(buf, version);
    put_u32(buf, 0);
}

/// Appends one framed record (of the newest version) for the log file numbered `log_number`
/// to `buf`; `synced_through` is how many bytes of the file were durable when it was written,
/// `lsn` its sequence number. For tests and tools: a payload over [`MAX_RECORD_LEN`] is left
/// with a zeroed header, which readers take for damage (the store's own write path refuses
/// such a write instead, see [`finish_record`]).
pub fn encode_record(
    buf: &mut Vec<u8>,
    ty: RecordType,
    synced_through: u64,
    lsn: u64,
    body: &[u8],
    log_number: u64,
) {
    let start = begin_record(buf, synced_through, lsn);
    buf.extend_from_slice(body);
    let _ = finish_record(buf, start, ty, log_number);
}

/// Appends one framed version-1 record (no `synced_through`) to `buf`, as
/// [`encode_record`] does.
pub fn encode_record_v1(buf: &mut Vec<u8>, ty: RecordType, body: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    buf.extend_from_slice(body);
    let _ = frame(buf, start, ty, None);
}

/// Appends one framed version-2 record (its checksum covers no log number) to `buf`, as
/// [`encode_record`] does.
pub fn encode_record_v2(
    buf: &mut Vec<u8>,
    ty: RecordType,
    synced_through: u64,
    lsn: u64,
    body: &[u8],
) {
    let start = begin_record(buf, synced_through, lsn);
    buf.extend_from_slice(body);
    let _ = frame(buf, start, ty, None);
}

/// Begins a record in `buf` whose body the caller appends next; finish it with
/// [`finish_record`]. Avoids building the payload in a separate buffer.
pub fn begin_record(buf: &mut Vec<u8>, synced_through: u64, lsn: u64) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    put_varint(buf, synced_through);
    put_varint(buf, lsn);
    start
}

/// Bytes [`begin_record`] adds in front of the body (header, `synced_through` and `lsn`).
pub fn record_overhead(synced_through: u64, lsn: u64) -> usize {
    RECORD_HEADER_LEN + varint_len(synced_through) + varint_len(lsn)
}

fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Fills in the header of a record begun at `start` with [`begin_record`], for the log file
/// numbered `log_number`. Refuses (leaving the header unwritten: the caller drops the record)
/// a payload over [`MAX_RECORD_LEN`], which a reader would take for corruption.
pub fn finish_record(
    buf: &mut [u8],
    start: usize,
    ty: RecordType,
    log_number: u64,
) -> Result<(), OverLimit> {
    frame(buf, start, ty, Some(log_number))
}

/// The checksum of a record header's first 12 bytes: in version 3 and later over the log's
/// number first (`Some`), in earlier versions over the bytes alone (`None`).
fn header_crc(header: &[u8], log_number: Option<u64>) -> u32 {
    let mut h = Hasher::new();
    if let Some(n) = log_number {
        h.update(&n.to_le_bytes());
    }
    h.update(header);
    h.finalize()
}

fn frame(
    buf: &mut [u8],
    start: usize,
    ty: RecordType,
    log_number: Option<u64>,
) -> Result<(), OverLimit> {
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
    let crc = header_crc(&buf[start..start + 12], log_number);
    buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// One step of reading a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadStep<'a> {
    /// A complete, checksummed record; `offset` is where its header starts.
    Record {
        /// Record type.
        ty: RecordType,
        /// The record's body (the payload after `synced_through`).
        payload: &'a [u8],
        /// File offset of the record header.
        offset: u64,
        /// Bytes of the file that were durable when the record was written (0 in version 1).
        synced_through: u64,
        /// The record's log sequence number (0 in version 1, where records carry none).
        lsn: u64,
    },
    /// The log ends cleanly at `offset`.
    End {
        /// File offset of the end.
        offset: u64,
    },
    /// The log ends with an incomplete or damaged region starting at `offset` that no later
    /// record shows was ever durable: everything from there on was never fully written and
    /// may be cut off.
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
    version: u32,
    /// The number in the file's name, which version 3 record checksums cover.
    log_number: u64,
    done: bool,
    /// The final step, once reached (it repeats).
    last: Option<ReadStep<'a>>,
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

/// A record that checks out completely at `pos`.
struct Found<'a> {
    ty: RecordType,
    body: &'a [u8],
    synced_through: u64,
    lsn: u64,
    end: usize,
}

/// The log number a record checksum of `version` covers, if any.
fn seed(version: u32, log_number: u64) -> Option<u64> {
    (version >= LOG_NUMBER_VERSION).then_some(log_number)
}

fn record_at(buf: &[u8], pos: usize, version: u32, log_number: u64) -> Option<Found<'_>> {
    let h = buf.get(pos..pos.checked_add(RECORD_HEADER_LEN)?)?;
    // The type first: a cheap test that rules out most positions of a scan for the next
    // record (a reused file's old records, or damage) before a checksum is computed.
    let ty = RecordType::from_u8(h[4])?;
    if header_crc(&h[..12], seed(version, log_number)) != get_u32(h, 12)? {
        return None;
    }
    let len = get_u32(h, 0)? as usize;
    if len > MAX_RECORD_LEN {
        return None;
    }
    let start = pos + RECORD_HEADER_LEN;
    let payload = buf.get(start..start.checked_add(len)?)?;
    if crc32fast::hash(payload) != get_u32(h, 8)? {
        return None;
    }
    let (synced_through, lsn, body) = if version >= SYNCED_THROUGH_VERSION {
        let mut r = Reader::new(payload);
        let synced = r.varint()?;
        let lsn = r.varint()?;
        (synced, lsn, &payload[r.position()..])
    } else {
        (0, 0, payload)
    };
    Some(Found {
        ty,
        body,
        synced_through,
        lsn,
        end: start + len,
    })
}

/// The earliest durability claim a valid record after `from` makes about bytes at or past
/// `damage`, in a log of `version` numbered `log_number`: the offset of such a record, if
/// any. Scans every position (a damaged length cannot be trusted to find the next record); a
/// false match needs two 32-bit checksums to agree by chance.
pub fn vouched_after(
    buf: &[u8],
    from: usize,
    damage: usize,
    version: u32,
    log_number: u64,
) -> Option<u64> {
    let mut pos = from;
    while pos.saturating_add(RECORD_HEADER_LEN) <= buf.len() {
        // Only where the type byte holds a known type can a record start: jump there (a
        // reused file's old records past the new ones are megabytes to scan).
        let type_byte = buf.get(pos + 4..).unwrap_or_default();
        pos += memchr::memchr(RecordType::Batch as u8, type_byte)?;
        if pos + RECORD_HEADER_LEN > buf.len() {
            break;
        }
        match record_at(buf, pos, version, log_number) {
            Some(found) => {
                if found.synced_through > damage as u64 {
                    return Some(pos as u64);
                }
                pos = found.end;
            }
            None => pos += 1,
        }
    }
    None
}

impl<'a> LogReader<'a> {
    /// Reads the records of `buf`, the log file numbered `log_number` (the number in its
    /// name), which must start with a valid file header (its version decides the record
    /// layout; an unreadable one is taken as the newest).
    pub fn new(buf: &'a [u8], log_number: u64) -> Self {
        let version = match check_file_header(buf) {
            Ok(Some(v)) => v,
            _ => WAL_VERSION,
        };
        LogReader {
            buf,
            pos: FILE_HEADER_LEN.min(buf.len()),
            version,
            log_number,
            done: false,
            last: None,
        }
    }

    fn tail_is_zero(&self) -> bool {
        self.buf[self.pos..].iter().all(|&b| b == 0)
    }

    /// Returns the next step. After `End`, `TornTail` or `Corrupt` it keeps returning the same.
    pub fn next_step(&mut self) -> ReadStep<'a> {
        if let Some(last) = &self.last {
            return last.clone();
        }
        let step = if self.version >= SYNCED_THROUGH_VERSION {
            self.step()
        } else {
            self.step_v1()
        };
        if !matches!(step, ReadStep::Record { .. }) {
            self.done = matches!(step, ReadStep::End { .. });
            self.last = Some(step.clone());
        }
        step
    }

    /// Version 2 and later: damage is corruption only if a later record vouches that it was
    /// durable.
    fn step(&mut self) -> ReadStep<'a> {
        let offset = self.pos as u64;
        if self.pos == self.buf.len() {
            return ReadStep::End { offset };
        }
        if let Some(found) = record_at(self.buf, self.pos, self.version, self.log_number) {
            self.pos = found.end;
            return ReadStep::Record {
                ty: found.ty,
                payload: found.body,
                offset,
                synced_through: found.synced_through,
                lsn: found.lsn,
            };
        }
        match vouched_after(
            self.buf,
            self.pos + 1,
            self.pos,
            self.version,
            self.log_number,
        ) {
            None => ReadStep::TornTail { offset },
            Some(_) => ReadStep::Corrupt {
                offset,
                reason: "damaged record in bytes that a later record shows were durable",
            },
        }
    }

    /// Version 1: records carry no durability claim, so damage is told from a torn tail by
    /// its shape alone.
    fn step_v1(&mut self) -> ReadStep<'a> {
        let offset = self.pos as u64;
        let remaining = self.buf.len() - self.pos;
        if remaining == 0 {
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
            synced_through: 0,
            lsn: 0,
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

    /// The number of the log file the tests' records are written to.
    const LOG: u64 = 7;

    fn log_of(payloads: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        encode_file_header(&mut buf);
        let mut ends = Vec::new();
        for p in payloads {
            let synced = buf.len() as u64;
            encode_record(
                &mut buf,
                RecordType::Batch,
                synced,
                ends.len() as u64 + 1,
                p,
                LOG,
            );
            ends.push(buf.len());
        }
        (buf, ends)
    }

    fn read_all(buf: &[u8]) -> (Vec<Vec<u8>>, ReadStep<'_>) {
        let mut r = LogReader::new(buf, LOG);
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
        encode_record(&mut a, RecordType::Batch, 77, 300, b"payload bytes", LOG);
        assert_eq!(a.len(), record_overhead(77, 300) + 13);
        assert_eq!(record_overhead(0, 127), RECORD_HEADER_LEN + 2);
        assert_eq!(record_overhead(128, 1 << 63), RECORD_HEADER_LEN + 2 + 10);
        let mut b = Vec::new();
        let start = begin_record(&mut b, 77, 300);
        b.extend_from_slice(b"payload bytes");
        finish_record(&mut b, start, RecordType::Batch, LOG).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn finish_refuses_a_payload_over_the_limit() {
        let mut log = Vec::new();
        encode_file_header(&mut log);
        let start = begin_record(&mut log, 0, 1);
        log.resize(start + RECORD_HEADER_LEN + MAX_RECORD_LEN + 1, 7);
        assert!(finish_record(&mut log, start, RecordType::Batch, LOG).is_err());
        log.pop();
        finish_record(&mut log, start, RecordType::Batch, LOG).unwrap();
        let mut r = LogReader::new(&log, LOG);
        assert!(
            // The body is what follows the one-byte `synced_through` and `lsn`.
            matches!(r.next_step(), ReadStep::Record { payload, .. } if payload.len() == MAX_RECORD_LEN - 2),
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

    /// A log whose records all claim only the first `durable` bytes were synced (one write
    /// that was never fsynced, in buffered durability or a group in flight).
    fn unsynced_log(payloads: &[&[u8]], durable: u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        encode_file_header(&mut buf);
        let mut ends = Vec::new();
        for p in payloads {
            encode_record(
                &mut buf,
                RecordType::Batch,
                durable,
                ends.len() as u64 + 1,
                p,
                LOG,
            );
            ends.push(buf.len());
        }
        (buf, ends)
    }

    #[test]
    fn damage_that_no_later_record_vouches_for_is_a_torn_tail() {
        let big = [7u8; 600];
        let (buf, ends) = unsynced_log(&[b"synced", &big, &big, b"last"], 0);
        // Lose the second record's bytes (as zeroes or stale bytes) while later ones survive:
        // nothing after the damage says it was durable, so it is the tail of a write that
        // never completed.
        for stale in [0u8, 0x5a] {
            let mut bad = buf.clone();
            for b in &mut bad[ends[0] + 20..ends[0] + 300] {
                *b = stale;
            }
            let (recs, end) = read_all(&bad);
            assert_eq!(recs.len(), 1, "stale {stale}");
            assert_eq!(
                end,
                ReadStep::TornTail {
                    offset: ends[0] as u64
                }
            );
        }
    }

    #[test]
    fn damage_followed_by_a_record_that_vouches_for_it_is_corruption() {
        let big = [7u8; 600];
        let (mut buf, ends) = unsynced_log(&[b"synced", &big], 0);
        // A later group written after an fsync that covered the damaged bytes.
        let synced = buf.len() as u64;
        encode_record(
            &mut buf,
            RecordType::Batch,
            synced,
            3,
            b"after the sync",
            LOG,
        );
        for b in &mut buf[ends[0] + 20..ends[0] + 300] {
            *b = 0;
        }
        let (recs, end) = read_all(&buf);
        assert_eq!(recs.len(), 1);
        assert!(
            matches!(end, ReadStep::Corrupt { offset, .. } if offset == ends[0] as u64),
            "{end:?}"
        );
        assert_eq!(
            vouched_after(&buf, ends[0] + 1, ends[0], WAL_VERSION, LOG),
            Some(ends[1] as u64)
        );
    }

    proptest::proptest! {
        /// Whatever a reused file held (another log's records, with any durability claims),
        /// and wherever a power cut tore the new log's unsynced tail (the old bytes showing
        /// through from there), the reader returns the new records before the tear, in
        /// order, and then a torn tail or the end: never an old record, never corruption.
        #[test]
        fn a_reused_file_reads_as_its_own_records_up_to_a_tear(
            old in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1..12),
            new in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..12),
            old_claims in proptest::collection::vec(0u64..10_000, 12),
            synced_records in 0usize..12,
            tear in 0usize..5000,
        ) {
            let mut file = Vec::new();
            encode_file_header(&mut file);
            for (i, p) in old.iter().enumerate() {
                encode_record(&mut file, RecordType::Batch, old_claims[i], i as u64 + 1, p, 5);
            }
            let mut fresh = Vec::new();
            encode_file_header(&mut fresh);
            let mut ends = vec![fresh.len()];
            let mut synced = 0u64;
            for (i, p) in new.iter().enumerate() {
                if i == synced_records {
                    synced = fresh.len() as u64;
                }
                encode_record(&mut fresh, RecordType::Batch, synced, i as u64 + 100, p, LOG);
                ends.push(fresh.len());
            }
            // Everything up to the last sync reached the disk; past it, a prefix did.
            let durable = (synced as usize).max(FILE_HEADER_LEN);
            let kept = (durable + tear).min(fresh.len());
            if file.len() < kept {
                file.resize(kept, 0);
            }
            file[..kept].copy_from_slice(&fresh[..kept]);
            let whole = ends.iter().filter(|&&e| e <= kept).count() - 1;
            let mut reader = LogReader::new(&file, LOG);
            let mut got = Vec::new();
            let end = loop {
                match reader.next_step() {
                    ReadStep::Record { payload, lsn, .. } => got.push((lsn, payload.to_vec())),
                    end => break end,
                }
            };
            let want: Vec<(u64, Vec<u8>)> = new[..whole]
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64 + 100, p.clone()))
                .collect();
            proptest::prop_assert_eq!(got, want);
            match end {
                ReadStep::End { offset } => proptest::prop_assert_eq!(offset as usize, file.len()),
                ReadStep::TornTail { offset } => proptest::prop_assert_eq!(offset as usize, ends[whole]),
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }

    /// The scan for a vouching record jumps between type bytes: damage full of them, or
    /// with none at all, still leads to the record behind it.
    #[test]
    fn the_scan_after_damage_finds_the_record_whatever_the_damage_holds() {
        for fill in [0u8, 1, 0x5a] {
            let big = [7u8; 600];
            let (mut buf, ends) = unsynced_log(&[b"synced", &big], 0);
            let synced = buf.len() as u64;
            encode_record(&mut buf, RecordType::Batch, synced, 3, b"after", LOG);
            for b in &mut buf[ends[0] + 3..ends[1]] {
                *b = fill;
            }
            let (recs, end) = read_all(&buf);
            assert_eq!(recs.len(), 1, "fill {fill}");
            assert!(
                matches!(end, ReadStep::Corrupt { offset, .. } if offset == ends[0] as u64),
                "fill {fill}: {end:?}"
            );
            assert_eq!(
                vouched_after(&buf, ends[0] + 1, ends[0], WAL_VERSION, LOG),
                Some(ends[1] as u64),
                "fill {fill}"
            );
        }
    }

    #[test]
    fn records_report_what_was_durable_when_they_were_written() {
        let (buf, ends) = log_of(&[b"a", b"b"]);
        let mut r = LogReader::new(&buf, LOG);
        for (i, want) in [FILE_HEADER_LEN, ends[0]].into_iter().enumerate() {
            match r.next_step() {
                ReadStep::Record {
                    synced_through,
                    lsn,
                    ..
                } => {
                    assert_eq!(synced_through, want as u64);
                    assert_eq!(lsn, i as u64 + 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn version_1_logs_are_still_read_with_their_own_rules() {
        let mut buf = Vec::new();
        encode_file_header_version(&mut buf, 1);
        let mut ends = Vec::new();
        for p in [&b"first"[..], b"second record", b"third"] {
            encode_record_v1(&mut buf, RecordType::Batch, p);
            ends.push(buf.len());
        }
        assert_eq!(check_file_header(&buf), Ok(Some(1)));
        let (recs, end) = read_all(&buf);
        assert_eq!(
            recs,
            vec![
                b"first".to_vec(),
                b"second record".to_vec(),
                b"third".to_vec()
            ]
        );
        assert_eq!(
            end,
            ReadStep::End {
                offset: buf.len() as u64
            }
        );
        let mut bad = buf.clone();
        bad[ends[0] + 18] ^= 1;
        let (recs, end) = read_all(&bad);
        assert_eq!(recs.len(), 1);
        assert!(matches!(end, ReadStep::Corrupt { .. }), "{end:?}");
    }

    /// A file reused for a newer log: its header and first records rewritten, the records of
    /// its earlier use left past them, still with valid checksums for the old number and
    /// durability claims reaching far into the file.
    fn reused(old: &[&[u8]], new: &[&[u8]]) -> (Vec<u8>, Vec<usize>) {
        let mut file = Vec::new();
        encode_file_header(&mut file);
        for (i, p) in old.iter().enumerate() {
            let synced = file.len() as u64;
            encode_record(&mut file, RecordType::Batch, synced, i as u64 + 1, p, 5);
        }
        let mut fresh = Vec::new();
        encode_file_header(&mut fresh);
        let mut ends = Vec::new();
        for (i, p) in new.iter().enumerate() {
            let synced = fresh.len() as u64;
            encode_record(&mut fresh, RecordType::Batch, synced, i as u64 + 40, p, LOG);
            ends.push(fresh.len());
        }
        assert!(fresh.len() < file.len(), "the new records are the shorter");
        file[..fresh.len()].copy_from_slice(&fresh);
        (file, ends)
    }

    #[test]
    fn a_reused_file_ends_where_its_own_records_end() {
        let old: Vec<Vec<u8>> = (0..6).map(|i| vec![b'o'; 50 + i * 7]).collect();
        let old: Vec<&[u8]> = old.iter().map(|v| &v[..]).collect();
        let (file, ends) = reused(&old, &[b"one", b"two"]);
        let (recs, end) = read_all(&file);
        assert_eq!(recs, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(
            end,
            ReadStep::TornTail {
                offset: ends[1] as u64
            },
            "the old records no longer check out"
        );
        // The old records' durability claims vouch for nothing: damage in the new records
        // is still a torn tail.
        let mut damaged = file.clone();
        damaged[ends[0] + 20] ^= 0x40;
        let (recs, end) = read_all(&damaged);
        assert_eq!(recs, vec![b"one".to_vec()]);
        assert_eq!(
            end,
            ReadStep::TornTail {
                offset: ends[0] as u64
            }
        );
        // Under its old number the new records are what does not check out, and the old
        // records past them say those bytes were durable: the number in the name, which
        // the checksums cover, is what tells the two uses apart.
        let mut r = LogReader::new(&file[..], 5);
        assert!(matches!(
            r.next_step(),
            ReadStep::Corrupt { offset: 16, .. }
        ));
    }

    #[test]
    fn a_record_checks_out_only_in_the_log_it_was_written_to() {
        let (buf, _) = log_of(&[b"hello"]);
        assert!(matches!(
            LogReader::new(&buf, LOG).next_step(),
            ReadStep::Record { .. }
        ));
        for other in [0, LOG - 1, LOG + 1, LOG << 32] {
            assert_eq!(
                LogReader::new(&buf, other).next_step(),
                ReadStep::TornTail { offset: 16 },
                "log {other}"
            );
        }
    }

    #[test]
    fn version_2_logs_are_read_without_a_log_number() {
        let mut buf = Vec::new();
        encode_file_header_version(&mut buf, 2);
        let mut ends = Vec::new();
        for (i, p) in [&b"first"[..], b"second"].iter().enumerate() {
            let synced = buf.len() as u64;
            encode_record_v2(&mut buf, RecordType::Batch, synced, i as u64 + 1, p);
            ends.push(buf.len());
        }
        for number in [0, LOG, 1 << 40] {
            let mut r = LogReader::new(&buf, number);
            assert!(matches!(r.next_step(), ReadStep::Record { lsn: 1, .. }));
            assert!(matches!(r.next_step(), ReadStep::Record { lsn: 2, .. }));
            assert_eq!(
                r.next_step(),
                ReadStep::End {
                    offset: buf.len() as u64
                }
            );
        }
        // Damage vouched for by a later version 2 record is still found.
        let mut three = buf.clone();
        encode_record_v2(&mut three, RecordType::Batch, buf.len() as u64, 3, b"third");
        three[ends[0] + 18] ^= 1;
        let (recs, end) = read_all(&three);
        assert_eq!(recs.len(), 1);
        assert!(matches!(end, ReadStep::Corrupt { .. }), "{end:?}");
    }

    #[test]
    fn the_documented_example_is_what_the_encoder_writes() {
        let body: &[u8] = &[
            0x02, 0x01, 0x07, 0x01, 0x2a, 0x80, 0xd0, 0x95, 0xff, 0xbc, 0x31, 0x00, 0x00, 0x02,
            0x68, 0x69, 0x01, 0x07, 0x02, 0x2b, 0xdc, 0xdb, 0x95, 0xff, 0xbc, 0x31, 0x00, 0x02,
            0x02, 0x6f, 0x6b, 0x01,
        ];
        let mut buf = Vec::new();
        encode_file_header(&mut buf);
        // A new store's first log is 000002.wal: the example's record is in log 2.
        encode_record(&mut buf, RecordType::Batch, 0, 1, body, 2);
        let header: &[u8] = &[
            0x43, 0x48, 0x41, 0x54, 0x57, 0x41, 0x4c, 0x01, 0x03, 0, 0, 0, 0, 0, 0, 0, 0x22, 0, 0,
            0, 0x01, 0, 0, 0, 0x06, 0x6e, 0x2d, 0x71, 0x4b, 0x0a, 0xb1, 0x9d, 0x00, 0x01,
        ];
        assert_eq!(&buf[..header.len()], header);
        assert_eq!(&buf[header.len()..], body);
    }
}
