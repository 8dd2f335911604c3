//! A watchdog for long tests: a test that has not finished within its limit fails the whole
//! run with a message naming it, instead of hanging CI.
//!
//! Include with `#[path = "common/watchdog.rs"] mod watchdog;` and arm it first thing in a
//! test: `let _watchdog = watchdog::arm(Duration::from_secs(120));`.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Disarms the watchdog when dropped (at the end of the test, passed or failed).
pub struct Watchdog {
    done: Arc<(Mutex<bool>, Condvar)>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        if let Ok(mut done) = lock.lock() {
            *done = true;
        }
        cv.notify_all();
    }
}

/// Ends the process with a failure if the calling test runs longer than `limit`.
pub fn arm(limit: Duration) -> Watchdog {
    let name = std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_string();
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let watched = Arc::clone(&done);
    std::thread::spawn(move || {
        let start = Instant::now();
        let (lock, cv) = &*watched;
        let Ok(mut finished) = lock.lock() else {
            return;
        };
        while !*finished {
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                // Written to the real stderr: the test harness would swallow `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "watchdog: `{name}` is still running after {limit:?}; \
                     failing the run instead of hanging (a writer waiting forever?)"
                );
                std::process::exit(70);
            }
            finished = match cv.wait_timeout(finished, left) {
                Ok((g, _)) => g,
                Err(_) => return,
            };
        }
    });
    Watchdog { done }
}
