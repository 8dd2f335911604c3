//! Every limit a decoder enforces, walked through the public API: the value at the limit is
//! accepted and reads back equal after a reopen and after a flush, a compaction and a reopen;
//! the value one past it is refused before it reaches the log, and the store stays writable
//! and openable.
//!
//! The limits are spelled out here as the documented numbers, so a change to one of them in
//! the library fails these tests instead of silently moving what users may store.

use std::path::Path;

use bytes::Bytes;
use chatstore::format::{batch, wal};
use chatstore::{
    ChatOptions, ChatStore, ConversationId, Error, Message, MessageId, MessageKind, NewMessage,
    Options, Store, UserId,
};

/// Mentions one message may carry (`format::batch::MAX_MENTIONS`).
const MAX_MENTIONS: usize = 1 << 16;
/// Largest message (content plus attachment link) any store may accept: the most
/// `Options::max_message_bytes` may be.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Largest payload of one WAL record, so of one write call (`format::wal::MAX_RECORD_LEN`).
const MAX_RECORD_LEN: usize = 256 << 20;
/// Longest client key of an idempotent send.
const MAX_CLIENT_KEY: usize = 128;
/// Longest reaction, in bytes.
const MAX_REACTION_BYTES: usize = 32;

#[test]
fn the_documented_limits_are_the_format_constants() {
    assert_eq!(batch::MAX_MENTIONS, MAX_MENTIONS);
    assert_eq!(wal::MAX_RECORD_LEN, MAX_RECORD_LEN);
}

fn options() -> Options {
    Options {
        background_compaction: false,
        ..Options::default()
    }
}

fn open(dir: &Path, options: &Options) -> Store {
    Store::open_with(dir, options.clone()).expect("the store opens")
}

/// `n` distinct users with the largest ids (the longest encodings).
fn users(n: usize) -> Vec<UserId> {
    (0..n as u64).map(|i| UserId(u64::MAX - i)).collect()
}

/// The error of `r`, or what it returned instead (without printing what may be megabytes).
fn error_of<T>(r: chatstore::Result<T>) -> Result<Error, &'static str> {
    match r {
        Ok(_) => Err("Ok"),
        Err(e) => Ok(e),
    }
}

#[track_caller]
fn assert_invalid<T>(r: chatstore::Result<T>) {
    let e = error_of(r);
    assert!(
        matches!(e, Ok(Error::InvalidArgument(_))),
        "expected InvalidArgument, got {e:?}"
    );
}

#[track_caller]
fn assert_too_large<T>(r: chatstore::Result<T>) {
    let e = error_of(r);
    assert!(
        matches!(e, Ok(Error::MessageTooLarge { .. })),
        "expected MessageTooLarge, got {e:?}"
    );
}

#[track_caller]
fn assert_out_of_range<T>(r: chatstore::Result<T>) {
    let e = error_of(r);
    assert!(
        matches!(e, Ok(Error::IdOutOfRange { .. })),
        "expected IdOutOfRange, got {e:?}"
    );
}

/// Runs `check` on `store`, after a reopen (the WAL replayed), and after a flush, a compaction
/// and another reopen (everything read from segments written by both). Returns the store open.
fn survives(dir: &Path, options: &Options, store: Store, check: impl Fn(&Store)) -> Store {
    check(&store);
    store.close().expect("close");
    let store = open(dir, options);
    check(&store);
    store.flush().expect("flush");
    store.compact().expect("compaction");
    store.close().expect("close");
    let store = open(dir, options);
    check(&store);
    let report = store.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    store
}

/// A refused write left the store writable, and it still opens (with the write in it).
fn still_writable_and_openable(dir: &Path, options: &Options, store: Store) -> Store {
    let conv = ConversationId(0xC0FFEE);
    let m = store
        .append(conv, NewMessage::text(UserId(1), "still writable"))
        .expect("the store is still writable");
    store.close().expect("close");
    let store = open(dir, options);
    assert_eq!(store.get(conv, m.id).expect("read"), Some(m));
    store
}

/// A message as an export would hand it to `import`.
fn restored(conv: ConversationId, id: u64, sender: u64, timestamp_ms: u64) -> Message {
    Message {
        conversation: conv,
        id: MessageId(id),
        sender: UserId(sender),
        timestamp_ms,
        kind: MessageKind::Normal,
        content: Bytes::from_static(b"x"),
        attachment: None,
        reply_to: None,
        mentions: Vec::new(),
        edited_ms: None,
    }
}

