//! Property tests of the snapshot engine, through the library API: random
//! disk contents (random data, zero runs written and punched as holes,
//! compressible patterns, repeated chunks; sizes that are not a multiple of
//! the chunk size), random changes between snapshots, random deletions and
//! gc passes. The promises checked:
//!
//! - every snapshot exports (sparse file and stream) to exactly the bytes
//!   its source held when it was taken, and `ImageReader::read_at` agrees
//!   at random offsets;
//! - every older snapshot stays byte-identical after later snapshots, after
//!   other snapshots are removed, after gc (min dead 0 and 10), and after
//!   the store is closed and opened again;
//! - an image opened before its snapshot is removed reads correctly through
//!   gc until it is dropped;
//! - a snapshot of content the store already holds adds no bytes.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use common::Rng;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use snapfs::catalog::SnapshotRecord;
use snapfs::image::{export, ExportTarget, ImageReader};
use snapfs::snapshot::{create_snapshot, CreateOptions};
use snapfs::store::{Compression, OpenOptions, StoreConfig};
use snapfs::Repository;

const CHUNK: u64 = 64 << 10;

fn config() -> StoreConfig {
    StoreConfig {
        chunk_size: CHUNK as u32,
        compression: Compression::Zstd,
        zstd_level: 1,
    }
}

fn open(dir: &Path) -> Arc<Repository> {
    let options = OpenOptions {
        create: Some(config()),
        // A small cache, so that reads after gc come from the packs.
        cache_bytes: 1 << 20,
    };
    Arc::new(Repository::open(dir, &options).expect("open store"))
}

/// What a written range holds.
#[derive(Clone, Debug)]
enum Fill {
    Random(u64),
    /// Zeros written out as data.
    Zeros,
    /// Zeros as a punched hole (where the file system allows it).
    Hole,
    /// A compressible repeated byte.
    Pattern(u8),
}

#[derive(Clone, Debug)]
enum Change {
    /// Write `len` bytes at `at` (taken modulo size + 1; may grow the disk).
    Write { at: u64, len: u64, fill: Fill },
    /// Copy whole chunks onto other whole chunks: repeated content.
    CopyChunks { from: u64, to: u64, count: u64 },
    /// Truncate or extend (with a hole).
    Resize { size: u64 },
}

#[derive(Clone, Debug)]
enum Between {
    /// Remove the live snapshot with this index (modulo their number).
    Remove(usize),
    /// Remove one while an image of it stays open, gc, then read it.
    RemoveWhileOpen(usize, u8),
    Gc(u8),
    Reopen,
}

#[derive(Clone, Debug)]
struct Step {
    changes: Vec<Change>,
    after: Vec<Between>,
}

fn fill() -> impl Strategy<Value = Fill> {
    prop_oneof![
        3 => any::<u64>().prop_map(Fill::Random),
        2 => Just(Fill::Zeros),
        2 => Just(Fill::Hole),
        1 => any::<u8>().prop_map(Fill::Pattern),
    ]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..2_000_000,
        (0u64..32).prop_map(|c| c * CHUNK),
        (1u64..32).prop_map(|c| c * CHUNK - 1),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        6 => (offset(), 1u64..300_000, fill()).prop_map(|(at, len, fill)| Change::Write { at, len, fill }),
        1 => (0u64..24, 0u64..24, 1u64..4).prop_map(|(from, to, count)| Change::CopyChunks { from, to, count }),
        1 => (0u64..1_800_000).prop_map(|size| Change::Resize { size }),
    ]
}

fn between() -> impl Strategy<Value = Between> {
    prop_oneof![
        2 => any::<usize>().prop_map(Between::Remove),
        1 => (any::<usize>(), prop_oneof![Just(0u8), Just(10u8)])
            .prop_map(|(i, d)| Between::RemoveWhileOpen(i, d)),
        2 => prop_oneof![Just(0u8), Just(10u8)].prop_map(Between::Gc),
        1 => Just(Between::Reopen),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop::collection::vec(change(), 0..6),
        prop::collection::vec(between(), 0..3),
    )
        .prop_map(|(changes, after)| Step { changes, after })
}

/// The source file and the model of what it holds.
struct Disk {
    file: File,
    model: Vec<u8>,
}

