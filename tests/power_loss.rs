//! Power-loss tests: seeded random workloads run on the fault-injecting file system, the power is
//! cut, and a store is reopened on what the "disk" kept.
//!
//! In `Durability::Sync` every acknowledged write (append, batch, edit, delete) must come back
//! exactly, ids must be gapless, opening must succeed, and new appends must continue the ids.
//! A call the cut interrupted may come back whole or not at all. Cuts fall between API calls,
//! at a scheduled file operation inside the store's own work (a group commit, a flush, a
//! compaction, a manifest update), and at every operation of one short workload in turn; they
//! keep only synced state, random parts of the unsynced state, or all of it (a process crash).
//! Several generations run per seed, so recovery also runs on directories that earlier
//! recoveries left behind. Small memtables, blocks and levels make flushes, WAL switches and
//! compactions frequent.
//!
//! `CHATSTORE_POWER_SEEDS=<n>` runs more seeds.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use chatstore::fs::fault::{CrashMode, FaultFs, Op};
use chatstore::{
    ConversationId, Durability, Message, MessageId, MessageKind, NewMessage, Options, Store, UserId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIR: &str = "/chat";
const CONVS: u64 = 8;
const GENERATIONS: usize = 3;
const ALL_OPS: &[Op] = &[
    Op::Write,
    Op::Sync,
    Op::Create,
    Op::Overwrite,
    Op::Rename,
    Op::Remove,
    Op::Read,
    Op::Open,
    Op::SyncDir,
    Op::Truncate,
    Op::List,
    Op::CreateDir,
    Op::Lock,
];
/// Operations that switch files: few, and where ordering mistakes hide.
const METADATA_OPS: &[Op] = &[
    Op::Create,
    Op::Overwrite,
    Op::Rename,
    Op::Remove,
    Op::SyncDir,
    Op::Truncate,
];

fn seeds(default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("CHATSTORE_POWER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    0..n
}

fn options(fs: &FaultFs, durability: Durability) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        durability,
        memtable_bytes: 8 << 10,
        block_bytes: 1 << 10,
        // Small levels, so compactions (and their manifest edits) are as frequent as flushes.
        l0_compaction_trigger: 3,
        level_base_bytes: 16 << 10,
        target_segment_bytes: 8 << 10,
        ..Options::default()
    }
}

fn open(fs: &FaultFs, durability: Durability, ctx: &str) -> Store {
    Store::open_with(DIR, options(fs, durability))
        .unwrap_or_else(|e| panic!("{ctx}: open after a power cut failed: {e}"))
}

/// A message whose content starts with `tag`, so every message of a test is distinct.
fn random_message(rng: &mut StdRng, tag: &str, last_id: u64) -> NewMessage {
    let mut content = tag.as_bytes().to_vec();
    let len = if rng.gen_ratio(1, 20) {
        rng.gen_range(500..3000)
    } else {
        rng.gen_range(0..200)
    };
    if rng.gen_ratio(1, 10) {
        content.extend((0..len).map(|_| rng.gen::<u8>()));
    } else {
        const LETTERS: &[u8] = b"abcdefgh ijklmnop";
        content.extend((0..len).map(|_| LETTERS[rng.gen_range(0..LETTERS.len())]));
    }
    let mut m = NewMessage::new(UserId(rng.gen_range(1..6)), content);
    if rng.gen_ratio(1, 8) {
        m = m.with_attachment(format!("https://assets.example/{}.jpg", rng.gen::<u32>()));
    }
    if last_id > 0 && rng.gen_ratio(1, 6) {
        m = m.with_reply_to(MessageId(rng.gen_range(1..=last_id)));
    }
    if rng.gen_ratio(1, 7) {
        let n = rng.gen_range(1..4);
        m = m.with_mentions((0..n).map(|_| UserId(rng.gen_range(1..6))).collect());
    }
    if rng.gen_ratio(1, 15) {
        m = m.with_kind(MessageKind::System);
    }
    m
}

/// Whether a stored message carries what was appended.
fn same_fields(stored: &Message, conv: u64, sent: &NewMessage) -> bool {
    stored.conversation == ConversationId(conv)
        && stored.sender == sent.sender
        && stored.kind == sent.kind
        && stored.content == sent.content
        && stored.attachment == sent.attachment
        && stored.reply_to == sent.reply_to
        && stored.mentions == sent.mentions
}

/// Whether `new` is `old` edited to `content` (or deleted, for `None`).
fn overrides(new: &Message, old: &Message, content: Option<&Bytes>) -> bool {
    let same_message = new.conversation == old.conversation
        && new.id == old.id
        && new.sender == old.sender
        && new.timestamp_ms == old.timestamp_ms
        && new.edited_ms.is_some();
    same_message
        && match content {
            Some(c) => new.content == c && new.kind == old.kind,
            None => new.kind == MessageKind::Deleted,
        }
}

/// Acknowledged messages per conversation; index `i` holds id `i + 1`.
type Model = BTreeMap<u64, Vec<Message>>;

