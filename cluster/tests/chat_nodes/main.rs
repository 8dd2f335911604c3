//! Chat nodes end to end: three `chat-node` processes on a real 3-server NATS cluster, users
//! on different nodes, WebSocket devices that record every frame. They fail (never skip)
//! without `nats-server`.

mod assets;
#[allow(dead_code)]
#[path = "../../../tests/chat_server/client.rs"]
mod client;
mod harness;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chatstore_cluster::testing::NatsCluster;
use harness::{
    all_owned, leases, new_owner, owner, shard_of, start_cluster_with, Device, Node, LEASE_TTL,
};
use serde_json::json;
use tokio::task::block_in_place as blocking;

fn start_cluster(n: usize) -> (NatsCluster, tempfile::TempDir, Vec<Node>) {
    start_cluster_with(n, &[])
}

/// Every member device got every message of each of its conversations exactly once (pushed,
/// or acked as its own send), and the pushed ones in id order: `last` is each conversation's
/// last id, `members` who is in it.
fn assert_each_once_in_order(
    devices: &[(&Device, u64)],
    last: &BTreeMap<u64, u64>,
    members: &HashMap<u64, Vec<u64>>,
) {
    for (d, user) in devices {
        let (live, pushed) = (d.live_ids(), d.pushed_ids());
        for (&conv, &last_id) in last {
            if !members[&conv].contains(user) {
                continue;
            }
            let of = |ids: &[(u64, u64)]| -> Vec<u64> {
                ids.iter()
                    .filter(|(c, _)| *c == conv)
                    .map(|(_, i)| *i)
                    .collect()
            };
            let pushed = of(&pushed);
            assert!(
                pushed.windows(2).all(|w| w[0] < w[1]),
                "{}: conversation {conv} pushed out of order: {pushed:?}",
                d.name
            );
            let mut all = of(&live);
            all.sort_unstable();
            assert_eq!(
                all,
                (1..=last_id).collect::<Vec<_>>(),
                "{}: conversation {conv}",
                d.name
            );
        }
    }
}

