//! The commit-log seam: a leader whose commits go through an in-memory replicated log, two
//! followers that apply the log, random chat workloads and crashes of any of them. After each
//! step every store that has caught up holds the same state: the same messages (ids,
//! timestamps, edits), cursors, unread counts and log sequence number.

#[path = "common/chat_replica.rs"]
mod chat_replica;
#[path = "common/watchdog.rs"]
mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use chatstore::fs::fault::{CrashMode, FaultFs};
use chatstore::{
    ChatOptions, ChatStore, CommitLog, CommitRecord, Durability, Error, Options, UserId,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use chat_replica::{random_op, state, USERS};

/// A replicated log in memory: the records every acknowledged commit reached, in order. Like
/// a stream fenced by its expected last sequence, it refuses a record that does not continue
/// it.
#[derive(Debug, Default)]
struct MemoryLog {
    records: Mutex<Vec<(u64, Vec<u8>)>>,
}

impl CommitLog for MemoryLog {
    fn append(
        &self,
        records: &[CommitRecord<'_>],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut log = self.records.lock();
        for r in records {
            let expected = log.len() as u64 + 1;
            if r.lsn != expected {
                return Err(format!("record {} refused: the log expects {expected}", r.lsn).into());
            }
            log.push((r.lsn, r.body.to_vec()));
        }
        Ok(())
    }
}

impl MemoryLog {
    fn len(&self) -> u64 {
        self.records.lock().len() as u64
    }

    /// Applies every record after the store's last one; returns how many were applied.
    fn catch_up(&self, chat: &ChatStore) -> u64 {
        let records: Vec<(u64, Vec<u8>)> = {
            let log = self.records.lock();
            let from = chat.store().last_lsn() as usize;
            log.get(from..).map(<[_]>::to_vec).unwrap_or_default()
        };
        let mut applied = 0;
        for (lsn, body) in records {
            if chat.store().apply(lsn, &body).unwrap() {
                applied += 1;
            }
        }
        applied
    }
}

const DIR: &str = "/replica";

/// One store of the set: its file system (power cuts replace it) and the open store.
struct Node {
    fs: FaultFs,
    chat: Option<ChatStore>,
    leader: bool,
}

impl Node {
    fn options(&self, log: &Arc<MemoryLog>) -> Options {
        Options {
            fs: Arc::new(self.fs.clone()),
            // The log is the truth: the leader's own WAL needs no fsync per commit.
            durability: if self.leader {
                Durability::Buffered {
                    interval: Duration::from_millis(5),
                }
            } else {
                Durability::Sync
            },
            commit_log: self.leader.then(|| Arc::clone(log) as Arc<dyn CommitLog>),
            memtable_bytes: 8 << 10,
            l0_compaction_trigger: 2,
            level_base_bytes: 32 << 10,
            target_segment_bytes: 16 << 10,
            ..Options::default()
        }
    }

    /// Opens the store and catches up from the log; returns how many records it applied.
    fn open(&mut self, log: &Arc<MemoryLog>) -> u64 {
        let chat = ChatStore::open_with(DIR, self.options(log), ChatOptions::default())
            .unwrap_or_else(|e| panic!("open: {e}"));
        let applied = log.catch_up(&chat);
        self.chat = Some(chat);
        applied
    }

    fn chat(&self) -> &ChatStore {
        self.chat.as_ref().expect("open")
    }

    /// A power cut: only what reached the disk survives; then the store reopens and catches
    /// up from the log.
    fn crash(&mut self, log: &Arc<MemoryLog>, mode: CrashMode) -> u64 {
        let after = self.fs.power_cut_with(mode);
        self.chat = None;
        self.fs = after;
        self.open(log)
    }
}

#[test]
fn a_leader_and_two_followers_over_a_log_stay_equal_through_crashes() {
    let _watchdog = watchdog::arm(Duration::from_secs(240));
    // How many records crashed leaders got back from the log (their own WAL lost them).
    let mut leader_recovered = 0;
    let mut leader_crashes = 0;
    for seed in 0..6u64 {
        let mut rng = StdRng::seed_from_u64(9000 + seed);
        let log = Arc::new(MemoryLog::default());
        let mut nodes: Vec<Node> = (0..3)
            .map(|i| Node {
                fs: FaultFs::new(),
                chat: None,
                leader: i == 0,
            })
            .collect();
        for node in &mut nodes {
            node.open(&log);
        }
        let leader = nodes[0].chat();
        for u in 1..=USERS {
            leader.register_user(UserId(u)).unwrap();
        }
        let convs = vec![
            leader.direct(UserId(1), UserId(2)).unwrap(),
            leader.direct(UserId(2), UserId(3)).unwrap(),
            leader
                .create_group(UserId(1), &[UserId(2), UserId(3), UserId(4)])
                .unwrap(),
        ];
        let mut crashes = 0;
        for step in 0..400u64 {
            random_op(&mut rng, nodes[0].chat(), &convs, step);
            // Followers apply the log at their own pace.
            for node in &nodes[1..] {
                if rng.gen_ratio(1, 3) {
                    log.catch_up(node.chat());
                }
            }
            if rng.gen_ratio(1, 40) {
                let victim = rng.gen_range(0..3);
                let mode = if rng.gen_bool(0.5) {
                    CrashMode::LoseUnsynced
                } else {
                    CrashMode::Torn { seed: rng.gen() }
                };
                let recovered = nodes[victim].crash(&log, mode);
                if victim == 0 {
                    leader_crashes += 1;
                    leader_recovered += recovered;
                }
                crashes += 1;
            }
            if step % 20 == 19 {
                for node in &nodes[1..] {
                    log.catch_up(node.chat());
                }
                let want = state(nodes[0].chat(), &convs);
                assert_eq!(
                    want.lsn,
                    log.len(),
                    "seed {seed} step {step}: the leader's sequence"
                );
                for (i, node) in nodes.iter().enumerate().skip(1) {
                    assert_eq!(
                        state(node.chat(), &convs),
                        want,
                        "seed {seed} step {step}: follower {i} differs from the leader"
                    );
                }
            }
        }
        assert!(crashes > 0, "seed {seed}: no crash happened");
        assert!(log.len() > 100, "seed {seed}: only {} commits", log.len());
        for node in &nodes {
            assert!(node.chat().store().verify().unwrap().is_ok());
        }
    }
    assert!(leader_crashes > 0, "no leader crashed");
    assert!(
        leader_recovered > 0,
        "no crashed leader needed the log to recover ({leader_crashes} crashes)"
    );
}

#[test]
fn a_store_opened_from_a_checkpoint_continues_from_its_sequence() {
    let _watchdog = watchdog::arm(Duration::from_secs(120));
    let mut rng = StdRng::seed_from_u64(77);
    let log = Arc::new(MemoryLog::default());
    let mut leader = Node {
        fs: FaultFs::new(),
        chat: None,
        leader: true,
    };
    leader.open(&log);
    let chat = leader.chat();
    for u in 1..=USERS {
        chat.register_user(UserId(u)).unwrap();
    }
    let convs = vec![
        chat.direct(UserId(1), UserId(2)).unwrap(),
        chat.create_group(UserId(3), &[UserId(1), UserId(4)])
            .unwrap(),
    ];
    for step in 0..150 {
        random_op(&mut rng, chat, &convs, step);
    }
    let at = chat.store().checkpoint("/checkpoint").unwrap();
    assert_eq!(
        at,
        chat.store().last_lsn(),
        "a quiet store's checkpoint holds all of it"
    );
    for step in 150..300 {
        random_op(&mut rng, chat, &convs, step);
    }
    let backup = ChatStore::open_with(
        "/checkpoint",
        Options {
            fs: Arc::new(leader.fs.clone()),
            ..Options::default()
        },
        ChatOptions::default(),
    )
    .unwrap();
    assert_eq!(backup.store().last_lsn(), at);
    let applied = log.catch_up(&backup);
    assert_eq!(applied, log.len() - at);
    assert_eq!(state(&backup, &convs), state(chat, &convs));
    // Applying again is a no-op; a record past the next one is refused.
    assert_eq!(log.catch_up(&backup), 0);
    let (lsn, body) = log.records.lock()[0].clone();
    assert!(!backup.store().apply(lsn, &body).unwrap());
    assert!(matches!(
        backup.store().apply(log.len() + 2, &body),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_refused_commit_log_append_fails_the_write_and_poisons_the_store() {
    let log = Arc::new(MemoryLog::default());
    // Another writer got record 1 in first: this store's first commit is fenced off.
    log.records.lock().push((1, Vec::new()));
    let fs = FaultFs::new();
    let chat = ChatStore::open_with(
        DIR,
        Options {
            fs: Arc::new(fs.clone()),
            commit_log: Some(Arc::clone(&log) as Arc<dyn CommitLog>),
            ..Options::default()
        },
        ChatOptions::default(),
    )
    .unwrap();
    match chat.register_user(UserId(1)) {
        Err(Error::CommitLog(why)) => assert!(why.contains("expects 2"), "{why}"),
        other => panic!("expected a commit log error, got {other:?}"),
    }
    assert_eq!(chat.store().last_lsn(), 0, "nothing was applied");
    assert!(matches!(
        chat.register_user(UserId(2)),
        Err(Error::Poisoned(_))
    ));
    assert_eq!(log.len(), 1);
}
