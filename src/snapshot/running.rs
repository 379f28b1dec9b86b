//! The disks that a snapshot or a rollback is working on right now: one at
//! a time per disk, whoever asks (`.create`, a policy, the CLI through the
//! mount's `.control`). This set is the only place that says "busy".

use std::collections::HashSet;
use std::sync::Mutex;

use crate::error::{Error, Result};

#[derive(Default)]
pub struct RunningDisks {
    disks: Mutex<HashSet<String>>,
}

/// Marks a disk busy until dropped.
pub struct RunningGuard<'r> {
    set: &'r RunningDisks,
    disk: String,
}

impl RunningDisks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.disks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `disk` busy, or fails with `Busy` if something runs on it.
    pub fn start(&self, disk: &str) -> Result<RunningGuard<'_>> {
        if !self.lock().insert(disk.to_string()) {
            return Err(Error::Busy(disk.to_string()));
        }
        Ok(RunningGuard {
            set: self,
            disk: disk.to_string(),
        })
    }

    pub fn is_running(&self, disk: &str) -> bool {
        self.lock().contains(disk)
    }
}

impl RunningGuard<'_> {
    pub fn disk(&self) -> &str {
        &self.disk
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.disk);
    }
}
