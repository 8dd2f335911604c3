//! Writers, readers, flushes and compactions at once: every read must be a consistent prefix
//! of its conversation (ids 1..=n without a gap, each with the content its writer gave it),
//! and no reader ever sees a conversation shrink.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatstore::{ConversationId, MessageId, NewMessage, Options, Store, UserId};

const CONVS: u64 = 8;

fn content(conv: u64, id: u64) -> String {
    format!("{conv}/{id}/{}", "x".repeat((id % 50) as usize))
}

#[test]
fn readers_see_consistent_prefixes_while_everything_runs() {
    let _watchdog = watchdog::arm(Duration::from_secs(180));
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        memtable_bytes: 16 << 10,
        block_bytes: 1 << 10,
        l0_compaction_trigger: 2,
        level_base_bytes: 64 << 10,
        target_segment_bytes: 16 << 10,
        ..Options::default()
    };
    let store = Store::open_with(dir.path(), opts).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // One writer per conversation pair, so each writer knows the ids it will get.
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let store = store.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut next = [1u64; 2];
                while !stop.load(Ordering::Relaxed) {
                    for (k, n) in next.iter_mut().enumerate() {
                        let conv = w * 2 + k as u64;
                        let m = store
                            .append(
                                ConversationId(conv),
                                NewMessage::text(UserId(w), &content(conv, *n)),
                            )
                            .unwrap();
                        assert_eq!(m.id, MessageId(*n));
                        *n += 1;
                    }
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..3u64)
        .map(|r| {
            let store = store.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = [0u64; CONVS as usize];
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for conv in 0..CONVS {
                        let msgs = if (reads + r).is_multiple_of(3) {
                            store.latest(ConversationId(conv), usize::MAX).unwrap()
                        } else {
                            store.latest(ConversationId(conv), 30).unwrap()
                        };
                        reads += 1;
                        let Some(last) = msgs.last() else { continue };
                        assert!(last.id.0 >= seen[conv as usize], "conversation shrank");
                        seen[conv as usize] = last.id.0;
                        let first = msgs[0].id.0;
                        for (i, m) in msgs.iter().enumerate() {
                            let id = first + i as u64;
                            assert_eq!(m.id.0, id, "gap in conversation {conv}");
                            assert_eq!(m.text(), Some(content(conv, id).as_str()));
                        }
                    }
                }
                reads
            })
        })
        .collect();
    let background = {
        let store = store.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if i % 4 == 3 {
                    store.compact().unwrap();
                } else {
                    store.flush().unwrap();
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    background.join().unwrap();
    assert!(reads > 100, "readers barely ran");
    let stats = store.stats();
    assert!(stats.flushes > 0 && stats.compactions > 0, "{stats:?}");
    assert!(store.verify().unwrap().is_ok());
}
