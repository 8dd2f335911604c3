//! Retention against a model: random sequences of appends, imports of old messages, edits,
//! deletes, per-conversation time-to-live changes (set, lengthen, shorten, remove), store-wide
//! `max_message_age` changes across reopens, clock steps (forward and back), flushes, full and
//! partial compactions (`Store::compact_step`: level-0 rewrites, level-0 into level 1, deeper
//! levels) and reopens. The clock is injected, so expiry is deterministic.
//!
//! The model is a `BTreeMap` of (conversation, id) -> message plus, per conversation, the
//! watermark below which compaction has dropped messages for good. A message reads back when
//! its id is at or above the watermark and it has not expired under the policy in force now.
//! Compaction may move the watermark up over messages that have expired (never over a live
//! one), so the model keeps the range the watermark can be in: a full `compact()` pins it, a
//! partial compaction may raise it up to the first live message, and a read narrows it.
//! No operation may ever fail with `Corruption` or `Poisoned`.

#[path = "common/cases.rs"]
mod cases;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatstore::fs::fault::FaultFs;
use chatstore::presence::Clock;
use chatstore::{
    ChatOptions, ChatStore, Compression, ConversationId, Durability, Error, Message, MessageId,
    MessageKind, NewMessage, Options, Store, UserId,
};
use proptest::prelude::*;

const CONVS: u64 = 3;
const SENDER: UserId = UserId(7);
const START_MS: u64 = 1_700_000_000_000;

/// A clock the test sets, forward or back.
#[derive(Debug)]
struct TestClock(AtomicU64);

impl Clock for TestClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        conv: u64,
        n: u8,
    },
    /// Restores one message stamped `age_ms` before now.
    Import {
        conv: u64,
        age_ms: u64,
    },
    Edit {
        conv: u64,
        pick: u16,
    },
    Delete {
        conv: u64,
        pick: u16,
    },
    SetTtl {
        conv: u64,
        ttl_ms: Option<u64>,
    },
    /// Reopens with a new store-wide `max_message_age`.
    SetMaxAge(Option<u64>),
    Advance(u64),
    StepBack(u64),
    Flush,
    Compact,
    CompactStep,
    Reopen,
}

fn ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        1 => Just(None),
        3 => prop::sample::select(vec![5u64, 20, 60, 150, 400]).prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..CONVS, 1..8u8).prop_map(|(conv, n)| Op::Append { conv, n }),
        2 => (0..CONVS, 0..500u64).prop_map(|(conv, age_ms)| Op::Import { conv, age_ms }),
        2 => (0..CONVS, any::<u16>()).prop_map(|(conv, pick)| Op::Edit { conv, pick }),
        2 => (0..CONVS, any::<u16>()).prop_map(|(conv, pick)| Op::Delete { conv, pick }),
        4 => (0..CONVS, ttl()).prop_map(|(conv, ttl_ms)| Op::SetTtl { conv, ttl_ms }),
        1 => ttl().prop_map(Op::SetMaxAge),
        4 => (1..300u64).prop_map(Op::Advance),
        1 => (1..300u64).prop_map(Op::StepBack),
        4 => Just(Op::Flush),
        1 => Just(Op::Compact),
        5 => Just(Op::CompactStep),
        1 => Just(Op::Reopen),
    ]
}

/// A body that compresses poorly, so small levels fill up after a few dozen messages.
fn body(conv: u64, id: u64, salt: u64) -> Bytes {
    let mut x = (conv << 40) ^ (id << 8) ^ salt ^ 0x9E37_79B9_7F4A_7C15;
    let mut s = format!("c{conv}#{id}/{salt} ");
    for _ in 0..120 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push((b'a' + (x % 26) as u8) as char);
    }
    Bytes::from(s)
}

#[derive(Clone, Debug)]
struct Row {
    ts: u64,
    content: Bytes,
    deleted: bool,
    edited_ms: Option<u64>,
}

