//! Zstandard dictionaries for segment blocks.
//!
//! Chat messages are short: a small block compresses poorly on its own because the compressor
//! has little history to match against. A dictionary trained on the store's own blocks gives
//! every block that history up front, so small blocks (cheap to decompress on a cache miss)
//! compress as well as large ones. Each segment that uses one stores it (see
//! `docs/format-segment.md`), so a segment is readable on its own.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use zstd::zstd_safe::{self, CCtx, CDict, DDict};

/// Compresses blocks with one dictionary.
pub struct DictEncoder {
    cctx: CCtx<'static>,
    cdict: CDict<'static>,
}

impl std::fmt::Debug for DictEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DictEncoder")
    }
}

impl DictEncoder {
    /// An encoder for `dict` at compression `level`; `None` if zstd rejects the dictionary.
    pub fn new(dict: &[u8], level: i32) -> Option<Self> {
        Some(DictEncoder {
            cctx: CCtx::try_create()?,
            cdict: CDict::try_create(dict, level)?,
        })
    }

    /// Compresses `body`; `None` if zstd fails.
    pub fn compress(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.compress_into(body, &mut out)?;
        Some(out)
    }

    /// Compresses `body` onto the end of `out` and returns the compressed length; `None` (and
    /// `out` as it was) if zstd fails. A segment writer packs its blocks this way, straight
    /// into its output buffer, without a buffer of their own to allocate and copy from.
    pub fn compress_into(&mut self, body: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let start = out.len();
        out.reserve(zstd_safe::compress_bound(body.len()));
        let mut at = std::io::Cursor::new(&mut *out);
        at.set_position(start as u64);
        match self.cctx.compress_using_cdict(&mut at, body, &self.cdict) {
            Ok(n) => Some(n),
            Err(_) => {
                out.truncate(start);
                None
            }
        }
    }
}

/// Decompresses blocks made with one dictionary. Shared by all readers of a segment, and by
/// every open segment that stores the same dictionary (see [`DictDecoder::shared`]).
pub struct DictDecoder {
    ddict: DDict<'static>,
    dict: Bytes,
}

/// Decoders in use by open segments. Segments written between two retrainings carry the same
/// dictionary, and a decoder costs the dictionary's size again plus its entropy tables
/// (~100 KB for 64 KiB): a large store would otherwise hold one per segment.
static OPEN_DECODERS: Mutex<Vec<Weak<DictDecoder>>> = Mutex::new(Vec::new());

impl std::fmt::Debug for DictDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DictDecoder")
    }
}

impl DictDecoder {
    /// A decoder for `dict`; `None` if zstd rejects it.
    pub fn new(dict: &[u8]) -> Option<Self> {
        Self::from_bytes(Bytes::copy_from_slice(dict))
    }

    fn from_bytes(dict: Bytes) -> Option<Self> {
        Some(DictDecoder {
            ddict: DDict::try_create(&dict)?,
            dict,
        })
    }

    /// The decoder of an open segment with the same dictionary bytes, or a new one; `None` if
    /// zstd rejects the dictionary. Equal dictionaries are found by comparing their bytes.
    pub fn shared(dict: Bytes) -> Option<Arc<Self>> {
        let mut open = OPEN_DECODERS.lock();
        open.retain(|w| w.strong_count() > 0);
        if let Some(d) = open
            .iter()
            .filter_map(Weak::upgrade)
            .find(|d| d.dict == dict)
        {
            return Some(d);
        }
        let d = Arc::new(DictDecoder::from_bytes(dict)?);
        open.push(Arc::downgrade(&d));
        Some(d)
    }

    /// The dictionary's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.dict
    }

    /// Decompresses `body`, which must expand to exactly `raw_len` bytes.
    pub fn decompress(&self, body: &[u8], raw_len: usize) -> Result<Vec<u8>, &'static str> {
        super::zstd_contexts::decompress_with(raw_len, |dctx, out| {
            dctx.decompress_using_ddict(out, body, &self.ddict)
                .map_err(|_| "zstd dictionary decode failed")
        })
    }
}

/// Log2 of the entries in the trainer's table of d-mer frequencies. zstd's default (20: a
/// million entries) sizes it for samples of many megabytes, and its optimising trainer then
/// holds ~10.5 MiB (the table, a copy per trial, a segment table) during a flush, which was
/// the peak of a short ingest's memory. The store trains on ~128 blocks (half a megabyte
/// with 4 KiB blocks): at 2^17 entries the trainer holds an eighth of that, and the store's
/// bytes on disk grow by 0.3 % (the comparison harness's quick preset: 0.3423 of the logical
/// bytes against 0.3407–0.3413 at 2^20; 0.3421 at 2^18, 0.3416 at 2^19).
const FREQUENCY_TABLE_LOG: u32 = 17;