impl Disk {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Write { at, len, fill } => {
                let at = at % (self.model.len() as u64 + 1);
                let end = at + len;
                if end > self.model.len() as u64 {
                    self.model.resize(end as usize, 0);
                }
                let range = at as usize..end as usize;
                match fill {
                    Fill::Random(seed) => Rng::new(*seed).fill(&mut self.model[range.clone()]),
                    Fill::Zeros | Fill::Hole => self.model[range.clone()].fill(0),
                    Fill::Pattern(byte) => self.model[range.clone()].fill(*byte),
                }
                let punched = matches!(fill, Fill::Hole) && self.punch_hole(at, *len);
                if !punched {
                    self.file
                        .write_all_at(&self.model[range], at)
                        .expect("write source");
                }
            }
            Change::CopyChunks { from, to, count } => {
                let chunks = self.model.len() as u64 / CHUNK;
                if chunks == 0 {
                    return;
                }
                let (from, to) = (from % chunks, to % chunks);
                let count = (*count).min(chunks - from).min(chunks - to);
                let data =
                    self.model[(from * CHUNK) as usize..((from + count) * CHUNK) as usize].to_vec();
                let at = (to * CHUNK) as usize;
                self.model[at..at + data.len()].copy_from_slice(&data);
                self.file
                    .write_all_at(&data, to * CHUNK)
                    .expect("write source");
            }
            Change::Resize { size } => {
                self.model.resize(*size as usize, 0);
                self.file.set_len(*size).expect("resize source");
            }
        }
    }

    /// Punches a hole over `len` bytes at `at`, growing the file first if
    /// the range goes past its end. Returns false if unsupported.
    fn punch_hole(&self, at: u64, len: u64) -> bool {
        let size = self.model.len() as u64;
        if self.file.set_len(size).is_err() {
            return false;
        }
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at as libc::off_t,
                len as libc::off_t,
            )
        };
        rc == 0
    }
}

/// A snapshot that should exist, with the bytes it must hold.
struct Taken {
    record: SnapshotRecord,
    content: Arc<Vec<u8>>,
}

fn check_export(store: &Repository, taken: &Taken, out_dir: &Path, rng: &mut Rng) {
    let name = &taken.record.name;
    let path = out_dir.join(format!("{name}.img"));
    let file = File::create(&path).expect("create export file");
    export(
        store.store(),
        &taken.record,
        ExportTarget::File(&file),
        &mut |_| {},
    )
    .unwrap_or_else(|e| panic!("export of {name} failed: {e}"));
    drop(file);
    let exported = fs::read(&path).expect("read export");
    assert_image_eq(
        &exported,
        &taken.content,
        &format!("sparse export of {name}"),
    );
    fs::remove_file(&path).expect("remove export");

    if rng.below(2) == 0 {
        let mut stream = Vec::new();
        export(
            store.store(),
            &taken.record,
            ExportTarget::Stream(&mut stream),
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("stream export of {name} failed: {e}"));
        assert_image_eq(&stream, &taken.content, &format!("stream export of {name}"));
    }
}

fn check_reader(reader: &ImageReader, content: &[u8], rng: &mut Rng, reads: usize) {
    let size = content.len() as u64;
    assert_eq!(reader.size(), size);
    for _ in 0..reads {
        let offset = match rng.below(4) {
            0 => rng.below(size / CHUNK + 1) * CHUNK,
            1 => (rng.below(size / CHUNK + 1) * CHUNK).saturating_sub(rng.below(100)),
            _ => rng.below(size + 10),
        };
        // Small reads (inside one chunk) and large ones (across chunks).
        let len = if rng.below(2) == 0 {
            rng.below(CHUNK) as usize + 1
        } else {
            rng.below(3 * CHUNK) as usize + 1
        };
        let mut buf = vec![0xAAu8; len];
        let n = reader
            .read_at(offset, &mut buf)
            .unwrap_or_else(|e| panic!("read_at({offset}, {len}) failed: {e}"));
        let expected = if offset >= size {
            &[][..]
        } else {
            &content[offset as usize..(offset as usize + len).min(size as usize)]
        };
        assert_eq!(n, expected.len(), "read_at({offset}, {len}) length");
        assert!(
            buf[..n] == *expected,
            "read_at({offset}, {len}) returned wrong bytes"
        );
        // The mount's read path: a slice of a cached chunk when it can.
        let data = reader
            .read_bytes(offset, len)
            .unwrap_or_else(|e| panic!("read_bytes({offset}, {len}) failed: {e}"));
        assert!(
            data.as_slice() == expected,
            "read_bytes({offset}, {len}) returned wrong bytes"
        );
    }
}

