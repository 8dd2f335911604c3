//! fjall (v3): one keyspace with its defaults (bloom filters, 64 MiB memtable, leveled
//! compaction) except that data blocks are LZ4-compressed at every level (fjall's default leaves
//! L0 and L1 uncompressed; RocksDB here compresses every level), a 64 MiB block cache, write batches committed with `PersistMode::SyncData` (durable) or
//! `PersistMode::Buffer` (buffered: the journal reaches the OS, as its README describes the
//! default), range reads with `Keyspace::range`.

use std::path::Path;
use std::time::Duration;

use fjall::config::CompressionPolicy;
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{key, key_id, value_into, Engine, Got, Mode, Msg, Res};

pub struct Fjall {
    db: Database,
    ks: Keyspace,
    persist: PersistMode,
    value: Vec<u8>,
}

impl Fjall {
    pub fn open(dir: &Path, mode: Mode) -> Res<Fjall> {
        let db = Database::builder(dir).cache_size(64 << 20).open()?;
        let ks = db.keyspace("messages", || {
            KeyspaceCreateOptions::default()
                .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
        })?;
        Ok(Fjall {
            db,
            ks,
            persist: match mode {
                Mode::Durable => PersistMode::SyncData,
                Mode::Buffered => PersistMode::Buffer,
            },
            value: Vec::with_capacity(256),
        })
    }
}

impl Engine for Fjall {
    fn write_batch(&mut self, batch: &[Msg<'_>]) -> Res<()> {
        let mut b = self.db.batch().durability(Some(self.persist));
        for m in batch {
            value_into(m, &mut self.value);
            b.insert(&self.ks, &key(m.conv, m.id)[..], self.value.as_slice());
        }
        b.commit()?;
        Ok(())
    }

    fn range(&self, conv: u64, lo: u64, hi: u64) -> Res<Got> {
        let mut got = Got::default();
        for g in self.ks.range(key(conv, lo)..=key(conv, hi)) {
            let (k, v) = g.into_inner()?;
            if got.msgs == 0 {
                got.first = key_id(&k);
            }
            got.msgs += 1;
            got.bytes += v.len().saturating_sub(16) as u64;
        }
        Ok(got)
    }

    fn put_raw(&mut self, pairs: &[([u8; 16], [u8; 8])]) -> Res<()> {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncData));
        for (k, v) in pairs {
            b.insert(&self.ks, &k[..], &v[..]);
        }
        b.commit()?;
        Ok(())
    }

    fn scan_raw(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Vec<([u8; 16], Vec<u8>)>> {
        let mut out = Vec::new();
        for g in self.ks.range(lo..=hi) {
            let (k, v) = g.into_inner()?;
            out.push((raw_key(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    fn last_key_in(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Option<[u8; 16]>> {
        match self.ks.range(lo..=hi).next_back() {
            Some(g) => Ok(Some(raw_key(&g.key()?)?)),
            None => Ok(None),
        }
    }

    fn contains(&self, conv: u64, id: u64) -> Res<bool> {
        Ok(self.ks.contains_key(key(conv, id))?)
    }

    fn settle(&mut self) -> Res<()> {
        self.db.persist(PersistMode::SyncAll)?;
        self.ks.rotate_memtable_and_wait()?;
        super::wait_idle(
            || self.db.active_compactions() > 0 || self.db.outstanding_flushes() > 0,
            Duration::from_secs(300),
        );
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }

    fn extra(&self) -> serde_json::Value {
        serde_json::json!({
            "tables": self.ks.table_count(),
            "l0_tables": self.ks.l0_table_count(),
            "disk_space": self.db.disk_space().unwrap_or(0),
            "journal_count": self.db.journal_count(),
        })
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.db.persist(PersistMode::SyncAll)?;
        drop(self);
        Ok(())
    }
}

fn raw_key(k: &[u8]) -> Res<[u8; 16]> {
    Ok(<[u8; 16]>::try_from(k).map_err(|_| format!("a key of {} bytes", k.len()))?)
}
