//! Limits: memory held by password hashing, back-off of failed sign-ins, rate limits and
//! quotas of everything a user can make the server do.

use serde_json::json;

use crate::client::{Http, Resp, WAIT};
use crate::{example_binary, start, tempdir, test_config};

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
        println!("SKIPPED: target/<profile>/examples/chat_server is not built");
        return;
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
