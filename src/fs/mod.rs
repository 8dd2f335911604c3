//! The file-system layer the engine reads and writes through.
//!
//! Everything the engine does to disk goes through [`FileSystem`], so a test can substitute an
//! implementation that injects I/O errors or forgets everything that was not fsynced (a
//! simulated power cut). [`StdFileSystem`] is the real one.

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;

pub mod fault;

/// A file opened for appending.
pub trait WritableFile: Send {
    /// Appends `buf` (to the OS page cache, not yet durable).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
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
    /// Reads a whole file into memory.
    fn read(&self, path: &Path) -> io::Result<Bytes>;
    /// Maps an immutable file for reading. The file must not change while mapped.
    fn map(&self, path: &Path) -> io::Result<Bytes>;
    /// Atomically renames a file (durable once the directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Cuts a file to `len` bytes and makes the new length durable.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
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

/// The operating system's file system, with memory-mapped reads.
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

/// Owner of a read-only mapping, so a `Bytes` can point into it.
struct Mapping(memmap2::Mmap);

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.0
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

    fn read(&self, path: &Path) -> io::Result<Bytes> {
        Ok(Bytes::from(std::fs::read(path)?))
    }

    fn map(&self, path: &Path) -> io::Result<Bytes> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Bytes::new());
        }
        // SAFETY: the engine maps only segment files, which are written once, fsynced and never
        // modified or truncated afterwards (they are replaced by new files and unlinked, which
        // leaves existing mappings valid). Changing them behind the engine's back is outside
        // the contract documented in docs/format-segment.md.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Bytes::from_owner(Mapping(map)))
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
