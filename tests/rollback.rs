//! `snapfs rollback`: the disk (or the --to target) equals the snapshot byte
//! for byte afterwards, only the chunks that differ are written, sparse
//! files stay sparse, and every refusal (in use, locked, no --yes, device
//! too small) leaves the disk as it was.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::Mount;
use common::{
    assert_same_file, assert_same_reader, fails, need_fuse, need_root, ok, overwrite_random,
    snapfs, write_random_file, LoopDevice, Rng,
};
use tempfile::TempDir;

const CHUNK: u64 = 64 << 10;
const SIZE: u64 = 32 << 20;

/// A store with 64K chunks and disk `d` (an image file at `image`) with
/// snapshot `before`; `expected` is a copy of the image as it was then.
struct Fixture {
    tmp: TempDir,
    store: PathBuf,
    image: PathBuf,
    expected: PathBuf,
}

impl Fixture {
    /// `image` gets `size` random bytes.
    fn random(size: u64, seed: u64) -> Fixture {
        Fixture::with(|image| write_random_file(image, size, &mut Rng::new(seed)))
    }

    fn with(make_image: impl FnOnce(&Path)) -> Fixture {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = tmp.path().join("store");
        let image = tmp.path().join("d.img");
        make_image(&image);
        ok(snapfs(&store).args(["init", "--chunk-size", "64K", "--compression", "none"]));
        ok(snapfs(&store).args(["disk", "add", "d"]).arg(&image));
        ok(snapfs(&store).args(["snapshot", "create", "d", "before"]));
        let expected = tmp.path().join("before.copy");
        fs::copy(&image, &expected).expect("copy the image");
        Fixture {
            tmp,
            store,
            image,
            expected,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `snapfs rollback d before ARGS --yes --json`, parsed.
    fn rollback(&self, args: &[&str]) -> serde_json::Value {
        let out = ok(snapfs(&self.store)
            .args(["rollback", "d", "before", "--yes", "--json"])
            .args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad report JSON {e}: {out}"))
    }

    /// `snapfs rollback d before --yes` with `--to path`, parsed.
    fn rollback_to(&self, path: &Path) -> serde_json::Value {
        let out = ok(snapfs(&self.store)
            .args(["rollback", "d", "before", "--yes", "--json", "--to"])
            .arg(path));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad report JSON {e}: {out}"))
    }

    /// A copy of the image as it is now, to check that a refusal left it so.
    fn snapshot_of_image(&self, name: &str) -> PathBuf {
        let copy = self.path(name);
        fs::copy(&self.image, &copy).expect("copy the image");
        copy
    }
}

fn field(report: &serde_json::Value, name: &str) -> u64 {
    report[name]
        .as_u64()
        .unwrap_or_else(|| panic!("report has no {name}: {report}"))
}

fn blocks(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").blocks()
}

#[test]
fn rollback_after_small_change_restores_bytes_and_writes_only_the_changed_chunks() {
    let fx = Fixture::random(SIZE, 1);
    let mut rng = Rng::new(2);
    for chunk in [3, 100, 511] {
        overwrite_random(&fx.image, chunk * CHUNK + 1000, 100, &mut rng);
    }

    let report = fx.rollback(&[]);
    assert_same_file(&fx.image, &fx.expected);
    assert_eq!(field(&report, "chunks_compared"), SIZE / CHUNK);
    assert_eq!(field(&report, "chunks_written"), 3);
    assert_eq!(field(&report, "bytes_written"), 3 * CHUNK);
    assert_eq!(field(&report, "holes_punched"), 0);
    assert_eq!(report["target"], fx.image.to_str().expect("UTF-8 path"));

    // A second rollback finds nothing to do.
    let again = fx.rollback(&[]);
    assert_eq!(field(&again, "bytes_written"), 0);
    assert_same_file(&fx.image, &fx.expected);
}

#[test]
fn rollback_text_report_says_what_it_wrote() {
    let fx = Fixture::random(4 << 20, 3);
    overwrite_random(&fx.image, 5 * CHUNK, 10, &mut Rng::new(4));
    let out = ok(snapfs(&fx.store).args(["rollback", "d", "before", "--yes"]));
    assert!(out.contains("rolled back"), "{out}");
    assert!(out.contains("compared 64 chunks"), "{out}");
    assert!(out.contains("wrote 1 (64.0 KiB)"), "{out}");
    assert_same_file(&fx.image, &fx.expected);
}

#[test]
fn rollback_of_sparse_image_punches_holes_and_keeps_it_sparse() {
    let fx = Fixture::with(|image| {
        let file = File::create(image).expect("create");
        file.set_len(SIZE).expect("set_len");
        let mut rng = Rng::new(5);
        for first in [0u64, 200] {
            file.write_all_at(&rng.bytes(10 * CHUNK as usize), first * CHUNK)
                .expect("write");
        }
        file.sync_all().expect("sync");
    });
    let sparse_blocks = blocks(&fx.image);
    assert!(
        sparse_blocks * 512 < 2 << 20,
        "the test image is not sparse"
    );
    // Fill a hole with data and change one data chunk.
    let mut rng = Rng::new(6);
    overwrite_random(&fx.image, 300 * CHUNK, 16 * CHUNK, &mut rng);
    overwrite_random(&fx.image, 5 * CHUNK, 10, &mut rng);
    assert!(blocks(&fx.image) > sparse_blocks);

    let report = fx.rollback(&[]);
    assert_same_file(&fx.image, &fx.expected);
    assert_eq!(field(&report, "holes_punched"), 16);
    assert_eq!(field(&report, "chunks_written"), 1);
    assert_eq!(field(&report, "bytes_written"), CHUNK);
    assert!(
        blocks(&fx.image) <= sparse_blocks,
        "{} blocks after the rollback, {sparse_blocks} before the change",
        blocks(&fx.image)
    );
}

#[test]
fn rollback_to_a_new_file_creates_it_sparse_and_equal_to_the_snapshot() {
    // An odd size: the last chunk is short.
    let fx = Fixture::with(|image| {
        let file = File::create(image).expect("create");
        file.set_len(SIZE + 1234).expect("set_len");
        let data = Rng::new(7).bytes(8 * CHUNK as usize + 1234);
        file.write_all_at(&data, SIZE - 8 * CHUNK).expect("write");
        file.sync_all().expect("sync");
    });
    let to = fx.path("new.img");
    let report = fx.rollback_to(&to);
    assert_same_file(&to, &fx.expected);
    assert_eq!(field(&report, "previous_size"), 0);
    assert_eq!(field(&report, "chunks_written"), 9);
    assert!(
        blocks(&to) * 512 <= 9 * CHUNK + (64 << 10),
        "{} blocks for 9 chunks of data",
        blocks(&to)
    );
    // The disk itself was not touched.
    assert_same_file(&fx.image, &fx.expected);
}

#[test]
fn rollback_to_a_larger_file_truncates_it_and_a_smaller_one_grows() {
    let fx = Fixture::random(SIZE, 8);
    let larger = fx.path("larger.img");
    write_random_file(&larger, SIZE + (8 << 20), &mut Rng::new(9));
    let out = ok(snapfs(&fx.store)
        .args(["rollback", "d", "before", "--yes", "--to"])
        .arg(&larger));
    assert!(out.contains("truncated"), "{out}");
    assert_eq!(fs::metadata(&larger).expect("stat").len(), SIZE);
    assert_same_file(&larger, &fx.expected);

    let smaller = fx.path("smaller.img");
    write_random_file(&smaller, 1 << 20, &mut Rng::new(10));
    let report = fx.rollback_to(&smaller);
    assert_eq!(field(&report, "previous_size"), 1 << 20);
    assert_same_file(&smaller, &fx.expected);
}

/// The first `len` bytes of `path`.
fn head(path: &Path, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut buf, 0))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    buf
}

#[test]
fn rollback_to_a_loop_device_equals_the_snapshot_and_leaves_the_rest() {
    if !need_root("rollback_to_a_loop_device_equals_the_snapshot_and_leaves_the_rest") {
        return;
    }
    let fx = Fixture::random(SIZE, 11);
    let backing = fx.path("device.img");
    write_random_file(&backing, SIZE + (4 << 20), &mut Rng::new(12));
    let tail_before = fs::read(&backing).expect("read")[SIZE as usize..].to_vec();
    {
        let device = LoopDevice::attach_read_write(&backing);
        let report = fx.rollback_to(&device.device);
        assert_eq!(report["target_kind"], "block-device");
        assert_eq!(field(&report, "untouched_tail"), 4 << 20);
        assert_eq!(field(&report, "chunks_written"), SIZE / CHUNK);
        assert_same_reader(
            &mut &head(&device.device, SIZE)[..],
            &mut File::open(&fx.expected).expect("open"),
            "loop device vs snapshot",
        );
        // Nothing differs any more.
        assert_eq!(field(&fx.rollback_to(&device.device), "bytes_written"), 0);
    }
    let after = fs::read(&backing).expect("read");
    assert_eq!(
        &after[SIZE as usize..],
        &tail_before[..],
        "the tail changed"
    );

    // A device smaller than the snapshot is refused and left alone.
    let small = fx.path("small.img");
    write_random_file(&small, 16 << 20, &mut Rng::new(13));
    let small_copy = fx.path("small.copy");
    fs::copy(&small, &small_copy).expect("copy");
    {
        let device = LoopDevice::attach_read_write(&small);
        let line = fails(
            snapfs(&fx.store)
                .args(["rollback", "d", "before", "--yes", "--to"])
                .arg(&device.device),
        );
        assert!(line.contains("fewer than the snapshot"), "{line}");
    }
    assert_same_file(&small, &small_copy);

    // A file attached read-write to a loop device is in use.
    overwrite_random(&fx.image, 0, 10, &mut Rng::new(14));
    let changed = fx.snapshot_of_image("changed.copy");
    {
        let device = LoopDevice::attach_read_write(&fx.image);
        let line = fails(snapfs(&fx.store).args(["rollback", "d", "before", "--yes"]));
        assert!(line.contains("in use"), "{line}");
        assert!(
            line.contains(device.device.to_str().expect("UTF-8")),
            "{line}"
        );
    }
    assert_same_file(&fx.image, &changed);
}

/// `sh` holding `path` open read-write on fd 3 while it sleeps; killed by
/// its pid on drop.
struct Writer {
    child: Child,
}

impl Writer {
    fn start(path: &Path) -> Writer {
        let script = format!("exec 3<>'{}'; exec sleep 30", path.display());
        let child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("start sh");
        let fd = PathBuf::from(format!("/proc/{}/fd/3", child.id()));
        let started = Instant::now();
        // Wait until the fd is open and sh has become sleep.
        while !(fd.exists()
            && fs::read_to_string(format!("/proc/{}/comm", child.id()))
                .is_ok_and(|c| c.trim() == "sleep"))
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sh did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Writer { child }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn refuses_while_another_process_has_the_disk_open_for_writing() {
    let fx = Fixture::random(4 << 20, 15);
    overwrite_random(&fx.image, 7 * CHUNK, 10, &mut Rng::new(16));
    let changed = fx.snapshot_of_image("changed.copy");
    {
        let writer = Writer::start(&fx.image);
        let line = fails(snapfs(&fx.store).args(["rollback", "d", "before", "--yes"]));
        assert!(line.contains("in use"), "{line}");
        assert!(
            line.contains(&format!("pid {} (sleep)", writer.child.id())),
            "{line}"
        );
        // --to the same file through another name is refused too.
        let link = fx.path("link.img");
        std::os::unix::fs::symlink(&fx.image, &link).expect("symlink");
        let line = fails(
            snapfs(&fx.store)
                .args(["rollback", "d", "before", "--yes", "--to"])
                .arg(&link),
        );
        assert!(line.contains("in use"), "{line}");
    }
    assert_same_file(&fx.image, &changed);
    // Once the writer is gone, the rollback runs.
    fx.rollback(&[]);
    assert_same_file(&fx.image, &fx.expected);
}

#[test]
fn refuses_while_a_flock_or_a_qemu_style_ofd_lock_is_held() {
    let fx = Fixture::random(4 << 20, 17);
    overwrite_random(&fx.image, 7 * CHUNK, 10, &mut Rng::new(18));
    let changed = fx.snapshot_of_image("changed.copy");
    let me = std::process::id();
    {
        // Read-only, so only the lock can tell.
        let holder = File::open(&fx.image).expect("open");
        assert_eq!(
            unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) },
            0
        );
        let line = fails(snapfs(&fx.store).args(["rollback", "d", "before", "--yes"]));
        assert!(line.contains("in use"), "{line}");
        assert!(line.contains("flock"), "{line}");
        assert!(line.contains(&format!("pid {me}")), "{line}");
    }
    {
        // qemu takes shared OFD locks on single bytes of a running VM's image.
        let holder = File::open(&fx.image).expect("open");
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_RDLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = 100;
        lock.l_len = 1;
        assert_eq!(
            unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_OFD_SETLK, &lock) },
            0,
            "OFD lock: {}",
            std::io::Error::last_os_error()
        );
        let line = fails(snapfs(&fx.store).args(["rollback", "d", "before", "--yes"]));
        assert!(line.contains("in use"), "{line}");
        assert!(line.contains("fcntl"), "{line}");
    }
    assert_same_file(&fx.image, &changed);
}

