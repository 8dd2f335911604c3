//! Accounts and sessions shared by every node: any node signs anyone in, and a restart of any
//! node (or all of them) signs nobody out.
//!
//! - Accounts live in the shards (see `names`): the shard a username hashes to gives the
//!   name and the user id out, through its fenced commit log.
//! - Sessions: `chatstore_sessions`, a replicated KV bucket, `token.<token>` → the user id.
//!   Plain writes and reads: a token is random, so no two writers ever race on one key.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use chatstore::UserId;
use chatstore_cluster::Nats;

use crate::route::Router;
use crate::server::accounts::{taken, Account, Directory};
use crate::server::error::{ApiError, ApiResult};

pub struct ClusterDirectory {
    nats: Nats,
    router: Arc<Router>,
    sessions: kv::Store,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    eprintln!("chat-node: {what}: {e}");
    ApiError::internal(format!("{what} is unavailable"))
}

impl ClusterDirectory {
    pub fn open(
        nats: &Nats,
        router: Arc<Router>,
        replicas: usize,
    ) -> Result<ClusterDirectory, String> {
        let sessions = crate::buckets::open(
            nats,
            "chatstore_sessions",
            replicas,
            Duration::ZERO,
            "sign-in sessions: token -> user id",
        )?;
        Ok(ClusterDirectory {
            nats: nats.clone(),
            router,
            sessions,
        })
    }
}

impl Directory for ClusterDirectory {
    fn account(&self, key: &str) -> ApiResult<Option<Account>> {
        Ok(self
            .router
            .account(key)
            .map_err(|e| unavailable("accounts", e))?
            .map(|(id, r)| Account {
                id,
                username: r.username,
                hash: r.hash,
            }))
    }

    fn create_account(&self, username: &str, hash: &str) -> ApiResult<u64> {
        let key = username.to_ascii_lowercase();
        self.router
            .claim_name(&key, username, hash)
            .map_err(|e| unavailable("accounts", e))?
            .ok_or_else(taken)
    }

    fn username(&self, id: u64) -> ApiResult<Option<String>> {
        self.router
            .username(id)
            .map_err(|e| unavailable("accounts", e))
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
        let kv = self.sessions.clone();
        let key = format!("token.{token}");
        let value = self
            .nats
            .block_on(async move { kv.get(key).await })
            .map_err(|e| unavailable("sessions", e))?
            .map_err(|e| unavailable("sessions", e))?;
        Ok(value
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