/// Trains a dictionary of at most `max_bytes` from sample block bodies; `None` when the
/// samples are too few or too small for zstd to learn from.
///
/// zstd's own `ZDICT_trainFromBuffer` (fastCover, d = 8, four trial segment sizes, the
/// default compression level), with its frequency table bounded (see
/// [`FREQUENCY_TABLE_LOG`]).
pub fn train(samples: &[Vec<u8>], max_bytes: usize) -> Option<Vec<u8>> {
    use zstd::zstd_safe::zstd_sys;
    let total = samples
        .iter()
        .map(Vec::len)
        .fold(0usize, usize::saturating_add);
    if samples.len() < 8 || total < max_bytes.saturating_mul(2) {
        return None;
    }
    let count = u32::try_from(samples.len()).ok()?;
    let sizes: Vec<usize> = samples.iter().map(Vec::len).collect();
    let flat = samples.concat();
    let mut dict = vec![0u8; max_bytes];
    let mut params = zstd_sys::ZDICT_fastCover_params_t {
        k: 0,
        d: 8,
        f: FREQUENCY_TABLE_LOG,
        steps: 4,
        nbThreads: 0,
        splitPoint: 0.0,
        accel: 0,
        shrinkDict: 0,
        shrinkDictMaxRegression: 0,
        zParams: zstd_sys::ZDICT_params_t {
            compressionLevel: 0,
            notificationLevel: 0,
            dictID: 0,
        },
    };
    // SAFETY: `dict` is writable for `dict.len()` bytes; `flat` holds exactly the sum of
    // `sizes` bytes, and `sizes` has `count` entries; `params` is a valid, initialised
    // parameter block the call may write its choices into. zstd keeps no pointer past the
    // call, which is single-threaded (`nbThreads: 0`).
    let written = unsafe {
        zstd_sys::ZDICT_optimizeTrainFromBuffer_fastCover(
            dict.as_mut_ptr().cast(),
            dict.len(),
            flat.as_ptr().cast(),
            sizes.as_ptr(),
            count,
            &mut params,
        )
    };
    // SAFETY: a plain function of the returned code.
    if unsafe { zstd_sys::ZDICT_isError(written) } != 0 || written > dict.len() {
        return None;
    }
    dict.truncate(written);
    Some(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        (0..200)
            .map(|i| {
                format!(
                    "hey are you coming tonight {i}? the train is late again, see you at dinner {}",
                    i * 7
                )
                .repeat(20)
                .into_bytes()
            })
            .collect()
    }

    #[test]
    fn round_trips_and_beats_no_dictionary_on_small_inputs() {
        let s = samples();
        let dict = train(&s, 4096).unwrap();
        let mut enc = DictEncoder::new(&dict, 3).unwrap();
        let dec = DictDecoder::new(&dict).unwrap();
        let body = b"hey are you coming tonight 9999? the train is late again".to_vec();
        let c = enc.compress(&body).unwrap();
        assert_eq!(dec.decompress(&c, body.len()).unwrap(), body);
        assert!(c.len() < zstd::bulk::compress(&body, 3).unwrap().len());
        assert!(dec.decompress(&c, body.len() + 1).is_err());
        assert!(dec.decompress(&c[..c.len() / 2], body.len()).is_err());
    }

    #[test]
    fn compress_into_appends_after_what_the_buffer_holds() {
        let s = samples();
        let dict = train(&s, 4096).unwrap();
        let mut enc = DictEncoder::new(&dict, 3).unwrap();
        let dec = DictDecoder::new(&dict).unwrap();
        let mut out = b"earlier blocks".to_vec();
        for body in [&s[0][..], &s[1][..], b"x"] {
            let start = out.len();
            let n = enc.compress_into(body, &mut out).unwrap();
            assert_eq!(out.len(), start + n);
            assert_eq!(&out[..14], b"earlier blocks");
            assert_eq!(dec.decompress(&out[start..], body.len()).unwrap(), body);
            assert_eq!(enc.compress(body).unwrap(), &out[start..]);
        }
    }

    #[test]
    fn segments_with_the_same_dictionary_share_one_decoder() {
        let s = samples();
        let a = train(&s, 4096).unwrap();
        let b = train(&s[..100], 2048).unwrap();
        assert_ne!(a, b);
        let da = DictDecoder::shared(Bytes::from(a.clone())).unwrap();
        let da2 = DictDecoder::shared(Bytes::from(a.clone())).unwrap();
        let db = DictDecoder::shared(Bytes::from(b)).unwrap();
        assert!(Arc::ptr_eq(&da, &da2));
        assert!(!Arc::ptr_eq(&da, &db));
        // Once no segment uses it, a later open builds a fresh decoder.
        let weak = Arc::downgrade(&da);
        drop((da, da2));
        assert!(weak.upgrade().is_none());
        let again = DictDecoder::shared(Bytes::from(a)).unwrap();
        let mut enc = DictEncoder::new(again.bytes(), 3).unwrap();
        let body = b"the train is late again".to_vec();
        let c = enc.compress(&body).unwrap();
        assert_eq!(again.decompress(&c, body.len()).unwrap(), body);
    }

    #[test]
    fn too_little_data_trains_nothing() {
        assert!(train(&[b"tiny".to_vec()], 4096).is_none());
    }
}
