//! How the key ranges of one cut merge are shared among threads while it runs.
//!
//! A merge is cut into many more ranges than threads (`split::ranges`). The compaction
//! thread owns them all at first, as one span, and merges them in key order into one output
//! set: a merge that never gains a helper writes what one uncut merge writes. Between two
//! ranges it asks how many threads the merge may use *now* (compaction may fall behind while
//! a long merge runs, and the writers start to wait on it) and starts helpers up to that
//! number. A helper, or any thread whose span is done, takes the upper half of the span with
//! the most ranges left (work stealing): each thread keeps merging contiguous ranges into one
//! output set, a steal cuts the outputs at one more place, and no thread sits idle waiting
//! for another's larger half, as when a merge was cut once into as many parts as threads.
//! A helper the merge may no longer use leaves between two ranges, giving the rest of its
//! span up to whichever thread runs out of work first.

// Background threads must not panic: no arithmetic that can overflow.
#![deny(clippy::arithmetic_side_effects)]

use parking_lot::Mutex;

use crate::error::Result;

/// What a shared merge does with its ranges; implemented by the compaction job.
pub(crate) trait PartWork: Sync {
    /// Where a span's ranges are written (an output set).
    type Set: Send;
    /// What merging one range returns (its watermarks).
    type Out: Send;
    /// How many threads the merge may use now, the compaction thread included.
    fn threads(&self) -> usize;
    /// A new, empty output set for a stolen span.
    fn new_set(&self) -> Self::Set;
    /// Merges range `range` into `set`, after the span's earlier ranges.
    fn merge(&self, range: usize, set: &mut Self::Set) -> Result<Self::Out>;
    /// Ends the span's output set (the last segment is finished).
    fn finish(&self, set: &mut Self::Set) -> Result<()>;
}

/// One span's outcome: the index of its first range, its output set and what each of its
/// ranges returned, in key order.
pub(crate) struct SpanDone<S, O> {
    pub first: usize,
    pub set: S,
    pub result: Result<Vec<O>>,
}

/// How a shared merge went: its spans in key order, and how many ranges helpers merged.
pub(crate) struct Shared<S, O> {
    pub spans: Vec<SpanDone<S, O>>,
    pub ranges_beside: usize,
}

/// The spans: for each, the next range not yet started, the end (exclusive), and whether a
/// thread still works on it (a helper that leaves gives its span's rest up).
struct Spans {
    spans: Mutex<Vec<Span>>,
}

#[derive(Clone, Copy)]
struct Span {
    next: usize,
    end: usize,
    owned: bool,
}

impl Span {
    fn left(&self) -> usize {
        self.end.saturating_sub(self.next)
    }
}

impl Spans {
    fn new(ranges: usize) -> Spans {
        Spans {
            spans: Mutex::new(vec![Span {
                next: 0,
                end: ranges,
                owned: true,
            }]),
        }
    }

    /// The next range of span `span` to merge, or `None` when it is done (or was cancelled).
    fn take(&self, span: usize) -> Option<usize> {
        let mut spans = self.spans.lock();
        let s = spans.get_mut(span)?;
        if s.next >= s.end {
            return None;
        }
        let range = s.next;
        s.next = s.next.saturating_add(1);
        Some(range)
    }

    /// Gives a new span the rest of a span given up, or else the upper half (rounded up) of
    /// the ranges not yet started of the span with the most of them; returns the new span's
    /// number and its first range.
    fn steal(&self) -> Option<(usize, usize)> {
        let mut spans = self.spans.lock();
        let given_up = spans.iter().position(|s| !s.owned && s.left() > 0);
        let (victim, take) = match given_up {
            Some(i) => (i, spans.get(i)?.left()),
            None => {
                let (i, left) = spans
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (i, s.left()))
                    .max_by_key(|&(i, left)| (left, std::cmp::Reverse(i)))?;
                (i, left.div_ceil(2))
            }
        };
        if take == 0 {
            return None;
        }
        let v = spans.get_mut(victim)?;
        let end = v.end;
        let mid = end.saturating_sub(take);
        v.end = mid;
        spans.push(Span {
            next: mid,
            end,
            owned: true,
        });
        Some((spans.len().saturating_sub(1), mid))
    }

    /// Gives up the rest of span `span`: another thread takes it.
    fn give_up(&self, span: usize) {
        if let Some(s) = self.spans.lock().get_mut(span) {
            s.owned = false;
        }
    }

    /// Whether some span has a range not yet started.
    fn any_left(&self) -> bool {
        self.spans.lock().iter().any(|s| s.left() > 0)
    }

    /// Stops every span after the range it is merging (an error: the merge will be thrown
    /// away).
    fn cancel(&self) {
        for s in self.spans.lock().iter_mut() {
            s.end = s.next;
        }
    }
}

