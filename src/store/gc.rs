//! Garbage collection: mark every chunk and page that something reaches,
//! then sweep: packs with no live chunk are removed, packs with enough dead
//! bytes have their live chunks copied into new packs and are removed after
//! the commit.
//!
//! gc runs beside readers and snapshots being taken, without stopping them:
//! 1. Under `gc_coord`, gc copies the references of every open writing
//!    session and starts a `touched` set: from now on every reference a
//!    session records (reuse or write, see `Ingest::reference`) lands there.
//! 2. It marks what its [`Roots`] reach (the layers above walk the catalog's
//!    snapshot maps and the maps of open images) and the copied session
//!    references. Packs created after this point are not looked at.
//! 3. It copies the live chunks of the packs it rewrites, without locks.
//! 4. Under `gc_coord` again it drops from the dead set whatever was
//!    touched meanwhile (copying those chunks too if their pack goes), and
//!    commits: moved chunks point to their new packs, dead entries and
//!    retired packs are gone. A session checking a hash after this commit
//!    finds it absent and stores it anew.
//! 5. It removes the retired packs.

use std::collections::{HashMap, HashSet};

use super::codec;
use super::pack::{Location, PACK_HEADER_LEN};
use super::{Ingest, Store};
use crate::error::{Error, Result};
use crate::hash::ChunkHash;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub live_chunks: u64,
    pub removed_chunks: u64,
    pub packs_removed: u64,
    pub packs_rewritten: u64,
    pub bytes_freed: u64,
    /// Dead bytes left in packs below the rewrite threshold.
    pub dead_bytes_kept: u64,
    /// Packs in a bucket that no commit names, older than the grace period
    /// (uploaded by a process that died before its commit).
    pub orphans_removed: u64,
}

/// How old an uncommitted pack in a bucket must be before gc removes it.
/// The packs of sessions of this process are kept whatever their age; the
/// grace period is for a writer gc does not know of (another host taking
/// over the same store by mistake).
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Default)]
struct PackUsage {
    live: Vec<(ChunkHash, Location)>,
    dead: Vec<(ChunkHash, Location)>,
    live_bytes: u64,
}

/// A pack gc decided to retire, with the dead chunks it held.
struct Retired {
    id: u64,
    dead: Vec<(ChunkHash, Location)>,
}

/// What gc keeps besides the references of open writing sessions: every
/// chunk and page that the layers above can still reach. The store knows
/// chunks only, so they mark: the catalog's snapshot maps and the maps of
/// images still open.
pub trait Roots: Sync {
    /// Adds to `live` every chunk and page hash that must stay.
    fn mark(&self, store: &Store, live: &mut HashSet<ChunkHash>) -> Result<()>;
}

/// Runs a gc pass. A pack with live chunks is rewritten only when at least
/// `min_dead_percent` of it is dead, so that a little garbage does not cost
/// a copy of a large pack; packs with no live chunk always go.
pub fn gc(store: &Store, roots: &dyn Roots, min_dead_percent: u8) -> Result<GcReport> {
    gc_with_grace(store, roots, min_dead_percent, ORPHAN_GRACE)
}

/// `gc`, removing uncommitted packs of a bucket once older than `grace`.
pub fn gc_with_grace(
    store: &Store,
    roots: &dyn Roots,
    min_dead_percent: u8,
    grace: std::time::Duration,
) -> Result<GcReport> {
    let mut report = run(store, roots, min_dead_percent, None)?;
    report.orphans_removed = remove_orphans(store, grace)?;
    Ok(report)
}

