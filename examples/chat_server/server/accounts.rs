//! Accounts (username, argon2id password hash, user id), persisted in `accounts.jsonl`, and
//! sessions (random bearer tokens, in memory: a restart signs everybody out).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::http::StatusCode;
use chatstore::{ChatStore, UserId};
use parking_lot::{Mutex, RwLock};
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

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

pub struct Accounts {
    table: Mutex<Table>,
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
            table: Mutex::new(table),
            names: RwLock::new(names),
            dummy_hash: Arc::from(dummy_hash.as_str()),
        })
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
        if self
            .table
            .lock()
            .by_name
            .contains_key(&username.to_ascii_lowercase())
        {
            return Err(taken());
        }
        Ok(())
    }

    /// Creates an account whose password `hash` was made by the hashing workers. Blocking
    /// (an fsync): call from a blocking thread.
    pub fn create(&self, store: &ChatStore, username: &str, hash: String) -> ApiResult<UserId> {
        let key = username.to_ascii_lowercase();
        let mut t = self.table.lock();
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
        match self
            .table
            .lock()
            .by_name
            .get(&username.to_ascii_lowercase())
        {
            Some(a) => (Some(UserId(a.id)), Arc::from(a.hash.as_str())),
            None => (None, self.dummy_hash.clone()),
        }
    }

    /// Makes the next append to the accounts file fail (tests).
    #[cfg(test)]
    pub fn fail_next_append(&self, fault: super::jsonlog::Fault) {
        self.table.lock().log.fail_next = Some(fault);
    }

    pub fn find(&self, username: &str) -> Option<UserId> {
        self.table
            .lock()
            .by_name
            .get(&username.to_ascii_lowercase())
            .map(|a| UserId(a.id))
    }

    pub fn name(&self, user: UserId) -> Arc<str> {
        self.names
            .read()
            .get(&user.0)
            .cloned()
            .unwrap_or_else(|| Arc::from(format!("user{}", user.0).as_str()))
    }
}

pub fn bad_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "bad_credentials",
        "wrong username or password",
    )
}

fn taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "username_taken",
        "that username is taken",
    )
}

/// Live sessions: token -> user.
#[derive(Default)]
pub struct Sessions {
    tokens: RwLock<HashMap<Arc<str>, UserId>>,
}

impl Sessions {
    pub fn create(&self, user: UserId) -> Arc<str> {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let token: Arc<str> = Arc::from(token.as_str());
        self.tokens.write().insert(token.clone(), user);
        token
    }

    pub fn check(&self, token: &str) -> Option<(Arc<str>, UserId)> {
        self.tokens
            .read()
            .get_key_value(token)
            .map(|(k, v)| (k.clone(), *v))
    }

    pub fn remove(&self, token: &str) -> bool {
        self.tokens.write().remove(token).is_some()
    }
}
