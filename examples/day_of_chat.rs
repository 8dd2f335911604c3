//! Writes a day of synthetic chat into a store, reads it back the way a client would, and
//! prints what it did. Run: `cargo run --release --example day_of_chat [DIR]`.

use std::time::Instant;

use chatstore::{ConversationId, NewMessage, Options, Store, UserId};

/// A small deterministic generator (xorshift) so runs are repeatable without extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "hey", "are", "you", "coming", "tonight", "lol", "ok", "see", "you", "there", "the", "train",
    "is", "late", "again", "what", "time", "dinner", "sounds", "good", "thanks", "love", "it",
    "call", "me", "later", "on", "my", "way", "haha", "yes", "no", "maybe", "tomorrow",
];

fn main() -> chatstore::Result<()> {
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => std::env::temp_dir().join(format!("chatstore-day-{}", std::process::id())),
    };
    let conversations = 5_000u64;
    let messages = 200_000u64;
    let store = Store::open_with(&dir, Options::default())?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for _ in 0..messages {
        // Skewed choice: a few conversations are very busy, most are quiet.
        let spread = rng.below(conversations) + 1;
        let conv = ConversationId(rng.below(spread));
        let words = 3 + rng.below(15) as usize;
        let text: Vec<&str> = (0..words)
            .map(|_| WORDS[rng.below(WORDS.len() as u64) as usize])
            .collect();
        let sender = UserId(conv.0 * 8 + rng.below(4));
        batch.push((conv, NewMessage::text(sender, &text.join(" "))));
        if batch.len() == 1000 {
            store.append_batch(std::mem::take(&mut batch))?;
        }
    }
    store.append_batch(batch)?;
    let ingest = started.elapsed();

    let started = Instant::now();
    let mut read = 0usize;
    for c in 0..1000 {
        read += store.latest(ConversationId(c), 50)?.len();
    }
    let reads = started.elapsed();
    store.flush()?;
    let stats = store.stats();

    println!("store directory: {}", dir.display());
    println!(
        "appended {messages} messages over {conversations} conversations in {:.2?} ({:.0} msgs/s, durable, batches of 1000)",
        ingest,
        messages as f64 / ingest.as_secs_f64()
    );
    println!(
        "read the newest 50 of 1000 conversations ({read} messages) in {:.2?}",
        reads
    );
    println!(
        "on disk: {} segments, {} bytes ({:.1} bytes/message, {:.2}x the logical size)",
        stats.segments,
        stats.segment_bytes,
        stats.segment_bytes as f64 / stats.segment_messages.max(1) as f64,
        stats.segment_bytes as f64 / stats.segment_logical_bytes.max(1) as f64
    );
    let busiest = store.latest(ConversationId(0), 3)?;
    for m in &busiest {
        println!(
            "conversation 0 #{}: {}",
            m.id,
            m.text().unwrap_or("<binary>")
        );
    }
    Ok(())
}
