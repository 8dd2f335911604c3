//! Compares compaction policies on the Zipf chat workload: write amplification, space
//! amplification and segments touched per read. Prints a markdown table.
//!
//! `cargo run --release --example compaction_policies [MESSAGES] [CONVERSATIONS]`

#[path = "support/workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use chatstore::{CompactionPolicy, ConversationId, MessageId, NewMessage, Options, Store, UserId};
use workload::{Rng, Zipf};

struct Row {
    policy: &'static str,
    ingest: Duration,
    write_amp: f64,
    space_amp: f64,
    segments: u64,
    latest_segments: f64,
    paging_segments: f64,
    compactions: u64,
}

fn run(policy: CompactionPolicy, name: &'static str, messages: u64, convs: usize) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = Options {
        durability: chatstore::Durability::Buffered {
            interval: Duration::from_millis(200),
        },
        memtable_bytes: 4 << 20,
        max_frozen_memtables: 4,
        l0_compaction_trigger: 4,
        level_base_bytes: 16 << 20,
        target_segment_bytes: 8 << 20,
        compaction_policy: policy,
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), opts).expect("open");
    let zipf = Zipf::new(convs, 1.0);
    let mut rng = Rng::new(42);
    let start = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for _ in 0..messages {
        let conv = zipf.sample(&mut rng);
        let sender = UserId(conv * 8 + rng.below(2 + conv % 7));
        batch.push((
            ConversationId(conv),
            NewMessage::text(sender, &workload::text(&mut rng, 100.0)),
        ));
        if batch.len() == 1000 {
            store
                .append_batch(std::mem::take(&mut batch))
                .expect("append");
        }
    }
    store.append_batch(batch).expect("append");
    store.flush().expect("flush");
    while store.stats().pending_compaction_bytes > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let a last triggered compaction finish.
    std::thread::sleep(Duration::from_millis(500));
    let ingest = start.elapsed();

    let s0 = store.stats();
    for _ in 0..20_000 {
        let conv = ConversationId(zipf.sample(&mut rng));
        store.latest(conv, 50).expect("latest");
    }
    let s1 = store.stats();
    // Page 20 of the busiest conversations back to their start.
    for c in 0..20 {
        let conv = ConversationId(c);
        let mut page = store.latest(conv, 50).expect("latest");
        while let Some(first) = page.first().map(|m| m.id) {
            if first == MessageId(1) {
                break;
            }
            page = store.before(conv, first, 50).expect("before");
        }
    }
    let s2 = store.stats();
    Row {
        policy: name,
        ingest,
        write_amp: s2.write_amplification(),
        space_amp: s2.space_amplification(),
        segments: s2.segments,
        latest_segments: (s1.segments_read - s0.segments_read) as f64
            / (s1.reads - s0.reads) as f64,
        paging_segments: (s2.segments_read - s1.segments_read) as f64
            / (s2.reads - s1.reads) as f64,
        compactions: s2.compactions,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let convs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    println!(
        "{messages} messages, {convs} conversations (Zipf 1.0), ~100-byte texts, 4 MiB memtables\n"
    );
    println!("| policy | ingest + settle | write amp | space amp | segments | segments per latest-50 | segments per page back | compactions |");
    println!("|---|---|---|---|---|---|---|---|");
    for (policy, name) in [
        (CompactionPolicy::Leveled, "leveled"),
        (CompactionPolicy::Tiered, "tiered"),
    ] {
        let r = run(policy, name, messages, convs);
        println!(
            "| {} | {:.1?} | {:.2} | {:.3} | {} | {:.2} | {:.2} | {} |",
            r.policy,
            r.ingest,
            r.write_amp,
            r.space_amp,
            r.segments,
            r.latest_segments,
            r.paging_segments,
            r.compactions
        );
    }
}
