//! The example chat server, as a module tree that `main.rs` runs and the tests include.
//!
//! The storage work is the library's ([`ChatStore`] and [`Presence`]); this is the thin part
//! around it: accounts and sessions, HTTP and WebSocket framing, the registry of live
//! connections (fanout), heartbeats, assets, limits.
//!
//! A cluster node (`cluster/src/bin/chat-node`) runs the same layer through [`start_with`]:
//! its [`backend::ChatBackend`] routes each call to the shard that owns it, its
//! [`accounts::Directory`] is shared by every node, its [`hub::Fanout`] carries pushes to
//! whichever node holds the receiving devices, and its
//! [`shared_presence::SharedPresence`] tells who is online on other nodes.

pub mod accounts;
pub mod asset_store;
pub mod assets;
pub mod backend;
pub mod config;
pub mod error;
pub mod hashing;
pub mod http;
pub mod hub;
pub mod jsonlog;
pub mod membership;
pub mod ratelimit;
pub mod rejects;
pub mod shared_presence;
pub mod views;
pub mod ws;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatstore::presence::{Presence, PresenceEvent, PresenceOptions, SystemClock};
use chatstore::{ChatOptions, ChatStore, Options, UserId};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use error::{ApiError, ApiResult};

/// Everything a request or a connection needs.
pub struct AppState {
    pub cfg: Config,
    /// Where conversations live: one local store, or the shards of a cluster.
    pub store: Arc<dyn backend::ChatBackend>,
    pub accounts: accounts::Accounts,
    /// Password hashing threads.
    pub hasher: hashing::Hasher,
    /// Sign-ups and sign-ins per client address.
    pub auth_limiter: ratelimit::RateLimiter<IpAddr>,
    /// Back-off of failed sign-ins, per account and per client address.
    pub signin_backoff: ratelimit::SignInBackoff,
    pub sessions: accounts::Sessions,
    /// Uploaded images: the data folder, or a cluster's shared store.
    pub assets: Arc<dyn asset_store::AssetStore>,
    /// Membership ranges the library forgot (members removed and added again).
    pub memberships: membership::Memberships,
    pub hub: Arc<hub::Hub>,
    pub presence: Presence,
    /// Presence on other nodes (none: this process is the only one).
    pub shared_presence: Option<Arc<dyn shared_presence::SharedPresence>>,
    pub limits: Limits,
    /// Rejected requests and frames, logged at a bounded rate.
    pub rejects: rejects::RejectLog,
    pub groups: views::GroupNames,
    /// Users heard from since the last presence tick.
    pub active: Mutex<HashSet<UserId>>,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
    /// WebSocket tasks, waited for at shutdown.
    pub tracker: TaskTracker,
}

pub type Shared = Arc<AppState>;

/// Per-user rate limits of everything a signed-in user can make the server do.
pub struct Limits {
    pub sends: ratelimit::RateLimiter<UserId>,
    pub conv_changes: ratelimit::RateLimiter<UserId>,
    pub typing: ratelimit::RateLimiter<UserId>,
    pub receipts: ratelimit::RateLimiter<UserId>,
    pub uploads: ratelimit::RateLimiter<UserId>,
    pub upload_bytes: assets::UploadLimits,
}

