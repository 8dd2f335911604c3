//! `segment_reader`: the input is a segment file. `SegmentReader::open`, and if it opens, every
//! block and state block is read and decoded, and the indexes are searched for every
//! conversation and state key they name. Runs the input as is and with its checksums
//! (blocks, dictionary, indexes, footer) recomputed.

use std::collections::HashSet;
use std::path::Path;

use bytes::Bytes;
use chatstore::format::segment::SegmentReader;
use chatstore::ConversationId;

use crate::block_decoder::{check_block, check_state_block};

/// Runs one input.
pub fn run(data: &[u8]) {
    check(data);
    let fixed = crate::fixup::segment(data);
    if fixed != data {
        check(&fixed);
    }
}

fn check(data: &[u8]) {
    let Ok(seg) = SegmentReader::open(
        Path::new("fuzz.seg"),
        std::sync::Arc::new(Bytes::copy_from_slice(data)),
    ) else {
        return;
    };
    assert_eq!(seg.file_bytes(), data.len() as u64);
    let _ = (
        seg.message_count(),
        seg.logical_bytes(),
        seg.state_entry_count(),
    );
    let _ = seg.dictionary().map(Bytes::len);
    let _ = seg.path();

    let blocks = seg.block_count();
    // The block and conversation indexes are read at the first lookup; one that does not
    // load is an error for every lookup, never a panic.
    let Ok(loaded) = seg.load_indexes() else {
        assert!(blocks == 0 || seg.read_block(0).is_err());
        let _ = seg.conversation_range(ConversationId(1));
        return;
    };
    let index = loaded.view();
    // Lookups a partition at a time (through the partition table, or a merge's cursor)
    // answer what the whole index answers.
    let mut cursor = seg.index_cursor();
    for i in 0..seg.conversation_count() {
        let entry = index.conversation_entry(i);
        assert_eq!(seg.conversation_entry(i).ok(), Some(entry));
        assert_eq!(cursor.conversation_entry(i).ok(), Some(entry));
        // Keys out of order (a damaged but checksummed index) may answer differently; they
        // must not panic.
        let _ = (
            seg.conversation_range(entry.0),
            cursor.conversation_range(entry.0),
        );
        let _ = seg.find_block(entry.0, entry.1);
    }
    for i in 0..blocks {
        assert_eq!(seg.block_handle(i).ok(), Some(index.block_handle(i)));
        assert_eq!(
            cursor.block(i).map(|e| (e.handle, e.rows)).ok(),
            Some((index.block_handle(i), index.block_rows(i)))
        );
        assert_eq!(
            cursor.block_logical_bytes(i).ok(),
            Some(index.block_logical_bytes(i))
        );
        let h = index.block_handle(i);
        assert!(
            within(h.offset, h.len, data.len()),
            "open accepted a block handle past the end: {h:?}"
        );
        if let Ok(b) = seg.read_block(i) {
            check_block(&b);
        }
        // What compaction reads to copy a block without decoding it, and the decode after.
        let _ = (index.block_rows(i), index.block_logical_bytes(i));
        if let Ok(stored) = seg.read_block_checked(i) {
            if let Ok(b) = seg.decode_block(i, &stored) {
                check_block(&b);
            }
        }
    }
    assert!(seg.read_block_checked(blocks).is_err());
    assert!(seg.read_block(blocks).is_err());

    let mut keys = Vec::new();
    for i in 0..seg.state_block_count() {
        let h = seg.state_handle(i);
        assert!(
            within(h.offset, h.len, data.len()),
            "open accepted a state block handle past the end: {h:?}"
        );
        if let Ok(s) = seg.read_state_block(i) {
            check_state_block(&s);
            keys.extend(s.entries().iter().map(|(k, _)| k.clone()));
        }
    }
    assert!(seg.read_state_block(seg.state_block_count()).is_err());
    let _ = seg.state_bounds();
    for k in keys.iter().take(64) {
        if let Some(i) = seg.find_state_block(k) {
            assert!(i < seg.state_block_count());
            if let Ok(s) = seg.read_state_block(i) {
                let _ = s.get(k);
            }
        }
    }
    let _ = seg.find_state_block(&[]);
    let _ = seg.find_state_block(&[0xff; 8]);

    let _ = seg.conversation_bounds();
    // Lookups for every indexed conversation; each block is decoded at most once here, so a
    // small file cannot make this loop decompress the same block over and over.
    let mut read = HashSet::new();
    for i in 0..seg.conversation_count() {
        let (conv, first, last) = index.conversation_entry(i);
        let _ = seg.conversation_range(conv);
        for id in [first, last] {
            let Some(b) = index.find_block(conv, id) else {
                continue;
            };
            assert!(b < blocks, "find_block returned block {b} of {blocks}");
            if read.insert(b) {
                if let Ok(block) = seg.read_block(b) {
                    let mut out = Vec::new();
                    block.collect(conv, first, last, &mut out);
                    for m in &out {
                        assert_eq!(m.conversation, conv);
                        assert!(m.id.0 >= first && m.id.0 <= last);
                    }
                }
            }
        }
    }
    for (conv, id) in [(0, 0), (0, 1), (u64::MAX, u64::MAX)] {
        if let Ok(Some(b)) = seg.find_block(ConversationId(conv), id) {
            assert!(b < blocks);
        }
        let _ = seg.conversation_range(ConversationId(conv));
    }
}

fn within(offset: u64, len: u32, file: usize) -> bool {
    offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= file as u64)
}
