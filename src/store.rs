//! The public handle: [`Store`].

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use std::time::Duration;

use bytes::Bytes;

use crate::engine::overrides::Override;
use crate::engine::{Engine, Stats, VerifyReport};
pub(crate) use crate::engine::{Snapshot as ReadView, Txn};
use crate::error::{Error, Result};
use crate::format::{batch, wal, within};
use crate::options::Options;
use crate::types::{ConversationId, Message, MessageId, MessageKind, NewMessage};

/// An open chatstore. Cheap to clone and share between threads (`Send + Sync`); the store
/// closes when the last clone is dropped (or on [`Store::close`]).
#[derive(Clone, Debug)]
pub struct Store {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    engine: Arc<Engine>,
    background: Mutex<Vec<JoinHandle<()>>>,
    /// [`Options::max_message_bytes`].
    max_message_bytes: usize,
}

impl Handle {
    fn stop(&self) -> Result<()> {
        let synced = self.engine.shutdown();
        let threads = std::mem::take(&mut *self.background.lock());
        for t in threads {
            // A panicked background thread has nothing more to give.
            let _ = t.join();
        }
        self.engine.release_lock();
        synced
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Bytes of a WAL batch's entry count, at least.
const MIN_COUNT_LEN: usize = 1;

/// Checks messages about to be appended against the store's options and every limit of the
/// formats they will be written in (see [`crate::format`]), before anything is encoded: the
/// one check of every public entry that appends messages, so nothing a reader would refuse
/// reaches the log. The size of the record is checked as far as it is known here (ids and
/// timestamps are not: they are counted at their smallest); the commit checks it exactly.
pub(crate) fn check_appends<'a>(
    engine: &Engine,
    messages: impl IntoIterator<Item = (ConversationId, &'a NewMessage)>,
) -> Result<()> {
    let mut record = MIN_COUNT_LEN;
    for (conv, m) in messages {
        engine.check_message(m)?;
        let row = m.as_row(conv);
        batch::check_message(row)?;
        record = record.saturating_add(batch::message_len(row));
    }
    check_record(record)
}

/// [`check_appends`] for restored messages (`limit` is [`Options::max_message_bytes`]),
/// which must also have an id (from 1) and reply to an earlier message. Whether each id
/// continues its conversation is checked when it is restored.
fn check_imports(limit: usize, messages: &[Message]) -> Result<()> {
    let mut record = MIN_COUNT_LEN;
    for m in messages {
        let size = m.content.len() + m.attachment.as_ref().map_or(0, Bytes::len);
        if size > limit {
            return Err(Error::MessageTooLarge { size, limit });
        }
        // Said before the reply check, which measures the reply against this id.
        if m.id.0 == 0 {
            return Err(Error::InvalidArgument(format!(
                "message ids start at 1: conversation {} has no message 0 to restore",
                m.conversation
            )));
        }
        if let Some(r) = m.reply_to {
            if r.0 == 0 || r.0 >= m.id.0 {
                return Err(Error::IdOutOfRange {
                    conversation: m.conversation,
                    id: r,
                    last: MessageId(m.id.0.saturating_sub(1)),
                });
            }
        }
        batch::check_message(m.as_ref())?;
        record = record.saturating_add(batch::message_len(m.as_ref()));
    }
    check_record(record)
}

/// Refuses a write whose WAL record holds at least `payload` bytes, if that is over the limit.
fn check_record(payload: usize) -> Result<()> {
    within(
        "bytes of one write's log record (split the batch)",
        payload,
        wal::MAX_RECORD_LEN,
    )?;
    Ok(())
}

/// A retention as stored: milliseconds, 0 for none. A zero duration is an error.
pub(crate) fn retention_ms(ttl: Option<Duration>) -> Result<u64> {
    if ttl.is_some_and(|t| t.is_zero()) {
        return Err(Error::InvalidArgument(
            "a retention of zero would delete every message; use None for no limit".into(),
        ));
    }
    Ok(ttl.map_or(0, |t| (t.as_millis() as u64).max(1)))
}

/// Edits (`Some(content)`) or deletes (`None`) a message inside a transaction, checking that
/// it exists and is not deleted, and then that `allowed` accepts it (the chat layer's rules).
pub(crate) fn edit_in(
    txn: &mut Txn<'_>,
    conv: ConversationId,
    id: MessageId,
    content: Option<Bytes>,
    allowed: impl FnOnce(&Message) -> Result<()>,
) -> Result<Message> {
    let Some(mut m) = txn.message(conv, id)? else {
        return Err(Error::IdOutOfRange {
            conversation: conv,
            id,
            last: MessageId(txn.last_id(conv)?),
        });
    };
    allowed(&m)?;
    if m.kind == MessageKind::Deleted {
        return Err(Error::InvalidArgument(format!(
            "message {id} of conversation {conv} was deleted"
        )));
    }
    let at_ms = txn.now_ms();
    let o = match content {
        Some(content) => Override::Edited { at_ms, content },
        None => Override::Deleted { at_ms },
    };
    txn.set_override(conv, id, &o)?;
    o.apply(&mut m);
    Ok(m)
}

/// The surface the chat layer ([`crate::chat`]) builds on, and all it uses of the engine:
/// transactions (the same group commit as every write, one record each), consistent read
/// views, and the checks every append and edit passes before it is queued. Crate-internal:
/// a user builds a model of their own on [`Store`]'s public calls, or on
/// [`ChatStore`](crate::ChatStore).
impl Store {
    /// Runs `f` as one transaction: everything it writes is one commit record, applied all or
    /// nothing, durable on return in `Sync` durability.
    pub(crate) fn transact<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Txn<'_>) -> Result<T> + Send + 'static,
    {
        self.engine().transact(f)
    }

    /// A consistent read view of the whole store: messages and state as of one moment.
    pub(crate) fn read_view(&self) -> ReadView<'_> {
        self.engine().snapshot()
    }

    /// Checks a message about to be appended to `conv` (see [`check_appends`]).
    pub(crate) fn check_append(&self, conv: ConversationId, message: &NewMessage) -> Result<()> {
        check_appends(self.engine(), [(conv, message)])
    }

    /// Checks new content for an edit against the size limits.
    pub(crate) fn check_edit(&self, content: &Bytes) -> Result<()> {
        self.engine().check_edit(content)
    }
}

/// Iterator over a conversation's messages; see [`Store::export`].
#[derive(Debug)]
pub struct Export {
    store: Store,
    conv: ConversationId,
    cursor: u64,
    page: std::vec::IntoIter<Message>,
    done: bool,
}

/// Messages read per page by [`Export`].
const EXPORT_PAGE: usize = 1024;

impl Iterator for Export {
    type Item = Result<Message>;

