//! The block codecs a segment may use. Defined with the formats that write them (a block's
//! header records its codec); the engine's options name one of them
//! ([`Options::compression`](crate::Options::compression)).

/// How segment blocks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Stored as is.
    None,
    /// LZ4 (fast, moderate ratio).
    Lz4,
    /// Zstandard at the given level (1..=22; 3 is a good default).
    Zstd(i32),
}
