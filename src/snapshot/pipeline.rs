//! The one reading pipeline, for taking snapshots and for rollback: a
//! reader thread walks a [`ChunkSource`]'s ranges in large reads, worker
//! threads judge every chunk (a zero check, a hash, maybe compression), and
//! the calling thread gets the results in disk order.
//!
//! ```text
//! reader --batch--> workers --verdicts--+
//!    \--order: one slot per batch------>+--> collect (this thread, in order)
//! ```
//!
//! The reader puts one slot per batch into a bounded queue, in order, and
//! hands the batch to whichever worker is free; the collector waits on the
//! slots in turn. Buffers go round (collector -> reader) so that steady
//! state allocates nothing. Memory stays bounded: about 2 × threads + 3
//! batches of [`READ_BATCH`] bytes at most.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::source::ChunkSource;
use crate::error::{Error, Result};

/// Bytes the reader asks for in one read.
pub const READ_BATCH: u64 = 4 << 20;

pub struct PipelineOptions<'a> {
    /// Worker threads judging chunks.
    pub threads: usize,
    /// Cap on how fast the source is read, in bytes per second.
    pub max_rate: Option<u64>,
    /// Read at idle I/O priority (honoured by the BFQ and mq-deadline schedulers).
    pub idle_io: bool,
    /// Set to stop early; the run then fails with `Cancelled`.
    pub cancel: Option<&'a AtomicBool>,
    /// What a cancelled run says it was, and who cancelled it.
    pub what: &'static str,
    pub cancelled_by: &'static str,
}

/// What the collector gets, in disk order.
pub enum Piece<'b, V> {
    /// Chunks `first..first + count` lie outside the source's ranges;
    /// `bytes` is their length (the last chunk of a disk may be short).
    Unread { first: u64, count: u64, bytes: u64 },
    /// Consecutive chunks from `first`: their bytes and one verdict each.
    Read {
        first: u64,
        bytes: &'b [u8],
        verdicts: Vec<V>,
    },
}

/// A batch read, and where the worker's verdicts go.
type Work<V> = (Vec<u8>, SyncSender<Result<(Vec<u8>, Vec<V>)>>);

/// One slot of the order queue.
enum Slot<V> {
    Unread {
        first: u64,
        count: u64,
        bytes: u64,
    },
    Read {
        first: u64,
        verdicts: Receiver<Result<(Vec<u8>, Vec<V>)>>,
    },
    Failed(Error),
}

