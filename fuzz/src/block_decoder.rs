//! `block_decoder`: the input is a block. It goes straight into `Block::decode` and
//! `StateBlock::decode` as an uncompressed body, and through `block::unpack` as a stored block
//! (body and trailer, as is and with its checksum recomputed), with and without a zstd
//! dictionary, and whatever unpacks goes into both decoders. Whatever decodes must answer
//! consistently and survive a re-encode.

use std::sync::OnceLock;

use bytes::Bytes;
use chatstore::format::block::{self, Block, BlockBuilder, BLOCK_TRAILER_LEN, MAX_BLOCK_LEN};
use chatstore::format::dictionary::{self, DictDecoder};
use chatstore::format::state_block::{StateBlock, StateBlockBuilder, MAX_KEY_LEN};
use chatstore::{Compression, ConversationId, Message, MessageId, MessageKind, UserId};

/// Runs one input.
pub fn run(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    decode_body(input.clone());
    unpack_and_decode(&input);
    let fixed = crate::fixup::block(data);
    if fixed != data {
        unpack_and_decode(&Bytes::from(fixed));
    }
}

fn unpack_and_decode(stored: &Bytes) {
    let codec = stored
        .len()
        .checked_sub(BLOCK_TRAILER_LEN - 4)
        .map(|at| stored[at]);
    // Codec 3 blocks need the segment's dictionary; the others ignore it.
    if codec == Some(3) {
        if let Ok(body) = block::unpack(stored, Some(dictionary())) {
            assert!(body.len() <= MAX_BLOCK_LEN, "unpacked past the block limit");
            decode_body(body);
        }
    }
    if let Ok(body) = block::unpack(stored, None) {
        assert_ne!(
            codec,
            Some(3),
            "a dictionary block unpacked without a dictionary"
        );
        assert!(body.len() <= MAX_BLOCK_LEN, "unpacked past the block limit");
        decode_body(body);
    }
}

fn decode_body(body: Bytes) {
    if let Ok(b) = Block::decode(body.clone()) {
        check_block(&b);
    }
    if let Ok(s) = StateBlock::decode(body) {
        check_state_block(&s);
    }
}

/// Messages the test dictionary is trained on, and the seed blocks are built from.
pub fn sample_messages(conv: u64, count: u64) -> Vec<Message> {
    (1..=count)
        .map(|id| Message {
            conversation: ConversationId(conv),
            id: MessageId(id),
            sender: UserId(100 + id % 3),
            timestamp_ms: 1_700_000_000_000 + id * 1_377,
            kind: if id % 11 == 0 {
                MessageKind::System
            } else {
                MessageKind::Normal
            },
            content: Bytes::from(format!(
                "message {id} in conversation {conv}: see you at {} o'clock?",
                id % 12
            )),
            attachment: (id % 7 == 0).then(|| Bytes::from(format!("https://a.example/{id}.png"))),
            reply_to: (id % 5 == 0).then(|| MessageId(id - 2)),
            mentions: if id % 9 == 0 {
                vec![UserId(100), UserId(id)]
            } else {
                Vec::new()
            },
            edited_ms: None,
        })
        .collect()
}

/// The zstd dictionary this target (and the seed corpus) uses for codec-3 blocks: trained,
/// deterministically, on block bodies built from [`sample_messages`].
pub fn dictionary_bytes() -> Vec<u8> {
    let samples: Vec<Vec<u8>> = (1..=40u64)
        .map(|conv| {
            let mut b = BlockBuilder::new();
            for m in sample_messages(conv, 12) {
                b.add(&m);
            }
            b.finish_body()
        })
        .collect();
    dictionary::train(&samples, 1024).expect("the sample blocks train a dictionary")
}

/// The decoder for [`dictionary_bytes`], built once per process.
pub fn dictionary() -> &'static DictDecoder {
    static DICT: OnceLock<DictDecoder> = OnceLock::new();
    DICT.get_or_init(|| {
        DictDecoder::new(&dictionary_bytes()).expect("zstd accepts its own dictionary")
    })
}

/// Checks a decoded block's invariants and answers; returns its messages. A block that decodes
/// must also survive re-encoding its messages with `BlockBuilder` (and every codec).
pub fn check_block(b: &Block) -> Vec<Message> {
    let runs = b.runs();
    let mut rows = 0usize;
    for (i, r) in runs.iter().enumerate() {
        assert!(r.len > 0 && r.first_id > 0, "empty run or id 0: {r:?}");
        assert_eq!(r.start_row as usize, rows, "runs must tile the rows");
        rows += r.len as usize;
        if i > 0 {
            assert!(
                r.conversation > runs[i - 1].conversation,
                "runs out of order"
            );
        }
        assert_eq!(b.run_of(r.conversation), Some(r));
    }
    assert_eq!(rows, b.rows());
    let _ = b.footprint();
    let mut all = Vec::new();
    b.collect_all(&mut all);
    assert_eq!(all.len(), b.rows());
    let mut at = 0usize;
    for r in runs {
        let want = &all[at..at + r.len as usize];
        for (i, m) in want.iter().enumerate() {
            assert_eq!(m.conversation, r.conversation);
            assert_eq!(m.id.0, r.first_id + i as u64);
            assert!(m.edited_ms.is_none());
        }
        let mut got = Vec::new();
        b.collect(r.conversation, 0, u64::MAX, &mut got);
        assert_eq!(
            got, want,
            "collect over the whole run disagrees with collect_all"
        );
        let mid = r.first_id + u64::from(r.len / 2);
        got.clear();
        b.collect(r.conversation, mid, mid, &mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0], want[(mid - r.first_id) as usize]);
        got.clear();
        b.collect(r.conversation, mid + 1, mid, &mut got);
        assert!(got.is_empty());
        at += r.len as usize;
    }
    let mut builder = BlockBuilder::new();
    for m in &all {
        assert!(
            builder.add(m),
            "a decoded block's rows must be accepted again"
        );
    }
    let mut stored = Vec::new();
    builder.finish_into(Compression::Lz4, None, &mut stored);
    let body = block::unpack(&Bytes::from(stored), None).expect("re-encoded block unpacks");
    let again = Block::decode(body).expect("re-encoded block decodes");
    let mut round = Vec::new();
    again.collect_all(&mut round);
    assert_eq!(round, all, "a block must survive decode, encode, decode");
    all
}

/// Checks a decoded state block's invariants and answers, and that it survives a re-encode.
pub fn check_state_block(s: &StateBlock) {
    let entries = s.entries();
    for w in entries.windows(2) {
        assert!(w[0].0 < w[1].0, "state keys out of order");
    }
    let _ = s.footprint();
    let mut builder = StateBlockBuilder::new();
    for (k, v) in entries {
        assert!(k.len() <= MAX_KEY_LEN, "state key over the limit");
        assert_eq!(s.get(k), Some(v.clone()));
        assert_eq!(s.entries_from(k).first().map(|e| &e.0), Some(k));
        assert!(builder.add(k, v.as_deref()));
    }
    let again = StateBlock::decode(Bytes::from(builder.finish())).expect("re-encoded state block");
    assert_eq!(again.entries(), entries);
}
