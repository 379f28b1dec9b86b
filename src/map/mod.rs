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

mod builder;
mod diff;
mod page;
mod pins;
mod reader;

use serde::{Deserialize, Serialize};

use crate::hash::ChunkHash;
pub use builder::MapBuilder;
pub use diff::differing_chunks;
pub use page::{encode_page, height_for, FANOUT};
pub use pins::{Pin, PinnedMaps};
pub use reader::MapReader;

/// The root of a snapshot's map.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapRoot {
    pub root: ChunkHash,
    /// Levels of pages; 1 means the root is a leaf page.
    pub height: u8,
    pub chunks: u64,
}
