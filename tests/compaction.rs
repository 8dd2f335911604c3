//! Compaction keeps every message and state entry while shrinking the segment count.

#[path = "common/cases.rs"]
mod cases;
use chatstore::{
    ChatOptions, ChatStore, Compression, ConversationId, MessageId, NewMessage, Options, Store,
    UserId,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn small(background: bool) -> Options {
    Options {
        memtable_bytes: 8 << 10,
        block_bytes: 1 << 10,
        l0_compaction_trigger: 3,
        level_base_bytes: 64 << 10,
        target_segment_bytes: 16 << 10,
        background_compaction: background,
        ..Options::default()
    }
}

/// Options for watching block copies: small blocks, compaction only when asked, and a level 1
/// large enough that every merge goes into it.
fn copying(memtable_bytes: usize, compression: Compression) -> Options {
    Options {
        memtable_bytes,
        block_bytes: 1 << 10,
        compression,
        l0_compaction_trigger: 2,
        level_base_bytes: 64 << 20,
        target_segment_bytes: 64 << 20,
        background_compaction: false,
        ..Options::default()
    }
}

/// Asserts that `store` holds exactly `model`'s texts, ids from 1 on, with the messages in
/// `deleted` (conversation, id) read as deleted and empty.
fn assert_holds(store: &Store, model: &BTreeMap<u64, Vec<String>>, deleted: &[(u64, u64)]) {
    for (&conv, texts) in model {
        let all = store.latest(ConversationId(conv), usize::MAX).unwrap();
        assert_eq!(all.len(), texts.len(), "conversation {conv}");
        for (k, (m, want)) in all.iter().zip(texts).enumerate() {
            assert_eq!(m.id.0, k as u64 + 1, "conversation {conv}");
            if deleted.contains(&(conv, m.id.0)) {
                assert_eq!(m.kind, chatstore::MessageKind::Deleted);
                assert!(m.content.is_empty());
                continue;
            }
            assert_eq!(
                m.text(),
                Some(want.as_str()),
                "conversation {conv} id {}",
                m.id
            );
        }
    }
}

fn body(conv: u64, id: u64) -> String {
    format!("conversation {conv} message {id} with a few words of text")
}

#[test]
fn background_compaction_bounds_level0_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small(true)).unwrap();
    let mut last = BTreeMap::new();
    for i in 0..6000u64 {
        let conv = (i * 7919) % 97;
        let m = store
            .append(
                ConversationId(conv),
                NewMessage::text(UserId(conv), &body(conv, i)),
            )
            .unwrap();
        last.insert(conv, m.id.0);
    }
    store.flush().unwrap();
    // Compaction runs in the background; give it a moment to settle (not a timing assertion:
    // the checks below hold whether or not it finished).
    for _ in 0..100 {
        if store.stats().pending_compaction_bytes == 0 && store.stats().segments_per_level[0] < 3 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let stats = store.stats();
    assert!(stats.compactions > 0, "{stats:?}");
    assert!(stats.compaction_bytes_written > 0);
    assert!(stats.write_amplification() > 1.0);
    for (&conv, &n) in &last {
        let all = store.latest(ConversationId(conv), 100_000).unwrap();
        assert_eq!(all.len() as u64, n);
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.id.0, i as u64 + 1);
        }
    }
    drop(store);
    let store = Store::open_with(dir.path(), small(true)).unwrap();
    for (&conv, &n) in &last {
        assert_eq!(store.last_id(ConversationId(conv)).unwrap(), MessageId(n));
    }
}

#[test]
fn full_compaction_leaves_one_run_and_reads_touch_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small(false)).unwrap();
    for i in 0..3000u64 {
        let conv = i % 50;
        store
            .append(
                ConversationId(conv),
                NewMessage::text(UserId(1), &body(conv, i)),
            )
            .unwrap();
        if i % 500 == 499 {
            store.flush().unwrap();
        }
    }
    assert!(store.stats().segments_per_level[0] >= 6);
    store.compact().unwrap();
    let stats = store.stats();
    assert_eq!(stats.segments_per_level[0], 0, "{stats:?}");
    assert_eq!(stats.segment_messages, 3000);
    let before = store.stats();
    for conv in 0..50 {
        assert_eq!(store.latest(ConversationId(conv), 10).unwrap().len(), 10);
    }
    let after = store.stats();
    assert_eq!(
        after.segments_read - before.segments_read,
        50,
        "one segment per read"
    );
    // Obsolete inputs are gone from the directory.
    let segs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .map(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .unwrap_or(false)
        })
        .count() as u64;
    assert_eq!(segs, stats.segments);
}

