//! The chat workload of the comparison: presets, conversation membership, the message stream
//! and the facts every engine's process needs about it (per-conversation counters).
//!
//! The text and distribution generators are the ones the examples use
//! (`examples/support/workload.rs`, included by path), so the figures here and there describe
//! the same data.

#[path = "../../examples/support/workload.rs"]
mod gen;

use std::path::Path;

pub use gen::{Rng, Zipf};
use serde::{Deserialize, Serialize};

/// Median size of a generated text, in bytes.
pub const TEXT_MEDIAN: f64 = 100.0;
/// Messages per write batch (one fsync per batch in the durable phase).
pub const BATCH: usize = 1000;
/// Page size of newest-N reads, history paging and unread fetches.
pub const PAGE: u64 = 50;
/// Bytes a message weighs logically: key (conversation + id), sender, timestamp, content.
pub const LOGICAL_OVERHEAD: u64 = 16 + 8 + 8;

/// The size of a run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Preset {
    pub name: &'static str,
    pub messages: u64,
    pub conversations: usize,
    /// Newest-50 reads timed (after a tenth as many untimed warm-up reads).
    pub reads: u64,
    /// Users who reconnect and fetch their unread messages.
    pub unread_users: u64,
    /// Messages written after the store is built, then lost to a SIGKILL: the WAL tail.
    pub tail: u64,
    pub seed: u64,
    /// Messages per slice of the sustained-ingest curve (a sample of the engine's state after
    /// each slice of the ingest phases).
    pub slice: u64,
    /// Runs only the two ingest phases (durable and buffered): the long presets measure
    /// sustained ingest, not reads.
    pub ingest_only: bool,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tiny",
        messages: 50_000,
        conversations: 1_250,
        reads: 5_000,
        unread_users: 500,
        tail: 20_000,
        seed: 42,
        slice: 5_000,
        ingest_only: false,
    },
    Preset {
        name: "quick",
        messages: 200_000,
        conversations: 5_000,
        reads: 20_000,
        unread_users: 2_000,
        tail: 50_000,
        seed: 42,
        slice: 20_000,
        ingest_only: false,
    },
    Preset {
        name: "full",
        messages: 2_000_000,
        conversations: 50_000,
        reads: 100_000,
        unread_users: 10_000,
        tail: 200_000,
        seed: 42,
        slice: 200_000,
        ingest_only: false,
    },
    // Sustained ingest: 20 M messages over 500 K conversations, long enough for compaction
    // debt to build up. Ingest phases only; a curve point every million messages.
    Preset {
        name: "long",
        messages: 20_000_000,
        conversations: 500_000,
        reads: 0,
        unread_users: 0,
        tail: 0,
        seed: 42,
        slice: 1_000_000,
        ingest_only: true,
    },
    // Three times `long` (same seed and conversations, so the same first 20 M messages):
    // whether the curve holds as the store keeps growing.
    Preset {
        name: "long-60m",
        messages: 60_000_000,
        conversations: 500_000,
        reads: 0,
        unread_users: 0,
        tail: 0,
        seed: 42,
        slice: 3_000_000,
        ingest_only: true,
    },
    // The first quarter of `long` (same seed and conversations, so the same first 5 M
    // messages): a check of the long preset in a fraction of its time.
    Preset {
        name: "long-5m",
        messages: 5_000_000,
        conversations: 500_000,
        reads: 0,
        unread_users: 0,
        tail: 0,
        seed: 42,
        slice: 1_000_000,
        ingest_only: true,
    },
];

pub fn preset(name: &str) -> Option<Preset> {
    PRESETS.iter().copied().find(|p| p.name == name)
}

/// Conversation `index` (0 = the busiest under the Zipf law) is stored as id `index + 1` by
/// every engine, since chatstore's chat model numbers conversations from 1.
pub fn conv_id(index: usize) -> u64 {
    index as u64 + 1
}

/// The static part of the workload: who is in which conversation.
pub struct Workload {
    pub preset: Preset,
    pub zipf: Zipf,
    /// Members of each conversation (by index), user ids from 1.
    pub members: Vec<Vec<u64>>,
    /// Conversations (by index) of each user (indexed by user id; 0 unused).
    pub convs_of: Vec<Vec<u32>>,
}

impl Workload {
    pub fn new(preset: Preset) -> Workload {
        let m = preset.conversations;
        let users = m as u64;
        let mut rng = Rng::new(preset.seed ^ 0x6d65_6d62_6572_7321);
        let mut members = Vec::with_capacity(m);
        let mut convs_of = vec![Vec::new(); users as usize + 1];
        for c in 0..m {
            let n = 2 + rng.below(7) as usize; // 2..=8 members
            let mut mem: Vec<u64> = Vec::with_capacity(n);
            while mem.len() < n {
                let u = 1 + rng.below(users);
                if !mem.contains(&u) {
                    mem.push(u);
                }
            }
            for &u in &mem {
                convs_of[u as usize].push(c as u32);
            }
            members.push(mem);
        }
        Workload {
            preset,
            zipf: Zipf::new(m, 1.0),
            members,
            convs_of,
        }
    }

