//! The store lock: one process owns a store at a time. The lock file names
//! its holder (pid, and the mountpoint when the holder is a mount) so that a
//! second process can say who holds it, or talk to the mount instead.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

pub struct StoreLock {
    file: File,
}

/// Who holds a store, as written in its lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub mountpoint: Option<PathBuf>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mountpoint {
            Some(mnt) => write!(f, "pid {} (snapfs mount {})", self.pid, mnt.display()),
            None => write!(f, "pid {}", self.pid),
        }
    }
}

impl Holder {
    fn parse(text: &str) -> Option<Holder> {
        let mut pid = None;
        let mut mountpoint = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("pid ") {
                pid = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("mount ") {
                mountpoint = Some(PathBuf::from(v));
            }
        }
        Some(Holder {
            pid: pid?,
            mountpoint,
        })
    }
}

pub fn lock_path(store: &Path) -> PathBuf {
    store.join("lock")
}

impl StoreLock {
    /// Takes the lock or fails with `Error::Locked` naming the holder.
    pub fn acquire(store: &Path) -> Result<StoreLock> {
        let path = lock_path(store);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .context(|| format!("opening lock {}", path.display()))?;
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = read_holder(store)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "another process".into());
                return Err(Error::Locked {
                    path: store.to_path_buf(),
                    holder,
                });
            }
            return Err(Error::Io {
                context: format!("locking {}", path.display()),
                source: err,
            });
        }
        let mut lock = StoreLock { file };
        lock.write_holder(None)?;
        Ok(lock)
    }

    /// Records in the lock file that this process serves a mount.
    pub fn write_holder(&mut self, mountpoint: Option<&Path>) -> Result<()> {
        let mut text = format!("pid {}\n", std::process::id());
        if let Some(mnt) = mountpoint {
            text.push_str(&format!("mount {}\n", mnt.display()));
        }
        self.file
            .set_len(0)
            .and_then(|_| self.file.seek(SeekFrom::Start(0)))
            .and_then(|_| self.file.write_all(text.as_bytes()))
            .context(|| "writing the lock file".into())
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Leave no stale holder behind; the flock itself ends with the fd.
        let _ = self.file.set_len(0);
    }
}

/// Reads who holds the store, if anyone wrote it.
pub fn read_holder(store: &Path) -> Option<Holder> {
    let mut text = String::new();
    File::open(lock_path(store))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    Holder::parse(&text)
}

/// Whether some live process holds the store's lock right now.
pub fn is_locked(store: &Path) -> bool {
    let Ok(file) = File::open(lock_path(store)) else {
        return false;
    };
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_parse() {
        let h = Holder::parse("pid 42\nmount /mnt/snap\n").unwrap();
        assert_eq!(h.pid, 42);
        assert_eq!(h.mountpoint.as_deref(), Some(Path::new("/mnt/snap")));
        assert!(Holder::parse("garbage").is_none());
    }
}
