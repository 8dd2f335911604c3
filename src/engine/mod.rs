//! The LSM engine: write-ahead log with group commit, memtables, flush to segments, manifest,
//! recovery. It stores messages keyed by conversation and knows nothing of chat semantics
//! (membership, receipts) built on top of it.

mod background;
mod block_cache;
mod checkpoint;
mod commit;
mod compaction;
pub(crate) mod files;
mod flush;
mod last_ids;
mod log_writer;
mod memory;
mod memtable;
pub(crate) mod overrides;
mod prefetch;
mod recovery;
mod stats;
mod verify;
mod version;
mod version_set;
mod write_controller;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub use background::ABORT_ON_PANIC_VAR;
pub(crate) use commit::Txn;
pub use stats::{LevelCompactionStats, Stats};
pub use verify::{Problem, VerifyReport};

use self::background::Lifecycle;
use self::commit::Committer;
use self::compaction::Compactor;
use self::flush::SharedDictionary;
use self::stats::Counters;
use self::version::ReaderShared;
use self::version::Version;
use self::version_set::VersionSet;
use crate::error::{Error, Result};
use crate::fs::{DirLock, FileSystem};
use crate::options::Options;
use crate::types::{ConversationId, Message};

/// Shared state of an open store. Background threads hold an `Arc<Engine>`; the public
/// [`Store`](crate::Store) handle shuts them down when the last handle is dropped.
pub(crate) struct Engine {
    dir: PathBuf,
    opts: Options,
    fs: Arc<dyn FileSystem>,
    /// The write path: queue, leader, WAL, log sequence numbers (`commit.rs`).
    committer: Committer,
    /// The manifest, the current version and the file numbers (`version_set.rs`).
    versions: VersionSet,
    /// Shutdown, poison, and the signal background threads and stalled writers wait on
    /// (`background.rs`).
    lifecycle: Lifecycle,
    /// Compaction's lock and the picker's positions (`compaction/`).
    compactor: Compactor,
    /// The zstd dictionary new segments are compressed with (trained by flushes).
    dictionary: SharedDictionary,
    /// What segment readers share: the block cache, the index pins, the index loads.
    readers: ReaderShared,
    /// Statistics every component adds to (atomic counters, no other state).
    counters: Counters,
    /// Bytes of every memtable still in memory (see [`Stats::memtable_bytes_held`]).
    memtables_held: Arc<AtomicU64>,
    /// Bytes flushes and merge threads work in right now (see [`memory::WorkingMemory`]).
    working_memory: AtomicU64,
    /// Held while the cache's capacity is set from the charges, and while `stats` reads
    /// both, so that it never sees one without the other.
    rebalancing: Mutex<()>,
    /// The directory lock; released when the store closes, even if handles linger.
    lock: Mutex<Option<Box<dyn DirLock>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Opens (or creates) the store in `dir` and recovers its state.
    pub(crate) fn open(dir: PathBuf, opts: Options) -> Result<Arc<Engine>> {
        let engine = recovery::open(dir, opts)?;
        engine.rebalance_memory();
        Ok(engine)
    }

