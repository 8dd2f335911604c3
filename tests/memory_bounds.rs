//! Memory the engine holds stays within what its options promise while background work runs.

use std::time::Duration;

use chatstore::{ConversationId, Durability, NewMessage, Options, Store, UserId};

/// A long compaction must not keep flushed memtables alive: the memtables held at any moment
/// are the active one, the frozen ones waiting for flush, and what a short read holds.
#[test]
fn memtables_held_stay_within_the_configured_bound_during_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let memtable_bytes = 256 << 10;
    let max_frozen = 2;
    let store = Store::open_with(
        dir.path(),
        Options {
            durability: Durability::Buffered {
                interval: Duration::from_millis(100),
            },
            memtable_bytes,
            max_frozen_memtables: max_frozen,
            l0_compaction_trigger: 2,
            level_base_bytes: 64 << 20,
            ..Options::default()
        },
    )
    .unwrap();
    let text =
        "a message of a hundred bytes or so, words and more words, to be stored and read back.";
    let batch_bytes = 100 * (text.len() + 512);
    // Active + frozen, each at most one commit over its limit, plus one flushed memtable a
    // short read may still hold (the low-priority compaction thread reads retention settings
    // from the current version and can be preempted while it does). A compaction that kept
    // flushed memtables alive for its whole run would hold several.
    let bound = ((2 + max_frozen) * (memtable_bytes + batch_bytes)) as u64;
    let mut worst = 0;
    let mut compactions_seen = false;
    for round in 0..1500u64 {
        let batch: Vec<_> = (0..100u64)
            .map(|i| {
                let conv = ConversationId((round * 100 + i) % 300 + 1);
                (conv, NewMessage::text(UserId(i % 7 + 1), text))
            })
            .collect();
        store.append_batch(batch).unwrap();
        let s = store.stats();
        worst = worst.max(s.memtable_bytes_held);
        compactions_seen |= s.compactions > 0;
    }
    assert!(compactions_seen, "the workload must run compactions");
    assert!(
        worst <= bound,
        "memtables held peaked at {worst} bytes, over the bound of {bound}"
    );
    let s = store.stats();
    assert!(s.memtable_bytes_held >= s.memtable_bytes + s.frozen_memtable_bytes);
    store.close().unwrap();
}
