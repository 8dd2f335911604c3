//! Torn and damaged files on the real file system.
//!
//! - A WAL cut at any byte of its last records (a write that never completed) opens with
//!   exactly the complete records, and the store goes on appending; so does a WAL with a
//!   zero-filled tail or a zeroed last payload (the size reached the disk, the data did not).
//! - A flipped bit inside a complete WAL record before the end is `Error::Corruption` naming
//!   the WAL file and the record's offset.
//! - A flipped bit in a segment block makes the read that touches it fail with
//!   `Error::Corruption` naming the segment; so does a flipped bit in its block or
//!   conversation index (read at the first lookup, not at open), for every read; a flipped
//!   bit in its state index or footer fails the open the same way. Nothing panics.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::time::Duration;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chatstore::format::segment::{FOOTER_V1_LEN, HEADER_LEN as SEGMENT_HEADER};
use chatstore::format::wal::{FILE_HEADER_LEN as WAL_HEADER, RECORD_HEADER_LEN as RECORD_HEADER};
use chatstore::{ConversationId, Error, Message, NewMessage, Options, Store, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CONVS: u64 = 3;

type Model = BTreeMap<u64, Vec<Message>>;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

fn open(dir: &Path, ctx: &str) -> Store {
    Store::open_with(dir, Options::default()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"))
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read_dir: {e}")) {
        let entry = entry.unwrap_or_else(|e| panic!("read_dir: {e}"));
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .unwrap_or_else(|e| panic!("copy {:?}: {e}", entry.path()));
    }
}

/// A copy of the store in `src` whose file `name` (its bytes `data`) has bit `bit` of byte
/// `byte` flipped: the copy's directory, the damaged file's path and its bytes.
fn with_flipped_bit(
    src: &Path,
    name: &std::ffi::OsStr,
    data: &[u8],
    byte: usize,
    bit: u32,
) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempdir();
    copy_dir(src, dir.path());
    let mut bad = data.to_vec();
    bad[byte] ^= 1 << bit;
    let path = dir.path().join(name);
    std::fs::write(&path, &bad).unwrap_or_else(|e| panic!("write: {e}"));
    (dir, path, bad)
}

/// The file with the highest number and the given extension.
fn newest(dir: &Path, ext: &str) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
        .pop()
        .unwrap_or_else(|| panic!("no .{ext} file in {dir:?}"))
}

fn u32_at(data: &[u8], at: usize) -> usize {
    let b: [u8; 4] = data[at..at + 4]
        .try_into()
        .unwrap_or_else(|_| panic!("short"));
    u32::from_le_bytes(b) as usize
}

/// End offsets of the records of a WAL file, read from the record headers.
fn record_ends(wal: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut pos = WAL_HEADER;
    while pos + RECORD_HEADER <= wal.len() {
        pos += RECORD_HEADER + u32_at(wal, pos);
        assert!(pos <= wal.len(), "the WAL under test is itself torn");
        ends.push(pos);
    }
    assert_eq!(pos, wal.len());
    ends
}

fn read_all(store: &Store, ctx: &str) -> Model {
    let mut out = Model::new();
    for c in 1..=CONVS {
        let msgs = store
            .latest(ConversationId(c), usize::MAX)
            .unwrap_or_else(|e| panic!("{ctx}: read conversation {c}: {e}"));
        let ids: Vec<u64> = msgs.iter().map(|m| m.id.0).collect();
        assert_eq!(ids, (1..=msgs.len() as u64).collect::<Vec<_>>(), "{ctx}");
        if !msgs.is_empty() {
            out.insert(c, msgs);
        }
    }
    out
}

fn text(s: &str) -> NewMessage {
    NewMessage::text(UserId(1), s)
}

/// A closed store whose only WAL holds one record per entry of the returned list (singles and
/// batches across conversations), nothing flushed.
fn store_with_records(dir: &Path, records: usize) -> Vec<Vec<Message>> {
    let store = open(dir, "setup");
    let mut rng = StdRng::seed_from_u64(1);
    let mut out = Vec::new();
    for r in 0..records {
        let n = if r % 3 == 2 { 3 } else { 1 };
        let batch = (0..n)
            .map(|i| {
                let c = rng.gen_range(1..=CONVS);
                (ConversationId(c), text(&format!("record {r} message {i}")))
            })
            .collect();
        out.push(
            store
                .append_batch(batch)
                .unwrap_or_else(|e| panic!("setup append: {e}")),
        );
    }
    store.close().unwrap_or_else(|e| panic!("setup close: {e}"));
    out
}

