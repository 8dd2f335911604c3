//! The protocol as `docs/protocol.md` states it: close codes, error bodies and frames, paging.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ws_open, Pair};
use crate::{start_in, tempdir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_one_mib_close_the_connection_with_1009() {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    let (t, _) = s.http.signup("alice").await;

    // One frame of 2 MiB.
    let (mut w, _) = ws_open(s.http.addr, &t).await;
    // The server may close before the client has written the whole frame: the send may
    // fail, the close code must still arrive.
    let _ = w.stream.send(Message::text("x".repeat(2 << 20))).await;
    let (code, _) = w.until_closed().await;
    assert_eq!(code, Some(1009), "one big frame");

    // A message of 1.5 MiB in fragments of 256 KiB each.
    let (mut w, _) = ws_open(s.http.addr, &t).await;
    let part = vec![b'y'; 256 << 10];
    for i in 0..6 {
        let op = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.clone(), op, i == 5);
        if w.stream.send(Message::Frame(frame)).await.is_err() {
            break; // the server may have closed already
        }
    }
    let (code, _) = w.until_closed().await;
    assert_eq!(code, Some(1009), "a fragmented message");
    s.running.shutdown().await.expect("clean shutdown");
}

/// Method, path, body (content type, bytes), expected status and error code.
type Case = (
    &'static str,
    &'static str,
    Option<(&'static str, Vec<u8>)>,
    u16,
    &'static str,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_have_the_documented_codes_and_json_bodies() {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    let h = s.http;
    let (t, _) = h.signup("alice").await;
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/signup",
            Some((
                "application/json",
                format!("{{\"username\":\"{}\"}}", "x".repeat(100_000)).into_bytes(),
            )),
            413,
            "too_large",
        ),
        (
            "POST",
            "/api/signup",
            Some(("text/plain", b"{\"username\":\"bob\"}".to_vec())),
            415,
            "unsupported_type",
        ),
        (
            "POST",
            "/api/signup",
            Some(("application/json", b"{\"username\":\"bob\"}".to_vec())),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/api/signup",
            Some((
                "application/json",
                b"{\"username\":3,\"password\":4}".to_vec(),
            )),
            400,
            "bad_request",
        ),
        ("GET", "/api/signup", None, 405, "method_not_allowed"),
        ("DELETE", "/api/inbox", None, 405, "method_not_allowed"),
        ("GET", "/api/nothing-here", None, 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let r = h.req(method, path, Some(&t), body).await;
        assert_eq!(r.status, status, "{method} {path}");
        assert_eq!(r.json()["error"], code, "{method} {path}: {:?}", r.json());
        assert!(r.json()["message"].is_string());
    }
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frames_echo_only_what_the_frame_had() {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    let (t, _) = s.http.signup("alice").await;
    let (mut w, _) = ws_open(s.http.addr, &t).await;
    w.send(json!({ "type": "send", "conversation": 999, "text": "hi" }))
        .await;
    let e = w.next().await;
    assert_eq!(e["code"], "not_found", "{e}");
    assert_eq!(e["frame"], "send", "{e}");
    assert!(
        e.get("client_key").is_none(),
        "no client_key in the frame, none in the answer: {e}"
    );
    w.send(json!({ "type": "typing", "conversation": 999 }))
        .await;
    let e = w.next().await;
    assert!(e.get("client_key").is_none(), "{e}");
    w.send_raw(Message::text("not json")).await;
    let e = w.next().await;
    assert!(
        e.get("frame").is_none() && e.get("client_key").is_none(),
        "{e}"
    );
    w.send(json!({ "type": "send", "conversation": 999, "text": "hi", "client_key": "k" }))
        .await;
    let e = w.next().await;
    assert_eq!(e["client_key"], "k", "{e}");
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn around_returns_at_most_limit_messages() {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    let Pair {
        alice: ta,
        bob: tb,
        conv,
        ..
    } = s.http.alice_and_bob().await;
    let (mut wa, _) = ws_open(s.http.addr, &ta).await;
    for i in 1..=45 {
        wa.send_text(conv, &format!("m{i}"), &format!("k{i}")).await;
    }
    let ids = |page: Vec<Value>| {
        page.iter()
            .filter_map(|m| m["id"].as_u64())
            .collect::<Vec<_>>()
    };
    for (limit, want) in [
        (6, (37..=42).collect::<Vec<u64>>()),
        (5, (38..=42).collect()),
        (1, vec![40]),
        (2, vec![39, 40]),
    ] {
        let page = s
            .http
            .history(&tb, conv, &format!("?around=40&limit={limit}"))
            .await;
        assert_eq!(ids(page), want, "limit {limit}");
    }
    s.running.shutdown().await.expect("clean shutdown");
}

/// The server's clock is paused here, so time moves only from one timer to the next and the
/// moment a silent client is dropped is exact, not a guess about scheduling.
#[tokio::test(flavor = "current_thread")]
async fn a_silent_client_goes_offline_exactly_offline_after_past_its_last_frame() {
    let dir = tempdir();
    let mut cfg = crate::test_config(dir.path());
    cfg.heartbeat = Duration::from_millis(1000);
    cfg.offline_after = Duration::from_millis(1500);
    let s = crate::start(cfg.clone()).await;
    let (ta, alice) = s.http.signup("alice").await;
    let (tb, _) = s.http.signup("bob").await;
    s.http.direct(&tb, "alice").await;
    let (mut wb, _) = ws_open(s.http.addr, &tb).await;
    let (mut wa, _) = ws_open(s.http.addr, &ta).await;
    let p = wb.next_type("presence").await;
    assert_eq!(
        (p["user"].as_u64(), p["online"].as_bool()),
        (Some(alice), Some(true))
    );

    tokio::time::pause();
    // Alice's last frame; then she reads nothing more (so answers no ping).
    wa.send(json!({ "type": "ping" })).await;
    assert_eq!(wa.next().await["type"], "pong");
    let last_frame = tokio::time::Instant::now();
    // Bob keeps answering pings by reading.
    let p = wb
        .next_where(|v| v["type"] == "presence" && v["online"] == false)
        .await;
    let silent = last_frame.elapsed();
    assert_eq!(p["user"].as_u64(), Some(alice));
    // Not a moment before offline_after, nor up to a ping interval after it (the server's
    // clock is virtual: these are its exact timer deadlines).
    assert!(silent >= cfg.offline_after, "{silent:?}");
    assert!(
        silent < cfg.offline_after + cfg.heartbeat / 2,
        "offline after {silent:?}"
    );
    tokio::time::resume();
    drop(wa);
    s.running.shutdown().await.expect("clean shutdown");
}