impl Limits {
    fn new(cfg: &Config) -> Self {
        use ratelimit::RateLimiter;
        Limits {
            sends: RateLimiter::new(cfg.send_rate, cfg.send_burst),
            conv_changes: RateLimiter::new(cfg.conv_rate, cfg.conv_burst),
            typing: RateLimiter::new(cfg.typing_rate, cfg.typing_burst),
            receipts: RateLimiter::new(cfg.receipt_rate, cfg.receipt_burst),
            uploads: RateLimiter::new(cfg.upload_rate, cfg.upload_burst),
            upload_bytes: assets::UploadLimits {
                per_user_bytes: cfg.upload_quota_bytes,
                total_bytes: cfg.uploads_max_bytes,
                min_free_bytes: cfg.min_free_bytes,
            },
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs blocking work (store calls fsync) off the async workers.
pub async fn db<T, F>(state: &Shared, f: F) -> ApiResult<T>
where
    F: FnOnce(&AppState) -> ApiResult<T> + Send + 'static,
    T: Send + 'static,
{
    let st = state.clone();
    tokio::task::spawn_blocking(move || f(&st))
        .await
        .map_err(|_| ApiError::internal("worker failed"))?
}

/// A running server.
pub struct Running {
    addr: SocketAddr,
    state: Shared,
    server: JoinHandle<std::io::Result<()>>,
    ticker: JoinHandle<()>,
}

/// What a server runs on besides its configuration: the single node's own store and files,
/// or a cluster node's shared parts.
pub struct Backing {
    pub store: Arc<dyn backend::ChatBackend>,
    /// Where last-seen times are kept (none: in memory only).
    pub last_seen: Option<ChatStore>,
    /// Accounts and sessions shared with other nodes (none: `accounts.jsonl` and memory).
    pub directory: Option<Arc<dyn accounts::Directory>>,
    /// Pushes to other nodes' devices (none: this process's connections only).
    pub fanout: Option<Arc<dyn hub::Fanout>>,
    /// Presence on other nodes (none: this process's only).
    pub presence: Option<Arc<dyn shared_presence::SharedPresence>>,
    /// Uploads every node serves (none: `assets/` in the data folder).
    pub assets: Option<Arc<dyn asset_store::AssetStore>>,
}

/// Opens the data folder and starts listening.
pub async fn start(cfg: Config) -> Result<Running, String> {
    let dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let store = ChatStore::open_with(
        dir.join("store"),
        Options::default(),
        ChatOptions::default(),
    )
    .map_err(|e| format!("opening the store: {e}"))?;
    let backing = Backing {
        store: Arc::new(store.clone()),
        last_seen: Some(store),
        directory: None,
        fanout: None,
        presence: None,
        assets: None,
    };
    start_with(cfg, backing).await
}

/// Starts listening on `backing`; the data folder keeps what is local to this process
/// (membership history, and assets and accounts unless the backing shares them).
pub async fn start_with(cfg: Config, backing: Backing) -> Result<Running, String> {
    let dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let Backing {
        store,
        last_seen,
        directory,
        fanout,
        presence: shared_presence,
        assets,
    } = backing;
    let hasher = hashing::Hasher::start(
        cfg.argon2_memory_kib,
        cfg.argon2_iterations,
        cfg.hash_workers,
        cfg.hash_queue,
    )?;
    let (accounts, sessions) = match directory {
        Some(d) => (
            accounts::Accounts::shared(d.clone(), hasher.dummy_hash()?),
            accounts::Sessions::shared(d),
        ),
        None => (
            accounts::Accounts::open(&dir.join("accounts.jsonl"), hasher.dummy_hash()?)?,
            accounts::Sessions::default(),
        ),
    };
    let assets: Arc<dyn asset_store::AssetStore> = match assets {
        Some(a) => a,
        None => Arc::new(assets::Assets::open(&dir.join("assets"))?),
    };
    let memberships = membership::Memberships::open(&dir.join("memberships.jsonl"))?;
    let presence = Presence::new(
        PresenceOptions {
            heartbeat_interval: cfg.heartbeat,
            offline_after: cfg.offline_after,
            persist_every: Duration::from_secs(60),
        },
        Arc::new(SystemClock),
        last_seen,
    );
    let hub = Arc::new(hub::Hub::default());
    if let Some(f) = fanout {
        hub.set_fanout(f);
    }
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| format!("listening on {}: {e}", cfg.addr))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = Arc::new(AppState {
        limits: Limits::new(&cfg),
        rejects: rejects::RejectLog::new(cfg.reject_log_rate, cfg.reject_log_burst),
        auth_limiter: ratelimit::RateLimiter::new(cfg.auth_rate, cfg.auth_burst),
        signin_backoff: ratelimit::SignInBackoff::new(
            cfg.signin_free_failures,
            cfg.signin_free_failures_per_addr,
        ),
        hasher,
        cfg,
        store,
        accounts,
        sessions,
        assets,
        memberships,
        hub,
        presence,
        shared_presence,
        groups: views::GroupNames::default(),
        active: Mutex::new(HashSet::new()),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
    });
    let app = http::router(state.clone());
    let stop = state.shutdown.clone();
    let server = tokio::spawn(http::serve(listener, app, stop, state.cfg.header_timeout));
    let ticker = tokio::spawn(presence_loop(state.clone()));
    Ok(Running {
        addr,
        state,
        server,
        ticker,
    })
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's state (tests look inside).
    #[allow(dead_code)]
    pub fn state(&self) -> &Shared {
        &self.state
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops accepting, closes every WebSocket (after the frames already queued), waits for
    /// work in flight, then closes the store: every acknowledged message is on disk.
    pub async fn shutdown(self) -> Result<(), String> {
        let Running {
            state,
            server,
            ticker,
            ..
        } = self;
        state.shutdown.cancel();
        let _ = server.await;
        let _ = ticker.await;
        state.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), state.tracker.wait())
            .await
            .is_err()
        {
            eprintln!("chat_server: some connections did not finish in 5 s");
        }
        let store = state.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| e.to_string())?;
        // Wait (briefly) for the last references so that the directory lock is released when
        // this returns: a restart in the same process can then open the folder again.
        let mut state = state;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(state) {
                Ok(inner) => {
                    drop(inner);
                    break;
                }
                Err(s) if tokio::time::Instant::now() < deadline => {
                    state = s;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(s) => {
                    eprintln!(
                        "chat_server: {} references to the server state remain after shutdown",
                        Arc::strong_count(&s) - 1
                    );
                    break;
                }
            }
        }
        closed.map_err(|e| format!("closing the store: {e}"))
    }
}

