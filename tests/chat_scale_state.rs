//! Many conversations and cursors spread over flushed and compacted segments: every user's
//! unread view must still be exact.

use std::collections::BTreeMap;

use chatstore::{ChatOptions, ChatStore, ConversationId, NewMessage, Options, UserId};

#[test]
fn unread_is_exact_across_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_bytes: 64 << 10,
        l0_compaction_trigger: 3,
        level_base_bytes: 256 << 10,
        target_segment_bytes: 64 << 10,
        ..Options::default()
    };
    let chat = ChatStore::open_with(dir.path(), opts.clone(), ChatOptions::default()).unwrap();
    let users = 500u64;
    for u in 0..users {
        chat.register_user(UserId(u)).unwrap();
    }
    // user -> conversations with one unread message
    let mut expected: BTreeMap<u64, Vec<ConversationId>> = BTreeMap::new();
    for g in 0..3000u64 {
        let creator = UserId(g % users);
        let mut others: Vec<UserId> = (1..5u64)
            .map(|k| UserId((g * 7 + k * 104_729) % users))
            .filter(|&u| u != creator)
            .collect();
        others.sort_unstable();
        others.dedup();
        let conv = chat.create_group(creator, &others).unwrap();
        if g % 10 == 0 {
            chat.send(conv, NewMessage::text(creator, "welcome"))
                .unwrap();
            for u in &others {
                expected.entry(u.0).or_default().push(conv);
            }
        }
    }
    let check = |chat: &ChatStore, when: &str| {
        for u in 0..users {
            let got: Vec<ConversationId> = chat
                .unread(UserId(u))
                .unwrap()
                .iter()
                .map(|x| x.conversation)
                .collect();
            let want = expected.get(&u).cloned().unwrap_or_default();
            assert_eq!(got, want, "user {u} {when}");
        }
    };
    check(&chat, "before flush");
    chat.store().flush().unwrap();
    check(&chat, "after flush");
    chat.close().unwrap();
    let chat = ChatStore::open_with(dir.path(), opts, ChatOptions::default()).unwrap();
    check(&chat, "after reopen");
    chat.store().compact().unwrap();
    check(&chat, "after compaction");
}
