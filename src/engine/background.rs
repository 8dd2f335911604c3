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
use std::sync::Arc;
use std::thread::JoinHandle;

use super::Engine;
use crate::error::{Error, Result};
use crate::fs::InjectedPanic;

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
    // Writers stalled on this thread's work wait on these.
    engine.queue_cv.notify_all();
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
