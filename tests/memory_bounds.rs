//! Memory the engine holds stays within what its options promise while background work runs.

use std::time::Duration;

use chatstore::{ConversationId, Durability, NewMessage, Options, Stats, Store, UserId};

/// A long compaction must not keep flushed memtables alive: the memtables held at any moment
/// are the active one, the frozen ones waiting for flush, and what a short read holds.
#[test]
fn memtables_held_stay_within_the_configured_bound_during_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let memtable_bytes = 256 << 10;
    let max_frozen = 2;
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered {
                interval: Duration::from_millis(100),
            },
            memtable_bytes,
            max_frozen_memtables: max_frozen,
            l0_compaction_trigger: 2,
            level_base_bytes: 64 << 20,
            ..Options::default()
        },
    )
    .unwrap();
    let text =
        "a message of a hundred bytes or so, words and more words, to be stored and read back.";
    let batch_bytes = 100 * (text.len() + 512);
    // Active + frozen, each at most one commit over its limit, plus one flushed memtable per
    // compaction thread that a short read may still hold (each thread of a merge reads
    // retention settings from the current version and can be preempted while it does). A
    // compaction that kept flushed memtables alive for its whole run would hold several.
    let threads = Options::default().compaction_threads;
    let bound = ((1 + max_frozen + threads) * (memtable_bytes + batch_bytes)) as u64;
    let mut worst = 0;
    let mut compactions_seen = false;
    for round in 0..1500u64 {
        let batch: Vec<_> = (0..100u64)
            .map(|i| {
                let conv = ConversationId((round * 100 + i) % 300 + 1);
                (conv, NewMessage::text(UserId(i % 7 + 1), text))
            })
            .collect();
        store.append_batch(batch).unwrap();
        let s = store.stats();
        worst = worst.max(s.memtable_bytes_held);
        compactions_seen |= s.compactions > 0;
    }
    assert!(compactions_seen, "the workload must run compactions");
    assert!(
        worst <= bound,
        "memtables held peaked at {worst} bytes, over the bound of {bound}"
    );
    let s = store.stats();
    assert!(s.memtable_bytes_held >= s.memtable_bytes + s.frozen_memtable_bytes);
    store.close().unwrap();
}

/// Memtables, segment indexes and the block cache share `memory_budget_bytes`: the cache gets
/// what the others leave, shrinks while memtables wait for their flush, grows back after it,
/// and never holds more than it is given.
#[test]
fn the_block_cache_gets_what_memtables_and_indexes_leave_of_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let budget: u64 = 4 << 20;
    let memtable_bytes = 512 << 10;
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered {
                interval: Duration::from_millis(100),
            },
            memory_budget_bytes: budget as usize,
            memtable_bytes,
            max_frozen_memtables: 2,
            background_compaction: false,
            ..Options::default()
        },
    )
    .unwrap();
    let fresh = store.stats();
    assert_eq!(fresh.memory_budget_bytes, budget);
    assert_eq!(
        fresh.block_cache_capacity,
        budget - memtable_bytes as u64 - fresh.memory_index_bytes - budget / 8,
        "an empty store pays for its active memtable at full size, and for its last-id cache"
    );

    let text = "a message of a hundred bytes or so, words and more words, to be stored and read.";
    let mut least_capacity = u64::MAX;
    for round in 0..120u64 {
        let batch: Vec<_> = (0..100u64)
            .map(|i| {
                let conv = ConversationId((round * 100 + i) % 500 + 1);
                (conv, NewMessage::text(UserId(i % 7 + 1), text))
            })
            .collect();
        store.append_batch(batch).unwrap();
        let s = store.stats();
        least_capacity = least_capacity.min(s.block_cache_capacity);
        // A memtable passes its size by at most the commit that fills it, after the charge
        // was taken.
        let one_commit = 100 * (text.len() as u64 + 512);
        assert!(
            // (The block cache's floor is a sixteenth of the budget.)
            s.memory_charged_bytes <= budget + one_commit || s.block_cache_capacity == budget / 16,
            "over budget with room left to shrink the cache: {s:?}"
        );
    }
    store.flush().unwrap();
    let flushed = store.stats();
    assert!(
        flushed.segments >= 4,
        "the workload must flush: {flushed:?}"
    );
    assert!(flushed.memory_index_bytes > 0);
    assert_eq!(
        flushed.block_cache_capacity,
        (budget - memtable_bytes as u64 - flushed.memory_index_bytes - budget / 8) / 4096 * 4096,
        "once flushed, only the active memtable, the indexes and the last-id cache are charged \
         (the cache's capacity rounded down to 4 KiB)"
    );
    assert!(
        least_capacity < flushed.block_cache_capacity,
        "frozen memtables waiting for their flush must shrink the cache \
         (least {least_capacity}, after the flush {})",
        flushed.block_cache_capacity
    );

    // Reads fill the cache up to what it is given, never beyond.
    for conv in 1..=500u64 {
        let got = store.latest(ConversationId(conv), 50).unwrap();
        assert!(!got.is_empty());
        let s = store.stats();
        assert!(
            s.block_cache_bytes <= s.block_cache_capacity,
            "the cache holds {} bytes, over its {} capacity",
            s.block_cache_bytes,
            s.block_cache_capacity
        );
    }
    assert!(store.stats().block_cache_misses > 0);
    store.close().unwrap();
}

