//! One trait, one adapter per engine.
//!
//! Peers store a message under key = conversation id (u64 big-endian) ++ message id (u64
//! big-endian) with value = sender (u64 BE) ++ timestamp ms (u64 BE) ++ content; the harness keeps
//! their per-conversation counters in memory for ingest and paging. chatstore numbers messages
//! itself and is read through its own calls (`latest`, `before`, the chat model's
//! `unread_messages`).
//!
//! Read cursors are stored in the engine by every engine, so unread-on-reconnect costs each
//! the same work: peers keep them in the same table under key = ([`CURSOR_TAG`] | user) ++
//! conversation, value = read id (u64 BE) (a key range of their own, the way one would lay out
//! a second record type), and a reconnect is a prefix scan of the user's cursors, then per
//! conversation a reverse seek for its last id and a range scan of the oldest unread.

mod chatstore_engine;
mod fjall_engine;
mod redb_engine;
#[cfg(feature = "rocksdb")]
mod rocksdb_engine;
mod sled_engine;

use std::path::Path;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const ENGINES: &[&str] = &["chatstore", "rocksdb", "fjall", "sled", "redb"];

/// One message handed to an engine.
pub struct Msg<'a> {
    pub conv: u64,
    /// The id the harness expects (peers store it; chatstore assigns it and the adapter checks).
    pub id: u64,
    pub sender: u64,
    pub ts_ms: u64,
    pub content: &'a [u8],
}

/// What a read returned: enough to check it and to keep the work from being optimised away.
#[derive(Clone, Copy, Debug, Default)]
pub struct Got {
    pub msgs: u64,
    pub bytes: u64,
    /// Smallest message id returned (0 if none).
    pub first: u64,
}

impl Got {
    pub fn add(&mut self, o: Got) {
        self.msgs += o.msgs;
        self.bytes += o.bytes;
        if self.first == 0 || (o.first != 0 && o.first < self.first) {
            self.first = o.first;
        }
    }
}

/// A user's read position in one conversation (the harness's own copy, to check answers).
#[derive(Clone, Copy, Debug)]
pub struct Cursor {
    pub conv: u64,
    pub read: u64,
    pub last: u64,
}

/// How writes are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Each batch is fsynced before the call returns.
    Durable,
    /// Batches go to the OS (or the engine's buffer); no fsync per batch.
    Buffered,
}