/// A conversation's policy and watermark.
#[derive(Clone, Debug)]
struct Conv {
    ttl_ms: Option<u64>,
    /// The watermark is in `w_lo..=w_hi`: ids below it are gone for good.
    w_lo: u64,
    w_hi: u64,
}

struct Model {
    /// (conversation, id) -> message.
    messages: BTreeMap<(u64, u64), Row>,
    convs: Vec<Conv>,
    max_age_ms: Option<u64>,
    now: u64,
}

impl Model {
    fn new() -> Self {
        Model {
            messages: BTreeMap::new(),
            convs: (0..CONVS)
                .map(|_| Conv {
                    ttl_ms: None,
                    w_lo: 1,
                    w_hi: 1,
                })
                .collect(),
            max_age_ms: None,
            now: START_MS,
        }
    }

    fn last(&self, c: usize) -> u64 {
        let c = c as u64;
        self.messages
            .range((c, 0)..=(c, u64::MAX))
            .next_back()
            .map_or(0, |(&(_, id), _)| id)
    }

    fn row(&self, c: usize, id: u64) -> &Row {
        &self.messages[&(c as u64, id)]
    }

    fn row_mut(&mut self, c: usize, id: u64) -> &mut Row {
        self.messages
            .get_mut(&(c as u64, id))
            .expect("a row the model holds")
    }

    fn push(&mut self, c: usize, row: Row) {
        let id = self.last(c) + 1;
        self.messages.insert((c as u64, id), row);
    }