#[test]
fn mentions_beyond_a_record_are_refused_and_the_store_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    let store = open(dir.path(), &options);
    let conv = ConversationId(1);

    let over = NewMessage::text(UserId(7), "too many").with_mentions(users(MAX_MENTIONS + 1));
    assert_invalid(store.append(conv, over.clone()));
    assert_invalid(store.append_batch(vec![
        (conv, NewMessage::text(UserId(7), "fine on its own")),
        (conv, over),
    ]));
    let mut imported = restored(conv, 1, 7, 1);
    imported.mentions = users(MAX_MENTIONS + 1);
    assert_invalid(store.import(vec![imported]));
    assert_eq!(
        store.last_id(conv).unwrap(),
        MessageId(0),
        "nothing of a refused write"
    );
    let store = still_writable_and_openable(dir.path(), &options, store);

    let at = store
        .append(
            conv,
            NewMessage::text(UserId(u64::MAX), "everyone").with_mentions(users(MAX_MENTIONS)),
        )
        .unwrap();
    assert_eq!(at.mentions.len(), MAX_MENTIONS);
    let batch = store
        .append_batch(vec![
            (
                conv,
                NewMessage::text(UserId(0), "all of them again").with_mentions(users(MAX_MENTIONS)),
            ),
            (conv, NewMessage::text(UserId(1), "and one")),
        ])
        .unwrap();
    survives(dir.path(), &options, store, |s| {
        assert_eq!(s.get(conv, at.id).unwrap().as_ref(), Some(&at));
        assert_eq!(s.latest(conv, 2).unwrap(), batch);
    });
}

#[test]
fn the_largest_message_after_a_block_of_small_rows_survives_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        max_message_bytes: MAX_MESSAGE_BYTES,
        block_bytes: 4 << 20,
        memtable_bytes: 256 << 20,
        ..options()
    };
    let store = open(dir.path(), &options);
    let conv = ConversationId(5);
    // Small rows whose columns cost more than a block's size estimate counts for them (a new
    // sender each, timestamps far apart, a reply each), as many as fit in one block's
    // estimate; then the largest message, in the same conversation, so in the same block.
    let rows = 320_000u64;
    let small: Vec<Message> = (1..=rows)
        .map(|id| {
            let mut m = restored(conv, id, id << 42, (id % 2) << 63);
            m.reply_to = (id > 1).then_some(MessageId(1));
            m
        })
        .collect();
    store.import(small.clone()).unwrap();

    let bytes = Bytes::from(
        (0..=MAX_MESSAGE_BYTES)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let link = Bytes::from(vec![b'l'; 64]);
    let largest = |extra: usize| {
        NewMessage::new(
            UserId(3),
            bytes.slice(..MAX_MESSAGE_BYTES - link.len() + extra),
        )
        .with_attachment(link.clone())
        .with_reply_to(MessageId(1))
        .with_mentions(users(MAX_MENTIONS))
    };
    assert_too_large(store.append(conv, largest(1)));
    let big = store.append(conv, largest(0)).unwrap();
    assert_eq!(big.id, MessageId(rows + 1));

    let store = survives(dir.path(), &options, store, |s| {
        assert_eq!(s.get(conv, big.id).unwrap().as_ref(), Some(&big));
        for id in [1, 2, rows / 2, rows] {
            assert_eq!(
                s.get(conv, MessageId(id)).unwrap().as_ref(),
                Some(&small[id as usize - 1])
            );
        }
        assert_eq!(s.last_id(conv).unwrap(), big.id);
    });

    // The largest edit: its record is the largest state value.
    assert_too_large(store.edit(conv, big.id, bytes.clone()));
    let edited = store
        .edit(conv, big.id, bytes.slice(..MAX_MESSAGE_BYTES))
        .unwrap();
    let store = survives(dir.path(), &options, store, |s| {
        assert_eq!(s.get(conv, big.id).unwrap().as_ref(), Some(&edited));
    });
    drop(still_writable_and_openable(dir.path(), &options, store));

    // No store may take a larger message.
    let over = Options {
        max_message_bytes: MAX_MESSAGE_BYTES + 1,
        ..options
    };
    assert!(matches!(
        Store::open_with(dir.path(), over),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn a_write_over_one_log_record_is_refused_and_the_store_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    let store = open(dir.path(), &options);
    let conv = ConversationId(2);
    // 4097 messages of 64 KiB (one shared buffer): more than one record can hold.
    let body = Bytes::from(vec![b'b'; options.max_message_bytes]);
    let n = MAX_RECORD_LEN / body.len() + 1;
    let batch: Vec<_> = (0..n)
        .map(|_| (conv, NewMessage::new(UserId(1), body.clone())))
        .collect();
    assert_invalid(store.append_batch(batch));
    let imports: Vec<_> = (1..=n as u64)
        .map(|id| Message {
            content: body.clone(),
            ..restored(conv, id, 1, id)
        })
        .collect();
    assert_invalid(store.import(imports));
    assert_eq!(store.last_id(conv).unwrap(), MessageId(0));
    drop(still_writable_and_openable(dir.path(), &options, store));
}

/// The byte length of `v` as a varint.
fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Imported messages whose WAL batch payload is exactly `len` bytes: known ids and
/// timestamps make the encoded size exact.
fn imports_of_payload(conv: ConversationId, body: &Bytes, len: usize) -> Vec<Message> {
    let entry = |id: u64, content: usize| {
        // tag, conversation, id, sender, timestamp, kind, flags, content length, content
        1 + varint_len(conv.0)
            + varint_len(id)
            + 1
            + 1
            + 1
            + 1
            + varint_len(content as u64)
            + content
    };
    let mut out = Vec::new();
    let mut used = 0usize;
    loop {
        let id = out.len() as u64 + 1;
        let count_len = varint_len(id);
        let full = entry(id, body.len());
        if count_len + used + full <= len {
            used += full;
            out.push(Message {
                content: body.clone(),
                ..restored(conv, id, 1, 1)
            });
            continue;
        }
        // The last one takes exactly what is left.
        let left = len - count_len - used;
        let mut content = left - entry(id, 0);
        while entry(id, content) > left {
            content -= 1;
        }
        assert_eq!(entry(id, content), left, "cannot fill the payload exactly");
        out.push(Message {
            content: body.slice(..content),
            ..restored(conv, id, 1, 1)
        });
        return out;
    }
}

/// The record limit at its exact value: a quarter of a GiB written, replayed, flushed and
/// compacted. Run with `--ignored`.
#[test]
#[ignore = "writes a 256 MiB record; run with --ignored"]
fn a_write_of_exactly_one_log_record_survives_reopen_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        compression: chatstore::Compression::Lz4,
        ..options()
    };
    let store = open(dir.path(), &options);
    let conv = ConversationId(3);
    let body = Bytes::from(
        (0..options.max_message_bytes)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<u8>>(),
    );
    assert_invalid(store.import(imports_of_payload(conv, &body, MAX_RECORD_LEN + 1)));
    assert_eq!(store.last_id(conv).unwrap(), MessageId(0));
    let at = imports_of_payload(conv, &body, MAX_RECORD_LEN);
    store.import(at.clone()).unwrap();
    let last = at.len() as u64;
    survives(dir.path(), &options, store, |s| {
        assert_eq!(s.last_id(conv).unwrap(), MessageId(last));
        for id in [1, last / 2, last] {
            assert_eq!(
                s.get(conv, MessageId(id)).unwrap().as_ref(),
                Some(&at[id as usize - 1])
            );
        }
    });
}

