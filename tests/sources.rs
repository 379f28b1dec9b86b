//! The chunk-source seam, driven in-process without root: a source that
//! fails part-way leaves nothing behind and says where it failed, and a
//! source that reads only changed chunks on top of a parent snapshot makes
//! a snapshot equal, byte for byte and map for map, to a full re-read.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::Rng;
use snapfs::catalog::SnapshotRecord;
use snapfs::image::{export, ExportTarget};
use snapfs::snapshot::create::{create_from, create_snapshot};
use snapfs::snapshot::source::{ChunkSource, ImageSource, Parent, Unread};
use snapfs::snapshot::CreateOptions;
use snapfs::store::{OpenOptions, StoreConfig};
use snapfs::{Error, Repository};

const CHUNK: u64 = 64 << 10;

fn open(dir: &Path) -> Arc<Repository> {
    let options = OpenOptions {
        create: Some(StoreConfig::default()),
        ..OpenOptions::default()
    };
    Arc::new(Repository::open(dir, &options).expect("open store"))
}

/// A disk image of `chunks` chunks: random data with some zero chunks.
fn write_image(path: &Path, chunks: u64, rng: &mut Rng) -> Vec<u8> {
    let mut bytes = vec![0u8; (chunks * CHUNK) as usize];
    for chunk in bytes.chunks_mut(CHUNK as usize) {
        if rng.below(5) != 0 {
            rng.fill(chunk);
        }
    }
    std::fs::write(path, &bytes).expect("write image");
    bytes
}

fn exported(repo: &Repository, record: &SnapshotRecord, dir: &Path) -> Vec<u8> {
    let path = dir.join(format!("{}.raw", record.name));
    let file = File::create(&path).expect("create export");
    export(repo.store(), record, ExportTarget::File(&file), &mut |_| {}).expect("export");
    std::fs::read(&path).expect("read export")
}

/// An image source whose reads fail with EIO from `bad_from` on.
struct FailingSource {
    inner: ImageSource,
    bad_from: u64,
}

impl ChunkSource for FailingSource {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn next_range(&self, pos: u64) -> snapfs::Result<Option<(u64, u64)>> {
        self.inner.next_range(pos)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> snapfs::Result<()> {
        if offset + buf.len() as u64 > self.bad_from {
            return Err(Error::Source {
                path: self.path().to_path_buf(),
                why: format!(
                    "read failed at offset {offset}: {}",
                    std::io::Error::from_raw_os_error(libc::EIO)
                ),
            });
        }
        self.inner.read_exact_at(buf, offset)
    }
}

/// Reads only the chunks listed as changed; the rest is the parent's.
struct ChangedChunks {
    file: File,
    path: PathBuf,
    size: u64,
    /// Sorted chunk numbers.
    changed: Vec<u64>,
    parent: Parent,
}

impl ChunkSource for ChangedChunks {
    fn path(&self) -> &Path {
        &self.path
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn next_range(&self, pos: u64) -> snapfs::Result<Option<(u64, u64)>> {
        let chunk = pos.div_ceil(CHUNK);
        Ok(self
            .changed
            .iter()
            .find(|c| **c >= chunk)
            .map(|c| (c * CHUNK, ((c + 1) * CHUNK).min(self.size))))
    }
    fn unread(&self) -> Unread {
        Unread::SameAs(self.parent)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> snapfs::Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::Source {
                path: self.path.clone(),
                why: e.to_string(),
            })
    }
}

#[test]
fn a_source_failing_part_way_fails_the_snapshot_names_the_offset_and_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    let mut rng = Rng::new(7);
    write_image(&image, 300, &mut rng);
    let repo = open(&dir.path().join("store"));
    repo.catalog().add_disk("d", &image).expect("add disk");
    let bad_from = 160 * CHUNK + 5;
    let source = FailingSource {
        inner: ImageSource::open(&image).expect("open image"),
        bad_from,
    };
    let running = repo.running().start("d").expect("not running");
    let err = create_from(
        &repo,
        &running,
        "broken",
        &source,
        &CreateOptions::default(),
    )
    .expect_err("the snapshot must fail");
    drop(running);
    let text = err.to_string();
    assert!(
        matches!(err, Error::Source { .. }) && text.contains("read failed at offset"),
        "{text}"
    );
    assert!(text.contains(&image.display().to_string()), "{text}");
    assert!(repo
        .catalog()
        .snapshots(Some("d"))
        .expect("list")
        .is_empty());
    let stats = snapfs::stats::stats(&repo).expect("stats");
    assert_eq!(stats.chunks, 0, "no chunk of a failed snapshot is indexed");
    assert_eq!(
        stats.stored_bytes,
        stats.record_bytes + snapfs::store::pack::PACK_HEADER_LEN * stats.packs,
        "no uncommitted pack bytes: {stats:?}"
    );
    // The disk itself is fine: the next snapshot of it works.
    let record = create_snapshot(&repo, "d", "fine", &CreateOptions::default()).expect("snapshot");
    assert_eq!(
        exported(&repo, &record, dir.path()),
        std::fs::read(&image).expect("image")
    );
}

