//! The catalog: which disks the store knows and which snapshots each has.
//! Only accomplished snapshots are ever written here; a snapshot being taken
//! lives in memory until its single commit.
//!
//! sled trees (values are JSON, so the catalog stays readable and
//! exportable whatever sled's own format does):
//! - `disks`: disk name -> `DiskRecord`
//! - `snapshots`: disk name, 0x00, id (u64 BE) -> `SnapshotRecord`

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::transaction::TransactionError;
use sled::Transactional;

use super::map::{height_for, MapRoot};
use super::names::{check_disk_name, check_snapshot_name};
use crate::error::{Error, Result};
use crate::store::{Store, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DiskRecord {
    pub name: String,
    pub source: PathBuf,
    /// Unix time in milliseconds.
    pub added_ms: i64,
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
}

impl SnapshotRecord {
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

pub(crate) fn snapshot_key(disk: &str, id: u64) -> Vec<u8> {
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

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))
}

impl Store {
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
        check_disk_name(name)?;
        let source = super::source::check_source(source)?;
        let _guard = self.catalog_lock.lock().unwrap_or_else(|e| e.into_inner());
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
        };
        self.disks.insert(name, encode(&record)?)?;
        self.flush()?;
        Ok(record)
    }

    /// Unregisters a disk; with `with_snapshots` its snapshots go too (their
    /// space comes back at the next gc).
    pub fn remove_disk(&self, name: &str, with_snapshots: bool) -> Result<()> {
        let _guard = self.catalog_lock.lock().unwrap_or_else(|e| e.into_inner());
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
        self.flush()
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
    pub(crate) fn check_name_free(&self, disk: &str, name: &str) -> Result<()> {
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
        let _guard = self.catalog_lock.lock().unwrap_or_else(|e| e.into_inner());
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
        self.flush()?;
        Ok(record)
    }

    pub fn rename_snapshot(&self, disk: &str, old: &str, new: &str) -> Result<SnapshotRecord> {
        // A person renames; the `auto` prefix stays reserved for policies.
        check_snapshot_name(new)?;
        let _guard = self.catalog_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.snapshot(disk, old)?;
        if old == new {
            return Ok(record);
        }
        self.check_name_free(disk, new)?;
        record.name = new.to_string();
        self.snapshots
            .insert(snapshot_key(disk, record.id), encode(&record)?)?;
        self.flush()?;
        Ok(record)
    }

    /// Sets or clears the protected flag of a snapshot.
    pub fn protect_snapshot(&self, disk: &str, name: &str, protect: bool) -> Result<()> {
        let _guard = self.catalog_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self.snapshot(disk, name)?;
        record.protected = protect;
        self.snapshots
            .insert(snapshot_key(disk, record.id), encode(&record)?)?;
        self.flush()
    }
}