fn assert_image_eq(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: size");
    if let Some(i) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first difference at offset {i}");
    }
}

fn check_all(store: &Arc<Repository>, taken: &[Taken], out_dir: &Path, rng: &mut Rng) {
    let listed: Vec<String> = store
        .catalog()
        .snapshots(Some("d"))
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    let expected: Vec<String> = taken.iter().map(|t| t.record.name.clone()).collect();
    assert_eq!(listed, expected, "catalog lists exactly the live snapshots");
    for t in taken {
        check_export(store, t, out_dir, rng);
        let reader = ImageReader::new(store.clone(), t.record.clone());
        check_reader(&reader, &t.content, rng, 8);
    }
    let report = snapfs::verify::verify(
        store.store(),
        &store.catalog().snapshots(None).expect("list"),
        &mut |_| {},
    );
    assert!(report.damage.is_empty(), "verify: {:?}", report.damage);
}

fn run_case(initial: Vec<Change>, steps: Vec<Step>, seed: u64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store_dir = tmp.path().join("store");
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).expect("out dir");
    let source = tmp.path().join("disk.img");
    let mut disk = Disk {
        file: fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&source)
            .expect("create source"),
        model: Vec::new(),
    };
    let mut rng = Rng::new(seed);
    let mut store = open(&store_dir);
    store.catalog().add_disk("d", &source).expect("add disk");
    for change in &initial {
        disk.apply(change);
    }
    let mut taken: Vec<Taken> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        if n > 0 {
            for change in &step.changes {
                disk.apply(change);
            }
        }
        let name = format!("s{n}");
        let record = create_snapshot(&store, "d", &name, &CreateOptions::default())
            .unwrap_or_else(|e| panic!("snapshot {name} failed: {e}"));
        let content = Arc::new(disk.model.clone());
        assert_eq!(record.size, content.len() as u64, "size of {name}");
        let nonzero: u64 = content
            .chunks(CHUNK as usize)
            .filter(|c| c.iter().any(|&b| b != 0))
            .map(|c| c.len() as u64)
            .sum();
        assert_eq!(record.nonzero_bytes, nonzero, "non-zero bytes of {name}");
        if taken.iter().any(|t| *t.content == *content) {
            assert_eq!(record.added_bytes, 0, "{name} repeats stored content");
        }
        taken.push(Taken { record, content });
        check_all(&store, &taken, &out_dir, &mut rng);

        for action in &step.after {
            match action {
                Between::Remove(i) if !taken.is_empty() => {
                    let victim = taken.remove(i % taken.len());
                    store
                        .catalog()
                        .remove_snapshot("d", &victim.record.name)
                        .expect("rm");
                }
                Between::RemoveWhileOpen(i, min_dead) if !taken.is_empty() => {
                    let victim = taken.remove(i % taken.len());
                    let reader = ImageReader::new(store.clone(), victim.record.clone());
                    store
                        .catalog()
                        .remove_snapshot("d", &victim.record.name)
                        .expect("rm");
                    store.gc(*min_dead).expect("gc");
                    store.store().clear_cache();
                    check_reader(&reader, &victim.content, &mut rng, 16);
                    let mut whole = vec![0u8; victim.content.len()];
                    let n = reader.read_at(0, &mut whole).expect("read whole image");
                    assert_eq!(n, whole.len());
                    assert_image_eq(&whole, &victim.content, "open image after rm and gc");
                    drop(reader);
                    store.gc(*min_dead).expect("gc after close");
                }
                Between::Gc(min_dead) => {
                    store.gc(*min_dead).expect("gc");
                    store.store().clear_cache();
                }
                Between::Reopen => {
                    drop(store);
                    store = open(&store_dir);
                }
                _ => {}
            }
            check_all(&store, &taken, &out_dir, &mut rng);
        }
    }
    // Everything survives a final full gc and a reopen, and after it every
    // pack byte is a header or a live record.
    store.gc(0).expect("final gc");
    drop(store);
    let store = open(&store_dir);
    check_all(&store, &taken, &out_dir, &mut rng);
    let stats = snapfs::stats::stats(&store).expect("stats");
    assert_eq!(
        stats.stored_bytes,
        stats.record_bytes + 16 * stats.packs,
        "dead bytes left after gc 0: {stats:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        // SNAPFS_PROP_CASES=1000 for a longer soak.
        cases: std::env::var("SNAPFS_PROP_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64),
        max_shrink_iters: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    })]

    #[test]
    fn snapshots_stay_exact_through_changes_removals_and_gc(
        size in 0u64..1_600_000,
        initial in prop::collection::vec(change(), 0..8),
        steps in prop::collection::vec(step(), 1..5),
        seed in any::<u64>(),
    ) {
        let mut all = vec![
            Change::Resize { size },
            Change::Write { at: 0, len: size, fill: Fill::Random(seed) },
        ];
        all.extend(initial);
        run_case(all, steps, seed);
    }
}

