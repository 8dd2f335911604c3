//! Reading a compaction input's blocks in order, several at a time.
//!
//! A merge reads each input's blocks one after another, most of them 1–4 KiB: one `pread`
//! (and one buffer allocated and zeroed) per block made the system call the larger part of
//! reading, about 2.5 million of them for 20 M messages. A window reads the file ahead in
//! one call and hands out the blocks inside it as slices of that one buffer.

// Background threads must not panic: no arithmetic that can overflow.
#![deny(clippy::arithmetic_side_effects)]

use bytes::Bytes;

use crate::error::Result;
use crate::format::segment::{BlockHandle, SegmentReader};

/// Bytes all the windows of one merge thread read ahead, together: a merge of level 0 has
/// dozens of inputs, and each holds its window until it moves past it.
const WINDOWS_BYTES: usize = 1 << 20;
/// The least a window reads at once (four uncompressed blocks of the default size).
const MIN_WINDOW_BYTES: usize = 16 << 10;
/// The most (larger reads gain nothing more on the system call, and cost memory).
const MAX_WINDOW_BYTES: usize = 256 << 10;

/// The part of one input's file read last, and the blocks handed out of it.
#[derive(Debug)]
pub(super) struct ReadWindow {
    span: Bytes,
    /// File offset of `span`'s first byte.
    at: u64,
    /// How much to read at once.
    size: usize,
}

impl ReadWindow {
    /// A window for one of `inputs` inputs read side by side.
    pub(super) fn for_inputs(inputs: usize) -> Self {
        let size = WINDOWS_BYTES
            .checked_div(inputs)
            .unwrap_or(MAX_WINDOW_BYTES)
            .clamp(MIN_WINDOW_BYTES, MAX_WINDOW_BYTES);
        ReadWindow {
            span: Bytes::new(),
            at: 0,
            size,
        }
    }

    /// The block at `h` of `reader`, as stored (its checksum not checked yet): from the
    /// window if it holds the block, else after reading the window anew from the block on.
    pub(super) fn block(&mut self, reader: &SegmentReader, h: BlockHandle) -> Result<Bytes> {
        if let Some(stored) = SegmentReader::block_in_span(h, &self.span, self.at) {
            return Ok(stored);
        }
        let want = self.size.max(h.len as usize);
        self.span = reader.read_span(h.offset, want)?;
        self.at = h.offset;
        match SegmentReader::block_in_span(h, &self.span, self.at) {
            Some(stored) => Ok(stored),
            // The file ends before the block does: read it alone for the error it gives.
            None => reader.read_block_checked_at(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_share_a_budget_within_bounds() {
        assert_eq!(ReadWindow::for_inputs(0).size, MAX_WINDOW_BYTES);
        assert_eq!(ReadWindow::for_inputs(2).size, MAX_WINDOW_BYTES);
        assert_eq!(ReadWindow::for_inputs(16).size, 64 << 10);
        assert_eq!(ReadWindow::for_inputs(1000).size, MIN_WINDOW_BYTES);
    }
}
