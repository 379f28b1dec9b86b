//! Taking snapshots: chunk sources, the one reading pipeline (also used by
//! rollback), the create step, and the set of disks busy with one.

pub mod create;
pub mod hooks;
pub mod pipeline;
pub mod reflink;
pub mod running;
pub mod source;

pub use create::{create_snapshot, CreateOptions, Progress};