#[test]
fn chat_state_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let chat = ChatStore::open_with(dir.path(), small(false), ChatOptions::default()).unwrap();
    let users: Vec<UserId> = (1..=20).map(UserId).collect();
    for &u in &users {
        chat.register_user(u).unwrap();
    }
    let g = chat.create_group(users[0], &users[1..]).unwrap();
    for i in 0..400u64 {
        let from = users[(i % 20) as usize];
        chat.send(g, NewMessage::text(from, &body(g.0, i))).unwrap();
        if i % 3 == 0 {
            let reader = users[((i + 7) % 20) as usize];
            chat.mark_read(reader, g, MessageId(i + 1)).unwrap();
        }
        if i % 100 == 99 {
            chat.store().flush().unwrap();
        }
    }
    let unread_before: Vec<_> = users.iter().map(|&u| chat.unread(u).unwrap()).collect();
    let cursors_before: Vec<_> = users.iter().map(|&u| chat.cursors(u, g).unwrap()).collect();
    chat.store().compact().unwrap();
    let unread_after: Vec<_> = users.iter().map(|&u| chat.unread(u).unwrap()).collect();
    let cursors_after: Vec<_> = users.iter().map(|&u| chat.cursors(u, g).unwrap()).collect();
    assert_eq!(unread_before, unread_after);
    assert_eq!(cursors_before, cursors_after);
    chat.close().unwrap();
    let chat = ChatStore::open_with(dir.path(), small(false), ChatOptions::default()).unwrap();
    let cursors_reopened: Vec<_> = users.iter().map(|&u| chat.cursors(u, g).unwrap()).collect();
    assert_eq!(cursors_before, cursors_reopened);
    assert_eq!(chat.members(g).unwrap(), users);
}

#[derive(Clone, Debug)]
enum Op {
    Append(u64, u16),
    Flush,
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => (0..12u64, 1..400u16).prop_map(|(c, n)| Op::Append(c, n)),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(24), ..ProptestConfig::default() })]

    #[test]
    fn appends_flushes_compactions_and_reopens_match_a_model(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open_with(dir.path(), small(true)).unwrap();
        let mut model: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Append(conv, len) => {
                    let text = "w".repeat(len as usize);
                    let m = store.append(ConversationId(conv), NewMessage::text(UserId(conv), &text)).unwrap();
                    let msgs = model.entry(conv).or_default();
                    msgs.push(text);
                    prop_assert_eq!(m.id.0, msgs.len() as u64);
                }
                Op::Flush => store.flush().unwrap(),
                Op::Compact => store.compact().unwrap(),
                Op::Reopen => {
                    store.close().unwrap();
                    store = Store::open_with(dir.path(), small(true)).unwrap();
                }
            }
            for (&conv, msgs) in &model {
                let got = store.latest(ConversationId(conv), 5).unwrap();
                let want: Vec<&String> = msgs.iter().rev().take(5).rev().collect();
                let got_text: Vec<&str> = got.iter().filter_map(|m| m.text()).collect();
                prop_assert_eq!(got_text.len(), want.len());
                for (g, w) in got_text.iter().zip(want) {
                    prop_assert_eq!(*g, w.as_str());
                }
            }
        }
        for (&conv, msgs) in &model {
            let all = store.latest(ConversationId(conv), usize::MAX).unwrap();
            prop_assert_eq!(all.len(), msgs.len());
        }
    }
}

