//! One JetStream stream per shard: the shard's replicated commit log.
//!
//! Each commit record is one message on the shard's subject: the payload is the record's body
//! (the WAL batch body, passed unchanged to [`Store::apply`]), the header [`LSN_HEADER`] its
//! log sequence number. The stream sequence and the LSN differ by a constant *offset* (0 when
//! the stream began with the shard's first record: sequence = LSN). The offset is read from the
//! header of the stream's last message, and every record read is checked against it, so the
//! mapping survives purges: [`ShardStream::purge_below`] always keeps at least the stream's
//! last message.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{
    self, DiscardPolicy, LastRawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use chatstore::Store;
use futures_util::StreamExt;

use crate::error::{nats_err, Error, Result};
use crate::log::JetStreamCommitLog;
use crate::nats::Nats;

/// The header holding a record's log sequence number (decimal).
pub const LSN_HEADER: &str = "Chatstore-Lsn";

/// Below this many missing records, catch-up reads them one by one; above, through a consumer.
const DIRECT_READ_LIMIT: u64 = 16;
/// Records per consumer pull.
const PULL_BATCH: usize = 256;

/// How the shard streams are named and kept.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Names the streams `<prefix>-shard-<n>` on subjects `<prefix>.shard.<n>`: one cluster's
    /// streams share it. Letters, digits, `-` and `_` only.
    pub prefix: String,
    /// Replicas of each stream (3 on a 3-server cluster; at most the number of servers).
    pub replicas: usize,
    /// File (the default) or memory.
    pub storage: StorageType,
    /// Largest stream size in bytes (`-1`: no limit). A full stream refuses publishes (the
    /// commit fails) rather than dropping records: checkpoints and purges keep it bounded.
    pub max_bytes: i64,
    /// How long one commit may keep retrying its publish (a server lost, a leader elected)
    /// before it fails.
    pub append_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            prefix: "chatstore".to_string(),
            replicas: 3,
            storage: StorageType::File,
            max_bytes: -1,
            append_timeout: Duration::from_secs(15),
        }
    }
}

/// Where a shard stream ends, as one look at it found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The stream's last sequence (0: nothing was ever published).
    pub last_seq: u64,
    /// The first sequence it still holds.
    pub first_seq: u64,
    /// LSN minus stream sequence; `None` for a stream nothing was ever published to (the
    /// first record published sets it).
    pub offset: Option<u64>,
}

impl Tail {
    /// The LSN of the stream's last record (0 for a stream nothing was ever published to).
    pub fn last_lsn(&self) -> u64 {
        self.offset.map_or(0, |o| self.last_seq + o)
    }

    /// The first LSN the stream still holds.
    pub fn first_lsn(&self) -> u64 {
        self.offset.map_or(1, |o| self.first_seq + o)
    }
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Records applied.
    pub applied: u64,
    /// The store's last LSN afterwards.
    pub last_lsn: u64,
    /// The stream's last LSN when the catch-up looked at it.
    pub log_lsn: u64,
}

/// The stream of one shard.
#[derive(Debug, Clone)]
pub struct ShardStream {
    nats: Nats,
    shard: u32,
    name: String,
    subject: String,
    config: StreamConfig,
}

