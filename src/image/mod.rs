//! Reading snapshot images: random access for the mount, streaming export.

pub mod export;
pub mod reader;

pub use export::{export, ExportTarget};
pub use reader::{ImageReader, ReadData};
