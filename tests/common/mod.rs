//! Helpers shared by the integration tests: running the `snapfs` binary,
//! checking its exit status and output, deciding whether a test that needs
//! root can run, deterministic test data, and real ext4 disk images that
//! are loop-mounted and always unmounted again.
//!
//! Every helper cleans up after itself: temporary folders are `TempDir`s,
//! and a mounted image is unmounted by its guard's `Drop`, also when the
//! test panics.

#![allow(dead_code)]

pub mod damage;
pub mod faults;
pub mod hostile;
pub mod kill;
pub mod mount;
pub mod s3_proxy;
pub mod seaweed;
pub mod vm;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

/// Set in CI: tests that need root, loop devices or FUSE fail there instead
/// of skipping.
pub const REQUIRE_ENV: &str = "SNAPFS_REQUIRE_FUSE";

/// A `snapfs --store STORE` command, isolated from the caller's environment
/// (no `SNAPFS_STORE`, no `RUST_LOG` that would add lines to stderr).
pub fn snapfs(store: &Path) -> Command {
    let mut cmd = snapfs_bare();
    cmd.arg("--store").arg(store);
    cmd
}

/// The `snapfs` binary without a store argument.
pub fn snapfs_bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapfs"));
    cmd.env_remove("SNAPFS_STORE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

/// What a finished command printed, as text.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout as bytes (exports to `-`).
    pub stdout_bytes: Vec<u8>,
}

fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| format!("{:?}", a.to_string_lossy()))
        .collect();
    format!("snapfs {}", args.join(" "))
}

/// Runs `cmd` and returns what it printed, whatever its exit status.
pub fn run(cmd: &mut Command) -> Ran {
    let output: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout_bytes: output.stdout,
    }
}

/// Runs `cmd`, asserts exit status `code`, returns the output.
pub fn run_expect(cmd: &mut Command, code: i32) -> Ran {
    let ran = run(cmd);
    assert_eq!(
        ran.code,
        Some(code),
        "{} exited with {:?}, expected {code}\nstdout:\n{}\nstderr:\n{}",
        describe(cmd),
        ran.code,
        ran.stdout,
        ran.stderr
    );
    ran
}

/// Runs `cmd`, asserts it succeeded, returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    run_expect(cmd, 0).stdout
}

/// Runs `cmd`, asserts it failed with exit status 1 and exactly one line
/// `snapfs: ...` on stderr; returns that line.
pub fn fails(cmd: &mut Command) -> String {
    let ran = run_expect(cmd, 1);
    let lines: Vec<&str> = ran.stderr.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("snapfs: "),
        "{} must print one line \"snapfs: ...\" on stderr, printed:\n{}",
        describe(cmd),
        ran.stderr
    );
    lines[0].to_string()
}

/// Runs `cmd`, asserts a usage error (exit status 2, something on stderr).
pub fn usage_error(cmd: &mut Command) -> String {
    let ran = run_expect(cmd, 2);
    assert!(
        !ran.stderr.trim().is_empty(),
        "{} gave a usage error without saying why",
        describe(cmd)
    );
    ran.stderr
}

fn require_env_set() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Skips a test (prints `SKIP <test>: <reason>` and returns false) or, when
/// `SNAPFS_REQUIRE_FUSE=1` is set (CI), fails it.
pub fn skip(test: &str, reason: &str) -> bool {
    if require_env_set() {
        panic!("{test} cannot run: {reason} ({REQUIRE_ENV}=1 forbids skipping)");
    }
    // Straight to the stderr stream: the test harness captures eprintln!,
    // and a skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
    false
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Finds `tool` on PATH or in the sbin folders (often not on a user's PATH).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// True when the test may build and loop-mount ext4 images: root, and
/// mkfs.ext4, losetup, mount and umount present. Otherwise skips (or
/// panics under `SNAPFS_REQUIRE_FUSE=1`).
pub fn need_root(test: &str) -> bool {
    if !is_root() {
        return skip(test, "needs root (loop devices, mount)");
    }
    for name in ["mkfs.ext4", "losetup", "mount", "umount"] {
        if find_tool(name).is_none() {
            return skip(test, &format!("{name} not found"));
        }
    }
    if !Path::new("/dev/loop-control").exists() && !Path::new("/dev/loop0").exists() {
        return skip(test, "no loop device support (/dev/loop-control)");
    }
    true
}

/// Like `need_root`, and also needs /dev/fuse (for the mount tests).
pub fn need_fuse(test: &str) -> bool {
    if !need_root(test) {
        return false;
    }
    match fs::metadata("/dev/fuse") {
        Ok(meta) if meta.file_type().is_char_device() => true,
        _ => skip(test, "/dev/fuse is missing"),
    }
}

// ---------------------------------------------------------------- data

/// A small deterministic random generator (splitmix64): test data must be
/// reproducible from a printed seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf);
        buf
    }
}

