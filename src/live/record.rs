//! The change record of one live disk: which chunks changed since the last
//! snapshot, kept in a file so that it outlives the process. The rule it
//! keeps: it may over-report, it never misses a write that reached the
//! backing. A chunk is marked (a pwrite of the record file) before the
//! write to it may proceed, and the marks are made durable (fdatasync)
//! before the disk's own data is (the live file's fsync); a chunk already
//! marked costs nothing. A mark in the page cache survives a kill -9 of
//! the process, not a crash of the host: a record left behind by a host
//! that went down (another boot id, no clean shutdown) is not trusted.
//!
//! Two generations of marks: `current` (writes since the last freeze) and
//! `frozen` (the marks a running snapshot stores). A freeze moves current
//! into frozen; only [`ChangeRecord::commit`] forgets the frozen marks. At
//! open both are reported, so a crash before the commit loses nothing.
//!
//! The record cannot vouch for writes made while snapfs was not running.
//! It stores the backing's identity (device, inode, size, mtime and ctime
//! in nanoseconds) at a clean shutdown and, for a regular file, also a
//! moment after every burst of writes (a "stamp", see `LiveDisk`): every
//! write changes a file's times, so a backing whose identity is still the
//! stamped one was written by nobody since, and the marks (durable before
//! each write) hold every write before. At open, a record whose backing's
//! identity changed counts every chunk as changed ("untrusted") until the
//! next snapshot commits; so does one that was not shut down cleanly and
//! has no stamp to compare. A kill -9 of the mount thus keeps the record
//! trusted when nobody wrote the backing after it. Writes to a block device
//! through another path leave its device node's times as they were: for
//! block devices only a size change and an unclean shutdown are detected.
//!
//! # File format (`<dir>/<disk id, escaped>.changes`, version 1)
//!
//! All integers little-endian. Header, 4096 bytes (fields in the first 128):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SNAPFSCR` |
//! | 8 | 4 | version, u32 = 1 |
//! | 12 | 4 | flags: 1 clean shutdown, 2 every chunk changed (current), 4 every chunk changed (frozen), 8 stamped (the identity is the backing's after the last write) |
//! | 16 | 8 | chunk size in bytes |
//! | 24 | 8 | disk size in bytes |
//! | 32 | 8 | capacity: chunks each bitmap has room for (a multiple of 32768) |
//! | 40 | 8 | base: catalog id of the snapshot the marks count from, 0 for none |
//! | 48 | 8 | backing st_dev at the clean shutdown or the last stamp |
//! | 56 | 8 | backing st_ino |
//! | 64 | 8 | backing size |
//! | 72 | 8 | backing mtime, i64 nanoseconds since the epoch |
//! | 80 | 8 | backing ctime, i64 nanoseconds |
//! | 88 | 16 | boot id of the host that last opened or stamped the record (`/proc/sys/kernel/random/boot_id`), 0 if unknown |
//! | 104 | 16 | reserved, 0 |
//! | 120 | 8 | checksum: the first 8 bytes of blake3(bytes 0..120), as u64 |
//! | 128 | 3968 | 0 |
//!
//! Then the current bitmap (capacity / 8 bytes) at 4096, then the frozen
//! bitmap of the same length: u64 words, chunk c is bit c % 64 of word
//! c / 64. A header that does not check (magic, version, checksum, chunk
//! size) makes a new, untrusted record: over-reporting is always safe.
//!
//! Order of durable steps. Freeze: frozen |= current with the header, sync;
//! then current = 0, sync. Commit: header (new base), sync; then frozen = 0,
//! sync. Each crash point leaves frozen ∪ current a superset of the change
//! since the base the header names.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock};

use crate::error::{Error, IoContext, Result};

pub const RECORD_MAGIC: [u8; 8] = *b"SNAPFSCR";
pub const RECORD_VERSION: u32 = 1;
/// Bytes before the first bitmap.
pub const HEADER_LEN: u64 = 4096;
const HEADER_FIELDS: usize = 128;
/// Bitmaps grow a 4 KiB page at a time.
const CAPACITY_STEP: u64 = 4096 * 8;

const FLAG_CLEAN: u32 = 1;
const FLAG_CURRENT_ALL: u32 = 2;
const FLAG_FROZEN_ALL: u32 = 4;
const FLAG_STAMPED: u32 = 8;

