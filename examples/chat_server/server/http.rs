//! HTTP routes (JSON): accounts, inbox, history, groups, assets; and the web page.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chatstore::{ConversationId, ConversationKind, InboxCursor, MessageId, ReceiptState, UserId};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{ApiError, ApiResult, Rejection};
use super::membership::{self, Page};
use super::{accounts, assets, db, views, ws, Shared};

const INDEX_HTML: &str = include_str!("../static/index.html");
const APP_JS: &str = include_str!("../static/app.js");
const STYLE_CSS: &str = include_str!("../static/style.css");

pub fn router(state: Shared) -> Router {
    let upload_limit = state.cfg.max_upload_bytes;
    Router::new()
        .route("/", get(|| page(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/app.js",
            get(|| page(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/style.css",
            get(|| page(STYLE_CSS, "text/css; charset=utf-8")),
        )
        .route("/api/signup", post(signup))
        .route("/api/signin", post(signin))
        .route("/api/signout", post(signout))
        .route("/api/me", get(me))
        .route("/api/inbox", get(inbox))
        .route("/api/unread", get(unread))
        .route("/api/direct", post(direct))
        .route("/api/groups", post(create_group))
        .route("/api/conversations/{id}", get(conversation))
        .route("/api/conversations/{id}/members", post(add_member))
        .route(
            "/api/conversations/{id}/members/{user}",
            delete(remove_member),
        )
        .route("/api/conversations/{id}/messages", get(history))
        .route(
            "/api/conversations/{id}/messages/{mid}/receipts",
            get(receipts),
        )
        .route(
            "/api/assets",
            post(upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/api/assets/{id}", get(download))
        .route("/api/stats", get(stats))
        .route("/ws", get(ws::handler))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(64 << 10))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            log_rejections,
        ))
        .with_state(state)
}

/// Accepts connections and serves `app` on each (HTTP/1.1, with upgrades for WebSockets)
/// until `stop`; then lets the requests in flight finish. A request's headers must arrive
/// within `header_timeout` (so must the next request on a kept-alive connection), or the
/// connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
    header_timeout: Duration,
) -> std::io::Result<()> {
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    eprintln!("chat_server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            hyper::service::Service::call(&TowerToHyperService::new(app.clone()), req)
        });
        let stop = stop.clone();
        conns.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    conns.close();
    conns.wait().await;
    Ok(())
}

/// Logs every refused request (4xx) with its reason, at a bounded rate.
async fn log_rejections(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    // The path only: a query may carry a token.
    let path = req.uri().path().to_string();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    if resp.status().is_client_error() {
        let (code, message) = match resp.extensions().get::<Rejection>() {
            Some(r) => (r.code, r.message.as_str()),
            None => ("", ""),
        };
        state.rejects.log(format_args!(
            "{peer} {method} {path}: {} {code}: {message}",
            resp.status().as_u16()
        ));
    }
    resp
}

async fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The signed-in user of a request (`Authorization: Bearer <token>`).
pub struct Auth {
    pub user: UserId,
    pub token: Arc<str>,
}

impl FromRequestParts<Shared> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthorized)?;
        let (token, user) = state
            .sessions
            .check(token.trim())
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Auth { user, token })
    }
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn id_param(p: Result<Path<String>, PathRejection>) -> ApiResult<ConversationId> {
    let Path(s) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    s.parse()
        .map(ConversationId)
        .map_err(|_| ApiError::bad_request("conversation id must be a number"))
}

fn num(q: &HashMap<String, String>, key: &str) -> ApiResult<Option<u64>> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("{key} must be a number"))),
    }
}

