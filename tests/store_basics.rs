//! Appends and reads through the public API, across flushes and reopens.

use std::sync::Arc;
use std::time::Duration;

use chatstore::{
    Compression, ConversationId, Durability, Error, MessageId, MessageKind, NewMessage, Options,
    Store, UserId,
};

fn small_options() -> Options {
    Options {
        memtable_bytes: 16 << 10,
        block_bytes: 2 << 10,
        ..Options::default()
    }
}

fn text(sender: u64, s: &str) -> NewMessage {
    NewMessage::text(UserId(sender), s)
}

fn ids(msgs: &[chatstore::Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.id.0).collect()
}

#[test]
fn ids_start_at_one_and_are_per_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = ConversationId(1);
    let b = ConversationId(2);
    assert_eq!(store.append(a, text(1, "a1")).unwrap().id, MessageId(1));
    assert_eq!(store.append(b, text(1, "b1")).unwrap().id, MessageId(1));
    assert_eq!(store.append(a, text(2, "a2")).unwrap().id, MessageId(2));
    assert_eq!(store.last_id(a).unwrap(), MessageId(2));
    assert_eq!(store.last_id(ConversationId(3)).unwrap(), MessageId(0));
    let got = store.get(a, MessageId(2)).unwrap().unwrap();
    assert_eq!(got.text(), Some("a2"));
    assert_eq!(got.sender, UserId(2));
    assert!(store.get(a, MessageId(3)).unwrap().is_none());
    assert!(store.get(a, MessageId(0)).unwrap().is_none());
}

#[test]
fn reads_agree_across_memtable_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small_options()).unwrap();
    let conv = ConversationId(7);
    let mut expected = Vec::new();
    for i in 1..=1000u64 {
        let body = format!("message number {i} with some words to compress");
        let mut m = text(i % 3, &body);
        if i % 10 == 0 {
            m = m
                .with_reply_to(MessageId(i - 1))
                .with_mentions(vec![UserId(9)]);
        }
        if i % 17 == 0 {
            m = m.with_attachment("https://assets.example/x.jpg");
        }
        // Interleave another conversation so blocks hold several.
        store
            .append(ConversationId(i % 5 + 100), text(1, "noise"))
            .unwrap();
        expected.push(store.append(conv, m).unwrap());
        if i == 400 {
            store.flush().unwrap();
        }
    }
    assert!(store.stats().segments >= 1, "{:?}", store.stats());

    let latest = store.latest(conv, 50).unwrap();
    assert_eq!(latest, expected[950..].to_vec());
    // Page backwards through the whole history.
    let mut cursor = latest[0].id;
    let mut pages = vec![latest];
    while cursor.0 > 1 {
        let page = store.before(conv, cursor, 50).unwrap();
        cursor = page[0].id;
        pages.push(page);
    }
    pages.reverse();
    let all: Vec<_> = pages.into_iter().flatten().collect();
    assert_eq!(all, expected);

    let fwd = store.after(conv, MessageId(0), 3).unwrap();
    assert_eq!(ids(&fwd), vec![1, 2, 3]);
    assert!(store.after(conv, MessageId(1000), 10).unwrap().is_empty());
    let around = store.around(conv, MessageId(400), 2).unwrap();
    assert_eq!(ids(&around), vec![398, 399, 400, 401, 402]);
    let edge = store.around(conv, MessageId(1), 2).unwrap();
    assert_eq!(ids(&edge), vec![1, 2, 3]);
}

#[test]
fn reopen_returns_everything_and_ids_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let store = Store::open_with(dir.path(), small_options()).unwrap();
        for i in 0..300u64 {
            expected.push(
                store
                    .append(ConversationId(i % 4), text(i, &format!("m{i}")))
                    .unwrap(),
            );
        }
        store.close().unwrap();
    }
    for round in 0..3 {
        let store = Store::open_with(dir.path(), small_options()).unwrap();
        for c in 0..4 {
            let conv = ConversationId(c);
            let want: Vec<_> = expected
                .iter()
                .filter(|m| m.conversation == conv)
                .cloned()
                .collect();
            assert_eq!(store.latest(conv, 10_000).unwrap(), want, "round {round}");
            let next = store.append(conv, text(1, "after reopen")).unwrap();
            assert_eq!(next.id.0, want.len() as u64 + 1);
            expected.push(next);
        }
        if round == 1 {
            store.flush().unwrap();
        }
    }
}