    /// Starts the background threads (flush, and compaction unless disabled).
    pub(crate) fn spawn_background(self: &Arc<Self>) -> Result<Vec<std::thread::JoinHandle<()>>> {
        let mut threads = Vec::new();
        if self.opts.read_only {
            return Ok(threads);
        }
        threads.push(background::spawn(self, "flush", flush::run)?);
        if self.opts.background_compaction {
            match background::spawn(self, "compact", compaction::run) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let _ = self.shutdown();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(threads)
    }

    /// Merges everything into one sorted run (see [`Store::compact`](crate::Store::compact)).
    pub(crate) fn compact(&self) -> Result<()> {
        self.check_writable()?;
        // No log kept for reuse, the current one cut to its own records, and the logs its
        // flush retires deleted: deleted content must be in no file when it returns.
        let _fresh_logs = self.pause_log_recycling()?;
        self.compact_all()
    }

    /// Runs the compaction the background thread would run next, as if the store were quiet
    /// or under writes (see [`Store::compact_step`](crate::Store::compact_step)). Damage found poisons the
    /// store, as in the background.
    pub(crate) fn compact_step(&self, quiet: bool) -> Result<bool> {
        self.check_writable()?;
        let ran = self.compact_once(quiet);
        if let Err(e) = &ran {
            if e.is_corruption() {
                self.set_poison(format!("compaction found damage: {e}"));
            }
        }
        ran
    }

    /// Asks the background threads to stop and syncs the WAL.
    pub(crate) fn shutdown(&self) -> Result<()> {
        self.lifecycle.shut_down();
        self.committer.wake_writers();
        self.sync()?;
        // A poisoned store's log stays as the failure left it: the next open decides from it
        // what was committed (cutting a reused file to its records would also cut a torn one).
        if self.opts.read_only || self.lifecycle.poisoned().is_some() {
            return Ok(());
        }
        // No retired log left behind, and the current one cut to its own records.
        self.stop_log_recycling()
    }

    /// Lets another store open the directory. REQUIRES: shut down, background threads joined.
    pub(crate) fn release_lock(&self) {
        self.lock.lock().take();
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.lifecycle.is_shut_down()
    }

    /// The current version.
    fn current(&self) -> Arc<Version> {
        self.versions.current()
    }

    fn check_writable(&self) -> Result<()> {
        if self.is_shut_down() {
            return Err(Error::Closed);
        }
        if self.opts.read_only {
            return Err(Error::ReadOnly);
        }
        match self.lifecycle.poisoned() {
            Some(why) => Err(Error::Poisoned(why)),
            None => Ok(()),
        }
    }

    fn set_poison(&self, why: String) {
        self.lifecycle.poison(why);
    }

    /// Last message id of `conv` (0 if none).
    pub(crate) fn last_id(&self, conv: ConversationId) -> Result<u64> {
        let last = self.current().last_id(conv);
        self.charge_loaded_indexes();
        last
    }

    /// The log sequence number of the last commit record applied.
    pub(crate) fn last_lsn(&self) -> u64 {
        self.committer.last_lsn()
    }

    /// Messages of `conv` with ids in `lo..=hi`, oldest first, from one consistent version.
    pub(crate) fn read_range(
        &self,
        conv: ConversationId,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<Message>> {
        let v = self.current();
        self.read_range_in(&v, conv, lo, hi)
    }

    fn read_range_in(
        &self,
        v: &Version,
        conv: ConversationId,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<Message>> {
        let mut out =
            Vec::with_capacity(hi.saturating_sub(lo).saturating_add(1).min(1024) as usize);
        let touched = v.collect(&self.readers.cache, conv, lo, hi, &mut out);
        self.charge_loaded_indexes();
        let touched = touched?;
        self.overlay(v, conv, lo, hi, &mut out)?;
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .segments_read
            .fetch_add(touched, Ordering::Relaxed);
        Ok(out)
    }

    /// What retention hides of `conv` in `v`: ids below the watermark, and messages older
    /// than the cutoff.
    pub(crate) fn expiry(&self, v: &Version, conv: ConversationId) -> Result<Expiry> {
        self.expiry_in(v, conv, v.has_reserved_state())
    }

    /// [`expiry`](Self::expiry), given whether `v` holds reserved state at all.
    fn expiry_in(&self, v: &Version, conv: ConversationId, reserved: bool) -> Result<Expiry> {
        let floor = if reserved {
            v.watermark(&self.readers.cache, conv)?
        } else {
            1
        };
        Ok(Expiry {
            floor,
            cutoff: self.cutoff_in(v, conv, reserved)?,
        })
    }

    /// The time below which messages of `conv` have expired, if any retention applies.
    pub(crate) fn retention_cutoff(
        &self,
        v: &Version,
        conv: ConversationId,
    ) -> Result<Option<u64>> {
        self.cutoff_in(v, conv, v.has_reserved_state())
    }

    /// [`retention_cutoff`](Self::retention_cutoff) in `v`, given whether `v` holds reserved
    /// state (a merge asks that once).
    pub(crate) fn cutoff_in(
        &self,
        v: &Version,
        conv: ConversationId,
        reserved: bool,
    ) -> Result<Option<u64>> {
        let now = self.opts.clock.now_ms();
        let mut cutoff = self
            .opts
            .max_message_age
            .map(|age| now.saturating_sub(age.as_millis() as u64));
        if reserved {
            if let Some(ttl) = v
                .state_get(&self.readers.cache, &overrides::ttl_key(conv))?
                .and_then(|t| overrides::decode_ttl(&t))
                .filter(|&t| t > 0)
            {
                let c = now.saturating_sub(ttl);
                cutoff = Some(cutoff.map_or(c, |g| g.max(c)));
            }
        }
        Ok(cutoff)
    }

    /// Applies edits, deletes and retention to messages read from `v` (ids `lo..=hi`).
    fn overlay(
        &self,
        v: &Version,
        conv: ConversationId,
        lo: u64,
        hi: u64,
        out: &mut Vec<Message>,
    ) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let reserved = v.has_reserved_state();
        let expiry = self.expiry_in(v, conv, reserved)?;
        out.retain(|m| !expiry.hides(m));
        if out.is_empty() || !reserved {
            return Ok(());
        }
        let prefix = overrides::edit_prefix(conv);
        let from = overrides::edit_key(conv, crate::types::MessageId(lo));
        let limit = hi
            .saturating_sub(lo)
            .saturating_add(1)
            .min(usize::MAX as u64) as usize;
        for (k, value) in v.state_scan(&self.readers.cache, &prefix, &from, limit)? {
            let Some(id) = overrides::edit_key_id(&k).filter(|&id| id <= hi) else {
                break;
            };
            let Some(o) = overrides::Override::decode(&value) else {
                return Err(Error::corruption("<state>", 0, "malformed edit record"));
            };
            if let Ok(i) = out.binary_search_by_key(&id, |m| m.id.0) {
                o.apply(&mut out[i]);
            }
        }
        Ok(())
    }

    /// The last id and a read of `lo(last)..=hi(last)` from the same version.
    pub(crate) fn read_relative(
        &self,
        conv: ConversationId,
        range: impl FnOnce(u64) -> Result<(u64, u64)>,
    ) -> Result<Vec<Message>> {
        let v = self.current();
        let last = v.last_id(conv)?;
        let (lo, hi) = range(last)?;
        self.read_range_in(&v, conv, lo, hi)
    }

    /// A consistent read view of the whole store.
    pub(crate) fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            engine: self,
            version: self.current(),
        }
    }