pub trait Engine {
    /// Appends one batch, atomically where the engine allows, fsynced before returning in
    /// [`Mode::Durable`].
    fn write_batch(&mut self, batch: &[Msg<'_>]) -> Res<()>;

    /// Messages `lo..=hi` of `conv`, oldest first (peers; chatstore answers through its own
    /// calls below).
    fn range(&self, conv: u64, lo: u64, hi: u64) -> Res<Got>;

    /// The newest `n` messages; `last` is the harness's counter (peers need it, chatstore
    /// knows its own).
    fn latest(&self, conv: u64, last: u64, n: u64) -> Res<Got> {
        if last == 0 {
            return Ok(Got::default());
        }
        self.range(conv, last.saturating_sub(n) + 1, last)
    }

    /// Up to `n` messages before `id`.
    fn before(&self, conv: u64, id: u64, n: u64) -> Res<Got> {
        if id <= 1 {
            return Ok(Got::default());
        }
        self.range(conv, id.saturating_sub(n).max(1), id - 1)
    }

    /// A reconnecting user's unread messages: up to `per_conv` of the oldest unread of each
    /// conversation, found from the cursors stored in the engine ([`Engine::set_read_cursors`]):
    /// the user's cursors by a prefix scan, each conversation's last id by a reverse seek (an
    /// unread count needs it), the messages by a range scan. chatstore uses its chat model.
    fn unread(&self, user: u64, per_conv: u64) -> Res<Got> {
        let mut got = Got::default();
        for (conv, read) in self.read_cursors(user)? {
            let last = self.last_id(conv)?;
            if last > read {
                got.add(self.range(conv, read + 1, last.min(read + per_conv))?);
            }
        }
        Ok(got)
    }

    /// `user`'s stored read cursors, `(conversation, read id)` in conversation order.
    fn read_cursors(&self, user: u64) -> Res<Vec<(u64, u64)>> {
        let (lo, hi) = (cursor_key(user, 0), cursor_key(user, u64::MAX));
        let mut out = Vec::new();
        for (k, v) in self.scan_raw(lo, hi)? {
            let read = <[u8; 8]>::try_from(v.as_slice())
                .map_err(|_| format!("a cursor value of {} bytes", v.len()))?;
            out.push((key_id(&k), u64::from_be_bytes(read)));
        }
        Ok(out)
    }

    /// The last message id of `conv` (0 if none), by a reverse seek.
    fn last_id(&self, conv: u64) -> Res<u64> {
        Ok(self
            .last_key_in(key(conv, 0), key(conv, u64::MAX))?
            .map_or(0, |k| key_id(&k)))
    }

    /// Writes raw key-value pairs in one batch, durable on return (peers: cursors).
    fn put_raw(&mut self, _pairs: &[([u8; 16], [u8; 8])]) -> Res<()> {
        Err("this engine stores no raw keys".into())
    }

    /// Every pair with a key in `lo..=hi`, in key order.
    fn scan_raw(&self, _lo: [u8; 16], _hi: [u8; 16]) -> Res<Vec<([u8; 16], Vec<u8>)>> {
        Err("this engine stores no raw keys".into())
    }

    /// The largest key in `lo..=hi`, if any.
    fn last_key_in(&self, _lo: [u8; 16], _hi: [u8; 16]) -> Res<Option<[u8; 16]>> {
        Err("this engine stores no raw keys".into())
    }

    /// Whether message `id` of `conv` exists (for the crash check).
    fn contains(&self, conv: u64, id: u64) -> Res<bool>;

    /// Chat-model setup (users and groups); only chatstore stores anything.
    fn setup_chat(&mut self, _users: u64, _members: &[Vec<u64>]) -> Res<()> {
        Ok(())
    }

    /// Stores read cursors (user, conversation, read id), durably, in the engine.
    fn set_read_cursors(&mut self, cursors: &[(u64, u64, u64)]) -> Res<()> {
        let pairs: Vec<([u8; 16], [u8; 8])> = cursors
            .iter()
            .map(|&(user, conv, read)| (cursor_key(user, conv), read.to_be_bytes()))
            .collect();
        // Batches of a size every engine takes in one transaction.
        for chunk in pairs.chunks(10_000) {
            self.put_raw(chunk)?;
        }
        Ok(())
    }

    /// Makes everything durable and lets background work (flush, compaction) finish, so the
    /// files can be measured at rest.
    fn settle(&mut self) -> Res<()>;

    /// Engine-specific figures worth recording (JSON object).
    fn extra(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The engine's own view of its write path, taken after each slice of an ingest phase
    /// (the sustained-ingest curve). A JSON object whose keys are common to the engines that
    /// report them (all counters cumulative since open):
    /// - `stall_micros`: time writers were held back (slowed down or stopped) by the engine;
    /// - `stalls`: how many times, where the engine counts them;
    /// - `pending_compaction_bytes`: the engine's estimate of its compaction debt;
    /// - `files_per_level`: segment / SST files per level, level 0 first;
    /// - `flush_bytes_written`, `compaction_bytes_written`: bytes written to segment / SST files
    ///   by flushes and by compactions;
    /// - `wal_bytes_written`: bytes written to the write-ahead log.
    ///
    /// `Null` for engines without such counters.
    fn sample(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Clean close.
    fn close(self: Box<Self>) -> Res<()>;
}

pub fn open(engine: &str, dir: &Path, mode: Mode) -> Res<Box<dyn Engine>> {
    std::fs::create_dir_all(dir)?;
    Ok(match engine {
        "chatstore" => Box::new(chatstore_engine::Chat::open(dir, mode)?),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => Box::new(rocksdb_engine::Rocks::open(dir, mode)?),
        "fjall" => Box::new(fjall_engine::Fjall::open(dir, mode)?),
        "sled" => Box::new(sled_engine::Sled::open(dir, mode)?),
        "redb" => Box::new(redb_engine::Redb::open(dir, mode)?),
        other => return Err(format!("unknown engine {other}").into()),
    })
}

/// The peers' key: conversation id and message id, both big-endian.
pub fn key(conv: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&conv.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The high bits of the first key word of a read cursor: conversation ids never reach them,
/// so cursors and messages never share a key range.
pub const CURSOR_TAG: u64 = 0xFFFF_FFFF_0000_0000;

/// The peers' key of `user`'s read cursor in `conv`.
pub fn cursor_key(user: u64, conv: u64) -> [u8; 16] {
    key(CURSOR_TAG | user, conv)
}

/// The message id inside a peer key.
pub fn key_id(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if k.len() == 16 {
        b.copy_from_slice(&k[8..]);
    }
    u64::from_be_bytes(b)
}

/// The peers' value: sender, timestamp, content.
pub fn value_into(m: &Msg<'_>, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&m.sender.to_be_bytes());
    out.extend_from_slice(&m.ts_ms.to_be_bytes());
    out.extend_from_slice(m.content);
}

/// Polls `busy` every 100 ms until it is false three times in a row (or `limit` passes).
pub fn wait_idle(mut busy: impl FnMut() -> bool, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    let mut idle = 0;
    while idle < 3 && start.elapsed() < limit {
        if busy() {
            idle = 0;
        } else {
            idle += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
