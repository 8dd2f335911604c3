//! Injected I/O errors (ENOSPC, EIO) on the fault-injecting file system.
//!
//! The documented contract: the call that hits the error returns an `Err` (a failure in the
//! background flush surfaces as `Error::Poisoned` on the next call), the store then refuses
//! writes with `Error::Poisoned`, everything acknowledged before stays readable, and a reopen
//! once the errors stop recovers every acknowledged message, both from the file system as the
//! failed store left it and from what a power cut would have left of it. A failed call's
//! messages may or may not come back, but a batch comes back whole or not at all, and ids stay
//! gapless. Compaction errors before its manifest update are the exception: the inputs stay
//! intact, so they leave the store writable. Errors while opening fail the open and destroy
//! nothing.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::time::Duration;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chatstore::fs::fault::{CrashMode, FaultFs, FaultRule, Injected, Op};
use chatstore::fs::FileSystem;
use chatstore::{ConversationId, Error, Message, MessageId, NewMessage, Options, Store, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIR: &str = "/db";
const CONVS: u64 = 5;
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

fn options(fs: &FaultFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        memtable_bytes: 8 << 10,
        block_bytes: 1 << 10,
        l0_compaction_trigger: 3,
        level_base_bytes: 16 << 10,
        target_segment_bytes: 8 << 10,
        // Most compaction errors do not poison the store (the inputs stay intact and it
        // retries), so compaction runs only when a test calls `Store::compact`, where its
        // errors show.
        background_compaction: false,
        ..Options::default()
    }
}

fn open(fs: &FaultFs, ctx: &str) -> Store {
    Store::open_with(DIR, options(fs)).unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"))
}

fn os_code(e: Injected) -> i32 {
    match e {
        Injected::NoSpace => 28,
        Injected::Io => 5,
        other => panic!("{other:?} is not an I/O error"),
    }
}

/// Acknowledged messages per conversation (index `i` holds id `i + 1`), and the messages of
/// calls that failed.
#[derive(Default, Clone)]
struct Model {
    acked: BTreeMap<u64, Vec<Message>>,
    failed: Vec<Vec<(u64, NewMessage)>>,
}

impl Model {
    fn last(&self, conv: u64) -> u64 {
        self.acked.get(&conv).map_or(0, |r| r.len() as u64)
    }

    fn ack(&mut self, got: Vec<Message>) {
        for m in got {
            let run = self.acked.entry(m.conversation.0).or_default();
            assert_eq!(m.id.0, run.len() as u64 + 1, "ids must be gapless");
            run.push(m);
        }
    }
}

fn message(rng: &mut StdRng, tag: &str, last: u64) -> NewMessage {
    let filler: String = (0..rng.gen_range(0..150))
        .map(|_| char::from(b'a' + rng.gen_range(0..26)))
        .collect();
    let mut m = NewMessage::text(UserId(rng.gen_range(1..4)), &format!("{tag} {filler}"));
    if last > 0 && rng.gen_ratio(1, 5) {
        m = m.with_reply_to(MessageId(rng.gen_range(1..=last)));
    }
    m
}

fn random_call(rng: &mut StdRng, model: &Model, tag: &str) -> Vec<(u64, NewMessage)> {
    let n = if rng.gen_ratio(1, 6) {
        rng.gen_range(2..5)
    } else {
        1
    };
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    (0..n)
        .map(|i| {
            let c = rng.gen_range(1..=CONVS);
            let l = last.entry(c).or_insert_with(|| model.last(c));
            let m = message(rng, &format!("{tag}.{i}"), *l);
            *l += 1;
            (c, m)
        })
        .collect()
}

fn send(store: &Store, call: &[(u64, NewMessage)]) -> chatstore::Result<Vec<Message>> {
    store.append_batch(
        call.iter()
            .map(|(c, m)| (ConversationId(*c), m.clone()))
            .collect(),
    )
}

