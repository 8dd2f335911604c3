//! RocksDB, configured the way its tuning guide suggests for a point-and-range workload:
//! LZ4 blocks, a 10 bits/key bloom filter plus a fixed 8-byte prefix extractor (the
//! conversation), a 64 MiB write buffer, a 64 MiB LRU block cache holding index and filter
//! blocks too (so memory stays bounded), dynamic level sizes, background jobs sized to the
//! machine. Writes are `WriteBatch`es with `sync = true` (durable) or `false` (buffered).
//! Statistics are on at the cheapest level that keeps counters (`ExceptHistogramOrTimers`: no
//! histograms, no timers), for the stall time and the flush and compaction bytes of the
//! sustained-ingest curve.

use std::path::Path;
use std::time::Duration;

use rocksdb::statistics::{StatsLevel, Ticker};
use rocksdb::{
    properties, BlockBasedOptions, Cache, DBCompressionType, Options, ReadOptions, SliceTransform,
    WriteBatch, WriteOptions, DB,
};

use super::{key, key_id, value_into, Engine, Got, Mode, Msg, Res};

pub struct Rocks {
    db: DB,
    /// Holds the statistics object the tickers are read from.
    opts: Options,
    write: WriteOptions,
    _cache: Cache,
    value: Vec<u8>,
}

impl Rocks {
    pub fn open(dir: &Path, mode: Mode) -> Res<Rocks> {
        let cache = Cache::new_lru_cache(64 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        table.set_format_version(5);

        let mut opts = Options::default();
        opts.create_if_missing(true);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
        opts.increase_parallelism(cores);
        opts.set_max_background_jobs(cores.max(2));
        opts.set_write_buffer_size(64 << 20);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_level_compaction_dynamic_level_bytes(true);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_prefix_extractor(SliceTransform::create_fixed_prefix(8));
        opts.set_memtable_prefix_bloom_ratio(0.1);
        opts.set_block_based_table_factory(&table);
        opts.enable_statistics();
        opts.set_statistics_level(StatsLevel::ExceptHistogramOrTimers);

        let db = DB::open(&opts, dir)?;
        let mut write = WriteOptions::default();
        write.set_sync(mode == Mode::Durable);
        Ok(Rocks {
            db,
            opts,
            write,
            _cache: cache,
            value: Vec::with_capacity(256),
        })
    }

    fn prop(&self, name: &rocksdb::properties::PropName) -> u64 {
        self.db.property_int_value(name).ok().flatten().unwrap_or(0)
    }

    /// The "Cumulative stall" line of `rocksdb.stats` (its own account of stall time, kept
    /// beside the `rocksdb.stall.micros` ticker as a cross-check).
    fn cumulative_stall(&self) -> String {
        self.db
            .property_value(properties::STATS)
            .ok()
            .flatten()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Cumulative stall"))
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }
}

impl Engine for Rocks {
    fn write_batch(&mut self, batch: &[Msg<'_>]) -> Res<()> {
        let mut wb = WriteBatch::default();
        for m in batch {
            value_into(m, &mut self.value);
            wb.put(key(m.conv, m.id), &self.value);
        }
        self.db.write_opt(wb, &self.write)?;
        Ok(())
    }

    fn range(&self, conv: u64, lo: u64, hi: u64) -> Res<Got> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(key(conv, lo).to_vec());
        ro.set_iterate_upper_bound(key(conv, hi + 1).to_vec());
        ro.set_prefix_same_as_start(true);
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(key(conv, lo));
        let mut got = Got::default();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if got.msgs == 0 {
                got.first = key_id(k);
            }
            got.msgs += 1;
            got.bytes += v.len().saturating_sub(16) as u64;
            it.next();
        }
        it.status()?;
        Ok(got)
    }

    fn put_raw(&mut self, pairs: &[([u8; 16], [u8; 8])]) -> Res<()> {
        let mut wb = WriteBatch::default();
        for (k, v) in pairs {
            wb.put(k, v);
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db.write_opt(wb, &sync)?;
        Ok(())
    }

    fn scan_raw(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Vec<([u8; 16], Vec<u8>)>> {
        // Both ends share their first 8 bytes (the prefix extractor's): a prefix scan.
        let mut ro = ReadOptions::default();
        ro.set_prefix_same_as_start(true);
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek(lo);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k > &hi[..] {
                break;
            }
            let k = <[u8; 16]>::try_from(k).map_err(|_| format!("a key of {} bytes", k.len()))?;
            out.push((k, v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    fn last_key_in(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Option<[u8; 16]>> {
        let mut ro = ReadOptions::default();
        ro.set_prefix_same_as_start(true);
        let mut it = self.db.raw_iterator_opt(ro);
        it.seek_for_prev(hi);
        it.status()?;
        match it.key() {
            Some(k) if k >= &lo[..] => Ok(Some(
                <[u8; 16]>::try_from(k).map_err(|_| format!("a key of {} bytes", k.len()))?,
            )),
            _ => Ok(None),
        }
    }

    fn contains(&self, conv: u64, id: u64) -> Res<bool> {
        Ok(self.db.get_pinned(key(conv, id))?.is_some())
    }

    fn settle(&mut self) -> Res<()> {
        self.db.flush()?;
        self.db.flush_wal(true)?;
        super::wait_idle(
            || {
                self.prop(properties::COMPACTION_PENDING) > 0
                    || self.prop(properties::NUM_RUNNING_COMPACTIONS) > 0
                    || self.prop(properties::NUM_RUNNING_FLUSHES) > 0
            },
            Duration::from_secs(300),
        );
        Ok(())
    }

    fn extra(&self) -> serde_json::Value {
        serde_json::json!({
            "live_sst_bytes": self.prop(properties::LIVE_SST_FILES_SIZE),
            "estimate_num_keys": self.prop(properties::ESTIMATE_NUM_KEYS),
            "block_cache_usage": self.prop(properties::BLOCK_CACHE_USAGE),
        })
    }

    fn sample(&self) -> serde_json::Value {
        let t = |ticker| self.opts.get_ticker_count(ticker);
        let levels: Vec<u64> = (0..7)
            .map(|l| {
                // A string property (`property_int_value` does not answer it).
                self.db
                    .property_value(&*properties::num_files_at_level(l))
                    .ok()
                    .flatten()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        serde_json::json!({
            "stall_micros": t(Ticker::StallMicros),
            "pending_compaction_bytes": self.prop(properties::ESTIMATE_PENDING_COMPACTION_BYTES),
            "files_per_level": levels,
            "flush_bytes_written": t(Ticker::FlushWriteBytes),
            "compaction_bytes_written": t(Ticker::CompactWriteBytes),
            "compaction_bytes_read": t(Ticker::CompactReadBytes),
            "wal_bytes_written": t(Ticker::WalFileBytes),
            "live_sst_bytes": self.prop(properties::LIVE_SST_FILES_SIZE),
            "immutable_memtables": self.prop(properties::NUM_IMMUTABLE_MEM_TABLE),
            "write_stopped": self.prop(properties::IS_WRITE_STOPPED),
            "delayed_write_rate": self.prop(properties::ACTUAL_DELAYED_WRITE_RATE),
            "cumulative_stall": self.cumulative_stall(),
        })
    }

    fn close(self: Box<Self>) -> Res<()> {
        drop(self);
        Ok(())
    }
}
