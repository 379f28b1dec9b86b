//! Open files: the handle table, and open, read, write, lseek and release
//! dispatched on what each handle is. Image handles own their reader and
//! read-ahead state; control files keep their bytes in the handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::prefetch::ReadState;
use super::progressing_file::ProgressingHandle;
use super::{FsError, FsResult, Node, Opened, SnapFs};
use crate::catalog::SnapshotRecord;
use crate::image::{ImageReader, ReadData};
use crate::live::LiveDisk;

/// Marks the handle numbers of `.create` and `.control`, whose requests
/// may run for minutes (see `is_long_running`).
const LONG_RUNNING_FH: u64 = 1 << 63;

pub(super) enum Handle {
    Image {
        reader: Arc<ImageReader>,
        state: Mutex<ReadState>,
    },
    Text(Vec<u8>),
    Create {
        disk: String,
    },
    /// `.policy` opened for writing: each write replaces the policy.
    Policy {
        disk: String,
    },
    Control {
        request: Mutex<Vec<u8>>,
        response: Mutex<Option<Vec<u8>>>,
    },
    /// `live`: the disk itself (see `live_file.rs`).
    Live(Arc<LiveDisk>),
    /// A live disk's snapshot before it is stored (`progressing_file.rs`).
    Progressing(ProgressingHandle),
}

pub(super) struct HandleTable {
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
}

impl Default for HandleTable {
    fn default() -> Self {
        HandleTable {
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }
}

impl HandleTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Handle>>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, handle: Handle) -> u64 {
        let mut fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if matches!(handle, Handle::Create { .. } | Handle::Control { .. }) {
            fh |= LONG_RUNNING_FH;
        }
        self.lock().insert(fh, Arc::new(handle));
        fh
    }

    pub(super) fn get(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::new(libc::EBADF))
    }

    fn remove(&self, fh: u64) {
        self.lock().remove(&fh);
    }

    /// The record of snapshot `id` if an open image still reads it (it may
    /// have been deleted since).
    pub(super) fn open_snapshot(&self, id: u64) -> Option<SnapshotRecord> {
        self.lock().values().find_map(|h| match h.as_ref() {
            Handle::Image { reader, .. } if reader.record().id == id => {
                Some(reader.record().clone())
            }
            _ => None,
        })
    }
}

pub(super) fn slice_at(data: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    data[start..end].to_vec()
}

impl SnapFs {
    /// Opens a file; `flags` are the open(2) flags.
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<Opened> {
        let node = self.node(ino)?;
        let access = flags & libc::O_ACCMODE;
        let writes = access != libc::O_RDONLY;
        let reads = access != libc::O_WRONLY;
        let (handle, direct_io, keep_cache) = match node {
            Node::Snapshot { disk, id } => {
                if writes {
                    return Err(FsError::new(libc::EROFS));
                }
                let record = self.snapshot_by_id(&disk, id)?;
                let reader = Arc::new(ImageReader::new(self.repo.clone(), record));
                let state = Mutex::new(ReadState::default());
                (Handle::Image { reader, state }, false, true)
            }
            Node::Progressing { disk, name } => {
                if writes {
                    return Err(FsError::new(libc::EROFS));
                }
                match self.progressing(&disk, Some(&name)) {
                    // The content never changes: the page cache may keep it.
                    Some(view) => (
                        Handle::Progressing(self.open_progressing(view)),
                        false,
                        true,
                    ),
                    None => {
                        let record = self.stored_by_name(&disk, &name)?;
                        let reader = Arc::new(ImageReader::new(self.repo.clone(), record));
                        let state = Mutex::new(ReadState::default());
                        (Handle::Image { reader, state }, false, true)
                    }
                }
            }
            Node::Policy(disk) => {
                if writes {
                    (Handle::Policy { disk }, true, false)
                } else {
                    (
                        Handle::Text(self.policy_text(&disk)?.into_bytes()),
                        true,
                        false,
                    )
                }
            }
            Node::Status(disk) => {
                if writes {
                    return Err(FsError::new(libc::EACCES));
                }
                (
                    Handle::Text(self.status_text(&disk).into_bytes()),
                    true,
                    false,
                )
            }
            Node::Create(disk) => {
                if reads {
                    return Err(FsError::new(libc::EACCES));
                }
                (Handle::Create { disk }, true, false)
            }
            Node::Control => (
                Handle::Control {
                    request: Mutex::new(Vec::new()),
                    response: Mutex::new(None),
                },
                true,
                false,
            ),
            // Direct I/O: the kernel passes O_DIRECT (QEMU's cache=none)
            // and every write through, so fsync needs no page cache.
            Node::Live(disk) => (Handle::Live(self.live_disk(&disk)?), true, false),
            Node::Root | Node::Group(_) | Node::Disk(_) => {
                return Err(FsError::new(libc::EISDIR));
            }
        };
        let parallel_writes = matches!(handle, Handle::Create { .. } | Handle::Live(_));
        Ok(Opened {
            fh: self.handles.add(handle),
            direct_io,
            keep_cache,
            parallel_writes,
        })
    }

