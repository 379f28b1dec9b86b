//! Where two maps differ: the chunks whose hashes are not the same in
//! both, found leaf page by leaf page. Maps of one disk share every page
//! whose chunks did not change, so equal pages are skipped by their hash
//! and the work follows the difference.

use std::ops::Range;

use super::{MapReader, FANOUT};
use crate::error::Result;

/// The chunks, as ordered ranges, whose hashes differ between `a` and
/// `b`; chunks that only one map has count as differing.
pub fn differing_chunks(a: &MapReader, b: &MapReader) -> Result<Vec<Range<u64>>> {
    let (a_chunks, b_chunks) = (a.root().chunks, b.root().chunks);
    let common = a_chunks.min(b_chunks);
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut add = |chunk: u64| match ranges.last_mut() {
        Some(last) if last.end == chunk => last.end = chunk + 1,
        _ => ranges.push(chunk..chunk + 1),
    };
    // The same root: the same chunks, as far as both reach.
    let same = a.root().height == b.root().height && a.root().root == b.root().root;
    let pages = if same { 0 } else { common.div_ceil(FANOUT) };
    for page in 0..pages {
        let first = page * FANOUT;
        // A page holding the shorter map's end differs in length anyway.
        let whole = first + FANOUT <= common;
        if whole && a.page_hash(0, page)? == b.page_hash(0, page)? {
            continue;
        }
        let (left, right) = (a.leaf_entries(page)?, b.leaf_entries(page)?);
        let end = (first + FANOUT).min(common);
        for chunk in first..end {
            let i = (chunk - first) as usize;
            if left.get(i) != right.get(i) {
                add(chunk);
            }
        }
    }
    if common < a_chunks.max(b_chunks) {
        match ranges.last_mut() {
            Some(last) if last.end == common => last.end = a_chunks.max(b_chunks),
            _ => ranges.push(common..a_chunks.max(b_chunks)),
        }
    }
    Ok(ranges)
}
