//! Compares compaction policies on the Zipf chat workload: write amplification, space
//! amplification and segments touched per read. Prints a markdown table.
//!
//! `cargo run --release --example compaction_policies [MESSAGES] [CONVERSATIONS]`
//!
//! `cargo run --release --example compaction_policies sustained [MESSAGES] [CONVERSATIONS]`
//! instead writes MESSAGES (default 5 M) over CONVERSATIONS (default 500 K) with default options
//! (buffered) and prints the ingest curve per million: throughput inside the write calls,
//! write stalls, level shape, pending compaction, write amplification. A quick check of a
//! change before the comparison harness's `long` preset. Environment overrides of the
//! defaults, for experiments: `FLUSH_CODEC` / `CODEC` (none, lz4, zstdN), `COMPACTION_THREADS`,
//! `LEVEL_BASE_MIB`, `L0_TRIGGER`, `LEVEL0_RUNS`.
//!
//! `cargo run --release --example compaction_policies merge-cost [ROUNDS]` times the two
//! merges a level-0 batch goes through under writes, on the same inputs each round (a store
//! of 3 M messages over 500 K conversations in level 1, then eight flushed segments): the
//! run made within level 0 (`Store::compact_step`), then its merge into level 1
//! (`Store::compact`). Wall time of each, so compare builds by running them one after the
//! other on a quiet machine.
//!
//! `cargo run --release --example compaction_policies compaction-cost [CYCLES]` measures what
//! compaction costs under writes, without the writers' noise: a store of 6 M messages over
//! 500 K conversations compacted (level 1 over its budget), then CYCLES (default 16) times
//! four flushed segments of 110 K messages each, after each of which every compaction the
//! background thread would run under writes is run at once (`Store::compact_step_under_writes`)
//! and timed. The data written is the same every run, yet compaction's bytes vary by up to
//! ~10 % between runs of one build (most likely where memtables switch during the setup):
//! compare builds by the total time of runs that wrote about the same bytes.
//!
//! `cargo run --release --example compaction_policies wal-sync [MESSAGES] [ROUNDS]` measures
//! durable writes with and without reused WAL files (`Options::recycled_wal_files` 0 and 2,
//! alternated ROUNDS times, default 2): each round writes MESSAGES (default 3 M) in
//! `Durability::Sync` batches of 100 over 500 K conversations with default options
//! (compaction in the background), and prints msgs/s, the median and 99th percentile of a
//! batch's call, WAL syncs and files reused.

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

/// The ingest curve under default options (see the module docs).
fn sustained(messages: u64, convs: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let codec = |var: &str| match std::env::var(var).ok()?.as_str() {
        "none" => Some(chatstore::Compression::None),
        "lz4" => Some(chatstore::Compression::Lz4),
        z => z
            .strip_prefix("zstd")?
            .parse()
            .ok()
            .map(chatstore::Compression::Zstd),
    };
    let mut opts = Options {
        durability: chatstore::Durability::Buffered {
            interval: Duration::from_millis(500),
        },
        ..Options::default()
    };
    // Codec experiments: FLUSH_CODEC / CODEC = none | lz4 | zstdN.
    if let Some(c) = codec("FLUSH_CODEC") {
        opts.flush_compression = c;
    }
    if let Some(c) = codec("CODEC") {
        opts.compression = c;
    }
    // COMPACTION_THREADS = n: how many threads one compaction's merge is cut over.
    if let Some(n) = std::env::var("COMPACTION_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.compaction_threads = n;
    }
    // LEVEL_BASE_MIB = n: level 1's budget; L0_TRIGGER = n: level-0 segments per compaction.
    if let Some(n) = std::env::var("LEVEL_BASE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        opts.level_base_bytes = n << 20;
    }
    if let Some(n) = std::env::var("L0_TRIGGER")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.l0_compaction_trigger = n;
    }
    // LEVEL0_RUNS = n: runs a level-0 batch may gather within level 0 (0, off, by default).
    if let Some(n) = std::env::var("LEVEL0_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.level0_max_runs = n;
    }
    let store = Store::open_with(dir.path(), opts).expect("open");
    let zipf = Zipf::new(convs, 1.0);
    let mut rng = Rng::new(42);
    // Texts are made up front so that the clock measures the store only.
    let texts: Vec<String> = (0..262_144)
        .map(|_| workload::text(&mut rng, 100.0))
        .collect();
    println!("{messages} messages, {convs} conversations (Zipf 1.0), default options, buffered\n");
    println!("| messages | msgs/s | stalled s (flush / level 0) | pending MiB | files per level | write amp | compactions |");
    println!("|---:|---:|---:|---:|---|---:|---:|");
    let slice = 1_000_000u64;
    let mut in_calls = Duration::ZERO;
    let mut written = 0u64;
    while written < messages {
        let mut slice_time = Duration::ZERO;
        let end = (written + slice).min(messages);
        while written < end {
            let n = (end - written).min(1000);
            let batch: Vec<_> = (0..n)
                .map(|_| {
                    let conv = zipf.sample(&mut rng);
                    let sender = UserId(conv * 8 + rng.below(2 + conv % 7));
                    let text = &texts[rng.below(texts.len() as u64) as usize];
                    (ConversationId(conv), NewMessage::text(sender, text))
                })
                .collect();
            let t = Instant::now();
            store.append_batch(batch).expect("append");
            slice_time += t.elapsed();
            written += n;
        }
        in_calls += slice_time;
        let s = store.stats();
        let levels: Vec<String> = s.segments_per_level.iter().map(u64::to_string).collect();
        println!(
            "| {:.0} M | {:.0} k | {:.1} ({:.1} / {:.1}) | {:.0} | {} | {:.2} | {} |",
            written as f64 / 1e6,
            slice as f64 / slice_time.as_secs_f64() / 1e3,
            s.write_stall_micros as f64 / 1e6,
            s.write_stall_flush_micros as f64 / 1e6,
            s.write_stall_level0_micros as f64 / 1e6,
            s.pending_compaction_bytes as f64 / (1 << 20) as f64,
            levels.join("/"),
            s.write_amplification(),
            s.compactions,
        );
    }
    store.flush().expect("flush");
    let settle = Instant::now();
    while store.stats().pending_compaction_bytes > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = store.stats();
    println!(
        "\nsettled in {:.1?}: segments {:?}, {:.3} bytes on disk per logical byte, write amp {:.2}",
        settle.elapsed(),
        s.segments_per_level,
        s.space_amplification(),
        s.write_amplification(),
    );
    println!(
        "\noverall {:.0} k msgs/s, stalled {:.1} s ({:.1} s for the flush, {:.1} s for level 0) of {:.1} s, compaction read {} MiB, wrote {} MiB ({} MiB copied as stored)",
        messages as f64 / in_calls.as_secs_f64() / 1e3,
        s.write_stall_micros as f64 / 1e6,
        s.write_stall_flush_micros as f64 / 1e6,
        s.write_stall_level0_micros as f64 / 1e6,
        in_calls.as_secs_f64(),
        s.compaction_bytes_read >> 20,
        s.compaction_bytes_written >> 20,
        s.compaction_bytes_copied >> 20,
    );
}

