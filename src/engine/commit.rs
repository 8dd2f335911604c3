//! The write path: transactions committed in groups.
//!
//! A write is a closure run against a [`Txn`]: it may read state, append messages and set
//! state keys; everything it does becomes one WAL record, applied all or nothing. Writers queue
//! their closure and wait. The first writer to find no leader becomes the leader: it takes every
//! queued closure, runs them one after another (each sees the effects of those before it),
//! frames one record per successful closure into one buffer, writes it with one `write`, issues
//! one fsync for the whole group (in `Sync` durability), then makes the results visible in the
//! memtable and hands each writer its outcome. Writers arriving meanwhile form the next group,
//! so under load one fsync serves many writers, and closures are serialized without a lock
//! held across the fsync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use rustc_hash::FxHashMap;

use super::files;
use super::last_ids::LastIds;
use super::log_writer::LogWriter;
use super::memtable::Memtable;
use super::version::Version;
use super::Engine;
use crate::commit_log::CommitRecord;
use crate::error::{Error, Result};
use crate::format::state_block::MAX_KEY_LEN;
use crate::format::{batch, wal};
use crate::options::Durability;
use crate::types::{ConversationId, Message, MessageId, MessageKind, NewMessage};

type Job = Box<dyn FnOnce(&mut Txn<'_>) -> Result<()> + Send>;

/// Writers waiting for a leader, and outcomes waiting for their writers.
#[derive(Default)]
struct WriteQueue {
    pending: Vec<(u64, Job)>,
    /// Each finished transaction's outcome: the messages it appended, once committed.
    done: FxHashMap<u64, Result<Vec<Message>>>,
    next_ticket: u64,
    leader_active: bool,
}

/// The write path's state: the queue of writers, the leader's scratch, the WAL being
/// appended to, and the last log sequence number applied. Only this module reads or changes
/// it; the rest of the engine calls [`Engine::transact`], [`Engine::sync`],
/// [`Engine::freeze_active`] and the accessors below.
pub(super) struct Committer {
    /// Writers waiting to be committed by a leader.
    queue: Mutex<WriteQueue>,
    queue_cv: Condvar,
    /// Held by the write leader for a whole group commit (and by a memtable switch).
    leader: Mutex<LeaderScratch>,
    /// The WAL file being appended to. Lock order: `leader` before `wal`.
    wal: Mutex<LogWriter>,
    /// How many bytes of the current WAL file are durable (kept by the `LogWriter`).
    wal_synced: Arc<AtomicU64>,
    /// The log sequence number of the last commit record applied (visible); only the write
    /// leader advances it.
    last_lsn: AtomicU64,
    /// Retired WAL files kept to be reused by the next memtable switches. Lock order: after
    /// `wal`.
    retired: Mutex<RetiredLogs>,
}

/// WAL files whose records are all in segments, kept to become newer logs instead of being
/// deleted (`Options::recycled_wal_files`). Only logs this process created are kept: they
/// are of the current format, whose record checksums cover the file's number.
struct RetiredLogs {
    numbers: Vec<u64>,
    /// The first log number this process created.
    first_own: u64,
    /// Callers of [`Engine::pause_log_recycling`] still under way: none is kept or reused.
    paused: usize,
}

impl RetiredLogs {
    /// Whether retired log `n` is kept for reuse; if not, the caller deletes it.
    fn keep(&mut self, n: u64, capacity: usize) -> bool {
        let keep = self.paused == 0 && n >= self.first_own && self.numbers.len() < capacity;
        if keep {
            self.numbers.push(n);
        }
        keep
    }

    /// The kept log to reuse next: the oldest. Each rotation takes one and each flush keeps
    /// at most as many as it retired, so taking the newest would leave the oldest kept for as
    /// long as the store stays open under writes, with its records (the text of messages
    /// deleted or edited since) on disk. Taking the oldest reuses every kept log within
    /// `capacity` rotations, and the rotation after its reuse cuts it to its own records.
    fn take_oldest(&mut self) -> Option<u64> {
        let (at, _) = self.numbers.iter().enumerate().min_by_key(|&(_, &n)| n)?;
        Some(self.numbers.swap_remove(at))
    }
}

/// Keeps retired WAL files from being kept or reused while it lives (see
/// [`Engine::pause_log_recycling`]).
pub(crate) struct RecyclingPaused<'a> {
    engine: &'a Engine,
}