/// Merges span `span` (its first range `first`) into `set`, range by range, while `stay()`
/// says so between ranges (giving the rest up otherwise); `between` runs after each range.
/// Cancels every span on an error.
fn run_span<W: PartWork>(
    work: &W,
    spans: &Spans,
    span: usize,
    first: usize,
    mut set: W::Set,
    stay: &dyn Fn() -> bool,
    between: &mut dyn FnMut(),
) -> SpanDone<W::Set, W::Out> {
    let mut outs = Vec::new();
    let mut result = Ok(());
    while let Some(range) = spans.take(span) {
        match work.merge(range, &mut set) {
            Ok(out) => outs.push(out),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        between();
        if !stay() {
            spans.give_up(span);
            break;
        }
    }
    let result = result.and_then(|()| work.finish(&mut set)).map(|()| outs);
    if result.is_err() {
        spans.cancel();
    }
    SpanDone { first, set, result }
}

/// What a helper thread merged: its spans and how many ranges they held.
type HelperDone<S, O> = (Vec<SpanDone<S, O>>, usize);

/// A helper: steals spans until none is left or the merge may no longer use it (`rank`: the
/// number of threads with it, the compaction thread included).
fn helper<W: PartWork>(work: &W, spans: &Spans, rank: usize) -> HelperDone<W::Set, W::Out> {
    let mut done = Vec::new();
    let mut ranges = 0usize;
    while work.threads() >= rank {
        let Some((span, first)) = spans.steal() else {
            break;
        };
        let stay = || work.threads() >= rank;
        done.push(run_span(
            work,
            spans,
            span,
            first,
            work.new_set(),
            &stay,
            &mut || {
                ranges = ranges.saturating_add(1);
            },
        ));
    }
    (done, ranges)
}

/// Runs the `ranges` of one merge on the calling thread (the compaction thread, writing into
/// `first_set`) and on helpers started while it runs, as `work.threads()` allows between
/// ranges. `name(n)` names helper `n` (2, 3, ...). A helper the OS refuses to start is
/// simply not there: the merge runs on the threads it has.
pub(crate) fn run<W: PartWork>(
    work: &W,
    ranges: usize,
    first_set: W::Set,
    name: &dyn Fn(usize) -> String,
) -> Shared<W::Set, W::Out> {
    let spans = &Spans::new(ranges);
    std::thread::scope(|scope| {
        let mut helpers: Vec<std::thread::ScopedJoinHandle<'_, HelperDone<W::Set, W::Out>>> =
            Vec::new();
        let mut refused = false;
        // Starts helpers up to what the merge may use now, while work is left to share.
        let mut grow = || {
            while !refused && spans.any_left() {
                // Helpers that left do not count: one may be wanted again later.
                let live = helpers.iter().filter(|h| !h.is_finished()).count();
                if live.saturating_add(1) >= work.threads() {
                    break;
                }
                let rank = live.saturating_add(2);
                match std::thread::Builder::new()
                    .name(name(rank))
                    .spawn_scoped(scope, move || helper(work, spans, rank))
                {
                    Ok(h) => helpers.push(h),
                    Err(_) => refused = true,
                }
            }
        };
        grow();
        let mut done = vec![run_span(work, spans, 0, 0, first_set, &|| true, &mut grow)];
        // This thread's span is done: it takes from the helpers' spans as they do.
        while let Some((span, first)) = spans.steal() {
            let set = work.new_set();
            done.push(run_span(
                work,
                spans,
                span,
                first,
                set,
                &|| true,
                &mut || {},
            ));
        }
        let mut ranges_beside = 0usize;
        for h in helpers {
            match h.join() {
                Ok((spans_done, ranges)) => {
                    done.extend(spans_done);
                    ranges_beside = ranges_beside.saturating_add(ranges);
                }
                // Background panics are handled where the compaction thread starts.
                Err(payload) => std::panic::resume_unwind(payload),
            }
        }
        done.sort_by_key(|d| d.first);
        Shared {
            spans: done,
            ranges_beside,
        }
    })
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::error::Error;

    /// Records which ranges each set received; may fail at one range; says how many threads
    /// the merge may use from how many ranges were merged so far.
    struct Fake {
        merged: AtomicUsize,
        threads: Box<dyn Fn(usize) -> usize + Sync>,
        fail_at: Option<usize>,
        pause: Duration,
    }

    impl PartWork for Fake {
        type Set = Vec<usize>;
        /// The range, the thread's name, and how many ranges were merged before it.
        type Out = (usize, String, usize);

        fn threads(&self) -> usize {
            (self.threads)(self.merged.load(Ordering::SeqCst))
        }

        fn new_set(&self) -> Vec<usize> {
            Vec::new()
        }

        fn merge(&self, range: usize, set: &mut Vec<usize>) -> Result<(usize, String, usize)> {
            std::thread::sleep(self.pause);
            if self.fail_at == Some(range) {
                return Err(Error::Internal(format!("range {range}")));
            }
            set.push(range);
            let before = self.merged.fetch_add(1, Ordering::SeqCst);
            let name = std::thread::current().name().unwrap_or("").to_string();
            Ok((range, name, before))
        }

        fn finish(&self, _set: &mut Vec<usize>) -> Result<()> {
            Ok(())
        }
    }

    fn fake(threads: impl Fn(usize) -> usize + Sync + 'static) -> Fake {
        Fake {
            merged: AtomicUsize::new(0),
            threads: Box::new(threads),
            fail_at: None,
            pause: Duration::from_millis(2),
        }
    }

    /// Every range was merged once, each span's set holds its ranges in order from `first`
    /// on, and the spans follow one another in key order.
    fn check_spans(shared: &Shared<Vec<usize>, (usize, String, usize)>, ranges: usize) {
        let mut all = Vec::new();
        for span in &shared.spans {
            let outs = span.result.as_ref().unwrap();
            let got: Vec<usize> = outs.iter().map(|o| o.0).collect();
            assert_eq!(got, span.set);
            let want: Vec<usize> = (span.first..span.first + span.set.len()).collect();
            assert_eq!(span.set, want, "a span's ranges are contiguous");
            all.extend(span.set.iter().copied());
        }
        assert_eq!(all, (0..ranges).collect::<Vec<_>>());
    }

    fn name(n: usize) -> String {
        format!("part-helper-{n}")
    }

    /// What the ranges the first helper (`part-helper-2`) merged returned.
    fn helped(shared: &Shared<Vec<usize>, (usize, String, usize)>) -> Vec<&(usize, String, usize)> {
        shared
            .spans
            .iter()
            .flat_map(|s| s.result.as_ref().unwrap())
            .filter(|o| o.1 == "part-helper-2")
            .collect()
    }

    #[test]
    fn one_thread_merges_every_range_into_one_set() {
        let work = fake(|_| 1);
        let shared = run(&work, 20, Vec::new(), &name);
        check_spans(&shared, 20);
        assert_eq!(shared.spans.len(), 1);
        assert_eq!(shared.ranges_beside, 0);
    }

    #[test]
    fn two_threads_from_the_start_share_the_ranges() {
        let work = fake(|_| 2);
        let shared = run(&work, 200, Vec::new(), &name);
        check_spans(&shared, 200);
        let helped = helped(&shared).len();
        assert_eq!(helped, shared.ranges_beside);
        // Not an exact half: a helper starts a little late, and whoever finishes first
        // takes from the other.
        assert!(helped > 0, "the helper took a share: {helped} of 200");
    }

    #[test]
    fn a_helper_joins_a_running_merge_when_it_may() {
        // One thread for the first five ranges, two after.
        let work = fake(|merged| if merged < 5 { 1 } else { 2 });
        let shared = run(&work, 200, Vec::new(), &name);
        check_spans(&shared, 200);
        assert!(shared.ranges_beside > 0);
        let first = &shared.spans[0];
        assert!(first.set.len() >= 5);
        assert!(first
            .result
            .as_ref()
            .unwrap()
            .iter()
            .take(5)
            .all(|o| o.1 != "part-helper-2"));
    }

    #[test]
    fn a_helper_leaves_when_the_merge_may_no_longer_use_it() {
        // Two threads for the first ten ranges, one after: the helper gives the rest of its
        // span up and the compaction thread takes it.
        let work = fake(|merged| if merged < 10 { 2 } else { 1 });
        let shared = run(&work, 200, Vec::new(), &name);
        check_spans(&shared, 200);
        assert!(shared.ranges_beside > 0);
        assert!(
            shared.ranges_beside <= 10,
            "the helper left: {} of 200",
            shared.ranges_beside
        );
    }

    #[test]
    fn a_helper_is_started_again_when_the_merge_may_use_it_again() {
        // Two threads, then one from the fifth range merged, then two again from the
        // thirtieth.
        let work = fake(|merged| if (5..30).contains(&merged) { 1 } else { 2 });
        let shared = run(&work, 200, Vec::new(), &name);
        check_spans(&shared, 200);
        let helped: Vec<usize> = helped(&shared).iter().map(|o| o.2).collect();
        // (How many ranges the first helper merged depends on when the OS started it.)
        assert!(helped.iter().any(|&n| n >= 30), "{helped:?}");
    }

    #[test]
    fn an_error_stops_every_span_and_is_reported() {
        let mut work = fake(|_| 2);
        work.fail_at = Some(7);
        let shared = run(&work, 100, Vec::new(), &name);
        let errors = shared.spans.iter().filter(|s| s.result.is_err()).count();
        assert_eq!(errors, 1);
        let merged = work.merged.load(Ordering::SeqCst);
        assert!(merged < 99, "the spans stopped early: {merged} merged");
    }

    #[test]
    fn no_ranges_no_work() {
        let work = fake(|_| 4);
        let shared = run(&work, 0, Vec::new(), &name);
        assert_eq!(shared.spans.len(), 1);
        assert!(shared.spans[0].set.is_empty());
        assert_eq!(shared.ranges_beside, 0);
    }

    proptest! {
        /// Any sequence of takes and steals hands out every range exactly once, and each
        /// span's ranges in order from where it started.
        #[test]
        fn takes_and_steals_hand_out_every_range_once(
            ranges in 0usize..60,
            ops in proptest::collection::vec((0usize..6, 0u8..3), 0..200),
        ) {
            let spans = Spans::new(ranges);
            let mut taken: Vec<Vec<usize>> = vec![Vec::new()];
            let mut starts = vec![0usize];
            for (span, op) in ops {
                if op == 2 {
                    spans.give_up(span % taken.len());
                } else if op == 1 {
                    if let Some((new, first)) = spans.steal() {
                        prop_assert_eq!(new, taken.len());
                        taken.push(Vec::new());
                        starts.push(first);
                    }
                } else {
                    let span = span % taken.len();
                    if let Some(r) = spans.take(span) {
                        taken[span].push(r);
                    }
                }
            }
            // Drain what is left.
            for (i, got) in taken.iter_mut().enumerate() {
                while let Some(r) = spans.take(i) {
                    got.push(r);
                }
            }
            let mut all: Vec<usize> = taken.iter().flatten().copied().collect();
            for (got, start) in taken.iter().zip(&starts) {
                let want: Vec<usize> = (*start..start + got.len()).collect();
                prop_assert_eq!(got, &want);
            }
            all.sort_unstable();
            prop_assert_eq!(all, (0..ranges).collect::<Vec<_>>());
            prop_assert!(!spans.any_left());
        }
    }
}
