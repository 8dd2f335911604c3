//! Checksum repair. Every format is checksummed, so most mutated inputs stop at the first
//! checksum; each target therefore also runs a copy of its input with the checksums recomputed
//! (where the framing can be found), which sends the mutation on to the decoders behind the
//! checksum. The repairs follow the layouts in `docs/format-*.md` and never panic.

use chatstore::format::coding::{get_u32, get_u64};

fn put32(buf: &mut [u8], at: usize, v: u32) {
    if let Some(dst) = at.checked_add(4).and_then(|end| buf.get_mut(at..end)) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// WAL: recomputes the payload and header checksum of every record whose length fits in the
/// file, walking from the 16-byte file header.
pub fn wal(data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    // From version 3 the header checksum covers the log's number first.
    let seeded = get_u32(&buf, 8).is_some_and(|v| v >= 3);
    let mut pos = 16usize;
    while pos + 16 <= buf.len() {
        let len = get_u32(&buf, pos).unwrap_or(0) as usize;
        let start = pos + 16;
        if len > buf.len() - start {
            break;
        }
        let payload_crc = crc32fast::hash(&buf[start..start + len]);
        put32(&mut buf, pos + 8, payload_crc);
        let mut h = crc32fast::Hasher::new();
        if seeded {
            h.update(&crate::wal_reader::LOG_NUMBER.to_le_bytes());
        }
        h.update(&buf[pos..pos + 12]);
        let header_crc = h.finalize();
        put32(&mut buf, pos + 12, header_crc);
        pos = start + len;
    }
    buf
}

/// A stored block (body, `len:u32`, `codec:u8`, `crc:u32`) at `offset..offset + len` of `buf`,
/// if it lies before `limit`: recomputes its checksum.
fn fix_block_at(buf: &mut [u8], offset: u64, len: u32, limit: usize) {
    let (Ok(offset), len) = (usize::try_from(offset), len as usize) else {
        return;
    };
    let Some(end) = offset.checked_add(len) else {
        return;
    };
    if len < 9 || end > limit {
        return;
    }
    let crc = crc32fast::hash(&buf[offset..end - 4]);
    put32(buf, end - 4, crc);
}

/// A stored block on its own (message or state block, or a dictionary frame).
pub fn block(data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    let n = buf.len();
    fix_block_at(&mut buf, 0, n.min(u32::MAX as usize) as u32, n);
    buf
}

/// Segment: recomputes the checksum of every block, state block and the dictionary frame the
/// footer and indexes point to, then the index checksum and the footer checksum.
pub fn segment(data: &[u8]) -> Vec<u8> {
    const FOOTER: usize = 84;
    const FOOTER_EXTENDED: usize = 108;
    let mut buf = data.to_vec();
    let n = buf.len();
    if n < 16 + FOOTER {
        return buf;
    }
    let f = n - FOOTER;
    let field = |buf: &[u8], at: usize| get_u64(buf, f + at).unwrap_or(0);
    let field32 = |buf: &[u8], at: usize| get_u32(buf, f + at).unwrap_or(0);
    let block_index = usize::try_from(field(&buf, 0)).unwrap_or(usize::MAX);
    let block_count = field32(&buf, 8) as usize;
    let state_index = usize::try_from(field(&buf, 32)).unwrap_or(usize::MAX);
    let state_count = field32(&buf, 40) as usize;
    let dict_len = field32(&buf, 52);
    let dict_at = field(&buf, 56);
    for i in 0..block_count {
        let Some(at) = i.checked_mul(32).and_then(|o| o.checked_add(block_index)) else {
            break;
        };
        if at.saturating_add(32) > f {
            break;
        }
        let offset = get_u64(&buf, at + 16).unwrap_or(0);
        let len = get_u32(&buf, at + 24).unwrap_or(0);
        fix_block_at(&mut buf, offset, len, f);
    }
    for i in 0..state_count {
        let Some(at) = i.checked_mul(16).and_then(|o| o.checked_add(state_index)) else {
            break;
        };
        if at.saturating_add(16) > f {
            break;
        }
        let offset = get_u64(&buf, at).unwrap_or(0);
        let len = get_u32(&buf, at + 8).unwrap_or(0);
        fix_block_at(&mut buf, offset, len, f);
    }
    fix_block_at(&mut buf, dict_at, dict_len, f);
    let version = field32(&buf, 68);
    if version >= 2 && n >= 16 + FOOTER_EXTENDED {
        // Versions 2 and 3: the message indexes (`B..S`) have their checksum in the footer's
        // extension, the state index (`S..F`) its own, and the footer's covers all 96 bytes
        // before it.
        let ext = n - FOOTER_EXTENDED;
        if block_index <= state_index && state_index <= ext {
            let crc = crc32fast::hash(&buf[block_index..state_index]);
            put32(&mut buf, ext + 16, crc);
            let crc = crc32fast::hash(&buf[state_index..ext]);
            put32(&mut buf, f + 64, crc);
        }
        let crc = crc32fast::hash(&buf[ext..ext + 96]);
        put32(&mut buf, ext + 96, crc);
        return buf;
    }
    if block_index <= f {
        let crc = crc32fast::hash(&buf[block_index..f]);
        put32(&mut buf, f + 64, crc);
    }
    let crc = crc32fast::hash(&buf[f..f + 72]);
    put32(&mut buf, f + 72, crc);
    buf
}

/// Manifest: sets the payload length to what the file holds and recomputes the checksum.
pub fn manifest(data: &[u8]) -> Vec<u8> {
    let mut buf = data.to_vec();
    let n = buf.len();
    if n < 20 {
        return buf;
    }
    put32(&mut buf, 12, (n - 20).min(u32::MAX as usize) as u32);
    let crc = crc32fast::hash(&buf[..n - 4]);
    put32(&mut buf, n - 4, crc);
    buf
}
