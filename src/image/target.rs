//! The file or block device a rollback writes: opened read-write, locked
//! for as long as it is held, and refused while anyone else may write it.
//!
//! Checks, in order (each names who holds the target when it can):
//! - a block device is opened with `O_EXCL`: the kernel refuses it while a
//!   filesystem on it is mounted or another exclusive user (LVM, md) holds it;
//! - a non-blocking exclusive `flock` on the target;
//! - an OFD write lock on the whole target (`F_OFD_SETLK`): qemu holds OFD
//!   locks on the images of running VMs, and POSIX `fcntl` locks conflict
//!   with it too;
//! - `/proc/*/fdinfo`: another process with a descriptor open for writing
//!   on the same file (same device and inode) or the same block device;
//! - `/sys/block/loop*`: a loop device attached read-write to the file.
//!
//! Both locks belong to the open file description, so they last until the
//! `Target` is dropped. A program that writes without taking any lock and
//! starts after these checks cannot be stopped; that is what the locks are
//! for.

use std::fs::{self, File, Metadata, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::rollback::RollbackError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    File,
    BlockDevice,
}

/// An open, locked rollback target.
pub struct Target {
    file: File,
    path: PathBuf,
    kind: TargetKind,
    size: u64,
    created: bool,
}

impl Target {
    /// Opens `path` for writing (creating a missing regular file when
    /// `create` is set), locks it, and refuses it while another process or
    /// the kernel may write it.
    pub fn open(path: &Path, create: bool) -> Result<Target, RollbackError> {
        let (meta, created) = match fs::metadata(path) {
            Ok(meta) => (meta, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .and_then(|file| crate::modes::give_user_mode(&file))
                    .map_err(|e| target_error(path, format!("cannot create: {e}")))?;
                let meta = fs::metadata(path)
                    .map_err(|e| target_error(path, format!("cannot stat: {e}")))?;
                (meta, true)
            }
            Err(e) => return Err(target_error(path, e.to_string())),
        };
        let result = Target::open_existing(path, &meta, created);
        if result.is_err() && created {
            let _ = fs::remove_file(path);
        }
        result
    }

