//! Garbage collection: mark every chunk and page that a snapshot (or an
//! image still open after its snapshot was deleted) reaches, then sweep:
//! packs with no live chunk are removed, packs with dead chunks have their
//! live chunks copied into new packs and are removed after the commit.
//!
//! gc holds `gc_lock` exclusively for the whole pass: snapshots being taken
//! hold it shared, so no snapshot can reference a chunk while gc decides
//! whether it is dead.

use std::collections::{HashMap, HashSet};
use std::fs;

use super::pack::{self, Location, PACK_HEADER_LEN};
use super::{Ingest, Store};
use crate::error::{Error, Result};
use crate::hash::ChunkHash;
use crate::snapshot::{MapReader, MapRoot};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub live_chunks: u64,
    pub removed_chunks: u64,
    pub packs_removed: u64,
    pub packs_rewritten: u64,
    pub bytes_freed: u64,
    /// Dead bytes left in packs below the rewrite threshold.
    pub dead_bytes_kept: u64,
}

#[derive(Default)]
struct PackUsage {
    live: Vec<(ChunkHash, Location)>,
    dead: Vec<ChunkHash>,
    live_bytes: u64,
}

/// Runs a gc pass. A pack with live chunks is rewritten only when at least
/// `min_dead_percent` of it is dead, so that a little garbage does not cost
/// a copy of a large pack; packs with no live chunk always go.
pub fn gc(store: &Store, min_dead_percent: u8) -> Result<GcReport> {
    let _exclusive = store.gc_lock.write().unwrap_or_else(|e| e.into_inner());
    let live = mark(store)?;

    let mut usage: HashMap<u64, PackUsage> = HashMap::new();
    for item in store.index.iter() {
        let (key, value) = item?;
        let hash = ChunkHash::from_slice(&key)
            .ok_or_else(|| Error::BadMetadata("index key is not a hash".into()))?;
        let location = Location::decode(&value)?;
        let pack = usage.entry(location.pack).or_default();
        if live.contains(&hash) {
            pack.live_bytes += location.record_len();
            pack.live.push((hash, location));
        } else {
            pack.dead.push(hash);
        }
    }

    let mut report = GcReport {
        live_chunks: live.len() as u64,
        ..GcReport::default()
    };
    let mut ingest = Ingest::new(store);
    let mut retired: Vec<u64> = Vec::new();
    let mut dead: Vec<ChunkHash> = Vec::new();
    for item in store.packs.iter() {
        let (key, value) = item?;
        let id = u64::from_be_bytes(
            key.as_ref()
                .try_into()
                .map_err(|_| Error::BadMetadata("bad pack key".into()))?,
        );
        let committed = <[u8; 8]>::try_from(value.as_ref())
            .map(u64::from_le_bytes)
            .map_err(|_| Error::BadMetadata("bad pack length".into()))?;
        let pack = usage.remove(&id).unwrap_or_default();
        let dead_bytes = committed.saturating_sub(PACK_HEADER_LEN + pack.live_bytes);
        let worth_it = dead_bytes * 100 >= committed * min_dead_percent as u64;
        if dead_bytes == 0 {
            continue;
        }
        if !pack.live.is_empty() && !worth_it {
            report.dead_bytes_kept += dead_bytes;
            continue;
        }
        if !pack.live.is_empty() && !move_live_chunks(store, &mut ingest, id, &pack.live) {
            continue;
        }
        report.removed_chunks += pack.dead.len() as u64;
        report.bytes_freed += committed;
        if pack.live.is_empty() {
            report.packs_removed += 1;
        } else {
            report.packs_rewritten += 1;
        }
        dead.extend(pack.dead);
        retired.push(id);
    }
    // Index entries whose pack has no record at all (a lost pack).
    for (_, pack) in usage {
        report.removed_chunks += pack.dead.len() as u64;
        dead.extend(pack.dead);
    }
    report.bytes_freed = report.bytes_freed.saturating_sub(ingest.added_bytes());

    ingest.commit(&|trees| {
        for hash in &dead {
            trees.index.remove(&hash.0)?;
        }
        for id in &retired {
            trees.packs.remove(&id.to_be_bytes())?;
        }
        Ok(())
    })?;
    for id in retired {
        store.forget_pack_file(id);
        let path = pack::pack_path(store.packs_dir(), id);
        if let Err(e) = fs::remove_file(&path) {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }
    Ok(report)
}

/// Copies a pack's live chunks into `ingest`, verifying each. Returns false
/// (and keeps the pack) if any of them is damaged: gc never drops the only
/// copy of a chunk, damaged or not.
fn move_live_chunks(
    store: &Store,
    ingest: &mut Ingest,
    id: u64,
    live: &[(ChunkHash, Location)],
) -> bool {
    let file = match store.pack_file(id) {
        Ok(file) => file,
        Err(e) => {
            log::warn!("gc keeps pack {id:016x}: {e}");
            return false;
        }
    };
    for (hash, location) in live {
        let moved = pack::read_record(&file, hash, location).and_then(|plain| {
            let (codec, stored) = pack::encode_chunk(&plain, store.config().zstd());
            ingest.append(hash, plain.len() as u32, codec, &stored)
        });
        if let Err(e) = moved {
            log::warn!("gc keeps pack {id:016x}: {e}");
            return false;
        }
    }
    true
}

/// Every page and chunk hash that a catalogued or pinned snapshot reaches.
fn mark(store: &Store) -> Result<HashSet<ChunkHash>> {
    let mut roots: Vec<MapRoot> = store.snapshots(None)?.iter().map(|s| s.map).collect();
    roots.extend(store.pinned_roots());
    let mut live = HashSet::new();
    for root in roots {
        let map = MapReader::new(store, root);
        let mut chunks = Vec::new();
        // A page already marked was walked in full before: skip it.
        map.walk(&mut |page| live.insert(*page), &mut |_, hash| {
            if !hash.is_zero() {
                chunks.push(*hash);
            }
            Ok(())
        })?;
        live.extend(chunks);
    }
    Ok(live)
}
