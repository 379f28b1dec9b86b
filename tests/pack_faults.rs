//! Pack storage faults, in process and without root: the store's pack
//! storage is wrapped in a `FaultyPacks` that fails on purpose. Whatever
//! fails, a reader gets an error or the right bytes, never wrong ones; a
//! failed snapshot leaves nothing (no catalog entry, no pack byte beyond a
//! committed record); older snapshots stay byte-identical; and once the
//! fault clears, the same call succeeds. (tests/faults.rs does the same
//! through real mounts, a full tmpfs and a failing FUSE source.)

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{write_random_file, Rng};
use snapfs::catalog::SnapshotRecord;
use snapfs::fs::ToErrno;
use snapfs::image::{export, ExportTarget, ImageReader};
use snapfs::snapshot::{create_snapshot, CreateOptions};
use snapfs::store::backend::faulty::{Fault, Faults, FaultyPacks, Op, When};
use snapfs::store::pack::PACK_HEADER_LEN;
use snapfs::store::{Compression, OpenOptions, StoreConfig};
use snapfs::{Error, Repository};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 64 << 10;

struct Fixture {
    dir: tempfile::TempDir,
    config: StoreConfig,
    faults: Arc<Faults>,
    repo: Arc<Repository>,
    rng: Rng,
}

impl Fixture {
    /// A store with faults not yet injected and disk `d` of `size` random
    /// bytes.
    fn new(seed: u64, size: u64, config: StoreConfig) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = Faults::new();
        let mut fx = Fixture {
            repo: open(&dir.path().join("store"), config, &faults),
            dir,
            config,
            faults,
            rng: Rng::new(seed),
        };
        fx.add_disk("d", size);
        fx
    }

    fn source(&self, disk: &str) -> PathBuf {
        self.dir.path().join(format!("{disk}.img"))
    }

    fn add_disk(&mut self, disk: &str, size: u64) {
        let source = self.source(disk);
        write_random_file(&source, size, &mut self.rng);
        self.repo
            .catalog()
            .add_disk(disk, &source)
            .expect("add disk");
    }

    /// New random content for every chunk of `disk`: a snapshot must
    /// write all of it.
    fn change(&mut self, disk: &str) {
        let source = self.source(disk);
        let size = fs::metadata(&source).expect("stat source").len();
        write_random_file(&source, size, &mut self.rng);
    }

    /// A copy of `disk`'s source as it is now, to compare exports with.
    fn keep_copy(&self, disk: &str, name: &str) -> PathBuf {
        let copy = self.dir.path().join(format!("{disk}-{name}.expected"));
        fs::copy(self.source(disk), &copy).expect("copy source");
        copy
    }

    fn snapshot(&self, disk: &str, name: &str) -> Result<SnapshotRecord, Error> {
        let options = CreateOptions {
            threads: 2,
            idle_io: false,
            ..CreateOptions::default()
        };
        create_snapshot(&self.repo, disk, name, &options)
    }

    fn record(&self, disk: &str, name: &str) -> SnapshotRecord {
        self.repo
            .catalog()
            .snapshot(disk, name)
            .expect("snapshot record")
    }

    /// The store closed and opened again (same faults): reads come from
    /// the packs, not the chunk cache, and recovery runs.
    fn reopen(self) -> Fixture {
        let Fixture {
            dir,
            config,
            faults,
            repo,
            rng,
        } = self;
        assert_eq!(
            Arc::strong_count(&repo),
            1,
            "a reader still holds the store"
        );
        // Its lock goes with it.
        drop(repo);
        Fixture {
            repo: open(&dir.path().join("store"), config, &faults),
            dir,
            config,
            faults,
            rng,
        }
    }

    fn listed(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .repo
            .catalog()
            .snapshots(None)
            .expect("list")
            .into_iter()
            .map(|s| format!("{}/{}", s.disk, s.name))
            .collect();
        names.sort();
        names
    }

    /// Every pack byte is a pack header or an indexed record: nothing of
    /// a failed session stays.
    fn assert_no_pack_leftovers(&self) {
        let stats = snapfs::stats::stats(&self.repo).expect("stats");
        assert_eq!(
            stats.stored_bytes,
            stats.record_bytes + PACK_HEADER_LEN * stats.packs,
            "leftover bytes in packs: {stats:?}"
        );
        assert_eq!(
            self.repo.store().stored_bytes().expect("stored bytes"),
            stats.stored_bytes
        );
    }

    fn export(&self, disk: &str, name: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let record = self.record(disk, name);
        export(
            self.repo.store(),
            &record,
            ExportTarget::Stream(&mut out),
            &mut |_| {},
        )?;
        Ok(out)
    }

    fn assert_exports(&self, disk: &str, name: &str, expected: &Path) {
        let bytes = self.export(disk, name).expect("export");
        assert!(
            bytes == fs::read(expected).expect("read expected"),
            "export of {disk}/{name} differs from {}",
            expected.display()
        );
    }
}