/// A budget of 8 MiB with 1 MiB memtables, compacted only when asked.
fn eight_mib_budget_no_background_compaction() -> Options {
    Options {
        memory_budget_bytes: 8 << 20,
        memtable_bytes: 1 << 20,
        background_compaction: false,
        ..Options::default()
    }
}

/// Appends one message to each of `convs` and flushes, `rounds` times: a segment each.
fn append_rounds_and_flush(
    store: &Store,
    rounds: u64,
    convs: impl Iterator<Item = ConversationId> + Clone,
) {
    for round in 0..rounds {
        let batch: Vec<_> = convs
            .clone()
            .map(|conv| {
                let text = format!("message {round} of conversation {}, some words", conv.0);
                (conv, NewMessage::text(UserId(conv.0 % 13 + 1), &text))
            })
            .collect();
        store.append_batch(batch).unwrap();
        store.flush().unwrap();
    }
}

/// Asserts that `stats` charge the whole `budget` (the cache takes what the rest leaves, its
/// capacity rounded down to 4 KiB) and no more.
fn assert_within_budget(stats: &Stats, budget: u64) {
    assert!(
        stats.memory_charged_bytes <= budget && stats.memory_charged_bytes > budget - 4096,
        "{} bytes charged, budget {budget}",
        stats.memory_charged_bytes
    );
}

/// Asserts that `stats` charge less than a quarter of `conv_index_bytes`, the bytes the
/// conversation indexes of the segments take in their files: footers and filters only.
fn assert_indexes_not_held(stats: &Stats, conv_index_bytes: u64, after: &str) {
    assert!(
        stats.memory_index_bytes < conv_index_bytes / 4,
        "{} bytes of indexes resident after {after}, {conv_index_bytes} in the files",
        stats.memory_index_bytes
    );
}

/// Asserts that the indexes `stats` charge are at most those kept whole (an eighth of
/// `budget`) plus footers, filters and partition tables (an eighth of `conv_index_bytes`),
/// and less than the indexes in the files: the rest is read a partition at a time.
fn assert_indexes_within_pins(stats: &Stats, budget: u64, conv_index_bytes: u64, after: &str) {
    assert!(
        stats.memory_index_bytes <= budget / 8 + conv_index_bytes / 8
            && stats.memory_index_bytes < conv_index_bytes,
        "{} bytes of indexes resident after {after}, {conv_index_bytes} in the files",
        stats.memory_index_bytes
    );
}

