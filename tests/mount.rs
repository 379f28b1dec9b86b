//! The mount as a user meets it: real `snapfs mount` processes, real ext4
//! disks, and the tools people point at snapshot files (`cmp`, `mount -o
//! loop,ro`, `qemu-img`, `cp --sparse`, `getfattr`, `mv`, `rm`). Every check
//! compares bytes with the source as it was when the snapshot was taken.
//!
//! These tests need root and /dev/fuse: without them they skip with a
//! printed reason, unless SNAPFS_REQUIRE_FUSE=1 (CI) makes them fail.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use common::mount::{is_mounted, loop_mount_ro, Mount};
use common::{
    assert_bytes_equal_file, assert_same_file, change_files, copy_real_files, copy_sparse, fails,
    files_under, find_tool, need_fuse, ok, run, run_expect, run_timeout, skip, snapfs,
    write_random_file, Ext4Image, Rng,
};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

// ------------------------------------------------------------- helpers

/// A temporary folder with a store in it.
struct Fixture {
    tmp: TempDir,
    store: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("snapfs-mount-test-")
            .tempdir()
            .expect("temp dir");
        let store = tmp.path().join("store");
        Fixture { tmp, store }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A source file of `len` random bytes, registered as `disk`.
    fn random_disk(&self, disk: &str, len: u64, seed: u64) -> PathBuf {
        let source = self.path(&format!("{}.img", disk.replace('/', "-")));
        write_random_file(&source, len, &mut Rng::new(seed));
        self.add_disk(disk, &source);
        source
    }

    fn add_disk(&self, disk: &str, source: &Path) {
        ok(snapfs(&self.store).args(["disk", "add", disk]).arg(source));
    }
}

/// Writes `bytes` to `DISK/.create` in one write(2) on a file opened
/// without O_TRUNC; Err holds the errno.
fn write_create(disk: &Path, bytes: &[u8]) -> Result<(), i32> {
    let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(-1);
    let mut file = OpenOptions::new()
        .write(true)
        .open(disk.join(".create"))
        .map_err(errno)?;
    match file.write(bytes).map_err(errno)? {
        n if n == bytes.len() => Ok(()),
        // Never seen; a distinct value so that a test names it.
        _ => Err(-2),
    }
}

/// Takes snapshot `name` through `.create`, panicking on failure.
fn create(disk: &Path, name: &str) {
    if let Err(errno) = write_create(disk, format!("{name}\n").as_bytes()) {
        panic!(
            "snapshot {name} in {} failed with errno {errno}; .status:\n{}",
            disk.display(),
            status(disk)
        );
    }
}

