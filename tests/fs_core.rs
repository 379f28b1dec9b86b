//! The filesystem core without the kernel: `SnapFs` driven through its
//! methods as the FUSE adapter would (lookup, readdir, getattr, open,
//! read, write, lseek, unlink, rename), on a real store in a temporary
//! folder. Needs neither root nor /dev/fuse.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;

use common::{write_random_file, Rng};
use snapfs::fs::status::{Outcome, StatusReport};
use snapfs::fs::{FileKind, FsError, MountOptions, SnapFs, ROOT_INO};
use snapfs::{Repository, StoreConfig};
use tempfile::TempDir;

const CHUNK: u64 = 64 << 10;

/// A store with disk `d`: random data, one all-zero chunk-aligned stretch
/// in the middle, and a tail that ends inside a chunk.
struct Fixture {
    _tmp: TempDir,
    source: PathBuf,
    fs: SnapFs,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let source = tmp.path().join("d.img");
        write_random_file(&source, 16 * CHUNK + 777, &mut Rng::new(7));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&source)
            .expect("open source");
        std::os::unix::fs::FileExt::write_all_at(&file, &vec![0u8; 4 * CHUNK as usize], 4 * CHUNK)
            .expect("zero a stretch");
        let config = StoreConfig {
            chunk_size: CHUNK as u32,
            ..StoreConfig::default()
        };
        let repo = Repository::init(&tmp.path().join("store"), config).expect("init store");
        repo.catalog().add_disk("d", &source).expect("add disk");
        let options = MountOptions {
            snapshot_threads: 1,
            prefetch_threads: 1,
            ..MountOptions::default()
        };
        let fs = SnapFs::new(Arc::new(repo), Box::new(|_| Vec::new()), options);
        Fixture {
            _tmp: tmp,
            source,
            fs,
        }
    }

    fn ino(&self, parent: u64, name: &str) -> Result<u64, i32> {
        self.fs
            .lookup(parent, OsStr::new(name))
            .map(|a| a.ino)
            .map_err(|e| e.errno)
    }

    fn disk(&self) -> u64 {
        self.ino(ROOT_INO, "d").expect("lookup d")
    }

    /// One write of `bytes` to `.create`; Err holds the errno.
    fn write_create(&self, bytes: &[u8]) -> Result<(), i32> {
        let create = self.ino(self.disk(), ".create")?;
        let opened = self.fs.open(create, libc::O_WRONLY).map_err(errno)?;
        let result = self.fs.write(opened.fh, 0, bytes).map_err(errno);
        self.fs.release(opened.fh);
        assert_eq!(result?, bytes.len() as u32);
        Ok(())
    }

    /// The whole image of snapshot `name`, read 100 KiB at a time.
    fn read_image(&self, name: &str) -> Vec<u8> {
        let ino = self.ino(self.disk(), name).expect("lookup snapshot");
        let opened = self.fs.open(ino, libc::O_RDONLY).expect("open snapshot");
        let bytes = read_all(&self.fs, opened.fh);
        self.fs.release(opened.fh);
        bytes
    }

    fn status(&self) -> StatusReport {
        let value = self
            .fs
            .getxattr(self.disk(), OsStr::new("user.snapfs.status"))
            .expect("user.snapfs.status");
        serde_json::from_slice(&value).expect("status is JSON")
    }
}

fn errno(e: FsError) -> i32 {
    e.errno
}

fn read_all(fs: &SnapFs, fh: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    loop {
        let data = fs
            .read(fh, bytes.len() as u64, 100 << 10)
            .unwrap_or_else(|e| panic!("read at {}: {e}", bytes.len()));
        if data.as_slice().is_empty() {
            return bytes;
        }
        bytes.extend_from_slice(data.as_slice());
    }
}

fn names(fs: &SnapFs, ino: u64) -> Vec<String> {
    fs.readdir(ino)
        .expect("readdir")
        .into_iter()
        .map(|(_, _, name)| name)
        .collect()
}

