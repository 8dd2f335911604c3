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
    synced_len: u64,
    /// `synced_len`, published for the commit leader, which frames records (each carrying
    /// how much of the file was durable) before it takes the lock on this writer.
    synced_mark: Arc<AtomicU64>,
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
            synced_len: 0,
            synced_mark,
        })
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
            synced_len: 0,
            synced_mark: Arc::default(),
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

    /// Makes everything appended durable; a no-op if nothing changed since the last sync.
    /// Returns whether an fsync was issued.
    pub fn sync(&mut self) -> Result<bool> {
        if self.synced_len == self.len {
            return Ok(false);
        }
        self.file.sync().map_err(|e| Error::io(&self.path, e))?;
        self.synced_len = self.len;
        self.synced_mark.store(self.synced_len, Ordering::Release);
        Ok(true)
    }
}