/// Reads `source` in chunks of `chunk_size`, judges each read chunk with
/// `judge` on the worker threads and hands everything to `collect` in
/// order. The first error (of the source, a judge or `collect`) ends the
/// run and is returned.
pub fn run<V: Send>(
    source: &dyn ChunkSource,
    chunk_size: u64,
    options: &PipelineOptions,
    judge: &(dyn Fn(&[u8]) -> Result<V> + Sync),
    collect: &mut dyn FnMut(Piece<'_, V>) -> Result<()>,
) -> Result<()> {
    let threads = options.threads.max(1);
    let stop = AtomicBool::new(false);
    let (order_tx, order_rx) = sync_channel::<Slot<V>>(threads * 2);
    let (work_tx, work_rx) = sync_channel::<Work<V>>(threads);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(threads * 4);
    let work_rx = Mutex::new(work_rx);
    std::thread::scope(|scope| {
        let stop = &stop;
        scope.spawn(move || {
            if options.idle_io {
                set_idle_io_priority();
            }
            let reader = Reader {
                source,
                chunk_size,
                order: order_tx,
                work: work_tx,
                free: free_rx,
                pace: Pace::new(options.max_rate),
            };
            reader.run(stop, options);
        });
        for _ in 0..threads {
            let work_rx = &work_rx;
            scope.spawn(move || judge_batches(work_rx, chunk_size, judge));
        }
        let result = collect_in_order(order_rx, &free_tx, collect);
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        result
    })
}

/// Takes the slots in order; dropping the queue on the way out stops the
/// reader, and with it the workers.
fn collect_in_order<V>(
    order: Receiver<Slot<V>>,
    free: &SyncSender<Vec<u8>>,
    collect: &mut dyn FnMut(Piece<'_, V>) -> Result<()>,
) -> Result<()> {
    let stopped = || Error::Invalid("the reading pipeline stopped early".into());
    for slot in order.iter() {
        match slot {
            Slot::Unread {
                first,
                count,
                bytes,
            } => collect(Piece::Unread {
                first,
                count,
                bytes,
            })?,
            Slot::Read { first, verdicts } => {
                let (buf, verdicts) = verdicts.recv().map_err(|_| stopped())??;
                collect(Piece::Read {
                    first,
                    bytes: &buf,
                    verdicts,
                })?;
                // Full: the buffer is simply freed.
                let _ = free.try_send(buf);
            }
            Slot::Failed(e) => return Err(e),
        }
    }
    Ok(())
}

fn judge_batches<V>(
    work: &Mutex<Receiver<Work<V>>>,
    chunk_size: u64,
    judge: &(dyn Fn(&[u8]) -> Result<V> + Sync),
) {
    loop {
        let item = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((buf, verdicts)) = item else { return };
        let judged: Result<Vec<V>> = buf.chunks(chunk_size as usize).map(judge).collect();
        // The collector is gone only when the run stopped.
        let _ = verdicts.send(judged.map(|v| (buf, v)));
    }
}

struct Reader<'s, V> {
    source: &'s dyn ChunkSource,
    chunk_size: u64,
    order: SyncSender<Slot<V>>,
    work: SyncSender<Work<V>>,
    free: Receiver<Vec<u8>>,
    pace: Pace,
}

impl<V> Reader<'_, V> {
    /// Walks the source's ranges: whole chunks outside them become unread
    /// runs, chunks touching them are read in batches.
    fn run(mut self, stop: &AtomicBool, options: &PipelineOptions) {
        let size = self.source.size();
        let chunk_size = self.chunk_size;
        let chunks = size.div_ceil(chunk_size);
        let mut next_chunk = 0u64;
        loop {
            let range = match self.source.next_range(next_chunk * chunk_size) {
                Ok(range) => range,
                Err(e) => return self.fail(e),
            };
            let Some((start, end)) = range else { break };
            if end <= next_chunk * chunk_size {
                let why = format!(
                    "range {start}..{end} lies before offset {}",
                    next_chunk * chunk_size
                );
                return self.fail(Error::Source {
                    path: self.source.path().to_path_buf(),
                    why,
                });
            }
            let first = (start / chunk_size).max(next_chunk);
            let last = end.min(size).div_ceil(chunk_size);
            if first > next_chunk && !self.unread(next_chunk, first) {
                return;
            }
            let mut chunk = first;
            while chunk < last {
                let cancelled = options.cancel.is_some_and(|c| c.load(Ordering::Relaxed));
                if stop.load(Ordering::Relaxed) || cancelled {
                    return self.fail(Error::Cancelled {
                        what: options.what,
                        why: options.cancelled_by,
                    });
                }
                let batch = (READ_BATCH / chunk_size).max(1).min(last - chunk);
                let offset = chunk * chunk_size;
                let len = (batch * chunk_size).min(size - offset);
                // A returned buffer is already mapped: no page faults, no zeroing.
                let mut buf = self.free.try_recv().unwrap_or_default();
                buf.resize(len as usize, 0);
                if let Err(e) = self.source.read_exact_at(&mut buf, offset) {
                    return self.fail(e);
                }
                self.source.done_with(offset, len);
                self.pace.after(len);
                let (verdict_tx, verdict_rx) = sync_channel(1);
                let slot = Slot::Read {
                    first: chunk,
                    verdicts: verdict_rx,
                };
                if self.order.send(slot).is_err() || self.work.send((buf, verdict_tx)).is_err() {
                    return;
                }
                chunk += batch;
            }
            next_chunk = next_chunk.max(last);
        }
        if next_chunk < chunks {
            self.unread(next_chunk, chunks);
        }
    }

    /// Queues chunks `first..end` as unread; false once the collector left.
    fn unread(&self, first: u64, end: u64) -> bool {
        let size = self.source.size();
        let bytes = (end * self.chunk_size).min(size) - first * self.chunk_size;
        let slot = Slot::Unread {
            first,
            count: end - first,
            bytes,
        };
        self.order.send(slot).is_ok()
    }

    fn fail(&self, e: Error) {
        let _ = self.order.send(Slot::Failed(e));
    }
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
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
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
