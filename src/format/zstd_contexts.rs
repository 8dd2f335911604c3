//! Per-thread zstd contexts for blocks compressed without a dictionary: state blocks always,
//! message blocks of a store with no dictionary. Creating a context allocates and clears its
//! tables (about a megabyte at level 3), which costs more than compressing a 4 KiB block:
//! creating one per block made context set-up most of the work of writing and reading state
//! blocks. One compression and one decompression context per thread, reused.

use std::cell::RefCell;

use zstd::zstd_safe::{self, CCtx, DCtx};

thread_local! {
    static CCTX: RefCell<Option<CCtx<'static>>> = const { RefCell::new(None) };
    static DCTX: RefCell<Option<DCtx<'static>>> = const { RefCell::new(None) };
}

/// `body` compressed at `level`; `None` if zstd fails (the caller stores the block raw).
pub fn compress(body: &[u8], level: i32) -> Option<Vec<u8>> {
    CCTX.with(|cell| {
        let mut slot = cell.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some(CCtx::try_create()?);
        }
        let cctx = slot.as_mut()?;
        let mut out = Vec::with_capacity(zstd_safe::compress_bound(body.len()));
        cctx.compress(&mut out, body, level).ok()?;
        Some(out)
    })
}

/// Runs `decode` with this thread's decompression context and a buffer of `raw_len` bytes'
/// capacity; the decoded length must be exactly `raw_len`. Shared by blocks with and without
/// a dictionary (`DictDecoder::decompress`): a dictionary given per call does not stay with
/// the context.
pub fn decompress_with(
    raw_len: usize,
    decode: impl FnOnce(&mut DCtx<'static>, &mut Vec<u8>) -> Result<usize, &'static str>,
) -> Result<Vec<u8>, &'static str> {
    DCTX.with(|cell| {
        let mut slot = cell.try_borrow_mut().map_err(|_| "decoder busy")?;
        if slot.is_none() {
            *slot = Some(DCtx::try_create().ok_or("zstd context allocation failed")?);
        }
        let dctx = slot.as_mut().ok_or("zstd context missing")?;
        let mut out = Vec::with_capacity(raw_len);
        if decode(dctx, &mut out)? != raw_len {
            return Err("uncompressed length mismatch");
        }
        Ok(out)
    })
}

/// `body` decompressed; it must expand to exactly `raw_len` bytes.
pub fn decompress(body: &[u8], raw_len: usize) -> Result<Vec<u8>, &'static str> {
    decompress_with(raw_len, |dctx, out| {
        dctx.decompress(out, body).map_err(|_| "zstd decode failed")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_through_the_reused_contexts() {
        for i in 0..50u32 {
            let body: Vec<u8> = (0..4096u32)
                .map(|j| (j % (7 + i)) as u8 ^ (i as u8))
                .collect();
            let packed = compress(&body, 3).unwrap();
            assert!(packed.len() < body.len());
            assert_eq!(decompress(&packed, body.len()).unwrap(), body);
            // What the crate's one-shot functions make, these contexts read, and back.
            let one_shot = zstd::bulk::compress(&body, 3).unwrap();
            assert_eq!(decompress(&one_shot, body.len()).unwrap(), body);
            assert_eq!(zstd::bulk::decompress(&packed, body.len()).unwrap(), body);
        }
        assert_eq!(
            decompress(b"not zstd at all", 10),
            Err("zstd decode failed")
        );
        let packed = compress(&[7u8; 1000], 3).unwrap();
        assert_eq!(
            decompress(&packed, 999),
            Err("zstd decode failed"),
            "a frame larger than its stated length does not fit"
        );
    }
}