fn open(root: &Path, config: StoreConfig, faults: &Arc<Faults>) -> Arc<Repository> {
    let options = OpenOptions {
        create: Some(config),
        // Small, so that reads reach the packs.
        cache_bytes: MIB,
    };
    let repo = Repository::open_with(root, &options, FaultyPacks::wrapper(faults));
    Arc::new(repo.expect("open store"))
}

fn zstd_store() -> StoreConfig {
    StoreConfig {
        chunk_size: CHUNK as u32,
        compression: Compression::Zstd,
        zstd_level: 1,
    }
}

/// `len` bytes of `path` from `offset`.
fn file_bytes(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    fs::File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, offset))
        .expect("read source");
    buf
}

// ------------------------------------------------------------- full store

/// Injects `fault` into the snapshot `new` of a disk that already has
/// `old`, and checks the promises of a failed snapshot, then that it
/// succeeds once the fault is cleared.
fn failed_snapshot_leaves_nothing(mut fx: Fixture, disk: &str, op: Op, fault: Fault, when: When) {
    let errno = match fault {
        Fault::NoSpace => libc::ENOSPC,
        _ => libc::EIO,
    };
    fx.snapshot("d", "old").expect("old");
    let old = fx.keep_copy("d", "old");
    // `old` is of `d`: new content, so that `new` writes every chunk.
    fx.change("d");
    let new = fx.keep_copy(disk, "new");
    let before = snapfs::stats::stats(&fx.repo).expect("stats");

    fx.faults.inject(op, fault, when);
    let failed = fx.snapshot(disk, "new").expect_err("snapshot under fault");
    assert!(fx.faults.fired() > 0, "the {op:?} fault never fired");
    assert_eq!(failed.errno(), errno, "{failed}");
    fx.faults.clear();

    assert_eq!(fx.listed(), ["d/old"]);
    fx.assert_no_pack_leftovers();
    let after = snapfs::stats::stats(&fx.repo).expect("stats");
    assert_eq!(
        (after.chunks, after.stored_bytes),
        (before.chunks, before.stored_bytes),
        "the failed snapshot left chunks behind"
    );
    fx.assert_exports("d", "old", &old);

    // Open again: recovery has nothing to cut, `old` still reads.
    let fx = fx.reopen();
    fx.assert_no_pack_leftovers();
    fx.assert_exports("d", "old", &old);

    fx.snapshot(disk, "new")
        .expect("new, once the fault cleared");
    fx.assert_exports(disk, "new", &new);
    fx.assert_exports("d", "old", &old);
    fx.assert_no_pack_leftovers();
}

#[test]
fn no_space_on_an_append_fails_the_snapshot_and_leaves_nothing() {
    let fx = Fixture::new(1, 4 * MIB, zstd_store());
    // About 2 appends per chunk: this one is some 30 chunks in.
    failed_snapshot_leaves_nothing(fx, "d", Op::Append, Fault::NoSpace, When::Nth(60));
}

#[test]
fn no_space_on_a_new_packs_header_leaves_no_pack() {
    // The first append of a session is its pack's header.
    let fx = Fixture::new(10, 4 * MIB, zstd_store());
    failed_snapshot_leaves_nothing(fx, "d", Op::Append, Fault::NoSpace, When::Nth(1));
}

#[test]
fn no_space_in_the_reserve_fails_the_snapshot_and_leaves_nothing() {
    // The free space is looked at every 8 MiB at most: the second look is
    // partway through 24 MiB.
    let fx = Fixture::new(2, 24 * MIB, zstd_store());
    failed_snapshot_leaves_nothing(fx, "d", Op::CheckRoom, Fault::NoSpace, When::Nth(2));
}

#[test]
fn no_space_after_a_full_pack_was_committed_gives_that_pack_back() {
    // Large chunks, stored plain: a pack (128 MiB) fills after 128 chunks,
    // is committed on the way, and must go again when the snapshot fails
    // in its second pack.
    let config = StoreConfig {
        chunk_size: MIB as u32,
        compression: Compression::None,
        zstd_level: 1,
    };
    let mut fx = Fixture::new(3, 4 * MIB, config);
    fx.add_disk("big", 136 * MIB);
    let appends_per_pack = 1 + 2 * 128;
    let when = When::Nth(appends_per_pack + 10);
    failed_snapshot_leaves_nothing(fx, "big", Op::Append, Fault::NoSpace, when);
}

#[test]
fn no_space_from_an_append_on_stays_until_cleared() {
    let fx = Fixture::new(4, 4 * MIB, zstd_store());
    failed_snapshot_leaves_nothing(fx, "d", Op::Append, Fault::NoSpace, When::FromNth(20));
}

// ---------------------------------------------------------------- commit

#[test]
fn eio_on_sync_during_commit_fails_the_snapshot_and_leaves_nothing() {
    // A 4 MiB snapshot fills no pack: its only sync is the commit's.
    let fx = Fixture::new(5, 4 * MIB, zstd_store());
    failed_snapshot_leaves_nothing(fx, "d", Op::Sync, Fault::Eio, When::Nth(1));
}