/// Writes `n` Zipf-chosen messages in batches of 1000.
fn write_zipf(store: &Store, zipf: &Zipf, rng: &mut Rng, n: u64) {
    let mut batch = Vec::with_capacity(1000);
    for _ in 0..n {
        let conv = zipf.sample(rng);
        let sender = UserId(conv * 8 + rng.below(3));
        batch.push((
            ConversationId(conv),
            NewMessage::text(sender, &workload::text(rng, 100.0)),
        ));
        if batch.len() == 1000 {
            store
                .append_batch(std::mem::take(&mut batch))
                .expect("append");
        }
    }
}

/// Copies the files of directory `from` into a new temporary directory.
fn copy_dir(from: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name");
        std::fs::copy(&path, dir.path().join(name)).expect("copy");
    }
    dir
}

fn merge_cost(rounds: usize) {
    let opts = || Options {
        durability: chatstore::Durability::Buffered {
            interval: Duration::from_millis(500),
        },
        background_compaction: false,
        // The two merges a batch went through when level 0 gathered runs.
        level0_max_runs: 4,
        ..Options::default()
    };
    let base = tempfile::tempdir().expect("temp dir");
    {
        let store = Store::open_with(base.path(), opts()).expect("open");
        let zipf = Zipf::new(500_000, 1.0);
        let mut rng = Rng::new(7);
        write_zipf(&store, &zipf, &mut rng, 3_000_000);
        store.compact().expect("compact");
        for _ in 0..4 {
            write_zipf(&store, &zipf, &mut rng, 110_000);
            store.flush().expect("flush");
        }
        println!(
            "inputs: segments per level {:?}",
            store.stats().segments_per_level
        );
        store.close().expect("close");
    }
    println!("| round | run within level 0 | merge into level 1 | compaction wrote MiB | copied as stored MiB |");
    println!("|---:|---:|---:|---:|---:|");
    for round in 1..=rounds {
        let dir = copy_dir(base.path());
        let store = Store::open_with(dir.path(), opts()).expect("open");
        let t = Instant::now();
        store.compact_step().expect("compact step");
        let run = t.elapsed();
        let t = Instant::now();
        store.compact().expect("compact");
        let merge = t.elapsed();
        let s = store.stats();
        println!(
            "| {round} | {:.3} s | {:.3} s | {} | {} |",
            run.as_secs_f64(),
            merge.as_secs_f64(),
            s.compaction_bytes_written >> 20,
            s.compaction_bytes_copied >> 20
        );
    }
}

