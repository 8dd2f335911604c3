//! Shard snapshots in the JetStream object store: what keeps a shard's stream bounded.
//!
//! A shard's owner [`upload`](SnapshotBucket::upload)s a checkpoint of its store (a tar
//! archive of the checkpoint directory, one object per shard, `shard-<n>`, replaced by each
//! upload) and then purges the stream below the checkpoint's LSN
//! ([`checkpoint_and_purge`]). A new owner with no copy of its own
//! [`restore`](SnapshotBucket::restore)s the latest snapshot and replays the stream from its
//! LSN; a copy of its own, if newer, is better (less to replay).
//!
//! Integrity: the object store keeps a SHA-256 digest of every object and the client checks
//! it on download, so a damaged or truncated download is an error, never a store; the files
//! of the checkpoint carry their own checksums besides (the store verifies them at open).
//! Order matters for the bound: the purge runs only after the object store acknowledged the
//! whole upload, so the stream never lacks a record no snapshot holds.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::object_store::{self, ObjectMetadata};
use async_nats::jetstream::stream::StorageType;
use chatstore::Store;
use tokio::io::AsyncWriteExt;

use crate::error::{nats_err, Error, Result};
use crate::nats::Nats;
use crate::stream::ShardStream;

/// The object metadata key holding a snapshot's LSN.
pub const LSN_METADATA: &str = "chatstore-lsn";

/// Where snapshots are kept.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// The object store bucket (letters, digits, `-`, `_`).
    pub bucket: String,
    /// Replicas of the bucket (3 on a 3-server cluster).
    pub replicas: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            bucket: "chatstore_snapshots".to_string(),
            replicas: 3,
        }
    }
}

/// A snapshot in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The shard.
    pub shard: u32,
    /// The LSN the snapshot's store holds: a store restored from it continues at `lsn + 1`.
    pub lsn: u64,
    /// Bytes of the archive.
    pub bytes: u64,
}

/// The snapshot bucket.
#[derive(Clone)]
pub struct SnapshotBucket {
    nats: Nats,
    objects: object_store::ObjectStore,
    config: SnapshotConfig,
}

impl std::fmt::Debug for SnapshotBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBucket")
            .field("config", &self.config)
            .finish()
    }
}

/// The object name of a shard's snapshot.
pub fn snapshot_name(shard: u32) -> String {
    format!("shard-{shard}")
}

