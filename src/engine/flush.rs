//! The background thread: flushes frozen memtables to segments and, in buffered durability,
//! fsyncs the WAL on its interval.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files;
use super::memtable::Memtable;
use super::version::Segment;
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
            let mut g = engine.bg.lock();
            loop {
                if engine.is_shut_down() || engine.poison.lock().is_some() {
                    return;
                }
                if let Some(m) = engine.current().frozen.first() {
                    break Some(Arc::clone(m));
                }
                match sync_every {
                    Some(every) if last_sync.elapsed() >= every => break None,
                    Some(every) => {
                        engine.bg_cv.wait_for(&mut g, every - last_sync.elapsed());
                    }
                    None => engine.bg_cv.wait(&mut g),
                }
            }
        };
        if sync_every.is_some() && last_sync.elapsed() >= sync_every.unwrap_or(Duration::MAX) {
            last_sync = Instant::now();
            if let Err(e) = engine.sync() {
                engine.set_poison(format!("background WAL sync failed: {e}"));
                return;
            }
        }
        if let Some(mem) = job {
            if let Err(e) = flush_one(engine, &mem) {
                engine.set_poison(format!("flush failed: {e}"));
                return;
            }
            let _g = engine.bg.lock();
            engine.bg_cv.notify_all();
        }
    }
}

/// Writes `mem` (the oldest frozen memtable) to a new segment, records it in the manifest with
/// the new WAL horizon, swaps it into the version and deletes the WAL files it made obsolete.
fn flush_one(engine: &Engine, mem: &Arc<Memtable>) -> Result<()> {
    let number = engine.next_file_number.fetch_add(1, Ordering::SeqCst);
    let path = files::segment_path(&engine.dir, number);
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
        for run in runs {
            for m in run.messages() {
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
        for (key, value) in mem.sorted_state() {
            if !writer
                .add_state(&key, value.as_deref())
                .map_err(|e| Error::io(&path, e))?
            {
                return Err(Error::corruption(
                    &path,
                    0,
                    "memtable state keys out of order",
                ));
            }
        }
        writer.finish().map_err(|e| Error::io(&path, e))
    })?;
    engine
        .fs
        .sync_dir(&engine.dir)
        .map_err(|e| Error::io(&engine.dir, e))?;
    let data = engine
        .fs
        .open_random_access(&path)
        .map_err(|e| Error::io(&path, e))?;
    let reader = SegmentReader::open(&path, data)?;
    let segment = Arc::new(Segment::open(number, 0, reader, Arc::clone(&engine.fs))?);

    // Only this thread edits the manifest, so the read-modify-write below cannot race.
    let mut manifest = engine.manifest.lock();
    let mut next = manifest.clone();
    next.segments.push(SegmentRecord {
        number,
        level: 0,
        file_bytes: summary.file_bytes,
        messages: summary.messages,
    });
    // WAL files below the next-oldest memtable's first file hold only flushed data.
    let horizon = {
        let v = engine.current();
        v.frozen
            .iter()
            .find(|m| !Arc::ptr_eq(m, mem))
            .map_or(v.active.first_wal(), |m| m.first_wal())
    };
    next.log_number = horizon;
    next.next_file_number = engine.next_file_number.load(Ordering::SeqCst);
    files::write_manifest(&*engine.fs, &engine.dir, &next)?;
    *manifest = next;
    drop(manifest);

    engine.edit_version(|v| {
        v.frozen.retain(|m| !Arc::ptr_eq(m, mem));
        v.segments.push(segment);
    });
    engine.counters.flushes.fetch_add(1, Ordering::Relaxed);
    engine
        .counters
        .flush_bytes_written
        .fetch_add(summary.file_bytes, Ordering::Relaxed);
    delete_obsolete_wals(engine, horizon);
    Ok(())
}

/// How many flushes reuse a dictionary before it is trained again on fresh data.
const RETRAIN_EVERY: u64 = 16;
/// Sample blocks a dictionary is trained on.
const SAMPLE_BLOCKS: usize = 128;

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
        let current = self.dictionary.lock().clone();
        if current.is_some() && !flushes.is_multiple_of(RETRAIN_EVERY) {
            return current;
        }
        let total: usize = runs
            .iter()
            .flat_map(|r| r.messages())
            .map(|m| m.content.len() + 16)
            .sum();
        let blocks = total / self.opts.block_bytes.max(1);
        let every = (blocks / SAMPLE_BLOCKS).max(1);
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
                }
                n += 1;
            }
        }
        match crate::format::dictionary::train(&samples, max) {
            Some(d) => {
                let d = Arc::new(bytes::Bytes::from(d));
                *self.dictionary.lock() = Some(Arc::clone(&d));
                Some(d)
            }
            None => current,
        }
    }
}

fn delete_obsolete_wals(engine: &Engine, horizon: u64) {
    let Ok(names) = engine.fs.list(&engine.dir) else {
        return;
    };
    for name in names {
        if let Some(files::FileKind::Wal(n)) = files::parse_name(&name) {
            if n < horizon {
                // Best effort: leftovers are removed at the next open.
                let _ = engine.fs.remove(&engine.dir.join(name));
            }
        }
    }
}
