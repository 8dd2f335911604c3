//! The background thread: flushes frozen memtables to segments and, in buffered durability,
//! fsyncs the WAL on its interval.

// Background threads must not panic: no arithmetic that can overflow.
#![deny(clippy::arithmetic_side_effects)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files;
use super::memory::FLUSH_WORKING_BYTES;
use super::memtable::Memtable;
use super::prefetch::prefetch_bytes;
use super::version::{attach_reader, Segment};
use super::version_set::VersionEdit;
use super::Engine;
use crate::error::{Error, Result};
use crate::format::manifest::SegmentRecord;
use crate::format::segment::{SegmentReader, SegmentSummary, SegmentWriter};
use crate::options::Durability;

/// The thread's main loop. Returns on shutdown or after a failure (which poisons the store).
pub(super) fn run(engine: &Arc<Engine>) {
    let sync_every = match engine.opts.durability {
        Durability::Buffered { interval } => Some(interval),
        Durability::Sync => None,
    };
    let mut last_sync = Instant::now();
    loop {
        let job = {
            let mut g = engine.lifecycle.lock();
            loop {
                if engine.lifecycle.should_stop() {
                    return;
                }
                if let Some(m) = engine.current().frozen.first() {
                    break Some(Arc::clone(m));
                }
                match sync_every.map(|every| sync_wait(every, last_sync.elapsed())) {
                    Some(Some(wait)) => g.wait(Some(wait)),
                    Some(None) => break None,
                    None => g.wait(None),
                }
            }
        };
        // One clock reading decides: another between the check and the use could disagree.
        if let Some(None) = sync_every.map(|every| sync_wait(every, last_sync.elapsed())) {
            last_sync = Instant::now();
            if let Err(e) = engine.sync() {
                engine.set_poison(format!("background WAL sync failed: {e}"));
                return;
            }
        }
        if let Some(mem) = job {
            if let Err(e) = flush_one(engine, mem) {
                engine.set_poison(format!("flush failed: {e}"));
                return;
            }
            engine.lifecycle.notify();
        }
    }
}

/// How long to wait before the next interval sync, or `None` if it is due. Never panics,
/// whatever the clock says (an interval can pass between two readings of it).
fn sync_wait(every: Duration, since_last: Duration) -> Option<Duration> {
    let left = every.saturating_sub(since_last);
    (!left.is_zero()).then_some(left)
}

/// How many rows ahead of the copy the flush asks for a row's content: far enough for a
/// memory load to arrive (~100 ns against ~20 ns a row), near enough to stay in cache.
const PREFETCH_ROWS_AHEAD: usize = 8;

