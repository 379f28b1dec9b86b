//! Reflink clones: on a filesystem that shares extents between files (XFS,
//! btrfs), `FICLONE` makes a copy of a whole image that shares its data
//! instead of copying it, and the copy stays as it was whatever writes the
//! original gets. A snapshot of such a source reads the clone: a point in
//! time without holding the guest for the read.
//!
//! The clone lives next to its source (a clone cannot cross filesystems)
//! as `.NAME.snapfs-clone-TAG`, TAG naming the store, and is removed when
//! the snapshot is done; one that a crash left behind is removed the next
//! time the store opens.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// A reflink copy of a source file; removed when dropped.
pub struct Clone {
    path: PathBuf,
}

impl Clone {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Clone {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("cannot remove the clone {}: {e}", self.path.display());
        }
    }
}

/// Where the clone of `source` for the store tagged `tag` lives.
pub fn clone_path(source: &Path, tag: &str) -> Option<PathBuf> {
    let name = source.file_name()?.to_str()?;
    Some(source.with_file_name(format!(".{name}.snapfs-clone-{tag}")))
}

/// Clones the regular file `source`, or None where its filesystem cannot
/// (or anything else stands in the way: the caller then reads the source
/// itself, checked for changes).
pub fn clone_of(source: &Path, tag: &str) -> Option<Clone> {
    let meta = fs::metadata(source).ok()?;
    if !meta.is_file() {
        return None;
    }
    let path = clone_path(source, tag)?;
    remove_leftover(source, tag);
    let made = File::open(source).and_then(|from| {
        let to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        if unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    match made {
        Ok(()) => Some(Clone { path }),
        Err(e) => {
            // EOPNOTSUPP, EXDEV, EINVAL: no reflinks here, the usual case.
            log::debug!("no reflink clone of {}: {e}", source.display());
            let _ = fs::remove_file(&path);
            None
        }
    }
}

/// Removes a clone of `source` that an interrupted snapshot left.
pub fn remove_leftover(source: &Path, tag: &str) {
    let Some(path) = clone_path(source, tag) else {
        return;
    };
    // Looked at first: removing a missing file on a read-only filesystem
    // says EROFS, not ENOENT.
    if fs::symlink_metadata(&path).is_err() {
        return;
    }
    match fs::remove_file(&path) {
        Ok(()) => log::info!("removed the leftover clone {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove the leftover clone {}: {e}", path.display()),
    }
}

/// The tag of a store's clones: short, and the same at every open.
pub fn store_tag(store_root: &Path) -> String {
    let root = store_root
        .canonicalize()
        .unwrap_or_else(|_| store_root.to_path_buf());
    let hash = blake3::hash(root.as_os_str().as_encoded_bytes());
    hash.to_hex()[..12].to_string()
}
