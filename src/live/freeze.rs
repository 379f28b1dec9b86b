//! A running live disk: the write path that every write of the `live`
//! file takes, and the freeze point of a snapshot.
//!
//! Every write holds a [`WriteGuard`] while it is in flight: the guard
//! marks its chunks in the [`ChangeRecord`] (durably, before the write) and,
//! while a snapshot is being stored, copies aside the frozen bytes of any
//! chunk the snapshot still needs. A freeze waits for the guards in flight
//! (a write is wholly before the freeze point or wholly after it), swaps
//! the record's marks, and lets writes go on: the guest is held for the
//! time of two fdatasyncs of the record file.
//!
//! Copies live in memory up to [`LiveOptions::copy_memory`] bytes, then in
//! an unlinked spill file in [`LiveOptions::spill_dir`]. They are kept
//! until the [`Frozen`] goes (the snapshot is stored or abandoned): the
//! snapshot's image file reads the frozen content meanwhile (see
//! [`super::progressing`]), so a chunk the pipeline has stored already is
//! still copied before a write overwrites it.
//!
//! This module never reads or writes the store; it owns no catalog state.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use super::progressing::Progressing;
use super::record::{BackingIdentity, ChangeRecord, FrozenMarks};
use super::{chunks_of, read_zero_filled};
use crate::catalog::SnapshotRecord;
use crate::error::{Error, IoContext, Result};
use crate::snapshot::source::Parent;

/// Copy stripes: a chunk's copy-before-write and its snapshot read
/// serialize on stripe `chunk % STRIPES`.
const STRIPES: usize = 256;

pub struct LiveOptions {
    /// The disk's name, as the record file is named.
    pub disk_id: String,
    /// Where the change record lives (the store's `live/`).
    pub record_dir: PathBuf,
    /// Where copies spill beyond `copy_memory`.
    pub spill_dir: PathBuf,
    pub chunk_size: u64,
    /// Bytes of copied chunks kept in memory.
    pub copy_memory: u64,
}

impl LiveOptions {
    /// Record and spill file both in `dir`; 64 MiB of copies in memory.
    pub fn new(dir: &Path, disk_id: &str, chunk_size: u64) -> LiveOptions {
        LiveOptions {
            disk_id: disk_id.to_string(),
            record_dir: dir.to_path_buf(),
            spill_dir: dir.to_path_buf(),
            chunk_size,
            copy_memory: 64 << 20,
        }
    }
}

pub struct LiveDisk {
    backing: Arc<File>,
    path: PathBuf,
    disk_id: String,
    chunk_size: u64,
    record: ChangeRecord,
    gate: Gate,
    /// The disk's size; changed by growing writes and `set_len`.
    size: Mutex<u64>,
    /// The copies of the snapshot being stored, if any.
    copies: RwLock<Option<Arc<Copies>>>,
    spill_dir: PathBuf,
    copy_memory: u64,
    /// Writes ended since the record last stamped the backing's identity.
    unstamped: AtomicBool,
    /// The snapshot being stored, readable at its freeze point.
    progressing: Mutex<Option<Arc<Progressing>>>,
}

/// How often the stamper looks for writes to stamp: a kill -9 within
/// this long of the last write leaves the record untrusted (over-reports).
const STAMP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Held while one write is in flight; see [`LiveDisk::write_guard`].
pub struct WriteGuard<'d> {
    disk: &'d LiveDisk,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Set before the gate lets a freeze or shutdown by: the stamper
        // then sees this write.
        self.disk.unstamped.store(true, Ordering::Release);
        self.disk.gate.exit();
    }
}

impl LiveDisk {
    /// Opens the live disk whose backing (raw image or block device, open
    /// read-write by the caller) is `backing`, named `path` in messages.
    /// Reads the backing's identity before any write, to judge the record.
    pub fn open(backing: Arc<File>, path: &Path, options: &LiveOptions) -> Result<Arc<LiveDisk>> {
        let identity = BackingIdentity::settled(&backing)
            .context(|| format!("cannot stat backing {}", path.display()))?;
        let size = identity.size;
        // A regular file's times change with every write: stamps of them
        // tell, after a crash, that nobody wrote it since.
        let stamps = backing
            .metadata()
            .context(|| format!("cannot stat backing {}", path.display()))?
            .is_file();
        let record = ChangeRecord::open(
            &options.record_dir,
            &options.disk_id,
            options.chunk_size,
            size,
            &identity,
            stamps,
        )?;
        let disk = Arc::new(LiveDisk {
            backing,
            path: path.to_path_buf(),
            disk_id: options.disk_id.clone(),
            chunk_size: options.chunk_size,
            record,
            gate: Gate::default(),
            size: Mutex::new(size),
            copies: RwLock::new(None),
            spill_dir: options.spill_dir.clone(),
            copy_memory: options.copy_memory,
            unstamped: AtomicBool::new(false),
            progressing: Mutex::new(None),
        });
        if stamps {
            start_stamper(Arc::downgrade(&disk));
        }
        Ok(disk)
    }

