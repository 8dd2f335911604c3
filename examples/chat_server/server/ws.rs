//! One WebSocket per device: the unread summary first, then live messages, acks, receipts,
//! presence and typing. See `docs/protocol.md` for the frames.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chatstore::{ChatError, ConversationId, Error, MessageId, NewMessage, UserId};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::hub::{Conn, Out};
use super::{assets, db, membership, views, Shared};

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /ws?token=...`: authenticates before upgrading.
pub async fn handler(
    State(state): State<Shared>,
    Query(q): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let Some(token) = q.token.or(bearer) else {
        return ApiError::unauthorized().into_response();
    };
    let Some((token, user)) = state.sessions.check(token.trim()) else {
        return ApiError::unauthorized().into_response();
    };
    if state.shutdown.is_cancelled() {
        return ApiError::from(Error::Closed).into_response();
    }
    let guard = state.tracker.token();
    upgrade
        .max_message_size(state.cfg.hard_frame_bytes)
        .max_frame_size(state.cfg.hard_frame_bytes)
        .read_buffer_size(8 << 10)
        .write_buffer_size(8 << 10)
        .on_upgrade(move |socket| async move {
            run(state, user, token, socket).await;
            drop(guard);
        })
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Send {
        conversation: u64,
        #[serde(default)]
        text: String,
        attachment: Option<String>,
        client_key: Option<String>,
        reply_to: Option<u64>,
    },
    Delivered {
        conversation: u64,
        up_to: u64,
    },
    Read {
        conversation: u64,
        up_to: u64,
    },
    Typing {
        conversation: u64,
    },
    Ping,
}

/// An error frame; `frame` and `client_key` echo the offending frame's where it had them.
fn api_error_frame(e: &ApiError, ctx: &Value) -> Out {
    let mut v = json!({ "type": "error", "code": e.code, "message": e.message });
    for k in ["frame", "client_key"] {
        if let Some(x) = ctx.get(k).filter(|x| !x.is_null()) {
            v[k] = x.clone();
        }
    }
    if let Some(ms) = e.retry_after_ms {
        v["retry_after_ms"] = json!(ms);
    }
    Out::text(v.to_string())
}

fn bad_frame(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_frame", message)
}

/// Answers a refused frame with an error frame, and logs it (at a bounded rate).
fn reject(state: &Shared, conn: &Conn, e: &ApiError, ctx: &Value) {
    let frame = ctx.get("frame").and_then(Value::as_str).unwrap_or("-");
    state.rejects.log(format_args!(
        "user {} websocket frame {frame}: {}: {}",
        conn.user, e.code, e.message
    ));
    conn.push(api_error_frame(e, ctx));
}

fn touch(state: &Shared, conn: &Conn) {
    conn.heard();
    state.active.lock().insert(conn.user);
}

enum End {
    /// The client left, or the connection broke, or was dropped: stop now.
    Now,
    /// The server is shutting down: send what is queued, then close.
    Drain,
}

async fn run(state: Shared, user: UserId, token: Arc<str>, socket: WebSocket) {
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(state.cfg.queue_frames);
    let conn = Arc::new(Conn::new(state.hub.next_id(), user, token, tx));
    // Registered before the unread snapshot is taken, so that nothing falls in between;
    // the writer skips live messages the snapshot already counted.
    state.hub.register(conn.clone());
    touch(&state, &conn);
    let per_conv = state.cfg.unread_per_conversation;
    let snapshot = db(&state, move |st| {
        if let Some(shared) = &st.shared_presence {
            shared.heartbeat(&[user]);
        }
        if let Some(ev) = st.presence.heartbeat(user)? {
            super::broadcast_presence(st, ev);
        }
        let unread = st.store.unread_messages(user, per_conv)?;
        let mut skip = HashMap::new();
        let mut convs = Vec::with_capacity(unread.len());
        for (u, msgs) in unread {
            skip.insert(u.conversation.0, u.last_id.0);
            convs.push(json!({
                "conversation": u.conversation.0,
                "count": u.count,
                "mentions": u.mentions,
                "first_unread": u.first_unread.0,
                "last_id": u.last_id.0,
                "messages": msgs.iter().map(|m| views::message_json(st, m)).collect::<Vec<_>>(),
            }));
        }
        let frame = json!({ "type": "unread", "conversations": convs });
        Ok((Utf8Bytes::from(frame.to_string()), skip))
    })
    .await;
    let (first, skip) = match snapshot {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "chat_server: unread snapshot for user {user}: {}",
                e.message
            );
            conn.drop_with(1011, "server error");
            (Utf8Bytes::from_static(""), HashMap::new())
        }
    };
    let writer = tokio::spawn(writer(
        sink,
        rx,
        first,
        skip,
        conn.clone(),
        state.cfg.heartbeat,
        state.cfg.offline_after,
    ));

    let mut typing: HashMap<u64, Instant> = HashMap::new();
    let end = loop {
        let next = tokio::select! {
            _ = conn.cancel.cancelled() => break End::Now,
            _ = state.shutdown.cancelled() => break End::Drain,
            next = stream.next() => next,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                let too_big = e
                    .into_inner()
                    .downcast::<tokio_tungstenite::tungstenite::Error>()
                    .is_ok_and(|e| {
                        matches!(*e, tokio_tungstenite::tungstenite::Error::Capacity(_))
                    });
                if too_big {
                    state.rejects.log(format_args!(
                        "user {user} websocket: a message over {} bytes; closing (1009)",
                        state.cfg.hard_frame_bytes
                    ));
                    conn.drop_with(1009, "message too big");
                }
                break End::Now;
            }
            None => break End::Now,
        };
        touch(&state, &conn);
        match msg {
            WsMessage::Text(text) => {
                if text.len() > state.cfg.max_frame_bytes {
                    let e = ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        format!(
                            "frame is {} bytes; the limit is {}",
                            text.len(),
                            state.cfg.max_frame_bytes
                        ),
                    );
                    reject(&state, &conn, &e, &Value::Null);
                    continue;
                }
                conn.handling();
                handle_text(&state, &conn, text.as_str(), &mut typing).await;
                conn.handled();
            }
            WsMessage::Binary(_) => {
                let e = bad_frame("binary frames are not supported; send JSON text frames");
                reject(&state, &conn, &e, &Value::Null);
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            WsMessage::Close(_) => break End::Now,
        }
    };
    match end {
        End::Now => conn.cancel.cancel(),
        End::Drain => {
            if !conn.push(Out::Close(1001, "server shutting down")) {
                conn.cancel.cancel();
            }
        }
    }
    let last = state.hub.unregister(&conn);
    if last && !state.hub.is_connected(user) {
        let res = db(&state, move |st| {
            if let Some(shared) = &st.shared_presence {
                shared.left(user);
            }
            if let Some(ev) = st.presence.disconnect(user)? {
                super::broadcast_presence(st, ev);
            }
            Ok(())
        })
        .await;
        if let Err(e) = res {
            eprintln!("chat_server: presence: {}", e.message);
        }
    }
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        conn.cancel.cancel();
        let _ = writer.await;
    }
}

async fn handle_text(
    state: &Shared,
    conn: &Arc<Conn>,
    text: &str,
    typing: &mut HashMap<u64, Instant>,
) {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            reject(
                state,
                conn,
                &bad_frame(format!("not JSON: {e}")),
                &Value::Null,
            );
            return;
        }
    };
    let ctx = json!({ "frame": value.get("type"), "client_key": value.get("client_key") });
    let frame: ClientFrame = match serde_json::from_value(value) {
        Ok(f) => f,
        Err(e) => {
            reject(state, conn, &bad_frame(e.to_string()), &ctx);
            return;
        }
    };
    let user = conn.user;
    match frame {
        ClientFrame::Ping => {
            conn.push(Out::text(r#"{"type":"pong"}"#));
        }
        ClientFrame::Send {
            conversation,
            text,
            attachment,
            client_key,
            reply_to,
        } => {
            if let Err(e) = send(
                state,
                conn,
                ConversationId(conversation),
                text,
                attachment,
                client_key.clone(),
                reply_to,
            )
            .await
            {
                reject(state, conn, &e, &ctx);
            }
        }
        ClientFrame::Delivered {
            conversation,
            up_to,
        } => {
            if let Err(e) = state.limits.receipts.check(&user, "receipts") {
                reject(state, conn, &e, &ctx);
                return;
            }
            if let Err(e) = mark(state, conn, ConversationId(conversation), up_to, false).await {
                reject(state, conn, &e, &ctx);
            }
        }
        ClientFrame::Read {
            conversation,
            up_to,
        } => {
            if let Err(e) = state.limits.receipts.check(&user, "receipts") {
                reject(state, conn, &e, &ctx);
                return;
            }
            if let Err(e) = mark(state, conn, ConversationId(conversation), up_to, true).await {
                reject(state, conn, &e, &ctx);
            }
        }
        ClientFrame::Typing { conversation } => {
            let now = Instant::now();
            if typing
                .get(&conversation)
                .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(500))
            {
                return;
            }
            typing.insert(conversation, now);
            if let Err(e) = state.limits.typing.check(&user, "typing frames") {
                reject(state, conn, &e, &ctx);
                return;
            }
            let conv = ConversationId(conversation);
            let res = db(state, move |st| {
                let members = st.store.members(conv)?;
                if !members.contains(&user) {
                    return Err(Error::Chat(ChatError::NotAMember {
                        user,
                        conversation: conv,
                    })
                    .into());
                }
                let frame = json!({
                    "type": "typing",
                    "conversation": conv.0,
                    "user": user.0,
                    "username": &*st.accounts.name(user),
                });
                let others: Vec<UserId> = members.into_iter().filter(|&m| m != user).collect();
                st.hub
                    .push_users(&others, &frame.to_string().into(), None, None);
                Ok(())
            })
            .await;
            if let Err(e) = res {
                reject(state, conn, &e, &ctx);
            }
        }
    }
}

async fn send(
    state: &Shared,
    conn: &Arc<Conn>,
    conv: ConversationId,
    text: String,
    attachment: Option<String>,
    client_key: Option<String>,
    reply_to: Option<u64>,
) -> Result<(), ApiError> {
    let user = conn.user;
    if let Some(k) = &client_key {
        if k.is_empty() || k.len() > 128 {
            return Err(ApiError::bad_request("client_key must be 1 to 128 bytes"));
        }
    }
    let asset = match &attachment {
        Some(link) => Some(
            assets::parse_link(link)
                .ok_or_else(|| {
                    ApiError::bad_request("attachment must be a link returned by POST /api/assets")
                })?
                .to_string(),
        ),
        None => None,
    };
    state.limits.sends.check(&user, "messages")?;
    let mut nm = NewMessage::new(user, text.into_bytes());
    if let Some(link) = attachment {
        nm = nm.with_attachment(link.into_bytes());
    }
    if let Some(r) = reply_to {
        nm = nm.with_reply_to(MessageId(r));
    }
    let key = client_key.clone().map(String::into_bytes);
    let conn_id = conn.id;
    let (json, members, mid) = db(state, move |st| {
        let members = st.store.members(conv)?;
        if !members.contains(&user) {
            return Err(Error::Chat(ChatError::NotAMember {
                user,
                conversation: conv,
            })
            .into());
        }
        if let Some(r) = reply_to {
            if !membership::can_see(st, conv, user, MessageId(r))? {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_id",
                    format!("reply_to {r} is not a message you can see"),
                ));
            }
        }
        if let Some(id) = &asset {
            // Only an asset the sender may see can be attached, and the link is recorded
            // before the message: a message never points at an asset its readers can't get.
            st.assets.can_read(&*st.store, user, id)?;
            st.assets.link(id, conv)?;
        }
        let m = {
            let _appending = st.memberships.appending(conv);
            st.store.send_from(conv, nm, key, Some(conn_id))?
        };
        Ok((views::message_json(st, &m), members, m.id))
    })
    .await?;
    let ack = json!({ "type": "ack", "client_key": client_key, "message": json });
    conn.push(Out::text(ack.to_string()));
    if state.store.pushes_messages() {
        return Ok(());
    }
    // Everyone else: the other members' devices and the sender's other devices. A retried
    // send is pushed again (the client may have crashed before its fanout); clients drop
    // messages whose (conversation, id) they already have.
    let frame = json!({ "type": "message", "message": json });
    state.hub.push_users(
        &members,
        &frame.to_string().into(),
        Some((conv.0, mid.0)),
        Some(conn.id),
    );
    Ok(())
}

async fn mark(
    state: &Shared,
    conn: &Arc<Conn>,
    conv: ConversationId,
    up_to: u64,
    read: bool,
) -> Result<(), ApiError> {
    let user = conn.user;
    let skip = conn.id;
    db(state, move |st| {
        let before = st.store.cursors(user, conv)?;
        let current = if read { before.read } else { before.delivered };
        if up_to <= current.0 {
            return Ok(()); // nothing moves: no write, no receipt
        }
        if read {
            st.store.mark_read(user, conv, MessageId(up_to))?;
        } else {
            st.store.mark_delivered(user, conv, MessageId(up_to))?;
        }
        let after = st.store.cursors(user, conv)?;
        let members = st.store.members(conv)?;
        let frame = json!({
            "type": "receipt",
            "conversation": conv.0,
            "user": user.0,
            "delivered": after.delivered.0,
            "read": after.read.0,
        });
        st.hub
            .push_users(&members, &frame.to_string().into(), None, Some(skip));
        Ok(())
    })
    .await
}

type Sink = SplitSink<WebSocket, WsMessage>;

async fn writer(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Out>,
    first: Utf8Bytes,
    skip: HashMap<u64, u64>,
    conn: Arc<Conn>,
    heartbeat: Duration,
    offline_after: Duration,
) {
    let cancel = conn.cancel.clone();
    let skipped = |msg: Option<(u64, u64)>| {
        msg.is_some_and(|(c, id)| skip.get(&c).is_some_and(|&last| id <= last))
    };
    let mut close = None;
    if cancel.is_cancelled() {
        close = Some((1011, "server error"));
    } else {
        tokio::select! {
            r = sink.send(WsMessage::Text(first)) => if r.is_err() { close = Some((1011, "")) },
            _ = cancel.cancelled() => {}
        }
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let silence = tokio::time::sleep_until(conn.silent_deadline(offline_after));
    let mut silence = std::pin::pin!(silence);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while close.is_none() {
        let mut batch = Vec::new();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            out = rx.recv() => {
                let mut next = out;
                if next.is_none() {
                    close = Some((1001, "going away"));
                }
                while let Some(o) = next.take() {
                    match o {
                        Out::Close(code, reason) => {
                            close = Some((code, reason));
                            break;
                        }
                        Out::Frame { text, msg } => {
                            if !skipped(msg) {
                                batch.push(WsMessage::Text(text));
                            }
                        }
                    }
                    if batch.len() >= 64 {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
            }
            _ = tick.tick() => {
                batch.push(WsMessage::Ping(Default::default()));
            }
            // Exactly `offline_after` after the client was last heard from, not at the next
            // ping: re-armed whenever something came in meanwhile.
            _ = &mut silence => {
                let deadline = conn.silent_deadline(offline_after);
                if tokio::time::Instant::now() >= deadline {
                    close = Some((4000, "heartbeat timeout"));
                } else {
                    silence.as_mut().reset(deadline);
                }
            }
        }
        if !batch.is_empty() {
            let write = async {
                for m in batch {
                    sink.feed(m).await?;
                }
                sink.flush().await
            };
            let ok = tokio::select! {
                r = write => r.is_ok(),
                _ = cancel.cancelled() => false,
            };
            if !ok {
                break;
            }
        }
    }
    let (code, reason) = close
        .or(*conn.close_reason.lock())
        .unwrap_or((1001, "going away"));
    conn.cancel.cancel();
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink.send(WsMessage::Close(Some(frame))).await;
        let _ = sink.close().await;
    })
    .await;
}