/// A seed from the environment variable `var`, or from the clock; printed
/// so that a failure can be replayed.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("seed: {var}={seed}");
    seed
}

/// Writes `len` random bytes to a new file at `path`.
pub fn write_random_file(path: &Path, len: u64, rng: &mut Rng) {
    let mut file = File::create(path).expect("create random file");
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n]).expect("write random file");
        left -= n as u64;
    }
    file.sync_all().expect("sync random file");
}

/// Overwrites `len` bytes at `offset` of the file at `path` with random
/// bytes (the file grows if needed).
pub fn overwrite_random(path: &Path, offset: u64, len: u64, rng: &mut Rng) {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for overwrite");
    let data = rng.bytes(len as usize);
    file.write_all_at(&data, offset).expect("overwrite");
    file.sync_all().expect("sync overwrite");
}

/// Copies `from` to `to`, keeping holes (`cp --sparse=always`).
pub fn copy_sparse(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp {} {} failed",
        from.display(),
        to.display()
    );
}

/// Asserts that two files hold the same bytes; names the first difference.
pub fn assert_same_file(actual: &Path, expected: &Path) {
    let mut a = File::open(actual).unwrap_or_else(|e| panic!("open {}: {e}", actual.display()));
    let mut b = File::open(expected).unwrap_or_else(|e| panic!("open {}: {e}", expected.display()));
    assert_same_reader(
        &mut a,
        &mut b,
        &format!("{} vs {}", actual.display(), expected.display()),
    );
}

/// Asserts that `actual` equals the file at `expected`.
pub fn assert_bytes_equal_file(actual: &[u8], expected: &Path, what: &str) {
    let mut b = File::open(expected).unwrap_or_else(|e| panic!("open {}: {e}", expected.display()));
    assert_same_reader(&mut &actual[..], &mut b, what);
}

/// Asserts that two readers yield the same bytes; names the first
/// difference.
pub fn assert_same_reader(a: &mut dyn Read, b: &mut dyn Read, what: &str) {
    let mut buf_a = vec![0u8; 1 << 20];
    let mut buf_b = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = read_full(a, &mut buf_a);
        let m = read_full(b, &mut buf_b);
        let common = n.min(m);
        if let Some(i) = (0..common).find(|&i| buf_a[i] != buf_b[i]) {
            panic!("{what}: bytes differ at offset {}", offset + i as u64);
        }
        if n != m {
            panic!(
                "{what}: lengths differ: one ends at {}, the other goes on",
                offset + common as u64
            );
        }
        if n == 0 {
            return;
        }
        offset += n as u64;
    }
}

fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed: {e}"),
        }
    }
    filled
}