/// The snapshot files of a disk folder, sorted.
fn snapshots_in(disk: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(disk)
        .unwrap_or_else(|e| panic!("list {}: {e}", disk.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

fn status(disk: &Path) -> String {
    fs::read_to_string(disk.join(".status")).unwrap_or_else(|e| format!("(unreadable: {e})"))
}

fn errno_of<T>(result: std::io::Result<T>) -> Option<i32> {
    result.err().and_then(|e| e.raw_os_error())
}

/// Polls `.status` until its running line names `name` (with at least
/// `min_percent` done); panics after `timeout`.
fn wait_running(disk: &Path, name: &str, min_percent: f64, timeout: Duration) {
    let prefix = format!("running: {name} ");
    let started = Instant::now();
    loop {
        let text = status(disk);
        let percent = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split('%').next())
            .and_then(|p| p.trim().parse::<f64>().ok());
        if percent.is_some_and(|p| p >= min_percent) {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "snapshot {name} never showed as running in {}:\n{text}",
            disk.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Asserts that two folders hold the same regular files, byte for byte.
fn assert_same_tree(actual: &Path, expected: &Path) {
    let relative = |root: &Path| -> Vec<PathBuf> {
        files_under(root)
            .into_iter()
            .map(|p| p.strip_prefix(root).expect("under root").to_path_buf())
            .collect()
    };
    let (a, e) = (relative(actual), relative(expected));
    assert!(!e.is_empty(), "no files under {}", expected.display());
    assert_eq!(
        a,
        e,
        "{} and {} hold different file names",
        actual.display(),
        expected.display()
    );
    for path in &e {
        assert_same_file(&actual.join(path), &expected.join(path));
    }
}

/// Drops the kernel's cached pages of a file, so reads reach the mount.
fn drop_page_cache(file: &File) {
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

fn lseek(file: &File, offset: u64, whence: i32) -> Result<u64, i32> {
    let pos = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if pos < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(pos as u64)
    }
}

fn getxattr(path: &Path, name: &str) -> Option<String> {
    let (path, name) = (c_path(path), CString::new(name).expect("xattr name"));
    let mut buf = vec![0u8; 4096];
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(String::from_utf8(buf).expect("UTF-8 xattr"))
}

/// `snapshot list --json` rows of one disk.
fn snapshot_rows(store: &Path, disk: &str) -> Vec<serde_json::Value> {
    let out = ok(snapfs(store).args(["snapshot", "list", disk, "--json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad list JSON {e}: {out}"))
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {e}: {text}"))
}

/// `stats --json` without the size of sled's files, which any open may
/// change.
fn stats_without_db(store: &Path) -> serde_json::Value {
    let mut stats = json(&ok(snapfs(store).args(["stats", "--json"])));
    if let Some(map) = stats.as_object_mut() {
        map.remove("db_bytes");
    }
    stats
}

// --------------------------------------------------------------- tests

/// The whole journey on an ext4 disk holding real files: snapshot, compare
/// the image, restore files from a read-only loop mount of it, convert it
/// with qemu-img; change the disk, snapshot again, and the first snapshot
/// still holds the old bytes and files.
/// The mount raises its own read-ahead (sysfs) to 16 MiB, so that the
/// kernel keeps several requests in flight for a sequential reader.
#[test]
fn the_mount_sets_its_read_ahead() {
    if !need_fuse("the_mount_sets_its_read_ahead") {
        return;
    }
    let fx = Fixture::new();
    ok(snapfs(&fx.store).arg("init"));
    let mount = Mount::start(&fx.store);
    let dev = fs::metadata(mount.path()).expect("stat the mount").dev();
    let sysfs = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let kb = fs::read_to_string(&sysfs).expect("read the mount's read-ahead");
    assert_eq!(kb.trim(), "16384", "{sysfs}");
    mount.unmount();
}

/// A store of each compression setting reads its snapshot back through
/// the mount and through export byte for byte, and compresses (or not)
/// as it says.
#[test]
fn every_compression_setting_reads_back_through_mount_and_export() {
    let test = "every_compression_setting_reads_back_through_mount_and_export";
    if !need_fuse(test) {
        return;
    }
    let fx = Fixture::new();
    // Text-like chunks (compressible), random ones (not), and a hole.
    let source = fx.path("mixed.img");
    let text = b"snapfs keeps every chunk once\n";
    let mut bytes: Vec<u8> = (0..3 * MIB)
        .map(|i| text[(i % 30) as usize] ^ ((i / 4096) as u8 & 7))
        .collect();
    bytes.extend(Rng::new(31).bytes(2 * MIB as usize));
    bytes.extend(vec![0u8; MIB as usize]);
    fs::write(&source, &bytes).expect("write source");
    // A local store's default is lz4; --level alone means zstd.
    let said = ok(snapfs(&fx.path("store-default")).arg("init"));
    assert!(said.contains("compression lz4"), "{said}");
    let said = ok(snapfs(&fx.path("store-level")).args(["init", "--level", "3"]));
    assert!(said.contains("compression zstd"), "{said}");
    let said =
        fails(snapfs(&fx.path("store-bad")).args(["init", "--compression", "lz4", "--level", "3"]));
    assert!(said.contains("--level is zstd's"), "{said}");
    for compression in ["zstd", "lz4", "none"] {
        let store = fx.path(&format!("store-{compression}"));
        ok(snapfs(&store).args(["init", "--compression", compression]));
        ok(snapfs(&store).args(["disk", "add", "d"]).arg(&source));
        ok(snapfs(&store).args(["snapshot", "create", "d", "s1"]));
        let stats = common::stats_json(&store);
        let ratio = stats["compression_ratio"]
            .as_f64()
            .expect("compression ratio");
        if compression == "none" {
            assert!(ratio <= 1.0, "{compression}: ratio {ratio}");
        } else {
            assert!(ratio > 1.4, "{compression}: ratio {ratio}");
        }
        let mount = Mount::start(&store);
        let mut image = File::open(mount.disk("d").join("s1")).expect("open snapshot");
        let mut expected = File::open(&source).expect("open source");
        common::assert_same_reader(&mut image, &mut expected, compression);
        drop(image);
        mount.unmount();
        let out = fx.path(&format!("export-{compression}.img"));
        ok(snapfs(&store).args(["export", "d", "s1", "-o"]).arg(&out));
        assert_same_file(&out, &source);
        ok(snapfs(&store).args(["verify"]));
    }
}

#[test]
fn ext4_disk_snapshots_restore_files_and_convert_with_qemu_img() {
    let test = "ext4_disk_snapshots_restore_files_and_convert_with_qemu_img";
    if !need_fuse(test) {
        return;
    }
    if find_tool("qemu-img").is_none() {
        skip(test, "qemu-img not found");
        return;
    }
    let fx = Fixture::new();
    let files_v1 = fx.path("files-v1");
    copy_real_files(&files_v1, 24 * MIB);
    let image = Ext4Image::create(&fx.path("vm1.img"), 128 * MIB);
    {
        let disk = image.mount();
        let status = Command::new("cp")
            .arg("-a")
            .arg(files_v1.join("."))
            .arg(disk.path())
            .status()
            .expect("cp -a");
        assert!(status.success(), "copying files into the ext4 disk failed");
        disk.unmount();
    }
    fx.add_disk("vm1/system", &image.path);
    let mount = Mount::start(&fx.store);
    assert_eq!(snapshots_in(mount.path()), ["vm1"]);
    assert_eq!(snapshots_in(&mount.disk("vm1")), ["system"]);
    let disk = mount.disk("vm1/system");
    assert!(snapshots_in(&disk).is_empty());

    // One write(2) of the name, as a program would do it.
    fs::write(disk.join(".create"), "first\n").expect("snapshot first");
    assert_eq!(snapshots_in(&disk), ["first"]);
    let first = disk.join("first");
    let as_of_first = fx.path("first.raw");
    copy_sparse(&image.path, &as_of_first);
    let cmp = run(Command::new("cmp").arg(&first).arg(&image.path));
    assert_eq!(cmp.code, Some(0), "cmp snapshot source: {}", cmp.stdout);
    {
        let files = loop_mount_ro(&first);
        assert_same_tree(files.path(), &files_v1);
    }
    let qcow2 = fx.path("first.qcow2");
    ok(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&first)
        .arg(&qcow2));
    let compared = ok(Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&qcow2)
        .arg(&as_of_first));
    assert!(
        compared.contains("identical"),
        "qemu-img compare: {compared}"
    );

    // The disk changes the way a running system changes it.
    {
        let files = image.mount();
        change_files(files.path(), 7, 6 * MIB);
        files.unmount();
    }
    // The second one through a real shell redirection.
    let shell = run(Command::new("sh")
        .arg("-c")
        .arg("echo second > .create")
        .current_dir(&disk));
    assert_eq!(
        shell.code,
        Some(0),
        "echo second > .create: {}",
        shell.stderr
    );
    assert_eq!(snapshots_in(&disk), ["first", "second"]);
    assert_same_file(&disk.join("second"), &image.path);
    assert_same_file(&first, &as_of_first);
    {
        let now = loop_mount_ro(&image.path);
        let second = loop_mount_ro(&disk.join("second"));
        assert_same_tree(second.path(), now.path());
        let old = loop_mount_ro(&first);
        assert_same_tree(old.path(), &files_v1);
    }
    mount.unmount();
}

/// Every bad name written to `.create` fails the write with EINVAL, a
/// taken one with EEXIST; nothing is created, and `.status` says why.
#[test]
fn bad_or_taken_names_fail_the_write_and_create_nothing() {
    if !need_fuse("bad_or_taken_names_fail_the_write_and_create_nothing") {
        return;
    }
    let fx = Fixture::new();
    let source = fx.random_disk("d", 2 * MIB, 1);
    let mount = Mount::start(&fx.store);
    let disk = mount.disk("d");
    create(&disk, "taken");

    let long = "x".repeat(129);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("an empty line", b"\n".to_vec()),
        ("a leading dot", b".hidden\n".to_vec()),
        ("a leading dash", b"-rf\n".to_vec()),
        ("a slash", b"a/b\n".to_vec()),
        ("..", b"..\n".to_vec()),
        (".", b".\n".to_vec()),
        ("a space", b"two words\n".to_vec()),
        ("129 characters", format!("{long}\n").into_bytes()),
        ("the auto prefix", b"auto-nightly\n".to_vec()),
        ("non-UTF-8 bytes", b"caf\xe9\n".to_vec()),
        ("a NUL byte", b"nul\0byte\n".to_vec()),
        ("two lines", b"one\ntwo\n".to_vec()),
    ];
    for (what, bytes) in &bad {
        let before = status(&disk);
        assert_eq!(
            write_create(&disk, bytes),
            Err(libc::EINVAL),
            "a name with {what} must fail with EINVAL"
        );
        assert_eq!(snapshots_in(&disk), ["taken"], "after a name with {what}");
        let after = status(&disk);
        assert_eq!(
            after.lines().count(),
            before.lines().count() + 1,
            "a name with {what} must add one line to .status:\n{after}"
        );
        let line = after.lines().last().unwrap_or_default();
        assert!(
            line.contains("refused") && line.contains("invalid snapshot name")
                || line.contains("not UTF-8"),
            "a name with {what}: .status says {line:?}"
        );
    }
    assert_eq!(write_create(&disk, b"taken\n"), Err(libc::EEXIST));
    let line = status(&disk).lines().last().unwrap_or_default().to_string();
    assert!(
        line.contains("taken") && line.contains("already has a snapshot named taken"),
        ".status after a taken name: {line:?}"
    );
    // A shell sees the failure too.
    let shell = run(Command::new("sh")
        .arg("-c")
        .arg("echo 'bad name' > .create")
        .current_dir(&disk));
    assert_ne!(shell.code, Some(0), "echo 'bad name' > .create succeeded");

    assert_eq!(snapshots_in(&disk), ["taken"]);
    let listed: Vec<String> = snapshot_rows(&fx.store, "d")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, ["taken"]);
    // The longest allowed name works.
    let longest = "x".repeat(128);
    create(&disk, &longest);
    assert_same_file(&disk.join(&longest), &source);
    mount.unmount();
}

/// Snapshot files refuse every change with the errno the code promises:
/// EROFS for opening to write, truncate, chmod, chown and touch.
#[test]
fn snapshot_files_refuse_writes_truncate_chmod_and_touch() {
    if !need_fuse("snapshot_files_refuse_writes_truncate_chmod_and_touch") {
        return;
    }
    let fx = Fixture::new();
    let source = fx.random_disk("d", 2 * MIB, 2);
    let mount = Mount::start(&fx.store);
    let disk = mount.disk("d");
    create(&disk, "s");
    let snap = disk.join("s");
    let before = fs::metadata(&snap).expect("stat");

    let open = |o: &mut OpenOptions| errno_of(o.open(&snap));
    assert_eq!(open(OpenOptions::new().write(true)), Some(libc::EROFS));
    assert_eq!(
        open(OpenOptions::new().read(true).write(true)),
        Some(libc::EROFS)
    );
    assert_eq!(open(OpenOptions::new().append(true)), Some(libc::EROFS));
    assert_eq!(
        open(OpenOptions::new().write(true).truncate(true)),
        Some(libc::EROFS)
    );
    let path = c_path(&snap);
    let last_errno = || std::io::Error::last_os_error().raw_os_error();
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 0) }, -1);
    assert_eq!(last_errno(), Some(libc::EROFS), "truncate");
    assert_eq!(
        errno_of(fs::set_permissions(
            &snap,
            fs::Permissions::from_mode(0o666)
        )),
        Some(libc::EROFS),
        "chmod"
    );
    assert_eq!(unsafe { libc::chown(path.as_ptr(), 1, 1) }, -1);
    assert_eq!(last_errno(), Some(libc::EROFS), "chown");
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0) },
        -1
    );
    assert_eq!(last_errno(), Some(libc::EROFS), "touch (utimensat)");
    let touch = run(Command::new("touch").arg(&snap));
    assert_ne!(touch.code, Some(0), "touch succeeded on a snapshot");
    let name = CString::new("user.mine").expect("name");
    let set = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
    assert_eq!(set, -1);
    assert_eq!(last_errno(), Some(libc::EPERM), "setxattr");
    // The control files are not writable snapshots either.
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(disk.join(".status"))),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(fs::remove_file(disk.join(".create"))),
        Some(libc::EPERM)
    );
    // Files and folders come only from disks and snapshots.
    assert_eq!(errno_of(File::create(disk.join("new"))), Some(libc::EPERM));
    assert_eq!(
        errno_of(fs::create_dir(disk.join("dir"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(fs::create_dir(mount.path().join("disk"))),
        Some(libc::EPERM)
    );
    assert_eq!(errno_of(fs::remove_dir(&disk)), Some(libc::EPERM));
    assert_eq!(snapshots_in(&disk), ["s"]);

    let after = fs::metadata(&snap).expect("stat");
    assert_eq!(after.mode(), before.mode());
    assert_eq!(after.mtime(), before.mtime());
    assert_eq!(after.uid(), before.uid());
    assert_same_file(&snap, &source);
    mount.unmount();
}

/// `rm` of a snapshot while a reader keeps it open: the name goes at once,
/// the open file still reads every byte, even after `snapfs gc`, and gc
/// reclaims the chunks once the file is closed.
#[test]
fn removed_snapshot_stays_readable_while_open_even_through_gc() {
    if !need_fuse("removed_snapshot_stays_readable_while_open_even_through_gc") {
        return;
    }
    let fx = Fixture::new();
    // Larger than the mount's smallest chunk cache, so that reads after gc
    // come from the packs.
    let len = 16 * MIB;
    let source = fx.random_disk("d", len, 3);
    let old_bytes = fs::read(&source).expect("read source");
    let mount = Mount::start_with(&fx.store, &["--cache-size", "1M"]);
    let disk = mount.disk("d");
    create(&disk, "old");
    write_random_file(&source, len, &mut Rng::new(4));
    create(&disk, "new");

    let reader = File::open(disk.join("old")).expect("open old");
    let mut head = vec![0u8; MIB as usize];
    reader.read_exact_at(&mut head, 0).expect("read");
    assert_eq!(head, old_bytes[..MIB as usize]);

    fs::remove_file(disk.join("old")).expect("rm old");
    assert_eq!(snapshots_in(&disk), ["new"]);
    assert!(!disk.join("old").exists());
    let listed: Vec<serde_json::Value> = snapshot_rows(&fx.store, "d");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "new");
    assert_eq!(reader.metadata().expect("fstat").len(), len);

    let report = json(&ok(snapfs(&fx.store).args([
        "gc",
        "--min-dead",
        "0",
        "--json",
    ])));
    assert_eq!(
        report["removed_chunks"], 0,
        "gc removed chunks of an open snapshot: {report}"
    );
    drop_page_cache(&reader);
    let mut all = vec![0u8; len as usize];
    reader.read_exact_at(&mut all, 0).expect("read after gc");
    assert!(
        all == old_bytes,
        "the open snapshot changed after rm and gc"
    );
    drop(reader);

    // Once closed (the kernel releases it a moment later), gc reclaims it.
    let started = Instant::now();
    let chunks = len / (256 << 10);
    loop {
        let report = json(&ok(snapfs(&fx.store).args([
            "gc",
            "--min-dead",
            "0",
            "--json",
        ])));
        if report["removed_chunks"].as_u64().unwrap_or(0) >= chunks {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gc never reclaimed the closed snapshot: {report}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(snapfs(&fx.store).arg("verify"));
    assert_same_file(&disk.join("new"), &source);
    mount.unmount();
}

/// `mv` renames a snapshot inside its disk folder (same inode, same bytes);
/// across folders it fails with EXDEV and the snapshot stays.
#[test]
fn mv_renames_inside_a_disk_folder_only() {
    if !need_fuse("mv_renames_inside_a_disk_folder_only") {
        return;
    }
    let fx = Fixture::new();
    let source = fx.random_disk("g/d1", MIB, 5);
    fx.random_disk("d2", MIB, 6);
    let mount = Mount::start(&fx.store);
    let (d1, d2) = (mount.disk("g/d1"), mount.disk("d2"));
    create(&d1, "a");
    create(&d1, "other");
    create(&d2, "x");
    let ino = fs::metadata(d1.join("a")).expect("stat a").ino();

    fs::rename(d1.join("a"), d1.join("b")).expect("rename a b");
    assert_eq!(snapshots_in(&d1), ["b", "other"]);
    assert_eq!(fs::metadata(d1.join("b")).expect("stat b").ino(), ino);
    assert_same_file(&d1.join("b"), &source);
    let names: Vec<serde_json::Value> = snapshot_rows(&fx.store, "g/d1")
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, ["b", "other"]);

    let mv = run(Command::new("mv").arg(d1.join("b")).arg(d1.join("c")));
    assert_eq!(mv.code, Some(0), "mv b c: {}", mv.stderr);
    assert_eq!(snapshots_in(&d1), ["c", "other"]);

    assert_eq!(
        errno_of(fs::rename(d1.join("c"), d2.join("c"))),
        Some(libc::EXDEV)
    );
    let mv = run(Command::new("mv").arg(d1.join("c")).arg(&d2));
    assert_ne!(mv.code, Some(0), "mv across disks succeeded");
    assert_eq!(
        errno_of(fs::rename(d1.join("c"), d1.join("bad name"))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(fs::rename(d1.join("c"), d1.join("other"))),
        Some(libc::EEXIST)
    );
    assert_eq!(
        errno_of(fs::rename(d1.join(".status"), d1.join("s"))),
        Some(libc::EPERM)
    );
    assert_eq!(snapshots_in(&d1), ["c", "other"]);
    assert_eq!(snapshots_in(&d2), ["x"]);
    assert_same_file(&d1.join("c"), &source);
    mount.unmount();
}

/// A sparse source: `lseek(SEEK_DATA/SEEK_HOLE)` on its snapshot reports
/// a hole exactly where the source had an all-zero chunk (written zeros
/// too), at every chunk start and in the middle of chunks; `stat` tells
/// size, mtime and blocks; the xattrs match `snapshot list`.
#[test]
fn sparse_snapshot_reports_holes_stat_and_xattrs_truthfully() {
    if !need_fuse("sparse_snapshot_reports_holes_stat_and_xattrs_truthfully") {
        return;
    }
    let fx = Fixture::new();
    let chunk = 64u64 << 10;
    ok(snapfs(&fx.store).args(["init", "--chunk-size", "64K"]));
    let chunks = 65u64;
    let len = (chunks - 1) * chunk + 1000;
    let source = fx.path("sparse.img");
    let mut rng = Rng::new(8);
    {
        let file = File::create(&source).expect("create");
        file.set_len(len).expect("set_len");
        for c in [1u64, 2, 3, 7, 20, 21, 22, 23, 40] {
            file.write_all_at(&rng.bytes(chunk as usize), c * chunk)
                .expect("write");
        }
        // Written zeros are still a hole in the snapshot.
        file.write_all_at(&vec![0u8; chunk as usize], 10 * chunk)
            .expect("write zeros");
        // One byte makes a chunk hold data.
        file.write_all_at(&[1], 51 * chunk - 1).expect("write");
        file.write_all_at(&rng.bytes(1000), 64 * chunk)
            .expect("write tail");
    }
    let bytes = fs::read(&source).expect("read");
    let has_data: Vec<bool> = bytes
        .chunks(chunk as usize)
        .map(|c| c.iter().any(|&b| b != 0))
        .collect();
    assert_eq!(has_data.len() as u64, chunks);
    let nonzero: u64 = bytes
        .chunks(chunk as usize)
        .filter(|c| c.iter().any(|&b| b != 0))
        .map(|c| c.len() as u64)
        .sum();
    fx.add_disk("d", &source);

    let mount = Mount::start(&fx.store);
    let disk = mount.disk("d");
    let before = SystemTime::now();
    create(&disk, "s");
    let after = SystemTime::now();
    let snap = disk.join("s");
    let file = File::open(&snap).expect("open");

    let next = |from: u64, data: bool| {
        (from..chunks)
            .find(|&c| has_data[c as usize] == data)
            .map(|c| c * chunk)
    };
    for c in 0..chunks {
        for offset in [c * chunk, c * chunk + 1000] {
            if offset >= len {
                continue;
            }
            let data = next(c, true).map(|at| at.max(offset));
            assert_eq!(
                lseek(&file, offset, libc::SEEK_DATA),
                data.ok_or(libc::ENXIO),
                "SEEK_DATA from {offset}"
            );
            let hole = next(c, false).map_or(len, |at| at.max(offset));
            assert_eq!(
                lseek(&file, offset, libc::SEEK_HOLE),
                Ok(hole),
                "SEEK_HOLE from {offset}"
            );
        }
    }
    for whence in [libc::SEEK_DATA, libc::SEEK_HOLE] {
        assert_eq!(lseek(&file, len, whence), Err(libc::ENXIO));
        assert_eq!(lseek(&file, len + chunk, whence), Err(libc::ENXIO));
    }
    // A sparse-aware copy keeps the bytes and skips the holes.
    let copy = fx.path("copy.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(&snap)
        .arg(&copy));
    assert_same_file(&copy, &source);
    let copied = fs::metadata(&copy).expect("stat copy").blocks() * 512;
    assert!(
        copied <= nonzero + 256 * 1024,
        "cp --sparse copied {copied} bytes of blocks for {nonzero} of data"
    );

    // stat: size, mtime = creation time, blocks = non-zero data.
    let meta = fs::metadata(&snap).expect("stat");
    assert_eq!(meta.len(), len);
    assert_eq!(meta.blocks(), nonzero.div_ceil(512));
    assert_eq!(meta.mode() & 0o7777, 0o444);
    let mtime = meta.modified().expect("mtime");
    let slack = Duration::from_secs(2);
    assert!(
        mtime + slack >= before && mtime <= after + slack,
        "mtime {mtime:?} is not the creation time ({before:?}..{after:?})"
    );
    let ls = ok(Command::new("ls").arg("-l").arg(&disk));
    let line = ls
        .lines()
        .find(|l| l.ends_with(" s"))
        .unwrap_or_else(|| panic!("ls -l shows no snapshot s:\n{ls}"));
    assert!(
        line.starts_with("-r--r--r--") && line.split_whitespace().nth(4) == Some(&len.to_string()),
        "ls -l: {line}"
    );

    // xattrs agree with the catalog.
    let rows = snapshot_rows(&fx.store, "d");
    let row = &rows[0];
    let xattr = |name: &str| {
        getxattr(&snap, &format!("user.snapfs.{name}"))
            .unwrap_or_else(|| panic!("no xattr user.snapfs.{name}"))
    };
    assert_eq!(xattr("id"), row["id"].to_string());
    assert_eq!(
        xattr("created"),
        row["created"].as_str().unwrap_or_default()
    );
    assert_eq!(xattr("state"), "accomplished");
    assert_eq!(
        Path::new(&xattr("source")),
        source.canonicalize().expect("canonical source")
    );
    assert_eq!(xattr("added_bytes"), row["added_bytes"].to_string());
    assert_eq!(xattr("nonzero_bytes"), nonzero.to_string());
    assert_eq!(xattr("size"), len.to_string());
    assert!(getxattr(&snap, "user.snapfs.nonsense").is_none());
    if find_tool("getfattr").is_some() {
        let dump = ok(Command::new("getfattr").arg("-d").arg(&snap));
        for name in ["created", "state", "source", "added_bytes", "id"] {
            assert!(
                dump.contains(&format!("user.snapfs.{name}=")),
                "getfattr -d lacks {name}:\n{dump}"
            );
        }
    }
    drop(file);
    mount.unmount();
}

/// Every CLI command works while the store is mounted, through the mount,
/// and gives what it gives without the mount.
#[test]
fn cli_commands_work_through_the_mount_and_agree_with_the_store() {
    if !need_fuse("cli_commands_work_through_the_mount_and_agree_with_the_store") {
        return;
    }
    let fx = Fixture::new();
    let s = &fx.store;
    let d1 = fx.random_disk("d1", 4 * MIB, 9);
    ok(snapfs(s).args(["snapshot", "create", "d1", "s1"]));
    let unmounted = |args: &[&str]| ok(snapfs(s).args(args));
    let disks = unmounted(&["disk", "list", "--json"]);
    let snapshots = unmounted(&["snapshot", "list", "--json"]);
    let snapshots_text = unmounted(&["snapshot", "list"]);
    let stats = stats_without_db(s);
    let verify = unmounted(&["verify", "--json"]);
    let no_such = fails(snapfs(s).args(["snapshot", "rm", "d1", "nosuch"]));
    let exported = fx.path("exported.raw");
    ok(snapfs(s).args(["export", "d1", "s1", "-o"]).arg(&exported));
    assert_same_file(&exported, &d1);

    let mount = Mount::start(&fx.store);
    let mounted = |args: &[&str]| ok(snapfs(s).args(args));
    assert_eq!(mounted(&["disk", "list", "--json"]), disks);
    assert_eq!(mounted(&["snapshot", "list", "--json"]), snapshots);
    assert_eq!(mounted(&["snapshot", "list"]), snapshots_text);
    assert_eq!(stats_without_db(s), stats);
    assert_eq!(mounted(&["verify", "--json"]), verify);
    assert_eq!(
        fails(snapfs(s).args(["snapshot", "rm", "d1", "nosuch"])),
        no_such
    );
    let through = fx.path("through-mount.raw");
    ok(snapfs(s).args(["export", "d1", "s1", "-o"]).arg(&through));
    assert_same_file(&through, &d1);
    let streamed = run_expect(snapfs(s).args(["export", "d1", "s1", "-o", "-"]), 0);
    assert_bytes_equal_file(&streamed.stdout_bytes, &d1, "export -o - through the mount");

    // A relative source is the caller's, not the mount process's.
    let d2 = fx.path("d2.img");
    write_random_file(&d2, 3 * MIB, &mut Rng::new(10));
    ok(snapfs(s)
        .args(["disk", "add", "d2", "d2.img"])
        .current_dir(fx.tmp.path()));
    let disk2 = mount.disk("d2");
    assert!(disk2.is_dir(), "disk d2 has no folder in the mount");
    let listed = json(&mounted(&["disk", "list", "--json"]));
    let row = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "d2"))
        .unwrap_or_else(|| panic!("d2 not listed: {listed}"));
    assert_eq!(
        row["source"].as_str().map(PathBuf::from),
        Some(d2.canonicalize().expect("canonical d2"))
    );

    let out = mounted(&["snapshot", "create", "d2", "s2"]);
    assert!(out.contains("s2"), "snapshot create printed {out:?}");
    assert_eq!(snapshots_in(&disk2), ["s2"]);
    assert_same_file(&disk2.join("s2"), &d2);
    let taken = fails(snapfs(s).args(["snapshot", "create", "d2", "s2"]));
    assert!(taken.contains("already has a snapshot named s2"), "{taken}");
    fails(snapfs(s).args(["snapshot", "create", "d2", "bad name"]));
    fails(snapfs(s).args(["snapshot", "create", "nodisk", "s"]));
    assert_eq!(snapshots_in(&disk2), ["s2"]);

    mounted(&["snapshot", "rename", "d2", "s2", "s2b"]);
    assert_eq!(snapshots_in(&disk2), ["s2b"]);
    mounted(&["snapshot", "rm", "d1", "s1"]);
    assert!(snapshots_in(&mount.disk("d1")).is_empty());
    let gc = json(&mounted(&["gc", "--min-dead", "0", "--json"]));
    assert!(gc["removed_chunks"].as_u64().unwrap_or(0) > 0, "gc: {gc}");
    mounted(&["verify"]);
    assert!(mounted(&["stats"]).contains("snapshots:"));
    assert_same_file(&disk2.join("s2b"), &d2);

    let disks = mounted(&["disk", "list", "--json"]);
    let snapshots = mounted(&["snapshot", "list", "--json"]);
    let stats = stats_without_db(s);
    let verify = mounted(&["verify", "--json"]);
    mount.unmount();
    assert_eq!(unmounted(&["disk", "list", "--json"]), disks);
    assert_eq!(unmounted(&["snapshot", "list", "--json"]), snapshots);
    assert_eq!(stats_without_db(s), stats);
    assert_eq!(unmounted(&["verify", "--json"]), verify);
}

/// Two disks snapshotted at the same time, from two threads, on a mount
/// with only two threads: both run at once, the rest of the mount keeps
/// answering (listings, reads of another snapshot) while they run, and
/// both images equal their sources.
#[test]
fn two_disks_snapshot_at_once_and_the_mount_keeps_answering() {
    if !need_fuse("two_disks_snapshot_at_once_and_the_mount_keeps_answering") {
        return;
    }
    let fx = Fixture::new();
    let a = fx.random_disk("a", 128 * MIB, 11);
    let b = fx.random_disk("vm/b", 128 * MIB, 12);
    let small = fx.random_disk("small", 2 * MIB, 19);
    let mount = Mount::start_with(&fx.store, &["--threads", "2"]);
    let (disk_a, disk_b) = (mount.disk("a"), mount.disk("vm/b"));
    let disk_small = mount.disk("small");
    create(&disk_small, "s");
    let both_ran = AtomicBool::new(false);
    let finished = AtomicU64::new(0);
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        for disk in [&disk_a, &disk_b] {
            let (barrier, finished) = (&barrier, &finished);
            scope.spawn(move || {
                barrier.wait();
                let result = write_create(disk, b"snap\n");
                finished.fetch_add(1, Ordering::SeqCst);
                assert_eq!(result, Ok(()), "{}: {}", disk.display(), status(disk));
            });
        }
        let started = Instant::now();
        while finished.load(Ordering::SeqCst) < 2 && started.elapsed() < Duration::from_secs(300) {
            let running = |d: &Path| status(d).contains("running: snap ");
            if running(&disk_a) && running(&disk_b) {
                assert_eq!(snapshots_in(mount.path()), ["a", "small", "vm"]);
                assert_same_file(&disk_small.join("s"), &small);
                if running(&disk_a) && running(&disk_b) {
                    both_ran.store(true, Ordering::SeqCst);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    assert!(
        both_ran.load(Ordering::SeqCst),
        "the two snapshots never ran while the mount answered other requests"
    );
    assert_same_file(&disk_a.join("snap"), &a);
    assert_same_file(&disk_b.join("snap"), &b);
    mount.unmount();
}

/// While a snapshot of a disk runs, another write to its `.create` fails
/// at once with EBUSY (and `snapshot create` through the mount fails), the
/// running one finishes, and only it exists.
#[test]
fn second_snapshot_of_a_busy_disk_fails_with_ebusy() {
    if !need_fuse("second_snapshot_of_a_busy_disk_fails_with_ebusy") {
        return;
    }
    let fx = Fixture::new();
    let source = fx.random_disk("big", 512 * MIB, 13);
    let mount = Mount::start(&fx.store);
    let disk = mount.disk("big");
    std::thread::scope(|scope| {
        let first = scope.spawn(|| write_create(&disk, b"first\n"));
        wait_running(&disk, "first", 0.0, Duration::from_secs(60));
        let started = Instant::now();
        assert_eq!(write_create(&disk, b"second\n"), Err(libc::EBUSY));
        let waited = started.elapsed();
        let line = fails(snapfs(&fx.store).args(["snapshot", "create", "big", "third"]));
        assert!(line.contains("already running"), "{line}");
        let text = status(&disk);
        assert!(
            text.contains("running: first "),
            "EBUSY came only after the first snapshot ended ({waited:?}):\n{text}"
        );
        assert!(
            text.contains("refused \"second\": a snapshot of disk big is already running"),
            ".status:\n{text}"
        );
        assert_eq!(first.join().expect("first writer"), Ok(()));
    });
    assert_eq!(snapshots_in(&disk), ["first"]);
    assert!(status(&disk).contains("running: none"));
    assert_same_file(&disk.join("first"), &source);
    mount.unmount();
}

/// Several threads read random ranges of a snapshot, bypassing the page
/// cache, while another snapshot of the same disk is taken: every byte
/// read is the old snapshot's.
#[test]
fn readers_of_a_snapshot_see_its_bytes_while_another_is_taken() {
    if !need_fuse("readers_of_a_snapshot_see_its_bytes_while_another_is_taken") {
        return;
    }
    let fx = Fixture::new();
    let len = 64 * MIB;
    let source = fx.random_disk("d", len, 14);
    let expected = Arc::new(fs::read(&source).expect("read source"));
    let mount = Mount::start(&fx.store);
    let disk = mount.disk("d");
    create(&disk, "base");
    // The disk changes and grows, so that the next snapshot takes a while.
    write_random_file(&source, 256 * MIB, &mut Rng::new(15));

    let taking = AtomicBool::new(true);
    let during = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for seed in 0..3u64 {
            let (expected, taking, during) = (&expected, &taking, &during);
            let path = disk.join("base");
            scope.spawn(move || {
                let file = File::open(&path).expect("open base");
                let mut rng = Rng::new(100 + seed);
                let mut buf = vec![0u8; MIB as usize];
                let mut reads = 0u64;
                while taking.load(Ordering::SeqCst) || reads < 20 {
                    let n = 1 + rng.below(MIB) as usize;
                    let at = rng.below(len - n as u64 + 1);
                    file.read_exact_at(&mut buf[..n], at).expect("read base");
                    let want = &expected[at as usize..at as usize + n];
                    if buf[..n] != *want {
                        panic!("base read wrong bytes at {at}..{}", at + n as u64);
                    }
                    if taking.load(Ordering::SeqCst) {
                        during.fetch_add(1, Ordering::SeqCst);
                    }
                    reads += 1;
                    if reads.is_multiple_of(4) {
                        drop_page_cache(&file);
                    }
                }
            });
        }
        let result = write_create(&disk, b"next\n");
        // Stop the readers before any assertion can unwind.
        taking.store(false, Ordering::SeqCst);
        assert_eq!(result, Ok(()), "snapshot next: {}", status(&disk));
    });
    assert!(
        during.load(Ordering::SeqCst) > 0,
        "no read happened while the snapshot was taken"
    );
    assert_same_file(&disk.join("next"), &source);
    let base = fs::read(disk.join("base")).expect("read base");
    assert!(base == *expected, "base changed");
    mount.unmount();
}

/// kill -9 of the mount in the middle of a snapshot: after `snapfs umount`
/// of the dead mount and a new mount, the store verifies, old snapshots
/// read the same bytes, no half snapshot shows, the packs lost the
/// uncommitted tail, and the next snapshot works.
#[test]
fn mount_killed_during_a_snapshot_leaves_the_store_intact() {
    if !need_fuse("mount_killed_during_a_snapshot_leaves_the_store_intact") {
        return;
    }
    let fx = Fixture::new();
    let small = fx.random_disk("small", 8 * MIB, 16);
    let big = fx.random_disk("big", 512 * MIB, 17);
    let mut mount = Mount::start(&fx.store);
    let (disk_small, disk_big) = (mount.disk("small"), mount.disk("big"));
    create(&disk_small, "old");
    let packs_bytes = || -> u64 {
        fs::read_dir(fx.store.join("packs"))
            .expect("packs")
            .map(|e| e.expect("entry").metadata().expect("stat").len())
            .sum()
    };
    let committed = packs_bytes();

    let doomed = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_create(&disk_big, b"doomed\n"));
        wait_running(&disk_big, "doomed", 10.0, Duration::from_secs(60));
        let in_flight = packs_bytes();
        assert!(in_flight > committed, "the snapshot wrote no pack data yet");
        mount.kill9();
        (writer.join().expect("writer"), in_flight)
    });
    let (doomed, in_flight) = doomed;
    assert!(doomed.is_err(), "the killed snapshot reported success");
    // The user's way out of a dead mount.
    ok(snapfs(&fx.store).arg("umount").arg(mount.path()));
    mount.remount();

    assert!(snapshots_in(&disk_big).is_empty());
    assert_eq!(snapshots_in(&disk_small), ["old"]);
    let listed: Vec<String> = json(&ok(snapfs(&fx.store).args(["snapshot", "list", "--json"])))
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["disk"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(listed, ["small/old"]);
    ok(snapfs(&fx.store).arg("verify"));
    // The pack data nobody committed is gone. (A snapshot commits each
    // full 128 MiB pack on the way; had one filled before the kill, its
    // chunks would stay until gc.)
    if in_flight < committed + 96 * MIB {
        assert_eq!(packs_bytes(), committed, "uncommitted pack data stayed");
    }
    ok(snapfs(&fx.store).args(["gc", "--min-dead", "0"]));
    assert_eq!(
        packs_bytes(),
        committed,
        "the killed snapshot's pack data stayed"
    );
    ok(snapfs(&fx.store).arg("verify"));
    assert_same_file(&disk_small.join("old"), &small);

    create(&disk_big, "after");
    assert_same_file(&disk_big.join("after"), &big);
    ok(snapfs(&fx.store).arg("verify"));
    mount.unmount();
}