/// What tells whether a backing changed while snapfs was not running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackingIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl BackingIdentity {
    /// The backing's identity once the clock has passed its times, so that
    /// a write by anyone after this gets a later mtime even where file
    /// times are coarse (a kernel tick). Waits a second at most.
    pub fn settled(file: &File) -> io::Result<BackingIdentity> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            let identity = BackingIdentity::of(file)?;
            if identity.is_settled() || std::time::Instant::now() > deadline {
                return Ok(identity);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// True once the coarse clock is past both times.
    pub fn is_settled(&self) -> bool {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) };
        let now_ns = now.tv_sec * 1_000_000_000 + now.tv_nsec;
        now_ns > self.mtime_ns.max(self.ctime_ns)
    }

    pub fn of(file: &File) -> io::Result<BackingIdentity> {
        let meta = file.metadata()?;
        Ok(BackingIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: super::backing_size(file)?,
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    flags: u32,
    chunk_size: u64,
    size: u64,
    capacity: u64,
    base: u64,
    identity: BackingIdentity,
    boot_id: [u8; 16],
}

/// This boot of the host (`/proc/sys/kernel/random/boot_id`), zeros when
/// unknown: a record written in another boot may have lost the marks its
/// page cache held.
pub fn boot_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let digits: Vec<u8> = text
        .bytes()
        .filter_map(|b| (b as char).to_digit(16).map(|d| d as u8))
        .collect();
    let mut id = [0u8; 16];
    if digits.len() == 32 {
        for (i, pair) in digits.chunks(2).enumerate() {
            id[i] = pair[0] << 4 | pair[1];
        }
    }
    id
}

impl Header {
    fn encode(&self) -> [u8; HEADER_FIELDS] {
        let mut b = [0u8; HEADER_FIELDS];
        b[0..8].copy_from_slice(&RECORD_MAGIC);
        b[8..12].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        let id = &self.identity;
        let fields = [
            self.chunk_size,
            self.size,
            self.capacity,
            self.base,
            id.dev,
            id.ino,
            id.size,
            id.mtime_ns as u64,
            id.ctime_ns as u64,
        ];
        for (i, field) in fields.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&field.to_le_bytes());
        }
        b[88..104].copy_from_slice(&self.boot_id);
        let sum = checksum(&b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> std::result::Result<Header, String> {
        if b.len() < HEADER_FIELDS {
            return Err("the file is shorter than its header".into());
        }
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        if b[0..8] != RECORD_MAGIC {
            return Err("bad magic".into());
        }
        let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
        if version != RECORD_VERSION {
            return Err(format!("format version {version}"));
        }
        if u64_at(120) != checksum(&b[..120]) {
            return Err("header checksum mismatch".into());
        }
        Ok(Header {
            flags: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
            chunk_size: u64_at(16),
            size: u64_at(24),
            capacity: u64_at(32),
            base: u64_at(40),
            identity: BackingIdentity {
                dev: u64_at(48),
                ino: u64_at(56),
                size: u64_at(64),
                mtime_ns: u64_at(72) as i64,
                ctime_ns: u64_at(80) as i64,
            },
            boot_id: b[88..104].try_into().unwrap_or([0; 16]),
        })
    }

    fn current_offset(&self) -> u64 {
        HEADER_LEN
    }

    fn frozen_offset(&self) -> u64 {
        HEADER_LEN + self.capacity / 8
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    let hash = blake3::hash(bytes);
    let mut w = [0u8; 8];
    w.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

fn capacity_for(chunks: u64) -> u64 {
    chunks.div_ceil(CAPACITY_STEP).max(1) * CAPACITY_STEP
}

/// The file name of a disk's record: the disk name with every byte outside
/// `[A-Za-z0-9._-]` written `%XX` (a disk name may hold a `/`).
pub fn record_file_name(disk_id: &str) -> String {
    let mut name = String::new();
    for b in disk_id.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name + ".changes"
}

/// The marks a freeze took: the chunks a snapshot on the record's base
/// must read. Committing them (after the snapshot is stored) forgets them.
#[derive(Clone, Debug)]
pub struct FrozenMarks {
    generation: u64,
    words: Vec<u64>,
    all: bool,
    chunks: u64,
    base: u64,
    untrusted_why: Option<String>,
}

impl FrozenMarks {
    /// Every chunk counts as changed (the record could not vouch).
    pub fn all(&self) -> bool {
        self.all
    }

    /// Chunks of the disk at the freeze.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The catalog id of the snapshot the marks count from (0: none).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Why the record could not vouch, when `all()`.
    pub fn untrusted_reason(&self) -> Option<&str> {
        self.untrusted_why.as_deref()
    }

    /// Word `w` of the marks (chunks 64w..64w+64), ignoring `all`.
    pub(crate) fn word(&self, w: usize) -> u64 {
        self.words.get(w).copied().unwrap_or(0)
    }

    pub fn contains(&self, chunk: u64) -> bool {
        chunk < self.chunks && (self.all || bit(&self.words, chunk))
    }

    /// The changed chunks as ranges, in order.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        if self.all {
            return (self.chunks > 0)
                .then_some(0..self.chunks)
                .into_iter()
                .collect();
        }
        ranges_of(|c| bit(&self.words, c), self.chunks)
    }
}

fn bit(words: &[u64], chunk: u64) -> bool {
    words
        .get((chunk / 64) as usize)
        .is_some_and(|w| w & (1 << (chunk % 64)) != 0)
}

fn ranges_of(is_set: impl Fn(u64) -> bool, chunks: u64) -> Vec<Range<u64>> {
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for c in 0..chunks {
        if is_set(c) {
            match ranges.last_mut() {
                Some(last) if last.end == c => last.end = c + 1,
                _ => ranges.push(c..c + 1),
            }
        }
    }
    ranges
}

