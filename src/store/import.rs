//! Rebuilding the store's own trees (`index`, `packs`) from a bucket's
//! pack index objects (`init --from`), before anything is written. A pack
//! is imported only when its index object decodes and the pack's object
//! has the length the index says; anything else is reported and left out.

use std::collections::{HashMap, HashSet};

use super::{pack_index, Store};
use crate::error::{Error, Result};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportReport {
    pub packs: u64,
    pub chunks: u64,
    /// Packs in the bucket with no index object (a crash between the two
    /// uploads): not imported, gc removes them after its grace period.
    pub unindexed_packs: u64,
    /// What was not imported, and why (one line each).
    pub skipped: Vec<String>,
    /// The largest pack id in the bucket.
    pub max_pack_id: u64,
}

/// Imports every pack of the bucket that its index object describes.
pub fn import_packs(store: &Store) -> Result<ImportReport> {
    let sidecar = store
        .sidecar()
        .ok_or_else(|| Error::Invalid("the store keeps no objects beside its packs".into()))?;
    let lengths: HashMap<u64, u64> = store
        .storage()
        .list()?
        .into_iter()
        .map(|pack| (pack.id, pack.len))
        .collect();
    let mut report = ImportReport {
        max_pack_id: lengths.keys().copied().max().unwrap_or(0),
        ..ImportReport::default()
    };
    let indexes = sidecar.pack_indexes()?;
    let indexed: HashSet<u64> = indexes.iter().map(|index| index.id).collect();
    report.unindexed_packs = lengths.keys().filter(|id| !indexed.contains(id)).count() as u64;
    for listed in indexes {
        let id = listed.id;
        let name = store.pack_name(id);
        let Some(&len) = lengths.get(&id) else {
            report.skipped.push(format!(
                "pack {name}: its index object is there, the pack is not"
            ));
            continue;
        };
        // A read that fails fails the import: a committed pack left out
        // here would be an orphan to the next gc, which removes it.
        let bytes = sidecar.pack_index(id)?;
        let index = match pack_index::decode(&bytes) {
            Ok(index) if index.pack == id => index,
            Ok(index) => {
                report.skipped.push(format!(
                    "pack {name}: its index object names pack {:016x}",
                    index.pack
                ));
                continue;
            }
            Err(e) => {
                report.skipped.push(format!("pack {name}: {e}"));
                continue;
            }
        };
        if index.len != len {
            report.skipped.push(format!(
                "pack {name}: the object holds {len} bytes, its index says {}",
                index.len
            ));
            continue;
        }
        let mut entries = sled::Batch::default();
        for (hash, location) in &index.records {
            entries.insert(&hash.0, &location.encode());
        }
        store.index.apply_batch(entries)?;
        store.packs.insert(id.to_be_bytes(), &len.to_le_bytes())?;
        report.packs += 1;
        report.chunks += index.records.len() as u64;
    }
    store.flush()?;
    Ok(report)
}