#[test]
fn imported_messages_are_held_to_the_limits_of_appended_ones() {
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    let store = open(dir.path(), &options);
    let conv = ConversationId(u64::MAX);

    // Each one past a limit, as the next message of an empty conversation.
    let mut too_many = restored(conv, 1, 1, 1);
    too_many.mentions = users(MAX_MENTIONS + 1);
    assert_invalid(store.import(vec![too_many]));
    let mut too_big = restored(conv, 1, 1, 1);
    too_big.content = Bytes::from(vec![b'x'; options.max_message_bytes + 1]);
    assert_too_large(store.import(vec![too_big]));
    for reply in [0, 1, 2] {
        let mut bad_reply = restored(conv, 1, 1, 1);
        bad_reply.reply_to = Some(MessageId(reply));
        assert_out_of_range(store.import(vec![bad_reply]));
    }
    assert_eq!(store.last_id(conv).unwrap(), MessageId(0));
    let store = still_writable_and_openable(dir.path(), &options, store);

    // At the limits: extreme senders and timestamps, the farthest reply, every mention.
    let mut at = vec![
        restored(conv, 1, 0, 0),
        restored(conv, 2, u64::MAX, u64::MAX),
        restored(conv, 3, 1, 1 << 63),
    ];
    at[1].reply_to = Some(MessageId(1));
    at[1].attachment = Some(Bytes::from_static(b"https://assets.example/a.png"));
    at[2].reply_to = Some(MessageId(2));
    at[2].mentions = users(MAX_MENTIONS);
    at[2].kind = MessageKind::System;
    at[2].content = Bytes::from(vec![b'y'; options.max_message_bytes]);
    store.import(at.clone()).unwrap();
    survives(dir.path(), &options, store, |s| {
        let got: Vec<Message> = s.export(conv).map(|m| m.unwrap()).collect();
        assert_eq!(got, at);
    });
}

