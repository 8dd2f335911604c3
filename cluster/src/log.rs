//! [`JetStreamCommitLog`]: a [`chatstore::CommitLog`] over the shard's stream, fenced by the
//! expected last sequence.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::Context;
use async_nats::HeaderMap;
use bytes::Bytes;
use chatstore::{CommitLog, CommitRecord, Store};
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::lease::Lease;
use crate::stream::{lsn_of, CatchUp, ShardStream, Tail, LSN_HEADER};

/// The commit log of one shard: a [`chatstore::CommitLog`] that publishes each commit record to
/// the shard's JetStream stream and returns once the stream (its replicas' quorum) holds it.
///
/// It starts **following**: it refuses commits (the store must only
/// [`catch_up`](Self::catch_up)). [`promote`](Self::promote) (after acquiring the shard's
/// [`Lease`]) catches the store up, learns where the stream ends, and makes it **lead**: from
/// then on each record is published with `Nats-Expected-Last-Sequence` = the sequence of the
/// record before it, so if anyone else published in between (a newer owner) the stream refuses
/// it and the commit fails, poisoning the store: a deposed owner cannot write. A failed append
/// (refused, or its outcome unknown after [`StreamConfig::append_timeout`]) stops the log for
/// good: reopen the store, catch up and promote again.
///
/// [`append`](CommitLog::append) blocks its caller (the store's commit leader, a writer's
/// thread) while the NATS runtime of [`Nats`](crate::Nats) publishes: call store writes from
/// ordinary or `spawn_blocking` threads, never from a task of that runtime.
///
/// [`StreamConfig::append_timeout`]: crate::StreamConfig::append_timeout
pub struct JetStreamCommitLog {
    stream: ShardStream,
    state: Mutex<State>,
    /// The record a catch-up is applying right now: the store hands it back to its commit log
    /// (it is already in the stream), and the log lets exactly that record through.
    replay: Mutex<Option<(u64, Bytes)>>,
}

struct State {
    mode: Mode,
    lease: Option<Lease>,
}

#[derive(Clone)]
enum Mode {
    Following,
    Leading {
        /// Stream sequence the next record gets.
        next_seq: u64,
        /// LSN the next record must have.
        next_lsn: u64,
    },
    Stopped(String),
}

impl std::fmt::Debug for JetStreamCommitLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.state.lock().mode {
            Mode::Following => "following".to_string(),
            Mode::Leading { next_seq, next_lsn } => {
                format!("leading (next LSN {next_lsn} at sequence {next_seq})")
            }
            Mode::Stopped(why) => format!("stopped: {why}"),
        };
        f.debug_struct("JetStreamCommitLog")
            .field("stream", &self.stream.name())
            .field("mode", &mode)
            .finish()
    }
}

impl JetStreamCommitLog {
    /// A commit log over `stream`, following. Pass it (as `Arc<dyn CommitLog>`) in the store's
    /// [`Options::commit_log`](chatstore::Options::commit_log).
    pub fn new(stream: ShardStream) -> Arc<JetStreamCommitLog> {
        Arc::new(JetStreamCommitLog {
            stream,
            state: Mutex::new(State {
                mode: Mode::Following,
                lease: None,
            }),
            replay: Mutex::new(None),
        })
    }

    /// The shard's stream.
    pub fn stream(&self) -> &ShardStream {
        &self.stream
    }

    /// Whether it leads (commits go through).
    pub fn is_leading(&self) -> bool {
        matches!(self.state.lock().mode, Mode::Leading { .. })
    }