fn wal_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "wal")
        })
        .count()
}

/// Each open starts a new WAL file. One that replayed nothing leaves the older ones holding
/// nothing: they must go, or a store opened and closed again and again (a service restarted,
/// an operator tool) gathers a WAL file per open and replays and syncs them all at each open.
#[test]
fn reopening_a_store_does_not_gather_empty_wal_files() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), small_options()).unwrap();
        store.append(ConversationId(1), text(1, "kept")).unwrap();
        store.flush().unwrap();
        store.close().unwrap();
    }
    for _ in 0..20 {
        let store = Store::open_with(dir.path(), small_options()).unwrap();
        store.close().unwrap();
    }
    assert_eq!(wal_files(dir.path()), 1, "only the last open's WAL is left");

    // Unflushed records keep their WAL until a flush, through any number of reopens.
    let store = Store::open_with(dir.path(), small_options()).unwrap();
    store
        .append(ConversationId(1), text(1, "unflushed"))
        .unwrap();
    store.close().unwrap();
    for _ in 0..3 {
        let store = Store::open_with(dir.path(), small_options()).unwrap();
        let got = store.latest(ConversationId(1), 10).unwrap();
        assert_eq!(got.len(), 2, "both messages survive every reopen");
        assert_eq!(&got[1].content[..], b"unflushed");
        store.close().unwrap();
    }
    let store = Store::open_with(dir.path(), small_options()).unwrap();
    let next = store.append(ConversationId(1), text(1, "third")).unwrap();
    assert_eq!(next.id.0, 3);
    store.close().unwrap();
}

#[test]
fn batches_are_atomic_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let batch: Vec<_> = (0..10)
        .map(|i| (ConversationId(i % 2), text(1, &format!("b{i}"))))
        .collect();
    let out = store.append_batch(batch).unwrap();
    assert_eq!(out.len(), 10);
    assert_eq!(out[0].id, MessageId(1));
    assert_eq!(out[2].id, MessageId(2));
    assert_eq!(out[9].id, MessageId(5));
    // A batch with one bad reply is refused whole.
    let bad = vec![
        (ConversationId(0), text(1, "fine")),
        (
            ConversationId(0),
            text(1, "bad").with_reply_to(MessageId(99)),
        ),
    ];
    assert!(matches!(
        store.append_batch(bad),
        Err(Error::IdOutOfRange { .. })
    ));
    assert_eq!(store.last_id(ConversationId(0)).unwrap(), MessageId(5));
    assert_eq!(store.append_batch(Vec::new()).unwrap(), Vec::new());
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_message_bytes: 100,
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    let conv = ConversationId(1);
    // The raw store keeps any bytes, empty content included (a chat rule refuses empty
    // sends, not the engine).
    let empty = store.append(ConversationId(2), text(1, "")).unwrap();
    assert_eq!(
        store
            .get(ConversationId(2), empty.id)
            .unwrap()
            .unwrap()
            .content,
        ""
    );
    let big = "x".repeat(101);
    assert!(matches!(
        store.append(conv, text(1, &big)),
        Err(Error::MessageTooLarge {
            size: 101,
            limit: 100
        })
    ));
    // An attachment alone is a message.
    let m = store
        .append(conv, NewMessage::new(UserId(1), "").with_attachment("u"))
        .unwrap();
    assert_eq!(m.id, MessageId(1));
    assert!(matches!(
        store.before(conv, MessageId(0), 5),
        Err(Error::IdOutOfRange { .. })
    ));
    assert!(matches!(
        store.before(conv, MessageId(2), 5),
        Err(Error::IdOutOfRange { .. })
    ));
    assert!(matches!(
        store.after(conv, MessageId(2), 5),
        Err(Error::IdOutOfRange { .. })
    ));
    assert!(matches!(
        store.around(ConversationId(9), MessageId(1), 5),
        Err(Error::IdOutOfRange { .. })
    ));
    assert!(store.latest(ConversationId(9), 5).unwrap().is_empty());
    assert!(store.before(conv, MessageId(1), 5).unwrap().is_empty());
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for opts in [
        Options {
            memtable_bytes: 10,
            ..Options::default()
        },
        Options {
            compression: Compression::Zstd(0),
            ..Options::default()
        },
        Options {
            durability: Durability::Buffered {
                interval: Duration::ZERO,
            },
            ..Options::default()
        },
    ] {
        assert!(matches!(
            Store::open_with(dir.path(), opts),
            Err(Error::InvalidOption(_))
        ));
    }
}