/// Busy conversations' blocks are copied whole from one level to the next (ids only grow in
/// a conversation, so an older segment's blocks of it end before a newer one's rows start);
/// what is copied reads back unchanged, and a block holding an edited or deleted message is
/// rewritten, never copied, so the edit and the delete apply.
#[test]
fn whole_blocks_are_copied_and_edits_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        dictionary_bytes: 4 << 10,
        ..copying(64 << 10, Options::default().compression)
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    let mut model: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut i = 0u64;
    let mut round = |store: &Store, model: &mut BTreeMap<u64, Vec<String>>| {
        for _ in 0..3000 {
            // Four busy conversations and a long tail of quiet ones.
            let conv = if i % 5 == 4 {
                100 + (i * 7919) % 500
            } else {
                i % 4
            };
            let text = body(conv, i);
            store
                .append(ConversationId(conv), NewMessage::text(UserId(conv), &text))
                .unwrap();
            model.entry(conv).or_default().push(text);
            i += 1;
        }
        store.flush().unwrap();
        while store.compact_step().unwrap() {}
    };
    for _ in 0..3 {
        round(&store, &mut model);
    }
    assert!(
        store.stats().compaction_bytes_copied > 0,
        "{:?}",
        store.stats()
    );
    // An edit and a delete in blocks that would otherwise be copied again.
    let edited = store
        .edit(ConversationId(1), MessageId(5), "edited")
        .unwrap();
    store.delete(ConversationId(2), MessageId(7)).unwrap();
    model.get_mut(&1).unwrap()[4] = "edited".to_string();
    let copied = store.stats().compaction_bytes_copied;
    for _ in 0..2 {
        round(&store, &mut model);
    }
    assert!(store.stats().compaction_bytes_copied > copied);
    assert_holds(&store, &model, &[(2, 7)]);
    assert_eq!(
        store.latest(ConversationId(1), usize::MAX).unwrap()[4].edited_ms,
        edited.edited_ms
    );
}

/// A compaction cut into key ranges merged on several threads writes what one thread writes:
/// every message (with its edits and deletes), in id order, in segments that pass `verify`,
/// before and after a reopen.
#[test]
fn a_merge_cut_over_threads_writes_what_one_thread_writes() {
    let run = |threads: usize| {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            memtable_bytes: 32 << 10,
            block_bytes: 1 << 10,
            dictionary_bytes: 4 << 10,
            l0_compaction_trigger: 2,
            level_base_bytes: 128 << 10,
            // Merges above a quarter of this are cut.
            target_segment_bytes: 32 << 10,
            compaction_threads: threads,
            background_compaction: false,
            ..Options::default()
        };
        let store = Store::open_with(dir.path(), opts.clone()).unwrap();
        for i in 0..20_000u64 {
            let conv = if i % 3 == 0 { i % 7 } else { (i * 7919) % 1500 };
            store
                .append(
                    ConversationId(conv),
                    NewMessage::text(UserId(conv), &body(conv, i)),
                )
                .unwrap();
            if i % 2000 == 1999 {
                store.flush().unwrap();
                while store.compact_step().unwrap() {}
            }
            if i == 9_000 {
                store
                    .edit(ConversationId(3), MessageId(40), "edited")
                    .unwrap();
                store.delete(ConversationId(700), MessageId(2)).unwrap();
            }
        }
        store.compact().unwrap();
        let report = store.verify().unwrap();
        assert!(report.is_ok(), "{report:?}");
        let read = |store: &Store| -> Vec<Vec<(u64, Option<String>)>> {
            (0..1500)
                .map(|c| {
                    store
                        .latest(ConversationId(c), usize::MAX)
                        .unwrap()
                        .iter()
                        .map(|m| (m.id.0, m.text().map(str::to_string)))
                        .collect()
                })
                .collect()
        };
        let before = read(&store);
        let parts = store.stats().compaction_parts_beside;
        drop(store);
        let store = Store::open_with(dir.path(), opts).unwrap();
        assert_eq!(read(&store), before);
        (before, parts)
    };
    let (one, beside_one) = run(1);
    let (four, beside_four) = run(4);
    assert_eq!(beside_one, 0);
    assert!(beside_four > 0, "no merge was cut");
    assert_eq!(one.len(), four.len());
    for (c, (a, b)) in one.iter().zip(&four).enumerate() {
        assert_eq!(a, b, "conversation {c}");
    }
    assert_eq!(one[3][39].1.as_deref(), Some("edited"));
    assert_eq!(one.iter().map(Vec::len).sum::<usize>(), 20_000);
}

