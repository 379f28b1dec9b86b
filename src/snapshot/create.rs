//! Taking a snapshot: the pipeline reads the source's ranges, workers on
//! every core hash each chunk and compress the new ones, and this thread
//! stores them, builds the map (on the parent's map where the source says
//! what it did not read is unchanged) and commits the snapshot through the
//! catalog in one transaction.
//!
//! ```text
//! source ranges -> pipeline reader -> workers (zero check, hash,  -> collector (pack append, map
//!                                              compress if new)      pages, progress) -> catalog commit
//! ```

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use std::cell::Cell;

use super::hooks::{HookContext, Hooks};
use super::pipeline::{self, Piece, PipelineOptions};
use super::reflink;
use super::running::RunningGuard;
use super::source::{ChunkSource, ImageSource, Parent, Unread};
use crate::catalog::names::{check_any_snapshot_name, check_snapshot_name};
use crate::catalog::{now_ms, CaptureMethod, SnapshotRecord};
use crate::error::{Error, Result};
use crate::hash::{is_all_zero, ChunkHash};
use crate::map::{MapBuilder, MapReader};
use crate::repository::Repository;
use crate::store::codec::{encode_chunk, Codec};
use crate::store::Ingest;

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
    /// Who sets `cancel`, as the error says.
    pub cancelled_by: &'static str,
    /// Cap on how fast the source is read, in bytes per second.
    pub max_rate: Option<u64>,
    /// Read the source at idle I/O priority, so the disk's own users come
    /// first (honoured by the BFQ and mq-deadline schedulers).
    pub idle_io: bool,
    /// Commands run before and after the read of a registered disk.
    pub hooks: Hooks,
    /// Read a reflink clone of a source file where its filesystem can make one.
    pub reflink: bool,
    /// Called once a live disk's snapshot is frozen and its image file
    /// reads the frozen content (the point `.create` returns at).
    pub on_frozen: Option<&'a (dyn Fn() + Sync)>,
}

impl Default for CreateOptions<'_> {
    fn default() -> Self {
        CreateOptions {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            automatic: false,
            progress: None,
            cancel: None,
            cancelled_by: "the mount is stopping",
            max_rate: None,
            idle_io: true,
            hooks: Hooks::default(),
            reflink: true,
            on_frozen: None,
        }
    }
}

/// What a worker found out about one chunk.
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

/// `create_snapshot` for a caller that already marked the disk running:
/// reads the disk's registered source at one point in time, or fails.
/// That point is a reflink clone where the source's filesystem makes one,
/// else the read itself, between the pre- and post-hooks if any; either
/// way the read fails with `Torn` if the source changed during it. The
/// post-hook runs whatever happens, as soon as the clone or read is done.
pub fn create_marked(
    repo: &Repository,
    running: &RunningGuard,
    name: &str,
    options: &CreateOptions,
) -> Result<SnapshotRecord> {
    let disk = repo.catalog().disk(running.disk())?;
    // A refused name freezes nothing.
    check_name(repo, &disk.name, name, options.automatic)?;
    if disk.live {
        return create_live(repo, &disk, name, options)
            .map_err(|e| repo.store().blame_lost_folder(e));
    }
    let hooks = &options.hooks;
    let context = HookContext {
        disk: &disk.name,
        snapshot: name,
        source: &disk.source,
    };
    let post_done = Cell::new(hooks.post.is_none());
    let run_post = || {
        if post_done.replace(true) {
            Ok(())
        } else {
            hooks.run_post(&context)
        }
    };
    let taken = (|| {
        hooks.run_pre(&context)?;
        let clone = options
            .reflink
            .then(|| reflink::clone_of(&disk.source, &repo.clone_tag()))
            .flatten();
        let method = match (&clone, hooks.any()) {
            (Some(_), _) => CaptureMethod::Reflink,
            (None, true) => CaptureMethod::Hook,
            (None, false) => CaptureMethod::Checked,
        };
        if clone.is_some() {
            // The clone holds the point in time: the guest may go on.
            run_post()?;
        }
        let path = clone.as_ref().map_or(disk.source.as_path(), |c| c.path());
        let source = ImageSource::open(path)?;
        let origin = Origin {
            source: &disk.source,
            method: Some(method),
            after_read: &run_post,
            created_ms: None,
        };
        take_snapshot(repo, &disk.name, name, &source, options, origin)
    })();
    let thawed = run_post();
    let record = taken.map_err(|e| repo.store().blame_lost_folder(e))?;
    thawed?;
    Ok(record)
}

/// Takes snapshot `name` of the running disk from `source`.
pub fn create_from(
    repo: &Repository,
    running: &RunningGuard,
    name: &str,
    source: &dyn ChunkSource,
    options: &CreateOptions,
) -> Result<SnapshotRecord> {
    let origin = Origin {
        source: source.path(),
        method: None,
        after_read: &|| Ok(()),
        created_ms: None,
    };
    repo.catalog()
        .disk(running.disk())
        .and_then(|_| check_name(repo, running.disk(), name, options.automatic))
        .and_then(|()| take_snapshot(repo, running.disk(), name, source, options, origin))
        .map_err(|e| repo.store().blame_lost_folder(e))
}

