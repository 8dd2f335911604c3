//! The fuzz targets' logic, one module per target. Each module has `pub fn run(data: &[u8])`,
//! which the libFuzzer binary in `fuzz_targets/` calls and which `tests/fuzz_corpus.rs` in the
//! root crate includes (with `#[path]`) to replay the committed corpus on stable Rust. A module
//! may use only `chatstore`, `bytes`, `crc32fast`, `tempfile` and `std` (all of them
//! dependencies of the root crate), so that both crates build the same code.

pub mod block_decoder;
pub mod fixup;
pub mod manifest_reader;
pub mod segment_reader;
pub mod store_ops;
pub mod wal_reader;
