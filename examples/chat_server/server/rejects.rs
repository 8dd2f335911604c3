//! The log of rejected input: every refused request or frame, with its reason, on stderr,
//! at most a few lines a second (a flood is counted, and the count is printed with the next
//! line that gets through). Never logs tokens, passwords or message text.

use std::collections::VecDeque;
use std::fmt;

use parking_lot::Mutex;

use super::ratelimit::RateLimiter;

/// Lines kept in memory for `recent` (tests, and a glance in a debugger).
const KEEP: usize = 256;

pub struct RejectLog {
    limiter: RateLimiter<()>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<String>,
    /// Lines not printed since the last printed one.
    suppressed: u64,
    printed: u64,
    suppressed_total: u64,
}

impl RejectLog {
    pub fn new(rate: f64, burst: f64) -> Self {
        RejectLog {
            limiter: RateLimiter::new(rate, burst),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Logs one rejection (if the rate allows; otherwise counts it).
    pub fn log(&self, what: fmt::Arguments<'_>) {
        let allowed = self.limiter.take(&()).is_ok();
        let mut inner = self.inner.lock();
        if !allowed {
            inner.suppressed += 1;
            inner.suppressed_total += 1;
            return;
        }
        let mut line = format!("chat_server: rejected: {what}");
        if inner.suppressed > 0 {
            line.push_str(&format!(
                " ({} more rejections not logged)",
                inner.suppressed
            ));
            inner.suppressed = 0;
        }
        eprintln!("{line}");
        inner.printed += 1;
        if inner.recent.len() == KEEP {
            inner.recent.pop_front();
        }
        inner.recent.push_back(line);
    }

    /// The last lines printed, oldest first.
    #[allow(dead_code)]
    pub fn recent(&self) -> Vec<String> {
        self.inner.lock().recent.iter().cloned().collect()
    }

    /// (lines printed, rejections not printed) since the start.
    #[allow(dead_code)]
    pub fn counts(&self) -> (u64, u64) {
        let inner = self.inner.lock();
        (inner.printed, inner.suppressed_total)
    }
}