fn model_of(records: &[Vec<Message>]) -> Model {
    let mut m = Model::new();
    for msg in records.iter().flatten() {
        m.entry(msg.conversation.0).or_default().push(msg.clone());
    }
    m
}

/// Opens `dir`, expects exactly `want`, appends to every conversation, closes, and checks a
/// second open (by then the cut WAL is an older file, where a torn tail would be corruption).
fn check_reopens_with(dir: &Path, want: &Model, ctx: &str) {
    let store = open(dir, ctx);
    assert_eq!(&read_all(&store, ctx), want, "{ctx}: recovered messages");
    let mut want = want.clone();
    // One batch (one fsync) with a message for every conversation.
    let batch = (1..=CONVS)
        .map(|c| (ConversationId(c), text("after the cut")))
        .collect();
    let got = store
        .append_batch(batch)
        .unwrap_or_else(|e| panic!("{ctx}: append: {e}"));
    for m in got {
        let run = want.entry(m.conversation.0).or_default();
        assert_eq!(m.id.0, run.len() as u64 + 1, "{ctx}: ids continue");
        run.push(m);
    }
    store
        .close()
        .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
    let store = open(dir, &format!("{ctx}, second open"));
    assert_eq!(read_all(&store, ctx), want, "{ctx}: second open");
}

#[test]
fn a_wal_cut_anywhere_in_its_last_records_keeps_exactly_the_complete_ones() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let src = tempdir();
    let records = store_with_records(src.path(), 12);
    let wal_path = newest(src.path(), "wal");
    let wal = std::fs::read(&wal_path).unwrap_or_else(|e| panic!("read wal: {e}"));
    let ends = record_ends(&wal);
    assert_eq!(ends.len(), records.len(), "one record per call");
    let name = wal_path.file_name().unwrap_or_default();
    // Every byte offset from the start of the fourth-last record to the end of the file.
    let first_cut = ends[ends.len() - 5];
    for cut in first_cut..=wal.len() {
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let ctx = format!("cut at {cut} ({complete} complete records)");
        let dir = tempdir();
        copy_dir(src.path(), dir.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        f.set_len(cut as u64)
            .unwrap_or_else(|e| panic!("{ctx}: truncate: {e}"));
        drop(f);
        let want = model_of(&records[..complete]);
        // Appending and opening a second time cost fsyncs; every cut in a record's header and
        // every seventh one in its payload is enough for that part.
        let in_header = ends
            .iter()
            .any(|&e| (e..e + RECORD_HEADER + 1).contains(&cut));
        if in_header || cut % 7 == 0 || cut == wal.len() {
            check_reopens_with(dir.path(), &want, &ctx);
        } else {
            let store = open(dir.path(), &ctx);
            assert_eq!(read_all(&store, &ctx), want, "{ctx}: recovered messages");
        }
    }
}

#[test]
fn a_zero_filled_wal_tail_is_a_torn_tail() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let src = tempdir();
    let records = store_with_records(src.path(), 6);
    let wal_path = newest(src.path(), "wal");
    let name = wal_path.file_name().unwrap_or_default();
    let len = std::fs::metadata(&wal_path)
        .unwrap_or_else(|e| panic!("{e}"))
        .len();
    for zeros in [1u64, 7, 15, 16, 17, 100, 4096, 10_000] {
        let ctx = format!("{zeros} zero bytes after the last record");
        let dir = tempdir();
        copy_dir(src.path(), dir.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        f.set_len(len + zeros)
            .unwrap_or_else(|e| panic!("{ctx}: extend: {e}"));
        drop(f);
        check_reopens_with(dir.path(), &model_of(&records), &ctx);
    }
}

