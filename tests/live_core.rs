//! The live-disk core, in-process and without root: writes, discards and
//! growth through `LiveDisk`, snapshots of frozen points in time taken with
//! `create_from` on the previous snapshot while other writes go on, kill -9
//! (everything dropped and reopened from its files) and writes behind
//! snapfs's back. Every snapshot must export byte for byte as a model of
//! the disk at its freeze point, with the map a full re-read of that model
//! gives.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::Rng;
use proptest::prelude::*;
use snapfs::catalog::SnapshotRecord;
use snapfs::image::{export, ExportTarget};
use snapfs::live::{LiveDisk, LiveOptions};
use snapfs::snapshot::create::{create_from, create_snapshot};
use snapfs::snapshot::CreateOptions;
use snapfs::store::{OpenOptions, StoreConfig};
use snapfs::Repository;

const CHUNK: u64 = 64 << 10;
const MAX_SIZE: u64 = 40 * CHUNK;

/// One live disk in a store, and a model of what it holds.
struct World {
    dir: tempfile::TempDir,
    repo: Repository,
    backing: PathBuf,
    copy_memory: u64,
    disk: Option<Arc<LiveDisk>>,
    model: Vec<u8>,
    snapshots: usize,
}

fn options() -> CreateOptions<'static> {
    CreateOptions {
        threads: 2,
        reflink: false,
        ..CreateOptions::default()
    }
}

impl World {
    fn new(size: u64, copy_memory: u64, rng: &mut Rng) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let store_options = OpenOptions {
            create: Some(StoreConfig::default()),
            ..OpenOptions::default()
        };
        let repo = Repository::open(&dir.path().join("store"), &store_options).expect("store");
        assert_eq!(repo.store().chunk_size(), CHUNK);
        let backing = dir.path().join("disk.img");
        let mut model = vec![0u8; size as usize];
        // Some data, some holes.
        for piece in model.chunks_mut(CHUNK as usize) {
            if rng.below(3) != 0 {
                rng.fill(piece);
            }
        }
        std::fs::write(&backing, &model).expect("backing");
        let model_path = dir.path().join("model.img");
        std::fs::write(&model_path, b"").expect("model");
        repo.catalog().add_disk("vm/live", &backing).expect("add");
        repo.catalog().add_disk("model", &model_path).expect("add");
        let mut world = World {
            dir,
            repo,
            backing,
            copy_memory,
            disk: None,
            model,
            snapshots: 0,
        };
        world.open_disk();
        world
    }

    fn open_disk(&mut self) {
        let file = File::options()
            .read(true)
            .write(true)
            .open(&self.backing)
            .expect("open backing");
        let mut live = LiveOptions::new(&self.dir.path().join("store/live"), "vm/live", CHUNK);
        live.copy_memory = self.copy_memory;
        self.disk = Some(LiveDisk::open(Arc::new(file), &self.backing, &live).expect("live disk"));
    }

    fn disk(&self) -> Arc<LiveDisk> {
        self.disk.clone().expect("disk open")
    }

    /// kill -9: nothing is shut down or committed.
    fn crash(&mut self) {
        self.disk = None;
        self.open_disk();
    }

    fn clean_restart(&mut self) {
        let trusted = self.disk().record().trusted();
        let changed = self.disk().record().changed();
        self.disk().shutdown().expect("shutdown");
        self.disk = None;
        self.open_disk();
        let record = self.disk();
        let record = record.record();
        assert_eq!(record.trusted(), trusted, "a clean restart keeps the trust");
        assert_eq!(record.changed(), changed, "and the marks");
    }

    fn parent(&self) -> Option<SnapshotRecord> {
        let snapshots = self
            .repo
            .catalog()
            .snapshots(Some("vm/live"))
            .expect("list");
        snapshots.into_iter().max_by_key(|s| s.id)
    }

    fn exported(&self, record: &SnapshotRecord) -> Vec<u8> {
        let path = self.dir.path().join("export.raw");
        let file = File::create(&path).expect("create export");
        export(
            self.repo.store(),
            record,
            ExportTarget::File(&file),
            &mut |_| {},
        )
        .expect("export");
        std::fs::read(&path).expect("read export")
    }

    /// Checks `record` against `expected`: bytes, and the map and counts a
    /// full re-read of those bytes gives.
    fn check(&self, record: &SnapshotRecord, expected: &[u8]) {
        let got = self.exported(record);
        assert_eq!(got.len(), expected.len(), "size of {}", record.name);
        if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
            panic!(
                "snapshot {} differs from the model at byte {at} (chunk {})",
                record.name,
                at as u64 / CHUNK
            );
        }
        std::fs::write(self.dir.path().join("model.img"), expected).expect("model");
        let full = create_snapshot(&self.repo, "model", &record.name, &options()).expect("full");
        assert_eq!(record.map, full.map, "map of {}", record.name);
        assert_eq!(record.nonzero_bytes, full.nonzero_bytes);
    }

    fn name(&mut self) -> String {
        self.snapshots += 1;
        format!("s{}", self.snapshots)
    }
}

