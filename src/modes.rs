//! File modes. A store holds the contents of people's disks: its folders
//! are 0700 and its files 0600 whatever the umask. Files made for the user
//! (export and rollback outputs) follow the user's umask, as any tool's
//! output does.
//!
//! The store's own code asks for these modes explicitly. sled creates its
//! files itself, some of them later and from its own threads (snapshots of
//! its log, blobs), so only the process umask reaches those: the binary
//! calls [`make_process_private`] first thing, and library users who need
//! the same guarantee for sled's files do the same.

use std::fs::{DirBuilder, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

pub const PRIVATE_DIR: u32 = 0o700;
pub const PRIVATE_FILE: u32 = 0o600;

/// The umask the process had before `make_process_private`; `NOT_SET`
/// until then.
static USER_UMASK: AtomicU32 = AtomicU32::new(NOT_SET);
const NOT_SET: u32 = u32::MAX;

/// Sets the process umask to 077 and remembers the user's, for the files
/// made for the user. Later calls change nothing.
pub fn make_process_private() {
    let old = unsafe { libc::umask(0o077) } as u32;
    // A second call finds 077 in place: the first remembered umask stays.
    let _ = USER_UMASK.compare_exchange(NOT_SET, old, Ordering::SeqCst, Ordering::SeqCst);
}

/// The user's umask, if `make_process_private` replaced it.
pub fn user_umask() -> Option<u32> {
    match USER_UMASK.load(Ordering::SeqCst) {
        NOT_SET => None,
        mask => Some(mask),
    }
}

/// Gives a file this process just created the mode the user's umask asks
/// for (0666 minus the umask), instead of the private one.
pub fn give_user_mode(file: &File) -> io::Result<()> {
    match user_umask() {
        Some(mask) => file.set_permissions(std::fs::Permissions::from_mode(0o666 & !mask)),
        // The process umask is the user's: the file already has its mode.
        None => Ok(()),
    }
}

/// Creates `dir` as a private folder; an existing folder is left as it is.
/// Missing parents are the user's folders: they get the user's mode.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_user_dirs(parent)?;
    }
    create_dir(dir, PRIVATE_DIR)
}

fn create_user_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_user_dirs(parent)?;
    }
    create_dir(dir, 0o777)?;
    match user_umask() {
        // The process umask made it private: give it what the user's asks.
        Some(mask) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777 & !mask)),
        None => Ok(()),
    }
}

fn create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        other => other,
    }
}