/// Segments keep their block and conversation indexes whole only within an eighth of the
/// memory budget; past it a segment keeps a partition table (a first key and a checksum per
/// 128 entries) and lookups read the partition they need through the block cache, inside the
/// budget. Dozens of level-0 segments wait for compaction in a store that ingests without
/// pause, each indexing most conversations: holding every index whole from its first lookup
/// on made them the largest part of the process, beyond any budget.
#[test]
fn segment_indexes_are_kept_whole_only_within_a_share_of_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    // Six segments of 12 000 conversations: ~2 MiB of indexes, over the 1 MiB share.
    let convs = 12_000u64;
    let store = Store::open_with(dir.path(), eight_mib_budget_no_background_compaction()).unwrap();
    append_rounds_and_flush(&store, 6, (1..=convs).map(ConversationId));
    let flushed = store.stats();
    assert!(flushed.segments >= 6, "{} segments", flushed.segments);
    let conv_index_bytes = 24 * convs * flushed.segments as u64;
    assert_indexes_not_held(&flushed, conv_index_bytes, "the flushes");
    // Appends find each conversation's last id (the last-id cache holds them all here).
    let next = store
        .append(ConversationId(5), NewMessage::text(UserId(1), "one more"))
        .unwrap();
    assert_eq!(next.id.0, 7);
    // Every conversation read and looked up.
    for conv in (1..=convs).map(ConversationId) {
        let want = if conv == ConversationId(5) { 7 } else { 6 };
        assert_eq!(store.latest(conv, 10).unwrap().len(), want);
        assert_eq!(store.last_id(conv).unwrap().0, want as u64);
    }
    let read = store.stats();
    assert_indexes_within_pins(
        &read,
        8 << 20,
        conv_index_bytes,
        "reading every conversation",
    );
    assert_within_budget(&read, 8 << 20);
    store.close().unwrap();
}

/// Below level 0 a conversation's id range points at one segment per level; a conversation
/// in that range but not in the segment (a conversation's first message, which the writer
/// looks up) is turned away by the segment's conversation filter, without its conversation
/// index being read and kept.
#[test]
fn a_conversation_a_compacted_segment_does_not_hold_is_looked_up_without_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let convs = 4_000u64;
    let store = Store::open_with(dir.path(), eight_mib_budget_no_background_compaction()).unwrap();
    // Even conversations only: the odd ones lie inside the segments' ranges.
    append_rounds_and_flush(&store, 3, (1..=convs).map(|c| ConversationId(2 * c)));
    store.compact().unwrap();
    let compacted = store.stats();
    assert_eq!(compacted.segments_per_level.first().copied(), Some(0));
    let conv_index_bytes = 24 * convs;
    assert_indexes_not_held(&compacted, conv_index_bytes, "the compaction");
    // A new conversation's first message: its last id is looked up in the segment whose
    // range holds it.
    let first = store
        .append(ConversationId(2_001), NewMessage::text(UserId(1), "hello"))
        .unwrap();
    assert_eq!(first.id.0, 1);
    assert_eq!(store.last_id(ConversationId(3_001)).unwrap().0, 0);
    let looked_up = store.stats();
    assert_indexes_not_held(
        &looked_up,
        conv_index_bytes,
        "looking up conversations the segments do not hold",
    );
    // One it holds reads the index (kept whole: it fits the share of the budget).
    assert_eq!(store.last_id(ConversationId(2_000)).unwrap().0, 3);
    assert_indexes_within_pins(&store.stats(), 8 << 20, 2 * conv_index_bytes, "a lookup");
    store.close().unwrap();
}

/// Opening a store reads no segment's block or conversation index; the first lookup in a
/// segment reads its indexes once, to check them, and keeps them whole within the share of
/// the budget or else keeps their partition table alone.
#[test]
fn reopening_reads_segment_indexes_at_their_first_lookup() {
    let dir = tempfile::tempdir().unwrap();
    // Six level-0 segments stay as they are: no compaction reads them.
    let options = eight_mib_budget_no_background_compaction;
    let convs = 12_000u64;
    let store = Store::open_with(dir.path(), options()).unwrap();
    append_rounds_and_flush(&store, 6, (1..=convs).map(ConversationId));
    let loaded = store.stats();
    assert!(loaded.segments >= 2, "{} segments", loaded.segments);
    store.close().unwrap();

    let store = Store::open_with(dir.path(), options()).unwrap();
    let opened = store.stats();
    assert_eq!(opened.segments, loaded.segments);
    // Footers and state indexes only: the conversation indexes alone hold 24 bytes per
    // conversation of each segment.
    let conv_index_bytes = 24 * convs * opened.segments as u64;
    assert_indexes_not_held(&opened, conv_index_bytes, "the open");
    for conv in (1..=convs).step_by(7).map(ConversationId) {
        assert_eq!(store.latest(conv, 10).unwrap().len(), 6);
        assert_eq!(store.last_id(conv).unwrap().0, 6);
    }
    let read = store.stats();
    assert!(
        read.memory_index_bytes > opened.memory_index_bytes,
        "the partition tables and filters built are charged: {} then {}",
        opened.memory_index_bytes,
        read.memory_index_bytes
    );
    assert_indexes_within_pins(&read, 8 << 20, conv_index_bytes, "reads after the open");
    assert_within_budget(&opened, 8 << 20);
    assert_within_budget(&read, 8 << 20);
    store.close().unwrap();
}