/// A change of the disk, with its parameters drawn relative to the size at
/// the time it runs.
#[derive(Clone, Debug)]
enum Change {
    Write { at: u64, len: u64, seed: u64 },
    Zero { at: u64, len: u64, punch: bool },
    Resize { to: u64 },
}

impl Change {
    /// Applies the change to `disk` and `model`.
    fn apply(&self, disk: &LiveDisk, model: &mut Vec<u8>) {
        let size = model.len() as u64;
        match *self {
            Change::Write { at, len, seed } => {
                // Writes may reach a little past the end: the disk grows.
                let offset = at % (size + CHUNK / 2).min(MAX_SIZE);
                let len = len.min(MAX_SIZE - offset).max(1);
                let bytes = Rng::new(seed).bytes(len as usize);
                disk.write_at(&bytes, offset).expect("write");
                let end = (offset + len) as usize;
                if end > model.len() {
                    model.resize(end, 0);
                }
                model[offset as usize..end].copy_from_slice(&bytes);
            }
            Change::Zero { at, len, punch } => {
                if size == 0 {
                    return;
                }
                let offset = at % size;
                let len = len.min(size - offset);
                disk.zero_range(offset, len, punch).expect("zero");
                model[offset as usize..(offset + len) as usize].fill(0);
            }
            Change::Resize { to } => {
                let to = to % MAX_SIZE + 1;
                disk.set_len(to).expect("resize");
                model.resize(to as usize, 0);
            }
        }
        assert_eq!(disk.size(), model.len() as u64);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Change(Change),
    /// Freeze, apply `after` before the snapshot starts and `during` on
    /// another thread while it is stored, then commit (or, with `lose`,
    /// crash between the catalog's commit and the record's).
    Snapshot {
        after: Vec<Change>,
        during: Vec<Change>,
        lose: bool,
    },
    /// Freeze, change, then give the snapshot up (dropped, never stored).
    Abandon {
        after: Vec<Change>,
    },
    Crash,
    CleanRestart,
    /// Clean shutdown, a write to the backing without snapfs, reopen.
    Bypass {
        at: u64,
        seed: u64,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        6 => (any::<u64>(), 1..3 * CHUNK, any::<u64>())
            .prop_map(|(at, len, seed)| Change::Write { at, len, seed }),
        2 => (any::<u64>(), 1..4 * CHUNK, any::<bool>())
            .prop_map(|(at, len, punch)| Change::Zero { at, len, punch }),
        1 => any::<u64>().prop_map(|to| Change::Resize { to }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => change().prop_map(Op::Change),
        4 => (
            prop::collection::vec(change(), 0..6),
            prop::collection::vec(change(), 0..6),
            prop::bool::weighted(0.15)
        )
            .prop_map(|(after, during, lose)| Op::Snapshot { after, during, lose }),
        1 => prop::collection::vec(change(), 0..4).prop_map(|after| Op::Abandon { after }),
        1 => Just(Op::Crash),
        1 => Just(Op::CleanRestart),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(at, seed)| Op::Bypass { at, seed }),
    ]
}

/// Takes a snapshot of the world's disk with `after` applied between the
/// freeze and the read and `during` applied while it is stored; checks it
/// against the model at the freeze. Returns the stored record.
fn snapshot(world: &mut World, after: &[Change], during: &[Change], lose: bool) -> SnapshotRecord {
    let disk = world.disk();
    let parent = world.parent();
    let changed = disk.record().changed();
    let trusted = disk.record().trusted();
    let frozen = disk.freeze(parent.as_ref()).expect("freeze");
    match frozen.full_read_reason() {
        // Built on its parent: exactly the marked chunks are read.
        None => assert_eq!(frozen.chunks_to_read(), changed),
        Some(why) => assert!(
            !trusted || parent.as_ref().is_none_or(|p| p.id != disk.record().base()),
            "a full read of a trusted record on its base: {why}"
        ),
    }
    let at_freeze = world.model.clone();
    let name = world.name();
    for change in after {
        change.apply(&disk, &mut world.model);
    }
    let mut model = std::mem::take(&mut world.model);
    let running = world.repo.running().start("vm/live").expect("not running");
    let record = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for change in during {
                change.apply(&disk, &mut model);
            }
        });
        let source = frozen.source();
        let record = create_from(&world.repo, &running, &name, &source, &options());
        writer.join().expect("writer");
        record.expect("snapshot")
    });
    drop(running);
    world.model = model;
    if lose {
        drop(frozen);
        world.crash();
    } else {
        frozen.committed(&record).expect("commit");
    }
    world.check(&record, &at_freeze);
    record
}