/// Appends `n` messages that must all succeed.
fn warm_up(store: &Store, model: &mut Model, rng: &mut StdRng, n: usize, ctx: &str) {
    for i in 0..n {
        let call = random_call(rng, model, &format!("{ctx} warm{i}"));
        let got = send(store, &call).unwrap_or_else(|e| panic!("{ctx}: warm-up append: {e}"));
        model.ack(got);
    }
}

fn read_all(store: &Store, ctx: &str) -> BTreeMap<u64, Vec<Message>> {
    let mut out = BTreeMap::new();
    for c in 1..=CONVS {
        let msgs = store
            .latest(ConversationId(c), usize::MAX)
            .unwrap_or_else(|e| panic!("{ctx}: read of conversation {c}: {e}"));
        let ids: Vec<u64> = msgs.iter().map(|m| m.id.0).collect();
        assert_eq!(
            ids,
            (1..=msgs.len() as u64).collect::<Vec<_>>(),
            "{ctx}: conv {c}"
        );
        if !msgs.is_empty() {
            out.insert(c, msgs);
        }
    }
    out
}

fn same_fields(m: &Message, conv: u64, sent: &NewMessage) -> bool {
    m.conversation.0 == conv
        && m.sender == sent.sender
        && m.content == sent.content
        && m.reply_to == sent.reply_to
}

/// Checks a reopened store: every acknowledged message, then only whole failed calls.
fn check_recovered(store: &Store, model: &Model, ctx: &str) -> Model {
    let got = read_all(store, ctx);
    let mut used: Vec<Vec<bool>> = model.failed.iter().map(|c| vec![false; c.len()]).collect();
    for c in 1..=CONVS {
        let g = got.get(&c).map_or(&[][..], Vec::as_slice);
        let w = model.acked.get(&c).map_or(&[][..], Vec::as_slice);
        assert!(
            g.len() >= w.len(),
            "{ctx}: conversation {c}: {} acknowledged, {} recovered",
            w.len(),
            g.len()
        );
        assert_eq!(&g[..w.len()], w, "{ctx}: conversation {c}");
        for m in &g[w.len()..] {
            let slot = model.failed.iter().enumerate().find_map(|(ci, call)| {
                call.iter()
                    .enumerate()
                    .position(|(mi, (conv, sent))| !used[ci][mi] && same_fields(m, *conv, sent))
                    .map(|mi| (ci, mi))
            });
            let (ci, mi) = slot
                .unwrap_or_else(|| panic!("{ctx}: conversation {c} id {} was never written", m.id));
            used[ci][mi] = true;
        }
    }
    for (call, u) in model.failed.iter().zip(&used) {
        let found = u.iter().filter(|&&x| x).count();
        assert!(
            found == 0 || found == call.len(),
            "{ctx}: a failed call came back partly ({found} of {})",
            call.len()
        );
    }
    Model {
        acked: got,
        failed: Vec::new(),
    }
}

/// Reopens the way an operator would after the failure (errors gone), both on the file system
/// as the failed store left it and on what a power cut would have left; appends must continue.
fn reopen_and_check(fs: &FaultFs, model: &Model, ctx: &str) {
    let cut = fs.crash_copy(CrashMode::LoseUnsynced);
    fs.clear_faults();
    for (which, fs) in [("as left", fs), ("after a power cut", &cut)] {
        let ctx = format!("{ctx}, reopened {which}");
        let store = open(fs, &ctx);
        let mut now = check_recovered(&store, model, &ctx);
        let got = store
            .append(
                ConversationId(1),
                NewMessage::text(UserId(1), "after reopen"),
            )
            .unwrap_or_else(|e| panic!("{ctx}: append after reopen: {e}"));
        assert_eq!(got.id.0, now.last(1) + 1, "{ctx}");
        now.ack(vec![got]);
        store
            .close()
            .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
        let store = open(fs, &ctx);
        assert_eq!(read_all(&store, &ctx), now.acked, "{ctx}: second reopen");
    }
}

