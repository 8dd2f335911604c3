//! On-disk formats. Each submodule owns one format and documents it in `docs/`; none of them
//! knows anything about the engine that uses it.
//!
//! **Not part of the stable API.** This module is public (and hidden from the documentation)
//! only so that the fuzz targets, the format tests and `chatstore-inspect` can reach the
//! decoders directly; any of its items may change or disappear in any release.
//!
//! Every size a decoder refuses, or a field cannot represent, is a named constant of the format
//! that refuses it, used by its encoder (which refuses too, with [`OverLimit`], rather than
//! write bytes no reader accepts) and by the store's validation of user input, which refuses
//! anything over them before it reaches the log:
//!
//! | limit | value | format |
//! |-------|-------|--------|
//! | [`wal::MAX_RECORD_LEN`] | 256 MiB | payload of one WAL record: everything one write call commits |
//! | [`batch::MAX_MENTIONS`] | 65 536 | mentions of one message (WAL batch and segment block) |
//! | `block::MAX_MESSAGE_BYTES` | 16 MiB | content plus attachment link of one message |
//! | [`block::MAX_BLOCK_LEN`] | 24 MiB | uncompressed body of a segment block (messages or state) |
//! | [`state_block::MAX_KEY_LEN`] | 4 096 | bytes of a state key |
//! | `state_block::MAX_VALUE_LEN` | 24 MiB - 4 KiB - 20 | bytes of a state value (a block holds it beside the longest key) |

use std::fmt;

pub mod batch;
pub mod block;
pub mod coding;
pub mod compression;
pub mod dictionary;
pub mod index_partitions;
pub mod manifest;
mod packed_entries;
pub mod segment;
pub mod state_block;

pub mod wal;
pub mod zstd_contexts;

/// A value larger than a format can hold: writers refuse it instead of writing bytes that a
/// reader would reject (or a length that would wrap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverLimit {
    /// What is too large, as a noun phrase ("mentions of one message").
    pub what: &'static str,
    /// Its size.
    pub len: usize,
    /// The largest size the format holds.
    pub limit: usize,
}

impl fmt::Display for OverLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} is over the limit of {}",
            self.what, self.len, self.limit
        )
    }
}

impl std::error::Error for OverLimit {}

impl From<OverLimit> for crate::Error {
    fn from(e: OverLimit) -> Self {
        crate::Error::InvalidArgument(e.to_string())
    }
}

impl From<OverLimit> for std::io::Error {
    fn from(e: OverLimit) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

/// `Err(OverLimit)` if `len > limit`.
pub(crate) fn within(what: &'static str, len: usize, limit: usize) -> Result<(), OverLimit> {
    if len > limit {
        return Err(OverLimit { what, len, limit });
    }
    Ok(())
}
