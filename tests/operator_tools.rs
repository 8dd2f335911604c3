//! Checkpoint, verify, export/import and read-only opens.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chatstore::{ConversationId, Error, MessageId, NewMessage, Options, Store, UserId};

fn small() -> Options {
    Options {
        memtable_bytes: 16 << 10,
        block_bytes: 2 << 10,
        ..Options::default()
    }
}

fn body(conv: u64, id: u64) -> String {
    format!("conversation {conv} message {id}")
}

#[test]
fn checkpoint_under_load_is_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3u64)
        .map(|t| {
            let store = store.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let conv = t * 10 + n % 4;
                    store
                        .append(
                            ConversationId(conv),
                            NewMessage::text(UserId(t), &body(conv, n)),
                        )
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    while store.stats().messages_appended < 2000 {
        std::thread::yield_now();
    }
    let cp = dir.path().join("checkpoint");
    let acked_before: Vec<(u64, u64)> = (0..3u64)
        .flat_map(|t| (0..4).map(move |k| t * 10 + k))
        .map(|c| (c, store.last_id(ConversationId(c)).unwrap().0))
        .collect();
    store.checkpoint(&cp).unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(matches!(
        store.checkpoint(&cp),
        Err(Error::InvalidArgument(_))
    ));
    let copy = Store::open_with(&cp, small()).unwrap();
    for (conv, before) in acked_before {
        let msgs = copy.latest(ConversationId(conv), usize::MAX).unwrap();
        assert!(
            msgs.len() as u64 >= before,
            "conversation {conv} lost acknowledged messages"
        );
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(m.id.0, i as u64 + 1);
        }
        let prefix = store
            .after(ConversationId(conv), MessageId(0), msgs.len())
            .unwrap();
        assert_eq!(
            msgs, prefix,
            "conversation {conv} is a prefix of the live one"
        );
    }
    assert!(copy.verify().unwrap().is_ok());
}

#[test]
fn verify_reports_a_flipped_bit_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_with(dir.path(), small()).unwrap();
        for i in 0..500u64 {
            store
                .append(
                    ConversationId(i % 7),
                    NewMessage::text(UserId(1), &body(i % 7, i)),
                )
                .unwrap();
        }
        store.flush().unwrap();
        assert!(store.verify().unwrap().is_ok());
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0x20; // inside the first block
    std::fs::write(&seg, &bytes).unwrap();
    let store = Store::open_with(dir.path(), small()).unwrap();
    let report = store.verify().unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.problems[0].path, seg);
    assert_eq!(
        report.problems[0].offset, 16,
        "the first block starts after the header"
    );
}

#[test]
fn truncated_and_missing_segments_fail_the_open_with_the_file_named() {
    for damage in ["truncate", "remove"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open_with(dir.path(), small()).unwrap();
            for i in 0..300u64 {
                store
                    .append(ConversationId(1), NewMessage::text(UserId(1), &body(1, i)))
                    .unwrap();
            }
            store.flush().unwrap();
        }
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        if damage == "truncate" {
            let len = std::fs::metadata(&seg).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(len - 10)
                .unwrap();
        } else {
            std::fs::remove_file(&seg).unwrap();
        }
        match Store::open_with(dir.path(), small()) {
            Err(Error::Corruption { path, .. }) => assert_eq!(path, seg, "{damage}"),
            other => panic!("{damage}: {other:?}"),
        }
    }
}

#[test]
fn export_then_import_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small()).unwrap();
    let conv = ConversationId(9);
    for i in 0..2500u64 {
        let mut m = NewMessage::text(UserId(i % 3), &body(9, i));
        if i % 11 == 0 {
            m = m
                .with_attachment("https://a/b.png")
                .with_mentions(vec![UserId(2)]);
        }
        if i > 0 && i % 13 == 0 {
            m = m.with_reply_to(MessageId(i));
        }
        store.append(conv, m).unwrap();
    }
    store.edit(conv, MessageId(5), "edited text").unwrap();
    store.delete(conv, MessageId(6)).unwrap();
    store.flush().unwrap();
    let exported: Vec<_> = store.export(conv).map(|m| m.unwrap()).collect();
    assert_eq!(exported.len(), 2500);
    let other = tempfile::tempdir().unwrap();
    let copy = Store::open_with(other.path(), small()).unwrap();
    for chunk in exported.chunks(700) {
        copy.import(chunk.to_vec()).unwrap();
    }
    let again: Vec<_> = copy.export(conv).map(|m| m.unwrap()).collect();
    assert_eq!(again, exported);
    // Importing out of sequence is refused.
    assert!(matches!(
        copy.import(vec![exported[3].clone()]),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn an_import_of_message_zero_says_the_id_is_wrong_before_judging_its_reply() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small()).unwrap();
    let conv = ConversationId(2);
    for i in 0..8u64 {
        store
            .append(conv, NewMessage::text(UserId(1), &body(2, i)))
            .unwrap();
    }
    let mut zero = store.get(conv, MessageId(3)).unwrap().unwrap();
    zero.id = MessageId(0);
    for reply_to in [None, Some(MessageId(0)), Some(MessageId(2))] {
        zero.reply_to = reply_to;
        let got = store.import(vec![zero.clone()]);
        assert!(
            matches!(&got, Err(Error::InvalidArgument(why)) if why.contains("start at 1")),
            "reply_to {reply_to:?}: {got:?}"
        );
    }
    // A reply to a later message is still the reply's error.
    let mut next = zero.clone();
    next.id = MessageId(9);
    next.reply_to = Some(MessageId(9));
    assert!(matches!(
        store.import(vec![next]),
        Err(Error::IdOutOfRange {
            id: MessageId(9),
            ..
        })
    ));
    assert_eq!(store.last_id(conv).unwrap(), MessageId(8));
}

#[test]
fn read_only_open_works_beside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small()).unwrap();
    for i in 0..400u64 {
        store
            .append(ConversationId(2), NewMessage::text(UserId(1), &body(2, i)))
            .unwrap();
    }
    store.flush().unwrap();
    store
        .append(
            ConversationId(2),
            NewMessage::text(UserId(1), "in the WAL only"),
        )
        .unwrap();
    let ro = Options {
        read_only: true,
        ..small()
    };
    let reader = Store::open_with(dir.path(), ro).unwrap();
    assert_eq!(reader.last_id(ConversationId(2)).unwrap(), MessageId(401));
    assert!(matches!(
        reader.append(ConversationId(2), NewMessage::text(UserId(1), "no")),
        Err(Error::ReadOnly)
    ));
    assert!(reader.verify().unwrap().is_ok());
    drop(reader);
    // The writer is unaffected.
    store
        .append(
            ConversationId(2),
            NewMessage::text(UserId(1), "still writing"),
        )
        .unwrap();
}
