//! `chatstore-inspect`: look inside a store, check it, copy it, export and import it.
//!
//! Installed with `cargo install --path . --features cli` (or run in place with
//! `cargo run --release --features cli --bin chatstore-inspect -- ...`):
//!
//! ```text
//! chatstore-inspect <command> [--json]
//!   stats DIR                 segments, levels, sizes, amplification, WAL size
//!   dump-segment FILE         blocks, columns, conversations and ids of one segment file
//!   verify DIR                check every checksum and invariant (exit 1 on damage)
//!   checkpoint DIR DEST       consistent copy of a store, also while it is in use
//!   export DIR CONV           a conversation as JSON lines on stdout
//!   import DIR FILE           rebuild conversations from JSON lines made by export
//! ```
//! Stores in use by another process are opened read-only. Exit codes: 0 fine, 1 error or
//! damage found, 2 bad usage. Progress bars go to stderr, and only when it is a terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use chatstore::format::segment::SegmentReader;
use chatstore::{ConversationId, Error, Message, MessageId, MessageKind, Options, Store, UserId};
use serde_json::{json, Value};

const USAGE: &str = "usage: chatstore-inspect <stats DIR | dump-segment FILE | verify DIR | \
checkpoint DIR DEST | export DIR CONV | import DIR FILE> [--json]";

enum Failure {
    Usage(String),
    Store(Error),
    Other(String),
    /// Verification found damage (already reported).
    Damaged,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    args.retain(|a| a != "--json");
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["stats", dir] => stats(Path::new(dir), json),
        ["dump-segment", file] => dump_segment(Path::new(file), json),
        ["verify", dir] => verify(Path::new(dir), json),
        ["checkpoint", dir, dest] => checkpoint(Path::new(dir), Path::new(dest), json),
        ["export", dir, conv] => match conv.parse() {
            Ok(c) => export(Path::new(dir), ConversationId(c)),
            Err(_) => Err(Failure::Usage(format!("not a conversation id: {conv}"))),
        },
        ["import", dir, file] => import(Path::new(dir), Path::new(file), json),
        _ => Err(Failure::Usage(USAGE.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("{m}");
            ExitCode::from(2)
        }
        Err(Failure::Damaged) => ExitCode::from(1),
        Err(Failure::Store(e)) => {
            report_error(&e.to_string(), json);
            ExitCode::from(1)
        }
        Err(Failure::Other(m)) => {
            report_error(&m, json);
            ExitCode::from(1)
        }
    }
}

fn report_error(message: &str, json: bool) {
    if json {
        println!("{}", json!({ "error": message }));
    } else {
        eprintln!("error: {message}");
    }
}

/// Opens for reading: read-only, so it works while another process has the store open.
fn open_read_only(dir: &Path) -> Result<Store, Failure> {
    if !dir.join("MANIFEST").exists() {
        return Err(Failure::Store(Error::NotAStore {
            path: dir.to_path_buf(),
        }));
    }
    let opts = Options {
        read_only: true,
        create_if_missing: false,
        ..Options::default()
    };
    Ok(Store::open_with(dir, opts)?)
}

fn progress_bar(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    Some(bar)
}

