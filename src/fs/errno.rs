//! errno at the edge: the one place that says which errno the mount answers
//! for a library error. The library's `Error` knows nothing of errno; an
//! `FsError` carries the errno, the cause and where it happened, and the
//! FUSE adapter logs it once when it replies.

use std::fmt;

use crate::error::Error;

/// The errno the filesystem answers for an error.
pub trait ToErrno {
    fn errno(&self) -> i32;
}

/// A full disk and a full quota both mean "no space" to the writer.
fn io_errno(e: &std::io::Error) -> i32 {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => libc::ENOSPC,
        Some(code) => code,
        None => libc::EIO,
    }
}

impl ToErrno for Error {
    fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => io_errno(source),
            Error::Db(sled::Error::Io(e)) => match io_errno(e) {
                libc::ENOSPC => libc::ENOSPC,
                _ => libc::EIO,
            },
            Error::InvalidName { .. } | Error::Invalid(_) => libc::EINVAL,
            Error::DiskNotFound(_) | Error::SnapshotNotFound { .. } => libc::ENOENT,
            Error::DiskExists(_) | Error::SnapshotExists { .. } | Error::StoreExists(_) => {
                libc::EEXIST
            }
            Error::Busy(_) | Error::Locked { .. } => libc::EBUSY,
            Error::DiskHasSnapshots { .. } => libc::ENOTEMPTY,
            Error::Protected { .. } => libc::EPERM,
            Error::Cancelled { .. } => libc::ECANCELED,
            // Not now: the disk changed while it was read; a retry may do.
            Error::Torn { .. } => libc::EAGAIN,
            _ => libc::EIO,
        }
    }
}

/// An errno, with the error behind it when there is one and what the
/// request was doing (disk, snapshot, offset).
#[derive(Debug)]
pub struct FsError {
    pub errno: i32,
    pub cause: Option<Error>,
    pub context: Option<String>,
}

impl FsError {
    pub fn new(errno: i32) -> FsError {
        FsError {
            errno,
            cause: None,
            context: None,
        }
    }

    /// Says what the request was doing when it failed.
    pub fn context(mut self, context: impl Into<String>) -> FsError {
        self.context = Some(context.into());
        self
    }
}

impl ToErrno for FsError {
    fn errno(&self) -> i32 {
        self.errno
    }
}

impl From<Error> for FsError {
    fn from(e: Error) -> FsError {
        FsError {
            errno: e.errno(),
            cause: Some(e),
            context: None,
        }
    }
}

impl From<std::io::Error> for FsError {
    /// A system call's own error, mapped as the library's I/O errors are.
    fn from(e: std::io::Error) -> FsError {
        FsError::new(io_errno(&e))
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(context) = &self.context {
            write!(f, "{context}: ")?;
        }
        match &self.cause {
            Some(cause) => write!(f, "{cause}"),
            None => write!(f, "{}", std::io::Error::from_raw_os_error(self.errno)),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