    fn open_existing(path: &Path, meta: &Metadata, created: bool) -> Result<Target, RollbackError> {
        let kind = if meta.file_type().is_file() {
            TargetKind::File
        } else if meta.file_type().is_block_device() {
            TargetKind::BlockDevice
        } else {
            return Err(target_error(path, "not a regular file or block device"));
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if kind == TargetKind::BlockDevice {
            options.custom_flags(libc::O_EXCL);
        }
        let file = options.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                in_use(
                    path,
                    "the kernel holds it (a mounted filesystem, LVM, md or another exclusive user)",
                )
            } else {
                target_error(path, format!("cannot open for writing: {e}"))
            }
        })?;
        let fd = file.as_raw_fd();

        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let by = lock_holders(meta, "FLOCK");
                return Err(in_use(path, &format!("locked (flock) by {}", who(&by))));
            }
            // Some filesystems have no flock; the other checks still run.
            log::debug!("flock {}: {err}", path.display());
        }

        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &lock) } != 0 {
            let err = std::io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
                // OFD locks show pid -1 in /proc/locks: name the writers.
                let mut by = lock_holders(meta, "POSIX");
                by.extend(writers(meta));
                by.sort_unstable();
                by.dedup();
                return Err(in_use(
                    path,
                    &format!(
                        "locked with fcntl, as qemu locks the disks of running VMs, by {}",
                        who(&by)
                    ),
                ));
            }
            log::debug!("OFD lock {}: {err}", path.display());
        }

        let by = writers(meta);
        if !by.is_empty() {
            return Err(in_use(path, &format!("open for writing by {}", who(&by))));
        }
        if kind == TargetKind::File {
            if let Some(device) = writable_loop_device(meta) {
                return Err(in_use(
                    path,
                    &format!("attached read-write to {}", device.display()),
                ));
            }
        }

        let size = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
        if size < 0 {
            let e = std::io::Error::last_os_error();
            return Err(target_error(path, format!("cannot get size: {e}")));
        }
        Ok(Target {
            file,
            path: path.to_path_buf(),
            kind,
            size: size as u64,
            created,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> TargetKind {
        self.kind
    }

    /// The size when it was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Refuses a block device smaller than `size` (a file grows instead).
    pub fn check_fits(&self, size: u64) -> Result<(), RollbackError> {
        if self.kind == TargetKind::BlockDevice && self.size < size {
            return Err(RollbackError::TooSmall {
                path: self.path.clone(),
                size: self.size,
                needed: size,
            });
        }
        Ok(())
    }

    /// Closes the target, removing the file if `open` created it (the
    /// rollback was declined or refused before writing).
    pub fn discard(self) {
        if self.created {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn target_error(path: &Path, why: impl Into<String>) -> RollbackError {
    RollbackError::Target {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn in_use(path: &Path, by: &str) -> RollbackError {
    RollbackError::InUse {
        path: path.to_path_buf(),
        by: by.to_string(),
    }
}

/// "pid 12 (qemu-system-x86), pid 40 (sh)", or "another process".
fn who(pids: &[u32]) -> String {
    if pids.is_empty() {
        return "another process".into();
    }
    pids.iter()
        .map(|pid| {
            let command = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            match command.trim() {
                "" => format!("pid {pid}"),
                command => format!("pid {pid} ({command})"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The pids that /proc/locks shows holding a lock of `kind` (FLOCK, POSIX)
/// on the file `meta` describes. Waiters (`->`) and OFD locks (pid -1) are
/// left out.
fn lock_holders(meta: &Metadata, kind: &str) -> Vec<u32> {
    let id = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    let me = std::process::id();
    let mut pids: Vec<u32> = fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "1: FLOCK ADVISORY WRITE 4066 fe:00:5308456 0 EOF"
            if fields.len() < 6 || fields[1] != kind || fields[5] != id {
                return None;
            }
            fields[4].parse::<u32>().ok().filter(|pid| *pid != me)
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Other processes holding a descriptor open for writing on the file (or
/// block device) that `meta` describes. Only processes we may inspect are
/// seen.
fn writers(meta: &Metadata) -> Vec<u32> {
    let me = std::process::id();
    let is_device = meta.file_type().is_block_device();
    let mut pids = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = fs::read_dir(entry.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = fs::read_to_string(fd.path()) else {
                continue;
            };
            if !writes(&info) {
                continue;
            }
            // Newer kernels name the inode in fdinfo: compare it before
            // stat, which would reach into every filesystem (a FUSE one
            // included) that the process writes to.
            if !is_device {
                let ino = info
                    .lines()
                    .find_map(|l| l.strip_prefix("ino:"))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if ino.is_some_and(|ino| ino != meta.ino()) {
                    continue;
                }
            }
            let link = entry.path().join("fd").join(fd.file_name());
            let Ok(open) = fs::metadata(&link) else {
                continue;
            };
            let same = if is_device {
                open.file_type().is_block_device() && open.rdev() == meta.rdev()
            } else {
                open.dev() == meta.dev() && open.ino() == meta.ino()
            };
            if same {
                pids.push(pid);
                break;
            }
        }
    }
    pids
}

/// True when an fdinfo text shows a descriptor open for writing.
fn writes(fdinfo: &str) -> bool {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i64::from_str_radix(v.trim(), 8).ok())
        .is_some_and(|flags| {
            let mode = flags as libc::c_int & libc::O_ACCMODE;
            mode == libc::O_WRONLY || mode == libc::O_RDWR
        })
}

/// A loop device attached read-write to the file `meta` describes.
fn writable_loop_device(meta: &Metadata) -> Option<PathBuf> {
    for entry in fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
            continue;
        };
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let same = fs::metadata(backing.trim_end_matches('\n'))
            .is_ok_and(|b| b.dev() == meta.dev() && b.ino() == meta.ino());
        let read_only = fs::read_to_string(entry.path().join("ro")).is_ok_and(|v| v.trim() == "1");
        if same && !read_only {
            return Some(PathBuf::from("/dev").join(name));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_access_modes() {
        assert!(writes("pos:\t0\nflags:\t0100002\nmnt_id:\t30\n"));
        assert!(writes("pos:\t0\nflags:\t02000001\n"));
        assert!(!writes("pos:\t0\nflags:\t0100000\n"));
        assert!(!writes("pos:\t0\n"));
    }
}
