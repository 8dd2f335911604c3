//! Accounts and sessions in replicated JetStream KV buckets, shared by every node: any node
//! signs anyone in, and a restart of any node (or all of them) signs nobody out.
//!
//! - `chatstore_accounts`: `name.<hex of the lowercased username>` → the account (JSON),
//!   written with KV `create` so two nodes never give one name to two users;
//!   `id.<n>` → the username; `next_id` → the next user id, taken by compare-and-set.
//! - `chatstore_sessions`: `token.<token>` → the user id.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;
use chatstore::UserId;
use chatstore_cluster::Nats;

use crate::server::accounts::{taken, Account, Directory};
use crate::server::error::{ApiError, ApiResult};

pub struct KvDirectory {
    nats: Nats,
    accounts: kv::Store,
    sessions: kv::Store,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    eprintln!("chat-node: {what}: {e}");
    ApiError::internal(format!("{what} is unavailable"))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

impl KvDirectory {
    pub fn open(nats: &Nats, replicas: usize) -> Result<KvDirectory, String> {
        let open = |bucket: &'static str| {
            let js = nats.jetstream().clone();
            nats.block_on(async move {
                match js.get_key_value(bucket).await {
                    Ok(kv) => Ok(kv),
                    Err(_) => js
                        .create_key_value(kv::Config {
                            bucket: bucket.into(),
                            history: 1,
                            storage: StorageType::File,
                            num_replicas: replicas.max(1),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| format!("bucket {bucket}: {e}")),
                }
            })
            .map_err(|e| e.to_string())?
        };
        Ok(KvDirectory {
            nats: nats.clone(),
            accounts: open("chatstore_accounts")?,
            sessions: open("chatstore_sessions")?,
        })
    }

    fn get(&self, kv: &kv::Store, key: String) -> ApiResult<Option<Bytes>> {
        let kv = kv.clone();
        self.nats
            .block_on(async move { kv.get(key).await })
            .map_err(|e| unavailable("the directory", e))?
            .map_err(|e| unavailable("the directory", e))
    }
}

impl Directory for KvDirectory {
    fn account(&self, key: &str) -> ApiResult<Option<Account>> {
        match self.get(&self.accounts, format!("name.{}", hex(key)))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| unavailable("an account record", e)),
            None => Ok(None),
        }
    }

    fn next_user_id(&self) -> ApiResult<u64> {
        let kv = self.accounts.clone();
        self.nats
            .block_on(async move {
                for _ in 0..100 {
                    match kv.entry("next_id").await.map_err(|e| e.to_string())? {
                        Some(e) if e.operation == kv::Operation::Put => {
                            let id: u64 = std::str::from_utf8(&e.value)
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .ok_or("a malformed next_id")?;
                            let next = Bytes::from((id + 1).to_string());
                            if kv.update("next_id", next, e.revision).await.is_ok() {
                                return Ok(id);
                            }
                        }
                        _ => {
                            if kv.create("next_id", Bytes::from_static(b"2")).await.is_ok() {
                                return Ok(1);
                            }
                        }
                    }
                }
                Err("too much contention on next_id".to_string())
            })
            .map_err(|e| unavailable("user ids", e))?
            .map_err(|e| unavailable("user ids", e))
    }

    fn create_account(&self, account: &Account) -> ApiResult<()> {
        let kv = self.accounts.clone();
        let key = format!("name.{}", hex(&account.username.to_ascii_lowercase()));
        let value = serde_json::to_vec(account).map_err(|e| unavailable("accounts", e))?;
        let (id, name) = (account.id, account.username.clone());
        self.nats
            .block_on(async move {
                // The id's name first: a failure after it leaves a name nobody can sign in
                // with, never an account without a name.
                kv.put(format!("id.{id}"), Bytes::from(name))
                    .await
                    .map_err(|e| Err(e.to_string()))?;
                match kv.create(key, value.into()).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Err(Ok(())),
                    Err(e) => Err(Err(e.to_string())),
                }
            })
            .map_err(|e| unavailable("accounts", e))?
            .map_err(|e| match e {
                Ok(()) => taken(),
                Err(e) => unavailable("accounts", e),
            })
    }

    fn username(&self, id: u64) -> ApiResult<Option<String>> {
        Ok(self
            .get(&self.accounts, format!("id.{id}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn put_session(&self, token: &str, user: UserId) -> ApiResult<()> {
        let kv = self.sessions.clone();
        let key = format!("token.{token}");
        self.nats
            .block_on(async move { kv.put(key, Bytes::from(user.0.to_string())).await })
            .map_err(|e| unavailable("sessions", e))?
            .map_err(|e| unavailable("sessions", e))?;
        Ok(())
    }

    fn session(&self, token: &str) -> ApiResult<Option<UserId>> {
        // Tokens are 64 hex digits; anything else cannot be a key (and is no session).
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        Ok(self
            .get(&self.sessions, format!("token.{token}"))?
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .map(UserId))
    }

    fn remove_session(&self, token: &str) -> ApiResult<bool> {
        if self.session(token)?.is_none() {
            return Ok(false);
        }
        let kv = self.sessions.clone();
        let key = format!("token.{token}");
        self.nats
            .block_on(async move { kv.delete(key).await })
            .map_err(|e| unavailable("sessions", e))?
            .map_err(|e| unavailable("sessions", e))?;
        Ok(true)
    }
}