/// Everything the store holds for the test's conversations, checking ids are gapless.
fn read_all(store: &Store, ctx: &str) -> Model {
    let mut out = Model::new();
    for c in 1..=CONVS {
        let conv = ConversationId(c);
        let msgs = store
            .latest(conv, usize::MAX)
            .unwrap_or_else(|e| panic!("{ctx}: reading conversation {c}: {e}"));
        let ids: Vec<u64> = msgs.iter().map(|m| m.id.0).collect();
        let want: Vec<u64> = (1..=msgs.len() as u64).collect();
        assert_eq!(ids, want, "{ctx}: conversation {c} ids are not gapless");
        assert_eq!(
            store.last_id(conv).unwrap().0,
            msgs.len() as u64,
            "{ctx}: conv {c}"
        );
        for m in &msgs {
            assert_eq!(m.conversation, conv, "{ctx}");
        }
        if !msgs.is_empty() {
            out.insert(c, msgs);
        }
    }
    out
}

fn assert_same(got: &Model, want: &Model, ctx: &str) {
    for c in 1..=CONVS {
        let g = got.get(&c).map_or(&[][..], Vec::as_slice);
        let w = want.get(&c).map_or(&[][..], Vec::as_slice);
        assert_eq!(
            g.len(),
            w.len(),
            "{ctx}: conversation {c} has {} messages, {} were acknowledged",
            g.len(),
            w.len()
        );
        for (a, b) in g.iter().zip(w) {
            assert_eq!(a, b, "{ctx}: conversation {c} message {}", b.id);
        }
    }
}

/// Appends one message to every conversation: ids must continue right after the recovered ones.
fn append_after_reopen(store: &Store, model: &mut Model, rng: &mut StdRng, ctx: &str) {
    for c in 1..=CONVS {
        let run = model.entry(c).or_default();
        let m = random_message(rng, &format!("{ctx} reopen c{c} "), run.len() as u64);
        let got = store
            .append(ConversationId(c), m)
            .unwrap_or_else(|e| panic!("{ctx}: append after reopen: {e}"));
        assert_eq!(got.id.0, run.len() as u64 + 1, "{ctx}: conversation {c}");
        run.push(got);
    }
}

#[derive(Default)]
struct Totals {
    flushes: u64,
    compactions: u64,
    max_segments: u64,
    recycled_logs: u64,
}

impl Totals {
    fn add(&mut self, store: &Store) {
        let s = store.stats();
        self.flushes += s.flushes;
        self.compactions += s.compactions;
        self.max_segments = self.max_segments.max(s.segments);
        self.recycled_logs += s.wal_files_recycled;
    }

    /// The workloads are meant to cut power around flushes and compactions; make sure they
    /// produce some.
    fn assert_exercised_flushes(&self) {
        assert!(
            self.flushes > 0 && self.max_segments > 0,
            "no flush happened"
        );
        assert!(self.compactions > 0, "no compaction happened");
        assert!(self.recycled_logs > 0, "no WAL file was reused");
    }
}

/// Messages of one append call: (conversation, message).
type Sent = Vec<(u64, NewMessage)>;

/// A call that returned an error because the power went: what it did may or may not have been
/// stored (all of it or none).
#[derive(Default)]
enum Interrupted {
    /// An append or a batch.
    Append(Sent),
    /// An edit (`Some` content) or a delete (`None`) of one message.
    Override {
        conv: u64,
        id: u64,
        content: Option<Bytes>,
    },
    /// A call that writes no messages (flush, sync, compact).
    #[default]
    Other,
}

/// Random single-threaded work in `Durability::Sync`, each result checked against `model`.
struct Workload<'a> {
    fs: &'a FaultFs,
    model: &'a mut Model,
    rng: &'a mut StdRng,
    totals: &'a mut Totals,
    ctx: &'a str,
}

impl<'a> Workload<'a> {
    fn new(
        fs: &'a FaultFs,
        model: &'a mut Model,
        rng: &'a mut StdRng,
        totals: &'a mut Totals,
        ctx: &'a str,
    ) -> Self {
        Workload {
            fs,
            model,
            rng,
            totals,
            ctx,
        }
    }

