//! `wal_reader`: the input is a WAL file. Checks the file header, walks every record with
//! `LogReader` and decodes each batch payload with `batch::decode`, as recovery does. Runs the
//! input as is and with its record checksums recomputed.

use bytes::Bytes;
use chatstore::format::batch::{self, Entry};
use chatstore::format::state_block::MAX_KEY_LEN;
use chatstore::format::wal::{self, LogReader, ReadStep, FILE_HEADER_LEN, RECORD_HEADER_LEN};

/// The number the input is read as the log file of (version 3 record checksums cover it).
pub const LOG_NUMBER: u64 = 2;

/// Runs one input.
pub fn run(data: &[u8]) {
    check(data);
    let fixed = crate::fixup::wal(data);
    if fixed != data {
        check(&fixed);
    }
}

fn check(data: &[u8]) {
    // Recovery reads the whole file into one `Bytes`; batch payloads are slices of it.
    let owner = Bytes::copy_from_slice(data);
    match wal::check_file_header(&owner) {
        Ok(Some(_version)) => {}
        // Too short for a header, or a zero-filled one: a torn creation, nothing to read.
        Ok(None) => {
            assert!(
                data.len() < FILE_HEADER_LEN || data[..FILE_HEADER_LEN].iter().all(|&b| b == 0),
                "check_file_header said torn creation for a full, non-zero header"
            );
            return;
        }
        Err(_) => return,
    }
    let mut reader = LogReader::new(&owner, LOG_NUMBER);
    let mut next = FILE_HEADER_LEN as u64;
    let end = loop {
        match reader.next_step() {
            ReadStep::Record {
                ty: _,
                payload,
                offset,
                synced_through: _,
                lsn: _,
            } => {
                assert_eq!(offset, next, "records must follow each other");
                // The body is a slice of the file, after the header and `synced_through`.
                let body_start = payload.as_ptr() as usize - owner.as_ptr() as usize;
                assert!(body_start >= offset as usize + RECORD_HEADER_LEN);
                next = (body_start + payload.len()) as u64;
                assert!(next <= data.len() as u64, "record past the end of the file");
                check_batch(&owner, payload);
            }
            other => break other,
        }
    };
    // Documented: after End, TornTail or Corrupt the reader keeps returning the same step.
    assert_eq!(reader.next_step(), end, "the final step must repeat");
    assert_eq!(reader.finished(), matches!(end, ReadStep::End { .. }));
    match end {
        ReadStep::End { offset } => assert_eq!(offset, data.len() as u64),
        ReadStep::TornTail { offset } | ReadStep::Corrupt { offset, .. } => {
            assert_eq!(offset, next, "a bad record is reported where it starts")
        }
        ReadStep::Record { .. } => unreachable!(),
    }
}

/// Decodes a batch payload (a slice of `owner`); a decoded batch must survive a re-encode.
fn check_batch(owner: &Bytes, payload: &[u8]) {
    let Ok(entries) = batch::decode(owner, payload) else {
        return;
    };
    let mut buf = Vec::new();
    batch::put_count(&mut buf, entries.len());
    for e in &entries {
        match e {
            Entry::Message(m) => {
                assert_ne!(m.id.0, 0, "decoded a message with id 0");
                assert!(m.edited_ms.is_none());
                batch::put_message(&mut buf, m);
            }
            Entry::State(key, value) => {
                assert!(key.len() <= MAX_KEY_LEN, "decoded a key over the limit");
                batch::put_state(&mut buf, key, value.as_deref());
            }
        }
    }
    let again = Bytes::from(buf);
    let decoded = batch::decode(&again, &again).expect("a re-encoded batch must decode");
    assert_eq!(
        decoded, entries,
        "a batch must survive decode, encode, decode"
    );
}