/// After the first error: writes are refused as poisoned, reads still serve everything
/// acknowledged.
fn check_poisoned(store: &Store, model: &Model, ctx: &str) {
    let r = store.append(ConversationId(1), NewMessage::text(UserId(1), "refused"));
    assert!(matches!(r, Err(Error::Poisoned(_))), "{ctx}: append: {r:?}");
    let r = store.append_batch(vec![(ConversationId(2), NewMessage::text(UserId(1), "no"))]);
    assert!(matches!(r, Err(Error::Poisoned(_))), "{ctx}: batch: {r:?}");
    let r = store.flush();
    assert!(matches!(r, Err(Error::Poisoned(_))), "{ctx}: flush: {r:?}");
    assert_eq!(
        read_all(store, ctx),
        model.acked,
        "{ctx}: reads after the failure"
    );
}

/// What the first failing call must look like.
enum Expect {
    /// The call itself fails with `Error::Io` on a path ending like this.
    Io(&'static str),
    /// The error happens in the background flush; the next call reports `Error::Poisoned`
    /// whose text names the path.
    Background(&'static str),
    /// Either, depending on who hits the error first (the writer or the flusher).
    Either(&'static str),
}

/// Appends until the injected fault surfaces, then checks the contract.
fn run_until_failure(
    rule: FaultRule,
    error: Injected,
    expect: Expect,
    seed: u64,
    ctx: &str,
) -> (FaultFs, Model) {
    let mut rng = StdRng::seed_from_u64(seed);
    let fs = FaultFs::new();
    let store = open(&fs, ctx);
    let mut model = Model::default();
    warm_up(&store, &mut model, &mut rng, 20, ctx);
    fs.inject(rule.with_error(error));
    let mut first_error = None;
    // Appends only: memtables fill up, so WAL switches and flushes happen on their own.
    // (Explicit `Store::flush` calls have their own tests below.)
    for i in 0..3000 {
        let call = random_call(&mut rng, &model, &format!("{ctx} call{i}"));
        let r = send(&store, &call);
        if r.is_err() {
            model.failed.push(call);
        }
        match r {
            Ok(got) => model.ack(got),
            Err(e) => {
                first_error = Some(e);
                break;
            }
        }
    }
    let e = first_error.unwrap_or_else(|| panic!("{ctx}: the injected fault never surfaced"));
    assert!(
        fs.injected_count() > 0,
        "{ctx}: {e} is not the injected fault"
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!("os error {}", os_code(error))),
        "{ctx}: {text}"
    );
    let io_on = |path: &Path, want: &str| path.to_string_lossy().ends_with(want);
    match (expect, &e) {
        (Expect::Io(want) | Expect::Either(want), Error::Io { path, source })
            if io_on(path, want) =>
        {
            assert_eq!(source.kind(), error.to_io_error().kind(), "{ctx}");
        }
        (Expect::Background(want) | Expect::Either(want), Error::Poisoned(why))
            if why.contains(want) => {}
        (_, e) => panic!("{ctx}: unexpected first error: {e}"),
    }
    check_poisoned(&store, &model, ctx);
    // Closing reports the failure or not, but must not panic.
    let _ = store.close();
    (fs, model)
}

fn fault_scenario(op: Op, suffix: &'static str, expect: fn(&'static str) -> Expect, torn: bool) {
    fault_scenario_any(&[op], suffix, expect, torn);
}

/// [`fault_scenario`] with a rule that matches any of `ops`.
fn fault_scenario_any(
    ops: &[Op],
    suffix: &'static str,
    expect: fn(&'static str) -> Expect,
    torn: bool,
) {
    for (i, after) in [0u64, 1, 2, 3, 5, 8, 13, 21, 40].into_iter().enumerate() {
        let error = if i % 2 == 0 {
            Injected::NoSpace
        } else {
            Injected::Io
        };
        let ctx = format!("{ops:?} on {suffix} failing after {after} ({error:?})");
        let mut rule = FaultRule::any_of(ops)
            .on_paths_ending_with(suffix)
            .after(after);
        if torn {
            rule = rule.torn();
        }
        let (fs, model) = run_until_failure(rule, error, expect(suffix), after, &ctx);
        reopen_and_check(&fs, &model, &ctx);
    }
}

// A WAL write also happens when a full memtable switches to a new WAL file, right after a
// commit: then the committed call succeeds and the next one reports the poisoning.
#[test]
fn wal_write_errors_fail_the_write_and_poison_the_store() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    fault_scenario(Op::Write, ".wal", Expect::Either, false);
}

#[test]
fn short_wal_writes_leave_a_torn_record_that_recovery_cuts() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    fault_scenario(Op::Write, ".wal", Expect::Either, true);
}

