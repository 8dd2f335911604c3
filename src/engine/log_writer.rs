//! Appends framed records to the current WAL file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::wal::encode_file_header;
use crate::fs::{FileSystem, WritableFile};

/// The open WAL file new records go to.
pub struct LogWriter {
    path: PathBuf,
    file: Box<dyn WritableFile>,
    len: u64,
    /// Length of the file header: a file no longer than it holds no record.
    header_len: u64,
    synced_len: u64,
    /// `synced_len`, published for the commit leader, which frames records (each carrying
    /// how much of the file was durable) before it takes the lock on this writer.
    synced_mark: Arc<AtomicU64>,
    /// The directory to sync before the first record is durable, when the file's creation
    /// was not synced yet (see [`defer_dir_sync`](Self::defer_dir_sync)).
    dir_sync: Option<(Arc<dyn FileSystem>, PathBuf)>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("synced_len", &self.synced_len)
            .finish()
    }
}

impl LogWriter {
    /// Creates the WAL file at `path` and writes its header. The caller syncs the
    /// directory so the new name is durable before any record in it is acknowledged.
    /// `synced_mark` follows the file's durable length from now on.
    pub fn create(fs: &dyn FileSystem, path: &Path, synced_mark: Arc<AtomicU64>) -> Result<Self> {
        let mut file = fs.create(path).map_err(|e| Error::io(path, e))?;
        let mut header = Vec::new();
        encode_file_header(&mut header);
        file.write_all(&header).map_err(|e| Error::io(path, e))?;
        synced_mark.store(0, Ordering::Release);
        Ok(LogWriter {
            path: path.to_path_buf(),
            file,
            len: header.len() as u64,
            header_len: header.len() as u64,
            synced_len: 0,
            synced_mark,
            dir_sync: None,
        })
    }

    /// Leaves the sync of `dir` (which makes this file's name durable) to the first
    /// [`sync`](Self::sync) that makes a record durable, instead of the caller syncing it now:
    /// nothing in the file is acknowledged before then, and a store opened only to be read
    /// never pays for it.
    pub fn defer_dir_sync(&mut self, fs: Arc<dyn FileSystem>, dir: PathBuf) {
        self.dir_sync = Some((fs, dir));
    }

    /// A writer that refuses every write (for read-only stores).
    pub fn refusing(path: &Path) -> Self {
        struct Refuse;
        impl WritableFile for Refuse {
            fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
                Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "store is read-only",
                ))
            }
            fn sync(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        LogWriter {
            path: path.to_path_buf(),
            file: Box::new(Refuse),
            len: 0,
            header_len: 0,
            synced_len: 0,
            synced_mark: Arc::default(),
            dir_sync: None,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Appends already-framed records.
    pub fn append(&mut self, framed: &[u8]) -> Result<()> {
        self.file
            .write_all(framed)
            .map_err(|e| Error::io(&self.path, e))?;
        self.len += framed.len() as u64;
        Ok(())
    }

    /// Makes everything appended durable; a no-op if nothing changed since the last sync, or
    /// if the file holds no record yet (a header alone is worth nothing after a crash: the
    /// next open deletes a newest log without a complete header). Returns whether an fsync
    /// was issued.
    pub fn sync(&mut self) -> Result<bool> {
        if self.synced_len == self.len || self.len <= self.header_len {
            return Ok(false);
        }
        self.file.sync().map_err(|e| Error::io(&self.path, e))?;
        if let Some((fs, dir)) = &self.dir_sync {
            fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
            self.dir_sync = None;
        }
        self.synced_len = self.len;
        self.synced_mark.store(self.synced_len, Ordering::Release);
        Ok(true)
    }
}