    /// Runs `ops` operations. With `cut_scheduled`, a call failing after the power went ends the
    /// run and is returned; any other failure fails the test.
    fn run(
        &mut self,
        mut store: Store,
        ops: usize,
        cut_scheduled: bool,
    ) -> (Store, Option<Interrupted>) {
        for op in 0..ops {
            let tag = format!("{} op{op} ", self.ctx);
            let (call, result) = match self.rng.gen_range(0..100) {
                0..=73 => {
                    let call = self.random_call(&tag);
                    let r = if call.len() == 1 {
                        store
                            .append(ConversationId(call[0].0), call[0].1.clone())
                            .map(|m| vec![m])
                    } else {
                        store.append_batch(
                            call.iter()
                                .map(|(c, m)| (ConversationId(*c), m.clone()))
                                .collect(),
                        )
                    };
                    (Interrupted::Append(call), r)
                }
                74..=79 => {
                    let Some((conv, id, content)) = self.random_override(&tag) else {
                        continue;
                    };
                    let (c, i) = (ConversationId(conv), MessageId(id));
                    let r = match &content {
                        Some(text) => store.edit(c, i, text.clone()),
                        None => store.delete(c, i),
                    };
                    let call = Interrupted::Override { conv, id, content };
                    (call, r.map(|m| vec![m]))
                }
                80..=82 => (Interrupted::Other, store.flush().map(|()| Vec::new())),
                83 => (Interrupted::Other, store.sync().map(|()| Vec::new())),
                84 => (Interrupted::Other, store.compact().map(|()| Vec::new())),
                85..=98 => {
                    self.check_a_read(&store, &tag);
                    continue;
                }
                _ if cut_scheduled => continue,
                _ => {
                    // A clean close between cuts: recovery must also cope with orderly
                    // shutdowns.
                    self.totals.add(&store);
                    store
                        .close()
                        .unwrap_or_else(|e| panic!("{tag}: close: {e}"));
                    store = Store::open_with(DIR, options(self.fs, Durability::Sync))
                        .unwrap_or_else(|e| panic!("{tag}: clean reopen: {e}"));
                    assert_same(&read_all(&store, &tag), self.model, &tag);
                    continue;
                }
            };
            match (result, &call) {
                (Ok(got), Interrupted::Append(sent)) => {
                    assert_eq!(got.len(), sent.len(), "{tag}");
                    for ((c, m), g) in sent.iter().zip(got) {
                        let run = self.model.entry(*c).or_default();
                        assert_eq!(g.id.0, run.len() as u64 + 1, "{tag}");
                        assert!(same_fields(&g, *c, m), "{tag}");
                        run.push(g);
                    }
                }
                (Ok(mut got), Interrupted::Override { conv, id, content }) => {
                    let g = got.pop().unwrap_or_else(|| panic!("{tag}: no message"));
                    let old = &self.model[conv][*id as usize - 1];
                    assert!(overrides(&g, old, content.as_ref()), "{tag}: {g:?}");
                    self.model.entry(*conv).or_default()[*id as usize - 1] = g;
                }
                (Ok(_), Interrupted::Other) => {}
                (Err(e), _) if cut_scheduled && self.fs.is_powered_off() => {
                    // Nothing reaches the disk any more, so no later write can succeed.
                    let next = store.append(ConversationId(1), NewMessage::text(UserId(1), "x"));
                    assert!(
                        next.is_err(),
                        "{tag}: a write succeeded after the cut ({e})"
                    );
                    return (store, Some(call));
                }
                (Err(e), _) => panic!("{tag}: {e}"),
            }
        }
        (store, None)
    }

    /// An edit (`Some` new content) or delete of a random message that is not deleted yet.
    fn random_override(&mut self, tag: &str) -> Option<(u64, u64, Option<Bytes>)> {
        let conv = self.rng.gen_range(1..=CONVS);
        let run = self.model.get(&conv).filter(|r| !r.is_empty())?;
        let id = self.rng.gen_range(1..=run.len() as u64);
        if run[id as usize - 1].kind == MessageKind::Deleted {
            return None;
        }
        let content = self
            .rng
            .gen_ratio(2, 3)
            .then(|| Bytes::from(format!("{tag}edited")));
        Some((conv, id, content))
    }

    /// One append (or, one time in eight, a batch across conversations).
    fn random_call(&mut self, tag: &str) -> Sent {
        let n = if self.rng.gen_ratio(1, 8) {
            self.rng.gen_range(2..8)
        } else {
            1
        };
        let mut next: BTreeMap<u64, u64> = BTreeMap::new();
        (0..n)
            .map(|i| {
                let c = self.rng.gen_range(1..=CONVS);
                let last = next
                    .entry(c)
                    .or_insert_with(|| self.model.get(&c).map_or(0, |r| r.len() as u64));
                let m = random_message(self.rng, &format!("{tag}m{i} "), *last);
                *last += 1;
                (c, m)
            })
            .collect()
    }

    fn check_a_read(&mut self, store: &Store, tag: &str) {
        let c = self.rng.gen_range(1..=CONVS);
        let run = self.model.get(&c).map_or(&[][..], Vec::as_slice);
        let n = self.rng.gen_range(1..50);
        let got = store
            .latest(ConversationId(c), n)
            .unwrap_or_else(|e| panic!("{tag}: latest: {e}"));
        assert_eq!(got, run[run.len().saturating_sub(n)..], "{tag}");
        if !run.is_empty() {
            let id = self.rng.gen_range(1..=run.len());
            let got = store.get(ConversationId(c), MessageId(id as u64));
            assert_eq!(got.ok().flatten().as_ref(), Some(&run[id - 1]), "{tag}");
        }
    }
}

/// One seed: generations of (reopen, check, random work, power cut at a random operation).
/// `untidy` alternates the cuts between keeping random parts of the unsynced state and keeping
/// all of it (a process crash); otherwise only synced state survives.
fn sequential_run(seed: u64, untidy: bool, totals: &mut Totals) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut fs = FaultFs::new();
    let mut model = Model::new();
    for gen in 0..GENERATIONS {
        let ctx = format!("seed {seed} gen {gen}");
        let store = open(&fs, Durability::Sync, &ctx);
        assert_same(&read_all(&store, &ctx), &model, &ctx);
        append_after_reopen(&store, &mut model, &mut rng, &ctx);
        let cut_at = rng.gen_range(0..400);
        let (store, _) =
            Workload::new(&fs, &mut model, &mut rng, totals, &ctx).run(store, cut_at, false);
        totals.add(&store);
        let mode = match (untidy, gen % 2) {
            (false, _) => CrashMode::LoseUnsynced,
            (true, 0) => CrashMode::Torn { seed: rng.gen() },
            (true, _) => CrashMode::KeepWritten,
        };
        fs = fs.power_cut_with(mode);
        drop(store);
    }
    let ctx = format!("seed {seed} final");
    let store = open(&fs, Durability::Sync, &ctx);
    assert_same(&read_all(&store, &ctx), &model, &ctx);
    append_after_reopen(&store, &mut model, &mut rng, &ctx);
}

