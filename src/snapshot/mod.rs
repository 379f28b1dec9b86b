//! Taking snapshots: reading sources, the create pipeline, and the set of
//! disks busy with one.

pub mod create;
pub mod running;
pub mod source;

pub use create::{create_snapshot, CreateOptions, Progress};
