//! Counters the engine keeps and the [`Stats`] snapshot it reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the store's counters and sizes. Counters run from when the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct Stats {
    /// Messages appended since open.
    pub messages_appended: u64,
    /// Appends whose conversation's last id was not in the write leader's cache and was
    /// searched for in the memtables and segments (see `docs/memory.md`).
    pub last_id_searches: u64,
    /// Group commits (one WAL write each) since open.
    pub write_groups: u64,
    /// WAL fsyncs since open.
    pub wal_syncs: u64,
    /// WAL bytes written since open.
    pub wal_bytes_written: u64,
    /// Memtable switches since open whose new WAL file was a retired one reused
    /// (`Options::recycled_wal_files`) rather than a new file.
    pub wal_files_recycled: u64,
    /// Size of the current WAL file.
    pub wal_file_bytes: u64,
    /// Approximate bytes held by the active memtable.
    pub memtable_bytes: u64,
    /// Messages in the active memtable.
    pub memtable_messages: u64,
    /// Frozen memtables waiting for flush.
    pub frozen_memtables: u64,
    /// Approximate bytes held by frozen memtables.
    pub frozen_memtable_bytes: u64,
    /// Approximate bytes of every memtable still in memory: the active and frozen ones, plus
    /// flushed ones a reader still holds. Bounded by `(1 + max_frozen_memtables) *
    /// memtable_bytes` plus what long-running reads keep.
    pub memtable_bytes_held: u64,
    /// Live segments.
    pub segments: u64,
    /// Bytes of live segment files.
    pub segment_bytes: u64,
    /// Messages in live segments.
    pub segment_messages: u64,
    /// Logical (pre-encoding) bytes of the messages in live segments.
    pub segment_logical_bytes: u64,
    /// Memtables flushed since open.
    pub flushes: u64,
    /// Segment bytes written by flushes since open.
    pub flush_bytes_written: u64,
    /// Compactions run since open.
    pub compactions: u64,
    /// Segment bytes read by compactions since open.
    pub compaction_bytes_read: u64,
    /// Segment bytes written by compactions since open.
    pub compaction_bytes_written: u64,
    /// Of `compaction_bytes_written`, the bytes of blocks compaction copied whole from its
    /// inputs, without decoding and compressing them again (where no other input's rows fall
    /// inside them).
    pub compaction_bytes_copied: u64,
    /// Of `compaction_bytes_copied`, the bytes of blocks copied without even being decompressed
    /// (blocks of one conversation whose rows and size the input's indexes give; version-3
    /// segments).
    pub compaction_bytes_copied_undecoded: u64,
    /// Key ranges of cut merges merged on helper threads beside the compaction thread since
    /// open (see `Options::compaction_threads`).
    pub compaction_parts_beside: u64,
    /// Compactions that failed (and were retried later) since open.
    pub compaction_errors: u64,
    /// Bytes compaction still has to move to bring every level within budget.
    pub pending_compaction_bytes: u64,
    /// Live segments per level (level 0 first).
    pub segments_per_level: [u64; 7],
    /// Compactions since open by the level they wrote (level 0 first: rewrites within level
    /// 0), with what each level's compactions read, wrote, copied and compressed, and how
    /// long they ran: where compaction's work goes as the store grows.
    pub compaction_levels: [LevelCompactionStats; 7],
    /// Times a writer waited at a memtable switch (for a flush to catch up, or for compaction
    /// to drain level 0).
    pub write_stalls: u64,
    /// Total time writers waited at memtable switches, in microseconds: the sum of the two
    /// below.
    pub write_stall_micros: u64,
    /// Of `write_stall_micros`, the time spent waiting because `max_frozen_memtables` frozen
    /// memtables waited for their flush (memory).
    pub write_stall_flush_micros: u64,
    /// Of `write_stall_micros`, the time spent in the write controller's delay for a level 0
    /// over its slowdown threshold (compaction behind).
    pub write_stall_level0_micros: u64,
    /// Range reads served since open.
    pub reads: u64,
    /// Segments touched by those reads (divide by `reads` for read amplification).
    pub segments_read: u64,
    /// Block cache hits.
    pub block_cache_hits: u64,
    /// Block cache misses (blocks read and decoded).
    pub block_cache_misses: u64,
    /// Bytes of decoded blocks in the cache.
    pub block_cache_bytes: u64,
    /// What the block cache may hold now: the memory budget less what memtables and segment
    /// indexes hold (never less than a sixteenth of the budget).
    pub block_cache_capacity: u64,
    /// `Options::memory_budget_bytes`.
    pub memory_budget_bytes: u64,
    /// Bytes of the live segments' resident indexes (block and conversation indexes, footers,
    /// conversation filters), charged to the budget.
    pub memory_index_bytes: u64,
    /// Working memory of the flushes and merge threads under way (a fixed charge each for
    /// their output writers, read windows and codec contexts), charged to the budget while
    /// they run: the block cache gives way to it.
    pub memory_working_bytes: u64,
    /// Memtables (the active one at its full size) + indexes + the last-id cache + working
    /// memory + the cache's capacity: the budget, or more when the others alone exceed it.
    pub memory_charged_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages_appended: AtomicU64,
    pub last_id_searches: AtomicU64,
    pub write_groups: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub wal_bytes_written: AtomicU64,
    pub wal_files_recycled: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_bytes_written: AtomicU64,
    pub write_stalls: AtomicU64,
    pub write_stall_micros: AtomicU64,
    pub write_stall_flush_micros: AtomicU64,
    pub write_stall_level0_micros: AtomicU64,
    pub compactions: AtomicU64,
    pub compaction_bytes_read: AtomicU64,
    pub compaction_bytes_written: AtomicU64,
    pub compaction_bytes_copied: AtomicU64,
    pub compaction_bytes_copied_undecoded: AtomicU64,
    pub compaction_parts_beside: AtomicU64,
    pub compaction_errors: AtomicU64,
    pub reads: AtomicU64,
    pub segments_read: AtomicU64,
    pub compaction_levels: [LevelCounters; 7],
}

