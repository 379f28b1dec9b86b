//! Snapshot maps: chunk number -> chunk hash, stored as a small Merkle tree
//! of content-addressed pages kept in the chunk store like any chunk. Two
//! snapshots of a disk share every page whose chunks did not change, so the
//! metadata a snapshot writes follows the change, not the disk size.
//!
//! A page is a 12-byte header (magic `SFMP`, version u8 = 1, level u8,
//! reserved u16, entry count u32 LE) and `count` 32-byte hashes. Level 0
//! pages hold chunk hashes; level k pages hold hashes of level k-1 pages.
//! The zero hash stands for an all-zero chunk or an all-zero subtree, which
//! is never stored.

mod pins;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::ChunkHash;
use crate::store::{Ingest, Store};
pub use pins::{Pin, PinnedMaps};

pub const FANOUT: u64 = 1024;
const PAGE_MAGIC: &[u8; 4] = b"SFMP";
const PAGE_VERSION: u8 = 1;
const PAGE_HEADER_LEN: usize = 12;

/// The root of a snapshot's map.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapRoot {
    pub root: ChunkHash,
    /// Levels of pages; 1 means the root is a leaf page.
    pub height: u8,
    pub chunks: u64,
}

pub fn height_for(chunks: u64) -> u8 {
    let mut height = 1;
    let mut capacity = FANOUT;
    while capacity < chunks {
        capacity = capacity.saturating_mul(FANOUT);
        height += 1;
    }
    height
}

/// Number of entries on `level` of a map of `chunks` chunks.
fn level_len(chunks: u64, level: u8) -> u64 {
    let mut len = chunks;
    for _ in 0..level {
        len = len.div_ceil(FANOUT);
    }
    len
}

pub fn encode_page(level: u8, entries: &[ChunkHash]) -> Vec<u8> {
    let mut page = Vec::with_capacity(PAGE_HEADER_LEN + 32 * entries.len());
    page.extend_from_slice(PAGE_MAGIC);
    page.push(PAGE_VERSION);
    page.push(level);
    page.extend_from_slice(&[0, 0]);
    page.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        page.extend_from_slice(&entry.0);
    }
    page
}

/// Checks a page's header against the level it was reached at; returns its
/// entry count.
fn check_page(page: &[u8], hash: &ChunkHash, level: u8) -> Result<usize> {
    let bad = |why: &str| Error::BadMetadata(format!("map page {hash}: {why}"));
    if page.len() < PAGE_HEADER_LEN || &page[..4] != PAGE_MAGIC {
        return Err(bad("not a map page"));
    }
    if page[4] != PAGE_VERSION {
        return Err(bad("unknown page version"));
    }
    if page[5] != level {
        return Err(bad("page at the wrong level"));
    }
    let count = u32::from_le_bytes([page[8], page[9], page[10], page[11]]) as usize;
    if count as u64 > FANOUT || page.len() != PAGE_HEADER_LEN + 32 * count {
        return Err(bad("bad entry count"));
    }
    Ok(count)
}

fn page_entry(page: &[u8], index: usize) -> ChunkHash {
    let at = PAGE_HEADER_LEN + 32 * index;
    ChunkHash::from_slice(&page[at..at + 32]).unwrap_or_default()
}

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

/// Builds a map from chunk hashes arriving in any order, storing each page
/// as soon as all its entries are known, so memory holds only the pages
/// still being filled.
pub struct MapBuilder {
    chunks: u64,
    height: u8,
    partial: Vec<HashMap<u64, PartialPage>>,
    root: Option<ChunkHash>,
}

struct PartialPage {
    entries: Vec<ChunkHash>,
    filled: u64,
}

impl MapBuilder {
    pub fn new(chunks: u64) -> MapBuilder {
        let height = height_for(chunks);
        MapBuilder {
            chunks,
            height,
            partial: (0..height).map(|_| HashMap::new()).collect(),
            root: if chunks == 0 {
                Some(ChunkHash::ZERO)
            } else {
                None
            },
        }
    }

    pub fn set(&mut self, ingest: &mut Ingest, chunk: u64, hash: ChunkHash) -> Result<()> {
        self.set_at(ingest, 0, chunk, hash, 1)
    }

    /// Marks `count` chunks from `first` as all zero without touching each
    /// one when whole pages are zero (sparse disks).
    pub fn set_zero_range(&mut self, ingest: &mut Ingest, first: u64, count: u64) -> Result<()> {
        let end = first + count;
        let mut chunk = first;
        while chunk < end {
            let page_no = chunk / FANOUT;
            let page_end = ((page_no + 1) * FANOUT).min(self.chunks);
            let run_end = end.min(page_end);
            let whole_page = chunk == page_no * FANOUT && run_end == page_end;
            if whole_page && !self.partial[0].contains_key(&page_no) {
                self.page_done(ingest, 0, page_no, ChunkHash::ZERO)?;
            } else {
                self.set_at(ingest, 0, chunk, ChunkHash::ZERO, run_end - chunk)?;
            }
            chunk = run_end;
        }
        Ok(())
    }

    /// Sets `filled` entries of one page starting at `index` (all to `hash`,
    /// which is only ever more than one entry for zero runs).
    fn set_at(
        &mut self,
        ingest: &mut Ingest,
        level: u8,
        index: u64,
        hash: ChunkHash,
        filled: u64,
    ) -> Result<()> {
        let len = level_len(self.chunks, level);
        if index + filled > len {
            return Err(Error::Invalid(format!(
                "map entry {index} past the end ({len} entries)"
            )));
        }
        let page_no = index / FANOUT;
        let page_len = (len - page_no * FANOUT).min(FANOUT);
        let page = self.partial[level as usize]
            .entry(page_no)
            .or_insert_with(|| PartialPage {
                entries: vec![ChunkHash::ZERO; page_len as usize],
                filled: 0,
            });
        let start = (index % FANOUT) as usize;
        for entry in &mut page.entries[start..start + filled as usize] {
            *entry = hash;
        }
        page.filled += filled;
        if page.filled < page_len {
            return Ok(());
        }
        let Some(page) = self.partial[level as usize].remove(&page_no) else {
            return Ok(());
        };
        let page_hash = if page.entries.iter().all(|h| h.is_zero()) {
            ChunkHash::ZERO
        } else {
            ingest.put_plain(&encode_page(level, &page.entries))?
        };
        self.page_done(ingest, level, page_no, page_hash)
    }

    fn page_done(
        &mut self,
        ingest: &mut Ingest,
        level: u8,
        page_no: u64,
        hash: ChunkHash,
    ) -> Result<()> {
        if level + 1 == self.height {
            self.root = Some(hash);
            Ok(())
        } else {
            self.set_at(ingest, level + 1, page_no, hash, 1)
        }
    }

    pub fn finish(self) -> Result<MapRoot> {
        match self.root {
            Some(root) if self.partial.iter().all(|level| level.is_empty()) => Ok(MapRoot {
                root,
                height: self.height,
                chunks: self.chunks,
            }),
            _ => Err(Error::Invalid("snapshot map is incomplete".into())),
        }
    }
}