fn run(ops: &[Op], seed: u64) {
    let mut rng = Rng::new(seed);
    let size = 1 + rng.below(24 * CHUNK);
    let mut world = World::new(size, 4 * CHUNK, &mut rng);
    // The first snapshot reads everything; so does one after a crash.
    snapshot(&mut world, &[], &[], false);
    for op in ops {
        match op {
            Op::Change(change) => {
                let disk = world.disk();
                change.apply(&disk, &mut world.model);
            }
            Op::Snapshot {
                after,
                during,
                lose,
            } => {
                snapshot(&mut world, after, during, *lose);
            }
            Op::Abandon { after } => {
                let disk = world.disk();
                let parent = world.parent();
                let frozen = disk.freeze(parent.as_ref()).expect("freeze");
                for change in after {
                    change.apply(&disk, &mut world.model);
                }
                drop(frozen);
            }
            Op::Crash => world.crash(),
            Op::CleanRestart => world.clean_restart(),
            Op::Bypass { at, seed } => {
                world.disk().shutdown().expect("shutdown");
                world.disk = None;
                bypass_write(&world.backing, &mut world.model, *at, *seed);
                world.open_disk();
                assert!(!world.disk().record().trusted(), "a bypass is detected");
            }
        }
    }
    snapshot(&mut world, &[], &[], false);
}

