//! Taking a snapshot: read the source in large sequential reads, hash and
//! compress chunks on every core, store the new ones, build the map, and
//! commit the snapshot in one transaction.
//!
//! ```text
//! reader thread --chunks--> worker threads --results--> collector (this thread)
//!   (holes skipped)          (zero check, hash,          (pack append, map pages,
//!                             compress if new)            progress, commit)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::running::RunningGuard;
use super::source::Source;
use crate::catalog::names::{check_any_snapshot_name, check_snapshot_name};
use crate::catalog::{now_ms, SnapshotRecord};
use crate::error::{Error, Result};
use crate::hash::{is_all_zero, ChunkHash};
use crate::map::MapBuilder;
use crate::repository::Repository;
use crate::store::pack::{encode_chunk, Codec};
use crate::store::{Ingest, Store};

/// Bytes the reader asks for in one read.
const READ_BATCH: u64 = 4 << 20;

#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub added_bytes: u64,
    pub elapsed: std::time::Duration,
}

impl Progress {
    /// 0 until the size is known (not "100% of 0 B").
    pub fn percent(&self) -> f64 {
        if self.total_bytes == 0 {
            0.0
        } else {
            self.done_bytes as f64 * 100.0 / self.total_bytes as f64
        }
    }

    /// Bytes per second so far.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.done_bytes as f64 / secs
        } else {
            0.0
        }
    }
}

pub struct CreateOptions<'a> {
    /// Worker threads for hashing and compression.
    pub threads: usize,
    /// Allow names with the reserved `auto` prefix (policies use it).
    pub automatic: bool,
    /// Called from the collecting thread as work advances.
    pub progress: Option<&'a (dyn Fn(&Progress) + Sync)>,
    /// Set to stop the snapshot early; it then fails and leaves nothing.
    pub cancel: Option<&'a AtomicBool>,
    /// Cap on how fast the source is read, in bytes per second.
    pub max_rate: Option<u64>,
    /// Read the source at idle I/O priority, so the disk's own users come
    /// first (honoured by the BFQ scheduler; others ignore it).
    pub idle_io: bool,
}

impl Default for CreateOptions<'_> {
    fn default() -> Self {
        CreateOptions {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            automatic: false,
            progress: None,
            cancel: None,
            max_rate: None,
            idle_io: true,
        }
    }
}

/// Consecutive chunks read in one go; whole batches travel between the
/// threads, so the channels carry one message per READ_BATCH bytes.
struct Batch {
    first: u64,
    buf: Vec<u8>,
}

/// What a worker found out about one chunk of a batch.
enum Verdict {
    Zero,
    /// Already stored when the worker looked.
    Known(ChunkHash),
    New {
        hash: ChunkHash,
        codec: Codec,
        stored: Vec<u8>,
    },
}

enum Done {
    Zeros {
        first: u64,
        count: u64,
        bytes: u64,
    },
    /// The batch comes back with its verdicts: the collector may need the
    /// bytes of a `Known` chunk (if gc removed it meanwhile), and then
    /// hands the buffer back to the reader.
    Batch {
        batch: Batch,
        verdicts: Vec<Verdict>,
    },
    Failed(Error),
}

/// Takes snapshot `name` of `disk` and returns its catalog record; fails
/// with `Busy` while another snapshot or a rollback of the disk runs.
pub fn create_snapshot(
    repo: &Repository,
    disk: &str,
    name: &str,
    options: &CreateOptions,
) -> Result<SnapshotRecord> {
    let running = repo.running().start(disk)?;
    create_marked(repo, &running, name, options)
}

/// `create_snapshot` for a caller that already marked the disk running.
pub fn create_marked(
    repo: &Repository,
    running: &RunningGuard,
    name: &str,
    options: &CreateOptions,
) -> Result<SnapshotRecord> {
    take_snapshot(repo, running.disk(), name, options)
        .map_err(|e| repo.store().blame_lost_folder(e))
}

