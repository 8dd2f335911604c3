//! File naming and the manifest's atomic replace.
//!
//! A store directory holds `LOCK`, `MANIFEST`, `NNNNNN.wal` write-ahead logs and `NNNNNN.seg`
//! segments. Numbers come from one counter and are never reused.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::manifest::{self, DecodeError, ManifestState, MANIFEST_VERSION};
use crate::fs::FileSystem;

/// Name of the lock file.
pub const LOCK: &str = "LOCK";
/// Name of the manifest.
pub const MANIFEST: &str = "MANIFEST";
/// Name of the manifest being written.
pub const MANIFEST_TMP: &str = "MANIFEST.tmp";

/// What kind of file a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A write-ahead log with its number.
    Wal(u64),
    /// A segment with its number.
    Segment(u64),
    /// The lock file.
    Lock,
    /// The manifest.
    Manifest,
    /// A manifest left half-written by a crash.
    ManifestTmp,
}

/// Classifies a directory entry; `None` for files that are not the store's.
pub fn parse_name(name: &str) -> Option<FileKind> {
    match name {
        LOCK => return Some(FileKind::Lock),
        MANIFEST => return Some(FileKind::Manifest),
        MANIFEST_TMP => return Some(FileKind::ManifestTmp),
        _ => {}
    }
    let (stem, ext) = name.split_once('.')?;
    if stem.len() < 6 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = stem.parse().ok()?;
    match ext {
        "wal" => Some(FileKind::Wal(n)),
        "seg" => Some(FileKind::Segment(n)),
        _ => None,
    }
}

/// Path of WAL file `n`.
pub fn wal_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:06}.wal"))
}

/// Path of segment `n`.
pub fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:06}.seg"))
}

/// Creates `dir` and any missing parents, and makes each new directory durable in its parent:
/// a directory whose parent was not fsynced can vanish in a power cut with everything in it,
/// however carefully its own files were synced.
pub fn create_dir_durably(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !fs.exists(d))
        .collect();
    fs.create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Deepest first: each parent's sync then covers an entry that already exists.
    for d in missing {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            Some(_) => Path::new("."),
            None => continue,
        };
        fs.sync_dir(parent).map_err(|e| Error::io(parent, e))?;
    }
    Ok(())
}

/// Replaces the manifest atomically: write a temp file, fsync it, rename it over the old one,
/// fsync the directory. A crash at any step leaves either the old or the new manifest.
pub fn write_manifest(fs: &dyn FileSystem, dir: &Path, state: &ManifestState) -> Result<()> {
    let tmp = dir.join(MANIFEST_TMP);
    let bytes = manifest::encode(state);
    let mut f = fs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    let path = dir.join(MANIFEST);
    fs.rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Reads the manifest.
pub fn read_manifest(fs: &dyn FileSystem, dir: &Path) -> Result<ManifestState> {
    let path = dir.join(MANIFEST);
    let bytes = fs.read(&path).map_err(|e| Error::io(&path, e))?;
    manifest::decode(&bytes).map_err(|e| match e {
        DecodeError::Corrupt { offset, reason } => Error::corruption(&path, offset, reason),
        DecodeError::Version(found) => Error::UnsupportedVersion {
            path: path.clone(),
            found,
            supported: MANIFEST_VERSION,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse_name("000012.wal"), Some(FileKind::Wal(12)));
        assert_eq!(parse_name("1234567.seg"), Some(FileKind::Segment(1234567)));
        assert_eq!(parse_name("MANIFEST"), Some(FileKind::Manifest));
        assert_eq!(parse_name("12.wal"), None);
        assert_eq!(parse_name("00001x.wal"), None);
        assert_eq!(parse_name("000001.txt"), None);
        assert_eq!(parse_name("notes"), None);
        let p = wal_path(Path::new("/d"), 7);
        assert_eq!(p, Path::new("/d/000007.wal"));
        assert_eq!(
            parse_name(&p.file_name().unwrap().to_string_lossy()),
            Some(FileKind::Wal(7))
        );
    }
}
