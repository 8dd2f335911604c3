//! Accounts (username, argon2id password hash, user id) and sessions (random bearer tokens).
//!
//! A single server keeps accounts in `accounts.jsonl` and sessions in memory (a restart signs
//! everybody out). A cluster node keeps both in a [`Directory`] every node shares, so any node
//! signs anyone in and a restart signs nobody out.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;
use chatstore::UserId;
use parking_lot::{Mutex, RwLock};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::backend::ChatBackend;
use super::error::{ApiError, ApiResult};
use super::jsonlog::JsonLog;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Account {
    pub id: u64,
    pub username: String,
    pub hash: String,
}

struct Table {
    log: JsonLog,
    by_name: HashMap<String, Arc<Account>>,
    next_id: u64,
}

/// Accounts and sessions shared by the nodes of a cluster. Blocking calls.
pub trait Directory: Send + Sync {
    /// The account whose lowercased username is `key`.
    fn account(&self, key: &str) -> ApiResult<Option<Account>>;
    /// Gives `username` to a new user with password `hash`, atomically with a user id nobody
    /// was given before (returned); `username_taken` if the name is someone's.
    fn create_account(&self, username: &str, hash: &str) -> ApiResult<u64>;
    /// The username of user `id`.
    fn username(&self, id: u64) -> ApiResult<Option<String>>;
    fn put_session(&self, token: &str, user: UserId) -> ApiResult<()>;
    fn session(&self, token: &str) -> ApiResult<Option<UserId>>;
    fn remove_session(&self, token: &str) -> ApiResult<bool>;
}

enum Source {
    File(Mutex<Table>),
    Shared(Arc<dyn Directory>),
}

pub struct Accounts {
    source: Source,
    names: RwLock<HashMap<u64, Arc<str>>>,
    /// Verified against when a username is unknown, so that both cases take the same time.
    dummy_hash: Arc<str>,
}

pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Accounts {
    /// Opens the accounts file; `dummy_hash` is a hash nobody knows the password of, made
    /// with the current argon2 parameters.
    pub fn open(path: &Path, dummy_hash: String) -> Result<Accounts, String> {
        let (log, records) = JsonLog::open::<Account>(path)?;
        let mut table = Table {
            log,
            by_name: HashMap::new(),
            next_id: 1,
        };
        let mut names = HashMap::new();
        for a in records {
            let a = Arc::new(a);
            table.next_id = table.next_id.max(a.id + 1);
            names.insert(a.id, Arc::from(a.username.as_str()));
            table.by_name.insert(a.username.to_ascii_lowercase(), a);
        }
        Ok(Accounts {
            source: Source::File(Mutex::new(table)),
            names: RwLock::new(names),
            dummy_hash: Arc::from(dummy_hash.as_str()),
        })
    }

    /// Accounts kept in a directory shared with other nodes.
    pub fn shared(directory: Arc<dyn Directory>, dummy_hash: String) -> Accounts {
        Accounts {
            source: Source::Shared(directory),
            names: RwLock::new(HashMap::new()),
            dummy_hash: Arc::from(dummy_hash.as_str()),
        }
    }

    fn lookup(&self, username: &str) -> Option<(UserId, Arc<str>)> {
        let key = username.to_ascii_lowercase();
        match &self.source {
            Source::File(t) => t
                .lock()
                .by_name
                .get(&key)
                .map(|a| (UserId(a.id), Arc::from(a.hash.as_str()))),
            Source::Shared(d) => match d.account(&key) {
                Ok(a) => a.map(|a| (UserId(a.id), Arc::from(a.hash.as_str()))),
                Err(e) => {
                    eprintln!("chat_server: accounts: {}", e.message);
                    None
                }
            },
        }
    }

    /// Checks a sign-up before its password is hashed: a valid, free username and a valid
    /// password.
    pub fn check_new(&self, username: &str, password: &str) -> ApiResult<()> {
        if !valid_username(username) {
            return Err(ApiError::bad_request(
                "username: 3 to 32 letters, digits, '_', '-' or '.'",
            ));
        }
        if !(8..=256).contains(&password.len()) {
            return Err(ApiError::bad_request("password: 8 to 256 bytes"));
        }
        let exists = match &self.source {
            Source::File(t) => t
                .lock()
                .by_name
                .contains_key(&username.to_ascii_lowercase()),
            Source::Shared(d) => d.account(&username.to_ascii_lowercase())?.is_some(),
        };
        if exists {
            return Err(taken());
        }
        Ok(())
    }

    /// Creates an account whose password `hash` was made by the hashing workers. Blocking
    /// (an fsync): call from a blocking thread.
    pub fn create(
        &self,
        store: &dyn ChatBackend,
        username: &str,
        hash: String,
    ) -> ApiResult<UserId> {
        let t = match &self.source {
            Source::File(t) => t,
            Source::Shared(d) => {
                // The name and the id are given out together, by one writer; the store then
                // learns the user (a failure there leaves an account that signs in, and whose
                // first conversation registers it where it lands).
                let id = d.create_account(username, &hash)?;
                self.names.write().insert(id, Arc::from(username));
                store.register_user(UserId(id))?;
                return Ok(UserId(id));
            }
        };
        let key = username.to_ascii_lowercase();
        let mut t = t.lock();
        if t.by_name.contains_key(&key) {
            return Err(taken());
        }
        let id = t.next_id;
        // The store learns the user first: a crash before the account line is written leaves
        // a registered id that nobody can name, and the next sign-up reuses it harmlessly.
        store.register_user(UserId(id))?;
        // Taken even if the line below fails: a failed fsync may still leave the line on
        // disk, and no id may ever name two accounts.
        t.next_id = id + 1;
        let account = Account {
            id,
            username: username.to_string(),
            hash,
        };
        t.log.append(&account).map_err(|e| {
            eprintln!("chat_server: accounts: {e}");
            ApiError::internal("could not save the account")
        })?;
        let account = Arc::new(account);
        t.by_name.insert(key, account);
        self.names.write().insert(id, Arc::from(username));
        Ok(UserId(id))
    }

    /// The user called `username` (if any) and the hash to check a password against: theirs,
    /// or the dummy one, so that an unknown name costs the same time as a wrong password.
    pub fn credentials(&self, username: &str) -> (Option<UserId>, Arc<str>) {
        match self.lookup(username) {
            Some((id, hash)) => (Some(id), hash),
            None => (None, self.dummy_hash.clone()),
        }
    }

    /// Makes the next append to the accounts file fail (tests).
    #[cfg(test)]
    pub fn fail_next_append(&self, fault: super::jsonlog::Fault) {
        if let Source::File(t) = &self.source {
            t.lock().log.fail_next = Some(fault);
        }
    }

    pub fn find(&self, username: &str) -> Option<UserId> {
        self.lookup(username).map(|(id, _)| id)
    }

    pub fn name(&self, user: UserId) -> Arc<str> {
        if let Some(n) = self.names.read().get(&user.0) {
            return n.clone();
        }
        // Usernames never change, so one found in the directory is kept.
        if let Source::Shared(d) = &self.source {
            if let Ok(Some(n)) = d.username(user.0) {
                let n: Arc<str> = Arc::from(n.as_str());
                self.names.write().insert(user.0, n.clone());
                return n;
            }
        }
        Arc::from(format!("user{}", user.0).as_str())
    }
}

pub fn bad_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "bad_credentials",
        "wrong username or password",
    )
}

pub fn taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "username_taken",
        "that username is taken",
    )
}

/// Live sessions: token -> user, in memory or in a shared [`Directory`].
#[derive(Default)]
pub struct Sessions {
    tokens: RwLock<HashMap<Arc<str>, UserId>>,
    shared: Option<Arc<dyn Directory>>,
}

impl Sessions {
    /// Sessions kept in a directory shared with other nodes. Nothing is cached: a sign-out
    /// on any node ends the session on all of them.
    pub fn shared(directory: Arc<dyn Directory>) -> Sessions {
        Sessions {
            tokens: RwLock::default(),
            shared: Some(directory),
        }
    }

    pub fn create(&self, user: UserId) -> ApiResult<Arc<str>> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let token: Arc<str> = Arc::from(token.as_str());
        match &self.shared {
            Some(d) => d.put_session(&token, user)?,
            None => {
                self.tokens.write().insert(token.clone(), user);
            }
        }
        Ok(token)
    }

    pub fn check(&self, token: &str) -> Option<(Arc<str>, UserId)> {
        match &self.shared {
            Some(d) => match d.session(token) {
                Ok(u) => u.map(|u| (Arc::from(token), u)),
                Err(e) => {
                    eprintln!("chat_server: sessions: {}", e.message);
                    None
                }
            },
            None => self
                .tokens
                .read()
                .get_key_value(token)
                .map(|(k, v)| (k.clone(), *v)),
        }
    }

    pub fn remove(&self, token: &str) -> bool {
        match &self.shared {
            Some(d) => d.remove_session(token).unwrap_or_else(|e| {
                eprintln!("chat_server: sessions: {}", e.message);
                false
            }),
            None => self.tokens.write().remove(token).is_some(),
        }
    }
}