/// A closed store whose WAL ends with a record that spans a page boundary; zeroes the WAL from
/// `zero_from(start of the last record)` to its end and checks the reopen drops exactly that
/// record.
fn zeroes_in_the_last_record(zero_from: fn(usize) -> usize, ctx: &str) {
    let src = tempdir();
    let store = open(src.path(), "setup");
    let mut records = Vec::new();
    for i in 0..5 {
        let body = format!("message {i} {}", "x".repeat(3000));
        records.push(vec![store
            .append(ConversationId(1), text(&body))
            .unwrap_or_else(|e| panic!("append: {e}"))]);
    }
    store.close().unwrap_or_else(|e| panic!("close: {e}"));
    let wal_path = newest(src.path(), "wal");
    let mut wal = std::fs::read(&wal_path).unwrap_or_else(|e| panic!("read: {e}"));
    let ends = record_ends(&wal);
    let from = zero_from(ends[ends.len() - 2]);
    assert!(from < wal.len(), "{ctx}: nothing to zero");
    wal[from..].fill(0);
    let dir = tempdir();
    copy_dir(src.path(), dir.path());
    let name = wal_path.file_name().unwrap_or_default();
    std::fs::write(dir.path().join(name), &wal).unwrap_or_else(|e| panic!("write: {e}"));
    check_reopens_with(dir.path(), &model_of(&records[..records.len() - 1]), ctx);
}

/// The header reached the disk, its payload did not.
#[test]
fn zeroes_from_the_start_of_the_last_payload_are_a_torn_tail() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    zeroes_in_the_last_record(|start| start + RECORD_HEADER, "zeroed payload");
}

/// A file system that extends the file before writing the data may persist the first pages of
/// a write and not the rest: zeroes from a page boundary inside the last record's payload to
/// the end of the file. That record was never synced (so never acknowledged): a torn tail like
/// the zeroed payload above, not damage that stops the store from opening.
#[test]
fn zeroes_from_a_page_boundary_inside_the_last_record_are_a_torn_tail() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    zeroes_in_the_last_record(
        |start| (start + RECORD_HEADER).div_ceil(4096) * 4096,
        "zeroes from a page boundary in the last record",
    );
}

#[test]
fn a_flipped_bit_in_a_complete_wal_record_is_corruption_naming_the_wal() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let src = tempdir();
    store_with_records(src.path(), 9);
    let wal_path = newest(src.path(), "wal");
    let name = wal_path.file_name().unwrap_or_default();
    let wal = std::fs::read(&wal_path).unwrap_or_else(|e| panic!("read wal: {e}"));
    let ends = record_ends(&wal);
    let mut rng = StdRng::seed_from_u64(2);
    // Every byte of two records in the middle (headers and payloads), one random bit each.
    for victim in [3, 5] {
        let (start, end) = (ends[victim - 1], ends[victim]);
        for byte in start..end {
            let bit = rng.gen_range(0..8);
            let ctx = format!("record {victim} byte {byte} bit {bit}");
            let (dir, path, _) = with_flipped_bit(src.path(), name, &wal, byte, bit);
            match Store::open(dir.path()) {
                Err(Error::Corruption {
                    path: p, offset, ..
                }) => {
                    assert_eq!(p, path, "{ctx}");
                    assert_eq!(offset, start as u64, "{ctx}: offset of the damaged record");
                }
                Err(e) => panic!("{ctx}: expected corruption, got {e}"),
                Ok(_) => panic!("{ctx}: opened despite the damage"),
            }
        }
    }
}

/// A closed store with its messages in one segment (and an empty WAL).
fn store_with_segment(dir: &Path) -> Model {
    let opts = Options {
        block_bytes: 1 << 10,
        ..Options::default()
    };
    let store = Store::open_with(dir, opts).unwrap_or_else(|e| panic!("setup open: {e}"));
    for i in 0..300u64 {
        let body = format!("segment message {i} with a little text to fill blocks");
        store
            .append(ConversationId(i % CONVS + 1), text(&body))
            .unwrap_or_else(|e| panic!("setup append: {e}"));
    }
    store.flush().unwrap_or_else(|e| panic!("setup flush: {e}"));
    let model = read_all(&store, "setup");
    assert_eq!(store.stats().segments, 1);
    store.close().unwrap_or_else(|e| panic!("setup close: {e}"));
    model
}

fn u64_at(data: &[u8], at: usize) -> usize {
    let b: [u8; 8] = data[at..at + 8]
        .try_into()
        .unwrap_or_else(|_| panic!("short"));
    u64::from_le_bytes(b) as usize
}

