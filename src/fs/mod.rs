//! The filesystem core: what the mount shows and does, without FUSE types.
//! `fuse.rs` only translates requests into calls here and results into
//! replies, so this core can be driven directly by tests.
//!
//! ```text
//! /                     root: one folder per disk, or per group
//! /.control             runs CLI commands inside the mount (owner only)
//! /GROUP/DISK/          a disk's folder
//! /GROUP/DISK/.create   write a name: take a snapshot (returns when done)
//! /GROUP/DISK/.status   the running snapshot and recent outcomes
//! /GROUP/DISK/NAME      a read-only raw image per accomplished snapshot
//! ```

mod inodes;
mod prefetch;
pub mod scheduler;
pub mod status;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::catalog::names::{check_snapshot_name, shown};
use crate::catalog::{DiskRecord, SnapshotRecord};
use crate::error::Error;
use crate::image::{ImageReader, ReadData};
use crate::repository::Repository;
use crate::snapshot::{create_snapshot, CreateOptions};
use inodes::InodeTable;
pub use inodes::{Node, ROOT_INO};
use prefetch::{Prefetcher, ReadState};
use status::StatusBoard;

/// An errno, with the store error behind it when there is one (logged once
/// at the FUSE boundary).
#[derive(Debug)]
pub struct FsError {
    pub errno: i32,
    pub cause: Option<Error>,
}

impl FsError {
    pub fn new(errno: i32) -> FsError {
        FsError { errno, cause: None }
    }
}

impl From<Error> for FsError {
    fn from(e: Error) -> FsError {
        FsError {
            errno: e.errno(),
            cause: Some(e),
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Directory,
    File,
}

#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    /// 512-byte blocks of non-zero data.
    pub blocks: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
}

pub struct Opened {
    pub fh: u64,
    /// Reads and writes bypass the page cache (control files).
    pub direct_io: bool,
    /// The file never changes: keep its cached pages across opens.
    pub keep_cache: bool,
    /// Writes need not hold the inode lock exclusively (`.create`: a
    /// second writer must reach us, to be told EBUSY, while a snapshot runs).
    pub parallel_writes: bool,
}

/// The size `.create` reports. The kernel holds a FUSE file's inode lock
/// for a whole write unless the file allows parallel direct writes and the
/// write stays below its size; a snapshot name fits well below this.
pub const CREATE_FILE_SIZE: u64 = 4096;

/// The largest request `.control` takes: a command line, as JSON, is far
/// smaller (the kernel caps a whole argv at 2 MiB, usually far less).
pub const MAX_CONTROL_REQUEST: usize = 1 << 20;

/// Marks the handle numbers of `.create` and `.control`, whose requests
/// may run for minutes (see `is_long_running`).
const LONG_RUNNING_FH: u64 = 1 << 63;

/// Runs one CLI request (the raw bytes written to `.control`) and returns
/// the raw response; supplied by the binary.
pub type ControlHandler = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

enum Handle {
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
}

/// The catalog as the mount last read it, rebuilt when the store's
/// generation changes, so listings of many snapshots stay instant.
#[derive(Default)]
struct Catalog {
    generation: Option<u64>,
    disks: Vec<DiskRecord>,
    snapshots: HashMap<String, Vec<SnapshotRecord>>,
}

pub struct MountOptions {
    /// Threads for hashing and compressing during a snapshot.
    pub snapshot_threads: usize,
    /// Threads that read ahead for sequential readers.
    pub prefetch_threads: usize,
    /// Set when the mount goes away: running snapshots stop and leave nothing.
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Default cap on how fast snapshots read their disk, bytes per second.
    pub max_rate: Option<u64>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            snapshot_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            prefetch_threads: 4,
            cancel: None,
            max_rate: None,
        }
    }
}

pub struct SnapFs {
    repo: Arc<Repository>,
    inodes: InodeTable,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    catalog: Mutex<Arc<Catalog>>,
    status: StatusBoard,
    control: ControlHandler,
    prefetcher: Prefetcher,
    options: MountOptions,
    mounted_at: SystemTime,
}

fn ms_to_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    }
}

fn name_str(name: &OsStr) -> FsResult<&str> {
    name.to_str().ok_or(FsError::new(libc::ENOENT))
}

impl SnapFs {
    pub fn new(repo: Arc<Repository>, control: ControlHandler, options: MountOptions) -> SnapFs {
        SnapFs {
            repo,
            inodes: InodeTable::default(),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            catalog: Mutex::new(Arc::new(Catalog::default())),
            status: StatusBoard::default(),
            control,
            prefetcher: Prefetcher::new(options.prefetch_threads),
            options,
            mounted_at: SystemTime::now(),
        }
    }

    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    pub fn status(&self) -> &StatusBoard {
        &self.status
    }