/// `snapfs mount --daemon` returns only once the mount serves, and
/// `snapfs umount` ends the daemon.
#[test]
fn daemon_mount_serves_when_it_returns_and_umount_ends_it() {
    if !need_fuse("daemon_mount_serves_when_it_returns_and_umount_ends_it") {
        return;
    }
    let fx = Fixture::new();
    let source = fx.random_disk("d", MIB, 18);
    let (mount, ran) = Mount::daemon(&fx.store);
    assert_eq!(ran.code, Some(0), "mount --daemon: {}", ran.stderr);
    // No waiting: it serves already.
    assert!(
        fs::symlink_metadata(mount.path().join(".control")).is_ok(),
        "mount --daemon returned before the mount served"
    );
    let pid = mount
        .pid()
        .unwrap_or_else(|| panic!("no pid in {:?}", ran.stdout));
    assert!(mount.disk("d").is_dir());
    create(&mount.disk("d"), "s");
    assert_same_file(&mount.disk("d").join("s"), &source);
    let again = fx.path("again");
    fs::create_dir(&again).expect("mkdir");
    let line = fails(snapfs(&fx.store).arg("mount").arg(&again));
    assert!(line.contains("already mounted"), "{line}");

    let mnt = mount.path().to_path_buf();
    mount.unmount();
    assert!(common::mount::wait_pid_gone(pid, Duration::from_secs(30)));
    assert!(!mnt.join(".control").exists());
    let rows = snapshot_rows(&fx.store, "d");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "s");
}