#[test]
fn a_second_open_is_refused_while_the_first_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(Store::open(dir.path()), Err(Error::Locked { .. })));
    drop(store);
    Store::open(dir.path()).unwrap();
}

#[test]
fn foreign_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(Error::NotAStore { .. })
    ));
    let missing = dir.path().join("missing");
    let opts = Options {
        create_if_missing: false,
        ..Options::default()
    };
    assert!(matches!(
        Store::open_with(&missing, opts),
        Err(Error::Io { .. })
    ));
}

#[test]
fn closed_handles_refuse_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let other = store.clone();
    store.close().unwrap();
    assert!(matches!(
        other.append(ConversationId(1), text(1, "late")),
        Err(Error::Closed)
    ));
}

#[test]
fn kinds_and_compressions_round_trip() {
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd(3)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            compression,
            ..small_options()
        };
        let store = Store::open_with(dir.path(), opts.clone()).unwrap();
        let sys = store
            .append(
                ConversationId(1),
                text(0, "alice joined").with_kind(MessageKind::System),
            )
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let store = Store::open_with(dir.path(), opts).unwrap();
        assert_eq!(
            store.get(ConversationId(1), MessageId(1)).unwrap(),
            Some(sys)
        );
    }
}

#[test]
fn concurrent_writers_get_gapless_ids_and_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open_with(dir.path(), small_options()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                (0..200)
                    .map(|i| {
                        store
                            .append(ConversationId(i % 3), text(t, &format!("t{t} m{i}")))
                            .unwrap()
                            .id
                            .0
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = Vec::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    let stats = store.stats();
    assert_eq!(stats.messages_appended, 1600);
    assert!(stats.wal_syncs <= stats.write_groups + stats.flushes + 1);
    for c in 0..3 {
        let msgs = store.latest(ConversationId(c), 10_000).unwrap();
        let got: Vec<u64> = ids(&msgs);
        let want: Vec<u64> = (1..=msgs.len() as u64).collect();
        assert_eq!(got, want);
    }
    all.sort_unstable();
    assert_eq!(all.len(), 1600);
}

#[test]
fn a_commit_too_big_for_one_wal_record_is_refused_and_the_store_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_message_bytes: 16 << 20,
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), opts.clone()).unwrap();
    // 17 messages of 16 MiB sharing one buffer: over the 256 MiB record limit.
    let big = bytes::Bytes::from(vec![b'x'; 16 << 20]);
    let batch: Vec<_> = (0..17)
        .map(|_| (ConversationId(1), NewMessage::new(UserId(1), big.clone())))
        .collect();
    assert!(matches!(
        store.append_batch(batch),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(store.last_id(ConversationId(1)).unwrap(), MessageId(0));
    store.append(ConversationId(1), text(1, "small")).unwrap();
    drop(store);
    let store = Store::open_with(dir.path(), opts).unwrap();
    assert_eq!(store.last_id(ConversationId(1)).unwrap(), MessageId(1));
}

#[test]
fn close_releases_the_directory_even_while_clones_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let clone = store.clone();
    store.close().unwrap();
    let reopened = Store::open(dir.path()).unwrap();
    assert!(matches!(
        clone.append(ConversationId(1), text(1, "late")),
        Err(Error::Closed)
    ));
    reopened.append(ConversationId(1), text(1, "ok")).unwrap();
}

/// The segment files in a store directory.
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect()
}