    /// Why it stopped, if a failed append stopped it.
    pub fn stopped(&self) -> Option<String> {
        match &self.state.lock().mode {
            Mode::Stopped(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Applies to `store` (opened with this log as its commit log) every record the stream
    /// holds after `store.last_lsn()`. Blocking.
    pub fn catch_up(&self, store: &Store) -> Result<CatchUp> {
        self.stream.catch_up_with(store, Some(self))
    }

    /// Makes this log lead the shard for `store`: catches the store up from the stream, then
    /// learns the stream's last sequence; repeats until no record got in between (a previous
    /// owner still finishing a commit), within the stream's `append_timeout`. With a `lease`,
    /// every later append first checks it is still valid. Blocking.
    pub fn promote(&self, store: &Store, lease: Option<Lease>) -> Result<Tail> {
        let deadline = crate::deadline::in_(self.stream.config().append_timeout);
        loop {
            if let Some(lease) = &lease {
                lease.check()?;
            }
            self.catch_up(store)?;
            let tail = self.stream.tail()?;
            let have = store.last_lsn();
            let leading = match tail.offset {
                // Nothing was ever published: the first record takes sequence 1.
                None => Some(Mode::Leading {
                    next_seq: 1,
                    next_lsn: have + 1,
                }),
                Some(_) if tail.last_lsn() == have => Some(Mode::Leading {
                    next_seq: tail.last_seq + 1,
                    next_lsn: have + 1,
                }),
                Some(_) => None,
            };
            if let Some(mode) = leading {
                let mut st = self.state.lock();
                st.mode = mode;
                st.lease = lease;
                return Ok(tail);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "stream {} kept growing (LSN {}, store at {have}): another writer is active",
                    self.stream.name(),
                    tail.last_lsn()
                )));
            }
        }
    }

    /// Stops leading (the lease is gone or given up): later commits are refused.
    pub fn demote(&self) {
        let mut st = self.state.lock();
        st.mode = Mode::Following;
        st.lease = None;
    }

    /// Runs `apply` (which applies `(lsn, body)` to the store) letting that one record
    /// through [`append`](CommitLog::append) without publishing it.
    pub(crate) fn replaying(
        &self,
        lsn: u64,
        body: &Bytes,
        apply: impl FnOnce() -> chatstore::Result<bool>,
    ) -> Result<bool> {
        *self.replay.lock() = Some((lsn, body.clone()));
        let out = apply();
        *self.replay.lock() = None;
        Ok(out?)
    }

