//! Opening a store: lock, manifest, segments, WAL replay.
//!
//! 1. Take the directory lock (a second opener gets [`Error::Locked`]).
//! 2. Read the manifest; a directory without one is new if it holds none of our files, and
//!    refused as [`Error::NotAStore`] otherwise.
//! 3. Open every live segment (footer and index checksums are checked here).
//! 4. Remove leftovers of interrupted work: segments the manifest does not list (a flush that
//!    crashed before its manifest write), WAL files below the manifest's horizon, a temp manifest.
//! 5. Replay WAL files at or above the horizon, oldest first, into a memtable. A torn tail in the
//!    newest file is cut off; any other damage is reported with its file and offset. Replayed ids
//!    must continue each conversation without a gap.
//! 6. Start a fresh WAL file for new writes.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;

use super::background::Lifecycle;
use super::block_cache::BlockCache;
use super::commit::Committer;
use super::compaction::Compactor;
use super::files::{self, FileKind};
use super::flush::SharedDictionary;
use super::log_writer::LogWriter;
use super::memory::last_id_cache_budget;
use super::memtable::Memtable;
use super::stats::Counters;
use super::version::{attach_reader, ReaderShared, Segment, Version, PINNED_INDEX_DIVISOR};
use super::version_set::VersionSet;
use super::Engine;
use crate::error::{Error, Result};
use crate::format::batch::{self, Entry};
use crate::format::index_partitions::IndexPins;
use crate::format::manifest::ManifestState;
use crate::format::segment::SegmentReader;
use crate::format::wal::{self, LogReader, ReadStep, FILE_HEADER_LEN, WAL_VERSION};
use crate::fs::FileSystem;
use crate::options::Options;
use crate::types::ConversationId;

pub(super) fn open(dir: PathBuf, opts: Options) -> Result<Arc<Engine>> {
    if !opts.read_only {
        return open_once(dir, opts).map_err(OpenFailure::into_error);
    }
    // A read-only open races the live writer, which may retire a WAL file or segment between
    // our directory listing and our read of it: start over (the new manifest no longer needs
    // the file) a few times before calling it damage.
    let mut attempts = 0;
    loop {
        match open_once(dir.clone(), opts.clone()) {
            Ok(engine) => return Ok(engine),
            Err(OpenFailure::Vanished(_)) if attempts < 10 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(5 << attempts.min(5)));
            }
            Err(e) => return Err(e.into_error()),
        }
    }
}

/// Why an open failed: a file it needed disappeared meanwhile (which a read-only open beside a
/// live writer retries), or anything else.
enum OpenFailure {
    Vanished(Error),
    Failed(Error),
}

impl OpenFailure {
    fn into_error(self) -> Error {
        match self {
            OpenFailure::Vanished(e) | OpenFailure::Failed(e) => e,
        }
    }
}

impl From<Error> for OpenFailure {
    fn from(e: Error) -> Self {
        match &e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                OpenFailure::Vanished(e)
            }
            _ => OpenFailure::Failed(e),
        }
    }
}