#[test]
fn create_read_seek_rename_and_unlink_through_the_core() {
    let fx = Fixture::new();
    let source = std::fs::read(&fx.source).expect("read source");
    assert_eq!(names(&fx.fs, ROOT_INO), [".", "..", ".control", "d"]);
    let disk = fx.disk();
    assert_eq!(
        fx.fs.getattr(disk).expect("getattr").kind,
        FileKind::Directory
    );
    assert_eq!(
        names(&fx.fs, disk),
        [".", "..", ".create", ".policy", ".status"]
    );

    fx.write_create(b"s1\n").expect("snapshot s1");
    assert_eq!(names(&fx.fs, disk)[5..], ["s1"]);
    let s1 = fx.ino(disk, "s1").expect("lookup s1");
    let attr = fx.fs.getattr(s1).expect("getattr s1");
    assert_eq!(attr.size, source.len() as u64);
    assert_eq!(attr.perm, 0o444);
    assert_eq!(attr.blocks, (source.len() as u64 - 4 * CHUNK).div_ceil(512));
    assert!(
        fx.read_image("s1") == source,
        "the image differs from its source"
    );
    let report = fx.status();
    assert!(report.running.is_none());
    let last = report.last_about("s1").expect("an outcome for s1");
    assert_eq!(last.outcome, Outcome::Accomplished);

    // SEEK_DATA / SEEK_HOLE see the zero stretch.
    let opened = fx.fs.open(s1, libc::O_RDONLY).expect("open s1");
    let seek = |offset: u64, whence| fx.fs.lseek(opened.fh, offset, whence).map_err(errno);
    assert_eq!(seek(0, libc::SEEK_DATA), Ok(0));
    assert_eq!(seek(0, libc::SEEK_HOLE), Ok(4 * CHUNK));
    assert_eq!(seek(4 * CHUNK, libc::SEEK_DATA), Ok(8 * CHUNK));
    assert_eq!(seek(source.len() as u64, libc::SEEK_DATA), Err(libc::ENXIO));

    // Renamed inside its folder: same inode, new name; bad names refused.
    let rename = |from: &str, to: &str| {
        fx.fs
            .rename(disk, OsStr::new(from), disk, OsStr::new(to))
            .map_err(errno)
    };
    assert_eq!(rename("s1", "renamed"), Ok(()));
    assert_eq!(fx.ino(disk, "renamed"), Ok(s1));
    assert_eq!(fx.ino(disk, "s1"), Err(libc::ENOENT));
    assert_eq!(rename("renamed", "bad/name"), Err(libc::EINVAL));
    assert_eq!(
        fx.fs
            .rename(disk, OsStr::new("renamed"), ROOT_INO, OsStr::new("x"))
            .map_err(errno),
        Err(libc::EXDEV)
    );

    // Removed while open: the open handle still reads every byte.
    assert_eq!(
        fx.fs.unlink(disk, OsStr::new("renamed")).map_err(errno),
        Ok(())
    );
    assert_eq!(fx.ino(disk, "renamed"), Err(libc::ENOENT));
    assert!(
        read_all(&fx.fs, opened.fh) == source,
        "the removed image changed"
    );
    fx.fs.release(opened.fh);
    assert_eq!(
        fx.fs.unlink(disk, OsStr::new(".status")).map_err(errno),
        Err(libc::EPERM)
    );
}

#[test]
fn snapshots_are_read_only_and_bad_or_taken_names_are_refused() {
    let fx = Fixture::new();
    fx.write_create(b"base").expect("snapshot base");
    let base = fx.ino(fx.disk(), "base").expect("lookup base");
    for flags in [libc::O_WRONLY, libc::O_RDWR] {
        assert_eq!(
            fx.fs.open(base, flags).map(|_| ()).map_err(errno),
            Err(libc::EROFS)
        );
    }
    assert_eq!(
        fx.fs
            .setattr(base, Some(0), false)
            .map(|_| ())
            .map_err(errno),
        Err(libc::EROFS)
    );
    for bad in [
        &b"bad/name\n"[..],
        b".hidden",
        b"auto-mine",
        b"",
        b"\xff\xfe",
    ] {
        assert_eq!(fx.write_create(bad), Err(libc::EINVAL), "{bad:?}");
    }
    assert_eq!(fx.write_create(b"base\n"), Err(libc::EEXIST));
    let report = fx.status();
    // A taken name passes the name check and fails in the snapshot.
    let taken = report.last_about("base").expect("a line about base");
    assert_eq!(taken.outcome, Outcome::Failed);
    assert!(taken.line.contains("failed base: "), "{}", taken.line);
    assert_eq!(names(&fx.fs, fx.disk())[5..], ["base"]);
}

/// The disk is marked running by someone else (a rollback, a CLI snapshot
/// through `.control`): `.create` answers EBUSY and says why in `.status`.
#[test]
fn create_while_the_disk_is_running_is_ebusy_with_a_status_line() {
    let fx = Fixture::new();
    let running = fx.fs.repo().running().start("d").expect("mark d running");
    assert_eq!(fx.write_create(b"second\n"), Err(libc::EBUSY));
    let status = fx.ino(fx.disk(), ".status").expect("lookup .status");
    let opened = fx.fs.open(status, libc::O_RDONLY).expect("open .status");
    let text = String::from_utf8(read_all(&fx.fs, opened.fh)).expect("UTF-8");
    fx.fs.release(opened.fh);
    assert!(
        text.contains("refused \"second\": a snapshot of disk d is already running"),
        "{text}"
    );
    let report = fx.status();
    let refused = report.last_about("second").expect("a line about second");
    assert_eq!(refused.outcome, Outcome::Refused);
    assert_eq!(
        refused.why.as_deref(),
        Some("a snapshot of disk d is already running")
    );
    drop(running);
    fx.write_create(b"second\n")
        .expect("snapshot once the disk is free");
    assert_eq!(names(&fx.fs, fx.disk())[5..], ["second"]);
}
