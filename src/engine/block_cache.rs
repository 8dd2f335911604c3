//! A byte-bounded cache of decoded segment blocks (message and state blocks), shared by all
//! readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::format::block::Block;
use crate::format::state_block::StateBlock;

/// Which section of a segment a block is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// Columnar message blocks.
    Messages,
    /// Key-value state blocks.
    State,
}

/// (segment number, section, block index). Segment numbers are never reused, so keys never go
/// stale.
pub type BlockKey = (u64, Section, u32);

/// A decoded block of either kind.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "always behind an Arc and built once per block read"
)]
pub enum CachedBlock {
    /// A message block.
    Messages(Block),
    /// A state block.
    State(StateBlock),
}

impl CachedBlock {
    fn footprint(&self) -> usize {
        match self {
            CachedBlock::Messages(b) => b.footprint(),
            CachedBlock::State(b) => b.footprint(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct BlockWeight;

impl Weighter<BlockKey, Arc<CachedBlock>> for BlockWeight {
    fn weight(&self, _key: &BlockKey, block: &Arc<CachedBlock>) -> u64 {
        block.footprint() as u64
    }
}

/// The cache plus hit counters.
pub struct BlockCache {
    cache: Cache<BlockKey, Arc<CachedBlock>, BlockWeight>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

impl BlockCache {
    /// A cache holding up to `bytes` of decoded blocks.
    pub fn new(bytes: usize) -> Self {
        let items = (bytes / (4 << 10)).max(16);
        BlockCache {
            cache: Cache::with_weighter(items, bytes.max(1) as u64, BlockWeight),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Returns the cached block or loads and caches it.
    pub fn get_or_load<E>(
        &self,
        key: BlockKey,
        load: impl FnOnce() -> Result<CachedBlock, E>,
    ) -> Result<Arc<CachedBlock>, E> {
        if let Some(b) = self.cache.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let block = Arc::new(load()?);
        self.cache.insert(key, Arc::clone(&block));
        Ok(block)
    }

    /// (hits, misses, bytes held).
    pub fn counters(&self) -> (u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.cache.weight(),
        )
    }
}
