//! The page format of snapshot maps (see the module docs of `map`).

use crate::error::{Error, Result};
use crate::hash::ChunkHash;

pub const FANOUT: u64 = 1024;
const PAGE_MAGIC: &[u8; 4] = b"SFMP";
const PAGE_VERSION: u8 = 1;
const PAGE_HEADER_LEN: usize = 12;

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
pub(super) fn level_len(chunks: u64, level: u8) -> u64 {
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
pub(super) fn check_page(page: &[u8], hash: &ChunkHash, level: u8) -> Result<usize> {
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

pub(super) fn page_entry(page: &[u8], index: usize) -> ChunkHash {
    let at = PAGE_HEADER_LEN + 32 * index;
    ChunkHash::from_slice(&page[at..at + 32]).unwrap_or_default()
}