/// A live disk's snapshot: frozen in its write path (between the hooks,
/// if any), then the frozen chunks stored on the newest snapshot's map.
/// It holds exactly the writes acknowledged before the freeze, however
/// long the storing takes.
fn create_live(
    repo: &Repository,
    disk: &crate::catalog::DiskRecord,
    name: &str,
    options: &CreateOptions,
) -> Result<SnapshotRecord> {
    let live = repo.live_disk(disk)?;
    let parent = repo
        .catalog()
        .snapshots(Some(&disk.name))?
        .into_iter()
        .max_by_key(|s| s.id);
    let hooks = &options.hooks;
    let context = HookContext {
        disk: &disk.name,
        snapshot: name,
        source: &disk.source,
    };
    let frozen = hooks
        .run_pre(&context)
        .and_then(|()| live.freeze(parent.as_ref()));
    // The freeze holds the point in time: the guest may go on. The
    // post-hook runs whatever happened, a failed pre-hook included.
    let thawed = hooks.run_post(&context);
    let mut frozen = frozen?;
    thawed?;
    let frozen_at_ms = now_ms();
    frozen.publish(name, frozen_at_ms);
    if let Some(on_frozen) = options.on_frozen {
        on_frozen();
    }
    if let Some(why) = frozen.full_read_reason() {
        log::info!(
            "snapshot {name} of live disk {}: reading it whole: {why}",
            disk.name
        );
    }
    let origin = Origin {
        source: &disk.source,
        method: Some(CaptureMethod::Freeze),
        after_read: &|| Ok(()),
        created_ms: Some(frozen_at_ms),
    };
    let record = take_snapshot(repo, &disk.name, name, &frozen.source(), options, origin)?;
    frozen.committed(&record)?;
    Ok(record)
}

/// What the record says of where a snapshot came from, and what runs
/// once its source has been read.
struct Origin<'a> {
    source: &'a std::path::Path,
    method: Option<CaptureMethod>,
    after_read: &'a dyn Fn() -> Result<()>,
    /// The snapshot's moment when it is not the start of the read (a
    /// live disk's freeze).
    created_ms: Option<i64>,
}

fn check_name(repo: &Repository, disk: &str, name: &str, automatic: bool) -> Result<()> {
    if automatic {
        check_any_snapshot_name(name)?;
    } else {
        check_snapshot_name(name)?;
    }
    repo.catalog().check_name_free(disk, name)
}

