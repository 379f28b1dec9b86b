//! Rollback: writing a snapshot back onto its disk (or onto another file or
//! block device), changing only the chunks whose bytes differ.
//!
//! ```text
//! reader thread: target chunk -> in a hole? zeros : read --bytes--> hashers: zero check, blake3
//! this thread:   map walk, chunk verdicts in order -> same as the snapshot? skip
//!                : store.read_verified -> pwrite (or punch a hole)
//! ```
//!
//! Every chunk of the target is read and hashed (the holes of a sparse file
//! are skipped through SEEK_DATA), but only the chunks that differ are read
//! from the store and written: rolling back after a small change writes in
//! proportion to the change. A zero chunk of the snapshot becomes a hole in
//! a regular file. The target comes locked and checked ([`Target`]); a
//! failure after the first change says that the target is half rolled back.

pub mod target;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::Instant;

use crate::catalog::SnapshotRecord;
use crate::error::{Error, IoContext, Result};
use crate::hash::{is_all_zero, ChunkHash};
use crate::map::MapReader;
use crate::repository::Repository;
use crate::snapshot::source::next_data_region;
use crate::store::Store;
pub use target::{Target, TargetKind};

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
    pub elapsed_ms: u64,
}

/// Writes `record` onto `target`; `progress` gets the bytes compared so far.
pub fn rollback(
    repo: &Repository,
    record: &SnapshotRecord,
    target: &Target,
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
    };
    let resize = target.kind() == TargetKind::File && target.size() != record.size;
    let outcome = (|| {
        if resize {
            target
                .file()
                .set_len(record.size)
                .context(|| format!("resizing {}", target.path().display()))?;
        }
        write_differing(store, record, target, &mut report, progress)?;
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

/// What the target holds in one chunk, once it has been hashed; chunks
/// arrive in order as one of these each.
type Verdict = Receiver<Result<Held>>;

/// A chunk's bytes for a hasher, and where to send what they hold.
type HashWork = (Vec<u8>, SyncSender<Result<Held>>);

/// Compares every chunk and writes those that differ.
fn write_differing(
    store: &Store,
    record: &SnapshotRecord,
    target: &Target,
    report: &mut RollbackReport,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let size = record.size;
    let chunk_size = record.chunk_size as u64;
    let (file, path) = (target.file(), target.path());
    let mut punch = target.kind() == TargetKind::File;
    let mut zeros: Vec<u8> = Vec::new();
    let map = MapReader::new(store, record.map);
    let hashers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (order_tx, order_rx) = sync_channel::<Verdict>(4 * hashers);
    let (work_tx, work_rx) = sync_channel::<HashWork>(2 * hashers);
    let work_rx = Mutex::new(work_rx);
    // Chunk buffers go back to the reader: no page faults per chunk.
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(4 * hashers);
    std::thread::scope(|scope| {
        scope.spawn(move || read_target(file, path, size, chunk_size, order_tx, work_tx, free_rx));
        for _ in 0..hashers {
            let (work_rx, free_tx) = (&work_rx, free_tx.clone());
            scope.spawn(move || hash_chunks(work_rx, free_tx));
        }
        drop(free_tx);
        let stopped = || Error::Invalid(format!("reading {} stopped early", path.display()));
        let walked = map.walk(&mut |_| true, &mut |chunk, hash| {
            let held = order_rx
                .recv()
                .map_err(|_| stopped())?
                .recv()
                .map_err(|_| stopped())??;
            report.chunks_compared += 1;
            let offset = chunk * chunk_size;
            let len = (size - offset).min(chunk_size);
            let write_err = |e| Error::Io {
                context: format!("writing {} at offset {offset}", path.display()),
                source: e,
            };
            if hash.is_zero() {
                if held != Held::Zeros {
                    let punched = punch && punch_hole(file, offset, len).map_err(write_err)?;
                    if punched {
                        report.holes_punched += 1;
                    } else {
                        punch = false;
                        zeros.resize(chunk_size as usize, 0);
                        file.write_all_at(&zeros[..len as usize], offset)
                            .map_err(write_err)?;
                        report.chunks_written += 1;
                        report.bytes_written += len;
                    }
                }
            } else if held != Held::Data(*hash) {
                let data = store.read_verified(hash)?;
                if data.len() as u64 != len {
                    return Err(Error::BadMetadata(format!(
                        "chunk {hash} at offset {offset} holds {} bytes, the image needs {len}",
                        data.len()
                    )));
                }
                file.write_all_at(&data, offset).map_err(write_err)?;
                report.chunks_written += 1;
                report.bytes_written += len;
            }
            progress(offset + len);
            Ok(())
        });
        // Stops the reader (and so the hashers) if the walk ended early.
        drop(order_rx);
        walked
    })
}

/// Reads the target chunk by chunk in order: sends each chunk's verdict to
/// `order` and its bytes to the hashers; a chunk in a hole is all zeros
/// without a read. Stops after the first error or when `order` is gone.
fn read_target(
    file: &File,
    path: &Path,
    size: u64,
    chunk_size: u64,
    order: SyncSender<Verdict>,
    work: SyncSender<HashWork>,
    free: Receiver<Vec<u8>>,
) {
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
    let mut regions = DataRegions::new(file, size);
    for chunk in 0..size.div_ceil(chunk_size) {
        let offset = chunk * chunk_size;
        let len = (size - offset).min(chunk_size);
        let (verdict_tx, verdict_rx) = sync_channel(1);
        if order.send(verdict_rx).is_err() {
            return;
        }
        if !regions.has_data(offset, offset + len) {
            let _ = verdict_tx.send(Ok(Held::Zeros));
            continue;
        }
        let mut buf = free.try_recv().unwrap_or_default();
        buf.resize(len as usize, 0);
        if let Err(e) = file
            .read_exact_at(&mut buf, offset)
            .context(|| format!("reading {} at offset {offset}", path.display()))
        {
            let _ = verdict_tx.send(Err(e));
            return;
        }
        if work.send((buf, verdict_tx)).is_err() {
            return;
        }
    }
}

/// Tells zero chunks from data and hashes the data.
fn hash_chunks(work: &Mutex<Receiver<HashWork>>, free: SyncSender<Vec<u8>>) {
    loop {
        let item = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((buf, verdict)) = item else { return };
        let held = if is_all_zero(&buf) {
            Held::Zeros
        } else {
            Held::Data(ChunkHash::of(&buf))
        };
        // The receiver is gone only when the rollback stopped.
        let _ = verdict.send(Ok(held));
        let _ = free.try_send(buf);
    }
}

/// Where a file holds data (see `next_data_region`), asked in order.
struct DataRegions<'f> {
    file: &'f File,
    size: u64,
    /// The data region at or after the last position asked about;
    /// (size, MAX) once only holes follow.
    region: Option<(u64, u64)>,
}

impl<'f> DataRegions<'f> {
    fn new(file: &'f File, size: u64) -> DataRegions<'f> {
        DataRegions {
            file,
            size,
            region: None,
        }
    }

    /// True unless `start..end` lies in a hole. Positions must not go back.
    fn has_data(&mut self, start: u64, end: u64) -> bool {
        let (data, _) = match self.region {
            Some(region) if region.1 > start => region,
            _ => *self.region.insert(
                next_data_region(self.file, start, self.size).unwrap_or((self.size, u64::MAX)),
            ),
        };
        data < end
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