#[test]
fn acknowledged_sync_writes_survive_power_cuts_between_operations() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let mut totals = Totals::default();
    for seed in seeds(40) {
        sequential_run(seed, false, &mut totals);
    }
    totals.assert_exercised_flushes();
}

#[test]
fn acknowledged_sync_writes_survive_crashes_that_keep_unsynced_state() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let mut totals = Totals::default();
    for seed in seeds(40) {
        sequential_run(1000 + seed, true, &mut totals);
    }
    totals.assert_exercised_flushes();
}

/// Checks a store reopened after a cut that struck during the call `failed`: exactly the
/// acknowledged state, plus all or nothing of what the failed call did. Returns what it holds.
fn check_with_failed_call(store: &Store, model: &Model, failed: &Interrupted, ctx: &str) -> Model {
    let got = read_all(store, ctx);
    let no_messages = Vec::new();
    let sent = match failed {
        Interrupted::Append(sent) => sent,
        _ => &no_messages,
    };
    let mut found = 0;
    for c in 1..=CONVS {
        let g = got.get(&c).map_or(&[][..], Vec::as_slice);
        let w = model.get(&c).map_or(&[][..], Vec::as_slice);
        assert!(
            g.len() >= w.len(),
            "{ctx}: conversation {c} has {} messages, {} were acknowledged",
            g.len(),
            w.len()
        );
        for (a, b) in g.iter().zip(w) {
            let edited = match failed {
                Interrupted::Override { conv, id, content } if (*conv, *id) == (c, b.id.0) => {
                    overrides(a, b, content.as_ref())
                }
                _ => false,
            };
            assert!(a == b || edited, "{ctx}: conversation {c}: {a:?} != {b:?}");
        }
        let mine: Vec<&NewMessage> = sent
            .iter()
            .filter(|(fc, _)| *fc == c)
            .map(|(_, m)| m)
            .collect();
        let extra = &g[w.len()..];
        assert!(
            extra.len() <= mine.len(),
            "{ctx}: conversation {c} gained messages never sent"
        );
        for (m, s) in extra.iter().zip(&mine) {
            assert!(
                same_fields(m, c, s),
                "{ctx}: conversation {c} id {} was never sent",
                m.id
            );
        }
        found += extra.len();
    }
    assert!(
        found == 0 || found == sent.len(),
        "{ctx}: {found} of the {} messages of the interrupted call came back",
        sent.len()
    );
    got
}

/// Ends a workload run with a power cut scheduled on `fs`: takes the image the cut left (or,
/// if it did not strike within the work, cuts the power now in `otherwise`; with `None`, gives
/// up), reopens the store on it and checks it against `model`, allowing the call the cut
/// interrupted to have landed or not. Returns the image, the reopened store and the state it
/// shows.
fn reopen_after_cut(
    fs: &FaultFs,
    store: Store,
    model: &Model,
    failed: Option<Interrupted>,
    otherwise: Option<CrashMode>,
    ctx: &str,
) -> Option<(FaultFs, Store, Model)> {
    let image = match (fs.take_crash_image(), otherwise) {
        (Some(image), _) => image,
        (None, Some(mode)) => fs.power_cut_with(mode),
        (None, None) => return None,
    };
    drop(store);
    let store = open(&image, Durability::Sync, ctx);
    let shown = check_with_failed_call(&store, model, &failed.unwrap_or_default(), ctx);
    Some((image, store, shown))
}

/// Power cuts at exact file operations (inside a group commit, a flush, a compaction, a
/// manifest update), where cuts between API calls rarely land.
#[test]
fn acknowledged_sync_writes_survive_a_power_cut_at_any_file_operation() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let mut totals = Totals::default();
    for seed in seeds(60) {
        let mut rng = StdRng::seed_from_u64(4000 + seed);
        let mut fs = FaultFs::new();
        let mut model = Model::new();
        for gen in 0..GENERATIONS {
            let ctx = format!("seed {seed} gen {gen}");
            let store = open(&fs, Durability::Sync, &ctx);
            assert_same(&read_all(&store, &ctx), &model, &ctx);
            append_after_reopen(&store, &mut model, &mut rng, &ctx);
            let mode = match (seed + gen as u64) % 3 {
                0 => CrashMode::LoseUnsynced,
                1 => CrashMode::Torn { seed: rng.gen() },
                _ => CrashMode::KeepWritten,
            };
            // Every other generation aims at the rarer metadata operations, where a flush or a
            // compaction switches files.
            if gen % 2 == 0 {
                fs.schedule_power_cut(rng.gen_range(0..1500), ALL_OPS, mode);
            } else {
                fs.schedule_power_cut(rng.gen_range(0..60), METADATA_OPS, mode);
            }
            let (store, failed) =
                Workload::new(&fs, &mut model, &mut rng, &mut totals, &ctx).run(store, 400, true);
            totals.add(&store);
            let (after, _, shown) = reopen_after_cut(&fs, store, &model, failed, Some(mode), &ctx)
                .expect("a fallback cut leaves an image");
            (fs, model) = (after, shown);
        }
    }
    totals.assert_exercised_flushes();
}

