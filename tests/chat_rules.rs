//! The chat model's rules: membership, idempotent sends, receipts, unread, inbox, presence.

use std::sync::Arc;
use std::time::Duration;

use chatstore::presence::{
    Clock, ManualClock, Presence, PresenceEvent, PresenceOptions, PresenceStatus,
};
use chatstore::{
    ChatError, ChatOptions, ChatStore, ConversationId, Error, MessageId, NewMessage, Options,
    ReceiptState, UserId,
};

const A: UserId = UserId(1);
const B: UserId = UserId(2);
const C: UserId = UserId(3);
const D: UserId = UserId(4);

fn open(dir: &std::path::Path) -> ChatStore {
    let opts = Options {
        memtable_bytes: 8 << 10,
        ..Options::default()
    };
    ChatStore::open_with(dir, opts, ChatOptions::default()).unwrap()
}

fn with_users(dir: &std::path::Path) -> ChatStore {
    let chat = open(dir);
    for u in [A, B, C, D] {
        chat.register_user(u).unwrap();
    }
    chat
}

fn say(chat: &ChatStore, conv: ConversationId, from: UserId, text: &str) -> MessageId {
    chat.send(conv, NewMessage::text(from, text)).unwrap().id
}

#[test]
fn direct_conversations_are_symmetric_and_need_known_users() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    let ab = chat.direct(A, B).unwrap();
    assert_eq!(chat.direct(B, A).unwrap(), ab);
    assert_ne!(chat.direct(A, C).unwrap(), ab);
    assert_eq!(chat.members(ab).unwrap(), vec![A, B]);
    assert!(matches!(
        chat.direct(A, UserId(99)),
        Err(Error::Chat(ChatError::UnknownUser(UserId(99))))
    ));
    assert!(matches!(chat.direct(A, A), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        chat.members(ConversationId(999)),
        Err(Error::UnknownConversation(_))
    ));
    // Registering twice is fine.
    chat.register_user(A).unwrap();
    assert!(chat.user_exists(A).unwrap());
    assert!(!chat.user_exists(UserId(77)).unwrap());
}

