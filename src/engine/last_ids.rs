//! The write leader's cache of conversations' last ids, so an append finds the id to follow
//! without searching the memtables and every segment's conversation index.
//!
//! A miss is expensive where chat stores spend their writes: a conversation written since
//! the last flush is in a memtable, but one written before it is found only by probing every
//! level-0 segment's filter and searching the conversation indexes of the segments that may
//! hold it (cache misses all the way on a store larger than the CPU caches). With writes
//! spread by a Zipf law over 500 K conversations, a 64 K-slot direct-mapped cache left the
//! writer about a quarter of its time in those searches.
//!
//! So the cache is sized from the memory budget (an eighth of it, charged like the
//! memtables: 8 MiB, 524 288 conversations, of the default 64 MiB) and is set-associative:
//! four entries of 16 bytes to a set, one cache line.
//! An entry written again moves one place up its set, and a new conversation takes the
//! bottom place, evicting the entry there: conversations written often climb to the top and
//! stay, the rarely written tail churns through the bottom (a transposition policy, which
//! approaches a frequency order without counting).

use crate::types::ConversationId;

/// Entries per set: 4 × 16 bytes fill one 64-byte cache line.
const WAYS: usize = 4;

/// Bytes one set takes.
const SET_BYTES: usize = WAYS * std::mem::size_of::<Entry>();

/// The share of the memory budget the cache takes.
const BUDGET_DIVISOR: usize = 8;

/// Fewest sets, whatever the budget: a few KiB.
const MIN_SETS: usize = 64;

/// One entry: `[conversation, last]`, `last` being the conversation's committed last id; 0
/// marks an empty entry (a cached conversation has at least one message). Plain integers
/// rather than a struct so that the table is allocated zeroed: the allocator hands out
/// untouched pages, and the cache costs memory and open time only as it fills (8 MiB
/// written entry by entry at open took 3 ms and all of its pages at once).
type Entry = [u64; 2];

const CONVERSATION: usize = 0;
const LAST: usize = 1;

/// Committed last ids of recently written conversations. Only the write leader reads or
/// changes it, and only after its group's record is in the log, so an entry is always the
/// conversation's committed last id (ids are assigned only by commits; nothing else moves a
/// conversation's last id).
pub(crate) struct LastIds {
    sets: Box<[[Entry; WAYS]]>,
    /// Right shift that turns a 64-bit hash into a set number.
    shift: u32,
}

impl LastIds {
    /// A cache sized for `memory_budget` (see [`bytes_for_budget`]).
    pub fn for_budget(memory_budget: usize) -> Self {
        let sets = sets_for_budget(memory_budget);
        LastIds {
            sets: vec![[[0u64; 2]; WAYS]; sets].into_boxed_slice(),
            shift: 64u32.saturating_sub(sets.trailing_zeros()),
        }
    }

    fn set_of(&self, conv: ConversationId) -> usize {
        // Fibonacci hashing: the top bits of the product spread sequential ids over the sets.
        // A shift of 64 (a single set) is out of range for `>>`, hence `checked_shr`.
        conv.0
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .checked_shr(self.shift)
            .unwrap_or(0) as usize
    }

    /// Asks the CPU for `conv`'s set ahead of a [`get`](Self::get): a batch's lookups are
    /// cache misses on a cache of megabytes, and asked for together they overlap.
    pub fn prefetch(&self, conv: ConversationId) {
        if let Some(set) = self.sets.get(self.set_of(conv)) {
            super::prefetch::prefetch_line(set);
        }
    }

    /// The cached last id of `conv`, if it is held.
    pub fn get(&self, conv: ConversationId) -> Option<u64> {
        self.sets
            .get(self.set_of(conv))?
            .iter()
            .find(|e| e[CONVERSATION] == conv.0 && e[LAST] > 0)
            .map(|e| e[LAST])
    }

    /// Records `last` as `conv`'s committed last id.
    pub fn set(&mut self, conv: ConversationId, last: u64) {
        let at = self.set_of(conv);
        let Some(set) = self.sets.get_mut(at) else {
            return;
        };
        match set
            .iter()
            .position(|e| e[CONVERSATION] == conv.0 && e[LAST] > 0)
        {
            Some(i) => {
                set[i][LAST] = last;
                if i > 0 {
                    set.swap(i, i - 1);
                }
            }
            None => {
                // An empty entry if the set has one (searched from the bottom, so at a cold
                // start the first comers sit lowest and go first), else the bottom one.
                let free = set.iter().rposition(|e| e[LAST] == 0).unwrap_or(WAYS - 1);
                set[free] = [conv.0, last];
            }
        }
    }
}