/// SIGTERM while a snapshot runs and a reader holds a snapshot open: the
/// snapshot is cancelled and leaves nothing, the mount leaves the
/// namespace at once (no dead mount behind), the open file keeps reading
/// the right bytes, and the process ends cleanly once it is closed.
#[test]
fn sigterm_cancels_the_running_snapshot_and_open_files_keep_working() {
    if !need_fuse("sigterm_cancels_the_running_snapshot_and_open_files_keep_working") {
        return;
    }
    let fx = Fixture::new();
    let small = fx.random_disk("small", 8 * MIB, 20);
    fx.random_disk("big", 512 * MIB, 21);
    let mut mount = Mount::start(&fx.store);
    let (disk_small, disk_big) = (mount.disk("small"), mount.disk("big"));
    create(&disk_small, "s");
    let reader = File::open(disk_small.join("s")).expect("open s");

    let cancelled = std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_create(&disk_big, b"cancelled\n"));
        wait_running(&disk_big, "cancelled", 1.0, Duration::from_secs(60));
        mount.signal(libc::SIGTERM);
        writer.join().expect("writer")
    });
    assert_eq!(
        cancelled,
        Err(libc::ECANCELED),
        "the snapshot survived SIGTERM"
    );
    let started = Instant::now();
    while is_mounted(mount.path()) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still mounted after SIGTERM; log:\n{}",
            mount.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        mount.wait_exit(Duration::from_millis(200)).is_none(),
        "the mount ended while a file was still open in it"
    );
    drop_page_cache(&reader);
    let mut bytes = Vec::new();
    (&reader)
        .read_to_end(&mut bytes)
        .expect("read after SIGTERM");
    assert_bytes_equal_file(&bytes, &small, "open snapshot after SIGTERM");
    drop(reader);
    let status = mount.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the mount ended with {status:?} after its last file closed; log:\n{}",
        mount.log_text()
    );

    let listed: Vec<(String, String)> = common::list_snapshots(&fx.store);
    assert_eq!(listed, [("small".to_string(), "s".to_string())]);
    ok(snapfs(&fx.store).arg("verify"));
}

