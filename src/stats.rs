//! `stats`: how much the store holds and how well it deduplicates.

use std::fs;

use crate::error::Result;
use crate::repository::Repository;
use crate::store::pack::Location;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    pub disks: usize,
    pub snapshots: usize,
    /// Sum of the snapshots' image sizes.
    pub logical_bytes: u64,
    /// Sum of the snapshots' non-zero chunk bytes.
    pub nonzero_bytes: u64,
    /// Plain bytes of all distinct chunks and map pages in the index.
    pub unique_bytes: u64,
    /// Bytes the index's chunk records take in packs (compressed, headers).
    pub record_bytes: u64,
    /// Bytes of all packs.
    pub stored_bytes: u64,
    /// Bytes of the sled database on disk.
    pub db_bytes: u64,
    pub chunks: u64,
    pub packs: u64,
    /// nonzero_bytes / unique_bytes.
    pub dedup_ratio: f64,
    /// unique_bytes / record_bytes.
    pub compression_ratio: f64,
    /// Where the packs are: the store's folder, or an `s3://` URL.
    pub packs_location: String,
    /// A store in a bucket: its local cache of pack data.
    pub pack_cache: Option<PackCacheStats>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PackCacheStats {
    pub dir: std::path::PathBuf,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

pub fn stats(repo: &Repository) -> Result<Stats> {
    let store = repo.store();
    let mut stats = Stats {
        disks: repo.catalog().disks()?.len(),
        ..Stats::default()
    };
    for snapshot in repo.catalog().snapshots(None)? {
        stats.snapshots += 1;
        stats.logical_bytes += snapshot.size;
        stats.nonzero_bytes += snapshot.nonzero_bytes;
    }
    for item in store.index.iter() {
        let (_, value) = item?;
        let location = Location::decode(&value)?;
        stats.chunks += 1;
        stats.unique_bytes += location.raw_len as u64;
        stats.record_bytes += location.record_len();
    }
    for pack in store.stored_packs()? {
        stats.packs += 1;
        stats.stored_bytes += pack.len;
    }
    stats.db_bytes = dir_size(&store.root().join("db"));
    stats.packs_location = store.packs_location();
    stats.pack_cache = store
        .pack_cache_usage()
        .map(|(dir, used_bytes, capacity_bytes)| PackCacheStats {
            dir,
            used_bytes,
            capacity_bytes,
        });
    stats.dedup_ratio = ratio(stats.nonzero_bytes, stats.unique_bytes);
    stats.compression_ratio = ratio(stats.unique_bytes, stats.record_bytes);
    Ok(stats)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

pub(crate) fn dir_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}
