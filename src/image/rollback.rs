//! Rollback: writing a snapshot back onto its disk (or onto another file or
//! block device), changing only the chunks whose bytes differ.
//!
//! ```text
//! the target as a chunk source -> pipeline (holes skipped; workers: zero check, blake3)
//!   -> this thread, in order: same as the snapshot's map? skip : store.read_verified -> pwrite (or punch a hole)
//! ```
//!
//! Every chunk of the target is read and hashed by the same pipeline that
//! takes snapshots (the holes of a sparse file are skipped), but only the
//! chunks that differ are read from the store and written: rolling back
//! after a small change writes in proportion to the change. A zero chunk of the snapshot becomes a hole in
//! a regular file. The target comes locked and checked ([`Target`]); a
//! failure after the first change says that the target is half rolled back.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use super::target::{Target, TargetKind};
use crate::catalog::SnapshotRecord;
use crate::error::{Error, IoContext, Result};
use crate::hash::{is_all_zero, ChunkHash};
use crate::map::MapReader;
use crate::repository::Repository;
use crate::snapshot::pipeline::{self, Piece, PipelineOptions};
use crate::snapshot::source::ImageSource;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("{path} is in use: {by}; roll back once it is free (shut the VM down first)")]
    InUse { path: PathBuf, by: String },

    #[error("target {path}: {why}")]
    Target { path: PathBuf, why: String },

    #[error("block device {path} holds {size} bytes, fewer than the snapshot's {needed}")]
    TooSmall {
        path: PathBuf,
        size: u64,
        needed: u64,
    },

    /// Something failed after the target was changed.
    #[error(
        "{path} is half rolled back: {changed} chunk(s) changed before the rollback stopped, \
         so it holds neither the snapshot nor its former content; fix the cause and roll back \
         again: {cause}"
    )]
    Interrupted {
        path: PathBuf,
        changed: u64,
        #[source]
        cause: Error,
    },

    #[error(transparent)]
    Store(#[from] Error),
}

/// What a rollback did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RollbackReport {
    pub disk: String,
    pub snapshot: String,
    pub target: PathBuf,
    pub target_kind: TargetKind,
    /// The snapshot's size: the bytes of the target that now equal it.
    pub size: u64,
    pub chunk_size: u64,
    pub chunks_compared: u64,
    /// Chunks whose bytes were written (zeros included, on devices).
    pub chunks_written: u64,
    pub bytes_written: u64,
    /// Chunks that became holes instead of being written with zeros.
    pub holes_punched: u64,
    /// The target's size before; a file ends at the snapshot's size.
    pub previous_size: u64,
    /// Bytes of a larger block device past the snapshot's end, left as
    /// they were.
    pub untouched_tail: u64,
    /// Only the chunks a live disk's change record and the maps name were
    /// compared (the rest was known to be equal).
    pub only_changed: bool,
    pub elapsed_ms: u64,
}

/// Which chunks of the target a rollback compares.
#[derive(Clone, Copy)]
pub enum Scope<'a> {
    /// Every chunk: the target may differ anywhere.
    Whole,
    /// Only these chunk ranges: the caller knows that the target equals
    /// the snapshot everywhere else (a live disk whose change record and
    /// maps tell where it differs).
    Chunks(&'a [std::ops::Range<u64>]),
}

/// Before `record` is rolled back onto live disk `disk` (its own backing):
/// when the disk's change record is trusted and the snapshot it counts
/// from still exists, the disk can differ from `record` only in the chunks
/// the record marks and those where the two snapshots' maps differ. Then
/// gives the disk `record`'s size, marks those chunks (durably, before
/// anything is written, so that the record stays trusted and right) and
/// returns them for [`Scope::Chunks`]; None when the whole disk must be
/// compared (the caller distrusts the record then).
pub fn prepare_live_rollback(
    repo: &Repository,
    disk: &crate::live::LiveDisk,
    record: &SnapshotRecord,
) -> Result<Option<Vec<std::ops::Range<u64>>>> {
    let changes = disk.record();
    if !changes.trusted() || u64::from(record.chunk_size) != disk.chunk_size() {
        return Ok(None);
    }
    let base = repo
        .catalog()
        .snapshots(None)?
        .into_iter()
        .find(|s| s.id == changes.base());
    let Some(base) = base.filter(|b| b.chunk_size == record.chunk_size) else {
        return Ok(None);
    };
    if disk.size() != record.size {
        disk.set_len(record.size)?;
    }
    let store = repo.store();
    let differ = crate::map::differing_chunks(
        &MapReader::new(store, record.map),
        &MapReader::new(store, base.map),
    )?;
    let ranges = merge_ranges(changes.changed(), differ);
    disk.mark_changed(&ranges)?;
    Ok(Some(ranges))
}