/// Segments are read with positioned reads, not a memory map: a segment cut short under an
/// open store makes the reads that need the missing blocks fail with an error naming the file,
/// where a mapping would kill the process with SIGBUS.
#[test]
fn a_segment_truncated_under_an_open_store_gives_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        block_bytes: 1 << 10,
        ..Options::default()
    };
    {
        let store = Store::open_with(dir.path(), options()).unwrap();
        for i in 0..2000u64 {
            let text = format!("message {i} with enough words to fill several blocks of text");
            store
                .append(ConversationId(1), NewMessage::text(UserId(1), &text))
                .unwrap();
        }
        store.flush().unwrap();
        store.close().unwrap();
    }
    let store = Store::open_with(dir.path(), options()).unwrap();
    // A first read loads the segment's indexes (opening reads none); after the truncation
    // only the blocks are gone.
    assert_eq!(store.latest(ConversationId(1), 1).unwrap().len(), 1);
    let segment = segment_files(dir.path())
        .into_iter()
        .next()
        .expect("a segment file");
    let len = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len / 4)
        .unwrap();
    let err = store
        .before(ConversationId(1), MessageId(1500), 50)
        .expect_err("the blocks are gone");
    assert!(
        err.to_string().contains(&segment.display().to_string()),
        "the error names the file: {err}"
    );
    // Nothing panicked, the store is still usable for what it can read.
    assert_eq!(store.last_id(ConversationId(1)).unwrap(), MessageId(2000));
}

/// Codec byte of every message block of every segment in `dir`.
fn block_codecs(dir: &std::path::Path) -> Vec<u8> {
    use chatstore::format::segment::SegmentReader;
    let mut codecs = Vec::new();
    for seg in segment_files(dir) {
        let data = bytes::Bytes::from(std::fs::read(&seg).unwrap());
        let reader = SegmentReader::open(&seg, Arc::new(data.clone())).unwrap();
        for i in 0..reader.block_count() {
            let h = reader.block_handle(i).unwrap();
            // The codec byte sits before the block's crc (see docs/format-segment.md).
            codecs.push(data[(h.offset + u64::from(h.len)) as usize - 5]);
        }
    }
    codecs
}

fn wait_for_compaction(store: &Store) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store.stats().pending_compaction_bytes > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "compaction never caught up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A large level 1 is not rewritten for a small level 0, but a store at rest still rewrites
/// its raw flushed segments in zstd, within level 0; a later rewrite takes only the newer
/// segments, and reads, edits and ids stay right across them and across a reopen.
#[test]
fn a_large_store_at_rest_rewrites_level0_within_level0() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        durability: Durability::Buffered {
            interval: Duration::from_millis(50),
        },
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), opts()).unwrap();
    // Varied enough that level 1 stays several times larger than a raw level 0 of 1000.
    let text = |i: u64| {
        let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        format!(
            "message {i}: meet at {:x} by {:x} at {}",
            h,
            h >> 17,
            i % 24
        )
    };
    let mut expected: std::collections::BTreeMap<(u64, u64), String> = Default::default();
    let write = |store: &Store,
                 expected: &mut std::collections::BTreeMap<(u64, u64), String>,
                 range: std::ops::Range<u64>| {
        for i in range {
            let conv = i % 40 + 1;
            let m = store
                .append(
                    ConversationId(conv),
                    NewMessage::text(UserId(conv), &text(i)),
                )
                .unwrap();
            expected.insert((conv, m.id.0), text(i));
        }
    };
    write(&store, &mut expected, 0..40_000);
    store.compact().unwrap();
    assert_eq!(store.stats().segments_per_level[0], 0);

    // A small raw level-0 segment over a big level 1.
    write(&store, &mut expected, 40_000..41_000);
    store.flush().unwrap();
    assert!(block_codecs(dir.path()).contains(&0));
    wait_for_compaction(&store);
    assert_eq!(store.stats().segments_per_level[0], 1);
    assert!(block_codecs(dir.path()).iter().all(|c| matches!(c, 2 | 3)));

    // An edit of a message in the rewritten segment, then a newer raw segment: the next
    // rewrite takes only that one, and the edit (newer) still wins over the old content.
    let edited = store
        .edit(ConversationId(1), MessageId(1001), "edited")
        .unwrap();
    expected.insert((1, 1001), "edited".to_string());
    write(&store, &mut expected, 41_000..42_000);
    store.flush().unwrap();
    wait_for_compaction(&store);
    assert_eq!(store.stats().segments_per_level[0], 2);
    assert!(block_codecs(dir.path()).iter().all(|c| matches!(c, 2 | 3)));

    let check = |store: &Store| {
        for conv in 1..=40u64 {
            let all = store
                .after(ConversationId(conv), MessageId(0), usize::MAX)
                .unwrap();
            let want: Vec<(u64, String)> = expected
                .range((conv, 0)..(conv + 1, 0))
                .map(|(&(_, id), t)| (id, t.clone()))
                .collect();
            let got: Vec<(u64, String)> = all
                .iter()
                .map(|m| (m.id.0, String::from_utf8(m.content.to_vec()).unwrap()))
                .collect();
            assert_eq!(got, want, "conversation {conv}");
        }
        let m = store
            .get(ConversationId(1), MessageId(1001))
            .unwrap()
            .unwrap();
        assert_eq!(m.edited_ms, edited.edited_ms);
    };
    check(&store);
    store.close().unwrap();
    let store = Store::open_with(dir.path(), opts()).unwrap();
    check(&store);
    let next = store
        .append(
            ConversationId(1),
            NewMessage::text(UserId(1), "after reopen"),
        )
        .unwrap();
    assert_eq!(
        next.id,
        MessageId(expected.range((1, 0)..(2, 0)).count() as u64 + 1)
    );
}

