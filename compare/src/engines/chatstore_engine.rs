//! chatstore: `Store::append_batch` for ingest (`Durability::Sync` in the durable phase,
//! `Durability::Buffered` in the buffered one), `Store::latest` / `Store::before` for reads,
//! and the chat model (`ChatStore::unread_messages`) for unread-on-reconnect.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use chatstore::{
    ChatOptions, ChatStore, ConversationId, Durability, MessageId, NewMessage, Options, UserId,
};

use super::{Engine, Got, Mode, Msg, Res};

/// Background fsync interval in the buffered phase (sled's default flush interval too).
const BUFFERED_INTERVAL: Duration = Duration::from_millis(500);

pub struct Chat {
    chat: ChatStore,
}

impl Chat {
    pub fn open(dir: &Path, mode: Mode) -> Res<Chat> {
        let durability = match mode {
            Mode::Durable => Durability::Sync,
            Mode::Buffered => Durability::Buffered {
                interval: BUFFERED_INTERVAL,
            },
        };
        let options = Options {
            durability,
            ..Options::default()
        };
        Ok(Chat {
            chat: ChatStore::open_with(dir, options, ChatOptions::default())?,
        })
    }
}

/// What the compactions writing each level did (`Stats::compaction_levels`), for levels that
/// any compaction wrote.
fn compaction_levels(s: &chatstore::Stats) -> serde_json::Value {
    s.compaction_levels
        .iter()
        .enumerate()
        .filter(|(_, l)| l.compactions > 0)
        .map(|(level, l)| {
            serde_json::json!({
                "level": level,
                "compactions": l.compactions,
                "bytes_read": l.bytes_read,
                "bytes_read_same_level": l.bytes_read_same_level,
                "bytes_written": l.bytes_written,
                "bytes_copied": l.bytes_copied,
                "bytes_compressed": l.bytes_compressed,
                "secs": l.micros as f64 / 1e6,
            })
        })
        .collect()
}

fn got(msgs: &[chatstore::Message]) -> Got {
    Got {
        msgs: msgs.len() as u64,
        bytes: msgs.iter().map(|m| m.content.len() as u64).sum(),
        first: msgs.first().map_or(0, |m| m.id.0),
    }
}