#[test]
fn a_flipped_bit_in_a_segment_is_corruption_naming_the_segment() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let src = tempdir();
    let model = store_with_segment(src.path());
    let seg_path = newest(src.path(), "seg");
    let name = seg_path.file_name().unwrap_or_default();
    let seg = std::fs::read(&seg_path).unwrap_or_else(|e| panic!("read segment: {e}"));
    // The last 84 bytes of the footer hold the offsets of the indexes in either version.
    let index_start = u64_at(&seg, seg.len() - FOOTER_V1_LEN);
    let state_index_start = u64_at(&seg, seg.len() - FOOTER_V1_LEN + 32);
    assert!(SEGMENT_HEADER < index_start && index_start < state_index_start);
    assert!(state_index_start < seg.len());
    let mut rng = StdRng::seed_from_u64(3);
    let mut positions: Vec<usize> = (0..60)
        .map(|_| rng.gen_range(SEGMENT_HEADER..index_start))
        .collect();
    positions.extend([SEGMENT_HEADER, index_start - 1]);
    let mut index_positions: Vec<usize> = (0..30)
        .map(|_| rng.gen_range(index_start..seg.len()))
        .collect();
    index_positions.extend([
        index_start,
        state_index_start - 1,
        state_index_start,
        seg.len() - 1,
    ]);
    for (byte, in_blocks) in positions
        .into_iter()
        .map(|p| (p, true))
        .chain(index_positions.into_iter().map(|p| (p, false)))
    {
        let in_message_index = (index_start..state_index_start).contains(&byte);
        let bit = rng.gen_range(0..8);
        let ctx = format!("segment byte {byte} bit {bit}");
        let (dir, path, _) = with_flipped_bit(src.path(), name, &seg, byte, bit);
        let store = match Store::open(dir.path()) {
            Ok(store) => store,
            Err(Error::Corruption { path: p, .. }) if !in_blocks && !in_message_index => {
                assert_eq!(p, path, "{ctx}");
                continue;
            }
            Err(e) => panic!("{ctx}: open: {e}"),
        };
        assert!(
            in_blocks || in_message_index,
            "{ctx}: damage to the state index or footer went unnoticed"
        );
        if in_message_index {
            // The block and conversation indexes are read at the first lookup: every read
            // that needs them reports the damage, at the index's offset.
            for c in 1..=CONVS {
                let conv = ConversationId(c);
                for outcome in [
                    store.last_id(conv).map(|_| ()),
                    store.latest(conv, 10).map(|_| ()),
                    store.get(conv, model[&c][0].id).map(|_| ()),
                ] {
                    match outcome {
                        Err(Error::Corruption {
                            path: p, offset, ..
                        }) => {
                            assert_eq!(p, path, "{ctx}");
                            assert_eq!(offset as usize, index_start, "{ctx}");
                        }
                        other => panic!("{ctx}: conversation {c}: {other:?}"),
                    }
                }
            }
            continue;
        }
        // Every block is read: exactly the reads of the damaged block fail, naming the file.
        let mut failed = 0;
        for c in 1..=CONVS {
            for (i, want) in model[&c].iter().enumerate() {
                match store.get(ConversationId(c), want.id) {
                    Ok(Some(m)) => assert_eq!(&m, want, "{ctx}: conversation {c} #{i}"),
                    Ok(None) => panic!("{ctx}: conversation {c} id {} vanished", want.id),
                    Err(Error::Corruption { path: p, .. }) => {
                        assert_eq!(p, path, "{ctx}");
                        failed += 1;
                    }
                    Err(e) => panic!("{ctx}: unexpected error {e}"),
                }
            }
        }
        assert!(failed > 0, "{ctx}: no read noticed the damage");
        // Reads that span the damaged block fail too, instead of returning a partial page.
        let mut range_failed = false;
        for c in 1..=CONVS {
            match store.latest(ConversationId(c), usize::MAX) {
                Ok(msgs) => assert_eq!(msgs, model[&c], "{ctx}"),
                Err(Error::Corruption { path: p, .. }) => {
                    assert_eq!(p, path, "{ctx}");
                    range_failed = true;
                }
                Err(e) => panic!("{ctx}: unexpected error {e}"),
            }
        }
        assert!(range_failed, "{ctx}");
    }
}