/// Writes `mem` (the oldest frozen memtable) to a new segment, records it in the manifest with
/// the new WAL horizon, swaps it into the version and deletes the WAL files it made obsolete.
fn flush_one(engine: &Engine, mem: Arc<Memtable>) -> Result<()> {
    let number = engine.versions.new_file_number();
    let path = files::segment_path(&engine.dir, number);
    let charge = engine.charge_working_memory(FLUSH_WORKING_BYTES);
    let summary = mem.with_sorted_runs(|runs| -> Result<SegmentSummary> {
        let dict = engine.dictionary_for_flush(runs);
        let file = engine.fs.create(&path).map_err(|e| Error::io(&path, e))?;
        // Level 0 is rewritten by compaction, so it has its own, fast, codec (compaction
        // folds such segments into level 1 early when that is cheap, so a store at rest ends up
        // in its compact form). The dictionary is trained here either way, for the segments
        // compaction writes.
        let compression = engine.opts.flush_compression;
        let mut writer = SegmentWriter::with_dictionary(
            file,
            compression,
            engine.opts.block_bytes,
            dict.as_deref().map(|d| d.as_ref()),
        );
        // Rows are copied in conversation order, but their content lies in the memtable's
        // chunks in arrival order: each copy is a cache miss unless asked for ahead.
        let mut ahead = runs
            .iter()
            .flat_map(|r| r.messages())
            .skip(PREFETCH_ROWS_AHEAD);
        for run in runs {
            for m in run.messages() {
                if let Some(next) = ahead.next() {
                    prefetch_bytes(next.content);
                }
                if !writer.add_ref(m).map_err(|e| Error::io(&path, e))? {
                    return Err(Error::corruption(
                        &path,
                        0,
                        format!(
                            "memtable run of conversation {} is not gapless at id {}",
                            run.conversation(),
                            m.id
                        ),
                    ));
                }
            }
        }
        mem.try_for_each_state(|key, value| {
            if writer
                .add_state(key, value)
                .map_err(|e| Error::io(&path, e))?
            {
                Ok(())
            } else {
                Err(Error::corruption(
                    &path,
                    0,
                    "memtable state keys out of order",
                ))
            }
        })?;
        writer.finish().map_err(|e| Error::io(&path, e))
    })?;
    drop(charge);
    engine
        .fs
        .sync_dir(&engine.dir)
        .map_err(|e| Error::io(&engine.dir, e))?;
    let data = engine
        .fs
        .open_random_access(&path)
        .map_err(|e| Error::io(&path, e))?;
    let mut reader = SegmentReader::open(&path, data)?;
    attach_reader(&mut reader, number, &engine.readers);
    let segment = Arc::new(Segment::open(number, 0, reader, Arc::clone(&engine.fs))?);

    let applied = engine.versions.log_and_apply(VersionEdit {
        added: vec![(
            SegmentRecord {
                number,
                level: 0,
                file_bytes: summary.file_bytes,
                messages: summary.messages,
            },
            segment,
        )],
        flushed: Some(mem),
        ..VersionEdit::default()
    })?;
    engine.rebalance_memory();
    engine.counters.flushes.fetch_add(1, Ordering::Relaxed);
    engine
        .counters
        .flush_bytes_written
        .fetch_add(summary.file_bytes, Ordering::Relaxed);
    engine.retire_logs(applied.log_number);
    Ok(())
}

/// How many flushes reuse a dictionary before it is trained again on fresh data, at first and
/// after a retrained one replaced it.
const RETRAIN_EVERY: u64 = 16;
/// The longest wait between two trainings: each one that keeps the current dictionary
/// doubles the wait up to this. Training took ~1.7 % of a sustained ingest's CPU time and
/// ~10 MiB for a moment, every 16 flushes, to keep the first dictionary nearly every time
/// (chat text changes slowly); 256 flushes of 16 MiB memtables is 4 GiB of writes.
const RETRAIN_EVERY_MOST: u64 = 256;
/// Sample blocks a dictionary is trained on.
const SAMPLE_BLOCKS: usize = 128;

/// The zstd dictionary new segments are compressed with: trained by flushes (only this
/// module replaces it), used by compaction; and when the flush trains one again.
pub(super) struct SharedDictionary(parking_lot::Mutex<DictionaryState>);

struct DictionaryState {
    current: Option<Arc<bytes::Bytes>>,
    schedule: RetrainSchedule,
}

/// When a flush trains a dictionary again: `RETRAIN_EVERY` flushes after the last one that
/// replaced it, twice as long after each that did not, up to `RETRAIN_EVERY_MOST`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RetrainSchedule {
    /// The flush count from which the next training is due.
    due_at: u64,
    wait: u64,
}

impl RetrainSchedule {
    fn new() -> Self {
        RetrainSchedule {
            due_at: RETRAIN_EVERY,
            wait: RETRAIN_EVERY,
        }
    }

    fn due(&self, flushes: u64) -> bool {
        flushes >= self.due_at
    }

    /// A training at `flushes` replaced the dictionary (`true`) or kept it.
    fn trained(&mut self, flushes: u64, replaced: bool) {
        self.wait = if replaced {
            RETRAIN_EVERY
        } else {
            self.wait.saturating_mul(2).min(RETRAIN_EVERY_MOST)
        };
        self.due_at = flushes.saturating_add(self.wait);
    }
}