#[test]
fn wal_sync_errors_fail_the_write_and_poison_the_store() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    fault_scenario(Op::Sync, ".wal", Expect::Io, false);
}

#[test]
fn segment_write_errors_poison_the_store_and_lose_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    fault_scenario(Op::Write, ".seg", Expect::Background, false);
    fault_scenario(Op::Sync, ".seg", Expect::Background, false);
    fault_scenario(Op::Create, ".seg", Expect::Background, false);
}

#[test]
fn manifest_errors_poison_the_store_and_lose_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    fault_scenario(Op::Rename, "MANIFEST", Expect::Background, false);
    fault_scenario(Op::Write, "MANIFEST.tmp", Expect::Background, true);
}

#[test]
fn directory_sync_errors_poison_the_store_and_lose_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    // The directory is synced after a WAL switch (in the writer) and after a flush.
    fault_scenario(Op::SyncDir, DIR, Expect::Either, false);
}

#[test]
fn wal_creation_errors_poison_the_store_and_lose_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    // A memtable switch starts its log by creating a file, or by reusing a retired one
    // (renamed, then written over) once flushes have retired some.
    fault_scenario_any(&[Op::Create, Op::Overwrite], ".wal", Expect::Either, false);
    fault_scenario(Op::Rename, ".wal", Expect::Either, false);
}

/// A fault on any operation at any point of a workload, sticky like a full disk.
fn any_operation_sweep(explicit_flushes: bool) {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..120u64 {
        let error = if round % 2 == 0 {
            Injected::NoSpace
        } else {
            Injected::Io
        };
        let after = rng.gen_range(0..600);
        let mut rule = FaultRule::any_of(ALL_OPS).after(after).with_error(error);
        if rng.gen_ratio(1, 3) {
            rule = rule.torn();
        }
        let ctx = format!("round {round}: any operation after {after} ({error:?})");
        let fs = FaultFs::new();
        let store = open(&fs, &ctx);
        let mut model = Model::default();
        fs.inject(rule);
        let mut failed_once = false;
        for i in 0..400 {
            let r = if explicit_flushes && rng.gen_ratio(1, 15) {
                store.flush().map(|()| Vec::new())
            } else {
                let call = random_call(&mut rng, &model, &format!("{ctx} call{i}"));
                let r = send(&store, &call);
                if r.is_err() {
                    model.failed.push(call);
                }
                r
            };
            match r {
                Ok(got) => {
                    assert!(!failed_once, "{ctx}: call {i} succeeded after a failure");
                    model.ack(got);
                }
                Err(Error::Io { .. } | Error::Poisoned(_)) => failed_once = true,
                Err(e) => panic!("{ctx}: unexpected error: {e}"),
            }
        }
        if failed_once {
            check_poisoned(&store, &model, &ctx);
        }
        let _ = store.close();
        reopen_and_check(&fs, &model, &ctx);
    }
}

