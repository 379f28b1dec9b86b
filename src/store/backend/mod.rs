//! Where pack bytes live: the seam under the store. A [`PackStorage`] holds
//! numbered packs of opaque bytes; it knows nothing of chunk records, the
//! index or the pack header (store/pack.rs owns the format). The store
//! talks to it only, so that a backend is one file here:
//!
//! - [`local::LocalPacks`]: `STORE/packs/%016x.pack` files (today's format);
//! - [`faulty::FaultyPacks`]: a decorator that injects faults, for tests;
//! - an object-store backend will write locally and upload in
//!   [`PackAppender::seal`].
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
mod space;

use crate::error::Result;

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
