//! Small clients for the tests: HTTP/1.1 over hyper, WebSockets over tokio-tungstenite.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something it expects.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Two signed-up users and their direct chat: tokens, ids, conversation.
pub struct Pair {
    pub alice: String,
    pub alice_id: u64,
    pub bob: String,
    pub bob_id: u64,
    pub conv: u64,
}

#[derive(Clone, Copy)]
pub struct Http {
    pub addr: SocketAddr,
}

impl Http {
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Resp {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let payload = match body {
            Some((ct, bytes)) => {
                b = b.header("content-type", ct);
                Bytes::from(bytes)
            }
            None => Bytes::new(),
        };
        let req = b.body(Full::new(payload)).expect("request");
        let resp = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("HTTP timeout")
            .expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.req("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.req(
            "POST",
            path,
            token,
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
    }

    /// Signs a new user up; returns (token, user id).
    pub async fn signup(&self, name: &str) -> (String, u64) {
        self.account("/api/signup", name, 201).await
    }

    /// Signs an existing user in; returns (token, user id).
    pub async fn signin(&self, name: &str) -> (String, u64) {
        self.account("/api/signin", name, 200).await
    }

    /// Posts `name`'s credentials (password derived from the name) to `path`.
    async fn account(&self, path: &str, name: &str, want: u16) -> (String, u64) {
        let body = json!({ "username": name, "password": format!("{name}-secret-pw") });
        let r = self.post(path, None, body).await;
        assert_eq!(r.status, want, "{path} {name}: {:?}", r.json());
        let v = r.json();
        (
            v["token"].as_str().expect("token").to_string(),
            v["user"]["id"].as_u64().expect("id"),
        )
    }

    /// Signs up alice and bob (in that order) and opens their direct chat.
    pub async fn alice_and_bob(&self) -> Pair {
        let (alice, alice_id) = self.signup("alice").await;
        let (bob, bob_id) = self.signup("bob").await;
        let conv = self.direct(&alice, "bob").await;
        Pair {
            alice,
            alice_id,
            bob,
            bob_id,
            conv,
        }
    }

    /// Opens (or finds) the direct chat with `other`; returns its id.
    pub async fn direct(&self, token: &str, other: &str) -> u64 {
        let r = self
            .post("/api/direct", Some(token), json!({ "username": other }))
            .await;
        assert_eq!(r.status, 200, "direct: {:?}", r.json());
        r.json()["id"].as_u64().expect("conversation id")
    }

    pub async fn history(&self, token: &str, conv: u64, query: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/api/conversations/{conv}/messages{query}"), token)
            .await;
        assert_eq!(r.status, 200, "history: {:?}", r.json());
        r.json()["messages"].as_array().expect("messages").clone()
    }
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

pub async fn ws_connect(addr: SocketAddr, token: &str) -> Ws {
    let url = format!("ws://{addr}/ws?token={token}");
    let (stream, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connect");
    Ws { stream }
}

/// Connects and checks that the first frame is the unread summary; returns both.
pub async fn ws_open(addr: SocketAddr, token: &str) -> (Ws, Value) {
    let mut ws = ws_connect(addr, token).await;
    let first = ws.next().await;
    assert_eq!(first["type"], "unread", "first frame: {first}");
    (ws, first)
}

impl Ws {
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::text(v.to_string()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.stream.send(m).await.expect("ws send");
    }

    /// The next text frame as JSON (control frames skipped).
    pub async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection ended")
                .expect("ws error");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("frame JSON"),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next frame of type `ty`, skipping others (presence, typing, receipts...).
    pub async fn next_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// The next frame matching `pred`, skipping others.
    pub async fn next_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self.next().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Sends a text message and waits for its ack; returns the stored message.
    pub async fn send_text(&mut self, conv: u64, text: &str, key: &str) -> Value {
        self.send(json!({ "type": "send", "conversation": conv, "text": text, "client_key": key }))
            .await;
        let ack = self
            .next_where(|v| v["type"] == "ack" || (v["type"] == "error" && v["client_key"] == key))
            .await;
        assert_eq!(ack["type"], "ack", "send {key}: {ack}");
        assert_eq!(ack["client_key"], key);
        ack["message"].clone()
    }

    /// Reads until the server closes the connection; returns the close code if one came,
    /// and how many `message` frames arrived before.
    pub async fn until_closed(&mut self) -> (Option<u16>, usize) {
        let mut messages = 0;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => panic!("connection was not closed"),
                Ok(None) | Ok(Some(Err(_))) => return (None, messages),
                Ok(Some(Ok(Message::Close(c)))) => return (c.map(|c| u16::from(c.code)), messages),
                Ok(Some(Ok(Message::Text(t)))) => {
                    if t.as_str().contains("\"type\":\"message\"") {
                        messages += 1;
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}
