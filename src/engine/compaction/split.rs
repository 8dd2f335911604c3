//! Where one compaction's message merge is cut into parallel parts (subcompactions).
//!
//! Outputs of level 1 and deeper split between conversations anyway, so a merge can be cut at
//! conversation boundaries into key ranges that are merged independently, each into its own
//! output segments, and the outputs concatenated in key order: the result is what one merge
//! would have written, give or take where segments split. A level-0 → level-1 merge on the
//! chat workload takes every level-0 segment and all of level 1 (each flushed segment spans
//! nearly every conversation), so it is the one big job compaction runs: cut in two, it uses
//! the second core whenever the writer leaves it idle (fsync waits, write stalls).

use std::sync::Arc;

use crate::engine::version::Segment;
use crate::types::ConversationId;

/// A half-open range of conversations, `lo..hi`; `None` is unbounded on that side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyRange {
    pub lo: Option<ConversationId>,
    pub hi: Option<ConversationId>,
}

impl KeyRange {
    pub(crate) const ALL: KeyRange = KeyRange { lo: None, hi: None };

    pub(crate) fn contains(&self, conv: ConversationId) -> bool {
        self.lo.is_none_or(|lo| conv >= lo) && self.hi.is_none_or(|hi| conv < hi)
    }

    /// Whether `conv` is before the range's end (so a cursor there may still hold rows of it).
    pub(crate) fn before_end(&self, conv: ConversationId) -> bool {
        self.hi.is_none_or(|hi| conv < hi)
    }
}

/// Cuts the conversations of `inputs` into at most `parts` ranges of about equal input bytes
/// (weighed by the stored size of their blocks, as the block indexes say: no data is read).
/// Returns one unbounded range when the inputs weigh less than `min_bytes` (not worth a
/// thread) or cannot be cut.
pub(crate) fn ranges(inputs: &[Arc<Segment>], parts: usize, min_bytes: u64) -> Vec<KeyRange> {
    let total: u64 = inputs
        .iter()
        .map(|s| s.reader.file_bytes())
        .fold(0, u64::saturating_add);
    if parts < 2 || total < min_bytes {
        return vec![KeyRange::ALL];
    }
    let mut blocks: Vec<(ConversationId, u64)> = Vec::new();
    for s in inputs {
        // An index that cannot be read leaves the merge uncut: the merge reads the same
        // index and reports the error.
        let mut index = s.reader.index_cursor();
        for i in 0..s.reader.block_count() {
            let Ok(entry) = index.block(i) else {
                return vec![KeyRange::ALL];
            };
            blocks.push((ConversationId(entry.first.0), u64::from(entry.handle.len)));
        }
    }
    blocks.sort_unstable();
    let weight: u64 = blocks
        .iter()
        .map(|&(_, len)| len)
        .fold(0, u64::saturating_add);
    let Some(&(first, _)) = blocks.first() else {
        return vec![KeyRange::ALL];
    };
    let mut cuts: Vec<ConversationId> = Vec::with_capacity(parts);
    let mut seen = 0u64;
    let mut next_part = 1u64;
    let parts = parts as u64;
    for &(conv, len) in &blocks {
        // Cut k goes at the first block boundary (between conversations) where the running
        // weight reaches k / parts of the whole.
        let goal = u128::from(weight)
            .saturating_mul(u128::from(next_part))
            .checked_div(u128::from(parts))
            .unwrap_or(0);
        if next_part < parts
            && u128::from(seen) >= goal
            && conv > first
            && cuts.last().is_none_or(|&c| conv > c)
        {
            cuts.push(conv);
            next_part = next_part.saturating_add(1);
        }
        seen = seen.saturating_add(len);
    }
    let mut out = Vec::with_capacity(cuts.len().saturating_add(1));
    let mut lo = None;
    for cut in cuts {
        out.push(KeyRange { lo, hi: Some(cut) });
        lo = Some(cut);
    }
    out.push(KeyRange { lo, hi: None });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_holds_its_lower_bound_and_not_its_upper() {
        let r = KeyRange {
            lo: Some(ConversationId(5)),
            hi: Some(ConversationId(9)),
        };
        assert!(!r.contains(ConversationId(4)));
        assert!(r.contains(ConversationId(5)));
        assert!(r.contains(ConversationId(8)));
        assert!(!r.contains(ConversationId(9)));
        assert!(r.before_end(ConversationId(1)));
        assert!(!r.before_end(ConversationId(9)));
        assert!(KeyRange::ALL.contains(ConversationId(u64::MAX)));
    }
}