fn wal_sync() {
    let mut args = std::env::args().skip(2);
    let messages: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(3_000_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    println!("| recycled_wal_files | msgs/s | batch p50 µs | batch p99 µs | WAL syncs | files reused | stalled s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for _ in 0..rounds {
        for recycled in [0, 2] {
            let dir = tempfile::tempdir().expect("temp dir");
            let opts = Options {
                recycled_wal_files: recycled,
                ..Options::default()
            };
            let store = Store::open_with(dir.path(), opts).expect("open");
            let zipf = Zipf::new(500_000, 1.0);
            let mut rng = Rng::new(11);
            let mut calls = Vec::with_capacity((messages / 100) as usize);
            let mut busy = Duration::ZERO;
            let mut batch = Vec::with_capacity(100);
            for _ in 0..messages {
                let conv = zipf.sample(&mut rng);
                let sender = UserId(conv * 8 + rng.below(3));
                batch.push((
                    ConversationId(conv),
                    NewMessage::text(sender, &workload::text(&mut rng, 100.0)),
                ));
                if batch.len() == 100 {
                    let t = Instant::now();
                    store
                        .append_batch(std::mem::take(&mut batch))
                        .expect("append");
                    let took = t.elapsed();
                    busy += took;
                    calls.push(took);
                }
            }
            calls.sort_unstable();
            let at = |q: f64| calls[((calls.len() - 1) as f64 * q) as usize].as_micros();
            let s = store.stats();
            println!(
                "| {recycled} | {:.0} k | {} | {} | {} | {} | {:.1} |",
                messages as f64 / busy.as_secs_f64() / 1e3,
                at(0.5),
                at(0.99),
                s.wal_syncs,
                s.wal_files_recycled,
                s.write_stall_micros as f64 / 1e6,
            );
            store.close().expect("close");
        }
    }
}

fn compaction_cost(cycles: usize) {
    let opts = Options {
        durability: chatstore::Durability::Buffered {
            interval: Duration::from_millis(500),
        },
        background_compaction: false,
        ..Options::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_with(dir.path(), opts).expect("open");
    let zipf = Zipf::new(500_000, 1.0);
    let mut rng = Rng::new(7);
    // Over level 1's budget once compacted: the first steps move the excess to level 2, as
    // in a store that has been written to for a while.
    write_zipf(&store, &zipf, &mut rng, 6_000_000);
    store.compact().expect("compact");
    let start = store.stats();
    println!("| cycle | compaction | steps (s) | segments per level after | wrote MiB (copied) |");
    println!("|---:|---:|---:|---|---:|");
    let mut total = Duration::ZERO;
    for cycle in 1..=cycles {
        for _ in 0..4 {
            write_zipf(&store, &zipf, &mut rng, 110_000);
            store.flush().expect("flush");
        }
        let before = store.stats();
        let t = Instant::now();
        let mut steps = Vec::new();
        loop {
            let step = Instant::now();
            if !store.compact_step_under_writes().expect("step") {
                break;
            }
            steps.push(format!("{:.2}", step.elapsed().as_secs_f64()));
        }
        let took = t.elapsed();
        total += took;
        let s = store.stats();
        println!(
            "| {cycle} | {:.3} s | {} | {:?} | {} ({}) |",
            took.as_secs_f64(),
            steps.join(" + "),
            s.segments_per_level,
            (s.compaction_bytes_written - before.compaction_bytes_written) >> 20,
            (s.compaction_bytes_copied - before.compaction_bytes_copied) >> 20,
        );
    }
    let s = store.stats();
    println!(
        "\n{cycles} cycles ({:.2} M messages): compaction {:.2} s, wrote {} MiB ({} copied, {} of them undecoded), read {} MiB; {:.3} bytes on disk per logical byte",
        cycles as f64 * 0.44,
        total.as_secs_f64(),
        (s.compaction_bytes_written - start.compaction_bytes_written) >> 20,
        (s.compaction_bytes_copied - start.compaction_bytes_copied) >> 20,
        (s.compaction_bytes_copied_undecoded - start.compaction_bytes_copied_undecoded) >> 20,
        (s.compaction_bytes_read - start.compaction_bytes_read) >> 20,
        s.space_amplification(),
    );
    store.close().expect("close");
}

/// The command line's second argument as a number, or `default`.
fn count_arg(default: usize) -> usize {
    std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("compaction-cost") => return compaction_cost(count_arg(16)),
        Some("merge-cost") => return merge_cost(count_arg(3)),
        Some("wal-sync") => return wal_sync(),
        _ => {}
    }
    if std::env::args().nth(1).as_deref() == Some("sustained") {
        let mut args = std::env::args().skip(2);
        let messages = args
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(5_000_000);
        let convs = args.next().and_then(|a| a.parse().ok()).unwrap_or(500_000);
        sustained(messages, convs);
        return;
    }
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
