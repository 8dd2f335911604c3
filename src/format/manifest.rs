//! The manifest: which segments are live and which WAL files still hold unflushed data.
//! Rewritten whole on every change (write temp, fsync, rename, fsync directory), so a reader
//! sees either the old or the new state. See `docs/format-manifest.md`.
//!
//! ```text
//! manifest := magic:u64 = MANIFEST_MAGIC | version:u32 | payload_len:u32 | payload | crc:u32
//! payload  := next_file_number:varint | log_number:varint | segment_count:varint
//!             segment{segment_count} | flushed_lsn:varint (version 2)
//! segment  := number:varint | level:varint | file_bytes:varint | messages:varint
//! ```
//! `crc` covers everything before it. WAL files numbered below `log_number` are obsolete;
//! every commit record with a sequence number up to `flushed_lsn` is in the listed segments.

use super::coding::{get_u32, get_u64, put_u32, put_u64, put_varint, Reader};

/// "CHATMAN" and a format byte, as a little-endian u64.
pub const MANIFEST_MAGIC: u64 = u64::from_le_bytes(*b"CHATMAN\x01");
/// The newest manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 2;
/// Largest manifest payload a reader accepts.
pub const MAX_MANIFEST_LEN: usize = 64 << 20;

/// A live segment as the manifest records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentRecord {
    /// File number (the file is `{number:06}.seg`).
    pub number: u64,
    /// Compaction level (0 for flushed segments).
    pub level: u32,
    /// File size in bytes, checked when the file is opened.
    pub file_bytes: u64,
    /// Messages stored.
    pub messages: u64,
}

/// The whole persistent state of the store's file set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestState {
    /// Next number to give a new file.
    pub next_file_number: u64,
    /// WAL files with a lower number are fully contained in segments.
    pub log_number: u64,
    /// Live segments, oldest first.
    pub segments: Vec<SegmentRecord>,
    /// Every commit record with a log sequence number up to this one is in the segments
    /// (0 in version 1 manifests).
    pub flushed_lsn: u64,
}

/// Why a manifest could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Bytes are damaged at `offset`.
    Corrupt {
        /// Offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Written by a newer version.
    Version(u32),
}

/// Encodes `state`.
pub fn encode(state: &ManifestState) -> Vec<u8> {
    let mut payload = Vec::new();
    put_varint(&mut payload, state.next_file_number);
    put_varint(&mut payload, state.log_number);
    put_varint(&mut payload, state.segments.len() as u64);
    for s in &state.segments {
        put_varint(&mut payload, s.number);
        put_varint(&mut payload, u64::from(s.level));
        put_varint(&mut payload, s.file_bytes);
        put_varint(&mut payload, s.messages);
    }
    put_varint(&mut payload, state.flushed_lsn);
    let mut out = Vec::with_capacity(payload.len() + 20);
    put_u64(&mut out, MANIFEST_MAGIC);
    put_u32(&mut out, MANIFEST_VERSION);
    put_u32(&mut out, payload.len() as u32);
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    put_u32(&mut out, crc);
    out
}

