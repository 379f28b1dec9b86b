//! What `stat`, `getfattr` and `df` see: attributes of every node, the
//! extended attributes of the root, disk folders and snapshots, and the
//! store filesystem's space.

use std::ffi::OsStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Attr, FileKind, FsError, FsResult, Node, SnapFs, CREATE_FILE_SIZE};

pub(super) fn ms_to_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    }
}

impl SnapFs {
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

    pub(super) fn attr_of(&self, ino: u64, node: &Node) -> FsResult<Attr> {
        Ok(match node {
            Node::Root | Node::Group(_) | Node::Disk(_) => self.dir_attr(ino),
            Node::Create(_) => self.file_attr(ino, 0o200, CREATE_FILE_SIZE),
            Node::Policy(disk) => {
                let size = self.policy_text(disk)?.len() as u64;
                self.file_attr(ino, 0o644, size)
            }
            Node::Control => self.file_attr(ino, 0o600, 0),
            Node::Live(disk) => {
                let live = self.live_disk(disk)?;
                let mut attr = self.file_attr(ino, 0o600, live.size());
                attr.blocks = self.live_blocks(&live);
                attr
            }
            Node::Status(disk) => {
                let size = self.status_text(disk).len() as u64;
                self.file_attr(ino, 0o444, size)
            }
            Node::Progressing { disk, name } => match self.progressing(disk, Some(name)) {
                Some(view) => self.progressing_attr(ino, &view),
                None => {
                    // Stored since: the stored snapshot's attributes.
                    let record = self.stored_by_name(disk, name)?;
                    return self
                        .attr_of(
                            ino,
                            &Node::Snapshot {
                                disk: disk.clone(),
                                id: record.id,
                            },
                        )
                        .map(|attr| Attr { ino, ..attr });
                }
            },
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

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let node = self.node(ino)?;
        self.attr_of(ino, &node)
    }

    /// Truncation is allowed only as part of opening a control file with
    /// O_TRUNC; snapshots are read-only.
    pub fn setattr(&self, ino: u64, size: Option<u64>, changes_other: bool) -> FsResult<Attr> {
        let node = self.node(ino)?;
        match &node {
            Node::Live(disk) if !changes_other => {
                if let Some(size) = size {
                    self.live_disk(disk)?.set_len(size)?;
                }
            }
            Node::Snapshot { .. } | Node::Progressing { .. } => {
                return Err(FsError::new(libc::EROFS))
            }
            Node::Create(_) | Node::Control | Node::Policy(_)
                if !changes_other && matches!(size, None | Some(0)) => {}
            _ => return Err(FsError::new(libc::EPERM)),
        }
        self.attr_of(ino, &node)
    }

    /// The extended attributes of a node, as (name, value).
    pub fn xattrs(&self, ino: u64) -> FsResult<Vec<(String, String)>> {
        let node = self.node(ino)?;
        let disk_source = |disk: &str| -> FsResult<String> {
            let catalog = self.catalog.get(&self.repo)?;
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
            Node::Disk(disk) => {
                let mut attrs = vec![
                    ("user.snapfs.disk".into(), disk.clone()),
                    ("user.snapfs.source".into(), disk_source(disk)?),
                    // `.status` for programs (see `status::StatusReport`).
                    ("user.snapfs.status".into(), self.status().report_json(disk)),
                ];
                attrs.extend(self.live_xattrs(disk)?);
                attrs
            }
            Node::Progressing { disk, name } => match self.progressing(disk, Some(name)) {
                Some(view) => self.progressing_xattrs(disk, &view),
                None => {
                    let record = self.stored_by_name(disk, name)?;
                    let node = Node::Snapshot {
                        disk: disk.clone(),
                        id: record.id,
                    };
                    return self.xattrs(self.inodes.ino(&node));
                }
            },
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
                    (
                        "user.snapfs.method".into(),
                        s.method.map_or("unknown".into(), |m| m.to_string()),
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
