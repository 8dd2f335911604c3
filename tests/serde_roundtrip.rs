//! The `serde` feature: the public data types round-trip through JSON. The crate's tests turn
//! the feature on (the dev-dependency on the crate itself), so this runs with `cargo test`.
#![cfg(feature = "serde")]

use std::fmt::Debug;

use bytes::Bytes;
use chatstore::{
    ChatStore, ConversationId, Cursors, InboxPage, Message, MessageId, MessageKind,
    MessageReceipts, NewMessage, ReceiptState, Stats, Store, Unread, UserId,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> String {
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(&back, value, "{json}");
    json
}

#[test]
fn a_message_round_trips_through_json() {
    let message = Message {
        conversation: ConversationId(7),
        id: MessageId(42),
        sender: UserId(3),
        timestamp_ms: 1_700_000_000_123,
        kind: MessageKind::Normal,
        content: Bytes::from_static("héllo ✓".as_bytes()),
        attachment: Some(Bytes::from_static(b"https://assets/x.png")),
        reply_to: Some(MessageId(41)),
        mentions: vec![UserId(1), UserId(2)],
        edited_ms: None,
    };
    let json = round_trip(&message);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Ids are plain numbers.
    assert_eq!(value["conversation"], 7);
    assert_eq!(value["id"], 42);
    assert_eq!(value["mentions"], serde_json::json!([1, 2]));
    assert_eq!(value["kind"], "Normal");

    let deleted = Message {
        kind: MessageKind::Deleted,
        content: Bytes::new(),
        attachment: None,
        reply_to: None,
        mentions: Vec::new(),
        edited_ms: Some(1_700_000_000_999),
        ..message
    };
    round_trip(&deleted);
}

#[test]
fn a_new_message_needs_only_its_sender_and_content() {
    let full = NewMessage::text(UserId(9), "hi")
        .with_kind(MessageKind::System)
        .with_attachment("link")
        .with_reply_to(MessageId(3))
        .with_mentions(vec![UserId(4)]);
    round_trip(&full);
    let minimal: NewMessage =
        serde_json::from_str(r#"{"sender": 9, "content": [104, 105]}"#).unwrap();
    assert_eq!(minimal, NewMessage::text(UserId(9), "hi"));
}

#[test]
fn what_the_store_returns_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let chat = ChatStore::open(dir.path().join("chat")).unwrap();
    let (alice, bob) = (UserId(1), UserId(2));
    chat.register_user(alice).unwrap();
    chat.register_user(bob).unwrap();
    let conv = chat.direct(alice, bob).unwrap();
    let sent = chat
        .send(
            conv,
            NewMessage::text(alice, "hi bob").with_mentions(vec![bob]),
        )
        .unwrap();

    round_trip(&sent);
    round_trip(&chat.conversation(conv).unwrap());
    let unread: Vec<Unread> = chat.unread(bob).unwrap();
    assert_eq!(unread.len(), 1);
    round_trip(&unread);
    let inbox: InboxPage = chat.inbox(bob, 10, None).unwrap();
    assert_eq!(inbox.entries.len(), 1);
    round_trip(&inbox);
    chat.mark_read(bob, conv, sent.id).unwrap();
    let receipts: MessageReceipts = chat.receipts(conv, sent.id).unwrap();
    assert_eq!(receipts.details, vec![(bob, ReceiptState::Read)]);
    round_trip(&receipts);
    let cursors: Cursors = chat.cursors(bob, conv).unwrap();
    round_trip(&cursors);

    let store = Store::open(dir.path().join("raw")).unwrap();
    store
        .append(ConversationId(1), NewMessage::text(alice, "x"))
        .unwrap();
    let stats = store.stats();
    let json = round_trip(&stats);
    // Fields a newer version adds (or an older one lacks) default to zero.
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value.as_object_mut().unwrap().remove("reads");
    let back: Stats = serde_json::from_value(value).unwrap();
    assert_eq!(back.reads, 0);
    assert_eq!(back.messages_appended, 1);
    round_trip(&store.verify().unwrap());
}