/// Writes a few bytes to the backing without snapfs.
fn bypass_write(backing: &Path, model: &mut [u8], at: u64, seed: u64) {
    use std::os::unix::fs::FileExt;
    if model.is_empty() {
        return;
    }
    let offset = (at % model.len() as u64) as usize;
    let len = (model.len() - offset).min(100);
    let bytes = Rng::new(seed).bytes(len);
    let file = File::options().write(true).open(backing).expect("open");
    file.write_all_at(&bytes, offset as u64).expect("write");
    model[offset..offset + len].copy_from_slice(&bytes);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 50,
        // Seeded, so a failure replays; PROPTEST_RNG_SEED picks another.
        rng_seed: proptest::test_runner::RngSeed::Fixed(
            std::env::var("PROPTEST_RNG_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(9),
        ),
        max_shrink_iters: 64,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn every_snapshot_of_a_live_disk_is_the_disk_at_its_freeze(
        ops in prop::collection::vec(op(), 1..14),
        seed in any::<u64>(),
    ) {
        run(&ops, seed);
    }
}

#[test]
fn a_crash_after_freeze_leaves_the_next_snapshot_exact() {
    let mut rng = Rng::new(21);
    let mut world = World::new(20 * CHUNK + 77, 64 << 20, &mut rng);
    snapshot(&mut world, &[], &[], false);
    let write = |at, seed| Change::Write {
        at,
        len: CHUNK + 3,
        seed,
    };
    write(3 * CHUNK, 1).apply(&world.disk(), &mut world.model);
    let disk = world.disk();
    let frozen = disk.freeze(world.parent().as_ref()).expect("freeze");
    write(9 * CHUNK, 2).apply(&disk, &mut world.model);
    // kill -9 while the snapshot is being stored.
    drop(frozen);
    drop(disk);
    world.crash();
    assert!(!world.disk().record().trusted());
    snapshot(
        &mut world,
        &[write(CHUNK, 3)],
        &[write(15 * CHUNK, 4)],
        false,
    );
    // Trusted again: the next one stores only the change.
    assert!(world.disk().record().trusted());
    write(5 * CHUNK, 5).apply(&world.disk(), &mut world.model);
    // The writes after the last freeze, and this one.
    assert_eq!(world.disk().record().changed(), vec![1..3, 5..7, 15..17]);
    let record = snapshot(&mut world, &[], &[], false);
    assert!(record.added_bytes < 7 * CHUNK + (64 << 10), "{record:?}");
}

#[test]
fn an_abandoned_snapshot_keeps_its_changes_for_the_next_across_a_clean_restart() {
    let mut rng = Rng::new(22);
    let mut world = World::new(12 * CHUNK, 64 << 20, &mut rng);
    snapshot(&mut world, &[], &[], false);
    let disk = world.disk();
    Change::Write {
        at: 2 * CHUNK,
        len: 10,
        seed: 1,
    }
    .apply(&disk, &mut world.model);
    drop(disk.freeze(world.parent().as_ref()).expect("freeze"));
    Change::Write {
        at: 7 * CHUNK,
        len: 10,
        seed: 2,
    }
    .apply(&disk, &mut world.model);
    drop(disk);
    world.clean_restart();
    assert!(world.disk().record().trusted());
    assert_eq!(world.disk().record().changed(), vec![2..3, 7..8]);
    snapshot(&mut world, &[], &[], false);
}

#[test]
fn a_backing_written_behind_the_records_back_is_read_whole() {
    let mut rng = Rng::new(23);
    let mut world = World::new(30 * CHUNK + 5, 64 << 20, &mut rng);
    snapshot(&mut world, &[], &[], false);
    world.clean_restart();
    assert!(world.disk().record().trusted());
    assert!(world.disk().record().changed().is_empty());
    world.disk().shutdown().expect("shutdown");
    world.disk = None;
    bypass_write(&world.backing, &mut world.model, 17 * CHUNK + 9, 5);
    world.open_disk();
    let record = world.disk();
    let record = record.record();
    assert!(!record.trusted());
    assert!(record
        .untrusted_reason()
        .is_some_and(|r| r.contains("backing changed")));
    let frozen = world
        .disk()
        .freeze(world.parent().as_ref())
        .expect("freeze");
    assert!(frozen.full_read_reason().is_some());
    drop(frozen);
    snapshot(&mut world, &[], &[], false);
    assert!(world.disk().record().trusted());
}

#[test]
fn copies_spill_past_their_memory_and_a_slow_snapshot_stays_exact() {
    let mut rng = Rng::new(24);
    let chunks = 128;
    let mut world = World::new(chunks * CHUNK, 8 * CHUNK, &mut rng);
    snapshot(&mut world, &[], &[], false);
    let disk = world.disk();
    let write = |model: &mut Vec<u8>, offset: u64, seed: u64| {
        let bytes = Rng::new(seed).bytes(CHUNK as usize);
        disk.write_at(&bytes, offset).expect("write");
        model[offset as usize..(offset + CHUNK) as usize].copy_from_slice(&bytes);
    };
    for c in 0..chunks {
        write(&mut world.model, c * CHUNK, c);
    }
    let parent = world.parent();
    let frozen = disk.freeze(parent.as_ref()).expect("freeze");
    assert!(frozen.full_read_reason().is_none());
    let at_freeze = world.model.clone();
    // Overwrite every frozen chunk before the snapshot reads any.
    for c in 0..chunks - 1 {
        write(&mut world.model, c * CHUNK + 100, 1000 + c);
    }
    let stats = frozen.copy_stats();
    assert_eq!(stats.copied_chunks, chunks);
    assert!(stats.peak_memory_bytes <= 8 * CHUNK, "{stats:?}");
    assert_eq!(stats.spilled_chunks, chunks - 8, "{stats:?}");
    let spill_dir = world.dir.path().join("store/live");
    let leftovers = std::fs::read_dir(&spill_dir)
        .expect("live dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("copies."))
        })
        .count();
    assert_eq!(leftovers, 0, "the spill file is unlinked");
    let mut slow = options();
    slow.max_rate = Some(40 << 20);
    let running = world.repo.running().start("vm/live").expect("not running");
    let record =
        create_from(&world.repo, &running, "slow", &frozen.source(), &slow).expect("snapshot");
    drop(running);
    // Kept until the commit: the progressing image file reads them.
    let stats = frozen.copy_stats();
    assert_eq!(stats.memory_bytes, 8 * CHUNK, "{stats:?}");
    assert_eq!(stats.spilled_chunks, chunks - 8, "{stats:?}");
    frozen.committed(&record).expect("commit");
    world.check(&record, &at_freeze);
}

