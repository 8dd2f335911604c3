//! Points in time computed from configured durations, without overflow: a lease TTL or an
//! append timeout set absurdly large must not panic the thread that renews or waits.

use std::time::{Duration, Instant};

/// Longest wait a deadline stands for; longer configured durations count as this.
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// `from + wait`, with `wait` capped at a year; if even that does not fit, `from` (the wait
/// is over at once: the safe side for both leases and time-outs).
pub(crate) fn after(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait.min(LONGEST)).unwrap_or(from)
}

/// [`after`] from now.
pub(crate) fn in_(wait: Duration) -> Instant {
    after(Instant::now(), wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_waits_do_not_overflow() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now);
        assert_eq!(
            after(now, Duration::from_secs(2)),
            now + Duration::from_secs(2)
        );
        assert!(in_(Duration::MAX) > now);
    }
}