/// Takes a parent snapshot, changes a few chunks and resizes the disk by
/// `resize` chunks, then snapshots only the changed chunks on the parent
/// and compares with a full re-read.
fn changed_chunks_on_parent_equal_a_full_reread(seed: u64, resize: i64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    let mut rng = Rng::new(seed);
    // Three leaf pages and a bit: page reuse and partial pages both happen.
    let old_chunks = 3 * 1024 + 17;
    let mut bytes = write_image(&image, old_chunks, &mut rng);
    let repo = open(&dir.path().join("store"));
    repo.catalog().add_disk("d", &image).expect("add disk");
    let parent = create_snapshot(&repo, "d", "parent", &CreateOptions::default()).expect("parent");

    let chunks = (old_chunks as i64 + resize) as u64;
    bytes.resize((chunks * CHUNK) as usize, 0);
    // Change a few chunks: new data and zeros; a grown disk's new chunks
    // are changed when they hold data.
    let mut changed: Vec<u64> = (0..40).map(|_| rng.below(chunks)).collect();
    changed.extend((old_chunks..chunks).filter(|c| c % 2 == 0));
    changed.sort_unstable();
    changed.dedup();
    for (i, chunk) in changed.iter().enumerate() {
        let range = (chunk * CHUNK) as usize..((chunk + 1) * CHUNK) as usize;
        if i % 4 == 0 {
            bytes[range].fill(0);
        } else {
            rng.fill(&mut bytes[range]);
        }
    }
    std::fs::write(&image, &bytes).expect("rewrite image");

    let source = ChangedChunks {
        file: File::open(&image).expect("open image"),
        path: image.clone(),
        size: bytes.len() as u64,
        changed: changed.clone(),
        parent: Parent::from(&parent),
    };
    let running = repo.running().start("d").expect("not running");
    let incremental = create_from(
        &repo,
        &running,
        "incremental",
        &source,
        &CreateOptions::default(),
    )
    .expect("incremental snapshot");
    drop(running);
    let full = create_snapshot(&repo, "d", "full", &CreateOptions::default()).expect("full");

    assert_eq!(exported(&repo, &incremental, dir.path()), bytes);
    assert_eq!(incremental.map, full.map, "the same map, page for page");
    assert_eq!(incremental.nonzero_bytes, full.nonzero_bytes);
    // Only changed chunks and the pages above them were written: at most
    // one chunk each plus a leaf page per changed page and the root.
    let bound = changed.len() as u64 * (CHUNK + 64) + 8 * (32 * 1024 + 64);
    assert!(
        incremental.added_bytes <= bound,
        "added {} bytes for {} changed chunks",
        incremental.added_bytes,
        changed.len()
    );
    assert_eq!(
        full.added_bytes, 0,
        "the full re-read finds everything stored"
    );
}

#[test]
fn a_snapshot_of_changed_chunks_on_its_parent_equals_a_full_reread() {
    changed_chunks_on_parent_equal_a_full_reread(11, 0);
}

#[test]
fn a_grown_disk_snapshotted_on_its_parent_equals_a_full_reread() {
    changed_chunks_on_parent_equal_a_full_reread(12, 1100);
}

#[test]
fn a_shrunk_disk_snapshotted_on_its_parent_equals_a_full_reread() {
    changed_chunks_on_parent_equal_a_full_reread(13, -1030);
}
