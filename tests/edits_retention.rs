//! Edits, deletes, reactions and retention: what reads return, and what compaction leaves on
//! disk.

use std::path::Path;
use std::time::Duration;

use chatstore::{
    ChatError, ChatOptions, ChatStore, ConversationId, Error, MessageId, MessageKind, NewMessage,
    Options, Store, UserId,
};

const A: UserId = UserId(1);
const B: UserId = UserId(2);
const C: UserId = UserId(3);

fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let bytes = std::fs::read(e.unwrap().path()).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle)
    })
}

fn opts() -> Options {
    Options {
        compression: chatstore::Compression::None,
        background_compaction: false,
        ..Options::default()
    }
}

/// Retired WAL files are reused for newer logs (`Options::recycled_wal_files`), and a reused
/// file holds the records of its earlier use past its own until it is sealed. Whatever the
/// rotations did before, a deleted message's text is in no file once `compact` returns: not
/// in a log kept for reuse, nor in the old records of the log being written.
#[test]
fn a_deleted_message_is_in_no_reused_log_after_compaction() {
    let cases = [0usize, 30, 60, 90, 120, 150, 200, 260]
        .into_iter()
        .flat_map(|filler| [(filler, false), (filler, true)]);
    for (filler, flushed) in cases {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            memtable_bytes: 4 << 10,
            ..opts()
        };
        let store = Store::open_with(dir.path(), opts).unwrap();
        let conv = ConversationId(9);
        // Logs first, so that the secret lands in a file that is later reused.
        for i in 0..60 {
            store
                .append(
                    ConversationId(1),
                    NewMessage::text(B, &format!("warm-up {i:040}")),
                )
                .unwrap();
        }
        let secret = store
            .append(conv, NewMessage::text(A, "SECRET-IN-A-RECYCLED-LOG"))
            .unwrap();
        for i in 0..filler {
            store
                .append(
                    ConversationId(2),
                    NewMessage::text(B, &format!("filler {i:040}")),
                )
                .unwrap();
        }
        store.delete(conv, secret.id).unwrap();
        if flushed {
            // The log after this flush may be a reused file, and `compact` then finds the
            // memtable empty: it has nothing to flush, and no reason to start a new log.
            store.flush().unwrap();
        }
        store.compact().unwrap();
        assert!(
            !files_contain(dir.path(), b"SECRET-IN-A-RECYCLED-LOG"),
            "filler {filler}, flushed {flushed}: the deleted text is still on disk (logs reused: {})",
            store.stats().wal_files_recycled
        );
        assert!(filler < 120 || store.stats().wal_files_recycled > 0);
    }
}

#[test]
fn edits_and_deletes_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts()).unwrap();
    let conv = ConversationId(1);
    let m1 = store.append(conv, NewMessage::text(A, "helo")).unwrap();
    store.append(conv, NewMessage::text(B, "hi")).unwrap();

    let edited = store.edit(conv, m1.id, "hello").unwrap();
    assert_eq!(edited.text(), Some("hello"));
    assert!(edited.edited_ms.is_some());
    let read = store.get(conv, m1.id).unwrap().unwrap();
    assert_eq!(read.text(), Some("hello"));
    assert_eq!(read.edited_ms, edited.edited_ms);
    assert_eq!(read.timestamp_ms, m1.timestamp_ms, "keeps its send time");

    // Who may edit is a chat rule (`ChatStore::edit`, below): the raw store records any edit.
    assert!(matches!(
        store.edit(conv, MessageId(9), "x"),
        Err(Error::IdOutOfRange { .. })
    ));
    // The raw store takes an edit to empty content like any other bytes (another store;
    // this one's reads below count its messages).
    let other = ConversationId(99);
    let m = store.append(other, NewMessage::text(A, "x")).unwrap();
    assert_eq!(store.edit(other, m.id, "").unwrap().content, "");

    let deleted = store.delete(conv, m1.id).unwrap();
    assert_eq!(deleted.kind, MessageKind::Deleted);
    let read = store.latest(conv, 10).unwrap();
    assert_eq!(read[0].kind, MessageKind::Deleted);
    assert!(read[0].content.is_empty());
    assert_eq!((read[0].id, read[0].sender), (m1.id, A));
    assert_eq!(read[1].text(), Some("hi"));
    assert!(matches!(
        store.edit(conv, m1.id, "resurrect"),
        Err(Error::InvalidArgument(_))
    ));
    // Survives flush and reopen.
    store.flush().unwrap();
    drop(store);
    let store = Store::open_with(dir.path(), opts()).unwrap();
    assert_eq!(
        store.get(conv, m1.id).unwrap().unwrap().kind,
        MessageKind::Deleted
    );
}

#[test]
fn compaction_removes_deleted_and_replaced_content_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), opts()).unwrap();
    let conv = ConversationId(5);
    let secret = store
        .append(
            conv,
            NewMessage::text(A, "the launch code is 0xDEADBEEF-SECRET"),
        )
        .unwrap();
    let typo = store
        .append(conv, NewMessage::text(A, "meet at the OLD-PLACE-TYPO"))
        .unwrap();
    store.append(conv, NewMessage::text(B, "ok")).unwrap();
    store.flush().unwrap();
    assert!(files_contain(dir.path(), b"0xDEADBEEF-SECRET"));
    store.delete(conv, secret.id).unwrap();
    store.edit(conv, typo.id, "meet at the new place").unwrap();
    store.compact().unwrap();
    assert!(!files_contain(dir.path(), b"0xDEADBEEF-SECRET"));
    assert!(!files_contain(dir.path(), b"OLD-PLACE-TYPO"));
    let all = store.latest(conv, 10).unwrap();
    assert_eq!(all[0].kind, MessageKind::Deleted);
    assert_eq!(all[1].text(), Some("meet at the new place"));
    assert_eq!(all[2].text(), Some("ok"));
    drop(store);
    let store = Store::open_with(dir.path(), opts()).unwrap();
    assert_eq!(store.latest(conv, 10).unwrap(), all);
}

