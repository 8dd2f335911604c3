//! One memory budget (`Options::memory_budget_bytes`) for what the store keeps in memory:
//! memtables, the segments' resident indexes, and the block cache, which gets what the other
//! two leave.
//!
//! Memtables and indexes cannot be evicted (writes and every read need them), the cache can:
//! so the cache is the part that gives way, as RocksDB's write buffer manager charges
//! memtables to its block cache. The charge is recomputed whenever what it counts changes
//! shape (a memtable switch, a flush, a compaction) rather than on every write: the active
//! memtable is charged at its full size from the moment it is created, so its growth between
//! two switches never takes the store over budget.

use std::sync::atomic::Ordering;

use super::Engine;
use crate::options::Options;

/// The share of the budget the cache keeps however much the memtables and indexes hold: with
/// no cache at all a scan would read and decode a block again for every page it returns.
/// Memory above the budget is then what the memtables and indexes hold beyond it, reported in
/// [`Stats::memory_charged_bytes`](crate::Stats::memory_charged_bytes).
const CACHE_FLOOR_DIVISOR: u64 = 16;

/// The budget the write leader's last-id cache is sized from: the store's, or none for a
/// read-only store, which never writes.
pub(crate) fn last_id_cache_budget(opts: &Options) -> usize {
    if opts.read_only {
        0
    } else {
        opts.memory_budget_bytes
    }
}

/// Bytes the write leader's last-id cache holds.
fn last_id_cache_bytes(opts: &Options) -> u64 {
    super::last_ids::bytes_for_budget(last_id_cache_budget(opts))
}

/// What the budget is charged with, besides the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Charges {
    /// Every memtable still in memory (active at no less than its full size, frozen ones,
    /// and flushed ones a reader still holds).
    pub memtables: u64,
    /// Block and conversation indexes, footers and conversation filters of the live
    /// segments.
    pub indexes: u64,
    /// The write leader's cache of conversations' last ids (a fixed size).
    pub last_ids: u64,
    /// What flushes and merge threads under way work in ([`WorkingMemory`]).
    pub working: u64,
}

/// What one merge thread works in while it writes an output, beyond the rows it moves: its
/// inputs' read windows (1 MiB, `compaction/read_window.rs`), the output writer's buffer and
/// packed indexes (~1–2 MiB for a 64 MiB output of ~200 K conversations), its block builder,
/// and zstd's compression context with the dictionary (~1 MiB at level 3).
pub(crate) const MERGE_THREAD_WORKING_BYTES: u64 = 4 << 20;

/// What a flush works in beyond the memtable it writes: the segment writer (buffer and packed
/// indexes, ~0.5 MiB for a 16 MiB memtable) and the dictionary trainer when it trains
/// (~1.3 MiB, `format/dictionary.rs`).
pub(crate) const FLUSH_WORKING_BYTES: u64 = 2 << 20;

/// Working memory charged to the budget while it is held: the block cache gives way to a
/// flush or merge under way as it does to memtables, and gets the memory back when it ends.
#[must_use = "the charge ends when this is dropped"]
pub(crate) struct WorkingMemory<'a> {
    engine: &'a Engine,
    bytes: u64,
}

impl Drop for WorkingMemory<'_> {
    fn drop(&mut self) {
        let _rebalancing = self.engine.rebalancing.lock();
        self.engine
            .working_memory
            .fetch_sub(self.bytes, Ordering::Relaxed);
        self.engine.rebalance_memory_locked();
    }
}

/// The cache's capacity is a multiple of this: the cache splits it evenly among its shards
/// (a power of two of them, fewer than this), rounding each share up, and a capacity that
/// did not divide evenly would come out a few bytes over the budget.
const CACHE_CAPACITY_STEP: u64 = 4096;

