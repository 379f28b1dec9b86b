//! Applying retention: delete the automatic snapshots a disk's policy no
//! longer keeps. Manual and protected snapshots are never touched.

use chrono::Local;

use super::retention::{to_delete, Candidate};
use crate::catalog::names::AUTO_PREFIX;
use crate::catalog::Catalog;
use crate::catalog::SnapshotRecord;
use crate::error::Result;

/// What a prune removed (or, dry, would remove).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Pruned {
    pub disk: String,
    pub snapshots: Vec<String>,
    /// Bytes those snapshots had added to the store: an estimate of what
    /// gc may reclaim.
    pub added_bytes: u64,
}

/// The automatic snapshots of `disk` its policy does not keep, oldest first.
pub fn prune_candidates(catalog: &Catalog, disk: &str) -> Result<Vec<SnapshotRecord>> {
    let Some(policy) = catalog.policy(disk)? else {
        return Ok(Vec::new());
    };
    let automatic: Vec<SnapshotRecord> = catalog
        .snapshots(Some(disk))?
        .into_iter()
        .filter(|s| s.name.starts_with(AUTO_PREFIX))
        .collect();
    let candidates: Vec<Candidate> = automatic
        .iter()
        .map(|s| Candidate {
            name: s.name.clone(),
            created_ms: s.created_ms,
            protected: s.protected,
        })
        .collect();
    let names = to_delete(&policy, &candidates, &Local::now());
    Ok(names
        .iter()
        .filter_map(|name| automatic.iter().find(|s| &s.name == name).cloned())
        .collect())
}

/// Applies the policy of `disk`; with `dry_run` only says what would go.
pub fn prune(catalog: &Catalog, disk: &str, dry_run: bool) -> Result<Pruned> {
    let mut pruned = Pruned {
        disk: disk.to_string(),
        ..Pruned::default()
    };
    for record in prune_candidates(catalog, disk)? {
        if !dry_run {
            match catalog.remove_snapshot(disk, &record.name) {
                Ok(_) => {}
                // Protected or renamed meanwhile: not ours to delete now.
                Err(e) => {
                    log::info!("prune keeps {} of disk {disk}: {e}", record.name);
                    continue;
                }
            }
        }
        pruned.added_bytes += record.added_bytes;
        pruned.snapshots.push(record.name);
    }
    Ok(pruned)
}