fn take_snapshot(
    repo: &Repository,
    disk: &str,
    name: &str,
    options: &CreateOptions,
) -> Result<SnapshotRecord> {
    if options.automatic {
        check_any_snapshot_name(name)?;
    } else {
        check_snapshot_name(name)?;
    }
    let (store, catalog) = (repo.store(), repo.catalog());
    let disk_record = catalog.disk(disk)?;
    catalog.check_name_free(disk, name)?;

    let source = Source::open(&disk_record.source)?;
    let created_ms = now_ms();
    let chunk_size = store.chunk_size();
    let size = source.size();
    let chunks = size.div_ceil(chunk_size);
    let started = Instant::now();

    let mut ingest = Ingest::new(store, repo);
    let mut builder = MapBuilder::new(chunks);
    let mut progress = Progress {
        total_bytes: size,
        ..Progress::default()
    };
    let mut nonzero_bytes = 0u64;
    let stop = AtomicBool::new(false);
    let threads = options.threads.max(1);

    let outcome: Result<()> = std::thread::scope(|scope| {
        let (work_tx, work_rx) = sync_channel::<Batch>(threads);
        let (done_tx, done_rx) = sync_channel::<Done>(threads * 2);
        // Buffers go round: reader -> workers -> collector -> reader.
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(threads * 4);
        let work_rx = Arc::new(Mutex::new(work_rx));
        {
            let done_tx = done_tx.clone();
            let (source, stop) = (&source, &stop);
            scope.spawn(move || {
                if options.idle_io {
                    set_idle_io_priority();
                }
                let pace = Pace::new(options.max_rate);
                let channels = ReaderChannels {
                    work: work_tx,
                    done: done_tx,
                    free: free_rx,
                };
                read_source(source, chunk_size, channels, stop, options.cancel, pace)
            });
        }
        for _ in 0..threads {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || process_chunks(store, &work_rx, &done_tx));
        }
        drop(done_tx);

        let result = collect(
            &done_rx,
            &free_tx,
            &mut ingest,
            &mut builder,
            &mut progress,
            &mut nonzero_bytes,
            started,
            options,
        );
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
            // Drain so that no thread stays blocked on a full channel.
            for _ in done_rx.iter() {}
        }
        result
    });
    outcome?;

    if source.current_size()? < size {
        return Err(Error::Source {
            path: source.path().to_path_buf(),
            why: "source shrank while the snapshot was read".into(),
        });
    }
    let map = builder.finish()?;
    let record = SnapshotRecord {
        id: 0,
        disk: disk.to_string(),
        name: name.to_string(),
        created_ms,
        size,
        chunk_size: chunk_size as u32,
        map,
        nonzero_bytes,
        added_bytes: ingest.added_bytes(),
        source: disk_record.source.clone(),
        protected: false,
    };
    let record = catalog.commit_snapshot(ingest, record)?;
    progress.elapsed = started.elapsed();
    if let Some(report) = options.progress {
        report(&progress);
    }
    Ok(record)
}

