//! The version set: the manifest on disk, the current in-memory version, and the file-number
//! counter, changed only through [`VersionSet::log_and_apply`] (segments come and go, the log
//! horizon moves) and [`VersionSet::switch_memtable`] (memory only).
//!
//! One function records a change durably and installs it, so the manifest and the version
//! never disagree about which segments are live, and no other module writes either (the
//! shape of LevelDB's `VersionSet::LogAndApply`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use super::files;
use super::memtable::Memtable;
use super::version::{sort_by_age, Segment, Version};
use crate::error::Result;
use crate::format::manifest::{ManifestState, SegmentRecord};
use crate::fs::FileSystem;

/// A change of the live file set: what a flush or a compaction did.
#[derive(Default)]
pub(crate) struct VersionEdit {
    /// Segments that are no longer live (compaction inputs), by file number.
    pub removed: Vec<u64>,
    /// New live segments, with the manifest records that describe them.
    pub added: Vec<(SegmentRecord, Arc<Segment>)>,
    /// A frozen memtable now in `added`: it leaves the version, the WAL horizon moves to the
    /// next-oldest memtable, and the flushed sequence number to its highest one.
    pub flushed: Option<Arc<Memtable>>,
}

/// What [`VersionSet::log_and_apply`] did: the WAL horizon after it (files below it are
/// obsolete).
pub(crate) struct Applied {
    pub log_number: u64,
}

pub(crate) struct VersionSet {
    dir: PathBuf,
    fs: Arc<dyn FileSystem>,
    /// The current version; readers clone the `Arc` and read without further locking.
    current: Mutex<Arc<Version>>,
    /// The last manifest written. Held across a whole log-and-apply, so edits are serialized.
    manifest: Mutex<ManifestState>,
    next_file_number: AtomicU64,
}

impl VersionSet {
    pub(crate) fn new(
        dir: PathBuf,
        fs: Arc<dyn FileSystem>,
        version: Version,
        manifest: ManifestState,
        next_file_number: u64,
    ) -> Self {
        VersionSet {
            dir,
            fs,
            current: Mutex::new(Arc::new(version)),
            manifest: Mutex::new(manifest),
            next_file_number: AtomicU64::new(next_file_number),
        }
    }

    /// The current version.
    pub(crate) fn current(&self) -> Arc<Version> {
        Arc::clone(&self.current.lock())
    }

    /// A new, never used file number.
    pub(crate) fn new_file_number(&self) -> u64 {
        self.next_file_number.fetch_add(1, Ordering::SeqCst)
    }

    /// The manifest as last written, locked: no edit is recorded while the guard lives
    /// (a checkpoint copies the files it names).
    pub(crate) fn manifest(&self) -> MutexGuard<'_, ManifestState> {
        self.manifest.lock()
    }

    /// Freezes the active memtable and installs `fresh` as the new one. Memory only: the
    /// frozen memtable's records are in the WAL until a flush records its segment.
    pub(crate) fn switch_memtable(&self, fresh: Memtable) {
        self.edit_memory(|v| {
            let old = std::mem::replace(&mut v.active, Arc::new(fresh));
            v.frozen.push(old);
        });
    }

    /// Writes a manifest with `edit` applied (durably: temp file, fsync, rename, directory
    /// fsync) and installs the version with it applied. On an error the version is unchanged,
    /// but the manifest on disk may be the old or the new one: the caller must stop writing
    /// (the next open reads whichever it is and removes the files it does not name).
    pub(crate) fn log_and_apply(&self, edit: VersionEdit) -> Result<Applied> {
        let mut manifest = self.manifest.lock();
        let mut next = manifest.clone();
        next.segments.retain(|r| !edit.removed.contains(&r.number));
        next.segments.extend(edit.added.iter().map(|(r, _)| *r));
        if let Some(mem) = &edit.flushed {
            // WAL files below the next-oldest memtable's first file hold only flushed data.
            let v = self.current();
            next.log_number = v
                .frozen
                .iter()
                .find(|m| !Arc::ptr_eq(m, mem))
                .map_or(v.active.first_wal(), |m| m.first_wal());
            next.flushed_lsn = next.flushed_lsn.max(mem.max_lsn());
        }
        next.next_file_number = self.next_file_number.load(Ordering::SeqCst);
        files::write_manifest(&*self.fs, &self.dir, &next)?;
        let log_number = next.log_number;
        *manifest = next;
        let VersionEdit {
            removed,
            added,
            flushed,
        } = edit;
        self.edit_memory(|v| {
            if let Some(mem) = &flushed {
                v.frozen.retain(|m| !Arc::ptr_eq(m, mem));
            }
            v.segments.retain(|s| !removed.contains(&s.number));
            v.segments.extend(added.into_iter().map(|(_, s)| s));
            sort_by_age(&mut v.segments);
        });
        // The version let go of the flushed memtable; so does this edit, now.
        drop(flushed);
        Ok(Applied { log_number })
    }

    /// Applies `edit` to a copy of the current version and installs it, atomically with
    /// respect to other edits.
    fn edit_memory<T>(&self, edit: impl FnOnce(&mut Version) -> T) -> T {
        let mut cur = self.current.lock();
        let mut v = (**cur).clone();
        let out = edit(&mut v);
        *cur = Arc::new(v);
        out
    }
}