/// Stall time is split by cause: without background compaction the write controller never
/// delays anyone, so every stall is a wait for the flush (memory), and the parts never add up
/// to more than the whole.
#[test]
fn write_stalls_are_told_apart_by_cause() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered {
                interval: Duration::from_millis(100),
            },
            memtable_bytes: 32 << 10,
            max_frozen_memtables: 1,
            background_compaction: false,
            ..Options::default()
        },
    )
    .unwrap();
    let text = "a message long enough that a few hundred of them fill a small memtable";
    for round in 0..200u64 {
        let batch: Vec<_> = (0..500u64)
            .map(|i| {
                let conv = ConversationId((round * 500 + i) % 97 + 1);
                (conv, NewMessage::text(UserId(i % 5 + 1), text))
            })
            .collect();
        store.append_batch(batch).unwrap();
    }
    let s = store.stats();
    assert!(s.flushes > 10, "{} flushes", s.flushes);
    assert_eq!(s.write_stall_level0_micros, 0);
    assert!(s.write_stall_flush_micros <= s.write_stall_micros);
    if s.write_stalls > 0 {
        assert!(s.write_stall_flush_micros > 0, "{s:?}");
    }
    store.close().unwrap();
}

/// The write leader keeps the last ids of the conversations it wrote (charged to the budget),
/// so appends after a flush do not search the segments for them; a reopened store searches
/// once per conversation, then answers from the cache.
#[test]
fn last_ids_are_searched_once_per_conversation_and_charged_to_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let options = eight_mib_budget_no_background_compaction;
    let convs = 2_000u64;
    let append_to_all = |store: &Store| {
        let batch: Vec<_> = (1..=convs)
            .map(|c| {
                (
                    ConversationId(c),
                    NewMessage::new(UserId(1), bytes::Bytes::from_static(b"hi")),
                )
            })
            .collect();
        store.append_batch(batch).unwrap();
    };
    let store = Store::open_with(dir.path(), options()).unwrap();
    let empty = store.stats();
    // An eighth of the budget, taken from what the block cache gets.
    assert_eq!(
        empty.block_cache_capacity,
        (8 << 20) - (1 << 20) - (1 << 20)
    );
    assert_eq!(empty.memory_charged_bytes, 8 << 20);
    append_to_all(&store);
    let first = store.stats().last_id_searches;
    assert_eq!(first, convs, "every conversation is new: each one searched");
    store.flush().unwrap();
    append_to_all(&store);
    assert_eq!(
        store.stats().last_id_searches,
        first,
        "after the flush the cache still answers"
    );
    store.close().unwrap();

    let store = Store::open_with(dir.path(), options()).unwrap();
    append_to_all(&store);
    append_to_all(&store);
    assert_eq!(
        store.stats().last_id_searches,
        convs,
        "once per conversation"
    );
    assert_eq!(store.last_id(ConversationId(convs)).unwrap().0, 4);
    store.close().unwrap();
}

/// A file system that stops every segment's final sync until the test lets it go, so the
/// test can look at the store while a flush is writing.
mod gated {
    use std::io;
    use std::path::Path;
    use std::sync::mpsc::{Receiver, SyncSender};
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use chatstore::fs::{DirLock, FileSystem, RandomAccessFile, StdFileSystem, WritableFile};

