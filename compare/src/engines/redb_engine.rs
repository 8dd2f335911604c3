//! redb (v4): one table `[u8; 16] -> &[u8]`, one write transaction per 1000 messages,
//! committed with `Durability::Immediate` (durable) or `Durability::None` (buffered: redb's
//! non-durable commits, made durable by the next immediate commit, which `settle` and `close`
//! do), one read transaction per read call, a 64 MiB page cache (the default is 1 GiB).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};

use super::{key, value_into, Engine, Got, Mode, Msg, Res};

const MESSAGES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("messages");

pub struct Redb {
    db: Database,
    durability: Durability,
    value: Vec<u8>,
}

impl Redb {
    pub fn open(dir: &Path, mode: Mode) -> Res<Redb> {
        let db = Database::builder()
            .set_cache_size(64 << 20)
            .create(dir.join("chat.redb"))?;
        {
            let tx = db.begin_write()?;
            tx.open_table(MESSAGES)?;
            tx.commit()?;
        }
        Ok(Redb {
            db,
            durability: match mode {
                Mode::Durable => Durability::Immediate,
                Mode::Buffered => Durability::None,
            },
            value: Vec::with_capacity(256),
        })
    }

    fn commit_durable(&self) -> Res<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }
}

impl Engine for Redb {
    fn write_batch(&mut self, batch: &[Msg<'_>]) -> Res<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(self.durability)?;
        {
            let mut t = tx.open_table(MESSAGES)?;
            for m in batch {
                value_into(m, &mut self.value);
                t.insert(key(m.conv, m.id), self.value.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn range(&self, conv: u64, lo: u64, hi: u64) -> Res<Got> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        let mut got = Got::default();
        for r in t.range(key(conv, lo)..=key(conv, hi))? {
            let (k, v) = r?;
            if got.msgs == 0 {
                got.first = super::key_id(&k.value());
            }
            got.msgs += 1;
            got.bytes += v.value().len().saturating_sub(16) as u64;
        }
        Ok(got)
    }

    fn put_raw(&mut self, pairs: &[([u8; 16], [u8; 8])]) -> Res<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut t = tx.open_table(MESSAGES)?;
            for (k, v) in pairs {
                t.insert(*k, v.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn scan_raw(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Vec<([u8; 16], Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        let mut out = Vec::new();
        for r in t.range(lo..=hi)? {
            let (k, v) = r?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn last_key_in(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Option<[u8; 16]>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        let last = t.range(lo..=hi)?.next_back().transpose()?;
        Ok(last.map(|(k, _)| k.value()))
    }

    fn contains(&self, conv: u64, id: u64) -> Res<bool> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MESSAGES)?;
        Ok(t.get(key(conv, id))?.is_some())
    }

    fn settle(&mut self) -> Res<()> {
        self.commit_durable()
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.commit_durable()?;
        drop(self);
        Ok(())
    }
}