fn stats(dir: &Path, json: bool) -> Result<(), Failure> {
    let store = open_read_only(dir)?;
    let s = store.stats();
    let wal_bytes: u64 = std::fs::read_dir(dir)
        .map_err(|e| Failure::Other(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    if json {
        println!(
            "{}",
            json!({
                "segments": s.segments,
                "segments_per_level": s.segments_per_level,
                "segment_bytes": s.segment_bytes,
                "segment_messages": s.segment_messages,
                "segment_logical_bytes": s.segment_logical_bytes,
                "space_amplification": s.space_amplification(),
                "pending_compaction_bytes": s.pending_compaction_bytes,
                "wal_bytes": wal_bytes,
                "unflushed_messages": s.memtable_messages + s.frozen_memtables,
                "memtable_bytes": s.memtable_bytes + s.frozen_memtable_bytes,
            })
        );
    } else {
        println!("store           {}", dir.display());
        println!(
            "segments        {} ({} MiB)",
            s.segments,
            s.segment_bytes >> 20
        );
        for (level, n) in s.segments_per_level.iter().enumerate() {
            if *n > 0 {
                println!("  level {level}       {n}");
            }
        }
        println!("messages        {} in segments", s.segment_messages);
        println!(
            "bytes/message   {:.1} ({:.2}x the logical size)",
            s.segment_bytes as f64 / s.segment_messages.max(1) as f64,
            s.space_amplification()
        );
        println!("pending compaction {} bytes", s.pending_compaction_bytes);
        println!("WAL             {wal_bytes} bytes");
        println!(
            "in memory       {} bytes of not yet flushed data",
            s.memtable_bytes + s.frozen_memtable_bytes
        );
    }
    Ok(())
}

fn dump_segment(file: &Path, json: bool) -> Result<(), Failure> {
    let data = std::fs::read(file).map_err(|e| {
        Failure::Store(Error::Io {
            path: file.to_path_buf(),
            source: e,
        })
    })?;
    let seg = SegmentReader::open(file, std::sync::Arc::new(Bytes::from(data)))?;
    let loaded = seg.load_indexes()?;
    let index = loaded.view();
    let mut blocks = Vec::new();
    for b in 0..seg.block_count() {
        let h = index.block_handle(b);
        let block = seg.read_block(b)?;
        let runs: Vec<Value> = block
            .runs()
            .iter()
            .map(|r| {
                json!([
                    r.conversation.0,
                    r.first_id,
                    r.first_id + u64::from(r.len) - 1
                ])
            })
            .collect();
        blocks.push(json!({
            "offset": h.offset, "bytes": h.len, "rows": block.rows(), "runs": runs,
        }));
    }
    let mut conversations = Vec::new();
    for i in 0..seg.conversation_count() {
        let (c, first, last) = index.conversation_entry(i);
        conversations.push(json!([c.0, first, last]));
    }
    let mut state_blocks = Vec::new();
    for b in 0..seg.state_block_count() {
        let h = seg.state_handle(b);
        let entries = seg.read_state_block(b)?.entries().len();
        state_blocks.push(json!({ "offset": h.offset, "bytes": h.len, "entries": entries }));
    }
    if json {
        println!(
            "{}",
            json!({
                "file": file.display().to_string(),
                "bytes": seg.file_bytes(),
                "messages": seg.message_count(),
                "logical_bytes": seg.logical_bytes(),
                "blocks": blocks,
                "conversations": conversations,
                "state_blocks": state_blocks,
                "state_entries": seg.state_entry_count(),
            })
        );
        return Ok(());
    }
    println!(
        "{}: {} bytes, {} messages ({} logical bytes), {} blocks, {} conversations, {} state entries in {} blocks",
        file.display(),
        seg.file_bytes(),
        seg.message_count(),
        seg.logical_bytes(),
        seg.block_count(),
        seg.conversation_count(),
        seg.state_entry_count(),
        seg.state_block_count()
    );
    println!("columns per block: runs (conversation, first id, length), sender dictionary + index, timestamp deltas, kind/flags, replies, mentions, content lengths, attachment lengths, content, attachments");
    for (i, b) in blocks.iter().enumerate() {
        println!(
            "block {i:>5} @ {:>10} {:>7} bytes {:>5} rows  runs {}",
            b["offset"], b["bytes"], b["rows"], b["runs"]
        );
    }
    for (i, b) in state_blocks.iter().enumerate() {
        println!(
            "state {i:>5} @ {:>10} {:>7} bytes {:>5} entries",
            b["offset"], b["bytes"], b["entries"]
        );
    }
    Ok(())
}

fn verify(dir: &Path, json: bool) -> Result<(), Failure> {
    let store = open_read_only(dir)?;
    let bar = progress_bar(store.stats().segment_bytes, "verifying");
    let report = store.verify_with_progress(&mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let problems: Vec<Value> = report
        .problems
        .iter()
        .map(|p| json!({ "file": p.path.display().to_string(), "offset": p.offset, "reason": p.reason }))
        .collect();
    if json {
        println!(
            "{}",
            json!({
                "ok": report.is_ok(),
                "segments": report.segments,
                "blocks": report.blocks,
                "state_blocks": report.state_blocks,
                "messages": report.messages,
                "state_entries": report.state_entries,
                "wal_files": report.wal_files,
                "wal_records": report.wal_records,
                "bytes": report.bytes,
                "problems": problems,
            })
        );
    } else {
        println!(
            "read {} segments ({} blocks, {} messages, {} state entries) and {} WAL files ({} records), {} bytes",
            report.segments,
            report.blocks,
            report.messages,
            report.state_entries,
            report.wal_files,
            report.wal_records,
            report.bytes
        );
        for p in &report.problems {
            println!(
                "DAMAGE {} at offset {}: {}",
                p.path.display(),
                p.offset,
                p.reason
            );
        }
        if report.is_ok() {
            println!("ok");
        }
    }
    if report.is_ok() {
        Ok(())
    } else {
        Err(Failure::Damaged)
    }
}

fn checkpoint(dir: &Path, dest: &Path, json: bool) -> Result<(), Failure> {
    // The store's own handle if no one else has it open; read-only beside a live writer.
    let store = match Store::open_with(
        dir,
        Options {
            create_if_missing: false,
            background_compaction: false,
            ..Options::default()
        },
    ) {
        Ok(s) => s,
        Err(Error::Locked { .. }) => open_read_only(dir)?,
        Err(e) => return Err(e.into()),
    };
    let bar = progress_bar(store.stats().segment_bytes, "checkpoint");
    store.checkpoint_with_progress(dest, &mut |done, total| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        println!(
            "{}",
            json!({ "ok": true, "checkpoint": dest.display().to_string() })
        );
    } else {
        println!("checkpoint written to {}", dest.display());
    }
    Ok(())
}

fn to_json(m: &Message) -> Value {
    let mut v = json!({
        "conversation": m.conversation.0,
        "id": m.id.0,
        "sender": m.sender.0,
        "timestamp_ms": m.timestamp_ms,
        "kind": match m.kind {
            MessageKind::Normal => "normal",
            MessageKind::System => "system",
            MessageKind::Deleted => "deleted",
        },
        "mentions": m.mentions.iter().map(|u| u.0).collect::<Vec<_>>(),
    });
    match std::str::from_utf8(&m.content) {
        Ok(text) => v["content"] = json!(text),
        Err(_) => v["content_hex"] = json!(hex(&m.content)),
    }
    if let Some(a) = &m.attachment {
        v["attachment"] = json!(String::from_utf8_lossy(a));
    }
    if let Some(r) = m.reply_to {
        v["reply_to"] = json!(r.0);
    }
    if let Some(e) = m.edited_ms {
        v["edited_ms"] = json!(e);
    }
    v
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn from_json(v: &Value) -> Option<Message> {
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let content = match (v.get("content"), v.get("content_hex")) {
        (Some(Value::String(s)), _) => Bytes::copy_from_slice(s.as_bytes()),
        (_, Some(Value::String(h))) => Bytes::from(unhex(h)?),
        _ => return None,
    };
    Some(Message {
        conversation: ConversationId(u("conversation")?),
        id: MessageId(u("id")?),
        sender: UserId(u("sender")?),
        timestamp_ms: u("timestamp_ms")?,
        kind: match v.get("kind")?.as_str()? {
            "normal" => MessageKind::Normal,
            "system" => MessageKind::System,
            "deleted" => MessageKind::Deleted,
            _ => return None,
        },
        content,
        attachment: v
            .get("attachment")
            .and_then(Value::as_str)
            .map(|s| Bytes::copy_from_slice(s.as_bytes())),
        reply_to: u("reply_to").map(MessageId),
        mentions: v
            .get("mentions")?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().map(UserId))
            .collect::<Option<Vec<_>>>()?,
        edited_ms: u("edited_ms"),
    })
}

fn export(dir: &Path, conv: ConversationId) -> Result<(), Failure> {
    let store = open_read_only(dir)?;
    let bar = progress_bar(store.last_id(conv)?.0, "exporting");
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for m in store.export(conv) {
        let m = m?;
        if let Some(b) = &bar {
            b.set_position(m.id.0);
        }
        writeln!(out, "{}", to_json(&m)).map_err(|e| Failure::Other(format!("stdout: {e}")))?;
    }
    out.flush()
        .map_err(|e| Failure::Other(format!("stdout: {e}")))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

fn import(dir: &Path, file: &Path, json: bool) -> Result<(), Failure> {
    let store = Store::open(dir)?;
    let f = std::fs::File::open(file).map_err(|e| {
        Failure::Store(Error::Io {
            path: PathBuf::from(file),
            source: e,
        })
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress_bar(len, "importing");
    let mut batch = Vec::with_capacity(1000);
    let mut count = 0u64;
    let mut read = 0u64;
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Failure::Other(format!("{}: {e}", file.display())))?;
        read += line.len() as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let m = serde_json::from_str::<Value>(&line)
            .ok()
            .as_ref()
            .and_then(from_json)
            .ok_or_else(|| {
                Failure::Other(format!(
                    "{}: line {}: not an exported message",
                    file.display(),
                    n + 1
                ))
            })?;
        batch.push(m);
        if batch.len() == 1000 {
            count += batch.len() as u64;
            store.import(std::mem::take(&mut batch))?;
            if let Some(b) = &bar {
                b.set_position(read);
            }
        }
    }
    count += batch.len() as u64;
    store.import(batch)?;
    store.close()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if json {
        println!("{}", json!({ "ok": true, "imported": count }));
    } else {
        println!("imported {count} messages into {}", dir.display());
    }
    Ok(())
}