/// The union of two ordered lists of ranges, ordered and merged.
fn merge_ranges(
    a: Vec<std::ops::Range<u64>>,
    b: Vec<std::ops::Range<u64>>,
) -> Vec<std::ops::Range<u64>> {
    let mut all: Vec<_> = a.into_iter().chain(b).filter(|r| !r.is_empty()).collect();
    all.sort_by_key(|r| r.start);
    let mut merged: Vec<std::ops::Range<u64>> = Vec::new();
    for range in all {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// Writes `record` onto `target`; `progress` gets the bytes compared so far.
pub fn rollback(
    repo: &Repository,
    record: &SnapshotRecord,
    target: &Target,
    scope: Scope,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<RollbackReport, RollbackError> {
    let started = Instant::now();
    target.check_fits(record.size)?;
    let chunk_size = record.chunk_size as u64;
    if record.map.chunks != record.size.div_ceil(chunk_size) {
        return Err(Error::BadMetadata(format!(
            "snapshot {} of disk {} maps {} chunks, its size needs {}",
            record.name,
            record.disk,
            record.map.chunks,
            record.size.div_ceil(chunk_size)
        ))
        .into());
    }
    // The snapshot stays readable through gc even if it is deleted meanwhile.
    let _pin = repo.pins().pin(record.map);
    let store = repo.store();
    let mut report = RollbackReport {
        disk: record.disk.clone(),
        snapshot: record.name.clone(),
        target: target.path().to_path_buf(),
        target_kind: target.kind(),
        size: record.size,
        chunk_size,
        chunks_compared: 0,
        chunks_written: 0,
        bytes_written: 0,
        holes_punched: 0,
        previous_size: target.size(),
        untouched_tail: match target.kind() {
            TargetKind::File => 0,
            TargetKind::BlockDevice => target.size().saturating_sub(record.size),
        },
        elapsed_ms: 0,
        only_changed: matches!(scope, Scope::Chunks(_)),
    };
    let resize = target.kind() == TargetKind::File && target.size() != record.size;
    let outcome = (|| {
        if resize {
            target
                .file()
                .set_len(record.size)
                .context(|| format!("resizing {}", target.path().display()))?;
        }
        match scope {
            Scope::Whole => write_differing(store, record, target, &mut report, progress)?,
            Scope::Chunks(ranges) => {
                write_differing_in(store, record, target, ranges, &mut report, progress)?
            }
        }
        target
            .file()
            .sync_all()
            .context(|| format!("syncing {}", target.path().display()))
    })();
    if let Err(cause) = outcome {
        let changed = report.chunks_written + report.holes_punched;
        if changed > 0 || resize {
            return Err(RollbackError::Interrupted {
                path: target.path().to_path_buf(),
                changed,
                cause,
            });
        }
        return Err(cause.into());
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// What the target holds in one chunk.
#[derive(PartialEq, Eq)]
enum Held {
    Zeros,
    Data(ChunkHash),
}

impl Held {
    fn of(piece: &[u8]) -> Held {
        if is_all_zero(piece) {
            Held::Zeros
        } else {
            Held::Data(ChunkHash::of(piece))
        }
    }
}

/// Compares every chunk and writes those that differ.
fn write_differing(
    store: &Store,
    record: &SnapshotRecord,
    target: &Target,
    report: &mut RollbackReport,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let chunk_size = record.chunk_size as u64;
    let path = target.path();
    let read_fd = target
        .file()
        .try_clone()
        .context(|| format!("opening {} for reading", path.display()))?;
    unsafe {
        libc::posix_fadvise(read_fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
    let source = ImageSource::of_file(read_fd, path, record.size);
    let mut writer = ChunkWriter::new(store, record, target, report);
    let judge = |piece: &[u8]| -> Result<Held> { Ok(Held::of(piece)) };
    let mut collect = |piece: Piece<'_, Held>| -> Result<()> {
        match piece {
            Piece::Unread { first, count, .. } => {
                for chunk in first..first + count {
                    writer.make_equal(chunk, &Held::Zeros)?;
                    progress(((chunk + 1) * chunk_size).min(record.size));
                }
            }
            Piece::Read {
                first, verdicts, ..
            } => {
                for (i, held) in verdicts.iter().enumerate() {
                    let chunk = first + i as u64;
                    writer.make_equal(chunk, held)?;
                    progress(((chunk + 1) * chunk_size).min(record.size));
                }
            }
        }
        Ok(())
    };
    let options = PipelineOptions {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        max_rate: None,
        idle_io: false,
        cancel: None,
        what: "rollback",
        cancelled_by: "",
    };
    pipeline::run(&source, chunk_size, &options, &judge, &mut collect)
}

/// Compares the chunks of `ranges` only (clipped to the snapshot) and
/// writes those that differ: work that follows the change, on one thread.
fn write_differing_in(
    store: &Store,
    record: &SnapshotRecord,
    target: &Target,
    ranges: &[std::ops::Range<u64>],
    report: &mut RollbackReport,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let chunk_size = record.chunk_size as u64;
    let chunks = record.size.div_ceil(chunk_size);
    let path = target.path().to_path_buf();
    let mut writer = ChunkWriter::new(store, record, target, report);
    let mut buf = vec![0u8; chunk_size as usize];
    let mut done = 0u64;
    // Progress counts to the image size, like a whole rollback's.
    let total: u64 = ranges
        .iter()
        .map(|r| r.end.min(chunks).saturating_sub(r.start) * chunk_size)
        .sum();
    for range in ranges {
        for chunk in range.start..range.end.min(chunks) {
            let piece = &mut buf[..record.chunk_len(chunk) as usize];
            // The target holds the snapshot's size by now (resized first).
            target
                .file()
                .read_exact_at(piece, chunk * chunk_size)
                .context(|| format!("reading {} at chunk {chunk}", path.display()))?;
            writer.make_equal(chunk, &Held::of(piece))?;
            done += chunk_size;
            // In u128: the product of two disk sizes overflows u64.
            progress((done as u128 * record.size as u128 / total.max(1) as u128) as u64);
        }
    }
    Ok(())
}

/// Writes the snapshot's chunks over a target that holds something else.
struct ChunkWriter<'a> {
    store: &'a Store,
    record: &'a SnapshotRecord,
    map: MapReader<'a>,
    file: &'a File,
    /// Zero chunks become holes until the filesystem says it cannot.
    punch: bool,
    zeros: Vec<u8>,
    report: &'a mut RollbackReport,
}

impl<'a> ChunkWriter<'a> {
    fn new(
        store: &'a Store,
        record: &'a SnapshotRecord,
        target: &'a Target,
        report: &'a mut RollbackReport,
    ) -> ChunkWriter<'a> {
        ChunkWriter {
            store,
            record,
            map: MapReader::new(store, record.map),
            file: target.file(),
            punch: target.kind() == TargetKind::File,
            zeros: Vec::new(),
            report,
        }
    }

    /// Makes chunk `chunk` of the target, which holds `held`, equal to the
    /// snapshot's.
    fn make_equal(&mut self, chunk: u64, held: &Held) -> Result<()> {
        self.report.chunks_compared += 1;
        let hash = self.map.chunk_hash(chunk)?;
        let chunk_size = self.record.chunk_size as u64;
        let offset = chunk * chunk_size;
        let len = self.record.chunk_len(chunk);
        let path = self.report.target.clone();
        let write_err = |e| Error::Io {
            context: format!("writing {} at offset {offset}", path.display()),
            source: e,
        };
        if hash.is_zero() {
            if *held == Held::Zeros {
                return Ok(());
            }
            let punched = self.punch && punch_hole(self.file, offset, len).map_err(write_err)?;
            if punched {
                self.report.holes_punched += 1;
                return Ok(());
            }
            self.punch = false;
            self.zeros.resize(chunk_size as usize, 0);
            self.file
                .write_all_at(&self.zeros[..len as usize], offset)
                .map_err(write_err)?;
        } else {
            if *held == Held::Data(hash) {
                return Ok(());
            }
            let data = self.store.read_verified(&hash)?;
            self.record.check_chunk_len(chunk, &hash, data.len())?;
            self.file.write_all_at(&data, offset).map_err(write_err)?;
        }
        self.report.chunks_written += 1;
        self.report.bytes_written += len;
        Ok(())
    }
}

/// Makes `offset..offset + len` of a regular file a hole; false when the
/// filesystem cannot.
fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<bool> {
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(false),
        _ => Err(err),
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::merge_ranges;

    #[test]
    fn merged_ranges_cover_both_lists_once() {
        assert_eq!(
            merge_ranges(vec![0..2, 5..6, 9..12], vec![1..3, 6..7, 20..21]),
            vec![0..3, 5..7, 9..12, 20..21]
        );
        assert_eq!(merge_ranges(Vec::new(), vec![4..5]), vec![4..5]);
    }
}
