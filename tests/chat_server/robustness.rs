//! Slow and broken clients, failed writes, and the log of what the server refused.

use std::time::Instant;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{ws_open, WAIT};
use crate::server::jsonlog::Fault;
use crate::{start, start_in, tempdir, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_closed_after_the_header_timeout() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.header_timeout = std::time::Duration::from_millis(300);
    let s = start(cfg).await;
    let mut tcp = tokio::net::TcpStream::connect(s.http.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET /api/me HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write half a request");
    // The server gives up on it and closes the connection (whatever it answers first).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the half-sent request was kept open");
    // Whole requests are served as before.
    let (t, _) = s.http.signup("alice").await;
    assert_eq!(s.http.get("/api/me", &t).await.status, 200);
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_input_is_logged_with_its_reason_at_a_bounded_rate() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.reject_log_rate = 0.001;
    cfg.reject_log_burst = 5.0;
    let s = start(cfg).await;
    let h = s.http;
    let (t, _) = h.signup("alice").await;
    let log = &s.running.state().rejects;
    assert_eq!(log.counts(), (0, 0));

    let r = h
        .req(
            "POST",
            "/api/signup",
            None,
            Some(("application/json", b"{not json".to_vec())),
        )
        .await;
    assert_eq!(r.status, 400);
    let lines = log.recent();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("POST /api/signup: 400 bad_request:"),
        "{lines:?}"
    );
    let (mut w, _) = ws_open(h.addr, &t).await;
    w.send_raw(Message::text("this is not json")).await;
    assert_eq!(w.next().await["code"], "bad_frame");
    let lines = log.recent();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("bad_frame: not JSON"), "{lines:?}");
    assert!(lines[1].contains("user 1"), "{lines:?}");

    // A flood is counted, not printed line by line.
    let t0 = Instant::now();
    for _ in 0..50 {
        assert_eq!(h.get("/api/me", "wrong-token").await.status, 401);
    }
    let (printed, suppressed) = log.counts();
    let allowed = 5 + (t0.elapsed().as_secs_f64() * 0.001).ceil() as u64;
    assert!(
        printed <= allowed,
        "{printed} lines printed, at most {allowed}"
    );
    assert_eq!(printed + suppressed, 52);
    s.running.shutdown().await.expect("clean shutdown");
}

/// Alice's sign-up meets `fault` in the accounts file and fails with 500; bob then signs up;
/// the server restarts on the same directory. Returns the directory (kept alive), the
/// restarted server, and bob's id.
async fn failed_signup_then_restart(fault: Fault) -> (tempfile::TempDir, crate::Srv, u64) {
    let dir = tempdir();
    let s = start_in(dir.path()).await;
    s.running.state().accounts.fail_next_append(fault);
    let r = s
        .http
        .post(
            "/api/signup",
            None,
            json!({ "username": "alice", "password": "alice-secret-pw" }),
        )
        .await;
    assert_eq!(r.status, 500);
    let (_, bob) = s.http.signup("bob").await;
    s.running.shutdown().await.expect("clean shutdown");
    let s = start_in(dir.path()).await;
    (dir, s, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_account_write_leaves_no_partial_line() {
    let (_dir, s, _) = failed_signup_then_restart(Fault::ShortWrite).await;
    // The accounts file opens cleanly: bob is there, alice's half line is not.
    s.http.signin("bob").await;
    s.http.signup("alice").await;
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_account_fsync_never_gives_one_id_two_names() {
    let (_dir, s, bob) = failed_signup_then_restart(Fault::SyncFails).await;
    let (_, bob_again) = s.http.signin("bob").await;
    assert_eq!(bob_again, bob);
    // Alice was told her sign-up failed: her name is free, and never shares an id.
    let (_, alice) = s.http.signup("alice").await;
    assert_ne!(alice, bob);
    s.running.shutdown().await.expect("clean shutdown");
}