#[test]
fn only_members_send_and_removed_members_keep_history_up_to_removal() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    assert!(matches!(
        chat.create_group(A, &[]),
        Err(Error::Chat(ChatError::EmptyGroup))
    ));
    let g = chat.create_group(A, &[B, C]).unwrap();
    assert_eq!(chat.members(g).unwrap(), vec![A, B, C]);
    assert!(matches!(
        chat.send(g, NewMessage::text(D, "let me in")),
        Err(Error::Chat(ChatError::NotAMember { .. }))
    ));
    assert!(matches!(
        chat.send(ConversationId(12345), NewMessage::text(A, "hello?")),
        Err(Error::UnknownConversation(_))
    ));
    say(&chat, g, A, "one");
    say(&chat, g, B, "two");
    chat.remove_member(g, A, C).unwrap();
    say(&chat, g, A, "three, after C left");
    assert_eq!(chat.members(g).unwrap(), vec![A, B]);
    let seen: Vec<u64> = chat
        .latest(C, g, 10)
        .unwrap()
        .iter()
        .map(|m| m.id.0)
        .collect();
    assert_eq!(seen, vec![1, 2]);
    assert!(chat.get(C, g, MessageId(3)).unwrap().is_none());
    assert!(matches!(
        chat.send(g, NewMessage::text(C, "still here?")),
        Err(Error::Chat(ChatError::NotAMember { .. }))
    ));
    assert!(matches!(
        chat.mark_read(C, g, MessageId(2)),
        Err(Error::Chat(ChatError::NotAMember { .. }))
    ));
    assert!(!chat.conversations_of(C).unwrap().contains(&g));
    assert!(matches!(
        chat.latest(D, g, 10),
        Err(Error::Chat(ChatError::NotAMember { .. }))
    ));

    // A new member sees what is sent after they join; adding twice is a no-op.
    chat.add_member(g, B, D).unwrap();
    chat.add_member(g, B, D).unwrap();
    say(&chat, g, D, "four");
    let seen: Vec<u64> = chat
        .latest(D, g, 10)
        .unwrap()
        .iter()
        .map(|m| m.id.0)
        .collect();
    assert_eq!(seen, vec![4]);
    assert!(matches!(
        chat.add_member(g, C, C),
        Err(Error::Chat(ChatError::NotAMember { .. }))
    ));
    let ab = chat.direct(A, B).unwrap();
    assert!(matches!(
        chat.add_member(ab, A, C),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn retried_sends_return_the_original_also_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (conv, first) = {
        let chat = with_users(dir.path());
        let conv = chat.direct(A, B).unwrap();
        let first = chat
            .send_with_key(conv, NewMessage::text(A, "hi"), "k-1")
            .map(|s| s.message)
            .unwrap();
        let again = chat
            .send_with_key(conv, NewMessage::text(A, "hi"), "k-1")
            .map(|s| s.message)
            .unwrap();
        assert_eq!(again, first);
        // Same key from another sender is a different message.
        let other = chat
            .send_with_key(conv, NewMessage::text(B, "hi"), "k-1")
            .map(|s| s.message)
            .unwrap();
        assert_eq!(other.id, MessageId(2));
        (conv, first)
    };
    let chat = open(dir.path());
    let again = chat
        .send_with_key(conv, NewMessage::text(A, "hi"), "k-1")
        .map(|s| s.message)
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(chat.store().last_id(conv).unwrap(), MessageId(2));
    assert!(matches!(
        chat.send_with_key(conv, NewMessage::text(A, "x"), "")
            .map(|s| s.message),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn cursors_move_forward_only_and_drive_unread_and_receipts() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    let g = chat.create_group(A, &[B, C]).unwrap();
    for i in 0..5 {
        say(&chat, g, A, &format!("m{i}"));
    }
    chat.send(g, NewMessage::text(A, "@B look").with_mentions(vec![B, D]))
        .unwrap();
    // Sending moved A's own read cursor.
    assert_eq!(chat.cursors(A, g).unwrap().read, MessageId(6));
    let unread_b = chat.unread(B).unwrap();
    assert_eq!(unread_b.len(), 1);
    assert_eq!(unread_b[0].count, 6);
    assert_eq!(unread_b[0].mentions, 1);
    assert_eq!(unread_b[0].first_unread, MessageId(1));
    assert!(chat.unread(A).unwrap().is_empty());

    chat.mark_delivered(B, g, MessageId(6)).unwrap();
    chat.mark_read(B, g, MessageId(4)).unwrap();
    chat.mark_read(B, g, MessageId(2)).unwrap(); // older ack: no-op
    assert_eq!(chat.cursors(B, g).unwrap().read, MessageId(4));
    assert!(matches!(
        chat.mark_read(B, g, MessageId(7)),
        Err(Error::IdOutOfRange { .. })
    ));
    let u = chat.unread(B).unwrap();
    assert_eq!(
        (u[0].count, u[0].mentions, u[0].first_unread),
        (2, 1, MessageId(5))
    );
    chat.mark_read(B, g, MessageId(6)).unwrap();
    assert!(chat.unread(B).unwrap().is_empty());

    let r = chat.receipts(g, MessageId(5)).unwrap();
    assert_eq!((r.recipients, r.delivered, r.read), (2, 1, 1));
    assert_eq!(
        r.details,
        vec![(B, ReceiptState::Read), (C, ReceiptState::Sent)]
    );

    let with_msgs = chat.unread_messages(C, 2).unwrap();
    assert_eq!(with_msgs.len(), 1);
    let ids: Vec<u64> = with_msgs[0].1.iter().map(|m| m.id.0).collect();
    assert_eq!(ids, vec![1, 2]);
}

#[test]
fn inbox_orders_by_activity_and_pages() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    let ab = chat.direct(A, B).unwrap();
    let ac = chat.direct(A, C).unwrap();
    let g = chat.create_group(A, &[B, C, D]).unwrap();
    say(&chat, ab, B, "first");
    std::thread::sleep(Duration::from_millis(3));
    say(&chat, g, C, "second");
    std::thread::sleep(Duration::from_millis(3));
    say(&chat, ac, C, "third");
    let page = chat.inbox(A, 2, None).unwrap();
    let order: Vec<ConversationId> = page.entries.iter().map(|e| e.conversation).collect();
    assert_eq!(order, vec![ac, g]);
    assert_eq!(page.entries[0].unread, 1);
    assert_eq!(
        page.entries[0].last_message.as_ref().and_then(|m| m.text()),
        Some("third")
    );
    let rest = chat.inbox(A, 2, page.next).unwrap();
    let order: Vec<ConversationId> = rest.entries.iter().map(|e| e.conversation).collect();
    assert_eq!(order, vec![ab]);
    assert!(rest.next.is_none());
}

#[test]
fn state_survives_flush_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let g;
    {
        let chat = with_users(dir.path());
        g = chat.create_group(A, &[B, C]).unwrap();
        for i in 0..300 {
            say(
                &chat,
                g,
                if i % 2 == 0 { A } else { B },
                &format!("message {i}"),
            );
        }
        chat.mark_read(C, g, MessageId(100)).unwrap();
        chat.store().flush().unwrap();
        chat.mark_read(C, g, MessageId(150)).unwrap();
        chat.set_last_seen(C, 12345).unwrap();
    }
    let chat = open(dir.path());
    assert!(chat.store().stats().segments >= 1);
    assert_eq!(chat.members(g).unwrap(), vec![A, B, C]);
    assert_eq!(chat.cursors(C, g).unwrap().read, MessageId(150));
    assert_eq!(chat.unread(C).unwrap()[0].count, 150);
    assert_eq!(chat.last_seen(C).unwrap(), Some(12345));
    assert_eq!(chat.conversations_of(A).unwrap(), vec![g]);
    // Ids continue.
    assert_eq!(say(&chat, g, C, "back"), MessageId(301));
}

#[test]
fn presence_persists_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    let clock = Arc::new(ManualClock::new(5_000_000));
    let opts = PresenceOptions {
        offline_after: Duration::from_secs(10),
        ..PresenceOptions::default()
    };
    let p = Presence::new(opts.clone(), clock.clone(), Some(chat.clone()));
    assert_eq!(p.heartbeat(A).unwrap(), Some(PresenceEvent::Online(A)));
    assert_eq!(p.status(A).unwrap(), PresenceStatus::Online);
    clock.advance(Duration::from_secs(4));
    p.heartbeat(A).unwrap();
    let seen = clock.now_ms();
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        p.sweep().unwrap(),
        vec![PresenceEvent::Offline {
            user: A,
            last_seen_ms: seen
        }]
    );
    // A new tracker (as after a restart) still knows when A was last seen.
    let p2 = Presence::new(opts, clock, Some(chat));
    assert_eq!(
        p2.status(A).unwrap(),
        PresenceStatus::Offline {
            last_seen_ms: Some(seen)
        }
    );
}

