//! `DISK/live`: a live disk served read-write. Every change goes through
//! the disk's `LiveDisk` (its write path marks the change record first);
//! reads, syncs and seeks go to the backing. What `.status` and the disk
//! folder's xattrs say of the change record is here too.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use super::{FsError, FsResult, SnapFs};
use crate::image::ReadData;
use crate::live::LiveDisk;
use crate::units::format_bytes;

impl SnapFs {
    /// The open `LiveDisk` of `disk`, opened on first use.
    pub(super) fn live_disk(&self, disk: &str) -> FsResult<Arc<LiveDisk>> {
        if let Some(live) = self.repo.live().opened(disk) {
            return Ok(live);
        }
        let catalog = self.catalog.get(&self.repo)?;
        let record = catalog
            .disks
            .iter()
            .find(|d| d.name == disk && d.live)
            .ok_or(FsError::new(libc::ENOENT))?;
        Ok(self.repo.live_disk(record)?)
    }

    /// Opens every live disk, so that the mount holds their records from
    /// its start (a failure is logged; the disk's `live` file then fails).
    pub fn open_live_disks(&self) {
        let disks = match self.repo.catalog().disks() {
            Ok(disks) => disks,
            Err(e) => return log::error!("cannot list disks to open live ones: {e}"),
        };
        for disk in disks.iter().filter(|d| d.live) {
            match self.repo.live_disk(disk) {
                Ok(live) => {
                    if let Some(why) = live.record().untrusted_reason() {
                        log::warn!(
                            "live disk {}: its next snapshot reads it whole: {why}",
                            disk.name
                        );
                    }
                }
                Err(e) => log::error!("cannot open live disk {}: {e}", disk.name),
            }
        }
    }

    /// Shuts the live disks down at unmount: durable, record trusted.
    pub fn shutdown_live_disks(&self) {
        // Each failure is logged by `shutdown_all`.
        let _ = self.repo.live().shutdown_all();
    }

    pub(super) fn live_read(&self, disk: &LiveDisk, offset: u64, size: u32) -> FsResult<ReadData> {
        let mut buf = vec![0u8; size as usize];
        let n = disk.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf.into())
    }

    pub(super) fn live_write(&self, disk: &LiveDisk, offset: u64, data: &[u8]) -> FsResult<()> {
        Ok(disk.write_at(data, offset)?)
    }

    /// fsync and fdatasync: the marks are durable already, the data is
    /// once this returns.
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        match self.handles.get(fh)?.as_ref() {
            super::handles::Handle::Live(disk) => Ok(disk.sync()?),
            // Nothing else holds unwritten data.
            _ => Ok(()),
        }
    }

    /// fallocate(2) on the live file: discard (PUNCH_HOLE), write zeroes
    /// (ZERO_RANGE), or allocate, growing the disk unless KEEP_SIZE.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let handle = self.handles.get(fh)?;
        let super::handles::Handle::Live(disk) = handle.as_ref() else {
            return Err(FsError::new(libc::EOPNOTSUPP));
        };
        let end = offset.checked_add(len).ok_or(FsError::new(libc::EFBIG))?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let kind = mode & !libc::FALLOC_FL_KEEP_SIZE;
        let grow = |disk: &LiveDisk| -> FsResult<()> {
            if !keep_size && end > disk.size() {
                disk.set_len(end)?;
            }
            Ok(())
        };
        match kind {
            libc::FALLOC_FL_PUNCH_HOLE if keep_size => Ok(disk.zero_range(offset, len, true)?),
            libc::FALLOC_FL_ZERO_RANGE => {
                grow(disk)?;
                Ok(disk.zero_range(offset, len, false)?)
            }
            0 => {
                grow(disk)?;
                // Reserves space only: the content stays, so no mark.
                let rc = unsafe {
                    libc::fallocate(
                        disk.backing().as_raw_fd(),
                        libc::FALLOC_FL_KEEP_SIZE,
                        offset as libc::off_t,
                        len as libc::off_t,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                Ok(())
            }
            _ => Err(FsError::new(libc::EOPNOTSUPP)),
        }
    }

    /// SEEK_DATA / SEEK_HOLE: the backing's.
    pub(super) fn live_lseek(&self, disk: &LiveDisk, offset: u64, whence: i32) -> FsResult<u64> {
        if !matches!(whence, libc::SEEK_DATA | libc::SEEK_HOLE) {
            return Err(FsError::new(libc::EINVAL));
        }
        if offset >= disk.size() {
            return Err(FsError::new(libc::ENXIO));
        }
        let pos = unsafe { libc::lseek(disk.backing().as_raw_fd(), offset as libc::off_t, whence) };
        if pos < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // The disk may be longer than the backing (not grown yet): the rest is a hole.
        Ok((pos as u64).min(disk.size()))
    }

    /// 512-byte blocks the backing holds.
    pub(super) fn live_blocks(&self, disk: &LiveDisk) -> u64 {
        use std::os::unix::fs::MetadataExt;
        disk.backing().metadata().map_or(0, |m| m.blocks())
    }

    /// What `.status` adds for a live disk: the change since the last
    /// snapshot, and whether the record is trusted.
    pub(super) fn live_status_lines(&self, disk: &str) -> String {
        match self.live_state(disk) {
            None => String::new(),
            Some((changed, None)) => {
                format!("live: {} changed since the last snapshot (record trusted)\n", format_bytes(changed))
            }
            Some((changed, Some(why))) => format!(
                "live: {} marked changed; record not trusted ({why}): the next snapshot reads the disk whole\n",
                format_bytes(changed)
            ),
        }
    }

    /// The disk's `.status` text.
    pub(super) fn status_text(&self, disk: &str) -> String {
        self.status().render(disk) + &self.live_status_lines(disk)
    }

    pub(super) fn live_xattrs(&self, disk: &str) -> FsResult<Vec<(String, String)>> {
        let Some((changed, why)) = self.live_state(disk) else {
            return Ok(Vec::new());
        };
        let mut attrs = vec![
            ("user.snapfs.live".to_string(), "1".to_string()),
            ("user.snapfs.changed_bytes".to_string(), changed.to_string()),
            (
                "user.snapfs.record_trusted".to_string(),
                u8::from(why.is_none()).to_string(),
            ),
        ];
        if let Some(why) = why {
            attrs.push(("user.snapfs.record_untrusted_reason".to_string(), why));
        }
        Ok(attrs)
    }

    /// Bytes changed since the last snapshot and why the record is not
    /// trusted, if it is not; None for a disk that is not live.
    fn live_state(&self, disk: &str) -> Option<(u64, Option<String>)> {
        let live = self.live_disk(disk).ok()?;
        let record = live.record();
        Some((record.changed_bytes(), record.untrusted_reason()))
    }
}
