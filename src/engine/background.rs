//! Starting the background threads so that none of them can die unnoticed.
//!
//! A background thread that stops for any reason (an error it reports, or a panic) leaves
//! writers waiting for work only it does: a writer stalled on a full set of frozen memtables
//! would wait for a flush that never comes. So each thread body runs under a guard that turns
//! a panic into a poisoned store: writers then get [`Error::Poisoned`] instead of hanging, and
//! readers keep working.
//!
//! A panic in a background thread is always a bug. Test suites set the environment variable
//! [`ABORT_ON_PANIC_VAR`] so that such a panic aborts the whole test process, and the run
//! fails even when the test's own assertions would have passed.

// Background threads must not panic: no arithmetic that can overflow.
#![deny(clippy::arithmetic_side_effects)]

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::Engine;
use crate::error::{Error, Result};
use crate::fs::InjectedPanic;

/// The store's health and the one signal every waiter of the engine waits on: work for the
/// background threads (a frozen memtable, a new level-0 segment), work they finished (a
/// flush, a compaction), shutdown, and poison. Owned here so that every state change that can
/// end a wait also wakes it.
#[derive(Default)]
pub(super) struct Lifecycle {
    signal: Mutex<()>,
    cv: Condvar,
    shutdown: AtomicBool,
    /// Set after a failed WAL write or flush: the store refuses writes from then on.
    poison: Mutex<Option<String>>,
}

/// Held while checking a condition that another thread changes before calling
/// [`Lifecycle::notify`]: a change made after the check wakes the following [`wait`](Self::wait).
pub(super) struct SignalGuard<'a> {
    guard: MutexGuard<'a, ()>,
    cv: &'a Condvar,
}

impl SignalGuard<'_> {
    /// Wakes every waiter (they run once this guard is dropped or waits).
    pub(super) fn notify_all(&self) {
        self.cv.notify_all();
    }

    /// Waits for the next notification, or `timeout` if given.
    pub(super) fn wait(&mut self, timeout: Option<Duration>) {
        match timeout {
            Some(t) => {
                self.cv.wait_for(&mut self.guard, t);
            }
            None => self.cv.wait(&mut self.guard),
        }
    }
}

impl Lifecycle {
    /// Locks the signal; see [`SignalGuard`].
    pub(super) fn lock(&self) -> SignalGuard<'_> {
        SignalGuard {
            guard: self.signal.lock(),
            cv: &self.cv,
        }
    }

    /// Wakes every waiter.
    pub(super) fn notify(&self) {
        let _g = self.signal.lock();
        self.cv.notify_all();
    }

    /// Stops the background threads at their next wake-up; writers get [`Error::Closed`].
    pub(super) fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.notify();
    }

    pub(super) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Makes the store refuse writes from now on (the first reason given is kept).
    pub(super) fn poison(&self, why: String) {
        let mut p = self.poison.lock();
        if p.is_none() {
            *p = Some(why);
        }
        drop(p);
        self.notify();
    }

    /// Why the store refuses writes, if it does.
    pub(super) fn poisoned(&self) -> Option<String> {
        self.poison.lock().clone()
    }

    /// Whether a background thread should stop: shut down or poisoned.
    pub(super) fn should_stop(&self) -> bool {
        self.is_shut_down() || self.poison.lock().is_some()
    }
}

/// When this environment variable is set to `1`, a panic in a background thread aborts the
/// process after poisoning the store (panics injected on purpose by the fault-injecting file
/// system excepted).
pub const ABORT_ON_PANIC_VAR: &str = "CHATSTORE_ABORT_ON_BACKGROUND_PANIC";

/// Spawns the background thread `name` running `body`; a panic in it poisons the store.
pub(super) fn spawn(
    engine: &Arc<Engine>,
    name: &'static str,
    body: fn(&Arc<Engine>),
) -> Result<JoinHandle<()>> {
    let worker = Arc::clone(engine);
    std::thread::Builder::new()
        .name(format!("chatstore-{name}"))
        .spawn(move || run_guarded(&worker, name, body))
        .map_err(|e| Error::io(&engine.dir, e))
}

fn run_guarded(engine: &Arc<Engine>, name: &str, body: fn(&Arc<Engine>)) {
    let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| body(engine))) else {
        return;
    };
    let injected = payload.is::<InjectedPanic>();
    let why = format!(
        "the {name} thread panicked: {}",
        panic_message(payload.as_ref())
    );
    engine.set_poison(why.clone());
    // Writers queued behind a stalled leader wait on the commit queue.
    engine.committer.wake_writers();
    if !injected && std::env::var_os(ABORT_ON_PANIC_VAR).is_some_and(|v| v == "1") {
        eprintln!("chatstore: {why}; aborting because {ABORT_ON_PANIC_VAR}=1");
        std::process::abort();
    }
}

/// The text of a panic payload (`panic!` with a string or a format), or a placeholder.
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if payload.is::<InjectedPanic>() {
        "injected panic".to_string()
    } else {
        "non-string panic payload".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_recovered_from_each_payload_kind() {
        let s: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(s.as_ref()), "static");
        let s: Box<dyn Any + Send> = Box::new(format!("formatted {}", 1));
        assert_eq!(panic_message(s.as_ref()), "formatted 1");
        let s: Box<dyn Any + Send> = Box::new(InjectedPanic);
        assert_eq!(panic_message(s.as_ref()), "injected panic");
        let s: Box<dyn Any + Send> = Box::new(7u32);
        assert_eq!(panic_message(s.as_ref()), "non-string panic payload");
    }
}