/// Bit masks of the words that chunks `range` touches: (first word, masks).
fn masks(range: &Range<u64>) -> (usize, Vec<u64>) {
    let first_word = range.start / 64;
    let last_word = (range.end - 1) / 64;
    let masks = (first_word..=last_word)
        .map(|w| {
            let lo = range.start.max(w * 64) - w * 64;
            let hi = range.end.min(w * 64 + 64) - w * 64;
            if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            }
        })
        .collect();
    (first_word as usize, masks)
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn bytes_to_words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|w| {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            u64::from_le_bytes(a)
        })
        .collect()
}

pub struct ChangeRecord {
    chunk_size: u64,
    /// The durable marks of the current generation. Changed under `state`
    /// only, after the file holds them; read without it by the fast path.
    current: RwLock<Vec<AtomicU64>>,
    /// Every chunk counts as changed already: marking adds nothing.
    current_all: AtomicBool,
    /// The file says "clean shutdown": the next mark must clear that first.
    clean: AtomicBool,
    syncs: AtomicU64,
    /// Marks were written since the record file was last synced.
    unsynced: AtomicBool,
    /// False only under `SNAPFS_BENCH_NO_TRACKING` (the benchmark's
    /// "tracking off" side): nothing is marked and every snapshot reads
    /// the whole disk, so nothing wrong is ever stored.
    tracking: bool,
    state: Mutex<State>,
}

/// The environment variable that turns change tracking off, for the
/// benchmark that measures what tracking costs.
pub const NO_TRACKING_VAR: &str = "SNAPFS_BENCH_NO_TRACKING";

struct State {
    file: File,
    path: PathBuf,
    header: Header,
    frozen: Vec<u64>,
    /// Counts freezes; a commit must name the latest.
    generation: u64,
    untrusted_why: Option<String>,
}

