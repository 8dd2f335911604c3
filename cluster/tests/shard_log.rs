//! The shard commit log on a real 3-server NATS cluster (nats-server processes on loopback):
//! a leader whose commits go through [`JetStreamCommitLog`] and followers fed by catch-up,
//! fencing of a deposed owner, the loss of a NATS server, and a leader that crashes and
//! catches up from the stream.

#[path = "../../tests/common/chat_replica.rs"]
mod chat_replica;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatstore::fs::fault::{CrashMode, FaultFs};
use chatstore::{
    ChatOptions, ChatStore, CommitLog, ConversationId, Durability, Error as StoreError, Message,
    NewMessage, Options, UserId,
};
use chatstore_cluster::testing::NatsCluster;
use chatstore_cluster::{
    checkpoint_and_purge, shard_key, JetStreamCommitLog, Lease, LeaseBucket, LeaseConfig, Nats,
    ShardStream, SnapshotBucket, SnapshotConfig, StreamConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use chat_replica::{random_op, state, USERS};

fn stream_config(prefix: &str) -> StreamConfig {
    StreamConfig {
        prefix: prefix.to_string(),
        replicas: 3,
        ..StreamConfig::default()
    }
}

/// The leader's engine options: commits go through `log`; its own WAL is only a cache of the
/// stream, so it needs no fsync per commit.
fn leader_options(log: &Arc<JetStreamCommitLog>) -> Options {
    Options {
        durability: Durability::Buffered {
            interval: Duration::from_millis(50),
        },
        commit_log: Some(Arc::clone(log) as Arc<dyn CommitLog>),
        memtable_bytes: 32 << 10,
        ..Options::default()
    }
}

fn open(dir: &Path, options: Options) -> ChatStore {
    ChatStore::open_with(dir, options, ChatOptions::default())
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

/// A leader: a store on `dir` whose commit log leads the shard's stream.
fn open_leader(
    nats: &Nats,
    prefix: &str,
    dir: &Path,
    lease: Option<Lease>,
) -> (ChatStore, Arc<JetStreamCommitLog>) {
    let stream = ShardStream::open(nats, &stream_config(prefix), 0).unwrap();
    let log = JetStreamCommitLog::new(stream);
    let chat = open(dir, leader_options(&log));
    log.promote(chat.store(), lease)
        .unwrap_or_else(|e| panic!("promote: {e}"));
    (chat, log)
}

/// Users 1..=USERS, a direct chat and a group.
fn setup(chat: &ChatStore) -> Vec<ConversationId> {
    for u in 1..=USERS {
        chat.register_user(UserId(u)).unwrap();
    }
    vec![
        chat.direct(UserId(1), UserId(2)).unwrap(),
        chat.create_group(UserId(1), &[UserId(2), UserId(3), UserId(4)])
            .unwrap(),
    ]
}

/// Sends `text` from user 1 in `conv`.
fn send(chat: &ChatStore, conv: ConversationId, text: &str) -> chatstore::Result<Message> {
    chat.send(conv, NewMessage::text(UserId(1), text))
}

/// Every message of `conv` as `(id, content)`, oldest first.
fn contents(chat: &ChatStore, conv: ConversationId) -> Vec<(u64, String)> {
    let mut all: Vec<(u64, String)> = chat
        .store()
        .latest(conv, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|m| (m.id.0, String::from_utf8_lossy(&m.content).into_owned()))
        .collect();
    all.sort();
    all
}

#[test]
fn a_follower_fed_by_catch_up_equals_the_leader_after_every_step() {
    let nats_cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let nats = nats_cluster.connect("leader").unwrap();
    let leases = LeaseBucket::open(&nats, LeaseConfig::default()).unwrap();
    let lease = leases
        .try_acquire(&shard_key(0), "leader")
        .unwrap()
        .expect("a new shard's lease is free");
    let _renewing = lease.keep_alive(Duration::from_secs(3));
    let (leader, log) = open_leader(&nats, "follow", &dir.path().join("leader"), Some(lease));

    // The follower reads through a connection of its own.
    let follower_nats = nats_cluster.connect("follower").unwrap();
    let stream = ShardStream::open(&follower_nats, &stream_config("follow"), 0).unwrap();
    let follower = open(&dir.path().join("follower"), Options::default());

    let convs = setup(&leader);
    let mut rng = StdRng::seed_from_u64(42);
    for step in 0..200u64 {
        random_op(&mut rng, &leader, &convs, step);
        let caught = stream.catch_up(follower.store()).unwrap();
        assert_eq!(caught.last_lsn, leader.store().last_lsn(), "step {step}");
        assert_eq!(
            state(&follower, &convs),
            state(&leader, &convs),
            "step {step}: the follower differs from the leader"
        );
    }
    assert!(log.is_leading());
    assert_eq!(stream.tail().unwrap().last_lsn(), leader.store().last_lsn());
    assert!(
        leader.store().last_lsn() > 50,
        "only {} commits",
        leader.store().last_lsn()
    );

    // A new follower catches up the whole stream at once (through a consumer).
    let late = open(&dir.path().join("late"), Options::default());
    let caught = stream.catch_up(late.store()).unwrap();
    assert_eq!(caught.applied, leader.store().last_lsn());
    assert_eq!(state(&late, &convs), state(&leader, &convs));
    // Nothing more to apply.
    assert_eq!(stream.catch_up(late.store()).unwrap().applied, 0);

    // Purging below a checkpoint keeps what a store past it needs; one behind is told so.
    let lsn = leader.store().last_lsn();
    let purged = stream.purge_below(lsn - 10).unwrap();
    assert_eq!(purged, lsn - 11);
    let tail = stream.tail().unwrap();
    assert_eq!((tail.first_lsn(), tail.last_lsn()), (lsn - 10, lsn));
    for _ in 0..5 {
        send(&leader, convs[0], "after the purge").unwrap();
    }
    assert_eq!(stream.catch_up(follower.store()).unwrap().applied, 5);
    assert_eq!(state(&follower, &convs), state(&leader, &convs));
    let empty = open(&dir.path().join("empty"), Options::default());
    match stream.catch_up(empty.store()) {
        Err(chatstore_cluster::Error::Truncated {
            store_lsn: 0,
            first_lsn,
        }) => assert_eq!(first_lsn, lsn - 10),
        other => panic!("a store behind the stream's start: {other:?}"),
    }
    for chat in [&leader, &follower, &late] {
        assert!(chat.store().verify().unwrap().is_ok());
    }
}

/// Waits (bounded) until `who` takes the lease, which happens once the holder's has expired.
fn take_when_free(leases: &LeaseBucket, key: &str, who: &str) -> Lease {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(lease) = leases.try_acquire(key, who).unwrap() {
            return lease;
        }
        assert!(
            Instant::now() < deadline,
            "the lease of {key} never expired"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_refused(result: chatstore::Result<Message>, what: &str, why: &str) {
    match result {
        Err(StoreError::CommitLog(e)) if e.contains(why) => {}
        other => panic!("{what}: expected a commit log refusal ({why}), got {other:?}"),
    }
}

fn assert_poisoned(result: chatstore::Result<Message>, who: &str) {
    match result {
        Err(StoreError::Poisoned(why)) if why.contains("commit log append failed") => {}
        other => panic!("{who}: expected a store poisoned by its commit log, got {other:?}"),
    }
}

#[test]
fn a_deposed_owner_is_fenced_and_no_lsn_or_id_is_issued_twice() {
    let nats_cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let key = shard_key(0);
    let lease_config = LeaseConfig {
        bucket: "fence_leases".into(),
        ttl: Duration::from_secs(2),
        replicas: 3,
        margin: Duration::from_millis(500),
    };
    let nats_a = nats_cluster.connect("a").unwrap();
    let nats_b = nats_cluster.connect("b").unwrap();
    let leases_a = LeaseBucket::open(&nats_a, lease_config.clone()).unwrap();
    let leases_b = LeaseBucket::open(&nats_b, lease_config).unwrap();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();

    // A owns the shard and writes; then it stops renewing and B takes the lease over.
    let lease_a = leases_a.try_acquire(&key, "a").unwrap().expect("free");
    let (a, _) = open_leader(
        &nats_a,
        "fence",
        &dir.path().join("a1"),
        Some(lease_a.clone()),
    );
    let convs = setup(&a);
    let conv = convs[0];
    for i in 0..5 {
        let m = send(&a, conv, &format!("a{i}")).unwrap();
        acked.push((m.id.0, format!("a{i}")));
    }
    let lease_b = take_when_free(&leases_b, &key, "b");
    assert!(!lease_a.is_valid(), "A's lease outlived the TTL");
    assert!(matches!(
        lease_a.renew(),
        Err(chatstore_cluster::Error::LeaseLost(_))
    ));
    let (b, b_log) = open_leader(
        &nats_b,
        "fence",
        &dir.path().join("b1"),
        Some(lease_b.clone()),
    );
    let _renewing = lease_b.keep_alive(Duration::from_millis(500));
    assert_eq!(contents(&b, conv), acked, "B caught up with A's commits");

    // 1. A's log watches its lease: its next commit is refused before it is published, and
    //    its store is poisoned.
    refused.push("a-late".into());
    assert_refused(
        send(&a, conv, "a-late"),
        "A after losing its lease",
        "lease lost",
    );
    assert_poisoned(send(&a, conv, "a-later"), "A");
    refused.push("a-later".into());
    drop(a);

    // 2. A deposed owner that does not know it (its guard is gone: a process frozen past its
    //    lease, a clock that jumped): the stream itself refuses it once B wrote.
    let (a2, a2_log) = open_leader(&nats_a, "fence", &dir.path().join("a2"), None);
    for i in 0..3 {
        let m = send(&b, conv, &format!("b{i}")).unwrap();
        acked.push((m.id.0, format!("b{i}")));
    }
    refused.push("a2-stale".into());
    assert_refused(send(&a2, conv, "a2-stale"), "A2 behind B", "fenced");
    assert!(a2_log.stopped().is_some());
    assert_poisoned(send(&a2, conv, "a2-poisoned"), "A2");
    refused.push("a2-poisoned".into());
    drop(a2);

    // 3. The race the other way: the unguarded A3 writes first (the stream still ends where
    //    it caught up to, so it is accepted), and B's next commit is fenced instead. B
    //    reopens, catches up (A3's message included) and goes on: one history, no id twice.
    let (a3, _) = open_leader(&nats_a, "fence", &dir.path().join("a3"), None);
    let m = send(&a3, conv, "a3-first").unwrap();
    acked.push((m.id.0, "a3-first".into()));
    refused.push("b-fenced".into());
    assert_refused(send(&b, conv, "b-fenced"), "B after A3 wrote", "fenced");
    assert!(b_log.stopped().is_some());
    drop(b);
    let (b, _) = open_leader(&nats_b, "fence", &dir.path().join("b1"), Some(lease_b));
    for i in 3..6 {
        let m = send(&b, conv, &format!("b{i}")).unwrap();
        acked.push((m.id.0, format!("b{i}")));
    }
    refused.push("a3-stale".into());
    assert_refused(send(&a3, conv, "a3-stale"), "A3 behind B", "fenced");
    drop(a3);

    // The stream holds one history: a new store applies it all (LSNs consecutive, ids
    // gapless per conversation, or apply would refuse), every acknowledged message once,
    // nothing refused.
    let stream = ShardStream::open(&nats_b, &stream_config("fence"), 0).unwrap();
    let audit = open(&dir.path().join("audit"), Options::default());
    stream.catch_up(audit.store()).unwrap();
    assert_eq!(audit.store().last_lsn(), b.store().last_lsn());
    assert_eq!(state(&audit, &convs), state(&b, &convs));
    let mut want = acked.clone();
    want.sort();
    let got = contents(&audit, conv);
    assert_eq!(
        got, want,
        "the stream holds exactly the acknowledged messages"
    );
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    for r in &refused {
        assert!(
            !got.iter().any(|(_, c)| c == r),
            "refused message {r:?} is in the stream"
        );
    }
}

/// The index of the server leading the stream, from its name `n<i+1>`.
fn stream_leader(nats: &Nats, stream: &ShardStream) -> usize {
    let js = nats.jetstream().clone();
    let name = stream.name().to_string();
    let leader = nats
        .block_on(async move {
            let mut s = js.get_stream(&name).await.unwrap();
            s.info()
                .await
                .unwrap()
                .cluster
                .clone()
                .and_then(|c| c.leader)
        })
        .unwrap()
        .expect("the stream has a leader");
    leader
        .trim_start_matches('n')
        .parse::<usize>()
        .unwrap_or_else(|_| panic!("server name {leader}"))
        - 1
}

#[test]
fn commits_go_on_while_a_nats_server_is_down() {
    let mut nats_cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let nats = nats_cluster.connect("leader").unwrap();
    let (leader, log) = open_leader(&nats, "outage", &dir.path().join("leader"), None);
    let convs = setup(&leader);
    let mut rng = StdRng::seed_from_u64(7);
    let mut n = 0;
    let mut run = |chat: &ChatStore, steps: u64| {
        for _ in 0..steps {
            random_op(&mut rng, chat, &convs, n);
            n += 1;
        }
    };
    run(&leader, 30);
    // Kill the server leading the stream: a new leader is elected among the other two while
    // commits wait (and retry) for it.
    let victim = stream_leader(&nats, log.stream());
    nats_cluster.kill(victim).unwrap();
    run(&leader, 30);
    assert!(log.is_leading(), "{:?}", log.stopped());
    nats_cluster.restart(victim).unwrap();
    run(&leader, 30);
    // One server down at a time: the restarted one must hold the stream again before another
    // goes, or the stream is left with one current replica and no quorum (commits then time
    // out after `append_timeout`, as happened here under load).
    nats_cluster
        .wait_replicated(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the restarted server did not catch up: {e}"));
    // And a server that is not leading.
    let other = (stream_leader(&nats, log.stream()) + 1) % 3;
    nats_cluster.kill(other).unwrap();
    run(&leader, 30);
    nats_cluster.restart(other).unwrap();
    run(&leader, 10);
    assert!(log.is_leading(), "{:?}", log.stopped());

    let follower_nats = nats_cluster.connect("follower").unwrap();
    let stream = ShardStream::open(&follower_nats, &stream_config("outage"), 0).unwrap();
    let follower = open(&dir.path().join("follower"), Options::default());
    stream.catch_up(follower.store()).unwrap();
    assert_eq!(state(&follower, &convs), state(&leader, &convs));
}

#[test]
fn a_crashed_leader_reopens_catches_up_and_holds_what_was_acknowledged() {
    let nats_cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let nats = nats_cluster.connect("leader").unwrap();
    let leases = LeaseBucket::open(&nats, LeaseConfig::default()).unwrap();
    let lease = leases
        .try_acquire(&shard_key(0), "leader")
        .unwrap()
        .expect("free");
    let _renewing = lease.keep_alive(Duration::from_secs(3));
    let dir = Path::new("/shard");
    let mut fs = FaultFs::new();
    let options = |fs: &FaultFs, log: &Arc<JetStreamCommitLog>| Options {
        fs: Arc::new(fs.clone()),
        // The WAL is never fsynced by the test's end: a power cut loses all of it.
        durability: Durability::Buffered {
            interval: Duration::from_secs(3600),
        },
        ..leader_options(log)
    };
    let stream = ShardStream::open(&nats, &stream_config("crash"), 0).unwrap();
    let mut log = JetStreamCommitLog::new(stream.clone());
    let mut chat = Some(open(dir, options(&fs, &log)));
    log.promote(chat.as_ref().unwrap().store(), Some(lease.clone()))
        .unwrap();
    let convs = setup(chat.as_ref().unwrap());
    let mut acked: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(3);
    let modes = [
        CrashMode::KeepWritten,
        CrashMode::LoseUnsynced,
        CrashMode::Torn { seed: 11 },
        CrashMode::LoseUnsynced,
    ];
    for (round, mode) in modes.into_iter().enumerate() {
        let c = chat.as_ref().unwrap();
        for i in 0..40 {
            let conv = convs[rng.gen_range(0..convs.len())];
            let m = send(c, conv, &format!("r{round} m{i}")).unwrap();
            acked.entry(conv.0).or_default().push(m);
        }
        let acked_lsn = c.store().last_lsn();
        // Crash: the store goes without closing; only what the mode keeps is on disk.
        let after = fs.power_cut_with(mode);
        drop(chat.take());
        fs = after;
        log = JetStreamCommitLog::new(stream.clone());
        let reopened = open(dir, options(&fs, &log));
        let lost = acked_lsn - reopened.store().last_lsn();
        log.promote(reopened.store(), Some(lease.clone()))
            .unwrap_or_else(|e| panic!("round {round}: promote after a crash: {e}"));
        assert_eq!(reopened.store().last_lsn(), acked_lsn, "round {round}");
        for &conv in &convs {
            let mut got = reopened.store().latest(conv, usize::MAX).unwrap();
            got.sort_by_key(|m| m.id);
            assert_eq!(
                &got,
                acked.get(&conv.0).unwrap_or(&Vec::new()),
                "round {round} ({mode:?}, {lost} records from the stream): conversation {conv}"
            );
        }
        if matches!(mode, CrashMode::LoseUnsynced) {
            assert!(lost > 0, "round {round}: the power cut lost nothing");
        }
        chat = Some(reopened);
    }
    let c = chat.as_ref().unwrap();
    send(c, convs[0], "after the crashes").unwrap();
    assert!(c.store().verify().unwrap().is_ok());
}

/// The bounded log: the owner snapshots its store to the object store and purges the stream
/// below it while writes go on; a new owner with no copy of its own restores the snapshot and
/// replays the rest of the stream, and reaches the owner's state. A store that is neither
/// (an empty one) is told the stream no longer holds its records.
#[test]
fn a_snapshot_bounds_the_stream_and_a_new_owner_restores_from_it() {
    let nats_cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let nats = nats_cluster.connect("owner").unwrap();
    let (leader, log) = open_leader(&nats, "snap", &dir.path().join("owner"), None);
    let bucket = SnapshotBucket::open(&nats, SnapshotConfig::default()).unwrap();
    assert_eq!(
        bucket.latest(0).unwrap(),
        None,
        "a new shard has no snapshot"
    );

    let convs = setup(&leader);
    let mut rng = StdRng::seed_from_u64(7);
    for step in 0..150u64 {
        random_op(&mut rng, &leader, &convs, step);
    }
    let scratch = dir.path().join("scratch");
    let (snapshot, purged) =
        checkpoint_and_purge(&bucket, log.stream(), leader.store(), &scratch).unwrap();
    assert_eq!(
        snapshot.lsn,
        leader.store().last_lsn(),
        "a quiet store's snapshot"
    );
    assert_eq!(
        purged,
        snapshot.lsn - 1,
        "all but the snapshot's own record"
    );
    assert!(snapshot.bytes > 0);
    assert_eq!(bucket.latest(0).unwrap(), Some(snapshot));
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "the checkpoint and its archive are removed"
    );
    // Writes go on past the snapshot.
    for step in 150..250u64 {
        random_op(&mut rng, &leader, &convs, step);
    }
    let tail = log.stream().tail().unwrap();
    assert_eq!(tail.first_lsn(), snapshot.lsn);
    assert_eq!(tail.last_lsn(), leader.store().last_lsn());

    // Another node: no copy of its own, so the snapshot, then the stream from its LSN.
    let other = nats_cluster.connect("new-owner").unwrap();
    let other_bucket = SnapshotBucket::open(&other, SnapshotConfig::default()).unwrap();
    let restored_dir = dir.path().join("new-owner");
    let restored = other_bucket
        .restore(0, &restored_dir, &dir.path().join("scratch2"))
        .unwrap()
        .expect("the shard has a snapshot");
    assert_eq!(restored, snapshot);
    let stream = ShardStream::open(&other, &stream_config("snap"), 0).unwrap();
    let successor = open(&restored_dir, Options::default());
    assert_eq!(successor.store().last_lsn(), snapshot.lsn);
    let caught = stream.catch_up(successor.store()).unwrap();
    assert_eq!(caught.applied, leader.store().last_lsn() - snapshot.lsn);
    assert_eq!(state(&successor, &convs), state(&leader, &convs));
    assert!(successor.store().verify().unwrap().is_ok());

    // A store with nothing cannot catch up from the purged stream.
    let empty = open(&dir.path().join("empty"), Options::default());
    assert!(matches!(
        stream.catch_up(empty.store()),
        Err(chatstore_cluster::Error::Truncated { store_lsn: 0, .. })
    ));
    // Restoring over an existing directory is refused, not merged.
    assert!(other_bucket
        .restore(0, &restored_dir, &dir.path().join("scratch2"))
        .is_err());
}