    fn next(&mut self) -> Option<Result<Message>> {
        loop {
            if let Some(m) = self.page.next() {
                self.cursor = m.id.0;
                return Some(Ok(m));
            }
            if self.done {
                return None;
            }
            let conv = self.conv;
            let from = self.cursor;
            let mut last = 0;
            let page = self.store.engine().read_relative(conv, |last_id| {
                last = last_id;
                Ok((
                    from + 1,
                    from.saturating_add(EXPORT_PAGE as u64).min(last_id),
                ))
            });
            match page {
                Ok(p) => {
                    let end = from.saturating_add(EXPORT_PAGE as u64);
                    if end >= last {
                        self.done = true;
                    } else if p.is_empty() {
                        // Expired or dropped ids: skip the whole page.
                        self.cursor = end;
                    }
                    self.page = p.into_iter();
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

fn check_after(conv: ConversationId, id: MessageId, last: u64) -> Result<()> {
    if id.0 > last {
        return Err(Error::IdOutOfRange {
            conversation: conv,
            id,
            last: MessageId(last),
        });
    }
    Ok(())
}

fn check_existing(conv: ConversationId, id: MessageId, last: u64) -> Result<()> {
    if id.0 == 0 || id.0 > last {
        return Err(Error::IdOutOfRange {
            conversation: conv,
            id,
            last: MessageId(last),
        });
    }
    Ok(())
}

impl Store {
    /// Opens the store in `path` with default [`Options`], creating it if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, Options::default())
    }

    /// Opens the store in `path` with `options`.
    ///
    /// Errors: [`Error::Locked`] if another open store holds the directory,
    /// [`Error::NotAStore`] if it holds other files, [`Error::UnsupportedVersion`] for files
    /// from a newer format, [`Error::Corruption`] naming the file and offset of damage.
    pub fn open_with(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        let max_message_bytes = options.max_message_bytes;
        let engine = Engine::open(path.as_ref().to_path_buf(), options)?;
        let background = engine.spawn_background()?;
        Ok(Store {
            handle: Arc::new(Handle {
                engine,
                background: Mutex::new(background),
                max_message_bytes,
            }),
        })
    }

    fn engine(&self) -> &Engine {
        &self.handle.engine
    }

    /// Appends a message to `conv` and returns it with its id (the conversation's previous
    /// last id + 1) and server timestamp. Durable on return in [`Durability::Sync`].
    ///
    /// [`Durability::Sync`]: crate::Durability::Sync
    pub fn append(&self, conv: ConversationId, message: NewMessage) -> Result<Message> {
        check_appends(self.engine(), [(conv, &message)])?;
        let mut v = self.engine().write(vec![(conv, message)])?;
        v.pop()
            .ok_or_else(|| Error::Internal("write returned no message".into()))
    }

    /// Appends many messages (to one or many conversations) as one atomic WAL record: after a
    /// crash either all of them are there or none. Returns them in the given order.
    pub fn append_batch(
        &self,
        messages: Vec<(ConversationId, NewMessage)>,
    ) -> Result<Vec<Message>> {
        check_appends(self.engine(), messages.iter().map(|(c, m)| (*c, m)))?;
        self.engine().write(messages)
    }

    /// The conversation's last message id (`MessageId(0)` if it has no messages). An error
    /// when an index it needs cannot be read from disk.
    pub fn last_id(&self, conv: ConversationId) -> Result<MessageId> {
        Ok(MessageId(self.engine().last_id(conv)?))
    }

    /// The message with `id`, if it exists.
    pub fn get(&self, conv: ConversationId, id: MessageId) -> Result<Option<Message>> {
        if id.0 == 0 {
            return Ok(None);
        }
        Ok(self.engine().read_range(conv, id.0, id.0)?.pop())
    }

    /// The newest `n` messages, oldest first.
    pub fn latest(&self, conv: ConversationId, n: usize) -> Result<Vec<Message>> {
        self.engine()
            .read_relative(conv, |last| Ok((last.saturating_sub(n as u64) + 1, last)))
    }

    /// Up to `n` messages just before `id` (exclusive), oldest first: the next page back.
    /// `id` must be an existing message id.
    pub fn before(&self, conv: ConversationId, id: MessageId, n: usize) -> Result<Vec<Message>> {
        self.engine().read_relative(conv, |last| {
            check_existing(conv, id, last)?;
            Ok((id.0.saturating_sub(n as u64).max(1), id.0 - 1))
        })
    }

    /// Up to `n` messages just after `id` (exclusive), oldest first: forward sync from a
    /// cursor. `id` may be 0 (from the start) up to the last id (returns nothing).
    pub fn after(&self, conv: ConversationId, id: MessageId, n: usize) -> Result<Vec<Message>> {
        self.engine().read_relative(conv, |last| {
            check_after(conv, id, last)?;
            let hi = id.0.saturating_add(n as u64).min(last);
            Ok((id.0 + 1, hi))
        })
    }

    /// The message `id` with up to `n` messages on each side, oldest first: jumping to a
    /// message (a search hit, a reply) with its context.
    pub fn around(&self, conv: ConversationId, id: MessageId, n: usize) -> Result<Vec<Message>> {
        self.engine().read_relative(conv, |last| {
            check_existing(conv, id, last)?;
            let lo = id.0.saturating_sub(n as u64).max(1);
            let hi = id.0.saturating_add(n as u64).min(last);
            Ok((lo, hi))
        })
    }

    /// Replaces the content of message `id`. Reads return the new content with
    /// [`Message::edited_ms`] set. Edits and deletes of one message are applied in WAL order,
    /// the later winning; editing a deleted message is refused. The raw store checks no
    /// authorship: [`ChatStore::edit`](crate::ChatStore::edit) lets only the sender edit.
    pub fn edit(
        &self,
        conv: ConversationId,
        id: MessageId,
        content: impl Into<Bytes>,
    ) -> Result<Message> {
        let content = content.into();
        self.check_edit(&content)?;
        self.transact(move |txn| edit_in(txn, conv, id, Some(content), |_| Ok(())))
    }

    /// Deletes message `id` for everyone. Reads return a placeholder of kind
    /// [`MessageKind::Deleted`](crate::MessageKind::Deleted) without content; the first
    /// compaction that rewrites the message's segment once the delete itself is in a segment
    /// (after the next flush) removes the content from disk.
    pub fn delete(&self, conv: ConversationId, id: MessageId) -> Result<Message> {
        self.transact(move |txn| edit_in(txn, conv, id, None, |_| Ok(())))
    }

    /// Sets a time-to-live on the conversation's messages (disappearing messages): older
    /// messages disappear from reads at once and from disk at the next compaction. `None`
    /// removes it (or a longer one lengthens it): expired messages no compaction has dropped
    /// yet read again, those it dropped do not. A zero duration is an error.
    pub fn set_retention(&self, conv: ConversationId, ttl: Option<Duration>) -> Result<()> {
        let ms = retention_ms(ttl)?;
        self.engine().transact(move |txn| txn.set_ttl(conv, ms))
    }

    /// Writes a consistent, openable copy of the live store into `dest` (which must not
    /// exist), without stopping writers: segments are hard-linked where the file system allows,
    /// the live WAL and the manifest are copied. The copy holds a prefix of every conversation
    /// at least as new as the last write acknowledged before the call.
    ///
    /// Returns the log sequence number the copy holds: a store opened on it has
    /// [`last_lsn`](Store::last_lsn) equal to it, and continues from it by
    /// [`apply`](Store::apply)ing later records (see [`commit_log`](crate::commit_log)).
    pub fn checkpoint(&self, dest: impl AsRef<Path>) -> Result<u64> {
        self.engine().checkpoint(dest.as_ref(), &mut |_, _| {})
    }

    /// [`Store::checkpoint`] reporting progress as (bytes done, bytes total).
    pub fn checkpoint_with_progress(
        &self,
        dest: impl AsRef<Path>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        self.engine().checkpoint(dest.as_ref(), progress)
    }

    /// The log sequence number of the last commit record applied: every commit, local or
    /// [`apply`](Store::apply)ed, gets the next one. Durable with the data: after a crash the
    /// store reopens at the last sequence it kept (see [`commit_log`](crate::commit_log)).
    pub fn last_lsn(&self) -> u64 {
        self.engine().last_lsn()
    }

    /// Applies a commit record another store committed (`lsn` and `body` as its
    /// [`CommitLog`](crate::CommitLog) received them), reaching the same state: the messages
    /// keep their ids and timestamps, the state entries their values. Idempotent: a record at
    /// or below [`last_lsn`](Store::last_lsn) changes nothing and returns `Ok(false)`. A
    /// record past the next one (`lsn > last_lsn() + 1`) is refused with
    /// [`Error::InvalidArgument`]: records must be applied in order, without gaps.
    ///
    /// The record is logged and made durable as this store's own writes are. A store that
    /// applies records must take no writes of its own.
    pub fn apply(&self, lsn: u64, body: &[u8]) -> Result<bool> {
        if lsn <= self.last_lsn() {
            return Ok(false);
        }
        let owner = Bytes::copy_from_slice(body);
        let entries = crate::format::batch::decode(&owner, &owner).map_err(|why| {
            Error::InvalidArgument(format!("commit record {lsn} does not decode: {why}"))
        })?;
        if entries.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "commit record {lsn} is empty: no store commits one"
            )));
        }
        self.engine().transact(move |txn| {
            let next = txn.lsn();
            if lsn < next {
                return Ok(false);
            }
            if lsn > next {
                return Err(Error::InvalidArgument(format!(
                    "commit record {lsn} is not the next one: this store continues at {next}"
                )));
            }
            txn.mark_from_log();
            for entry in entries {
                match entry {
                    crate::format::batch::Entry::Message(m) => txn.restore(m)?,
                    crate::format::batch::Entry::State(key, Some(value)) => txn.put(key, value)?,
                    crate::format::batch::Entry::State(key, None) => txn.delete(key)?,
                }
            }
            Ok(true)
        })
    }