#[test]
fn reactions_aggregate_per_emoji() {
    let dir = tempfile::tempdir().unwrap();
    let chat = ChatStore::open_with(dir.path(), opts(), ChatOptions::default()).unwrap();
    for u in [A, B, C] {
        chat.register_user(u).unwrap();
    }
    let g = chat.create_group(A, &[B]).unwrap();
    let m = chat.send(g, NewMessage::text(A, "party?")).unwrap();
    chat.react(g, m.id, A, "🎉").unwrap();
    chat.react(g, m.id, B, "🎉").unwrap();
    chat.react(g, m.id, B, "👍").unwrap(); // replaces B's 🎉
    let r = chat.reactions(A, g, m.id, m.id).unwrap();
    let list = &r[&m.id];
    assert_eq!(list.len(), 2);
    // Equal counts are ordered by emoji.
    assert_eq!(
        (list[0].emoji.as_str(), list[0].count, list[0].mine),
        ("🎉", 1, true)
    );
    assert_eq!(
        (list[1].emoji.as_str(), list[1].count, list[1].mine),
        ("👍", 1, false)
    );
    chat.unreact(g, m.id, B).unwrap();
    let r = chat.reactions(B, g, m.id, m.id).unwrap();
    assert_eq!(r[&m.id].len(), 1);
    assert!(!r[&m.id][0].mine);
    assert!(matches!(
        chat.react(g, m.id, C, "👀"),
        Err(Error::Chat(ChatError::NotAMember { .. }))
    ));
    assert!(matches!(
        chat.react(g, MessageId(99), A, "👀"),
        Err(Error::IdOutOfRange { .. })
    ));
    assert!(matches!(
        chat.react(g, m.id, A, ""),
        Err(Error::InvalidArgument(_))
    ));
    // Chat-level edits check membership and sender.
    assert!(matches!(
        chat.edit(g, m.id, B, "hijack"),
        Err(Error::Chat(ChatError::NotTheSender { .. }))
    ));
    assert_eq!(
        chat.edit(g, m.id, A, "party!").unwrap().text(),
        Some("party!")
    );
}

#[test]
fn retention_hides_expired_messages_and_compaction_drops_them() {
    let dir = tempfile::tempdir().unwrap();
    let chat = ChatStore::open_with(dir.path(), opts(), ChatOptions::default()).unwrap();
    for u in [A, B] {
        chat.register_user(u).unwrap();
    }
    let ab = chat.direct(A, B).unwrap();
    assert!(matches!(
        chat.set_retention(ab, A, Some(Duration::ZERO)),
        Err(Error::InvalidArgument(_))
    ));
    for i in 0..5 {
        chat.send(ab, NewMessage::text(A, &format!("EPHEMERAL-{i}")))
            .unwrap();
    }
    chat.store().flush().unwrap();
    chat.set_retention(ab, A, Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(chat.unread(B).unwrap()[0].count, 5);
    // Let the five messages age past the time-to-live.
    std::thread::sleep(Duration::from_millis(400));
    assert!(chat.latest(B, ab, 10).unwrap().is_empty());
    assert!(chat.unread(B).unwrap().is_empty());
    let inbox = chat.inbox(B, 10, None).unwrap();
    assert_eq!(inbox.entries[0].unread, 0);
    assert!(inbox.entries[0].last_message.is_none());

    let fresh = chat.send(ab, NewMessage::text(A, "still here")).unwrap();
    assert_eq!(fresh.id, MessageId(6), "ids continue after expiry");
    assert_eq!(chat.unread(B).unwrap()[0].count, 1);
    chat.store().compact().unwrap();
    assert!(!files_contain(dir.path(), b"EPHEMERAL-"));
    let visible = chat.latest(B, ab, 10).unwrap();
    assert_eq!(visible.len(), 1);
    assert_eq!(visible[0].id, MessageId(6));
    chat.close().unwrap();
    let chat = ChatStore::open_with(dir.path(), opts(), ChatOptions::default()).unwrap();
    assert_eq!(
        chat.send(ab, NewMessage::text(A, "next")).unwrap().id,
        MessageId(7)
    );
}

#[test]
fn store_wide_max_age_applies_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let o = Options {
        max_message_age: Some(Duration::from_millis(150)),
        ..opts()
    };
    let store = Store::open_with(dir.path(), o).unwrap();
    let conv = ConversationId(3);
    for _ in 0..3 {
        store.append(conv, NewMessage::text(A, "OLD-NEWS")).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    store.append(conv, NewMessage::text(A, "new")).unwrap();
    let got = store.latest(conv, 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, MessageId(4));
    store.compact().unwrap();
    assert!(!files_contain(dir.path(), b"OLD-NEWS"));
    assert_eq!(store.last_id(conv).unwrap(), MessageId(4));
    let bad = Options {
        max_message_age: Some(Duration::ZERO),
        ..opts()
    };
    assert!(matches!(
        Store::open_with(tempfile::tempdir().unwrap().path(), bad),
        Err(Error::InvalidOption(_))
    ));
}