/// What the compactions writing one level did since open (see `Stats::compaction_levels`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct LevelCompactionStats {
    /// Compactions that wrote this level.
    pub compactions: u64,
    /// Segment bytes they read.
    pub bytes_read: u64,
    /// Of `bytes_read`, the bytes of inputs already at this level: data rewritten only because
    /// newer data fell into its key range (leveling's fan-out).
    pub bytes_read_same_level: u64,
    /// Segment bytes they wrote.
    pub bytes_written: u64,
    /// Of `bytes_written`, bytes of blocks copied as stored from their inputs.
    pub bytes_copied: u64,
    /// Bytes of block bodies they compressed, before compression: the codec's work (each
    /// row's first compression, plus any row compressed again because its block was rebuilt).
    pub bytes_compressed: u64,
    /// Wall time they ran, in microseconds.
    pub micros: u64,
}

impl Stats {
    /// Bytes written to segments (flush and compaction) per byte flushed: the write
    /// amplification of the segment tree (the WAL adds one more write of every byte).
    pub fn write_amplification(&self) -> f64 {
        if self.flush_bytes_written == 0 {
            return 0.0;
        }
        (self.flush_bytes_written + self.compaction_bytes_written) as f64
            / self.flush_bytes_written as f64
    }

    /// Segment bytes on disk per logical byte of the messages they hold.
    pub fn space_amplification(&self) -> f64 {
        if self.segment_logical_bytes == 0 {
            return 0.0;
        }
        self.segment_bytes as f64 / self.segment_logical_bytes as f64
    }

    /// Segments touched per range read.
    pub fn read_amplification(&self) -> f64 {
        if self.reads == 0 {
            return 0.0;
        }
        self.segments_read as f64 / self.reads as f64
    }
}

/// The counters behind one [`LevelCompactionStats`].
#[derive(Debug, Default)]
pub(crate) struct LevelCounters {
    pub compactions: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_read_same_level: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub bytes_compressed: AtomicU64,
    pub micros: AtomicU64,
}

impl LevelCounters {
    /// Adds one compaction that wrote this level.
    pub fn record(&self, done: &LevelCompactionStats) {
        let add = |a: &AtomicU64, v: u64| {
            a.fetch_add(v, Ordering::Relaxed);
        };
        add(&self.compactions, done.compactions);
        add(&self.bytes_read, done.bytes_read);
        add(&self.bytes_read_same_level, done.bytes_read_same_level);
        add(&self.bytes_written, done.bytes_written);
        add(&self.bytes_copied, done.bytes_copied);
        add(&self.bytes_compressed, done.bytes_compressed);
        add(&self.micros, done.micros);
    }

    fn snapshot(&self) -> LevelCompactionStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LevelCompactionStats {
            compactions: l(&self.compactions),
            bytes_read: l(&self.bytes_read),
            bytes_read_same_level: l(&self.bytes_read_same_level),
            bytes_written: l(&self.bytes_written),
            bytes_copied: l(&self.bytes_copied),
            bytes_compressed: l(&self.bytes_compressed),
            micros: l(&self.micros),
        }
    }
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            messages_appended: l(&self.messages_appended),
            last_id_searches: l(&self.last_id_searches),
            write_groups: l(&self.write_groups),
            wal_syncs: l(&self.wal_syncs),
            wal_bytes_written: l(&self.wal_bytes_written),
            wal_files_recycled: l(&self.wal_files_recycled),
            flushes: l(&self.flushes),
            flush_bytes_written: l(&self.flush_bytes_written),
            write_stalls: l(&self.write_stalls),
            compactions: l(&self.compactions),
            compaction_bytes_read: l(&self.compaction_bytes_read),
            compaction_bytes_written: l(&self.compaction_bytes_written),
            compaction_bytes_copied: l(&self.compaction_bytes_copied),
            compaction_bytes_copied_undecoded: l(&self.compaction_bytes_copied_undecoded),
            compaction_parts_beside: l(&self.compaction_parts_beside),
            compaction_errors: l(&self.compaction_errors),
            write_stall_micros: l(&self.write_stall_micros),
            write_stall_flush_micros: l(&self.write_stall_flush_micros),
            write_stall_level0_micros: l(&self.write_stall_level0_micros),
            reads: l(&self.reads),
            segments_read: l(&self.segments_read),
            compaction_levels: std::array::from_fn(|level| {
                self.compaction_levels[level].snapshot()
            }),
            ..Stats::default()
        }
    }
}