/// Every heartbeat interval: record who was heard from, sweep the silent ones offline, and
/// tell their contacts.
async fn presence_loop(state: Shared) {
    let mut tick = tokio::time::interval(state.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let res = db(&state, |st| {
            let active: Vec<UserId> = st.active.lock().drain().collect();
            let mut events = Vec::new();
            for u in active {
                if st.hub.is_connected(u) {
                    if let Some(e) = st.presence.heartbeat(u)? {
                        events.push(e);
                    }
                }
            }
            events.extend(st.presence.sweep()?);
            for e in events {
                broadcast_presence(st, e);
            }
            if let Some(shared) = &st.shared_presence {
                shared.heartbeat(&st.hub.users());
            }
            st.assets
                .sweep_unattached(now_ms(), st.cfg.unattached_upload_ttl.as_millis() as u64);
            Ok(())
        })
        .await;
        if let Err(e) = res {
            eprintln!("chat_server: presence: {}", e.message);
        }
    }
}

/// Tells everyone who shares a conversation with the user. Blocking.
pub fn broadcast_presence(st: &AppState, event: PresenceEvent) {
    let (user, online, last_seen) = match event {
        PresenceEvent::Online(u) => (u, true, None),
        PresenceEvent::Offline { user, last_seen_ms } => (user, false, Some(last_seen_ms)),
    };
    // A cluster announces every user's transitions once, from what all its nodes see.
    if st.shared_presence.as_ref().is_some_and(|p| p.announces()) {
        return;
    }
    push_presence(st, user, online, last_seen);
}

/// The presence frame of `user`, to everyone who shares a conversation with them (what a
/// cluster's announcer sends too). Blocking.
pub fn push_presence(st: &AppState, user: UserId, online: bool, last_seen: Option<u64>) {
    let peers = match views::peers_of(st, user) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("chat_server: presence peers: {}", e.message);
            return;
        }
    };
    let frame = serde_json::json!({
        "type": "presence",
        "user": user.0,
        "username": &*st.accounts.name(user),
        "online": online,
        "last_seen_ms": last_seen,
    });
    st.hub
        .push_users(&peers, &frame.to_string().into(), None, None);
}