#[test]
fn a_fault_at_any_operation_of_a_write_workload_loses_nothing_acknowledged() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    any_operation_sweep(false);
}

#[test]
fn a_fault_at_any_operation_with_explicit_flushes_loses_nothing_acknowledged() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    any_operation_sweep(true);
}

/// `Store::flush` switches to a new WAL file first; when that fails the store must refuse
/// writes like after any other failed flush (README: "A failed WAL write or flush poisons the
/// store"), or it keeps writing to the old WAL next to a half-created newer one.
#[test]
fn a_failed_wal_switch_in_flush_poisons_the_store() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    for (op, suffix) in [
        (Op::Write, ".wal"),
        (Op::SyncDir, DIR),
        (Op::Create, ".wal"),
    ] {
        let ctx = format!("{op:?} on {suffix}");
        let fs = FaultFs::new();
        let store = open(&fs, &ctx);
        store
            .append(ConversationId(1), NewMessage::text(UserId(1), "acked"))
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        fs.inject(FaultRule::new(op).on_paths_ending_with(suffix).times(1));
        let r = store.flush();
        assert!(matches!(r, Err(Error::Io { .. })), "{ctx}: flush: {r:?}");
        let r = store.append(ConversationId(1), NewMessage::text(UserId(1), "next"));
        assert!(matches!(r, Err(Error::Poisoned(_))), "{ctx}: append: {r:?}");
    }
}

/// The consequence: a transient ENOSPC while `Store::flush` creates the next WAL file leaves
/// an empty WAL behind; the store carries on, a later WAL switch creates a newer file, and if
/// anything stops the store before the flush deletes the empty one (here a failing segment
/// write, in the field a crash) the store no longer opens: "WAL file header is incomplete".
#[test]
fn a_transient_error_in_flush_never_makes_the_store_unopenable() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let fs = FaultFs::new();
    let store = open(&fs, "first open");
    let mut model = Model::default();
    let a = store
        .append(ConversationId(1), NewMessage::text(UserId(1), "a"))
        .unwrap_or_else(|e| panic!("append a: {e}"));
    model.ack(vec![a]);
    fs.inject(
        FaultRule::new(Op::Write)
            .on_paths_ending_with(".wal")
            .times(1),
    );
    assert!(store.flush().is_err());
    fs.clear_faults();
    if let Ok(b) = store.append(ConversationId(1), NewMessage::text(UserId(1), "b")) {
        model.ack(vec![b]);
    }
    fs.inject(FaultRule::new(Op::Create).on_paths_ending_with(".seg"));
    assert!(store.flush().is_err());
    drop(store);
    reopen_and_check(&fs, &model, "after the failed flushes");
}

/// A store directory whose recovery has everything to do: segments, WAL files to replay, a
/// torn tail to cut and a leftover temp manifest to remove. Copy it with
/// `CrashMode::KeepWritten`: the torn tail was never synced.
fn messy_directory() -> (FaultFs, Model) {
    let mut rng = StdRng::seed_from_u64(11);
    let fs = FaultFs::new();
    let store = open(&fs, "setup");
    let mut model = Model::default();
    warm_up(&store, &mut model, &mut rng, 150, "setup");
    store.flush().unwrap_or_else(|e| panic!("setup flush: {e}"));
    warm_up(&store, &mut model, &mut rng, 30, "setup");
    fs.inject(
        FaultRule::new(Op::Write)
            .on_paths_ending_with(".wal")
            .times(1)
            .torn(),
    );
    let call = random_call(&mut rng, &model, "setup torn");
    assert!(send(&store, &call).is_err());
    drop(store);
    let tmp = Path::new(DIR).join("MANIFEST.tmp");
    let mut f = fs.create(&tmp).unwrap_or_else(|e| panic!("setup tmp: {e}"));
    f.write_all(b"half a manifest")
        .and_then(|()| f.sync())
        .and_then(|()| fs.sync_dir(Path::new(DIR)))
        .unwrap_or_else(|e| panic!("setup tmp: {e}"));
    (fs, model)
}

