//! Kill a process in the middle of compactions (and flushes and appends), many times over, and
//! check that the store reopens with every acknowledged message, nothing duplicated, and every
//! file healthy.
//!
//! The test re-runs its own binary as the child (`child_writer`, ignored unless asked for).

#[path = "common/watchdog.rs"]
mod watchdog;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatstore::{ConversationId, NewMessage, Options, Store, UserId};

const CHILD_ENV: &str = "CHATSTORE_COMPACTION_CRASH_DIR";

fn options() -> Options {
    Options {
        memtable_bytes: 8 << 10,
        block_bytes: 1 << 10,
        l0_compaction_trigger: 2,
        level_base_bytes: 32 << 10,
        target_segment_bytes: 8 << 10,
        ..Options::default()
    }
}

fn content(conv: u64, id: u64) -> String {
    format!("c{conv}-m{id}-{}", "z".repeat((id % 40) as usize))
}

/// The child: appends forever (durably), printing each acknowledged (conversation, id), while
/// another thread forces full compactions.
#[test]
#[ignore = "run as a child process by compaction_crash_loses_nothing"]
fn child_writer() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open_with(&dir, options()).expect("child open");
    let compactor = store.clone();
    std::thread::spawn(move || loop {
        let _ = compactor.compact();
        std::thread::sleep(Duration::from_millis(5));
    });
    let mut n = 0u64;
    loop {
        let conv = n % 5;
        let next = store.last_id(ConversationId(conv)).unwrap().0 + 1;
        let m = store
            .append(
                ConversationId(conv),
                NewMessage::text(UserId(conv), &content(conv, next)),
            )
            .expect("child append");
        println!("{} {}", conv, m.id.0);
        n += 1;
    }
}

fn run_child_once(dir: &Path, run_for: Duration) -> Vec<(u64, u64)> {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut parts = line.split_whitespace();
            if let (Some(c), Some(i)) = (parts.next(), parts.next()) {
                if let (Ok(c), Ok(i)) = (c.parse(), i.parse()) {
                    acked.push((c, i));
                }
            }
        }
        acked
    });
    let start = Instant::now();
    while start.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("reader thread")
}

#[test]
fn compaction_crash_loses_nothing() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    // Vary how long each child lives so kills land at different points of its work.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let run_for = Duration::from_millis(150 + seed % 400);
        for (conv, id) in run_child_once(dir.path(), run_for) {
            let e = acked.entry(conv).or_insert(0);
            *e = (*e).max(id);
        }
        let store = Store::open_with(dir.path(), options())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        for (&conv, &last_acked) in &acked {
            let msgs = store
                .latest(ConversationId(conv), usize::MAX)
                .expect("read");
            assert!(
                msgs.len() as u64 >= last_acked,
                "round {round}: conversation {conv} has {} messages, {last_acked} acknowledged",
                msgs.len()
            );
            for (i, m) in msgs.iter().enumerate() {
                let id = i as u64 + 1;
                assert_eq!(m.id.0, id, "round {round}: gap or duplicate in {conv}");
                assert_eq!(m.text(), Some(content(conv, id).as_str()), "round {round}");
            }
        }
        let report = store.verify().expect("verify");
        assert!(report.is_ok(), "round {round}: {:?}", report.problems);
    }
    assert!(
        acked.values().sum::<u64>() > 100,
        "the child wrote too little to test anything"
    );
}