    /// Stamps the backing's identity in the record if writes ended since
    /// the last stamp and the clock has passed their times; otherwise
    /// leaves that for the next round. Returns false once the disk is
    /// shut down.
    fn stamp_if_written(&self) -> bool {
        if self.gate.is_shut() {
            return false;
        }
        if !self.unstamped.swap(false, Ordering::AcqRel) {
            return true;
        }
        // Read after the flag was cleared: a write ending later sets it
        // again, and its times are then stamped next round.
        let stamped = BackingIdentity::of(&self.backing)
            .map_err(|e| e.to_string())
            .and_then(|identity| {
                if !identity.is_settled() {
                    return Ok(false);
                }
                self.record
                    .stamp(&identity)
                    .map(|()| true)
                    .map_err(|e| e.to_string())
            });
        match stamped {
            Ok(true) => {}
            Ok(false) => self.unstamped.store(true, Ordering::Release),
            Err(e) => {
                log::warn!(
                    "live disk {}: cannot stamp its change record: {e}",
                    self.disk_id
                );
                self.unstamped.store(true, Ordering::Release);
            }
        }
        true
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backing(&self) -> &File {
        &self.backing
    }

    pub fn record(&self) -> &ChangeRecord {
        &self.record
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    pub fn size(&self) -> u64 {
        *lock(&self.size)
    }

    /// The snapshot of this disk being stored, if one is frozen and
    /// published (its image file reads the frozen content).
    pub fn progressing(&self) -> Option<Arc<Progressing>> {
        lock(&self.progressing).clone()
    }

    fn current_copies(&self) -> Option<Arc<Copies>> {
        self.copies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Admits a write of `len` bytes at `offset`: waits while a freeze
    /// runs, grows the disk if the write ends past it, marks the chunks
    /// durably and copies aside what a running snapshot still needs. Write
    /// to the backing while the guard lives; drop it when the write is done.
    pub fn write_guard(&self, offset: u64, len: u64) -> Result<WriteGuard<'_>> {
        self.gate.enter(&self.disk_id)?;
        let guard = WriteGuard { disk: self };
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::Invalid(format!("write at {offset} of {len} bytes overflows")))?;
        {
            let mut size = lock(&self.size);
            if end > *size {
                self.record.resize(end)?;
                *size = end;
            }
        }
        self.admit(chunks_of(offset, len, self.chunk_size))?;
        Ok(guard)
    }

    fn admit(&self, chunks: Range<u64>) -> Result<()> {
        self.record.before_write(chunks.clone())?;
        if let Some(copies) = self.current_copies() {
            copies.before_write(&self.backing, chunks)?;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` through the write path.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _guard = self.write_guard(offset, buf.len() as u64)?;
        self.backing
            .write_all_at(buf, offset)
            .context(|| format!("write to {} at {offset}", self.path.display()))
    }

    /// Reads from the disk; bytes past the backing's end (but within the
    /// disk) read as zeros. Returns the bytes read (short at the end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let size = self.size();
        let len = (buf.len() as u64).min(size.saturating_sub(offset)) as usize;
        read_zero_filled(&self.backing, &mut buf[..len], offset)
            .context(|| format!("read from {} at {offset}", self.path.display()))?;
        Ok(len)
    }

    /// Zeroes `len` bytes at `offset` (clipped to the disk), as a guest's
    /// discard (`punch`: deallocate) or write-zeroes (keep it allocated).
    /// Falls back to writing zeros where the backing cannot do either.
    pub fn zero_range(&self, offset: u64, len: u64, punch: bool) -> Result<()> {
        let len = len.min(self.size().saturating_sub(offset));
        if len == 0 {
            return Ok(());
        }
        let _guard = self.write_guard(offset, len)?;
        let mode = if punch {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        let rc = unsafe {
            libc::fallocate(
                self.backing.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if !matches!(
            err.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENODEV)
        ) {
            return Err(Error::Io {
                context: format!("zero {len} bytes of {} at {offset}", self.path.display()),
                source: err,
            });
        }
        let zeros = vec![0u8; (len.min(1 << 20)) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.backing
                .write_all_at(&zeros[..n as usize], offset + done)
                .context(|| format!("zero {} at {}", self.path.display(), offset + done))?;
            done += n;
        }
        Ok(())
    }

    /// Marks chunks `ranges` changed, durably, before something rewrites
    /// them other than through [`LiveDisk::write_at`] (a rollback onto the
    /// backing): the record stays right without being distrusted.
    pub fn mark_changed(&self, ranges: &[Range<u64>]) -> Result<()> {
        for range in ranges {
            self.record.before_write(range.clone())?;
        }
        // Durable before the rollback writes (it syncs only the data).
        self.record.sync_marks()
    }

    /// Grows or shrinks the disk (truncate of the live file).
    pub fn set_len(&self, new_size: u64) -> Result<()> {
        self.gate.enter(&self.disk_id)?;
        let _guard = WriteGuard { disk: self };
        let mut size = lock(&self.size);
        let (lo, hi) = ((*size).min(new_size), (*size).max(new_size));
        self.record.resize(new_size)?;
        // A shrink destroys the chunks past the new end: copy them first.
        if let Some(copies) = self.current_copies() {
            copies.before_write(&self.backing, chunks_of(lo, hi - lo, self.chunk_size))?;
        }
        self.backing
            .set_len(new_size)
            .context(|| format!("resize {} to {new_size}", self.path.display()))?;
        *size = new_size;
        Ok(())
    }

    /// Makes the disk's writes durable (fsync of the live file), their
    /// marks first.
    pub fn sync(&self) -> Result<()> {
        self.record.sync_marks()?;
        self.backing
            .sync_data()
            .context(|| format!("sync {}", self.path.display()))
    }

    /// The point in time of a snapshot built on `parent` (the disk's latest
    /// stored snapshot, or None): waits for the writes in flight, holds new
    /// ones while the record's marks are swapped, and returns. The snapshot
    /// then reads the frozen chunks through [`Frozen::source`]: only those
    /// changed since `parent` when the record counts from it and is
    /// trusted, else every chunk (see [`Frozen::full_read_reason`]). Fails
    /// with `Busy` while an earlier [`Frozen`] of this disk lives.
    pub fn freeze(self: &Arc<Self>, parent: Option<&SnapshotRecord>) -> Result<Frozen> {
        let _hold = self.gate.close();
        if self.current_copies().is_some() {
            return Err(Error::Busy(self.disk_id.clone()));
        }
        let marks = self.record.freeze()?;
        let size = self.size();
        let chunks = size.div_ceil(self.chunk_size);
        let full_read = match parent {
            _ if marks.all() => Some(format!(
                "the change record is not trusted: {}",
                marks.untrusted_reason().unwrap_or("unknown")
            )),
            None => Some("the disk has no earlier snapshot".to_string()),
            Some(p) if p.id != marks.base() => {
                Some("the parent snapshot is not the one the change record counts from".to_string())
            }
            Some(p) if u64::from(p.chunk_size) != self.chunk_size => {
                Some("the parent snapshot has another chunk size".to_string())
            }
            Some(_) => None,
        };
        let to_read: Vec<u64> = if full_read.is_some() {
            all_bits(chunks)
        } else {
            // Marks past the end (a shrink's) are not read.
            let limit = all_bits(chunks);
            (0..limit.len()).map(|w| marks.word(w) & limit[w]).collect()
        };
        let copies = Arc::new(Copies::new(
            to_read,
            size,
            self.chunk_size,
            self.spill_dir.clone(),
            self.copy_memory,
        ));
        *self.copies.write().unwrap_or_else(|e| e.into_inner()) = Some(copies.clone());
        let parent_record = match (&full_read, parent) {
            (None, Some(p)) => Some(p.clone()),
            _ => None,
        };
        Ok(Frozen {
            disk: self.clone(),
            copies,
            marks,
            parent_record,
            size,
            full_read,
            published: None,
        })
    }

    /// Stops the disk at unmount: waits for the writes in flight, refuses
    /// new ones, makes the backing durable and records a clean shutdown so
    /// that the next open trusts the record.
    pub fn shutdown(&self) -> Result<()> {
        self.gate.shut();
        self.sync()?;
        let identity = BackingIdentity::settled(&self.backing)
            .context(|| format!("cannot stat backing {}", self.path.display()))?;
        self.record.mark_clean_shutdown(&identity)
    }
}

/// Stamps the disk's record after writes until the disk is shut down or
/// dropped (the thread holds it weakly, so it keeps nothing open).
fn start_stamper(disk: std::sync::Weak<LiveDisk>) {
    let spawned = std::thread::Builder::new()
        .name("snapfs-stamp".into())
        .spawn(move || loop {
            std::thread::sleep(STAMP_INTERVAL);
            match disk.upgrade() {
                Some(disk) if disk.stamp_if_written() => {}
                _ => return,
            }
        });
    if let Err(e) = spawned {
        // Only trust after a crash is lost: the record stays correct.
        log::warn!("cannot start the change record's stamper: {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn all_bits(chunks: u64) -> Vec<u64> {
    let mut words = vec![u64::MAX; chunks.div_ceil(64) as usize];
    if !chunks.is_multiple_of(64) {
        if let Some(last) = words.last_mut() {
            *last = (1u64 << (chunks % 64)) - 1;
        }
    }
    words
}

/// A frozen point in time of a live disk, until its snapshot is stored.
/// Dropping it without [`Frozen::committed`] abandons the snapshot: its
/// marks stay in the record and the next freeze includes them.
pub struct Frozen {
    pub(super) disk: Arc<LiveDisk>,
    pub(super) copies: Arc<Copies>,
    marks: FrozenMarks,
    /// The snapshot this one is built on, when it reads only the change.
    parent_record: Option<SnapshotRecord>,
    pub(super) size: u64,
    full_read: Option<String>,
    /// The image file that reads this point in time, once published.
    published: Option<Arc<Progressing>>,
}

impl Frozen {
    /// The disk's size at the freeze.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn disk(&self) -> &Arc<LiveDisk> {
        &self.disk
    }

    /// The snapshot this one is built on, when it reads only the change.
    pub fn parent(&self) -> Option<Parent> {
        self.parent_record.as_ref().map(Parent::from)
    }

    /// Why the snapshot reads every chunk, or None when it reads only the
    /// chunks changed since its parent (for `.status`).
    pub fn full_read_reason(&self) -> Option<&str> {
        self.full_read.as_deref()
    }

    /// The chunk ranges the snapshot reads (every chunk for a full read;
    /// holes of the backing are skipped then).
    pub fn chunks_to_read(&self) -> Vec<Range<u64>> {
        let chunks = self.size.div_ceil(self.disk.chunk_size);
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for c in 0..chunks {
            if self.copies.is_frozen(c) {
                match ranges.last_mut() {
                    Some(r) if r.end == c => r.end = c + 1,
                    _ => ranges.push(c..c + 1),
                }
            }
        }
        ranges
    }

    /// What the copies hold now.
    pub fn copy_stats(&self) -> CopyStats {
        self.copies.stats()
    }

    /// Makes the frozen point in time readable as snapshot `name` (state
    /// progressing) until it is stored or abandoned; returns it.
    pub fn publish(&mut self, name: &str, created_ms: i64) -> Arc<Progressing> {
        let progressing = Arc::new(Progressing::new(
            name,
            created_ms,
            self.size,
            self.disk.clone(),
            self.copies.clone(),
            self.parent_record.clone(),
        ));
        *lock(&self.disk.progressing) = Some(progressing.clone());
        self.published = Some(progressing.clone());
        progressing
    }

    /// The snapshot of this freeze is stored as `snapshot`: makes the
    /// backing durable, then tells the record to count from `snapshot`,
    /// and drops the copies.
    pub fn committed(self, snapshot: &SnapshotRecord) -> Result<()> {
        if snapshot.size != self.size {
            return Err(Error::Invalid(format!(
                "snapshot {} has {} bytes, the freeze had {}",
                snapshot.name, snapshot.size, self.size
            )));
        }
        self.disk.sync()?;
        self.disk.record.commit(&self.marks, snapshot.id)?;
        // Readers of the image file go on from the stored snapshot; only
        // then may the copies go (when `self` drops).
        if let Some(progressing) = &self.published {
            progressing.stored(snapshot.clone());
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Some(progressing) = self.published.take() {
            progressing.end("the snapshot did not finish");
            let mut slot = lock(&self.disk.progressing);
            if slot.as_ref().is_some_and(|p| Arc::ptr_eq(p, &progressing)) {
                *slot = None;
            }
        }
        let mut slot = self.disk.copies.write().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &self.copies)) {
            *slot = None;
        }
    }
}

/// Keeps writes and freezes apart: writes share it, a freeze (or the
/// shutdown) has it alone. A waiting freeze holds new writes back, so it
/// cannot starve.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    writers: usize,
    frozen: bool,
    shut: bool,
}

struct GateHold<'g>(&'g Gate);

impl Drop for GateHold<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).frozen = false;
        self.0.changed.notify_all();
    }
}

impl Gate {
    fn wait<'a>(&self, state: MutexGuard<'a, GateState>) -> MutexGuard<'a, GateState> {
        self.changed.wait(state).unwrap_or_else(|e| e.into_inner())
    }

    fn enter(&self, disk: &str) -> Result<()> {
        let mut state = lock(&self.state);
        while state.frozen {
            state = self.wait(state);
        }
        if state.shut {
            return Err(Error::Invalid(format!("live disk {disk} is shut down")));
        }
        state.writers += 1;
        Ok(())
    }

    fn exit(&self) {
        let mut state = lock(&self.state);
        state.writers -= 1;
        if state.writers == 0 {
            self.changed.notify_all();
        }
    }

    fn close(&self) -> GateHold<'_> {
        let mut state = lock(&self.state);
        while state.frozen {
            state = self.wait(state);
        }
        state.frozen = true;
        while state.writers > 0 {
            state = self.wait(state);
        }
        GateHold(self)
    }

    fn shut(&self) {
        let hold = self.close();
        lock(&self.state).shut = true;
        drop(hold);
    }

    fn is_shut(&self) -> bool {
        lock(&self.state).shut
    }
}

/// What the copies of a running snapshot hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Chunks copied aside since the freeze.
    pub copied_chunks: u64,
    pub memory_bytes: u64,
    pub peak_memory_bytes: u64,
    pub spilled_bytes: u64,
    /// Chunks that went to the spill file since the freeze.
    pub spilled_chunks: u64,
}

fn get_bit(bits: &[AtomicU64], c: u64) -> bool {
    bits[(c / 64) as usize].load(Ordering::Acquire) & (1 << (c % 64)) != 0
}

fn set_bit(bits: &[AtomicU64], c: u64) {
    bits[(c / 64) as usize].fetch_or(1 << (c % 64), Ordering::AcqRel);
}

/// The frozen chunks of a running snapshot and the bytes copied aside.
pub(crate) struct Copies {
    chunk_size: u64,
    size: u64,
    chunks: u64,
    /// The chunks the snapshot reads, fixed at the freeze: a write to one
    /// copies it first, once.
    frozen: Vec<u64>,
    /// Frozen chunks whose frozen bytes are in `store`, not the backing.
    copied: Vec<AtomicU64>,
    stripes: Vec<Mutex<()>>,
    store: Mutex<CopyStore>,
}

struct CopyStore {
    memory: HashMap<u64, Vec<u8>>,
    limit: u64,
    spill_dir: PathBuf,
    spill: Option<File>,
    /// chunk -> (slot, length) in the spill file.
    spilled: HashMap<u64, (u64, usize)>,
    slots: u64,
    stats: CopyStats,
}

impl Copies {
    fn new(frozen: Vec<u64>, size: u64, chunk_size: u64, spill_dir: PathBuf, limit: u64) -> Copies {
        let chunks = size.div_ceil(chunk_size);
        let words = chunks.div_ceil(64) as usize;
        Copies {
            chunk_size,
            size,
            chunks,
            copied: (0..words).map(|_| AtomicU64::new(0)).collect(),
            frozen,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            store: Mutex::new(CopyStore {
                memory: HashMap::new(),
                limit,
                spill_dir,
                spill: None,
                spilled: HashMap::new(),
                slots: 0,
                stats: CopyStats::default(),
            }),
        }
    }

    pub(crate) fn chunks(&self) -> u64 {
        self.chunks
    }

    pub(crate) fn is_frozen(&self, c: u64) -> bool {
        c < self.chunks && self.frozen[(c / 64) as usize] & (1 << (c % 64)) != 0
    }

    pub(crate) fn is_copied(&self, c: u64) -> bool {
        c < self.chunks && get_bit(&self.copied, c)
    }

    /// Bytes of chunk `c` in the frozen disk.
    pub(crate) fn chunk_len(&self, c: u64) -> usize {
        (self.size - c * self.chunk_size).min(self.chunk_size) as usize
    }

    pub(crate) fn stripe(&self, c: u64) -> usize {
        (c % STRIPES as u64) as usize
    }

    pub(crate) fn lock_stripe(&self, stripe: usize) -> MutexGuard<'_, ()> {
        lock(&self.stripes[stripe])
    }

    fn stats(&self) -> CopyStats {
        lock(&self.store).stats
    }

    /// Before chunks `chunks` of the backing are overwritten: copies aside
    /// the frozen ones not copied yet.
    fn before_write(&self, backing: &File, chunks: Range<u64>) -> Result<()> {
        for c in chunks.start..chunks.end.min(self.chunks) {
            if !self.is_frozen(c) || get_bit(&self.copied, c) {
                continue;
            }
            let _stripe = self.lock_stripe(self.stripe(c));
            if get_bit(&self.copied, c) {
                continue;
            }
            let mut bytes = vec![0u8; self.chunk_len(c)];
            read_zero_filled(backing, &mut bytes, c * self.chunk_size)
                .context(|| format!("copy-before-write of chunk {c}"))?;
            self.put(c, bytes)?;
            set_bit(&self.copied, c);
        }
        Ok(())
    }

    fn put(&self, c: u64, bytes: Vec<u8>) -> Result<()> {
        let mut store = lock(&self.store);
        let len = bytes.len() as u64;
        store.stats.copied_chunks += 1;
        if store.stats.memory_bytes + len <= store.limit {
            store.stats.memory_bytes += len;
            store.stats.peak_memory_bytes =
                store.stats.peak_memory_bytes.max(store.stats.memory_bytes);
            store.memory.insert(c, bytes);
            return Ok(());
        }
        if store.spill.is_none() {
            store.spill = Some(spill_file(&store.spill_dir)?);
        }
        // Copies live until the snapshot is stored: slots are never freed.
        let slot = store.slots;
        store.slots += 1;
        if let Some(spill) = &store.spill {
            spill
                .write_all_at(&bytes, slot * self.chunk_size)
                .context(|| {
                    format!(
                        "cannot spill a copied chunk to {}",
                        store.spill_dir.display()
                    )
                })?;
        }
        store.spilled.insert(c, (slot, bytes.len()));
        store.stats.spilled_bytes += len;
        store.stats.spilled_chunks += 1;
        Ok(())
    }

    /// Fills `out` from the copy of chunk `c`.
    fn get(&self, c: u64, out: &mut [u8]) -> Result<()> {
        let store = lock(&self.store);
        if let Some(bytes) = store.memory.get(&c) {
            out.copy_from_slice(bytes);
            return Ok(());
        }
        let Some(&(slot, len)) = store.spilled.get(&c) else {
            return Err(Error::Invalid(format!("the copy of chunk {c} is missing")));
        };
        if let Some(spill) = &store.spill {
            spill
                .read_exact_at(&mut out[..len], slot * self.chunk_size)
                .context(|| format!("cannot read a spilled copy of chunk {c}"))?;
        }
        Ok(())
    }

    /// Reads frozen chunk `c` into `out` (its frozen length): from its copy
    /// or the backing. The caller holds the chunk's stripe.
    pub(crate) fn read_chunk(&self, backing: &File, c: u64, out: &mut [u8]) -> Result<()> {
        if get_bit(&self.copied, c) {
            self.get(c, out)
        } else if self.is_frozen(c) {
            read_zero_filled(backing, out, c * self.chunk_size)
                .context(|| format!("read of frozen chunk {c}"))
        } else {
            Err(Error::Invalid(format!("chunk {c} is not frozen")))
        }
    }
}

/// An unlinked file in `dir`: its space goes back when it is closed,
/// whatever happens to the process.
fn spill_file(dir: &Path) -> Result<File> {
    crate::modes::create_private_dir(dir).context(|| format!("cannot create {}", dir.display()))?;
    let name = format!(
        "copies.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .context(|| format!("cannot create spill file {}", path.display()))?;
    std::fs::remove_file(&path).context(|| format!("cannot unlink {}", path.display()))?;
    Ok(file)
}