    /// Reads every segment block and WAL record, checks every checksum and invariant (ids
    /// gapless per conversation inside a segment, never overlapping across segments, indexes
    /// agreeing with blocks, counts agreeing with footers) and reports what it found. Damage
    /// that stops the store from opening at all is reported by [`Store::open`] instead.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.engine().verify(&mut |_, _| {})
    }

    /// [`Store::verify`] reporting progress as (bytes done, bytes total).
    pub fn verify_with_progress(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        self.engine().verify(progress)
    }

    /// Every message of `conv`, oldest first, read in pages (edits and deletes applied,
    /// expired messages left out).
    pub fn export(&self, conv: ConversationId) -> Export {
        Export {
            store: self.clone(),
            conv,
            cursor: 0,
            page: Vec::new().into_iter(),
            done: false,
        }
    }

    /// Restores exported messages: each must continue its conversation (id = last id + 1);
    /// ids, timestamps, kinds and edits are kept. All of `messages` is one atomic commit.
    pub fn import(&self, messages: Vec<Message>) -> Result<()> {
        check_imports(self.handle.max_message_bytes, &messages)?;
        self.engine().transact(move |txn| {
            for m in messages {
                txn.restore(m)?;
            }
            Ok(())
        })
    }

    /// Writes every message in memory to segments and waits for it.
    pub fn flush(&self) -> Result<()> {
        self.engine().flush()
    }