#[test]
fn appended_replies_must_point_to_an_earlier_message() {
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    let store = open(dir.path(), &options);
    let conv = ConversationId(4);
    let first = store
        .append(conv, NewMessage::text(UserId(1), "first"))
        .unwrap();
    for reply in [0, 2] {
        assert_out_of_range(store.append(
            conv,
            NewMessage::text(UserId(1), "reply").with_reply_to(MessageId(reply)),
        ));
    }
    let reply = store
        .append(
            conv,
            NewMessage::text(UserId(2), "reply").with_reply_to(first.id),
        )
        .unwrap();
    survives(dir.path(), &options, store, |s| {
        assert_eq!(s.get(conv, reply.id).unwrap().as_ref(), Some(&reply));
    });
}

const A: UserId = UserId(1);
const B: UserId = UserId(2);

fn open_chat(dir: &Path, options: &Options) -> ChatStore {
    ChatStore::open_with(dir, options.clone(), ChatOptions::default()).expect("the store opens")
}

/// [`survives`] for a chat store.
fn chat_survives(
    dir: &Path,
    options: &Options,
    chat: ChatStore,
    check: impl Fn(&ChatStore),
) -> ChatStore {
    check(&chat);
    chat.close().expect("close");
    let chat = open_chat(dir, options);
    check(&chat);
    chat.store().flush().expect("flush");
    chat.store().compact().expect("compaction");
    chat.close().expect("close");
    let chat = open_chat(dir, options);
    check(&chat);
    chat
}

#[test]
fn chat_sends_edits_and_reactions_are_held_to_the_limits() {
    let dir = tempfile::tempdir().unwrap();
    let options = options();
    let chat = open_chat(dir.path(), &options);
    chat.register_user(A).unwrap();
    chat.register_user(B).unwrap();
    let conv = chat.direct(A, B).unwrap();

    // One past each limit.
    let mut mentions = users(MAX_MENTIONS);
    mentions.push(B);
    assert_invalid(chat.send(
        conv,
        NewMessage::text(A, "too many").with_mentions(mentions.clone()),
    ));
    for key in [Vec::new(), vec![b'k'; MAX_CLIENT_KEY + 1]] {
        assert_invalid(
            chat.send_with_key(conv, NewMessage::text(A, "hi"), key)
                .map(|s| s.message),
        );
    }
    assert_eq!(chat.store().last_id(conv).unwrap(), MessageId(0));
    let first = chat.send(conv, NewMessage::text(A, "first")).unwrap();
    assert_too_large(chat.edit(conv, first.id, A, vec![b'e'; options.max_message_bytes + 1]));
    let thumbs = "\u{1F44D}".repeat(MAX_REACTION_BYTES / 4);
    assert_eq!(thumbs.len(), MAX_REACTION_BYTES);
    for emoji in [String::new(), format!("{thumbs}!")] {
        assert_invalid(chat.react(conv, first.id, B, &emoji));
    }
    chat.close().unwrap();
    let chat = open_chat(dir.path(), &options);

    // At each limit.
    mentions.truncate(MAX_MENTIONS - 1);
    mentions.push(B);
    let key = vec![b'k'; MAX_CLIENT_KEY];
    let everyone = chat
        .send_with_key(
            conv,
            NewMessage::text(A, "@everyone").with_mentions(mentions),
            key.clone(),
        )
        .map(|s| s.message)
        .unwrap();
    assert_eq!(everyone.mentions.len(), MAX_MENTIONS);
    let edited = chat
        .edit(conv, first.id, A, vec![b'e'; options.max_message_bytes])
        .unwrap();
    chat.react(conv, everyone.id, B, &thumbs).unwrap();
    let chat = chat_survives(dir.path(), &options, chat, |c| {
        assert_eq!(
            c.get(B, conv, everyone.id).unwrap().as_ref(),
            Some(&everyone)
        );
        assert_eq!(c.get(B, conv, first.id).unwrap().as_ref(), Some(&edited));
        let unread = c.unread(B).unwrap();
        assert_eq!((unread[0].count, unread[0].mentions), (2, 1));
        let reactions = c.reactions(A, conv, everyone.id, everyone.id).unwrap();
        assert_eq!(reactions[&everyone.id][0].emoji, thumbs);
        // A retry with the longest key is still recognised.
        let retry = c
            .send_with_key(conv, NewMessage::text(A, "@everyone"), key.clone())
            .unwrap();
        assert!(retry.duplicate);
        assert_eq!(retry.message, everyone);
    });
    let later = chat
        .send(conv, NewMessage::text(B, "still writable"))
        .unwrap();
    chat.close().unwrap();
    let chat = open_chat(dir.path(), &options);
    assert_eq!(chat.get(A, conv, later.id).unwrap(), Some(later));
}
