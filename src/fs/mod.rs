//! The filesystem core: what the mount shows and does, without FUSE types.
//! `fuse.rs` only translates requests into calls here and results into
//! replies, so this core can be driven directly by tests
//! (`tests/fs_core.rs`).
//!
//! ```text
//! /                     root: one folder per disk, or per group
//! /.control             runs CLI commands inside the mount (owner only)
//! /GROUP/DISK/          a disk's folder
//! /GROUP/DISK/.create   write a name: take a snapshot (returns when done;
//!                       for a live disk, at the freeze)
//! /GROUP/DISK/.policy   the disk's policy; write settings to change it
//! /GROUP/DISK/.status   the running snapshot and recent outcomes
//! /GROUP/DISK/live      a live disk itself, read-write
//! /GROUP/DISK/NAME      a read-only raw image per accomplished snapshot
//! ```
//!
//! One file per job, each an `impl SnapFs` block or a type of its own:
//!
//! | file | job |
//! |------|-----|
//! | `nodes.rs` + `inodes.rs` | names to nodes, listing, unlink and rename |
//! | `attrs.rs` | stat attributes, xattrs, statfs |
//! | `handles.rs` | the handle table; open, read, write, lseek, release |
//! | `live_file.rs` | `DISK/live` of a live disk: I/O through its `LiveDisk` |
//! | `progressing_file.rs` | a live disk's snapshot readable from its freeze, before it is stored |
//! | `control_files.rs` | `.create`, `.policy` and `.control` contents |
//! | `service.rs` | the snapshot service: the one "running" check, `.status` |
//! | `status.rs` | what `.status` and `user.snapfs.status` show |
//! | `cache.rs` | the catalog as last read, per generation |
//! | `prefetch.rs` | read-ahead for sequential readers |
//! | `errno.rs` | library errors to errno, with their context |

mod attrs;
mod cache;
mod control_files;
pub mod errno;
mod handles;
mod inodes;
mod live_file;
mod nodes;
mod prefetch;
mod progressing_file;
pub mod service;
pub mod status;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use crate::repository::Repository;
use cache::CatalogCache;
pub use control_files::{ControlHandler, CREATE_FILE_SIZE};
pub use errno::{FsError, FsResult, ToErrno};
use handles::HandleTable;
use inodes::InodeTable;
pub use inodes::{Node, ROOT_INO};
use prefetch::Prefetcher;
use service::SnapshotService;
use status::StatusBoard;

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

pub struct MountOptions {
    /// Threads for hashing and compressing during a snapshot.
    pub snapshot_threads: usize,
    /// Threads that read ahead for sequential readers.
    pub prefetch_threads: usize,
    /// Set when the mount goes away: running snapshots stop and leave nothing.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Default cap on how fast snapshots read their disk, bytes per second.
    pub max_rate: Option<u64>,
    /// Default hooks around a snapshot's read (a policy's own win).
    pub hooks: crate::snapshot::hooks::Hooks,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            snapshot_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            prefetch_threads: 4,
            cancel: None,
            max_rate: None,
            hooks: Default::default(),
        }
    }
}

pub struct SnapFs {
    repo: Arc<Repository>,
    inodes: InodeTable,
    handles: HandleTable,
    catalog: CatalogCache,
    service: Arc<SnapshotService>,
    control: ControlHandler,
    prefetcher: Prefetcher,
    mounted_at: SystemTime,
}

impl SnapFs {
    pub fn new(repo: Arc<Repository>, control: ControlHandler, options: MountOptions) -> SnapFs {
        let fs = SnapFs {
            inodes: InodeTable::default(),
            handles: HandleTable::default(),
            catalog: CatalogCache::default(),
            prefetcher: Prefetcher::new(options.prefetch_threads),
            service: Arc::new(SnapshotService::new(repo.clone(), options)),
            repo,
            control,
            mounted_at: SystemTime::now(),
        };
        fs.open_live_disks();
        fs
    }

    pub fn repo(&self) -> &Arc<Repository> {
        &self.repo
    }

    /// The snapshot service that `.create` uses; the policy runner takes
    /// its snapshots through it too.
    pub fn service(&self) -> &Arc<SnapshotService> {
        &self.service
    }

    pub fn status(&self) -> &StatusBoard {
        self.service.status()
    }
}