fn open_once(dir: PathBuf, opts: Options) -> Result<Arc<Engine>, OpenFailure> {
    opts.validate()?;
    let fs = Arc::clone(&opts.fs);
    if !fs.exists(&dir) {
        if !opts.create_if_missing || opts.read_only {
            return Err(OpenFailure::Failed(Error::io(
                &dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "store directory does not exist",
                ),
            )));
        }
        files::create_dir_durably(&*fs, &dir)?;
    }
    let lock_path = dir.join(files::LOCK);
    // A read-only open takes no lock: it must work beside the live writer.
    let lock = if opts.read_only {
        None
    } else {
        Some(
            fs.try_lock(&lock_path)
                .map_err(|e| Error::io(&lock_path, e))?
                .ok_or_else(|| Error::Locked {
                    path: lock_path.clone(),
                })?,
        )
    };

    let names = fs.list(&dir).map_err(|e| Error::io(&dir, e))?;
    let kinds: Vec<(String, FileKind)> = names
        .iter()
        .filter_map(|n| files::parse_name(n).map(|k| (n.clone(), k)))
        .collect();
    let has_manifest = kinds.iter().any(|(_, k)| *k == FileKind::Manifest);
    let manifest = if has_manifest {
        files::read_manifest(&*fs, &dir)?
    } else {
        let ours = kinds
            .iter()
            .any(|(_, k)| matches!(k, FileKind::Wal(_) | FileKind::Segment(_)));
        let foreign = names
            .iter()
            .any(|n| files::parse_name(n).is_none() && !n.starts_with('.'));
        if ours || foreign || opts.read_only {
            return Err(Error::NotAStore { path: dir }.into());
        }
        let fresh = ManifestState {
            next_file_number: 2,
            log_number: 1,
            segments: Vec::new(),
            flushed_lsn: 0,
        };
        files::write_manifest(&*fs, &dir, &fresh)?;
        fresh
    };

    // Opening reads no segment's block or conversation index: each is read at its first
    // lookup, and the bytes loaded are charged to the memory budget at the next read.
    let readers = ReaderShared {
        index_loads: Arc::new(AtomicU64::new(0)),
        cache: Arc::new(BlockCache::new(opts.memory_budget_bytes)),
        pins: IndexPins::new(opts.memory_budget_bytes as u64 / PINNED_INDEX_DIVISOR),
    };
    let mut segments = Vec::with_capacity(manifest.segments.len());
    for rec in &manifest.segments {
        let path = files::segment_path(&dir, rec.number);
        let data = fs.open_random_access(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                OpenFailure::Vanished(Error::corruption(
                    &path,
                    0,
                    "segment listed in the manifest is missing",
                ))
            } else {
                OpenFailure::Failed(Error::io(&path, e))
            }
        })?;
        if data.len() != rec.file_bytes {
            return Err(Error::corruption(
                &path,
                data.len(),
                format!(
                    "segment is {} bytes, the manifest says {}",
                    data.len(),
                    rec.file_bytes
                ),
            )
            .into());
        }
        let mut reader = SegmentReader::open(&path, data)?;
        attach_reader(&mut reader, rec.number, &readers);
        segments.push(Arc::new(Segment::open_lazily(
            rec.number,
            rec.level,
            reader,
            Arc::clone(&fs),
        )?));
    }

    let live: Vec<u64> = manifest.segments.iter().map(|s| s.number).collect();
    let mut max_number = 0;
    let mut wals = Vec::new();
    for (name, kind) in &kinds {
        let garbage = match *kind {
            FileKind::Segment(n) => {
                max_number = max_number.max(n);
                !live.contains(&n)
            }
            FileKind::Wal(n) => {
                max_number = max_number.max(n);
                if n >= manifest.log_number {
                    wals.push(n);
                }
                n < manifest.log_number
            }
            FileKind::ManifestTmp => true,
            FileKind::Lock | FileKind::Manifest => false,
        };
        if garbage && !opts.read_only {
            let p = dir.join(name);
            fs.remove(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    wals.sort_unstable();

    super::version::sort_by_age(&mut segments);
    let memtables_held = Arc::new(AtomicU64::new(0));
    let base = Version {
        active: Arc::new(Memtable::new(manifest.log_number, &memtables_held)),
        frozen: Vec::new(),
        segments,
    };
    let last_lsn = replay(
        &*fs,
        &dir,
        &wals,
        &base,
        opts.read_only,
        manifest.flushed_lsn,
    )?;
    // No record replayed: the logs hold nothing (a clean close, or only headers).
    let replayed_nothing = last_lsn == manifest.flushed_lsn;
    if !opts.read_only && !replayed_nothing {
        // A crashed process may have left replayed records in the page cache only. They are
        // now visible and later ids build on them, so they must be durable before anything
        // new is acknowledged (and before a newer log exists: an older log is never torn).
        for &n in &wals {
            let path = files::wal_path(&dir, n);
            if fs.exists(&path) {
                fs.sync_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
    }

    let wal_number = manifest.next_file_number.max(max_number + 1);
    let wal_path = files::wal_path(&dir, wal_number);
    let wal_synced = Arc::new(AtomicU64::new(0));
    let wal = if opts.read_only {
        LogWriter::refusing(&wal_path)
    } else {
        let mut wal = LogWriter::create(&*fs, &wal_path, wal_number, Arc::clone(&wal_synced))?;
        // The new name becomes durable with the first record made durable in it (opening a
        // store to read never syncs the directory); the logs replayed above were synced.
        wal.defer_dir_sync(Arc::clone(&fs), dir.clone());
        // Logs that replayed no record (every one after a clean close) hold nothing the new
        // log does not supersede; only a flush would otherwise retire them, and a store
        // reopened without writing would gather one per open, each read and synced at every
        // open. Best effort: one left behind is retired at the next open.
        if replayed_nothing {
            for &n in &wals {
                let _ = fs.remove(&files::wal_path(&dir, n));
            }
        }
        wal
    };

    // The replayed memtable keeps its own WAL files alive until it is flushed; new writes go
    // to a new memtable so the memory bound holds from the first write.
    let version = if base.active.is_empty() {
        Version {
            active: Arc::new(Memtable::new(wal_number, &memtables_held)),
            ..base
        }
    } else {
        let replayed = Arc::clone(&base.active);
        Version {
            active: Arc::new(Memtable::new(wal_number, &memtables_held)),
            frozen: vec![replayed],
            segments: base.segments,
        }
    };

    let versions = VersionSet::new(
        dir.clone(),
        Arc::clone(&fs),
        version,
        manifest,
        wal_number + 1,
    );
    let dictionary = versions
        .current()
        .segments
        .iter()
        .rev()
        .find_map(|s| s.reader.dictionary().cloned())
        .map(Arc::new);
    Ok(Arc::new(Engine {
        // The newest segment's dictionary carries on until the next flush retrains one.
        dictionary: SharedDictionary::new(dictionary),
        compactor: Compactor::default(),
        readers,
        dir,
        fs,
        committer: Committer::new(wal, wal_synced, last_lsn, last_id_cache_budget(&opts)),
        versions,
        lifecycle: Lifecycle::default(),
        counters: Counters::default(),
        memtables_held,
        working_memory: AtomicU64::new(0),
        rebalancing: Mutex::new(()),
        lock: Mutex::new(lock),
        opts,
    }))
}

/// Replays `wals` (sorted) into `base.active`, checking that ids continue each conversation
/// and that log sequence numbers continue from `flushed_lsn`. Returns the last sequence
/// number replayed (`flushed_lsn` if none).
fn replay(
    fs: &dyn FileSystem,
    dir: &Path,
    wals: &[u64],
    base: &Version,
    read_only: bool,
    flushed_lsn: u64,
) -> Result<u64> {
    let mut last_lsn = flushed_lsn;
    let mut last: FxHashMap<ConversationId, u64> = FxHashMap::default();
    for (i, &n) in wals.iter().enumerate() {
        let newest = i + 1 == wals.len();
        let path = files::wal_path(dir, n);
        let data = fs.read(&path).map_err(|e| Error::io(&path, e))?;
        match wal::check_file_header(&data) {
            Ok(Some(v)) if v == 0 || v > WAL_VERSION => {
                return Err(Error::UnsupportedVersion {
                    path,
                    found: v,
                    supported: WAL_VERSION,
                })
            }
            Ok(Some(_)) => {}
            // Created, but its header never reached the disk: nothing in it was acknowledged
            // (the fsync of any record would have made the header durable too), unless a
            // valid record says otherwise.
            Ok(None) | Err(_) if newest && !vouched_without_header(&data, n) => {
                if !read_only {
                    fs.remove(&path).map_err(|e| Error::io(&path, e))?;
                }
                continue;
            }
            Ok(None) => return Err(Error::corruption(&path, 0, "WAL file header is incomplete")),
            Err(why) => return Err(Error::corruption(&path, 0, why)),
        }
        let mut reader = LogReader::new(&data, n);
        loop {
            match reader.next_step() {
                ReadStep::Record {
                    payload,
                    offset,
                    lsn,
                    ..
                } => {
                    // Version 1 records carry no sequence number: they get the next one.
                    let lsn = if lsn == 0 { last_lsn + 1 } else { lsn };
                    if lsn != last_lsn + 1 {
                        return Err(Error::corruption(
                            &path,
                            offset,
                            format!("log sequence gap: record {lsn} after record {last_lsn}"),
                        ));
                    }
                    last_lsn = lsn;
                    let entries = batch::decode(&data, payload)
                        .map_err(|why| Error::corruption(&path, offset, why))?;
                    let mut msgs = Vec::with_capacity(entries.len());
                    let mut state = Vec::new();
                    for entry in entries {
                        let m = match entry {
                            Entry::Message(m) => m,
                            Entry::State(k, v) => {
                                state.push((k, v));
                                continue;
                            }
                        };
                        let prev = match last.get(&m.conversation) {
                            Some(&id) => id,
                            None => base.last_id(m.conversation)?,
                        };
                        if m.id.0 != prev + 1 {
                            return Err(Error::corruption(
                                &path,
                                offset,
                                format!(
                                    "conversation {} continues at id {} after id {prev}",
                                    m.conversation, m.id
                                ),
                            ));
                        }
                        last.insert(m.conversation, m.id.0);
                        msgs.push(m);
                    }
                    base.active.apply(&msgs, &state, lsn);
                }
                ReadStep::End { .. } => break,
                ReadStep::TornTail { offset } if newest => {
                    if !read_only {
                        fs.truncate(&path, offset)
                            .map_err(|e| Error::io(&path, e))?;
                    }
                    break;
                }
                ReadStep::TornTail { offset } => {
                    return Err(Error::corruption(
                        &path,
                        offset,
                        "incomplete record in a WAL file that is not the newest",
                    ))
                }
                ReadStep::Corrupt { offset, reason } => {
                    return Err(Error::corruption(&path, offset, reason))
                }
            }
        }
    }
    Ok(last_lsn)
}

/// Whether a valid record of the log numbered `n`, read as any version that carries durability
/// claims (the damaged header no longer says which), claims that some of the file was durable.
fn vouched_without_header(data: &[u8], n: u64) -> bool {
    (2..=WAL_VERSION).any(|v| wal::vouched_after(data, FILE_HEADER_LEN, 0, v, n).is_some())
}
