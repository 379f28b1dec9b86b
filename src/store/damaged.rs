//! Chunks known to be damaged: their index entry points at a record that
//! does not verify (flipped bytes, a short or missing pack). Any read that
//! finds such a record marks the chunk here, `verify` included. Ingest then
//! treats a marked chunk as absent: the next snapshot whose data holds it
//! stores a fresh copy and its commit repoints the index and clears the
//! mark, which heals every old snapshot that shares the chunk. The bad
//! record becomes dead space for gc like any unindexed record.
//!
//! The marks live in the sled tree `damaged` (key: the 32-byte hash, value
//! empty) and in memory, so that ingest checks them without a sled lookup,
//! and with a single atomic load while no chunk is damaged (the usual case).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use crate::error::{Error, Result};
use crate::hash::ChunkHash;

pub struct DamagedChunks {
    tree: sled::Tree,
    marked: Mutex<HashSet<ChunkHash>>,
    /// False while `marked` is empty: the hot path reads only this.
    any: AtomicBool,
}

impl DamagedChunks {
    pub fn load(tree: sled::Tree) -> Result<DamagedChunks> {
        let mut marked = HashSet::new();
        for item in tree.iter() {
            let (key, _) = item?;
            let hash = ChunkHash::from_slice(&key)
                .ok_or_else(|| Error::BadMetadata("damaged-chunk key is not a hash".into()))?;
            marked.insert(hash);
        }
        Ok(DamagedChunks {
            tree,
            any: AtomicBool::new(!marked.is_empty()),
            marked: Mutex::new(marked),
        })
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<ChunkHash>> {
        self.marked.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_marked(&self, hash: &ChunkHash) -> bool {
        self.any.load(Ordering::Acquire) && self.set().contains(hash)
    }

    /// Records that `hash`'s stored copy is bad. Best effort: a mark lost
    /// to a failed write is found again by the next read or verify.
    pub fn mark(&self, hash: &ChunkHash) {
        let mut set = self.set();
        if !set.insert(*hash) {
            return;
        }
        self.any.store(true, Ordering::Release);
        drop(set);
        // Info only: the command or the mount already reports the read error.
        log::info!("chunk {hash} is damaged; the next snapshot holding its data stores it again");
        if let Err(e) = self.tree.insert(hash.0, &[]) {
            log::warn!("cannot record damaged chunk {hash}: {e}");
        }
    }

    /// Inside a commit that writes fresh copies of `hashes`: drops their
    /// marks in the same transaction. Returns the hashes it cleared, to
    /// pass to `forget` once the commit succeeded.
    pub fn clear_in(
        &self,
        tree: &TransactionalTree,
        hashes: impl Iterator<Item = ChunkHash>,
    ) -> std::result::Result<Vec<ChunkHash>, UnabortableTransactionError> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(Vec::new());
        }
        let set = self.set();
        let cleared: Vec<ChunkHash> = hashes.filter(|h| set.contains(h)).collect();
        drop(set);
        for hash in &cleared {
            tree.remove(&hash.0)?;
        }
        Ok(cleared)
    }

    /// Drops the in-memory marks of chunks a commit healed.
    pub fn forget(&self, healed: &[ChunkHash]) {
        if healed.is_empty() {
            return;
        }
        let mut set = self.set();
        for hash in healed {
            set.remove(hash);
        }
        self.any.store(!set.is_empty(), Ordering::Release);
    }
}