/// `snapfs mount --disk NAME=SOURCE` registers the disk on the way (again
/// with the same source is fine, another source is refused before
/// mounting); `-o allow_other` reaches the kernel, an unknown option is
/// refused; SIGTERM unmounts.
#[test]
fn mount_options_register_disks_and_set_allow_other() {
    if !need_fuse("mount_options_register_disks_and_set_allow_other") {
        return;
    }
    let fx = Fixture::new();
    let source = fx.path("x.img");
    write_random_file(&source, MIB, &mut Rng::new(22));
    let disk_arg = format!("vm2/x={}", source.display());
    let mount = Mount::start_with(&fx.store, &["--disk", &disk_arg, "-o", "allow_other"]);
    assert_eq!(snapshots_in(mount.path()), ["vm2"]);
    create(&mount.disk("vm2/x"), "s");
    assert_same_file(&mount.disk("vm2/x").join("s"), &source);
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = mounts
        .lines()
        .find(|l| l.contains(&format!(" {} ", mount.path().display())))
        .unwrap_or_else(|| panic!("{} not in mountinfo", mount.path().display()));
    assert!(line.contains("allow_other"), "mountinfo: {line}");
    mount.unmount();

    // Again with the same source; this time ended by SIGTERM, which
    // unmounts and exits cleanly.
    let mut again = Mount::start_with(&fx.store, &["--disk", &disk_arg]);
    again.signal(libc::SIGTERM);
    let status = again.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: the mount ended with {status:?}; log:\n{}",
        again.log_text()
    );
    assert!(!is_mounted(again.path()), "still mounted after SIGTERM");
    drop(again);
    let other = fx.path("other.img");
    write_random_file(&other, MIB, &mut Rng::new(23));
    let refused = Mount::try_start_with(
        &fx.store,
        &["--disk", &format!("vm2/x={}", other.display())],
    )
    .err()
    .expect("a second source for vm2/x was accepted");
    assert!(refused.contains("is registered with source"), "{refused}");
    let refused = Mount::try_start_with(&fx.store, &["-o", "bogus"])
        .err()
        .expect("mount -o bogus was accepted");
    assert!(refused.contains("unknown mount option"), "{refused}");
    assert_eq!(common::list_snapshots(&fx.store).len(), 1);
}

