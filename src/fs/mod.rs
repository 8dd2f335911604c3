//! The file-system layer the engine reads and writes through.
//!
//! Everything the engine does to disk goes through [`FileSystem`], so a test can substitute an
//! implementation that injects I/O errors or forgets everything that was not fsynced (a
//! simulated power cut). [`StdFileSystem`] is the real one. The fault-injecting one,
//! `fs::fault`, is compiled only with the cargo feature `fault-injection` (the crate's own
//! tests turn it on).

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

#[cfg(feature = "fault-injection")]
pub mod fault;

/// The payload of a panic the fault-injecting file system injects on purpose (`fs::fault`,
/// feature `fault-injection`). It poisons the store like any other panic in a background
/// thread, but never aborts the process (see [`ABORT_ON_PANIC_VAR`](crate::ABORT_ON_PANIC_VAR)).
#[derive(Debug, Clone, Copy)]
pub struct InjectedPanic;

/// A file opened for appending.
pub trait WritableFile: Send {
    /// Appends `buf` (to the OS page cache, not yet durable).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
}

/// An immutable file opened for positioned reads (segments).
///
/// Reads copy into the caller's memory rather than mapping the file: pages a read touched are
/// then not charged to the process, a file damaged under the engine gives an error rather than
/// a `SIGBUS`, and the block cache is the one place decoded data lives.
pub trait RandomAccessFile: Send + Sync + fmt::Debug {
    /// The file's length in bytes.
    fn len(&self) -> u64;
    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `len` bytes at `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;
}

fn past_the_end(offset: u64, len: usize, file_len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {len} bytes at {offset} past the end of a {file_len} byte file"),
    )
}

/// An in-memory file (tests, tools, and files read whole).
impl RandomAccessFile for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(len) {
            Some(end) if end <= Bytes::len(self) => Ok(self.slice(start..end)),
            _ => Err(past_the_end(offset, len, Bytes::len(self) as u64)),
        }
    }
}

/// A held directory lock; released on drop.
pub trait DirLock: Send + Sync + fmt::Debug {}

/// The operations the engine needs from a file system.
pub trait FileSystem: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates (or truncates) a file for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens the existing file at `path` to be written again from its start: writes replace
    /// its bytes in place and extend it past its end; bytes past the last write keep what
    /// they held, and its length does not shrink. The store reuses retired WAL files this way
    /// (`Options::recycled_wal_files`), so that syncing a record does not also commit a new
    /// file length. The default refuses with `Unsupported`, and the store then creates new
    /// files.
    fn overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{}: overwriting in place is not supported", path.display()),
        ))
    }
    /// Reads a whole file into memory.
    fn read(&self, path: &Path) -> io::Result<Bytes>;
    /// Opens an immutable file for positioned reads. The file must not change while open.
    fn open_random_access(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>>;
    /// Atomically renames a file (durable once the directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Cuts a file to `len` bytes and makes the new length durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes everything written to the existing file at `path` durable (fsync), whoever
    /// wrote it: recovery uses it for log bytes a crashed process left in the page cache.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing); `Ok(None)` if someone else holds it.
    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>>;
    /// Whether the path exists.
    fn exists(&self, path: &Path) -> bool;

    /// Makes `to` a copy of the immutable file `from`, sharing storage where the file system
    /// allows (a hard link). The default copies the bytes and fsyncs the copy.
    fn link_or_copy(&self, from: &Path, to: &Path) -> io::Result<()> {
        let data = self.read(from)?;
        let mut f = self.create(to)?;
        f.write_all(&data)?;
        f.sync()
    }
}

/// The operating system's file system; segments are read with `pread`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFileSystem;

struct StdWritableFile {
    file: File,
}

impl WritableFile for StdWritableFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[derive(Debug)]
struct StdDirLock {
    // Held for its lock; the OS releases the lock when the file is closed.
    _file: File,
}

impl DirLock for StdDirLock {}

/// A file read with `pread`.
#[derive(Debug)]
struct StdRandomAccessFile {
    file: File,
    len: u64,
}

impl RandomAccessFile for StdRandomAccessFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(past_the_end(offset, len, self.len));
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

impl FileSystem for StdFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdWritableFile { file }))
    }

    fn overwrite(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        // Neither `truncate` nor `append`: writes start at offset 0 over the old bytes.
        let file = OpenOptions::new().write(true).open(path)?;
        Ok(Box::new(StdWritableFile { file }))
    }

    fn read(&self, path: &Path) -> io::Result<Bytes> {
        Ok(Bytes::from(std::fs::read(path)?))
    }

    fn open_random_access(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(StdRandomAccessFile { file, len }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn try_lock(&self, path: &Path) -> io::Result<Option<Box<dyn DirLock>>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(StdDirLock { _file: file }))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn link_or_copy(&self, from: &Path, to: &Path) -> io::Result<()> {
        if std::fs::hard_link(from, to).is_ok() {
            return Ok(());
        }
        std::fs::copy(from, to)?;
        File::open(to)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reused WAL file is written over in place: the new bytes replace the old ones from
    /// offset 0, the rest keeps what it held, and the length never shrinks.
    #[test]
    fn overwrite_writes_from_the_start_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("000007.wal");
        let fs = StdFileSystem;
        let mut f = fs.create(&path).unwrap();
        f.write_all(b"0123456789").unwrap();
        f.sync().unwrap();
        drop(f);
        let mut f = fs.overwrite(&path).unwrap();
        f.write_all(b"ab").unwrap();
        f.write_all(b"cd").unwrap();
        f.sync().unwrap();
        assert_eq!(&fs.read(&path).unwrap()[..], b"abcd456789");
        f.write_all(b"efghijkl").unwrap();
        assert_eq!(&fs.read(&path).unwrap()[..], b"abcdefghijkl");
        assert!(fs.overwrite(&dir.path().join("missing")).is_err());
    }
}
