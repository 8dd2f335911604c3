//! A token bucket per user for sends (all of a user's devices share it).

use std::collections::HashMap;
use std::time::Instant;

use chatstore::UserId;
use parking_lot::Mutex;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<UserId, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: f64, burst: f64) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token, or says how many ms until one is there.
    pub fn take(&self, user: UserId) -> Result<(), u64> {
        let now = Instant::now();
        let mut map = self.buckets.lock();
        let (tokens, at) = map.entry(user).or_insert((self.burst, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.rate * 1000.0).ceil() as u64)
        }
    }
}
