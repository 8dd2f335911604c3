//! Which codec for chat blocks: compressed size and decode speed of the store's own 4 KiB
//! message blocks under zstd and LZ4, each with and without a dictionary trained on the
//! blocks (the zstd dictionary's bytes serve LZ4 as a prefix: its raw content is what LZ4
//! matches against).
//!
//! `cargo run --release --example codec_probe [MESSAGES] [CONVERSATIONS]`
//! (`DICT_KIB` sets the dictionary's size, 64 KiB by default as the store's).
//!
//! Blocks are built as compaction lays them out (rows sorted by conversation and id, a new
//! block at 4 KiB, or at 2 KiB when a conversation starts) from a Zipf(1.0) chat workload, for
//! two text presets: the synthetic ~100 B texts of the comparison harness and short texts with
//! a median of 36 B, nearer real chat. The dictionary is trained on every other block and
//! measured on the rest (held out), as the store retrains it.

#[path = "support/workload.rs"]
mod workload;

use std::time::Instant;

use bytes::Bytes;
use chatstore::format::block::BlockBuilder;
use chatstore::format::dictionary::{train, DictDecoder, DictEncoder};
use chatstore::{ConversationId, Message, MessageId, MessageKind, UserId};
use workload::{Rng, Zipf};

const BLOCK_BYTES: usize = 4 << 10;
const DICT_BYTES: usize = 64 << 10;

fn blocks(messages: usize, convs: usize, median: f64) -> Vec<Vec<u8>> {
    let zipf = Zipf::new(convs, 1.0);
    let mut rng = Rng::new(7);
    let mut next_id = vec![0u64; convs + 1];
    let mut rows: Vec<Message> = (0..messages)
        .map(|i| {
            let conv = zipf.sample(&mut rng);
            let id = &mut next_id[conv as usize];
            *id += 1;
            Message {
                conversation: ConversationId(conv),
                id: MessageId(*id),
                sender: UserId(conv * 8 + rng.below(2 + conv % 7)),
                timestamp_ms: 1_764_000_000_000 + i as u64 * 3,
                kind: MessageKind::Normal,
                content: Bytes::from(workload::text(&mut rng, median)),
                attachment: None,
                reply_to: None,
                mentions: Vec::new(),
                edited_ms: None,
            }
        })
        .collect();
    rows.sort_by_key(|m| (m.conversation, m.id));
    let mut out = Vec::new();
    let mut b = BlockBuilder::new();
    let mut last_conv = None;
    for m in &rows {
        let new_conv = last_conv != Some(m.conversation);
        if b.rows() > 0
            && (b.estimated_len() >= BLOCK_BYTES
                || (new_conv && b.estimated_len() >= BLOCK_BYTES / 2))
        {
            out.push(b.finish_body());
        }
        if !b.add(m) {
            out.push(b.finish_body());
            assert!(b.add(m), "a row an empty block refuses");
        }
        last_conv = Some(m.conversation);
    }
    if b.rows() > 0 {
        out.push(b.finish_body());
    }
    out
}

struct Row {
    codec: &'static str,
    stored: usize,
    decode_mbs: f64,
    encode_mbs: f64,
}

/// Encodes every block with `enc`, then decodes them all `rounds` times with `dec`.
fn measure(
    codec: &'static str,
    blocks: &[&Vec<u8>],
    mut enc: impl FnMut(&[u8]) -> Vec<u8>,
    dec: impl Fn(&[u8], usize) -> Vec<u8>,
) -> Row {
    let raw: usize = blocks.iter().map(|b| b.len()).sum();
    let t = Instant::now();
    let packed: Vec<Vec<u8>> = blocks.iter().map(|b| enc(b)).collect();
    let encode = t.elapsed();
    let rounds = 5;
    let t = Instant::now();
    for _ in 0..rounds {
        for (p, b) in packed.iter().zip(blocks) {
            let out = dec(p, b.len());
            assert_eq!(out.len(), b.len(), "{codec}: decoded length");
        }
    }
    let decode = t.elapsed() / rounds;
    for (p, b) in packed.iter().zip(blocks).take(50) {
        assert_eq!(&dec(p, b.len()), *b, "{codec}: round trip");
    }
    Row {
        codec,
        stored: packed.iter().map(Vec::len).sum(),
        decode_mbs: raw as f64 / decode.as_secs_f64() / 1e6,
        encode_mbs: raw as f64 / encode.as_secs_f64() / 1e6,
    }
}

