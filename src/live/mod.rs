//! Live disks: disks that a VM runs from through snapfs, so that snapfs sees
//! every write. This module is the in-process core; the FUSE `live` file
//! calls it around every write and never touches the backing otherwise.
//!
//! | file | owns | never |
//! |---|---|---|
//! | [`record`] | the persistent change record: which chunks changed since the last snapshot, durable before a write proceeds | reads or writes the backing |
//! | [`freeze`] | [`LiveDisk`]: the write path (guards, marks, copy-before-write), the freeze point, the copies | knows the store |
//! | [`source`] | [`FrozenSource`]: a frozen point in time as a [`ChunkSource`](crate::snapshot::source::ChunkSource) | writes |
//! | [`progressing`] | [`Progressing`]: the snapshot's image file between freeze and commit, reading the frozen content | reads the store |
//! | [`table`] | [`LiveDisks`]: the live disks a process has open, each once | does I/O itself |
//!
//! # The write path and a snapshot
//!
//! ```text
//! write:    LiveDisk::write_guard(range) -- waits while a freeze runs
//!             -> ChangeRecord::before_write (mark; fdatasync only for chunks not yet marked)
//!             -> copy-before-write (only chunks a running snapshot still needs)
//!           pwrite on the backing; drop the guard
//! snapshot: LiveDisk::freeze(parent) -- waits for writes in flight, swaps the marks
//!           Frozen::publish(name) -- the image file reads the frozen content from now on
//!           create_from(.., &frozen.source(), ..) -- reads frozen chunks: copies or backing
//!           Frozen::committed(&record) -- the record now counts from the new snapshot;
//!                                         readers go on from the stored snapshot
//! ```
//!
//! ```ignore
//! let disk = LiveDisk::open(backing, &path, &LiveOptions::new(&store_live_dir, "vm1/system", chunk_size))?;
//! disk.write_at(&buf, offset)?;                  // or: let g = disk.write_guard(offset, len)?; pwrite; drop(g)
//! let parent = repo.catalog().snapshots(Some("vm1/system"))?.last().cloned();
//! let frozen = disk.freeze(parent.as_ref())?;     // the point in time; waits only for writes in flight
//! let record = create_from(&repo, &running, "nightly", &frozen.source(), &options)?;
//! frozen.committed(&record)?;
//! disk.shutdown()?;                              // at unmount: lets the next open trust the record
//! ```
//!
//! # Locking
//!
//! | lock | held by | protects |
//! |---|---|---|
//! | the gate (`freeze::Gate`) | every write guard (shared), a freeze and `shutdown` (exclusive) | the freeze point: no write is half before it |
//! | `ChangeRecord` state | marking chunks not yet marked, freeze, commit, resize | the record file and its bitmaps |
//! | copy stripes (one per chunk group) | a write copying a chunk aside; a snapshot read of that chunk | a chunk's frozen bytes while they are read |
//!
//! Order: gate, then record, then stripe, then the copies' map.

pub mod freeze;
pub mod progressing;
pub mod record;
pub mod source;
pub mod table;

pub use freeze::{CopyStats, Frozen, LiveDisk, LiveOptions, WriteGuard};
pub use progressing::{ProgressRead, Progressing};
pub use record::{BackingIdentity, ChangeRecord, FrozenMarks};
pub use source::FrozenSource;
pub use table::LiveDisks;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// The size of a regular file or block device (lseek to the end works for
/// both; a block device's metadata says 0).
pub(crate) fn backing_size(file: &File) -> std::io::Result<u64> {
    let size = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if size < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size as u64)
}

/// Fills `buf` from `offset`; bytes past the end of the file read as zeros
/// (the backing may be shorter than the frozen size after a shrink).
pub(crate) fn read_zero_filled(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The chunks `offset..offset + len` touches.
pub(crate) fn chunks_of(offset: u64, len: u64, chunk_size: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    offset / chunk_size..(offset + len).div_ceil(chunk_size)
}
