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

use super::catalog::{encode, now_ms, snapshot_key, SnapshotRecord};
use super::map::MapBuilder;
use super::names::{check_any_snapshot_name, check_snapshot_name};
use super::source::Source;
use crate::error::{Error, Result};
use crate::hash::{is_all_zero, ChunkHash};
use crate::store::ingest_abort;
use crate::store::pack::{encode_chunk, Codec};
use crate::store::{Ingest, Store};

/// Bytes the reader asks for in one read.
const READ_BATCH: u64 = 8 << 20;

#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub total_bytes: u64,
    pub done_bytes: u64,
    pub added_bytes: u64,
    pub elapsed: std::time::Duration,
}

impl Progress {
    pub fn percent(&self) -> f64 {
        if self.total_bytes == 0 {
            100.0
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

enum Work {
    Data { chunk: u64, bytes: Vec<u8> },
}

enum Done {
    Zeros {
        first: u64,
        count: u64,
        bytes: u64,
    },
    /// Already stored when a worker looked; the bytes ride along in case
    /// gc removes it before the collector records the reference.
    Known {
        chunk: u64,
        hash: ChunkHash,
        bytes: Vec<u8>,
    },
    New {
        chunk: u64,
        hash: ChunkHash,
        raw_len: u32,
        codec: Codec,
        stored: Vec<u8>,
    },
    Failed(Error),
}

/// Takes snapshot `name` of `disk` and returns its catalog record.
pub fn create_snapshot(
    store: &Store,
    disk: &str,
    name: &str,
    options: &CreateOptions,
) -> Result<SnapshotRecord> {
    if options.automatic {
        check_any_snapshot_name(name)?;
    } else {
        check_snapshot_name(name)?;
    }
    let disk_record = store.disk(disk)?;
    store.check_name_free(disk, name)?;
    let _running = store.start_running(disk)?;

    let source = Source::open(&disk_record.source)?;
    let created_ms = now_ms();
    let chunk_size = store.chunk_size();
    let size = source.size();
    let chunks = size.div_ceil(chunk_size);
    let started = Instant::now();

    let mut ingest = Ingest::new(store);
    let mut builder = MapBuilder::new(chunks);
    let mut progress = Progress {
        total_bytes: size,
        ..Progress::default()
    };
    let mut nonzero_bytes = 0u64;
    let stop = AtomicBool::new(false);
    let threads = options.threads.max(1);

    let outcome: Result<()> = std::thread::scope(|scope| {
        let (work_tx, work_rx) = sync_channel::<Work>(threads * 2);
        let (done_tx, done_rx) = sync_channel::<Done>(threads * 4);
        let work_rx = Arc::new(Mutex::new(work_rx));
        {
            let done_tx = done_tx.clone();
            let (source, stop) = (&source, &stop);
            scope.spawn(move || {
                if options.idle_io {
                    set_idle_io_priority();
                }
                let pace = Pace::new(options.max_rate);
                read_source(
                    source,
                    chunk_size,
                    work_tx,
                    done_tx,
                    stop,
                    options.cancel,
                    pace,
                )
            });
        }
        for _ in 0..threads {
            let (work_rx, done_tx) = (work_rx.clone(), done_tx.clone());
            scope.spawn(move || process_chunks(store, &work_rx, &done_tx));
        }
        drop(done_tx);

        let result = collect(
            &done_rx,
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
    let id = store.db().generate_id()?;
    let record = SnapshotRecord {
        id,
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
    let value = encode(&record)?;
    let key = snapshot_key(disk, id);
    let _catalog = store.catalog_lock.lock().unwrap_or_else(|e| e.into_inner());
    store.check_name_free(disk, name)?;
    ingest.commit(&|trees| {
        if trees.disks.get(disk.as_bytes())?.is_none() {
            return ingest_abort(Error::DiskNotFound(disk.to_string()));
        }
        trees.snapshots.insert(key.as_slice(), value.as_slice())?;
        Ok(())
    })?;
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

/// Walks the source's data regions and hands chunks to the workers; whole
/// chunks inside holes go straight to the collector as zero runs.
fn read_source(
    source: &Source,
    chunk_size: u64,
    work: SyncSender<Work>,
    done: SyncSender<Done>,
    stop: &AtomicBool,
    cancel: Option<&AtomicBool>,
    mut pace: Pace,
) {
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
                let _ = done.send(Done::Failed(Error::Invalid("snapshot cancelled".into())));
                return;
            }
            let batch = (READ_BATCH / chunk_size).max(1).min(last - chunk);
            let offset = chunk * chunk_size;
            let len = (batch * chunk_size).min(size - offset);
            let mut buf = vec![0u8; len as usize];
            if let Err(e) = source.read_exact_at(&mut buf, offset) {
                let _ = done.send(Done::Failed(e));
                return;
            }
            source.forget_range(offset, len);
            pace.after(len);
            for (i, piece) in buf.chunks(chunk_size as usize).enumerate() {
                let item = Work::Data {
                    chunk: chunk + i as u64,
                    bytes: piece.to_vec(),
                };
                if work.send(item).is_err() {
                    return;
                }
            }
            chunk += batch;
        }
        next_chunk = last;
    }
    if next_chunk < chunks {
        let _ = done.send(zeros(next_chunk, chunks));
    }
}

fn process_chunks(store: &Store, work: &Mutex<Receiver<Work>>, done: &SyncSender<Done>) {
    loop {
        let item = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(Work::Data { chunk, bytes }) = item else {
            return;
        };
        let result = if is_all_zero(&bytes) {
            Done::Zeros {
                first: chunk,
                count: 1,
                bytes: bytes.len() as u64,
            }
        } else {
            let hash = ChunkHash::of(&bytes);
            match store.contains(&hash) {
                Ok(true) => Done::Known { chunk, hash, bytes },
                Ok(false) => {
                    let (codec, stored) = encode_chunk(&bytes, store.config().zstd());
                    Done::New {
                        chunk,
                        hash,
                        raw_len: bytes.len() as u32,
                        codec,
                        stored,
                    }
                }
                Err(e) => Done::Failed(e),
            }
        };
        if done.send(result).is_err() {
            return;
        }
    }
}

fn collect(
    done: &Receiver<Done>,
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
            Done::Known { chunk, hash, bytes } => {
                if !ingest.reference(&hash)? {
                    let (codec, stored) = encode_chunk(&bytes, ingest.store().config().zstd());
                    ingest.append(&hash, bytes.len() as u32, codec, &stored)?;
                }
                let len = bytes.len() as u64;
                builder.set(ingest, chunk, hash)?;
                progress.done_bytes += len;
                *nonzero_bytes += len;
            }
            Done::New {
                chunk,
                hash,
                raw_len,
                codec,
                stored,
            } => {
                ingest.put_encoded(&hash, raw_len, codec, &stored)?;
                builder.set(ingest, chunk, hash)?;
                progress.done_bytes += raw_len as u64;
                *nonzero_bytes += raw_len as u64;
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
