//! What a user may read: every range of messages they were a member for, and nothing live
//! from a conversation they left.

use serde_json::{json, Value};

use crate::client::{ws_open, Http, Ws};
use crate::{start_in, tempdir};

fn ids(page: &[Value]) -> Vec<u64> {
    page.iter().filter_map(|m| m["id"].as_u64()).collect()
}

async fn add(h: &Http, token: &str, conv: u64, name: &str) {
    let r = h
        .post(
            &format!("/api/conversations/{conv}/members"),
            Some(token),
            json!({ "username": name }),
        )
        .await;
    assert_eq!(r.status, 200, "add {name}: {:?}", r.json());
}

async fn remove(h: &Http, token: &str, conv: u64, user: u64) {
    let r = h
        .req(
            "DELETE",
            &format!("/api/conversations/{conv}/members/{user}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
}

async fn say(ws: &mut Ws, conv: u64, text: &str) -> u64 {
    ws.send_text(conv, text, text).await["id"]
        .as_u64()
        .expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_again_keeps_the_history_of_every_earlier_membership() {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    let h = s.http;
    let (ta, alice) = h.signup("alice").await;
    let (tb, bob) = h.signup("bob").await;
    h.signup("carol").await;
    let g = h
        .post(
            "/api/groups",
            Some(&ta),
            json!({ "name": "g", "members": ["bob", "carol"] }),
        )
        .await
        .json()["id"]
        .as_u64()
        .expect("group"); // 1: created
    let (mut wa, _) = ws_open(h.addr, &ta).await;
    let (mut wb, _) = ws_open(h.addr, &tb).await;
    say(&mut wa, g, "two").await;
    say(&mut wa, g, "three").await;
    remove(&h, &ta, g, bob).await; // 4: removed
    say(&mut wa, g, "five").await;
    add(&h, &ta, g, "bob").await; // 6: added
    say(&mut wa, g, "seven").await;
    // The creator leaves and is added back by bob.
    remove(&h, &ta, g, alice).await; // 8: left
    say(&mut wb, g, "nine").await;
    add(&h, &tb, g, "alice").await; // 10: added
    say(&mut wb, g, "eleven").await;

    check_rejoined_history(&h, g).await;
    drop((wa, wb));
    s.running.shutdown().await.expect("clean shutdown");
    // And after a restart.
    let s = start_in(dir.path()).await;
    check_rejoined_history(&s.http, g).await;
    s.running.shutdown().await.expect("clean shutdown");
}

async fn check_rejoined_history(h: &Http, g: u64) {
    let (ta, _) = h.signin("alice").await;
    let (tb, _) = h.signin("bob").await;
    assert_eq!(
        ids(&h.history(&tb, g, "").await),
        [1, 2, 3, 6, 7, 8, 9, 10, 11]
    );
    assert_eq!(
        ids(&h.history(&ta, g, "").await),
        [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    );
    assert_eq!(
        ids(&h.history(&tb, g, "?around=2&limit=3").await),
        [1, 2, 3],
        "an id from the first membership is found"
    );
    assert_eq!(ids(&h.history(&tb, g, "?before=6&limit=2").await), [2, 3]);
    assert_eq!(ids(&h.history(&tb, g, "?after=2&limit=3").await), [3, 6, 7]);
    assert_eq!(
        ids(&h.history(&ta, g, "?before=10&limit=3").await),
        [6, 7, 8]
    );
    for hidden in [4, 5] {
        let r = h
            .get(
                &format!("/api/conversations/{g}/messages?around={hidden}"),
                &tb,
            )
            .await;
        assert_eq!(r.status, 400, "bob was away for {hidden}");
        let r = h
            .get(
                &format!("/api/conversations/{g}/messages/{hidden}/receipts"),
                &tb,
            )
            .await;
        assert_eq!(r.status, 404);
    }
    let r = h
        .get(&format!("/api/conversations/{g}/messages/2/receipts"), &tb)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn former_members_see_no_live_data() {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    let h = s.http;
    let (ta, _) = h.signup("alice").await;
    h.signup("bob").await;
    let (tc, carol) = h.signup("carol").await;
    h.signup("dave").await;
    let g = h
        .post(
            "/api/groups",
            Some(&ta),
            json!({ "name": "g", "members": ["bob", "carol"] }),
        )
        .await
        .json()["id"]
        .as_u64()
        .expect("group"); // 1
    let (mut wa, _) = ws_open(h.addr, &ta).await;
    say(&mut wa, g, "two").await;
    let (_wc, _) = ws_open(h.addr, &tc).await; // carol is online
    remove(&h, &ta, g, carol).await; // 3: removed
    add(&h, &ta, g, "dave").await; // 4: added
    say(&mut wa, g, "five").await;

    let r = h.get(&format!("/api/conversations/{g}"), &tc).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let v = r.json();
    assert_eq!(v["member"], false, "{v}");
    assert_eq!(
        v["members"],
        json!([]),
        "no members, presence or cursors: {v}"
    );
    assert_eq!(
        v["last_id"], 2,
        "her last message, not the conversation's: {v}"
    );
    assert_eq!(v["title"], "g");
    // She still reads her history, but not its receipts (live cursors).
    assert_eq!(ids(&h.history(&tc, g, "").await), [1, 2]);
    let r = h
        .get(&format!("/api/conversations/{g}/messages/2/receipts"), &tc)
        .await;
    assert_eq!(r.status, 403);
    // A current member sees everything.
    let v = h.get(&format!("/api/conversations/{g}"), &ta).await.json();
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["last_id"], 5);
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_point_only_at_messages_the_sender_can_see() {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    let h = s.http;
    let (ta, _) = h.signup("alice").await;
    h.signup("bob").await;
    let (td, _) = h.signup("dave").await;
    let g = h
        .post(
            "/api/groups",
            Some(&ta),
            json!({ "name": "g", "members": ["bob"] }),
        )
        .await
        .json()["id"]
        .as_u64()
        .expect("group"); // 1
    let (mut wa, _) = ws_open(h.addr, &ta).await;
    say(&mut wa, g, "secret before dave").await; // 2
    add(&h, &ta, g, "dave").await; // 3
    let (mut wd, _) = ws_open(h.addr, &td).await;
    for (reply_to, ok) in [(2, false), (99, false), (0, false), (3, true)] {
        let key = format!("r{reply_to}");
        wd.send(json!({ "type": "send", "conversation": g, "text": "re", "reply_to": reply_to, "client_key": key }))
            .await;
        let f = wd.next_where(|v| v["client_key"] == key.as_str()).await;
        if ok {
            assert_eq!(f["type"], "ack", "reply to {reply_to}: {f}");
            assert_eq!(f["message"]["reply_to"], reply_to);
        } else {
            assert_eq!(
                (f["type"].as_str(), f["code"].as_str()),
                (Some("error"), Some("bad_id")),
                "reply to {reply_to}: {f}"
            );
        }
    }
    s.running.shutdown().await.expect("clean shutdown");
}