/// A process crash right before a WAL sync leaves the last group commit in the page cache
/// only. The reopened store replays it (readers see it, ids continue after it) and
/// acknowledges more writes on top; then the power fails. Everything acknowledged after the
/// reopen, and everything the reopen showed, must survive: recovery makes what it replays
/// durable before it acknowledges anything new.
#[test]
fn replayed_records_survive_a_power_cut_after_a_process_crash() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let mut totals = Totals::default();
    let mut replayed_unsynced = 0;
    for seed in seeds(40) {
        let mut rng = StdRng::seed_from_u64(7000 + seed);
        let ctx = format!("seed {seed}");
        let fs = FaultFs::new();
        let mut model = Model::new();
        let store = open(&fs, Durability::Sync, &ctx);
        append_after_reopen(&store, &mut model, &mut rng, &ctx);
        // The crash: the process dies before one of its WAL syncs, the OS lives on.
        fs.schedule_power_cut(rng.gen_range(1..120), &[Op::Sync], CrashMode::KeepWritten);
        let (store, failed) =
            Workload::new(&fs, &mut model, &mut rng, &mut totals, &ctx).run(store, 400, true);
        let (crashed, store, shown) = reopen_after_cut(
            &fs,
            store,
            &model,
            failed,
            Some(CrashMode::KeepWritten),
            &ctx,
        )
        .expect("a fallback cut leaves an image");
        if shown.values().map(Vec::len).sum::<usize>() > model.values().map(Vec::len).sum() {
            replayed_unsynced += 1;
        }
        let mut model = shown;
        append_after_reopen(&store, &mut model, &mut rng, &ctx);
        let ops = rng.gen_range(0..60);
        let (store, _) =
            Workload::new(&crashed, &mut model, &mut rng, &mut totals, &ctx).run(store, ops, false);
        totals.add(&store);
        let mode = if seed % 2 == 0 {
            CrashMode::LoseUnsynced
        } else {
            CrashMode::Torn { seed }
        };
        let after = crashed.power_cut_with(mode);
        drop(store);
        let ctx = format!("{ctx} after the power cut");
        let store = open(&after, Durability::Sync, &ctx);
        assert_same(&read_all(&store, &ctx), &model, &ctx);
        append_after_reopen(&store, &mut model, &mut rng, &ctx);
    }
    assert!(
        replayed_unsynced > 0,
        "no crash left an unsynced record for the reopen to replay"
    );
}

/// The same short workload (flushes, a compaction, WAL switches) with the power cut before each
/// of its file operations in turn, in each crash mode.
#[test]
fn acknowledged_sync_writes_survive_a_power_cut_at_every_operation_of_a_short_workload() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    const CALLS: usize = 100;
    let run = |cut: Option<(u64, CrashMode)>, totals: &mut Totals| -> Option<FaultFs> {
        let ctx = format!("cut {cut:?}");
        let mut rng = StdRng::seed_from_u64(5000);
        let fs = FaultFs::new();
        let mut model = Model::new();
        let store = open(&fs, Durability::Sync, &ctx);
        if let Some((after, mode)) = cut {
            fs.schedule_power_cut(after, ALL_OPS, mode);
        }
        let (store, failed) =
            Workload::new(&fs, &mut model, &mut rng, totals, &ctx).run(store, CALLS, cut.is_some());
        totals.add(&store);
        let (image, store, mut model) = reopen_after_cut(&fs, store, &model, failed, None, &ctx)?;
        append_after_reopen(&store, &mut model, &mut rng, &ctx);
        Some(image)
    };
    let mut totals = Totals::default();
    // How many operations the workload makes (the flush thread makes this vary a little).
    let probe = FaultFs::new();
    {
        let mut rng = StdRng::seed_from_u64(5000);
        let mut model = Model::new();
        let store = open(&probe, Durability::Sync, "probe");
        let (store, _) = Workload::new(&probe, &mut model, &mut rng, &mut totals, "probe")
            .run(store, CALLS, false);
        store.close().unwrap_or_else(|e| panic!("probe close: {e}"));
    }
    let total: u64 = ALL_OPS.iter().map(|&op| probe.op_count(op)).sum();
    assert!(total > 200, "{total}");
    let mut cuts = 0;
    for after in 0..total {
        for mode in [
            CrashMode::LoseUnsynced,
            CrashMode::Torn { seed: after },
            CrashMode::KeepWritten,
        ] {
            if run(Some((after, mode)), &mut totals).is_some() {
                cuts += 1;
            }
        }
    }
    assert!(
        cuts as u64 > total,
        "only {cuts} of the cuts struck during the workload"
    );
    totals.assert_exercised_flushes();
}