/// The snapshot names `snapfs snapshot list --json` shows, as (disk, name).
pub fn list_snapshots(store: &Path) -> Vec<(String, String)> {
    let out = ok(snapfs(store).args(["snapshot", "list", "--json"]));
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad list JSON {e}: {out}"));
    rows.iter()
        .map(|row| {
            (
                row["disk"].as_str().unwrap_or_default().to_string(),
                row["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// `snapfs stats --json`, parsed.
pub fn stats_json(store: &Path) -> serde_json::Value {
    let out = ok(snapfs(store).args(["stats", "--json"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad stats JSON {e}: {out}"))
}

/// Every pack byte is a pack header or a live record: no byte of an
/// interrupted run or of a deleted snapshot is left (after a full gc).
pub fn assert_no_pack_leftovers(store: &Path) {
    let stats = stats_json(store);
    let packs = stats["packs"].as_u64().expect("packs");
    let records = stats["record_bytes"].as_u64().expect("record_bytes");
    assert_eq!(
        stats["stored_bytes"].as_u64(),
        Some(records + snapfs::store::pack::PACK_HEADER_LEN * packs),
        "leftover bytes in packs: {stats}"
    );
}

/// `added_bytes` of one snapshot, from `snapshot list --json`.
pub fn snapshot_added_bytes(store: &Path, disk: &str, name: &str) -> u64 {
    let out = ok(snapfs(store).args(["snapshot", "list", disk, "--json"]));
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).expect("list JSON");
    rows.iter()
        .find(|row| row["name"] == name)
        .and_then(|row| row["added_bytes"].as_u64())
        .unwrap_or_else(|| panic!("snapshot {disk}/{name} not listed: {out}"))
}

// ---------------------------------------------------------- ext4 images

/// A sparse file holding an ext4 filesystem.
pub struct Ext4Image {
    pub path: PathBuf,
}

impl Ext4Image {
    /// Makes a sparse file of `size` bytes at `path` and an ext4 filesystem
    /// on it.
    pub fn create(path: &Path, size: u64) -> Ext4Image {
        File::create(path)
            .and_then(|f| f.set_len(size))
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let out = Command::new(tool("mkfs.ext4"))
            .args(["-q", "-F"])
            .arg(path)
            .output()
            .expect("run mkfs.ext4");
        assert!(
            out.status.success(),
            "mkfs.ext4 {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ext4Image {
            path: path.to_path_buf(),
        }
    }

    /// Loop-mounts the image read-write on a fresh temporary folder.
    pub fn mount(&self) -> MountGuard {
        MountGuard::loop_mount(&self.path)
    }
}

/// A loop mount of an image. Dropping it unmounts (lazily if it must) and
/// detaches the loop device, so that no test leaves a mount behind.
pub struct MountGuard {
    image: PathBuf,
    dir: Option<TempDir>,
}

impl MountGuard {
    /// Loop-mounts the filesystem image `image` read-write on a fresh
    /// temporary folder.
    pub fn loop_mount(image: &Path) -> MountGuard {
        let dir = tempfile::Builder::new()
            .prefix("snapfs-loop-")
            .tempdir()
            .expect("mountpoint");
        let out = Command::new(tool("mount"))
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o loop {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        MountGuard {
            image: image.to_path_buf(),
            dir: Some(dir),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    /// Unmounts now (flushing everything to the image), panicking on failure.
    pub fn unmount(mut self) {
        let clean = self.release();
        assert!(clean, "could not unmount {} cleanly", self.image.display());
    }

    /// Unmounts and detaches; returns whether a plain umount worked.
    fn release(&mut self) -> bool {
        let Some(dir) = self.dir.take() else {
            return true;
        };
        let mnt = dir.path().to_path_buf();
        let _ = Command::new("sync").status();
        let mut clean = false;
        for _ in 0..5 {
            let status = Command::new(tool("umount"))
                .arg(&mnt)
                .stderr(Stdio::null())
                .status();
            if status.is_ok_and(|s| s.success()) {
                clean = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if !clean {
            eprintln!("umount {} failed; detaching lazily", mnt.display());
            let _ = Command::new(tool("umount")).arg("-l").arg(&mnt).status();
        }
        detach_loops(&self.image);
        if clean {
            drop(dir);
        } else {
            // Never delete through a mount that is still going away.
            let _ = fs::remove_dir(dir.keep());
        }
        clean
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// Detaches every loop device still backed by `image` (mount's autoclear
/// normally did it already).
fn detach_loops(image: &Path) {
    let Ok(out) = Command::new(tool("losetup")).arg("-j").arg(image).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(dev) = line.split(':').next().filter(|d| d.starts_with("/dev/")) {
            let _ = Command::new(tool("losetup")).arg("-d").arg(dev).status();
        }
    }
}

/// Copies regular files from system folders (documentation and libraries,
/// walked in sorted order so the choice is the same on every run) into
/// `dest` until `budget` bytes are copied; tops up with generated files if
/// the system has too few. Returns the bytes copied.
pub fn copy_real_files(dest: &Path, budget: u64) -> u64 {
    let mut copied = 0u64;
    for (index, root) in ["/usr/share/doc", "/usr/lib", "/usr/share"]
        .iter()
        .enumerate()
    {
        if copied >= budget {
            break;
        }
        let sub = dest.join(format!("tree{index}"));
        copy_tree(Path::new(root), &sub, budget, &mut copied, 0);
    }
    let mut rng = Rng::new(0x5eed);
    let mut n = 0;
    while copied < budget {
        let len = (budget - copied).min(1 << 20);
        let path = dest.join(format!("generated-{n}.bin"));
        write_random_file(&path, len, &mut rng);
        copied += len;
        n += 1;
    }
    copied
}

fn copy_tree(from: &Path, to: &Path, budget: u64, copied: &mut u64, depth: usize) {
    if depth > 12 || *copied >= budget {
        return;
    }
    let Ok(entries) = fs::read_dir(from) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if *copied >= budget {
            return;
        }
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let Some(name) = path.file_name() else {
            continue;
        };
        if meta.is_dir() {
            copy_tree(&path, &to.join(name), budget, copied, depth + 1);
        } else if meta.is_file() && meta.len() <= 8 << 20 && *copied + meta.len() <= budget {
            if fs::create_dir_all(to).is_err() {
                return;
            }
            if let Ok(n) = fs::copy(&path, to.join(name)) {
                *copied += n;
            }
        }
    }
}

/// Every regular file under `root`, sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Changes files under `root` the way a running system does, deterministic
/// for a seed: overwrites part of some files in place, appends to one,
/// deletes one, and writes a new one. Returns the bytes written (new data;
/// a deletion writes none).
pub fn change_files(root: &Path, seed: u64, budget: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let files: Vec<PathBuf> = files_under(root)
        .into_iter()
        .filter(|p| {
            fs::metadata(p)
                .map(|m| m.len() >= 64 << 10)
                .unwrap_or(false)
        })
        .collect();
    assert!(
        files.len() >= 4,
        "too few files under {} to change",
        root.display()
    );
    let mut written = 0u64;
    let slice = (budget / 8).max(4096);
    // Overwrite a slice in the middle of a few files.
    for _ in 0..4 {
        let path = &files[rng.below(files.len() as u64) as usize];
        let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let n = slice.min(len);
        let at = rng.below(len - n + 1);
        overwrite_random(path, at, n, &mut rng);
        written += n;
    }
    // Append to one.
    let path = &files[rng.below(files.len() as u64) as usize];
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("append");
    file.write_all(&rng.bytes(slice as usize)).expect("append");
    file.sync_all().expect("sync append");
    written += slice;
    // Delete one.
    let victim = &files[rng.below(files.len() as u64) as usize];
    let _ = fs::remove_file(victim);
    // A new file with the rest of the budget.
    let rest = budget.saturating_sub(written).max(4096);
    write_random_file(&root.join(format!("new-{seed}.bin")), rest, &mut rng);
    written + rest
}

/// Runs `cmd` like `run`, but kills it and panics if it takes longer than
/// `timeout` (a command that blocks, on a FIFO say, must not hang the
/// suite).
pub fn run_timeout(cmd: &mut Command, timeout: std::time::Duration) -> Ran {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} did not finish within {timeout:?}", describe(cmd));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let stdout_bytes = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    Ran {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stdout_bytes,
    }
}

/// What a person can see of a store: its disks, snapshots, stats (but the
/// size of sled's files, which sled may change on any open, and the sizes
/// of the sources) and pack files. Used to check that a failed command left the store unchanged.
pub fn store_state(store: &Path) -> String {
    // A disk's size is its source's size now, not something in the store.
    let mut disks: serde_json::Value =
        serde_json::from_str(&ok(snapfs(store).args(["disk", "list", "--json"])))
            .expect("disk list JSON");
    for disk in disks.as_array_mut().into_iter().flatten() {
        if let Some(map) = disk.as_object_mut() {
            map.remove("size");
        }
    }
    let snapshots = ok(snapfs(store).args(["snapshot", "list", "--json"]));
    let mut stats = stats_json(store);
    if let Some(map) = stats.as_object_mut() {
        map.remove("db_bytes");
    }
    let mut packs: Vec<String> = fs::read_dir(store.join("packs"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    format!("{} {len}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    packs.sort();
    format!("disks: {disks}\nsnapshots: {snapshots}\nstats: {stats}\npacks: {packs:?}")
}

/// A loop block device over an image file, detached on drop.
pub struct LoopDevice {
    pub device: PathBuf,
}

impl LoopDevice {
    /// Attaches `image` read-only (`losetup -r -f --show`).
    pub fn attach_read_only(image: &Path) -> LoopDevice {
        LoopDevice::attach(image, &["-r", "-f", "--show"])
    }

    /// Attaches `image` read-write (`losetup -f --show`).
    pub fn attach_read_write(image: &Path) -> LoopDevice {
        LoopDevice::attach(image, &["-f", "--show"])
    }

    fn attach(image: &Path, args: &[&str]) -> LoopDevice {
        let out = Command::new(tool("losetup"))
            .args(args)
            .arg(image)
            .output()
            .expect("run losetup");
        assert!(
            out.status.success(),
            "losetup {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
        LoopDevice {
            device: PathBuf::from(device),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new(tool("losetup"))
            .arg("-d")
            .arg(&self.device)
            .status();
    }
}

/// A size-limited tmpfs mounted on a temporary folder (a store that can
/// fill up), unmounted on drop.
pub struct TmpfsMount {
    dir: Option<TempDir>,
}

impl TmpfsMount {
    pub fn new(size: u64) -> TmpfsMount {
        let dir = tempfile::Builder::new()
            .prefix("snapfs-tmpfs-")
            .tempdir()
            .expect("mountpoint");
        let out = Command::new(tool("mount"))
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TmpfsMount { dir: Some(dir) }
    }

    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else {
            return;
        };
        let ok = Command::new(tool("umount"))
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new(tool("umount"))
                .arg("-l")
                .arg(dir.path())
                .status();
        }
        let _ = fs::remove_dir(dir.keep());
    }
}
