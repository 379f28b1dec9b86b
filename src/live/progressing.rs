//! A live disk's snapshot between its freeze and its commit: the image
//! file that appears at the freeze point (state `progressing`) and reads
//! the frozen content at once. A frozen chunk comes from its copy or the
//! backing (copies are kept until the commit); any other chunk is unchanged
//! since the parent snapshot, and the caller reads it there (this module
//! knows no store).
//!
//! Once the snapshot is stored the view says so, and readers go on from
//! the stored snapshot: the switch waits for reads in flight, so no read
//! sees the backing after the copies are gone.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use super::freeze::{Copies, LiveDisk};
use crate::catalog::SnapshotRecord;
use crate::error::{Error, Result};

pub struct Progressing {
    name: String,
    created_ms: i64,
    size: u64,
    state: RwLock<State>,
}

enum State {
    Frozen {
        disk: Arc<LiveDisk>,
        copies: Arc<Copies>,
        /// Where unchanged chunks are; None for a full read (every chunk
        /// is frozen then).
        parent: Option<SnapshotRecord>,
    },
    Stored(SnapshotRecord),
    Ended(String),
}

/// What a read of a progressing snapshot found.
pub enum ProgressRead {
    /// `buf` holds the frozen bytes.
    Done,
    /// The snapshot is stored now: read this record instead.
    Stored(SnapshotRecord),
    /// It failed or was abandoned: nothing more can be read.
    Ended(String),
}

/// Reads `buf.len()` bytes at an offset of a stored snapshot.
pub type ParentRead<'a> = dyn FnMut(&SnapshotRecord, &mut [u8], u64) -> Result<()> + 'a;

impl Progressing {
    pub(super) fn new(
        name: &str,
        created_ms: i64,
        size: u64,
        disk: Arc<LiveDisk>,
        copies: Arc<Copies>,
        parent: Option<SnapshotRecord>,
    ) -> Progressing {
        Progressing {
            name: name.to_string(),
            created_ms,
            size,
            state: RwLock::new(State::Frozen {
                disk,
                copies,
                parent,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    /// The disk's size at the freeze.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn stored(&self, record: SnapshotRecord) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = State::Stored(record);
    }

    pub(super) fn end(&self, why: &str) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if matches!(*state, State::Frozen { .. }) {
            *state = State::Ended(why.to_string());
        }
    }

    /// Fills `buf` with the frozen disk from `offset` (clipped by the
    /// caller to the frozen size); unchanged chunks through `parent_read`.
    pub fn read(
        &self,
        buf: &mut [u8],
        offset: u64,
        parent_read: &mut ParentRead<'_>,
    ) -> Result<ProgressRead> {
        let state = self.state();
        let (disk, copies, parent) = match &*state {
            State::Frozen {
                disk,
                copies,
                parent,
            } => (disk, copies, parent),
            State::Stored(record) => return Ok(ProgressRead::Stored(record.clone())),
            State::Ended(why) => return Ok(ProgressRead::Ended(why.clone())),
        };
        let end = offset + buf.len() as u64;
        if end > self.size {
            return Err(Error::Invalid(format!(
                "read to {end} past the frozen end {}",
                self.size
            )));
        }
        let cs = disk.chunk_size();
        let mut chunk = Vec::new();
        let mut pos = offset;
        while pos < end {
            let c = pos / cs;
            let piece_end = ((c + 1) * cs).min(end);
            let piece = &mut buf[(pos - offset) as usize..(piece_end - offset) as usize];
            if copies.is_frozen(c) {
                chunk.resize(copies.chunk_len(c), 0);
                let _stripe = copies.lock_stripe(copies.stripe(c));
                copies.read_chunk(disk.backing(), c, &mut chunk)?;
                let at = (pos - c * cs) as usize;
                piece.copy_from_slice(&chunk[at..at + piece.len()]);
            } else if let Some(parent) = parent {
                parent_read(parent, piece, pos)?;
            } else {
                piece.fill(0);
            }
            pos = piece_end;
        }
        Ok(ProgressRead::Done)
    }
}
