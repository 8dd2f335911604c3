//! Where each input of a merge holds a conversation, found by walking the inputs'
//! conversation indexes forward.
//!
//! A merge needs, for every conversation it meets, the id range each input holds of it (holes
//! between those ranges lie below a watermark). Searching every input's conversation index
//! anew for every conversation was ~10 % of a level-0 → level-1 merge's time on the chat
//! workload: half a million conversations, each searched for in every input, almost all
//! of them cache misses in indexes of megabytes. A merge meets conversations in key order and
//! the indexes are sorted the same way, so a cursor per input that gallops forward from where
//! it last stopped finds each one in a step or two, reading each index once, in order.

use std::sync::Arc;

use crate::engine::version::Segment;
use crate::error::{Error, Result};
use crate::format::index_partitions::IndexCursor;
use crate::types::ConversationId;

/// One cursor per input of a merge, on its conversation index.
pub(crate) struct ConversationCursors<'a> {
    inputs: Vec<Cursor<'a>>,
}

struct Cursor<'a> {
    index: IndexCursor<'a>,
    len: usize,
    /// Where the last lookup stopped: every entry before it is of a smaller conversation.
    at: usize,
}

impl<'a> ConversationCursors<'a> {
    /// Cursors on `inputs`, each reading its input's conversation index a partition at a time.
    pub(crate) fn open(inputs: &'a [Arc<Segment>]) -> Self {
        let inputs = inputs
            .iter()
            .map(|s| Cursor {
                index: s.reader.index_cursor(),
                len: s.reader.conversation_count(),
                at: 0,
            })
            .collect();
        ConversationCursors { inputs }
    }

    /// Calls `each` with the (first, last) ids of `conv` in every input that holds it. Cheapest
    /// when called in conversation order, as a merge does; any order gives the right answer.
    pub(crate) fn ranges(
        &mut self,
        conv: ConversationId,
        mut each: impl FnMut(u64, u64),
    ) -> Result<()> {
        for c in &mut self.inputs {
            // The search cannot fail midway: the first error is kept and reported after it.
            let mut failed: Option<Error> = None;
            let index = &mut c.index;
            c.at = lower_bound(c.len, c.at, conv.0, |i| match index.conversation_entry(i) {
                Ok((found, _, _)) => found.0,
                Err(e) => {
                    failed.get_or_insert(e);
                    u64::MAX
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if c.at < c.len {
                let (found, first, last) = c.index.conversation_entry(c.at)?;
                if found == conv {
                    each(first, last);
                }
            }
        }
        Ok(())
    }
}

/// The first position in `0..len` whose key is not below `target` (`len` if none), for keys
/// sorted ascending; `hint` is where to start looking. Forward of the hint it gallops (1, 2, 4...
/// entries) and then halves, so a target a few entries on costs a few reads; a target behind
/// the hint costs a binary search of what lies before it.
pub(crate) fn lower_bound(
    len: usize,
    hint: usize,
    target: u64,
    mut key: impl FnMut(usize) -> u64,
) -> usize {
    let mut below = |i: usize| key(i) < target;
    let hint = hint.min(len);
    if hint > 0 && !below(hint.saturating_sub(1)) {
        return partition(0, hint, &mut below);
    }
    // Every entry before `lo` is below the target.
    let mut lo = hint;
    let mut step = 1usize;
    loop {
        let probe = lo.saturating_add(step).saturating_sub(1);
        if probe >= len {
            return partition(lo, len, &mut below);
        }
        if !below(probe) {
            return partition(lo, probe, &mut below);
        }
        lo = probe.saturating_add(1);
        step = step.saturating_mul(2);
    }
}

/// The first position in `lo..hi` that is not `below` (`hi` if none), for a predicate that holds
/// for a prefix of the range.
fn partition(mut lo: usize, mut hi: usize, mut below: impl FnMut(usize) -> bool) -> usize {
    while lo < hi {
        let mid = lo.saturating_add(hi.saturating_sub(lo) / 2);
        if below(mid) {
            lo = mid.saturating_add(1);
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_first_key_not_below_the_target_from_any_hint() {
        let keys = [3u64, 5, 9, 10, 40];
        let key = |i: usize| keys[i];
        for hint in 0..=keys.len() + 2 {
            assert_eq!(lower_bound(keys.len(), hint, 0, key), 0);
            assert_eq!(lower_bound(keys.len(), hint, 3, key), 0);
            assert_eq!(lower_bound(keys.len(), hint, 4, key), 1);
            assert_eq!(lower_bound(keys.len(), hint, 10, key), 3);
            assert_eq!(lower_bound(keys.len(), hint, 40, key), 4);
            assert_eq!(lower_bound(keys.len(), hint, 41, key), 5);
            assert_eq!(lower_bound(keys.len(), hint, u64::MAX, key), 5);
        }
        assert_eq!(lower_bound(0, 0, 7, |_| unreachable!()), 0);
    }

    proptest! {
        #[test]
        fn agrees_with_a_binary_search_whatever_the_order_of_lookups(
            mut keys in prop::collection::vec(any::<u64>(), 0..300),
            targets in prop::collection::vec(any::<u64>(), 1..60),
            sorted_targets in any::<bool>(),
        ) {
            keys.sort_unstable();
            keys.dedup();
            let mut targets = targets;
            if sorted_targets {
                targets.sort_unstable();
            }
            // Targets near the keys too, not only far between them.
            let near: Vec<u64> = keys.iter().step_by(7).map(|k| k.wrapping_add(1)).collect();
            let mut at = 0;
            for &t in targets.iter().chain(&near) {
                at = lower_bound(keys.len(), at, t, |i| keys[i]);
                prop_assert_eq!(at, keys.partition_point(|&k| k < t), "target {}", t);
            }
        }
    }
}
