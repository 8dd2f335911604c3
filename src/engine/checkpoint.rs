//! Checkpoints: a consistent, openable copy of a live store.
//!
//! Segments are immutable, so they are hard-linked (copied where links are not possible). The
//! live WAL files are copied byte for byte: a copy taken mid-append ends in a torn record,
//! which the copy's recovery cuts off, leaving a consistent prefix of every conversation.
//! While the copy is made, compaction is paused and flushes wait (so no file the checkpoint
//! needs is deleted); writers keep appending to the WAL.

use std::path::Path;

use super::files::{self, FileKind};
use super::Engine;
use crate::error::{Error, Result};
use crate::format::wal::{LogReader, ReadStep};

impl Engine {
    /// Writes a checkpoint of the store into `dest`, which must not exist. `progress` is told
    /// (bytes done, bytes total). Returns the log sequence number the copy holds.
    pub(crate) fn checkpoint(
        &self,
        dest: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        if self.fs.exists(dest) {
            return Err(Error::InvalidArgument(format!(
                "checkpoint destination {} already exists",
                dest.display()
            )));
        }
        files::create_dir_durably(&*self.fs, dest)?;
        // Lock order as everywhere: compaction, then manifest.
        let _no_compaction = self.compactor.pause();
        let manifest = self.versions.manifest();
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        let mut wals: Vec<u64> = names
            .iter()
            .filter_map(|n| match files::parse_name(n) {
                Some(FileKind::Wal(n)) if n >= manifest.log_number => Some(n),
                _ => None,
            })
            .collect();
        wals.sort_unstable();
        let total = manifest
            .segments
            .iter()
            .map(|s| s.file_bytes)
            .fold(0, u64::saturating_add);
        let mut done = 0;
        progress(done, total);
        for s in &manifest.segments {
            let from = files::segment_path(&self.dir, s.number);
            let to = files::segment_path(dest, s.number);
            self.fs
                .link_or_copy(&from, &to)
                .map_err(|e| Error::io(&from, e))?;
            done += s.file_bytes;
            progress(done, total);
        }
        // The copy's recovery replays the copied logs up to their first incomplete record;
        // its sequence number is the last one of those (or the manifest's, if none).
        let mut lsn = manifest.flushed_lsn;
        for n in wals {
            let from = files::wal_path(&self.dir, n);
            let to = files::wal_path(dest, n);
            let data = self.fs.read(&from).map_err(|e| Error::io(&from, e))?;
            let mut reader = LogReader::new(&data, n);
            while let ReadStep::Record { lsn: record, .. } = reader.next_step() {
                lsn = if record == 0 { lsn + 1 } else { record };
            }
            let mut f = self.fs.create(&to).map_err(|e| Error::io(&to, e))?;
            f.write_all(&data).map_err(|e| Error::io(&to, e))?;
            f.sync().map_err(|e| Error::io(&to, e))?;
        }
        files::write_manifest(&*self.fs, dest, &manifest)?;
        progress(total, total);
        Ok(lsn)
    }
}