fn probe(name: &str, messages: usize, convs: usize, median: f64) {
    let all = blocks(messages, convs, median);
    let (train_set, held): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let samples: Vec<Vec<u8>> = train_set.iter().map(|(_, b)| (*b).clone()).collect();
    let held: Vec<&Vec<u8>> = held.into_iter().map(|(_, b)| b).collect();
    let dict_bytes = std::env::var("DICT_KIB")
        .ok()
        .and_then(|k| k.parse::<usize>().ok())
        .map_or(DICT_BYTES, |k| k << 10);
    let dict = train(&samples, dict_bytes).expect("training a dictionary");
    let raw: usize = held.iter().map(|b| b.len()).sum();
    let rows_per_block = messages as f64 / all.len() as f64;

    let mut results = Vec::new();
    for (level, plain, with_dict) in [
        (-3, None, "zstd -3 + dictionary"),
        (1, Some("zstd 1"), "zstd 1 + dictionary"),
        (2, None, "zstd 2 + dictionary"),
        (3, Some("zstd 3"), "zstd 3 + dictionary"),
    ] {
        if let Some(codec) = plain {
            // Contexts reused from block to block, as the store's dictionary codec does.
            let mut enc = zstd::bulk::Compressor::new(level).expect("zstd");
            let dec = std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("zstd"));
            results.push(measure(
                codec,
                &held,
                |b| enc.compress(b).expect("zstd"),
                |p, n| dec.borrow_mut().decompress(p, n).expect("zstd"),
            ));
        }
        let mut enc = DictEncoder::new(&dict, level).expect("dictionary encoder");
        let dec = DictDecoder::new(&dict).expect("dictionary decoder");
        results.push(measure(
            with_dict,
            &held,
            |b| enc.compress(b).expect("zstd"),
            |p, n| dec.decompress(p, n).expect("zstd"),
        ));
    }
    results.push(measure("lz4", &held, lz4_flex::block::compress, |p, n| {
        lz4_flex::block::decompress(p, n).expect("lz4")
    }));
    results.push(measure(
        "lz4 + dictionary",
        &held,
        |b| lz4_flex::block::compress_with_dict(b, &dict),
        |p, n| lz4_flex::block::decompress_with_dict(p, n, &dict).expect("lz4"),
    ));

    println!(
        "\n### {name}: {messages} messages over {convs} conversations, {} blocks ({rows_per_block:.1} rows each), {} held out ({:.1} MB raw), dictionary {} KiB\n",
        all.len(),
        held.len(),
        raw as f64 / 1e6,
        dict.len() >> 10
    );
    println!("| codec | stored ÷ raw | bytes per message | decode MB/s | µs per block decoded | encode MB/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    let held_msgs = messages as f64 * raw as f64 / all.iter().map(Vec::len).sum::<usize>() as f64;
    for r in results {
        println!(
            "| {} | {:.3} | {:.1} | {:.0} | {:.2} | {:.0} |",
            r.codec,
            r.stored as f64 / raw as f64,
            r.stored as f64 / held_msgs,
            r.decode_mbs,
            (raw as f64 / held.len() as f64) / r.decode_mbs,
            r.encode_mbs,
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let messages = args.next().and_then(|a| a.parse().ok()).unwrap_or(400_000);
    let convs = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    probe("synthetic texts, ~100 B median", messages, convs, 100.0);
    probe("short texts, 36 B median", messages, convs, 36.0);
}
