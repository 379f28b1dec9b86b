//! `DISK/NAME` of a live disk's snapshot between its freeze and its commit
//! (state `progressing`): it reads the frozen content at once, unchanged
//! chunks from the parent snapshot. Once stored, the same name is the
//! stored snapshot, and open handles go on reading from it.

use std::sync::{Arc, Mutex};

use super::{Attr, FileKind, FsError, FsResult, SnapFs};
use crate::catalog::SnapshotRecord;
use crate::image::{ImageReader, ReadData};
use crate::live::{ProgressRead, Progressing};
use crate::repository::Repository;

/// An open progressing snapshot: the view and the readers it needs.
pub(super) struct ProgressingHandle {
    view: Arc<Progressing>,
    repo: Arc<Repository>,
    parent: Mutex<Option<Arc<ImageReader>>>,
    stored: Mutex<Option<Arc<ImageReader>>>,
}

fn reader_for(
    slot: &Mutex<Option<Arc<ImageReader>>>,
    repo: &Arc<Repository>,
    record: &SnapshotRecord,
) -> Arc<ImageReader> {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    slot.get_or_insert_with(|| Arc::new(ImageReader::new(repo.clone(), record.clone())))
        .clone()
}

impl ProgressingHandle {
    pub(super) fn size(&self) -> u64 {
        self.view.size()
    }

    pub(super) fn read(&self, offset: u64, size: u32) -> FsResult<ReadData> {
        let len = (size as u64).min(self.view.size().saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; len];
        let mut parent_read = |record: &SnapshotRecord, piece: &mut [u8], at: u64| {
            let reader = reader_for(&self.parent, &self.repo, record);
            // A disk grown since its parent: past the parent's end, zeros.
            let n = reader.read_at(at, piece)?;
            piece[n..].fill(0);
            Ok(())
        };
        let context = |e: crate::Error| {
            FsError::from(e).context(format!(
                "read of progressing snapshot {} at offset {offset}",
                self.view.name()
            ))
        };
        match self
            .view
            .read(&mut buf, offset, &mut parent_read)
            .map_err(context)?
        {
            ProgressRead::Done => Ok(buf.into()),
            ProgressRead::Stored(record) => reader_for(&self.stored, &self.repo, &record)
                .read_bytes(offset, size as usize)
                .map_err(context),
            ProgressRead::Ended(why) => Err(FsError::new(libc::EIO).context(format!(
                "snapshot {} was not stored: {why}",
                self.view.name()
            ))),
        }
    }
}

impl SnapFs {
    /// The progressing snapshot `name` of live disk `disk`, if there is one.
    pub(super) fn progressing(&self, disk: &str, name: Option<&str>) -> Option<Arc<Progressing>> {
        let view = self.repo.live().opened(disk)?.progressing()?;
        match name {
            Some(name) if view.name() != name => None,
            _ => Some(view),
        }
    }

    pub(super) fn open_progressing(&self, view: Arc<Progressing>) -> ProgressingHandle {
        ProgressingHandle {
            view,
            repo: self.repo.clone(),
            parent: Mutex::new(None),
            stored: Mutex::new(None),
        }
    }

    pub(super) fn progressing_attr(&self, ino: u64, view: &Progressing) -> Attr {
        Attr {
            ino,
            kind: FileKind::File,
            size: view.size(),
            // Not known until stored: count it all.
            blocks: view.size().div_ceil(512),
            mtime: super::attrs::ms_to_time(view.created_ms()),
            perm: 0o444,
            nlink: 1,
        }
    }

    pub(super) fn progressing_xattrs(
        &self,
        disk: &str,
        view: &Progressing,
    ) -> Vec<(String, String)> {
        vec![
            ("user.snapfs.disk".into(), disk.to_string()),
            (
                "user.snapfs.created".into(),
                crate::units::rfc3339_ms(view.created_ms()),
            ),
            ("user.snapfs.state".into(), "progressing".into()),
            ("user.snapfs.size".into(), view.size().to_string()),
            ("user.snapfs.method".into(), "freeze".into()),
        ]
    }
}
