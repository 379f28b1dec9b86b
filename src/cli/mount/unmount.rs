//! Unmounting: the umount2 call (with the fusermount3 fallback), finding
//! the process that serves a mount, and waiting for it to end.

use std::path::Path;
use std::time::{Duration, Instant};

/// A mount whose process was killed stays (ENOTCONN) until someone
/// unmounts it: say so, and how.
pub fn dead_mount_hint(mountpoint: &Path) -> String {
    format!(
        " (a dead mount is in the way, its process gone; `snapfs umount {}` clears it)",
        mountpoint.display()
    )
}

/// Unmounts `mountpoint` (lazily: detaches it even while files are open).
/// Not root: fusermount3 may unmount our own; quietly, since the caller
/// says why in one line. The error is umount2's.
pub fn unmount_path(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let mut fusermount = std::process::Command::new("fusermount3");
    fusermount.arg("-u").arg("-q");
    if lazy {
        fusermount.arg("-z");
    }
    let fallback = fusermount
        .arg(mountpoint)
        .stderr(std::process::Stdio::null())
        .status();
    if fallback.is_ok_and(|s| s.success()) {
        Ok(())
    } else {
        Err(err)
    }
}

/// The pid a snapfs mount names in its root's `user.snapfs.pid` xattr.
pub fn mount_server_pid(mountpoint: &Path) -> Option<u32> {
    let value = crate::cli::remote::read_xattr(mountpoint, "user.snapfs.pid").ok()?;
    std::str::from_utf8(&value).ok()?.trim().parse().ok()
}

/// Whether process `pid` still runs (a zombie has ended; only its parent
/// can reap it).
pub fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Waits up to `timeout` for process `pid` to end; whether it has.
pub fn wait_ended(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    !is_alive(pid)
}