    pub fn users(&self) -> u64 {
        self.preset.conversations as u64
    }

    /// The message stream: `count` messages from `seed`, each given as (conversation index,
    /// sender, text).
    pub fn stream(&self, seed: u64, count: u64, mut f: impl FnMut(usize, u64, &str)) {
        let mut rng = Rng::new(seed);
        for _ in 0..count {
            let c = self.zipf.sample(&mut rng) as usize;
            let mem = &self.members[c];
            let sender = mem[rng.below(mem.len() as u64) as usize];
            let text = gen::text(&mut rng, TEXT_MEDIAN);
            f(c, sender, &text);
        }
    }

    /// The main data set.
    pub fn main_stream(&self, f: impl FnMut(usize, u64, &str)) {
        self.stream(self.preset.seed, self.preset.messages, f)
    }

    /// The tail written before the simulated crash.
    pub fn tail_stream(&self, f: impl FnMut(usize, u64, &str)) {
        self.stream(self.preset.seed ^ 0x7a11_7a11, self.preset.tail, f)
    }

    /// Users who reconnect in the unread phase: spread evenly over the user ids.
    pub fn reconnecting_users(&self) -> Vec<u64> {
        let n = self.preset.unread_users.min(self.users()).max(1);
        let step = self.users() / n;
        (0..n).map(|k| 1 + k * step).collect()
    }

    /// Index of the message after which the reconnecting users went offline.
    pub fn offline_at(&self) -> u64 {
        self.preset.messages * 9 / 10
    }
}

/// What the engine processes need to know about the main data set without regenerating it.
#[derive(Serialize, Deserialize)]
pub struct Meta {
    pub preset: String,
    /// Messages per conversation (by index) after the main data set.
    pub counts: Vec<u64>,
    /// Messages per conversation when the reconnecting users went offline (their read cursors).
    pub counts_offline: Vec<u64>,
    /// Sum of the logical sizes of all messages.
    pub logical_bytes: u64,
    /// Sum of content bytes.
    pub content_bytes: u64,
}

impl Meta {
    pub fn generate(w: &Workload) -> Meta {
        let m = w.preset.conversations;
        let mut counts = vec![0u64; m];
        let mut counts_offline = Vec::new();
        let mut logical = 0;
        let mut content = 0;
        let offline_at = w.offline_at();
        let mut i = 0u64;
        w.main_stream(|c, _, text| {
            if i == offline_at {
                counts_offline = counts.clone();
            }
            i += 1;
            counts[c] += 1;
            logical += LOGICAL_OVERHEAD + text.len() as u64;
            content += text.len() as u64;
        });
        if counts_offline.is_empty() {
            counts_offline = counts.clone();
        }
        Meta {
            preset: w.preset.name.to_string(),
            counts,
            counts_offline,
            logical_bytes: logical,
            content_bytes: content,
        }
    }

    /// Loads the meta file of the preset from `dir`, generating it first if needed.
    pub fn load_or_generate(w: &Workload, dir: &Path) -> std::io::Result<Meta> {
        let path = dir.join(format!("meta-{}.json", w.preset.name));
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(meta) = serde_json::from_slice::<Meta>(&bytes) {
                if meta.preset == w.preset.name && meta.counts.len() == w.preset.conversations {
                    return Ok(meta);
                }
            }
        }
        let meta = Meta::generate(w);
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(&meta).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)?;
        Ok(meta)
    }
}

/// The main data set held in memory in compact form, so that the timed ingest loop does not
/// pay for text generation.
pub struct Arena {
    pub text: Vec<u8>,
    /// End offset of each message's text (u64: the long preset's 20 M texts weigh 2.4 GB,
    /// close to what a u32 offset can reach).
    pub ends: Vec<u64>,
    pub conv: Vec<u32>,
    pub sender: Vec<u32>,
}

impl Arena {
    pub fn build(w: &Workload, tail: bool) -> Arena {
        let n = if tail {
            w.preset.tail
        } else {
            w.preset.messages
        } as usize;
        let mut a = Arena {
            text: Vec::with_capacity(n * 130),
            ends: Vec::with_capacity(n),
            conv: Vec::with_capacity(n),
            sender: Vec::with_capacity(n),
        };
        let mut push = |c: usize, s: u64, t: &str| {
            a.text.extend_from_slice(t.as_bytes());
            a.ends.push(a.text.len() as u64);
            a.conv.push(c as u32);
            a.sender.push(s as u32);
        };
        if tail {
            w.tail_stream(&mut push);
        } else {
            w.main_stream(&mut push);
        }
        a
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Logical bytes of the first `n` messages (see [`LOGICAL_OVERHEAD`]).
    pub fn logical_bytes(&self, n: usize) -> u64 {
        if n == 0 {
            return 0;
        }
        LOGICAL_OVERHEAD * n as u64 + self.ends[n - 1]
    }

    pub fn content(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }
}