/// Runs `snapfs snapshot list` while a mount that is going away still
/// holds the store: it must fail soon, with one line naming the mount and
/// its pid, instead of trying the mount's (absent) `.control`.
fn assert_mount_ending(store: &Path, mnt: &Path, pid: u32) {
    let started = Instant::now();
    let ran = run_timeout(
        snapfs(store).args(["snapshot", "list"]),
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    assert_eq!(
        ran.code,
        Some(1),
        "stdout:\n{}stderr:\n{}",
        ran.stdout,
        ran.stderr
    );
    let lines: Vec<&str> = ran.stderr.lines().collect();
    let expected = format!(
        "snapfs: the mount at {} is ending (pid {pid})",
        mnt.display()
    );
    assert!(
        lines.len() == 1 && lines[0].starts_with(&expected),
        "expected one line starting {expected:?}, got:\n{}",
        ran.stderr
    );
    assert!(lines[0].contains("try again"), "{}", lines[0]);
    assert!(took < Duration::from_secs(20), "took {took:?} to say so");
}

/// After `umount -l` of a mount with a snapshot file open, the mount's
/// process serves that file and holds the store until it is closed;
/// commands say so in one line, then work without a mount.
#[test]
fn commands_after_umount_lazy_wait_for_the_ending_mount_then_open_the_store() {
    if !need_fuse("commands_after_umount_lazy_wait_for_the_ending_mount_then_open_the_store") {
        return;
    }
    let fx = Fixture::new();
    let source = fx.random_disk("d", 4 * MIB, 41);
    let mut mount = Mount::start(&fx.store);
    let disk = mount.disk("d");
    create(&disk, "s1");
    let pid = mount.pid().expect("the mount runs");
    let open = File::open(disk.join("s1")).expect("open the snapshot");
    let out = Command::new("umount")
        .arg("-l")
        .arg(mount.path())
        .output()
        .expect("run umount -l");
    assert!(out.status.success(), "umount -l: {out:?}");
    assert!(!is_mounted(mount.path()));

    assert_mount_ending(&fx.store, mount.path(), pid);
    // The open file still reads the snapshot.
    let mut bytes = Vec::new();
    (&open)
        .read_to_end(&mut bytes)
        .expect("read the open snapshot");
    assert_bytes_equal_file(&bytes, &source, "the detached mount's open file");

    drop(open);
    // The mount's process now ends; the command waits for it and then
    // opens the store itself.
    let listed = ok(snapfs(&fx.store).args(["snapshot", "list"]));
    assert!(listed.contains("s1"), "{listed}");
    let status = mount.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the mount ended with {status:?}; log:\n{}",
        mount.log_text()
    );
    ok(snapfs(&fx.store).args(["snapshot", "create", "d", "s2"]));
    ok(snapfs(&fx.store).arg("verify"));
}