impl SharedDictionary {
    /// Starts with `dictionary` (the newest segment's, carried on until a flush retrains one).
    pub(super) fn new(dictionary: Option<Arc<bytes::Bytes>>) -> Self {
        SharedDictionary(parking_lot::Mutex::new(DictionaryState {
            current: dictionary,
            schedule: RetrainSchedule::new(),
        }))
    }

    /// The dictionary in force.
    pub(super) fn current(&self) -> Option<Arc<bytes::Bytes>> {
        self.0.lock().current.clone()
    }

    /// Whether a flush at `flushes` should train a dictionary.
    fn retrain_due(&self, flushes: u64) -> bool {
        let state = self.0.lock();
        state.current.is_none() || state.schedule.due(flushes)
    }

    /// A flush at `flushes` trained a dictionary: `Some` replaced the current one.
    fn trained(&self, flushes: u64, replacement: Option<Arc<bytes::Bytes>>) {
        let mut state = self.0.lock();
        state.schedule.trained(flushes, replacement.is_some());
        if let Some(d) = replacement {
            state.current = Some(d);
        }
    }
}

impl Engine {
    /// The dictionary the next flush uses: the current one, retrained from `runs` now and then
    /// (and whenever there is none yet and `runs` hold enough data to learn from).
    fn dictionary_for_flush(
        &self,
        runs: &[super::memtable::RunRef<'_>],
    ) -> Option<Arc<bytes::Bytes>> {
        let max = self.opts.dictionary_bytes;
        if max == 0 || !matches!(self.opts.compression, crate::options::Compression::Zstd(_)) {
            return None;
        }
        let flushes = self.counters.flushes.load(Ordering::Relaxed);
        let current = self.dictionary.current();
        if !self.dictionary.retrain_due(flushes) {
            return current;
        }
        let total: usize = runs
            .iter()
            .flat_map(|r| r.messages())
            .map(|m| m.content.len().saturating_add(16))
            .fold(0usize, usize::saturating_add);
        let blocks = total.checked_div(self.opts.block_bytes).unwrap_or(0);
        let every = blocks.checked_div(SAMPLE_BLOCKS).unwrap_or(0).max(1);
        // Blocks halfway between two samples judge a new dictionary against the current one:
        // judged on its own training samples it would always look better.
        let half = every.checked_div(2).unwrap_or(0);
        let mut held_out = Vec::new();
        let mut samples = Vec::with_capacity(SAMPLE_BLOCKS + 1);
        let mut builder = crate::format::block::BlockBuilder::new();
        let mut n = 0usize;
        for m in runs.iter().flat_map(|r| r.messages()) {
            if !builder.add_ref(m) {
                builder.finish_body();
                builder.add_ref(m);
            }
            if builder.estimated_len() >= self.opts.block_bytes {
                let body = builder.finish_body();
                if n.is_multiple_of(every) {
                    samples.push(body);
                } else if half > 0 && n.checked_rem(every) == Some(half) {
                    held_out.push(body);
                }
                n = n.wrapping_add(1);
            }
        }
        let level = match self.opts.compression {
            crate::options::Compression::Zstd(level) => level,
            _ => return current,
        };
        match crate::format::dictionary::train(&samples, max) {
            Some(d) if replaces(current.as_deref(), &d, &held_out, level) => {
                let d = Arc::new(bytes::Bytes::from(d));
                self.dictionary.trained(flushes, Some(Arc::clone(&d)));
                Some(d)
            }
            Some(_) => {
                self.dictionary.trained(flushes, None);
                current
            }
            // Too little data to learn from: try again at the next flush.
            None => current,
        }
    }
}

/// A retrained dictionary must shrink the samples by this many per mille to replace the
/// current one: compaction copies blocks whole only between segments of the same dictionary,
/// so a new one costs a full re-encoding of whatever it rewrites next, worth it only for a
/// real gain (chat text changes slowly).
const DICTIONARY_GAIN_PER_MILLE: u64 = 20;

/// Whether `candidate` should replace `current` (none: always): it compresses `samples` at
/// `level` at least `DICTIONARY_GAIN_PER_MILLE` smaller.
fn replaces(
    current: Option<&bytes::Bytes>,
    candidate: &[u8],
    samples: &[Vec<u8>],
    level: i32,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    if samples.is_empty() {
        // Too little data to judge (a small flush): keep what works.
        return false;
    }
    let size = |dict: &[u8]| -> Option<u64> {
        let mut enc = crate::format::dictionary::DictEncoder::new(dict, level)?;
        samples.iter().try_fold(0u64, |total, s| {
            let n = enc.compress(s).map_or(s.len(), |c| c.len());
            Some(total.saturating_add(n as u64))
        })
    };
    match (size(current), size(candidate)) {
        (Some(old), Some(new)) => {
            new.saturating_mul(1000)
                < old.saturating_mul(1000u64.saturating_sub(DICTIONARY_GAIN_PER_MILLE))
        }
        // The current dictionary does not work (zstd refuses it): take the new one.
        (None, Some(_)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(words: &[&str], seed: usize) -> Vec<Vec<u8>> {
        (0..64usize)
            .map(|i| {
                (0..40usize)
                    .map(|j| {
                        let w = i
                            .wrapping_mul(7)
                            .wrapping_add(j.wrapping_mul(3))
                            .wrapping_add(seed)
                            .checked_rem(words.len())
                            .unwrap_or(0);
                        format!("{} {} ", words[w], i.wrapping_mul(j))
                    })
                    .collect::<String>()
                    .into_bytes()
            })
            .collect()
    }

    #[test]
    fn a_retrained_dictionary_replaces_the_current_one_only_when_clearly_better() {
        let chat = [
            "hello",
            "see you tonight",
            "are you coming",
            "the train is late",
            "lol ok",
        ];
        let other = [
            "0xdeadbeef",
            "segfault",
            "kernel panic",
            "stack trace",
            "core dumped",
        ];
        let old = crate::format::dictionary::train(&blocks(&other, 0), 1024).unwrap();
        let new = crate::format::dictionary::train(&blocks(&chat, 0), 1024).unwrap();
        let held_out = blocks(&chat, 1);
        let old = bytes::Bytes::from(old);
        // No dictionary yet: any is better.
        assert!(replaces(None, &new, &held_out, 3));
        // One trained on text like the blocks beats one trained on other text.
        assert!(replaces(Some(&old), &new, &held_out, 3));
        // The same dictionary again is no gain: the current one stays.
        let same = bytes::Bytes::from(new.clone());
        assert!(!replaces(Some(&same), &new, &held_out, 3));
        // Nothing to judge by: keep the current one.
        assert!(!replaces(Some(&old), &new, &[], 3));
    }

    #[test]
    fn retraining_backs_off_while_the_dictionary_is_kept_and_resumes_once_one_is_replaced() {
        let mut s = RetrainSchedule::new();
        assert!(!s.due(0) && !s.due(RETRAIN_EVERY - 1) && s.due(RETRAIN_EVERY));
        let mut at = RETRAIN_EVERY;
        let mut waits = Vec::new();
        for _ in 0..6 {
            s.trained(at, false);
            waits.push(s.due_at - at);
            assert!(!s.due(s.due_at - 1) && s.due(s.due_at));
            at = s.due_at;
        }
        assert_eq!(waits, [32, 64, 128, 256, 256, 256]);
        s.trained(at, true);
        assert_eq!(s.due_at, at + RETRAIN_EVERY);
        s.trained(u64::MAX - 1, false);
        assert_eq!(s.due_at, u64::MAX, "saturates");
    }

    #[test]
    fn sync_wait_is_due_once_the_interval_passed_and_never_underflows() {
        let every = Duration::from_millis(2);
        assert_eq!(
            sync_wait(every, Duration::from_millis(1)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(sync_wait(every, every), None);
        // The interval passed between the caller's check and this reading.
        assert_eq!(sync_wait(every, Duration::from_millis(3)), None);
        assert_eq!(sync_wait(every, Duration::MAX), None);
        assert_eq!(sync_wait(Duration::ZERO, Duration::ZERO), None);
    }
}
