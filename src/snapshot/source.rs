//! Reading a disk's source (a raw image file or a block device): its size,
//! where its data lies (holes of sparse files are skipped), and large
//! positioned reads that do not push the host's page cache out.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn source_error(path: &Path, why: impl Into<String>) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Checks that `path` is a readable image file or block device and returns
/// its absolute path.
pub fn check_source(path: &Path) -> Result<PathBuf> {
    let absolute = path
        .canonicalize()
        .map_err(|e| source_error(path, format!("cannot resolve: {e}")))?;
    Source::open(&absolute)?;
    Ok(absolute)
}

pub struct Source {
    file: File,
    path: PathBuf,
    size: u64,
}

impl Source {
    pub fn open(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| source_error(path, e.to_string()))?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(source_error(path, "not a regular file or block device"));
        }
        let file = File::open(path).map_err(|e| source_error(path, format!("cannot open: {e}")))?;
        let size = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        if size < 0 {
            return Err(source_error(
                path,
                format!("cannot get size: {}", std::io::Error::last_os_error()),
            ));
        }
        // Tell the kernel we read once, front to back.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        Ok(Source {
            file,
            path: path.to_path_buf(),
            size: size as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size now, to notice a source that changed size while read.
    pub fn current_size(&self) -> Result<u64> {
        let size = unsafe { libc::lseek(self.file.as_raw_fd(), 0, libc::SEEK_END) };
        if size < 0 {
            return Err(source_error(
                &self.path,
                format!("cannot get size: {}", std::io::Error::last_os_error()),
            ));
        }
        Ok(size as u64)
    }

    /// The next region holding data at or after `pos`, as (start, end), or
    /// None when only a hole follows. Sources without hole support are all
    /// data.
    pub fn next_data(&self, pos: u64) -> Result<Option<(u64, u64)>> {
        Ok(next_data_region(&self.file, pos, self.size))
    }

    /// Fills `buf` from `offset`; a short read means the source shrank.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                source_error(&self.path, "source shrank while the snapshot was read")
            } else {
                source_error(&self.path, format!("read failed at offset {offset}: {e}"))
            }
        })
    }

    /// Drops pages we just read from the page cache, so that a snapshot
    /// does not evict what the host's workloads keep there.
    pub fn forget_range(&self, offset: u64, len: u64) {
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }
}

/// The next region of `file` (of `size` bytes) holding data at or after
/// `pos`, as (start, end), from SEEK_DATA/SEEK_HOLE; None when only a hole
/// follows. A file without hole support is all data.
pub fn next_data_region(file: &File, pos: u64, size: u64) -> Option<(u64, u64)> {
    if pos >= size {
        return None;
    }
    let fd = file.as_raw_fd();
    let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
    if start < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENXIO) => None,
            _ => Some((pos, size)),
        };
    }
    let start = (start as u64).min(size);
    let end = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_HOLE) };
    let end = if end < 0 {
        size
    } else {
        (end as u64).min(size)
    };
    (start < end).then_some((start, end))
}
