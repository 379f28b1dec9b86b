//! The error type of the library. Variants carry what a person needs to act
//! (disk, snapshot, chunk, path); corruption has its own variant so that no
//! caller can mistake damaged data for an ordinary I/O failure.

use std::io;
use std::path::PathBuf;

use crate::hash::ChunkHash;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error("store {path} is in use by {holder}")]
    Locked { path: PathBuf, holder: String },

    #[error("{path} is not a snapfs store ({why})")]
    NotAStore { path: PathBuf, why: String },

    #[error(
        "store {path} has format version {found}; this snapfs reads format version {expected} only"
    )]
    FormatVersion {
        path: PathBuf,
        found: String,
        expected: u32,
    },

    #[error("a store already exists at {0}")]
    StoreExists(PathBuf),

    #[error("invalid {what} name {name:?}: {why}")]
    InvalidName {
        what: &'static str,
        name: String,
        why: String,
    },

    #[error("no disk named {0}")]
    DiskNotFound(String),

    #[error("disk {0} already exists")]
    DiskExists(String),

    #[error(
        "disk {disk} still has {count} snapshot(s); remove them first or pass --with-snapshots"
    )]
    DiskHasSnapshots { disk: String, count: usize },

    #[error("no snapshot {name} of disk {disk}")]
    SnapshotNotFound { disk: String, name: String },

    #[error("disk {disk} already has a snapshot named {name}")]
    SnapshotExists { disk: String, name: String },

    #[error("a snapshot of disk {0} is already running")]
    Busy(String),

    #[error("snapshot {name} of disk {disk} is protected; unprotect it first")]
    Protected { disk: String, name: String },

    #[error("source {path}: {why}")]
    Source { path: PathBuf, why: String },

    /// The source changed while a snapshot read it.
    #[error(
        "source {path} changed while the snapshot read it ({why}), so the image would have been \
         torn; nothing was kept. Run the VM from a live disk, freeze it around the read with \
         --pre-hook/--post-hook, or keep the image on XFS or btrfs (reflink)"
    )]
    Torn { path: PathBuf, why: String },

    #[error("{what} `{command}` failed: {why}")]
    Hook {
        what: String,
        command: String,
        why: String,
    },

    #[error("corrupt chunk {hash} (pack {pack}, offset {offset}): {why}")]
    Corrupt {
        hash: ChunkHash,
        pack: u64,
        offset: u64,
        why: String,
    },

    #[error("chunk {0} is missing from the store index")]
    MissingChunk(ChunkHash),

    #[error("damaged store metadata: {0}")]
    BadMetadata(String),

    #[error("{0}")]
    Invalid(String),

    #[error("{what} cancelled: {why}")]
    Cancelled {
        what: &'static str,
        why: &'static str,
    },

    /// Not a `source`: the text says all, without sled's own repeated.
    #[error("database: {}", describe_db_error(.0))]
    Db(sled::Error),
}

impl From<sled::Error> for Error {
    fn from(error: sled::Error) -> Error {
        Error::Db(error)
    }
}

/// sled's own text for damage names internal offsets and an empty
/// backtrace; say what it means for the user instead.
fn describe_db_error(error: &sled::Error) -> String {
    match error {
        sled::Error::Corruption { .. } => {
            "the store's database files are damaged (sled read corrupted data)".into()
        }
        other => other.to_string(),
    }
}

impl Error {
    /// True when the error means the store's filesystem ran out of space
    /// (or quota).
    pub fn is_no_space(&self) -> bool {
        let code = match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Db(sled::Error::Io(e)) => e.raw_os_error(),
            _ => None,
        };
        matches!(code, Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
}

/// Adds a sentence of context to an `io::Error`.
pub trait IoContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}