/// Background compaction takes a second thread only once level 0 is behind (four times its
/// trigger): before that the thread would take a core from the writer for nothing.
#[test]
fn a_background_merge_takes_more_threads_only_when_level0_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_bytes: 32 << 10,
        block_bytes: 1 << 10,
        l0_compaction_trigger: 2,
        level_base_bytes: 64 << 20,
        target_segment_bytes: 32 << 10,
        compaction_threads: 2,
        background_compaction: false,
        // Flushed in the store's own codec, so level 0 is merged into level 1 rather than
        // gathered into runs within level 0 (a level-0 run is one segment, never cut).
        flush_compression: Compression::Zstd(3),
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    let mut i = 0u64;
    let mut flush_segments = |store: &Store, n: usize| {
        for _ in 0..n {
            for _ in 0..400 {
                let conv = (i * 7919) % 300;
                store
                    .append(
                        ConversationId(conv),
                        NewMessage::text(UserId(conv), &body(conv, i)),
                    )
                    .unwrap();
                i += 1;
            }
            store.flush().unwrap();
        }
    };
    flush_segments(&store, 2);
    assert!(store.compact_step().unwrap());
    assert_eq!(
        store.stats().compaction_parts_beside,
        0,
        "level 0 at its trigger"
    );
    flush_segments(&store, 8);
    assert!(store.stats().segments_per_level[0] >= 8);
    assert!(store.compact_step().unwrap());
    assert!(
        store.stats().compaction_parts_beside > 0,
        "level 0 at four times its trigger: {:?}",
        store.stats()
    );
}

/// The codec byte of every block of the segment at `path`, with its number of conversations,
/// its rows and its stored size.
fn block_codecs(path: &std::path::Path) -> Vec<(u8, usize, usize, usize)> {
    use chatstore::format::{block::stored_codec, segment::SegmentReader};
    let data = bytes::Bytes::from(std::fs::read(path).unwrap());
    let seg = SegmentReader::open(path, std::sync::Arc::new(data)).unwrap();
    (0..seg.block_count())
        .map(|b| {
            let (stored, block) = seg.read_block_stored(b).unwrap();
            (
                stored_codec(&stored).unwrap(),
                block.runs().len(),
                block.rows(),
                stored.len(),
            )
        })
        .collect()
}

