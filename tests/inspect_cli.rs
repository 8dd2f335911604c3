//! The `chatstore-inspect` tool: exit codes, `--json` output, and its commands end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chatstore::{ConversationId, MessageId, NewMessage, Options, Store, UserId};
use serde_json::Value;

/// The binary Cargo built for this test run (the dev-dependency on the crate itself turns on
/// the `cli` feature the binary requires).
fn tool() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chatstore-inspect"))
}

fn run(args: &[&str]) -> Output {
    Command::new(tool())
        .args(args)
        .output()
        .expect("run chatstore-inspect")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A segment file holding messages (compaction also writes state-only segments).
fn message_segment(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .find(|p| {
            let out = run(&["dump-segment", p.to_str().unwrap(), "--json"]);
            json_of(&out)["messages"].as_u64().unwrap_or(0) > 0
        })
        .expect("a segment with messages")
}

fn build_store(dir: &Path) {
    let store = Store::open_with(
        dir,
        Options {
            memtable_bytes: 16 << 10,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..600u64 {
        let conv = ConversationId(i % 3 + 1);
        let mut m = NewMessage::text(UserId(i % 5), &format!("message {i} ünïcode ✓"));
        if i % 9 == 0 {
            m = m
                .with_attachment("https://assets/x.png")
                .with_mentions(vec![UserId(3)]);
        }
        store.append(conv, m).unwrap();
    }
    store
        .edit(ConversationId(1), MessageId(2), "edited")
        .unwrap();
    store.flush().unwrap();
    store
        .append(
            ConversationId(1),
            NewMessage::new(UserId(1), vec![0xff, 0x00, 0xfe]),
        )
        .unwrap();
}

#[test]
fn stats_and_dump_segment_in_json() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    let out = run(&["stats", dir.path().to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = json_of(&out);
    assert!(v["segments"].as_u64().unwrap() >= 1);
    assert_eq!(v["segment_messages"].as_u64().unwrap(), 600);
    let seg = message_segment(dir.path());
    let out = run(&["dump-segment", seg.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v = json_of(&out);
    assert!(!v["blocks"].as_array().unwrap().is_empty());
    assert!(v["messages"].as_u64().unwrap() > 0);
    let human = run(&["stats", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("segments"));
}

#[test]
fn verify_exit_codes_follow_damage() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    let d = dir.path().to_str().unwrap();
    let out = run(&["verify", d, "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_of(&out)["ok"], Value::Bool(true));

    let seg = message_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 0x01; // inside the first message block, which starts at byte 16
    std::fs::write(&seg, bytes).unwrap();
    let out = run(&["verify", d, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["ok"], Value::Bool(false));
    let p = &v["problems"][0];
    assert_eq!(p["file"].as_str().unwrap(), seg.to_str().unwrap());
    assert!(p["offset"].as_u64().is_some());
}

#[test]
fn bad_paths_and_usage_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let out = run(&["stats", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a chatstore directory"));
    let out = run(&["verify", missing.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(json_of(&out)["error"].is_string());
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&[]).status.code(), Some(2));
}

#[test]
fn works_beside_a_live_writer_and_round_trips_exports() {
    let dir = tempfile::tempdir().unwrap();
    build_store(dir.path());
    let live = Store::open(dir.path()).unwrap();
    let d = dir.path().to_str().unwrap();
    let out = run(&["stats", d, "--json"]);
    assert!(
        out.status.success(),
        "read-only open beside the writer: {out:?}"
    );

    let cp = dir.path().join("copy");
    let out = run(&["checkpoint", d, cp.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(run(&["verify", cp.to_str().unwrap()]).status.success());

    let first = run(&["export", d, "1"]);
    assert!(first.status.success(), "{first:?}");
    let lines = String::from_utf8_lossy(&first.stdout).lines().count();
    assert_eq!(lines as u64, live.last_id(ConversationId(1)).unwrap().0);
    drop(live);
    let file = dir.path().join("conv1.jsonl");
    std::fs::write(&file, &first.stdout).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("store");
    let out = run(&[
        "import",
        target.to_str().unwrap(),
        file.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(json_of(&out)["imported"].as_u64().unwrap() as usize, lines);
    let second = run(&["export", target.to_str().unwrap(), "1"]);
    assert_eq!(
        first.stdout, second.stdout,
        "export -> import -> export is byte for byte"
    );
}
