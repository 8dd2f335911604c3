//! Replays the fuzz corpus on stable Rust: every file in `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same `run` function the libFuzzer target
//! calls (the target logic lives in `fuzz/src/` and is included here with `#[path]`, so there
//! is one copy of it). Inputs listed in `fuzz/known_failures.txt` (a library bug found by a
//! fuzzer and not fixed yet) are skipped with a warning; set `CHATSTORE_FUZZ_RUN_KNOWN=1` to
//! run them too, to check a fix.
//!
//! The seed part of the corpus is made by the real encoders:
//! `cargo test --test fuzz_corpus -- --ignored regenerate_seed_corpus` rewrites the
//! `seed-*` files (see `fuzz/README.md`).

#[path = "../fuzz/src/block_decoder.rs"]
mod block_decoder;
#[path = "../fuzz/src/fixup.rs"]
mod fixup;
#[path = "../fuzz/src/manifest_reader.rs"]
mod manifest_reader;
#[path = "../fuzz/src/segment_reader.rs"]
mod segment_reader;
#[path = "../fuzz/src/store_ops.rs"]
mod store_ops;
#[path = "../fuzz/src/wal_reader.rs"]
mod wal_reader;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The fuzzers run with `-malloc_limit_mb=2048`: a single allocation over 2 GiB is a finding.
/// The replay applies the same limit to the thread that runs the input (the store's
/// background threads are not watched), by recording the largest request.
const MALLOC_LIMIT: usize = 2048 << 20;