    fn catalog(&self) -> FsResult<Arc<Catalog>> {
        let mut cached = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.repo.catalog().generation();
        if cached.generation != Some(generation) {
            let mut snapshots: HashMap<String, Vec<SnapshotRecord>> = HashMap::new();
            for record in self.repo.catalog().snapshots(None)? {
                snapshots
                    .entry(record.disk.clone())
                    .or_default()
                    .push(record);
            }
            *cached = Arc::new(Catalog {
                generation: Some(generation),
                disks: self.repo.catalog().disks()?,
                snapshots,
            });
        }
        Ok(cached.clone())
    }

    fn find_snapshot(
        &self,
        disk: &str,
        pick: impl Fn(&SnapshotRecord) -> bool,
    ) -> FsResult<Option<SnapshotRecord>> {
        let catalog = self.catalog()?;
        Ok(catalog
            .snapshots
            .get(disk)
            .and_then(|list| list.iter().find(|s| pick(s)).cloned()))
    }

    /// A snapshot by id: from the catalog, or from a handle still open
    /// after the snapshot was deleted.
    fn snapshot_by_id(&self, disk: &str, id: u64) -> FsResult<SnapshotRecord> {
        if let Some(record) = self.find_snapshot(disk, |s| s.id == id)? {
            return Ok(record);
        }
        let handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles
            .values()
            .find_map(|h| match h.as_ref() {
                Handle::Image { reader, .. } if reader.record().id == id => {
                    Some(reader.record().clone())
                }
                _ => None,
            })
            .ok_or(FsError::new(libc::ENOENT))
    }

    fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes.node(ino).ok_or(FsError::new(libc::ENOENT))
    }

    fn child(&self, parent: &Node, name: &str) -> FsResult<Node> {
        let catalog = self.catalog()?;
        let missing = || FsError::new(libc::ENOENT);
        match parent {
            Node::Root => {
                if name == ".control" {
                    return Ok(Node::Control);
                }
                if catalog.disks.iter().any(|d| d.name == name) {
                    return Ok(Node::Disk(name.to_string()));
                }
                let group = format!("{name}/");
                if catalog.disks.iter().any(|d| d.name.starts_with(&group)) {
                    return Ok(Node::Group(name.to_string()));
                }
                Err(missing())
            }
            Node::Group(group) => {
                let full = format!("{group}/{name}");
                if catalog.disks.iter().any(|d| d.name == full) {
                    Ok(Node::Disk(full))
                } else {
                    Err(missing())
                }
            }
            Node::Disk(disk) => match name {
                ".create" => Ok(Node::Create(disk.clone())),
                ".policy" => Ok(Node::Policy(disk.clone())),
                ".status" => Ok(Node::Status(disk.clone())),
                _ => {
                    let record = self
                        .find_snapshot(disk, |s| s.name == name)?
                        .ok_or_else(missing)?;
                    Ok(Node::Snapshot {
                        disk: disk.clone(),
                        id: record.id,
                    })
                }
            },
            _ => Err(FsError::new(libc::ENOTDIR)),
        }
    }

    fn dir_attr(&self, ino: u64) -> Attr {
        Attr {
            ino,
            kind: FileKind::Directory,
            size: 0,
            blocks: 0,
            mtime: self.mounted_at,
            perm: 0o755,
            nlink: 2,
        }
    }

    fn file_attr(&self, ino: u64, perm: u16, size: u64) -> Attr {
        Attr {
            ino,
            kind: FileKind::File,
            size,
            blocks: 0,
            mtime: self.mounted_at,
            perm,
            nlink: 1,
        }
    }

    fn attr_of(&self, ino: u64, node: &Node) -> FsResult<Attr> {
        Ok(match node {
            Node::Root | Node::Group(_) | Node::Disk(_) => self.dir_attr(ino),
            Node::Create(_) => self.file_attr(ino, 0o200, CREATE_FILE_SIZE),
            Node::Policy(disk) => {
                let size = self.policy_text(disk)?.len() as u64;
                self.file_attr(ino, 0o644, size)
            }
            Node::Control => self.file_attr(ino, 0o600, 0),
            Node::Status(disk) => {
                let size = self.status.render(disk).len() as u64;
                self.file_attr(ino, 0o444, size)
            }
            Node::Snapshot { disk, id } => {
                let record = self.snapshot_by_id(disk, *id)?;
                Attr {
                    ino,
                    kind: FileKind::File,
                    size: record.size,
                    blocks: record.nonzero_bytes.div_ceil(512),
                    mtime: ms_to_time(record.created_ms),
                    perm: 0o444,
                    nlink: 1,
                }
            }
        })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let parent = self.node(parent)?;
        let node = self.child(&parent, name_str(name)?)?;
        let ino = self.inodes.ino(&node);
        self.attr_of(ino, &node)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.attr_of(ino, &node)
    }

    /// The entries of a folder, `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> FsResult<Vec<(u64, FileKind, String)>> {
        let node = self.node(ino)?;
        let catalog = self.catalog()?;
        let mut entries = vec![
            (ino, FileKind::Directory, ".".to_string()),
            (ROOT_INO, FileKind::Directory, "..".to_string()),
        ];
        let mut add = |node: Node, kind: FileKind, name: &str| {
            entries.push((self.inodes.ino(&node), kind, name.to_string()));
        };
        match &node {
            Node::Root => {
                add(Node::Control, FileKind::File, ".control");
                let mut groups: Vec<&str> = Vec::new();
                for disk in &catalog.disks {
                    match disk.name.split_once('/') {
                        Some((group, _)) => {
                            if !groups.contains(&group) {
                                groups.push(group);
                                add(Node::Group(group.to_string()), FileKind::Directory, group);
                            }
                        }
                        None => add(
                            Node::Disk(disk.name.clone()),
                            FileKind::Directory,
                            &disk.name,
                        ),
                    }
                }
            }
            Node::Group(group) => {
                let prefix = format!("{group}/");
                for disk in &catalog.disks {
                    if let Some(name) = disk.name.strip_prefix(&prefix) {
                        add(Node::Disk(disk.name.clone()), FileKind::Directory, name);
                    }
                }
            }
            Node::Disk(disk) => {
                add(Node::Create(disk.clone()), FileKind::File, ".create");
                add(Node::Policy(disk.clone()), FileKind::File, ".policy");
                add(Node::Status(disk.clone()), FileKind::File, ".status");
                for record in catalog.snapshots.get(disk).into_iter().flatten() {
                    let node = Node::Snapshot {
                        disk: disk.clone(),
                        id: record.id,
                    };
                    add(node, FileKind::File, &record.name);
                }
            }
            _ => return Err(FsError::new(libc::ENOTDIR)),
        }
        Ok(entries)
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let mut fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if matches!(handle, Handle::Create { .. } | Handle::Control { .. }) {
            fh |= LONG_RUNNING_FH;
        }
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(handle));
        fh
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(FsError::new(libc::EBADF))
    }

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
                    Handle::Text(self.status.render(&disk).into_bytes()),
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
            Node::Root | Node::Group(_) | Node::Disk(_) => {
                return Err(FsError::new(libc::EISDIR));
            }
        };
        let parallel_writes = matches!(handle, Handle::Create { .. });
        Ok(Opened {
            fh: self.add_handle(handle),
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
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<ReadData> {
        let handle = self.handle(fh)?;
        match handle.as_ref() {
            Handle::Image { reader, state } => {
                let data = reader.read_bytes(offset, size as usize).map_err(|e| {
                    let record = reader.record();
                    log::error!(
                        "read of snapshot {} of disk {} at offset {offset} failed: {e}",
                        record.name,
                        record.disk
                    );
                    FsError::new(libc::EIO)
                })?;
                self.prefetcher
                    .on_read(reader, state, offset, data.len() as u64);
                Ok(data)
            }
            Handle::Text(text) => Ok(slice_at(text, offset, size).into()),
            Handle::Control { request, response } => {
                let mut response = response.lock().unwrap_or_else(|e| e.into_inner());
                if response.is_none() {
                    let request = request.lock().unwrap_or_else(|e| e.into_inner());
                    *response = Some((self.control)(&request));
                }
                Ok(slice_at(response.as_deref().unwrap_or_default(), offset, size).into())
            }
            Handle::Policy { disk } => {
                Ok(slice_at(self.policy_text(disk)?.as_bytes(), offset, size).into())
            }
            Handle::Create { .. } => Err(FsError::new(libc::EBADF)),
        }
    }

    pub fn write(&self, fh: u64, data: &[u8]) -> FsResult<u32> {
        let handle = self.handle(fh)?;
        match handle.as_ref() {
            Handle::Create { disk } => {
                self.create_from_write(disk, data)?;
                Ok(data.len() as u32)
            }
            Handle::Policy { disk } => {
                self.policy_from_write(disk, data)?;
                Ok(data.len() as u32)
            }
            Handle::Control { request, response } => {
                {
                    let mut request = request.lock().unwrap_or_else(|e| e.into_inner());
                    // A writer that never stops must not fill the mount's memory.
                    if request.len() + data.len() > MAX_CONTROL_REQUEST {
                        return Err(FsError::new(libc::EFBIG));
                    }
                    request.extend_from_slice(data);
                }
                // Not under the request lock: `read` takes these the other way round.
                *response.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Ok(data.len() as u32)
            }
            _ => Err(FsError::new(libc::EBADF)),
        }
    }

    /// One write to `.create` is one snapshot name (a trailing newline is
    /// dropped); the write returns when the snapshot is accomplished.
    fn create_from_write(&self, disk: &str, data: &[u8]) -> FsResult<()> {
        let text = data.strip_suffix(b"\n").unwrap_or(data);
        let name = match std::str::from_utf8(text) {
            Ok(name) => name,
            Err(_) => {
                self.refuse(disk, &String::from_utf8_lossy(text), "name is not UTF-8");
                return Err(FsError::new(libc::EINVAL));
            }
        };
        if let Err(e) = check_snapshot_name(name) {
            self.refuse(disk, name, &e.to_string());
            return Err(e.into());
        }
        self.take_snapshot(disk, name, false, None)
    }

    /// Takes a snapshot as `.create` and policies do: one per disk at a
    /// time (EBUSY), progress and outcome in `.status`. `max_rate`
    /// overrides the mount's default cap.
    pub fn take_snapshot(
        &self,
        disk: &str,
        name: &str,
        automatic: bool,
        max_rate: Option<u64>,
    ) -> FsResult<()> {
        // Checked and marked at once, so that of two writers racing here
        // one is refused and the running one keeps its progress line.
        if self.repo.running().is_running(disk) || !self.status.try_start(disk, name) {
            self.refuse(
                disk,
                name,
                &format!("a snapshot of disk {disk} is already running"),
            );
            return Err(FsError::new(libc::EBUSY));
        }
        let report = |p: &crate::snapshot::Progress| self.status.progress(disk, p);
        let options = CreateOptions {
            threads: self.options.snapshot_threads,
            progress: Some(&report),
            cancel: self.options.cancel.as_deref(),
            automatic,
            max_rate: max_rate.or(self.options.max_rate),
            ..CreateOptions::default()
        };
        let started = std::time::Instant::now();
        match create_snapshot(&self.repo, disk, name, &options) {
            Ok(record) => {
                let seconds = started.elapsed().as_secs_f64();
                log::info!("snapshot {name} of disk {disk} accomplished in {seconds:.1} s");
                self.status.accomplished(disk, &record, seconds);
                Ok(())
            }
            Err(e) => {
                log::error!("snapshot {name} of disk {disk} failed: {e}");
                self.status.failed(disk, name, &e.to_string());
                Err(e.into())
            }
        }
    }

    /// What `.policy` shows: the policy's settings, or `none`.
    fn policy_text(&self, disk: &str) -> FsResult<String> {
        Ok(match self.repo.catalog().policy(disk)? {
            Some(policy) => format!("{policy}\n"),
            None => "none\n".to_string(),
        })
    }

    /// A write to `.policy` replaces the disk's policy with the settings it
    /// holds (`none` removes it); anything unparsable is EINVAL.
    fn policy_from_write(&self, disk: &str, data: &[u8]) -> FsResult<()> {
        let text = String::from_utf8_lossy(data);
        let text = text.trim();
        let result = if text == "none" {
            self.repo.catalog().remove_policy(disk).map(|_| ())
        } else {
            let mut policy = crate::policy::Policy::default();
            policy
                .apply_text(text)
                .and_then(|()| self.repo.catalog().set_policy(disk, &policy))
        };
        // One line in `.status` and the log, however long or many-lined.
        let text = shown(&text.split_whitespace().collect::<Vec<_>>().join(" "));
        match result {
            Ok(()) => {
                log::info!("policy of disk {disk} set to {text:?}");
                self.status.note(disk, &format!("policy set: {text}"));
                Ok(())
            }
            Err(e) => {
                log::warn!("refused policy {text:?} for disk {disk}: {e}");
                self.status
                    .note(disk, &format!("refused policy {text:?}: {e}"));
                Err(e.into())
            }
        }
    }

    fn refuse(&self, disk: &str, name: &str, why: &str) {
        let name = shown(name);
        log::warn!("refused snapshot {name:?} of disk {disk}: {why}");
        self.status.note(disk, &format!("refused {name:?}: {why}"));
    }

    /// Truncation is allowed only as part of opening a control file with
    /// O_TRUNC; snapshots are read-only.
    pub fn setattr(&self, ino: u64, size: Option<u64>, changes_other: bool) -> FsResult<Attr> {
        let node = self.node(ino)?;
        match &node {
            Node::Snapshot { .. } => return Err(FsError::new(libc::EROFS)),
            Node::Create(_) | Node::Control | Node::Policy(_)
                if !changes_other && matches!(size, None | Some(0)) => {}
            _ => return Err(FsError::new(libc::EPERM)),
        }
        self.attr_of(ino, &node)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        let parent = self.node(parent)?;
        let name = name_str(name)?;
        match self.child(&parent, name)? {
            Node::Snapshot { disk, .. } => {
                self.repo.catalog().remove_snapshot(&disk, name)?;
                log::info!("deleted snapshot {name} of disk {disk}");
                Ok(())
            }
            Node::Group(_) | Node::Disk(_) => Err(FsError::new(libc::EISDIR)),
            _ => Err(FsError::new(libc::EPERM)),
        }
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
    ) -> FsResult<()> {
        let parent_node = self.node(parent)?;
        let name = name_str(name)?;
        match self.child(&parent_node, name)? {
            Node::Snapshot { disk, .. } => {
                // Leaving the folder is refused whatever the new name.
                if parent != new_parent {
                    return Err(FsError::new(libc::EXDEV));
                }
                let new_name = new_name.to_str().ok_or(FsError::new(libc::EINVAL))?;
                check_snapshot_name(new_name)?;
                self.repo.catalog().rename_snapshot(&disk, name, new_name)?;
                log::info!("renamed snapshot {name} of disk {disk} to {new_name}");
                Ok(())
            }
            _ => Err(FsError::new(libc::EPERM)),
        }
    }

    /// SEEK_DATA / SEEK_HOLE over all-zero chunks.
    pub fn lseek(&self, fh: u64, offset: u64, whence: i32) -> FsResult<u64> {
        let handle = self.handle(fh)?;
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

    /// The extended attributes of a node, as (name, value).
    pub fn xattrs(&self, ino: u64) -> FsResult<Vec<(String, String)>> {
        let node = self.node(ino)?;
        let disk_source = |disk: &str| -> FsResult<String> {
            let catalog = self.catalog()?;
            Ok(catalog
                .disks
                .iter()
                .find(|d| d.name == disk)
                .map(|d| d.source.display().to_string())
                .unwrap_or_default())
        };
        Ok(match &node {
            // Who serves this mount, so `snapfs umount` can wait for it.
            Node::Root => vec![
                ("user.snapfs.pid".into(), std::process::id().to_string()),
                (
                    "user.snapfs.store".into(),
                    self.repo.store().root().display().to_string(),
                ),
            ],
            Node::Disk(disk) => vec![
                ("user.snapfs.disk".into(), disk.clone()),
                ("user.snapfs.source".into(), disk_source(disk)?),
            ],
            Node::Snapshot { disk, id } => {
                let s = self.snapshot_by_id(disk, *id)?;
                vec![
                    ("user.snapfs.id".into(), s.id.to_string()),
                    ("user.snapfs.disk".into(), s.disk.clone()),
                    (
                        "user.snapfs.created".into(),
                        crate::units::rfc3339_ms(s.created_ms),
                    ),
                    ("user.snapfs.state".into(), "accomplished".into()),
                    ("user.snapfs.source".into(), s.source.display().to_string()),
                    ("user.snapfs.size".into(), s.size.to_string()),
                    ("user.snapfs.added_bytes".into(), s.added_bytes.to_string()),
                    (
                        "user.snapfs.nonzero_bytes".into(),
                        s.nonzero_bytes.to_string(),
                    ),
                    (
                        "user.snapfs.protected".into(),
                        u8::from(s.protected).to_string(),
                    ),
                ]
            }
            _ => Vec::new(),
        })
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        let name = name.to_str().ok_or(FsError::new(libc::ENODATA))?;
        self.xattrs(ino)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(FsError::new(libc::ENODATA))
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for (name, _) in self.xattrs(ino)? {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// The store filesystem's space, as statvfs reports it.
    pub fn statfs(&self) -> FsResult<libc::statvfs> {
        let path = std::ffi::CString::new(self.repo.store().root().as_os_str().as_encoded_bytes())
            .map_err(|_| FsError::new(libc::EIO))?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(FsError::new(libc::EIO));
        }
        Ok(stat)
    }
}

fn slice_at(data: &[u8], offset: u64, size: u32) -> Vec<u8> {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    data[start..end].to_vec()
}