#[test]
fn errors_during_recovery_fail_the_open_and_destroy_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let (template, model) = messy_directory();
    let clean = template.crash_copy(CrashMode::KeepWritten);
    let store = open(&clean, "clean open");
    // Counted right after the open, so it may include a few operations of the first flush.
    let ops_in_open: u64 = ALL_OPS.iter().map(|&op| clean.op_count(op)).sum();
    check_recovered(&store, &model, "clean open");
    drop(store);
    assert!(ops_in_open > 10, "{ops_in_open}");
    for after in 0..ops_in_open {
        for error in [Injected::NoSpace, Injected::Io] {
            let ctx = format!("open failing after {after} operations ({error:?})");
            let fs = template.crash_copy(CrashMode::KeepWritten);
            fs.inject(FaultRule::any_of(ALL_OPS).after(after).with_error(error));
            match Store::open_with(DIR, options(&fs)) {
                Err(Error::Io { source, .. }) => {
                    assert_eq!(source.raw_os_error(), Some(os_code(error)), "{ctx}");
                }
                // The fault landed in the first flush, after the open.
                Ok(store) => drop(store),
                Err(e) => panic!("{ctx}: unexpected error: {e}"),
            }
            reopen_and_check(&fs, &model, &ctx);
        }
    }
}

/// A torn WAL write poisons the store; its close must leave the log as the failure left it,
/// for the next open to judge. A reused log file is normally cut to its records when the
/// store closes: after a poison that would also cut the torn record, and the open would no
/// longer see (or report) it.
#[test]
fn a_poisoned_store_leaves_its_reused_log_for_recovery_to_judge() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let mut rng = StdRng::seed_from_u64(5);
    let fs = FaultFs::new();
    let store = open(&fs, "setup");
    let mut model = Model::default();
    // Until a flush starts its new log in a reused file (the flushes before retire some).
    let mut rounds = 0;
    loop {
        warm_up(&store, &mut model, &mut rng, 20, "setup");
        let before = store.stats().wal_files_recycled;
        store.flush().unwrap_or_else(|e| panic!("setup flush: {e}"));
        if store.stats().wal_files_recycled > before {
            break;
        }
        rounds += 1;
        assert!(rounds < 50, "no log was reused");
    }
    warm_up(&store, &mut model, &mut rng, 3, "reused log");
    fs.inject(
        FaultRule::new(Op::Write)
            .on_paths_ending_with(".wal")
            .times(1)
            .torn(),
    );
    let call = random_call(&mut rng, &model, "torn");
    assert!(send(&store, &call).is_err());
    model.failed.push(call);
    drop(store);
    // The open must meet the torn record and cut it: failing that cut fails the open.
    let failing = fs.crash_copy(CrashMode::KeepWritten);
    failing.inject(FaultRule::new(Op::Truncate).on_paths_ending_with(".wal"));
    match Store::open_with(DIR, options(&failing)) {
        Err(Error::Io { path, .. }) => {
            assert!(path.to_string_lossy().ends_with(".wal"), "{path:?}");
        }
        other => panic!("the torn record was gone before the open: {other:?}"),
    }
    reopen_and_check(&fs, &model, "after the poison");
}

#[test]
fn read_errors_on_open_name_the_file() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let (template, model) = messy_directory();
    for (op, suffix) in [
        (Op::Read, "MANIFEST"),
        (Op::Read, ".wal"),
        (Op::Open, ".seg"),
        (Op::Lock, "LOCK"),
        (Op::Truncate, ".wal"),
        (Op::Remove, "MANIFEST.tmp"),
    ] {
        let ctx = format!("{op:?} on {suffix}");
        let fs = template.crash_copy(CrashMode::KeepWritten);
        fs.inject(FaultRule::new(op).on_paths_ending_with(suffix));
        match Store::open_with(DIR, options(&fs)) {
            Err(Error::Io { path, source }) => {
                assert!(path.to_string_lossy().ends_with(suffix), "{ctx}: {path:?}");
                assert_eq!(source.raw_os_error(), Some(5), "{ctx}");
            }
            other => panic!("{ctx}: expected an I/O error, got {other:?}"),
        }
        reopen_and_check(&fs, &model, &ctx);
    }
}