struct Watching;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; `note` neither allocates nor
// unwinds.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Runs one input; `Err` with what went wrong if it panicked or allocated over the limit.
fn run_one(run: fn(&[u8]), data: &[u8]) -> Result<(), String> {
    LARGEST.with(|l| l.set(0));
    if catch_unwind(AssertUnwindSafe(|| run(data))).is_err() {
        return Err("panicked (message above)".into());
    }
    let largest = LARGEST.with(Cell::get);
    if largest > MALLOC_LIMIT {
        return Err(format!(
            "allocated {largest} bytes at once (over the {} MiB malloc limit)",
            MALLOC_LIMIT >> 20
        ));
    }
    Ok(())
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// `fuzz/known_failures.txt`: `<dir>/<target>/<file> <reason>` per line, `#` comments.
fn known_failures() -> BTreeMap<String, String> {
    let Ok(text) = std::fs::read_to_string(fuzz_dir().join("known_failures.txt")) else {
        return BTreeMap::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((path, reason)) => (path.to_string(), reason.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus and regression input of `target` through `run`.
fn replay(target: &str, run: fn(&[u8])) {
    let known = known_failures();
    let run_known = std::env::var_os("CHATSTORE_FUZZ_RUN_KNOWN").is_some();
    let mut ran = 0;
    let mut failed = Vec::new();
    for kind in ["corpus", "regressions"] {
        for file in files_of(&fuzz_dir().join(kind).join(target)) {
            let name = file.file_name().expect("file name").to_string_lossy();
            let rel = format!("{kind}/{target}/{name}");
            if let Some(reason) = known.get(&rel) {
                if !run_known {
                    // Straight to stderr, past the test harness's output capture.
                    let _ = writeln!(
                        std::io::stderr(),
                        "warning: skipping known fuzz failure {rel}: {reason}"
                    );
                    continue;
                }
            }
            let data = std::fs::read(&file).expect("readable corpus file");
            ran += 1;
            if let Err(why) = run_one(run, &data) {
                failed.push(format!("{rel}: {why}"));
            }
        }
    }
    assert!(ran > 0, "no corpus inputs for {target}");
    assert!(
        failed.is_empty(),
        "{} of {ran} {target} inputs failed: {failed:#?}",
        failed.len()
    );
}

#[test]
fn wal_reader_corpus() {
    replay("wal_reader", wal_reader::run);
}

#[test]
fn segment_reader_corpus() {
    replay("segment_reader", segment_reader::run);
}

#[test]
fn block_decoder_corpus() {
    replay("block_decoder", block_decoder::run);
}

#[test]
fn manifest_reader_corpus() {
    replay("manifest_reader", manifest_reader::run);
}

#[test]
fn store_ops_corpus() {
    replay("store_ops", store_ops::run);
}

#[test]
fn known_failures_name_existing_inputs() {
    for path in known_failures().keys() {
        assert!(
            fuzz_dir().join(path).is_file(),
            "fuzz/known_failures.txt names {path}, which does not exist"
        );
    }
}

/// A WAL record whose batch payload (16 MiB, checksummed) claims one entry per byte. Before
/// 4f166b1 recovery reserved ~160 bytes per claimed entry before decoding the first (2.5 GiB
/// here, 40 GiB for a record at the 256 MiB limit). Too big to keep in the corpus, so it is
/// built here and run through the `wal_reader` target under the same allocation limit.
#[test]
fn wal_batch_entry_count_amplification() {
    use chatstore::format::coding::put_varint;
    use chatstore::format::wal;
    let len = 16 << 20;
    let mut payload = Vec::with_capacity(len);
    put_varint(&mut payload, (len - 8) as u64);
    payload.resize(len, 0);
    let mut log = Vec::new();
    wal::encode_file_header(&mut log);
    wal::encode_record(
        &mut log,
        wal::RecordType::Batch,
        0,
        1,
        &payload,
        crate::wal_reader::LOG_NUMBER,
    );
    assert_eq!(run_one(wal_reader::run, &log), Ok(()));
}

/// The seed inputs, made by the real encoders.
mod seeds {
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use chatstore::format::block::{pack, BlockBuilder, MAX_BLOCK_LEN};
    use chatstore::format::coding::{put_u32, put_u64, put_varint};
    use chatstore::format::dictionary::DictEncoder;
    use chatstore::format::manifest::{self, ManifestState, SegmentRecord};
    use chatstore::format::segment::{SegmentWriter, SEGMENT_MAGIC};
    use chatstore::format::state_block::StateBlockBuilder;
    use chatstore::format::{batch, wal};
    use chatstore::fs::WritableFile;
    use chatstore::{Compression, Message};

    use super::block_decoder::{dictionary_bytes, sample_messages};
    use super::store_ops::op;

    #[derive(Clone, Default)]
    struct VecFile(Arc<Mutex<Vec<u8>>>);

    impl WritableFile for VecFile {
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            self.0.lock().expect("unpoisoned").extend_from_slice(buf);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn write_in(kind: &str, target: &str, name: &str, data: &[u8]) {
        let dir = super::fuzz_dir().join(kind).join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), data).expect("input written");
    }

    fn write(target: &str, name: &str, data: &[u8]) {
        write_in("corpus", target, &format!("seed-{name}"), data);
    }

    /// A block body of the largest size a reader accepts that starts with the largest row
    /// count (`Block`) or entry count (`StateBlock`) the decoders accept for that size, and as
    /// many runs, then zeroes: compressed, a few kilobytes. Before 4f166b1 (counts up to the
    /// body size, 64 MiB bodies) `StateBlock::decode` reserved 4 GiB for it.
    fn huge_count_body() -> Vec<u8> {
        let len = MAX_BLOCK_LEN;
        let count = (len / 4) as u64;
        let mut body = Vec::with_capacity(len);
        put_varint(&mut body, count);
        put_varint(&mut body, count);
        body.resize(len, 0);
        body
    }

    /// A segment whose only content is `stored` as its one state block (first key empty), in
    /// the version-1 layout (84-byte footer), which readers still accept.
    fn segment_with_state_block(stored: &[u8]) -> Vec<u8> {
        const SEGMENT_V1: u32 = 1;
        let mut seg = Vec::new();
        put_u64(&mut seg, SEGMENT_MAGIC);
        put_u32(&mut seg, SEGMENT_V1);
        put_u32(&mut seg, 0);
        let offset = seg.len();
        seg.extend_from_slice(stored);
        let index = seg.len();
        put_u64(&mut seg, offset as u64);
        put_u32(&mut seg, stored.len() as u32);
        put_u32(&mut seg, 0);
        seg.push(0);
        let state_index_len = seg.len() - index;
        let index_crc = crc32fast::hash(&seg[index..]);
        let footer = seg.len();
        put_u64(&mut seg, index as u64); // block index offset (no blocks)
        put_u32(&mut seg, 0);
        put_u32(&mut seg, 0);
        put_u64(&mut seg, 0);
        put_u64(&mut seg, 0);
        put_u64(&mut seg, index as u64); // state index offset
        put_u32(&mut seg, 1);
        put_u32(&mut seg, 1);
        put_u32(&mut seg, state_index_len as u32);
        put_u32(&mut seg, 0);
        put_u64(&mut seg, 0);
        put_u32(&mut seg, index_crc);
        put_u32(&mut seg, SEGMENT_V1);
        let footer_crc = crc32fast::hash(&seg[footer..]);
        put_u32(&mut seg, footer_crc);
        put_u64(&mut seg, SEGMENT_MAGIC);
        seg
    }

    /// Regression inputs made by hand for the decoders' reservation bug (see fuzz/README.md).
    fn crafted_regressions() {
        let mut stored = Vec::new();
        pack(&huge_count_body(), Compression::Zstd(3), None, &mut stored);
        write_in(
            "regressions",
            "block_decoder",
            "crafted-huge-count-zstd-block",
            &stored,
        );
        write_in(
            "regressions",
            "segment_reader",
            "crafted-huge-count-state-block",
            &segment_with_state_block(&stored),
        );
    }

    fn messages() -> Vec<Message> {
        let mut v = sample_messages(3, 14);
        v.extend(sample_messages(70, 5));
        v.extend(sample_messages(u64::MAX, 2));
        v
    }

    fn wal_seeds() {
        let mut header = Vec::new();
        wal::encode_file_header(&mut header);
        write("wal_reader", "header-only", &header);

        let mut log = header.clone();
        let msgs = messages();
        for chunk in [&msgs[..1], &msgs[1..6], &msgs[6..9]] {
            let mut payload = Vec::new();
            batch::put_count(&mut payload, chunk.len());
            for m in chunk {
                batch::put_message(&mut payload, m);
            }
            wal::encode_record(
                &mut log,
                wal::RecordType::Batch,
                0,
                1,
                &payload,
                crate::wal_reader::LOG_NUMBER,
            );
        }
        let mut payload = Vec::new();
        batch::put_count(&mut payload, 4);
        batch::put_message(&mut payload, &msgs[12]);
        batch::put_state(&mut payload, b"U\x00\x00\x00\x01cursor", Some(b"\x05"));
        batch::put_state(&mut payload, b"gone", None);
        batch::put_state(&mut payload, b"", Some(b""));
        wal::encode_record(
            &mut log,
            wal::RecordType::Batch,
            0,
            1,
            &payload,
            crate::wal_reader::LOG_NUMBER,
        );
        write("wal_reader", "batches", &log);

        // A torn tail: the last record cut short, then zero fill.
        let mut torn = log[..log.len() - 7].to_vec();
        torn.extend_from_slice(&[0; 24]);
        write("wal_reader", "torn-tail", &torn);

        // A reused file: a newer log's header and first record written over a file that held
        // another log's records, which no longer check out and end the log.
        let mut reused = Vec::new();
        wal::encode_file_header(&mut reused);
        for _ in 0..3 {
            let synced = reused.len() as u64;
            wal::encode_record(
                &mut reused,
                wal::RecordType::Batch,
                synced,
                1,
                &payload,
                crate::wal_reader::LOG_NUMBER - 1,
            );
        }
        let mut one = Vec::new();
        batch::put_count(&mut one, 1);
        batch::put_message(&mut one, &msgs[0]);
        let mut fresh = header.clone();
        wal::encode_record(
            &mut fresh,
            wal::RecordType::Batch,
            0,
            1,
            &one,
            crate::wal_reader::LOG_NUMBER,
        );
        reused[..fresh.len()].copy_from_slice(&fresh);
        write("wal_reader", "reused-file", &reused);
    }

    fn segment(
        name: &str,
        compression: Compression,
        dict: Option<&[u8]>,
        msgs: &[Message],
        state: usize,
    ) {
        let file = VecFile::default();
        let mut w = SegmentWriter::with_dictionary(Box::new(file.clone()), compression, 400, dict);
        for m in msgs {
            assert!(w.add(m).expect("in-memory write"));
        }
        for i in 0..state {
            let key = format!("U{:04}/cursor", i * 3);
            let value = (i % 4 != 0).then(|| format!("{}", i * 17).into_bytes());
            assert!(w
                .add_state(key.as_bytes(), value.as_deref())
                .expect("write"));
        }
        w.finish().expect("in-memory finish");
        let data = file.0.lock().expect("unpoisoned").clone();
        write("segment_reader", name, &data);
    }

    fn segment_seeds() {
        let msgs = messages();
        segment("empty", Compression::None, None, &[], 0);
        segment("none", Compression::None, None, &msgs[..8], 0);
        segment("lz4-state", Compression::Lz4, None, &msgs, 12);
        segment("zstd-state-only", Compression::Zstd(3), None, &[], 20);
        let dict = dictionary_bytes();
        segment("zstd-dict", Compression::Zstd(3), Some(&dict), &msgs, 6);
    }

    fn block_seeds() {
        let msgs = messages();
        let body = |msgs: &[Message]| {
            let mut b = BlockBuilder::new();
            for m in msgs {
                assert!(b.add(m));
            }
            b.finish_body()
        };
        write("block_decoder", "body", &body(&msgs[..10]));
        for (name, c) in [
            ("none", Compression::None),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd(3)),
        ] {
            let mut out = Vec::new();
            pack(&body(&msgs), c, None, &mut out);
            write("block_decoder", name, &out);
        }
        let dict = dictionary_bytes();
        let mut enc = DictEncoder::new(&dict, 3).expect("zstd accepts the dictionary");
        let mut out = Vec::new();
        pack(&body(&msgs), Compression::Zstd(3), Some(&mut enc), &mut out);
        write("block_decoder", "zstd-dict", &out);

        let mut s = StateBlockBuilder::new();
        for i in 0..10u32 {
            let key = format!("C{:03}/member/{}", i / 3, i);
            let value = (i % 3 != 0).then(|| vec![i as u8; (i * 2) as usize]);
            assert!(s.add(key.as_bytes(), value.as_deref()));
        }
        let state_body = s.finish();
        write("block_decoder", "state-body", &state_body);
        let mut out = Vec::new();
        pack(&state_body, Compression::Lz4, None, &mut out);
        write("block_decoder", "state-lz4", &out);
    }

    fn manifest_seeds() {
        write(
            "manifest_reader",
            "empty",
            &manifest::encode(&ManifestState::default()),
        );
        let state = ManifestState {
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
                    level: 2,
                    file_bytes: 4321,
                    messages: 17,
                },
            ],
            flushed_lsn: 77,
        };
        write("manifest_reader", "two-segments", &manifest::encode(&state));
    }

    /// Writes a message for `store_ops`: conversation index, sender index, length byte, flags.
    fn msg(out: &mut Vec<u8>, conv: u8, sender: u8, len: u8, flags: u8, extra: &[u8]) {
        out.extend_from_slice(&[conv, sender, len, flags]);
        out.extend_from_slice(extra);
    }

    fn append(out: &mut Vec<u8>, conv: u8, sender: u8, len: u8) {
        out.push(op::APPEND);
        msg(out, conv, sender, len, 0, &[]);
    }

    fn store_seeds() {
        // Lz4, Sync, no background compaction: the basic read and write paths.
        let mut a = vec![0b0000_0001];
        for i in 0..6u8 {
            append(&mut a, i % 3, i % 2, 20 + i);
        }
        a.push(op::APPEND);
        // Attachment (len 9), reply to the last message, two mentions.
        msg(&mut a, 0, 0, 30, 0b0000_0111, &[9, 3, 2, 0, 1]);
        a.extend_from_slice(&[op::LATEST, 0, 10, op::BEFORE, 0, 3, 5, op::AFTER, 1, 0, 7]);
        a.extend_from_slice(&[op::AROUND, 0, 11, 1, op::GET, 2, 3]);
        a.extend_from_slice(&[op::EDIT, 0, 11, 1, 40, op::DELETE, 1, 3, 0]);
        a.extend_from_slice(&[op::EDIT, 0, 3, 1, 40]); // not the sender
        a.extend_from_slice(&[op::FLUSH, op::LATEST, 0, 255, op::COMPACT, op::REOPEN]);
        a.extend_from_slice(&[op::EXPORT, 0, op::VERIFY]);
        write("store_ops", "basic", &a);

        // Zstd with a dictionary and background compaction: enough data for several flushes,
        // compactions and a trained dictionary; batches, retention, import, checkpoint and a
        // read-only view.
        let mut b = vec![0b0010_0111];
        for i in 0..40u8 {
            append(&mut b, i % 5, i % 3, 128 + 20 + i % 30);
        }
        b.extend_from_slice(&[op::APPEND_BATCH, 3]);
        msg(&mut b, 0, 1, 25, 0, &[]);
        msg(&mut b, 5, 1, 200, 0b0000_0010, &[3]); // reply to the last message
        msg(&mut b, 0, 0, 0, 0, &[]); // empty: the whole batch is refused
        b.extend_from_slice(&[op::APPEND_BATCH, 2]);
        msg(&mut b, 1, 1, 25, 0, &[]);
        msg(&mut b, 1, 0, 26, 0b0000_0010, &[3]);
        b.extend_from_slice(&[op::SET_RETENTION, 2, 2, op::SET_RETENTION, 3, 1]);
        // Import one message continuing conversation 1.
        b.extend_from_slice(&[op::IMPORT, 0, 0, 0]);
        msg(&mut b, 0, 0, 33, 0, &[]);
        b.push(3); // timestamp now, edited at 7 ms
        b.extend_from_slice(&[op::CHECKPOINT, op::READ_ONLY, op::COMPACT, op::VERIFY]);
        b.extend_from_slice(&[op::SET_RETENTION, 4, 3, op::FLUSH, op::EXPORT, 4]);
        b.extend_from_slice(&[op::SYNC_STATS, op::REOPEN, op::LATEST, 2, 255]);
        write("store_ops", "background", &b);

        // Buffered durability, tiered compaction, big messages at the size limit.
        let mut c = vec![0b0001_1010];
        for i in 0..12u8 {
            append(&mut c, 5 - i % 2, 3, 192 + i * 5);
        }
        c.extend_from_slice(&[op::EDIT, 5, 3, 3, 250, op::DELETE, 4, 19, 3]);
        c.extend_from_slice(&[op::COMPACT, op::REOPEN, op::AROUND, 4, 3, 255]);
        write("store_ops", "buffered-large", &c);
    }

    #[test]
    #[ignore = "rewrites fuzz/corpus/*/seed-*; run by hand after a format change"]
    fn regenerate_seed_corpus() {
        assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").is_dir());
        wal_seeds();
        segment_seeds();
        block_seeds();
        manifest_seeds();
        store_seeds();
        crafted_regressions();
    }
}