/// The block cache's capacity under `budget` once `charges` are paid.
pub(crate) fn cache_capacity(budget: u64, charges: Charges) -> u64 {
    let capacity = budget
        .saturating_sub(charges.memtables)
        .saturating_sub(charges.indexes)
        .saturating_sub(charges.last_ids)
        .saturating_sub(charges.working)
        .max(budget / CACHE_FLOOR_DIVISOR);
    (capacity / CACHE_CAPACITY_STEP * CACHE_CAPACITY_STEP).max(1)
}

impl Engine {
    /// Charges `bytes` of working memory to the budget until the result is dropped.
    pub(crate) fn charge_working_memory(&self, bytes: u64) -> WorkingMemory<'_> {
        // Under the lock `Stats` reads the charges and the cache's capacity with: a charge
        // counted before the cache gave way to it would show the store over its budget.
        let _rebalancing = self.rebalancing.lock();
        self.working_memory.fetch_add(bytes, Ordering::Relaxed);
        self.rebalance_memory_locked();
        WorkingMemory {
            engine: self,
            bytes,
        }
    }

    /// What memtables and live segments hold now.
    pub(crate) fn memory_charges(&self) -> Charges {
        let v = self.current();
        let held = self.memtables_held.load(Ordering::Relaxed);
        let active = v.active.bytes() as u64;
        let reserved = active.max(self.opts.memtable_bytes as u64);
        Charges {
            memtables: held.saturating_sub(active).saturating_add(reserved),
            indexes: v
                .segments
                .iter()
                .map(|s| s.resident_bytes())
                .fold(0u64, u64::saturating_add),
            last_ids: last_id_cache_bytes(&self.opts),
            working: self.working_memory.load(Ordering::Relaxed),
        }
    }

    /// Rebalances if a read loaded segment indexes since the last rebalance (indexes of the
    /// segments found at open are read at their first lookup). One relaxed load otherwise.
    pub(crate) fn charge_loaded_indexes(&self) {
        if self.readers.index_loads.load(Ordering::Relaxed) != 0
            && self.readers.index_loads.swap(0, Ordering::Relaxed) != 0
        {
            self.rebalance_memory();
        }
    }

    /// Gives the block cache what the budget leaves after the memtables and indexes (evicting
    /// down to it if it shrank). Called after every change of the memtables or of the live
    /// segments.
    pub(crate) fn rebalance_memory(&self) {
        let _rebalancing = self.rebalancing.lock();
        self.rebalance_memory_locked();
    }

    /// [`rebalance_memory`](Self::rebalance_memory), the caller holding `rebalancing`.
    fn rebalance_memory_locked(&self) {
        let budget = self.opts.memory_budget_bytes as u64;
        self.readers
            .cache
            .set_capacity(cache_capacity(budget, self.memory_charges()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_gets_what_memtables_and_indexes_leave_down_to_its_floor() {
        let budget = 64 << 20;
        let charges = |memtables, indexes| Charges {
            memtables,
            indexes,
            last_ids: 0,
            working: 0,
        };
        assert_eq!(cache_capacity(budget, charges(0, 0)), budget);
        assert_eq!(cache_capacity(budget, charges(16 << 20, 2 << 20)), 46 << 20);
        assert_eq!(
            cache_capacity(budget, charges(48 << 20, 12 << 20)),
            budget / CACHE_FLOOR_DIVISOR
        );
        assert_eq!(
            cache_capacity(budget, charges(u64::MAX, u64::MAX)),
            budget / CACHE_FLOOR_DIVISOR
        );
        assert_eq!(cache_capacity(0, charges(0, 0)), 1);
        let with_last_ids = Charges {
            last_ids: 4 << 20,
            ..charges(16 << 20, 2 << 20)
        };
        assert_eq!(cache_capacity(budget, with_last_ids), 42 << 20);
        let while_merging = Charges {
            working: 2 * MERGE_THREAD_WORKING_BYTES + FLUSH_WORKING_BYTES,
            ..with_last_ids
        };
        assert_eq!(cache_capacity(budget, while_merging), 32 << 20);
    }
}
