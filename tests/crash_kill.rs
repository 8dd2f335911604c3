//! Real-process crash test on the real file system: a child process appends in
//! `Durability::Sync` and reports every acknowledged message on stdout; the parent kills it with
//! SIGKILL at a random moment, reopens the store and checks that every acknowledged message is
//! there with its content, that ids are gapless and that nothing is damaged. The rounds run on
//! the same directory, so each child also recovers from the previous kill (and may itself be
//! killed while recovering).
//!
//! The child is this test binary run again with `--exact crash_child --ignored`; it does
//! nothing unless `CHATSTORE_CRASH_CHILD_DIR` is set.

#[path = "common/watchdog.rs"]
mod watchdog;

use std::time::Duration;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use chatstore::{ConversationId, Message, NewMessage, Options, Store, UserId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHILD_DIR_ENV: &str = "CHATSTORE_CRASH_CHILD_DIR";
const CHILD_ROUND_ENV: &str = "CHATSTORE_CRASH_CHILD_ROUND";
const CONVS: u64 = 6;
const WRITERS: u64 = 3;
const ROUNDS: u64 = 30;

fn options() -> Options {
    Options {
        memtable_bytes: 8 << 10,
        block_bytes: 1 << 10,
        l0_compaction_trigger: 3,
        level_base_bytes: 16 << 10,
        target_segment_bytes: 8 << 10,
        ..Options::default()
    }
}

/// FNV-1a: enough to tell contents apart, and the same in both processes.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Content that carries its own checksum, so even messages the parent never heard about (the
/// child died before reporting them) can be checked for damage.
fn content(round: u64, writer: u64, seq: u64, rng: &mut StdRng) -> Vec<u8> {
    let filler: String = (0..rng.gen_range(0..300))
        .map(|_| char::from(b'a' + rng.gen_range(0..26)))
        .collect();
    let body = format!("r{round} w{writer} s{seq} {filler}");
    format!("{body}|{:016x}", fnv(body.as_bytes())).into_bytes()
}

/// Checks a content's own checksum and returns the round that wrote it.
fn verify_content(c: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(c).ok()?;
    let (body, sum) = text.rsplit_once('|')?;
    if u64::from_str_radix(sum, 16).ok()? != fnv(body.as_bytes()) {
        return None;
    }
    body.strip_prefix('r')?.split(' ').next()?.parse().ok()
}

/// The child: appends from several threads (so group commit and WAL switches overlap) and
/// prints `ACK <conversation> <id> <content hash>` after each acknowledged message.
#[test]
#[ignore = "child process of acknowledged_messages_survive_sigkill; the parent starts it"]
fn crash_child() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let store = Store::open_with(&dir, options()).unwrap_or_else(|e| panic!("child open: {e}"));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let out = Arc::clone(&out);
            thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(round * 100 + w);
                // Bounded, so an orphaned child cannot run forever.
                for seq in 0..100_000 {
                    let n = if rng.gen_ratio(1, 10) { 3 } else { 1 };
                    let batch = (0..n)
                        .map(|i| {
                            let conv = ConversationId(rng.gen_range(1..=CONVS));
                            let c = content(round, w, seq * 10 + i, &mut rng);
                            (conv, NewMessage::new(UserId(w + 1), c))
                        })
                        .collect();
                    let got = store
                        .append_batch(batch)
                        .unwrap_or_else(|e| panic!("child append: {e}"));
                    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                    if w == 0 && seq % 20 == 0 {
                        // How many logs were reused files so far: the parent checks that
                        // kills also met reused logs.
                        let reused = store.stats().wal_files_recycled;
                        let _ = writeln!(out, "REUSED {reused}");
                    }
                    for m in got {
                        let line = format!("ACK {} {} {}\n", m.conversation, m.id, fnv(&m.content));
                        // The parent is gone if stdout is: stop.
                        if out
                            .write_all(line.as_bytes())
                            .and_then(|()| out.flush())
                            .is_err()
                        {
                            std::process::exit(0);
                        }
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap_or_else(|_| panic!("child writer panicked"));
    }
}

/// Runs one child until it has acknowledged `kill_after` messages, kills it and returns the
/// acknowledgements it printed, (conversation, id, content hash), and the number of logs it
/// said were reused files.
fn run_child(dir: &Path, round: u64, kill_after: usize) -> (Vec<(u64, u64, u64)>, u64) {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut child = Command::new(exe)
        .args(["--exact", "crash_child", "--nocapture", "--ignored"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn child: {e}"));
    let mut stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let stderr_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut acks = Vec::new();
    let mut reused = 0;
    let mut killed = false;
    if kill_after == 0 {
        child.kill().unwrap_or_else(|e| panic!("kill: {e}"));
        killed = true;
    }
    // Lines still in the pipe after the kill were printed after their acknowledgement, so they
    // count too: read to the end.
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_else(|e| panic!("child stdout: {e}"));
        if let Some(n) = line.strip_prefix("REUSED ") {
            reused = n.parse().unwrap_or_else(|_| panic!("bad line {line:?}"));
            continue;
        }
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let f: Vec<u64> = rest
            .split(' ')
            .map(|x| x.parse().unwrap_or_else(|_| panic!("bad line {line:?}")))
            .collect();
        assert_eq!(f.len(), 3, "bad line {line:?}");
        acks.push((f[0], f[1], f[2]));
        if !killed && acks.len() >= kill_after {
            child.kill().unwrap_or_else(|e| panic!("kill: {e}"));
            killed = true;
        }
    }
    let status = child.wait().unwrap_or_else(|e| panic!("wait: {e}"));
    let stderr = stderr_reader.join().unwrap_or_default();
    assert!(
        killed,
        "round {round}: the child stopped by itself ({status}) after {} acks:\n{stderr}",
        acks.len()
    );
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child was not killed but ended with {status}:\n{stderr}"
        );
    }
    (acks, reused)
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let _watchdog = watchdog::arm(Duration::from_secs(300));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut rng = StdRng::seed_from_u64(0x5eed);
    // Content hashes of every message known to be stored, per conversation (index = id - 1).
    let mut model: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut total_acks = 0;
    let mut reused_logs = 0;
    for round in 0..ROUNDS {
        let kill_after = if rng.gen_ratio(1, 8) {
            0
        } else {
            rng.gen_range(1..800)
        };
        let (acks, reused) = run_child(dir.path(), round, kill_after);
        total_acks += acks.len();
        reused_logs += reused;

        let ctx = format!("round {round} (killed after {} acks)", acks.len());
        let store = Store::open_with(dir.path(), options())
            .unwrap_or_else(|e| panic!("{ctx}: reopen after SIGKILL: {e}"));
        let mut now: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
        for c in 1..=CONVS {
            let msgs = store
                .latest(ConversationId(c), usize::MAX)
                .unwrap_or_else(|e| panic!("{ctx}: read conversation {c}: {e}"));
            let ids: Vec<u64> = msgs.iter().map(|m| m.id.0).collect();
            assert_eq!(
                ids,
                (1..=msgs.len() as u64).collect::<Vec<_>>(),
                "{ctx}: conversation {c} ids"
            );
            let old = model.get(&c).map_or(&[][..], Vec::as_slice);
            assert!(msgs.len() >= old.len(), "{ctx}: conversation {c} shrank");
            for (m, h) in msgs.iter().zip(old) {
                assert_eq!(fnv(&m.content), *h, "{ctx}: conversation {c} id {}", m.id);
            }
            for m in &msgs[old.len()..] {
                // Written in this round, acknowledged or not, and intact.
                assert_eq!(
                    verify_content(&m.content),
                    Some(round),
                    "{ctx}: conversation {c} id {} is damaged or foreign",
                    m.id
                );
            }
            now.insert(c, msgs);
        }
        for &(c, id, h) in &acks {
            let m = now
                .get(&c)
                .and_then(|msgs| msgs.get(id as usize - 1))
                .unwrap_or_else(|| panic!("{ctx}: acknowledged message {c}/{id} is missing"));
            assert_eq!(
                fnv(&m.content),
                h,
                "{ctx}: acknowledged message {c}/{id} differs"
            );
        }
        model = now
            .into_iter()
            .map(|(c, msgs)| (c, msgs.iter().map(|m| fnv(&m.content)).collect()))
            .collect();
        store
            .close()
            .unwrap_or_else(|e| panic!("{ctx}: close: {e}"));
    }
    assert!(total_acks > 0);
    assert!(reused_logs > 0, "no kill met a reused WAL file");
    let segments = std::fs::read_dir(dir.path())
        .unwrap_or_else(|e| panic!("read_dir: {e}"))
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        })
        .count();
    assert!(
        segments > 0,
        "no flush happened: the kills never met a segment"
    );
}
