//! Uploaded images are the cluster's, not a node's: uploaded through one node, served by
//! every node, after a restart of all of them too, to the same readers a single server
//! allows; and the quota counts uploads through every node.

use std::time::Duration;

use serde_json::json;
use tokio::task::block_in_place as blocking;

use crate::client::Http;
use crate::harness::{all_owned, leases, start_cluster_with, Device, Node};

const QUOTA: usize = 3000;

/// A PNG as the server sniffs it, `len` bytes long, different for each `seed`.
fn png(len: usize, seed: u8) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend((0..len - b.len()).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b
}

async fn upload(h: Http, token: &str, bytes: Vec<u8>) -> crate::client::Resp {
    h.req(
        "POST",
        "/api/assets",
        Some(token),
        Some(("image/png", bytes)),
    )
    .await
}

/// Status, content type and bytes of `url` fetched through `h` by `token`.
async fn fetch(h: Http, token: &str, url: &str) -> (u16, String, Vec<u8>) {
    let r = h.req("GET", url, Some(token), None).await;
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (r.status, ct, r.body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_sent_through_one_node_is_served_by_every_node_to_members_only() {
    let quota = QUOTA.to_string();
    let (nats, dir, mut nodes) =
        blocking(|| start_cluster_with(3, &["--upload-quota-bytes", &quota]));
    let leases = blocking(|| leases(&nats));
    blocking(|| all_owned(&leases, &nodes));
    let h: Vec<Http> = nodes.iter().map(Node::http).collect();
    let (alice, _) = h[0].signup("alice").await;
    let (bob, _) = h[1].signup("bob").await;
    let (carol, _) = h[2].signup("carol").await;
    let direct = h[0].direct(&alice, "bob").await;

    // Alice uploads through node0; before she sends it, only she may read it, anywhere.
    let image = png(2000, 7);
    let r = upload(h[0], &alice, image.clone()).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let url = r.json()["url"].as_str().expect("url").to_string();
    assert_eq!(
        fetch(h[2], &alice, &url).await.2,
        image,
        "the uploader, through node2"
    );
    assert_eq!(fetch(h[1], &bob, &url).await.0, 403, "not sent to bob yet");

    // She sends it from a device on node0; bob's device on node1 gets the message.
    let mut alice_dev = Device::connect("alice", nodes[0].addr, &alice).await;
    let bob_dev = Device::connect("bob", nodes[1].addr, &bob).await;
    alice_dev
        .frame(
            json!({ "type": "send", "conversation": direct, "text": "look",
                       "attachment": url, "client_key": "img" }),
        )
        .await;
    let ack = alice_dev
        .answer("img", Duration::from_secs(30))
        .await
        .expect("an answer to the send");
    assert_eq!(ack["type"], "ack", "{ack}");
    let pushed = bob_dev
        .wait_for(|v| v["type"] == "message" && v["message"]["attachment"] == url.as_str())
        .await;
    println!("bob got {pushed}");

    // Bob fetches it through node1 (his) and node2 (neither his nor the uploader's).
    for n in [1, 2] {
        let (status, ct, bytes) = fetch(h[n], &bob, &url).await;
        assert_eq!(
            (status, ct.as_str()),
            (200, "image/png"),
            "bob through node{n}"
        );
        assert!(bytes == image, "bob through node{n}: other bytes");
    }
    // Carol is in no conversation it was sent to: refused through every node.
    for (n, http) in h.iter().enumerate() {
        assert_eq!(
            fetch(*http, &carol, &url).await.0,
            403,
            "carol through node{n}"
        );
    }
    let missing = "/api/assets/0123456789abcdef0123456789abcdef";
    assert_eq!(fetch(h[2], &bob, missing).await.0, 404);
    alice_dev.close().await;
    bob_dev.close().await;

    // Every node restarts without its copies: the image is in the cluster, not on a node.
    for n in &mut nodes {
        blocking(|| n.kill());
    }
    for n in &nodes {
        let cache = dir.path().join(&n.name).join("asset-cache");
        if cache.exists() {
            std::fs::remove_dir_all(&cache).expect("remove a node's asset copies");
        }
    }
    for n in &mut nodes {
        blocking(|| n.restart());
    }
    blocking(|| all_owned(&leases, &nodes));
    let h: Vec<Http> = nodes.iter().map(Node::http).collect();
    for (n, http) in h.iter().enumerate() {
        let (status, _, bytes) = fetch(*http, &bob, &url).await;
        assert_eq!(status, 200, "bob through node{n} after the restart");
        assert!(
            bytes == image,
            "bob through node{n} after the restart: other bytes"
        );
        assert_eq!(
            fetch(*http, &carol, &url).await.0,
            403,
            "carol through node{n}"
        );
    }

    // The quota counts her upload through node0 on node2 too: 2000 more bytes would pass
    // it, 500 do not.
    let r = upload(h[2], &alice, png(2000, 8)).await;
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "quota_exceeded");
    let r = upload(h[2], &alice, png(500, 9)).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));

    blocking(|| drop(nodes));
    blocking(|| drop(leases));
    blocking(|| drop(nats));
}