impl ChangeRecord {
    /// Opens (or creates) the record of disk `disk_id` in `dir`, for a disk
    /// of `size` bytes whose backing is now `identity` (settled). A missing
    /// or damaged record, one whose backing changed since, or one that was
    /// not shut down cleanly and has no stamp to vouch for it, is
    /// untrusted: every chunk counts as changed until a snapshot frozen
    /// after this commits. `stamps`: the backing's times change with each
    /// write (a regular file), so stamps of them can vouch; the open
    /// stamps `identity` then.
    pub fn open(
        dir: &Path,
        disk_id: &str,
        chunk_size: u64,
        size: u64,
        identity: &BackingIdentity,
        stamps: bool,
    ) -> Result<ChangeRecord> {
        if chunk_size == 0 || !chunk_size.is_power_of_two() {
            return Err(Error::Invalid(format!(
                "chunk size {chunk_size} is not a power of two"
            )));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(record_file_name(disk_id));
        let chunks = size.div_ceil(chunk_size);
        let loaded = load(&path, chunk_size);
        let (header, current, frozen, why) = match loaded {
            Ok(Some((header, current, frozen))) => {
                let clean = header.flags & FLAG_CLEAN != 0;
                let stamped = stamps && header.flags & FLAG_STAMPED != 0;
                let same = header.size == size && header.identity == *identity;
                let this_boot = header.boot_id == boot_id() && header.boot_id != [0; 16];
                let why = match (same, clean, stamped) {
                    (true, false, true) if !this_boot => Some(
                        "the host went down while snapfs served the disk (marks it had not \
                         synced may be lost)"
                            .to_string(),
                    ),
                    (true, true, _) | (true, false, true) => None,
                    (false, true, _) => {
                        Some("the backing changed while snapfs was not running".to_string())
                    }
                    (false, false, true) => Some(
                        "snapfs did not shut down cleanly and the backing changed after its \
                         last write through snapfs"
                            .to_string(),
                    ),
                    (_, false, false) => Some("snapfs did not shut down cleanly".to_string()),
                };
                (header, current, frozen, why)
            }
            Ok(None) => (
                Header {
                    flags: 0,
                    chunk_size,
                    size,
                    capacity: capacity_for(chunks),
                    base: 0,
                    identity: *identity,
                    boot_id: [0; 16],
                },
                Vec::new(),
                Vec::new(),
                Some("the disk has no change record yet".to_string()),
            ),
            Err(damage) => {
                log::warn!("change record {}: {damage}; starting anew", path.display());
                (
                    Header {
                        flags: 0,
                        chunk_size,
                        size,
                        capacity: capacity_for(chunks),
                        base: 0,
                        identity: *identity,
                        boot_id: [0; 16],
                    },
                    Vec::new(),
                    Vec::new(),
                    Some(format!("the change record was damaged ({damage})")),
                )
            }
        };
        let mut header = header;
        let fresh = current.is_empty();
        let capacity = header.capacity.max(capacity_for(chunks));
        let words = (capacity / 64) as usize;
        let mut current = current;
        let mut frozen = frozen;
        current.resize(words, 0);
        frozen.resize(words, 0);
        header.flags &= !(FLAG_CLEAN | FLAG_STAMPED);
        header.boot_id = boot_id();
        if stamps && identity.is_settled() {
            header.flags |= FLAG_STAMPED;
            header.identity = *identity;
        }
        if why.is_some() {
            header.flags |= FLAG_CURRENT_ALL;
        }
        header.size = size;
        let rewrite = fresh || capacity != header.capacity;
        header.capacity = capacity;
        let file = if rewrite {
            rewrite_file(&path, &header, &current, &frozen)?
        } else {
            let file = open_rw(&path)?;
            file.write_all_at(&header.encode(), 0)
                .context(|| format!("cannot write {}", path.display()))?;
            file.sync_data()
                .context(|| format!("cannot sync {}", path.display()))?;
            file
        };
        // A record trusted at open stays trusted across a crash only if
        // the frozen-all mark survives too: both flags live in the header.
        let untrusted_why = why.or_else(|| {
            (header.flags & FLAG_FROZEN_ALL != 0)
                .then(|| "an earlier snapshot that read everything did not finish".to_string())
        });
        Ok(ChangeRecord {
            chunk_size,
            current: RwLock::new(current.into_iter().map(AtomicU64::new).collect()),
            current_all: AtomicBool::new(header.flags & FLAG_CURRENT_ALL != 0),
            clean: AtomicBool::new(false),
            syncs: AtomicU64::new(1),
            unsynced: AtomicBool::new(false),
            tracking: std::env::var_os(NO_TRACKING_VAR).is_none(),
            state: Mutex::new(State {
                file,
                path,
                header,
                frozen,
                generation: 0,
                untrusted_why,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The record file.
    pub fn path(&self) -> PathBuf {
        self.state().path.clone()
    }

    /// The disk size the record knows.
    pub fn size(&self) -> u64 {
        self.state().header.size
    }

    /// True when the marks alone tell what changed since `base()`.
    pub fn trusted(&self) -> bool {
        self.untrusted_reason().is_none()
    }

    /// Why the record is not trusted.
    pub fn untrusted_reason(&self) -> Option<String> {
        if !self.tracking {
            return Some(format!("change tracking is off ({NO_TRACKING_VAR})"));
        }
        let state = self.state();
        if state.header.flags & (FLAG_CURRENT_ALL | FLAG_FROZEN_ALL) == 0 {
            return None;
        }
        Some(
            state
                .untrusted_why
                .clone()
                .unwrap_or_else(|| "the record was made untrusted".into()),
        )
    }

    /// The catalog id of the snapshot the marks count from (0: none).
    pub fn base(&self) -> u64 {
        self.state().header.base
    }

    /// fdatasyncs of the record file so far (tests, statistics).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Marks chunks `chunks` changed; returns once the marks are in the
    /// record file (durable at the next [`ChangeRecord::sync_marks`]).
    /// Call before the write reaches the backing. Chunks already marked
    /// cost no system call.
    pub fn before_write(&self, chunks: Range<u64>) -> Result<()> {
        if !self.tracking || chunks.is_empty() || self.marked(&chunks) {
            return Ok(());
        }
        let mut state = self.state();
        self.mark_locked(&mut state, chunks)
    }

    /// The fast path: true when nothing needs writing.
    fn marked(&self, chunks: &Range<u64>) -> bool {
        if self.clean.load(Ordering::Acquire) {
            return false;
        }
        if self.current_all.load(Ordering::Acquire) {
            return true;
        }
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        if chunks.end > current.len() as u64 * 64 {
            return false;
        }
        let (first, masks) = masks(chunks);
        masks
            .iter()
            .enumerate()
            .all(|(i, m)| current[first + i].load(Ordering::Acquire) & m == *m)
    }

    fn mark_locked(&self, state: &mut State, chunks: Range<u64>) -> Result<()> {
        if chunks.end > state.header.capacity {
            self.grow_capacity(state, chunks.end)?;
        }
        let clean = state.header.flags & FLAG_CLEAN != 0;
        if clean {
            // Durably: a header still saying "clean" after a power cut
            // would vouch for writes it never saw.
            state.header.flags &= !FLAG_CLEAN;
            write_header(state)?;
            self.sync(state)?;
        }
        if !clean && self.marked(&chunks) {
            return Ok(());
        }
        let (first, masks) = masks(&chunks);
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let words: Vec<u64> = masks
            .iter()
            .enumerate()
            .map(|(i, m)| current[first + i].load(Ordering::Acquire) | m)
            .collect();
        let offset = state.header.current_offset() + first as u64 * 8;
        state
            .file
            .write_all_at(&words_to_bytes(&words), offset)
            .context(|| format!("cannot write change record {}", state.path.display()))?;
        self.unsynced.store(true, Ordering::Release);
        for (i, w) in words.into_iter().enumerate() {
            current[first + i].store(w, Ordering::Release);
        }
        self.clean.store(false, Ordering::Release);
        Ok(())
    }

    /// Makes the marks written so far durable; call before the disk's data
    /// is synced (the live file's fsync), so that no write the guest was
    /// told is durable lacks its durable mark.
    pub fn sync_marks(&self) -> Result<()> {
        if !self.unsynced.load(Ordering::Acquire) {
            return Ok(());
        }
        let state = self.state();
        // Under the lock: every mark written before it is in this sync.
        if self.unsynced.load(Ordering::Acquire) {
            self.sync(&state)?;
        }
        Ok(())
    }

    /// Syncs the record file; with it the marks written so far (marks are
    /// written under the state lock the caller holds).
    fn sync(&self, state: &State) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let was_unsynced = self.unsynced.swap(false, Ordering::AcqRel);
        let synced = state
            .file
            .sync_data()
            .context(|| format!("cannot sync change record {}", state.path.display()));
        if synced.is_err() && was_unsynced {
            self.unsynced.store(true, Ordering::Release);
        }
        synced
    }

    fn grow_capacity(&self, state: &mut State, chunks: u64) -> Result<()> {
        let capacity = capacity_for(chunks);
        let words = (capacity / 64) as usize;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let mut plain: Vec<u64> = current.iter().map(|w| w.load(Ordering::Acquire)).collect();
        plain.resize(words, 0);
        state.frozen.resize(words, 0);
        let mut header = state.header.clone();
        header.capacity = capacity;
        state.file = rewrite_file(&state.path, &header, &plain, &state.frozen)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        state.header = header;
        *current = plain.into_iter().map(AtomicU64::new).collect();
        Ok(())
    }

    /// The disk's size becomes `new_size`. Marks what a snapshot on the
    /// base must then read: on growth the old last chunk when it was
    /// partial; on a shrink every chunk from the new last one to the old
    /// end (they may come back, as zeros). Call before the backing changes.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        let mut state = self.state();
        let old_size = state.header.size;
        let cs = self.chunk_size;
        let marks = if new_size < old_size {
            new_size / cs..old_size.div_ceil(cs)
        } else if new_size > old_size && !old_size.is_multiple_of(cs) {
            old_size / cs..old_size / cs + 1
        } else {
            0..0
        };
        if new_size.div_ceil(cs) > state.header.capacity {
            self.grow_capacity(&mut state, new_size.div_ceil(cs))?;
        }
        if !marks.is_empty() {
            self.mark_locked(&mut state, marks)?;
        }
        if state.header.size != new_size {
            state.header.size = new_size;
            write_header(&state)?;
            self.sync(&state)?;
        }
        Ok(())
    }

    /// The chunks changed since `base()` (both generations), as ranges;
    /// every chunk when untrusted.
    pub fn changed(&self) -> Vec<Range<u64>> {
        let state = self.state();
        let chunks = state.header.size.div_ceil(self.chunk_size);
        if !self.tracking || state.header.flags & (FLAG_CURRENT_ALL | FLAG_FROZEN_ALL) != 0 {
            return (chunks > 0).then_some(0..chunks).into_iter().collect();
        }
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        ranges_of(
            |c| {
                let w = (c / 64) as usize;
                let m = 1 << (c % 64);
                current[w].load(Ordering::Acquire) & m != 0 || state.frozen[w] & m != 0
            },
            chunks,
        )
    }

    /// Bytes of the disk in changed chunks.
    pub fn changed_bytes(&self) -> u64 {
        let size = self.size();
        self.changed()
            .iter()
            .map(|r| (r.end * self.chunk_size).min(size) - r.start * self.chunk_size)
            .sum()
    }

    /// Moves the current marks into the frozen generation (durably) and
    /// returns what a snapshot must read: the frozen marks, which include
    /// those of an earlier freeze that was never committed. The caller
    /// keeps writes out meanwhile (see `LiveDisk::freeze`).
    pub fn freeze(&self) -> Result<FrozenMarks> {
        let mut state = self.state();
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        let mut merged = state.frozen.clone();
        for (f, c) in merged.iter_mut().zip(current.iter()) {
            *f |= c.load(Ordering::Acquire);
        }
        let all = !self.tracking || state.header.flags & (FLAG_CURRENT_ALL | FLAG_FROZEN_ALL) != 0;
        let untrusted_why = all.then(|| {
            if !self.tracking {
                return format!("change tracking is off ({NO_TRACKING_VAR})");
            }
            state
                .untrusted_why
                .clone()
                .unwrap_or_else(|| "the record was made untrusted".into())
        });
        // Step 1: frozen |= current, durably; current still holds them too.
        state.frozen = merged.clone();
        if all {
            state.header.flags |= FLAG_FROZEN_ALL;
        }
        let frozen_at = state.header.frozen_offset();
        state
            .file
            .write_all_at(&words_to_bytes(&merged), frozen_at)
            .context(|| format!("cannot write change record {}", state.path.display()))?;
        write_header(&state)?;
        self.sync(&state)?;
        // Step 2: current = 0.
        state.header.flags &= !FLAG_CURRENT_ALL;
        let zeros = vec![0u8; current.len() * 8];
        state
            .file
            .write_all_at(&zeros, state.header.current_offset())
            .context(|| format!("cannot write change record {}", state.path.display()))?;
        write_header(&state)?;
        self.sync(&state)?;
        for w in current.iter() {
            w.store(0, Ordering::Release);
        }
        self.current_all.store(false, Ordering::Release);
        state.generation += 1;
        Ok(FrozenMarks {
            generation: state.generation,
            words: merged,
            all,
            chunks: state.header.size.div_ceil(self.chunk_size),
            base: state.header.base,
            untrusted_why,
        })
    }

    /// The snapshot of `marks` is stored as catalog snapshot `base`: forget
    /// the frozen marks; the record now counts from it. The caller has made
    /// the backing durable first (what the snapshot read must be what a
    /// power loss leaves). Fails for marks of an older freeze.
    pub fn commit(&self, marks: &FrozenMarks, base: u64) -> Result<()> {
        let mut state = self.state();
        if marks.generation != state.generation {
            return Err(Error::Invalid(
                "these frozen marks are not the latest freeze of the disk".into(),
            ));
        }
        state.header.base = base;
        state.header.flags &= !FLAG_FROZEN_ALL;
        write_header(&state)?;
        self.sync(&state)?;
        let zeros = vec![0u8; state.frozen.len() * 8];
        state
            .file
            .write_all_at(&zeros, state.header.frozen_offset())
            .context(|| format!("cannot write change record {}", state.path.display()))?;
        self.sync(&state)?;
        state.frozen.iter_mut().for_each(|w| *w = 0);
        if state.header.flags & FLAG_CURRENT_ALL == 0 {
            state.untrusted_why = None;
        }
        state.generation += 1;
        Ok(())
    }

    /// Counts every chunk as changed until the next snapshot commits (a
    /// rollback rewrote the backing, say).
    pub fn distrust(&self, why: &str) -> Result<()> {
        let mut state = self.state();
        state.header.flags |= FLAG_CURRENT_ALL;
        state.header.flags &= !FLAG_CLEAN;
        write_header(&state)?;
        self.sync(&state)?;
        state.untrusted_why = Some(why.to_string());
        self.current_all.store(true, Ordering::Release);
        Ok(())
    }

    /// Stamps the backing's `identity` (settled) after writes: if the
    /// backing still has it at the next open, nobody wrote it since, and
    /// the record stays trusted even after a kill -9 of the mount. Call
    /// only with an identity read after every write marked so far began.
    pub fn stamp(&self, identity: &BackingIdentity) -> Result<()> {
        let mut state = self.state();
        if state.header.flags & FLAG_STAMPED != 0 && state.header.identity == *identity {
            return Ok(());
        }
        state.header.flags |= FLAG_STAMPED;
        state.header.identity = *identity;
        state.header.boot_id = boot_id();
        write_header(&state)?;
        // Not needed for a kill -9 (the page cache survives it); lets the
        // stamp survive a power loss too.
        self.sync(&state)
    }

    /// Records a clean shutdown with the backing's identity as it is now
    /// (after its last write and sync): the next open trusts the marks if
    /// the backing still has that identity. A later mark clears it again.
    pub fn mark_clean_shutdown(&self, identity: &BackingIdentity) -> Result<()> {
        let mut state = self.state();
        state.header.flags |= FLAG_CLEAN;
        state.header.identity = *identity;
        write_header(&state)?;
        self.sync(&state)?;
        self.clean.store(true, Ordering::Release);
        Ok(())
    }
}

fn open_rw(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .context(|| format!("cannot open change record {}", path.display()))
}

fn write_header(state: &State) -> Result<()> {
    state
        .file
        .write_all_at(&state.header.encode(), 0)
        .context(|| format!("cannot write change record {}", state.path.display()))
}

/// Reads a record file: None when there is none, Err(why) when it is
/// damaged.
#[allow(clippy::type_complexity)]
fn load(
    path: &Path,
    chunk_size: u64,
) -> std::result::Result<Option<(Header, Vec<u64>, Vec<u64>)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let header = Header::decode(&bytes)?;
    if header.chunk_size != chunk_size {
        return Err(format!(
            "chunk size {} is not the store's {chunk_size}",
            header.chunk_size
        ));
    }
    if header.capacity == 0 || header.capacity % CAPACITY_STEP != 0 {
        return Err(format!("bad capacity {}", header.capacity));
    }
    let len = header.capacity / 8;
    let end = HEADER_LEN + 2 * len;
    if (bytes.len() as u64) < end {
        return Err("the file is shorter than its bitmaps".into());
    }
    let current = bytes_to_words(&bytes[HEADER_LEN as usize..(HEADER_LEN + len) as usize]);
    let frozen = bytes_to_words(&bytes[(HEADER_LEN + len) as usize..end as usize]);
    Ok(Some((header, current, frozen)))
}

/// Writes a whole record file next to `path` and renames it over `path`.
fn rewrite_file(path: &Path, header: &Header, current: &[u64], frozen: &[u64]) -> Result<File> {
    let tmp = path.with_extension("changes.tmp");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .context(|| format!("cannot create {}", tmp.display()))?;
    let mut bytes = vec![0u8; HEADER_LEN as usize];
    bytes[..HEADER_FIELDS].copy_from_slice(&header.encode());
    bytes.extend(words_to_bytes(current));
    bytes.extend(words_to_bytes(frozen));
    file.write_all_at(&bytes, 0)
        .and_then(|()| file.sync_all())
        .context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).context(|| format!("cannot rename {}", tmp.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .context(|| format!("cannot sync {}", dir.display()))?;
    }
    Ok(file)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    const CS: u64 = 64 << 10;

    fn id(n: i64) -> BackingIdentity {
        BackingIdentity {
            dev: 1,
            ino: 2,
            size: 100 * CS,
            mtime_ns: n,
            ctime_ns: n,
        }
    }

    fn open(dir: &Path, identity: &BackingIdentity) -> ChangeRecord {
        ChangeRecord::open(dir, "vm1/system", CS, 100 * CS, identity, false).expect("open")
    }

    /// `open` for a backing whose times change with each write.
    fn open_stamped(dir: &Path, identity: &BackingIdentity) -> ChangeRecord {
        ChangeRecord::open(dir, "vm1/system", CS, 100 * CS, identity, true).expect("open")
    }

    /// Opens, commits a first (full) snapshot and shuts down cleanly: a
    /// record that is trusted at the next open.
    fn trusted(dir: &Path) -> ChangeRecord {
        let record = open(dir, &id(1));
        assert!(!record.trusted());
        let marks = record.freeze().expect("freeze");
        assert!(marks.all());
        record.commit(&marks, 7).expect("commit");
        record.mark_clean_shutdown(&id(1)).expect("clean");
        drop(record);
        let record = open(dir, &id(1));
        assert!(record.trusted(), "{:?}", record.untrusted_reason());
        assert_eq!(record.base(), 7);
        record
    }

    #[test]
    fn file_name_escapes_the_disk_name() {
        assert_eq!(record_file_name("vm1/system"), "vm1%2Fsystem.changes");
    }

    #[test]
    fn marks_cost_no_sync_until_the_disk_is_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = trusted(dir.path());
        let before = record.syncs();
        record.before_write(3..5).expect("mark");
        record.before_write(3..4).expect("mark");
        record.before_write(4..5).expect("mark");
        assert_eq!(record.syncs(), before, "marking does not sync");
        record.sync_marks().expect("sync");
        record.sync_marks().expect("sync");
        assert_eq!(
            record.syncs(),
            before + 1,
            "one sync for the marks, none when clean"
        );
        assert_eq!(record.changed(), vec![3..5]);
    }

    #[test]
    fn a_record_left_by_a_host_that_went_down_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        trusted(dir.path())
            .mark_clean_shutdown(&id(1))
            .expect("clean");
        let record = open_stamped(dir.path(), &id(1));
        record.before_write(5..6).expect("mark");
        record.stamp(&id(2)).expect("stamp");
        drop(record);
        // As if written in another boot: the boot id in the header differs.
        let path = dir.path().join(record_file_name("vm1/system"));
        let mut bytes = std::fs::read(&path).expect("read record");
        let mut header = Header::decode(&bytes).expect("header");
        header.boot_id = [0xab; 16];
        bytes[..HEADER_FIELDS].copy_from_slice(&header.encode());
        std::fs::write(&path, &bytes).expect("write record");
        let record = open_stamped(dir.path(), &id(2));
        assert!(!record.trusted());
        assert!(record
            .untrusted_reason()
            .is_some_and(|r| r.contains("host went down")));
    }

    #[test]
    fn marks_survive_a_clean_restart_and_frozen_marks_merge_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = trusted(dir.path());
        record.before_write(1..2).expect("mark");
        record.before_write(63..66).expect("mark");
        let marks = record.freeze().expect("freeze");
        assert_eq!(marks.ranges(), vec![1..2, 63..66]);
        record.before_write(10..11).expect("mark");
        // No commit: the snapshot never finished.
        record.mark_clean_shutdown(&id(1)).expect("clean");
        drop(record);
        let record = open(dir.path(), &id(1));
        assert!(record.trusted());
        assert_eq!(record.changed(), vec![1..2, 10..11, 63..66]);
        let marks = record.freeze().expect("freeze");
        assert_eq!(marks.ranges(), vec![1..2, 10..11, 63..66]);
        record.commit(&marks, 9).expect("commit");
        assert!(record.changed().is_empty());
    }