/// Appends one message to each conversation of `convs` in turn (recording it in `model`),
/// then flushes: one level-0 segment.
fn append_and_flush(store: &Store, model: &mut BTreeMap<u64, Vec<String>>, convs: &[u64]) {
    for &conv in convs {
        let texts = model.entry(conv).or_default();
        let text = body(conv, texts.len() as u64);
        store
            .append(ConversationId(conv), NewMessage::text(UserId(conv), &text))
            .unwrap();
        texts.push(text);
    }
    store.flush().unwrap();
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_run_within_level0_stores_shared_blocks_fast_and_a_quiet_store_folds_it_in_even_after_reopening(
) {
    use chatstore::format::block::CODEC_NONE;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_bytes: 1 << 20,
        block_bytes: 1 << 10,
        l0_compaction_trigger: 4,
        level_base_bytes: 64 << 20,
        background_compaction: false,
        // The defaults, spelled out: flushes (and the shared blocks of runs) raw, compaction zstd.
        flush_compression: Compression::None,
        compression: Compression::Zstd(3),
        level0_max_runs: 4,
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), opts.clone()).unwrap();
    let mut want: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    // Each flushed segment: one busy conversation (blocks of its own) and many quiet ones
    // (a row each, sharing blocks).
    let mut flush_segments = |store: &Store, busy_rows: u64, quiet: u64| {
        for _ in 0..4 {
            let mut rows: Vec<u64> = vec![1; busy_rows as usize];
            rows.extend(100..100 + quiet);
            append_and_flush(store, &mut want, &rows);
        }
    };
    // Level 1 first (level 0 merged into an empty level 1), then a batch much smaller than
    // a quarter of it, which level 0 gathers into a run of its own (runs allowed).
    flush_segments(&store, 2000, 2000);
    assert!(store.compact_step().unwrap());
    assert_eq!(store.stats().segments_per_level[0], 0);
    flush_segments(&store, 150, 150);
    let before = segment_files(dir.path());
    assert!(store.compact_step().unwrap());
    let stats = store.stats();
    assert_eq!(stats.segments_per_level[0], 1, "{stats:?}");
    let run = segment_files(dir.path())
        .into_iter()
        .find(|p| !before.contains(p))
        .unwrap();
    let codecs = block_codecs(&run);
    let shared: Vec<_> = codecs.iter().filter(|c| c.1 > 1).collect();
    let single: Vec<_> = codecs.iter().filter(|c| c.1 == 1 && c.2 >= 10).collect();
    assert!(!shared.is_empty() && !single.is_empty(), "{codecs:?}");
    assert!(shared.iter().all(|c| c.0 == CODEC_NONE), "{codecs:?}");
    assert!(single.iter().all(|c| c.0 != CODEC_NONE), "{codecs:?}");

    let check = |store: &Store| {
        for (conv, texts) in &want {
            let got = store
                .after(ConversationId(*conv), MessageId(0), texts.len() + 1)
                .unwrap();
            let got: Vec<&[u8]> = got.iter().map(|m| m.content.as_ref()).collect();
            let texts: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
            assert_eq!(got, texts, "conversation {conv}");
        }
    };
    check(&store);
    // The run's header says what it holds: reopened, the store still knows to fold it in
    // (its first block, the busy conversation's, is in the store's codec, so nothing else
    // tells it apart from a run written at rest).
    store.close().unwrap();
    let store = Store::open_with(dir.path(), opts).unwrap();
    assert_eq!(store.stats().segments_per_level[0], 1);
    // Quiet: the run, far below a quarter of level 1, is folded in for its raw blocks.
    assert!(store.compact_step().unwrap());
    assert_eq!(store.stats().segments_per_level[0], 0);
    for path in segment_files(dir.path()) {
        for c in block_codecs(&path) {
            assert!(c.0 != CODEC_NONE || c.2 < 10, "{path:?}: {c:?}");
        }
    }
    check(&store);
}