/// Removes the packs older than `grace` that no commit names (none for a
/// local store: recovery at open removes those).
fn remove_orphans(store: &Store, grace: std::time::Duration) -> Result<u64> {
    let _one_at_a_time = store.gc_run.lock().unwrap_or_else(|e| e.into_inner());
    let mut removed = 0;
    for pack in store.storage().settled(grace)? {
        // A pack of a session still writing (here: one process has the
        // store) is no orphan, whatever its age; its ids are never reused.
        let open = || {
            let coord = store.gc_coord.lock().unwrap_or_else(|e| e.into_inner());
            coord.open_packs.contains(&pack.id)
        };
        if !open() && store.committed_pack_len(pack.id)?.is_none() {
            log::info!("removing the uncommitted pack {}", store.pack_name(pack.id));
            store.remove_pack(pack.id)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes those of packs `ids` that nothing reaches any more (the packs a
/// failed snapshot committed before it failed): a gc pass that looks at
/// these packs only and never rewrites one.
pub(crate) fn reclaim_packs(store: &Store, roots: &dyn Roots, ids: &[u64]) -> Result<GcReport> {
    let only: HashSet<u64> = ids.iter().copied().collect();
    run(store, roots, 100, Some(&only))
}

/// A gc pass over every pack, or over the packs in `only`.
fn run(
    store: &Store,
    roots: &dyn Roots,
    min_dead_percent: u8,
    only: Option<&HashSet<u64>>,
) -> Result<GcReport> {
    let _one_at_a_time = store.gc_run.lock().unwrap_or_else(|e| e.into_inner());
    let session_refs = start_tracking(store);
    let result = sweep(store, roots, min_dead_percent, session_refs, only);
    // On every path out: stop collecting touched hashes.
    store
        .gc_coord
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .touched = None;
    result
}

/// Step 1: the references of open sessions, and a fresh touched set.
fn start_tracking(store: &Store) -> Vec<ChunkHash> {
    let mut coord = store.gc_coord.lock().unwrap_or_else(|e| e.into_inner());
    coord.touched = Some(HashSet::new());
    coord.sessions.values().flatten().copied().collect()
}

fn sweep(
    store: &Store,
    roots: &dyn Roots,
    min_dead_percent: u8,
    session_refs: Vec<ChunkHash>,
    only: Option<&HashSet<u64>>,
) -> Result<GcReport> {
    let mut live: HashSet<ChunkHash> = session_refs.into_iter().collect();
    roots.mark(store, &mut live)?;
    // The packs to consider are those committed before the index scan: a
    // pack committed later has index entries the scan may have missed.
    let mut packs = committed_packs(store)?;
    if let Some(only) = only {
        packs.retain(|(id, _)| only.contains(id));
    }
    let mut usage = pack_usage(store, &live)?;

    let mut report = GcReport {
        live_chunks: live.len() as u64,
        ..GcReport::default()
    };
    let mut ingest = Ingest::unregistered(store);
    let mut retired: Vec<Retired> = Vec::new();
    for (id, committed) in packs {
        let pack = usage.remove(&id).unwrap_or_default();
        let dead_bytes = committed.saturating_sub(PACK_HEADER_LEN + pack.live_bytes);
        if dead_bytes == 0 {
            continue;
        }
        let worth_it = dead_bytes * 100 >= committed * min_dead_percent as u64;
        if !pack.live.is_empty() && !worth_it {
            report.dead_bytes_kept += dead_bytes;
            continue;
        }
        // Step 3: copy what stays alive.
        if !pack.live.is_empty() && !move_chunks(store, &mut ingest, id, &pack.live) {
            continue;
        }
        report.bytes_freed += committed;
        if pack.live.is_empty() {
            report.packs_removed += 1;
        } else {
            report.packs_rewritten += 1;
        }
        retired.push(Retired {
            id,
            dead: pack.dead,
        });
    }
    // Index entries of packs we do not consider: a lost pack's, or those of
    // a pack committed during this pass, which its session's references
    // (live or touched) protect.
    // A restricted pass leaves every other pack's entries alone.
    let orphans: Vec<ChunkHash> = match only {
        Some(_) => Vec::new(),
        None => usage
            .into_values()
            .flat_map(|pack| pack.dead.into_iter().map(|(hash, _)| hash))
            .collect(),
    };

    // Step 4: under the coordination lock, keep what was touched, commit.
    let mut coord = store.gc_coord.lock().unwrap_or_else(|e| e.into_inner());
    let touched = coord.touched.take().unwrap_or_default();
    let mut dead: Vec<ChunkHash> = orphans
        .into_iter()
        .filter(|h| !touched.contains(h))
        .collect();
    retired.retain(|pack| {
        let revived: Vec<(ChunkHash, Location)> = pack
            .dead
            .iter()
            .filter(|(hash, _)| touched.contains(hash))
            .copied()
            .collect();
        // A chunk we cannot copy keeps its whole pack for now.
        revived.is_empty() || move_chunks(store, &mut ingest, pack.id, &revived)
    });
    for pack in &retired {
        dead.extend(
            pack.dead
                .iter()
                .map(|(hash, _)| *hash)
                .filter(|h| !touched.contains(h)),
        );
    }
    let retired_ids: Vec<u64> = retired.iter().map(|pack| pack.id).collect();
    report.removed_chunks = dead.len() as u64;
    report.bytes_freed = report.bytes_freed.saturating_sub(ingest.added_bytes());
    ingest.commit(&[], &|trees| {
        for hash in &dead {
            trees.index.remove(&hash.0)?;
        }
        for id in &retired_ids {
            trees.packs.remove(&id.to_be_bytes())?;
        }
        Ok(())
    })?;
    drop(coord);

    // Step 5.
    for pack in retired {
        if let Err(e) = store.remove_pack(pack.id) {
            log::warn!("cannot remove a retired pack: {e}");
        }
    }
    Ok(report)
}

/// Copies chunks of pack `id` into `ingest`, verifying each. Returns false
/// if any is damaged or unreadable: gc never drops the only copy of a
/// chunk, damaged or not, so the caller then keeps the pack.
fn move_chunks(
    store: &Store,
    ingest: &mut Ingest,
    id: u64,
    chunks: &[(ChunkHash, Location)],
) -> bool {
    for (hash, location) in chunks {
        let moved = store
            .read_record_at(hash, location, Vec::new())
            .and_then(|plain| {
                let (codec, stored) = codec::encode_chunk(&plain, store.config().encoding());
                ingest.append(hash, plain.len() as u32, codec, &stored)
            });
        if let Err(e) = moved {
            log::warn!("gc keeps pack {id:016x}: {e}");
            return false;
        }
    }
    true
}

/// Live and dead chunks of every pack, from one scan of the index.
fn pack_usage(store: &Store, live: &HashSet<ChunkHash>) -> Result<HashMap<u64, PackUsage>> {
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
            pack.dead.push((hash, location));
        }
    }
    Ok(usage)
}

/// (pack id, committed length) of every committed pack.
fn committed_packs(store: &Store) -> Result<Vec<(u64, u64)>> {
    store
        .packs
        .iter()
        .map(|item| {
            let (key, value) = item?;
            let id = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| Error::BadMetadata("bad pack key".into()))?;
            let len = <[u8; 8]>::try_from(value.as_ref())
                .map(u64::from_le_bytes)
                .map_err(|_| Error::BadMetadata("bad pack length".into()))?;
            Ok((id, len))
        })
        .collect()
}