    #[test]
    fn an_unclean_shutdown_or_a_changed_backing_makes_it_untrusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(trusted(dir.path()));
        // The trusted open cleared the clean flag; dropping is a crash.
        let record = open(dir.path(), &id(1));
        assert!(!record.trusted());
        assert_eq!(record.changed(), vec![0..100]);
        let marks = record.freeze().expect("freeze");
        record.commit(&marks, 8).expect("commit");
        assert!(record.trusted());
        record.mark_clean_shutdown(&id(1)).expect("clean");
        drop(record);
        let record = open(dir.path(), &id(2));
        assert!(!record.trusted());
        assert!(record
            .untrusted_reason()
            .is_some_and(|r| r.contains("backing changed")));
    }

    #[test]
    fn a_stamp_keeps_the_record_trusted_across_a_crash_unless_the_backing_changed_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        trusted(dir.path())
            .mark_clean_shutdown(&id(1))
            .expect("clean");
        // Reopened after a clean shutdown: the open stamps id(1).
        let record = open_stamped(dir.path(), &id(1));
        assert!(record.trusted(), "{:?}", record.untrusted_reason());
        record.before_write(5..6).expect("mark");
        record.stamp(&id(2)).expect("stamp");
        drop(record); // a crash: no clean shutdown
        let record = open_stamped(dir.path(), &id(2));
        assert!(record.trusted(), "{:?}", record.untrusted_reason());
        assert_eq!(record.changed(), vec![5..6], "the marks survived the crash");
        drop(record);
        // Written after the last stamp (by anyone): not trusted.
        let record = open_stamped(dir.path(), &id(3));
        assert!(!record.trusted());
        assert!(record
            .untrusted_reason()
            .is_some_and(|r| r.contains("after its last write")));
    }

    #[test]
    fn a_stamp_cannot_vouch_for_a_backing_whose_times_tell_nothing() {
        // A block device: writes leave its node's times alone.
        let dir = tempfile::tempdir().expect("tempdir");
        trusted(dir.path())
            .mark_clean_shutdown(&id(1))
            .expect("clean");
        let record = open(dir.path(), &id(1));
        assert!(record.trusted());
        record.before_write(5..6).expect("mark");
        record.stamp(&id(1)).expect("stamp");
        drop(record); // a crash
        let record = open(dir.path(), &id(1));
        assert!(!record.trusted());
        assert!(record
            .untrusted_reason()
            .is_some_and(|r| r.contains("did not shut down cleanly")));
    }

    #[test]
    fn an_old_freeze_cannot_commit_over_a_newer_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = trusted(dir.path());
        record.before_write(1..2).expect("mark");
        let old = record.freeze().expect("freeze");
        record.before_write(2..3).expect("mark");
        let new = record.freeze().expect("freeze");
        assert_eq!(new.ranges(), vec![1..3]);
        assert!(record.commit(&old, 5).is_err());
        record.commit(&new, 5).expect("commit");
    }

    #[test]
    fn a_damaged_header_starts_an_untrusted_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = trusted(dir.path());
        record.mark_clean_shutdown(&id(1)).expect("clean");
        let path = record.path();
        drop(record);
        let file = open_rw(&path).expect("open");
        file.write_all_at(&[0xff], 30).expect("damage");
        let record = open(dir.path(), &id(1));
        assert!(!record.trusted());
        assert!(record
            .untrusted_reason()
            .is_some_and(|r| r.contains("checksum")));
    }

    #[test]
    fn growth_keeps_marks_and_a_shrink_marks_what_it_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = trusted(dir.path());
        record.before_write(5..6).expect("mark");
        // Past the first bitmap page: the file is rewritten.
        record.resize(40_000 * CS + 5).expect("grow");
        record.before_write(39_999..40_001).expect("mark");
        assert_eq!(record.changed(), vec![5..6, 39_999..40_001]);
        record.resize(50 * CS + 1).expect("shrink");
        assert_eq!(record.changed(), vec![5..6, 50..51]);
        record.mark_clean_shutdown(&id(1)).expect("clean");
        drop(record);
        let record = ChangeRecord::open(dir.path(), "vm1/system", CS, 50 * CS + 1, &id(1), false)
            .expect("open");
        assert!(record.trusted());
        record.resize(60 * CS).expect("regrow");
        assert_eq!(record.changed(), vec![5..6, 50..60]);
    }

    #[test]
    fn header_layout_is_fixed() {
        let header = Header {
            flags: FLAG_CLEAN,
            chunk_size: CS,
            size: 3,
            capacity: CAPACITY_STEP,
            base: 9,
            identity: id(-1),
            boot_id: [7; 16],
        };
        let b = header.encode();
        assert_eq!(&b[0..8], b"SNAPFSCR");
        assert_eq!(b[8..12], 1u32.to_le_bytes());
        assert_eq!(b[12..16], 1u32.to_le_bytes());
        assert_eq!(b[16..24], CS.to_le_bytes());
        assert_eq!(b[32..40], CAPACITY_STEP.to_le_bytes());
        assert_eq!(b[40..48], 9u64.to_le_bytes());
        assert_eq!(b[72..80], (-1i64).to_le_bytes());
        assert_eq!(b[88..104], [7u8; 16]);
        assert_eq!(Header::decode(&b), Ok(header));
    }
}
