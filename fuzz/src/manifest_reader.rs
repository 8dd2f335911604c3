//! `manifest_reader`: the input is a MANIFEST file, decoded with `manifest::decode` as is and
//! with its length and checksum recomputed. A decoded manifest must survive a re-encode.

use chatstore::format::manifest::{self, DecodeError, MANIFEST_VERSION};

/// Runs one input.
pub fn run(data: &[u8]) {
    check(data);
    let fixed = crate::fixup::manifest(data);
    if fixed != data {
        check(&fixed);
    }
}

fn check(data: &[u8]) {
    match manifest::decode(data) {
        Ok(state) => {
            assert!(state.segments.len() <= data.len());
            let again = manifest::encode(&state);
            assert_eq!(
                manifest::decode(&again),
                Ok(state),
                "a manifest must survive decode, encode, decode"
            );
        }
        Err(DecodeError::Corrupt { offset, .. }) => {
            assert!(offset <= data.len() as u64, "damage reported past the end");
        }
        Err(DecodeError::Version(v)) => {
            assert!(
                v == 0 || v > MANIFEST_VERSION,
                "refused its own version {v}"
            );
        }
    }
}