/// Flushes write level 0 with the fast codec (none); a small store at rest is then folded into
/// level 1 with zstd even though level 0 is below its trigger, so it ends up compact.
#[test]
fn a_small_store_at_rest_ends_up_in_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..3000u64 {
        let text = format!("message {i}: see you at the station at {} tonight", i % 24);
        store
            .append(
                ConversationId(i % 40 + 1),
                NewMessage::text(UserId(i % 9), &text),
            )
            .unwrap();
    }
    store.flush().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while store
        .stats()
        .segments_per_level
        .first()
        .copied()
        .unwrap_or(0)
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "level 0 was never folded in"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(store.stats().pending_compaction_bytes, 0);
    store.close().unwrap();
    let codecs = block_codecs(dir.path());
    assert!(!codecs.is_empty());
    assert!(
        codecs.iter().all(|c| matches!(c, 2 | 3)),
        "not all blocks are zstd: {codecs:?}"
    );
}

#[test]
fn a_bad_flush_codec_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_with(
        dir.path(),
        Options {
            flush_compression: chatstore::Compression::Zstd(0),
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, chatstore::Error::InvalidOption(_)), "{err}");
}

/// The WAL files (name, bytes) in `dir`.
fn wal_contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// Retired WAL files kept for reuse cost disk while the store runs; a closed store keeps none,
/// and its logs end at their last record (a reused log's old records are cut off), so the
/// next open reads only what it replays.
#[test]
fn a_closed_store_keeps_no_retired_log_and_its_logs_end_at_their_records() {
    use chatstore::format::wal::{LogReader, ReadStep};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        Options {
            memtable_bytes: 8 << 10,
            ..Options::default()
        },
    )
    .unwrap();
    let conv = ConversationId(3);
    let mut reused_at_flush = 0;
    for round in 0..200 {
        store
            .append_batch(
                (0..20)
                    .map(|i| (conv, text(1, &format!("round {round} message {i:030}"))))
                    .collect(),
            )
            .unwrap();
        if round % 10 == 9 {
            store.flush().unwrap();
            reused_at_flush = store.stats().wal_files_recycled;
        }
    }
    assert!(reused_at_flush > 0, "no log was reused");
    let open_wals = wal_contents(dir.path()).len();
    assert!(open_wals >= 2, "the kept files: {open_wals}");
    store.close().unwrap();
    let closed = wal_contents(dir.path());
    assert!(closed.len() < open_wals, "{} of {open_wals}", closed.len());
    for (name, data) in &closed {
        let number: u64 = name.trim_end_matches(".wal").parse().unwrap();
        let mut reader = LogReader::new(data, number);
        let end = loop {
            match reader.next_step() {
                ReadStep::Record { .. } => continue,
                end => break end,
            }
        };
        assert_eq!(
            end,
            ReadStep::End {
                offset: data.len() as u64
            },
            "{name}"
        );
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.latest(conv, 1).unwrap()[0].id.0, 200 * 20);
}
