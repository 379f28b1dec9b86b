//! The catalog: which disks the store knows, which snapshots each has, and
//! the disks' policies. It is the only writer of its sled trees; a snapshot
//! being taken lives in memory until [`Catalog::commit_snapshot`] writes its
//! record in the same transaction as the chunks it reaches.
//!
//! sled trees (values are JSON, so the catalog stays readable and
//! exportable whatever sled's own format does):
//! - `disks`: disk name -> `DiskRecord`
//! - `snapshots`: disk name, 0x00, id (u64 BE) -> `SnapshotRecord`
//! - `policies`: disk name -> `Policy` (see policies.rs)

pub mod manifest;
pub mod names;
mod policies;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionError;
use sled::Transactional;

use crate::error::{Error, Result};
use crate::hash::ChunkHash;
use crate::map::{height_for, MapRoot};
use crate::store::backend::PackStorage;
use crate::store::{ingest_abort, Ingest, Store, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use names::{check_disk_name, check_snapshot_name};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DiskRecord {
    pub name: String,
    pub source: PathBuf,
    /// Unix time in milliseconds.
    pub added_ms: i64,
    /// Served read-write as `MNT/DISK/live`, with its changes recorded.
    #[serde(default)]
    pub live: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: u64,
    pub disk: String,
    pub name: String,
    /// Unix time in milliseconds when the snapshot started.
    pub created_ms: i64,
    /// The disk's size in bytes at snapshot time.
    pub size: u64,
    pub chunk_size: u32,
    pub map: MapRoot,
    /// Bytes of chunks that are not all zero.
    pub nonzero_bytes: u64,
    /// Bytes this snapshot appended to the store (new chunks and pages).
    pub added_bytes: u64,
    pub source: PathBuf,
    #[serde(default)]
    pub protected: bool,
    /// How the point in time was made (None: before snapfs recorded it).
    #[serde(default)]
    pub method: Option<CaptureMethod>,
}

/// How a snapshot's point in time was made.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMethod {
    /// Read from a reflink clone of the source file.
    Reflink,
    /// Read while pre- and post-hooks held the guest still, and checked.
    Hook,
    /// Read, and checked before and after not to have changed meanwhile.
    Checked,
    /// Frozen in a live disk's write path.
    Freeze,
}

impl std::fmt::Display for CaptureMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaptureMethod::Reflink => "reflink",
            CaptureMethod::Hook => "hook",
            CaptureMethod::Checked => "checked",
            CaptureMethod::Freeze => "freeze",
        })
    }
}

impl SnapshotRecord {
    /// Bytes of chunk `chunk` of the image (the last one may be short).
    pub fn chunk_len(&self, chunk: u64) -> u64 {
        let chunk_size = self.chunk_size as u64;
        self.size.saturating_sub(chunk * chunk_size).min(chunk_size)
    }

    /// Fails unless `len`, the length of the bytes stored as chunk `chunk`
    /// (hash `hash`), is what the image needs there: a record and a chunk
    /// that disagree are damage, never a short or padded read.
    pub fn check_chunk_len(&self, chunk: u64, hash: &ChunkHash, len: usize) -> Result<()> {
        let needed = self.chunk_len(chunk);
        if len as u64 == needed {
            return Ok(());
        }
        Err(Error::BadMetadata(format!(
            "chunk {hash} at offset {} holds {len} bytes, the image needs {needed}",
            chunk * self.chunk_size as u64
        )))
    }

    /// Checks that sizes and map shape agree, so that no reader divides by
    /// a zero chunk size or looks past what the map holds.
    fn check(&self) -> Result<()> {
        let chunk_size = self.chunk_size;
        let why = if !chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        {
            format!("chunk size {chunk_size}")
        } else if self.map.chunks != self.size.div_ceil(chunk_size as u64) {
            format!(
                "{} chunks for a size of {} bytes",
                self.map.chunks, self.size
            )
        } else if self.map.height != height_for(self.map.chunks) {
            format!(
                "map height {} for {} chunks",
                self.map.height, self.map.chunks
            )
        } else {
            return Ok(());
        };
        Err(Error::BadMetadata(format!(
            "snapshot record {} of disk {}: {why}",
            self.name, self.disk
        )))
    }
}

fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotRecord> {
    let record: SnapshotRecord = decode("snapshot", bytes)?;
    record.check()?;
    Ok(record)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn snapshot_key(disk: &str, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(disk.len() + 9);
    key.extend_from_slice(disk.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn disk_prefix(disk: &str) -> Vec<u8> {
    let mut key = disk.as_bytes().to_vec();
    key.push(0);
    key
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadMetadata(format!("{what} record: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))
}

/// The catalog's trees, in the store's database.
pub struct Catalog {
    disks: sled::Tree,
    snapshots: sled::Tree,
    policies: sled::Tree,
    /// Serialises changes that check a name and then write it.
    names: Mutex<()>,
    /// Bumped by every change, so readers can cache listings.
    generation: AtomicU64,
    /// The pack storage when it keeps manifests beside the packs.
    remote: Option<Arc<dyn PackStorage>>,
    /// A manifest write or removal failed since the last sync.
    manifests_behind: AtomicBool,
    /// Snapshot ids whose manifest removal failed (see manifest.rs).
    manifest_removals: sled::Tree,
}

impl Catalog {
    pub fn open(store: &Store) -> Result<Catalog> {
        Ok(Catalog {
            disks: store.open_tree("disks")?,
            snapshots: store.open_tree("snapshots")?,
            policies: store.open_tree("policies")?,
            names: Mutex::new(()),
            generation: AtomicU64::new(0),
            remote: Some(store.storage_arc()).filter(|s| s.sidecar().is_some()),
            manifests_behind: AtomicBool::new(false),
            manifest_removals: store.open_tree("manifest_removals")?,
        })
    }

    /// Changes whenever the catalog may have changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn name_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every change ends here: durable (a tree's flush is the whole
    /// database's), and a new generation.
    fn changed(&self) -> Result<()> {
        self.disks.flush()?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    pub fn disks(&self) -> Result<Vec<DiskRecord>> {
        self.disks
            .iter()
            .map(|item| decode("disk", &item?.1))
            .collect()
    }

    pub fn disk(&self, name: &str) -> Result<DiskRecord> {
        match self.disks.get(name)? {
            Some(bytes) => decode("disk", &bytes),
            None => Err(Error::DiskNotFound(name.to_string())),
        }
    }

    /// Registers a disk. The source must be a readable image file or block
    /// device; it is recorded as an absolute path.
    pub fn add_disk(&self, name: &str, source: &Path) -> Result<DiskRecord> {
        self.add_disk_as(name, source, false)
    }

    /// `add_disk`; a `live` disk's source must also open for writing.
    pub fn add_disk_as(&self, name: &str, source: &Path, live: bool) -> Result<DiskRecord> {
        check_disk_name(name)?;
        let source = crate::snapshot::source::check_source(source)?;
        if live {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&source)
                .map_err(|e| {
                    Error::Invalid(format!(
                        "live disk {name}: cannot open {} for writing: {e}",
                        source.display()
                    ))
                })?;
        }
        let _names = self.name_lock();
        if self.disks.contains_key(name)? {
            return Err(Error::DiskExists(name.to_string()));
        }
        for other in self.disks()? {
            let clash = other.name.starts_with(&format!("{name}/"))
                || name.starts_with(&format!("{}/", other.name));
            if clash {
                return Err(Error::Invalid(format!(
                    "disk name {name} clashes with disk {}: a name cannot be both a disk and a group",
                    other.name
                )));
            }
        }
        let record = DiskRecord {
            name: name.to_string(),
            source,
            added_ms: now_ms(),
            live,
        };
        self.disks.insert(name, encode(&record)?)?;
        self.changed()?;
        Ok(record)
    }

    /// Unregisters a disk; with `with_snapshots` its snapshots go too (their
    /// space comes back at the next gc).
    pub fn remove_disk(&self, name: &str, with_snapshots: bool) -> Result<()> {
        let _names = self.name_lock();
        self.disk(name)?;
        let snapshots = self.snapshots_of(name)?;
        if !snapshots.is_empty() && !with_snapshots {
            return Err(Error::DiskHasSnapshots {
                disk: name.to_string(),
                count: snapshots.len(),
            });
        }
        if let Some(protected) = snapshots.iter().find(|s| s.protected) {
            return Err(Error::Protected {
                disk: name.to_string(),
                name: protected.name.clone(),
            });
        }
        // The disk and its snapshots go in one transaction.
        let result: std::result::Result<(), TransactionError<()>> = (&self.snapshots, &self.disks)
            .transaction(|(snapshot_tree, disk_tree)| {
                for snapshot in &snapshots {
                    snapshot_tree.remove(snapshot_key(name, snapshot.id))?;
                }
                disk_tree.remove(name)?;
                Ok(())
            });
        if let Err(TransactionError::Storage(e)) = result {
            return Err(Error::Db(e));
        }
        self.policies.remove(name)?;
        self.changed()?;
        for snapshot in &snapshots {
            self.unpublish(snapshot.id);
        }
        Ok(())
    }

    /// Every accomplished snapshot, or those of one disk, oldest first per disk.
    pub fn snapshots(&self, disk: Option<&str>) -> Result<Vec<SnapshotRecord>> {
        match disk {
            Some(disk) => {
                self.disk(disk)?;
                self.snapshots_of(disk)
            }
            None => self
                .snapshots
                .iter()
                .map(|item| decode_snapshot(&item?.1))
                .collect(),
        }
    }

    fn snapshots_of(&self, disk: &str) -> Result<Vec<SnapshotRecord>> {
        self.snapshots
            .scan_prefix(disk_prefix(disk))
            .map(|item| decode_snapshot(&item?.1))
            .collect()
    }

    pub fn snapshot(&self, disk: &str, name: &str) -> Result<SnapshotRecord> {
        self.snapshots_of(disk)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                if self.disk(disk).is_err() {
                    Error::DiskNotFound(disk.to_string())
                } else {
                    Error::SnapshotNotFound {
                        disk: disk.to_string(),
                        name: name.to_string(),
                    }
                }
            })
    }

    /// Fails with `SnapshotExists` when the disk has a snapshot of that name.
    pub fn check_name_free(&self, disk: &str, name: &str) -> Result<()> {
        if self.snapshots_of(disk)?.iter().any(|s| s.name == name) {
            return Err(Error::SnapshotExists {
                disk: disk.to_string(),
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// The record of `disk`/`name` as stored, without the consistency check.
    fn unchecked_snapshot(&self, disk: &str, name: &str) -> Option<SnapshotRecord> {
        self.snapshots
            .scan_prefix(disk_prefix(disk))
            .filter_map(|item| decode::<SnapshotRecord>("snapshot", &item.ok()?.1).ok())
            .find(|s| s.name == name)
    }

    /// Drops a snapshot from the catalog. Its chunks stay until gc.
    pub fn remove_snapshot(&self, disk: &str, name: &str) -> Result<SnapshotRecord> {
        let _names = self.name_lock();
        let record = match self.snapshot(disk, name) {
            // A record too damaged to read an image from can still go.
            Err(e @ Error::BadMetadata(_)) => self.unchecked_snapshot(disk, name).ok_or(e)?,
            other => other?,
        };
        if record.protected {
            return Err(Error::Protected {
                disk: disk.to_string(),
                name: name.to_string(),
            });
        }
        self.snapshots.remove(snapshot_key(disk, record.id))?;
        self.changed()?;
        self.unpublish(record.id);
        Ok(record)
    }

    pub fn rename_snapshot(&self, disk: &str, old: &str, new: &str) -> Result<SnapshotRecord> {
        // A person renames; the `auto` prefix stays reserved for policies.
        check_snapshot_name(new)?;
        let _names = self.name_lock();
        let mut record = self.snapshot(disk, old)?;
        if old == new {
            return Ok(record);
        }
        self.check_name_free(disk, new)?;
        record.name = new.to_string();
        self.snapshots
            .insert(snapshot_key(disk, record.id), encode(&record)?)?;
        self.changed()?;
        self.republish(&record);
        Ok(record)
    }

    /// Sets or clears the protected flag of a snapshot.
    pub fn protect_snapshot(&self, disk: &str, name: &str, protect: bool) -> Result<()> {
        let _names = self.name_lock();
        let mut record = self.snapshot(disk, name)?;
        record.protected = protect;
        self.snapshots
            .insert(snapshot_key(disk, record.id), encode(&record)?)?;
        self.changed()?;
        self.republish(&record);
        Ok(())
    }

    /// Commits a snapshot taken by `ingest`: its chunks and its record in
    /// one transaction, under the name lock, so that the name is still
    /// free and the disk still there when it lands. `record.id` is set here.
    pub fn commit_snapshot(
        &self,
        ingest: Ingest,
        mut record: SnapshotRecord,
    ) -> Result<SnapshotRecord> {
        record.id = ingest.store().generate_id()?;
        let value = encode(&record)?;
        let key = snapshot_key(&record.disk, record.id);
        let disk = record.disk.as_str();
        let _names = self.name_lock();
        self.check_name_free(disk, &record.name)?;
        ingest.commit(&[&self.disks, &self.snapshots], &|trees| {
            let [disks, snapshots] = trees.extra else {
                return ingest_abort(Error::Invalid("commit without the catalog's trees".into()));
            };
            if disks.get(disk.as_bytes())?.is_none() {
                return ingest_abort(Error::DiskNotFound(disk.to_string()));
            }
            snapshots.insert(key.as_slice(), value.as_slice())?;
            Ok(())
        })?;
        self.generation.fetch_add(1, Ordering::SeqCst);
        // Its own manifest first: a catch-up first would write it, and
        // this publish would then fail on the manifest already there.
        self.publish(&record);
        self.catch_up_manifests();
        Ok(record)
    }
}
