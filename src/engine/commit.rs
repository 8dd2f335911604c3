//! The write path: group commit.
//!
//! Writers queue their batch and wait. The first writer to find no leader becomes the leader:
//! it takes every queued batch, assigns ids, frames one WAL record per batch into one buffer,
//! writes it with one `write`, issues one fsync for the whole group (in `Sync` durability), then
//! makes the messages visible in the memtable and hands each writer its result. Writers that
//! arrive meanwhile form the next group, so under load one fsync serves many writers.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use super::files;
use super::log_writer::LogWriter;
use super::memtable::Memtable;
use super::version::Version;
use super::Engine;
use crate::error::{Error, Result};
use crate::format::{batch, wal};
use crate::options::Durability;
use crate::types::{ConversationId, Message, MessageId, NewMessage};
use std::sync::Arc;

type Batch = Vec<(ConversationId, NewMessage)>;
type Outcome = Result<Vec<Message>>;

/// Writers waiting for a leader, and results waiting for their writers.
#[derive(Default)]
pub(crate) struct WriteQueue {
    pending: Vec<(u64, Batch)>,
    done: FxHashMap<u64, Outcome>,
    next_ticket: u64,
    leader_active: bool,
}

/// Buffers the leader reuses from group to group.
#[derive(Default)]
pub(crate) struct LeaderScratch {
    frame: Vec<u8>,
    /// Last id assigned in this group per conversation.
    assigned: FxHashMap<ConversationId, u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn copy_error(e: &Error) -> Error {
    match e {
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::Poisoned(other.to_string()),
    }
}

impl Engine {
    /// Appends a batch atomically (one WAL record) and returns the stored messages.
    pub(crate) fn write(&self, batch: Batch) -> Outcome {
        self.check_writable()?;
        for (_, m) in &batch {
            if m.content.is_empty() && m.attachment.is_none() {
                return Err(Error::EmptyMessage);
            }
            if m.size() > self.opts.max_message_bytes {
                return Err(Error::MessageTooLarge {
                    size: m.size(),
                    limit: self.opts.max_message_bytes,
                });
            }
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = self.queue.lock();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push((ticket, batch));
        loop {
            if let Some(outcome) = q.done.remove(&ticket) {
                return outcome;
            }
            if !q.leader_active {
                q.leader_active = true;
                let group = std::mem::take(&mut q.pending);
                drop(q);
                let outcomes = self.commit_group(group);
                q = self.queue.lock();
                q.done.extend(outcomes);
                q.leader_active = false;
                self.queue_cv.notify_all();
                continue;
            }
            self.queue_cv.wait(&mut q);
        }
    }

    /// Commits one group as leader.
    fn commit_group(&self, group: Vec<(u64, Batch)>) -> Vec<(u64, Outcome)> {
        let mut scratch = self.leader.lock();
        let scratch = &mut *scratch;
        if let Err(e) = self.check_writable() {
            return group
                .into_iter()
                .map(|(t, _)| (t, Err(copy_error(&e))))
                .collect();
        }
        let version = self.current();
        let now = now_ms();
        scratch.frame.clear();
        scratch.assigned.clear();
        let mut outcomes: Vec<(u64, Outcome)> = Vec::with_capacity(group.len());
        let mut accepted = 0usize;
        for (ticket, items) in group {
            match self.assign(&version, scratch, items, now) {
                Ok(msgs) => {
                    let start = wal::begin_record(&mut scratch.frame);
                    batch::put_count(&mut scratch.frame, msgs.len());
                    for m in &msgs {
                        batch::put_message(&mut scratch.frame, m);
                    }
                    wal::finish_record(&mut scratch.frame, start, wal::RecordType::Batch);
                    accepted += msgs.len();
                    outcomes.push((ticket, Ok(msgs)));
                }
                Err(e) => outcomes.push((ticket, Err(e))),
            }
        }
        if accepted == 0 {
            return outcomes;
        }
        if let Err(e) = self.write_wal(&scratch.frame) {
            // Ids were handed out but the record may be half on disk: refuse further writes
            // until a reopen decides, from the log itself, what was committed.
            self.set_poison(format!("WAL write failed: {e}"));
            for (_, o) in outcomes.iter_mut() {
                if o.is_ok() {
                    *o = Err(copy_error(&e));
                }
            }
            return outcomes;
        }
        version.active.insert(
            outcomes
                .iter()
                .filter_map(|(_, o)| o.as_ref().ok())
                .flatten(),
        );
        self.counters
            .messages_appended
            .fetch_add(accepted as u64, Ordering::Relaxed);
        self.counters.write_groups.fetch_add(1, Ordering::Relaxed);
        if version.active.bytes() >= self.opts.memtable_bytes {
            if let Err(e) = self.freeze(scratch) {
                self.set_poison(format!("memtable switch failed: {e}"));
            }
        }
        outcomes
    }

    /// Gives each message of a batch its id, checking what can only be checked in order.
    fn assign(
        &self,
        version: &Version,
        scratch: &mut LeaderScratch,
        items: Batch,
        now: u64,
    ) -> Result<Vec<Message>> {
        let mut msgs = Vec::with_capacity(items.len());
        // Ids this batch takes, applied to `scratch.assigned` only if the whole batch is valid.
        let mut local: Vec<(ConversationId, u64)> = Vec::new();
        for (conv, m) in items {
            let last = match local.iter().rev().find(|(c, _)| *c == conv) {
                Some(&(_, id)) => id,
                None => match scratch.assigned.get(&conv) {
                    Some(&id) => id,
                    None => version.last_id(conv),
                },
            };
            if let Some(r) = m.reply_to {
                if r.0 == 0 || r.0 > last {
                    return Err(Error::IdOutOfRange {
                        conversation: conv,
                        id: r,
                        last: MessageId(last),
                    });
                }
            }
            let id = last + 1;
            local.push((conv, id));
            msgs.push(Message {
                conversation: conv,
                id: MessageId(id),
                sender: m.sender,
                timestamp_ms: now,
                kind: m.kind,
                content: m.content,
                attachment: m.attachment,
                reply_to: m.reply_to,
                mentions: m.mentions,
            });
        }
        for (conv, id) in local {
            scratch.assigned.insert(conv, id);
        }
        Ok(msgs)
    }

    fn write_wal(&self, frame: &[u8]) -> Result<()> {
        let mut wal = self.wal.lock();
        wal.append(frame)?;
        self.counters
            .wal_bytes_written
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if self.opts.durability == Durability::Sync && wal.sync()? {
            self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Freezes the active memtable and starts a new one with a new WAL file, first waiting
    /// (not failing) while too many frozen memtables wait for flush.
    /// REQUIRES: the caller holds the leader lock (passes its scratch as proof).
    pub(crate) fn freeze(&self, _leader: &mut LeaderScratch) -> Result<()> {
        let mut stalled: Option<Instant> = None;
        {
            let mut g = self.bg.lock();
            while self.current().frozen.len() >= self.opts.max_frozen_memtables {
                self.check_writable()?;
                stalled.get_or_insert_with(Instant::now);
                self.bg_cv.notify_all();
                self.bg_cv.wait_for(&mut g, Duration::from_millis(100));
            }
        }
        if let Some(t) = stalled {
            self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
            self.counters
                .write_stall_micros
                .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let number = self.next_file_number.fetch_add(1, Ordering::SeqCst);
        let path = files::wal_path(&self.dir, number);
        let mut wal = self.wal.lock();
        // The old log must be complete on disk before a newer one exists: recovery treats a
        // torn tail anywhere but in the newest log as corruption.
        if wal.sync()? {
            self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let new_wal = LogWriter::create(&*self.fs, &path)?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        *wal = new_wal;
        drop(wal);
        self.edit_version(|v| {
            let old = std::mem::replace(&mut v.active, Arc::new(Memtable::new(number)));
            v.frozen.push(old);
        });
        let _g = self.bg.lock();
        self.bg_cv.notify_all();
        Ok(())
    }
}
