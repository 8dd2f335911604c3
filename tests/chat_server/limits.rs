//! Limits: memory held by password hashing, back-off of failed sign-ins, rate limits and
//! quotas of everything a user can make the server do.

use serde_json::json;

use crate::client::{ws_open, Http, Pair, Resp, WAIT};
use crate::{example_binary, start, tempdir, test_config, PNG};

/// Resident set size of process `pid`, in bytes.
#[cfg(target_os = "linux")]
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

async fn signup_status(h: Http, name: String) -> Resp {
    h.post(
        "/api/signup",
        None,
        json!({ "username": name, "password": "correct horse battery" }),
    )
    .await
}

/// 600 sign-ups with the default argon2 cost (19 MiB a hash), 200 at a time, against the
/// built server binary: its resident memory after every wave stays under one bound that
/// does not depend on the number of waves (the hashing threads' memory plus a margin).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_signups_in_waves_keep_server_memory_bounded() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};

    let Some(bin) = example_binary() else {
        panic!("target/<profile>/examples/chat_server is not built: run `cargo test --release`, which builds examples");
    };
    let dir = tempdir();
    const WORKERS: u64 = 2;
    // Settings through the environment, so that the same test runs against any build.
    let mut child = tokio::process::Command::new(&bin)
        .args(["--port", "0", "--data"])
        .arg(dir.path())
        .env("CHAT_HASH_WORKERS", WORKERS.to_string())
        .env("CHAT_HASH_QUEUE", "1000")
        .env("CHAT_AUTH_RATE", "100000")
        .env("CHAT_AUTH_BURST", "100000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the example");
    let pid = child.id().expect("pid");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(WAIT, out.read_line(&mut line))
        .await
        .expect("server prints its URL")
        .expect("read stdout");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let h = Http { addr };

    // One argon2 hash with the default cost holds 19 MiB; the server may keep one per
    // hashing thread, plus everything else it needs (store, runtime, buffers).
    let bound = 128 * MIB + WORKERS * 19 * MIB;
    const MIB: u64 = 1 << 20;
    let mut seen = Vec::new();
    for wave in 0..3 {
        let tasks: Vec<_> = (0..200)
            .map(|i| tokio::spawn(signup_status(h, format!("w{wave}u{i}"))))
            .collect();
        for t in tasks {
            let r = t.await.expect("sign-up task");
            assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
        }
        let rss = rss_bytes(pid);
        seen.push(rss / MIB);
        assert!(
            rss <= bound,
            "after wave {wave}: RSS {} MiB > {} MiB (all waves: {seen:?} MiB)",
            rss / MIB,
            bound / MIB
        );
    }
    println!("server RSS after each wave of 200 sign-ups: {seen:?} MiB");
    let _ = child.kill().await;
}

/// More sign-ups at once than hashing threads and queue hold: the rest are told to come
/// back (429 with `retry_after_ms`) instead of each taking a thread and its memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_hashes_are_bounded_and_the_rest_get_429() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.argon2_memory_kib = 19_456;
    cfg.argon2_iterations = 2;
    cfg.hash_workers = 1;
    cfg.hash_queue = 2;
    let s = start(cfg).await;
    let tasks: Vec<_> = (0..24)
        .map(|i| tokio::spawn(signup_status(s.http, format!("burst{i}"))))
        .collect();
    let (mut created, mut limited) = (0, 0);
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            201 => created += 1,
            429 => {
                let v = r.json();
                assert_eq!(v["error"], "rate_limited", "{v}");
                assert!(v["retry_after_ms"].as_u64().unwrap_or(0) > 0, "{v}");
                assert!(r.headers.contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("status {other}: {:?}", r.json()),
        }
    }
    assert!(created >= 1, "{created} created");
    assert!(limited >= 1, "{limited} limited of 24");
    assert_eq!(created + limited, 24);
    s.running.shutdown().await.expect("clean shutdown");
}