    /// The time below which messages of `c` have expired, if any retention applies.
    fn cutoff(&self, c: usize) -> Option<u64> {
        let a = self.max_age_ms.map(|age| self.now.saturating_sub(age));
        let b = self.convs[c].ttl_ms.map(|t| self.now.saturating_sub(t));
        match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    fn unexpired(&self, c: usize, id: u64) -> bool {
        let ts = self.row(c, id).ts;
        self.cutoff(c).is_none_or(|cut| ts >= cut)
    }

    /// The first id at or above `from` that has not expired (`last + 1` if none).
    fn first_unexpired(&self, c: usize, from: u64) -> u64 {
        (from..=self.last(c))
            .find(|&id| self.unexpired(c, id))
            .unwrap_or(self.last(c) + 1)
    }

    /// A compaction of part of the store may raise the watermark up to the first live id.
    fn after_partial_compaction(&mut self) {
        for c in 0..CONVS as usize {
            let hi = self.first_unexpired(c, self.convs[c].w_hi);
            self.convs[c].w_hi = hi;
        }
    }

    /// A compaction of everything raises it exactly to the first live id.
    fn after_full_compaction(&mut self) {
        for c in 0..CONVS as usize {
            let lo = self.first_unexpired(c, self.convs[c].w_lo);
            let hi = self.first_unexpired(c, self.convs[c].w_hi);
            self.convs[c].w_lo = lo;
            self.convs[c].w_hi = hi;
        }
    }

    fn expected(&self, c: usize, id: u64) -> Message {
        let row = self.row(c, id);
        Message {
            conversation: ConversationId(c as u64),
            id: MessageId(id),
            sender: SENDER,
            timestamp_ms: row.ts,
            kind: if row.deleted {
                MessageKind::Deleted
            } else {
                MessageKind::Normal
            },
            content: if row.deleted {
                Bytes::new()
            } else {
                row.content.clone()
            },
            attachment: None,
            reply_to: None,
            mentions: Vec::new(),
            edited_ms: row.edited_ms,
        }
    }

    /// Checks a read of ids `lo..=hi` of `c` and narrows the watermark range from it.
    fn check_read(
        &mut self,
        c: usize,
        lo: u64,
        hi: u64,
        got: &[Message],
        what: &str,
    ) -> Result<(), TestCaseError> {
        let hi = hi.min(self.last(c));
        let mut present = BTreeSet::new();
        let mut prev = 0;
        for m in got {
            let id = m.id.0;
            prop_assert!(id > prev, "{}: ids out of order: {:?}", what, got);
            prev = id;
            prop_assert!(
                lo <= id && id <= hi,
                "{}: id {} outside {}..={}",
                what,
                id,
                lo,
                hi
            );
            prop_assert!(
                self.unexpired(c, id),
                "{}: expired message {} returned (cutoff {:?})",
                what,
                id,
                self.cutoff(c)
            );
            prop_assert!(
                id >= self.convs[c].w_lo,
                "{}: message {} is below the watermark ({}..={})",
                what,
                id,
                self.convs[c].w_lo,
                self.convs[c].w_hi
            );
            prop_assert_eq!(m, &self.expected(c, id), "{}", what);
            present.insert(id);
        }
        let (w_lo, w_hi) = (self.convs[c].w_lo, self.convs[c].w_hi);
        let live: Vec<u64> = (lo..=hi).filter(|&id| self.unexpired(c, id)).collect();
        for &id in live.iter().filter(|&&id| id >= w_hi) {
            prop_assert!(
                present.contains(&id),
                "{}: live message {} missing (watermark {}..={})",
                what,
                id,
                w_lo,
                w_hi
            );
        }
        // Between the bounds, what is present must be everything from some id on.
        let zone: Vec<u64> = live
            .iter()
            .copied()
            .filter(|&id| w_lo <= id && id < w_hi)
            .collect();
        match zone.iter().position(|id| present.contains(id)) {
            Some(p) => {
                for &id in &zone[p..] {
                    prop_assert!(
                        present.contains(&id),
                        "{}: message {} missing while an older one reads",
                        what,
                        id
                    );
                }
                self.convs[c].w_hi = zone[p];
                if p > 0 {
                    self.convs[c].w_lo = zone[p - 1] + 1;
                }
            }
            None => {
                if let Some(&z) = zone.last() {
                    self.convs[c].w_lo = z + 1;
                }
            }
        }
        Ok(())
    }
}

fn options(fs: &FaultFs, clock: &Arc<TestClock>, max_age_ms: Option<u64>) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        clock: Arc::clone(clock) as Arc<dyn Clock>,
        max_message_age: max_age_ms.map(Duration::from_millis),
        // No fsync wait per write: nothing here cuts the power.
        durability: Durability::Buffered {
            interval: Duration::from_secs(3600),
        },
        // Only explicit flushes freeze the memtable, so the test is deterministic.
        memtable_bytes: 1 << 20,
        block_bytes: 512,
        dictionary_bytes: 0,
        // Flushes write raw level-0 segments that compaction rewrites in LZ4 (provisional
        // segments: level-0 rewrites), and tiny levels make deeper levels form quickly.
        flush_compression: Compression::None,
        compression: Compression::Lz4,
        l0_compaction_trigger: 2,
        level_base_bytes: 4096,
        target_segment_bytes: 4096,
        background_compaction: false,
        ..Options::default()
    }
}

fn no_damage<T: std::fmt::Debug>(
    r: &chatstore::Result<T>,
    what: &str,
) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(
            !matches!(e, Error::Corruption { .. } | Error::Poisoned(_)),
            "{}: {}",
            what,
            e
        );
    }
    Ok(())
}

