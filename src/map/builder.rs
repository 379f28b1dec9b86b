//! Building a map: from chunk hashes in any order, optionally on top of a
//! parent map whose entries stand wherever the builder is told so.

use std::collections::HashMap;

use super::page::{encode_page, height_for, level_len, FANOUT};
use super::{MapReader, MapRoot};
use crate::error::{Error, Result};
use crate::hash::ChunkHash;
use crate::store::Ingest;

/// Builds a map from chunk hashes arriving in any order, storing each page
/// as soon as all its entries are known, so memory holds only the pages
/// still being filled. Every chunk is given exactly once: its hash, zero,
/// or "as in the parent" (`keep_range`). A whole page kept from the parent
/// reuses the parent's page as it is, so a snapshot of a large disk with a
/// small change writes pages for the change only.
pub struct MapBuilder {
    chunks: u64,
    height: u8,
    partial: Vec<HashMap<u64, PartialPage>>,
    root: Option<ChunkHash>,
    parent: Option<MapRoot>,
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
            parent: None,
        }
    }

    /// A builder whose kept chunks (`keep_range`) take `parent`'s hashes;
    /// chunks past the parent's end are zero (a disk that grew).
    pub fn on_parent(chunks: u64, parent: MapRoot) -> MapBuilder {
        MapBuilder {
            parent: Some(parent),
            ..MapBuilder::new(chunks)
        }
    }

    /// Chunks `first..first + count` hold what the parent holds there.
    /// Without a parent they are zero.
    pub fn keep_range(&mut self, ingest: &mut Ingest, first: u64, count: u64) -> Result<()> {
        let Some(parent_root) = self.parent else {
            return self.set_zero_range(ingest, first, count);
        };
        let parent = MapReader::new(ingest.store(), parent_root);
        let end = first + count;
        let mut chunk = first;
        while chunk < end {
            let page_no = chunk / FANOUT;
            let page_start = page_no * FANOUT;
            let page_end = ((page_no + 1) * FANOUT).min(self.chunks);
            let run_end = end.min(page_end);
            let whole_page = chunk == page_start
                && run_end == page_end
                && !self.partial[0].contains_key(&page_no);
            // The parent's page holds exactly these entries only if it
            // covers the same chunks (the last page of a resized disk does not).
            let same_cover = page_end == ((page_no + 1) * FANOUT).min(parent_root.chunks);
            if whole_page && same_cover {
                if let Some(hash) = parent.page_hash(0, page_no)? {
                    self.page_done(ingest, 0, page_no, hash)?;
                    chunk = run_end;
                    continue;
                }
            }
            let entries = if page_start < parent_root.chunks {
                parent.leaf_entries(page_no)?
            } else {
                Vec::new()
            };
            let at = |i: u64| {
                let index = (chunk + i - page_start) as usize;
                entries.get(index).copied().unwrap_or(ChunkHash::ZERO)
            };
            self.set_run(ingest, 0, chunk, run_end - chunk, &at)?;
            chunk = run_end;
        }
        Ok(())
    }

    pub fn set(&mut self, ingest: &mut Ingest, chunk: u64, hash: ChunkHash) -> Result<()> {
        self.set_at(ingest, 0, chunk, hash, 1)
    }

    /// Sets `filled` entries of one page starting at `index` to one hash
    /// (more than one entry only for zero runs).
    fn set_at(
        &mut self,
        ingest: &mut Ingest,
        level: u8,
        index: u64,
        hash: ChunkHash,
        filled: u64,
    ) -> Result<()> {
        self.set_run(ingest, level, index, filled, &|_| hash)
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

    /// Sets `filled` entries of one page starting at `index`, entry
    /// `index + i` to `hash_at(i)`; stores the page once it is complete.
    fn set_run(
        &mut self,
        ingest: &mut Ingest,
        level: u8,
        index: u64,
        filled: u64,
        hash_at: &dyn Fn(u64) -> ChunkHash,
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
        for (i, entry) in page.entries[start..start + filled as usize]
            .iter_mut()
            .enumerate()
        {
            *entry = hash_at(i as u64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OpenOptions, Store};

    fn hash_of(n: u64) -> ChunkHash {
        ChunkHash::of(&n.to_le_bytes())
    }

    /// A map of `entries`, built and committed.
    fn committed(store: &Store, entries: &[ChunkHash]) -> MapRoot {
        let mut ingest = Ingest::unregistered(store);
        let root = build_whole(&mut ingest, entries);
        ingest.commit(&[], &|_| Ok(())).unwrap();
        root
    }

    /// A map of `entries`, built chunk by chunk.
    fn build_whole(ingest: &mut Ingest, entries: &[ChunkHash]) -> MapRoot {
        let mut builder = MapBuilder::new(entries.len() as u64);
        for (chunk, hash) in entries.iter().enumerate() {
            builder.set(ingest, chunk as u64, *hash).unwrap();
        }
        builder.finish().unwrap()
    }

    /// Builds `child` on top of `parent`, setting only the chunks in
    /// `changed` and keeping every other run from the parent.
    fn build_on(
        ingest: &mut Ingest,
        parent: MapRoot,
        child: &[ChunkHash],
        changed: &[bool],
    ) -> MapRoot {
        let mut builder = MapBuilder::on_parent(child.len() as u64, parent);
        let mut chunk = 0;
        while chunk < child.len() {
            if changed[chunk] {
                builder.set(ingest, chunk as u64, child[chunk]).unwrap();
                chunk += 1;
                continue;
            }
            let run = changed[chunk..].iter().take_while(|c| !**c).count();
            builder
                .keep_range(ingest, chunk as u64, run as u64)
                .unwrap();
            chunk += run;
        }
        builder.finish().unwrap()
    }

    #[test]
    fn a_map_built_on_its_parent_equals_the_map_built_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let sizes = [
            (1, 1),
            (1023, 1024),
            (1024, 1024),
            (1025, 1024),
            (3000, 5000),
            (5000, 3000),
            (FANOUT * FANOUT + 7, FANOUT * FANOUT + 7),
            (FANOUT * 3, FANOUT * FANOUT + 1),
        ];
        for (parent_len, child_len) in sizes {
            let parent: Vec<ChunkHash> = (0..parent_len)
                .map(|i| {
                    if next() % 4 == 0 {
                        ChunkHash::ZERO
                    } else {
                        hash_of(i)
                    }
                })
                .collect();
            let parent_root = committed(&store, &parent);
            let mut ingest = Ingest::unregistered(&store);
            // Few changes, in clusters, and some whole zero pages.
            let mut changed = vec![false; child_len as usize];
            let mut child: Vec<ChunkHash> = (0..child_len)
                .map(|i| parent.get(i as usize).copied().unwrap_or(ChunkHash::ZERO))
                .collect();
            for _ in 0..(next() % 20) {
                let at = (next() % child_len) as usize;
                let len = (next() % 50) as usize;
                for i in at..(at + len).min(child.len()) {
                    changed[i] = true;
                    child[i] = if next() % 3 == 0 {
                        ChunkHash::ZERO
                    } else {
                        hash_of(next())
                    };
                }
            }
            let expected = build_whole(&mut ingest, &child);
            let built = build_on(&mut ingest, parent_root, &child, &changed);
            assert_eq!(
                built, expected,
                "parent {parent_len} chunks, child {child_len}"
            );
        }
    }

    #[test]
    fn a_map_kept_whole_from_its_parent_writes_no_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &OpenOptions::default()).unwrap();
        let parent: Vec<ChunkHash> = (0..FANOUT * 5 + 3).map(hash_of).collect();
        let parent_root = committed(&store, &parent);
        let mut ingest = Ingest::unregistered(&store);
        let unchanged = vec![false; parent.len()];
        let built = build_on(&mut ingest, parent_root, &parent, &unchanged);
        assert_eq!(built, parent_root);
        assert_eq!(ingest.added_bytes(), 0, "no page written again");
    }
}