/// Decodes a manifest file.
pub fn decode(buf: &[u8]) -> Result<ManifestState, DecodeError> {
    let corrupt = |offset: usize, reason| DecodeError::Corrupt {
        offset: offset as u64,
        reason,
    };
    if get_u64(buf, 0) != Some(MANIFEST_MAGIC) {
        return Err(corrupt(0, "bad manifest magic"));
    }
    let version = get_u32(buf, 8).ok_or(corrupt(8, "truncated header"))?;
    let len = get_u32(buf, 12).ok_or(corrupt(12, "truncated header"))? as usize;
    if len > MAX_MANIFEST_LEN || buf.len() != 16 + len + 4 {
        return Err(corrupt(12, "manifest length does not match the file"));
    }
    let crc = get_u32(buf, 16 + len).ok_or(corrupt(16 + len, "truncated checksum"))?;
    if crc32fast::hash(&buf[..16 + len]) != crc {
        return Err(corrupt(0, "manifest checksum mismatch"));
    }
    if version == 0 || version > MANIFEST_VERSION {
        return Err(DecodeError::Version(version));
    }
    let mut r = Reader::new(&buf[16..16 + len]);
    let bad = |r: &Reader<'_>| corrupt(16 + r.position(), "malformed manifest payload");
    let next_file_number = r.varint().ok_or_else(|| bad(&r))?;
    let log_number = r.varint().ok_or_else(|| bad(&r))?;
    let count = r.len(len).ok_or_else(|| bad(&r))?;
    let mut segments = Vec::with_capacity(count.min(len / 4));
    for _ in 0..count {
        let number = r.varint().ok_or_else(|| bad(&r))?;
        let level = u32::try_from(r.varint().ok_or_else(|| bad(&r))?).map_err(|_| bad(&r))?;
        let file_bytes = r.varint().ok_or_else(|| bad(&r))?;
        let messages = r.varint().ok_or_else(|| bad(&r))?;
        segments.push(SegmentRecord {
            number,
            level,
            file_bytes,
            messages,
        });
    }
    let flushed_lsn = if version >= 2 {
        r.varint().ok_or_else(|| bad(&r))?
    } else {
        0
    };
    if !r.is_empty() {
        return Err(bad(&r));
    }
    Ok(ManifestState {
        next_file_number,
        log_number,
        segments,
        flushed_lsn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ManifestState {
        ManifestState {
            next_file_number: 42,
            log_number: 40,
            segments: vec![
                SegmentRecord {
                    number: 7,
                    level: 0,
                    file_bytes: 1 << 20,
                    messages: 9000,
                },
                SegmentRecord {
                    number: 39,
                    level: 1,
                    file_bytes: 77,
                    messages: 1,
                },
            ],
            flushed_lsn: 123_456,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(decode(&encode(&s)), Ok(s));
        let empty = ManifestState::default();
        assert_eq!(decode(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn every_flipped_bit_and_cut_is_detected() {
        let buf = encode(&sample());
        for byte in 0..buf.len() {
            let mut bad = buf.clone();
            bad[byte] ^= 0x01;
            assert!(decode(&bad).is_err(), "byte {byte}");
        }
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn newer_versions_are_refused() {
        let mut buf = encode(&sample());
        buf[8] = 9;
        let n = buf.len();
        let crc = crc32fast::hash(&buf[..n - 4]);
        buf[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&buf), Err(DecodeError::Version(9)));
    }

    #[test]
    fn version_1_manifests_read_with_no_flushed_sequence() {
        // Version 1: the same payload without `flushed_lsn`.
        let mut s = sample();
        s.flushed_lsn = 0;
        let v2 = encode(&s);
        let payload_len = u32::from_le_bytes([v2[12], v2[13], v2[14], v2[15]]) as usize - 1;
        let mut v1 = Vec::new();
        put_u64(&mut v1, MANIFEST_MAGIC);
        put_u32(&mut v1, 1);
        put_u32(&mut v1, payload_len as u32);
        v1.extend_from_slice(&v2[16..16 + payload_len]);
        let crc = crc32fast::hash(&v1);
        put_u32(&mut v1, crc);
        assert_eq!(decode(&v1), Ok(s));
    }

    #[test]
    fn the_documented_example_is_what_the_encoder_writes() {
        let state = ManifestState {
            next_file_number: 5,
            log_number: 4,
            segments: vec![SegmentRecord {
                number: 3,
                level: 0,
                file_bytes: 262,
                messages: 3,
            }],
            flushed_lsn: 7,
        };
        let doc = include_str!("../../docs/format-manifest.md");
        let example = doc.split("## Example").nth(1).unwrap_or_default();
        let bytes: Vec<u8> = example
            .lines()
            .filter(|l| {
                l.len() > 6
                    && l.as_bytes()[4] == b' '
                    && l[..4].chars().all(|c| c.is_ascii_hexdigit())
            })
            .flat_map(|l| {
                l[6..]
                    .split("  ")
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|h| u8::from_str_radix(h, 16).ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(bytes, encode(&state));
    }
}
