//! The catalog as the mount last read it, rebuilt when the catalog's
//! generation changes, so listings of many snapshots stay instant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::FsResult;
use crate::catalog::{DiskRecord, SnapshotRecord};
use crate::repository::Repository;

/// One generation's disks and snapshots (by disk).
#[derive(Default)]
pub struct CatalogView {
    generation: Option<u64>,
    pub disks: Vec<DiskRecord>,
    pub snapshots: HashMap<String, Vec<SnapshotRecord>>,
}

impl CatalogView {
    pub fn find_snapshot(
        &self,
        disk: &str,
        pick: impl Fn(&SnapshotRecord) -> bool,
    ) -> Option<SnapshotRecord> {
        self.snapshots
            .get(disk)
            .and_then(|list| list.iter().find(|s| pick(s)).cloned())
    }
}

#[derive(Default)]
pub struct CatalogCache {
    view: Mutex<Arc<CatalogView>>,
}

impl CatalogCache {
    /// The current view, read again if the catalog changed since.
    pub fn get(&self, repo: &Repository) -> FsResult<Arc<CatalogView>> {
        let mut cached = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let generation = repo.catalog().generation();
        if cached.generation != Some(generation) {
            let mut snapshots: HashMap<String, Vec<SnapshotRecord>> = HashMap::new();
            for record in repo.catalog().snapshots(None)? {
                snapshots
                    .entry(record.disk.clone())
                    .or_default()
                    .push(record);
            }
            *cached = Arc::new(CatalogView {
                generation: Some(generation),
                disks: repo.catalog().disks()?,
                snapshots,
            });
        }
        Ok(cached.clone())
    }
}
