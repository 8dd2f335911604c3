//! Chat model hot paths: sending to a 1:1 and to a 100 000-member group (fanout on read makes
//! them cost the same), `unread` for a user in 200 conversations, and `inbox(user, 20)`.

use std::time::Duration;

use chatstore::{ChatOptions, ChatStore, ConversationId, Durability, NewMessage, Options, UserId};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn open(dir: &std::path::Path) -> ChatStore {
    let opts = Options {
        durability: Durability::Buffered {
            interval: Duration::from_millis(100),
        },
        ..Options::default()
    };
    ChatStore::open_with(dir, opts, ChatOptions::default()).expect("open")
}

fn sends(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let chat = open(dir.path());
    let members: Vec<UserId> = (0..100_000).map(UserId).collect();
    for &u in &members {
        chat.register_user(u).expect("register");
    }
    let direct = chat.direct(UserId(1), UserId(2)).expect("direct");
    let big = chat.create_group(UserId(0), &members[1..]).expect("group");
    let text = "see you at the station in ten minutes, the train is running a bit late";
    let mut g = c.benchmark_group("chat/send");
    g.throughput(Throughput::Elements(1));
    g.bench_function("direct", |b| {
        b.iter(|| {
            chat.send(direct, NewMessage::text(UserId(1), text))
                .expect("send")
        })
    });
    g.bench_function("group_100k_members", |b| {
        b.iter(|| {
            chat.send(big, NewMessage::text(UserId(77), text))
                .expect("send")
        })
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let chat = open(dir.path());
    let me = UserId(0);
    for u in 0..=200 {
        chat.register_user(UserId(u)).expect("register");
    }
    let mut convs: Vec<ConversationId> = Vec::new();
    for peer in 1..=200 {
        convs.push(chat.direct(me, UserId(peer)).expect("direct"));
    }
    // Every conversation has history; half have something unread for `me`.
    for (i, &conv) in convs.iter().enumerate() {
        let peer = UserId(i as u64 + 1);
        for k in 0..20 {
            let from = if k % 2 == 1 { me } else { peer };
            chat.send(conv, NewMessage::text(from, "a message of ordinary length"))
                .expect("send");
        }
        if i % 2 == 0 {
            chat.send(conv, NewMessage::text(peer, "unread!"))
                .expect("send");
        }
    }
    chat.store().flush().expect("flush");
    let mut g = c.benchmark_group("chat/read");
    g.bench_function("unread_200_conversations", |b| {
        b.iter(|| {
            let u = chat.unread(me).expect("unread");
            assert_eq!(u.len(), 100);
        })
    });
    g.bench_function("inbox_20", |b| {
        b.iter(|| {
            let page = chat.inbox(me, 20, None).expect("inbox");
            assert_eq!(page.entries.len(), 20);
        })
    });
    g.finish();
}

criterion_group!(benches, sends, reads);
criterion_main!(benches);
