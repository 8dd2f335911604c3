//! On-disk formats. Each submodule owns one format and documents it in `docs/`; none of them
//! knows anything about the engine that uses it.

pub mod batch;
pub mod block;
pub mod coding;
pub mod dictionary;
pub mod manifest;
pub mod segment;
pub mod state_block;

pub mod wal;
