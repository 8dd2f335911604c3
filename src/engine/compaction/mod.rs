//! Background compaction: picks work with [`picker`], runs it with [`job`], and swaps inputs
//! for outputs in the manifest and the version atomically. Inputs are deleted once no version
//! (and so no reader) uses them. A crash at any point leaves either the inputs or the outputs
//! listed in the manifest; the other set is removed as garbage at the next open.

// Background threads must not panic: no arithmetic that can overflow.
#![deny(clippy::arithmetic_side_effects)]

pub(crate) mod conversation_cursor;
pub(crate) mod job;
pub(crate) mod parts;
pub(crate) mod picker;
mod read_window;
pub(crate) mod split;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::picker::{Pick, PickerOptions, SegmentMeta};
use super::stats::LevelCompactionStats;
use super::version::Segment;
use super::version_set::VersionEdit;
use super::Engine;
use crate::error::Result;
use crate::format::manifest::SegmentRecord;
use crate::options::CompactionPolicy;

/// Compaction's own state: held while a compaction runs (one at a time), and the picker's
/// round-robin positions. A checkpoint holds it too, so no input file vanishes while the
/// checkpoint links it.
#[derive(Default)]
pub(super) struct Compactor {
    cursors: parking_lot::Mutex<picker::Cursors>,
}

/// While held, no compaction runs.
pub(super) struct CompactionPause<'a> {
    _held: parking_lot::MutexGuard<'a, picker::Cursors>,
}

impl Compactor {
    /// Waits for a running compaction to end and holds off the next one until the pause is
    /// dropped.
    pub(super) fn pause(&self) -> CompactionPause<'_> {
        CompactionPause {
            _held: self.cursors.lock(),
        }
    }
}

impl Engine {
    fn picker_options(&self) -> PickerOptions {
        PickerOptions {
            l0_trigger: self.opts.l0_compaction_trigger,
            level_base_bytes: self.opts.level_base_bytes,
            quiet: true,
            level0_max_runs: self.opts.level0_max_runs,
        }
    }

    pub(crate) fn segment_metas(&self) -> Vec<SegmentMeta> {
        // Only the leveled picker knows how to fold provisional level-0 segments in.
        let leveled = self.opts.compaction_policy == CompactionPolicy::Leveled;
        let compression = self.opts.compression;
        self.current()
            .segments
            .iter()
            .map(|s| SegmentMeta {
                number: s.number,
                level: s.level,
                bytes: s.reader.file_bytes(),
                logical_bytes: s.reader.logical_bytes(),
                conversations: s.conversations.map(|(a, b)| (a.0, b.0)),
                state_keys: s.state_keys.clone(),
                provisional: leveled
                    && s.level == 0
                    && !s.compacted
                    && s.first_codec
                        .is_some_and(|c| !crate::format::block::codec_matches(compression, c)),
                fast_shared_blocks: s.fast_shared_blocks,
            })
            .collect()
    }

    pub(crate) fn pending_compaction_bytes(&self) -> u64 {
        picker::pending_bytes(&self.segment_metas(), &self.picker_options())
    }

    /// How many threads a background merge may use now (asked between the ranges of a
    /// running merge, see `parts`): all of
    /// `Options::compaction_threads` once level 0 holds `BEHIND_FACTOR` times its trigger
    /// (compaction is falling behind the writers, and the writers are about to be slowed down
    /// for it), one before. A second thread takes a core from the writer and the flush: on the
    /// comparison harness's full preset (2 M messages, compaction never behind) two threads
    /// from the start cost 19 % of durable and 27 % of buffered ingest.
    fn background_threads(&self) -> usize {
        let level0 = self
            .current()
            .segments
            .iter()
            .filter(|s| s.level == 0)
            .count();
        if level0
            >= self
                .opts
                .l0_compaction_trigger
                .saturating_mul(BEHIND_FACTOR)
        {
            self.opts.compaction_threads
        } else {
            1
        }
    }