fn check_all(store: &Store, model: &mut Model) -> Result<(), TestCaseError> {
    for c in 0..CONVS as usize {
        let conv = ConversationId(c as u64);
        let last = model.last(c);
        prop_assert_eq!(
            store.last_id(conv).unwrap(),
            MessageId(last),
            "last_id of {}",
            c
        );
        let all = store.latest(conv, usize::MAX);
        no_damage(&all, "latest")?;
        model.check_read(c, 1, last, &all.unwrap_or_default(), "latest(all)")?;
        let newest = store.latest(conv, 3);
        no_damage(&newest, "latest")?;
        model.check_read(
            c,
            last.saturating_sub(2).max(1),
            last,
            &newest.unwrap_or_default(),
            "latest(3)",
        )?;
        for id in 1..=last {
            let got = store.get(conv, MessageId(id));
            no_damage(&got, "get")?;
            let got: Vec<Message> = got.unwrap_or_default().into_iter().collect();
            model.check_read(c, id, id, &got, "get")?;
        }
        if last > 0 {
            let back = store.before(conv, MessageId(last), 4);
            no_damage(&back, "before")?;
            model.check_read(
                c,
                last.saturating_sub(4).max(1),
                last - 1,
                &back.unwrap_or_default(),
                "before",
            )?;
            let fwd = store.after(conv, MessageId(last / 2), 4);
            no_damage(&fwd, "after")?;
            model.check_read(
                c,
                last / 2 + 1,
                last / 2 + 4,
                &fwd.unwrap_or_default(),
                "after",
            )?;
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = Path::new("/store");
    let fs = FaultFs::new();
    let clock = Arc::new(TestClock(AtomicU64::new(START_MS)));
    let mut model = Model::new();
    let mut store = Store::open_with(dir, options(&fs, &clock, None)).unwrap();
    let mut salt = 0u64;
    for (step, op) in ops.into_iter().enumerate() {
        let what = format!("step {step} {op:?}");
        match op {
            Op::Append { conv, n } => {
                let c = conv as usize;
                for _ in 0..n {
                    salt += 1;
                    let id = model.last(c) + 1;
                    let content = body(conv, id, salt);
                    let got = store.append(
                        ConversationId(conv),
                        NewMessage::new(SENDER, content.clone()),
                    );
                    no_damage(&got, &what)?;
                    let got = got.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
                    prop_assert_eq!(got.id, MessageId(id), "{}", what);
                    prop_assert_eq!(got.timestamp_ms, model.now, "{}", what);
                    model.push(
                        c,
                        Row {
                            ts: model.now,
                            content,
                            deleted: false,
                            edited_ms: None,
                        },
                    );
                }
            }
            Op::Import { conv, age_ms } => {
                let c = conv as usize;
                salt += 1;
                let id = model.last(c) + 1;
                let row = Row {
                    ts: model.now.saturating_sub(age_ms),
                    content: body(conv, id, salt),
                    deleted: false,
                    edited_ms: None,
                };
                model.push(c, row);
                let got = store.import(vec![model.expected(c, id)]);
                no_damage(&got, &what)?;
                prop_assert!(got.is_ok(), "{}: {:?}", what, got);
            }
            Op::Edit { conv, pick } | Op::Delete { conv, pick } => {
                let c = conv as usize;
                let last = model.last(c);
                if last == 0 {
                    continue;
                }
                let delete = matches!(op, Op::Delete { .. });
                let id = u64::from(pick) % last + 1;
                salt += 1;
                let content = body(conv, id, salt);
                let got = if delete {
                    store.delete(ConversationId(conv), MessageId(id))
                } else {
                    store.edit(ConversationId(conv), MessageId(id), content.clone())
                };
                no_damage(&got, &what)?;
                let (w_lo, w_hi) = (model.convs[c].w_lo, model.convs[c].w_hi);
                let visible = model.unexpired(c, id) && id >= w_lo;
                match got {
                    Ok(m) => {
                        prop_assert!(visible, "{}: edited an invisible message", what);
                        prop_assert!(
                            !model.row(c, id).deleted,
                            "{}: edited a deleted message",
                            what
                        );
                        let now = model.now;
                        let row = model.row_mut(c, id);
                        row.edited_ms = Some(now);
                        if delete {
                            row.deleted = true;
                        } else {
                            row.content = content;
                        }
                        prop_assert_eq!(&m, &model.expected(c, id), "{}", what);
                        // It was there, so the watermark is not above it.
                        model.convs[c].w_hi = w_hi.min(id);
                    }
                    Err(Error::IdOutOfRange { .. }) => {
                        prop_assert!(
                            !visible || id < w_hi,
                            "{}: a live message was refused",
                            what
                        );
                        if visible {
                            model.convs[c].w_lo = id + 1;
                        }
                    }
                    Err(Error::InvalidArgument(_)) => {
                        prop_assert!(model.row(c, id).deleted, "{}", what);
                    }
                    Err(e) => prop_assert!(false, "{}: {}", what, e),
                }
            }
            Op::SetTtl { conv, ttl_ms } => {
                let got =
                    store.set_retention(ConversationId(conv), ttl_ms.map(Duration::from_millis));
                no_damage(&got, &what)?;
                prop_assert!(got.is_ok(), "{}: {:?}", what, got);
                model.convs[conv as usize].ttl_ms = ttl_ms;
            }
            Op::SetMaxAge(age) => {
                let closed = store.close();
                no_damage(&closed, &what)?;
                model.max_age_ms = age;
                let opened = Store::open_with(dir, options(&fs, &clock, age));
                no_damage(&opened, &what)?;
                store = opened.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
            }
            Op::Advance(ms) => {
                model.now += ms;
                clock.0.store(model.now, Ordering::SeqCst);
            }
            Op::StepBack(ms) => {
                model.now -= ms;
                clock.0.store(model.now, Ordering::SeqCst);
            }
            Op::Flush => {
                let got = store.flush();
                no_damage(&got, &what)?;
                prop_assert!(got.is_ok(), "{}: {:?}", what, got);
            }
            Op::Compact => {
                let got = store.compact();
                no_damage(&got, &what)?;
                prop_assert!(got.is_ok(), "{}: {:?}", what, got);
                model.after_full_compaction();
            }
            Op::CompactStep => {
                let got = store.compact_step();
                no_damage(&got, &what)?;
                prop_assert!(got.is_ok(), "{}: {:?}", what, got);
                model.after_partial_compaction();
            }
            Op::Reopen => {
                let closed = store.close();
                no_damage(&closed, &what)?;
                let opened = Store::open_with(dir, options(&fs, &clock, model.max_age_ms));
                no_damage(&opened, &what)?;
                store = opened.map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
            }
        }
        check_all(&store, &mut model).map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
    }
    // Whatever happened, a full compaction and a reopen keep the store healthy.
    let got = store.compact();
    no_damage(&got, "final compact")?;
    prop_assert!(got.is_ok(), "final compact: {:?}", got);
    model.after_full_compaction();
    check_all(&store, &mut model)?;
    let report = store.verify();
    prop_assert!(
        report.as_ref().is_ok_and(|r| r.is_ok()),
        "verify: {:?}",
        report
    );
    store
        .close()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let store = Store::open_with(dir, options(&fs, &clock, model.max_age_ms)).unwrap();
    check_all(&store, &mut model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(256), max_shrink_iters: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn retention_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}

/// A store whose level 1 is much bigger than level 0 (so a quiet store rewrites level 0
/// alone), with messages 1..=3 of conversation 1 in level 1, sent at `START_MS`.
fn rewrite_setup(clock: &Arc<TestClock>) -> (FaultFs, Store) {
    let fs = FaultFs::new();
    // One compaction thread: the scenario counts on level 1 being one segment.
    let opts = Options {
        compaction_threads: 1,
        ..options(&fs, clock, None)
    };
    let store = Store::open_with("/store", opts).unwrap();
    let (big, small) = (ConversationId(0), ConversationId(1));
    for id in 1..=20 {
        store
            .append(big, NewMessage::new(SENDER, body(0, id, 0)))
            .unwrap();
    }
    for id in 1..=3 {
        store
            .append(small, NewMessage::text(SENDER, &format!("small {id}")))
            .unwrap();
    }
    store.compact().unwrap();
    (fs, store)
}

/// The partial compaction of the defect: messages 4..=6 of conversation 1, sent at `sent_ms`,
/// expire under a retention of `ttl_ms` and a level-0 rewrite (which leaves level 1 alone)
/// compacts them, at `START_MS + 100`.
fn expire_in_a_level0_rewrite(clock: &Arc<TestClock>, store: &Store, sent_ms: u64, ttl_ms: u64) {
    let small = ConversationId(1);
    clock.0.store(sent_ms, Ordering::SeqCst);
    for id in 4..=6 {
        store
            .append(small, NewMessage::text(SENDER, &format!("small {id}")))
            .unwrap();
    }
    store
        .set_retention(small, Some(Duration::from_millis(ttl_ms)))
        .unwrap();
    store.flush().unwrap();
    clock.0.store(START_MS + 100, Ordering::SeqCst);
    let before = store.stats().compactions;
    assert!(store.compact_step().unwrap(), "a level-0 rewrite is due");
    let stats = store.stats();
    assert_eq!(stats.compactions, before + 1);
    assert_eq!(
        stats.segments_per_level[0], 1,
        "the rewrite stays in level 0"
    );
    assert_eq!(stats.segments_per_level[1], 1, "level 1 is left alone");
    assert_eq!(stats.segments_per_level[2], 0);
}

fn ids(store: &Store, conv: ConversationId) -> Vec<u64> {
    let got = store.latest(conv, 100).unwrap();
    got.iter().map(|m| m.id.0).collect()
}

/// Retention drops expired messages in a compaction of part of the store, then is removed:
/// what was dropped stays gone, and no later compaction finds a gap (it used to: "compaction
/// inputs are not gapless", which poisons the store in the background, after every restart).
#[test]
fn retention_removed_after_a_partial_compaction_leaves_the_store_healthy() {
    let clock = Arc::new(TestClock(AtomicU64::new(START_MS)));
    let (fs, store) = rewrite_setup(&clock);
    expire_in_a_level0_rewrite(&clock, &store, START_MS + 1, 5);
    let small = ConversationId(1);
    assert!(ids(&store, small).is_empty());
    // Retention off. 1..=6 had all expired when the rewrite ran (1..=3 were older still),
    // so the watermark rose over all of them: none comes back, not even the stub of 6.
    store.set_retention(small, None).unwrap();
    store.compact().unwrap();
    assert!(ids(&store, small).is_empty());
    assert_eq!(store.get(small, MessageId(6)).unwrap(), None);
    assert_eq!(store.last_id(small).unwrap(), MessageId(6));
    let next = store
        .append(small, NewMessage::text(SENDER, "next"))
        .unwrap();
    assert_eq!(next.id, MessageId(7));
    assert_eq!(ids(&store, ConversationId(0)).len(), 20);
    store.close().unwrap();
    let store = Store::open_with("/store", options(&fs, &clock, None)).unwrap();
    assert_eq!(ids(&store, small), vec![7]);
    store.compact().unwrap();
    assert_eq!(ids(&store, small), vec![7]);
    assert!(store.verify().unwrap().is_ok());
}

/// The clock stepped back before 4..=6 were sent, so they expire before the older 1..=3 (the
/// retention is 500 ms): the watermark cannot rise over 1..=3, and the rewrite drops nothing
/// (reads hide 4..=6 while they are expired). Removing the retention shows all six.
#[test]
fn an_older_live_message_stops_the_watermark() {
    let clock = Arc::new(TestClock(AtomicU64::new(START_MS)));
    let (fs, store) = rewrite_setup(&clock);
    expire_in_a_level0_rewrite(&clock, &store, START_MS - 1000, 500);
    let small = ConversationId(1);
    assert_eq!(ids(&store, small), vec![1, 2, 3]);
    store.set_retention(small, None).unwrap();
    assert_eq!(ids(&store, small), vec![1, 2, 3, 4, 5, 6]);
    store.compact().unwrap();
    store.close().unwrap();
    let store = Store::open_with("/store", options(&fs, &clock, None)).unwrap();
    assert_eq!(ids(&store, small), vec![1, 2, 3, 4, 5, 6]);
    assert!(store.verify().unwrap().is_ok());
}

/// Unread counts start after what compaction dropped, whatever the retention says later.
#[test]
fn unread_counts_skip_messages_compaction_dropped() {
    let clock = Arc::new(TestClock(AtomicU64::new(START_MS)));
    let fs = FaultFs::new();
    let (a, b) = (UserId(1), UserId(2));
    let chat =
        ChatStore::open_with("/chat", options(&fs, &clock, None), ChatOptions::default()).unwrap();
    chat.register_user(a).unwrap();
    chat.register_user(b).unwrap();
    let ab = chat.direct(a, b).unwrap();
    for i in 0..3 {
        chat.send(ab, NewMessage::text(a, &format!("gone {i}")))
            .unwrap();
    }
    chat.set_retention(ab, a, Some(Duration::from_millis(5)))
        .unwrap();
    clock.0.fetch_add(100, Ordering::SeqCst);
    chat.store().compact().unwrap();
    chat.set_retention(ab, a, None).unwrap();
    assert!(chat.latest(b, ab, 10).unwrap().is_empty());
    assert!(chat.unread(b).unwrap().is_empty());
    let inbox = chat.inbox(b, 10, None).unwrap();
    assert_eq!(inbox.entries[0].unread, 0);
    assert!(inbox.entries[0].last_message.is_none());
    let fresh = chat.send(ab, NewMessage::text(a, "here")).unwrap();
    assert_eq!(fresh.id, MessageId(4));
    assert_eq!(chat.unread(b).unwrap()[0].count, 1);
}

/// A store compacted by an earlier version, which dropped expired messages without recording
/// a watermark: conversation 1 has 1..=3 in level 2 and 6..=8 in level 1 (4 and 5 dropped).
/// With the retention since removed, the hole used to stop every compaction ("compaction
/// inputs are not gapless"); now the ids below it count as below a watermark.
#[test]
fn a_hole_left_by_an_earlier_version_counts_as_a_watermark() {
    use chatstore::format::manifest::{self, ManifestState, SegmentRecord};
    use chatstore::format::segment::SegmentWriter;
    use chatstore::fs::FileSystem;

    let fs = FaultFs::new();
    let dir = Path::new("/legacy");
    fs.create_dir_all(dir).unwrap();
    let conv = ConversationId(1);
    let mut records = Vec::new();
    for (number, level, ids) in [(3u64, 2u32, 1..=3u64), (4, 1, 6..=8)] {
        let path = dir.join(format!("{number:06}.seg"));
        let mut w = SegmentWriter::new(fs.create(&path).unwrap(), Compression::None, 4096);
        for id in ids {
            let m = Message {
                conversation: conv,
                id: MessageId(id),
                sender: SENDER,
                timestamp_ms: START_MS,
                kind: MessageKind::Normal,
                content: Bytes::from(format!("m{id}")),
                attachment: None,
                reply_to: None,
                mentions: Vec::new(),
                edited_ms: None,
            };
            assert!(w.add(&m).unwrap());
        }
        let summary = w.finish().unwrap();
        records.push(SegmentRecord {
            number,
            level,
            file_bytes: summary.file_bytes,
            messages: summary.messages,
        });
    }
    let state = ManifestState {
        next_file_number: 5,
        log_number: 5,
        segments: records,
        flushed_lsn: 0,
    };
    let mut f = fs.create(&dir.join("MANIFEST")).unwrap();
    f.write_all(&manifest::encode(&state)).unwrap();
    f.sync().unwrap();
    drop(f);
    fs.sync_dir(dir).unwrap();

    let clock = Arc::new(TestClock(AtomicU64::new(START_MS + 10_000)));
    let store = Store::open_with(dir, options(&fs, &clock, None)).unwrap();
    assert_eq!(ids(&store, conv), vec![1, 2, 3, 6, 7, 8]);
    store.compact().unwrap();
    assert_eq!(ids(&store, conv), vec![6, 7, 8]);
    assert_eq!(store.last_id(conv).unwrap(), MessageId(8));
    store.close().unwrap();
    let store = Store::open_with(dir, options(&fs, &clock, None)).unwrap();
    assert_eq!(ids(&store, conv), vec![6, 7, 8]);
    assert!(store.verify().unwrap().is_ok());
}