/// In `Buffered` durability the background WAL sync poisons the store when it fails, but an
/// explicit `Store::sync` that fails does not: writes go on, and a later sync that succeeds
/// says nothing about the pages the failed one lost (Linux drops them after reporting EIO).
#[test]
fn a_failed_explicit_sync_poisons_the_store() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let fs = FaultFs::new();
    let opts = Options {
        durability: chatstore::Durability::Buffered {
            interval: std::time::Duration::from_secs(3600),
        },
        ..options(&fs)
    };
    let store = Store::open_with(DIR, opts).unwrap_or_else(|e| panic!("open: {e}"));
    store
        .append(ConversationId(1), NewMessage::text(UserId(1), "buffered"))
        .unwrap_or_else(|e| panic!("append: {e}"));
    fs.inject(
        FaultRule::new(Op::Sync)
            .on_paths_ending_with(".wal")
            .times(1),
    );
    assert!(store.sync().is_err());
    let r = store.append(ConversationId(1), NewMessage::text(UserId(1), "next"));
    assert!(
        matches!(r, Err(Error::Poisoned(_))),
        "append after a failed sync: {r:?}"
    );
}

/// A closed store with several level-0 segments and nothing left in its WAL, so that opening it
/// starts no background work and `Store::compact` does all the I/O that follows.
fn store_ready_to_compact() -> (FaultFs, Model) {
    let mut rng = StdRng::seed_from_u64(13);
    let fs = FaultFs::new();
    let store = open(&fs, "setup");
    let mut model = Model::default();
    for round in 0..5 {
        warm_up(&store, &mut model, &mut rng, 25, &format!("setup {round}"));
        store.flush().unwrap_or_else(|e| panic!("setup flush: {e}"));
    }
    store.close().unwrap_or_else(|e| panic!("setup close: {e}"));
    (fs, model)
}

fn total_ops(fs: &FaultFs) -> u64 {
    ALL_OPS.iter().map(|&op| fs.op_count(op)).sum()
}

/// A one-off fault at each operation of a compaction in turn. Whatever the compaction got to,
/// everything is still there: right away, after a crash right after the failure, and after a
/// reopen and a power cut. A failure before the manifest update leaves the store writable (the
/// inputs are intact) and a retry succeeds; a failed manifest update poisons the store, since
/// the manifest on disk may name either set of segments.
#[test]
fn a_failed_compaction_step_loses_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let (template, model) = store_ready_to_compact();
    let clean = template.crash_copy(CrashMode::KeepWritten);
    let store = open(&clean, "clean compaction");
    let before = total_ops(&clean);
    store
        .compact()
        .unwrap_or_else(|e| panic!("clean compaction: {e}"));
    let ops_in_compaction = total_ops(&clean) - before;
    assert!(store.stats().compactions > 0);
    drop(store);
    for after in 0..ops_in_compaction {
        let ctx = format!("compaction failing once after {after} operations");
        let fs = template.crash_copy(CrashMode::KeepWritten);
        let store = open(&fs, &ctx);
        fs.inject(
            FaultRule::any_of(ALL_OPS)
                .after(after)
                .times(1)
                .with_error(Injected::NoSpace),
        );
        match store.compact() {
            Ok(()) | Err(Error::Io { .. }) => {}
            Err(e) => panic!("{ctx}: unexpected error: {e}"),
        }
        assert_eq!(
            read_all(&store, &ctx),
            model.acked,
            "{ctx}: reads after the failure"
        );
        // The process could die right here, before anything repairs the damage.
        let crashed = fs.crash_copy(CrashMode::KeepWritten);
        reopen_and_check(
            &crashed,
            &model,
            &format!("{ctx}, crashed after the failure"),
        );
        fs.clear_faults();
        let mut model = model.clone();
        match store.append(ConversationId(1), NewMessage::text(UserId(1), "after")) {
            Ok(got) => {
                model.ack(vec![got]);
                store
                    .compact()
                    .unwrap_or_else(|e| panic!("{ctx}: retried compaction: {e}"));
                assert_eq!(
                    read_all(&store, &ctx),
                    model.acked,
                    "{ctx}: after the retry"
                );
            }
            Err(Error::Poisoned(_)) => {}
            Err(e) => panic!("{ctx}: append after the failure: {e}"),
        }
        // Closing reports the earlier failure or not, but must not panic.
        let _ = store.close();
        reopen_and_check(&fs, &model, &ctx);
    }
}

