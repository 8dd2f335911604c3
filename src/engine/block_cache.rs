//! A byte-bounded cache of decoded segment blocks (message and state blocks) and of segment
//! index partitions, shared by all readers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use quick_cache::sync::Cache;
use quick_cache::Weighter;

use bytes::Bytes;

use crate::error::Result;
use crate::format::block::Block;
use crate::format::index_partitions::{IndexPart, IndexPartitionCache};
use crate::format::state_block::StateBlock;

/// Which section of a segment a block is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    /// Columnar message blocks.
    Messages,
    /// Key-value state blocks.
    State,
    /// Partitions of the block index.
    BlockIndex,
    /// Partitions of the conversation index.
    ConversationIndex,
    /// Partitions of the block sizes.
    BlockSizes,
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
    /// A partition of a segment's block or conversation index, as stored.
    IndexPartition(Bytes),
}

/// What a cached entry costs beyond its bytes (the entry, its key, the `Arc`).
const ENTRY_OVERHEAD: usize = 64;

impl CachedBlock {
    fn footprint(&self) -> usize {
        match self {
            CachedBlock::Messages(b) => b.footprint(),
            CachedBlock::State(b) => b.footprint(),
            CachedBlock::IndexPartition(b) => b.len() + ENTRY_OVERHEAD,
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

    /// Returns the cached block or loads and caches it. Concurrent misses of one block share
    /// one load: the first caller reads and decodes, the others wait for its result (a hot
    /// conversation's newest block is read from disk once, not once per reader); if that load
    /// fails, the next waiter loads in turn.
    pub fn get_or_load<E>(
        &self,
        key: BlockKey,
        load: impl FnOnce() -> Result<CachedBlock, E>,
    ) -> Result<Arc<CachedBlock>, E> {
        if let Some(b) = self.cache.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let mut loaded = false;
        let block = self.cache.get_or_insert_with(&key, || {
            loaded = true;
            load().map(Arc::new)
        })?;
        // A caller served by another's load read nothing from disk: a hit.
        let counter = if loaded { &self.misses } else { &self.hits };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(block)
    }

    /// Changes how many bytes of decoded blocks the cache may hold, evicting down to it.
    pub fn set_capacity(&self, bytes: u64) {
        if self.cache.capacity() != bytes {
            self.cache.set_capacity(bytes);
        }
    }

    /// How many bytes of decoded blocks the cache may hold now.
    pub fn capacity(&self) -> u64 {
        self.cache.capacity()
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

/// Index partitions share the cache (and so the memory budget) with blocks: a lookup reads the
/// partition it needs once, and a partition nobody looks at gives way like a cold block.
impl IndexPartitionCache for BlockCache {
    fn get_or_load(
        &self,
        segment: u64,
        part: IndexPart,
        load: &mut dyn FnMut() -> Result<Bytes>,
    ) -> Result<Bytes> {
        let (section, n) = match part {
            IndexPart::Blocks(n) => (Section::BlockIndex, n),
            IndexPart::Conversations(n) => (Section::ConversationIndex, n),
            IndexPart::BlockSizes(n) => (Section::BlockSizes, n),
        };
        let cached = BlockCache::get_or_load(self, (segment, section, n), || {
            load().map(CachedBlock::IndexPartition)
        })?;
        match &*cached {
            CachedBlock::IndexPartition(bytes) => Ok(bytes.clone()),
            // Keys of index sections only ever hold partitions.
            _ => load(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

    fn block() -> CachedBlock {
        let mut b = crate::format::state_block::StateBlockBuilder::new();
        b.add(b"key", Some(b"value"));
        CachedBlock::State(StateBlock::decode(bytes::Bytes::from(b.finish())).unwrap())
    }

    #[test]
    fn concurrent_misses_of_one_block_load_it_once() {
        let cache = Arc::new(BlockCache::new(1 << 20));
        let loads = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(8));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads, start) = (cache.clone(), loads.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    cache
                        .get_or_load((1, Section::State, 0), || {
                            loads.fetch_add(1, Ordering::SeqCst);
                            // Slow enough that every other reader arrives meanwhile.
                            std::thread::sleep(Duration::from_millis(200));
                            Ok::<_, ()>(block())
                        })
                        .unwrap()
                })
            })
            .collect();
        let blocks: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(blocks.iter().all(|b| Arc::ptr_eq(b, &blocks[0])));
        let (hits, misses, _) = cache.counters();
        assert_eq!((hits, misses), (7, 1));
    }

    #[test]
    fn a_failed_load_leaves_the_next_caller_to_load() {
        let cache = BlockCache::new(1 << 20);
        let key = (2, Section::State, 0);
        assert!(cache
            .get_or_load(key, || Err::<CachedBlock, _>("bad disk"))
            .is_err());
        let b = cache.get_or_load(key, || Ok::<_, &str>(block())).unwrap();
        assert!(Arc::ptr_eq(
            &b,
            &cache.get_or_load(key, || Err("unused")).unwrap()
        ));
    }
}
