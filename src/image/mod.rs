//! Reading snapshot images: random access for the mount, streaming export,
//! and rollback (writing an image back onto a disk it locked).

pub mod export;
pub mod reader;
pub mod rollback;
pub mod target;

pub use export::{export, ExportTarget};
pub use reader::{ImageReader, ReadData};
pub use rollback::{rollback, RollbackError, RollbackReport};
pub use target::{Target, TargetKind};