/// A killed mount whose process has not let go of the store yet: its
/// mount is dead (ENOTCONN) and the store's lock still names it. The test
/// stands in for the ending process by holding the lock it left behind.
#[test]
fn commands_while_a_killed_mount_is_ending_say_so_then_open_the_store() {
    if !need_fuse("commands_while_a_killed_mount_is_ending_say_so_then_open_the_store") {
        return;
    }
    let fx = Fixture::new();
    fx.random_disk("d", 2 * MIB, 42);
    let mut mount = Mount::start(&fx.store);
    create(&mount.disk("d"), "s1");
    let pid = mount.pid().expect("the mount runs");
    mount.kill9();
    assert!(
        is_mounted(mount.path()),
        "the dead mount stays until unmounted"
    );

    let lock = File::open(fx.store.join("lock")).expect("open the store's lock");
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "the killed mount's lock was not released");
    let holder = fs::read_to_string(fx.store.join("lock")).expect("read the lock");
    assert!(
        holder.contains(&format!("pid {pid}\n")),
        "lock holder: {holder:?}"
    );
    assert_mount_ending(&fx.store, mount.path(), pid);

    // Released while the next command waits: that command opens the store.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(lock);
    });
    let listed = ok(snapfs(&fx.store).args(["snapshot", "list"]));
    releaser.join().expect("releaser");
    assert!(listed.contains("s1"), "{listed}");
    // The user's way out of the dead mount.
    ok(snapfs(&fx.store).arg("umount").arg(mount.path()));
    assert!(!is_mounted(mount.path()));
}
