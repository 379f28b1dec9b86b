//! Inode numbers for the nodes of the mount. A node keeps its number for
//! the life of the mount; snapshots are keyed by id, so a renamed snapshot
//! keeps its inode.

use std::collections::HashMap;
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    /// A folder holding the disks `group/...`.
    Group(String),
    /// A disk's folder.
    Disk(String),
    /// `DISK/.create`: write a name to take a snapshot.
    Create(String),
    /// `DISK/.policy`: the disk's policy as text; write settings to change it.
    Policy(String),
    /// `DISK/.status`: progress and recent outcomes.
    Status(String),
    /// `DISK/live`: a live disk itself, read-write.
    Live(String),
    /// `/.control`: runs CLI commands inside the mount.
    Control,
    /// A snapshot image file.
    Snapshot {
        disk: String,
        id: u64,
    },
    /// A live disk's snapshot between its freeze and its commit, by name
    /// (it has no catalog id yet).
    Progressing {
        disk: String,
        name: String,
    },
}

#[derive(Default)]
struct Table {
    by_node: HashMap<Node, u64>,
    by_ino: HashMap<u64, Node>,
    next: u64,
}

pub struct InodeTable {
    table: Mutex<Table>,
}

impl Default for InodeTable {
    fn default() -> Self {
        let mut table = Table {
            next: ROOT_INO + 1,
            ..Table::default()
        };
        table.by_node.insert(Node::Root, ROOT_INO);
        table.by_ino.insert(ROOT_INO, Node::Root);
        InodeTable {
            table: Mutex::new(table),
        }
    }
}

impl InodeTable {
    pub fn ino(&self, node: &Node) -> u64 {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ino) = table.by_node.get(node) {
            return *ino;
        }
        let ino = table.next;
        table.next += 1;
        table.by_node.insert(node.clone(), ino);
        table.by_ino.insert(ino, node.clone());
        ino
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_ino
            .get(&ino)
            .cloned()
    }
}
