//! Where pack bytes live: the seam under the store. A [`PackStorage`] holds
//! numbered packs of opaque bytes; it knows nothing of chunk records, the
//! index or the pack header (store/pack.rs owns the format). The store
//! talks to it only, so that a backend is one file here:
//!
//! - [`local::LocalPacks`]: `STORE/packs/%016x.pack` files (today's format);
//! - [`s3::S3Packs`]: packs in an S3 bucket, written to a local staging
//!   file and uploaded in [`PackAppender::seal`], read by ranged GETs
//!   through a bounded local cache; with a [`Sidecar`] of the objects that
//!   rebuild a store from the bucket alone;
//! - [`faulty::FaultyPacks`]: a decorator that injects faults, for tests.
//!
//! The store holds an `Arc<dyn PackStorage>` rather than an enum: the
//! decorator wraps any backend (itself included) and tests plug theirs in,
//! and one virtual call per pack operation is nothing beside the I/O.
//!
//! Lifecycle of a pack: [`PackStorage::create`] → appends →
//! [`PackAppender::sync`] → [`PackAppender::seal`] → the index commits its
//! length → ranged reads, until gc removes it. Crash recovery lists packs
//! and truncates or removes what no commit covers.
//!
//! Errors are the library's [`crate::Error`]: `Error::Io` whose context
//! names the pack (a local one by its path), with the `io::Error` kind
//! intact, so that the store tells damage (a missing pack: `NotFound`)
//! from a failing device.

pub mod faulty;
pub mod local;
pub mod s3;
mod space;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// Where a store keeps its packs: fixed at creation, kept in the store's
/// `meta` tree (absent: local), so that every command opens the same.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PacksConfig {
    #[default]
    Local,
    S3(s3::S3Config),
}

impl PacksConfig {
    /// The storage of the store at `root`.
    pub fn open(&self, root: &Path, opening: s3::Opening) -> Result<Arc<dyn PackStorage>> {
        Ok(match self {
            PacksConfig::Local => Arc::new(local::LocalPacks::in_store(root)?),
            PacksConfig::S3(config) => Arc::new(s3::S3Packs::open(root, config, opening)?),
        })
    }
}

/// A pack and how many bytes it holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    pub id: u64,
    pub len: u64,
}

/// Storage of append-only packs, shared by every reader and writer of a
/// store.
pub trait PackStorage: Send + Sync {
    /// Starts a new, empty pack `id`; fails if it exists.
    fn create(&self, id: u64) -> Result<Box<dyn PackAppender>>;

    /// Fills `buf` with the bytes of pack `id` from `offset`. A pack
    /// shorter than that fails with an `UnexpectedEof` kind; one that does
    /// not exist with `NotFound`.
    fn read_exact_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Every pack with its length, in no particular order.
    fn list(&self) -> Result<Vec<PackInfo>>;

    /// Removes pack `id` (readers that hold it open may finish).
    fn remove(&self, id: u64) -> Result<()>;

    /// Cuts pack `id` to `len` bytes, durably (crash recovery, and a
    /// failed session giving back its uncommitted tail).
    fn truncate(&self, id: u64, len: u64) -> Result<()>;

    /// Fails with ENOSPC when `bytes` more would eat into the room kept
    /// free for the database (see space.rs); otherwise returns the room
    /// left above that reserve after them.
    fn check_room(&self, bytes: u64) -> Result<u64>;

    /// Bytes of all packs together.
    fn stored_bytes(&self) -> Result<u64> {
        Ok(self.list()?.iter().map(|pack| pack.len).sum())
    }

    /// Names pack `id` for messages (a local pack: its path).
    fn pack_name(&self, id: u64) -> String;

    /// Where the packs are, for people: a folder or an `s3://` URL.
    fn location(&self) -> String;

    /// `read_exact_at` from the authoritative copy, past any local cache
    /// (verify reads the bucket, not the cache).
    fn read_fresh(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_exact_at(id, offset, buf)
    }

    /// Drops what a local cache holds of pack `id` (its bytes failed to
    /// verify); true if it held any, so a read from the source may help.
    fn drop_cached(&self, _id: u64) -> bool {
        false
    }

    /// The packs crash recovery at open cuts or removes. A remote backend
    /// names only its local staging packs: it never deletes from the
    /// bucket at open (gc removes orphans after a grace period).
    fn recoverable(&self) -> Result<Vec<PackInfo>> {
        self.list()
    }

    /// Packs last written more than `age` ago, for gc to remove those that
    /// no commit names (the orphans of a crash after an upload). A local
    /// backend has none: recovery at open removes its orphans.
    fn settled(&self, _age: Duration) -> Result<Vec<PackInfo>> {
        Ok(Vec::new())
    }

    /// The objects beside the packs that rebuild a store (remote only).
    fn sidecar(&self) -> Option<&dyn Sidecar> {
        None
    }

    /// A local cache of pack data: its folder, bytes used, capacity.
    fn cache_usage(&self) -> Option<(PathBuf, u64, u64)> {
        None
    }
}

/// Objects written beside a remote store's packs, so that the bucket alone
/// rebuilds the store: per pack an index of its records, per accomplished
/// snapshot a manifest. Their bytes are the layers above's (store/pack_index.rs,
/// catalog/manifest.rs); this says where they live. Puts never overwrite:
/// an object already there fails with an `AlreadyExists` kind.
pub trait Sidecar: Send + Sync {
    fn put_pack_index(&self, id: u64, bytes: Vec<u8>) -> Result<()>;
    fn pack_index(&self, id: u64) -> Result<Vec<u8>>;
    /// Ids of the packs that have an index object, with its size.
    fn pack_indexes(&self) -> Result<Vec<PackInfo>>;
    fn put_manifest(&self, id: u64, bytes: Vec<u8>) -> Result<()>;
    fn manifest(&self, id: u64) -> Result<Vec<u8>>;
    fn manifests(&self) -> Result<Vec<u64>>;
    fn remove_manifest(&self, id: u64) -> Result<()>;
    /// Names the manifest of snapshot `id` for messages.
    fn manifest_name(&self, id: u64) -> String;
}

/// Writes one new pack. Dropped without [`seal`](PackAppender::seal), the
/// pack stays as far as it got; the store truncates or removes it.
pub trait PackAppender: Send {
    /// Adds `bytes` at the end of the pack (possibly buffered).
    fn append(&mut self, bytes: &[u8]) -> Result<()>;

    /// Makes everything appended so far durable, the pack's name included.
    fn sync(&mut self) -> Result<()>;

    /// Ends the pack after [`sync`](PackAppender::sync): no more appends.
    /// A remote backend uploads here; the index commits only after it.
    fn seal(self: Box<Self>) -> Result<()>;
}
