//! Reading a stored map: one chunk's hash, or every chunk in order.

use super::page::{check_page, page_entry, FANOUT};
use super::MapRoot;
use crate::error::{Error, Result};
use crate::hash::ChunkHash;
use crate::store::Store;

/// Looks up chunk hashes in a stored map.
#[derive(Clone, Copy)]
pub struct MapReader<'s> {
    store: &'s Store,
    root: MapRoot,
}

impl<'s> MapReader<'s> {
    pub fn new(store: &'s Store, root: MapRoot) -> MapReader<'s> {
        MapReader { store, root }
    }

    /// The hash of chunk `chunk` (zero for an all-zero chunk).
    pub fn chunk_hash(&self, chunk: u64) -> Result<ChunkHash> {
        if chunk >= self.root.chunks {
            return Err(Error::Invalid(format!(
                "chunk {chunk} is past the end of the map ({} chunks)",
                self.root.chunks
            )));
        }
        let mut hash = self.root.root;
        for level in (0..self.root.height).rev() {
            if hash.is_zero() {
                return Ok(ChunkHash::ZERO);
            }
            let page = self.store.get(&hash)?;
            let count = check_page(&page, &hash, level)?;
            let index = ((chunk / FANOUT.pow(level as u32)) % FANOUT) as usize;
            if index >= count {
                return Err(Error::BadMetadata(format!(
                    "map page {hash} has {count} entries, chunk {chunk} needs entry {index}"
                )));
            }
            hash = page_entry(&page, index);
        }
        Ok(hash)
    }

    pub fn root(&self) -> MapRoot {
        self.root
    }

    /// The hash of page `page_no` on `level` (level 0 pages hold chunk
    /// hashes), zero for an all-zero subtree; None when the map has no such
    /// page.
    pub fn page_hash(&self, level: u8, page_no: u64) -> Result<Option<ChunkHash>> {
        let span = FANOUT.checked_pow(level as u32 + 1);
        let first = span.and_then(|span| page_no.checked_mul(span));
        let Some(first) = first.filter(|f| level < self.root.height && *f < self.root.chunks)
        else {
            return Ok(None);
        };
        let mut hash = self.root.root;
        for above in (level + 1..self.root.height).rev() {
            if hash.is_zero() {
                return Ok(Some(ChunkHash::ZERO));
            }
            let page = self.store.get(&hash)?;
            let count = check_page(&page, &hash, above)?;
            let index = ((first / FANOUT.pow(above as u32)) % FANOUT) as usize;
            if index >= count {
                return Err(Error::BadMetadata(format!(
                    "map page {hash} has {count} entries, page {page_no} needs entry {index}"
                )));
            }
            hash = page_entry(&page, index);
        }
        Ok(Some(hash))
    }

    /// The chunk hashes of leaf page `page_no`: as many as the map has
    /// there (an all-zero page gives zeros).
    pub fn leaf_entries(&self, page_no: u64) -> Result<Vec<ChunkHash>> {
        let first = page_no.saturating_mul(FANOUT);
        let len = self.root.chunks.saturating_sub(first).min(FANOUT) as usize;
        let Some(hash) = self.page_hash(0, page_no)? else {
            return Ok(Vec::new());
        };
        if hash.is_zero() {
            return Ok(vec![ChunkHash::ZERO; len]);
        }
        let page = self.store.get(&hash)?;
        let count = check_page(&page, &hash, 0)?;
        if count != len {
            return Err(Error::BadMetadata(format!(
                "map page {hash} has {count} entries, the map needs {len} there"
            )));
        }
        Ok((0..count).map(|i| page_entry(&page, i)).collect())
    }

    /// Calls `visit` with every chunk number and hash in order, zero chunks
    /// included; `visit_page` sees each page hash first and may return false
    /// to skip its subtree (gc uses it to skip pages already marked).
    pub fn walk(
        &self,
        visit_page: &mut dyn FnMut(&ChunkHash) -> bool,
        visit: &mut dyn FnMut(u64, &ChunkHash) -> Result<()>,
    ) -> Result<()> {
        self.walk_page(self.root.root, self.root.height - 1, 0, visit_page, visit)
    }

    fn walk_page(
        &self,
        hash: ChunkHash,
        level: u8,
        first_chunk: u64,
        visit_page: &mut dyn FnMut(&ChunkHash) -> bool,
        visit: &mut dyn FnMut(u64, &ChunkHash) -> Result<()>,
    ) -> Result<()> {
        let span = FANOUT.pow(level as u32 + 1);
        if hash.is_zero() {
            let end = (first_chunk + span).min(self.root.chunks);
            for chunk in first_chunk..end {
                visit(chunk, &ChunkHash::ZERO)?;
            }
            return Ok(());
        }
        if !visit_page(&hash) {
            return Ok(());
        }
        let page = self.store.get(&hash)?;
        let count = check_page(&page, &hash, level)?;
        let child_span = span / FANOUT;
        // A page must cover exactly its part of the map: fewer entries
        // would let a walk (verify, gc) pass over chunks a read needs.
        let needed = (self.root.chunks.saturating_sub(first_chunk))
            .div_ceil(child_span)
            .min(FANOUT);
        if count as u64 != needed {
            return Err(Error::BadMetadata(format!(
                "map page {hash} has {count} entries, the map needs {needed} there"
            )));
        }
        for index in 0..count {
            let entry = page_entry(&page, index);
            let first = first_chunk + index as u64 * child_span;
            if level == 0 {
                visit(first, &entry)?;
            } else {
                self.walk_page(entry, level - 1, first, visit_page, visit)?;
            }
        }
        Ok(())
    }
}