#[test]
fn writes_in_flight_at_the_freeze_are_wholly_before_or_after_it() {
    let mut rng = Rng::new(25);
    let writers = 4u64;
    let mut world = World::new(writers * CHUNK, 64 << 20, &mut rng);
    snapshot(&mut world, &[], &[], false);
    let disk = world.disk();
    let done: Vec<AtomicU32> = (0..writers).map(|_| AtomicU32::new(0)).collect();
    let started: Vec<AtomicU32> = (0..writers).map(|_| AtomicU32::new(0)).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for w in 0..writers {
            let (disk, done, started, stop) = (&disk, &done, &started, &stop);
            scope.spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    started[w as usize].store(n, Ordering::SeqCst);
                    let bytes: Vec<u8> = (0..CHUNK / 4).flat_map(|_| n.to_le_bytes()).collect();
                    disk.write_at(&bytes, w * CHUNK).expect("write");
                    done[w as usize].store(n, Ordering::SeqCst);
                }
            });
        }
        while done.iter().any(|d| d.load(Ordering::SeqCst) == 0) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        for round in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let before: Vec<u32> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
            let frozen = disk.freeze(world.parent().as_ref()).expect("freeze");
            let after: Vec<u32> = started.iter().map(|s| s.load(Ordering::SeqCst)).collect();
            let running = world.repo.running().start("vm/live").expect("not running");
            let record = create_from(
                &world.repo,
                &running,
                &format!("r{round}"),
                &frozen.source(),
                &options(),
            )
            .expect("snapshot");
            drop(running);
            frozen.committed(&record).expect("commit");
            let image = world.exported(&record);
            for w in 0..writers as usize {
                let chunk = &image[w * CHUNK as usize..(w + 1) * CHUNK as usize];
                let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                assert!(
                    chunk.chunks(4).all(|v| v == value.to_le_bytes()),
                    "chunk {w} of round {round} is torn"
                );
                assert!(
                    before[w] <= value && value <= after[w],
                    "chunk {w}: {value} not in {}..={}",
                    before[w],
                    after[w]
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}