#[test]
fn eio_on_seal_during_commit_fails_the_snapshot_and_leaves_nothing() {
    let fx = Fixture::new(6, 4 * MIB, zstd_store());
    failed_snapshot_leaves_nothing(fx, "d", Op::Seal, Fault::Eio, When::Nth(1));
}

// ----------------------------------------------------------------- reads

/// Reads chunk `chunk` of `d/s` through an image reader: the result
/// must be the source's bytes or an error.
fn read_chunk(
    fx: &Fixture,
    reader: &ImageReader,
    chunk: u64,
    expected: &Path,
) -> Result<(), Error> {
    let mut buf = vec![0u8; CHUNK as usize];
    let n = reader.read_at(chunk * CHUNK, &mut buf)?;
    assert_eq!(n, CHUNK as usize);
    assert!(
        buf == file_bytes(expected, chunk * CHUNK, CHUNK as usize),
        "chunk {chunk} read wrong bytes (faults fired: {})",
        fx.faults.fired()
    );
    Ok(())
}

#[test]
fn eio_on_a_pack_read_is_an_error_not_damage_and_clears() {
    let fx = Fixture::new(7, 4 * MIB, zstd_store());
    fx.snapshot("d", "s").expect("s");
    let expected = fx.keep_copy("d", "s");
    let fx = fx.reopen();
    let record = fx.record("d", "s");

    // The very first read of the pack (its header) fails.
    fx.faults.inject(Op::Read, Fault::Eio, When::FromNth(1));
    let reader = ImageReader::new(fx.repo.clone(), record.clone());
    let failed = read_chunk(&fx, &reader, 5, &expected).expect_err("read under EIO");
    assert_eq!(failed.errno(), libc::EIO, "{failed}");
    assert!(!fx.repo.store().is_damaged(&record.map.root));
    let failed = fx.export("d", "s").expect_err("export under EIO");
    assert_eq!(failed.errno(), libc::EIO, "{failed}");
    fx.faults.clear();
    read_chunk(&fx, &reader, 5, &expected).expect("read once the fault cleared");

    // A chunk not read yet, from a pack whose header is known good.
    let hash = reader.chunk_hash(9).expect("hash of chunk 9");
    fx.faults.inject(Op::Read, Fault::Eio, When::Nth(1));
    let failed = read_chunk(&fx, &reader, 9, &expected).expect_err("read under EIO");
    assert_eq!(failed.errno(), libc::EIO, "{failed}");
    assert!(
        !fx.repo.store().is_damaged(&hash),
        "an I/O error marked damage"
    );
    read_chunk(&fx, &reader, 9, &expected).expect("the same read, fault gone");
    assert!(!fx.repo.store().is_damaged(&hash));
    fx.assert_exports("d", "s", &expected);
}

#[test]
fn short_pack_reads_are_errors_never_wrong_bytes() {
    let fx = Fixture::new(8, 4 * MIB, zstd_store());
    fx.snapshot("d", "s").expect("s");
    let expected = fx.keep_copy("d", "s");
    let fx = fx.reopen();
    let reader = ImageReader::new(fx.repo.clone(), fx.record("d", "s"));
    reader.chunk_hash(0).expect("map pages read");

    // One read at a time comes back half filled: data chunks, then export.
    for chunk in 0..16 {
        fx.faults.inject(Op::Read, Fault::ShortRead, When::Nth(1));
        read_chunk(&fx, &reader, chunk, &expected).expect_err("a short read must fail");
        fx.faults.clear();
        read_chunk(&fx, &reader, chunk, &expected).expect("the same read, fault gone");
    }
    fx.faults
        .inject(Op::Read, Fault::ShortRead, When::FromNth(1));
    fx.export("d", "s").expect_err("export from short reads");
    fx.faults.clear();
    fx.assert_exports("d", "s", &expected);
}

#[test]
fn slow_packs_still_give_the_right_bytes() {
    let fx = Fixture::new(9, 4 * MIB, zstd_store());
    let pause = Fault::Latency(Duration::from_millis(2));
    for op in [Op::Create, Op::Append, Op::Sync, Op::Seal, Op::CheckRoom] {
        fx.faults.inject(op, pause, When::FromNth(1));
    }
    fx.snapshot("d", "s").expect("s");
    let expected = fx.keep_copy("d", "s");
    let fx = fx.reopen();
    fx.faults.inject(Op::Read, pause, When::FromNth(1));
    let reader = ImageReader::new(fx.repo.clone(), fx.record("d", "s"));
    for chunk in [0, 1, 17, 63] {
        read_chunk(&fx, &reader, chunk, &expected).expect("slow read");
    }
    fx.assert_exports("d", "s", &expected);
    assert!(
        fx.faults.fired() > 100,
        "latency hit {} calls",
        fx.faults.fired()
    );
}
