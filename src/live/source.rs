//! A frozen live disk as a [`ChunkSource`]: the snapshot pipeline reads
//! the frozen point in time, whatever the guest writes meanwhile.
//!
//! Built on a parent, the ranges are the chunks changed since it and the
//! rest is the parent's (`Unread::SameAs`). A full read (no parent, or a
//! record that cannot vouch) takes every chunk but the backing's holes,
//! with the rest all zeros. A read returns a chunk's copy when a write
//! overwrote it since the freeze, else the backing's bytes, holding the
//! chunk so that no write lands on it during the read.

use std::path::Path;

use super::freeze::Frozen;
use crate::error::{Error, Result};
use crate::snapshot::source::{next_data_region, ChunkSource, Unread};

pub struct FrozenSource<'f> {
    frozen: &'f Frozen,
}

impl Frozen {
    /// The frozen disk as a source for `snapshot::create::create_from`.
    pub fn source(&self) -> FrozenSource<'_> {
        FrozenSource { frozen: self }
    }
}

impl FrozenSource<'_> {
    fn chunk_size(&self) -> u64 {
        self.frozen.disk.chunk_size()
    }

    fn range_of(&self, chunks: std::ops::Range<u64>) -> (u64, u64) {
        let cs = self.chunk_size();
        (chunks.start * cs, (chunks.end * cs).min(self.frozen.size))
    }

    /// The next run of frozen chunks from chunk `from`.
    fn next_changed(&self, from: u64) -> Option<(u64, u64)> {
        let copies = &self.frozen.copies;
        let first = (from..copies.chunks()).find(|c| copies.is_frozen(*c))?;
        let end = (first..copies.chunks())
            .find(|c| !copies.is_frozen(*c))
            .unwrap_or(copies.chunks());
        Some(self.range_of(first..end))
    }

    /// The next data of a full read from chunk `from`: the backing's data
    /// regions, and the chunks copied aside (a chunk punched after the
    /// freeze is a hole now but was not then). The backing is looked at
    /// before the copies: a hole seen there with no copy after it held
    /// zeros at the freeze too, since a write to it would have copied it.
    fn next_full(&self, from: u64) -> Option<(u64, u64)> {
        let copies = &self.frozen.copies;
        let cs = self.chunk_size();
        let size = self.frozen.size;
        let data = next_data_region(self.frozen.disk.backing(), from * cs, size);
        let data_chunk = data.map_or(copies.chunks(), |(start, _)| start / cs);
        if let Some(copied) = (from..data_chunk).find(|c| copies.is_copied(*c)) {
            return Some(self.range_of(copied..copied + 1));
        }
        let (_, end) = data?;
        Some(self.range_of(data_chunk..end.div_ceil(cs)))
    }
}

impl ChunkSource for FrozenSource<'_> {
    fn path(&self) -> &Path {
        self.frozen.disk.path()
    }

    fn size(&self) -> u64 {
        self.frozen.size
    }

    fn next_range(&self, pos: u64) -> Result<Option<(u64, u64)>> {
        let from = pos.div_ceil(self.chunk_size());
        Ok(match self.frozen.parent() {
            Some(_) => self.next_changed(from),
            None => self.next_full(from),
        })
    }

    fn unread(&self) -> Unread {
        match self.frozen.parent() {
            Some(parent) => Unread::SameAs(parent),
            None => Unread::Zeros,
        }
    }

    /// Reads whole frozen chunks (the pipeline's reads): `offset` on a
    /// chunk boundary, `buf` whole chunks or up to the frozen end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let cs = self.chunk_size();
        let size = self.frozen.size;
        let end = offset + buf.len() as u64;
        if !offset.is_multiple_of(cs) || (!end.is_multiple_of(cs) && end != size) || end > size {
            return Err(Error::Source {
                path: self.path().to_path_buf(),
                why: format!(
                    "read of {} bytes at {offset} is not whole frozen chunks",
                    buf.len()
                ),
            });
        }
        let copies = &self.frozen.copies;
        let chunks = offset / cs..end.div_ceil(cs);
        // Hold every chunk of the read, stripes in order (writers take one
        // at a time, so no cycle).
        let mut stripes: Vec<usize> = chunks.clone().map(|c| copies.stripe(c)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _held: Vec<_> = stripes.iter().map(|s| copies.lock_stripe(*s)).collect();
        for (i, piece) in buf.chunks_mut(cs as usize).enumerate() {
            let c = chunks.start + i as u64;
            copies
                .read_chunk(self.frozen.disk.backing(), c, piece)
                .map_err(|e| Error::Source {
                    path: self.path().to_path_buf(),
                    why: e.to_string(),
                })?;
        }
        Ok(())
    }
}