impl Drop for RecyclingPaused<'_> {
    fn drop(&mut self) {
        let mut retired = self.engine.committer.retired.lock();
        retired.paused = retired.paused.saturating_sub(1);
    }
}

impl Committer {
    /// The write path of a store recovered up to `last_lsn`, appending to `wal`.
    pub(super) fn new(
        wal: LogWriter,
        wal_synced: Arc<AtomicU64>,
        last_lsn: u64,
        memory_budget: usize,
    ) -> Self {
        let retired = RetiredLogs {
            numbers: Vec::new(),
            first_own: wal.number(),
            paused: 0,
        };
        Committer {
            queue: Mutex::new(WriteQueue::default()),
            queue_cv: Condvar::new(),
            leader: Mutex::new(LeaderScratch {
                frame: Vec::new(),
                ids: FxHashMap::default(),
                last_ids: LastIds::for_budget(memory_budget),
                state: FxHashMap::default(),
                wal_number: wal.number(),
            }),
            wal: Mutex::new(wal),
            wal_synced,
            last_lsn: AtomicU64::new(last_lsn),
            retired: Mutex::new(retired),
        }
    }

    /// The log sequence number of the last commit record applied.
    pub(super) fn last_lsn(&self) -> u64 {
        self.last_lsn.load(Ordering::Acquire)
    }

    /// Bytes in the current WAL file.
    pub(super) fn wal_len(&self) -> u64 {
        self.wal.lock().len()
    }

    /// Wakes writers waiting in the queue (after a poison or a shutdown, so they see it).
    pub(super) fn wake_writers(&self) {
        let _q = self.queue.lock();
        self.queue_cv.notify_all();
    }

    /// Fsyncs the WAL; `Ok(true)` if there was anything to sync.
    fn sync_wal(&self) -> Result<bool> {
        self.wal.lock().sync()
    }
}

/// Buffers the leader reuses from group to group.
struct LeaderScratch {
    frame: Vec<u8>,
    /// Last id assigned in this group per conversation.
    ids: FxHashMap<ConversationId, u64>,
    /// Committed last ids of recently written conversations.
    last_ids: LastIds,
    /// State written in this group.
    state: FxHashMap<Bytes, Option<Bytes>>,
    /// The number of the WAL file records are framed for (their checksums cover it); changed
    /// only by a memtable switch, which holds the leader's lock.
    wal_number: u64,
}

/// One transaction's view and effects. Reads see the store as of the start of the group plus
/// the effects of earlier transactions in the group and of this one.
pub(crate) struct Txn<'a> {
    version: &'a Version,
    engine: &'a Engine,
    group_ids: &'a FxHashMap<ConversationId, u64>,
    last_ids: &'a LastIds,
    group_state: &'a FxHashMap<Bytes, Option<Bytes>>,
    now: u64,
    /// The log sequence number this transaction's record gets if it has effects.
    lsn: u64,
    /// The record came from the commit log (`Store::apply`): it is not handed back to it.
    from_log: bool,
    messages: Vec<Message>,
    /// Last id this transaction gave each conversation (a scan of `messages` would make a
    /// batch append quadratic).
    own_ids: FxHashMap<ConversationId, u64>,
    state: Vec<(Bytes, Option<Bytes>)>,
}

