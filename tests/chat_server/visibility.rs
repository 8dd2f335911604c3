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
        ids(&h.history(&tb, g, "?around=2&limit=2").await),
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