    fn is_replay(&self, records: &[CommitRecord<'_>]) -> bool {
        match (&*self.replay.lock(), records) {
            (Some((lsn, body)), [r]) => r.lsn == *lsn && r.body == &body[..],
            _ => false,
        }
    }

    fn append_records(&self, records: &[CommitRecord<'_>]) -> Result<()> {
        if records.is_empty() || self.is_replay(records) {
            return Ok(());
        }
        let mut st = self.state.lock();
        let (next_seq, next_lsn) = match &st.mode {
            Mode::Leading { next_seq, next_lsn } => (*next_seq, *next_lsn),
            Mode::Following => {
                return Err(Error::NotOwner(format!(
                    "the commit log of stream {} follows (promote it after taking the lease)",
                    self.stream.name()
                )))
            }
            Mode::Stopped(why) => {
                return Err(Error::NotOwner(format!(
                    "the commit log of stream {} stopped: {why}",
                    self.stream.name()
                )))
            }
        };
        let stop = |st: &mut State, e: Error| {
            st.mode = Mode::Stopped(e.to_string());
            e
        };
        if let Some(lease) = &st.lease {
            if let Err(e) = lease.check() {
                return Err(stop(&mut st, e));
            }
        }
        for (i, r) in records.iter().enumerate() {
            if r.lsn != next_lsn + i as u64 {
                let e = Error::Inconsistent(format!(
                    "record LSN {} where the log expects {}: the store took a commit the \
                     log did not see",
                    r.lsn,
                    next_lsn + i as u64
                ));
                return Err(stop(&mut st, e));
            }
        }
        let recs: Vec<(u64, Bytes)> = records
            .iter()
            .map(|r| (r.lsn, Bytes::copy_from_slice(r.body)))
            .collect();
        let n = recs.len() as u64;
        let job = publish_group(
            self.stream.nats().jetstream().clone(),
            self.stream.name().to_string(),
            self.stream.subject().to_string(),
            recs,
            next_seq,
            crate::deadline::in_(self.stream.config().append_timeout),
        );
        match self.stream.nats().block_on(job).and_then(|r| r) {
            Ok(()) => {
                st.mode = Mode::Leading {
                    next_seq: next_seq + n,
                    next_lsn: next_lsn + n,
                };
                Ok(())
            }
            Err(e) => Err(stop(&mut st, e)),
        }
    }
}

impl CommitLog for JetStreamCommitLog {
    fn append(
        &self,
        records: &[CommitRecord<'_>],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.append_records(records).map_err(Into::into)
    }
}

fn headers(lsn: u64, expected_last_seq: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(LSN_HEADER, lsn.to_string().as_str());
    h.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        expected_last_seq.to_string().as_str(),
    );
    h
}

/// Publishes `recs` at sequences `first_seq..`, each fenced by the sequence before it.
/// Pipelined; after the first failure (lost connection, no ack in time, refusal) it settles
/// each remaining record one by one against what the stream holds.
async fn publish_group(
    js: Context,
    stream: String,
    subject: String,
    recs: Vec<(u64, Bytes)>,
    first_seq: u64,
    deadline: Instant,
) -> Result<()> {
    let mut acks = Vec::with_capacity(recs.len());
    for (i, (lsn, body)) in recs.iter().enumerate() {
        let seq = first_seq.saturating_add(i as u64);
        match js
            .publish_with_headers(subject.clone(), headers(*lsn, seq - 1), body.clone())
            .await
        {
            Ok(ack) => acks.push(ack),
            Err(_) => break,
        }
    }
    let mut done = 0usize;
    for ack in acks {
        match ack.await {
            Ok(a) if a.sequence == first_seq + done as u64 => done += 1,
            Ok(a) => {
                return Err(Error::Inconsistent(format!(
                    "stream {stream}: LSN {} landed at sequence {}, not {}",
                    recs[done].0,
                    a.sequence,
                    first_seq + done as u64
                )))
            }
            Err(_) => break,
        }
    }
    for (i, rec) in recs.iter().enumerate().skip(done) {
        settle(&js, &stream, &subject, first_seq + i as u64, rec, deadline).await?;
    }
    Ok(())
}

/// Makes sure the stream holds `rec` at `seq`: reads what is there (our earlier publish may
/// have landed without its ack reaching us), publishes again if nothing is, and says
/// [`Error::Fenced`] if another writer's record is.
async fn settle(
    js: &Context,
    stream: &str,
    subject: &str,
    seq: u64,
    (lsn, body): &(u64, Bytes),
    deadline: Instant,
) -> Result<()> {
    let mut pause = Duration::from_millis(20);
    let mut why = String::from("no answer");
    loop {
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "publish of LSN {lsn} (sequence {seq}) to stream {stream}: {why}"
            )));
        }
        match stored(js, stream, seq).await {
            Ok(Some((their_lsn, payload))) => {
                if their_lsn == *lsn && payload == *body {
                    return Ok(());
                }
                return Err(Error::Fenced(format!(
                    "sequence {seq} of stream {stream} holds another writer's record (LSN \
                     {their_lsn}): the shard has a newer owner"
                )));
            }
            Ok(None) => {
                let published = match js
                    .publish_with_headers(subject.to_string(), headers(*lsn, seq - 1), body.clone())
                    .await
                {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match published {
                    Ok(a) if a.sequence == seq => return Ok(()),
                    Ok(a) => {
                        return Err(Error::Inconsistent(format!(
                            "stream {stream}: LSN {lsn} landed at sequence {}, not {seq}",
                            a.sequence
                        )))
                    }
                    // The stream does not end at `seq - 1`: someone else's record, or our
                    // own earlier publish, is at `seq` now. Look again.
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                        why = format!("refused: {e}");
                        continue;
                    }
                    Err(e) => why = e.to_string(),
                }
            }
            Err(e) => why = e.to_string(),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The record at `seq`, if the stream holds one: `(lsn, body)`.
async fn stored(js: &Context, stream: &str, seq: u64) -> Result<Option<(u64, Bytes)>> {
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| Error::Nats(format!("open stream {stream}: {e}")))?;
    match s.get_raw_message(seq).await {
        Ok(m) => Ok(Some((lsn_of(&m.headers, stream, seq)?, m.payload))),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(Error::Nats(format!("read sequence {seq} of {stream}: {e}"))),
    }
}