    /// Freezes the active memtable and waits until every frozen memtable is in a segment.
    pub(crate) fn flush(&self) -> Result<()> {
        self.check_writable()?;
        self.freeze_active()?;
        let mut g = self.lifecycle.lock();
        loop {
            self.check_writable()?;
            if self.current().frozen.is_empty() {
                // The flush thread gave the cache back what each memtable held, unless a
                // reader still held the memtable then: give it back now.
                self.rebalance_memory();
                return Ok(());
            }
            g.wait(None);
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let v = self.current();
        let (hits, misses, cache_bytes) = self.readers.cache.counters();
        let mut s = self.counters.snapshot();
        s.memtable_bytes = v.active.bytes() as u64;
        s.memtable_messages = v.active.len() as u64;
        s.frozen_memtables = v.frozen.len() as u64;
        s.frozen_memtable_bytes = v
            .frozen
            .iter()
            .map(|m| m.bytes() as u64)
            .fold(0, u64::saturating_add);
        s.memtable_bytes_held = self.memtables_held.load(Ordering::Relaxed);
        s.segments = v.segments.len() as u64;
        for seg in &v.segments {
            let level = (seg.level as usize).min(s.segments_per_level.len() - 1);
            // Sizes come from the segments' footers: added saturating, whatever a file says.
            s.segments_per_level[level] = s.segments_per_level[level].saturating_add(1);
            s.segment_bytes = s.segment_bytes.saturating_add(seg.reader.file_bytes());
            s.segment_messages = s
                .segment_messages
                .saturating_add(seg.reader.message_count());
            s.segment_logical_bytes = s
                .segment_logical_bytes
                .saturating_add(seg.reader.logical_bytes());
        }
        s.wal_file_bytes = self.committer.wal_len();
        s.pending_compaction_bytes = self.pending_compaction_bytes();
        s.block_cache_hits = hits;
        s.block_cache_misses = misses;
        s.block_cache_bytes = cache_bytes;
        let rebalancing = self.rebalancing.lock();
        s.block_cache_capacity = self.readers.cache.capacity();
        let charges = self.memory_charges();
        drop(rebalancing);
        s.memory_budget_bytes = self.opts.memory_budget_bytes as u64;
        s.memory_index_bytes = charges.indexes;
        s.memory_working_bytes = charges.working;
        s.memory_charged_bytes = charges
            .memtables
            .saturating_add(charges.indexes)
            .saturating_add(charges.last_ids)
            .saturating_add(charges.working)
            .saturating_add(s.block_cache_capacity);
        s
    }
}

/// What retention hides of one conversation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expiry {
    /// The watermark: ids below it were dropped by compaction and never read again.
    pub floor: u64,
    /// Messages sent before this time (ms) have expired under the retention in force.
    pub cutoff: Option<u64>,
}