    /// Runs one picked compaction to the end, its merge shared among as many threads as
    /// `threads()` says while it runs; returns whether it ran. REQUIRES: the caller holds
    /// `compaction`.
    fn run_pick(&self, pick: &Pick, threads: &(dyn Fn() -> usize + Sync)) -> Result<bool> {
        // A rewrite within level 0 must produce the newest level-0 segment (level 0 is
        // ordered by file number), so its number is taken first, and the rewrite runs only if
        // no flush is under way and none finished since the pick: a flush in flight may hold
        // a smaller number for newer data. A flush that starts later takes a larger number.
        let number = if pick.output_level == 0 {
            let number = self.versions.new_file_number();
            let v = self.current();
            let newest_input = pick.inputs.iter().copied().max().unwrap_or(0);
            if !v.frozen.is_empty()
                || v.segments
                    .iter()
                    .any(|s| s.level == 0 && s.number > newest_input)
            {
                return Ok(false);
            }
            Some(number)
        } else {
            None
        };
        // Only the input segments are kept: a version also lists memtables, which must be
        // free to go once flushed while this compaction runs.
        let inputs: Vec<Arc<Segment>> = self
            .current()
            .segments
            .iter()
            .filter(|s| pick.inputs.contains(&s.number))
            .cloned()
            .collect();
        if inputs.is_empty() {
            return Ok(false);
        }
        let read = inputs
            .iter()
            .map(|s| s.reader.file_bytes())
            .fold(0, u64::saturating_add);
        let read_same_level: u64 = inputs
            .iter()
            .filter(|s| s.level == pick.output_level)
            .map(|s| s.reader.file_bytes())
            .fold(0, u64::saturating_add);
        let started = Instant::now();
        let outputs = job::run(
            self,
            &inputs,
            pick.output_level,
            pick.drop_tombstones,
            number,
            pick.shared_blocks,
            threads,
        )?;
        let written = outputs
            .iter()
            .map(|o| o.summary.file_bytes)
            .fold(0, u64::saturating_add);

        let edit = VersionEdit {
            removed: pick.inputs.clone(),
            added: outputs
                .iter()
                .map(|o| {
                    let record = SegmentRecord {
                        number: o.segment.number,
                        level: o.segment.level,
                        file_bytes: o.summary.file_bytes,
                        messages: o.summary.messages,
                    };
                    (record, Arc::clone(&o.segment))
                })
                .collect(),
            flushed: None,
        };
        if let Err(e) = self.versions.log_and_apply(edit) {
            // The rename may have reached the disk even though a later step failed, so the
            // manifest on disk may name either set of files: keep both, stop writing, and let
            // the next open (which reads the manifest) remove whichever set it does not name.
            self.set_poison(format!("compaction could not record its result: {e}"));
            return Err(e);
        }
        for s in &inputs {
            s.mark_obsolete();
        }
        self.rebalance_memory();
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters
            .compaction_bytes_read
            .fetch_add(read, Ordering::Relaxed);
        self.counters
            .compaction_bytes_written
            .fetch_add(written, Ordering::Relaxed);
        let levels = &self.counters.compaction_levels;
        let level = usize::try_from(pick.output_level).unwrap_or(usize::MAX);
        if let Some(counters) = levels.get(level).or_else(|| levels.last()) {
            counters.record(&LevelCompactionStats {
                compactions: 1,
                bytes_read: read,
                bytes_read_same_level: read_same_level,
                bytes_written: written,
                bytes_copied: outputs
                    .iter()
                    .map(|o| o.summary.copied_bytes)
                    .fold(0, u64::saturating_add),
                bytes_compressed: outputs
                    .iter()
                    .map(|o| o.summary.compressed_bytes)
                    .fold(0, u64::saturating_add),
                micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            });
        }
        Ok(true)
    }