impl Engine for Chat {
    fn write_batch(&mut self, batch: &[Msg<'_>]) -> Res<()> {
        let v: Vec<(ConversationId, NewMessage)> = batch
            .iter()
            .map(|m| {
                (
                    ConversationId(m.conv),
                    NewMessage::new(UserId(m.sender), Bytes::copy_from_slice(m.content)),
                )
            })
            .collect();
        let out = self.chat.store().append_batch(v)?;
        for (m, o) in batch.iter().zip(&out) {
            if o.id.0 != m.id {
                return Err(format!(
                    "chatstore gave conversation {} id {}, the harness expected {}",
                    m.conv, o.id.0, m.id
                )
                .into());
            }
        }
        Ok(())
    }

    fn range(&self, conv: u64, lo: u64, hi: u64) -> Res<Got> {
        // `after(lo - 1, n)` is the engine's own forward read from a cursor.
        let n = (hi + 1).saturating_sub(lo) as usize;
        Ok(got(&self.chat.store().after(
            ConversationId(conv),
            MessageId(lo - 1),
            n,
        )?))
    }

    fn latest(&self, conv: u64, _last: u64, n: u64) -> Res<Got> {
        Ok(got(&self
            .chat
            .store()
            .latest(ConversationId(conv), n as usize)?))
    }

    fn before(&self, conv: u64, id: u64, n: u64) -> Res<Got> {
        Ok(got(&self.chat.store().before(
            ConversationId(conv),
            MessageId(id),
            n as usize,
        )?))
    }

    fn unread(&self, user: u64, per_conv: u64) -> Res<Got> {
        let mut g = Got::default();
        for (_, msgs) in self.chat.unread_messages(UserId(user), per_conv as usize)? {
            g.add(got(&msgs));
        }
        Ok(g)
    }

    fn contains(&self, conv: u64, id: u64) -> Res<bool> {
        Ok(self
            .chat
            .store()
            .get(ConversationId(conv), MessageId(id))?
            .is_some())
    }

    fn setup_chat(&mut self, users: u64, members: &[Vec<u64>]) -> Res<()> {
        for u in 1..=users {
            self.chat.register_user(UserId(u))?;
        }
        for (i, mem) in members.iter().enumerate() {
            let all: Vec<UserId> = mem[1..].iter().map(|&u| UserId(u)).collect();
            let conv = self.chat.create_group(UserId(mem[0]), &all)?;
            if conv.0 != crate::workload::conv_id(i) {
                return Err(format!(
                    "chat model numbered group {i} as {conv}, expected {}",
                    crate::workload::conv_id(i)
                )
                .into());
            }
        }
        Ok(())
    }

    fn set_read_cursors(&mut self, cursors: &[(u64, u64, u64)]) -> Res<()> {
        for &(user, conv, read) in cursors {
            if read > 0 {
                self.chat
                    .mark_read(UserId(user), ConversationId(conv), MessageId(read))?;
            }
        }
        Ok(())
    }

    fn settle(&mut self) -> Res<()> {
        let store = self.chat.store();
        store.flush()?;
        store.sync()?;
        super::wait_idle(
            || store.stats().pending_compaction_bytes > 0,
            Duration::from_secs(300),
        );
        Ok(())
    }

    fn extra(&self) -> serde_json::Value {
        let s = self.chat.store().stats();
        serde_json::json!({
            "segments": s.segments,
            "segments_per_level": s.segments_per_level,
            "segment_bytes": s.segment_bytes,
            "segment_logical_bytes": s.segment_logical_bytes,
            "write_amplification": s.write_amplification(),
            "space_amplification": s.space_amplification(),
            "read_amplification": s.read_amplification(),
            "reads": s.reads,
            "block_cache_hits": s.block_cache_hits,
            "block_cache_misses": s.block_cache_misses,
            "block_cache_bytes": s.block_cache_bytes,
            "block_cache_capacity": s.block_cache_capacity,
            "memory_index_bytes": s.memory_index_bytes,
            "memory_charged_bytes": s.memory_charged_bytes,
            "write_stalls": s.write_stalls,
            "write_stall_micros": s.write_stall_micros,
            "write_stall_flush_micros": s.write_stall_flush_micros,
            "write_stall_level0_micros": s.write_stall_level0_micros,
            "flushes": s.flushes,
            "compactions": s.compactions,
            "wal_syncs": s.wal_syncs,
            "wal_file_bytes": s.wal_file_bytes,
            "last_id_searches": s.last_id_searches,
            "compaction_levels": compaction_levels(&s),
        })
    }

    fn sample(&self) -> serde_json::Value {
        let s = self.chat.store().stats();
        serde_json::json!({
            "stall_micros": s.write_stall_micros,
            "stall_flush_micros": s.write_stall_flush_micros,
            "stall_level0_micros": s.write_stall_level0_micros,
            "stalls": s.write_stalls,
            "pending_compaction_bytes": s.pending_compaction_bytes,
            "files_per_level": s.segments_per_level,
            "flush_bytes_written": s.flush_bytes_written,
            "compaction_bytes_written": s.compaction_bytes_written,
            "compaction_bytes_copied": s.compaction_bytes_copied,
            "compaction_bytes_read": s.compaction_bytes_read,
            "wal_bytes_written": s.wal_bytes_written,
            "flushes": s.flushes,
            "compactions": s.compactions,
            "frozen_memtables": s.frozen_memtables,
            "segment_bytes": s.segment_bytes,
            "messages_appended": s.messages_appended,
            "last_id_searches": s.last_id_searches,
            "block_cache_bytes": s.block_cache_bytes,
            "memory_index_bytes": s.memory_index_bytes,
            "memtable_bytes_held": s.memtable_bytes_held,
        })
    }

    fn close(self: Box<Self>) -> Res<()> {
        Ok(self.chat.close()?)
    }
}