async fn signin(h: &Http, name: &str, password: &str) -> Resp {
    h.post(
        "/api/signin",
        None,
        json!({ "username": name, "password": password }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_back_off_per_account() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.signin_free_failures = 5;
    let s = start(cfg).await;
    let h = s.http;
    h.signup("alice").await;
    let mut answered = 0;
    let mut limited = Vec::new();
    for _ in 0..40 {
        let r = signin(&h, "alice", "not-her-password").await;
        match r.status {
            401 => answered += 1,
            429 => {
                let v = r.json();
                assert_eq!(v["error"], "rate_limited", "{v}");
                limited.push(v["retry_after_ms"].as_u64().unwrap_or(0));
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!(answered, 5, "only the first failures are checked");
    assert_eq!(limited.len(), 35);
    assert!(limited.iter().all(|&ms| ms > 0), "{limited:?}");
    // Even the right password waits until the back-off is over...
    assert_eq!(
        signin(&h, "alice", "alice-secret-pw").await.status,
        429,
        "locked"
    );
    // ...while other accounts from the same address are not locked.
    h.signup("bob").await;
    h.signin("bob").await;
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_back_off_per_client_address() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.signin_free_failures = 1000;
    cfg.signin_free_failures_per_addr = 8;
    let s = start(cfg).await;
    let h = s.http;
    h.signup("alice").await;
    let mut statuses = Vec::new();
    for i in 0..20 {
        statuses.push(
            signin(&h, &format!("guess{i}"), "some-password")
                .await
                .status,
        );
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 401).count(),
        8,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        12,
        "{statuses:?}"
    );
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_are_rate_limited_per_client_address() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.auth_rate = 0.01;
    cfg.auth_burst = 3.0;
    let s = start(cfg).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(signup_status(s.http, format!("user{i}")).await.status);
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429, 429]);
    let r = signin(&s.http, "user0", "correct horse battery").await;
    assert_eq!(r.status, 429, "sign-ins share the address's budget");
    assert!(r.json()["retry_after_ms"].as_u64().unwrap_or(0) > 0);
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_changes_are_rate_limited_per_user() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.conv_rate = 0.01;
    cfg.conv_burst = 3.0;
    let s = start(cfg).await;
    let h = s.http;
    let (ta, _) = h.signup("alice").await;
    let (tb, _) = h.signup("bob").await;
    let (_, carol) = h.signup("carol").await;
    let mut statuses = Vec::new();
    let mut first = 0;
    for i in 0..5 {
        let r = h
            .post(
                "/api/groups",
                Some(&ta),
                json!({ "name": format!("g{i}"), "members": ["carol"] }),
            )
            .await;
        if i == 0 {
            first = r.json()["id"].as_u64().unwrap_or(0);
        }
        if r.status == 429 {
            let v = r.json();
            assert_eq!(v["error"], "rate_limited", "{v}");
            assert!(v["retry_after_ms"].as_u64().unwrap_or(0) > 0, "{v}");
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429]);
    // Adding and removing members and opening direct chats draw on the same budget...
    let add = h
        .post(
            &format!("/api/conversations/{first}/members"),
            Some(&ta),
            json!({ "username": "bob" }),
        )
        .await;
    assert_eq!(add.status, 429);
    let rm = h
        .req(
            "DELETE",
            &format!("/api/conversations/{first}/members/{carol}"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(rm.status, 429);
    let direct = h
        .post("/api/direct", Some(&ta), json!({ "username": "bob" }))
        .await;
    assert_eq!(direct.status, 429);
    // ...which is alice's alone: bob is not limited.
    assert!(h.direct(&tb, "alice").await > 0);
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_frames_are_rate_limited_per_user() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.typing_rate = 0.01;
    cfg.typing_burst = 2.0;
    let s = start(cfg).await;
    let h = s.http;
    let (ta, _) = h.signup("alice").await;
    let mut convs = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        h.signup(name).await;
        convs.push(h.direct(&ta, name).await);
    }
    let (mut wa, _) = ws_open(h.addr, &ta).await;
    for &c in &convs {
        wa.send(json!({ "type": "typing", "conversation": c }))
            .await;
    }
    wa.send(json!({ "type": "ping" })).await;
    // Two forwarded silently, two refused, then the pong.
    let mut errors = Vec::new();
    loop {
        let f = wa.next().await;
        if f["type"] == "pong" {
            break;
        }
        assert_eq!(f["type"], "error", "{f}");
        errors.push(f);
    }
    assert_eq!(errors.len(), 2, "{errors:?}");
    for e in &errors {
        assert_eq!(e["code"], "rate_limited", "{e}");
        assert_eq!(e["frame"], "typing", "{e}");
        assert!(e["retry_after_ms"].as_u64().unwrap_or(0) > 0, "{e}");
    }
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_frames_are_rate_limited_per_user() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.receipt_rate = 0.01;
    cfg.receipt_burst = 3.0;
    let s = start(cfg).await;
    let h = s.http;
    let Pair {
        alice: ta,
        bob: tb,
        conv,
        ..
    } = h.alice_and_bob().await;
    let (mut wa, _) = ws_open(h.addr, &ta).await;
    for i in 1..=6 {
        wa.send_text(conv, &format!("m{i}"), &format!("k{i}")).await;
    }
    let (mut wb, _) = ws_open(h.addr, &tb).await;
    for up_to in 1..=6 {
        let kind = if up_to % 2 == 0 { "read" } else { "delivered" };
        wb.send(json!({ "type": kind, "conversation": conv, "up_to": up_to }))
            .await;
    }
    wb.send(json!({ "type": "ping" })).await;
    let mut errors = 0;
    loop {
        let f = wb.next().await;
        if f["type"] == "pong" {
            break;
        }
        if f["type"] == "error" {
            assert_eq!(f["code"], "rate_limited", "{f}");
            assert!(f["retry_after_ms"].as_u64().unwrap_or(0) > 0, "{f}");
            errors += 1;
        }
    }
    assert_eq!(errors, 3);
    // Only the first three moved bob's cursors.
    let c = h
        .get(&format!("/api/conversations/{conv}"), &ta)
        .await
        .json();
    let bob = c["members"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["username"] == "bob").cloned())
        .expect("bob");
    assert_eq!(
        (bob["delivered"].as_u64(), bob["read"].as_u64()),
        (Some(3), Some(2))
    );
    s.running.shutdown().await.expect("clean shutdown");
}

async fn upload(h: &Http, token: &str) -> Resp {
    h.req(
        "POST",
        "/api/assets",
        Some(token),
        Some(("image/png", PNG.to_vec())),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_rate_limited_per_user() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.upload_rate = 0.01;
    cfg.upload_burst = 2.0;
    let s = start(cfg).await;
    let h = s.http;
    let (ta, _) = h.signup("alice").await;
    let (tb, _) = h.signup("bob").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = upload(&h, &ta).await;
        if r.status == 429 {
            assert!(r.json()["retry_after_ms"].as_u64().unwrap_or(0) > 0);
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, [201, 201, 429, 429]);
    assert_eq!(upload(&h, &tb).await.status, 201, "per user");
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_the_per_user_quota_are_refused() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.upload_quota_bytes = 2 * PNG.len() as u64;
    let s = start(cfg).await;
    let h = s.http;
    let (ta, _) = h.signup("alice").await;
    let (tb, _) = h.signup("bob").await;
    assert_eq!(upload(&h, &ta).await.status, 201);
    assert_eq!(upload(&h, &ta).await.status, 201);
    let r = upload(&h, &ta).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "quota_exceeded");
    assert_eq!(upload(&h, &tb).await.status, 201, "bob has his own quota");
    // The quota holds across a restart.
    s.running.shutdown().await.expect("clean shutdown");
    let mut cfg = test_config(dir.path());
    cfg.upload_quota_bytes = 2 * PNG.len() as u64;
    let s = start(cfg).await;
    let (ta, _) = s.http.signin("alice").await;
    assert_eq!(upload(&s.http, &ta).await.status, 413);
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_that_would_fill_the_disk_are_refused() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.min_free_bytes = u64::MAX / 2; // more than any disk has free
    let s = start(cfg).await;
    let (ta, _) = s.http.signup("alice").await;
    let r = upload(&s.http, &ta).await;
    assert_eq!(r.status, 507);
    assert_eq!(r.json()["error"], "no_space");
    s.running.shutdown().await.expect("clean shutdown");

    // All uploads together are capped too.
    let mut cfg = test_config(dir.path());
    cfg.uploads_max_bytes = PNG.len() as u64;
    let s = start(cfg).await;
    let (ta, _) = s.http.signin("alice").await;
    let (tb, _) = s.http.signup("bob").await;
    assert_eq!(upload(&s.http, &ta).await.status, 201);
    let r = upload(&s.http, &tb).await;
    assert_eq!(r.status, 507);
    assert_eq!(r.json()["error"], "no_space");
    s.running.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unattached_uploads_are_deleted_and_free_their_quota() {
    let dir = tempdir();
    let mut cfg = test_config(dir.path());
    cfg.upload_quota_bytes = 2 * PNG.len() as u64;
    let s = start(cfg.clone()).await;
    let h = s.http;
    let Pair {
        alice: ta,
        bob: tb,
        conv,
        ..
    } = h.alice_and_bob().await;
    let sent = upload(&h, &ta).await.json()["url"]
        .as_str()
        .expect("url")
        .to_string();
    let unsent = upload(&h, &ta).await.json()["url"]
        .as_str()
        .expect("url")
        .to_string();
    let (mut wa, _) = ws_open(h.addr, &ta).await;
    wa.send(json!({ "type": "send", "conversation": conv, "attachment": sent, "client_key": "a" }))
        .await;
    assert_eq!(
        wa.next_type("ack").await["message"]["attachment"],
        sent.as_str()
    );
    assert_eq!(upload(&h, &ta).await.status, 413, "quota full");

    // The sweep (run here as if the time limit had passed) deletes only the unsent one.
    let ttl = cfg.unattached_upload_ttl.as_millis() as u64;
    let now = crate::server::now_ms();
    assert_eq!(s.running.state().assets.sweep_unattached(now + ttl, ttl), 1);
    assert_eq!(h.get(&unsent, &ta).await.status, 404);
    assert_eq!(h.get(&sent, &tb).await.status, 200);
    assert_eq!(
        upload(&h, &ta).await.status,
        201,
        "its bytes are free again"
    );
    s.running.shutdown().await.expect("clean shutdown");
    // And it stays deleted after a restart.
    let s = start(cfg).await;
    let (ta, _) = s.http.signin("alice").await;
    assert_eq!(s.http.get(&unsent, &ta).await.status, 404);
    s.running.shutdown().await.expect("clean shutdown");
}
