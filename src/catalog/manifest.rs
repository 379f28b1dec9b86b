//! Snapshot manifests: for a store whose packs are in a bucket, every
//! accomplished snapshot also gets a small object there (the snapshot's
//! record and its disk's), so that the bucket alone rebuilds the catalog
//! (`init --from`). The local catalog stays the truth: a manifest is
//! written after the commit and removed with the snapshot; a write that
//! failed is made again, and a removal that failed (kept in the
//! `manifest_removals` tree) is tried again, by [`Catalog::sync_manifests`]
//! at the next commit or open. A sync never removes a manifest it was not
//! told to: one that only the bucket knows may be a snapshot `init --from`
//! could not import, which a person should see. Layout: FORMAT.md,
//! "Snapshot manifest object".

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{decode, encode, Catalog, DiskRecord, SnapshotRecord};
use crate::error::{Error, Result};

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    pub disk: DiskRecord,
    pub snapshot: SnapshotRecord,
}

pub fn decode_manifest(bytes: &[u8]) -> Result<Manifest> {
    let manifest: Manifest = decode("manifest", bytes)?;
    if manifest.version != MANIFEST_VERSION {
        return Err(Error::BadMetadata(format!(
            "manifest version {} (this snapfs reads {MANIFEST_VERSION})",
            manifest.version
        )));
    }
    manifest.snapshot.check()?;
    Ok(manifest)
}

impl Catalog {
    /// Writes the manifest of a snapshot just committed. A failure is
    /// logged, not returned (the snapshot is committed); the next open or
    /// commit writes it.
    pub(super) fn publish(&self, record: &SnapshotRecord) {
        let Some(storage) = &self.remote else {
            return;
        };
        let Some(sidecar) = storage.sidecar() else {
            return;
        };
        let written = self.disk(&record.disk).and_then(|disk| {
            let manifest = Manifest {
                version: MANIFEST_VERSION,
                disk,
                snapshot: record.clone(),
            };
            sidecar.put_manifest(record.id, encode(&manifest)?)
        });
        if let Err(e) = written {
            log::warn!(
                "snapshot {} of disk {} is committed, but its manifest is not in the bucket yet \
                 (retried at the next commit or open): {e}",
                record.name,
                record.disk
            );
            self.manifests_behind.store(true, Ordering::SeqCst);
        }
    }

    /// Removes the manifest of a snapshot gone from the catalog (logged
    /// on failure, like `publish`).
    pub(super) fn unpublish(&self, id: u64) {
        let Some(sidecar) = self.remote.as_ref().and_then(|s| s.sidecar()) else {
            return;
        };
        if let Err(e) = sidecar.remove_manifest(id) {
            log::warn!(
                "cannot remove manifest {} (retried at the next open): {e}",
                sidecar.manifest_name(id)
            );
            // Kept for sync_manifests, which removes what is listed here.
            if let Err(e) = self.manifest_removals.insert(id.to_be_bytes(), &[]) {
                log::warn!("cannot note the removal of manifest {id:016x}: {e}");
            }
            self.manifests_behind.store(true, Ordering::SeqCst);
        }
    }

    /// A changed record (renamed, protected): its manifest again.
    pub(super) fn republish(&self, record: &SnapshotRecord) {
        self.unpublish(record.id);
        self.publish(record);
    }

    /// Puts right what failed earlier: removes the manifests whose
    /// removal failed, writes those of snapshots that have none.
    pub fn sync_manifests(&self) -> Result<()> {
        let Some(sidecar) = self.remote.as_ref().and_then(|s| s.sidecar()) else {
            return Ok(());
        };
        self.manifests_behind.store(false, Ordering::SeqCst);
        let records = self.snapshots(None)?;
        // A snapshot still in the catalog (its manifest's removal failed
        // on the way to a changed one: renamed, protected) gets its
        // manifest written afresh below, as it is then missing.
        for item in self.manifest_removals.iter() {
            let (key, _) = item?;
            let Ok(id) = <[u8; 8]>::try_from(key.as_ref()).map(u64::from_be_bytes) else {
                continue;
            };
            sidecar.remove_manifest(id)?;
            self.manifest_removals.remove(key)?;
        }
        self.manifest_removals.flush()?;
        let there: HashSet<u64> = sidecar.manifests()?.into_iter().collect();
        for record in records.iter().filter(|r| !there.contains(&r.id)) {
            self.publish(record);
        }
        Ok(())
    }

    /// Runs `sync_manifests` if a publish failed since the last one.
    pub(super) fn catch_up_manifests(&self) {
        if self.manifests_behind.load(Ordering::SeqCst) {
            if let Err(e) = self.sync_manifests() {
                log::warn!("manifests still behind the catalog: {e}");
                self.manifests_behind.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Adds a snapshot read from a manifest, and its disk if new
    /// (`init --from`; the store is not open to anyone else yet).
    pub fn import_snapshot(&self, manifest: &Manifest) -> Result<()> {
        let disk = &manifest.disk;
        if self.disks.get(disk.name.as_bytes())?.is_none() {
            self.disks.insert(disk.name.as_bytes(), encode(disk)?)?;
        }
        let record = &manifest.snapshot;
        self.snapshots.insert(
            super::snapshot_key(&record.disk, record.id),
            encode(record)?,
        )?;
        self.changed()
    }
}
