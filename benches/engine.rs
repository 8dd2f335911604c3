//! Criterion benchmarks of the engine on a chat-shaped workload.
//!
//! ```sh
//! cargo bench --bench engine              # measure
//! cargo bench --bench engine -- --test    # run every benchmark once, as a smoke test
//! ```
//!
//! The workload: ~100-byte messages of word-like text (word frequencies follow a Zipf law),
//! spread over many conversations with a Zipf-like skew (a few busy conversations, a long tail
//! of quiet ones), 1:1 chats and groups with their own members, an occasional reply or mention.
//! Everything is generated from fixed seeds, so every run sees the same data.
//!
//! - `append/*` write into a fresh store in a temp directory; the store keeps growing over the
//!   run, so memtable flushes (and any write stalls) are part of what is measured.
//! - `read/*` run against a store of 200 000 messages over 5 000 conversations that was flushed
//!   to segments before measuring. Decoded blocks are cached, so these are warm-cache figures.
//! - `last_id/*` look up the last id of conversations that only a segment holds (500 000 of
//!   them), with dense and with random 64-bit conversation ids.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chatstore::{ConversationId, Durability, MessageId, NewMessage, Options, Stats, Store, UserId};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// Conversations in every workload.
const CONVERSATIONS: usize = 5_000;
/// Messages in the read store.
const READ_STORE_MESSAGES: usize = 200_000;
/// Zipf exponent of conversation activity (and of how often a conversation is read).
const CONVERSATION_SKEW: f64 = 1.0;

