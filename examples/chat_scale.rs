//! Builds a chat store with many conversations and cursors, then measures what opening it
//! costs: time and resident memory. Neither should grow with the number of users or
//! conversations, since all chat state lives in segments read on demand.
//!
//! `cargo run --release --example chat_scale [GROUPS] [DIR]` (default 1 000 000 groups of 5
//! members: 5 000 000 cursors). With GROUPS = 0 it only reopens an existing DIR, so the memory
//! figures are those of a fresh process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatstore::{ChatOptions, ChatStore, Durability, NewMessage, Options, UserId};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn options() -> Options {
    Options {
        durability: Durability::Buffered {
            interval: Duration::from_millis(500),
        },
        ..Options::default()
    }
}

fn main() -> chatstore::Result<()> {
    let mut args = std::env::args().skip(1);
    let groups: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("chatstore-scale-{}", std::process::id()))
        });
    let members = 5u64;
    if groups == 0 {
        return measure_open(&dir, 1_000_000 / 2);
    }
    let users = (groups / 2).max(10);

    let chat = ChatStore::open_with(&dir, options(), ChatOptions::default())?;
    let built = Instant::now();
    let threads = 4u64;
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let chat = chat.clone();
            let done = Arc::clone(&done);
            std::thread::spawn(move || -> chatstore::Result<()> {
                let mut u = t;
                while u < users {
                    chat.register_user(UserId(u))?;
                    u += threads;
                }
                done.fetch_add(1, Ordering::SeqCst);
                while done.load(Ordering::SeqCst) < threads {
                    std::thread::yield_now();
                }
                let mut g = t;
                while g < groups {
                    let creator = UserId(g % users);
                    let others: Vec<UserId> = (1..members)
                        .map(|k| UserId((g * 7 + k * 104_729) % users))
                        .collect();
                    let conv = chat.create_group(creator, &others)?;
                    if g % 10 == 0 {
                        chat.send(conv, NewMessage::text(creator, "welcome to the group"))?;
                    }
                    g += threads;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| chatstore::Error::Closed)??;
    }
    chat.store().flush()?;
    let stats = chat.store().stats();
    println!(
        "built {groups} groups of {members} ({} cursors), {users} users in {:.1?}; {} segments, {} MiB on disk",
        groups * members,
        built.elapsed(),
        stats.segments,
        stats.segment_bytes >> 20
    );
    chat.close()?;
    measure_open(&dir, users)
}

fn measure_open(dir: &std::path::Path, users: u64) -> chatstore::Result<()> {
    let rss_before = rss_kib();
    let opened = Instant::now();
    let chat = ChatStore::open_with(dir, options(), ChatOptions::default())?;
    let open_time = opened.elapsed();
    let rss_open = rss_kib();
    let q = Instant::now();
    let mut unread = 0usize;
    for i in 0..1000u64 {
        let u = UserId(i.wrapping_mul(7919) % users);
        unread += chat.unread(u)?.len();
        chat.inbox(u, 20, None)?;
    }
    let query_time = q.elapsed();
    println!(
        "reopen: {:.2?}; RSS {} MiB before open, {} MiB after open (+{} MiB), {} MiB after 1000 users' unread + inbox ({:.1?}, {unread} unread conversations)",
        open_time,
        rss_before >> 10,
        rss_open >> 10,
        rss_open.saturating_sub(rss_before) >> 10,
        rss_kib() >> 10,
        query_time,
    );
    Ok(())
}