impl Txn<'_> {
    /// Server time of this commit group, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        self.now
    }

    /// The log sequence number this transaction's commit record gets if it has any effect.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Marks this transaction as the application of a record the commit log already holds,
    /// so the record is not appended to the log again.
    pub fn mark_from_log(&mut self) {
        self.from_log = true;
    }

    /// Makes room for `n` more appends, so that a batch's messages are not moved again each
    /// time the transaction's vectors grow (~1 % of the writer's time in a profile of the
    /// long preset's durable ingest).
    pub fn reserve_appends(&mut self, n: usize) {
        self.messages.reserve(n);
        self.own_ids.reserve(n);
    }

    /// Asks the CPU ahead for what [`last_id`](Self::last_id) of each of `convs` will read
    /// in the last-id cache (a batch's appends, before they are made).
    pub fn prefetch_last_ids(&self, convs: impl Iterator<Item = ConversationId>) {
        for conv in convs {
            self.last_ids.prefetch(conv);
        }
    }

    /// The conversation's last id including appends made earlier in the group or this txn.
    pub fn last_id(&self, conv: ConversationId) -> Result<u64> {
        if let Some(&id) = self.own_ids.get(&conv) {
            return Ok(id);
        }
        if let Some(&id) = self.group_ids.get(&conv) {
            return Ok(id);
        }
        match self.last_ids.get(conv) {
            Some(id) => Ok(id),
            None => {
                self.engine
                    .counters
                    .last_id_searches
                    .fetch_add(1, Ordering::Relaxed);
                self.version.last_id(conv)
            }
        }
    }

    /// The current value of state `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if let Some((_, v)) = self.state.iter().rev().find(|(k, _)| k.as_ref() == key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.group_state.get(key) {
            return Ok(v.clone());
        }
        self.version.state_get(&self.engine.readers.cache, key)
    }

    /// Appends a message, giving it the conversation's next id.
    pub fn append(&mut self, conv: ConversationId, m: NewMessage) -> Result<Message> {
        self.append_owned(conv, m)?;
        self.messages
            .last()
            .cloned()
            .ok_or_else(|| Error::Internal("an append recorded no message".into()))
    }

    /// Appends a message like [`append`](Self::append) without returning a copy: the
    /// transaction's committed messages come back from [`Engine::transact_appending`].
    pub fn append_owned(&mut self, conv: ConversationId, m: NewMessage) -> Result<()> {
        self.engine.check_message(&m)?;
        let last = self.last_id(conv)?;
        if let Some(r) = m.reply_to {
            if r.0 == 0 || r.0 > last {
                return Err(Error::IdOutOfRange {
                    conversation: conv,
                    id: r,
                    last: MessageId(last),
                });
            }
        }
        let next = next_id(conv, last)?;
        self.own_ids.insert(conv, next);
        self.messages.push(Message {
            conversation: conv,
            id: MessageId(next),
            sender: m.sender,
            timestamp_ms: self.now,
            kind: m.kind,
            content: m.content,
            attachment: m.attachment,
            reply_to: m.reply_to,
            mentions: m.mentions,
            edited_ms: None,
        });
        Ok(())
    }

    /// Appends a message exactly as given (id, timestamp, kind, edit), for restoring an
    /// export. Its id must be the conversation's next one.
    pub fn restore(&mut self, m: Message) -> Result<()> {
        let last = self.last_id(m.conversation)?;
        let next = next_id(m.conversation, last)?;
        if m.id.0 != next {
            return Err(Error::InvalidArgument(format!(
                "conversation {} continues at id {next}, not {}",
                m.conversation, m.id
            )));
        }
        if m.content
            .len()
            .saturating_add(m.attachment.as_ref().map_or(0, |a| a.len()))
            > self.engine.opts.max_message_bytes
        {
            return Err(Error::MessageTooLarge {
                size: m.content.len(),
                limit: self.engine.opts.max_message_bytes,
            });
        }
        if let Some(at_ms) = m.edited_ms {
            let o = if m.kind == MessageKind::Deleted {
                super::overrides::Override::Deleted { at_ms }
            } else {
                super::overrides::Override::Edited {
                    at_ms,
                    content: m.content.clone(),
                }
            };
            self.set_override(m.conversation, m.id, &o)?;
        }
        let mut row = m;
        row.edited_ms = None;
        self.own_ids.insert(row.conversation, row.id.0);
        self.messages.push(row);
        Ok(())
    }

    /// Message `id` of `conv` as readers would see it (edits and deletes applied), if it
    /// exists and has not expired. Sees edits made earlier in the group.
    pub fn message(&self, conv: ConversationId, id: MessageId) -> Result<Option<Message>> {
        if let Some(m) = self
            .messages
            .iter()
            .find(|m| m.conversation == conv && m.id == id)
        {
            return Ok(Some(m.clone()));
        }
        let mut found = Vec::with_capacity(1);
        self.version
            .collect(&self.engine.readers.cache, conv, id.0, id.0, &mut found)?;
        let Some(mut m) = found.pop() else {
            return Ok(None);
        };
        if self.engine.expiry(self.version, conv)?.hides(&m) {
            return Ok(None);
        }
        if let Some(v) = self.get(&super::overrides::edit_key(conv, id))? {
            let o = super::overrides::Override::decode(&v)
                .ok_or_else(|| Error::corruption("<state>", 0, "malformed edit record"))?;
            o.apply(&mut m);
        }
        Ok(Some(m))
    }

    /// Records an edit or delete of message `id` (which the caller checked exists).
    pub fn set_override(
        &mut self,
        conv: ConversationId,
        id: MessageId,
        o: &super::overrides::Override,
    ) -> Result<()> {
        self.put(super::overrides::edit_key(conv, id), o.encode())
    }

    /// Sets the conversation's time-to-live (0 removes it).
    pub fn set_ttl(&mut self, conv: ConversationId, ttl_ms: u64) -> Result<()> {
        self.put(
            super::overrides::ttl_key(conv),
            super::overrides::encode_ttl(ttl_ms),
        )
    }

    /// Sets state `key` to `value`.
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<()> {
        let key = key.into();
        if key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidArgument(format!(
                "state key of {} bytes is over the {MAX_KEY_LEN}-byte limit",
                key.len()
            )));
        }
        self.state.push((key, Some(value.into())));
        Ok(())
    }

    /// Deletes state `key`.
    pub fn delete(&mut self, key: impl Into<Bytes>) -> Result<()> {
        let key = key.into();
        if key.len() > MAX_KEY_LEN {
            return Err(Error::InvalidArgument(format!(
                "state key of {} bytes is over the {MAX_KEY_LEN}-byte limit",
                key.len()
            )));
        }
        self.state.push((key, None));
        Ok(())
    }
}