    #[derive(Debug)]
    pub struct GatedFs {
        /// Told when a segment's sync is reached; the sync waits for a message on `go`.
        pub reached: SyncSender<()>,
        pub go: Arc<Mutex<Receiver<()>>>,
    }

    struct GatedFile {
        inner: Box<dyn WritableFile>,
        reached: SyncSender<()>,
        go: Arc<Mutex<Receiver<()>>>,
    }

    impl WritableFile for GatedFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.inner.write_all(buf)
        }
        fn sync(&mut self) -> io::Result<()> {
            let _ = self.reached.try_send(());
            let _ = self.go.lock().map(|rx| rx.recv());
            self.inner.sync()
        }
    }

    impl FileSystem for GatedFs {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            StdFileSystem.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            StdFileSystem.list(dir)
        }
        fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
            let inner = StdFileSystem.create(path)?;
            if path.extension().is_some_and(|e| e == "seg") {
                Ok(Box::new(GatedFile {
                    inner,
                    reached: self.reached.clone(),
                    go: Arc::clone(&self.go),
                }))
            } else {
                Ok(inner)
            }
        }
        fn read(&self, path: &Path) -> io::Result<Bytes> {
            StdFileSystem.read(path)
        }
        fn open_random_access(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
            StdFileSystem.open_random_access(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            StdFileSystem.rename(from, to)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            StdFileSystem.remove(path)
        }
        fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
            StdFileSystem.truncate(path, len)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            StdFileSystem.sync_dir(dir)
        }
        fn sync_file(&self, path: &Path) -> io::Result<()> {
            StdFileSystem.sync_file(path)
        }
        fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
            StdFileSystem.try_lock(path)
        }
        fn exists(&self, path: &Path) -> bool {
            StdFileSystem.exists(path)
        }
    }
}

/// A flush under way charges its working memory to the budget (the block cache gives way to
/// it), and gives it back when it ends.
#[test]
fn a_flush_under_way_is_charged_to_the_budget_and_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let (reached_tx, reached) = std::sync::mpsc::sync_channel(16);
    let (go, go_rx) = std::sync::mpsc::channel();
    let fs = gated::GatedFs {
        reached: reached_tx,
        go: std::sync::Arc::new(std::sync::Mutex::new(go_rx)),
    };
    let store = std::sync::Arc::new(
        Store::open_with(
            dir.path(),
            Options {
                fs: std::sync::Arc::new(fs),
                l0_compaction_trigger: 100,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    let before: Stats = store.stats();
    assert_eq!(before.memory_working_bytes, 0);
    store
        .append(ConversationId(1), NewMessage::text(UserId(1), "hello"))
        .unwrap();
    let flusher = {
        let store = std::sync::Arc::clone(&store);
        std::thread::spawn(move || store.flush())
    };
    reached
        .recv_timeout(Duration::from_secs(60))
        .expect("the flush reaches its segment's sync");
    let during = store.stats();
    assert!(
        during.memory_working_bytes >= 1 << 20,
        "working memory while the flush writes: {}",
        during.memory_working_bytes
    );
    // The frozen memtable (one message) is charged too while it is written.
    let gave_way = before.block_cache_capacity - during.block_cache_capacity;
    assert!(
        gave_way >= during.memory_working_bytes
            && gave_way <= during.memory_working_bytes + (64 << 10),
        "the cache gives way to the flush's working memory: {} then {}, working {}",
        before.block_cache_capacity,
        during.block_cache_capacity,
        during.memory_working_bytes
    );
    go.send(()).unwrap();
    flusher.join().unwrap().unwrap();
    let after = store.stats();
    assert_eq!(after.memory_working_bytes, 0);
    assert_eq!(after.memtable_bytes, 0);
    assert!(
        // Capacities are multiples of 4 KiB.
        after.block_cache_capacity + after.memory_index_bytes + 4096 >= before.block_cache_capacity,
        "the cache gets the working memory back: {} then {} (indexes {})",
        before.block_cache_capacity,
        after.block_cache_capacity,
        after.memory_index_bytes
    );
    drop(go);
}