/// The case that once lost data: the manifest naming the compaction's outputs is renamed into
/// place, the directory sync after it fails, and the compaction must not delete its outputs as
/// if the manifest had never changed (the next open would find a manifest naming deleted
/// segments).
#[test]
fn a_failed_directory_sync_after_the_compaction_manifest_rename_keeps_the_store_openable() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let (fs, model) = store_ready_to_compact();
    let store = open(&fs, "open");
    // The compaction syncs the directory once after writing its outputs, then once after
    // renaming the new manifest into place: fail the second.
    fs.inject(FaultRule::new(Op::SyncDir).after(1).times(1));
    assert!(store.compact().is_err());
    store.close().unwrap_or_else(|e| panic!("close: {e}"));
    reopen_and_check(&fs, &model, "after the failed compaction");
}

/// Opening a store syncs no directory (the new WAL's name is made durable by the first sync of
/// the log), and a write acknowledged as durable right after the open survives a power cut:
/// the directory sync it needs happens before the acknowledgement, and failing it fails the
/// write.
#[test]
fn opening_syncs_no_directory_and_the_first_durable_write_does() {
    let _watchdog = watchdog::arm(Duration::from_secs(60));
    let fs = FaultFs::new();
    let conv = ConversationId(1);
    {
        let store = open(&fs, "first open");
        store
            .append(conv, NewMessage::text(UserId(1), "before"))
            .unwrap_or_else(|e| panic!("append: {e}"));
        store.flush().unwrap_or_else(|e| panic!("flush: {e}"));
        store.close().unwrap_or_else(|e| panic!("close: {e}"));
    }
    let dirs = fs.op_count(Op::SyncDir);
    let store = open(&fs, "reopen");
    assert_eq!(
        fs.op_count(Op::SyncDir),
        dirs,
        "the open synced a directory"
    );
    assert_eq!(store.latest(conv, 10).map(|m| m.len()).ok(), Some(1));
    assert_eq!(fs.op_count(Op::SyncDir), dirs, "a read synced a directory");
    // The first durable write syncs the directory; when that fails, so does the write.
    fs.inject(FaultRule::new(Op::SyncDir).times(1));
    assert!(store
        .append(conv, NewMessage::text(UserId(1), "refused"))
        .is_err());
    drop(store);
    let fs = fs.power_cut();
    let store = open(&fs, "after the failed write");
    let before = fs.op_count(Op::SyncDir);
    let acked = store
        .append(conv, NewMessage::text(UserId(1), "after"))
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert!(
        fs.op_count(Op::SyncDir) > before,
        "the write synced the directory"
    );
    let fs = fs.power_cut();
    let store = open(&fs, "after the power cut");
    let got = store
        .latest(conv, 10)
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(got.last(), Some(&acked), "the acknowledged write survived");
    store.close().unwrap_or_else(|e| panic!("close: {e}"));
}