/// A checkpoint that returned is a durable, openable copy of everything acknowledged before it,
/// whatever happens to the live store afterwards.
#[test]
fn checkpoints_survive_a_power_cut() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let mut totals = Totals::default();
    for seed in seeds(12) {
        let mut rng = StdRng::seed_from_u64(6000 + seed);
        let ctx = format!("seed {seed}");
        let fs = FaultFs::new();
        let mut model = Model::new();
        let store = open(&fs, Durability::Sync, &ctx);
        let mut work = Workload::new(&fs, &mut model, &mut rng, &mut totals, &ctx);
        let (store, _) = work.run(store, 250, false);
        store
            .checkpoint("/backup")
            .unwrap_or_else(|e| panic!("{ctx}: checkpoint: {e}"));
        let at_checkpoint = work.model.clone();
        let ops = work.rng.gen_range(0..100);
        let (store, _) = work.run(store, ops, false);
        let mode = if seed % 2 == 0 {
            CrashMode::LoseUnsynced
        } else {
            CrashMode::Torn { seed }
        };
        let after = fs.power_cut_with(mode);
        drop(store);
        let backup = Store::open_with("/backup", options(&after, Durability::Sync))
            .unwrap_or_else(|e| panic!("{ctx}: open the checkpoint: {e}"));
        assert_same(&read_all(&backup, &ctx), &at_checkpoint, &ctx);
    }
}

/// What a writer thread tried: `batch` is `Some` for members of an `append_batch` call.
#[derive(Clone)]
struct Attempt {
    conv: u64,
    message: NewMessage,
    batch: Option<(usize, u64)>,
}

/// What concurrent writers left behind.
struct Outcome {
    /// Acknowledged messages by (conversation, id).
    acked: BTreeMap<(u64, u64), Message>,
    /// Messages of calls that returned an error.
    failed: Vec<Attempt>,
    /// The file system a reboot finds.
    after: FaultFs,
}

/// Writers append concurrently (so group commit batches them) until the power is cut from the
/// main thread after a random number of acknowledgements.
fn concurrent_writers(
    store: &Store,
    fs: &FaultFs,
    mode: CrashMode,
    rng: &mut StdRng,
    model: &Model,
    ctx: &str,
) -> Outcome {
    const WRITERS: usize = 3;
    let (tx, rx) = mpsc::channel::<Vec<Message>>();
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let fs = fs.clone();
            let tx = tx.clone();
            let mut wrng = StdRng::seed_from_u64(rng.gen());
            // Last id each conversation is known to have, for valid `reply_to`s.
            let mut known: Vec<u64> = (0..=CONVS)
                .map(|c| model.get(&c).map_or(0, |r| r.len() as u64))
                .collect();
            let ctx = format!("{ctx} writer {w}");
            thread::spawn(move || {
                for call in 0..2000u64 {
                    let tag = format!("{ctx} call{call} ");
                    let n = if wrng.gen_ratio(1, 8) {
                        wrng.gen_range(2..6)
                    } else {
                        1
                    };
                    let attempts: Vec<Attempt> = (0..n)
                        .map(|i| {
                            let conv = wrng.gen_range(1..=CONVS);
                            let tag = format!("{tag}m{i} ");
                            Attempt {
                                conv,
                                message: random_message(&mut wrng, &tag, known[conv as usize]),
                                batch: (n > 1).then_some((w, call)),
                            }
                        })
                        .collect();
                    let sent = attempts
                        .iter()
                        .map(|a| (ConversationId(a.conv), a.message.clone()))
                        .collect();
                    match store.append_batch(sent) {
                        Ok(got) => {
                            for (a, g) in attempts.iter().zip(&got) {
                                assert!(same_fields(g, a.conv, &a.message), "{tag}");
                                known[a.conv as usize] = known[a.conv as usize].max(g.id.0);
                            }
                            if tx.send(got).is_err() {
                                return Vec::new();
                            }
                        }
                        Err(e) => {
                            // Only the power cut may make a write fail.
                            assert!(fs.is_powered_off(), "{tag}: unexpected error: {e}");
                            return attempts;
                        }
                    }
                }
                Vec::new()
            })
        })
        .collect();
    drop(tx);
    let cut_after = rng.gen_range(0..600);
    let mut after = (cut_after == 0).then(|| fs.power_cut_with(mode));
    let mut acked = BTreeMap::new();
    for (calls, msgs) in rx.iter().enumerate() {
        for m in msgs {
            let key = (m.conversation.0, m.id.0);
            assert!(acked.insert(key, m).is_none(), "{ctx}: {key:?} given twice");
        }
        if after.is_none() && calls + 1 >= cut_after {
            // Cut while the writers are still going. Acknowledgements that arrive after this
            // are still for records synced before it: the old disk now refuses all I/O.
            after = Some(fs.power_cut_with(mode));
        }
    }
    let mut failed = Vec::new();
    for h in handles {
        failed.extend(
            h.join()
                .unwrap_or_else(|_| panic!("{ctx}: a writer panicked")),
        );
    }
    let after = after.unwrap_or_else(|| fs.power_cut_with(mode));
    Outcome {
        acked,
        failed,
        after,
    }
}

