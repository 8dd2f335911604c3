//! An append-only file of JSON lines, fsynced per record: the server's small durable tables
//! (accounts, assets). A record is acknowledged only after its line is on disk; a torn last
//! line (a crash mid-append, so never acknowledged) is cut off at open; a bad line anywhere
//! else is damage and refuses the open.
//!
//! A failed append (a short write, a failed fsync) is cut off again before the call returns,
//! so the next record never lands glued to half a line; if even that fails, the log refuses
//! further appends until a restart (whose open cuts the torn tail).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct JsonLog {
    path: PathBuf,
    file: File,
    /// Length of the complete records.
    len: u64,
    /// A failed append could not be undone: appends are refused.
    poisoned: bool,
    /// Tests make the next append fail this way.
    #[cfg(test)]
    pub fail_next: Option<Fault>,
}

/// A failure a test can inject into the next append.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Half the line is written, then the write fails.
    ShortWrite,
    /// The line is written, then the fsync fails.
    SyncFails,
}

impl JsonLog {
    /// Opens (or creates) the log and returns its records.
    pub fn open<T: DeserializeOwned>(path: &Path) -> Result<(JsonLog, Vec<T>), String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(err)?;
        if !existed {
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(err)?;
        let mut records = Vec::new();
        let mut good_len = 0usize;
        let mut pos = 0usize;
        let mut line_no = 0usize;
        while pos < bytes.len() {
            line_no += 1;
            let (line, next, complete) = match bytes[pos..].iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[pos..pos + i], pos + i + 1, true),
                None => (&bytes[pos..], bytes.len(), false),
            };
            if !complete {
                break; // torn tail: never acknowledged
            }
            let record = serde_json::from_slice::<T>(line)
                .map_err(|e| format!("{} line {line_no}: {e}", path.display()))?;
            records.push(record);
            good_len = next;
            pos = next;
        }
        if good_len < bytes.len() {
            file.set_len(good_len as u64).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        Ok((
            JsonLog {
                path: path.to_path_buf(),
                file,
                len: good_len as u64,
                poisoned: false,
                #[cfg(test)]
                fail_next: None,
            },
            records,
        ))
    }

    /// Appends one record and fsyncs it. On failure the file is cut back to its complete
    /// records.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), String> {
        if self.poisoned {
            return Err(format!(
                "{}: an earlier append failed and could not be undone; restart to recover",
                self.path.display()
            ));
        }
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        match self.write_and_sync(&line) {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Whatever reached the file (or may still reach the disk) goes: cut it off
                // and make the cut durable. If that fails too, stop appending.
                let undo = self
                    .file
                    .set_len(self.len)
                    .and_then(|_| self.file.sync_all());
                if let Err(u) = undo {
                    self.poisoned = true;
                    eprintln!(
                        "chat_server: {}: undoing a failed append failed ({u}); no more appends until a restart",
                        self.path.display()
                    );
                }
                Err(format!("{}: {e}", self.path.display()))
            }
        }
    }

    fn write_and_sync(&mut self, line: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        match self.fail_next.take() {
            Some(Fault::ShortWrite) => {
                self.file.write_all(&line[..line.len() / 2])?;
                return Err(std::io::Error::other("injected short write"));
            }
            Some(Fault::SyncFails) => {
                self.file.write_all(line)?;
                return Err(std::io::Error::other("injected fsync failure"));
            }
            None => {}
        }
        self.file.write_all(line)?;
        self.file.sync_data()
    }
}