/// A store whose first segment was compacted (blocks in the compaction codec, which a later
/// merge can copy as stored) and a flushed one after it adding to one conversation only:
/// compacting both reads every block of the first, copying most of them. Returns the model
/// and the compacted segment's path.
fn store_with_compacted_segment(dir: &Path) -> (Model, PathBuf) {
    store_with_segment(dir);
    let store = Store::open(dir).unwrap_or_else(|e| panic!("setup open: {e}"));
    store
        .compact()
        .unwrap_or_else(|e| panic!("setup compact: {e}"));
    let compacted = newest(dir, "seg");
    for i in 0..20 {
        store
            .append(
                ConversationId(1),
                text(&format!("after the compaction {i}")),
            )
            .unwrap_or_else(|e| panic!("setup append: {e}"));
    }
    store.flush().unwrap_or_else(|e| panic!("setup flush: {e}"));
    let model = read_all(&store, "setup");
    store.close().unwrap_or_else(|e| panic!("setup close: {e}"));
    (model, compacted)
}

/// Compaction reads its inputs' blocks several at a time (a window of the file), decoding
/// some and copying others as stored: a flipped bit in any block stops it with the damaged
/// file and the block's offset, and leaves the input in place, every other message still
/// readable. Checked on a flushed input (blocks decoded) and a compacted one (mostly copied).
#[test]
fn a_flipped_bit_in_a_block_stops_compaction_naming_the_segment_and_the_block() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let flushed = tempdir();
    let flushed_model = store_with_segment(flushed.path());
    let flushed_seg = newest(flushed.path(), "seg");
    let compacted = tempdir();
    let (compacted_model, compacted_seg) = store_with_compacted_segment(compacted.path());
    // Undamaged, the second store's compaction copies blocks as stored: the damage below
    // meets the copying path, not only the decoding one.
    {
        let dir = tempdir();
        copy_dir(compacted.path(), dir.path());
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("open: {e}"));
        store.compact().unwrap_or_else(|e| panic!("compact: {e}"));
        assert!(store.stats().compaction_bytes_copied > 0, "nothing copied");
    }
    let mut rng = StdRng::seed_from_u64(5);
    for (src, model, seg_path) in [
        (&flushed, &flushed_model, &flushed_seg),
        (&compacted, &compacted_model, &compacted_seg),
    ] {
        let name = seg_path.file_name().unwrap_or_default();
        let seg = std::fs::read(seg_path).unwrap_or_else(|e| panic!("read segment: {e}"));
        let index_start = u64_at(&seg, seg.len() - FOOTER_V1_LEN);
        let mut positions: Vec<usize> = (0..16)
            .map(|_| rng.gen_range(SEGMENT_HEADER..index_start))
            .collect();
        positions.extend([SEGMENT_HEADER, index_start - 1]);
        for byte in positions {
            let bit = rng.gen_range(0..8);
            let ctx = format!("{} byte {byte} bit {bit}", seg_path.display());
            let (dir, path, bad) = with_flipped_bit(src.path(), name, &seg, byte, bit);
            let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
            match store.compact() {
                Err(Error::Corruption {
                    path: p, offset, ..
                }) => {
                    assert_eq!(p, path, "{ctx}");
                    // The offset of the block holding the byte: blocks are ~1 KiB here.
                    let offset = offset as usize;
                    assert!(
                        offset <= byte && byte - offset < 4096,
                        "{ctx}: reported at {offset}"
                    );
                }
                other => panic!("{ctx}: compaction of a damaged input gave {other:?}"),
            }
            drop(store);
            // The input is still there, whole: reopened, all but the damaged block reads.
            assert_eq!(
                std::fs::read(&path).unwrap_or_else(|e| panic!("{ctx}: read back: {e}")),
                bad,
                "{ctx}: the damaged input was changed"
            );
            let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{ctx}: reopen: {e}"));
            let mut read = 0;
            for (c, messages) in model.iter() {
                for want in messages {
                    match store.get(ConversationId(*c), want.id) {
                        Ok(Some(m)) => {
                            assert_eq!(&m, want, "{ctx}");
                            read += 1;
                        }
                        Err(Error::Corruption { .. }) => {}
                        other => panic!("{ctx}: conversation {c} id {}: {other:?}", want.id),
                    }
                }
            }
            let total: usize = model.values().map(Vec::len).sum();
            assert!(read > 0 && read < total, "{ctx}: {read} of {total} read");
        }
    }
}