fn take_snapshot(
    repo: &Repository,
    disk: &str,
    name: &str,
    source: &dyn ChunkSource,
    options: &CreateOptions,
    origin: Origin,
) -> Result<SnapshotRecord> {
    let (store, catalog) = (repo.store(), repo.catalog());

    let created_ms = origin.created_ms.unwrap_or_else(now_ms);
    let chunk_size = store.chunk_size();
    let size = source.size();
    let chunks = size.div_ceil(chunk_size);
    let started = Instant::now();

    let mut ingest = Ingest::new(store, repo);
    let unread = source.unread();
    let mut builder = match unread {
        Unread::Zeros => MapBuilder::new(chunks),
        Unread::SameAs(parent) => MapBuilder::on_parent(chunks, parent.map),
    };
    let mut progress = Progress {
        total_bytes: size,
        ..Progress::default()
    };
    // Kept chunks count as the parent counted them; read ones replace theirs.
    let mut parent_nonzero = ParentNonzero::new(repo, unread, size, chunk_size)?;
    let mut nonzero_bytes = 0u64;
    let mut last_report: Option<Instant> = None;
    let encoding = store.config().encoding();

    let judge = |piece: &[u8]| -> Result<Verdict> {
        if is_all_zero(piece) {
            return Ok(Verdict::Zero);
        }
        let hash = ChunkHash::of(piece);
        if store.contains(&hash)? {
            return Ok(Verdict::Known(hash));
        }
        let (codec, stored) = encode_chunk(piece, encoding);
        Ok(Verdict::New {
            hash,
            codec,
            stored,
        })
    };
    let mut collect = |piece: Piece<'_, Verdict>| -> Result<()> {
        match piece {
            Piece::Unread {
                first,
                count,
                bytes,
            } => {
                match unread {
                    Unread::Zeros => builder.set_zero_range(&mut ingest, first, count)?,
                    Unread::SameAs(_) => {
                        parent_nonzero.check_kept(source, first, count)?;
                        builder.keep_range(&mut ingest, first, count)?;
                    }
                }
                progress.done_bytes += bytes;
            }
            Piece::Read {
                first,
                bytes,
                verdicts,
            } => {
                let pieces = bytes.chunks(chunk_size as usize);
                for (i, (verdict, piece)) in verdicts.into_iter().zip(pieces).enumerate() {
                    let chunk = first + i as u64;
                    let len = piece.len() as u64;
                    progress.done_bytes += len;
                    parent_nonzero.replaced(chunk)?;
                    let hash = match verdict {
                        Verdict::Zero => {
                            builder.set_zero_range(&mut ingest, chunk, 1)?;
                            continue;
                        }
                        Verdict::Known(hash) => {
                            if !ingest.reference(&hash)? {
                                // gc removed it since the worker looked.
                                let (codec, stored) = encode_chunk(piece, encoding);
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
                    builder.set(&mut ingest, chunk, hash)?;
                    nonzero_bytes += len;
                }
            }
        }
        if let Some(report) = options.progress {
            // The first piece reports at once (a watcher sees the run has
            // started, however short it is), then every 100 ms.
            if last_report.is_none_or(|at| at.elapsed().as_millis() >= 100) {
                last_report = Some(Instant::now());
                progress.added_bytes = ingest.added_bytes();
                progress.elapsed = started.elapsed();
                report(&progress);
            }
        }
        Ok(())
    };
    let pipeline_options = PipelineOptions {
        threads: options.threads,
        max_rate: options.max_rate,
        idle_io: options.idle_io,
        cancel: options.cancel,
        what: "snapshot",
        cancelled_by: options.cancelled_by,
    };
    source.before_read()?;
    let read = pipeline::run(source, chunk_size, &pipeline_options, &judge, &mut collect)
        .and_then(|()| source.check_after_read());
    let after = (origin.after_read)();
    read?;
    after?;

    let map = builder.finish()?;
    let record = SnapshotRecord {
        id: 0,
        disk: disk.to_string(),
        name: name.to_string(),
        created_ms,
        size,
        chunk_size: chunk_size as u32,
        map,
        nonzero_bytes: nonzero_bytes + parent_nonzero.kept(),
        added_bytes: ingest.added_bytes(),
        source: origin.source.to_path_buf(),
        protected: false,
        method: origin.method,
    };
    let record = catalog.commit_snapshot(ingest, record)?;
    progress.added_bytes = record.added_bytes;
    progress.elapsed = started.elapsed();
    if let Some(report) = options.progress {
        report(&progress);
    }
    Ok(record)
}

/// The non-zero bytes of the parent's chunks that a snapshot built on it
/// keeps: the parent's count, less the chunks read anew and those past the
/// new end.
struct ParentNonzero<'r> {
    parent: Option<(Parent, MapReader<'r>)>,
    chunk_size: u64,
    size: u64,
    kept: u64,
}

impl<'r> ParentNonzero<'r> {
    fn new(repo: &'r Repository, unread: Unread, size: u64, chunk_size: u64) -> Result<Self> {
        let mut this = ParentNonzero {
            parent: None,
            chunk_size,
            size,
            kept: 0,
        };
        if let Unread::SameAs(parent) = unread {
            let map = MapReader::new(repo.store(), parent.map);
            this.kept = parent.nonzero_bytes;
            this.parent = Some((parent, map));
            // A disk that shrank keeps nothing past its new end.
            for chunk in size.div_ceil(chunk_size)..parent.map.chunks {
                this.replaced(chunk)?;
            }
        }
        Ok(this)
    }

    fn parent_len(parent: &Parent, chunk: u64, chunk_size: u64) -> u64 {
        parent
            .size
            .saturating_sub(chunk * chunk_size)
            .min(chunk_size)
    }

    /// Chunk `chunk` no longer holds the parent's bytes.
    fn replaced(&mut self, chunk: u64) -> Result<()> {
        let Some((parent, map)) = &self.parent else {
            return Ok(());
        };
        if chunk < parent.map.chunks && !map.chunk_hash(chunk)?.is_zero() {
            let len = Self::parent_len(parent, chunk, self.chunk_size);
            self.kept = self.kept.saturating_sub(len);
        }
        Ok(())
    }

    /// Refuses to keep a chunk whose length is not the parent's: the map
    /// would name bytes of the wrong length.
    fn check_kept(&self, source: &dyn ChunkSource, first: u64, count: u64) -> Result<()> {
        let Some((parent, _)) = &self.parent else {
            return Ok(());
        };
        let new_len = |chunk: u64| {
            self.size
                .saturating_sub(chunk * self.chunk_size)
                .min(self.chunk_size)
        };
        let end = first + count;
        // Only the last chunks of either size can differ in length.
        let edges = [
            parent.map.chunks.saturating_sub(1),
            self.size.div_ceil(self.chunk_size).saturating_sub(1),
        ];
        for chunk in edges {
            let within = (first..end).contains(&chunk) && chunk < parent.map.chunks;
            if within && new_len(chunk) != Self::parent_len(parent, chunk, self.chunk_size) {
                return Err(Error::Source {
                    path: source.path().to_path_buf(),
                    why: format!(
                        "chunk {chunk} changed length with the disk's size but was not read"
                    ),
                });
            }
        }
        Ok(())
    }

    fn kept(&self) -> u64 {
        self.kept
    }
}
