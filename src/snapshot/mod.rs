//! Snapshots: names, the catalog, chunk maps, reading sources, and the
//! create pipeline.

pub mod catalog;
pub mod create;
pub mod map;
pub mod names;
pub mod source;

pub use catalog::{DiskRecord, SnapshotRecord};
pub use create::{create_snapshot, CreateOptions, Progress};
pub use map::{MapReader, MapRoot};
