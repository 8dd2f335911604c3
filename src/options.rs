//! Knobs for opening a store.

use std::sync::Arc;
use std::time::Duration;

use crate::fs::{FileSystem, StdFileSystem};
use crate::presence::{Clock, SystemClock};

/// When an acknowledged write is on stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every write call returns after its WAL record is fsynced. Concurrent writers share one
    /// fsync (group commit). An acknowledged message survives power loss. The default.
    Sync,
    /// Writes return once their WAL record is in the OS page cache; the WAL is fsynced in the
    /// background every `interval`. A process crash loses nothing; a power loss may lose the
    /// last `interval` of writes (never a gap in ids: lost ids are reused).
    Buffered {
        /// How often the background thread fsyncs the WAL.
        interval: Duration,
    },
}

pub use crate::format::compression::Compression;

/// How segments are merged in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionPolicy {
    /// Leveled, partitioned by conversation and key range (the default): few segments per
    /// read, more rewriting. See `docs/compaction.md`.
    Leveled,
    /// Size-tiered: whole runs merged when a tier fills up. Less rewriting, more segments per
    /// read. Kept for comparison.
    Tiered,
}

/// Options for [`Store::open_with`](crate::Store::open_with).
#[derive(Clone, Debug)]
pub struct Options {
    /// Durability of acknowledged writes.
    pub durability: Durability,
    /// Size at which the active memtable is frozen and flushed to a segment.
    pub memtable_bytes: usize,
    /// How many frozen memtables may wait for flush before writers are slowed down.
    pub max_frozen_memtables: usize,
    /// How many retired WAL files (their records all flushed to segments) are kept to become
    /// the logs of later memtables instead of being deleted. A reused file's blocks are
    /// already written, so the fsync of each record commits data only, where a growing new
    /// file also commits its new length to the file system's journal: in `Sync` durability
    /// that is most of what a write waits for (see `docs/format-wal.md`, *Reused files*).
    /// 0 creates a new file for every log.
    pub recycled_wal_files: usize,
    /// Largest accepted message (content plus attachment link), in bytes.
    pub max_message_bytes: usize,
    /// Compression of the segments compaction writes (where nearly all data lives).
    pub compression: Compression,
    /// Compression of flushed (level-0) segments. Compaction rewrites them, so the default is
    /// none: a flush that keeps up with writers matters more than the size of a file that
    /// lives for a few flushes (LZ4 took half of the flush's CPU time). With the leveled
    /// policy such segments do not stay: level 0 is compacted below its trigger once that is
    /// cheap (its bytes reach a quarter of level 1's), and a store at rest rewrites them in
    /// `compression` within level 0, so a small store, or one at rest, ends up compact.
    pub flush_compression: Compression,
    /// Target uncompressed size of a segment block. Small blocks make a cache miss cheap; the
    /// zstd dictionary keeps them compressing as well as large ones.
    pub block_bytes: usize,
    /// Size of the zstd dictionary trained on the store's own blocks and kept in each segment
    /// (0 disables it). Only used with [`Compression::Zstd`]. On the Zipf chat workload's 4 KiB
    /// blocks, 64 KiB (the default) against 32 KiB: 2% fewer bytes and ~8% faster decoding.
    pub dictionary_bytes: usize,
    /// One budget for what the store keeps in memory: the memtables (the active one counted
    /// at `memtable_bytes` from the start, frozen ones until flushed), the live segments'
    /// indexes, the writer's cache of conversations' last ids (an eighth of the budget),
    /// and the block cache, which gets what the others leave (at least a sixteenth of the
    /// budget). When memtables and indexes alone exceed it the cache is at
    /// that floor and the store holds more; `Stats::memory_charged_bytes` says how much.
    /// The process also holds the allocator's slack, thread stacks and compression contexts
    /// beyond it.
    pub memory_budget_bytes: usize,
    /// Number of level-0 segments (each a flushed memtable) that triggers a compaction into
    /// level 1.
    pub l0_compaction_trigger: usize,
    /// Size budget of level 1; each deeper level gets ten times the one above.
    pub level_base_bytes: u64,
    /// Runs a level-0 batch may gather within level 0 before it goes into level 1 (leveled
    /// policy, under writes): each trigger's worth of flushed segments merged into one more
    /// run within level 0, until the runs number this many or weigh a quarter of level 1,
    /// so that level 1 is rewritten less often. 0 (the default) turns it off: level 0 goes
    /// into level 1 at every trigger. Since compaction copies most of level 1's blocks as
    /// stored, a run's extra encoding of every new row costs more than the level-1 rewrites
    /// it saves (see `docs/compaction.md`, *Runs within level 0, measured again*).
    pub level0_max_runs: usize,
    /// Size at which compaction starts a new output segment.
    pub target_segment_bytes: u64,
    /// Store-wide retention: messages older than this disappear from reads at once and from
    /// disk at the next compaction. `None` keeps messages forever. Changing it (at the next
    /// open) brings back expired messages no compaction has dropped yet, never those it
    /// dropped.
    pub max_message_age: Option<Duration>,
    /// Compaction policy.
    pub compaction_policy: CompactionPolicy,
    /// Threads one leveled compaction's merge may use once compaction falls behind (level 0
    /// at four times its trigger, checked between the conversation ranges the merge is cut
    /// into, so helpers join a merge already running; before that a merge runs on the
    /// compaction thread alone, leaving the other cores to the writers). A chat store's
    /// level-0 → level-1 merge takes all of level 1, so it is the one large job, and cut in
    /// two it uses a second core. [`Store::compact`](crate::Store::compact) always uses them
    /// all. 1: every merge on the compaction thread alone.
    pub compaction_threads: usize,
    /// Run compactions in the background. When off, only [`Store::compact`] compacts.
    ///
    /// [`Store::compact`]: crate::Store::compact
    pub background_compaction: bool,
    /// Open without taking the directory lock, writing nothing and starting no background
    /// work: for inspecting a store another process has open. Writes get
    /// [`Error::ReadOnly`](crate::Error::ReadOnly). The view is the state at open time; files
    /// the writer deletes later stay readable while open.
    pub read_only: bool,
    /// Create the directory and an empty store if there is none.
    pub create_if_missing: bool,
    /// The file system the store reads and writes through. Tests swap in a fault-injecting one.
    pub fs: Arc<dyn FileSystem>,
    /// A log every commit must reach before it is acknowledged, besides the local WAL (see
    /// [`commit_log`](crate::commit_log)). `None` (the default): the local WAL is the log.
    pub commit_log: Option<Arc<dyn crate::commit_log::CommitLog>>,
    /// The wall clock: message timestamps, edit times and retention cutoffs are read from it.
    /// The system clock by default; tests swap in one they move (forward or back) themselves.
    pub clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            memtable_bytes: 16 << 20,
            max_frozen_memtables: 2,
            recycled_wal_files: 2,
            max_message_bytes: 64 << 10,
            compression: Compression::Zstd(3),
            flush_compression: Compression::None,
            block_bytes: 4 << 10,
            dictionary_bytes: 64 << 10,
            memory_budget_bytes: 64 << 20,
            l0_compaction_trigger: 4,
            level_base_bytes: 256 << 20,
            level0_max_runs: 0,
            target_segment_bytes: 64 << 20,
            max_message_age: None,
            compaction_policy: CompactionPolicy::Leveled,
            compaction_threads: 2,
            background_compaction: true,
            read_only: false,
            create_if_missing: true,
            fs: Arc::new(StdFileSystem),
            commit_log: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl Options {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::InvalidOption(m.to_string()));
        if self.memtable_bytes < 4096 {
            return bad("memtable_bytes must be at least 4096");
        }
        if self.max_frozen_memtables == 0 {
            return bad("max_frozen_memtables must be at least 1");
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > (16 << 20) {
            return bad("max_message_bytes must be between 1 and 16 MiB");
        }
        if self.block_bytes < 512 || self.block_bytes > (4 << 20) {
            return bad("block_bytes must be between 512 bytes and 4 MiB");
        }
        if self.max_message_age.is_some_and(|a| a.is_zero()) {
            return bad("max_message_age must be greater than zero");
        }
        if self.dictionary_bytes > (1 << 20) {
            return bad("dictionary_bytes must be at most 1 MiB");
        }
        if self.l0_compaction_trigger < 2 {
            return bad("l0_compaction_trigger must be at least 2");
        }
        if !(1..=64).contains(&self.compaction_threads) {
            return bad("compaction_threads must be between 1 and 64");
        }
        if self.level_base_bytes < 4096 || self.target_segment_bytes < 4096 {
            return bad("level_base_bytes and target_segment_bytes must be at least 4096");
        }
        for c in [self.compression, self.flush_compression] {
            if let Compression::Zstd(level) = c {
                if !(1..=22).contains(&level) {
                    return bad("zstd level must be in 1..=22");
                }
            }
        }
        if let Durability::Buffered { interval } = self.durability {
            if interval.is_zero() {
                return bad("buffered durability needs a non-zero sync interval");
            }
        }
        Ok(())
    }
}