/// The id after `last` in `conv`: an error, not an overflow, when `last` is the largest id
/// (only a damaged segment or log can claim it: ids grow by one from 1).
fn next_id(conv: ConversationId, last: u64) -> Result<u64> {
    last.checked_add(1).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "conversation {conv} has no id after {last}: the store holds the largest id"
        ))
    })
}

fn copy_error(e: &Error) -> Error {
    match e {
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Closed => Error::Closed,
        Error::ReadOnly => Error::ReadOnly,
        Error::Poisoned(why) => Error::Poisoned(why.clone()),
        other => Error::Internal(format!("uncopied error in a commit group: {other}")),
    }
}

impl Engine {
    /// Checks a message against the store's size limit. The engine stores any bytes, empty
    /// content included (real chat histories hold empty messages); the chat model refuses an
    /// empty send itself.
    pub(crate) fn check_message(&self, m: &NewMessage) -> Result<()> {
        if m.size() > self.opts.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: m.size(),
                limit: self.opts.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Checks the new content of an edit against the message size limit (empty content is
    /// allowed, as for appends).
    pub(crate) fn check_edit(&self, content: &Bytes) -> Result<()> {
        if content.len() > self.opts.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: content.len(),
                limit: self.opts.max_message_bytes,
            });
        }
        Ok(())
    }

    /// Appends a batch of messages atomically (one WAL record).
    pub(crate) fn write(&self, batch: Vec<(ConversationId, NewMessage)>) -> Result<Vec<Message>> {
        for (_, m) in &batch {
            self.check_message(m)?;
        }
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // The committed messages themselves are handed back: no per-message copy.
        let ((), messages) = self.transact_appending(move |txn| {
            txn.reserve_appends(batch.len());
            txn.prefetch_last_ids(batch.iter().map(|(conv, _)| *conv));
            for (conv, m) in batch {
                txn.append_owned(conv, m)?;
            }
            Ok(())
        })?;
        Ok(messages)
    }

    /// Runs `f` as a transaction in the next commit group and returns its result once its
    /// effects are committed (durable in `Sync` durability) and visible.
    pub(crate) fn transact<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        self.transact_appending(f).map(|(value, _)| value)
    }

    /// [`transact`](Self::transact), also returning the messages the transaction appended,
    /// as committed.
    pub(crate) fn transact_appending<T, F>(&self, f: F) -> Result<(T, Vec<Message>)>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        self.check_writable()?;
        let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
        let out = Arc::clone(&slot);
        let job: Job = Box::new(move |txn| {
            let v = f(txn)?;
            *out.lock() = Some(v);
            Ok(())
        });
        let mut q = self.committer.queue.lock();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push((ticket, job));
        let outcome = loop {
            if let Some(outcome) = q.done.remove(&ticket) {
                break outcome;
            }
            if !q.leader_active {
                q.leader_active = true;
                let group = std::mem::take(&mut q.pending);
                drop(q);
                let outcomes = self.commit_group_guarded(group);
                q = self.committer.queue.lock();
                q.done.extend(outcomes);
                q.leader_active = false;
                self.committer.queue_cv.notify_all();
                continue;
            }
            self.committer.queue_cv.wait(&mut q);
        };
        drop(q);
        let messages = outcome?;
        let value = slot.lock().take();
        let value =
            value.ok_or_else(|| Error::Internal("transaction produced no result".into()))?;
        Ok((value, messages))
    }

    /// [`commit_group`](Self::commit_group), turning a panic inside it (a bug, or a file
    /// system that panics) into an error for every writer of the group and a poisoned store:
    /// otherwise the writers would wait forever for outcomes that never come, and so would
    /// every writer after them.
    fn commit_group_guarded(&self, group: Vec<(u64, Job)>) -> Vec<(u64, Result<Vec<Message>>)> {
        let tickets: Vec<u64> = group.iter().map(|(t, _)| *t).collect();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit_group(group))) {
            Ok(outcomes) => outcomes,
            Err(payload) => {
                // The WAL may hold part of the group: stop, and let a reopen decide.
                let why = format!(
                    "a commit group panicked: {}",
                    super::background::panic_message(payload.as_ref())
                );
                self.set_poison(why.clone());
                tickets
                    .into_iter()
                    .map(|t| (t, Err(Error::Poisoned(why.clone()))))
                    .collect()
            }
        }
    }

    /// Commits one group as leader.
    fn commit_group(&self, group: Vec<(u64, Job)>) -> Vec<(u64, Result<Vec<Message>>)> {
        let mut scratch = self.committer.leader.lock();
        let scratch = &mut *scratch;
        if let Err(e) = self.check_writable() {
            return group
                .into_iter()
                .map(|(t, _)| (t, Err(copy_error(&e))))
                .collect();
        }
        let version = self.current();
        let now = self.opts.clock.now_ms();
        scratch.frame.clear();
        scratch.ids.clear();
        scratch.state.clear();
        let mut lsn = self.committer.last_lsn.load(Ordering::Acquire);
        // Where each record's body lies in the frame, for the commit log.
        let mut bodies: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
        let mut outcomes: Vec<(u64, Result<Vec<Message>>)> = Vec::with_capacity(group.len());
        let mut state: Vec<(Bytes, Option<Bytes>)> = Vec::new();
        for (ticket, job) in group {
            let mut txn = Txn {
                version: &version,
                engine: self,
                group_ids: &scratch.ids,
                last_ids: &scratch.last_ids,
                group_state: &scratch.state,
                now,
                lsn: lsn + 1,
                from_log: false,
                messages: Vec::new(),
                own_ids: FxHashMap::default(),
                state: Vec::new(),
            };
            let result = job(&mut txn);
            let Txn {
                messages: txn_messages,
                state: txn_state,
                from_log,
                ..
            } = txn;
            let mut result = result.map(|()| Vec::new());
            if result.is_ok() && !(txn_messages.is_empty() && txn_state.is_empty()) {
                // Bytes of the log known durable now (possibly fewer: never more): recovery
                // tells damage from a torn tail by them.
                let synced_through = self.committer.wal_synced.load(Ordering::Acquire);
                let start = wal::begin_record(&mut scratch.frame, synced_through, lsn + 1);
                let body_start = start + wal::record_overhead(synced_through, lsn + 1);
                let encoded = batch::encode(&mut scratch.frame, &txn_messages, &txn_state)
                    .and_then(|()| {
                        wal::finish_record(
                            &mut scratch.frame,
                            start,
                            wal::RecordType::Batch,
                            scratch.wal_number,
                        )
                    });
                if let Err(e) = encoded {
                    // Recovery (or a segment reader) would refuse it, so the write is refused.
                    scratch.frame.truncate(start);
                    result = Err(e.into());
                } else {
                    lsn += 1;
                    if !from_log {
                        bodies.push((lsn, body_start..scratch.frame.len()));
                    }
                    for m in &txn_messages {
                        scratch.ids.insert(m.conversation, m.id.0);
                    }
                    for (k, v) in &txn_state {
                        scratch.state.insert(k.clone(), v.clone());
                    }
                    state.extend(txn_state);
                    result = Ok(txn_messages);
                }
            }
            outcomes.push((ticket, result));
        }
        if scratch.frame.is_empty() {
            return outcomes;
        }
        if let Some(log) = self.opts.commit_log.as_ref().filter(|_| !bodies.is_empty()) {
            let records: Vec<CommitRecord<'_>> = bodies
                .iter()
                .map(|(lsn, range)| CommitRecord {
                    lsn: *lsn,
                    body: &scratch.frame[range.clone()],
                })
                .collect();
            if let Err(e) = log.append(&records) {
                // The log may hold the records or not: stop, and let a reopen catch up from
                // the log, which is the truth.
                let why = e.to_string();
                self.set_poison(format!("commit log append failed: {why}"));
                for (_, o) in outcomes.iter_mut() {
                    if o.is_ok() {
                        *o = Err(Error::CommitLog(why.clone()));
                    }
                }
                return outcomes;
            }
        }
        if let Err(e) = self.write_wal(&scratch.frame) {
            // The record may be half on disk: refuse further writes until a reopen decides,
            // from the log itself, what was committed.
            self.set_poison(format!("WAL write failed: {e}"));
            for (_, o) in outcomes.iter_mut() {
                if o.is_ok() {
                    *o = Err(copy_error(&e));
                }
            }
            return outcomes;
        }
        let messages = outcomes
            .iter()
            .filter_map(|(_, o)| o.as_ref().ok())
            .flatten();
        let appended = messages.clone().count();
        version.active.apply(messages, &state, lsn);
        self.committer.last_lsn.store(lsn, Ordering::Release);
        for (&conv, &last) in &scratch.ids {
            scratch.last_ids.set(conv, last);
        }
        self.counters
            .messages_appended
            .fetch_add(appended as u64, Ordering::Relaxed);
        self.counters.write_groups.fetch_add(1, Ordering::Relaxed);
        let full = version.active.bytes() >= self.opts.memtable_bytes;
        // The group's view must not pin memtables that flush while this leader waits in a
        // write stall: memory is bounded by the memtables the current version lists.
        drop(version);
        if full {
            if let Err(e) = self.freeze(scratch) {
                self.set_poison(format!("memtable switch failed: {e}"));
            }
        }
        outcomes
    }

    fn write_wal(&self, frame: &[u8]) -> Result<()> {
        let mut wal = self.committer.wal.lock();
        wal.append(frame)?;
        self.counters
            .wal_bytes_written
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if self.opts.durability == Durability::Sync && wal.sync()? {
            self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether too many frozen memtables wait for flush (memory would grow without bound).
    fn flush_behind(&self) -> bool {
        self.current().frozen.len() >= self.opts.max_frozen_memtables
    }

    /// How much longer a switch that waited `waited` should wait for compaction to drain level
    /// 0 (with background compaction; see `write_controller`).
    fn compaction_wait(&self, waited: Duration) -> Option<Duration> {
        if !self.opts.background_compaction {
            return None;
        }
        let l0 = self
            .current()
            .segments
            .iter()
            .filter(|s| s.level == 0)
            .count();
        super::write_controller::wait_left(l0, self.opts.l0_compaction_trigger, waited)
    }

    /// Freezes the active memtable and starts a new one with a new WAL file, first waiting
    /// (not failing) while too many frozen memtables wait for flush.
    /// REQUIRES: the caller holds the leader lock (passes its scratch as proof).
    fn freeze(&self, leader: &mut LeaderScratch) -> Result<()> {
        let mut stalled: Option<Instant> = None;
        // Time waited for the flush (memory) and for compaction (level 0), apart.
        let (mut for_flush, mut for_level0) = (Duration::ZERO, Duration::ZERO);
        {
            let mut g = self.lifecycle.lock();
            // Memory: wait as long as it takes (a failed flush poisons the store and ends it).
            // Level 0: a delay that grows with its excess (`write_controller`), never a stop.
            loop {
                let waited = stalled.map_or(Duration::ZERO, |t| t.elapsed());
                let compaction = self.compaction_wait(waited);
                let flush_behind = self.flush_behind();
                if !(flush_behind || compaction.is_some()) {
                    break;
                }
                self.check_writable()?;
                stalled.get_or_insert_with(Instant::now);
                // The flush and compaction threads wait on the same signal: wake them.
                g.notify_all();
                let poll = Duration::from_millis(100);
                let started = Instant::now();
                g.wait(Some(compaction.map_or(poll, |left| left.min(poll))));
                let slept = started.elapsed();
                if flush_behind {
                    for_flush = for_flush.saturating_add(slept);
                } else {
                    for_level0 = for_level0.saturating_add(slept);
                }
            }
        }
        if let Some(t) = stalled {
            let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
            self.counters
                .write_stall_micros
                .fetch_add(micros(t.elapsed()), Ordering::Relaxed);
            self.counters
                .write_stall_flush_micros
                .fetch_add(micros(for_flush), Ordering::Relaxed);
            self.counters
                .write_stall_level0_micros
                .fetch_add(micros(for_level0), Ordering::Relaxed);
        }
        let number = self.versions.new_file_number();
        let path = files::wal_path(&self.dir, number);
        let mut wal = self.committer.wal.lock();
        // The old log must be complete on disk before a newer one exists: recovery treats a
        // torn tail anywhere but in the newest log as corruption.
        if wal.seal(&*self.fs)? {
            self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let created = self.start_log(&path, number).and_then(|w| {
            self.fs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io(&self.dir, e))?;
            Ok(w)
        });
        let new_wal = match created {
            Ok(w) => w,
            Err(e) => {
                // Best effort: a half-created log left behind is removed at the next open
                // (it is the newest, and has no complete header or no records).
                let _ = self.fs.remove(&path);
                return Err(e);
            }
        };
        *wal = new_wal;
        leader.wal_number = number;
        drop(wal);
        self.versions
            .switch_memtable(Memtable::new(number, &self.memtables_held));
        self.rebalance_memory();
        self.lifecycle.notify();
        Ok(())
    }

    /// The WAL file numbered `number` at `path`: a retired log reused if one is kept, else a
    /// new file.
    fn start_log(&self, path: &std::path::Path, number: u64) -> Result<LogWriter> {
        let synced = Arc::clone(&self.committer.wal_synced);
        // Held until the file is renamed: `retire_logs` would otherwise delete it meanwhile.
        let mut retired = self.committer.retired.lock();
        // While paused the list is empty (see `stop_log_recycling`).
        let Some(old) = retired.take_oldest() else {
            drop(retired);
            return LogWriter::create(&*self.fs, path, number, synced);
        };
        let from = files::wal_path(&self.dir, old);
        let log = LogWriter::reuse(&*self.fs, &from, path, number, synced)?;
        drop(retired);
        self.counters
            .wal_files_recycled
            .fetch_add(1, Ordering::Relaxed);
        Ok(log)
    }

    /// Deletes the WAL files numbered below `horizon` (their records are all in segments),
    /// or keeps some of them for [`start_log`](Self::start_log) to reuse. Best effort: files
    /// left behind are deleted at the next open.
    pub(super) fn retire_logs(&self, horizon: u64) {
        let mut retired = self.committer.retired.lock();
        let Ok(names) = self.fs.list(&self.dir) else {
            return;
        };
        for name in names {
            let Some(files::FileKind::Wal(n)) = files::parse_name(&name) else {
                continue;
            };
            if n >= horizon || retired.numbers.contains(&n) {
                continue;
            }
            if !retired.keep(n, self.opts.recycled_wal_files) {
                let _ = self.fs.remove(&self.dir.join(name));
            }
        }
    }

    /// Deletes the retired WAL files kept for reuse, and keeps or reuses none until the guard
    /// drops. A reused file holds the records of its earlier use past its own until it is
    /// sealed, and those may hold content a compaction is about to remove from disk
    /// (deleted or edited messages): `Store::compact` promises it gone.
    pub(crate) fn pause_log_recycling(&self) -> Result<RecyclingPaused<'_>> {
        self.stop_log_recycling()?;
        Ok(RecyclingPaused { engine: self })
    }

    /// Deletes the retired WAL files kept for reuse, keeps or reuses none from now on (until
    /// as many [`RecyclingPaused`] guards drop as calls made), and cuts the current log to
    /// its own records. The store does this when it closes too: kept files would otherwise
    /// stay on disk until the next open, and the next open would read a reused log's old
    /// records to find where it ends.
    pub(crate) fn stop_log_recycling(&self) -> Result<()> {
        // Lock order: `wal` before `retired`.
        let mut wal = self.committer.wal.lock();
        let mut retired = self.committer.retired.lock();
        retired.paused = retired.paused.saturating_add(1);
        for n in std::mem::take(&mut retired.numbers) {
            // Best effort, as any retired log: one left behind is deleted at the next open.
            let _ = self.fs.remove(&files::wal_path(&self.dir, n));
        }
        drop(retired);
        // The log being written may be a reused file, and the compaction may find nothing
        // to flush (so no reason to start a new log): cut its old records now.
        match wal.seal(&*self.fs) {
            Ok(synced) => {
                if synced {
                    self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                // As any failed WAL sync: the kernel may have dropped the dirty pages.
                self.set_poison(format!("WAL sync or truncation failed: {e}"));
                Err(e)
            }
        }
    }

    /// Freezes the active memtable if it holds anything (a flush asked for by the user).
    /// A failed switch poisons the store, as on the write path: a half-switched WAL must not
    /// take more writes.
    pub(super) fn freeze_active(&self) -> Result<()> {
        let mut scratch = self.committer.leader.lock();
        if self.current().active.is_empty() {
            return Ok(());
        }
        self.freeze(&mut scratch).inspect_err(|e| {
            self.set_poison(format!("memtable switch failed: {e}"));
        })
    }

    /// Fsyncs the WAL. A failure poisons the store: after a failed fsync the kernel may have
    /// dropped the dirty pages, so a later successful fsync proves nothing about them.
    pub(crate) fn sync(&self) -> Result<()> {
        match self.committer.sync_wal() {
            Ok(true) => {
                self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.set_poison(format!("WAL sync failed: {e}"));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotations that outran a flush leave two logs to retire at once; from then on each
    /// rotation takes one and each flush retires one, as under sustained ingest. Whatever
    /// order the directory lists them in, every kept log is reused, oldest first.
    #[test]
    fn every_kept_log_is_reused_within_as_many_rotations_as_are_kept() {
        for listed in [[1, 2], [2, 1]] {
            let mut kept = RetiredLogs {
                numbers: Vec::new(),
                first_own: 1,
                paused: 0,
            };
            for n in listed {
                assert!(kept.keep(n, 2));
            }
            assert!(!kept.keep(9, 2), "no more than the capacity is kept");
            let mut reused = Vec::new();
            for next in 3..9 {
                reused.extend(kept.take_oldest());
                assert!(kept.keep(next, 2));
            }
            assert_eq!(reused, [1, 2, 3, 4, 5, 6], "listed {listed:?}");
        }
    }

    #[test]
    fn logs_of_an_earlier_process_or_while_paused_are_not_kept() {
        let mut kept = RetiredLogs {
            numbers: Vec::new(),
            first_own: 5,
            paused: 0,
        };
        assert!(!kept.keep(4, 2));
        kept.paused = 1;
        assert!(!kept.keep(6, 2));
        assert_eq!(kept.take_oldest(), None);
    }

    #[test]
    fn the_largest_id_has_no_next_one() {
        let conv = ConversationId(7);
        assert_eq!(next_id(conv, 0).ok(), Some(1));
        assert_eq!(next_id(conv, u64::MAX - 1).ok(), Some(u64::MAX));
        assert!(matches!(
            next_id(conv, u64::MAX),
            Err(Error::InvalidArgument(_))
        ));
    }
}