/// Checks a store recovered after concurrent writes: the old state `model`, every
/// acknowledged message, and of the failed calls only whole batches. Returns what it holds.
fn check_concurrent_recovery(store: &Store, model: &Model, out: &Outcome, ctx: &str) -> Model {
    let got = read_all(store, ctx);
    for &(c, id) in out.acked.keys() {
        let n = got.get(&c).map_or(0, Vec::len) as u64;
        assert!(
            id <= n,
            "{ctx}: conversation {c} id {id} was acknowledged but only {n} came back"
        );
    }
    let mut used = vec![false; out.failed.len()];
    for (c, run) in &got {
        let old = model.get(c).map_or(&[][..], Vec::as_slice);
        for m in run {
            let idx = m.id.0 as usize - 1;
            if let Some(want) = old.get(idx).or_else(|| out.acked.get(&(*c, m.id.0))) {
                assert_eq!(m, want, "{ctx}: conversation {c}");
                continue;
            }
            // Not acknowledged: it must be one of the calls that failed at the cut.
            let i = (0..out.failed.len())
                .find(|&i| !used[i] && same_fields(m, out.failed[i].conv, &out.failed[i].message))
                .unwrap_or_else(|| panic!("{ctx}: conversation {c} id {} was never written", m.id));
            used[i] = true;
        }
    }
    // A batch is one WAL record: all of it or nothing.
    let mut batches: BTreeMap<(usize, u64), (usize, usize)> = BTreeMap::new();
    for (a, u) in out.failed.iter().zip(&used) {
        if let Some(b) = a.batch {
            let e = batches.entry(b).or_default();
            e.0 += 1;
            e.1 += usize::from(*u);
        }
    }
    for (b, (n, found)) in batches {
        assert!(
            found == 0 || found == n,
            "{ctx}: batch {b:?} recovered {found} of {n} messages"
        );
    }
    got
}

#[test]
fn acknowledged_sync_writes_survive_a_power_cut_under_concurrent_writers() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let mut totals = Totals::default();
    for seed in seeds(16) {
        let mut rng = StdRng::seed_from_u64(2000 + seed);
        let mut fs = FaultFs::new();
        let mut model = Model::new();
        for gen in 0..GENERATIONS {
            let ctx = format!("seed {seed} gen {gen}");
            let store = open(&fs, Durability::Sync, &ctx);
            assert_same(&read_all(&store, &ctx), &model, &ctx);
            append_after_reopen(&store, &mut model, &mut rng, &ctx);
            let mode = if gen % 2 == 0 {
                CrashMode::LoseUnsynced
            } else {
                CrashMode::Torn { seed: rng.gen() }
            };
            let out = concurrent_writers(&store, &fs, mode, &mut rng, &model, &ctx);
            totals.add(&store);
            drop(store);
            fs = out.after.clone();
            let store = open(&fs, Durability::Sync, &ctx);
            model = check_concurrent_recovery(&store, &model, &out, &ctx);
        }
    }
    totals.assert_exercised_flushes();
}

/// In `Buffered` durability a power cut may lose the newest writes, but what survives is a
/// prefix of the acknowledged writes in commit order (everything up to the last `sync` at
/// least), and lost ids are handed out again.
#[test]
fn buffered_writes_lose_only_a_suffix() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let durability = Durability::Buffered {
        interval: Duration::from_millis(2),
    };
    for seed in seeds(24) {
        let mut rng = StdRng::seed_from_u64(3000 + seed);
        let mut fs = FaultFs::new();
        let mut model = Model::new();
        for gen in 0..GENERATIONS {
            let ctx = format!("seed {seed} gen {gen}");
            let store = open(&fs, durability, &ctx);
            assert_same(&read_all(&store, &ctx), &model, &ctx);
            let base = model.clone();
            // Acknowledged calls in commit order (one thread, so call order).
            let mut calls: Vec<Vec<Message>> = Vec::new();
            let mut synced_calls = 0;
            for op in 0..rng.gen_range(0..300) {
                let tag = format!("{ctx} op{op} ");
                if rng.gen_ratio(1, 25) {
                    store.sync().unwrap_or_else(|e| panic!("{tag}: sync: {e}"));
                    synced_calls = calls.len();
                    continue;
                }
                let n = if rng.gen_ratio(1, 6) { 3 } else { 1 };
                let mut next: BTreeMap<u64, u64> = BTreeMap::new();
                let batch: Vec<_> = (0..n)
                    .map(|i| {
                        let c = rng.gen_range(1..=CONVS);
                        let last = next
                            .entry(c)
                            .or_insert_with(|| model.get(&c).map_or(0, |r| r.len() as u64));
                        let m = random_message(&mut rng, &format!("{tag}m{i} "), *last);
                        *last += 1;
                        (ConversationId(c), m)
                    })
                    .collect();
                let got = store
                    .append_batch(batch)
                    .unwrap_or_else(|e| panic!("{tag}: append: {e}"));
                for g in &got {
                    model.entry(g.conversation.0).or_default().push(g.clone());
                }
                calls.push(got);
            }
            let clean = rng.gen_ratio(1, 4);
            if clean {
                store
                    .close()
                    .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
                synced_calls = calls.len();
            }
            let mode = if rng.gen() {
                CrashMode::LoseUnsynced
            } else {
                CrashMode::Torn { seed: rng.gen() }
            };
            fs = fs.power_cut_with(mode);
            let store = open(&fs, durability, &ctx);
            let got = read_all(&store, &ctx);
            // The number of leading calls that survived, judged by message counts.
            let mut expected = base.clone();
            let mut kept = 0;
            loop {
                if (1..=CONVS).all(|c| {
                    got.get(&c).map_or(0, Vec::len) == expected.get(&c).map_or(0, Vec::len)
                }) {
                    break;
                }
                assert!(
                    kept < calls.len(),
                    "{ctx}: recovered state is not a prefix of the acknowledged writes"
                );
                for m in &calls[kept] {
                    expected
                        .entry(m.conversation.0)
                        .or_default()
                        .push(m.clone());
                }
                kept += 1;
            }
            assert!(
                kept >= synced_calls,
                "{ctx}: {kept} calls survived but {synced_calls} were synced"
            );
            assert_same(&got, &expected, &ctx);
            model = expected;
            append_after_reopen(&store, &mut model, &mut rng, &ctx);
            store
                .close()
                .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
        }
    }
}

