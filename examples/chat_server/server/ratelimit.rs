//! Token buckets (per user, per client address), and the back-off of failed sign-ins.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use parking_lot::Mutex;

use super::error::ApiError;

/// Keys a limiter remembers before it forgets the idle ones (a bucket that refilled is the
/// same as no bucket).
const MAX_KEYS: usize = 100_000;

/// A token bucket per key: `rate` tokens a second, at most `burst`.
pub struct RateLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `cost` tokens, or says how many ms until they are there.
    pub fn take_n(&self, key: &K, cost: f64) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.buckets.lock();
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            map.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = map.entry(key.clone()).or_insert((self.burst, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= cost {
            *tokens -= cost;
            Ok(())
        } else {
            Err((((cost - *tokens) / self.rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Takes one token, or says how many ms until one is there.
    pub fn take(&self, key: &K) -> Result<(), u64> {
        self.take_n(key, 1.0)
    }

    /// Takes one token, or returns the `rate_limited` error for `what`.
    pub fn check(&self, key: &K, what: &str) -> Result<(), ApiError> {
        self.take(key).map_err(|ms| rate_limited(what, ms))
    }
}

/// The `429 rate_limited` answer, with when to try again.
pub fn rate_limited(what: &str, retry_after_ms: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many {what}; slow down"),
    );
    e.retry_after_ms = Some(retry_after_ms);
    e
}

/// Failed sign-ins per account and per client address. Each attempt counts as a failure
/// when it starts (so that parallel guesses count too) and a success takes it back. After
/// `free` failures, each further attempt must wait a delay that doubles from 1 s up to
/// 15 min; failures are forgotten after 15 min without one.
pub struct SignInBackoff {
    accounts: Mutex<HashMap<String, Failures>>,
    addrs: Mutex<HashMap<IpAddr, Failures>>,
    free_per_account: u32,
    free_per_addr: u32,
}

#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    until: Instant,
}

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

fn backoff(over: u32) -> Duration {
    BACKOFF_BASE
        .saturating_mul(1u32 << over.min(20))
        .min(BACKOFF_MAX)
}

/// A sign-in attempt under way; [`SignInBackoff::succeeded`] takes it back.
pub struct Attempt {
    account: String,
    addr: IpAddr,
}

impl SignInBackoff {
    pub fn new(free_per_account: u32, free_per_addr: u32) -> Self {
        SignInBackoff {
            accounts: Mutex::new(HashMap::new()),
            addrs: Mutex::new(HashMap::new()),
            free_per_account,
            free_per_addr,
        }
    }

    /// Starts an attempt on `username` from `addr`, or refuses it (`429`) while either is
    /// backing off.
    pub fn begin(&self, username: &str, addr: IpAddr) -> Result<Attempt, ApiError> {
        let now = Instant::now();
        let account = username.to_ascii_lowercase();
        let mut accounts = self.accounts.lock();
        let mut addrs = self.addrs.lock();
        let wait = [
            accounts.get(&account).map(|f| f.until),
            addrs.get(&addr).map(|f| f.until),
        ]
        .into_iter()
        .flatten()
        .filter(|&u| u > now)
        .max();
        if let Some(until) = wait {
            let ms = until.duration_since(now).as_millis().max(1) as u64;
            let mut e = rate_limited("failed sign-ins", ms);
            e.message = "too many failed sign-ins; wait before trying again".into();
            return Err(e);
        }
        count(&mut accounts, account.clone(), now, self.free_per_account);
        count(&mut addrs, addr, now, self.free_per_addr);
        Ok(Attempt { account, addr })
    }

    /// The attempt succeeded: the account starts afresh, and the address's count is taken
    /// back by one.
    pub fn succeeded(&self, attempt: Attempt) {
        self.accounts.lock().remove(&attempt.account);
        let mut addrs = self.addrs.lock();
        if let Some(f) = addrs.get_mut(&attempt.addr) {
            f.count = f.count.saturating_sub(1);
            if f.count < self.free_per_addr {
                f.until = f.last;
            }
        }
    }
}

fn count<K: Hash + Eq>(map: &mut HashMap<K, Failures>, key: K, now: Instant, free: u32) {
    if map.len() >= MAX_KEYS {
        map.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER || f.until > now);
    }
    let f = map.entry(key).or_insert(Failures {
        count: 0,
        last: now,
        until: now,
    });
    if now.duration_since(f.last) >= FORGET_AFTER {
        f.count = 0;
    }
    f.count = f.count.saturating_add(1);
    f.last = now;
    if f.count >= free {
        f.until = now + backoff(f.count - free);
    }
}