impl ShardStream {
    /// Opens the shard's stream, creating it if it does not exist. Blocking.
    pub fn open(nats: &Nats, config: &StreamConfig, shard: u32) -> Result<ShardStream> {
        let prefix = &config.prefix;
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::Usage(format!(
                "stream prefix {prefix:?}: letters, digits, '-' and '_' only"
            )));
        }
        let name = format!("{prefix}-shard-{shard}");
        let subject = format!("{prefix}.shard.{shard}");
        let cfg = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: config.storage,
            num_replicas: config.replicas.max(1),
            discard: DiscardPolicy::New,
            max_bytes: config.max_bytes,
            max_messages: -1,
            max_messages_per_subject: -1,
            deny_delete: true,
            deny_purge: false,
            description: Some(format!("chatstore commit log of shard {shard}")),
            ..Default::default()
        };
        let js = nats.jetstream().clone();
        let info = nats.block_on(async move {
            let mut s = js
                .get_or_create_stream(cfg)
                .await
                .map_err(nats_err("create the shard stream"))?;
            s.info()
                .await
                .map(|i| i.config.subjects.clone())
                .map_err(nats_err("shard stream info"))
        })??;
        if !info.contains(&subject) {
            return Err(Error::Inconsistent(format!(
                "stream {name} exists but does not take subject {subject} (it takes {info:?})"
            )));
        }
        Ok(ShardStream {
            nats: nats.clone(),
            shard,
            name,
            subject,
            config: config.clone(),
        })
    }

    /// The shard number.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The subject records are published on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    pub(crate) fn nats(&self) -> &Nats {
        &self.nats
    }

    /// Where the stream ends now (asks the stream's leader). Blocking.
    pub fn tail(&self) -> Result<Tail> {
        let js = self.nats.jetstream().clone();
        let name = self.name.clone();
        self.nats.block_on(tail(js, name))?
    }

    /// Applies to `store` every record the stream holds after `store.last_lsn()`, in order,
    /// up to the stream's end as it was when the catch-up began. For a store opened **without**
    /// a commit log (a follower); a store whose commit log is a [`JetStreamCommitLog`] catches
    /// up through [`JetStreamCommitLog::catch_up`]. Blocking.
    pub fn catch_up(&self, store: &Store) -> Result<CatchUp> {
        self.catch_up_with(store, None)
    }

    pub(crate) fn catch_up_with(
        &self,
        store: &Store,
        log: Option<&JetStreamCommitLog>,
    ) -> Result<CatchUp> {
        let tail = self.tail()?;
        let have = store.last_lsn();
        let log_lsn = tail.last_lsn();
        let done = |applied| CatchUp {
            applied,
            last_lsn: store.last_lsn(),
            log_lsn,
        };
        let Some(offset) = tail.offset else {
            return Ok(done(0));
        };
        if have > log_lsn {
            return Err(Error::Inconsistent(format!(
                "the store is at LSN {have}, ahead of stream {} (LSN {log_lsn}): it holds \
                 commits the log does not",
                self.name
            )));
        }
        if have == log_lsn {
            return Ok(done(0));
        }
        if have + 1 < tail.first_lsn() {
            return Err(Error::Truncated {
                store_lsn: have,
                first_lsn: tail.first_lsn(),
            });
        }
        let from_seq = have + 1 - offset;
        let mut applied = 0u64;
        let mut apply = |lsn: u64, body: Bytes| -> Result<()> {
            let did = match log {
                Some(log) => log.replaying(lsn, &body, || store.apply(lsn, &body))?,
                None => store.apply(lsn, &body)?,
            };
            applied += u64::from(did);
            Ok(())
        };
        if tail.last_seq - from_seq < DIRECT_READ_LIMIT {
            for seq in from_seq..=tail.last_seq {
                let (lsn, body) = self.read(seq, offset)?;
                apply(lsn, body)?;
            }
        } else {
            self.read_range(from_seq, tail.last_seq, offset, &mut apply)?;
        }
        Ok(done(applied))
    }

    /// The record at stream sequence `seq` (from the stream's leader), checked against the
    /// mapping: `(lsn, body)`.
    fn read(&self, seq: u64, offset: u64) -> Result<(u64, Bytes)> {
        let js = self.nats.jetstream().clone();
        let name = self.name.clone();
        let msg = self.nats.block_on(async move {
            let s = js
                .get_stream_no_info(&name)
                .await
                .map_err(nats_err("open the shard stream"))?;
            s.get_raw_message(seq)
                .await
                .map_err(nats_err("read a record"))
        })??;
        let lsn = lsn_of(&msg.headers, &self.name, seq)?;
        check_mapping(&self.name, seq, lsn, offset)?;
        Ok((lsn, msg.payload))
    }

    /// Reads `from..=to` through an ephemeral pull consumer, in order, handing each record to
    /// `each`.
    fn read_range(
        &self,
        from: u64,
        to: u64,
        offset: u64,
        each: &mut dyn FnMut(u64, Bytes) -> Result<()>,
    ) -> Result<()> {
        let js = self.nats.jetstream().clone();
        let name = self.name.clone();
        let consumer = self.nats.block_on(async move {
            let s = js
                .get_stream_no_info(&name)
                .await
                .map_err(nats_err("open the shard stream"))?;
            s.create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(nats_err("create a catch-up consumer"))
        })??;
        let deadline = crate::deadline::in_(self.config.append_timeout.max(Duration::from_secs(5)));
        let mut next = from;
        let result = (|| {
            while next <= to {
                if Instant::now() > deadline {
                    return Err(Error::Timeout(format!(
                        "catch-up of {} stalled at sequence {next} of {to}",
                        self.name
                    )));
                }
                let want = usize::try_from(to - next + 1)
                    .unwrap_or(PULL_BATCH)
                    .min(PULL_BATCH);
                let c = consumer.clone();
                let batch = self.nats.block_on(async move {
                    let mut out = Vec::with_capacity(want);
                    let mut msgs = c
                        .batch()
                        .max_messages(want)
                        .expires(Duration::from_millis(500))
                        .messages()
                        .await
                        .map_err(nats_err("pull records"))?;
                    while let Some(m) = msgs.next().await {
                        let m = m.map_err(nats_err("pull records"))?;
                        let seq = m
                            .info()
                            .map_err(nats_err("record metadata"))?
                            .stream_sequence;
                        out.push((seq, m.message.headers.clone(), m.message.payload.clone()));
                    }
                    Ok::<_, Error>(out)
                })??;
                for (seq, headers, payload) in batch {
                    if seq != next {
                        return Err(Error::Inconsistent(format!(
                            "stream {} delivered sequence {seq} where {next} was next",
                            self.name
                        )));
                    }
                    let lsn = lsn_of(&headers.unwrap_or_default(), &self.name, seq)?;
                    check_mapping(&self.name, seq, lsn, offset)?;
                    each(lsn, payload)?;
                    next += 1;
                    if next > to {
                        break;
                    }
                }
            }
            Ok(())
        })();
        // Best effort: an ephemeral consumer also goes away by itself once inactive.
        let c = consumer.clone();
        let js = self.nats.jetstream().clone();
        let name = self.name.clone();
        let _ = self.nats.block_on(async move {
            let cname = c.cached_info().name.clone();
            if let Ok(s) = js.get_stream_no_info(&name).await {
                let _ = s.delete_consumer(&cname).await;
            }
        });
        result
    }

    /// Purges the records below `lsn` (a checkpoint holds them), keeping the record at `lsn`
    /// and after, and always the stream's last record (it carries the LSN mapping). Returns
    /// how many records went. Blocking.
    pub fn purge_below(&self, lsn: u64) -> Result<u64> {
        let tail = self.tail()?;
        let Some(offset) = tail.offset else {
            return Ok(0);
        };
        // Keep at least the last record: the stream's sequences would otherwise no longer say
        // which LSNs they stand for.
        let keep_from = lsn.min(tail.last_lsn()).saturating_sub(offset);
        if keep_from <= tail.first_seq {
            return Ok(0);
        }
        let js = self.nats.jetstream().clone();
        let name = self.name.clone();
        let purged = self.nats.block_on(async move {
            let s = js
                .get_stream_no_info(&name)
                .await
                .map_err(nats_err("open the shard stream"))?;
            s.purge()
                .sequence(keep_from)
                .await
                .map_err(nats_err("purge the shard stream"))
        })??;
        Ok(purged.purged)
    }
}