fn rewrite_options(fs: &FaultFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        durability: Durability::Sync,
        memtable_bytes: 64 << 10,
        block_bytes: 1 << 10,
        ..Options::default()
    }
}

fn rewrite_text(i: u64) -> String {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("message {i}: meet at {:x} by {:x}", h, h >> 17)
}

type TextModel = BTreeMap<(u64, u64), String>;

/// A store with a big level 1 and one raw level-0 segment: its rewrite is due once quiet.
fn with_level0_rewrite_due(fs: &FaultFs) -> (Store, TextModel) {
    let store = Store::open_with(DIR, rewrite_options(fs)).unwrap();
    let mut model = BTreeMap::new();
    let mut write = |store: &Store, range: std::ops::Range<u64>| {
        for chunk in range.collect::<Vec<_>>().chunks(100) {
            let batch: Vec<(ConversationId, NewMessage)> = chunk
                .iter()
                .map(|&i| {
                    (
                        ConversationId(i % CONVS + 1),
                        NewMessage::text(UserId(i), &rewrite_text(i)),
                    )
                })
                .collect();
            for m in store.append_batch(batch).unwrap() {
                model.insert((m.conversation.0, m.id.0), rewrite_text(m.sender.0));
            }
        }
    };
    write(&store, 0..6000);
    store.compact().unwrap();
    write(&store, 6000..6200);
    store.flush().unwrap();
    assert_eq!(store.stats().segments_per_level[0], 1);
    (store, model)
}

/// Waits until compaction has nothing left to do, or the power went.
fn wait_settled(store: &Store, fs: &FaultFs) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.stats().pending_compaction_bytes > 0 && !fs.is_powered_off() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rewrite never ran"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn check_texts(store: &Store, model: &TextModel, ctx: &str) {
    for conv in 1..=CONVS {
        let got: Vec<(u64, String)> = store
            .after(ConversationId(conv), MessageId(0), usize::MAX)
            .unwrap_or_else(|e| panic!("{ctx}: read failed: {e}"))
            .iter()
            .map(|m| (m.id.0, String::from_utf8_lossy(&m.content).into_owned()))
            .collect();
        let want: Vec<(u64, String)> = model
            .range((conv, 0)..(conv + 1, 0))
            .map(|(&(_, id), t)| (id, t.clone()))
            .collect();
        assert_eq!(got, want, "{ctx}: conversation {conv}");
    }
}

fn total_ops(fs: &FaultFs) -> u64 {
    ALL_OPS.iter().map(|&op| fs.op_count(op)).sum()
}

/// A quiet store rewrites its raw level-0 segment in zstd within level 0 (level 1 being too big
/// to fold it into): a power cut at any file operation of that rewrite loses nothing, and the
/// reopened store keeps the ids going.
#[test]
fn a_power_cut_at_any_operation_of_a_level0_rewrite_loses_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    // How many file operations the rewrite makes.
    let probe = FaultFs::new();
    let (store, model) = with_level0_rewrite_due(&probe);
    let before = total_ops(&probe);
    wait_settled(&store, &probe);
    let ops = total_ops(&probe) - before;
    assert_eq!(
        store.stats().segments_per_level[0],
        1,
        "rewritten within level 0"
    );
    assert!(store.stats().compactions >= 2, "no rewrite ran");
    check_texts(&store, &model, "probe");
    drop(store);
    assert!(ops >= 5, "{ops}");

    // Each cut in its own thread: most of a run is waiting for the store to be quiet.
    let runs: Vec<_> = (0..ops)
        .map(|after| {
            thread::spawn(move || {
                let mode = if after % 2 == 0 {
                    CrashMode::LoseUnsynced
                } else {
                    CrashMode::Torn { seed: after }
                };
                let ctx = format!("cut after {after} of {ops} ({mode:?})");
                let fs = FaultFs::new();
                let (store, mut model) = with_level0_rewrite_due(&fs);
                fs.schedule_power_cut(after, ALL_OPS, mode);
                wait_settled(&store, &fs);
                let image = fs.take_crash_image();
                drop(store);
                let Some(image) = image else {
                    return false;
                };
                let store = Store::open_with(DIR, rewrite_options(&image))
                    .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
                check_texts(&store, &model, &ctx);
                let m = store
                    .append(ConversationId(1), NewMessage::text(UserId(1), "after"))
                    .unwrap();
                let last = model.range((1, 0)..(2, 0)).count() as u64;
                assert_eq!(m.id, MessageId(last + 1), "{ctx}");
                model.insert((1, m.id.0), "after".into());
                check_texts(&store, &model, &ctx);
                true
            })
        })
        .collect();
    let struck = runs
        .into_iter()
        .map(|r| r.join().unwrap_or_else(|_| panic!("a cut run failed")))
        .filter(|&s| s)
        .count() as u64;
    assert!(
        struck * 2 >= ops,
        "only {struck} of {ops} cuts struck the rewrite"
    );
}