    /// Whether a read or write of `fh` may run for minutes: writes to
    /// `.create` take a snapshot, the first read of `.control` runs a
    /// command.
    pub fn is_long_running(&self, fh: u64) -> bool {
        // Told by the handle number itself: no lookup on every image read.
        fh & LONG_RUNNING_FH != 0
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let handle = self.handles.get(fh)?;
        match handle.as_ref() {
            Handle::Image { reader, state } => {
                // The cause travels to the FUSE edge, which logs it once.
                let data = reader.read_bytes(offset, size as usize).map_err(|e| {
                    let record = reader.record();
                    FsError::from(e).context(format!(
                        "read of snapshot {} of disk {} at offset {offset}",
                        record.name, record.disk
                    ))
                })?;
                self.prefetcher
                    .on_read(reader, state, offset, data.len() as u64);
                Ok(data)
            }
            Handle::Text(text) => Ok(slice_at(text, offset, size).into()),
            Handle::Control { request, response } => {
                Ok(self.control_read(request, response, offset, size).into())
            }
            Handle::Policy { disk } => {
                Ok(slice_at(self.policy_text(disk)?.as_bytes(), offset, size).into())
            }
            Handle::Create { .. } => Err(FsError::new(libc::EBADF)),
            Handle::Live(disk) => self.live_read(disk, offset, size),
            Handle::Progressing(handle) => handle.read(offset, size),
        }
    }

    /// Writes `data` at `offset`; control files take it whole, wherever.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.handles.get(fh)?;
        match handle.as_ref() {
            Handle::Live(disk) => self.live_write(disk, offset, data)?,
            Handle::Create { disk } => self.create_from_write(disk, data)?,
            Handle::Policy { disk } => self.policy_from_write(disk, data)?,
            Handle::Control { request, response } => self.control_write(request, response, data)?,
            _ => return Err(FsError::new(libc::EBADF)),
        }
        Ok(data.len() as u32)
    }

    /// SEEK_DATA / SEEK_HOLE over all-zero chunks.
    pub fn lseek(&self, fh: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let handle = self.handles.get(fh)?;
        if let Handle::Live(disk) = handle.as_ref() {
            return self.live_lseek(disk, offset, whence);
        }
        if let Handle::Progressing(progressing) = handle.as_ref() {
            // Where its holes are is known once it is stored: all data.
            return match whence {
                _ if offset >= progressing.size() => Err(FsError::new(libc::ENXIO)),
                libc::SEEK_DATA => Ok(offset),
                libc::SEEK_HOLE => Ok(progressing.size()),
                _ => Err(FsError::new(libc::EINVAL)),
            };
        }
        let Handle::Image { reader, .. } = handle.as_ref() else {
            return Err(FsError::new(libc::EINVAL));
        };
        if offset >= reader.size() {
            return Err(FsError::new(libc::ENXIO));
        }
        match whence {
            libc::SEEK_DATA => reader.next_data(offset)?.ok_or(FsError::new(libc::ENXIO)),
            libc::SEEK_HOLE => Ok(reader.next_hole(offset)?),
            _ => Err(FsError::new(libc::EINVAL)),
        }
    }
}
