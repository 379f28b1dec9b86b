//! snapfs: deduplicated disk snapshots for hosts that run virtual machines,
//! served as a FUSE filesystem.
//!
//! # Architecture
//!
//! Data flows one way on each path; each module has one job, and the arrows
//! between modules point down only (nothing below `catalog` knows disks or
//! snapshots; nothing below `fs` knows FUSE).
//!
//! ```text
//! create:   ChunkSource (snapshot::source) -> pipeline (snapshot::pipeline: reader,
//!           workers, in-order collector) -> Ingest (store: packs + index)
//!           -> MapBuilder (map, on a parent's map) -> Catalog::commit_snapshot
//! read:     ImageReader::read_at (image) -> MapReader (map) -> Store::get
//!           (chunk cache, PackStorage ranged read, decompress, verify)
//! rollback: the target as a ChunkSource -> the same pipeline -> compare with the
//!           map -> Store::read_verified -> target (image::rollback)
//! ```
//!
//! | module | owns | never |
//! |---|---|---|
//! | [`store`] | chunks: pack records, the sled index, the cache, crash recovery, gc (handed its [`store::gc::Roots`]); pack bytes behind [`store::backend::PackStorage`] (the local folder, an S3 bucket with a local cache, a fault-injecting decorator for tests) | knows disks, snapshots or maps |
//! | [`map`] | snapshot maps: content-addressed pages (a small Merkle tree), reader, builder on a parent, pins of open maps | writes the catalog |
//! | [`catalog`] | disks, snapshots, policies, names: the only writer of those sled trees | reads chunks |
//! | [`repository`] | an open store: the store, the catalog, the disks busy with a snapshot or rollback, the pins | |
//! | [`snapshot`] | chunk sources (image file or block device, checked for change), hooks, reflink clones, the one pipeline, create | |
//! | [`image`] | random-access reads, export, rollback with its locked target | |
//! | [`live`] | live disks' core: the change record, the write path with freeze and copy-before-write, the frozen point in time as a chunk source; served as `DISK/live` by `fs` | knows the store |
//! | [`policy`] | schedules, retention, prune, the mount's runner | |
//! | [`fs`] | the filesystem core without FUSE types: nodes, attrs, handles, control files, the snapshot service, errno at the edge | |
//! | [`fuse`] | the fuser adapter: match, reply, log each error once | holds state |
//! | [`control`] | the `.control` request/response format, shared by mount and CLI | |
//! | [`verify`], [`stats`] | whole-store reads | |
//! | [`rebuild`] | `init --from`: a new local store from a bucket's objects (pack indexes, snapshot manifests) | |
//!
//! # Durability
//!
//! Pack bytes are fsynced before the index entries and the catalog change
//! that reference them commit in one sled transaction; sled is flushed
//! after every commit. A crash leaves the last committed state; the next
//! open cuts uncommitted pack tails. Every chunk read is re-hashed. A store
//! whose packs are in a bucket commits a pack only once the server has
//! confirmed its upload and its index object; a snapshot's manifest follows
//! its commit (store::backend::s3, catalog::manifest).
//!
//! # Locking
//!
//! | lock | held by | protects |
//! |------|---------|----------|
//! | `STORE/lock` (flock) | the one process that opened the store | the whole store |
//! | `Catalog::names` | name checks + catalog writes | snapshot names |
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
pub mod live;
pub mod map;
pub mod modes;
pub mod policy;
pub mod rebuild;
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