#[test]
fn callers_learn_about_retries_moves_and_membership() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    let ab = chat.direct(A, B).unwrap();
    let first = chat
        .send_with_key(ab, NewMessage::text(A, "hi"), "k")
        .unwrap();
    assert!(!first.duplicate);
    let again = chat
        .send_with_key(ab, NewMessage::text(A, "hi"), "k")
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    assert!(chat.mark_read(B, ab, MessageId(1)).unwrap());
    assert!(!chat.mark_read(B, ab, MessageId(1)).unwrap(), "no move");
    assert!(
        !chat.mark_delivered(B, ab, MessageId(1)).unwrap(),
        "read implies delivered"
    );
    assert!(chat.is_member(A, ab).unwrap());
    assert!(!chat.is_member(C, ab).unwrap());
    assert!(matches!(
        chat.is_member(A, ConversationId(999)),
        Err(Error::UnknownConversation(_))
    ));
}

#[test]
fn a_retried_send_whose_original_expired_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    let conv = chat.direct(A, B).unwrap();
    let sent = chat
        .send_with_key(conv, NewMessage::text(A, "hi"), "k-1")
        .map(|s| s.message)
        .unwrap();
    chat.set_retention(conv, A, Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(chat.latest(A, conv, 10).unwrap(), vec![]);
    // Within the idempotency window the retry is recognised, but its original is gone.
    match chat
        .send_with_key(conv, NewMessage::text(A, "hi"), "k-1")
        .map(|s| s.message)
    {
        Err(Error::Expired { conversation, id }) => {
            assert_eq!((conversation, id), (conv, sent.id));
        }
        other => panic!("expected Error::Expired, got {other:?}"),
    }
    assert_eq!(
        chat.store().last_id(conv).unwrap(),
        sent.id,
        "the retry appended nothing"
    );
}

#[test]
fn empty_sends_and_edits_are_a_chat_rule() {
    let dir = tempfile::tempdir().unwrap();
    let chat = with_users(dir.path());
    let conv = chat.direct(A, B).unwrap();
    assert!(matches!(
        chat.send(conv, NewMessage::text(A, "")),
        Err(Error::Chat(ChatError::EmptyMessage))
    ));
    let id = say(&chat, conv, A, "hi");
    assert!(matches!(
        chat.edit(conv, id, A, ""),
        Err(Error::Chat(ChatError::EmptyMessage))
    ));
    // The raw store under it keeps empty messages (imported histories have them).
    let raw = chat.store().append(conv, NewMessage::text(A, "")).unwrap();
    assert_eq!(raw.content, "");
}
