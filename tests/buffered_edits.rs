//! Buffered durability: compaction removes a message's original content from disk only for
//! edits and deletes that are themselves on disk. An edit acknowledged but not yet synced
//! lives in the memtable and the unsynced WAL tail; a power cut may take it back, and then the
//! original must still be there to read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chatstore::fs::fault::{CrashMode, FaultFs};
use chatstore::fs::FileSystem;
use chatstore::{
    Compression, ConversationId, Durability, MessageId, MessageKind, NewMessage, Options, Store,
    UserId,
};

const DIR: &str = "/chat";
const CONV: ConversationId = ConversationId(1);
const OTHER: ConversationId = ConversationId(2);
const A: UserId = UserId(1);

fn options(fs: &FaultFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        // The WAL is synced only when asked (or at a flush's switch of WAL files).
        durability: Durability::Buffered {
            interval: Duration::from_secs(3600),
        },
        background_compaction: false,
        l0_compaction_trigger: 2,
        compression: Compression::None,
        dictionary_bytes: 0,
        ..Options::default()
    }
}

/// Whether any file of the store whose name ends in `suffix` holds `needle`.
fn files_hold(fs: &FaultFs, suffix: &str, needle: &[u8]) -> bool {
    fs.list(Path::new(DIR)).unwrap().iter().any(|name| {
        let data = fs.read(&Path::new(DIR).join(name)).unwrap_or_default();
        name.ends_with(suffix) && data.windows(needle.len()).any(|w| w == needle)
    })
}

/// Two level-0 segments (so a compaction is due), the first holding message 1 of `CONV`.
fn two_flushed_segments(store: &Store) {
    store
        .append(CONV, NewMessage::text(A, "ORIGINAL-ONE"))
        .unwrap();
    store
        .append(CONV, NewMessage::text(A, "ORIGINAL-TWO"))
        .unwrap();
    store.flush().unwrap();
    store.append(OTHER, NewMessage::text(A, "filler")).unwrap();
    store.flush().unwrap();
    assert_eq!(store.stats().segments_per_level[0], 2);
}

#[test]
fn an_unsynced_edit_or_delete_never_strips_the_durable_original() {
    let fs = FaultFs::new();
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    two_flushed_segments(&store);
    // Acknowledged, in the memtable, not yet synced.
    store.edit(CONV, MessageId(1), "EDITED-ONE").unwrap();
    store.delete(CONV, MessageId(2)).unwrap();
    assert!(
        store.compact_step().unwrap(),
        "level 0 is compacted into level 1"
    );
    assert_eq!(store.stats().segments_per_level[0], 0);
    // The live store reads the edits either way.
    assert_eq!(
        store.get(CONV, MessageId(1)).unwrap().unwrap().text(),
        Some("EDITED-ONE")
    );

    let fs = fs.power_cut_with(CrashMode::LoseUnsynced);
    drop(store);
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    let one = store.get(CONV, MessageId(1)).unwrap().unwrap();
    assert!(
        matches!(one.text(), Some("ORIGINAL-ONE") | Some("EDITED-ONE")),
        "message 1 reads {one:?}"
    );
    let two = store.get(CONV, MessageId(2)).unwrap().unwrap();
    assert!(
        (two.kind == MessageKind::Deleted && two.edited_ms.is_some())
            || two.text() == Some("ORIGINAL-TWO"),
        "message 2 reads {two:?}"
    );
    // What the power cut kept is what every later compaction keeps.
    let before = store.latest(CONV, 10).unwrap();
    store.compact().unwrap();
    assert_eq!(store.latest(CONV, 10).unwrap(), before);
    assert!(store.verify().unwrap().is_ok());
}

#[test]
fn edits_on_disk_are_purged_by_compaction_and_survive_a_power_cut() {
    let fs = FaultFs::new();
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    two_flushed_segments(&store);
    store.edit(CONV, MessageId(1), "EDITED-ONE").unwrap();
    store.delete(CONV, MessageId(2)).unwrap();
    // The flush puts the edit records in a segment: durable, so compaction may apply them.
    store.flush().unwrap();
    while store.compact_step().unwrap() {}
    assert!(!files_hold(&fs, ".seg", b"ORIGINAL-ONE"));
    assert!(!files_hold(&fs, ".seg", b"ORIGINAL-TWO"));
    // A WAL file kept for reuse may still hold the original records until a rotation reuses
    // it and the next one cuts it to its own records (whether the first flush retired its
    // log before the second rotation is a race); `Store::compact` promises them gone.
    store.compact().unwrap();
    assert!(!files_hold(&fs, "", b"ORIGINAL-ONE"));
    assert!(!files_hold(&fs, "", b"ORIGINAL-TWO"));

    let fs = fs.power_cut_with(CrashMode::LoseUnsynced);
    drop(store);
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    let got = store.latest(CONV, 10).unwrap();
    assert_eq!(got[0].text(), Some("EDITED-ONE"));
    assert_eq!(got[1].kind, MessageKind::Deleted);
    assert!(got[1].content.is_empty());
}

/// The same for retention: a time-to-live still only in the memtable drops nothing from disk,
/// and a retention removed in the memtable stops drops at once.
#[test]
fn retention_drops_only_what_expired_under_the_policy_on_disk_and_the_latest() {
    let fs = FaultFs::new();
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    two_flushed_segments(&store);
    store
        .set_retention(CONV, Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(store.latest(CONV, 10).unwrap().is_empty());
    assert!(store.compact_step().unwrap());
    let image = fs.crash_copy(CrashMode::LoseUnsynced);
    let recovered = Store::open_with(DIR, options(&image)).unwrap();
    assert_eq!(
        recovered.latest(CONV, 10).unwrap().len(),
        2,
        "the retention never reached the disk, so neither did its effect"
    );
    drop(recovered);

    // On disk now, then removed (in the memtable only): nothing may be dropped.
    store.flush().unwrap();
    store.append(OTHER, NewMessage::text(A, "more")).unwrap();
    store.flush().unwrap();
    store.set_retention(CONV, None).unwrap();
    assert_eq!(store.stats().segments_per_level[0], 2);
    assert!(store.compact_step().unwrap());
    assert_eq!(store.latest(CONV, 10).unwrap().len(), 2);
    store.compact().unwrap();
    assert_eq!(store.latest(CONV, 10).unwrap().len(), 2);
}
