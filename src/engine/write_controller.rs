//! The write controller: how long a memtable switch waits for compaction.
//!
//! Level 0 absorbs write bursts: flushes add segments to it faster than compaction drains it
//! for a while, at a cost to memory (each level-0 segment's conversation index stays loaded)
//! and to reads (a read of an old conversation checks every level-0 segment's filter). Past `SLOWDOWN_FACTOR` times the compaction trigger, each memtable switch
//! waits a little, longer the further level 0 is over, up to `MAX_DELAY` from
//! `STOP_FACTOR` times the trigger on. Ingest so slows down in proportion to the debt (the way
//! RocksDB's delayed write rate and pebble's pacing do) instead of stopping for a second at a
//! time, and compaction gets the CPU the writer leaves. A switch never waits longer than
//! `MAX_DELAY` for compaction: one that keeps failing must not stop writes.

// The writer's path must not panic: no arithmetic that can overflow.
#![deny(clippy::arithmetic_side_effects)]

use std::time::Duration;

/// Level 0 may hold this many times its compaction trigger before switches wait at all. A
/// larger level 0 also makes each level-0 compaction do more per pass over level 1: on the
/// `long` preset 8 (against 5) took writers from 125 k to 294 k messages/s durable (in
/// different load, see `docs/compaction.md`) for ~10 MiB more peak memory.
pub(crate) const SLOWDOWN_FACTOR: usize = 8;
/// From this many times its compaction trigger on, a switch waits the longest.
pub(crate) const STOP_FACTOR: usize = 16;
/// Longest a memtable switch waits for compaction to shrink level 0.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(1);

/// How long a memtable switch should wait, in all, for compaction, with `l0_segments` in
/// level 0 and a compaction trigger of `l0_trigger`. Zero below the slowdown threshold; grows
/// with the square of level 0's excess (gentle at first, since a compaction in progress
/// usually brings level 0 back), reaching `MAX_DELAY` at the stop threshold.
pub(crate) fn l0_delay(l0_segments: usize, l0_trigger: usize) -> Duration {
    let slowdown = l0_trigger.saturating_mul(SLOWDOWN_FACTOR);
    let stop = l0_trigger.saturating_mul(STOP_FACTOR);
    if l0_segments < slowdown {
        return Duration::ZERO;
    }
    if l0_segments >= stop {
        return MAX_DELAY;
    }
    // Steps above the threshold, counting the threshold itself as the first.
    let over = l0_segments.saturating_sub(slowdown).saturating_add(1) as u32;
    let span = stop.saturating_sub(slowdown).saturating_add(1) as u32;
    MAX_DELAY
        .saturating_mul(over.saturating_mul(over))
        .checked_div(span.saturating_mul(span))
        .unwrap_or(MAX_DELAY)
}

/// How much longer a switch that has waited `waited` so far should wait for compaction, with
/// level 0 as it is now (`None`: go; the wait ends early when compaction brings level 0 down).
pub(crate) fn wait_left(
    l0_segments: usize,
    l0_trigger: usize,
    waited: Duration,
) -> Option<Duration> {
    let left = l0_delay(l0_segments, l0_trigger).saturating_sub(waited);
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_delay_below_the_slowdown_threshold() {
        for n in 0..32 {
            assert_eq!(l0_delay(n, 4), Duration::ZERO, "{n} segments");
        }
        assert!(l0_delay(32, 4) > Duration::ZERO);
    }

    #[test]
    fn the_delay_grows_with_level0_and_is_capped() {
        let mut last = Duration::ZERO;
        for n in 32..80 {
            let d = l0_delay(n, 4);
            assert!(d >= last, "{n} segments: {d:?} < {last:?}");
            assert!(d <= MAX_DELAY);
            last = d;
        }
        assert_eq!(l0_delay(64, 4), MAX_DELAY);
        assert_eq!(l0_delay(usize::MAX, 4), MAX_DELAY);
        assert!(l0_delay(32, 4) < MAX_DELAY / 10, "gentle at first");
    }

    #[test]
    fn waiting_ends_once_level0_shrinks_or_the_delay_passed() {
        let d = l0_delay(48, 4);
        assert_eq!(wait_left(48, 4, Duration::ZERO), Some(d));
        assert_eq!(wait_left(48, 4, d / 4), Some(d - d / 4));
        assert_eq!(wait_left(48, 4, d), None);
        assert_eq!(wait_left(8, 4, Duration::ZERO), None);
        // Extreme settings do not overflow.
        assert_eq!(l0_delay(3, usize::MAX), Duration::ZERO);
    }
}
