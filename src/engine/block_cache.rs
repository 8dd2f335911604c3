//! A byte-bounded cache of decoded segment blocks, shared by all readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::format::block::Block;

/// (segment number, block index). Segment numbers are never reused, so keys never go stale.
pub type BlockKey = (u64, u32);

#[derive(Clone, Copy, Debug)]
struct BlockWeight;

impl Weighter<BlockKey, Arc<Block>> for BlockWeight {
    fn weight(&self, _key: &BlockKey, block: &Arc<Block>) -> u64 {
        block.footprint() as u64
    }
}

/// The cache plus hit counters.
pub struct BlockCache {
    cache: Cache<BlockKey, Arc<Block>, BlockWeight>,
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
    /// A cache holding up to `bytes` of decoded blocks (0 disables it).
    pub fn new(bytes: usize) -> Self {
        let items = (bytes / (16 << 10)).max(16);
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
        load: impl FnOnce() -> Result<Block, E>,
    ) -> Result<Arc<Block>, E> {
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