#[test]
fn refuses_without_yes_when_stdin_is_not_a_terminal() {
    let fx = Fixture::random(4 << 20, 19);
    overwrite_random(&fx.image, 7 * CHUNK, 10, &mut Rng::new(20));
    let changed = fx.snapshot_of_image("changed.copy");
    // snapfs() runs with stdin from /dev/null.
    let line = fails(snapfs(&fx.store).args(["rollback", "d", "before"]));
    assert!(line.contains("--yes"), "{line}");
    assert_same_file(&fx.image, &changed);

    // A --to file that did not exist is not left behind.
    let to = fx.path("new.img");
    let line = fails(
        snapfs(&fx.store)
            .args(["rollback", "d", "before", "--to"])
            .arg(&to),
    );
    assert!(line.contains("--yes"), "{line}");
    assert!(!to.exists(), "{} was left behind", to.display());
}

#[test]
fn damaged_chunk_stops_the_rollback_and_says_the_disk_is_half_rolled_back() {
    let fx = Fixture::random(16 * CHUNK, 21);
    let original = fs::read(&fx.expected).expect("read");
    let mut rng = Rng::new(22);
    overwrite_random(&fx.image, 2 * CHUNK, 10, &mut rng);
    overwrite_random(&fx.image, 9 * CHUNK, 10, &mut rng);
    let changed = fs::read(&fx.image).expect("read");
    // Flip a byte of chunk 9 in its pack (no compression: stored as is).
    let chunk9 = &original[9 * CHUNK as usize..10 * CHUNK as usize];
    let mut flipped = false;
    for entry in fs::read_dir(fx.store.join("packs"))
        .expect("packs")
        .flatten()
    {
        let mut bytes = fs::read(entry.path()).expect("read pack");
        if let Some(at) = bytes.windows(64).position(|w| w == &chunk9[..64]) {
            bytes[at + 1000] ^= 0x5a;
            fs::write(entry.path(), bytes).expect("write pack");
            flipped = true;
        }
    }
    assert!(flipped, "chunk 9 not found in any pack");

    let line = fails(snapfs(&fx.store).args(["rollback", "d", "before", "--yes"]));
    assert!(line.contains("half rolled back"), "{line}");
    assert!(line.contains("corrupt"), "{line}");
    let after = fs::read(&fx.image).expect("read");
    let range = |c: u64| (c * CHUNK) as usize..((c + 1) * CHUNK) as usize;
    assert_eq!(
        after[range(2)],
        original[range(2)],
        "chunk 2 not rolled back"
    );
    assert_eq!(
        after[range(9)],
        changed[range(9)],
        "chunk 9 was written from damaged data"
    );
}

#[test]
fn rollback_through_a_mount_needs_yes_and_resolves_to_from_the_caller() {
    if !need_fuse("rollback_through_a_mount_needs_yes_and_resolves_to_from_the_caller") {
        return;
    }
    let fx = Fixture::random(4 << 20, 23);
    overwrite_random(&fx.image, 7 * CHUNK, 10, &mut Rng::new(24));
    let changed = fx.snapshot_of_image("changed.copy");
    let mount = Mount::start(&fx.store);

    let line = fails(snapfs(&fx.store).args(["rollback", "d", "before"]));
    assert!(line.contains("--yes"), "{line}");
    assert_same_file(&fx.image, &changed);

    let out = ok(snapfs(&fx.store)
        .args(["rollback", "d", "before", "--yes", "--to", "relative.img"])
        .current_dir(fx.tmp.path()));
    assert!(out.contains("rolled back"), "{out}");
    assert_same_file(&fx.path("relative.img"), &fx.expected);

    let report = fx.rollback(&[]);
    assert_eq!(field(&report, "bytes_written"), CHUNK);
    assert_same_file(&fx.image, &fx.expected);
    mount.unmount();
}
