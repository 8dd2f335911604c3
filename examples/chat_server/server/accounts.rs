//! Accounts (username, argon2id password hash, user id), persisted in `accounts.jsonl`, and
//! sessions (random bearer tokens, in memory: a restart signs everybody out).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
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
    argon: Argon2<'static>,
    /// Verified against when a username is unknown, so that both cases take the same time.
    dummy_hash: String,
}

pub fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl Accounts {
    pub fn open(path: &Path, memory_kib: u32, iterations: u32) -> Result<Accounts, String> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| e.to_string())?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
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
        let salt = SaltString::generate(&mut OsRng);
        let dummy_hash = argon
            .hash_password(b"not a real password", &salt)
            .map_err(|e| e.to_string())?
            .to_string();
        Ok(Accounts {
            table: Mutex::new(table),
            names: RwLock::new(names),
            argon,
            dummy_hash,
        })
    }

    /// Creates an account. Blocking (argon2 and an fsync): call from a blocking thread.
    pub fn sign_up(&self, store: &ChatStore, username: &str, password: &str) -> ApiResult<UserId> {
        if !valid_username(username) {
            return Err(ApiError::bad_request(
                "username: 3 to 32 letters, digits, '_', '-' or '.'",
            ));
        }
        if !(8..=256).contains(&password.len()) {
            return Err(ApiError::bad_request("password: 8 to 256 bytes"));
        }
        let key = username.to_ascii_lowercase();
        if self.table.lock().by_name.contains_key(&key) {
            return Err(taken());
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = self
            .argon
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| ApiError::internal(format!("hashing failed: {e}")))?
            .to_string();
        let mut t = self.table.lock();
        if t.by_name.contains_key(&key) {
            return Err(taken());
        }
        let id = t.next_id;
        // The store learns the user first: a crash before the account line is written leaves
        // a registered id that nobody can name, and the next sign-up reuses it harmlessly.
        store.register_user(UserId(id))?;
        let account = Account {
            id,
            username: username.to_string(),
            hash,
        };
        t.log.append(&account).map_err(|e| {
            eprintln!("chat_server: accounts: {e}");
            ApiError::internal("could not save the account")
        })?;
        t.next_id = id + 1;
        let account = Arc::new(account);
        t.by_name.insert(key, account);
        self.names.write().insert(id, Arc::from(username));
        Ok(UserId(id))
    }

    /// Checks a password. Blocking (argon2): call from a blocking thread.
    pub fn sign_in(&self, username: &str, password: &str) -> ApiResult<UserId> {
        let account = self
            .table
            .lock()
            .by_name
            .get(&username.to_ascii_lowercase())
            .cloned();
        let hash = account
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |a| &a.hash);
        let parsed =
            PasswordHash::new(hash).map_err(|_| ApiError::internal("bad stored password hash"))?;
        let ok = self
            .argon
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        match account {
            Some(a) if ok => Ok(UserId(a.id)),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "wrong username or password",
            )),
        }
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