/// Common chat words, most frequent first (the text generator picks them with a Zipf law).
const WORDS: &[&str] = &[
    "i",
    "you",
    "the",
    "to",
    "a",
    "it",
    "is",
    "and",
    "ok",
    "that",
    "in",
    "me",
    "my",
    "so",
    "we",
    "for",
    "do",
    "lol",
    "yes",
    "no",
    "on",
    "just",
    "what",
    "be",
    "are",
    "have",
    "can",
    "was",
    "not",
    "with",
    "at",
    "this",
    "its",
    "but",
    "im",
    "get",
    "if",
    "like",
    "go",
    "haha",
    "know",
    "up",
    "now",
    "see",
    "will",
    "good",
    "out",
    "all",
    "think",
    "u",
    "too",
    "time",
    "there",
    "going",
    "one",
    "got",
    "thanks",
    "yeah",
    "how",
    "when",
    "want",
    "today",
    "tomorrow",
    "tonight",
    "later",
    "come",
    "here",
    "back",
    "still",
    "need",
    "sure",
    "really",
    "maybe",
    "oh",
    "well",
    "right",
    "home",
    "work",
    "then",
    "call",
    "love",
    "sorry",
    "let",
    "about",
    "make",
    "from",
    "they",
    "did",
    "would",
    "could",
    "should",
    "hey",
    "great",
    "nice",
    "again",
    "dinner",
    "lunch",
    "coffee",
    "meeting",
    "train",
    "late",
    "early",
    "weekend",
    "morning",
    "night",
    "soon",
    "already",
    "never",
    "always",
    "something",
    "anything",
    "nothing",
    "people",
    "movie",
    "game",
    "photo",
    "link",
    "send",
    "sent",
    "check",
    "look",
    "said",
    "tell",
    "told",
    "ask",
    "wait",
    "leave",
    "left",
    "stay",
    "meet",
    "place",
    "party",
    "birthday",
    "friday",
    "saturday",
    "sunday",
    "monday",
    "office",
    "school",
    "class",
    "exam",
    "project",
    "deadline",
    "update",
    "plan",
    "idea",
    "problem",
    "awesome",
    "tired",
    "hungry",
    "busy",
    "free",
    "ready",
    "happy",
    "funny",
    "crazy",
    "weird",
    "exactly",
    "definitely",
    "probably",
    "honestly",
    "literally",
    "omg",
    "btw",
    "idk",
    "tbh",
    "brb",
    "ttyl",
    "pizza",
    "beer",
    "car",
    "bus",
    "traffic",
    "rain",
    "weather",
    "phone",
    "battery",
    "charger",
    "password",
    "wifi",
    "ticket",
];

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^s`.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.gen();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A deterministic stream of chat messages.
struct Workload {
    rng: StdRng,
    conversations: Zipf,
    words: Zipf,
    /// Conversation (0-based index) of each activity rank, so busy conversations are spread
    /// over the key space instead of being the lowest ids.
    by_rank: Vec<usize>,
    /// Messages generated so far per conversation index: the id the store has given the last
    /// one, since every generated message is appended, in order, to a fresh store.
    counts: Vec<u64>,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Self::over(seed, CONVERSATIONS)
    }

    /// The same stream over `conversations` conversations.
    fn over(seed: u64, conversations: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut by_rank: Vec<usize> = (0..conversations).collect();
        by_rank.shuffle(&mut rng);
        Workload {
            rng,
            conversations: Zipf::new(conversations, CONVERSATION_SKEW),
            words: Zipf::new(WORDS.len(), 1.0),
            by_rank,
            counts: vec![0; conversations],
        }
    }

    fn conversation_id(index: usize) -> ConversationId {
        ConversationId(1_000 + index as u64)
    }

    /// A conversation index drawn with the activity skew.
    fn pick(&mut self) -> usize {
        self.by_rank[self.conversations.sample(&mut self.rng)]
    }

    /// Members of a conversation: most are 1:1 chats, every fifth is a group of 3 to 22.
    fn members(index: usize) -> u64 {
        if index.is_multiple_of(5) {
            3 + (index % 20) as u64
        } else {
            2
        }
    }

    fn member(&mut self, index: usize) -> UserId {
        UserId(index as u64 * 64 + self.rng.gen_range(0..Self::members(index)))
    }

    /// 60 to 140 bytes (100 on average) of lower-case words.
    fn text(&mut self) -> String {
        let target = self.rng.gen_range(60..=140);
        let mut s = String::with_capacity(target + 16);
        while s.len() < target {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(WORDS[self.words.sample(&mut self.rng)]);
        }
        if self.rng.gen_ratio(1, 4) {
            s.push(if self.rng.gen() { '?' } else { '!' });
        }
        s
    }

    fn message(&mut self) -> (ConversationId, NewMessage) {
        let index = self.pick();
        let text = self.text();
        let mut m = NewMessage::text(self.member(index), &text);
        let before = self.counts[index];
        if before > 0 && self.rng.gen_ratio(1, 20) {
            let back = self.rng.gen_range(0..before.min(20));
            m = m.with_reply_to(MessageId(before - back));
        }
        if Self::members(index) > 2 && self.rng.gen_ratio(1, 25) {
            let who = self.member(index);
            m = m.with_mentions(vec![who]);
        }
        self.counts[index] += 1;
        (Self::conversation_id(index), m)
    }

    fn batch(&mut self, n: usize) -> Vec<(ConversationId, NewMessage)> {
        (0..n).map(|_| self.message()).collect()
    }
}

fn open(dir: &TempDir, durability: Durability) -> Store {
    let options = Options {
        durability,
        ..Options::default()
    };
    Store::open_with(dir.path(), options).expect("open store")
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("chatstore-bench-")
        .tempdir()
        .expect("temp dir")
}

fn report(name: &str, s: &Stats) {
    eprintln!(
        "  [{name}] appended {} messages in {} write groups, {} WAL fsyncs, {} flushes, \
         {} write stalls ({:.1} ms stalled)",
        s.messages_appended,
        s.write_groups,
        s.wal_syncs,
        s.flushes,
        s.write_stalls,
        s.write_stall_micros as f64 / 1000.0
    );
}

const BUFFERED: Durability = Durability::Buffered {
    interval: Duration::from_millis(100),
};

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    // Each iteration is milliseconds of fsync or a 1000-message batch: flat sampling keeps the
    // run short, and the store's growth over the run is part of the measurement.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(30);

    for (name, durability, seed) in [
        ("durable_batch_1000", Durability::Sync, 1),
        ("buffered_batch_1000", BUFFERED, 2),
    ] {
        let dir = temp_dir();
        let store = open(&dir, durability);
        let mut workload = Workload::new(seed);
        group.throughput(Throughput::Elements(1000));
        group.bench_function(name, |b| {
            b.iter_batched(
                || workload.batch(1000),
                |batch| store.append_batch(batch).expect("append_batch"),
                BatchSize::LargeInput,
            )
        });
        report(name, &store.stats());
        store.close().expect("close");
    }

    let dir = temp_dir();
    let store = open(&dir, Durability::Sync);
    let mut workload = Workload::new(3);
    group.throughput(Throughput::Elements(1));
    group.bench_function("durable_single", |b| {
        b.iter_batched(
            || workload.message(),
            |(conv, m)| store.append(conv, m).expect("append"),
            BatchSize::SmallInput,
        )
    });
    report("durable_single", &store.stats());
    store.close().expect("close");
    group.finish();
}

/// A store of `READ_STORE_MESSAGES` messages, all flushed to segments, and the workload that
/// wrote it (its counts tell how long each conversation is).
fn read_store() -> (TempDir, Store, Workload) {
    let started = Instant::now();
    let dir = temp_dir();
    let store = open(&dir, BUFFERED);
    let mut workload = Workload::new(42);
    for _ in 0..READ_STORE_MESSAGES / 1000 {
        store
            .append_batch(workload.batch(1000))
            .expect("append_batch");
    }
    store.flush().expect("flush");
    let s = store.stats();
    let conversations = workload.counts.iter().filter(|&&n| n > 0).count();
    eprintln!(
        "  [read store] {} messages over {conversations} conversations (longest {}) in {} \
         segments, {} bytes: {:.1} bytes/message on disk, {:.2}x the logical size; built in \
         {:.2?}",
        s.segment_messages,
        workload.counts.iter().max().copied().unwrap_or(0),
        s.segments,
        s.segment_bytes,
        s.segment_bytes as f64 / s.segment_messages.max(1) as f64,
        s.segment_bytes as f64 / s.segment_logical_bytes.max(1) as f64,
        started.elapsed()
    );
    (dir, store, workload)
}

fn read(c: &mut Criterion) {
    let (_dir, store, mut workload) = read_store();
    let mut group = c.benchmark_group("read");

    // Readers open busy conversations more often: draw them with the same skew as the writes.
    let mut picks = Vec::with_capacity(1 << 14);
    while picks.len() < 1 << 14 {
        let i = workload.pick();
        if workload.counts[i] > 0 {
            picks.push(Workload::conversation_id(i));
        }
    }
    let mut next = 0usize;
    group.bench_function("latest_50", |b| {
        b.iter(|| {
            let conv = picks[next % picks.len()];
            next += 1;
            store.latest(conv, 50).expect("latest")
        })
    });

    // The longest conversation, paged from the newest message back to the first.
    let (longest, &len) = workload
        .counts
        .iter()
        .enumerate()
        .max_by_key(|&(_, n)| *n)
        .expect("conversations");
    let conv = Workload::conversation_id(longest);
    // About a millisecond per pass: fewer samples keep the run near its five-second target.
    group.sample_size(50);
    group.throughput(Throughput::Elements(len));
    group.bench_function("before_paging", |b| {
        b.iter(|| {
            let mut page = store.latest(conv, 50).expect("latest");
            let mut seen = page.len();
            while let Some(oldest) = page.first().map(|m| m.id) {
                if oldest.0 == 1 {
                    break;
                }
                page = store.before(conv, oldest, 50).expect("before");
                seen += page.len();
            }
            black_box(seen)
        })
    });
    group.finish();

    let s = store.stats();
    eprintln!(
        "  [read store] {} reads, {} segment reads, block cache {} hits / {} misses, {} bytes cached",
        s.reads, s.segments_read, s.block_cache_hits, s.block_cache_misses, s.block_cache_bytes
    );
    store.close().expect("close");
}

/// `last_id/*`: the last id of a conversation that only a segment holds (what every append
/// to a conversation missing from the writer's cache and the memtables asks), in a segment of
/// 500 000 conversations, one message each: conversation ids dense (a counter) or random 64-bit.
fn last_id(c: &mut Criterion) {
    let mut group = c.benchmark_group("last_id");
    for (name, dense) in [("dense_ids", true), ("random_ids", false)] {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open_with(dir.path(), Options::default()).expect("open");
        let mut rng = StdRng::seed_from_u64(11);
        let convs: Vec<u64> = (0..500_000u64)
            .map(|i| if dense { i + 1 } else { rng.gen::<u64>() >> 1 })
            .collect();
        for chunk in convs.chunks(1000) {
            let batch = chunk
                .iter()
                .map(|&c| (ConversationId(c), NewMessage::text(UserId(1), "hi")))
                .collect();
            store.append_batch(batch).expect("append");
        }
        store.flush().expect("flush");
        let mut order = convs.clone();
        order.shuffle(&mut rng);
        let mut at = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                at = (at + 1) % order.len();
                black_box(store.last_id(ConversationId(order[at])).expect("last id"))
            })
        });
    }
    group.finish();
}

/// One memtable of ~16 MiB (the default size) written to a segment by `Store::flush`, as the
/// background flush does under sustained ingest: 100 000 messages over 500 000 conversations
/// (the comparison harness's long preset), so most rows belong to a conversation of their own
/// and their content lies scattered through the memtable's chunks. Filling the memtable is not
/// measured; compaction is off, so nothing else runs beside the flush.
fn flush(c: &mut Criterion) {
    let mut group = c.benchmark_group("flush");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    let dir = temp_dir();
    let options = Options {
        durability: BUFFERED,
        background_compaction: false,
        // Nothing flushes while the batch is being filled in.
        memtable_bytes: 256 << 20,
        memory_budget_bytes: 1 << 30,
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), options).expect("open store");
    let mut workload = Workload::over(4, 500_000);
    const MESSAGES: usize = 100_000;
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("memtable_100k_messages_500k_conversations", |b| {
        b.iter_batched(
            || {
                for _ in 0..MESSAGES / 1000 {
                    store.append_batch(workload.batch(1000)).expect("append");
                }
            },
            |()| store.flush().expect("flush"),
            BatchSize::PerIteration,
        )
    });
    group.finish();
    store.close().expect("close");
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots();
    targets = append, read, last_id, flush
}
criterion_main!(benches);