/// Level 1 written under writes keeps its blocks of several conversations in LZ4 (every merge
/// of level 0 into it rewrites them), copies such a block as stored when no newer row falls
/// inside it, and a quiet store rewrites them in the store's codec, even after a reopen.
#[test]
fn level1_under_writes_keeps_shared_blocks_in_lz4_until_the_store_is_quiet() {
    use chatstore::format::block::{CODEC_LZ4, CODEC_NONE};
    let dir = tempfile::tempdir().unwrap();
    let opts = copying(1 << 20, Compression::Zstd(3));
    let store = Store::open_with(dir.path(), opts.clone()).unwrap();
    let mut model: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let write = append_and_flush;
    let busy = vec![1u64; 300];
    let quiet: Vec<u64> = (100..1100).collect();
    for _ in 0..2 {
        write(
            &store,
            &mut model,
            &[busy.as_slice(), quiet.as_slice()].concat(),
        );
    }
    // Level 0 into an empty level 1, under writes.
    assert!(store.compact_step_under_writes().unwrap());
    assert_eq!(store.stats().segments_per_level[..2], [0, 1]);
    let level1 = segment_files(dir.path());
    let codecs: Vec<_> = level1.iter().flat_map(|p| block_codecs(p)).collect();
    let shared: Vec<_> = codecs.iter().filter(|c| c.1 > 1).collect();
    let single: Vec<_> = codecs.iter().filter(|c| c.1 == 1 && c.2 >= 10).collect();
    assert!(!shared.is_empty() && !single.is_empty(), "{codecs:?}");
    assert!(shared.iter().all(|c| c.0 == CODEC_LZ4), "{codecs:?}");
    assert!(
        single.iter().all(|c| c.0 != CODEC_LZ4 && c.0 != CODEC_NONE),
        "{codecs:?}"
    );
    let stats = store.stats();
    assert!(
        stats.pending_compaction_bytes >= stats.segment_bytes,
        "level 1 owes the store's codec: {stats:?}"
    );
    assert_holds(&store, &model, &[]);

    // Newer rows of the busy conversation only: nothing falls inside the quiet
    // conversations' blocks in the merge into level 1.
    for _ in 0..2 {
        write(&store, &mut model, &[1u64; 1500]);
    }
    // Blocks of one conversation that could be copied (the flushed ones are raw and must be
    // compressed).
    let inputs = segment_files(dir.path());
    let single_bytes: usize = inputs
        .iter()
        .flat_map(|p| block_codecs(p))
        .filter(|c| c.1 == 1 && c.0 != CODEC_NONE)
        .map(|c| c.3)
        .sum();
    let copied_before = store.stats().compaction_bytes_copied;
    assert!(store.compact_step_under_writes().unwrap());
    let stats = store.stats();
    assert_eq!(stats.segments_per_level[..2], [0, 1], "{stats:?}");
    assert!(
        stats.compaction_bytes_copied - copied_before > single_bytes as u64,
        "blocks of several conversations copied too: {} bytes copied, {single_bytes} in \
         blocks of one conversation",
        stats.compaction_bytes_copied - copied_before
    );
    assert_holds(&store, &model, &[]);

    // Quiet, and reopened first: the header's hint is what tells the store.
    store.close().unwrap();
    let store = Store::open_with(dir.path(), opts).unwrap();
    assert!(store.stats().pending_compaction_bytes > 0);
    let mut steps = 0;
    while store.compact_step().unwrap() {
        steps += 1;
        assert!(steps < 20, "compaction does not settle");
    }
    assert!(steps >= 1);
    assert_eq!(store.stats().pending_compaction_bytes, 0);
    for path in segment_files(dir.path()) {
        for c in block_codecs(&path) {
            assert!(c.0 != CODEC_LZ4 && c.0 != CODEC_NONE, "{path:?}: {c:?}");
        }
    }
    assert_holds(&store, &model, &[]);
    let report = store.verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// A busy conversation's blocks after its first in each input are copied without being
/// decompressed (their rows and size come from the input's indexes); what is copied so reads
/// back unchanged, passes `verify`, and an edit or a delete in such a block still applies: the
/// block is rewritten, and the edited message's original text is gone from every segment.
#[test]
fn blocks_copied_undecoded_read_back_and_edits_inside_them_still_apply() {
    let dir = tempfile::tempdir().unwrap();
    // Raw blocks, so that the files can be searched for a text.
    let opts = copying(256 << 10, Compression::None);
    let store = Store::open_with(dir.path(), opts).unwrap();
    let mut model: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut i = 0u64;
    let mut write = |store: &Store, model: &mut BTreeMap<u64, Vec<String>>, n: u64| {
        for _ in 0..n {
            // One busy conversation, a few quiet ones.
            let conv = if i % 10 == 9 { 10 + i % 7 } else { 1 };
            let text = body(conv, i);
            store
                .append(ConversationId(conv), NewMessage::text(UserId(conv), &text))
                .unwrap();
            model.entry(conv).or_default().push(text);
            i += 1;
        }
        store.flush().unwrap();
        while store.compact_step().unwrap() {}
    };
    write(&store, &mut model, 3000);
    store.compact().unwrap();
    let before = store.stats().compaction_bytes_copied_undecoded;
    write(&store, &mut model, 600);
    write(&store, &mut model, 600);
    let stats = store.stats();
    assert!(
        stats.compaction_bytes_copied_undecoded > before,
        "the busy conversation's blocks of level 1 were copied undecoded: {stats:?}"
    );
    assert!(stats.compaction_bytes_copied_undecoded <= stats.compaction_bytes_copied);

    // An edit and a delete in the middle of the busy conversation, and an edit of its last
    // message (in its last block of level 1), in blocks that would otherwise be copied
    // undecoded again.
    let last = model[&1].len();
    let originals = [model[&1][1499].clone(), model[&1][last - 1].clone()];
    store
        .edit(ConversationId(1), MessageId(1500), "edited")
        .unwrap();
    store
        .edit(ConversationId(1), MessageId(last as u64), "edited last")
        .unwrap();
    store.delete(ConversationId(1), MessageId(1600)).unwrap();
    model.get_mut(&1).unwrap()[1499] = "edited".to_string();
    model.get_mut(&1).unwrap()[last - 1] = "edited last".to_string();
    let copied = store.stats().compaction_bytes_copied_undecoded;
    write(&store, &mut model, 600);
    write(&store, &mut model, 600);
    assert!(store.stats().compaction_bytes_copied_undecoded > copied);

    let check = |store: &Store| {
        assert_holds(store, &model, &[(1, 1600)]);
        let report = store.verify().unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    };
    check(&store);
    for path in segment_files(dir.path()) {
        let bytes = std::fs::read(&path).unwrap();
        for original in &originals {
            assert!(
                !bytes
                    .windows(original.len())
                    .any(|w| w == original.as_bytes()),
                "{} still holds an edited message's original text",
                path.display()
            );
        }
    }
    store.close().unwrap();
    let store = Store::open_with(dir.path(), Options::default()).unwrap();
    check(&store);
}

/// Writes `rounds` flushed memtables' worth of messages over many conversations into `store`,
/// running every compaction due after each flush.
fn fill_and_compact(store: &Store, rounds: u64) {
    for round in 0..rounds {
        for i in 0..400u64 {
            let conv = (i * 7919 + round) % 300;
            store
                .append(
                    ConversationId(conv),
                    NewMessage::text(UserId(conv), &body(conv, round * 1000 + i)),
                )
                .unwrap();
        }
        store.flush().unwrap();
        while store.compact_step().unwrap() {}
    }
}

#[test]
fn per_level_compaction_stats_add_up_to_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small(false)).unwrap();
    fill_and_compact(&store, 30);
    let s = store.stats();
    let levels = &s.compaction_levels;
    let sum = |f: fn(&chatstore::LevelCompactionStats) -> u64| levels.iter().map(f).sum::<u64>();
    assert_eq!(sum(|l| l.compactions), s.compactions, "{levels:?}");
    assert_eq!(sum(|l| l.bytes_read), s.compaction_bytes_read);
    assert_eq!(sum(|l| l.bytes_written), s.compaction_bytes_written);
    // Counted by the output writers, and by the merge as it copies: the two agree.
    assert_eq!(sum(|l| l.bytes_copied), s.compaction_bytes_copied);
    assert!(s.compaction_bytes_copied > 0, "{levels:?}");
    // Level 0 merged into level 1, which overflowed into level 2; level 1's merges after
    // the first rewrote what level 1 already held.
    assert!(levels[1].compactions > 1, "{levels:?}");
    assert!(levels[2].compactions > 0, "{levels:?}");
    assert!(levels[1].bytes_read_same_level > 0, "{levels:?}");
    for (level, l) in levels.iter().enumerate() {
        assert!(
            l.bytes_read_same_level <= l.bytes_read,
            "level {level}: {l:?}"
        );
        assert!(l.bytes_copied <= l.bytes_written, "level {level}: {l:?}");
        if l.compactions > 0 {
            // zstd compressed the rows each level's merges re-encoded.
            assert!(l.bytes_compressed > 0, "level {level}: {l:?}");
        }
    }
}

#[test]
fn compaction_without_a_codec_counts_no_compressed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        compression: Compression::None,
        ..small(false)
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    fill_and_compact(&store, 12);
    let s = store.stats();
    assert!(s.compaction_levels[1].compactions > 0, "{s:?}");
    assert!(
        s.compaction_levels.iter().all(|l| l.bytes_compressed == 0),
        "{s:?}"
    );
}