pub(crate) async fn tail(js: async_nats::jetstream::Context, name: String) -> Result<Tail> {
    let s = js
        .get_stream(&name)
        .await
        .map_err(nats_err("shard stream info"))?;
    let state = s.cached_info().state.clone();
    if state.last_sequence == 0 {
        return Ok(Tail {
            last_seq: 0,
            first_seq: 0,
            offset: None,
        });
    }
    if state.messages == 0 {
        return Err(Error::Inconsistent(format!(
            "stream {name} was purged whole (last sequence {}): which LSN its sequences \
             stand for is lost; recreate it from a checkpoint",
            state.last_sequence
        )));
    }
    let last = match s.get_raw_message(state.last_sequence).await {
        Ok(m) => m,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Err(Error::Inconsistent(format!(
                "stream {name} lacks its last record (sequence {})",
                state.last_sequence
            )))
        }
        Err(e) => return Err(nats_err("read the last record")(e)),
    };
    let lsn = lsn_of(&last.headers, &name, state.last_sequence)?;
    let offset = lsn.checked_sub(state.last_sequence).ok_or_else(|| {
        Error::Inconsistent(format!(
            "stream {name}: record at sequence {} carries LSN {lsn}, below its sequence",
            state.last_sequence
        ))
    })?;
    Ok(Tail {
        last_seq: state.last_sequence,
        first_seq: state.first_sequence,
        offset: Some(offset),
    })
}

pub(crate) fn lsn_of(headers: &HeaderMap, stream: &str, seq: u64) -> Result<u64> {
    headers
        .get(LSN_HEADER)
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or_else(|| {
            Error::Inconsistent(format!(
                "stream {stream}: the message at sequence {seq} has no {LSN_HEADER} header: \
                 something other than a chatstore commit log published to it"
            ))
        })
}

fn check_mapping(stream: &str, seq: u64, lsn: u64, offset: u64) -> Result<()> {
    if lsn != seq + offset {
        return Err(Error::Inconsistent(format!(
            "stream {stream}: sequence {seq} carries LSN {lsn}, the stream's mapping says {}",
            seq + offset
        )));
    }
    Ok(())
}
