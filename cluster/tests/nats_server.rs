//! What the cluster layer relies on, checked against the `nats-server` the machine has
//! (Debian's 2.9.10) through the pinned `async-nats`, on a real 3-server cluster: a stream with
//! 3 replicas, publishes fenced by `Nats-Expected-Last-Sequence` (error 10071), KV `create`
//! refused for an existing key, `update` refused at a stale revision, and a bucket TTL that
//! expires a key so that another `create` takes it; and the fence under a race: many writers
//! fenced by the last sequence they saw, one winner per sequence.
//!
//! What 2.9.10 does **not** give: compare-and-set on one key of a *replicated* KV bucket is
//! not atomic under concurrent writers. 12 writers on 3 connections, each reading a counter
//! and updating it at the revision read, won 120 updates for 40 distinct values (a single
//! replica bucket: none twice). So nothing here hands out unique things (user ids, names)
//! through KV compare-and-set; they go through a shard's fenced stream (`names` of the chat
//! node), and the shard leases' safety rests on the stream fence, not on the lease bucket.

use std::error::Error as _;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::ErrorCode;
use async_nats::HeaderMap;
use chatstore_cluster::testing::NatsCluster;

fn expect_last(seq: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
        seq.to_string().as_str(),
    );
    h
}

#[test]
fn the_server_has_what_the_cluster_layer_needs() {
    let cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let nats = cluster.connect("features").unwrap();
    println!("nats-server {}", nats.server_version());
    let js = nats.jetstream().clone();
    nats.block_on(async move {
        // A stream with 3 replicas, on file storage.
        let mut s = js
            .create_stream(stream::Config {
                name: "features".into(),
                subjects: vec!["features.log".into()],
                num_replicas: 3,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        let info = s.info().await.unwrap().clone();
        assert_eq!(info.config.num_replicas, 3);
        let cluster_info = info
            .cluster
            .expect("a clustered stream reports its cluster");
        assert!(cluster_info.leader.is_some(), "the stream has a leader");
        assert_eq!(
            cluster_info.replicas.len(),
            2,
            "two more replicas than the leader"
        );

        // Publishes fenced by the expected last sequence.
        let a = js
            .publish_with_headers("features.log", expect_last(0), "first".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(a.sequence, 1);
        let refused = js
            .publish_with_headers("features.log", expect_last(0), "stale".into())
            .await
            .unwrap()
            .await
            .expect_err("a publish expecting a stale last sequence is refused");
        assert_eq!(refused.kind(), PublishErrorKind::WrongLastSequence);
        let server_error = refused
            .source()
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .unwrap_or_else(|| panic!("no server error under {refused:?}"));
        assert_eq!(
            server_error.error_code(),
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE
        );
        assert!(
            server_error.to_string().contains("error code 10071"),
            "{server_error}"
        );
        let b = js
            .publish_with_headers("features.log", expect_last(1), "second".into())
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(b.sequence, 2);
        let msg = s.get_raw_message(2).await.unwrap();
        assert_eq!(&msg.payload[..], b"second");

        // A KV bucket: create refused if the key exists, update refused at a stale revision.
        let bucket = js
            .create_key_value(kv::Config {
                bucket: "features".into(),
                history: 1,
                max_age: Duration::from_secs(2),
                num_replicas: 3,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            bucket.status().await.unwrap().max_age(),
            Duration::from_secs(2)
        );
        let r1 = bucket.create("lease", "a".into()).await.unwrap();
        let again = bucket
            .create("lease", "b".into())
            .await
            .expect_err("create of an existing key is refused");
        assert_eq!(again.kind(), CreateErrorKind::AlreadyExists);
        let r2 = bucket.update("lease", "a".into(), r1).await.unwrap();
        assert!(r2 > r1);
        let stale = bucket
            .update("lease", "b".into(), r1)
            .await
            .expect_err("update at a stale revision is refused");
        assert_eq!(stale.kind(), UpdateErrorKind::WrongLastRevision);

        // The bucket TTL expires the key; then another create takes it, and the old holder's
        // update at its last revision is refused.
        let deadline = Instant::now() + Duration::from_secs(30);
        let r3 = loop {
            match bucket.create("lease", "b".into()).await {
                Ok(r) => break r,
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => panic!("create after expiry: {e}"),
            }
            assert!(Instant::now() < deadline, "the key never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(r3 > r2);
        let late = bucket
            .update("lease", "a".into(), r2)
            .await
            .expect_err("the expired holder's renewal is refused");
        assert_eq!(late.kind(), UpdateErrorKind::WrongLastRevision);
        assert_eq!(
            &bucket.get("lease").await.unwrap().expect("b holds it")[..],
            b"b"
        );
    })
    .unwrap();
}

/// The shard commit log's fence under a race: many writers publish to one replicated stream,
/// each fenced by the last sequence it saw. Each sequence must go to exactly one writer (what
/// keeps a deposed shard owner from appending beside its successor).
#[test]
fn concurrent_fenced_publishes_have_one_winner_per_sequence() {
    let cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let conns: Vec<_> = (0..3)
        .map(|i| {
            let mut o = cluster.options(&format!("fence-{i}"));
            o.urls = vec![cluster.url(i)];
            chatstore_cluster::Nats::connect(o).unwrap()
        })
        .collect();
    let js = conns[0].jetstream().clone();
    conns[0]
        .block_on(async move {
            js.create_stream(stream::Config {
                name: "fence".into(),
                subjects: vec!["fence.log".into()],
                num_replicas: 3,
                storage: StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        })
        .unwrap();
    let wins: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|w| {
                let nats = conns[w % 3].clone();
                s.spawn(move || {
                    let js = nats.jetstream().clone();
                    nats.block_on(async move {
                        let mut stream = js.get_stream("fence").await.unwrap();
                        let mut won = Vec::new();
                        while won.len() < 10 {
                            let Ok(info) = stream.info().await else {
                                continue;
                            };
                            let last = info.state.last_sequence;
                            let sent = js
                                .publish_with_headers("fence.log", expect_last(last), "x".into())
                                .await;
                            if let Ok(Ok(ack)) = match sent {
                                Ok(ack) => Ok(ack.await),
                                Err(e) => Err(e),
                            } {
                                assert_eq!(ack.sequence, last + 1, "landed where fenced");
                                won.push(ack.sequence);
                            }
                        }
                        won
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all: Vec<u64> = wins.into_iter().flatten().collect();
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a sequence was won twice: {all:?}");
}

/// What presence is built on: a KV watch with history delivers the last value of each key
/// (with its time), then every put and delete as it happens; but when an entry expires by the
/// bucket's TTL, 2.9.10 sends the watch nothing. So a node that dies never says its users
/// left: presence judges liveness by the time of each key's last put, not by its existence.
#[test]
fn a_kv_watch_sees_puts_and_deletes_but_no_ttl_expiry() {
    use futures_util::StreamExt;
    let cluster = NatsCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let nats = cluster.connect("watch").unwrap();
    let js = nats.jetstream().clone();
    nats.block_on(async move {
        let kv = js
            .create_key_value(kv::Config {
                bucket: "watched".into(),
                history: 1,
                max_age: Duration::from_secs(2),
                storage: StorageType::File,
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .expect("bucket");
        kv.put("u.1.a", "x".into())
            .await
            .expect("put before the watch");
        let mut watch = kv.watch_with_history("u.>").await.expect("watch");
        let seeded = next_entry(&mut watch).await.expect("the existing key");
        assert_eq!(seeded.key, "u.1.a");
        assert_eq!(seeded.operation, kv::Operation::Put);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i128;
        let age_ms = now_ms - seeded.created.unix_timestamp_nanos() / 1_000_000;
        assert!(
            age_ms.abs() < 5_000,
            "created is the put's time: {age_ms} ms ago"
        );
        kv.put("u.2.b", "y".into()).await.expect("put");
        let put = next_entry(&mut watch)
            .await
            .expect("a put after the watch began");
        assert_eq!(
            (put.key.as_str(), put.operation),
            ("u.2.b", kv::Operation::Put)
        );
        kv.delete("u.2.b").await.expect("delete");
        let del = next_entry(&mut watch).await.expect("a delete");
        assert_eq!(
            (del.key.as_str(), del.operation),
            ("u.2.b", kv::Operation::Delete)
        );
        // u.1.a expires (TTL 2 s): no event comes for it, though it is gone.
        let t = Instant::now();
        let event = tokio::time::timeout(Duration::from_secs(6), watch.next()).await;
        assert!(event.is_err(), "an expiry sent a watch event: {event:?}");
        assert!(t.elapsed() >= Duration::from_secs(5));
        assert_eq!(kv.get("u.1.a").await.expect("get"), None, "expired");
    })
    .unwrap();
}

/// The watch's next entry, if one comes within 5 s.
async fn next_entry(w: &mut kv::Watch) -> Option<kv::Entry> {
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .ok()
        .flatten()
        .map(|e| e.expect("watch entry"))
}
