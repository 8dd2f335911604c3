//! A background thread that dies must not leave writers waiting: the store is poisoned, and
//! writers get `Error::Poisoned`.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use chatstore::fs::fault::{FaultFs, FaultRule, Injected, Op};
use chatstore::{ConversationId, Error, NewMessage, Options, Store, UserId};

const DIR: &str = "/db";

fn options(fs: &FaultFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        memtable_bytes: 4 << 10,
        max_frozen_memtables: 1,
        l0_compaction_trigger: 2,
        ..Options::default()
    }
}

/// Appends until a write fails; returns the acknowledged count and the error.
fn append_until_refused(store: &Store, limit: u64) -> (u64, Option<Error>) {
    for i in 0..limit {
        let text = format!("message {i} {}", "x".repeat(200));
        let m = NewMessage::text(UserId(1), &text);
        if let Err(e) = store.append(ConversationId(i % 7), m) {
            return (i, Some(e));
        }
    }
    (limit, None)
}

#[test]
fn a_panicking_flush_poisons_the_store_and_writers_get_an_error_instead_of_waiting() {
    let _watchdog = watchdog::arm(Duration::from_secs(60));
    let fs = FaultFs::new();
    fs.inject(
        FaultRule::new(Op::Create)
            .on_paths_ending_with(".seg")
            .with_error(Injected::Panic),
    );
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    // Each frozen memtable needs the flush; with it dead, the second freeze would wait forever.
    let (acked, err) = append_until_refused(&store, 100_000);
    match err {
        Some(Error::Poisoned(why)) => {
            assert!(why.contains("flush thread panicked"), "{why}");
        }
        other => panic!("expected a poisoned store after {acked} writes, got {other:?}"),
    }
    assert!(fs.injected_count() >= 1);
    // Readers keep working, and nothing acknowledged is lost across a reopen.
    assert!(store.latest(ConversationId(0), 1).is_ok());
    drop(store);
    fs.clear_faults();
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    let stored: u64 = (0..7)
        .map(|c| store.last_id(ConversationId(c)).unwrap().0)
        .sum();
    assert_eq!(stored, acked);
}

#[test]
fn a_panicking_compaction_poisons_the_store() {
    let _watchdog = watchdog::arm(Duration::from_secs(60));
    let fs = FaultFs::new();
    // The first two segments are flushes; the third is the compaction merging them.
    fs.inject(
        FaultRule::new(Op::Create)
            .on_paths_ending_with(".seg")
            .after(2)
            .with_error(Injected::Panic),
    );
    let opts = Options {
        memtable_bytes: 1 << 20,
        ..options(&fs)
    };
    let store = Store::open_with(DIR, opts).unwrap();
    for round in 0..2 {
        let (acked, err) = append_until_refused(&store, 50);
        assert_eq!((acked, err.is_none()), (50, true), "round {round}");
        store.flush().unwrap();
    }
    let why = loop {
        match store.append(ConversationId(1), NewMessage::text(UserId(1), "after")) {
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(Error::Poisoned(why)) => break why,
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert!(why.contains("compact thread panicked"), "{why}");
}

#[test]
fn the_test_suite_aborts_on_any_unexpected_background_panic() {
    // Set by .cargo/config.toml for every test process: a real (not injected) panic in a
    // background thread then aborts the run even if the test's own assertions pass.
    assert_eq!(
        std::env::var(chatstore::ABORT_ON_PANIC_VAR).as_deref(),
        Ok("1"),
        "tests must run with {}=1",
        chatstore::ABORT_ON_PANIC_VAR
    );
}

#[test]
fn a_panic_inside_a_group_commit_fails_its_writers_instead_of_hanging_them() {
    let _watchdog = watchdog::arm(Duration::from_secs(60));
    let fs = FaultFs::new();
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    store
        .append(ConversationId(1), NewMessage::text(UserId(1), "before"))
        .unwrap();
    fs.inject(
        FaultRule::new(Op::Write)
            .on_paths_ending_with(".wal")
            .times(1)
            .with_error(Injected::Panic),
    );
    // Concurrent writers: whoever leads the group that panics, all of them get an answer.
    let writers: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                store.append(ConversationId(2), NewMessage::text(UserId(i), "during"))
            })
        })
        .collect();
    let results: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("a writer thread panicked"))
        .collect();
    assert!(
        results.iter().any(
            |r| matches!(r, Err(Error::Poisoned(why)) if why.contains("commit group panicked"))
        ),
        "{results:?}"
    );
    assert!(matches!(
        store.append(ConversationId(1), NewMessage::text(UserId(1), "after")),
        Err(Error::Poisoned(_))
    ));
    drop(store);
    fs.clear_faults();
    let store = Store::open_with(DIR, options(&fs)).unwrap();
    let acked = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert_eq!(store.last_id(ConversationId(1)).unwrap().0, 1);
    assert_eq!(store.last_id(ConversationId(2)).unwrap().0, acked);
}
