//! Verification: read every file, check every checksum and invariant, report what is wrong.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::files::{self, FileKind};
use super::Engine;
use crate::error::{Error, Result};
use crate::format::batch;
use crate::format::segment::logical_bytes_of;
use crate::format::wal::{self, LogReader, ReadStep};
use crate::types::ConversationId;

/// One thing verification found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// Byte offset of the damage (0 when it concerns the whole file).
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
}

/// What [`Store::verify`](crate::Store::verify) read and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VerifyReport {
    /// Segments read.
    pub segments: u64,
    /// Message blocks read.
    pub blocks: u64,
    /// State blocks read.
    pub state_blocks: u64,
    /// Messages read.
    pub messages: u64,
    /// State entries read.
    pub state_entries: u64,
    /// WAL files read.
    pub wal_files: u64,
    /// WAL records read.
    pub wal_records: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Everything found wrong; empty for a healthy store.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True if nothing was found wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, e: Error) {
        let (path, offset, reason) = match e {
            Error::Corruption {
                path,
                offset,
                reason,
            } => (path, offset, reason),
            Error::Io { path, source } => (path, 0, source.to_string()),
            other => (PathBuf::new(), 0, other.to_string()),
        };
        self.problems.push(Problem {
            path,
            offset,
            reason,
        });
    }
}

impl Engine {
    /// Reads every live segment and WAL file. `progress` gets (bytes done, bytes total).
    pub(crate) fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        let v = self.current();
        let mut report = VerifyReport::default();
        let total = v
            .segments
            .iter()
            .map(|s| s.reader.file_bytes())
            .fold(0, u64::saturating_add);
        // Per conversation, the id ranges each segment holds, to check they never overlap.
        let mut ranges: BTreeMap<ConversationId, Vec<(u64, u64, u64)>> = BTreeMap::new();
        for seg in &v.segments {
            report.segments += 1;
            let path = seg.reader.path().to_path_buf();
            let r = &seg.reader;
            let mut seen: BTreeMap<ConversationId, (u64, u64)> = BTreeMap::new();
            let mut messages = 0u64;
            let loaded = match r.load_indexes() {
                Ok(loaded) => Some(loaded),
                Err(e) => {
                    report.problem(e);
                    None
                }
            };
            let index = loaded.as_ref().map(|l| l.view());
            for b in 0..index.map_or(0, |_| r.block_count()) {
                report.blocks += 1;
                let offset = index.map_or(0, |i| i.block_handle(b).offset);
                let block = match r.read_block(b) {
                    Ok(block) => block,
                    Err(e) => {
                        report.problem(e);
                        continue;
                    }
                };
                let recorded = index.and_then(|i| i.block_logical_bytes(b));
                if recorded.is_some_and(|size| u64::from(size) != logical_bytes_of(&block)) {
                    report.problem(Error::corruption(
                        &path,
                        offset,
                        "the block sizes disagree with the block's rows",
                    ));
                }
                for run in block.runs() {
                    let last = run.first_id + u64::from(run.len) - 1;
                    match seen.get_mut(&run.conversation) {
                        Some(range) if range.1 + 1 == run.first_id => range.1 = last,
                        Some(_) => report.problem(Error::corruption(
                            &path,
                            offset,
                            format!("conversation {} has a gap or overlap", run.conversation),
                        )),
                        None => {
                            seen.insert(run.conversation, (run.first_id, last));
                        }
                    }
                }
                messages += block.rows() as u64;
            }
            if index.is_some() && messages != r.message_count() {
                report.problem(Error::corruption(
                    &path,
                    0,
                    format!(
                        "footer counts {} messages, blocks hold {messages}",
                        r.message_count()
                    ),
                ));
            }
            if index.is_some() && seen.len() != r.conversation_count() {
                report.problem(Error::corruption(
                    &path,
                    0,
                    "conversation index and blocks disagree on the conversations",
                ));
            }
            for (conv, &(first, last)) in &seen {
                if index.and_then(|i| i.conversation_range(*conv)) != Some((first, last)) {
                    report.problem(Error::corruption(
                        &path,
                        0,
                        format!("conversation index disagrees with the blocks for {conv}"),
                    ));
                }
                ranges
                    .entry(*conv)
                    .or_default()
                    .push((first, last, seg.number));
            }
            report.messages += messages;
            let mut prev: Option<bytes::Bytes> = None;
            for b in 0..r.state_block_count() {
                report.state_blocks += 1;
                match r.read_state_block(b) {
                    Ok(block) => {
                        for (k, _) in block.entries() {
                            if prev.as_ref().is_some_and(|p| p >= k) {
                                report.problem(Error::corruption(
                                    &path,
                                    r.state_handle(b).offset,
                                    "state keys out of order across blocks",
                                ));
                            }
                            prev = Some(k.clone());
                            report.state_entries += 1;
                        }
                    }
                    Err(e) => report.problem(e),
                }
            }
            report.bytes += r.file_bytes();
            progress(report.bytes, total);
        }
        for (conv, mut rs) in ranges {
            rs.sort_unstable();
            for w in rs.windows(2) {
                if w[1].0 <= w[0].1 {
                    report.problem(Error::corruption(
                        files::segment_path(&self.dir, w[1].2),
                        0,
                        format!(
                            "conversation {conv} ids {}..={} overlap segment {}",
                            w[1].0, w[1].1, w[0].2
                        ),
                    ));
                }
            }
        }
        self.verify_wals(&mut report)?;
        progress(total, total);
        Ok(report)
    }

    fn verify_wals(&self, report: &mut VerifyReport) -> Result<()> {
        let horizon = self.versions.manifest().log_number;
        let names = self
            .fs
            .list(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        let mut wals: Vec<u64> = names
            .iter()
            .filter_map(|n| match files::parse_name(n) {
                Some(FileKind::Wal(n)) if n >= horizon => Some(n),
                _ => None,
            })
            .collect();
        wals.sort_unstable();
        for (i, &n) in wals.iter().enumerate() {
            let newest = i + 1 == wals.len();
            let path = files::wal_path(&self.dir, n);
            // A file may vanish if a flush retires it meanwhile: that is not damage.
            let Ok(data) = self.fs.read(&path) else {
                continue;
            };
            report.wal_files += 1;
            report.bytes += data.len() as u64;
            if let Err(why) = wal::check_file_header(&data) {
                report.problem(Error::corruption(&path, 0, why));
                continue;
            }
            let mut reader = LogReader::new(&data, n);
            loop {
                match reader.next_step() {
                    ReadStep::Record {
                        payload, offset, ..
                    } => {
                        report.wal_records += 1;
                        if let Err(why) = batch::decode(&data, payload) {
                            report.problem(Error::corruption(&path, offset, why));
                        }
                    }
                    ReadStep::End { .. } => break,
                    // The live log may end in a record being written right now.
                    ReadStep::TornTail { .. } if newest => break,
                    ReadStep::TornTail { offset } => {
                        report.problem(Error::corruption(&path, offset, "incomplete record"));
                        break;
                    }
                    ReadStep::Corrupt { offset, reason } => {
                        report.problem(Error::corruption(&path, offset, reason));
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}