    /// Flushes memory and merges every segment into one sorted run: afterwards a read touches
    /// one segment per conversation, and deleted or expired content is gone from disk.
    /// Background compaction (on by default) keeps the tree in shape without this call.
    pub fn compact(&self) -> Result<()> {
        self.engine().compact()
    }

    /// Runs the one compaction the background thread would run next (treating the store as
    /// quiet), if any is due, and returns whether one ran. Not needed in normal use: it lets
    /// tests drive partial compactions step by step with `background_compaction` off.
    #[doc(hidden)]
    pub fn compact_step(&self) -> Result<bool> {
        self.engine().compact_step(true)
    }

    /// [`compact_step`](Self::compact_step) as the background thread runs it while writes
    /// arrive (what it writes is shaped for the merge to come). For tests and benchmarks.
    #[doc(hidden)]
    pub fn compact_step_under_writes(&self) -> Result<bool> {
        self.engine().compact_step(false)
    }

    /// Makes every acknowledged write durable (useful in buffered durability).
    pub fn sync(&self) -> Result<()> {
        self.engine().sync()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Stats {
        self.engine().stats()
    }

    /// Stops background work and syncs the WAL, reporting any error. Other clones of this
    /// handle get [`Error::Closed`] afterwards. Dropping the last clone does the same silently.
    pub fn close(self) -> Result<()> {
        self.handle.stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn store_is_send_and_sync() {
        assert_send_sync::<Store>();
    }
}