    /// Runs the most urgent compaction, if any. Returns whether one ran.
    /// `quiet`: no flush for a while, so provisional level-0 segments may be folded in (doing
    /// it during a write burst would compete with the flush for the disk and the CPU).
    pub(super) fn compact_once(&self, quiet: bool) -> Result<bool> {
        let mut cursors = self.compactor.cursors.lock();
        let metas = self.segment_metas();
        let opts = PickerOptions {
            quiet,
            ..self.picker_options()
        };
        let picked = match self.opts.compaction_policy {
            CompactionPolicy::Leveled => picker::pick(&metas, &opts, &mut cursors)
                .or_else(|| quiet.then(|| picker::pick_level0_rewrite(&metas)).flatten())
                .or_else(|| {
                    quiet
                        .then(|| picker::pick_level1_recompress(&metas))
                        .flatten()
                }),
            CompactionPolicy::Tiered => picker::pick_tiered(&metas, &opts),
        };
        let Some(pick) = picked else {
            return Ok(false);
        };
        self.run_pick(&pick, &|| self.background_threads())
    }

    /// Flushes, then merges every segment into one sorted run.
    pub(crate) fn compact_all(&self) -> Result<()> {
        self.flush()?;
        let _cursors = self.compactor.cursors.lock();
        if let Some(pick) = picker::pick_all(&self.segment_metas()) {
            // Asked for (a store at rest being compacted whole): every thread it may use.
            self.run_pick(&pick, &|| self.opts.compaction_threads)?;
        }
        Ok(())
    }
}

/// Level 0 at this many times its trigger counts as compaction falling behind (see
/// `Engine::background_threads`): half the write controller's slowdown threshold.
const BEHIND_FACTOR: usize = crate::engine::write_controller::SLOWDOWN_FACTOR / 2;

/// How long after the last flush the store counts as quiet (see `compact_once`).
const QUIET_AFTER_FLUSH: Duration = Duration::from_secs(1);

/// The compaction thread's main loop.
pub(super) fn run(engine: &Arc<Engine>) {
    lower_thread_priority();
    let mut backoff = Duration::from_millis(100);
    let mut flushes_seen = engine.counters.flushes.load(Ordering::Relaxed);
    let mut last_flush = Instant::now();
    loop {
        if engine.lifecycle.should_stop() {
            return;
        }
        let flushes = engine.counters.flushes.load(Ordering::Relaxed);
        if flushes != flushes_seen {
            flushes_seen = flushes;
            last_flush = Instant::now();
        }
        match engine.compact_once(last_flush.elapsed() >= QUIET_AFTER_FLUSH) {
            Ok(true) => {
                backoff = Duration::from_millis(100);
                // Writers may be waiting for level 0 to shrink.
                engine.lifecycle.notify();
                continue;
            }
            Ok(false) => {}
            Err(e) if e.is_corruption() => {
                engine.set_poison(format!("compaction found damage: {e}"));
                return;
            }
            Err(_) => {
                // Out of space and the like: the inputs are intact; try again later.
                engine
                    .counters
                    .compaction_errors
                    .fetch_add(1, Ordering::Relaxed);
                backoff = backoff.saturating_mul(2).min(Duration::from_secs(10));
            }
        }
        let mut g = engine.lifecycle.lock();
        if engine.is_shut_down() {
            return;
        }
        g.wait(Some(backoff));
    }
}

/// The compaction thread's nice value (Linux).
const COMPACTION_NICE: i32 = 0;

/// Makes the calling thread yield the CPU to writers, readers and the flush: compaction is
/// the one background job that can wait (level 0 absorbs the backlog, and writers stall it
/// only when level 0 grows far past its trigger). Best effort: nothing changes if the OS
/// refuses.
fn lower_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` has no preconditions and cannot fail.
        let tid = unsafe { libc::gettid() };
        // On Linux a nice value applies to the thread whose id is given. SAFETY: plain system
        // call with integer arguments; an error is only reported through the return value.
        let _ =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COMPACTION_NICE) };
    }
}
