//! The live disks one process has open: each at most once, because two
//! `LiveDisk`s on one change record would each trust marks the other
//! changes. The mount and a CLI command on an unmounted store both reach
//! them through `Repository::live_disk`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{LiveDisk, LiveOptions};
use crate::catalog::DiskRecord;
use crate::error::{Error, IoContext, Result};

/// Where change records and spilled copies live: `STORE/live/`.
pub fn live_dir(store_root: &Path) -> PathBuf {
    store_root.join("live")
}

#[derive(Default)]
pub struct LiveDisks {
    open: Mutex<HashMap<String, Arc<LiveDisk>>>,
}

impl LiveDisks {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveDisk>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open `LiveDisk` of `disk`, opened on first use.
    pub fn get(
        &self,
        store_root: &Path,
        chunk_size: u64,
        disk: &DiskRecord,
    ) -> Result<Arc<LiveDisk>> {
        if !disk.live {
            return Err(Error::Invalid(format!("disk {} is not live", disk.name)));
        }
        let mut open = self.lock();
        if let Some(live) = open.get(&disk.name) {
            if live.path() == disk.source {
                return Ok(live.clone());
            }
            // The disk was removed and added again with another backing.
            if let Some(old) = open.remove(&disk.name) {
                old.shutdown()?;
            }
        }
        let dir = live_dir(store_root);
        crate::modes::create_private_dir(&dir)
            .context(|| format!("cannot create {}", dir.display()))?;
        let backing = File::options()
            .read(true)
            .write(true)
            .open(&disk.source)
            .context(|| {
                format!(
                    "cannot open live disk {} ({})",
                    disk.name,
                    disk.source.display()
                )
            })?;
        let options = LiveOptions::new(&dir, &disk.name, chunk_size);
        let live = LiveDisk::open(Arc::new(backing), &disk.source, &options)?;
        open.insert(disk.name.clone(), live.clone());
        Ok(live)
    }

    /// The open `LiveDisk` of `name`, if this process opened it.
    pub fn opened(&self, name: &str) -> Option<Arc<LiveDisk>> {
        self.lock().get(name).cloned()
    }

    /// Shuts `name` down and forgets it, if it is open (its disk is
    /// being removed).
    pub fn close(&self, name: &str) -> Result<()> {
        let disk = self.lock().remove(name);
        match disk {
            Some(disk) => disk.shutdown(),
            None => Ok(()),
        }
    }

    /// Shuts every open live disk down (durable, record marked clean) and
    /// forgets it; the first error is returned, every disk is tried.
    pub fn shutdown_all(&self) -> Result<()> {
        let disks: Vec<_> = self.lock().drain().collect();
        let mut first = Ok(());
        for (name, disk) in disks {
            if let Err(e) = disk.shutdown() {
                log::error!("cannot shut live disk {name} down cleanly: {e}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for LiveDisks {
    fn drop(&mut self) {
        let _ = self.shutdown_all();
    }
}