impl Expiry {
    /// Whether `m` is gone or expired.
    pub fn hides(&self, m: &Message) -> bool {
        m.id.0 < self.floor || self.cutoff.is_some_and(|c| m.timestamp_ms < c)
    }
}

/// A read view pinned to one version: every read through it sees the same state, whatever
/// commits or flushes happen meanwhile.
pub(crate) struct Snapshot<'a> {
    engine: &'a Engine,
    version: Arc<Version>,
}

impl Snapshot<'_> {
    /// Last message id of `conv` (0 if none).
    pub(crate) fn last_id(&self, conv: ConversationId) -> Result<u64> {
        self.version.last_id(conv)
    }

    /// Messages of `conv` with ids in `lo..=hi`, oldest first.
    pub(crate) fn read_range(
        &self,
        conv: ConversationId,
        lo: u64,
        hi: u64,
    ) -> Result<Vec<Message>> {
        self.engine.read_range_in(&self.version, conv, lo, hi)
    }

    /// The first id of `conv` not yet expired under retention (`last + 1` if all are): at or
    /// above the watermark, then a binary search on timestamps, which grow with ids (unless
    /// the clock stepped back or old messages were imported: then it is an estimate). `last`
    /// is the conversation's last id in this view ([`last_id`](Self::last_id)), which every
    /// caller has already looked up.
    pub(crate) fn first_live_id(&self, conv: ConversationId, last: u64) -> Result<u64> {
        let expiry = self.engine.expiry(&self.version, conv)?;
        let floor = expiry.floor.min(last + 1);
        let Some(cutoff) = expiry.cutoff else {
            return Ok(floor);
        };
        let (mut lo, mut hi) = (floor, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mut found = Vec::with_capacity(1);
            self.version
                .collect(&self.engine.readers.cache, conv, mid, mid, &mut found)?;
            // A missing row (at or above the watermark only in a store compacted by an older
            // version, which kept no watermark) was dropped because it had expired.
            let live = found.first().is_some_and(|m| m.timestamp_ms >= cutoff);
            if live {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// The value of state `key`.
    pub(crate) fn state_get(&self, key: &[u8]) -> Result<Option<bytes::Bytes>> {
        self.version.state_get(&self.engine.readers.cache, key)
    }

    /// Up to `limit` live state entries with keys in `from..` that start with `prefix`.
    pub(crate) fn state_scan(
        &self,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(bytes::Bytes, bytes::Bytes)>> {
        self.version
            .state_scan(&self.engine.readers.cache, prefix, from, limit)
    }
}
