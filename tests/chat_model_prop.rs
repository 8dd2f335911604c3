//! Random sequences of chat operations checked against a simple in-memory model after every
//! step: outcomes, unread counts and mentions, inbox order, cursors.

#[path = "common/cases.rs"]
mod cases;
use std::collections::{BTreeMap, BTreeSet};

use chatstore::{ChatOptions, ChatStore, ConversationId, MessageId, NewMessage, Options, UserId};
use proptest::prelude::*;

const USERS: u64 = 5;

#[derive(Clone, Debug)]
enum Op {
    Direct(u64, u64),
    Group(u64, Vec<u64>),
    Join {
        conv: usize,
        by: u64,
        user: u64,
    },
    Leave {
        conv: usize,
        by: u64,
        user: u64,
    },
    Send {
        conv: usize,
        sender: u64,
        key: Option<u8>,
        mention: Option<u64>,
    },
    Deliver {
        user: u64,
        conv: usize,
        back: u64,
    },
    Read {
        user: u64,
        conv: usize,
        back: u64,
    },
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    prop_oneof![
        2 => (u.clone(), 0..USERS).prop_map(|(a, b)| Op::Direct(a, b)),
        1 => (u.clone(), proptest::collection::vec(0..USERS, 0..4)).prop_map(|(c, m)| Op::Group(c, m)),
        1 => (0..8usize, u.clone(), 0..USERS).prop_map(|(conv, by, user)| Op::Join { conv, by, user }),
        1 => (0..8usize, u.clone(), 0..USERS).prop_map(|(conv, by, user)| Op::Leave { conv, by, user }),
        8 => (0..8usize, u.clone(), proptest::option::of(0..3u8), proptest::option::of(0..USERS))
            .prop_map(|(conv, sender, key, mention)| Op::Send { conv, sender, key, mention }),
        2 => (u.clone(), 0..8usize, 0..4u64).prop_map(|(user, conv, back)| Op::Deliver { user, conv, back }),
        3 => (u.clone(), 0..8usize, 0..4u64).prop_map(|(user, conv, back)| Op::Read { user, conv, back }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Clone, Copy, Debug, Default)]
struct Link {
    joined_after: u64,
    removed_at: u64,
    delivered: u64,
    read: u64,
}

#[derive(Debug)]
struct Conv {
    id: ConversationId,
    group: bool,
    created_ms: u64,
    /// Timestamps of messages by id - 1.
    times: Vec<u64>,
}

#[derive(Default, Debug)]
struct Model {
    convs: Vec<Conv>,
    direct: BTreeMap<(u64, u64), usize>,
    links: BTreeMap<(u64, usize), Link>,
    mentions: BTreeSet<(u64, usize, u64)>,
    idem: BTreeMap<(usize, u64, u8), (u64, u64)>,
}

impl Model {
    fn member(&self, user: u64, conv: usize) -> bool {
        self.links
            .get(&(user, conv))
            .is_some_and(|l| l.removed_at == 0)
    }
    fn last(&self, conv: usize) -> u64 {
        self.convs[conv].times.len() as u64
    }
    fn join(&mut self, user: u64, conv: usize, after: u64) {
        self.links.insert(
            (user, conv),
            Link {
                joined_after: after,
                removed_at: 0,
                delivered: after,
                read: after,
            },
        );
    }
}

fn open(dir: &std::path::Path) -> ChatStore {
    let opts = Options {
        memtable_bytes: 4096,
        block_bytes: 1024,
        ..Options::default()
    };
    ChatStore::open_with(dir, opts, ChatOptions::default()).unwrap()
}

fn check(chat: &ChatStore, m: &Model) -> Result<(), TestCaseError> {
    for user in 0..USERS {
        // Unread.
        let got: Vec<(u64, u64, u64, u64)> = chat
            .unread(UserId(user))
            .unwrap()
            .iter()
            .map(|u| (u.conversation.0, u.count, u.mentions, u.first_unread.0))
            .collect();
        let mut want = Vec::new();
        for (&(u, c), l) in &m.links {
            if u != user || l.removed_at != 0 {
                continue;
            }
            let last = m.last(c);
            let floor = l.read.max(l.joined_after);
            if last > floor {
                let mentions = m
                    .mentions
                    .iter()
                    .filter(|&&(mu, mc, id)| mu == user && mc == c && id > floor)
                    .count() as u64;
                want.push((m.convs[c].id.0, last - floor, mentions, floor + 1));
            }
        }
        want.sort_unstable();
        prop_assert_eq!(got, want, "unread of user {}", user);

        // Inbox order.
        let page = chat.inbox(UserId(user), 100, None).unwrap();
        let got: Vec<u64> = page.entries.iter().map(|e| e.conversation.0).collect();
        let mut rows: Vec<(u64, u64)> = m
            .links
            .iter()
            .filter(|(&(u, _), l)| u == user && l.removed_at == 0)
            .map(|(&(_, c), l)| {
                let conv = &m.convs[c];
                let last = m.last(c);
                let activity = if last > l.joined_after {
                    conv.times[last as usize - 1]
                } else {
                    conv.created_ms
                };
                (activity, conv.id.0)
            })
            .collect();
        rows.sort_unstable_by(|a, b| b.cmp(a));
        let want: Vec<u64> = rows.iter().map(|r| r.1).collect();
        prop_assert_eq!(got, want, "inbox of user {}", user);
    }
    // Cursors.
    for (&(u, c), l) in &m.links {
        let cur = chat.cursors(UserId(u), m.convs[c].id).unwrap();
        prop_assert_eq!((cur.delivered.0, cur.read.0), (l.delivered, l.read));
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut chat = open(dir.path());
    for u in 0..USERS {
        chat.register_user(UserId(u)).unwrap();
    }
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Direct(a, b) => {
                let got = chat.direct(UserId(a), UserId(b));
                if a == b {
                    prop_assert!(got.is_err());
                    continue;
                }
                let id = got.unwrap();
                let k = (a.min(b), a.max(b));
                if let Some(&c) = m.direct.get(&k) {
                    prop_assert_eq!(id, m.convs[c].id);
                } else {
                    let created_ms = chat.conversation(id).unwrap().created_ms;
                    m.convs.push(Conv {
                        id,
                        group: false,
                        created_ms,
                        times: Vec::new(),
                    });
                    let c = m.convs.len() - 1;
                    m.direct.insert(k, c);
                    m.join(a, c, 0);
                    m.join(b, c, 0);
                }
            }
            Op::Group(creator, members) => {
                let got = chat.create_group(
                    UserId(creator),
                    &members.iter().map(|&u| UserId(u)).collect::<Vec<_>>(),
                );
                if members.is_empty() {
                    prop_assert!(got.is_err());
                    continue;
                }
                let id = got.unwrap();
                let created_ms = chat.conversation(id).unwrap().created_ms;
                m.convs.push(Conv {
                    id,
                    group: true,
                    created_ms,
                    times: Vec::new(),
                });
                let c = m.convs.len() - 1;
                for u in members.into_iter().chain([creator]) {
                    m.join(u, c, 0);
                }
            }
            Op::Join { conv, by, user } => {
                if conv >= m.convs.len() {
                    continue;
                }
                let got = chat.add_member(m.convs[conv].id, UserId(by), UserId(user));
                let ok = m.convs[conv].group && m.member(by, conv);
                prop_assert_eq!(got.is_ok(), ok, "add_member {:?}", got);
                if ok && !m.member(user, conv) {
                    let last = m.last(conv);
                    m.join(user, conv, last);
                }
            }
            Op::Leave { conv, by, user } => {
                if conv >= m.convs.len() {
                    continue;
                }
                let got = chat.remove_member(m.convs[conv].id, UserId(by), UserId(user));
                let ok = m.convs[conv].group && m.member(by, conv) && m.member(user, conv);
                prop_assert_eq!(got.is_ok(), ok, "remove_member {:?}", got);
                if ok {
                    let last = m.last(conv);
                    let l = m.links.get_mut(&(user, conv)).unwrap();
                    l.removed_at = last.max(1);
                    if last == 0 {
                        l.joined_after = 1;
                    }
                }
            }
            Op::Send {
                conv,
                sender,
                key,
                mention,
            } => {
                if conv >= m.convs.len() {
                    continue;
                }
                let mut msg = NewMessage::text(UserId(sender), "hello there");
                if let Some(u) = mention {
                    msg = msg.with_mentions(vec![UserId(u)]);
                }
                let got = match key {
                    Some(k) => chat
                        .send_with_key(m.convs[conv].id, msg, vec![b'k', k])
                        .map(|s| s.message),
                    None => chat.send(m.convs[conv].id, msg),
                };
                if !m.member(sender, conv) {
                    prop_assert!(got.is_err());
                    continue;
                }
                let sent = got.unwrap();
                if let Some(&(id, ts)) = key.and_then(|k| m.idem.get(&(conv, sender, k))) {
                    prop_assert_eq!((sent.id.0, sent.timestamp_ms), (id, ts), "resend");
                    continue;
                }
                let id = m.last(conv) + 1;
                prop_assert_eq!(sent.id, MessageId(id));
                m.convs[conv].times.push(sent.timestamp_ms);
                let l = m.links.get_mut(&(sender, conv)).unwrap();
                l.read = id;
                l.delivered = id;
                if let Some(u) = mention {
                    if u != sender && m.member(u, conv) {
                        m.mentions.insert((u, conv, id));
                    }
                }
                if let Some(k) = key {
                    m.idem.insert((conv, sender, k), (id, sent.timestamp_ms));
                }
            }
            Op::Deliver { user, conv, back } | Op::Read { user, conv, back } => {
                if conv >= m.convs.len() {
                    continue;
                }
                let read = matches!(op, Op::Read { .. });
                let id = m.last(conv).saturating_sub(back);
                let cid = m.convs[conv].id;
                let got = if read {
                    chat.mark_read(UserId(user), cid, MessageId(id))
                } else {
                    chat.mark_delivered(UserId(user), cid, MessageId(id))
                };
                prop_assert_eq!(got.is_ok(), m.member(user, conv), "mark {:?}", got);
                if let Some(l) = m.links.get_mut(&(user, conv)).filter(|l| l.removed_at == 0) {
                    if read {
                        l.read = l.read.max(id);
                        l.delivered = l.delivered.max(l.read);
                    } else {
                        l.delivered = l.delivered.max(id);
                    }
                }
            }
            Op::Flush => chat.store().flush().unwrap(),
            Op::Reopen => {
                chat.close().unwrap();
                chat = open(dir.path());
            }
        }
        check(&chat, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(48), ..ProptestConfig::default() })]

    #[test]
    fn chat_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
