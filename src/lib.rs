//! snapfs: deduplicated disk snapshots for hosts that run virtual machines,
//! served as a FUSE filesystem.
//!
//! # Architecture
//!
//! Data flows one way on each path; each module has one job.
//!
//! ```text
//! create: source -> chunker/hasher/compressor (snapshot::create) -> store (packs + index)
//!         -> snapshot map pages (snapshot::map) -> catalog commit (snapshot::catalog)
//! read:   image::ImageReader::read_at -> map lookup -> store.get (cache, pack read, verify)
//! rollback: target chunks -> hash -> compare with the map -> store.read_verified -> target
//! ```
//!
//! - [`store`] owns the store directory: pack files of chunk records, the
//!   sled index (hash -> pack, offset, length), crash recovery, gc. Pack
//!   bytes live behind [`store::backend::PackStorage`]: the local folder
//!   today, a fault-injecting decorator for tests.
//! - [`snapshot`] owns names, the catalog of disks and snapshots, the chunk
//!   maps (content-addressed pages, a small Merkle tree) and the create
//!   pipeline.
//! - [`image`] reads snapshot images: random access and export.
//! - [`rollback`] writes a snapshot back onto a disk, only the chunks that
//!   differ, to a target it has locked and checked is not in use.
//! - [`verify`] and [`stats`] read the whole store.
//! - [`fs`] is the filesystem core without FUSE types (nodes, attrs,
//!   handles, control files, the snapshot service with the one "running"
//!   check, errno at the edge); [`fuse`] is the thin fuser adapter that logs
//!   each error once.
//! - [`policy`] holds schedules, retention, prune and the mount's runner.
//! - [`control`] is the `.control` request/response format, shared by the
//!   mount and the CLI client.
//!
//! # Durability
//!
//! Pack bytes are fsynced before the index entries and the catalog change
//! that reference them commit in one sled transaction; sled is flushed
//! after every commit. A crash leaves the last committed state; the next
//! open cuts uncommitted pack tails. Every chunk read is re-hashed.
//!
//! # Locking
//!
//! | lock | held by | protects |
//! |------|---------|----------|
//! | `STORE/lock` (flock) | the one process that opened the store | the whole store |
//! | `Store::catalog_lock` | name checks + catalog writes | snapshot names |
//! | `Store::gc_coord` | reference check of a writing session; gc's mark start and final commit | chunk liveness |
//! | `Store::gc_run` | one gc pass | packs being rewritten |
//! | `Repository::running` | one snapshot per disk (or a rollback of it) | EBUSY |
//! | flock + OFD write lock on the target | a rollback | the disk being written |

pub mod catalog;
pub mod control;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod hash;
pub mod image;
pub mod map;
pub mod modes;
pub mod policy;
pub mod repository;
pub mod snapshot;
pub mod stats;
pub mod store;
pub mod units;
pub mod verify;

pub use error::{Error, Result};
pub use hash::ChunkHash;
pub use repository::Repository;
pub use store::{OpenOptions, Store, StoreConfig};
