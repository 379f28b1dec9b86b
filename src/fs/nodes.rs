//! Names to nodes: what each folder holds, lookups, listings, and the two
//! namespace changes a user may make (`rm` and `mv` of a snapshot).

use std::ffi::OsStr;

use super::{Attr, FileKind, FsError, FsResult, Node, SnapFs, ROOT_INO};
use crate::catalog::names::{check_snapshot_name, LIVE_FILE};
use crate::catalog::SnapshotRecord;

fn name_str(name: &OsStr) -> FsResult<&str> {
    name.to_str().ok_or(FsError::new(libc::ENOENT))
}

fn missing() -> FsError {
    FsError::new(libc::ENOENT)
}

impl SnapFs {
    pub(super) fn node(&self, ino: u64) -> FsResult<Node> {
        self.inodes.node(ino).ok_or_else(missing)
    }

    /// A snapshot by id: from the catalog, or from a handle still open
    /// after the snapshot was deleted.
    pub(super) fn snapshot_by_id(&self, disk: &str, id: u64) -> FsResult<SnapshotRecord> {
        let catalog = self.catalog.get(&self.repo)?;
        if let Some(record) = catalog.find_snapshot(disk, |s| s.id == id) {
            return Ok(record);
        }
        self.handles.open_snapshot(id).ok_or_else(missing)
    }

    /// A snapshot by name in the catalog (a progressing one once stored).
    pub(super) fn stored_by_name(&self, disk: &str, name: &str) -> FsResult<SnapshotRecord> {
        let catalog = self.catalog.get(&self.repo)?;
        catalog
            .find_snapshot(disk, |s| s.name == name)
            .ok_or_else(missing)
    }

    fn child(&self, parent: &Node, name: &str) -> FsResult<Node> {
        let catalog = self.catalog.get(&self.repo)?;
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
                LIVE_FILE if catalog.disks.iter().any(|d| d.name == *disk && d.live) => {
                    Ok(Node::Live(disk.clone()))
                }
                _ => {
                    if let Some(record) = catalog.find_snapshot(disk, |s| s.name == name) {
                        return Ok(Node::Snapshot {
                            disk: disk.clone(),
                            id: record.id,
                        });
                    }
                    self.progressing(disk, Some(name))
                        .map(|_| Node::Progressing {
                            disk: disk.clone(),
                            name: name.to_string(),
                        })
                        .ok_or_else(missing)
                }
            },
            _ => Err(FsError::new(libc::ENOTDIR)),
        }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        let parent = self.node(parent)?;
        let node = self.child(&parent, name_str(name)?)?;
        let ino = self.inodes.ino(&node);
        self.attr_of(ino, &node)
    }

    /// The entries of a folder, `.` and `..` first.
    pub fn readdir(&self, ino: u64) -> FsResult<Vec<(u64, FileKind, String)>> {
        let node = self.node(ino)?;
        let catalog = self.catalog.get(&self.repo)?;
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
                if catalog.disks.iter().any(|d| d.name == *disk && d.live) {
                    add(Node::Live(disk.clone()), FileKind::File, LIVE_FILE);
                }
                let snapshots = catalog.snapshots.get(disk);
                for record in snapshots.into_iter().flatten() {
                    let node = Node::Snapshot {
                        disk: disk.clone(),
                        id: record.id,
                    };
                    add(node, FileKind::File, &record.name);
                }
                // Listed once: a stored one is in the catalog already.
                if let Some(view) = self.progressing(disk, None) {
                    let stored = snapshots.is_some_and(|s| s.iter().any(|r| r.name == view.name()));
                    if !stored {
                        let node = Node::Progressing {
                            disk: disk.clone(),
                            name: view.name().to_string(),
                        };
                        add(node, FileKind::File, view.name());
                    }
                }
            }
            _ => return Err(FsError::new(libc::ENOTDIR)),
        }
        Ok(entries)
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
            // Not stored yet: nothing to delete; EBUSY says "wait".
            Node::Progressing { .. } => Err(FsError::new(libc::EBUSY)),
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
}