/// A disk of more than 1024 chunks has a two-level map; a change of one
/// chunk costs that chunk and two pages, and every byte still reads back.
#[test]
fn two_level_map_incremental_snapshot_costs_one_chunk_and_its_pages() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("disk.img");
    let size = 1030 * CHUNK + 12_345;
    let file = File::create(&source).expect("create");
    file.set_len(size).expect("size");
    let mut rng = Rng::new(7);
    for at in [
        0,
        17 * CHUNK + 5,
        1023 * CHUNK,
        1024 * CHUNK - 100,
        size - 20_000,
    ] {
        file.write_all_at(&rng.bytes(20_000), at).expect("write");
    }
    let store = open(&tmp.path().join("store"));
    store.catalog().add_disk("vm1/big", &source).expect("add");
    let first = create_snapshot(&store, "vm1/big", "one", &CreateOptions::default()).expect("one");
    assert_eq!(first.map.height, 2);
    let one = fs::read(&source).expect("read source");

    file.write_all_at(&rng.bytes(100), 600 * CHUNK + 3)
        .expect("change");
    let second = create_snapshot(&store, "vm1/big", "two", &CreateOptions::default()).expect("two");
    let two = fs::read(&source).expect("read source");
    // One new chunk, one new leaf page and a new root page (each a record
    // with a 48-byte header).
    let page_max = 12 + 32 * 1024 + 48;
    assert!(
        second.added_bytes <= CHUNK + 48 + 2 * page_max,
        "incremental snapshot added {} bytes",
        second.added_bytes
    );
    for (record, content) in [(first, one), (second, two)] {
        let taken = Taken {
            record,
            content: Arc::new(content),
        };
        check_export(&store, &taken, tmp.path(), &mut rng);
        let reader = ImageReader::new(store.clone(), taken.record.clone());
        check_reader(&reader, &taken.content, &mut rng, 64);
        assert_eq!(
            reader.next_data(CHUNK).expect("next_data"),
            Some(17 * CHUNK)
        );
        assert_eq!(reader.next_hole(0).expect("next_hole"), CHUNK);
    }
}

/// A sparse disk of 64 GiB and a bit has a three-level map; holes cost
/// nothing and data anywhere reads back.
#[test]
fn sparse_three_level_map_reads_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = tmp.path().join("huge.img");
    let size = 1024 * 1024 * CHUNK + 5 * CHUNK + 777;
    let file = File::create(&source).expect("create");
    file.set_len(size).expect("size");
    let mut rng = Rng::new(99);
    let spots = [
        0,
        CHUNK * 1024 * 3 + 11,
        CHUNK * 1024 * 1024 - 50,
        size - 1000,
    ];
    let mut pieces = Vec::new();
    for at in spots {
        let len = (size - at).min(5000);
        let data = rng.bytes(len as usize);
        file.write_all_at(&data, at).expect("write");
        pieces.push((at, data));
    }
    let store = open(&tmp.path().join("store"));
    store.catalog().add_disk("huge", &source).expect("add");
    let record = create_snapshot(&store, "huge", "s", &CreateOptions::default()).expect("snapshot");
    assert_eq!(record.map.height, 3);
    assert_eq!(record.size, size);
    let reader = ImageReader::new(store.clone(), record.clone());
    for (at, data) in &pieces {
        // Read the piece with some zeros around it.
        let start = at.saturating_sub(100);
        let end = (at + data.len() as u64 + 100).min(size);
        let mut buf = vec![0xAAu8; (end - start) as usize];
        assert_eq!(reader.read_at(start, &mut buf).expect("read"), buf.len());
        let mut expected = vec![0u8; buf.len()];
        let within = (at - start) as usize;
        expected[within..within + data.len()].copy_from_slice(data);
        assert_image_eq(&buf, &expected, &format!("bytes around offset {at}"));
    }
    assert_eq!(
        reader.next_data(CHUNK).expect("next_data"),
        Some(CHUNK * 1024 * 3)
    );
    let report = snapfs::verify::verify(store.store(), &[record], &mut |_| {});
    assert!(report.damage.is_empty(), "{:?}", report.damage);
}

