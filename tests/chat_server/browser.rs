//! Drives headless Chromium over the DevTools protocol (a WebSocket; no driver binary needed):
//! two users, each in their own browser context, sign up on the real page and chat.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// `$CHROMIUM`, or the first of the usual names on `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("CDP send");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("CDP {method}: no answer"))
                .expect("CDP connection ended")
                .expect("CDP read");
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("CDP JSON");
            if v["id"] == id {
                if v.get("error").is_some() {
                    panic!("CDP {method} failed: {}", v["error"]);
                }
                return v["result"].clone();
            }
        }
    }

    /// A new page in a fresh browser context (its own storage), attached; returns the session.
    async fn new_page(&mut self, url: &str) -> String {
        let ctx = self
            .call(None, "Target.createBrowserContext", json!({}))
            .await["browserContextId"]
            .clone();
        let target = self
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": ctx }),
            )
            .await["targetId"]
            .clone();
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await["sessionId"]
            .as_str()
            .expect("session id")
            .to_string();
        let s = Some(session.as_str());
        self.call(
            s,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1100, "height": 700, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        self.call(s, "Page.enable", json!({})).await;
        self.call(s, "Page.navigate", json!({ "url": url })).await;
        session
    }

    async fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expr, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("page script failed: {ex}\n{expr}");
        }
        r["result"]["value"].clone()
    }

    async fn wait_for(&mut self, session: &str, expr: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.eval(session, expr).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self
                    .eval(session, "document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for {what}; page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&mut self, session: &str, path: &Path) {
        let r = self
            .call(
                Some(session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("base64");
        std::fs::write(path, png).expect("write screenshot");
    }
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// Sets an input's value as typing would (with an input event).
fn type_into(id: &str, value: &str) -> String {
    format!(
        "(() => {{ const e = document.getElementById({}); e.value = {}; e.dispatchEvent(new Event('input', {{ bubbles: true }})); return true; }})()",
        js_str(id),
        js_str(value)
    )
}

fn click(selector: &str) -> String {
    format!(
        "(() => {{ document.querySelector({}).click(); return true; }})()",
        js_str(selector)
    )
}

async fn sign_up(cdp: &mut Cdp, page: &str, name: &str) {
    cdp.wait_for(
        page,
        "!!document.getElementById('signup')",
        "the sign-in form",
    )
    .await;
    cdp.eval(page, &type_into("username", name)).await;
    cdp.eval(page, &type_into("password", &format!("{name}-browser-pw")))
        .await;
    cdp.eval(page, &click("#signup")).await;
    cdp.wait_for(
        page,
        "!document.getElementById('app').classList.contains('hidden') && document.getElementById('conn-state').classList.contains('up')",
        &format!("{name} signed in and connected"),
    )
    .await;
}

pub async fn two_users_chat(chromium: &Path, url: &str, shot: &Path) {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");

    // Chromium writes its DevTools port and browser path here once it listens.
    let port_file = profile.path().join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ws_url = loop {
        if let Ok(s) = std::fs::read_to_string(&port_file) {
            let mut lines = s.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                break format!("ws://127.0.0.1:{port}{path}");
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("chromium exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not start its DevTools endpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("connect to DevTools");
    let mut cdp = Cdp { ws, next_id: 0 };

    let alice = cdp.new_page(url).await;
    let bob = cdp.new_page(url).await;
    sign_up(&mut cdp, &alice, "alice").await;
    sign_up(&mut cdp, &bob, "bob").await;

    // Alice opens a chat with bob and sends a message.
    cdp.eval(&alice, &type_into("direct-username", "bob")).await;
    cdp.eval(&alice, &click("#new-direct button")).await;
    cdp.wait_for(
        &alice,
        "!document.getElementById('chat').classList.contains('hidden') && document.getElementById('chat-title').textContent === 'bob'",
        "alice's chat with bob",
    )
    .await;
    cdp.wait_for(
        &alice,
        "document.getElementById('chat-status').textContent === 'online'",
        "bob shown online",
    )
    .await;
    let hello = "Hello Bob! Sent from a real browser, café ☕ 👋";
    cdp.eval(&alice, &type_into("text", hello)).await;
    cdp.eval(&alice, &click("#send")).await;

    // Bob sees the chat appear with an unread badge, opens it, and reads the message.
    cdp.wait_for(
        &bob,
        "(() => { const b = document.querySelector('#inbox .badge'); return !!b && b.textContent === '1'; })()",
        "bob's unread badge",
    )
    .await;
    cdp.eval(&bob, &click("#inbox li")).await;
    cdp.wait_for(
        &bob,
        &format!(
            "document.getElementById('messages').innerText.includes({})",
            js_str(hello)
        ),
        "alice's message on bob's page",
    )
    .await;

    // Bob types (alice sees it), then replies; alice sees the reply and her read ticks.
    cdp.eval(&bob, &type_into("text", "Hi Alice, got it!"))
        .await;
    cdp.wait_for(
        &alice,
        "document.getElementById('typing').textContent.includes('bob is typing')",
        "the typing indicator",
    )
    .await;
    cdp.eval(&bob, &click("#send")).await;
    cdp.wait_for(
        &alice,
        "document.getElementById('messages').innerText.includes('Hi Alice, got it!')",
        "bob's reply on alice's page",
    )
    .await;
    cdp.wait_for(
        &alice,
        "!!document.querySelector('.msg.mine .tick.read')",
        "read ticks on alice's message",
    )
    .await;
    cdp.wait_for(
        &bob,
        "!!document.querySelector('.msg.mine .tick') && !document.querySelector('.msg.pending')",
        "bob's reply acknowledged",
    )
    .await;

    // Alice sends an image (picked in the file input); bob sees it rendered.
    let png = base64::engine::general_purpose::STANDARD.encode(gradient_png(96, 64));
    cdp.eval(
        &alice,
        &format!(
            "(() => {{ const bytes = Uint8Array.from(atob({}), c => c.charCodeAt(0)); const f = new File([bytes], 'gradient.png', {{ type: 'image/png' }}); const dt = new DataTransfer(); dt.items.add(f); const input = document.getElementById('file'); input.files = dt.files; input.dispatchEvent(new Event('change')); return true; }})()",
            js_str(&png)
        ),
    )
    .await;
    cdp.wait_for(
        &bob,
        "(() => { const i = document.querySelector('#messages img'); return !!i && i.complete && i.naturalWidth === 96; })()",
        "alice's image on bob's page",
    )
    .await;

    cdp.screenshot(&bob, shot).await;
    cdp.screenshot(&alice, &shot.with_file_name("browser-chat-sender.png"))
        .await;
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

/// A small RGB PNG (a colour gradient), encoded by hand: zlib with stored blocks.
fn gradient_png(w: u32, h: u32) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..h {
        raw.push(0u8); // filter: none
        for x in 0..w {
            raw.extend([(x * 255 / w) as u8, (y * 255 / h) as u8, 160]);
        }
    }
    let mut z = vec![0x78, 0x01];
    let chunks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, c) in chunks.iter().enumerate() {
        z.push(u8::from(i + 1 == chunks.len()));
        let len = c.len() as u16;
        z.extend(len.to_le_bytes());
        z.extend((!len).to_le_bytes());
        z.extend_from_slice(c);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend(((b << 16) | a).to_be_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        png.extend_from_slice(kind);
        png.extend_from_slice(data);
        png.extend(crc.finalize().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z);
    chunk(b"IEND", &[]);
    png
}