fn sets_for_budget(memory_budget: usize) -> usize {
    let sets = (memory_budget / BUDGET_DIVISOR / SET_BYTES).max(MIN_SETS);
    // The largest power of two not above it, so a set number is the hash's top bits.
    1usize << sets.ilog2()
}

/// Bytes the cache of a store with `memory_budget` holds, charged to that budget.
pub(crate) fn bytes_for_budget(memory_budget: usize) -> u64 {
    (sets_for_budget(memory_budget) * SET_BYTES) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A conversation other than `of` whose entries share `of`'s set, the `n`-th one found.
    fn rivals(cache: &LastIds, of: u64, n: usize) -> Vec<ConversationId> {
        let set = cache.set_of(ConversationId(of));
        (of + 1..u64::MAX)
            .map(ConversationId)
            .filter(|&c| cache.set_of(c) == set)
            .take(n)
            .collect()
    }

    #[test]
    fn sized_from_the_budget_in_whole_sets() {
        assert_eq!(bytes_for_budget(64 << 20), 8 << 20);
        assert_eq!(sets_for_budget(64 << 20), 131_072);
        // Not a power of two: rounded down.
        assert_eq!(sets_for_budget(96 << 20), 131_072);
        assert_eq!(sets_for_budget(0), MIN_SETS);
        assert_eq!(LastIds::for_budget(64 << 20).sets.len(), 131_072);
    }

    #[test]
    fn answers_only_for_the_conversations_it_holds() {
        let mut c = LastIds::for_budget(0);
        assert_eq!(
            c.get(ConversationId(0)),
            None,
            "empty entries answer nothing"
        );
        c.set(ConversationId(7), 3);
        assert_eq!(c.get(ConversationId(7)), Some(3));
        c.set(ConversationId(7), 4);
        assert_eq!(c.get(ConversationId(7)), Some(4));
        assert_eq!(c.get(ConversationId(8)), None);
    }

    #[test]
    fn a_set_holds_four_and_a_newcomer_evicts_the_bottom_entry() {
        let mut c = LastIds::for_budget(0);
        let r = rivals(&c, 7, 4);
        let [a, b, d, e] = [ConversationId(7), r[0], r[1], r[2]];
        for (i, &conv) in [a, b, d, e].iter().enumerate() {
            c.set(conv, 10 + i as u64);
        }
        for (i, &conv) in [a, b, d, e].iter().enumerate() {
            assert_eq!(c.get(conv), Some(10 + i as u64), "four fit in a set");
        }
        // The first comer sits at the bottom: the next newcomer takes its place.
        c.set(r[3], 20);
        assert_eq!(c.get(a), None);
        assert_eq!(c.get(r[3]), Some(20));
        for conv in [b, d, e] {
            assert!(c.get(conv).is_some());
        }
        // Written again, the newcomer moves up: the next one evicts the entry it passed.
        c.set(r[3], 21);
        let f = rivals(&c, r[3].0, 1)[0];
        c.set(f, 30);
        assert_eq!(c.get(r[3]), Some(21));
        assert_eq!(c.get(b), None, "b had sunk to the bottom");
        assert_eq!(c.get(f), Some(30));
    }

    #[test]
    fn a_busy_conversation_is_not_evicted_by_a_stream_of_quiet_ones() {
        let mut c = LastIds::for_budget(0);
        let quiet = rivals(&c, 7, 200);
        c.set(ConversationId(7), 1);
        c.set(ConversationId(7), 2);
        for (i, &q) in quiet.iter().enumerate() {
            c.set(q, 1);
            if i % 10 == 0 {
                c.set(ConversationId(7), 3 + i as u64);
            }
        }
        assert_eq!(c.get(ConversationId(7)), Some(3 + 190));
    }

    proptest! {
        /// Whatever it holds, the cache never answers anything but the last value set.
        #[test]
        fn answers_are_the_last_value_set(
            writes in proptest::collection::vec((0u64..2_000, 1u64..1_000_000), 1..2_000),
            probes in proptest::collection::vec(0u64..2_000, 1..200),
        ) {
            let mut c = LastIds::for_budget(0);
            let mut model = BTreeMap::new();
            for (conv, last) in writes {
                c.set(ConversationId(conv), last);
                model.insert(conv, last);
                prop_assert_eq!(c.get(ConversationId(conv)), Some(last));
            }
            for p in probes {
                if let Some(got) = c.get(ConversationId(p)) {
                    prop_assert_eq!(Some(&got), model.get(&p));
                }
            }
        }
    }
}
