//! sled 0.34: a `Batch` applied atomically per 1000 messages, `Db::flush` (fsync) after each
//! batch in the durable phase; in the buffered phase sled's own background flush (every
//! 500 ms, its default) does the syncing. A 64 MiB page cache like the other engines' block
//! caches (sled's default is 1 GiB).

use std::path::Path;

use super::{key, key_id, value_into, Engine, Got, Mode, Msg, Res};

pub struct Sled {
    db: sled::Db,
    durable: bool,
    value: Vec<u8>,
}

impl Sled {
    pub fn open(dir: &Path, mode: Mode) -> Res<Sled> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 << 20)
            .flush_every_ms(Some(500))
            .open()?;
        Ok(Sled {
            db,
            durable: mode == Mode::Durable,
            value: Vec::with_capacity(256),
        })
    }
}

impl Engine for Sled {
    fn write_batch(&mut self, batch: &[Msg<'_>]) -> Res<()> {
        let mut b = sled::Batch::default();
        for m in batch {
            value_into(m, &mut self.value);
            b.insert(&key(m.conv, m.id)[..], self.value.as_slice());
        }
        self.db.apply_batch(b)?;
        if self.durable {
            self.db.flush()?;
        }
        Ok(())
    }

    fn range(&self, conv: u64, lo: u64, hi: u64) -> Res<Got> {
        let mut got = Got::default();
        for r in self.db.range(key(conv, lo)..=key(conv, hi)) {
            let (k, v) = r?;
            if got.msgs == 0 {
                got.first = key_id(&k);
            }
            got.msgs += 1;
            got.bytes += v.len().saturating_sub(16) as u64;
        }
        Ok(got)
    }

    fn put_raw(&mut self, pairs: &[([u8; 16], [u8; 8])]) -> Res<()> {
        let mut b = sled::Batch::default();
        for (k, v) in pairs {
            b.insert(&k[..], &v[..]);
        }
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    fn scan_raw(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Vec<([u8; 16], Vec<u8>)>> {
        let mut out = Vec::new();
        for r in self.db.range(lo..=hi) {
            let (k, v) = r?;
            out.push((raw_key(&k)?, v.to_vec()));
        }
        Ok(out)
    }

    fn last_key_in(&self, lo: [u8; 16], hi: [u8; 16]) -> Res<Option<[u8; 16]>> {
        match self.db.range(lo..=hi).next_back() {
            Some(r) => Ok(Some(raw_key(&r?.0)?)),
            None => Ok(None),
        }
    }

    fn contains(&self, conv: u64, id: u64) -> Res<bool> {
        Ok(self.db.contains_key(key(conv, id))?)
    }

    fn settle(&mut self) -> Res<()> {
        self.db.flush()?;
        Ok(())
    }

    fn extra(&self) -> serde_json::Value {
        serde_json::json!({ "size_on_disk": self.db.size_on_disk().unwrap_or(0) })
    }

    fn close(self: Box<Self>) -> Res<()> {
        self.db.flush()?;
        drop(self);
        Ok(())
    }
}

fn raw_key(k: &[u8]) -> Res<[u8; 16]> {
    Ok(<[u8; 16]>::try_from(k).map_err(|_| format!("a key of {} bytes", k.len()))?)
}