impl SnapshotBucket {
    /// Opens the bucket, creating it if it does not exist. Blocking.
    pub fn open(nats: &Nats, config: SnapshotConfig) -> Result<SnapshotBucket> {
        let js = nats.jetstream().clone();
        let cfg = config.clone();
        let objects = nats.block_on(async move {
            match js.get_object_store(&cfg.bucket).await {
                Ok(store) => Ok(store),
                Err(_) => js
                    .create_object_store(object_store::Config {
                        bucket: cfg.bucket.clone(),
                        description: Some("chatstore shard snapshots".into()),
                        storage: StorageType::File,
                        num_replicas: cfg.replicas.max(1),
                        ..Default::default()
                    })
                    .await
                    .map_err(nats_err("create the snapshot bucket")),
            }
        })??;
        Ok(SnapshotBucket {
            nats: nats.clone(),
            objects,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    /// Checkpoints `store` (writers keep going) and uploads it as shard `shard`'s snapshot,
    /// replacing the previous one. `scratch` is a directory for the checkpoint and its archive
    /// (on the store's file system, so the checkpoint can hard-link segments); both are
    /// removed afterwards. Blocking.
    pub fn upload(&self, shard: u32, store: &Store, scratch: &Path) -> Result<Snapshot> {
        let work = Scratch::new(scratch, shard)?;
        let lsn = store.checkpoint(work.checkpoint())?;
        let archive = work.archive();
        pack(&work.checkpoint(), &archive)?;
        let bytes = std::fs::metadata(&archive)
            .map_err(io_err("size the snapshot archive", &archive))?
            .len();
        let objects = self.objects.clone();
        let name = snapshot_name(shard);
        self.nats.block_on(async move {
            let mut file = tokio::fs::File::open(&archive)
                .await
                .map_err(io_err("open the snapshot archive", &archive))?;
            let meta = ObjectMetadata {
                name,
                description: Some(format!("chatstore shard {shard} at LSN {lsn}")),
                metadata: [(LSN_METADATA.to_string(), lsn.to_string())].into(),
                ..Default::default()
            };
            objects
                .put(meta, &mut file)
                .await
                .map_err(nats_err("upload the snapshot"))?;
            Ok::<_, Error>(())
        })??;
        Ok(Snapshot { shard, lsn, bytes })
    }

    /// The latest snapshot of `shard`, if any. Blocking.
    pub fn latest(&self, shard: u32) -> Result<Option<Snapshot>> {
        let objects = self.objects.clone();
        let name = snapshot_name(shard);
        let info = self.nats.block_on(async move {
            match objects.info(&name).await {
                Ok(info) => Ok(Some(info)),
                Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(None),
                Err(e) => Err(nats_err("read the snapshot's info")(e)),
            }
        })??;
        let Some(info) = info.filter(|i| !i.deleted) else {
            return Ok(None);
        };
        let lsn = info
            .metadata
            .get(LSN_METADATA)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                Error::Inconsistent(format!(
                    "snapshot {} in bucket {} has no {LSN_METADATA} metadata",
                    info.name, self.config.bucket
                ))
            })?;
        Ok(Some(Snapshot {
            shard,
            lsn,
            bytes: info.size as u64,
        }))
    }

    /// Downloads `shard`'s latest snapshot into the new directory `dest` (an openable store
    /// at the snapshot's LSN, made durable: files and directories fsynced). `None` if the
    /// shard has no snapshot. `dest` must not exist; `scratch` holds the download meanwhile.
    /// Blocking.
    pub fn restore(&self, shard: u32, dest: &Path, scratch: &Path) -> Result<Option<Snapshot>> {
        if dest.exists() {
            return Err(Error::Usage(format!(
                "restore into {}: it already exists",
                dest.display()
            )));
        }
        let Some(snapshot) = self.latest(shard)? else {
            return Ok(None);
        };
        let work = Scratch::new(scratch, shard)?;
        let archive = work.archive();
        let objects = self.objects.clone();
        let name = snapshot_name(shard);
        let download = archive.clone();
        self.nats.block_on(async move {
            let mut object = objects
                .get(&name)
                .await
                .map_err(nats_err("open the snapshot"))?;
            let mut file = tokio::fs::File::create(&download)
                .await
                .map_err(io_err("create the download", &download))?;
            // The object checks its SHA-256 digest when the copy reaches its end.
            tokio::io::copy(&mut object, &mut file)
                .await
                .map_err(io_err("download the snapshot", &download))?;
            file.flush()
                .await
                .map_err(io_err("write the download", &download))?;
            Ok::<_, Error>(())
        })??;
        // Unpack beside `dest` and rename, so `dest` is either absent or complete.
        let staging = work.checkpoint();
        unpack(&archive, &staging)?;
        sync_tree(&staging)?;
        std::fs::rename(&staging, dest).map_err(io_err("move the restored store", dest))?;
        if let Some(parent) = dest.parent() {
            sync_dir(parent)?;
        }
        Ok(Some(snapshot))
    }
}

/// Uploads a snapshot of `store` (shard `stream.shard()`) and then purges the shard's stream
/// below the snapshot's LSN. Returns the snapshot and how many records the purge removed.
/// Blocking.
pub fn checkpoint_and_purge(
    bucket: &SnapshotBucket,
    stream: &ShardStream,
    store: &Store,
    scratch: &Path,
) -> Result<(Snapshot, u64)> {
    let snapshot = bucket.upload(stream.shard(), store, scratch)?;
    // The stream keeps the record at the snapshot's LSN (and the last one): a store restored
    // from the snapshot needs `lsn + 1` on, which the purge keeps.
    let purged = stream.purge_below(snapshot.lsn)?;
    Ok((snapshot, purged))
}

/// A private working directory under the caller's scratch directory, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(scratch: &Path, shard: u32) -> Result<Scratch> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(scratch)
            .map_err(io_err("create the scratch directory", scratch))?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = scratch.join(format!(
            "snapshot-{shard}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // `create_dir`, not `create_dir_all`: it fails rather than share a directory.
        std::fs::create_dir(&dir).map_err(io_err("create a scratch directory", &dir))?;
        Ok(Scratch { dir })
    }

    /// Where the checkpoint (or the unpacked snapshot) goes; it does not exist yet.
    fn checkpoint(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn archive(&self) -> PathBuf {
        self.dir.join("snapshot.tar")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Best effort: scratch space only.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the files of the directory `dir` (flat: a store directory has no subdirectories)
/// into a tar archive at `archive`.
fn pack(dir: &Path, archive: &Path) -> Result<()> {
    let file = std::fs::File::create(archive).map_err(io_err("create the archive", archive))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io_err("list the checkpoint", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io_err("list the checkpoint", dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(Error::Inconsistent(format!(
                "checkpoint {} holds {}, which is not a file",
                dir.display(),
                path.display()
            )));
        }
        tar.append_path_with_name(&path, &name)
            .map_err(io_err("archive a checkpoint file", &path))?;
    }
    let out = tar
        .into_inner()
        .map_err(io_err("finish the archive", archive))?;
    out.into_inner()
        .map_err(|e| io_err("flush the archive", archive)(e.into_error()))?
        .sync_all()
        .map_err(io_err("sync the archive", archive))
}

/// Unpacks `archive` into the directory `dir` (created). Entries other than plain files
/// with plain names are refused: a snapshot never holds them, and a path like `../x` must
/// never land outside `dir`.
fn unpack(archive: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_err("create the restore directory", dir))?;
    let file = std::fs::File::open(archive).map_err(io_err("open the download", archive))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let entries = tar
        .entries()
        .map_err(io_err("read the snapshot", archive))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err("read the snapshot", archive))?;
        let path = entry
            .path()
            .map_err(io_err("read a snapshot entry's name", archive))?
            .into_owned();
        let plain = path.components().count() == 1
            && matches!(
                path.components().next(),
                Some(std::path::Component::Normal(_))
            );
        if !plain || entry.header().entry_type() != tar::EntryType::Regular {
            return Err(Error::Inconsistent(format!(
                "snapshot {} holds {}, which is not a plain file",
                archive.display(),
                path.display()
            )));
        }
        let target = dir.join(&path);
        entry
            .unpack(&target)
            .map_err(io_err("unpack a snapshot file", &target))?;
    }
    Ok(())
}

/// Fsyncs every file in `dir`, then `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err("list the restored store", dir))? {
        let path = entry
            .map_err(io_err("list the restored store", dir))?
            .path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync a restored file", &path))?;
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync a directory", dir))
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::Io(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chatstore-snapshot-test-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn pack_and_unpack_round_trip_the_files_of_a_directory() {
        let root = scratch();
        let src = root.join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("MANIFEST"), b"manifest bytes").unwrap();
        std::fs::write(src.join("000007.seg"), vec![7u8; 70_000]).unwrap();
        pack(&src, &root.join("a.tar")).unwrap();
        unpack(&root.join("a.tar"), &root.join("dst")).unwrap();
        assert_eq!(
            std::fs::read(root.join("dst/MANIFEST")).unwrap(),
            b"manifest bytes"
        );
        assert_eq!(
            std::fs::read(root.join("dst/000007.seg")).unwrap(),
            vec![7u8; 70_000]
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_archive_entry_outside_the_directory_is_refused() {
        let root = scratch();
        for name in ["../escape", "sub/file", "/abs"] {
            let mut header = tar::Header::new_old();
            // Written by hand: the builder itself refuses such names.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_size(3);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            let mut tar = tar::Builder::new(Vec::new());
            tar.append(&header, &b"abc"[..]).unwrap();
            let archive = root.join("bad.tar");
            std::fs::write(&archive, tar.into_inner().unwrap()).unwrap();
            let dest = root.join("dst");
            let err = unpack(&archive, &dest).unwrap_err();
            assert!(
                err.to_string().contains("not a plain file"),
                "{name}: {err}"
            );
            assert!(!root.join("escape").exists());
            let _ = std::fs::remove_dir_all(&dest);
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
