//! An append-only file of JSON lines, fsynced per record: the server's small durable tables
//! (accounts, assets). A record is acknowledged only after its line is on disk; a torn last
//! line (a crash mid-append, so never acknowledged) is cut off at open; a bad line anywhere
//! else is damage and refuses the open.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct JsonLog {
    path: PathBuf,
    file: File,
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
            },
            records,
        ))
    }

    /// Appends one record and fsyncs it.
    pub fn append<T: Serialize>(&mut self, record: &T) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
