//! Random appends, edits, deletes, flushes, compactions, reopens and simulated power cuts
//! against a `BTreeMap` model: every read must return exactly what the model holds.

#[path = "common/cases.rs"]
mod cases;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chatstore::fs::fault::{CrashMode, FaultFs};
use chatstore::{
    ConversationId, Error, MessageId, MessageKind, NewMessage, Options, Store, UserId,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        conv: u64,
        sender: u64,
        len: u16,
    },
    Edit {
        conv: u64,
        back: u64,
    },
    Delete {
        conv: u64,
        back: u64,
    },
    Flush,
    Compact,
    Reopen,
    /// Power cut (everything not fsynced is lost), then reopen on what the disk kept.
    Crash(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0..6u64, 0..3u64, 1..300u16).prop_map(|(conv, sender, len)| Op::Append { conv, sender, len }),
        3 => (0..6u64, 0..8u64).prop_map(|(conv, back)| Op::Edit { conv, back }),
        2 => (0..6u64, 0..8u64).prop_map(|(conv, back)| Op::Delete { conv, back }),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => any::<u64>().prop_map(Op::Crash),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Row {
    sender: u64,
    text: String,
    deleted: bool,
    edited: bool,
}

fn options(fs: &FaultFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        memtable_bytes: 4096,
        block_bytes: 700,
        l0_compaction_trigger: 2,
        level_base_bytes: 16 << 10,
        target_segment_bytes: 4096,
        ..Options::default()
    }
}

fn check(store: &Store, model: &BTreeMap<u64, Vec<Row>>) -> Result<(), TestCaseError> {
    for (&conv, rows) in model {
        let got = store.latest(ConversationId(conv), usize::MAX).unwrap();
        prop_assert_eq!(got.len(), rows.len(), "conversation {}", conv);
        for (m, row) in got.iter().zip(rows) {
            prop_assert_eq!(m.sender, UserId(row.sender));
            prop_assert_eq!(m.kind == MessageKind::Deleted, row.deleted);
            prop_assert_eq!(m.edited_ms.is_some(), row.edited || row.deleted);
            if row.deleted {
                prop_assert!(m.content.is_empty());
            } else {
                prop_assert_eq!(m.text(), Some(row.text.as_str()));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases::cases(96), ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..70)) {
        // An in-memory file system, so a power cut can be simulated at any point.
        let dir = Path::new("/store");
        let mut fs = FaultFs::new();
        let mut store = Store::open_with(dir, options(&fs)).unwrap();
        let mut model: BTreeMap<u64, Vec<Row>> = BTreeMap::new();
        let mut n = 0u64;
        for op in ops {
            match op {
                Op::Append { conv, sender, len } => {
                    n += 1;
                    let text = format!("{n}:{}", "t".repeat(len as usize));
                    let m = store.append(ConversationId(conv), NewMessage::text(UserId(sender), &text)).unwrap();
                    let rows = model.entry(conv).or_default();
                    rows.push(Row { sender, text, deleted: false, edited: false });
                    prop_assert_eq!(m.id, MessageId(rows.len() as u64));
                }
                // The raw store checks no authorship: any edit of an existing, undeleted
                // message is taken.
                Op::Edit { conv, back } | Op::Delete { conv, back } => {
                    let delete = matches!(op, Op::Delete { .. });
                    let rows = model.entry(conv).or_default();
                    let id = (rows.len() as u64).saturating_sub(back);
                    n += 1;
                    let new_text = format!("edit {n}");
                    let got = if delete {
                        store.delete(ConversationId(conv), MessageId(id))
                    } else {
                        store.edit(ConversationId(conv), MessageId(id), new_text.clone().into_bytes())
                    };
                    match rows.get_mut((id as usize).wrapping_sub(1)) {
                        None => prop_assert!(matches!(got, Err(Error::IdOutOfRange { .. })), "{:?}", got),
                        Some(row) if row.deleted => {
                            prop_assert!(matches!(got, Err(Error::InvalidArgument(_))), "{:?}", got)
                        }
                        Some(row) => {
                            prop_assert!(got.is_ok(), "{:?}", got);
                            if delete {
                                row.deleted = true;
                            } else {
                                row.text = new_text;
                                row.edited = true;
                            }
                        }
                    }
                }
                Op::Flush => store.flush().unwrap(),
                Op::Compact => store.compact().unwrap(),
                Op::Reopen => {
                    store.close().unwrap();
                    store = Store::open_with(dir, options(&fs)).unwrap();
                }
                Op::Crash(seed) => {
                    // Every call above returned in Sync durability, so the model is what
                    // must survive, whatever the cut keeps of unsynced work.
                    let mode = if seed % 2 == 0 {
                        CrashMode::LoseUnsynced
                    } else {
                        CrashMode::Torn { seed }
                    };
                    fs = fs.power_cut_with(mode);
                    drop(store);
                    store = Store::open_with(dir, options(&fs)).unwrap();
                }
            }
            check(&store, &model)?;
        }
        prop_assert!(store.verify().unwrap().is_ok());
    }
}