/// Keeps reading under a rate cap: after each read, sleeps until the bytes
/// read so far fit the cap.
struct Pace {
    rate: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Pace {
    fn new(rate: Option<u64>) -> Pace {
        Pace {
            rate: rate.filter(|r| *r > 0),
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn after(&mut self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        self.bytes += bytes;
        let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// Puts the calling thread in the idle I/O class (ioprio_set(2)).
fn set_idle_io_priority() {
    const IOPRIO_WHO_PROCESS: libc::c_int = 1;
    const IOPRIO_CLASS_IDLE: libc::c_int = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_int = 13;
    // who = 0: the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if rc != 0 {
        log::debug!("ioprio_set: {}", std::io::Error::last_os_error());
    }
}

struct ReaderChannels {
    work: SyncSender<Batch>,
    done: SyncSender<Done>,
    free: Receiver<Vec<u8>>,
}

/// Walks the source's data regions and hands batches of chunks to the
/// workers; whole chunks inside holes go straight to the collector as zero
/// runs.
fn read_source(
    source: &Source,
    chunk_size: u64,
    channels: ReaderChannels,
    stop: &AtomicBool,
    cancel: Option<&AtomicBool>,
    mut pace: Pace,
) {
    let ReaderChannels { work, done, free } = channels;
    let size = source.size();
    let chunks = size.div_ceil(chunk_size);
    let chunk_len = |chunk: u64| (size - chunk * chunk_size).min(chunk_size);
    let zeros = |first: u64, end: u64| Done::Zeros {
        first,
        count: end - first,
        bytes: (first..end).map(chunk_len).sum(),
    };
    let mut next_chunk = 0u64;
    loop {
        let region = match source.next_data(next_chunk * chunk_size) {
            Ok(region) => region,
            Err(e) => {
                let _ = done.send(Done::Failed(e));
                return;
            }
        };
        let Some((start, end)) = region else { break };
        let first = (start / chunk_size).max(next_chunk);
        let last = end.div_ceil(chunk_size);
        if first > next_chunk && done.send(zeros(next_chunk, first)).is_err() {
            return;
        }
        let mut chunk = first;
        while chunk < last {
            if stop.load(Ordering::Relaxed) || cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                let _ = done.send(Done::Failed(Error::Cancelled("snapshot")));
                return;
            }
            let batch = (READ_BATCH / chunk_size).max(1).min(last - chunk);
            let offset = chunk * chunk_size;
            let len = (batch * chunk_size).min(size - offset);
            // A returned buffer is already mapped: no page faults, no zeroing.
            let mut buf = free.try_recv().unwrap_or_default();
            buf.resize(len as usize, 0);
            if let Err(e) = source.read_exact_at(&mut buf, offset) {
                let _ = done.send(Done::Failed(e));
                return;
            }
            source.forget_range(offset, len);
            pace.after(len);
            if work.send(Batch { first: chunk, buf }).is_err() {
                return;
            }
            chunk += batch;
        }
        next_chunk = last;
    }
    if next_chunk < chunks {
        let _ = done.send(zeros(next_chunk, chunks));
    }
}

fn process_chunks(store: &Store, work: &Mutex<Receiver<Batch>>, done: &SyncSender<Done>) {
    let chunk_size = store.chunk_size() as usize;
    loop {
        let item = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = item else {
            return;
        };
        let mut verdicts = Vec::with_capacity(batch.buf.len().div_ceil(chunk_size));
        for piece in batch.buf.chunks(chunk_size) {
            verdicts.push(if is_all_zero(piece) {
                Verdict::Zero
            } else {
                let hash = ChunkHash::of(piece);
                match store.contains(&hash) {
                    Ok(true) => Verdict::Known(hash),
                    Ok(false) => {
                        let (codec, stored) = encode_chunk(piece, store.config().zstd());
                        Verdict::New {
                            hash,
                            codec,
                            stored,
                        }
                    }
                    Err(e) => {
                        let _ = done.send(Done::Failed(e));
                        return;
                    }
                }
            });
        }
        if done.send(Done::Batch { batch, verdicts }).is_err() {
            return;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn collect(
    done: &Receiver<Done>,
    free: &SyncSender<Vec<u8>>,
    ingest: &mut Ingest,
    builder: &mut MapBuilder,
    progress: &mut Progress,
    nonzero_bytes: &mut u64,
    started: Instant,
    options: &CreateOptions,
) -> Result<()> {
    let mut last_report = Instant::now();
    for item in done.iter() {
        match item {
            Done::Zeros {
                first,
                count,
                bytes,
            } => {
                builder.set_zero_range(ingest, first, count)?;
                progress.done_bytes += bytes;
            }
            Done::Batch { batch, verdicts } => {
                let chunk_size = ingest.store().chunk_size() as usize;
                for (i, (verdict, piece)) in verdicts
                    .into_iter()
                    .zip(batch.buf.chunks(chunk_size))
                    .enumerate()
                {
                    let chunk = batch.first + i as u64;
                    let len = piece.len() as u64;
                    progress.done_bytes += len;
                    let hash = match verdict {
                        Verdict::Zero => {
                            builder.set_zero_range(ingest, chunk, 1)?;
                            continue;
                        }
                        Verdict::Known(hash) => {
                            if !ingest.reference(&hash)? {
                                // gc removed it since the worker looked.
                                let (codec, stored) =
                                    encode_chunk(piece, ingest.store().config().zstd());
                                ingest.append(&hash, len as u32, codec, &stored)?;
                            }
                            hash
                        }
                        Verdict::New {
                            hash,
                            codec,
                            stored,
                        } => {
                            ingest.put_encoded(&hash, len as u32, codec, &stored)?;
                            hash
                        }
                    };
                    builder.set(ingest, chunk, hash)?;
                    *nonzero_bytes += len;
                }
                // Full: the buffer is simply freed.
                let _ = free.try_send(batch.buf);
            }
            Done::Failed(e) => return Err(e),
        }
        if let Some(report) = options.progress {
            if last_report.elapsed().as_millis() >= 100 {
                last_report = Instant::now();
                progress.added_bytes = ingest.added_bytes();
                progress.elapsed = started.elapsed();
                report(progress);
            }
        }
    }
    progress.added_bytes = ingest.added_bytes();
    Ok(())
}