/// A conversation's whole history, paged.
async fn all_messages(http: client::Http, token: &str, conv: u64) -> Vec<serde_json::Value> {
    let mut all: Vec<serde_json::Value> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m["id"].as_u64().expect("id"));
        let page = http
            .history(token, conv, &format!("?after={after}&limit=200"))
            .await;
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_on_different_nodes_chat_and_every_device_gets_every_message_once() {
    let (mut nats, _dir, mut nodes) = blocking(|| start_cluster(3));
    let leases = blocking(|| leases(&nats));
    let owners = blocking(|| all_owned(&leases, &nodes));
    let spread: std::collections::HashSet<&String> = owners.iter().collect();
    assert!(
        spread.len() >= 2,
        "shards spread over the nodes: {owners:?}"
    );
    let h: Vec<_> = nodes.iter().map(Node::http).collect();

    // Each user signs up on a different node; alice signs in again on another (a 2nd device).
    let (alice, alice_id) = h[0].signup("alice").await;
    let (bob, bob_id) = h[1].signup("bob").await;
    let (carol, carol_id) = h[2].signup("carol").await;
    let (alice2, alice2_id) = h[1].signin("alice").await;
    assert_eq!(alice_id, alice2_id);

    let mut a0 = Device::connect("alice@node0", nodes[0].addr, &alice).await;
    let mut a1 = Device::connect("alice@node1", nodes[1].addr, &alice2).await;
    let mut b = Device::connect("bob@node1", nodes[1].addr, &bob).await;
    let mut c = Device::connect("carol@node2", nodes[2].addr, &carol).await;

    let direct = h[0].direct(&alice, "bob").await;
    assert_eq!(
        h[1].direct(&bob, "alice").await,
        direct,
        "the same direct chat from either side"
    );
    let r = h[2]
        .post(
            "/api/groups",
            Some(&carol),
            json!({ "name": "trio", "members": ["alice", "bob"] }),
        )
        .await;
    assert_eq!(r.status, 201, "group: {:?}", r.json());
    let group = r.json()["id"].as_u64().expect("group id");
    // Presence is cluster-wide: carol's node holds no device of alice or bob, yet sees them
    // online (the presence bucket), and herself.
    let view = h[2]
        .get(&format!("/api/conversations/{group}"), &carol)
        .await
        .json();
    for m in view["members"].as_array().expect("members") {
        assert_eq!(m["online"], true, "{m} in {view}");
    }

    let t = Instant::now();
    let rounds = 15;
    for i in 0..rounds {
        a0.send_acked(direct, &format!("a0 {i}"), &format!("a0-{i}"))
            .await;
        b.send_acked(direct, &format!("b {i}"), &format!("b-{i}"))
            .await;
        c.send_acked(group, &format!("c {i}"), &format!("c-{i}"))
            .await;
        a1.send_acked(group, &format!("a1 {i}"), &format!("a1-{i}"))
            .await;
        b.send_acked(group, &format!("bg {i}"), &format!("bg-{i}"))
            .await;
    }
    println!(
        "{} acked sends through 3 nodes in {:?}",
        rounds * 5,
        t.elapsed()
    );
    // And all at once: three devices on two nodes pipeline sends into the group; the owner
    // pushes them in id order whatever node they came through.
    let t = Instant::now();
    let burst = 20;
    for i in 0..burst {
        a0.send(group, &format!("burst a0 {i}"), &format!("ba0-{i}"))
            .await;
        b.send(group, &format!("burst b {i}"), &format!("bb-{i}"))
            .await;
        a1.send(group, &format!("burst a1 {i}"), &format!("ba1-{i}"))
            .await;
    }
    for (d, k) in [(&a0, "ba0"), (&b, "bb"), (&a1, "ba1")] {
        for i in 0..burst {
            let a = d.answer(&format!("{k}-{i}"), Duration::from_secs(30)).await;
            assert_eq!(a.map(|a| a["type"].clone()), Some(json!("ack")), "{k}-{i}");
        }
    }
    println!(
        "{} pipelined sends through 2 nodes in {:?}",
        3 * burst,
        t.elapsed()
    );

    let last_of = |conv: u64, tok: String, http: client::Http| async move {
        let msgs = http.history(&tok, conv, "?limit=1").await;
        msgs.last()
            .and_then(|m| m["id"].as_u64())
            .expect("a last message")
    };
    let mut last = BTreeMap::new();
    last.insert(direct, last_of(direct, alice.clone(), h[2]).await);
    last.insert(group, last_of(group, carol.clone(), h[0]).await);
    assert_eq!(last[&direct], 2 * rounds as u64);
    assert_eq!(
        last[&group],
        1 + 3 * rounds as u64 + 3 * burst as u64,
        "the creation notice and the messages"
    );
    let members: HashMap<u64, Vec<u64>> = [
        (direct, vec![alice_id, bob_id]),
        (group, vec![alice_id, bob_id, carol_id]),
    ]
    .into();
    // Pushes may trail the acks a little: wait until every device has everything.
    let deadline = Instant::now() + Duration::from_secs(20);
    let devices = [
        (&a0, alice_id),
        (&a1, alice_id),
        (&b, bob_id),
        (&c, carol_id),
    ];
    let expected = |_: &Device, u: u64| -> usize {
        last.iter()
            .filter(|(c, _)| members[c].contains(&u))
            .map(|(_, l)| *l as usize)
            .sum()
    };
    while devices
        .iter()
        .any(|(d, u)| d.live_ids().len() < expected(d, *u))
    {
        assert!(Instant::now() < deadline, "some device is missing messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // and no duplicates trail them
    assert_each_once_in_order(&devices, &last, &members);

    // Carol reads everything: alice's devices, on other nodes, get the receipt.
    let read_up_to = last[&group];
    c.frame(json!({ "type": "read", "conversation": group, "up_to": read_up_to }))
        .await;
    for d in [&a0, &a1] {
        d.wait_for(|v| v["type"] == "receipt" && v["user"] == carol_id && v["read"] == read_up_to)
            .await;
    }
    // Carol goes offline; messages arrive; she comes back on another node and gets them as
    // her unread summary (her session works there: sessions are cluster-wide).
    c.close().await;
    for i in 0..5 {
        a0.send_acked(group, &format!("while away {i}"), &format!("away-{i}"))
            .await;
    }
    let c2 = Device::connect("carol@node0", nodes[0].addr, &carol).await;
    let summary = c2.unread();
    let entry = summary["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .find(|e| e["conversation"] == group)
        .unwrap_or_else(|| panic!("no unread for the group: {summary}"))
        .clone();
    assert_eq!(entry["count"], 5, "{entry}");
    let texts: Vec<&str> = entry["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        texts,
        (0..5)
            .map(|i| format!("while away {i}"))
            .collect::<Vec<_>>()
    );
    c2.close().await;

    // One NATS server dies: every node keeps serving (its connection moves to another server,
    // the streams the dead one led elect new leaders).
    // A healthy cluster first: every stream and bucket fully replicated (the shard streams
    // were created a moment ago), so the kill tests failover, not a stream's first catch-up.
    blocking(|| nats.wait_replicated(Duration::from_secs(60))).expect("every stream replicated");
    blocking(|| nats.kill(0)).expect("kill a NATS server");
    println!("{:8.3} NATS server 0 killed", harness::clock());
    let t = Instant::now();
    let patience = Duration::from_secs(90);
    for i in 0..5 {
        a0.send_until_acked(
            direct,
            &format!("nats down {i}"),
            &format!("nd-a-{i}"),
            patience,
        )
        .await;
        if i == 0 {
            println!(
                "first send acked {:?} after a NATS server was killed",
                t.elapsed()
            );
        }
        b.send_until_acked(
            group,
            &format!("nats down {i}"),
            &format!("nd-b-{i}"),
            patience,
        )
        .await;
    }
    println!(
        "10 acked sends with one NATS server down in {:?}",
        t.elapsed()
    );
    for d in [a0, a1, b] {
        d.close().await;
    }

    // Every chat node restarts (kill -9): messages, unread counts, accounts and sessions are
    // all there.
    for n in &mut nodes {
        blocking(|| n.restart());
    }
    blocking(|| all_owned(&leases, &nodes));
    let h: Vec<_> = nodes.iter().map(Node::http).collect();
    let me = h[1].get("/api/me", &carol).await;
    assert_eq!(me.status, 200, "carol's session survives: {:?}", me.json());
    h[2].signin("bob").await;
    let c3 = Device::connect("carol@node1", nodes[1].addr, &carol).await;
    let summary = c3.unread();
    let count = summary["conversations"]
        .as_array()
        .expect("conversations")
        .iter()
        .find(|e| e["conversation"] == group)
        .map(|e| e["count"].clone());
    assert_eq!(
        count,
        Some(json!(10)),
        "carol's unread after the restart: {summary}"
    );
    let history = all_messages(h[0], &alice, direct).await;
    assert_eq!(
        history.len(),
        2 * rounds + 5,
        "the direct chat after the restart"
    );
    c3.close().await;
    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_busy_shard_owner_loses_nothing_and_the_shard_serves_again() {
    let (nats, _dir, mut nodes) = blocking(|| start_cluster(3));
    let leases = blocking(|| leases(&nats));
    let owners = blocking(|| all_owned(&leases, &nodes));
    let h: Vec<_> = nodes.iter().map(Node::http).collect();
    let (alice, _) = h[0].signup("alice").await;
    let (bob, _) = h[1].signup("bob").await;
    let conv = h[0].direct(&alice, "bob").await;
    let shard = shard_of(conv);
    let victim = nodes
        .iter()
        .position(|n| n.name == owners[shard as usize])
        .expect("the owner is one of the nodes");
    let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();

    // Two senders on the surviving nodes keep the shard busy; each waits for its ack and
    // retries a send that failed, with the same client key.
    let mut senders = Vec::new();
    for (k, (&node, token)) in others.iter().zip([alice.clone(), bob.clone()]).enumerate() {
        let addr = nodes[node].addr;
        senders.push(tokio::spawn(async move {
            let mut d = Device::connect(&format!("sender{k}"), addr, &token).await;
            let mut acked = Vec::new();
            let mut gaps = Vec::new();
            let mut i = 0;
            let until = Instant::now() + Duration::from_secs(6) + LEASE_TTL;
            while Instant::now() < until {
                let key = format!("s{k}-{i}");
                let sent = Instant::now();
                loop {
                    d.send(conv, &key, &key).await;
                    match d.answer(&key, Duration::from_secs(30)).await {
                        Some(a) if a["type"] == "ack" => {
                            acked.push((key.clone(), a["message"]["id"].as_u64().expect("id")));
                            break;
                        }
                        Some(_) => {
                            // An error frame: forget it and send again (same key).
                            d.frames.lock().unwrap().retain(|v| v["client_key"] != key);
                        }
                        None => panic!("sender{k}: no answer for {key}"),
                    }
                }
                gaps.push((sent, sent.elapsed()));
                i += 1;
            }
            d.close().await;
            (acked, gaps)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    blocking(|| nodes[victim].kill());
    println!(
        "killed {} (owner of shard {shard}) under load",
        nodes[victim].name
    );

    let mut acked = Vec::new();
    let mut longest = Duration::ZERO;
    for s in senders {
        let (a, gaps) = s.await.expect("sender");
        acked.extend(a);
        for (sent, took) in gaps {
            if sent + took >= killed_at {
                longest = longest.max(took);
            }
        }
    }
    let new_owner =
        blocking(|| owner(&leases, shard, Duration::from_secs(1))).expect("a new owner");
    assert_ne!(new_owner, nodes[victim].name);
    println!(
        "shard {shard} served again: the longest send wait after kill -9 of its owner was {} ms \
         (lease TTL {} ms); {} messages acknowledged",
        longest.as_millis(),
        LEASE_TTL.as_millis(),
        acked.len()
    );
    assert!(longest < LEASE_TTL * 4, "failover took {longest:?}");

    // Everything acknowledged is there exactly once, ids gapless.
    let history = all_messages(h[others[0]], &alice, conv).await;
    assert_holds_exactly(&history, &acked);
    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}

/// Sends `conv` messages with client keys from a device on `addr` until `stop`, retrying a
/// refused send with the same key; returns (key, id) of every acknowledged one.
///
/// A device the server drops (a node woken from a pause gets the pushes NATS held for it all
/// at once, and a connection whose outgoing queue fills is dropped as too slow) connects
/// again and sends its unanswered message again with the same key, as a client does; a send
/// left unanswered on a live connection fails the test.
async fn keep_sending(
    name: String,
    addr: std::net::SocketAddr,
    token: String,
    conv: u64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, u64)> {
    const MAX_RECONNECTS: usize = 3;
    let mut d = Device::connect(&name, addr, &token).await;
    let mut acked = Vec::new();
    let mut reconnects = 0;
    let mut i = 0;
    while !*stop.borrow() {
        let key = format!("{name}-{i}");
        loop {
            d.send(conv, &key, &key).await;
            match d.answer(&key, Duration::from_secs(60)).await {
                Some(a) if a["type"] == "ack" => {
                    acked.push((key.clone(), a["message"]["id"].as_u64().expect("id")));
                    break;
                }
                Some(_) => d.frames.lock().unwrap().retain(|v| v["client_key"] != key),
                None => {
                    let closed = d
                        .frames
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|v| v["type"] == "connection_closed")
                        .cloned();
                    let Some(closed) = closed else {
                        panic!("{name}: no answer for {key} within 60 s");
                    };
                    reconnects += 1;
                    assert!(
                        reconnects <= MAX_RECONNECTS,
                        "{name}: dropped {reconnects} times; the last: {closed}"
                    );
                    println!("{name}: connecting again after {key} was left unanswered: {closed}");
                    d = Device::connect(&name, addr, &token).await;
                }
            }
        }
        i += 1;
    }
    d.close().await;
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_owner_is_replaced_and_its_writes_are_refused_when_it_wakes() {
    let (nats, _dir, nodes) = blocking(|| start_cluster(3));
    let leases = blocking(|| leases(&nats));
    let owners = blocking(|| all_owned(&leases, &nodes));
    let h: Vec<_> = nodes.iter().map(Node::http).collect();
    let (alice, _) = h[0].signup("alice").await;
    let (bob, _) = h[1].signup("bob").await;
    let conv = h[0].direct(&alice, "bob").await;
    let shard = shard_of(conv);
    let victim = nodes
        .iter()
        .position(|n| n.name == owners[shard as usize])
        .expect("the owner is one of the nodes");

    // A sender on every node, the paused owner's included: its send in flight when it is
    // paused resumes as a write of a deposed owner.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let senders: Vec<_> = (0..3)
        .map(|i| {
            let token = if i % 2 == 0 {
                alice.clone()
            } else {
                bob.clone()
            };
            tokio::spawn(keep_sending(
                format!("s{i}"),
                nodes[i].addr,
                token,
                conv,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nodes[victim].signal(libc::SIGSTOP);
    let paused = Instant::now();
    let taken = blocking(|| new_owner(&leases, shard, &nodes[victim].name));
    println!(
        "{} paused; {taken} took shard {shard} over after {} ms",
        nodes[victim].name,
        paused.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    nodes[victim].signal(libc::SIGCONT);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop_tx.send(true).expect("stop");
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.expect("sender"));
    }

    // The woken owner gave the shard up instead of writing it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nodes[victim]
        .log()
        .contains(&format!("giving up shard {shard}"))
    {
        assert!(
            Instant::now() < deadline,
            "the woken owner did not give the shard up:\n{}",
            nodes[victim].log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No id was issued twice; everything acknowledged is there once, ids gapless.
    let mut ids: Vec<u64> = acked.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "an id was acknowledged twice");
    let history = all_messages(h[(victim + 1) % 3], &alice, conv).await;
    assert_holds_exactly(&history, &acked);
    println!("{} messages acknowledged across the pause", acked.len());
    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}

/// Asserts that `history` (a conversation's messages, oldest first, whose texts are the client
/// keys they were sent with) holds exactly the acknowledged `(key, id)` pairs: ids gapless
/// from 1, no message stored twice, every acknowledged one at its id, nothing else.
fn assert_holds_exactly(history: &[serde_json::Value], acked: &[(String, u64)]) {
    let ids: Vec<u64> = history
        .iter()
        .map(|m| m["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "gapless ids"
    );
    let by_text: HashMap<String, u64> = history
        .iter()
        .zip(&ids)
        .map(|(m, &id)| (m["text"].as_str().unwrap_or("").to_string(), id))
        .collect();
    assert_eq!(by_text.len(), history.len(), "no message stored twice");
    for (key, id) in acked {
        assert_eq!(
            by_text.get(key),
            Some(id),
            "acknowledged {key} (id {id}) is there"
        );
    }
    assert_eq!(
        acked.len(),
        history.len(),
        "nothing stored that was not acknowledged"
    );
}

/// Sign-ups racing on every node: each gets its own user id, and of many racing for one name
/// exactly one gets it (the others are told it is taken); every account then signs in on
/// any node with its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_sign_ups_get_distinct_ids_and_one_name_one_owner() {
    let (nats, _dir, nodes) = blocking(|| start_cluster(3));
    let leases = blocking(|| leases(&nats));
    blocking(|| all_owned(&leases, &nodes));
    let h: Vec<client::Http> = nodes.iter().map(Node::http).collect();
    let password = |name: &str| format!("{name}-secret-pw");
    let mut racers = Vec::new();
    for i in 0..48 {
        let http = h[i % 3];
        // A third of them want the same name.
        let name = if i % 3 == 0 {
            "contested".to_string()
        } else {
            format!("racer{i}")
        };
        let body = json!({ "username": name, "password": password(&name) });
        racers.push(tokio::spawn(async move {
            let r = http.post("/api/signup", None, body).await;
            (name, r.status, r.json())
        }));
    }
    let mut ids = HashMap::new();
    let mut contested_winners = 0;
    for r in racers {
        let (name, status, v) = r.await.expect("a sign-up task");
        match status {
            201 => {
                let id = v["user"]["id"].as_u64().expect("id");
                if let Some(other) = ids.insert(id, name.clone()) {
                    panic!("user id {id} given to {other} and to {name}");
                }
                contested_winners += usize::from(name == "contested");
            }
            409 => assert_eq!(name, "contested", "{name} refused: {v}"),
            other => panic!("sign-up of {name}: {other} {v}"),
        }
    }
    assert_eq!(contested_winners, 1, "exactly one gets a contested name");
    assert_eq!(ids.len(), 33, "32 distinct names and one contested");
    for (i, (id, name)) in ids.iter().enumerate() {
        let (_, signed_in) = h[i % 3].signin(name).await;
        assert_eq!(
            signed_in,
            *id,
            "{name} signs in as itself on node {}",
            i % 3
        );
    }
    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}

/// Owners snapshot their shards and purge the streams below; the owner of a busy shard is
/// killed, and its successor, which never held the shard (no copy of its own) and cannot
/// replay the purged stream, restores the snapshot, catches up, and serves the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_owner_restores_the_snapshot_of_a_purged_shard() {
    let (nats, _dir, mut nodes) = blocking(|| start_cluster_with(3, &["--snapshot-every", "40"]));
    let leases = blocking(|| leases(&nats));
    let owners = blocking(|| all_owned(&leases, &nodes));
    let h: Vec<client::Http> = nodes.iter().map(Node::http).collect();
    let (alice, _) = h[0].signup("alice").await;
    h[1].signup("bob").await;
    let conv = h[0].direct(&alice, "bob").await;
    let shard = shard_of(conv);
    let victim = nodes
        .iter()
        .position(|n| n.name == owners[shard as usize])
        .expect("the owner is one of the nodes");
    // Send through a node other than the owner, so the device survives the kill.
    let via = (victim + 1) % 3;
    let mut a = Device::connect("alice", nodes[via].addr, &alice).await;
    let sent = 150;
    for i in 0..sent {
        a.send_acked(conv, &format!("m{i}"), &format!("k{i}")).await;
    }
    let snapshot = format!("snapshot of shard {shard} at LSN");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes[victim].log().contains(&snapshot) {
        assert!(
            Instant::now() < deadline,
            "no snapshot of shard {shard}:\n{}",
            nodes[victim].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.close().await;
    blocking(|| nodes[victim].kill());
    let successor = blocking(|| new_owner(&leases, shard, &nodes[victim].name));
    let next = nodes
        .iter()
        .position(|n| n.name == successor)
        .expect("the successor is one of the nodes");
    let history = all_messages(h[via], &alice, conv).await;
    let texts: Vec<String> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        texts,
        (0..sent).map(|i| format!("m{i}")).collect::<Vec<_>>(),
        "the whole history after the takeover"
    );
    assert!(
        nodes[next]
            .log()
            .contains(&format!("restored shard {shard} from its snapshot")),
        "the successor restored the snapshot:\n{}",
        nodes[next].log()
    );
    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}

/// The shards a node's log says a read of `what` for `user` asked, each time it did.
fn shards_asked(node: &Node, what: &str, user: u64) -> Vec<Vec<u32>> {
    let marker = format!(": {what} of user {user} asked shards [");
    node.log()
        .lines()
        .filter_map(|l| l.split_once(marker.as_str()).map(|(_, rest)| rest))
        .map(|rest| {
            rest.trim_end_matches(']')
                .split(',')
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unread_and_inbox_ask_only_the_shards_of_the_users_conversations() {
    let (nats, _dir, nodes) = blocking(|| start_cluster(3));
    let leases = blocking(|| leases(&nats));
    blocking(|| all_owned(&leases, &nodes));
    let h: Vec<_> = nodes.iter().map(Node::http).collect();
    let (alice, alice_id) = h[0].signup("alice").await;
    let mut peers = Vec::new();
    for (i, name) in ["bob", "carol", "dave"].iter().enumerate() {
        peers.push((name.to_string(), h[i % 3].signup(name).await));
    }
    // Alice's conversations: three direct chats, a group, and a group she is removed from;
    // they land in a few of the 8 shards.
    let mut current = Vec::new();
    for (name, _) in &peers {
        current.push(h[1].direct(&alice, name).await);
    }
    let (bob, bob_id) = (&peers[0].1 .0, peers[0].1 .1);
    let r = h[2]
        .post(
            "/api/groups",
            Some(bob),
            json!({ "name": "kept", "members": ["alice", "carol"] }),
        )
        .await;
    assert_eq!(r.status, 201, "group: {:?}", r.json());
    current.push(r.json()["id"].as_u64().expect("group id"));
    let r = h[2]
        .post(
            "/api/groups",
            Some(bob),
            json!({ "name": "left", "members": ["alice", "dave"] }),
        )
        .await;
    assert_eq!(r.status, 201, "group: {:?}", r.json());
    let left = r.json()["id"].as_u64().expect("group id");
    let r = h[0]
        .req(
            "DELETE",
            &format!("/api/conversations/{left}/members/{alice_id}"),
            Some(bob),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "remove alice: {:?}", r.json());
    let mut expected: Vec<u32> = current
        .iter()
        .chain([&left])
        .map(|&c| shard_of(c))
        .collect();
    expected.sort_unstable();
    expected.dedup();
    assert!(
        expected.len() < harness::SHARDS as usize,
        "alice's conversations leave some shards out: {expected:?}"
    );

    // While alice is away, each peer sends to her (and bob to both groups).
    for (i, (name, (token, _))) in peers.iter().enumerate() {
        let mut d = Device::connect(name, nodes[(i + 1) % 3].addr, token).await;
        for k in 0..=i {
            d.send_acked(current[i], &format!("{name} {k}"), &format!("{name}-{k}"))
                .await;
        }
        if i == 0 {
            d.send_acked(current[3], "to the group", "bob-g").await;
            d.send_acked(left, "after alice left", "bob-l").await;
        }
        d.close().await;
    }
    let want: BTreeMap<u64, u64> = [
        (current[0], 1),
        (current[1], 2),
        (current[2], 3),
        // The group's creation notice and bob's message.
        (current[3], 2),
    ]
    .into();
    for (n, node) in nodes.iter().enumerate() {
        let before = shards_asked(node, "unread messages", alice_id).len();
        let d = Device::connect("alice", node.addr, &alice).await;
        let got: BTreeMap<u64, u64> = d.unread()["conversations"]
            .as_array()
            .expect("conversations")
            .iter()
            .map(|e| {
                (
                    e["conversation"].as_u64().expect("conversation"),
                    e["count"].as_u64().expect("count"),
                )
            })
            .collect();
        assert_eq!(got, want, "alice's unread through node{n}: {}", d.unread());
        d.close().await;
        let asked = shards_asked(node, "unread messages", alice_id);
        assert_eq!(
            asked.get(before),
            Some(&expected),
            "node{n} asked only the shards of alice's conversations (all: {asked:?})"
        );

        let inbox = h[n].get("/api/inbox", &alice).await.json();
        let mut ids: Vec<u64> = inbox["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .map(|e| e["conversation"].as_u64().expect("conversation"))
            .collect();
        ids.sort_unstable();
        let mut want_ids = current.clone();
        want_ids.sort_unstable();
        assert_eq!(
            ids, want_ids,
            "alice's inbox (not the group she left): {inbox}"
        );
        assert_eq!(
            shards_asked(node, "inbox", alice_id).last(),
            Some(&expected),
            "node{n}'s inbox read"
        );
    }
    // Bob's lists too: his conversations' shards only, the group alice left included.
    let bob_inbox = h[1].get("/api/inbox", bob).await.json();
    assert_eq!(
        bob_inbox["entries"].as_array().map(Vec::len),
        Some(3),
        "{bob_inbox}"
    );
    let mut bob_expected: Vec<u32> = [current[0], current[3], left]
        .iter()
        .map(|&c| shard_of(c))
        .collect();
    bob_expected.sort_unstable();
    bob_expected.dedup();
    assert_eq!(
        shards_asked(&nodes[1], "inbox", bob_id).last(),
        Some(&bob_expected)
    );
    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}

/// The shard a user's own records live in (FNV-1a of the id, as the nodes hash it).
fn home_shard(user: u64) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % harness::SHARDS as u64) as u32
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// The presence frames a device got about `user`, as (online, last_seen_ms).
fn presence_frames(d: &Device, user: u64) -> Vec<(bool, Option<u64>)> {
    d.frames
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["type"] == "presence" && v["user"] == user)
        .map(|v| (v["online"] == true, v["last_seen_ms"].as_u64()))
        .collect()
}

/// How `viewer` sees `user` in conversation `conv`: (online, last_seen_ms).
async fn seen_in_view(
    http: client::Http,
    token: &str,
    conv: u64,
    user: u64,
) -> (bool, Option<u64>) {
    let view = http
        .get(&format!("/api/conversations/{conv}"), token)
        .await
        .json();
    let m = view["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == user)
        .unwrap_or_else(|| panic!("{user} in {view}"))
        .clone();
    (m["online"] == true, m["last_seen_ms"].as_u64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_crosses_nodes_and_a_killed_nodes_users_go_offline_with_last_seen() {
    let (nats, _dir, mut nodes) = blocking(|| start_cluster(3));
    let leases = blocking(|| leases(&nats));
    let owners = blocking(|| all_owned(&leases, &nodes));
    let h: Vec<_> = nodes.iter().map(Node::http).collect();
    let (alice, alice_id) = h[0].signup("alice").await;
    let (bob, bob_id) = h[1].signup("bob").await;
    let direct = h[0].direct(&alice, "bob").await;
    // Alice's device goes on the node that owns her shard, the one that announces her: its
    // death takes the announcer away too, and her shard's next owner must find her gone.
    let a = nodes
        .iter()
        .position(|n| n.name == owners[home_shard(alice_id) as usize])
        .expect("the owner of alice's shard is a node");
    let b = (a + 1) % 3;
    println!("alice on node{a} (her shard's owner), bob on node{b}");

    let bob_dev = Device::connect("bob", nodes[b].addr, &bob).await;
    let connected_ms = epoch_ms();
    let alice_dev = Device::connect("alice", nodes[a].addr, &alice).await;
    bob_dev
        .wait_for(|v| v["type"] == "presence" && v["user"] == alice_id && v["online"] == true)
        .await;
    // Views on any node see her online; alice sees bob online too.
    for n in [b, (a + 2) % 3] {
        assert_eq!(
            seen_in_view(h[n], &bob, direct, alice_id).await,
            (true, None),
            "alice through node{n}"
        );
    }
    assert_eq!(
        seen_in_view(h[a], &alice, direct, bob_id).await,
        (true, None)
    );

    // Her node dies: nobody says goodbye for her. Her shard's next owner finds her silent.
    blocking(|| nodes[a].kill());
    let killed = Instant::now();
    let killed_ms = epoch_ms();
    println!("{:8.3} node{a} killed", harness::clock());
    let deadline = Duration::from_secs(25);
    loop {
        if presence_frames(&bob_dev, alice_id)
            .iter()
            .any(|(on, _)| !on)
        {
            break;
        }
        assert!(
            killed.elapsed() < deadline,
            "bob was not told alice went offline within {deadline:?} of her node's death"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "alice offline for bob {:?} after her node (and her shard's owner) was killed",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // nothing told twice
    let frames = presence_frames(&bob_dev, alice_id);
    assert_eq!(frames.len(), 2, "one online, one offline: {frames:?}");
    let last_seen = frames[1].1.expect("the offline frame carries last seen");
    assert!(
        (connected_ms..=killed_ms).contains(&last_seen),
        "last seen {last_seen} is her last heartbeat: after she connected ({connected_ms}), \
         before her node died ({killed_ms})"
    );
    for n in [b, (a + 2) % 3] {
        assert_eq!(
            seen_in_view(h[n], &bob, direct, alice_id).await,
            (false, Some(last_seen)),
            "alice through node{n}"
        );
    }
    alice_dev.close().await;
    bob_dev.close().await;

    // Every node restarts: last seen is in alice's shard, not in any node's memory.
    for n in &mut nodes {
        blocking(|| n.restart());
    }
    blocking(|| all_owned(&leases, &nodes));
    let h: Vec<_> = nodes.iter().map(Node::http).collect();
    for (n, http) in h.iter().enumerate() {
        assert_eq!(
            seen_in_view(*http, &bob, direct, alice_id).await,
            (false, Some(last_seen)),
            "alice through node{n} after the restart"
        );
    }
    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}
