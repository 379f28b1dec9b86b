//! The contents of the control files: `.create` (a written name takes a
//! snapshot), `.policy` (the disk's policy as text; a write replaces it)
//! and `/.control` (a request buffered per handle, run on the first read;
//! see `crate::control` for its format).

use std::sync::Mutex;

use super::handles::slice_at;
use super::service::Trigger;
use super::{FsError, FsResult, SnapFs};
use crate::catalog::names::{check_snapshot_name, shown};

/// The size `.create` reports. The kernel holds a FUSE file's inode lock
/// for a whole write unless the file allows parallel direct writes and the
/// write stays below its size; a snapshot name fits well below this.
pub const CREATE_FILE_SIZE: u64 = 4096;

/// Runs one CLI request (the raw bytes written to `.control`) and returns
/// the raw response; supplied by the binary.
pub type ControlHandler = Box<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

impl SnapFs {
    /// One write to `.create` is one snapshot name (a trailing newline is
    /// dropped); the write returns when the snapshot is accomplished, or
    /// for a live disk when it is frozen (its file reads it from then on).
    pub(super) fn create_from_write(&self, disk: &str, data: &[u8]) -> FsResult<()> {
        let text = data.strip_suffix(b"\n").unwrap_or(data);
        let name = match std::str::from_utf8(text) {
            Ok(name) => name,
            Err(_) => {
                self.service
                    .refuse(disk, &String::from_utf8_lossy(text), "name is not UTF-8");
                return Err(FsError::new(libc::EINVAL));
            }
        };
        if let Err(e) = check_snapshot_name(name) {
            self.service.refuse(disk, name, &e.to_string());
            return Err(e.into());
        }
        let catalog = self.catalog.get(&self.repo)?;
        if catalog.disks.iter().any(|d| d.name == disk && d.live) {
            return self.service.take_snapshot_until_frozen(disk, name);
        }
        self.service
            .take_snapshot(disk, name, Trigger::Create, None, None)
            .map(|_| ())
    }

    /// What `.policy` shows: the policy's settings, or `none`.
    pub(super) fn policy_text(&self, disk: &str) -> FsResult<String> {
        Ok(match self.repo.catalog().policy(disk)? {
            Some(policy) => format!("{policy}\n"),
            None => "none\n".to_string(),
        })
    }

    /// A write to `.policy` replaces the disk's policy with the settings it
    /// holds (`none` removes it); anything unparsable is EINVAL.
    pub(super) fn policy_from_write(&self, disk: &str, data: &[u8]) -> FsResult<()> {
        let text = String::from_utf8_lossy(data);
        let text = text.trim();
        let result = if text == "none" {
            self.repo.catalog().remove_policy(disk).map(|_| ())
        } else {
            let mut policy = crate::policy::Policy::default();
            policy
                .apply_text(text)
                .and_then(|()| self.repo.catalog().set_policy(disk, &policy))
        };
        // One line in `.status` and the log, however long or many-lined.
        let text = shown(&text.split_whitespace().collect::<Vec<_>>().join(" "));
        match result {
            Ok(()) => {
                log::info!("policy of disk {disk} set to {text:?}");
                self.status().note(disk, &format!("policy set: {text}"));
                Ok(())
            }
            Err(e) => {
                log::warn!("refused policy {text:?} for disk {disk}: {e}");
                self.status()
                    .note(disk, &format!("refused policy {text:?}: {e}"));
                Err(e.into())
            }
        }
    }

    /// Appends to a `.control` request; the next read runs it anew.
    pub(super) fn control_write(
        &self,
        request: &Mutex<Vec<u8>>,
        response: &Mutex<Option<Vec<u8>>>,
        data: &[u8],
    ) -> FsResult<()> {
        {
            let mut request = request.lock().unwrap_or_else(|e| e.into_inner());
            // A writer that never stops must not fill the mount's memory.
            if request.len() + data.len() > crate::control::MAX_REQUEST {
                return Err(FsError::new(libc::EFBIG));
            }
            request.extend_from_slice(data);
        }
        // Not under the request lock: `control_read` takes these the other
        // way round.
        *response.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Reads the response of a `.control` request, running it first if
    /// this is the first read since the last write.
    pub(super) fn control_read(
        &self,
        request: &Mutex<Vec<u8>>,
        response: &Mutex<Option<Vec<u8>>>,
        offset: u64,
        size: u32,
    ) -> Vec<u8> {
        let mut response = response.lock().unwrap_or_else(|e| e.into_inner());
        if response.is_none() {
            let request = request.lock().unwrap_or_else(|e| e.into_inner());
            *response = Some((self.control)(&request));
        }
        slice_at(response.as_deref().unwrap_or_default(), offset, size)
    }
}