fn query(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<HashMap<String, String>> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

fn session_json(state: &Shared, user: UserId) -> ApiResult<Value> {
    let token = state.sessions.create(user)?;
    Ok(json!({
        "token": &*token,
        "user": { "id": user.0, "username": &*state.accounts.name(user) },
    }))
}

async fn signup(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: JsonBody<Credentials>,
) -> ApiResult<Response> {
    let Json(c) = body?;
    state
        .auth_limiter
        .check(&peer.ip(), "sign-ups and sign-ins")?;
    state.accounts.check_new(&c.username, &c.password)?;
    let hash = state.hasher.hash(c.password).await?;
    let user = db(&state, move |st| {
        st.accounts.create(&*st.store, &c.username, hash)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(session_json(&state, user)?)).into_response())
}

async fn signin(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: JsonBody<Credentials>,
) -> ApiResult<Json<Value>> {
    let Json(c) = body?;
    state
        .auth_limiter
        .check(&peer.ip(), "sign-ups and sign-ins")?;
    let attempt = state.signin_backoff.begin(&c.username, peer.ip())?;
    let (user, hash) = state.accounts.credentials(&c.username);
    let ok = state.hasher.verify(c.password, hash).await?;
    match user {
        Some(user) if ok => {
            state.signin_backoff.succeeded(attempt);
            Ok(Json(session_json(&state, user)?))
        }
        _ => Err(accounts::bad_credentials()),
    }
}

async fn signout(State(state): State<Shared>, auth: Auth) -> StatusCode {
    state.sessions.remove(&auth.token);
    state.hub.drop_token(&auth.token);
    StatusCode::NO_CONTENT
}

async fn me(State(state): State<Shared>, auth: Auth) -> Json<Value> {
    Json(json!({ "id": auth.user.0, "username": &*state.accounts.name(auth.user) }))
}

async fn inbox(
    State(state): State<Shared>,
    auth: Auth,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let q = query(q)?;
    let limit = num(&q, "limit")?.unwrap_or(50).clamp(1, 200) as usize;
    let cursor = match q.get("cursor") {
        None => None,
        Some(c) => {
            let bad = || ApiError::bad_request("cursor must be the `next` of a previous page");
            let (ms, conv) = c.split_once('.').ok_or_else(bad)?;
            Some(InboxCursor {
                activity_ms: ms.parse().map_err(|_| bad())?,
                conversation: ConversationId(conv.parse().map_err(|_| bad())?),
            })
        }
    };
    let user = auth.user;
    let v = db(&state, move |st| {
        let page = st.store.inbox(user, limit, cursor)?;
        let entries = page
            .entries
            .iter()
            .map(|e| views::inbox_entry_json(st, user, e))
            .collect::<ApiResult<Vec<_>>>()?;
        let next = page
            .next
            .map(|c| format!("{}.{}", c.activity_ms, c.conversation.0));
        Ok(json!({ "entries": entries, "next": next }))
    })
    .await?;
    Ok(Json(v))
}

async fn unread(State(state): State<Shared>, auth: Auth) -> ApiResult<Json<Value>> {
    let user = auth.user;
    let v = db(&state, move |st| {
        let list: Vec<Value> = st
            .store
            .unread(user)?
            .into_iter()
            .map(|u| {
                json!({
                    "conversation": u.conversation.0,
                    "count": u.count,
                    "mentions": u.mentions,
                    "first_unread": u.first_unread.0,
                    "last_id": u.last_id.0,
                })
            })
            .collect();
        Ok(json!({ "conversations": list }))
    })
    .await?;
    Ok(Json(v))
}

#[derive(Deserialize)]
struct DirectReq {
    username: String,
}

async fn direct(
    State(state): State<Shared>,
    auth: Auth,
    body: JsonBody<DirectReq>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body?;
    state
        .limits
        .conv_changes
        .check(&auth.user, "new chats and member changes")?;
    let me = auth.user;
    let v = db(&state, move |st| {
        let other = st
            .accounts
            .find(&req.username)
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        if other == me {
            return Err(ApiError::bad_request("a direct chat needs another user"));
        }
        let conv = st.store.direct(me, other)?;
        views::conversation_json(st, me, conv)
    })
    .await?;
    Ok(Json(v))
}

#[derive(Deserialize)]
struct GroupReq {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

async fn create_group(
    State(state): State<Shared>,
    auth: Auth,
    body: JsonBody<GroupReq>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::bad_request("group name: 1 to 64 characters"));
    }
    if req.members.len() > 256 {
        return Err(ApiError::bad_request("at most 256 members"));
    }
    state
        .limits
        .conv_changes
        .check(&auth.user, "new chats and member changes")?;
    let me = auth.user;
    let v = db(&state, move |st| {
        let mut members = vec![me];
        let mut names = Vec::new();
        for n in &req.members {
            let u = st
                .accounts
                .find(n)
                .ok_or_else(|| ApiError::not_found(format!("no such user: {n}")))?;
            members.push(u);
            names.push(st.accounts.name(u).to_string());
        }
        let conv = st.store.create_group(me, &members)?;
        st.groups.set(conv, &name);
        views::system_message(
            st,
            conv,
            me,
            json!({ "event": "created", "name": name, "by": &*st.accounts.name(me), "members": names }),
        )?;
        views::conversation_json(st, me, conv)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn conversation(
    State(state): State<Shared>,
    auth: Auth,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let conv = id_param(p)?;
    let me = auth.user;
    let v = db(&state, move |st| {
        // Members and former members may look; cursors() refuses anybody else.
        st.store.cursors(me, conv)?;
        views::conversation_json(st, me, conv)
    })
    .await?;
    Ok(Json(v))
}

async fn add_member(
    State(state): State<Shared>,
    auth: Auth,
    p: Result<Path<String>, PathRejection>,
    body: JsonBody<DirectReq>,
) -> ApiResult<Json<Value>> {
    let conv = id_param(p)?;
    let Json(req) = body?;
    state
        .limits
        .conv_changes
        .check(&auth.user, "new chats and member changes")?;
    let me = auth.user;
    let v = db(&state, move |st| {
        let user = st
            .accounts
            .find(&req.username)
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        let already = st.store.members(conv)?.contains(&user);
        if !already {
            if st.store.conversation(conv)?.kind != ConversationKind::Group {
                return Err(ApiError::bad_request("members can only be added to a group"));
            }
            if !st.store.is_member(me, conv)? {
                return Err(chatstore::Error::Chat(chatstore::ChatError::NotAMember {
                    user: me,
                    conversation: conv,
                })
                .into());
            }
        }
        {
            // No message may land between the last id read here and the add: a member
            // added again reads from exactly there.
            let _changing = st.memberships.changing(conv);
            let last = st.store.last_id(conv)?.0;
            if !already {
                st.memberships.before_rejoin(st, conv, user, last)?;
            }
            st.store.add_member(conv, me, user)?;
        }
        if !already {
            views::system_message(
                st,
                conv,
                me,
                json!({ "event": "added", "by": &*st.accounts.name(me), "user": user.0, "username": &*st.accounts.name(user) }),
            )?;
        }
        views::conversation_json(st, me, conv)
    })
    .await?;
    Ok(Json(v))
}

async fn remove_member(
    State(state): State<Shared>,
    auth: Auth,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path((c, u)) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let conv = ConversationId(
        c.parse()
            .map_err(|_| ApiError::bad_request("conversation id must be a number"))?,
    );
    let user = UserId(
        u.parse()
            .map_err(|_| ApiError::bad_request("user id must be a number"))?,
    );
    state
        .limits
        .conv_changes
        .check(&auth.user, "new chats and member changes")?;
    let me = auth.user;
    db(&state, move |st| {
        if st.store.conversation(conv)?.kind != ConversationKind::Group {
            return Err(ApiError::bad_request("only groups have members to remove"));
        }
        let body = |event: &str| {
            json!({ "event": event, "by": &*st.accounts.name(me), "user": user.0, "username": &*st.accounts.name(user) })
        };
        if user == me {
            // Said while still a member, so that the others see it.
            if st.store.members(conv)?.contains(&me) {
                views::system_message(st, conv, me, body("left"))?;
            }
            st.store.remove_member(conv, me, me)?;
        } else {
            st.store.remove_member(conv, me, user)?;
            views::system_message(st, conv, me, body("removed"))?;
        }
        let frame = json!({ "type": "removed", "conversation": conv.0 });
        st.hub
            .push_users(&[user], &frame.to_string().into(), None, None);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn history(
    State(state): State<Shared>,
    auth: Auth,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let conv = id_param(p)?;
    let q = query(q)?;
    let limit = num(&q, "limit")?.unwrap_or(50).clamp(1, 200) as usize;
    let (before, after, around) = (num(&q, "before")?, num(&q, "after")?, num(&q, "around")?);
    if [before, after, around]
        .iter()
        .filter(|x| x.is_some())
        .count()
        > 1
    {
        return Err(ApiError::bad_request(
            "give at most one of before, after, around",
        ));
    }
    let me = auth.user;
    let before_around = (limit / 2) as u64;
    let after_around = limit - 1 - limit / 2;
    let v = db(&state, move |st| {
        let s = &st.store;
        if let Some(ranges) = membership::visible_ranges(st, conv, me)? {
            let page = match (before, after, around) {
                (Some(id), _, _) => Page::Before(id),
                (_, Some(id), _) => Page::After(id),
                (_, _, Some(id)) => Page::Around(id, limit / 2, after_around),
                _ => Page::Latest,
            };
            let msgs = membership::read_page(st, conv, &ranges, page, limit)?;
            let list: Vec<Value> = msgs.iter().map(|m| views::message_json(st, m)).collect();
            return Ok(json!({ "conversation": conv.0, "messages": list }));
        }
        let msgs = match (before, after, around) {
            (Some(id), _, _) => s.before(me, conv, MessageId(id), limit)?,
            (_, Some(id), _) => s.after(me, conv, MessageId(id), limit)?,
            (_, _, Some(id)) => {
                // `limit` in all: limit/2 before the message, the rest after it.
                let (lo, hi) = (
                    id.saturating_sub(before_around),
                    id.saturating_add(after_around as u64),
                );
                let mut page = s.around(me, conv, MessageId(id), limit / 2)?;
                page.retain(|m| (lo..=hi).contains(&m.id.0));
                page
            }
            _ => s.latest(me, conv, limit)?,
        };
        let list: Vec<Value> = msgs.iter().map(|m| views::message_json(st, m)).collect();
        Ok(json!({ "conversation": conv.0, "messages": list }))
    })
    .await?;
    Ok(Json(v))
}

async fn receipts(
    State(state): State<Shared>,
    auth: Auth,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path((c, m)) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let bad = || ApiError::bad_request("ids must be numbers");
    let conv = ConversationId(c.parse().map_err(|_| bad())?);
    let mid = MessageId(m.parse().map_err(|_| bad())?);
    let me = auth.user;
    let v = db(&state, move |st| {
        if !membership::can_see(st, conv, me, mid)? {
            return Err(ApiError::not_found("no such message"));
        }
        if !st.store.is_member(me, conv)? {
            // Receipts move with the members' cursors: live data, for current members.
            return Err(ApiError::forbidden(
                "receipts are for current members of the conversation",
            ));
        }
        let r = st.store.receipts(conv, mid)?;
        let details: Vec<Value> = r
            .details
            .iter()
            .map(|(u, s)| {
                json!({
                    "user": u.0,
                    "username": &*st.accounts.name(*u),
                    "state": match s {
                        ReceiptState::Sent => "sent",
                        ReceiptState::Delivered => "delivered",
                        ReceiptState::Read => "read",
                    },
                })
            })
            .collect();
        Ok(json!({
            "conversation": conv.0,
            "id": mid.0,
            "recipients": r.recipients,
            "delivered": r.delivered,
            "read": r.read,
            "details": details,
        }))
    })
    .await?;
    Ok(Json(v))
}

async fn upload(
    State(state): State<Shared>,
    auth: Auth,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Response> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let body = body?;
    if body.is_empty() {
        return Err(ApiError::bad_request("empty upload"));
    }
    state.limits.uploads.check(&auth.user, "uploads")?;
    let size = body.len();
    let ct = content_type.clone();
    let user = auth.user;
    let id = db(&state, move |st| {
        st.assets.upload(user, &ct, &body, &st.limits.upload_bytes)
    })
    .await?;
    let v = json!({
        "id": id,
        "url": format!("{}{id}", assets::URL_PREFIX),
        "content_type": content_type,
        "size": size,
    });
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn download(
    State(state): State<Shared>,
    auth: Auth,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = p.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !assets::valid_id(&id) {
        return Err(ApiError::not_found("no such asset"));
    }
    let user = auth.user;
    let (meta, bytes) = db(&state, move |st| {
        let meta = st.assets.can_read(&*st.store, user, &id)?;
        Ok((meta, st.assets.read(&id)?))
    })
    .await?;
    let mut resp = bytes.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&meta.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    Ok(resp)
}

async fn stats(State(state): State<Shared>, _auth: Auth) -> Json<Value> {
    let s = state.store.stats();
    Json(json!({
        "connections": state.hub.connection_count(),
        "online_users": state.presence.online_count(),
        "dropped_slow": state.hub.dropped_slow.load(Ordering::Relaxed),
        "hash_workers": state.hasher.worker_count(),
        "store": s,
    }))
}
