//! Index entries a segment writer gathers until its blocks are written, packed.
//!
//! A segment's block and conversation indexes follow its blocks in the file, so its writer
//! holds every entry until the end. At their fixed widths in growing vectors, a 64 MiB
//! compaction output's indexes (~200 K conversations at 24 bytes, tens of thousands of
//! blocks at 32) took ~6 MiB of capacity per writer, reached by doubling (each step a copy),
//! in single allocations large enough for glibc to serve by `mmap`; freeing one raises the
//! allocator's mmap and trim thresholds for the rest of the process, after which every arena
//! keeps that much freed memory resident (`docs/memory.md`).
//!
//! Here an entry is the zigzag varint of each field's change from the entry before it:
//! conversations and offsets only grow, ids and lengths move little, so an entry takes
//! 5–12 bytes. The bytes go in chunks of [`CHUNK_BYTES`], allocated one at a time as they
//! fill: nothing doubles or moves, and no chunk is large enough to be mmapped. An entry never
//! straddles two chunks.

#![deny(clippy::arithmetic_side_effects)]

use super::coding::{put_varint, unzigzag, zigzag, Reader};

/// Bytes of one chunk: below glibc's default mmap threshold (128 KiB).
const CHUNK_BYTES: usize = 64 << 10;

/// The longest varint of a `u64`.
const MAX_VARINT_LEN: usize = 10;

/// Entries of `N` fields each, in the order pushed.
#[derive(Debug)]
pub(crate) struct PackedEntries<const N: usize> {
    chunks: Vec<Vec<u8>>,
    /// The last entry pushed (all zeros before the first).
    last: [u64; N],
    len: usize,
}

impl<const N: usize> PackedEntries<N> {
    pub(crate) fn new() -> Self {
        PackedEntries {
            chunks: Vec::new(),
            last: [0; N],
            len: 0,
        }
    }

    /// Appends `entry`.
    pub(crate) fn push(&mut self, entry: [u64; N]) {
        let need = N.saturating_mul(MAX_VARINT_LEN);
        let room = self
            .chunks
            .last()
            .map_or(0, |c| CHUNK_BYTES.saturating_sub(c.len()));
        if room < need {
            self.chunks.push(Vec::with_capacity(CHUNK_BYTES.max(need)));
        }
        if let Some(chunk) = self.chunks.last_mut() {
            for (field, last) in entry.iter().zip(self.last.iter_mut()) {
                // Wrapping: the change is read back by the same wrapping addition, whatever
                // the two values.
                put_varint(chunk, zigzag(field.wrapping_sub(*last) as i64));
                *last = *field;
            }
            self.len = self.len.saturating_add(1);
        }
    }

    /// How many entries were pushed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The entries, in the order pushed.
    pub(crate) fn iter(&self) -> Entries<'_, N> {
        Entries {
            chunks: self.chunks.iter(),
            reader: Reader::new(&[]),
            last: [0; N],
        }
    }

    /// Bytes held (the chunks' capacity).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// Iterator over [`PackedEntries`].
pub(crate) struct Entries<'a, const N: usize> {
    chunks: std::slice::Iter<'a, Vec<u8>>,
    reader: Reader<'a>,
    last: [u64; N],
}

impl<const N: usize> Iterator for Entries<'_, N> {
    type Item = [u64; N];

    fn next(&mut self) -> Option<[u64; N]> {
        while self.reader.is_empty() {
            self.reader = Reader::new(self.chunks.next()?);
        }
        let mut entry = [0u64; N];
        for (field, last) in entry.iter_mut().zip(self.last.iter_mut()) {
            // Only `push` wrote these bytes; a short read ends the iteration, and the caller
            // compares the count it got with `len`.
            *field = last.wrapping_add(unzigzag(self.reader.varint()?) as u64);
            *last = *field;
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entries_read_back_in_order_across_chunks() {
        let mut p = PackedEntries::<3>::new();
        let mut want = Vec::new();
        for i in 0..100_000u64 {
            let e = [i * 3, 1 + (i % 7) * 1000, u64::MAX - i];
            p.push(e);
            want.push(e);
        }
        assert_eq!(p.len(), want.len());
        assert!(p.chunks.len() > 1, "the test must cross chunks");
        assert!(p.chunks.iter().all(|c| c.capacity() == CHUNK_BYTES));
        assert_eq!(p.iter().collect::<Vec<_>>(), want);
    }

    #[test]
    fn an_index_entry_takes_a_fraction_of_its_fixed_width() {
        // A conversation index as a compaction output writes it: conversations in order,
        // ids in the thousands.
        let mut p = PackedEntries::<3>::new();
        for conv in 0..200_000u64 {
            let first = 1 + conv % 5000;
            p.push([conv * 2 + 1, first, first + conv % 40]);
        }
        assert!(p.held_bytes() * 3 < 200_000 * 24, "held {}", p.held_bytes());
    }

    #[test]
    fn empty_has_no_entries() {
        let p = PackedEntries::<5>::new();
        assert_eq!(p.len(), 0);
        assert_eq!(p.iter().next(), None);
    }

    proptest! {
        #[test]
        fn any_entries_read_back(entries in proptest::collection::vec(any::<[u64; 5]>(), 0..3000)) {
            let mut p = PackedEntries::<5>::new();
            for e in &entries {
                p.push(*e);
            }
            prop_assert_eq!(p.len(), entries.len());
            prop_assert_eq!(p.iter().collect::<Vec<_>>(), entries);
        }
    }
}
