//! Where a snapshot's bytes come from. A [`ChunkSource`] says how large the
//! disk is, which byte ranges to read, what lies outside them, and reads;
//! the pipeline asks nothing else. [`ImageSource`] is a raw image file or a
//! block device read whole (holes of sparse files skipped); a live disk's
//! changed chunks are another source.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::catalog::SnapshotRecord;
use crate::error::{Error, Result};
use crate::map::MapRoot;

/// What the chunks outside a source's ranges hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unread {
    /// All zeros (the holes of a sparse file).
    Zeros,
    /// What the parent snapshot holds there (chunks unchanged since it);
    /// zeros past its end. A chunk whose length changed with the disk's
    /// size (the parent's or the new last chunk) must be read.
    SameAs(Parent),
}

/// What a snapshot built on a parent needs to know of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub map: MapRoot,
    pub size: u64,
    pub nonzero_bytes: u64,
}

impl From<&SnapshotRecord> for Parent {
    fn from(record: &SnapshotRecord) -> Parent {
        Parent {
            map: record.map,
            size: record.size,
            nonzero_bytes: record.nonzero_bytes,
        }
    }
}

pub trait ChunkSource: Sync {
    /// The source as messages name it.
    fn path(&self) -> &Path;

    /// Bytes of the disk.
    fn size(&self) -> u64;

    /// The next range `(start, end)` to read at or after `pos`, or None
    /// when nothing but unread bytes follow.
    fn next_range(&self, pos: u64) -> Result<Option<(u64, u64)>>;

    /// What lies outside the ranges.
    fn unread(&self) -> Unread {
        Unread::Zeros
    }

    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Bytes the pipeline has read and will not ask for again.
    fn done_with(&self, _offset: u64, _len: u64) {}

    /// Called once before the first read.
    fn before_read(&self) -> Result<()> {
        Ok(())
    }

    /// Fails if the source changed under the read: what was read would
    /// then be no point in time (a torn image).
    fn check_after_read(&self) -> Result<()> {
        Ok(())
    }
}

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
    ImageSource::open(&absolute)?;
    Ok(absolute)
}

/// A raw image file or block device, read whole but for the holes of a
/// sparse file, in large reads that do not push the host's page cache out.
/// A snapshot of one refuses to keep what it read if the source changed
/// meanwhile (see `SourceState`).
pub struct ImageSource {
    file: File,
    path: PathBuf,
    size: u64,
    /// Read for a snapshot: drop read pages from the page cache (a snapshot
    /// reads a disk once) and watch for changes.
    for_snapshot: bool,
    before: std::sync::Mutex<Option<SourceState>>,
}

impl ImageSource {
    pub fn open(path: &Path) -> Result<ImageSource> {
        let meta = std::fs::metadata(path).map_err(|e| source_error(path, e.to_string()))?;
        let kind = meta.file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(source_error(path, "not a regular file or block device"));
        }
        let file = File::open(path).map_err(|e| source_error(path, format!("cannot open: {e}")))?;
        let size = file_size(&file, path)?;
        // Tell the kernel we read once, front to back.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        Ok(ImageSource {
            file,
            path: path.to_path_buf(),
            size,
            for_snapshot: true,
            before: Default::default(),
        })
    }

    /// The first `size` bytes of an open file (a rollback's target, which
    /// it is about to write: its pages stay cached, and it changes).
    pub fn of_file(file: File, path: &Path, size: u64) -> ImageSource {
        ImageSource {
            file,
            path: path.to_path_buf(),
            size,
            for_snapshot: false,
            before: Default::default(),
        }
    }

    fn state(&self) -> Result<SourceState> {
        SourceState::of(&self.file, &self.path)
            .map_err(|e| source_error(&self.path, format!("cannot tell whether it changed: {e}")))
    }
}

impl ChunkSource for ImageSource {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.size
    }

    /// The data regions; a source without hole support is all data.
    fn next_range(&self, pos: u64) -> Result<Option<(u64, u64)>> {
        Ok(next_data_region(&self.file, pos, self.size))
    }

    /// A short read means the source shrank.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
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
    fn done_with(&self, offset: u64, len: u64) {
        if !self.for_snapshot {
            return;
        }
        unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            );
        }
    }

    fn before_read(&self) -> Result<()> {
        if self.for_snapshot {
            *self.before.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.state()?);
        }
        Ok(())
    }

    fn check_after_read(&self) -> Result<()> {
        if file_size(&self.file, &self.path)? < self.size {
            return Err(source_error(
                &self.path,
                "source shrank while the snapshot was read",
            ));
        }
        let before = self.before.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(before) = before else {
            return Ok(());
        };
        let after = self.state()?;
        match before.changed_to(&after) {
            Some(why) => Err(Error::Torn {
                path: self.path.clone(),
                why,
            }),
            None => Ok(()),
        }
    }
}

/// What tells whether a source changed between two looks. A file: which
/// inode its path names, its size and its modification and change times
/// (nanoseconds; the kernel gives a fine-grained time to a change that
/// follows a look). A block device: the same of its device node (writes
/// through it update its times) and the write counters of the device in
/// /sys, after flushing its page cache so that buffered writes by others
/// reach them. Not seen: writes by another host to a shared device, and
/// writes made below the block layer.
#[derive(Debug, PartialEq, Eq)]
struct SourceState {
    path_ino: (u64, u64),
    file_ino: (u64, u64),
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    /// writes completed (flushes left out), sectors written, sectors
    /// discarded, writes in flight.
    device_writes: Option<[u64; 4]>,
}

impl SourceState {
    fn of(file: &File, path: &Path) -> std::io::Result<SourceState> {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata()?;
        let is_device = meta.file_type().is_block_device();
        if is_device {
            // Dirty pages of the device, whoever wrote them, go out now
            // (the counters below then count them).
            file.sync_data()?;
        }
        let named = std::fs::metadata(path)?;
        let device_writes = if is_device {
            Some(device_write_counters(meta.rdev())?)
        } else {
            None
        };
        Ok(SourceState {
            path_ino: (named.dev(), named.ino()),
            file_ino: (meta.dev(), meta.ino()),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            device_writes,
        })
    }

    /// Why `self` and `later` differ, or None when nothing changed.
    fn changed_to(&self, later: &SourceState) -> Option<String> {
        if later.path_ino != later.file_ino {
            return Some("its path now names another file".into());
        }
        if later.size != self.size {
            return Some(format!("size {} became {}", self.size, later.size));
        }
        if later.mtime != self.mtime || later.ctime != self.ctime {
            return Some("it was modified".into());
        }
        match (self.device_writes, later.device_writes) {
            (Some(before), Some(after)) if before != after || after[3] != 0 => {
                Some("the device was written".into())
            }
            _ => None,
        }
    }
}

/// The write counters of block device `rdev` (see Documentation/block/stat.rst).
fn device_write_counters(rdev: u64) -> std::io::Result<[u64; 4]> {
    let dir = format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev));
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let fields: Vec<u64> = stat
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    let inflight = std::fs::read_to_string(format!("{dir}/inflight")).unwrap_or_default();
    let writes_in_flight = inflight
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    // A flush (ours too) counts as a write of no sectors: leave it out.
    let writes = field(4).saturating_sub(field(15));
    Ok([writes, field(6), field(13), writes_in_flight])
}

/// The size of a file or block device (lseek to the end works for both).
fn file_size(file: &File, path: &Path) -> Result<u64> {
    let size = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if size < 0 {
        return Err(source_error(
            path,
            format!("cannot get size: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(size as u64)
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