/// gc runs while snapshots of two disks are being taken and old snapshots
/// are removed and read: no live snapshot ever loses a byte.
#[test]
fn gc_alongside_snapshots_and_readers_loses_nothing() {
    use std::sync::Mutex;

    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(&tmp.path().join("store"));
    let disks = ["vm1/a", "vm2/b"];
    let size = 4 << 20;
    for (i, disk) in disks.iter().enumerate() {
        let source = tmp.path().join(format!("disk{i}.img"));
        common::write_random_file(&source, size, &mut Rng::new(i as u64));
        store.catalog().add_disk(disk, &source).expect("add");
    }
    let live: Mutex<Vec<Taken>> = Mutex::new(Vec::new());
    let writers_done = std::sync::atomic::AtomicUsize::new(0);
    let rounds = 12;
    std::thread::scope(|scope| {
        for (i, disk) in disks.iter().enumerate() {
            let (store, live, writers_done) = (&store, &live, &writers_done);
            let source = tmp.path().join(format!("disk{i}.img"));
            scope.spawn(move || {
                let mut rng = Rng::new(100 + i as u64);
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&source)
                    .expect("open source");
                for round in 0..rounds {
                    let len = 1 + rng.below(3 * CHUNK);
                    let at = rng.below(size - len);
                    file.write_all_at(&rng.bytes(len as usize), at)
                        .expect("change");
                    let content = Arc::new(fs::read(&source).expect("read source"));
                    let name = format!("r{round}");
                    let record = create_snapshot(store, disk, &name, &CreateOptions::default())
                        .unwrap_or_else(|e| panic!("snapshot {disk}/{name}: {e}"));
                    live.lock().expect("lock").push(Taken { record, content });
                }
                writers_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let (store, live, writers_done) = (&store, &live, &writers_done);
        scope.spawn(move || {
            let mut rng = Rng::new(7);
            while writers_done.load(std::sync::atomic::Ordering::SeqCst) < disks.len() {
                // Remove a random snapshot, keeping at least two.
                {
                    let mut live = live.lock().expect("lock");
                    if live.len() > 2 {
                        let index = rng.below(live.len() as u64) as usize;
                        let victim = live.remove(index);
                        store
                            .catalog()
                            .remove_snapshot(&victim.record.disk, &victim.record.name)
                            .expect("rm");
                    }
                }
                store
                    .gc(if rng.below(2) == 0 { 0 } else { 10 })
                    .expect("gc");
                // Read a random live snapshot through an image reader.
                let pick = {
                    let live = live.lock().expect("lock");
                    (!live.is_empty()).then(|| {
                        let t = &live[rng.below(live.len() as u64) as usize];
                        (t.record.clone(), t.content.clone())
                    })
                };
                if let Some((record, content)) = pick {
                    let reader = ImageReader::new(store.clone(), record);
                    check_reader(&reader, &content, &mut rng, 16);
                }
            }
        });
    });
    store.gc(0).expect("final gc");
    store.store().clear_cache();
    let mut rng = Rng::new(8);
    let live = live.into_inner().expect("lock");
    for taken in &live {
        check_export(&store, taken, tmp.path(), &mut rng);
    }
    let all = store.catalog().snapshots(None).expect("list");
    assert_eq!(all.len(), live.len());
    let report = snapfs::verify::verify(store.store(), &all, &mut |_| {});
    assert!(report.damage.is_empty(), "{:?}", report.damage);
}
