//! Room for the database on the store's filesystem (a local backend's
//! `check_room`). Packs stop growing while a reserve is still free, so
//! that a store filling up fails the snapshot with ENOSPC from a pack
//! write, which cleans up, and never from sled: sled turns a failed write
//! of its log into an error that stays for the rest of the process, which
//! would leave a running mount unable to commit anything until it restarts.

use std::ffi::CString;
use std::io;
use std::path::Path;

use crate::error::{Error, Result};

/// The reserve: 1/32 of the filesystem, at least 1 MiB, at most 64 MiB.
fn reserve_bytes(fs_bytes: u64) -> u64 {
    (fs_bytes / 32).clamp(1 << 20, 64 << 20)
}

/// Fails with ENOSPC when writing `bytes` more into `dir` would eat into
/// the reserve; otherwise returns the room left above the reserve after
/// them. A filesystem that cannot be asked is not refused.
pub(super) fn check_room(dir: &Path, bytes: u64) -> Result<u64> {
    let Ok(path) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return Ok(u64::MAX);
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Ok(u64::MAX);
    }
    let unit = stat.f_frsize as u64;
    let free = stat.f_bavail as u64 * unit;
    let reserve = reserve_bytes(stat.f_blocks as u64 * unit);
    if let Some(room) = free.checked_sub(bytes.saturating_add(reserve)) {
        return Ok(room);
    }
    Err(Error::Io {
        context: format!(
            "store filesystem of {} is full (keeping {} MiB free for the database)",
            dir.display(),
            reserve >> 20
        ),
        source: io::Error::from_raw_os_error(libc::ENOSPC),
    })
}

#[cfg(test)]
mod tests {
    use super::reserve_bytes;

    #[test]
    fn reserve_is_a_small_share_within_bounds() {
        assert_eq!(reserve_bytes(12 << 20), 1 << 20);
        assert_eq!(reserve_bytes(256 << 20), 8 << 20);
        assert_eq!(reserve_bytes(1 << 40), 64 << 20);
    }
}
